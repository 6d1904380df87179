//! The machine description printed beside every measurement.

use std::fmt;

use pagemig::topology::{self, CpuSet, Topology};
use serde::Serialize;

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
