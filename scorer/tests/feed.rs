//! `scorer feed`: history as JSON lines in event order (`--out`), fed back in unchanged; and the
//! partitioning check (`--partitions`, `--strict`) before a topic is fed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn feed_writes_json_lines_in_event_order_and_reads_them_back_unchanged() {
    let dir = std::env::temp_dir().join(format!("kml-feed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    let feed = |events: &str, out: &std::path::Path| {
        json_out(&run_ok(
            scorer()
                .current_dir(repo())
                .args(["feed", "--pipeline", "data/flights/pipeline.toml"])
                .args(["--events", events, "--out", out.to_str().unwrap(), "--json"]),
        ))
    };
    let a = feed("data/flights/fixtures/raw/flights.csv", &first);
    let text = std::fs::read_to_string(&first).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["tailnum"].is_string() || e["tailnum"].is_null())
    );
    let rows = std::fs::read_to_string(repo().join("data/flights/fixtures/raw/flights.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(a["fed"].as_u64(), Some(rows as u64));
    assert_eq!(events.len(), rows, "one line per CSV row");
    // Event order by the pipeline's own event time; events without one (cancelled) last.
    let text_p = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    let p =
        std::sync::Arc::new(shared_features::Pipeline::parse(&text_p, "pipeline.toml").unwrap());
    let bytes: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let times: Vec<i64> = shared_features::events::event_meta(&p, &bytes)
        .into_iter()
        .map(|(_, t)| t.unwrap_or(i64::MAX))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "event order");
    assert!(times[0] < times[times.len() - 1]);
    let b = feed(first.to_str().unwrap(), &second);
    assert_eq!(a["fed"], b["fed"]);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
        "JSON lines fed back give the same file"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A topic of several partitions cannot serve a pipeline with windows keyed by two columns
/// other than the entity key (the scorer repartitions by one): `--strict` refuses before any
/// work (no broker is even reached), naming the windows and their keys. The flights pipeline
/// (one such column, `origin`) is fed to four partitions.
#[test]
fn feed_refuses_a_partitioning_the_pipeline_cannot_be_scored_on_with_strict() {
    let dir = common::tempdir("feed-strict");
    let text = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    let two = text.replace(
        "path = \"raw/",
        &format!("path = \"{}/data/flights/raw/", repo().display()),
    ) + "\n[[window]]\nname = \"dest_1h\"\nkey = \"dest\"\nlength = \"1h\"\n\
           aggs = [{ name = \"de1_flights\", fn = \"count\" }]\n";
    let two_keys = dir.join("two-keys.toml");
    std::fs::write(&two_keys, two).unwrap();
    let out = scorer()
        .current_dir(repo())
        .args(["feed", "--brokers", "127.0.0.1:1"])
        .arg("--pipeline")
        .arg(&two_keys)
        .args(["--events", "data/flights/fixtures/raw/flights.csv"])
        .args(["--topic", "t", "--partitions", "4", "--strict"])
        .args(["-X", "socket.connection.setup.timeout.ms=1000"])
        .args(["-X", "message.timeout.ms=1000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("topic `t` has 4 partitions, keyed by `tailnum`")
            && err.contains("`origin_1h` (keyed by `origin`), `dest_1h` (keyed by `dest`)")
            && err.contains("--partitions 1"),
        "{err}"
    );
    // The flights pipeline is fed to four partitions, and told how it will be scored.
    let broker = Broker::start();
    let out = run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr])
            .args(["--pipeline", "data/flights/pipeline.toml"])
            .args(["--events", "data/flights/fixtures/raw/flights.csv"])
            .args(["--topic", "t", "--partitions", "4", "--strict", "--json"]),
    );
    assert_eq!(json_out(&out)["fed"], 2699);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("behind a repartition topic keyed by `origin`"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
