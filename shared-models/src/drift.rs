//! Reference distributions for drift: what a model's inputs and score looked like on its
//! training split, stored in the bundle (`reference.json`), and how far a window of live events
//! has moved from them.
//!
//! Each model input (a slot of the encoded vector) and the score gets a [`Distribution`]: a
//! column with at most [`BINS`] distinct values (a one-hot slot, a flag, a small integer) keeps
//! its values and their frequencies; any other is cut at its training deciles into [`BINS`]
//! quantile bins, each holding about a tenth of the training events. Live values are counted in
//! the same bins (a value the reference never saw, in a column of values, in a bin of its own),
//! and compared by:
//!
//! - the population stability index, PSI = sum over bins of (p_i - q_i) ln(p_i / q_i), with p
//!   the live shares and q the reference's, each floored at [`FLOOR`] so that an empty bin is
//!   finite (the convention of Evidently and NannyML, whose default drift threshold for PSI,
//!   [`PSI_THRESHOLD`], this crate takes);
//! - the Jensen-Shannon distance (base 2, in [0, 1]): the square root of the mean of the two
//!   Kullback-Leibler divergences to the mixture; Evidently's default threshold,
//!   [`JS_THRESHOLD`].

use serde::{Deserialize, Serialize};

/// Quantile bins of a numeric column (and the most distinct values a column of values keeps).
pub const BINS: usize = 10;
/// Shares below this count as this, in the PSI (an empty bin would make it infinite).
pub const FLOOR: f64 = 1e-4;
/// PSI above this: drifted (Evidently's and NannyML's default).
pub const PSI_THRESHOLD: f64 = 0.1;
/// Jensen-Shannon distance above this: drifted (Evidently's default).
pub const JS_THRESHOLD: f64 = 0.1;

/// The reference of one column.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Distribution {
    /// The input's name (as in the input signature), or `score`.
    pub name: String,
    /// How values map to bins.
    pub bins: Bins,
    /// The training split's share of each bin, in bin order (summing to 1). A column of values
    /// has one more bin than values: the values the reference never saw (share 0).
    pub shares: Vec<f64>,
}

/// How values map to bins.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Bins {
    /// Bin i holds the values at or above `cuts[i - 1]` and below `cuts[i]` (the first from
    /// minus infinity, the last to plus infinity).
    Quantiles {
        /// Ascending cut points, distinct.
        cuts: Vec<f64>,
    },
    /// Bin i holds `values[i]`; the last bin any other value.
    Values {
        /// The distinct values seen, ascending.
        values: Vec<f64>,
    },
}

impl Distribution {
    /// The distribution of `values` (non-finite ones left out) under `name`.
    pub fn fit(name: &str, values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut distinct = sorted.clone();
        distinct.dedup();
        let bins = if distinct.len() <= BINS {
            Bins::Values { values: distinct }
        } else {
            let mut cuts: Vec<f64> = (1..BINS).map(|k| sorted[k * sorted.len() / BINS]).collect();
            cuts.dedup();
            Bins::Quantiles { cuts }
        };
        let mut d = Self {
            name: name.to_string(),
            shares: Vec::new(),
            bins,
        };
        let mut counts = vec![0u64; d.len()];
        for &v in &sorted {
            counts[d.bin(v)] += 1;
        }
        let n = sorted.len().max(1) as f64;
        d.shares = counts.iter().map(|&c| c as f64 / n).collect();
        d
    }

    /// Number of bins.
    pub fn len(&self) -> usize {
        match &self.bins {
            Bins::Quantiles { cuts } => cuts.len() + 1,
            Bins::Values { values } => values.len() + 1,
        }
    }

    /// Whether it has no bin (never: a column of values always has the bin of unseen values).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bin of `v` (a non-finite value goes to the last bin).
    pub fn bin(&self, v: f64) -> usize {
        match &self.bins {
            Bins::Quantiles { cuts } => {
                if v.is_nan() {
                    return cuts.len();
                }
                cuts.partition_point(|&c| c <= v)
            }
            Bins::Values { values } => values
                .binary_search_by(|x| x.total_cmp(&v))
                .unwrap_or(values.len()),
        }
    }

    /// The PSI of live `counts` (one per bin) against this reference; `None` without events.
    pub fn psi(&self, counts: &[u64]) -> Option<f64> {
        let live = shares(counts)?;
        Some(
            live.iter()
                .zip(&self.shares)
                .map(|(&p, &q)| {
                    let (p, q) = (p.max(FLOOR), q.max(FLOOR));
                    (p - q) * (p / q).ln()
                })
                .sum(),
        )
    }

    /// The Jensen-Shannon distance (base 2) of live `counts` from this reference; `None`
    /// without events.
    pub fn jensen_shannon(&self, counts: &[u64]) -> Option<f64> {
        let live = shares(counts)?;
        let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
        let divergence: f64 = live
            .iter()
            .zip(&self.shares)
            .map(|(&p, &q)| {
                let m = (p + q) / 2.0;
                (kl(p, m) + kl(q, m)) / 2.0
            })
            .sum();
        Some(divergence.max(0.0).sqrt())
    }
}

/// Counts as shares; `None` when there are none.
fn shares(counts: &[u64]) -> Option<Vec<f64>> {
    let n: u64 = counts.iter().sum();
    (n > 0).then(|| counts.iter().map(|&c| c as f64 / n as f64).collect())
}

/// A model's references: every input of its signature, in order, and the score.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    /// Training events they were computed from.
    pub events: u64,
    /// One per model input, in input order.
    pub inputs: Vec<Distribution>,
    /// The score's.
    pub score: Distribution,
}

impl Reference {
    /// The references of `rows` (each an encoded input vector, named by `names`) and their
    /// `scores`.
    pub fn fit(names: &[String], rows: &[&[f64]], scores: &[f64]) -> Self {
        Self::from_columns(
            names,
            rows.len() as u64,
            |j| rows.iter().map(|r| r[j]).collect(),
            scores,
        )
    }

    /// [`Reference::fit`] from `events` rows given one input column at a time (`column(j)`),
    /// so that the rows need not be held at once.
    pub fn from_columns(
        names: &[String],
        events: u64,
        mut column: impl FnMut(usize) -> Vec<f64>,
        scores: &[f64],
    ) -> Self {
        let inputs = names
            .iter()
            .enumerate()
            .map(|(j, name)| Distribution::fit(name, &column(j)))
            .collect();
        Self {
            events,
            inputs,
            score: Distribution::fit("score", scores),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_bins_hold_a_tenth_each_and_the_same_data_does_not_drift() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let d = Distribution::fit("x", &values);
        assert_eq!(d.len(), BINS);
        assert!(d.shares.iter().all(|&s| s == 0.1), "{:?}", d.shares);
        let mut counts = vec![0u64; d.len()];
        for &v in &values {
            counts[d.bin(v)] += 1;
        }
        assert_eq!(d.psi(&counts), Some(0.0));
        assert_eq!(d.jensen_shannon(&counts), Some(0.0));
        assert_eq!(d.psi(&[0; BINS]), None);
    }

    #[test]
    fn psi_and_js_by_hand() {
        // Two values, 50/50 in the reference; live 80/20.
        let d = Distribution::fit("flag", &[0.0, 1.0, 0.0, 1.0]);
        assert_eq!(
            d.bins,
            Bins::Values {
                values: vec![0.0, 1.0]
            }
        );
        assert_eq!(d.shares, vec![0.5, 0.5, 0.0]);
        let live = [8, 2, 0];
        let psi = (0.8 - 0.5) * (0.8f64 / 0.5).ln() + (0.2 - 0.5) * (0.2f64 / 0.5).ln();
        assert_eq!(d.psi(&live), Some(psi + 0.0));
        let (m1, m2) = (0.65f64, 0.35f64);
        let js = ((0.8 * (0.8 / m1).log2() + 0.5 * (0.5 / m1).log2()) / 2.0
            + (0.2 * (0.2 / m2).log2() + 0.5 * (0.5 / m2).log2()) / 2.0)
            .sqrt();
        assert!((d.jensen_shannon(&live).unwrap() - js).abs() < 1e-15);
        // A value never seen in training goes to the last bin, and drifts.
        assert_eq!(d.bin(7.0), 2);
        assert!(d.psi(&[1, 1, 8]).unwrap() > PSI_THRESHOLD);
    }

    #[test]
    fn a_shift_of_the_whole_column_drifts_past_both_thresholds() {
        let values: Vec<f64> = (0..1000).map(|i| f64::from(i) / 10.0).collect();
        let d = Distribution::fit("delay", &values);
        let mut counts = vec![0u64; d.len()];
        for &v in &values {
            counts[d.bin(v + 60.0)] += 1;
        }
        assert!(d.psi(&counts).unwrap() > PSI_THRESHOLD);
        assert!(d.jensen_shannon(&counts).unwrap() > JS_THRESHOLD);
    }
}
