//! `pagemig bench tier`: the same workload tiered by `pagemig tier` and by DAMON's own
//! `migrate_hot`/`migrate_cold` schemes (the kernel moving the pages): time until 90% of the
//! cold set is on the slow node and 90% of the hot set on the fast one, bytes moved, CPU time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pagemig::account::ChargeTo;
use pagemig::migrate::check_target;
use pagemig::migrate::scan;
use pagemig::policy::Resources;
use pagemig::process::Process;
use pagemig::sys::{self, Mapping, PageNode};
use pagemig::tier::Size;
use pagemig::tier::agent::{self, Agent, AgentConfig};
use pagemig::tier::damon::{self, Action, Damon, DamonAttrs, Scheme};
use pagemig::tier::decide::Policy;
use pagemig::topology::{NodeId, NodeSet, Topology};
use pagemig::{Migrator, Options, Threads};
use serde::Serialize;

use crate::machine::Host;

/// Arguments of `pagemig bench tier`, as given.
#[derive(Debug, clap::Args)]
pub struct TierBenchArgs {
    /// The fast node [default: the first node with CPUs and memory].
    #[arg(long, value_name = "NODE")]
    fast: Option<NodeId>,
    /// The slow node [default: a memory-only node, or the farthest node with memory].
    #[arg(long, value_name = "NODE")]
    slow: Option<NodeId>,
    /// Size of the hot set, written all the time.
    #[arg(long, value_name = "SIZE", default_value = "32M")]
    hot: Size,
    /// Size of the cold set, written once.
    #[arg(long, value_name = "SIZE", default_value = "160M")]
    cold: Size,
    /// pagemig tier's --fast-budget.
    #[arg(long, value_name = "SIZE|PCT", default_value = "64M")]
    fast_budget: Size,
    /// Seconds between pagemig's decisions and between placement checks.
    #[arg(long, value_name = "S", default_value_t = 0.5)]
    interval: f64,
    /// Give up on a run after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 120.0)]
    timeout: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run as the workload, its memory on this node (used by the benchmark itself).
    #[arg(long, hide = true)]
    workload: Option<NodeId>,
}

/// What `bench tier` runs, its arguments checked.
pub enum TierBench {
    /// The workload process the bench starts (`--workload NODE`): `hot` and `cold` bytes on
    /// `node`.
    Workload {
        /// Where its memory is.
        node: NodeId,
        /// Bytes of its hot set.
        hot: usize,
        /// Bytes of its cold set.
        cold: usize,
    },
    /// The comparison itself.
    Compare(TierBenchConfig),
}

/// The comparison's arguments, checked against the machine, with the tiers resolved.
pub struct TierBenchConfig {
    host: Host,
    fast: NodeId,
    slow: NodeId,
    /// Bytes of the hot set.
    hot: usize,
    /// Bytes of the cold set.
    cold: usize,
    fast_budget: Size,
    interval: Duration,
    timeout: Duration,
    json: bool,
}

impl TierBenchArgs {
    /// Checks the sizes and times, then (for the comparison) the nodes and DAMON, before any
    /// workload starts.
    pub fn validate(self) -> anyhow::Result<TierBench> {
        let (hot, cold) = (bytes(self.hot, "hot")?, bytes(self.cold, "cold")?);
        if let Some(node) = self.workload {
            return Ok(TierBench::Workload { node, hot, cold });
        }
        let seconds = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
        let (Some(interval), Some(timeout)) = (seconds(self.interval), seconds(self.timeout))
        else {
            bail!("--interval and --timeout must be positive numbers of seconds");
        };
        let host = Host::detect()?;
        let (fast, slow) = tiers(&host.topo, &self)?;
        damon::probe(damon::ADMIN.as_ref())?;
        Ok(TierBench::Compare(TierBenchConfig {
            host,
            fast,
            slow,
            hot,
            cold,
            fast_budget: self.fast_budget,
            interval,
            timeout,
            json: self.json,
        }))
    }
}

/// One method on one start.
#[derive(Debug, Serialize)]
struct Row {
    start: &'static str,
    method: &'static str,
    /// Seconds until 90% placement, if reached.
    placed_s: Option<f64>,
    /// Share of the hot set on the fast node and of the cold set on the slow one at the end.
    hot_on_fast: f64,
    cold_on_slow: f64,
    bytes_moved: u64,
    /// CPU time of the moving threads (pagemig) …
    moving_cpu_s: f64,
    /// … of the agent's tracking and deciding (pagemig) …
    tracking_cpu_s: f64,
    /// … and of the kdamonds (both).
    kdamond_cpu_s: f64,
}

fn bytes(size: Size, name: &str) -> anyhow::Result<usize> {
    match size {
        Size::Bytes(b) if b >= 2 << 20 => Ok(b as usize),
        _ => bail!("--{name} must be a size of at least 2M"),
    }
}

/// The workload process: a hot set written all the time, a cold set written once; ends when
/// its stdin closes.
fn run_workload(node: NodeId, hot: usize, cold: usize) -> anyhow::Result<()> {
    let nodes = NodeSet::from_iter([node]);
    let mut h = Mapping::anonymous(hot)?;
    let mut c = Mapping::anonymous(cold)?;
    h.bind(&nodes)?;
    c.bind(&nodes)?;
    h.as_mut_slice().fill(1);
    c.as_mut_slice().fill(2);
    println!(
        "READY {:#x} {:#x}",
        h.as_ptr() as usize,
        c.as_ptr() as usize
    );
    std::io::stdout().flush()?;
    static STOP: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_line(&mut String::new());
        STOP.store(true, Ordering::Relaxed);
    });
    let page = sys::base_page_size();
    while !STOP.load(Ordering::Relaxed) {
        let s = std::hint::black_box(h.as_mut_slice());
        for i in (0..s.len()).step_by(page) {
            s[i] = s[i].wrapping_add(1);
        }
    }
    Ok(())
}

struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    hot: usize,
    cold: usize,
}

impl Workload {
    fn spawn(config: &TierBenchConfig, node: NodeId) -> anyhow::Result<Workload> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "tier", "--workload", &node.to_string()])
            .args(["--hot", &config.hot.to_string()])
            .args(["--cold", &config.cold.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the workload")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the workload's addresses")?;
        let mut f = line
            .strip_prefix("READY ")
            .context("the workload did not start")?
            .split_whitespace()
            .map(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16));
        let (Some(Ok(hot)), Some(Ok(cold))) = (f.next(), f.next()) else {
            bail!("the workload said {line:?}");
        };
        Ok(Workload {
            stdin: child.stdin.take(),
            child,
            hot,
            cold,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The share of `start..start+len` on `node`, by the kernel's answer.
fn share_on(pid: u32, start: usize, len: usize, node: NodeId) -> anyhow::Result<f64> {
    let pages: Vec<usize> = (start..start + len)
        .step_by(sys::base_page_size())
        .collect();
    let placed = scan::query(Process::Pid(pid), &pages)?;
    Ok(placed
        .iter()
        .filter(|p| **p == PageNode::Node(node))
        .count() as f64
        / pages.len() as f64)
}

/// The default tiers: a CPU node with memory, and a memory-only node or the farthest one.
fn tiers(topo: &Topology, args: &TierBenchArgs) -> anyhow::Result<(NodeId, NodeId)> {
    let fast = match args.fast {
        Some(n) => n,
        None => topo
            .nodes
            .iter()
            .find(|n| n.has_memory && !n.cpus.is_empty())
            .map(|n| n.id)
            .context("no node has both CPUs and memory")?,
    };
    let slow = match args.slow {
        Some(n) => n,
        None => topo
            .nodes
            .iter()
            .find(|n| n.is_memory_only())
            .map(|n| n.id)
            .or_else(|| {
                topo.nodes_by_distance(fast)
                    .into_iter()
                    .rev()
                    .find(|&n| n != fast && topo.node(n).is_some_and(|n| n.has_memory))
            })
            .context(
                "bench tier needs two nodes with memory; this machine has one (run it in `cargo xtask guest-test` guests or on a tiered host)",
            )?,
    };
    check_target(topo, fast)?;
    check_target(topo, slow)?;
    if fast == slow {
        bail!("--fast and --slow are the same node {fast}");
    }
    Ok((fast, slow))
}

/// Runs one method until placement or the timeout.
fn measure(config: &TierBenchConfig, start_on: NodeId, with_pagemig: bool) -> anyhow::Result<Row> {
    let TierBenchConfig {
        host: Host { topo, .. },
        fast,
        slow,
        hot,
        cold,
        interval,
        ..
    } = config;
    let (fast, slow, hot, cold, interval) = (*fast, *slow, *hot, *cold, *interval);
    let w = Workload::spawn(config, start_on)?;
    let pid = w.pid();
    let run_dir = std::env::temp_dir().join(format!("pagemig-bench-tier-{}", std::process::id()));
    let attrs = DamonAttrs::default();
    let placed = || -> anyhow::Result<(f64, f64)> {
        Ok((
            share_on(pid, w.hot, hot, fast)?,
            share_on(pid, w.cold, cold, slow)?,
        ))
    };
    let t0 = Instant::now();
    let limit = config.timeout;
    let mut row = Row {
        start: if start_on == fast {
            "on fast"
        } else {
            "on slow"
        },
        method: if with_pagemig {
            "pagemig tier"
        } else {
            "DAMON paddr migrate_hot/cold"
        },
        placed_s: None,
        hot_on_fast: 0.0,
        cold_on_slow: 0.0,
        bytes_moved: 0,
        moving_cpu_s: 0.0,
        tracking_cpu_s: 0.0,
        kdamond_cpu_s: 0.0,
    };
    if with_pagemig {
        let migrator = Migrator::with(topo.clone(), None, Resources::detect()?);
        let options = Options {
            threads: Threads::Auto,
            batch: Some(4096),
            max_stall: None,
            charge: ChargeTo::Caller,
            ..Options::default()
        };
        let config = AgentConfig {
            pids: vec![pid],
            fast: NodeSet::from_iter([fast]),
            slow: NodeSet::from_iter([slow]),
            fast_budget: Some(config.fast_budget),
            free_margin: Size::Percent(5.0),
            interval,
            rate: None,
            granularity: 2 << 20,
            policy: Policy::default(),
            damon: attrs,
            damon_admin: damon::ADMIN.into(),
            runtime_dir: run_dir,
            dry_run: false,
        };
        let (mut agent, _) = Agent::start(config, topo)?;
        let mover = |r: &agent::MoveRequest| agent::move_through(&migrator, &options, r);
        while t0.elapsed() < limit {
            std::thread::sleep(interval);
            let report = agent.step(&mover)?;
            for m in &report.moves {
                row.bytes_moved += m.report.bytes_moved;
                row.moving_cpu_s += m.report.calls.cpu_time.as_secs_f64();
            }
            row.tracking_cpu_s += report.tracking_cpu.as_secs_f64();
            row.kdamond_cpu_s = report.kdamond_cpu.as_secs_f64();
            let (h, c) = placed()?;
            (row.hot_on_fast, row.cold_on_slow) = (h, c);
            if h >= 0.9 && c >= 0.9 {
                row.placed_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
        }
        agent.stop()?;
    } else {
        let max = u32::try_from(attrs.max_accesses()).unwrap_or(u32::MAX);
        let sysfs = std::path::Path::new("/sys");
        // The kernel's own tiering: one kdamond on the fast node's physical memory demoting
        // what was not accessed for 5 aggregation intervals (0.5 s), one on the slow node's
        // promoting what was accessed at all; anonymous pages only, so that the host's page
        // cache and tmpfs files (a guest's whole root file system) stay where they are.
        let kdamonds = [
            (
                damon::node_ranges(sysfs, fast)?,
                vec![Scheme {
                    action: Action::MigrateCold(slow),
                    accesses: 0..=0,
                    age: 5..=u32::MAX,
                    anon_only: true,
                }],
            ),
            (
                damon::node_ranges(sysfs, slow)?,
                vec![Scheme {
                    action: Action::MigrateHot(fast),
                    accesses: 1..=max,
                    age: 0..=u32::MAX,
                    anon_only: true,
                }],
            ),
        ];
        let (d, _) = Damon::start_physical(damon::ADMIN.as_ref(), &run_dir, attrs, &kdamonds)?;
        while t0.elapsed() < limit {
            std::thread::sleep(interval);
            let (h, c) = placed()?;
            (row.hot_on_fast, row.cold_on_slow) = (h, c);
            if h >= 0.9 && c >= 0.9 {
                row.placed_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
        }
        row.bytes_moved = d.applied_bytes()?;
        row.kdamond_cpu_s = d.cpu_time().as_secs_f64();
        d.stop()?;
    }
    Ok(row)
}

/// Runs the workload, or the comparison and writes its table.
pub fn run(bench: &TierBench, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = match bench {
        TierBench::Workload { node, hot, cold } => return run_workload(*node, *hot, *cold),
        TierBench::Compare(config) => config,
    };
    let (fast, slow) = (config.fast, config.slow);
    let machine = config.host.describe();
    let mut rows = Vec::new();
    for start_on in [fast, slow] {
        for with_pagemig in [true, false] {
            rows.push(measure(config, start_on, with_pagemig)?);
        }
    }
    if config.json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({"machine": machine.to_string(), "fast": fast, "slow": slow, "rows": rows}),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "machine: {machine}")?;
    writeln!(
        out,
        "note: hot set {} written all the time, cold set {} written once, fast node {fast}, slow node {slow}; placed = 90% of the hot set on node {fast} and of the cold set on node {slow}, by move_pages queries every {} s",
        Size::Bytes(config.hot as u64),
        Size::Bytes(config.cold as u64),
        config.interval.as_secs_f64()
    )?;
    writeln!(
        out,
        "note: pagemig tier tracks the workload (DAMON vaddr) with --fast-budget {}; DAMON's migrate_hot/migrate_cold run in the kernel on all anonymous memory of the two nodes (paddr: Linux 6.11-6.15 offer them there only), demoting what saw no access for 0.5 s and promoting what saw any",
        config.fast_budget
    )?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "start",
        "method",
        "placed after s",
        "hot on fast",
        "cold on slow",
        "MiB moved",
        "CPU s moving",
        "CPU s tracking",
        "CPU s kdamond",
    ]);
    for r in &rows {
        table.add_row([
            r.start.to_owned(),
            r.method.to_owned(),
            r.placed_s.map_or_else(
                || format!("> {}", config.timeout.as_secs_f64()),
                |s| format!("{s:.1}"),
            ),
            format!("{:.0}%", r.hot_on_fast * 100.0),
            format!("{:.0}%", r.cold_on_slow * 100.0),
            format!("{:.1}", r.bytes_moved as f64 / (1u64 << 20) as f64),
            format!("{:.3}", r.moving_cpu_s),
            format!("{:.3}", r.tracking_cpu_s),
            format!("{:.3}", r.kdamond_cpu_s),
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::options::testing;
    use super::*;

    fn parse(args: &[&str]) -> TierBenchArgs {
        testing::parse(args)
    }

    #[test]
    fn sizes_and_times_are_checked_first() {
        for (args, want) in [
            (&["--hot", "1M"][..], "--hot must be a size of at least 2M"),
            (&["--cold", "10%"], "--cold must be a size of at least 2M"),
            (
                &["--interval", "0"],
                "--interval and --timeout must be positive numbers of seconds",
            ),
            (
                &["--timeout", "inf"],
                "--interval and --timeout must be positive numbers of seconds",
            ),
            (
                &["--interval", "NaN"],
                "--interval and --timeout must be positive numbers of seconds",
            ),
        ] {
            match parse(args).validate() {
                Ok(_) => panic!("{args:?} accepted"),
                Err(e) => assert_eq!(format!("{e:#}"), want, "{args:?}"),
            }
        }
        let Ok(TierBench::Workload { node, hot, cold }) =
            parse(&["--workload", "1", "--hot", "4M"]).validate()
        else {
            panic!("the workload's arguments were refused");
        };
        assert_eq!((node, hot, cold), (1, 4 << 20, 160 << 20));
    }

    #[test]
    fn tiers_default_to_a_memory_only_or_the_farthest_node() {
        let mut host = Host::fake(3, 1);
        host.topo.nodes[0].distances.insert(2, 30);
        assert_eq!(tiers(&host.topo, &parse(&[])).unwrap(), (0, 2));
        host.topo.nodes[1].cpus = pagemig::topology::CpuSet::new();
        assert_eq!(tiers(&host.topo, &parse(&[])).unwrap(), (0, 1));
        let e = tiers(&host.topo, &parse(&["--fast", "2", "--slow", "2"])).unwrap_err();
        assert_eq!(e.to_string(), "--fast and --slow are the same node 2");
        let e = tiers(&Host::fake(1, 1).topo, &parse(&[])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bench tier needs two nodes with memory"),
            "{e}"
        );
    }
}
