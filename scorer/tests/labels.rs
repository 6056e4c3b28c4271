//! Accuracy from delayed labels (`scorer run --labels`), against tansu: labels early, late,
//! duplicated and never, joined with the champion's and a shadow's predictions; each model's
//! AUC is what `scorer evaluate` finds on the same labelled predictions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::*;

/// What the summary must count.
#[derive(Debug)]
struct Want {
    joined: u64,
    duplicate: u64,
    no_label: u64,
    pending_labels: u64,
    pending_predictions: u64,
}

/// The fixture flights carry their own labels (the arrival delay), so each flight's record is
/// its label record. Half the flights' labels are on the labels topic before the scorer starts
/// (early: read before their predictions), the rest come once every event is scored (late),
/// except the last 50 (never); 100 labels come twice, 20 name flights never scored (another
/// key) and 10 records are not JSON. With a horizon longer than the three days, nothing
/// expires: the summary counts every label and prediction where it belongs (what each must be
/// is worked out from the records and the predictions: a diverted flight has no label, a
/// dead-lettered one no prediction), and the AUC of the
/// champion and of its shadow, each over all its labelled predictions, is what `scorer
/// evaluate` computes from a predictions topic holding exactly those predictions.
#[test]
fn delayed_labels_early_late_duplicated_and_never_give_evaluate_s_auc() {
    let broker = Broker::start();
    let dir = tempdir("labels");
    let store = dir.join("store");
    fit(&store, "champion", &[]);
    fit(&store, "challenger", &["--set", "kind=decision_tree"]);
    create_topic(&broker, "flights", 1);
    feed(&broker, "flights");
    let events = read_all(&broker, "flights");
    let n = events.len();
    let label = |r: &Rec| (String::from_utf8(r.key.clone()).unwrap(), r.payload.clone());
    let half = n / 2;
    let early: Vec<(String, Vec<u8>)> = events[..half].iter().map(label).collect();
    let late: Vec<(String, Vec<u8>)> = events[half..n - 50].iter().map(label).collect();
    let never: BTreeSet<i64> = ((n - 50) as i64..n as i64).collect();
    let unknown: Vec<(String, Vec<u8>)> = events[..20]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = r.json();
            v["tailnum"] = serde_json::json!(format!("NEVER{i}"));
            (format!("NEVER{i}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    let malformed: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("bad{i}"), format!("not json {i}").into_bytes()))
        .collect();
    create_topic(&broker, "labels", 1);
    produce_raw(&broker, "labels", &early);
    produce_raw(&broker, "labels", &unknown);
    produce_raw(&broker, "labels", &malformed);

    let log = dir.join("scorer.log");
    let mut args = run_args(&broker, &store, "flights", "labels");
    args.extend(
        [
            "--shadow",
            "flights_delay@challenger",
            "--labels",
            "labels",
            "--labels-from",
            "beginning",
            "--label-horizon",
            "604800",
            "--json",
        ]
        .map(String::from),
    );
    let child = spawn_scorer(&args, &log);
    let addr = addr_in_log(&log, "metrics and health endpoints");
    wait_until("every event scored", 120, || events_done(&addr) == n as f64);
    // Late, and the duplicates (of early labels) among them.
    produce_raw(&broker, "labels", &late);
    produce_raw(&broker, "labels", &early[..100]);
    // What the join must make of them, from the records and the predictions: a flight without
    // an arrival delay (diverted) has no label; an event dead-lettered has no prediction.
    let has_label: Vec<bool> = events
        .iter()
        .map(|r| !r.json()["arr_delay"].is_null())
        .collect();
    let predicted: BTreeSet<i64> = read_all(&broker, "flights.pred")
        .iter()
        .map(|r| r.json()["offset"].as_i64().unwrap())
        .collect();
    let count = |range: std::ops::Range<usize>, f: &dyn Fn(usize) -> bool| {
        range.filter(|&i| f(i)).count() as u64
    };
    let scored = |i: usize| predicted.contains(&(i as i64));
    let sent = 0..n - 50;
    let want = Want {
        joined: count(sent.clone(), &|i| has_label[i] && scored(i)),
        duplicate: count(0..100, &|i| has_label[i]),
        no_label: count(sent.clone(), &|i| !has_label[i])
            + count(0..100, &|i| !has_label[i])
            + count(0..20, &|i| !has_label[i]),
        pending_labels: count(0..20, &|i| has_label[i])
            + count(sent.clone(), &|i| has_label[i] && !scored(i)),
        pending_predictions: count(n - 50..n, &scored)
            + count(sent.clone(), &|i| scored(i) && !has_label[i]),
    };
    assert!(
        want.no_label > 0 && want.pending_predictions > 0,
        "{want:?}"
    );
    let joined = want.joined as f64;
    let t0 = std::time::Instant::now();
    loop {
        let text = http_get(&addr, "/metrics").1;
        if metric(&text, "kml_labels_total{outcome=\"joined\"}") == joined
            && metric(&text, "kml_labels_total{outcome=\"duplicate\"}") == want.duplicate as f64
        {
            break;
        }
        let shown: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("kml_label"))
            .collect();
        assert!(
            t0.elapsed().as_secs() < 60,
            "not every label joined ({joined} expected):\n{}",
            shown.join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = child.terminate();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let s = json_out(&out);
    let l = &s["labels"];
    let read = early.len() + unknown.len() + malformed.len() + late.len() + 100;
    assert_eq!(l["read"].as_u64(), Some(read as u64), "{l}");
    assert_eq!(l["joined"].as_u64(), Some(want.joined), "{l}");
    assert_eq!(l["duplicate"].as_u64(), Some(want.duplicate), "{l}");
    assert_eq!(l["no_label"].as_u64(), Some(want.no_label), "{l}");
    assert_eq!(l["malformed"].as_u64(), Some(10), "{l}");
    assert_eq!(
        l["pending_labels"].as_u64(),
        Some(want.pending_labels),
        "{l}"
    );
    assert_eq!(
        l["pending_predictions"].as_u64(),
        Some(want.pending_predictions),
        "{l}"
    );
    for k in ["unmatched", "too_late", "unlabelled"] {
        assert_eq!(l[k].as_u64(), Some(0), "{k}: {l}");
    }

    // Each model's predictions of the labelled flights, on a topic of their own, evaluated.
    for (topic, role) in [
        ("flights.pred", "champion"),
        ("flights.pred.shadow", "shadow"),
    ] {
        let labelled: Vec<(String, Vec<u8>)> = read_all(&broker, topic)
            .iter()
            .filter(|r| !never.contains(&r.json()["offset"].as_i64().unwrap()))
            .map(|r| (String::from_utf8(r.key.clone()).unwrap(), r.payload.clone()))
            .collect();
        let only = format!("{role}-labelled");
        create_topic(&broker, &only, 1);
        produce_raw(&broker, &only, &labelled);
        let model = l["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == role)
            .unwrap_or_else(|| panic!("no {role} in {l}"))
            .clone();
        let e = json_out(&run_ok(scorer().current_dir(repo()).args([
            "evaluate",
            "--brokers",
            &broker.addr,
            "--store",
            &store_url(&store),
            "--model",
            model["model"].as_str().unwrap(),
            "--input",
            "flights",
            "--predictions",
            &only,
            "--json",
        ])));
        assert_eq!(model["events"], e["joined"], "{role}: {model} {e}");
        assert_eq!(model["labelled"], e["joined"], "{role}: {model} {e}");
        assert_eq!(model["auc"], e["online_auc"], "{role}: {model} {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
