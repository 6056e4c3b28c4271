//! One consumed message through the scoring core: admitted, scored (or held for the
//! watermark, or forwarded to a merge) and its output handed to the sink.

use std::time::Instant;

use anyhow::Result;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use super::{Live, SourceEvent, on_merge_message, on_ordered_message, send_owed_dead, stall};
use crate::offsets::MAX_SLOTS;
use crate::remote;
use crate::score::{Outcome, Scorer, SourcePos};
use crate::sink::{To, lineage_headers, position_headers};

/// Score one message and hand its output to the sink.
pub(super) fn on_message(live: &mut Live, msg: &BorrowedMessage<'_>) -> Result<()> {
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
    if live.cfg.exactly_once() && !live.txn.failed {
        // In the open transaction: the dead letters this partition still owes.
        send_owed_dead(live, slot);
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
pub(super) fn put_back(live: &mut Live, slot: usize, offset: i64, scorer: Scorer) {
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
        // Exactly-once, an event below the last commit was held when it committed: no
        // reading of the partition after the abort meets it again to dead-letter it.
        if scorer.is_ordered() && live.cfg.exactly_once() && part.resume.is_some_and(|c| bad < c) {
            part.owed_dead.insert(bad);
        }
        if scorer.is_ordered() {
            live.rescore_held(slot, "state rebuilt after a panic; held events rescored");
        }
    } else if part.scorer.is_none() {
        part.scorer = Some(scorer);
    }
}
