//! The scorer against a real Kafka-protocol broker (tansu, started by the test): live scoring of
//! the fixture flights, every kind of poison event to the dead-letter topic, replay parity, hot
//! reload, and crashes (SIGKILL) in at-least-once and exactly-once modes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Score of each source offset, from a predictions topic; repeats are counted.
fn scores_by_offset(recs: &[Rec]) -> (BTreeMap<i64, f64>, usize) {
    let mut m = BTreeMap::new();
    let mut repeats = 0;
    for r in recs {
        let v = r.json();
        let off = v["offset"].as_i64().unwrap();
        if m.insert(off, v["score"].as_f64().unwrap()).is_some() {
            repeats += 1;
        }
    }
    (m, repeats)
}

/// `scorer replay` of the topic `flights` with `model`, plus `extra` arguments.
fn replay(
    broker: &Broker,
    store: &std::path::Path,
    model: &str,
    extra: &[&str],
) -> std::process::Output {
    run_ok(
        scorer()
            .current_dir(repo())
            .args([
                "replay",
                "--brokers",
                &broker.addr,
                "--store",
                &store_url(store),
            ])
            .args(["--model", model, "--input", "flights"])
            .args(extra),
    )
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

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kml-scorer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The scorer's metrics address, read from its log.
fn metrics_addr(log: &std::path::Path) -> String {
    addr_in_log(log, "metrics and health endpoints")
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// How window state comes back after the crash.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Restore {
    /// No checkpoints: rebuilt from the partition's beginning.
    Rebuild,
    /// From the newest checkpoint at or below the committed offset.
    Checkpoint,
    /// As `Checkpoint`, with that snapshot corrupted after the crash: refused, and the next
    /// older one (or a rebuild) takes its place.
    CorruptCheckpoint,
}

/// Offsets of the snapshots of `flights/0` for `group` in a `file://` store, newest first.
fn snapshots(store: &std::path::Path, group: &str) -> Vec<i64> {
    let dir = store.join(format!("checkpoints/{group}/flights/0"));
    let mut v: Vec<i64> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".ckpt")?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Start a scorer, SIGKILL it mid-stream, restart it with the same group until it is idle;
/// return (predictions, committed offset seen after the crash, the scores of a clean replay).
/// The restart's warm-up must read exactly the events between where its state comes from
/// (`restore`) and the commit.
fn crash_and_restart(
    name: &str,
    extra: &[&str],
    restore: Restore,
) -> (Vec<Rec>, i64, BTreeMap<i64, u64>) {
    let broker = Broker::start();
    let store = tempdir(name);
    fit(&store, "champion", &[]);
    // The events arrive while the scorer runs (400 per second), so that it dies mid-stream.
    let n = 2699;
    let mut feeder = Guard::new(
        scorer()
            .current_dir(repo())
            .args([
                "feed",
                "--brokers",
                &broker.addr,
                "--pipeline",
                PIPELINE,
                "--topic",
                "flights",
            ])
            .args([
                "--events",
                &format!("{FIXTURES}/raw/flights.csv"),
                "--rate",
                "400",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut args = run_args(&broker, &store, "flights", name);
    // A member killed without leaving holds up the restart's join for the poll interval.
    for x in [
        "--batch-size",
        "100",
        "-X",
        "max.poll.interval.ms=8000",
        "-X",
        "session.timeout.ms=6000",
    ] {
        args.push(x.to_string());
    }
    let cadence: &[&str] = match restore {
        Restore::Rebuild => &["--checkpoint-interval", "off"],
        _ => &["--checkpoint-interval", "0.3", "--checkpoint-events", "200"],
    };
    args.extend(cadence.iter().map(|s| s.to_string()));
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(&args)
            .args(["-X", "auto.commit.interval.ms=100"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The high watermark is a cheap look (a full read would let the scorer finish meanwhile).
    // ... and after a first commit, so that the restart has something to resume from.
    wait_until("a third of the predictions and a commit", 60, || {
        broker_has(&broker, "flights.pred")
            && high_watermark(&broker, "flights.pred") > n as i64 / 3
            && committed(&broker, name, "flights").is_some_and(|c| {
                restore == Restore::Rebuild || snapshots(&store, name).iter().any(|s| *s <= c)
            })
    });
    child.child().kill().unwrap(); // SIGKILL: no commit, no leaving the group
    child.child().wait().unwrap();
    assert!(feeder.child().wait().unwrap().success());
    let committed = committed(&broker, name, "flights").expect("something was committed");
    assert!(
        committed > 0 && (committed as usize) < n,
        "committed {committed}"
    );
    let before = snapshots(&store, name);
    if restore == Restore::CorruptCheckpoint {
        let o = before.iter().find(|o| **o <= committed).unwrap();
        let path = store.join(format!("checkpoints/{name}/flights/0/{o:020}.ckpt"));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }
    let out = run_ok(
        scorer()
            .current_dir(repo())
            .args(&args)
            .args(["--exit-when-idle", "3", "--json"])
            .args(extra),
    );
    let s = json_out(&out);
    let usable: Vec<i64> = before.iter().copied().filter(|o| *o <= committed).collect();
    let from = match restore {
        Restore::Rebuild => None,
        Restore::Checkpoint => usable.first().copied(),
        Restore::CorruptCheckpoint => usable.get(1).copied(),
    };
    assert_eq!(
        s["warmed"].as_i64().unwrap(),
        committed - from.unwrap_or(0),
        "{restore:?}: warm-up reads from offset {from:?} (snapshots {before:?}) to the commit \
         {committed}: {s}"
    );
    assert_eq!(s["restored"], u64::from(from.is_some()), "{s}");
    let refused = u64::from(restore == Restore::CorruptCheckpoint);
    assert_eq!(s["snapshots_refused"], refused, "{s}");
    let reference = replay_scores(&broker, &store, "flights");
    (read_all(&broker, "flights.pred"), committed, reference)
}

/// No prediction is lost: the predicted offsets are exactly those a clean replay scores (the
/// others are the filtered events), with the same scores; every repeat comes after the last
/// commit the crashed run made. Returns the repeated offsets.
fn check_no_loss(preds: &[Rec], committed: i64, reference: &BTreeMap<i64, u64>) -> Vec<i64> {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for p in preds {
        let v = p.json();
        let o = v["offset"].as_i64().unwrap();
        *count.entry(o).or_default() += 1;
        // Lineage headers are opt-in (`--lineage-headers`); the value carries the lineage.
        assert!(p.headers.is_empty(), "offset {o}: headers {:?}", p.headers);
        assert_eq!(
            Some(&v["score"].as_f64().unwrap().to_bits()),
            reference.get(&o),
            "offset {o}: a prediction a clean replay does not make, or another score"
        );
    }
    let predicted: Vec<&i64> = count.keys().collect();
    let want: Vec<&i64> = reference.keys().collect();
    assert_eq!(
        predicted, want,
        "predicted offsets differ from a clean replay's"
    );
    let mut repeated = Vec::new();
    for (o, c) in &count {
        assert!(*c <= 2, "offset {o} predicted {c} times");
        if *c > 1 {
            assert!(
                *o >= committed,
                "offset {o} before the commit {committed} was predicted again"
            );
            repeated.push(*o);
        }
    }
    repeated
}

#[test]
fn sigkill_at_least_once_loses_nothing_and_repeats_only_uncommitted_work() {
    let (preds, committed, reference) = crash_and_restart("alo", &[], Restore::Rebuild);
    let repeated = check_no_loss(&preds, committed, &reference);
    eprintln!(
        "at-least-once: committed {committed}, {} repeated predictions",
        repeated.len()
    );
}

#[test]
fn sigkill_exactly_once_resumes_at_the_last_committed_transaction() {
    let (preds, committed, reference) = crash_and_restart(
        "eos",
        &["--exactly-once", "--transaction-max-events", "100"],
        Restore::Rebuild,
    );
    let repeated = check_no_loss(&preds, committed, &reference);
    // Every repeat belongs to the transaction open at the crash: at most 100 events after the
    // commit (--transaction-max-events).
    for o in &repeated {
        assert!(
            *o >= committed && *o < committed + 100,
            "repeat at {o}, commit {committed}"
        );
    }
    eprintln!(
        "exactly-once: committed {committed}, {} repeated predictions",
        repeated.len()
    );
}

/// Checkpoints: the restart loads the newest snapshot at or below the commit, reads only the
/// events after it, and scores every later event with the bits of an uninterrupted run.
#[test]
fn sigkill_after_a_checkpoint_restores_from_it_and_reads_only_the_rest() {
    let (preds, committed, reference) = crash_and_restart("ckpt", &[], Restore::Checkpoint);
    check_no_loss(&preds, committed, &reference);
}

/// A corrupt snapshot is refused by its checksum, and the next older one is used instead.
#[test]
fn a_corrupt_checkpoint_is_refused_and_an_older_one_used() {
    let (preds, committed, reference) =
        crash_and_restart("ckpt-bad", &[], Restore::CorruptCheckpoint);
    check_no_loss(&preds, committed, &reference);
}

/// Exactly-once with checkpoints: the commit is a transaction's, and so is the snapshot used.
#[test]
fn sigkill_exactly_once_with_checkpoints_restores_and_loses_nothing() {
    let (preds, committed, reference) = crash_and_restart(
        "ckpt-eos",
        &["--exactly-once", "--transaction-max-events", "100"],
        Restore::Checkpoint,
    );
    check_no_loss(&preds, committed, &reference);
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

/// Scores of a whole topic (every partition) by `scorer replay`, by source (partition, offset).
fn replay_by_position(
    broker: &Broker,
    store: &std::path::Path,
    model: &str,
) -> BTreeMap<(i64, i64), u64> {
    let out = store.join("replay-all.jsonl");
    run_ok(
        scorer()
            .current_dir(repo())
            .args(["replay", "--brokers", &broker.addr])
            .args(["--store", &store_url(store), "--model", model])
            .args(["--input", "flights", "--out", out.to_str().unwrap()]),
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = (
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            );
            (at, v["score"].as_f64().unwrap().to_bits())
        })
        .collect()
}

/// Scale out: two instances in one group over a 4-partition topic keyed by aircraft (the
/// pipeline whose windows are all keyed by the partition key); one is SIGKILLed mid-stream. Its
/// partitions move to the survivor, which restores their state from the dead one's
/// checkpoints. The union of predictions by source position misses none, and every score is
/// the one a single-instance replay of the whole topic gives, bit for bit.
#[test]
fn two_instances_share_four_partitions_and_one_killed_loses_nothing() {
    let broker = Broker::start();
    let store = tempdir("scale");
    let pipeline = "data/flights/pipeline-by-aircraft.toml";
    let model = "flights_delay_by_aircraft@champion";
    run_ok(
        trainer()
            .current_dir(repo())
            .args(["fit", "--pipeline", pipeline, "--base", FIXTURES])
            .args(["--store", &store_url(&store), "--valid-from", "2013-01-03"])
            .args(["--alias", "champion", "--json"]),
    );
    let events = format!("{FIXTURES}/raw/flights.csv");
    let mut feeder = Guard::new(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr, "--pipeline", pipeline])
            .args([
                "--topic",
                "flights",
                "--partitions",
                "4",
                "--events",
                &events,
            ])
            .args(["--rate", "300"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut args = run_args(&broker, &store, "flights", "scale");
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.to_string();
    for a in [
        "--checkpoint-interval",
        "0.5",
        "--checkpoint-events",
        "100",
        "--batch-size",
        "100",
        "--exit-when-idle",
        "15",
        "--json",
        "-X",
        "auto.commit.interval.ms=100",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "max.poll.interval.ms=8000",
    ] {
        args.push(a.to_string());
    }
    let start = |name: &str| {
        Guard::new(
            scorer()
                .current_dir(repo())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(store.join(name)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let survivor = start("a.log");
    let mut doomed = start("b.log");
    // Both hold partitions, and every partition has a commit and a checkpoint at or below it
    // (one above the commit is of no use to the partition's next owner).
    let snapshots_of = |p: i32| -> Vec<i64> {
        let dir = store.join(format!("checkpoints/scale/flights/{p}"));
        let mut v: Vec<i64> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_str()?
                        .strip_suffix(".ckpt")?
                        .parse()
                        .ok()
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    wait_until(
        "two members with partitions, commits and checkpoints",
        60,
        || {
            let assigned = |f: &str| {
                std::fs::read_to_string(store.join(f))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .find(|l| l.contains("partitions assigned"))
                    .is_some_and(|l| l.contains("flights/"))
            };
            assigned("a.log")
                && assigned("b.log")
                && committed_all(&broker, "scale", "flights", 4)
                    .iter()
                    .zip(0..)
                    .all(|(c, p)| c.is_some_and(|c| snapshots_of(p).iter().any(|s| *s <= c)))
        },
    );
    doomed.child().kill().unwrap(); // SIGKILL: no commit, no leaving the group
    doomed.child().wait().unwrap();
    let at_kill = committed_all(&broker, "scale", "flights", 4);
    let snaps: Vec<Vec<i64>> = (0..4).map(snapshots_of).collect();
    eprintln!("at the kill: committed {at_kill:?}, snapshots {snaps:?}");
    assert!(feeder.child().wait().unwrap().success());
    let out = survivor.output();
    let log = std::fs::read_to_string(store.join("a.log")).unwrap();
    assert!(out.status.success(), "{log}");
    let s = json_out(&out);
    assert!(
        s["restored"].as_u64().unwrap() >= 2,
        "the two moved partitions restored from checkpoints: {s}"
    );
    assert!(
        s["consumed"].as_u64().unwrap() < 2699,
        "the survivor did not read the moved partitions from their beginning: {s}"
    );

    let reference = replay_by_position(&broker, &store, model);
    assert!(reference.len() > 2000, "{}", reference.len());
    let mut predicted: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for p in read_every_partition(&broker, "flights.pred") {
        let v = p.json();
        let at = (
            v["partition"].as_i64().unwrap(),
            v["offset"].as_i64().unwrap(),
        );
        assert_eq!(
            Some(&v["score"].as_f64().unwrap().to_bits()),
            reference.get(&at),
            "{at:?}: a prediction a clean replay does not make, or another score"
        );
        *predicted.entry(at).or_default() += 1;
    }
    let missing: Vec<&(i64, i64)> = reference
        .keys()
        .filter(|k| !predicted.contains_key(k))
        .collect();
    let mut by_partition: BTreeMap<i64, (usize, i64, i64)> = BTreeMap::new();
    for (p, o) in &missing {
        let e = by_partition.entry(*p).or_insert((0, i64::MAX, i64::MIN));
        *e = (e.0 + 1, e.1.min(*o), e.2.max(*o));
    }
    assert!(
        missing.is_empty(),
        "predictions missing (partition: count, first, last offset): {by_partition:?}; survivor {s}"
    );
    let partitions: std::collections::BTreeSet<i64> = predicted.keys().map(|k| k.0).collect();
    assert_eq!(partitions.len(), 4, "{partitions:?}");
    let repeats = predicted.values().filter(|n| **n > 1).count();
    eprintln!(
        "scale-out: {} predictions over 4 partitions, {repeats} repeated after the kill; survivor: {s}",
        predicted.len()
    );
}

/// Checkpoints in an S3-compatible store (moto, started by `ci/s3-server`), beside the models:
/// a run that stops cleanly leaves a snapshot at its commit; the next run restores it and reads
/// nothing to warm up, and its predictions of the new events equal a clean replay's.
#[test]
fn checkpoints_in_an_s3_compatible_store_restore_a_restart() {
    let dir = tempdir("s3-ckpt");
    let file = dir.join("s3");
    let out = std::process::Command::new(repo().join("ci/s3-server"))
        .arg("start")
        .arg(&file)
        .arg("kml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let pid = std::fs::read_to_string(dir.join("s3.pid")).unwrap();
    let result = std::panic::catch_unwind(|| {
        let env = [
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ];
        let url = "s3://kml/flights";
        run_ok(
            trainer()
                .current_dir(repo())
                .envs(env)
                .args([
                    "fit",
                    "--pipeline",
                    PIPELINE,
                    "--base",
                    FIXTURES,
                    "--store",
                    url,
                ])
                .args([
                    "--valid-from",
                    "2013-01-03",
                    "--alias",
                    "champion",
                    "--json",
                ]),
        );
        let broker = Broker::start();
        // The first 2,000 flights, then a run that scores them and stops.
        let all = read_fixture_events();
        let (first, rest) = all.split_at(2000);
        produce_records(&broker, "flights", first);
        let mut args = run_args(&broker, &dir, "flights", "s3-ckpt");
        let at = args.iter().position(|a| a == "--store").unwrap();
        args[at + 1] = url.to_string();
        args.extend(["--exit-when-idle", "3", "--json"].map(String::from));
        let run = || json_out(&run_ok(scorer().current_dir(repo()).envs(env).args(&args)));
        let one = run();
        assert_eq!(one["consumed"], 2000, "{one}");
        assert_eq!(
            one["checkpoints"].as_u64().unwrap(),
            1,
            "the one at shutdown: {one}"
        );
        produce_records(&broker, "flights", rest);
        let two = run();
        assert_eq!(
            two["consumed"].as_u64().unwrap(),
            rest.len() as u64,
            "{two}"
        );
        assert_eq!(two["restored"], 1, "{two}");
        assert_eq!(two["warmed"], 0, "the snapshot is at the commit: {two}");
        // The predictions of both runs equal a clean replay's, offset by offset.
        let out = dir.join("replay.jsonl");
        run_ok(
            scorer()
                .current_dir(repo())
                .envs(env)
                .args(["replay", "--brokers", &broker.addr, "--store", url])
                .args(["--model", "flights_delay@champion", "--input", "flights"])
                .args(["--out", out.to_str().unwrap()]),
        );
        let reference: BTreeMap<i64, u64> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["offset"].as_i64().unwrap(),
                    v["score"].as_f64().unwrap().to_bits(),
                )
            })
            .collect();
        let (preds, repeats) = scores_by_offset(&read_all(&broker, "flights.pred"));
        assert_eq!(repeats, 0);
        let got: BTreeMap<i64, u64> = preds.iter().map(|(o, s)| (*o, s.to_bits())).collect();
        assert_eq!(got, reference);
    });
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The fixture flights as topic records (key, JSON value), in event order, as `scorer feed`
/// publishes them.
fn read_fixture_events() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let out = std::env::temp_dir().join(format!("kml-fixture-events-{}.jsonl", std::process::id()));
    run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--out", out.to_str().unwrap()]),
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = v["tailnum"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            (key, Some(l.as_bytes().to_vec()))
        })
        .collect()
}
