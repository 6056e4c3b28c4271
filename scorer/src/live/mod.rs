//! The live scoring loop of `scorer run`: source -> scoring core -> sink, pipelined.
//!
//! One thread polls the consumer, scores each event and hands its output (prediction or dead
//! letter) to the producer without waiting; librdkafka's own thread sends it. Between batches
//! of at most `--batch-size` events the loop does its bookkeeping: delivery reports move each
//! partition's committable offset ([`Tracker`]), which is stored for librdkafka's periodic
//! commit (at-least-once) or sent inside the next transaction (exactly-once); rebalances drop
//! or create partition state; new model versions are swapped in.
//!
//! Failures, sorted: bad data goes to the dead-letter topic; a delivery that failed for good
//! freezes its partition's committable offset and rewinds the partition there after a backoff
//! (its window state is rebuilt, the events scored again: a repeat, never a loss); an aborted
//! transaction rewinds every partition to the last committed one; a producer with a fatal
//! error is replaced. Nothing blocks for longer than ~100 ms without looking at the
//! cancellation token, so SIGTERM is honoured in every state.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use shared_models::Servable;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::kafka::{self, LogCtx};
use crate::merge::Merge;
use crate::metrics::Metrics;
use crate::offsets::{MAX_SLOTS, Tag, Tracker};
use crate::remote::{self, Remote};
use crate::run::{RunConfig, Summary, peak_rss_mib};
use crate::schema_registry::SchemaRegistry;
use crate::score::{Outcome, Scorer, SourcePos, shadows_fingerprint};
use crate::sink::{
    DeadLetter, Report, SendError, Sink, To, cut_str, lineage_headers, position_headers,
};
use crate::source::{Rebalanced, SourceCtx};

mod answers;
mod drift;
mod held;
mod labels;
mod repartition;
mod restore;
mod rollout;
mod shadows;
mod stall;

pub use labels::{LabelSummary, Labels};
pub use rollout::{Revert, RolloutArgs};
pub use shadows::ShadowSummary;

use held::{dead_letter_message, on_ordered_message, send_released};
use repartition::{MarkSent, forget_marks, merge_fp_of, on_merge_message};

/// Longest text of an error kept in a dead letter's `kml.error` header.
const MAX_ERROR_BYTES: usize = 2048;

/// One input partition's state.
struct Part {
    topic: String,
    partition: i32,
    /// `None`: rebuild window state before the next event.
    scorer: Option<Scorer>,
    /// A partition of the repartition topic: its merge (`None`: rebuild it first).
    is_merge: bool,
    merge: Option<Merge>,
    /// When the partition last delivered an event (for idle marks).
    last_event: Instant,
    /// Offsets of events whose scoring panicked: left out when the state is rebuilt.
    poison: BTreeSet<i64>,
    /// The offset after the last event consumed.
    next: i64,
    /// Exactly-once: the offset the last committed transaction covers (where an abort goes
    /// back to).
    resume: Option<i64>,
    /// When a rewind is due (after a failed delivery), and the backoff between rewinds.
    rewind_at: Option<Instant>,
    backoff: ExponentialBackoff,
    /// Events scored since the last checkpoint, and when it was written.
    ckpt_events: u64,
    ckpt_at: Instant,
    /// A checkpoint write is in flight.
    ckpt_busy: bool,
    /// The offset the last checkpoint covers.
    ckpt_offset: Option<i64>,
    /// The offset committable after every acknowledged output (at-least-once).
    committable: Option<i64>,
    /// Committable offsets as sampled at checkpoints: pruning stays [`crate::checkpoint::PRUNE_LAG`] behind.
    samples: VecDeque<(Instant, i64)>,
    /// Paused at a record whose schema the registry did not give ([`stall`]).
    waiting: Option<stall::Waiting>,
}

impl Part {
    fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            scorer: None,
            is_merge: false,
            merge: None,
            last_event: Instant::now(),
            poison: BTreeSet::new(),
            next: -1,
            resume: None,
            rewind_at: None,
            backoff: backoff(),
            ckpt_events: 0,
            ckpt_at: Instant::now(),
            ckpt_busy: false,
            ckpt_offset: None,
            committable: None,
            samples: VecDeque::new(),
            waiting: None,
        }
    }
}

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Outputs of the open transaction, counted when it commits.
#[derive(Default)]
struct Txn {
    started: Option<Instant>,
    events: usize,
    predicted: u64,
    dead: u64,
    failed: bool,
}

/// The loop's state.
pub struct Live {
    cfg: RunConfig,
    /// Shared so that a message borrowed from it can be handled while the loop's state changes.
    consumer: Arc<BaseConsumer<SourceCtx>>,
    reader: BaseConsumer<LogCtx>,
    sink: Sink,
    tracker: Tracker,
    parts: Vec<Option<Part>>,
    last_slot: usize,
    model: Arc<Servable>,
    metrics: Metrics,
    token: CancellationToken,
    hard: CancellationToken,
    summary: Summary,
    txn: Txn,
    paused_for_backlog: bool,
    first_event: Option<Instant>,
    last_ack: Option<Instant>,
    /// When the process started, and when the first output was acknowledged.
    started: Instant,
    first_ack: Option<Instant>,
    /// Latency in microseconds, for the summary's percentiles.
    latency: Option<hdrhistogram::Histogram<u64>>,
    /// Where window state is checkpointed, if it is.
    ckpt: Option<Checkpoints>,
    /// [`crate::score::state_fingerprint`] of the model serving, with its shadows of other
    /// features ([`shadows_fingerprint`]).
    state_fp: String,
    /// The fingerprint a merge's snapshots are written and restored under.
    merge_fp: String,
    /// Repartitioning: the input partitions assigned (with when), the marks sent last.
    marks: std::collections::BTreeMap<i32, MarkSent>,
    marks_at: Instant,
    /// When the merges' held events were last looked at (the grace, see [`Merge::release`]).
    released_at: Instant,
    /// `--model-server`: the rows waiting for a model server's scores.
    remote: Option<Remote>,
    /// A prediction being written (model-server answers).
    pred: Vec<u8>,
    /// `--value-format avro` or `protobuf`: the schema registry the scorers read writer schemas
    /// from.
    registry: Option<Arc<SchemaRegistry>>,
    /// The wait before reading a record again after the registry did not answer.
    registry_wait: Duration,
    /// `--shadow`: the challengers, and the per-model metrics.
    shadows: shadows::Shadows,
    /// `--drift-window`: the champion's last scored events against its reference.
    drift: drift::Drift,
    /// `--labels`: the label consumer and the join.
    labels: Option<Labels>,
    /// `--rollout-events`: the version on trial.
    candidate: Option<rollout::Candidate>,
    /// `--rollout-revert-alias`: where the alias is pointed back on a rollback.
    revert: Option<rollout::Revert>,
}

/// The fingerprint snapshots of a scorer of `m` are written and restored under: with the
/// state of each shadow of other features (`shadows`, see [`shadows_fingerprint`]).
fn state_fp_of<'a>(
    m: &Servable,
    shadows: impl IntoIterator<Item = &'a Arc<Servable>>,
    cfg: &RunConfig,
) -> String {
    let fp = shadows_fingerprint(m, shadows);
    if cfg.repartition.is_some() {
        format!("{fp}+upstream")
    } else if cfg.order == shared_features::Order::Watermark {
        // Held events and the admission besides the windows: another snapshot format.
        format!("{fp}+watermark")
    } else {
        fp
    }
}

impl Live {
    /// Count [`Summary::first_output_seconds`] from `t` (the process's start) rather than from
    /// the loop's creation.
    pub fn started_at(&mut self, t: Instant) {
        self.started = t;
    }

    /// Wire a loop from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: RunConfig,
        consumer: BaseConsumer<SourceCtx>,
        reader: BaseConsumer<LogCtx>,
        sink: Sink,
        model: Arc<Servable>,
        metrics: Metrics,
        token: CancellationToken,
        hard: CancellationToken,
        ckpt: Option<Checkpoints>,
    ) -> Self {
        let state_fp = state_fp_of(&model, [], &cfg);
        let merge_fp = merge_fp_of(&model);
        let latency = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
        let shadows = shadows::Shadows::new(&model, &metrics);
        let drift = drift::Drift::new(&model, cfg.drift_window);
        Self {
            cfg,
            consumer: Arc::new(consumer),
            reader,
            sink,
            tracker: Tracker::default(),
            parts: Vec::new(),
            last_slot: 0,
            model,
            metrics,
            token,
            hard,
            summary: Summary::default(),
            txn: Txn::default(),
            paused_for_backlog: false,
            first_event: None,
            started: Instant::now(),
            first_ack: None,
            last_ack: None,
            latency,
            ckpt,
            state_fp,
            merge_fp,
            marks: Default::default(),
            marks_at: Instant::now(),
            released_at: Instant::now(),
            remote: None,
            pred: Vec::with_capacity(512),
            registry: None,
            registry_wait: stall::FIRST_WAIT,
            shadows,
            drift,
            labels: None,
            candidate: None,
            revert: None,
        }
    }

    /// Read the input topics' records in Avro or Protobuf through this schema registry.
    pub fn with_registry(mut self, registry: Option<Arc<SchemaRegistry>>) -> Self {
        self.registry = registry;
        self
    }

    /// Score with a model server: features are computed here, scores come from `remote`.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Whether every request slot of the model server is taken and a batch waits.
    fn remote_full(&mut self) -> bool {
        self.remote.as_mut().is_some_and(Remote::full)
    }

    /// Score until cancelled (or idle, with `--exit-when-idle`).
    pub fn run(&mut self, models: &Receiver<Arc<Servable>>) -> Result<()> {
        let mut idle_since = Instant::now();
        while !self.token.is_cancelled() {
            while let Ok(m) = models.try_recv() {
                self.offer(m);
            }
            self.on_rebalances()?;
            self.settle()?;
            self.rewind_due();
            self.resume_waiting();
            self.poll_remote();
            // (Paused: until the room is there, wait_for_room resumes the partitions.)
            if self.paused_for_backlog || self.sink.backlogged() > 0 || self.remote_full() {
                self.wait_for_room();
                idle_since = Instant::now(); // waiting for room is not idleness
                continue;
            }
            let n = self.consume_batch()?;
            if let Some(r) = self.remote.as_mut() {
                r.flush();
            }
            self.send_marks();
            self.release_held();
            self.checkpoints_done();
            self.maybe_checkpoint();
            self.publish_drift(false);
            self.read_labels();
            self.check_rollout();
            if self.cfg.exactly_once() {
                self.maybe_commit_transaction();
            }
            if n > 0 {
                idle_since = Instant::now();
                continue;
            }
            let assigned = self.consumer.assignment().is_ok_and(|a| a.count() > 0);
            self.metrics.set_ready(assigned);
            if !assigned {
                idle_since = Instant::now(); // idle means nothing to read, not still joining
            }
            let quiet = self.sink.in_flight() == 0
                && self.txn.started.is_none()
                && !self.parts.iter().flatten().any(|p| p.waiting.is_some())
                && self.remote.as_ref().is_none_or(Remote::idle);
            // Events held in a merge wait for idle marks (--idle-after) before they count.
            let held = self
                .parts
                .iter()
                .flatten()
                .any(|p| p.merge.as_ref().is_some_and(|m| m.held() > 0));
            let wait = if held {
                self.cfg.idle_after * 2
            } else {
                Duration::ZERO
            };
            if quiet
                && self
                    .cfg
                    .exit_when_idle
                    .is_some_and(|l| idle_since.elapsed() >= l + wait)
            {
                tracing::info!("idle; exiting");
                break;
            }
        }
        Ok(())
    }

    /// Poll up to a batch of messages and score each.
    fn consume_batch(&mut self) -> Result<usize> {
        // Short waits while outputs are in flight, so that their reports are seen promptly.
        let waiting = self.remote.as_ref().is_some_and(|r| !r.idle());
        let mut timeout = if self.sink.in_flight() > 0 || waiting {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        let mut n = 0;
        let consumer = self.consumer.clone();
        while n < self.cfg.batch_size {
            let msg = match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consume error");
                    break;
                }
                Some(Ok(m)) => m,
            };
            timeout = Duration::ZERO;
            n += 1;
            on_message(self, &msg)?;
            if self.sink.backlogged() > 0 {
                break;
            }
            // A transaction holds at most `--transaction-max-events`: the batch ends there, and
            // the caller commits before the next event.
            if self.cfg.exactly_once() && self.txn.events >= self.cfg.transaction_max_events {
                break;
            }
        }
        Ok(n)
    }

    fn slot_of(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(Some(p)) = self.parts.get(self.last_slot)
            && p.partition == partition
            && p.topic == topic
        {
            return self.last_slot;
        }
        let found = self.parts.iter().position(|p| {
            p.as_ref()
                .is_some_and(|p| p.partition == partition && p.topic == topic)
        });
        let slot = match found {
            Some(i) => i,
            None => {
                let i = match self.parts.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        self.parts.push(None);
                        self.parts.len() - 1
                    }
                };
                let mut part = Part::new(topic, partition);
                part.is_merge = self
                    .cfg
                    .repartition
                    .as_ref()
                    .is_some_and(|r| r.topic == topic);
                self.parts[i] = Some(part);
                self.tracker.reset(i, None);
                i
            }
        };
        self.last_slot = slot;
        slot
    }

    /// Produce the output of event `seq` of `slot`, or, when it does not fit in a record, the
    /// event itself as a dead letter in its place.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        slot: usize,
        seq: u64,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: &[(&'static str, &[u8])],
        source: &SourceEvent<'_>,
        to: To,
    ) {
        let mut tag = self.tracker.expect(slot, seq, false);
        if matches!(to, To::Repartition(_)) {
            tag = tag.as_forwarded();
        }
        self.metrics.in_flight.set(self.tracker.in_flight() as i64);
        match self.sink.send(to, key, payload, timestamp, headers, tag) {
            Ok(()) => {}
            Err(SendError::TooLarge(n)) => {
                let why = format!(
                    "the prediction ({n} bytes) exceeds message.max.bytes ({}): the event's key \
                     is too long",
                    self.sink.max_message_bytes()
                );
                self.send_dead_letter(
                    tag.as_dead_letter(),
                    source.key,
                    source.payload,
                    source.timestamp,
                    source.position,
                    &why,
                );
            }
            Err(SendError::Refused(e)) => self.failed(tag, &e),
        }
    }

    /// Send a dead letter, its payload cut to fit under `message.max.bytes` (original size and
    /// SHA-256 in headers) and its error text bounded.
    fn send_dead_letter(
        &mut self,
        tag: Tag,
        key: &[u8],
        original: &[u8],
        timestamp: Option<i64>,
        position: &[(&'static str, &[u8])],
        why: &str,
    ) {
        let mut headers: Vec<(&'static str, &[u8])> = position.to_vec();
        headers.push(("kml.error", cut_str(why, MAX_ERROR_BYTES).as_bytes()));
        let d = DeadLetter::for_limit(original, self.sink.max_message_bytes(), key, &headers);
        if let Some(cut) = &d.cut {
            headers.extend(cut.headers());
        }
        self.sink_send(tag, To::DeadLetters, key, d.payload, timestamp, &headers);
    }

    fn sink_send(
        &mut self,
        tag: Tag,
        to: To,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: &[(&'static str, &[u8])],
    ) {
        match self.sink.send(to, key, payload, timestamp, headers, tag) {
            Ok(()) => {}
            Err(SendError::TooLarge(n)) => {
                let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
                tracing::error!(bytes = n, "a reduced dead letter still does not fit");
                self.failed(tag, &e);
            }
            Err(SendError::Refused(e)) => self.failed(tag, &e),
        }
    }

    /// A delivery failed for good: freeze the partition (at-least-once: rewind it after a
    /// backoff; exactly-once: the transaction will abort).
    fn failed(&mut self, tag: Tag, e: &KafkaError) {
        if !self.tracker.fail(tag) {
            return; // from before a rewind
        }
        self.metrics.delivery_failures.inc();
        self.summary.delivery_failures += 1;
        let slot = tag.slot();
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        tracing::error!(
            partition = %format!("{}/{}", part.topic, part.partition),
            error = %e,
            "an output could not be delivered; nothing past it is committed"
        );
        if matches!(
            e,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            )
        ) {
            tracing::error!(
                output = %self.cfg.output, dlq = %self.cfg.dlq,
                "the output topics are gone from the broker (was its data lost?); creating them"
            );
            if let Err(e) =
                kafka::ensure_topics(&self.cfg.kafka, &[&self.cfg.output, &self.cfg.dlq], 1)
            {
                tracing::error!(error = %format!("{e:#}"), "cannot create the output topics");
            }
        }
        if self.cfg.exactly_once() {
            self.txn.failed = true;
        } else if part.rewind_at.is_none() {
            let wait = part.backoff.next().unwrap_or(Duration::from_secs(30));
            self.pause_for_rewind(
                slot,
                wait,
                "partition paused; it will be rewound to its committable offset",
            );
        }
    }

    /// Pause `slot` and rewind it after `wait` to its first event whose outputs are not all
    /// acknowledged (see [`Live::rewind_due`]).
    fn pause_for_rewind(&mut self, slot: usize, wait: Duration, why: &'static str) {
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        part.rewind_at = Some(Instant::now() + wait);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&part.topic, part.partition);
        let _ = self.consumer.pause(&tpl);
        tracing::warn!(
            partition = %format!("{}/{}", part.topic, part.partition),
            in_ms = wait.as_millis() as u64,
            "{why}"
        );
    }

    /// Rewind `slot` at the next turn of the loop (see [`Live::pause_for_rewind`]).
    fn schedule_rewind(&mut self, slot: usize, why: &'static str) {
        if self
            .parts
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.rewind_at.is_none())
        {
            self.pause_for_rewind(slot, Duration::ZERO, why);
        }
    }

    /// Rewind partitions whose backoff has passed: state rebuilt, consumption resumed at the
    /// first event whose outputs were not all acknowledged.
    fn rewind_due(&mut self) {
        let now = Instant::now();
        for slot in 0..self.parts.len() {
            let due = self.parts[slot]
                .as_ref()
                .is_some_and(|p| p.rewind_at.is_some_and(|t| t <= now));
            if !due {
                continue;
            }
            let Some(offset) = self.tracker.first_incomplete(slot) else {
                continue;
            };
            self.rewind(slot, offset);
            if let Some(p) = self.parts[slot].as_mut() {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&p.topic, p.partition);
                let _ = self.consumer.resume(&tpl);
                p.rewind_at = None;
            }
        }
    }

    fn rewind(&mut self, slot: usize, offset: i64) {
        let Some(p) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        self.tracker.reset(slot, Some(offset));
        p.scorer = None;
        p.merge = None;
        p.next = offset;
        if let Err(e) = self.consumer.seek(
            &p.topic,
            p.partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(error = %e, "cannot seek for a rewind");
        }
        self.metrics.rewinds.inc();
        self.summary.rewinds += 1;
        tracing::warn!(
            partition = %format!("{}/{}", p.topic, p.partition), offset,
            "partition rewound; its events are scored again from there"
        );
    }

    /// Apply delivery reports: acknowledgements move committable offsets (stored for the next
    /// commit in at-least-once mode), failures freeze partitions. Also replaces a producer
    /// that librdkafka declared fatally failed.
    fn settle(&mut self) -> Result<()> {
        let reports = self.sink.reports();
        let now = Instant::now();
        for r in &reports {
            self.on_report(r, now);
        }
        self.sink.recycle(reports);
        let mut tpl = TopicPartitionList::new();
        for slot in 0..self.parts.len() {
            let Some(p) = self.parts[slot].as_mut() else {
                continue;
            };
            if let Some(offset) = self.tracker.advance(slot) {
                p.committable = Some(offset);
                if !self.cfg.exactly_once() {
                    let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(offset));
                }
                if p.rewind_at.is_none() {
                    p.backoff = backoff();
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.store_offsets(&tpl)
        {
            // Revoked meanwhile: the new owner scores again from the last commit.
            tracing::debug!(error = %e, "cannot store offsets");
        }
        self.metrics.in_flight.set(self.tracker.in_flight() as i64);
        let keys: usize = self
            .parts
            .iter()
            .flatten()
            .map(|p| {
                p.scorer.as_ref().map_or(0, Scorer::state_keys)
                    + p.merge.as_ref().map_or(0, Merge::state_keys)
            })
            .sum();
        self.metrics.window_keys.set(keys as i64);
        if let Some(fatal) = self.sink.fatal() {
            self.replace_producer(&fatal)?;
        }
        Ok(())
    }

    fn on_report(&mut self, r: &Report, now: Instant) {
        if r.tag.is_shadow() {
            let error = r.failure.as_ref().map(|f| f.error.to_string());
            self.on_shadow_report(r.tag, error.as_deref(), now);
            return;
        }
        match &r.failure {
            None => {
                let a = self.tracker.ack(r.tag, now);
                if !a.current {
                    return;
                }
                self.last_ack = Some(now);
                self.first_ack.get_or_insert(now);
                if let Some(l) = a.latency {
                    self.metrics.latency.observe(l.as_secs_f64());
                    if let Some(h) = self.latency.as_mut() {
                        let _ = h.record((l.as_micros() as u64).max(1));
                    }
                }
                let dead = r.tag.is_dead_letter();
                if r.tag.is_forwarded() && !dead {
                    self.summary.forwarded += 1;
                    self.metrics.forwarded.inc();
                } else if self.cfg.exactly_once() {
                    if dead {
                        self.txn.dead += 1;
                    } else {
                        self.txn.predicted += 1;
                    }
                } else {
                    self.count_delivered(dead, 1);
                }
            }
            Some(f) if f.too_large() => {
                // The broker's limit is below the producer's: send a reduced dead letter in
                // the record's place, with the source position it carried.
                let pos: Vec<(&'static str, &[u8])> = f
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        let k: &'static str = match k.as_str() {
                            "kml.source.topic" => "kml.source.topic",
                            "kml.source.partition" => "kml.source.partition",
                            "kml.source.offset" => "kml.source.offset",
                            _ => return None,
                        };
                        Some((k, v.as_slice()))
                    })
                    .collect();
                let why = format!(
                    "the broker refused the output ({} bytes) as too large; payload cut to {} \
                     bytes",
                    f.payload_len,
                    f.payload_head.len()
                );
                let mut headers = pos.clone();
                let size = f.payload_len.to_string();
                headers.push(("kml.error", why.as_bytes()));
                headers.push(("kml.payload.bytes", size.as_bytes()));
                headers.push(("kml.payload.truncated", b"true"));
                let key = &f.key[..f.key.len().min(1024)];
                let head = &f.payload_head[..];
                let tag = r.tag.as_dead_letter();
                self.sink_send(tag, To::DeadLetters, key, head, None, &headers);
            }
            Some(f) => self.failed(r.tag, &f.error),
        }
    }

    fn count_delivered(&mut self, dead: bool, n: u64) {
        if dead {
            self.metrics.dead_lettered.inc_by(n);
            self.summary.dead_lettered += n;
        } else {
            self.metrics.predictions.inc_by(n);
            self.summary.predicted += n;
        }
    }

    /// librdkafka's queue is full, or every request to the model server waits: stop fetching
    /// until there is room, while still polling the consumer so that the group sees it alive.
    fn wait_for_room(&mut self) {
        if !self.paused_for_backlog
            && let Ok(a) = self.consumer.assignment()
        {
            let _ = self.consumer.pause(&a);
            self.paused_for_backlog = true;
        }
        for (tag, e) in self.sink.drain_backlog() {
            self.failed(tag, &e);
        }
        self.poll_remote();
        if self.sink.backlogged() > 0 || self.remote_full() {
            // Paused partitions deliver nothing; a message fetched before the pause is scored.
            let consumer = self.consumer.clone();
            if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(10))
                && let Err(e) = on_message(self, &msg)
            {
                tracing::error!(error = %format!("{e:#}"), "while the producer's queue is full");
            }
            return;
        }
        if let Ok(a) = self.consumer.assignment() {
            let _ = self.consumer.resume(&a);
        }
        self.paused_for_backlog = false;
        // Partitions paused for a rewind stay paused.
        for p in self
            .parts
            .iter()
            .flatten()
            .filter(|p| p.rewind_at.is_some())
        {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&p.topic, p.partition);
            let _ = self.consumer.pause(&tpl);
        }
    }

    fn on_rebalances(&mut self) -> Result<()> {
        for e in self.consumer.context().rebalances() {
            match e {
                Rebalanced::Revoked(ps) => {
                    if ps.is_empty() {
                        continue; // cooperative rebalancing: nothing of ours moved
                    }
                    self.settle()?;
                    for (t, p) in &ps {
                        if let Some(slot) = self.parts.iter().position(|x| {
                            x.as_ref()
                                .is_some_and(|x| &x.topic == t && x.partition == *p)
                        }) {
                            // For its next owner (or for us, if it comes back).
                            self.checkpoint(slot);
                            self.parts[slot] = None;
                            self.tracker.reset(slot, None);
                        }
                    }
                    if let Some(r) = &self.cfg.repartition {
                        forget_marks(&mut self.marks, &ps, &r.input);
                    }
                    // The partitions kept go back to the last committed transaction.
                    if self.cfg.exactly_once() && self.txn.started.is_some() {
                        self.abort_transaction("partitions revoked mid-transaction");
                    }
                }
                Rebalanced::Assigned(ps) => {
                    if let Some(r) = &self.cfg.repartition {
                        for (_, p) in ps.iter().filter(|(t, _)| *t == r.input) {
                            self.marks.insert(*p, MarkSent::assigned());
                        }
                    }
                    // State is built on each partition's first message, from wherever the
                    // group's committed offset puts it. (With cooperative rebalancing an
                    // assignment lists only the partitions added.)
                    let assigned = self.consumer.assignment().is_ok_and(|a| a.count() > 0);
                    self.metrics.set_ready(assigned);
                }
            }
        }
        Ok(())
    }

    fn swap_model(&mut self, m: Arc<Servable>) {
        let mut kept = true;
        let mut rescore = Vec::new();
        for (slot, p) in self.parts.iter_mut().enumerate() {
            let Some(p) = p.as_mut() else {
                continue;
            };
            let held = p.scorer.as_ref().map_or(0, Scorer::held);
            if let Some(s) = p.scorer.as_mut()
                && !s.swap(m.clone())
            {
                kept = false;
                p.scorer = None; // rebuilt with the new pipeline before the next event
                if held > 0 {
                    rescore.push(slot); // the held events were dropped with the state
                }
            }
            if let Some(g) = p.merge.as_mut()
                && !g.swap(m.clone())
            {
                kept = false;
                p.merge = None;
            }
        }
        for slot in rescore {
            self.schedule_rewind(
                slot,
                "the new model's features differ: held events rescored",
            );
        }
        let own_state = self.cfg.order == shared_features::Order::Arrival;
        self.shadows.swap_champion(&m, own_state, &self.metrics);
        self.metrics.reloads.inc();
        self.metrics.model_version.set(m.version as i64);
        self.merge_fp = merge_fp_of(&m);
        tracing::info!(model = %m.id, window_state_kept = kept, "model swapped in");
        self.model = m;
        self.refresh_state_fp();
        self.reset_drift();
    }

    fn maybe_commit_transaction(&mut self) {
        let Some(started) = self.txn.started else {
            return;
        };
        if self.txn.failed {
            self.abort_transaction("an output of the transaction failed");
            return;
        }
        if started.elapsed() >= self.cfg.transaction_interval
            || self.txn.events >= self.cfg.transaction_max_events
        {
            self.commit_transaction(Duration::from_secs(10));
        }
    }

    /// Commit the open transaction with the offsets after every event it covers.
    fn commit_transaction(&mut self, timeout: Duration) {
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.iter().flatten().filter(|p| p.next >= 0) {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
        }
        let Some(group) = self.consumer.group_metadata() else {
            self.abort_transaction("the consumer has no group metadata");
            return;
        };
        match self.sink.commit(&tpl, &group, timeout) {
            Ok(()) => {
                // Every report of the transaction has arrived once commit returns.
                let _ = self.settle();
                if self.txn.failed {
                    tracing::error!("an output failed after its transaction committed");
                }
                self.metrics.transactions.inc();
                self.summary.transactions += 1;
                let (predicted, dead) = (self.txn.predicted, self.txn.dead);
                self.count_delivered(false, predicted);
                self.count_delivered(true, dead);
                for p in self.parts.iter_mut().flatten().filter(|p| p.next >= 0) {
                    p.resume = Some(p.next);
                }
                self.txn = Txn::default();
            }
            Err(e) => self.abort_transaction(&format!("{e:#}")),
        }
    }

    /// Abort the open transaction and rewind every partition to the last committed one.
    fn abort_transaction(&mut self, why: &str) {
        tracing::error!(reason = why, "aborting the transaction");
        if let Err(e) = self.sink.abort(Duration::from_secs(10)) {
            tracing::error!(error = %e, "cannot abort the transaction");
        }
        self.metrics.transactions_aborted.inc();
        self.summary.transactions_aborted += 1;
        let _ = self.sink.reports(); // of aborted records: they count for nothing
        self.txn = Txn::default();
        for slot in 0..self.parts.len() {
            let resume = self.parts[slot]
                .as_ref()
                .and_then(|p| p.resume.or(self.tracker.first_incomplete(slot)));
            if let Some(offset) = resume {
                self.rewind(slot, offset);
            }
        }
        if let Some(fatal) = self.sink.fatal()
            && let Err(e) = self.replace_producer(&fatal)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot replace the producer");
        }
    }

    fn replace_producer(&mut self, fatal: &str) -> Result<()> {
        tracing::error!(error = fatal, "the producer failed fatally; replacing it");
        self.metrics.producer_restarts.inc();
        let sink = Sink::new(
            &self.cfg.kafka,
            &self.cfg.output,
            &self.cfg.dlq,
            self.cfg.transactional_id.as_deref(),
        )?;
        let sink = match &self.cfg.repartition {
            Some(r) => sink.with_repartition(&r.topic),
            None => sink,
        }
        .with_shadows(&self.cfg.shadow_output);
        if self.cfg.exactly_once() {
            crate::retry_until_cancelled(&self.token, "cannot initialise transactions", || {
                sink.init_transactions(Duration::from_secs(10))
                    .context("cannot initialise transactions")
            })?;
        }
        self.sink = sink;
        self.txn = Txn::default();
        // The old producer's outputs in flight are lost with it: score them again.
        for slot in 0..self.parts.len() {
            let at = if self.cfg.exactly_once() {
                self.parts[slot].as_ref().and_then(|p| p.resume)
            } else {
                self.tracker.first_incomplete(slot)
            };
            if let Some(offset) = at {
                self.rewind(slot, offset);
            }
        }
        Ok(())
    }

    /// Flush, commit and leave the group, all within `--shutdown-timeout` (a second signal
    /// stops waiting at once); return the summary.
    pub fn finish(&mut self, clean: bool) -> Summary {
        let t0 = Instant::now();
        self.metrics.set_ready(false);
        let deadline = self.cfg.shutdown_timeout;
        if clean {
            self.drain_remote(deadline);
        }
        if clean && self.cfg.exactly_once() {
            if self.txn.started.is_some() {
                self.commit_transaction(deadline);
            }
        } else if !self.sink.flush(deadline, Some(&self.hard)) {
            tracing::warn!(
                in_flight = self.sink.in_flight(),
                "outputs still in flight at shutdown are not committed"
            );
        }
        let _ = self.settle();
        self.final_checkpoints(t0);
        let mut s = std::mem::take(&mut self.summary);
        s.model = self.model.id.clone();
        s.shadows = self.shadows.summary();
        self.publish_drift(true);
        s.drift = self.drift_report();
        s.labels = self.label_summary();
        s.peak_rss_mib = peak_rss_mib();
        if let (Some(t0), Some(t1)) = (self.first_event, self.last_ack) {
            s.busy_seconds = t1.duration_since(t0).as_secs_f64();
            if s.busy_seconds > 0.0 {
                s.events_per_second = s.consumed as f64 / s.busy_seconds;
            }
        }
        s.first_output_seconds = self
            .first_ack
            .map(|t| t.duration_since(self.started).as_secs_f64());
        if let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            s.latency_p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
            s.latency_p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
        }
        s
    }

    /// Commit what is committable and close the consumer (leaving the group now rather than at
    /// the session timeout), on a thread of its own so that a broker that does not answer
    /// cannot hold the exit for longer than `--shutdown-timeout`.
    pub fn close(self) {
        let Live {
            consumer,
            cfg,
            sink,
            ..
        } = self;
        let eos = cfg.exactly_once();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("close".into())
            .spawn(move || {
                if !eos {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) => tracing::info!("offsets committed"),
                        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => tracing::warn!(error = %e, "final commit"),
                    }
                }
                consumer.unsubscribe();
                drop(consumer);
                drop(sink);
                let _ = tx.send(());
            });
        if spawned.is_ok() && rx.recv_timeout(cfg.shutdown_timeout).is_err() {
            tracing::warn!("the broker did not answer the final commit in time; exiting without");
        }
    }
}

/// Score one message and hand its output to the sink.
fn on_message(live: &mut Live, msg: &BorrowedMessage<'_>) -> Result<()> {
    let slot = live.slot_of(msg.topic(), msg.partition());
    if slot >= MAX_SLOTS {
        anyhow::bail!("more than {MAX_SLOTS} input partitions");
    }
    let offset = msg.offset();
    if live.skip_while_waiting(slot, offset) {
        return Ok(());
    }
    let is_merge = live.parts[slot].as_ref().is_some_and(|p| p.is_merge);
    // Before anything counts the record: it is read again once the registry answers.
    if !is_merge && let Some(r) = &live.registry {
        match r.prepare(msg.payload()) {
            Ok(()) => live.registry_wait = stall::FIRST_WAIT,
            Err(why) => {
                live.wait_for_registry(slot, offset, &why);
                return Ok(());
            }
        }
    }
    let now = Instant::now();
    live.first_event.get_or_insert(now);
    live.metrics.events_in.inc();
    live.summary.consumed += 1;
    if is_merge {
        return on_merge_message(live, slot, msg);
    }
    if live.parts[slot]
        .as_ref()
        .is_some_and(|p| p.scorer.is_none())
    {
        live.rebuild(slot, offset)?;
    }
    let seq = live.tracker.begin(slot, offset, now);
    if live.cfg.exactly_once() && live.txn.started.is_none() {
        if let Err(e) = live.sink.begin() {
            // Not fatal by itself: the transaction it should have opened is aborted and the
            // partitions rewound.
            live.txn.started = Some(now);
            live.txn.failed = true;
            tracing::error!(error = %e, "cannot begin a transaction");
        } else {
            live.txn.started = Some(now);
        }
    }
    live.txn.events += 1;
    let Some(part) = live.parts[slot].as_mut() else {
        return Ok(());
    };
    part.next = offset + 1;
    part.ckpt_events += 1;
    part.last_event = now;
    if part.resume.is_none() {
        part.resume = Some(offset);
    }
    if live.cfg.pass_through {
        let (key, payload) = (
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
        );
        let ts = msg.timestamp().to_millis();
        let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
        let position = position_headers(msg, &mut pbuf, &mut obuf);
        let source = SourceEvent {
            key,
            payload,
            timestamp: ts,
            position: &position,
        };
        live.send(slot, seq, key, payload, ts, &[], &source, To::Output);
        return Ok(());
    }
    // The scorer leaves its slot while its buffers are borrowed for the send.
    let Some(mut scorer) = part.scorer.take() else {
        return Ok(());
    };
    if scorer.is_ordered() {
        on_ordered_message(live, slot, seq, msg, &mut scorer);
        put_back(live, slot, offset, scorer);
        return Ok(());
    }
    let pos = SourcePos {
        topic: msg.topic(),
        partition: msg.partition(),
        offset,
    };
    let outcome = scorer.score(msg.payload(), pos);
    let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
    let position = position_headers(msg, &mut pbuf, &mut obuf);
    let source = SourceEvent {
        key: msg.key().unwrap_or_default(),
        payload: msg.payload().unwrap_or_default(),
        timestamp: msg.timestamp().to_millis(),
        position: &position,
    };
    match outcome {
        Outcome::Scored { event_time } if scorer.is_remote() => {
            if let Some(r) = live.remote.as_mut() {
                let pushed = remote::Pushed {
                    slot,
                    seq,
                    partition: msg.partition(),
                    offset,
                    event_time,
                    key: scorer.key(),
                    source: (source.key, source.payload, source.timestamp),
                };
                r.push(pushed, scorer.features(), scorer.model());
                live.tracker.hold(slot, seq);
            }
        }
        Outcome::Scored { event_time } => {
            let all = lineage_headers(&position, &scorer.model().id);
            let (headers, to): (&[(&'static str, &[u8])], To) = if live.cfg.repartition.is_some() {
                // The source position is in the record; lineage goes on the prediction.
                (&[], To::Repartition(None))
            } else if live.cfg.lineage_headers {
                (&all, To::Output)
            } else {
                (&[], To::Output)
            };
            let (key, prediction) = (scorer.key(), scorer.prediction());
            live.send(
                slot,
                seq,
                key,
                prediction,
                Some(event_time),
                headers,
                &source,
                to,
            );
            if to == To::Output {
                live.after_champion(slot, seq, &scorer, &position, event_time);
            }
        }
        Outcome::Filtered => {
            live.metrics.filtered.inc();
            live.summary.filtered += 1;
        }
        Outcome::Dead(reason) => {
            let tag = live.tracker.expect(slot, seq, true);
            let s = &source;
            live.send_dead_letter(tag, s.key, s.payload, s.timestamp, s.position, &reason);
        }
    }
    put_back(live, slot, offset, scorer);
    Ok(())
}

/// Return `scorer` to its slot after the event at `offset`; a scorer that panicked is dropped
/// instead, the event that caused it poisoned (left out when the state is rebuilt). In
/// watermark order its held events went with it: the partition is rewound to rescore them.
fn put_back(live: &mut Live, slot: usize, offset: i64, scorer: Scorer) {
    let Some(part) = live.parts[slot].as_mut() else {
        return;
    };
    if scorer.broken() {
        live.metrics.panics.inc();
        let bad = scorer.culprit().unwrap_or(offset);
        tracing::error!(
            partition = %format!("{}/{}", part.topic, part.partition), offset = bad,
            "scoring panicked (a bug); the event is dead-lettered and the state rebuilt without it"
        );
        part.poison.insert(bad);
        if scorer.is_ordered() {
            live.schedule_rewind(slot, "state rebuilt after a panic; held events rescored");
        }
    } else if part.scorer.is_none() {
        part.scorer = Some(scorer);
    }
}

/// The consumed event an output stands for: what goes to the dead-letter topic when the output
/// cannot be sent.
struct SourceEvent<'a> {
    key: &'a [u8],
    payload: &'a [u8],
    timestamp: Option<i64>,
    /// Its lineage headers (`kml.source.*`).
    position: &'a [(&'static str, &'a [u8])],
}
