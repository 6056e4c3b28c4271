//! Every class of bad data file (history in CSV, JSON lines or Parquet; lookup and as-of
//! tables) is refused before any feature is computed, with one sentence that names the file,
//! the line (and character, for JSON), the column and the offending value. Where both engines
//! read a file, both say the same thing.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use shared_features::{DataError, Tables, offline};

/// A fresh directory holding the test pipeline's two tables (or replacements for them).
fn dir(name: &str, cats: &str, rates: &str) -> common::TempDir {
    let d = common::tempdir(&format!("data-errors-{name}"));
    std::fs::write(d.join("cats.csv"), cats).unwrap();
    std::fs::write(d.join("rates.csv"), rates).unwrap();
    d
}

const HEADER: &str = "id,ts,x,cat,n";

/// Good history rows, then whatever the test appends.
fn history(extra: &str) -> String {
    format!("{HEADER}\nk1,2024-01-01T00:10:00Z,1.5,a,1\nk2,2024-01-01T00:20:00Z,2,b,1\n{extra}")
}

/// The offline engine's refusal of `events` (written under `name`) with the given tables.
fn offline_refusal(name: &str, events: &[u8], cats: &str, rates: &str) -> (DataError, PathBuf) {
    let d = dir(name, cats, rates);
    let path = d.join(name);
    std::fs::write(&path, events).unwrap();
    let p = common::pipeline();
    let err = match offline::run(&p, &path, &d) {
        Ok(_) => panic!("{name} must be refused"),
        Err(e) => e,
    };
    (err, path)
}

/// The online engine's refusal of the tables that `read` gives (named as in the pipeline).
fn load_refusal(read: impl FnMut(&str) -> Result<Vec<u8>, String>) -> DataError {
    match Tables::load(&common::pipeline(), read) {
        Ok(_) => panic!("the tables must be refused"),
        Err(e) => e,
    }
}

/// The online engine's refusal of the two tables' bytes.
fn online_refusal(cats: impl AsRef<[u8]>, rates: impl AsRef<[u8]>) -> DataError {
    load_refusal(|path| match path {
        "cats.csv" => Ok(cats.as_ref().to_vec()),
        "rates.csv" => Ok(rates.as_ref().to_vec()),
        other => Err(format!("no table {other}")),
    })
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_history_cell_that_is_not_its_declared_type_names_line_column_and_value() {
    let (e, path) = offline_refusal(
        "cell.csv",
        history("k3,2024-01-01 00:30:00,3,c,1\n").as_bytes(),
        common::CATS,
        common::RATES,
    );
    assert_eq!((e.line, e.column.as_str()), (Some(4), "ts"), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}:4: column `ts`: ", shown(&path))),
        "{text}"
    );
    assert!(text.contains("2024-01-01 00:30:00"), "{text}");
}

#[test]
fn a_csv_row_with_too_few_fields_names_its_line_and_both_counts() {
    let cats = format!("{}d\n", common::CATS);
    assert_eq!(
        online_refusal(&cats, common::RATES).to_string(),
        "cats.csv:5: the row has 1 fields where the header has 2"
    );
}

#[test]
fn a_ragged_history_row_is_refused_by_the_offline_engine_as_online() {
    // polars alone reads the short row with nulls for its missing fields; the online path
    // (csv_to_json, which `scorer feed` and the parity check use) refuses it. Both must refuse.
    let text = history("k3,2024-01-01T00:30:00Z,3\n");
    let (e, path) = offline_refusal("ragged.csv", text.as_bytes(), common::CATS, common::RATES);
    let online = shared_features::events::csv_to_json(&common::pipeline(), text.as_bytes(), "x")
        .expect_err("the online path refuses it");
    let want = "the row has 3 fields where the header has 5";
    assert_eq!(e.to_string(), format!("{}:4: {want}", shown(&path)));
    assert_eq!(online.to_string(), format!("x:4: {want}"));
}

#[test]
fn a_declared_field_missing_from_the_header_is_named_at_line_1() {
    let text = history("").replace(",cat,", ",category,");
    let (e, path) = offline_refusal("header.csv", text.as_bytes(), common::CATS, common::RATES);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1: column `cat`: no such column; the file has: id, ts, x, category, n",
            shown(&path)
        )
    );
}

#[test]
fn malformed_json_lines_are_placed_at_the_files_line_and_character() {
    let lines = "{\"id\":\"k1\",\"ts\":\"2024-01-01T00:10:00Z\",\"x\":1.5,\"cat\":\"a\",\"n\":1}\n\
                 \n\
                 {\"id\":\"k2\",\"ts\":\"2024-01-01T00:20:00Z\",\"x\":2 \"cat\":\"b\",\"n\":1}\n";
    let (e, path) = offline_refusal(
        "events.jsonl",
        lines.as_bytes(),
        common::CATS,
        common::RATES,
    );
    // Line 3 of the file (the blank line counts); the `"` after `2 ` is character 46.
    assert_eq!((e.line, e.col), (Some(3), Some(46)), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}:3:46: malformed JSON: ", shown(&path))),
        "{text}"
    );
    assert!(
        !text.contains("line 1"),
        "the decoder's own line is not the file's: {text}"
    );
}

#[test]
fn a_json_line_with_a_wrongly_typed_field_names_line_field_and_value() {
    let lines = "{\"id\":\"k1\",\"ts\":\"2024-01-01T00:10:00Z\",\"x\":1.5,\"cat\":\"a\",\"n\":1}\n\
                 {\"id\":\"k2\",\"ts\":\"2024-01-01T00:20:00Z\",\"x\":[2],\"cat\":\"b\",\"n\":1}\n";
    let (e, path) = offline_refusal("typed.jsonl", lines.as_bytes(), common::CATS, common::RATES);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: column `x`: field `x` should be float, got an array",
            shown(&path)
        )
    );
}

fn parquet(columns: Vec<Column>) -> Vec<u8> {
    let height = columns[0].len();
    let mut df = DataFrame::new(height, columns).unwrap();
    let mut out = Vec::new();
    ParquetWriter::new(&mut out).finish(&mut df).unwrap();
    out
}

fn good_parquet_columns() -> Vec<Column> {
    vec![
        Column::new("id".into(), ["k1", "k2"]),
        Column::new(
            "ts".into(),
            ["2024-01-01T00:10:00Z", "2024-01-01T00:20:00Z"],
        ),
        Column::new("x".into(), [1.5f64, 2.0]),
        Column::new("cat".into(), ["a", "b"]),
        Column::new("n".into(), [1i64, 1]),
    ]
}

#[test]
fn a_parquet_column_of_the_wrong_type_is_named_without_a_line() {
    let mut columns = good_parquet_columns();
    columns[4] = Column::new("n".into(), ["one", "two"]);
    let (e, path) = offline_refusal(
        "typed.parquet",
        &parquet(columns),
        common::CATS,
        common::RATES,
    );
    assert_eq!(e.line, None, "Parquet has no lines: {e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: column `n`: column of type str cannot be read as int",
            shown(&path)
        )
    );
}

#[test]
fn a_parquet_file_without_a_declared_column_names_it() {
    let mut columns = good_parquet_columns();
    columns.remove(3);
    let (e, path) = offline_refusal(
        "short.parquet",
        &parquet(columns),
        common::CATS,
        common::RATES,
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: column `cat`: declared field is not a column of the file",
            shown(&path)
        )
    );
}

#[test]
fn a_duplicate_lookup_key_is_refused_by_both_engines_naming_the_key_and_both_lines() {
    let cats = "cat,weight\na,1.5\nb,NA\nc,4\nb,2\n";
    let (offline, path) = offline_refusal("dup.csv", history("").as_bytes(), cats, common::RATES);
    let said =
        "5: column `cat`: key \"b\" appears twice (also on line 3); lookup keys must be unique";
    assert_eq!(
        offline.to_string(),
        format!("{}:{said}", shown(&path.with_file_name("cats.csv")))
    );
    let online = online_refusal(cats, common::RATES);
    assert_eq!(online.to_string(), format!("cats.csv:{said}"));
}

#[test]
fn a_table_without_a_declared_column_lists_the_columns_it_has() {
    let cats = "cat,wt\na,1.5\n";
    let e = online_refusal(cats, common::RATES);
    assert_eq!(
        e.to_string(),
        "cats.csv:1: column `weight`: no such column; the file has: cat, wt"
    );
}

#[test]
fn a_table_cell_that_is_not_its_declared_type_names_line_column_and_value() {
    let rates = format!("{}k2,2024-01-01T01:00:00Z,high\n", common::RATES);
    let e = online_refusal(common::CATS, &rates);
    assert_eq!(
        e.to_string(),
        "rates.csv:5: column `rate`: `high` is not a float"
    );
}

#[test]
fn an_as_of_row_without_a_time_is_refused_at_its_line() {
    let rates = format!("{}k2,NA,3.5\n", common::RATES);
    let e = online_refusal(common::CATS, &rates);
    assert_eq!(
        e.to_string(),
        "rates.csv:5: column `at`: the as-of time is null"
    );
}

#[test]
fn a_table_that_is_not_utf8_names_its_line_and_field() {
    let mut cats = b"cat,weight\na,1.5\n".to_vec();
    cats.extend_from_slice(b"b\xff,2\n");
    let e = online_refusal(cats, common::RATES);
    assert_eq!(
        e.to_string(),
        "cats.csv:3: field 1 is not UTF-8 (at byte 1 of the field)"
    );
}

#[test]
fn a_missing_table_is_named_by_both_engines() {
    let d = dir("missing", common::CATS, common::RATES);
    std::fs::remove_file(d.join("rates.csv")).unwrap();
    let events = d.join("events.csv");
    std::fs::write(&events, history("")).unwrap();
    let e = offline::run(&common::pipeline(), &events, &d)
        .map(|_| ())
        .expect_err("a missing table is refused");
    assert_eq!(
        e.to_string(),
        format!("{}: no such file", shown(&d.join("rates.csv")))
    );
    let e = load_refusal(|path| match path {
        "cats.csv" => Ok(common::CATS.as_bytes().to_vec()),
        other => Err(format!("no such file in the store: {other}")),
    });
    assert_eq!(
        e.to_string(),
        "rates.csv: no such file in the store: rates.csv"
    );
}
