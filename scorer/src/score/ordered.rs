//! Watermark order in the scoring core (`scorer run --order watermark`): each partition's
//! events are admitted as they arrive and scored in event-time order once the watermark has
//! passed them ([`shared_features::OrderedEngine`]), so live features are the offline ones
//! over the same log, whatever the topic's disorder within the lateness.
//!
//! An event is pushed with its offset (the engine's tag) and, when it was consumed live, the
//! tracker's sequence number, which the live loop holds until the event is released. An event
//! pushed during a warm-up, or restored held from a checkpoint, has no sequence number, and its
//! release only updates the windows, when its prediction was delivered before. That depends on
//! what the commit covers:
//! - at-least-once, the committed offset is the first event not complete, held ones included:
//!   every event below it was released and delivered, and the warm-up stops there;
//! - exactly-once, a transaction commits every offset consumed, held events included, with the
//!   predictions of every event released before it. The engine is a function of the
//!   partition's log, so a warm-up up to the committed offset holds exactly the events held at
//!   the commit: those are owed ([`Scorer::owe_held`]) and get sequence numbers, to be scored
//!   when the watermark passes them; the others were delivered.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use shared_features::OrderedEngine;
use shared_features::wire::Format;
use shared_models::Servable;

use super::{Scorer, SourcePos, fail_point, release_fail_point, slow_warm_up};
use crate::merge::Released;

/// The held events of a scorer in watermark order.
#[derive(Debug)]
pub(super) struct Ordered {
    pub(super) engine: OrderedEngine,
    /// The sequence number of each held event consumed live, by offset.
    seqs: HashMap<i64, u64>,
    /// The offset of the event whose release panicked.
    culprit: Option<i64>,
}

impl Ordered {
    pub(super) fn new(model: &Servable, format: &Format) -> Self {
        Self {
            engine: OrderedEngine::new(model.pipeline.clone(), model.tables.clone())
                .with_format(format),
            seqs: HashMap::new(),
            culprit: None,
        }
    }
}

/// What became of an event pushed in watermark order.
#[derive(Debug)]
pub enum Admitted {
    /// Admitted and held until the watermark passes it ([`Scorer::release`]).
    Held,
    /// A pipeline filter dropped it: no prediction is due.
    Filtered,
    /// Refused (malformed, too late, ...): it belongs in the dead-letter topic.
    Dead(String),
}

impl Scorer {
    /// A scorer in watermark order, with empty state.
    pub fn ordered(model: Arc<Servable>, max_event_bytes: usize) -> Self {
        let mut s = Self::new(model, max_event_bytes);
        s.ordered = Some(Ordered::new(&s.model, &Format::Json));
        s
    }

    /// Whether this scorer holds events for the watermark ([`Scorer::ordered`]).
    pub fn is_ordered(&self) -> bool {
        self.ordered.is_some()
    }

    /// Events held for the watermark.
    pub fn held(&self) -> usize {
        self.ordered.as_ref().map_or(0, |o| o.engine.held())
    }

    /// Take in the event at `offset`; `seq`: the live loop's sequence number when consumed
    /// live. A held event comes back from [`Scorer::release`].
    pub fn push(&mut self, payload: Option<&[u8]>, offset: i64, seq: Option<u64>) -> Admitted {
        let payload = match shared_models::prediction::admit(payload, self.max_event_bytes) {
            Ok(payload) => payload,
            Err(why) => return Admitted::Dead(why),
        };
        let Some(o) = self.ordered.as_mut() else {
            return Admitted::Dead("internal error: not a scorer in watermark order".into());
        };
        let tag = u64::try_from(offset).unwrap_or(u64::MAX);
        let pushed = catch_unwind(AssertUnwindSafe(|| {
            fail_point(payload);
            o.engine.push(payload, tag)
        }));
        match pushed {
            Ok(Ok(true)) => {
                if let Some(seq) = seq {
                    o.seqs.insert(offset, seq);
                }
                Admitted::Held
            }
            Ok(Ok(false)) => Admitted::Filtered,
            Ok(Err(e)) => Admitted::Dead(e.to_string()),
            Err(panic) => {
                self.broken = true;
                o.culprit = Some(offset);
                Admitted::Dead(format!(
                    "internal error while scoring (a bug; please report it): {}",
                    crate::log::panic_message(&*panic)
                ))
            }
        }
    }

    /// Score every held event the watermark has passed, in event-time order, giving each to
    /// `f` (`seq: None`, no outcome: delivered before; only the windows took it in). A panic
    /// stops the release and leaves the scorer [`broken`](Scorer::broken), the event that
    /// caused it in [`Scorer::culprit`].
    pub fn release(
        &mut self,
        topic: &str,
        partition: i32,
        mut f: impl FnMut(&Scorer, Released<'_>),
    ) {
        let Some(mut o) = self.ordered.take() else {
            return;
        };
        loop {
            let next = o.engine.next_tag();
            let engine = &mut o.engine;
            let step = catch_unwind(AssertUnwindSafe(move || {
                let engine = engine; // moved in: the row it returns borrows it
                let released = engine.next_ready();
                if let Some((tag, _)) = &released {
                    release_fail_point(*tag);
                }
                released
            }));
            let (tag, row) = match step {
                Ok(Some(released)) => released,
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    o.culprit = next.and_then(|t| i64::try_from(t).ok());
                    break;
                }
            };
            let offset = i64::try_from(tag).unwrap_or(-1);
            let seq = o.seqs.remove(&offset);
            let pos = SourcePos {
                topic,
                partition,
                offset,
            };
            let outcome = seq.map(|_| self.score_row(row, pos));
            f(self, Released { seq, pos, outcome });
        }
        self.ordered = Some(o);
    }

    /// Exactly-once, after a warm-up up to the committed offset: every event still held is
    /// owed its prediction (see the module's documentation). `seq_of` gives each its sequence
    /// number, in offset order; returns how many were owed.
    pub fn owe_held(&mut self, mut seq_of: impl FnMut(i64) -> u64) -> usize {
        let Some(o) = self.ordered.as_mut() else {
            return 0;
        };
        let mut offsets: Vec<i64> = o
            .engine
            .held_tags()
            .filter_map(|t| i64::try_from(t).ok())
            .filter(|offset| !o.seqs.contains_key(offset))
            .collect();
        offsets.sort_unstable();
        for &offset in &offsets {
            o.seqs.insert(offset, seq_of(offset));
        }
        offsets.len()
    }

    /// Drop the held events at `offsets` unreleased (their processing panicked, and a
    /// restored checkpoint still held them); returns how many.
    pub fn drop_held(&mut self, offsets: &BTreeSet<i64>) -> usize {
        let Some(o) = self.ordered.as_mut() else {
            return 0;
        };
        let dropped = o
            .engine
            .drop_held(|t| i64::try_from(t).is_ok_and(|t| offsets.contains(&t)));
        o.seqs.retain(|offset, _| !offsets.contains(offset));
        dropped
    }

    /// The stream has ended (a bounded replay): the next [`Scorer::release`] releases
    /// everything held.
    pub fn finish(&mut self) {
        if let Some(o) = self.ordered.as_mut() {
            o.engine.finish();
        }
    }

    /// The offset of the event whose processing panicked, when the scorer is
    /// [`broken`](Scorer::broken) in watermark order.
    pub fn culprit(&self) -> Option<i64> {
        self.ordered.as_ref().and_then(|o| o.culprit)
    }

    /// [`Scorer::warm`] in watermark order: push, and release without scoring.
    pub(super) fn warm_ordered(&mut self, payload: &[u8], offset: i64) -> bool {
        slow_warm_up();
        if matches!(self.push(Some(payload), offset, None), Admitted::Dead(_)) && self.broken {
            return false;
        }
        self.release("", 0, |_, _| {});
        !self.broken
    }
}
