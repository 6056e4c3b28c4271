//! `trainer parity` as users run it: the committed fixtures, a broken pipeline, missing data.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("trainer runs")
}

#[test]
fn parity_json_on_the_fixtures() {
    let out = trainer(&[
        "parity",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        "data/flights/fixtures",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let events = report["events"].as_u64().expect("events");
    assert!(events > 2500, "{report}");
    assert_eq!(report["identical"].as_u64(), Some(events));
    assert!(report["first_mismatch"].is_null());
    assert!(
        out.stderr.is_empty(),
        "nothing but the result: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn parity_table_on_the_fixtures() {
    let out = trainer(&[
        "parity",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        "data/flights/fixtures",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("(100.000%)") && table.contains("first mismatch") && table.contains("none"),
        "{table}"
    );
}

#[test]
fn a_broken_pipeline_is_refused_with_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    let broken = text.replacen("length = \"24h\"", "length = \"24hh\"", 1);
    let line = broken.lines().position(|l| l.contains("24hh")).unwrap() + 1;
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, broken).unwrap();
    let out = trainer(&["parity", "--pipeline", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pipeline.toml:{line}:"))
            && err.contains("window[0].length")
            && err.contains("24hh"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_bad_data_row_names_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    let fixtures = repo().join("data/flights/fixtures/raw");
    for t in ["planes", "airlines", "airports", "weather"] {
        std::fs::copy(
            fixtures.join(format!("{t}.csv")),
            dir.join(format!("raw/{t}.csv")),
        )
        .unwrap();
    }
    let flights = std::fs::read_to_string(fixtures.join("flights.csv")).unwrap();
    let mut lines: Vec<String> = flights.lines().map(str::to_string).collect();
    // Line 11 of the file: a departure delay that is not a number.
    let cells: Vec<&str> = lines[10].split(',').collect();
    let mut cells: Vec<String> = cells.iter().map(|c| c.to_string()).collect();
    cells[5] = "late".to_string();
    lines[10] = cells.join(",");
    std::fs::write(dir.join("raw/flights.csv"), lines.join("\n") + "\n").unwrap();
    let out = trainer(&[
        "parity",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flights.csv:11: column `dep_delay`: `late` is not a float"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_history_says_how_to_get_it() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = trainer(&[
        "parity",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run ci/fetch-data"));
    std::fs::remove_dir_all(dir).ok();
}
