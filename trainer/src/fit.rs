//! `trainer fit`: history -> features -> model -> metrics -> a published, versioned bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use shared_features::offline::TimeRange;
use shared_features::{fingerprint, tables::sha256_hex};
use shared_models::{Bundle, FORMAT, Manifest, Registry, Servable};

use crate::dataset::Input;
use crate::model::ModelSpec;
use crate::newton::Blocks as _;
use crate::training::Training;
use shared_models::bundle_table_file;
use shared_models::drift::Reference;
use shared_models::metrics::{Metrics, evaluate};
use shared_models::plots;

/// Arguments of `trainer fit`.
#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// The model store: file://DIR (default ./model-store), s3://BUCKET/PREFIX, gs://..., az://...
    /// (credentials from the environment), or memory://.
    #[arg(long, env = "KML_STORE", default_value = "file://./model-store")]
    store: String,
    /// History to train on: CSV, Parquet (.parquet), JSON lines (.jsonl, .ndjson, .json) or an
    /// Avro object container file (.avro), a local path or an object in a store (s3://BUCKET/KEY, gs://, az://); defaults to the
    /// pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    #[command(flatten)]
    topic: crate::topic::TopicArgs,
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
    /// The event times found in the history (first, last, how many before the cut).
    event_times: TimeRange,
    feature_fingerprint: String,
    auc: f64,
    metrics: Metrics,
    seconds: Seconds,
}

/// Where the time went (wall clock).
#[derive(Serialize)]
struct Seconds {
    /// Reading history and tables, and computing the features.
    features: f64,
    /// Fitting the model (encoding the training rows into its matrix included: Newton's method
    /// encodes block by block as it reads).
    fit: f64,
    /// Scoring the validation split and computing metrics and plots.
    evaluate: f64,
    /// Writing the bundle to the store.
    publish: f64,
}

/// Check everything, then fit, evaluate and publish.
pub fn run(args: FitArgs) -> anyhow::Result<ExitCode> {
    // Refuse bad configuration before any work.
    let mut input = Input::load(
        &args.pipeline,
        args.base.as_deref(),
        args.events.as_deref(),
        Some(&args.topic),
    )?;
    let (p, file) = (input.pipeline.clone(), input.file.clone());
    let spec = ModelSpec::from_table(p.model.as_ref(), &args.overrides, &file)?;
    if p.label.is_none() {
        bail!("{file}: training needs a [label]");
    }
    let valid_from = input.valid_from(args.valid_from.as_deref())?;
    // A publisher may create a store directory; reads never do.
    let registry = Registry::open_to_publish(&args.store)?;
    let name = args.name.clone().unwrap_or_else(|| p.name.clone());

    let progress = Progress::new();
    progress.stage("reading history and computing features");
    let mut lap = Lap(std::time::Instant::now());
    input.fetch()?;
    let data = Training::build(&input, valid_from)?;
    let features_s = lap.next();
    let fitting = format!("fitting {} on {} events", spec.kind(), data.train_rows);
    progress.stage(&fitting);
    let fitted = &data.fitted;
    let model = spec.fit_training(&data, &mut |m| progress.stage(&format!("{fitting}: {m}")))?;
    // The check the scorer makes at load, run before anything is scored or published.
    model.validate().map_err(|m| {
        anyhow::anyhow!(
            "the fitted {} cannot be served, so nothing is published: {m}",
            spec.kind()
        )
    })?;
    let fit_s = lap.next();
    progress.stage("evaluating on the validation split");
    // Score with the serving code, not the training library: what is evaluated is what serves.
    // Both splits are encoded block by block, never held whole.
    let scores_of = |train: bool| -> anyhow::Result<Vec<f64>> {
        let mut scores = Vec::new();
        data.blocks(train)
            .each(&mut |_, rows| {
                scores.extend(rows.rows().into_iter().map(|r| match r.as_slice() {
                    Some(x) => model.predict_proba(x),
                    None => model.predict_proba(&r.to_vec()),
                }));
                Ok(())
            })
            .map_err(anyhow::Error::msg)?;
        Ok(scores)
    };
    let scores = scores_of(false)?;
    let labels = data.labels(false);
    let metrics = evaluate(&scores, &labels, spec.threshold());
    // What drift is measured against: the training split's inputs, a column at a time, and
    // its scores.
    let train_scores = scores_of(true)?;
    let reference = Reference::from_columns(
        &fitted.names(),
        data.train_rows as u64,
        |j| data.column(true, j),
        &train_scores,
    );

    let mut data_fp = history_digest(&input.events)?;
    for (_, d) in &data.table_digests {
        data_fp.push_str(d);
    }
    let feature_fingerprint = fingerprint(&p, fitted);
    let manifest = Manifest {
        format: FORMAT,
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
    let mut files = vec![
        ("pipeline.toml".to_string(), Bytes::from(input.text.clone())),
        (
            "fitted.json".to_string(),
            Bytes::from(serde_json::to_vec(fitted)?),
        ),
        (
            "model.json".to_string(),
            Bytes::from(serde_json::to_vec(&model)?),
        ),
    ];
    files.push((
        shared_models::REFERENCE.to_string(),
        Bytes::from(serde_json::to_vec(&reference)?),
    ));
    files.push((
        "roc.png".to_string(),
        Bytes::from(plots::roc_png(&scores, &labels, metrics.auc)?),
    ));
    files.push((
        "calibration.png".to_string(),
        Bytes::from(plots::calibration_png(&scores, &labels, metrics.brier)?),
    ));
    // The scorer serves from the bundle alone: the lookup and as-of tables travel with it, and
    // their digests are part of the feature fingerprint it checks on load.
    for (name, path) in p.table_paths() {
        let full = input.base.join(path);
        let bytes =
            std::fs::read(&full).with_context(|| format!("cannot read {}", full.display()))?;
        files.push((bundle_table_file(name), Bytes::from(bytes)));
    }
    // Load the bundle exactly as the scorer will (fitted state, tables, fingerprint, model,
    // signature): what it would refuse is never published.
    let staged = Bundle {
        manifest: manifest.clone(),
        files: files.iter().cloned().collect(),
    };
    Servable::from_bundle(&staged)
        .context("refusing to publish a bundle the scorer would refuse")?;
    let evaluate_s = lap.next();
    progress.stage(&format!("publishing to {}", args.store));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let published = rt.block_on(async {
        let m = registry.publish(manifest, files).await?;
        if let Some(alias) = &args.alias {
            registry.set_alias(&m.name, alias, m.version).await?;
        }
        anyhow::Ok(m)
    })?;

    drop(progress);
    let publish_s = lap.next();
    let report = FitReport {
        name: published.name.clone(),
        version: published.version,
        kind: spec.kind(),
        store: args.store.clone(),
        alias: args.alias.clone(),
        train_rows: data.train_rows,
        valid_rows: data.valid_rows,
        event_times: data.times.clone(),
        feature_fingerprint,
        auc: metrics.auc,
        metrics,
        seconds: Seconds {
            features: features_s,
            fit: fit_s,
            evaluate: evaluate_s,
            publish: publish_s,
        },
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
    let t = &r.event_times;
    println!(
        "  {:<20}{} to {}",
        "event times",
        t.first.as_deref().unwrap_or("-"),
        t.last.as_deref().unwrap_or("-")
    );
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
    let t = &r.seconds;
    println!(
        "  {:<20}features {:.1} s, fit {:.1} s, evaluate {:.1} s, publish {:.1} s",
        "time", t.features, t.fit, t.evaluate, t.publish
    );
}

/// Seconds since the previous lap (or the start).
struct Lap(std::time::Instant);

impl Lap {
    fn next(&mut self) -> f64 {
        let now = std::time::Instant::now();
        let s = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        s
    }
}

/// A spinner naming the current stage, on stderr when it is a terminal; invisible when piped.
struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Self(bar)
    }

    fn stage(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
}

impl Drop for Progress {
    /// Clear the spinner on success and on error alike, before anything else is printed.
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// SHA-256 (hex) of the history: the bytes of its file, read in blocks; for a directory, of
/// each Parquet file's path below it and its bytes, in the order they are read.
fn history_digest(events: &std::path::Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let files = shared_features::offline::history_files(events)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    for file in &files {
        if events.is_dir() {
            let relative = file.strip_prefix(events).unwrap_or(file);
            h.update(relative.to_string_lossy().as_bytes());
            h.update([0]);
        }
        let mut f =
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
