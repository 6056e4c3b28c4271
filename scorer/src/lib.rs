//! `scorer`: the online half. Consumes live topics, computes features with the same engine the
//! trainer validated, scores with a model pulled from the registry, and produces predictions
//! with lineage; dead-letters what it cannot score; replays history; serves the model over HTTP;
//! feeds topics for demos.

pub mod checkpoint;
pub mod drift;
pub mod evaluate;
pub mod feed;
pub(crate) mod grpc;
pub mod http;
pub mod kafka;
pub mod labels;
pub mod live;
pub mod log;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod offsets;
pub(crate) mod oip;
pub mod out_file;
#[cfg(feature = "parquet")]
pub mod parquet_out;
pub mod remote;
pub mod replay;
pub mod run;
pub use shared_models::schema_registry;
pub mod score;
pub mod serve;
pub mod shadow;
pub mod sink;
pub mod source;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Real-time scoring on Kafka with the features the model was trained on.
#[derive(Parser, Debug)]
#[command(name = "scorer", version, about)]
pub struct Cli {
    /// Log lines as JSON objects (for collectors) or text.
    #[arg(
        long,
        global = true,
        env = "KML_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: log::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume input topics, score every event, produce predictions (and dead letters).
    Run(Box<run::RunArgs>),
    /// Score a historical range of a topic through the live code path.
    Replay(replay::ReplayArgs),
    /// Publish a history file's events to a topic in event order.
    Feed(feed::FeedArgs),
    /// Serve the model over HTTP (the model-server pattern, e.g. a Kubernetes sidecar).
    Serve(serve::ServeArgs),
    /// Join predictions with the labels of the events they scored; report online ROC AUC.
    Evaluate(evaluate::EvaluateArgs),
    /// Measure the drift of a topic range or a history file against the model's training split.
    Drift(drift::DriftArgs),
}

/// Parse the command line, run the command, print an error chain on failure (exit code 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(cli.log_format);
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    let result = match cli.command {
        Command::Run(a) => run::run(*a),
        Command::Replay(a) => replay::replay(a),
        Command::Feed(a) => feed::feed(a),
        Command::Evaluate(a) => evaluate::evaluate(a),
        Command::Serve(a) => serve::serve(a),
        Command::Drift(a) => drift::drift(a),
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

/// Cancel `token` on the first SIGINT or SIGTERM, and `hard` on the second (stop waiting for
/// in-flight work at once).
pub async fn signals(token: CancellationToken, hard: CancellationToken) {
    for t in [token, hard] {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        t.cancel();
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub use shared_models::wait::retry_until_cancelled;
