//! `pagemig tier` on a machine with a memory-only node and DAMON: placement by the kernel's own
//! answer (`move_pages` queries), no lost writes, following a hot set that moves, a rate that
//! holds, and no kdamond left behind after SIGKILL and a restart. `cargo xtask guest-test` runs
//! it in the `2-nodes-plus-memory-only` guest (Debian's 6.12 kernel has DAMON's sysfs interface);
//! elsewhere every test prints why it skipped.
//!
//! The binary is its own workload: `workload_entry` runs one when `PAGEMIG_TIER_WORKLOAD` is
//! set: a hot set of 32 MiB written all the time and a cold set of 160 MiB written once.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use pagemig::migrate::scan;
use pagemig::process::Process;
use pagemig::sys::{Mapping, PageNode};
use pagemig::topology::{NodeId, NodeSet, Topology};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
const HOT: usize = 32 * MIB;
const COLD: usize = 160 * MIB;
const ADMIN: &str = "/sys/kernel/mm/damon/admin";

fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// The fast node (a CPU node with memory) and the slow one (a memory-only node) when this
/// machine has both and DAMON; otherwise prints why the test is skipped.
fn tiers(test: &str) -> Option<(NodeId, NodeId)> {
    let topo = Topology::detect().unwrap();
    let fast = topo
        .nodes
        .iter()
        .find(|n| n.has_memory && !n.cpus.is_empty())
        .map(|n| n.id);
    let slow = topo.nodes.iter().find(|n| n.is_memory_only()).map(|n| n.id);
    let (Some(fast), Some(slow)) = (fast, slow) else {
        skip(
            test,
            "needs a CPU node and a memory-only node; `cargo xtask guest-test --shape 2-nodes-plus-memory-only` runs it",
        );
        return None;
    };
    if !Path::new(ADMIN).join("kdamonds/nr_kdamonds").exists() {
        skip(test, "the kernel has no DAMON sysfs interface");
        return None;
    }
    if kdamonds_on() > 0 {
        skip(test, "another program runs a kdamond here");
        return None;
    }
    Some((fast, slow))
}

/// kdamonds running now.
fn kdamonds_on() -> usize {
    let dir = Path::new(ADMIN).join("kdamonds");
    let n: usize = std::fs::read_to_string(dir.join("nr_kdamonds"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (0..n)
        .filter(|i| {
            std::fs::read_to_string(dir.join(format!("{i}/state"))).is_ok_and(|s| s.trim() == "on")
        })
        .count()
}

fn nr_kdamonds() -> String {
    std::fs::read_to_string(Path::new(ADMIN).join("kdamonds/nr_kdamonds"))
        .unwrap()
        .trim()
        .to_owned()
}

fn pagemig_bin() -> String {
    std::env::var("PAGEMIG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pagemig").to_owned())
}

/// The share of the pages of `start..start+len` on `node`, by the kernel's answer.
fn share_on(pid: u32, start: usize, len: usize, node: NodeId) -> f64 {
    let pages: Vec<usize> = (start..start + len).step_by(PAGE).collect();
    let placed = scan::query(Process::Pid(pid), &pages).unwrap();
    placed
        .iter()
        .filter(|p| **p == PageNode::Node(node))
        .count() as f64
        / pages.len() as f64
}

/// What holds a node's memory, from its `meminfo` (to say why a workload did not fit).
fn node_usage(node: NodeId) -> String {
    let path = format!("/sys/devices/system/node/node{node}/meminfo");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|l| {
            ["MemUsed", "FilePages", "Shmem:", "AnonPages"]
                .iter()
                .any(|k| l.contains(k))
        })
        .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The workload, seen from the test.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    hot: usize,
    cold: usize,
}

impl Workload {
    fn spawn(node: NodeId) -> Workload {
        // The previous test's processes may still be giving their memory back: a workload bound
        // to a small memory-only node that does not fit yet is killed before it is ready.
        let need = (HOT + COLD + 32 * MIB) as u64;
        let free = || pagemig::topology::node_free_bytes(node).unwrap_or(0);
        if wait_for(Duration::from_secs(30), || free() >= need).is_none() {
            panic!(
                "node {node} has {} MiB free after 30 s, the workload needs {} MiB: {}",
                free() >> 20,
                need >> 20,
                node_usage(node)
            );
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "workload_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PAGEMIG_TIER_WORKLOAD", node.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "the workload ended before it was ready ({}), node {node} has {} MiB free: {}",
                    child.wait().unwrap(),
                    free() >> 20,
                    node_usage(node)
                )
            });
        let mut f = ready
            .split_whitespace()
            .map(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).unwrap());
        let (hot, cold) = (f.next().unwrap(), f.next().unwrap());
        std::thread::spawn(move || {
            lines.for_each(|l| eprintln!("workload: {}", l.unwrap_or_default()))
        });
        Workload {
            stdin: child.stdin.take(),
            child,
            hot,
            cold,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tell(&mut self, what: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{what}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Stops it; true when it found every write it made.
    fn finish(mut self) -> bool {
        self.tell("stop");
        drop(self.stdin.take());
        self.child.wait().unwrap().success()
    }
}

/// 0: the hot set is written; 1: the first 32 MiB of the cold set is written instead; 2: stop.
static PHASE: AtomicU8 = AtomicU8::new(0);

fn pattern(page: usize, byte: usize) -> u8 {
    (page as u8).wrapping_mul(7) ^ (byte as u8)
}

/// Makes the next accesses to `buf` walk the page tables again. QEMU's software TLB keeps an
/// entry until it is flushed, so a thread that keeps writing the same pages would not set again
/// the accessed bits DAMON clears (a real TLB is far smaller and misses all the time). An
/// mprotect round trip over the range flushes it; the pages stay where they are.
fn flush_tlb(buf: &mut Mapping, len: usize) {
    let base = buf.as_mut_slice().as_mut_ptr().cast::<libc::c_void>();
    for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
        // SAFETY: the range is inside the mapping; its only writer is this thread, which is
        // here, not writing.
        let rc = unsafe { libc::mprotect(base, len, prot) };
        assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
    }
}

/// Increments a counter at the start of every page of `buf`.
fn write_pass(buf: &mut Mapping, len: usize) {
    let base = buf.as_mut_slice().as_mut_ptr();
    for i in 0..len / PAGE {
        // SAFETY: the page is inside the mapping, the counter 8-byte aligned.
        unsafe {
            let p = base.add(i * PAGE).cast::<u64>();
            p.write_volatile(p.read_volatile() + 1);
        }
    }
}

fn counter(buf: &Mapping, page: usize) -> u64 {
    u64::from_ne_bytes(
        buf.as_slice()[page * PAGE..page * PAGE + 8]
            .try_into()
            .unwrap(),
    )
}

fn run_workload(node: NodeId) -> ! {
    let nodes = NodeSet::from_iter([node]);
    let mut hot = Mapping::anonymous(HOT).unwrap();
    let mut cold = Mapping::anonymous(COLD).unwrap();
    hot.bind(&nodes).unwrap();
    cold.bind(&nodes).unwrap();
    hot.as_mut_slice().fill(0);
    for (page, chunk) in cold.as_mut_slice().chunks_mut(PAGE).enumerate() {
        chunk[..8].fill(0);
        for (b, byte) in chunk.iter_mut().enumerate().skip(8) {
            *byte = pattern(page, b);
        }
    }
    println!(
        "READY {:#x} {:#x}",
        hot.as_ptr() as usize,
        cold.as_ptr() as usize
    );
    std::thread::spawn(|| {
        for line in std::io::stdin().lines() {
            match line.unwrap_or_default().trim() {
                "swap" => PHASE.store(1, Ordering::SeqCst),
                _ => {
                    PHASE.store(2, Ordering::SeqCst);
                    return;
                }
            }
        }
        PHASE.store(2, Ordering::SeqCst);
    });
    let (mut hot_passes, mut swap_passes) = (0u64, 0u64);
    let mut flushed = Instant::now();
    loop {
        let flush = flushed.elapsed() >= Duration::from_millis(10);
        if flush {
            flushed = Instant::now();
        }
        match PHASE.load(Ordering::SeqCst) {
            0 => {
                if flush {
                    flush_tlb(&mut hot, HOT);
                }
                write_pass(&mut hot, HOT);
                hot_passes += 1;
            }
            1 => {
                if flush {
                    flush_tlb(&mut cold, HOT);
                }
                write_pass(&mut cold, HOT);
                swap_passes += 1;
            }
            _ => break,
        }
    }
    let mut lost = 0;
    for i in 0..HOT / PAGE {
        lost += (counter(&hot, i) != hot_passes) as usize;
    }
    for i in 0..COLD / PAGE {
        let want = if i < HOT / PAGE { swap_passes } else { 0 };
        lost += (counter(&cold, i) != want) as usize;
        let page = &cold.as_slice()[i * PAGE..(i + 1) * PAGE];
        lost += page
            .iter()
            .enumerate()
            .skip(8)
            .step_by(61)
            .any(|(b, &v)| v != pattern(i, b)) as usize;
    }
    println!("hot passes {hot_passes}, swapped passes {swap_passes}, pages wrong {lost}");
    std::process::exit(if lost == 0 { 0 } else { 1 });
}

#[test]
fn workload_entry() {
    if let Ok(node) = std::env::var("PAGEMIG_TIER_WORKLOAD") {
        run_workload(node.parse().unwrap());
    }
}

/// A running `pagemig tier`.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

/// SIGTERM to a child of ours.
fn sigterm(child: &Child) {
    // SAFETY: kill(2) has no memory arguments; the pid is our own child's, not yet waited for.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

impl Drop for Agent {
    /// A test that failed while the agent runs stops it, so that the next test finds DAMON free.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&c);
            let _ = c.wait();
        }
    }
}

fn tier_command(pid: u32, fast: NodeId, slow: NodeId, run_dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(pagemig_bin());
    c.args([
        "tier",
        "--pid",
        &pid.to_string(),
        "--fast",
        &fast.to_string(),
        "--slow",
        &slow.to_string(),
        "--interval",
        "0.5",
        "--sample",
        "5",
        "--aggregate",
        "100",
        "--runtime-dir",
        run_dir.to_str().unwrap(),
    ])
    .args(extra);
    c
}

impl Agent {
    fn start(pid: u32, fast: NodeId, slow: NodeId, name: &str, extra: &[&str]) -> Agent {
        let dir = PathBuf::from(format!("/tmp/pagemig-tier-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.jsonl");
        let child = tier_command(pid, fast, slow, &dir.join("run"), extra)
            .args(["--log", log.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    /// Ends it with SIGTERM and returns its stdout and log, checking it exited 0.
    fn terminate(mut self) -> (String, Vec<serde_json::Value>) {
        let child = self.child.take().expect("running");
        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pagemig tier: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = read_log(&self.log);
        (text, lines)
    }

    /// The last interval whose line is logged: its moves are done.
    fn last_interval(&self) -> u64 {
        read_log(&self.log)
            .iter()
            .filter(|l| l["event"] == "interval")
            .filter_map(|l| l["interval"].as_u64())
            .max()
            .unwrap_or(0)
    }
}

/// The complete lines of the agent's JSON log: a line it is writing while this reads is left
/// for the next read.
fn read_log(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// Polls `done` every half second until it holds or `limit` passes; returns the time taken.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if done() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

#[test]
fn tier_demotes_the_cold_set_keeps_the_hot_one_and_follows_it_when_it_moves() {
    let Some((fast, slow)) = tiers("tier_demotes_the_cold_set") else {
        return;
    };
    let before = nr_kdamonds();
    let mut w = Workload::spawn(fast);
    let pid = w.pid();
    let agent = Agent::start(pid, fast, slow, "demote", &["--fast-budget", "64M"]);
    let placed = wait_for(Duration::from_secs(120), || {
        share_on(pid, w.cold, COLD, slow) >= 0.9 && share_on(pid, w.hot, HOT, fast) >= 0.9
    });
    let (cold_slow, hot_fast) = (
        share_on(pid, w.cold, COLD, slow),
        share_on(pid, w.hot, HOT, fast),
    );
    eprintln!("placed after {placed:?}: cold on slow {cold_slow:.3}, hot on fast {hot_fast:.3}");
    assert!(
        placed.is_some(),
        "cold on slow {cold_slow:.3}, hot on fast {hot_fast:.3}"
    );
    // Settled: the interval that made the moves is logged, and one after it decided nothing.
    let settled = wait_for(Duration::from_secs(60), || {
        read_log(&agent.log)
            .iter()
            .rev()
            .find(|l| l["event"] == "interval")
            .is_some_and(|l| l["decisions"] == 0 && l["warming_up"] == false)
    });
    assert!(settled.is_some(), "the agent settled");
    let hot_fast = share_on(pid, w.hot, HOT, fast);
    assert!(
        hot_fast >= 0.9,
        "the hot set stayed on the fast node: {hot_fast:.3}"
    );

    // The hot set moves to the start of the cold set, which is now on the slow node.
    let swapped_at = agent.last_interval();
    w.tell("swap");
    let followed = wait_for(Duration::from_secs(120), || {
        share_on(pid, w.cold, HOT, fast) >= 0.9
    });
    let new_hot_fast = share_on(pid, w.cold, HOT, fast);
    // The interval whose moves placed it is the one after the last logged.
    let placed_in = agent.last_interval() + 1;
    let (out, lines) = agent.terminate();
    eprintln!("followed after {followed:?}: new hot set on fast {new_hot_fast:.3}\n{out}");
    for l in lines
        .iter()
        .filter(|l| l["event"].is_null() || l["decisions"].as_u64() > Some(0))
        .take(30)
    {
        eprintln!("  {l}");
    }
    assert!(followed.is_some(), "new hot set on fast {new_hot_fast:.3}");
    let promoted_at = lines
        .iter()
        .filter(|l| l["direction"] == "promote" && l["why"] == "hot")
        .filter_map(|l| l["interval"].as_u64())
        .filter(|&i| i > swapped_at)
        .min()
        .unwrap_or(placed_in);
    eprintln!("hot set swapped after interval {swapped_at}, first promotion at {promoted_at}");
    assert!(
        promoted_at - swapped_at <= 30,
        "followed after {} intervals",
        promoted_at - swapped_at
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["interval"].as_u64() <= Some(swapped_at) && l["direction"] == "promote"),
        "nothing bounced before the swap: the hot set was never demoted"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["why"] == "cold" && l["direction"] == "demote"),
        "cold demotions are logged"
    );
    assert!(out.contains("stopped by a signal"), "{out}");
    assert_eq!(kdamonds_on(), 0, "no kdamond left running");
    assert_eq!(nr_kdamonds(), before, "nr_kdamonds as before");
    assert!(
        w.finish(),
        "the workload lost no write and its cold data is intact"
    );
}

#[test]
fn tier_promotes_the_hot_set_from_the_slow_node_within_the_rate() {
    let Some((fast, slow)) = tiers("tier_promotes_the_hot_set") else {
        return;
    };
    let w = Workload::spawn(slow);
    let pid = w.pid();
    let rate_mb = 40.0;
    let interval = 0.5;
    let agent = Agent::start(
        pid,
        fast,
        slow,
        "promote",
        &[
            "--fast-budget",
            "64M",
            "--rate",
            "40",
            "--max-stall",
            "20",
            "--metrics",
            "127.0.0.1:9464",
        ],
    );
    let placed = wait_for(Duration::from_secs(120), || {
        share_on(pid, w.hot, HOT, fast) >= 0.9
    });
    // Prometheus text from the agent, while it runs (the guest's loopback starts down).
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let metrics = {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect("127.0.0.1:9464").unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text
    };
    for want in [
        "pagemig_tier_promoted_bytes_total",
        "pagemig_tier_stall_seconds_bucket",
        &format!("pagemig_tier_pages{{node=\"{fast}\",pid=\"{pid}\"}}"),
        "pagemig_tier_kdamond_cpu_seconds",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    let hot_fast = share_on(pid, w.hot, HOT, fast);
    let cold_slow = share_on(pid, w.cold, COLD, slow);
    let (out, lines) = agent.terminate();
    eprintln!(
        "placed after {placed:?}: hot on fast {hot_fast:.3}, cold on slow {cold_slow:.3}\n{out}"
    );
    assert!(placed.is_some(), "hot on fast {hot_fast:.3}");
    assert!(
        cold_slow >= 0.9,
        "the cold set stays on the slow node: {cold_slow:.3}"
    );
    // No interval decided more than the rate allows.
    let mut per_interval = std::collections::BTreeMap::<u64, u64>::new();
    for l in &lines {
        if let (Some(i), Some(b)) = (l["interval"].as_u64(), l["bytes"].as_u64()) {
            *per_interval.entry(i).or_default() += b;
        }
    }
    let cap = (rate_mb * 1e6 * interval) as u64;
    let most = per_interval.values().max().copied().unwrap_or(0);
    eprintln!("most bytes in one interval {most}, allowed {cap}");
    assert!(
        most > 0 && most <= cap,
        "most bytes in one interval {most} > {cap}"
    );
    assert!(w.finish(), "the workload lost no write");
}

#[test]
fn tier_killed_with_sigkill_is_cleaned_by_the_next_start() {
    let Some((fast, slow)) = tiers("tier_killed_with_sigkill") else {
        return;
    };
    let before = nr_kdamonds();
    let w = Workload::spawn(fast);
    let pid = w.pid();
    let mut agent = Agent::start(pid, fast, slow, "kill", &[]);
    assert!(
        wait_for(Duration::from_secs(60), || kdamonds_on() == 1).is_some(),
        "the agent started a kdamond"
    );
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(kdamonds_on(), 1, "SIGKILL leaves the kdamond running");

    // The next start finds the record, turns the kdamond off, decides once and stops.
    let run_dir = PathBuf::from("/tmp/pagemig-tier-kill/run");
    let child = tier_command(pid, fast, slow, &run_dir, &["--once", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{err}");
    assert!(err.contains("did not stop cleanly"), "{err}");
    assert!(
        String::from_utf8_lossy(&child.stdout).contains("--once: one decision made"),
        "{}",
        String::from_utf8_lossy(&child.stdout)
    );
    assert_eq!(kdamonds_on(), 0, "no kdamond left running");
    assert_eq!(nr_kdamonds(), before);
    assert!(!run_dir.join("damon.json").exists());
    assert!(w.finish());
}

#[test]
fn tier_refuses_bad_starts_and_moves_nothing() {
    let Some((fast, slow)) = tiers("tier_refuses_bad_starts") else {
        return;
    };
    let w = Workload::spawn(fast);
    let pid = w.pid();
    let run_dir = Path::new("/tmp/pagemig-tier-bad");
    let refused = |extra: &[&str], pid: u32, want: &str| {
        let o = tier_command(pid, fast, slow, run_dir, extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    };
    refused(
        &["--fast-budget", "64G"],
        pid,
        "is larger than the memory of the fast nodes",
    );
    refused(&["--rate", "1"], pid, "less than one region");
    refused(&[], 4_000_000, "process 4000000 does not exist");
    // A kdamond of another program: nothing of ours starts.
    let admin = Path::new(ADMIN).join("kdamonds");
    std::fs::write(admin.join("nr_kdamonds"), "1").unwrap();
    let k = admin.join("0/contexts");
    std::fs::write(k.join("nr_contexts"), "1").unwrap();
    std::fs::write(k.join("0/operations"), "vaddr").unwrap();
    std::fs::write(k.join("0/targets/nr_targets"), "1").unwrap();
    std::fs::write(k.join("0/targets/0/pid_target"), pid.to_string()).unwrap();
    std::fs::write(admin.join("0/state"), "on").unwrap();
    refused(
        &[],
        pid,
        "DAMON is in use by another program: kdamond 0 is running",
    );
    std::fs::write(admin.join("0/state"), "off").unwrap();
    std::fs::write(admin.join("nr_kdamonds"), "0").unwrap();
    assert_eq!(share_on(pid, w.hot, HOT, fast), 1.0, "nothing moved");
    assert_eq!(share_on(pid, w.cold, COLD, fast), 1.0, "nothing moved");
    // As user nobody: the process of root cannot be read, and DAMON cannot be driven.
    let nobody = |args_pid: u32, want: &str| {
        use std::os::unix::process::CommandExt;
        let o = tier_command(
            args_pid,
            fast,
            slow,
            Path::new("/tmp/pagemig-tier-nobody"),
            &[],
        )
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
    };
    nobody(pid, "no permission");
    let mut own = {
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg("60")
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap()
    };
    nobody(own.id(), "no permission to drive DAMON");
    own.kill().unwrap();
    own.wait().unwrap();
    assert!(w.finish());
}

#[test]
fn tier_bench_compares_pagemig_with_damons_own_migration() {
    let Some((fast, slow)) = tiers("tier_bench") else {
        return;
    };
    let before = nr_kdamonds();
    let o = Command::new(pagemig_bin())
        .args([
            "bench",
            "tier",
            "--fast",
            &fast.to_string(),
            "--slow",
            &slow.to_string(),
        ])
        .args([
            "--hot",
            "8M",
            "--cold",
            "32M",
            "--fast-budget",
            "16M",
            "--timeout",
            "30",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    eprintln!("{text}");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('│') && !l.contains("method"))
        .collect();
    assert_eq!(rows.len(), 4, "two starts by two methods:\n{text}");
    // How soon each method places the workload is the benchmark's figure, not a test: under
    // emulation DAMON's view of the workload varies from run to run (placement itself is asserted
    // by the tests above). Every row must have measured something.
    for row in &rows {
        let cells: Vec<&str> = row.split('┆').map(str::trim).collect();
        assert_eq!(cells.len(), 9, "{row}");
        assert!(
            cells[3].ends_with('%') && cells[4].ends_with('%'),
            "placement shares in {row}"
        );
    }
    assert_eq!(kdamonds_on(), 0, "no kdamond left running");
    assert_eq!(nr_kdamonds(), before);
}
