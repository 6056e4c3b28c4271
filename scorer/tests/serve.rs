//! `scorer serve` over real HTTP: the scores it returns equal live/replay scores of the same
//! events bit for bit; bad events are refused line by line and the server keeps serving; a new
//! version behind the alias is picked up; malformed requests get HTTP errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// POST on a kept-alive connection; the status and the body.
fn post(conn: &mut TcpStream, path: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    read_response(conn)
}

fn read_response(conn: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn lines(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// POST `events` to `/v1/score` in topic order, 500 to a request on `conn`: each with its
/// answer (every request answered 200, one answer per event line).
fn score_in_requests<'a>(
    conn: &mut TcpStream,
    events: &'a [Rec],
) -> Vec<(&'a Rec, serde_json::Value)> {
    let mut out = Vec::with_capacity(events.len());
    for chunk in events.chunks(500) {
        let body: Vec<u8> = chunk
            .iter()
            .flat_map(|r| r.payload.iter().copied().chain([b'\n']))
            .collect();
        let (status, text) = post(conn, "/v1/score", &body);
        assert_eq!(status, 200, "{text}");
        let answers = lines(&text);
        assert_eq!(answers.len(), chunk.len(), "one answer per event line");
        out.extend(chunk.iter().zip(answers));
    }
    out
}

#[test]
fn http_scores_equal_replayed_scores_and_bad_events_are_refused_per_line() {
    let broker = Broker::start();
    let store = std::env::temp_dir().join(format!("kml-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();
    fit(&store, "champion", &[]);
    feed(&broker, "flights");

    // The reference: every event of the topic scored by replay (the live code path).
    let reference = replay_scores(&broker, &store, "flights");
    let events = read_all(&broker, "flights");
    assert!(reference.len() > 2000);

    let log = store.join("serve.log");
    let _server = Guard::new(
        scorer()
            .args(["serve", "--store", &store_url(&store)])
            .args(["--model", "flights_delay@champion", "--addr", "127.0.0.1:0"])
            .args(["--reload-interval", "0.2"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = addr_in_log(&log, "serving the model over HTTP");

    // Every event, in topic order, 500 to a request on one kept-alive connection.
    let mut conn = TcpStream::connect(&addr).unwrap();
    let (mut scored, mut filtered) = (0, 0);
    for (rec, a) in score_in_requests(&mut conn, &events) {
        if a["filtered"] == true {
            assert!(
                !reference.contains_key(&rec.offset),
                "offset {}",
                rec.offset
            );
            filtered += 1;
        } else {
            assert_eq!(
                a["score"].as_f64().unwrap().to_bits(),
                reference[&rec.offset],
                "offset {}: HTTP and replay disagree",
                rec.offset
            );
            assert_eq!(a["topic"], "http");
            scored += 1;
        }
    }
    assert_eq!(
        scored,
        reference.len(),
        "every replayed event scored over HTTP"
    );
    assert!(filtered > 0, "the fixtures hold cancelled flights");

    // Bad lines are refused one by one, with their line; the good one is scored.
    let last_scored = events
        .iter()
        .rev()
        .find(|r| reference.contains_key(&r.offset))
        .unwrap();
    let good = String::from_utf8(last_scored.payload.clone()).unwrap();
    let mistyped = good.replacen("\"dep_delay\":", "\"dep_delay\":\"late\",\"x\":", 1);
    let body = format!("{good}\n{{not json\n\n{mistyped}\n");
    let (status, text) = post(&mut conn, "/v1/score", body.as_bytes());
    assert_eq!(status, 422, "{text}");
    let answers = lines(&text);
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0]["score"].is_number(), "{text}");
    assert_eq!(answers[1]["line"], 2);
    assert!(
        answers[1]["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    assert_eq!(answers[2]["line"], 4);
    assert!(
        answers[2]["error"].as_str().unwrap().contains("dep_delay"),
        "{text}"
    );

    // Malformed requests get HTTP errors, not a crash.
    let (status, _) = post(&mut conn, "/v1/score", b"\n\n");
    assert_eq!(status, 400);
    let (status, _) = post(&mut conn, "/v1/nope", b"{}");
    assert_eq!(status, 404);
    // A chunked upload (curl --data-binary @file -H 'Transfer-Encoding: chunked') is scored.
    let mut chunked = TcpStream::connect(&addr).unwrap();
    let event = format!("{good}\n");
    chunked
        .write_all(
            format!(
                "POST /v1/score HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                 {:x}\r\n{event}\r\n0\r\n\r\n",
                event.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, text) = read_response(&mut chunked);
    assert_eq!(status, 200, "{text}");
    assert!(lines(&text)[0]["score"].is_number(), "{text}");

    // The model, then a new version behind the alias, picked up between requests.
    let (status, text) = http_get(&addr, "/v1/model");
    assert_eq!(status, 200);
    let model: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (model["version"].as_u64(), model["kind"].as_str()),
        (Some(1), Some("logistic_regression"))
    );
    let shown = run_ok(
        trainer()
            .args(["show", "flights_delay@1", "--store", &store_url(&store)])
            .arg("--json"),
    );
    assert_eq!(model["inputs"], json_out(&shown)["input_signature"]);
    fit(&store, "champion", &["--set", "kind=mlp"]);
    // The fit took longer than the idle keep-alive limit (--header-timeout): a new connection.
    let mut conn = TcpStream::connect(&addr).unwrap();
    let t0 = Instant::now();
    loop {
        let (_, text) = post(&mut conn, "/v1/score", good.as_bytes());
        if lines(&text)[0]["version"] == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, text) = http_get(&addr, "/v1/model");
    assert!(text.contains("\"kind\":\"mlp\""), "{text}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metric(&metrics, "kml_predictions_total") >= scored as f64);
    assert_eq!(metric(&metrics, "kml_model_reloads_total"), 1.0);
    std::fs::remove_dir_all(&store).ok();
}

/// `scorer serve --shadow` with two shadows: a decision tree on the served model's features and
/// a model of other features (the aircraft windows only, on window state of its own). Every
/// fixture event is sent in topic order, so the server's running event number is the topic's
/// offset. The answers are the served model's alone; the shadow topic holds, for each shadow,
/// exactly the predictions a replay of it alone makes on the events the served model scored,
/// bit for bit; the per-model metrics count them and their agreement with the answers.
#[test]
fn shadows_in_the_model_server_score_as_each_model_alone_and_answer_nothing() {
    let broker = Broker::start();
    let store = tempdir("serve-shadow");
    fit(&store, "champion", &[]);
    fit(&store, "challenger", &["--set", "kind=decision_tree"]);
    fit_by_aircraft(&store, "other");
    feed(&broker, "flights");
    let alone = |model: &str| replay_scores_of(&broker, &store, model, "flights");
    let champion = alone("flights_delay@champion");
    let tree = alone("flights_delay@challenger");
    let other = alone("flights_delay_by_aircraft@other");

    let log = store.join("serve.log");
    let server = Guard::new(
        scorer()
            .args(["serve", "--store", &store_url(&store)])
            .args(["--model", "flights_delay@champion", "--addr", "127.0.0.1:0"])
            .args(["--shadow", "flights_delay@challenger"])
            .args(["--shadow", "flights_delay_by_aircraft@other"])
            .args([
                "--shadow-output",
                "served.shadow",
                "--brokers",
                &broker.addr,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = addr_in_log(&log, "serving the model over HTTP");
    let events = read_all(&broker, "flights");
    let mut conn = TcpStream::connect(&addr).unwrap();
    let mut answers: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for (rec, a) in score_in_requests(&mut conn, &events) {
        if a["filtered"] != true {
            assert_eq!(a["offset"].as_i64(), Some(rec.offset), "{a}");
            answers.insert(rec.offset, a);
        }
    }
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(server.terminate().status.success());

    let bits = |v: &serde_json::Value| v["score"].as_f64().unwrap().to_bits();
    let answered: BTreeMap<i64, u64> = answers.iter().map(|(o, v)| (*o, bits(v))).collect();
    assert_eq!(
        answered, champion,
        "the answers are the served model's alone"
    );
    let mut shadow: BTreeMap<String, BTreeMap<i64, serde_json::Value>> = BTreeMap::new();
    for r in read_all(&broker, "served.shadow") {
        let v = r.json();
        let model = format!("{}@{}", v["model"].as_str().unwrap(), v["version"]);
        let o = v["offset"].as_i64().unwrap();
        assert!(
            shadow.entry(model).or_default().insert(o, v).is_none(),
            "offset {o} twice"
        );
    }
    assert_eq!(shadow.len(), 2, "{:?}", shadow.keys());
    for (model, alone) in [
        ("flights_delay@2", &tree),
        ("flights_delay_by_aircraft@1", &other),
    ] {
        let got = &shadow[model];
        let expected: BTreeMap<i64, u64> = alone
            .iter()
            .filter(|(o, _)| champion.contains_key(o))
            .map(|(o, s)| (*o, *s))
            .collect();
        let got_bits: BTreeMap<i64, u64> = got.iter().map(|(o, v)| (*o, bits(v))).collect();
        assert!(expected.len() > 2000, "{model}: {}", expected.len());
        assert_eq!(got_bits, expected, "{model}: as replayed alone");
        let agreed = got
            .iter()
            .filter(|(o, v)| v["decision"] == answers[*o]["decision"])
            .count();
        assert!(
            agreed < got.len(),
            "{model}: always agreeing proves nothing"
        );
        let m = |name: &str| metric(&metrics, &format!("{name}{{model=\"{model}\"}}"));
        assert_eq!(m("kml_shadow_events_total"), got.len() as f64, "{model}");
        assert_eq!(m("kml_shadow_agreements_total"), agreed as f64, "{model}");
    }
    std::fs::remove_dir_all(&store).ok();
}
