//! Moving pages between nodes: a [`Request`] → [`scan::scan`] → a [`Plan`] (chosen by
//! [`crate::policy::Planner::plan`]; nothing here chooses) → an executor → a
//! [`crate::account::Report`]. The executors: [`in_cgroup::execute`] ([`kernel`]'s
//! `move_pages(2)` for any process, its CPU time charged as planned) and [`remap`] (the caller's
//! own memory, by copy and `mremap`, with pages from [`reservoir`]s).

pub mod in_cgroup;
pub mod kernel;
pub mod plan;
pub mod remap;
pub mod request;
pub mod reservoir;
pub mod scan;

pub use plan::Plan;
pub use request::{Memory, Options, PathChoice, Progress, Request, Selection, Threads};
pub use scan::{Found, Pages, Scan};

use crate::copy::PlacementError;
use crate::process::Process;
use crate::procfs::ProcfsError;
use crate::sys::SysError;
use crate::topology::{Node, NodeId, NodeSet, Topology};
use crate::workers::WorkerError;

/// Why pages could not be moved at all. Per-page failures are not errors: they are counted in
/// the [`crate::account::Report`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The process does not exist, or exited before anything was moved.
    #[error("{process} does not exist (or has exited)")]
    NoSuchProcess {
        /// The process.
        process: Process,
    },
    /// The caller may not read or move the process's pages.
    #[error(
        "no permission to read or move the pages of {process}: the caller needs ptrace access to it \
         (the same user, with kernel.yama.ptrace_scope allowing it, or CAP_SYS_PTRACE); moving pages \
         of another user's process or shared pages also needs CAP_SYS_NICE"
    )]
    PermissionDenied {
        /// The process.
        process: Process,
    },
    /// The node is not online.
    #[error("node {node} does not exist or is offline (online nodes: {online})")]
    NoSuchNode {
        /// The node asked for.
        node: NodeId,
        /// The online nodes.
        online: NodeSet,
    },
    /// The node has no memory (a CPU-only node).
    #[error("node {node} has no memory (nodes with memory: {with_memory})")]
    NodeWithoutMemory {
        /// The node asked for.
        node: NodeId,
        /// Nodes that have memory.
        with_memory: NodeSet,
    },
    /// An address range that is empty, backwards or not mapped.
    #[error("bad range {start:#x}-{end:#x}: {reason}")]
    BadRange {
        /// First address.
        start: usize,
        /// End address.
        end: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// No mapping matches a `--mapping` pattern.
    #[error(
        "no mapping of {process} matches {pattern:?} (see /proc/PID/maps; \"anonymous\" selects memory without a file)"
    )]
    NoMatchingMapping {
        /// The process.
        process: Process,
        /// The pattern.
        pattern: String,
    },
    /// A `--mapping` pattern that selects only a kernel-provided mapping (`[vvar]`, `[vdso]`).
    #[error(
        "{pattern:?} selects only the kernel's own mapping {mapping} of {process}, whose pages cannot move"
    )]
    KernelMapping {
        /// The process.
        process: Process,
        /// The pattern.
        pattern: String,
        /// The kernel's mapping it matches.
        mapping: String,
    },
    /// An address range where only kernel-provided mappings (`[vvar]`, `[vdso]`) are.
    #[error(
        "bad range {start:#x}-{end:#x}: only the kernel's own mapping(s) {mappings} of {process} are there, whose pages cannot move"
    )]
    KernelRange {
        /// The process.
        process: Process,
        /// First address.
        start: usize,
        /// End address.
        end: usize,
        /// The kernel's mappings in the range, comma-separated.
        mappings: String,
    },
    /// The topology could not be read (building a [`crate::Migrator`]).
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    /// What `/proc` said stops the migration: the process is a zombie or a kernel thread, or a
    /// file could not be read.
    #[error(transparent)]
    Procfs(ProcfsError),
    /// A system call failed for a reason not listed above.
    #[error("{process}: {source}")]
    Sys {
        /// The process.
        process: Process,
        /// The call and errno.
        #[source]
        source: SysError,
    },
    /// The workers could not run the calls (one could not be started or pinned to its CPU).
    #[error(transparent)]
    Workers(#[from] WorkerError),
    /// No CPUs could be chosen for the threads.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The target's cgroup is unknown, so it cannot be charged.
    #[error("cannot find the cgroup of {process} to charge it; nothing was moved")]
    TargetCgroup {
        /// The process.
        process: Process,
        /// Why.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// A helper process could not be placed in the target's cgroup.
    #[error(
        "cannot place a helper process in cgroup {cgroup} (the cgroup of {process}) to charge it; \
         nothing was moved (moving a process into a cgroup needs write access to its cgroup.procs \
         and to that of the common ancestor)"
    )]
    EnterCgroup {
        /// The process.
        process: Process,
        /// The cgroup's path.
        cgroup: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper process failed.
    #[error("migration helper: {message}")]
    Helper {
        /// What it said.
        message: String,
    },
    /// The remap path failed.
    #[error(transparent)]
    Remap(Box<remap::RemapError>),
    /// A plan takes the remap path where it cannot run.
    #[error("the plan takes the remap path, which cannot run here: {why}")]
    RemapUnavailable {
        /// Why it cannot.
        why: String,
    },
    /// The plan's copy engine cannot run here, or its copy workers could not start.
    #[error("cannot start the plan's copier")]
    Copier(#[from] crate::copy::CopyError),
}

impl From<remap::RemapError> for MigrateError {
    fn from(e: remap::RemapError) -> Self {
        MigrateError::Remap(Box::new(e))
    }
}

impl From<ProcfsError> for MigrateError {
    fn from(e: ProcfsError) -> Self {
        match e {
            ProcfsError::NoSuchProcess { process } => MigrateError::NoSuchProcess { process },
            ProcfsError::PermissionDenied { process } => MigrateError::PermissionDenied { process },
            other => MigrateError::Procfs(other),
        }
    }
}

/// Refuses a node that is offline or unknown.
fn check_node(topology: &Topology, node: NodeId) -> Result<&Node, MigrateError> {
    topology.node(node).ok_or_else(|| MigrateError::NoSuchNode {
        node,
        online: topology.nodes.iter().map(|n| n.id).collect(),
    })
}

/// Refuses a target node that is offline, unknown or has no memory, before anything moves.
pub fn check_target(topology: &Topology, node: NodeId) -> Result<(), MigrateError> {
    if !check_node(topology, node)?.has_memory {
        return Err(MigrateError::NodeWithoutMemory {
            node,
            with_memory: topology.memory_nodes(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(id: NodeId, cpus: &str, has_memory: bool) -> Node {
        Node {
            id,
            cpus: cpus.parse().unwrap(),
            mem_total: if has_memory { 1 << 30 } else { 0 },
            mem_free: 0,
            has_memory,
            distances: BTreeMap::new(),
        }
    }

    #[test]
    fn targets_are_checked_before_anything_moves() {
        let topo = Topology {
            nodes: vec![
                node(0, "0-3", true),
                node(1, "4-7", false),
                node(3, "", true),
            ],
            online_cpus: "0-7".parse().unwrap(),
            l3_domains: Vec::new(),
            tiers: Vec::new(),
        };
        // A memory-only node (3) is a fine target.
        for (node, expected) in [
            (0, Ok(())),
            (3, Ok(())),
            (1, Err("node 1 has no memory (nodes with memory: 0,3)")),
            (
                2,
                Err("node 2 does not exist or is offline (online nodes: 0-1,3)"),
            ),
        ] {
            let result = check_target(&topo, node).map_err(|e| e.to_string());
            assert_eq!(result, expected.map_err(String::from), "node {node}");
        }
    }
}
