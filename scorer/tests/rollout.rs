//! Guarded rollout (`scorer run --rollout-events`), against tansu: a deliberately bad version
//! (the champion's weights negated) published under the watched alias is tried beside the
//! champion and rolled back on its guards; a good one (fitted again with another
//! regularisation) is promoted. Neither decides anything while on trial.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::*;

/// Publish version 1 of `flights_delay` again as version 2 with every weight and the intercept
/// negated, and point `alias` at it.
fn publish_negated(store: &std::path::Path, alias: &str) {
    copy_version(store, "flights_delay", (1, 2), |file, bytes| {
        if file != "model.json" {
            return Some(bytes);
        }
        let mut model: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for w in model["weights"].as_array_mut().unwrap() {
            *w = serde_json::json!(-w.as_f64().unwrap());
        }
        model["intercept"] = serde_json::json!(-model["intercept"].as_f64().unwrap());
        Some(serde_json::to_vec(&model).unwrap())
    });
    std::fs::write(
        store.join(format!("models/flights_delay/aliases/{alias}")),
        br#"{"version":2,"set_at":"2026-12-07T00:00:00Z"}"#,
    )
    .unwrap();
}

/// Feed the fixture flights of `[from, to)` (event times) into `topic`.
fn feed_days(broker: &Broker, topic: &str, from: Option<&str>, to: Option<&str>) {
    let mut cmd = scorer();
    cmd.current_dir(repo())
        .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
        .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
        .args(["--topic", topic, "--json"]);
    if let Some(f) = from {
        cmd.args(["--from", f]);
    }
    if let Some(t) = to {
        cmd.args(["--to", t]);
    }
    run_ok(&mut cmd);
}

/// Start `scorer run` on `flights` (day 1 fed) with guarded rollouts of 300 events, the alias
/// looked at every 0.2 s, and `extra` flags; wait until day 1 is scored. The scorer, its
/// metrics address, and the number of day-1 events.
fn start_on_day_1(
    broker: &Broker,
    store: &std::path::Path,
    log: &std::path::Path,
    group: &str,
    extra: &[&str],
) -> (Guard, String, usize) {
    create_topic(broker, "flights", 1);
    feed_days(broker, "flights", None, Some("2013-01-02"));
    let mut args = run_args(broker, store, "flights", group);
    args.extend(
        [
            "--rollout-events",
            "300",
            "--reload-interval",
            "0.2",
            "--json",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let child = spawn_scorer(&args, log);
    let addr = addr_in_log(log, "metrics and health endpoints");
    let day1 = read_all(broker, "flights").len();
    wait_until("day 1 scored", 120, || events_done(&addr) == day1 as f64);
    (child, addr, day1)
}

/// Wait until every event of `flights` is scored (day 3 fed last), stop the scorer cleanly and
/// return its summary.
fn stop_when_all_scored(broker: &Broker, child: Guard, addr: &str) -> serde_json::Value {
    wait_until("day 3 scored", 120, || {
        events_done(addr) == read_all(broker, "flights").len() as f64
    });
    let out = child.terminate();
    assert!(out.status.success());
    json_out(&out)
}

/// The first JSON log line whose message contains `message` and whose `model` is `model`,
/// waiting up to 60 s for it.
fn log_line(log: &std::path::Path, message: &str, model: &str) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["message"].as_str().is_some_and(|m| m.contains(message)) && v["model"] == model
            })
        {
            return v;
        }
        assert!(
            t0.elapsed().as_secs() < 60,
            "no `{message}` for {model} in the log:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Day 1 is scored by the champion (version 1). The negated version 2 goes on trial for 300
/// events of day 2, with the labels flowing: its AUC on the labelled events both scored is far
/// below the champion's and its scores drift from its training split's, so it is rolled back,
/// saying so, and (`--rollout-revert-alias`) the alias is pointed back at version 1, which is
/// not tried again. The good version 3 goes on trial during day 3 and is promoted. The
/// predictions topic never holds a prediction of version 2; after the promotion, version 3's;
/// the trial's predictions are on the shadow topic.
#[test]
fn a_bad_version_is_rolled_back_and_a_good_one_promoted() {
    let broker = Broker::start();
    let dir = tempdir("rollout");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    create_topic(&broker, "labels", 1);
    feed_days(&broker, "labels", None, None);
    let log = dir.join("scorer.log");
    let (child, addr, _) = start_on_day_1(
        &broker,
        &store,
        &log,
        "rollout",
        &[
            "--labels",
            "labels",
            "--labels-from",
            "beginning",
            "--shadow-output",
            "flights.trial",
            "--rollout-revert-alias",
        ],
    );

    publish_negated(&store, "champion");
    log_line(&log, "on trial", "flights_delay@2");
    feed_days(&broker, "flights", Some("2013-01-02"), Some("2013-01-03"));
    let back = log_line(&log, "rolled back", "flights_delay@2");
    let reasons = back["reasons"].as_str().unwrap();
    assert!(
        reasons.contains("ROC AUC") && reasons.contains("drifted"),
        "{back}"
    );
    assert!(back["labelled"].as_u64().unwrap() >= 100, "{back}");
    let reverted = log_line(
        &log,
        "the alias points at the champion again",
        "flights_delay@1",
    );
    assert_eq!(reverted["refused"], "flights_delay@2", "{reverted}");
    let alias: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join("models/flights_delay/aliases/champion")).unwrap(),
    )
    .unwrap();
    assert_eq!(alias["version"], 1, "{alias}");
    log_line(
        &log,
        "the alias names the champion again",
        "flights_delay@1",
    );

    let good = fit(&store, "champion", &["--set", "alpha=0.5"]);
    assert_eq!(good["version"].as_u64(), Some(3), "{good}");
    log_line(&log, "on trial", "flights_delay@3");
    feed_days(&broker, "flights", Some("2013-01-03"), None);
    let promoted = log_line(&log, "promoted", "flights_delay@3");
    assert_eq!(promoted["previous"], "flights_delay@1", "{promoted}");
    eprintln!("rolled back: {back}\npromoted: {promoted}");
    let s = stop_when_all_scored(&broker, child, &addr);
    assert_eq!(s["rollouts_promoted"].as_u64(), Some(1), "{s}");
    assert_eq!(s["rollouts_rolled_back"].as_u64(), Some(1), "{s}");
    assert_eq!(s["model"], "flights_delay@3", "{s}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["rollout"] == "candidate" && v["model"] == "flights_delay@1"),
        "the champion's own version was put on trial"
    );

    // What decided: version 1, then version 3; never the rolled-back version 2.
    let mut by_version: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last = 0;
    for r in read_all(&broker, "flights.pred") {
        let v = r.json()["version"].as_u64().unwrap();
        assert!(v >= last, "version {v} after {last}: back to an older one");
        last = v;
        *by_version.entry(v).or_default() += 1;
    }
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        vec![1, 3],
        "{by_version:?}"
    );
    // The trials' predictions: at least 300 of version 2 and of version 3 each.
    let mut trial: BTreeMap<u64, usize> = BTreeMap::new();
    for r in read_all(&broker, "flights.trial") {
        *trial
            .entry(r.json()["version"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert!(trial.get(&2).is_some_and(|n| *n >= 300), "{trial:?}");
    assert!(trial.get(&3).is_some_and(|n| *n >= 300), "{trial:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A version that computes other features (the aircraft windows only, published as version 2
/// of `flights_delay`) goes on trial during day 2 with window state of its own: each
/// partition's state is rebuilt with it from the log (day 1, read once). Promoted, it takes its
/// state along (nothing is read again): every prediction of version 2, on trial and after the
/// promotion through day 3, is what a replay of version 2 alone gives, offset for offset and
/// bit for bit.
#[test]
fn a_version_of_other_features_is_tried_on_state_of_its_own_and_keeps_it_when_promoted() {
    let broker = Broker::start();
    let dir = tempdir("rollout-other");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    let log = dir.join("scorer.log");
    let (child, addr, day1) = start_on_day_1(&broker, &store, &log, "rollout-other", &[]);
    // The aircraft-only pipeline, published under the champion's name.
    let other = fit_with(
        "data/flights/pipeline-by-aircraft.toml",
        &store_url(&store),
        "champion",
        &["--name", "flights_delay"],
        &[],
    );
    assert_eq!(other["version"].as_u64(), Some(2), "{other}");
    log_line(&log, "on trial", "flights_delay@2");
    feed_days(&broker, "flights", Some("2013-01-02"), Some("2013-01-03"));
    let promoted = log_line(&log, "promoted", "flights_delay@2");
    assert_eq!(promoted["previous"], "flights_delay@1", "{promoted}");
    feed_days(&broker, "flights", Some("2013-01-03"), None);
    let s = stop_when_all_scored(&broker, child, &addr);
    assert_eq!(s["rollouts_promoted"].as_u64(), Some(1), "{s}");
    assert_eq!(s["model"], "flights_delay@2", "{s}");
    assert_eq!(s["warmed"].as_u64(), Some(day1 as u64), "{s}");

    replay_with(
        &broker,
        &store,
        "flights_delay@2",
        "flights",
        &["--output", "alone"],
    );
    let alone: BTreeMap<i64, serde_json::Value> = read_all(&broker, "alone")
        .iter()
        .map(|r| (r.json()["offset"].as_i64().unwrap(), r.json()))
        .collect();
    let mut checked = 0;
    for r in read_all(&broker, "flights.pred") {
        let v = r.json();
        if v["version"] != 2 {
            continue;
        }
        let o = v["offset"].as_i64().unwrap();
        let a = &alone[&o];
        assert_eq!(
            v["score"].as_f64().map(f64::to_bits),
            a["score"].as_f64().map(f64::to_bits),
            "offset {o}: {v} {a}"
        );
        checked += 1;
    }
    let trial: Vec<serde_json::Value> = read_all(&broker, "flights.pred.shadow")
        .iter()
        .map(Rec::json)
        .collect();
    for v in &trial {
        let o = v["offset"].as_i64().unwrap();
        assert_eq!(
            v["score"].as_f64().map(f64::to_bits),
            alone[&o]["score"].as_f64().map(f64::to_bits),
            "trial at offset {o}"
        );
    }
    eprintln!(
        "promoted: {promoted}\n{checked} predictions of version 2 after the promotion, {} on trial",
        trial.len()
    );
    assert!(
        checked > 500 && trial.len() >= 300,
        "{checked} {}",
        trial.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
