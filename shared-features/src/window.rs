//! Per-entity windowed aggregation: the one fold both engines run, event by event.
//!
//! Offline and online differ in where events come from, never in how windows are computed: the
//! offline engine feeds its sorted table through this same code. Floating-point sums are
//! therefore taken over the same values in the same order, which is what makes the two paths
//! bit-identical by construction rather than by luck.

use std::collections::{HashMap, VecDeque};

use crate::spec::{AggFn, Window};
use crate::value::{Key, Value};

/// The state of one window spec: for each key, the events still inside any future window.
#[derive(Debug, Default)]
pub struct WindowState {
    /// Distinct columns the aggregates read, in first-use order.
    fields: Vec<usize>,
    /// For each aggregate, its field's index into `fields`.
    slots: Vec<Option<usize>>,
    by_key: HashMap<Key, KeyWindow>,
    /// The newest event time seen for any key.
    newest: i64,
    /// `newest` when idle keys were last swept.
    swept_at: i64,
}

#[derive(Debug)]
struct KeyWindow {
    /// The newest event time seen for this key.
    watermark: i64,
    /// Sorted by time; events with equal times keep arrival order.
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    t: i64,
    vals: Box<[Value]>,
}

impl WindowState {
    /// Empty state for a window spec.
    pub fn new(w: &Window) -> Self {
        let mut fields: Vec<usize> = Vec::new();
        let slots = w
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
        Self {
            fields,
            slots,
            by_key: HashMap::new(),
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
        let current: Box<[Value]> = self.fields.iter().map(|&c| row[c].clone()).collect();
        let key = Key::of(&row[w.key]);
        let lo = t.saturating_sub(w.length_ms);
        let cur = w.include_current.then_some(&current[..]);
        let entries: &[Entry] = match key.as_ref().and_then(|k| self.by_key.get_mut(k)) {
            Some(kw) => kw.entries.make_contiguous(),
            None => &[],
        };
        // Entries later than `t` arrived early (out of order) and are in this event's future.
        let start = entries.partition_point(|e| e.t <= lo);
        let end = entries.partition_point(|e| e.t <= t);
        let window = &entries[start..end.max(start)];
        for (j, agg) in w.aggs.iter().enumerate() {
            let events = window.iter().map(|e| &e.vals[..]).chain(cur);
            row[w.first_col + j] = aggregate(agg.func, self.slots[j], events);
        }
        let Some(key) = key else { return };
        let kw = self.by_key.entry(key).or_insert_with(|| KeyWindow {
            watermark: t,
            entries: VecDeque::new(),
        });
        let at = kw.entries.partition_point(|e| e.t <= t);
        kw.entries.insert(at, Entry { t, vals: current });
        kw.watermark = kw.watermark.max(t);
        let horizon = kw
            .watermark
            .saturating_sub(lateness_ms)
            .saturating_sub(w.length_ms);
        while kw.entries.front().is_some_and(|e| e.t <= horizon) {
            kw.entries.pop_front();
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

/// Fold one aggregate over the values of the events in a window, oldest first.
fn aggregate<'a>(
    func: AggFn,
    slot: Option<usize>,
    events: impl Iterator<Item = &'a [Value]>,
) -> Value {
    let Some(slot) = slot else {
        // `count` with no field counts events.
        return Value::Int(events.count() as i64);
    };
    let values = events.map(|vals| &vals[slot]).filter(|v| !v.is_null());
    match func {
        AggFn::Count => Value::Int(values.count() as i64),
        AggFn::DistinctCount => {
            let mut seen: Vec<&Value> = Vec::new();
            for v in values {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            Value::Int(seen.len() as i64)
        }
        AggFn::Last => values
            .last()
            .and_then(Value::as_f64)
            .map_or(Value::Null, Value::Float),
        // Not `Iterator::sum`: that starts from -0.0, and an empty window's sum is +0.
        AggFn::Sum => Value::finite(Some(
            values.filter_map(Value::as_f64).fold(0.0, |s, x| s + x),
        )),
        AggFn::Min => Value::finite(values.filter_map(Value::as_f64).reduce(f64::min)),
        AggFn::Max => Value::finite(values.filter_map(Value::as_f64).reduce(f64::max)),
        AggFn::Mean => {
            let (n, sum) = values
                .filter_map(Value::as_f64)
                .fold((0u64, 0.0), |(n, s), x| (n + 1, s + x));
            Value::finite((n > 0).then(|| sum / n as f64))
        }
        AggFn::Std => {
            let xs: Vec<f64> = values.filter_map(Value::as_f64).collect();
            if xs.len() < 2 {
                return Value::Null;
            }
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
            Value::finite(Some((ss / (n - 1.0)).sqrt()))
        }
    }
}
