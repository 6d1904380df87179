//! DMA engines behind the asynchronous engine interface, each behind a cargo feature and
//! detected at run time: Intel DSA work queues (`dsa`), GPU copy engines through the CUDA driver
//! (`cuda`). [`available`] says which can run here and, for the others, why not.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(all(feature = "dsa", target_arch = "x86_64"))]
pub mod dsa;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AsyncCopyEngine, CopyError};

/// The kinds of DMA engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmaKind {
    /// Intel Data Streaming Accelerator.
    Dsa,
    /// A GPU's copy engines.
    Cuda,
}

impl DmaKind {
    /// Every kind.
    pub const ALL: [DmaKind; 2] = [DmaKind::Dsa, DmaKind::Cuda];
}

impl fmt::Display for DmaKind {
    /// The name on the command line and in tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaKind::Dsa => "dsa",
            DmaKind::Cuda => "cuda",
        })
    }
}

impl FromStr for DmaKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DmaKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| format!("unknown DMA engine {s:?} (expected dsa or cuda)"))
    }
}

/// A DMA engine, ready to copy (asynchronously, or synchronously through [`super::CopyEngine`]).
pub type Engine = Box<dyn AsyncCopyEngine>;

/// Opens the engine of `kind`, or says why it cannot run here (not built in, no device, no
/// driver, no permission).
pub fn open(kind: DmaKind) -> Result<Engine, CopyError> {
    match kind {
        #[cfg(all(feature = "dsa", target_arch = "x86_64"))]
        DmaKind::Dsa => Ok(Box::new(dsa::Dsa::open()?)),
        #[cfg(feature = "cuda")]
        DmaKind::Cuda => Ok(Box::new(cuda::Cuda::open()?)),
        #[allow(
            unreachable_patterns,
            reason = "reached when a backend is not built in"
        )]
        _ => Err(unavailable(
            kind,
            format!(
                "pagemig was built without the `{kind}` feature{}",
                if kind == DmaKind::Dsa && !cfg!(target_arch = "x86_64") {
                    " (and DSA is an x86_64 device)"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// Why the engine of `kind` cannot run here.
fn unavailable(kind: DmaKind, reason: impl Into<String>) -> CopyError {
    CopyError::NoDevice {
        device: match kind {
            DmaKind::Dsa => "Intel DSA",
            DmaKind::Cuda => "CUDA GPU",
        },
        reason: reason.into(),
    }
}

/// Every DMA kind, opened where it can run, or why it cannot.
pub fn available() -> Vec<(DmaKind, Result<Engine, CopyError>)> {
    DmaKind::ALL.into_iter().map(|k| (k, open(k))).collect()
}
