//! The scoring core compiled to WebAssembly, for JavaScript clients at the edge.
//!
//! It is the scorer's own code path, not a port: a bundle is checked by
//! [`shared_models::Bundle::from_files`] (every file against the manifest's sha256) and
//! [`shared_models::Servable::from_bundle`] (pipeline, fitted state, tables, feature
//! fingerprint, model and input signature), events go through the online engine of
//! `shared-features`, and predictions are written by [`shared_models::prediction::predict`], the
//! function `scorer run`, `replay` and `serve` use. So a prediction made here is the same bytes
//! as the scorer's for the same events in the same order, and a bundle or event the scorer
//! refuses is refused here with the same reason.
//!
//! JavaScript reads the bundle's files (from a directory in Node, over HTTP in a browser) and
//! hands them over with [`BundleFiles::add`]; the package in `edge/` does that and wraps the
//! [`Scorer`] in a friendlier API.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use shared_features::OnlineEngine;
use shared_models::prediction::{SourcePos, admit, predict};
use shared_models::{Bundle, MANIFEST, Servable};
use wasm_bindgen::prelude::*;

/// The scorer's default `--max-event-bytes`: larger payloads are dead-lettered.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// A bundle's files as JavaScript read them, before they are checked.
#[wasm_bindgen]
#[derive(Default)]
pub struct BundleFiles {
    manifest: Option<Vec<u8>>,
    files: BTreeMap<String, Bytes>,
}

#[wasm_bindgen]
impl BundleFiles {
    /// No files yet.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one file of the version directory by its name (`manifest.json` included).
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) {
        if name == MANIFEST {
            self.manifest = Some(bytes);
        } else {
            self.files.insert(name.to_string(), Bytes::from(bytes));
        }
    }
}

/// What became of an event: [`Scorer::score`]'s answer.
#[wasm_bindgen]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Scored: [`Scorer::prediction`] holds the record.
    Scored = 0,
    /// A pipeline filter dropped it: no prediction is due.
    Filtered = 1,
    /// It cannot be scored: [`Scorer::reason`] says why (the scorer's dead-letter reason).
    Dead = 2,
}

/// A checked bundle and the window state of the stream it scores.
#[wasm_bindgen]
pub struct Scorer {
    model: Arc<Servable>,
    engine: OnlineEngine,
    max_event_bytes: usize,
    key: Vec<u8>,
    x: Vec<f64>,
    out: Vec<u8>,
    reason: String,
    score: f64,
    decision: bool,
}

#[wasm_bindgen]
impl Scorer {
    /// Check a bundle as the scorer does and make a scorer with empty window state. `dir` names
    /// where the files came from, for messages. Refuses, naming the file and what is wrong, a
    /// bundle whose files do not match the manifest, or whose pipeline, state or model the
    /// scorer would refuse.
    #[wasm_bindgen(constructor)]
    pub fn new(dir: &str, files: BundleFiles) -> Result<Scorer, JsError> {
        Self::load(dir, files).map_err(|e| JsError::new(&e))
    }

    /// Refuse payloads larger than `bytes` (default 1 MiB, as the scorer's
    /// `--max-event-bytes`).
    #[wasm_bindgen(js_name = setMaxEventBytes)]
    pub fn set_max_event_bytes(&mut self, bytes: usize) {
        self.max_event_bytes = bytes;
    }

    /// Score one event (the message's value) that came from `topic`, `partition` and `offset`
    /// (the lineage the prediction carries).
    pub fn score(&mut self, payload: &[u8], topic: &str, partition: i32, offset: i64) -> Outcome {
        self.reason.clear();
        let payload = match admit(Some(payload), self.max_event_bytes) {
            Ok(p) => p,
            Err(why) => return self.dead(why),
        };
        let row = match self.engine.process(payload) {
            Ok(Some(row)) => row,
            Ok(None) => return Outcome::Filtered,
            Err(e) => return self.dead(e.to_string()),
        };
        let pos = SourcePos {
            topic,
            partition,
            offset,
        };
        let (_, score, decision) = predict(
            &self.model,
            row,
            pos,
            &mut self.key,
            &mut self.x,
            &mut self.out,
        );
        (self.score, self.decision) = (score, decision);
        Outcome::Scored
    }

    /// Warm the window state with an event without scoring it (the events before a range).
    pub fn warm(&mut self, payload: &[u8]) {
        if payload.len() <= self.max_event_bytes {
            let _ = self.engine.process(payload);
        }
    }

    /// The prediction record (JSON) of the last scored event, as the scorer writes it.
    pub fn prediction(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// The key of the last scored event (the prediction record's key).
    pub fn key(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The score of the last scored event.
    #[wasm_bindgen(getter, js_name = lastScore)]
    pub fn last_score(&self) -> f64 {
        self.score
    }

    /// The decision of the last scored event.
    #[wasm_bindgen(getter, js_name = lastDecision)]
    pub fn last_decision(&self) -> bool {
        self.decision
    }

    /// Why the last event was dead-lettered.
    pub fn reason(&self) -> String {
        self.reason.clone()
    }

    /// The model, `name@version`.
    #[wasm_bindgen(getter)]
    pub fn model(&self) -> String {
        self.model.id.clone()
    }

    /// The feature fingerprint the bundle was checked against.
    #[wasm_bindgen(getter)]
    pub fn fingerprint(&self) -> String {
        self.model.fingerprint.clone()
    }

    /// The window state as bytes (the scorer's checkpoint format), to keep across restarts.
    #[wasm_bindgen(js_name = saveState)]
    pub fn save_state(&self) -> Vec<u8> {
        self.engine.save_state()
    }

    /// Replace the window state with one saved by a scorer of the same pipeline and tables.
    #[wasm_bindgen(js_name = loadState)]
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.engine.load_state(bytes).map_err(|e| JsError::new(&e))
    }
}

impl Scorer {
    /// [`Scorer::new`] with a Rust error (a [`JsError`] cannot be made off the wasm target).
    pub fn load(dir: &str, files: BundleFiles) -> Result<Scorer, String> {
        let manifest = files
            .manifest
            .ok_or_else(|| format!("{dir}: no {MANIFEST}"))?;
        let bundle = Bundle::from_files(dir, &manifest, files.files).map_err(|e| e.to_string())?;
        let model = Arc::new(Servable::from_bundle(&bundle).map_err(|e| e.to_string())?);
        let engine = OnlineEngine::new(model.pipeline.clone(), model.tables.clone());
        Ok(Self {
            model,
            engine,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            key: Vec::with_capacity(32),
            x: Vec::new(),
            out: Vec::with_capacity(512),
            reason: String::new(),
            score: f64::NAN,
            decision: false,
        })
    }

    fn dead(&mut self, why: String) -> Outcome {
        self.reason = why;
        Outcome::Dead
    }
}
