//! Every kind of model the scorer can serve, behind one interface, and the checks a model
//! passes before it serves.

use serde::{Deserialize, Serialize};

use crate::linear::LinearModel;
use crate::mlp::MlpModel;
use crate::tree::TreeModel;

/// The largest magnitude a weight, intercept or bias of a served model may have.
///
/// Inputs are standardised (numerics) or one-hot (categoricals), so a weight is the change in
/// the logit per standard deviation of an input: the logistic output is already saturated to
/// 1e-16 at a logit of 37, and the models fitted on all of nycflights hold weights below 4
/// (`ci/model-weights` prints them). 1e6 leaves five orders of magnitude for other data and
/// weak regularisation, and still refuses what no fit produces: a corrupt or hand-made bundle
/// whose weights (1e300, say) would overflow the logit to infinity and NaN.
pub const MAX_ABS_WEIGHT: f64 = 1e6;

/// `value` of the parameter `name` is finite and within [`MAX_ABS_WEIGHT`].
pub(crate) fn bounded(name: impl FnOnce() -> String, value: f64) -> Result<(), String> {
    if value.is_finite() && value.abs() <= MAX_ABS_WEIGHT {
        Ok(())
    } else {
        Err(format!(
            "{} is {value:?}: parameters must be finite and at most {MAX_ABS_WEIGHT:e} in \
             magnitude",
            name()
        ))
    }
}

/// A decision threshold is a probability.
pub(crate) fn threshold(value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "threshold is {value:?}: a decision threshold is a probability, in [0, 1]"
        ))
    }
}

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
    /// The model kinds a manifest may name.
    pub const KINDS: &[&str] = &["logistic_regression", "decision_tree", "mlp"];

    /// Parse `model.json` of a bundle whose manifest says `kind`, and [`Self::validate`] it.
    pub fn from_json(kind: &str, bytes: &[u8]) -> Result<Self, String> {
        let model = match kind {
            "logistic_regression" => serde_json::from_slice(bytes).map(Self::Linear),
            "decision_tree" => serde_json::from_slice(bytes).map(Self::Tree),
            "mlp" => serde_json::from_slice(bytes).map(Self::Mlp),
            other => return Err(format!("unknown model kind `{other}`")),
        }
        .map_err(|e| e.to_string())?;
        model.validate()?;
        Ok(model)
    }

    /// Check what every served model must satisfy, so that scoring can neither panic nor
    /// overflow: shapes that chain (an MLP's layers, a tree's child links, which point forward
    /// so a walk ends), finite parameters within [`MAX_ABS_WEIGHT`], tree leaves in [0, 1] and
    /// a threshold in [0, 1]. The error names the parameter and its value. The trainer runs the
    /// same check after fitting, so it never publishes what the scorer would refuse.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Linear(m) => m.validate(),
            Self::Tree(m) => m.validate(),
            Self::Mlp(m) => m.validate(),
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
        self.check_inputs(width).is_ok()
    }

    /// [`Self::accepts`], with what the model itself takes when it does not.
    pub fn check_inputs(&self, width: usize) -> Result<(), String> {
        match self {
            Self::Linear(m) if m.weights.len() != width => Err(format!(
                "the model has {} weights, one per input",
                m.weights.len()
            )),
            Self::Tree(m) => match m.last_slot_read() {
                Some(slot) if slot >= width => Err(format!("the tree reads input slot {slot}")),
                _ => Ok(()),
            },
            Self::Mlp(m) if m.inputs() != width => {
                Err(format!("the MLP's first layer takes {} inputs", m.inputs()))
            }
            _ => Ok(()),
        }
    }
}
