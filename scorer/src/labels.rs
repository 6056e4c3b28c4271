//! Accuracy from delayed labels (`scorer run --labels TOPIC`): labels that arrive after the
//! events (a flight's arrival delay is known hours after it departed) are joined with the
//! predictions the scorer made, and each model's ROC AUC, log loss and Brier score are kept over
//! its last `--label-window` labelled predictions.
//!
//! A label record is an event of the pipeline's own schema that carries the `[label]` field
//! (the arrival of the flight, say): it names the event by the pipeline's key and event time,
//! the identity a prediction carries too. The join holds each prediction until its label comes
//! or until the newest event time predicted is `--label-horizon` past it (then it counts as
//! unlabelled), and a label that comes before its prediction (the labels topic was ahead) until
//! the prediction comes or the horizon passes it (then it counts as unmatched). Both are bounded
//! in number too (`--label-max-pending`: the oldest go first), so memory stays bounded whatever
//! the topics do. A second label for an event counts as a duplicate and changes nothing; a
//! label older than the horizon is too late; a record that does not decode, or lacks the label
//! field, key or time, is malformed. Counting, never a crash.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use shared_features::wire::Format;
use shared_features::{EventDecoder, Pipeline, Value};

/// `scorer run` options for delayed labels.
#[derive(clap::Args, Debug, Clone)]
pub struct LabelArgs {
    /// Topic of label records: events of the pipeline's schema carrying its `[label]` field,
    /// joined with the predictions by key and event time (README, "Accuracy from delayed
    /// labels").
    #[arg(long, value_name = "TOPIC")]
    pub labels: Option<String>,
    /// Event-time seconds a prediction waits for its label (and a label for its prediction).
    #[arg(long, default_value_t = 86_400.0, value_parser = crate::http::positive_seconds)]
    pub label_horizon: f64,
    /// Labelled predictions per model over which AUC, log loss and Brier score are computed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub label_window: u64,
    /// Most predictions waiting for a label (and most labels waiting for a prediction); past
    /// it the oldest are let go.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub label_max_pending: u64,
    /// Where the label consumer starts when the scorer starts: `end` (labels from now on) or
    /// `beginning` (the whole topic; labels of predictions made before the start count as
    /// unmatched).
    #[arg(long, default_value = "end")]
    pub labels_from: LabelsFrom,
}

/// Where the label consumer starts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelsFrom {
    /// The topic's beginning.
    Beginning,
    /// Its end when the scorer starts.
    End,
}

/// The event a prediction or a label is about: the key (as text) and the event time.
type Id = (Box<[u8]>, i64);

/// What became of the label records and of the predictions waiting for them.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Label records read.
    pub read: u64,
    /// Labels joined with a prediction.
    pub joined: u64,
    /// A second label for an event already labelled (or waiting): ignored.
    pub duplicate: u64,
    /// Labels whose prediction never came within the horizon.
    pub unmatched: u64,
    /// Labels of events older than the horizon when they came.
    pub too_late: u64,
    /// Records that do not decode, or lack the key or the event time.
    pub malformed: u64,
    /// Records whose label field is null or absent (a diverted flight has no arrival delay):
    /// no label to join.
    pub no_label: u64,
    /// Predictions whose label never came within the horizon.
    pub unlabelled: u64,
}

/// A prediction waiting for its label (or labelled, kept to spot a duplicate label).
struct Waiting {
    /// Each model's score of the event: (model slot, score).
    scores: Vec<(usize, f64)>,
    label: Option<bool>,
}

/// The labelled predictions of one model: the last `window` of them.
struct Rolling {
    model: String,
    role: &'static str,
    pairs: VecDeque<(f64, bool)>,
    /// Labelled predictions ever.
    total: u64,
}

/// The figures of one model over its window.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ModelAccuracy {
    /// `name@version`.
    pub model: String,
    /// `champion` or `shadow`.
    pub role: &'static str,
    /// Labelled predictions in the window.
    pub events: u64,
    /// Labelled predictions since the start.
    pub labelled: u64,
    /// ROC AUC over the window (`null` with one class only).
    pub auc: Option<f64>,
    /// Log loss over the window.
    pub log_loss: Option<f64>,
    /// Brier score over the window.
    pub brier: Option<f64>,
    /// Mean score and positive rate over the window (calibration in the large).
    pub mean_score: Option<f64>,
    /// Share of positive labels in the window.
    pub positive_rate: Option<f64>,
}

/// The join of predictions with their labels, and each model's rolling accuracy.
pub struct Join {
    horizon_ms: i64,
    window: usize,
    max_pending: usize,
    preds: HashMap<Id, Waiting>,
    /// Entries of `preds` without a label yet.
    waiting: usize,
    /// Ids of `preds` in arrival order (event time, id): the oldest go first.
    preds_order: VecDeque<(i64, Id)>,
    early: HashMap<Id, bool>,
    early_order: VecDeque<(i64, Id)>,
    /// The newest event time of a prediction: the clock of the horizon.
    newest: i64,
    models: Vec<Rolling>,
    /// Two model slots whose scores of the same labelled events are kept side by side
    /// ([`Join::watch`]), and those scores with the label.
    watch: Option<(usize, usize)>,
    paired: Vec<(f64, f64, bool)>,
    /// What became of labels and predictions.
    pub counts: Counts,
}

impl Join {
    /// A join holding predictions and labels for `horizon_ms` of event time, at most
    /// `max_pending` of each, with accuracy over the last `window` labelled predictions.
    pub fn new(horizon_ms: i64, window: usize, max_pending: usize) -> Self {
        Self {
            horizon_ms,
            window: window.max(1),
            max_pending: max_pending.max(1),
            preds: HashMap::new(),
            waiting: 0,
            preds_order: VecDeque::new(),
            early: HashMap::new(),
            early_order: VecDeque::new(),
            newest: i64::MIN,
            models: Vec::new(),
            watch: None,
            paired: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// From now on, keep the scores of slots `a` and `b` of every event both scored and that
    /// is labelled, side by side (a rollout's trial compares them on the same events).
    pub fn watch(&mut self, a: usize, b: usize) {
        self.watch = Some((a, b));
        self.paired.clear();
    }

    /// Stop [`Join::watch`]ing.
    pub fn unwatch(&mut self) {
        self.watch = None;
        self.paired.clear();
    }

    /// The ROC AUC of the watched slots `b` and `a` over the labelled events both scored, and
    /// how many those are; `None` before both classes are seen.
    pub fn paired_auc(&self) -> Option<(f64, f64, usize)> {
        self.watch?;
        let labels: Vec<bool> = self.paired.iter().map(|p| p.2).collect();
        let a: Vec<f64> = self.paired.iter().map(|p| p.0).collect();
        let b: Vec<f64> = self.paired.iter().map(|p| p.1).collect();
        let (auc_a, auc_b) = (
            shared_models::metrics::roc_auc(&a, &labels),
            shared_models::metrics::roc_auc(&b, &labels),
        );
        (auc_a.is_finite() && auc_b.is_finite()).then_some((auc_b, auc_a, labels.len()))
    }

    /// Keep the watched pair of `w` if it is complete and labelled.
    fn pair(watch: Option<(usize, usize)>, paired: &mut Vec<(f64, f64, bool)>, w: &Waiting) {
        let (Some((a, b)), Some(y)) = (watch, w.label) else {
            return;
        };
        let of = |slot: usize| w.scores.iter().find(|(s, _)| *s == slot).map(|x| x.1);
        if let (Some(sa), Some(sb)) = (of(a), of(b)) {
            paired.push((sa, sb, y));
        }
    }

    /// The slot of model `id` in `role`, added on first sight.
    pub fn model(&mut self, id: &str, role: &'static str) -> usize {
        if let Some(i) = self
            .models
            .iter()
            .position(|m| m.model == id && m.role == role)
        {
            return i;
        }
        self.models.push(Rolling {
            model: id.to_string(),
            role,
            pairs: VecDeque::new(),
            total: 0,
        });
        self.models.len() - 1
    }

    /// Predictions waiting for a label, and labels waiting for a prediction.
    pub fn pending(&self) -> (usize, usize) {
        (self.waiting, self.early.len())
    }

    /// Model `slot` scored the event (`key`, `event_time`) with `score`.
    pub fn predicted(&mut self, key: &[u8], event_time: i64, slot: usize, score: f64) {
        self.advance(event_time);
        let id: Id = (key.into(), event_time);
        if let Some(w) = self.preds.get_mut(&id) {
            if w.scores.iter().any(|(s, _)| *s == slot) {
                return; // scored again (a rewind, a restart): counted once
            }
            w.scores.push((slot, score));
            if let Some(y) = w.label {
                push(&mut self.models, self.window, slot, score, y);
                if self.watch.is_some_and(|(a, b)| slot == a || slot == b) {
                    Self::pair(self.watch, &mut self.paired, w);
                }
            }
            return;
        }
        let label = self.early.remove(&id);
        if let Some(y) = label {
            self.counts.joined += 1;
            push(&mut self.models, self.window, slot, score, y);
        } else {
            self.waiting += 1;
        }
        self.preds_order.push_back((event_time, id.clone()));
        self.preds.insert(
            id,
            Waiting {
                scores: vec![(slot, score)],
                label,
            },
        );
        self.evict();
    }

    /// A label record said the event (`key`, `event_time`) is `label`.
    pub fn labelled(&mut self, key: &[u8], event_time: i64, label: bool) {
        self.counts.read += 1;
        let id: Id = (key.into(), event_time);
        if let Some(w) = self.preds.get_mut(&id) {
            if w.label.is_some() {
                self.counts.duplicate += 1;
                return;
            }
            w.label = Some(label);
            self.waiting -= 1;
            self.counts.joined += 1;
            for &(slot, score) in &w.scores {
                push(&mut self.models, self.window, slot, score, label);
            }
            Self::pair(self.watch, &mut self.paired, w);
            return;
        }
        if self.early.contains_key(&id) {
            self.counts.duplicate += 1;
            return;
        }
        if self.newest != i64::MIN && event_time < self.newest.saturating_sub(self.horizon_ms) {
            self.counts.too_late += 1;
            return;
        }
        // Labels do not move the horizon: a labels topic ahead of the events would otherwise
        // expire the labels it brought early.
        self.early_order.push_back((event_time, id.clone()));
        self.early.insert(id, label);
        self.evict();
    }

    /// A label record that could not be read.
    pub fn malformed(&mut self) {
        self.counts.read += 1;
        self.counts.malformed += 1;
    }

    /// A label record without a label.
    pub fn no_label(&mut self) {
        self.counts.read += 1;
        self.counts.no_label += 1;
    }

    fn advance(&mut self, event_time: i64) {
        self.newest = self.newest.max(event_time);
    }

    /// Let go of what is past the horizon, or past the most pending.
    fn evict(&mut self) {
        let oldest = self.newest.saturating_sub(self.horizon_ms);
        while let Some((t, _)) = self.preds_order.front() {
            if *t >= oldest && self.preds.len() <= self.max_pending {
                break;
            }
            let Some((_, id)) = self.preds_order.pop_front() else {
                break;
            };
            if let Some(w) = self.preds.remove(&id)
                && w.label.is_none()
            {
                self.counts.unlabelled += 1;
                self.waiting -= 1;
            }
        }
        while let Some((t, _)) = self.early_order.front() {
            if *t >= oldest && self.early.len() <= self.max_pending {
                break;
            }
            let Some((_, id)) = self.early_order.pop_front() else {
                break;
            };
            if self.early.remove(&id).is_some() {
                self.counts.unmatched += 1;
            }
        }
    }

    /// Every model's accuracy over its window.
    pub fn report(&self) -> Vec<ModelAccuracy> {
        self.models
            .iter()
            .map(|m| {
                // In a fixed order (by score, then label): the sums do not depend on the order
                // the labels came in.
                let mut pairs: Vec<(f64, bool)> = m.pairs.iter().copied().collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let scores: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                let labels: Vec<bool> = pairs.iter().map(|p| p.1).collect();
                let e = (!pairs.is_empty())
                    .then(|| shared_models::metrics::evaluate(&scores, &labels, 0.5));
                let n = pairs.len() as f64;
                ModelAccuracy {
                    model: m.model.clone(),
                    role: m.role,
                    events: pairs.len() as u64,
                    labelled: m.total,
                    auc: e.as_ref().map(|e| e.auc).filter(|a| a.is_finite()),
                    log_loss: e.as_ref().map(|e| e.log_loss),
                    brier: e.as_ref().map(|e| e.brier),
                    mean_score: e.as_ref().map(|_| scores.iter().sum::<f64>() / n),
                    positive_rate: e.as_ref().map(|e| e.positive_rate),
                }
            })
            .collect()
    }
}

fn push(models: &mut [Rolling], window: usize, slot: usize, score: f64, label: bool) {
    if let Some(m) = models.get_mut(slot) {
        if m.pairs.len() == window {
            m.pairs.pop_front();
        }
        m.pairs.push_back((score, label));
        m.total += 1;
    }
}

/// Reads label records: decodes them as the scorer decodes events, and gives the event's key,
/// time and label.
pub struct LabelReader {
    pipeline: std::sync::Arc<Pipeline>,
    decoder: EventDecoder,
    row: Vec<Value>,
    key: Vec<u8>,
}

impl LabelReader {
    /// A reader of `p`'s label records in `format`. `None` when the pipeline declares no label.
    pub fn new(p: std::sync::Arc<Pipeline>, format: &Format) -> Option<Self> {
        p.label.as_ref()?;
        Some(Self {
            decoder: EventDecoder::new(&p, format),
            row: vec![Value::Null; p.layout.len()],
            key: Vec::new(),
            pipeline: p,
        })
    }

    /// The event a record labels: its key (as the prediction's key), event time and label.
    pub fn read(&mut self, bytes: &[u8]) -> Result<Read<'_>, String> {
        let p = &*self.pipeline;
        self.row.fill(Value::Null);
        self.decoder
            .decode(bytes, &mut self.row)
            .map_err(|e| e.to_string())?;
        if !p
            .filters
            .iter()
            .all(|f| shared_features::eval::matches(f, &self.row[f.col]))
        {
            return Ok(Read::Filtered);
        }
        let t = shared_features::eval::event_time(p, &self.row)?;
        let Some(l) = p.label.as_ref() else {
            return Err("the pipeline declares no [label]".into());
        };
        if self.row[p.key].is_null() {
            return Err("the key is null or absent".into());
        }
        let Some(y) = shared_features::eval::label(l, &self.row) else {
            return Ok(Read::NoLabel);
        };
        shared_models::prediction::key_text(&self.row[p.key], &mut self.key);
        Ok(Read::Label(&self.key, t, y > 0.5))
    }
}

/// What a label record says.
pub enum Read<'a> {
    /// The event with this key and event time has this label.
    Label(&'a [u8], i64, bool),
    /// Its label field is null or absent.
    NoLabel,
    /// A pipeline filter drops the event: it was never scored.
    Filtered,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Labels late, early, duplicated and never, for the champion and a shadow: each labelled
    /// event counts once per model, whichever came first; what never meets its other half is
    /// counted when the horizon passes it.
    #[test]
    fn labels_late_early_duplicated_and_never() {
        let mut j = Join::new(24 * HOUR, 100, 1000);
        let (a, b) = (j.model("m@1", "champion"), j.model("c@1", "shadow"));
        // Late: the prediction, then its label.
        j.predicted(b"k1", HOUR, a, 0.9);
        j.predicted(b"k1", HOUR, b, 0.6);
        j.labelled(b"k1", HOUR, true);
        // Early: the label, then the prediction (champion, then shadow).
        j.labelled(b"k2", 2 * HOUR, false);
        j.predicted(b"k2", 2 * HOUR, a, 0.2);
        j.predicted(b"k2", 2 * HOUR, b, 0.7);
        // Duplicated: once after the join, once while early.
        j.labelled(b"k1", HOUR, true);
        j.labelled(b"k3", 3 * HOUR, true);
        j.labelled(b"k3", 3 * HOUR, true);
        // The same event scored again (a rewind) counts once.
        j.predicted(b"k1", HOUR, a, 0.9);
        // Never: a prediction whose label does not come.
        j.predicted(b"k4", 3 * HOUR, a, 0.5);
        assert_eq!(
            j.counts,
            Counts {
                read: 5,
                joined: 2,
                duplicate: 2,
                ..Counts::default()
            }
        );
        assert_eq!(
            j.pending(),
            (1, 1),
            "k4 waits for its label, k3's label for its prediction"
        );
        // A day and more later: k3's label and k4's prediction expire; a label older than the
        // horizon is too late.
        j.predicted(b"k5", 28 * HOUR, a, 0.1);
        j.labelled(b"k0", 2 * HOUR, true);
        assert_eq!(j.counts.unmatched, 1, "{:?}", j.counts);
        assert_eq!(j.counts.unlabelled, 1, "{:?}", j.counts);
        assert_eq!(j.counts.too_late, 1, "{:?}", j.counts);
        assert_eq!(j.pending(), (1, 0), "k5 waits");
        let r = j.report();
        assert_eq!(r[0].events, 2);
        assert_eq!(r[0].auc, Some(1.0)); // 0.9 positive above 0.2 negative
        assert_eq!(r[1].events, 2);
        assert_eq!(r[1].auc, Some(0.0)); // 0.6 positive below 0.7 negative
        assert_eq!(r[1].role, "shadow");
    }

    /// However the labels come, the join holds at most `max_pending` of each side.
    #[test]
    fn memory_is_bounded_whatever_the_topics_do() {
        let mut j = Join::new(i64::MAX / 4, 10, 50);
        let m = j.model("m@1", "champion");
        for i in 0..1000i64 {
            j.predicted(format!("p{i}").as_bytes(), i, m, 0.5);
            j.labelled(format!("l{i}").as_bytes(), i, true);
            let (p, e) = (j.preds.len(), j.early.len());
            assert!(p <= 50 && e <= 50, "{p} {e}");
            assert!(j.preds_order.len() <= 51 && j.early_order.len() <= 51);
        }
        assert_eq!(j.counts.unlabelled, 950);
        assert_eq!(j.counts.unmatched, 950);
        assert_eq!(j.report()[0].events, 0);
    }

    /// Watched slots are compared on exactly the labelled events both scored, whatever came
    /// first: a label before, between or after the two scores.
    #[test]
    fn watched_models_are_compared_on_the_same_labelled_events() {
        let mut j = Join::new(i64::MAX / 4, 100, 1000);
        let (a, b) = (j.model("m@1", "champion"), j.model("m@2", "candidate"));
        j.predicted(b"before", 1, a, 0.1); // scored by the champion before the watch
        j.watch(a, b);
        j.labelled(b"early", 2, true);
        j.predicted(b"early", 2, a, 0.8);
        j.predicted(b"early", 2, b, 0.3);
        j.predicted(b"mid", 3, a, 0.4);
        j.labelled(b"mid", 3, false);
        j.predicted(b"mid", 3, b, 0.6);
        j.predicted(b"late", 4, a, 0.7);
        j.predicted(b"late", 4, b, 0.2);
        j.labelled(b"late", 4, true);
        j.predicted(b"champion only", 5, a, 0.9);
        j.labelled(b"champion only", 5, false);
        j.labelled(b"before", 1, false);
        assert_eq!(
            j.paired,
            vec![(0.8, 0.3, true), (0.4, 0.6, false), (0.7, 0.2, true)]
        );
        // The candidate ranks both positives below the negative; the champion above it.
        assert_eq!(j.paired_auc(), Some((0.0, 1.0, 3)));
        j.unwatch();
        assert_eq!(j.paired_auc(), None);
    }

    /// The window keeps the last labelled predictions, and the figures are those of
    /// `shared_models::metrics::evaluate` on them, whatever order the labels came in.
    #[test]
    fn the_window_is_the_last_labelled_predictions() {
        let scores: Vec<f64> = (0..40).map(|i| f64::from(i * 37 % 40) / 40.0).collect();
        let labels: Vec<bool> = (0..40).map(|i| (i * 7) % 3 == 0).collect();
        let mut j = Join::new(i64::MAX / 4, 25, 1000);
        let m = j.model("m@1", "champion");
        for (i, s) in scores.iter().enumerate() {
            j.predicted(&[b'k', i as u8], i as i64, m, *s);
        }
        for i in (0..40).rev() {
            j.labelled(&[b'k', i as u8], i as i64, labels[i]);
        }
        // Labelled last: events 24 down to 0.
        let mut pairs: Vec<(f64, bool)> = (0..25).map(|i| (scores[i], labels[i])).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (s, y): (Vec<f64>, Vec<bool>) = pairs.into_iter().unzip();
        let e = shared_models::metrics::evaluate(&s, &y, 0.5);
        let r = &j.report()[0];
        assert_eq!((r.events, r.labelled), (25, 40));
        assert_eq!(r.auc, Some(e.auc));
        assert_eq!(r.log_loss, Some(e.log_loss));
        assert_eq!(r.brier, Some(e.brier));
    }
}
