//! Arbitrary bytes, split into events at newlines, through a small pipeline with every kind of
//! operation (filter, lookup, as-of join with tolerance, windows with every aggregate, derived
//! features) and an epoch-millisecond event time, so any i64 time reaches the engine.
#![no_main]

mod common;

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use shared_features::{Pipeline, Tables};

const PIPELINE: &str = r#"
[pipeline]
name = "synthetic"

[events]
key = "id"
lateness = "10m"
max_future = "1h"
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
columns = { cat = "str", weight = "float" }
prefix = "cat_"

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
aggs = [{ name = "wc_n", fn = "count" }, { name = "wc_std", fn = "std", field = "x" }]

[[derive]]
name = "hour"
fn = "hour_of_day"
args = ["event_time"]
tz = "America/New_York"

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
numeric = ["x", "w_n", "w_std", "x_log", "x_per_weight", "x_band", "hour", "rate_rate"]
categorical = ["cat"]
"#;

static SYNTHETIC: LazyLock<(Arc<Pipeline>, Arc<Tables>)> = LazyLock::new(|| {
    let p = Arc::new(Pipeline::parse(PIPELINE, "synthetic.toml").expect("valid pipeline"));
    let t = Tables::load(&p, |path| match path {
        "cats.csv" => Ok(b"cat,weight\na,1.5\nb,NA\nc,4\n".to_vec()),
        "rates.csv" => Ok(b"id,at,rate\nk1,2024-01-01T00:00:00Z,1.25\nk1,0001-01-01T00:00:00Z,2\nk2,9999-12-31T00:00:00Z,3\n".to_vec()),
        other => Err(format!("no table {other}")),
    })
    .expect("tables");
    (p, Arc::new(t))
});

fuzz_target!(|data: &[u8]| {
    let (p, t) = &*SYNTHETIC;
    common::run(p, t, data);
});
