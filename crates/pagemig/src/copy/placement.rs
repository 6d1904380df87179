//! Which CPUs copy workers run on.

use std::collections::BTreeMap;

use crate::topology::{CpuId, CpuSet, NodeId, Topology};

/// How copy workers are placed on CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// One worker per L3 domain before a second in any: the most cache and memory-controller
    /// bandwidth for a given worker count.
    SpreadL3,
    /// On the destination node's CPUs first, then on nodes ever farther from it (each node spread
    /// over its L3 domains). The right choice when the target is DRAM with CPUs.
    NearDst,
    /// As `NearDst`, from the source node: for memory-only targets (CXL, HBM), whose node has no
    /// CPU.
    NearSrc,
    /// Exactly these CPUs, in this order.
    Explicit(CpuSet),
}

/// As the command line spells it: `spread`, `near-dst`, `near-src`, or `CPUs 0-3`.
impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::SpreadL3 => f.write_str("spread"),
            Placement::NearDst => f.write_str("near-dst"),
            Placement::NearSrc => f.write_str("near-src"),
            Placement::Explicit(cpus) => write!(f, "CPUs {cpus}"),
        }
    }
}

/// Where the memory being copied comes from and goes to, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// Source node.
    pub from: Option<NodeId>,
    /// Destination node.
    pub to: Option<NodeId>,
}

/// Why no CPUs could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A placement was asked for zero workers.
    #[error("a worker pool needs at least one worker")]
    ZeroWorkers,
    /// None of the allowed CPUs is online.
    #[error("no online CPU in the allowed set {allowed}")]
    NoUsableCpu {
        /// The affinity mask that was given.
        allowed: CpuSet,
    },
    /// An explicit CPU list names CPUs that are offline or outside the affinity mask.
    #[error("CPUs {cpus} are offline or outside the allowed set {allowed}")]
    OutsideMask {
        /// The CPUs that cannot be used.
        cpus: CpuSet,
        /// The usable CPUs.
        allowed: CpuSet,
    },
    /// The route names a node the topology does not have.
    #[error("node {0} does not exist or is offline")]
    UnknownNode(NodeId),
}

impl Placement {
    /// Chooses `workers` CPUs among `allowed` (the affinity mask). When `workers` exceeds the
    /// usable CPUs, CPUs are reused in the same order.
    pub fn choose(
        &self,
        topology: &Topology,
        route: Route,
        allowed: &CpuSet,
        workers: usize,
    ) -> Result<Vec<CpuId>, PlacementError> {
        if workers == 0 {
            return Err(PlacementError::ZeroWorkers);
        }
        let usable = allowed.intersection(&topology.online_cpus);
        if usable.is_empty() {
            return Err(PlacementError::NoUsableCpu {
                allowed: allowed.clone(),
            });
        }
        let near = |node: Option<NodeId>| -> Result<Vec<CpuId>, PlacementError> {
            let Some(node) = node else {
                return Ok(spread(topology, &usable));
            };
            if topology.node(node).is_none() {
                return Err(PlacementError::UnknownNode(node));
            }
            let mut order = Vec::new();
            for id in topology.nodes_by_distance(node) {
                let cpus = topology.node(id).map(|n| n.cpus.intersection(&usable));
                order.extend(spread(topology, &cpus.unwrap_or_default()));
            }
            // CPUs that no node lists (a kernel without NUMA) still count, last.
            order.extend(usable.iter().filter(|c| topology.cpu_node(*c).is_none()));
            Ok(order)
        };
        let order = match self {
            Placement::SpreadL3 => spread(topology, &usable),
            Placement::NearDst => near(route.to)?,
            Placement::NearSrc => near(route.from)?,
            Placement::Explicit(cpus) => {
                let outside = cpus.difference(&usable);
                if !outside.is_empty() {
                    return Err(PlacementError::OutsideMask {
                        cpus: outside,
                        allowed: usable,
                    });
                }
                cpus.iter().collect()
            }
        };
        if order.is_empty() {
            return Err(PlacementError::NoUsableCpu {
                allowed: allowed.clone(),
            });
        }
        Ok(order.iter().copied().cycle().take(workers).collect())
    }
}

/// `cpus` ordered round-robin over their L3 domains: the first CPU of every domain, then the
/// second of every domain, and so on.
fn spread(topology: &Topology, cpus: &CpuSet) -> Vec<CpuId> {
    let mut by_domain: BTreeMap<usize, Vec<CpuId>> = BTreeMap::new();
    for cpu in cpus.iter() {
        let domain = topology.cpu_domain(cpu).map_or(usize::MAX, |d| d.index);
        by_domain.entry(domain).or_default().push(cpu);
    }
    let rounds = by_domain.values().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| {
            by_domain
                .values()
                .filter_map(move |d| d.get(round).copied())
        })
        .collect()
}
