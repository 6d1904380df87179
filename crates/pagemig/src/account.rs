//! What a migration did: pages moved and failed by cause, bytes, time per phase, kernel calls,
//! CPU time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::process::Process;
use crate::sys::Errno;
use crate::topology::NodeId;

/// Why a page did not move, from the kernel's per-page status; serialized as its short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// Pinned (DMA, io_uring, RDMA) or busy (locked, under writeback): `EBUSY`, `EAGAIN`, or left
    /// behind by the kernel without a per-page status (also when the target runs short of memory).
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
    /// Any other errno: `errno_N`.
    #[serde(untagged, serialize_with = "errno_name")]
    Other(i32),
}

/// The name of [`FailureCause::Other`].
fn errno_name<S: Serializer>(errno: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("errno_{errno}"))
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
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureCause::Busy => {
                "pinned or busy (EBUSY, or left behind by the kernel for a transient reason)"
            }
            FailureCause::NotPresent => "not present (ENOENT)",
            FailureCause::NotMapped => "not mapped (EFAULT)",
            FailureCause::NoMemory => "no memory on the target node (ENOMEM)",
            FailureCause::Shared => {
                "shared with other processes: needs --all and CAP_SYS_NICE (EACCES)"
            }
            FailureCause::Denied => "not permitted (EPERM)",
            FailureCause::ProcessExited => "process exited first",
            FailureCause::StillElsewhere => "moved away again by someone else",
            FailureCause::Other(e) => return write!(f, "{}", Errno::from_raw_os_error(*e)),
        })
    }
}

/// Why a selected page was left where it is on purpose: not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// No page of its own: never written (the shared zero page), or gone when asked (`EFAULT`,
    /// `ENOENT`).
    NothingToMove,
    /// Shared with other processes (`EACCES`); `MPOL_MF_MOVE_ALL` (`--all`) moves it.
    Shared,
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

/// The middle sample (the upper one of the two middles for an even count); `None` for none.
pub(crate) fn median(mut samples: Vec<f64>) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied()
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

fn millis_each<S: Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ds.iter().map(|d| d.as_secs_f64() * 1e3))
}

fn millis_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_secs_f64() * 1e3).serialize(s)
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
    /// What the first call of each batch returned, added up: pages the kernel could not migrate
    /// or did not try (their status is what the retries found).
    pub left_behind: u64,
    /// Under [`ChargeTo::Target`] with a helper process: the helper's whole CPU time, of which
    /// `cpu_time` is the calls'.
    #[serde(rename = "helper_cpu_ms", serialize_with = "millis_opt")]
    pub helper_cpu: Option<Duration>,
    /// The kernel path's check of its thread count while it ran: what it measured and decided.
    pub thread_check: Vec<String>,
    /// `[threads, GB/s]` measured where that check tried another thread count (what
    /// [`crate::policy::CostModel::learn_kernel`] learns from).
    pub thread_gbps: Vec<(usize, f64)>,
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
    /// Its `usage_usec` before the move phase.
    pub usage_before_usec: Option<u64>,
    /// Its `usage_usec` after the move phase.
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

/// Which way a migration moved its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// `move_pages(2)`: the kernel copies, for any process the caller may ptrace.
    Kernel,
    /// The caller's own memory: write-protect, copy with a copy engine, `mremap` in place.
    Remap,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Kernel => "kernel",
            Path::Remap => "remap",
        })
    }
}

/// Wall time of each phase of a migration (zero for a phase the path does not have); laps of one
/// [`Laps`] stopwatch, so they add up to [`Report::wall`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Phases {
    /// Reading the mappings and which pages hold data.
    #[serde(rename = "scan_ms", serialize_with = "millis")]
    pub scan: Duration,
    /// Sorting the pages and choosing how to move them.
    #[serde(rename = "plan_ms", serialize_with = "millis")]
    pub plan: Duration,
    /// Checking the range, the target's free memory and the paying cgroup; opening what is needed.
    #[serde(rename = "check_ms", serialize_with = "millis")]
    pub check: Duration,
    /// Asking where each page is.
    #[serde(rename = "query_ms", serialize_with = "millis")]
    pub query: Duration,
    /// Registering and write-protecting (remap path).
    #[serde(rename = "protect_ms", serialize_with = "millis")]
    pub protect: Duration,
    /// Taking pages from a reservoir, or mapping, binding and populating new ones (remap path).
    #[serde(rename = "alloc_ms", serialize_with = "millis")]
    pub alloc: Duration,
    /// Copying with a copy engine (remap path).
    #[serde(rename = "copy_ms", serialize_with = "millis")]
    pub copy: Duration,
    /// `mremap` of the new pages over the old addresses (remap path).
    #[serde(rename = "remap_ms", serialize_with = "millis")]
    pub remap: Duration,
    /// Reading the writers' fault messages, waking them, handing old pages to a reservoir.
    #[serde(rename = "wake_ms", serialize_with = "millis")]
    pub wake: Duration,
    /// `move_pages` calls (kernel path).
    #[serde(rename = "move_ms", serialize_with = "millis")]
    pub moving: Duration,
    /// Asking again where the moved pages are.
    #[serde(rename = "verify_ms", serialize_with = "millis")]
    pub verify: Duration,
}

impl Phases {
    /// Each phase with its name, in the order a migration goes through them.
    pub fn named(&self) -> [(&'static str, Duration); 11] {
        self.clone().named_mut().map(|(name, d)| (name, *d))
    }

    fn named_mut(&mut self) -> [(&'static str, &mut Duration); 11] {
        [
            ("scan", &mut self.scan),
            ("plan", &mut self.plan),
            ("check", &mut self.check),
            ("query", &mut self.query),
            ("protect", &mut self.protect),
            ("alloc", &mut self.alloc),
            ("copy", &mut self.copy),
            ("remap", &mut self.remap),
            ("wake", &mut self.wake),
            ("move", &mut self.moving),
            ("verify", &mut self.verify),
        ]
    }

    /// The sum of the phases: the wall time of the migrations they were measured in.
    pub fn total(&self) -> Duration {
        self.named().iter().map(|(_, d)| *d).sum()
    }

    /// Adds `other`'s phases to these.
    pub fn add(&mut self, other: &Phases) {
        for ((_, mine), (_, theirs)) in self.named_mut().into_iter().zip(other.named()) {
            *mine += theirs;
        }
    }
}

/// A stopwatch whose laps cover the time from its start without gaps: each lap adds the time
/// since the previous one to a phase, so the phases add up to the wall time. It also reads the
/// calling thread's CPU clock at its start, for [`Laps::cpu`].
#[derive(Debug, Clone, Copy)]
pub struct Laps {
    start: Instant,
    last: Instant,
    cpu: Duration,
}

impl Laps {
    /// Starts now.
    pub fn start() -> Self {
        let now = Instant::now();
        Laps {
            start: now,
            last: now,
            cpu: crate::sys::thread_cpu_time(),
        }
    }

    /// CPU time of the calling thread since the start, at most [`Laps::wall`]: one thread cannot
    /// use more, and in a VM its CPU clock and the wall clock can disagree by microseconds.
    pub fn cpu(&self) -> Duration {
        crate::sys::thread_cpu_time()
            .saturating_sub(self.cpu)
            .min(self.wall())
    }

    /// Adds the time since the previous lap (or the start) to `phase`.
    pub fn lap(&mut self, phase: &mut Duration) {
        let now = Instant::now();
        *phase += now - self.last;
        self.last = now;
    }

    /// The time from the start to the last lap.
    pub fn wall(&self) -> Duration {
        self.last - self.start
    }
}

/// How the pages of the caller's own memory were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ScanMethod {
    /// One `PAGEMAP_SCAN` ioctl per 256 runs.
    PagemapScan,
    /// Reading the pagemap entry of every page (kernels before 6.7; huge pages from smaps); the
    /// shared zero page counts as present there.
    PagemapRead,
}

/// How the remap path checks that the new pages are on the target node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Verify {
    /// Ask about a sample of each batch (a page of every huge page and a few base pages): the new
    /// pages were bound and faulted in before the remap, so a sample all on the target counts the
    /// batch there; else the batch is checked in full.
    #[default]
    Sample,
    /// Ask about every page that was copied.
    Full,
}

/// What the check after each batch of the remap path did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// As asked.
    pub mode: Verify,
    /// Pages the kernel was asked about.
    pub pages_checked: u64,
    /// Batches whose sample found a page off the target, and that were checked in full.
    pub batches_checked_in_full: u64,
}

/// What only the remap path has to say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemapFacts {
    /// Batches (one protect, copy, remap and wake each).
    pub batches: u64,
    /// Pages whose new memory came from a reservoir, already faulted in.
    pub pages_from_reservoir: u64,
    /// Old pages kept in a reservoir instead of being freed.
    pub pages_recycled: u64,
    /// Writes that waited for their batch.
    pub writes_waited: u64,
    /// How the pages were found.
    pub scan: ScanMethod,
    /// How the pages on the target were counted.
    pub verification: Verification,
}

/// What one migration did, whichever path moved it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Which way the pages moved.
    pub path: Path,
    /// Whose pages.
    pub process: Process,
    /// Target node.
    pub to: NodeId,
    /// Nothing was moved: the counts say what would have moved.
    pub dry_run: bool,
    /// Base page size; every count below is in pages of this size (a 2 MB THP counts 512).
    pub page_size: u64,
    /// Pages selected (kernel path: present ones, on the `--from` nodes when given; remap path:
    /// every page); moved, already on target, skipped and failed add up to it.
    pub pages_requested: u64,
    /// Pages that are on the target node now and were not before (remap path: copied, then found
    /// there).
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
    /// Kernel calls (kernel path) and the CPU time of the threads that moved or copied.
    pub calls: CallStats,
    /// Time per phase; they add up to `wall`.
    pub phases: Phases,
    /// Wall time of the whole migration.
    #[serde(rename = "wall_ms", serialize_with = "millis")]
    pub wall: Duration,
    /// CPU time of the calling thread during the migration (its thread CPU clock), at most
    /// `wall` (see [`Laps::cpu`]).
    #[serde(rename = "caller_cpu_ms", serialize_with = "millis")]
    pub caller_cpu: Duration,
    /// The process exited during the migration; counts are what moved before.
    pub process_exited: bool,
    /// Who paid for the CPU time.
    pub charged_to: Charge,
    /// What only the remap path says (`None` for the kernel path).
    pub remap: Option<RemapFacts>,
    /// Why this path and plan: the planner's reasons.
    pub why: Vec<String>,
}

impl Report {
    /// Pages that failed to move (not skipped on purpose).
    pub fn pages_not_moved(&self) -> u64 {
        self.pages_failed.values().sum()
    }

    /// Pages skipped for `reason` (zero when none were).
    pub fn skipped(&self, reason: SkipReason) -> u64 {
        self.pages_skipped.get(&reason).copied().unwrap_or(0)
    }

    /// Pages skipped on purpose (see [`SkipReason`]).
    pub fn pages_skipped_total(&self) -> u64 {
        self.pages_skipped.values().sum()
    }

    /// GB/s: bytes moved per second of the move phase (kernel path) or of the wall time (remap).
    pub fn gbps(&self) -> f64 {
        let secs = match self.path {
            Path::Kernel => self.phases.moving,
            Path::Remap => self.wall,
        }
        .as_secs_f64();
        if secs > 0.0 {
            self.bytes_moved as f64 / secs / 1e9
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_cpu_time_is_never_more_than_the_wall_time() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(2) {}
        // A CPU clock read long before the wall clock: the thread's CPU time so far (2 ms and
        // more) against no wall time at all.
        let now = Instant::now();
        let laps = Laps {
            start: now,
            last: now,
            cpu: Duration::ZERO,
        };
        assert_eq!(laps.cpu(), Duration::ZERO);
    }
}
