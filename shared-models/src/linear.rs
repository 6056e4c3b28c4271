//! A fitted linear classifier as the scorer runs it: no training library needed to serve.

use serde::{Deserialize, Serialize};

/// `p(y = 1 | x) = sigmoid(w . x + b)`, with a decision threshold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LinearModel {
    /// One weight per input slot.
    pub weights: Vec<f64>,
    /// The intercept `b`.
    pub intercept: f64,
    /// Scores at or above this are the positive decision.
    pub threshold: f64,
}

impl LinearModel {
    /// The probability of the positive class. Inputs must have `weights.len()` slots; extra
    /// slots are ignored and missing ones count as 0 (the signature check refuses both first).
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        let z = self
            .weights
            .iter()
            .zip(x)
            .fold(self.intercept, |acc, (w, v)| acc + w * v);
        sigmoid(z)
    }

    /// Whether a score is a positive decision.
    pub fn decide(&self, score: f64) -> bool {
        score >= self.threshold
    }
}

/// A logistic function that does not overflow for large `|z|`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_by_hand() {
        let m = LinearModel {
            weights: vec![2.0, -1.0],
            intercept: 0.5,
            threshold: 0.5,
        };
        // z = 0.5 + 2 * 1 - 1 * 3 = -0.5
        assert_eq!(m.predict_proba(&[1.0, 3.0]), sigmoid(-0.5));
        assert!((sigmoid(-0.5) - 0.377_540_668_798_145_4).abs() < 1e-15);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(m.decide(0.5) && !m.decide(0.499));
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
    }
}
