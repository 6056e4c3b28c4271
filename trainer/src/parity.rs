//! `trainer parity`: the number behind "no train/serve skew".

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::dataset::Input;
use shared_features::parity::{self, ParityReport};

/// Arguments of `trainer parity`.
#[derive(Debug, clap::Args)]
pub struct ParityArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// History to replay (CSV, JSON lines, or an Avro object container file `.avro`; a local
    /// path or s3://, gs://, az://); defaults to the pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// History from a topic range instead (`--topic T --from --to`): each partition's engine
    /// fed in offset order as the scorer feeds it, the offline engine reading the same log.
    #[command(flatten)]
    topic: crate::topic::TopicArgs,
    /// Directory the pipeline's relative paths resolve against (default: the pipeline's directory).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Run the online side as the scorer runs it on a topic of this many partitions: events
    /// spread by key, admitted per partition, windows keyed by another column computed after
    /// the merge behind the watermark (README, repartitioning).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: Option<u32>,
    /// Feed the online side in a realistic arrival order drawn from this seed (events delayed
    /// within the lateness, one in 200 past it) instead of sorted; the offline side reads the
    /// history as a log in that order (README, "Order and lateness").
    #[arg(long, value_name = "SEED")]
    disorder: Option<u64>,
    /// Under --disorder or --topic, how the online engine orders what arrives: `watermark`
    /// (behind the watermark, in event-time order: the offline features exactly; the default)
    /// or `arrival` (each event at once: its windows miss what arrives after it).
    #[arg(long)]
    order: Option<shared_features::Order>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Load the pipeline, run the check, print the report; exit 1 when any vector differs.
pub fn run(args: ParityArgs) -> anyhow::Result<ExitCode> {
    let from_topic = args.topic.topic.is_some();
    if args.order.is_some() && args.disorder.is_none() && !from_topic {
        bail!("--order applies to --disorder or --topic: a sorted check has no arrival order");
    }
    if from_topic && (args.disorder.is_some() || args.partitions.is_some()) {
        bail!("a topic's log arrives in its own order: --disorder and --partitions do not apply");
    }
    let order = args.order.unwrap_or(shared_features::Order::Watermark);
    let mut input = Input::load(
        &args.pipeline,
        args.base.as_deref(),
        args.events.as_deref(),
        Some(&args.topic),
    )?;
    input.fetch()?;
    let log = input.history.as_ref().map(|h| parity::TopicLog {
        partitions: h.positions.iter().map(|&(q, _)| q as u32).collect(),
        compared: h.in_range(),
        order,
    });
    let feed = parity::Feed {
        partitions: args.partitions,
        disorder: args.disorder.map(|seed| parity::Disorder { seed, order }),
        log,
    };
    let report = parity::check_feed(&input.pipeline, &input.events, &input.base, feed)
        .with_context(|| format!("parity check over {} failed", input.events_source))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&args.pipeline, &input, &report);
    }
    Ok(if report.identical == report.events && report.events > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(pipeline: &Path, input: &Input, r: &ParityReport) {
    let pct = if r.events == 0 {
        0.0
    } else {
        100.0 * r.identical as f64 / r.events as f64
    };
    let rate = |secs: f64| {
        if secs > 0.0 {
            format!("{:.0} events/s", r.events as f64 / secs)
        } else {
            "-".into()
        }
    };
    println!(
        "parity check: {} over {}",
        pipeline.display(),
        input.events_source
    );
    println!("  {:<22}{:>12}", "records", r.records);
    if let Some(h) = &input.history {
        println!("  {:<22}{}", "range compared", h.range);
        if h.refused > 0 {
            println!(
                "  {:<22}{:>12}  (first: {})",
                "undecodable (left out)",
                h.refused,
                h.first_refusal.as_deref().unwrap_or("-")
            );
        }
    }
    match &r.disorder {
        None => println!("  {:<22}{:>12}", "online order", r.mode),
        Some(d) => {
            println!(
                "  {:<22}{:>12}  (disorder seed {})",
                "online order", r.mode, d.seed
            );
            println!("  {:<22}{:>12}", "  arrived out of order", d.out_of_order);
            println!(
                "  {:<22}{:>12}",
                "  delayed past lateness", d.delayed_past_lateness
            );
        }
    }
    println!(
        "  {:<22}{} to {}",
        "event times",
        r.event_times.first.as_deref().unwrap_or("-"),
        r.event_times.last.as_deref().unwrap_or("-")
    );
    for w in &r.warnings {
        println!("  {:<22}{w}", "warning");
    }
    println!("  {:<22}{:>12}", "filtered", r.filtered);
    println!("  {:<22}{:>12}", "refused (both)", r.rejected);
    for (kind, n) in &r.rejected_by_kind {
        println!("  {:<22}{:>12}", format!("  refused: {kind}"), n);
    }
    println!("  {:<22}{:>12}", "vectors compared", r.events);
    println!("  {:<22}{:>12}  ({pct:.3}%)", "bit-identical", r.identical);
    for (name, n) in &r.joined {
        println!(
            "  {:<22}{:>12}  ({:.1}% of vectors)",
            format!("joined: {name}"),
            n,
            100.0 * *n as f64 / r.events.max(1) as f64
        );
    }
    println!("  {:<22}{:>12}", "columns per event", r.columns);
    println!("  {:<22}{:>12}", "vector width", r.width);
    println!(
        "  {:<22}{:>10.2} s  ({})",
        "offline engine",
        r.offline_seconds,
        rate(r.offline_seconds)
    );
    println!(
        "  {:<22}{:>10.2} s  ({})",
        "online engine",
        r.online_seconds,
        rate(r.online_seconds)
    );
    println!("  {:<22}{}", "fingerprint", r.fingerprint);
    match &r.first_mismatch {
        None => println!("  {:<22}{:>12}", "first mismatch", "none"),
        Some(m) => println!(
            "  {:<22}{} ({}): `{}` offline {} vs online {}",
            "first mismatch",
            where_is(input, m.line),
            m.event_time.as_deref().unwrap_or("no time"),
            m.feature,
            m.offline,
            m.online
        ),
    }
}

/// Where the record on `line` of the history came from: the file's line, or the topic's
/// partition and offset.
fn where_is(input: &Input, line: usize) -> String {
    let position = input
        .history
        .as_ref()
        .and_then(|h| h.positions.get(line.wrapping_sub(1)));
    match position {
        Some((q, offset)) => format!("{}/{q}@{offset}", input.events_source),
        None => format!("line {line}"),
    }
}
