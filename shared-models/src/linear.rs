//! A fitted linear classifier as the scorer runs it: no training library needed to serve.

use serde::{Deserialize, Serialize};

use crate::predictor::{bounded, threshold};

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
    /// Every weight and the intercept finite and bounded, the threshold in [0, 1].
    pub fn validate(&self) -> Result<(), String> {
        for (i, w) in self.weights.iter().enumerate() {
            bounded(|| format!("weights[{i}]"), *w)?;
        }
        bounded(|| "intercept".into(), self.intercept)?;
        threshold(self.threshold)
    }

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

/// A logistic function that does not overflow for large `|z|`. Its `exp` is the `libm` crate's,
/// not the platform's, so that a score is the same bits on every target (glibc's `exp` and the
/// WebAssembly build's differ in the last bit for some inputs).
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + libm::exp(-z))
    } else {
        let e = libm::exp(z);
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

    #[test]
    fn unbounded_or_non_finite_parameters_and_bad_thresholds_are_refused() {
        let ok = LinearModel {
            weights: vec![2.0, -1e6],
            intercept: 1e6,
            threshold: 1.0,
        };
        assert_eq!(ok.validate(), Ok(()), "the bound itself is allowed");
        let with = |f: &dyn Fn(&mut LinearModel)| {
            let mut m = ok.clone();
            f(&mut m);
            m.validate().unwrap_err()
        };
        let e = with(&|m| m.weights[1] = -1e300);
        assert!(e.starts_with("weights[1] is -1e300: "), "{e}");
        assert!(e.contains("at most 1e6"), "{e}");
        assert!(with(&|m| m.weights[0] = f64::NAN).starts_with("weights[0] is NaN"));
        assert!(with(&|m| m.weights[0] = f64::INFINITY).starts_with("weights[0] is inf"));
        assert!(with(&|m| m.intercept = 1.000_001e6).starts_with("intercept is 1000001.0"));
        let e = with(&|m| m.threshold = 7.5);
        assert_eq!(
            e,
            "threshold is 7.5: a decision threshold is a probability, in [0, 1]"
        );
        assert!(with(&|m| m.threshold = -0.1).starts_with("threshold is -0.1"));
        assert!(with(&|m| m.threshold = f64::NAN).starts_with("threshold is NaN"));
    }
}
