//! Events released after being held (by a repartition merge, or for the watermark in
//! `--order watermark`), and the messages refused on arrival.

use std::time::Instant;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use super::{Live, SourceEvent};
use crate::merge::Released;
use crate::remote;
use crate::score::{Admitted, Outcome, Scorer, SourcePos};
use crate::sink::{To, lineage_headers, position_headers};
use crate::source;

/// Send the prediction (or dead letter) of an event a merge or the watermark released, and
/// stop holding it (a row for a model server stays held until its answer).
pub(super) fn send_released(live: &mut Live, slot: usize, scorer: &Scorer, r: Released<'_>) {
    let Some(seq) = r.seq else {
        return; // consumed at warm-up: delivered before
    };
    let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
    let position = crate::sink::source_headers(r.pos, &mut pbuf, &mut obuf);
    match r.outcome {
        Some(Outcome::Scored { event_time }) if scorer.is_remote() => {
            if let Some(remote) = live.remote.as_mut() {
                let pushed = remote::Pushed {
                    slot,
                    seq,
                    partition: r.pos.partition,
                    offset: r.pos.offset,
                    event_time,
                    key: scorer.key(),
                    source: (&[], &[], None),
                };
                remote.push(pushed, scorer.features(), scorer.model());
                return; // held until the model server answers
            }
        }
        Some(Outcome::Scored { event_time }) => {
            let all = lineage_headers(&position, &scorer.model().id);
            let headers: &[(&'static str, &[u8])] =
                if live.cfg.lineage_headers { &all } else { &[] };
            let (key, prediction) = (scorer.key(), scorer.prediction());
            let source = SourceEvent {
                key,
                payload: prediction,
                timestamp: Some(event_time),
                position: &position,
            };
            live.send(
                slot,
                seq,
                key,
                prediction,
                Some(event_time),
                headers,
                &source,
                To::Output,
            );
            live.after_champion(slot, seq, scorer, &position, event_time);
        }
        Some(Outcome::Dead(why)) => {
            let tag = live.tracker.expect(slot, seq, true);
            live.send_dead_letter(tag, &[], &[], None, &position, &why);
        }
        Some(Outcome::Filtered) | None => {}
    }
    live.tracker.unhold(slot, seq);
}

/// Watermark order: admit the event (held for the watermark, filtered or dead-lettered), then
/// score and send what the watermark has passed.
pub(super) fn on_ordered_message(
    live: &mut Live,
    slot: usize,
    seq: u64,
    msg: &BorrowedMessage<'_>,
    scorer: &mut Scorer,
) {
    let offset = msg.offset();
    let poisoned = live.parts[slot]
        .as_ref()
        .is_some_and(|p| p.poison.contains(&offset));
    let admitted = if poisoned {
        Admitted::Dead("its scoring panicked before (a bug; please report it)".into())
    } else {
        scorer.push(msg.payload(), offset, Some(seq))
    };
    match admitted {
        Admitted::Held => live.tracker.hold(slot, seq),
        Admitted::Filtered => {
            live.metrics.filtered.inc();
            live.summary.filtered += 1;
        }
        Admitted::Dead(why) => {
            dead_letter_message(live, slot, seq, msg, &why);
        }
    }
    if !scorer.broken() {
        scorer.release(msg.topic(), msg.partition(), |s, r| {
            send_released(live, slot, s, r);
        });
    }
}

/// Dead-letter the consumed message `msg` (event `seq` of `slot`) as it is, with why.
pub(super) fn dead_letter_message(
    live: &mut Live,
    slot: usize,
    seq: u64,
    msg: &BorrowedMessage<'_>,
    why: &str,
) {
    let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
    let position = position_headers(msg, &mut pbuf, &mut obuf);
    let tag = live.tracker.expect(slot, seq, true);
    let (key, payload) = (
        msg.key().unwrap_or_default(),
        msg.payload().unwrap_or_default(),
    );
    let ts = msg.timestamp().to_millis();
    live.send_dead_letter(tag, key, payload, ts, &position, why);
}

/// Exactly-once in watermark order, in an open transaction: dead-letter each event of `slot`
/// below the last commit whose release panicked (`Part::owed_dead`) that this transaction has
/// not dead-lettered yet, read back from the partition (only its position, if retention
/// deleted it). After an abort the next transaction sends them again, until one commits.
pub(super) fn send_owed_dead(live: &mut Live, slot: usize) {
    let Some(part) = live.parts[slot].as_ref() else {
        return;
    };
    let sent = &live.txn.letters;
    let owed: Vec<i64> = (part.owed_dead.iter().copied())
        .filter(|&o| !sent.contains(&(slot, o)))
        .collect();
    if owed.is_empty() {
        return;
    }
    let (topic, partition) = (part.topic.clone(), part.partition);
    for offset in owed {
        let mut read = None;
        let end = source::End::At(offset + 1);
        let fetched = source::each_message(
            &live.reader,
            &topic,
            partition,
            offset,
            end,
            &live.token,
            |m| {
                if m.offset() == offset {
                    read = Some(m.detach());
                }
                Ok(())
            },
        );
        if let Err(e) = fetched {
            tracing::warn!(
                partition = %format!("{topic}/{partition}"), offset, error = %format!("{e:#}"),
                "cannot read back an event owed its dead letter; sent without its payload"
            );
        }
        let seq = live.tracker.begin(slot, offset, Instant::now());
        let tag = live.tracker.expect(slot, seq, true);
        let pos = SourcePos {
            topic: &topic,
            partition,
            offset,
        };
        let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
        let position = crate::sink::source_headers(pos, &mut pbuf, &mut obuf);
        let (key, payload, ts) = read.as_ref().map_or((&[][..], &[][..], None), |m| {
            let ts = m.timestamp().to_millis();
            (
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
                ts,
            )
        });
        tracing::warn!(
            partition = %format!("{topic}/{partition}"), offset,
            "an event below the last commit whose release panicked is dead-lettered in this transaction"
        );
        live.send_dead_letter(tag, key, payload, ts, &position, RELEASE_PANICKED);
        live.txn.letters.push((slot, offset));
    }
}

/// Why an event owed its dead letter ([`send_owed_dead`]) is in the dead-letter topic.
const RELEASE_PANICKED: &str = "internal error while scoring (a bug; please report it): \
    the release of this event for the watermark panicked";
