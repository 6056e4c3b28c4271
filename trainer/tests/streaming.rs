//! History that streams: Parquet read slice by slice through the offline engine, for
//! `export-features` (raw and encoded) and `fit`, against the whole-table run of the same events.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;

/// `export-features --raw` and `fit` from Parquet history stream it in slices (memory bounded
/// by the window state and the compact training set) and give what the whole-table run gives
/// from the CSV of the same events: the same raw rows, and the same bundle to the byte (fitted
/// encoding, model, reference distributions, metrics). A Parquet file not in event-time order
/// within the lateness is computed whole instead, saying why, with the same results.
#[test]
fn history_streams_from_parquet_as_the_whole_table_computes_it() {
    use polars::prelude::*;
    let dir = std::env::temp_dir().join(format!("trainer-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = repo().join("data/flights/fixtures/raw/flights.csv");
    let p = shared_features::Pipeline::parse(
        &std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap(),
        "pipeline.toml",
    )
    .unwrap();
    let mut df = read_csv(&csv);
    // In event-time order (the whole-table run's), the filtered and timeless records after.
    let fixtures = repo().join("data/flights/fixtures");
    let whole = shared_features::offline::run(&p, &csv, &fixtures).unwrap();
    let mut order = whole.source.clone();
    order.extend((0..df.height() as u32).filter(|r| !whole.source.contains(r)));
    let idx = IdxCa::from_vec("i".into(), order.iter().map(|&i| i as IdxSize).collect());
    let mut sorted = df.take(&idx).unwrap();
    let write = |name: &str, df: &mut DataFrame| {
        let path = dir.join(name);
        ParquetWriter::new(std::fs::File::create(&path).unwrap())
            .finish(df)
            .unwrap();
        path
    };
    let (sorted_path, unsorted_path) = (
        write("sorted.parquet", &mut sorted),
        write("unsorted.parquet", &mut df),
    );
    // `command` of the flights pipeline on the fixtures' tables, validation from 2013-01-03.
    let on = |command: &str, events: &Path, extra: &[&str]| {
        let mut args = on_fixtures(command);
        args.extend(["--events", events.to_str().unwrap()]);
        args.extend_from_slice(extra);
        trainer(&args)
    };
    // `export-features --with-key` (and `--raw` when `raw`) to `out`: what it wrote and said.
    let export_as = |raw: bool, events: &Path, out: &str| {
        let out = dir.join(out);
        let mut flags = vec!["--with-key", "--out", out.to_str().unwrap()];
        if raw {
            flags.push("--raw");
        }
        let o = on("export-features", events, &flags);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            std::fs::read_to_string(out).unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let export = |events: &Path, out: &str| export_as(true, events, out);
    let (from_csv, _) = export(&csv, "csv.csv");
    let (streamed, said) = export(&sorted_path, "streamed.csv");
    assert!(
        said.contains(&format!("(streamed: {} records", df.height())),
        "{said}"
    );
    assert!(from_csv.lines().count() > 2600);
    assert!(
        streamed == from_csv,
        "the streamed rows are the whole table's"
    );
    let (fallback, said) = export(&unsorted_path, "fallback.csv");
    assert!(
        said.contains("behind record") && said.contains("computing it whole instead"),
        "{said}"
    );
    assert!(fallback == from_csv);

    // The encoded matrix (`export-features` without `--raw`) streams the same way, through the
    // compact training set `fit` builds, encoded block by block as it is written.
    let encoded = |events: &Path, out: &str| export_as(false, events, out);
    let (matrix, said) = encoded(&csv, "matrix-csv.csv");
    assert!(!said.contains("streamed"), "{said}");
    assert!(matrix.lines().count() > 2600);
    let (streamed, said) = encoded(&sorted_path, "matrix-streamed.csv");
    assert!(said.contains("features streamed:"), "{said}");
    assert!(
        streamed == matrix,
        "the streamed matrix is the whole table's"
    );
    let (fallback, said) = encoded(&unsorted_path, "matrix-fallback.csv");
    assert!(said.contains("computing it whole instead"), "{said}");
    assert!(fallback == matrix);

    // `trainer fit` on each: the bundles are the same, file for file, byte for byte.
    let fit = |events: &Path, name: &str| {
        let store = dir.join(name);
        let o = on(
            "fit",
            events,
            &["--store", store.to_str().unwrap(), "--json"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let version = store.join("models/flights_delay/versions/1");
        let mut files = std::collections::BTreeMap::new();
        for f in ["fitted.json", "model.json", "reference.json", "roc.png"] {
            files.insert(f, std::fs::read(version.join(f)).unwrap());
        }
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            files,
            report,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (whole, whole_report, said) = fit(&csv, "store-csv");
    assert!(!said.contains("streamed"), "{said}");
    let (streamed, streamed_report, said) = fit(&sorted_path, "store-streamed");
    assert!(
        said.contains(&format!("features streamed: {} records", df.height())),
        "{said}"
    );
    let (fallback, fallback_report, said) = fit(&unsorted_path, "store-fallback");
    assert!(said.contains("computing it whole instead"), "{said}");
    for (bundle, report, how) in [
        (&streamed, &streamed_report, "streamed"),
        (
            &fallback,
            &fallback_report,
            "computed whole after the fallback",
        ),
    ] {
        for (f, bytes) in &whole {
            assert!(bundle[f] == *bytes, "{how}: {f} differs from the CSV's");
        }
        for k in [
            "train_rows",
            "valid_rows",
            "event_times",
            "metrics",
            "feature_fingerprint",
        ] {
            assert_eq!(report[k], whole_report[k], "{how}: {k}");
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
