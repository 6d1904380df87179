//! The cost model every command plans with: `--model FILE`, loading it (or measuring one now),
//! and describing it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pagemig::copy::Copier;
use pagemig::policy::{self, CalibrateOptions, CostModel, Effort, MachineId, SizeCheck};
use pagemig::sys;
use pagemig::topology::Topology;
use pagemig::workers::Workers;

use crate::values::page_size_label;

/// `--model FILE` of the commands that plan.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Cost model from `pagemig calibrate` [default: ~/.cache/pagemig/model.json if it exists].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

/// Where a model comes from, for notes and `--explain`.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The model; none where the planner's built-in defaults are used.
    pub model: Option<CostModel>,
    /// Where it came from, in words.
    pub source: String,
    /// The file it was read from (none when it was measured now).
    pub path: Option<PathBuf>,
}

impl ModelArgs {
    /// The model given with `--model` (which must load), or the saved one if there is one. A
    /// saved one that cannot be used (damaged, another version, absurd figures) is set aside
    /// with a warning on stderr naming the file and why: the built-in defaults are used.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        if let Some(path) = &self.model {
            return Ok(LoadedModel {
                model: Some(CostModel::load(path)?),
                source: format!("cost model {}", path.display()),
                path: Some(path.clone()),
            });
        }
        Ok(match default_path().filter(|p| p.exists()) {
            Some(path) => match CostModel::load(&path) {
                Ok(model) => LoadedModel {
                    model: Some(model),
                    source: format!("cost model {}", path.display()),
                    path: Some(path),
                },
                Err(e) => {
                    let why = crate::message(&anyhow::Error::from(e));
                    eprintln!(
                        "warning: the saved cost model is not used: {why}; using the built-in defaults (`pagemig calibrate` replaces it)"
                    );
                    LoadedModel {
                        model: None,
                        source: format!("cost model {} unusable", path.display()),
                        path: None,
                    }
                }
            },
            None => LoadedModel {
                model: None,
                source: "no saved cost model".into(),
                path: None,
            },
        })
    }
}

impl LoadedModel {
    /// This model where it fits the machine; otherwise a calibration of the copy engines made
    /// now with `effort`.
    pub fn or_measure(
        &self,
        topo: &Topology,
        effort: Effort,
        workers: &Arc<Workers>,
    ) -> anyhow::Result<LoadedModel> {
        let fits = self
            .model
            .as_ref()
            .is_some_and(|m| m.mismatch(&MachineId::of(topo)).is_none());
        if fits {
            return Ok(self.clone());
        }
        let allowed = sys::allowed_cpus()?;
        let options = CalibrateOptions {
            effort,
            no_kernel_path: true,
            ..CalibrateOptions::default()
        };
        let model = policy::calibrate(topo, &allowed, &options, workers, &|_| {})
            .context("calibrating copy engines (no saved cost model)")?;
        Ok(LoadedModel {
            model: Some(model),
            path: None,
            source: format!(
                "{}; {effort:?} calibration of copy engines made now (save one with `pagemig calibrate`)",
                self.source
            ),
        })
    }
}

/// Where `pagemig calibrate` saves the model by default (from `XDG_CACHE_HOME` or `HOME`).
pub fn default_path() -> Option<PathBuf> {
    CostModel::default_path(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// One line per batch size where the auto engine's check tried another copier: what it
/// measured (in its trials, where the copiers took turns, and in the latest windows), what it
/// changed and what it uses now.
pub fn describe_checks(checks: &[SizeCheck]) -> Vec<String> {
    let list = |figures: &[(Copier, f64)]| -> String {
        let figures: Vec<String> = figures
            .iter()
            .map(|(copier, g)| format!("{copier} {g:.2}"))
            .collect();
        figures.join(", ")
    };
    checks
        .iter()
        .filter(|c| c.trials > 0 || !c.moves.is_empty())
        .map(|c| {
            let measured = if c.in_turns.is_empty() {
                format!("measured GB/s: {}", list(&c.measured))
            } else {
                format!(
                    "measured in turns GB/s: {} (latest windows: {})",
                    list(&c.in_turns),
                    list(&c.measured)
                )
            };
            format!(
                "{} batches: planned {} (predicted {:.2} GB/s), {measured}; {} trial(s), {} change(s), now {}",
                page_size_label(c.bytes as usize),
                c.planned,
                c.predicted_gbps,
                c.trials,
                c.moves.len(),
                c.current
            )
        })
        .collect()
}

/// The fastest copier per batch size, the fewest workers that reach 90% of each engine's best
/// bandwidth, and the kernel path.
pub fn summary(model: &CostModel) -> String {
    let mut s = format!(
        "cost model: {} ({} CPUs, {} nodes), kernel {}, {}\n",
        model.machine.cpu_model,
        model.machine.online_cpus,
        model.machine.nodes,
        model.kernel,
        match model.effort {
            Effort::Builtin => "built-in calibration",
            Effort::Quick => "quick calibration",
            Effort::Full => "full calibration",
        }
    );
    let mut sizes: Vec<u64> = model.copy.iter().map(|p| p.bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    // The planner plans with what a copier reliably does; the auto engine also tries one that
    // typically does better (its median; for a pool, the highest median up to this size).
    table.set_header([
        "batch",
        "fastest copier",
        "GB/s, reliably",
        "typically",
        "typically fastest",
        "one-thread memcpy GB/s",
    ]);
    for bytes in sizes {
        let at = |c: Copier| model.predict_copy(c, bytes).unwrap_or(0.0);
        let typically = |c: Copier| model.typical_copy(c, bytes).unwrap_or(0.0);
        let fastest = |by: &dyn Fn(Copier) -> f64| {
            model
                .copiers()
                .into_iter()
                .max_by(|a, b| by(*a).total_cmp(&by(*b)))
        };
        let (Some(best), Some(top)) = (fastest(&at), fastest(&typically)) else {
            continue;
        };
        table.add_row([
            page_size_label(bytes as usize),
            best.to_string(),
            format!("{:.2}", at(best)),
            format!("{:.2}", typically(best)),
            if top == best {
                "the same".into()
            } else {
                format!("{top}: {:.2}", typically(top))
            },
            format!(
                "{:.2}",
                at(Copier::Thread {
                    engine: pagemig::copy::EngineKind::Memcpy
                })
            ),
        ]);
    }
    s += &format!("{table}\n");
    for sat in &model.saturation {
        s += &format!(
            "{}: {} worker(s) reach 90% of its best bandwidth: {:.2} GB/s (best {:.2})\n",
            sat.engine, sat.workers, sat.gbps, sat.best_gbps
        );
    }
    if let Some(us) = model.pool_handoff_us {
        let memcpy_4k = model
            .predict_copy(
                Copier::Thread {
                    engine: pagemig::copy::EngineKind::Memcpy,
                },
                4096,
            )
            .unwrap_or(0.0);
        s += &format!(
            "pool hand-off: {us:.2} us per batch to one worker and back, so one 4 KB page on a worker runs at most {:.2} GB/s (one-thread memcpy: {memcpy_4k:.2}): small batches stay on the calling thread\n",
            4096.0 / (us * 1e3)
        );
    }
    if !model.observed.is_empty() {
        s += &format!(
            "observed while copying (replacing calibrated figures): {}\n",
            model
                .observed
                .iter()
                .map(|p| format!(
                    "{} {} {:.2} GB/s",
                    page_size_label(p.bytes as usize),
                    p.copier,
                    p.gbps
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    if model.kernel_path.is_empty() {
        s += "kernel path: not measured (one node with memory, or --no-kernel-path)\n";
    } else {
        for t in model.kernel_threads() {
            let points: Vec<String> = model
                .kernel_path
                .iter()
                .filter(|p| p.threads == t)
                .map(|p| format!("{} MiB {:.2}", p.bytes >> 20, p.gbps))
                .collect();
            s += &format!("kernel path, {t} thread(s), GB/s: {}\n", points.join(", "));
        }
    }
    s
}
