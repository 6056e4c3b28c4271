//! Guarded rollout (`scorer run --rollout-events N`): a new version under the watched alias
//! does not replace the champion at once. It starts as a candidate, scored beside the champion
//! like a shadow (its predictions go to the shadow topic), and on its
//! `N`-th event its guards are checked over exactly its first `N` events (the decision applies
//! between batches); it is promoted unless one is breached:
//!
//! - its error rate (events it failed on) above `--rollout-max-error-rate`;
//! - the drift of its score against its own reference distribution (the bundle's training
//!   split), PSI above `--rollout-max-score-psi`;
//! - where labels flow (`--labels`) and at least `--rollout-min-labels` of the events both
//!   scored are labelled, its ROC AUC on those events below the champion's on the same events
//!   by more than `--rollout-auc-margin`.
//!
//! A breach rolls back: the candidate is dropped, the champion goes on, and the registry is not
//! touched (the alias still names the refused version, which the watcher does not offer again
//! until the alias moves). Every decision is a log line with its figures and a count in
//! `kml_rollouts_total{outcome}`.
//!
//! A version that computes other features than the champion is scored with window state of
//! its own: each partition's state is rebuilt with it from the log (no snapshot holds its
//! state yet) before the next event, and when it is promoted its state becomes the champion's.
//! In watermark order, where a shadow cannot keep state of its own, such a version is rolled
//! back, saying so.

use std::sync::Arc;

use shared_models::Servable;

use super::Live;
use crate::drift::Sliding;

/// `scorer run` options for guarded rollout.
#[derive(clap::Args, Debug, Clone)]
pub struct RolloutArgs {
    /// Guard new versions of the watched alias: score each as a candidate beside the champion
    /// for this many events, and promote it only if no guard is breached (README, "Guarded
    /// rollout"). Default: new versions are swapped in at once.
    #[arg(long, value_name = "EVENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub rollout_events: Option<u64>,
    /// Guard: most share of events the candidate may fail on.
    #[arg(long, default_value_t = 0.001)]
    pub rollout_max_error_rate: f64,
    /// Guard: most PSI of the candidate's scores against its own training split's.
    #[arg(long, default_value_t = shared_models::drift::PSI_THRESHOLD)]
    pub rollout_max_score_psi: f64,
    /// Guard, with `--labels`: how far the candidate's ROC AUC may fall below the champion's on
    /// the same labelled events.
    #[arg(long, default_value_t = 0.02)]
    pub rollout_auc_margin: f64,
    /// Labelled events both models scored before the AUC guard applies.
    #[arg(long, default_value_t = 100)]
    pub rollout_min_labels: u64,
    /// On a rollback, point the watched alias (`--model NAME@ALIAS`) back at the champion's
    /// version, so that the registry says what is served. Default: the registry is not touched.
    #[arg(long)]
    pub rollout_revert_alias: bool,
}

/// Where `--rollout-revert-alias` points the alias back.
#[derive(Debug, Clone)]
pub struct Revert {
    /// The champion's registry.
    pub registry: shared_models::Registry,
    /// The model's name.
    pub name: String,
    /// The watched alias.
    pub alias: String,
    /// Where the write runs.
    pub rt: tokio::runtime::Handle,
}

impl Revert {
    /// Point the alias at `version` in the background, logging the outcome.
    fn to(&self, version: u64, refused: &str) {
        let r = self.clone();
        let refused = refused.to_string();
        self.rt.spawn(async move {
            match r.registry.set_alias(&r.name, &r.alias, version).await {
                Ok(()) => tracing::info!(
                    rollout = "alias_reverted", model = %format!("{}@{version}", r.name),
                    alias = %r.alias, refused = %refused,
                    "rollout: the alias points at the champion again"
                ),
                Err(e) => tracing::error!(
                    alias = %r.alias, error = %e, refused = %refused,
                    "rollout: cannot point the alias back at the champion"
                ),
            }
        });
    }
}

/// The version on trial.
pub(super) struct Candidate {
    model: Arc<Servable>,
    /// Events it scored beside the champion, and the ones it failed on.
    events: u64,
    failures: u64,
    /// Its scores in the bins of its own reference (a window as long as the trial).
    scores: Option<Sliding>,
    /// What the trial found, once it has scored its events.
    verdict: Option<Verdict>,
}

/// What a trial found.
#[derive(Debug, Default)]
struct Verdict {
    breaches: Vec<String>,
    error_rate: f64,
    score_psi: Option<f64>,
    auc: Option<(f64, f64, usize)>,
}

impl Live {
    /// Point the watched alias back at the champion when a rollout is rolled back.
    pub fn with_revert(mut self, revert: Option<Revert>) -> Self {
        self.revert = revert;
        self
    }

    /// A new version from the watcher: on trial when rollouts are guarded, else swapped in.
    pub(super) fn offer(&mut self, m: Arc<Servable>) {
        if m.id == self.model.id {
            // The alias moved back to the champion (--rollout-revert-alias, or by hand).
            tracing::info!(model = %m.id, "the alias names the champion again");
            return;
        }
        let Some(_) = self.cfg.rollout.rollout_events else {
            self.swap_model(m);
            return;
        };
        if let Some(old) = self.end_candidate() {
            tracing::warn!(
                rollout = "superseded", model = %old.id, by = %m.id,
                "a newer version replaces the candidate on trial"
            );
            self.count_rollout("superseded");
        }
        let other_features = crate::score::state_fingerprint(&m) != self.state_fp_plain();
        if other_features && self.cfg.order == shared_features::Order::Watermark {
            tracing::warn!(
                rollout = "rolled_back", model = %m.id, champion = %self.model.id,
                reasons = "it computes other features than the champion, and in watermark \
                           order it cannot be scored beside it; the champion goes on (run \
                           without --rollout-events to swap such a version in at once)",
                "rollout: rolled back"
            );
            self.count_rollout("rolled_back");
            return;
        }
        tracing::info!(
            rollout = "candidate", model = %m.id, champion = %self.model.id,
            events = self.cfg.rollout.rollout_events,
            "rollout: a new version on trial beside the champion"
        );
        self.metrics.rollout_candidate.set(m.version as i64);
        self.shadows.add(&m, "candidate", &self.metrics);
        self.refresh_state_fp();
        for p in self.parts.iter_mut().flatten() {
            if other_features {
                // Rebuilt before its next event, the candidate's state with the champion's.
                p.scorer = None;
            } else if let Some(s) = p.scorer.as_mut()
                && let Err(why) = s.add_shadow(m.clone())
            {
                tracing::error!(error = why, "the candidate is not scored in one partition");
            }
        }
        if let Some(l) = self.labels.as_mut() {
            l.watch(&self.model.id, &m.id);
        }
        self.candidate = Some(Candidate {
            scores: m.reference.as_ref().map(|r| {
                let events = self.cfg.rollout.rollout_events.unwrap_or(1) as usize;
                Sliding::new(r, events)
            }),
            model: m,
            events: 0,
            failures: 0,
            verdict: None,
        });
    }

    /// The candidate scored an event (`score`, inputs `x`), or failed on it (`None`). On its
    /// last event of the trial, the verdict is reached.
    pub(super) fn candidate_scored(&mut self, scored: Option<(&[f64], f64)>) {
        let Some(mut c) = self.candidate.take() else {
            return;
        };
        if c.verdict.is_none() {
            c.events += 1;
            match scored {
                Some((x, score)) => {
                    if let (Some(w), Some(r)) = (c.scores.as_mut(), c.model.reference.as_ref()) {
                        w.add(r, x, score);
                    }
                }
                None => c.failures += 1,
            }
            if Some(c.events) == self.cfg.rollout.rollout_events {
                c.verdict = Some(self.verdict(&c));
            }
        }
        self.candidate = Some(c);
    }

    /// Promote the candidate or roll it back, once its trial has a verdict.
    pub(super) fn check_rollout(&mut self) {
        let Some(v) = self.candidate.as_mut().and_then(|c| c.verdict.take()) else {
            return;
        };
        let events = self.candidate.as_ref().map_or(0, |c| c.events);
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        let (auc, champion_auc, labelled) = match v.auc {
            Some((a, b, n)) => (Some(a), Some(b), n),
            None => (None, None, 0),
        };
        let Some(c) = self.candidate.as_ref().map(|c| c.model.clone()) else {
            return;
        };
        if v.breaches.is_empty() {
            tracing::info!(
                rollout = "promoted", model = %c.id, previous = %self.model.id,
                error_rate = v.error_rate, score_psi = %fmt(v.score_psi), auc = %fmt(auc),
                champion_auc = %fmt(champion_auc), labelled, events,
                "rollout: promoted after its trial"
            );
            self.count_rollout("promoted");
            // Swapped in while still a shadow: a candidate of other features hands its state
            // over (see `Scorer::swap`).
            self.swap_model(c);
            self.end_candidate();
        } else {
            self.end_candidate();
            tracing::warn!(
                rollout = "rolled_back", model = %c.id, champion = %self.model.id,
                reasons = %v.breaches.join("; "), error_rate = v.error_rate,
                score_psi = %fmt(v.score_psi), auc = %fmt(auc),
                champion_auc = %fmt(champion_auc), labelled, events,
                "rollout: rolled back; the champion goes on"
            );
            self.count_rollout("rolled_back");
            if let Some(r) = &self.revert {
                r.to(self.model.version, &c.id);
            }
        }
    }

    fn verdict(&self, c: &Candidate) -> Verdict {
        let g = &self.cfg.rollout;
        let mut v = Verdict {
            error_rate: c.failures as f64 / c.events.max(1) as f64,
            ..Verdict::default()
        };
        if v.error_rate > g.rollout_max_error_rate {
            v.breaches.push(format!(
                "failed on {} of {} events (error rate {:.4} > {})",
                c.failures, c.events, v.error_rate, g.rollout_max_error_rate
            ));
        }
        if let (Some(w), Some(r)) = (c.scores.as_ref(), c.model.reference.as_ref()) {
            v.score_psi = w.report(r).score.psi;
            if let Some(psi) = v.score_psi.filter(|p| *p > g.rollout_max_score_psi) {
                v.breaches.push(format!(
                    "its scores drifted from its training split's (PSI {psi:.4} > {})",
                    g.rollout_max_score_psi
                ));
            }
        }
        if let Some(l) = self.labels.as_ref() {
            v.auc = l.paired_auc();
            if let Some((auc, champion, n)) = v.auc
                && n as u64 >= g.rollout_min_labels
                && auc < champion - g.rollout_auc_margin
            {
                v.breaches.push(format!(
                    "ROC AUC {auc:.4} against the champion's {champion:.4} on the same {n} \
                     labelled events (margin {})",
                    g.rollout_auc_margin
                ));
            }
        }
        v
    }

    /// Take the candidate off trial: out of the shadows and the scorers.
    fn end_candidate(&mut self) -> Option<Arc<Servable>> {
        let c = self.candidate.take()?;
        self.shadows.remove(&c.model);
        for p in self.parts.iter_mut().flatten() {
            if let Some(s) = p.scorer.as_mut() {
                s.remove_shadow(&c.model);
            }
        }
        if let Some(l) = self.labels.as_mut() {
            l.unwatch();
        }
        self.refresh_state_fp();
        self.metrics.rollout_candidate.set(0);
        Some(c.model)
    }

    fn count_rollout(&mut self, outcome: &str) {
        self.metrics
            .rollouts
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        match outcome {
            "promoted" => self.summary.rollouts_promoted += 1,
            "rolled_back" => self.summary.rollouts_rolled_back += 1,
            _ => {}
        }
    }

    /// The champion's state fingerprint, whatever the order or repartitioning.
    fn state_fp_plain(&self) -> String {
        crate::score::state_fingerprint(&self.model)
    }
}
