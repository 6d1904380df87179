//! `pagemig bench`: the kernel work's tables (rows: pages per migration; columns: vanilla,
//! engines, mt_1 … mt_N), measured on this machine.

mod copy;
mod migrate;
mod plot;
mod tier;

use std::io::Write;
use std::path::PathBuf;

use std::time::Instant;

use anyhow::{Context, bail};
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use pagemig::account::Phases;
use pagemig::copy::Placement;
use pagemig::sys::HUGE_PAGE_SIZE;
use pagemig::topology::{CpuSet, NodeId, Topology};

use crate::machine::Machine;

/// `pagemig bench …`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Copy engines alone: vanilla page-by-page copy against batched engines and worker pools.
    Copy(copy::CopyArgs),
    /// Real migrations between two nodes: vanilla move_pages against mt_N threads.
    Migrate(migrate::MigrateBenchArgs),
    /// Tiering: pagemig tier against DAMON's own migrate_hot/migrate_cold on one workload.
    Tier(tier::TierBenchArgs),
}

pub fn run(cmd: BenchCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Copy(args) => copy::run(&args, out),
        BenchCommand::Migrate(args) => migrate::run(&args, out),
        BenchCommand::Tier(args) => tier::run(&args, out),
    }
}

/// How results are written, shared by every bench.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Print JSON (with min/median/max of every cell) instead of tables.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (one line per cell, with min/median/max) instead of tables.
    #[arg(long)]
    csv: bool,
    /// Also draw GB/s against pages per migration into this PNG file.
    #[arg(long, value_name = "FILE.png", value_parser = parse_png_path)]
    plot: Option<PathBuf>,
}

/// Checked before measuring, so that a typo does not cost a whole run.
fn parse_png_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(format!("{text}: only .png files are drawn"));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(format!(
            "{text}: the directory {} does not exist",
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{text} is a directory"));
    }
    Ok(path)
}

/// A page size given as `4k`, `64K`, `2m` or a number of bytes.
pub fn parse_page_size(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, scale) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(d) if t.ends_with('k') => (d, 1 << 10),
        Some(d) if t.ends_with('m') => (d, 1 << 20),
        Some(d) => (d, 1 << 30),
        None => (t.as_str(), 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad page size {text:?}: expected e.g. 4k, 64k, 2m"))?;
    let size = n
        .checked_mul(scale)
        .ok_or_else(|| format!("bad page size {text:?}: too large"))?;
    if !size.is_power_of_two() || size < 4096 {
        return Err(format!(
            "bad page size {text:?}: must be a power of two of at least 4k"
        ));
    }
    Ok(size)
}

/// A worker placement: `spread`, `near-dst`, `near-src`, or a CPU list.
pub fn parse_placement(text: &str) -> Result<Placement, String> {
    match text {
        "spread" => Ok(Placement::SpreadL3),
        "near-dst" => Ok(Placement::NearDst),
        "near-src" => Ok(Placement::NearSrc),
        list if list.trim().is_empty() => {
            Err("empty: expected spread, near-dst, near-src or a CPU list".into())
        }
        list => list
            .parse::<CpuSet>()
            .map(Placement::Explicit)
            .map_err(|e| format!("expected spread, near-dst, near-src or a CPU list: {e}")),
    }
}

/// `4096` → `4K`, `2097152` → `2M`.
pub fn page_size_label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}M", size >> 20)
    } else {
        format!("{}K", size >> 10)
    }
}

/// Default rows: 1, 2, 4 … pages per migration; up to 4096 for 4 KB pages, 1024 otherwise, and
/// 256 for 2 MB pages with `--quick`.
pub fn default_rows(page_size: usize, quick: bool) -> Vec<usize> {
    let max = match page_size {
        4096 => 4096,
        s if s >= HUGE_PAGE_SIZE && quick => 256,
        _ => 1024,
    };
    std::iter::successors(Some(1), |n| Some(n * 2))
        .take_while(|&n| n <= max)
        .collect()
}

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

/// Longer than a pool worker polls for its next task before it sleeps.
const IDLE_POOLS: std::time::Duration = std::time::Duration::from_micros(300);

/// As [`measure`] for `columns` columns of one row: `step(column, i)`. The columns take turns
/// sample by sample, so that noise from elsewhere on the machine (a neighbour's burst, a
/// frequency change) spreads over all of them and their ratios stay fair.
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
    for r in 0..reps {
        for (c, column) in samples.iter_mut().enumerate() {
            // Workers of the previous column's pool poll for a while before they sleep; let them
            // fall asleep first, or this column's sample pays for their polling.
            std::thread::sleep(IDLE_POOLS);
            let start = Instant::now();
            for i in 0..per_sample {
                step(c, 1 + r * per_sample + i)?;
            }
            let secs = start.elapsed().as_secs_f64();
            column.push((bytes * per_sample) as f64 / secs / 1e9);
        }
    }
    Ok(samples.into_iter().map(Cell::from_samples).collect())
}

/// Bytes a bench may take on `node`: 80% of its free memory.
pub fn usable_free(topo: &Topology, node: NodeId) -> usize {
    topo.node(node).map_or(0, |n| n.mem_free) as usize / 10 * 8
}

/// The progress bar of every bench, on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(cells: u64) -> ProgressBar {
    ProgressBar::new(cells).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid progress template"),
    )
}

/// Refuses a node that does not exist or has no memory; `role` says which (source, destination).
pub fn check_node(topo: &Topology, node: NodeId, role: &str) -> anyhow::Result<()> {
    match topo.node(node) {
        None => bail!(
            "{role} node {node} does not exist or is offline (nodes with memory: {})",
            topo.memory_nodes()
        ),
        Some(n) if !n.has_memory => bail!(
            "{role} node {node} has no memory (nodes with memory: {})",
            topo.memory_nodes()
        ),
        Some(_) => Ok(()),
    }
}

/// A cell whose fastest sample is more than this many times its slowest is marked as noisy.
pub const NOISY: f64 = 1.25;

/// Where a cell's spread (max/min) is above this, comparisons use its minimum, not its median.
pub const SPREAD_TOLERATED: f64 = 1.10;

/// The mark after a noisy cell's median in tables.
pub const NOISY_MARK: char = '~';

/// One measured cell: GB/s over several repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cell {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: usize,
}

impl Cell {
    /// max / min: 1.0 for a steady cell (infinite when a sample measured nothing).
    pub fn spread(&self) -> f64 {
        if self.min > 0.0 {
            self.max / self.min
        } else {
            f64::INFINITY
        }
    }

    /// Whether the samples disagree by more than [`NOISY`].
    pub fn is_noisy(&self) -> bool {
        self.spread() > NOISY
    }

    /// The figure to compare against: the median, or the minimum where the spread is above
    /// [`SPREAD_TOLERATED`] (a noisy cell is held to what it surely reached).
    pub fn reference(&self) -> f64 {
        if self.spread() > SPREAD_TOLERATED {
            self.min
        } else {
            self.median
        }
    }
}

/// Which columns had noisy cells, per page size, for a note under the tables.
pub fn noise_note(tables: &[PageTable]) -> Option<String> {
    // Column name → "4K 3/13" per table where it had noisy cells, in first-seen order.
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for t in tables {
        for (c, name) in t.columns.iter().enumerate() {
            let noisy = t
                .rows
                .iter()
                .filter(|r| {
                    r.cells
                        .get(c)
                        .copied()
                        .flatten()
                        .is_some_and(|x| x.is_noisy())
                })
                .count();
            if noisy == 0 {
                continue;
            }
            let part = format!("{} {noisy}/{}", page_size_label(t.page_size), t.rows.len());
            match columns.iter_mut().find(|(n, _)| n == name) {
                Some((_, parts)) => parts.push(part),
                None => columns.push((name.clone(), vec![part])),
            }
        }
    }
    (!columns.is_empty()).then(|| {
        let named: Vec<String> = columns
            .iter()
            .map(|(name, parts)| format!("{name} ({})", parts.join(", ")))
            .collect();
        format!(
            "unstable columns, noisy rows of each table ({NOISY_MARK} marks cells whose max/min exceeds {NOISY}; min and max are in --json and --csv): {}",
            named.join("; ")
        )
    })
}

impl Cell {
    /// Summarises GB/s samples; `None` when there are none.
    pub fn from_samples(mut gbps: Vec<f64>) -> Option<Cell> {
        if gbps.is_empty() {
            return None;
        }
        gbps.sort_by(f64::total_cmp);
        let n = gbps.len();
        let median = if n % 2 == 1 {
            gbps[n / 2]
        } else {
            (gbps[n / 2 - 1] + gbps[n / 2]) / 2.0
        };
        Some(Cell {
            min: gbps[0],
            median,
            max: gbps[n - 1],
            samples: n,
        })
    }
}

/// A row: one migration size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pages: usize,
    /// One entry per column of the table; `None` where the column was not measured.
    pub cells: Vec<Option<Cell>>,
}

/// The table of one page size.
#[derive(Debug, Clone, Serialize)]
pub struct PageTable {
    pub page_size: usize,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
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
    pub fn emit(&self, args: &OutputArgs, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut report = self.clone();
        report.notes.extend(noise_note(&report.tables));
        report.write(args, out)
    }

    fn write(&self, args: &OutputArgs, out: &mut dyn Write) -> anyhow::Result<()> {
        if args.json {
            serde_json::to_writer_pretty(&mut *out, self)?;
            writeln!(out)?;
        } else if args.csv {
            self.write_csv(out)?;
        } else {
            self.write_tables(out)?;
        }
        if let Some(path) = &args.plot {
            plot::draw(self, path).with_context(|| format!("drawing {}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(parse_page_size("4k"), Ok(4096));
        assert_eq!(parse_page_size("64K"), Ok(65536));
        assert_eq!(parse_page_size("2m"), Ok(2 << 20));
        assert_eq!(parse_page_size("8192"), Ok(8192));
        assert!(parse_page_size("3k").unwrap_err().contains("power of two"));
        assert!(parse_page_size("x").unwrap_err().contains("bad page size"));
        assert_eq!(page_size_label(2 << 20), "2M");
        assert_eq!(page_size_label(65536), "64K");
    }

    #[test]
    fn placements_parse() {
        assert_eq!(parse_placement("spread"), Ok(Placement::SpreadL3));
        assert_eq!(
            parse_placement("0-1"),
            Ok(Placement::Explicit("0-1".parse().unwrap()))
        );
        assert!(
            parse_placement("near")
                .unwrap_err()
                .contains("expected spread")
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(default_rows(4096, true).last(), Some(&4096));
        assert_eq!(default_rows(2 << 20, true).last(), Some(&256));
        assert_eq!(default_rows(2 << 20, false).last(), Some(&1024));
        assert_eq!(default_rows(65536, false).len(), 11);
    }

    #[test]
    fn noisy_cells_are_marked_and_named() {
        let steady = Cell::from_samples(vec![10.0, 10.5, 11.0]);
        let noisy = Cell::from_samples(vec![4.0, 10.0, 12.0]);
        assert!(!steady.unwrap().is_noisy());
        assert!(noisy.unwrap().is_noisy());
        assert_eq!(noisy.unwrap().reference(), 4.0);
        assert_eq!(steady.unwrap().reference(), 10.5);
        let table = PageTable {
            page_size: 4096,
            columns: vec!["vanilla".into(), "nt".into()],
            rows: vec![
                Row {
                    pages: 1,
                    cells: vec![steady, noisy],
                },
                Row {
                    pages: 2,
                    cells: vec![steady, steady],
                },
            ],
        };
        let note = noise_note(std::slice::from_ref(&table)).unwrap();
        assert!(note.contains("nt (4K 1/2)"), "{note}");
        assert!(!note.contains("vanilla ("), "{note}");
        assert!(
            noise_note(&[PageTable {
                rows: vec![table.rows[1].clone()],
                ..table
            }])
            .is_none()
        );
    }

    #[test]
    fn cell_statistics() {
        let c = Cell::from_samples(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((c.min, c.median, c.max, c.samples), (1.0, 2.5, 10.0, 4));
        assert!(Cell::from_samples(vec![]).is_none());
    }
}
