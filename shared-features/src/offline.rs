//! The offline engine: the pipeline over whole tables, with polars.
//!
//! polars reads the CSV files, filters, joins the lookup tables, sorts by event time and runs
//! the as-of joins. The joined table is then fed row by row, in event-time order, through the
//! same [`Stages`] the online engine uses, so windows and derived features are computed by one
//! piece of code. Events with equal times are ordered by partition key (nulls first), then keep
//! file order (stable sort): the order the online feed replays them in, and the order a merge
//! behind a watermark gives a window keyed by another column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use crate::engine::Stages;
use crate::error::{DataError, EventError};
use crate::eval;
use crate::spec::{CmpOp, Literal, Pipeline, Predicate};
use crate::tables::sha256_hex;
use crate::time;
use crate::value::{FieldType, Row, Value};

mod read;
pub mod stream;

pub(crate) use read::missing_file;

/// The files history at `path` is read from: the file itself, or every Parquet file of a
/// directory in the order their records are numbered (hive partitions, see `read`).
pub fn history_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if path.is_dir() {
        Ok(read::parquet_parts(path)?
            .into_iter()
            .map(|p| p.path)
            .collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}
use read::read_table;

const ROW: &str = "__row";
const KEY: &str = "__key";
const TIME: &str = "__time";

/// The result of running a pipeline over a history file.
#[derive(Debug, Default)]
pub struct OfflineRun {
    /// Full layout rows of the events that passed the filters, in event-time order.
    pub rows: Vec<Row>,
    /// For each row, its 0-based record number in the history file (line = record + 2).
    pub source: Vec<u32>,
    /// Events that passed the filters but were refused (no event time, late), by record number.
    pub rejected: Vec<(u32, EventError)>,
    /// Events dropped by filters.
    pub filtered: usize,
    /// `(table, sha256)` of every lookup table, for the fitted state.
    pub table_digests: Vec<(String, String)>,
}

/// The event times of an offline run: the first, the last, and how many events fall before
/// the validation cut.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TimeRange {
    /// The first event time (RFC 3339), if any event has one.
    pub first: Option<String>,
    /// The last event time (RFC 3339).
    pub last: Option<String>,
    /// Events with a time.
    pub events: usize,
    /// Of those, events before the validation cut (all of them without one).
    pub before_cut: usize,
}

impl OfflineRun {
    /// The range of event times, and where the validation cut (`valid_from`) falls in it.
    pub fn time_range(&self, p: &Pipeline, cut: Option<i64>) -> TimeRange {
        let et = p.event_time_col();
        let times = || self.rows.iter().filter_map(|r| r[et].as_i64());
        let (first, last) = (times().min(), times().max());
        TimeRange {
            first: first.map(time::format_timestamp),
            last: last.map(time::format_timestamp),
            events: times().count(),
            before_cut: times().filter(|&t| cut.is_none_or(|v| t < v)).count(),
        }
    }

    /// Refuse a history whose event times cannot be right for the pipeline (see
    /// [`TimeRange::check`]).
    pub fn check_time_range(&self, p: &Pipeline, cut: Option<i64>) -> Result<TimeRange, String> {
        let et = p.event_time_col();
        let latest = self.rows.iter().filter_map(|x| x[et].as_i64()).max();
        self.time_range(p, cut).check(p, cut, latest)
    }
}

impl TimeRange {
    /// Refuse a history whose event times cannot be right for the pipeline, naming the
    /// event-time field and the range found: every time before 1971 (an epoch field in the
    /// wrong unit, most likely), or, with a cut (`valid_from`), no event on one side of it.
    /// `latest`: the newest event time, in ms.
    pub fn check(
        self,
        p: &Pipeline,
        cut: Option<i64>,
        latest: Option<i64>,
    ) -> Result<Self, String> {
        let r = self;
        let fields = p
            .time
            .columns()
            .iter()
            .map(|&c| format!("`{}`", p.layout[c].name))
            .collect::<Vec<_>>()
            .join(", ");
        let (Some(first), Some(last)) = (&r.first, &r.last) else {
            return Ok(r); // no event passed: reported by what counts events
        };
        let range = format!("{} events from {first} to {last}", r.events);
        if latest.is_some_and(|t| t < 31_536_000_000) {
            let hint = match &p.time {
                crate::spec::EventTime::Field {
                    unit: Some(u), col, ..
                } if *u != crate::spec::EpochUnit::S => format!(
                    "; `{}` is read as `unit = \"{}\"`: if it counts seconds, declare \
                     `unit = \"s\"`",
                    p.layout[*col].name,
                    u.name()
                ),
                _ => String::new(),
            };
            return Err(format!(
                "every event time computed from {fields} is before 1971 ({range}){hint}"
            ));
        }
        if let Some(v) = cut {
            let cut = time::format_timestamp(v);
            if r.before_cut == 0 {
                return Err(format!(
                    "no event before valid_from {cut}, so nothing to train on ({range}, times \
                     from {fields})"
                ));
            }
            if r.before_cut == r.events {
                return Err(format!(
                    "no event at or after valid_from {cut}, so nothing to validate on ({range}, \
                     times from {fields})"
                ));
            }
        }
        Ok(r)
    }
}

/// Where a table of the pipeline is: relative paths resolve against `base`.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let candidate = Path::new(path);
    if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        base.join(candidate)
    }
}

/// Run `p` over the history at `events` (CSV); tables are resolved against `base`.
pub fn run(p: &Pipeline, events: &Path, base: &Path) -> Result<OfflineRun, DataError> {
    run_with(p, events, base, None)
}

/// History read as a log rather than a table: the order its records arrived in, and the
/// partition of each (see [`run_with`]).
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Record numbers (0-based, in the file) in the order they arrived; empty: file order.
    pub order: Vec<u32>,
    /// Each record's partition, by record number; empty: all in one partition.
    pub partitions: Vec<u32>,
}

/// [`run`], over a table (`log: None`) or a log. A table has no arrival order: it is sorted by
/// event time and fed through the stages, which refuse what the online engine would refuse on
/// a topic carrying it in that order. A log (a topic's records, or an arrival order) is
/// admitted in its order, per partition, as the online engine in watermark order admits it
/// ([`crate::Admission`]: too far behind the newest event of its partition admitted before it,
/// or from the future), then sorted and fed through the stages: exactly what an
/// [`crate::OrderedEngine`] per partition computes over the same log, when the windows are
/// keyed by the partition key (ties in time and key go by log position: partition, then
/// offset when the records are listed partition by partition).
pub fn run_with(
    p: &Pipeline,
    events: &Path,
    base: &Path,
    log: Option<&Log>,
) -> Result<OfflineRun, DataError> {
    let mut df = read_history(p, events, None)?;
    let total = df.height();
    if let Some(log) = log.filter(|l| !l.order.is_empty()) {
        df = in_log_order(df, &log.order)
            .map_err(|m| DataError::file(&events.display().to_string(), m))?;
    }
    let joins = Joins::load(p, base)?;
    let mut admissions: Vec<crate::Admission> = Vec::new();
    let batch = prepare(p, df, &joins, events, &mut |rec, t| match log {
        Some(log) => {
            let part = log.partitions.get(rec as usize).map_or(0, |&q| q as usize);
            if admissions.len() <= part {
                admissions.resize(part + 1, crate::Admission::default());
            }
            admissions[part].admit(p, t)
        }
        None => Ok(()),
    })?;
    let mut out = OfflineRun {
        filtered: total - batch.kept,
        rejected: batch.rejected,
        table_digests: joins.digests,
        ..Default::default()
    };
    let mut stages = Stages::new(p);
    out.rows.reserve(batch.source.len());
    for (mut row, src) in batch.rows.into_iter().zip(batch.source) {
        let processed = match log {
            // Admitted in log order above, and in event-time order now.
            Some(_) => {
                stages.process_ordered(p, &mut row);
                Ok(())
            }
            None => stages.process(p, &mut row),
        };
        match processed {
            Ok(()) => {
                out.rows.push(row);
                out.source.push(src);
            }
            Err(e) => out.rejected.push((src, e)),
        }
    }
    Ok(out)
}

/// The history's declared fields (typed, with the record number in `__row`), whole or the
/// `slice` (first record, count) of a Parquet file.
fn read_history(
    p: &Pipeline,
    events: &Path,
    slice: Option<(usize, usize)>,
) -> Result<DataFrame, DataError> {
    let (fields, from_strings) = history_columns(p);
    read_table(events, &fields, true, &from_strings, slice)
}

/// [`read_history`] of `slice` of one Parquet file of a history directory, its rows numbered
/// from `first_row`.
fn read_history_part(
    p: &Pipeline,
    part: &read::Part,
    slice: (usize, usize),
    first_row: usize,
) -> Result<DataFrame, DataError> {
    let (fields, from_strings) = history_columns(p);
    read::read_part(part, &fields, &from_strings, Some(slice), Some(first_row))
}

/// The declared fields with their types, and those whose numbers may come as text.
fn history_columns(p: &Pipeline) -> (Vec<(String, FieldType)>, Vec<&str>) {
    let fields = p.fields().iter().map(|c| (c.name.clone(), c.ty)).collect();
    let from_strings = p
        .numbers_from_strings
        .iter()
        .map(|&i| p.layout[i].name.as_str())
        .collect();
    (fields, from_strings)
}

/// The lookup and as-of tables of a pipeline, read once and ready to join (columns renamed to
/// their layout names, the key to `__key`; as-of tables sorted by time, in `__time`).
struct Joins {
    lookups: Vec<(PathBuf, DataFrame)>,
    asofs: Vec<(PathBuf, DataFrame)>,
    /// `(table, sha256)` of every table, for the fitted state.
    digests: Vec<(String, String)>,
}

impl Joins {
    fn load(p: &Pipeline, base: &Path) -> Result<Self, DataError> {
        let mut out = Joins {
            lookups: Vec::new(),
            asofs: Vec::new(),
            digests: Vec::new(),
        };
        for l in &p.lookups {
            let path = resolve(base, &l.path);
            let mut cols = vec![(l.key.clone(), l.key_ty)];
            cols.extend(l.columns.iter().cloned());
            let mut table = read_table(&path, &cols, false, &[], None)?;
            check_unique_keys(&table, &l.key, l.key_ty, &path)?;
            out.digests.push((l.name.clone(), file_digest(&path)?));
            prefix_columns(&mut table, &l.key, &l.columns, &p.layout[l.first_col..])
                .map_err(|e| polars_err(&path, e))?;
            out.lookups.push((path, table));
        }
        for a in &p.asofs {
            let path = resolve(base, &a.path);
            let mut cols = vec![(a.key.clone(), a.key_ty)];
            cols.extend(a.columns.iter().cloned());
            let mut table = read_table(&path, &cols, false, &[], None)?;
            out.digests.push((a.name.clone(), file_digest(&path)?));
            let t = table
                .column(&a.time)
                .map_err(|e| polars_err(&path, e))?
                .clone()
                .with_name(TIME.into());
            table.with_column(t).map_err(|e| polars_err(&path, e))?;
            prefix_columns(&mut table, &a.key, &a.columns, &p.layout[a.first_col..])
                .map_err(|e| polars_err(&path, e))?;
            table = table
                .sort(
                    [TIME],
                    SortMultipleOptions::default().with_maintain_order(true),
                )
                .map_err(|e| polars_err(&path, e))?;
            out.asofs.push((path, table));
        }
        Ok(out)
    }
}

/// Records of history prepared for the stages.
struct Batch {
    /// Layout-length rows, fields and joins filled, in `(event time, partition key, record)`
    /// order.
    rows: Vec<Row>,
    /// Each row's record number.
    source: Vec<u32>,
    /// Records that passed the filters but have no event time or were not admitted.
    rejected: Vec<(u32, EventError)>,
    /// Records that passed the filters.
    kept: usize,
}

/// Filter `df`, compute event times (and `admit` each record with one, in `df`'s order), join
/// the tables, sort, and turn the result into rows: everything before the shared stages.
fn prepare(
    p: &Pipeline,
    mut df: DataFrame,
    joins: &Joins,
    events: &Path,
    admit: &mut dyn FnMut(u32, i64) -> Result<(), EventError>,
) -> Result<Batch, DataError> {
    let mask = filter_mask(&df, p).map_err(|e| polars_err(events, e))?;
    df = df.filter(&mask).map_err(|e| polars_err(events, e))?;
    let kept = df.height();

    // Event time: the same Rust function as online, over the filtered columns.
    let mut rejected = Vec::new();
    let rows_idx = u32_column(&df, ROW).map_err(|e| polars_err(events, e))?;
    // Only the columns the event-time rule reads (a few ints), not whole rows.
    let time_cols = p.time.columns();
    let field_vals: Vec<(usize, Vec<Value>)> = time_cols
        .iter()
        .map(|&c| column_values(&df, &p.layout[c].name, p.layout[c].ty).map(|v| (c, v)))
        .collect::<PolarsResult<_>>()
        .map_err(|e| polars_err(events, e))?;
    let mut times: Vec<Option<i64>> = Vec::with_capacity(df.height());
    let mut scratch: Row = vec![Value::Null; p.n_fields];
    for (i, &rec) in rows_idx.iter().enumerate() {
        for (c, vals) in &field_vals {
            scratch[*c] = vals[i].clone();
        }
        let admitted = eval::event_time(p, &scratch)
            .map_err(EventError::Time)
            .and_then(|t| admit(rec, t).map(|()| t));
        match admitted {
            Ok(t) => times.push(Some(t)),
            Err(e) => {
                rejected.push((rec, e));
                times.push(None);
            }
        }
    }
    drop(field_vals);
    let time_col = Column::new("event_time".into(), times);
    df.with_column(time_col)
        .map_err(|e| polars_err(events, e))?;
    let has_time = df
        .column("event_time")
        .map_err(|e| polars_err(events, e))?
        .is_not_null();
    df = df.filter(&has_time).map_err(|e| polars_err(events, e))?;

    for (l, (path, table)) in p.lookups.iter().zip(&joins.lookups) {
        let mut args = JoinArgs::new(JoinType::Left);
        args.validation = JoinValidation::ManyToOne;
        args.maintain_order = MaintainOrderJoin::Left;
        let on = &p.layout[l.on].name;
        df = df
            .join(table, [on.as_str()], [KEY], args, None)
            .map_err(|e| {
                DataError::file(
                    &path.display().to_string(),
                    format!("lookup `{}`: {e}", l.name),
                )
            })?;
        df = drop_helpers(df);
    }

    // Ties in time go by partition key (nulls first), then file order: the order a merge
    // behind a watermark gives a window keyed by another column (README, repartitioning).
    let key_name = p.layout[p.key].name.as_str();
    df = df
        .sort(
            ["event_time", key_name],
            SortMultipleOptions::default()
                .with_maintain_order(true)
                .with_nulls_last(false),
        )
        .map_err(|e| polars_err(events, e))?;

    for (a, (path, table)) in p.asofs.iter().zip(&joins.asofs) {
        let on = p.layout[a.on].name.as_str();
        let tolerance = a.tolerance_ms.map(AnyValue::Int64);
        df = df
            .join_asof_by(
                table,
                "event_time",
                TIME,
                [on],
                [KEY],
                AsofStrategy::Backward,
                tolerance,
                true,
                false,
            )
            .map_err(|e| {
                DataError::file(
                    &path.display().to_string(),
                    format!("as-of join `{}`: {e}", a.name),
                )
            })?;
        df = drop_helpers(df);
    }

    // Everything up to the derived columns before the windows (or the window columns) comes
    // from polars; the rest from the shared stages.
    let joined = if p.pre_derives.is_empty() {
        p.windows
            .first()
            .map_or(p.layout.len() - p.derives.len(), |w| w.first_col)
    } else {
        p.pre_derive_first_col
    };
    let columns: Vec<Vec<Value>> = p.layout[..joined]
        .iter()
        .map(|c| column_values(&df, &c.name, c.ty))
        .collect::<PolarsResult<_>>()
        .map_err(|e| polars_err(events, e))?;
    let source = u32_column(&df, ROW).map_err(|e| polars_err(events, e))?;
    drop(df);

    // Transpose by moving each value into its row: no clones of text.
    let mut rows: Vec<Row> = (0..source.len())
        .map(|_| Vec::with_capacity(p.layout.len()))
        .collect();
    for col in columns {
        for (row, v) in rows.iter_mut().zip(col) {
            row.push(v);
        }
    }
    for row in &mut rows {
        row.resize(p.layout.len(), Value::Null);
    }
    Ok(Batch {
        rows,
        source,
        rejected,
        kept,
    })
}

/// The rows of `df` (a whole file, with its row index) in the order of a log: `order` holds
/// every record number once.
fn in_log_order(df: DataFrame, order: &[u32]) -> Result<DataFrame, String> {
    let n = df.height();
    let mut seen = vec![false; n];
    for &i in order {
        match seen.get_mut(i as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(format!(
                    "log order names record {i} twice or beyond the {n} records"
                ));
            }
        }
    }
    if order.len() != n {
        return Err(format!(
            "log order has {} records, the file {n}",
            order.len()
        ));
    }
    let idx = IdxCa::from_vec(
        "order".into(),
        order.iter().map(|&i| i as IdxSize).collect(),
    );
    df.take(&idx).map_err(|e| e.to_string())
}

/// Refuse a lookup table whose key column holds a value twice, naming the value and both lines
/// (the join would otherwise fail inside polars without either).
fn check_unique_keys(
    table: &DataFrame,
    key: &str,
    ty: FieldType,
    path: &Path,
) -> Result<(), DataError> {
    let file = path.display().to_string();
    let keys = column_values(table, key, ty).map_err(|e| polars_err(path, e))?;
    let mut first = std::collections::HashMap::with_capacity(keys.len());
    for (i, v) in keys.iter().enumerate() {
        let Some(k) = crate::value::Key::of(v) else {
            continue; // null keys never match
        };
        // Line 1 is the header.
        if let Some(was) = first.insert(k.clone(), i + 2) {
            return Err(crate::tables::duplicate_key(&file, i + 2, key, &k, was));
        }
    }
    Ok(())
}

fn polars_err(path: &Path, e: PolarsError) -> DataError {
    DataError::file(&path.display().to_string(), e.to_string())
}

fn file_digest(path: &Path) -> Result<String, DataError> {
    std::fs::read(path)
        .map(|b| sha256_hex(&b))
        .map_err(|e| DataError::file(&path.display().to_string(), e.to_string()))
}

/// Rename a table's key to `__key` and its other columns to their layout names.
fn prefix_columns(
    table: &mut DataFrame,
    key: &str,
    columns: &[(String, FieldType)],
    layout: &[crate::spec::Column],
) -> PolarsResult<()> {
    table.rename(key, KEY.into())?;
    for ((name, _), target) in columns.iter().zip(layout) {
        table.rename(name, target.name.as_str().into())?;
    }
    Ok(())
}

fn drop_helpers(df: DataFrame) -> DataFrame {
    let helpers: Vec<String> = df
        .get_column_names()
        .into_iter()
        .filter(|n| n.starts_with("__") && n.as_str() != ROW)
        .map(|n| n.to_string())
        .collect();
    helpers.iter().fold(df, |d, n| d.drop(n).unwrap_or(d))
}

fn filter_mask(df: &DataFrame, p: &Pipeline) -> PolarsResult<BooleanChunked> {
    let mut mask = BooleanChunked::full("mask".into(), true, df.height());
    for f in &p.filters {
        let m = predicate_mask(df, p, f)?.fill_null_with_values(false)?;
        mask = &mask & &m;
    }
    Ok(mask)
}

/// A predicate as polars comparisons. Null compares to null, which filters out, as online.
fn predicate_mask(df: &DataFrame, p: &Pipeline, f: &Predicate) -> PolarsResult<BooleanChunked> {
    let col = df
        .column(&p.layout[f.col].name)?
        .as_materialized_series()
        .clone();
    let cmp_one = |lit: &Literal, op: CmpOp| -> PolarsResult<BooleanChunked> {
        match lit {
            Literal::Str(s) => {
                let s = s.as_str();
                match op {
                    CmpOp::Ne => col.not_equal(s),
                    _ => col.equal(s),
                }
            }
            Literal::Int(i) if col.dtype() == &DataType::Int64 => compare_num(&col, op, *i),
            Literal::Int(i) => compare_num(&col.cast(&DataType::Float64)?, op, *i as f64),
            Literal::Float(x) => compare_num(&col.cast(&DataType::Float64)?, op, *x),
        }
    };
    match f.op {
        CmpOp::NotNull => Ok(col.is_not_null()),
        CmpOp::IsNull => Ok(col.is_null()),
        CmpOp::In => {
            let mut any = BooleanChunked::full("in".into(), false, col.len());
            for lit in &f.values {
                any = &any | &cmp_one(lit, CmpOp::Eq)?.fill_null_with_values(false)?;
            }
            Ok(any)
        }
        op => match f.values.first() {
            Some(lit) => cmp_one(lit, op),
            None => Ok(BooleanChunked::full("none".into(), false, col.len())),
        },
    }
}

fn compare_num<T>(s: &Series, op: CmpOp, v: T) -> PolarsResult<BooleanChunked>
where
    Series: ChunkCompareEq<T, Item = PolarsResult<BooleanChunked>>
        + ChunkCompareIneq<T, Item = PolarsResult<BooleanChunked>>,
    T: Copy,
{
    match op {
        CmpOp::Eq => s.equal(v),
        CmpOp::Ne => s.not_equal(v),
        CmpOp::Lt => s.lt(v),
        CmpOp::Le => s.lt_eq(v),
        CmpOp::Gt => s.gt(v),
        _ => s.gt_eq(v),
    }
}

fn u32_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<u32>> {
    let c = df.column(name)?.cast(&DataType::UInt32)?;
    Ok(c.u32()?.iter().map(|v| v.unwrap_or(u32::MAX)).collect())
}

/// A column as values of the declared type (timestamps are already epoch ms).
fn column_values(df: &DataFrame, name: &str, ty: FieldType) -> PolarsResult<Vec<Value>> {
    let c = df.column(name)?;
    Ok(match ty {
        FieldType::Int | FieldType::Timestamp => c
            .cast(&DataType::Int64)?
            .i64()?
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Int))
            .collect(),
        FieldType::Float => c
            .f64()?
            .iter()
            .map(|v| v.map_or(Value::Null, Value::float))
            .collect(),
        FieldType::Str => {
            // Repeated text shares one allocation: up to SHARED distinct values per column (a
            // column of airports or carriers), then each new value gets its own.
            const SHARED: usize = 4096;
            let mut seen: crate::value::Map<&str, Arc<str>> = crate::value::Map::default();
            let text = c.str()?;
            text.iter()
                .map(|v| match v {
                    None => Value::Null,
                    Some(s) => Value::Str(match seen.get(s) {
                        Some(a) => a.clone(),
                        None => {
                            let a: Arc<str> = Arc::from(s);
                            if seen.len() < SHARED {
                                seen.insert(s, a.clone());
                            }
                            a
                        }
                    }),
                })
                .collect()
        }
    })
}
