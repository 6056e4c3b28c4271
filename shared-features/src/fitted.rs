//! Fitted transforms (standard scaler, vocabularies) and the feature fingerprint.
//!
//! A [`crate::Pipeline`] is the unfitted spec; [`FittedState::fit`] learns scaling and
//! vocabularies from the training split. The trainer saves the state with the model; the scorer
//! only loads it. Both encode rows with the same [`FittedState::transform`].

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::Pipeline;
use crate::value::Value;

/// Mean and standard deviation of a numeric column over the training rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    /// The column.
    pub column: String,
    /// Mean of the non-null training values (0 when there are none).
    pub mean: f64,
    /// Population standard deviation; 1 when it is 0 or undefined, so constants encode as 0.
    pub std: f64,
}

/// The categories of a column that get their own one-hot slot, sorted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Vocab {
    /// The column.
    pub column: String,
    /// Categories seen at least `min_count` times in training, sorted by bytes.
    pub levels: Vec<String>,
}

impl Vocab {
    /// The one-hot slot of a category's text: its level's, or the trailing "other" slot for an
    /// unseen or absent one.
    pub fn slot(&self, text: Option<&str>) -> usize {
        text.and_then(|t| self.levels.binary_search_by(|l| l.as_str().cmp(t)).ok())
            .unwrap_or(self.levels.len())
    }
}

/// The text a categorical value is encoded by: text as it is, an integer as its digits
/// (written into `buf`), nothing for the rest.
pub fn category_text<'a>(v: &'a Value, buf: &'a mut String) -> Option<&'a str> {
    match v {
        Value::Str(s) => Some(s),
        Value::Int(i) => {
            buf.clear();
            let _ = write!(buf, "{i}");
            Some(buf.as_str())
        }
        _ => None,
    }
}

/// Everything learned from training data that feature encoding needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FittedState {
    /// One per numeric feature, in order.
    pub scalers: Vec<Scaler>,
    /// One per categorical feature, in order.
    pub vocabs: Vec<Vocab>,
    /// `(table, sha256)` of the lookup tables the features were computed with.
    pub tables: Vec<(String, String)>,
    /// Training rows the state was fitted on.
    pub rows: u64,
}

impl FittedState {
    /// Fit on full layout rows (as the engines produce them) of the training split.
    pub fn fit<'a>(
        p: &Pipeline,
        rows: impl IntoIterator<Item = &'a [Value]>,
        tables: Vec<(String, String)>,
    ) -> Self {
        let mut acc = FitAccumulator::new(p);
        for row in rows {
            acc.push(p, row);
        }
        acc.finish(p, tables)
    }

    /// Length of the encoded vector.
    pub fn width(&self) -> usize {
        self.scalers.len()
            + self
                .vocabs
                .iter()
                .map(|v| v.levels.len() + 1)
                .sum::<usize>()
    }

    /// Names of the encoded vector's slots: `column` for numerics, `column=level` and
    /// `column=<other>` for categoricals.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.scalers.iter().map(|s| s.column.clone()).collect();
        for v in &self.vocabs {
            out.extend(v.levels.iter().map(|l| format!("{}={l}", v.column)));
            out.push(format!("{}=<other>", v.column));
        }
        out
    }

    /// Encode a full layout row into `out` (cleared first): scaled numerics (null encodes as 0,
    /// the training mean), then one-hot categoricals (null and unseen categories go to the
    /// trailing "other" slot).
    pub fn transform(&self, p: &Pipeline, row: &[Value], out: &mut Vec<f64>) {
        out.clear();
        for (s, &c) in self.scalers.iter().zip(&p.features.numeric) {
            out.push(match row[c].as_f64() {
                Some(x) => (x - s.mean) / s.std,
                None => 0.0,
            });
        }
        let mut buf = String::new();
        for (v, &c) in self.vocabs.iter().zip(&p.features.categorical) {
            let start = out.len();
            out.resize(start + v.levels.len() + 1, 0.0);
            out[start + v.slot(category_text(&row[c], &mut buf))] = 1.0;
        }
    }
}

/// [`FittedState::fit`] one training row at a time, for rows that are not kept (a streamed
/// history): the same sums, in the same order, so the state is the same bit for bit.
#[derive(Debug, Clone)]
pub struct FitAccumulator {
    sums: Vec<(u64, f64)>,
    counts: Vec<std::collections::BTreeMap<String, u64>>,
    kept: Vec<Vec<f64>>,
    rows: u64,
}

impl FitAccumulator {
    /// Nothing seen yet.
    pub fn new(p: &Pipeline) -> Self {
        let f = &p.features;
        Self {
            sums: vec![(0, 0.0); f.numeric.len()],
            counts: vec![Default::default(); f.categorical.len()],
            kept: vec![Vec::new(); f.numeric.len()],
            rows: 0,
        }
    }

    /// Take in the next training row (full layout).
    pub fn push(&mut self, p: &Pipeline, row: &[Value]) {
        let f = &p.features;
        self.rows += 1;
        for (i, &c) in f.numeric.iter().enumerate() {
            if let Some(x) = row[c].as_f64() {
                self.sums[i].0 += 1;
                self.sums[i].1 += x;
                self.kept[i].push(x);
            }
        }
        for (i, &c) in f.categorical.iter().enumerate() {
            if let Some(cat) = category(&row[c]) {
                match self.counts[i].get_mut(&cat) {
                    Some(n) => *n += 1,
                    None => {
                        self.counts[i].insert(cat, 1);
                    }
                }
            }
        }
    }

    /// The fitted state, with the lookup tables' digests.
    pub fn finish(self, p: &Pipeline, tables: Vec<(String, String)>) -> FittedState {
        let f = &p.features;
        let scalers = f
            .numeric
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let (n, sum) = self.sums[i];
                let mean = if n > 0 { sum / n as f64 } else { 0.0 };
                let var = if n > 0 {
                    self.kept[i]
                        .iter()
                        .map(|x| (x - mean) * (x - mean))
                        .sum::<f64>()
                        / n as f64
                } else {
                    0.0
                };
                let std = var.sqrt();
                let std = if std.is_finite() && std > 0.0 {
                    std
                } else {
                    1.0
                };
                Scaler {
                    column: p.layout[c].name.clone(),
                    mean,
                    std,
                }
            })
            .collect();
        let vocabs = f
            .categorical
            .iter()
            .zip(self.counts)
            .map(|(&c, counts)| Vocab {
                column: p.layout[c].name.clone(),
                levels: counts
                    .into_iter()
                    .filter(|(_, n)| *n >= f.min_count)
                    .map(|(k, _)| k)
                    .collect(),
            })
            .collect();
        FittedState {
            scalers,
            vocabs,
            tables,
            rows: self.rows,
        }
    }
}

fn category(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The fingerprint of what the features are: the checked spec, the fitted state and the lookup
/// tables' digests (inside the state). A model trained on one fingerprint must not be scored
/// with features of another.
pub fn fingerprint(p: &Pipeline, fitted: &FittedState) -> String {
    let mut h = Sha256::new();
    h.update(b"shared-features/v2\n");
    // Serializing plain structs of strings and numbers cannot fail; an empty hash would show.
    h.update(serde_json::to_vec(p).unwrap_or_default());
    h.update(b"\n");
    h.update(serde_json::to_vec(fitted).unwrap_or_default());
    let d = h.finalize();
    d.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
