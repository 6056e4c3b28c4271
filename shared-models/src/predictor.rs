//! Every kind of model the scorer can serve, behind one interface.

use serde::{Deserialize, Serialize};

use crate::linear::LinearModel;
use crate::mlp::MlpModel;
use crate::tree::TreeModel;

/// A fitted model: what `model.json` of a bundle holds, read according to the manifest's kind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Predictor {
    /// Logistic regression.
    Linear(LinearModel),
    /// Decision tree.
    Tree(TreeModel),
    /// Multilayer perceptron.
    Mlp(MlpModel),
}

impl Predictor {
    /// Parse `model.json` of a bundle whose manifest says `kind`.
    pub fn from_json(kind: &str, bytes: &[u8]) -> Result<Self, String> {
        match kind {
            "logistic_regression" => serde_json::from_slice(bytes)
                .map(Self::Linear)
                .map_err(|e| e.to_string()),
            "decision_tree" => serde_json::from_slice(bytes)
                .map(Self::Tree)
                .map_err(|e| e.to_string()),
            "mlp" => {
                let m: MlpModel = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                m.validate()?;
                Ok(Self::Mlp(m))
            }
            other => Err(format!("unknown model kind `{other}`")),
        }
    }

    /// The kind, as a manifest names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Linear(_) => "logistic_regression",
            Self::Tree(_) => "decision_tree",
            Self::Mlp(_) => "mlp",
        }
    }

    /// The probability of the positive class.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        match self {
            Self::Linear(m) => m.predict_proba(x),
            Self::Tree(m) => m.predict_proba(x),
            Self::Mlp(m) => m.predict_proba(x),
        }
    }

    /// The decision at the model's threshold.
    pub fn decide(&self, score: f64) -> bool {
        match self {
            Self::Linear(m) => m.decide(score),
            Self::Tree(m) => m.decide(score),
            Self::Mlp(m) => m.decide(score),
        }
    }

    /// Whether the model can take inputs of `width` slots: a linear model needs exactly one
    /// weight per slot, an MLP one input per slot, a tree must read no slot beyond them.
    pub fn accepts(&self, width: usize) -> bool {
        match self {
            Self::Linear(m) => m.weights.len() == width,
            Self::Tree(m) => m.inputs_read() <= width,
            Self::Mlp(m) => m.inputs() == width,
        }
    }
}
