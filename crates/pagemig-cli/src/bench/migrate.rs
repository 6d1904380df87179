//! `pagemig bench migrate`: real migrations between two nodes, in the kernel work's table shape.

use std::ffi::{c_int, c_ulong};
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use pagemig::abi;
use pagemig::account::{Phases, Verify};
use pagemig::copy::{CopyEngine, CopyOp, CpuEngine, EngineKind, Placement, Pool, Route};
use pagemig::migrate::kernel;
use pagemig::migrate::remap::{self, Handles, Tools};
use pagemig::migrate::reservoir::Reservoirs;
use pagemig::policy::{AutoEngine, Effort, Job, Planner, Resources};
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::sys::{self, ForeignOut, HUGE_PAGE_SIZE, Mapping};
use pagemig::topology::{CpuId, NodeId, NodeSet, Topology};
use pagemig::workers::Workers;
use pagemig::{Plan, Threads};

use super::options::{TableArgs, TableOptions};
use super::table::{PageTable, Row};
use super::{PhaseRow, Report, measure, nodes_label, usable_free};
use crate::machine::Host;
use crate::model::LoadedModel;
use crate::progress::progress_bar;
use crate::values::page_size_label;

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

/// Arguments of `pagemig bench migrate`, as given.
#[derive(Debug, clap::Args)]
pub struct MigrateBenchArgs {
    /// Migration path to measure.
    #[arg(long, value_enum, default_value = "kernel")]
    path: PathKind,
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
    /// With --path remap: how the new pages' node is checked after each batch: a bounded sample
    /// (one base page per huge page and a few base pages), or every page [default: sample].
    #[arg(long, value_enum)]
    verify: Option<VerifyArg>,
    #[command(flatten)]
    table: TableArgs,
}

/// `bench migrate`'s arguments, checked against the machine, with every default resolved.
pub struct MigrateBenchConfig {
    host: Host,
    table: TableOptions,
    path: PathKind,
    from: NodeId,
    to: NodeId,
    /// Whether the remap path takes and recycles pages through per-node reservoirs.
    reservoir: bool,
    verify: VerifyArg,
    /// The CPUs of the mt_N threads or workers, as many as the largest mt_N.
    cpus: Vec<CpuId>,
    model: LoadedModel,
}

impl MigrateBenchArgs {
    /// Checks the arguments against `host` before anything is measured.
    pub fn validate(self, host: Host) -> anyhow::Result<MigrateBenchConfig> {
        let table = self
            .table
            .validate(&[4 << 10, 2 << 20], host.usable().len())?;
        if self.path != PathKind::Remap {
            if self.same_node {
                bail!("--same-node measures the remap pipeline only: add --path remap");
            }
            for (name, given) in [
                ("--no-reservoir", self.no_reservoir),
                ("--verify", self.verify.is_some()),
                ("--prefer-dma", table.prefer_dma),
            ] {
                if given {
                    bail!("{name} applies to the remap path only: add --path remap");
                }
            }
        }
        let (from, to) = nodes(&self, &host)?;
        let route = Route {
            from: Some(from),
            to: Some(to),
        };
        let cpus: Vec<CpuId> = Placement::NearDst
            .choose(&host.topo, route, &host.allowed, table.max_threads())
            .context("placing the migration threads")?;
        let model = table.model.load()?;
        let config = MigrateBenchConfig {
            host,
            table,
            path: self.path,
            from,
            to,
            reservoir: !self.no_reservoir,
            verify: self.verify.unwrap_or(VerifyArg::Sample),
            cpus,
            model,
        };
        if !config
            .table
            .tables
            .iter()
            .any(|(ps, rows)| rows.iter().any(|&n| config.fits(n, *ps)))
        {
            bail!(
                "--pages: no row fits in the free memory of {} (about {} MiB usable)",
                nodes_label(from, to),
                config.free() >> 20
            );
        }
        Ok(config)
    }
}

impl MigrateBenchConfig {
    /// Bytes the bench may take on each of its nodes.
    fn free(&self) -> usize {
        usable_free(&self.host.topo, self.from).min(usable_free(&self.host.topo, self.to))
    }

    /// Whether migrations of `pages` pages of `page_size` fit in the nodes' free memory.
    fn fits(&self, pages: usize, page_size: usize) -> bool {
        // The remap path holds old and new pages of a migration at once, and the copy column
        // its own destination.
        let copies = match self.path {
            PathKind::Remap => 3,
            PathKind::Kernel => 1,
        };
        [copies, pages, page_size]
            .into_iter()
            .try_fold(1usize, usize::checked_mul)
            .is_some_and(|bytes| bytes <= self.free())
    }
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
    phases: Phases,
    wall: std::time::Duration,
}

/// How one column moves a block.
enum Mover {
    Kernel(Plan),
    /// The kernel path with the planner's threads for each row's size.
    KernelAuto(Plan),
    /// One move_pages call with every page, as a program under libpagemig_preload.so makes it.
    Preload(Box<abi::Context>),
    /// The remap path with an engine, checking the new pages as said, with its userfaultfd.
    Remap(Box<dyn CopyEngine>, Verify, Box<Handles>),
    /// The copy engine alone, copying the same bytes back and forth between the block and pages
    /// already faulted in on the target: what the remap path would reach if everything around
    /// its copy were free. Each copy reads what the one before wrote, as the remap path's copy
    /// reads the pages its previous migration wrote (non-temporal stores leave them uncached).
    Copy(Box<dyn CopyEngine>),
}

/// Pages that move back and forth between two nodes (or from a node to itself), one migration
/// at a time.
struct Block<'w> {
    /// The threads that make the kernel path's calls.
    workers: &'w Workers,
    buf: Mapping,
    /// Where the block's pages are now.
    at: NodeId,
    page_size: usize,
    pages_failed: u64,
    /// Where the copy column copies to: as large as `buf`, faulted in on the target node.
    copy_dst: Option<Mapping>,
    /// Whether the copy column's next copy goes from `copy_dst` back to `buf`.
    copy_back: bool,
}

impl Block<'_> {
    /// Moves the first `pages` pages to the other node (the copy column only copies them);
    /// adds the remap phases to `phases`.
    fn migrate(
        &mut self,
        topo: &Topology,
        pages: usize,
        (a, b): (NodeId, NodeId),
        mover: &Mover,
        reservoirs: Option<&Reservoirs>,
        phases: &mut Phases,
    ) -> anyhow::Result<()> {
        let to = if self.at == a { b } else { a };
        let start = self.buf.as_ptr() as usize;
        match mover {
            Mover::Kernel(plan) | Mover::KernelAuto(plan) => {
                // One address per page: the head of a huge page moves all of it.
                let addrs: Vec<usize> = (0..pages).map(|i| start + i * self.page_size).collect();
                let mut status = vec![0; pages];
                kernel::move_pages(
                    Process::Current,
                    &addrs,
                    &vec![to; pages],
                    &mut status,
                    plan,
                    self.workers,
                    &|_| {},
                )?;
                self.pages_failed += status.iter().filter(|&&s| s != to as i32).count() as u64;
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
            Mover::Remap(engine, verify, handles) => {
                let bytes = pages * self.page_size;
                let mut plan = Plan::remap(bytes / sys::base_page_size());
                plan.verify = *verify;
                let tools = Tools {
                    engine: engine.as_ref(),
                    handles,
                    reservoirs,
                };
                let r = remap::migrate_mapping(topo, &mut self.buf, 0..bytes, to, &plan, tools)?;
                self.pages_failed += r.pages_not_moved();
                phases.add(&r.phases);
            }
            Mover::Copy(engine) => {
                let bytes = pages * self.page_size;
                let other = self
                    .copy_dst
                    .as_mut()
                    .context("no destination for the copy column")?;
                let (src, dst) = match self.copy_back {
                    false => (&mut self.buf, other),
                    true => (other, &mut self.buf),
                };
                self.copy_back = !self.copy_back;
                engine.copy(&[CopyOp::new(
                    &src.as_slice()[..bytes],
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
fn nodes(args: &MigrateBenchArgs, host: &Host) -> anyhow::Result<(NodeId, NodeId)> {
    let topo = &host.topo;
    let memory = topo.memory_nodes();
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
    host.check_node(from, "source")?;
    host.check_node(to, "destination")?;
    match (from == to, args.same_node) {
        (true, false) => bail!(
            "--from and --to are both node {from}: a migration needs two nodes (or --path remap --same-node)"
        ),
        (false, true) => bail!("--same-node with two different nodes ({from}, {to}): give one"),
        _ => Ok((from, to)),
    }
}

/// Measures the tables `config` describes and writes the report.
pub fn run(config: &MigrateBenchConfig, out: &mut dyn Write) -> anyhow::Result<()> {
    let MigrateBenchConfig {
        host,
        table,
        path,
        from,
        to,
        reservoir,
        verify,
        cpus,
        model,
    } = config;
    let (topo, path, from, to, verify) = (&host.topo, *path, *from, *to, *verify);
    let reps = table.reps;
    let sample_bytes: usize = if table.quick { 8 << 20 } else { 32 << 20 };
    let max_threads = table.max_threads();
    // Every column's threads: the copy pools, the kernel path's calls and the preload context.
    let workers = Arc::new(Workers::new());
    let route = Route {
        from: Some(from),
        to: Some(to),
    };
    // Migrations to the same node would move nothing in the kernel: no vanilla column then.
    let with_vanilla = from != to;
    let mut movers: Vec<(String, Mover)> = Vec::new();
    if with_vanilla {
        movers.push(("vanilla".into(), Mover::Kernel(Plan::serial(1))));
    }
    for &n in &table.threads {
        let mover = match path {
            PathKind::Kernel => Mover::Kernel(Plan::parallel(cpus[..n].to_vec(), 0)),
            PathKind::Remap => Mover::Remap(
                Box::new(
                    Pool::new(&workers, CpuEngine::new(EngineKind::Nt)?, &cpus[..n])
                        .context("starting copy workers")?,
                ),
                verify.into(),
                Box::new(Handles::open()?),
            ),
        };
        movers.push((format!("mt_{n}"), mover));
    }
    // The kernel path plans from the model's move_pages curve, which a quick calibration of the
    // copy engines would not have.
    let loaded = match path {
        PathKind::Kernel => model.clone(),
        PathKind::Remap => model.or_measure(topo, Effort::Builtin, &workers)?,
    };
    let planner = Planner::new(topo, loaded.model.as_ref(), Resources::detect()?)
        .prefer_dma(table.prefer_dma);
    movers.push((
        "auto".into(),
        match path {
            PathKind::Kernel => Mover::KernelAuto(Plan::serial(0)),
            PathKind::Remap => Mover::Remap(
                Box::new(
                    AutoEngine::new(&planner, route, &workers)
                        .context("starting the auto column's engine")?,
                ),
                verify.into(),
                Box::new(Handles::open()?),
            ),
        },
    ));
    if path == PathKind::Remap {
        movers.push((
            "copy".into(),
            Mover::Copy(Box::new(
                Pool::new(
                    &workers,
                    CpuEngine::new(EngineKind::Nt)?,
                    &cpus[..max_threads],
                )
                .context("starting copy workers")?,
            )),
        ));
    }
    if path == PathKind::Kernel && with_vanilla {
        movers.push((
            "preload".into(),
            Mover::Preload(Box::new(abi::Context::with_topology(
                topo.clone(),
                Threads::Auto,
                loaded.model.clone(),
                Arc::clone(&workers),
            ))),
        ));
    }

    let mut notes = vec![
        format!(
            "auto: the planner's choice for each row ({})",
            loaded.source
        ),
        match path {
            PathKind::Kernel => format!(
                "kernel path between node {from} and node {to}: vanilla is one move_pages call with every page on the calling thread; \
             mt_N: N threads on CPUs {cpus:?}, each moving a share in one call; preload: the same one call as vanilla made through \
             libpagemig_preload.so's code (PAGEMIG_THREADS unset: the planner's threads, pages grouped by node); one address per page (the head of a huge page)"
            ),
            PathKind::Remap => format!(
                "remap path, node {from} {} node {to}: mt_N write-protects, copies with N non-temporal workers on CPUs {cpus:?}, \
             remaps and wakes, one batch per migration, {}{}; new pages checked {}; copy: the mt_{max_threads} engine alone copying \
             the same bytes back and forth between the block and pages already faulted in on node {to}, so that mt_N / copy is the remap path's share of copy speed",
                if from == to { "to" } else { "<->" },
                if *reservoir {
                    "new pages from per-node reservoirs, old ones recycled into them"
                } else {
                    "new pages allocated, old ones freed"
                },
                if with_vanilla {
                    "; vanilla is move_pages of the same pages"
                } else {
                    ""
                },
                match verify {
                    VerifyArg::Sample =>
                        "on a sample (one base page per huge page, a few base pages per batch)",
                    VerifyArg::Full => "page by page",
                }
            ),
        },
    ];
    let mut plan_rows = Vec::new();
    for (ps, rows) in &table.tables {
        let ps = *ps;
        let (kept, dropped): (Vec<usize>, Vec<usize>) =
            rows.iter().partition(|&&n| config.fits(n, ps));
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
        let copy_dst = match path {
            PathKind::Remap => Some(bound(to)?),
            PathKind::Kernel => None,
        };
        let mut block = Block {
            workers: &workers,
            buf,
            at: from,
            page_size,
            pages_failed: 0,
            copy_dst,
            copy_back: false,
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
                let reservoirs = reservoir.then_some(&reservoirs);
                let mut runs = 0u32;
                let mut warm_up = Phases::default();
                cells.push(measure(reps, per_sample, bytes, |i| {
                    // The warm-up (step 0) fills the reservoirs: its phases are not counted. It
                    // migrates twice: a previous row's migrations split the block into mappings
                    // of their size, and old pages that span several mappings are freed, not
                    // recycled; the first migration makes the row's range one mapping.
                    let started = std::time::Instant::now();
                    let (migrations, phases) = if i == 0 {
                        (2, &mut warm_up)
                    } else {
                        (1, &mut timed.phases)
                    };
                    for _ in 0..migrations {
                        block.migrate(topo, pages, (from, to), mover, reservoirs, phases)?;
                    }
                    if i > 0 {
                        timed.wall += started.elapsed();
                        runs += 1;
                    }
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
    let bench = match path {
        PathKind::Kernel => "migrate --path kernel",
        PathKind::Remap => "migrate --path remap",
    };
    let report = Report {
        bench,
        unit: "GB/s",
        machine: host.describe(),
        notes,
        tables,
        phases: phase_rows,
    };
    report.emit(&table.output, out)
}

#[cfg(test)]
mod tests {
    use super::super::options::testing::{self, parse};
    use super::*;

    fn validate(host: Host, args: &[&str]) -> anyhow::Result<MigrateBenchConfig> {
        parse::<MigrateBenchArgs>(args).validate(host)
    }

    fn refusal(host: Host, args: &[&str]) -> String {
        testing::refusal(validate(host, args), args)
    }

    #[test]
    fn defaults_are_resolved_on_the_machine() {
        let c = validate(Host::fake(2, 2), &[]).unwrap();
        assert_eq!((c.path, c.from, c.to), (PathKind::Kernel, 0, 1));
        assert_eq!(c.table.tables.len(), 2, "4k and 2m");
        assert_eq!(c.table.threads, [1, 2, 4]);
        assert_eq!(c.cpus[..2], [2, 3], "near the destination first");
        assert!(c.reservoir);
        assert_eq!(c.verify, VerifyArg::Sample);
        let c = validate(
            Host::fake(1, 2),
            &[
                "--path",
                "remap",
                "--same-node",
                "--no-reservoir",
                "--verify",
                "full",
            ],
        )
        .unwrap();
        assert_eq!((c.from, c.to), (0, 0));
        assert!(!c.reservoir);
        assert_eq!(c.verify, VerifyArg::Full);
    }

    #[test]
    fn refusals_name_the_argument() {
        for (host, args, want) in [
            (
                Host::fake(2, 1),
                &["--same-node"][..],
                "--same-node measures the remap pipeline only: add --path remap",
            ),
            (
                Host::fake(2, 1),
                &["--no-reservoir"],
                "--no-reservoir applies to the remap path only: add --path remap",
            ),
            (
                Host::fake(2, 1),
                &["--path", "kernel", "--verify", "sample"],
                "--verify applies to the remap path only: add --path remap",
            ),
            (
                Host::fake(2, 1),
                &["--prefer-dma"],
                "--prefer-dma applies to the remap path only: add --path remap",
            ),
            (
                Host::fake(2, 1),
                &["--from", "1", "--to", "1"],
                "--from and --to are both node 1: a migration needs two nodes (or --path remap --same-node)",
            ),
            (
                Host::fake(2, 1),
                &["--path", "remap", "--same-node", "--to", "1"],
                "--same-node with two different nodes (0, 1): give one",
            ),
            (
                Host::fake(2, 1),
                &["--to", "9"],
                "destination node 9 does not exist or is offline (nodes with memory: 0-1)",
            ),
            (
                Host::fake(2, 1),
                &["--pages", "0"],
                "--pages: a row needs at least one page",
            ),
            (
                Host::fake(2, 1),
                &["--pages", "100000000000"],
                "--pages: no row fits in the free memory of nodes 0 and 1 (about 3276 MiB usable)",
            ),
            (
                Host::fake(1, 1),
                &["--path", "remap", "--same-node", "--pages", "1000000"],
                "--pages: no row fits in the free memory of node 0 (about 3276 MiB usable)",
            ),
        ] {
            assert_eq!(refusal(host, args), want, "{args:?}");
        }
        let one = refusal(Host::fake(1, 2), &[]);
        assert!(
            one.starts_with("bench migrate needs two nodes with memory, and this machine has memory on node 0 only"),
            "{one}"
        );
    }
}
