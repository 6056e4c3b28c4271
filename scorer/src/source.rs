//! The source: a consumer in a group (for `run`), or a reader of assigned partitions (for
//! replay, warm-up and evaluation); rebalances as events for the scoring loop; consumer lag
//! from librdkafka's statistics; and the warm-up that rebuilds a partition's window state.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::Offset;
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, KafkaArgs, LogCtx};
use crate::score::Scorer;

/// A change of assignment, seen by the scoring loop after `poll` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// These partitions are no longer ours: drop their state.
    Revoked(Vec<(String, i32)>),
    /// These partitions are now ours.
    Assigned(Vec<(String, i32)>),
}

/// The group consumer's context: logs, rebalance events, lag.
pub struct SourceCtx {
    events: Mutex<Vec<Rebalanced>>,
    lag: Gauge,
}

impl SourceCtx {
    /// A context exporting lag to `lag`.
    pub fn new(lag: Gauge) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            lag,
        }
    }

    /// Rebalances since the last call, in order.
    pub fn rebalances(&self) -> Vec<Rebalanced> {
        self.events
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    fn push(&self, e: Rebalanced) {
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for SourceCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }

    /// Lag without a blocking call on the scoring path: librdkafka measures it against the
    /// high watermarks it fetches anyway (`statistics.interval.ms`).
    fn stats(&self, s: Statistics) {
        let mut lag = 0i64;
        for t in s.topics.values() {
            for (id, p) in &t.partitions {
                if *id < 0 {
                    continue; // librdkafka's internal unassigned partition
                }
                let l = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
                lag += l.max(0);
            }
        }
        self.lag.set(lag);
    }
}

impl ConsumerContext for SourceCtx {
    /// A failed commit is not fatal (the next one carries the same offsets or later ones), but
    /// it means a restart repeats more work: say so.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => tracing::debug!(count = offsets.count(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                let parts: Vec<String> = offsets
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
                    .collect();
                tracing::warn!(error = %e, offsets = ?parts, "offset commit failed");
            }
        }
    }

    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            tracing::info!(partitions = ?names(tpl), "partitions revoked");
            self.push(Rebalanced::Revoked(partitions_of(tpl)));
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            tracing::info!(partitions = ?names(tpl), "partitions assigned");
            self.push(Rebalanced::Assigned(partitions_of(tpl)));
        }
    }
}

/// `topic/partition` of each element, for the logs.
fn names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

/// A consumer in `group` that stores offsets only when told to. Offsets are committed by
/// librdkafka every `auto.commit.interval.ms` (1 s unless `-X` says otherwise, so a crash
/// repeats about a second of work) in at-least-once mode, and inside transactions in
/// exactly-once mode.
pub fn group_consumer(
    kafka: &KafkaArgs,
    group: &str,
    exactly_once: bool,
    lag: Gauge,
) -> Result<BaseConsumer<SourceCtx>> {
    kafka
        .config(&[
            ("group.id", group),
            ("enable.auto.offset.store", "false"),
            (
                "enable.auto.commit",
                if exactly_once { "false" } else { "true" },
            ),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("statistics.interval.ms", "5000"),
            // Partitions move one by one when members join or leave (KIP-429): the others go
            // on scoring with their state, and an exactly-once transaction is aborted only when
            // a partition it covers moves.
            ("partition.assignment.strategy", "cooperative-sticky"),
            // A member that dies is noticed within 10 s, and a join waits at most for the
            // poll interval of a member that never left (tansu holds joins that long).
            ("session.timeout.ms", "10000"),
            ("max.poll.interval.ms", "30000"),
            // An input topic that goes away and comes back (deleted and recreated, or a broker
            // restarted without its storage) is seen again within 10 s, not librdkafka's
            // default of 5 minutes.
            ("topic.metadata.refresh.interval.ms", "10000"),
        ])
        .create_with_context(SourceCtx::new(lag))
        .context("cannot create the consumer")
}

/// A consumer that reads assigned partitions only (no group membership, no commits).
pub fn reader(kafka: &KafkaArgs) -> Result<BaseConsumer<LogCtx>> {
    kafka
        .config(&[
            ("group.id", "kml-reader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
        ])
        .create_with_context(LogCtx)
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
/// Stops early (with an error) when `token` is cancelled.
pub fn each_message(
    consumer: &BaseConsumer<LogCtx>,
    topic: &str,
    partition: i32,
    start: i64,
    end: End,
    token: &CancellationToken,
    f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    each_message_alive(
        consumer,
        (topic, partition),
        start,
        end,
        token,
        &mut || {},
        f,
    )
}

/// [`each_message`], calling `keep_alive` between messages (it decides itself how often to
/// act): how a warm-up keeps the group consumer polled.
pub fn each_message_alive(
    consumer: &BaseConsumer<LogCtx>,
    (topic, partition): (&str, i32),
    start: i64,
    end: End,
    token: &CancellationToken,
    keep_alive: &mut dyn FnMut(),
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
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
    let wait = Duration::from_millis(if tail { 500 } else { 100 });
    loop {
        if token.is_cancelled() {
            bail!("stopped while reading {topic}/{partition}");
        }
        keep_alive();
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
            Some(Err(e)) => tracing::warn!(error = %e, "read error"),
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

fn position(consumer: &BaseConsumer<LogCtx>) -> i64 {
    let pos = consumer.position().ok();
    let at = pos
        .as_ref()
        .and_then(|p| p.elements().first().map(|e| e.offset()));
    match at {
        Some(Offset::Offset(o)) => o,
        _ => -1,
    }
}

/// Build window state for `topic`/`partition` from the events before `until` (the offset
/// scoring resumes at), leaving out the offsets in `skip` (events whose scoring panicked).
/// `from`: the offset a restored checkpoint covers (its events are in `scorer` already);
/// without one, reading starts at the partition's beginning. Returns the number of events read.
///
/// Without a checkpoint it reads from the partition's beginning: the broker may not map times
/// to offsets (tansu does not), and the events before the lookback window leave no state
/// behind anyway, so the state is exactly what a scorer that never stopped would hold.
#[allow(clippy::too_many_arguments)]
pub fn warm(
    consumer: &BaseConsumer<LogCtx>,
    (topic, partition): (&str, i32),
    from: Option<i64>,
    until: i64,
    skip: &BTreeSet<i64>,
    scorer: &mut dyn Warm,
    token: &CancellationToken,
    keep_alive: &mut dyn FnMut(),
) -> Result<Warmed> {
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .with_context(|| format!("cannot read offsets of {topic}/{partition}"))?;
    let start = from.map_or(low, |f| f.max(low));
    let t0 = Instant::now();
    let mut w = Warmed::default();
    let end = End::At(until);
    let at = (topic, partition);
    each_message_alive(consumer, at, start, end, token, keep_alive, |msg| {
        w.events += 1;
        if !skip.contains(&msg.offset())
            && !scorer.warm(msg.payload().unwrap_or_default(), msg.offset())
        {
            w.panicked = Some(msg.offset());
            bail!("panicked");
        }
        Ok(())
    })
    .or_else(|e| if w.panicked.is_some() { Ok(()) } else { Err(e) })?;
    // Cancelled during the last event (a wait for the schema registry ends so, without the
    // event): the state may lack it, and must not be used (or checkpointed) as if complete.
    if token.is_cancelled() {
        bail!("stopped while reading {topic}/{partition}");
    }
    if w.events > 0 {
        tracing::info!(
            partition = %format!("{topic}/{partition}"),
            events = w.events,
            seconds = t0.elapsed().as_secs_f64(),
            "window state rebuilt"
        );
    }
    Ok(w)
}

/// State a warm-up feeds events into without scoring them.
pub trait Warm {
    /// Take in the event at `offset`; false when processing panicked.
    fn warm(&mut self, payload: &[u8], offset: i64) -> bool;
}

impl Warm for Scorer {
    fn warm(&mut self, payload: &[u8], offset: i64) -> bool {
        Scorer::warm(self, payload, offset)
    }
}

/// What a warm-up did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Warmed {
    /// Events read.
    pub events: u64,
    /// The offset of an event whose processing panicked: warm up again without it.
    pub panicked: Option<i64>,
}
