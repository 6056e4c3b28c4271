//! One pass of the online engine over every flight of 2013 (in event order), and one pass of
//! the decoder alone, each in its own never-inlined function, for instruction counts on a busy
//! machine where wall time is noise:
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*pipeline_pass*' target/release/examples/online_pass`.

// A measurement whose setup fails has nothing to measure.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use shared_features::decode::Decoder;
use shared_features::events::{csv_to_json, event_order};
use shared_features::{OnlineEngine, Pipeline, Tables, Value};

#[inline(never)]
fn pipeline_pass(p: &Arc<Pipeline>, tables: &Arc<Tables>, events: &[Vec<u8>]) -> usize {
    let mut engine = OnlineEngine::new(p.clone(), tables.clone());
    events
        .iter()
        .filter(|e| matches!(engine.process(e), Ok(Some(_))))
        .count()
}

#[inline(never)]
fn decode_pass(p: &Pipeline, events: &[Vec<u8>]) -> usize {
    let mut decoder = Decoder::new(p);
    let mut row = vec![Value::Null; p.layout.len()];
    events
        .iter()
        .filter(|e| decoder.decode(e, &mut row).is_ok())
        .count()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/flights");
    let text = std::fs::read_to_string(root.join("pipeline.toml")).expect("pipeline");
    let p = Arc::new(Pipeline::parse(&text, "pipeline.toml").expect("valid pipeline"));
    let tables = Tables::load(&p, |path| {
        std::fs::read(root.join(path)).map_err(|e| e.to_string())
    })
    .expect("tables (run ci/fetch-data)");
    let bytes = std::fs::read(root.join("raw/flights.csv")).expect("flights (run ci/fetch-data)");
    let events = csv_to_json(&p, &bytes, "flights.csv").expect("events");
    let order = event_order(&p, &events);
    let events: Vec<Vec<u8>> = order.into_iter().map(|i| events[i].clone()).collect();
    let tables = Arc::new(tables);
    let started = Instant::now();
    let n = pipeline_pass(&p, &tables, &events);
    let pipeline_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let d = decode_pass(&p, &events);
    let decode_s = started.elapsed().as_secs_f64();
    println!(
        "{} events: pipeline {n} rows in {pipeline_s:.3} s, decode {d} in {decode_s:.3} s",
        events.len()
    );
}
