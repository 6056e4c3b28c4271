//! Repartitioning in the live loop ([`crate::merge`]): records of the repartition topic into
//! their merge, what the merges release, and the marks each input partition sends.

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use shared_models::Servable;

use super::{Live, dead_letter_message, send_released};
use crate::merge::{self, Merge, Pushed};
use crate::offsets::Tag;
use crate::score::{Scorer, state_fingerprint};
use crate::sink::To;

/// The last mark an input partition sent to the repartition topic.
pub(super) struct MarkSent {
    assigned: Instant,
    sent: Option<i64>,
    /// When the partition's end was last looked up (whether it is caught up, to be idle).
    checked: Option<Instant>,
}

impl MarkSent {
    /// An input partition just assigned: no mark sent yet.
    pub(super) fn assigned() -> Self {
        Self {
            assigned: Instant::now(),
            sent: None,
            checked: None,
        }
    }
}

/// Stop sending the marks of the revoked partitions of the input topic. A revoked partition of
/// the repartition topic has the number of an input partition, not its marks: the input
/// partition of that number may still be ours, and its marks (the idle one above all, which
/// releases the tail of the stream) must go on.
pub(super) fn forget_marks(
    marks: &mut std::collections::BTreeMap<i32, MarkSent>,
    revoked: &[(String, i32)],
    input: &str,
) {
    for (_, p) in revoked.iter().filter(|(t, _)| t == input) {
        marks.remove(p);
    }
}

/// The state fingerprint snapshots are written and restored under: an upstream scorer's
/// state (without the windows keyed by another column) is not a whole one.
/// The fingerprint of a merge's state (downstream of a repartition).
pub(super) fn merge_fp_of(m: &Servable) -> String {
    format!("{}+merge", state_fingerprint(m))
}

/// Take in one record of the repartition topic and score what its merge releases.
pub(super) fn on_merge_message(
    live: &mut Live,
    slot: usize,
    msg: &BorrowedMessage<'_>,
) -> Result<()> {
    let now = Instant::now();
    let offset = msg.offset();
    if live.parts[slot].as_ref().is_some_and(|p| p.merge.is_none()) {
        live.rebuild_merge(slot, offset)?;
    }
    let seq = live.tracker.begin(slot, offset, now);
    let Some(part) = live.parts[slot].as_mut() else {
        return Ok(());
    };
    part.next = offset + 1;
    part.ckpt_events += 1;
    let Some(mut merge) = part.merge.take() else {
        return Ok(());
    };
    match merge.push(msg.payload().unwrap_or_default(), Some(seq)) {
        Pushed::Held => live.tracker.hold(slot, seq),
        Pushed::Done => {}
        Pushed::Refused(why) => {
            dead_letter_message(live, slot, seq, msg, &why);
        }
    }
    release_merge(live, slot, &mut merge);
    if let Some(part) = live.parts[slot].as_mut() {
        part.merge = Some(merge);
    }
    Ok(())
}

/// Release what merge `slot` can and send each released event's prediction (or dead letter).
pub(super) fn release_merge(live: &mut Live, slot: usize, merge: &mut Merge) {
    merge.release(|scorer, r| send_released(live, slot, scorer, r));
}

impl Live {
    /// Repartitioning: release what waited out the grace in every merge holding events (at
    /// most every 100 ms; arrivals release the rest).
    pub(super) fn release_held(&mut self) {
        if self.cfg.repartition.is_none() || self.released_at.elapsed() < Duration::from_millis(100)
        {
            return;
        }
        self.released_at = Instant::now();
        for slot in 0..self.parts.len() {
            let Some(mut merge) = self.parts[slot]
                .as_mut()
                .filter(|p| p.merge.as_ref().is_some_and(|m| m.held() > 0))
                .and_then(|p| p.merge.take())
            else {
                continue;
            };
            release_merge(self, slot, &mut merge);
            if let Some(part) = self.parts[slot].as_mut() {
                part.merge = Some(merge);
            }
        }
    }

    /// Repartitioning: send each assigned input partition's mark to every partition of the
    /// repartition topic when it changed (at most every 100 ms): its newest event time less
    /// the lateness, or [`merge::IDLE`] once it has delivered nothing for `--idle-after`.
    pub(super) fn send_marks(&mut self) {
        let Some(r) = self.cfg.repartition.clone() else {
            return;
        };
        if self.marks_at.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.marks_at = Instant::now();
        let lateness = self.model.pipeline.lateness_ms;
        let partitions: Vec<i32> = self.marks.keys().copied().collect();
        for p in partitions {
            let part = self
                .parts
                .iter()
                .flatten()
                .find(|x| !x.is_merge && x.partition == p && x.topic == r.input);
            if part.is_some_and(|x| x.rewind_at.is_some()) || self.paused_for_backlog {
                continue; // not idle, only held back
            }
            let Some(m) = self.marks.get(&p) else {
                continue;
            };
            let quiet_since = part.map_or(m.assigned, |x| x.last_event.max(m.assigned));
            let quiet = quiet_since.elapsed() >= self.cfg.idle_after;
            // Quiet is not idle when events are waiting (a backlog the consumer has not
            // reached): the partition must also be read to its end. Looked up at most once per
            // --idle-after, and only for a quiet partition.
            let idle = quiet
                && (m.sent == Some(merge::IDLE)
                    || (m.checked.is_none_or(|t| {
                        t.elapsed() >= self.cfg.idle_after.max(Duration::from_secs(1))
                    }) && {
                        let t0 = Instant::now();
                        // Where this member reads from: after its last event, or (nothing
                        // delivered since the assignment) the group's commit.
                        let next = match part {
                            Some(x) if x.next >= 0 => Some(x.next),
                            _ => {
                                let mut tpl = TopicPartitionList::new();
                                tpl.add_partition(&r.input, p);
                                self.consumer
                                    .committed_offsets(tpl, Duration::from_millis(200))
                                    .ok()
                                    .and_then(|t| {
                                        t.elements().first().and_then(|e| match e.offset() {
                                            Offset::Offset(o) => Some(o),
                                            _ => None,
                                        })
                                    })
                            }
                        };
                        let end =
                            self.consumer
                                .fetch_watermarks(&r.input, p, Duration::from_millis(200));
                        tracing::debug!(
                            partition = p,
                            ?next,
                            ?end,
                            ms = t0.elapsed().as_millis() as u64,
                            "is a quiet input partition read to its end?"
                        );
                        if let Some(m) = self.marks.get_mut(&p) {
                            m.checked = Some(Instant::now());
                        }
                        match end {
                            Ok((low, high)) => high <= low || next.is_some_and(|n| n >= high),
                            Err(_) => false,
                        }
                    }));
            let Some(m) = self.marks.get(&p) else {
                continue;
            };
            let mark = if idle {
                Some(merge::IDLE)
            } else {
                part.and_then(|x| x.scorer.as_ref())
                    .and_then(Scorer::progress)
                    .map(|t| t.saturating_sub(lateness))
            };
            let Some(mark) = mark else {
                continue;
            };
            if m.sent == Some(mark) {
                continue;
            }
            let bytes = merge::mark_record(p, mark);
            for to in 0..r.partitions {
                let tag = Tag::untracked();
                if let Err(e) =
                    self.sink
                        .send(To::Repartition(Some(to)), &[], &bytes, None, &[], tag)
                {
                    tracing::warn!(error = ?e, "cannot send a mark; the next one catches up");
                }
            }
            if let Some(m) = self.marks.get_mut(&p) {
                m.sent = Some(mark);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_a_repartition_partition_keeps_the_input_partitions_marks() {
        let mark = || MarkSent {
            assigned: Instant::now(),
            sent: Some(7),
            checked: None,
        };
        let mut marks: std::collections::BTreeMap<i32, MarkSent> =
            (0..4).map(|p| (p, mark())).collect();
        let rep = "kml-g-flights-repartition".to_string();
        forget_marks(&mut marks, &[(rep.clone(), 0), (rep, 1)], "flights");
        assert_eq!(marks.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        forget_marks(&mut marks, &[("flights".into(), 2)], "flights");
        assert_eq!(marks.keys().copied().collect::<Vec<_>>(), [0, 1, 3]);
    }
}
