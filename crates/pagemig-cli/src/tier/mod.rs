//! `pagemig tier`: keep processes' hot memory on the fast nodes and cold memory on the slow
//! ones, tracked by DAMON and moved by the kernel path.

mod config;
mod metrics;

use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pagemig::policy::Resources;
use pagemig::tier::agent::{self, Agent, AgentConfig, IntervalReport};
use pagemig::tier::decide::Direction;
use pagemig::topology::Topology;
use pagemig::{Migrator, Options};
use serde_json::json;

pub use config::TierArgs;

use crate::model::ModelArgs;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Totals over the run, for the closing line.
#[derive(Default)]
struct Totals {
    intervals: u64,
    promoted: u64,
    demoted: u64,
    moves: u64,
    longest_call: Duration,
    moving_cpu: Duration,
    tracking_cpu: Duration,
    kdamond_cpu: Duration,
}

impl Totals {
    fn add(&mut self, r: &IntervalReport) {
        self.intervals += 1;
        for m in &r.moves {
            match m.direction {
                Direction::Promote => self.promoted += m.report.bytes_moved,
                Direction::Demote => self.demoted += m.report.bytes_moved,
            }
            self.moves += 1;
            self.longest_call = self.longest_call.max(m.report.calls.longest);
            self.moving_cpu += m.report.calls.cpu_time;
        }
        self.tracking_cpu += r.tracking_cpu;
        self.kdamond_cpu = r.kdamond_cpu;
    }
}

/// One JSON line per decision (and per dropped process).
fn log_interval(log: &mut dyn Write, r: &IntervalReport, dry_run: bool) -> std::io::Result<()> {
    let t = now();
    for d in &r.decisions {
        let planned = r
            .planned
            .iter()
            .find(|p| p.pid == d.key.pid && p.direction == d.direction);
        let line = json!({
            "time": t,
            "interval": r.interval,
            "pid": d.key.pid,
            "start": format!("{:#x}", d.range.start),
            "end": format!("{:#x}", d.range.end),
            "heat": d.heat,
            "direction": d.direction,
            "from": planned.map(|p| p.from.to_string()),
            "to": planned.map(|p| p.to),
            "bytes": d.bytes,
            "why": d.why,
            "dry_run": dry_run,
        });
        writeln!(log, "{line}")?;
    }
    writeln!(
        log,
        "{}",
        json!({"time": t, "interval": r.interval, "event": "interval", "warming_up": r.warming_up,
               "fast_used": r.fast_used, "fast_limit": r.fast_limit, "decisions": r.decisions.len(),
               "moved": r.moves.iter().map(|m| m.report.bytes_moved).sum::<u64>(),
               "longest_call_ms": r.moves.iter().map(|m| m.report.calls.longest.as_secs_f64() * 1e3).fold(0.0, f64::max)})
    )?;
    for pid in &r.dropped {
        writeln!(
            log,
            "{}",
            json!({"time": t, "interval": r.interval, "event": "process-exited", "pid": pid})
        )?;
    }
    log.flush()
}

/// Sleeps until `until`, or until `stop` is set; says whether it was stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

pub fn run(args: &TierArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = args.settings()?;
    let topo = Topology::detect().context("reading the topology from /sys")?;
    let loaded = ModelArgs { model: None }.load()?;
    let migrator = Migrator::with(topo.clone(), loaded.model, Resources::detect()?);
    let options = Options {
        threads: s.threads,
        batch: Some(s.batch),
        max_stall: s.max_stall,
        charge: s.charge,
        ..Options::default()
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let _server = match &s.metrics {
        Some(addr) => Some(metrics::Server::start(addr, Arc::clone(&metrics))?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the SIGINT/SIGTERM handlers")?;
    }
    let config = AgentConfig {
        pids: s.pids.clone(),
        fast: s.fast.clone(),
        slow: s.slow.clone(),
        fast_budget: s.fast_budget,
        free_margin: s.free_margin,
        interval: s.interval,
        rate: s.rate,
        granularity: s.granularity,
        policy: s.policy,
        damon: s.damon,
        damon_admin: s.damon_admin.clone(),
        runtime_dir: s.runtime_dir.clone(),
        dry_run: s.dry_run,
    };
    let (mut agent, cleaned) = Agent::start(config, &topo).context("starting pagemig tier")?;
    // Said before anything else can fail: the earlier agent's record is gone once it is cleaned.
    if let Some(c) = &cleaned {
        eprintln!(
            "pagemig tier: an earlier agent (pid {}) did not stop cleanly; its kdamonds {:?} were removed ({:?} were still running and were turned off)",
            c.agent, c.kdamonds, c.turned_off
        );
    }
    // Opened once the agent has started, so that a refusal leaves no file behind; an error here
    // drops the agent, which removes its kdamonds.
    let mut log = match &s.log {
        Some(path) => Some(LineWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--log {}: cannot open it", path.display()))?,
        )),
        None => None,
    };
    if let Some(log) = log.as_mut() {
        writeln!(
            log,
            "{}",
            json!({"time": now(), "event": "start", "pids": agent.pids(), "fast": s.fast.to_string(),
                   "slow": s.slow.to_string(), "budget": agent.budget(), "dry_run": s.dry_run,
                   "cleaned": cleaned})
        )?;
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("valid progress template"),
    );
    let started = Instant::now();
    let deadline = s.duration.map(|d| started + d);
    let mover = |request: &agent::MoveRequest| agent::move_through(&migrator, &options, request);
    let mut totals = Totals::default();
    let mut next = started + s.interval;
    let why_stopped = loop {
        let until = deadline.map_or(next, |d| d.min(next));
        if sleep_until(until, &stop) {
            break "stopped by a signal";
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "--duration reached";
        }
        next += s.interval;
        let report = agent.step(&mover)?;
        metrics.record(&report);
        totals.add(&report);
        if let Some(log) = log.as_mut() {
            log_interval(log, &report, s.dry_run).with_context(|| {
                format!(
                    "writing the log {}",
                    s.log
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                )
            })?;
        }
        bar.set_message(format!(
            "interval {}: {} process(es), fast {} of {} allowed, promoted {} demoted {}{}",
            report.interval,
            report.processes,
            mib(report.fast_used),
            if report.fast_limit == u64::MAX {
                "no limit".to_owned()
            } else {
                mib(report.fast_limit)
            },
            mib(totals.promoted),
            mib(totals.demoted),
            if report.warming_up {
                " (warming up)"
            } else {
                ""
            }
        ));
        bar.tick();
        if report.processes == 0 {
            break "every process exited";
        }
        if s.once && !report.warming_up {
            break "--once: one decision made";
        }
    };
    bar.finish_and_clear();
    agent.stop().context("stopping DAMON")?;
    if let Some(log) = log.as_mut() {
        writeln!(
            log,
            "{}",
            json!({"time": now(), "event": "stop", "why": why_stopped})
        )?;
        log.flush()?;
    }
    writeln!(
        out,
        "pagemig tier: {why_stopped} after {} interval(s){}: promoted {}, demoted {} in {} move(s); longest kernel call {:.2} ms; CPU time: moving {:.3} s, tracking {:.3} s, DAMON threads {:.3} s",
        totals.intervals,
        if s.dry_run {
            " (dry run: nothing moved)"
        } else {
            ""
        },
        mib(totals.promoted),
        mib(totals.demoted),
        totals.moves,
        totals.longest_call.as_secs_f64() * 1e3,
        totals.moving_cpu.as_secs_f64(),
        totals.tracking_cpu.as_secs_f64(),
        totals.kdamond_cpu.as_secs_f64(),
    )?;
    Ok(())
}
