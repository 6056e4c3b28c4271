//! Command-line arguments and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train on history, with the same features the scorer computes live.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every event through the offline and the online engine and compare the vectors bit for bit.
    Parity(crate::parity::ParityArgs),
}

/// Run the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parity(args) => crate::parity::run(args),
    }
}
