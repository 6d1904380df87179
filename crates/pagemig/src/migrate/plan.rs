//! How a migration runs: the data the planner ([`crate::policy::Planner::plan`]) fills in and
//! the executors ([`super::kernel`], [`super::remap`]) read. The executors never choose.

use std::time::Duration;

use serde::Serialize;

use crate::account::{ChargeTo, Path, Verify};
use crate::copy::{Copier, Placement};
use crate::topology::CpuId;

/// How a migration runs, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Which way the pages move.
    pub path: Path,
    /// How the remap path copies (`None` on the kernel path, and where the caller gives the
    /// remap path its engine; given such a plan, the [`crate::Migrator`] copies with memcpy on
    /// the calling thread).
    pub copier: Option<Copier>,
    /// CPUs of the threads that call `move_pages` (kernel path) or copy (the remap path's pool
    /// workers), in order. Empty: on the calling thread.
    pub cpus: Vec<CpuId>,
    /// Where those threads were placed (`None` on the calling thread).
    #[serde(skip)]
    pub placement: Option<Placement>,
    /// Base pages per `move_pages` call (the most, under `max_stall`), or per batch of the remap
    /// path (rounded to 2 MB where the range is 2 MB aligned).
    pub batch: usize,
    /// Longest time one kernel call may hold the target's pages (kernel path; batches adapt).
    pub max_stall: Option<Duration>,
    /// Also move pages shared with other processes (`MPOL_MF_MOVE_ALL`, needs `CAP_SYS_NICE`).
    pub move_all: bool,
    /// Kernel path: pages in one aligned region of this many bytes stay in one call, so that no
    /// two calls share a folio (one entry queued for migration makes the folio's next `EBUSY`).
    /// Zero: batches are cut anywhere.
    pub region: usize,
    /// Who pays: with [`ChargeTo::Target`] the kernel path's calls are made by a helper process
    /// in the target's cgroup (see [`super::in_cgroup`]).
    pub charge: ChargeTo,
    /// How the remap path checks the new pages.
    pub verify: Verify,
    /// Predicted GB/s, when a cost model was used.
    pub predicted_gbps: Option<f64>,
    /// The user fixed the thread count (kernel path): the executor does not try fewer threads.
    pub threads_fixed: bool,
    /// Predicted GB/s of the baseline the plan must not lose to (one thread).
    pub baseline_gbps: Option<f64>,
    /// Why, one reason per choice.
    pub why: Vec<String>,
}

impl Plan {
    /// The kernel path, calls on the calling thread, `batch` pages each.
    pub fn serial(batch: usize) -> Self {
        Plan {
            path: Path::Kernel,
            copier: None,
            cpus: Vec::new(),
            placement: None,
            batch,
            max_stall: None,
            move_all: false,
            region: 0,
            charge: ChargeTo::Caller,
            verify: Verify::Sample,
            predicted_gbps: None,
            threads_fixed: false,
            baseline_gbps: None,
            why: Vec::new(),
        }
    }

    /// The kernel path, one pinned thread per CPU of `cpus`, `batch` pages per call.
    pub fn parallel(cpus: Vec<CpuId>, batch: usize) -> Self {
        Plan {
            cpus,
            ..Plan::serial(batch)
        }
    }

    /// The remap path, `batch` base pages per batch, copying with whatever engine its executor
    /// is given.
    pub fn remap(batch: usize) -> Self {
        Plan {
            path: Path::Remap,
            ..Plan::serial(batch)
        }
    }
}
