//! No single event, client or outage stops the scorer (tansu started by each test): poison
//! events of every kind interleaved with clean ones, a panic inside scoring (through a fail
//! point), SIGTERM while the broker does not answer, and HTTP clients that misbehave. Counts
//! are exact: every clean event is scored once with the score a clean replay gives it, every
//! bad one is dead-lettered once with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// The bad events, each with a piece of the reason its dead letter must give. `base` is a
/// clean departed flight to derive them from.
fn poison(base: &serde_json::Value) -> Vec<(Option<Vec<u8>>, &'static str)> {
    let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v = base.clone();
        f(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    };
    let text = serde_json::to_string(base).unwrap();
    let mut utf8 = with(&|o| {
        o.insert("note".into(), "ZZ".into());
    });
    let at = utf8.windows(2).position(|w| w == b"ZZ").unwrap();
    utf8[at] = 0xff; // invalid UTF-8 inside an undeclared field's string
    let mut big_malformed = b"{\"year\": ".to_vec();
    big_malformed.resize(1_040_000, b'9');
    // 10,000 nested arrays where a number belongs (in an undeclared field they are skipped
    // without recursion, and the event is valid).
    let nested = format!(
        "{{\"dep_delay\": {}{}, {}",
        "[".repeat(10_000),
        "]".repeat(10_000),
        &text[1..]
    );
    vec![
        (
            Some(b"{\"year\": 2013, \"month\": ".to_vec()),
            "malformed JSON",
        ),
        (Some(b"[1, 2, 3]".to_vec()), "malformed JSON"),
        (None, "empty message"),
        (
            Some(with(&|o| {
                o.remove("origin");
            })),
            "field `origin` is missing",
        ),
        (
            Some(with(&|o| {
                o.insert("dep_delay".into(), "late".into());
            })),
            "field `dep_delay` should be",
        ),
        (Some(vec![b' '; 1_100_000]), "oversized payload"),
        (Some(big_malformed), "malformed JSON"),
        (
            Some(with(&|o| {
                o.insert("year".into(), 262_142.into());
                o.insert("month".into(), 12.into());
                o.insert("day".into(), 31.into());
                o.insert("dep_time".into(), 10.into());
                o.insert("sched_dep_time".into(), 2359.into());
            })),
            "year",
        ),
        (
            Some(with(&|o| {
                let y = o["year"].as_i64().unwrap();
                o.insert("year".into(), (y + 1).into());
            })),
            "future",
        ),
        (Some(utf8), "UTF-8"),
        (
            Some(text.replacen('{', "{\"dep_delay\": 1, ", 1).into_bytes()),
            "dep_delay",
        ),
        (
            Some(text.replacen('{', "{\"distance\": 1e400, ", 1).into_bytes()),
            "malformed JSON",
        ),
        (
            Some(nested.into_bytes()),
            "field `dep_delay` should be float, got an array",
        ),
        (
            Some(with(&|o| {
                o.insert("note".into(), "kml-fail-point".into());
            })),
            "internal error while scoring",
        ),
        (
            Some(with(&|o| {
                let d = o["day"].as_i64().unwrap();
                o.insert("day".into(), (d - 1).into());
            })),
            "late event",
        ),
    ]
}

#[test]
fn poison_events_of_every_kind_are_dead_lettered_once_and_clean_ones_scored_as_if_alone() {
    let broker = Broker::start();
    let store = tempdir("poison");
    fit(&store, "champion", &[]);
    feed(&broker, "clean");
    let clean = read_all(&broker, "clean");
    let reference = replay_scores(&broker, &store, "clean");
    assert!(reference.len() > 2500, "{}", reference.len());

    // The topic: clean events with a poison event after every 150th; the first run sees the
    // first 2,000 clean events and every poison event, the second run the rest.
    let base = clean
        .iter()
        .take(1500)
        .map(Rec::json)
        .rfind(|e| !e["dep_time"].is_null())
        .unwrap();
    let bad = poison(&base);
    let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut clean_at: BTreeMap<i64, i64> = BTreeMap::new(); // topic offset -> clean offset
    let mut bad_at: Vec<i64> = Vec::new();
    let mut next_bad = bad.iter();
    for (i, r) in clean.iter().take(2000).enumerate() {
        clean_at.insert(records.len() as i64, r.offset);
        records.push((r.key.clone(), Some(r.payload.clone())));
        if i % 150 == 149
            && let Some((payload, _)) = next_bad.next()
        {
            bad_at.push(records.len() as i64);
            records.push((b"poison".to_vec(), payload.clone()));
        }
    }
    for (payload, _) in next_bad {
        bad_at.push(records.len() as i64);
        records.push((b"poison".to_vec(), payload.clone()));
    }
    // A key too long for its prediction to fit in a record: dead-lettered, not sent. Unlike
    // the others it is a valid event and enters window state (in the second run's warm-up
    // too), so it is dated no later than events already seen and from an airport of its own:
    // it must not change a clean event's window.
    let mut long_key = base.clone();
    long_key["tailnum"] = "N".repeat(600_000).into();
    long_key["origin"] = "ZZZ".into();
    bad_at.push(records.len() as i64);
    records.push((
        b"long".to_vec(),
        Some(serde_json::to_vec(&long_key).unwrap()),
    ));
    produce_records(&broker, "mixed", &records);

    let mut args = run_args(&broker, &store, "mixed", "poison");
    // The second run must rebuild its state from the topic (past the poison), not restore it.
    args.extend(["--checkpoint-interval".to_string(), "off".to_string()]);
    let run = |extra: &[&str]| {
        json_out(&run_ok(
            scorer()
                .current_dir(repo())
                .env("FAILPOINTS", "score=panic")
                .args(&args)
                .args(["--exit-when-idle", "3", "--json"])
                .args(extra),
        ))
    };
    let first = run(&[]);
    assert_eq!(
        first["consumed"].as_u64().unwrap(),
        records.len() as u64,
        "{first}"
    );

    // Second run, same group: it resumes at the commit and rebuilds window state from the
    // topic, where the fail-point event sits: warm-up survives its panic too.
    let mut rest: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for r in clean.iter().skip(2000) {
        clean_at.insert((records.len() + rest.len()) as i64, r.offset);
        rest.push((r.key.clone(), Some(r.payload.clone())));
    }
    produce_records(&broker, "mixed", &rest);
    let second = run(&[]);
    assert_eq!(
        second["consumed"].as_u64().unwrap(),
        rest.len() as u64,
        "{second}"
    );
    assert!(
        second["warmed"].as_u64().unwrap() >= records.len() as u64 - 1,
        "{second}"
    );

    // Every clean event scored exactly once, with the score it gets without the poison.
    let preds = read_all(&broker, "mixed.pred");
    let mut scored: BTreeMap<i64, u64> = BTreeMap::new();
    for p in &preds {
        let v = p.json();
        let at = v["offset"].as_i64().unwrap();
        let c = *clean_at.get(&at).unwrap_or_else(|| {
            let k = bad_at.iter().position(|b| *b == at);
            let why = k.and_then(|k| bad.get(k)).map(|b| b.1);
            panic!("a prediction for offset {at}, the poison event that should say {why:?}")
        });
        let old = scored.insert(c, v["score"].as_f64().unwrap().to_bits());
        assert!(old.is_none(), "clean offset {c} predicted twice");
    }
    let missing: Vec<&i64> = reference
        .keys()
        .filter(|o| !scored.contains_key(o))
        .collect();
    let other: Vec<&i64> = scored
        .iter()
        .filter(|(o, s)| reference.get(o) != Some(s))
        .map(|(o, _)| o)
        .collect();
    assert!(
        missing.is_empty() && other.is_empty(),
        "clean events not scored as in a clean replay: {} of {} missing (first {:?}), {} scored \
         otherwise (first {:?})",
        missing.len(),
        reference.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        other.len(),
        other.iter().take(5).collect::<Vec<_>>(),
    );

    // Every bad event dead-lettered once, in order, with its reason and source offset.
    let dlq = read_all(&broker, "mixed.dlq");
    let reasons: Vec<&str> = bad
        .iter()
        .map(|(_, why)| *why)
        .chain(["exceeds message.max.bytes"])
        .collect();
    assert_eq!(
        dlq.len(),
        reasons.len(),
        "{:?}",
        dlq.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    for ((d, why), at) in dlq.iter().zip(&reasons).zip(&bad_at) {
        let error = &d.headers["kml.error"];
        assert!(
            error.contains(why),
            "offset {at}: `{error}` should say `{why}`"
        );
        assert_eq!(d.headers["kml.source.offset"], at.to_string());
        let original = records[*at as usize].1.clone().unwrap_or_default();
        match d.headers.get("kml.payload.bytes") {
            None => assert_eq!(d.payload, original, "offset {at}: the original bytes"),
            Some(n) => {
                // Too large to forward whole (with its key): its head, size and hash.
                assert!(
                    original.len() + d.key.len() > 900_000,
                    "offset {at} cut at {} bytes and a key of {}",
                    original.len(),
                    d.key.len()
                );
                assert_eq!(n, &original.len().to_string());
                assert!(original.starts_with(&d.payload) && d.payload.len() < original.len());
                let hash: String = Sha256::digest(&original)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(d.headers["kml.payload.sha256"], hash);
            }
        }
    }
    let total = |k: &str| first[k].as_u64().unwrap() + second[k].as_u64().unwrap();
    assert_eq!(total("dead_lettered"), reasons.len() as u64);
    assert_eq!(total("predicted"), reference.len() as u64);
}

/// SIGTERM while the broker does not answer (stopped with SIGSTOP, outputs in flight): the
/// scorer exits after its shutdown timeout, committing nothing it did not get acknowledged.
#[test]
fn sigterm_while_the_broker_is_stuck_exits_and_commits_only_what_was_acknowledged() {
    let broker = Broker::start();
    let store = tempdir("stuck");
    fit(&store, "champion", &[]);
    feed(&broker, "flights");
    let log = store.join("scorer.log");
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(run_args(&broker, &store, "flights", "stuck"))
            .args(["--shutdown-timeout", "2", "--json"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = addr_in_log(&log, "metrics and health endpoints");
    let t0 = Instant::now();
    while metric(&http_get(&addr, "/metrics").1, "kml_events_in_total") < 500.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the scorer did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.signal("STOP");
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.child().id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Liveness, not speed: before, a stuck flush held the process for 600 s.
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.child().try_wait().unwrap() {
            assert!(
                status.success(),
                "{}",
                std::fs::read_to_string(&log).unwrap()
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no exit after SIGTERM: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.signal("CONT");
    let out = child.output();
    let s = json_out(&out);
    // What was committed has its prediction: nothing below the commit is missing.
    let preds = read_all(&broker, "flights.pred");
    let predicted: std::collections::BTreeSet<i64> = preds
        .iter()
        .map(|p| p.json()["offset"].as_i64().unwrap())
        .collect();
    let reference = replay_scores(&broker, &store, "flights");
    if let Some(c) = committed(&broker, "stuck", "flights") {
        for o in reference.keys().filter(|o| **o < c) {
            assert!(
                predicted.contains(o),
                "offset {o} committed ({c}) without its prediction"
            );
        }
    }
    assert!(s["consumed"].as_u64().unwrap() >= 500, "{s}");
}

/// Raw HTTP exchanges with `scorer serve`.
fn exchange(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn http_clients_that_are_slow_or_malformed_cannot_hold_the_server() {
    let store = tempdir("http");
    fit(&store, "champion", &[]);
    let log = store.join("serve.log");
    let _server = Guard::new(
        scorer()
            .args(["serve", "--store", &store_url(&store)])
            .args(["--model", "flights_delay@champion", "--addr", "127.0.0.1:0"])
            .args([
                "--header-timeout",
                "1",
                "--request-timeout",
                "3",
                "--max-connections",
                "4",
            ])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = addr_in_log(&log, "serving the model over HTTP");

    // A request head that never ends is cut off (hyper closes the connection silently).
    let t0 = Instant::now();
    let answer = exchange(&addr, b"POST /v1/score HTTP/1.1\r\nhost: x\r\n");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the slow client held the connection"
    );

    // A TLS ClientHello on the plain port.
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    let answer = exchange(&addr, &hello);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // A 20 KB header.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\n\r\n",
        "j".repeat(20_000)
    );
    let answer = exchange(&addr, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Two different Content-Length headers.
    let answer = exchange(
        &addr,
        b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A body that stalls after its head: the request times out.
    let answer = exchange(
        &addr,
        b"POST /v1/score HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 100\r\n\r\n{",
    );
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Idle connections up to the limit, then one more: it is served once the idle ones are
    // closed by the header timeout.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let answer = exchange(
        &addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
    let (status, _) = http_get(&addr, "/readyz");
    assert_eq!(status, 200);
}

/// The broker restarts with nothing (its storage lost: topics, groups, offsets, producer
/// state). The scorer reports it, does not hang in a flush, and stops on SIGTERM within its
/// shutdown timeout. (Against tansu the group member is not reassigned the recreated topic
/// within two minutes; a restarted scorer resumes normally: see the notes of issue 10.)
#[test]
#[ignore = "upstream: librdkafka 2.12.1 dereferences a NULL topic name (rd_kafka_metadata_update_op) \
            when tansu 0.6.0 answers a Fetch for a forgotten topic id with a zero topic id and a \
            current-leader tag; the process dies of SIGSEGV in librdkafka's thread (README, \
            failure table); run with --ignored"]
fn a_broker_that_comes_back_empty_is_reported_and_sigterm_still_stops_the_scorer() {
    let broker = Broker::start();
    let port: u16 = broker.addr.rsplit(':').next().unwrap().parse().unwrap();
    let store = tempdir("empty");
    fit(&store, "champion", &[]);
    feed(&broker, "flights");
    let reference = replay_scores(&broker, &store, "flights");
    let log = store.join("scorer.log");
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .args(run_args(&broker, &store, "flights", "empty"))
            .args(["-X", "message.timeout.ms=10000", "--json"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = addr_in_log(&log, "metrics and health endpoints");
    let predicted = || metric(&http_get(&addr, "/metrics").1, "kml_predictions_total");
    let t0 = Instant::now();
    while predicted() < reference.len() as f64 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "first pass not scored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(broker);
    let broker = Broker::start_on(port);
    feed(&broker, "flights");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("partitions revoked")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the lost topic not reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let early = child.child().try_wait().unwrap();
    assert!(early.is_none(), "the scorer exited: {early:?}");
    let stopped = Instant::now();
    let pid = child.child().id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = child.output();
    let text = std::fs::read_to_string(&log).unwrap();
    let tail: Vec<&str> = text.lines().rev().take(4).collect();
    assert!(out.status.success(), "{:?}: {tail:?}", out.status);
    eprintln!("stopped {:?} after SIGTERM", stopped.elapsed());
    assert!(text.contains("shutdown requested"), "{text}");
}

/// A warm-up longer than `max.poll.interval.ms` (made slow by a fail point: 4 ms an event,
/// 2,699 events, about 11 s against 6 s) keeps the member in its group: the group consumer is
/// polled meanwhile, with its partitions paused, so the member is not evicted, warms up once,
/// and consumes every later event exactly once.
#[test]
fn a_warm_up_longer_than_the_poll_interval_does_not_evict_the_member() {
    let broker = Broker::start();
    let store = tempdir("long-warm");
    fit(&store, "champion", &[]);
    let fed = feed(&broker, "flights")["fed"].as_u64().unwrap();
    let mut args = run_args(&broker, &store, "flights", "long-warm");
    for a in [
        "--checkpoint-interval",
        "off",
        "--exit-when-idle",
        "3",
        "--json",
        "-X",
        "max.poll.interval.ms=6000",
        "-X",
        "session.timeout.ms=6000",
    ] {
        args.push(a.to_string());
    }
    let first = json_out(&run_ok(scorer().current_dir(repo()).args(&args)));
    assert_eq!(first["consumed"].as_u64().unwrap(), fed, "{first}");
    // The same flights again: the second run resumes after the first ones and rebuilds its
    // state from all of them, slowly.
    assert_eq!(feed(&broker, "flights")["fed"].as_u64().unwrap(), fed);
    let log = store.join("second.log");
    let mut child = Guard::new(
        scorer()
            .current_dir(repo())
            .env("FAILPOINTS", "warm=sleep(4)")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // An evicted member rejoins, warms up again, is evicted again: a livelock, never idle.
    // Meanwhile `/readyz` must say 503 while the state is being rebuilt, 200 once it is.
    let addr = addr_in_log(&log, "metrics and health endpoints");
    let readyz = || {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.split_whitespace().nth(1)?.parse::<u16>().ok()
    };
    let (mut during, mut after) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while child.child().try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            let text = std::fs::read_to_string(&log).unwrap();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            panic!("no end after 120 s (evicted and warming up again?): {tail:?}");
        }
        // Not ready is set before "restoring" is logged, ready after "rebuilt" is: an answer
        // between a log that says the first and one that does not yet say the second came
        // from inside the restore.
        let before = std::fs::read_to_string(&log).unwrap();
        let code = readyz();
        let now = std::fs::read_to_string(&log).unwrap();
        if let Some(code) = code {
            if before.contains("window state rebuilt") {
                after.push(code);
            } else if before.contains("restoring window state")
                && !now.contains("window state rebuilt")
            {
                during.push(code);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !during.is_empty() && during.iter().all(|c| *c == 503),
        "/readyz during the warm-up: {during:?}"
    );
    assert!(after.contains(&200), "/readyz after the warm-up: {after:?}");
    let out = child.output();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{text}");
    let second = json_out(&out);
    assert_eq!(
        second["warmed"].as_u64().unwrap(),
        fed,
        "warmed once: {second}"
    );
    assert_eq!(second["consumed"].as_u64().unwrap(), fed, "{second}");
    let outputs = second["predicted"].as_u64().unwrap()
        + second["dead_lettered"].as_u64().unwrap()
        + second["filtered"].as_u64().unwrap();
    assert_eq!(outputs, fed, "{second}");
    assert!(
        !text.contains("poll interval") && !text.contains("MAXPOLL"),
        "the member was evicted: {text}"
    );
}

/// Exactly-once in watermark order, with an event whose processing panics after every 400th
/// of the disordered fixture topic (`FAILPOINTS=score=panic`): each panic drops the held
/// events with the state, so the open transaction is aborted and the partition goes back to
/// the last commit, whose rebuilt state owes the held events again, the panicking event left
/// out. Every clean event the watermark passed is predicted with the score of the ordered
/// topic, bit for bit; none held at the end is; every panicking event is dead-lettered; every
/// offset is committed. (Aborted records are visible on tansu, so repeats are not counted.)
#[test]
fn watermark_order_exactly_once_survives_panics_and_loses_nothing() {
    eos_watermark_panics("ordered-eos-panic", Panics::OnArrival);
}

/// The same with the panics at release, once the watermark passed the event (after it was
/// admitted and held, often across a commit in small transactions; the aborts restore
/// checkpoints): an event below the last commit is never read again after the abort, so it is
/// owed its dead letter, sent in the next transaction (the run says so at least once).
#[test]
fn watermark_order_exactly_once_dead_letters_panics_at_release_below_the_commit() {
    eos_watermark_panics("ordered-eos-release-panic", Panics::AtRelease);
}

#[derive(Clone, Copy, PartialEq)]
enum Panics {
    /// `FAILPOINTS=score=panic`, payloads marked: the admission panics.
    OnArrival,
    /// `FAILPOINTS=release=return(OFFSETS)`: the release of those offsets panics.
    AtRelease,
}

fn eos_watermark_panics(name: &str, panics: Panics) {
    let broker = Broker::start();
    let store = tempdir(name);
    fit(&store, "champion", &[]);
    let (sorted, shuffled) = disordered_flights(&broker, &store);
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut poison = BTreeSet::new();
    for (i, (key, payload)) in shuffled.iter().enumerate() {
        records.push((key.clone(), payload.clone()));
        if i % 400 == 399 {
            let mut e: serde_json::Value = serde_json::from_slice(payload).unwrap();
            if panics == Panics::OnArrival {
                e["note"] = "kml-fail-point".into();
            }
            poison.insert(records.len() as i64);
            records.push((key.clone(), serde_json::to_vec(&e).unwrap()));
        }
    }
    create_topic(&broker, "live", 1);
    produce_raw(&broker, "live", &records);
    let mut args = run_args(&broker, &store, "live", name);
    let (order, failpoints) = match panics {
        Panics::OnArrival => (&EOS_WATERMARK[..], "score=panic".to_string()),
        Panics::AtRelease => {
            let offsets: Vec<String> = poison.iter().map(i64::to_string).collect();
            let eos = &EOS_WATERMARK[..3];
            args.extend(
                [
                    "--transaction-max-events",
                    "20",
                    "--checkpoint-events",
                    "150",
                ]
                .map(String::from),
            );
            (eos, format!("release=return({})", offsets.join(",")))
        }
    };
    args.extend(
        order
            .iter()
            .chain(&["--exit-when-idle", "3", "--json"])
            .map(|s| s.to_string()),
    );
    let out = run_ok(
        scorer()
            .current_dir(repo())
            .env("FAILPOINTS", &failpoints)
            .args(&args),
    );
    let s = json_out(&out);
    assert!(
        s["transactions_aborted"].as_u64().unwrap() >= poison.len() as u64,
        "one abort per panic at least: {s}"
    );
    if panics == Panics::AtRelease {
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(OWED_DEAD_LETTER),
            "no release panicked below the commit: the case is not exercised"
        );
    }

    let reference: BTreeMap<(String, i64), u64> = sorted
        .iter()
        .map(|(k, t, b)| ((k.clone(), *t), *b))
        .collect();
    let mut predicted = BTreeSet::new();
    for p in read_all(&broker, "live.pred") {
        let v = p.json();
        let offset = v["offset"].as_i64().unwrap();
        assert!(
            !poison.contains(&offset),
            "offset {offset} panics, yet was predicted"
        );
        let event = (
            v["key"].as_str().unwrap().to_string(),
            v["event_time_ms"].as_i64().unwrap(),
        );
        assert_eq!(
            reference.get(&event),
            Some(&v["score"].as_f64().unwrap().to_bits()),
            "offset {offset} {event:?}: the ordered topic's score"
        );
        predicted.insert(event);
    }
    let newest = sorted.iter().map(|(_, t, _)| *t).max().unwrap();
    let missing: Vec<_> = reference
        .keys()
        .filter(|e| !predicted.contains(*e) && e.1 < newest - 3_600_000)
        .collect();
    assert!(missing.is_empty(), "released, not predicted: {missing:?}");
    let held = reference.len() - predicted.len();
    assert!(held > 0 && predicted.len() > 2500, "{held} held");
    let dead: BTreeSet<i64> = read_all(&broker, "live.dlq")
        .iter()
        .filter(|d| {
            let why = &d.headers["kml.error"];
            why.contains("internal error while scoring") || why.contains("panicked before")
        })
        .map(|d| d.headers["kml.source.offset"].parse().unwrap())
        .collect();
    assert_eq!(dead, poison, "every panicking event dead-lettered");
    assert_eq!(
        committed(&broker, name, "live"),
        Some(records.len() as i64),
        "every offset committed"
    );
    std::fs::remove_dir_all(&store).ok();
}

/// What `scorer run` logs when it sends an owed dead letter.
const OWED_DEAD_LETTER: &str = "dead-lettered in this transaction";
