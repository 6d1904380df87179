//! The machine the commands run on: what their arguments are checked against, and the
//! description printed beside every measurement.

use std::fmt;

use anyhow::{Context, bail};
use pagemig::sys;
use pagemig::topology::{self, CpuSet, NodeId, Topology};
use serde::Serialize;

/// The topology and the CPUs this process may use, read once before arguments are checked.
#[derive(Debug, Clone)]
pub struct Host {
    /// Nodes, CPUs and caches.
    pub topo: Topology,
    /// The CPUs of this process's affinity mask.
    pub allowed: CpuSet,
}

impl Host {
    /// Reads the running machine.
    pub fn detect() -> anyhow::Result<Self> {
        Ok(Host {
            topo: Topology::detect().context("reading the topology from /sys")?,
            allowed: sys::allowed_cpus()?,
        })
    }

    /// CPUs that are both online and allowed.
    pub fn usable(&self) -> CpuSet {
        self.allowed.intersection(&self.topo.online_cpus)
    }

    /// The description printed beside measurements.
    pub fn describe(&self) -> Machine {
        Machine::describe(&self.topo, &self.allowed)
    }

    /// Refuses a node that does not exist or has no memory; `role` says which (source,
    /// destination).
    pub fn check_node(&self, node: NodeId, role: &str) -> anyhow::Result<()> {
        let topo = &self.topo;
        match topo.node(node) {
            None => bail!(
                "{role} node {node} does not exist or is offline (nodes with memory: {})",
                topo.memory_nodes()
            ),
            Some(n) if !n.has_memory => bail!(
                "{role} node {node} has no memory (nodes with memory: {})",
                topo.memory_nodes()
            ),
            Some(_) => Ok(()),
        }
    }
}

/// What a reader needs to compare numbers between machines.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub online_cpus: usize,
    pub allowed_cpus: CpuSet,
    pub nodes: usize,
    pub memory_nodes: String,
    pub l3_domains: usize,
    pub kernel: String,
    pub thp: String,
}

impl Machine {
    /// Describes `topology` as seen by a process allowed on `allowed`.
    pub fn describe(topology: &Topology, allowed: &CpuSet) -> Self {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .ok()
            .and_then(|t| {
                let start = t.find('[')? + 1;
                let end = t[start..].find(']')? + start;
                Some(t[start..end].to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu_model: topology::cpu_model(),
            online_cpus: topology.online_cpus.len(),
            allowed_cpus: allowed.clone(),
            nodes: topology.nodes.len(),
            memory_nodes: topology.memory_nodes().to_string(),
            l3_domains: topology.l3_domains.len(),
            kernel: topology::kernel_release(),
            thp,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} | {} CPUs online, allowed {} | {} node(s), memory on {} | {} L3 domain(s) | kernel {} | THP {}",
            self.cpu_model,
            self.online_cpus,
            self.allowed_cpus,
            self.nodes,
            self.memory_nodes,
            self.l3_domains,
            self.kernel,
            self.thp
        )
    }
}

#[cfg(test)]
impl Host {
    /// A machine of `nodes` nodes with `cpus_per_node` CPUs and 4 GiB free each, every CPU
    /// allowed, for tests of argument checks.
    pub fn fake(nodes: u32, cpus_per_node: u32) -> Self {
        use pagemig::topology::Node;
        let cpus = |n: u32| -> CpuSet { (n * cpus_per_node..(n + 1) * cpus_per_node).collect() };
        let online: CpuSet = (0..nodes * cpus_per_node).collect();
        let topo = Topology {
            nodes: (0..nodes)
                .map(|id| Node {
                    id,
                    cpus: cpus(id),
                    mem_total: 8 << 30,
                    mem_free: 4 << 30,
                    has_memory: true,
                    distances: (0..nodes)
                        .map(|to| (to, if to == id { 10 } else { 20 }))
                        .collect(),
                })
                .collect(),
            online_cpus: online.clone(),
            l3_domains: Vec::new(),
            tiers: Vec::new(),
        };
        Host {
            topo,
            allowed: online,
        }
    }
}
