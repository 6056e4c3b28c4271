//! `trainer`: the offline half. Computes features over history, checks them against the online
//! engine, fits and evaluates models, and publishes them to a versioned registry.

mod cli;
mod dataset;
mod export;
mod fit;
mod model;
mod newton;
mod parity;
mod raw;
mod registry;
mod topic;
mod training;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
