//! `cargo xtask test`: everything CI checks, in the order a developer wants to see failures;
//! `cargo xtask guest-test`: real migration between nodes inside QEMU guests.

mod guest;

use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "pagemig project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Format check, clippy with -D warnings, every test of the workspace (all features), then
    /// the guest tests.
    Test,
    /// Boot QEMU guests with several NUMA shapes and run the guest tests in each (installs QEMU
    /// with apt and downloads a kernel into target/guest when missing).
    GuestTest {
        /// Only the shapes whose name contains this (2-nodes, 4-nodes, memory-only, balancing).
        #[arg(long)]
        shape: Option<String>,
        /// Arguments for the test binary (a test name filter, --nocapture).
        args: Vec<String>,
    },
}

/// Runs `cargo ARGS`, failing with the command line if it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut command = Command::new(env!("CARGO"));
    if args.first() == Some(&"doc") {
        // The documentation fails on a warning (a broken link, an item without docs).
        command.env("RUSTDOCFLAGS", "-D warnings");
    }
    let status = command
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Test => {
            cargo(&["fmt", "--all", "--check"])?;
            // Every feature: the DMA backends (dsa, cuda) build everywhere and their tests say
            // why they skip where the hardware is missing.
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["doc", "--workspace", "--all-features", "--no-deps"])?;
            // Host tests, doctests included.
            cargo(&["test", "--workspace", "--all-features"])?;
            guest::test(None, &[])?;
        }
        Cmd::GuestTest { shape, args } => guest::test(shape.as_deref(), &args)?,
    }
    Ok(())
}
