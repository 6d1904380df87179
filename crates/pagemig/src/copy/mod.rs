//! Copy engines: one trait, several ways to move bytes, all byte-identical for any length and
//! alignment. [`CpuEngine`] copies on the calling thread; [`Pool`] splits a batch by bytes over
//! the pinned [`crate::workers::Workers`] on CPUs chosen by a [`Placement`]; [`AsyncCopyEngine`]
//! (submit, poll, wait, cancel) is served by the CPU [`Offload`] engine and by DMA engines.

pub mod dma;
mod kernels;
mod op;
mod placement;
mod pool;
mod queue;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kernels::Kernel;

pub use op::CopyOp;
pub use placement::{Placement, PlacementError, Route};
pub use pool::{Piece, Pool, split_by_bytes};
pub use queue::{
    AsyncCopyEngine, Completion, Offload, OpStatus, Queue, Ticket, copy_and_wait, scope,
};

/// How a batch is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "kebab-case")]
pub enum Copier {
    /// On the calling thread, the whole batch in one call.
    Thread {
        /// The engine.
        engine: EngineKind,
    },
    /// Split by bytes over this many pinned pool workers.
    Pool {
        /// The engine every worker runs.
        engine: EngineKind,
        /// Workers.
        workers: usize,
    },
    /// A DMA engine: no CPU thread copies.
    Dma {
        /// The engine.
        engine: dma::DmaKind,
    },
}

impl Copier {
    /// The CPU engine that copies (none for a DMA engine).
    pub fn cpu_engine(self) -> Option<EngineKind> {
        match self {
            Copier::Thread { engine } | Copier::Pool { engine, .. } => Some(engine),
            Copier::Dma { .. } => None,
        }
    }

    /// CPU threads that copy (none for a DMA engine).
    pub fn threads(self) -> usize {
        match self {
            Copier::Thread { .. } => 1,
            Copier::Pool { workers, .. } => workers,
            Copier::Dma { .. } => 0,
        }
    }
}

impl fmt::Display for Copier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Copier::Thread { engine } => write!(f, "{engine} on the calling thread"),
            Copier::Pool { engine, workers } => write!(f, "{engine} on {workers} pool worker(s)"),
            Copier::Dma { engine } => write!(f, "the {engine} DMA engine"),
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes copied.
    pub bytes: u64,
    /// Ops in the batch.
    pub ops: u64,
    /// Threads that copied (1 for an engine that copies on the caller's thread).
    pub threads: usize,
    /// CPU time of pool worker threads on this batch, from their thread CPU clocks (zero when
    /// the calling thread copied: its time is the caller's to measure).
    pub worker_cpu: Duration,
}

/// Why a copy did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The engine cannot run on this machine.
    #[error("copy engine {engine} is not available here: {reason}")]
    Unavailable {
        /// The engine.
        engine: EngineKind,
        /// Which check failed.
        reason: String,
    },
    /// A DMA device is not there, or cannot be used, for this reason.
    #[error("no usable {device} here: {reason}")]
    NoDevice {
        /// The device.
        device: &'static str,
        /// Which check failed.
        reason: String,
    },
    /// One op of a batch was not copied completely.
    #[error("op {op} of the batch failed after {copied} bytes: {reason}")]
    OpFailed {
        /// Index of the op in the batch.
        op: usize,
        /// Bytes of it that were copied.
        copied: usize,
        /// What the engine reported.
        reason: String,
    },
    /// A pool was asked for with no CPU.
    #[error("a copy pool needs at least one CPU")]
    NoCpu,
    /// No CPUs could be chosen for the copy workers.
    #[error("placing copy workers")]
    Placement(#[from] PlacementError),
    /// The workers could not run a share (a panic names the worker's index in the pool; its
    /// share may be incomplete).
    #[error(transparent)]
    Workers(#[from] crate::workers::WorkerError),
}

/// Something that copies batches of non-overlapping byte ranges.
pub trait CopyEngine: Send + Sync {
    /// Short name for tables and reports (`memcpy`, `nt-avx2`, `pool(4 x memcpy)`).
    fn name(&self) -> String;

    /// Copies every op of the batch; returns when all bytes are copied, or says what failed.
    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError>;

    /// As [`CopyEngine::copy`], for a caller that changes its address space right after
    /// (`mremap`): polling threads may sleep at once instead, see
    /// [`crate::workers::Workers::run_then_sleep`].
    fn copy_before_remap(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy(batch)
    }
}

/// The kinds of CPU copy engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// `memcpy` from the C library.
    Memcpy,
    /// Non-temporal (streaming) stores that bypass the cache for the destination.
    Nt,
    /// The x86 `rep movsb` string instruction.
    Movsb,
    /// The x86 `rep movsq` string instruction, the kernel's `copy_page` ([`PageCopy`]) over the
    /// whole batch: where it is this CPU's fastest copy, the planner can choose it.
    Movsq,
    /// Non-temporal stores with AVX-512 (AVX-512F CPUs only): calibration decides whether it
    /// beats `nt`.
    Nt512,
}

impl EngineKind {
    /// Every kind, in table order.
    pub const ALL: [EngineKind; 5] = [
        EngineKind::Memcpy,
        EngineKind::Nt,
        EngineKind::Movsb,
        EngineKind::Movsq,
        EngineKind::Nt512,
    ];
}

impl fmt::Display for EngineKind {
    /// The name used on the command line and in tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Memcpy => "memcpy",
            EngineKind::Nt => "nt",
            EngineKind::Movsb => "movsb",
            EngineKind::Movsq => "movsq",
            EngineKind::Nt512 => "nt512",
        })
    }
}

impl FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EngineKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                format!("unknown copy engine {s:?} (expected memcpy, nt, movsb, movsq or nt512)")
            })
    }
}

/// An engine that copies on the calling thread.
///
/// ```
/// use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind};
/// let src = vec![7u8; 10_000];
/// let mut dst = vec![0u8; 10_000];
/// let engine = CpuEngine::new(EngineKind::Nt).unwrap();
/// engine.copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
/// assert_eq!(src, dst);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CpuEngine {
    kind: EngineKind,
    variant: &'static str,
    kernel: Kernel,
}

impl CpuEngine {
    /// The best variant of `kind` for this CPU, or why there is none.
    pub fn new(kind: EngineKind) -> Result<Self, CopyError> {
        // The vector kernels run only where the CPU has their instructions.
        let found: Result<(&'static str, Kernel), String> = match kind {
            EngineKind::Memcpy => Ok(("memcpy", kernels::memcpy)),
            #[cfg(target_arch = "x86_64")]
            EngineKind::Nt if std::is_x86_feature_detected!("avx2") => {
                Ok(("nt-avx2", kernels::stream_avx2))
            }
            #[cfg(target_arch = "x86_64")]
            EngineKind::Nt => Ok(("nt-sse2", kernels::stream_sse2)),
            // No streaming-store kernel for this architecture: plain copies, named honestly.
            #[cfg(not(target_arch = "x86_64"))]
            EngineKind::Nt => Ok(("nt-portable", kernels::memcpy)),
            #[cfg(target_arch = "x86_64")]
            EngineKind::Movsb => Ok(("movsb", kernels::rep_movsb)),
            #[cfg(not(target_arch = "x86_64"))]
            EngineKind::Movsb => Err("rep movsb is an x86_64 instruction".into()),
            #[cfg(target_arch = "x86_64")]
            EngineKind::Movsq => Ok(("movsq", kernels::rep_movsq)),
            #[cfg(not(target_arch = "x86_64"))]
            EngineKind::Movsq => Err("rep movsq is an x86_64 instruction".into()),
            #[cfg(target_arch = "x86_64")]
            EngineKind::Nt512 if std::is_x86_feature_detected!("avx512f") => {
                Ok(("nt-avx512", kernels::stream_avx512))
            }
            #[cfg(target_arch = "x86_64")]
            EngineKind::Nt512 => {
                Err("this CPU has no AVX-512F (cpuid leaf 7: avx512f not set)".into())
            }
            #[cfg(not(target_arch = "x86_64"))]
            EngineKind::Nt512 => Err("AVX-512 is an x86_64 extension".into()),
        };
        let (variant, kernel) = found.map_err(|reason| CopyError::Unavailable {
            engine: kind,
            reason,
        })?;
        Ok(Self {
            kind,
            variant,
            kernel,
        })
    }

    /// The engine's kind.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }
}

/// The kernel's folio copy, as `move_pages` runs it: one `copy_page` call per base page (on
/// x86_64 `rep movsq`, as `arch/x86/lib/copy_page_64.S` with `REP_GOOD`; elsewhere a plain copy).
/// The benchmarks' `vanilla` baseline.
///
/// ```
/// use pagemig::copy::{CopyEngine, CopyOp, PageCopy};
/// let src = vec![3u8; 3 * 4096 + 5];
/// let mut dst = vec![0u8; 3 * 4096 + 5];
/// PageCopy::new().copy(&[CopyOp::new(&src, &mut dst)]).unwrap();
/// assert_eq!(src, dst);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PageCopy {
    page: usize,
    variant: &'static str,
    kernel: Kernel,
}

impl PageCopy {
    /// The page copy of this machine, in base pages of this kernel's size.
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        let (variant, kernel): (_, Kernel) = ("copy_page (rep movsq)", kernels::rep_movsq);
        #[cfg(not(target_arch = "x86_64"))]
        let (variant, kernel): (_, Kernel) = ("copy_page (portable)", kernels::memcpy);
        PageCopy {
            page: crate::sys::base_page_size(),
            variant,
            kernel,
        }
    }

    /// Bytes per call: the base page size.
    pub fn page_size(&self) -> usize {
        self.page
    }
}

impl Default for PageCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyEngine for PageCopy {
    fn name(&self) -> String {
        self.variant.to_owned()
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        Ok(on_this_thread(batch, |op| {
            op.run_pieces(self.page, self.kernel)
        }))
    }
}

impl CopyEngine for CpuEngine {
    fn name(&self) -> String {
        self.variant.to_owned()
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        Ok(on_this_thread(batch, |op| {
            op.run_pieces(op.len(), self.kernel)
        }))
    }
}

/// Runs `copy` on every op of `batch` on the calling thread: the statistics of a one-thread copy.
fn on_this_thread(batch: &[CopyOp<'_>], copy: impl Fn(&CopyOp<'_>)) -> CopyStats {
    batch.iter().for_each(copy);
    CopyStats {
        bytes: batch.iter().map(|op| op.len() as u64).sum(),
        ops: batch.len() as u64,
        threads: 1,
        ..CopyStats::default()
    }
}
