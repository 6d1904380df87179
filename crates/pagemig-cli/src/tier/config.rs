//! `pagemig tier`'s settings: the flags, a TOML file with the same names, and the merged result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pagemig::Threads;
use pagemig::account::ChargeTo;
use pagemig::process::Process;
use pagemig::tier::Size;
use pagemig::tier::damon::DamonAttrs;
use pagemig::tier::decide::Policy;
use pagemig::topology::NodeSet;
use serde::Deserialize;

/// Arguments of `pagemig tier`. Every one may also come from `--config FILE` (the flag wins).
#[derive(Debug, Default, clap::Args)]
pub struct TierArgs {
    /// Processes to tier: pids, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_parser = parse_pid)]
    pub pid: Vec<u32>,
    /// Processes to tier by command name (`/proc/PID/comm`), found at start; repeatable.
    #[arg(long)]
    pub comm: Vec<String>,
    /// Nodes of the fast tier (numactl list syntax: 0-1).
    #[arg(long, value_name = "NODES")]
    pub fast: Option<NodeSet>,
    /// Nodes of the slow tier.
    #[arg(long, value_name = "NODES")]
    pub slow: Option<NodeSet>,
    /// Most memory of these processes on the fast nodes: a size (64M, 2G) or a percentage of
    /// the fast nodes' memory [default: what fits above --free-margin].
    #[arg(long, value_name = "SIZE|PCT")]
    pub fast_budget: Option<Size>,
    /// Memory to keep free on the fast nodes: a size or a percentage of their memory [default: 5%].
    #[arg(long, value_name = "SIZE|PCT")]
    pub free_margin: Option<Size>,
    /// Seconds between decisions [default: 1].
    #[arg(long, value_name = "S")]
    pub interval: Option<f64>,
    /// Stop after this many seconds [default: run until SIGINT or SIGTERM].
    #[arg(long, value_name = "S", conflicts_with = "once")]
    pub duration: Option<f64>,
    /// Track until the first decision can be made, make it, and exit.
    #[arg(long)]
    pub once: bool,
    /// Longest time any one kernel call may stall a process, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_stall: Option<f64>,
    /// Most megabytes (10^6 bytes) moved per second [default: no limit].
    #[arg(long, value_name = "MB/s")]
    pub rate: Option<f64>,
    /// Who pays for the CPU time of the moves: caller or target [default: caller].
    #[arg(long)]
    pub charge: Option<ChargeTo>,
    /// Threads calling move_pages: auto or a number [default: auto].
    #[arg(long)]
    pub threads: Option<Threads>,
    /// Pages per move_pages call [default: 4096].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Decide and log, move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics on this address (127.0.0.1:9464), at /metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Append one JSON line per decision to this file.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Read settings from this TOML file (keys as the flags: fast-budget = "2G").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Heat at or above which memory is promoted (0 to 1) [default: 0.05].
    #[arg(long)]
    pub hot: Option<f64>,
    /// Heat at or below which memory is demoted when the fast tier needs room [default: 0.01].
    #[arg(long)]
    pub cold: Option<f64>,
    /// Weight of the past in the heat, per interval (0 to 1) [default: 0.5].
    #[arg(long)]
    pub decay: Option<f64>,
    /// Bytes per region of heat and of moves [default: 2M].
    #[arg(long, value_name = "SIZE")]
    pub granularity: Option<Size>,
    /// DAMON's sampling interval in milliseconds [default: 5].
    #[arg(long, value_name = "MS")]
    pub sample: Option<f64>,
    /// DAMON's aggregation interval in milliseconds [default: 100].
    #[arg(long, value_name = "MS")]
    pub aggregate: Option<f64>,
    /// Where the agent records what it set up in DAMON, so that a start after a kill cleans
    /// it [default: /run/pagemig].
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

/// The TOML file: the flags' names and meanings.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    pid: Option<Vec<u32>>,
    comm: Option<Vec<String>>,
    fast: Option<String>,
    slow: Option<String>,
    fast_budget: Option<Size>,
    free_margin: Option<Size>,
    interval: Option<f64>,
    duration: Option<f64>,
    once: Option<bool>,
    max_stall: Option<f64>,
    rate: Option<f64>,
    charge: Option<String>,
    threads: Option<String>,
    batch: Option<usize>,
    dry_run: Option<bool>,
    metrics: Option<String>,
    log: Option<PathBuf>,
    hot: Option<f64>,
    cold: Option<f64>,
    decay: Option<f64>,
    granularity: Option<Size>,
    sample: Option<f64>,
    aggregate: Option<f64>,
    runtime_dir: Option<PathBuf>,
}

/// Settings after the file and the flags are merged and checked.
#[derive(Debug)]
pub struct Settings {
    pub pids: Vec<u32>,
    pub fast: NodeSet,
    pub slow: NodeSet,
    pub fast_budget: Option<Size>,
    pub free_margin: Size,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub once: bool,
    pub max_stall: Option<Duration>,
    pub rate: Option<u64>,
    pub charge: ChargeTo,
    pub threads: Threads,
    pub batch: usize,
    pub dry_run: bool,
    pub metrics: Option<String>,
    pub log: Option<PathBuf>,
    pub policy: Policy,
    pub granularity: usize,
    pub damon: DamonAttrs,
    pub runtime_dir: PathBuf,
    pub damon_admin: PathBuf,
}

fn parse<T: std::str::FromStr>(key: &str, text: Option<String>) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    text.map(|t| {
        t.parse::<T>()
            .map_err(|e| anyhow::anyhow!("{key} = {t:?}: {e}"))
    })
    .transpose()
}

/// A process id on the command line: a positive number (`tier` moves other processes' memory,
/// so `migrate`'s `self` is not one).
fn parse_pid(text: &str) -> Result<u32, String> {
    match text.parse::<Process>() {
        Ok(Process::Pid(p)) => Ok(p),
        Ok(Process::Current) => {
            Err("tier watches other processes: expected a pid, not self".into())
        }
        Err(_) => Err("expected a process id (a positive number)".into()),
    }
}

fn positive(name: &str, v: Option<f64>) -> anyhow::Result<Option<f64>> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => bail!("{name} {x}: must be a positive number"),
        other => Ok(other),
    }
}

/// `v` milliseconds, as [`seconds`].
fn ms(name: &str, v: f64) -> anyhow::Result<Duration> {
    duration(name, v, 1e3)
}

/// `v` seconds, or an error naming `name` where no `Duration` holds it (`1e300`), or no clock
/// time that far from now exists (`1e19`: the deadline `now + v` would overflow).
fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    duration(name, v, 1.0)
}

/// `v` units of which `per_second` make a second, checked as [`seconds`] says.
fn duration(name: &str, v: f64, per_second: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v / per_second)
        .ok()
        .filter(|&d| Instant::now().checked_add(d).is_some())
        .ok_or_else(|| anyhow::anyhow!("{name} {v:e}: too large"))
}

/// Pids of the processes whose command name is `comm`.
fn pids_by_comm(comm: &str) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == comm)
        {
            out.push(pid);
        }
    }
    if out.is_empty() {
        bail!("--comm {comm}: no process has this command name");
    }
    Ok(out)
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

impl TierArgs {
    /// The flags over the config file over the defaults, checked.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => File::default(),
        };
        let fast = self
            .fast
            .clone()
            .or(parse("fast", file.fast)?)
            .context("--fast NODES is required (the nodes of the fast tier)")?;
        let slow = self
            .slow
            .clone()
            .or(parse("slow", file.slow)?)
            .context("--slow NODES is required (the nodes of the slow tier)")?;
        let mut pids = if self.pid.is_empty() {
            file.pid.unwrap_or_default()
        } else {
            self.pid.clone()
        };
        let comms = if self.comm.is_empty() {
            file.comm.unwrap_or_default()
        } else {
            self.comm.clone()
        };
        for c in &comms {
            pids.extend(pids_by_comm(c)?);
        }
        if let Some(p) = pids.iter().find(|&&p| p == 0 || p > i32::MAX as u32) {
            bail!("bad pid {p}: expected a positive process id");
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            bail!("no process to tier: give --pid PID[,PID…] or --comm NAME");
        }
        let interval = positive("--interval", self.interval.or(file.interval))?.unwrap_or(1.0);
        let duration = positive("--duration", self.duration.or(file.duration))?;
        let once = self.once || file.once.unwrap_or(false);
        if once && duration.is_some() {
            bail!("--once and --duration cannot be used together");
        }
        let max_stall = positive("--max-stall", self.max_stall.or(file.max_stall))?;
        let rate = positive("--rate", self.rate.or(file.rate))?;
        let batch = self.batch.or(file.batch).unwrap_or(4096);
        if batch == 0 {
            bail!("--batch must be at least one page");
        }
        let defaults = Policy::default();
        let policy = Policy {
            hot: self.hot.or(file.hot).unwrap_or(defaults.hot),
            cold: self.cold.or(file.cold).unwrap_or(defaults.cold),
            decay: self.decay.or(file.decay).unwrap_or(defaults.decay),
            ..defaults
        };
        let granularity = match self.granularity.or(file.granularity) {
            None => 2 << 20,
            Some(Size::Bytes(b)) => usize::try_from(b).context("--granularity is too large")?,
            Some(Size::Percent(_)) => bail!("--granularity must be a size (2M), not a percentage"),
        };
        let damon_defaults = DamonAttrs::default();
        let sample = positive("--sample", self.sample.or(file.sample))?
            .map_or(Ok(damon_defaults.sample), |v| ms("--sample", v))?;
        let aggr = positive("--aggregate", self.aggregate.or(file.aggregate))?
            .map_or(Ok(damon_defaults.aggr), |v| ms("--aggregate", v))?;
        Ok(Settings {
            pids,
            fast,
            slow,
            fast_budget: self.fast_budget.or(file.fast_budget),
            free_margin: self
                .free_margin
                .or(file.free_margin)
                .unwrap_or(Size::Percent(5.0)),
            interval: seconds("--interval", interval)?,
            duration: duration.map(|d| seconds("--duration", d)).transpose()?,
            once,
            max_stall: max_stall.map(|m| ms("--max-stall", m)).transpose()?,
            rate: rate.map(|r| (r * 1e6) as u64),
            charge: self
                .charge
                .or(parse("charge", file.charge)?)
                .unwrap_or_default(),
            threads: self
                .threads
                .or(parse("threads", file.threads)?)
                .unwrap_or(Threads::Auto),
            batch,
            dry_run: self.dry_run || file.dry_run.unwrap_or(false),
            metrics: self.metrics.clone().or(file.metrics),
            log: self.log.clone().or(file.log),
            policy,
            granularity,
            damon: DamonAttrs {
                sample,
                aggr,
                ..damon_defaults
            },
            runtime_dir: self
                .runtime_dir
                .clone()
                .or(file.runtime_dir)
                .unwrap_or_else(|| PathBuf::from("/run/pagemig")),
            damon_admin: PathBuf::from(pagemig::tier::damon::ADMIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn the_file_mirrors_the_flags_and_flags_win() {
        let f = write(
            "pid = [11, 12]\nfast = \"0\"\nslow = \"2\"\nfast-budget = \"64M\"\nrate = 200\n\
             max-stall = 5\ncharge = \"target\"\ndry-run = true\ninterval = 0.5\nhot = 0.2\n",
        );
        let args = TierArgs {
            config: Some(f.path().to_owned()),
            rate: Some(50.0),
            ..TierArgs::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.pids, vec![11, 12]);
        assert_eq!(s.fast, "0".parse().unwrap());
        assert_eq!(s.fast_budget, Some(Size::Bytes(64 << 20)));
        assert_eq!(s.rate, Some(50_000_000), "the flag wins over the file");
        assert_eq!(s.max_stall, Some(Duration::from_millis(5)));
        assert_eq!(s.charge, ChargeTo::Target);
        assert!(s.dry_run);
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.policy.hot, 0.2);
        assert_eq!(s.free_margin, Size::Percent(5.0));
    }

    #[test]
    fn pids_on_the_command_line_are_positive_numbers() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("self").unwrap_err().contains("not self"));
        for bad in ["0", "-1", "x", "4294967295"] {
            assert!(
                parse_pid(bad).unwrap_err().contains("positive number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_shipped_config_files_parse() {
        let file: File = toml::from_str(include_str!("../../../../deploy/tier.toml")).unwrap();
        assert_eq!(file.fast_budget, Some(Size::Percent(75.0)));
        let k8s = include_str!("../../../../deploy/kubernetes/pagemig-tier.yaml");
        let (_, rest) = k8s.split_once("tier.toml: |\n").unwrap();
        let embedded: String = rest
            .lines()
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let file: File = toml::from_str(&embedded).unwrap();
        assert_eq!(file.metrics.as_deref(), Some("0.0.0.0:9464"));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let f = write("fast = \"0\"\nslow = \"1\"\npid = [1]\nfast-budgt = \"1G\"\n");
        let args = TierArgs {
            config: Some(f.path().to_owned()),
            ..TierArgs::default()
        };
        let e = format!("{:#}", args.settings().unwrap_err());
        assert!(e.contains("unknown field `fast-budgt`"), "{e}");
        let f = write("fast = \"0-x\"\nslow = \"1\"\npid = [1]\n");
        let args = TierArgs {
            config: Some(f.path().to_owned()),
            ..TierArgs::default()
        };
        let e = format!("{:#}", args.settings().unwrap_err());
        assert!(e.contains("fast = \"0-x\""), "{e}");
        let f = write("fast = \"0\"\nslow = \"1\"\npid = [1]\nfast-budget = \"lots\"\n");
        let args = TierArgs {
            config: Some(f.path().to_owned()),
            ..TierArgs::default()
        };
        let e = format!("{:#}", args.settings().unwrap_err());
        assert!(e.contains("bad size \"lots\""), "{e}");
    }
}
