//! Online engine throughput: JSON event in, feature row and encoded vector out.
//!
//! Side by side with a baseline that only parses each event into a `serde_json::Value`, the
//! least any JSON consumer does; `ci/bench` prints the ratio.

// A benchmark whose setup fails has nothing to measure: stopping loudly is right.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared_features::events::{csv_to_json, event_order};
use shared_features::{FittedState, OnlineEngine, Pipeline, Tables};

fn setup() -> (Arc<Pipeline>, Arc<Tables>, Vec<Vec<u8>>, FittedState) {
    let (p, base) = common::flights();
    let tables = Tables::load(&p, |path| {
        std::fs::read(base.join(path)).map_err(|e| e.to_string())
    })
    .expect("tables");
    let bytes = std::fs::read(base.join("raw/flights.csv")).expect("flights");
    let events = csv_to_json(&p, &bytes, "flights.csv").expect("events");
    let order = event_order(&p, &events);
    let events: Vec<Vec<u8>> = order.into_iter().map(|i| events[i].clone()).collect();
    let tables = Arc::new(tables);
    let mut engine = OnlineEngine::new(p.clone(), tables.clone());
    let rows: Vec<Vec<_>> = events
        .iter()
        .filter_map(|e| engine.process(e).ok().flatten().map(<[_]>::to_vec))
        .collect();
    let fitted = FittedState::fit(&p, rows.iter().map(|r| &r[..]), vec![]);
    (p, tables, events, fitted)
}

fn online(c: &mut Criterion) {
    let (p, tables, events, fitted) = setup();
    let mut g = c.benchmark_group("online");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("baseline_json_parse", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for e in &events {
                if let Ok(serde_json::Value::Object(m)) =
                    serde_json::from_slice::<serde_json::Value>(e)
                {
                    n += m.len();
                }
            }
            n
        })
    });
    // The decoder alone (UTF-8 check, JSON, typing of the declared fields): what the strict
    // UTF-8 rule costs shows here.
    let mut decoder = shared_features::decode::Decoder::new(&p);
    g.bench_function("decode", |b| {
        let mut row = vec![shared_features::Value::Null; p.layout.len()];
        b.iter(|| {
            events
                .iter()
                .filter(|e| decoder.decode(e, &mut row).is_ok())
                .count()
        })
    });
    g.bench_function("pipeline", |b| {
        b.iter(|| {
            let mut engine = OnlineEngine::new(p.clone(), tables.clone());
            let mut out = Vec::with_capacity(fitted.width());
            let mut n = 0usize;
            for e in &events {
                if let Ok(Some(row)) = engine.process(e) {
                    fitted.transform(&p, row, &mut out);
                    n += out.len();
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, online);
criterion_main!(benches);
