//! The kernel path with its CPU time charged as the plan says: under [`ChargeTo::Target`],
//! helper processes make the `move_pages` calls from inside the target's cgroup.
//!
//! The helper is this program again (`/proc/self/exe`) with [`HELPER_ENV`] set: the `main` of a
//! program that migrates with [`ChargeTo::Target`] must check for it first thing and then only
//! call [`serve`]. Placed in the cgroup between fork and exec, the helper reads its work on stdin
//! and reports progress and the per-page result on stdout.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MigrateError;
use super::kernel;
use super::plan::Plan;
use super::request::{Progress, Request};
use super::scan::{self, Found, Pages, query};
use crate::account::{
    CallStats, Charge, ChargeTo, FailureCause, Laps, Path, Phases, Report, SkipReason,
};
use crate::cgroup::Cgroup;
use crate::process::Process;
use crate::sys::{self, Errno, PageNode};
use crate::topology::{CpuId, NodeId, Topology};
use crate::workers::Workers;

/// Environment variable that turns this program into a migration helper.
pub const HELPER_ENV: &str = "PAGEMIG_MOVE_HELPER";

#[derive(Serialize, Deserialize)]
struct Work {
    /// The target by pid: the helper is another process, so the caller is named by its own.
    pid: u32,
    pages: Vec<usize>,
    nodes: Vec<NodeId>,
    cpus: Vec<CpuId>,
    batch: usize,
    max_stall: Option<Duration>,
    move_all: bool,
    region: usize,
    /// The plan's prediction, so that the helper's calls check their thread count too.
    predicted_gbps: Option<f64>,
    /// The user fixed the thread count: the helper keeps it.
    threads_fixed: bool,
}

impl Work {
    /// The work of moving `pages` of `process` to `nodes` as `plan` says.
    fn new(process: Process, pages: &[usize], nodes: &[NodeId], plan: &Plan) -> Self {
        Work {
            pid: process.id(),
            pages: pages.to_vec(),
            nodes: nodes.to_vec(),
            cpus: plan.cpus.clone(),
            batch: plan.batch,
            max_stall: plan.max_stall,
            move_all: plan.move_all,
            region: plan.region,
            predicted_gbps: plan.predicted_gbps,
            threads_fixed: plan.threads_fixed,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Failure {
    NoSuchProcess,
    PermissionDenied,
    Other(String),
}

/// [`CallStats`] as the helper sends it (serde's mirror of a type of another module).
#[derive(Serialize, Deserialize)]
#[serde(remote = "CallStats")]
struct CallStatsDef {
    calls: u64,
    longest: Duration,
    median: Duration,
    final_batch: usize,
    threads: usize,
    cpu_time: Duration,
    thread_cpu: Vec<Duration>,
    left_behind: u64,
    helper_cpu: Option<Duration>,
    thread_check: Vec<String>,
    thread_gbps: Vec<(usize, f64)>,
}

/// What the helper's calls did.
#[derive(Serialize, Deserialize)]
struct Moved {
    status: Vec<i32>,
    #[serde(with = "CallStatsDef")]
    calls: CallStats,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    moved: Result<Moved, Failure>,
    /// The helper's whole CPU time, just before it replies.
    process_cpu: Duration,
}

/// The helper's side: reads a share of the work from `input`, moves the pages with
/// [`kernel::move_pages`] and writes progress and the per-page result to `output`. A program
/// started with [`HELPER_ENV`] set calls this with its standard input and output, then exits.
pub fn serve(mut input: impl Read, output: impl Write + Send) -> io::Result<()> {
    let mut text = String::new();
    input.read_to_string(&mut text)?;
    let req: Work = serde_json::from_str(&text)?;
    let process = Process::Pid(req.pid);
    let mut plan = Plan::parallel(req.cpus, req.batch);
    plan.max_stall = req.max_stall;
    plan.move_all = req.move_all;
    plan.region = req.region;
    plan.predicted_gbps = req.predicted_gbps;
    plan.threads_fixed = req.threads_fixed;
    let out = std::sync::Mutex::new(output);
    let progress = |n: u64| {
        let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "p {n}");
    };
    let mut status = vec![0; req.pages.len()];
    let moved = kernel::move_pages(
        process,
        &req.pages,
        &req.nodes,
        &mut status,
        &plan,
        // The helper is a process of its own: its calls run on workers of its own.
        &Workers::new(),
        &progress,
    );
    let moved = match moved {
        Ok(calls) => Ok(Moved { status, calls }),
        Err(MigrateError::NoSuchProcess { .. }) => Err(Failure::NoSuchProcess),
        Err(MigrateError::PermissionDenied { .. }) => Err(Failure::PermissionDenied),
        Err(other) => Err(Failure::Other(format!("{other:#}"))),
    };
    let reply = Reply {
        moved,
        process_cpu: sys::process_cpu_time(),
    };
    let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
    writeln!(out, "r {}", serde_json::to_string(&reply)?)?;
    out.flush()
}

/// The kernel path: moves the `pages` a scan of `request` found as `plan` says, then asks where
/// each one is to count what moved. The CPU time is charged as `plan.charge` says: to the
/// caller's cgroup, or to the target's, whose cgroup then gets a helper process that makes the
/// calls (unless the caller is in it already).
pub fn execute(
    request: &Request<'_>,
    pages: &Pages,
    plan: &Plan,
    workers: &Workers,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    let process = request.process_moved();
    let own = Cgroup::of(Process::Current).ok();
    let (paying, helper) = match plan.charge {
        ChargeTo::Caller => (own, false),
        // A dry run moves nothing: no helper, and no need to know the target's cgroup.
        ChargeTo::Target if request.options.dry_run => (own, false),
        ChargeTo::Target => {
            let target = Cgroup::of(process)
                .map_err(|source| MigrateError::TargetCgroup { process, source })?;
            // A caller in the target's cgroup already pays there: no helper has to enter it
            // (which would need write access to cgroup.procs for nothing).
            let helper = own.is_none_or(|c| c.path != target.path);
            (Some(target), helper)
        }
    };
    let helper = paying.as_ref().filter(|_| helper);
    let mut laps = Laps::start();
    let to = request.to;
    let to_move = &pages.to_move;
    progress(Progress::Planned(to_move.len() as u64));
    let page_size = sys::base_page_size() as u64;
    let mut report = Report {
        path: Path::Kernel,
        process,
        to,
        dry_run: request.options.dry_run,
        page_size,
        pages_requested: pages.requested,
        pages_moved: 0,
        pages_already_on_target: pages.already_on_target,
        pages_skipped: pages.skipped.clone(),
        pages_failed: pages.failed.clone(),
        pages_left_by_node: BTreeMap::new(),
        bytes_moved: 0,
        calls: CallStats::default(),
        phases: Phases::default(),
        wall: Duration::ZERO,
        caller_cpu: Duration::ZERO,
        process_exited: false,
        charged_to: Charge {
            to: plan.charge,
            cgroup: paying.as_ref().map(|c| c.path.clone()),
            usage_before_usec: None,
            usage_after_usec: None,
        },
        remap: None,
        why: plan.why.clone(),
    };
    if request.options.dry_run {
        report.pages_moved = to_move.len() as u64;
    } else {
        let usage = || paying.as_ref().and_then(|c| c.usage_usec().ok());
        report.charged_to.usage_before_usec = usage();
        let targets = vec![to; to_move.len()];
        let mut status = vec![0; to_move.len()];
        laps.lap(&mut report.phases.check);
        let moved = |n| progress(Progress::Moved(n));
        report.calls = match helper {
            Some(cgroup) => move_pages_in(
                cgroup,
                process,
                to_move,
                &targets,
                &mut status,
                plan,
                &moved,
            ),
            None => kernel::move_pages(
                process,
                to_move,
                &targets,
                &mut status,
                plan,
                workers,
                &moved,
            ),
        }?;
        laps.lap(&mut report.phases.moving);
        report.charged_to.usage_after_usec = usage();
        report.process_exited = kernel::process_exited(&status);
        laps.lap(&mut report.phases.check);

        // The status array is not the truth for huge pages (subpages of a THP that moved can say
        // EBUSY), so ask again where every page is; only if the process is gone, trust the array.
        let after = if report.process_exited {
            None
        } else {
            match query(process, to_move) {
                Ok(a) => Some(a),
                Err(MigrateError::NoSuchProcess { .. }) => {
                    report.process_exited = true;
                    None
                }
                Err(e) => return Err(e),
            }
        };
        for (i, &status) in status.iter().enumerate() {
            let now = after
                .as_ref()
                .map_or(PageNode::from_status(status), |a| a[i]);
            match now {
                PageNode::Node(n) if n == to => {
                    report.pages_moved += 1;
                    continue;
                }
                // Without MPOL_MF_MOVE_ALL, shared pages stay by request, not by failure.
                PageNode::Node(_) if status == -libc::EACCES && !plan.move_all => {
                    *report.pages_skipped.entry(SkipReason::Shared).or_default() += 1;
                    continue;
                }
                PageNode::Node(n) => *report.pages_left_by_node.entry(n).or_default() += 1,
                PageNode::Error(_) => {}
            }
            // A failure: the call's errno says why, or else where the page is.
            let cause = match now {
                _ if status < 0 => FailureCause::from_errno(Errno::from_raw_os_error(-status)),
                PageNode::Node(_) => FailureCause::StillElsewhere,
                PageNode::Error(e) => FailureCause::from_errno(e),
            };
            *report.pages_failed.entry(cause).or_default() += 1;
        }
    }
    report.bytes_moved = report.pages_moved * page_size;
    laps.lap(&mut report.phases.verify);
    report.wall = laps.wall();
    report.caller_cpu = laps.cpu();
    Ok(report)
}

/// Scans `request`, a request of a process's pages, and moves them by [`execute`]; the
/// report's phases and wall time include the scan's.
pub fn scan_and_execute(
    topology: &Topology,
    request: &Request<'_>,
    plan: &Plan,
    workers: &Workers,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    let scan = scan::scan(topology, request)?;
    let Found::Pages(pages) = &scan.found else {
        unreachable!("a request of a process's pages finds pages")
    };
    Ok(scan.add_to(execute(request, pages, plan, workers, progress)?))
}

/// [`kernel::move_pages`] done by a helper process inside `cgroup`. Nothing moves when the
/// helper cannot be placed there.
fn move_pages_in(
    cgroup: &Cgroup,
    process: Process,
    pages: &[usize],
    nodes: &[NodeId],
    status: &mut [i32],
    plan: &Plan,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CallStats, MigrateError> {
    let enter = |source: io::Error| MigrateError::EnterCgroup {
        process,
        cgroup: cgroup.path.clone(),
        source,
    };
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.dir.join("cgroup.procs"))
        .map_err(enter)?;
    let work = Work::new(process, pages, nodes, plan);
    let mut command = Command::new("/proc/self/exe");
    command
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = sys::spawn_in_cgroup(&mut command, &procs.into()).map_err(enter)?;
    let helper_failed = |what: String| MigrateError::Helper { message: what };
    let io_error = |e: io::Error| helper_failed(format!("talking to the helper: {e}"));
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let text = serde_json::to_vec(&work).map_err(|e| io_error(e.into()))?;
        stdin.write_all(&text).map_err(io_error)?;
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reply = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(io_error)?;
        if let Some(n) = line.strip_prefix("p ") {
            progress(n.parse().unwrap_or(0));
        } else if let Some(json) = line.strip_prefix("r ") {
            reply = Some(serde_json::from_str::<Reply>(json).map_err(|e| io_error(e.into()))?);
        }
    }
    let exit = child.wait().map_err(io_error)?;
    let reply =
        reply.ok_or_else(|| helper_failed(format!("the helper gave no result ({exit})")))?;
    let moved = match reply.moved {
        Ok(moved) => moved,
        Err(Failure::NoSuchProcess) => return Err(MigrateError::NoSuchProcess { process }),
        Err(Failure::PermissionDenied) => return Err(MigrateError::PermissionDenied { process }),
        Err(Failure::Other(message)) => return Err(helper_failed(message)),
    };
    if moved.status.len() != status.len() {
        return Err(helper_failed(format!(
            "the helper answered for {} pages of {}",
            moved.status.len(),
            status.len()
        )));
    }
    status.copy_from_slice(&moved.status);
    Ok(CallStats {
        helper_cpu: Some(reply.process_cpu),
        ..moved.calls
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::kernel::tests::{this_node, written_pages};

    #[test]
    fn the_helper_checks_its_thread_count_and_says_so() {
        let cpus: Vec<CpuId> = sys::allowed_cpus().unwrap().iter().take(2).collect();
        if cpus.len() < 2 {
            eprintln!("skipped: the thread check needs 2 usable CPUs, this process has 1");
            return;
        }
        let (_, node) = this_node();
        let (m, pages) = written_pages(256);
        let run = |threads_fixed| {
            let mut plan = Plan::parallel(cpus.clone(), 2);
            // Far above any machine: the plan's count runs under it, so half as many are
            // tried, unless the user fixed it.
            plan.predicted_gbps = Some(1e6);
            plan.threads_fixed = threads_fixed;
            let work = Work::new(Process::Current, &pages, &vec![node; pages.len()], &plan);
            let mut out = Vec::new();
            serve(serde_json::to_vec(&work).unwrap().as_slice(), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            let json = text.lines().find_map(|l| l.strip_prefix("r ")).unwrap();
            let reply: Reply = serde_json::from_str(json).unwrap();
            let Ok(moved) = reply.moved else {
                panic!("the helper failed: {text}")
            };
            assert!(moved.status.iter().all(|&s| s >= 0), "{:?}", moved.status);
            moved
        };
        let moved = run(false);
        let calls = moved.calls;
        assert!(
            calls.thread_check.iter().any(|n| n.contains("trying 1")),
            "{:?}",
            calls.thread_check
        );
        let counts: Vec<usize> = calls.thread_gbps.iter().map(|p| p.0).collect();
        assert_eq!(
            counts,
            [2, 1],
            "both counts measured, for the model to learn"
        );
        let calls = run(true).calls;
        assert!(
            calls.thread_check.is_empty() && calls.thread_gbps.is_empty(),
            "a count the user fixed is kept: {:?}",
            calls.thread_check
        );
        assert!(m.as_slice().iter().all(|&b| b == 1));
    }
}
