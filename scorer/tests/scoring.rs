//! The scorer against a real Kafka-protocol broker (tansu, started by the test): live scoring of
//! the fixture flights, every kind of poison event to the dead-letter topic, replay parity, hot
//! reload, a broker down at start, a rebalance mid-transaction, nonsense settings. Crashes,
//! restarts and scale-out are in `restarts.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;

use common::*;

/// `scorer replay` of the topic `flights` with `model`, plus `extra` arguments.
fn replay(
    broker: &Broker,
    store: &std::path::Path,
    model: &str,
    extra: &[&str],
) -> std::process::Output {
    replay_with(broker, store, model, "flights", extra)
}

#[test]
fn live_scoring_dead_letters_and_replay_parity() {
    let broker = Broker::start();
    let store = tempdir("live");
    let fitted = fit(&store, "champion", &[]);
    let fed = feed(&broker, "flights");
    assert_eq!(fed["fed"], 2699);

    // Poison: one of each kind, after the good events. The late one is a real event of an
    // aircraft moved a day back in time.
    let good = read_all(&broker, "flights");
    let last = good
        .iter()
        .map(Rec::json)
        .rfind(|e| !e["dep_time"].is_null())
        .unwrap();
    let mut late = last.clone();
    late["day"] = serde_json::json!(last["day"].as_i64().unwrap() - 1);
    let mut wrong_type = last.clone();
    wrong_type["dep_delay"] = serde_json::json!("late");
    let mut missing = last.clone();
    missing.as_object_mut().unwrap().remove("origin");
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "x",
            b"{\"year\": 2013, \"month\": ".to_vec(),
            "malformed JSON",
        ),
        ("x", b"[1, 2, 3]".to_vec(), "malformed JSON"),
        (
            "x",
            serde_json::to_vec(&missing).unwrap(),
            "field `origin` is missing",
        ),
        (
            "x",
            serde_json::to_vec(&wrong_type).unwrap(),
            "field `dep_delay` should be",
        ),
        ("x", vec![b' '; 100_000], "oversized payload"),
        ("x", serde_json::to_vec(&late).unwrap(), "late event"),
    ];
    let raw: Vec<(&str, Vec<u8>)> = poison.iter().map(|(k, v, _)| (*k, v.clone())).collect();
    produce_raw(&broker, "flights", &raw);

    let out = run_ok(
        scorer()
            .current_dir(repo())
            .args(run_args(&broker, &store, "flights", "live"))
            .args([
                "--exit-when-idle",
                "3",
                "--max-event-bytes",
                "65536",
                "--lineage-headers",
                "--json",
            ]),
    );
    let summary = json_out(&out);
    let preds = read_all(&broker, "flights.pred");
    let dlq = read_all(&broker, "flights.dlq");
    // Every good event is either scored or filtered (cancelled flights); nothing else.
    let filtered = summary["filtered"].as_u64().unwrap();
    assert_eq!(summary["consumed"], 2699 + poison.len() as u64);
    let errors: Vec<&String> = dlq.iter().map(|d| &d.headers["kml.error"]).collect();
    assert_eq!(preds.len() as u64, 2699 - filtered, "{summary} {errors:?}");
    assert!(filtered > 0 && filtered < 100, "{summary}");
    assert_eq!(summary["predicted"].as_u64().unwrap(), preds.len() as u64);
    assert_eq!(
        summary["dead_lettered"].as_u64().unwrap(),
        poison.len() as u64
    );

    // The dead letters: original bytes, the error, the source position.
    assert_eq!(dlq.len(), poison.len());
    for (d, (_, bytes, why)) in dlq.iter().zip(&poison) {
        assert_eq!(&d.payload, bytes);
        assert!(
            d.headers["kml.error"].contains(why),
            "{:?} vs {why}",
            d.headers
        );
        assert_eq!(d.headers["kml.source.topic"], "flights");
        let off: i64 = d.headers["kml.source.offset"].parse().unwrap();
        assert_eq!(
            good.len() as i64 + dlq.iter().position(|x| x.offset == d.offset).unwrap() as i64,
            off
        );
    }

    // Lineage on every prediction, in the value and in headers.
    let version = fitted["version"].as_u64().unwrap();
    let mut seen = std::collections::HashSet::new();
    for p in &preds {
        let v = p.json();
        assert_eq!(v["model"], "flights_delay");
        assert_eq!(v["version"], version);
        assert_eq!(v["fingerprint"], fitted["feature_fingerprint"]);
        assert_eq!(v["topic"], "flights");
        let off = v["offset"].as_i64().unwrap();
        assert!(seen.insert(off), "offset {off} predicted twice");
        assert_eq!(p.headers["kml.source.offset"], off.to_string());
        assert_eq!(p.headers["kml.model"], format!("flights_delay@{version}"));
        let src = good[off as usize].json();
        assert_eq!(p.key, src["tailnum"].as_str().unwrap().as_bytes());
        let s = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
        assert_eq!(v["decision"], s >= 0.5);
    }

    // Replaying the whole topic gives bit-identical scores for every event.
    let out = replay(
        &broker,
        &store,
        "flights_delay@champion",
        &["--output", "flights.replay", "--json"],
    );
    let rs = json_out(&out);
    assert_eq!(rs["replayed"].as_u64().unwrap(), preds.len() as u64);
    let (live, _) = scores_by_offset(&preds);
    let (replayed, _) = scores_by_offset(&read_all(&broker, "flights.replay"));
    assert_eq!(live.len(), replayed.len());
    for (off, s) in &live {
        assert_eq!(s.to_bits(), replayed[off].to_bits(), "offset {off}");
    }

    // A replayed range by event time, warmed from before it, equals the live scores there.
    let range = [
        "--from",
        "2013-01-02T12:00:00Z",
        "--to",
        "2013-01-03",
        "--output",
        "flights.day",
    ];
    let out = replay(
        &broker,
        &store,
        "flights_delay@champion",
        &[&range[..], &["--json"]].concat(),
    );
    let day = json_out(&out);
    let (part, _) = scores_by_offset(&read_all(&broker, "flights.day"));
    assert!(day["warmed"].as_u64().unwrap() > 1000);
    assert_eq!(part.len() as u64, day["replayed"].as_u64().unwrap());
    assert!(part.len() > 200, "{day}");
    for (off, s) in &part {
        assert_eq!(s.to_bits(), live[off].to_bits(), "offset {off}");
    }

    // A decision tree and a burn MLP are served the same way (replayed here to JSON lines):
    // the tree scores its leaves' shares, the MLP a continuous probability.
    for (kind, at_least_distinct) in [("decision_tree", 3), ("mlp", preds.len() / 2)] {
        let fitted = fit(&store, kind, &["--set", &format!("kind={kind}")]);
        assert_eq!(fitted["kind"], kind);
        let lines = store.join(format!("{kind}.jsonl"));
        replay(
            &broker,
            &store,
            &format!("flights_delay@{kind}"),
            &["--out", lines.to_str().unwrap()],
        );
        let text = std::fs::read_to_string(&lines).unwrap();
        let scored: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(scored.len(), preds.len());
        assert!(scored.iter().all(|v| v["version"] == fitted["version"]));
        let distinct: std::collections::BTreeSet<u64> = scored
            .iter()
            .map(|v| v["score"].as_f64().unwrap().to_bits())
            .collect();
        assert!(
            distinct.len() >= at_least_distinct,
            "{kind}: {}",
            distinct.len()
        );
    }
}

#[test]
fn a_model_that_cannot_be_loaded_is_a_clear_error() {
    let broker = Broker::start();
    let store = tempdir("noload");
    let out = scorer()
        .args(run_args(&broker, &store, "flights", "g"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot load model `flights_delay@champion`"),
        "{err}"
    );
}

/// The scorer's metrics address, read from its log.
fn metrics_addr(log: &std::path::Path) -> String {
    addr_in_log(log, "metrics and health endpoints")
}

#[test]
fn hot_reload_swaps_good_bundles_and_refuses_bad_ones() {
    let broker = Broker::start();
    let store = tempdir("reload");
    let v1 = fit(&store, "champion", &[])["version"].as_u64().unwrap();
    feed(&broker, "flights");
    let log = store.join("scorer.log");
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(run_args(&broker, &store, "flights", "reload"))
            .args(["--reload-interval", "0.2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = metrics_addr(&log);
    let get = |m: &str| metric(&http_get(&addr, "/metrics").1, m);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    wait_until("the fixtures scored", 60, || {
        get("kml_predictions_total") > 2600.0
    });
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    assert_eq!(get("kml_model_version"), v1 as f64);

    // A good new version (other hyperparameters, same features) is swapped in.
    let v2 = fit(&store, "champion", &["--set", "alpha=10"])["version"]
        .as_u64()
        .unwrap();
    wait_until("reload to v2", 30, || get("kml_model_version") == v2 as f64);
    assert_eq!(get("kml_model_reloads_total"), 1.0);

    // A corrupt one (a file that does not match its checksum) is refused; v2 keeps serving.
    let v3 = fit(&store, "challenger", &[])["version"].as_u64().unwrap();
    let dir = store.join(format!("models/flights_delay/versions/{v3}"));
    std::fs::write(
        dir.join("model.json"),
        b"{\"weights\": [], \"intercept\": 0}",
    )
    .unwrap();
    run_ok(
        trainer()
            .args([
                "promote",
                &format!("flights_delay@{v3}"),
                "--alias",
                "champion",
                // Moving the alias to a bundle the scorer must refuse is the point here.
                "--no-verify",
            ])
            .args(["--store", &store_url(&store)]),
    );
    wait_until("the refusal", 30, || {
        get("kml_model_reload_failures_total") == 1.0
    });
    assert_eq!(get("kml_model_version"), v2 as f64);

    // New events are scored by v2.
    let first = read_all(&broker, "flights.pred").len();
    // Re-send the last 50 departed flights a day later: valid, in order, scored by v2.
    let recs: Vec<Rec> = read_all(&broker, "flights")
        .into_iter()
        .filter(|r| !r.json()["dep_time"].is_null())
        .collect();
    let later: Vec<(String, Vec<u8>)> = recs[recs.len() - 50..]
        .iter()
        .map(|r| {
            let mut v = r.json();
            v["day"] = serde_json::json!(v["day"].as_i64().unwrap() + 1);
            (
                String::from_utf8(r.key.clone()).unwrap(),
                serde_json::to_vec(&v).unwrap(),
            )
        })
        .collect();
    let later: Vec<(&str, Vec<u8>)> = later.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    produce_raw(&broker, "flights", &later);
    wait_until("the new events", 60, || {
        read_all(&broker, "flights.pred").len() >= first + 50
    });
    let preds = read_all(&broker, "flights.pred");
    for p in &preds[first..] {
        assert_eq!(p.json()["version"], v2);
    }
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("new model version refused"), "{text}");
    assert!(
        text.contains("model.json"),
        "the refusal names the file: {text}"
    );
}

#[test]
fn a_broker_that_is_down_at_start_is_waited_for() {
    let store = tempdir("down");
    fit(&store, "champion", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = store.join("scorer.log");
    let args: Vec<String> = run_args_at(&addr, &store, "flights", "down");
    let child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(&args)
            .args(["--exit-when-idle", "3", "--json"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The first metadata request gives up after 10 s; 90 s only guards against a hang.
    wait_until("a retry logged", 90, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("broker not ready; retrying")
    });
    let broker = Broker::start_on(port);
    feed(&broker, "flights");
    let out = child.output();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let s = json_out(&out);
    assert_eq!(s["consumed"], 2699);
    assert_eq!(
        read_all(&broker, "flights.pred").len() as u64,
        s["predicted"].as_u64().unwrap()
    );
    std::fs::remove_dir_all(&store).ok();
}

/// A second instance joins the group while the first has a transaction open and (eager
/// rebalancing) its partition is revoked: the first aborts it and goes on; when it stops, the
/// second takes over from the last committed transaction.
#[test]
fn a_rebalance_mid_transaction_aborts_it_and_scoring_goes_on() {
    let broker = Broker::start();
    let store = tempdir("rebalance");
    fit(&store, "champion", &[]);
    feed(&broker, "flights");
    let spawn = |name: &str, interval: &str| {
        let log = store.join(format!("{name}.log"));
        let child = Guard::new(
            scorer()
                .current_dir(repo())
                .args(run_args(&broker, &store, "flights", "rebalance"))
                .args([
                    "--exactly-once",
                    "--transactional-id",
                    &format!("kml-{name}"),
                ])
                .args(["--transaction-interval", interval, "--json"])
                .args([
                    "-X",
                    "max.poll.interval.ms=8000",
                    "-X",
                    "session.timeout.ms=6000",
                    // Eager rebalancing, so that a member joining revokes A's one partition
                    // mid-transaction (the default, cooperative-sticky, would leave it at A).
                    "-X",
                    "partition.assignment.strategy=range,roundrobin",
                ])
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let addr = metrics_addr(&log);
        (child, addr, log)
    };
    // A commits every 600 s: once it has read everything, its transaction stays open.
    let (mut a, a_addr, a_log) = spawn("a", "600");
    let get = |addr: &str, m: &str| metric(&http_get(addr, "/metrics").1, m);
    wait_until("A read everything", 60, || {
        get(&a_addr, "kml_events_in_total") >= 2699.0
    });
    assert_eq!(get(&a_addr, "kml_transactions_total"), 0.0);
    let (mut b, b_addr, b_log) = spawn("b", "0.1");
    wait_until("A aborted on the rebalance", 60, || {
        get(&a_addr, "kml_transactions_aborted_total") >= 1.0
    });
    assert!(
        a.child().try_wait().unwrap().is_none(),
        "A goes on after the abort"
    );
    // The rebalance ends with the partition at A or B.
    let assigned = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("partitions assigned")
            .count()
    };
    wait_until("the rebalance to end", 60, || {
        assigned(&a_log) + assigned(&b_log) >= 2
    });
    // A stops (committing what it holds then: its last transaction); the partition goes to B
    // if it is not there yet.
    let pid = a.child().id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let a_out = a.output();
    assert!(
        a_out.status.success(),
        "{}",
        std::fs::read_to_string(&a_log).unwrap()
    );
    let a_sum = json_out(&a_out);
    assert!(
        a_sum["transactions_aborted"].as_u64().unwrap() >= 1,
        "{a_sum}"
    );
    wait_until("everything committed", 90, || {
        committed(&broker, "rebalance", "flights") == Some(2699)
    });
    assert!(get(&b_addr, "kml_transactions_total") >= 1.0 || a_sum["transactions"] != 0);
    let pid = b.child().id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(b.output().status.success());
    // Every scorable event has a prediction (aborted ones included: tansu does not hide them).
    let (preds, _) = scores_by_offset(&read_all(&broker, "flights.pred"));
    let (reference, _) = scores_by_offset(&{
        replay(
            &broker,
            &store,
            "flights_delay@champion",
            &["--output", "flights.replay"],
        );
        read_all(&broker, "flights.replay")
    });
    for (o, s) in &reference {
        assert_eq!(
            preds.get(o).map(|x| x.to_bits()),
            Some(s.to_bits()),
            "offset {o}"
        );
    }
}

#[test]
fn nonsense_settings_are_refused_before_any_work() {
    let store = tempdir("nonsense");
    for (flag, value, why) in [
        (
            "--batch-size",
            "0",
            "--batch-size 0 must be between 1 and 1000000",
        ),
        (
            "--transaction-max-events",
            "0",
            "--transaction-max-events must be at least 1",
        ),
        (
            "--transaction-interval",
            "-1",
            "is not a positive number of seconds",
        ),
        (
            "--shutdown-timeout",
            "nan",
            "is not a positive number of seconds",
        ),
        ("--output", "flights", "must be different topics"),
    ] {
        let mut args = run_args_at("127.0.0.1:1", &store, "flights", "g");
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            // `--flag=value`, so that a value such as `-1` is not read as a flag.
            None => args.push(format!("{flag}={value}")),
        }
        let out = scorer().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(why), "{flag} {value}: {err}");
    }
}

/// A retrain that changes only the pipeline's description and where its history is read from
/// (a JSON-lines copy of the same events) has the same feature fingerprint and fits the same
/// model (equal validation AUC): hot reload swaps it in keeping the window state (issue 13,
/// item 2).
#[test]
fn a_retrain_from_a_copy_of_the_history_keeps_window_state_on_reload() {
    let broker = Broker::start();
    let store = tempdir("reload-same");
    let v1 = fit(&store, "champion", &[]);
    feed(&broker, "flights");
    let jsonl = store.join("flights.jsonl");
    run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--out", &jsonl.display().to_string()]),
    );
    let text = std::fs::read_to_string(repo().join(PIPELINE)).unwrap();
    let copy = text
        .replacen(
            "description = \"nycflights13:",
            "description = \"reworded, nycflights13:",
            1,
        )
        .replacen(
            "path = \"raw/flights.csv\"",
            &format!("path = \"{}\"", jsonl.display()),
            1,
        );
    assert_ne!(copy, text);
    let copy_file = store.join("pipeline-copy.toml");
    std::fs::write(&copy_file, copy).unwrap();

    let log = store.join("scorer.log");
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(run_args(&broker, &store, "flights", "reload-same"))
            .args(["--reload-interval", "0.2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = metrics_addr(&log);
    let get = |m: &str| metric(&http_get(&addr, "/metrics").1, m);
    wait_until("the fixtures scored", 60, || {
        get("kml_predictions_total") > 2600.0
    });
    let v2 = fit_with(
        &copy_file.display().to_string(),
        &store_url(&store),
        "champion",
        &[],
        &[],
    );
    assert_eq!(v2["feature_fingerprint"], v1["feature_fingerprint"]);
    assert_eq!(v2["auc"], v1["auc"]);
    let v2 = v2["version"].as_u64().unwrap();
    wait_until("reload to v2", 30, || get("kml_model_version") == v2 as f64);
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let swapped: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "model swapped in")
        .collect();
    assert_eq!(swapped.len(), 1, "{text}");
    assert_eq!(swapped[0]["window_state_kept"], true, "{text}");
}
