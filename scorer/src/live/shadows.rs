//! Shadow challengers in the live loop (`scorer run --shadow`): each event the champion scores
//! is scored by every shadow on the same feature row (one feature computation: a shadow must
//! compute the champion's features, see [`Scorer::add_shadow`]), and each shadow's prediction
//! goes to the shadow topic with the same lineage as the champion's.
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
use crate::metrics::{Metrics, ModelMetrics};
use crate::offsets::Tag;
use crate::score::Scorer;
use crate::sink::{SendError, To, lineage_headers};

/// The shadows of a run, and the per-model metrics of the champion and of each shadow.
pub(super) struct Shadows {
    models: Vec<Arc<Servable>>,
    /// `shadow`, or `candidate` (a version on trial, [`crate::live::rollout`]).
    roles: Vec<&'static str>,
    champion: ModelMetrics,
    metrics: Vec<ModelMetrics>,
    summary: Vec<ShadowSummary>,
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
    /// The champion `champion` with `models` as its shadows.
    pub(super) fn new(champion: &Servable, models: Vec<Arc<Servable>>, metrics: &Metrics) -> Self {
        Self {
            champion: metrics.model(&champion.id, "champion"),
            metrics: models
                .iter()
                .map(|m| metrics.model(&m.id, "shadow"))
                .collect(),
            summary: models
                .iter()
                .map(|m| ShadowSummary {
                    model: m.id.clone(),
                    role: "shadow",
                    ..ShadowSummary::default()
                })
                .collect(),
            roles: vec!["shadow"; models.len()],
            models,
        }
    }

    /// The shadows a new scorer gets.
    pub(super) fn models(&self) -> &[Arc<Servable>] {
        &self.models
    }

    /// A new champion: its metrics, and the shadows that still compute its features (the
    /// others are dropped, as the scorers drop them, see [`Scorer::swap`]).
    pub(super) fn swap_champion(&mut self, champion: &Servable, metrics: &Metrics) {
        self.champion = metrics.model(&champion.id, "champion");
        let keep: Vec<bool> = self
            .models
            .iter()
            .map(|m| {
                crate::score::state_fingerprint(m) == crate::score::state_fingerprint(champion)
            })
            .collect();
        let mut k = keep.iter();
        self.models.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.metrics.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.roles.retain(|_| *k.next().unwrap_or(&false));
    }

    /// Score with `m` too, in `role`.
    pub(super) fn add(&mut self, m: &Arc<Servable>, role: &'static str, metrics: &Metrics) {
        self.models.push(m.clone());
        self.metrics.push(metrics.model(&m.id, role));
        self.roles.push(role);
        self.summary.push(ShadowSummary {
            model: m.id.clone(),
            role,
            ..ShadowSummary::default()
        });
    }

    /// Stop scoring with `m` (its summary stays).
    pub(super) fn remove(&mut self, m: &Arc<Servable>) {
        if let Some(i) = self.models.iter().position(|x| Arc::ptr_eq(x, m)) {
            self.models.remove(i);
            self.metrics.remove(i);
            self.roles.remove(i);
        }
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
    /// the shadow topic (`--shadow-output`). Each must compute the champion's features.
    pub fn with_shadows(mut self, models: Vec<Arc<Servable>>) -> Self {
        self.shadows = Shadows::new(&self.model, models, &self.metrics);
        self
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
            let slot = l.model(&scorer.model().id, "champion");
            l.predicted(scorer.key(), event_time, slot, champion.0);
        }
        for shadow in scorer.shadows() {
            let Some(i) = (self.shadows.models.iter()).position(|m| Arc::ptr_eq(m, shadow.model()))
            else {
                continue; // dropped with a champion of other features
            };
            let role = self.shadows.roles[i];
            let id = &shadow.model().id;
            let Some(s) = self
                .shadows
                .summary
                .iter_mut()
                .rev()
                .find(|s| &s.model == id)
            else {
                continue;
            };
            let metrics = &self.shadows.metrics[i];
            let scored = match shadow.outcome() {
                None => continue,
                Some(Err(why)) => {
                    metrics.failures.inc();
                    s.failed += 1;
                    tracing::warn!(shadow = %id, error = why, "a shadow failed on an event");
                    if role == "candidate" {
                        self.candidate_scored(None);
                    }
                    continue;
                }
                Some(Ok(())) => shadow.last_score(),
            };
            metrics.observe(scored);
            metrics.compared.inc();
            s.scored += 1;
            if scored.1 == champion.1 {
                metrics.agreements.inc();
                s.agreed += 1;
            }
            if let Some(l) = self.labels.as_mut() {
                let slot = l.model(id, role);
                l.predicted(shadow.key(), event_time, slot, scored.0);
            }
            if role == "candidate" {
                self.candidate_scored(Some((shadow.features(), scored.0)));
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
