//! `trainer export-features`: the exact matrix a model is trained and validated on, as CSV, so
//! anyone can check our models with other tools (`ci/sklearn-check` does).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use shared_features::time::format_timestamp;

use crate::dataset::{Dataset, Input};

/// Arguments of `trainer export-features`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The pipeline file.
    #[arg(long, env = "KML_PIPELINE")]
    pipeline: PathBuf,
    /// Where to write the CSV: event_time, split (train|valid), label, then every input slot.
    #[arg(long)]
    out: PathBuf,
    /// History (CSV); defaults to the pipeline's `[events] path`.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Directory the pipeline's relative paths resolve against (default: the pipeline's directory).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Start of the validation split; overrides `[split] valid_from`.
    #[arg(long)]
    valid_from: Option<String>,
}

/// Compute the matrix exactly as `trainer fit` does and write it.
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.out.extension().is_none_or(|e| e != "csv") {
        bail!("--out {}: write a .csv file", args.out.display());
    }
    let input = Input::load(&args.pipeline, args.base.as_deref(), args.events.as_deref())?;
    let valid_from = input.valid_from(args.valid_from.as_deref())?;
    let data = Dataset::build(&input, valid_from)?;
    let p = &input.pipeline;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut header = vec![
        "event_time".to_string(),
        "split".to_string(),
        "label".to_string(),
    ];
    header.extend(data.fitted.names());
    writeln!(w, "{}", header.join(","))?;
    let mut buf = Vec::new();
    let mut line = String::new();
    for (split, rows) in [("train", &data.train), ("valid", &data.valid)] {
        for (i, y) in rows {
            let row = &data.run.rows[*i];
            data.fitted.transform(p, row, &mut buf);
            line.clear();
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
    eprintln!(
        "wrote {} training and {} validation rows of {} features to {}",
        data.train.len(),
        data.valid.len(),
        data.fitted.width(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
