//! A small pipeline that uses every kind of operation, for tests over hand-made events; test
//! directories (`tempdir.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shared_features::{OnlineEngine, Pipeline, Tables, Value};

mod tempdir;
pub use tempdir::TempDir;

pub const PIPELINE: &str = r#"
[pipeline]
name = "tiny"

[events]
key = "id"
lateness = "10m"
fields = { id = "str", ts = "timestamp", x = "float", cat = "str", n = "int" }
time = { fn = "field", field = "ts" }

[[filter]]
field = "n"
op = "ge"
value = 0

[[lookup]]
name = "cats"
path = "cats.csv"
on = "cat"
key = "cat"
prefix = "cat_"
columns = { cat = "str", weight = "float" }

[[asof]]
name = "rates"
path = "rates.csv"
on = "id"
key = "id"
time = "at"
tolerance = "1h"
prefix = "rate_"
columns = { id = "str", at = "timestamp", rate = "float" }

[[window]]
name = "w"
key = "id"
length = "1h"
aggs = [
  { name = "w_n", fn = "count" },
  { name = "w_nx", fn = "count", field = "x" },
  { name = "w_sum", fn = "sum", field = "x" },
  { name = "w_mean", fn = "mean", field = "x" },
  { name = "w_min", fn = "min", field = "x" },
  { name = "w_max", fn = "max", field = "x" },
  { name = "w_std", fn = "std", field = "x" },
  { name = "w_last", fn = "last", field = "x" },
  { name = "w_cats", fn = "distinct_count", field = "cat" },
]

[[window]]
name = "wc"
key = "cat"
length = "30m"
include_current = true
aggs = [{ name = "wc_n", fn = "count" }, { name = "wc_mean", fn = "mean", field = "x" }]

[[derive]]
name = "hour"
fn = "hour_of_day"
args = ["event_time"]
tz = "UTC"

[[derive]]
name = "x_log"
fn = "log1p"
args = ["x"]

[[derive]]
name = "x_per_weight"
fn = "ratio"
args = ["x", "cat_weight"]

[[derive]]
name = "x_band"
fn = "bucket"
args = ["x"]
bounds = [0, 10]

[features]
numeric = ["x", "w_n", "w_mean", "w_std", "wc_mean", "cat_weight", "rate_rate", "x_log", "x_per_weight", "x_band", "hour"]
categorical = ["cat"]
"#;

pub const CATS: &str = "cat,weight\na,1.5\nb,NA\nc,4\n";
pub const RATES: &str = "id,at,rate\nk1,2024-01-01T00:00:00Z,1.25\nk1,2024-01-01T02:00:00Z,2.5\nk2,2024-01-01T00:30:00Z,NA\n";

pub fn pipeline() -> Arc<Pipeline> {
    Arc::new(Pipeline::parse(PIPELINE, "tiny.toml").expect("the test pipeline is valid"))
}

pub fn tables(p: &Pipeline) -> Tables {
    Tables::load(p, |path| match path {
        "cats.csv" => Ok(CATS.as_bytes().to_vec()),
        "rates.csv" => Ok(RATES.as_bytes().to_vec()),
        other => Err(format!("no table {other}")),
    })
    .expect("the test tables are valid")
}

pub fn engine() -> OnlineEngine {
    let p = pipeline();
    let t = tables(&p);
    OnlineEngine::new(p, Arc::new(t))
}

/// Milliseconds of `2024-01-01T00:00:00Z` plus minutes.
pub fn at(minutes: i64) -> i64 {
    1_704_067_200_000 + minutes * 60_000
}

/// One event as JSON.
pub fn event(id: Option<&str>, minutes: i64, x: Option<f64>, cat: Option<&str>) -> Vec<u8> {
    serde_json::json!({ "id": id, "ts": at(minutes), "x": x, "cat": cat, "n": 1 })
        .to_string()
        .into_bytes()
}

/// A named column of a row.
pub fn col<'a>(p: &Pipeline, row: &'a [Value], name: &str) -> &'a Value {
    &row[p.column(name).expect("column exists")]
}

/// A fresh directory for one test under the system's temporary directory, unique per call.
pub fn tempdir(tag: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    TempDir::fresh(std::env::temp_dir().join(format!(
        "sf-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}
