//! A fitted multilayer perceptron as the scorer runs it: dense layers with ReLU between them and
//! a logistic output, evaluated without a tensor library and without allocating.
//!
//! The trainer fits it with burn (autodiff on CPU) and stores the weights as burn holds them;
//! its tests check that this forward pass agrees with burn's ndarray backend.

use serde::{Deserialize, Serialize};

use crate::linear::sigmoid;
use crate::predictor::{bounded, threshold};

/// Widest layer the allocation-free forward pass takes (its scratch buffers live on the stack).
pub const MAX_WIDTH: usize = 512;

/// One dense layer: `y = x W + b`, with `W` of shape `[inputs, outputs]` stored row by row
/// (burn's `Linear` layout).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DenseLayer {
    /// Width of the input.
    pub inputs: usize,
    /// Width of the output.
    pub outputs: usize,
    /// `inputs * outputs` weights; `weights[i * outputs + o]` links input `i` to output `o`.
    pub weights: Vec<f32>,
    /// `outputs` biases.
    pub bias: Vec<f32>,
}

/// Layers in order; ReLU after every layer but the last, whose single output is a logit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlpModel {
    /// The layers, input first.
    pub layers: Vec<DenseLayer>,
    /// Scores at or above this are the positive decision.
    pub threshold: f64,
}

impl MlpModel {
    /// Check that the shapes chain and fit the scratch buffers, that every weight and bias is
    /// finite and bounded, and that the threshold is in [0, 1]; a bundle is refused, not
    /// served, when they are not.
    pub fn validate(&self) -> Result<(), String> {
        let Some(last) = self.layers.last() else {
            return Err("an MLP needs at least one layer".into());
        };
        if last.outputs != 1 {
            return Err(format!(
                "the last layer has {} outputs; a binary classifier needs 1",
                last.outputs
            ));
        }
        let mut width = self.inputs();
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != width {
                return Err(format!(
                    "layer {i} takes {} inputs but the layer before gives {width}",
                    l.inputs
                ));
            }
            if l.inputs == 0 || l.outputs == 0 {
                return Err(format!(
                    "layer {i} is {} x {}: a layer needs at least one input and one output",
                    l.inputs, l.outputs
                ));
            }
            if Some(l.weights.len()) != l.inputs.checked_mul(l.outputs) || l.bias.len() != l.outputs
            {
                return Err(format!(
                    "layer {i}: {} weights and {} biases for {} x {}",
                    l.weights.len(),
                    l.bias.len(),
                    l.inputs,
                    l.outputs
                ));
            }
            if i > 0 && l.inputs > MAX_WIDTH {
                return Err(format!(
                    "layer {i} is {} wide; at most {MAX_WIDTH} is served",
                    l.inputs
                ));
            }
            for (j, w) in l.weights.iter().enumerate() {
                bounded(|| format!("layers[{i}].weights[{j}]"), f64::from(*w))?;
            }
            for (j, b) in l.bias.iter().enumerate() {
                bounded(|| format!("layers[{i}].bias[{j}]"), f64::from(*b))?;
            }
            width = l.outputs;
        }
        threshold(self.threshold)
    }

    /// Width of the input.
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// The probability of the positive class. Inputs must have [`Self::inputs`] slots (the
    /// signature check refuses other widths first); a model that failed [`Self::validate`]
    /// scores NaN rather than panicking.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        let mut a = [0.0f64; MAX_WIDTH];
        let mut b = [0.0f64; MAX_WIDTH];
        let mut width = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let out = layer.outputs;
            // `chunks_exact(0)` below would panic: an empty layer scores NaN.
            if out == 0
                || out > MAX_WIDTH
                || Some(layer.weights.len()) != layer.inputs.checked_mul(out)
            {
                return f64::NAN;
            }
            let (input, output): (&[f64], &mut [f64]) = if i == 0 {
                (x, &mut a[..out])
            } else if i % 2 == 1 {
                (&a[..width], &mut b[..out])
            } else {
                (&b[..width], &mut a[..out])
            };
            if (i > 0 && width != layer.inputs)
                || input.len() < layer.inputs
                || layer.bias.len() != out
            {
                return f64::NAN;
            }
            for (o, bias) in output.iter_mut().zip(&layer.bias) {
                *o = f64::from(*bias);
            }
            for (v, row) in input.iter().zip(layer.weights.chunks_exact(out)) {
                for (o, w) in output.iter_mut().zip(row) {
                    *o += v * f64::from(*w);
                }
            }
            if i + 1 < self.layers.len() {
                for o in output.iter_mut() {
                    *o = o.max(0.0);
                }
            }
            width = out;
        }
        let last = if self.layers.len() % 2 == 1 {
            a[0]
        } else {
            b[0]
        };
        if width != 1 {
            return f64::NAN;
        }
        sigmoid(last)
    }

    /// Whether a score is a positive decision.
    pub fn decide(&self, score: f64) -> bool {
        score >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(inputs: usize, outputs: usize, weights: &[f32], bias: &[f32]) -> DenseLayer {
        DenseLayer {
            inputs,
            outputs,
            weights: weights.to_vec(),
            bias: bias.to_vec(),
        }
    }

    #[test]
    fn forward_pass_by_hand() {
        // h = relu([x0 - x1 + 0.5, 2 x0 - 1]); z = h0 - 3 h1 + 0.25
        let m = MlpModel {
            layers: vec![
                layer(2, 2, &[1.0, 2.0, -1.0, 0.0], &[0.5, -1.0]),
                layer(2, 1, &[1.0, -3.0], &[0.25]),
            ],
            threshold: 0.5,
        };
        m.validate().unwrap();
        // x = (1, 2): h = relu(-0.5, 1) = (0, 1); z = -2.75
        assert_eq!(m.predict_proba(&[1.0, 2.0]), sigmoid(-2.75));
        // x = (3, 1): h = (2.5, 5); z = 2.5 - 15 + 0.25 = -12.25
        assert_eq!(m.predict_proba(&[3.0, 1.0]), sigmoid(-12.25));
        // Three layers exercise both scratch buffers.
        let deep = MlpModel {
            layers: vec![
                layer(1, 2, &[1.0, -1.0], &[0.0, 0.0]),
                layer(2, 2, &[1.0, 0.0, 0.0, 1.0], &[0.0, 0.0]),
                layer(2, 1, &[2.0, 3.0], &[-1.0]),
            ],
            threshold: 0.5,
        };
        deep.validate().unwrap();
        // x = -2: h1 = (0, 2); h2 = (0, 2); z = 6 - 1 = 5
        assert_eq!(deep.predict_proba(&[-2.0]), sigmoid(5.0));
    }

    #[test]
    fn malformed_models_are_refused_and_never_panic() {
        let bad = MlpModel {
            layers: vec![
                layer(2, 2, &[1.0, 2.0, 3.0], &[0.0, 0.0]),
                layer(2, 1, &[1.0, 1.0], &[0.0]),
            ],
            threshold: 0.5,
        };
        assert!(bad.validate().unwrap_err().contains("layer 0: 3 weights"));
        assert!(bad.predict_proba(&[1.0, 1.0]).is_nan());
        let unchained = MlpModel {
            layers: vec![
                layer(2, 3, &[0.0; 6], &[0.0; 3]),
                layer(2, 1, &[0.0; 2], &[0.0]),
            ],
            threshold: 0.5,
        };
        assert!(
            unchained
                .validate()
                .unwrap_err()
                .contains("layer 1 takes 2")
        );
        assert!(unchained.predict_proba(&[1.0, 1.0]).is_nan());
        let empty = MlpModel {
            layers: vec![],
            threshold: 0.5,
        };
        assert!(empty.validate().is_err());
        assert!(empty.predict_proba(&[]).is_nan());
        let wide = MlpModel {
            layers: vec![layer(1, 2, &[0.0; 2], &[0.0; 2])],
            threshold: 0.5,
        };
        assert!(wide.validate().unwrap_err().contains("needs 1"));
        // Shapes whose product overflows are refused, not multiplied.
        let huge = MlpModel {
            layers: vec![
                layer(usize::MAX, 2, &[0.0; 2], &[0.0; 2]),
                layer(2, 1, &[0.0; 2], &[0.0]),
            ],
            threshold: 0.5,
        };
        assert!(huge.validate().unwrap_err().contains("layer 0: 2 weights"));
        assert!(huge.predict_proba(&[1.0]).is_nan());
        // A hidden layer of width 0 chains (0 weights for 4 x 0, then 0 x 1) but cannot score.
        let hollow = MlpModel {
            layers: vec![layer(4, 0, &[], &[]), layer(0, 1, &[], &[0.5])],
            threshold: 0.5,
        };
        assert_eq!(
            hollow.validate().unwrap_err(),
            "layer 0 is 4 x 0: a layer needs at least one input and one output"
        );
        assert!(
            hollow.predict_proba(&[1.0; 4]).is_nan(),
            "and it does not panic"
        );
    }

    #[test]
    fn unbounded_weights_and_bad_thresholds_are_refused() {
        let ok = MlpModel {
            layers: vec![
                layer(2, 2, &[1.0, 2.0, -1.0, 0.0], &[0.5, -1.0]),
                layer(2, 1, &[1.0, -3.0], &[0.25]),
            ],
            threshold: 0.5,
        };
        let with = |f: &dyn Fn(&mut MlpModel)| {
            let mut m = ok.clone();
            f(&mut m);
            m.validate().unwrap_err()
        };
        assert!(
            with(&|m| m.layers[1].weights[1] = -2e6)
                .starts_with("layers[1].weights[1] is -2000000.0:")
        );
        assert!(with(&|m| m.layers[0].bias[1] = f32::NAN).starts_with("layers[0].bias[1] is NaN"));
        assert!(with(&|m| m.threshold = 7.5).starts_with("threshold is 7.5"));
        // From JSON, a weight beyond f32 does not parse; one within it but beyond the bound
        // parses and is refused.
        let json = serde_json::to_string(&ok).unwrap();
        let far = json.replacen("-3.0", "1e300", 1);
        let e = serde_json::from_str::<MlpModel>(&far).unwrap_err();
        assert!(e.to_string().contains("number out of range"), "{e}");
        let big: MlpModel = serde_json::from_str(&json.replacen("-3.0", "1e30", 1)).unwrap();
        let e = big.validate().unwrap_err();
        assert!(
            e.starts_with("layers[1].weights[1] is 1.0000000150474662e30:"),
            "{e}"
        );
    }
}
