//! `scorer run --model-server`: the stream application that computes features and calls a model
//! server (Open Inference Protocol) for the scores, against a real `scorer serve` over REST and
//! gRPC: every prediction equals embedded scoring's (`scorer replay`) bit for bit and names the
//! remote model; a server that goes away stalls the scorer, which loses and dead-letters nothing
//! and finishes once the server is back; a model that does not fit is refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use common::*;

fn serve(store: &Path, addr: &str, grpc: bool, log: &Path) -> Guard {
    let mut c = scorer();
    c.args(["serve", "--store", &store_url(store)]).args([
        "--model",
        "flights_delay@champion",
        "--addr",
        addr,
    ]);
    if grpc {
        c.args(["--grpc-addr", "127.0.0.1:0"]);
    }
    Guard::new(
        c.stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// `scorer run` on `flights` with the model server at `url`, predictions to `<tag>.pred`.
fn remote_args(broker: &Broker, store: &Path, url: &str, tag: &str) -> Vec<String> {
    let mut args = run_args(broker, store, "flights", tag);
    for (flag, value) in [
        ("--output", format!("{tag}.pred")),
        ("--dlq", format!("{tag}.dlq")),
    ] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value;
    }
    for a in ["--model-server", url, "--model-server-batch", "64"] {
        args.push(a.to_string());
    }
    args
}

/// Every prediction of `topic` has the replayed score of its source offset, bit for bit, and
/// the model server's lineage; each replayed offset is predicted once. Returns the count.
fn check_predictions(
    broker: &Broker,
    topic: &str,
    url: &str,
    reference: &BTreeMap<i64, u64>,
) -> usize {
    let mut seen = BTreeMap::new();
    for r in read_all(broker, topic) {
        let v = r.json();
        let offset = v["offset"].as_i64().unwrap();
        let score = v["score"].as_f64().unwrap();
        assert_eq!(
            Some(&score.to_bits()),
            reference.get(&offset),
            "offset {offset}: the model server's score {score} is not embedded scoring's"
        );
        assert_eq!(v["served_by"]["url"], url, "{v}");
        assert_eq!(v["served_by"]["model"], "flights_delay_features", "{v}");
        assert_eq!(v["served_by"]["version"], "1", "{v}");
        assert_eq!(
            (v["model"].as_str(), v["version"].as_u64()),
            (Some("flights_delay"), Some(1))
        );
        assert_eq!(
            r.headers.get("kml.source.offset"),
            Some(&offset.to_string())
        );
        assert!(
            seen.insert(offset, ()).is_none(),
            "offset {offset} predicted twice"
        );
    }
    let missing: Vec<_> = reference.keys().filter(|o| !seen.contains_key(o)).collect();
    assert!(
        missing.is_empty(),
        "{} events never predicted, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    seen.len()
}

#[test]
fn remote_scores_over_rest_and_grpc_equal_embedded_scores_bit_for_bit() {
    let broker = Broker::start();
    let store = tempdir("remote");
    fit(&store, "champion", &[]);
    feed(&broker, "flights");
    let reference = replay_scores(&broker, &store, "flights");
    assert!(reference.len() > 2000);
    let log = store.join("serve.log");
    let _server = serve(&store, "127.0.0.1:0", true, &log);
    let rest = format!(
        "http://{}",
        addr_in_log(&log, "serving the model over HTTP")
    );
    let grpc = format!(
        "grpc://{}",
        addr_in_log(&log, "serving the model over gRPC")
    );

    for (url, tag) in [(&rest, "rest"), (&grpc, "grpc")] {
        let mut args = remote_args(&broker, &store, url, tag);
        args.extend(["--exit-when-idle", "3", "--json", "--lineage-headers"].map(String::from));
        let out = run_ok(scorer().args(&args));
        let s = json_out(&out);
        eprintln!("{tag}: {s}");
        assert_eq!(s["predicted"], reference.len() as u64, "{s}");
        assert_eq!(s["dead_lettered"], 0, "{s}");
        let n = check_predictions(&broker, &format!("{tag}.pred"), url, &reference);
        assert_eq!(n, reference.len());
        assert!(read_all(&broker, &format!("{tag}.dlq")).is_empty());
    }

    // A model that does not take what the bundle encodes is refused before any event is read.
    let mut args = remote_args(&broker, &store, &rest, "wrong");
    args.extend(["--model-server-input", "vectors"].map(String::from));
    let out = scorer().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no input `vectors`") && err.contains("features"),
        "{err}"
    );
    std::fs::remove_dir_all(&store).ok();
}

/// The metric `name` of the scorer whose metrics endpoint is at `addr`.
fn metric_of(addr: &str, name: &str) -> f64 {
    metric(&http_get(addr, "/metrics").1, name)
}

#[test]
fn a_model_server_that_goes_down_stalls_the_scorer_and_nothing_is_lost() {
    let broker = Broker::start();
    let store = tempdir("remote-down");
    fit(&store, "champion", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    let serve_log = store.join("serve.log");
    let server = serve(&store, &addr, false, &serve_log);
    addr_in_log(&serve_log, "serving the model over HTTP");

    create_topic(&broker, "flights", 1);
    let run_log = store.join("run.log");
    let mut args = remote_args(&broker, &store, &url, "down");
    args.extend(
        [
            "--model-server-timeout",
            "1",
            "--model-server-in-flight",
            "2",
            "--exit-when-idle",
            "3",
            "--json",
            "--lineage-headers",
        ]
        .map(String::from),
    );
    let run = Guard::new(
        scorer()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&run_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let metrics = addr_in_log(&run_log, "metrics and health endpoints");
    wait_until("the scorer holds the input", 60, || {
        std::fs::read_to_string(&run_log)
            .unwrap_or_default()
            .contains("partitions assigned")
    });
    drop(server);
    feed(&broker, "flights");
    produce_raw(&broker, "flights", &[("N1", b"{not json".to_vec())]);
    wait_until("requests fail and consumption stalls", 60, || {
        metric_of(&metrics, "kml_model_server_failures_total") >= 3.0
            && metric_of(&metrics, "kml_model_server_stalled") == 1.0
    });
    // Nothing scored while the server is away, and nothing dead-lettered for it; only the
    // malformed event, which no model server could score, may be (it is ours to refuse).
    assert!(read_all(&broker, "down.pred").is_empty());
    let committed_while_down = committed(&broker, "down", "flights");

    let _server = serve(&store, &addr, false, &store.join("serve2.log"));
    let out = run.output();
    let text = std::fs::read_to_string(&run_log).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the model server answers again"), "{text}");
    let s = json_out(&out);
    eprintln!("{s}");
    let reference = replay_scores(&broker, &store, "flights");
    assert_eq!(s["predicted"], reference.len() as u64, "{s}");
    let first = *reference.keys().next().unwrap();
    assert!(
        committed_while_down.is_none_or(|c| c <= first),
        "committed {committed_while_down:?} while the first scored event ({first}) had no score"
    );
    check_predictions(&broker, "down.pred", &url, &reference);
    let dead = read_all(&broker, "down.dlq");
    assert_eq!(dead.len(), 1, "only the malformed event is dead-lettered");
    assert!(
        dead[0].headers["kml.error"].contains("JSON"),
        "{:?}",
        dead[0].headers
    );
    std::fs::remove_dir_all(&store).ok();
}
