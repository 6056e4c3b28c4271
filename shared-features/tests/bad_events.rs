//! Events that must be refused, each with a message that names the real culprit (issue 10):
//! duplicate fields, invalid UTF-8, wrong date parts, dates at the edges of the calendar.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use shared_features::{EventError, OnlineEngine, Pipeline, Tables};

/// Departures as the flights pipeline reads them: a local date plus `hhmm` in New York.
const DEPARTURES: &str = r#"
[pipeline]
name = "departures"

[events]
key = "tailnum"
lateness = "1h"
fields = { year = "int", month = "int", day = "int", dep_time = "int", sched_dep_time = "int", dep_delay = "float", tailnum = "str" }
time = { fn = "local_hhmm", date = ["year", "month", "day"], hhmm = "dep_time", reference_hhmm = "sched_dep_time", tz = "America/New_York" }

[[window]]
name = "ac"
key = "tailnum"
length = "24h"
aggs = [{ name = "ac_n", fn = "count" }, { name = "ac_mean", fn = "mean", field = "dep_delay" }]

[features]
numeric = ["dep_delay", "ac_n", "ac_mean"]
"#;

fn departures() -> OnlineEngine {
    let p = Arc::new(Pipeline::parse(DEPARTURES, "departures.toml").unwrap());
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    OnlineEngine::new(p, Arc::new(t))
}

fn departure(year: i64, month: i64, day: i64, dep: i64, sched: i64) -> Vec<u8> {
    serde_json::json!({
        "year": year, "month": month, "day": day, "dep_time": dep, "sched_dep_time": sched,
        "dep_delay": 1.0, "tailnum": "N1",
    })
    .to_string()
    .into_bytes()
}

fn refused(e: &mut OnlineEngine, event: &[u8]) -> String {
    e.process(event)
        .err()
        .unwrap_or_else(|| panic!("{} should be refused", String::from_utf8_lossy(event)))
        .to_string()
}

#[test]
fn a_duplicate_field_is_named_as_such() {
    let mut e = common::engine();
    let twice = r#"{"id": "k1", "ts": 0, "x": 1.0, "x": 2.0, "cat": "a", "n": 1}"#;
    let err = e.process(twice.as_bytes()).unwrap_err();
    assert_eq!(err, EventError::Duplicate { field: "x".into() });
    assert_eq!(err.to_string(), "field `x` appears twice in the event");
    // An undeclared field given twice is ignored, like every undeclared field.
    let extra = r#"{"id": "k1", "ts": 0, "x": 1.0, "cat": "a", "n": 1, "z": 1, "z": 2}"#;
    assert!(e.process(extra.as_bytes()).is_ok());
}

#[test]
fn invalid_utf8_anywhere_refuses_the_event_with_its_offset() {
    let mut e = common::engine();
    let mut bytes = br#"{"id": "k1", "ts": 0, "x": 1.0, "cat": "a", "n": 1, "note": "caf"#.to_vec();
    let offset = bytes.len();
    bytes.extend_from_slice(b"\xe9\"}");
    assert_eq!(
        refused(&mut e, &bytes),
        format!(
            "invalid UTF-8 at byte {offset}: an event must be UTF-8 JSON (RFC 8259), in every field"
        )
    );
    assert_eq!(
        e.process(&bytes).unwrap_err(),
        EventError::NotUtf8 { offset }
    );
    // The same event in UTF-8 is scored.
    let good = r#"{"id": "k1", "ts": 0, "x": 1.0, "cat": "a", "n": 1, "note": "café"}"#;
    assert!(e.process(good.as_bytes()).unwrap().is_some());
}

#[test]
fn a_wrong_date_names_the_date_field_not_the_time() {
    let mut e = departures();
    assert_eq!(
        refused(&mut e, &departure(2013, 0, 2, 517, 515)),
        "no event time: `month`: 0 is not a month (1 to 12), in the date 2013-0-2"
    );
    assert_eq!(
        refused(&mut e, &departure(2013, 2, 29, 517, 515)),
        "no event time: `day`: 29 is not a day of 2013-02 (1 to 28), in the date 2013-2-29"
    );
    assert_eq!(
        refused(&mut e, &departure(-300_000, 1, 1, 517, 515)),
        "no event time: `year`: -300000 is not a year from -262143 to 262142, in the date -300000-1-1"
    );
    assert_eq!(
        refused(&mut e, &departure(2013, 1, 1, 1261, 515)),
        "no event time: `dep_time`: 1261 is not a time written as hhmm (0000 to 2400)"
    );
    assert_eq!(
        refused(&mut e, &departure(2013, 1, 1, 517, 9999)),
        "no event time: `sched_dep_time`: 9999 is not a time written as hhmm (0000 to 2400)"
    );
}

/// The poison pill of issue 10: a well-formed date at the edge of the calendar whose departure
/// crosses midnight panicked in chrono; now it is refused, naming the fields, and the engine
/// goes on scoring.
#[test]
fn edge_of_calendar_departures_are_refused_not_panics() {
    let mut e = departures();
    for (y, m, d, dep, sched) in [
        (262_142, 12, 31, 10, 2359),
        (262_142, 12, 31, 2400, 2359),
        (-262_143, 1, 1, 2355, 5),
        (262_142, 12, 31, 2200, 2200),
    ] {
        let msg = refused(&mut e, &departure(y, m, d, dep, sched));
        assert!(
            msg.starts_with("no event time: `year`, `month`, `day` and `dep_time`: ")
                && msg.ends_with("in America/New_York is outside the supported range of times"),
            "{msg}"
        );
    }
    assert_eq!(
        refused(&mut e, &departure(262_142, 12, 31, 10, 2359)),
        "no event time: `year`, `month`, `day` and `dep_time`: 262142-12-31 at 0010 (the next day) \
         in America/New_York is outside the supported range of times"
    );
    // Far from the edge, the same engine still scores.
    assert!(
        e.process(&departure(2013, 1, 1, 517, 515))
            .unwrap()
            .is_some()
    );
}

#[test]
fn epoch_milliseconds_beyond_the_calendar_are_refused() {
    let mut e = common::engine();
    for ts in [i64::MAX, i64::MIN, 9_000_000_000_000_000] {
        let ev = format!(r#"{{"id": "k1", "ts": {ts}, "x": 1.0, "cat": "a", "n": 1}}"#);
        assert_eq!(
            refused(&mut e, ev.as_bytes()),
            format!(
                "no event time: `ts`: {ts} ms since the epoch is outside the supported range of times"
            )
        );
    }
}
