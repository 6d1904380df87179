//! `move_pages(2)` and `migrate_pages(2)` as their man pages define them, executed by pagemig
//! for the C libraries (libpagemig and the `LD_PRELOAD` library), with the kernel's own answer
//! (return value, errno, every status entry).
//!
//! [`move_pages`] is split by target node and run by the kernel path's executor only where the
//! kernel answers each page of the split calls exactly as in the one call; anything else goes
//! to the kernel unchanged, and the [`Execution`] says why. [`migrate_pages`] moves the pages
//! with pagemig's threads, then makes the caller's own call, which gives the return value. The
//! settings are values ([`Context::new`]): this module neither reads the environment nor prints.

mod migrate_pages;
mod move_pages;

use std::ffi::{c_int, c_long};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use migrate_pages::migrate_pages;
pub use move_pages::move_pages;

use crate::Threads;
use crate::account::{CallStats, Report};
use crate::copy::Route;
use crate::policy::{CostModel, Job, Planner, Resources};
use crate::process::Process;
use crate::sys::{self, Errno};
use crate::topology::{CpuId, CpuSet, NodeId, Topology};
use crate::workers::Workers;

pub use crate::sys::{MPOL_MF_MOVE, MPOL_MF_MOVE_ALL};

/// Batch of the kernel path's calls: the planner's unit.
const MIGRATE_BATCH: usize = 4096;

/// What pagemig plans with: the machine and the settings, fixed for the life of the process
/// that loaded the library.
#[derive(Debug, Clone)]
pub struct Context {
    /// The machine, or why it cannot be read: then every call goes to the kernel unchanged.
    pub topology: Result<Topology, String>,
    /// Its calibrated cost model, if one is used.
    pub model: Option<CostModel>,
    /// Threads per call: `auto` (the planner) or a fixed count.
    pub threads: Threads,
    /// `move_pages` calls of fewer bytes than this go to the kernel unchanged without further
    /// checks: below it the planner gives one thread even with every allowed CPU idle. Zero:
    /// every call is planned; `u64::MAX`: none is.
    pub min_split_bytes: u64,
    /// The pinned threads that make the split calls, kept for the life of the context.
    pub workers: Arc<Workers>,
}

impl Context {
    /// The running machine with these settings; a machine whose topology cannot be read gives
    /// a context that passes every call to the kernel ([`Context::topology`] says why).
    ///
    /// ```
    /// use pagemig::abi::Context;
    /// use pagemig::Threads;
    ///
    /// let ctx = Context::new(Threads::Count(1), None);
    /// // One thread per call: every call goes to the kernel as it is.
    /// assert_eq!(ctx.min_split_bytes, u64::MAX);
    /// ```
    pub fn new(threads: Threads, model: Option<CostModel>) -> Self {
        match Topology::detect() {
            Ok(topology) => Context::with_topology(topology, threads, model, Arc::default()),
            Err(e) => Context {
                topology: Err(e.to_string()),
                model,
                threads,
                workers: Arc::default(),
                min_split_bytes: u64::MAX,
            },
        }
    }

    /// The settings on a topology already read. [`Context::min_split_bytes`] is the smallest
    /// migration (a power of two) that the planner gives two threads with every CPU allowed now,
    /// no quota and no load: resources only lower the count, so smaller calls skip planning.
    pub fn with_topology(
        topology: Topology,
        threads: Threads,
        model: Option<CostModel>,
        workers: Arc<Workers>,
    ) -> Self {
        let min_split_bytes = match threads {
            Threads::Count(n) if n >= 2 => 0,
            Threads::Count(_) => u64::MAX,
            Threads::Auto => {
                let best = Resources {
                    allowed: sys::allowed_cpus().unwrap_or_default(),
                    cpu_quota: None,
                    busy_cpus: 0.0,
                };
                let planner = Planner::new(&topology, model.as_ref(), best);
                (0..48)
                    .map(|k| (sys::base_page_size() as u64) << k)
                    .find(|&bytes| cpus_planned(&planner, threads, bytes, Route::default()).is_ok())
                    // A smaller call may still plan two threads where the curve is not
                    // monotone: halve it once for margin.
                    .map_or(u64::MAX, |bytes| bytes / 2)
            }
        };
        Context {
            topology: Ok(topology),
            model,
            threads,
            min_split_bytes,
            workers,
        }
    }

    /// The machine calls are planned for, or why they cannot be planned here.
    fn usable(&self) -> Result<&Topology, String> {
        self.topology
            .as_ref()
            .map_err(|why| format!("no topology: {why}"))
    }

    /// [`cpus_planned`] with the resources of now.
    fn threads_for(&self, bytes: u64, route: Route) -> Result<Vec<CpuId>, String> {
        let resources = Resources::snapshot().map_err(|e| e.to_string())?;
        let planner = Planner::new(self.usable()?, self.model.as_ref(), resources);
        cpus_planned(&planner, self.threads, bytes, route)
    }
}

/// The CPUs of the threads `planner` (or the setting `threads`) gives a move of `bytes` along
/// `route`, or why it is one thread.
fn cpus_planned(
    planner: &Planner<'_>,
    threads: Threads,
    bytes: u64,
    route: Route,
) -> Result<Vec<CpuId>, String> {
    let batch_bytes = MIGRATE_BATCH as u64 * sys::base_page_size() as u64;
    let job = Job { bytes, route };
    let choice = planner
        .plan_kernel_as(job, batch_bytes, threads, None, "the thread setting")
        .map_err(|e| e.to_string())?;
    if choice.cpus.len() <= 1 {
        return Err(format!("one thread planned ({})", choice.why.join("; ")));
    }
    Ok(choice.cpus)
}

/// How a call was executed.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    /// `move_pages`, split into calls by target node, run by the kernel path's threads.
    Split {
        /// The threads' CPUs.
        cpus: Vec<CpuId>,
        /// Target nodes (one group of calls each).
        groups: usize,
        /// The kernel calls, as the executor counted them.
        calls: CallStats,
    },
    /// `migrate_pages`: pagemig's threads moved pages between these nodes, then the caller's own
    /// call finished the job and gave the answer.
    Prepared {
        /// The threads' CPUs.
        cpus: Vec<CpuId>,
        /// (from, to) node pairs, in the kernel's order.
        pairs: Vec<(NodeId, NodeId)>,
        /// What the kernel path did for each pair, in order (fewer when it stopped early).
        reports: Vec<Report>,
        /// Why pagemig's threads stopped early (the kernel's call did the rest), if they did.
        stopped: Option<String>,
    },
    /// Passed to the kernel unchanged, for this reason.
    Kernel(String),
}

/// One call's answer and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The call and its main arguments, as a log line shows them.
    pub request: String,
    /// What the system call returns: pages not migrated, or the error.
    pub result: Result<usize, Errno>,
    /// How.
    pub execution: Execution,
    /// Wall time of the call.
    pub took: Duration,
}

impl Call {
    /// What a C function returns: the result, or -1 with `errno` set (call it last).
    pub fn c_return(&self) -> c_long {
        match self.result {
            Ok(n) => n as c_long,
            Err(errno) => {
                sys::set_errno(errno);
                -1
            }
        }
    }
}

impl fmt::Display for Call {
    /// `move_pages(pid 42, 4096 pages, flags 0x2) = 0 in 1.200 ms: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Ok(n) => write!(f, "{} = {n}", self.request)?,
            Err(e) => write!(f, "{} = -1 ({e})", self.request)?,
        }
        let ms = self.took.as_secs_f64() * 1e3;
        write!(f, " in {ms:.3} ms: {}", self.execution)
    }
}

impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpu_list = |cpus: &[CpuId]| cpus.iter().copied().collect::<CpuSet>();
        match self {
            Execution::Split {
                cpus,
                groups,
                calls,
            } => write!(
                f,
                "{} thread(s) on CPUs {}, {groups} target node(s), {} kernel calls",
                calls.threads,
                cpu_list(&cpus[..calls.threads.min(cpus.len())]),
                calls.calls
            ),
            Execution::Prepared {
                cpus,
                pairs,
                reports,
                stopped,
            } => {
                let pages: u64 = reports.iter().map(|r| r.pages_moved).sum();
                let pairs: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}->{b}")).collect();
                write!(
                    f,
                    "{pages} pages moved {} by {} thread(s) on CPUs {}, then the kernel's own call",
                    pairs.join(","),
                    cpus.len(),
                    cpu_list(cpus)
                )?;
                match stopped {
                    Some(why) => write!(f, " (pagemig stopped early: {why})"),
                    None => Ok(()),
                }
            }
            Execution::Kernel(reason) => write!(f, "passed to the kernel: {reason}"),
        }
    }
}

/// Why a call goes to the kernel unchanged when a step before anything moves fails with `e`:
/// the kernel's own call then gives the answer for it.
fn kernel_answers(what: &str) -> impl FnOnce(sys::SysError) -> String + '_ {
    move |e| format!("{what} ({}): the kernel answers", e.errno)
}

/// The process a C caller names: 0 and its own pid are the caller.
fn process_of(pid: c_int) -> Process {
    if pid == 0 || pid as u32 == std::process::id() {
        Process::Current
    } else {
        Process::Pid(pid as u32)
    }
}
