//! Which input offsets may be committed: per input partition, the events in consumption order
//! with the number of their outputs not yet acknowledged.
//!
//! Every consumed event is registered ([`Tracker::begin`]), each output produced for it counted
//! ([`Tracker::expect`]) and each acknowledgement counted off ([`Tracker::ack`]). The committable
//! offset of a partition is the offset after the longest prefix of its events whose outputs are
//! all acknowledged, so an acknowledgement that arrives early (another partition, another
//! broker, a retry) never lets a commit pass an event still in flight. A delivery that fails for
//! good freezes the partition's committable offset at that event until the partition is
//! [`reset`](Tracker::reset) (rewound or reassigned).
//!
//! Outputs carry a [`Tag`]: the partition's slot and a sequence number that keeps counting
//! across resets, so that reports from before a reset are recognised as stale and ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bits of a tag that hold the sequence number (then 15 of the slot, one marking a shadow's
/// prediction, one a dead letter, one a record for the repartition topic).
const SEQ_BITS: u32 = 46;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// Most partition slots (15 bits).
pub const MAX_SLOTS: usize = 1 << 15;

/// The opaque value an output carries to its delivery report: slot, sequence number, and
/// whether it is a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(pub usize);

impl Tag {
    fn new(slot: usize, seq: u64, dead: bool) -> Self {
        Tag((u64::from(dead) << 62 | (slot as u64) << SEQ_BITS | (seq & SEQ_MASK)) as usize)
    }

    /// The partition slot.
    pub fn slot(self) -> usize {
        ((self.0 as u64 >> SEQ_BITS) & (MAX_SLOTS as u64 - 1)) as usize
    }

    fn seq(self) -> u64 {
        self.0 as u64 & SEQ_MASK
    }

    /// Whether the output is a dead letter (else a prediction).
    pub fn is_dead_letter(self) -> bool {
        (self.0 as u64 >> 62) & 1 == 1
    }

    /// The same output, marked as a record for the repartition topic (not a prediction).
    pub fn as_forwarded(self) -> Self {
        Tag((self.0 as u64 | 1 << 63) as usize)
    }

    /// Whether the output is a record for the repartition topic.
    pub fn is_forwarded(self) -> bool {
        (self.0 as u64 >> 63) & 1 == 1
    }

    /// A tag no tracked event carries (marks for the repartition topic): its report is
    /// ignored.
    pub fn untracked() -> Self {
        Tag::new(MAX_SLOTS - 1, SEQ_MASK, false).as_forwarded()
    }

    /// The same output, re-marked as a dead letter (an output replaced by one).
    pub fn as_dead_letter(self) -> Self {
        Tag((self.0 as u64 | 1 << 62) as usize)
    }

    /// The same output, marked as a shadow's prediction (`scorer run --shadow`).
    pub fn as_shadow(self) -> Self {
        Tag((self.0 as u64 | 1 << 61) as usize)
    }

    /// Whether the output is a shadow's prediction: its delivery, good or not, only counts
    /// it off (a shadow never holds up or rewinds the champion's partition).
    pub fn is_shadow(self) -> bool {
        (self.0 as u64 >> 61) & 1 == 1
    }
}

#[derive(Debug)]
struct Pending {
    offset: i64,
    outputs: u32,
    /// Held by a merge ([`crate::merge`]): its outputs are not known yet.
    held: bool,
    at: Instant,
}

#[derive(Debug, Default)]
struct Part {
    /// Sequence number of `events[0]`.
    base: u64,
    /// Sequence number the next event gets.
    next: u64,
    events: VecDeque<Pending>,
    /// Offset after the last event whose outputs are all acknowledged; `None` before any.
    committable: Option<i64>,
    /// Sequence number of the first event whose delivery failed for good.
    failed: Option<u64>,
}

/// Committable offsets of every input partition (slot) of this process.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: Vec<Part>,
    in_flight: usize,
}

/// What an acknowledgement completed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The tag was current (not from before a reset of its partition).
    pub current: bool,
    /// Consumption to acknowledgement, for this output.
    pub latency: Option<Duration>,
}

impl Tracker {
    /// Track events of `slot` from `offset` on (after an assignment or a rewind): anything
    /// tracked before for the slot is forgotten and its late reports ignored.
    pub fn reset(&mut self, slot: usize, offset: Option<i64>) {
        if self.parts.len() <= slot {
            self.parts.resize_with(slot + 1, Part::default);
        }
        let p = &mut self.parts[slot];
        self.in_flight -= p.events.iter().map(|e| e.outputs as usize).sum::<usize>();
        p.events.clear();
        p.base = p.next;
        p.committable = offset;
        p.failed = None;
    }

    /// Register an event consumed from `slot` at `offset`; returns its sequence number.
    pub fn begin(&mut self, slot: usize, offset: i64, at: Instant) -> u64 {
        if self.parts.len() <= slot {
            self.reset(slot, None);
        }
        let p = &mut self.parts[slot];
        let seq = p.next;
        p.next += 1;
        p.events.push_back(Pending {
            offset,
            outputs: 0,
            held: false,
            at,
        });
        seq
    }

    /// One more output is due for event `seq` of `slot`; returns the tag it carries.
    pub fn expect(&mut self, slot: usize, seq: u64, dead_letter: bool) -> Tag {
        if let Some(e) = self.event(slot, seq) {
            e.outputs += 1;
            self.in_flight += 1;
        }
        Tag::new(slot, seq, dead_letter)
    }

    /// Event `seq` of `slot` waits in a merge: nothing past it is committable until
    /// [`Tracker::unhold`] (after its outputs are [expected](Tracker::expect)).
    pub fn hold(&mut self, slot: usize, seq: u64) {
        if let Some(e) = self.event(slot, seq) {
            e.held = true;
        }
    }

    /// Whether event `seq` of `slot` is still tracked (not from before a reset of its slot, by
    /// a rewind or a revocation, and not yet complete).
    pub fn current(&mut self, slot: usize, seq: u64) -> bool {
        self.event(slot, seq).is_some()
    }

    /// The merge released event `seq` of `slot`.
    pub fn unhold(&mut self, slot: usize, seq: u64) {
        if let Some(e) = self.event(slot, seq) {
            e.held = false;
        }
    }

    fn event(&mut self, slot: usize, seq: u64) -> Option<&mut Pending> {
        let p = self.parts.get_mut(slot)?;
        let i = seq.checked_sub(p.base)?;
        p.events.get_mut(usize::try_from(i).ok()?)
    }

    /// An output was acknowledged.
    pub fn ack(&mut self, tag: Tag, now: Instant) -> Acked {
        let (slot, seq) = (tag.slot(), tag.seq());
        let Some(e) = self.event(slot, seq) else {
            return Acked::default();
        };
        if e.outputs == 0 {
            return Acked::default();
        }
        e.outputs -= 1;
        let latency = now.saturating_duration_since(e.at);
        self.in_flight -= 1;
        Acked {
            current: true,
            latency: Some(latency),
        }
    }

    /// An output's delivery failed for good: its partition makes no more progress past it.
    /// Returns whether the tag was current.
    pub fn fail(&mut self, tag: Tag) -> bool {
        let (slot, seq) = (tag.slot(), tag.seq());
        if self.event(slot, seq).is_none() {
            return false;
        }
        let p = &mut self.parts[slot];
        p.failed = Some(p.failed.map_or(seq, |f| f.min(seq)));
        true
    }

    /// Whether a delivery of `slot` failed for good since its last reset.
    pub fn failed(&self, slot: usize) -> bool {
        self.parts.get(slot).is_some_and(|p| p.failed.is_some())
    }

    /// Move the committable offset of `slot` past every leading event whose outputs are all
    /// acknowledged; returns the new committable offset when it moved.
    pub fn advance(&mut self, slot: usize) -> Option<i64> {
        let p = self.parts.get_mut(slot)?;
        let mut moved = None;
        while let Some(e) = p.events.front() {
            if e.outputs > 0 || e.held || p.failed.is_some_and(|f| f <= p.base) {
                break;
            }
            if let Some(e) = p.events.pop_front() {
                p.base += 1;
                moved = Some(e.offset + 1);
            }
        }
        if moved.is_some() {
            p.committable = moved;
        }
        moved
    }

    /// The offset up to which `slot` may be committed (the next offset to read after it).
    pub fn committable(&self, slot: usize) -> Option<i64> {
        self.parts.get(slot).and_then(|p| p.committable)
    }

    /// The offset of the first event of `slot` not yet complete (where a rewind restarts).
    pub fn first_incomplete(&self, slot: usize) -> Option<i64> {
        let p = self.parts.get(slot)?;
        p.events.front().map(|e| e.offset).or(p.committable)
    }

    /// Outputs produced and not acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = Tag::new(MAX_SLOTS - 1, SEQ_MASK, true);
        assert_eq!(t.slot(), MAX_SLOTS - 1);
        assert_eq!(t.seq(), SEQ_MASK);
        assert!(t.is_dead_letter());
        let t = Tag::new(3, 12345, false);
        assert_eq!((t.slot(), t.seq(), t.is_dead_letter()), (3, 12345, false));
        assert!(t.as_dead_letter().is_dead_letter());
        assert_eq!(t.as_dead_letter().slot(), 3);
        // The marks are independent bits: none changes the slot, the sequence or another mark.
        let top = Tag::new(MAX_SLOTS - 1, SEQ_MASK, false);
        for (marked, shadow, forwarded) in [
            (top.as_shadow(), true, false),
            (top.as_forwarded(), false, true),
            (top.as_shadow().as_forwarded(), true, true),
        ] {
            assert_eq!((marked.slot(), marked.seq()), (MAX_SLOTS - 1, SEQ_MASK));
            assert_eq!(marked.is_shadow(), shadow);
            assert_eq!(marked.is_forwarded(), forwarded);
            assert!(!marked.is_dead_letter());
        }
        assert!(!top.is_shadow() && !top.as_dead_letter().is_shadow());
    }

    #[test]
    fn a_held_event_stops_the_commit_until_released_and_acknowledged() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let a = t.begin(0, 10, now);
        let b = t.begin(0, 11, now);
        t.hold(0, a);
        assert_eq!(t.advance(0), None, "offset 10 waits in the merge");
        // Released: its prediction is due, then the hold goes.
        let tag = t.expect(0, a, false);
        t.unhold(0, a);
        assert_eq!(t.advance(0), None, "its prediction is not acknowledged yet");
        assert!(t.ack(tag, now).current);
        assert_eq!(
            t.advance(0),
            Some(12),
            "10 complete, 11 had nothing to wait for"
        );
        let _ = b;
        let u = Tag::untracked();
        assert!(u.is_forwarded() && !u.is_dead_letter());
        assert!(!t.ack(u, now).current, "a mark's report is ignored");
        assert!(!t.fail(u));
    }

    #[test]
    fn an_early_ack_never_passes_an_event_in_flight() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.reset(0, Some(10));
        let tags: Vec<Tag> = (10..15)
            .map(|o| {
                let s = t.begin(0, o, now);
                t.expect(0, s, false)
            })
            .collect();
        // 11, 12, 14 acknowledged first: 10 still in flight, nothing moves.
        for i in [1, 2, 4] {
            assert!(t.ack(tags[i], now).current);
        }
        assert_eq!(t.advance(0), None);
        assert_eq!(t.committable(0), Some(10));
        assert_eq!(t.in_flight(), 2);
        // 10 arrives: up to 13 (13 is still in flight).
        t.ack(tags[0], now);
        assert_eq!(t.advance(0), Some(13));
        t.ack(tags[3], now);
        assert_eq!(t.advance(0), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn events_without_outputs_complete_in_order() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let a = t.begin(0, 0, now);
        let ta = t.expect(0, a, false);
        t.begin(0, 1, now); // filtered: no output
        t.begin(0, 2, now);
        assert_eq!(t.advance(0), None);
        t.ack(ta, now);
        assert_eq!(t.advance(0), Some(3));
    }

    #[test]
    fn a_failed_delivery_freezes_its_partition_only() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let mut tags = Vec::new();
        for slot in 0..2 {
            for o in 0..4 {
                let s = t.begin(slot, o, now);
                tags.push(t.expect(slot, s, false));
            }
        }
        assert!(t.fail(tags[1])); // slot 0, offset 1
        for tag in &tags {
            if *tag != tags[1] {
                t.ack(*tag, now);
            }
        }
        assert_eq!(t.advance(0), Some(1));
        assert_eq!(t.advance(0), None);
        assert_eq!(t.committable(0), Some(1));
        assert!(t.failed(0) && !t.failed(1));
        assert_eq!(t.first_incomplete(0), Some(1));
        assert_eq!(t.advance(1), Some(4));
        // Rewound to 1: the old reports are stale.
        t.reset(0, Some(1));
        assert!(!t.ack(tags[1], now).current);
        assert!(!t.fail(tags[2]));
        assert!(!t.failed(0));
        let s = t.begin(0, 1, now);
        let tag = t.expect(0, s, false);
        t.ack(tag, now);
        assert_eq!(t.advance(0), Some(2));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_duplicate_report_counts_once() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let a = t.begin(0, 5, now);
        let tag = t.expect(0, a, false);
        let b = t.begin(0, 6, now);
        let tb = t.expect(0, b, false);
        assert!(t.ack(tag, now).current);
        assert!(!t.ack(tag, now).current);
        assert_eq!(t.advance(0), Some(6));
        assert_eq!(t.in_flight(), 1);
        t.ack(tb, now);
        assert_eq!(t.advance(0), Some(7));
    }
}
