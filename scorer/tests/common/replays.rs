//! Reference scores from `scorer replay`, and the disordered fixture topic.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

/// The scorer's `replay` of a whole topic to a JSON-lines file: score bits by source offset.
pub fn replay_scores(broker: &Broker, store: &Path, topic: &str) -> BTreeMap<i64, u64> {
    replay_scores_of(broker, store, "flights_delay@champion", topic)
}

/// [`replay_scores`] with `model`.
pub fn replay_scores_of(
    broker: &Broker,
    store: &Path,
    model: &str,
    topic: &str,
) -> BTreeMap<i64, u64> {
    let out = store.join(format!("{topic}.{model}.replay.jsonl"));
    replay_with(
        broker,
        store,
        model,
        topic,
        &["--out", out.to_str().unwrap()],
    );
    scores_in(&out)
}

/// The score bits by source offset of the predictions in a JSON-lines file.
pub fn scores_in(path: &Path) -> BTreeMap<i64, u64> {
    predictions(path)
        .iter()
        .map(|v| {
            (
                v["offset"].as_i64().unwrap(),
                v["score"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

/// `scorer replay` of `topic` with `model` from `store`, plus `extra` arguments; it must succeed.
pub fn replay_with(
    broker: &Broker,
    store: &Path,
    model: &str,
    topic: &str,
    extra: &[&str],
) -> Output {
    run_ok(replay_command(broker, store, model, topic).args(extra))
}

/// `scorer replay` of `model` over `topic`, not run yet (a test that expects a refusal runs it).
pub fn replay_command(broker: &Broker, store: &Path, model: &str, topic: &str) -> Command {
    let mut cmd = scorer();
    cmd.current_dir(repo())
        .args([
            "replay",
            "--brokers",
            &broker.addr,
            "--store",
            &store_url(store),
        ])
        .args(["--model", model, "--input", topic]);
    cmd
}

/// Score of each source offset, from a predictions topic; repeats are counted.
pub fn scores_by_offset(recs: &[Rec]) -> (BTreeMap<i64, f64>, usize) {
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

/// The predictions of a JSON-lines file.
pub fn predictions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `scorer replay` of `topic` with `--order`, as `(key, event time ms) -> score bits`.
pub fn replay_by_event(
    broker: &Broker,
    store: &Path,
    topic: &str,
    order: &str,
) -> Vec<(String, i64, u64)> {
    let out = store.join(format!("{topic}-{order}.jsonl"));
    replay_with(
        broker,
        store,
        "flights_delay@champion",
        topic,
        &["--order", order, "--out", out.to_str().unwrap()],
    );
    let mut scores: Vec<(String, i64, u64)> = predictions(&out)
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["event_time_ms"].as_i64().unwrap(),
                v["score"].as_f64().unwrap().to_bits(),
            )
        })
        .collect();
    scores.sort();
    scores
}

/// `(key, event time ms, score bits)` of each prediction, sorted.
pub type Scores = Vec<(String, i64, u64)>;

/// The fixture flights fed to topic `ordered` and replayed (in arrival order) to learn their
/// times, then the same records in a disordered arrival order: each delayed by up to 59
/// minutes after its event time, none past the lateness. Returns the replay's scores
/// (`(key, event time ms) -> score bits`, sorted) and the disordered records.
pub fn disordered_flights(broker: &Broker, store: &Path) -> (Scores, Vec<(String, Vec<u8>)>) {
    feed(broker, "ordered");
    let sorted = replay_by_event(broker, store, "ordered", "arrival");
    assert!(sorted.len() > 2600);
    // Each event's time from its prediction (by offset); cancelled flights, filtered and
    // never predicted, travel with the event before them.
    let by_offset: std::collections::BTreeMap<i64, i64> =
        predictions(&store.join("ordered-arrival.jsonl"))
            .iter()
            .map(|v| {
                (
                    v["offset"].as_i64().unwrap(),
                    v["event_time_ms"].as_i64().unwrap(),
                )
            })
            .collect();
    let recs = read_all(broker, "ordered");
    let mut t = 0;
    let mut arrival: Vec<(i64, usize)> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            t = by_offset.get(&r.offset).copied().unwrap_or(t);
            // A fixed spread of delays in [0, 59 min]: no event arrives past the lateness.
            let delay = (r.offset * 7919 % 60) * 60_000;
            (t + delay, i)
        })
        .collect();
    arrival.sort();
    let moved = arrival
        .iter()
        .enumerate()
        .filter(|(pos, (_, i))| pos != i)
        .count();
    assert!(moved > 2000, "{moved} events change place");
    let shuffled = arrival
        .iter()
        .map(|&(_, i)| {
            (
                String::from_utf8(recs[i].key.clone()).unwrap(),
                recs[i].payload.clone(),
            )
        })
        .collect();
    (sorted, shuffled)
}
