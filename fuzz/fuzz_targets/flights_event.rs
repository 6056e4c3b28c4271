//! Arbitrary bytes, split into events at newlines, through the flights pipeline with its real
//! lookup tables (data/flights/raw when fetched, else the fixtures).
#![no_main]

mod common;

use std::path::Path;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use shared_features::{Pipeline, Tables};

static FLIGHTS: LazyLock<(Arc<Pipeline>, Arc<Tables>)> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/flights");
    let base = if root.join("raw/flights.csv").exists() {
        root.clone()
    } else {
        root.join("fixtures")
    };
    let text = std::fs::read_to_string(root.join("pipeline.toml")).expect("pipeline");
    let p = Arc::new(Pipeline::parse(&text, "pipeline.toml").expect("valid pipeline"));
    let t = Tables::load(&p, |path| {
        std::fs::read(base.join(path)).map_err(|e| e.to_string())
    })
    .expect("tables");
    (p, Arc::new(t))
});

fuzz_target!(|data: &[u8]| {
    let (p, t) = &*FLIGHTS;
    common::run(p, t, data);
});
