//! Restarts, crashes and scale-out against tansu: SIGKILL mid-stream in at-least-once and
//! exactly-once modes with state rebuilt from the topic or restored from checkpoints (a corrupt
//! one included), two instances sharing four partitions with one killed, and checkpoints in an
//! S3-compatible store. Every prediction is compared with a clean replay, bit for bit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::*;

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

/// Offsets of the snapshots of `flights/<partition>` for `group` in a `file://` store, newest
/// first.
fn snapshots(store: &std::path::Path, group: &str, partition: i32) -> Vec<i64> {
    let dir = store.join(format!("checkpoints/{group}/flights/{partition}"));
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
    args.extend(KILLABLE.map(String::from));
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
                restore == Restore::Rebuild || snapshots(&store, name, 0).iter().any(|s| *s <= c)
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
    let before = snapshots(&store, name, 0);
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
    fit_with(pipeline, &store_url(&store), "champion", &[], &[]);
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
                    .all(|(c, p)| {
                        c.is_some_and(|c| snapshots(&store, "scale", p).iter().any(|s| *s <= c))
                    })
        },
    );
    doomed.child().kill().unwrap(); // SIGKILL: no commit, no leaving the group
    doomed.child().wait().unwrap();
    let at_kill = committed_all(&broker, "scale", "flights", 4);
    let snaps: Vec<Vec<i64>> = (0..4).map(|p| snapshots(&store, "scale", p)).collect();
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
    let s3 = S3Server::start(&dir, "kml");
    let env = s3.env();
    let url = "s3://kml/flights";
    fit_with(PIPELINE, url, "champion", &[], &env);
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
    let reference = scores_in(&out);
    let (preds, repeats) = scores_by_offset(&read_all(&broker, "flights.pred"));
    assert_eq!(repeats, 0);
    let got: BTreeMap<i64, u64> = preds.iter().map(|(o, s)| (*o, s.to_bits())).collect();
    assert_eq!(got, reference);
}

/// The offline engine's score of every fixture flight that becomes a feature vector, by
/// (aircraft, event time ms): the bundle's model over `offline::run`'s rows.
fn offline_scores(store: &std::path::Path, model: &str) -> BTreeMap<(String, i64), u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(async {
        let reg = shared_models::Registry::open(&store_url(store)).unwrap();
        let manifest = reg
            .resolve(&shared_models::ModelRef::parse(model).unwrap())
            .await
            .unwrap();
        let bundle = reg.fetch(&manifest).await.unwrap();
        shared_models::Servable::from_bundle(&bundle).unwrap()
    });
    let p = &m.pipeline;
    let events = repo().join(FIXTURES).join("raw/flights.csv");
    let off = shared_features::offline::run(p, &events, &repo().join(FIXTURES)).unwrap();
    let mut x = Vec::new();
    let mut out = BTreeMap::new();
    for row in &off.rows {
        m.fitted.transform(p, row, &mut x);
        let key = row[p.key].key_text().unwrap();
        let t = row[p.event_time_col()].as_i64().unwrap();
        let score = m.model.predict_proba(&x).to_bits();
        assert!(
            out.insert((key.clone(), t), score).is_none(),
            "two flights of {key} at {t}: (aircraft, time) does not identify an event"
        );
    }
    out
}

/// Windows keyed by another column than the partition key (test d): the flights pipeline,
/// whose `origin_1h` window is keyed by airport, on a 4-partition topic keyed by aircraft,
/// scored by 2 instances through the repartition topic. Every event the offline engine turns
/// into a feature vector gets a prediction, with the score of the offline engine's vector bit
/// for bit, so the vectors are the same (the model is the same function of them).
#[test]
fn two_instances_repartition_the_flights_pipeline_and_match_the_offline_engine() {
    let broker = Broker::start();
    let store = tempdir("repartition");
    fit_with(PIPELINE, &store_url(&store), "champion", &[], &[]);
    create_topic(&broker, "flights", 4);
    let args = repartition_args(&broker, &store, "rep");
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
    let a = start("a.log");
    let b = start("b.log");
    wait_until("both members hold partitions of both topics", 60, || {
        holds_both(&store.join("a.log")) && holds_both(&store.join("b.log"))
    });
    let out = run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--topic", "flights", "--json"]),
    );
    assert_eq!(json_out(&out)["fed"], 2699);
    let (sa, sb) = (a.output(), b.output());
    for (s, log) in [(&sa, "a.log"), (&sb, "b.log")] {
        let text = std::fs::read_to_string(store.join(log)).unwrap();
        assert!(s.status.success(), "{text}");
    }
    let (sa, sb) = (json_out(&sa), json_out(&sb));
    eprintln!("instance a: {sa}\ninstance b: {sb}");
    for s in [&sa, &sb] {
        assert!(
            s["forwarded"].as_u64().unwrap() > 0 && s["predicted"].as_u64().unwrap() > 0,
            "each instance forwards rows and scores merged ones: {s}"
        );
    }

    let (predicted, repeats) = check_against_offline(&broker, &store);
    assert_eq!((predicted, repeats), (2677, 0), "one prediction per event");
    std::fs::remove_dir_all(&store).ok();
}

/// Every prediction in `flights.pred` carries the score of the offline engine's vector for its
/// event, bit for bit, every offline vector has one, and nothing was dead-lettered. Returns
/// the events predicted and how many were predicted more than once (always with the same
/// source position and score).
fn check_against_offline(broker: &Broker, store: &std::path::Path) -> (usize, usize) {
    let reference = offline_scores(store, "flights_delay@champion");
    let mut identical = 0;
    let mut repeats = 0;
    let mut seen: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for p in read_every_partition(broker, "flights.pred") {
        let v = p.json();
        let at = (
            v["key"].as_str().unwrap().to_string(),
            v["event_time_ms"].as_i64().unwrap(),
        );
        let src = (
            v["partition"].as_i64().unwrap(),
            v["offset"].as_i64().unwrap(),
        );
        let score = v["score"].as_f64().unwrap().to_bits();
        let want = reference.get(&at);
        assert!(
            want.is_some(),
            "{at:?} ({src:?}): a prediction offline has no vector for"
        );
        if want == Some(&score) {
            identical += 1;
        } else {
            panic!(
                "{at:?} ({src:?}): online score {} is not the offline engine's {}",
                f64::from_bits(score),
                f64::from_bits(*want.unwrap())
            );
        }
        if let Some(before) = seen.insert(at.clone(), src) {
            assert_eq!(before, src, "{at:?} predicted for two source positions");
            repeats += 1;
        }
    }
    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .collect();
    eprintln!(
        "repartitioned: {} of {} offline vectors predicted online, {identical} predictions \
         identical to the offline engine's, {repeats} repeats",
        seen.len(),
        reference.len()
    );
    assert!(
        missing.is_empty(),
        "{} events never predicted: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        read_every_partition(broker, "flights.dlq").is_empty(),
        "nothing is dead-lettered"
    );
    (seen.len(), repeats)
}

/// `scorer run` arguments for the repartitioned flights pipeline in group `group`.
fn repartition_args(broker: &Broker, store: &std::path::Path, group: &str) -> Vec<String> {
    let mut args = run_args(broker, store, "flights", group);
    for a in [
        "--idle-after",
        "2",
        "--exit-when-idle",
        "8",
        "--checkpoint-interval",
        "0.5",
        "--batch-size",
        "100",
        "--json",
        "-X",
        "auto.commit.interval.ms=100",
        "-X",
        "session.timeout.ms=6000",
    ] {
        args.push(a.to_string());
    }
    args
}

/// Whether the newest assignment logged in `log` has partitions of both topics.
fn holds_both(log: &std::path::Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))
        .is_some_and(|l| l.contains("flights/") && l.contains("repartition/"))
}

/// The repartitioned flights pipeline with one of its 2 instances SIGKILLed mid-stream: the
/// survivor takes over the dead one's input partitions (restored from a checkpoint or rebuilt) and
/// repartition partitions (merges rebuilt from the topic, repeats skipped by source offset),
/// and every event still gets the offline engine's score, none missing.
#[test]
fn a_repartitioned_instance_killed_mid_stream_loses_nothing() {
    let broker = Broker::start();
    let store = tempdir("repartition-kill");
    fit_with(PIPELINE, &store_url(&store), "champion", &[], &[]);
    create_topic(&broker, "flights", 4);
    let args = repartition_args(&broker, &store, "repk");
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
    wait_until("both members hold partitions of both topics", 60, || {
        holds_both(&store.join("a.log")) && holds_both(&store.join("b.log"))
    });
    let mut feeder = Guard::new(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--topic", "flights", "--rate", "300"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rep = "kml-repk-flights-repartition";
    wait_until("commits on both topics", 60, || {
        committed_all(&broker, "repk", "flights", 4)
            .iter()
            .all(Option::is_some)
            && committed_all(&broker, "repk", rep, 4)
                .iter()
                .any(Option::is_some)
    });
    let rebuilds = |log: &str| {
        log.matches("rebuilding a merge of the repartition topic")
            .count()
    };
    let before = rebuilds(&std::fs::read_to_string(store.join("a.log")).unwrap());
    doomed.child().kill().unwrap(); // SIGKILL: no commit, no leaving the group
    doomed.child().wait().unwrap();
    eprintln!(
        "at the kill: input committed {:?}, repartition committed {:?}",
        committed_all(&broker, "repk", "flights", 4),
        committed_all(&broker, "repk", rep, 4)
    );
    assert!(feeder.child().wait().unwrap().success());
    let out = survivor.output();
    let log = std::fs::read_to_string(store.join("a.log")).unwrap();
    assert!(out.status.success(), "{log}");
    let s = json_out(&out);
    eprintln!("survivor: {s}");
    assert!(
        rebuilds(&log) > before,
        "the survivor rebuilt the dead one's merges ({before} rebuilds before the kill)"
    );
    // The moved input partitions come back from a checkpoint when one was written at or below
    // their commit before the kill, else from their beginning: either way, as checked below.
    let (predicted, repeats) = check_against_offline(&broker, &store);
    assert_eq!(predicted, 2677);
    eprintln!("{repeats} events predicted again after the kill");
    std::fs::remove_dir_all(&store).ok();
}

/// A partition with events still to read is never marked idle, however short `--idle-after`:
/// the whole fixture topic waits before one instance starts, with a 50 ms idle bound, and
/// still no event falls behind the merge (nothing dead-lettered, every score the offline one).
#[test]
fn a_backlog_is_not_idle() {
    let broker = Broker::start();
    let store = tempdir("repartition-backlog");
    fit_with(PIPELINE, &store_url(&store), "champion", &[], &[]);
    create_topic(&broker, "flights", 4);
    run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--topic", "flights"]),
    );
    let mut args = repartition_args(&broker, &store, "backlog");
    let at = args.iter().position(|a| a == "--idle-after").unwrap();
    args[at + 1] = "0.05".into();
    let at = args.iter().position(|a| a == "--batch-size").unwrap();
    args[at + 1] = "10".into();
    let out = run_ok(scorer().current_dir(repo()).args(&args));
    let s = json_out(&out);
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(check_against_offline(&broker, &store), (2677, 0));
    std::fs::remove_dir_all(&store).ok();
}

/// Merges are checkpointed like input partitions: a repartitioned run that stops cleanly leaves
/// snapshots at its commits, the next run restores them (reading nothing to warm up) and
/// scores the new events with the offline engine's scores.
#[test]
fn a_repartitioned_restart_restores_merges_from_checkpoints() {
    let broker = Broker::start();
    let store = tempdir("repartition-restart");
    fit_with(PIPELINE, &store_url(&store), "champion", &[], &[]);
    create_topic(&broker, "flights", 4);
    let feed = |range: [&str; 2]| {
        run_ok(
            scorer()
                .current_dir(repo())
                .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
                .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
                .args(["--topic", "flights", range[0], range[1]]),
        );
    };
    let args = repartition_args(&broker, &store, "restart");
    feed(["--to", "2013-01-03"]);
    let first = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    assert!(first["checkpoints"].as_u64().unwrap() >= 8, "{first}");
    feed(["--from", "2013-01-03"]);
    let second = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    eprintln!("first run: {first}\nsecond run: {second}");
    assert_eq!(
        second["restored"], 8,
        "4 input partitions and 4 merges restored: {second}"
    );
    assert_eq!(second["warmed"], 0, "snapshots at the commits: {second}");
    assert_eq!(check_against_offline(&broker, &store), (2677, 0));
    std::fs::remove_dir_all(&store).ok();
}
