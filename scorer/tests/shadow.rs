//! Operating a model, against tansu: replay as shadow (`scorer replay --shadow`), whose report's
//! figures are those of each model replayed alone, and drift against the training split
//! (`scorer replay --drift`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::*;

/// Score and decision by source offset, from a predictions topic.
fn predictions(broker: &Broker, topic: &str) -> BTreeMap<i64, (f64, bool)> {
    read_all(broker, topic)
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["offset"].as_i64().unwrap(),
                (
                    v["score"].as_f64().unwrap(),
                    v["decision"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// Copy the flights of topic `flights` to `flights-late` (one partition) with every departure
/// delay 60 minutes later.
fn feed_late(broker: &Broker) {
    let shifted: Vec<(String, Vec<u8>)> = read_all(broker, "flights")
        .iter()
        .map(|r| {
            let mut v = r.json();
            if let Some(d) = v["dep_delay"].as_f64() {
                v["dep_delay"] = serde_json::json!(d + 60.0);
            }
            (
                String::from_utf8(r.key.clone()).unwrap(),
                serde_json::to_vec(&v).unwrap(),
            )
        })
        .collect();
    create_topic(broker, "flights-late", 1);
    produce_raw(broker, "flights-late", &shifted);
}

/// Publish version 1 of `flights_delay` again as version 2 without `reference.json`: a bundle
/// from before reference distributions existed.
fn publish_without_reference(store: &std::path::Path) {
    copy_version(store, "flights_delay", (1, 2), |file, bytes| {
        (file != "reference.json").then_some(bytes)
    });
}

/// A logistic-regression champion and a decision-tree challenger over the fixture flights:
/// `scorer replay --model champion --shadow challenger` compares them on exactly the events
/// each scores when replayed alone; the agreement and the score shift are those of the two
/// replays' predictions joined by offset, and each model's AUC (on the same labelled events) is
/// what `scorer evaluate` finds for its own predictions. The report is also written as JSON
/// and PNG.
#[test]
fn replay_as_shadow_reports_each_model_as_replayed_alone() {
    let broker = Broker::start();
    let dir = tempdir("shadow");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    fit(&store, "challenger", &["--set", "kind=decision_tree"]);
    feed(&broker, "flights");
    for (alias, topic) in [("champion", "pred-a"), ("challenger", "pred-b")] {
        replay_with(
            &broker,
            &store,
            &format!("flights_delay@{alias}"),
            "flights",
            &["--output", topic],
        );
    }
    let (a, b) = (
        predictions(&broker, "pred-a"),
        predictions(&broker, "pred-b"),
    );
    assert!(a.len() > 2000, "{} predictions", a.len());
    let both: Vec<(f64, bool, f64, bool)> = a
        .iter()
        .filter_map(|(o, &(sa, da))| b.get(o).map(|&(sb, db)| (sa, da, sb, db)))
        .collect();
    let n = both.len() as f64;
    let agreement = both.iter().filter(|r| r.1 == r.3).count() as f64 / n;
    let shift = both.iter().map(|r| r.2 - r.0).sum::<f64>() / n;
    assert!(
        agreement < 1.0,
        "two kinds of model that always agree prove nothing"
    );

    let report_dir = dir.join("report");
    let out = replay_with(
        &broker,
        &store,
        "flights_delay@champion",
        "flights",
        &[
            "--shadow",
            "flights_delay@challenger",
            "--report",
            report_dir.to_str().unwrap(),
            "--json",
        ],
    );
    let r = json_out(&out);
    assert_eq!(r["events"].as_u64(), Some(both.len() as u64), "{r}");
    assert_eq!(r["agreement"].as_f64(), Some(agreement), "{r}");
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let (champion, shadow) = (&models[0], &models[1]);
    assert_eq!(champion["role"], "champion");
    assert_eq!(shadow["role"], "shadow");
    assert!(
        champion["model"]
            .as_str()
            .unwrap()
            .starts_with("flights_delay@")
    );
    assert_eq!(champion["scored"].as_u64(), Some(a.len() as u64));
    assert_eq!(shadow["scored"].as_u64(), Some(b.len() as u64));
    assert_eq!(shadow["score_shift"].as_f64(), Some(shift));
    assert_eq!(shadow["agreement"].as_f64(), Some(agreement));
    let mean_a = both.iter().map(|r| r.0).sum::<f64>() / n;
    assert_eq!(champion["mean_score"].as_f64(), Some(mean_a));

    for (model, preds, m) in [
        ("flights_delay@champion", "pred-a", champion),
        ("flights_delay@challenger", "pred-b", shadow),
    ] {
        let out = run_ok(scorer().current_dir(repo()).args([
            "evaluate",
            "--brokers",
            &broker.addr,
            "--store",
            &store_url(&store),
            "--model",
            model,
            "--input",
            "flights",
            "--predictions",
            preds,
            "--json",
        ]));
        let e = json_out(&out);
        assert_eq!(r["labelled"], e["joined"], "{model}: {e}");
        assert_eq!(m["auc"], e["online_auc"], "{model}: {e}");
    }

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(written["models"], r["models"]);
    let png = std::fs::read(report_dir.join("report.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::remove_dir_all(&dir).ok();
}

/// `scorer replay --drift` on the validation days of the fixture flights, and on the same
/// flights with every departure delay 60 minutes later: the delay inputs and the score drift past
/// the thresholds only in the second; a model without reference distributions is refused,
/// saying why.
#[test]
fn drift_moves_when_departure_delays_shift_and_not_on_the_validation_days() {
    let broker = Broker::start();
    let dir = tempdir("drift");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    feed(&broker, "flights");
    feed_late(&broker);
    let drift = |topic: &str| {
        let out = replay_with(
            &broker,
            &store,
            "flights_delay@champion",
            topic,
            &["--from", "2013-01-03", "--drift", "--json"],
        );
        json_out(&out)["drift"].clone()
    };
    let (usual, late) = (drift("flights"), drift("flights-late"));
    // `scorer drift` over the same range, of the topic and of the history file it was fed
    // from (in the same event order): the same report, every figure; and as JSON and PNG.
    let report_dir = dir.join("drift-report");
    let events = format!("{FIXTURES}/raw/flights.csv");
    for source in [["--input", "flights"], ["--events", events.as_str()]] {
        let out = run_ok(
            scorer()
                .current_dir(repo())
                .args([
                    "drift",
                    "--brokers",
                    &broker.addr,
                    "--store",
                    &store_url(&store),
                ])
                .args([
                    "--model",
                    "flights_delay@champion",
                    "--from",
                    "2013-01-03",
                    "--json",
                ])
                .args(["--report", report_dir.to_str().unwrap()])
                .args(source),
        );
        let r = json_out(&out);
        for key in ["events", "reference_events", "score", "inputs", "drifted"] {
            assert_eq!(r[key], usual[key], "{source:?}: {key}");
        }
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report_dir.join("drift.json")).unwrap()).unwrap();
        assert_eq!(written, usual, "{source:?}");
        let png = std::fs::read(report_dir.join("drift.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    let psi = |r: &serde_json::Value, name: &str| {
        r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no input {name}: {r}"))["psi"]
            .as_f64()
            .unwrap()
    };
    let threshold = usual["psi_threshold"].as_f64().unwrap();
    assert!(usual["events"].as_u64().unwrap() > 1000, "{usual}");
    assert_eq!(usual["events"], late["events"]);
    for name in ["dep_delay", "ac24_mean_dep_delay", "or1_mean_dep_delay"] {
        assert!(psi(&usual, name) < threshold, "{name}: {usual}");
        assert!(psi(&late, name) > threshold, "{name}: {late}");
        assert!(
            late["drifted"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == name),
            "{name}: {late}"
        );
    }
    assert!(
        usual["score"]["psi"].as_f64().unwrap() < threshold,
        "{usual}"
    );
    assert!(late["score"]["drifted"].as_bool().unwrap(), "{late}");

    // A bundle published before reference distributions existed (version 1 copied as version 2
    // without reference.json): it is served, and drift is refused, saying why.
    publish_without_reference(&store);
    replay_with(
        &broker,
        &store,
        "flights_delay@2",
        "flights",
        &["--out", dir.join("old.jsonl").to_str().unwrap()],
    );
    let refused = replay_command(&broker, &store, "flights_delay@2", "flights")
        .arg("--drift")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("has no reference distributions"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Every prediction of a topic by source offset: the JSON value.
fn by_offset(broker: &Broker, topic: &str) -> BTreeMap<i64, serde_json::Value> {
    let mut out = BTreeMap::new();
    for r in read_all(broker, topic) {
        let v = r.json();
        let o = v["offset"].as_i64().unwrap();
        assert!(out.insert(o, v).is_none(), "{topic}: offset {o} twice");
    }
    out
}

/// `scorer run --shadow` in arrival and in watermark order: the champion's predictions are
/// those of a run without the shadow (a replay of the champion alone), and the shadow topic
/// holds, for the same events, exactly the predictions a replay of the challenger alone makes,
/// bit for bit, with the challenger's lineage. The summary's agreement is that of the two
/// topics joined by offset. In watermark order a shadow of other features is refused at start,
/// naming both fingerprints; one that cannot be loaded is left out and the champion scores as
/// usual.
#[test]
fn live_shadows_score_as_the_challenger_alone_and_decide_nothing() {
    let broker = Broker::start();
    let dir = tempdir("live-shadow");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    fit(&store, "challenger", &["--set", "kind=decision_tree"]);
    create_topic(&broker, "flights", 1);
    feed(&broker, "flights");
    for order in ["arrival", "watermark"] {
        let (pred, shadow_topic) = (format!("pred-{order}"), format!("shadow-{order}"));
        let mut args = run_args(&broker, &store, "flights", &format!("live-{order}"));
        for (flag, value) in [
            ("--output", pred.clone()),
            ("--dlq", format!("dlq-{order}")),
        ] {
            let at = args.iter().position(|a| a == flag).unwrap() + 1;
            args[at] = value;
        }
        args.extend(
            [
                "--order",
                order,
                "--shadow",
                "flights_delay@challenger",
                "--shadow-output",
                &shadow_topic,
                "--exit-when-idle",
                "3",
                "--json",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let s = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
        let alone = |model: &str, topic: &str| {
            replay_with(
                &broker,
                &store,
                model,
                "flights",
                &["--output", topic, "--order", order],
            );
            by_offset(&broker, topic)
        };
        let champion_alone = alone("flights_delay@champion", &format!("alone-a-{order}"));
        let challenger_alone = alone("flights_delay@challenger", &format!("alone-b-{order}"));
        let (champion, shadow) = (by_offset(&broker, &pred), by_offset(&broker, &shadow_topic));
        assert!(champion.len() > 2000, "{order}: {}", champion.len());
        let score = |v: &serde_json::Value| v["score"].as_f64().unwrap().to_bits();
        // The shadow scored exactly the events the champion scored.
        assert_eq!(
            champion.keys().collect::<Vec<_>>(),
            shadow.keys().collect::<Vec<_>>(),
            "{order}"
        );
        for (live, alone, what) in [
            (&champion, &champion_alone, "champion"),
            (&shadow, &challenger_alone, "shadow"),
        ] {
            // A replay ends the stream and releases every held event; a live run in watermark
            // order still holds the newest (within the lateness of the last): only those are
            // missing, and only in watermark order.
            let missing: Vec<&i64> = alone.keys().filter(|o| !live.contains_key(o)).collect();
            if order == "arrival" {
                assert!(missing.is_empty(), "{what}: {missing:?}");
            } else {
                let newest = live
                    .values()
                    .map(|v| v["event_time_ms"].as_i64().unwrap())
                    .max();
                for o in &missing {
                    let t = alone[o]["event_time_ms"].as_i64().unwrap();
                    assert!(
                        Some(t) >= newest.map(|n| n - 3_600_000),
                        "{what}: {o} at {t}"
                    );
                }
            }
            assert!(
                live.keys().all(|o| alone.contains_key(o)),
                "{order}: {what}"
            );
            for (o, v) in live {
                let a = &alone[o];
                assert_eq!(score(v), score(a), "{order}: {what} at offset {o}: {v} {a}");
                assert_eq!(v["version"], a["version"], "{order}: {what} at offset {o}");
                assert_eq!(v["decision"], a["decision"], "{order}: {what} at {o}");
            }
        }
        assert_ne!(
            champion.values().next().unwrap()["version"],
            shadow.values().next().unwrap()["version"],
            "the shadow's predictions carry its own version"
        );
        let agreed = champion
            .iter()
            .filter(|(o, v)| shadow[*o]["decision"] == v["decision"])
            .count();
        assert!(
            agreed < shadow.len(),
            "{order}: models that always agree prove nothing"
        );
        let sh = &s["shadows"][0];
        assert_eq!(
            sh["scored"].as_u64(),
            Some(shadow.len() as u64),
            "{order}: {s}"
        );
        assert_eq!(sh["agreed"].as_u64(), Some(agreed as u64), "{order}: {s}");
        assert_eq!(sh["failed"].as_u64(), Some(0), "{order}: {s}");
        assert_eq!(
            s["shadow_predicted"].as_u64(),
            Some(shadow.len() as u64),
            "{s}"
        );
        assert_eq!(s["predicted"].as_u64(), Some(champion.len() as u64), "{s}");
    }

    // In watermark order a shadow scores the rows the champion releases: one of other
    // features (windows by aircraft) is refused before any work.
    fit_by_aircraft(&store, "other");
    let mut args = run_args(&broker, &store, "flights", "refused");
    args.extend(
        [
            "--order",
            "watermark",
            "--shadow",
            "flights_delay_by_aircraft@other",
            "--exit-when-idle",
            "3",
        ]
        .map(String::from),
    );
    let out = scorer().current_dir(repo()).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("computes other features than the champion")
            && err.contains("state fingerprint")
            && err.contains("watermark order"),
        "{err}"
    );
    assert!(
        !broker_has(&broker, "flights.pred.shadow"),
        "work was done before the refusal"
    );

    // A shadow that cannot be loaded: the champion scores every event as usual.
    let mut args = run_args(&broker, &store, "flights", "missing");
    args.extend(
        [
            "--shadow",
            "flights_delay@nowhere",
            "--exit-when-idle",
            "3",
            "--json",
        ]
        .map(String::from),
    );
    let s = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    assert_eq!(s["shadows"].as_array().map(Vec::len), Some(0), "{s}");
    assert_eq!(
        by_offset(&broker, "flights.pred").len(),
        by_offset(&broker, "pred-arrival").len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A shadow of other features (windows by aircraft only, beside the champion's airport window)
/// keeps window state of its own, checkpointed with the champion's. Two runs: the first scores
/// the first 2,000 flights and stops, leaving a snapshot at its commit; the second restores it
/// (nothing refused, nothing read to warm up) and scores the rest. Over both runs the champion's
/// topic is a replay of the champion alone and the shadow topic a replay of the challenger
/// alone, offset for offset and bit for bit, on every event both scored: so the challenger's
/// own windows were carried across the restart by the snapshot.
#[test]
fn a_live_shadow_of_other_features_keeps_and_restores_state_of_its_own() {
    let broker = Broker::start();
    let dir = tempdir("own-state");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    fit_by_aircraft(&store, "other");
    let all = read_fixture_events();
    let (first, rest) = all.split_at(2000);
    create_topic(&broker, "flights", 1);
    produce_records(&broker, "flights", first);
    let mut args = run_args(&broker, &store, "flights", "own-state");
    args.extend(
        [
            "--shadow",
            "flights_delay_by_aircraft@other",
            "--exit-when-idle",
            "3",
            "--json",
        ]
        .map(String::from),
    );
    let run = || json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    let one = run();
    assert_eq!(one["consumed"], 2000, "{one}");
    assert_eq!(one["checkpoints"], 1, "the one at shutdown: {one}");
    produce_records(&broker, "flights", rest);
    let two = run();
    assert_eq!(two["restored"], 1, "{two}");
    assert_eq!(two["snapshots_refused"], 0, "{two}");
    assert_eq!(two["warmed"], 0, "the snapshot is at the commit: {two}");

    let alone = |model: &str, topic: &str| {
        replay_with(&broker, &store, model, "flights", &["--output", topic]);
        by_offset(&broker, topic)
    };
    let champion_alone = alone("flights_delay@champion", "alone-champion");
    let other_alone = alone("flights_delay_by_aircraft@other", "alone-other");
    let (champion, shadow) = (
        by_offset(&broker, "flights.pred"),
        by_offset(&broker, "flights.pred.shadow"),
    );
    let score = |v: &serde_json::Value| v["score"].as_f64().unwrap().to_bits();
    assert_eq!(
        champion.keys().collect::<Vec<_>>(),
        champion_alone.keys().collect::<Vec<_>>()
    );
    let both: Vec<&i64> = champion
        .keys()
        .filter(|o| other_alone.contains_key(o))
        .collect();
    assert_eq!(shadow.keys().collect::<Vec<_>>(), both);
    assert!(
        both.iter().filter(|o| ***o >= 2000).count() > 500,
        "the second run's shadow predictions: {}",
        both.len()
    );
    for (o, v) in &champion {
        assert_eq!(score(v), score(&champion_alone[o]), "champion at {o}");
    }
    let mut differ = 0;
    for (o, v) in &shadow {
        let a = &other_alone[o];
        assert_eq!(score(v), score(a), "shadow at offset {o}: {v} {a}");
        assert_eq!(v["model"], a["model"], "at {o}");
        assert_eq!(v["version"], a["version"], "at {o}");
        differ += usize::from(score(v) != score(&champion[o]));
    }
    assert!(
        differ > 0,
        "a challenger that scores as the champion proves nothing"
    );
    let sh = &two["shadows"][0];
    assert_eq!(sh["failed"], 0, "{two}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `scorer run --drift-window N` on the fixture flights and on the same flights with every
/// departure delay 60 minutes later. The last N events of each topic are its validation days,
/// which `scorer replay --from 2013-01-03 --drift` measures: the gauges scraped from the running
/// scorer, and its summary at exit, hold that report's figures bit for bit, every column. On
/// the usual flights the delay inputs and the score stay below the thresholds; on the late
/// ones they pass them. A bundle without reference distributions is served, drift unavailable.
#[test]
fn live_drift_gauges_are_the_replay_figures_and_move_when_delays_shift() {
    use std::time::{Duration, Instant};
    let broker = Broker::start();
    let dir = tempdir("live-drift");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    create_topic(&broker, "flights", 1);
    feed(&broker, "flights");
    feed_late(&broker);
    let bits = |v: &serde_json::Value| v.as_f64().map(f64::to_bits);
    let mut predicted = Vec::new();
    for topic in ["flights", "flights-late"] {
        let replayed = json_out(&replay_with(
            &broker,
            &store,
            "flights_delay@champion",
            topic,
            &["--from", "2013-01-03", "--drift", "--json"],
        ))["drift"]
            .clone();
        let n = replayed["events"].as_u64().unwrap();
        let log = dir.join(format!("{topic}.log"));
        let mut args = run_args(&broker, &store, topic, &format!("drift-{topic}"));
        let window = n.to_string();
        args.extend(["--drift-window", &window, "--json"].map(String::from));
        let child = spawn_scorer(&args, &log);
        let addr = addr_in_log(&log, "metrics and health endpoints");
        let columns: Vec<&serde_json::Value> = std::iter::once(&replayed["score"])
            .chain(replayed["inputs"].as_array().unwrap())
            .collect();
        let gauge = |text: &str, kind: &str, name: &str| {
            metric(text, &format!("kml_drift_{kind}{{column=\"{name}\"}}"))
        };
        // Wait for every event, then for the gauges to be brought up to date (once a second).
        let all = read_all(&broker, topic).len() as f64;
        let t0 = Instant::now();
        let text = loop {
            let (_, text) = http_get(&addr, "/metrics");
            let done = metric(&text, "kml_predictions_total")
                + metric(&text, "kml_dead_lettered_total")
                + metric(&text, "kml_filtered_total");
            if done == all
                && text.contains("kml_drift_psi{")
                && gauge(&text, "psi", "score").to_bits()
                    == bits(&replayed["score"]["psi"]).unwrap()
            {
                break text;
            }
            let shown: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("kml_drift"))
                .collect();
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{topic}: the gauges never reached the replay's figures: {replayed}\n{}",
                shown.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(metric(&text, "kml_drift_available"), 1.0);
        assert_eq!(metric(&text, "kml_drift_window_events"), n as f64);
        for c in &columns {
            let name = c["name"].as_str().unwrap();
            for kind in ["psi", "js"] {
                assert_eq!(
                    Some(gauge(&text, kind, name).to_bits()),
                    bits(&c[kind]),
                    "{topic}: {kind} of {name}"
                );
            }
        }
        let drifted = replayed["drifted"].as_array().unwrap().len()
            + usize::from(replayed["score"]["drifted"].as_bool().unwrap());
        assert_eq!(metric(&text, "kml_drift_drifted_columns"), drifted as f64);
        let s = json_out(&child.terminate());
        assert_eq!(s["drift"], replayed, "{topic}: the summary's drift");
        predicted.push(s["predicted"].clone());

        let threshold = replayed["psi_threshold"].as_f64().unwrap();
        let late = topic == "flights-late";
        for name in [
            "score",
            "dep_delay",
            "ac24_mean_dep_delay",
            "or1_mean_dep_delay",
        ] {
            let psi = gauge(&text, "psi", name);
            assert_eq!(psi > threshold, late, "{topic}: PSI of {name} {psi}");
        }
    }

    // A bundle without reference distributions: served, drift unavailable.
    publish_without_reference(&store);
    let mut args = run_args(&broker, &store, "flights", "drift-old");
    let at = args.iter().position(|a| a == "--model").unwrap() + 1;
    args[at] = "flights_delay@2".to_string();
    args.extend(["--exit-when-idle", "3", "--json"].map(String::from));
    let s = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    assert!(s["drift"].is_null(), "{s}");
    assert_eq!(s["predicted"], predicted[0], "{s}");
    std::fs::remove_dir_all(&dir).ok();
}
