//! The partial aggregate of a span of window entries, and how two adjacent spans combine.
//!
//! One [`Part`] per aggregated column holds everything every aggregate function needs, so that
//! one combine serves them all. Combining is associative (up to floating-point rounding) and is
//! always applied older span first, so the result depends only on the entries and on where
//! the sliding-window aggregation cut them into spans, which both engines do alike.

use std::sync::Arc;

use crate::spec::AggFn;
use crate::value::Value;

/// What one column's values in a span of entries add up to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Part {
    /// Non-null values (what `count` with a field counts).
    pub nn: u64,
    /// Numeric values among them.
    pub n: u64,
    /// Their sum, folded from +0.0 so that an empty or all-`-0.0` span sums to +0.0.
    pub sum: f64,
    /// Minimum (+inf when empty).
    pub min: f64,
    /// Maximum (-inf when empty).
    pub max: f64,
    /// Mean and sum of squared deviations from it (Welford; spans merged with Chan et al.'s
    /// formula), which stays accurate where a sum of squares would cancel catastrophically.
    pub mean: f64,
    /// See `mean`.
    pub m2: f64,
    /// The newest numeric value.
    pub last: Option<f64>,
}

impl Part {
    /// The span with no values.
    pub const EMPTY: Part = Part {
        nn: 0,
        n: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean: 0.0,
        m2: 0.0,
        last: None,
    };

    /// The span of one value.
    pub fn of(v: &Value) -> Part {
        match v.as_f64() {
            Some(x) => Part {
                nn: 1,
                n: 1,
                sum: 0.0 + x,
                min: x,
                max: x,
                mean: x,
                m2: 0.0,
                last: Some(x),
            },
            None if v.is_null() => Part::EMPTY,
            None => Part {
                nn: 1,
                ..Part::EMPTY
            },
        }
    }

    /// The span of `self` followed by `newer`.
    #[cfg(test)]
    pub fn then(&self, newer: &Part) -> Part {
        self.then_as(newer, true)
    }

    /// [`Part::then`], with `mean` and `m2` (which only `std` reads, and which cost two
    /// divisions) left at zero unless `welford`. A window folds all its parts one way, so its
    /// results are the same either way for every aggregate but `std`, which needs `welford`.
    #[inline]
    pub fn then_as(&self, newer: &Part, welford: bool) -> Part {
        let (a, b) = (self, newer);
        let (mean, m2) = if !welford {
            (0.0, 0.0)
        } else if a.n == 0 {
            (b.mean, b.m2)
        } else if b.n == 0 {
            (a.mean, a.m2)
        } else {
            let (na, nb) = (a.n as f64, b.n as f64);
            let n = na + nb;
            let delta = b.mean - a.mean;
            (
                a.mean + delta * (nb / n),
                a.m2 + b.m2 + delta * delta * (na * nb / n),
            )
        };
        Part {
            nn: a.nn + b.nn,
            n: a.n + b.n,
            sum: a.sum + b.sum,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            mean,
            m2,
            last: b.last.or(a.last),
        }
    }

    /// The value of an aggregate (other than the counts, which need no column) over the span.
    /// Empty windows give 0 for sums and null for the rest; non-finite results are null.
    pub fn finish(&self, func: AggFn, distinct: u64) -> Value {
        let n = self.n;
        match func {
            AggFn::Count => int(self.nn),
            AggFn::DistinctCount => int(distinct),
            AggFn::Sum => Value::finite(Some(self.sum)),
            AggFn::Mean => Value::finite((n > 0).then(|| self.sum / n as f64)),
            AggFn::Min => Value::finite((n > 0).then_some(self.min)),
            AggFn::Max => Value::finite((n > 0).then_some(self.max)),
            AggFn::Std => Value::finite((n >= 2).then(|| (self.m2 / (n - 1) as f64).sqrt())),
            AggFn::Last => self.last.map_or(Value::Null, Value::Float),
        }
    }
}

/// A count as a value; counts of entries held in memory always fit.
pub(crate) fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A non-null value as a key of the distinct-count multiset: the same equality as
/// [`Value`]'s (floats by their bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Distinct {
    Int(i64),
    Float(u64),
    Str(Arc<str>),
}

impl Distinct {
    pub fn of(v: &Value) -> Option<Distinct> {
        match v {
            Value::Null => None,
            Value::Int(i) => Some(Self::Int(*i)),
            Value::Float(x) => Some(Self::Float(x.to_bits())),
            Value::Str(s) => Some(Self::Str(s.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(xs: &[f64]) -> Part {
        xs.iter()
            .fold(Part::EMPTY, |acc, x| acc.then(&Part::of(&Value::Float(*x))))
    }

    #[test]
    fn an_empty_span_sums_to_positive_zero_and_has_no_mean() {
        assert_eq!(Part::EMPTY.finish(AggFn::Sum, 0), Value::Float(0.0));
        let neg = span(&[-0.0]);
        assert_eq!(
            neg.finish(AggFn::Sum, 0),
            Value::Float(0.0),
            "+0, as the left fold gave"
        );
        for f in [AggFn::Mean, AggFn::Min, AggFn::Max, AggFn::Std, AggFn::Last] {
            assert_eq!(Part::EMPTY.finish(f, 0), Value::Null, "{f:?}");
        }
        assert_eq!(
            span(&[3.0]).finish(AggFn::Std, 0),
            Value::Null,
            "std needs two"
        );
    }

    #[test]
    fn spans_combine_like_one_fold() {
        let xs = [4.0, 10.0, 2.0, -7.5, 3.25];
        let whole = span(&xs);
        for cut in 0..=xs.len() {
            let (a, b) = xs.split_at(cut);
            let joined = span(a).then(&span(b));
            assert_eq!((joined.nn, joined.n, joined.sum), (5, 5, 11.75));
            assert_eq!(
                (joined.min, joined.max, joined.last),
                (-7.5, 10.0, Some(3.25))
            );
            assert!((joined.mean - whole.mean).abs() < 1e-12);
            assert!((joined.m2 - whole.m2).abs() < 1e-9);
        }
        let mean = 11.75 / 5.0;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0;
        let Value::Float(std) = whole.finish(AggFn::Std, 0) else {
            panic!("std of five values")
        };
        assert!((std - var.sqrt()).abs() < 1e-12, "{std} vs {}", var.sqrt());
    }

    /// A sum of squares loses everything when the values are large and close; Welford does not.
    #[test]
    fn std_of_large_close_values_is_accurate() {
        let base = 1e9;
        let xs: Vec<f64> = (0..1000).map(|i| base + f64::from(i % 3)).collect();
        let Value::Float(std) = span(&xs).finish(AggFn::Std, 0) else {
            panic!("std")
        };
        // Values 0, 1, 2 repeating (334, 333, 333 times) around 1e9.
        let mean = (333.0 + 2.0 * 333.0) / 1000.0;
        let var = (334.0 * mean * mean
            + 333.0 * (1.0 - mean) * (1.0 - mean)
            + 333.0 * (2.0 - mean) * (2.0 - mean))
            / 999.0;
        assert!((std - f64::sqrt(var)).abs() < 1e-9, "{std}");
    }

    #[test]
    fn text_counts_but_adds_nothing() {
        let p = Part::of(&Value::Str("a".into())).then(&Part::of(&Value::Int(2)));
        assert_eq!((p.nn, p.n, p.sum, p.last), (2, 1, 2.0, Some(2.0)));
        assert_eq!(Part::of(&Value::Null), Part::EMPTY);
        assert_eq!(Distinct::of(&Value::Null), None);
        assert_ne!(
            Distinct::of(&Value::Float(0.0)),
            Distinct::of(&Value::Float(-0.0)),
            "floats are distinct by their bits, as Value's equality has it"
        );
    }
}
