//! Replay as shadow (`scorer replay --shadow`), against tansu: the report's figures are those of
//! each model replayed alone.
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
