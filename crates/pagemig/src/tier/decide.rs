//! Promote and demote decisions: a pure function of the chunks' heat and placement, the fast
//! tier's budget and free memory, and what the rate allows this interval.
//!
//! - Hot chunks (heat at or above [`Policy::hot`]) with pages on the slow nodes are promoted,
//!   hottest first, while the fast tier stays within its limit: the budget, and the free memory
//!   of the fast nodes above their margin.
//! - When the fast tier is over that limit, or promotions need room, every cold chunk (heat at or
//!   below [`Policy::cold`]) with pages on the fast nodes is demoted, coldest first; if the tier is
//!   still over its limit, the coldest of the rest follow until it is not.
//! - Hysteresis: a chunk between the two thresholds is never moved for its heat, a chunk is not
//!   moved again within [`Policy::min_residency`] intervals of its last move, and nothing is
//!   decided for a chunk observed for fewer than [`Policy::warmup`] intervals.
//! - The rate: decisions are taken in that order until the bytes allowed this interval are used.

use std::cmp::Ordering;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::heat::ChunkKey;

/// The policy's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Heat at or above which a chunk is promoted.
    pub hot: f64,
    /// Heat at or below which a chunk is demoted when the fast tier needs room.
    pub cold: f64,
    /// Weight of the past in the heat (0: only the last interval counts; towards 1: slower).
    pub decay: f64,
    /// Intervals a chunk stays where it was moved before it may move again.
    pub min_residency: u64,
    /// Intervals a chunk must be observed before anything is decided for it.
    pub warmup: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            hot: 0.05,
            cold: 0.01,
            decay: 0.5,
            min_residency: 5,
            warmup: 5,
        }
    }
}

impl Policy {
    /// Refuses thresholds that are out of range or would make chunks bounce.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.hot) || !(0.0..=1.0).contains(&self.cold) {
            return Err(format!(
                "hot {} and cold {} must be access frequencies between 0 and 1",
                self.hot, self.cold
            ));
        }
        if self.cold >= self.hot {
            return Err(format!(
                "cold {} must be below hot {}: the gap between them keeps chunks from bouncing",
                self.cold, self.hot
            ));
        }
        if !(0.0..1.0).contains(&self.decay) {
            return Err(format!(
                "decay {} must be at least 0 and below 1",
                self.decay
            ));
        }
        Ok(())
    }
}

/// One chunk as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkView {
    /// Which chunk.
    pub key: ChunkKey,
    /// Its addresses.
    pub range: Range<usize>,
    /// Heat now.
    pub heat: f64,
    /// Intervals it has been observed for.
    pub observed: u32,
    /// Bytes present on the fast nodes.
    pub fast_bytes: u64,
    /// Bytes present on the slow nodes.
    pub slow_bytes: u64,
    /// Interval of its last move, if any.
    pub last_moved: Option<u64>,
}

/// The limits of one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of the tracked processes on the fast nodes.
    pub budget: u64,
    /// Free memory of the fast nodes minus the margin to keep free (negative: below the margin).
    pub fast_headroom: i64,
    /// Most bytes to move this interval.
    pub allowance: u64,
}

impl Limits {
    /// Most bytes the fast tier may hold when it holds `fast_used`: the budget, or less where
    /// the fast nodes' free memory above the margin runs out first.
    pub fn fast_limit(&self, fast_used: u64) -> u64 {
        self.budget
            .min(fast_used.saturating_add_signed(self.fast_headroom))
    }
}

/// Which way a chunk moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the slow nodes to the fast ones.
    Promote,
    /// From the fast nodes to the slow ones.
    Demote,
}

/// Why a chunk moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// Hot, and the fast tier has room for it.
    Hot,
    /// Cold, and the fast tier needed room (over its limit, or for hot chunks).
    Cold,
    /// The fast tier was over its budget after the cold chunks left; this was the coldest.
    OverBudget,
    /// The fast nodes were below their free-memory margin after the cold chunks left; this was
    /// the coldest.
    LowFreeMemory,
}

/// A decision about one chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The chunk.
    pub key: ChunkKey,
    /// Its addresses.
    pub range: Range<usize>,
    /// Its heat.
    pub heat: f64,
    /// Which way.
    pub direction: Direction,
    /// Bytes to move (those on the other tier).
    pub bytes: u64,
    /// Why.
    pub why: Why,
}

fn by_heat(a: &ChunkView, b: &ChunkView) -> Ordering {
    a.heat.total_cmp(&b.heat).then(a.key.cmp(&b.key))
}

/// This interval's decisions, demotions first (they make the room promotions use).
pub fn decide(chunks: &[ChunkView], limits: &Limits, policy: &Policy, now: u64) -> Vec<Decision> {
    let movable = |c: &&ChunkView| {
        c.observed >= policy.warmup
            && c.last_moved
                .is_none_or(|t| now.saturating_sub(t) >= policy.min_residency)
    };
    let fast_used = chunks
        .iter()
        .map(|c| c.fast_bytes)
        .fold(0, u64::saturating_add);
    let limit = limits.fast_limit(fast_used);
    let over_budget = fast_used > limits.budget;

    let mut promote: Vec<&ChunkView> = chunks
        .iter()
        .filter(movable)
        .filter(|c| c.slow_bytes > 0 && c.heat >= policy.hot)
        .collect();
    promote.sort_by(|a, b| by_heat(b, a));
    let wanted = promote
        .iter()
        .map(|c| c.slow_bytes)
        .fold(0, u64::saturating_add);

    let mut demote: Vec<&ChunkView> = chunks
        .iter()
        .filter(movable)
        .filter(|c| c.fast_bytes > 0 && c.heat < policy.hot)
        .collect();
    demote.sort_by(|a, b| by_heat(a, b));

    let mut out = Vec::new();
    let mut allowance = limits.allowance;
    let mut fast = fast_used;
    let needs_room = fast > limit || fast.saturating_add(wanted) > limit;
    let mut rest = Vec::new();
    for c in demote {
        if needs_room && c.heat <= policy.cold && c.fast_bytes <= allowance {
            allowance -= c.fast_bytes;
            fast -= c.fast_bytes;
            out.push(decision(c, Direction::Demote, Why::Cold));
        } else {
            rest.push(c);
        }
    }
    // Still over the limit: the coldest warm chunks go, between the thresholds or not.
    for c in rest {
        if fast <= limit || c.fast_bytes > allowance {
            break;
        }
        allowance -= c.fast_bytes;
        fast -= c.fast_bytes;
        let why = if over_budget && limit == limits.budget {
            Why::OverBudget
        } else {
            Why::LowFreeMemory
        };
        out.push(decision(c, Direction::Demote, why));
    }
    for c in promote {
        if fast.saturating_add(c.slow_bytes) > limit || c.slow_bytes > allowance {
            break;
        }
        allowance -= c.slow_bytes;
        fast = fast.saturating_add(c.slow_bytes);
        out.push(decision(c, Direction::Promote, Why::Hot));
    }
    out
}

fn decision(c: &ChunkView, direction: Direction, why: Why) -> Decision {
    Decision {
        key: c.key,
        range: c.range.clone(),
        heat: c.heat,
        direction,
        bytes: match direction {
            Direction::Promote => c.slow_bytes,
            Direction::Demote => c.fast_bytes,
        },
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const CHUNK: u64 = 2 * MB;
    const FAST: bool = true;
    const SLOW: bool = false;

    /// A chunk at index `i` of process 1, all its bytes on one tier.
    fn chunk(i: usize, heat: f64, on_fast: bool) -> ChunkView {
        let start = i * CHUNK as usize;
        ChunkView {
            key: ChunkKey { pid: 1, start },
            range: start..start + CHUNK as usize,
            heat,
            observed: 10,
            fast_bytes: if on_fast { CHUNK } else { 0 },
            slow_bytes: if on_fast { 0 } else { CHUNK },
            last_moved: None,
        }
    }

    /// Chunks 0, 1, … of process 1, each with its heat and tier.
    fn chunks(spec: &[(f64, bool)]) -> Vec<ChunkView> {
        spec.iter()
            .enumerate()
            .map(|(i, &(heat, on_fast))| chunk(i, heat, on_fast))
            .collect()
    }

    fn limits(budget: u64) -> Limits {
        Limits {
            budget,
            fast_headroom: 1 << 40,
            allowance: u64::MAX,
        }
    }

    /// `decide` at interval 100 with the default policy: the decisions, and the chunks demoted
    /// and promoted.
    fn run(chunks: &[ChunkView], limits: Limits) -> (Vec<Decision>, Vec<usize>, Vec<usize>) {
        let d = decide(chunks, &limits, &Policy::default(), 100);
        let moved = |dir| {
            d.iter()
                .filter(|d| d.direction == dir)
                .map(|d| d.key.start / CHUNK as usize)
                .collect()
        };
        let (demoted, promoted) = (moved(Direction::Demote), moved(Direction::Promote));
        (d, demoted, promoted)
    }

    #[test]
    fn byte_counts_that_add_up_past_u64_do_not_overflow() {
        let half = u64::MAX / 2 + 1;
        let mut chunks = chunks(&[(0.9, SLOW), (0.8, SLOW), (0.0, FAST), (0.0, FAST)]);
        for c in &mut chunks {
            if c.fast_bytes > 0 {
                c.fast_bytes = half;
            } else {
                c.slow_bytes = half;
            }
        }
        let (d, demoted, _) = run(&chunks, limits(u64::MAX));
        assert!(demoted.is_empty(), "{d:?}");
        // The allowance (u64::MAX) holds one of the two.
        assert_eq!(run(&chunks, limits(1 << 40)).1, [2]);
    }

    #[test]
    fn without_a_budget_only_memory_limits_the_fast_tier() {
        // No --fast-budget: the budget is u64::MAX, and cold chunks on the fast tier stay.
        let mut chunks = chunks(&[(0.9, SLOW), (0.8, SLOW)]);
        chunks.extend((2..6).map(|i| chunk(i, 0.0, FAST)));
        let (_, demoted, promoted) = run(&chunks, limits(u64::MAX));
        assert_eq!((demoted, promoted), (vec![], vec![0, 1]));
        let tight = Limits {
            fast_headroom: -(CHUNK as i64),
            ..limits(u64::MAX)
        };
        assert_eq!(tight.fast_limit(4 * CHUNK), 3 * CHUNK);
        assert_eq!(tight.fast_limit(0), 0);
    }

    #[test]
    fn over_budget_demotes_every_cold_chunk_and_keeps_the_hot() {
        // 4 hot chunks and 16 cold ones, all on the fast tier, budget 6 chunks.
        let mut chunks: Vec<_> = (0..4).map(|i| chunk(i, 0.8, FAST)).collect();
        chunks.extend((4..20).map(|i| chunk(i, 0.0, FAST)));
        let (d, demoted, promoted) = run(&chunks, limits(6 * CHUNK));
        assert_eq!((demoted, promoted), ((4..20).collect(), vec![]));
        assert!(d.iter().all(|d| d.why == Why::Cold && d.bytes == CHUNK));
    }

    #[test]
    fn hot_chunks_are_promoted_hottest_first_up_to_the_budget() {
        let chunks = chunks(&[(0.3, SLOW), (0.9, SLOW), (0.6, SLOW), (0.0, SLOW)]);
        let (d, _, promoted) = run(&chunks, limits(2 * CHUNK));
        assert_eq!(promoted, [1, 2]);
        assert!(d.iter().all(|d| d.why == Why::Hot));
    }

    #[test]
    fn cold_chunks_stay_on_the_fast_tier_while_it_has_room() {
        let mut chunks = chunks(&[(0.0, FAST), (0.0, FAST)]);
        assert!(run(&chunks, limits(8 * CHUNK)).0.is_empty());
        // A hot chunk that needs room makes the cold ones leave.
        chunks.push(chunk(2, 0.9, SLOW));
        let (d, demoted, promoted) = run(&chunks, limits(2 * CHUNK));
        assert_eq!((demoted, promoted), (vec![0, 1], vec![2]));
        assert_eq!(d[0].direction, Direction::Demote, "demotions come first");
    }

    #[test]
    fn over_budget_warm_chunks_go_coldest_first_when_no_cold_one_is_left() {
        let chunks = chunks(&[(0.03, FAST), (0.02, FAST), (0.9, FAST)]);
        let (d, demoted, _) = run(&chunks, limits(2 * CHUNK));
        assert_eq!(demoted, [1]);
        assert_eq!(d[0].why, Why::OverBudget);
    }

    #[test]
    fn low_free_memory_is_a_limit_like_the_budget() {
        let chunks = chunks(&[(0.0, FAST), (0.03, FAST), (0.5, SLOW)]);
        let below = |below_margin: i64| Limits {
            fast_headroom: -below_margin * CHUNK as i64,
            ..limits(100 * CHUNK)
        };
        // The cold chunk leaves (for the margin), then the warm one, and nothing is promoted:
        // the margin leaves no room.
        let (_, demoted, promoted) = run(&chunks, below(1));
        assert_eq!((demoted, promoted), (vec![0], vec![]));
        let (d, demoted, _) = run(&chunks, below(2));
        assert_eq!(demoted, [0, 1]);
        assert_eq!(d[1].why, Why::LowFreeMemory);
    }

    #[test]
    fn hysteresis_band_residency_and_warmup_hold_chunks_still() {
        // Between the thresholds: neither promoted nor demoted, even when room is needed.
        let mut chunks = chunks(&[(0.03, SLOW), (0.03, FAST)]);
        assert!(run(&chunks, limits(8 * CHUNK)).0.is_empty());
        chunks.push(chunk(2, 0.9, SLOW));
        let d = run(&chunks, limits(CHUNK)).0;
        assert!(
            d.is_empty(),
            "a warm chunk is not pushed out for a hot one: {d:?}"
        );
        let mut recent = chunk(0, 0.9, SLOW);
        recent.last_moved = Some(98);
        assert!(run(&[recent.clone()], limits(8 * CHUNK)).0.is_empty());
        recent.last_moved = Some(95);
        assert_eq!(run(&[recent], limits(8 * CHUNK)).0.len(), 1);
        let mut new = chunk(0, 0.9, SLOW);
        new.observed = 2;
        assert!(run(&[new], limits(8 * CHUNK)).0.is_empty());
    }

    #[test]
    fn the_rate_caps_each_interval_and_takes_the_coldest_and_hottest_first() {
        let mut chunks: Vec<_> = (0..4).map(|i| chunk(i, 0.0, FAST)).collect();
        chunks[2].heat = 0.001;
        chunks.push(chunk(4, 0.9, SLOW));
        chunks.push(chunk(5, 0.5, SLOW));
        let l = Limits {
            allowance: 3 * CHUNK,
            ..limits(4 * CHUNK)
        };
        let (d, demoted, promoted) = run(&chunks, l);
        let total: u64 = d.iter().map(|d| d.bytes).sum();
        assert!(total <= 3 * CHUNK);
        assert_eq!((demoted, promoted), (vec![0, 1, 3], vec![]));
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(Policy::default().check().is_ok());
        let bad = Policy {
            cold: 0.2,
            hot: 0.1,
            ..Policy::default()
        };
        assert!(bad.check().unwrap_err().contains("must be below hot"));
        let bad = Policy {
            decay: 1.0,
            ..Policy::default()
        };
        assert!(bad.check().is_err());
    }
}
