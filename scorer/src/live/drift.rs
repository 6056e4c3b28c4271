//! Drift on the live stream (`scorer run --drift-window N`): the champion's last `N` scored
//! events, counted in the bins of the training split's reference distributions
//! ([`crate::drift::Sliding`]), published at most once a second as Prometheus gauges: per input
//! and for the score, the PSI and the Jensen-Shannon distance, with the same thresholds as
//! `scorer replay --drift` (README, "Drift"). A model without reference distributions is
//! served as usual, with `kml_drift_available` 0.

use std::time::{Duration, Instant};

use super::Live;
use crate::drift::{Report, Sliding};

/// How often the gauges are brought up to date.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The drift window of the model serving.
pub(super) struct Drift {
    window: Option<Sliding>,
    capacity: usize,
    published: Instant,
    /// Events counted since the gauges were last brought up to date.
    fresh: bool,
}

impl Drift {
    /// A window of `capacity` events (0: off) for `model`.
    pub(super) fn new(model: &shared_models::Servable, capacity: usize) -> Self {
        Self {
            window: (capacity > 0)
                .then_some(model.reference.as_ref())
                .flatten()
                .map(|r| Sliding::new(r, capacity)),
            capacity,
            published: Instant::now(),
            fresh: false,
        }
    }
}

impl Live {
    /// Count the champion's last scored event (encoded inputs `x`, `score`) in the window.
    pub(super) fn observe_drift(&mut self, x: &[f64], score: f64) {
        if let (Some(w), Some(r)) = (self.drift.window.as_mut(), self.model.reference.as_ref()) {
            w.add(r, x, score);
            self.drift.fresh = true;
        }
    }

    /// A new model: an empty window on its reference (its inputs may differ).
    pub(super) fn reset_drift(&mut self) {
        self.drift = Drift::new(&self.model, self.drift.capacity);
        self.metrics.drift_psi.clear();
        self.metrics.drift_js.clear();
        self.publish_drift(true);
    }

    /// Bring the gauges up to date, at most once a second unless `now`.
    pub(super) fn publish_drift(&mut self, now: bool) {
        let due = self.drift.fresh && self.drift.published.elapsed() >= PUBLISH_EVERY;
        if !(now || due) {
            return;
        }
        self.drift.published = Instant::now();
        self.drift.fresh = false;
        let m = &self.metrics;
        let Some(report) = self.drift_report() else {
            m.drift_available.set(0);
            m.drift_window_events.set(0);
            return;
        };
        m.drift_available.set(1);
        m.drift_window_events.set(report.events as i64);
        let drifted = report.drifted.len() + usize::from(report.score.drifted);
        m.drift_drifted.set(drifted as i64);
        for c in std::iter::once(&report.score).chain(&report.inputs) {
            let labels = vec![("column", c.name.clone())];
            if let Some(psi) = c.psi {
                m.drift_psi.get_or_create(&labels).set(psi);
            }
            if let Some(js) = c.js {
                m.drift_js.get_or_create(&labels).set(js);
            }
        }
    }

    /// The window's drift, when it is measured.
    pub(super) fn drift_report(&self) -> Option<Report> {
        let (w, r) = (self.drift.window.as_ref()?, self.model.reference.as_ref()?);
        Some(w.report(r))
    }
}
