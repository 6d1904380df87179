//! The `pagemig` command: topology, benchmarks, calibration and migration.
//!
//! As ripgrep does, arguments go through two stages: what clap parsed (each command's `…Args`),
//! then a configuration checked against the machine with every default resolved (`validate`),
//! so that a bad argument is refused with its name before anything is measured or moved.

mod bench;
mod calibrate;
mod machine;
mod migrate;
mod model;
mod progress;
mod stat;
mod tier;
mod topo;
mod values;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pagemig::migrate::in_cgroup;

use machine::Host;

/// Move memory between NUMA nodes and memory tiers, fast.
#[derive(Debug, Parser)]
#[command(name = "pagemig", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show NUMA nodes, CPUs, L3 cache domains, distances and memory tiers.
    Topo(topo::TopoArgs),
    /// Measure copy engines and migration paths; print the kernel work's tables.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Move the pages of running processes to a node (selective, parallel migratepages).
    Migrate(migrate::MigrateArgs),
    /// Show where a process's memory is, per node and mapping (like numastat -p).
    Stat(stat::StatArgs),
    /// Measure copy engines and move_pages on this machine; save the cost model the planner uses.
    Calibrate(calibrate::CalibrateArgs),
    /// Keep processes' hot memory on fast nodes and cold memory on slow ones (DAMON-tracked).
    Tier(Box<tier::TierArgs>),
}

/// `pagemig bench …`
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Copy engines alone: vanilla page-by-page copy against batched engines and worker pools.
    Copy(bench::copy::CopyArgs),
    /// Real migrations between two nodes: vanilla move_pages against mt_N threads.
    Migrate(bench::migrate::MigrateBenchArgs),
    /// Tiering: pagemig tier against DAMON's own migrate_hot/migrate_cold on one workload.
    Tier(bench::tier::TierBenchArgs),
}

/// Exit status when some requested pages did not move (errors exit with 2).
const EXIT_INCOMPLETE: u8 = 1;

fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topo(args) => topo::run(&args.validate()?, out)?,
        Command::Bench(BenchCommand::Copy(args)) => {
            bench::copy::run(&args.validate(Host::detect()?)?, out)?;
        }
        Command::Bench(BenchCommand::Migrate(args)) => {
            bench::migrate::run(&args.validate(Host::detect()?)?, out)?;
        }
        Command::Bench(BenchCommand::Tier(args)) => bench::tier::run(&args.validate()?, out)?,
        Command::Migrate(args) => {
            if let migrate::Outcome::Incomplete = migrate::run(&args, out)? {
                return Ok(ExitCode::from(EXIT_INCOMPLETE));
            }
        }
        Command::Stat(args) => stat::run(&args.validate()?, out)?,
        Command::Calibrate(args) => calibrate::run(&args.validate(Host::detect()?)?, out)?,
        Command::Tier(args) => tier::run(&args, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, `: `-separated as anyhow's `{:#}`, leaving out a cause that the
/// error it causes already says: several library errors say their cause in their own text, as
/// `…: {source}` or `{source} while …`. Text that merely contains the cause's (a path, a
/// number) does not count.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut outer: Option<String> = None;
    for cause in e.chain().map(ToString::to_string) {
        let said = outer.as_deref().is_some_and(|o| {
            o == cause
                || o.strip_suffix(cause.as_str())
                    .is_some_and(|head| head.ends_with(": "))
                || o.strip_prefix(cause.as_str())
                    .is_some_and(|tail| tail.starts_with(' '))
        });
        if !said {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
        outer = Some(cause);
    }
    text
}

/// Whether the error is a write to a closed pipe, from a table, JSON or CSV writer.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(io::ErrorKind::BrokenPipe);
    e.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().map(io::Error::kind) == pipe
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
            || cause.downcast_ref::<csv::Error>().is_some_and(
                |c| matches!(c.kind(), csv::ErrorKind::Io(io) if Some(io.kind()) == pipe),
            )
    })
}

fn main() -> ExitCode {
    // `migrate --charge target` runs this program again, inside the target's cgroup.
    if std::env::var_os(in_cgroup::HELPER_ENV).is_some() {
        return match in_cgroup::serve(io::stdin().lock(), io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pagemig migration helper: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = run(cli, &mut out).and_then(|code| out.flush().map(|()| code).map_err(Into::into));
    match result {
        Ok(code) => code,
        // Output piped into `head`: the reader is gone, nothing went wrong.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use pagemig::migrate::MigrateError;
    use pagemig::tier::TierError;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = anyhow::Error::from(TierError::BadNode {
            tier: "slow",
            source: MigrateError::NoSuchNode {
                node: 1,
                online: pagemig::topology::NodeSet::from_iter([0]),
            },
        })
        .context("starting pagemig tier");
        let text = super::message(&e);
        assert_eq!(text.matches("node 1 does not exist").count(), 1, "{text}");
        assert!(
            text.starts_with("starting pagemig tier: slow tier: node 1"),
            "{text}"
        );
        let io = anyhow::Error::from(std::io::Error::other("disk on fire")).context("writing x");
        assert_eq!(super::message(&io), "writing x: disk on fire");
        // A cause said first: `{source} while moving …`.
        let e = anyhow::Error::from(pagemig::migrate::remap::RemapError::Failed {
            start: 0x1000,
            end: 0x3000,
            moved_until: 0x2000,
            source: pagemig::sys::SysError {
                call: "mremap",
                errno: pagemig::sys::Errno::PERM,
            },
        })
        .context("moving");
        let text = super::message(&e);
        assert_eq!(text.matches("mremap failed").count(), 1, "{text}");
        assert!(text.ends_with("the others where they were"), "{text}");
    }

    #[test]
    fn a_cause_that_only_happens_to_be_in_the_message_is_kept() {
        // The io error's text is part of the path, not the message's own account of the cause.
        let e = anyhow::Error::from(std::io::Error::other("denied"))
            .context("--log /srv/denied/tier.jsonl: cannot open it");
        assert_eq!(
            super::message(&e),
            "--log /srv/denied/tier.jsonl: cannot open it: denied"
        );
        let e = anyhow::Error::from(std::io::Error::other("1")).context("reading node 1");
        assert_eq!(super::message(&e), "reading node 1: 1");
    }
}
