//! Repartitioning: windows keyed by another column than the partition key, on a topic of
//! several partitions.
//!
//! Two steps, as Kafka Streams splits a topology at a repartition topic, both in every
//! `scorer run` instance of the group (one consumer subscribed to both topics):
//!
//! - **Upstream**, per input partition ([`Upstream`], a [`Scorer`] made with
//!   [`Scorer::upstream`]): decoding, filters, joins, the admission checks (future; late for
//!   the key; late for the partition, see below) and the windows keyed by the partition key.
//!   The row is then sent to the repartition topic, keyed by the other windows' column, with
//!   its source position and the partition's *mark*: its newest event time less the lateness.
//!   Every admitted event of the partition is at or after the mark it advertised before, so
//!   the mark is a watermark. Marks also go to every repartition partition on their own
//!   ([`Record::Mark`]), and a partition that delivered nothing for `--idle-after` and is read
//!   to its end is marked idle (no bound).
//! - **Downstream**, per repartition partition ([`Merge`]): records are held in
//!   `(event time, partition key, input partition, input offset)` order until the smallest
//!   mark over all input partitions has passed them; then the windows keyed by the other
//!   column and the derived features are computed, in that order, and the event is scored.
//!   That order is the offline engine's (event time, ties by partition key, then file order),
//!   so the two agree by construction; `trainer parity --partitions N` measures it.
//!
//! An idle partition still bounds what is released for the grace (`--idle-after`): an event
//! behind the active partitions' marks but not behind the idle one's last mark is released
//! once it has waited that long, so a partition that resumes with older events within the
//! grace is not overtaken (a topic fed in bursts after a pause).
//!
//! A record's input offset at or below the newest one seen from its partition is a repeat
//! (upstream rescored after a restart) and is skipped. A record behind what was released
//! already (possible only when its partition resumed after the grace) is dead-lettered as late.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shared_features::{Key, Pipeline, Row, Split, Stages, Value};
use shared_models::Servable;

use crate::score::{Outcome, Scorer, SourcePos, key_text};

/// First bytes of every repartition record, and its format version.
const MAGIC: &[u8; 4] = b"KMR1";

/// The mark of an idle partition: it bounds nothing.
pub const IDLE: i64 = i64::MAX;

#[derive(Serialize)]
enum RecordRef<'a> {
    Event {
        partition: i32,
        offset: i64,
        mark: i64,
        row: &'a [Value],
    },
    Mark {
        partition: i32,
        mark: i64,
    },
}

/// A record of the repartition topic.
#[derive(Deserialize, Debug)]
pub enum Record {
    /// An admitted event's row (fields, joins, windows keyed by the partition key) and where it
    /// came from, with its partition's mark after it.
    Event {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
        /// The input partition's mark.
        mark: i64,
        /// The row, up to the derived features.
        row: Row,
    },
    /// An input partition's mark ([`IDLE`]: idle).
    Mark {
        /// Input partition.
        partition: i32,
        /// Its mark.
        mark: i64,
    },
}

fn encode(r: &RecordRef<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(MAGIC);
    // Plain data into a Vec: this does not fail.
    if let Ok(v) = postcard::to_extend(r, std::mem::take(out)) {
        *out = v;
    }
}

/// A mark record's bytes.
pub fn mark_record(partition: i32, mark: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode(&RecordRef::Mark { partition, mark }, &mut out);
    out
}

/// Decode a record of the repartition topic, or say what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a repartition record (no KMR1 header): another producer wrote to the topic")?;
    postcard::from_bytes(body).map_err(|e| format!("repartition record does not decode: {e}"))
}

/// The upstream step's settings, from the pipeline.
#[derive(Debug)]
pub struct Upstream {
    /// The column the other windows are keyed by (the repartition key).
    by: usize,
    /// Columns forwarded: everything before the derived features.
    cols: usize,
}

impl Upstream {
    /// `None` when no window is keyed by another column.
    pub fn of(p: &Pipeline) -> Option<Self> {
        let w = p.repartition_windows().next()?;
        Some(Self {
            by: w.key,
            cols: p.layout.len() - p.derives.len(),
        })
    }

    /// The record for the repartition topic in `out` and its key in `key`.
    pub(crate) fn forward(
        &self,
        p: &Pipeline,
        row: &[Value],
        pos: SourcePos<'_>,
        progress: Option<i64>,
        key: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let event_time = row[p.event_time_col()].as_i64().unwrap_or_default();
        key_text(&row[self.by], key);
        let mark = progress.map_or(i64::MIN, |t| t.saturating_sub(p.lateness_ms));
        let r = RecordRef::Event {
            partition: pos.partition,
            offset: pos.offset,
            mark,
            row: &row[..self.cols],
        };
        encode(&r, out);
        Outcome::Scored { event_time }
    }
}

/// The column every window keyed by another column is keyed by, or why the pipeline cannot
/// be repartitioned.
pub fn repartition_key(p: &Pipeline) -> Result<Option<&str>, String> {
    let mut keys: Vec<&str> = p
        .repartition_windows()
        .map(|w| p.layout[w.key].name.as_str())
        .collect();
    keys.dedup();
    match keys.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(format!(
            "windows are keyed by several columns other than the partition key ({}): the \
             scorer repartitions by one column only",
            keys.join(", ")
        )),
    }
}

/// Order of the merge: event time, partition key (nulls first), input partition, offset.
type Order = (i64, Option<Key>, i32, i64);

#[derive(Debug)]
struct Held {
    row: Row,
    /// The event's sequence number in the live loop's tracker; `None`: read at warm-up, its
    /// prediction was delivered before.
    seq: Option<u64>,
    /// When it arrived (the grace before idle partitions stop holding it back).
    at: Instant,
}

/// What [`Merge::push`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Held until the marks pass it.
    Held,
    /// A mark, or a repeat of an event already seen: nothing to wait for.
    Done,
    /// Cannot be merged (why): dead-letter it.
    Refused(String),
}

/// One released event: its row has every feature, and `seq` says whether a prediction is due.
pub struct Released<'a> {
    /// The tracker's sequence number of the repartition record, if scored live.
    pub seq: Option<u64>,
    /// Where the event came from.
    pub pos: SourcePos<'a>,
    /// The scoring of the row (only when `seq` is given).
    pub outcome: Option<Outcome>,
}

/// The downstream step for one repartition partition.
#[derive(Debug)]
pub struct Merge {
    scorer: Scorer,
    stages: Stages,
    pipeline: Arc<Pipeline>,
    input: String,
    marks: Vec<i64>,
    idle: Vec<bool>,
    seen: Vec<i64>,
    /// The last event released: one before it in the merge's order can no longer be placed.
    last: Option<Order>,
    held: BTreeMap<Order, Held>,
    /// How long an event waits for the last marks of idle partitions before they stop holding
    /// it back.
    grace: Duration,
}

impl Merge {
    /// An empty merge of the events of `input` (of `partitions` partitions).
    pub fn new(model: Arc<Servable>, input: &str, partitions: usize) -> Self {
        let pipeline = model.pipeline.clone();
        Self {
            stages: Stages::new(&pipeline),
            scorer: Scorer::new(model, usize::MAX),
            pipeline,
            input: input.to_string(),
            marks: vec![i64::MIN; partitions],
            idle: vec![false; partitions],
            seen: vec![-1; partitions],
            last: None,
            held: BTreeMap::new(),
            grace: Duration::ZERO,
        }
    }

    /// Hold events back for up to `grace` when an idle input partition's last mark is behind
    /// them (a partition resuming after the others went idle gets that long to catch up).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Encode only: released rows are left for a model server ([`Scorer::set_remote`]).
    pub fn set_remote(&mut self, on: bool) {
        self.scorer.set_remote(on);
    }

    /// The scorer (model, buffers of the last prediction).
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// Swap in another model of the same pipeline (the caller rebuilds otherwise).
    pub fn swap(&mut self, m: Arc<Servable>) -> bool {
        self.scorer.swap(m)
    }

    /// Events held, waiting for the marks.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Keys holding window state.
    pub fn state_keys(&self) -> usize {
        self.stages.state_keys()
    }

    /// Take in one record of the repartition topic.
    pub fn push(&mut self, bytes: &[u8], seq: Option<u64>) -> Pushed {
        let rec = match decode(bytes) {
            Ok(r) => r,
            Err(e) => return Pushed::Refused(e),
        };
        let n = self.marks.len();
        match rec {
            Record::Mark { partition, mark } => {
                let Some(i) = usize::try_from(partition).ok().filter(|&i| i < n) else {
                    return Pushed::Refused(format!(
                        "mark of input partition {partition}; `{}` has {n}",
                        self.input
                    ));
                };
                if mark == IDLE {
                    self.idle[i] = true;
                } else {
                    self.idle[i] = false;
                    self.marks[i] = self.marks[i].max(mark);
                }
                Pushed::Done
            }
            Record::Event {
                partition,
                offset,
                mark,
                row,
            } => {
                let p = &*self.pipeline;
                let Some(i) = usize::try_from(partition).ok().filter(|&i| i < n) else {
                    return Pushed::Refused(format!(
                        "event of input partition {partition}; `{}` has {n}",
                        self.input
                    ));
                };
                if row.len() != p.layout.len() - p.derives.len() {
                    return Pushed::Refused(format!(
                        "row of {} columns, the pipeline forwards {} (another pipeline wrote \
                         it)",
                        row.len(),
                        p.layout.len() - p.derives.len()
                    ));
                }
                if offset <= self.seen[i] {
                    return Pushed::Done; // a repeat from upstream
                }
                self.seen[i] = offset;
                self.idle[i] = false;
                self.marks[i] = self.marks[i].max(mark);
                let Some(t) = row[p.event_time_col()].as_i64() else {
                    return Pushed::Refused("row without an event time".into());
                };
                let key = Key::of(&row[p.key]);
                let order = (t, key, partition, offset);
                if self.last.as_ref().is_some_and(|l| &order < l) {
                    return Pushed::Refused(format!(
                        "late event: event time {} of {}/{partition}@{offset} is behind events \
                         already scored after its partition was idle",
                        shared_features::time::format_timestamp(t),
                        self.input
                    ));
                }
                let mut full = row;
                full.resize(p.layout.len(), Value::Null);
                self.held.insert(
                    order,
                    Held {
                        row: full,
                        seq,
                        at: Instant::now(),
                    },
                );
                Pushed::Held
            }
        }
    }

    /// The smallest mark over the input partitions: `(strict, loose)`, where `strict` counts
    /// an idle partition's last mark and `loose` does not (idle ones bound nothing).
    fn watermarks(&self) -> (i64, i64) {
        let strict = self.marks.iter().copied().min().unwrap_or(i64::MIN);
        let loose = self
            .marks
            .iter()
            .zip(&self.idle)
            .map(|(&m, &idle)| if idle { IDLE } else { m })
            .min()
            .unwrap_or(i64::MIN);
        (strict, loose)
    }

    /// Release, in order, every held event before the watermark: the remaining windows and
    /// derived features are computed and, for an event consumed live, it is scored; `f` gets
    /// each one. An event behind the marks of the active partitions but not behind an idle
    /// partition's last mark waits the grace first, so that a partition that resumes with
    /// older events is not overtaken at once.
    pub fn release(&mut self, mut f: impl FnMut(&Scorer, Released<'_>)) {
        let (strict, loose) = self.watermarks();
        if loose == i64::MIN {
            return;
        }
        while let Some(entry) = self.held.first_entry() {
            let t = entry.key().0;
            let due = t < strict || (t < loose && entry.get().at.elapsed() >= self.grace);
            if !due {
                break;
            }
            let (order, mut h) = entry.remove_entry();
            let (partition, offset) = (order.2, order.3);
            self.last = Some(order);
            let p = &*self.pipeline;
            // Downstream refuses nothing: admission happened upstream.
            let _ = self.stages.process_split(p, &mut h.row, Split::Downstream);
            let pos = SourcePos {
                topic: &self.input,
                partition,
                offset,
            };
            let outcome = h.seq.map(|_| self.scorer.score_row(&h.row, pos));
            f(
                &self.scorer,
                Released {
                    seq: h.seq,
                    pos,
                    outcome,
                },
            );
        }
    }
}

/// The format of [`Merge::save_state`].
const MERGE_FORMAT: u32 = 1;

#[derive(Serialize)]
struct MergeRef<'a> {
    format: u32,
    stages: Vec<u8>,
    marks: &'a [i64],
    idle: &'a [bool],
    seen: &'a [i64],
    last: Option<Order>,
    held: Vec<(&'a Order, &'a [Value])>,
}

#[derive(Deserialize)]
struct MergeSnapshot {
    format: u32,
    stages: Vec<u8>,
    marks: Vec<i64>,
    idle: Vec<bool>,
    seen: Vec<i64>,
    last: Option<Order>,
    held: Vec<(Order, Row)>,
}

impl Merge {
    /// Everything later records depend on, as bytes for a checkpoint: the downstream window
    /// state, the marks, the newest offset seen per input partition and the rows held. Rows
    /// held at a snapshot are not yet scored; a restore at a commit at or past the snapshot
    /// knows they were scored by then (their records are below the commit), so they come back
    /// without a prediction due.
    pub fn save_state(&self) -> Vec<u8> {
        let snap = MergeRef {
            format: MERGE_FORMAT,
            stages: self.stages.save(),
            marks: &self.marks,
            idle: &self.idle,
            seen: &self.seen,
            last: self.last.clone(),
            held: self.held.iter().map(|(k, h)| (k, &h.row[..])).collect(),
        };
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Replace the state with one [`Merge::save_state`] saved for the same pipeline and input.
    /// Bytes that do not decode or do not fit are refused with the reason; on error nothing
    /// changes.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: MergeSnapshot =
            postcard::from_bytes(bytes).map_err(|e| format!("merge state does not decode: {e}"))?;
        if s.format != MERGE_FORMAT {
            return Err(format!(
                "merge state of format {}, this build reads format {MERGE_FORMAT}",
                s.format
            ));
        }
        let n = self.marks.len();
        if s.marks.len() != n || s.idle.len() != n || s.seen.len() != n {
            return Err(format!(
                "merge state for {} input partitions, `{}` has {n}",
                s.marks.len(),
                self.input
            ));
        }
        let p = &*self.pipeline;
        if let Some((_, row)) = s.held.iter().find(|(_, r)| r.len() != p.layout.len()) {
            return Err(format!(
                "a held row of {} columns, the pipeline has {}",
                row.len(),
                p.layout.len()
            ));
        }
        let stages = Stages::load(p, &s.stages)?;
        self.stages = stages;
        self.marks = s.marks;
        self.idle = s.idle;
        self.seen = s.seen;
        self.last = s.last;
        self.held = s
            .held
            .into_iter()
            .map(|(k, row)| {
                (
                    k,
                    Held {
                        row,
                        seq: None,
                        at: Instant::now(),
                    },
                )
            })
            .collect();
        Ok(())
    }
}

impl crate::source::Warm for Merge {
    fn warm(&mut self, payload: &[u8], _offset: i64) -> bool {
        let _ = self.push(payload, None);
        self.release(|_, _| {});
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_bytes_are_refused() {
        let row = vec![Value::Int(3), Value::Str("JFK".into()), Value::Null];
        let mut out = Vec::new();
        encode(
            &RecordRef::Event {
                partition: 2,
                offset: 41,
                mark: -7,
                row: &row,
            },
            &mut out,
        );
        match decode(&out).unwrap() {
            Record::Event {
                partition,
                offset,
                mark,
                row: r,
            } => {
                assert_eq!((partition, offset, mark), (2, 41, -7));
                assert_eq!(format!("{r:?}"), format!("{row:?}"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&mark_record(1, IDLE)).unwrap(),
            Record::Mark {
                partition: 1,
                mark: IDLE
            }
        ));
        let e = decode(b"{\"json\": 1}").unwrap_err();
        assert!(e.contains("KMR1"), "{e}");
        let e = decode(&out[..out.len() - 2]).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
    }
}
