//! `pagemig calibrate`: measure this machine and save the cost model every other command plans
//! with.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use pagemig::policy::{self, CalibrateOptions, CostModel, Effort, MachineId, Resources, Step};
use pagemig::topology::NodeId;
use pagemig::workers::Workers;

use crate::machine::Host;
use crate::model::{describe_checks, summary};
use crate::progress::progress_bar;

/// Arguments of `pagemig calibrate`, as given.
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

/// `calibrate`'s arguments, checked, with the model's path resolved.
pub struct Calibration {
    host: Host,
    options: CalibrateOptions,
    /// Where the model is saved.
    path: PathBuf,
    update: bool,
    json: bool,
}

impl CalibrateArgs {
    /// Checks the node and where the model will be saved before anything is measured; makes the
    /// default cache directory.
    pub fn validate(self, host: Host) -> anyhow::Result<Calibration> {
        if let Some(node) = self.node {
            host.check_node(node, "calibration")?;
        }
        let path = model_path(self.model.as_deref())?;
        check_model_path(&path, self.model.is_none())?;
        let options = CalibrateOptions {
            effort: if self.quick {
                Effort::Quick
            } else {
                Effort::Full
            },
            node: self.node,
            no_kernel_path: self.no_kernel_path,
        };
        Ok(Calibration {
            host,
            options,
            path,
            update: self.update,
            json: self.json,
        })
    }
}

fn model_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_owned()),
        None => crate::model::default_path()
            .context("no cache directory: set HOME or XDG_CACHE_HOME, or give --model FILE"),
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

/// Measures, saves the model and describes it.
pub fn run(config: &Calibration, out: &mut dyn Write) -> anyhow::Result<()> {
    let Calibration {
        host: Host { topo, allowed },
        options,
        path,
        update,
        json,
    } = config;
    let workers = Arc::new(Workers::new());
    let bar = progress_bar(0);
    bar.set_message("calibrating");
    let mut model = policy::calibrate(topo, allowed, options, &workers, &|s| match s {
        Step::Planned(n) => bar.set_length(n),
        Step::Done => bar.inc(1),
    })
    .context("calibrating")?;
    let mut checked = Vec::new();
    if *update {
        // Figures learned on this machine survive a new calibration; a file that is missing,
        // unreadable or from another machine has nothing to give.
        if let Ok(old) = CostModel::load(path)
            && old.mismatch(&MachineId::of(topo)).is_none()
        {
            model.learn(&old.observed);
            model.learn_kernel(&old.observed_kernel);
        }
        bar.set_message("checking the model's choices");
        checked = policy::check_choices(topo, &mut model, Resources::detect()?, options, &workers)
            .context("checking the model's choices")?;
    }
    bar.finish_and_clear();
    model
        .save(path)
        .with_context(|| format!("saving the cost model to {}", path.display()))?;
    if *json {
        serde_json::to_writer_pretty(&mut *out, &model)?;
        writeln!(out)?;
    } else {
        writeln!(out, "saved {}", path.display())?;
        if *update {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: CalibrateArgs,
    }

    fn validate(args: &[&str]) -> anyhow::Result<Calibration> {
        Line::try_parse_from([&["calibrate"], args].concat())
            .unwrap()
            .args
            .validate(Host::fake(2, 1))
    }

    #[test]
    fn the_node_and_the_model_path_are_checked() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("m.json");
        let c = validate(&["--quick", "--node", "1", "--model", file.to_str().unwrap()]).unwrap();
        assert_eq!(c.path, file);
        assert_eq!((c.options.effort, c.options.node), (Effort::Quick, Some(1)));
        let missing = dir.path().join("no/m.json");
        for (args, want) in [
            (
                vec!["--node", "5"],
                "calibration node 5 does not exist or is offline (nodes with memory: 0-1)"
                    .to_owned(),
            ),
            (
                vec!["--model", missing.to_str().unwrap()],
                format!(
                    "--model {}: the directory {} does not exist",
                    missing.display(),
                    dir.path().join("no").display()
                ),
            ),
            (
                vec!["--model", dir.path().to_str().unwrap()],
                format!("--model {}: is a directory", dir.path().display()),
            ),
        ] {
            match validate(&args) {
                Ok(_) => panic!("{args:?} accepted"),
                Err(e) => assert_eq!(format!("{e:#}"), want, "{args:?}"),
            }
        }
    }
}
