//! Rewinds: a partition whose delivery failed for good is read again from its committable
//! offset after a backoff, its window state rebuilt, so events repeat but are never lost.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::Live;

impl Live {
    /// Pause `slot` and rewind it after `wait` to its first event whose outputs are not all
    /// acknowledged (see [`Live::rewind_due`]).
    pub(super) fn pause_for_rewind(&mut self, slot: usize, wait: Duration, why: &'static str) {
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
    pub(super) fn schedule_rewind(&mut self, slot: usize, why: &'static str) {
        if self
            .parts
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.rewind_at.is_none())
        {
            self.pause_for_rewind(slot, Duration::ZERO, why);
        }
    }

    /// The held events of `slot` in watermark order were dropped with its state (a panic, a
    /// model of other features): score them again. At-least-once, the partition is rewound to
    /// its first event not complete, the first held one at the latest. Exactly-once, the open
    /// transaction is aborted (at the loop's next turn) and every partition goes back to the
    /// last commit, whose rebuilt state owes the held events again; with no transaction open,
    /// everything consumed is committed, and the partition's next event rebuilds that state.
    pub(super) fn rescore_held(&mut self, slot: usize, why: &'static str) {
        if !self.cfg.exactly_once() {
            self.schedule_rewind(slot, why);
        } else if self.txn.started.is_some() {
            tracing::warn!(reason = why, "the open transaction will be aborted");
            self.txn.failed = true;
        }
    }

    /// Rewind partitions whose backoff has passed: state rebuilt, consumption resumed at the
    /// first event whose outputs were not all acknowledged.
    pub(super) fn rewind_due(&mut self) {
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

    pub(super) fn rewind(&mut self, slot: usize, offset: i64) {
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
}
