//! The machine's NUMA nodes, CPUs, L3 cache domains and memory tiers, read from a sysfs root
//! that tests point at a fake tree, so that any machine shape can be checked on any machine.

mod list;
mod sysfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use list::{CpuSet, IdSet, ListError, MAX_ID, NodeSet};
pub(crate) use sysfs::{numbered_entries, parse_bytes};

/// A NUMA node id, as in `/sys/devices/system/node/nodeN`.
pub type NodeId = u32;
/// A CPU id, as in `/sys/devices/system/cpu/cpuN`.
pub type CpuId = u32;

/// What the kernel says about one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Online CPUs of the node; empty for a memory-only node.
    pub cpus: CpuSet,
    /// Memory of the node in bytes (`MemTotal`).
    pub mem_total: u64,
    /// Free memory in bytes (`MemFree`) when the topology was read.
    pub mem_free: u64,
    /// Whether the kernel lists the node in `has_memory`.
    pub has_memory: bool,
    /// ACPI SLIT distance to each online node (10 is local).
    pub distances: BTreeMap<NodeId, u32>,
}

impl Node {
    /// A node with memory and no CPU: a CXL expander, an HBM or GPU-attached tier.
    pub fn is_memory_only(&self) -> bool {
        self.has_memory && self.cpus.is_empty()
    }
}

/// A group of CPUs sharing one last-level (L3) cache: a CCD on AMD EPYC, a socket on most Intel
/// servers. CPUs whose L3 is not described form one domain per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheDomain {
    /// Index in [`Topology::l3_domains`].
    pub index: usize,
    /// CPUs sharing the cache.
    pub cpus: CpuSet,
    /// Nodes these CPUs belong to.
    pub nodes: NodeSet,
    /// Cache size in bytes, when sysfs says.
    pub size: Option<u64>,
}

/// A memory tier (`/sys/devices/virtual/memory_tiering/memory_tierN`): a lower id is faster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryTier {
    /// Tier id (the kernel's abstract distance divided by the chunk size).
    pub id: u32,
    /// Nodes of this tier.
    pub nodes: NodeSet,
}

/// Nodes, CPUs, cache domains and tiers of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Online nodes, by id.
    pub nodes: Vec<Node>,
    /// Online CPUs.
    pub online_cpus: CpuSet,
    /// L3 cache domains, ordered by their first CPU.
    pub l3_domains: Vec<CacheDomain>,
    /// Memory tiers, fastest first; empty where the kernel does not expose them.
    pub tiers: Vec<MemoryTier>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A sysfs file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sysfs file did not have the expected form.
    #[error("unexpected contents in {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The nodes the running kernel lists now in `/sys/devices/system/node/STATE`, for a STATE such
/// as `possible`, `online` or `has_memory` (empty when the file is missing: no NUMA support).
pub fn node_state(state: &str) -> Result<NodeSet, TopologyError> {
    let path = Path::new("/sys/devices/system/node").join(state);
    Ok(sysfs::read_list(&path)?.unwrap_or_default())
}

impl Topology {
    /// Reads the running machine's topology from `/sys`.
    pub fn detect() -> Result<Self, TopologyError> {
        Self::from_sysfs("/sys")
    }

    /// Reads a topology from a sysfs tree rooted at `root` (the directory holding `devices/`).
    pub fn from_sysfs(root: impl Into<PathBuf>) -> Result<Self, TopologyError> {
        sysfs::read(&root.into())
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Nodes that have memory.
    pub fn memory_nodes(&self) -> NodeSet {
        self.nodes
            .iter()
            .filter(|n| n.has_memory)
            .map(|n| n.id)
            .collect()
    }

    /// The node a CPU belongs to.
    pub fn cpu_node(&self, cpu: CpuId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(cpu))
            .map(|n| n.id)
    }

    /// The L3 domain a CPU belongs to.
    pub fn cpu_domain(&self, cpu: CpuId) -> Option<&CacheDomain> {
        self.l3_domains.iter().find(|d| d.cpus.contains(cpu))
    }

    /// Distance from node `a` to node `b` (10 is local), if the kernel reported it.
    pub fn distance(&self, a: NodeId, b: NodeId) -> Option<u32> {
        self.node(a)?.distances.get(&b).copied()
    }

    /// Nodes with CPUs ordered by distance from `from` (itself first when it has CPUs), ties by id.
    pub fn nodes_by_distance(&self, from: NodeId) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| !n.cpus.is_empty())
            .map(|n| n.id)
            .collect();
        ids.sort_by_key(|&id| (id != from, self.distance(from, id).unwrap_or(u32::MAX), id));
        ids
    }

    /// The tier a node belongs to.
    pub fn node_tier(&self, node: NodeId) -> Option<u32> {
        self.tiers
            .iter()
            .find(|t| t.nodes.contains(node))
            .map(|t| t.id)
    }
}

/// Free memory of `node` now, in bytes (`MemFree` of `/sys/devices/system/node/nodeN/meminfo`).
pub fn node_free_bytes(node: NodeId) -> Option<u64> {
    let text =
        std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/meminfo")).ok()?;
    sysfs::parse_meminfo(&text).get("MemFree").copied()
}

/// The CPU's marketing name from `/proc/cpuinfo` (the machine architecture where there is none).
pub fn cpu_model() -> String {
    // Read once: /proc/cpuinfo costs tens of microseconds on a large machine, too much for
    // callers planning every move_pages call.
    static MODEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let read = || {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = info.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "model name" | "Model" | "cpu model")
                .then(|| value.trim().to_owned())
        });
        model.unwrap_or_else(|| rustix::system::uname().machine().to_string_lossy().into())
    };
    MODEL.get_or_init(read).clone()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}
