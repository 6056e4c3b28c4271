//! Departures for the wire-format tests (`wire.rs`, `wire_protobuf.rs`): a pipeline with a
//! timestamp, an int, a float and two strings, random events of it, and the events as JSON, the
//! format the other encodings are compared with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use proptest::prelude::*;
use shared_features::wire::Format;
use shared_features::{OnlineEngine, Pipeline, Tables, Value};

pub const DEPARTURES: &str = r#"
[pipeline]
name = "departures"

[events]
key = "tailnum"
lateness = "1h"
fields = { dep_at = "timestamp", dep_time = "int", dep_delay = "float", tailnum = "str", origin = "str" }
time = { fn = "field", field = "dep_at" }

[[window]]
name = "ac"
key = "tailnum"
length = "24h"
aggs = [{ name = "ac_n", fn = "count" }, { name = "ac_mean", fn = "mean", field = "dep_delay" }, { name = "ac_origins", fn = "distinct_count", field = "origin" }]

[features]
numeric = ["dep_delay", "dep_time", "ac_n", "ac_mean", "ac_origins"]
"#;

pub const AIRPORTS: [&str; 3] = ["EWR", "JFK", "LGA"];

pub fn pipeline() -> Arc<Pipeline> {
    Arc::new(Pipeline::parse(DEPARTURES, "departures.toml").unwrap())
}

/// An engine of the departures pipeline reading `format`.
pub fn engine(format: &Format) -> OnlineEngine {
    let p = pipeline();
    let t = Tables::load(&p, |_| Err("no tables".into())).unwrap();
    OnlineEngine::new(p, Arc::new(t)).with_format(format)
}

/// One departure, as its fields.
#[derive(Clone, Debug)]
pub struct Dep {
    pub at: i64,
    pub time: Option<i32>,
    pub delay: Option<f64>,
    pub tail: String,
    pub origin: Option<usize>,
}

/// The departure as the JSON object a topic would carry, with a field the pipeline does not read.
pub fn json(d: &Dep) -> Vec<u8> {
    serde_json::json!({
        "dep_at": d.at, "dep_time": d.time, "dep_delay": d.delay, "tailnum": d.tail,
        "origin": d.origin.map(|i| AIRPORTS[i]), "gate": "B7",
    })
    .to_string()
    .into_bytes()
}

/// Random departures of four aircraft at increasing times (so that none is refused as late),
/// with nulls, and with `finite` delays of any magnitude besides ordinary ones.
pub fn deps() -> impl Strategy<Value = Vec<Dep>> {
    let dep = (
        0i64..3_600_000,
        proptest::option::of(0i32..2400),
        proptest::option::of(prop_oneof![
            -60.0f64..600.0,
            any::<f64>().prop_filter("finite", |x| x.is_finite())
        ]),
        0usize..4,
        proptest::option::of(0usize..3),
    )
        .prop_map(|(dt, time, delay, tail, origin)| Dep {
            at: dt,
            time,
            delay,
            tail: format!("N{tail}"),
            origin,
        });
    proptest::collection::vec(dep, 1..60).prop_map(|mut v| {
        let mut t = 1_356_998_400_123;
        for d in &mut v {
            t += d.at;
            d.at = t;
        }
        v
    })
}

/// A row's values with floats as their bits, for comparisons that must be exact.
pub fn bits(row: &[Value]) -> String {
    row.iter()
        .map(|v| match v {
            Value::Float(x) => format!("f{:x}", x.to_bits()),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}
