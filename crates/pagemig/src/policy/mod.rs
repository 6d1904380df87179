//! Policy: which engine, worker count and placement a migration uses, and the cost model behind it.
//!
//! [`Planner`] is a pure function of the topology, a [`CostModel`] (measured by [`calibrate`]),
//! the [`Resources`] this process may use and the size of the job; each plan says why. It never
//! picks a way of copying the model predicts slower than one thread, the default without a model.

mod auto;
mod calibrate;
mod model;

use serde::Serialize;

pub use auto::{AutoEngine, Move, SizeCheck};
pub use calibrate::{
    CalibrateError, CalibrateOptions, Effort, IDLE_POOLS, Step, Turn, calibrate, check_choices,
    turns, worker_counts,
};
pub use model::{CopyPoint, CostModel, KernelPoint, MachineId, ModelError, Saturation};

use crate::account::median;
use crate::cgroup::Cgroup;
use crate::copy::{Copier, EngineKind, Placement, PlacementError, Route};
use crate::migrate::{Memory, PathChoice, Plan, Request, Scan, Threads};
use crate::process::Process;
use crate::sys::{self, SysError};
use crate::topology::{CpuId, CpuSet, NodeId, Topology};

/// Bytes each extra `move_pages` thread gets at least when the kernel path is not calibrated:
/// enough that starting the thread and sharing the process's locks are a small part of it.
pub const DEFAULT_KERNEL_BYTES_PER_THREAD: u64 = 64 << 20;

/// Options within this share of the best predicted bandwidth count as equal: the one with the
/// fewest threads wins, since bandwidth that stops growing is not worth more CPUs.
const NEAR_BEST: f64 = 0.98;

/// Starts the reasons for what the planner would choose where the user fixed the choice.
const OWN: &str = "the planner's own choice: ";

/// One thread copying with `memcpy`: the baseline a plan must not lose to, and the default.
const MEMCPY: Copier = Copier::Thread {
    engine: EngineKind::Memcpy,
};

/// Among (option, GB/s), the fewest-threaded option predicted within [`NEAR_BEST`] of the best.
fn fewest_near_best<T: Copy>(
    options: impl Iterator<Item = (T, f64)>,
    threads: impl Fn(&T) -> usize,
) -> Option<(T, f64)> {
    let options: Vec<(T, f64)> = options.collect();
    let best = options
        .iter()
        .map(|o| o.1)
        .fold(f64::NEG_INFINITY, f64::max);
    options
        .into_iter()
        .filter(|o| o.1 >= best * NEAR_BEST)
        .min_by(|a, b| threads(&a.0).cmp(&threads(&b.0)).then(b.1.total_cmp(&a.1)))
}

/// Where [`Placement::SpreadL3`] puts workers.
const SPREAD: &str = "workers spread over L3 domains, one per domain before two in any";

/// Where workers near the `which` node `node` go.
fn near(node: Option<NodeId>, which: &str) -> String {
    match node {
        Some(n) => {
            format!("workers on the {which} node {n}'s CPUs first, spread over its L3 domains")
        }
        None => format!("{SPREAD} (the {which} node is not known)"),
    }
}

/// Why the workers run where the user's placement `p` puts them along `route`.
fn placement_reason(p: &Placement, route: Route) -> String {
    let how = match p {
        Placement::SpreadL3 => SPREAD.to_string(),
        Placement::NearDst => near(route.to, "target"),
        Placement::NearSrc => near(route.from, "source"),
        Placement::Explicit(_) => return format!("placement {p}: chosen by the user"),
    };
    format!("placement {p}: chosen by the user: {how}")
}

/// The CPUs this process may use for migration work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    /// The affinity mask.
    pub allowed: CpuSet,
    /// The cgroup CPU quota (`cpu.max`) in CPUs, if one is set.
    pub cpu_quota: Option<f64>,
    /// Other runnable tasks on the machine right now, in CPUs.
    pub busy_cpus: f64,
}

impl Resources {
    /// This process's affinity mask, cgroup quota and the machine's current load (median of a
    /// few samples of /proc/loadavg).
    pub fn detect() -> Result<Self, SysError> {
        Self::sampled(5)
    }

    /// As [`Resources::detect`] with one sample of the load, for callers that cannot wait.
    pub fn snapshot() -> Result<Self, SysError> {
        Self::sampled(1)
    }

    fn sampled(samples: usize) -> Result<Self, SysError> {
        let allowed = sys::allowed_cpus()?;
        let cpu_quota = Cgroup::of(Process::Current)
            .ok()
            .and_then(|c| c.cpu_quota());
        let samples: Vec<f64> = (0..samples)
            .filter_map(|i| {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let text = std::fs::read_to_string("/proc/loadavg").ok()?;
                parse_running(&text)
            })
            .collect();
        Ok(Resources {
            allowed,
            cpu_quota,
            busy_cpus: median(samples).unwrap_or(0.0),
        })
    }
}

/// Runnable tasks other than the reader, from /proc/loadavg (`0.21 1.24 1.54 3/79 2994`).
fn parse_running(text: &str) -> Option<f64> {
    let field = text.split_whitespace().nth(3)?;
    let running: f64 = field.split_once('/')?.0.parse().ok()?;
    Some((running - 1.0).max(0.0))
}

/// What is being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Bytes per batch (copy) or per migration (kernel path).
    pub bytes: u64,
    /// Source and target nodes, when known.
    pub route: Route,
}

/// How to copy one batch of a given size, and why (the auto engine keeps one per batch size).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyPlan {
    /// The copier.
    pub copier: Copier,
    /// CPUs of the pool workers, in order (empty on the calling thread).
    pub cpus: Vec<CpuId>,
    /// Predicted GB/s, when a model was used.
    pub predicted_gbps: Option<f64>,
    /// Predicted GB/s of one thread (the baseline the plan must not lose to).
    pub baseline_gbps: Option<f64>,
    /// Why.
    pub why: Vec<String>,
}

/// Chooses engines, workers and placement.
#[derive(Debug, Clone)]
pub struct Planner<'a> {
    topology: &'a Topology,
    model: Option<&'a CostModel>,
    resources: Resources,
    /// Why the model is not used, when one was given but does not fit.
    model_note: Option<String>,
    /// Pick a DMA engine over a faster CPU plan, to save CPU time.
    prefer_dma: bool,
    /// Whether the remap path can run here, and why not.
    remap: Result<(), String>,
}

impl<'a> Planner<'a> {
    /// A planner for this topology and resources; a model measured on another machine is set
    /// aside (and the plans say so).
    pub fn new(topology: &'a Topology, model: Option<&'a CostModel>, resources: Resources) -> Self {
        let mismatch = model.and_then(|m| m.mismatch(&MachineId::of(topology)));
        Planner {
            topology,
            model: if mismatch.is_some() { None } else { model },
            resources,
            model_note: mismatch.map(|m| format!("saved cost model not used: {m}")),
            prefer_dma: false,
            remap: Err("not known to work here".into()),
        }
    }

    /// Whether the remap path works here (userfaultfd write-protect, `/proc/self`), and why
    /// not: without it, [`Planner::plan`] always chooses the kernel path.
    pub fn remap_support(mut self, support: Result<(), String>) -> Self {
        self.remap = support;
        self
    }

    /// Copies with a DMA engine wherever the model has one at least as fast as one CPU thread,
    /// even where CPU workers would be faster: the user trades speed for free CPUs.
    pub fn prefer_dma(mut self, yes: bool) -> Self {
        self.prefer_dma = yes;
        self
    }

    /// The cost model in use.
    pub fn model(&self) -> Option<&CostModel> {
        self.model
    }

    /// The most workers the resources allow, and why.
    pub fn worker_cap(&self) -> (usize, String) {
        let (mut cap, mut why) = self.hard_cap();
        let online = self.topology.online_cpus.len() as f64;
        let idle = ((online - self.resources.busy_cpus).floor() as usize).max(1);
        if idle < cap {
            cap = idle;
            why = format!(
                "{:.0} other runnable task(s) leave {idle} of {online} CPU(s) idle",
                self.resources.busy_cpus
            );
        }
        (cap, why)
    }

    /// The most workers this process may run at all (affinity mask, cgroup `cpu.max`), whatever
    /// the load, and why.
    fn hard_cap(&self) -> (usize, String) {
        let usable = self.usable();
        let mut cap = usable;
        let mut why = format!("{usable} usable CPU(s) in the affinity mask");
        if let Some(q) = self.resources.cpu_quota {
            let by_quota = (q.floor() as usize).max(1);
            if by_quota < cap {
                cap = by_quota;
                why = format!("cgroup cpu.max allows {q:.2} CPU(s)");
            }
        }
        (cap, why)
    }

    /// Online CPUs in the affinity mask (at least one).
    fn usable(&self) -> usize {
        let online = &self.topology.online_cpus;
        self.resources.allowed.intersection(online).len().max(1)
    }

    /// Where workers for `route` go: near the target if it has CPUs, near the source for a
    /// memory-only target, spread over L3 domains when the route is unknown.
    pub fn placement(&self, route: Route) -> (Placement, String) {
        match route.to.and_then(|n| self.topology.node(n)) {
            Some(t) if t.cpus.is_empty() && route.from.is_some() => (
                Placement::NearSrc,
                format!(
                    "node {} has no CPUs (memory-only): workers near the source, spread over its L3 domains",
                    t.id
                ),
            ),
            Some(t) if !t.cpus.is_empty() => (Placement::NearDst, near(Some(t.id), "target")),
            _ => (Placement::SpreadL3, SPREAD.into()),
        }
    }

    /// Every CPU copier the model measured that this process may run, with its predicted GB/s
    /// for `bytes`, fastest first: the alternatives a copy may try when its plan does not
    /// deliver. They may use more workers than the load leaves idle CPUs: runnable tasks share
    /// CPUs rather than take them. Empty without a model.
    pub fn ranked_copiers(&self, bytes: u64) -> Vec<(Copier, f64)> {
        let Some(model) = self.model else {
            return Vec::new();
        };
        let (cap, _) = self.hard_cap();
        let mut ranked: Vec<(Copier, f64)> = model
            .copiers()
            .into_iter()
            .filter(|c| c.cpu_engine().is_some() && c.threads() <= cap)
            .filter_map(|c| model.predict_copy(c, bytes).map(|g| (c, g)))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked
    }

    /// CPUs for `workers` pool workers copying along `route`, placed as [`Planner::plan_copy`]
    /// places them.
    pub fn worker_cpus(&self, route: Route, workers: usize) -> Result<Vec<CpuId>, PlacementError> {
        let placement = self.placement(route).0;
        placement.choose(self.topology, route, &self.resources.allowed, workers)
    }

    /// How to copy a batch of `job.bytes`.
    pub fn plan_copy(&self, job: Job) -> Result<CopyPlan, PlacementError> {
        self.plan_copy_with(job, "")
    }

    /// As [`Planner::plan_copy`], with `own` (empty or [`OWN`]) before the reasons for its
    /// copier: its prediction (or default), the load's cap, the DMA preference.
    fn plan_copy_with(&self, job: Job, own: &str) -> Result<CopyPlan, PlacementError> {
        let (cap, cap_why) = self.worker_cap();
        let mut why: Vec<String> = self.model_note.iter().cloned().collect();
        let Some(model) = self.model else {
            why.push(format!(
                "{own}no cost model: one thread (run `pagemig calibrate` to measure)"
            ));
            return Ok(CopyPlan {
                copier: MEMCPY,
                cpus: Vec::new(),
                predicted_gbps: None,
                baseline_gbps: None,
                why,
            });
        };
        let predict = |c: Copier| model.predict_copy(c, job.bytes);
        let baseline = predict(MEMCPY);
        let best = fewest_near_best(
            model
                .copiers()
                .into_iter()
                .filter(|c| c.threads() <= cap)
                .filter_map(|c| predict(c).map(|g| (c, g))),
            // The calling thread before one pool worker: same CPUs, no hand-off.
            |c| 2 * c.threads() + usize::from(matches!(c, Copier::Pool { .. })),
        );
        let (mut copier, mut gbps) = match (best, baseline) {
            (Some((c, g)), Some(b)) if g >= b => (c, g),
            _ => (MEMCPY, baseline.unwrap_or(0.0)),
        };
        if self.prefer_dma && copier.threads() > 0 {
            // The fastest DMA engine that is not slower than one CPU thread, even if the CPU
            // plan is faster: its copy threads are freed.
            let dma = model
                .copiers()
                .into_iter()
                .filter(|c| matches!(c, Copier::Dma { .. }))
                .filter_map(|c| predict(c).map(|g| (c, g)))
                .filter(|&(_, g)| baseline.is_some_and(|b| g >= b))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match dma {
                Some((d, g)) => {
                    let cpu_ms = copier.threads() as f64 * job.bytes as f64 / (gbps * 1e9) * 1e3;
                    why.push(format!(
                        "{own}prefer DMA: {d} ({g:.2} GB/s) instead of {copier} ({gbps:.2} GB/s), freeing {} copy thread(s), about {cpu_ms:.3} ms of CPU per batch",
                        copier.threads()
                    ));
                    (copier, gbps) = (d, g);
                }
                None => why.push(format!(
                    "{own}prefer DMA: no DMA engine measured at least as fast as one CPU thread for this size; the CPU plan stays"
                )),
            }
        }
        why.push(format!(
            "{own}{copier}: predicted {gbps:.2} GB/s for {} KiB, one-thread memcpy {:.2} GB/s",
            job.bytes >> 10,
            baseline.unwrap_or(0.0)
        ));
        let more = model
            .copiers()
            .into_iter()
            .filter(|c| c.threads() > cap)
            .filter_map(predict)
            .any(|g| g > gbps);
        if more {
            why.push(format!(
                "{own}more workers would be faster, but at most {cap}: {cap_why}"
            ));
        }
        let cpus = match copier {
            Copier::Thread { .. } | Copier::Dma { .. } => Vec::new(),
            Copier::Pool { workers, .. } => {
                why.push(self.placement(job.route).1);
                self.worker_cpus(job.route, workers)?
            }
        };
        Ok(CopyPlan {
            copier,
            cpus,
            predicted_gbps: Some(gbps),
            baseline_gbps: baseline,
            why,
        })
    }

    /// How many threads call `move_pages` for a migration of `job.bytes` in calls of
    /// `batch_bytes`, and where they run.
    pub fn plan_kernel(&self, job: Job, batch_bytes: u64) -> Result<Plan, PlacementError> {
        self.plan_kernel_as(job, batch_bytes, Threads::Auto, None, "")
    }

    /// As [`Planner::plan_kernel`], with the thread count and placement the user fixed, where
    /// they did (`source` names the setting in the reasons, as `--threads`).
    pub fn plan_kernel_as(
        &self,
        job: Job,
        batch_bytes: u64,
        threads: Threads,
        placement: Option<&Placement>,
        source: &str,
    ) -> Result<Plan, PlacementError> {
        let fixed = matches!(threads, Threads::Count(_));
        let own = if fixed { OWN } else { "" };
        let (cap, cap_why) = self.worker_cap();
        // One pinned thread per CPU: a CPU list the user gave holds no more than its CPUs.
        let listed = match placement {
            Some(p @ Placement::Explicit(cpus)) => Some((cpus.len().max(1), p)),
            _ => None,
        };
        let (cap, cap_why) = match listed {
            Some((k, p)) if k < cap => {
                (k, format!("placement {p} has {k} CPU(s), one thread each"))
            }
            _ => (cap, cap_why),
        };
        let calls = job.bytes.div_ceil(batch_bytes.max(1)).max(1);
        let cap = cap.min(usize::try_from(calls).unwrap_or(usize::MAX));
        let mut why: Vec<String> = self.model_note.iter().cloned().collect();
        let measured = self.model.map(|m| (m, m.kernel_threads()));
        let (planned, predicted) = match measured.filter(|(_, counts)| !counts.is_empty()) {
            Some((model, counts)) => {
                let one = model.predict_kernel(1, job.bytes);
                let best = fewest_near_best(
                    counts
                        .into_iter()
                        .filter(|&t| t <= cap)
                        .filter_map(|t| model.predict_kernel(t, job.bytes).map(|g| (t, g))),
                    |&t| t,
                )
                .filter(|&(_, g)| one.is_none_or(|o| g >= o))
                .unwrap_or((1, one.unwrap_or(0.0)));
                why.push(format!(
                    "{own}{} thread(s): predicted {:.2} GB/s for {} MiB (one thread {:.2} GB/s)",
                    best.0,
                    best.1,
                    job.bytes >> 20,
                    one.unwrap_or(0.0)
                ));
                (best.0, Some(best.1))
            }
            None => {
                let t = (job.bytes / DEFAULT_KERNEL_BYTES_PER_THREAD).clamp(1, cap as u64) as usize;
                why.push(format!(
                    "{own}kernel path not calibrated: one thread per {} MiB, {t} thread(s) (run `pagemig calibrate` on a machine with two nodes to measure)",
                    DEFAULT_KERNEL_BYTES_PER_THREAD >> 20
                ));
                (t, None)
            }
        };
        if planned == cap && cap > 1 {
            why.push(format!(
                "{own}at most {cap}: {cap_why} (and one thread per call)"
            ));
        }
        let (planned_placement, place_why) = self.placement(job.route);
        let cpus =
            planned_placement.choose(self.topology, job.route, &self.resources.allowed, planned)?;
        // Where the user chose the placement, the planner's would contradict it.
        why.push(match placement {
            Some(_) => format!("{OWN}{place_why}"),
            None => place_why,
        });
        let page = sys::base_page_size() as u64;
        let batch = usize::try_from(batch_bytes / page)
            .unwrap_or(usize::MAX)
            .max(1);
        let mut choice = Plan {
            placement: Some(planned_placement),
            predicted_gbps: predicted,
            baseline_gbps: self.model.and_then(|m| m.predict_kernel(1, job.bytes)),
            why,
            ..Plan::parallel(cpus, batch)
        };
        let mut count = choice.cpus.len();
        if let Threads::Count(n) = threads {
            // One pinned thread per CPU: more than the usable CPUs (or those the user listed)
            // would only queue on them.
            count = n.min(self.usable());
            let asked = if let Some((k, p)) = listed.filter(|&(k, _)| k < count) {
                count = k;
                format!(
                    "{count} thread(s): {source} {n}, but placement {p} has {count} CPU(s), one thread each"
                )
            } else if count < n {
                format!(
                    "{count} thread(s): {source} {n}, but only {count} CPU(s) may be used, one thread each"
                )
            } else {
                format!("{n} thread(s): {source} {n}")
            };
            // What the model predicts for the user's count, not for the one it would choose.
            choice.predicted_gbps = self.model.and_then(|m| m.predict_kernel(count, job.bytes));
            let predicted = match choice.predicted_gbps {
                Some(g) => format!("{count} thread(s): predicted {g:.2} GB/s"),
                None => format!("{count} thread(s): not calibrated, no prediction"),
            };
            choice.why.splice(0..0, [asked, predicted]);
            choice.threads_fixed = true;
        }
        let placement = match placement {
            Some(p) => {
                choice.why.push(placement_reason(p, job.route));
                Some(p.clone())
            }
            None if count != choice.cpus.len() => Some(self.placement(job.route).0),
            None => None,
        };
        if let Some(p) = placement {
            choice.cpus = p.choose(self.topology, job.route, &self.resources.allowed, count)?;
            choice.placement = Some(p);
        }
        Ok(choice)
    }

    /// The plan of a migration: the path, the threads (and the remap path's copier), their
    /// placement and the batch. The remap path is chosen for the caller's own memory where it
    /// works here and the model does not predict the kernel path faster. Every choice says why.
    pub fn plan(&self, request: &Request<'_>, scan: &Scan) -> Result<Plan, PlacementError> {
        let o = &request.options;
        let from = match request.memory() {
            Memory::Process { from, .. } => from.as_ref().and_then(|f| f.iter().next()),
            Memory::Own(_) => None,
        };
        let route = Route {
            from,
            to: Some(request.to),
        };
        let batch = o.batch();
        let batch_bytes = (batch as u64).saturating_mul(sys::base_page_size() as u64);
        let mut kernel = self.plan_kernel_as(
            Job {
                bytes: scan.bytes_to_move(),
                route,
            },
            batch_bytes,
            o.threads,
            o.placement.as_ref(),
            "--threads",
        )?;
        kernel.batch = batch;
        kernel.max_stall = o.max_stall;
        kernel.move_all = o.move_all;
        kernel.charge = o.charge;
        kernel.verify = o.verify;
        let kernel_because = |why: String| {
            let mut k = kernel.clone();
            k.why.insert(0, format!("the kernel path: {why}"));
            k
        };
        // The first reason the remap path cannot or must not run, if one does.
        let kernel_only = if !matches!(request.memory(), Memory::Own(_)) {
            Some(
                "the pages of a process (the remap path moves only ranges a program hands the library as its own memory)".into(),
            )
        } else if o.path == PathChoice::Kernel {
            Some("asked for".into())
        } else if o.dry_run {
            Some("a dry run: the kernel path counts what would move, and where it is".into())
        } else if o.move_all {
            Some("shared pages are to move too (the remap path moves only private memory)".into())
        } else {
            (self.remap.as_ref().err()).map(|e| format!("the remap path cannot run here: {e}"))
        };
        if let Some(why) = kernel_only {
            return Ok(kernel_because(why));
        }
        let fixed = matches!(o.threads, Threads::Count(_));
        let own = if fixed || o.engine.is_some() { OWN } else { "" };
        let mut copy = self.plan_copy_with(
            Job {
                bytes: batch_bytes,
                route,
            },
            own,
        )?;
        if let Threads::Count(n) = o.threads {
            let planned_pool = matches!(copy.copier, Copier::Pool { .. });
            let (cap, cap_why) = self.hard_cap();
            let workers = n.min(cap);
            let engine = copy.copier.cpu_engine().unwrap_or(EngineKind::Memcpy);
            let user_pool = workers > 1;
            (copy.copier, copy.cpus) = if user_pool {
                let cpus = self.worker_cpus(route, workers)?;
                (Copier::Pool { engine, workers }, cpus)
            } else {
                (Copier::Thread { engine }, Vec::new())
            };
            // The planner's pool's placement, its last reason, is its own choice where the
            // user's count has no workers.
            if let (true, false, Some(place)) = (planned_pool, user_pool, copy.why.last_mut()) {
                *place = format!("{OWN}{place}");
            }
            copy.why.push(if workers < n {
                format!("{workers} copy thread(s): --threads {n}, but at most {cap}: {cap_why}")
            } else {
                format!("{workers} copy thread(s): --threads {n}")
            });
            // The user's workers, where the planner had none, are placed as it would place them.
            if user_pool && !planned_pool {
                copy.why.push(self.placement(route).1);
            }
        }
        // The user's placement puts the copy's workers; a CPU list holds one worker per CPU.
        let (mut placement, mut capped) = (None, false);
        if let Some(p) = &o.placement {
            if let Copier::Pool { engine, workers } = copy.copier {
                let planned = self.placement(route).1;
                for w in copy.why.iter_mut().filter(|w| **w == planned) {
                    *w = format!("{OWN}{w}");
                }
                let listed = match p {
                    Placement::Explicit(cpus) => cpus.len().max(1),
                    _ => workers,
                };
                capped = listed < workers;
                if capped {
                    // The planner's pool is its own choice now, not the plan.
                    let planned = format!("{}: predicted", copy.copier);
                    for w in copy.why.iter_mut().filter(|w| w.starts_with(&planned)) {
                        *w = format!("{OWN}{w}");
                    }
                    copy.why.push(format!(
                        "{listed} copy thread(s): placement {p} has {listed} CPU(s), one worker each"
                    ));
                }
                let workers = workers.min(listed);
                copy.copier = Copier::Pool { engine, workers };
                copy.cpus = p.choose(self.topology, route, &self.resources.allowed, workers)?;
                copy.why.push(placement_reason(p, route));
                placement = Some(p.clone());
            } else {
                let on = match copy.copier {
                    Copier::Dma { engine } => format!("the DMA engine {engine}"),
                    _ => "the calling thread".into(),
                };
                copy.why
                    .push(format!("placement {p}: not used: the copy runs on {on}"));
            }
        }
        if let Some(engine) = o.engine {
            copy.copier = match copy.copier {
                Copier::Pool { workers, .. } => Copier::Pool { engine, workers },
                _ => Copier::Thread { engine },
            };
            copy.why
                .push(format!("engine {engine}: chosen by the user"));
        }
        if fixed || o.engine.is_some() || capped {
            // What the model predicts for the user's copier, not for the one it would choose.
            copy.predicted_gbps = self
                .model
                .and_then(|m| m.predict_copy(copy.copier, batch_bytes));
            copy.why.push(match copy.predicted_gbps {
                Some(g) => format!("{}: predicted {g:.2} GB/s", copy.copier),
                None => format!("{}: not calibrated, no prediction", copy.copier),
            });
        }
        if let (Some(c), Some(k)) = (copy.predicted_gbps, kernel.predicted_gbps)
            && k > c
        {
            return Ok(kernel_because(format!(
                "predicted {k:.2} GB/s, faster than the remap path's copy ({c:.2} GB/s)"
            )));
        }
        let mut why = vec![match (copy.predicted_gbps, kernel.predicted_gbps) {
            (Some(c), Some(k)) => format!(
                "the remap path: the caller's own memory, userfaultfd write-protect works, its copy is predicted at {c:.2} GB/s against the kernel path's {k:.2} GB/s"
            ),
            _ => "the remap path: the caller's own memory and userfaultfd write-protect works (no measurement of the kernel path says it is faster)".into(),
        }];
        why.extend(copy.why);
        let placement = placement.or_else(|| {
            matches!(copy.copier, Copier::Pool { .. }).then(|| self.placement(route).0)
        });
        Ok(Plan {
            copier: Some(copy.copier),
            cpus: copy.cpus,
            placement,
            charge: o.charge,
            verify: o.verify,
            predicted_gbps: copy.predicted_gbps,
            threads_fixed: fixed,
            baseline_gbps: copy.baseline_gbps,
            why,
            ..Plan::remap(batch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_parses() {
        assert_eq!(parse_running("0.21 1.24 1.54 3/79 2994\n"), Some(2.0));
        assert_eq!(parse_running("0.21 1.24 1.54 1/79 2994\n"), Some(0.0));
        assert_eq!(parse_running("garbage"), None);
    }
}
