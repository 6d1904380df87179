//! Helper processes that make the kernel path's `move_pages` calls from inside another cgroup,
//! so that the CPU time of a migration is charged to that cgroup.
//!
//! The helper is this program again (`/proc/self/exe`), started with [`HELPER_ENV`] set: a
//! program that migrates with [`ChargeTo::Target`] checks for it first thing in `main` and then
//! only calls [`serve`]. It is placed in the cgroup between fork and exec, reads its share of the work on
//! stdin, reports progress and the per-page result on stdout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MigrateError;
use super::kernel::{self, KernelPlan, Moved};
use crate::account::{CallStats, ChargeTo};
use crate::cgroup::Cgroup;
use crate::process::Process;
use crate::sys;
use crate::topology::{CpuId, NodeId};

/// Environment variable that turns this program into a migration helper.
pub const HELPER_ENV: &str = "PAGEMIG_MOVE_HELPER";

#[derive(Serialize, Deserialize)]
struct Request {
    pid: i32,
    pages: Vec<usize>,
    nodes: Vec<NodeId>,
    cpus: Vec<CpuId>,
    batch: usize,
    max_stall_ns: Option<u64>,
    move_all: bool,
    region: usize,
}

#[derive(Serialize, Deserialize)]
enum Failure {
    NoSuchProcess,
    PermissionDenied,
    Other(String),
}

#[derive(Serialize, Deserialize)]
struct Reply {
    status: Vec<i32>,
    calls: u64,
    longest_ns: u64,
    median_ns: u64,
    final_batch: usize,
    thread_cpu_ns: Vec<u64>,
    process_exited: bool,
    left_behind: u64,
    failure: Option<Failure>,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

/// The helper's side: reads a share of the work from `input`, moves the pages with
/// [`kernel::move_pages`] and writes progress and the per-page result to `output`. A program
/// started with [`HELPER_ENV`] set calls this with its standard input and output, then exits.
pub fn serve(mut input: impl Read, output: impl Write + Send) -> io::Result<()> {
    let mut text = String::new();
    input.read_to_string(&mut text)?;
    let req: Request = serde_json::from_str(&text)?;
    let process = if req.pid == 0 {
        Process::Current
    } else {
        Process::Pid(req.pid as u32)
    };
    let plan = KernelPlan {
        cpus: req.cpus,
        batch: req.batch,
        max_stall: req.max_stall_ns.map(Duration::from_nanos),
        move_all: req.move_all,
        charge: ChargeTo::Caller,
        region: req.region,
    };
    let out = std::sync::Mutex::new(output);
    let progress = |n: u64| {
        let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "p {n}");
    };
    let reply = match kernel::move_pages(process, &req.pages, &req.nodes, &plan, &progress) {
        Ok(m) => Reply {
            status: m.status,
            calls: m.calls.calls,
            longest_ns: nanos(m.calls.longest),
            median_ns: nanos(m.calls.median),
            final_batch: m.calls.final_batch,
            thread_cpu_ns: m.calls.thread_cpu.iter().map(|d| nanos(*d)).collect(),
            process_exited: m.process_exited,
            left_behind: m.left_behind,
            failure: None,
        },
        Err(e) => Reply {
            status: Vec::new(),
            calls: 0,
            longest_ns: 0,
            median_ns: 0,
            final_batch: 0,
            thread_cpu_ns: Vec::new(),
            process_exited: false,
            left_behind: 0,
            failure: Some(match e {
                MigrateError::NoSuchProcess { .. } => Failure::NoSuchProcess,
                MigrateError::PermissionDenied { .. } => Failure::PermissionDenied,
                other => Failure::Other(format!("{other:#}")),
            }),
        },
    };
    let mut out = out.into_inner().unwrap_or_else(|p| p.into_inner());
    writeln!(out, "r {}", serde_json::to_string(&reply)?)?;
    out.flush()
}

/// Opens the cgroup's `cgroup.procs` for writing.
fn open_procs(cgroup: &Cgroup) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.dir.join("cgroup.procs"))?;
    Ok(file.into())
}

/// [`kernel::move_pages`] done by a helper process inside `cgroup`. Nothing moves when the
/// helper cannot be placed there.
pub(super) fn move_pages_in(
    cgroup: &Cgroup,
    process: Process,
    pages: &[usize],
    nodes: &[NodeId],
    plan: &KernelPlan,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Moved, MigrateError> {
    let enter = |source: io::Error| MigrateError::EnterCgroup {
        process,
        cgroup: cgroup.path.clone(),
        source,
    };
    let procs = open_procs(cgroup).map_err(enter)?;
    let pid = match process {
        // The helper is another process: name the caller by its pid.
        Process::Current => std::process::id() as i32,
        Process::Pid(p) => p as i32,
    };
    let request = Request {
        pid,
        pages: pages.to_vec(),
        nodes: nodes.to_vec(),
        cpus: plan.cpus.clone(),
        batch: plan.batch,
        max_stall_ns: plan.max_stall.map(nanos),
        move_all: plan.move_all,
        region: plan.region,
    };
    let mut command = Command::new("/proc/self/exe");
    command
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = sys::spawn_in_cgroup(&mut command, &procs).map_err(enter)?;
    let helper_failed = |what: String| MigrateError::Helper { message: what };
    let io_error = |e: io::Error| helper_failed(format!("talking to the helper: {e}"));
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let text = serde_json::to_vec(&request).map_err(|e| io_error(e.into()))?;
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
    match reply.failure {
        None => {}
        Some(Failure::NoSuchProcess) => return Err(MigrateError::NoSuchProcess { process }),
        Some(Failure::PermissionDenied) => return Err(MigrateError::PermissionDenied { process }),
        Some(Failure::Other(message)) => return Err(helper_failed(message)),
    }
    Ok(Moved {
        status: reply.status,
        calls: CallStats::new(
            reply.calls,
            Duration::from_nanos(reply.longest_ns),
            Duration::from_nanos(reply.median_ns),
            reply.final_batch,
            reply
                .thread_cpu_ns
                .into_iter()
                .map(Duration::from_nanos)
                .collect(),
        ),
        process_exited: reply.process_exited,
        left_behind: reply.left_behind,
    })
}
