//! Row-level semantics shared by both engines: predicates, event time, derived features.

use crate::spec::{CmpOp, DeriveFn, EpochUnit, EventTime, Literal, Pipeline, Predicate};
use crate::time::{self, TimePart};
use crate::value::Value;

/// Whether a value satisfies a predicate. Null satisfies only `is_null`.
pub fn matches(p: &Predicate, v: &Value) -> bool {
    match p.op {
        CmpOp::IsNull => v.is_null(),
        CmpOp::NotNull => !v.is_null(),
        CmpOp::In => p
            .values
            .iter()
            .any(|lit| compare(v, lit) == Some(std::cmp::Ordering::Equal)),
        op => match p.values.first().and_then(|lit| compare(v, lit)) {
            None => false,
            Some(ord) => match op {
                CmpOp::Eq => ord.is_eq(),
                CmpOp::Ne => ord.is_ne(),
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            },
        },
    }
}

/// Compare a value with a literal: ints exactly, mixed numbers as f64, text by bytes.
pub fn compare(v: &Value, lit: &Literal) -> Option<std::cmp::Ordering> {
    match (v, lit) {
        (Value::Int(a), Literal::Int(b)) => Some(a.cmp(b)),
        (Value::Str(a), Literal::Str(b)) => Some(a.as_ref().cmp(b.as_str())),
        (Value::Null, _) | (Value::Str(_), _) | (_, Literal::Str(_)) => None,
        (a, Literal::Int(b)) => a.as_f64()?.partial_cmp(&(*b as f64)),
        (a, Literal::Float(b)) => a.as_f64()?.partial_cmp(b),
    }
}

/// The label of an event: 1.0 when the predicate holds, 0.0 when not, null when the column is null.
pub fn label(p: &Predicate, row: &[Value]) -> Option<f64> {
    let v = &row[p.col];
    if v.is_null() && p.op != CmpOp::IsNull {
        return None;
    }
    Some(if matches(p, v) { 1.0 } else { 0.0 })
}

/// Compute the event time (epoch ms) from the row's fields.
///
/// The message of an error names the fields at fault. A time outside [`time::in_range`] (about
/// 262,000 years either side of year 0) is refused, so that no window, join or calendar
/// arithmetic downstream can overflow.
pub fn event_time(p: &Pipeline, row: &[Value]) -> Result<i64, String> {
    let name = |c: usize| p.layout[c].name.as_str();
    let int = |c: usize| {
        row[c]
            .as_i64()
            .ok_or_else(|| format!("`{}` is null, so the event has no time", name(c)))
    };
    match &p.time {
        EventTime::Field { col, unit } => {
            let v = int(*col)?;
            let t = match unit {
                None | Some(EpochUnit::Ms) => Some(v),
                Some(u) => u.to_ms(v),
            };
            match t {
                Some(t) if time::in_range(t) => Ok(t),
                _ => Err(format!(
                    "`{}`: {v} {} since the epoch is outside the supported range of times",
                    name(*col),
                    unit.map_or("ms", EpochUnit::name)
                )),
            }
        }
        EventTime::Local { col, format, tz } => match &row[*col] {
            Value::Str(text) => {
                time::parse_local(tz.0, format, text).map_err(|m| format!("`{}`: {m}", name(*col)))
            }
            Value::Null => Err(format!(
                "`{}` is null, so the event has no time",
                name(*col)
            )),
            other => Err(format!(
                "`{}`: {other:?} is not local date-time text",
                name(*col)
            )),
        },
        EventTime::LocalHhmm {
            date,
            hhmm,
            reference,
            tz,
        } => {
            let ymd = (int(date[0])?, int(date[1])?, int(date[2])?);
            // A missing reference only loses the midnight correction; the time is still known.
            let reference_col = *reference;
            let reference = reference_col.and_then(|c| row[c].as_i64());
            time::local_hhmm_to_utc(tz.0, ymd, int(*hhmm)?, reference).map_err(|(part, m)| {
                let (y, mo, d) = (name(date[0]), name(date[1]), name(date[2]));
                let fields = match part {
                    TimePart::Year => format!("`{y}`"),
                    TimePart::Month => format!("`{mo}`"),
                    TimePart::Day => format!("`{d}`"),
                    TimePart::Hhmm => format!("`{}`", name(*hhmm)),
                    TimePart::Reference => {
                        format!("`{}`", reference_col.map_or("reference", name))
                    }
                    TimePart::Instant => format!("`{y}`, `{mo}`, `{d}` and `{}`", name(*hhmm)),
                };
                match part {
                    TimePart::Year | TimePart::Month | TimePart::Day => {
                        format!("{fields}: {m}, in the date {}-{}-{}", ymd.0, ymd.1, ymd.2)
                    }
                    _ => format!("{fields}: {m}"),
                }
            })
        }
    }
}

/// Compute one derived feature from its argument values.
pub fn derive(func: &DeriveFn, args: &[&Value]) -> Value {
    let num = |i: usize| args.get(i).and_then(|v| v.as_f64());
    let int = |i: usize| args.get(i).and_then(|v| v.as_i64());
    match func {
        DeriveFn::HourOfDay { tz } => opt_int(int(0).and_then(|t| time::hour_of_day(t, tz.0))),
        DeriveFn::DayOfWeek { tz } => opt_int(int(0).and_then(|t| time::day_of_week(t, tz.0))),
        DeriveFn::MonthOfYear { tz } => opt_int(int(0).and_then(|t| time::month_of_year(t, tz.0))),
        DeriveFn::Year { tz } => opt_int(int(0).and_then(|t| time::year(t, tz.0))),
        DeriveFn::DayOfMonth { tz } => opt_int(int(0).and_then(|t| time::day_of_month(t, tz.0))),
        DeriveFn::WeekOfYear { tz } => opt_int(int(0).and_then(|t| time::week_of_year(t, tz.0))),
        // The `libm` crate's log1p: the same bits on every target (see shared_models::sigmoid).
        DeriveFn::Log1p => Value::finite(num(0).filter(|x| *x > -1.0).map(libm::log1p)),
        DeriveFn::Ratio { value } => Value::finite(
            num(0)
                .zip(value.or_else(|| num(1)))
                .filter(|(_, b)| *b != 0.0)
                .map(|(a, b)| a / b),
        ),
        DeriveFn::Sub { value } => {
            Value::finite(num(0).zip(value.or_else(|| num(1))).map(|(a, b)| a - b))
        }
        DeriveFn::Add { value } => {
            Value::finite(num(0).zip(value.or_else(|| num(1))).map(|(a, b)| a + b))
        }
        DeriveFn::Mul { value } => {
            Value::finite(num(0).zip(value.or_else(|| num(1))).map(|(a, b)| a * b))
        }
        DeriveFn::Has { value, sep } => match args.first() {
            Some(Value::Str(s)) => Value::Int(i64::from(s.split(sep.as_str()).any(|x| x == value))),
            _ => Value::Null,
        },
        DeriveFn::CountValues { sep } => match args.first() {
            Some(Value::Str(s)) => {
                Value::Int(s.split(sep.as_str()).filter(|x| !x.is_empty()).count() as i64)
            }
            _ => Value::Null,
        },
        DeriveFn::Bucket { bounds } => match num(0) {
            Some(x) => Value::Int(bounds.partition_point(|b| *b <= x) as i64),
            None => Value::Null,
        },
    }
}

fn opt_int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Int)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(op: CmpOp, values: Vec<Literal>) -> Predicate {
        Predicate { col: 0, op, values }
    }

    #[test]
    fn predicates_treat_null_as_unknown() {
        let gt = pred(CmpOp::Gt, vec![Literal::Int(15)]);
        assert!(matches(&gt, &Value::Int(16)));
        assert!(!matches(&gt, &Value::Int(15)));
        assert!(matches(&gt, &Value::Float(15.5)));
        assert!(!matches(&gt, &Value::Null));
        let ne = pred(CmpOp::Ne, vec![Literal::Str("UA".into())]);
        assert!(
            !matches(&ne, &Value::Null),
            "null is neither equal nor unequal"
        );
        assert!(matches(&ne, &Value::Str("AA".into())));
        assert!(matches(&pred(CmpOp::IsNull, vec![]), &Value::Null));
        assert!(!matches(&pred(CmpOp::NotNull, vec![]), &Value::Null));
        let within = pred(CmpOp::In, vec![Literal::Int(1), Literal::Float(2.5)]);
        assert!(matches(&within, &Value::Float(2.5)));
        assert!(!matches(&within, &Value::Int(2)));
    }

    #[test]
    fn labels() {
        let p = Predicate {
            col: 0,
            op: CmpOp::Gt,
            values: vec![Literal::Int(15)],
        };
        assert_eq!(label(&p, &[Value::Int(16)]), Some(1.0));
        assert_eq!(label(&p, &[Value::Float(15.0)]), Some(0.0));
        assert_eq!(label(&p, &[Value::Null]), None);
    }

    #[test]
    fn derived_functions() {
        let (two, zero, null) = (Value::Int(2), Value::Float(0.0), Value::Null);
        assert_eq!(
            derive(&DeriveFn::Ratio { value: None }, &[&two, &zero]),
            Value::Null
        );
        assert_eq!(
            derive(
                &DeriveFn::Ratio { value: None },
                &[&two, &Value::Float(4.0)]
            ),
            Value::Float(0.5)
        );
        assert_eq!(
            derive(&DeriveFn::Sub { value: None }, &[&two, &null]),
            Value::Null
        );
        assert_eq!(
            derive(&DeriveFn::Log1p, &[&Value::Float(-1.0)]),
            Value::Null
        );
        assert_eq!(derive(&DeriveFn::Log1p, &[&zero]), Value::Float(0.0));
        assert_eq!(
            derive(
                &DeriveFn::Mul { value: None },
                &[&Value::Float(1e308), &Value::Float(10.0)]
            ),
            Value::Null
        );
        let bucket = DeriveFn::Bucket {
            bounds: vec![500.0, 1000.0],
        };
        // A value exactly on a bound belongs to the bucket above it.
        assert_eq!(derive(&bucket, &[&Value::Int(499)]), Value::Int(0));
        assert_eq!(derive(&bucket, &[&Value::Int(500)]), Value::Int(1));
        assert_eq!(derive(&bucket, &[&Value::Int(5000)]), Value::Int(2));
        assert_eq!(derive(&bucket, &[&null]), Value::Null);
    }
}
