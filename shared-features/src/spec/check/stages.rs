//! Checking the stages of a pipeline: lookup and as-of joins, windows and derived columns.

use super::*;

impl Checker<'_> {
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

    /// Add a joined table's columns to the layout, named with `prefix`; the first one's index.
    fn define_columns(
        &mut self,
        columns: &[(String, FieldType)],
        prefix: &str,
        span: Range<usize>,
        field: &str,
    ) -> Result<usize, SpecError> {
        let first_col = self.layout.len();
        for (name, ty) in columns {
            self.define(
                &S::new(span.clone(), format!("{prefix}{name}")),
                *ty,
                &format!("{field}.columns"),
            )?;
        }
        Ok(first_col)
    }

    pub(super) fn lookup(&mut self, i: usize, l: &RawLookup) -> Result<Lookup, SpecError> {
        let field = format!("lookup[{i}]");
        let (key_ty, columns) = self.table_columns(&l.columns, l.key.get_ref(), &field)?;
        let on = self.join_key(&l.on, key_ty, &field)?;
        let first_col = self.define_columns(&columns, &l.prefix, l.columns.span(), &field)?;
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

    pub(super) fn asof(&mut self, i: usize, a: &RawAsof) -> Result<Asof, SpecError> {
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
        let first_col = self.define_columns(&columns, &a.prefix, a.columns.span(), &field)?;
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

    pub(super) fn window(&mut self, i: usize, w: &RawWindow) -> Result<Window, SpecError> {
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

    pub(super) fn derive(&mut self, i: usize, d: &RawDerive) -> Result<Derive, SpecError> {
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
