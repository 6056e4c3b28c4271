//! Fuzz targets (issue 10): arbitrary events through the online engine, for the real flights
//! pipeline with its real lookup tables and for the small synthetic pipeline that uses every
//! kind of operation. Every input must give features or an [`EventError`], never a panic, and
//! accepted rows must keep the engine's invariants (full layout, no NaN, event time in range).
//!
//! `cargo test` runs each target with a modest number of inputs; `ci/fuzz` runs them with
//! `PROPTEST_CASES=200000` (release) and prints how many inputs ran. Each target prints its own
//! count on one `fuzz:` line.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value as Json;
use shared_features::time::{self, TimePart};
use shared_features::{EventError, OnlineEngine, Pipeline, Tables, Value};

/// Inputs per target: `PROPTEST_CASES`, or a number small enough for every `cargo test`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Run `strategy` through `check` for [`cases`] inputs and print the tally. `check` returns the
/// outcome of each event it fed: the kind of error, or `ok`/`filtered`.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Vec<&'static str>)
where
    S::Value: std::fmt::Debug,
{
    let tally = std::sync::Mutex::new(BTreeMap::<&'static str, u64>::new());
    let inputs = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        // Shrinking a failure is worth its time; losing one to a file of old seeds is not.
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        inputs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcomes = check(v);
        let mut t = tally.lock().unwrap();
        for o in outcomes {
            *t.entry(o).or_default() += 1;
        }
        Ok(())
    });
    let t = tally.into_inner().unwrap();
    let events: u64 = t.values().sum();
    println!(
        "fuzz: {name}: {} inputs, {events} events, 0 panics; outcomes {t:?}",
        inputs.into_inner()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Feed one event and check what came out.
fn feed(e: &mut OnlineEngine, bytes: &[u8]) -> &'static str {
    let p = e.pipeline().clone();
    match e.process(bytes) {
        Ok(None) => "filtered",
        Ok(Some(row)) => {
            assert_eq!(row.len(), p.layout.len());
            for (c, v) in row.iter().enumerate() {
                assert!(
                    !matches!(v, Value::Float(x) if x.is_nan()),
                    "NaN in `{}` of {}",
                    p.layout[c].name,
                    String::from_utf8_lossy(bytes)
                );
            }
            let t = row[p.event_time_col()].as_i64().expect("an event time");
            assert!(time::in_range(t), "event time {t} out of range");
            "ok"
        }
        Err(err) => {
            assert_proper(&err, bytes);
            err.kind()
        }
    }
}

/// An error that says something: a message, and for field errors the field's name in it.
fn assert_proper(err: &EventError, bytes: &[u8]) {
    let msg = err.to_string();
    assert!(
        !msg.is_empty(),
        "empty message for {}",
        String::from_utf8_lossy(bytes)
    );
    if let Some(field) = shared_features::decode::Decoder::field_of(err) {
        assert!(msg.contains(field), "`{msg}` does not name `{field}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Integers where arithmetic goes wrong, and the ranges the pipelines read (years, months, days,
/// hhmm, epoch milliseconds).
fn edgy_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            i64::MAX - 1,
            0,
            -1,
            1,
            12,
            13,
            31,
            32,
            2359,
            2400,
            2401,
            262_142,
            262_143,
            262_144,
            -262_143,
            -262_144,
            -262_145,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            1 << 53,
            (1 << 53) + 1,
            8_210_266_876_799_999,
            8_210_266_876_800_000,
            -8_334_601_228_800_000,
            -8_334_601_228_800_001,
            1_357_020_000_000,
        ]),
        -3000i64..3000,
        any::<i64>(),
    ]
}

fn edgy_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            0.0,
            -0.0,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -1.0,
            -1.0000000000000002,
            1e-300,
            0.1,
            2013.0,
            1e16,
        ]),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |x| x.is_finite()),
    ]
}

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "NA",
            "null",
            "EWR",
            "JFK",
            "LGA",
            "N14228",
            "UA",
            "2013-01-01T06:00:00Z",
            "2013-01-01T06:00:00+14:00",
            "+262142-12-31T23:59:59Z",
            "262142-12-31T23:59:59Z",
            "-262143-01-01T00:00:00Z",
            "9999-99-99T99:99:99Z",
            "2013-13-01T00:00:00Z",
            "\u{0}",
            "\u{feff}",
            "\u{10ffff}",
            "日本語",
            "a\"b\\c",
            "\u{1F600}\u{200D}",
        ])
        .prop_map(str::to_string),
        "\\PC{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

/// Any JSON value, nested a little, scalars biased to the edges.
fn json_value() -> impl Strategy<Value = Json> {
    // Numbers weigh most: they pass the type check of most fields and reach the arithmetic.
    let scalar = prop_oneof![
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::from),
        4 => edgy_int().prop_map(Json::from),
        1 => any::<u64>().prop_map(Json::from),
        3 => edgy_float().prop_map(Json::from),
        2 => odd_string().prop_map(Json::from),
    ];
    scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec((odd_string(), inner), 0..4)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object written out by hand from `(key, value)` pairs, so that keys may repeat.
fn object_text(pairs: &[(String, Json)]) -> Vec<u8> {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap());
        out.push(':');
        out.push_str(&serde_json::to_string(v).unwrap());
    }
    out.push('}');
    out.into_bytes()
}

/// How an event is damaged: fields replaced by arbitrary values, dropped, repeated, or junk
/// fields added.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, Json),
    Drop(usize),
    Repeat(usize, Json),
    Junk(String, Json),
}

fn edits(n_fields: usize) -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (0..n_fields, json_value()).prop_map(|(i, v)| Edit::Set(i, v)),
        // A number at the edge in a numeric field: well typed, so it reaches the arithmetic.
        4 => (0..n_fields, edgy_int()).prop_map(|(i, v)| Edit::Set(i, v.into())),
        1 => (0..n_fields).prop_map(Edit::Drop),
        1 => (0..n_fields, json_value()).prop_map(|(i, v)| Edit::Repeat(i, v)),
        1 => (odd_string(), json_value()).prop_map(|(k, v)| Edit::Junk(k, v)),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(edit, 1..4),
    ]
}

fn apply(mut pairs: Vec<(String, Json)>, edits: &[Edit]) -> Vec<u8> {
    let mut dropped = vec![false; pairs.len()];
    for e in edits {
        match e {
            Edit::Set(i, v) => pairs[*i].1 = v.clone(),
            Edit::Drop(i) => dropped[*i] = true,
            Edit::Repeat(i, v) => {
                let k = pairs[*i].0.clone();
                pairs.push((k, v.clone()));
                dropped.push(false);
            }
            Edit::Junk(k, v) => {
                pairs.push((k.clone(), v.clone()));
                dropped.push(false);
            }
        }
    }
    let kept: Vec<_> = pairs
        .into_iter()
        .zip(dropped)
        .filter(|(_, d)| !d)
        .map(|(p, _)| p)
        .collect();
    object_text(&kept)
}

/// Byte-level damage to a payload: flips, insertions, deletions, truncation.
fn mutate(mut bytes: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, b) in ops {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match op % 4 {
            0 if !bytes.is_empty() => bytes[at] = b,
            1 => bytes.insert(at, b),
            2 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// The flights pipeline with its real tables

fn flights() -> (Arc<Pipeline>, Arc<Tables>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/flights");
    let base: PathBuf = if root.join("raw/flights.csv").exists() {
        root.clone()
    } else {
        root.join("fixtures")
    };
    let text = std::fs::read_to_string(root.join("pipeline.toml")).unwrap();
    let p = Arc::new(Pipeline::parse(&text, "pipeline.toml").unwrap());
    let tables = Tables::load(&p, |path| {
        std::fs::read(base.join(path)).map_err(|e| e.to_string())
    })
    .unwrap();
    (p, Arc::new(tables))
}

/// A plausible departure: real airports, carriers and aircraft, times over three days, so that
/// events reach the joins and windows; then damaged by `edits`.
fn flight() -> impl Strategy<Value = Vec<(String, Json)>> {
    (
        prop_oneof![8 => Just(2013i64), 1 => edgy_int()],
        prop_oneof![8 => 1i64..=12, 1 => edgy_int()],
        prop_oneof![8 => 1i64..=3, 1 => edgy_int()],
        0i64..=2400,
        0i64..=2359,
        -30.0f64..300.0,
        prop::sample::select(vec!["UA", "AA", "B6", "DL", "EV", "MQ", "ZZ"]),
        prop::sample::select(vec![
            "N14228", "N24211", "N619AA", "N730MQ", "N509MQ", "NOPE",
        ]),
        prop::sample::select(vec!["EWR", "JFK", "LGA", "XXX"]),
        prop::sample::select(vec!["IAH", "MIA", "ORD", "LAX", "QQQ"]),
        prop_oneof![100.0f64..5000.0, Just(-1.0), Just(0.0)],
    )
        .prop_map(
            |(year, month, day, dep, sched, delay, carrier, tail, origin, dest, distance)| {
                let h = |hhmm: i64| hhmm / 100 * 100 + (hhmm % 100).min(59);
                vec![
                    ("year".into(), year.into()),
                    ("month".into(), month.into()),
                    ("day".into(), day.into()),
                    ("dep_time".into(), h(dep).into()),
                    ("sched_dep_time".into(), h(sched).into()),
                    ("dep_delay".into(), delay.into()),
                    ("arr_delay".into(), (delay - 5.0).into()),
                    ("carrier".into(), carrier.into()),
                    ("flight".into(), 1545.into()),
                    ("tailnum".into(), tail.into()),
                    ("origin".into(), origin.into()),
                    ("dest".into(), dest.into()),
                    ("distance".into(), distance.into()),
                ]
            },
        )
}

const FLIGHT_FIELDS: usize = 13;

#[test]
fn fuzz_flights_json_events() {
    let (p, tables) = flights();
    let stream = prop::collection::vec((flight(), edits(FLIGHT_FIELDS)), 1..12);
    fuzz("flights: damaged JSON events", stream, |events| {
        let mut e = OnlineEngine::new(p.clone(), tables.clone());
        events
            .into_iter()
            .map(|(pairs, ed)| feed(&mut e, &apply(pairs, &ed)))
            .collect()
    });
}

#[test]
fn fuzz_flights_bytes() {
    let (p, tables) = flights();
    let damaged = (
        flight(),
        prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..3),
    )
        .prop_map(|(pairs, ops)| mutate(object_text(&pairs), &ops));
    let bytes = prop_oneof![
        2 => damaged,
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    let stream = prop::collection::vec(bytes, 1..8);
    fuzz("flights: arbitrary and damaged bytes", stream, |events| {
        let mut e = OnlineEngine::new(p.clone(), tables.clone());
        events.iter().map(|b| feed(&mut e, b)).collect()
    });
}

// ---------------------------------------------------------------------------------------------
// The synthetic pipeline: every operation, times anywhere

/// Events of the small pipeline with times near each other (so that windows, lateness, the
/// future bound and the as-of tolerance all engage) or anywhere in i64.
fn synthetic() -> impl Strategy<Value = Vec<(String, Json)>> {
    (
        prop::sample::select(vec!["k1", "k2", "k3"]),
        prop_oneof![
            4 => (-600i64..600).prop_map(common::at),
            1 => edgy_int(),
        ],
        prop_oneof![3 => edgy_float().prop_map(Json::from), 1 => Just(Json::Null)],
        prop::sample::select(vec!["a", "b", "c", "zz"]),
        prop_oneof![4 => Just(1i64), 1 => edgy_int()],
    )
        .prop_map(|(id, ts, x, cat, n)| {
            vec![
                ("id".into(), id.into()),
                ("ts".into(), ts.into()),
                ("x".into(), x),
                ("cat".into(), cat.into()),
                ("n".into(), n.into()),
            ]
        })
}

#[test]
fn fuzz_synthetic_pipeline_events() {
    let p = common::pipeline();
    let tables = Arc::new(common::tables(&p));
    let stream = prop::collection::vec((synthetic(), edits(5)), 1..24);
    fuzz("synthetic: events at any time", stream, |events| {
        let mut e = OnlineEngine::new(p.clone(), tables.clone());
        events
            .into_iter()
            .map(|(pairs, ed)| feed(&mut e, &apply(pairs, &ed)))
            .collect()
    });
}

// ---------------------------------------------------------------------------------------------
// Event time alone, over every input and a few time zones with odd offsets

/// A wall-clock time as `hhmm`, 0000 to 2400.
fn hhmm() -> impl Strategy<Value = i64> {
    prop_oneof![
        (0i64..24, 0i64..60).prop_map(|(h, m)| h * 100 + m),
        Just(2400)
    ]
}

#[test]
fn fuzz_event_time() {
    let zones = [
        chrono_tz::America::New_York,
        chrono_tz::UTC,
        chrono_tz::Pacific::Kiritimati,
        chrono_tz::Pacific::Pago_Pago,
        chrono_tz::Australia::Lord_Howe,
    ];
    // Real dates, dates at the edges of the calendar, and anything.
    let (lo, hi) = (-262_143i64, 262_142i64);
    let ymd = prop_oneof![
        3 => (1900i64..2100, 1i64..=12, 1i64..=31),
        3 => (prop::sample::select(vec![lo, lo + 1, hi - 1, hi]), prop::sample::select(vec![1i64, 12]), prop::sample::select(vec![1i64, 2, 30, 31])),
        1 => (edgy_int(), edgy_int(), edgy_int()),
    ];
    let input = (
        0..zones.len(),
        ymd,
        prop_oneof![3 => hhmm(), 1 => edgy_int()],
        prop::option::of(prop_oneof![3 => hhmm(), 1 => edgy_int()]),
    );
    fuzz(
        "event time: local_hhmm_to_utc",
        input,
        |(z, ymd, hhmm, reference)| match time::local_hhmm_to_utc(zones[z], ymd, hhmm, reference) {
            Ok(t) => {
                assert!(time::in_range(t), "{ymd:?} {hhmm} {reference:?}: {t}");
                vec!["ok"]
            }
            Err((part, m)) => {
                assert!(!m.is_empty());
                vec![match part {
                    TimePart::Year => "year",
                    TimePart::Month => "month",
                    TimePart::Day => "day",
                    TimePart::Hhmm => "hhmm",
                    TimePart::Reference => "reference",
                    TimePart::Instant => "instant",
                }]
            }
        },
    );
}
