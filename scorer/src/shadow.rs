//! Replay as shadow (`scorer replay --model A --shadow B`): what a challenger would have done on
//! the same history. Each model scores every event of the range with window state of its own
//! (its pipeline may differ); the shadows' predictions decide nothing and are not written. The
//! report puts them side by side over the events every model scored: agreement of decisions
//! with the champion, the mean score shift, and where the events carry labels (the champion's
//! pipeline `[label]`), ROC AUC, log loss and Brier score on the same labelled events, and
//! the ROC and calibration curves as a PNG.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use shared_models::Servable;

/// Predictions gathered for the report, by source position `(partition, offset)`.
#[derive(Default)]
pub struct Comparison {
    names: Vec<String>,
    /// The champion's, in the order it scored them.
    champion: Vec<Seen>,
    /// Each shadow's score and decision by position.
    shadows: Vec<HashMap<(i32, i64), (f64, bool)>>,
}

/// What the champion made of one event.
#[derive(Clone, Copy)]
struct Seen {
    pos: (i32, i64),
    score: f64,
    decision: bool,
    label: Option<f64>,
}

/// One event every model scored: the champion's score, decision and label, and each shadow's
/// score and decision.
struct Compared {
    score: f64,
    decision: bool,
    label: Option<f64>,
    shadows: Vec<(f64, bool)>,
}

impl Compared {
    /// Model `k`'s score and decision: 0 the champion, then the shadows.
    fn of(&self, k: usize) -> (f64, bool) {
        if k == 0 {
            (self.score, self.decision)
        } else {
            self.shadows[k - 1]
        }
    }
}

/// The report's figures for one model.
#[derive(Serialize, Debug, Clone)]
pub struct ModelReport {
    /// `name@version`.
    pub model: String,
    /// `champion` or `shadow`.
    pub role: &'static str,
    /// Events of the range it scored.
    pub scored: u64,
    /// ROC AUC over the labelled events every model scored (`null` without labels).
    pub auc: Option<f64>,
    /// Log loss over the same events.
    pub log_loss: Option<f64>,
    /// Brier score over the same events.
    pub brier: Option<f64>,
    /// Mean score over the events every model scored.
    pub mean_score: Option<f64>,
    /// Share of those events whose decision is the champion's (1 for the champion).
    pub agreement: Option<f64>,
    /// Mean of its score minus the champion's over those events (0 for the champion).
    pub score_shift: Option<f64>,
}

/// The side-by-side report.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// Events of the range every model scored (the ones compared).
    pub events: u64,
    /// Of those, the labelled ones (the metrics are over these).
    pub labelled: u64,
    /// Share of the compared events on which every shadow decided as the champion did.
    pub agreement: Option<f64>,
    /// The champion first, then each shadow in the order given.
    pub models: Vec<ModelReport>,
}

impl Comparison {
    /// A comparison of `champion` with `shadows`.
    pub fn new(champion: &Servable, shadows: &[std::sync::Arc<Servable>]) -> Self {
        Self {
            names: std::iter::once(champion.id.clone())
                .chain(shadows.iter().map(|s| s.id.clone()))
                .collect(),
            champion: Vec::new(),
            shadows: vec![HashMap::new(); shadows.len()],
        }
    }

    /// The champion scored the event at `pos` (in the range). Kept only when there are
    /// shadows to compare it with.
    pub fn champion(
        &mut self,
        pos: (i32, i64),
        (score, decision): (f64, bool),
        label: Option<f64>,
    ) {
        if self.shadows.is_empty() {
            return;
        }
        self.champion.push(Seen {
            pos,
            score,
            decision,
            label,
        });
    }

    /// Shadow `i` scored the event at `pos` (in the range).
    pub fn shadow(&mut self, i: usize, pos: (i32, i64), scored: (f64, bool)) {
        if let Some(m) = self.shadows.get_mut(i) {
            m.insert(pos, scored);
        }
    }

    /// The events every model scored, in the champion's order.
    fn compared(&self) -> Vec<Compared> {
        self.champion
            .iter()
            .filter_map(|c| {
                let shadows: Option<Vec<(f64, bool)>> = self
                    .shadows
                    .iter()
                    .map(|m| m.get(&c.pos).copied())
                    .collect();
                shadows.map(|shadows| Compared {
                    score: c.score,
                    decision: c.decision,
                    label: c.label,
                    shadows,
                })
            })
            .collect()
    }

    /// The report, and the models' scores on the labelled compared events with their labels
    /// (for the plot).
    pub fn report(&self) -> (Report, Vec<Vec<f64>>, Vec<bool>) {
        let rows = self.compared();
        let n = rows.len();
        let labelled: Vec<&Compared> = rows.iter().filter(|r| r.label.is_some()).collect();
        let labels: Vec<bool> = labelled
            .iter()
            .map(|r| r.label.is_some_and(|y| y > 0.5))
            .collect();
        let models = self.names.len();
        let mean = |xs: &mut dyn Iterator<Item = f64>| {
            let (sum, count) = xs.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
            (count > 0).then(|| sum / count as f64)
        };
        let mut scores_labelled = Vec::with_capacity(models);
        let mut out = Vec::with_capacity(models);
        for k in 0..models {
            let scores: Vec<f64> = labelled.iter().map(|r| r.of(k).0).collect();
            let m = (!labels.is_empty())
                .then(|| shared_models::metrics::evaluate(&scores, &labels, 0.5));
            let scored = if k == 0 {
                self.champion.len()
            } else {
                self.shadows[k - 1].len()
            };
            out.push(ModelReport {
                model: self.names[k].clone(),
                role: if k == 0 { "champion" } else { "shadow" },
                scored: scored as u64,
                auc: m.as_ref().map(|m| m.auc),
                log_loss: m.as_ref().map(|m| m.log_loss),
                brier: m.as_ref().map(|m| m.brier),
                mean_score: mean(&mut rows.iter().map(|r| r.of(k).0)),
                agreement: mean(
                    &mut rows
                        .iter()
                        .map(|r| f64::from(u8::from(r.of(k).1 == r.decision))),
                ),
                score_shift: mean(&mut rows.iter().map(|r| r.of(k).0 - r.score)),
            });
            scores_labelled.push(scores);
        }
        let agreement = mean(
            &mut rows
                .iter()
                .map(|r| f64::from(u8::from(r.shadows.iter().all(|s| s.1 == r.decision)))),
        );
        let report = Report {
            events: n as u64,
            labelled: labels.len() as u64,
            agreement,
            models: out,
        };
        (report, scores_labelled, labels)
    }
}

/// Write `report.json` and (with the `plots` feature) `report.png` into `dir`.
pub fn write(dir: &Path, report: &Report, scores: &[Vec<f64>], labels: &[bool]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    #[cfg(feature = "plots")]
    {
        let models: Vec<shared_models::plots::Scored<'_>> = report
            .models
            .iter()
            .zip(scores)
            .map(|(m, s)| shared_models::plots::Scored {
                name: format!("{} ({})", m.model, m.role),
                scores: s,
            })
            .collect();
        let title = format!(
            "Replay as shadow: {} labelled events, agreement {}",
            labels.len(),
            report
                .agreement
                .map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a))
        );
        let png = shared_models::plots::comparison_png(&title, &models, labels)?;
        let path = dir.join("report.png");
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[cfg(not(feature = "plots"))]
    let _ = (scores, labels);
    Ok(())
}

/// The report as a table, for people.
pub fn print(report: &Report) {
    let f = |x: Option<f64>, digits: usize| x.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "compared {} events every model scored ({} labelled); agreement with the champion: {}",
        report.events,
        report.labelled,
        report
            .agreement
            .map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a))
    );
    println!(
        "  {:<32}{:>9}{:>9}{:>9}{:>9}{:>11}{:>11}{:>12}",
        "model", "role", "scored", "AUC", "log loss", "Brier", "mean score", "score shift"
    );
    for m in &report.models {
        println!(
            "  {:<32}{:>9}{:>9}{:>9}{:>9}{:>11}{:>11}{:>12}",
            m.model,
            m.role,
            m.scored,
            f(m.auc, 4),
            f(m.log_loss, 4),
            f(m.brier, 4),
            f(m.mean_score, 4),
            f(m.score_shift, 4)
        );
    }
}
