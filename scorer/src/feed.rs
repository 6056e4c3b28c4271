//! `scorer feed`: publish a history file's events to a topic in event order, as fast as
//! possible or at a given rate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shared_features::Pipeline;
use shared_features::events::{csv_to_json, event_meta, event_order};
use shared_features::time::{format_timestamp, parse_date_or_timestamp};

use tokio_util::sync::CancellationToken;

use crate::kafka::{self, KafkaArgs};
use crate::offsets::Tag;
use crate::sink::{Sink, To};

/// `scorer feed` options.
#[derive(clap::Args, Debug)]
pub struct FeedArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The pipeline: its fields type the CSV and its key and event time order the events.
    #[arg(long)]
    pipeline: PathBuf,
    /// The history file (CSV, or JSON lines by the .jsonl/.ndjson/.json extension); default: the
    /// pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// The topic (created with `--partitions` if it does not exist).
    #[arg(long, required_unless_present = "out")]
    topic: Option<String>,
    /// Write the events, in the same order, as JSON lines to this file instead of a topic (for
    /// `scorer serve`, or JSON-lines history for the trainer).
    #[arg(long, conflicts_with = "topic")]
    out: Option<PathBuf>,
    /// Partitions of a topic this command creates.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Only events at or after this event time (`2013-11-01` or RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only events before this event time.
    #[arg(long)]
    to: Option<String>,
    /// Events per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Refuse, rather than warn, when the topic has more partitions than the pipeline can be
    /// scored on (windows keyed by several columns other than the entity key need one
    /// partition; one such column is repartitioned by `scorer run`).
    #[arg(long)]
    strict: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FeedSummary {
    topic: String,
    fed: u64,
    first_event_time: Option<String>,
    last_event_time: Option<String>,
    seconds: f64,
    events_per_second: f64,
}

/// Read, order, publish, and print a summary.
pub fn feed(args: FeedArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.pipeline)
        .with_context(|| format!("cannot read {}", args.pipeline.display()))?;
    let p = Arc::new(Pipeline::parse(
        &text,
        &args.pipeline.display().to_string(),
    )?);
    if let Some(topic) = &args.topic {
        // Before any work: the partitions asked for.
        check_partitioning(&p, topic, args.partitions, args.strict)?;
    }
    let events_path = match (&args.events, &p.events_path) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) => args
            .pipeline
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(e),
        (None, None) => bail!(
            "{}: no [events] path; pass --events",
            args.pipeline.display()
        ),
    };
    let events = read_events(&p, &events_path)?;
    let meta = event_meta(&p, &events);
    let bound = |t: &Option<String>, flag: &str| {
        t.as_deref()
            .map(|s| parse_date_or_timestamp(s).map_err(|e| anyhow::anyhow!("{flag} `{s}`: {e}")))
            .transpose()
    };
    let (from, to) = (bound(&args.from, "--from")?, bound(&args.to, "--to")?);
    // Event order, ties by key then file order (as the offline engine sorts); events without a
    // time go last (the scorer refuses them).
    let order: Vec<usize> = event_order(&p, &events)
        .into_iter()
        .filter(|&i| match meta[i].1 {
            Some(t) => from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e),
            None => from.is_none() && to.is_none(),
        })
        .collect();

    let t0 = Instant::now();
    let topic = match (&args.topic, &args.out) {
        (_, Some(out)) => {
            use std::io::Write;
            let file = std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            for &i in &order {
                w.write_all(&events[i])?;
                w.write_all(b"\n")?;
            }
            w.flush()
                .with_context(|| format!("cannot write {}", out.display()))?;
            out.display().to_string()
        }
        (Some(topic), None) => {
            produce(&args, &p, topic, &order, &events, &meta)?;
            topic.clone()
        }
        (None, None) => bail!("give --topic or --out"),
    };
    let seconds = t0.elapsed().as_secs_f64();
    let fmt = |i: Option<&usize>| i.and_then(|&i| meta[i].1).map(format_timestamp);
    let s = FeedSummary {
        topic,
        fed: order.len() as u64,
        first_event_time: fmt(order.first()),
        last_event_time: fmt(order.last()),
        seconds,
        events_per_second: order.len() as f64 / seconds.max(1e-9),
    };
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "fed {} events to {} ({} .. {}) in {:.1} s ({:.0} events/s)",
            s.fed,
            s.topic,
            s.first_event_time.as_deref().unwrap_or("-"),
            s.last_event_time.as_deref().unwrap_or("-"),
            s.seconds,
            s.events_per_second
        );
    }
    Ok(())
}

/// The events of a history file as JSON payloads, in file order: CSV rows typed by the
/// pipeline's fields, or JSON lines (by the .jsonl/.ndjson/.json extension; blank lines
/// skipped).
pub(crate) fn read_events(p: &Pipeline, path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok(if matches!(ext, "jsonl" | "ndjson" | "json") {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        csv_to_json(p, &bytes, &path.display().to_string())?
    })
}

/// Publish `events` in `order`, keyed, with their event time as the Kafka timestamp.
fn produce(
    args: &FeedArgs,
    p: &Pipeline,
    topic: &str,
    order: &[usize],
    events: &[Vec<u8>],
    meta: &[(Option<String>, Option<i64>)],
) -> Result<()> {
    kafka::ensure_topics(&args.kafka, &[topic], args.partitions)?;
    // A topic that existed already keeps its own partition count.
    let reader = crate::source::reader(&args.kafka)?;
    let n = kafka::partitions(&reader, topic)?.len() as i32;
    if n != args.partitions {
        check_partitioning(p, topic, n, args.strict)?;
    }
    let mut sink = Sink::new(&args.kafka, topic, topic, None)?;
    let token = CancellationToken::new();
    let t0 = Instant::now();
    let rate = args.rate.filter(|r| *r > 0.0);
    for (n, &i) in order.iter().enumerate() {
        let key = meta[i].0.as_deref().unwrap_or_default().as_bytes();
        sink.send_waiting(To::Output, key, &events[i], meta[i].1, &[], Tag(0), &token)?;
        if n % 1024 == 0 {
            failed(&mut sink)?;
        }
        // At a rate: sleep until the next event is due (in tenths of a second, not per event).
        if let Some(r) = rate
            && (n + 1) % ((r / 10.0).ceil() as usize).clamp(1, 10_000) == 0
        {
            let due = Duration::from_secs_f64((n + 1) as f64 / r);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    if !sink.flush(Duration::from_secs(300), None) {
        bail!("{} events not acknowledged after 300 s", sink.in_flight());
    }
    failed(&mut sink)
}

/// A topic of `partitions` partitions keyed by the entity key spreads the events of a window
/// keyed by another column: `scorer run` brings them together through a repartition topic,
/// which it can do for one such column. A pipeline whose windows are keyed by several other
/// columns cannot be scored on it: say so before feeding it (or refuse, with `strict`).
fn check_partitioning(p: &Pipeline, topic: &str, partitions: i32, strict: bool) -> Result<()> {
    if partitions <= 1 {
        return Ok(());
    }
    let spread: Vec<String> = p
        .repartition_windows()
        .map(|w| format!("`{}` (keyed by `{}`)", w.name, p.layout[w.key].name))
        .collect();
    match crate::merge::repartition_key(p) {
        Ok(None) => Ok(()),
        Ok(Some(by)) => {
            tracing::info!(
                "topic `{topic}` has {partitions} partitions, keyed by `{}`: `scorer run` computes \
                 the windows {} behind a repartition topic keyed by `{by}`",
                p.layout[p.key].name,
                spread.join(", ")
            );
            Ok(())
        }
        Err(why) => {
            let msg = format!(
                "topic `{topic}` has {partitions} partitions, keyed by `{}`, and the windows {} \
                 are keyed by other columns: {why}; `scorer run` refuses this topic for this \
                 pipeline. Feed it with --partitions 1",
                p.layout[p.key].name,
                spread.join(", ")
            );
            if strict {
                bail!("{msg} (--strict)");
            }
            tracing::warn!("{msg}");
            Ok(())
        }
    }
}

/// Fail on the first record that could not be delivered (librdkafka retried it already).
fn failed(sink: &mut Sink) -> Result<()> {
    let reports = sink.reports();
    if let Some(f) = reports.iter().find_map(|r| r.failure.as_ref()) {
        bail!("an event could not be published: {}", f.error);
    }
    sink.recycle(reports);
    Ok(())
}
