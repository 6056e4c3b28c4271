//! `scorer replay`: score a historical range of a topic through the live code path, after
//! warming window state with everything before the range. Also the warm-up of newly assigned
//! partitions in `scorer run`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use rdkafka::topic_partition_list::Offset;
use serde::Serialize;
use serde_json::json;

use crate::kafka::{self, Batch, Ctx, KafkaArgs};
use crate::log;
use crate::model::{self, ModelArgs};
use crate::run::append;
use crate::score::{Outcome, Scorer};

/// `scorer replay` options.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// The topic to replay.
    #[arg(long)]
    input: String,
    /// Start of the range: an offset (every partition) or an event time (`2013-12-01` or
    /// RFC 3339). Default: the beginning.
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive, like `--from`. Default: the end of each partition when the
    /// replay starts.
    #[arg(long)]
    to: Option<String>,
    /// Topic for the predictions (and, with `--dlq`, the dead letters).
    #[arg(long, conflicts_with = "out")]
    output: Option<String>,
    /// Dead-letter topic (default: none; bad events are only counted).
    #[arg(long, requires = "output")]
    dlq: Option<String>,
    /// Write the predictions as JSON lines to this file instead of a topic.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Larger payloads are refused.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    Offset(i64),
    Time(i64),
}

fn parse_bound(text: &str, flag: &str) -> Result<Bound> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Bound::Offset(text.parse()?));
    }
    shared_features::time::parse_date_or_timestamp(text)
        .map(Bound::Time)
        .map_err(|e| anyhow::anyhow!("{flag} `{text}`: not an offset nor a time: {e}"))
}

#[derive(Serialize, Debug, Default)]
struct ReplaySummary {
    model: String,
    topic: String,
    partitions: usize,
    read: u64,
    replayed: u64,
    dead_lettered: u64,
    filtered: u64,
    warmed: u64,
    seconds: f64,
    events_per_second: f64,
}

/// Run a replay and print its summary.
pub fn replay(args: ReplayArgs) -> Result<()> {
    if args.output.is_none() && args.out.is_none() {
        bail!("say where the predictions go: --output TOPIC or --out FILE");
    }
    let from = args
        .from
        .as_deref()
        .map(|t| parse_bound(t, "--from"))
        .transpose()?;
    let to = args
        .to
        .as_deref()
        .map(|t| parse_bound(t, "--to"))
        .transpose()?;
    let servable = model::load_blocking(&args.model)?;
    let consumer = reader(&args.kafka)?;
    let parts = kafka::partitions(&consumer, &args.input)?;
    if parts.len() > 1 && servable.pipeline.repartition_windows().next().is_some() {
        bail!(
            "topic `{}` has {} partitions and the pipeline has windows keyed by another column \
             than the partition key; replay needs one partition",
            args.input,
            parts.len()
        );
    }
    let producer: Option<BaseProducer<Ctx>> = match &args.output {
        Some(t) => {
            let mut topics = vec![t.as_str()];
            topics.extend(args.dlq.as_deref());
            kafka::ensure_topics(&args.kafka, &topics, parts.len() as i32)?;
            Some(
                args.kafka
                    .config(&[("enable.idempotence", "true"), ("linger.ms", "5")])
                    .create_with_context(Ctx::default())
                    .context("cannot create the producer")?,
            )
        }
        None => None,
    };
    let mut file = match &args.out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let out_topic = args.output.clone().unwrap_or_default();
    let dlq_topic = args.dlq.clone().unwrap_or_default();
    let mut s = ReplaySummary {
        model: servable.id.clone(),
        topic: args.input.clone(),
        partitions: parts.len(),
        ..Default::default()
    };
    let t0 = Instant::now();
    for &p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(&args.input, p, Duration::from_secs(30))
            .with_context(|| format!("cannot read offsets of {}/{p}", args.input))?;
        let end = match to {
            Some(Bound::Offset(o)) if o <= high => End::At(o),
            _ => End::Tail(high),
        };
        let mut scorer = Scorer::new(servable.clone(), args.max_event_bytes);
        let mut batch = Batch::new(vec![out_topic.clone(), dlq_topic.clone()]);
        let give_up = || false;
        each_message(&consumer, &args.input, p, low, end, |msg| {
            s.read += 1;
            let in_offsets = !matches!(from, Some(Bound::Offset(o)) if msg.offset() < o)
                && !matches!(to, Some(Bound::Offset(o)) if msg.offset() >= o);
            let n_before = batch.records.len();
            let outcome = append(&mut scorer, msg, &mut batch);
            let in_time = |t: i64| {
                !matches!(from, Some(Bound::Time(f)) if t < f)
                    && !matches!(to, Some(Bound::Time(e)) if t >= e)
            };
            let keep = in_offsets
                && match &outcome {
                    Outcome::Scored { event_time, .. } => in_time(*event_time),
                    Outcome::Filtered => false,
                    Outcome::Dead(_) => true,
                };
            if !keep {
                batch.records.truncate(n_before);
                s.warmed += 1;
                return Ok(());
            }
            match outcome {
                Outcome::Scored { .. } => s.replayed += 1,
                Outcome::Filtered => s.filtered += 1,
                Outcome::Dead(_) => {
                    s.dead_lettered += 1;
                    if args.dlq.is_none() {
                        batch.records.truncate(n_before);
                    }
                }
            }
            if batch.records.len() >= 5000 {
                flush(&producer, &mut file, &mut batch, &give_up)?;
            }
            Ok(())
        })?;
        flush(&producer, &mut file, &mut batch, &give_up)?;
    }
    if let Some(f) = &mut file {
        f.flush()?;
    }
    s.seconds = t0.elapsed().as_secs_f64();
    s.events_per_second = s.read as f64 / s.seconds.max(1e-9);
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "replayed {} of {} ({} partitions) with {}: {} predictions, {} dead-lettered, {} \
             filtered, {} warm-up events; {:.1} s, {:.0} events/s",
            args.input,
            if args.from.is_some() || args.to.is_some() {
                "a range"
            } else {
                "everything"
            },
            s.partitions,
            s.model,
            s.replayed,
            s.dead_lettered,
            s.filtered,
            s.warmed,
            s.seconds,
            s.events_per_second
        );
    }
    Ok(())
}

fn flush(
    producer: &Option<BaseProducer<Ctx>>,
    file: &mut Option<std::io::BufWriter<std::fs::File>>,
    batch: &mut Batch,
    give_up: &dyn Fn() -> bool,
) -> Result<()> {
    if let Some(p) = producer {
        kafka::deliver(p, batch, give_up)?;
    }
    if let Some(f) = file {
        for r in batch.records.iter().filter(|r| r.topic == 0) {
            f.write_all(&batch.buf[r.payload.0..r.payload.1])?;
            f.write_all(b"\n")?;
        }
    }
    batch.clear();
    Ok(())
}

/// A consumer that reads assigned partitions only (no group membership, no commits).
pub fn reader(kafka: &KafkaArgs) -> Result<BaseConsumer<Ctx>> {
    kafka
        .config(&[
            ("group.id", "kml-reader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
        ])
        .create_with_context(Ctx::default())
        .context("cannot create a consumer")
}

/// Where reading a partition stops.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// Before this offset.
    At(i64),
    /// At the end of the partition, which is at or after this high watermark. Reading goes on
    /// past it until nothing more arrives: tansu reports a high watermark that counts only the
    /// first record of the newest batch, so the watermark alone would drop the tail.
    Tail(i64),
}

/// Call `f` on every message of `topic`/`partition` from offset `start` to `end`, in order.
pub fn each_message(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    partition: i32,
    start: i64,
    end: End,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    let (stop, tail) = match end {
        End::At(o) => (o, false),
        End::Tail(hw) => (hw, true),
    };
    if start >= stop {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut last_progress = Instant::now();
    let wait = Duration::from_millis(if tail { 500 } else { 200 });
    loop {
        match consumer.poll(wait) {
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                if !tail && msg.offset() >= stop {
                    break;
                }
                f(&msg)?;
                if !tail && msg.offset() + 1 >= stop {
                    break;
                }
            }
            Some(Err(e)) => log::warn("read error", json!({"error": e.to_string()})),
            // Quiet, and at or past the last offset known: done. (Transaction markers take
            // offsets but are never delivered, so the position tells, not the last message.)
            None if position(consumer) >= stop => break,
            None if last_progress.elapsed() > Duration::from_secs(60) => {
                bail!(
                    "no message from {topic}/{partition} for 60 s while reading up to offset {stop}"
                )
            }
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(())
}

fn position(consumer: &BaseConsumer<Ctx>) -> i64 {
    let pos = consumer.position().ok();
    let at = pos
        .as_ref()
        .and_then(|p| p.elements().first().map(|e| e.offset()));
    match at {
        Some(Offset::Offset(o)) => o,
        _ => -1,
    }
}

/// Rebuild window state for `topic`/`partition` from the events before `until` (the offset
/// scoring resumes at). Returns the number of events read.
///
/// It reads from the partition's beginning: the broker may not map times to offsets (tansu
/// does not), and the events before the lookback window leave no state behind anyway, so the
/// state is exactly what a scorer that never stopped would hold.
pub fn warm(
    kafka: &KafkaArgs,
    topic: &str,
    partition: i32,
    until: i64,
    scorer: &mut Scorer,
) -> Result<u64> {
    let consumer = reader(kafka)?;
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .with_context(|| format!("cannot read offsets of {topic}/{partition}"))?;
    let t0 = Instant::now();
    let mut n = 0u64;
    each_message(&consumer, topic, partition, low, End::At(until), |msg| {
        scorer.warm(msg.payload().unwrap_or_default());
        n += 1;
        Ok(())
    })?;
    if n > 0 {
        log::info(
            "window state rebuilt",
            json!({"partition": format!("{topic}/{partition}"), "events": n,
                   "seconds": t0.elapsed().as_secs_f64()}),
        );
    }
    Ok(n)
}
