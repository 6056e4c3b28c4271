//! `trainer fit`: history -> features -> model -> metrics -> a published, versioned bundle.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use ndarray::{Array1, Array2};
use serde::Serialize;
use shared_features::{FittedState, Pipeline, eval, fingerprint, offline, tables::sha256_hex};
use shared_models::{Manifest, Registry};

use crate::metrics::{Metrics, evaluate};
use crate::model::ModelSpec;

/// Arguments of `trainer fit`.
#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// The model store: file://DIR (default ./model-store) or memory://.
    #[arg(long, env = "KML_STORE", default_value = "file://./model-store")]
    store: String,
    /// History to train on (CSV); defaults to the pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Directory the pipeline's relative paths resolve against (default: the pipeline's directory).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Model name (default: the pipeline's name).
    #[arg(long)]
    name: Option<String>,
    /// Override a `[model]` hyperparameter, e.g. `--set alpha=0.1`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Start of the validation split (a date like 2013-11-01 or an RFC 3339 instant); overrides
    /// the pipeline's `[split] valid_from`.
    #[arg(long)]
    valid_from: Option<String>,
    /// Point this alias (e.g. challenger) at the new version once it is published.
    #[arg(long)]
    alias: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FitReport {
    name: String,
    version: u64,
    kind: &'static str,
    store: String,
    alias: Option<String>,
    train_rows: usize,
    valid_rows: usize,
    feature_fingerprint: String,
    auc: f64,
    metrics: Metrics,
}

/// Check everything, then fit, evaluate and publish.
pub fn run(args: FitArgs) -> anyhow::Result<ExitCode> {
    // Refuse bad configuration before any work.
    let file = args.pipeline.display().to_string();
    let text = std::fs::read_to_string(&args.pipeline)
        .with_context(|| format!("cannot read pipeline file {file}"))?;
    let p = Arc::new(Pipeline::parse(&text, &file)?);
    let spec = ModelSpec::from_table(p.model.as_ref(), &args.overrides, &file)?;
    let Some(label) = p.label.clone() else {
        bail!("{file}: training needs a [label]")
    };
    let valid_from = match &args.valid_from {
        Some(v) => shared_features::time::parse_date_or_timestamp(v)
            .map_err(|m| anyhow::anyhow!("--valid-from: {m}"))?,
        None => p.valid_from.with_context(|| {
            format!("{file}: training needs [split] valid_from (or --valid-from)")
        })?,
    };
    let registry = Registry::open(&args.store)?;
    let name = args.name.clone().unwrap_or_else(|| p.name.clone());
    let base = args.base.clone().unwrap_or_else(|| {
        args.pipeline
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    let events = match (&args.events, &p.events_path) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) => base.join(e),
        (None, None) => bail!("{file}: no `[events] path`; pass --events"),
    };

    let run = offline::run(&p, &events, &base).context("computing features")?;
    let et = p.event_time_col();
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for row in &run.rows {
        let Some(y) = eval::label(&label, row) else {
            continue;
        };
        let t = row[et].as_i64().unwrap_or(i64::MIN);
        if t < valid_from {
            train.push((row, y))
        } else {
            valid.push((row, y))
        }
    }
    if train.is_empty() || valid.is_empty() {
        bail!(
            "{file}: empty split: {} training and {} validation events with a label around valid_from",
            train.len(),
            valid.len()
        );
    }
    let fitted = FittedState::fit(
        &p,
        train.iter().map(|(r, _)| &r[..]),
        run.table_digests.clone(),
    );
    let matrix = |rows: &[(&Vec<shared_features::Value>, f64)]| {
        let w = fitted.width();
        let mut x = Array2::<f64>::zeros((rows.len(), w));
        let mut buf = Vec::with_capacity(w);
        for (i, (r, _)) in rows.iter().enumerate() {
            fitted.transform(&p, r, &mut buf);
            x.row_mut(i).iter_mut().zip(&buf).for_each(|(d, s)| *d = *s);
        }
        (x, Array1::from_iter(rows.iter().map(|(_, y)| *y == 1.0)))
    };
    let (x_train, y_train) = matrix(&train);
    let model = spec.fit(x_train, y_train)?;
    let (x_valid, y_valid) = matrix(&valid);
    // Score with the serving code, not the training library: what is evaluated is what serves.
    let scores: Vec<f64> = x_valid
        .rows()
        .into_iter()
        .map(|r| model.predict_proba(r.as_slice().unwrap_or(&r.to_vec())))
        .collect();
    let metrics = evaluate(
        &scores,
        y_valid.as_slice().unwrap_or(&y_valid.to_vec()),
        spec.threshold(),
    );

    let events_bytes =
        std::fs::read(&events).with_context(|| format!("cannot read {}", events.display()))?;
    let mut data_fp = sha256_hex(&events_bytes);
    for (_, d) in &run.table_digests {
        data_fp.push_str(d);
    }
    let feature_fingerprint = fingerprint(&p, &fitted);
    let manifest = Manifest {
        format: 1,
        name: name.clone(),
        version: 0,
        created_at: String::new(),
        kind: spec.kind().to_string(),
        hyperparameters: serde_json::to_value(&spec)?,
        feature_fingerprint: feature_fingerprint.clone(),
        input_signature: fitted.names(),
        metrics: [
            ("auc", metrics.auc),
            ("pr_auc", metrics.pr_auc),
            ("log_loss", metrics.log_loss),
            ("brier", metrics.brier),
            ("accuracy", metrics.accuracy),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        training_data_fingerprint: sha256_hex(data_fp.as_bytes()),
        files: Default::default(),
    };
    let files = vec![
        ("pipeline.toml".to_string(), Bytes::from(text.clone())),
        (
            "fitted.json".to_string(),
            Bytes::from(serde_json::to_vec(&fitted)?),
        ),
        (
            "model.json".to_string(),
            Bytes::from(serde_json::to_vec(&model)?),
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let published = rt.block_on(async {
        let m = registry.publish(manifest, files).await?;
        if let Some(alias) = &args.alias {
            registry.set_alias(&m.name, alias, m.version).await?;
        }
        anyhow::Ok(m)
    })?;

    let report = FitReport {
        name: published.name.clone(),
        version: published.version,
        kind: spec.kind(),
        store: args.store.clone(),
        alias: args.alias.clone(),
        train_rows: train.len(),
        valid_rows: valid.len(),
        feature_fingerprint,
        auc: metrics.auc,
        metrics,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &FitReport) {
    println!(
        "published {}@{} ({}) to {}",
        r.name, r.version, r.kind, r.store
    );
    if let Some(a) = &r.alias {
        println!("  {:<20}{}", "alias", a);
    }
    println!("  {:<20}{:>10}", "train events", r.train_rows);
    println!("  {:<20}{:>10}", "validation events", r.valid_rows);
    let m = &r.metrics;
    for (k, v) in [
        ("ROC AUC", m.auc),
        ("PR AUC", m.pr_auc),
        ("log loss", m.log_loss),
        ("Brier", m.brier),
        ("accuracy", m.accuracy),
        ("positive rate", m.positive_rate),
    ] {
        println!("  {k:<20}{v:>10.4}");
    }
    println!("  {:<20}{}", "feature fingerprint", r.feature_fingerprint);
}
