//! The cost model: copy and migration bandwidth measured on this machine, saved as JSON.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Effort;
use crate::copy::{Copier, EngineKind};
use crate::topology::{self, Topology};

/// Copy bandwidth of one way of copying at one batch size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CopyPoint {
    /// How it copied.
    pub copier: Copier,
    /// Bytes per batch.
    pub bytes: u64,
    /// GB/s the planner plans with: for a calibrated point what the copier reliably does (a
    /// pessimistic figure of its samples), for an observed one the median of what it did.
    pub gbps: f64,
    /// A calibrated point's median GB/s, what the copier typically does; `None` where `gbps` is
    /// the median already (observed points, older models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_gbps: Option<f64>,
}

/// `move_pages` bandwidth with a number of threads at one migration size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KernelPoint {
    /// Threads calling `move_pages`.
    pub threads: usize,
    /// Bytes per migration.
    pub bytes: u64,
    /// Median GB/s.
    pub gbps: f64,
}

/// The machine a model was measured on; a model from another machine is not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineId {
    /// CPU model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub online_cpus: usize,
    /// Online NUMA nodes.
    pub nodes: usize,
}

impl MachineId {
    /// This machine.
    pub fn of(topology: &Topology) -> Self {
        MachineId {
            cpu_model: topology::cpu_model(),
            online_cpus: topology.online_cpus.len(),
            nodes: topology.nodes.len(),
        }
    }
}

/// Where copy bandwidth stops growing with workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Saturation {
    /// The engine.
    pub engine: EngineKind,
    /// The fewest workers that reach 90% of the best bandwidth at the largest batch.
    pub workers: usize,
    /// Their bandwidth, GB/s.
    pub gbps: f64,
    /// The best bandwidth with any worker count, GB/s.
    pub best_gbps: f64,
}

/// Bandwidth measured on one machine by [`super::calibrate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Format version of this file.
    pub version: u32,
    /// The machine it was measured on.
    pub machine: MachineId,
    /// Kernel release.
    pub kernel: String,
    /// Seconds since the epoch when it was measured.
    pub created_unix: u64,
    /// How long the measurement took: `builtin`, `quick` or `full`.
    pub effort: Effort,
    /// Copy bandwidth per engine and batch size, on the calling thread and on 1, 2, 4 … workers.
    pub copy: Vec<CopyPoint>,
    /// `move_pages` bandwidth between two nodes (empty on one-node machines).
    pub kernel_path: Vec<KernelPoint>,
    /// Where copy bandwidth stops growing with workers, per engine.
    pub saturation: Vec<Saturation>,
    /// Copy figures measured on real batches; each replaces the calibrated one of its size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<CopyPoint>,
    /// `move_pages` figures measured while migrating; each replaces the calibrated one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_kernel: Vec<KernelPoint>,
    /// How long handing one tiny batch to one pool worker and getting the reply takes, in
    /// microseconds: why small batches stay on the calling thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_handoff_us: Option<f64>,
}

/// Why a model could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing the file failed.
    #[error("cannot {action} {path}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is a cost model of another format version.
    #[error("{path} is a cost model of version {found}; this pagemig reads version {version}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it says it is.
        found: u64,
        /// The version this pagemig reads.
        version: u32,
    },
    /// A figure of the model that cannot be a measurement.
    #[error("{path}: {field} is {value}, which cannot be a measurement ({expected})")]
    Figure {
        /// The file.
        path: PathBuf,
        /// The field, as `copy[3].gbps`.
        field: String,
        /// Its value, as written.
        value: String,
        /// What a measured value is.
        expected: &'static str,
    },
    /// The file is not a cost model of this version.
    #[error("{path} is not a pagemig cost model (version {version}): {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The version this pagemig reads.
        version: u32,
        /// What the parser said.
        reason: String,
    },
}

/// Bandwidth at `bytes` on a curve of (bytes, GB/s) points sorted by size: linear in log(bytes)
/// between points, flat beyond the ends.
fn interpolate(curve: &[(u64, f64)], bytes: u64) -> Option<f64> {
    let (first, last) = (curve.first()?, curve.last()?);
    if bytes <= first.0 {
        return Some(first.1);
    }
    if bytes >= last.0 {
        return Some(last.1);
    }
    let i = curve.partition_point(|p| p.0 <= bytes);
    let (a, b) = (curve[i - 1], curve[i]);
    let t = ((bytes as f64).ln() - (a.0 as f64).ln()) / ((b.0 as f64).ln() - (a.0 as f64).ln());
    Some(a.1 + t * (b.1 - a.1))
}

impl CostModel {
    /// Version of the JSON format.
    pub const VERSION: u32 = 1;

    /// Every copier measured.
    pub fn copiers(&self) -> Vec<Copier> {
        let distinct: BTreeSet<Copier> = self.copy.iter().map(|p| p.copier).collect();
        distinct.into_iter().collect()
    }

    /// Predicted GB/s of `copier` for a batch of `bytes`; `None` if it was not measured. An
    /// observed figure replaces the calibrated one of the same size. A pool pays its hand-off
    /// once per batch, so its figure is the highest up to `bytes` (samples of one size can stall
    /// together on a virtual machine), counting from the largest learned size up to `bytes`.
    pub fn predict_copy(&self, copier: Copier, bytes: u64) -> Option<f64> {
        self.copy_figure(copier, bytes, Figure::gbps)
    }

    /// What `copier` typically does for a batch of `bytes` ([`CopyPoint::median_gbps`]), as
    /// [`CostModel::predict_copy`] does with its figure.
    pub fn typical_copy(&self, copier: Copier, bytes: u64) -> Option<f64> {
        self.copy_figure(copier, bytes, typical)
    }

    fn copy_figure(
        &self,
        copier: Copier,
        bytes: u64,
        figure: fn(&CopyPoint) -> f64,
    ) -> Option<f64> {
        let at = |b| predict(&self.copy, &self.observed, copier, b, figure);
        let here = at(bytes)?;
        if copier.threads() < 2 {
            return Some(here);
        }
        // A figure learned while copying is what the pool does at its size under real use: the
        // figures of smaller sizes do not lift it.
        let learned = self
            .observed
            .iter()
            .filter(|p| p.copier == copier && p.bytes <= bytes)
            .map(|p| p.bytes)
            .max()
            .unwrap_or(0);
        Some(
            self.copy
                .iter()
                .chain(&self.observed)
                .filter(|p| p.copier == copier && (learned..bytes).contains(&p.bytes))
                .filter_map(|p| at(p.bytes))
                .fold(here, f64::max),
        )
    }

    /// Takes in figures measured while copying: each replaces the observed figure of the same
    /// copier and size, if any. Returns how many were new or changed.
    pub fn learn(&mut self, points: &[CopyPoint]) -> usize {
        learn(&mut self.observed, points)
    }

    /// As [`CostModel::learn`], for `move_pages` figures measured while migrating.
    pub fn learn_kernel(&mut self, points: &[KernelPoint]) -> usize {
        learn(&mut self.observed_kernel, points)
    }

    /// Thread counts measured on the kernel path.
    pub fn kernel_threads(&self) -> Vec<usize> {
        let distinct: BTreeSet<usize> = self.kernel_path.iter().map(|p| p.threads).collect();
        distinct.into_iter().collect()
    }

    /// Predicted `move_pages` GB/s with `threads` threads for `bytes`; `None` if not measured.
    /// An observed figure replaces the calibrated one of the same size.
    pub fn predict_kernel(&self, threads: usize, bytes: u64) -> Option<f64> {
        predict(
            &self.kernel_path,
            &self.observed_kernel,
            threads,
            bytes,
            Figure::gbps,
        )
    }

    /// Why this model should not be used on `machine`, if it should not.
    pub fn mismatch(&self, machine: &MachineId) -> Option<String> {
        (self.machine != *machine).then(|| {
            format!(
                "it was measured on another machine ({}, {} CPUs, {} nodes; this one: {}, {} CPUs, {} nodes)",
                self.machine.cpu_model,
                self.machine.online_cpus,
                self.machine.nodes,
                machine.cpu_model,
                machine.online_cpus,
                machine.nodes
            )
        })
    }

    /// Where `pagemig calibrate` saves the model, given the values of `XDG_CACHE_HOME` and
    /// `HOME` (the caller reads the environment, the library does not):
    /// `$XDG_CACHE_HOME/pagemig/model.json`, or `$HOME/.cache/pagemig/model.json`.
    pub fn default_path(
        xdg_cache_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Option<PathBuf> {
        let cache = xdg_cache_home
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("pagemig").join("model.json"))
    }

    /// Reads a model: the version first (a file of another version is not parsed further),
    /// then the fields, then every figure (see [`CostModel::validate`]).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = fs::read_to_string(path).map_err(|source| ModelError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let format = |reason: String| ModelError::Format {
            path: path.to_owned(),
            version: Self::VERSION,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let version = value
            .get("version")
            .ok_or_else(|| format("no version field".into()))?;
        let found = version
            .as_u64()
            .ok_or_else(|| format("the version is not a number".into()))?;
        if found != u64::from(Self::VERSION) {
            return Err(ModelError::Version {
                path: path.to_owned(),
                found,
                version: Self::VERSION,
            });
        }
        let model: CostModel = serde_json::from_value(value).map_err(|e| format(e.to_string()))?;
        model
            .validate()
            .map_err(|(field, value, expected)| ModelError::Figure {
                path: path.to_owned(),
                field,
                value,
                expected,
            })?;
        Ok(model)
    }

    /// Checks every figure of the model (a hand-edited bandwidth of -5 would make the planner
    /// choose nonsense). Returns the first bad field, its value and what was expected.
    pub fn validate(&self) -> Result<(), (String, String, &'static str)> {
        const GBPS: &str = "a positive, finite number of GB/s, at most 100000";
        const COUNT: &str = "a positive count";
        const BYTES: &str = "a positive number of bytes";
        const MICROS: &str = "a non-negative, finite number of microseconds";
        let mut figures: Vec<(String, f64, &'static str)> = Vec::new();
        for (name, points) in [("copy", &self.copy), ("observed", &self.observed)] {
            for (i, p) in points.iter().enumerate() {
                figures.push((format!("{name}[{i}].gbps"), p.gbps, GBPS));
                figures.extend(
                    p.median_gbps
                        .map(|g| (format!("{name}[{i}].median_gbps"), g, GBPS)),
                );
                figures.push((format!("{name}[{i}].bytes"), p.bytes as f64, BYTES));
                if let Copier::Pool { workers, .. } = p.copier {
                    figures.push((format!("{name}[{i}].copier.workers"), workers as f64, COUNT));
                }
            }
        }
        for (name, points) in [
            ("kernel_path", &self.kernel_path),
            ("observed_kernel", &self.observed_kernel),
        ] {
            for (i, p) in points.iter().enumerate() {
                figures.push((format!("{name}[{i}].gbps"), p.gbps, GBPS));
                figures.push((format!("{name}[{i}].bytes"), p.bytes as f64, BYTES));
                figures.push((format!("{name}[{i}].threads"), p.threads as f64, COUNT));
            }
        }
        for (i, s) in self.saturation.iter().enumerate() {
            figures.push((format!("saturation[{i}].gbps"), s.gbps, GBPS));
            figures.push((format!("saturation[{i}].best_gbps"), s.best_gbps, GBPS));
            figures.push((format!("saturation[{i}].workers"), s.workers as f64, COUNT));
        }
        figures.extend(
            self.pool_handoff_us
                .map(|us| ("pool_handoff_us".into(), us, MICROS)),
        );
        let good = |v: f64, expected| match expected {
            GBPS => v.is_finite() && v > 0.0 && v <= 1e5,
            MICROS => v.is_finite() && v >= 0.0,
            _ => v > 0.0,
        };
        match figures.into_iter().find(|f| !good(f.1, f.2)) {
            Some((field, v, expected)) => Err((field, format!("{v:?}"), expected)),
            None => Ok(()),
        }
    }

    /// Writes the model to `path`, replacing it atomically. The directory must exist: a path
    /// given by the user is used as given.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |source| ModelError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text + "\n").map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }
}

/// A measured figure of a cost model: its curve (a copier, a thread count) and size, and GB/s.
trait Figure: Copy {
    type Curve: PartialEq;
    fn key(&self) -> (Self::Curve, u64);
    fn gbps(&self) -> f64;
}

impl Figure for CopyPoint {
    type Curve = Copier;
    fn key(&self) -> (Copier, u64) {
        (self.copier, self.bytes)
    }
    fn gbps(&self) -> f64 {
        self.gbps
    }
}

/// What a copy figure typically does: its median where kept, at least its `gbps`.
fn typical(p: &CopyPoint) -> f64 {
    p.median_gbps.unwrap_or(p.gbps).max(p.gbps)
}

impl Figure for KernelPoint {
    type Curve = usize;
    fn key(&self) -> (usize, u64) {
        (self.threads, self.bytes)
    }
    fn gbps(&self) -> f64 {
        self.gbps
    }
}

/// GB/s at `bytes` on curve `on` (each point's `figure`), from the calibrated points with the
/// observed ones in place of those of their size.
fn predict<F: Figure>(
    calibrated: &[F],
    observed: &[F],
    on: F::Curve,
    bytes: u64,
    figure: fn(&F) -> f64,
) -> Option<f64> {
    let observed: Vec<&F> = observed.iter().filter(|p| p.key().0 == on).collect();
    let mut curve: Vec<(u64, f64)> = calibrated
        .iter()
        .filter(|p| p.key().0 == on && !observed.iter().any(|o| o.key() == p.key()))
        .chain(observed.iter().copied())
        .map(|p| (p.key().1, figure(p)))
        .collect();
    curve.sort_by_key(|p| p.0);
    interpolate(&curve, bytes)
}

/// Puts each usable figure of `points` into `observed`, in place of the one on the same curve at
/// the same size; returns how many were new or changed.
fn learn<F: Figure>(observed: &mut Vec<F>, points: &[F]) -> usize {
    let mut changed = 0;
    for p in points
        .iter()
        .filter(|p| p.gbps().is_finite() && p.gbps() > 0.0)
    {
        match observed.iter_mut().find(|o| o.key() == p.key()) {
            Some(o) if o.gbps() == p.gbps() => continue,
            Some(o) => *o = *p,
            None => observed.push(*p),
        }
        changed += 1;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const POOL: Copier = Copier::Pool {
        engine: EngineKind::Nt,
        workers: 2,
    };
    const THREAD: Copier = Copier::Thread {
        engine: EngineKind::Nt,
    };

    /// A calibrated figure whose median is the figure itself.
    fn point(copier: Copier, bytes: u64, gbps: f64) -> CopyPoint {
        CopyPoint {
            copier,
            bytes,
            gbps,
            median_gbps: Some(gbps),
        }
    }

    /// A model of these calibrated copy figures and nothing else.
    fn model(copy: Vec<CopyPoint>) -> CostModel {
        CostModel {
            version: CostModel::VERSION,
            machine: MachineId {
                cpu_model: "x".into(),
                online_cpus: 2,
                nodes: 1,
            },
            kernel: String::new(),
            created_unix: 0,
            effort: Effort::Quick,
            copy,
            kernel_path: Vec::new(),
            saturation: Vec::new(),
            observed: Vec::new(),
            observed_kernel: Vec::new(),
            pool_handoff_us: None,
        }
    }

    #[test]
    fn observed_figures_replace_calibrated_ones_at_their_size() {
        let point = |bytes, gbps| CopyPoint {
            median_gbps: None,
            ..point(THREAD, bytes, gbps)
        };
        let mut m = model(vec![point(4096, 8.0), point(16384, 10.0)]);
        assert_eq!(m.predict_copy(THREAD, 4096), Some(8.0));
        // Typically: the median where calibration kept one, else the figure itself.
        m.copy[1].median_gbps = Some(14.0);
        assert_eq!(m.typical_copy(THREAD, 16384), Some(14.0));
        assert_eq!(m.predict_copy(THREAD, 16384), Some(10.0));
        assert_eq!(m.typical_copy(THREAD, 4096), Some(8.0));
        assert_eq!(m.learn(&[point(4096, 5.0), point(8192, 4.0)]), 2);
        assert_eq!(m.predict_copy(THREAD, 4096), Some(5.0));
        assert_eq!(m.predict_copy(THREAD, 8192), Some(4.0));
        assert_eq!(m.predict_copy(THREAD, 16384), Some(10.0));
        assert_eq!(
            m.typical_copy(THREAD, 8192),
            Some(4.0),
            "an observed median"
        );
        // The same figure again changes nothing; a bad one is not taken.
        assert_eq!(m.learn(&[point(4096, 5.0), point(4096, f64::NAN)]), 0);

        // So on the kernel path, per thread count.
        let kernel = |threads, gbps| KernelPoint {
            threads,
            bytes: 1 << 26,
            gbps,
        };
        m.kernel_path = vec![kernel(1, 3.0), kernel(2, 6.0)];
        assert_eq!(m.learn_kernel(&[kernel(2, 2.5), kernel(1, 3.1)]), 2);
        assert_eq!(m.predict_kernel(2, 1 << 26), Some(2.5));
        assert_eq!(m.predict_kernel(1, 1 << 26), Some(3.1));
        assert_eq!(m.learn_kernel(&[kernel(2, 2.5)]), 0);
        assert!(m.validate().is_ok());
        m.copy[1].median_gbps = Some(f64::INFINITY);
        assert_eq!(m.validate().unwrap_err().0, "copy[1].median_gbps");
        m.copy[1].median_gbps = None;
        m.observed_kernel[0].gbps = -1.0;
        assert_eq!(m.validate().unwrap_err().0, "observed_kernel[0].gbps");
    }

    #[test]
    fn a_pool_does_at_least_what_it_did_on_smaller_batches() {
        let (mib, pool, thread) = (MIB, POOL, THREAD);
        // Calibration's samples of the pool at 16 MiB stalled; the calling thread's did not.
        let mut m = model(vec![
            point(pool, mib, 12.0),
            point(pool, 4 * mib, 20.0),
            point(pool, 16 * mib, 6.0),
            point(thread, 4 * mib, 16.0),
            point(thread, 16 * mib, 12.0),
        ]);
        assert_eq!(m.typical_copy(pool, mib), Some(12.0));
        assert_eq!(m.typical_copy(pool, 16 * mib), Some(20.0));
        assert_eq!(
            m.typical_copy(pool, 64 * mib),
            Some(20.0),
            "beyond the largest size"
        );
        assert_eq!(m.predict_copy(pool, 16 * mib), Some(20.0), "the plan too");
        for figure in [CostModel::typical_copy, CostModel::predict_copy] {
            assert_eq!(
                figure(&m, thread, 16 * mib),
                Some(12.0),
                "one thread: as measured"
            );
        }
        // An observed figure replaces the calibrated one of its size here too, and the sizes
        // below it no longer lift what the pool does from there up.
        m.learn(&[point(pool, 4 * mib, 9.0)]);
        assert_eq!(m.typical_copy(pool, 16 * mib), Some(9.0));
        assert_eq!(m.predict_copy(pool, 16 * mib), Some(9.0));
        assert_eq!(
            m.predict_copy(pool, 2 * mib),
            Some(12.0),
            "below it: from the smallest up"
        );
    }

    /// What the check measured a pool at (a learned figure) is what it does at that size: a
    /// faster calibrated figure of a smaller size must not lift it, or the next plan would
    /// choose the pool the check just found slower.
    #[test]
    fn a_pool_figure_learned_at_a_size_is_not_lifted_by_smaller_calibrated_ones() {
        let (mib, pool) = (MIB, POOL);
        let point = |bytes, gbps| point(pool, bytes, gbps);
        let mut m = model(vec![
            point(4 * mib, 20.0),
            point(16 * mib, 22.0),
            point(64 * mib, 24.0),
        ]);
        assert_eq!(m.predict_copy(pool, 16 * mib), Some(22.0));
        m.learn(&[CopyPoint {
            median_gbps: None,
            ..point(16 * mib, 8.0)
        }]);
        for figure in [CostModel::predict_copy, CostModel::typical_copy] {
            assert_eq!(figure(&m, pool, 16 * mib), Some(8.0), "at the learned size");
            let above = figure(&m, pool, 32 * mib).unwrap();
            assert!((above - 16.0).abs() < 1e-9, "above it: from it up, {above}");
            assert_eq!(figure(&m, pool, 64 * mib), Some(24.0));
            assert_eq!(figure(&m, pool, 8 * mib), Some(20.0), "below it: as before");
        }
    }

    #[test]
    fn interpolation_is_log_linear_and_flat_outside() {
        let c = [(1 << 12, 2.0), (1 << 16, 6.0)];
        assert_eq!(interpolate(&c, 1), Some(2.0));
        assert_eq!(interpolate(&c, 1 << 20), Some(6.0));
        assert_eq!(interpolate(&c, 1 << 14), Some(4.0));
        assert_eq!(interpolate(&[], 5), None);
    }
}
