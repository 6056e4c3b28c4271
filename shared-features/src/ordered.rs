//! The online engine in watermark order: events admitted as they arrive, processed in
//! event-time order once nothing older can come.
//!
//! A topic delivers events out of order within the allowed lateness. The [`OnlineEngine`]
//! processes each one as it arrives, so an event's windows hold the events of its key that
//! *arrived* before it: one dated earlier but delivered later is missing, where the offline
//! engine, which sorts, has it. That is the one skew arrival order brings (README, "Order").
//!
//! [`OrderedEngine`] removes it by construction. On arrival an event is decoded, filtered,
//! timed, joined and admitted ([`Admission`]: refused when more than `[events] lateness`
//! behind the newest event admitted before it, or from the future); admitted events wait in
//! `(event time, partition key, arrival)` order until the watermark (the newest admitted time
//! less the lateness) has passed them, and only then go through the windows and derived
//! features. That is the offline engine's order (time, ties by partition key, then log order),
//! and the offline engine over a log applies the same admission in log order
//! (`offline::Order::Log`), so the two agree exactly. The price is latency: an event is
//! scored once an event more than the lateness newer than it has arrived, or at the end of a
//! bounded stream ([`OrderedEngine::finish`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{Admission, OnlineEngine};
use crate::error::EventError;
use crate::spec::Pipeline;
use crate::tables::Tables;
use crate::value::{Key, Row, Value};

/// The format of [`OrderedEngine::save_state`].
const ORDERED_FORMAT: u32 = 1;

#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    stages: Vec<u8>,
    admission: Admission,
    arrivals: u64,
    /// `(arrival, tag, row)` of each held event, in release order.
    held: Vec<(u64, u64, &'a [Value])>,
}

#[derive(serde::Deserialize)]
struct Snapshot {
    format: u32,
    stages: Vec<u8>,
    admission: Admission,
    arrivals: u64,
    held: Vec<(u64, u64, Row)>,
}

/// How an online engine orders events before the windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// As they arrive: each event is scored at once, and its windows hold what arrived before
    /// it (an event dated earlier that arrives later is missing from them).
    #[default]
    Arrival,
    /// Behind the watermark, in event-time order ([`OrderedEngine`]): exactly the offline
    /// engine's features, at a latency of up to the lateness.
    Watermark,
}

impl Order {
    /// The flag's spelling: `arrival` or `watermark`.
    pub fn name(self) -> &'static str {
        match self {
            Order::Arrival => "arrival",
            Order::Watermark => "watermark",
        }
    }
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "arrival" => Ok(Order::Arrival),
            "watermark" => Ok(Order::Watermark),
            other => Err(format!(
                "unknown order `{other}`: `arrival` (score each event as it arrives) or \
                 `watermark` (in event-time order behind the watermark, as offline)"
            )),
        }
    }
}

/// An event admitted and waiting for the watermark.
#[derive(Debug)]
struct Held {
    tag: u64,
    row: Row,
}

/// The online engine in watermark order (see the module's documentation).
#[derive(Debug)]
pub struct OrderedEngine {
    engine: OnlineEngine,
    admission: Admission,
    /// By `(event time, partition key, arrival number)`.
    held: BTreeMap<(i64, Option<Key>, u64), Held>,
    arrivals: u64,
    finished: bool,
    /// The row of the event released last.
    out: Row,
}

impl OrderedEngine {
    /// An engine with empty state.
    pub fn new(pipeline: Arc<Pipeline>, tables: Arc<Tables>) -> Self {
        Self {
            engine: OnlineEngine::new(pipeline, tables),
            admission: Admission::default(),
            held: BTreeMap::new(),
            arrivals: 0,
            finished: false,
            out: Row::new(),
        }
    }

    /// Read events in this value format (see [`OnlineEngine::with_format`]).
    #[cfg(feature = "avro")]
    pub fn with_format(mut self, format: &crate::wire::Format) -> Self {
        self.engine = self.engine.with_format(format);
        self
    }

    /// Take one event, with a tag of the caller's (its offset, its record number) that
    /// comes back with its row. `Ok(false)`: a filter dropped it; `Ok(true)`: admitted, held
    /// until [`OrderedEngine::next_ready`] releases it; `Err`: refused, and nothing changed
    /// but the stream's progress.
    pub fn push(&mut self, event: &[u8], tag: u64) -> Result<bool, EventError> {
        let Some(t) = self.engine.decode_prepare(event)? else {
            return Ok(false);
        };
        let (p, row, _) = self.engine.parts();
        self.admission.admit(p, t)?;
        let key = Key::of(&row[p.key]);
        self.held.insert(
            (t, key, self.arrivals),
            Held {
                tag,
                row: row.clone(),
            },
        );
        self.arrivals += 1;
        Ok(true)
    }

    /// The next event the watermark has passed (every one, after [`OrderedEngine::finish`]),
    /// through the windows and derived features: its tag and every column of the layout.
    pub fn next_ready(&mut self) -> Option<(u64, &[crate::Value])> {
        let (p, _, stages) = self.engine.parts();
        let mark = self.admission.watermark(p)?;
        let entry = self.held.first_entry()?;
        if !self.finished && entry.key().0 >= mark {
            return None;
        }
        let Held { tag, mut row } = entry.remove();
        stages.process_ordered(p, &mut row);
        self.out = row;
        Some((tag, &self.out))
    }

    /// The stream has ended (a bounded replay): release everything held.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Events admitted and not released yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Keys holding window state, summed over the pipeline's windows.
    pub fn state_keys(&self) -> usize {
        self.engine.state_keys()
    }

    /// Drop the held events whose tag `drop` picks, unreleased: they never reach the windows
    /// (the stream's progress keeps them). Returns how many were dropped.
    pub fn drop_held(&mut self, mut drop: impl FnMut(u64) -> bool) -> usize {
        let before = self.held.len();
        self.held.retain(|_, h| !drop(h.tag));
        before - self.held.len()
    }

    /// The tags of the events held, in release order.
    pub fn held_tags(&self) -> impl Iterator<Item = u64> + '_ {
        self.held.values().map(|h| h.tag)
    }

    /// The tag of the event [`OrderedEngine::next_ready`] would release next, if one is held.
    pub fn next_tag(&self) -> Option<u64> {
        self.held.first_key_value().map(|(_, h)| h.tag)
    }

    /// The whole state as bytes, for a checkpoint: the window state, the admission's progress
    /// and every held event with its tag.
    pub fn save_state(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            format: ORDERED_FORMAT,
            stages: self.engine.save_state(),
            admission: self.admission,
            arrivals: self.arrivals,
            held: self
                .held
                .iter()
                .map(|((.., arrival), h)| (*arrival, h.tag, &h.row[..]))
                .collect(),
        };
        // Serializing plain data into a Vec does not fail.
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Replace the state with one [`OrderedEngine::save_state`] saved under the same pipeline.
    /// Bytes that do not decode, or rows not of this pipeline's layout, are refused with the
    /// reason; on error nothing changes.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let snap: Snapshot = postcard::from_bytes(bytes)
            .map_err(|e| format!("ordered state does not decode: {e}"))?;
        if snap.format != ORDERED_FORMAT {
            return Err(format!(
                "ordered state of format {}, this build reads format {ORDERED_FORMAT}",
                snap.format
            ));
        }
        let p = self.engine.pipeline();
        let (et, width) = (p.event_time_col(), p.layout.len());
        let mut held = BTreeMap::new();
        for (arrival, tag, row) in snap.held {
            let t = match row.get(et).and_then(Value::as_i64) {
                Some(t) if row.len() == width => t,
                _ => return Err("a held row is not of this pipeline's layout".into()),
            };
            held.insert((t, Key::of(&row[p.key]), arrival), Held { tag, row });
        }
        self.engine.load_state(&snap.stages)?;
        self.admission = snap.admission;
        self.arrivals = snap.arrivals;
        self.held = held;
        self.finished = false;
        Ok(())
    }

    /// The pipeline this engine runs.
    pub fn pipeline(&self) -> &Pipeline {
        self.engine.pipeline()
    }
}
