//! pagemig moves memory between NUMA nodes and memory tiers with batched, multi-threaded copy
//! engines, on stock Linux kernels.
//!
//! - [`topology`]: nodes, CPUs, L3 cache domains and memory tiers, from sysfs.
//! - [`workers`]: the one set of long-lived worker threads pinned to CPUs that every parallel
//!   part runs on.
//! - [`copy`]: the [`copy::CopyEngine`] trait, CPU engines and the pinned worker [`copy::Pool`].
//! - [`Migrator`]: the front door: a [`Request`] in, a [`account::Report`] out.
//! - [`migrate`]: the steps of a migration: request, scan, plan, and the two executors (the
//!   kernel path for any process, the remap path for the caller's own memory).
//! - [`policy`]: the planner and its calibrated cost model.
//! - [`abi`]: `move_pages(2)` and `migrate_pages(2)` with the kernel's answers, for the C
//!   libraries.
//! - [`account`]: what a migration did, per page and per phase, and who paid for it.
//! - [`cgroup`]: cgroup v2 membership, CPU quota and usage.
//! - [`process`] and [`procfs`]: the process whose pages move, and what `/proc` says about it.
//! - [`tier`]: the tiering agent: DAMON tracking, heat, promote/demote decisions, moves.
//! - [`sys`]: the safe wrappers over every system call pagemig makes.
#![deny(unsafe_code)]

pub mod abi;
pub mod account;
pub mod cgroup;
pub mod copy;
pub mod migrate;
mod migrator;
pub mod policy;
pub mod process;
pub mod procfs;
pub mod sys;
pub mod tier;
pub mod topology;
pub mod workers;

pub use account::Report;
pub use migrate::{Memory, Options, PathChoice, Plan, Progress, Request, Scan, Selection, Threads};
pub use migrator::Migrator;
