//! The training matrix: features offline, labels, the time split and the fitted encoding.
//! `trainer fit` trains on it and `trainer export-features` writes it out, so both see the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use shared_features::offline::{self, OfflineRun, TimeRange};
use shared_features::{FittedState, Pipeline, eval};

use crate::topic::{TopicArgs, TopicHistory};

/// A pipeline file, read and checked, with where its data is.
pub struct Input {
    /// The file as given, for messages.
    pub file: String,
    /// Its text (bundled with the model).
    pub text: String,
    /// The checked pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Directory relative paths resolve against.
    pub base: PathBuf,
    /// The history file, local (a copy in a temporary directory when it came from a store).
    pub events: PathBuf,
    /// Where the history came from, as given: a path or a store URL (for messages).
    pub events_source: String,
    /// Removes the downloaded copy when the input is dropped.
    downloaded: Option<Download>,
    /// History from a topic range instead of a file (`--topic`).
    topic: Option<TopicArgs>,
    /// Once the topic is read: each record's position, and the range to train on.
    pub history: Option<TopicHistory>,
}

/// A temporary directory holding history fetched from a store; removed on drop.
struct Download(PathBuf);

impl Drop for Download {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh temporary directory, removed when the guard drops.
fn temp_dir() -> anyhow::Result<(PathBuf, Download)> {
    let dir = std::env::temp_dir().join(format!(
        "kml-trainer-history-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok((dir.clone(), Download(dir)))
}

/// Run one store request to completion on a runtime of its own (the trainer is synchronous).
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// Copy the object at a store URL into a fresh temporary directory, under its own file name
/// (whose extension tells the reader its format).
fn download(url: &str) -> anyhow::Result<(PathBuf, Download)> {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && !n.contains("://"))
        .unwrap_or("history.csv");
    let bytes = block_on(shared_models::get_url(url))?
        .with_context(|| format!("cannot read history from {url}"))?;
    let (dir, guard) = temp_dir()?;
    let path = dir.join(name);
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((path, guard))
}

impl Input {
    /// Read and check `pipeline`; `base` and `events` override the defaults; `topic`, when it
    /// names one, replaces the history file by a topic range.
    pub fn load(
        pipeline: &Path,
        base: Option<&Path>,
        events: Option<&Path>,
        topic: Option<&TopicArgs>,
    ) -> anyhow::Result<Self> {
        let file = pipeline.display().to_string();
        let text = std::fs::read_to_string(pipeline)
            .with_context(|| format!("cannot read pipeline file {file}"))?;
        let p = Arc::new(Pipeline::parse(&text, &file)?);
        let base = match base {
            Some(b) => b.to_path_buf(),
            None => pipeline
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        // History is a local file (CSV, Parquet or JSON lines, by extension) or an object in a
        // store (s3://, gs://, az://), fetched once before anything is computed.
        let topic = topic.filter(|t| t.topic.is_some()).cloned();
        if let Some(t) = &topic {
            t.range()?;
        }
        let (events_source, local) = match (events, &p.events_path) {
            _ if topic.is_some() => {
                let t = topic
                    .as_ref()
                    .and_then(|t| t.topic.as_deref())
                    .unwrap_or("");
                (format!("topic {t}"), PathBuf::new())
            }
            (Some(e), _) => {
                let text = e.to_string_lossy().into_owned();
                let local = text.strip_prefix("file://").map(PathBuf::from);
                (text, local.unwrap_or_else(|| e.to_path_buf()))
            }
            (None, Some(e)) => {
                let local = match e.strip_prefix("file://") {
                    Some(abs) => PathBuf::from(abs),
                    None => base.join(e),
                };
                (e.clone(), local)
            }
            (None, None) => bail!("{file}: no `[events] path`; pass --events"),
        };
        Ok(Self {
            file,
            text,
            pipeline: p,
            base,
            events: local,
            events_source,
            downloaded: None,
            topic,
            history: None,
        })
    }

    /// Fetch history that lives in a store (s3://, gs://, az://) into a temporary file, once;
    /// a local file is left as it is. Call it after the configuration is checked.
    pub fn fetch(&mut self) -> anyhow::Result<()> {
        if let Some(t) = &self.topic
            && self.history.is_none()
        {
            let (dir, guard) = temp_dir()?;
            let history = t.read(&self.pipeline, &dir)?;
            let path = history.file.clone();
            if history.refused > 0 {
                eprintln!(
                    "{}: {} events the scorer would dead-letter left out (first: {})",
                    self.events_source,
                    history.refused,
                    history.first_refusal.as_deref().unwrap_or("-")
                );
            }
            self.events = path;
            self.downloaded = Some(guard);
            self.history = Some(history);
        }
        if shared_models::is_bucket_url(&self.events_source)
            && self.events_source.ends_with('/')
            && self.downloaded.is_none()
        {
            // A prefix: a directory of Parquet files (hive partitions in their paths).
            let (dir, guard) = temp_dir()?;
            block_on(shared_models::download_prefix(&self.events_source, &dir))?
                .with_context(|| format!("cannot read history from {}", self.events_source))?;
            self.events = dir;
            self.downloaded = Some(guard);
        }
        if shared_models::is_bucket_url(&self.events_source) && self.downloaded.is_none() {
            let (path, guard) = download(&self.events_source)?;
            self.events = path;
            self.downloaded = Some(guard);
        }
        Ok(())
    }

    /// The validation cut: `--valid-from` if given, else the pipeline's `[split] valid_from`.
    pub fn valid_from(&self, flag: Option<&str>) -> anyhow::Result<i64> {
        match flag {
            Some(v) => shared_features::time::parse_date_or_timestamp(v)
                .map_err(|m| anyhow::anyhow!("--valid-from: {m}")),
            None => self.pipeline.valid_from.with_context(|| {
                format!(
                    "{}: training needs [split] valid_from (or --valid-from)",
                    self.file
                )
            }),
        }
    }
}

/// Labelled events split by time, and the encoding fitted on the training part.
pub struct Dataset {
    /// The offline run (rows in event-time order).
    pub run: OfflineRun,
    /// `(row index, label)` of training events (before the cut), in event order.
    pub train: Vec<(usize, bool)>,
    /// `(row index, label)` of validation events (at or after the cut), in event order.
    pub valid: Vec<(usize, bool)>,
    /// Scaler and vocabularies fitted on `train`.
    pub fitted: FittedState,
    /// The event times found, and how many fall before the cut.
    pub times: TimeRange,
}

impl Dataset {
    /// Compute features and split. Events without a label (null) are left out of both splits.
    pub fn build(input: &Input, valid_from: i64) -> anyhow::Result<Self> {
        let p = &input.pipeline;
        let Some(label) = p.label.clone() else {
            bail!("{}: training needs a [label]", input.file)
        };
        let log = input.history.as_ref().map(|h| offline::Log {
            order: Vec::new(),
            partitions: h.positions.iter().map(|&(q, _)| q as u32).collect(),
        });
        let run = offline::run_with(p, &input.events, &input.base, log.as_ref())
            .with_context(|| format!("computing features from {}", input.events_source))?;
        // From a topic: the events before the range warmed the windows; train on the range.
        let in_range = |i: usize, row: &[shared_features::Value]| match &input.history {
            Some(h) => {
                let offset = h.positions[run.source[i] as usize].1;
                h.range
                    .contains(offset, row[p.event_time_col()].as_i64().unwrap_or(i64::MIN))
            }
            None => true,
        };
        let in_range_count = run
            .rows
            .iter()
            .enumerate()
            .filter(|(i, r)| in_range(*i, r))
            .count();
        if let Some(h) = &input.history
            && in_range_count == 0
        {
            bail!(
                "{}: no event in the range {} among the {} events read (offsets read: {})",
                input.events_source,
                h.range,
                run.rows.len(),
                h.partitions
                    .iter()
                    .map(|(q, l, e)| format!("partition {q} {l}..{e}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let times = run
            .check_time_range(p, Some(valid_from))
            .map_err(|m| anyhow::anyhow!("{}: {m}", input.events_source))?;
        let et = p.event_time_col();
        let (mut train, mut valid) = (Vec::new(), Vec::new());
        for (i, row) in run.rows.iter().enumerate() {
            let t = row[et].as_i64().unwrap_or(i64::MIN);
            if !in_range(i, row) {
                continue;
            }
            let Some(y) = eval::label(&label, row) else {
                continue;
            };
            let split = if t < valid_from {
                &mut train
            } else {
                &mut valid
            };
            split.push((i, y == 1.0));
        }
        if train.is_empty() || valid.is_empty() {
            bail!(
                "{}: empty split: {} training and {} validation events with a label around \
                 valid_from {} (event times from {} to {})",
                input.file,
                train.len(),
                valid.len(),
                shared_features::time::format_timestamp(valid_from),
                times.first.as_deref().unwrap_or("-"),
                times.last.as_deref().unwrap_or("-")
            );
        }
        let fitted = FittedState::fit(
            p,
            train.iter().map(|(i, _)| &run.rows[*i][..]),
            run.table_digests.clone(),
        );
        Ok(Self {
            run,
            train,
            valid,
            fitted,
            times,
        })
    }

    /// The encoded matrix and labels of a split: the oracle of
    /// [`crate::training::Training::matrix`].
    #[cfg(test)]
    pub fn matrix(
        &self,
        p: &Pipeline,
        split: &[(usize, bool)],
    ) -> (ndarray::Array2<f64>, ndarray::Array1<bool>) {
        let w = self.fitted.width();
        let mut x = ndarray::Array2::<f64>::zeros((split.len(), w));
        let mut buf = Vec::with_capacity(w);
        for (n, (i, _)) in split.iter().enumerate() {
            self.fitted.transform(p, &self.run.rows[*i], &mut buf);
            x.row_mut(n).iter_mut().zip(&buf).for_each(|(d, s)| *d = *s);
        }
        (x, split.iter().map(|(_, y)| *y).collect())
    }
}
