//! What a second dataset needed (issue 13, item 4): membership in and size of multi-valued
//! text fields, constants in arithmetic, year / day of month / ISO week, and times as inputs
//! to `last`, `min` and `max` (time since the previous event), and windows keyed by and
//! aggregating derived columns (`before_windows = true`). Each value below follows from
//! the definition in the README's semantics section; both engines compute the same bits.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use shared_features::{OnlineEngine, Pipeline, Tables, Value, parity};

const PIPELINE: &str = r#"
[pipeline]
name = "expressions"

[events]
key = "user"
lateness = "1h"
fields = { user = "str", ts = "timestamp", cats = "str", amount = "float" }
time = { fn = "field", field = "ts" }

[[window]]
name = "before"
key = "user"
length = "7d"
include_current = false
aggs = [
  { name = "prev_t", fn = "last", field = "event_time" },
  { name = "first_t", fn = "min", field = "event_time" },
]

# Keyed by a derived column, aggregating another: both computed before the windows.
[[window]]
name = "by_parts"
key = "n_parts"
length = "1d"
include_current = true
aggs = [
  { name = "parts_n", fn = "count" },
  { name = "parts_cents", fn = "sum", field = "cents_pre" },
]

[[derive]]
name = "since_prev"
fn = "sub"
args = ["event_time", "prev_t"]

[[derive]]
name = "since_first"
fn = "sub"
args = ["event_time", "first_t"]

[[derive]]
name = "has_b"
fn = "has"
args = ["cats"]
value = "b"

[[derive]]
name = "n_cats"
fn = "count_values"
args = ["cats"]

[[derive]]
name = "n_cats_comma"
fn = "count_values"
args = ["cats"]
sep = ","

[[derive]]
name = "cents"
fn = "mul"
args = ["amount"]
value = 100

[[derive]]
name = "year"
fn = "year"
args = ["event_time"]
tz = "America/New_York"

[[derive]]
name = "dom"
fn = "day_of_month"
args = ["event_time"]
tz = "America/New_York"

[[derive]]
name = "week"
fn = "week_of_year"
args = ["event_time"]
tz = "America/New_York"

[[derive]]
name = "n_parts"
fn = "count_values"
args = ["cats"]
before_windows = true

[[derive]]
name = "cents_pre"
fn = "mul"
args = ["amount"]
value = 100
before_windows = true

[features]
numeric = ["since_prev", "since_first", "has_b", "n_cats", "cents", "year", "dom", "week", "parts_n", "parts_cents"]
"#;

/// `ts, cats, amount` of one user's events, in order.
const EVENTS: [(&str, Option<&str>, f64); 4] = [
    // 07:00 on Sunday 3 January 2021 in New York: ISO week 53 of 2020.
    ("2021-01-03T12:00:00Z", Some("a|b"), 1.25),
    // 19:30 on 3 January in New York, though 4 January in UTC.
    ("2021-01-04T00:30:00Z", Some("c"), 2.5),
    // 01:00 on Monday 4 January in New York: week 1.
    ("2021-01-04T06:00:00Z", Some("b||d"), 0.1),
    ("2021-01-04T06:00:00.250Z", None, -3.0),
];

const H: f64 = 3_600_000.0;

#[test]
fn each_expression_gives_its_defined_value_online() {
    let p = Arc::new(Pipeline::parse(PIPELINE, "expressions.toml").unwrap());
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    let mut e = OnlineEngine::new(p.clone(), Arc::new(t));
    let col = |name: &str| p.layout.iter().position(|c| c.name == name).unwrap();
    let mut got = Vec::new();
    for (ts, cats, amount) in EVENTS {
        let ev = serde_json::json!({ "user": "u1", "ts": ts, "cats": cats, "amount": amount });
        e.process(ev.to_string().as_bytes()).unwrap();
        let row = e.row();
        got.push(
            [
                "since_prev",
                "since_first",
                "has_b",
                "n_cats",
                "n_cats_comma",
                "cents",
                "year",
                "dom",
                "week",
            ]
            .map(|n| row[col(n)].clone()),
        );
    }
    use Value::{Float as F, Int as I, Null as N};
    let want = [
        [N, N, I(1), I(2), I(1), F(125.0), I(2021), I(3), I(53)],
        [
            F(12.5 * H),
            F(12.5 * H),
            I(0),
            I(1),
            I(1),
            F(250.0),
            I(2021),
            I(3),
            I(53),
        ],
        [
            F(5.5 * H),
            F(18.0 * H),
            I(1),
            I(2),
            I(1),
            F(0.1 * 100.0),
            I(2021),
            I(4),
            I(1),
        ],
        [
            F(250.0),
            F(18.0 * H + 250.0),
            N,
            N,
            N,
            F(-300.0),
            I(2021),
            I(4),
            I(1),
        ],
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(format!("{g:?}"), format!("{w:?}"), "event {i}");
    }
}

/// A window keyed by a derived column (`n_parts`: 2, 1, 2, null) summing another (`cents_pre`),
/// both derived before the windows: the events with the same number of parts within a day.
#[test]
fn windows_key_and_aggregate_by_columns_derived_before_them() {
    let p = Arc::new(Pipeline::parse(PIPELINE, "expressions.toml").unwrap());
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    let mut e = OnlineEngine::new(p.clone(), Arc::new(t));
    let col = |name: &str| p.layout.iter().position(|c| c.name == name).unwrap();
    // The derived columns come before the window's in the row, after the event's own.
    assert!(col("n_parts") < col("parts_n") && col("cents_pre") < col("parts_n"));
    let mut got = Vec::new();
    for (ts, cats, amount) in EVENTS {
        let ev = serde_json::json!({ "user": "u1", "ts": ts, "cats": cats, "amount": amount });
        e.process(ev.to_string().as_bytes()).unwrap();
        let row = e.row();
        got.push(["n_parts", "parts_n", "parts_cents"].map(|n| row[col(n)].clone()));
    }
    use Value::{Float as F, Int as I, Null as N};
    let want = [
        [I(2), I(1), F(125.0)],
        [I(1), I(1), F(250.0)],
        // 18 hours after the first event, which also has two parts.
        [I(2), I(2), F(125.0 + 0.1 * 100.0)],
        // No text, a null key: it matches no other event and keeps no state; the window holds
        // the event itself (include_current).
        [N, I(1), F(-300.0)],
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(format!("{g:?}"), format!("{w:?}"), "event {i}");
    }
}

#[test]
fn the_offline_engine_computes_the_same_bits() {
    let p = Arc::new(Pipeline::parse(PIPELINE, "expressions.toml").unwrap());
    let dir = std::env::temp_dir().join(format!("kml-expressions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("events.csv");
    let mut body = String::from("user,ts,cats,amount\n");
    // Two users interleaved, so the windows are per key.
    for user in ["u1", "u2"] {
        for (ts, cats, amount) in EVENTS {
            body.push_str(&format!("{user},{ts},{},{amount}\n", cats.unwrap_or("")));
        }
    }
    std::fs::write(&csv, body).unwrap();
    let r = parity::check(&p, &csv, &dir).unwrap();
    assert_eq!((r.events, r.identical), (8, 8), "{:?}", r.first_mismatch);
    std::fs::remove_dir_all(dir).ok();
}

/// Each new key is checked when the pipeline is read, naming the derive and the problem.
#[test]
fn misuse_is_refused_before_work() {
    let refused = |from: &str, to: &str| {
        assert!(PIPELINE.contains(from), "test setup: {from}");
        Pipeline::parse(&PIPELINE.replacen(from, to, 1), "x.toml")
            .expect_err("refused")
            .to_string()
    };
    // A window keyed by a derived column computed after the windows says how to fix it.
    let e = refused("key = \"n_parts\"", "key = \"n_cats\"");
    assert!(
        e.contains("window `by_parts`")
            && e.contains("`n_cats` is derive[")
            && e.contains("set `before_windows = true`"),
        "{e}"
    );
    // A column derived before the windows cannot use a window's.
    let e = refused(
        "args = [\"cats\"]\nbefore_windows = true",
        "args = [\"prev_t\"]\nbefore_windows = true",
    );
    assert!(
        e.contains("`prev_t` is not defined before this point"),
        "{e}"
    );
    let e = refused("value = \"b\"", "value = 2");
    assert!(
        e.contains("derive[2].value") && e.contains("`has` takes text"),
        "{e}"
    );
    let e = refused("value = 100", "value = \"hundred\"");
    assert!(e.contains("`mul` takes a number as `value`"), "{e}");
    let e = refused(
        "args = [\"amount\"]\nvalue = 100",
        "args = [\"amount\", \"amount\"]\nvalue = 100",
    );
    assert!(
        e.contains("takes two arguments, or one and a constant `value`"),
        "{e}"
    );
    let e = refused("sep = \",\"", "sep = \"\"");
    assert!(e.contains("`sep` must not be empty"), "{e}");
    let e = refused(
        "fn = \"count_values\"\nargs = [\"cats\"]\nsep = \",\"",
        "fn = \"count_values\"\nargs = [\"amount\"]\nsep = \",\"",
    );
    assert!(e.contains("derive[4].args[0]"), "{e}");
    let e = refused("value = \"b\"", "value = \"b\"\ntz = \"UTC\"");
    assert!(e.contains("`has` takes no tz"), "{e}");
    let e = refused(
        "{ name = \"first_t\", fn = \"min\", field = \"event_time\" }",
        "{ name = \"first_t\", fn = \"mean\", field = \"event_time\" }",
    );
    assert!(e.contains("window[0].aggs[1].field"), "{e}");
}

/// Ids that producers send as JSON strings for an int field: refused with the way to accept
/// them, and, once declared in `[events] numbers_from_strings`, read as the numbers they hold,
/// alike by both engines (a JSON-lines history goes through the same decoder); text that is
/// not a number is still refused, naming field and value.
#[test]
fn numbers_sent_as_strings_are_read_only_when_declared() {
    let text = |declared: bool| {
        format!(
            r#"
[pipeline]
name = "ids"
[events]
key = "user_id"
lateness = "1h"
{}
fields = {{ user_id = "int", ts = "timestamp", amount = "float" }}
time = {{ fn = "field", field = "ts" }}
[[window]]
name = "per_user"
key = "user_id"
length = "1d"
aggs = [{{ name = "n", fn = "count" }}, {{ name = "total", fn = "sum", field = "amount" }}]
[features]
numeric = ["amount", "n", "total"]
"#,
            if declared {
                r#"numbers_from_strings = ["user_id", "amount"]"#
            } else {
                ""
            }
        )
    };
    let engine = |declared: bool| {
        let p = Arc::new(Pipeline::parse(&text(declared), "ids.toml").unwrap());
        let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
        (OnlineEngine::new(p.clone(), Arc::new(t)), p)
    };
    let as_string = br#"{"user_id": "42", "ts": "2021-01-01T00:00:00Z", "amount": "2.5"}"#;
    let (mut strict, _) = engine(false);
    let e = strict.process(as_string).unwrap_err().to_string();
    assert!(
        e.contains("field `user_id` should be int, got the string \"42\"")
            && e.contains("numbers_from_strings = [\"user_id\"]"),
        "{e}"
    );
    let (mut lenient, p) = engine(true);
    lenient.process(as_string).unwrap();
    let col = |name: &str| p.layout.iter().position(|c| c.name == name).unwrap();
    assert_eq!(lenient.row()[col("user_id")], Value::Int(42));
    assert_eq!(lenient.row()[col("amount")], Value::Float(2.5));
    for (bad, words) in [
        (r#""4x2""#, "the string \"4x2\", which is not an integer"),
        (r#""4.5""#, "the string \"4.5\", which is not an integer"),
    ] {
        let ev = format!(r#"{{"user_id": {bad}, "ts": "2021-01-01T00:00:00Z", "amount": 1}}"#);
        let e = lenient.process(ev.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("field `user_id`") && e.contains(words), "{e}");
    }
    let ev = br#"{"user_id": 7, "ts": "2021-01-01T00:00:00Z", "amount": "NaN"}"#;
    let e = lenient.process(ev).unwrap_err().to_string();
    assert!(e.contains("not a finite number"), "{e}");

    // Offline over a JSON-lines history mixing strings and numbers: the same rows.
    let dir = std::env::temp_dir().join(format!("kml-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("events.jsonl");
    let mut body = String::new();
    for (i, id) in ["\"42\"", "42", "\"-7\"", "-7", "\"42\""]
        .iter()
        .enumerate()
    {
        let amount = if i % 2 == 0 {
            format!("\"{i}.5\"")
        } else {
            format!("{i}.5")
        };
        body.push_str(&format!(
            "{{\"user_id\": {id}, \"ts\": \"2021-01-01T00:0{i}:00Z\", \"amount\": {amount}}}\n"
        ));
    }
    std::fs::write(&jsonl, body).unwrap();
    let r = parity::check(&p, &jsonl, &dir).unwrap();
    assert_eq!((r.events, r.identical), (5, 5), "{:?}", r.first_mismatch);
    let off = shared_features::offline::run(&p, &jsonl, &dir).unwrap();
    let counts: Vec<&Value> = off.rows.iter().map(|r| &r[col("n")]).collect();
    // "42" and 42 are one key: its third event has two before it (the window leaves the
    // event itself out by default).
    assert_eq!(
        counts,
        [
            &Value::Int(0),
            &Value::Int(1),
            &Value::Int(0),
            &Value::Int(1),
            &Value::Int(2)
        ]
    );
    std::fs::remove_dir_all(dir).ok();
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Parity over random streams of the expressions pipeline: random users, times that move
    /// forward by seconds to days (across month, year and ISO-week boundaries, and the New York
    /// DST changes), multi-valued text from `a`, `b` and `|` (empty parts, leading and trailing
    /// separators, null), and amounts.
    #[test]
    fn random_streams_give_the_same_bits_offline_and_online(
        steps in prop::collection::vec(
            (0u8..3, 1i64..200_000, prop::option::weighted(0.8, "[ab|]{0,6}"), -1000i32..1000),
            1..60,
        ),
        start_day in 0i64..2000,
    ) {
        let p = Arc::new(Pipeline::parse(PIPELINE, "expressions.toml").unwrap());
        let dir = std::env::temp_dir().join(format!(
            "kml-expressions-prop-{}-{start_day}-{}",
            std::process::id(),
            steps.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = 1_577_836_800_000i64 + start_day * 86_400_000; // from 2020-01-01
        let mut body = String::from("user,ts,cats,amount\n");
        for (user, dt, cats, amount) in &steps {
            t += dt * 1000;
            let ts = shared_features::time::format_timestamp(t);
            // An empty text cell is null in CSV: keep the non-null empty string out.
            let cats = cats.as_deref().filter(|c| !c.is_empty()).unwrap_or("");
            body.push_str(&format!("u{user},{ts},{cats},{}\n", f64::from(*amount) / 8.0));
        }
        let csv = dir.join("events.csv");
        std::fs::write(&csv, body).unwrap();
        let r = parity::check(&p, &csv, &dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        prop_assert_eq!(r.events, steps.len());
        prop_assert_eq!(r.identical, r.events, "{:?}", r.first_mismatch);
    }
}
