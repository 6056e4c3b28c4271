//! Shadow challengers in the live loop (`scorer run --shadow`): each event the champion scores
//! is scored by every shadow, and each shadow's prediction goes to the shadow topic with the
//! same lineage as the champion's. A shadow of the champion's features scores the champion's
//! feature row (one feature computation); a shadow of other features keeps window state of
//! its own in each partition's scorer (see [`Scorer::add_shadow`]), checkpointed with the
//! champion's, so a snapshot restores only into a scorer with the same shadows.
//!
//! A shadow decides nothing: its prediction is tracked like any output, so that a commit waits
//! for it (a restart repeats it rather than loses it), but a delivery that fails for good only
//! counts it off and is counted (`kml_shadow_delivery_failures_total`); the champion's
//! partition neither stops nor rewinds for it. A shadow that fails on an event (a caught panic)
//! is counted and the champion's prediction stands.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use shared_models::Servable;

use super::Live;
use crate::metrics::{Counted, Metrics, ModelMetrics};
use crate::offsets::Tag;
use crate::score::Scorer;
use crate::sink::{SendError, To, lineage_headers};

/// The shadows of a run, and the per-model metrics of the champion and of each shadow.
pub(super) struct Shadows {
    active: Vec<Active>,
    champion: ModelMetrics,
    /// One per model ever scored beside the champion, in the order added.
    summary: Vec<ShadowSummary>,
}

/// A model scored beside the champion now.
struct Active {
    model: Arc<Servable>,
    /// `shadow`, or `candidate` (a version on trial, [`crate::live::rollout`]).
    role: &'static str,
    metrics: ModelMetrics,
    /// Its entry in [`Shadows::summary`].
    summary: usize,
}

/// What one shadow did in a run (the summary's `shadows`).
#[derive(Serialize, Debug, Clone, Default)]
pub struct ShadowSummary {
    /// `name@version`.
    pub model: String,
    /// `shadow`, or `candidate` (a version on trial).
    pub role: &'static str,
    /// Events it scored beside the champion (an event scored again after a rewind counts
    /// again).
    pub scored: u64,
    /// Of those, the ones it decided as the champion did.
    pub agreed: u64,
    /// `agreed / scored`.
    pub agreement: Option<f64>,
    /// Events it failed on (a panic caught; the champion's prediction stands).
    pub failed: u64,
}

impl Shadows {
    /// The champion `champion`, no shadow yet.
    pub(super) fn new(champion: &Servable, metrics: &Metrics) -> Self {
        Self {
            active: Vec::new(),
            champion: metrics.model(&champion.id, "champion"),
            summary: Vec::new(),
        }
    }

    /// The shadows a new scorer gets.
    pub(super) fn models(&self) -> impl Iterator<Item = &Arc<Servable>> {
        self.active.iter().map(|a| &a.model)
    }

    /// A new champion: its metrics. Without state of their own (`own_state` false: watermark
    /// order), the shadows of other features are dropped, as the scorers drop them (see
    /// [`Scorer::swap`]).
    pub(super) fn swap_champion(
        &mut self,
        champion: &Servable,
        own_state: bool,
        metrics: &Metrics,
    ) {
        self.champion = metrics.model(&champion.id, "champion");
        if !own_state {
            let fp = crate::score::state_fingerprint(champion);
            self.active
                .retain(|a| crate::score::state_fingerprint(&a.model) == fp);
        }
    }

    /// Score with `m` too, in `role`.
    pub(super) fn add(&mut self, m: &Arc<Servable>, role: &'static str, metrics: &Metrics) {
        self.active.push(Active {
            model: m.clone(),
            role,
            metrics: metrics.model(&m.id, role),
            summary: self.summary.len(),
        });
        self.summary.push(ShadowSummary {
            model: m.id.clone(),
            role,
            ..ShadowSummary::default()
        });
    }

    /// Stop scoring with `m` (its summary stays).
    pub(super) fn remove(&mut self, m: &Arc<Servable>) {
        self.active.retain(|a| !Arc::ptr_eq(&a.model, m));
    }

    /// The summary of each shadow, with its agreement.
    pub(super) fn summary(&self) -> Vec<ShadowSummary> {
        self.summary
            .iter()
            .map(|s| ShadowSummary {
                agreement: (s.scored > 0).then(|| s.agreed as f64 / s.scored as f64),
                ..s.clone()
            })
            .collect()
    }
}

impl Live {
    /// Score every event with these models too, as shadows, and send their predictions to
    /// the shadow topic (`--shadow-output`). In watermark order each must compute the
    /// champion's features.
    pub fn with_shadows(mut self, models: Vec<Arc<Servable>>) -> Self {
        for m in &models {
            self.shadows.add(m, "shadow", &self.metrics);
        }
        self.refresh_state_fp();
        self
    }

    /// The fingerprint snapshots are written and restored under, after the champion or the
    /// shadows changed.
    pub(super) fn refresh_state_fp(&mut self) {
        self.state_fp = super::state_fp_of(&self.model, self.shadows.models(), &self.cfg);
    }

    /// Join delayed labels with the predictions (`--labels`, [`crate::labels`]).
    pub fn with_labels(mut self, labels: Option<super::Labels>) -> Self {
        self.labels = labels;
        self
    }

    /// The champion in `scorer` scored the event `seq` of `slot` (its prediction is sent):
    /// count its score, and send what each shadow made of the event.
    pub(super) fn after_champion(
        &mut self,
        slot: usize,
        seq: u64,
        scorer: &Scorer,
        position: &[(&'static str, &[u8]); 3],
        event_time: i64,
    ) {
        let champion = scorer.last_score();
        self.shadows.champion.observe(champion);
        self.observe_drift(scorer.features(), champion.0);
        if let Some(l) = self.labels.as_mut() {
            let model = l.model(&scorer.model().id, "champion");
            l.predicted(scorer.key(), event_time, model, champion.0);
        }
        for shadow in scorer.shadows() {
            let Some(active) =
                (self.shadows.active.iter()).find(|a| Arc::ptr_eq(&a.model, shadow.model()))
            else {
                continue; // dropped with a champion of other features
            };
            let role = active.role;
            let s = &mut self.shadows.summary[active.summary];
            let id = &shadow.model().id;
            let score = match active.metrics.count_shadow(shadow, champion.1) {
                Counted::Nothing => continue,
                Counted::Failed => {
                    s.failed += 1;
                    if role == "candidate" {
                        self.candidate_scored(None);
                    }
                    continue;
                }
                Counted::Scored { score, agreed } => {
                    s.scored += 1;
                    s.agreed += u64::from(agreed);
                    score
                }
            };
            if let Some(l) = self.labels.as_mut() {
                let model = l.model(id, role);
                l.predicted(shadow.key(), event_time, model, score);
            }
            if role == "candidate" {
                self.candidate_scored(Some((shadow.features(), score)));
            }
            let all = lineage_headers(position, id);
            let headers: &[(&'static str, &[u8])] =
                if self.cfg.lineage_headers { &all } else { &[] };
            let tag = self.tracker.expect(slot, seq, false).as_shadow();
            let sent = self.sink.send(
                To::Shadows,
                shadow.key(),
                shadow.prediction(),
                Some(event_time),
                headers,
                tag,
            );
            match sent {
                Ok(()) => {}
                Err(SendError::TooLarge(n)) => {
                    self.shadow_undelivered(tag, &format!("{n} bytes exceed message.max.bytes"));
                }
                Err(SendError::Refused(e)) => self.shadow_undelivered(tag, &e.to_string()),
            }
        }
    }

    /// A shadow's prediction was acknowledged (`error: None`) or failed for good.
    pub(super) fn on_shadow_report(&mut self, tag: Tag, error: Option<&str>, now: Instant) {
        if !self.tracker.ack(tag, now).current {
            return; // from before a rewind
        }
        match error {
            None => {
                self.metrics.shadow_predictions.inc();
                self.summary.shadow_predicted += 1;
            }
            Some(why) => self.count_shadow_failure(why),
        }
    }

    /// A shadow's prediction could not be handed to the producer: counted off at once.
    fn shadow_undelivered(&mut self, tag: Tag, why: &str) {
        let _ = self.tracker.ack(tag, Instant::now());
        self.count_shadow_failure(why);
    }

    fn count_shadow_failure(&mut self, why: &str) {
        self.metrics.shadow_delivery_failures.inc();
        self.summary.shadow_delivery_failures += 1;
        tracing::warn!(
            error = why,
            "a shadow prediction was not delivered; dropped"
        );
    }
}
