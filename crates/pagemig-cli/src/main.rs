//! The `pagemig` command: topology, copy benchmarks, and (in later versions) migration.

mod bench;
mod machine;
mod topo;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Bench(bench::BenchCommand),
}

fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Topo(args) => topo::run(&args, out),
        Command::Bench(cmd) => bench::run(cmd, out),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = run(cli, &mut out).and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A table piped into `head`: the reader is gone, nothing went wrong.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
