//! cgroup v2: which cgroup a process is in, the CPU quota it runs under (`cpu.max`) and the CPU
//! time its cgroup has used (`cpu.stat`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::process::Process;

/// Why a cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 hierarchy is mounted (a cgroup v1-only system).
    #[error("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")]
    NoHierarchy,
    /// The process is not in the cgroup v2 hierarchy (no `0::` line in its /proc cgroup file).
    #[error("{process} has no cgroup v2 membership in /proc/…/cgroup")]
    NotInV2 {
        /// The process.
        process: Process,
    },
    /// A cgroup file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cgroup {
    /// Path inside the hierarchy, as /proc/PID/cgroup shows it (`/system.slice/foo.service`).
    pub path: String,
    /// The directory in the mounted hierarchy.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// Where the cgroup v2 hierarchy is mounted, from mountinfo text: the mount point of the first
/// `cgroup2` file system.
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 path from the text of /proc/PID/cgroup (the `0::PATH` line).
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
}

/// A `cpu.max` file as a number of CPUs: `max 100000` is no limit (`None`), `50000 100000` is
/// half a CPU.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100_000.0);
    (period > 0.0).then(|| quota / period)
}

/// The `usage_usec` of a `cpu.stat` file (0 without one).
pub fn parse_cpu_stat(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec")?.trim().parse().ok())
        .unwrap_or(0)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    parse_mountinfo(&read(Path::new("/proc/self/mountinfo"))?).ok_or(CgroupError::NoHierarchy)
}

impl Cgroup {
    /// The cgroup `process` is in.
    pub fn of(process: Process) -> Result<Cgroup, CgroupError> {
        let text = read(&process.proc_path("cgroup"))?;
        let path = parse_proc_cgroup(&text).ok_or(CgroupError::NotInV2 { process })?;
        Ok(Cgroup {
            dir: mount_point()?.join(path.trim_start_matches('/')),
            path,
        })
    }

    /// CPU time used so far by the cgroup's tasks and descendants, in microseconds: the
    /// `usage_usec` of its `cpu.stat` (always present in cgroup v2, also without the cpu
    /// controller), user and system time together.
    pub fn usage_usec(&self) -> Result<u64, CgroupError> {
        Ok(parse_cpu_stat(&read(&self.dir.join("cpu.stat"))?))
    }

    /// The tightest `cpu.max` of this cgroup and its ancestors, in CPUs; `None` when no limit is
    /// set or the cpu controller is not enabled there.
    pub fn cpu_quota(&self) -> Option<f64> {
        let root = mount_point().ok()?;
        self.dir
            .ancestors()
            .take_while(|d| d.starts_with(&root) && *d != root)
            .filter_map(|d| fs::read_to_string(d.join("cpu.max")).ok())
            .filter_map(|t| parse_cpu_max(&t))
            .reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse() {
        let mountinfo = "25 30 0:23 / /sys rw - sysfs sysfs rw\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(parse_mountinfo("25 30 0:23 / /sys rw - sysfs sysfs rw").is_none());
        assert_eq!(
            parse_proc_cgroup("4:memory:/x\n0::/user.slice/a.scope\n"),
            Some("/user.slice/a.scope".into())
        );
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("250000 100000"), Some(2.5));
        let stat = parse_cpu_stat("usage_usec 7\nuser_usec 5\nsystem_usec 2\nnr_periods 0\n");
        assert_eq!(stat, 7);
    }

    #[test]
    fn this_process_has_a_cgroup_or_says_why_not() {
        match Cgroup::of(Process::Current) {
            Ok(cg) => {
                assert!(cg.dir.is_dir(), "{cg:?}");
                cg.usage_usec().unwrap();
            }
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
}
