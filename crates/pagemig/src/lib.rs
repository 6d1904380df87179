//! pagemig moves memory between NUMA nodes and memory tiers with batched, multi-threaded copy
//! engines, on stock Linux kernels.
//!
//! - [`topology`]: nodes, CPUs, L3 cache domains and memory tiers, from sysfs.
//! - [`copy`]: the [`copy::CopyEngine`] trait, CPU engines and the pinned worker [`copy::Pool`].
//! - [`sys`]: the safe wrappers over every system call pagemig makes.
#![deny(unsafe_code)]

pub mod copy;
pub mod sys;
pub mod topology;
