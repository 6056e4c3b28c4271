//! Window state of the live loop: rebuilt at a partition's first message (from the newest
//! checkpoint at or below it, then the events after it) with the group consumer kept alive
//! meanwhile, and checkpointed on a cadence, on revocation and at shutdown.

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Live, Part};
use crate::checkpoint::Checkpoints;
use crate::checkpoint::{Header, PRUNE_LAG, Written};
use crate::merge::Merge;
use crate::metrics::Metrics;
use crate::run::Summary;
use crate::score::Scorer;
use crate::source::{self, SourceCtx};

impl Live {
    /// Build the window state of `slot` from the events before `offset`: from the newest
    /// checkpoint at or below it and the events after that, or else from the partition's
    /// beginning. The group consumer is polled meanwhile (its partitions paused), so a long
    /// warm-up never exceeds `max.poll.interval.ms`. A panic during warm-up marks that event
    /// as poison and starts again without it.
    pub(super) fn rebuild(&mut self, slot: usize, offset: i64) -> Result<()> {
        self.metrics.set_ready(false);
        if let Some(Some(p)) = self.parts.get(slot) {
            tracing::info!(
                partition = %format!("{}/{}", p.topic, p.partition), resume = offset,
                "restoring window state; not ready meanwhile"
            );
        }
        let consumer = self.consumer.clone();
        let mut held = Held::default();
        let result = self.rebuild_with(slot, offset, &mut || held.keep_alive(&consumer));
        if result.is_ok() && self.cfg.exactly_once() {
            self.owe_held(slot);
        }
        held.release(
            &consumer,
            &self.parts,
            (slot, offset),
            self.paused_for_backlog,
        );
        self.metrics.set_ready(true);
        result
    }

    /// Build the merge of repartition partition `slot` from its records before `offset`: from
    /// the newest checkpoint at or below it and the records after that, or else from the
    /// partition's beginning, keeping the group alive meanwhile.
    pub(super) fn rebuild_merge(&mut self, slot: usize, offset: i64) -> Result<()> {
        let Some(r) = self.cfg.repartition.as_ref() else {
            return Ok(());
        };
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        self.metrics.set_ready(false);
        tracing::info!(
            partition = %format!("{}/{}", part.topic, part.partition), resume = offset,
            "rebuilding a merge of the repartition topic; not ready meanwhile"
        );
        let mut merge =
            Merge::new(self.model.clone(), &r.input, r.inputs).with_grace(self.cfg.idle_after);
        merge.set_remote(self.remote.is_some());
        let from = restore_snapshot(
            self.ckpt.as_ref(),
            (&mut self.summary, &self.metrics),
            part,
            offset,
            &self.merge_fp,
            "merge restored from a checkpoint",
            |b| merge.load_state(b),
        );
        let consumer = self.consumer.clone();
        let mut held = Held::default();
        let w = source::warm(
            &self.reader,
            (&part.topic, part.partition),
            from,
            offset,
            &part.poison,
            &mut merge,
            &self.token,
            &mut || held.keep_alive(&consumer),
        );
        held.release(
            &consumer,
            &self.parts,
            (slot, offset),
            self.paused_for_backlog,
        );
        self.metrics.set_ready(true);
        let w = w?;
        self.summary.warmed += w.events;
        self.metrics.warmed.inc_by(w.events);
        if let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) {
            part.merge = Some(merge);
        }
        Ok(())
    }

    /// Exactly-once in watermark order: the events the rebuilt state of `slot` holds were
    /// consumed before the committed offset but not predicted (see [`Scorer::owe_held`]); track
    /// them as consumed now, held until released.
    fn owe_held(&mut self, slot: usize) {
        let Some(p) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(scorer) = p.scorer.as_mut() else {
            return;
        };
        let now = Instant::now();
        let tracker = &mut self.tracker;
        let owed = scorer.owe_held(|offset| {
            let seq = tracker.begin(slot, offset, now);
            tracker.hold(slot, seq);
            seq
        });
        if owed > 0 {
            tracing::info!(
                partition = %format!("{}/{}", p.topic, p.partition), owed,
                "events consumed before the commit and still held: scored when released"
            );
        }
    }

    fn rebuild_with(
        &mut self,
        slot: usize,
        offset: i64,
        keep_alive: &mut dyn FnMut(),
    ) -> Result<()> {
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        loop {
            let mut scorer = if self.cfg.repartition.is_some() {
                Scorer::upstream(self.model.clone(), self.cfg.max_event_bytes)
            } else if self.cfg.order == shared_features::Order::Watermark {
                let mut s = Scorer::ordered(self.model.clone(), self.cfg.max_event_bytes);
                s.set_remote(self.remote.is_some());
                s
            } else {
                let mut s = Scorer::new(self.model.clone(), self.cfg.max_event_bytes);
                s.set_remote(self.remote.is_some());
                s
            }
            .with_registry(self.registry.clone());
            for m in self.shadows.models() {
                // Checked at start (run.rs): every shadow computes the champion's features.
                if let Err(why) = scorer.add_shadow(m.clone()) {
                    tracing::error!(error = why, "shadow left out");
                }
            }
            let from = restore_snapshot(
                self.ckpt.as_ref(),
                (&mut self.summary, &self.metrics),
                part,
                offset,
                &self.state_fp,
                "window state restored from a checkpoint",
                |b| scorer.load_state(b),
            );
            // A checkpoint written before a panic may hold the event that caused it.
            scorer.drop_held(&part.poison);
            let w = source::warm(
                &self.reader,
                (&part.topic, part.partition),
                from,
                offset,
                &part.poison,
                &mut scorer,
                &self.token,
                keep_alive,
            )?;
            self.summary.warmed += w.events;
            self.metrics.warmed.inc_by(w.events);
            match w.panicked {
                Some(bad) => {
                    self.metrics.panics.inc();
                    tracing::error!(
                        partition = %format!("{}/{}", part.topic, part.partition), offset = bad,
                        "an event panicked during warm-up (a bug); rebuilding without it"
                    );
                    part.poison.insert(bad);
                }
                None => {
                    part.scorer = Some(scorer);
                    return Ok(());
                }
            }
        }
    }

    /// Checkpoint partitions whose cadence is due.
    pub(super) fn maybe_checkpoint(&mut self) {
        let Some(cadence) = self.cfg.checkpoint else {
            return;
        };
        for slot in 0..self.parts.len() {
            let due = self.parts[slot].as_ref().is_some_and(|p| {
                p.ckpt_events > 0
                    && (p.ckpt_events >= cadence.events || p.ckpt_at.elapsed() >= cadence.interval)
            });
            if due {
                self.checkpoint(slot);
            }
        }
    }

    /// Write a snapshot of `slot`'s window state in the background (at most one in flight per
    /// partition); true when one was started.
    pub(super) fn checkpoint(&mut self, slot: usize) -> bool {
        let Some(c) = self.ckpt.as_ref() else {
            return false;
        };
        let Some(p) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let (state, fingerprint) = match (&p.scorer, &p.merge) {
            (Some(s), _) => (s.save_state(), self.state_fp.clone()),
            (None, Some(m)) => (m.save_state(), self.merge_fp.clone()),
            (None, None) => return false,
        };
        if p.ckpt_busy || p.next < 0 || p.ckpt_offset == Some(p.next) {
            return false;
        }
        let now = Instant::now();
        let committable = if self.cfg.exactly_once() {
            p.resume
        } else {
            p.committable
        };
        if let Some(o) = committable {
            p.samples.push_back((now, o));
        }
        while p.samples.len() > 1 && p.samples[1].0.elapsed() >= PRUNE_LAG {
            p.samples.pop_front();
        }
        let floor = p
            .samples
            .front()
            .filter(|(t, _)| t.elapsed() >= PRUNE_LAG)
            .map(|(_, o)| *o);
        let header = Header {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.next,
            fingerprint,
            model: self.model.id.clone(),
            written_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        c.write(&header, &state, floor);
        p.ckpt_busy = true;
        p.ckpt_events = 0;
        p.ckpt_at = now;
        true
    }

    /// Account for finished checkpoint writes.
    pub(super) fn checkpoints_done(&mut self) {
        let Some(c) = self.ckpt.as_ref() else {
            return;
        };
        let done = c.done();
        for w in done {
            self.on_written(w);
        }
    }

    fn on_written(&mut self, w: Written) {
        let part = self
            .parts
            .iter_mut()
            .flatten()
            .find(|p| p.topic == w.topic && p.partition == w.partition);
        if let Some(p) = part {
            p.ckpt_busy = false;
            if w.error.is_none() {
                p.ckpt_offset = Some(w.offset);
            }
        }
        let at = format!("{}/{}", w.topic, w.partition);
        match &w.error {
            None => {
                self.summary.checkpoints += 1;
                self.metrics.checkpoints.inc();
                self.metrics.checkpoint_bytes.set(w.bytes as i64);
                tracing::debug!(
                    partition = %at, offset = w.offset, bytes = w.bytes, pruned = w.pruned,
                    ms = w.elapsed.as_millis() as u64, "checkpoint written"
                );
            }
            Some(e) => {
                self.metrics.checkpoint_failures.inc();
                tracing::warn!(
                    partition = %at, offset = w.offset, error = %e,
                    "cannot write a checkpoint; scoring goes on and the next one catches up"
                );
            }
        }
    }

    /// Checkpoint every partition at the offset the final commit covers, waiting for the
    /// writes within what is left of `--shutdown-timeout` (since `t0`).
    pub(super) fn final_checkpoints(&mut self, t0: Instant) {
        if self.ckpt.is_none() {
            return;
        }
        let left = self.cfg.shutdown_timeout.saturating_sub(t0.elapsed());
        let deadline = Instant::now() + left.max(Duration::from_secs(1));
        // A write already in flight finishes first: one per partition at a time.
        while self.parts.iter().flatten().any(|p| p.ckpt_busy) && Instant::now() < deadline {
            let got = self
                .ckpt
                .as_ref()
                .map(|c| c.wait(1, deadline - Instant::now()));
            for w in got.into_iter().flatten() {
                self.on_written(w);
            }
        }
        let mut n = 0;
        for slot in 0..self.parts.len() {
            n += usize::from(self.checkpoint(slot));
        }
        let got = self
            .ckpt
            .as_ref()
            .map(|c| c.wait(n, deadline.saturating_duration_since(Instant::now())));
        let got = got.unwrap_or_default();
        if got.len() < n {
            tracing::warn!(
                written = got.len(),
                wanted = n,
                "not every checkpoint was written before the shutdown timeout"
            );
        }
        for w in got {
            self.on_written(w);
        }
    }
}

/// What a warm-up paused of the group consumer to poll it meanwhile, and where to resume.
#[derive(Default)]
struct Held {
    /// The assignment as paused at the first keep-alive.
    paused: Option<TopicPartitionList>,
    /// Partitions that delivered a message while paused (fetched before the pause, or newly
    /// assigned): seek back to the first one after the warm-up, so that none is skipped.
    seek_back: Vec<(String, i32, i64)>,
    last: Option<Instant>,
}

impl Held {
    /// Poll the group consumer (at most once a second) so that the group sees this member
    /// alive; no message is scored meanwhile.
    fn keep_alive(&mut self, consumer: &BaseConsumer<SourceCtx>) {
        // A warm-up shorter than a second leaves the consumer alone.
        let last = *self.last.get_or_insert_with(Instant::now);
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Some(Instant::now());
        if self.paused.is_none()
            && let Ok(a) = consumer.assignment()
        {
            let _ = consumer.pause(&a);
            self.paused = Some(a);
        }
        if let Some(Ok(msg)) = consumer.poll(Duration::ZERO) {
            let (t, p, o) = (msg.topic(), msg.partition(), msg.offset());
            if !self.seek_back.iter().any(|(t2, p2, _)| t2 == t && *p2 == p) {
                self.seek_back.push((t.to_string(), p, o));
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(t, p);
                let _ = consumer.pause(&tpl);
            }
        }
    }

    /// Seek back and resume what was paused, except partitions waiting for a rewind (and
    /// nothing while the producer's backlog keeps everything paused). The partition being
    /// warmed goes on after `at`, the event being scored.
    fn release(
        self,
        consumer: &BaseConsumer<SourceCtx>,
        parts: &[Option<Part>],
        (slot, at): (usize, i64),
        backlog: bool,
    ) {
        let Some(paused) = self.paused else {
            return;
        };
        let warming = parts.get(slot).and_then(Option::as_ref);
        for (t, p, o) in &self.seek_back {
            let o = match warming {
                Some(w) if w.topic == *t && w.partition == *p => at + 1,
                _ => *o,
            };
            if let Err(e) = consumer.seek(t, *p, Offset::Offset(o), Duration::from_secs(5)) {
                tracing::warn!(error = %e, partition = %format!("{t}/{p}"), "cannot seek after warm-up");
            }
        }
        let mut resume = TopicPartitionList::new();
        let mut add = |t: &str, p: i32| {
            let waiting = parts
                .iter()
                .flatten()
                .any(|x| x.topic == t && x.partition == p && x.rewind_at.is_some());
            if !waiting && resume.find_partition(t, p).is_none() {
                resume.add_partition(t, p);
            }
        };
        for e in paused.elements() {
            add(e.topic(), e.partition());
        }
        for (t, p, _) in &self.seek_back {
            add(t, *p);
        }
        if resume.count() > 0 && !backlog {
            let _ = consumer.resume(&resume);
        }
    }
}

/// Load into `load` the newest valid snapshot of `part` at or below `offset` saved under
/// `fingerprint`, counting the snapshots refused and the restore (logged as `restored`); the
/// snapshot's offset, if one loaded.
fn restore_snapshot(
    ckpt: Option<&Checkpoints>,
    (summary, metrics): (&mut Summary, &Metrics),
    part: &mut Part,
    offset: i64,
    fingerprint: &str,
    restored: &'static str,
    load: impl FnMut(&[u8]) -> Result<(), String>,
) -> Option<i64> {
    let mut refused = 0;
    let at = ckpt?.restore(
        &part.topic,
        part.partition,
        offset,
        fingerprint,
        &mut refused,
        load,
    );
    summary.snapshots_refused += refused;
    metrics.snapshots_refused.inc_by(refused);
    let at = at?;
    tracing::info!(
        partition = %format!("{}/{}", part.topic, part.partition), snapshot = at,
        resume = offset, "{restored}"
    );
    summary.restored += 1;
    metrics.restores.inc();
    part.ckpt_offset = Some(at);
    Some(at)
}
