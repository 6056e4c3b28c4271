//! History from a topic: a range of a Kafka topic read as the scorer reads it, in log order.
//!
//! Every partition is read from its beginning (the events before the range warm the windows,
//! as `scorer replay` warms them) up to the range's end. Each payload goes through the
//! scorer's decoder; one that does not decode is left out and counted, as the scorer would
//! dead-letter it. The events are written, partition by partition in offset order, to a file
//! that the offline engine reads as a log (`offline::Log`): admitted per partition in offset
//! order, then sorted, exactly as the scorer in watermark order processes them. JSON events go
//! to a JSON lines file; Avro and Protobuf records (`--value-format`, through the schema
//! registry) to a records file that keeps each record's bytes as they were on the topic, with
//! the writer schemas they name (`wire::write_records_file`), so that the offline engine and the
//! parity check decode them with the scorer's decoder too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{Message, TopicPartitionList as Tpl};
use shared_features::wire::Format;
use shared_features::{EventDecoder, Pipeline, Value};
use shared_models::schema_registry::FormatArgs;
use tokio_util::sync::CancellationToken;

/// Where the history's topic is, and which part of it to train on.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    /// Read history from this topic instead of a file, in log order through the scorer's
    /// decoder (README, "Training from the log").
    #[arg(long, conflicts_with = "events")]
    pub topic: Option<String>,
    /// Start of the range: an offset (in every partition) or an event time (`2013-12-01` or
    /// RFC 3339). Events before it warm the windows but are not trained on.
    #[arg(long, requires = "topic")]
    pub from: Option<String>,
    /// End of the range, exclusive, like `--from`. Default: the end of each partition when
    /// reading starts.
    #[arg(long, requires = "topic")]
    pub to: Option<String>,
    /// Bootstrap servers of the topic's cluster.
    #[arg(long, env = "KML_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Any librdkafka property, e.g. `-X security.protocol=SASL_SSL`; repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// The topic's value format, and its schema registry (as for `scorer run`).
    #[command(flatten)]
    pub format: FormatArgs,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// A bound of the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// An offset, in every partition.
    Offset(i64),
    /// An event time (epoch ms).
    Time(i64),
}

impl Bound {
    fn parse(text: &str, flag: &str) -> anyhow::Result<Self> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Bound::Offset(text.parse()?));
        }
        shared_features::time::parse_date_or_timestamp(text)
            .map(Bound::Time)
            .map_err(|e| anyhow::anyhow!("{flag} `{text}`: not an offset nor a time: {e}"))
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Offset(o) => write!(f, "offset {o}"),
            Bound::Time(t) => f.write_str(&shared_features::time::format_timestamp(*t)),
        }
    }
}

/// The range to train on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    /// Inclusive start.
    pub from: Option<Bound>,
    /// Exclusive end.
    pub to: Option<Bound>,
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.from {
            Some(b) => write!(f, "from {b}")?,
            None => f.write_str("from the beginning")?,
        }
        match self.to {
            Some(b) => write!(f, " to {b} (exclusive)"),
            None => f.write_str(" to the end"),
        }
    }
}

impl Range {
    /// Whether an event at `offset` with event time `t` is in the range.
    pub fn contains(&self, offset: i64, t: i64) -> bool {
        let after = match self.from {
            Some(Bound::Offset(o)) => offset >= o,
            Some(Bound::Time(f)) => t >= f,
            None => true,
        };
        let before = match self.to {
            Some(Bound::Offset(o)) => offset < o,
            Some(Bound::Time(e)) => t < e,
            None => true,
        };
        after && before
    }
}

impl TopicHistory {
    /// Whether each record of the written file is in the range.
    pub fn in_range(&self) -> Vec<bool> {
        self.positions
            .iter()
            .zip(&self.times)
            .map(|(&(_, offset), t)| self.range.contains(offset, t.unwrap_or(i64::MIN)))
            .collect()
    }
}

/// What was read from the topic.
#[derive(Debug, Default)]
pub struct TopicHistory {
    /// For each record of the written file: its partition and offset.
    pub positions: Vec<(i32, i64)>,
    /// For each record of the written file: its event time, when it has a valid one.
    pub times: Vec<Option<i64>>,
    /// Payloads the decoder refused, and the first such with its position and reason.
    pub refused: usize,
    /// The first refusal: `topic/partition@offset: reason`.
    pub first_refusal: Option<String>,
    /// Each partition's offsets read: `(partition, low, end)`.
    pub partitions: Vec<(i32, i64, i64)>,
    /// The range.
    pub range: Range,
    /// The file the events were written to.
    pub file: PathBuf,
}

impl TopicArgs {
    /// The range the flags give, checked before any work.
    pub fn range(&self) -> anyhow::Result<Range> {
        let from = self
            .from
            .as_deref()
            .map(|t| Bound::parse(t, "--from"))
            .transpose()?;
        let to = self
            .to
            .as_deref()
            .map(|t| Bound::parse(t, "--to"))
            .transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            let empty = match (f, t) {
                (Bound::Offset(a), Bound::Offset(b)) | (Bound::Time(a), Bound::Time(b)) => a >= b,
                _ => false,
            };
            if empty {
                bail!(
                    "--from {} is not before --to {}: the range is empty",
                    self.from.as_deref().unwrap_or(""),
                    self.to.as_deref().unwrap_or("")
                );
            }
        }
        Ok(Range { from, to })
    }

    /// Read the topic up to the range's end into a file in `dir`, in log order, partition by
    /// partition: JSON lines, or a records file for Avro and Protobuf.
    pub fn read(&self, p: &Pipeline, dir: &Path) -> anyhow::Result<TopicHistory> {
        let Some(topic) = self.topic.as_deref() else {
            bail!("no --topic");
        };
        let range = self.range()?;
        // A batch job: a registry that does not answer is an error at once, not waited for.
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let (_rt, registry) = self.format.open_blocking(cancelled)?;
        if let Some(r) = &registry {
            r.check_topics(&[topic.to_string()], p)?;
        }
        let format = registry.as_ref().map_or(Format::Json, |r| r.format());
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "kml-trainer")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .create()
            .with_context(|| format!("cannot create a Kafka consumer for {}", self.brokers))?;
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| {
                format!(
                    "cannot read metadata of topic `{topic}` from {}",
                    self.brokers
                )
            })?;
        let mut parts: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|q| q.id()))
            .collect();
        parts.sort_unstable();
        if parts.is_empty() {
            bail!(
                "topic `{topic}` does not exist on {} (or has no partitions)",
                self.brokers
            );
        }
        let json = matches!(format, Format::Json);
        let out = dir.join(if json { "topic.jsonl" } else { "topic.avro" });
        let file = std::fs::File::create(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut decoder = EventDecoder::new(p, &format);
        let mut row = vec![Value::Null; p.layout.len()];
        let mut h = TopicHistory {
            range,
            file: out.clone(),
            ..TopicHistory::default()
        };
        let mut line = Vec::new();
        for &q in &parts {
            let (low, high) = consumer
                .fetch_watermarks(topic, q, Duration::from_secs(10))
                .with_context(|| format!("cannot read offsets of {topic}/{q}"))?;
            // Up to an offset bound, or to the end: past the high watermark until the partition
            // is quiet, since a broker may count only the first record of its newest batch in
            // it (tansu does).
            let (end, tail) = match range.to {
                Some(Bound::Offset(o)) if o <= high => (o, false),
                _ => (high, true),
            };
            h.partitions.push((q, low, end));
            if low >= end {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, q, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let mut quiet = Instant::now();
            let wait = Duration::from_millis(if tail { 500 } else { 200 });
            loop {
                let Some(msg) = consumer.poll(wait) else {
                    // Transaction markers take offsets and are never delivered: the position
                    // tells where reading is.
                    if position(&consumer).is_some_and(|o| o >= end) {
                        break;
                    }
                    if quiet.elapsed() > Duration::from_secs(60) {
                        bail!(
                            "no message from {topic}/{q} for 60 s while reading up to offset {end}"
                        );
                    }
                    continue;
                };
                let msg = msg.with_context(|| format!("cannot read {topic}/{q}"))?;
                quiet = Instant::now();
                if !tail && msg.offset() >= end {
                    break;
                }
                if let Some(last) = h.partitions.last_mut() {
                    last.2 = last.2.max(msg.offset() + 1);
                }
                let payload = msg.payload().unwrap_or_default();
                if let Some(r) = &registry {
                    r.prepare(Some(payload))
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("cannot decode {topic}/{q}@{}", msg.offset()))?;
                }
                if let Err(e) = decoder.decode(payload, &mut row) {
                    h.refused += 1;
                    h.first_refusal
                        .get_or_insert_with(|| format!("{topic}/{q}@{}: {e}", msg.offset()));
                    continue;
                }
                if json {
                    // A JSON line per event: raw line breaks can only be whitespace between
                    // tokens in valid JSON (inside strings they must be escaped).
                    line.clear();
                    line.extend(
                        payload
                            .iter()
                            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                    );
                    line.push(b'\n');
                    w.write_all(&line)?;
                } else {
                    records.push(payload.to_vec());
                }
                h.positions.push((q, msg.offset()));
                h.times
                    .push(shared_features::eval::event_time(p, &row).ok());
                if !tail && msg.offset() + 1 >= end {
                    break;
                }
            }
            consumer.unassign()?;
        }
        w.flush()?;
        drop(w);
        if !json {
            shared_features::wire::write_records_file(
                &out,
                &format,
                records.iter().map(Vec::as_slice),
            )
            .map_err(anyhow::Error::msg)?;
        }
        if h.positions.is_empty() {
            let spans: Vec<String> = h
                .partitions
                .iter()
                .map(|(q, l, e)| format!("{topic}/{q} offsets {l}..{e}"))
                .collect();
            bail!(
                "topic `{topic}` holds no event to read up to the range's end ({}){}",
                spans.join(", "),
                h.first_refusal
                    .as_deref()
                    .map(|r| format!("; {} refused, first {r}", h.refused))
                    .unwrap_or_default()
            );
        }
        Ok(h)
    }
}

fn position(consumer: &BaseConsumer) -> Option<i64> {
    let pos: Tpl = consumer.position().ok()?;
    match pos.elements().first()?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}
