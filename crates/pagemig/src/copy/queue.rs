//! The asynchronous side of the engine interface: submit a batch, poll or wait for it, with a
//! status per op. DMA engines (and the CPU [`Offload`] engine that stands in for one anywhere)
//! implement [`AsyncCopyEngine`]; [`scope`] is the safe way to use one, and
//! [`copy_and_wait`] builds the synchronous [`CopyEngine::copy`] on it.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind};
use crate::sys;
use crate::topology::CpuId;
use crate::workers::{Workers, lock};

/// What happened to one op of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStatus {
    /// Every byte was copied.
    Done,
    /// The engine failed after copying the first `copied` bytes.
    Failed {
        /// Bytes copied before the failure (from the start of the op).
        copied: usize,
        /// What the engine reported.
        reason: String,
    },
    /// The submission was cancelled before all of this op was copied: `copied` bytes were,
    /// possibly not from the start (pieces of one op may run on several channels).
    Cancelled {
        /// Bytes copied.
        copied: usize,
    },
}

/// A completed submission: one status per op, in the order of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Status of each op.
    pub ops: Vec<OpStatus>,
    /// What was copied, by whom.
    pub stats: CopyStats,
}

impl Completion {
    /// `Ok` with the stats when every op is done; otherwise the first op that is not.
    pub fn into_result(self) -> Result<CopyStats, CopyError> {
        for (op, status) in self.ops.into_iter().enumerate() {
            let (copied, reason) = match status {
                OpStatus::Done => continue,
                OpStatus::Failed { copied, reason } => (copied, reason),
                OpStatus::Cancelled { copied } => (copied, "cancelled".into()),
            };
            return Err(CopyError::OpFailed { op, copied, reason });
        }
        Ok(self.stats)
    }
}

/// A submission, as the engine that took it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// An engine that copies in the background.
pub trait AsyncCopyEngine: Send + Sync {
    /// Short name for tables and reports.
    fn name(&self) -> String;

    /// Starts copying the batch and returns at once.
    ///
    /// # Safety
    /// The memory of every op must stay valid, and nothing else may write either range or read
    /// the destination, until the ticket's completion has been returned by [`Self::poll`] or
    /// [`Self::wait`] (use [`scope`], which guarantees it).
    unsafe fn submit(&self, batch: &[CopyOp<'_>]) -> Result<Ticket, CopyError>;

    /// The completion of `ticket` if it has completed (returned once), without blocking.
    fn poll(&self, ticket: Ticket) -> Option<Completion>;

    /// Blocks until `ticket` completes and returns its completion.
    fn wait(&self, ticket: Ticket) -> Completion;

    /// Stops what has not started of `ticket`: those ops end [`OpStatus::Cancelled`]. The ticket
    /// still has to be waited for (pieces already running finish).
    fn cancel(&self, ticket: Ticket);
}

/// Submissions made inside one [`scope`].
pub struct Queue<'scope, 'env: 'scope> {
    engine: &'scope dyn AsyncCopyEngine,
    in_flight: Mutex<VecDeque<Ticket>>,
    _env: std::marker::PhantomData<&'env mut &'env ()>,
}

impl<'env> Queue<'_, 'env> {
    /// Starts copying `batch`; the ops' memory stays borrowed until the scope ends. The ops are
    /// taken: one that is copying cannot be submitted again, or copied otherwise, meanwhile
    /// (two copies writing one destination at once).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use pagemig::copy::{scope, CopyOp, EngineKind, Offload};
    /// # use pagemig::workers::Workers;
    /// # let cpu = pagemig::sys::allowed_cpus().unwrap().iter().next().unwrap();
    /// # let engine = Offload::new(&Arc::new(Workers::new()), EngineKind::Memcpy, &[cpu]).unwrap();
    /// let (src, mut dst) = (vec![1u8; 4096], vec![0u8; 4096]);
    /// scope(&engine, |q| {
    ///     let ops = vec![CopyOp::new(&src, &mut dst)];
    ///     let ticket = q.submit(ops).unwrap();
    ///     q.wait(ticket).into_result().unwrap();
    /// });
    /// assert_eq!(dst, src);
    /// ```
    ///
    /// Submitting the same ops twice does not compile:
    ///
    /// ```compile_fail,E0382
    /// # use std::sync::Arc;
    /// # use pagemig::copy::{scope, CopyOp, EngineKind, Offload};
    /// # use pagemig::workers::Workers;
    /// # let cpu = pagemig::sys::allowed_cpus().unwrap().iter().next().unwrap();
    /// # let engine = Offload::new(&Arc::new(Workers::new()), EngineKind::Memcpy, &[cpu]).unwrap();
    /// let (src, mut dst) = (vec![1u8; 4096], vec![0u8; 4096]);
    /// scope(&engine, |q| {
    ///     let ops = vec![CopyOp::new(&src, &mut dst)];
    ///     q.submit(ops).unwrap();
    ///     q.submit(ops).unwrap();
    /// });
    /// ```
    pub fn submit(&self, batch: Vec<CopyOp<'env>>) -> Result<Ticket, CopyError> {
        // SAFETY: the ops are consumed here: nothing copies or submits them again.
        unsafe { self.submit_borrowed(&batch) }
    }

    /// [`Queue::submit`] of ops the caller keeps.
    ///
    /// # Safety
    /// Nothing copies or submits any op of `batch` again until its ticket completes.
    unsafe fn submit_borrowed(&self, batch: &[CopyOp<'env>]) -> Result<Ticket, CopyError> {
        // SAFETY: the ops borrow their memory for 'env, which outlives the scope, the caller
        // keeps them from other copies, and the scope waits for every ticket before it returns.
        let ticket = unsafe { self.engine.submit(batch)? };
        lock(&self.in_flight).push_back(ticket);
        Ok(ticket)
    }

    /// The completion of `ticket` if it has completed, without blocking.
    pub fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let done = self.engine.poll(ticket)?;
        lock(&self.in_flight).retain(|&t| t != ticket);
        Some(done)
    }

    /// Blocks until `ticket` completes.
    ///
    /// # Panics
    /// If `ticket` is not in flight in this scope.
    pub fn wait(&self, ticket: Ticket) -> Completion {
        assert!(
            lock(&self.in_flight).contains(&ticket),
            "wait: the ticket is not in flight in this scope"
        );
        // In flight until the engine says it completed: where its wait panics (a device that
        // failed may still write), the scope's end waits for it again.
        let done = self.engine.wait(ticket);
        lock(&self.in_flight).retain(|&t| t != ticket);
        done
    }

    /// The oldest submission still in flight, once it has completed: completions in the order
    /// of submission.
    pub fn next_in_order(&self) -> Option<(Ticket, Completion)> {
        let mut pending = lock(&self.in_flight);
        let &oldest = pending.front()?;
        let done = self.engine.poll(oldest)?;
        pending.pop_front();
        Some((oldest, done))
    }

    /// Cancels what has not started of `ticket`.
    pub fn cancel(&self, ticket: Ticket) {
        self.engine.cancel(ticket);
    }

    /// Submissions in flight.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }
}

/// Runs `f` with a [`Queue`] on `engine`. When `f` returns (or panics), submissions still in
/// flight are cancelled and waited for: no op touches its memory after `scope` returns.
pub fn scope<'env, R>(
    engine: &dyn AsyncCopyEngine,
    f: impl for<'scope> FnOnce(&'scope Queue<'scope, 'env>) -> R,
) -> R {
    let queue = Queue {
        engine,
        in_flight: Mutex::new(VecDeque::new()),
        _env: std::marker::PhantomData,
    };
    f(&queue)
}

impl Drop for Queue<'_, '_> {
    /// Cancels and waits for the submissions still in flight, also when `f` panicked.
    fn drop(&mut self) {
        let left: Vec<Ticket> = lock(&self.in_flight).drain(..).collect();
        for &t in &left {
            self.engine.cancel(t);
        }
        for t in left {
            self.engine.wait(t);
        }
    }
}

/// A boxed engine (a DMA engine chosen at run time) copies as the engine in it.
impl CopyEngine for Box<dyn AsyncCopyEngine> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        copy_and_wait(&**self, batch)
    }
}

/// Every asynchronous engine is also a synchronous one: submit and wait.
impl<T: AsyncCopyEngine> CopyEngine for T {
    fn name(&self) -> String {
        AsyncCopyEngine::name(self)
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        copy_and_wait(self, batch)
    }
}

/// Copies a batch with an asynchronous engine and waits: the synchronous `copy` of every such
/// engine.
pub fn copy_and_wait(
    engine: &dyn AsyncCopyEngine,
    batch: &[CopyOp<'_>],
) -> Result<CopyStats, CopyError> {
    scope(engine, |q| {
        // SAFETY: `batch` stays borrowed by this call, which waits for the ticket (again at the
        // scope's end where the wait panicked), and cannot reach another thread (a `CopyOp` is
        // not `Sync`).
        let t = unsafe { q.submit_borrowed(batch)? };
        q.wait(t).into_result()
    })
}

/// Bytes per piece handed to one channel of the [`Offload`] engine.
const PIECE: usize = 256 << 10;

/// One piece of one op of one submission.
#[derive(Debug, Clone, Copy)]
struct Piece {
    ticket: u64,
    op: usize,
    src: usize,
    dst: usize,
    len: usize,
}

#[derive(Debug)]
struct Submission {
    /// Bytes copied per op.
    copied: Vec<usize>,
    lens: Vec<usize>,
    pieces_left: usize,
    cancelled: bool,
    cpu: Duration,
    channels: Vec<bool>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Piece>,
    subs: HashMap<u64, Submission>,
    next: u64,
    /// Per channel: a drain job is queued or running on its worker.
    draining: Vec<bool>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// A submission completed, or a channel stopped draining.
    done: Condvar,
}

/// The CPU stand-in for a DMA engine: copy channels on workers pinned to chosen CPUs, fed
/// through a queue, so that the caller submits and goes on with its own work. Pieces of a
/// submission start in submission order. A submission hands each idle channel's worker a job
/// that copies queued pieces until the queue is empty; a channel never holds its worker longer.
#[derive(Debug)]
pub struct Offload {
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    cpus: Vec<CpuId>,
    engine: CpuEngine,
}

impl Offload {
    /// One copy channel per CPU of `cpus`, on the (first) worker of that CPU in `workers`, each
    /// copying with an engine of `kind`.
    pub fn new(
        workers: &Arc<Workers>,
        kind: EngineKind,
        cpus: &[CpuId],
    ) -> Result<Self, CopyError> {
        let engine = CpuEngine::new(kind)?;
        if cpus.is_empty() {
            return Err(CopyError::Unavailable {
                engine: kind,
                reason: "the offload engine needs at least one CPU for its copy threads".into(),
            });
        }
        cpus.iter().try_for_each(|&cpu| workers.start(&[cpu]))?;
        let shared = Arc::new(Shared::default());
        lock(&shared.state).draining = vec![false; cpus.len()];
        Ok(Offload {
            shared,
            workers: Arc::clone(workers),
            cpus: cpus.to_vec(),
            engine,
        })
    }
}

/// One channel's job: copies queued pieces until the queue is empty.
fn drain(shared: &Shared, engine: CpuEngine, channel: usize) {
    let mut state = lock(&shared.state);
    while let Some(piece) = state.queue.pop_front() {
        let cancelled = state.subs.get(&piece.ticket).is_none_or(|s| s.cancelled);
        let mut cpu_time = Duration::ZERO;
        if !cancelled {
            drop(state);
            let started = sys::thread_cpu_time();
            // SAFETY: `submit`'s contract keeps both ranges valid, disjoint and exclusively the
            // engine's until the submission's completion is returned, which waits for this piece.
            unsafe { (engine.kernel)(piece.dst as *mut u8, piece.src as *const u8, piece.len) };
            cpu_time = sys::thread_cpu_time().saturating_sub(started);
            state = lock(&shared.state);
        }
        if let Some(sub) = state.subs.get_mut(&piece.ticket) {
            if !cancelled {
                sub.copied[piece.op] += piece.len;
                sub.cpu += cpu_time;
                sub.channels[channel] = true;
            }
            sub.pieces_left -= 1;
            if sub.pieces_left == 0 {
                shared.done.notify_all();
            }
        }
    }
    state.draining[channel] = false;
    shared.done.notify_all();
}

impl Drop for Offload {
    /// Lets the channels finish what is queued (submissions are waited for by their scope).
    fn drop(&mut self) {
        let state = lock(&self.shared.state);
        drop((self.shared.done).wait_while(state, |s| s.draining.iter().any(|&d| d)));
    }
}

fn completion(sub: Submission) -> Completion {
    let ops = sub
        .copied
        .iter()
        .zip(&sub.lens)
        .map(|(&copied, &len)| {
            if copied == len {
                OpStatus::Done
            } else {
                OpStatus::Cancelled { copied }
            }
        })
        .collect();
    Completion {
        ops,
        stats: CopyStats {
            bytes: sub.copied.iter().sum::<usize>() as u64,
            ops: sub.lens.len() as u64,
            threads: sub.channels.iter().filter(|&&c| c).count(),
            worker_cpu: sub.cpu,
        },
    }
}

impl AsyncCopyEngine for Offload {
    fn name(&self) -> String {
        format!("offload({} x {})", self.cpus.len(), self.engine.name())
    }

    unsafe fn submit(&self, batch: &[CopyOp<'_>]) -> Result<Ticket, CopyError> {
        let mut state = lock(&self.shared.state);
        let ticket = state.next;
        state.next += 1;
        let mut pieces = 0;
        for (op, o) in batch.iter().enumerate() {
            for (off, len) in o.pieces(PIECE) {
                state.queue.push_back(Piece {
                    ticket,
                    op,
                    src: o.src() as usize + off,
                    dst: o.dst() as usize + off,
                    len,
                });
                pieces += 1;
            }
        }
        state.subs.insert(
            ticket,
            Submission {
                copied: vec![0; batch.len()],
                lens: batch.iter().map(CopyOp::len).collect(),
                pieces_left: pieces,
                cancelled: false,
                cpu: Duration::ZERO,
                channels: vec![false; self.cpus.len()],
            },
        );
        let idle: Vec<usize> = (0..self.cpus.len())
            .filter(|&c| pieces > 0 && !state.draining[c])
            .collect();
        for &c in &idle {
            state.draining[c] = true;
        }
        drop(state);
        for channel in idle {
            let (shared, engine) = (Arc::clone(&self.shared), self.engine);
            let posted = self
                .workers
                .post(self.cpus[channel], move || drain(&shared, engine, channel));
            if let Err(e) = posted {
                let mut state = lock(&self.shared.state);
                state.draining[channel] = false;
                if !state.draining.iter().any(|&d| d) {
                    // No channel would copy this submission: take it back.
                    state.queue.retain(|p| p.ticket != ticket);
                    state.subs.remove(&ticket);
                    return Err(e.into());
                }
            }
        }
        Ok(Ticket(ticket))
    }

    fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let mut state = lock(&self.shared.state);
        let done = state.subs.get(&ticket.0)?.pieces_left == 0;
        done.then(|| completion(state.subs.remove(&ticket.0).expect("present")))
    }

    fn wait(&self, ticket: Ticket) -> Completion {
        let busy = |s: &mut State| s.subs.get(&ticket.0).is_some_and(|s| s.pieces_left > 0);
        let mut state = (self.shared.done)
            .wait_while(lock(&self.shared.state), busy)
            .unwrap_or_else(|p| p.into_inner());
        let sub = state.subs.remove(&ticket.0);
        completion(sub.unwrap_or_else(|| panic!("wait: ticket {} is not in flight", ticket.0)))
    }

    fn cancel(&self, ticket: Ticket) {
        if let Some(sub) = lock(&self.shared.state).subs.get_mut(&ticket.0) {
            sub.cancelled = true;
        }
    }
}
