//! Checking a raw pipeline into a [`Pipeline`]: every error names the file, line, column and field.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::raw::{RawAsof, RawDerive, RawLookup, RawPipeline, RawWindow, S};
use super::*;
use crate::time::{parse_date_or_timestamp, parse_duration, parse_tz};

/// A pipeline file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {field}: {message}")]
pub struct SpecError {
    /// The pipeline file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The field of the pipeline file (e.g. `derive[2].args`), or `toml` for syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    layout: Vec<Column>,
    by_name: HashMap<String, usize>,
}

impl Checker<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> SpecError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        SpecError {
            file: self.file.to_string(),
            line,
            col,
            field: field.into(),
            message: message.into(),
        }
    }

    fn define(&mut self, name: &S<String>, ty: FieldType, field: &str) -> Result<usize, SpecError> {
        let n = name.get_ref();
        if n.is_empty() || n.starts_with("__") {
            return Err(self.err(
                name.span(),
                field,
                format!("`{n}` is not a usable column name (empty, or starting with `__`)"),
            ));
        }
        if self.by_name.contains_key(n) {
            return Err(self.err(name.span(), field, format!("column `{n}` is defined twice")));
        }
        self.by_name.insert(n.clone(), self.layout.len());
        self.layout.push(Column {
            name: n.clone(),
            ty,
        });
        Ok(self.layout.len() - 1)
    }

    fn resolve(&self, name: &S<String>, field: &str) -> Result<usize, SpecError> {
        self.by_name.get(name.get_ref()).copied().ok_or_else(|| {
            self.err(
                name.span(),
                field,
                format!(
                    "`{}` is not defined before this point (known: {})",
                    name.get_ref(),
                    self.known()
                ),
            )
        })
    }

    fn known(&self) -> String {
        let names: Vec<&str> = self.layout.iter().map(|c| c.name.as_str()).collect();
        if names.len() > 40 {
            format!("{} columns", names.len())
        } else {
            names.join(", ")
        }
    }

    fn ty(&self, name: &S<String>, field: &str) -> Result<FieldType, SpecError> {
        FieldType::parse(name.get_ref()).ok_or_else(|| {
            self.err(
                name.span(),
                field,
                format!(
                    "unknown type `{}`: use int, float, str or timestamp",
                    name.get_ref()
                ),
            )
        })
    }

    fn duration(&self, d: &S<String>, field: &str) -> Result<i64, SpecError> {
        parse_duration(d.get_ref()).map_err(|m| self.err(d.span(), field, m))
    }

    fn tz(
        &self,
        tz: Option<&S<String>>,
        span: Range<usize>,
        field: &str,
    ) -> Result<TzName, SpecError> {
        let tz = tz.ok_or_else(|| {
            self.err(
                span,
                field,
                "missing `tz` (an IANA time zone such as `America/New_York`)",
            )
        })?;
        parse_tz(tz.get_ref())
            .map(TzName)
            .map_err(|m| self.err(tz.span(), format!("{field}.tz"), m))
    }

    fn expect_ty(
        &self,
        col: usize,
        name: &S<String>,
        field: &str,
        allowed: &[FieldType],
    ) -> Result<(), SpecError> {
        let ty = self.layout[col].ty;
        if allowed.contains(&ty) {
            return Ok(());
        }
        let want: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
        Err(self.err(
            name.span(),
            field,
            format!(
                "`{}` is {}, but {} is needed here",
                name.get_ref(),
                ty.name(),
                want.join(" or ")
            ),
        ))
    }

    fn literal(
        &self,
        ty: FieldType,
        v: &S<toml::Value>,
        field: &str,
    ) -> Result<Literal, SpecError> {
        let numeric = matches!(ty, FieldType::Int | FieldType::Float | FieldType::Timestamp);
        match (v.get_ref(), numeric) {
            (toml::Value::Integer(i), true) => Ok(Literal::Int(*i)),
            (toml::Value::Float(x), true) if x.is_finite() => Ok(Literal::Float(*x)),
            (toml::Value::String(s), false) => Ok(Literal::Str(s.clone())),
            (other, _) => Err(self.err(
                v.span(),
                field,
                format!(
                    "{} cannot be compared with a {} column",
                    describe(other),
                    ty.name()
                ),
            )),
        }
    }

    fn predicate(
        &self,
        col_name: &S<String>,
        op: &S<String>,
        value: Option<&S<toml::Value>>,
        field: &str,
    ) -> Result<Predicate, SpecError> {
        let col = self.resolve(col_name, &format!("{field}.field"))?;
        let op_field = format!("{field}.op");
        let cmp = CmpOp::parse(op.get_ref()).ok_or_else(|| {
            self.err(
                op.span(),
                &op_field,
                format!(
                    "unknown operator `{}`: use not_null, is_null, eq, ne, lt, le, gt, ge or in",
                    op.get_ref()
                ),
            )
        })?;
        let ty = self.layout[col].ty;
        let vfield = format!("{field}.value");
        let values = match (cmp, value) {
            (CmpOp::NotNull | CmpOp::IsNull, None) => Vec::new(),
            (CmpOp::NotNull | CmpOp::IsNull, Some(v)) => {
                return Err(self.err(
                    v.span(),
                    vfield,
                    format!("`{}` takes no value", op.get_ref()),
                ));
            }
            (_, None) => {
                return Err(self.err(
                    op.span(),
                    vfield,
                    format!("`{}` needs a `value`", op.get_ref()),
                ));
            }
            (CmpOp::In, Some(v)) => match v.get_ref() {
                toml::Value::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|item| self.literal(ty, &S::new(v.span(), item.clone()), &vfield))
                    .collect::<Result<_, _>>()?,
                _ => return Err(self.err(v.span(), vfield, "`in` needs a non-empty list")),
            },
            (_, Some(v)) => vec![self.literal(ty, v, &vfield)?],
        };
        if ty == FieldType::Str && matches!(cmp, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge) {
            return Err(self.err(
                op.span(),
                op_field,
                "text columns take eq, ne, in, not_null or is_null",
            ));
        }
        Ok(Predicate {
            col,
            op: cmp,
            values,
        })
    }

    fn table_columns(
        &self,
        columns: &S<BTreeMap<String, S<String>>>,
        key: &str,
        field: &str,
    ) -> Result<(FieldType, Vec<(String, FieldType)>), SpecError> {
        let mut key_ty = None;
        let mut out = Vec::new();
        for (name, ty) in columns.get_ref() {
            let t = self.ty(ty, &format!("{field}.columns.{name}"))?;
            if name == key {
                key_ty = Some(t);
            } else {
                out.push((name.clone(), t));
            }
        }
        let key_ty = key_ty.ok_or_else(|| {
            self.err(
                columns.span(),
                format!("{field}.columns"),
                format!("the key column `{key}` must be declared in `columns`"),
            )
        })?;
        Ok((key_ty, out))
    }

    fn join_key(&self, on: &S<String>, key_ty: FieldType, field: &str) -> Result<usize, SpecError> {
        let col = self.resolve(on, &format!("{field}.on"))?;
        let ty = self.layout[col].ty;
        if ty == FieldType::Float || ty != key_ty {
            return Err(self.err(
                on.span(),
                format!("{field}.on"),
                format!(
                    "cannot join `{}` ({}) with a {} key; join keys are int or str of one type",
                    on.get_ref(),
                    ty.name(),
                    key_ty.name()
                ),
            ));
        }
        Ok(col)
    }

    fn lookup(&mut self, i: usize, l: &RawLookup) -> Result<Lookup, SpecError> {
        let field = format!("lookup[{i}]");
        let (key_ty, columns) = self.table_columns(&l.columns, l.key.get_ref(), &field)?;
        let on = self.join_key(&l.on, key_ty, &field)?;
        let first_col = self.layout.len();
        for (name, ty) in &columns {
            self.define(
                &S::new(l.columns.span(), format!("{}{name}", l.prefix)),
                *ty,
                &format!("{field}.columns"),
            )?;
        }
        Ok(Lookup {
            name: l.name.get_ref().clone(),
            path: l.path.get_ref().clone(),
            on,
            key: l.key.get_ref().clone(),
            key_ty,
            columns,
            first_col,
        })
    }

    fn asof(&mut self, i: usize, a: &RawAsof) -> Result<Asof, SpecError> {
        let field = format!("asof[{i}]");
        let (key_ty, columns) = self.table_columns(&a.columns, a.key.get_ref(), &field)?;
        let on = self.join_key(&a.on, key_ty, &field)?;
        match columns.iter().find(|(n, _)| n == a.time.get_ref()) {
            Some((_, FieldType::Timestamp)) => {}
            Some((_, other)) => {
                return Err(self.err(
                    a.time.span(),
                    format!("{field}.time"),
                    format!(
                        "`{}` is {}, but the as-of time must be a timestamp column",
                        a.time.get_ref(),
                        other.name()
                    ),
                ));
            }
            None => {
                return Err(self.err(
                    a.time.span(),
                    format!("{field}.time"),
                    format!(
                        "`{}` must be declared in `columns` as timestamp",
                        a.time.get_ref()
                    ),
                ));
            }
        }
        let tolerance_ms = a
            .tolerance
            .as_ref()
            .map(|t| self.duration(t, &format!("{field}.tolerance")))
            .transpose()?;
        let first_col = self.layout.len();
        for (name, ty) in &columns {
            self.define(
                &S::new(a.columns.span(), format!("{}{name}", a.prefix)),
                *ty,
                &format!("{field}.columns"),
            )?;
        }
        Ok(Asof {
            name: a.name.get_ref().clone(),
            path: a.path.get_ref().clone(),
            on,
            key: a.key.get_ref().clone(),
            key_ty,
            time: a.time.get_ref().clone(),
            tolerance_ms,
            columns,
            first_col,
        })
    }

    fn window(&mut self, i: usize, w: &RawWindow) -> Result<Window, SpecError> {
        use FieldType::*;
        let field = format!("window[{i}]");
        let key = self.resolve(&w.key, &format!("{field}.key"))?;
        self.expect_ty(key, &w.key, &format!("{field}.key"), &[Int, Str])?;
        let length_ms = self.duration(&w.length, &format!("{field}.length"))?;
        if w.aggs.get_ref().is_empty() {
            return Err(self.err(
                w.aggs.span(),
                format!("{field}.aggs"),
                "a window needs at least one aggregate",
            ));
        }
        let mut resolved = Vec::new();
        for (j, agg) in w.aggs.get_ref().iter().enumerate() {
            let afield = format!("{field}.aggs[{j}]");
            let a = agg.get_ref();
            let func = AggFn::parse(a.func.get_ref()).ok_or_else(|| {
                self.err(a.func.span(), format!("{afield}.fn"), format!("unknown aggregate `{}`: use count, sum, mean, min, max, std, last or distinct_count", a.func.get_ref()))
            })?;
            let col = match &a.field {
                Some(f) => {
                    let c = self.resolve(f, &format!("{afield}.field"))?;
                    let allowed: &[FieldType] = match func {
                        AggFn::Count | AggFn::DistinctCount => &[Int, Float, Str, Timestamp],
                        // Over times: the previous event's (`last`, include_current = false),
                        // the window's earliest and latest, as epoch milliseconds.
                        AggFn::Last | AggFn::Min | AggFn::Max => &[Int, Float, Timestamp],
                        _ => &[Int, Float],
                    };
                    self.expect_ty(c, f, &format!("{afield}.field"), allowed)?;
                    Some(c)
                }
                None if func == AggFn::Count => None,
                None => {
                    return Err(self.err(
                        agg.span(),
                        format!("{afield}.field"),
                        format!("`{}` needs a `field`", a.func.get_ref()),
                    ));
                }
            };
            let ty = match func {
                AggFn::Count | AggFn::DistinctCount => Int,
                _ => Float,
            };
            resolved.push((a.name.clone(), func, col, ty));
        }
        let first_col = self.layout.len();
        let mut aggs = Vec::new();
        for (name, func, col, ty) in resolved {
            self.define(&name, ty, &format!("{field}.aggs"))?;
            aggs.push(Agg {
                name: name.into_inner(),
                func,
                field: col,
            });
        }
        Ok(Window {
            name: w.name.get_ref().clone(),
            key,
            length_ms,
            include_current: w.include_current,
            aggs,
            first_col,
        })
    }

    fn derive(&mut self, i: usize, d: &RawDerive) -> Result<Derive, SpecError> {
        use FieldType::*;
        let field = format!("derive[{i}]");
        let fname = d.func.get_ref().as_str();
        let arith = matches!(fname, "ratio" | "sub" | "add" | "mul");
        let (arity, arg_types, out): (usize, &[FieldType], FieldType) = match fname {
            "hour_of_day" | "day_of_week" | "month_of_year" | "year" | "day_of_month"
            | "week_of_year" => (1, &[Timestamp], Int),
            "log1p" => (1, &[Int, Float], Float),
            // One argument and a constant `value`, or two arguments.
            _ if arith => (
                if d.value.is_some() { 1 } else { 2 },
                &[Int, Float, Timestamp],
                Float,
            ),
            "bucket" => (1, &[Int, Float], Int),
            "has" | "count_values" => (1, &[Str], Int),
            other => {
                return Err(self.err(
                    d.func.span(),
                    format!("{field}.fn"),
                    format!(
                        "unknown function `{other}`: use hour_of_day, day_of_week, \
                         month_of_year, year, day_of_month, week_of_year, log1p, ratio, sub, \
                         add, mul, bucket, has or count_values"
                    ),
                ));
            }
        };
        let args = d.args.get_ref();
        if args.len() != arity {
            let how = if arith {
                format!(
                    "`{fname}` takes two arguments, or one and a constant `value`; got {} \
                     argument(s){}",
                    args.len(),
                    if d.value.is_some() {
                        " and a `value`"
                    } else {
                        ""
                    }
                )
            } else {
                format!("`{fname}` takes {arity} argument(s), got {}", args.len())
            };
            return Err(self.err(d.args.span(), format!("{field}.args"), how));
        }
        let mut cols = Vec::new();
        for (j, a) in args.iter().enumerate() {
            let afield = format!("{field}.args[{j}]");
            let c = self.resolve(a, &afield)?;
            self.expect_ty(c, a, &afield, arg_types)?;
            cols.push(c);
        }
        let number = |v: &S<toml::Value>| -> Result<f64, SpecError> {
            let x = match v.get_ref() {
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Float(x) => *x,
                other => {
                    return Err(self.err(
                        v.span(),
                        format!("{field}.value"),
                        format!(
                            "`{fname}` takes a number as `value`, got {}",
                            describe(other)
                        ),
                    ));
                }
            };
            if x.is_finite() {
                Ok(x)
            } else {
                Err(self.err(v.span(), format!("{field}.value"), "`value` must be finite"))
            }
        };
        let sep = || -> Result<String, SpecError> {
            match &d.sep {
                None => Ok("|".to_string()),
                Some(s) if s.get_ref().is_empty() => {
                    Err(self.err(s.span(), format!("{field}.sep"), "`sep` must not be empty"))
                }
                Some(s) => Ok(s.get_ref().clone()),
            }
        };
        let tz = || self.tz(d.tz.as_ref(), d.func.span(), &field);
        let constant = || d.value.as_ref().map(number).transpose();
        let func = match fname {
            "hour_of_day" => DeriveFn::HourOfDay { tz: tz()? },
            "day_of_week" => DeriveFn::DayOfWeek { tz: tz()? },
            "month_of_year" => DeriveFn::MonthOfYear { tz: tz()? },
            "year" => DeriveFn::Year { tz: tz()? },
            "day_of_month" => DeriveFn::DayOfMonth { tz: tz()? },
            "week_of_year" => DeriveFn::WeekOfYear { tz: tz()? },
            "log1p" => DeriveFn::Log1p,
            "ratio" => DeriveFn::Ratio { value: constant()? },
            "sub" => DeriveFn::Sub { value: constant()? },
            "add" => DeriveFn::Add { value: constant()? },
            "mul" => DeriveFn::Mul { value: constant()? },
            "has" => {
                let v = d.value.as_ref().ok_or_else(|| {
                    self.err(
                        d.func.span(),
                        format!("{field}.value"),
                        "`has` needs `value`, the text looked for among the field's values",
                    )
                })?;
                let toml::Value::String(text) = v.get_ref() else {
                    return Err(self.err(
                        v.span(),
                        format!("{field}.value"),
                        format!("`has` takes text as `value`, got {}", describe(v.get_ref())),
                    ));
                };
                DeriveFn::Has {
                    value: text.clone(),
                    sep: sep()?,
                }
            }
            "count_values" => DeriveFn::CountValues { sep: sep()? },
            _ => {
                let bounds = d.bounds.as_ref().ok_or_else(|| {
                    self.err(
                        d.func.span(),
                        format!("{field}.bounds"),
                        "`bucket` needs `bounds`, a list of increasing numbers",
                    )
                })?;
                let b = bounds.get_ref();
                if b.is_empty()
                    || b.iter().any(|x| !x.is_finite())
                    || b.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(self.err(
                        bounds.span(),
                        format!("{field}.bounds"),
                        "bounds must be a non-empty list of finite, strictly increasing numbers",
                    ));
                }
                DeriveFn::Bucket { bounds: b.clone() }
            }
        };
        // Keys another function takes are a mistake here.
        let takes_tz = matches!(
            func,
            DeriveFn::HourOfDay { .. }
                | DeriveFn::DayOfWeek { .. }
                | DeriveFn::MonthOfYear { .. }
                | DeriveFn::Year { .. }
                | DeriveFn::DayOfMonth { .. }
                | DeriveFn::WeekOfYear { .. }
        );
        let takes_value = arith || matches!(func, DeriveFn::Has { .. });
        let takes_sep = matches!(func, DeriveFn::Has { .. } | DeriveFn::CountValues { .. });
        let bucket = matches!(func, DeriveFn::Bucket { .. });
        for (key, at, ok) in [
            ("bounds", d.bounds.as_ref().map(S::span), bucket),
            ("tz", d.tz.as_ref().map(S::span), takes_tz),
            ("value", d.value.as_ref().map(S::span), takes_value),
            ("sep", d.sep.as_ref().map(S::span), takes_sep),
        ] {
            if let Some(at) = at
                && !ok
            {
                return Err(self.err(
                    at,
                    format!("{field}.{key}"),
                    format!("`{fname}` takes no {key}"),
                ));
            }
        }
        self.define(&d.name, out, &format!("{field}.name"))?;
        Ok(Derive {
            name: d.name.get_ref().clone(),
            func,
            args: cols,
        })
    }
}

pub(super) fn check(text: &str, file: &str) -> Result<Pipeline, SpecError> {
    let mut c = Checker {
        text,
        file,
        layout: Vec::new(),
        by_name: HashMap::new(),
    };
    let raw: RawPipeline = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        c.err(span, "toml", e.message().trim().to_string())
    })?;

    let ev = &raw.events;
    if ev.fields.get_ref().is_empty() {
        return Err(c.err(
            ev.fields.span(),
            "events.fields",
            "declare at least one field",
        ));
    }
    for (name, ty) in ev.fields.get_ref() {
        let t = c.ty(ty, &format!("events.fields.{name}"))?;
        c.define(&S::new(ty.span(), name.clone()), t, "events.fields")?;
    }
    let n_fields = c.layout.len();
    let key = c.resolve(&ev.key, "events.key")?;
    c.expect_ty(
        key,
        &ev.key,
        "events.key",
        &[FieldType::Int, FieldType::Str],
    )?;
    let lateness_ms = match &ev.lateness {
        Some(l) => c.duration(l, "events.lateness")?,
        None => 0,
    };
    let max_future_ms = match &ev.max_future {
        // No bound: for sparse streams whose events are often further apart than any bound.
        Some(d) if d.get_ref() == "off" => i64::MAX,
        Some(d) => c.duration(d, "events.max_future")?,
        None => super::DEFAULT_MAX_FUTURE_MS,
    };
    let mut numbers_from_strings = Vec::new();
    for name in ev.numbers_from_strings.iter().flat_map(|l| l.get_ref()) {
        let col = c.resolve(name, "events.numbers_from_strings")?;
        c.expect_ty(
            col,
            name,
            "events.numbers_from_strings",
            &[FieldType::Int, FieldType::Float],
        )?;
        if !numbers_from_strings.contains(&col) {
            numbers_from_strings.push(col);
        }
    }
    numbers_from_strings.sort_unstable();
    let time = event_time(&c, ev.time.get_ref(), ev.time.span())?;
    c.define(
        &S::new(ev.time.span(), "event_time".to_string()),
        FieldType::Timestamp,
        "events.time",
    )?;

    // Filters see only the event's own fields: they run before anything is joined.
    let mut filters = Vec::new();
    for (i, f) in raw.filter.iter().enumerate() {
        let field = format!("filter[{i}]");
        let p = c.predicate(&f.field, &f.op, f.value.as_ref(), &field)?;
        if p.col >= n_fields {
            return Err(c.err(
                f.field.span(),
                format!("{field}.field"),
                "filters may only use the event's declared fields",
            ));
        }
        filters.push(p);
    }
    let lookups = raw
        .lookup
        .iter()
        .enumerate()
        .map(|(i, l)| c.lookup(i, l))
        .collect::<Result<Vec<_>, _>>()?;
    let asofs = raw
        .asof
        .iter()
        .enumerate()
        .map(|(i, a)| c.asof(i, a))
        .collect::<Result<Vec<_>, _>>()?;
    // Derives marked `before_windows` run on the joined event, before any window: windows can
    // key and aggregate by them; the others come after the windows and can use their columns.
    let pre_derive_first_col = c.layout.len();
    let pre_derives = raw
        .derive
        .iter()
        .enumerate()
        .filter(|(_, d)| d.before_windows)
        .map(|(i, d)| c.derive(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    for (wi, w) in raw.window.iter().enumerate() {
        let aggs = w.aggs.get_ref().iter().enumerate();
        let named = std::iter::once((format!("window[{wi}].key"), &w.key)).chain(aggs.filter_map(
            |(j, a)| {
                let f = a.get_ref().field.as_ref()?;
                Some((format!("window[{wi}].aggs[{j}].field"), f))
            },
        ));
        for (field, n) in named {
            if let Some(i) = raw
                .derive
                .iter()
                .position(|d| !d.before_windows && d.name.get_ref() == n.get_ref())
            {
                return Err(c.err(
                    n.span(),
                    field,
                    format!(
                        "`{}` is derive[{i}], computed after the windows; to key or aggregate \
                         window `{}` by it, set `before_windows = true` on derive[{i}]",
                        n.get_ref(),
                        w.name.get_ref()
                    ),
                ));
            }
        }
    }
    let windows = raw
        .window
        .iter()
        .enumerate()
        .map(|(i, w)| c.window(i, w))
        .collect::<Result<Vec<_>, _>>()?;
    let derives = raw
        .derive
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.before_windows)
        .map(|(i, d)| c.derive(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    // Forgetting a key is safe only once no event its window state could reach will be
    // accepted: the TTL must exceed every window's length plus the lateness.
    let idle_key_ttl_ms = match &ev.idle_key_ttl {
        None => None,
        Some(d) => {
            let ttl = c.duration(d, "events.idle_key_ttl")?;
            if let Some(w) = windows
                .iter()
                .find(|w| ttl <= w.length_ms.saturating_add(lateness_ms))
            {
                return Err(c.err(
                    d.span(),
                    "events.idle_key_ttl",
                    format!(
                        "must be longer than every window's length plus the lateness \
                         (window `{}`: {} ms + {lateness_ms} ms)",
                        w.name, w.length_ms
                    ),
                ));
            }
            Some(ttl)
        }
    };

    let mut numeric = Vec::new();
    for (i, n) in raw.features.numeric.iter().enumerate() {
        let f = format!("features.numeric[{i}]");
        let col = c.resolve(n, &f)?;
        c.expect_ty(col, n, &f, &[FieldType::Int, FieldType::Float])?;
        numeric.push(col);
    }
    let mut categorical = Vec::new();
    for (i, n) in raw.features.categorical.iter().enumerate() {
        let f = format!("features.categorical[{i}]");
        let col = c.resolve(n, &f)?;
        c.expect_ty(col, n, &f, &[FieldType::Int, FieldType::Str])?;
        categorical.push(col);
    }
    if numeric.is_empty() && categorical.is_empty() {
        return Err(c.err(
            0..0,
            "features",
            "declare at least one numeric or categorical feature",
        ));
    }
    let min_count = match &raw.features.min_count {
        Some(m) if *m.get_ref() >= 1 => *m.get_ref() as u64,
        Some(m) => {
            return Err(c.err(
                m.span(),
                "features.min_count",
                "min_count must be at least 1",
            ));
        }
        None => 1,
    };
    let label = raw
        .label
        .as_ref()
        .map(|l| c.predicate(&l.field, &l.op, l.value.as_ref(), "label"))
        .transpose()?;
    let valid_from = raw
        .split
        .as_ref()
        .map(|s| {
            parse_date_or_timestamp(s.valid_from.get_ref())
                .map_err(|m| c.err(s.valid_from.span(), "split.valid_from", m))
        })
        .transpose()?;

    Ok(Pipeline {
        name: raw.pipeline.name.get_ref().clone(),
        description: raw.pipeline.description.clone(),
        events_path: ev.path.as_ref().map(|p| p.get_ref().clone()),
        n_fields,
        key,
        lateness_ms,
        idle_key_ttl_ms,
        max_future_ms,
        numbers_from_strings,
        time,
        filters,
        lookups,
        asofs,
        windows,
        pre_derives,
        pre_derive_first_col,
        derives,
        features: Features {
            numeric,
            categorical,
            min_count,
        },
        label,
        valid_from,
        layout: c.layout,
        model: raw.model,
        file: file.to_string(),
    })
}

fn event_time(
    c: &Checker<'_>,
    t: &super::raw::RawEventTime,
    span: Range<usize>,
) -> Result<EventTime, SpecError> {
    use FieldType::*;
    let need = |o: &Option<S<String>>, what: &str| -> Result<usize, SpecError> {
        let name = o.as_ref().ok_or_else(|| {
            c.err(
                span.clone(),
                format!("events.time.{what}"),
                format!("`{}` needs `{what}`", t.func.get_ref()),
            )
        })?;
        let col = c.resolve(name, &format!("events.time.{what}"))?;
        c.expect_ty(
            col,
            name,
            &format!("events.time.{what}"),
            if what == "field" {
                &[Timestamp, Int]
            } else {
                &[Int]
            },
        )?;
        Ok(col)
    };
    // Keys that belong to another function are a mistake, not something to ignore.
    let func = t.func.get_ref().as_str();
    let given: [(&str, Option<Range<usize>>); 7] = [
        ("field", t.field.as_ref().map(S::span)),
        ("date", t.date.as_ref().map(S::span)),
        ("hhmm", t.hhmm.as_ref().map(S::span)),
        ("reference_hhmm", t.reference_hhmm.as_ref().map(S::span)),
        ("tz", t.tz.as_ref().map(S::span)),
        ("unit", t.unit.as_ref().map(S::span)),
        ("format", t.format.as_ref().map(S::span)),
    ];
    let takes: &[&str] = match func {
        "field" => &["field", "unit"],
        "local" => &["field", "format", "tz"],
        "local_hhmm" => &["date", "hhmm", "reference_hhmm", "tz"],
        _ => &[],
    };
    if !takes.is_empty()
        && let Some((key, Some(at))) = given
            .iter()
            .find(|(k, at)| at.is_some() && !takes.contains(k))
    {
        return Err(c.err(
            at.clone(),
            format!("events.time.{key}"),
            format!(
                "`{key}` does not apply to `fn = \"{func}\"`, which takes {}",
                takes
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    match func {
        "field" => {
            let col = need(&t.field, "field")?;
            let name = c.layout[col].name.clone();
            let unit = match (c.layout[col].ty, &t.unit) {
                (Int, None) => {
                    return Err(c.err(
                        t.field.as_ref().map_or(span.clone(), S::span),
                        "events.time.unit",
                        format!(
                            "`{name}` is an int: say what it counts since the epoch with `unit = \
                             \"s\"`, \"ms\", \"us\" or \"ns\""
                        ),
                    ));
                }
                (Int, Some(u)) => Some(EpochUnit::parse(u.get_ref()).ok_or_else(|| {
                    c.err(
                        u.span(),
                        "events.time.unit",
                        format!(
                            "unknown unit `{}`: use \"s\", \"ms\", \"us\" or \"ns\"",
                            u.get_ref()
                        ),
                    )
                })?),
                (_, Some(u)) => {
                    return Err(c.err(
                        u.span(),
                        "events.time.unit",
                        format!("`{name}` is a timestamp, which has no unit: drop `unit`"),
                    ));
                }
                (_, None) => None,
            };
            Ok(EventTime::Field { col, unit })
        }
        "local" => {
            let name = t
                .field
                .as_ref()
                .ok_or_else(|| c.err(span.clone(), "events.time.field", "`local` needs `field`"))?;
            let col = c.resolve(name, "events.time.field")?;
            c.expect_ty(col, name, "events.time.field", &[Str])?;
            let format = t.format.as_ref().ok_or_else(|| {
                c.err(
                    span.clone(),
                    "events.time.format",
                    "`local` needs `format`, e.g. \"%Y-%m-%d %H:%M:%S\" (chrono's strftime syntax)",
                )
            })?;
            crate::time::check_local_format(format.get_ref())
                .map_err(|m| c.err(format.span(), "events.time.format", m))?;
            Ok(EventTime::Local {
                col,
                format: format.get_ref().clone(),
                tz: c.tz(t.tz.as_ref(), span.clone(), "events.time")?,
            })
        }
        "local_hhmm" => {
            let date = t.date.as_ref().ok_or_else(|| {
                c.err(
                    span.clone(),
                    "events.time.date",
                    "`local_hhmm` needs `date = [year, month, day]`",
                )
            })?;
            let names = date.get_ref();
            if names.len() != 3 {
                return Err(c.err(
                    date.span(),
                    "events.time.date",
                    "`date` is three int fields: [year, month, day]",
                ));
            }
            let mut cols = [0; 3];
            for (slot, n) in cols.iter_mut().zip(names) {
                *slot = c.resolve(n, "events.time.date")?;
                c.expect_ty(*slot, n, "events.time.date", &[Int])?;
            }
            let reference = match &t.reference_hhmm {
                Some(_) => Some(need(&t.reference_hhmm, "reference_hhmm")?),
                None => None,
            };
            Ok(EventTime::LocalHhmm {
                date: cols,
                hhmm: need(&t.hhmm, "hhmm")?,
                reference,
                tz: c.tz(t.tz.as_ref(), span.clone(), "events.time")?,
            })
        }
        other => Err(c.err(
            t.func.span(),
            "events.time.fn",
            format!("unknown event-time function `{other}`: use field, local or local_hhmm"),
        )),
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(x) => format!("the float {x}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(_) => "a datetime".to_string(),
        toml::Value::Array(_) => "a list".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}
