//! Delayed labels in the live loop (`scorer run --labels TOPIC`, [`crate::labels`]): a second
//! consumer, outside the group, reads every partition of the labels topic; between batches the
//! loop joins what it read with the predictions made (the champion's and each shadow's), and
//! brings the accuracy gauges up to date at most every five seconds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::Live;
use crate::kafka::{self, LogCtx};
use crate::labels::{Join, LabelArgs, LabelReader, LabelsFrom, ModelAccuracy, Read};

/// How often the gauges are brought up to date.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// Most label records read between two batches of events.
const MOST_PER_STEP: usize = 10_000;

/// The label consumer, the reader of its records, and the join.
pub struct Labels {
    consumer: BaseConsumer<LogCtx>,
    reader: LabelReader,
    join: Join,
    topic: String,
    published: Instant,
    fresh: bool,
    /// The counts as last added to the counters.
    counted: crate::labels::Counts,
}

impl Labels {
    /// Assign every partition of `--labels` (from its beginning or its end) to a consumer of
    /// its own. `None` without `--labels`.
    pub fn open(
        args: &LabelArgs,
        kafka_args: &crate::kafka::KafkaArgs,
        reader: LabelReader,
    ) -> Result<Option<Self>> {
        let Some(topic) = args.labels.clone() else {
            return Ok(None);
        };
        let consumer = crate::source::reader(kafka_args)?;
        let partitions = kafka::partitions(&consumer, &topic)
            .with_context(|| format!("--labels `{topic}`: cannot list its partitions"))?;
        let mut tpl = TopicPartitionList::new();
        let at = match args.labels_from {
            LabelsFrom::Beginning => Offset::Beginning,
            LabelsFrom::End => Offset::End,
        };
        for p in partitions {
            tpl.add_partition_offset(&topic, p, at)?;
        }
        consumer
            .assign(&tpl)
            .context("cannot assign the labels topic")?;
        tracing::info!(topic = %topic, from = ?args.labels_from, "reading delayed labels");
        let horizon_ms = (args.label_horizon * 1000.0) as i64;
        Ok(Some(Self {
            consumer,
            reader,
            join: Join::new(
                horizon_ms,
                args.label_window as usize,
                args.label_max_pending as usize,
            ),
            topic,
            published: Instant::now(),
            fresh: false,
            counted: crate::labels::Counts::default(),
        }))
    }

    /// The slot of a model in the join.
    pub(super) fn model(&mut self, id: &str, role: &'static str) -> usize {
        self.join.model(id, role)
    }

    /// Keep the champion's and the candidate's scores of the same labelled events side by side.
    pub(super) fn watch(&mut self, champion: &str, candidate: &str) {
        let (a, b) = (
            self.join.model(champion, "champion"),
            self.join.model(candidate, "candidate"),
        );
        self.join.watch(a, b);
    }

    /// Stop keeping them.
    pub(super) fn unwatch(&mut self) {
        self.join.unwatch();
    }

    /// The candidate's and the champion's ROC AUC on the same labelled events, and how many.
    pub(super) fn paired_auc(&self) -> Option<(f64, f64, usize)> {
        self.join.paired_auc()
    }

    /// A model scored an event.
    pub(super) fn predicted(&mut self, key: &[u8], event_time: i64, slot: usize, score: f64) {
        self.join.predicted(key, event_time, slot, score);
        self.fresh = true;
    }
}

/// What `scorer run --labels` did, in its summary.
#[derive(serde::Serialize, Debug, Clone)]
pub struct LabelSummary {
    /// What became of the label records and the predictions.
    #[serde(flatten)]
    pub counts: crate::labels::Counts,
    /// Predictions still waiting for their label at exit (within the horizon).
    pub pending_predictions: u64,
    /// Labels still waiting for their prediction at exit.
    pub pending_labels: u64,
    /// Each model's accuracy over its window at exit.
    pub models: Vec<ModelAccuracy>,
}

impl Live {
    /// Read what the labels topic has (at most [`MOST_PER_STEP`] records), join it, and bring
    /// the gauges up to date when due.
    pub(super) fn read_labels(&mut self) {
        let Some(l) = self.labels.as_mut() else {
            return;
        };
        for _ in 0..MOST_PER_STEP {
            let msg = match l.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(topic = %l.topic, error = %e, "labels topic");
                    break;
                }
                Some(Ok(m)) => m,
            };
            l.fresh = true;
            let Some(payload) = msg.payload() else {
                l.join.malformed();
                continue;
            };
            match l.reader.read(payload) {
                Ok(Read::Label(key, t, y)) => l.join.labelled(key, t, y),
                Ok(Read::NoLabel) => l.join.no_label(),
                Ok(Read::Filtered) => {} // the event was never scored
                Err(why) => {
                    tracing::debug!(
                        topic = %l.topic, partition = msg.partition(), offset = msg.offset(),
                        error = %why, "a malformed label record"
                    );
                    l.join.malformed();
                }
            }
        }
        self.publish_labels(false);
    }

    /// Bring the accuracy gauges up to date (at most every five seconds unless `now`).
    pub(super) fn publish_labels(&mut self, now: bool) {
        let Some(l) = self.labels.as_mut() else {
            return;
        };
        let due = l.fresh && l.published.elapsed() >= PUBLISH_EVERY;
        if !(now || due) {
            return;
        }
        l.published = Instant::now();
        l.fresh = false;
        let m = &self.metrics;
        let (c, was) = (&l.join.counts, &l.counted);
        for (outcome, n, before) in [
            ("joined", c.joined, was.joined),
            ("duplicate", c.duplicate, was.duplicate),
            ("unmatched", c.unmatched, was.unmatched),
            ("too_late", c.too_late, was.too_late),
            ("malformed", c.malformed, was.malformed),
            ("no_label", c.no_label, was.no_label),
        ] {
            let counter = m
                .labels
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .clone();
            counter.inc_by(n - before);
        }
        m.unlabelled.inc_by(c.unlabelled - was.unlabelled);
        l.counted = c.clone();
        let (preds, early) = l.join.pending();
        m.label_pending.set(preds as i64);
        m.label_early.set(early as i64);
        for a in l.join.report() {
            m.accuracy(&a);
        }
    }

    /// The labels' part of the summary.
    pub(super) fn label_summary(&mut self) -> Option<LabelSummary> {
        self.read_labels();
        self.publish_labels(true);
        let l = self.labels.as_ref()?;
        let (preds, early) = l.join.pending();
        Some(LabelSummary {
            counts: l.join.counts.clone(),
            pending_predictions: preds as u64,
            pending_labels: early as u64,
            models: l.join.report(),
        })
    }
}
