//! Outputs of the live loop: predictions and dead letters handed to the sink, delivery
//! reports moving each partition's committable offset, and a failed delivery freezing its
//! partition until it is rewound.

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Live, MAX_ERROR_BYTES, SourceEvent, backoff, on_message};
use crate::kafka;
use crate::merge::Merge;
use crate::offsets::Tag;
use crate::score::Scorer;
use crate::sink::{DeadLetter, Report, SendError, To, cut_str};

impl Live {
    /// Produce the output of event `seq` of `slot`, or, when it does not fit in a record, the
    /// event itself as a dead letter in its place.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
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
    pub(super) fn send_dead_letter(
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

    pub(super) fn sink_send(
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
    pub(super) fn failed(&mut self, tag: Tag, e: &KafkaError) {
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

    /// Apply delivery reports: acknowledgements move committable offsets (stored for the next
    /// commit in at-least-once mode), failures freeze partitions. Also replaces a producer
    /// that librdkafka declared fatally failed.
    pub(super) fn settle(&mut self) -> Result<()> {
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

    pub(super) fn on_report(&mut self, r: &Report, now: Instant) {
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

    pub(super) fn count_delivered(&mut self, dead: bool, n: u64) {
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
    pub(super) fn wait_for_room(&mut self) {
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
}
