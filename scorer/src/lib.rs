//! `scorer`: the online half. Consumes live topics, computes features with the same engine the
//! trainer validated, scores with a model pulled from the registry, and produces predictions
//! with lineage; dead-letters what it cannot score; replays history; serves the model over HTTP;
//! feeds topics for demos.

pub mod evaluate;
pub mod feed;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod run;
pub mod score;
pub mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Real-time scoring on Kafka with the features the model was trained on.
#[derive(Parser, Debug)]
#[command(name = "scorer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume input topics, score every event, produce predictions (and dead letters).
    Run(run::RunArgs),
    /// Score a historical range of a topic through the live code path.
    Replay(replay::ReplayArgs),
    /// Publish a history file's events to a topic in event order.
    Feed(feed::FeedArgs),
    /// Serve the model over HTTP (the model-server pattern, e.g. a Kubernetes sidecar).
    Serve(serve::ServeArgs),
    /// Join predictions with the labels of the events they scored; report online ROC AUC.
    Evaluate(evaluate::EvaluateArgs),
}

/// Parse the command line, run the command, print an error chain on failure (exit code 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Replay(a) => replay::replay(a),
        Command::Feed(a) => feed::feed(a),
        Command::Evaluate(a) => evaluate::evaluate(a),
        Command::Serve(a) => serve::serve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
