//! The parity check: every event through both engines, every vector compared bit for bit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::engine::EventDecoder;
use crate::engine::{OnlineEngine, Split, Stages};
use crate::error::{DataError, EventError};
use crate::events::{Decode, csv_to_json, event_meta_with, event_order_with};
use crate::fitted::{FittedState, fingerprint};
use crate::offline;
use crate::ordered::{Order, OrderedEngine};
use crate::spec::Pipeline;
use crate::tables::Tables;
use crate::time::format_timestamp;
use crate::value::{Key, Row, Value};
use crate::wire::Format;

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
    /// How the online side was fed: `sorted` (event-time order), `repartitioned`, or under
    /// disorder `arrival` (each event as it arrives) or `watermark` (behind the watermark).
    pub mode: &'static str,
    /// The arrival order, under disorder.
    pub disorder: Option<DisorderReport>,
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

/// How the online side is fed.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    /// Run the online side as the scorer runs a pipeline that repartitions on a topic of this
    /// many partitions (see [`check_with`]).
    pub partitions: Option<u32>,
    /// Deliver the events in a realistic arrival order instead of sorted (see [`Disorder`]).
    pub disorder: Option<Disorder>,
    /// The history is a topic's log, in the order the topic delivers it (see [`TopicLog`]).
    pub log: Option<TopicLog>,
}

/// History read from a topic: the file lists the records partition by partition, each
/// partition in offset order. The online side runs one engine per partition, as `scorer run`
/// and `scorer replay` do, fed in offset order; the offline side reads the file as that log
/// (`offline::run_with`). Only windows keyed by the partition key can be checked over more
/// than one partition (the scorer repartitions the others behind a merge).
#[derive(Clone, Debug, Default)]
pub struct TopicLog {
    /// Each record's partition, by record number.
    pub partitions: Vec<u32>,
    /// The records to compare (the range trained on); the others only warm the windows.
    /// Empty: all.
    pub compared: Vec<bool>,
    /// How each partition's engine orders what arrives.
    pub order: Order,
}

/// A realistic arrival order, and how the online engine orders what arrives.
///
/// Each event is delayed after its event time, as a topic fed by many producers delivers it:
/// by a uniform draw within the pipeline's lateness, and one event in 200 by more than the
/// lateness (up to three times it, at least an hour more). Events arrive by event time plus
/// delay, so keys interleave and an event often arrives after others dated later. The offline
/// engine reads the same events as a log in that arrival order (`offline::run_with`): it
/// refuses, in arrival order, the events more than the lateness behind the newest one before
/// them, then sorts the rest.
#[derive(Clone, Copy, Debug)]
pub struct Disorder {
    /// Seed of the delays (ChaCha8: the same order on every machine).
    pub seed: u64,
    /// How the online engine processes what arrives.
    pub order: Order,
}

/// What the disorder was, for the report.
#[derive(Debug, Serialize, Clone)]
pub struct DisorderReport {
    /// The seed.
    pub seed: u64,
    /// Events that arrived after an event dated later than them.
    pub out_of_order: usize,
    /// Events delayed by more than the lateness.
    pub delayed_past_lateness: usize,
}

/// Run `p` over `events` offline and online, fit the encoding on the training split of the
/// offline rows, and compare every event's row and encoded vector.
pub fn check(p: &Arc<Pipeline>, events: &Path, base: &Path) -> Result<ParityReport, DataError> {
    check_feed(p, events, base, Feed::default())
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
    check_feed(
        p,
        events,
        base,
        Feed {
            partitions,
            ..Feed::default()
        },
    )
}

/// [`check`], the online side fed as `feed` says.
pub fn check_feed(
    p: &Arc<Pipeline>,
    events: &Path,
    base: &Path,
    feed: Feed,
) -> Result<ParityReport, DataError> {
    let file = events.display().to_string();
    if feed.disorder.is_some() && feed.partitions.is_some() {
        return Err(DataError::file(
            &file,
            "a parity check under disorder runs one partition: --disorder with --partitions is \
             not supported",
        ));
    }
    if feed.log.is_some() && (feed.disorder.is_some() || feed.partitions.is_some()) {
        return Err(DataError::file(
            &file,
            "a topic's log arrives in its own order: --disorder and --partitions do not apply",
        ));
    }
    if let Some(log) = &feed.log
        && log.partitions.iter().any(|&q| q != log.partitions[0])
        && p.repartition_windows().next().is_some()
    {
        return Err(DataError::file(
            &file,
            "the topic has more than one partition and the pipeline has windows keyed by \
             another column than the partition key: the check needs one partition",
        ));
    }
    if events.is_dir() {
        return Err(DataError::file(
            &file,
            "the parity check reads a CSV or JSON-lines file, not a directory of Parquet files",
        ));
    }
    let read = || {
        std::fs::read(events).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::file(&file, offline::missing_file(events)),
            _ => DataError::file(&file, e.to_string()),
        })
    };
    // The online side sees each event as JSON (a CSV row converted, or a JSON line as it is) or,
    // from an Avro file, as the record a topic would carry. `lines[i]` is the file line (the
    // record number in an Avro file) of record i, for messages.
    let ext = events.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut format = Format::Json;
    let (jsons, lines): (Vec<Vec<u8>>, Vec<usize>) = if ext == "avro" {
        if !events.exists() {
            return Err(DataError::file(&file, offline::missing_file(events)));
        }
        let (f, records) =
            crate::wire::container_records(events).map_err(|m| DataError::file(&file, m))?;
        format = f;
        let lines = (1..=records.len()).collect();
        (records, lines)
    } else if matches!(ext, "jsonl" | "ndjson" | "json") {
        read()?
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
        let jsons = csv_to_json(p, &read()?, &file)?;
        let lines = (2..jsons.len() + 2).collect();
        (jsons, lines)
    };
    let mut decoder = EventDecoder::new(p, &format);
    let decode: &mut Decode = &mut |b, row| decoder.decode(b, row);
    let sorted = event_order_with(p, &jsons, decode);
    let (order, disorder) = match feed.disorder {
        None => (sorted, None),
        Some(d) => {
            let (arrival, report) = arrival_order_with(p, &jsons, &sorted, d.seed, decode);
            (arrival, Some(report))
        }
    };
    let log = match &feed.log {
        Some(t) => Some(offline::Log {
            order: Vec::new(),
            partitions: t.partitions.clone(),
        }),
        None => disorder.is_some().then(|| offline::Log {
            order: order.iter().map(|&i| i as u32).collect(),
            partitions: Vec::new(),
        }),
    };

    let started = Instant::now();
    let off = offline::run_with(p, events, base, log.as_ref())?;
    let offline_seconds = started.elapsed().as_secs_f64();
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
    let tables = Tables::load(p, |path| {
        std::fs::read(offline::resolve(base, path)).map_err(|e| e.to_string())
    })?;

    let mode = match (&feed.log, feed.disorder, feed.partitions) {
        (Some(t), ..) => t.order.name(),
        (_, Some(d), _) => d.order.name(),
        (_, None, Some(_)) => "repartitioned",
        (_, None, None) => "sorted",
    };
    let mut cmp = Comparer::new(p, &off, &fitted, &lines, jsons.len());
    if let Some(t) = &feed.log {
        cmp.compared.clone_from(&t.compared);
    }
    cmp.report.offline_seconds = offline_seconds;
    cmp.report.event_times = event_times;
    cmp.report.warnings = warnings;
    cmp.report.mode = mode;
    cmp.report.disorder = disorder;
    let tables = Arc::new(tables);
    let online_started = Instant::now();
    match (&feed.log, feed.disorder.map(|d| d.order), feed.partitions) {
        (Some(t), ..) => topic_log(p, &tables, &jsons, &format, t, &mut cmp),
        (_, Some(Order::Watermark), _) => {
            let mut engine = OrderedEngine::new(p.clone(), tables.clone()).with_format(&format);
            for &rec in &order {
                match engine.push(&jsons[rec], rec as u64) {
                    Ok(true) => {}
                    Ok(false) => cmp.compare(rec, Ok(None)),
                    Err(e) => cmp.compare(rec, Err(e)),
                }
                while let Some((tag, row)) = engine.next_ready() {
                    cmp.compare(tag as usize, Ok(Some(row)));
                }
            }
            engine.finish();
            while let Some((tag, row)) = engine.next_ready() {
                cmp.compare(tag as usize, Ok(Some(row)));
            }
        }
        (_, _, Some(n)) => {
            let meta = event_meta_with(p, &jsons, decode);
            let out = repartitioned(p, &tables, (&jsons, &meta, &format), &order, n.max(1));
            for &rec in &order {
                let online = match &out[rec] {
                    Ok(row) => Ok(row.as_deref()),
                    Err(e) => Err(e.clone()),
                };
                cmp.compare(rec, online);
            }
        }
        _ => {
            let mut engine = OnlineEngine::new(p.clone(), tables.clone()).with_format(&format);
            for &rec in &order {
                let online = engine.process(&jsons[rec]);
                cmp.compare(rec, online);
            }
        }
    }
    let mut report = cmp.report;
    report.online_seconds = (online_started.elapsed() - cmp.time).as_secs_f64();
    Ok(report)
}

/// Feed a topic's log to one engine per partition, in offset order, into `cmp`.
fn topic_log(
    p: &Arc<Pipeline>,
    tables: &Arc<Tables>,
    jsons: &[Vec<u8>],
    format: &Format,
    log: &TopicLog,
    cmp: &mut Comparer<'_>,
) {
    let n = log.partitions.iter().max().map_or(1, |&q| q as usize + 1);
    let part = |rec: usize| log.partitions.get(rec).map_or(0, |&q| q as usize);
    match log.order {
        Order::Arrival => {
            let mut engines: Vec<OnlineEngine> = (0..n)
                .map(|_| OnlineEngine::new(p.clone(), tables.clone()).with_format(format))
                .collect();
            for (rec, json) in jsons.iter().enumerate() {
                let online = engines[part(rec)].process(json);
                cmp.compare(rec, online);
            }
        }
        Order::Watermark => {
            let mut engines: Vec<OrderedEngine> = (0..n)
                .map(|_| OrderedEngine::new(p.clone(), tables.clone()).with_format(format))
                .collect();
            let drain = |engine: &mut OrderedEngine, cmp: &mut Comparer<'_>| {
                while let Some((tag, row)) = engine.next_ready() {
                    cmp.compare(tag as usize, Ok(Some(row)));
                }
            };
            for (rec, json) in jsons.iter().enumerate() {
                let engine = &mut engines[part(rec)];
                match engine.push(json, rec as u64) {
                    Ok(true) => {}
                    Ok(false) => cmp.compare(rec, Ok(None)),
                    Err(e) => cmp.compare(rec, Err(e)),
                }
                drain(engine, cmp);
            }
            for engine in &mut engines {
                engine.finish();
                drain(engine, cmp);
            }
        }
    }
}

/// The records in a realistic arrival order (see [`Disorder`]), from their sorted order
/// ([`crate::events::event_order`]).
pub fn arrival_order(
    p: &Arc<Pipeline>,
    jsons: &[Vec<u8>],
    sorted: &[usize],
    seed: u64,
) -> (Vec<usize>, DisorderReport) {
    let mut d = crate::decode::Decoder::new(p);
    arrival_order_with(p, jsons, sorted, seed, &mut |b, row| d.decode(b, row))
}

/// [`arrival_order`] of events in another value format, decoded by `decode`.
pub fn arrival_order_with(
    p: &Arc<Pipeline>,
    events: &[Vec<u8>],
    sorted: &[usize],
    seed: u64,
    decode: &mut Decode,
) -> (Vec<usize>, DisorderReport) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let meta = event_meta_with(p, events, decode);
    let lateness = p.lateness_ms.max(0);
    let past = lateness.max(3_600_000);
    let mut delayed_past_lateness = 0;
    // An event without a time (refused anyway) arrives with the one before it in time order.
    let mut last = i64::MIN;
    let mut arrivals: Vec<(i64, usize, usize)> = sorted
        .iter()
        .enumerate()
        .map(|(pos, &rec)| {
            if let Some(t) = meta[rec].1 {
                let delay = if rng.random_bool(1.0 / 200.0) {
                    delayed_past_lateness += 1;
                    lateness + rng.random_range(1..=2 * past)
                } else {
                    rng.random_range(0..=lateness)
                };
                last = t.saturating_add(delay);
            }
            (last, pos, rec)
        })
        .collect();
    arrivals.sort_unstable();
    let order: Vec<usize> = arrivals.iter().map(|&(.., rec)| rec).collect();
    let mut newest = i64::MIN;
    let mut out_of_order = 0;
    for &rec in &order {
        if let Some(t) = meta[rec].1 {
            out_of_order += usize::from(t < newest);
            newest = newest.max(t);
        }
    }
    (
        order,
        DisorderReport {
            seed,
            out_of_order,
            delayed_past_lateness,
        },
    )
}

/// Compares each record's online outcome with the offline engine's, into a report.
struct Comparer<'a> {
    p: &'a Pipeline,
    off: &'a offline::OfflineRun,
    fitted: &'a FittedState,
    names: Vec<String>,
    lines: &'a [usize],
    /// The kind of refusal offline, by record: online must refuse the same events alike.
    refused_as: Vec<Option<&'static str>>,
    /// Each record's row in the offline run.
    by_record: Vec<Option<u32>>,
    v_off: Vec<f64>,
    v_on: Vec<f64>,
    report: ParityReport,
    /// Time spent comparing, left out of the online engine's time.
    time: std::time::Duration,
    /// The records to compare, by record number; empty: all.
    compared: Vec<bool>,
}

impl<'a> Comparer<'a> {
    fn new(
        p: &'a Pipeline,
        off: &'a offline::OfflineRun,
        fitted: &'a FittedState,
        lines: &'a [usize],
        records: usize,
    ) -> Self {
        let mut refused_as: Vec<Option<&'static str>> = vec![None; records];
        for (src, e) in &off.rejected {
            if let Some(r) = refused_as.get_mut(*src as usize) {
                *r = Some(e.kind());
            }
        }
        let mut by_record: Vec<Option<u32>> = vec![None; records];
        for (pos, &src) in off.source.iter().enumerate() {
            if let Some(slot) = by_record.get_mut(src as usize) {
                *slot = Some(pos as u32);
            }
        }
        let report = ParityReport {
            records,
            events: 0,
            identical: 0,
            filtered: off.filtered,
            rejected: 0,
            rejected_by_kind: BTreeMap::new(),
            joined: joined_counts(p, &off.rows),
            columns: p.layout.len(),
            width: fitted.width(),
            fingerprint: fingerprint(p, fitted),
            mode: "sorted",
            disorder: None,
            offline_seconds: 0.0,
            online_seconds: 0.0,
            event_times: Default::default(),
            warnings: Vec::new(),
            first_mismatch: None,
        };
        Self {
            p,
            off,
            fitted,
            names: fitted.names(),
            lines,
            refused_as,
            by_record,
            v_off: Vec::new(),
            v_on: Vec::new(),
            report,
            time: std::time::Duration::ZERO,
            compared: Vec::new(),
        }
    }

    /// Record `rec`'s online outcome: `Ok(None)` filtered, `Err` refused, else its row.
    fn compare(&mut self, rec: usize, online: Result<Option<&[Value]>, EventError>) {
        if self.compared.get(rec) == Some(&false) {
            return;
        }
        let started = Instant::now();
        let mismatch = self.mismatch(rec, online);
        match mismatch {
            Some(None) => self.report.identical += 1,
            // The earliest line, whatever order the outcomes came in.
            Some(Some(m))
                if self
                    .report
                    .first_mismatch
                    .as_ref()
                    .is_none_or(|f| m.line < f.line) =>
            {
                self.report.first_mismatch = Some(m);
            }
            _ => {}
        }
        self.time += started.elapsed();
    }

    /// `None`: nothing to compare (filtered, or refused alike by both); `Some(None)`: an
    /// identical vector; `Some(Some(m))`: a difference.
    fn mismatch(
        &mut self,
        rec: usize,
        online: Result<Option<&[Value]>, EventError>,
    ) -> Option<Option<Mismatch>> {
        let (p, et) = (self.p, self.p.event_time_col());
        let refused_as = self.refused_as[rec];
        let refused = refused_as.is_some();
        let offline_row = self.by_record[rec].map(|pos| &self.off.rows[pos as usize]);
        let line = self.lines[rec];
        let report = &mut self.report;
        let m = match (offline_row, online) {
            (None, Ok(None)) if !refused => return None,
            (None, Err(e)) if refused_as == Some(e.kind()) => {
                report.rejected += 1;
                *report.rejected_by_kind.entry(e.kind()).or_default() += 1;
                return None;
            }
            (None, Err(e)) if refused => Mismatch {
                line,
                event_time: None,
                feature: "<refusal>".into(),
                offline: refused_as.unwrap_or_default().into(),
                online: format!("{}: {e}", e.kind()),
            },
            (None, Ok(None) | Err(_)) => Mismatch {
                line,
                event_time: None,
                feature: "<presence>".into(),
                offline: if refused { "refused" } else { "filtered" }.into(),
                online: if refused { "filtered" } else { "refused" }.into(),
            },
            (Some(row), Ok(Some(on))) => {
                report.events += 1;
                self.fitted.transform(p, row, &mut self.v_off);
                self.fitted.transform(p, on, &mut self.v_on);
                let diff = first_difference(p, &self.names, row, on, &self.v_off, &self.v_on);
                return Some(diff.map(|(feature, a, b)| Mismatch {
                    line,
                    event_time: row[et].as_i64().map(format_timestamp),
                    feature,
                    offline: a,
                    online: b,
                }));
            }
            (Some(row), online) => Mismatch {
                line,
                event_time: row[et].as_i64().map(format_timestamp),
                feature: "<presence>".into(),
                offline: "a vector".into(),
                online: match online {
                    Err(e) => format!("refused ({}: {e})", e.kind()),
                    Ok(_) => "filtered".into(),
                },
            },
            (None, Ok(Some(on))) => Mismatch {
                line,
                event_time: on[et].as_i64().map(format_timestamp),
                feature: "<presence>".into(),
                offline: if refused { "refused" } else { "filtered" }.into(),
                online: "a vector".into(),
            },
        };
        report.events += 1;
        Some(Some(m))
    }
}

/// The online outcome of every record when the scorer repartitions (see [`check_with`]).
type Events<'a> = (
    &'a [Vec<u8>],
    &'a [(Option<String>, Option<i64>)],
    &'a Format,
);

fn repartitioned(
    p: &Arc<Pipeline>,
    tables: &Arc<Tables>,
    (jsons, keys, format): Events<'_>,
    order: &[usize],
    partitions: u32,
) -> Vec<Result<Option<Row>, EventError>> {
    let n = partitions as usize;
    let mut out: Vec<Result<Option<Row>, EventError>> =
        (0..jsons.len()).map(|_| Ok(None)).collect();
    let mut upstream: Vec<OnlineEngine> = (0..n)
        .map(|_| {
            OnlineEngine::new(p.clone(), tables.clone())
                .with_split(Split::Upstream)
                .with_format(format)
        })
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
