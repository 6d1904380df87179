//! What a migration did: pages moved and failed by cause, bytes, time per phase, kernel calls,
//! CPU time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::process::Process;
use crate::sys::Errno;
use crate::topology::NodeId;

/// Why a page did not move, from the kernel's per-page status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureCause {
    /// Pinned (DMA, io_uring buffers, RDMA) or busy (locked, under writeback): `EBUSY`,
    /// `EAGAIN`, or left behind by the kernel for a transient reason without a per-page status
    /// (which also happens when the target node runs short of memory).
    Busy,
    /// Not present: never touched, swapped out or freed meanwhile (`ENOENT`).
    NotPresent,
    /// Not mapped, or a special mapping (`EFAULT`).
    NotMapped,
    /// The target node has no free memory (`ENOMEM`).
    NoMemory,
    /// Shared with other processes; moving it needs `MPOL_MF_MOVE_ALL` (`EACCES`).
    Shared,
    /// Not permitted (`EPERM`).
    Denied,
    /// The process exited before the page was moved.
    ProcessExited,
    /// The kernel said it moved but the page is elsewhere (a concurrent migration moved it).
    StillElsewhere,
    /// Any other errno.
    Other(i32),
}

impl FailureCause {
    /// The cause of a negative `move_pages` status.
    pub fn from_errno(errno: Errno) -> Self {
        match errno {
            Errno::BUSY | Errno::AGAIN => FailureCause::Busy,
            Errno::NOENT => FailureCause::NotPresent,
            Errno::FAULT => FailureCause::NotMapped,
            Errno::NOMEM => FailureCause::NoMemory,
            Errno::ACCESS => FailureCause::Shared,
            Errno::PERM => FailureCause::Denied,
            Errno::SRCH => FailureCause::ProcessExited,
            other => FailureCause::Other(other.raw_os_error()),
        }
    }

    /// Short name for JSON and CSV.
    pub fn code(self) -> String {
        match self {
            FailureCause::Busy => "busy".into(),
            FailureCause::NotPresent => "not_present".into(),
            FailureCause::NotMapped => "not_mapped".into(),
            FailureCause::NoMemory => "no_memory".into(),
            FailureCause::Shared => "shared".into(),
            FailureCause::Denied => "denied".into(),
            FailureCause::ProcessExited => "process_exited".into(),
            FailureCause::StillElsewhere => "still_elsewhere".into(),
            FailureCause::Other(e) => format!("errno_{e}"),
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Busy => f.write_str(
                "pinned or busy (EBUSY, or left behind by the kernel for a transient reason)",
            ),
            FailureCause::NotPresent => f.write_str("not present (ENOENT)"),
            FailureCause::NotMapped => f.write_str("not mapped (EFAULT)"),
            FailureCause::NoMemory => f.write_str("no memory on the target node (ENOMEM)"),
            FailureCause::Shared => {
                f.write_str("shared with other processes: needs --all and CAP_SYS_NICE (EACCES)")
            }
            FailureCause::Denied => f.write_str("not permitted (EPERM)"),
            FailureCause::ProcessExited => f.write_str("process exited first"),
            FailureCause::StillElsewhere => f.write_str("moved away again by someone else"),
            FailureCause::Other(e) => write!(f, "{}", Errno::from_raw_os_error(*e)),
        }
    }
}

impl Serialize for FailureCause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code())
    }
}

/// Why a selected page was left where it is on purpose: not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// No page of its own to move: read but never written (the kernel's shared zero page), or
    /// no longer present when asked (`EFAULT`/`ENOENT` from the placement query).
    NothingToMove,
    /// Shared with other processes (`EACCES`); `MPOL_MF_MOVE_ALL` (`--all`) moves it.
    Shared,
}

impl SkipReason {
    /// Short name for JSON.
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::NothingToMove => "nothing_to_move",
            SkipReason::Shared => "shared",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NothingToMove => {
                "nothing to move (never written: the shared zero page, or freed meanwhile)"
            }
            SkipReason::Shared => "shared with other processes (--all moves them)",
        })
    }
}

impl Serialize for SkipReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn millis_each<S: Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ds.iter().map(|d| d.as_secs_f64() * 1e3))
}

/// The kernel calls of a migration: how many, and how long the target was held by each.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallStats {
    /// Number of `move_pages` calls that moved pages.
    pub calls: u64,
    /// Longest single call (the longest stall of the target process).
    #[serde(rename = "longest_call_ms", serialize_with = "millis")]
    pub longest: Duration,
    /// Median call.
    #[serde(rename = "median_call_ms", serialize_with = "millis")]
    pub median: Duration,
    /// Pages per call at the end (batches adapt under `max_stall`).
    pub final_batch: usize,
    /// Threads that made calls.
    pub threads: usize,
    /// CPU time of those threads (their thread CPU clocks), in all.
    #[serde(rename = "cpu_time_ms", serialize_with = "millis")]
    pub cpu_time: Duration,
    /// CPU time of each thread.
    #[serde(rename = "thread_cpu_ms", serialize_with = "millis_each")]
    pub thread_cpu: Vec<Duration>,
}

impl CallStats {
    /// Call statistics from their summary and the CPU time of each thread.
    pub fn new(
        calls: u64,
        longest: Duration,
        median: Duration,
        final_batch: usize,
        thread_cpu: Vec<Duration>,
    ) -> Self {
        CallStats {
            calls,
            longest,
            median,
            final_batch,
            threads: thread_cpu.len(),
            cpu_time: thread_cpu.iter().sum(),
            thread_cpu,
        }
    }

    /// Summarises call durations.
    pub fn from_durations(
        mut durations: Vec<Duration>,
        final_batch: usize,
        thread_cpu: Vec<Duration>,
    ) -> Self {
        durations.sort_unstable();
        CallStats::new(
            durations.len() as u64,
            durations.last().copied().unwrap_or_default(),
            durations
                .get(durations.len() / 2)
                .copied()
                .unwrap_or_default(),
            final_batch,
            thread_cpu,
        )
    }
}

/// Who pays for the CPU time of a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChargeTo {
    /// The process (and cgroup) that asks for the migration.
    #[default]
    Caller,
    /// The cgroup of the process whose pages move: helper processes in that cgroup do the work.
    Target,
}

impl std::str::FromStr for ChargeTo {
    type Err = String;
    /// `caller` or `target`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "caller" => Ok(ChargeTo::Caller),
            "target" => Ok(ChargeTo::Target),
            _ => Err(format!("unknown charge {s:?} (expected caller or target)")),
        }
    }
}

/// Which cgroup paid for a migration's CPU time, and what its `cpu.stat` said before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    /// Whether the caller or the target paid.
    pub to: ChargeTo,
    /// The paying cgroup's path (`None` without a cgroup v2 hierarchy).
    pub cgroup: Option<String>,
    /// Its `usage_usec` before and after the move phase.
    pub usage_before_usec: Option<u64>,
    /// See `usage_before_usec`.
    pub usage_after_usec: Option<u64>,
}

impl Charge {
    /// CPU time the paying cgroup used during the move phase (all its tasks).
    pub fn usage(&self) -> Option<Duration> {
        Some(Duration::from_micros(
            self.usage_after_usec?
                .saturating_sub(self.usage_before_usec?),
        ))
    }
}

/// Wall time of each phase of a migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Reading the mappings and which pages are present.
    #[serde(rename = "scan_ms", serialize_with = "millis")]
    pub scan: Duration,
    /// Asking where each page is.
    #[serde(rename = "query_ms", serialize_with = "millis")]
    pub query: Duration,
    /// Moving.
    #[serde(rename = "move_ms", serialize_with = "millis")]
    pub moving: Duration,
    /// Asking again where each moved page is.
    #[serde(rename = "verify_ms", serialize_with = "millis")]
    pub verify: Duration,
}

/// What one migration did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Whose pages.
    pub process: Process,
    /// Target node.
    pub to: NodeId,
    /// Nothing was moved: the counts say what would have moved.
    pub dry_run: bool,
    /// Base page size; every count below is in pages of this size (a 2 MB THP counts 512).
    pub page_size: u64,
    /// Present pages selected (on the `--from` nodes when given): moved, already on target,
    /// skipped and failed add up to it.
    pub pages_requested: u64,
    /// Pages that are on the target node now and were not before.
    pub pages_moved: u64,
    /// Pages that were on the target already.
    pub pages_already_on_target: u64,
    /// Pages left where they are on purpose, by reason (not failures).
    pub pages_skipped: BTreeMap<SkipReason, u64>,
    /// Pages that did not move, by cause.
    pub pages_failed: BTreeMap<FailureCause, u64>,
    /// Pages still on each other node afterwards, among those that failed.
    pub pages_left_by_node: BTreeMap<NodeId, u64>,
    /// Bytes moved.
    pub bytes_moved: u64,
    /// Kernel calls.
    pub calls: CallStats,
    /// Time per phase.
    pub phases: Phases,
    /// Wall time of the whole migration.
    #[serde(rename = "wall_ms", serialize_with = "millis")]
    pub wall: Duration,
    /// The process exited during the migration; counts are what moved before.
    pub process_exited: bool,
    /// Who paid for the CPU time.
    pub charged_to: Charge,
}

impl Report {
    /// Pages that were requested but did not end up on the target and were not skipped on
    /// purpose: failures.
    pub fn pages_not_moved(&self) -> u64 {
        self.pages_failed.values().sum()
    }

    /// Pages skipped on purpose (see [`SkipReason`]).
    pub fn pages_skipped_total(&self) -> u64 {
        self.pages_skipped.values().sum()
    }

    /// Bytes moved per second of the move phase, in GB/s.
    pub fn gbps(&self) -> f64 {
        let secs = self.phases.moving.as_secs_f64();
        if secs > 0.0 {
            self.bytes_moved as f64 / secs / 1e9
        } else {
            0.0
        }
    }
}
