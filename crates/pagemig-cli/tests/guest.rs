//! Real migration between NUMA nodes, proved with the kernel's own answers (move_pages queries
//! and /proc/PID/numa_maps). Needs two or more nodes with memory: `cargo xtask guest-test` runs
//! this binary inside QEMU guests of several NUMA shapes. On a machine with one node every test
//! prints why it skipped.
//!
//! The binary is also its own victim process: `victim_entry` runs a writer when the
//! `PAGEMIG_VICTIM` variable is set, so that another process's memory can be migrated while it
//! keeps writing.
#![allow(unsafe_code)]
#![allow(
    clippy::single_range_in_vec_init,
    reason = "a selection is a list of ranges"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pagemig::account::{FailureCause, Report, SkipReason};
use pagemig::migrate::MigrateError;
use pagemig::migrate::scan;
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::sys::{self, HUGE_PAGE_SIZE, Mapping, PageNode};
use pagemig::topology::{NodeId, NodeSet, Topology};
use pagemig::{Migrator, Plan, Request, Selection};

const PAGE: usize = 4096;

/// Says why a test did not run. Written to stderr directly: libtest hides `eprintln!` output
/// of tests that pass.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
}

/// The topology and its nodes with memory when there are at least two; otherwise prints why the
/// test is skipped.
fn multi_node(test: &str) -> Option<(Topology, Vec<NodeId>)> {
    let topo = Topology::detect().unwrap();
    let nodes: Vec<NodeId> = topo.memory_nodes().iter().collect();
    if nodes.len() >= 2 {
        Some((topo, nodes))
    } else {
        skip(
            test,
            &format!(
                "needs 2 NUMA nodes with memory, this machine has {} (node {}); `cargo xtask guest-test` runs it in QEMU guests",
                nodes.len(),
                topo.memory_nodes()
            ),
        );
        None
    }
}

fn cpu_nodes(topo: &Topology) -> Vec<NodeId> {
    topo.nodes
        .iter()
        .filter(|n| n.has_memory && !n.cpus.is_empty())
        .map(|n| n.id)
        .collect()
}

fn all_cpus() -> Vec<u32> {
    sys::allowed_cpus().unwrap().iter().collect()
}

/// A buffer of `pages` pages bound to `node`, filled with a pattern that depends on `seed`.
fn filled(pages: usize, node: NodeId, seed: u8) -> Mapping {
    let mut m = Mapping::anonymous(pages * PAGE).unwrap();
    m.bind(&NodeSet::from_iter([node])).unwrap();
    for (i, b) in m.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8;
    }
    m
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn page_addrs(start: usize, len: usize) -> Vec<usize> {
    (start..start + len).step_by(PAGE).collect()
}

/// Asserts, with the kernel's answer, that every page is on `node`.
fn assert_on(process: Process, start: usize, len: usize, node: NodeId) {
    let placed = scan::query(process, &page_addrs(start, len)).unwrap();
    let off: Vec<_> = placed
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != PageNode::Node(node))
        .take(5)
        .collect();
    assert!(off.is_empty(), "pages not on node {node}: {off:?}");
}

/// Bytes of the mapping containing `addr` on each node, from numa_maps.
fn numa_maps_bytes(process: Process, addr: usize) -> std::collections::BTreeMap<NodeId, u64> {
    procfs::placement(process)
        .unwrap()
        .into_iter()
        .find(|a| a.area.start <= addr && addr < a.area.end)
        .map(|a| a.bytes_per_node)
        .unwrap_or_default()
}

fn range_request(process: Process, start: usize, len: usize, to: NodeId) -> Request<'static> {
    Request::process(process, Selection::Ranges(vec![start..start + len]), to)
}

/// Scans `req`, then moves its pages as `plan` says (a fixed plan in place of the planner's).
fn migrate_as(migrator: &Migrator, req: &Request<'_>, plan: &Plan) -> Result<Report, MigrateError> {
    let (scan, _) = migrator.plan(req)?;
    migrator.execute(req, &scan, plan, &|_| {})
}

fn migrate(req: &Request<'_>, plan: &Plan) -> Report {
    let r = migrate_as(&Migrator::new().unwrap(), req, plan).unwrap();
    // Every requested page is accounted for exactly once.
    assert_eq!(
        r.pages_requested,
        r.pages_moved + r.pages_already_on_target + r.pages_skipped_total() + r.pages_not_moved(),
        "{r:#?}"
    );
    // Every instant is in a phase: the phases add up to the wall time.
    let sum = r.phases.total().as_secs_f64();
    assert!(
        sum <= r.wall.as_secs_f64() && sum >= 0.95 * r.wall.as_secs_f64(),
        "{r:#?}"
    );
    r
}

#[test]
fn pages_only_read_are_nothing_to_move() {
    let Some((_, nodes)) = multi_node("pages_only_read_are_nothing_to_move") else {
        return;
    };
    let mut m = Mapping::anonymous(32 * PAGE).unwrap();
    m.bind(&NodeSet::from_iter([nodes[0]])).unwrap();
    m.as_mut_slice()[..8 * PAGE].fill(7);
    // Read, never written: the kernel's shared zero page.
    let sum: u64 = (8..24)
        .map(|i| u64::from(std::hint::black_box(m.as_slice()[i * PAGE])))
        .sum();
    assert_eq!(sum, 0);
    let start = m.as_ptr() as usize;
    let r = migrate(
        &range_request(Process::Current, start, 32 * PAGE, nodes[1]),
        &Plan::parallel(all_cpus(), 4),
    );
    assert_eq!(r.pages_moved, 8, "{r:#?}");
    assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
    assert_eq!(
        r.pages_skipped.get(&SkipReason::NothingToMove),
        Some(&16),
        "{r:#?}"
    );
    assert_on(Process::Current, start, 8 * PAGE, nodes[1]);
    assert!(m.as_slice()[..8 * PAGE].iter().all(|&b| b == 7));
}

#[test]
fn own_pages_land_on_every_node_serial_and_parallel() {
    let Some((topo, nodes)) = multi_node("own_pages_land_on_every_node_serial_and_parallel") else {
        return;
    };
    let home = cpu_nodes(&topo)[0];
    let pages = 4096;
    let m = filled(pages, home, 1);
    let (start, len) = (m.as_ptr() as usize, m.len());
    let sum = checksum(m.as_slice());
    assert_on(Process::Current, start, len, home);
    let plans = [Plan::serial(4096), Plan::parallel(all_cpus(), 256)];
    for (k, &to) in nodes
        .iter()
        .filter(|&&n| n != home)
        .chain([&home])
        .enumerate()
    {
        let plan = &plans[k % 2];
        let r = migrate(&range_request(Process::Current, start, len, to), plan);
        assert_eq!(r.pages_moved, pages as u64, "{r:#?}");
        assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
        assert_eq!(r.bytes_moved, (pages * PAGE) as u64);
        assert_on(Process::Current, start, len, to);
        assert_eq!(
            numa_maps_bytes(Process::Current, start).get(&to),
            Some(&((pages * PAGE) as u64))
        );
        assert_eq!(
            checksum(m.as_slice()),
            sum,
            "contents changed moving to node {to}"
        );
        eprintln!(
            "moved {pages} pages to node {to} with {} thread(s), {} calls",
            r.calls.threads, r.calls.calls
        );
        if !plan.cpus.is_empty() {
            assert!(r.calls.threads > 1, "{r:#?}");
        }
    }
}

#[test]
fn selection_by_node_and_dry_run() {
    let Some((topo, _)) = multi_node("selection_by_node_and_dry_run") else {
        return;
    };
    let nodes = cpu_nodes(&topo);
    let (a, b) = (
        nodes[0],
        topo.memory_nodes().iter().find(|&n| n != nodes[0]).unwrap(),
    );
    let m = filled(64, a, 2);
    let (start, len) = (m.as_ptr() as usize, m.len());
    // Move the first half to b, then ask to move only pages on b back to a.
    migrate(
        &range_request(Process::Current, start, len / 2, b),
        &Plan::serial(64),
    );
    let mut req = range_request(Process::Current, start, len, a);
    req.options.dry_run = true;
    let dry = migrate(&req, &Plan::serial(64));
    assert_eq!((dry.pages_moved, dry.pages_already_on_target), (32, 32));
    assert_on(Process::Current, start, len / 2, b);
    req.options.dry_run = false;
    req = req.from_nodes(NodeSet::from_iter([b]));
    let r = migrate(&req, &Plan::serial(64));
    assert_eq!((r.pages_requested, r.pages_moved), (32, 32), "{r:#?}");
    assert_on(Process::Current, start, len, a);
}

#[test]
fn max_stall_shrinks_batches() {
    let Some((_, nodes)) = multi_node("max_stall_shrinks_batches") else {
        return;
    };
    let m = filled(2048, nodes[0], 3);
    let mut plan = Plan::parallel(all_cpus(), 4096);
    // Far below the cost of one page here, so batches must drop to a handful of pages.
    plan.max_stall = Some(Duration::from_micros(20));
    let r = migrate(
        &range_request(Process::Current, m.as_ptr() as usize, m.len(), nodes[1]),
        &plan,
    );
    assert_eq!(r.pages_moved, 2048, "{r:#?}");
    assert!(r.calls.final_batch < 16, "{r:#?}");
    assert!(r.calls.calls > 2048 / 16, "{r:#?}");
}

#[test]
fn transparent_huge_pages_move_and_report_whether_they_stay_huge() {
    let Some((_, nodes)) = multi_node("transparent_huge_pages_move") else {
        return;
    };
    let len = 4 * HUGE_PAGE_SIZE;
    let mut m = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE).unwrap();
    m.advise_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([nodes[0]])).unwrap();
    m.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8);
    let sum = checksum(m.as_slice());
    let start = m.as_ptr() as usize;
    let huge_before = procfs::anon_huge_bytes(Process::Current, start..start + len).unwrap() >> 10;
    for (round, &to) in [nodes[1], nodes[0]].iter().enumerate() {
        let plan = if round == 0 {
            Plan::serial(4096)
        } else {
            Plan::parallel(all_cpus(), 512)
        };
        let r = migrate(&range_request(Process::Current, start, len, to), &plan);
        assert_eq!(r.pages_moved, (len / PAGE) as u64, "{r:#?}");
        assert_on(Process::Current, start, len, to);
        assert_eq!(checksum(m.as_slice()), sum);
        eprintln!(
            "THP: AnonHugePages {huge_before} kB before, {} kB after moving to node {to}",
            procfs::anon_huge_bytes(Process::Current, start..start + len).unwrap() >> 10
        );
    }
}

// ---- another process that keeps writing while it is migrated ----

/// A victim process (this binary in victim mode) and the range it writes to.
struct Victim {
    child: Child,
    stdin: Option<ChildStdin>,
    start: usize,
    len: usize,
}

impl Victim {
    fn spawn(mode: &str, pages: usize, node: NodeId) -> Victim {
        Victim::spawn_as(mode, pages, node, None)
    }

    /// As `spawn`, running as user and group `uid` when given.
    fn spawn_as(mode: &str, pages: usize, node: NodeId, uid: Option<u32>) -> Victim {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let mut child = command
            .args(["--exact", "victim_entry", "--nocapture", "--test-threads=1"])
            .env("PAGEMIG_VICTIM", mode)
            .env("PAGEMIG_VICTIM_PAGES", pages.to_string())
            .env("PAGEMIG_VICTIM_NODE", node.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // libtest has already written "test victim_entry ... " on the same line.
        let ready = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_owned()))
            .expect("victim said READY");
        let mut f = ready.split_whitespace();
        let start = usize::from_str_radix(f.next().unwrap().trim_start_matches("0x"), 16).unwrap();
        let len = f.next().unwrap().parse().unwrap();
        // Keep draining the victim's output so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            lines.for_each(|l| eprintln!("victim: {}", l.unwrap_or_default()))
        });
        let stdin = child.stdin.take();
        Victim {
            child,
            stdin,
            start,
            len,
        }
    }

    fn pid(&self) -> Process {
        Process::Pid(self.child.id())
    }

    /// Tells the victim to stop, and returns whether it found every write it made.
    fn finish(mut self) -> bool {
        let mut stdin = self.stdin.take().unwrap();
        let _ = stdin.write_all(b"stop\n");
        drop(stdin);
        self.child.wait().unwrap().success()
    }
}

fn counter(bytes: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(bytes[i * PAGE..i * PAGE + 8].try_into().unwrap())
}

fn fill_byte(i: usize, j: usize) -> u8 {
    (i as u8).wrapping_mul(13) ^ (j as u8)
}

/// The victim: writes counters into every page until told to stop, then checks that it can
/// read back every write (and the untouched bytes), exiting 0 only then.
fn run_victim(mode: &str) -> ! {
    let pages: usize = std::env::var("PAGEMIG_VICTIM_PAGES")
        .unwrap()
        .parse()
        .unwrap();
    let node: NodeId = std::env::var("PAGEMIG_VICTIM_NODE")
        .unwrap()
        .parse()
        .unwrap();
    let mut m = if mode == "shared" {
        shared_anonymous(pages * PAGE)
    } else {
        Mapping::anonymous(pages * PAGE).unwrap()
    };
    m.bind(&NodeSet::from_iter([node])).unwrap();
    for i in 0..pages {
        for j in 8..PAGE {
            m.as_mut_slice()[i * PAGE + j] = fill_byte(i, j);
        }
    }
    if mode == "shared" {
        // A child maps the same pages, so that each has two mappers. fork copies no page table
        // entries of a shared mapping: the child must touch every page itself, and says when
        // it has through a pipe.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only reads memory and makes async-signal-safe calls before _exit.
        if unsafe { libc::fork() } == 0 {
            let base = m.as_ptr();
            // SAFETY: as above; `base` points to `pages` pages mapped in the child too.
            unsafe {
                for i in 0..pages {
                    std::ptr::read_volatile(base.add(i * PAGE));
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::write(fds[1], b"x".as_ptr().cast(), 1);
                libc::sleep(600);
                libc::_exit(0);
            }
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads one byte into `byte`.
        let got = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
        assert_eq!(got, 1);
    }
    println!("READY {:#x} {}", m.as_ptr() as usize, m.len());
    std::io::stdout().flush().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        flag.store(true, Ordering::Relaxed);
    });
    let mut total = 0u64;
    let bytes = m.as_mut_slice();
    'outer: loop {
        for i in 0..pages {
            let c = counter(bytes, i) + 1;
            bytes[i * PAGE..i * PAGE + 8].copy_from_slice(&c.to_ne_bytes());
            total += 1;
            if total.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
                break 'outer;
            }
        }
    }
    let rounds = total / pages as u64;
    let extra = (total % pages as u64) as usize;
    let mut ok = true;
    for i in 0..pages {
        let want = rounds + u64::from(i < extra);
        if counter(bytes, i) != want {
            println!(
                "VICTIM-BAD page {i}: counter {} but wrote it {want} times",
                counter(bytes, i)
            );
            ok = false;
            break;
        }
        if (8..PAGE).any(|j| bytes[i * PAGE + j] != fill_byte(i, j)) {
            println!("VICTIM-BAD page {i}: contents changed");
            ok = false;
            break;
        }
    }
    println!(
        "VICTIM-{} total writes {total}",
        if ok { "OK" } else { "BAD" }
    );
    std::process::exit(if ok { 0 } else { 1 })
}

/// An anonymous shared mapping, so that a forked child maps the same pages.
fn shared_anonymous(len: usize) -> Mapping {
    // Mapping has no shared constructor (pagemig never needs one); build it from a private one
    // replaced in place with MAP_SHARED | MAP_FIXED at the same address.
    let m = Mapping::anonymous(len).unwrap();
    // SAFETY: replaces exactly the range that `m` owns; `m` unmaps it on drop as before.
    let p = unsafe {
        libc::mmap(
            m.as_ptr() as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, m.as_ptr() as usize);
    m
}

#[test]
fn victim_entry() {
    if let Ok(mode) = std::env::var("PAGEMIG_VICTIM") {
        run_victim(&mode);
    }
}

#[test]
fn another_process_keeps_every_write_while_it_moves_back_and_forth() {
    let Some((_, nodes)) = multi_node("another_process_keeps_every_write") else {
        return;
    };
    let victim = Victim::spawn("writer", 4096, nodes[0]);
    let (start, len) = (victim.start, victim.len);
    let mut plans = vec![Plan::serial(512), Plan::parallel(all_cpus(), 128)];
    let mut stalled = Plan::parallel(all_cpus(), 1024);
    stalled.max_stall = Some(Duration::from_millis(2));
    plans.push(stalled);
    for round in 0..6 {
        let to = nodes[(round + 1) % nodes.len()];
        let r = migrate(
            &range_request(victim.pid(), start, len, to),
            &plans[round % plans.len()],
        );
        assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
        assert_on(victim.pid(), start, len, to);
    }
    assert!(
        victim.finish(),
        "the victim lost a write (see its output above)"
    );
}

#[test]
fn shared_pages_need_move_all() {
    let Some((_, nodes)) = multi_node("shared_pages_need_move_all") else {
        return;
    };
    let victim = Victim::spawn("shared", 64, nodes[0]);
    let req = range_request(victim.pid(), victim.start, victim.len, nodes[1]);
    let r = migrate(&req, &Plan::serial(64));
    // Skipped as asked (no --all), not failed.
    assert_eq!(
        r.pages_skipped.get(&SkipReason::Shared),
        Some(&64),
        "{r:#?}"
    );
    assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
    assert_eq!(r.pages_moved, 0);
    let mut plan = Plan::serial(64);
    plan.move_all = true;
    let r = migrate(&req, &plan);
    assert_eq!(r.pages_moved, 64, "{r:#?}");
    assert!(victim.finish());
}

#[test]
fn a_process_that_exits_mid_migration_is_reported_cleanly() {
    let Some((_, nodes)) = multi_node("a_process_that_exits_mid_migration") else {
        return;
    };
    // Built first, so that the migration starts as soon after the victim as it always did.
    let migrator = Migrator::new().unwrap();
    let mut victim = Victim::spawn("writer", 8192, nodes[0]);
    let req = range_request(victim.pid(), victim.start, victim.len, nodes[1]);
    let pid = victim.child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let result = migrate_as(&migrator, &req, &Plan::parallel(all_cpus(), 64));
    killer.join().unwrap();
    let _ = victim.child.wait();
    match result {
        Ok(r) => {
            assert!(
                r.pages_moved + r.pages_already_on_target + r.pages_not_moved()
                    == r.pages_requested,
                "{r:#?}"
            );
            eprintln!(
                "exit mid-migration: moved {} of {}, process_exited={}",
                r.pages_moved, r.pages_requested, r.process_exited
            );
            if r.pages_moved < r.pages_requested {
                assert!(r.process_exited, "{r:#?}");
            }
        }
        Err(MigrateError::NoSuchProcess { .. }) => {
            eprintln!("exit mid-migration: gone before the scan")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    // Once it is gone, the error says so.
    let err = migrate_as(&migrator, &req, &Plan::serial(64)).unwrap_err();
    assert!(matches!(err, MigrateError::NoSuchProcess { .. }), "{err}");
}

#[test]
fn a_full_target_node_leaves_pages_behind_intact() {
    let Some((topo, _)) = multi_node("a_full_target_node") else {
        return;
    };
    let Some(small) = topo.nodes.iter().find(|n| n.is_memory_only()) else {
        skip(
            "a_full_target_node",
            "needs a memory-only node (the CXL-like guest shape)",
        );
        return;
    };
    let home = cpu_nodes(&topo)[0];
    let free = topo.node(small.id).unwrap().mem_free as usize;
    let pages = (free + (64 << 20)) / PAGE;
    let m = filled(pages, home, 4);
    let sum = checksum(m.as_slice());
    let r = migrate(
        &range_request(Process::Current, m.as_ptr() as usize, m.len(), small.id),
        &Plan::parallel(all_cpus(), 4096),
    );
    eprintln!(
        "full target: moved {}, failed {:?}",
        r.pages_moved, r.pages_failed
    );
    assert!(r.pages_moved > 0, "{r:#?}");
    assert!(
        r.pages_failed
            .get(&FailureCause::NoMemory)
            .copied()
            .unwrap_or(0)
            > 0,
        "{r:#?}"
    );
    assert_eq!(
        r.pages_left_by_node.get(&home).copied(),
        Some(r.pages_not_moved()),
        "{r:#?}"
    );
    assert_eq!(checksum(m.as_slice()), sum, "contents changed");
}

/// Registers `len` bytes at `ptr` as an io_uring fixed buffer: the kernel pins those pages for
/// long-term DMA, which is what makes pages unmovable in practice (RDMA and VFIO pin the same
/// way). Returns the ring, whose closing unpins them; `None` where io_uring is not available.
fn pin_with_io_uring(ptr: usize, len: usize) -> Option<libc::c_int> {
    let mut params = [0u8; 120]; // struct io_uring_params
    // SAFETY: io_uring_setup writes into `params`, 120 bytes as the kernel's struct.
    let fd =
        unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) } as libc::c_int;
    if fd < 0 {
        return None;
    }
    let iov = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: IORING_REGISTER_BUFFERS (0) reads one iovec; the range lies in a live mapping of
    // the caller, which stays mapped until the ring is closed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            0,
            &iov as *const libc::iovec,
            1,
        )
    };
    (rc == 0).then_some(fd)
}

#[test]
fn pinned_pages_are_reported_and_the_rest_moves() {
    let Some((_, nodes)) = multi_node("pinned_pages_are_reported") else {
        return;
    };
    let m = filled(256, nodes[0], 5);
    let start = m.as_ptr() as usize;
    // Pin 8 pages in the middle of the range.
    let Some(ring) = pin_with_io_uring(start + 100 * PAGE, 8 * PAGE) else {
        skip("pinned_pages", "io_uring is not available in this kernel");
        return;
    };
    let sum = checksum(m.as_slice());
    let r = migrate(
        &range_request(Process::Current, start, m.len(), nodes[1]),
        &Plan::parallel(all_cpus(), 64),
    );
    eprintln!(
        "pinned: moved {}, failed {:?}",
        r.pages_moved, r.pages_failed
    );
    assert_eq!(r.pages_failed.get(&FailureCause::Busy), Some(&8), "{r:#?}");
    assert_eq!(r.pages_moved, 248, "{r:#?}");
    assert_eq!(checksum(m.as_slice()), sum);
    // SAFETY: closing the ring unpins the pages.
    unsafe { libc::close(ring) };
}

// ---- the pagemig command, as a user runs it ----

fn pagemig_bin() -> String {
    std::env::var("PAGEMIG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pagemig").to_owned())
}

fn pagemig(args: &[&str]) -> Output {
    Command::new(pagemig_bin()).args(args).output().unwrap()
}

#[test]
fn cli_migrate_stat_and_errors() {
    let Some((_, nodes)) = multi_node("cli_migrate_stat_and_errors") else {
        return;
    };
    let victim = Victim::spawn("writer", 2048, nodes[0]);
    let pid = victim.child.id().to_string();
    let range = format!("{:#x}-{:#x}", victim.start, victim.start + victim.len);
    let to = nodes[1].to_string();

    let o = pagemig(&[
        "migrate",
        "--pid",
        &pid,
        "--to",
        &to,
        "--range",
        &range,
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json[0]["pages_moved"], 2048, "{json}");
    assert_on(victim.pid(), victim.start, victim.len, nodes[1]);

    let o = pagemig(&["stat", "--pid", &pid, "--json"]);
    let areas: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let area = areas
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["area"]["start"].as_u64() == Some(victim.start as u64))
        .unwrap();
    assert_eq!(area["bytes_per_node"][&to], (2048 * PAGE) as u64, "{area}");
    let o = pagemig(&["stat", "--pid", &pid]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("node {to}")));

    // The whole process, with --max-stall, back to the first node: file pages shared with
    // other processes (this binary's, mapped by the test too) are skipped without --all, pages
    // never written are nothing to move: neither is a failure, so the exit status is 0
    // (`shared_pages_need_move_all` counts the skipped shared pages).
    let o = pagemig(&[
        "migrate",
        "--pid",
        &pid,
        "--to",
        &nodes[0].to_string(),
        "--max-stall",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("longest"), "{stdout}");
    assert_on(victim.pid(), victim.start, victim.len, nodes[0]);
    assert!(victim.finish());

    let cases: &[(&[&str], &str)] = &[
        (
            &["migrate", "--pid", "999999", "--to", "0"],
            "process 999999 does not exist",
        ),
        (
            &["migrate", "--pid", "1", "--to", "9"],
            "node 9 does not exist or is offline",
        ),
        (
            &["migrate", "--pid", "1", "--to", "0", "--mapping", "no-such"],
            "no mapping of process 1 matches \"no-such\"",
        ),
        (
            &[
                "migrate",
                "--pid",
                "1",
                "--to",
                "0",
                "--range",
                "0x2000-0x1000",
            ],
            "the end is not after the start",
        ),
        (
            &["migrate", "--pid", "1", "--to", "0", "--from", "0-x"],
            "bad list \"0-x\"",
        ),
    ];
    for (args, want) in cases {
        let o = pagemig(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// Where the kernel path's thread check tries half as many threads, a model read from a file
/// learns both counts' measured figures, and the next plan starts from them.
#[test]
fn cli_migrate_teaches_the_model_its_thread_check() {
    use pagemig::policy::{CostModel, Effort, KernelPoint, MachineId};
    let test = "cli_migrate_teaches_the_model_its_thread_check";
    let Some((topo, nodes)) = multi_node(test) else {
        return;
    };
    if all_cpus().len() < 2 {
        return skip(test, "the thread check needs 2 usable CPUs");
    }
    // Two threads predicted far faster than any machine, one thread far slower: the plan takes
    // two, which run more than 10% under their prediction, so one is tried.
    let point = |threads, bytes, gbps| KernelPoint {
        threads,
        bytes,
        gbps,
    };
    let model = CostModel {
        version: CostModel::VERSION,
        machine: MachineId::of(&topo),
        kernel: String::new(),
        created_unix: 0,
        effort: Effort::Builtin,
        copy: Vec::new(),
        kernel_path: [1 << 20, 1 << 30]
            .into_iter()
            .flat_map(|b| [point(1, b, 0.001), point(2, b, 1000.0)])
            .collect(),
        saturation: Vec::new(),
        observed: Vec::new(),
        observed_kernel: Vec::new(),
        pool_handoff_us: None,
    };
    let path = std::env::temp_dir().join(format!("pagemig-model-{}.json", std::process::id()));
    model.save(&path).unwrap();
    let pages = 2048;
    let victim = Victim::spawn("writer", pages, nodes[0]);
    let o = pagemig(&[
        "migrate",
        "--pid",
        &victim.child.id().to_string(),
        "--to",
        &nodes[1].to_string(),
        "--range",
        &format!("{:#x}-{:#x}", victim.start, victim.start + victim.len),
        "--batch",
        "16",
        "--model",
        path.to_str().unwrap(),
        "--json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let report = json(&o);
    let calls = &report[0]["calls"];
    assert_eq!(calls["threads"], 2, "{report}");
    let tried: Vec<u64> = calls["thread_gbps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_u64().unwrap())
        .collect();
    assert_eq!(tried, [2, 1], "{report}");
    assert!(err.contains("learned 2 move_pages figure(s)"), "{err}");
    let learned = CostModel::load(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let counts: Vec<usize> = learned.observed_kernel.iter().map(|p| p.threads).collect();
    assert_eq!(counts, [2, 1], "{learned:?}");
    let bytes = (pages * PAGE) as u64;
    assert!(learned.observed_kernel.iter().all(|p| p.bytes == bytes));
    assert!(
        learned.predict_kernel(2, bytes).unwrap() < 1000.0,
        "the next plan starts from what was measured"
    );
    assert!(victim.finish(), "the victim lost a write");
}

#[test]
fn cli_without_permission_explains_why() {
    let Some(_) = multi_node("cli_without_permission_explains_why") else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // As nobody, pid 1 (root's init) may not be read or moved.
    let o = Command::new(pagemig_bin())
        .args(["migrate", "--pid", "1", "--to", "0"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no permission") && err.contains("CAP_SYS_NICE"),
        "{err}"
    );
}

#[test]
fn cli_bench_migrate_kernel_table() {
    let Some(_) = multi_node("cli_bench_migrate_kernel_table") else {
        return;
    };
    let o = pagemig(&[
        "bench",
        "migrate",
        "--path",
        "kernel",
        "--quick",
        "--page-size",
        "4k,2m",
        "--pages",
        "1,8",
        "--reps",
        "1",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tables = json["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "{json}");
    for t in tables {
        assert_eq!(t["columns"][0], "vanilla");
        assert_eq!(t["columns"][1], "mt_1");
        let columns = t["columns"].as_array().unwrap();
        assert_eq!(columns[columns.len() - 2], "auto");
        assert_eq!(columns.last().unwrap(), "preload");
        for row in t["rows"].as_array().unwrap() {
            for cell in row["cells"].as_array().unwrap() {
                assert!(cell["median"].as_f64().unwrap() > 0.0, "{row}");
            }
        }
    }
    assert!(
        !json["notes"].to_string().contains("did not reach"),
        "{}",
        json["notes"]
    );
}

#[test]
fn cli_bench_migrate_remap_between_nodes() {
    let Some(_) = multi_node("cli_bench_migrate_remap_between_nodes") else {
        return;
    };
    let o = pagemig(&[
        "bench",
        "migrate",
        "--path",
        "remap",
        "--quick",
        "--page-size",
        "4k,2m",
        "--pages",
        "1,8",
        "--reps",
        "1",
        "--threads",
        "1,2",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        json["tables"][0]["columns"],
        serde_json::json!(["vanilla", "mt_1", "mt_2", "auto", "copy"])
    );
    assert_eq!(
        json["phases"].as_array().unwrap().len(),
        2 * 2 * 3,
        "rows x (mt_1, mt_2, auto)"
    );
    assert!(
        !json["notes"].to_string().contains("did not reach"),
        "{}",
        json["notes"]
    );
}

// ---- who pays: --charge target ----

/// A cgroup v2 directory made for one test, removed when dropped (after its processes exit).
struct TestCgroup {
    dir: std::path::PathBuf,
    path: String,
}

impl TestCgroup {
    fn new(test: &str) -> Option<TestCgroup> {
        let root = match pagemig::cgroup::mount_point() {
            Ok(r) => r,
            Err(e) => {
                skip(test, &e.to_string());
                return None;
            }
        };
        let name = format!("pagemig-{test}-{}", std::process::id());
        let dir = root.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            skip(test, &format!("cannot create {}: {e}", dir.display()));
            return None;
        }
        Some(TestCgroup {
            dir,
            path: format!("/{name}"),
        })
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn cli_charge_target_bills_the_target_cgroup() {
    let test = "cli_charge_target_bills_the_target_cgroup";
    let Some((_, nodes)) = multi_node(test) else {
        return;
    };
    let Some(cg) = TestCgroup::new(test) else {
        return;
    };
    let victim = Victim::spawn("writer", 8192, nodes[0]);
    cg.add(victim.child.id());
    let pid = victim.child.id().to_string();
    for (charge, to) in [("target", nodes[1]), ("caller", nodes[0])] {
        let o = pagemig(&[
            "migrate",
            "--pid",
            &pid,
            "--to",
            &to.to_string(),
            "--mapping",
            "anonymous",
            "--charge",
            charge,
            "--best-effort",
            "--json",
            "--threads",
            "2",
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r = &json(&o)[0];
        assert!(r["pages_moved"].as_u64().unwrap() >= 8192, "{r}");
        let c = &r["charged_to"];
        assert_eq!(c["to"], charge, "{r}");
        let used_ms = (c["usage_after_usec"].as_u64().unwrap()
            - c["usage_before_usec"].as_u64().unwrap()) as f64
            / 1e3;
        let calls = &r["calls"];
        let threads: Vec<f64> = calls["thread_cpu_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let cpu_ms = calls["cpu_time_ms"].as_f64().unwrap();
        let move_ms = r["phases"]["move_ms"].as_f64().unwrap();
        // The thread clocks' own bounds: one entry per thread, each no more than the wall time
        // of the move phase, summing to the total.
        assert_eq!(
            threads.len() as u64,
            calls["threads"].as_u64().unwrap(),
            "{r}"
        );
        assert!(
            threads.iter().all(|&t| t > 0.0 && t <= move_ms + 1.0),
            "{r}"
        );
        assert!((threads.iter().sum::<f64>() - cpu_ms).abs() < 0.01, "{r}");
        if charge == "target" {
            assert_eq!(c["cgroup"], cg.path.as_str(), "{r}");
            // The helper's threads ran in the victim's cgroup: it paid at least their time.
            assert!(
                used_ms >= cpu_ms * 0.9,
                "cgroup used {used_ms} ms, threads {cpu_ms} ms: {r}"
            );
            // The helper process's whole time is reported too: its threads' calls are part of
            // it, and the cgroup paid for all of it (the report's figures add up).
            let helper_ms = calls["helper_cpu_ms"].as_f64().unwrap();
            assert!(helper_ms >= cpu_ms * 0.99, "helper {helper_ms} ms: {r}");
            assert!(
                used_ms >= helper_ms * 0.9,
                "cgroup used {used_ms} ms, helper {helper_ms} ms: {r}"
            );
        } else {
            assert!(calls["helper_cpu_ms"].is_null(), "{r}");
            let caller = pagemig::cgroup::Cgroup::of(Process::Current).unwrap();
            assert_eq!(c["cgroup"], caller.path.as_str(), "{r}");
        }
    }
    assert!(victim.finish(), "the victim lost a write");
}

#[test]
fn cli_charge_target_refuses_a_cgroup_it_cannot_enter() {
    let test = "cli_charge_target_refuses_a_cgroup_it_cannot_enter";
    let Some((_, nodes)) = multi_node(test) else {
        return;
    };
    let Some(cg) = TestCgroup::new(test) else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // nobody may move its own process's pages, but not write root's cgroup.procs.
    let victim = Victim::spawn_as("writer", 1024, nodes[0], Some(65534));
    cg.add(victim.child.id());
    let o = Command::new(pagemig_bin())
        .args([
            "migrate",
            "--pid",
            &victim.child.id().to_string(),
            "--to",
            &nodes[1].to_string(),
        ])
        .args(["--charge", "target"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "cannot place a helper process in cgroup {}",
            cg.path
        )) && err.contains("nothing was moved")
            && err.contains("ermission denied"),
        "{err}"
    );
    assert_on(victim.pid(), victim.start, victim.len, nodes[0]);
    assert!(victim.finish());
}
