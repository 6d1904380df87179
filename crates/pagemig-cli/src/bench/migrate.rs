//! `pagemig bench migrate`: real migrations between two nodes, in the kernel work's table shape.

use std::io::Write;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pagemig::copy::{Placement, Route};
use pagemig::migrate::kernel::{self, KernelPlan};
use pagemig::migrate::{Process, procfs};
use pagemig::sys::{self, HUGE_PAGE_SIZE, Mapping};
use pagemig::topology::{CpuId, NodeId, NodeSet, Topology};

use super::{
    OutputArgs, PageTable, Report, Row, check_node, default_rows, default_threads, measure,
    page_size_label, parse_page_size,
};
use crate::machine::Machine;

/// Which migration path is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathKind {
    /// move_pages(2): `vanilla` is one call with every page, as migratepages does; `mt_N` is N
    /// pinned threads each moving a share.
    Kernel,
}

/// Arguments of `pagemig bench migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateBenchArgs {
    /// Migration path to measure.
    #[arg(long, value_enum, default_value = "kernel")]
    path: PathKind,
    /// Page sizes, comma-separated: 4k (base pages) and 2m (transparent huge pages).
    #[arg(long, value_delimiter = ',', value_parser = parse_page_size, default_value = "4k,2m")]
    page_size: Vec<usize>,
    /// Rows: pages per migration, comma-separated [default: as bench copy].
    #[arg(long, value_delimiter = ',')]
    pages: Vec<usize>,
    /// Thread counts of the mt_N columns [default: 1,2,4… and the number of usable CPUs].
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// One of the two nodes [default: the first node with memory and CPUs].
    #[arg(long)]
    from: Option<NodeId>,
    /// The other node [default: the next node with memory].
    #[arg(long)]
    to: Option<NodeId>,
    /// Repetitions per cell [default: 7; 3 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// Fewer rows and repetitions.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// Pages that move back and forth between the two nodes, one migration at a time.
struct Block {
    buf: Mapping,
    /// Where the block's pages are now.
    at: NodeId,
    page_size: usize,
    pages_failed: u64,
}

impl Block {
    /// Moves the first `pages` pages to the other node with `plan`; one address per page (the
    /// head of a huge page moves all of it).
    fn migrate(
        &mut self,
        pages: usize,
        a: NodeId,
        b: NodeId,
        plan: &KernelPlan,
    ) -> anyhow::Result<()> {
        let to = if self.at == a { b } else { a };
        let start = self.buf.as_ptr() as usize;
        let addrs: Vec<usize> = (0..pages).map(|i| start + i * self.page_size).collect();
        let moved = kernel::move_pages(Process::Current, &addrs, &vec![to; pages], plan, &|_| {})?;
        self.pages_failed += moved.status.iter().filter(|&&s| s != to as i32).count() as u64;
        self.at = to;
        Ok(())
    }
}

pub fn run(args: &MigrateBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topo = Topology::detect().context("reading the topology from /sys")?;
    let memory = topo.memory_nodes();
    if memory.len() < 2 {
        bail!(
            "bench migrate needs two nodes with memory, and this machine has memory on node {memory} only: \
             run it on a multi-node machine (or in a guest: cargo xtask guest-test; guest timings are emulation timings)"
        );
    }
    let from = match args.from {
        Some(n) => n,
        None => topo
            .nodes
            .iter()
            .find(|n| n.has_memory && !n.cpus.is_empty())
            .map_or_else(|| memory.iter().next().unwrap_or(0), |n| n.id),
    };
    let to = match args.to {
        Some(n) => n,
        None => memory
            .iter()
            .find(|&n| n != from)
            .context("no second node with memory")?,
    };
    check_node(&topo, from, "source")?;
    check_node(&topo, to, "destination")?;
    if from == to {
        bail!("--from and --to are both node {from}: a migration needs two nodes");
    }
    if args.threads.contains(&0) || args.pages.contains(&0) {
        bail!("--threads and --pages need positive numbers");
    }
    let reps = args.reps.unwrap_or(if args.quick { 3 } else { 7 });
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    let sample_bytes: usize = if args.quick { 8 << 20 } else { 32 << 20 };
    let allowed = sys::allowed_cpus()?;
    let usable = allowed.intersection(&topo.online_cpus).len();
    let threads = if args.threads.is_empty() {
        default_threads(usable)
    } else {
        args.threads.clone()
    };
    let max_threads = threads.iter().copied().max().unwrap_or(1);
    let cpus: Vec<CpuId> = Placement::NearDst
        .choose(
            &topo,
            Route {
                from: Some(from),
                to: Some(to),
            },
            &allowed,
            max_threads,
        )
        .context("placing the migration threads")?;
    let free = |n: NodeId| topo.node(n).map_or(0, |n| n.mem_free) as usize / 10 * 8;

    let mut notes = vec![
        format!(
            "pages move between node {from} and node {to}, alternately; one address per page (the head of a huge page)"
        ),
        format!(
            "vanilla: one move_pages call with every page on the calling thread; mt_N: N threads on CPUs {:?} each moving a share in one call",
            &cpus
        ),
    ];
    let mut plan_rows = Vec::new();
    for &ps in &args.page_size {
        let rows = if args.pages.is_empty() {
            default_rows(ps, args.quick)
        } else {
            args.pages.clone()
        };
        let (kept, dropped): (Vec<usize>, Vec<usize>) = rows
            .into_iter()
            .partition(|&n| n * ps <= free(from).min(free(to)));
        if !dropped.is_empty() {
            notes.push(format!("{} pages: rows {dropped:?} left out, they do not fit in the free memory of both nodes", page_size_label(ps)));
        }
        if !kept.is_empty() {
            plan_rows.push((ps, kept));
        }
    }
    let columns: Vec<String> = std::iter::once("vanilla".to_owned())
        .chain(threads.iter().map(|n| format!("mt_{n}")))
        .collect();
    let cells: usize = plan_rows.iter().map(|(_, r)| r.len() * columns.len()).sum();
    let progress = ProgressBar::new(cells as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid progress template"),
    );

    let mut tables = Vec::new();
    for (page_size, rows) in plan_rows {
        let largest = rows.iter().max().copied().unwrap_or(1) * page_size;
        let mut buf = Mapping::anonymous_aligned(largest, page_size.min(HUGE_PAGE_SIZE))?;
        if page_size >= HUGE_PAGE_SIZE {
            buf.advise_huge_pages()?;
        } else {
            buf.advise_no_huge_pages()?;
        }
        buf.bind(&NodeSet::from_iter([from]))
            .with_context(|| format!("binding {} MiB to node {from}", largest >> 20))?;
        buf.as_mut_slice().fill(0x5A);
        if page_size >= HUGE_PAGE_SIZE {
            let start = buf.as_ptr() as usize;
            let huge = procfs::anon_huge_bytes(Process::Current, start..start + largest)?;
            notes.push(format!(
                "{} pages: {} of {} MiB are transparent huge pages",
                page_size_label(page_size),
                huge >> 20,
                largest >> 20
            ));
        }
        let mut block = Block {
            buf,
            at: from,
            page_size,
            pages_failed: 0,
        };
        let mut table = PageTable {
            page_size,
            columns: columns.clone(),
            rows: Vec::new(),
        };
        for &pages in &rows {
            let bytes = pages * page_size;
            let per_sample = sample_bytes.div_ceil(bytes);
            let mut cells = Vec::new();
            for (c, name) in columns.iter().enumerate() {
                progress.set_message(format!("{} x {pages} {name}", page_size_label(page_size)));
                let plan = if c == 0 {
                    KernelPlan::serial(pages)
                } else {
                    let n = threads[c - 1];
                    KernelPlan::parallel(cpus[..n].to_vec(), pages.div_ceil(n))
                };
                cells.push(measure(reps, per_sample, bytes, |_| {
                    block.migrate(pages, from, to, &plan)
                })?);
                progress.inc(1);
            }
            table.rows.push(Row { pages, cells });
        }
        if block.pages_failed > 0 {
            notes.push(format!(
                "{} pages: {} page moves did not reach their node (busy or no memory): the GB/s of those rows overstate",
                page_size_label(page_size),
                block.pages_failed
            ));
        }
        tables.push(table);
    }
    progress.finish_and_clear();
    let report = Report {
        bench: "migrate --path kernel",
        unit: "GB/s",
        machine: Machine::describe(&topo, &allowed),
        notes,
        tables,
    };
    report.emit(&args.output, out)
}
