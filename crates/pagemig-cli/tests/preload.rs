//! libpagemig and libpagemig_preload.so against the kernel, in the multi-node guests: every case
//! of move_pages(2) and migrate_pages(2) answered the same by the raw system call and through
//! pagemig, and numactl's own `migratepages` moving a running `memhog` under the preload.
//!
//! `cargo xtask guest-test` puts the libraries, the C program `abi_cases`
//! (crates/pagemig-ffi/tests/c) and numactl into the guests and names them in
//! `PAGEMIG_PRELOAD`, `PAGEMIG_ABI_CASES` and `PATH`; elsewhere the tests say why they skip.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagemig::process::Process;
use pagemig::procfs;
use pagemig::topology::{NodeId, Topology};

fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// The nodes with memory and the preload library, when there are two nodes and the guest
/// harness installed the libraries.
fn setup(test: &str) -> Option<(Topology, Vec<NodeId>, String)> {
    let topo = Topology::detect().unwrap();
    let nodes: Vec<NodeId> = topo.memory_nodes().iter().collect();
    if nodes.len() < 2 {
        skip(
            test,
            &format!(
                "needs 2 NUMA nodes with memory, this machine has {} (node {}); `cargo xtask guest-test` runs it in QEMU guests",
                nodes.len(),
                topo.memory_nodes()
            ),
        );
        return None;
    }
    let Ok(preload) = std::env::var("PAGEMIG_PRELOAD") else {
        skip(
            test,
            "PAGEMIG_PRELOAD does not name libpagemig_preload.so (`cargo xtask guest-test` sets it)",
        );
        return None;
    };
    Some((topo, nodes, preload))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A process that has exited and been reaped: its pid names no process.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Runs abi_cases with the preload and returns its lines grouped by case: way -> the rest.
fn run_cases(
    preload: &str,
    args: &[String],
    as_nobody: bool,
    threads: usize,
) -> (BTreeMap<String, BTreeMap<String, String>>, String) {
    let program = std::env::var("PAGEMIG_ABI_CASES").expect("PAGEMIG_ABI_CASES");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env("PAGEMIG_THREADS", threads.to_string())
        .env("PAGEMIG_LOG", "1");
    if as_nobody {
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "abi_cases failed: {err}\n{out}");
    let mut cases: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in out.lines() {
        let mut words = line.splitn(3, ' ');
        let case = words.next().unwrap().trim_start_matches("case=").to_owned();
        let way = words.next().unwrap().trim_start_matches("way=").to_owned();
        let rest = words.next().unwrap_or_default().to_owned();
        if rest != "skipped" {
            cases.entry(case).or_default().insert(way, rest);
        }
    }
    (cases, err)
}

fn assert_same_as_raw(cases: &BTreeMap<String, BTreeMap<String, String>>, threads: usize) {
    for (case, ways) in cases {
        let raw = &ways["raw"];
        for (way, got) in ways {
            assert_eq!(
                got, raw,
                "case {case} with PAGEMIG_THREADS={threads}: {way} differs from the raw system call"
            );
        }
        assert!(ways.len() >= 3, "case {case}: {ways:?}");
    }
}

/// What the cases run with `threads` threads must show besides matching the raw call: each case
/// ran and did what it says, and pagemig split what it can split.
fn check_cases(
    cases: &BTreeMap<String, BTreeMap<String, String>>,
    log: &str,
    threads: usize,
    a: NodeId,
    b: NodeId,
    missing: NodeId,
) {
    assert_same_as_raw(cases, threads);
    for case in [
        "query",
        "move",
        "already",
        "mixed",
        "shared",
        "shared-move-all",
        "missing-node",
        "negative-node",
        "dead-pid",
        "bad-flags",
        "bad-status",
        "bad-pages",
        "no-pages",
        "freed",
        "migrate",
        "migrate-dead-pid",
        "migrate-bad-mask",
        "migrate-big-maxnode",
    ] {
        assert!(cases.contains_key(case), "case {case} missing: {cases:?}");
    }
    // The cases did what they say, so the comparison means something.
    let on = |case: &str, node: NodeId| {
        let raw = &cases[case]["raw"];
        let after = raw.split("after=").nth(1).unwrap();
        after.split(',').filter(|s| *s == node.to_string()).count()
    };
    assert_eq!(on("move", b), 256, "{}", cases["move"]["raw"]);
    assert_eq!(on("migrate", b), 256, "{}", cases["migrate"]["raw"]);
    assert!(cases["shared"]["raw"].contains(&format!("status={}", -libc::EACCES)));
    assert!(cases["missing-node"]["raw"].starts_with(&format!("rc=-1 errno={}", libc::ENODEV)));
    assert!(cases["dead-pid"]["raw"].starts_with(&format!("rc=-1 errno={}", libc::ESRCH)));
    // The freed address: the kernel's EFAULT, whatever the thread count.
    assert!(
        cases["freed"]["raw"].contains(&format!(",{} after=", -libc::EFAULT)),
        "{}",
        cases["freed"]["raw"]
    );
    // pagemig did the moves, split over its threads; what it cannot split went to the kernel.
    if threads == 1 {
        assert!(
            log.contains("passed to the kernel: one thread planned"),
            "{log}"
        );
    } else {
        // As many threads as there are calls to share, at most `threads`.
        let by = if threads == 2 { "2 thread(s)" } else { "" };
        assert!(
            log.contains("move_pages(pid 0, 256 pages, flags 0x2) = 0")
                && log.contains(format!("{by} on CPUs").trim_start()),
            "{log}"
        );
        assert!(
            log.contains("2 target node(s)"),
            "mixed was not split: {log}"
        );
        assert!(
            log.contains(&format!("pages moved {a}->{b} by {by}")),
            "{log}"
        );
        // The freed case was split over the threads, and still answered EFAULT.
        assert!(
            log.lines()
                .any(|l| l.contains("move_pages(pid 0, 67 pages, flags 0x2) = 0")
                    && l.contains("thread(s) on CPUs")),
            "the freed case was not split: {log}"
        );
        // Checked once the call would be split: with one thread it goes to the kernel first.
        assert!(log.contains(&format!(
            "passed to the kernel: node {missing} has no memory"
        )));
    }
    assert!(log.contains("passed to the kernel: no target nodes: a placement query"));
}

#[test]
fn every_case_answers_as_the_raw_system_call() {
    let Some((topo, nodes, preload)) = setup("every_case_answers_as_the_raw_system_call") else {
        return;
    };
    let (a, b) = (nodes[0], nodes[1]);
    let missing = topo.nodes.iter().map(|n| n.id).max().unwrap() + 1;
    let no_memory = topo
        .nodes
        .iter()
        .find(|n| !n.has_memory)
        .map_or(-1, |n| n.id as i64);
    let args = |other: i64| -> Vec<String> {
        [
            a as i64,
            b as i64,
            missing as i64,
            no_memory,
            dead_pid() as i64,
            other,
        ]
        .iter()
        .map(i64::to_string)
        .collect()
    };

    // Every case with the calls forced onto 1, 2 and 4 threads: the answer must not depend on
    // how pagemig splits a call.
    for threads in [1, 2, 4] {
        let (cases, log) = run_cases(&preload, &args(-1), false, threads);
        check_cases(&cases, &log, threads, a, b, missing);
    }
    // Without rights: another user's process, MOVE_ALL without CAP_SYS_NICE.
    let (cases, log) = run_cases(&preload, &args(1), true, 2);
    assert_same_as_raw(&cases, 2);
    for case in ["other-user", "shared-move-all", "migrate-other-user"] {
        assert!(
            cases[case]["raw"].starts_with(&format!("rc=-1 errno={}", libc::EPERM)),
            "{case}: {}",
            cases[case]["raw"]
        );
    }
    assert!(log.contains("the kernel refuses the call itself"), "{log}");
}

/// numactl's memhog with `MiB` of memory on `node`, once it has touched all of it.
fn memhog(node: NodeId, mib: u64) -> Child {
    let child = Command::new("numactl")
        .arg(format!("--membind={node}"))
        .args(["memhog", "-r1000000000", &format!("{mib}m")])
        .stdout(Stdio::null())
        .spawn()
        .expect("numactl and memhog are in the guest");
    let pid = Process::Pid(child.id());
    let started = Instant::now();
    while procfs::status(pid).map_or(0, |s| s.rss) < mib << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "memhog did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Bytes of the process's large mappings (memhog's buffer) on each node.
fn big_mapping_bytes(pid: u32, at_least: u64) -> BTreeMap<NodeId, u64> {
    let mut total = BTreeMap::new();
    for area in procfs::placement(Process::Pid(pid)).unwrap() {
        if area.bytes_per_node.values().sum::<u64>() >= at_least {
            for (n, b) in area.bytes_per_node {
                *total.entry(n).or_default() += b;
            }
        }
    }
    total
}

#[test]
fn numactl_migratepages_moves_memhog_through_pagemig() {
    let Some((_, nodes, preload)) = setup("numactl_migratepages_moves_memhog_through_pagemig")
    else {
        return;
    };
    let (a, b) = (nodes[0], nodes[1]);
    let mut hog = memhog(a, 32);
    let pid = hog.id();
    let migratepages = |from: NodeId, to: NodeId, with_preload: bool| {
        let mut cmd = Command::new("migratepages");
        cmd.args([pid.to_string(), from.to_string(), to.to_string()]);
        if with_preload {
            cmd.env("LD_PRELOAD", &preload)
                .env("PAGEMIG_THREADS", "2")
                .env("PAGEMIG_LOG", "1");
        }
        let o = cmd.output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "migratepages {from} {to}: {out}{err}");
        err
    };

    let log = migratepages(a, b, true);
    println!("migratepages {pid} {a} {b} under the preload:\n{log}");
    assert!(
        log.contains(&format!("migrate_pages(pid {pid}, "))
            && log.contains(&format!("pages moved {a}->{b} by 2 thread(s)")),
        "{log}"
    );
    let moved: u64 = log
        .split("ms: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no page count in {log}"));
    assert!(moved >= 32 * 256, "pagemig moved only {moved} pages: {log}");
    let placed = big_mapping_bytes(pid, 16 << 20);
    assert!(
        placed.get(&b).copied().unwrap_or(0) >= 32 << 20 && placed.get(&a).is_none_or(|&x| x == 0),
        "memhog's buffer after migratepages {a} {b}: {placed:?}"
    );

    // And back without the preload: the kernel alone, and no line from pagemig.
    let log = migratepages(b, a, false);
    assert!(!log.contains("pagemig"), "{log}");
    let placed = big_mapping_bytes(pid, 16 << 20);
    assert!(
        placed.get(&a).copied().unwrap_or(0) >= 32 << 20,
        "{placed:?}"
    );
    hog.kill().unwrap();
    hog.wait().unwrap();
}
