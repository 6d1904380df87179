//! The tiering agent: one interval after another, track → heat → placement → decide → move.
//!
//! [`Agent::start`] checks everything it can (nodes, tiers, budget, rate, the right to move the
//! processes' pages) before it touches DAMON; [`Agent::step`] runs one interval and returns it as
//! an [`IntervalReport`]. Pages move through a function the caller gives, normally
//! [`move_through`], so that the way pages move can change without touching the agent.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::damon::{Cleaned, Damon, DamonAttrs};
use super::decide::{self, ChunkView, Decision, Direction, Limits, Policy};
use super::heat::{ChunkKey, HeatMap};
use super::{Size, TierError};
use crate::Migrator;
use crate::account::Report;
use crate::migrate::scan;
use crate::migrate::{MigrateError, Options, Request, Selection, check_target};
use crate::process::Process;
use crate::procfs;
use crate::sys::{self, PageNode};
use crate::topology::{NodeId, NodeSet, Topology, node_free_bytes};

/// What the agent is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Processes to tier.
    pub pids: Vec<u32>,
    /// Nodes of the fast tier.
    pub fast: NodeSet,
    /// Nodes of the slow tier.
    pub slow: NodeSet,
    /// Most memory of these processes on the fast nodes; `None`: what fits above the margin.
    pub fast_budget: Option<Size>,
    /// Memory to keep free on the fast nodes (bytes or percent of their memory).
    pub free_margin: Size,
    /// Time between decisions (the caller sleeps it; used for the rate).
    pub interval: Duration,
    /// Most bytes moved per second; `None`: no limit.
    pub rate: Option<u64>,
    /// Bytes per chunk of heat and of moves (a power of two, at least a page).
    pub granularity: usize,
    /// Thresholds, decay, hysteresis.
    pub policy: Policy,
    /// DAMON's monitoring attributes.
    pub damon: DamonAttrs,
    /// DAMON's sysfs admin directory ([`super::damon::ADMIN`] on a running kernel).
    pub damon_admin: PathBuf,
    /// Where the agent records what it set up, so that a later start can clean after a kill.
    pub runtime_dir: PathBuf,
    /// Decide and report, move nothing.
    pub dry_run: bool,
}

/// The pages of one process on each node, and on each tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessPlacement {
    /// The process.
    pub pid: u32,
    /// Pages (base pages) of its tiered memory on each node.
    pub pages_per_node: BTreeMap<NodeId, u64>,
    /// Bytes on the fast nodes.
    pub fast_bytes: u64,
    /// Bytes on the slow nodes.
    pub slow_bytes: u64,
}

/// One call of the mover: chunks of one process going one way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveRequest {
    /// The process.
    pub pid: u32,
    /// Which way.
    pub direction: Direction,
    /// The chunks' address ranges.
    pub ranges: Vec<Range<usize>>,
    /// Pages on these nodes move.
    pub from: NodeSet,
    /// The target node.
    pub to: NodeId,
    /// Bytes the decisions expect to move.
    pub bytes: u64,
}

/// What one mover call did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveOutcome {
    /// The process.
    pub pid: u32,
    /// Which way.
    pub direction: Direction,
    /// The target node.
    pub to: NodeId,
    /// Bytes the decisions expected to move.
    pub requested_bytes: u64,
    /// The migration's report.
    pub report: Report,
}

/// One interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalReport {
    /// Its number, from 1.
    pub interval: u64,
    /// Chunks are still being observed for the first intervals: no decision yet.
    pub warming_up: bool,
    /// What was decided.
    pub decisions: Vec<Decision>,
    /// The decisions as moves: one per process and direction, with the target node.
    pub planned: Vec<MoveRequest>,
    /// What the moves did (none in a dry run).
    pub moves: Vec<MoveOutcome>,
    /// Where each process's memory was when the decisions were made.
    pub placement: Vec<ProcessPlacement>,
    /// Bytes of the processes on the fast tier, before the moves.
    pub fast_used: u64,
    /// The fast tier's limit this interval (budget and free memory above the margin).
    pub fast_limit: u64,
    /// CPU time of this thread spent tracking and deciding (sampling DAMON, reading placement).
    pub tracking_cpu: Duration,
    /// CPU time of the kernel's monitoring threads since the start.
    pub kdamond_cpu: Duration,
    /// Processes that exited this interval and were dropped.
    pub dropped: Vec<u32>,
    /// Processes still tiered.
    pub processes: usize,
}

/// The running agent. Dropping it tears DAMON down.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    budget: u64,
    margin: u64,
    allowance: u64,
    damon: Damon,
    heat: HeatMap,
    pids: Vec<u32>,
    interval: u64,
    last_moved: HashMap<ChunkKey, u64>,
}

fn check_tier(topology: &Topology, nodes: &NodeSet, tier: &'static str) -> Result<(), TierError> {
    if nodes.is_empty() {
        return Err(TierError::EmptyTier(tier));
    }
    for node in nodes.iter() {
        check_target(topology, node).map_err(|source| TierError::BadNode { tier, source })?;
    }
    Ok(())
}

/// Per chunk: bytes on the fast and slow tiers; and pages per node.
type Scan = (BTreeMap<usize, (u64, u64)>, BTreeMap<NodeId, u64>);

/// Where the pages of the memory the agent tiers are: private anonymous memory (heap, stack,
/// anonymous mappings), not files' pages, which the page cache and other processes share.
fn scan(pid: u32, config: &AgentConfig) -> Result<Scan, MigrateError> {
    let process = Process::Pid(pid);
    let page = sys::base_page_size() as u64;
    let areas = procfs::read_maps(process)?
        .into_iter()
        .filter(|a| !a.is_special() && !a.is_shared())
        .filter(|a| a.path.is_empty() || a.path.starts_with('['))
        .map(|a| a.start..a.end);
    let present = scan::present_pages(process, areas)?;
    let nodes = scan::query(process, &present)?;
    let mut chunks: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut per_node: BTreeMap<NodeId, u64> = BTreeMap::new();
    for (addr, place) in present.iter().zip(nodes) {
        if let PageNode::Node(n) = place {
            *per_node.entry(n).or_default() += 1;
            let g = config.granularity;
            let e = chunks.entry(addr / g * g).or_default();
            if config.fast.contains(n) {
                e.0 += page;
            } else if config.slow.contains(n) {
                e.1 += page;
            }
        }
    }
    Ok((chunks, per_node))
}

fn is_gone(e: &MigrateError) -> bool {
    matches!(e, MigrateError::NoSuchProcess { .. })
}

/// Free bytes on the fast nodes above the margin, negative below it; a margin of more bytes
/// than an `i64` holds (`--free-margin 9223372036854775808`) is as large as one can be.
fn headroom(free: u64, margin: u64) -> i64 {
    let clamp = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    clamp(free).saturating_sub(clamp(margin))
}

/// The node of `nodes` with the most free memory now.
fn roomiest(nodes: &NodeSet) -> NodeId {
    nodes
        .iter()
        .max_by_key(|&n| (node_free_bytes(n).unwrap_or(0), std::cmp::Reverse(n)))
        .expect("tiers are not empty")
}

impl Agent {
    /// Checks the configuration against the machine and the processes, cleans what a killed
    /// agent left in DAMON, and starts tracking. Nothing moves before the first [`Agent::step`].
    pub fn start(
        config: AgentConfig,
        topology: &Topology,
    ) -> Result<(Agent, Option<Cleaned>), TierError> {
        check_tier(topology, &config.fast, "fast")?;
        check_tier(topology, &config.slow, "slow")?;
        let both = config.fast.intersection(&config.slow);
        if !both.is_empty() {
            return Err(TierError::OverlappingTiers {
                fast: config.fast.clone(),
                slow: config.slow.clone(),
                both,
            });
        }
        config.policy.check().map_err(TierError::BadSetting)?;
        let page = sys::base_page_size();
        if !config.granularity.is_power_of_two() || config.granularity < page {
            return Err(TierError::BadSetting(format!(
                "granularity {} must be a power of two of at least a page ({page} bytes)",
                config.granularity
            )));
        }
        let heat = HeatMap::new(config.granularity, config.policy.decay)?;
        if config.interval.is_zero() {
            return Err(TierError::BadSetting(
                "the interval must be longer than zero".into(),
            ));
        }
        let fast_total: u64 = config
            .fast
            .iter()
            .filter_map(|n| topology.node(n))
            .map(|n| n.mem_total)
            .sum();
        let budget = config
            .fast_budget
            .map_or(u64::MAX, |size| size.of(fast_total));
        if config.fast_budget.is_some() && budget > fast_total {
            return Err(TierError::BudgetTooLarge {
                budget,
                nodes: config.fast.clone(),
                total: fast_total,
            });
        }
        let margin = config.free_margin.of(fast_total);
        let allowance = config.rate.map_or(u64::MAX, |rate| {
            (rate as f64 * config.interval.as_secs_f64()) as u64
        });
        if let Some(rate) = config.rate
            && allowance < config.granularity as u64
        {
            return Err(TierError::RateTooLow {
                bytes_per_second: rate,
                per_interval: allowance,
                granularity: config.granularity,
            });
        }
        let mut pids = config.pids.clone();
        pids.dedup();
        if pids.is_empty() {
            return Err(TierError::NoProcess);
        }
        // The right to read and move each process's pages, before DAMON is touched.
        for &pid in &pids {
            scan(pid, &config).map_err(|e| {
                if is_gone(&e) {
                    TierError::NoSuchProcess(pid)
                } else {
                    TierError::Process { pid, source: e }
                }
            })?;
        }
        let (damon, cleaned) = Damon::start(
            &config.damon_admin,
            &config.runtime_dir,
            &pids,
            config.damon,
        )?;
        Ok((
            Agent {
                heat,
                config,
                budget,
                margin,
                allowance,
                damon,
                pids,
                interval: 0,
                last_moved: HashMap::new(),
            },
            cleaned,
        ))
    }

    /// Processes still tiered.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// The fast tier's budget in bytes (`u64::MAX` when only the margin limits it).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Forgets `pid` (it exited), once, and notes it in `dropped`.
    fn drop_process(&mut self, pid: u32, dropped: &mut Vec<u32>) -> Result<(), TierError> {
        if dropped.contains(&pid) {
            return Ok(());
        }
        dropped.push(pid);
        self.pids.retain(|&p| p != pid);
        self.heat.remove_process(pid);
        self.last_moved.retain(|k, _| k.pid != pid);
        self.damon.drop_target(pid)
    }

    /// One interval: samples DAMON, updates the heat, reads where the pages are, decides, and
    /// (unless a dry run) moves through `mover`. A process that exited is dropped and the agent
    /// goes on; when none is left, the report says `processes: 0`.
    pub fn step(
        &mut self,
        mover: &dyn Fn(&MoveRequest) -> Result<Report, MigrateError>,
    ) -> Result<IntervalReport, TierError> {
        self.interval += 1;
        let cpu = sys::thread_cpu_time();
        let mut dropped = Vec::new();
        for pid in self.pids.clone() {
            if procfs::has_exited(Process::Pid(pid)) {
                self.drop_process(pid, &mut dropped)?;
            }
        }
        let samples = self.damon.sample()?;
        self.heat.update(&samples);

        let g = self.config.granularity;
        let mut chunks = Vec::new();
        let mut placement = Vec::new();
        for pid in self.pids.clone() {
            let (per_chunk, per_node) = match scan(pid, &self.config) {
                Ok(s) => s,
                Err(e) if is_gone(&e) || procfs::has_exited(Process::Pid(pid)) => {
                    self.drop_process(pid, &mut dropped)?;
                    continue;
                }
                Err(e) => return Err(TierError::Process { pid, source: e }),
            };
            for (&start, &(fast_bytes, slow_bytes)) in &per_chunk {
                let key = ChunkKey { pid, start };
                let heat = self.heat.get(&key);
                chunks.push(ChunkView {
                    key,
                    range: start..start + g,
                    heat: heat.map_or(0.0, |h| h.value),
                    observed: heat.map_or(0, |h| h.observed),
                    fast_bytes,
                    slow_bytes,
                    last_moved: self.last_moved.get(&key).copied(),
                });
            }
            placement.push(ProcessPlacement {
                pid,
                pages_per_node: per_node,
                fast_bytes: per_chunk.values().map(|c| c.0).sum(),
                slow_bytes: per_chunk.values().map(|c| c.1).sum(),
            });
        }
        let free: u64 = self.config.fast.iter().filter_map(node_free_bytes).sum();
        let limits = Limits {
            budget: self.budget,
            fast_headroom: headroom(free, self.margin),
            allowance: self.allowance,
        };
        let decisions = decide::decide(&chunks, &limits, &self.config.policy, self.interval);
        let fast_used: u64 = chunks.iter().map(|c| c.fast_bytes).sum();
        let fast_limit = limits.fast_limit(fast_used);
        let tracking_cpu = sys::thread_cpu_time().saturating_sub(cpu);

        let mut moves = Vec::new();
        let planned = self.requests(&decisions);
        if !self.config.dry_run {
            for request in &planned {
                let report = match mover(request) {
                    Ok(report) => report,
                    Err(e) if is_gone(&e) => {
                        self.drop_process(request.pid, &mut dropped)?;
                        continue;
                    }
                    Err(source) => {
                        return Err(TierError::Move {
                            pid: request.pid,
                            to: request.to,
                            source,
                        });
                    }
                };
                for d in &decisions {
                    if d.key.pid == request.pid && d.direction == request.direction {
                        self.last_moved.insert(d.key, self.interval);
                    }
                }
                if report.process_exited {
                    self.drop_process(request.pid, &mut dropped)?;
                }
                moves.push(MoveOutcome {
                    pid: request.pid,
                    direction: request.direction,
                    to: request.to,
                    requested_bytes: request.bytes,
                    report,
                });
            }
        }
        let kdamond_cpu = self.damon.cpu_time();
        Ok(IntervalReport {
            interval: self.interval,
            warming_up: self.interval < u64::from(self.config.policy.warmup),
            decisions,
            planned,
            moves,
            placement,
            fast_used,
            fast_limit,
            tracking_cpu,
            kdamond_cpu,
            dropped,
            processes: self.pids.len(),
        })
    }

    /// The decisions grouped into one request per process and direction, in decision order
    /// (demotions first).
    fn requests(&self, decisions: &[Decision]) -> Vec<MoveRequest> {
        let mut out: Vec<MoveRequest> = Vec::new();
        for d in decisions {
            if let Some(r) = out
                .iter_mut()
                .find(|r| r.pid == d.key.pid && r.direction == d.direction)
            {
                r.ranges.push(d.range.clone());
                r.bytes += d.bytes;
                continue;
            }
            let (from, to) = match d.direction {
                Direction::Promote => (&self.config.slow, &self.config.fast),
                Direction::Demote => (&self.config.fast, &self.config.slow),
            };
            out.push(MoveRequest {
                pid: d.key.pid,
                direction: d.direction,
                ranges: vec![d.range.clone()],
                from: from.clone(),
                to: roomiest(to),
                bytes: d.bytes,
            });
        }
        out
    }

    /// Stops tracking: DAMON's kdamonds off and its state as before the start.
    pub fn stop(self) -> Result<(), TierError> {
        self.damon.stop()
    }
}

/// Moves one request's pages through `migrator` with `options` (the kernel path: the pages are
/// another process's), threads and placement planned for its size unless `options` say.
pub fn move_through(
    migrator: &Migrator,
    options: &Options,
    request: &MoveRequest,
) -> Result<Report, MigrateError> {
    let request = Request::process(
        Process::Pid(request.pid),
        Selection::Ranges(request.ranges.clone()),
        request.to,
    )
    .from_nodes(request.from.clone())
    .with(options.clone());
    migrator.migrate(&request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_margin_beyond_i64_leaves_no_headroom_instead_of_overflowing() {
        assert_eq!(headroom(10 << 30, 1 << 30), 9 << 30);
        assert_eq!(headroom(1 << 30, 3 << 30), -(2 << 30));
        assert_eq!(headroom(1 << 30, 1 << 63), (1 << 30) - i64::MAX);
        assert_eq!(headroom(1 << 30, u64::MAX), (1 << 30) - i64::MAX);
        assert_eq!(headroom(u64::MAX, 0), i64::MAX);
    }
}
