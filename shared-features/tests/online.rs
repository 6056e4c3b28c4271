//! The online engine, event by event, against values worked out by hand.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{at, col, engine, event, pipeline};
use shared_features::{EventError, FittedState, Value};

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[test]
fn windows_joins_and_derived_features_by_hand() {
    let p = pipeline();
    let mut e = engine();

    // k1 at 00:00, x = 1, cat a: nothing earlier, so the window is empty.
    let r = e
        .process(&event(Some("k1"), 0, Some(1.0), Some("a")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(col(&p, &r, "w_n"), &Value::Int(0));
    assert_eq!(
        col(&p, &r, "w_sum"),
        &Value::Float(0.0),
        "the sum of nothing is 0"
    );
    for name in ["w_mean", "w_min", "w_max", "w_std", "w_last"] {
        assert_eq!(
            col(&p, &r, name),
            &Value::Null,
            "{name} of an empty window is null"
        );
    }
    assert_eq!(
        col(&p, &r, "wc_n"),
        &Value::Int(1),
        "include_current counts the event itself"
    );
    assert_eq!(col(&p, &r, "wc_mean"), &Value::Float(1.0));
    assert_eq!(col(&p, &r, "cat_weight"), &Value::Float(1.5));
    assert_eq!(
        col(&p, &r, "rate_rate"),
        &Value::Float(1.25),
        "an as-of row at exactly the event time matches"
    );
    assert_eq!(col(&p, &r, "x_log"), &Value::Float(2f64.ln()));
    assert_eq!(col(&p, &r, "x_per_weight"), &Value::Float(1.0 / 1.5));
    assert_eq!(col(&p, &r, "x_band"), &Value::Int(1));
    assert_eq!(col(&p, &r, "hour"), &Value::Int(0));

    // 00:30, x null, cat b (weight NA in the table): nulls flow through, counts skip them.
    let r = e
        .process(&event(Some("k1"), 30, None, Some("b")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(
        (col(&p, &r, "w_n"), col(&p, &r, "w_nx")),
        (&Value::Int(1), &Value::Int(1))
    );
    assert_eq!(f(col(&p, &r, "w_mean")), Some(1.0));
    assert_eq!(col(&p, &r, "w_std"), &Value::Null, "std needs two values");
    assert_eq!(col(&p, &r, "cat_weight"), &Value::Null);
    assert_eq!(col(&p, &r, "x_per_weight"), &Value::Null);
    assert_eq!(col(&p, &r, "x_log"), &Value::Null);

    // 01:00, x = 4: the event at 00:00 is exactly one window length old, so it is out.
    let r = e
        .process(&event(Some("k1"), 60, Some(4.0), Some("a")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(
        col(&p, &r, "w_n"),
        &Value::Int(1),
        "only 00:30 is in (00:00, 01:00]"
    );
    assert_eq!(col(&p, &r, "w_nx"), &Value::Int(0));
    assert_eq!(col(&p, &r, "w_mean"), &Value::Null);
    assert_eq!(col(&p, &r, "w_cats"), &Value::Int(1));
    assert_eq!(
        col(&p, &r, "wc_n"),
        &Value::Int(1),
        "cat a's 00:00 is outside 30 minutes"
    );
    assert_eq!(col(&p, &r, "rate_rate"), &Value::Float(1.25));

    // 01:15, x = 2: window (00:15, 01:15] holds 00:30 (null) and 01:00 (4).
    let r = e
        .process(&event(Some("k1"), 75, Some(2.0), Some("a")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(
        (col(&p, &r, "w_n"), col(&p, &r, "w_nx")),
        (&Value::Int(2), &Value::Int(1))
    );
    assert_eq!(f(col(&p, &r, "w_max")), Some(4.0));
    assert_eq!(col(&p, &r, "w_cats"), &Value::Int(2));
    assert_eq!(
        col(&p, &r, "rate_rate"),
        &Value::Null,
        "the 00:00 rate is more than the 1h tolerance old"
    );

    // 01:10 arrives after 01:15 (out of order, within the 10 minute lateness): it must not see
    // the 01:15 event, which is in its future.
    let r = e
        .process(&event(Some("k1"), 70, Some(10.0), Some("c")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(col(&p, &r, "w_n"), &Value::Int(2));
    assert_eq!(f(col(&p, &r, "w_last")), Some(4.0));

    // 01:04 is 11 minutes behind the newest (01:15): late, refused, state untouched.
    let late = e.process(&event(Some("k1"), 64, Some(100.0), Some("a")));
    assert!(matches!(late, Err(EventError::Late { .. })), "{late:?}");
    // The message says it once, with the bound in the pipeline's own units.
    let said = late.unwrap_err().to_string();
    assert!(
        said.starts_with("late event for key \"k1\": event time ")
            && said
                .contains(" is more than 10m ([events] lateness) behind the key's newest event "),
        "{said}"
    );

    // 01:20, x = 0: window (00:20, 01:20] in time order: 00:30 null, 01:00 4, 01:10 10, 01:15 2.
    let r = e
        .process(&event(Some("k1"), 80, Some(0.0), Some("a")))
        .unwrap()
        .unwrap()
        .to_vec();
    let xs = [4.0, 10.0, 2.0];
    let mean = xs.iter().sum::<f64>() / 3.0;
    // Deviations -4/3, 14/3, -10/3: the sample variance is 312/9 / 2 = 52/3. std is computed
    // incrementally (Welford, Chan), so it may differ from a two-pass fold in the last bit.
    let std = (52.0f64 / 3.0).sqrt();
    assert_eq!(
        (col(&p, &r, "w_n"), col(&p, &r, "w_nx")),
        (&Value::Int(4), &Value::Int(3))
    );
    assert_eq!(f(col(&p, &r, "w_sum")), Some(16.0));
    assert_eq!(f(col(&p, &r, "w_mean")), Some(mean));
    let w_std = f(col(&p, &r, "w_std")).unwrap();
    assert!((w_std - std).abs() <= 1e-15 * std, "{w_std} vs {std}");
    assert_eq!(
        (f(col(&p, &r, "w_min")), f(col(&p, &r, "w_max"))),
        (Some(2.0), Some(10.0))
    );
    assert_eq!(
        f(col(&p, &r, "w_last")),
        Some(2.0),
        "last is by event time, not arrival"
    );
    assert_eq!(col(&p, &r, "w_cats"), &Value::Int(3));
    assert_eq!(
        col(&p, &r, "rate_rate"),
        &Value::Null,
        "the 02:00 rate is in the future; 00:00 is too old"
    );
}

#[test]
fn null_keys_keep_no_state_and_filters_drop() {
    let p = pipeline();
    let mut e = engine();
    e.process(&event(None, 0, Some(1.0), Some("a")))
        .unwrap()
        .unwrap();
    let r = e
        .process(&event(None, 1, Some(1.0), Some("a")))
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(
        col(&p, &r, "w_n"),
        &Value::Int(0),
        "null keys never share a window"
    );
    assert_eq!(col(&p, &r, "rate_rate"), &Value::Null);
    let filtered =
        serde_json::json!({"id": "k1", "ts": at(0), "x": 1.0, "cat": "a", "n": -1}).to_string();
    assert!(e.process(filtered.as_bytes()).unwrap().is_none());
    let null_n =
        serde_json::json!({"id": "k1", "ts": at(0), "x": 1.0, "cat": "a", "n": null}).to_string();
    assert!(
        e.process(null_n.as_bytes()).unwrap().is_none(),
        "a comparison with null is false"
    );
}

#[test]
fn bad_events_are_errors_that_say_what_is_wrong() {
    let mut e = engine();
    let cases: Vec<(&str, &str)> = vec![
        (r#"{"id": "k1", "ts": 0, "x": 1"#, "malformed JSON"),
        (r#"[1, 2]"#, "malformed JSON"),
        (
            r#"{"id": "k1", "ts": 0, "x": 1.0, "cat": "a"}"#,
            "field `n` is missing",
        ),
        (
            r#"{"id": "k1", "ts": 0, "x": "abc", "cat": "a", "n": 1}"#,
            "field `x` should be float, got the string \"abc\"",
        ),
        (
            r#"{"id": "k1", "ts": 0, "x": 1.0, "cat": "a", "n": 1.5}"#,
            "field `n` should be int, got the number 1.5",
        ),
        (
            r#"{"id": 7, "ts": 0, "x": 1.0, "cat": "a", "n": 1}"#,
            "field `id` should be str",
        ),
        (
            r#"{"id": "k1", "ts": "yesterday", "x": 1.0, "cat": "a", "n": 1}"#,
            "not an RFC 3339 timestamp",
        ),
        (
            // A date and time without a zone: the message says what to write or declare.
            r#"{"id": "k1", "ts": "2016-05-07 15:13:19", "x": 1.0, "cat": "a", "n": 1}"#,
            "field `ts` should be timestamp, got the string \"2016-05-07 15:13:19\", not an RFC \
             3339 timestamp such as 2016-05-07T15:13:19Z (premature end of input); it has no zone \
             or offset",
        ),
        (
            r#"{"id": "k1", "ts": null, "x": 1.0, "cat": "a", "n": 1}"#,
            "no event time",
        ),
        (
            r#"{"id": "k1", "ts": 0, "x": [1], "cat": "a", "n": 1}"#,
            "got an array",
        ),
        (
            r#"{"id": "k1", "id": "k2", "ts": 0, "x": 1.0, "cat": "a", "n": 1}"#,
            "field `id` appears twice in the event",
        ),
    ];
    for (payload, words) in cases {
        let err = e.process(payload.as_bytes()).expect_err(payload);
        assert!(
            err.to_string().contains(words),
            "`{payload}` gave `{err}`, expected `{words}`"
        );
    }
    // Unknown fields are ignored; RFC 3339 and epoch milliseconds are the same instant.
    let ok = r#"{"id": "k9", "ts": "2024-01-01T00:00:00Z", "x": 1, "cat": "a", "n": 1, "extra": {"a": [1]}}"#;
    let p = pipeline();
    let r = e.process(ok.as_bytes()).unwrap().unwrap().to_vec();
    assert_eq!(col(&p, &r, "event_time"), &Value::Int(at(0)));
    assert_eq!(
        col(&p, &r, "x"),
        &Value::Float(1.0),
        "an integer is a valid float"
    );
}

#[test]
fn encoding_handles_nulls_constants_and_unseen_categories() {
    let p = pipeline();
    let mut e = engine();
    let mut rows = Vec::new();
    for (i, cat) in ["a", "a", "b"].iter().enumerate() {
        rows.push(
            e.process(&event(Some("k"), i as i64, Some(3.0), Some(cat)))
                .unwrap()
                .unwrap()
                .to_vec(),
        );
    }
    let fitted = FittedState::fit(&p, rows.iter().map(|r| &r[..]), vec![]);
    let x = fitted.scalers.iter().find(|s| s.column == "x").unwrap();
    assert_eq!(
        (x.mean, x.std),
        (3.0, 1.0),
        "a constant column scales with std 1"
    );
    assert_eq!(
        fitted.vocabs[0].levels,
        vec!["a".to_string(), "b".to_string()]
    );
    let names = fitted.names();
    let mut out = Vec::new();

    let unseen = e
        .process(&event(Some("k"), 5, None, Some("zzz")))
        .unwrap()
        .unwrap()
        .to_vec();
    fitted.transform(&p, &unseen, &mut out);
    assert_eq!(out.len(), fitted.width());
    let slot = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert_eq!(out[slot("x")], 0.0, "null encodes as the training mean");
    assert_eq!(
        out[slot("cat=<other>")],
        1.0,
        "an unseen category goes to the other slot"
    );
    assert_eq!(out[slot("cat=a")] + out[slot("cat=b")], 0.0);
    assert!(out.iter().all(|v| v.is_finite()));

    let seen = e
        .process(&event(Some("k"), 6, Some(3.0), Some("b")))
        .unwrap()
        .unwrap()
        .to_vec();
    fitted.transform(&p, &seen, &mut out);
    assert_eq!(
        (out[slot("x")], out[slot("cat=b")], out[slot("cat=<other>")]),
        (0.0, 1.0, 0.0)
    );
}

#[test]
fn tables_refuse_duplicate_keys_and_missing_columns_with_file_and_line() {
    let p = pipeline();
    let dup = shared_features::Tables::load(&p, |path| match path {
        "cats.csv" => Ok(b"cat,weight\na,1\nb,2\na,3\n".to_vec()),
        _ => Ok(common::RATES.as_bytes().to_vec()),
    })
    .unwrap_err();
    assert_eq!(
        (dup.file.as_str(), dup.line),
        ("cats.csv", Some(4)),
        "{dup}"
    );
    let missing = shared_features::Tables::load(&p, |path| match path {
        "cats.csv" => Ok(b"cat,mass\na,1\n".to_vec()),
        _ => Ok(common::RATES.as_bytes().to_vec()),
    })
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("cats.csv:1: column `weight`: no such column"),
        "{missing}"
    );
    let bad = shared_features::Tables::load(&p, |path| match path {
        "cats.csv" => Ok(b"cat,weight\na,1\nb,heavy\n".to_vec()),
        _ => Ok(common::RATES.as_bytes().to_vec()),
    })
    .unwrap_err();
    assert_eq!(
        bad.to_string(),
        "cats.csv:3: column `weight`: `heavy` is not a float"
    );
}

/// Upstream of a repartition, lateness is also measured against the partition's newest event:
/// the merge downstream orders events behind a watermark per partition, so an event of a new
/// key 30 minutes behind another key's is refused there (it changes no state), while one engine
/// over everything accepts it (no event of its own key is newer).
#[test]
fn upstream_of_a_repartition_refuses_events_behind_the_partition_not_only_the_key() {
    use shared_features::Split;
    let mut all = engine();
    let mut up = engine().with_split(Split::Upstream);
    for e in [&mut all, &mut up] {
        e.process(&event(Some("k1"), 60, Some(1.0), Some("a")))
            .unwrap()
            .unwrap();
    }
    // A new `id` (the partition key) and a new `cat` (the other window's key): no key is late.
    let behind = event(Some("k2"), 30, Some(2.0), Some("b"));
    assert!(all.process(&behind).unwrap().is_some());
    let refused = up.process(&behind);
    assert!(
        matches!(refused, Err(EventError::LateInPartition { .. })),
        "{refused:?}"
    );
    assert_eq!(refused.unwrap_err().kind(), "late");
    // Within the lateness (10 minutes) it is admitted.
    let near = event(Some("k2"), 55, Some(2.0), Some("b"));
    assert!(up.process(&near).unwrap().is_some());
}
