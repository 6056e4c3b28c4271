//! `trainer export-features`: the exact matrix a model is trained and validated on, as CSV or
//! Parquet, so anyone can check our models with other tools (`ci/sklearn-check` does).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use shared_features::time::format_timestamp;

use crate::dataset::{Dataset, Input};
use crate::raw::{RawWriter, push_cell};

/// Arguments of `trainer export-features`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// Where to write the matrix, `.csv` or `.parquet`: event_time, split (train|valid), label,
    /// then every input slot.
    #[arg(long)]
    out: PathBuf,
    /// History: CSV, Parquet (.parquet), JSON lines (.jsonl, .ndjson, .json) or Avro (.avro), a
    /// local path or an object in a store (s3://BUCKET/KEY, gs://, az://); defaults to the
    /// pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    #[command(flatten)]
    topic: crate::topic::TopicArgs,
    /// Directory the pipeline's relative paths resolve against (default: the pipeline's directory).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Start of the validation split; overrides `[split] valid_from`.
    #[arg(long)]
    valid_from: Option<String>,
    /// Also write each row's entity key (the pipeline's `key`, as text) in a first column,
    /// `key`: with the event time it names the event, so a row can be matched with the
    /// scorer's prediction of the same event.
    #[arg(long)]
    with_key: bool,
    /// Write the `[features]` columns as the pipeline computes them, before scaling and one-hot
    /// encoding (one column each; nulls empty) instead of the model's input slots: values that
    /// do not depend on the training split's statistics. From Parquet history this streams, in
    /// memory bounded by the window state.
    #[arg(long)]
    raw: bool,
}

/// Compute the matrix exactly as `trainer fit` does and write it.
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let parquet = match args.out.extension().and_then(|e| e.to_str()) {
        Some("csv") => false,
        Some("parquet") => true,
        _ => bail!(
            "--out {}: write a .csv or a .parquet file",
            args.out.display()
        ),
    };
    let mut input = Input::load(
        &args.pipeline,
        args.base.as_deref(),
        args.events.as_deref(),
        Some(&args.topic),
    )?;
    let valid_from = input.valid_from(args.valid_from.as_deref())?;
    input.fetch()?;
    if args.raw {
        return export_raw(&input, &args, parquet, valid_from);
    }
    let data = Dataset::build(&input, valid_from)?;
    if parquet {
        write_parquet(&input, &data, &args.out, args.with_key)?;
    } else {
        write_csv(&input, &data, &args.out, args.with_key)?;
    }
    eprintln!(
        "wrote {} training and {} validation rows of {} features to {}",
        data.train.len(),
        data.valid.len(),
        data.fitted.width(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--raw`: Parquet history (not from a topic) streams through the engine slice by slice, so
/// memory stays bounded by the window state; other history, or a Parquet file not in
/// event-time order within the lateness, is computed whole.
fn export_raw(
    input: &Input,
    args: &ExportArgs,
    parquet: bool,
    valid_from: i64,
) -> anyhow::Result<ExitCode> {
    use shared_features::offline::stream::{self, StreamError};
    let p = &input.pipeline;
    if stream::streams(&input.events) && input.history.is_none() {
        let mut w = RawWriter::create(p, &args.out, parquet, valid_from, args.with_key)?;
        let mut failed = None;
        let run = stream::stream(
            p,
            &input.events,
            &input.base,
            stream::SLICE_ROWS,
            &mut |row, _| {
                w.row(row).map_err(|e| {
                    let m = format!("{e:#}");
                    failed = Some(e);
                    shared_features::DataError::file(&args.out.display().to_string(), m)
                })
            },
        );
        match run {
            Ok(run) => {
                let (rows, train) = (w.rows, w.train);
                w.finish()?;
                eprintln!(
                    "wrote {} training and {} validation rows of raw features to {} (streamed: \
                     {} records, at most {} held for the lateness)",
                    train,
                    rows - train,
                    args.out.display(),
                    run.records,
                    run.held_max
                );
                return Ok(ExitCode::SUCCESS);
            }
            Err(StreamError::Unordered(e)) => {
                eprintln!("{e}; computing it whole instead");
            }
            Err(StreamError::Data(e)) => {
                return Err(failed.unwrap_or_else(|| anyhow::Error::new(e)))
                    .with_context(|| format!("computing features from {}", input.events_source));
            }
        }
    }
    let data = Dataset::build(input, valid_from)?;
    let mut w = RawWriter::create(p, &args.out, parquet, valid_from, args.with_key)?;
    for (i, _) in data.train.iter().chain(&data.valid) {
        w.row(&data.run.rows[*i])?;
    }
    let (rows, train) = (w.rows, w.train);
    w.finish()?;
    eprintln!(
        "wrote {train} training and {} validation rows of raw features to {}",
        rows - train,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parquet: (`key` with `--with-key`), `event_time` (RFC 3339 text in UTC, as in the CSV),
/// `split`, `label` (bool), then one f64 column per input slot.
fn write_parquet(
    input: &Input,
    data: &Dataset,
    out: &std::path::Path,
    with_key: bool,
) -> anyhow::Result<()> {
    use polars::prelude::{Column, DataFrame, ParquetWriter};
    let p = &input.pipeline;
    let names = data.fitted.names();
    let n = data.train.len() + data.valid.len();
    let mut keys = Vec::with_capacity(if with_key { n } else { 0 });
    let mut times = Vec::with_capacity(n);
    let mut splits = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut slots: Vec<Vec<f64>> = vec![Vec::with_capacity(n); names.len()];
    let mut buf = Vec::new();
    for (split, rows) in [("train", &data.train), ("valid", &data.valid)] {
        for (i, y) in rows {
            let row = &data.run.rows[*i];
            data.fitted.transform(p, row, &mut buf);
            if with_key {
                keys.push(row[p.key].key_text());
            }
            times.push(row[p.event_time_col()].as_i64().map(format_timestamp));
            splits.push(split);
            labels.push(*y);
            for (col, v) in slots.iter_mut().zip(&buf) {
                col.push(*v);
            }
        }
    }
    let mut columns = Vec::new();
    if with_key {
        columns.push(Column::new("key".into(), keys));
    }
    columns.extend([
        Column::new("event_time".into(), times),
        Column::new("split".into(), splits),
        Column::new("label".into(), labels),
    ]);
    for (name, col) in names.iter().zip(slots) {
        columns.push(Column::new(name.as_str().into(), col));
    }
    let mut df = DataFrame::new(n, columns)?;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    ParquetWriter::new(file)
        .finish(&mut df)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn write_csv(
    input: &Input,
    data: &Dataset,
    out: &std::path::Path,
    with_key: bool,
) -> anyhow::Result<()> {
    let p = &input.pipeline;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut header = if with_key {
        vec!["key".to_string()]
    } else {
        Vec::new()
    };
    header.extend([
        "event_time".to_string(),
        "split".to_string(),
        "label".to_string(),
    ]);
    header.extend(data.fitted.names());
    writeln!(w, "{}", header.join(","))?;
    let mut buf = Vec::new();
    let mut line = String::new();
    for (split, rows) in [("train", &data.train), ("valid", &data.valid)] {
        for (i, y) in rows {
            let row = &data.run.rows[*i];
            data.fitted.transform(p, row, &mut buf);
            line.clear();
            if with_key {
                push_cell(&mut line, &row[p.key].key_text().unwrap_or_default());
                line.push(',');
            }
            let t = row[p.event_time_col()]
                .as_i64()
                .map(format_timestamp)
                .unwrap_or_default();
            line.push_str(&format!("{t},{split},{}", u8::from(*y)));
            for v in &buf {
                // `{:?}` prints the shortest text that reads back as the same f64.
                line.push_str(&format!(",{v:?}"));
            }
            writeln!(w, "{line}")?;
        }
    }
    w.flush()?;
    Ok(())
}
