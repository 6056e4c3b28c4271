//! Model kinds and hyperparameters: checked once from the pipeline's `[model]` table and
//! `--set key=value` overrides, before any data is read.

use anyhow::{Context, bail};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use linfa_trees::{DecisionTree, TreeNode as LinfaNode};
use ndarray::{Array1, Array2};
use shared_models::{LinearModel, Predictor, TreeModel, TreeNode};

/// A checked model choice.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// L2-regularised logistic regression: Newton's method (ours) or L-BFGS (linfa-logistic),
    /// both minimising `sum(log loss) + alpha/2 |w|^2`.
    LogisticRegression {
        /// `newton` or `lbfgs`.
        solver: Solver,
        /// L2 penalty.
        alpha: f64,
        /// Optimiser iterations at most.
        max_iterations: u64,
        /// Stop when the gradient norm is below this.
        gradient_tolerance: f64,
        /// Decision threshold on the probability.
        threshold: f64,
    },
    /// CART decision tree (linfa-trees, Gini); leaves score the share of positive training
    /// labels that reach them.
    DecisionTree {
        /// Deepest level of a split.
        max_depth: u64,
        /// Fewest training rows a node needs to be split.
        min_weight_split: f64,
        /// Fewest training rows in a leaf.
        min_weight_leaf: f64,
        /// Smallest impurity decrease a split must bring.
        min_impurity_decrease: f64,
        /// Decision threshold on the probability.
        threshold: f64,
    },
    /// Multilayer perceptron (burn: autodiff over the ndarray backend on CPU, Adam, binary
    /// cross-entropy), ReLU hidden layers and a logistic output.
    Mlp(mlp::Params),
}

/// Fit the MLP, reporting epochs and losses to `progress`.
fn fit_mlp(
    p: &mlp::Params,
    x: Array2<f64>,
    y: Array1<bool>,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Predictor> {
    let cols = x.ncols();
    let x = x.as_standard_layout();
    let values = x.as_slice().context("feature matrix is not contiguous")?;
    let labels = y.to_vec();
    let model = mlp::fit(values, cols, &labels, p, |epoch, loss| {
        progress(format!(
            "epoch {epoch}/{}, training loss {loss:.4}",
            p.epochs
        ))
    })
    .map_err(|m| anyhow::anyhow!("the MLP did not fit: {m}"))?;
    Ok(Predictor::Mlp(model))
}

/// How a logistic regression is fitted.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Newton's method with a Cholesky solve per step (see `newton.rs`).
    Newton,
    /// linfa-logistic's L-BFGS.
    Lbfgs,
}

const MLP_KEYS: &[&str] = &[
    "kind",
    "hidden",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "seed",
    "threshold",
];

const TREE_KEYS: &[&str] = &[
    "kind",
    "max_depth",
    "min_weight_split",
    "min_weight_leaf",
    "min_impurity_decrease",
    "threshold",
];

const LOGISTIC_KEYS: &[&str] = &[
    "kind",
    "solver",
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
        // `--set kind=...` choosing another kind starts from that kind's defaults: the table's
        // hyperparameters belong to its own kind.
        for o in overrides {
            if let Some((k, v)) = o.split_once('=')
                && k.trim() == "kind"
                && t.get("kind").and_then(|x| x.as_str()) != Some(v.trim().trim_matches('"'))
            {
                t.clear();
            }
        }
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
                known_keys(&t, LOGISTIC_KEYS, &kind, file)?;
                let alpha = float(&t, "alpha", 1.0, file)?;
                let threshold = float(&t, "threshold", 0.5, file)?;
                let gradient_tolerance = float(&t, "gradient_tolerance", 1e-4, file)?;
                let max_iterations = positive(&t, "max_iterations", 100, file)?;
                if alpha < 0.0 || !(0.0..=1.0).contains(&threshold) || gradient_tolerance <= 0.0 {
                    bail!(
                        "{file}: [model] needs alpha >= 0, 0 <= threshold <= 1 and gradient_tolerance > 0"
                    );
                }
                let solver = match t.get("solver") {
                    None => Solver::Newton,
                    Some(toml::Value::String(v)) if v == "newton" => Solver::Newton,
                    Some(toml::Value::String(v)) if v == "lbfgs" => Solver::Lbfgs,
                    Some(v) => {
                        bail!("{file}: [model] solver must be \"newton\" or \"lbfgs\", got {v:?}")
                    }
                };
                Ok(Self::LogisticRegression {
                    solver,
                    alpha,
                    max_iterations,
                    gradient_tolerance,
                    threshold,
                })
            }
            "decision_tree" => {
                known_keys(&t, TREE_KEYS, &kind, file)?;
                let max_depth = positive(&t, "max_depth", 8, file)?;
                let min_weight_split = float(&t, "min_weight_split", 100.0, file)?;
                let min_weight_leaf = float(&t, "min_weight_leaf", 50.0, file)?;
                let min_impurity_decrease = float(&t, "min_impurity_decrease", 1e-7, file)?;
                let threshold = float(&t, "threshold", 0.5, file)?;
                if min_weight_split < 1.0
                    || min_weight_leaf < 1.0
                    || min_impurity_decrease <= 0.0
                    || !(0.0..=1.0).contains(&threshold)
                {
                    bail!(
                        "{file}: [model] needs min_weight_split >= 1, min_weight_leaf >= 1, \
                         min_impurity_decrease > 0 and 0 <= threshold <= 1"
                    );
                }
                Ok(Self::DecisionTree {
                    max_depth,
                    min_weight_split,
                    min_weight_leaf,
                    min_impurity_decrease,
                    threshold,
                })
            }
            "mlp" => {
                known_keys(&t, MLP_KEYS, &kind, file)?;
                let hidden = match t.get("hidden") {
                    None => vec![32],
                    Some(toml::Value::Array(a)) => a
                        .iter()
                        .map(|v| match v {
                            toml::Value::Integer(i) if *i > 0 => Ok(*i as usize),
                            _ => Err(()),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|()| {
                            anyhow::anyhow!(
                                "{file}: [model] hidden must be a list of positive integers, \
                                 got {a:?}"
                            )
                        })?,
                    Some(toml::Value::Integer(i)) if *i > 0 => vec![*i as usize],
                    Some(v) => bail!(
                        "{file}: [model] hidden must be a list of layer widths like [32], \
                         got {v:?}"
                    ),
                };
                let spec = mlp::Params {
                    hidden,
                    epochs: positive(&t, "epochs", 8, file)? as usize,
                    batch_size: positive(&t, "batch_size", 256, file)? as usize,
                    learning_rate: float(&t, "learning_rate", 1e-3, file)?,
                    weight_decay: float(&t, "weight_decay", 0.0, file)?,
                    seed: match t.get("seed") {
                        None => 42,
                        Some(toml::Value::Integer(i)) if *i >= 0 => *i as u64,
                        Some(v) => {
                            bail!("{file}: [model] seed must be a non-negative integer, got {v:?}")
                        }
                    },
                    threshold: float(&t, "threshold", 0.5, file)?,
                };
                mlp::check(&spec).map_err(|m| anyhow::anyhow!("{file}: [model] {m}"))?;
                Ok(Self::Mlp(spec))
            }
            other => bail!(
                "{file}: [model] unknown model kind `{other}` (known: logistic_regression, \
                 decision_tree, mlp)"
            ),
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LogisticRegression { .. } => "logistic_regression",
            Self::DecisionTree { .. } => "decision_tree",
            Self::Mlp(_) => "mlp",
        }
    }

    /// The decision threshold.
    pub fn threshold(&self) -> f64 {
        match self {
            Self::LogisticRegression { threshold, .. }
            | Self::DecisionTree { threshold, .. }
            | Self::Mlp(mlp::Params { threshold, .. }) => *threshold,
        }
    }

    /// Fit on the training split of `data`. Newton's method reads the matrix block by block
    /// and the MLP row by row as its mini-batches ask, each encoded then, so neither holds it
    /// whole; linfa's solvers get it whole.
    pub fn fit_training(
        &self,
        data: &crate::training::Training,
        progress: &mut dyn FnMut(String),
    ) -> anyhow::Result<Predictor> {
        match self {
            Self::LogisticRegression {
                solver: Solver::Newton,
                ..
            } => self.newton(&data.blocks(true), &data.labels(true), progress),
            Self::Mlp(p) => {
                let rows = data.rows(true);
                let labels = data.labels(true);
                let on_epoch = |epoch, loss| {
                    progress(format!(
                        "epoch {epoch}/{}, training loss {loss:.4}",
                        p.epochs
                    ))
                };
                let model = mlp::fit_rows(
                    &|k, out| rows.row(k, out),
                    rows.width(),
                    &labels,
                    p,
                    on_epoch,
                )
                .map_err(|m| anyhow::anyhow!("the MLP did not fit: {m}"))?;
                Ok(Predictor::Mlp(model))
            }
            _ => {
                let (x, y) = data.matrix(true);
                self.fit(x, y, progress)
            }
        }
    }

    /// Logistic regression by Newton's method (`newton.rs`) on `x`'s blocks.
    fn newton(
        &self,
        x: &dyn crate::newton::Blocks,
        labels: &[bool],
        progress: &mut dyn FnMut(String),
    ) -> anyhow::Result<Predictor> {
        let Self::LogisticRegression {
            alpha,
            max_iterations,
            gradient_tolerance,
            threshold,
            ..
        } = self
        else {
            bail!("{} is not fitted by Newton's method", self.kind());
        };
        let fitted = crate::newton::fit(x, labels, *alpha, *max_iterations, *gradient_tolerance)
            .map_err(|m| anyhow::anyhow!("logistic regression did not fit: {m}"))?;
        progress(format!("{} Newton steps", fitted.iterations));
        Ok(Predictor::Linear(LinearModel {
            weights: fitted.weights,
            intercept: fitted.intercept,
            threshold: *threshold,
        }))
    }

    /// Fit on a feature matrix and labels. Deterministic: the same inputs give the same weights.
    /// `progress` hears how training goes (the MLP's epochs and losses).
    pub fn fit(
        &self,
        x: Array2<f64>,
        y: Array1<bool>,
        progress: &mut dyn FnMut(String),
    ) -> anyhow::Result<Predictor> {
        match self {
            Self::LogisticRegression {
                solver: Solver::Newton,
                ..
            } => self.newton(&x.view(), &y.to_vec(), progress),
            Self::LogisticRegression {
                solver: Solver::Lbfgs,
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
                Ok(Predictor::Linear(LinearModel {
                    weights: fitted.params().iter().map(|w| sign * w).collect(),
                    intercept: sign * fitted.intercept(),
                    threshold: *threshold,
                }))
            }
            Self::DecisionTree {
                max_depth,
                min_weight_split,
                min_weight_leaf,
                min_impurity_decrease,
                threshold,
            } => {
                let data = Dataset::new(x, y);
                let fitted = DecisionTree::params()
                    .max_depth(Some(*max_depth as usize))
                    .min_weight_split(*min_weight_split as f32)
                    .min_weight_leaf(*min_weight_leaf as f32)
                    .min_impurity_decrease(*min_impurity_decrease)
                    .fit(&data)
                    .context("decision tree did not fit")?;
                let mut tree = TreeModel {
                    nodes: Vec::new(),
                    threshold: *threshold,
                };
                flatten(fitted.root_node(), &mut tree.nodes);
                leaf_shares(&mut tree, data.records(), data.targets());
                Ok(Predictor::Tree(tree))
            }
            Self::Mlp(p) => fit_mlp(p, x, y, progress),
        }
    }
}

/// Copy linfa's tree into flat nodes, root first (leaf values filled in by [`leaf_shares`]).
fn flatten(node: &LinfaNode<f64, bool>, out: &mut Vec<TreeNode>) -> usize {
    let at = out.len();
    let (feature, split, _) = node.split();
    out.push(TreeNode {
        feature,
        split,
        left: 0,
        right: 0,
        leaf: node.is_leaf().then_some(0.0),
    });
    if !node.is_leaf() {
        let children = node.children();
        let mut idx = [at, at];
        for (slot, child) in idx.iter_mut().zip(children) {
            if let Some(c) = child {
                *slot = flatten(c, out);
            }
        }
        out[at].left = idx[0];
        out[at].right = idx[1];
    }
    at
}

/// Each leaf scores the share of positive training labels that reach it.
fn leaf_shares(tree: &mut TreeModel, x: &Array2<f64>, y: &Array1<bool>) {
    let mut counts = vec![(0u64, 0u64); tree.nodes.len()];
    for (row, &label) in x.rows().into_iter().zip(y) {
        if let Some(leaf) = tree.leaf(|f| row[f]) {
            counts[leaf].0 += u64::from(label);
            counts[leaf].1 += 1;
        }
    }
    for (node, (pos, n)) in tree.nodes.iter_mut().zip(counts) {
        if node.leaf.is_some() {
            node.leaf = Some(if n == 0 { 0.5 } else { pos as f64 / n as f64 });
        }
    }
}

/// Refuse a key the kind does not take, listing those it does.
fn known_keys(t: &toml::Table, known: &[&str], kind: &str, file: &str) -> anyhow::Result<()> {
    match t.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => bail!(
            "{file}: [model] unknown hyperparameter `{k}` for {kind} (known: {})",
            known[1..].join(", ")
        ),
        None => Ok(()),
    }
}

fn positive(t: &toml::Table, key: &str, default: u64, file: &str) -> anyhow::Result<u64> {
    match t.get(key) {
        None => Ok(default),
        Some(toml::Value::Integer(i)) if *i > 0 => Ok(*i as u64),
        Some(v) => bail!("{file}: [model] {key} must be a positive integer, got {v:?}"),
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
                solver: Solver::Newton,
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
        assert!(err(&t, &["solver=sgd"]).contains("solver must be \"newton\" or \"lbfgs\""));
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
        let mut fitted = Vec::new();
        for solver in ["newton", "lbfgs"] {
            let spec = ModelSpec::from_table(
                Some(&table("kind = \"logistic_regression\"\nalpha = 0.01")),
                &[format!("solver=\"{solver}\"")],
                "p",
            )
            .unwrap();
            let a = spec.fit(x.clone(), y.clone(), &mut |_| {}).unwrap();
            let b = spec.fit(x.clone(), y.clone(), &mut |_| {}).unwrap();
            assert_eq!(a, b, "{solver}: same data, same weights, bit for bit");
            let Predictor::Linear(w) = &a else {
                panic!("{a:?}")
            };
            assert!(
                w.weights[0] > 0.0 && w.weights[0].abs() > 10.0 * w.weights[1].abs(),
                "{solver}: {a:?}"
            );
            let right = (0..n)
                .filter(|&i| a.decide(a.predict_proba(&[x[(i, 0)], x[(i, 1)]])) == y[i])
                .count();
            assert!(right >= n * 95 / 100, "{solver}: {right}/{n}");
            fitted.push(w.clone());
        }
        // Both minimise the same objective: the same model up to L-BFGS's tolerance.
        let (newton, lbfgs) = (&fitted[0], &fitted[1]);
        let scale = newton.weights[0].abs();
        for (a, b) in newton.weights.iter().zip(&lbfgs.weights) {
            assert!((a - b).abs() < 0.05 * scale, "{newton:?} vs {lbfgs:?}");
        }
    }

    #[test]
    fn a_tree_learns_the_rule_reproducibly_with_leaf_shares() {
        // y = x1 > 0.5 except a noisy band; the tree must split on x1 and its leaves must hold
        // the share of positives that reach them.
        let n = 400;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            if j == 0 {
                ((i * 7919) % 97) as f64 / 97.0
            } else {
                i as f64 / n as f64
            }
        });
        let y = Array1::from_shape_fn(n, |i| i >= n / 2 || i % 10 == 0);
        let spec = ModelSpec::from_table(
            Some(&table("kind = \"logistic_regression\"\nalpha = 0.01")),
            &[
                "kind=decision_tree".into(),
                "max_depth=2".into(),
                "min_weight_leaf=5".into(),
            ],
            "p",
        )
        .unwrap();
        assert_eq!(
            spec.kind(),
            "decision_tree",
            "--set kind drops the other kind's keys"
        );
        let a = spec.fit(x.clone(), y.clone(), &mut |_| {}).unwrap();
        assert_eq!(
            a,
            spec.fit(x.clone(), y.clone(), &mut |_| {}).unwrap(),
            "reproducible"
        );
        let Predictor::Tree(t) = &a else {
            panic!("{a:?}")
        };
        let root = &t.nodes[0];
        assert!(
            root.feature == 1 && root.split > 0.4975 && root.split <= 0.5,
            "{t:?}"
        );
        // Rows below the split: 1 in 10 is positive.
        let low = a.predict_proba(&[0.3, 0.1]);
        assert!((low - 0.1).abs() < 0.05, "{low}");
        assert_eq!(a.predict_proba(&[0.3, 0.9]), 1.0);
        let right = (0..n)
            .filter(|&i| a.decide(a.predict_proba(&[x[(i, 0)], x[(i, 1)]])) == y[i])
            .count();
        assert!(right >= n * 89 / 100, "{right}/{n}");
    }
}
