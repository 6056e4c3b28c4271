//! Where `scorer replay --out` writes predictions: a JSON-lines or a Parquet file (by the
//! name's extension), on local disk or in an object store (`s3://`, `gs://`, `az://`).
//!
//! A file bound for a store is written to a local temporary file first, then uploaded
//! whole when the replay ends (in parts, for a large one), so a replay that fails leaves no
//! partial object behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::score::{Scorer, SourcePos};

/// One prediction, as the scorer made it.
pub struct Prediction<'a> {
    /// Its JSON value (what a topic or a JSON-lines file receives).
    pub json: &'a [u8],
    /// The event's key, as text.
    pub key: &'a [u8],
    /// The event's time (epoch milliseconds).
    pub event_time: i64,
    /// Score and decision.
    pub score: (f64, bool),
    /// Where the event was read.
    pub pos: SourcePos<'a>,
}

impl<'a> Prediction<'a> {
    /// The prediction `scorer` just made for the event at `pos`.
    pub fn of(scorer: &'a Scorer, pos: SourcePos<'a>, event_time: i64) -> Self {
        Self {
            json: scorer.prediction(),
            key: scorer.key(),
            event_time,
            score: scorer.last_score(),
            pos,
        }
    }
}

/// The bundle every row of a file comes from (a replay scores with one model).
#[derive(Clone, Debug)]
pub struct Lineage {
    /// The model's name.
    pub model: String,
    /// Its version.
    pub version: u64,
    /// Its feature fingerprint.
    pub fingerprint: String,
}

/// An open output file.
pub struct OutFile {
    format: Format,
    /// Where the bytes are written (the target itself, or a temporary file for a store).
    local: PathBuf,
    /// The store URL to upload `local` to at the end.
    upload: Option<String>,
    /// The target as given, for messages.
    target: String,
    /// Removes the temporary file of a store target, whatever happens.
    _temp: TempGuard,
}

enum Format {
    Jsonl(BufWriter<File>),
    #[cfg(feature = "parquet")]
    Parquet(Box<crate::parquet_out::ParquetPredictions>),
}

impl OutFile {
    /// Create `target`: a path or `file://` URL, or a store URL. `.parquet` names Parquet,
    /// anything else JSON lines.
    pub fn create(target: &str, lineage: &Lineage) -> Result<Self> {
        let upload = shared_models::is_bucket_url(target).then(|| target.to_string());
        let local = match &upload {
            Some(url) => {
                let name = url.rsplit('/').next().unwrap_or("predictions");
                if name.is_empty() || url.ends_with("://") {
                    bail!("--out {url}: the URL names no object");
                }
                std::env::temp_dir().join(format!("kml-replay-{}-{name}", std::process::id()))
            }
            None => PathBuf::from(target.strip_prefix("file://").unwrap_or(target)),
        };
        let file =
            File::create(&local).with_context(|| format!("cannot create {}", local.display()))?;
        let parquet = Path::new(target)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        let format = if parquet {
            parquet_format(file, lineage)?
        } else {
            Format::Jsonl(BufWriter::new(file))
        };
        Ok(Self {
            format,
            _temp: TempGuard(upload.as_ref().map(|_| local.clone())),
            local,
            upload,
            target: target.to_string(),
        })
    }

    /// Append one prediction.
    pub fn write(&mut self, p: &Prediction<'_>) -> Result<()> {
        match &mut self.format {
            Format::Jsonl(w) => {
                w.write_all(p.json)?;
                w.write_all(b"\n")?;
            }
            #[cfg(feature = "parquet")]
            Format::Parquet(w) => w.push(p)?,
        }
        Ok(())
    }

    /// Finish the file (and upload it, for a store); returns its size in bytes.
    pub fn finish(self) -> Result<u64> {
        let written = match self.format {
            Format::Jsonl(mut w) => w.flush().map_err(anyhow::Error::from),
            #[cfg(feature = "parquet")]
            Format::Parquet(w) => w.finish(),
        };
        written.with_context(|| format!("cannot write {}", self.target))?;
        let size = std::fs::metadata(&self.local)?.len();
        if let Some(url) = &self.upload {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(shared_models::put_url_from_file(url, &self.local))
                .with_context(|| format!("cannot upload the predictions to {url}"))?;
        }
        Ok(size)
    }
}

/// Removes a temporary file when dropped, whatever happened.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(feature = "parquet")]
fn parquet_format(file: File, lineage: &Lineage) -> Result<Format> {
    Ok(Format::Parquet(Box::new(
        crate::parquet_out::ParquetPredictions::new(file, lineage)?,
    )))
}

#[cfg(not(feature = "parquet"))]
fn parquet_format(_: File, _: &Lineage) -> Result<Format> {
    bail!(
        "this build writes no Parquet (built without the `parquet` feature, as the edge \
         profile is): write JSON lines"
    )
}
