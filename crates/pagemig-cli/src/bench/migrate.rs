//! `pagemig bench migrate`: real migrations between two nodes, in the kernel work's table shape.

use std::ffi::{c_int, c_ulong};
use std::io::Write;

use anyhow::{Context, bail};
use pagemig::abi;
use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, Placement, Pool, Route};
use pagemig::migrate::kernel::{self, KernelPlan};
use pagemig::migrate::remap::{self, RemapPhases, RemapPlan, Verify};
use pagemig::migrate::reservoir::Reservoirs;
use pagemig::policy::{AutoEngine, Effort, Job, Planner, Resources, Threads, worker_counts};
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::sys::{self, ForeignOut, HUGE_PAGE_SIZE, Mapping};
use pagemig::topology::{CpuId, NodeId, NodeSet, Topology};

use super::{
    OutputArgs, PageTable, PhaseRow, Report, Row, check_node, default_rows, measure,
    page_size_label, parse_page_size, progress_bar, usable_free,
};
use crate::calibrate::ModelArgs;
use crate::machine::Machine;

/// Which migration path is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathKind {
    /// move_pages(2): `vanilla` is one call with every page, as migratepages does; `mt_N` is N
    /// pinned threads each moving a share.
    Kernel,
    /// The remap path for the process's own memory: `mt_N` write-protects, copies with N pool
    /// workers and remaps, one batch per migration; `vanilla` is move_pages of the same pages.
    Remap,
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
    /// With --path remap: run the pipeline from --from to the same node, to measure its overhead
    /// on a machine with one node (no vanilla column then: the kernel would move nothing).
    #[arg(long)]
    same_node: bool,
    /// With --path remap: allocate new pages and free old ones on every migration, instead of
    /// taking and recycling them through per-node reservoirs.
    #[arg(long)]
    no_reservoir: bool,
    /// Repetitions per cell [default: 7; 3 with --quick].
    #[arg(long)]
    reps: Option<usize>,
    /// Fewer rows and repetitions.
    #[arg(long)]
    quick: bool,
    /// With --path remap, the auto column copies with a DMA engine (dsa, cuda) wherever the cost
    /// model has one at least as fast as one CPU thread, even where CPU workers would be faster:
    /// it frees CPUs.
    #[arg(long)]
    prefer_dma: bool,
    /// With --path remap: how the new pages' node is checked after each batch: a bounded sample
    /// (one base page per huge page and a few base pages), or every page.
    #[arg(long, value_enum, default_value = "sample")]
    verify: VerifyArg,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `--verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// A bounded sample of each batch.
    Sample,
    /// Every page.
    Full,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::Sample => Verify::Sample,
            VerifyArg::Full => Verify::Full,
        }
    }
}

/// The remap phases of one cell, summed over its migrations, and the bench's own clock around
/// those migrations.
#[derive(Default)]
struct Timed {
    phases: RemapPhases,
    wall: std::time::Duration,
}

/// How one column moves a block.
enum Mover {
    Kernel(KernelPlan),
    /// The kernel path with the planner's threads for each row's size.
    KernelAuto(KernelPlan),
    /// One move_pages call with every page, as a program under libpagemig_preload.so makes it.
    Preload(Box<abi::Context>),
    Remap(Box<dyn CopyEngine>, Verify),
    /// The copy engine alone, copying the same bytes into pages already faulted in on the
    /// target: what the remap path would reach if everything around its copy were free.
    Copy(Box<dyn CopyEngine>),
}

/// Pages that move back and forth between two nodes (or from a node to itself), one migration
/// at a time.
struct Block {
    buf: Mapping,
    /// Where the block's pages are now.
    at: NodeId,
    page_size: usize,
    pages_failed: u64,
    /// Where the copy column copies to: as large as `buf`, faulted in on the target node.
    copy_dst: Option<Mapping>,
}

impl Block {
    /// Moves the first `pages` pages to the other node (the copy column only copies them);
    /// adds the remap phases to `phases`.
    fn migrate(
        &mut self,
        topo: &Topology,
        pages: usize,
        (a, b): (NodeId, NodeId),
        mover: &Mover,
        reservoirs: Option<&Reservoirs>,
        phases: &mut RemapPhases,
    ) -> anyhow::Result<()> {
        let to = if self.at == a { b } else { a };
        let start = self.buf.as_ptr() as usize;
        match mover {
            Mover::Kernel(plan) | Mover::KernelAuto(plan) => {
                // One address per page: the head of a huge page moves all of it.
                let addrs: Vec<usize> = (0..pages).map(|i| start + i * self.page_size).collect();
                let moved =
                    kernel::move_pages(Process::Current, &addrs, &vec![to; pages], plan, &|_| {})?;
                self.pages_failed +=
                    moved.status.iter().filter(|&&s| s != to as i32).count() as u64;
            }
            Mover::Preload(ctx) => {
                let addrs: Vec<usize> = (0..pages).map(|i| start + i * self.page_size).collect();
                let nodes = vec![to as c_int; pages];
                let mut status = vec![0; pages];
                let call = abi::move_pages(
                    ctx,
                    0,
                    pages as c_ulong,
                    addrs.as_ptr().cast(),
                    nodes.as_ptr(),
                    ForeignOut::from(&mut status[..]),
                    abi::MPOL_MF_MOVE,
                );
                if let Err(e) = call.result {
                    bail!("move_pages through libpagemig's code failed: {e}");
                }
                self.pages_failed += status.iter().filter(|&&s| s != to as c_int).count() as u64;
            }
            Mover::Remap(engine, verify) => {
                let bytes = pages * self.page_size;
                let plan = RemapPlan {
                    engine: engine.as_ref(),
                    batch_bytes: bytes,
                    reservoirs,
                };
                let r = remap::migrate_mapping_verified(
                    topo,
                    &mut self.buf,
                    0..bytes,
                    to,
                    &plan,
                    *verify,
                )?;
                self.pages_failed += r.pages_copied - r.pages_on_target;
                phases.add(&r.phases);
            }
            Mover::Copy(engine) => {
                let bytes = pages * self.page_size;
                let dst = self
                    .copy_dst
                    .as_mut()
                    .context("no destination for the copy column")?;
                engine.copy(&[CopyOp::new(
                    &self.buf.as_slice()[..bytes],
                    &mut dst.as_mut_slice()[..bytes],
                )])?;
                // The pages stay where they are.
                return Ok(());
            }
        }
        self.at = to;
        Ok(())
    }
}

/// The two nodes: `--from`/`--to`, or the first two nodes with memory.
fn nodes(args: &MigrateBenchArgs, topo: &Topology) -> anyhow::Result<(NodeId, NodeId)> {
    let memory = topo.memory_nodes();
    if args.same_node && args.path != PathKind::Remap {
        bail!("--same-node measures the remap pipeline only: add --path remap");
    }
    if memory.len() < 2 && !args.same_node {
        bail!(
            "bench migrate needs two nodes with memory, and this machine has memory on node {memory} only: \
             run it on a multi-node machine (or in a guest: cargo xtask guest-test; guest timings are emulation timings), \
             or measure the remap pipeline's overhead with --path remap --same-node"
        );
    }
    let first_with_cpus = topo
        .nodes
        .iter()
        .find(|n| n.has_memory && !n.cpus.is_empty())
        .map(|n| n.id);
    let from = match args.from {
        Some(n) => n,
        None => first_with_cpus
            .or(memory.iter().next())
            .context("no node has memory")?,
    };
    let to = match (args.to, args.same_node) {
        (Some(n), _) => n,
        (None, true) => from,
        (None, false) => memory
            .iter()
            .find(|&n| n != from)
            .context("no second node with memory")?,
    };
    check_node(topo, from, "source")?;
    check_node(topo, to, "destination")?;
    match (from == to, args.same_node) {
        (true, false) => bail!(
            "--from and --to are both node {from}: a migration needs two nodes (or --path remap --same-node)"
        ),
        (false, true) => bail!("--same-node with two different nodes ({from}, {to}): give one"),
        _ => Ok((from, to)),
    }
}

pub fn run(args: &MigrateBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topo = Topology::detect().context("reading the topology from /sys")?;
    let (from, to) = nodes(args, &topo)?;
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
        worker_counts(usable.max(1))
    } else {
        args.threads.clone()
    };
    let max_threads = threads.iter().copied().max().unwrap_or(1);
    let route = Route {
        from: Some(from),
        to: Some(to),
    };
    let cpus: Vec<CpuId> = Placement::NearDst
        .choose(&topo, route, &allowed, max_threads)
        .context("placing the migration threads")?;
    // Migrations to the same node would move nothing in the kernel: no vanilla column then.
    let with_vanilla = from != to;
    let mut movers: Vec<(String, Mover)> = Vec::new();
    if with_vanilla {
        movers.push(("vanilla".into(), Mover::Kernel(KernelPlan::serial(1))));
    }
    for &n in &threads {
        let mover = match args.path {
            PathKind::Kernel => Mover::Kernel(KernelPlan::parallel(cpus[..n].to_vec(), 0)),
            PathKind::Remap => Mover::Remap(
                Box::new(
                    Pool::new(CpuEngine::new(EngineKind::Nt)?, &cpus[..n])
                        .context("starting copy workers")?,
                ),
                args.verify.into(),
            ),
        };
        movers.push((format!("mt_{n}"), mover));
    }
    // The kernel path plans from the model's move_pages curve, which a quick calibration of the
    // copy engines would not have.
    let loaded = match args.path {
        PathKind::Kernel => args.model.load()?,
        PathKind::Remap => args.model.load_or_measure(&topo, Effort::Builtin)?,
    };
    let planner = Planner::new(&topo, loaded.model.as_ref(), Resources::detect()?)
        .prefer_dma(args.prefer_dma);
    movers.push((
        "auto".into(),
        match args.path {
            PathKind::Kernel => Mover::KernelAuto(KernelPlan::serial(0)),
            PathKind::Remap => Mover::Remap(
                Box::new(
                    AutoEngine::new(&planner, route)
                        .context("starting the auto column's engine")?,
                ),
                args.verify.into(),
            ),
        },
    ));
    if args.path == PathKind::Remap {
        movers.push((
            "copy".into(),
            Mover::Copy(Box::new(
                Pool::new(CpuEngine::new(EngineKind::Nt)?, &cpus[..max_threads])
                    .context("starting copy workers")?,
            )),
        ));
    }
    if args.path == PathKind::Kernel && with_vanilla {
        movers.push((
            "preload".into(),
            Mover::Preload(Box::new(abi::Context::with_topology(
                topo.clone(),
                Threads::Auto,
                loaded.model.clone(),
            ))),
        ));
    }
    let free = |n: NodeId| usable_free(&topo, n);

    let mut notes = vec![
        format!(
            "auto: the planner's choice for each row ({})",
            loaded.source
        ),
        match args.path {
            PathKind::Kernel => format!(
                "kernel path between node {from} and node {to}: vanilla is one move_pages call with every page on the calling thread; \
             mt_N: N threads on CPUs {cpus:?}, each moving a share in one call; preload: the same one call as vanilla made through \
             libpagemig_preload.so's code (PAGEMIG_THREADS unset: the planner's threads, pages grouped by node); one address per page (the head of a huge page)"
            ),
            PathKind::Remap => format!(
                "remap path, node {from} {} node {to}: mt_N write-protects, copies with N non-temporal workers on CPUs {cpus:?}, \
             remaps and wakes, one batch per migration, {}{}; new pages checked {}; copy: the mt_{max_threads} engine alone copying \
             the same bytes into pages already faulted in on node {to}, so that mt_N / copy is the remap path's share of copy speed",
                if from == to { "to" } else { "<->" },
                if args.no_reservoir {
                    "new pages allocated, old ones freed"
                } else {
                    "new pages from per-node reservoirs, old ones recycled into them"
                },
                if with_vanilla {
                    "; vanilla is move_pages of the same pages"
                } else {
                    ""
                },
                match args.verify {
                    VerifyArg::Sample =>
                        "on a sample (one base page per huge page, a few base pages per batch)",
                    VerifyArg::Full => "page by page",
                }
            ),
        },
    ];
    let mut plan_rows = Vec::new();
    for &ps in &args.page_size {
        let rows = if args.pages.is_empty() {
            default_rows(ps, args.quick)
        } else {
            args.pages.clone()
        };
        // The remap path holds old and new pages of a migration at once, and the copy column
        // its own destination.
        let copies = if args.path == PathKind::Remap { 3 } else { 1 };
        let (kept, dropped): (Vec<usize>, Vec<usize>) = rows
            .into_iter()
            .partition(|&n| copies * n * ps <= free(from).min(free(to)));
        if !dropped.is_empty() {
            notes.push(format!(
                "{} pages: rows {dropped:?} left out, they do not fit in the free memory of the nodes",
                page_size_label(ps)
            ));
        }
        if !kept.is_empty() {
            plan_rows.push((ps, kept));
        }
    }
    let cells: usize = plan_rows.iter().map(|(_, r)| r.len() * movers.len()).sum();
    let progress = progress_bar(cells as u64);

    let mut tables = Vec::new();
    let mut phase_rows = Vec::new();
    for (page_size, rows) in plan_rows {
        let largest = rows.iter().max().copied().unwrap_or(1) * page_size;
        // A buffer of `largest` bytes in pages of this row's size, faulted in on `node`.
        let bound = |node: NodeId| -> anyhow::Result<Mapping> {
            let mut m = Mapping::anonymous_aligned(largest, HUGE_PAGE_SIZE)?;
            if page_size >= HUGE_PAGE_SIZE {
                m.advise_huge_pages()?;
            } else {
                m.advise_no_huge_pages()?;
            }
            m.bind(&NodeSet::from_iter([node]))
                .with_context(|| format!("binding {} MiB to node {node}", largest >> 20))?;
            m.populate();
            Ok(m)
        };
        let mut buf = bound(from)?;
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
        let copy_dst = match args.path {
            PathKind::Remap => Some(bound(to)?),
            PathKind::Kernel => None,
        };
        let mut block = Block {
            buf,
            at: from,
            page_size,
            pages_failed: 0,
            copy_dst,
        };
        let mut table = PageTable {
            page_size,
            columns: movers.iter().map(|(n, _)| n.clone()).collect(),
            rows: Vec::new(),
        };
        for &pages in &rows {
            let bytes = pages * page_size;
            let per_sample = sample_bytes.div_ceil(bytes);
            let mut cells = Vec::new();
            for (name, mover) in &mut movers {
                progress.set_message(format!("{} x {pages} {name}", page_size_label(page_size)));
                if let Mover::KernelAuto(plan) = mover {
                    let job = Job {
                        bytes: bytes as u64,
                        route,
                    };
                    // Any number of calls: the row's pages are then split over the threads.
                    plan.cpus = planner.plan_kernel(job, page_size as u64)?.cpus;
                }
                if let Mover::Kernel(plan) | Mover::KernelAuto(plan) = mover {
                    plan.batch = pages.div_ceil(plan.cpus.len().max(1));
                }
                let mut timed = Timed::default();
                // Per cell, so that its chunks have this row's size; the warm-up fills it.
                let reservoirs = Reservoirs::new(3 * bytes);
                let reservoirs = (!args.no_reservoir).then_some(&reservoirs);
                let mut runs = 0u32;
                let mut warm_up = RemapPhases::default();
                cells.push(measure(reps, per_sample, bytes, |i| {
                    // The warm-up (step 0) fills the reservoirs: its phases are not counted. It
                    // migrates twice: a previous row's migrations split the block into mappings
                    // of their size, and old pages that span several mappings are freed, not
                    // recycled; the first migration makes the row's range one mapping.
                    let started = std::time::Instant::now();
                    if i == 0 {
                        for _ in 0..2 {
                            block.migrate(
                                &topo,
                                pages,
                                (from, to),
                                mover,
                                reservoirs,
                                &mut warm_up,
                            )?;
                        }
                        return Ok(());
                    }
                    block.migrate(
                        &topo,
                        pages,
                        (from, to),
                        mover,
                        reservoirs,
                        &mut timed.phases,
                    )?;
                    timed.wall += started.elapsed();
                    runs += 1;
                    Ok(())
                })?);
                if let Mover::Remap(..) = mover {
                    phase_rows.push(PhaseRow::new(
                        page_size,
                        pages,
                        name,
                        &timed.phases,
                        timed.wall,
                        runs,
                    ));
                }
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
    let bench = match args.path {
        PathKind::Kernel => "migrate --path kernel",
        PathKind::Remap => "migrate --path remap",
    };
    let report = Report {
        bench,
        unit: "GB/s",
        machine: Machine::describe(&topo, &allowed),
        notes,
        tables,
        phases: phase_rows,
    };
    report.emit(&args.output, out)
}
