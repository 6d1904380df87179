//! Measuring the cost model: copy engines across batch sizes and worker counts, and `move_pages`
//! across migration sizes and thread counts where the machine has two nodes with memory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::auto::{AutoEngine, MOST_WINDOWS, SizeCheck, WINDOW, batches_per_figure};
use super::model::{CopyPoint, CostModel, KernelPoint, MachineId, Saturation};
use super::{Planner, Resources};
use crate::account::median;
use crate::copy::Copier;
use crate::copy::dma::{self, DmaKind};
use crate::copy::{
    CopyEngine, CopyError, CopyOp, CpuEngine, EngineKind, Placement, PlacementError, Pool, Route,
};
use crate::migrate::{MigrateError, Plan, kernel};
use crate::process::Process;
use crate::sys::{self, Mapping, SysError};
use crate::topology::{self, NodeId, NodeSet, Topology};
use crate::workers::Workers;

/// Longer than pool workers poll for their next task before they sleep: the pause before each
/// timed sample, so that it does not pay for the previous one's polling workers.
pub const IDLE_POOLS: Duration = Duration::from_micros(300);

/// How long calibration takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effort {
    /// Batches up to 1 MiB, 3 samples (three times as many up to 64 KiB, twice above, as for
    /// every effort): well under a second, for commands that need a model and find none saved
    /// (flat beyond 1 MiB).
    Builtin,
    /// Batches up to 16 MiB, 5 samples (more for small batches): a few seconds.
    Quick,
    /// Batches up to 64 MiB, 7 samples (more for small batches), larger `move_pages` migrations.
    #[default]
    Full,
}

/// What to measure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalibrateOptions {
    /// How long to take.
    pub effort: Effort,
    /// Node whose memory the copy measurements use [default: the first node with memory and
    /// CPUs].
    pub node: Option<NodeId>,
    /// Skip the `move_pages` measurements.
    pub no_kernel_path: bool,
}

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// No node has memory.
    #[error("no node has memory to calibrate with")]
    NoMemory,
    /// The node has too little free memory for the buffers.
    #[error("node {node} has {free_mib} MiB free; calibration needs {need_mib} MiB")]
    TooLittleMemory {
        /// The node.
        node: NodeId,
        /// Free MiB.
        free_mib: u64,
        /// Needed MiB.
        need_mib: u64,
    },
    /// A buffer could not be mapped or bound.
    #[error("calibration buffer")]
    Buffer(#[source] SysError),
    /// Workers could not be placed.
    #[error("placing calibration workers")]
    Placement(#[from] PlacementError),
    /// Workers could not be started.
    #[error("starting calibration workers")]
    Pool(#[source] CopyError),
    /// A copy failed.
    #[error("calibration copy")]
    Copy(#[from] CopyError),
    /// A migration failed.
    #[error("calibrating move_pages")]
    Migrate(#[from] MigrateError),
    /// The engine that checks the model's choices could not start.
    #[error("checking the model's choices")]
    Check(#[source] CopyError),
}

/// One step of calibration, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many measurements will be made.
    Planned(u64),
    /// One more measurement is done.
    Done,
}

struct Budget {
    reps: usize,
    sample_bytes: usize,
    working_set: usize,
    copy_sizes: Vec<u64>,
    kernel_sizes: Vec<u64>,
}

impl Budget {
    fn new(effort: Effort) -> Self {
        let mib = 1u64 << 20;
        // 4 KiB, 16 KiB … up to the largest batch.
        let sizes = |largest: u64| {
            std::iter::successors(Some(4096u64), |s| Some(s * 4))
                .take_while(|&s| s <= largest)
                .collect()
        };
        // Repetitions, MiB per sample, MiB of working set, largest batch and `move_pages` sizes.
        let (reps, sample, set, largest, kernel): (usize, usize, usize, u64, &[u64]) = match effort
        {
            Effort::Builtin => (3, 2, 16, 1, &[4, 32]),
            Effort::Quick => (5, 16, 64, 16, &[4, 64]),
            Effort::Full => (7, 32, 128, 64, &[1, 16, 256]),
        };
        Budget {
            reps,
            sample_bytes: sample << 20,
            working_set: set << 20,
            copy_sizes: sizes(largest * mib),
            kernel_sizes: kernel.iter().map(|k| k * mib).collect(),
        }
    }
}

/// Worker counts worth measuring with `max` CPUs: 1, 2, 4 … and `max`.
pub fn worker_counts(max: usize) -> Vec<usize> {
    let mut c: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n < max)
        .collect();
    c.push(max.max(1));
    c
}

/// The figure a copier is credited with: its lower quartile less half its interquartile range,
/// never below the slowest sample. Pessimistic on purpose: an engine fast only sometimes (as
/// `rep movsb` and pool workers on a busy virtual machine) is taken at what it reliably does.
pub(super) fn pessimistic(mut samples: Vec<f64>) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let (&lowest, q1, q3) = (
        samples.first()?,
        samples[(n - 1) / 4],
        samples[(3 * (n - 1)).div_ceil(4)],
    );
    Some((q1 - (q3 - q1) / 2.0).max(lowest))
}

/// One turn of interleaved sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The candidate (a copier, a bench column) that measures in this turn.
    pub candidate: usize,
    /// 0, 1, 2 … in the order the turns are taken: which stretch of the working set the turn
    /// copies, so that no turn copies what the turn before left in the cache.
    pub number: usize,
}

/// The turns of `reps` rounds over `candidates`: each candidate once a round, in reverse order
/// every other round, so that no candidate always inherits the same one's cache state (dirty
/// lines to write back), and a burst of noise is spread over every candidate.
pub fn turns(reps: usize, candidates: usize) -> impl Iterator<Item = Turn> {
    (0..reps.saturating_mul(candidates)).map(move |number| {
        let (round, k) = (number / candidates, number % candidates);
        let candidate = if round % 2 == 0 {
            k
        } else {
            candidates - 1 - k
        };
        Turn { candidate, number }
    })
}

/// Samples per copier at a batch size: three times the effort's count up to 64 KiB, where noise
/// moves the figures more and they decide the most common migrations; twice above, where pool
/// workers on a virtual machine stall now and then.
fn reps_at(reps: usize, bytes: u64) -> usize {
    reps * if bytes <= 64 << 10 { 3 } else { 2 }
}

fn buffer(len: usize, node: NodeId) -> Result<Mapping, CalibrateError> {
    let mut m = Mapping::anonymous(len).map_err(CalibrateError::Buffer)?;
    m.bind(&NodeSet::from_iter([node]))
        .map_err(CalibrateError::Buffer)?;
    m.as_mut_slice().fill(0x5A);
    Ok(m)
}

/// The copy of batch `i` of `len` bytes, batches taking turns over the buffers.
fn slot<'a>(src: &'a Mapping, dst: &'a mut Mapping, len: usize, i: usize) -> CopyOp<'a> {
    let off = i % (src.len() / len) * len;
    CopyOp::new(
        &src.as_slice()[off..off + len],
        &mut dst.as_mut_slice()[off..off + len],
    )
}

/// Measures copy engines (and `move_pages` where two nodes have memory) on this machine.
pub fn calibrate(
    topology: &Topology,
    allowed: &crate::topology::CpuSet,
    options: &CalibrateOptions,
    worker_set: &Arc<Workers>,
    progress: &dyn Fn(Step),
) -> Result<CostModel, CalibrateError> {
    let mut budget = Budget::new(options.effort);
    let memory = topology.memory_nodes();
    let node = options
        .node
        .or_else(|| {
            topology
                .nodes
                .iter()
                .find(|n| n.has_memory && !n.cpus.is_empty())
                .map(|n| n.id)
        })
        .or_else(|| memory.iter().next())
        .ok_or(CalibrateError::NoMemory)?;
    let free_bytes = |n| topology::node_free_bytes(n).unwrap_or(0);
    // Both buffers, and a quarter more.
    let need = 5 * budget.working_set as u64 / 2;
    let free = free_bytes(node);
    if free < need {
        return Err(CalibrateError::TooLittleMemory {
            node,
            free_mib: free >> 20,
            need_mib: need >> 20,
        });
    }
    let usable = allowed.intersection(&topology.online_cpus).len().max(1);
    let route = Route {
        from: Some(node),
        to: Some(node),
    };
    let cpus = Placement::NearDst.choose(topology, route, allowed, usable)?;
    let engines: Vec<CpuEngine> = EngineKind::ALL
        .into_iter()
        .filter_map(|k| CpuEngine::new(k).ok())
        .collect();
    let workers = worker_counts(usable);
    // DMA engines that can run here are measured beside the CPU ones.
    let dmas: Vec<(DmaKind, dma::Engine)> = dma::available()
        .into_iter()
        .filter_map(|(k, e)| e.ok().map(|e| (k, e)))
        .collect();
    let kernel_route = (!options.no_kernel_path)
        .then(|| memory.iter().find(|&n| n != node).map(|to| (node, to)))
        .flatten();
    let room = kernel_route.map_or(0, |(a, b)| free_bytes(a).min(free_bytes(b)) / 2);
    budget.kernel_sizes.retain(|&s| s <= room);
    progress(Step::Planned(
        (budget.copy_sizes.len() * (engines.len() * (1 + workers.len()) + dmas.len())
            + budget.kernel_sizes.len() * workers.len()) as u64,
    ));

    let src = buffer(budget.working_set, node)?;
    let mut dst = buffer(budget.working_set, node)?;
    let pools = engines
        .iter()
        .map(|e| Pool::new(worker_set, *e, &cpus))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CalibrateError::Pool)?;
    let mut copiers = Vec::new();
    for (e, engine) in engines.iter().enumerate() {
        let engine = engine.kind();
        copiers.push((e, Copier::Thread { engine }));
        copiers.extend(
            workers
                .iter()
                .map(|&workers| (e, Copier::Pool { engine, workers })),
        );
    }
    for (d, (kind, _)) in dmas.iter().enumerate() {
        copiers.push((d, Copier::Dma { engine: *kind }));
    }
    let mut copy = Vec::new();
    for &bytes in &budget.copy_sizes {
        let len = bytes as usize;
        let calls = budget.sample_bytes.div_ceil(len);
        let mut step = |e: usize, copier: Copier, i: usize| {
            let op = [slot(&src, &mut dst, len, i)];
            match copier {
                Copier::Thread { .. } => engines[e].copy(&op),
                Copier::Pool { workers, .. } => pools[e].copy_with(&op, workers),
                Copier::Dma { .. } => dmas[e].1.copy(&op),
            }
            .map(|_| ())
        };
        let reps = reps_at(budget.reps, bytes);
        let mut samples = vec![Vec::with_capacity(reps); copiers.len()];
        for (e, copier) in &copiers {
            step(*e, *copier, 0)?;
        }
        for Turn { candidate, number } in turns(reps, copiers.len()) {
            let (e, copier) = copiers[candidate];
            // The previous copier's pool workers poll before they sleep: let them sleep.
            std::thread::sleep(IDLE_POOLS);
            let t = Instant::now();
            for i in 0..calls {
                step(e, copier, 1 + number * calls + i)?;
            }
            samples[candidate].push(bytes as f64 * calls as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        for ((_, copier), s) in copiers.iter().zip(samples) {
            copy.push(CopyPoint {
                copier: *copier,
                bytes,
                median_gbps: median(s.clone()),
                gbps: pessimistic(s).unwrap_or(0.0),
            });
            progress(Step::Done);
        }
    }
    let pool_handoff_us = handoff_us(&pools[0], &src, &mut dst)?;
    drop((src, dst, pools));

    let mut kernel_path = Vec::new();
    if let Some((a, b)) = kernel_route {
        for &bytes in &budget.kernel_sizes {
            let mut buf = buffer(bytes as usize, a)?;
            buf.populate();
            let start = buf.as_ptr() as usize;
            let pages: Vec<usize> = (start..start + bytes as usize)
                .step_by(sys::base_page_size())
                .collect();
            let mut at = a;
            for &threads in &workers {
                let plan = Plan::parallel(cpus[..threads].to_vec(), pages.len().div_ceil(threads));
                let mut status = vec![0; pages.len()];
                // Back and forth between the nodes: one warm-up move, then the samples.
                let mut samples = Vec::new();
                for r in 0..=budget.reps.min(3) {
                    at = if at == a { b } else { a };
                    let t = Instant::now();
                    let to = vec![at; pages.len()];
                    kernel::move_pages(
                        Process::Current,
                        &pages,
                        &to,
                        &mut status,
                        &plan,
                        worker_set,
                        &|_| {},
                    )?;
                    samples.extend((r > 0).then(|| bytes as f64 / t.elapsed().as_secs_f64() / 1e9));
                }
                kernel_path.push(KernelPoint {
                    threads,
                    bytes,
                    gbps: median(samples).unwrap_or(0.0),
                });
                progress(Step::Done);
            }
        }
    }

    let largest = budget.copy_sizes.last().copied().unwrap_or(0);
    // Per engine, the fewest workers within 90% of its best at the largest batch.
    let saturation = engines
        .iter()
        .filter_map(|e| {
            let at_largest: Vec<(usize, f64)> = (copy.iter().filter(|p| p.bytes == largest))
                .filter_map(|p| match p.copier {
                    Copier::Pool { engine, workers } if engine == e.kind() => {
                        Some((workers, p.gbps))
                    }
                    _ => None,
                })
                .collect();
            let best = at_largest.iter().map(|p| p.1).fold(0.0, f64::max);
            let near = at_largest.iter().filter(|p| p.1 >= 0.9 * best);
            let &(workers, gbps) = near.min_by_key(|p| p.0)?;
            Some(Saturation {
                engine: e.kind(),
                workers,
                gbps,
                best_gbps: best,
            })
        })
        .collect();
    Ok(CostModel {
        version: CostModel::VERSION,
        machine: MachineId::of(topology),
        kernel: topology::kernel_release(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        effort: options.effort,
        copy,
        kernel_path,
        saturation,
        observed: Vec::new(),
        observed_kernel: Vec::new(),
        pool_handoff_us: Some(pool_handoff_us),
    })
}

/// Checks the choices a model makes here: an [`AutoEngine`] planned from `model` copies batches
/// of every calibrated size long enough to try the alternatives, and what it measured is learned
/// into `model` ([`CostModel::learn`]). Returns what was checked.
pub fn check_choices(
    topology: &Topology,
    model: &mut CostModel,
    resources: Resources,
    options: &CalibrateOptions,
    workers: &Arc<Workers>,
) -> Result<Vec<SizeCheck>, CalibrateError> {
    let budget = Budget::new(options.effort);
    let node = options
        .node
        .or_else(|| topology.memory_nodes().iter().next())
        .ok_or(CalibrateError::NoMemory)?;
    let route = Route {
        from: Some(node),
        to: Some(node),
    };
    let planner = Planner::new(topology, Some(model), resources);
    let auto = AutoEngine::new(&planner, route, workers).map_err(CalibrateError::Check)?;
    let src = buffer(budget.working_set, node)?;
    let mut dst = buffer(budget.working_set, node)?;
    for &bytes in &budget.copy_sizes {
        let len = bytes as usize;
        // Enough timed batches for every window the check may need at this size.
        for i in 0..WINDOW * batches_per_figure(len) * MOST_WINDOWS {
            auto.copy(&[slot(&src, &mut dst, len, i)])?;
        }
    }
    model.learn(&auto.observed());
    Ok(auto.checks())
}

/// Median time, in microseconds, of handing a 64-byte copy to an awake pool worker and getting
/// its reply. The caller is held on another CPU where it may: on the worker's CPU it would run
/// the job itself ([`Workers::run`]), with no hand-off to measure.
fn handoff_us(pool: &Pool<CpuEngine>, src: &Mapping, dst: &mut Mapping) -> Result<f64, CopyError> {
    const CALLS: usize = 1000;
    let worker = pool.cpus().first().copied();
    let _elsewhere = sys::allowed_cpus()
        .ok()
        .and_then(|cpus| cpus.iter().find(|&c| Some(c) != worker))
        .and_then(|c| sys::Pinned::here(c).ok());
    let op = [slot(src, dst, 64, 0)];
    pool.copy_with(&op, 1)?;
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        pool.copy_with(&op, 1)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(samples).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erratic_samples_are_taken_low() {
        assert_eq!(pessimistic(vec![]), None);
        assert_eq!(pessimistic(vec![5.0]), Some(5.0));
        // Steady: the lower quartile.
        assert_eq!(pessimistic(vec![10.0, 10.0, 10.0, 10.0, 10.0]), Some(10.0));
        // Fast only sometimes: its median is 12, its best 13, but it is credited with 4.
        let erratic = pessimistic(vec![4.0, 12.0, 13.0, 12.5, 4.5, 12.0, 4.2, 12.2, 12.1]);
        let steady = pessimistic(vec![9.0, 9.2, 9.1, 9.3, 9.0, 9.2, 9.1, 9.0, 9.2]);
        assert!(erratic.unwrap() < steady.unwrap(), "{erratic:?} {steady:?}");
        assert!(erratic.unwrap() >= 4.0);
    }

    #[test]
    fn small_batches_get_more_samples() {
        assert_eq!(reps_at(5, 4096), 15);
        assert_eq!(reps_at(5, 1 << 20), 10);
        assert_eq!(reps_at(5, 16 << 20), 10);
    }

    #[test]
    fn counts_double_up_to_the_cpus() {
        assert_eq!(worker_counts(1), [1]);
        assert_eq!(worker_counts(2), [1, 2]);
        assert_eq!(worker_counts(6), [1, 2, 4, 6]);
        // The doubling stops at the largest power of two instead of overflowing.
        let most = worker_counts(usize::MAX);
        assert_eq!(most.len(), 65);
        assert_eq!(most[63..], [1 << 63, usize::MAX]);
    }

    #[test]
    fn turns_of_more_rounds_than_a_count_holds_do_not_overflow() {
        let first: Vec<Turn> = turns(usize::MAX, 2).take(3).collect();
        let expected =
            [(0, 0), (1, 1), (1, 2)].map(|(candidate, number)| Turn { candidate, number });
        assert_eq!(first, expected);
        assert_eq!(turns(3, 0).count(), 0);
    }
}
