//! DAMON, the kernel's data access monitor, driven through its sysfs interface
//! (`/sys/kernel/mm/damon/admin`, Documentation/admin-guide/mm/damon/usage.rst).
//!
//! [`Damon::start`] adds one kdamond per process (a kdamond's tried regions do not say which
//! target they belong to), each with one `vaddr` context, one target and a `stat` scheme on every
//! region; [`Damon::sample`] reads back each region's range, access frequency and age. Dropping
//! it (or [`Damon::stop`]) turns the kdamonds off and restores `nr_kdamonds`.
//!
//! What is ours is recorded, never guessed: before a kdamond is turned on, a record (agent pid
//! and start time, kdamond indices, targets, thread pids once known) goes to a runtime directory,
//! so that a later start turns off exactly what a killed agent left running ([`clean_stale`]).

use std::fs;
use std::io::{self, ErrorKind};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{AccessSample, TierError};
use crate::topology::{NodeId, numbered_entries};

/// The sysfs directory of DAMON's administration interface on a running kernel.
pub const ADMIN: &str = "/sys/kernel/mm/damon/admin";

/// Name of the record file in the runtime directory.
const RECORD: &str = "damon.json";

/// DAMON's monitoring attributes (`monitoring_attrs/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamonAttrs {
    /// Sampling interval: how often one page per region is checked for access.
    pub sample: Duration,
    /// Aggregation interval: access counts are per this interval (at most `aggr / sample`).
    pub aggr: Duration,
    /// How often DAMON updates the monitored regions from the process's mappings.
    pub update: Duration,
    /// Fewest regions DAMON keeps per process.
    pub min_regions: u64,
    /// Most regions DAMON splits a process into.
    pub max_regions: u64,
}

impl Default for DamonAttrs {
    /// DAMON's own defaults: 5 ms sampling, 100 ms aggregation, 1 s update, 10 to 1000 regions.
    fn default() -> Self {
        DamonAttrs {
            sample: Duration::from_millis(5),
            aggr: Duration::from_millis(100),
            update: Duration::from_secs(1),
            min_regions: 10,
            max_regions: 1000,
        }
    }
}

impl DamonAttrs {
    /// The most accesses a region can show in one aggregation interval.
    pub fn max_accesses(&self) -> u64 {
        (self.aggr.as_micros() / self.sample.as_micros().max(1)).max(1) as u64
    }
}

/// What a DAMOS scheme does with the regions it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the regions are only counted and listed (what [`Damon::sample`] reads).
    Stat,
    /// The kernel migrates the regions' pages to the node, hottest first (`migrate_hot`,
    /// Linux 6.11 and later).
    MigrateHot(NodeId),
    /// The kernel migrates the regions' pages to the node, coldest first (`migrate_cold`,
    /// Linux 6.11 and later).
    MigrateCold(NodeId),
}

/// A DAMOS scheme: an action on the regions whose access count per aggregation interval and
/// age (in aggregation intervals) are in these ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    /// What to do.
    pub action: Action,
    /// Accesses per aggregation interval.
    pub accesses: RangeInclusive<u32>,
    /// Age in aggregation intervals.
    pub age: RangeInclusive<u32>,
    /// Act on anonymous pages only (a DAMOS `anon` filter that drops the others). Physical-address
    /// schemes otherwise also move the page cache and tmpfs files of every process on the node.
    pub anon_only: bool,
}

/// One kdamond this agent added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Kdamond {
    /// Its directory under `kdamonds/`.
    index: usize,
    /// The monitored process.
    target: u32,
    /// The kdamond thread's pid, once it runs.
    thread: Option<u32>,
}

/// What the runtime directory records about the kdamonds of a running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The agent's pid.
    agent: u32,
    /// The agent's start time (field 22 of `/proc/PID/stat`), so a reused pid is not taken for it.
    agent_start: u64,
    /// `nr_kdamonds` before the agent added its own.
    base: usize,
    /// The kdamonds it added, at `base`, `base + 1`, ….
    kdamonds: Vec<Kdamond>,
}

/// What a start found and cleaned from an agent that did not stop cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cleaned {
    /// The earlier agent's pid.
    pub agent: u32,
    /// kdamond directories it had added.
    pub kdamonds: Vec<usize>,
    /// Those of them that were still running and were turned off.
    pub turned_off: Vec<usize>,
}

/// kdamonds tracking processes for this agent; turned off and removed on drop.
#[derive(Debug)]
pub struct Damon {
    kdamonds_dir: PathBuf,
    record_path: PathBuf,
    record: Record,
    attrs: DamonAttrs,
    /// Per kdamond: physical ranges to monitor (`paddr`; empty: the process, `vaddr`) and its
    /// schemes.
    specs: Vec<(Vec<Range<u64>>, Vec<Scheme>)>,
    stopped: bool,
}

fn sysfs_error(path: &Path, op: &'static str, source: io::Error) -> TierError {
    if source.kind() == ErrorKind::PermissionDenied {
        TierError::DamonPermission(path.to_owned())
    } else {
        TierError::Damon {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// How long a DAMON file answering `EBUSY` is retried.
const BUSY_FOR: Duration = Duration::from_secs(2);

/// `op`, retried while it fails with `EBUSY` for up to [`BUSY_FOR`]. DAMON's sysfs files only
/// try to take the interface's one lock (`mutex_trylock(&damon_sysfs_lock)` in
/// mm/damon/sysfs.c) and answer `EBUSY` while anyone holds it for a moment: another file's
/// access, a command being handed to a kdamond, a kdamond stopping.
fn unless_busy<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let start = Instant::now();
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < BUSY_FOR => {
                std::thread::sleep(Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

fn read(path: &Path) -> Result<String, TierError> {
    unless_busy(|| fs::read_to_string(path))
        .map(|s| s.trim().to_owned())
        .map_err(|e| sysfs_error(path, "reading", e))
}

fn read_u64(path: &Path) -> Result<u64, TierError> {
    let text = read(path)?;
    text.parse().map_err(|_| TierError::Damon {
        path: path.to_owned(),
        op: "parsing",
        source: io::Error::new(ErrorKind::InvalidData, format!("{text:?} is not a number")),
    })
}

fn write(path: &Path, value: impl std::fmt::Display) -> Result<(), TierError> {
    let value = value.to_string();
    unless_busy(|| fs::write(path, &value)).map_err(|e| sysfs_error(path, "writing", e))
}

fn runtime_error(path: &Path) -> impl FnOnce(io::Error) -> TierError + '_ {
    |source| TierError::Runtime {
        path: path.to_owned(),
        source,
    }
}

/// The errno of a DAMON file's answer, when `e` is one.
fn errno(e: &TierError) -> Option<i32> {
    match e {
        TierError::Damon { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Writes `command` to the `state` file of the kdamond in `dir`; `false` when the kernel
/// refuses it (`EINVAL`, `EPERM`) because the kdamond has stopped: one turned `off` then is
/// where it should be.
fn command(dir: &Path, command: &str) -> Result<bool, TierError> {
    match write(&dir.join("state"), command) {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(libc::EINVAL | libc::EPERM)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Numeric fields `ns` (numbered from 1 as in proc(5), each after the command, so 3 or more) of
/// one read of `/proc/PID/stat`, or `None` when the process does not exist.
fn stat_fields<const N: usize>(pid: u32, ns: [usize; N]) -> Option<[u64; N]> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut out = [0; N];
    for (value, n) in out.iter_mut().zip(ns) {
        *value = fields.get(n - 3)?.parse().ok()?;
    }
    Some(out)
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid, [22]).map(|[start]| start)
}

/// The physical address ranges of a node's memory, from its memory blocks
/// (`SYSFS/devices/system/node/nodeN/memoryM`, `SYSFS/devices/system/memory/block_size_bytes`),
/// adjacent blocks merged.
pub fn node_ranges(sysfs: &Path, node: NodeId) -> Result<Vec<Range<u64>>, TierError> {
    let size_path = sysfs.join("devices/system/memory/block_size_bytes");
    let text = read(&size_path)?;
    let block =
        u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| TierError::Damon {
            path: size_path.clone(),
            op: "parsing",
            source: io::Error::new(ErrorKind::InvalidData, format!("{text:?} is not hex")),
        })?;
    let dir = sysfs.join(format!("devices/system/node/node{node}"));
    let entries = fs::read_dir(&dir).map_err(|e| sysfs_error(&dir, "listing", e))?;
    let mut out: Vec<Range<u64>> = Vec::new();
    for b in numbered_entries::<u64>(entries, "memory") {
        let r = b * block..(b + 1) * block;
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// Whether DAMON can be driven from `admin`: its `kdamonds/nr_kdamonds` file exists.
pub fn probe(admin: &Path) -> Result<(), TierError> {
    if !admin.join("kdamonds/nr_kdamonds").exists() {
        return Err(TierError::DamonMissing(admin.to_owned()));
    }
    Ok(())
}

/// The kdamond at `index`: whether it runs, and its thread's pid.
fn kdamond_state(kdamonds: &Path, index: usize) -> Result<(bool, Option<u32>), TierError> {
    let dir = kdamonds.join(index.to_string());
    let on = read(&dir.join("state"))? == "on";
    let pid = read(&dir.join("pid"))
        .ok()
        .and_then(|p| p.parse::<i64>().ok())
        .filter(|&p| p > 0)
        .map(|p| p as u32);
    Ok((on, pid))
}

/// Finds the record a killed agent left in `runtime_dir` and cleans what it names: turns off
/// its kdamonds that still run for the recorded targets and restores `nr_kdamonds`. Refuses when
/// the recorded agent is still alive.
pub fn clean_stale(admin: &Path, runtime_dir: &Path) -> Result<Option<Cleaned>, TierError> {
    let path = runtime_dir.join(RECORD);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(runtime_error(&path)(e)),
    };
    let record: Record = serde_json::from_str(&text)
        .map_err(|e| runtime_error(&path)(io::Error::new(ErrorKind::InvalidData, e)))?;
    if record.agent != std::process::id() && start_time(record.agent) == Some(record.agent_start) {
        return Err(TierError::AgentRunning {
            pid: record.agent,
            runtime_dir: runtime_dir.to_owned(),
        });
    }
    let kdamonds = admin.join("kdamonds");
    let mut turned_off = Vec::new();
    let mut foreign = false;
    for k in &record.kdamonds {
        let dir = kdamonds.join(k.index.to_string());
        if !dir.exists() {
            continue;
        }
        let (on, thread) = kdamond_state(&kdamonds, k.index)?;
        let target = read(&dir.join("contexts/0/targets/0/pid_target"))
            .ok()
            .and_then(|p| p.parse::<u32>().ok());
        // Ours by the record: the same kdamond thread, or (killed before it was recorded) the
        // same target process.
        let ours = match k.thread {
            Some(t) => thread == Some(t),
            None => target == Some(k.target),
        };
        if on && ours {
            command(&dir, "off")?;
            turned_off.push(k.index);
        } else if on {
            foreign = true;
        }
    }
    // A recorded directory that another program now runs is not ours to remove.
    if !foreign {
        restore_count(&kdamonds, &record)?;
    }
    fs::remove_file(&path).map_err(runtime_error(&path))?;
    Ok(Some(Cleaned {
        agent: record.agent,
        kdamonds: record.kdamonds.iter().map(|k| k.index).collect(),
        turned_off,
    }))
}

/// Gives `nr_kdamonds` back its value from before the agent's start, where the agent's
/// directories are still the last ones.
fn restore_count(kdamonds: &Path, record: &Record) -> Result<(), TierError> {
    let nr = read_u64(&kdamonds.join("nr_kdamonds"))? as usize;
    if nr == record.base + record.kdamonds.len() {
        write(&kdamonds.join("nr_kdamonds"), record.base)?;
    }
    Ok(())
}

impl Damon {
    /// Cleans what a killed earlier agent left (see [`clean_stale`]), then adds one kdamond per
    /// process of `pids`, each with a `stat` scheme for every region ([`Damon::sample`] reads
    /// them), and turns them on. Refuses, changing nothing, when another program runs a
    /// kdamond (the kernel does not let `nr_kdamonds` change then).
    pub fn start(
        admin: &Path,
        runtime_dir: &Path,
        pids: &[u32],
        attrs: DamonAttrs,
    ) -> Result<(Damon, Option<Cleaned>), TierError> {
        let stat_all = Scheme {
            action: Action::Stat,
            accesses: 0..=u32::MAX,
            age: 0..=u32::MAX,
            anon_only: false,
        };
        Self::start_schemes(admin, runtime_dir, pids, attrs, &[stat_all])
    }

    /// As [`Damon::start`], with these schemes on every kdamond ([`Damon::sample`] reads the
    /// first one's regions).
    pub fn start_schemes(
        admin: &Path,
        runtime_dir: &Path,
        pids: &[u32],
        attrs: DamonAttrs,
        schemes: &[Scheme],
    ) -> Result<(Damon, Option<Cleaned>), TierError> {
        let specs = vec![(Vec::new(), schemes.to_vec()); pids.len()];
        Self::start_inner(admin, runtime_dir, attrs, pids, specs)
    }

    /// kdamonds on physical memory (`paddr` operations), one per entry, each monitoring those
    /// address ranges (see [`node_ranges`]) with those schemes: how the kernel's own tiering
    /// (`migrate_hot`/`migrate_cold`, which Linux 6.11-6.15 offer for `paddr` only) is set up.
    pub fn start_physical(
        admin: &Path,
        runtime_dir: &Path,
        attrs: DamonAttrs,
        kdamonds: &[(Vec<Range<u64>>, Vec<Scheme>)],
    ) -> Result<(Damon, Option<Cleaned>), TierError> {
        let pids = vec![0; kdamonds.len()];
        Self::start_inner(admin, runtime_dir, attrs, &pids, kdamonds.to_vec())
    }

    fn start_inner(
        admin: &Path,
        runtime_dir: &Path,
        attrs: DamonAttrs,
        pids: &[u32],
        specs: Vec<(Vec<Range<u64>>, Vec<Scheme>)>,
    ) -> Result<(Damon, Option<Cleaned>), TierError> {
        probe(admin)?;
        if attrs.sample.is_zero() || attrs.aggr < attrs.sample || attrs.update.is_zero() {
            return Err(TierError::BadDamonAttrs(format!(
                "sampling {:?}, aggregation {:?}, update {:?}: each must be positive and aggregation at least one sample",
                attrs.sample, attrs.aggr, attrs.update
            )));
        }
        if attrs.min_regions < 3 || attrs.max_regions < attrs.min_regions {
            return Err(TierError::BadDamonAttrs(format!(
                "regions {}..{}: DAMON needs at least 3, and the most at least the fewest",
                attrs.min_regions, attrs.max_regions
            )));
        }
        let cleaned = clean_stale(admin, runtime_dir)?;
        let kdamonds_dir = admin.join("kdamonds");
        let base = read_u64(&kdamonds_dir.join("nr_kdamonds"))? as usize;
        for index in 0..base {
            if let (true, pid) = kdamond_state(&kdamonds_dir, index)? {
                return Err(TierError::DamonBusy { index, pid });
            }
        }
        fs::create_dir_all(runtime_dir).map_err(runtime_error(runtime_dir))?;
        let record = Record {
            agent: std::process::id(),
            agent_start: start_time(std::process::id()).unwrap_or(0),
            base,
            kdamonds: pids
                .iter()
                .enumerate()
                .map(|(i, &target)| Kdamond {
                    index: base + i,
                    target,
                    thread: None,
                })
                .collect(),
        };
        let mut damon = Damon {
            kdamonds_dir,
            record_path: runtime_dir.join(RECORD),
            record,
            attrs,
            specs,
            stopped: false,
        };
        // Recorded before the kernel is touched: a kill from here on is cleaned by the next start.
        damon.save()?;
        match write(&damon.kdamonds_dir.join("nr_kdamonds"), base + pids.len()) {
            Err(e) if errno(&e) == Some(libc::EBUSY) => {
                // A kdamond was turned on between our check and the write.
                damon.stopped = true;
                let _ = fs::remove_file(&damon.record_path);
                return Err(TierError::DamonBusy {
                    index: base,
                    pid: None,
                });
            }
            other => other?,
        }
        for i in 0..pids.len() {
            damon.configure(i)?;
        }
        for (i, &pid) in pids.iter().enumerate() {
            write(&damon.kdamond_dir(i).join("state"), "on").map_err(|e| match errno(&e) {
                Some(libc::ESRCH | libc::EINVAL) => TierError::NoSuchProcess(pid),
                _ => e,
            })?;
            let (_, thread) = kdamond_state(&damon.kdamonds_dir, damon.record.kdamonds[i].index)?;
            damon.record.kdamonds[i].thread = thread;
            damon.save()?;
        }
        Ok((damon, cleaned))
    }

    fn kdamond_dir(&self, i: usize) -> PathBuf {
        self.kdamonds_dir
            .join(self.record.kdamonds[i].index.to_string())
    }

    fn save(&self) -> Result<(), TierError> {
        let text = serde_json::to_string(&self.record).expect("a record serialises");
        fs::write(&self.record_path, text).map_err(runtime_error(&self.record_path))
    }

    /// One context with `vaddr` operations, one target and one `stat` scheme for every region.
    fn configure(&self, i: usize) -> Result<(), TierError> {
        let k = &self.record.kdamonds[i];
        let ctx = self.kdamond_dir(i).join("contexts");
        write(&ctx.join("nr_contexts"), 1)?;
        let ctx = ctx.join("0");
        let avail = read(&ctx.join("avail_operations"))?;
        let (ranges, schemes) = &self.specs[i];
        let ops = if ranges.is_empty() { "vaddr" } else { "paddr" };
        if !avail.split_whitespace().any(|o| o == ops) {
            return Err(TierError::DamonNoOperations {
                wanted: ops,
                available: avail,
            });
        }
        write(&ctx.join("operations"), ops)?;
        let attrs = ctx.join("monitoring_attrs");
        let a = self.attrs;
        for (file, interval) in [("sample", a.sample), ("aggr", a.aggr), ("update", a.update)] {
            write(
                &attrs.join(format!("intervals/{file}_us")),
                interval.as_micros(),
            )?;
        }
        // max before min: the kernel checks min <= max on commit, not per file, but keeping the
        // pair ordered at every step costs nothing.
        write(&attrs.join("nr_regions/max"), self.attrs.max_regions)?;
        write(&attrs.join("nr_regions/min"), self.attrs.min_regions)?;
        write(&ctx.join("targets/nr_targets"), 1)?;
        if ranges.is_empty() {
            write(&ctx.join("targets/0/pid_target"), k.target)?;
        } else {
            let regions = ctx.join("targets/0/regions");
            write(&regions.join("nr_regions"), ranges.len())?;
            for (j, r) in ranges.iter().enumerate() {
                write(&regions.join(format!("{j}/start")), r.start)?;
                write(&regions.join(format!("{j}/end")), r.end)?;
            }
        }
        write(&ctx.join("schemes/nr_schemes"), schemes.len())?;
        for (j, scheme) in schemes.iter().enumerate() {
            let dir = ctx.join(format!("schemes/{j}"));
            let (action, node) = match scheme.action {
                Action::Stat => ("stat", None),
                Action::MigrateHot(n) => ("migrate_hot", Some(n)),
                Action::MigrateCold(n) => ("migrate_cold", Some(n)),
            };
            if let Some(node) = node {
                write(&dir.join("target_nid"), node)?;
            }
            write(&dir.join("action"), action).map_err(|e| match errno(&e) {
                Some(libc::EINVAL) => TierError::BadDamonAttrs(format!(
                    "this kernel's DAMON has no {action} action (Linux 6.11+)"
                )),
                _ => e,
            })?;
            let pattern = dir.join("access_pattern");
            write(&pattern.join("sz/min"), 0)?;
            write(&pattern.join("sz/max"), u64::MAX)?;
            write(&pattern.join("nr_accesses/min"), scheme.accesses.start())?;
            write(&pattern.join("nr_accesses/max"), scheme.accesses.end())?;
            write(&pattern.join("age/min"), scheme.age.start())?;
            write(&pattern.join("age/max"), scheme.age.end())?;
            if scheme.anon_only {
                // A filter drops the pages it matches when `matching` is Y; N drops the others.
                let filters = dir.join("filters");
                write(&filters.join("nr_filters"), 1)?;
                write(&filters.join("0/type"), "anon")?;
                write(&filters.join("0/matching"), "N")?;
            }
        }
        Ok(())
    }

    /// The kdamond threads' pids, per monitored process (for their CPU time).
    pub fn threads(&self) -> Vec<(u32, u32)> {
        self.record
            .kdamonds
            .iter()
            .filter_map(|k| k.thread.map(|t| (k.target, t)))
            .collect()
    }

    /// Stops tracking `pid` (it exited): its kdamond is turned off if it still runs.
    pub fn drop_target(&mut self, pid: u32) -> Result<(), TierError> {
        if let Some(i) = self.record.kdamonds.iter().position(|k| k.target == pid) {
            if self.record.kdamonds[i].thread.take().is_some() {
                command(&self.kdamond_dir(i), "off")?;
            }
            self.save()?;
        }
        Ok(())
    }

    /// The regions DAMON tracks for every process whose kdamond runs, with their access
    /// frequency over the last aggregation interval (0 to 1) and age.
    pub fn sample(&mut self) -> Result<Vec<AccessSample>, TierError> {
        let max = self.attrs.max_accesses() as f64;
        let mut out = Vec::new();
        for (i, k) in self.record.kdamonds.iter().enumerate() {
            if k.thread.is_none() {
                continue;
            }
            let dir = self.kdamond_dir(i);
            // A kdamond that stopped meanwhile (its process exited) has nothing to say.
            if !command(&dir, "update_schemes_tried_regions")? {
                continue;
            }
            let tried = dir.join("contexts/0/schemes/0/tried_regions");
            let entries = fs::read_dir(&tried).map_err(|e| sysfs_error(&tried, "listing", e))?;
            for r in numbered_entries::<usize>(entries, "") {
                let rd = tried.join(r.to_string());
                let start = read_u64(&rd.join("start"))? as usize;
                let end = read_u64(&rd.join("end"))? as usize;
                let accesses = read_u64(&rd.join("nr_accesses"))?;
                let age = read_u64(&rd.join("age"))?;
                if end > start {
                    out.push(AccessSample {
                        pid: k.target,
                        start,
                        end,
                        accesses: (accesses as f64 / max).min(1.0),
                        age,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Bytes the schemes' actions were applied to, summed over every kdamond and scheme
    /// (`stats/sz_applied`, refreshed with `update_schemes_stats`).
    pub fn applied_bytes(&self) -> Result<u64, TierError> {
        let mut total = 0;
        for (i, k) in self.record.kdamonds.iter().enumerate() {
            if k.thread.is_none() {
                continue;
            }
            let dir = self.kdamond_dir(i);
            command(&dir, "update_schemes_stats")?;
            for j in 0..self.specs[i].1.len() {
                total += read_u64(&dir.join(format!("contexts/0/schemes/{j}/stats/sz_applied")))?;
            }
        }
        Ok(total)
    }

    /// CPU time of the kdamond threads so far (user and system, from `/proc/PID/stat`).
    pub fn cpu_time(&self) -> Duration {
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        self.threads()
            .iter()
            .filter_map(|&(_, t)| stat_fields(t, [14, 15]))
            .map(|[user, system]| Duration::from_secs_f64((user + system) as f64 / hz))
            .sum()
    }

    /// Turns the kdamonds off, restores `nr_kdamonds` and removes the record.
    pub fn stop(mut self) -> Result<(), TierError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), TierError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut first_error = None;
        // Every kdamond this agent may have turned on: those started, and one being started
        // when an error came.
        for k in &self.record.kdamonds {
            let dir = self.kdamonds_dir.join(k.index.to_string());
            if dir.join("state").exists()
                && let Err(e) = command(&dir, "off")
            {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = restore_count(&self.kdamonds_dir, &self.record) {
            first_error.get_or_insert(e);
        }
        match first_error {
            // The record stays so that the next start tries again.
            Some(e) => Err(e),
            None => fs::remove_file(&self.record_path).map_err(runtime_error(&self.record_path)),
        }
    }
}

impl Drop for Damon {
    fn drop(&mut self) {
        // Errors here have no one to go to; the record stays and the next start cleans up.
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_file_is_asked_again_and_other_errors_are_not() {
        let mut answers = vec![Ok(7), Err(libc::EBUSY), Err(libc::EBUSY)];
        let got = unless_busy(|| answers.pop().unwrap().map_err(io::Error::from_raw_os_error));
        assert_eq!(got.unwrap(), 7);
        let mut asked = 0;
        let got = unless_busy(|| -> io::Result<()> {
            asked += 1;
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        });
        assert_eq!(
            (got.unwrap_err().raw_os_error(), asked),
            (Some(libc::EINVAL), 1)
        );
    }
}
