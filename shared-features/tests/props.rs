//! Property tests of the online engine: windows against a brute-force model, fitted state
//! through serialization, and no panic on any pipeline text or event bytes.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use proptest::prelude::*;
use shared_features::{EventError, FittedState, Pipeline, Value};

/// An event the engine accepted: arrival index, key, minutes, x, category.
type Accepted = (usize, Option<u8>, i64, Option<f64>, u8);

/// One generated event: key index (None = null key), minutes, x, category index.
type Ev = (Option<u8>, i64, Option<i16>, u8);

fn stream() -> impl Strategy<Value = Vec<Ev>> {
    // Times mostly move forward, sometimes step back (out of order), sometimes far back (late).
    prop::collection::vec(
        (
            prop::option::weighted(0.9, 0u8..4),
            -15i64..20,
            prop::option::weighted(0.8, -50i16..50),
            0u8..3,
        ),
        1..80,
    )
    .prop_map(|steps| {
        let mut t = 0;
        steps
            .into_iter()
            .map(|(k, dt, x, c)| {
                t = (t + dt).max(0);
                (k, t, x, c)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every window aggregate equals a brute-force fold over all earlier accepted events of the
    /// key with `t - 1h < s <= t`, in time order: eviction and out-of-order inserts lose nothing,
    /// and no event sees its future.
    #[test]
    fn windows_match_a_brute_force_model(events in stream()) {
        let p = common::pipeline();
        let mut e = common::engine();
        let hour = 60;
        let lateness = 10;
        // (arrival index, key, minutes, x, category) of every accepted event.
        let mut accepted: Vec<Accepted> = Vec::new();
        for (i, &(k, t, x, c)) in events.iter().enumerate() {
            let key = k.map(|k| format!("k{k}"));
            let cat = ["a", "b", "c"][c as usize];
            let x = x.map(f64::from);
            let out = e.process(&common::event(key.as_deref(), t, x, Some(cat)));
            // Lateness is judged per window key: the aircraft-like `id` and the category.
            let newest_id = accepted.iter().filter(|a| k.is_some() && a.1 == k).map(|a| a.2).max();
            let newest_cat = accepted.iter().filter(|a| a.4 == c).map(|a| a.2).max();
            if newest_id.is_some_and(|m| t < m - lateness) || newest_cat.is_some_and(|m| t < m - lateness) {
                prop_assert!(matches!(out, Err(EventError::Late { .. })), "event {i} should be late: {out:?}");
                continue;
            }
            let row = out.expect("accepted").expect("not filtered").to_vec();
            let mut window: Vec<_> = accepted.iter().filter(|a| k.is_some() && a.1 == k && a.2 > t - hour && a.2 <= t).collect();
            window.sort_by_key(|a| (a.2, a.0));
            let xs: Vec<f64> = window.iter().filter_map(|a| a.3).collect();
            prop_assert_eq!(common::col(&p, &row, "w_n"), &Value::Int(window.len() as i64));
            prop_assert_eq!(common::col(&p, &row, "w_nx"), &Value::Int(xs.len() as i64));
            prop_assert_eq!(common::col(&p, &row, "w_sum"), &Value::Float(xs.iter().fold(0.0, |s, x| s + x)));
            let mean = if xs.is_empty() { Value::Null } else { Value::Float(xs.iter().fold(0.0, |s, x| s + x) / xs.len() as f64) };
            prop_assert_eq!(common::col(&p, &row, "w_mean"), &mean);
            prop_assert_eq!(common::col(&p, &row, "w_max"), &xs.iter().copied().reduce(f64::max).map_or(Value::Null, Value::Float));
            prop_assert_eq!(common::col(&p, &row, "w_last"), &xs.last().map_or(Value::Null, |x| Value::Float(*x)));
            let mut cats: Vec<u8> = window.iter().map(|a| a.4).collect();
            cats.sort_unstable();
            cats.dedup();
            prop_assert_eq!(common::col(&p, &row, "w_cats"), &Value::Int(cats.len() as i64));
            accepted.push((i, k, t, x, c));
        }
    }

    /// Fitted state survives JSON serialization exactly, and so does the fingerprint.
    #[test]
    fn fitted_state_round_trips(xs in prop::collection::vec(prop::option::of(-1e6f64..1e6), 1..50), cats in prop::collection::vec(0u8..5, 1..50)) {
        let p = common::pipeline();
        let mut e = common::engine();
        let mut rows = Vec::new();
        for (i, (x, c)) in xs.iter().zip(cats.iter().cycle()).enumerate() {
            let cat = format!("c{c}");
            rows.push(e.process(&common::event(Some("k"), i as i64, *x, Some(&cat))).unwrap().unwrap().to_vec());
        }
        let fitted = FittedState::fit(&p, rows.iter().map(|r| &r[..]), vec![("cats".into(), "00".into())]);
        let json = serde_json::to_string(&fitted).unwrap();
        let back: FittedState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &fitted);
        prop_assert_eq!(shared_features::fingerprint(&p, &back), shared_features::fingerprint(&p, &fitted));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in &rows {
            fitted.transform(&p, r, &mut a);
            back.transform(&p, r, &mut b);
            prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    /// Any text given as a pipeline is either a pipeline or an error; never a panic.
    #[test]
    fn arbitrary_pipeline_text_never_panics(text in "\\PC{0,400}") {
        let _ = Pipeline::parse(&text, "fuzz.toml");
    }

    /// Damaged versions of a real pipeline (a line dropped, a character replaced) never panic,
    /// and every error names a line inside the file.
    #[test]
    fn damaged_pipelines_never_panic(drop_line in 0usize..140, at in 0usize..3000, ch in any::<char>()) {
        let mut lines: Vec<&str> = common::PIPELINE.lines().collect();
        if drop_line < lines.len() {
            lines.remove(drop_line);
        }
        let mut text: String = lines.join("\n");
        if let Some((i, _)) = text.char_indices().nth(at % text.chars().count().max(1)) {
            text.replace_range(i..i + text[i..].chars().next().map_or(0, char::len_utf8), &ch.to_string());
        }
        if let Err(e) = Pipeline::parse(&text, "damaged.toml") {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
        }
    }

    /// Arbitrary bytes, and arbitrary JSON objects with the right field names, never panic the
    /// online engine; they are features or an error.
    #[test]
    fn arbitrary_events_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), vals in prop::collection::vec(json_value(), 5)) {
        let mut e = common::engine();
        let _ = e.process(&bytes);
        let names = ["id", "ts", "x", "cat", "n"];
        let obj: serde_json::Map<String, serde_json::Value> = names.iter().map(|n| n.to_string()).zip(vals).collect();
        let _ = e.process(serde_json::Value::Object(obj).to_string().as_bytes());
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|x| serde_json::Number::from_f64(x)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,30}".prop_map(serde_json::Value::from),
        Just(serde_json::json!("2024-01-01T00:00:00Z")),
        Just(serde_json::json!([1, {"a": null}])),
    ]
}
