//! Time `N` events of one key at one instant through the online engine, every aggregate on.
//!
//! `cargo run --release -p shared-features --example hot_key -- 16000 32000 50000` prints the
//! wall time per run; `HOT_KEY_DISTINCT` (default 16) is how many categories the
//! `distinct_count` sees. A measurement, not a test: the tests assert values, never time.

// A timing run whose setup fails has nothing to measure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use shared_features::{OnlineEngine, Pipeline, Tables};

const PIPELINE: &str = r#"
[pipeline]
name = "hot"

[events]
key = "id"
lateness = "1h"
fields = { id = "str", ts = "timestamp", x = "float", cat = "str" }
time = { fn = "field", field = "ts" }

[[window]]
name = "w"
key = "id"
length = "1h"
aggs = [
  { name = "n", fn = "count" },
  { name = "sum", fn = "sum", field = "x" },
  { name = "mean", fn = "mean", field = "x" },
  { name = "min", fn = "min", field = "x" },
  { name = "max", fn = "max", field = "x" },
  { name = "std", fn = "std", field = "x" },
  { name = "last", fn = "last", field = "x" },
  { name = "cats", fn = "distinct_count", field = "cat" },
]

[features]
numeric = ["n", "sum", "mean", "min", "max", "std", "last", "cats"]
"#;

fn main() {
    let p = Arc::new(Pipeline::parse(PIPELINE, "hot.toml").expect("pipeline"));
    let tables = Arc::new(Tables::load(&p, |_| Err("no tables".into())).expect("tables"));
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a count of events"))
        .collect();
    let distinct: usize = std::env::var("HOT_KEY_DISTINCT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    for n in if sizes.is_empty() {
        vec![16_000]
    } else {
        sizes
    } {
        let events: Vec<Vec<u8>> = (1..=n)
            .map(|i| {
                format!(
                    r#"{{"id":"hot","ts":1704067200000,"x":{i},"cat":"c{}"}}"#,
                    i % distinct
                )
                .into_bytes()
            })
            .collect();
        let mut engine = OnlineEngine::new(p.clone(), tables.clone());
        let started = Instant::now();
        let mut last = Vec::new();
        for e in &events {
            last = engine.process(e).expect("scored").expect("kept").to_vec();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{n} events of one key at one instant: {secs:.3} s ({:.2} us/event); last row {:?}",
            secs * 1e6 / n as f64,
            &last[p.n_fields + 1..]
        );
    }
}
