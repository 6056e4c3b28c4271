//! Evaluation metrics of a binary classifier's scores on the validation split.

use serde::Serialize;

/// Metrics of scores against 0/1 labels.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    /// Area under the ROC curve (ties get half credit).
    pub auc: f64,
    /// Area under the precision-recall curve, as average precision.
    pub pr_auc: f64,
    /// Mean negative log-likelihood (probabilities clipped to [1e-15, 1 - 1e-15]).
    pub log_loss: f64,
    /// Mean squared error of the probabilities.
    pub brier: f64,
    /// Share of decisions (score >= threshold) equal to the label.
    pub accuracy: f64,
    /// Share of positive labels.
    pub positive_rate: f64,
    /// Number of scored events.
    pub n: usize,
}

/// Compute every metric. `scores` and `labels` have equal lengths; labels are 0 or 1.
pub fn evaluate(scores: &[f64], labels: &[bool], threshold: f64) -> Metrics {
    let n = scores.len();
    let pos = labels.iter().filter(|&&y| y).count();
    let eps = 1e-15;
    let (mut ll, mut brier, mut correct) = (0.0, 0.0, 0usize);
    for (&p, &y) in scores.iter().zip(labels) {
        let q = p.clamp(eps, 1.0 - eps);
        let t = if y { 1.0 } else { 0.0 };
        ll -= t * q.ln() + (1.0 - t) * (1.0 - q).ln();
        brier += (p - t) * (p - t);
        correct += usize::from((p >= threshold) == y);
    }
    let nf = n.max(1) as f64;
    Metrics {
        auc: roc_auc(scores, labels),
        pr_auc: average_precision(scores, labels),
        log_loss: ll / nf,
        brier: brier / nf,
        accuracy: correct as f64 / nf,
        positive_rate: pos as f64 / nf,
        n,
    }
}

/// Indices sorted by score, descending (NaN last).
fn by_score_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

/// ROC AUC by walking thresholds from high to low; tied scores form one step (trapezoid).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let pos = labels.iter().filter(|&&y| y).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let idx = by_score_desc(scores);
    let (mut tp, mut fp, mut area) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let (tp0, fp0) = (tp, fp);
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        area += (fp - fp0) * (tp + tp0) / 2.0;
    }
    area / (pos * neg)
}

/// Average precision: the sum over thresholds of precision times the recall gained there.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let pos = labels.iter().filter(|&&y| y).count() as f64;
    if pos == 0.0 {
        return f64::NAN;
    }
    let idx = by_score_desc(scores);
    let (mut tp, mut seen, mut ap) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let tp0 = tp;
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            tp += if labels[idx[i]] { 1.0 } else { 0.0 };
            seen += 1.0;
            i += 1;
        }
        ap += (tp - tp0) / pos * (tp / seen);
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_average_precision_by_hand() {
        // Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the four positive-negative
        // pairs, three are ordered right (0.35 < 0.4 is the miss), so AUC = 3/4.
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&scores, &labels), 0.75);
        // Thresholds 0.8 (P=1, R=1/2), 0.4 (P=1/2, R unchanged), 0.35 (P=2/3, R=1):
        // AP = 1 * 1/2 + 2/3 * 1/2 = 5/6.
        assert!((average_precision(&scores, &labels) - 5.0 / 6.0).abs() < 1e-15);
    }

    #[test]
    fn ties_get_half_credit_and_constant_scores_give_half() {
        assert_eq!(roc_auc(&[0.5, 0.5], &[true, false]), 0.5);
        assert_eq!(roc_auc(&[0.2, 0.2, 0.9], &[true, false, true]), 0.75);
        assert!(
            roc_auc(&[0.1, 0.2], &[true, true]).is_nan(),
            "undefined with one class"
        );
    }

    #[test]
    fn probability_metrics_by_hand() {
        let m = evaluate(&[0.8, 0.3], &[true, false], 0.5);
        assert!((m.log_loss - (-(0.8f64.ln() + 0.7f64.ln()) / 2.0)).abs() < 1e-15);
        assert!((m.brier - (0.04 + 0.09) / 2.0).abs() < 1e-15);
        assert_eq!((m.accuracy, m.positive_rate, m.n), (1.0, 0.5, 2));
        let sure_and_wrong = evaluate(&[0.0], &[true], 0.5);
        assert!(
            sure_and_wrong.log_loss.is_finite(),
            "probabilities are clipped"
        );
    }
}
