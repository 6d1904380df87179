//! A copy engine that copies each batch the way the planner chose for its size, and checks those
//! choices while it runs.
//!
//! Each batch size (a power of two of bytes) keeps its plan's copier and a few alternatives: the
//! copiers the model says typically do best, and `memcpy` on the calling thread. Batches are
//! timed (small ones in groups, [`batches_per_figure`]) and the median of a window of figures is
//! a copier's measured GB/s. When the copier in use runs more than 10% under what another
//! measured, or else typically does, in two windows in a row, the two take turns until each has a
//! window and the faster is kept: measured under the same conditions, a burst of noise cannot
//! decide. At most [`MAX_TRIALS`] trials per size, then the size settles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CopyPlan, CopyPoint, Job, MEMCPY, Planner};
use crate::account::median;
use crate::copy::Copier;
use crate::copy::dma::{self, DmaKind};
use crate::copy::{CopyEngine, CopyError, CopyOp, CopyStats, CpuEngine, EngineKind, Pool, Route};
use crate::workers::{Workers, lock};

/// Batch sizes planned for: one plan per power of two from 4 KiB to 1 TiB.
const SMALLEST: u32 = 12;
const LARGEST: u32 = 40;

/// A copier measured under this share of another's figure makes the other worth trying.
const SLOWER: f64 = 0.90;
/// Timed batches per judgement: one slow batch (an interrupt, a neighbour's burst) is not enough.
pub const WINDOW: usize = 8;
/// Timed batches per judgement from [`LARGE_FROM`] bytes.
pub const LARGE_WINDOW: usize = 3;
/// Slow windows in a row that start a trial: one slow window can be a burst of noise.
const STRIKES: usize = 2;
/// Batches of at least this many bytes are judged after [`LARGE_WINDOW`] timed batches.
const LARGE_FROM: u64 = 1 << 20;
/// Trials per batch size.
const MAX_TRIALS: usize = 4;
/// Windows a size's check takes at most: per trial, [`STRIKES`] slow windows, a window of each
/// of the two copiers and as many dropped figures after their changes; one more window covers
/// the dropped figure after each trial the challenger won, but the last (`MAX_TRIALS - 1`
/// figures, at most a window).
pub const MOST_WINDOWS: usize = MAX_TRIALS * (STRIKES + 4) + 1;
const _: () = assert!(MAX_TRIALS - 1 <= LARGE_WINDOW && LARGE_WINDOW <= WINDOW);
/// Alternatives per batch size besides the plan's copier and `memcpy` on the calling thread.
const ALTERNATIVES: usize = 2;
/// Batches of at least this many bytes are all timed.
const TIME_ALL_FROM: usize = 256 << 10;
/// Smaller batches are timed in groups of at least this many, one figure a group: timed alone
/// inside a stream, 4 KB non-temporal copies ran at 0.5-0.7 of the stream's rate (Zen 4).
const GROUP: usize = 8;
/// Bytes a group covers at least: a window then spans about half a millisecond of copying, more
/// than a burst of noise.
const GROUP_BYTES: usize = 512 << 10;
/// A group that took this many times as long as its first batch alone would have for its bytes
/// had the caller pause between its batches: its first batch alone is taken instead.
const PAUSED: f64 = 2.0;

/// Batches of `bytes` that make one timed figure: one from [`TIME_ALL_FROM`], a group below.
pub fn batches_per_figure(bytes: usize) -> usize {
    if bytes >= TIME_ALL_FROM {
        1
    } else {
        (GROUP_BYTES / bytes.max(1)).max(GROUP)
    }
}

/// One change of copier made by the check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Move {
    /// The copier it left.
    pub from: Copier,
    /// The copier it took.
    pub to: Copier,
    /// What was measured and expected.
    pub why: String,
}

/// What the check found for one batch size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeCheck {
    /// Batches from this many bytes up to twice as many.
    pub bytes: u64,
    /// The planner's copier.
    pub planned: Copier,
    /// Its predicted GB/s.
    pub predicted_gbps: f64,
    /// The copier batches of this size use now (during a trial, the one the trial challenges).
    pub current: Copier,
    /// Measured GB/s (median of the last window of timed batches) of every copier that ran.
    pub measured: Vec<(Copier, f64)>,
    /// GB/s of every copier that took part in a trial, in the last one it took part in: measured
    /// in turns with the other copier, so under the same conditions. The check decided by
    /// these, and a model learns them ([`AutoEngine::observed`]); a later window can differ.
    pub in_turns: Vec<(Copier, f64)>,
    /// Trials: another copier and the one in use took turns.
    pub trials: usize,
    /// Changes of copier, in order.
    pub moves: Vec<Move>,
}

impl SizeCheck {
    /// The figures measured in turns, where the check replaced the plan's copier by one it
    /// measured faster in a trial with it (not a trial still running); none otherwise.
    fn learned(&self) -> impl Iterator<Item = CopyPoint> + '_ {
        let in_turns = |copier| self.in_turns.iter().any(|m| m.0 == copier);
        let changed =
            self.current != self.planned && in_turns(self.current) && in_turns(self.planned);
        (self.in_turns.iter())
            .filter(move |_| changed)
            .map(|&(copier, gbps)| CopyPoint {
                copier,
                bytes: self.bytes,
                gbps,
                median_gbps: None,
            })
    }
}

struct Candidate {
    copier: Copier,
    /// What the planner planned with (what the copier reliably does).
    predicted: f64,
    /// What the copier typically does: worth a trial when the copier in use delivers less.
    typical: f64,
}

/// A trial: the copier in use and a challenger take turns, figure by figure, until
/// each has a window; a burst of noise then slows both instead of deciding between them.
struct Trial {
    from: usize,
    to: usize,
    /// Timed batches of `from`, then of `to`.
    samples: [Vec<f64>; 2],
    /// What started it.
    why: String,
}

#[derive(Default)]
struct Judge {
    window: Vec<f64>,
    measured: Vec<Option<f64>>,
    in_turns: Vec<Option<f64>>,
    trial: Option<Trial>,
    /// Windows in a row in which the copier in use ran slow.
    slow: usize,
    /// The copier changed: its next figure is dropped.
    warm_up: bool,
    trials: usize,
    moves: Vec<Move>,
}

/// The copiers of one batch size and the check of the one in use.
struct Bucket {
    candidates: Vec<Candidate>,
    /// Timed figures per judgement.
    window: usize,
    /// Batches per group of small ones.
    group_len: usize,
    current: AtomicUsize,
    seen: AtomicUsize,
    settled: AtomicBool,
    judge: Mutex<Judge>,
    /// The small batches' group being timed.
    group: Mutex<Option<Group>>,
    /// Bytes of the group's batches after its first; plain loads and stores, as `seen`.
    group_bytes: AtomicUsize,
}

/// Which batches of a size are timed, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// Not timed.
    No,
    /// Timed alone (a large batch).
    Alone,
    /// The first batch of a group of small ones: timed alone too, and starts the group's clock.
    First,
    /// Inside a group: its bytes count.
    Inside,
    /// The last batch of a group: the group's figure is taken.
    Last,
}

/// A group of small batches being timed.
struct Group {
    start: Instant,
    /// The candidate in use at its start: a group that saw a change of copier is dropped.
    at: usize,
    first_bytes: usize,
    first: Duration,
}

/// GB/s of a group of batches: `bytes` in `elapsed`, or the first batch's (`first_bytes` in
/// `first`) where the group took over [`PAUSED`] times what the first batch's rate gives.
fn group_gbps(bytes: usize, elapsed: Duration, first_bytes: usize, first: Duration) -> f64 {
    let alone = gbps(first_bytes, first);
    if elapsed.as_secs_f64() * alone * 1e9 > PAUSED * bytes as f64 {
        alone
    } else {
        gbps(bytes, elapsed)
    }
}

/// GB/s of `bytes` copied in `time` (a time under a nanosecond counts as one).
fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
}

impl Bucket {
    fn new(candidates: Vec<Candidate>, bytes: u64) -> Self {
        let n = candidates.len();
        Bucket {
            candidates,
            window: if bytes >= LARGE_FROM {
                LARGE_WINDOW
            } else {
                WINDOW
            },
            group_len: batches_per_figure(bytes as usize),
            current: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
            settled: AtomicBool::new(n < 2),
            judge: Mutex::new(Judge {
                measured: vec![None; n],
                in_turns: vec![None; n],
                ..Judge::default()
            }),
            group: Mutex::new(None),
            group_bytes: AtomicUsize::new(0),
        }
    }

    /// Starts with an alternative predicted more than 10% faster than the plan, if one is: only
    /// the load's worker cap keeps a plan from it. The check goes back if it measures slower.
    fn start_above_the_load_cap(&self) {
        let c = &self.candidates;
        if let Some(i) = (1..c.len()).find(|&i| SLOWER * c[i].predicted > c[0].predicted) {
            lock(&self.judge).moves.push(Move {
                from: c[0].copier,
                to: c[i].copier,
                why: format!("predicted {:.2} GB/s against the plan's {:.2}, which the load's worker cap chose: started with it", c[i].predicted, c[0].predicted),
            });
            self.current.store(i, Ordering::Relaxed);
        }
    }

    /// Whether and how to time this batch.
    fn timing(&self, bytes: usize) -> Timing {
        if bytes == 0 || self.settled.load(Ordering::Relaxed) {
            return Timing::No;
        }
        if bytes >= TIME_ALL_FROM {
            return Timing::Alone;
        }
        // A plain load and store, not an atomic add: a lost count under concurrent copies only
        // shifts which batch is timed, and costs no locked instruction per small batch.
        let n = self.seen.load(Ordering::Relaxed);
        self.seen.store(n.wrapping_add(1), Ordering::Relaxed);
        match n % self.group_len {
            0 => Timing::First,
            k if k == self.group_len - 1 => Timing::Last,
            _ => Timing::Inside,
        }
    }

    /// Starts a group with its first batch, `bytes` copied by candidate `at` in `first`.
    fn begin_group(&self, start: Instant, at: usize, bytes: usize, first: Duration) {
        self.group_bytes.store(0, Ordering::Relaxed);
        *lock(&self.group) = Some(Group {
            start,
            at,
            first_bytes: bytes,
            first,
        });
    }

    /// Counts a batch of the group.
    fn add_to_group(&self, bytes: usize) {
        let sum = self.group_bytes.load(Ordering::Relaxed);
        self.group_bytes.store(sum + bytes, Ordering::Relaxed);
    }

    /// Ends the group at its last batch (candidate `at`, done at `end`) and takes in its figure.
    fn end_group(&self, at: usize, end: Instant) {
        let group = lock(&self.group).take();
        if let Some(g) = group.filter(|g| g.at == at) {
            let bytes = g.first_bytes + self.group_bytes.load(Ordering::Relaxed);
            self.record(at, group_gbps(bytes, end - g.start, g.first_bytes, g.first));
        }
    }

    /// Takes in one timed batch of candidate `at`; judges after a window.
    fn record(&self, at: usize, gbps: f64) {
        let mut j = lock(&self.judge);
        if self.settled.load(Ordering::Relaxed) || self.current.load(Ordering::Relaxed) != at {
            return; // timed while another thread changed copier: it belongs to neither window
        }
        if std::mem::take(&mut j.warm_up) {
            return;
        }
        let name = |i: usize| self.candidates[i].copier;
        if let Some(t) = &mut j.trial {
            t.samples[usize::from(at == t.to)].push(gbps);
            if t.samples.iter().any(|s| s.len() < self.window) {
                let other = if at == t.to { t.from } else { t.to };
                self.switch(&mut j, other);
                return;
            }
        }
        // A trial still here has a window of each: decide it.
        if let Some(t) = j.trial.take() {
            let [before, after] = t.samples.map(|s| median(s).unwrap_or(0.0));
            for (i, g) in [(t.from, before), (t.to, after)] {
                j.measured[i] = Some(g);
                j.in_turns[i] = Some(g);
            }
            let keep = if after > before { t.to } else { t.from };
            if keep == t.to {
                j.moves.push(Move {
                    from: name(t.from),
                    to: name(t.to),
                    why: format!(
                        "{}; taking turns: {} {after:.2} GB/s, {} {before:.2}",
                        t.why,
                        name(t.to),
                        name(t.from)
                    ),
                });
            }
            if keep != at {
                self.switch(&mut j, keep);
            }
            if j.trials >= MAX_TRIALS {
                self.settled.store(true, Ordering::Relaxed);
            }
            return;
        }
        j.window.push(gbps);
        if j.window.len() < self.window {
            return;
        }
        let m = median(std::mem::take(&mut j.window)).unwrap_or(0.0);
        j.measured[at] = Some(m);
        let c = &self.candidates;
        // The fastest other copier, by what it measured or else what it typically does.
        let figure = |i: usize| j.measured[i].unwrap_or(c[i].typical);
        let other = (0..c.len())
            .filter(|&i| i != at)
            .max_by(|&a, &b| figure(a).total_cmp(&figure(b)));
        let slow = other.filter(|&i| m < SLOWER * figure(i));
        j.slow = slow.map_or(0, |_| j.slow + 1);
        if let Some(to) = slow.filter(|_| j.slow >= STRIKES) {
            let expected = match j.measured[to] {
                Some(g) => format!("measured {g:.2}"),
                None => format!("typically {:.2}", c[to].typical),
            };
            let why = format!(
                "{} measured {m:.2} GB/s (predicted {:.2}), more than 10% under {} ({expected})",
                name(at),
                c[at].predicted,
                name(to)
            );
            j.slow = 0;
            j.trials += 1;
            j.trial = Some(Trial {
                from: at,
                to,
                samples: Default::default(),
                why,
            });
            self.switch(&mut j, to);
        }
    }

    /// What the check found for these batches of `bytes`, once a copier had a full window.
    fn check(&self, bytes: u64) -> Option<SizeCheck> {
        let j = lock(&self.judge);
        let figures = |of: &[Option<f64>]| -> Vec<(Copier, f64)> {
            (self.candidates.iter().zip(of))
                .filter_map(|(c, m)| m.map(|g| (c.copier, g)))
                .collect()
        };
        let measured = figures(&j.measured);
        // During a trial the two take turns: the copier it challenges stays unless the trial
        // decides otherwise.
        let current = (j.trial.as_ref()).map_or(self.current.load(Ordering::Relaxed), |t| t.from);
        (!measured.is_empty()).then(|| SizeCheck {
            bytes,
            planned: self.candidates[0].copier,
            predicted_gbps: self.candidates[0].predicted,
            current: self.candidates[current].copier,
            measured,
            in_turns: figures(&j.in_turns),
            trials: j.trials,
            moves: j.moves.clone(),
        })
    }

    /// Makes candidate `to` the copier in use. Its first figure is dropped: it paid for the
    /// change (sleeping pool workers wake up, caches are cold), which a run pays only once.
    fn switch(&self, j: &mut Judge, to: usize) {
        j.warm_up = true;
        self.current.store(to, Ordering::Relaxed);
    }
}

/// Copies each batch with the copier the planner chose for its size (planned once per power of
/// two of bytes) and checks each choice against what it measures (see the module documentation).
pub struct AutoEngine {
    /// The plan for batches of `2^(SMALLEST + i)` bytes and up.
    plans: Vec<CopyPlan>,
    buckets: Vec<Bucket>,
    threads: BTreeMap<EngineKind, CpuEngine>,
    pools: BTreeMap<EngineKind, Pool<CpuEngine>>,
    dmas: BTreeMap<DmaKind, dma::Engine>,
}

impl AutoEngine {
    /// Plans every batch size for copies along `route`, and starts the pools those plans and
    /// their alternatives use, on `workers`.
    pub fn new(
        planner: &Planner<'_>,
        route: Route,
        workers: &Arc<Workers>,
    ) -> Result<Self, CopyError> {
        let threads: BTreeMap<EngineKind, CpuEngine> = EngineKind::ALL
            .into_iter()
            .filter_map(|k| CpuEngine::new(k).ok().map(|e| (k, e)))
            .collect();
        let mut plans = Vec::new();
        let mut buckets = Vec::new();
        let mut dmas = BTreeMap::new();
        let mut widest: BTreeMap<EngineKind, usize> = BTreeMap::new();
        for k in SMALLEST..=LARGEST {
            let bytes = 1u64 << k;
            let plan = planner.plan_copy(Job { bytes, route })?;
            // A fast but erratic copier is planned with what it reliably does, and tried where
            // it typically (its median) does better than what runs.
            let candidate = |copier: Copier, predicted: f64| Candidate {
                copier,
                predicted,
                typical: planner
                    .model()
                    .and_then(|m| m.typical_copy(copier, bytes))
                    .map_or(predicted, |t| t.max(predicted)),
            };
            let mut candidates = vec![candidate(plan.copier, plan.predicted_gbps.unwrap_or(0.0))];
            match plan.copier {
                Copier::Dma { engine } => {
                    // The user asked for DMA (or it is the fastest): no CPU alternatives.
                    if let std::collections::btree_map::Entry::Vacant(e) = dmas.entry(engine) {
                        e.insert(dma::open(engine)?);
                    }
                }
                Copier::Thread { engine } | Copier::Pool { engine, .. } => {
                    if !threads.contains_key(&engine) {
                        // The plan needs it: say why it cannot run.
                        CpuEngine::new(engine)?;
                    }
                    // The alternatives most worth a trial: the highest typical figures.
                    let mut ranked: Vec<Candidate> = planner
                        .ranked_copiers(bytes)
                        .into_iter()
                        .filter(|(c, _)| c.cpu_engine().is_some_and(|e| threads.contains_key(&e)))
                        .map(|(copier, predicted)| candidate(copier, predicted))
                        .collect();
                    ranked.sort_by(|a, b| b.typical.total_cmp(&a.typical));
                    let memcpy = ranked
                        .iter()
                        .position(|c| c.copier == MEMCPY)
                        .map_or_else(|| candidate(MEMCPY, 0.0), |i| ranked.remove(i));
                    candidates.extend(
                        ranked
                            .into_iter()
                            .filter(|c| c.copier != plan.copier)
                            .take(ALTERNATIVES),
                    );
                    // Taken out of the ranking above: among the candidates only as the plan.
                    if memcpy.copier != plan.copier {
                        candidates.push(memcpy);
                    }
                }
            }
            for c in &candidates {
                if let Copier::Pool { engine, workers } = c.copier {
                    let w = widest.entry(engine).or_insert(0);
                    *w = (*w).max(workers);
                }
            }
            let bucket = Bucket::new(candidates, bytes);
            bucket.start_above_the_load_cap();
            plans.push(plan);
            buckets.push(bucket);
        }
        let mut pools = BTreeMap::new();
        for (kind, count) in widest {
            let cpus = planner.worker_cpus(route, count)?;
            pools.insert(kind, Pool::new(workers, threads[&kind], &cpus)?);
        }
        Ok(AutoEngine {
            plans,
            buckets,
            threads,
            pools,
            dmas,
        })
    }

    fn index(bytes: u64) -> usize {
        (bytes.max(1).ilog2().clamp(SMALLEST, LARGEST) - SMALLEST) as usize
    }

    /// The plan for a batch of `bytes`.
    pub fn plan(&self, bytes: u64) -> &CopyPlan {
        &self.plans[Self::index(bytes)]
    }

    /// What the check measured, for every batch size that had a full window of timed batches.
    pub fn checks(&self) -> Vec<SizeCheck> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.check(1 << (SMALLEST as usize + i)))
            .collect()
    }

    /// What the check measured in turns ([`SizeCheck::in_turns`]) at every batch size where it
    /// replaced the plan's copier by one it measured faster, for [`super::CostModel::learn`].
    pub fn observed(&self) -> Vec<CopyPoint> {
        self.checks().iter().flat_map(SizeCheck::learned).collect()
    }

    fn run(
        &self,
        copier: Copier,
        batch: &[CopyOp<'_>],
        before_remap: bool,
    ) -> Result<CopyStats, CopyError> {
        match copier {
            Copier::Thread { engine } => self.threads[&engine].copy(batch),
            Copier::Pool { engine, workers } if before_remap => {
                self.pools[&engine].copy_with_then_sleep(batch, workers)
            }
            Copier::Pool { engine, workers } => self.pools[&engine].copy_with(batch, workers),
            Copier::Dma { engine } => self.dmas[&engine].copy(batch),
        }
    }

    /// Copies with the copier of the batch's size, timing it as the check needs.
    fn copy_checked(
        &self,
        batch: &[CopyOp<'_>],
        before_remap: bool,
    ) -> Result<CopyStats, CopyError> {
        let bytes: usize = batch.iter().map(CopyOp::len).sum();
        let b = &self.buckets[Self::index(bytes as u64)];
        let at = b.current.load(Ordering::Relaxed);
        let copier = b.candidates[at].copier;
        let timing = b.timing(bytes);
        if timing == Timing::Inside {
            b.add_to_group(bytes);
        }
        if matches!(timing, Timing::No | Timing::Inside) {
            return self.run(copier, batch, before_remap);
        }
        let start = Instant::now();
        let stats = self.run(copier, batch, before_remap)?;
        let end = Instant::now();
        match timing {
            Timing::First => b.begin_group(start, at, bytes, end - start),
            Timing::Last => {
                b.add_to_group(bytes);
                b.end_group(at, end);
            }
            _ => b.record(at, gbps(bytes, end - start)),
        }
        Ok(stats)
    }
}

impl CopyEngine for AutoEngine {
    fn name(&self) -> String {
        "auto".into()
    }

    fn copy(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy_checked(batch, false)
    }

    fn copy_before_remap(&self, batch: &[CopyOp<'_>]) -> Result<CopyStats, CopyError> {
        self.copy_checked(batch, true)
    }
}

impl std::fmt::Debug for AutoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoEngine")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(predicted: &[f64]) -> Bucket {
        bucket_of(predicted, 4096)
    }

    fn bucket_of(predicted: &[f64], bytes: u64) -> Bucket {
        let kinds = [EngineKind::Nt, EngineKind::Movsb, EngineKind::Memcpy];
        Bucket::new(
            predicted
                .iter()
                .zip(kinds)
                .map(|(&p, engine)| Candidate {
                    copier: Copier::Thread { engine },
                    predicted: p,
                    typical: p,
                })
                .collect(),
            bytes,
        )
    }

    /// The candidate in use.
    fn current(b: &Bucket) -> usize {
        b.current.load(Ordering::Relaxed)
    }

    /// `n` windows of figures of the copier in use (each with the figure dropped after a change).
    fn windows(b: &Bucket, n: usize, gbps: f64) {
        for _ in 0..n {
            let at = current(b);
            let warm_up = b.judge.lock().unwrap().warm_up;
            for _ in 0..b.window + usize::from(warm_up) {
                b.record(at, gbps);
            }
        }
    }

    /// A trial's turns until each copier has a window: the challenger measures `to`, the copier
    /// it challenges `from`; they alternate figure by figure, and the first figure after each
    /// change is dropped.
    fn turns(b: &Bucket, from: f64, to: f64) {
        let challenger = b.judge.lock().unwrap().trial.as_ref().expect("a trial").to;
        for turn in 0..2 * b.window {
            let at = current(b);
            assert_eq!(at == challenger, turn % 2 == 0, "the two take turns");
            let gbps = if at == challenger { to } else { from };
            b.record(at, 0.001); // the first after a change: dropped, or it would decide
            b.record(at, gbps);
        }
        assert!(b.judge.lock().unwrap().trial.is_none(), "decided");
    }

    #[test]
    fn a_plan_that_delivers_is_kept() {
        let b = bucket(&[10.0, 9.5, 6.0]);
        windows(&b, 5, 9.8);
        assert_eq!(current(&b), 0);
    }

    #[test]
    fn a_slow_plan_tries_the_runner_up_and_keeps_the_faster() {
        let b = bucket(&[10.0, 9.5, 6.0]);
        windows(&b, 1, 7.0); // under 0.9 x 9.5, once: maybe a burst of noise
        assert_eq!(current(&b), 0);
        windows(&b, 1, 7.0); // twice in a row: try the runner-up
        assert_eq!(current(&b), 1, "the challenger goes first");
        turns(&b, 7.0, 9.0); // faster than 7.0: kept
        assert_eq!(current(&b), 1);
        let j = b.judge.lock().unwrap();
        assert_eq!(j.moves.len(), 1);
        assert!(j.moves[0].why.contains("taking turns"), "{:?}", j.moves);
        assert_eq!(j.measured[..2], [Some(7.0), Some(9.0)]);
    }

    #[test]
    fn a_plan_that_delivers_tries_an_alternative_that_typically_does_better() {
        let mut b = bucket(&[10.0, 9.0, 6.0]);
        b.candidates[1].typical = 15.0; // erratic: reliably 9, typically 15
        windows(&b, 2, 10.5); // the plan does what it was predicted to, under 0.9 x 15
        assert_eq!(current(&b), 1);
        turns(&b, 10.5, 14.0);
        assert_eq!(current(&b), 1, "faster: kept");
        let j = b.judge.lock().unwrap();
        assert!(j.moves[0].why.contains("typically 15.00"), "{:?}", j.moves);
        drop(j);
        let mut b = bucket(&[10.0, 9.0, 6.0]);
        b.candidates[1].typical = 11.0;
        windows(&b, 4, 10.5); // within 10% of what the other typically does: no trial
        assert_eq!(current(&b), 0);
    }

    #[test]
    fn a_slow_window_that_was_noise_does_not_decide() {
        let b = bucket_of(&[10.0, 9.5], 64 << 20);
        windows(&b, 2, 7.0);
        assert_eq!(current(&b), 1);
        turns(&b, 9.8, 9.0); // taking turns, the plan does what it was predicted to
        assert_eq!(current(&b), 0);
        assert!(b.judge.lock().unwrap().moves.is_empty());
    }

    #[test]
    fn a_slower_runner_up_is_left_and_exploration_stops() {
        let b = bucket(&[10.0, 9.5, 9.0]);
        windows(&b, 2, 7.0);
        assert_eq!(current(&b), 1);
        turns(&b, 7.0, 5.0); // slower than 7.0: the plan stays
        assert_eq!(current(&b), 0);
        windows(&b, 1, 9.5); // a fast window in between: the count of slow ones starts again
        windows(&b, 1, 7.0);
        assert_eq!(current(&b), 0);
        windows(&b, 1, 7.0); // memcpy (predicted 9.0) not tried yet: try it
        assert_eq!(current(&b), 2);
        turns(&b, 7.0, 6.0); // slower: the plan stays
        for _ in 2..MAX_TRIALS {
            assert!(!b.settled.load(Ordering::Relaxed));
            windows(&b, 2, 5.0); // under what memcpy measured (6.0): try it again
            turns(&b, 7.0, 6.0);
        }
        assert_eq!(current(&b), 0);
        assert!(
            b.settled.load(Ordering::Relaxed),
            "{MAX_TRIALS} trials: settled"
        );
        windows(&b, 1, 1.0);
        assert_eq!(current(&b), 0, "no more trials once settled");
        assert_eq!(b.timing(1 << 30), Timing::No, "a settled size is not timed");
        assert!(b.judge.lock().unwrap().moves.is_empty(), "no change kept");
    }

    #[test]
    fn a_copier_above_the_load_cap_starts_and_the_plan_is_its_fallback() {
        let b = bucket_of(&[10.0, 12.0, 6.0], 64 << 20);
        b.start_above_the_load_cap();
        assert_eq!(current(&b), 1, "12 > 10 / 0.9");
        windows(&b, 2, 7.0); // under 0.9 x the plan's 10, twice: the plan is tried
        assert_eq!(current(&b), 0);
        turns(&b, 7.0, 9.0); // faster: kept
        assert_eq!(current(&b), 0);
        let near = bucket(&[10.0, 10.5]);
        near.start_above_the_load_cap();
        assert_eq!(current(&near), 0, "within 10%: the plan");
    }

    #[test]
    fn every_trial_a_size_may_take_fits_in_its_budget() {
        // Each challenger wins its trial and then runs slow: every trial ends with a change of
        // copier, whose first figure is dropped, and the next trial follows two windows later.
        let b = bucket(&[10.0, 9.5, 9.0]);
        for _ in 0..b.window * MOST_WINDOWS {
            let at = current(&b);
            let gbps = match &b.judge.lock().unwrap().trial {
                Some(t) if t.to == at => 100.0,
                Some(_) => 1.0,
                None => 0.1,
            };
            b.record(at, gbps);
        }
        let j = b.judge.lock().unwrap();
        assert_eq!(j.moves.len(), MAX_TRIALS, "{:?}", j.moves);
        assert!(j.trial.is_none(), "the last trial was decided");
        assert!(b.settled.load(Ordering::Relaxed));
    }

    #[test]
    fn a_trial_still_running_changes_nothing_in_the_report() {
        let b = bucket(&[10.0, 9.5]);
        windows(&b, 2, 7.0);
        turns(&b, 7.0, 5.0); // the runner-up measured slower: the plan stays
        windows(&b, 2, 4.0); // under 0.9 x the runner-up's 5.0, twice: it is tried again
        assert_eq!(current(&b), 1, "the challenger's turn");
        let check = b.check(4096).unwrap();
        let plan = b.candidates[0].copier;
        assert_eq!(check.measured.len(), 2, "{check:?}");
        // Reported (and learned, by `observed`) as the copier in use, the challenger's turn
        // would look like a change the check made.
        assert_eq!(check.current, plan, "{check:?}");
    }

    #[test]
    fn what_is_learned_is_what_the_turns_measured_not_a_later_window() {
        let b = bucket(&[10.0, 9.5]);
        windows(&b, 2, 7.0);
        turns(&b, 7.0, 9.0); // the runner-up wins, taking turns
        windows(&b, 1, 6.5); // then one slower window: not 10% under 7.0, no new trial
        let check = b.check(4096).unwrap();
        let [plan, runner_up] = [0, 1].map(|i| b.candidates[i].copier);
        assert_eq!(check.current, runner_up);
        assert_eq!(
            check.measured,
            [(plan, 7.0), (runner_up, 6.5)],
            "latest windows"
        );
        assert_eq!(check.in_turns, [(plan, 7.0), (runner_up, 9.0)]);
        let learned: Vec<(Copier, f64)> = check.learned().map(|p| (p.copier, p.gbps)).collect();
        assert_eq!(
            learned, check.in_turns,
            "the figures that decided, not the later window"
        );
        // Without a change of copier nothing is learned: the calibrated figures stand.
        let kept = bucket(&[10.0, 9.5]);
        windows(&kept, 2, 7.0);
        turns(&kept, 7.0, 5.0);
        assert_eq!(kept.check(4096).unwrap().learned().count(), 0);
    }

    #[test]
    fn a_group_is_one_figure_unless_its_caller_paused() {
        let us = Duration::from_micros;
        // 8 batches of 4 KB in 4 us: 8.2 GB/s, though the first alone took 0.8 us (5.1 GB/s).
        let g = group_gbps(8 * 4096, us(4), 4096, Duration::from_nanos(800));
        assert!((g - 8.192).abs() < 1e-6, "{g}");
        // The same batches spread over 100 us: the caller paused, the first batch alone counts.
        let g = group_gbps(8 * 4096, us(100), 4096, Duration::from_nanos(800));
        assert!((g - 5.12).abs() < 1e-6, "{g}");
        // Timed through the engine: a group's batches, 4 KB a microsecond, make one figure.
        let b = bucket(&[10.0, 9.0]);
        let start = Instant::now();
        for i in 0..b.group_len {
            match b.timing(4096) {
                Timing::First => b.begin_group(start, 0, 4096, us(1)),
                Timing::Inside => b.add_to_group(4096),
                Timing::Last => {
                    b.add_to_group(4096);
                    b.end_group(0, start + us(b.group_len as u64));
                }
                t => panic!("batch {i}: {t:?}"),
            }
        }
        let j = b.judge.lock().unwrap();
        assert_eq!(j.window.len(), 1);
        assert!((j.window[0] - 4.096).abs() < 1e-6, "{:?}", j.window);
    }

    #[test]
    fn large_batches_are_judged_after_fewer() {
        let b = bucket_of(&[10.0, 9.5], 64 << 20);
        assert_eq!(b.window, LARGE_WINDOW);
        for _ in 0..STRIKES * LARGE_WINDOW {
            b.record(0, 5.0);
        }
        assert_eq!(current(&b), 1);
        assert_eq!(bucket(&[10.0, 9.5]).window, WINDOW);
    }

    #[test]
    fn small_batches_are_timed_in_groups() {
        let b = bucket(&[10.0, 9.0]);
        let n = b.group_len;
        assert_eq!(n, batches_per_figure(4096));
        let timings: Vec<Timing> = (0..2 * n).map(|_| b.timing(4096)).collect();
        assert_eq!(timings.iter().filter(|&&t| t == Timing::First).count(), 2);
        assert_eq!(timings[0], Timing::First);
        assert_eq!(timings[n - 1], Timing::Last);
        assert!(timings[1..n - 1].iter().all(|t| *t == Timing::Inside));
        assert_eq!(batches_per_figure(4096), GROUP_BYTES / 4096);
        assert_eq!(batches_per_figure(TIME_ALL_FROM / 2), GROUP);
        assert_eq!(batches_per_figure(TIME_ALL_FROM), 1);
        assert_eq!(b.timing(TIME_ALL_FROM), Timing::Alone);
        assert!(
            bucket(&[10.0]).settled.load(Ordering::Relaxed),
            "nothing to try"
        );
    }
}
