//! Shadows in the scoring core ([`super::Scorer::add_shadow`]): a challenger scored beside the
//! champion, on the champion's feature row or on window state of its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use shared_features::{OnlineEngine, Value};
use shared_models::Servable;

use super::{Buffers, Outcome, SourcePos, predict_caught};

/// A challenger scored beside the champion (`scorer run --shadow`). When it computes the
/// champion's features (the same [`super::state_fingerprint`]) it scores the champion's
/// feature row; otherwise it keeps window state of its own, which takes in every event the
/// champion's does, so its features are those of a replay of it alone. Either way it predicts
/// the events the champion scored, with its own encoding and model, and what becomes of it
/// never changes the champion's outcome.
#[derive(Debug)]
pub struct Shadow {
    pub(super) model: Arc<Servable>,
    /// Its own window state (it computes other features); `None`: it scores the champion's rows.
    pub(super) engine: Option<OnlineEngine>,
    /// Its own state panicked on an event (a bug) and may be half-updated: it scores no more
    /// events in this scorer.
    pub(super) broken: bool,
    b: Buffers,
    /// What became of the last event the champion scored: `None` before one, `Some(Err)` when
    /// this model failed on it.
    pub(super) outcome: Option<Result<(), String>>,
}

impl Shadow {
    pub(super) fn new(model: Arc<Servable>, engine: Option<OnlineEngine>) -> Self {
        Self {
            model,
            engine,
            broken: false,
            b: Buffers::new(),
            outcome: None,
        }
    }

    /// The challenger.
    pub fn model(&self) -> &Arc<Servable> {
        &self.model
    }

    /// Whether it keeps window state of its own (it computes other features than the
    /// champion).
    pub fn own_state(&self) -> bool {
        self.engine.is_some()
    }

    /// What became of the last event the champion scored: `Ok` with the prediction in
    /// [`Shadow::prediction`], or why this model could not score it. `None` when the champion
    /// did not score the event (filtered, dead-lettered), or this shadow's own pipeline
    /// filtered it.
    pub fn outcome(&self) -> Option<Result<(), &str>> {
        self.outcome
            .as_ref()
            .map(|o| o.as_ref().map(|_| ()).map_err(String::as_str))
    }

    /// Its prediction of the last event (the JSON value).
    pub fn prediction(&self) -> &[u8] {
        &self.b.out
    }

    /// The key of that prediction.
    pub fn key(&self) -> &[u8] {
        &self.b.key
    }

    /// Its score and decision of the last event.
    pub fn last_score(&self) -> (f64, bool) {
        self.b.last
    }

    /// Its encoded inputs of the last event.
    pub fn features(&self) -> &[f64] {
        &self.b.x
    }

    /// Score `row` (complete: the champion's, or its own engine's).
    fn score(&mut self, row: &[Value], pos: SourcePos<'_>) {
        self.outcome = Some(score_row_into(&self.model, row, pos, &mut self.b));
    }

    /// Take the event in with its own window state, and score it when the champion did
    /// (`scored`). A shadow of the champion's features does nothing here.
    pub(super) fn score_own(&mut self, payload: &[u8], scored: bool, pos: SourcePos<'_>) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        if self.broken {
            if scored {
                self.outcome = Some(Err(
                    "its window state broke on an earlier event (a bug); it scores no more \
                     events until the partition's state is rebuilt"
                        .into(),
                ));
            }
            return;
        }
        let step = catch_unwind(AssertUnwindSafe(|| {
            engine.process(payload).map(|r| r.is_some())
        }));
        match step {
            Ok(Ok(true)) if scored => {
                let row = engine.row();
                self.outcome = Some(score_row_into(&self.model, row, pos, &mut self.b));
            }
            Ok(Ok(_)) => {} // scored by neither, or filtered by its own pipeline
            Ok(Err(e)) if scored => self.outcome = Some(Err(e.to_string())),
            Ok(Err(_)) => {}
            Err(panic) => {
                self.broken = true;
                if scored {
                    self.outcome = Some(Err(format!(
                        "internal error in its window state (a bug; please report it): {}",
                        crate::log::panic_message(&*panic)
                    )));
                }
            }
        }
    }

    /// Update its own window state with an event, without scoring (a warm-up).
    pub(super) fn warm(&mut self, payload: &[u8]) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        if !self.broken
            && catch_unwind(AssertUnwindSafe(|| {
                let _ = engine.process(payload);
            }))
            .is_err()
        {
            self.broken = true;
        }
    }
}

/// A prediction of a complete row into `b`: `Ok`, or why the model failed on it (a panic
/// caught).
fn score_row_into(
    m: &Servable,
    row: &[Value],
    pos: SourcePos<'_>,
    b: &mut Buffers,
) -> Result<(), String> {
    match predict_caught(m, row, pos, b, false) {
        Outcome::Dead(why) => Err(why),
        _ => Ok(()),
    }
}

/// The shadows of the champion's features score `row` when the champion scored it
/// (`scored`); otherwise none has an outcome for this event.
pub(super) fn score_shadows(
    shadows: &mut [Shadow],
    scored: bool,
    row: &[Value],
    pos: SourcePos<'_>,
) {
    for s in shadows.iter_mut().filter(|s| s.engine.is_none()) {
        if scored {
            s.score(row, pos);
        } else {
            s.outcome = None;
        }
    }
}

/// A scorer's window state with its shadows' own ([`super::Scorer::save_state`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct WithShadows<'a> {
    #[serde(borrow)]
    pub(super) champion: &'a [u8],
    #[serde(borrow)]
    pub(super) shadows: Vec<&'a [u8]>,
}
