//! Model kinds and hyperparameters: checked once from the pipeline's `[model]` table and
//! `--set key=value` overrides, before any data is read.

use anyhow::{Context, bail};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use shared_models::LinearModel;

/// A checked model choice.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// L2-regularised logistic regression (linfa-logistic, L-BFGS).
    LogisticRegression {
        /// L2 penalty.
        alpha: f64,
        /// Optimiser iterations at most.
        max_iterations: u64,
        /// Stop when the gradient norm is below this.
        gradient_tolerance: f64,
        /// Decision threshold on the probability.
        threshold: f64,
    },
}

const LOGISTIC_KEYS: &[&str] = &[
    "kind",
    "alpha",
    "max_iterations",
    "gradient_tolerance",
    "threshold",
];

impl ModelSpec {
    /// Check the `[model]` table with overrides applied. `file` names the pipeline in messages.
    pub fn from_table(
        table: Option<&toml::Table>,
        overrides: &[String],
        file: &str,
    ) -> anyhow::Result<Self> {
        let mut t = table.cloned().unwrap_or_default();
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: write key=value"))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut tb| tb.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.to_string()));
            t.insert(k.trim().to_string(), value);
        }
        let kind = match t.get("kind") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(_) => bail!("{file}: [model] kind must be a string"),
            None => bail!("{file}: [model] needs `kind` (logistic_regression)"),
        };
        match kind.as_str() {
            "logistic_regression" => {
                if let Some(k) = t.keys().find(|k| !LOGISTIC_KEYS.contains(&k.as_str())) {
                    bail!(
                        "{file}: [model] unknown hyperparameter `{k}` for logistic_regression (known: {})",
                        LOGISTIC_KEYS[1..].join(", ")
                    );
                }
                let alpha = float(&t, "alpha", 1.0, file)?;
                let threshold = float(&t, "threshold", 0.5, file)?;
                let gradient_tolerance = float(&t, "gradient_tolerance", 1e-4, file)?;
                let max_iterations = match t.get("max_iterations") {
                    None => 100,
                    Some(toml::Value::Integer(i)) if *i > 0 => *i as u64,
                    Some(v) => bail!(
                        "{file}: [model] max_iterations must be a positive integer, got {v:?}"
                    ),
                };
                if alpha < 0.0 || !(0.0..=1.0).contains(&threshold) || gradient_tolerance <= 0.0 {
                    bail!(
                        "{file}: [model] needs alpha >= 0, 0 <= threshold <= 1 and gradient_tolerance > 0"
                    );
                }
                Ok(Self::LogisticRegression {
                    alpha,
                    max_iterations,
                    gradient_tolerance,
                    threshold,
                })
            }
            other => {
                bail!("{file}: [model] unknown model kind `{other}` (known: logistic_regression)")
            }
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LogisticRegression { .. } => "logistic_regression",
        }
    }

    /// The decision threshold.
    pub fn threshold(&self) -> f64 {
        match self {
            Self::LogisticRegression { threshold, .. } => *threshold,
        }
    }

    /// Fit on a feature matrix and labels. Deterministic: the same inputs give the same weights.
    pub fn fit(&self, x: Array2<f64>, y: Array1<bool>) -> anyhow::Result<LinearModel> {
        match self {
            Self::LogisticRegression {
                alpha,
                max_iterations,
                gradient_tolerance,
                threshold,
            } => {
                let data = Dataset::new(x, y);
                let fitted = LogisticRegression::default()
                    .alpha(*alpha)
                    .max_iterations(*max_iterations)
                    .gradient_tolerance(*gradient_tolerance)
                    .fit(&data)
                    .context("logistic regression did not fit")?;
                // linfa models the probability of its "positive" class, which is the more
                // frequent label; ours is always `true`. sigmoid(-z) = 1 - sigmoid(z).
                let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
                Ok(LinearModel {
                    weights: fitted.params().iter().map(|w| sign * w).collect(),
                    intercept: sign * fitted.intercept(),
                    threshold: *threshold,
                })
            }
        }
    }
}

fn float(t: &toml::Table, key: &str, default: f64, file: &str) -> anyhow::Result<f64> {
    match t.get(key) {
        None => Ok(default),
        Some(toml::Value::Float(x)) if x.is_finite() => Ok(*x),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(v) => bail!("{file}: [model] {key} must be a number, got {v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn overrides_apply_and_mistakes_are_refused() {
        let t = table("kind = \"logistic_regression\"\nalpha = 1.0");
        let s = ModelSpec::from_table(
            Some(&t),
            &["alpha=0.25".into(), "threshold=0.4".into()],
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            s,
            ModelSpec::LogisticRegression {
                alpha: 0.25,
                max_iterations: 100,
                gradient_tolerance: 1e-4,
                threshold: 0.4
            }
        );
        let err = |t: &toml::Table, o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            ModelSpec::from_table(Some(t), &o, "p.toml")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&t, &["alhpa=1"]).contains("unknown hyperparameter `alhpa`"));
        assert!(err(&t, &["alpha"]).contains("write key=value"));
        assert!(err(&t, &["alpha=lots"]).contains("alpha must be a number"));
        assert!(err(&t, &["kind=forest"]).contains("unknown model kind `forest`"));
        assert!(err(&t, &["threshold=2"]).contains("threshold <= 1"));
        assert!(
            ModelSpec::from_table(None, &[], "p.toml")
                .unwrap_err()
                .to_string()
                .contains("needs `kind`")
        );
    }

    #[test]
    fn fitting_is_reproducible_and_learns_a_separable_rule() {
        // y = x0 > 0, with a noise column; fewer positives than negatives, so linfa's own
        // "positive" class is `false` and the orientation fix is exercised.
        let n = 200;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            if j == 0 {
                i as f64 / n as f64 - 0.6
            } else {
                ((i * 7919) % 13) as f64 / 13.0
            }
        });
        let y = Array1::from_shape_fn(n, |i| i >= n * 3 / 5);
        let spec = ModelSpec::from_table(
            Some(&table("kind = \"logistic_regression\"\nalpha = 0.01")),
            &[],
            "p",
        )
        .unwrap();
        let a = spec.fit(x.clone(), y.clone()).unwrap();
        let b = spec.fit(x.clone(), y.clone()).unwrap();
        assert_eq!(a, b, "same data, same weights, bit for bit");
        assert!(
            a.weights[0] > 0.0 && a.weights[0].abs() > 10.0 * a.weights[1].abs(),
            "{a:?}"
        );
        let right = (0..n)
            .filter(|&i| a.decide(a.predict_proba(&[x[(i, 0)], x[(i, 1)]])) == y[i])
            .count();
        assert!(right >= n * 95 / 100, "{right}/{n}");
    }
}
