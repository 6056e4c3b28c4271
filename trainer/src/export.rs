//! `trainer export-features`: the exact matrix a model is trained and validated on, as CSV or
//! Parquet, so anyone can check our models with other tools (`ci/sklearn-check` does). It is
//! `trainer fit`'s compact training set (`training.rs`), with each event's time and key kept,
//! encoded block by block as it is written.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use shared_features::time::TimestampText;

use crate::dataset::{Dataset, Input};
use crate::newton::Blocks as _;
use crate::raw::{RawWriter, RowGroups, push_cell};
use crate::training::{Keep, Training};

/// Arguments of `trainer export-features`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// Where to write the matrix, `.csv` or `.parquet`: event_time, split (train|valid), label,
    /// then every input slot. From Parquet history the features stream as for `trainer fit`,
    /// and the matrix is encoded block by block as it is written, never held whole.
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
    // The compact training set `trainer fit` builds (streamed from Parquet history), with
    // each event's time and key besides; the matrix is encoded block by block as it is written.
    let keep = Keep {
        times: true,
        keys: args.with_key,
    };
    let data = Training::build_keeping(&input, valid_from, keep)?;
    let mut out = if parquet {
        Out::parquet(&args.out)?
    } else {
        Out::csv(&args.out, &data, args.with_key)?
    };
    for train in [true, false] {
        write_split(&data, train, &mut out)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    }
    out.finish()
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} training and {} validation rows of {} features to {}",
        data.train_rows,
        data.valid_rows,
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

/// Where the encoded matrix goes: CSV, or Parquet in row groups of [`GROUP_ROWS`] (`key` with
/// `--with-key`, `event_time` as RFC 3339 text in UTC as in the CSV, `split`, a boolean
/// `label`, then one f64 column per input slot).
enum Out {
    /// The file, and the line being written.
    Csv(std::io::BufWriter<std::fs::File>, String),
    Parquet(RowGroups, Box<Group>),
}

/// Rows per Parquet row group.
const GROUP_ROWS: usize = 100_000;

/// A row group's columns, buffered.
#[derive(Default)]
struct Group {
    keys: Option<Vec<Option<String>>>,
    times: Vec<String>,
    splits: Vec<&'static str>,
    labels: Vec<bool>,
    slots: Vec<Vec<f64>>,
    names: Vec<String>,
}

/// One row of the matrix with what names it.
struct Row<'a> {
    key: Option<Option<&'a str>>,
    time: &'a str,
    split: &'static str,
    label: bool,
    x: &'a [f64],
}

impl Out {
    fn parquet(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self::Parquet(RowGroups::new(file), Box::default()))
    }

    fn csv(path: &std::path::Path, data: &Training, with_key: bool) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut header = if with_key {
            vec!["key".to_string()]
        } else {
            Vec::new()
        };
        header.extend(["event_time", "split", "label"].map(String::from));
        header.extend(data.fitted.names());
        writeln!(w, "{}", header.join(","))?;
        Ok(Self::Csv(w, String::new()))
    }

    fn row(&mut self, names: &[String], r: Row<'_>) -> anyhow::Result<()> {
        match self {
            Self::Csv(w, line) => {
                use std::fmt::Write as _;
                line.clear();
                if let Some(k) = r.key {
                    push_cell(line, k.unwrap_or_default());
                    line.push(',');
                }
                // Writing to a String does not fail.
                let _ = write!(line, "{},{},{}", r.time, r.split, u8::from(r.label));
                for v in r.x {
                    // `{:?}` prints the shortest text that reads back as the same f64.
                    let _ = write!(line, ",{v:?}");
                }
                line.push('\n');
                w.write_all(line.as_bytes())?;
            }
            Self::Parquet(_, group) => {
                if group.names.is_empty() {
                    group.names = names.to_vec();
                    group.slots = vec![Vec::new(); names.len()];
                    group.keys = r.key.map(|_| Vec::new());
                }
                if let (Some(keys), Some(k)) = (&mut group.keys, r.key) {
                    keys.push(k.map(str::to_string));
                }
                group.times.push(r.time.to_string());
                group.splits.push(r.split);
                group.labels.push(r.label);
                for (col, v) in group.slots.iter_mut().zip(r.x) {
                    col.push(*v);
                }
                if group.labels.len() >= GROUP_ROWS {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    /// Write the buffered Parquet rows as a row group.
    fn flush(&mut self) -> anyhow::Result<()> {
        use polars::prelude::{Column, DataFrame};
        let Self::Parquet(out, group) = self else {
            return Ok(());
        };
        let n = group.labels.len();
        if n == 0 && out.started() {
            return Ok(());
        }
        let mut columns = Vec::new();
        if let Some(keys) = &mut group.keys {
            columns.push(Column::new("key".into(), std::mem::take(keys)));
        }
        columns.extend([
            Column::new("event_time".into(), std::mem::take(&mut group.times)),
            Column::new("split".into(), std::mem::take(&mut group.splits)),
            Column::new("label".into(), std::mem::take(&mut group.labels)),
        ]);
        for (name, col) in group.names.iter().zip(&mut group.slots) {
            columns.push(Column::new(name.as_str().into(), std::mem::take(col)));
        }
        out.write(&DataFrame::new(n, columns)?)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.flush()?;
        match &mut self {
            Self::Csv(w, _) => w.flush()?,
            Self::Parquet(out, _) => out.finish()?,
        }
        Ok(())
    }
}

/// Write a split's rows (`train`: the training split), each encoded as the model reads it.
fn write_split(data: &Training, train: bool, out: &mut Out) -> anyhow::Result<()> {
    let names = data.fitted.names();
    let split = if train { "train" } else { "valid" };
    let labels = data.labels(train);
    let times = data.times(train).unwrap_or_default();
    let keys = data.keys(train);
    let mut text = TimestampText::default();
    let mut time = String::new();
    let mut failed = None;
    let written = data.blocks(train).each(&mut |first, rows| {
        for (k, x) in rows.rows().into_iter().enumerate() {
            let i = first + k;
            time.clear();
            text.push(times[i], &mut time);
            let copied: Vec<f64>;
            let x = match x.as_slice() {
                Some(x) => x,
                None => {
                    copied = x.to_vec();
                    &copied
                }
            };
            let row = Row {
                key: keys.as_ref().map(|k| k[i]),
                time: &time,
                split,
                label: labels[i],
                x,
            };
            if let Err(e) = out.row(&names, row) {
                let m = e.to_string();
                failed = Some(e);
                return Err(m);
            }
        }
        Ok(())
    });
    match (written, failed) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(m), None) => Err(anyhow::anyhow!(m)),
    }
}
