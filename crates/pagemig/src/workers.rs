//! The one set of long-lived worker threads, each pinned to one CPU, that every parallel part of
//! pagemig runs on: the copy [`Pool`](crate::copy::Pool), the [`Offload`](crate::copy::Offload)
//! engine and the kernel path's `move_pages` calls. A worker starts the first time its CPU is
//! asked for (no thread per call) and is joined when the [`Workers`] is dropped; a CPU that
//! cannot be pinned is an error ([`WorkerError::Pin`]), never a silent unpinned thread.
//!
//! The caller of [`Workers::run`] runs the (first) job of its own CPU itself, pinned there: one
//! hand-off fewer (on a 2-CPU VM, 256 KiB copies over two workers ran at 11-12 GB/s, over the
//! caller and one worker at 16-19).
//!
//! Deadlock rule: a job must not wait for a job queued behind it on its own worker.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::sys::{self, SysError};
use crate::topology::CpuId;

/// How long a worker waiting for its next job, or a caller waiting for workers, polls before it
/// sleeps: waking a sleeping thread costs tens of microseconds on VMs (an IPI to a halted vCPU),
/// more than copying a small batch, and migrations come in bursts.
const SPIN: Duration = Duration::from_micros(50);

thread_local! {
    /// Set by a worker's job: the worker sleeps right after it instead of polling.
    static SLEEP_AFTER_JOB: Cell<bool> = const { Cell::new(false) };
}

/// A job as a worker runs it.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why work could not be run on the workers.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker thread could not be pinned to its CPU (offline, or outside this process's
    /// affinity mask or cpuset).
    #[error("cannot pin a worker thread to cpu {cpu}")]
    Pin {
        /// The CPU.
        cpu: CpuId,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The OS refused to start a worker thread.
    #[error("cannot start a worker thread for cpu {cpu}")]
    Spawn {
        /// The CPU.
        cpu: CpuId,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A job panicked; the worker caught it and goes on.
    #[error("job {job} (on cpu {cpu}) panicked: {message}")]
    Panicked {
        /// Index of the job in the call.
        job: usize,
        /// The worker's CPU.
        cpu: CpuId,
        /// The panic message.
        message: String,
    },
    /// A worker thread has stopped, so its job did not run.
    #[error("the worker of cpu {cpu} has stopped; job {job} did not run")]
    Stopped {
        /// Index of the job in the call.
        job: usize,
        /// The worker's CPU.
        cpu: CpuId,
    },
}

struct Worker {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

/// Long-lived worker threads, one per CPU asked for (a CPU listed `n` times in one call gets `n`
/// workers), each pinned to its CPU. Create one per program and share it (`Arc<Workers>`).
///
/// ```
/// use pagemig::workers::Workers;
/// let workers = Workers::new();
/// let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
/// let data = vec![1u64, 2, 3, 4];
/// // Job i runs on cpus[i] (on its worker, or on this thread where it runs there) and may
/// // borrow from the caller.
/// let sums = workers.run(&cpus, |i| data.iter().sum::<u64>() * i as u64).unwrap();
/// assert_eq!(sums[cpus.len() - 1], 10 * (cpus.len() as u64 - 1));
/// ```
#[derive(Default)]
pub struct Workers {
    /// `by_cpu[c][n]`: the `n`-th worker of CPU `c`.
    by_cpu: Mutex<Vec<Vec<Worker>>>,
}

impl Workers {
    /// No workers yet: each starts the first time its CPU is asked for.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the workers a call on `cpus` would use, where not started yet, so that a CPU that
    /// cannot be pinned is found before any work is handed out.
    pub fn start(&self, cpus: &[CpuId]) -> Result<(), WorkerError> {
        let mut workers = lock(&self.by_cpu);
        let mut seen = [0; 16];
        for (i, &cpu) in cpus.iter().enumerate() {
            started(&mut workers, cpu, nth(&mut seen, cpus, i))?;
        }
        Ok(())
    }

    /// Runs `f(i)` on the CPU `cpus[i]` for every `i`, on that CPU's worker (started if not yet)
    /// or, for the first job of the CPU the calling thread runs on, on the calling thread pinned
    /// there for the job; returns the results in that order once every job has finished. `f` may
    /// borrow from the caller. A job that panics does not stop the others; the first panic is
    /// returned as [`WorkerError::Panicked`] after all have finished.
    pub fn run<R, F>(&self, cpus: &[CpuId], f: F) -> Result<Vec<R>, WorkerError>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        self.run_jobs(cpus, f, false)
    }

    /// As [`Workers::run`], for a caller that changes its address space right after (`mremap`):
    /// where the calling thread takes a share, the workers sleep as soon as their job is done,
    /// so that most TLB flushes skip their CPUs (not those of an `mremap` that moves page
    /// tables: the kernel interrupts a sleeping CPU for those too); the caller's own share hides
    /// the cost of waking them next time (without one, they poll as usual).
    pub fn run_then_sleep<R, F>(&self, cpus: &[CpuId], f: F) -> Result<Vec<R>, WorkerError>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        self.run_jobs(cpus, f, true)
    }

    fn run_jobs<R, F>(&self, cpus: &[CpuId], f: F, sleep_after: bool) -> Result<Vec<R>, WorkerError>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        let slots: Vec<Mutex<Option<std::thread::Result<R>>>> =
            cpus.iter().map(|_| Mutex::new(None)).collect();
        let latch = Arc::new(Latch {
            left: AtomicUsize::new(cpus.len()),
            caller: std::thread::current(),
        });
        let mut failed = None;
        // The job of the CPU this thread is on, which it runs itself, pinned there.
        let here = sys::current_cpu();
        let own = cpus
            .iter()
            .position(|&c| c == here)
            .and_then(|i| sys::Pinned::here(here).ok().map(|pinned| (i, pinned)));
        let sleep = sleep_after && own.is_some();
        {
            // Waits for every job handed out, also if something below panics.
            let _wait = Wait(&latch);
            let mut workers = lock(&self.by_cpu);
            let mut seen = [0; 16];
            for (i, &cpu) in cpus.iter().enumerate() {
                if own.as_ref().is_some_and(|o| o.0 == i) {
                    continue;
                }
                let (f, slot, done) = (&f, &slots[i], Arc::clone(&latch));
                let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
                    let result = catch_unwind(AssertUnwindSafe(|| f(i)));
                    *lock(slot) = Some(result);
                    SLEEP_AFTER_JOB.set(sleep);
                    done.count_down();
                });
                // SAFETY: the job borrows `f` and `slots`, which live until this function
                // returns; `_wait` does not let it return (nor unwind) before every job handed
                // out has counted the latch down, which is each job's last use of those borrows
                // (a panic in `f` is caught before it), and a job that is not handed out is
                // dropped here, counted down, without running.
                let job: Job = unsafe { std::mem::transmute::<_, Job>(job) };
                let sent = started(&mut workers, cpu, nth(&mut seen, cpus, i)).and_then(|w| {
                    w.jobs
                        .send(job)
                        .map_err(|_| WorkerError::Stopped { job: i, cpu })
                });
                if let Err(e) = sent {
                    failed.get_or_insert(e);
                    latch.count_down();
                }
            }
            drop(workers);
            if let Some((i, pinned)) = own {
                *lock(&slots[i]) = Some(catch_unwind(AssertUnwindSafe(|| f(i))));
                drop(pinned);
                latch.count_down();
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let results = slots.into_iter().zip(cpus).enumerate();
        let results = results.map(|(job, (slot, &cpu))| {
            match slot.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some(Ok(r)) => Ok(r),
                Some(Err(panic)) => Err(WorkerError::Panicked {
                    job,
                    cpu,
                    message: panic_message(&*panic),
                }),
                None => Err(WorkerError::Stopped { job, cpu }),
            }
        });
        results.collect()
    }

    /// Hands `job` to the (first) worker of `cpu`, starting it if needed, and returns at once.
    /// A panic in the job is caught and dropped: the job reports its own outcome.
    pub fn post(&self, cpu: CpuId, job: impl FnOnce() + Send + 'static) -> Result<(), WorkerError> {
        let mut workers = lock(&self.by_cpu);
        started(&mut workers, cpu, 0)?
            .jobs
            .send(Box::new(job))
            .map_err(|_| WorkerError::Stopped { job: 0, cpu })
    }
}

impl Drop for Workers {
    /// Lets every worker finish the jobs handed to it, then joins it.
    fn drop(&mut self) {
        let workers: Vec<Worker> = lock(&self.by_cpu).drain(..).flatten().collect();
        // Every worker's sender is dropped before the first join: they all finish at once.
        let threads: Vec<JoinHandle<()>> = workers.into_iter().map(|w| w.thread).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let started: Vec<(usize, usize)> = (lock(&self.by_cpu).iter().map(Vec::len).enumerate())
            .filter(|&(_, n)| n > 0)
            .collect();
        f.debug_struct("Workers")
            .field("cpu_and_workers", &started)
            .finish()
    }
}

/// Which of its CPU's workers entry `i` of `cpus` runs on: the n-th time a CPU appears in the
/// list, its n-th worker. Called for `i` = 0, 1, 2 … in order; `seen` marks the CPUs below 1024
/// met so far, so that a list without repeats costs linear time.
fn nth(seen: &mut [u64; 16], cpus: &[CpuId], i: usize) -> usize {
    let cpu = cpus[i];
    let (word, bit) = (cpu as usize / 64, 1u64 << (cpu % 64));
    match seen.get_mut(word) {
        Some(w) if *w & bit == 0 => {
            *w |= bit;
            0
        }
        _ => cpus[..i].iter().filter(|&&c| c == cpu).count(),
    }
}

/// Worker `n` of `cpu`, started and pinned first (with those before it) if not running yet.
fn started(workers: &mut Vec<Vec<Worker>>, cpu: CpuId, n: usize) -> Result<&Worker, WorkerError> {
    let at = cpu as usize;
    loop {
        let running = workers.get(at).map_or(0, Vec::len);
        if running > n {
            return Ok(&workers[at][n]);
        }
        let worker = spawn(cpu, running)?;
        // Pinned, so `cpu` is below the kernel's CPU mask size: the table stays small.
        if workers.len() <= at {
            workers.resize_with(at + 1, Vec::new);
        }
        workers[at].push(worker);
    }
}

fn spawn(cpu: CpuId, n: usize) -> Result<Worker, WorkerError> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("pagemig-cpu{cpu}.{n}"))
        .spawn(move || {
            let pinned = sys::pin_current_thread(cpu);
            let ok = pinned.is_ok();
            let _ = ready_tx.send(pinned);
            // The worker's life: run jobs until the `Workers` is dropped.
            while ok && let Ok(job) = recv_spinning(&rx) {
                // Jobs of `run` catch their own panics; a posted job's panic must not end the
                // worker.
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
        })
        .map_err(|source| WorkerError::Spawn { cpu, source })?;
    let error = match ready.recv() {
        Ok(Ok(())) => return Ok(Worker { jobs, thread }),
        Ok(Err(source)) => WorkerError::Pin { cpu, source },
        Err(_) => WorkerError::Stopped { job: 0, cpu },
    };
    let _ = thread.join();
    Err(error)
}

/// `rx.recv()`, polling for up to `SPIN` before sleeping, unless the last job asked to sleep.
fn recv_spinning<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let start = Instant::now();
    if SLEEP_AFTER_JOB.replace(false) {
        return rx.recv();
    }
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            // Yield rather than spin: a waiting caller may share a CPU with a worker.
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return rx.recv(),
        }
    }
}

/// Counts the jobs of one [`Workers::run`] call that have not finished.
struct Latch {
    left: AtomicUsize,
    caller: Thread,
}

impl Latch {
    fn count_down(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.caller.unpark();
        }
    }
}

/// Blocks, when dropped, until its latch reaches zero: polls for up to `SPIN`, then parks.
struct Wait<'a>(&'a Latch);

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let done = || self.0.left.load(Ordering::Acquire) == 0;
        let start = Instant::now();
        while !done() && start.elapsed() < SPIN {
            std::thread::yield_now();
        }
        while !done() {
            std::thread::park();
        }
    }
}

/// Locks `mutex`, also after a thread panicked while holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
