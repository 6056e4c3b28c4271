//! The scoring core, shared by live scoring, replay and the model server: one event's bytes in,
//! one prediction (or a reason to dead-letter it) out. No Kafka here, so it is tested without a
//! broker.
//!
//! A panic while scoring an event would be a bug (the feature engine refuses bad data with an
//! error). As defence in depth it is caught: the event is dead-lettered with the panic's message
//! and the scorer reports itself [`broken`](Scorer::broken), because the panic may have left window
//! state half-updated; the caller then rebuilds the state without that event.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use shared_features::wire::Format;
use shared_features::{OnlineEngine, Split, Value};
use shared_models::Servable;

use crate::schema_registry::SchemaRegistry;

pub use ordered::Admitted;
pub use shared_models::prediction::{ServedBy, SourcePos, key_text, write_prediction};

mod ordered;
mod shadow;

pub use shadow::Shadow;
use shadow::{WithShadows, score_shadows};

/// What became of one event.
#[derive(Debug)]
pub enum Outcome {
    /// Scored: the prediction is in [`Scorer::prediction`], its key in [`Scorer::key`].
    Scored {
        /// Its event time (epoch ms).
        event_time: i64,
    },
    /// A pipeline filter dropped it (cancelled flights, say): no prediction is due.
    Filtered,
    /// It cannot be scored; it belongs in the dead-letter topic with this reason.
    Dead(String),
}

/// A model and the window state of the partitions it scores.
#[derive(Debug)]
pub struct Scorer {
    model: Arc<Servable>,
    engine: OnlineEngine,
    max_event_bytes: usize,
    /// The last prediction.
    b: Buffers,
    broken: bool,
    /// Encode only: the score comes from a model server ([`crate::remote`]).
    remote: bool,
    /// Upstream of a repartition: forward rows to the repartition topic rather than score.
    upstream: Option<crate::merge::Upstream>,
    /// Watermark order: events held until the watermark passes them ([`Scorer::ordered`]).
    ordered: Option<ordered::Ordered>,
    /// Avro through a schema registry; `None`: JSON ([`Scorer::with_registry`]).
    registry: Option<Arc<SchemaRegistry>>,
    /// Challengers scored on the same features ([`Scorer::add_shadow`]).
    shadows: Vec<Shadow>,
}

impl Scorer {
    /// A scorer with empty window state. Larger payloads than `max_event_bytes` are refused.
    pub fn new(model: Arc<Servable>, max_event_bytes: usize) -> Self {
        let engine = OnlineEngine::new(model.pipeline.clone(), model.tables.clone());
        Self {
            model,
            engine,
            max_event_bytes,
            b: Buffers::new(),
            broken: false,
            remote: false,
            upstream: None,
            ordered: None,
            registry: None,
            shadows: Vec::new(),
        }
    }

    /// Read events in Avro through this schema registry (`None`: JSON). Call it before the
    /// first event: the window state starts empty again.
    pub fn with_registry(mut self, registry: Option<Arc<SchemaRegistry>>) -> Self {
        self.registry = registry;
        self.engine = self.online(&self.model.clone());
        if self.ordered.is_some() {
            self.ordered = Some(ordered::Ordered::new(&self.model, &self.format()));
        }
        self
    }

    /// The value format the engines read.
    fn format(&self) -> Format {
        self.registry.as_ref().map_or(Format::Json, |r| r.format())
    }

    /// An engine with empty state for `model`, in this scorer's format and split.
    fn online(&self, model: &Servable) -> OnlineEngine {
        let split = if self.upstream.is_some() {
            Split::Upstream
        } else {
            Split::All
        };
        OnlineEngine::new(model.pipeline.clone(), model.tables.clone())
            .with_split(split)
            .with_format(&self.format())
    }

    /// Make sure the schema registry has given the schema this event names, if the events are
    /// Avro. `Err`: the registry did not answer, and the event must wait (see
    /// [`SchemaRegistry::prepare`]).
    pub fn prepare(&self, payload: Option<&[u8]>) -> Result<(), String> {
        match &self.registry {
            Some(r) => r.prepare(payload),
            None => Ok(()),
        }
    }

    /// [`Scorer::prepare`], waiting for the registry to answer (or the run to be cancelled).
    pub fn prepare_waiting(&self, payload: Option<&[u8]>) {
        if let Some(r) = &self.registry {
            r.prepare_waiting(payload);
        }
    }

    /// A scorer upstream of a repartition ([`crate::merge`]): it runs the admission checks and
    /// the windows keyed by the partition key, and its "prediction" is the record for the
    /// repartition topic, keyed by the column the other windows are keyed by.
    pub fn upstream(model: Arc<Servable>, max_event_bytes: usize) -> Self {
        let mut s = Self::new(model, max_event_bytes);
        s.upstream = crate::merge::Upstream::of(&s.model.pipeline);
        s.engine = s.online(&s.model.clone());
        s
    }

    /// Encode only (`on`): [`Outcome::Scored`] leaves the features in [`Scorer::features`] and
    /// the key in [`Scorer::key`], for a model server to score ([`crate::remote`]).
    pub fn set_remote(&mut self, on: bool) {
        self.remote = on;
    }

    /// Whether this scorer encodes only ([`Scorer::set_remote`]).
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Score every event with `model` too, as a shadow ([`Scorer::shadows`]): on the
    /// champion's feature row when its window state would be the same ([`state_fingerprint`]),
    /// else with window state of its own, which starts empty (add such a shadow before the
    /// scorer takes in events, and warm it with [`Scorer::warm`]). Refused when this scorer
    /// does not score (upstream of a repartition, or encoding for a model server), and for a
    /// shadow of other features in watermark order.
    pub fn add_shadow(&mut self, model: Arc<Servable>) -> Result<(), String> {
        if self.upstream.is_some() || self.remote {
            return Err(format!(
                "shadow {}: this scorer does not score itself (a repartition step or a model \
                 server does)",
                model.id
            ));
        }
        let engine = if same_spec(&self.model, &model) {
            None
        } else if self.ordered.is_some() {
            return Err(format!(
                "shadow {} computes other features than {} (state fingerprint {} against {}): \
                 in watermark order a shadow must compute the champion's features",
                model.id,
                self.model.id,
                state_fingerprint(&model),
                state_fingerprint(&self.model)
            ));
        } else {
            Some(self.online(&model))
        };
        self.shadows.push(Shadow::new(model, engine));
        Ok(())
    }

    /// The shadows, with what they made of the last event.
    pub fn shadows(&self) -> &[Shadow] {
        &self.shadows
    }

    /// Stop scoring with the shadow `model`.
    pub fn remove_shadow(&mut self, model: &Arc<Servable>) {
        self.shadows.retain(|s| !Arc::ptr_eq(&s.model, model));
    }

    /// The encoded features of the last scored event.
    pub fn features(&self) -> &[f64] {
        &self.b.x
    }

    /// The model being served.
    pub fn model(&self) -> &Arc<Servable> {
        &self.model
    }

    /// Swap in another model between batches. When its features are computed the same way
    /// (same pipeline spec), window state carries over; so does it when a shadow of its
    /// features kept state of its own (a rollout candidate promoted). Otherwise the state
    /// restarts empty, which the return value (`false`) reports.
    pub fn swap(&mut self, model: Arc<Servable>) -> bool {
        if same_spec(&self.model, &model) {
            self.model = model;
            return true;
        }
        let arrival = self.ordered.is_none() && self.upstream.is_none();
        // The state of the old champion's features, for the shadows that compute them.
        let old = (arrival && self.shadows.iter().any(|s| s.engine.is_none()))
            .then(|| self.engine.save_state());
        let inherited = if arrival {
            (self.shadows.iter_mut())
                .find(|s| s.engine.is_some() && !s.broken && same_spec(&model, &s.model))
                .and_then(|s| s.engine.take())
        } else {
            None
        };
        let kept = inherited.is_some();
        if self.ordered.is_some() {
            // Held events are dropped with the state: the caller rescores them.
            self.ordered = Some(ordered::Ordered::new(&model, &self.format()));
        } else {
            if self.upstream.is_some() {
                self.upstream = crate::merge::Upstream::of(&model.pipeline);
            }
            self.engine = match inherited {
                Some(engine) => engine,
                None => self.online(&model),
            };
        }
        self.swap_shadows(&model, old.as_deref());
        self.model = model;
        kept
    }

    /// A champion of other features than the last one: each shadow of the new champion's
    /// features now scores its rows, each shadow of the old champion's features (`old`, their
    /// state) goes on with state of its own, and in watermark order, where a shadow cannot
    /// keep state of its own, a shadow of other features is dropped.
    fn swap_shadows(&mut self, model: &Servable, old: Option<&[u8]>) {
        let ordered = self.ordered.is_some();
        let mut shadows = std::mem::take(&mut self.shadows);
        shadows.retain_mut(|s| {
            if same_spec(model, &s.model) {
                s.engine = None;
                s.broken = false;
                return true;
            }
            if ordered {
                tracing::warn!(
                    shadow = %s.model.id, champion = %model.id,
                    "the new champion computes other features: its shadow is dropped (watermark \
                     order)"
                );
                return false;
            }
            if s.engine.is_none() {
                let mut engine = self.online(&s.model);
                if let Some(state) = old
                    && let Err(why) = engine.load_state(state)
                {
                    tracing::warn!(
                        shadow = %s.model.id, error = why, "shadow state restarts empty"
                    );
                }
                s.engine = Some(engine);
            }
            true
        });
        self.shadows = shadows;
    }

    /// Update the window state with an event without scoring it (warm-up before a replay
    /// range). Errors are ignored here: the event would have been dead-lettered when live.
    /// Returns false when processing panicked (see [`Scorer::broken`]).
    pub fn warm(&mut self, payload: &[u8], offset: i64) -> bool {
        if payload.len() > self.max_event_bytes {
            return true;
        }
        self.prepare_waiting(Some(payload));
        if self.ordered.is_some() {
            return self.warm_ordered(payload, offset);
        }
        for s in &mut self.shadows {
            s.warm(payload);
        }
        let engine = &mut self.engine;
        if catch_unwind(AssertUnwindSafe(|| {
            slow_warm_up();
            fail_point(payload);
            let _ = engine.process(payload);
        }))
        .is_err()
        {
            self.broken = true;
            return false;
        }
        true
    }

    /// Whether a panic was caught since this scorer was made: its window state may be
    /// half-updated, and should be rebuilt without the event that caused it.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Score one event. On [`Outcome::Scored`], [`Scorer::prediction`] holds the JSON value to
    /// produce and [`Scorer::key`] its key.
    pub fn score(&mut self, payload: Option<&[u8]>, pos: SourcePos<'_>) -> Outcome {
        for s in &mut self.shadows {
            s.outcome = None;
        }
        match catch_unwind(AssertUnwindSafe(|| self.score_event(payload, pos))) {
            Ok(outcome) => outcome,
            Err(panic) => {
                self.broken = true;
                Outcome::Dead(format!(
                    "internal error while scoring (a bug; please report it): {}",
                    crate::log::panic_message(&*panic)
                ))
            }
        }
    }

    fn score_event(&mut self, payload: Option<&[u8]>, pos: SourcePos<'_>) -> Outcome {
        let payload = match shared_models::prediction::admit(payload, self.max_event_bytes) {
            Ok(payload) => payload,
            Err(why) => return Outcome::Dead(why),
        };
        fail_point(payload);
        let m = &*self.model;
        let p = &*m.pipeline;
        let outcome = match self.engine.process(payload) {
            Ok(Some(_)) => {
                let row = self.engine.row();
                if let Some(up) = &self.upstream {
                    let progress = self.engine.progress();
                    return up.forward(p, row, pos, progress, &mut self.b.key, &mut self.b.out);
                }
                let outcome = predict(m, row, pos, &mut self.b, self.remote);
                let scored = matches!(outcome, Outcome::Scored { .. });
                score_shadows(&mut self.shadows, scored, row, pos);
                outcome
            }
            Ok(None) => Outcome::Filtered,
            Err(e) => Outcome::Dead(e.to_string()),
        };
        let scored = matches!(outcome, Outcome::Scored { .. });
        for s in &mut self.shadows {
            s.score_own(payload, scored, pos);
        }
        outcome
    }

    /// Score a row whose features are all computed (downstream of a repartition, see
    /// [`crate::merge`]), as [`Scorer::score`] scores an event.
    pub fn score_row(&mut self, row: &[Value], pos: SourcePos<'_>) -> Outcome {
        let outcome = predict_caught(&self.model, row, pos, &mut self.b, self.remote);
        let scored = matches!(outcome, Outcome::Scored { .. });
        score_shadows(&mut self.shadows, scored, row, pos);
        outcome
    }

    /// The key of the last scored event (the output record's key).
    pub fn key(&self) -> &[u8] {
        &self.b.key
    }

    /// The stream's progress (newest admitted event time), once an event was processed.
    pub fn progress(&self) -> Option<i64> {
        self.engine.progress()
    }

    /// Keys holding window state, summed over the pipeline's windows.
    pub fn state_keys(&self) -> usize {
        match &self.ordered {
            Some(o) => o.engine.state_keys(),
            None => self.engine.state_keys(),
        }
    }

    /// The JSON value of the last scored event.
    pub fn prediction(&self) -> &[u8] {
        &self.b.out
    }

    /// The score and decision of the last scored event.
    pub fn last_score(&self) -> (f64, bool) {
        self.b.last
    }

    /// The label of the last scored event (1 or 0), when the pipeline declares one and the
    /// event carries it: what a replay's report measures the models against.
    pub fn last_label(&self) -> Option<f64> {
        self.b.label
    }

    /// The window state as bytes, for a checkpoint ([`shared_features::Stages::save`]), with
    /// the own state of each shadow of other features, in the order they were added.
    pub fn save_state(&self) -> Vec<u8> {
        let champion = match &self.ordered {
            // The windows, the admission and the held events.
            Some(o) => o.engine.save_state(),
            None => self.engine.save_state(),
        };
        let own: Vec<Vec<u8>> = (self.shadows.iter())
            .filter_map(|s| s.engine.as_ref().map(OnlineEngine::save_state))
            .collect();
        if own.is_empty() {
            return champion;
        }
        let all = WithShadows {
            champion: &champion,
            shadows: own.iter().map(Vec::as_slice).collect(),
        };
        // Serializing plain bytes into a Vec does not fail.
        postcard::to_allocvec(&all).unwrap_or_default()
    }

    /// Replace the window state with a saved one (of a scorer whose model and shadows of
    /// other features have the same [`state_fingerprint`]s, see [`shadows_fingerprint`]). On
    /// error nothing changes.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let own = self.shadows.iter().filter(|s| s.engine.is_some()).count();
        let (champion, shadows) = if own == 0 {
            (bytes, Vec::new())
        } else {
            let all: WithShadows<'_> = postcard::from_bytes(bytes)
                .map_err(|e| format!("state with shadows does not decode: {e}"))?;
            if all.shadows.len() != own {
                return Err(format!(
                    "state of {} shadows of other features, this scorer has {own}",
                    all.shadows.len()
                ));
            }
            (all.champion, all.shadows)
        };
        // Load every part into a fresh engine first, so that an error changes nothing.
        let mut loaded = Vec::with_capacity(own);
        for (s, state) in self
            .shadows
            .iter()
            .filter(|s| s.engine.is_some())
            .zip(shadows)
        {
            let mut e = self.online(&s.model);
            e.load_state(state)
                .map_err(|why| format!("shadow {}: {why}", s.model.id))?;
            loaded.push(e);
        }
        match &mut self.ordered {
            Some(o) => o.engine.load_state(champion)?,
            None => self.engine.load_state(champion)?,
        }
        let mut loaded = loaded.into_iter();
        for s in self.shadows.iter_mut().filter(|s| s.engine.is_some()) {
            s.engine = loaded.next();
            s.broken = false;
        }
        Ok(())
    }
}

/// A prediction's reusable buffers (the champion's, and each shadow's).
#[derive(Debug)]
struct Buffers {
    key: Vec<u8>,
    /// The encoded inputs.
    x: Vec<f64>,
    /// The prediction's JSON.
    out: Vec<u8>,
    /// The score and decision.
    last: (f64, bool),
    /// The event's label, when the pipeline declares one and the event has it.
    label: Option<f64>,
}

impl Buffers {
    fn new() -> Self {
        Self {
            key: Vec::with_capacity(32),
            x: Vec::new(),
            out: Vec::with_capacity(512),
            last: (f64::NAN, false),
            label: None,
        }
    }
}

/// Encode, predict and write the prediction of a full feature row into `b` (encode only, for
/// a model server, when `remote`).
fn predict(
    m: &Servable,
    row: &[Value],
    pos: SourcePos<'_>,
    b: &mut Buffers,
    remote: bool,
) -> Outcome {
    b.label = m
        .pipeline
        .label
        .as_ref()
        .and_then(|l| shared_features::eval::label(l, row));
    if remote {
        let event_time = shared_models::prediction::encode(m, row, &mut b.key, &mut b.x);
        b.out.clear();
        b.last = (f64::NAN, false);
        return Outcome::Scored { event_time };
    }
    let (event_time, score, decision) =
        shared_models::prediction::predict(m, row, pos, &mut b.key, &mut b.x, &mut b.out);
    b.last = (score, decision);
    Outcome::Scored { event_time }
}

/// [`predict`], a panic caught and turned into a dead letter's reason.
fn predict_caught(
    m: &Servable,
    row: &[Value],
    pos: SourcePos<'_>,
    b: &mut Buffers,
    remote: bool,
) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| predict(m, row, pos, b, remote))) {
        Ok(outcome) => outcome,
        Err(panic) => Outcome::Dead(format!(
            "internal error while scoring (a bug; please report it): {}",
            crate::log::panic_message(&*panic)
        )),
    }
}

/// What window state depends on: the pipeline spec and the lookup and as-of tables, not the
/// model or its encoding. Two models with the same fingerprint can share state (hot reload
/// keeps it; a checkpoint restores into either). SHA-256, hex.
pub fn state_fingerprint(m: &Servable) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&*m.pipeline).unwrap_or_default());
    for (name, digest) in &m.tables.digests {
        h.update([0]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(digest.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// With the `failpoints` feature and `FAILPOINTS=score=panic`, processing an event that contains
/// `kml-fail-point` panics: how the tests reach the code that survives a bug.
#[cfg(feature = "failpoints")]
fn fail_point(payload: &[u8]) {
    let marked = payload.windows(14).any(|w| w == b"kml-fail-point");
    fail::fail_point!("score", marked, |_| ());
}

#[cfg(not(feature = "failpoints"))]
fn fail_point(_: &[u8]) {}

/// With `FAILPOINTS=release=return(O1,O2,...)`, the release of the event at each of these
/// offsets in watermark order panics, after the windows took it in: how the tests make a
/// panic that the admission did not see.
#[cfg(feature = "failpoints")]
#[expect(
    clippy::panic,
    reason = "a fail point: the panic is its purpose, in test builds only"
)]
fn release_fail_point(offset: u64) {
    fail::fail_point!("release", |offsets: Option<String>| {
        let listed = offsets.unwrap_or_default();
        if listed.split(',').any(|o| o.trim().parse() == Ok(offset)) {
            panic!("fail point: the release of offset {offset}");
        }
    });
}

#[cfg(not(feature = "failpoints"))]
fn release_fail_point(_: u64) {}

/// With `FAILPOINTS=warm=sleep(MS)`, each event of a warm-up takes that long: how the tests
/// make a warm-up outlast `max.poll.interval.ms` without millions of events.
#[cfg(feature = "failpoints")]
fn slow_warm_up() {
    fail::fail_point!("warm");
}

#[cfg(not(feature = "failpoints"))]
fn slow_warm_up() {}

/// The state fingerprint of a scorer of `champion` with `shadows`: the champion's, and the
/// fingerprint of each shadow that keeps state of its own (computes other features), in order.
/// A checkpoint of such a scorer's [`Scorer::save_state`] restores only under the same one.
pub fn shadows_fingerprint<'a>(
    champion: &Servable,
    shadows: impl IntoIterator<Item = &'a Arc<Servable>>,
) -> String {
    let fp = state_fingerprint(champion);
    let mut all = fp.clone();
    for s in shadows {
        let own = state_fingerprint(s);
        if own != fp {
            all.push_str("+shadow:");
            all.push_str(&own);
        }
    }
    all
}

fn same_spec(a: &Servable, b: &Servable) -> bool {
    state_fingerprint(a) == state_fingerprint(b)
}
