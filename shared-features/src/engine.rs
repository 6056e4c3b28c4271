//! The online engine: one event in, one feature row out, with per-key state.
//!
//! [`Stages`] holds what both engines share after enrichment (lateness, windows, derived
//! features); the online engine adds JSON decoding, filters and hash-map joins in front of it.

use std::sync::Arc;

use crate::decode::Decoder;
use crate::error::EventError;
use crate::eval;
use crate::spec::Pipeline;
use crate::tables::Tables;
use crate::time::format_timestamp;
use crate::value::{Key, Row, Value};
use crate::window::{WindowSnapshot, WindowSnapshotRef, WindowState};

/// The format of [`Stages::save`]; a saved state of another version is refused.
const STATE_FORMAT: u32 = 1;

#[derive(serde::Serialize)]
struct StagesRef<'a> {
    format: u32,
    progress: Option<i64>,
    windows: Vec<WindowSnapshotRef<'a>>,
}

#[derive(serde::Deserialize)]
struct StagesSnapshot {
    format: u32,
    progress: Option<i64>,
    windows: Vec<WindowSnapshot>,
}

/// Which part of the stages after enrichment an engine runs.
///
/// A pipeline with windows keyed by another column than the partition key runs in two steps
/// when its topic has several partitions (the README's repartition semantics): upstream, per
/// input partition, the admission checks and the windows keyed by the partition key; then,
/// after a repartition topic has brought each other key's events to one place and a merge has
/// put them in `(event time, partition key, log position)` order, downstream the other windows
/// and the derived features. Over a sorted history the two steps give exactly what
/// [`Split::All`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Everything, in one place (one partition, or the offline engine).
    All,
    /// Admission (future, late per key and per input partition) and the windows keyed by the
    /// partition key; no derived features.
    Upstream,
    /// The windows keyed by another column and the derived features, on events already
    /// admitted upstream and merged into order: nothing is refused here.
    Downstream,
}

impl Split {
    fn runs(self, p: &Pipeline, w: &crate::spec::Window) -> bool {
        match self {
            Split::All => true,
            Split::Upstream => w.key == p.key,
            Split::Downstream => w.key != p.key,
        }
    }
}

/// The stages after enrichment, shared by the offline and online engines.
///
/// # Events from the future
///
/// The stream's *progress* is a clock driven by the events themselves, never by the wall clock
/// (the offline engine has none, and both engines must agree): it starts at the first event's
/// time, and each event moves it to `max(progress, min(t, progress + max_future))`. An event
/// with `t > progress + max_future` is refused as [`EventError::Future`] before it touches any
/// window, so one event dated a year ahead cannot make its keys' later events "late".
///
/// - A refused event still moves the progress, by at most `max_future`. That is what keeps a
///   stream alive after a real gap longer than the bound (a weekend without events): the first
///   `gap / max_future` events after it are refused, then the clock has caught up. A single bad
///   event only loosens the bound by one `max_future` until real time passes it.
/// - Accepted events only ever move the progress to their own time, so it is the newest
///   accepted event time whenever nothing was refused.
/// - Window state, lateness and `idle_key_ttl` run on accepted events only: a refused event
///   neither advances a key's watermark nor makes other keys look idle and be forgotten.
/// - The offline engine feeds its time-sorted table through these same stages, so a gap in
///   the history refuses the same events in both engines, and the parity check sees it.
#[derive(Debug)]
pub struct Stages {
    windows: Vec<WindowState>,
    /// The stream's progress; `None` before the first event.
    progress: Option<i64>,
}

impl Stages {
    /// Fresh state (no key has been seen).
    pub fn new(p: &Pipeline) -> Self {
        Self {
            windows: p.windows.iter().map(WindowState::new).collect(),
            progress: None,
        }
    }

    /// The stream's progress (see [`Stages`]), once an event has been seen.
    pub fn progress(&self) -> Option<i64> {
        self.progress
    }

    /// Aggregate windows and derive features into `row`, whose fields, `event_time` and joined
    /// columns are filled. A future or late event is refused before any window changes.
    pub fn process(&mut self, p: &Pipeline, row: &mut [Value]) -> Result<(), EventError> {
        self.process_split(p, row, Split::All)
    }

    /// [`Stages::process`] for part of the stages (see [`Split`]).
    pub fn process_split(
        &mut self,
        p: &Pipeline,
        row: &mut [Value],
        split: Split,
    ) -> Result<(), EventError> {
        let t = row[p.event_time_col()]
            .as_i64()
            .ok_or_else(|| EventError::Time("event_time is null".into()))?;
        if split == Split::Downstream {
            self.apply(p, row, t, split);
            return Ok(());
        }
        // Upstream of a repartition, the merge downstream needs every event of a partition at
        // or after the partition's newest event less the lateness (its watermark): admission.
        if split == Split::Upstream {
            let mut admission = Admission {
                progress: self.progress,
            };
            let admitted = admission.admit(p, t);
            self.progress = admission.progress;
            admitted?;
        } else {
            advance(&mut self.progress, p, t)?;
        }
        // Upstream and whole: the derived columns the windows key or aggregate by (downstream
        // of a repartition they arrive computed).
        Self::pre_derive(p, row);
        // A key's newest event is never newer than the stream's progress, so an event within
        // the lateness of the progress (every event of a sorted history) is late for no key:
        // the per-key look-ups below are for events that are not.
        let near_progress = self
            .progress
            .is_some_and(|x| t >= x.saturating_sub(p.lateness_ms));
        if !near_progress {
            for (w, state) in p.windows.iter().zip(&self.windows) {
                if !split.runs(p, w) {
                    continue;
                }
                let Some(key) = Key::of(&row[w.key]) else {
                    continue;
                };
                if let Some(mark) = state.watermark(&key)
                    && t < mark.saturating_sub(p.lateness_ms)
                {
                    return Err(EventError::Late {
                        key: match &row[w.key] {
                            Value::Str(s) => s.to_string(),
                            other => other.to_string(),
                        },
                        event_time: format_timestamp(t),
                        watermark: format_timestamp(mark),
                        lateness_ms: p.lateness_ms,
                    });
                }
            }
        }
        self.apply(p, row, t, split);
        Ok(())
    }

    /// The stages for an event an [`Admission`] admitted in arrival order and that is now
    /// processed in event-time order behind the watermark ([`crate::OrderedEngine`], the
    /// offline engine over a log): the derived columns before the windows, every window, the
    /// derived features. Nothing is refused here: admission happened on arrival, and in
    /// event-time order no event is behind its key's newest one.
    pub fn process_ordered(&mut self, p: &Pipeline, row: &mut [Value]) {
        let Some(t) = row[p.event_time_col()].as_i64() else {
            return; // admission refused it: never released
        };
        Self::pre_derive(p, row);
        self.apply(p, row, t, Split::All);
    }

    /// Move the progress to `t` (admission happened), update the windows `split` runs, and
    /// derive the features where it derives them.
    fn apply(&mut self, p: &Pipeline, row: &mut [Value], t: i64, split: Split) {
        self.progress = Some(self.progress.map_or(t, |x| x.max(t)));
        for (w, state) in p.windows.iter().zip(&mut self.windows) {
            if split.runs(p, w) {
                state.update(w, t, row, p.lateness_ms, p.idle_key_ttl_ms);
            }
        }
        if split != Split::Upstream {
            self.derive(p, row);
        }
    }

    fn derive(&self, p: &Pipeline, row: &mut [Value]) {
        Self::derive_into(&p.derives, p.layout.len() - p.derives.len(), row);
    }

    fn pre_derive(p: &Pipeline, row: &mut [Value]) {
        Self::derive_into(&p.pre_derives, p.pre_derive_first_col, row);
    }

    /// Compute `derives` in order into the columns from `first` on (each may use the ones
    /// before it).
    fn derive_into(derives: &[crate::spec::Derive], first: usize, row: &mut [Value]) {
        for (i, d) in derives.iter().enumerate() {
            let v = match d.args.as_slice() {
                [a] => eval::derive(&d.func, &[&row[*a]]),
                [a, b] => eval::derive(&d.func, &[&row[*a], &row[*b]]),
                _ => Value::Null,
            };
            row[first + i] = v;
        }
    }

    /// Keys holding window state, summed over windows (cheap: no walk over the keys).
    pub fn state_keys(&self) -> usize {
        self.windows.iter().map(WindowState::keys).sum()
    }

    /// Everything later events depend on (the progress, every key's window entries and their
    /// sliding-window indices), as bytes (postcard: integers and floats bit for bit).
    /// [`Stages::load`] turns them back into a state that gives every later event exactly the
    /// features this one would.
    pub fn save(&self) -> Vec<u8> {
        let snap = StagesRef {
            format: STATE_FORMAT,
            progress: self.progress,
            windows: self.windows.iter().map(WindowState::snapshot).collect(),
        };
        // Serializing plain data into a Vec does not fail.
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// The state [`Stages::save`] saved, for pipeline `p`. Bytes that do not decode, or
    /// describe windows this pipeline does not have, are refused with the reason; nothing
    /// here panics on any input.
    pub fn load(p: &Pipeline, bytes: &[u8]) -> Result<Self, String> {
        let snap: StagesSnapshot = postcard::from_bytes(bytes)
            .map_err(|e| format!("window state does not decode: {e}"))?;
        if snap.format != STATE_FORMAT {
            return Err(format!(
                "window state of format {}, this build reads format {STATE_FORMAT}",
                snap.format
            ));
        }
        if snap.windows.len() != p.windows.len() {
            return Err(format!(
                "window state for {} windows, the pipeline has {}",
                snap.windows.len(),
                p.windows.len()
            ));
        }
        let windows = p
            .windows
            .iter()
            .zip(snap.windows)
            .map(|(w, s)| WindowState::restore(w, s))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            windows,
            progress: snap.progress,
        })
    }

    /// Keys and events held in window state, summed over windows.
    pub fn state_size(&self) -> (usize, usize) {
        self.windows
            .iter()
            .fold((0, 0), |(k, e), w| (k + w.keys(), e + w.entries()))
    }
}

/// The future rule (see [`Stages`]): move the stream's `progress` for an event at `t` and
/// return the progress before it, or refuse the event as [`EventError::Future`] (which still
/// moves the progress, by at most `max_future`).
fn advance(progress: &mut Option<i64>, p: &Pipeline, t: i64) -> Result<i64, EventError> {
    let before = progress.unwrap_or(t);
    let limit = before.saturating_add(p.max_future_ms);
    *progress = Some(before.max(t.min(limit)));
    if t > limit {
        return Err(EventError::Future {
            event_time: format_timestamp(t),
            progress: format_timestamp(before),
            max_future_ms: p.max_future_ms,
        });
    }
    Ok(before)
}

/// Admission of events in arrival order, for an engine that then processes them in event-time
/// order behind a watermark ([`crate::OrderedEngine`] online, the offline engine over a log).
///
/// An event is refused when it is from the future ([`Stages`]' rule) or when its time is more
/// than `[events] lateness` behind the newest event admitted before it (the stream's progress):
/// [`EventError::LateInPartition`]. So every event admitted from now on is at or after the
/// *watermark*, progress less lateness, and an event dated before the watermark can be processed
/// knowing that nothing older will come: the events pass the windows in event-time order,
/// exactly as the offline engine sorts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Admission {
    progress: Option<i64>,
}

impl Admission {
    /// Admit an event at `t`, or say why not.
    pub fn admit(&mut self, p: &Pipeline, t: i64) -> Result<(), EventError> {
        let before = advance(&mut self.progress, p, t)?;
        if t < before.saturating_sub(p.lateness_ms) {
            return Err(EventError::LateInPartition {
                event_time: format_timestamp(t),
                newest: format_timestamp(before),
                lateness_ms: p.lateness_ms,
            });
        }
        Ok(())
    }

    /// Every event admitted from now on is at or after this time; `None` before the first.
    pub fn watermark(&self, p: &Pipeline) -> Option<i64> {
        self.progress.map(|x| x.saturating_sub(p.lateness_ms))
    }
}

/// Runs a pipeline event by event: decode, filter, event time, join, aggregate, derive.
#[derive(Debug)]
pub struct OnlineEngine {
    pipeline: Arc<Pipeline>,
    tables: Arc<Tables>,
    decoder: EventDecoder,
    stages: Stages,
    row: Row,
    split: Split,
}

impl OnlineEngine {
    /// An engine with empty window state.
    pub fn new(pipeline: Arc<Pipeline>, tables: Arc<Tables>) -> Self {
        let decoder = EventDecoder::Json(Decoder::new(&pipeline));
        let stages = Stages::new(&pipeline);
        let row = vec![Value::Null; pipeline.layout.len()];
        Self {
            pipeline,
            tables,
            decoder,
            stages,
            row,
            split: Split::All,
        }
    }

    /// Run only part of the stages after enrichment (see [`Split`]); [`Split::Upstream`] rows
    /// carry no derived features and leave the windows keyed by another column empty.
    pub fn with_split(mut self, split: Split) -> Self {
        self.split = split;
        self
    }

    /// The pipeline this engine runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Read events in this value format (JSON by default); the features do not depend on it.
    #[cfg(feature = "avro")]
    pub fn with_format(mut self, format: &crate::wire::Format) -> Self {
        self.decoder = EventDecoder::new(&self.pipeline, format);
        self
    }

    /// Process one event (JSON unless [`OnlineEngine::with_format`] says otherwise). `Ok(None)`: a filter dropped it. `Ok(Some(row))`: every column of
    /// the layout, to be selected and encoded with [`crate::FittedState::transform`].
    pub fn process(&mut self, event: &[u8]) -> Result<Option<&[Value]>, EventError> {
        self.decoder.decode(event, &mut self.row)?;
        self.after_decode()
    }

    /// Process an event whose fields are already typed, in declaration order. Fields beyond
    /// the declared ones are ignored; missing trailing fields are null.
    pub fn process_fields(&mut self, fields: &[Value]) -> Result<Option<&[Value]>, EventError> {
        let n = self.pipeline.n_fields;
        let given = n.min(fields.len());
        self.row[..given].clone_from_slice(&fields[..given]);
        self.row[given..n].fill(Value::Null);
        self.after_decode()
    }

    fn after_decode(&mut self) -> Result<Option<&[Value]>, EventError> {
        if self.prepare()?.is_none() {
            return Ok(None);
        }
        self.stages
            .process_split(&self.pipeline, &mut self.row, self.split)?;
        Ok(Some(&self.row))
    }

    /// Decode an event and run the stages before the windows ([`OnlineEngine::prepare`]).
    pub(crate) fn decode_prepare(&mut self, event: &[u8]) -> Result<Option<i64>, EventError> {
        self.decoder.decode(event, &mut self.row)?;
        self.prepare()
    }

    /// Filters, event time and joins on the decoded row: its event time, or `None` when a
    /// filter dropped it.
    fn prepare(&mut self) -> Result<Option<i64>, EventError> {
        let p = &*self.pipeline;
        let row = &mut self.row;
        if !p.filters.iter().all(|f| eval::matches(f, &row[f.col])) {
            return Ok(None);
        }
        let t = eval::event_time(p, row).map_err(EventError::Time)?;
        row[p.event_time_col()] = Value::Int(t);
        enrich(p, &self.tables, t, row);
        Ok(Some(t))
    }

    /// The row being built, and the stages (for [`crate::OrderedEngine`]).
    pub(crate) fn parts(&mut self) -> (&Pipeline, &mut Row, &mut Stages) {
        (&self.pipeline, &mut self.row, &mut self.stages)
    }

    /// The row of the last event [`OnlineEngine::process`] turned into features.
    pub fn row(&self) -> &[Value] {
        &self.row
    }

    /// Keys and events held in window state.
    pub fn state_size(&self) -> (usize, usize) {
        self.stages.state_size()
    }

    /// The stream's progress (see [`Stages`]), once an event has reached the windows.
    pub fn progress(&self) -> Option<i64> {
        self.stages.progress()
    }

    /// Keys holding window state, summed over windows.
    pub fn state_keys(&self) -> usize {
        self.stages.state_keys()
    }

    /// The window state as bytes (see [`Stages::save`]).
    pub fn save_state(&self) -> Vec<u8> {
        self.stages.save()
    }

    /// Replace the window state with one [`OnlineEngine::save_state`] saved under the same
    /// pipeline. On error the state is unchanged.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stages = Stages::load(&self.pipeline, bytes)?;
        Ok(())
    }
}

/// A decoder of events in a topic's value format: the engines' own, for readers that must
/// decode as they do (the trainer's topic reader, the offline engine's history files).
#[derive(Debug, Clone)]
pub enum EventDecoder {
    /// JSON objects.
    Json(Decoder),
    /// Avro in the wire format.
    #[cfg(feature = "avro")]
    Avro(crate::wire::AvroDecoder),
    /// Protobuf in the wire format.
    #[cfg(feature = "protobuf")]
    Protobuf(crate::wire::protobuf::ProtobufDecoder),
}

impl EventDecoder {
    /// A decoder of `p`'s fields in `format`.
    #[cfg(feature = "avro")]
    pub fn new(p: &Pipeline, format: &crate::wire::Format) -> Self {
        match format {
            crate::wire::Format::Json => Self::Json(Decoder::new(p)),
            crate::wire::Format::Avro(schemas) => {
                Self::Avro(crate::wire::AvroDecoder::new(p, schemas.clone()))
            }
            #[cfg(feature = "protobuf")]
            crate::wire::Format::Protobuf(schemas) => Self::Protobuf(
                crate::wire::protobuf::ProtobufDecoder::new(p, schemas.clone()),
            ),
        }
    }

    /// A decoder of these fields, in this order, in `format`; the int and float fields named in
    /// `from_strings` also take strings holding numbers (the offline engine reads history so).
    #[cfg(feature = "avro")]
    pub fn for_fields(
        fields: &[(String, crate::value::FieldType)],
        from_strings: &[&str],
        format: &crate::wire::Format,
    ) -> Self {
        let fields = fields.iter().cloned();
        match format {
            crate::wire::Format::Json => Self::Json(
                Decoder::for_fields(fields).with_numbers_from_strings(from_strings.iter().copied()),
            ),
            crate::wire::Format::Avro(schemas) => Self::Avro(crate::wire::AvroDecoder::for_fields(
                fields,
                from_strings,
                schemas.clone(),
            )),
            #[cfg(feature = "protobuf")]
            crate::wire::Format::Protobuf(schemas) => {
                Self::Protobuf(crate::wire::protobuf::ProtobufDecoder::for_fields(
                    fields,
                    from_strings,
                    schemas.clone(),
                ))
            }
        }
    }

    /// Decode one event into `row[..n_fields]`.
    pub fn decode(&mut self, bytes: &[u8], row: &mut [Value]) -> Result<(), EventError> {
        match self {
            Self::Json(d) => d.decode(bytes, row),
            #[cfg(feature = "avro")]
            Self::Avro(d) => d.decode(bytes, row),
            #[cfg(feature = "protobuf")]
            Self::Protobuf(d) => d.decode(bytes, row),
        }
    }
}

fn enrich(p: &Pipeline, tables: &Tables, t: i64, row: &mut [Value]) {
    for (l, table) in p.lookups.iter().zip(&tables.lookups) {
        let hit = Key::of(&row[l.on]).and_then(|k| table.get(&k));
        fill(row, l.first_col, l.columns.len(), hit);
    }
    for (a, table) in p.asofs.iter().zip(&tables.asofs) {
        let hit = Key::of(&row[a.on]).and_then(|k| table.get(&k, t, a.tolerance_ms));
        fill(row, a.first_col, a.columns.len(), hit);
    }
}

fn fill(row: &mut [Value], first: usize, n: usize, hit: Option<&[Value]>) {
    let dst = &mut row[first..first + n];
    match hit {
        Some(vals) => dst.clone_from_slice(vals),
        None => dst.fill(Value::Null),
    }
}
