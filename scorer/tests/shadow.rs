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
    let versions = store.join("models/flights_delay/versions");
    let (v1, v2) = (versions.join("1"), versions.join("2"));
    std::fs::create_dir_all(&v2).unwrap();
    for e in std::fs::read_dir(&v1).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name != "reference.json" && name != "manifest.json" {
            std::fs::copy(&path, v2.join(&name)).unwrap();
        }
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v1.join("manifest.json")).unwrap()).unwrap();
    manifest["version"] = serde_json::json!(2);
    manifest["files"]
        .as_object_mut()
        .unwrap()
        .remove("reference.json")
        .expect("version 1 has reference distributions");
    std::fs::write(
        v2.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
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
    let refused = scorer()
        .current_dir(repo())
        .args([
            "replay",
            "--brokers",
            &broker.addr,
            "--store",
            &store_url(&store),
        ])
        .args([
            "--model",
            "flights_delay@2",
            "--input",
            "flights",
            "--drift",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("has no reference distributions"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
