//! Heat per region: the access frequency a tracker reports, smoothed over intervals.
//!
//! Trackers report regions whose boundaries change from one sample to the next (DAMON splits and
//! merges them), so heat is kept per fixed-size, aligned chunk of each process's address space.
//! Each interval a chunk's heat becomes `decay * heat + (1 - decay) * sample`, where the sample is
//! the access frequency of the regions covering it, weighted by how much of the chunk each one
//! covers; a chunk no region covers samples 0 and is forgotten once it is cold.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{AccessSample, TierError};

/// A chunk: a process and the start of an aligned range of the [`HeatMap`]'s granularity in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ChunkKey {
    /// The process.
    pub pid: u32,
    /// First address of the chunk.
    pub start: usize,
}

/// The heat of one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Heat {
    /// Smoothed access frequency, 0 (never touched) to 1 (touched at every sample).
    pub value: f64,
    /// Intervals this chunk has been observed for.
    pub observed: u32,
}

/// Heat of every chunk seen, per process.
#[derive(Debug, Clone)]
pub struct HeatMap {
    granularity: usize,
    decay: f64,
    chunks: BTreeMap<ChunkKey, Heat>,
}

/// Heat below which a chunk no region covers any more is forgotten.
const FORGET: f64 = 1e-6;

impl HeatMap {
    /// Chunks of `granularity` bytes, heat kept with `decay` (0 to 1: the weight of the past).
    /// A granularity that is not a power of two is refused.
    pub fn new(granularity: usize, decay: f64) -> Result<Self, TierError> {
        if !granularity.is_power_of_two() {
            return Err(TierError::BadSetting(format!(
                "granularity {granularity} must be a power of two"
            )));
        }
        Ok(HeatMap {
            granularity,
            decay,
            chunks: BTreeMap::new(),
        })
    }

    /// Folds one interval's samples in.
    pub fn update(&mut self, samples: &[AccessSample]) {
        let g = self.granularity;
        // Per chunk: sum of (frequency x covered bytes), covered bytes.
        let mut seen: BTreeMap<ChunkKey, (f64, f64)> = BTreeMap::new();
        for s in samples {
            for start in (s.start / g * g..s.end).step_by(g) {
                let covered = (s.end.min(start.saturating_add(g)) - s.start.max(start)) as f64;
                let e = seen.entry(ChunkKey { pid: s.pid, start }).or_default();
                e.0 += s.accesses * covered;
                e.1 += covered;
            }
        }
        // A chunk seen for the first time starts from no heat and no observation.
        for key in seen.keys() {
            self.chunks.entry(*key).or_default();
        }
        for (key, heat) in self.chunks.iter_mut() {
            let sample = seen.get(key).map_or(0.0, |(w, c)| w / c);
            heat.value = self.decay * heat.value + (1.0 - self.decay) * sample;
            heat.observed = heat.observed.saturating_add(1);
        }
        self.chunks
            .retain(|k, h| seen.contains_key(k) || h.value > FORGET);
    }

    /// The heat of a chunk, if it was ever seen.
    pub fn get(&self, key: &ChunkKey) -> Option<Heat> {
        self.chunks.get(key).copied()
    }

    /// Forgets every chunk of a process (it exited).
    pub fn remove_process(&mut self, pid: u32) {
        self.chunks.retain(|k, _| k.pid != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    fn sample(pid: u32, start: usize, end: usize, accesses: f64) -> AccessSample {
        AccessSample {
            pid,
            start,
            end,
            accesses,
            age: 0,
        }
    }

    /// The heat of the chunk of `pid` at `start`, if it was ever seen.
    fn heat(map: &HeatMap, pid: u32, start: usize) -> Option<Heat> {
        map.get(&ChunkKey { pid, start })
    }

    #[test]
    fn a_granularity_not_a_power_of_two_is_refused() {
        for g in [0, 3 * MB] {
            let e = HeatMap::new(g, 0.5).unwrap_err().to_string();
            assert!(
                e.contains(&format!("granularity {g} must be a power of two")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_region_at_the_top_of_the_address_space_is_counted() {
        let mut map = HeatMap::new(2 * MB, 0.0).unwrap();
        map.update(&[sample(1, usize::MAX - MB, usize::MAX, 1.0)]);
        let top = (usize::MAX - MB) / (2 * MB) * (2 * MB);
        assert_eq!(heat(&map, 1, top).unwrap().value, 1.0);
    }

    #[test]
    fn heat_rises_and_decays() {
        let mut map = HeatMap::new(2 * MB, 0.5).unwrap();
        map.update(&[sample(7, 0, 2 * MB, 1.0)]);
        assert_eq!(heat(&map, 7, 0).unwrap().value, 0.5);
        map.update(&[sample(7, 0, 2 * MB, 1.0)]);
        assert_eq!(heat(&map, 7, 0).unwrap().value, 0.75);
        assert_eq!(heat(&map, 7, 0).unwrap().observed, 2);
        // Not seen: it decays, by half per interval.
        map.update(&[]);
        assert_eq!(heat(&map, 7, 0).unwrap().value, 0.375);
        map.update(&[sample(7, 0, 2 * MB, 0.0)]);
        assert_eq!(heat(&map, 7, 0).unwrap().value, 0.1875);
    }

    #[test]
    fn regions_are_spread_over_chunks_by_coverage() {
        let mut map = HeatMap::new(2 * MB, 0.0).unwrap();
        // A hot region over the first 1 MiB and a cold one over the next 3 MiB.
        map.update(&[sample(1, 0, MB, 1.0), sample(1, MB, 4 * MB, 0.0)]);
        assert_eq!(heat(&map, 1, 0).unwrap().value, 0.5);
        assert_eq!(heat(&map, 1, 2 * MB).unwrap().value, 0.0);
        // Processes are kept apart.
        assert!(heat(&map, 2, 0).is_none());
    }

    #[test]
    fn cold_unseen_chunks_are_forgotten_and_exited_processes_removed() {
        let mut map = HeatMap::new(2 * MB, 0.5).unwrap();
        map.update(&[sample(1, 0, 2 * MB, 0.0), sample(2, 0, 2 * MB, 1.0)]);
        map.update(&[sample(2, 0, 2 * MB, 1.0)]);
        assert!(heat(&map, 1, 0).is_none());
        map.remove_process(2);
        assert!(map.chunks.is_empty());
    }
}
