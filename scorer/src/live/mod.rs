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

use anyhow::Result;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use shared_models::Servable;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::kafka::LogCtx;
use crate::merge::Merge;
use crate::metrics::Metrics;
use crate::offsets::Tracker;
use crate::remote::Remote;
use crate::run::{RunConfig, Summary, peak_rss_mib};
use crate::schema_registry::SchemaRegistry;
use crate::score::{Scorer, shadows_fingerprint};
use crate::sink::Sink;
use crate::source::{Rebalanced, SourceCtx};

mod answers;
mod delivery;
mod drift;
mod event;
mod held;
mod labels;
mod repartition;
mod restore;
mod rewind;
mod rollout;
mod shadows;
mod stall;
mod txn;

pub use labels::{LabelSummary, Labels};
pub use rollout::{Revert, RolloutArgs};
pub use shadows::ShadowSummary;

use event::on_message;
use held::{dead_letter_message, on_ordered_message, send_owed_dead, send_released};
use repartition::{MarkSent, forget_marks, merge_fp_of, on_merge_message};
use txn::Txn;

/// Longest text of an error kept in a dead letter's `kml.error` header.
const MAX_ERROR_BYTES: usize = 2048;

/// The consumed event an output stands for: what goes to the dead-letter topic when the output
/// cannot be sent.
struct SourceEvent<'a> {
    key: &'a [u8],
    payload: &'a [u8],
    timestamp: Option<i64>,
    /// Its lineage headers (`kml.source.*`).
    position: &'a [(&'static str, &'a [u8])],
}

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
    /// Exactly-once in watermark order: offsets of events below the last commit whose release
    /// panicked. The commit covered them held, so no reading of the partition dead-letters
    /// them: each is owed its dead letter until a transaction holding it commits.
    owed_dead: BTreeSet<i64>,
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
            owed_dead: BTreeSet::new(),
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
            // the caller commits before the next event. A failed one ends it too: the caller
            // aborts it, and every event after it would be read again anyway (after a panic, the
            // next one would first rebuild a state that the abort throws away).
            if self.cfg.exactly_once()
                && (self.txn.failed || self.txn.events >= self.cfg.transaction_max_events)
            {
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
            self.rescore_held(
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
