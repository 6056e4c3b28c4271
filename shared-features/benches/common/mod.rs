//! What both benchmarks run on.

// Setup that fails leaves nothing to measure.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shared_features::Pipeline;

/// The flights pipeline, and the directory whose `raw/` tables it runs over: the full history
/// when fetched (ci/fetch-data), else the committed three-day fixture.
pub fn flights() -> (Arc<Pipeline>, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/flights");
    let base = if root.join("raw/flights.csv").exists() {
        root.clone()
    } else {
        root.join("fixtures")
    };
    let text = std::fs::read_to_string(root.join("pipeline.toml")).expect("pipeline");
    let p = Arc::new(Pipeline::parse(&text, "pipeline.toml").expect("valid pipeline"));
    (p, base)
}
