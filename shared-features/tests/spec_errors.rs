//! A broken pipeline file is refused before any work, naming file, line and field.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use shared_features::{Pipeline, SpecError};

/// Parse the test pipeline with the first `from` replaced by `to`; returns the error and the line
/// where the replacement starts, which is where the error must point.
fn broken(from: &str, to: &str) -> (SpecError, usize) {
    let at = common::PIPELINE
        .find(from)
        .expect("test setup: `from` is in the pipeline");
    let text = common::PIPELINE.replacen(from, to, 1);
    let line = common::PIPELINE[..at].matches('\n').count() + 1;
    let err = Pipeline::parse(&text, "bad.toml").expect_err("the broken pipeline must be refused");
    (err, line)
}

fn assert_points_at(err: &SpecError, line: usize, field: &str, words: &str) {
    assert_eq!(err.file, "bad.toml");
    assert_eq!(err.line, line, "wrong line in: {err}");
    assert!(
        err.field.contains(field),
        "field `{field}` not named in: {err}"
    );
    assert!(err.message.contains(words), "`{words}` not in: {err}");
    // The rendered message carries all of it, as users see it.
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("bad.toml:{line}:")), "{shown}");
}

#[test]
fn the_test_pipeline_and_the_example_pipelines_are_valid() {
    let p = common::pipeline();
    assert_eq!(p.windows.len(), 2);
    let flights = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/flights/pipeline.toml"
    ))
    .expect("flights pipeline readable");
    let f = Pipeline::parse(&flights, "pipeline.toml").expect("flights pipeline is valid");
    assert!(f.features.numeric.len() > 20);
    // Per-aircraft windows are partition-local; the per-airport window is not, and says so.
    let spread: Vec<&str> = f.repartition_windows().map(|w| w.name.as_str()).collect();
    assert_eq!(spread, ["origin_1h"]);
    // The second example (its data is fetched, its file is not).
    let football = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/football/pipeline.toml"
    ))
    .expect("football pipeline readable");
    let f = Pipeline::parse(&football, "pipeline.toml").expect("football pipeline is valid");
    let spread: Vec<&str> = f.repartition_windows().map(|w| w.name.as_str()).collect();
    assert_eq!(spread, ["away_form"]);
}

#[test]
fn unknown_field() {
    let (e, line) = broken("include_current = true", "include_currant = true");
    assert_points_at(&e, line, "toml", "unknown field `include_currant`");
}

#[test]
fn wrong_type() {
    let (e, line) = broken("include_current = true", "include_current = \"yes\"");
    assert_points_at(&e, line, "toml", "invalid type");
}

#[test]
fn unknown_function() {
    let (e, line) = broken("fn = \"log1p\"", "fn = \"log2\"");
    assert_points_at(&e, line, "derive[1].fn", "unknown function `log2`");
}

#[test]
fn unknown_aggregate() {
    let (e, line) = broken("fn = \"distinct_count\"", "fn = \"median\"");
    assert_points_at(
        &e,
        line,
        "window[0].aggs[8].fn",
        "unknown aggregate `median`",
    );
}

#[test]
fn bad_window_length() {
    let (e, line) = broken("length = \"1h\"", "length = \"24hh\"");
    assert_points_at(&e, line, "window[0].length", "`24hh` is not a duration");
}

#[test]
fn feature_used_before_it_is_defined() {
    // `x_band` is derived after `x_log`; using it as x_log's argument is a forward reference.
    let (e, line) = broken(
        "args = [\"x\"]\n\n[[derive]]\nname = \"x_per_weight\"",
        "args = [\"x_band\"]\n\n[[derive]]\nname = \"x_per_weight\"",
    );
    assert_points_at(
        &e,
        line,
        "derive[1].args[0]",
        "`x_band` is not defined before this point",
    );
}

#[test]
fn undefined_feature_in_the_model_input() {
    let (e, line) = broken("\"hour\"]", "\"hours\"]");
    assert_points_at(&e, line, "features.numeric[10]", "`hours` is not defined");
}

#[test]
fn join_on_a_missing_column() {
    let (e, line) = broken("on = \"cat\"", "on = \"category\"");
    assert_points_at(&e, line, "lookup[0].on", "`category` is not defined");
}

#[test]
fn join_key_not_declared_in_the_table() {
    let (e, line) = broken("key = \"cat\"", "key = \"kind\"");
    assert!(
        e.message.contains("the key column `kind` must be declared"),
        "{e}"
    );
    assert!(
        e.line > line,
        "points at the columns table after the key: {e}"
    );
}

#[test]
fn unknown_type() {
    let (e, line) = broken("weight = \"float\"", "weight = \"double\"");
    assert_points_at(
        &e,
        line,
        "lookup[0].columns.weight",
        "unknown type `double`",
    );
}

#[test]
fn bad_time_zone() {
    let (e, line) = broken("tz = \"UTC\"", "tz = \"Mars/Olympus\"");
    assert_points_at(&e, line, "derive[0].tz", "not an IANA time zone");
}

#[test]
fn mistyped_filter_value() {
    let (e, line) = broken("value = 0", "value = \"zero\"");
    assert_points_at(
        &e,
        line,
        "filter[0].value",
        "cannot be compared with a int column",
    );
}

#[test]
fn aggregating_text() {
    let (e, line) = broken(
        "{ name = \"w_sum\", fn = \"sum\", field = \"x\" }",
        "{ name = \"w_sum\", fn = \"sum\", field = \"cat\" }",
    );
    assert_points_at(
        &e,
        line,
        "window[0].aggs[2].field",
        "`cat` is str, but int or float is needed",
    );
}

#[test]
fn a_column_defined_twice() {
    let (e, line) = broken("name = \"x_band\"", "name = \"x_log\"");
    assert_points_at(
        &e,
        line,
        "derive[3].name",
        "column `x_log` is defined twice",
    );
}

#[test]
fn bad_bucket_bounds() {
    let (e, line) = broken("bounds = [0, 10]", "bounds = [10, 0]");
    assert_points_at(&e, line, "derive[3].bounds", "strictly increasing");
}

#[test]
fn toml_syntax_error() {
    let (e, line) = broken("[[lookup]]", "[[lookup]");
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.field, "toml");
}
