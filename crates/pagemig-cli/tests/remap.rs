//! The remap path with the kernel's own answers. Between two nodes where the machine has them,
//! node 0 to node 0 otherwise (the whole pipeline still runs: protect, copy, remap, wake).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pagemig::account::{Path, RemapFacts, Report, SkipReason, Verify};
use pagemig::copy::{CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind, Pool};
use pagemig::migrate::remap::{self, Handles, RemapError, Tools};
use pagemig::migrate::reservoir::Reservoirs;
use pagemig::migrate::scan;
use pagemig::policy::Resources;
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::sys::{self, HUGE_PAGE_SIZE, Mapping, PageNode, Uffd};
use pagemig::topology::{NodeId, NodeSet, Topology};
use pagemig::{Migrator, Plan, Request};

const PAGE: usize = 4096;

/// The two nodes to move between (the same one twice on a one-node machine), or `None` with the
/// reason printed when userfaultfd write-protect is missing.
fn setup(test: &str) -> Option<(Topology, NodeId, NodeId)> {
    if let Err(e) = Uffd::open_write_protect() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: userfaultfd write-protect unavailable: {e}"
        );
        return None;
    }
    let topo = Topology::detect().unwrap();
    let nodes: Vec<NodeId> = topo.memory_nodes().iter().collect();
    let (a, b) = (nodes[0], *nodes.get(1).unwrap_or(&nodes[0]));
    Some((topo, a, b))
}

fn pool() -> Pool<CpuEngine> {
    let cpus: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
    Pool::new(
        &Arc::default(),
        CpuEngine::new(EngineKind::Nt).unwrap(),
        &cpus,
    )
    .unwrap()
}

/// What the remap path said about a migration it made.
fn facts(r: &Report) -> &RemapFacts {
    r.remap
        .as_ref()
        .unwrap_or_else(|| panic!("not moved by the remap path: {r:#?}"))
}

fn on_node(start: usize, len: usize, step: usize) -> Vec<PageNode> {
    let pages: Vec<usize> = (start..start + len).step_by(step).collect();
    scan::query(Process::Current, &pages).unwrap()
}

#[test]
fn addresses_contents_and_untouched_pages_are_kept() {
    let Some((topo, a, b)) = setup("addresses_contents_and_untouched_pages_are_kept") else {
        return;
    };
    let pages = 2048;
    let mut m = Mapping::anonymous(pages * PAGE).unwrap();
    // Base pages: a huge page would give memory to the untouched pages around a touched one.
    m.advise_no_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    // Every 8th page is never touched.
    for i in (0..pages).filter(|i| i % 8 != 0) {
        m.as_mut_slice()[i * PAGE..(i + 1) * PAGE].fill(i as u8 ^ 0x3c);
    }
    let before = m.as_slice().to_vec();
    let start = m.as_ptr() as usize;
    let pool = pool();
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((2 << 20) / PAGE);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: None,
    };
    for to in [b, a] {
        let r = remap::migrate_mapping(&topo, &mut m, 0..pages * PAGE, to, &plan, tools).unwrap();
        assert_eq!(m.as_ptr() as usize, start);
        assert_eq!(
            r.pages_moved + r.pages_not_moved(),
            (pages - pages / 8) as u64,
            "{r:#?}"
        );
        assert_eq!(r.skipped(SkipReason::NothingToMove), (pages / 8) as u64);
        assert_eq!(r.pages_not_moved(), 0, "{r:#?}");
        assert_eq!(facts(&r).batches, 4);
        // Every instant is in a phase: the phases add up to the wall time.
        let sum = r.phases.total().as_secs_f64();
        assert!(
            sum <= r.wall.as_secs_f64() && sum >= 0.95 * r.wall.as_secs_f64(),
            "{r:#?}"
        );
        let placed = on_node(start, m.len(), PAGE);
        for (i, p) in placed.iter().enumerate() {
            let want = if i % 8 == 0 {
                PageNode::Error(sys::Errno::NOENT)
            } else {
                PageNode::Node(to)
            };
            assert_eq!(*p, want, "page {i}");
        }
        assert!(
            m.as_slice() == &before[..],
            "contents changed moving to node {to}"
        );
    }
}

/// Four writers increment counters (one per page) at pseudo-random pages and count their own
/// increments; a reader checks that no counter ever goes backwards. After many migrations back
/// and forth, every counter equals the sum of the writers' counts.
fn writers_lose_nothing(test: &str, huge: bool, reservoir: bool) {
    let Some((topo, a, b)) = setup(test) else {
        return;
    };
    let pages = if huge {
        8 * HUGE_PAGE_SIZE / PAGE
    } else {
        2048
    };
    let mut m = Mapping::anonymous_aligned(pages * PAGE, HUGE_PAGE_SIZE).unwrap();
    if huge {
        m.advise_huge_pages().unwrap();
    } else {
        m.advise_no_huge_pages().unwrap();
    }
    m.bind(&NodeSet::from_iter([a])).unwrap();
    m.populate();
    let base = m.as_ptr() as usize;
    let huge_before = procfs::anon_huge_bytes(Process::Current, base..base + pages * PAGE).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = move |i: usize| -> &'static AtomicU64 {
        // SAFETY: page i of the mapping, 8-aligned, alive until the threads are joined below.
        unsafe { &*((base + i * PAGE) as *const AtomicU64) }
    };
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut mine = vec![0u64; pages];
                let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) + 1;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % pages as u64) as usize;
                    counter(i).fetch_add(1, Ordering::Relaxed);
                    mine[i] += 1;
                }
                mine
            })
        })
        .collect();
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = vec![0u64; pages];
            let mut regressions = 0;
            while !stop.load(Ordering::Relaxed) {
                for (i, s) in seen.iter_mut().enumerate() {
                    let v = counter(i).load(Ordering::Relaxed);
                    if v < *s {
                        regressions += 1;
                    }
                    *s = v;
                }
            }
            regressions
        })
    };
    let pool = pool();
    let reservoirs = Reservoirs::new(4 * pages * PAGE);
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((2 * HUGE_PAGE_SIZE) / PAGE);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: reservoir.then_some(&reservoirs),
    };
    let mut waited = 0;
    let mut from_reservoir = 0;
    for round in 0..12 {
        let to = if round % 2 == 0 { b } else { a };
        // SAFETY: the mapping is anonymous private; the threads touch it only through atomics.
        let r = unsafe { remap::migrate_range(&topo, base, m.len(), to, &plan, tools) }.unwrap();
        assert_eq!(r.pages_moved, pages as u64, "{r:#?}");
        waited += facts(&r).writes_waited;
        from_reservoir += facts(&r).pages_from_reservoir;
    }
    if reservoir {
        // Every migration after the first two takes its pages from the other one's old pages.
        assert!(
            from_reservoir >= 10 * pages as u64,
            "{from_reservoir} pages from the reservoir"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut expected = vec![0u64; pages];
    for w in writers {
        for (e, n) in expected.iter_mut().zip(w.join().unwrap()) {
            *e += n;
        }
    }
    assert_eq!(
        reader.join().unwrap(),
        0,
        "a reader saw a counter go backwards"
    );
    for (i, &e) in expected.iter().enumerate() {
        assert_eq!(
            counter(i).load(Ordering::Relaxed),
            e,
            "page {i} lost increments"
        );
    }
    let total: u64 = expected.iter().sum();
    assert!(total > 0);
    // Writers did hit the write protection: the test exercised the waiting, not just luck.
    assert!(waited > 0, "no write waited in 12 migrations");
    let huge_after = procfs::anon_huge_bytes(Process::Current, base..base + pages * PAGE).unwrap();
    assert_eq!(huge_after, huge_before, "the size of the pages changed");
    if huge {
        assert_eq!(
            huge_before,
            (pages * PAGE) as u64,
            "the test range is not all huge pages"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {total} increments over 12 migrations node {a} <-> {b}, {waited} writes waited; AnonHugePages {} -> {} kB",
        huge_before >> 10,
        huge_after >> 10
    );
    drop(m);
}

#[test]
fn four_writers_lose_no_increment_4k() {
    writers_lose_nothing("four_writers_lose_no_increment_4k", false, false);
}

#[test]
fn four_writers_lose_no_increment_4k_with_reservoirs() {
    writers_lose_nothing(
        "four_writers_lose_no_increment_4k_with_reservoirs",
        false,
        true,
    );
}

#[test]
fn four_writers_lose_no_increment_2m_with_reservoirs() {
    writers_lose_nothing(
        "four_writers_lose_no_increment_2m_with_reservoirs",
        true,
        true,
    );
}

#[test]
fn four_writers_lose_no_increment_2m() {
    writers_lose_nothing("four_writers_lose_no_increment_2m", true, false);
}

#[test]
fn what_cannot_be_remapped_is_refused_by_name() {
    let Some((topo, a, _)) = setup("what_cannot_be_remapped_is_refused_by_name") else {
        return;
    };
    let pool = pool();
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((1 << 20) / PAGE);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: None,
    };
    // SAFETY: each call is refused before it touches anything.
    unsafe {
        assert!(matches!(
            remap::migrate_range(&topo, 4096, 4096, a, &plan, tools),
            Err(RemapError::NotMapped { .. })
        ));
        let m = Mapping::anonymous(4 * PAGE).unwrap();
        let start = m.as_ptr() as usize;
        assert!(matches!(
            remap::migrate_range(&topo, start + 1, PAGE, a, &plan, tools),
            Err(RemapError::Misaligned { .. })
        ));
        // Past the end of the usable part of a mapping: tests running beside this one may map
        // memory right after a small mapping, so the end is made inaccessible here.
        let guarded = Mapping::anonymous(64 * PAGE).unwrap();
        let start = guarded.as_ptr() as usize;
        assert_eq!(
            libc::mprotect((start + 4 * PAGE) as *mut _, 60 * PAGE, libc::PROT_NONE),
            0
        );
        let err = remap::migrate_range(&topo, start, 64 * PAGE, a, &plan, tools).unwrap_err();
        assert!(
            matches!(
                err,
                RemapError::NotMapped { .. } | RemapError::NotAnonymousPrivate { .. }
            ),
            "{err}"
        );
        let exe = procfs::read_maps(Process::Current)
            .unwrap()
            .into_iter()
            .find(|m| !m.path.is_empty() && m.path.starts_with('/'))
            .unwrap();
        let err = remap::migrate_range(&topo, exe.start, exe.end - exe.start, a, &plan, tools)
            .unwrap_err();
        assert!(
            matches!(err, RemapError::NotAnonymousPrivate { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&exe.path), "{err}");
        let mut locked = Mapping::anonymous(4 * PAGE).unwrap();
        locked.populate();
        if libc::mlock(locked.as_ptr().cast(), 4 * PAGE) == 0 {
            let start = locked.as_ptr() as usize;
            let err = remap::migrate_range(&topo, start, 4 * PAGE, a, &plan, tools).unwrap_err();
            assert!(matches!(err, RemapError::Locked { .. }), "{err}");
            assert!(err.to_string().contains("locked in memory"), "{err}");
        }
    }
}

/// Copies nothing and fails, like a device that faults.
struct Failing;

impl CopyEngine for Failing {
    fn name(&self) -> String {
        "failing".into()
    }
    fn copy(&self, _: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        Err(CopyError::Unavailable {
            engine: EngineKind::Memcpy,
            reason: "test failure".into(),
        })
    }
}

#[test]
fn a_failed_copy_leaves_every_page_usable_where_it_was() {
    let Some((topo, a, b)) = setup("a_failed_copy_leaves_every_page_usable") else {
        return;
    };
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((1 << 20) / PAGE);
    // Without reservoirs the batch is write-protected; with them its base pages are moved out
    // before the copy, and must be put back.
    let reservoirs = Reservoirs::new(1 << 20);
    for reservoirs in [None, Some(&reservoirs)] {
        let mut m = Mapping::anonymous(64 * PAGE).unwrap();
        m.bind(&NodeSet::from_iter([a])).unwrap();
        m.as_mut_slice().fill(7);
        let tools = Tools {
            engine: &Failing,
            handles: &handles,
            reservoirs,
        };
        let err = remap::migrate_mapping(&topo, &mut m, 0..64 * PAGE, b, &plan, tools).unwrap_err();
        assert!(
            matches!(err, RemapError::Copy { moved_until, .. } if moved_until == m.as_ptr() as usize),
            "{err}"
        );
        assert!(
            err.to_string().contains("the others where they were"),
            "{err}"
        );
        assert!(m.as_slice().iter().all(|&x| x == 7), "contents lost");
        // Writable again at once (a write-protected page would block this thread forever).
        m.as_mut_slice().fill(9);
        assert!(m.as_slice().iter().all(|&x| x == 9));
        assert!(
            on_node(m.as_ptr() as usize, m.len(), PAGE)
                .iter()
                .all(|p| *p == PageNode::Node(a))
        );
    }
}

/// Lets the threads waiting on `go` touch the batch, gives them time to start waiting for its
/// pages, notes whether all were still waiting, then copies (with `memcpy`) or fails like
/// [`Failing`].
struct Stall {
    go: Arc<AtomicBool>,
    finished: Arc<AtomicU64>,
    all_waited: AtomicBool,
    fail: bool,
}

impl Stall {
    fn new(finished: &Arc<AtomicU64>, fail: bool) -> Self {
        Stall {
            go: Arc::default(),
            finished: Arc::clone(finished),
            all_waited: AtomicBool::new(false),
            fail,
        }
    }
}

impl CopyEngine for Stall {
    fn name(&self) -> String {
        "stall".into()
    }
    fn copy(&self, ops: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.go.store(true, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.all_waited
            .store(self.finished.load(Ordering::SeqCst) == 0, Ordering::SeqCst);
        if self.fail {
            return Failing.copy(ops);
        }
        CpuEngine::new(EngineKind::Memcpy)?.copy(ops)
    }
}

/// A thread that, once `go` is set, writes `write` (if any) to the byte at `at`, reads it back
/// and counts itself in `finished`; returns the byte read.
fn toucher(
    go: &Arc<AtomicBool>,
    finished: &Arc<AtomicU64>,
    at: usize,
    write: Option<u8>,
) -> std::thread::JoinHandle<u8> {
    let (go, finished) = (Arc::clone(go), Arc::clone(finished));
    std::thread::spawn(move || {
        while !go.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        let at = at as *mut u8;
        // SAFETY: a byte of a mapping that outlives this thread (the tests join it first); the
        // migration accepts other threads' raw accesses.
        let seen = unsafe {
            if let Some(w) = write {
                at.write_volatile(w);
            }
            at.read_volatile()
        };
        finished.fetch_add(1, Ordering::SeqCst);
        seen
    })
}

/// Waits up to 5 s for `n` threads to count themselves in `finished`; returns how many did.
fn wait_for(finished: &AtomicU64, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while finished.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    finished.load(Ordering::SeqCst)
}

/// `len` bytes of base pages on node `node`, 2 MB-aligned, every byte 7.
fn sevens(len: usize, node: NodeId) -> Mapping {
    let mut m = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE).unwrap();
    m.advise_no_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([node])).unwrap();
    m.as_mut_slice().fill(7);
    m
}

/// With reservoirs, base pages are moved out before the copy and every access to the batch
/// waits; when the copy fails, the pages go back and the threads that waited must be let go
/// (after the pages are back the range is no longer registered, so unregistering it wakes
/// nobody).
#[test]
fn a_failed_copy_lets_go_of_the_threads_waiting_for_moved_out_pages() {
    let Some((topo, a, b)) = setup("a_failed_copy_lets_go_of_waiting_threads") else {
        return;
    };
    let handles = Handles::open().unwrap();
    let reservoirs = Reservoirs::new(1 << 20);
    let plan = Plan::remap((1 << 20) / PAGE);
    let len = 64 * PAGE;
    let m = sevens(len, a);
    let base = m.as_ptr() as usize;
    let finished = Arc::new(AtomicU64::new(0));
    let engine = Stall::new(&finished, true);
    let reader = toucher(&engine.go, &finished, base + 5 * PAGE, None);
    let writer = toucher(&engine.go, &finished, base + 9 * PAGE, Some(9));
    let tools = Tools {
        engine: &engine,
        handles: &handles,
        reservoirs: Some(&reservoirs),
    };
    // SAFETY: `m` is anonymous private memory; the threads touch it only through raw pointers.
    let err = unsafe { remap::migrate_range(&topo, base, len, b, &plan, tools) }.unwrap_err();
    assert!(matches!(err, RemapError::Copy { .. }), "{err}");
    let let_go = wait_for(&finished, 2);
    // Closing the userfaultfd releases any thread still waiting, so that the test can end.
    drop(handles);
    assert_eq!(reader.join().unwrap(), 7, "the reader saw other bytes");
    assert_eq!(writer.join().unwrap(), 9, "the write was lost");
    assert!(
        engine.all_waited.load(Ordering::SeqCst),
        "the threads did not wait for the moved-out pages: the test proved nothing"
    );
    assert_eq!(let_go, 2, "threads waiting for the batch were never woken");
    assert_eq!(m.as_slice()[9 * PAGE], 9);
    assert!(
        m.as_slice()
            .iter()
            .enumerate()
            .all(|(i, &x)| x == if i == 9 * PAGE { 9 } else { 7 }),
        "contents lost"
    );
}

/// A system call reading a moved-out batch (`write(2)` from a buffer in it) waits for the batch
/// like user code, where this process may handle the kernel's faults (as root), and then sends
/// the batch's bytes.
#[test]
fn a_system_call_reading_a_moved_out_batch_waits_for_it() {
    let Some((topo, a, b)) = setup("a_system_call_reading_a_moved_out_batch_waits") else {
        return;
    };
    let unprivileged = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .is_ok_and(|v| v.trim() == "1");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && !unprivileged {
        println!(
            "skipped a_system_call_reading_a_moved_out_batch_waits: kernel faults are handled only \
             as root or with vm.unprivileged_userfaultfd = 1"
        );
        return;
    }
    let handles = Handles::open().unwrap();
    let reservoirs = Reservoirs::new(1 << 20);
    let plan = Plan::remap((1 << 20) / PAGE);
    let len = 64 * PAGE;
    let m = sevens(len, a);
    let base = m.as_ptr() as usize;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let finished = Arc::new(AtomicU64::new(0));
    let engine = Stall::new(&finished, false);
    let sender = {
        let (go, finished) = (Arc::clone(&engine.go), Arc::clone(&finished));
        let (at, fd) = (base + 5 * PAGE, fds[1]);
        std::thread::spawn(move || {
            while !go.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            // SAFETY: 64 bytes of a mapping that outlives this thread (joined below).
            let sent = unsafe { libc::write(fd, at as *const libc::c_void, 64) };
            let errno = std::io::Error::last_os_error();
            finished.fetch_add(1, Ordering::SeqCst);
            (sent, errno)
        })
    };
    let tools = Tools {
        engine: &engine,
        handles: &handles,
        reservoirs: Some(&reservoirs),
    };
    // SAFETY: `m` is anonymous private memory; the other thread only hands a pointer to it to
    // the kernel.
    let r = unsafe { remap::migrate_range(&topo, base, len, b, &plan, tools) }.unwrap();
    assert_eq!(r.pages_moved, 64, "{r:#?}");
    let (sent, errno) = sender.join().unwrap();
    assert_eq!(
        sent, 64,
        "write(2) from the moved-out batch failed: {errno}"
    );
    assert!(
        engine.all_waited.load(Ordering::SeqCst),
        "the system call did not wait for the moved-out batch: the test proved nothing"
    );
    let mut got = [0u8; 64];
    // SAFETY: `got` has room for 64 bytes; the pipe holds 64.
    let read = unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), 64) };
    assert_eq!(read, 64);
    assert_eq!(got, [7; 64]);
    // SAFETY: both descriptors are this test's and closed once.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

/// A batch that is not 2 MB-aligned, with pages never touched, moved out onto a reservoir chunk
/// of stale bytes, while a reader of a never-touched page and writers of a never-touched page and
/// of a page with data wait for it: the reader sees zeros, both writes land, the stale bytes
/// show nowhere, and only the two writes count as writes that waited.
#[test]
fn an_unaligned_batch_with_holes_moved_out_keeps_every_access() {
    let Some((topo, a, b)) = setup("an_unaligned_batch_with_holes_moved_out") else {
        return;
    };
    let pages = 64;
    let len = pages * PAGE;
    let handles = Handles::open().unwrap();
    let reservoirs = Reservoirs::new(2 * len);
    let plan = Plan::remap(pages);
    let pool = pool();
    // Node b's reservoir gets a chunk of 0xAA pages: X's, moved b -> a.
    let mut x = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE).unwrap();
    x.advise_no_huge_pages().unwrap();
    x.bind(&NodeSet::from_iter([b])).unwrap();
    x.as_mut_slice().fill(0xAA);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: Some(&reservoirs),
    };
    let r = remap::migrate_mapping(&topo, &mut x, 0..len, a, &plan, tools).unwrap();
    assert_eq!(facts(&r).pages_recycled, pages as u64, "{r:#?}");
    // Y: one page past a 2 MB boundary; every 4th page never touched.
    let y = Mapping::anonymous_aligned(len + PAGE, HUGE_PAGE_SIZE).unwrap();
    y.advise_no_huge_pages().unwrap();
    y.bind(&NodeSet::from_iter([a])).unwrap();
    let base = y.as_ptr() as usize + PAGE;
    for i in (0..pages).filter(|i| i % 4 != 0) {
        // SAFETY: page i of Y's range, which nothing else touches yet.
        unsafe { std::ptr::write_bytes((base + i * PAGE) as *mut u8, 0x55, PAGE) };
    }
    let finished = Arc::new(AtomicU64::new(0));
    let engine = Stall::new(&finished, false);
    let reader = toucher(&engine.go, &finished, base + 8 * PAGE + 100, None);
    let hole_writer = toucher(&engine.go, &finished, base + 12 * PAGE + 200, Some(0x77));
    let data_writer = toucher(&engine.go, &finished, base + 13 * PAGE + 300, Some(0x66));
    let tools = Tools {
        engine: &engine,
        handles: &handles,
        reservoirs: Some(&reservoirs),
    };
    // SAFETY: Y's range is anonymous private memory; the threads touch it through raw pointers.
    let r = unsafe { remap::migrate_range(&topo, base, len, b, &plan, tools) }.unwrap();
    assert_eq!(wait_for(&finished, 3), 3, "an access was never woken");
    assert!(
        engine.all_waited.load(Ordering::SeqCst),
        "the threads did not wait for the moved-out batch: the test proved nothing"
    );
    assert_eq!(
        reader.join().unwrap(),
        0,
        "a never-touched page read stale bytes"
    );
    assert_eq!(hole_writer.join().unwrap(), 0x77);
    assert_eq!(data_writer.join().unwrap(), 0x66);
    assert_eq!(facts(&r).pages_from_reservoir, pages as u64, "{r:#?}");
    assert_eq!(facts(&r).writes_waited, 2, "{r:#?}");
    assert_eq!(r.pages_moved, (pages - pages / 4) as u64, "{r:#?}");
    assert_eq!(r.skipped(SkipReason::NothingToMove), (pages / 4) as u64);
    // SAFETY: Y's range, which no other thread touches any more.
    let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
    for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
        for (j, &byte) in page.iter().enumerate() {
            let want = match (i, j) {
                (12, 200) => 0x77,
                (13, 300) => 0x66,
                _ if i % 4 == 0 => 0,
                _ => 0x55,
            };
            assert_eq!(byte, want, "page {i}, byte {j}");
        }
    }
    let placed = on_node(base, len, PAGE);
    for (i, p) in placed.iter().enumerate() {
        if i % 4 != 0 || i == 12 {
            assert_eq!(*p, PageNode::Node(b), "page {i}");
        } else if i != 8 {
            assert!(!matches!(p, PageNode::Node(_)), "untouched page {i}: {p:?}");
        }
    }
    drop(y);
}

#[test]
fn recycled_pages_never_show_their_old_contents() {
    let Some((topo, a, b)) = setup("recycled_pages_never_show_their_old_contents") else {
        return;
    };
    let pages = 512;
    let len = pages * PAGE;
    let pool = pool();
    let reservoirs = Reservoirs::new(2 * len);
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((len) / PAGE);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: Some(&reservoirs),
    };
    let buffer = |node: NodeId| {
        let m = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE).unwrap();
        m.advise_no_huge_pages().unwrap();
        m.bind(&NodeSet::from_iter([node])).unwrap();
        m
    };
    // X's pages hold a secret; moving X a -> b leaves them in node a's reservoir.
    let mut x = buffer(a);
    x.as_mut_slice().fill(0xAA);
    let r = remap::migrate_mapping(&topo, &mut x, 0..len, b, &plan, tools).unwrap();
    assert_eq!(facts(&r).pages_recycled, pages as u64, "{r:#?}");
    // Y, with every 8th page never touched, moves b -> a on X's old pages.
    let mut y = buffer(b);
    for i in (0..pages).filter(|i| i % 8 != 0) {
        y.as_mut_slice()[i * PAGE..(i + 1) * PAGE].fill(0x55);
    }
    let r = remap::migrate_mapping(&topo, &mut y, 0..len, a, &plan, tools).unwrap();
    assert_eq!(facts(&r).pages_from_reservoir, pages as u64, "{r:#?}");
    let start = y.as_ptr() as usize;
    let placed = on_node(start, len, PAGE);
    for (i, (page, place)) in y.as_slice().chunks_exact(PAGE).zip(&placed).enumerate() {
        if i % 8 == 0 {
            assert!(
                page.iter().all(|&b| b == 0),
                "untouched page {i} shows old contents"
            );
            assert!(
                !matches!(place, PageNode::Node(_)),
                "untouched page {i} holds memory"
            );
        } else {
            assert!(
                page.iter().all(|&b| b == 0x55),
                "page {i} lost its contents"
            );
            assert_eq!(*place, PageNode::Node(a));
        }
    }
    assert!(x.as_slice().iter().all(|&b| b == 0xAA), "X changed");
}

/// Forbids userfaultfd to this process with a seccomp filter (what Docker's default profile
/// does), so that the fallback to the kernel path really happens.
fn forbid_userfaultfd() {
    // BPF: load the syscall number; if it is userfaultfd, fail with EPERM; else allow.
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_userfaultfd as u32,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: no_new_privs, then a filter program that the kernel copies during the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0);
    }
}

#[test]
fn without_userfaultfd_the_kernel_path_moves_own_memory() {
    // The filter lasts for the whole process: run in a child process, this same test binary.
    if std::env::var_os("PAGEMIG_FORBID_UFFD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "without_userfaultfd_the_kernel_path_moves_own_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PAGEMIG_FORBID_UFFD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    forbid_userfaultfd();
    assert!(Uffd::open_write_protect().is_err());
    let topo = Topology::detect().unwrap();
    let nodes: Vec<NodeId> = topo.memory_nodes().iter().collect();
    let (a, b) = (nodes[0], *nodes.get(1).unwrap_or(&nodes[0]));
    let mut m = Mapping::anonymous(64 * PAGE).unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    m.as_mut_slice().fill(3);
    let migrator = Migrator::with(topo, None, Resources::snapshot().unwrap());
    let (start, len) = (m.as_ptr() as usize, m.len());
    let moved = migrator
        .migrate(&Request::mapping(&mut m, 0..len, b))
        .unwrap();
    assert_eq!(moved.path, Path::Kernel, "{moved:#?}");
    assert!(
        moved.why.iter().any(|w| w.contains("userfaultfd")),
        "{:?}",
        moved.why
    );
    assert_eq!(
        moved.pages_moved + moved.pages_already_on_target,
        64,
        "{moved:#?}"
    );
    assert!(
        on_node(start, len, PAGE)
            .iter()
            .all(|p| *p == PageNode::Node(b))
    );
    assert!(m.as_slice().iter().all(|&x| x == 3));
}

#[test]
fn a_target_node_that_fills_up_stops_with_every_page_usable() {
    let Some((topo, a, _)) = setup("a_target_node_that_fills_up_stops") else {
        return;
    };
    let Some(small) = topo.nodes.iter().find(|n| n.is_memory_only()).map(|n| n.id) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped a_target_node_that_fills_up_stops: needs a memory-only node (the CXL-like guest shape)"
        );
        return;
    };
    let free = pagemig::topology::node_free_bytes(small).unwrap() as usize;
    let len = (free + (64 << 20)).next_multiple_of(HUGE_PAGE_SIZE);
    let mut m = Mapping::anonymous_aligned(len, HUGE_PAGE_SIZE).unwrap();
    m.advise_no_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    for (i, chunk) in m.as_mut_slice().chunks_exact_mut(PAGE).enumerate() {
        chunk.fill(i as u8);
    }
    let pool = pool();
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((16 << 20) / PAGE);
    let tools = Tools {
        engine: &pool,
        handles: &handles,
        reservoirs: None,
    };
    let start = m.as_ptr() as usize;
    let err = remap::migrate_mapping(&topo, &mut m, 0..len, small, &plan, tools).unwrap_err();
    let RemapError::NoMemory { moved_until, .. } = err else {
        panic!("expected NoMemory: {err}")
    };
    assert!(moved_until > start && moved_until < start + len, "{err}");
    let placed = on_node(start, len, PAGE);
    for (i, p) in placed.iter().enumerate() {
        let want = if start + i * PAGE < moved_until {
            small
        } else {
            a
        };
        assert_eq!(*p, PageNode::Node(want), "page {i}: {err}");
    }
    for (i, chunk) in m.as_mut_slice().chunks_exact_mut(PAGE).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "page {i} changed");
        chunk[0] = !chunk[0];
    }
}

/// Many migrations of random sub-ranges with random batch sizes, with and without reservoirs,
/// going through every ordered pair of nodes, while two writers increment counters: every
/// counter ends at the writers' total, every other byte is unchanged, pages never touched stay
/// without memory, and the pages with data are where the report says.
#[test]
fn random_sub_ranges_move_between_every_pair_of_nodes() {
    let test = "random_sub_ranges_move_between_every_pair_of_nodes";
    let Some((topo, _, _)) = setup(test) else {
        return;
    };
    let nodes: Vec<NodeId> = topo.memory_nodes().iter().collect();
    let pairs: Vec<(NodeId, NodeId)> = match nodes.len() {
        1 => vec![(nodes[0], nodes[0])],
        _ => nodes
            .iter()
            .flat_map(|&a| nodes.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
            .collect(),
    };
    // 4 MiB: two whole 2 MB page tables, and ranges that are not aligned to them.
    let pages = 1024;
    let untouched = |i: usize| i % 16 == 5;
    let seed = 0x5eed_u64 ^ pages as u64;
    let mut x = seed;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for reservoir in [false, true] {
        let mut m = Mapping::anonymous_aligned(pages * PAGE, HUGE_PAGE_SIZE).unwrap();
        m.advise_no_huge_pages().unwrap();
        m.bind(&NodeSet::from_iter([pairs[0].0])).unwrap();
        for (i, chunk) in m.as_mut_slice().chunks_exact_mut(PAGE).enumerate() {
            if !untouched(i) {
                chunk.fill(i as u8 ^ 0xa5);
                chunk[..8].fill(0);
            }
        }
        let base = m.as_ptr() as usize;
        let counter = move |i: usize| -> &'static AtomicU64 {
            // SAFETY: the first 8 bytes of page i of the mapping, alive until the writers are
            // joined below.
            unsafe { &*((base + i * PAGE) as *const AtomicU64) }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut mine = vec![0u64; pages];
                    let mut y = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    while !stop.load(Ordering::Relaxed) {
                        y ^= y << 13;
                        y ^= y >> 7;
                        y ^= y << 17;
                        let i = (y % pages as u64) as usize;
                        if !untouched(i) {
                            counter(i).fetch_add(1, Ordering::Relaxed);
                            mine[i] += 1;
                        }
                    }
                    mine
                })
            })
            .collect();
        let pool = pool();
        let reservoirs = Reservoirs::new(pages * PAGE);
        let mut outer = 0..pages;
        let mut scan = None;
        // Every ordered pair at least once; kept small, the guests emulate every instruction.
        let rounds = 2 * pairs.len().max(12);
        for round in 0..rounds {
            let (a, b) = pairs[round / 2 % pairs.len()];
            // Even rounds move a random range to `a`; odd rounds move a random part of it on to
            // `b`, so that every ordered pair of nodes is crossed.
            let (range, to) = if round % 2 == 0 {
                let first = rand(pages);
                // Sometimes whole 2 MB page tables.
                let (first, last) = if rand(3) == 0 {
                    let f = first / 512 * 512;
                    (f, (f + 512 * (1 + rand(2))).min(pages))
                } else {
                    (first, first + 1 + rand(pages - first))
                };
                outer = first..last;
                (first..last, a)
            } else {
                let first = outer.start + rand(outer.len());
                (first..first + 1 + rand(outer.end - first), b)
            };
            let handles = Handles::open().unwrap();
            let mut plan = Plan::remap(1 + rand(1024));
            let tools = Tools {
                engine: &pool,
                handles: &handles,
                reservoirs: reservoir.then_some(&reservoirs),
            };
            let start = base + range.start * PAGE;
            let len = range.len() * PAGE;
            let full = round % 4 == 1;
            let verify = if full { Verify::Full } else { Verify::Sample };
            plan.verify = verify;
            // SAFETY: the mapping is anonymous private; the writers touch it only through
            // atomics.
            let r = unsafe { remap::migrate_range(&topo, start, len, to, &plan, tools) }
                .unwrap_or_else(|e| panic!("round {round}, pages {range:?} to node {to}: {e}"));
            let holes = range.clone().filter(|&i| untouched(i)).count() as u64;
            assert_eq!(
                r.skipped(SkipReason::NothingToMove),
                holes,
                "round {round}: {r:#?}"
            );
            assert_eq!(
                r.pages_moved + r.pages_not_moved(),
                range.len() as u64 - holes,
                "{r:#?}"
            );
            assert_eq!(r.pages_not_moved(), 0, "round {round}: {r:#?}");
            assert_eq!(facts(&r).verification.mode, verify);
            scan = Some(facts(&r).scan);
            assert!(r.phases.total() <= r.wall, "{r:#?}");
            let placed = on_node(start, len, PAGE);
            for (i, p) in range.clone().zip(&placed) {
                let want = if untouched(i) {
                    PageNode::Error(sys::Errno::NOENT)
                } else {
                    PageNode::Node(to)
                };
                assert_eq!(*p, want, "round {round}: page {i} of {range:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut expected = vec![0u64; pages];
        for w in writers {
            for (e, n) in expected.iter_mut().zip(w.join().unwrap()) {
                *e += n;
            }
        }
        for (i, chunk) in m.as_slice().chunks_exact(PAGE).enumerate() {
            if untouched(i) {
                assert!(chunk.iter().all(|&b| b == 0), "untouched page {i} has data");
            } else {
                assert_eq!(counter(i).load(Ordering::Relaxed), expected[i], "page {i}");
                assert!(
                    chunk[8..].iter().all(|&b| b == i as u8 ^ 0xa5),
                    "page {i} changed"
                );
            }
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{test}: reservoirs {reservoir}, {rounds} migrations over {} node pairs, {} increments, \
             seed {seed:#x}, pages found by {scan:?} (kernel {})",
            pairs.len(),
            expected.iter().sum::<u64>(),
            pagemig::topology::kernel_release()
        );
    }
}

/// The remap path copies with whatever engine it is given: with the auto engine, its batches go
/// through auto's check of its choices (timed and judged per batch size), at no extra cost.
#[test]
fn the_auto_engine_checks_its_choices_on_the_remap_path() {
    use pagemig::copy::Copier;
    use pagemig::policy::{
        AutoEngine, CopyPoint, CostModel, Effort, MachineId, Planner, Resources,
    };
    let Some((topo, a, b)) = setup("the_auto_engine_checks_its_choices_on_the_remap_path") else {
        return;
    };
    // A made-up model (calibrating under emulation takes minutes): non-temporal stores on the
    // calling thread first, memcpy second, at every size.
    let point = |engine, gbps| CopyPoint {
        copier: Copier::Thread { engine },
        bytes: 4096,
        gbps,
        median_gbps: None,
    };
    let model = CostModel {
        version: CostModel::VERSION,
        machine: MachineId::of(&topo),
        kernel: String::new(),
        created_unix: 0,
        effort: Effort::Builtin,
        copy: vec![point(EngineKind::Nt, 9.0), point(EngineKind::Memcpy, 8.0)],
        kernel_path: Vec::new(),
        saturation: Vec::new(),
        observed: Vec::new(),
        observed_kernel: Vec::new(),
        pool_handoff_us: None,
    };
    let planner = Planner::new(&topo, Some(&model), Resources::detect().unwrap());
    let route = pagemig::copy::Route {
        from: Some(a),
        to: Some(b),
    };
    let auto = AutoEngine::new(&planner, route, &Arc::default()).unwrap();
    let pages = 2048;
    let batch = 2 << 20;
    let mut m = Mapping::anonymous(pages * PAGE).unwrap();
    m.advise_no_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    for (i, page) in m.as_mut_slice().chunks_mut(PAGE).enumerate() {
        page.fill(i as u8 ^ 0x5a);
    }
    let before = m.as_slice().to_vec();
    let handles = Handles::open().unwrap();
    let plan = Plan::remap((batch) / PAGE);
    let tools = Tools {
        engine: &auto,
        handles: &handles,
        reservoirs: None,
    };
    for to in [b, a] {
        remap::migrate_mapping(&topo, &mut m, 0..pages * PAGE, to, &plan, tools).unwrap();
        assert!(
            m.as_slice() == &before[..],
            "contents changed moving to node {to}"
        );
    }
    // 64 batches of 256 KiB, every one timed: the check measured that size.
    let checks = auto.checks();
    let at = checks
        .iter()
        .find(|c| c.bytes == batch as u64)
        .unwrap_or_else(|| panic!("no check of 256 KiB batches: {checks:?}"));
    assert!(!at.measured.is_empty(), "{at:?}");
    assert!(at.measured.iter().all(|(_, g)| *g > 0.0), "{at:?}");
}

/// The planner chooses the path: the remap path for the caller's own memory where userfaultfd
/// write-protect works, the kernel path for a process's pages or when asked; each plan says why.
#[test]
fn the_migrator_chooses_the_path_and_says_why() {
    let Some((topo, a, b)) = setup("the_migrator_chooses_the_path_and_says_why") else {
        return;
    };
    let migrator = Migrator::with(topo, None, Resources::snapshot().unwrap());
    let mut m = Mapping::anonymous(256 * PAGE).unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    m.as_mut_slice().fill(5);
    let len = m.len();

    let (scan, plan) = migrator.plan(&Request::mapping(&mut m, 0..len, b)).unwrap();
    assert_eq!(scan.bytes_to_move(), len as u64);
    assert_eq!(plan.path, Path::Remap, "{plan:#?}");
    assert!(plan.why[0].starts_with("the remap path"), "{:?}", plan.why);
    let r = migrator
        .migrate(&Request::mapping(&mut m, 0..len, b))
        .unwrap();
    assert_eq!(r.path, Path::Remap, "{r:#?}");
    assert_eq!(r.pages_moved, 256, "{r:#?}");
    assert_eq!(r.why, plan.why);
    // Scan, plan and the remap path's steps are all phases of the one wall time.
    assert!(
        !r.phases.scan.is_zero() && !r.phases.copy.is_zero(),
        "{r:#?}"
    );
    let sum = r.phases.total().as_secs_f64();
    assert!(
        sum <= r.wall.as_secs_f64() * 1.001 && sum >= 0.95 * r.wall.as_secs_f64(),
        "{r:#?}"
    );
    assert!(m.as_slice().iter().all(|&x| x == 5));

    let kernel = Request::mapping(&mut m, 0..len, a).with(pagemig::Options {
        path: pagemig::PathChoice::Kernel,
        ..pagemig::Options::default()
    });
    let (_, plan) = migrator.plan(&kernel).unwrap();
    assert_eq!(plan.path, Path::Kernel, "{plan:#?}");
    assert!(plan.why[0].contains("asked for"), "{:?}", plan.why);
    let r = migrator.migrate(&kernel).unwrap();
    assert_eq!(r.path, Path::Kernel, "{r:#?}");
    assert_eq!(r.pages_moved + r.pages_already_on_target, 256, "{r:#?}");

    let start = m.as_ptr() as usize;
    let range = start..start + len;
    let process = Request::process(Process::Current, pagemig::Selection::Ranges(vec![range]), b);
    let (_, plan) = migrator.plan(&process).unwrap();
    assert_eq!(plan.path, Path::Kernel, "{plan:#?}");
    assert!(
        plan.why[0].contains("the pages of a process"),
        "{:?}",
        plan.why
    );
}

/// `Migrator::with_reservoirs`: the front door's remap path keeps each move's old pages and
/// takes the next move's new ones from them.
#[test]
fn a_migrator_with_reservoirs_takes_new_pages_from_old_ones() {
    let Some((topo, a, b)) = setup("a_migrator_with_reservoirs_takes_new_pages_from_old_ones")
    else {
        return;
    };
    let pages = 256;
    let migrator =
        Migrator::with(topo, None, Resources::snapshot().unwrap()).with_reservoirs(4 << 20);
    let mut m = Mapping::anonymous_aligned(pages * PAGE, HUGE_PAGE_SIZE).unwrap();
    m.advise_no_huge_pages().unwrap();
    m.bind(&NodeSet::from_iter([a])).unwrap();
    for (i, page) in m.as_mut_slice().chunks_exact_mut(PAGE).enumerate() {
        page.fill(i as u8 ^ 0x5a);
    }
    let (start, len) = (m.as_ptr() as usize, m.len());
    let mut from_reservoir = 0;
    for to in [b, a, b, a] {
        let r = migrator
            .migrate(&Request::mapping(&mut m, 0..len, to))
            .unwrap();
        assert_eq!(r.path, Path::Remap, "{r:#?}");
        assert_eq!(r.pages_moved, pages as u64, "{r:#?}");
        from_reservoir += facts(&r).pages_from_reservoir;
        assert!(
            on_node(start, len, PAGE)
                .iter()
                .all(|p| *p == PageNode::Node(to))
        );
        for (i, page) in m.as_slice().chunks_exact(PAGE).enumerate() {
            assert!(
                page.iter().all(|&x| x == i as u8 ^ 0x5a),
                "page {i} moving to {to}"
            );
        }
    }
    // The first two moves allocate (one per node); the next two take the old pages back.
    assert!(
        from_reservoir >= 2 * pages as u64,
        "{from_reservoir} pages from the reservoirs"
    );
}
