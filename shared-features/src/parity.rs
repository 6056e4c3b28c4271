//! The parity check: every event through both engines, every vector compared bit for bit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::engine::{OnlineEngine, Split, Stages};
use crate::error::{DataError, EventError};
use crate::events::{csv_to_json, event_meta, event_order};
use crate::fitted::{FittedState, fingerprint};
use crate::offline;
use crate::spec::Pipeline;
use crate::tables::Tables;
use crate::time::format_timestamp;
use crate::value::{Key, Row, Value};

/// The outcome of a parity run.
#[derive(Debug, Serialize)]
pub struct ParityReport {
    /// Records in the history file.
    pub records: usize,
    /// Feature vectors compared: events that either engine turned into a vector.
    pub events: usize,
    /// Vectors identical in every bit, and every layout column identical too.
    pub identical: usize,
    /// Events that a filter dropped (offline count; online must drop the same ones).
    pub filtered: usize,
    /// Events refused by both engines, for the same reason (no event time, future, late).
    pub rejected: usize,
    /// Those refusals by kind ([`crate::EventError::kind`]).
    pub rejected_by_kind: BTreeMap<&'static str, usize>,
    /// For each lookup and as-of join, the events it found a row for (offline).
    pub joined: Vec<(String, usize)>,
    /// Layout columns compared per event.
    pub columns: usize,
    /// Encoded vector width.
    pub width: usize,
    /// The fingerprint of spec plus fitted state.
    pub fingerprint: String,
    /// Offline engine wall time, seconds (read, filter, join, sort, windows).
    pub offline_seconds: f64,
    /// Online engine wall time, seconds (decode, filter, join, windows), excluding the feed's
    /// CSV-to-JSON conversion.
    pub online_seconds: f64,
    /// The event times found offline (first, last, how many before `valid_from`).
    pub event_times: crate::offline::TimeRange,
    /// What parses but may not be what was meant (an empty side of the split), with numbers.
    pub warnings: Vec<String>,
    /// The first difference, in event order.
    pub first_mismatch: Option<Mismatch>,
}

/// Where the engines disagree.
#[derive(Debug, Serialize, Clone)]
pub struct Mismatch {
    /// Line of the event in the history file.
    pub line: usize,
    /// The event's time, when known.
    pub event_time: Option<String>,
    /// The column or vector slot that differs (`<presence>` when one engine has no vector,
    /// `<refusal>` when both refuse the event for different reasons).
    pub feature: String,
    /// The offline value.
    pub offline: String,
    /// The online value.
    pub online: String,
}

/// Run `p` over `events` offline and online, fit the encoding on the training split of the
/// offline rows, and compare every event's row and encoded vector.
pub fn check(p: &Arc<Pipeline>, events: &Path, base: &Path) -> Result<ParityReport, DataError> {
    check_with(p, events, base, None)
}

/// [`check`], the online side run as the scorer runs a pipeline that repartitions on a topic
/// of `partitions` partitions (when given): each event goes to a partition by its key and
/// through that partition's upstream engine ([`Split::Upstream`]); the admitted events are
/// then merged in `(event time, partition key, partition, position)` order and run through
/// the downstream stages ([`Split::Downstream`]), as the merge behind the watermark orders
/// them. The windows keyed by another column are the ones this changes.
pub fn check_with(
    p: &Arc<Pipeline>,
    events: &Path,
    base: &Path,
    partitions: Option<u32>,
) -> Result<ParityReport, DataError> {
    let started = Instant::now();
    let off = offline::run(p, events, base)?;
    let offline_seconds = started.elapsed().as_secs_f64();
    let file = events.display().to_string();
    // Times before 1971 are refused; a split with one side empty is legal for parity (a slice
    // of history), but said.
    off.check_time_range(p, None)
        .map_err(|m| DataError::file(&file, m))?;
    let event_times = off.time_range(p, p.valid_from);
    let mut warnings = Vec::new();
    if let Some(v) = p.valid_from
        && event_times.events > 0
    {
        let cut = crate::time::format_timestamp(v);
        if event_times.before_cut == 0 {
            warnings.push(format!(
                "no event before valid_from {cut}: the scaler and vocabularies are fitted on \
                 nothing"
            ));
        } else if event_times.before_cut == event_times.events {
            warnings.push(format!(
                "no event at or after valid_from {cut}: only training-side events are compared"
            ));
        }
    }
    let et = p.event_time_col();
    let train = off.rows.iter().filter(|r| {
        p.valid_from
            .is_none_or(|v| r[et].as_i64().is_some_and(|t| t < v))
    });
    let fitted = FittedState::fit(p, train.map(|r| &r[..]), off.table_digests.clone());

    let bytes = std::fs::read(events).map_err(|e| DataError::file(&file, e.to_string()))?;
    // The online side sees each event as JSON: a CSV row converted, or a JSON line as it is.
    // `lines[i]` is the file line of record i, for messages.
    let ext = events.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (jsons, lines): (Vec<Vec<u8>>, Vec<usize>) = if matches!(ext, "jsonl" | "ndjson" | "json") {
        bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .map(|(i, l)| (l.to_vec(), i + 1))
            .unzip()
    } else if ext == "parquet" {
        return Err(DataError::file(
            &file,
            "the parity check reads CSV or JSON-lines history, not Parquet",
        ));
    } else {
        let jsons = csv_to_json(p, &bytes, &file)?;
        let lines = (2..jsons.len() + 2).collect();
        (jsons, lines)
    };
    drop(bytes);
    let tables = Tables::load(p, |path| {
        std::fs::read(offline::resolve(base, path)).map_err(|e| e.to_string())
    })?;
    let order = event_order(p, &jsons);

    // The kind of refusal offline, by record: online must refuse the same events alike.
    let mut refused_as: Vec<Option<&'static str>> = vec![None; jsons.len()];
    for (src, e) in &off.rejected {
        if let Some(r) = refused_as.get_mut(*src as usize) {
            *r = Some(e.kind());
        }
    }
    let refused: Vec<bool> = refused_as.iter().map(Option::is_some).collect();
    let mut by_record: Vec<Option<u32>> = vec![None; jsons.len()];
    for (pos, &src) in off.source.iter().enumerate() {
        if let Some(slot) = by_record.get_mut(src as usize) {
            *slot = Some(pos as u32);
        }
    }
    let mut report = ParityReport {
        records: jsons.len(),
        events: 0,
        identical: 0,
        filtered: off.filtered,
        rejected: 0,
        rejected_by_kind: BTreeMap::new(),
        joined: joined_counts(p, &off.rows),
        columns: p.layout.len(),
        width: fitted.width(),
        fingerprint: fingerprint(p, &fitted),
        offline_seconds,
        online_seconds: 0.0,
        event_times,
        warnings,
        first_mismatch: None,
    };
    let names = fitted.names();
    let tables = Arc::new(tables);
    let mut engine = OnlineEngine::new(p.clone(), tables.clone());
    let (mut v_off, mut v_on) = (Vec::new(), Vec::new());
    let online_started = Instant::now();
    let split = partitions.map(|n| repartitioned(p, &tables, &jsons, &order, n.max(1)));
    let mut compare_time = std::time::Duration::ZERO;
    for &rec in &order {
        let online = match &split {
            Some(out) => match &out[rec] {
                Ok(row) => Ok(row.as_deref()),
                Err(e) => Err(e.clone()),
            },
            None => engine.process(&jsons[rec]),
        };
        let cmp_started = Instant::now();
        let offline_row = by_record[rec].map(|pos| &off.rows[pos as usize]);
        let line = lines[rec];
        let mismatch = match (offline_row, online) {
            (None, Ok(None)) if !refused[rec] => {
                compare_time += cmp_started.elapsed();
                continue;
            }
            (None, Err(e)) if refused_as[rec] == Some(e.kind()) => {
                report.rejected += 1;
                *report.rejected_by_kind.entry(e.kind()).or_default() += 1;
                compare_time += cmp_started.elapsed();
                continue;
            }
            (None, Err(e)) if refused[rec] => {
                report.events += 1;
                Some(Mismatch {
                    line,
                    event_time: None,
                    feature: "<refusal>".into(),
                    offline: refused_as[rec].unwrap_or_default().into(),
                    online: format!("{}: {e}", e.kind()),
                })
            }
            (None, Ok(None) | Err(_)) => Some(Mismatch {
                line,
                event_time: None,
                feature: "<presence>".into(),
                offline: if refused[rec] { "refused" } else { "filtered" }.into(),
                online: if refused[rec] { "filtered" } else { "refused" }.into(),
            }),
            (Some(row), Ok(Some(on))) => {
                report.events += 1;
                fitted.transform(p, row, &mut v_off);
                fitted.transform(p, on, &mut v_on);
                first_difference(p, &names, row, on, &v_off, &v_on).map(|(feature, a, b)| {
                    Mismatch {
                        line,
                        event_time: row[et].as_i64().map(format_timestamp),
                        feature,
                        offline: a,
                        online: b,
                    }
                })
            }
            (Some(row), online) => {
                let online_refused = online.is_err();
                report.events += 1;
                Some(Mismatch {
                    line,
                    event_time: row[et].as_i64().map(format_timestamp),
                    feature: "<presence>".into(),
                    offline: "a vector".into(),
                    online: if online_refused {
                        "refused"
                    } else {
                        "filtered"
                    }
                    .into(),
                })
            }
            (None, Ok(Some(on))) => {
                report.events += 1;
                Some(Mismatch {
                    line,
                    event_time: on[et].as_i64().map(format_timestamp),
                    feature: "<presence>".into(),
                    offline: if refused[rec] { "refused" } else { "filtered" }.into(),
                    online: "a vector".into(),
                })
            }
        };
        match mismatch {
            None => report.identical += 1,
            Some(m) => {
                if report.first_mismatch.is_none() {
                    report.first_mismatch = Some(m);
                }
            }
        }
        compare_time += cmp_started.elapsed();
    }
    report.online_seconds = (online_started.elapsed() - compare_time).as_secs_f64();
    Ok(report)
}

/// The online outcome of every record when the scorer repartitions (see [`check_with`]).
fn repartitioned(
    p: &Arc<Pipeline>,
    tables: &Arc<Tables>,
    jsons: &[Vec<u8>],
    order: &[usize],
    partitions: u32,
) -> Vec<Result<Option<Row>, EventError>> {
    let n = partitions as usize;
    let keys = event_meta(p, jsons);
    let mut out: Vec<Result<Option<Row>, EventError>> =
        (0..jsons.len()).map(|_| Ok(None)).collect();
    let mut upstream: Vec<OnlineEngine> = (0..n)
        .map(|_| OnlineEngine::new(p.clone(), tables.clone()).with_split(Split::Upstream))
        .collect();
    let mut next = vec![0usize; n];
    let mut merged: Vec<(i64, Option<Key>, usize, usize, usize)> = Vec::new();
    for &rec in order {
        // A keyed partitioner (FNV-1a here: which one does not matter, only that a key stays
        // in one partition); an event without a key goes anywhere.
        let q = match &keys[rec].0 {
            Some(k) => {
                (k.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                }) % n as u64) as usize
            }
            None => rec % n,
        };
        match upstream[q].process(&jsons[rec]) {
            Ok(Some(row)) => {
                let t = row[p.event_time_col()].as_i64().unwrap_or_default();
                merged.push((t, Key::of(&row[p.key]), q, next[q], rec));
                out[rec] = Ok(Some(row.to_vec()));
            }
            Ok(None) => {}
            Err(e) => out[rec] = Err(e),
        }
        next[q] += 1;
    }
    merged.sort_unstable();
    let mut downstream = Stages::new(p);
    for (.., rec) in merged {
        if let Ok(Some(row)) = &mut out[rec] {
            // Downstream refuses nothing.
            let _ = downstream.process_split(p, row, Split::Downstream);
        }
    }
    out
}

fn first_difference(
    p: &Pipeline,
    names: &[String],
    a: &[Value],
    b: &[Value],
    va: &[f64],
    vb: &[f64],
) -> Option<(String, String, String)> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return Some((p.layout[i].name.clone(), x.to_string(), y.to_string()));
        }
    }
    for (i, (x, y)) in va.iter().zip(vb).enumerate() {
        if x.to_bits() != y.to_bits() {
            return Some((
                names.get(i).cloned().unwrap_or_default(),
                format!("{x:?}"),
                format!("{y:?}"),
            ));
        }
    }
    (va.len() != vb.len()).then(|| ("<width>".into(), va.len().to_string(), vb.len().to_string()))
}

/// Events for which each join found a row: some column it adds is not null.
fn joined_counts(p: &Pipeline, rows: &[Vec<Value>]) -> Vec<(String, usize)> {
    let spans = p
        .lookups
        .iter()
        .map(|l| (l.name.clone(), l.first_col, l.columns.len()))
        .chain(
            p.asofs
                .iter()
                .map(|a| (a.name.clone(), a.first_col, a.columns.len())),
        );
    spans
        .map(|(name, first, n)| {
            let hits = rows
                .iter()
                .filter(|r| r[first..first + n].iter().any(|v| !v.is_null()))
                .count();
            (name, hits)
        })
        .collect()
}
