//! `trainer export-features --raw`: the `[features]` columns as the pipeline computes them,
//! row by row, to CSV or Parquet. Rows come from a whole-table run or, for Parquet history,
//! from the streamed engine (`offline::stream`), so a history larger than memory can be
//! exported with memory bounded by the window state.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use polars::prelude::{Column, DataFrame, ParquetWriter};
use shared_features::time::{TimestampText, format_timestamp};
use shared_features::{Pipeline, Value, eval};

/// Rows buffered per Parquet row group.
const GROUP_ROWS: usize = 100_000;

/// Writes raw feature rows: `key` (with `--with-key`), `event_time`, `split`, `label`, then the
/// numeric features (f64; ints too) and the categorical ones (text), nulls empty.
pub struct RawWriter<'a> {
    p: &'a Pipeline,
    valid_from: i64,
    with_key: bool,
    cols: Vec<usize>,
    out: Out,
    /// Rows written.
    pub rows: usize,
    /// Of those, before the validation cut.
    pub train: usize,
}

enum Out {
    Csv(std::io::BufWriter<std::fs::File>, String),
    Parquet(Box<Groups>),
}

/// A Parquet file written a row group at a time: the writer is made from the first group's
/// schema. Both exports write through it.
pub struct RowGroups {
    file: Option<std::fs::File>,
    writer: Option<Box<polars::io::parquet::write::BatchedWriter<std::fs::File>>>,
}

impl RowGroups {
    /// A writer to `file`, which stays empty until the first group.
    pub fn new(file: std::fs::File) -> Self {
        Self {
            file: Some(file),
            writer: None,
        }
    }

    /// Whether a group (and so the schema) has been given.
    pub fn started(&self) -> bool {
        self.writer.is_some()
    }

    /// Write `df` as a row group; an empty one only sets the schema.
    pub fn write(&mut self, df: &DataFrame) -> polars::prelude::PolarsResult<()> {
        if let Some(file) = self.file.take() {
            self.writer = Some(Box::new(ParquetWriter::new(file).batched(df.schema())?));
        }
        if let (Some(w), true) = (&mut self.writer, df.height() > 0) {
            w.write_batch(df)?;
        }
        Ok(())
    }

    /// Close the file (nothing is written if no group was given).
    pub fn finish(&mut self) -> polars::prelude::PolarsResult<()> {
        if let Some(w) = &self.writer {
            w.finish()?;
        }
        Ok(())
    }
}

/// Parquet output: a row group's columns, buffered. The writer is made from the first group's
/// schema (or, when no row comes, from the empty columns' at the end).
struct Groups {
    out: RowGroups,
    keys: Option<Vec<String>>,
    /// The event times' text, one after the other, and where each ends.
    times: String,
    time_ends: Vec<usize>,
    time_text: TimestampText,
    splits: Vec<&'static str>,
    labels: Vec<bool>,
    numeric: Vec<Vec<Option<f64>>>,
    text: Vec<Vec<Option<String>>>,
}

impl Groups {
    fn push(
        &mut self,
        p: &Pipeline,
        row: &[Value],
        key: Option<String>,
        t: i64,
        split: &'static str,
        label: bool,
    ) {
        if let (Some(keys), Some(k)) = (&mut self.keys, key) {
            keys.push(k);
        }
        self.time_text.push(t, &mut self.times);
        self.time_ends.push(self.times.len());
        self.splits.push(split);
        self.labels.push(label);
        for (col, &c) in self.numeric.iter_mut().zip(&p.features.numeric) {
            col.push(row[c].as_f64());
        }
        for (col, &c) in self.text.iter_mut().zip(&p.features.categorical) {
            col.push(match &row[c] {
                Value::Null => None,
                Value::Str(s) => Some(s.to_string()),
                v => Some(v.to_string()),
            });
        }
    }

    /// The buffered rows as a frame, leaving the buffers empty.
    fn take_frame(&mut self, p: &Pipeline) -> polars::prelude::PolarsResult<DataFrame> {
        let n = self.time_ends.len();
        let mut columns = Vec::new();
        if let Some(keys) = &mut self.keys {
            columns.push(Column::new("key".into(), std::mem::take(keys)));
        }
        let times: Vec<&str> = std::iter::once(0)
            .chain(self.time_ends.iter().copied())
            .zip(&self.time_ends)
            .map(|(a, &b)| &self.times[a..b])
            .collect();
        columns.push(Column::new("event_time".into(), times));
        self.times.clear();
        self.time_ends.clear();
        columns.push(Column::new(
            "split".into(),
            std::mem::take(&mut self.splits),
        ));
        columns.push(Column::new(
            "label".into(),
            std::mem::take(&mut self.labels),
        ));
        for (col, &c) in self.numeric.iter_mut().zip(&p.features.numeric) {
            columns.push(Column::new(
                p.layout[c].name.as_str().into(),
                std::mem::take(col),
            ));
        }
        for (col, &c) in self.text.iter_mut().zip(&p.features.categorical) {
            columns.push(Column::new(
                p.layout[c].name.as_str().into(),
                std::mem::take(col),
            ));
        }
        DataFrame::new(n, columns)
    }

    /// Write the buffered rows as a row group (`last`: and close the file).
    fn flush(&mut self, p: &Pipeline, last: bool) -> anyhow::Result<()> {
        if !self.time_ends.is_empty() || (last && !self.out.started()) {
            let df = self.take_frame(p)?;
            self.out.write(&df)?;
        }
        if last {
            self.out.finish()?;
        }
        Ok(())
    }
}

impl<'a> RawWriter<'a> {
    /// A writer to `path`, CSV or Parquet by its extension.
    pub fn create(
        p: &'a Pipeline,
        path: &Path,
        parquet: bool,
        valid_from: i64,
        with_key: bool,
    ) -> anyhow::Result<Self> {
        let cols: Vec<usize> = p
            .features
            .numeric
            .iter()
            .chain(&p.features.categorical)
            .copied()
            .collect();
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let out = if parquet {
            Out::Parquet(Box::new(Groups {
                out: RowGroups::new(file),
                keys: with_key.then(Vec::new),
                times: String::new(),
                time_ends: Vec::new(),
                time_text: TimestampText::default(),
                splits: Vec::new(),
                labels: Vec::new(),
                numeric: vec![Vec::new(); p.features.numeric.len()],
                text: vec![Vec::new(); p.features.categorical.len()],
            }))
        } else {
            let mut names: Vec<String> = Vec::new();
            if with_key {
                names.push("key".into());
            }
            names.extend(["event_time", "split", "label"].map(String::from));
            names.extend(cols.iter().map(|&c| p.layout[c].name.clone()));
            let mut w = std::io::BufWriter::new(file);
            writeln!(w, "{}", names.join(","))?;
            Out::Csv(w, String::new())
        };
        Ok(Self {
            p,
            valid_from,
            with_key,
            cols,
            out,
            rows: 0,
            train: 0,
        })
    }

    /// Write a row with a label (rows without one are skipped, as training skips them).
    pub fn row(&mut self, row: &[Value]) -> anyhow::Result<()> {
        let p = self.p;
        let Some(label) = p.label.as_ref().and_then(|l| eval::label(l, row)) else {
            return Ok(());
        };
        let t = row[p.event_time_col()].as_i64().unwrap_or(i64::MIN);
        let split = if t < self.valid_from {
            "train"
        } else {
            "valid"
        };
        self.rows += 1;
        self.train += usize::from(t < self.valid_from);
        let key = self
            .with_key
            .then(|| row[p.key].key_text().unwrap_or_default());
        match &mut self.out {
            Out::Csv(w, line) => {
                line.clear();
                if let Some(k) = &key {
                    push_cell(line, k);
                    line.push(',');
                }
                line.push_str(&format!("{},{split},{}", format_timestamp(t), label as u8));
                for &c in &self.cols {
                    line.push(',');
                    match &row[c] {
                        Value::Null => {}
                        Value::Str(s) => push_cell(line, s),
                        // Ints as written; floats in the shortest text that reads back the same.
                        v => line.push_str(&v.to_string()),
                    }
                }
                line.push('\n');
                w.write_all(line.as_bytes())?;
            }
            Out::Parquet(groups) => {
                groups.push(p, row, key, t, split, label == 1.0);
                if groups.time_ends.len() >= GROUP_ROWS {
                    groups.flush(p, false)?;
                }
            }
        }
        Ok(())
    }

    /// Write what is buffered and close the file.
    pub fn finish(mut self) -> anyhow::Result<()> {
        match &mut self.out {
            Out::Csv(w, _) => w.flush()?,
            Out::Parquet(groups) => groups.flush(self.p, true)?,
        }
        Ok(())
    }
}

/// Text as one CSV cell, quoted when it holds a separator, a quote or a line break.
pub fn push_cell(line: &mut String, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        line.push('"');
        line.push_str(&text.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(text);
    }
}
