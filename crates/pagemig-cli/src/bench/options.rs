//! The options the table benches (`bench copy`, `bench migrate`) share, written once: as clap
//! parses them ([`TableArgs`]) and checked, with their defaults resolved ([`TableOptions`]).

use std::path::{Path, PathBuf};

use anyhow::bail;
use pagemig::policy::worker_counts;
use pagemig::sys::HUGE_PAGE_SIZE;

use crate::model::ModelArgs;
use crate::values::{page_size_label, parse_page_size};

/// Options of every table bench, as given.
#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// Page sizes, comma-separated: 4k (base pages), 64k, 2m (transparent huge pages)
    /// [default: 4k,64k,2m for bench copy; 4k,2m for bench migrate].
    #[arg(long, value_delimiter = ',', value_parser = parse_page_size)]
    page_size: Vec<usize>,
    /// Rows: pages per migration, comma-separated [default: 1,2,4…1024; …4096 for 4 KB pages;
    /// …256 for 2 MB pages with --quick].
    #[arg(long, value_delimiter = ',')]
    pages: Vec<usize>,
    /// Worker (or thread) counts of the mt_N columns [default: 1,2,4… and the number of usable
    /// CPUs].
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions per cell [default: 7; 5 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// Fewer rows, repetitions and bytes (bench copy: under a minute on 2 cores).
    #[arg(long)]
    quick: bool,
    /// The auto column copies with a DMA engine (dsa, cuda) wherever the cost model has one at
    /// least as fast as one CPU thread, even where CPU workers would be faster: it frees CPUs
    /// (bench migrate: with --path remap).
    #[arg(long)]
    prefer_dma: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// How results are written, as given.
#[derive(Debug, clap::Args)]
struct OutputArgs {
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
        .unwrap_or(Path::new("."));
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

/// What a report is printed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables for a terminal.
    Tables,
    /// JSON with min/median/max of every cell.
    Json,
    /// CSV, one line per cell.
    Csv,
}

/// How results are written: the format, and the PNG plot if one was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Tables, JSON or CSV.
    pub format: Format,
    /// Where the plot is drawn.
    pub plot: Option<PathBuf>,
}

/// The shared options, checked, with every default resolved.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Page sizes in the order given, each with its rows (pages per migration).
    pub tables: Vec<(usize, Vec<usize>)>,
    /// Worker counts of the mt_N columns.
    pub threads: Vec<usize>,
    /// Repetitions per cell.
    pub reps: usize,
    /// Whether `--quick` was given (benches size their buffers by it).
    pub quick: bool,
    /// Whether the auto column prefers DMA engines.
    pub prefer_dma: bool,
    /// The cost model's arguments (loaded by each bench, after its own checks).
    pub model: ModelArgs,
    /// How results are written.
    pub output: Output,
}

impl TableOptions {
    /// The largest worker count of the mt_N columns.
    pub fn max_threads(&self) -> usize {
        self.threads.iter().copied().max().unwrap_or(1)
    }
}

impl TableArgs {
    /// Checks the options and resolves their defaults: `default_page_sizes` where none are
    /// given, mt_N columns up to `usable_cpus`.
    pub fn validate(
        &self,
        default_page_sizes: &[usize],
        usable_cpus: usize,
    ) -> anyhow::Result<TableOptions> {
        if self.threads.contains(&0) {
            bail!("--threads: a column needs at least one worker");
        }
        if self.pages.contains(&0) {
            bail!("--pages: a row needs at least one page");
        }
        if let Some(ps) = first_repeated(&self.page_size) {
            bail!("--page-size: {} is given twice", page_size_label(ps));
        }
        if let Some(n) = first_repeated(&self.pages) {
            bail!("--pages: {n} is given twice");
        }
        if let Some(n) = first_repeated(&self.threads) {
            bail!("--threads: {n} is given twice");
        }
        let reps = self.reps.unwrap_or(if self.quick { 5 } else { 7 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        let page_sizes = if self.page_size.is_empty() {
            default_page_sizes
        } else {
            &self.page_size
        };
        let tables = page_sizes
            .iter()
            .map(|&ps| {
                let rows = if self.pages.is_empty() {
                    default_rows(ps, self.quick)
                } else {
                    self.pages.clone()
                };
                (ps, rows)
            })
            .collect();
        let threads = if self.threads.is_empty() {
            worker_counts(usable_cpus.max(1))
        } else {
            self.threads.clone()
        };
        let format = match (self.output.json, self.output.csv) {
            (true, _) => Format::Json,
            (false, true) => Format::Csv,
            (false, false) => Format::Tables,
        };
        Ok(TableOptions {
            tables,
            threads,
            reps,
            quick: self.quick,
            prefer_dma: self.prefer_dma,
            model: self.model.clone(),
            output: Output {
                format,
                plot: self.output.plot.clone(),
            },
        })
    }
}

/// The first value that appears twice.
fn first_repeated(values: &[usize]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .find(|(i, v)| values[..*i].contains(v))
        .map(|(_, v)| *v)
}

/// Default rows: 1, 2, 4 … pages per migration; up to 4096 for 4 KB pages, 1024 otherwise, and
/// 256 for 2 MB pages with `--quick`.
fn default_rows(page_size: usize, quick: bool) -> Vec<usize> {
    let max = match page_size {
        4096 => 4096,
        s if s >= HUGE_PAGE_SIZE && quick => 256,
        _ => 1024,
    };
    std::iter::successors(Some(1), |n| Some(n * 2))
        .take_while(|&n| n <= max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::testing::{self, try_parse};
    use super::*;

    fn parse(args: &[&str]) -> TableArgs {
        testing::parse(args)
    }

    fn refusal(args: &[&str]) -> String {
        format!("{:#}", parse(args).validate(&[4096], 2).unwrap_err())
    }

    #[test]
    fn defaults() {
        assert_eq!(default_rows(4096, true).last(), Some(&4096));
        assert_eq!(default_rows(2 << 20, true).last(), Some(&256));
        assert_eq!(default_rows(2 << 20, false).last(), Some(&1024));
        assert_eq!(default_rows(65536, false).len(), 11);
        let o = parse(&[]).validate(&[4096, 2 << 20], 6).unwrap();
        assert_eq!(o.tables.len(), 2);
        assert_eq!(o.tables[0].1.last(), Some(&4096));
        assert_eq!(o.tables[1].1.last(), Some(&1024));
        assert_eq!(o.threads, [1, 2, 4, 6]);
        assert_eq!(o.reps, 7);
        assert_eq!(o.output.format, Format::Tables);
        let o = parse(&["--quick", "--page-size", "2m", "--pages", "3,1", "--csv"])
            .validate(&[4096], 1)
            .unwrap();
        assert_eq!(o.tables, [(2 << 20, vec![3, 1])]);
        assert_eq!((o.threads, o.reps), (vec![1], 5));
        assert_eq!(o.output.format, Format::Csv);
    }

    #[test]
    fn refusals_name_the_argument() {
        for (args, want) in [
            (
                &["--threads", "1,0"][..],
                "--threads: a column needs at least one worker",
            ),
            (&["--pages", "0"], "--pages: a row needs at least one page"),
            (&["--reps", "0"], "--reps must be at least 1"),
            (
                &["--page-size", "4k,2m,4096"],
                "--page-size: 4K is given twice",
            ),
            (&["--pages", "1,2,1"], "--pages: 1 is given twice"),
            (&["--threads", "2,2"], "--threads: 2 is given twice"),
        ] {
            assert_eq!(refusal(args), want, "{args:?}");
        }
    }

    #[test]
    fn clap_refuses_what_it_can() {
        for (args, want) in [
            (&["--json", "--csv"][..], "cannot be used with"),
            (&["--plot", "x.svg"], "x.svg: only .png files are drawn"),
            (
                &["--plot", "/nonexistent/dir/x.png"],
                "the directory /nonexistent/dir does not exist",
            ),
            (&["--page-size", "3k"], "must be a power of two"),
        ] {
            let e = try_parse::<TableArgs>(args).unwrap_err();
            assert!(e.to_string().contains(want), "{args:?}: {e}");
        }
    }
}

/// What the benches' argument tests share.
#[cfg(test)]
pub(crate) mod testing {
    use clap::{Args, Parser};

    /// A command line of one bench's arguments, as clap parses them.
    #[derive(Parser)]
    struct Line<A: Args> {
        #[command(flatten)]
        args: A,
    }

    /// `args` parsed as one bench's arguments, or clap's refusal.
    pub(crate) fn try_parse<A: Args>(args: &[&str]) -> Result<A, clap::Error> {
        Line::<A>::try_parse_from([&["bench"], args].concat()).map(|line| line.args)
    }

    /// `args` parsed as one bench's arguments.
    pub(crate) fn parse<A: Args>(args: &[&str]) -> A {
        try_parse(args).unwrap()
    }

    /// The error chain of a validation of `args` that must fail.
    pub(crate) fn refusal<C>(validated: anyhow::Result<C>, args: &[&str]) -> String {
        match validated {
            Ok(_) => panic!("{args:?} accepted"),
            Err(e) => format!("{e:#}"),
        }
    }
}
