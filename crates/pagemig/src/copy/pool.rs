//! A pool of copy workers pinned to chosen CPUs, on the shared [`Workers`]; batches are split by
//! bytes.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use super::{CopyEngine, CopyError, CopyOp, CopyStats};
use crate::sys;
use crate::topology::CpuId;
use crate::workers::{WorkerError, Workers};

/// Share boundaries fall on multiples of this many bytes of the batch, so that two workers never
/// write the same cache line of page-aligned destinations.
const SPLIT_ALIGN: usize = 64;

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

/// Copy workers of a shared [`Workers`] set, each pinned to one CPU, running engine `E` on their
/// share of a batch: creating a pool starts only the workers not running yet, copying none.
///
/// ```
/// use std::sync::Arc;
/// use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, Pool};
/// use pagemig::workers::Workers;
/// let workers = Arc::new(Workers::new()); // once per program
/// let cpus: Vec<u32> = pagemig::sys::allowed_cpus().unwrap().iter().collect();
/// let pool = Pool::new(&workers, CpuEngine::new(EngineKind::Memcpy).unwrap(), &cpus).unwrap();
/// let src = vec![1u8; 1 << 20];
/// let mut dst = vec![0u8; 1 << 20];
/// pool.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
/// assert_eq!(src, dst);
/// ```
pub struct Pool<E> {
    engine: E,
    cpus: Vec<CpuId>,
    workers: Arc<Workers>,
}

impl<E: CopyEngine> Pool<E> {
    /// One worker of `workers` per entry of `cpus`, pinned to that CPU (a CPU may appear twice:
    /// it then has two workers); those not running yet are started now.
    pub fn new(workers: &Arc<Workers>, engine: E, cpus: &[CpuId]) -> Result<Self, CopyError> {
        if cpus.is_empty() {
            return Err(CopyError::NoCpu);
        }
        workers.start(cpus)?;
        Ok(Pool {
            engine,
            cpus: cpus.to_vec(),
            workers: Arc::clone(workers),
        })
    }

    /// The CPU of each worker.
    pub fn cpus(&self) -> Vec<CpuId> {
        self.cpus.clone()
    }

    /// The engine each worker runs.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Copies the batch with its bytes split over the first `workers` workers (at least one, at
    /// most all), as [`Workers::run`] runs jobs. A worker that panics is reported, the others
    /// finish.
    pub fn copy_with(&self, batch: &[CopyOp<'_>], workers: usize) -> Result<CopyStats, CopyError> {
        self.split(batch, workers, false)
    }

    /// As [`Pool::copy_with`], for a caller that changes its address space right after: the
    /// workers sleep after their share where the caller takes one ([`Workers::run_then_sleep`]).
    pub fn copy_with_then_sleep(
        &self,
        batch: &[CopyOp<'_>],
        workers: usize,
    ) -> Result<CopyStats, CopyError> {
        self.split(batch, workers, true)
    }

    fn split(
        &self,
        batch: &[CopyOp<'_>],
        workers: usize,
        then_sleep: bool,
    ) -> Result<CopyStats, CopyError> {
        let n = workers.clamp(1, self.cpus.len());
        let lens: Vec<usize> = batch.iter().map(CopyOp::len).collect();
        // The ops as raw addresses, so that the job of every worker can share them.
        let addrs: Vec<(usize, usize)> = (batch.iter())
            .map(|op| (op.src() as usize, op.dst() as usize))
            .collect();
        // Workers whose share is empty (small batches) are not woken.
        let (busy, shares): (Vec<usize>, Vec<Vec<Piece>>) = split_by_bytes(&lens, n, SPLIT_ALIGN)
            .into_iter()
            .enumerate()
            .filter(|(_, share)| !share.is_empty())
            .unzip();
        let cpus: Vec<CpuId> = busy.iter().map(|&i| self.cpus[i]).collect();
        let job = |job: usize| {
            let cpu_start = sys::thread_cpu_time();
            let ops: Vec<CopyOp<'_>> = shares[job]
                .iter()
                .map(|p| {
                    let (src, dst) = (addrs[p.op].0 + p.offset, addrs[p.op].1 + p.offset);
                    // SAFETY: each piece is part of a CopyOp of the batch that this function
                    // borrows, and `run` returns only when every job is done; pieces of
                    // different shares are disjoint, so no other worker touches these bytes.
                    unsafe { CopyOp::from_raw(src as *const u8, dst as *mut u8, p.len) }
                })
                .collect();
            self.engine
                .copy(&ops)
                .map(|_| sys::thread_cpu_time().saturating_sub(cpu_start))
        };
        let results = if then_sleep {
            self.workers.run_then_sleep(&cpus, job)
        } else {
            self.workers.run(&cpus, job)
        };
        // A panic names the worker in the pool, not the job among the busy ones.
        let results = results.map_err(|mut e| {
            if let WorkerError::Panicked { job, .. } = &mut e {
                *job = busy[*job];
            }
            e
        })?;
        Ok(CopyStats {
            bytes: lens.iter().sum::<usize>() as u64,
            ops: batch.len() as u64,
            threads: busy.len(),
            worker_cpu: results.into_iter().sum::<Result<Duration, _>>()?,
        })
    }
}

impl<E: CopyEngine> CopyEngine for Pool<E> {
    fn name(&self) -> String {
        format!("pool({} x {})", self.cpus.len(), self.engine.name())
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy_with(batch, self.cpus.len())
    }

    fn copy_before_remap(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy_with_then_sleep(batch, self.cpus.len())
    }
}

impl<E> std::fmt::Debug for Pool<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("cpus", &self.cpus).finish()
    }
}
