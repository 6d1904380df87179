//! A copy engine that copies each batch the way the planner chose for its size.

use std::collections::BTreeMap;

use super::{Copier, CopyPlan, Job, Planner};
use crate::copy::dma::{self, DmaKind};
use crate::copy::{
    CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind, PlacementError, Pool,
    PoolError, Route,
};

/// Batch sizes planned for: one plan per power of two from 4 KiB to 1 TiB.
const SMALLEST: u32 = 12;
const LARGEST: u32 = 40;

/// Why an [`AutoEngine`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum AutoError {
    /// Workers could not be placed.
    #[error("placing copy workers")]
    Placement(#[from] PlacementError),
    /// Workers could not be started.
    #[error("starting copy workers")]
    Pool(#[from] PoolError),
    /// A chosen engine cannot run here.
    #[error(transparent)]
    Engine(#[from] CopyError),
}

/// Copies each batch on the calling thread or over pinned pool workers, with the engine and
/// worker count the planner chose for the batch's size (planned once per power of two of bytes
/// when the engine is made, so a copy costs one table lookup more than its copier).
pub struct AutoEngine {
    /// The plan for batches of `2^(SMALLEST + i)` bytes and up.
    plans: Vec<CopyPlan>,
    threads: BTreeMap<EngineKind, CpuEngine>,
    pools: BTreeMap<EngineKind, Pool<CpuEngine>>,
    dmas: BTreeMap<DmaKind, dma::Engine>,
}

impl AutoEngine {
    /// Plans every batch size for copies along `route`, and starts the pools those plans use.
    pub fn new(planner: &Planner<'_>, route: Route) -> Result<Self, AutoError> {
        let plans = (SMALLEST..=LARGEST)
            .map(|k| {
                planner.plan_copy(Job {
                    bytes: 1 << k,
                    route,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut threads = BTreeMap::new();
        let mut dmas = BTreeMap::new();
        let mut widest: BTreeMap<EngineKind, &CopyPlan> = BTreeMap::new();
        for plan in &plans {
            let kind = match plan.copier {
                Copier::Dma { engine } => {
                    if let std::collections::btree_map::Entry::Vacant(e) = dmas.entry(engine) {
                        e.insert(dma::open(engine)?);
                    }
                    continue;
                }
                Copier::Thread { engine } | Copier::Pool { engine, .. } => engine,
            };
            if let std::collections::btree_map::Entry::Vacant(e) = threads.entry(kind) {
                e.insert(CpuEngine::new(kind)?);
            }
            if let Copier::Pool { .. } = plan.copier {
                let w = widest.entry(kind).or_insert(plan);
                if plan.cpus.len() > w.cpus.len() {
                    *w = plan;
                }
            }
        }
        let mut pools = BTreeMap::new();
        for (kind, plan) in widest {
            pools.insert(kind, Pool::new(threads[&kind], &plan.cpus)?);
        }
        Ok(AutoEngine {
            plans,
            threads,
            pools,
            dmas,
        })
    }

    /// The plan for a batch of `bytes`.
    pub fn plan(&self, bytes: u64) -> &CopyPlan {
        let k = bytes.max(1).ilog2().clamp(SMALLEST, LARGEST);
        &self.plans[(k - SMALLEST) as usize]
    }
}

impl CopyEngine for AutoEngine {
    fn name(&self) -> String {
        "auto".into()
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        let bytes: usize = batch.iter().map(CopyOp::len).sum();
        match self.plan(bytes as u64).copier {
            Copier::Thread { engine } => self.threads[&engine].copy(batch),
            Copier::Pool { engine, workers } => self.pools[&engine].copy_with(batch, workers),
            Copier::Dma { engine } => self.dmas[&engine].copy(batch),
        }
    }
}

impl std::fmt::Debug for AutoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoEngine")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}
