//! The front door: a [`Migrator`] is built once and moves memory for as long as it lives.

use std::sync::Arc;

use crate::account::{Laps, Path, Report};
use crate::copy::{Copier, CopyEngine, CpuEngine, EngineKind, Pool, dma};
use crate::migrate::remap::{self, Handles, Tools};
use crate::migrate::reservoir::Reservoirs;
use crate::migrate::scan::{self, Found};
use crate::migrate::{Memory, MigrateError, Plan, Progress, Request, Scan, Selection, in_cgroup};
use crate::policy::{CostModel, Planner, Resources};
use crate::process::Process;
use crate::topology::Topology;
use crate::workers::Workers;

/// Moves memory between nodes: request → scan → plan → execute → report.
///
/// Built once, it holds what does not change between migrations: the topology, the cost model,
/// the planner's resources, the pinned worker threads ([`Migrator::workers`]), the remap path's
/// userfaultfd (where it cannot be opened, the plan says why) and reservoirs if asked for.
///
/// Move this process's heap to the node it is on (a real migration on any machine; on a
/// machine with several nodes, name another):
/// ```
/// use pagemig::{Migrator, Request, Selection};
/// use pagemig::process::Process;
///
/// let migrator = Migrator::new()?;
/// let node = migrator.topology().memory_nodes().iter().next().unwrap();
/// let heap = Request::process(Process::Current, Selection::Mappings("[heap]".into()), node);
/// let report = migrator.migrate(&heap)?;
/// assert_eq!(report.pages_not_moved(), 0);
/// println!("{} pages moved in {:?} by the {} path", report.pages_moved, report.wall, report.path);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Move a buffer of its own, keeping its addresses (with reservoirs: later moves reuse the
/// pages earlier ones freed):
/// ```
/// use pagemig::{Migrator, Request};
/// use pagemig::sys::Mapping;
///
/// let migrator = Migrator::new()?.with_reservoirs(64 << 20);
/// let node = migrator.topology().memory_nodes().iter().next().unwrap();
/// let mut buffer = Mapping::anonymous(4 << 20)?;
/// buffer.as_mut_slice().fill(7);
/// let len = buffer.len();
/// let report = migrator.migrate(&Request::mapping(&mut buffer, 0..len, node))?;
/// assert_eq!(report.pages_moved + report.pages_already_on_target, 1024);
/// assert!(buffer.as_slice().iter().all(|&b| b == 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Print the plan, and why, without moving anything:
/// ```
/// use pagemig::{Migrator, Request, Selection};
/// use pagemig::process::Process;
///
/// let migrator = Migrator::new()?;
/// let node = migrator.topology().memory_nodes().iter().next().unwrap();
/// let (scan, plan) = migrator.plan(&Request::process(Process::Current, Selection::All, node))?;
/// println!("{} bytes to move by the {} path", scan.bytes_to_move(), plan.path);
/// for why in &plan.why {
///     println!("  because {why}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Migrator {
    topology: Topology,
    model: Option<CostModel>,
    resources: Resources,
    handles: Result<Handles, String>,
    reservoirs: Option<Reservoirs>,
    workers: Arc<Workers>,
}

impl Migrator {
    /// A migrator for this machine: its topology from sysfs, no cost model (the planner then
    /// uses one thread where it would need measurements), the resources as they are now (an
    /// affinity mask that cannot be read is a [`MigrateError::Sys`] of the calling process).
    pub fn new() -> Result<Self, MigrateError> {
        let topology = Topology::detect()?;
        let resources = Resources::snapshot().map_err(|source| MigrateError::Sys {
            process: Process::Current,
            source,
        })?;
        Ok(Self::with(topology, None, resources))
    }

    /// A migrator for `topology`, planning with `model` (see [`crate::policy::calibrate`]) and
    /// `resources`.
    pub fn with(topology: Topology, model: Option<CostModel>, resources: Resources) -> Self {
        Migrator {
            topology,
            model,
            resources,
            handles: Handles::open().map_err(|e| e.to_string()),
            reservoirs: None,
            workers: Arc::new(Workers::new()),
        }
    }

    /// Keeps up to `cap_bytes` of pre-faulted pages per node for the remap path, so that its
    /// batches allocate and free no page once the reservoirs have filled.
    pub fn with_reservoirs(mut self, cap_bytes: usize) -> Self {
        self.reservoirs = Some(Reservoirs::new(cap_bytes));
        self
    }

    /// The pinned worker threads every migration of this migrator runs on (copy pools and
    /// `move_pages` calls), started on first use of each CPU, joined when the migrator and every
    /// other holder are dropped.
    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// The topology migrations are planned for.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Scans and plans `request` without moving anything; the time planning took is the
    /// scan's `plan` phase, its CPU time is in the scan's.
    pub fn plan(&self, request: &Request<'_>) -> Result<(Scan, Plan), MigrateError> {
        let mut scan = scan::scan(&self.topology, request)?;
        let mut laps = Laps::start();
        let plan = Planner::new(&self.topology, self.model.as_ref(), self.resources.clone())
            .remap_support(self.handles.as_ref().map(drop).map_err(Clone::clone))
            .plan(request, &scan)?;
        laps.lap(&mut scan.phases.plan);
        scan.caller_cpu += laps.cpu();
        Ok((scan, plan))
    }

    /// Scans, plans and executes `request`.
    pub fn migrate(&self, request: &Request<'_>) -> Result<Report, MigrateError> {
        let (scan, plan) = self.plan(request)?;
        self.execute(request, &scan, &plan, &|_| {})
    }

    /// Executes `plan` for `request`, whose scan is `scan` (both from [`Migrator::plan`]); the
    /// report's phases include the scan's and the planning's, not the time between planning
    /// and this call.
    pub fn execute(
        &self,
        request: &Request<'_>,
        scan: &Scan,
        plan: &Plan,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Report, MigrateError> {
        let report = match (&scan.found, plan.path) {
            (Found::Pages(pages), _) => {
                in_cgroup::execute(request, pages, plan, &self.workers, progress)?
            }
            (Found::Runs(runs), Path::Kernel) => {
                // The caller's own memory by the kernel path: its present pages and their nodes.
                let ranges = runs.iter().map(|r| r.range.clone()).collect();
                let as_process =
                    Request::process(Process::Current, Selection::Ranges(ranges), request.to)
                        .with(request.options.clone());
                let workers = &self.workers;
                in_cgroup::scan_and_execute(&self.topology, &as_process, plan, workers, progress)?
            }
            (Found::Runs(_), Path::Remap) => self.remap(request, plan, progress)?,
        };
        Ok(scan.add_to(report))
    }

    /// The remap path for the ranges of `request`, one report for them all.
    fn remap(
        &self,
        request: &Request<'_>,
        plan: &Plan,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Report, MigrateError> {
        // The request's ranges, not the scan's: only a request vouches for memory that may be
        // replaced in place.
        let Memory::Own(own) = request.memory() else {
            return Err(MigrateError::RemapUnavailable {
                why: "the remap path moves only the caller's own memory".into(),
            });
        };
        let handles = self
            .handles
            .as_ref()
            .map_err(|why| MigrateError::RemapUnavailable { why: why.clone() })?;
        let engine = build_engine(plan, &self.workers)?;
        let tools = Tools {
            engine: engine.as_ref(),
            handles,
            reservoirs: self.reservoirs.as_ref(),
        };
        let bytes: usize = own.iter().map(|r| r.len()).sum();
        progress(Progress::Planned(
            (bytes / crate::sys::base_page_size()) as u64,
        ));
        let mut reports = Vec::new();
        for r in own {
            // SAFETY: own ranges are made only by `Request::own`, whose caller keeps
            // `migrate_range`'s contract, and `Request::mapping`, which borrows the mapping
            // exclusively for as long as the request lives.
            #[allow(unsafe_code)]
            let one = unsafe {
                remap::migrate_range(&self.topology, r.start, r.len(), request.to, plan, tools)
            }?;
            progress(Progress::Moved(one.pages_requested));
            reports.push(one);
        }
        reports
            .into_iter()
            .reduce(merge)
            .ok_or(MigrateError::BadRange {
                start: 0,
                end: 0,
                reason: "no range to move",
            })
    }
}

/// The copy engine a plan of the remap path asks for.
fn build_engine(plan: &Plan, workers: &Arc<Workers>) -> Result<Box<dyn CopyEngine>, MigrateError> {
    let copier = plan.copier.unwrap_or(Copier::Thread {
        engine: EngineKind::Memcpy,
    });
    Ok(match copier {
        Copier::Thread { engine } => Box::new(CpuEngine::new(engine)?),
        Copier::Pool { engine, .. } => {
            Box::new(Pool::new(workers, CpuEngine::new(engine)?, &plan.cpus)?)
        }
        Copier::Dma { engine } => Box::new(dma::open(engine)?),
    })
}

/// Two reports of the remap path on ranges of one request, as one.
fn merge(mut all: Report, one: Report) -> Report {
    all.pages_requested += one.pages_requested;
    all.pages_moved += one.pages_moved;
    all.bytes_moved += one.bytes_moved;
    for (k, v) in one.pages_skipped {
        *all.pages_skipped.entry(k).or_default() += v;
    }
    for (k, v) in one.pages_failed {
        *all.pages_failed.entry(k).or_default() += v;
    }
    all.phases.add(&one.phases);
    all.wall += one.wall;
    all.caller_cpu += one.caller_cpu;
    all.calls.cpu_time += one.calls.cpu_time;
    all.calls.threads = all.calls.threads.max(one.calls.threads);
    if let (Some(a), Some(b)) = (all.remap.as_mut(), one.remap) {
        a.batches += b.batches;
        a.pages_from_reservoir += b.pages_from_reservoir;
        a.pages_recycled += b.pages_recycled;
        a.writes_waited += b.writes_waited;
        a.verification.pages_checked += b.verification.pages_checked;
        a.verification.batches_checked_in_full += b.verification.batches_checked_in_full;
    }
    all
}
