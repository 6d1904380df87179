//! The kernel path: `move_pages(2)` for any process, batches split over pinned threads.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::MigrateError;
use super::plan::Plan;
use super::scan::{is_gone, sys_error};
use crate::account::{CallStats, median};
use crate::process::Process;
use crate::sys::{self, Errno, PageNode, SysError};
use crate::topology::NodeId;
use crate::workers::Workers;

/// Batch size of the first calls under `max_stall`, before the cost per page is known.
const PROBE_BATCH: usize = 16;

/// A status value the kernel never writes: "not reported".
const UNREPORTED: i32 = i32::MIN;

/// Rounds of retries for pages a call left behind.
const MAX_ROUNDS: usize = 4;

/// Under the thread-count check, a group moves in this many rounds (at least two calls per
/// thread each); [`CHECK_ROUNDS`] of them measure a thread count.
const ROUNDS: usize = 16;
const CHECK_ROUNDS: usize = 3;

/// The check of a planned thread count while it runs: the median GB/s of [`CHECK_ROUNDS`]
/// rounds; more than 10% under the prediction, half as many threads are tried as long and the
/// faster is kept. One trial at most; nothing is checked without a prediction or with one thread.
struct ThreadCheck {
    /// The plan's thread count and the alternative; which of them runs.
    counts: [usize; 2],
    at: usize,
    predicted: f64,
    window: Vec<f64>,
    /// The plan's count's GB/s in its last window.
    planned: f64,
    settled: bool,
    /// What was measured and decided.
    notes: Vec<String>,
    /// After a trial: GB/s of each thread count, for the cost model to learn.
    measured: Vec<(usize, f64)>,
}

impl ThreadCheck {
    fn new(threads: usize, predicted: Option<f64>) -> Self {
        ThreadCheck {
            counts: [threads, (threads / 2).max(1)],
            at: 0,
            predicted: predicted.unwrap_or(0.0),
            window: Vec::new(),
            planned: 0.0,
            settled: threads < 2 || predicted.is_none(),
            notes: Vec::new(),
            measured: Vec::new(),
        }
    }

    fn threads(&self) -> usize {
        self.counts[self.at]
    }

    /// Takes in the GB/s of one round of [`ThreadCheck::threads`]; judges after a window.
    fn record(&mut self, gbps: f64) {
        if self.settled {
            return;
        }
        self.window.push(gbps);
        if self.window.len() < CHECK_ROUNDS {
            return;
        }
        let m = median(std::mem::take(&mut self.window)).unwrap_or(0.0);
        let ([n, half], p) = (self.counts, self.predicted);
        if self.at == 1 {
            let keep = m > self.planned;
            self.notes.push(format!(
                "tried {half} thread(s): {m:.2} GB/s against {:.2} on {n}: {}",
                self.planned,
                if keep { "kept" } else { "back" }
            ));
            (self.at, self.settled) = (usize::from(keep), true);
            self.measured = vec![(n, self.planned), (half, m)];
        } else if m < 0.9 * p {
            self.notes.push(format!(
                "{n} thread(s) measured {m:.2} GB/s, more than 10% under the predicted {p:.2}: trying {half}"
            ));
            (self.at, self.planned) = (1, m);
        }
    }
}

/// State shared by the threads moving one node's group of pages.
struct Group<'a> {
    process: Process,
    pages: &'a [usize],
    node: NodeId,
    cursor: AtomicUsize,
    /// Where the current round ends: no batch starts there or after.
    end: AtomicUsize,
    batch: &'a AtomicUsize,
    plan: &'a Plan,
    stop: &'a AtomicBool,
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

impl<'a> Group<'a> {
    /// A group of `pages` going to `node`, with nothing claimed and no round end.
    fn new(
        process: Process,
        pages: &'a [usize],
        node: NodeId,
        batch: &'a AtomicUsize,
        plan: &'a Plan,
        stop: &'a AtomicBool,
        progress: &'a (dyn Fn(u64) + Sync),
    ) -> Self {
        Group {
            process,
            pages,
            node,
            cursor: AtomicUsize::new(0),
            end: AtomicUsize::new(usize::MAX),
            batch,
            plan,
            stop,
            full: AtomicBool::new(false),
            progress,
        }
    }

    fn run(&self) -> ThreadResult {
        let mut out = ThreadResult::default();
        let cpu_start = sys::thread_cpu_time();
        while !self.stop.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed) {
            let want = self.batch.load(Ordering::Relaxed).max(1);
            let Some(Range { start, end }) = self.claim(want) else {
                break;
            };
            let first_call = out.durations.len();
            let batch = &self.pages[start..end];
            // The first call of a batch that moved had all its pages; retries had fewer.
            let mut took = None;
            let moved = match self.move_batch(batch, &mut out) {
                Ok(status) => {
                    took = out.durations.get(first_call).copied();
                    Ok(status)
                }
                Err(e) if is_gone(self.process, &e) => {
                    self.stop.store(true, Ordering::Relaxed);
                    continue;
                }
                // The target node is full: say so for the pages of this batch that did not get
                // there, and for every page of the group not tried yet.
                Err(e) if e.errno == Errno::NOMEM => {
                    self.full.store(true, Ordering::Relaxed);
                    let status = |p| match p {
                        PageNode::Node(n) if n == self.node => n as i32,
                        _ => -libc::ENOMEM,
                    };
                    let now = sys::query_page_nodes(self.process.raw(), batch);
                    now.map(|now| now.into_iter().map(status).collect())
                }
                Err(e) => Err(e),
            };
            match moved {
                Ok(status) => {
                    out.pieces.push((start, status));
                    (self.progress)((end - start) as u64);
                    if let Some(took) = took {
                        self.adapt(took, end - start);
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
            if start >= pages.len().min(self.end.load(Ordering::Relaxed)) {
                return None;
            }
            let mut end = start.saturating_add(want).min(pages.len());
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

    /// Moves one batch and returns a status per page. Where the kernel leaves pages behind, it
    /// reports none of the failing run, not even those that moved: ask where those are, and try
    /// those still elsewhere again until no more move. Pages that never move are busy.
    fn move_batch(&self, pages: &[usize], out: &mut ThreadResult) -> Result<Vec<i32>, SysError> {
        let mut status = vec![UNREPORTED; pages.len()];
        let mut pending: Vec<usize> = (0..pages.len()).collect();
        for round in 0..MAX_ROUNDS {
            let addrs: Vec<usize> = pending.iter().map(|&i| pages[i]).collect();
            let mut st = vec![UNREPORTED; addrs.len()];
            let targets = vec![self.node as i32; addrs.len()];
            let t = Instant::now();
            let left = sys::move_pages(
                self.process.raw(),
                &addrs,
                Some(&targets),
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
            let mut still = Vec::new();
            for (&i, place) in pending.iter().zip(now) {
                match place {
                    PageNode::Node(n) if n == self.node => status[i] = n as i32,
                    PageNode::Node(_) => still.push(i),
                    PageNode::Error(e) => status[i] = -e.raw_os_error(),
                }
            }
            if still.is_empty() || still.len() == pending.len() {
                break;
            }
            pending = still;
        }
        let unreported = status.iter_mut().filter(|s| **s == UNREPORTED);
        unreported.for_each(|s| *s = -libc::EBUSY);
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

/// Moves `pages[i]` of `process` to node `nodes[i]`, each node's group in batches pulled by the
/// `workers` of the plan's CPUs; `progress` gets the pages of each completed call. As with
/// `move_pages(2)`, `status[i]` is the node of `pages[i]` afterwards or `-errno`; `-ESRCH` marks
/// pages not tried because the process exited (see [`process_exited`]), `-ENOMEM` those not
/// tried because their node filled up. An error means the move could not go on (no permission,
/// a worker could not be pinned, a job panicked).
///
/// # Panics
/// If `nodes` or `status` is not as long as `pages`.
pub fn move_pages(
    process: Process,
    pages: &[usize],
    nodes: &[NodeId],
    status: &mut [i32],
    plan: &Plan,
    workers: &Workers,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CallStats, MigrateError> {
    assert_eq!(pages.len(), nodes.len(), "one target node per page");
    assert_eq!(pages.len(), status.len(), "one status per page");
    let mut order: Vec<usize> = (0..pages.len()).collect();
    order.sort_by_key(|&i| nodes[i]);
    let sorted: Vec<usize> = order.iter().map(|&i| pages[i]).collect();
    let mut sorted_status = vec![-libc::ESRCH; pages.len()];
    let first_batch = plan
        .max_stall
        .map_or(plan.batch, |_| plan.batch.min(PROBE_BATCH));
    let batch = AtomicUsize::new(first_batch.max(1));
    let stop = AtomicBool::new(false);
    let mut durations = Vec::new();
    // CPU time of the k-th thread, summed over the node groups (each group has its own threads).
    let mut thread_cpu: Vec<Duration> = Vec::new();
    let mut left_behind = 0;
    let page = sys::base_page_size();
    // A count the user fixed is kept: nothing to check it against.
    let predicted = plan.predicted_gbps.filter(|_| !plan.threads_fixed);
    let mut check = ThreadCheck::new(plan.cpus.len(), predicted);

    let mut lo = 0;
    for same_node in order.chunk_by(|&a, &b| nodes[a] == nodes[b]) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (node, hi) = (nodes[same_node[0]], lo + same_node.len());
        sorted_status[lo..hi].fill(UNREPORTED);
        let group = Group::new(
            process,
            &sorted[lo..hi],
            node,
            &batch,
            plan,
            &stop,
            progress,
        );
        // Rounds, each run by the check's thread count and timed; one round once it settles.
        let round = (hi - lo)
            .div_ceil(ROUNDS)
            .max(plan.batch.saturating_mul(2 * plan.cpus.len()));
        loop {
            let start = group.cursor.load(Ordering::Relaxed);
            if start >= hi - lo
                || stop.load(Ordering::Relaxed)
                || group.full.load(Ordering::Relaxed)
            {
                break;
            }
            let end = if check.settled {
                hi - lo
            } else {
                start.saturating_add(round)
            };
            group.end.store(end, Ordering::Relaxed);
            let calls_needed = (end - start).div_ceil(batch.load(Ordering::Relaxed).max(1));
            let t = Instant::now();
            let results: Vec<ThreadResult> = if plan.cpus.is_empty() {
                vec![group.run()]
            } else {
                let threads = check.threads().min(calls_needed).max(1);
                workers.run(&plan.cpus[..threads], |_| group.run())?
            };
            let moved = group.cursor.load(Ordering::Relaxed).min(hi - lo) - start;
            check.record((moved * page) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9);
            thread_cpu.resize(thread_cpu.len().max(results.len()), Duration::ZERO);
            for (k, r) in results.into_iter().enumerate() {
                thread_cpu[k] += r.cpu_time;
                left_behind += r.left_behind;
                if let Some(e) = r.error {
                    return Err(e);
                }
                for (start, status) in r.pieces {
                    sorted_status[lo + start..][..status.len()].copy_from_slice(&status);
                }
                durations.extend(r.durations);
            }
        }
        // Pages no call reached: the node was full, or else the process exited (or we stopped).
        let untried = if group.full.load(Ordering::Relaxed) {
            -libc::ENOMEM
        } else {
            -libc::ESRCH
        };
        let unreported = sorted_status[lo..hi]
            .iter_mut()
            .filter(|s| **s == UNREPORTED);
        unreported.for_each(|s| *s = untried);
        lo = hi;
    }

    for (k, &i) in order.iter().enumerate() {
        status[i] = sorted_status[k];
    }
    durations.sort_unstable();
    Ok(CallStats {
        calls: durations.len() as u64,
        longest: durations.last().copied().unwrap_or_default(),
        median: durations
            .get(durations.len() / 2)
            .copied()
            .unwrap_or_default(),
        final_batch: batch.load(Ordering::Relaxed),
        threads: thread_cpu.len(),
        cpu_time: thread_cpu.iter().sum(),
        thread_cpu,
        left_behind,
        helper_cpu: None,
        thread_check: check.notes,
        thread_gbps: check.measured,
    })
}

/// Whether a [`move_pages`] status says the process exited before every page was attempted.
pub fn process_exited(status: &[i32]) -> bool {
    status.contains(&-libc::ESRCH)
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(
        clippy::single_range_in_vec_init,
        reason = "a selection is a list of ranges"
    )]
    use super::*;
    use crate::account::{Report, SkipReason};
    use crate::migrate::in_cgroup::scan_and_execute;
    use crate::migrate::request::{Request, Selection};
    use crate::sys::Mapping;
    use crate::topology::Topology;

    /// The topology and its first node with memory.
    pub(in crate::migrate) fn this_node() -> (Topology, NodeId) {
        let t = Topology::detect().unwrap();
        let n = t.memory_nodes().iter().next().unwrap();
        (t, n)
    }

    /// Scans the pages of `m`, as any process's, and moves them to `node` with `plan`.
    fn migrate(topo: &Topology, m: &Mapping, node: NodeId, plan: &Plan) -> Report {
        let start = m.as_ptr() as usize;
        let selection = Selection::Ranges(vec![start..start + m.len()]);
        let request = Request::process(Process::Current, selection, node);
        scan_and_execute(topo, &request, plan, &Workers::new(), &|_| {}).unwrap()
    }

    #[test]
    fn batches_end_where_a_region_of_the_plan_ends() {
        let r = 1 << 21;
        // Two entries per region.
        let pages: Vec<usize> = (0..8).map(|i| i * (r / 2)).collect();
        let stop = AtomicBool::new(false);
        let claims = |region: usize, want: usize| {
            let mut plan = Plan::serial(want);
            plan.region = region;
            let batch = AtomicUsize::new(want);
            let group = Group::new(Process::Current, &pages, 0, &batch, &plan, &stop, &|_| {});
            std::iter::from_fn(|| group.claim(want)).collect::<Vec<_>>()
        };
        assert_eq!(claims(r, 1), [0..2, 2..4, 4..6, 6..8]);
        assert_eq!(claims(r, 3), [0..4, 4..8]);
        assert_eq!(claims(0, 3), [0..3, 3..6, 6..8]);
    }

    /// `n` written 4 KB pages of a new mapping (kept alive by the first value), and their addresses.
    pub(in crate::migrate) fn written_pages(n: usize) -> (Mapping, Vec<usize>) {
        let mut m = Mapping::anonymous(n * 4096).unwrap();
        m.as_mut_slice().fill(1);
        let pages = (0..n).map(|i| m.as_ptr() as usize + i * 4096).collect();
        (m, pages)
    }

    #[test]
    fn a_batch_is_reported_before_the_next_batches_are_resized() {
        let (_, node) = this_node();
        let (_m, pages) = written_pages(8);
        let mut plan = Plan::serial(4);
        // No call fits in a nanosecond: after the first, batches shrink to one page.
        plan.max_stall = Some(Duration::from_nanos(1));
        let (batch, stop) = (AtomicUsize::new(4), AtomicBool::new(false));
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |n| {
            seen.lock()
                .unwrap()
                .push((n, batch.load(Ordering::Relaxed)))
        };
        let group = Group::new(
            Process::Current,
            &pages,
            node,
            &batch,
            &plan,
            &stop,
            &progress,
        );
        let r = group.run();
        assert!(r.error.is_none());
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen[0],
            (4, 4),
            "progress comes first, then the batch size adapts: {seen:?}"
        );
        assert_eq!(seen[1], (1, 1), "{seen:?}");
    }

    #[test]
    fn pages_already_on_the_only_node_are_counted_as_such() {
        let (topo, node) = this_node();
        let mut m = Mapping::anonymous(32 * 4096).unwrap();
        m.as_mut_slice()[..20 * 4096].fill(9);
        let cpus: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
        for plan in [Plan::serial(4), Plan::parallel(cpus.clone(), 3)] {
            let r = migrate(&topo, &m, node, &plan);
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
        let r = migrate(&topo, &m, node, &Plan::serial(8));
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
        let (_m, pages) = written_pages(64);
        let calls = std::sync::atomic::AtomicU64::new(0);
        let mut plan = Plan::parallel(sys::allowed_cpus().unwrap().iter().collect(), 8);
        plan.max_stall = Some(Duration::from_secs(1));
        let mut status = vec![0; 64];
        let stats = move_pages(
            Process::Current,
            &pages,
            &vec![node; 64],
            &mut status,
            &plan,
            &Workers::new(),
            &|n| {
                calls.fetch_add(n, Ordering::Relaxed);
            },
        )
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 64);
        assert!(status.iter().all(|&s| s == node as i32), "{status:?}");
        assert!(!process_exited(&status));
        assert!(stats.calls >= 8);
        assert!(stats.longest >= stats.median);
    }

    #[test]
    fn the_largest_batch_is_one_call_per_group() {
        let (_, node) = this_node();
        let (_m, pages) = written_pages(16);
        let cpus: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
        for plan in [Plan::serial(usize::MAX), Plan::parallel(cpus, usize::MAX)] {
            let mut status = vec![0; 16];
            let stats = move_pages(
                Process::Current,
                &pages,
                &[node; 16],
                &mut status,
                &plan,
                &Workers::new(),
                &|_| {},
            )
            .unwrap();
            assert!(status.iter().all(|&s| s == node as i32), "{status:?}");
            assert_eq!(stats.calls, 1);
        }
    }

    #[test]
    fn the_thread_check_tries_half_as_many_and_keeps_the_faster() {
        let window =
            |c: &mut ThreadCheck, gbps: f64| (0..CHECK_ROUNDS).for_each(|_| c.record(gbps));
        let mut c = ThreadCheck::new(4, Some(10.0));
        window(&mut c, 9.5); // within 10% of the prediction: kept, nothing tried
        assert_eq!((c.threads(), c.notes.len()), (4, 0));
        c.record(9.6);
        c.record(1.0); // one slow round is not a slow window
        c.record(9.8);
        assert_eq!(c.threads(), 4);
        window(&mut c, 6.0); // under 0.9 x 10: try 2
        assert_eq!(c.threads(), 2);
        assert!(!c.settled);
        assert!(
            c.measured.is_empty(),
            "nothing to learn before the trial ends"
        );
        window(&mut c, 7.0); // faster than 6.0: kept
        assert_eq!(c.threads(), 2);
        assert!(c.settled && c.notes[1].contains("kept"), "{:?}", c.notes);
        assert_eq!(c.measured, [(4, 6.0), (2, 7.0)]);

        let mut c = ThreadCheck::new(4, Some(10.0));
        window(&mut c, 6.0);
        window(&mut c, 5.0); // slower than 6.0: back to the plan's 4, for good
        assert_eq!(c.threads(), 4);
        assert!(c.settled && c.notes[1].contains("back"), "{:?}", c.notes);
        window(&mut c, 1.0);
        assert_eq!((c.threads(), c.notes.len()), (4, 2), "one trial at most");

        let mut c = ThreadCheck::new(3, None);
        window(&mut c, 5.0); // nothing predicted: nothing to measure against
        assert_eq!((c.threads(), c.notes.len()), (3, 0));
        assert!(
            ThreadCheck::new(1, Some(10.0)).settled,
            "one thread: nothing to try"
        );
    }

    #[test]
    fn a_missing_pid_is_refused() {
        let (topo, node) = this_node();
        let req = Request::process(Process::Pid(i32::MAX as u32 - 1), Selection::All, node);
        let err = scan_and_execute(&topo, &req, &Plan::serial(64), &Workers::new(), &|_| {});
        let err = err.unwrap_err();
        assert!(matches!(err, MigrateError::NoSuchProcess { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }
}
