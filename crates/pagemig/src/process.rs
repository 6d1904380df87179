//! The process whose pages move: the calling one or another by pid.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

/// The process whose pages move; `"self"` or the pid in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Process {
    /// The calling process.
    #[serde(rename = "self")]
    Current,
    /// Another process (or this one) by pid.
    #[serde(untagged)]
    Pid(u32),
}

impl Process {
    /// The pid argument of `move_pages`: 0 for the calling process.
    pub fn raw(self) -> i32 {
        match self {
            Process::Current => 0,
            Process::Pid(p) => p as i32,
        }
    }

    /// The pid: this process's own for [`Process::Current`].
    pub fn id(self) -> u32 {
        match self {
            Process::Current => std::process::id(),
            Process::Pid(p) => p,
        }
    }

    /// `/proc/self/FILE` or `/proc/PID/FILE`.
    pub fn proc_path(self, file: &str) -> PathBuf {
        match self {
            Process::Current => PathBuf::from(format!("/proc/self/{file}")),
            Process::Pid(p) => PathBuf::from(format!("/proc/{p}/{file}")),
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Current => f.write_str("the calling process"),
            Process::Pid(p) => write!(f, "process {p}"),
        }
    }
}

impl FromStr for Process {
    type Err = String;
    /// `self` or a pid.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "self" => Ok(Process::Current),
            _ => s
                .parse::<u32>()
                .ok()
                .filter(|&p| p > 0 && p <= i32::MAX as u32)
                .map(Process::Pid)
                .ok_or_else(|| format!("bad pid {s:?}: expected a positive number or \"self\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse() {
        assert_eq!("self".parse(), Ok(Process::Current));
        assert_eq!("42".parse(), Ok(Process::Pid(42)));
        assert!("0".parse::<Process>().unwrap_err().contains("bad pid"));
        assert!("-3".parse::<Process>().is_err());
        assert_eq!(
            Process::Pid(7).proc_path("maps"),
            PathBuf::from("/proc/7/maps")
        );
        assert_eq!(Process::Current.raw(), 0);
    }
}
