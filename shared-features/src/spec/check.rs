//! Checking a raw pipeline into a [`Pipeline`]: every error names the file, line, column and field.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::raw::{RawAsof, RawDerive, RawLookup, RawPipeline, RawWindow, S};
use super::*;
use crate::time::{parse_date_or_timestamp, parse_duration, parse_tz};

mod event_time;
mod stages;

use event_time::event_time;

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
