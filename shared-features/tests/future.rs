//! Events from the future (issue 10): refused before they touch a window, on both engines, and
//! the stream recovers from a real gap.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{col, event};
use shared_features::spec::DEFAULT_MAX_FUTURE_MS;
use shared_features::{EventError, FittedState, OnlineEngine, Pipeline, Value, fingerprint};

const DAY: i64 = 24 * 60;

fn with_events_line(line: &str) -> Arc<Pipeline> {
    let text =
        common::PIPELINE.replace("lateness = \"10m\"", &format!("lateness = \"10m\"\n{line}"));
    Arc::new(Pipeline::parse(&text, "tiny.toml").unwrap())
}

fn engine_of(p: Arc<Pipeline>) -> OnlineEngine {
    let t = common::tables(&p);
    OnlineEngine::new(p, Arc::new(t))
}

/// The scenario of issue 10: one event a year ahead used to be scored, and then every later
/// event of its key was "late". Now it is refused and the key goes on.
#[test]
fn an_event_a_year_ahead_is_refused_and_its_key_goes_on() {
    let p = common::pipeline();
    let mut e = common::engine();
    assert!(
        e.process(&event(Some("k1"), 0, Some(1.0), Some("a")))
            .unwrap()
            .is_some()
    );
    let err = e
        .process(&event(Some("k1"), 365 * DAY, Some(9.0), Some("a")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "future event: event time 2024-12-31T00:00:00.000Z is more than 7d ahead of \
         the stream's progress 2024-01-01T00:00:00.000Z ([events] max_future)"
    );
    assert_eq!(err.kind(), "future");
    for m in 1..=30 {
        let r = e
            .process(&event(Some("k1"), m, Some(2.0), Some("a")))
            .unwrap_or_else(|e| panic!("minute {m}: {e}"))
            .unwrap()
            .to_vec();
        assert_eq!(
            col(&p, &r, "w_n"),
            &Value::Int(m),
            "the refused event is in no window"
        );
    }
}

#[test]
fn the_first_event_sets_the_progress_and_the_bound_is_inclusive() {
    let mut e = common::engine();
    assert_eq!(e.progress(), None);
    // Whatever its time, the first event is accepted: there is nothing to be ahead of.
    assert!(
        e.process(&event(Some("k1"), 10 * DAY, None, Some("a")))
            .is_ok()
    );
    assert_eq!(e.progress(), Some(common::at(10 * DAY)));
    // Exactly one bound (seven days) ahead is accepted; a minute more is not.
    assert!(
        e.process(&event(Some("k2"), 17 * DAY, None, Some("a")))
            .is_ok()
    );
    let err = e
        .process(&event(Some("k3"), 24 * DAY + 1, None, Some("a")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            EventError::Future {
                max_future_ms: DEFAULT_MAX_FUTURE_MS,
                ..
            }
        ),
        "{err}"
    );
}

/// After a real gap longer than the bound, the progress catches up by one bound per refused
/// event, so the stream loses a few events and never stalls.
#[test]
fn a_real_gap_costs_a_few_events_not_the_stream() {
    let mut e = common::engine();
    assert!(e.process(&event(Some("k1"), 0, None, Some("a"))).is_ok());
    let after_gap = |i: i64| event(Some("k1"), 20 * DAY + i, None, Some("a"));
    let outcomes: Vec<bool> = (0..5).map(|i| e.process(&after_gap(i)).is_ok()).collect();
    // Twenty days after the progress: refused twice while the progress moves 0 -> 7 -> 14
    // days, then within seven days of it.
    assert_eq!(outcomes, [false, false, true, true, true]);
    assert_eq!(e.progress(), Some(common::at(20 * DAY + 4)));
}

/// A stream whose events are further apart than the bound would lose every one of them (the
/// progress never catches up): such streams set a larger bound, or `off`.
#[test]
fn a_sparse_stream_needs_a_larger_bound_or_none() {
    let every_two_days = |p| {
        let mut e = engine_of(p);
        (0..6)
            .map(|i| {
                e.process(&event(Some("k1"), i * 2 * DAY, None, Some("a")))
                    .is_ok()
            })
            .collect::<Vec<bool>>()
    };
    let one_day = every_two_days(with_events_line("max_future = \"1d\""));
    assert_eq!(one_day, [true, false, false, false, false, false]);
    assert!(
        every_two_days(with_events_line("max_future = \"off\""))
            .iter()
            .all(|ok| *ok)
    );
    assert!(every_two_days(common::pipeline()).iter().all(|ok| *ok));
}

#[test]
fn the_bound_is_configurable_and_the_default_keeps_fingerprints() {
    let p = with_events_line("max_future = \"2h\"");
    assert_eq!(p.max_future_ms, 7_200_000);
    let mut e = engine_of(p.clone());
    assert!(e.process(&event(Some("k1"), 0, None, Some("a"))).is_ok());
    assert!(e.process(&event(Some("k1"), 120, None, Some("a"))).is_ok());
    let err = e
        .process(&event(Some("k1"), 241, None, Some("a")))
        .unwrap_err();
    assert!(err.to_string().contains("more than 2h ahead"), "{err}");

    // Fingerprints: unset and the default written out are the same semantics and the same
    // fingerprint (the one pipelines had before the bound existed); another bound differs.
    let fitted = FittedState::fit(&p, std::iter::empty(), vec![]);
    let unset = fingerprint(&common::pipeline(), &fitted);
    let default = fingerprint(&with_events_line("max_future = \"7d\""), &fitted);
    let two_hours = fingerprint(&p, &fitted);
    assert_eq!(unset, default);
    assert_ne!(unset, two_hours);
    let json = serde_json::to_string(&*common::pipeline()).unwrap();
    assert!(
        !json.contains("max_future"),
        "left out of the spec when default: {json}"
    );

    let bad = common::PIPELINE.replace(
        "lateness = \"10m\"",
        "lateness = \"10m\"\nmax_future = \"0s\"",
    );
    let err = Pipeline::parse(&bad, "tiny.toml").unwrap_err();
    assert!(err.to_string().contains("events.max_future"), "{err}");
}
