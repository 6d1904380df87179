//! `pagemig migrate`: move pages of running processes to a node.

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pagemig::account::{ChargeTo, Report};
use pagemig::copy::Placement;
use pagemig::migrate::{check_target, scan};
use pagemig::policy::{CostModel, KernelPoint, Resources};
use pagemig::process::Process;
use pagemig::procfs;
use pagemig::topology::{CpuSet, NodeId, NodeSet, Topology};
use pagemig::{Migrator, Options, Plan, Progress, Request, Selection, Threads};

use crate::model::ModelArgs;

use crate::values::parse_placement;

/// Arguments of `pagemig migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Processes whose pages move: pids or `self`, comma-separated or repeated.
    #[arg(long, required = true, value_delimiter = ',')]
    pid: Vec<Process>,
    /// Target node.
    #[arg(long, value_parser = parse_node)]
    to: NodeId,
    /// Only pages now on these nodes (numactl list syntax: 0-2,4).
    #[arg(long, value_parser = parse_nodes)]
    from: Option<NodeSet>,
    /// Only this address range, START-END in hex (0x7f00…) or decimal; repeatable.
    #[arg(long, value_parser = parse_range, conflicts_with = "mapping")]
    range: Vec<Range<usize>>,
    /// Only mappings whose path contains this (`[heap]`, `[stack]`, `libfoo.so`), or
    /// `anonymous` for memory without a file.
    #[arg(long, value_parser = parse_mapping)]
    mapping: Option<String>,
    /// Threads calling move_pages: `auto` (the planner's choice from the migration's size, the
    /// cost model, the affinity mask, cgroup cpu.max and load) or a number.
    #[arg(long, default_value = "auto")]
    threads: Threads,
    /// Pages per move_pages call.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Longest time any one kernel call may stall the target, in milliseconds: batches adapt
    /// to the measured cost per page.
    #[arg(long, value_name = "MS")]
    max_stall: Option<f64>,
    /// Where the threads run: near-dst, near-src, spread, or a CPU list [default: the planner's
    /// choice: near the target, or near the source for a memory-only target].
    #[arg(long, value_parser = parse_placement)]
    placement: Option<Placement>,
    /// Who pays for the CPU time: `caller`, or `target` (helper processes in the target
    /// process's cgroup make the calls).
    #[arg(long, default_value = "caller")]
    charge: ChargeTo,
    /// Print the plan and why it was chosen.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Also move pages shared with other processes (MPOL_MF_MOVE_ALL; needs CAP_SYS_NICE).
    #[arg(long)]
    all: bool,
    /// Say what would move; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Exit 0 even when some pages could not move.
    #[arg(long)]
    best_effort: bool,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

/// One node number (`--to`).
pub fn parse_node(text: &str) -> Result<NodeId, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = t.parse() {
            return Ok(n);
        }
        return Err(format!("node {t} is too large"));
    }
    Err(format!("expected one node number, got {text:?}"))
}

/// A node list that selects at least one node, each once (`--from`).
pub fn parse_nodes(text: &str) -> Result<NodeSet, String> {
    let nodes: NodeSet = text.parse().map_err(|e| format!("{e}"))?;
    if nodes.is_empty() {
        return Err("an empty node list selects no page (expected nodes as in 0-2,4)".into());
    }
    match crate::values::given_twice(text) {
        Some(node) => Err(format!("bad list {text:?}: node {node} is given twice")),
        None => Ok(nodes),
    }
}

/// A `--mapping` pattern: an empty one would match every mapping with a path.
fn parse_mapping(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "an empty --mapping selects every named mapping (expected part of a path, as in [heap] or libfoo.so, or anonymous)"
                .into(),
        );
    }
    Ok(text.to_owned())
}

fn parse_address(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{t:?} is not an address (hex with 0x, or decimal)"))
}

fn parse_range(text: &str) -> Result<Range<usize>, String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("bad range {text:?}: expected START-END"))?;
    let start = parse_address(a).map_err(|e| format!("bad range {text:?}: start {e}"))?;
    let end = parse_address(b).map_err(|e| format!("bad range {text:?}: end {e}"))?;
    if start >= end {
        return Err(format!(
            "bad range {text:?}: the end is not after the start"
        ));
    }
    Ok(start..end)
}

/// What the command's exit status says.
pub enum Outcome {
    /// Every requested page is on the target.
    Complete,
    /// Some pages did not move (and --best-effort was not given).
    Incomplete,
}

/// `pagemig migrate`'s arguments, checked and turned into what the library takes: every
/// problem is found before any page moves.
struct Config {
    /// Every process, checked to exist and to be movable by this caller.
    pids: Vec<Process>,
    to: NodeId,
    from: Option<NodeSet>,
    selection: Selection,
    options: Options,
    explain: bool,
    best_effort: bool,
    json: bool,
}

impl Config {
    fn new(args: &MigrateArgs, topo: &Topology) -> anyhow::Result<Self> {
        check_target(topo, args.to)?;
        if args.batch == 0 {
            anyhow::bail!("--batch must be at least one page");
        }
        let max_stall = match args.max_stall {
            Some(ms) if ms > 0.0 && ms.is_finite() => Some(
                Duration::try_from_secs_f64(ms / 1e3)
                    .map_err(|_| anyhow::anyhow!("--max-stall {ms:e}: too large"))?,
            ),
            Some(ms) => {
                anyhow::bail!("--max-stall {ms}: must be a positive number of milliseconds")
            }
            None => None,
        };
        if args.all
            && !procfs::status(Process::Current)
                .context("reading this process's capabilities")?
                .cap_sys_nice
        {
            anyhow::bail!(
                "--all moves pages shared with other processes (MPOL_MF_MOVE_ALL), which needs \
                 CAP_SYS_NICE, and this process does not have it"
            );
        }
        // `self` and this program's pid are one process: its pages would move twice.
        if let Some((_, &p)) = (args.pid.iter().enumerate())
            .find(|&(i, &p)| args.pid[..i].iter().any(|&q| q.id() == p.id()))
        {
            anyhow::bail!("--pid: {p} is given twice");
        }
        // Every process is checked before any moves, so that a bad pid later in the list does
        // not stop a migration half done.
        for &process in &args.pid {
            scan::check_process(process)
                .with_context(|| format!("migrating the pages of {process} to node {}", args.to))?;
        }
        let selection = match (&args.range, &args.mapping) {
            (ranges, _) if !ranges.is_empty() => Selection::Ranges(ranges.clone()),
            (_, Some(pattern)) => Selection::Mappings(pattern.clone()),
            _ => Selection::All,
        };
        Ok(Config {
            pids: args.pid.clone(),
            to: args.to,
            from: args.from.clone(),
            selection,
            options: Options {
                dry_run: args.dry_run,
                move_all: args.all,
                batch: Some(args.batch),
                max_stall,
                charge: args.charge,
                threads: args.threads,
                placement: args.placement.clone(),
                ..Options::default()
            },
            explain: args.explain,
            best_effort: args.best_effort,
            json: args.json,
        })
    }

    fn request(&self, process: Process) -> Request<'static> {
        let request = Request::process(process, self.selection.clone(), self.to);
        match &self.from {
            Some(from) => request.from_nodes(from.clone()),
            None => request,
        }
        .with(self.options.clone())
    }
}

pub fn run(args: &MigrateArgs, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let topo = Topology::detect().context("reading the topology from /sys")?;
    let config = Config::new(args, &topo)?;
    let loaded = args.model.load()?;
    // A model read from a file learns what the kernel path's thread check measures.
    let mut learning = loaded.path.clone().zip(loaded.model.clone());
    let migrator = Migrator::with(topo, loaded.model, Resources::detect()?);
    let mut incomplete = false;
    if config.json {
        interrupt::close_json_on_signal()?;
        interrupt::whole(|| {
            write!(out, "[")?;
            out.flush()
        })?;
    }
    for (k, &process) in config.pids.iter().enumerate() {
        let request = config.request(process);
        let context = || format!("migrating the pages of {process} to node {}", config.to);
        let (scan, plan) = migrator.plan(&request).with_context(context)?;
        if config.explain {
            let text = explain(process, &plan, &loaded.source);
            // JSON goes to stdout alone.
            if config.json {
                eprintln!("{text}");
            } else {
                writeln!(out, "{text}")?;
            }
        }
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} pages",
            )
            .expect("valid progress template"),
        );
        bar.set_message(format!("{process} → node {}", config.to));
        let report = migrator
            .execute(&request, &scan, &plan, &|p| match p {
                Progress::Planned(n) => bar.set_length(n),
                Progress::Moved(n) => bar.inc(n),
            })
            .with_context(context)?;
        bar.finish_and_clear();
        let learned = match &mut learning {
            Some((path, model)) => learn_thread_check(path, model, &report, scan.bytes_to_move())?,
            None => None,
        };
        // Each report as soon as its process is done: an interrupted run keeps what finished.
        if config.json {
            interrupt::whole(|| -> anyhow::Result<()> {
                writeln!(out, "{}", if k == 0 { "" } else { "," })?;
                serde_json::to_writer_pretty(&mut *out, &report)?;
                Ok(out.flush()?)
            })?;
        } else {
            render(&report, out)?;
            if config.explain
                && report.pages_moved > 0
                && let Some(line) =
                    check_prediction(report.gbps(), plan.predicted_gbps, report.calls.threads)
            {
                writeln!(out, "{line}")?;
            }
        }
        if let Some(note) = learned {
            // JSON goes to stdout alone.
            if config.json {
                eprintln!("{note}");
            } else {
                writeln!(out, "  {note}")?;
            }
        }
        out.flush()?;
        incomplete |= report.pages_not_moved() > 0;
    }
    if config.json {
        interrupt::whole(|| {
            writeln!(out, "\n]")?;
            out.flush()
        })?;
    }
    Ok(
        if incomplete && !config.best_effort && !config.options.dry_run {
            Outcome::Incomplete
        } else {
            Outcome::Complete
        },
    )
}

/// Where the kernel path's thread check tried another thread count: both counts' measured GB/s
/// go into the model, which is saved to `path`; says so.
fn learn_thread_check(
    path: &Path,
    model: &mut CostModel,
    report: &Report,
    bytes: u64,
) -> anyhow::Result<Option<String>> {
    let points: Vec<KernelPoint> = report
        .calls
        .thread_gbps
        .iter()
        .map(|&(threads, gbps)| KernelPoint {
            threads,
            bytes,
            gbps,
        })
        .collect();
    if model.learn_kernel(&points) == 0 {
        return Ok(None);
    }
    model.save(path).with_context(|| {
        format!(
            "saving what the thread check measured to {}",
            path.display()
        )
    })?;
    Ok(Some(format!(
        "the cost model {} learned {} move_pages figure(s) from the thread count check",
        path.display(),
        points.len()
    )))
}

/// SIGINT or SIGTERM during `migrate --json`: the JSON array is closed after the last report
/// written in whole, and the program exits with 130, at once (a migration in flight is not
/// waited for, as without the handler).
mod interrupt {
    use std::sync::atomic::{AtomicU8, Ordering};

    const IDLE: u8 = 0;
    const WRITING: u8 = 1;
    const INTERRUPTED: u8 = 2;
    const CLOSING: u8 = 3;
    static STATE: AtomicU8 = AtomicU8::new(IDLE);

    /// The exit status of a program ended by SIGINT, as shells report it.
    const STATUS: i32 = 130;

    /// Ends the array on standard output (fd 1, bypassing the flushed buffer) and exits.
    fn close_and_exit() -> ! {
        const CLOSE: &[u8] = b"\n]\n";
        // SAFETY: fd 1 is standard output, open for the program's life.
        let stdout = unsafe { std::os::fd::BorrowedFd::borrow_raw(1) };
        // write(2), async-signal-safe.
        let _ = rustix::io::write(stdout, CLOSE);
        signal_hook::low_level::exit(STATUS)
    }

    /// Installs the handlers.
    pub fn close_json_on_signal() -> std::io::Result<()> {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // SAFETY: the action does only async-signal-safe things: atomic operations,
            // write(2) and _exit(2).
            unsafe {
                signal_hook::low_level::register(signal, || {
                    match STATE.compare_exchange(IDLE, CLOSING, Ordering::SeqCst, Ordering::SeqCst)
                    {
                        Ok(_) => close_and_exit(),
                        // A report is being written: its writer closes the array after it.
                        Err(_) => {
                            let _ = STATE.compare_exchange(
                                WRITING,
                                INTERRUPTED,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            );
                        }
                    }
                })
            }?;
        }
        Ok(())
    }

    /// Runs `write` (which writes and flushes) so that a signal never cuts what it writes in
    /// two: one arriving meanwhile ends the program right after it.
    pub fn whole<T>(write: impl FnOnce() -> T) -> T {
        if STATE
            .compare_exchange(IDLE, WRITING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // A handler is closing the array and exiting.
            loop {
                std::thread::park();
            }
        }
        let done = write();
        if STATE
            .compare_exchange(WRITING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            close_and_exit();
        }
        done
    }
}

/// `--explain`: the plan's path, threads, batch, who pays, and every reason.
fn explain(process: Process, plan: &Plan, model_source: &str) -> String {
    format!(
        "plan for {process}: {} thread(s) on CPUs {}, {} pages per call, the {} path, charged to the {}; {model_source}\n  why: {}",
        plan.cpus.len(),
        plan.cpus.iter().copied().collect::<CpuSet>(),
        plan.batch,
        plan.path,
        if plan.charge == ChargeTo::Target {
            "target's cgroup"
        } else {
            "caller"
        },
        plan.why.join("\n  why: ")
    )
}

/// The kernel path's check of its plan: the measured rate against the model's prediction for
/// `threads` threads, and what to do when it is more than 10% under.
fn check_prediction(measured: f64, predicted: Option<f64>, threads: usize) -> Option<String> {
    let predicted = predicted?;
    Some(if measured < 0.9 * predicted {
        format!(
            "  checked: {measured:.2} GB/s, more than 10% under the {predicted:.2} GB/s the cost model predicted for {threads} thread(s); `pagemig calibrate --update` measures move_pages again"
        )
    } else {
        format!("  checked: {measured:.2} GB/s, as predicted ({predicted:.2} GB/s)")
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Every phase that took time, and their sum against the wall time.
fn phase_line(r: &Report) -> String {
    let shown: Vec<String> = r
        .phases
        .named()
        .iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(name, d)| format!("{name} {}", ms(*d)))
        .collect();
    let total = r.phases.total();
    let share = if r.wall.is_zero() {
        1.0
    } else {
        total.as_secs_f64() / r.wall.as_secs_f64()
    };
    format!(
        "phases: {}; sum {} of wall {} ({:.0}%)",
        shown.join(", "),
        ms(total),
        ms(r.wall),
        share * 100.0
    )
}

fn render(r: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let verb = if r.dry_run { "would move" } else { "moved" };
    writeln!(
        out,
        "{} → node {}: {verb} {} pages ({}) in {}, {:.2} GB/s, {} thread(s)",
        r.process,
        r.to,
        r.pages_moved,
        mib(r.bytes_moved),
        ms(r.phases.moving),
        r.gbps(),
        r.calls.threads
    )?;
    writeln!(
        out,
        "  requested {} pages of {} KiB; already on node {}: {}; skipped: {}; not moved: {}",
        r.pages_requested,
        r.page_size >> 10,
        r.to,
        r.pages_already_on_target,
        r.pages_skipped_total(),
        r.pages_not_moved()
    )?;
    for (reason, pages) in &r.pages_skipped {
        writeln!(out, "    {pages} pages skipped: {reason}")?;
    }
    for (cause, pages) in &r.pages_failed {
        writeln!(out, "    {pages} pages: {cause}")?;
    }
    if !r.pages_left_by_node.is_empty() {
        let left: Vec<String> = r
            .pages_left_by_node
            .iter()
            .map(|(n, p)| format!("{p} on node {n}"))
            .collect();
        writeln!(out, "    left behind: {}", left.join(", "))?;
    }
    if r.process_exited {
        writeln!(
            out,
            "  the process exited during the migration; counts are what moved before"
        )?;
    }
    if !r.dry_run {
        writeln!(
            out,
            "  kernel calls: {}, longest {} (the longest stall), median {}, last batch {} pages",
            r.calls.calls,
            ms(r.calls.longest),
            ms(r.calls.median),
            r.calls.final_batch
        )?;
        for note in &r.calls.thread_check {
            writeln!(out, "  thread count checked: {note}")?;
        }
    }
    writeln!(out, "  {}", phase_line(r))?;
    if !r.dry_run {
        if r.calls.thread_cpu.is_empty() {
            writeln!(
                out,
                "  CPU time of the moving threads: none (nothing to move)"
            )?;
        } else {
            let each: Vec<String> = r.calls.thread_cpu.iter().map(|d| ms(*d)).collect();
            writeln!(
                out,
                "  CPU time of the moving threads: {} ({})",
                ms(r.calls.cpu_time),
                each.join(", ")
            )?;
        }
        if let Some(helper) = r.calls.helper_cpu {
            writeln!(
                out,
                "  CPU time of the helper process in the target's cgroup: {} (its start, its work and its reply; the threads' calls are {} of it)",
                ms(helper),
                ms(r.calls.cpu_time)
            )?;
        }
        writeln!(
            out,
            "  CPU time of the calling thread: {}",
            ms(r.caller_cpu)
        )?;
        let c = &r.charged_to;
        let who = match c.to {
            ChargeTo::Caller => "the caller",
            ChargeTo::Target => "the target (helper process in its cgroup)",
        };
        match (&c.cgroup, c.usage()) {
            (Some(cg), Some(used)) => writeln!(
                out,
                "  charged to {who}: cgroup {cg}, cpu.stat usage {} -> {} us (+{}: every task of the cgroup{})",
                c.usage_before_usec.unwrap_or(0),
                c.usage_after_usec.unwrap_or(0),
                ms(used),
                if c.to == ChargeTo::Target {
                    ", the helper process's start included"
                } else {
                    ""
                }
            )?,
            _ => writeln!(out, "  charged to {who} (no cgroup v2 usage to show)")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Anything a user may type: an answer or an error, never a panic; what is accepted
        /// means what it says.
        #[test]
        fn argument_parsers_take_anything(
            text in "[0-9a-fx\\-, ]{0,40}|0x[0-9a-f]{1,20}-0x[0-9a-f]{1,20}|.{0,16}"
        ) {
            if let Ok(r) = parse_range(&text) {
                prop_assert!(r.start < r.end);
            }
            if let Ok(nodes) = parse_nodes(&text) {
                prop_assert!(!nodes.is_empty());
            }
            let _ = parse_node(&text);
            let _ = parse_placement(&text);
            if let Ok(size) = crate::values::parse_page_size(&text) {
                prop_assert!(size.is_power_of_two() && size >= 4096);
            }
        }
    }

    #[test]
    fn the_kernel_path_compares_its_rate_with_the_prediction() {
        assert_eq!(check_prediction(1.0, None, 2), None);
        let slow = check_prediction(0.8, Some(1.0), 2).unwrap();
        assert!(
            slow.contains("more than 10% under") && slow.contains("2 thread(s)"),
            "{slow}"
        );
        let fine = check_prediction(0.95, Some(1.0), 2).unwrap();
        assert!(fine.contains("as predicted"), "{fine}");
    }

    #[test]
    fn ranges_and_threads_parse() {
        assert_eq!(parse_range("0x1000-0x3000"), Ok(0x1000..0x3000));
        assert_eq!(parse_range("4096-8192"), Ok(4096..8192));
        assert!(
            parse_range("0x3000-0x1000")
                .unwrap_err()
                .contains("not after")
        );
        assert!(
            parse_range("0x10zz-0x20")
                .unwrap_err()
                .contains("start \"0x10zz\" is not an address")
        );
        assert!(parse_range("12").unwrap_err().contains("START-END"));
        assert_eq!(parse_node("3"), Ok(3));
        assert_eq!(
            parse_node("0-1"),
            Err("expected one node number, got \"0-1\"".into())
        );
        assert!(parse_node("99999999999").unwrap_err().contains("too large"));
        assert!(parse_nodes("").unwrap_err().contains("empty node list"));
        assert!(parse_nodes("0,,1").unwrap_err().contains("empty item"));
        assert_eq!(parse_nodes("0-1"), Ok("0-1".parse().unwrap()));
        assert!(
            parse_nodes("0,0")
                .unwrap_err()
                .contains("node 0 is given twice")
        );
        assert!(
            parse_nodes("0-2,1")
                .unwrap_err()
                .contains("node 1 is given twice")
        );
        assert!(parse_mapping("").unwrap_err().contains("empty --mapping"));
        assert_eq!(parse_mapping("[heap]"), Ok("[heap]".into()));
        assert_eq!("auto".parse(), Ok(Threads::Auto));
        assert_eq!("3".parse(), Ok(Threads::Count(3)));
        assert!("0".parse::<Threads>().is_err());
    }
}
