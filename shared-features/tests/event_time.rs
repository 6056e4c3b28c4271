//! Event time from epoch numbers in a declared unit and from local date-time text (issue 13,
//! item 1), and the range check that refuses a history whose times cannot be right.
//!
//! Every expectation is computed another way: the same instants written as RFC 3339
//! timestamps, read by the timestamp path of both engines.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use shared_features::time::parse_timestamp;
use shared_features::{OnlineEngine, Pipeline, Tables, offline, parity};

/// A pipeline whose event time is `time` over the fields `fields` (plus `k` and `v`).
fn pipeline(fields: &str, time: &str, valid_from: Option<&str>) -> String {
    let split = valid_from.map_or(String::new(), |v| {
        format!("[split]\nvalid_from = \"{v}\"\n")
    });
    format!(
        r#"
[pipeline]
name = "times"
[events]
key = "k"
lateness = "1h"
# The instants are months apart: a week-long future bound would refuse the later ones.
max_future = "400d"
fields = {{ k = "str", v = "float", {fields} }}
time = {time}
[[window]]
name = "w"
key = "k"
length = "1h"
aggs = [{{ name = "n", fn = "count" }}, {{ name = "s", fn = "sum", field = "v" }}]
[features]
numeric = ["v", "n", "s"]
{split}"#
    )
}

/// The instants of the test, as RFC 3339: around a spring and an autumn DST change in Berlin,
/// with sub-second parts that a unit must carry or truncate.
const INSTANTS: [&str; 6] = [
    "2016-03-27T00:59:59.250Z",
    "2016-03-27T01:00:00.000Z",
    "2016-03-27T01:30:00.999Z",
    "2016-10-30T00:30:00.000Z",
    "2016-10-30T01:30:00.000Z",
    "2016-10-30T02:30:00.001Z",
];

/// The event times both engines compute for CSV rows `k,v,<cell>`.
fn times(text: &str, column: &str, cells: &[String]) -> (Vec<i64>, Vec<i64>) {
    let p = Arc::new(Pipeline::parse(text, "times.toml").unwrap());
    let d = common::tempdir(&format!("event-time-{column}"));
    let csv = d.join("events.csv");
    let mut body = format!("k,v,{column}\n");
    for (i, c) in cells.iter().enumerate() {
        body.push_str(&format!("a,{i}.5,{c}\n"));
    }
    std::fs::write(&csv, body).unwrap();
    let et = p.event_time_col();
    let off = offline::run(&p, &csv, &d).unwrap();
    let offline: Vec<i64> = off.rows.iter().map(|r| r[et].as_i64().unwrap()).collect();
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    let mut e = OnlineEngine::new(p.clone(), Arc::new(t));
    let online = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cell: serde_json::Value =
                serde_json::from_str(c).unwrap_or(serde_json::Value::String(c.clone()));
            let ev = serde_json::json!({ "k": "a", "v": i as f64 + 0.5, column: cell });
            e.process(ev.to_string().as_bytes()).unwrap();
            e.row()[et].as_i64().unwrap()
        })
        .collect();
    (offline, online)
}

fn expected(truncate_to_ms: i64) -> Vec<i64> {
    INSTANTS
        .iter()
        .map(|t| {
            let ms = parse_timestamp(t).unwrap();
            ms.div_euclid(truncate_to_ms) * truncate_to_ms
        })
        .collect()
}

#[test]
fn epoch_numbers_in_each_unit_are_the_instants_they_count() {
    for (unit, per_ms, step) in [
        ("s", 0, 1000),
        ("ms", 1, 1),
        ("us", 1000, 1),
        ("ns", 1_000_000, 1),
    ] {
        // Seconds cannot carry the milliseconds: the cells are whole seconds (truncated), the
        // finer units carry every millisecond and more (a sub-millisecond part to truncate).
        let cells: Vec<String> = INSTANTS
            .iter()
            .map(|t| {
                let ms = parse_timestamp(t).unwrap();
                match unit {
                    "s" => ms.div_euclid(1000).to_string(),
                    "ms" => ms.to_string(),
                    _ => (ms * per_ms + (per_ms - 1)).to_string(),
                }
            })
            .collect();
        let text = pipeline(
            "ts = \"int\"",
            &format!("{{ fn = \"field\", field = \"ts\", unit = \"{unit}\" }}"),
            None,
        );
        let (off, on) = times(&text, "ts", &cells);
        assert_eq!(off, expected(step), "offline, unit {unit}");
        assert_eq!(on, off, "online equals offline, unit {unit}");
    }
}

#[test]
fn local_date_time_text_is_read_in_its_zone() {
    // The same instants written as Berlin wall-clock text: +01:00 in winter, +02:00 in summer.
    // 2016-03-27 02:00 to 03:00 does not exist there and 2016-10-30 02:00 to 03:00 happens twice.
    let cells: Vec<String> = [
        "2016-03-27 01:59:59.250", // CET, just before the spring gap
        "2016-03-27 03:00:00",     // CEST, just after it
        "2016-03-27 03:30:00.999",
        "2016-10-30 02:30:00", // the first 02:30 (CEST) of the autumn change
        "2016-10-30 02:30:00", // twice the same text: the earlier instant again
        "2016-10-30 03:30:00.001",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let text = pipeline(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d %H:%M:%S%.f", tz = "Europe/Berlin" }"#,
        None,
    );
    let (off, on) = times(&text, "ts", &cells);
    let mut want = expected(1);
    want[4] = want[3]; // ambiguous text resolves to the earlier instant
    assert_eq!(off, want);
    assert_eq!(on, off);
    // A wall time in the spring gap is read with the offset in force before it (+01:00).
    let gap = vec!["2016-03-27 02:30:00".to_string()];
    let (off, on) = times(&text, "ts", &gap);
    assert_eq!(off, vec![parse_timestamp("2016-03-27T01:30:00Z").unwrap()]);
    assert_eq!(on, off);
    // A date-only format is midnight local time.
    let text = pipeline(
        "day = \"str\"",
        r#"{ fn = "local", field = "day", format = "%d/%m/%Y", tz = "America/New_York" }"#,
        None,
    );
    let (off, on) = times(&text, "day", &["07/05/2016".to_string()]);
    assert_eq!(off, vec![parse_timestamp("2016-05-07T04:00:00Z").unwrap()]);
    assert_eq!(on, off);
}

#[test]
fn text_that_does_not_match_the_format_is_refused_naming_field_and_value() {
    let text = pipeline(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d %H:%M:%S", tz = "Europe/Berlin" }"#,
        None,
    );
    let p = Arc::new(Pipeline::parse(&text, "times.toml").unwrap());
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    let mut e = OnlineEngine::new(p, Arc::new(t));
    let err = e
        .process(br#"{"k": "a", "v": 1.0, "ts": "2016-05-07T15:13:19Z"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`ts`"), "{err}");
    assert!(err.contains("2016-05-07T15:13:19Z"), "{err}");
    assert!(err.contains("%Y-%m-%d %H:%M:%S"), "{err}");
}

/// The spec error for `time`, rendered as users see it.
fn refused(fields: &str, time: &str) -> String {
    Pipeline::parse(&pipeline(fields, time, None), "times.toml")
        .expect_err("refused")
        .to_string()
}

#[test]
fn an_epoch_field_without_a_unit_or_with_a_wrong_one_is_refused_before_work() {
    let e = refused("ts = \"int\"", r#"{ fn = "field", field = "ts" }"#);
    assert!(e.starts_with("times.toml:"), "{e}");
    assert!(
        e.contains("`ts` is an int") && e.contains("unit = \"s\""),
        "{e}"
    );
    let e = refused(
        "ts = \"int\"",
        r#"{ fn = "field", field = "ts", unit = "sec" }"#,
    );
    assert!(e.contains("unknown unit `sec`"), "{e}");
    let e = refused(
        "ts = \"timestamp\"",
        r#"{ fn = "field", field = "ts", unit = "s" }"#,
    );
    assert!(e.contains("is a timestamp, which has no unit"), "{e}");
    let e = refused(
        "ts = \"int\"",
        r#"{ fn = "field", field = "ts", unit = "s", tz = "UTC" }"#,
    );
    assert!(e.contains("`tz` does not apply to `fn = \"field\"`"), "{e}");
}

#[test]
fn a_local_format_that_cannot_give_an_instant_is_refused_before_work() {
    let e = refused(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d %H:%M %z", tz = "UTC" }"#,
    );
    assert!(e.contains("carries a zone or offset"), "{e}");
    let e = refused(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%H:%M:%S", tz = "UTC" }"#,
    );
    assert!(e.contains("does not determine a date"), "{e}");
    let e = refused(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d %Q", tz = "UTC" }"#,
    );
    assert!(e.contains("is not a strftime format"), "{e}");
    let e = refused(
        "ts = \"str\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d" }"#,
    );
    assert!(e.contains("missing `tz`"), "{e}");
    let e = refused(
        "ts = \"int\"",
        r#"{ fn = "local", field = "ts", format = "%Y-%m-%d", tz = "UTC" }"#,
    );
    assert!(e.contains("ts"), "{e}");
}

/// The units trap of issue 13: epoch seconds declared as milliseconds put every event in
/// January 1970. Parity (and fit, which runs the same check) refuses the history, naming the
/// field, the range found and the unit to check; declared right, the same file passes.
#[test]
fn seconds_read_as_milliseconds_are_refused_with_the_range_and_the_unit() {
    let d = common::tempdir("event-time-trap");
    let csv = d.join("events.csv");
    let mut body = String::from("k,v,ts\n");
    for (i, t) in INSTANTS.iter().enumerate() {
        body.push_str(&format!(
            "a,{i}.5,{}\n",
            parse_timestamp(t).unwrap().div_euclid(1000)
        ));
    }
    std::fs::write(&csv, body).unwrap();
    let check = |unit: &str, valid_from: &str| {
        let text = pipeline(
            "ts = \"int\"",
            &format!("{{ fn = \"field\", field = \"ts\", unit = \"{unit}\" }}"),
            Some(valid_from),
        );
        let p = Arc::new(Pipeline::parse(&text, "times.toml").unwrap());
        parity::check(&p, &csv, &d)
    };
    let e = check("ms", "2016-06-01").unwrap_err().to_string();
    assert!(e.contains("before 1971"), "{e}");
    assert!(e.contains("`ts`") && e.contains("unit = \"s\""), "{e}");
    assert!(e.contains("6 events from 1970-01-17T"), "{e}");
    let r = check("s", "2016-06-01").unwrap();
    assert_eq!(r.identical, 6);
    assert_eq!(r.event_times.before_cut, 3);
    assert_eq!(
        r.event_times.first.as_deref(),
        Some("2016-03-27T00:59:59.000Z")
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // A cut after every event: parity compares them all (a slice of history is legal) and says
    // so; `trainer fit` refuses it (trainer/tests/cli.rs).
    let r = check("s", "2017-01-01").unwrap();
    assert_eq!(r.identical, 6);
    assert_eq!(
        r.warnings,
        [
            "no event at or after valid_from 2017-01-01T00:00:00.000Z: only training-side events \
          are compared"
        ]
    );
}
