//! `pagemig topo`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pagemig::topology::Topology;

use crate::model::{LoadedModel, ModelArgs, summary};

/// Arguments of `pagemig topo`, as given.
#[derive(Debug, clap::Args)]
pub struct TopoArgs {
    /// Print JSON instead of tables (the topology only, without the cost model).
    #[arg(long, conflicts_with = "model")]
    json: bool,
    /// Read this sysfs tree instead of /sys (for saved or synthetic machine layouts).
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

/// `topo`'s arguments, checked: the cost model is loaded before anything is printed.
pub struct Topo {
    /// The root of the sysfs tree to read.
    sysfs: PathBuf,
    /// The model shown under the tables; none for JSON.
    model: Option<LoadedModel>,
}

impl TopoArgs {
    /// Loads the cost model that tables show (one named with `--model` must load).
    pub fn validate(self) -> anyhow::Result<Topo> {
        Ok(Topo {
            model: if self.json {
                None
            } else {
                Some(self.model.load()?)
            },
            sysfs: self.sysfs,
        })
    }
}

/// Prints the topology, and the cost model under the tables.
pub fn run(config: &Topo, out: &mut dyn Write) -> anyhow::Result<()> {
    let topo = Topology::from_sysfs(&config.sysfs)
        .with_context(|| format!("reading the topology under {}", config.sysfs.display()))?;
    let Some(loaded) = &config.model else {
        serde_json::to_writer_pretty(&mut *out, &topo)?;
        writeln!(out)?;
        return Ok(());
    };
    writeln!(out, "{}", render(&topo))?;
    match &loaded.model {
        Some(m) => {
            writeln!(out, "\n{}", loaded.source)?;
            if let Some(why) = m.mismatch(&pagemig::policy::MachineId::of(&topo)) {
                writeln!(out, "not used here: {why}")?;
            }
            write!(out, "{}", summary(m))?;
        }
        None => writeln!(out, "\n{}: run `pagemig calibrate`", loaded.source)?,
    }
    Ok(())
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

fn render(topo: &Topology) -> String {
    let mut nodes = Table::new();
    nodes.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![
        "node",
        "kind",
        "tier",
        "GiB total",
        "GiB free",
        "CPUs",
        "L3 domains",
    ];
    let ids: Vec<String> = topo.nodes.iter().map(|n| format!("→{}", n.id)).collect();
    header.extend(ids.iter().map(String::as_str));
    nodes.set_header(header);
    for n in &topo.nodes {
        let kind = if n.is_memory_only() {
            "memory-only"
        } else if n.has_memory {
            "cpu+memory"
        } else {
            "cpu-only"
        };
        let domains: Vec<String> = topo
            .l3_domains
            .iter()
            .filter(|d| d.nodes.contains(n.id))
            .map(|d| d.index.to_string())
            .collect();
        let mut row = vec![
            n.id.to_string(),
            kind.to_owned(),
            topo.node_tier(n.id).map_or("-".into(), |t| t.to_string()),
            gib(n.mem_total),
            gib(n.mem_free),
            if n.cpus.is_empty() {
                "-".into()
            } else {
                n.cpus.to_string()
            },
            if domains.is_empty() {
                "-".into()
            } else {
                domains.join(",")
            },
        ];
        row.extend(
            topo.nodes
                .iter()
                .map(|to| n.distances.get(&to.id).map_or("-".into(), u32::to_string)),
        );
        nodes.add_row(row);
    }
    let mut caches = Table::new();
    caches.load_preset(UTF8_FULL_CONDENSED);
    caches.set_header(["L3 domain", "CPUs", "nodes", "size"]);
    for d in &topo.l3_domains {
        caches.add_row([
            d.index.to_string(),
            d.cpus.to_string(),
            d.nodes.to_string(),
            d.size.map_or("-".into(), |s| format!("{} MiB", s >> 20)),
        ]);
    }
    let tiers = if topo.tiers.is_empty() {
        "memory tiers: not exposed by this kernel".to_owned()
    } else {
        let list: Vec<String> = topo
            .tiers
            .iter()
            .map(|t| format!("tier {}: nodes {}", t.id, t.nodes))
            .collect();
        format!("memory tiers (fastest first): {}", list.join("; "))
    };
    format!("NUMA nodes (→N: distance to node N)\n{nodes}\n{caches}\n{tiers}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: TopoArgs,
    }

    fn parse(args: &[&str]) -> Result<TopoArgs, clap::Error> {
        Line::try_parse_from([&["topo"], args].concat()).map(|l| l.args)
    }

    #[test]
    fn a_named_model_must_load_and_json_shows_none() {
        let e = parse(&["--model", "/nonexistent/model.json"])
            .unwrap()
            .validate()
            .err()
            .expect("a missing model was accepted");
        assert!(
            format!("{e:#}").contains("/nonexistent/model.json"),
            "{e:#}"
        );
        let json = parse(&["--json", "--sysfs", "/tmp"])
            .unwrap()
            .validate()
            .unwrap();
        assert!(json.model.is_none());
        assert_eq!(json.sysfs, PathBuf::from("/tmp"));
        let e = parse(&["--json", "--model", "m.json"]).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
