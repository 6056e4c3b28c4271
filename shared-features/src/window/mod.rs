//! Per-entity windowed aggregation: the one fold both engines run, event by event.
//!
//! Offline and online differ in where events come from, never in how windows are computed: the
//! offline engine feeds its sorted table through this same code. Floating-point sums are
//! therefore taken over the same values in the same association order, which is what makes the
//! two paths bit-identical by construction rather than by luck: every result is a deterministic
//! function of the sequence of events processed.
//!
//! # Cost
//!
//! An event at or after its key's newest event (the usual case, and every event of the offline
//! engine's sorted table) costs amortised O(1) for every aggregate, however many events the
//! window holds: the window's entries are kept as a two-stacks sliding-window aggregation
//! (`Swag`) of per-column partial aggregates (`agg::Part`), and distinct counts as a multiset of the values in the window.
//! An event older than its key's newest one (out of order, within the lateness) is aggregated
//! by a fold over its window, O(window), and makes the next in-order event rebuild the stacks,
//! O(window) once.
//!
//! # State
//!
//! Per key: the entries (time and aggregated values, sorted by time, ties in arrival order), the
//! key's newest time and three small numbers of the `Swag`. Its partial aggregates are a pure
//! function of those, so a snapshot of the entries and the numbers restores it bit for bit.

mod agg;
mod snapshot;
#[cfg(test)]
mod tests;

pub use snapshot::{WindowSnapshot, WindowSnapshotRef};

use std::collections::VecDeque;

use crate::spec::{AggFn, Window};
use crate::value::{Key, Map, Set, Value};

use agg::{Distinct, Part, int};

/// The state of one window spec: for each key, the events still inside any future window.
#[derive(Debug, Default)]
pub struct WindowState {
    /// Distinct columns the aggregates read, in first-use order.
    fields: Vec<usize>,
    /// For each aggregate, its field's index into `fields`.
    slots: Vec<Option<usize>>,
    /// Indices into `fields` of the columns some `distinct_count` reads.
    distinct_fields: Vec<usize>,
    /// For each aggregate, its index into `distinct_fields` when it is a `distinct_count`.
    distinct_slots: Vec<Option<usize>>,
    by_key: Map<Key, KeyWindow>,
    /// The newest event time seen for any key.
    newest: i64,
    /// `newest` when idle keys were last swept.
    swept_at: i64,
    /// Scratch space for one window's combined parts, one per field.
    combined: Vec<Part>,
    /// Scratch space for one window's distinct counts, one per distinct field.
    distinct: Vec<u64>,
    /// Whether parts keep a mean and sum of squared deviations (some aggregate is a `std`).
    welford: bool,
}

#[derive(Debug)]
struct KeyWindow {
    /// The newest event time seen for this key.
    watermark: i64,
    /// Sorted by time; events with equal times keep arrival order.
    entries: VecDeque<Entry>,
    /// Partial aggregates of the newest in-order window.
    swag: Swag,
}

#[derive(Debug)]
struct Entry {
    t: i64,
    /// The aggregated columns' values; inline up to two (no allocation per event for the
    /// usual window of one or two aggregated columns).
    vals: Vals,
}

type Vals = smallvec::SmallVec<[Value; 2]>;

/// A two-stacks sliding-window aggregation over `entries[start..]`, the window of the key's
/// newest event.
///
/// `entries[start..split]` is the front stack: `front` holds, for each `k`, the fields' parts of
/// `entries[split - 1 - k..split]`, so its top covers the whole front and popping the oldest
/// entry is dropping the top. `entries[split..]` is the back: `back` is their parts folded in
/// arrival order. A window is `top.then(back)`. When the front runs empty, the back is flipped
/// into it (O(back) once per entry's life, hence amortised O(1)).
#[derive(Debug, Default)]
struct Swag {
    /// False after an out-of-order insert: rebuilt at the next in-order event.
    valid: bool,
    start: usize,
    split: usize,
    /// `fields.len()` parts per front entry.
    front: Vec<Part>,
    /// `fields.len()` parts.
    back: Vec<Part>,
    /// For each of `distinct_fields`: how many entries of `entries[start..]` hold each value.
    distinct: Vec<Map<Distinct, u32>>,
}

impl WindowState {
    /// Empty state for a window spec.
    pub fn new(w: &Window) -> Self {
        let mut fields: Vec<usize> = Vec::new();
        let slots: Vec<Option<usize>> = w
            .aggs
            .iter()
            .map(|a| {
                a.field.map(|f| match fields.iter().position(|x| *x == f) {
                    Some(i) => i,
                    None => {
                        fields.push(f);
                        fields.len() - 1
                    }
                })
            })
            .collect();
        let mut distinct_fields: Vec<usize> = Vec::new();
        let distinct_slots = w
            .aggs
            .iter()
            .zip(&slots)
            .map(|(a, slot)| match (a.func, slot) {
                (AggFn::DistinctCount, Some(s)) => {
                    Some(match distinct_fields.iter().position(|x| x == s) {
                        Some(i) => i,
                        None => {
                            distinct_fields.push(*s);
                            distinct_fields.len() - 1
                        }
                    })
                }
                _ => None,
            })
            .collect();
        Self {
            welford: w.aggs.iter().any(|a| a.func == AggFn::Std),
            combined: vec![Part::EMPTY; fields.len()],
            distinct: vec![0; distinct_fields.len()],
            fields,
            slots,
            distinct_fields,
            distinct_slots,
            by_key: Map::default(),
            newest: i64::MIN,
            swept_at: i64::MIN,
        }
    }

    /// The newest event time seen for a key, if any.
    pub fn watermark(&self, key: &Key) -> Option<i64> {
        self.by_key.get(key).map(|k| k.watermark)
    }

    /// Number of keys holding state.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// Number of events held over all keys.
    pub fn entries(&self) -> usize {
        self.by_key.values().map(|k| k.entries.len()).sum()
    }

    /// Aggregate the window of an event into `row[w.first_col..]`, then remember the event.
    ///
    /// The window of an event at `t` holds the earlier events of its key with times in
    /// `(t - length, t]` (an event that arrived earlier but is dated later is in its future and
    /// left out), plus the event itself with `include_current`.
    ///
    /// `lateness_ms` bounds how far behind its key's watermark an event may be; the caller has
    /// already refused events later than that, so eviction never removes an entry that an
    /// accepted event could still need.
    ///
    /// With `idle_ttl_ms`, keys whose newest event is more than that behind the newest event of
    /// any key are forgotten (swept each time the newest time advances by a quarter of the TTL),
    /// so state is bounded by the keys active within the TTL rather than every key ever seen.
    pub fn update(
        &mut self,
        w: &Window,
        t: i64,
        row: &mut [Value],
        lateness_ms: i64,
        idle_ttl_ms: Option<i64>,
    ) {
        let current: Vals = self.fields.iter().map(|&c| row[c].clone()).collect();
        let lo = t.saturating_sub(w.length_ms);
        let cur = w.include_current.then_some(&current[..]);
        let nf = self.fields.len();
        let Self {
            by_key,
            combined,
            distinct,
            distinct_fields,
            slots,
            distinct_slots,
            welford,
            ..
        } = self;
        let welford = *welford;
        // One hash lookup per event and window: a new key's state starts empty, and its first
        // event is in order.
        let mut kw = Key::of(&row[w.key]).map(|key| {
            by_key.entry(key).or_insert_with(|| KeyWindow {
                watermark: t,
                entries: VecDeque::new(),
                swag: Swag {
                    valid: true,
                    back: vec![Part::EMPTY; nf],
                    distinct: vec![Map::default(); distinct_fields.len()],
                    ..Swag::default()
                },
            })
        });
        let in_order = kw.as_ref().is_none_or(|kw| t >= kw.watermark);
        let events = match kw.as_deref_mut() {
            Some(kw) if in_order => {
                kw.slide(lo, nf, distinct_fields, welford);
                let s = &kw.swag;
                let top = s
                    .front
                    .len()
                    .checked_sub(nf)
                    .filter(|_| s.start < s.split)
                    .map(|i| &s.front[i..]);
                for (i, c) in combined.iter_mut().enumerate() {
                    *c = match top {
                        Some(top) => top[i].then_as(&s.back[i], welford),
                        None => s.back[i],
                    };
                }
                for (d, (counts, &f)) in distinct
                    .iter_mut()
                    .zip(s.distinct.iter().zip(distinct_fields.iter()))
                {
                    let extra = cur
                        .and_then(|c| Distinct::of(&c[f]))
                        .is_some_and(|v| !counts.contains_key(&v));
                    *d = counts.len() as u64 + u64::from(extra);
                }
                (kw.entries.len() - s.start) as u64
            }
            Some(kw) => {
                // Out of order: fold the window, O(window); entries dated after `t` are in
                // this event's future.
                let entries = kw.entries.make_contiguous();
                let a = entries.partition_point(|e| e.t <= lo);
                let b = entries.partition_point(|e| e.t <= t).max(a);
                let window = &entries[a..b];
                for (i, c) in combined.iter_mut().enumerate() {
                    *c = window.iter().fold(Part::EMPTY, |acc, e| {
                        acc.then_as(&Part::of(&e.vals[i]), welford)
                    });
                }
                for (d, &f) in distinct.iter_mut().zip(distinct_fields.iter()) {
                    let seen: Set<Distinct> = window
                        .iter()
                        .map(|e| &e.vals[f])
                        .chain(cur.map(|c| &c[f]))
                        .filter_map(Distinct::of)
                        .collect();
                    *d = seen.len() as u64;
                }
                window.len() as u64
            }
            None => {
                // A null key: no state, the window is the event itself at most.
                combined.fill(Part::EMPTY);
                for (d, &f) in distinct.iter_mut().zip(distinct_fields.iter()) {
                    *d = u64::from(cur.is_some_and(|c| !c[f].is_null()));
                }
                0
            }
        };
        if let Some(c) = cur {
            for (part, v) in combined.iter_mut().zip(c) {
                *part = part.then_as(&Part::of(v), welford);
            }
        }
        let events = events + u64::from(cur.is_some());
        for (j, agg) in w.aggs.iter().enumerate() {
            row[w.first_col + j] = match slots[j] {
                // `count` with no field counts events.
                None => int(events),
                Some(slot) => {
                    let d = distinct_slots[j].map_or(0, |d| distinct[d]);
                    combined[slot].finish(agg.func, d)
                }
            };
        }

        let Some(kw) = kw else { return };
        if in_order {
            kw.swag.push(&current, distinct_fields, welford);
            kw.entries.push_back(Entry { t, vals: current });
        } else {
            let at = kw.entries.partition_point(|e| e.t <= t);
            kw.entries.insert(at, Entry { t, vals: current });
            kw.swag.valid = false;
        }
        kw.watermark = kw.watermark.max(t);
        let horizon = kw
            .watermark
            .saturating_sub(lateness_ms)
            .saturating_sub(w.length_ms);
        while kw.entries.front().is_some_and(|e| e.t <= horizon) {
            kw.entries.pop_front();
            kw.swag.forget_oldest();
        }
        self.newest = self.newest.max(t);
        if let Some(ttl) = idle_ttl_ms
            && self.newest.saturating_sub(self.swept_at) >= ttl / 4
        {
            let oldest_kept = self.newest.saturating_sub(ttl);
            self.by_key.retain(|_, kw| kw.watermark >= oldest_kept);
            self.swept_at = self.newest;
        }
    }
}

impl KeyWindow {
    /// Move the window's start past entries at or before `lo`, for an in-order event (after
    /// rebuilding the stacks if an out-of-order insert spoiled them).
    fn slide(&mut self, lo: i64, nf: usize, distinct_fields: &[usize], welford: bool) {
        let s = &mut self.swag;
        if !s.valid {
            let start = self.entries.partition_point(|e| e.t <= lo);
            s.start = start;
            s.split = start;
            s.back.fill(Part::EMPTY);
            for (counts, &f) in s.distinct.iter_mut().zip(distinct_fields) {
                counts.clear();
                for e in self.entries.range(start..) {
                    if let Some(v) = Distinct::of(&e.vals[f]) {
                        *counts.entry(v).or_default() += 1;
                    }
                }
            }
            s.flip(&self.entries, nf, welford);
            s.valid = true;
        }
        while self.entries.get(s.start).is_some_and(|e| e.t <= lo) {
            if s.start == s.split {
                s.flip(&self.entries, nf, welford);
            }
            s.front.truncate(s.front.len().saturating_sub(nf));
            let oldest = &self.entries[s.start];
            for (counts, &f) in s.distinct.iter_mut().zip(distinct_fields) {
                if let Some(v) = Distinct::of(&oldest.vals[f])
                    && let Some(n) = counts.get_mut(&v)
                {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&v);
                    }
                }
            }
            s.start += 1;
        }
    }
}

impl Swag {
    /// Turn the back into the front: `front` gets the suffix parts of `entries[start..]`.
    fn flip(&mut self, entries: &VecDeque<Entry>, nf: usize, welford: bool) {
        self.front.clear();
        self.front.reserve((entries.len() - self.start) * nf);
        let mut acc: Vec<Part> = vec![Part::EMPTY; nf];
        for e in entries.range(self.start..).rev() {
            for (a, v) in acc.iter_mut().zip(e.vals.iter()) {
                *a = Part::of(v).then_as(a, welford);
            }
            self.front.extend_from_slice(&acc);
        }
        self.split = entries.len();
        self.back.fill(Part::EMPTY);
    }

    /// Add the newest entry, about to be pushed at the back of the entries.
    fn push(&mut self, vals: &[Value], distinct_fields: &[usize], welford: bool) {
        if !self.valid {
            return;
        }
        for (b, v) in self.back.iter_mut().zip(vals) {
            *b = b.then_as(&Part::of(v), welford);
        }
        for (counts, &f) in self.distinct.iter_mut().zip(distinct_fields) {
            if let Some(v) = Distinct::of(&vals[f]) {
                *counts.entry(v).or_default() += 1;
            }
        }
    }

    /// The oldest entry was dropped from the front of the entries: shift the indices. It lies
    /// before the window (eviction keeps everything an accepted event can reach), so the
    /// parts are unchanged.
    fn forget_oldest(&mut self) {
        if self.start == 0 {
            // Cannot happen for a valid state; a rebuild is always correct.
            self.valid = false;
        } else {
            self.start -= 1;
            self.split -= 1;
        }
    }
}
