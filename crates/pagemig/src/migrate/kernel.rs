//! The kernel path: `move_pages(2)` for any process, batches split over pinned threads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::in_cgroup;
use super::{MigrateError, check_target};
use crate::account::{CallStats, Charge, ChargeTo, FailureCause, Phases, Report, SkipReason};
use crate::cgroup::Cgroup;
use crate::process::Process;
use crate::procfs::{self, ProcfsError, VmArea};
use crate::sys::{self, Errno, PageNode, SysError};
use crate::topology::{CpuId, NodeId, NodeSet, Topology};

/// How the kernel path runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPlan {
    /// One thread per entry, pinned to that CPU, each calling `move_pages` on its batches.
    /// Empty: one call after another on the calling thread, unpinned.
    pub cpus: Vec<CpuId>,
    /// Pages per `move_pages` call (the most, when `max_stall` adapts it).
    pub batch: usize,
    /// Longest time one call may hold the target's pages: batch sizes follow the measured cost
    /// per page so that calls stay under it.
    pub max_stall: Option<Duration>,
    /// Also move pages shared with other processes (`MPOL_MF_MOVE_ALL`, needs `CAP_SYS_NICE`).
    pub move_all: bool,
    /// Who pays: with [`ChargeTo::Target`] the calls are made by a helper process in the
    /// target's cgroup (see [`super::in_cgroup`]).
    pub charge: ChargeTo,
    /// Entries next to each other in the array whose pages are in one aligned region of this
    /// many bytes stay in one call, so that no two calls share a folio (the kernel answers a
    /// folio's entries by each other: one queued for migration makes the next `EBUSY`). Zero:
    /// batches are cut anywhere.
    pub region: usize,
}

impl KernelPlan {
    /// Calls on the calling thread, `batch` pages each.
    pub fn serial(batch: usize) -> Self {
        KernelPlan {
            cpus: Vec::new(),
            batch,
            max_stall: None,
            move_all: false,
            charge: ChargeTo::Caller,
            region: 0,
        }
    }

    /// One pinned thread per CPU of `cpus`, `batch` pages per call.
    pub fn parallel(cpus: Vec<CpuId>, batch: usize) -> Self {
        KernelPlan {
            cpus,
            ..KernelPlan::serial(batch)
        }
    }
}

/// Batch size of the first calls under `max_stall`, before the cost per page is known.
const PROBE_BATCH: usize = 16;

/// A status value the kernel never writes: "not reported".
const UNREPORTED: i32 = i32::MIN;

/// Rounds of retries for pages a call left behind.
const MAX_ROUNDS: usize = 4;

/// Pages per placement query.
const QUERY_CHUNK: usize = 1 << 16;

/// What [`move_pages`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// Per page, as `move_pages` reported it: the node the page is on, or `-errno`; `-ESRCH` for
    /// pages not attempted because the process exited, `-ENOMEM` for pages not attempted because
    /// their target node filled up.
    pub status: Vec<i32>,
    /// Kernel calls.
    pub calls: CallStats,
    /// The process exited before every page was attempted.
    pub process_exited: bool,
    /// What the first calls of the batches returned, added up: pages the kernel could not
    /// migrate and those after them in the call that it did not try. Their status is what the
    /// retries found.
    pub left_behind: u64,
}

/// Whether a failed call means the process is gone: `ESRCH`, or `EINVAL` from a process that is
/// exiting (its memory is freed before /proc shows it as a zombie).
fn is_gone(process: Process, e: &SysError) -> bool {
    e.errno == Errno::SRCH || (e.errno == Errno::INVAL && procfs::has_exited(process))
}

fn sys_error(process: Process, e: SysError) -> MigrateError {
    match e.errno {
        _ if is_gone(process, &e) => MigrateError::NoSuchProcess { process },
        Errno::PERM | Errno::ACCESS => MigrateError::PermissionDenied { process },
        _ => MigrateError::Sys { process, source: e },
    }
}

/// State shared by the threads moving one node's group of pages.
struct Group<'a> {
    process: Process,
    pages: &'a [usize],
    node: NodeId,
    cursor: AtomicUsize,
    batch: &'a AtomicUsize,
    plan: &'a KernelPlan,
    stop: &'a AtomicBool,
    exited: &'a AtomicBool,
    /// The target node ran out of memory: the group's remaining pages are not tried.
    full: AtomicBool,
    progress: &'a (dyn Fn(u64) + Sync),
}

#[derive(Default)]
struct ThreadResult {
    pieces: Vec<(usize, Vec<i32>)>,
    durations: Vec<Duration>,
    cpu_time: Duration,
    left_behind: u64,
    error: Option<MigrateError>,
}

impl Group<'_> {
    fn run(&self, cpu: Option<CpuId>) -> ThreadResult {
        let mut out = ThreadResult::default();
        if let Some(cpu) = cpu
            && let Err(source) = sys::pin_current_thread(cpu)
        {
            self.stop.store(true, Ordering::Relaxed);
            out.error = Some(MigrateError::Pin { cpu, source });
            return out;
        }
        let cpu_start = sys::thread_cpu_time();
        let mut targets = Vec::new();
        while !self.stop.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed) {
            let want = self.batch.load(Ordering::Relaxed).max(1);
            let Some(Range { start, end }) = self.claim(want) else {
                break;
            };
            let first_call = out.durations.len();
            match self.move_batch(&self.pages[start..end], &mut targets, &mut out) {
                Ok(status) => {
                    out.pieces.push((start, status));
                    (self.progress)((end - start) as u64);
                    // The first call of the batch had all its pages; retries had fewer.
                    if let Some(&took) = out.durations.get(first_call) {
                        self.adapt(took, end - start);
                    }
                }
                Err(e) if is_gone(self.process, &e) => {
                    self.exited.store(true, Ordering::Relaxed);
                    self.stop.store(true, Ordering::Relaxed);
                }
                Err(e) if e.errno == Errno::NOMEM => {
                    // The target node is full: say so for the pages of this batch that did not
                    // get there, and for every page of the group not tried yet.
                    self.full.store(true, Ordering::Relaxed);
                    let batch = &self.pages[start..end];
                    match sys::query_page_nodes(self.process.raw(), batch) {
                        Ok(now) => {
                            let status = now
                                .into_iter()
                                .map(|p| match p {
                                    PageNode::Node(n) if n == self.node => n as i32,
                                    _ => -libc::ENOMEM,
                                })
                                .collect();
                            out.pieces.push((start, status));
                            (self.progress)((end - start) as u64);
                        }
                        Err(e) => {
                            self.stop.store(true, Ordering::Relaxed);
                            out.error = Some(sys_error(self.process, e));
                        }
                    }
                }
                Err(e) => {
                    self.stop.store(true, Ordering::Relaxed);
                    out.error = Some(sys_error(self.process, e));
                }
            }
        }
        out.cpu_time = sys::thread_cpu_time().saturating_sub(cpu_start);
        out
    }

    /// The next batch: `want` pages, or more to end it where a region of the plan ends.
    fn claim(&self, want: usize) -> Option<Range<usize>> {
        let pages = self.pages;
        let region = self.plan.region.max(1);
        let mut start = self.cursor.load(Ordering::Relaxed);
        loop {
            if start >= pages.len() {
                return None;
            }
            let mut end = (start + want).min(pages.len());
            while end < pages.len() && pages[end] / region == pages[end - 1] / region {
                end += 1;
            }
            match self.cursor.compare_exchange_weak(
                start,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(start..end),
                Err(now) => start = now,
            }
        }
    }

    /// Moves one batch and returns a status per page. When the kernel leaves pages behind
    /// (`move_pages` > 0), it stops at the failing run of pages and reports none of that run, not
    /// even those that moved: ask where the unreported pages are, and try those still elsewhere
    /// again, until no more move. Pages that never move are reported as busy.
    fn move_batch(
        &self,
        pages: &[usize],
        targets: &mut Vec<i32>,
        out: &mut ThreadResult,
    ) -> Result<Vec<i32>, SysError> {
        let mut status = vec![UNREPORTED; pages.len()];
        let mut pending: Vec<usize> = (0..pages.len()).collect();
        for round in 0..MAX_ROUNDS {
            let addrs: Vec<usize> = pending.iter().map(|&i| pages[i]).collect();
            let mut st = vec![UNREPORTED; addrs.len()];
            targets.clear();
            targets.resize(addrs.len(), self.node as i32);
            let t = Instant::now();
            let left = sys::move_pages(
                self.process.raw(),
                &addrs,
                Some(targets),
                &mut st,
                self.plan.move_all,
            )?;
            out.durations.push(t.elapsed());
            for (&i, &s) in pending.iter().zip(&st) {
                status[i] = s;
            }
            if left == 0 {
                break;
            }
            if round == 0 {
                out.left_behind += left as u64;
            }
            pending.retain(|&i| status[i] == UNREPORTED);
            let addrs: Vec<usize> = pending.iter().map(|&i| pages[i]).collect();
            let now = sys::query_page_nodes(self.process.raw(), &addrs)?;
            let before = pending.len();
            let mut still = Vec::new();
            for (&i, place) in pending.iter().zip(now) {
                match place {
                    PageNode::Node(n) if n == self.node => status[i] = n as i32,
                    PageNode::Node(_) => still.push(i),
                    PageNode::Error(e) => status[i] = -e.raw_os_error(),
                }
            }
            if still.is_empty() || still.len() == before {
                break;
            }
            pending = still;
        }
        for s in &mut status {
            if *s == UNREPORTED {
                *s = -libc::EBUSY;
            }
        }
        Ok(status)
    }

    /// Under `max_stall`, sizes the next batches so that a call takes 80% of the limit at the
    /// cost per page just measured.
    fn adapt(&self, took: Duration, pages: usize) {
        if let Some(max) = self.plan.max_stall {
            let per_page = took.as_secs_f64() / pages as f64;
            let fit = if per_page > 0.0 {
                (max.as_secs_f64() * 0.8 / per_page) as usize
            } else {
                self.plan.batch
            };
            self.batch
                .store(fit.clamp(1, self.plan.batch.max(1)), Ordering::Relaxed);
        }
    }
}

/// The cgroup that pays under [`ChargeTo::Target`].
fn target_cgroup(process: Process) -> Result<Cgroup, MigrateError> {
    Cgroup::of(process).map_err(|source| MigrateError::TargetCgroup { process, source })
}

/// Moves `pages[i]` of `process` to node `nodes[i]`: pages are grouped by target node, and each
/// group is moved in batches by the plan's threads. `progress` is called with the number of
/// pages of each completed call. Per-page outcomes are in [`Moved::status`]; an error means the
/// move could not go on (no permission, a thread could not be pinned).
///
/// # Panics
/// If `nodes` is not as long as `pages`.
pub fn move_pages(
    process: Process,
    pages: &[usize],
    nodes: &[NodeId],
    plan: &KernelPlan,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Moved, MigrateError> {
    assert_eq!(pages.len(), nodes.len(), "one target node per page");
    if plan.charge == ChargeTo::Target {
        let cgroup = target_cgroup(process)?;
        // A caller in the target's cgroup already pays there: no helper has to enter it (which
        // would need write access to cgroup.procs for nothing).
        let own = Cgroup::of(Process::Current).ok();
        if own.is_none_or(|c| c.path != cgroup.path) {
            return in_cgroup::move_pages_in(&cgroup, process, pages, nodes, plan, progress);
        }
    }
    let mut order: Vec<usize> = (0..pages.len()).collect();
    order.sort_by_key(|&i| nodes[i]);
    let sorted: Vec<usize> = order.iter().map(|&i| pages[i]).collect();
    let mut sorted_status = vec![-libc::ESRCH; pages.len()];
    let first_batch = if plan.max_stall.is_some() {
        plan.batch.min(PROBE_BATCH)
    } else {
        plan.batch
    };
    let batch = AtomicUsize::new(first_batch.max(1));
    let stop = AtomicBool::new(false);
    let exited = AtomicBool::new(false);
    let mut durations = Vec::new();
    // CPU time of the k-th thread, summed over the node groups (each group has its own threads).
    let mut thread_cpu: Vec<Duration> = Vec::new();
    let mut left_behind = 0;

    let mut lo = 0;
    while lo < sorted.len() && !stop.load(Ordering::Relaxed) {
        let node = nodes[order[lo]];
        let hi = lo
            + order[lo..]
                .iter()
                .take_while(|&&i| nodes[i] == node)
                .count();
        let group = Group {
            process,
            pages: &sorted[lo..hi],
            node,
            cursor: AtomicUsize::new(0),
            batch: &batch,
            plan,
            stop: &stop,
            exited: &exited,
            full: AtomicBool::new(false),
            progress,
        };
        let calls_needed = (hi - lo).div_ceil(batch.load(Ordering::Relaxed).max(1));
        let results: Vec<ThreadResult> = if plan.cpus.is_empty() {
            vec![group.run(None)]
        } else {
            let cpus = &plan.cpus[..plan.cpus.len().min(calls_needed).max(1)];
            let group = &group;
            std::thread::scope(|s| {
                let handles: Vec<_> = cpus
                    .iter()
                    .map(|&cpu| {
                        std::thread::Builder::new()
                            .name(format!("pagemig-move-{cpu}"))
                            .spawn_scoped(s, move || group.run(Some(cpu)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h {
                        Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                        Err(source) => ThreadResult {
                            error: Some(MigrateError::Spawn { source }),
                            ..ThreadResult::default()
                        },
                    })
                    .collect()
            })
        };
        if thread_cpu.len() < results.len() {
            thread_cpu.resize(results.len(), Duration::ZERO);
        }
        // Pages a full node never got a chance at are left behind for want of memory.
        let untried_status = if group.full.load(Ordering::Relaxed) {
            -libc::ENOMEM
        } else {
            -libc::ESRCH
        };
        sorted_status[lo..hi].fill(untried_status);
        for (k, r) in results.into_iter().enumerate() {
            thread_cpu[k] += r.cpu_time;
            left_behind += r.left_behind;
            if let Some(e) = r.error {
                return Err(e);
            }
            for (start, status) in r.pieces {
                sorted_status[lo + start..lo + start + status.len()].copy_from_slice(&status);
            }
            durations.extend(r.durations);
        }
        lo = hi;
    }

    let mut status = vec![0; pages.len()];
    for (k, &i) in order.iter().enumerate() {
        status[i] = sorted_status[k];
    }
    Ok(Moved {
        status,
        calls: CallStats::from_durations(durations, batch.load(Ordering::Relaxed), thread_cpu),
        process_exited: exited.load(Ordering::Relaxed),
        left_behind,
    })
}

/// Where each page is (`move_pages` without nodes), in chunks.
pub fn query(process: Process, pages: &[usize]) -> Result<Vec<PageNode>, MigrateError> {
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(QUERY_CHUNK) {
        out.extend(sys::query_page_nodes(process.raw(), chunk).map_err(|e| sys_error(process, e))?);
    }
    Ok(out)
}

/// Checks, before anything moves, that the process exists, has user memory (not a zombie or a
/// kernel thread) and that the caller may move its pages (an empty `move_pages` call: the
/// kernel's own checks of the pid and the caller's rights).
pub fn check_process(process: Process) -> Result<(), MigrateError> {
    procfs::check_user_memory(process)?;
    sys::move_pages(process.raw(), &[], None, &mut [], false)
        .map(drop)
        .map_err(|e| sys_error(process, e))
}

/// Which memory of the process to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every mapping (except the kernel's `[vdso]`, `[vvar]`, `[vsyscall]`).
    All,
    /// These address ranges (rounded out to whole pages).
    Ranges(Vec<Range<usize>>),
    /// Mappings matching a pattern (see [`VmArea::matches`]).
    Mappings(String),
}

/// A migration of a process's pages to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRequest {
    /// Whose pages.
    pub process: Process,
    /// Target node.
    pub to: NodeId,
    /// Only pages now on these nodes.
    pub from: Option<NodeSet>,
    /// Which memory.
    pub selection: Selection,
    /// Count what would move, move nothing.
    pub dry_run: bool,
}

/// Progress of [`migrate_process`], for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many pages will be moved.
    Planned(u64),
    /// This many more pages were handled by the kernel.
    Moved(u64),
}

/// The parts of the selected mappings to scan.
fn select(
    process: Process,
    areas: Vec<VmArea>,
    selection: &Selection,
) -> Result<Vec<Range<usize>>, MigrateError> {
    let (special, areas): (Vec<VmArea>, Vec<VmArea>) =
        areas.into_iter().partition(VmArea::is_special);
    match selection {
        Selection::All => Ok(areas.iter().map(|a| a.start..a.end).collect()),
        Selection::Mappings(pattern) => {
            let picked: Vec<_> = areas
                .iter()
                .filter(|a| a.matches(pattern))
                .map(|a| a.start..a.end)
                .collect();
            if picked.is_empty()
                && let Some(area) = special.iter().find(|a| a.matches(pattern))
            {
                return Err(MigrateError::KernelMapping {
                    process,
                    pattern: pattern.clone(),
                    mapping: area.path.clone(),
                });
            }
            if picked.is_empty() {
                return Err(MigrateError::NoMatchingMapping {
                    process,
                    pattern: pattern.clone(),
                });
            }
            Ok(picked)
        }
        Selection::Ranges(ranges) => {
            let page = sys::base_page_size();
            let mut out = Vec::new();
            for r in ranges {
                if r.start >= r.end {
                    return Err(MigrateError::BadRange {
                        start: r.start,
                        end: r.end,
                        reason: "the end is not after the start",
                    });
                }
                // An end in the last page of the address space cannot be rounded up: clamp it
                // (no process maps that page).
                let end = r
                    .end
                    .checked_next_multiple_of(page)
                    .unwrap_or(usize::MAX / page * page);
                let start = r.start / page * page;
                let before = out.len();
                out.extend(
                    areas
                        .iter()
                        .filter(|a| a.start < end && start < a.end)
                        .map(|a| a.start.max(start)..a.end.min(end)),
                );
                if out.len() == before {
                    return Err(MigrateError::BadRange {
                        start: r.start,
                        end: r.end,
                        reason: "nothing is mapped there in this process",
                    });
                }
            }
            Ok(out)
        }
    }
}

/// Moves the selected, present pages of a process that are not on `to` yet (and are on `from`,
/// when given) to node `to`, then asks the kernel again where each one is to count what moved.
pub fn migrate_process(
    topology: &Topology,
    request: &ProcessRequest,
    plan: &KernelPlan,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    migrate_process_planned(topology, request, &|_| Ok(plan.clone()), progress)
}

/// As [`migrate_process`], with the plan chosen by `plan(bytes)` once the bytes to move are
/// known (after the scan, before anything moves).
pub fn migrate_process_planned(
    topology: &Topology,
    request: &ProcessRequest,
    plan: &dyn Fn(u64) -> Result<KernelPlan, MigrateError>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    let started = Instant::now();
    let process = request.process;
    check_target(topology, request.to)?;
    if let Some(from) = &request.from {
        for node in from.iter() {
            if topology.node(node).is_none() {
                return Err(MigrateError::NoSuchNode {
                    node,
                    online: topology.nodes.iter().map(|n| n.id).collect(),
                });
            }
        }
    }
    let mut phases = Phases::default();

    let t = Instant::now();
    check_process(process)?;
    let ranges = select(process, procfs::read_maps(process)?, &request.selection)?;
    let mut present = Vec::new();
    for r in ranges {
        match procfs::present_pages(process, r, &mut present) {
            // A mapping that went away meanwhile has no pages to move.
            Err(ProcfsError::Read { .. }) => {}
            other => other?,
        }
    }
    phases.scan = t.elapsed();

    let t = Instant::now();
    let before = query(process, &present)?;
    phases.query = t.elapsed();

    let mut failed: BTreeMap<FailureCause, u64> = BTreeMap::new();
    let mut skipped: BTreeMap<SkipReason, u64> = BTreeMap::new();
    let mut already = 0u64;
    let mut to_move = Vec::new();
    let mut requested = 0u64;
    for (&page, place) in present.iter().zip(&before) {
        match *place {
            PageNode::Node(n) if request.from.as_ref().is_some_and(|f| !f.contains(n)) => {}
            PageNode::Node(n) if n == request.to => {
                requested += 1;
                already += 1;
            }
            PageNode::Node(_) => {
                requested += 1;
                to_move.push(page);
            }
            PageNode::Error(_) if request.from.is_some() => {}
            // Present in the page tables but no page the kernel can move: the shared zero page
            // of memory read but never written (`EFAULT`), or freed since the scan (`ENOENT`).
            PageNode::Error(Errno::FAULT | Errno::NOENT) => {
                requested += 1;
                *skipped.entry(SkipReason::NothingToMove).or_default() += 1;
            }
            PageNode::Error(e) => {
                requested += 1;
                *failed.entry(FailureCause::from_errno(e)).or_default() += 1;
            }
        }
    }
    progress(Progress::Planned(to_move.len() as u64));
    let page_size = sys::base_page_size() as u64;
    let plan = &plan(to_move.len() as u64 * page_size)?;
    let mut report = Report {
        process,
        to: request.to,
        dry_run: request.dry_run,
        page_size,
        pages_requested: requested,
        pages_moved: 0,
        pages_already_on_target: already,
        pages_skipped: skipped,
        pages_failed: failed,
        pages_left_by_node: BTreeMap::new(),
        bytes_moved: 0,
        calls: CallStats::default(),
        phases,
        wall: Duration::ZERO,
        process_exited: false,
        charged_to: Charge {
            to: plan.charge,
            cgroup: None,
            usage_before_usec: None,
            usage_after_usec: None,
        },
    };
    if request.dry_run {
        report.pages_moved = to_move.len() as u64;
        report.bytes_moved = report.pages_moved * page_size;
        report.wall = started.elapsed();
        return Ok(report);
    }

    let paying = match plan.charge {
        ChargeTo::Caller => Cgroup::of(Process::Current).ok(),
        ChargeTo::Target => Some(target_cgroup(process)?),
    };
    let usage = || {
        paying
            .as_ref()
            .and_then(|c| c.usage().ok())
            .map(|u| u.usage_usec)
    };
    report.charged_to.cgroup = paying.as_ref().map(|c| c.path.clone());
    report.charged_to.usage_before_usec = usage();
    let t = Instant::now();
    let targets = vec![request.to; to_move.len()];
    let moved = move_pages(process, &to_move, &targets, plan, &|n| {
        progress(Progress::Moved(n))
    })?;
    report.phases.moving = t.elapsed();
    report.charged_to.usage_after_usec = usage();
    report.calls = moved.calls;
    report.process_exited = moved.process_exited;

    // The status array is not the truth for huge pages (subpages of a THP that moved can say
    // EBUSY), so ask again where every page is; only if the process is gone, trust the array.
    let t = Instant::now();
    let after = if moved.process_exited {
        None
    } else {
        match query(process, &to_move) {
            Ok(a) => Some(a),
            Err(MigrateError::NoSuchProcess { .. }) => {
                report.process_exited = true;
                None
            }
            Err(e) => return Err(e),
        }
    };
    report.phases.verify = t.elapsed();
    for (i, &status) in moved.status.iter().enumerate() {
        let now = after
            .as_ref()
            .map_or(PageNode::from_status(status), |a| a[i]);
        match now {
            PageNode::Node(n) if n == request.to => report.pages_moved += 1,
            // Without MPOL_MF_MOVE_ALL, shared pages stay by request, not by failure.
            PageNode::Node(_) if status == -libc::EACCES && !plan.move_all => {
                *report.pages_skipped.entry(SkipReason::Shared).or_default() += 1;
            }
            PageNode::Node(n) => {
                *report.pages_left_by_node.entry(n).or_default() += 1;
                let cause = if status < 0 {
                    FailureCause::from_errno(Errno::from_raw_os_error(-status))
                } else {
                    FailureCause::StillElsewhere
                };
                *report.pages_failed.entry(cause).or_default() += 1;
            }
            PageNode::Error(e) => {
                let cause = if status < 0 {
                    Errno::from_raw_os_error(-status)
                } else {
                    e
                };
                *report
                    .pages_failed
                    .entry(FailureCause::from_errno(cause))
                    .or_default() += 1;
            }
        }
    }
    report.bytes_moved = report.pages_moved * page_size;
    report.wall = started.elapsed();
    Ok(report)
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "a selection is a list of ranges"
)]
mod tests {
    use super::*;
    use crate::sys::Mapping;

    fn this_node() -> (Topology, NodeId) {
        let t = Topology::detect().unwrap();
        let n = t.memory_nodes().iter().next().unwrap();
        (t, n)
    }

    #[test]
    fn batches_end_where_a_region_of_the_plan_ends() {
        let r = 1 << 21;
        // Two entries per region.
        let pages: Vec<usize> = (0..8).map(|i| i * (r / 2)).collect();
        let (stop, exited) = (AtomicBool::new(false), AtomicBool::new(false));
        let claims = |region: usize, want: usize| {
            let plan = KernelPlan {
                region,
                ..KernelPlan::serial(want)
            };
            let batch = AtomicUsize::new(want);
            let group = Group {
                process: Process::Current,
                pages: &pages,
                node: 0,
                cursor: AtomicUsize::new(0),
                batch: &batch,
                plan: &plan,
                stop: &stop,
                exited: &exited,
                full: AtomicBool::new(false),
                progress: &|_| {},
            };
            std::iter::from_fn(|| group.claim(want)).collect::<Vec<_>>()
        };
        assert_eq!(claims(r, 1), [0..2, 2..4, 4..6, 6..8]);
        assert_eq!(claims(r, 3), [0..4, 4..8]);
        assert_eq!(claims(0, 3), [0..3, 3..6, 6..8]);
    }

    #[test]
    fn pages_already_on_the_only_node_are_counted_as_such() {
        let (topo, node) = this_node();
        let mut m = Mapping::anonymous(32 * 4096).unwrap();
        m.as_mut_slice()[..20 * 4096].fill(9);
        let start = m.as_ptr() as usize;
        let req = ProcessRequest {
            process: Process::Current,
            to: node,
            from: None,
            selection: Selection::Ranges(vec![start..start + 32 * 4096]),
            dry_run: false,
        };
        let cpus: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
        for plan in [KernelPlan::serial(4), KernelPlan::parallel(cpus.clone(), 3)] {
            let r = migrate_process(&topo, &req, &plan, &|_| {}).unwrap();
            assert_eq!(r.pages_requested, 20, "{r:?}");
            assert_eq!(r.pages_already_on_target, 20);
            assert_eq!(r.pages_moved, 0);
            assert_eq!(r.pages_not_moved(), 0);
        }
        assert!(m.as_slice()[..20 * 4096].iter().all(|&b| b == 9));
    }

    #[test]
    fn pages_only_read_are_nothing_to_move_not_failures() {
        let (topo, node) = this_node();
        let mut m = Mapping::anonymous(32 * 4096).unwrap();
        m.as_mut_slice()[..8 * 4096].fill(5);
        // Reading maps the kernel's shared zero page: present, but no page of its own.
        let sum: u64 = (8..24)
            .map(|i| u64::from(std::hint::black_box(m.as_slice()[i * 4096])))
            .sum();
        assert_eq!(sum, 0);
        let start = m.as_ptr() as usize;
        let req = ProcessRequest {
            process: Process::Current,
            to: node,
            from: None,
            selection: Selection::Ranges(vec![start..start + 32 * 4096]),
            dry_run: false,
        };
        let r = migrate_process(&topo, &req, &KernelPlan::serial(8), &|_| {}).unwrap();
        assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
        assert_eq!(r.pages_already_on_target, 8, "{r:#?}");
        assert_eq!(
            r.pages_skipped.get(&SkipReason::NothingToMove),
            Some(&16),
            "{r:#?}"
        );
        assert_eq!(
            r.pages_moved + r.pages_already_on_target + r.pages_skipped_total(),
            r.pages_requested
        );
    }

    #[test]
    fn moving_to_the_current_node_reports_every_page() {
        let (_, node) = this_node();
        let mut m = Mapping::anonymous(64 * 4096).unwrap();
        m.as_mut_slice().fill(1);
        let pages: Vec<usize> = (0..64).map(|i| m.as_ptr() as usize + i * 4096).collect();
        let calls = std::sync::atomic::AtomicU64::new(0);
        let mut plan = KernelPlan::parallel(sys::allowed_cpus().unwrap().iter().collect(), 8);
        plan.max_stall = Some(Duration::from_secs(1));
        let moved = move_pages(Process::Current, &pages, &vec![node; 64], &plan, &|n| {
            calls.fetch_add(n, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 64);
        assert!(
            moved.status.iter().all(|&s| s == node as i32),
            "{:?}",
            moved.status
        );
        assert!(!moved.process_exited);
        assert!(moved.calls.calls >= 8);
        assert!(moved.calls.longest >= moved.calls.median);
    }

    #[test]
    fn selections_are_checked() {
        let m = Mapping::anonymous(4 * 4096).unwrap();
        let start = m.as_ptr() as usize;
        let areas = procfs::read_maps(Process::Current).unwrap();
        let picked = select(
            Process::Current,
            areas.clone(),
            &Selection::Ranges(vec![start + 10..start + 4096 + 1]),
        )
        .unwrap();
        assert_eq!(picked, [start..start + 2 * 4096]);
        assert!(matches!(
            select(
                Process::Current,
                areas.clone(),
                &Selection::Ranges(vec![start..start])
            ),
            Err(MigrateError::BadRange {
                reason: "the end is not after the start",
                ..
            })
        ));
        assert!(matches!(
            select(
                Process::Current,
                areas.clone(),
                &Selection::Ranges(vec![4096..8192])
            ),
            Err(MigrateError::BadRange {
                reason: "nothing is mapped there in this process",
                ..
            })
        ));
        assert!(matches!(
            select(
                Process::Current,
                areas.clone(),
                &Selection::Mappings("no-such-file".into())
            ),
            Err(MigrateError::NoMatchingMapping { .. })
        ));
        let e = select(
            Process::Current,
            areas.clone(),
            &Selection::Mappings("[vdso]".into()),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("selects only the kernel's own mapping [vdso] of the calling process"),
            "{e}"
        );
        // An end in the last page of the address space is clamped, not wrapped.
        let to_the_top = select(
            Process::Current,
            areas.clone(),
            &Selection::Ranges(vec![0..usize::MAX]),
        )
        .unwrap();
        assert!(
            to_the_top.iter().any(|r| r.contains(&start)),
            "{to_the_top:x?}"
        );
        let all = select(Process::Current, areas, &Selection::All).unwrap();
        assert!(all.iter().any(|r| r.contains(&start)));
    }

    #[test]
    fn a_missing_pid_is_refused() {
        let (topo, node) = this_node();
        let req = ProcessRequest {
            process: Process::Pid(i32::MAX as u32 - 1),
            to: node,
            from: None,
            selection: Selection::All,
            dry_run: false,
        };
        let err = migrate_process(&topo, &req, &KernelPlan::serial(64), &|_| {}).unwrap_err();
        assert!(matches!(err, MigrateError::NoSuchProcess { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }
}
