//! The one set of pinned workers: jobs run on their CPUs (the calling thread's own CPU's job on
//! the calling thread, pinned for it), no thread is started per call (pool copies, offload
//! copies, the kernel path's calls), workers are joined on drop, a panicking job is an error and
//! not a hang, and a CPU that cannot be pinned is an error naming it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pagemig::Plan;
use pagemig::copy::{CopyEngine, CopyError, CopyOp, CopyStats, EngineKind, Offload, Pool};
use pagemig::migrate::MigrateError;
use pagemig::migrate::kernel;
use pagemig::process::Process;
use pagemig::sys::{self, Mapping};
use pagemig::topology::Topology;
use pagemig::workers::{WorkerError, Workers};

fn allowed() -> Vec<u32> {
    sys::allowed_cpus().unwrap().iter().collect()
}

/// Records the threads that copy.
#[derive(Default)]
struct Threads(Mutex<HashSet<ThreadId>>);

impl CopyEngine for Threads {
    fn name(&self) -> String {
        "threads".into()
    }
    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.0.lock().unwrap().insert(std::thread::current().id());
        pagemig::copy::CpuEngine::new(EngineKind::Memcpy)
            .unwrap()
            .copy(batch)
    }
}

#[test]
fn jobs_run_on_their_cpus_and_answer_in_order() {
    let workers = Workers::new();
    let cpus = allowed();
    let data: Vec<u64> = (1..=100).collect();
    let out = workers
        .run(&cpus, |i| {
            let on: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
            (i, on, data.iter().sum::<u64>())
        })
        .unwrap();
    assert_eq!(out.len(), cpus.len());
    for (i, (job, on, sum)) in out.into_iter().enumerate() {
        assert_eq!(job, i);
        assert_eq!(on, [cpus[i]], "job {i} is pinned to its CPU only");
        assert_eq!(sum, 5050);
    }
    assert!(workers.run(&[], |i| i).unwrap().is_empty());
}

#[test]
fn the_caller_runs_the_job_of_its_own_cpu_and_gets_its_mask_back() {
    let workers = Workers::new();
    let cpus = allowed();
    let before = sys::allowed_cpus().unwrap();
    let me = std::thread::current().id();
    for _ in 0..20 {
        let out = workers
            .run(&cpus, |i| {
                let on: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
                (std::thread::current().id(), on, i)
            })
            .unwrap();
        // The caller runs on one of the CPUs asked for (all it may use): one job is its own.
        let mine: Vec<_> = out.iter().filter(|o| o.0 == me).collect();
        assert_eq!(mine.len(), 1, "{out:?}");
        let (_, on, i) = mine[0];
        assert_eq!(on, &[cpus[*i]], "pinned to that job's CPU while it ran");
        assert_eq!(sys::allowed_cpus().unwrap(), before, "its mask back");
    }
}

#[test]
fn a_mask_set_from_outside_while_the_caller_runs_its_job_is_kept() {
    use rustix::thread::{CpuSet, Pid, gettid, sched_setaffinity};
    let cpus = allowed();
    if cpus.len() < 2 {
        return;
    }
    let (to_main, from_caller) = std::sync::mpsc::channel();
    let (to_caller, from_main) = std::sync::mpsc::channel::<()>();
    let caller = std::thread::spawn(move || {
        let workers = Workers::new();
        let me = std::thread::current().id();
        let from_main = Mutex::new(from_main);
        workers
            .run(&cpus, |_| {
                if std::thread::current().id() == me {
                    let on: Vec<u32> = sys::allowed_cpus().unwrap().iter().collect();
                    to_main.send((gettid().as_raw_nonzero().get(), on)).unwrap();
                    from_main.lock().unwrap().recv().unwrap();
                }
            })
            .unwrap();
        sys::allowed_cpus().unwrap()
    });
    // Another thread of the program (or `taskset -p`) moves the caller while its job runs.
    let (tid, on) = from_caller.recv().unwrap();
    let other = allowed().into_iter().find(|c| on != [*c]).unwrap();
    let mut set = CpuSet::new();
    set.set(other as usize);
    sched_setaffinity(Pid::from_raw(tid), &set).unwrap();
    to_caller.send(()).unwrap();
    let after: Vec<u32> = caller.join().unwrap().iter().collect();
    assert_eq!(
        after,
        [other],
        "the mask set meanwhile, not the one from before the call"
    );
}
#[test]
fn workers_that_sleep_after_their_job_wake_for_the_next_call() {
    let workers = Arc::new(Workers::new());
    let cpus = allowed();
    // From each CPU in turn: on every CPU, so that the caller takes a share (the workers then
    // sleep at once), and on the others only, so that it does not (they poll as usual).
    for &here in &cpus {
        let pinned = sys::Pinned::here(here).unwrap();
        let others: Vec<u32> = cpus.iter().copied().filter(|&c| c != here).collect();
        for round in 0..50u64 {
            for on in [&cpus, &others] {
                let out = workers
                    .run_then_sleep(on, |i| round * 10 + i as u64)
                    .unwrap();
                let want: Vec<u64> = (0..on.len() as u64).map(|i| round * 10 + i).collect();
                assert_eq!(out, want, "round {round} from cpu {here} on {on:?}");
            }
            // A plain call and a posted job right after find the sleepers too.
            assert_eq!(workers.run(&cpus, |i| i).unwrap().len(), cpus.len());
            let (tx, rx) = std::sync::mpsc::channel();
            workers
                .post(cpus[cpus.len() - 1], move || tx.send(round).unwrap())
                .unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(round));
        }
        drop(pinned);
    }
    // A pool's copies before a remap: every byte arrives.
    let pool = Pool::new(
        &workers,
        pagemig::copy::CpuEngine::new(EngineKind::Memcpy).unwrap(),
        &cpus,
    )
    .unwrap();
    let src: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
    for _ in 0..20 {
        let mut dst = vec![0u8; src.len()];
        pool.copy_before_remap(&[CopyOp::new(&src, &mut dst)])
            .unwrap();
        assert!(dst == src);
    }
}

#[test]
fn a_cpu_listed_twice_gets_two_workers_running_at_once() {
    let workers = Workers::new();
    let cpu = allowed()[0];
    let arrived = AtomicUsize::new(0);
    let met = workers
        .run(&[cpu, cpu], |_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 {
                if start.elapsed() > Duration::from_secs(10) {
                    return false;
                }
                std::thread::yield_now();
            }
            true
        })
        .unwrap();
    assert_eq!(met, [true, true], "both jobs waited for each other");
}

#[test]
fn no_thread_is_started_per_call() {
    let workers = Arc::new(Workers::new());
    let cpus = allowed();
    // The threads every call below may run on: each CPU's worker (a posted job runs on it), and
    // the caller for the share of the CPU it runs on.
    let on_worker = |cpu| {
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .post(cpu, move || {
                let _ = tx.send(std::thread::current().id());
            })
            .unwrap();
        rx.recv().unwrap()
    };
    let worker_threads: HashSet<ThreadId> = cpus.iter().map(|&c| on_worker(c)).collect();
    assert_eq!(worker_threads.len(), cpus.len(), "one worker per CPU");
    let caller = std::thread::current().id();
    let mut known = worker_threads.clone();
    known.insert(caller);

    // Pools made and used one after another share the workers.
    let engines: Vec<Pool<Threads>> = (0..10)
        .map(|_| Pool::new(&workers, Threads::default(), &cpus).unwrap())
        .collect();
    let src = vec![7u8; 1 << 16];
    let mut copiers = HashSet::new();
    for pool in &engines {
        for _ in 0..5 {
            let mut dst = vec![0u8; 1 << 16];
            pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
            assert_eq!(src, dst);
        }
        copiers.extend(pool.engine().0.lock().unwrap().iter().copied());
    }
    assert!(
        copiers.is_subset(&known),
        "50 copies ran on {} threads, not only on the workers and the caller",
        copiers.len()
    );

    // The kernel path's calls run on the same workers, call after call.
    let node = Topology::detect()
        .unwrap()
        .memory_nodes()
        .iter()
        .next()
        .unwrap();
    let mut m = Mapping::anonymous(64 * 4096).unwrap();
    m.as_mut_slice().fill(3);
    let pages: Vec<usize> = (0..64).map(|i| m.as_ptr() as usize + i * 4096).collect();
    let plan = Plan::parallel(cpus.clone(), 4);
    let movers = Mutex::new(HashSet::new());
    for _ in 0..20 {
        let mut status = vec![0; pages.len()];
        kernel::move_pages(
            Process::Current,
            &pages,
            &vec![node; pages.len()],
            &mut status,
            &plan,
            &workers,
            &|_| {
                movers.lock().unwrap().insert(std::thread::current().id());
            },
        )
        .unwrap();
        assert!(status.iter().all(|&s| s == node as i32));
    }
    let movers = movers.into_inner().unwrap();
    assert!(
        movers.is_subset(&known),
        "20 migrations ran on {} threads, not only on the {} workers and the caller",
        movers.len(),
        worker_threads.len()
    );

    // So do the offload engine's channels.
    let offload = Offload::new(&workers, EngineKind::Memcpy, &cpus).unwrap();
    let channels = Mutex::new(HashSet::new());
    for _ in 0..10 {
        let mut dst = vec![0u8; 1 << 20];
        let big = vec![9u8; 1 << 20];
        let stats = CopyEngine::copy(&offload, &[CopyOp::new(&big, &mut dst)]).unwrap();
        assert_eq!(dst, big);
        assert!(stats.threads >= 1);
        // A posted job runs on a worker of this set too.
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .post(cpus[0], move || {
                let _ = tx.send(std::thread::current().id());
            })
            .unwrap();
        channels.lock().unwrap().insert(rx.recv().unwrap());
    }
    assert!(channels.into_inner().unwrap().is_subset(&worker_threads));
}

/// The kernel's id of the calling thread.
fn tid() -> String {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn workers_are_joined_on_drop() {
    let workers = Arc::new(Workers::new());
    let cpus = allowed();
    let pool = Pool::new(&workers, Threads::default(), &cpus).unwrap();
    let me = tid();
    let tids = workers.run(&cpus, |_| tid()).unwrap();
    for t in &tids {
        assert!(std::path::Path::new(&format!("/proc/self/task/{t}")).exists());
    }
    // The pool keeps the set alive; the last owner's drop joins every worker.
    drop(workers);
    let src = [1u8; 100];
    let mut dst = [0u8; 100];
    pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
    drop(pool);
    // A joined thread has exited; its /proc entry goes once the kernel has released it. The
    // caller ran one job itself: it is not a worker.
    let tids: Vec<String> = tids.into_iter().filter(|t| *t != me).collect();
    let start = Instant::now();
    let left = || {
        tids.iter()
            .filter(|t| std::path::Path::new(&format!("/proc/self/task/{t}")).exists())
            .count()
    };
    while left() > 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(left(), 0, "workers still running after the drop: {tids:?}");
}

#[test]
fn a_panicking_job_is_an_error_and_the_workers_go_on() {
    let workers = Workers::new();
    let cpus = allowed();
    let finished = AtomicUsize::new(0);
    let err = workers
        .run(&cpus, |i| {
            if i == cpus.len() - 1 {
                panic!("job {i} gives up");
            }
            finished.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap_err();
    match err {
        WorkerError::Panicked { job, cpu, message } => {
            assert_eq!(job, cpus.len() - 1);
            assert_eq!(cpu, cpus[job]);
            assert!(message.contains("gives up"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The other jobs ran to the end before the call returned.
    assert_eq!(finished.load(Ordering::SeqCst), cpus.len() - 1);
    assert_eq!(workers.run(&cpus, |i| i * 2).unwrap()[0], 0);
    // A posted job's panic does not end its worker either.
    workers.post(cpus[0], || panic!("posted job")).unwrap();
    assert_eq!(workers.run(&cpus[..1], |_| 5).unwrap(), [5]);
}

#[test]
fn a_cpu_that_cannot_be_pinned_is_an_error_naming_it() {
    let workers = Workers::new();
    let allowed = sys::allowed_cpus().unwrap();
    let topology = Topology::detect().unwrap();
    let node = topology.memory_nodes().iter().next().unwrap();
    // Beyond the kernel's CPU mask, and the CPU after the last online one (offline or absent).
    let next = topology.online_cpus.iter().max().unwrap() + 1;
    for cpu in [100_000, next] {
        let err = workers.run(&[allowed.iter().next().unwrap(), cpu], |i| i);
        match err {
            Err(WorkerError::Pin { cpu: c, .. }) => assert_eq!(c, cpu),
            other => panic!("cpu {cpu}: {other:?}"),
        }
        let err = workers.start(&[cpu]).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot pin a worker thread to cpu {cpu}")),
            "{err}"
        );
        let plan = Plan::parallel(vec![cpu], 8);
        let m = Mapping::anonymous(4096).unwrap();
        let err = kernel::move_pages(
            Process::Current,
            &[m.as_ptr() as usize],
            &[node],
            &mut [0],
            &plan,
            &workers,
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, MigrateError::Workers(WorkerError::Pin { cpu: c, .. }) if c == cpu),
            "{err:?}"
        );
    }
    // The usable CPUs still work.
    let first = allowed.iter().next().unwrap();
    assert_eq!(workers.run(&[first], |i| i + 1).unwrap(), [1]);
}
