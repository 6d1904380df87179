//! A pool of long-lived copy workers pinned to chosen CPUs; batches are split by bytes.
#![allow(unsafe_code)]

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CopyEngine, CopyError, CopyOp, CopyStats};
use crate::sys::{self, SysError};
use crate::topology::CpuId;

/// Share boundaries fall on multiples of this many bytes of the batch, so that two workers never
/// write the same cache line of page-aligned destinations.
const SPLIT_ALIGN: usize = 64;

/// How long a worker waiting for its next task, or a caller waiting for workers, polls before it
/// sleeps. Waking a sleeping thread costs tens of microseconds on virtual machines (an IPI to a
/// halted vCPU), more than copying a small batch; migrations come in bursts, so a short poll
/// catches the next task or reply while the thread is still awake.
const SPIN: Duration = Duration::from_micros(50);

/// `rx.recv()`, polling for up to `SPIN` before sleeping.
fn recv_spinning<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            // Yield rather than spin: the waiting caller may share a CPU with a worker.
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return rx.recv(),
        }
    }
}

/// A piece of one op: `len` bytes at `offset` of op number `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the op in the batch.
    pub op: usize,
    /// Offset inside the op.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

/// Splits ops of lengths `lens` into `shares` contiguous byte ranges of the batch, each of about
/// the same size, with boundaries on multiples of `align` bytes. Share `i` lists its pieces in
/// batch order; a share can be empty when the batch is small. One large op (a 2 MB page) is
/// split between several shares.
pub fn split_by_bytes(lens: &[usize], shares: usize, align: usize) -> Vec<Vec<Piece>> {
    let shares = shares.max(1);
    let align = align.max(1) as u128;
    let total: usize = lens.iter().sum();
    let bound = |i: usize| -> usize {
        if i >= shares {
            total
        } else {
            let exact = total as u128 * i as u128 / shares as u128;
            (exact / align * align) as usize
        }
    };
    let mut out = vec![Vec::new(); shares];
    let mut share = 0;
    let mut op_start = 0;
    for (op, &len) in lens.iter().enumerate() {
        let op_end = op_start + len;
        let mut pos = op_start;
        while pos < op_end {
            while bound(share + 1) <= pos {
                share += 1;
            }
            let end = op_end.min(bound(share + 1));
            out[share].push(Piece {
                op,
                offset: pos - op_start,
                len: end - pos,
            });
            pos = end;
        }
        op_start = op_end;
    }
    out
}

/// One piece as raw addresses, so that it can be sent to a worker thread.
struct Chunk {
    src: usize,
    dst: usize,
    len: usize,
}

struct Task {
    chunks: Vec<Chunk>,
    /// Replies with the worker's CPU time on the task.
    done: Sender<Result<Duration, CopyError>>,
}

struct Worker {
    cpu: CpuId,
    tasks: Option<Sender<Task>>,
    thread: Option<JoinHandle<()>>,
}

/// Why a pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A pool needs at least one CPU.
    #[error("a copy pool needs at least one CPU")]
    NoCpu,
    /// The OS refused to create a thread.
    #[error("cannot start copy worker {worker}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker could not be pinned to its CPU (offline, or outside this process's cpuset).
    #[error("cannot pin copy worker {worker} to cpu {cpu}")]
    Pin {
        /// Worker index.
        worker: usize,
        /// The CPU.
        cpu: CpuId,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

/// Long-lived copy workers, each pinned to one CPU, running engine `E` on their share of a batch.
///
/// Created once and reused: starting threads per migration costs more than copying a small batch.
/// Dropping the pool stops and joins its workers.
///
/// ```
/// use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, Pool};
/// let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
/// let pool = Pool::new(CpuEngine::new(EngineKind::Memcpy).unwrap(), &cpus).unwrap();
/// let src = vec![1u8; 1 << 20];
/// let mut dst = vec![0u8; 1 << 20];
/// pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
/// assert_eq!(src, dst);
/// ```
pub struct Pool<E> {
    engine: Arc<E>,
    workers: Vec<Worker>,
}

impl<E: CopyEngine + 'static> Pool<E> {
    /// Starts one worker per entry of `cpus`, pinned to that CPU (a CPU may appear twice).
    pub fn new(engine: E, cpus: &[CpuId]) -> Result<Self, PoolError> {
        if cpus.is_empty() {
            return Err(PoolError::NoCpu);
        }
        let mut pool = Pool {
            engine: Arc::new(engine),
            workers: Vec::with_capacity(cpus.len()),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for (index, &cpu) in cpus.iter().enumerate() {
            let (tasks, rx) = mpsc::channel::<Task>();
            let engine = Arc::clone(&pool.engine);
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pagemig-copy-{index}"))
                .spawn(move || {
                    let pinned = sys::pin_current_thread(cpu);
                    let ok = pinned.is_ok();
                    let _ = ready.send((index, pinned));
                    drop(ready);
                    if ok {
                        run_worker(&*engine, index, cpu, rx);
                    }
                })
                .map_err(|source| PoolError::Spawn {
                    worker: index,
                    source,
                })?;
            pool.workers.push(Worker {
                cpu,
                tasks: Some(tasks),
                thread: Some(thread),
            });
        }
        drop(ready_tx);
        for (worker, pinned) in ready_rx {
            if let Err(source) = pinned {
                return Err(PoolError::Pin {
                    worker,
                    cpu: cpus[worker],
                    source,
                });
            }
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The CPU of each worker.
    pub fn cpus(&self) -> Vec<CpuId> {
        self.workers.iter().map(|w| w.cpu).collect()
    }

    /// The engine each worker runs.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Copies the batch with its bytes split over the first `workers` workers (at least one, at
    /// most all); the calling thread waits. A worker that panics is reported, the others finish.
    pub fn copy_with(&self, batch: &[CopyOp<'_>], workers: usize) -> Result<CopyStats, CopyError> {
        let n = workers.clamp(1, self.workers.len());
        let lens: Vec<usize> = batch.iter().map(CopyOp::len).collect();
        let shares = split_by_bytes(&lens, n, SPLIT_ALIGN);
        let (done_tx, done_rx) = mpsc::channel();
        let mut sent = 0;
        let mut worker_cpu = Duration::ZERO;
        let mut first_error = None;
        for (index, share) in shares.into_iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            let chunks = share
                .iter()
                .map(|p| {
                    let op = &batch[p.op];
                    Chunk {
                        src: op.src() as usize + p.offset,
                        dst: op.dst() as usize + p.offset,
                        len: p.len,
                    }
                })
                .collect();
            let worker = &self.workers[index];
            let task = Task {
                chunks,
                done: done_tx.clone(),
            };
            match worker.tasks.as_ref().map(|t| t.send(task)) {
                Some(Ok(())) => sent += 1,
                _ => {
                    first_error.get_or_insert(CopyError::WorkerGone {
                        worker: index,
                        cpu: worker.cpu,
                    });
                }
            }
        }
        drop(done_tx);
        // Wait for every task that was sent: until then a worker may still touch the batch's
        // memory. recv fails only once every task's sender is dropped, i.e. no task is left.
        for _ in 0..sent {
            match recv_spinning(&done_rx) {
                Ok(Ok(cpu)) => worker_cpu += cpu,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => break,
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(CopyStats {
                bytes: lens.iter().sum::<usize>() as u64,
                ops: batch.len() as u64,
                threads: sent,
                worker_cpu,
            }),
        }
    }
}

fn run_worker<E: CopyEngine>(engine: &E, index: usize, cpu: CpuId, tasks: Receiver<Task>) {
    while let Ok(task) = recv_spinning(&tasks) {
        let cpu_start = sys::thread_cpu_time();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let ops: Vec<CopyOp<'_>> = task
                .chunks
                .iter()
                // SAFETY: each chunk is a piece of a CopyOp of the batch that Pool::copy_with
                // borrows and does not return from until this task has replied; pieces of
                // different shares are disjoint, so no other worker touches these bytes.
                .map(|c| unsafe { CopyOp::from_raw(c.src as *const u8, c.dst as *mut u8, c.len) })
                .collect();
            engine
                .copy(&ops)
                .map(|_| sys::thread_cpu_time().saturating_sub(cpu_start))
        }));
        let reply = result.unwrap_or_else(|panic| {
            Err(CopyError::WorkerPanicked {
                worker: index,
                cpu,
                message: panic_message(&*panic),
            })
        });
        let _ = task.done.send(reply);
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

impl<E: CopyEngine + 'static> CopyEngine for Pool<E> {
    fn name(&self) -> String {
        format!("pool({} x {})", self.workers.len(), self.engine.name())
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy_with(batch, self.workers.len())
    }
}

impl<E> Drop for Pool<E> {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.tasks.take();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl<E> std::fmt::Debug for Pool<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "cpus",
                &self.workers.iter().map(|w| w.cpu).collect::<Vec<_>>(),
            )
            .finish()
    }
}
