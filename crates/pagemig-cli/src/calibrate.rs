//! `pagemig calibrate`, and the cost model every other command plans with.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pagemig::copy::Copier;
use pagemig::policy::{
    self, CalibrateOptions, CostModel, Effort, MachineId, Resources, SizeCheck, Step,
};
use pagemig::sys;
use pagemig::topology::{NodeId, Topology};

use crate::bench::progress_bar;

/// Arguments of `pagemig calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// A few seconds: fewer repetitions and migration sizes.
    #[arg(long)]
    quick: bool,
    /// Node whose memory the copies use [default: the first node with memory and CPUs].
    #[arg(long)]
    node: Option<NodeId>,
    /// Do not measure move_pages between two nodes.
    #[arg(long)]
    no_kernel_path: bool,
    /// Save the model here [default: ~/.cache/pagemig/model.json].
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Keep the figures the saved model learned while copying, and check the new model's
    /// choices before saving: batches of every size are copied with the planner's copier, and
    /// where one runs more than 10% under an alternative, the alternatives are tried and the
    /// faster one's figures learned.
    #[arg(long)]
    update: bool,
    /// Print the model as JSON.
    #[arg(long)]
    json: bool,
}

/// `--model FILE` of the commands that plan.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Cost model from `pagemig calibrate` [default: ~/.cache/pagemig/model.json if it exists].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

/// Where a model comes from, for notes and `--explain`.
pub struct LoadedModel {
    pub model: Option<CostModel>,
    pub source: String,
    /// The file it was read from (none when it was measured now).
    pub path: Option<PathBuf>,
}

fn model_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_owned()),
        None => CostModel::default_path()
            .context("no cache directory: set HOME or XDG_CACHE_HOME, or give --model FILE"),
    }
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
        Ok(match CostModel::default_path().filter(|p| p.exists()) {
            Some(path) => match CostModel::load(&path) {
                Ok(model) => LoadedModel {
                    model: Some(model),
                    source: format!("cost model {}", path.display()),
                    path: Some(path),
                },
                Err(e) => {
                    let why = anyhow::Error::from(e);
                    eprintln!(
                        "warning: the saved cost model is not used: {why:#}; using the built-in defaults (`pagemig calibrate` replaces it)"
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

    /// As [`ModelArgs::load`], and when there is no saved model, a calibration of the copy
    /// engines made now with `effort`.
    pub fn load_or_measure(&self, topo: &Topology, effort: Effort) -> anyhow::Result<LoadedModel> {
        let loaded = self.load()?;
        let fits = loaded
            .model
            .as_ref()
            .is_some_and(|m| m.mismatch(&MachineId::of(topo)).is_none());
        if fits {
            return Ok(loaded);
        }
        let allowed = sys::allowed_cpus()?;
        let options = CalibrateOptions {
            effort,
            no_kernel_path: true,
            ..CalibrateOptions::default()
        };
        let model = policy::calibrate(topo, &allowed, &options, &|_| {})
            .context("calibrating copy engines (no saved cost model)")?;
        Ok(LoadedModel {
            model: Some(model),
            path: None,
            source: format!(
                "{}; {effort:?} calibration of copy engines made now (save one with `pagemig calibrate`)",
                loaded.source
            ),
        })
    }
}

/// Checks where the model will be saved before measuring: the directory must exist (only the
/// default cache directory is made) and the path must not be a directory.
fn check_model_path(path: &Path, is_default: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if is_default {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    } else if !dir.is_dir() {
        anyhow::bail!(
            "--model {}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("--model {}: is a directory", path.display());
    }
    Ok(())
}

pub fn run(args: &CalibrateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topo = Topology::detect().context("reading the topology from /sys")?;
    if let Some(node) = args.node {
        crate::bench::check_node(&topo, node, "calibration")?;
    }
    let path = model_path(args.model.as_deref())?;
    check_model_path(&path, args.model.is_none())?;
    let allowed = sys::allowed_cpus()?;
    let options = CalibrateOptions {
        effort: if args.quick {
            Effort::Quick
        } else {
            Effort::Full
        },
        node: args.node,
        no_kernel_path: args.no_kernel_path,
    };
    let bar = progress_bar(0);
    bar.set_message("calibrating");
    let mut model = policy::calibrate(&topo, &allowed, &options, &|s| match s {
        Step::Planned(n) => bar.set_length(n),
        Step::Done => bar.inc(1),
    })
    .context("calibrating")?;
    let mut checked = Vec::new();
    if args.update {
        // Figures learned on this machine survive a new calibration; a file that is missing,
        // unreadable or from another machine has nothing to give.
        if let Ok(old) = CostModel::load(&path)
            && old.mismatch(&MachineId::of(&topo)).is_none()
        {
            model.learn(&old.observed);
        }
        bar.set_message("checking the model's choices");
        checked = policy::check_choices(&topo, &mut model, Resources::detect()?, &options)
            .context("checking the model's choices")?;
    }
    bar.finish_and_clear();
    model
        .save(&path)
        .with_context(|| format!("saving the cost model to {}", path.display()))?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &model)?;
        writeln!(out)?;
    } else {
        writeln!(out, "saved {}", path.display())?;
        if args.update {
            let lines = describe_checks(&checked);
            if lines.is_empty() {
                writeln!(
                    out,
                    "checked every batch size: each plan delivered what it predicted"
                )?;
            }
            for line in lines {
                writeln!(out, "checked: {line}")?;
            }
        }
        write!(out, "{}", summary(&model))?;
    }
    Ok(())
}

/// One line per batch size where the auto engine's check changed copier: what it measured and
/// what it uses now.
pub fn describe_checks(checks: &[SizeCheck]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.moves.is_empty())
        .map(|c| {
            let measured: Vec<String> = c
                .measured
                .iter()
                .map(|(copier, g)| format!("{copier} {g:.2}"))
                .collect();
            format!(
                "{} batches: planned {} (predicted {:.2} GB/s), measured GB/s: {}; {} change(s), now {}",
                crate::bench::page_size_label(c.bytes as usize),
                c.planned,
                c.predicted_gbps,
                measured.join(", "),
                c.moves.len(),
                c.current
            )
        })
        .collect()
}

/// The fastest copier per batch size, where bandwidth stops growing, and the kernel path.
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
    table.set_header(["batch", "fastest copier", "GB/s", "one-thread memcpy GB/s"]);
    for bytes in sizes {
        let at = |c: Copier| model.predict_copy(c, bytes).unwrap_or(0.0);
        let Some(best) = model
            .copiers()
            .into_iter()
            .max_by(|a, b| at(*a).total_cmp(&at(*b)))
        else {
            continue;
        };
        table.add_row([
            crate::bench::page_size_label(bytes as usize),
            best.to_string(),
            format!("{:.2}", at(best)),
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
            "{}: bandwidth stops growing at {} worker(s): {:.2} GB/s (best {:.2})\n",
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
                    crate::bench::page_size_label(p.bytes as usize),
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
