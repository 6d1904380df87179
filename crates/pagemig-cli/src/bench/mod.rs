//! `pagemig bench`: the kernel work's tables (rows: pages per migration; columns: vanilla,
//! engines, mt_1 … mt_N), measured on this machine.
//!
//! Each bench (`copy`, `migrate`, `tier`) checks its arguments into a configuration before it
//! measures anything; what they share is here (measuring, reports) and in [`options`] (the
//! options of the table benches) and [`table`] (cells, rows, tables).

pub mod copy;
pub mod migrate;
pub mod options;
mod plot;
pub mod table;
pub mod tier;

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use pagemig::account::Phases;
use pagemig::policy::{IDLE_POOLS, Turn, turns};
use pagemig::topology::{NodeId, Topology};

use crate::machine::Machine;
use crate::values::page_size_label;
use options::{Format, Output};
use table::{Cell, NOISY_MARK, PageTable, noise_note};

/// Times `reps` samples of `per_sample` calls of `step(i)`, each moving `bytes`; GB/s.
pub fn measure(
    reps: usize,
    per_sample: usize,
    bytes: usize,
    mut step: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Option<Cell>> {
    let mut cells = measure_row(reps, per_sample, bytes, 1, |_, i| step(i))?;
    Ok(cells.pop().flatten())
}

/// As [`measure`] for `columns` columns of one row: `step(column, i)`. The columns take turns
/// sample by sample ([`turns`]), so that noise from elsewhere on the machine (a neighbour's
/// burst, a frequency change) spreads over all of them and their ratios stay fair; each sample
/// starts where the one before it ended (`i` counts on), so it does not copy what that one left
/// in the cache.
pub fn measure_row(
    reps: usize,
    per_sample: usize,
    bytes: usize,
    columns: usize,
    mut step: impl FnMut(usize, usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Option<Cell>>> {
    for c in 0..columns {
        step(c, 0)?; // warm-up: first use of the pool's threads, page tables, caches
    }
    let mut samples = vec![Vec::with_capacity(reps); columns];
    for Turn { candidate, number } in turns(reps, columns) {
        // Workers of the previous column's pool poll for a while before they sleep; let them
        // fall asleep first, or this column's sample pays for their polling.
        std::thread::sleep(IDLE_POOLS);
        let start = Instant::now();
        for i in 0..per_sample {
            step(candidate, 1 + number * per_sample + i)?;
        }
        let secs = start.elapsed().as_secs_f64();
        samples[candidate].push((bytes * per_sample) as f64 / secs / 1e9);
    }
    Ok(samples.into_iter().map(Cell::from_samples).collect())
}

/// "node 0", or "nodes 0 and 1": the nodes a bench copies or migrates between.
pub fn nodes_label(from: NodeId, to: NodeId) -> String {
    if from == to {
        format!("node {from}")
    } else {
        format!("nodes {from} and {to}")
    }
}

/// Bytes a bench may take on `node`: 80% of its free memory.
pub fn usable_free(topo: &Topology, node: NodeId) -> usize {
    topo.node(node).map_or(0, |n| n.mem_free) as usize / 10 * 8
}

/// Where the time of one remap cell went, per migration.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    pub page_size: usize,
    pub pages: usize,
    pub column: String,
    pub check_ms: f64,
    pub scan_ms: f64,
    pub protect_ms: f64,
    pub alloc_ms: f64,
    pub copy_ms: f64,
    pub remap_ms: f64,
    pub wake_ms: f64,
    pub verify_ms: f64,
    /// The bench's own clock around each migration.
    pub wall_ms: f64,
    /// The phases' sum as a share of `wall_ms`: what they account for.
    pub accounted: f64,
    /// Copy as a share of the wall time.
    pub copy_share: f64,
}

impl PhaseRow {
    /// Averages `phases` and `wall`, summed over `runs` migrations.
    pub fn new(
        page_size: usize,
        pages: usize,
        column: &str,
        phases: &Phases,
        wall: std::time::Duration,
        runs: u32,
    ) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / f64::from(runs.max(1));
        let share = |d: std::time::Duration| {
            if wall.is_zero() {
                0.0
            } else {
                d.as_secs_f64() / wall.as_secs_f64()
            }
        };
        PhaseRow {
            page_size,
            pages,
            column: column.to_owned(),
            check_ms: ms(phases.check),
            scan_ms: ms(phases.scan),
            protect_ms: ms(phases.protect),
            alloc_ms: ms(phases.alloc),
            copy_ms: ms(phases.copy),
            remap_ms: ms(phases.remap),
            wake_ms: ms(phases.wake),
            verify_ms: ms(phases.verify),
            wall_ms: ms(wall),
            accounted: share(phases.total()),
            copy_share: share(phases.copy),
        }
    }
}

/// A whole bench run: machine, tables (GB/s) and notes on how it was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub unit: &'static str,
    pub machine: Machine,
    pub notes: Vec<String>,
    pub tables: Vec<PageTable>,
    /// Time per phase of remap cells (empty for other benches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseRow>,
}

#[derive(Serialize)]
struct CsvLine<'a> {
    bench: &'a str,
    page_size: usize,
    pages: usize,
    column: &'a str,
    min_gbps: f64,
    median_gbps: f64,
    max_gbps: f64,
    samples: usize,
}

impl Report {
    /// Writes the report as tables, JSON or CSV, and draws the plot if asked.
    pub fn emit(&self, output: &Output, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut report = self.clone();
        report.notes.extend(noise_note(&report.tables));
        report.write(output, out)
    }

    fn write(&self, output: &Output, out: &mut dyn Write) -> anyhow::Result<()> {
        match output.format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, self)?;
                writeln!(out)?;
            }
            Format::Csv => self.write_csv(out)?,
            Format::Tables => self.write_tables(out)?,
        }
        if let Some(path) = &output.plot {
            plot::draw(self.bench, self.unit, &self.tables, path)
                .with_context(|| format!("drawing {}", path.display()))?;
        }
        Ok(())
    }

    fn write_csv(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_writer(out);
        for t in &self.tables {
            for r in &t.rows {
                for (column, cell) in t.columns.iter().zip(&r.cells) {
                    let Some(c) = cell else { continue };
                    w.serialize(CsvLine {
                        bench: self.bench,
                        page_size: t.page_size,
                        pages: r.pages,
                        column,
                        min_gbps: c.min,
                        median_gbps: c.median,
                        max_gbps: c.max,
                        samples: c.samples,
                    })?;
                }
            }
        }
        w.flush()?;
        Ok(())
    }

    fn write_tables(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "pagemig bench {} ({}, median of repetitions)",
            self.bench, self.unit
        )?;
        writeln!(out, "machine: {}", self.machine)?;
        for note in &self.notes {
            writeln!(out, "note: {note}")?;
        }
        for t in &self.tables {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            let mut header = vec![format!("{} pages", page_size_label(t.page_size))];
            header.extend(t.columns.iter().cloned());
            table.set_header(header);
            for r in &t.rows {
                let mut row = vec![r.pages.to_string()];
                row.extend(r.cells.iter().map(|c| {
                    c.map_or("-".into(), |c| {
                        if c.is_noisy() {
                            format!("{:.2}{NOISY_MARK}", c.median)
                        } else {
                            format!("{:.2} ", c.median)
                        }
                    })
                }));
                table.add_row(row);
            }
            for col in 0..=t.columns.len() {
                if let Some(c) = table.column_mut(col) {
                    c.set_cell_alignment(CellAlignment::Right);
                }
            }
            writeln!(out, "\n{table}")?;
        }
        if !self.phases.is_empty() {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            table.set_header([
                "page",
                "pages",
                "column",
                "check",
                "scan",
                "protect",
                "alloc",
                "copy",
                "remap",
                "wake",
                "verify",
                "wall",
                "accounted",
                "copy share",
            ]);
            for p in &self.phases {
                let ms = |v: f64| format!("{v:.3}");
                table.add_row([
                    page_size_label(p.page_size),
                    p.pages.to_string(),
                    p.column.clone(),
                    ms(p.check_ms),
                    ms(p.scan_ms),
                    ms(p.protect_ms),
                    ms(p.alloc_ms),
                    ms(p.copy_ms),
                    ms(p.remap_ms),
                    ms(p.wake_ms),
                    ms(p.verify_ms),
                    ms(p.wall_ms),
                    format!("{:.0}%", p.accounted * 100.0),
                    format!("{:.0}%", p.copy_share * 100.0),
                ]);
            }
            for col in 3..14 {
                if let Some(c) = table.column_mut(col) {
                    c.set_cell_alignment(CellAlignment::Right);
                }
            }
            writeln!(
                out,
                "\nTime per migration by phase, ms (wall: the bench's clock around each migration; \
                 accounted: the phases' sum / wall; copy share: copy / wall)\n{table}"
            )?;
        }
        Ok(())
    }
}
