//! `move_pages(2)` and `migrate_pages(2)` as their man pages define them, executed by pagemig:
//! what the C library (`pagemig_move_pages`) and the `LD_PRELOAD` library run.
//!
//! The answer (return value, errno, every status entry) is the kernel's own. `move_pages` is
//! split into calls, grouped by target node and spread over pinned threads, only where the
//! kernel answers each page of the split calls exactly as it would in the one call; anything
//! else goes to the kernel unchanged, and the [`Execution`] says why. `migrate_pages` moves the
//! pages with pagemig's threads first and then makes the caller's own call, which finds little
//! left to do and gives the return value.

use std::collections::HashSet;
use std::ffi::{c_int, c_ulong, c_void};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::scan::{self, Found};
use super::{Plan, Request, Selection, in_cgroup};
use crate::copy::Route;
use crate::migrate::Threads;
use crate::policy::{CostModel, Job, Planner, Resources};
use crate::process::Process;
use crate::procfs;
use crate::sys::{self, Errno, ForeignOut, HUGE_PAGE_SIZE};
use crate::topology::{self, CpuId, CpuSet, NodeId, NodeSet, Topology};
use crate::workers::Workers;

/// `MPOL_MF_MOVE`: move pages mapped by this process only.
pub const MPOL_MF_MOVE: c_int = 1 << 1;
/// `MPOL_MF_MOVE_ALL`: also move pages shared with other processes (needs `CAP_SYS_NICE`).
pub const MPOL_MF_MOVE_ALL: c_int = 1 << 2;

/// More pages than this in one call go to the kernel unchanged (copying the arrays would take
/// more memory than is reasonable: 16 bytes per page).
const MAX_PAGES: u64 = 1 << 26;

/// Pages per call of the threads, at most.
const MAX_CALL: usize = 16384;

/// Pages per call of the threads, at least (unless a node's group is smaller).
const MIN_CALL: usize = 32;

/// Batch of the kernel path's calls under `migrate_pages`.
const MIGRATE_BATCH: usize = 4096;

/// What pagemig plans with: the machine and the settings, fixed for the life of the process
/// that loaded the library.
#[derive(Debug, Clone)]
pub struct Context {
    /// The machine.
    pub topology: Topology,
    /// Its calibrated cost model, if one was saved.
    pub model: Option<CostModel>,
    /// Threads per call: `auto` (the planner) or a fixed count.
    pub threads: Threads,
    /// Describe every call on standard error.
    pub log: bool,
    /// Settings that could not be used, and what was used instead.
    pub warnings: Vec<String>,
    /// Why pagemig cannot plan on this machine (every call then goes to the kernel unchanged).
    pub unusable: Option<String>,
    /// `move_pages` calls of fewer bytes than this go to the kernel unchanged without further
    /// checks: below it the planner gives one thread even with every allowed CPU idle (see
    /// [`Context::with_split_threshold`]). Zero: every call is planned.
    pub min_split_bytes: u64,
    /// The pinned worker threads the kernel path's calls run on.
    pub workers: Arc<Workers>,
}

impl Context {
    /// The running machine, its saved cost model (`PAGEMIG_MODEL` or the default path), and the
    /// settings `PAGEMIG_THREADS` (`auto` or a count) and `PAGEMIG_LOG` (`1`: describe calls).
    pub fn from_env() -> Self {
        let (topology, unusable) = match Topology::detect() {
            Ok(t) => (t, None),
            Err(e) => (
                Topology {
                    nodes: Vec::new(),
                    online_cpus: CpuSet::default(),
                    l3_domains: Vec::new(),
                    tiers: Vec::new(),
                },
                Some(e.to_string()),
            ),
        };
        let mut warnings = Vec::new();
        let threads = match std::env::var("PAGEMIG_THREADS") {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                warnings.push(format!("PAGEMIG_THREADS={v}: {e}; using auto"));
                Threads::Auto
            }),
            Err(_) => Threads::Auto,
        };
        let path = std::env::var_os("PAGEMIG_MODEL")
            .map(std::path::PathBuf::from)
            .or_else(CostModel::default_path);
        let model = path.and_then(|p| match CostModel::load(&p) {
            Ok(m) => Some(m),
            Err(e) if p.exists() => {
                warnings.push(format!("cost model {} not used: {e}", p.display()));
                None
            }
            Err(_) => None,
        });
        let log = std::env::var("PAGEMIG_LOG").is_ok_and(|v| !v.is_empty() && v != "0");
        Context {
            topology,
            model,
            threads,
            log,
            warnings,
            unusable,
            min_split_bytes: 0,
            workers: Arc::default(),
        }
        .with_split_threshold()
    }

    /// Sets [`Context::min_split_bytes`]: the smallest migration (a power of two, from one
    /// page) for which the planner plans two or more threads with the most it could be given,
    /// every CPU allowed now, no quota and no load. Resources only ever lower the planner's
    /// thread count, so a call below it would be planned onto one thread and passed to the
    /// kernel anyway: deciding that from its size spares it every file read and system call.
    pub fn with_split_threshold(mut self) -> Self {
        self.min_split_bytes = match self.threads {
            Threads::Count(n) if n >= 2 => 0,
            Threads::Count(_) => u64::MAX,
            Threads::Auto => {
                let allowed = sys::allowed_cpus().unwrap_or_default();
                let best = Resources {
                    allowed,
                    cpu_quota: None,
                    busy_cpus: 0.0,
                };
                let planner = Planner::new(&self.topology, self.model.as_ref(), best);
                let page = sys::base_page_size() as u64;
                (0..48)
                    .map(|k| page << k)
                    .find(|&bytes| {
                        let job = Job {
                            bytes,
                            route: Route::default(),
                        };
                        planner
                            .plan_kernel(job, MIGRATE_BATCH as u64 * page)
                            .is_ok_and(|c| c.cpus.len() > 1)
                    })
                    // A smaller call may still plan two threads where the curve is not
                    // monotone: halve it once for margin.
                    .map_or(u64::MAX, |bytes| bytes / 2)
            }
        };
        self
    }

    /// Why calls cannot be planned here, if they cannot.
    fn usable(&self) -> Result<(), String> {
        match &self.unusable {
            Some(why) => Err(format!("no topology: {why}")),
            None => Ok(()),
        }
    }

    /// The context of this process, made by [`Context::from_env`] on first use; its warnings
    /// go to standard error then.
    pub fn of_process() -> &'static Context {
        static CONTEXT: std::sync::OnceLock<Context> = std::sync::OnceLock::new();
        CONTEXT.get_or_init(|| {
            let ctx = Context::from_env();
            for w in &ctx.warnings {
                eprintln!("pagemig: {w}");
            }
            ctx
        })
    }

    /// What the C entry points return for `call`: with `PAGEMIG_LOG` set, the call is described
    /// on standard error first; then the result, or -1 with `errno` set.
    pub fn answer(&self, call: &Call) -> std::ffi::c_long {
        if self.log {
            eprintln!("pagemig: {call}");
        }
        call.c_return()
    }
}

/// How a call was executed.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    /// `move_pages`, split into calls by target node, run by pinned threads.
    Split {
        /// The threads' CPUs.
        cpus: Vec<CpuId>,
        /// Target nodes (one group of calls each).
        groups: usize,
        /// Kernel calls made.
        calls: usize,
    },
    /// `migrate_pages`: pagemig's threads moved pages between these nodes, then the caller's own
    /// call finished the job and gave the answer.
    Prepared {
        /// The threads' CPUs.
        cpus: Vec<CpuId>,
        /// (from, to) node pairs, in the kernel's order.
        pairs: Vec<(NodeId, NodeId)>,
        /// Pages pagemig's threads moved.
        pages: u64,
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
    /// What a C function returns for this call: the result, or -1 with `errno` set. Call it
    /// last: anything after it may change `errno`.
    pub fn c_return(&self) -> std::ffi::c_long {
        match self.result {
            Ok(n) => n as std::ffi::c_long,
            Err(errno) => {
                sys::set_errno(errno);
                -1
            }
        }
    }
}

impl fmt::Display for Call {
    /// `move_pages(pid 42, 4096 pages) = 0 in 1.2 ms: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Ok(n) => write!(f, "{} = {n}", self.request)?,
            Err(e) => write!(f, "{} = -1 ({e})", self.request)?,
        }
        write!(
            f,
            " in {:.3} ms: {}",
            self.took.as_secs_f64() * 1e3,
            self.execution
        )
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
                "{} thread(s) on CPUs {}, {groups} target node(s), {calls} kernel calls",
                cpus.len(),
                cpu_list(cpus)
            ),
            Execution::Prepared {
                cpus,
                pairs,
                pages,
                stopped,
            } => {
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

fn process_of(pid: c_int) -> Process {
    if pid == 0 || pid as u32 == std::process::id() {
        Process::Current
    } else {
        Process::Pid(pid as u32)
    }
}

/// How many threads the planner (or the setting) gives a move of `bytes` to `to`.
fn threads_for(ctx: &Context, bytes: u64, route: Route) -> Result<Vec<CpuId>, String> {
    let resources = Resources::snapshot().map_err(|e| e.to_string())?;
    let planner = Planner::new(&ctx.topology, ctx.model.as_ref(), resources);
    let page = sys::base_page_size() as u64;
    let choice = planner
        .plan_kernel_as(
            Job { bytes, route },
            MIGRATE_BATCH as u64 * page,
            ctx.threads,
            None,
            "PAGEMIG_THREADS=",
        )
        .map_err(|e| e.to_string())?;
    if choice.cpus.len() <= 1 {
        return Err(format!("one thread planned ({})", choice.why.join("; ")));
    }
    Ok(choice.cpus)
}

/// The largest folio a page of any process can be part of now: a PMD-sized transparent huge
/// page, or the largest hugetlb page size that has pages in its pool.
fn largest_folio() -> usize {
    let pmd = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(HUGE_PAGE_SIZE);
    let hugetlb = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let kb: usize = e
                .file_name()
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let pages: u64 = std::fs::read_to_string(e.path().join("nr_hugepages"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (pages > 0).then_some(kb * 1024)
        })
        .max()
        .unwrap_or(0);
    pmd.max(hugetlb)
}

/// Whether splitting by node keeps every page's answer: the kernel's answer for a page depends
/// on the other entries of its folio (a second entry of a folio already queued is `EBUSY`), so
/// the entries of each folio-sized region must be next to each other in the array and go to
/// the same node.
fn split_keeps_answers(pages: &[usize], nodes: &[c_int], region: usize) -> Result<(), String> {
    let mut seen = HashSet::new();
    for i in 0..pages.len() {
        let r = pages[i] / region;
        if i > 0 && r == pages[i - 1] / region {
            if nodes[i] != nodes[i - 1] {
                return Err(format!(
                    "entries {} and {i} are in one {} KiB region but go to different nodes",
                    i - 1,
                    region >> 10
                ));
            }
        } else if !seen.insert(r) {
            return Err(format!(
                "entry {i} is in a {} KiB region that earlier, separate entries are in",
                region >> 10
            ));
        }
    }
    Ok(())
}

/// The calls: indices into the arrays, grouped by target node (in the order the nodes first
/// appear), cut into runs of about `target` pages at region boundaries only.
fn split(
    pages: &[usize],
    nodes: &[c_int],
    region: usize,
    target: usize,
) -> (usize, Vec<Vec<usize>>) {
    let mut order: Vec<usize> = (0..pages.len()).collect();
    let mut first_seen: Vec<c_int> = Vec::new();
    for &n in nodes {
        if !first_seen.contains(&n) {
            first_seen.push(n);
        }
    }
    order.sort_by_key(|&i| first_seen.iter().position(|&n| n == nodes[i]));
    let mut calls: Vec<Vec<usize>> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let cut = match calls.last() {
            None => true,
            Some(call) => {
                let prev = order[k - 1];
                nodes[prev] != nodes[i]
                    || (call.len() >= target && pages[prev] / region != pages[i] / region)
            }
        };
        if cut {
            calls.push(Vec::new());
        }
        calls.last_mut().expect("pushed").push(i);
    }
    (first_seen.len(), calls)
}

/// Reads the caller's arrays, or says why the call must go to the kernel unchanged.
struct Arrays {
    pages: Vec<usize>,
    nodes: Vec<c_int>,
    status: Vec<c_int>,
}

impl Arrays {
    fn read(
        count: usize,
        pages: *const *const c_void,
        nodes: *const c_int,
        status: ForeignOut<'_>,
    ) -> Result<Self, String> {
        let unreadable = |what: &str, e: sys::SysError| {
            format!(
                "the {what} array cannot be read ({}): the kernel answers",
                e.errno
            )
        };
        let arrays = Arrays {
            pages: sys::read_own(pages as usize, count).map_err(|e| unreadable("pages", e))?,
            nodes: sys::read_own(nodes as usize, count).map_err(|e| unreadable("nodes", e))?,
            status: status.read().map_err(|e| unreadable("status", e))?,
        };
        // Writing back what it holds tells whether it is writable before anything moves.
        status.write(&arrays.status).map_err(|e| {
            format!(
                "the status array is not writable ({}): the kernel answers",
                e.errno
            )
        })?;
        Ok(arrays)
    }
}

/// Checks the targets as the kernel does before it moves anything: a node without memory is
/// `ENODEV`, a node outside the process's cpuset `EACCES`, both for the whole call.
fn check_nodes(pid: c_int, nodes: &[c_int]) -> Result<(), String> {
    let memory = topology::node_state("has_memory").map_err(|e| e.to_string())?;
    let allowed = procfs::status(process_of(pid))
        .map_err(|e| e.to_string())?
        .mems_allowed;
    for &n in nodes {
        if n < 0 || !memory.contains(n as u32) {
            return Err(format!("node {n} has no memory or does not exist"));
        }
        if !allowed.contains(n as u32) {
            return Err(format!("node {n} is outside the process's cpuset"));
        }
    }
    Ok(())
}

/// `move_pages(pid, count, pages, nodes, status, flags)` with the system call's semantics
/// (`status` holds `count` entries; pagemig writes them only where the kernel would have).
pub fn move_pages(
    ctx: &Context,
    pid: c_int,
    count: c_ulong,
    pages: *const *const c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Call {
    let started = Instant::now();
    let (result, execution) = match split_move(ctx, pid, count, pages, nodes, status, flags) {
        Ok(done) => done,
        Err(reason) => {
            let r = sys::move_pages_unchanged(
                pid,
                count,
                pages as usize,
                nodes as usize,
                status,
                flags,
            );
            (r.map_err(|e| e.errno), Execution::Kernel(reason))
        }
    };
    Call {
        request: format!("move_pages(pid {pid}, {count} pages, flags {flags:#x})"),
        result,
        execution,
        took: started.elapsed(),
    }
}

type Answer = (Result<usize, Errno>, Execution);

fn split_move(
    ctx: &Context,
    pid: c_int,
    count: c_ulong,
    pages: *const *const c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> Result<Answer, String> {
    ctx.usable()?;
    if flags & !(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL) != 0 {
        return Err(format!(
            "flags {flags:#x} are not MPOL_MF_MOVE or MPOL_MF_MOVE_ALL"
        ));
    }
    if nodes.is_null() {
        return Err("no target nodes: a placement query".into());
    }
    if count == 0 || count > MAX_PAGES {
        return Err(format!("{count} pages"));
    }
    let bytes = count * sys::base_page_size() as u64;
    if ctx.min_split_bytes == u64::MAX {
        return Err("one thread planned for every size (PAGEMIG_THREADS, or one CPU)".into());
    }
    if bytes < ctx.min_split_bytes {
        return Err(format!(
            "one thread planned ({} KiB: below {} KiB, the least the planner gives two threads)",
            bytes >> 10,
            ctx.min_split_bytes >> 10
        ));
    }
    let move_all = flags & MPOL_MF_MOVE_ALL != 0;
    // The kernel checks the flags' rights, the process and the caller's rights to it before it
    // reads any array: an empty call gets exactly those answers.
    if let Err(e) = sys::move_pages(pid, &[], Some(&[]), &mut [], move_all) {
        return Err(format!("the kernel refuses the call itself ({})", e.errno));
    }
    let count = count as usize;
    let page = sys::base_page_size();
    let route = Route {
        from: None,
        to: sys::read_own::<c_int>(nodes as usize, 1)
            .ok()
            .and_then(|n| u32::try_from(n[0]).ok()),
    };
    let cpus = threads_for(ctx, (count * page) as u64, route)?;
    let mut arrays = Arrays::read(count, pages, nodes, status)?;
    check_nodes(pid, &arrays.nodes)?;
    let region = largest_folio();
    split_keeps_answers(&arrays.pages, &arrays.nodes, region)?;
    let target = count.div_ceil(cpus.len() * 4).clamp(MIN_CALL, MAX_CALL);
    let (groups, calls) = split(&arrays.pages, &arrays.nodes, region, target);
    // One call on another thread only adds a thread's start to the kernel's work.
    if calls.len() < 2 {
        return Err("one kernel call: nothing to split".into());
    }

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let left_behind = AtomicUsize::new(0);
    let first_error: Mutex<Option<(usize, Errno)>> = Mutex::new(None);
    let results: Mutex<Vec<(usize, Vec<c_int>)>> = Mutex::new(Vec::with_capacity(calls.len()));
    let threads = cpus.len().min(calls.len());
    std::thread::scope(|s| {
        for &cpu in &cpus[..threads] {
            let (arrays, calls) = (&arrays, &calls);
            let (next, stop, left_behind) = (&next, &stop, &left_behind);
            let (first_error, results) = (&first_error, &results);
            s.spawn(move || {
                // Unpinned is slower, not wrong.
                let _ = sys::pin_current_thread(cpu);
                let mut addrs = Vec::new();
                let mut targets = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(call) = calls.get(k) else { break };
                    addrs.clear();
                    addrs.extend(call.iter().map(|&i| arrays.pages[i]));
                    targets.clear();
                    targets.extend(call.iter().map(|&i| arrays.nodes[i]));
                    let mut st: Vec<c_int> = call.iter().map(|&i| arrays.status[i]).collect();
                    match sys::move_pages(pid, &addrs, Some(&targets), &mut st, move_all) {
                        Ok(n) => {
                            left_behind.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if first.is_none_or(|(j, _)| k < j) {
                                *first = Some((k, e.errno));
                            }
                        }
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((k, st));
                }
            });
        }
    });
    for (k, st) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        for (&i, s) in calls[k].iter().zip(st) {
            arrays.status[i] = s;
        }
    }
    let execution = Execution::Split {
        cpus: cpus[..threads].to_vec(),
        groups,
        calls: calls.len(),
    };
    // The kernel would have written these entries; the others hold what they held.
    if let Err(e) = status.write(&arrays.status) {
        return Ok((Err(e.errno), execution));
    }
    let result = match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, errno)) => Err(errno),
        None => Ok(left_behind.into_inner()),
    };
    Ok((result, execution))
}

/// [`move_pages`] as a C entry point of this process runs it: with [`Context::of_process`],
/// returning what C returns (see [`Context::answer`]).
pub fn move_pages_c(
    pid: c_int,
    count: c_ulong,
    pages: *mut *mut c_void,
    nodes: *const c_int,
    status: ForeignOut<'_>,
    flags: c_int,
) -> std::ffi::c_long {
    let ctx = Context::of_process();
    ctx.answer(&move_pages(
        ctx,
        pid,
        count,
        pages.cast_const().cast(),
        nodes,
        status,
        flags,
    ))
}

/// [`migrate_pages`] as a C entry point of this process runs it (see [`move_pages_c`]).
pub fn migrate_pages_c(
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> std::ffi::c_long {
    let ctx = Context::of_process();
    ctx.answer(&migrate_pages(ctx, pid, maxnode, old_nodes, new_nodes))
}

/// The kernel's `node_remap`: the position of `node` among the set bits of `from` picks the bit
/// at that position (modulo its weight) of `to`.
fn node_remap(node: NodeId, from: &NodeSet, to: &NodeSet) -> NodeId {
    let Some(pos) = from.iter().position(|n| n == node) else {
        return node;
    };
    let weight = to.iter().count();
    if weight == 0 {
        return node;
    }
    to.iter().nth(pos % weight).expect("within the weight")
}

/// The (source, destination) pairs `do_migrate_pages` moves, in its order.
fn kernel_pairs(from: &NodeSet, to: &NodeSet) -> Vec<(NodeId, NodeId)> {
    let same_weight = from.iter().count() == to.iter().count();
    let mut left = from.clone();
    let mut pairs = Vec::new();
    loop {
        let mut chosen = None;
        for s in left.iter() {
            if !same_weight && to.contains(s) {
                continue;
            }
            let d = node_remap(s, from, to);
            if s == d {
                continue;
            }
            chosen = Some((s, d));
            if !left.contains(d) {
                break;
            }
        }
        let Some((s, d)) = chosen else { break };
        left = left.iter().filter(|&n| n != s).collect();
        pairs.push((s, d));
    }
    pairs
}

/// A node mask as the kernel reads it from `maxnode - 1` bits.
fn mask_nodes(words: &[c_ulong], bits: usize) -> NodeSet {
    let w = c_ulong::BITS as usize;
    (0..bits)
        .filter(|&b| words[b / w] & (1 << (b % w)) != 0)
        .map(|b| b as NodeId)
        .collect()
}

/// `migrate_pages(pid, maxnode, old_nodes, new_nodes)` with the system call's semantics.
///
/// The kernel only reads the masks and every address is checked, so this is safe to call with
/// any arguments.
pub fn migrate_pages(
    ctx: &Context,
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> Call {
    let started = Instant::now();
    let execution = prepare_migration(ctx, pid, maxnode, old_nodes, new_nodes)
        .unwrap_or_else(Execution::Kernel);
    let result = sys::migrate_pages_unchanged(pid, maxnode, old_nodes as usize, new_nodes as usize);
    Call {
        request: format!("migrate_pages(pid {pid}, maxnode {maxnode})"),
        result: result.map_err(|e| e.errno),
        execution,
        took: started.elapsed(),
    }
}

/// Moves the pages `migrate_pages` would move with pagemig's threads, or says why not.
fn prepare_migration(
    ctx: &Context,
    pid: c_int,
    maxnode: c_ulong,
    old_nodes: *const c_ulong,
    new_nodes: *const c_ulong,
) -> Result<Execution, String> {
    ctx.usable()?;
    let page = sys::base_page_size();
    if maxnode > (page * 8) as c_ulong {
        return Err(format!("maxnode {maxnode} is more than the kernel takes"));
    }
    let bits = maxnode.saturating_sub(1) as usize;
    let words = bits.div_ceil(c_ulong::BITS as usize);
    let read = |ptr: *const c_ulong, what: &str| -> Result<Vec<c_ulong>, String> {
        if ptr.is_null() {
            return Ok(vec![0; words]);
        }
        sys::read_own::<u64>(ptr as usize, words)
            .map(|v| v.into_iter().map(|w| w as c_ulong).collect())
            .map_err(|e| {
                format!(
                    "the {what} mask cannot be read ({}): the kernel answers",
                    e.errno
                )
            })
    };
    let old = read(old_nodes, "old")?;
    let new = read(new_nodes, "new")?;
    let (from, to) = (mask_nodes(&old, bits), mask_nodes(&new, bits));
    let possible = topology::node_state("possible").map_err(|e| e.to_string())?;
    if let Some(n) = from
        .iter()
        .chain(to.iter())
        .find(|&n| !possible.contains(n))
    {
        return Err(format!("node {n} is not a possible node"));
    }
    // Everything the kernel checks but the old mask's pages: the process, the caller's rights,
    // the new nodes against both cpusets. An empty old mask moves nothing.
    if let Err(e) = sys::migrate_pages(pid, maxnode, &vec![0; words], &new) {
        return Err(format!("the kernel refuses the call itself ({})", e.errno));
    }
    let own = procfs::status(Process::Current).map_err(|e| e.to_string())?;
    let to: NodeSet = to
        .iter()
        .filter(|&n| own.mems_allowed.contains(n))
        .collect();
    let pairs = kernel_pairs(&from, &to);
    if pairs.is_empty() {
        return Err("no node maps to another".into());
    }
    if let Some(&(_, d)) = pairs
        .iter()
        .find(|(_, d)| pairs.iter().any(|(s, _)| s == d))
    {
        return Err(format!(
            "node {d} is both a source and a target: the kernel's order of moves decides"
        ));
    }
    let process = process_of(pid);
    let target = procfs::status(process).map_err(|e| e.to_string())?;
    let route = Route {
        from: Some(pairs[0].0),
        to: Some(pairs[0].1),
    };
    let cpus = threads_for(ctx, target.rss, route)
        .map_err(|why| format!("resident memory {} MiB: {why}", target.rss >> 20))?;
    let mut plan = Plan::parallel(cpus.clone(), MIGRATE_BATCH);
    plan.move_all = own.cap_sys_nice;
    let mut pages = 0;
    let mut stopped = None;
    for &(s, d) in &pairs {
        let request =
            Request::process(process, Selection::All, d).from_nodes(NodeSet::from_iter([s]));
        let moved = scan::scan(&ctx.topology, &request).and_then(|scan| match &scan.found {
            Found::Pages(pages) => {
                in_cgroup::execute(&request, pages, &plan, &ctx.workers, &|_| {})
            }
            Found::Runs(_) => unreachable!("a request of a process's pages finds pages"),
        });
        match moved {
            Ok(report) => pages += report.pages_moved,
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Execution::Prepared {
        cpus,
        pairs,
        pages,
        stopped,
    })
}

#[cfg(test)]
#[allow(
    unsafe_code,
    reason = "status arrays are handed over as a C caller hands them"
)]
mod tests {
    use super::*;

    fn set(s: &str) -> NodeSet {
        s.parse().unwrap()
    }

    #[test]
    fn pairs_follow_the_kernel() {
        assert_eq!(kernel_pairs(&set("0"), &set("1")), [(0, 1)]);
        assert_eq!(kernel_pairs(&set("0-1"), &set("2-3")), [(0, 2), (1, 3)]);
        // 0->1 would land on a node still to be emptied: 1->2 goes first.
        assert_eq!(kernel_pairs(&set("0-1"), &set("1-2")), [(1, 2), (0, 1)]);
        // Different weights: sources that are targets stay.
        assert_eq!(kernel_pairs(&set("0-1"), &set("1")), [(0, 1)]);
        assert_eq!(kernel_pairs(&set("0-1"), &set("0-1")), []);
        assert_eq!(kernel_pairs(&set("0"), &set("")), []);
    }

    #[test]
    fn masks_read_only_maxnode_bits() {
        assert_eq!(mask_nodes(&[0b1011], 2), set("0-1"));
        assert_eq!(mask_nodes(&[0, 1], 65), set("64"));
        assert_eq!(mask_nodes(&[0, 2], 65), set(""));
    }

    #[test]
    fn splitting_keeps_folio_regions_whole() {
        let r = 1 << 21;
        // Two regions, in order, one node each: fine.
        let pages = [0, 4096, r, r + 4096];
        assert!(split_keeps_answers(&pages, &[0, 0, 1, 1], r).is_ok());
        // A region split by another entry, or sent to two nodes: not.
        assert!(split_keeps_answers(&[0, r, 4096], &[0, 0, 0], r).is_err());
        assert!(split_keeps_answers(&[0, 4096], &[0, 1], r).is_err());
        // Calls are cut at region boundaries and grouped by node in order of appearance.
        let pages: Vec<usize> = (0..8).map(|i| i * (r / 2)).collect();
        let nodes = [1, 1, 0, 0, 1, 1, 0, 0];
        let (groups, calls) = split(&pages, &nodes, r, 1);
        assert_eq!(groups, 2);
        assert_eq!(calls, [vec![0, 1], vec![4, 5], vec![2, 3], vec![6, 7]]);
        let (_, calls) = split(&pages, &nodes, r, 100);
        assert_eq!(calls, [vec![0, 1, 4, 5], vec![2, 3, 6, 7]]);
    }

    fn context(threads: usize) -> Context {
        Context {
            topology: Topology::detect().unwrap(),
            model: None,
            threads: Threads::Count(threads),
            log: false,
            warnings: Vec::new(),
            unusable: None,
            min_split_bytes: 0,
            workers: Arc::default(),
        }
        .with_split_threshold()
    }

    #[test]
    fn a_split_move_answers_as_the_kernel() {
        let node = topology::node_state("has_memory")
            .unwrap()
            .iter()
            .next()
            .unwrap() as c_int;
        let mut m = sys::Mapping::anonymous(256 * 4096).unwrap();
        m.as_mut_slice()[..200 * 4096].fill(3);
        let mut pages: Vec<*const c_void> = (0..256)
            .map(|i| m.as_ptr().wrapping_add(i * 4096).cast())
            .collect();
        pages.push(8 as *const c_void);
        let nodes = vec![node; pages.len()];
        let count = pages.len() as c_ulong;
        let mut kernel = vec![-1; pages.len()];
        let k = sys::move_pages_unchanged(
            0,
            count,
            pages.as_ptr() as usize,
            nodes.as_ptr() as usize,
            ForeignOut::from(&mut kernel[..]),
            MPOL_MF_MOVE,
        );
        let mut ours = vec![-1; pages.len()];
        let o = move_pages(
            &context(2),
            0,
            count,
            pages.as_ptr(),
            nodes.as_ptr(),
            ForeignOut::from(&mut ours[..]),
            MPOL_MF_MOVE,
        );
        assert_eq!(k.map_err(|e| e.errno), o.result);
        assert_eq!(kernel, ours);
        assert!(
            matches!(o.execution, Execution::Split { calls, .. } if calls >= 2),
            "{o:?}"
        );
        assert_eq!(ours[0], node);
        assert_eq!(ours[255], -libc::ENOENT);
        assert_eq!(ours[256], -libc::EFAULT);
    }

    #[test]
    fn small_calls_go_to_the_kernel_decided_from_their_size() {
        let mut auto = context(2);
        auto.threads = Threads::Auto;
        let auto = auto.with_split_threshold();
        let page = sys::base_page_size() as u64;
        // Without a model, one thread per 64 MiB: the first size with two is 128 MiB.
        if sys::allowed_cpus().unwrap().len() >= 2 {
            assert_eq!(auto.min_split_bytes, 64 << 20, "{}", auto.min_split_bytes);
        }
        assert_eq!(context(1).min_split_bytes, u64::MAX);
        assert_eq!(context(2).min_split_bytes, 0);
        let mut m = sys::Mapping::anonymous(4 * page as usize).unwrap();
        m.as_mut_slice().fill(1);
        let node = match sys::query_page_nodes(0, &[m.as_ptr() as usize]).unwrap()[0] {
            sys::PageNode::Node(n) => n as c_int,
            other => panic!("{other:?}"),
        };
        let pages: Vec<*const c_void> = (0..4)
            .map(|i| m.as_ptr().wrapping_add(i * page as usize).cast())
            .collect();
        let mut status = [0; 4];
        for (ctx, why) in [
            (&auto, "one thread planned (16 KiB: below 65536 KiB"),
            (&context(2), "one kernel call: nothing to split"),
        ] {
            let call = move_pages(
                ctx,
                0,
                4,
                pages.as_ptr(),
                [node; 4].as_ptr(),
                ForeignOut::from(&mut status[..]),
                MPOL_MF_MOVE,
            );
            assert_eq!(call.result, Ok(0));
            assert_eq!(status, [node; 4]);
            if ctx.min_split_bytes != u64::MAX {
                assert!(
                    matches!(&call.execution, Execution::Kernel(r) if r.starts_with(why)),
                    "{call}"
                );
            }
        }
    }

    #[test]
    fn what_cannot_be_split_goes_to_the_kernel() {
        let ctx = context(2);
        let m = sys::Mapping::anonymous(4096).unwrap();
        let pages = [m.as_ptr().cast::<c_void>()];
        let mut status = [0];
        let call = move_pages(
            &ctx,
            0,
            1,
            pages.as_ptr(),
            [0].as_ptr(),
            ForeignOut::from(&mut status[..]),
            8,
        );
        assert_eq!(call.result, Err(Errno::INVAL));
        assert!(matches!(call.execution, Execution::Kernel(ref r) if r.contains("flags")));
        // SAFETY: address 8 is never mapped: the kernel answers EFAULT.
        let bad = unsafe { ForeignOut::new(8 as *mut c_int, 1) };
        let call = move_pages(&ctx, 0, 1, pages.as_ptr(), [0].as_ptr(), bad, MPOL_MF_MOVE);
        assert_eq!(call.result, Err(Errno::FAULT));
        assert!(matches!(call.execution, Execution::Kernel(_)), "{call:?}");
        let call = migrate_pages(&ctx, i32::MAX, 2, [1].as_ptr(), [1].as_ptr());
        assert_eq!(call.result, Err(Errno::SRCH));
    }
}
