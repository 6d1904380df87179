//! `pagemig stat`: where a process's memory is, per node and mapping, like `numastat -p`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::topology::NodeId;

/// Arguments of `pagemig stat`, as given.
#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// The process: a pid or `self`.
    #[arg(long)]
    pid: Process,
    /// One row per mapping instead of one per name.
    #[arg(long)]
    mappings: bool,
    /// Print every mapping with its bytes per node as JSON.
    #[arg(long, conflicts_with = "mappings")]
    json: bool,
}

/// How the placement is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// A table row per mapping name.
    PerName,
    /// A table row per mapping.
    PerMapping,
    /// Every mapping as JSON.
    Json,
}

/// `stat`'s arguments, checked: the process has user memory.
pub struct Stat {
    pid: Process,
    view: View,
}

impl StatArgs {
    /// Refuses a process without user memory (a kernel thread, a zombie) or one that is gone.
    pub fn validate(self) -> anyhow::Result<Stat> {
        procfs::check_user_memory(self.pid)
            .with_context(|| format!("reading the memory placement of {}", self.pid))?;
        let view = match (self.json, self.mappings) {
            (true, _) => View::Json,
            (false, true) => View::PerMapping,
            (false, false) => View::PerName,
        };
        Ok(Stat {
            pid: self.pid,
            view,
        })
    }
}

/// Prints where the process's memory is.
pub fn run(config: &Stat, out: &mut dyn Write) -> anyhow::Result<()> {
    let pid = config.pid;
    let areas =
        procfs::placement(pid).with_context(|| format!("reading the memory placement of {pid}"))?;
    if config.view == View::Json {
        serde_json::to_writer_pretty(&mut *out, &areas)?;
        writeln!(out)?;
        return Ok(());
    }
    let nodes: Vec<NodeId> = {
        let mut n: Vec<NodeId> = areas
            .iter()
            .flat_map(|a| a.bytes_per_node.keys().copied())
            .collect();
        n.sort_unstable();
        n.dedup();
        n
    };
    let mut rows: Vec<(String, BTreeMap<NodeId, u64>)> = Vec::new();
    for a in areas.iter().filter(|a| !a.bytes_per_node.is_empty()) {
        let label = if config.view == View::PerMapping {
            format!("{:x}-{:x} {}", a.area.start, a.area.end, a.area.name())
        } else {
            a.area.name().to_owned()
        };
        let row = match rows.iter_mut().find(|(l, _)| *l == label) {
            Some(r) => r,
            None => {
                rows.push((label, BTreeMap::new()));
                rows.last_mut().expect("just pushed")
            }
        };
        for (&n, &b) in &a.bytes_per_node {
            *row.1.entry(n).or_default() += b;
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![format!("{pid} (MiB)")];
    header.extend(nodes.iter().map(|n| format!("node {n}")));
    header.push("total".into());
    table.set_header(header);
    let mut totals: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mib = |b: u64| format!("{:.2}", b as f64 / (1u64 << 20) as f64);
    for (label, per_node) in &rows {
        let mut row = vec![label.clone()];
        row.extend(
            nodes
                .iter()
                .map(|n| mib(per_node.get(n).copied().unwrap_or(0))),
        );
        row.push(mib(per_node.values().sum()));
        for (&n, &b) in per_node {
            *totals.entry(n).or_default() += b;
        }
        table.add_row(row);
    }
    let mut total_row = vec!["total".to_owned()];
    total_row.extend(
        nodes
            .iter()
            .map(|n| mib(totals.get(n).copied().unwrap_or(0))),
    );
    total_row.push(mib(totals.values().sum()));
    table.add_row(total_row);
    for col in 1..=nodes.len() + 1 {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    writeln!(out, "{table}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: StatArgs,
    }

    fn parse(args: &[&str]) -> Result<StatArgs, clap::Error> {
        Line::try_parse_from([&["stat"], args].concat()).map(|l| l.args)
    }

    #[test]
    fn the_view_is_resolved_and_conflicts_refused() {
        let view = |args: &[&str]| parse(args).unwrap().validate().unwrap().view;
        assert_eq!(view(&["--pid", "self"]), View::PerName);
        assert_eq!(view(&["--pid", "self", "--mappings"]), View::PerMapping);
        assert_eq!(view(&["--pid", "self", "--json"]), View::Json);
        let e = parse(&["--pid", "self", "--json", "--mappings"]).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
