//! Window state as data: what a checkpoint saves and restores.
//!
//! A key's saved state is its watermark, its entries and the three numbers of its `Swag`
//! (`valid`, `start`, `split`). The partial aggregates are recomputed on restore exactly as
//! they were built: the front as suffix folds of `entries[start..split]` (what `Swag::flip`
//! computed, minus the tops that sliding popped), the back as the arrival-order fold of
//! `entries[split..]`, the distinct multisets as counts over `entries[start..]`. So a restored
//! state gives every later event the bits the uninterrupted state would have.

use serde::{Deserialize, Serialize};

use super::{Entry, KeyWindow, Part, Swag, WindowState};
use crate::spec::Window;
use crate::value::{Key, Map, Value};

use super::agg::Distinct;

/// The saved state of one window spec.
#[derive(Debug, Serialize, Deserialize)]
pub struct WindowSnapshot {
    newest: i64,
    swept_at: i64,
    keys: Vec<KeySnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeySnapshot {
    key: Key,
    watermark: i64,
    valid: bool,
    start: u64,
    split: u64,
    /// `(t, values)` in the entries' order.
    entries: Vec<(i64, Vec<Value>)>,
}

/// The saved state of one window spec, by reference (nothing is copied to save it).
#[derive(Serialize)]
pub struct WindowSnapshotRef<'a> {
    newest: i64,
    swept_at: i64,
    keys: KeysRef<'a>,
}

struct KeysRef<'a>(&'a Map<Key, KeyWindow>);

#[derive(Serialize)]
struct KeyRef<'a> {
    key: &'a Key,
    watermark: i64,
    valid: bool,
    start: u64,
    split: u64,
    entries: EntriesRef<'a>,
}

struct EntriesRef<'a>(&'a std::collections::VecDeque<Entry>);

impl Serialize for KeysRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(key, kw)| KeyRef {
            key,
            watermark: kw.watermark,
            valid: kw.swag.valid,
            start: kw.swag.start as u64,
            split: kw.swag.split as u64,
            entries: EntriesRef(&kw.entries),
        }))
    }
}

impl Serialize for EntriesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| (e.t, &*e.vals)))
    }
}

impl WindowState {
    /// This state as data, by reference.
    pub fn snapshot(&self) -> WindowSnapshotRef<'_> {
        WindowSnapshotRef {
            newest: self.newest,
            swept_at: self.swept_at,
            keys: KeysRef(&self.by_key),
        }
    }

    /// The state a snapshot saved, for window spec `w`. Refuses (with the reason) a snapshot
    /// that this spec could not have produced: values of another width, entries out of time
    /// order, stack indices outside the entries, a key twice, a NaN.
    pub fn restore(w: &Window, snap: WindowSnapshot) -> Result<Self, String> {
        let mut state = Self::new(w);
        let nf = state.fields.len();
        state.newest = snap.newest;
        state.swept_at = snap.swept_at;
        state.by_key.reserve(snap.keys.len());
        for k in snap.keys {
            let entries: std::collections::VecDeque<Entry> = k
                .entries
                .into_iter()
                .map(|(t, vals)| Entry {
                    t,
                    vals: smallvec::SmallVec::from_vec(vals),
                })
                .collect();
            let bad = |why: &str| format!("window `{}`, key {:?}: {why}", w.name, k.key);
            if entries.iter().any(|e| e.vals.len() != nf) {
                return Err(bad(&format!("an entry does not hold {nf} values")));
            }
            if entries.iter().any(|e| {
                e.vals
                    .iter()
                    .any(|v| matches!(v, Value::Float(x) if x.is_nan()))
            }) {
                return Err(bad("an entry holds NaN"));
            }
            if entries
                .iter()
                .zip(entries.iter().skip(1))
                .any(|(a, b)| a.t > b.t)
            {
                return Err(bad("entries are not in time order"));
            }
            if entries.iter().any(|e| e.t > k.watermark) {
                return Err(bad("an entry is newer than the key's watermark"));
            }
            let (start, split) = (k.start as usize, k.split as usize);
            if k.valid && !(start <= split && split <= entries.len()) {
                return Err(bad("sliding-window indices outside the entries"));
            }
            let mut swag = Swag {
                valid: k.valid,
                start,
                split,
                front: Vec::new(),
                back: vec![Part::EMPTY; nf],
                distinct: vec![Map::default(); state.distinct_fields.len()],
            };
            if k.valid {
                swag.front.reserve((split - start) * nf);
                let mut acc = vec![Part::EMPTY; nf];
                for e in entries.range(start..split).rev() {
                    for (a, v) in acc.iter_mut().zip(e.vals.iter()) {
                        *a = Part::of(v).then_as(a, state.welford);
                    }
                    swag.front.extend_from_slice(&acc);
                }
                for e in entries.range(split..) {
                    for (b, v) in swag.back.iter_mut().zip(e.vals.iter()) {
                        *b = b.then_as(&Part::of(v), state.welford);
                    }
                }
                for (counts, &f) in swag.distinct.iter_mut().zip(&state.distinct_fields) {
                    for e in entries.range(start..) {
                        if let Some(v) = Distinct::of(&e.vals[f]) {
                            *counts.entry(v).or_default() += 1;
                        }
                    }
                }
            }
            let kw = KeyWindow {
                watermark: k.watermark,
                entries,
                swag,
            };
            if state.by_key.insert(k.key.clone(), kw).is_some() {
                return Err(format!("window `{}`: key {:?} saved twice", w.name, k.key));
            }
        }
        Ok(state)
    }
}
