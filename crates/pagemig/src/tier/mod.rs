//! Tiering: keep each process's hot memory on the fast nodes and its cold memory on the slow
//! ones, moved by pagemig's kernel path. [`damon`] tracks accesses, [`heat`] smooths them per
//! chunk, [`decide`] chooses promotions and demotions, and [`agent`] runs one interval after
//! another and returns each as data.

pub mod agent;
pub mod damon;
pub mod decide;
pub mod heat;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::migrate::MigrateError;
use crate::topology::{NodeId, NodeSet, parse_bytes};

/// One region a tracker reports, with its access frequency over the last sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessSample {
    /// The process.
    pub pid: u32,
    /// First address.
    pub start: usize,
    /// End address (exclusive).
    pub end: usize,
    /// Access frequency, 0 (no access seen) to 1 (an access at every check).
    pub accesses: f64,
    /// For how many aggregation intervals the region has kept this frequency.
    pub age: u64,
}

/// A size as bytes or as a share of a whole: `64M`, `2G`, `4096`, `25%`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// Percent of the whole (0 to 100).
    Percent(f64),
}

impl Size {
    /// The bytes this is of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        match self {
            Size::Bytes(b) => b,
            Size::Percent(p) => (whole as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Bytes(b) => write!(f, "{b} bytes"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Size {
    type Err = String;
    /// Bytes with an optional K, M, G or T suffix (powers of 1024, an optional `B` or `iB`
    /// after it), or a percentage.
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(Size::Percent(v)),
                _ => Err(format!(
                    "bad size {text:?}: a percentage must be between 0 and 100"
                )),
            };
        }
        parse_bytes(t).map(Size::Bytes).ok_or_else(|| {
                format!("bad size {text:?}: expected bytes with K, M, G or T (64M, 2G) or a percentage (25%)")
            })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Size::Bytes(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Why tiering could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// A node is in both lists.
    #[error(
        "nodes {both} are in both --fast ({fast}) and --slow ({slow}): a node is one tier or the other"
    )]
    OverlappingTiers {
        /// The fast nodes.
        fast: NodeSet,
        /// The slow nodes.
        slow: NodeSet,
        /// Nodes in both.
        both: NodeSet,
    },
    /// The tier (`fast` or `slow`) has no node.
    #[error("the {0} tier has no node")]
    EmptyTier(&'static str),
    /// A node of a tier is offline or has no memory.
    #[error("{tier} tier: {source}")]
    BadNode {
        /// `fast` or `slow`.
        tier: &'static str,
        /// Why.
        #[source]
        source: MigrateError,
    },
    /// The budget is larger than the fast nodes.
    #[error(
        "fast budget of {budget} bytes is larger than the memory of the fast nodes {nodes} ({total} bytes)"
    )]
    BudgetTooLarge {
        /// The budget.
        budget: u64,
        /// The fast nodes.
        nodes: NodeSet,
        /// Their memory.
        total: u64,
    },
    /// The rate moves less than one chunk per interval.
    #[error(
        "a rate of {bytes_per_second} bytes/s moves {per_interval} bytes per interval, less than one region of {granularity} bytes: raise the rate or the interval"
    )]
    RateTooLow {
        /// The rate.
        bytes_per_second: u64,
        /// Bytes per interval.
        per_interval: u64,
        /// The chunk size.
        granularity: usize,
    },
    /// A setting is out of range: what is wrong.
    #[error("bad setting: {0}")]
    BadSetting(String),
    /// No process was given.
    #[error("no process to track")]
    NoProcess,
    /// The process with this pid does not exist.
    #[error("process {0} does not exist (or has exited)")]
    NoSuchProcess(u32),
    /// A process's memory cannot be read or moved.
    #[error("process {pid}: {source}")]
    Process {
        /// The pid.
        pid: u32,
        /// Why.
        #[source]
        source: MigrateError,
    },
    /// DAMON's sysfs interface is not in this admin directory.
    #[error(
        "DAMON is not available: {} does not exist (a kernel built with CONFIG_DAMON_SYSFS and CONFIG_DAMON_VADDR is needed)",
        .0.display()
    )]
    DamonMissing(PathBuf),
    /// DAMON lacks the operations set needed.
    #[error("DAMON has no {wanted} operations on this kernel (available: {available:?})")]
    DamonNoOperations {
        /// `vaddr` (processes) or `paddr` (physical memory).
        wanted: &'static str,
        /// What it offers.
        available: String,
    },
    /// No permission to drive DAMON: this file cannot be changed.
    #[error(
        "no permission to drive DAMON: {} cannot be changed (DAMON's sysfs files belong to root; run as root)",
        .0.display()
    )]
    DamonPermission(PathBuf),
    /// Another program runs a kdamond.
    #[error(
        "DAMON is in use by another program: kdamond {index} is running{} (its kdamonds must be off before pagemig can add its own)",
        pid.map(|p| format!(" (thread pid {p})")).unwrap_or_default()
    )]
    DamonBusy {
        /// The kdamond's directory.
        index: usize,
        /// Its thread's pid.
        pid: Option<u32>,
    },
    /// DAMON's monitoring attributes are out of range: what is wrong.
    #[error("bad DAMON attributes: {0}")]
    BadDamonAttrs(String),
    /// A DAMON sysfs file could not be used.
    #[error("DAMON: {op} {} failed", path.display())]
    Damon {
        /// The file.
        path: PathBuf,
        /// Reading, writing, listing, parsing.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory or its record could not be used.
    #[error("runtime directory: {}", path.display())]
    Runtime {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another agent is running with the same runtime directory.
    #[error(
        "another pagemig tier agent (pid {pid}) is running with runtime directory {}",
        runtime_dir.display()
    )]
    AgentRunning {
        /// Its pid.
        pid: u32,
        /// The directory.
        runtime_dir: PathBuf,
    },
    /// Moving pages failed for a reason other than the process exiting.
    #[error("moving pages of process {pid} to node {to}")]
    Move {
        /// The process.
        pid: u32,
        /// The target node.
        to: NodeId,
        /// Why.
        #[source]
        source: MigrateError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("64M".parse(), Ok(Size::Bytes(64 << 20)));
        assert_eq!("2G".parse(), Ok(Size::Bytes(2 << 30)));
        assert_eq!("2GiB".parse(), Ok(Size::Bytes(2 << 30)));
        assert_eq!("512k".parse(), Ok(Size::Bytes(512 << 10)));
        assert_eq!("4096".parse(), Ok(Size::Bytes(4096)));
        assert_eq!("25%".parse(), Ok(Size::Percent(25.0)));
        assert_eq!(Size::Percent(25.0).of(400), 100);
        let error = |text: &str| text.parse::<Size>().unwrap_err();
        assert!(error("150%").contains("between 0 and 100"));
        assert!(error("12Q").contains("bad size \"12Q\""));
        assert!("".parse::<Size>().is_err());
        assert!("99999999999T".parse::<Size>().is_err());
    }
}
