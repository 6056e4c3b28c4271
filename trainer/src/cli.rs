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
    /// Compute features over history, fit a model, evaluate it and publish a versioned bundle.
    Fit(crate::fit::FitArgs),
    /// Write the exact matrix a model trains on (event time, split, label, inputs) as CSV.
    ExportFeatures(crate::export::ExportArgs),
    /// List every published version (`--verify`: and load each as the scorer would).
    List(crate::registry::ListArgs),
    /// Show a version's manifest, once its bundle loads as the scorer would: name, name@version
    /// or name@alias.
    Show(crate::registry::ShowArgs),
    /// Point an alias (champion, challenger, ...) at a version that loads: promotion and rollback.
    Promote(crate::registry::PromoteArgs),
}

/// Run the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parity(args) => crate::parity::run(args),
        Command::Fit(args) => crate::fit::run(args),
        Command::ExportFeatures(args) => crate::export::run(args),
        Command::List(args) => crate::registry::list(args),
        Command::Show(args) => crate::registry::show(args),
        Command::Promote(args) => crate::registry::promote(args),
    }
}
