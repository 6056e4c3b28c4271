//! The offline engine over history larger than memory: a Parquet file read in slices of rows.
//!
//! Each slice goes through the same preparation as a whole table (polars: filters, event times,
//! lookup joins, sort, as-of joins) and its rows into a buffer ordered by `(event time,
//! partition key, record)`. A row is released to the shared stages once a record more than
//! `[events] lateness` newer has been read, so rows leave in exactly the order the whole-table
//! sort gives, provided no record is more than the lateness behind an earlier one in the file.
//! Such a record is refused with both positions ([`StreamError::Unordered`]): the caller reads
//! that file whole instead (`offline::run`), which sorts it in memory. Memory is bounded by a
//! slice, the rows within the lateness, and the window state: not by the history.

use std::path::Path;

use crate::engine::Stages;
use crate::error::{DataError, EventError};
use crate::spec::Pipeline;
use crate::time::{format_duration, format_timestamp};
use crate::value::{Key, Row, Value};

use super::read::{Part, parquet_parts};
use super::{Joins, prepare, read_history_part};

/// Where rows go: each with its record number; an error stops the run.
pub type Sink<'a> = dyn FnMut(&[Value], u32) -> Result<(), DataError> + 'a;

/// Records read per slice.
pub const SLICE_ROWS: usize = 100_000;

/// What a streamed run did.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Records in the file.
    pub records: usize,
    /// Rows given to the sink (events that passed filters and admission).
    pub events: usize,
    /// Events dropped by filters.
    pub filtered: usize,
    /// Events refused (no event time, from the future), by record number.
    pub rejected: Vec<(u32, EventError)>,
    /// `(table, sha256)` of every lookup and as-of table.
    pub table_digests: Vec<(String, String)>,
    /// The most rows held at once waiting for the lateness to pass.
    pub held_max: usize,
}

/// Why a streamed run stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The file or a table cannot be read, or the sink failed.
    Data(DataError),
    /// A record is further behind an earlier one than the lateness: the file is not in
    /// event-time order within it, and must be sorted whole.
    Unordered(DataError),
}

impl From<DataError> for StreamError {
    fn from(e: DataError) -> Self {
        StreamError::Data(e)
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Data(e) | StreamError::Unordered(e) => e.fmt(f),
        }
    }
}

/// Whether history at `path` can be streamed: a Parquet file, or a directory of them.
pub fn streams(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("parquet") || path.is_dir()
}

/// Run `p` over the Parquet history at `events` (a file, or a directory of files read in path
/// order as one history, hive partitions filling the fields their files lack) slice by slice,
/// giving `sink` every row (full layout, windows and derived features computed) with its record
/// number, in the order [`super::run`] gives them. `slice_rows` records are read at a time.
pub fn stream(
    p: &Pipeline,
    events: &Path,
    base: &Path,
    slice_rows: usize,
    sink: &mut Sink<'_>,
) -> Result<Streamed, StreamError> {
    use polars::prelude::SerReader;
    let parts = if events.is_dir() {
        parquet_parts(events)?
    } else {
        vec![Part {
            path: events.to_path_buf(),
            hive: Vec::new(),
        }]
    };
    // Each file's first record number, and the total.
    let mut starts = Vec::with_capacity(parts.len());
    let mut records = 0;
    for part in &parts {
        let file = part.path.display().to_string();
        let f =
            std::fs::File::open(&part.path).map_err(|e| DataError::file(&file, e.to_string()))?;
        starts.push(records);
        records += polars::prelude::ParquetReader::new(f)
            .num_rows()
            .map_err(|e| DataError::file(&file, e.to_string()))?;
    }
    // A record by its file and its number there, for messages.
    let locate = |rec: u32| -> String {
        let i = starts
            .partition_point(|&s| s <= rec as usize)
            .saturating_sub(1);
        if parts.len() == 1 {
            format!("record {rec}")
        } else {
            format!(
                "record {} of {}",
                rec as usize - starts[i],
                parts[i].path.display()
            )
        }
    };
    let file = events.display().to_string();
    let joins = Joins::load(p, base)?;
    let mut out = Streamed {
        records,
        table_digests: joins.digests.clone(),
        ..Streamed::default()
    };
    // Sorted by `(event time, partition key, record)`.
    let mut held: Vec<Held> = Vec::new();
    let mut stages = Stages::new(p);
    // The newest event time read so far, and its record.
    let mut newest: Option<(i64, u32)> = None;
    let mut unordered: Option<DataError> = None;
    // `(file, first record there, count)` of each slice.
    let slices = parts.iter().enumerate().flat_map(|(i, part)| {
        let count = starts.get(i + 1).copied().unwrap_or(records) - starts[i];
        (0..count)
            .step_by(slice_rows.max(1))
            .map(move |first| (i, part, first, slice_rows.max(1).min(count - first)))
    });
    for (i, part, first, n) in slices {
        let df = read_history_part(p, part, (first, n), starts[i] + first)?;
        let batch = prepare(p, df, &joins, &part.path, &mut |rec, t| {
            match newest {
                Some((mark, at)) if t < mark.saturating_sub(p.lateness_ms) => {
                    unordered.get_or_insert_with(|| {
                        DataError::file(
                            &file,
                            format!(
                                "{} (event time {}) is more than {} ([events] lateness) \
                                 behind {} ({}): read in slices, history must be in \
                                 event-time order within the lateness",
                                locate(rec),
                                format_timestamp(t),
                                format_duration(p.lateness_ms),
                                locate(at),
                                format_timestamp(mark)
                            ),
                        )
                    });
                }
                Some((mark, _)) if t <= mark => {}
                _ => newest = Some((t, rec)),
            }
            Ok(())
        })?;
        if let Some(e) = unordered.take() {
            return Err(StreamError::Unordered(e));
        }
        out.filtered += n - batch.kept;
        out.rejected.extend(batch.rejected);
        let et = p.event_time_col();
        held.extend(
            batch
                .rows
                .into_iter()
                .zip(batch.source)
                .map(|(row, rec)| Held {
                    t: row[et].as_i64().unwrap_or(i64::MIN),
                    key: Key::of(&row[p.key]),
                    rec,
                    row,
                }),
        );
        // The held rows and the slice (sorted the same way by `prepare`) are two sorted runs,
        // which the stable sort merges in one linear pass.
        held.sort_by(|a, b| (a.t, &a.key, a.rec).cmp(&(b.t, &b.key, b.rec)));
        out.held_max = out.held_max.max(held.len());
        let mark = newest.map_or(i64::MIN, |(t, _)| t.saturating_sub(p.lateness_ms));
        release(p, &mut stages, &mut held, Some(mark), &mut out, sink)?;
    }
    release(p, &mut stages, &mut held, None, &mut out, sink)?;
    Ok(out)
}

/// A row waiting for the lateness to pass, with what orders it.
struct Held {
    t: i64,
    key: Option<Key>,
    rec: u32,
    row: Row,
}

/// Run the held rows before `mark` (all of them without one) through the stages, in order.
fn release(
    p: &Pipeline,
    stages: &mut Stages,
    held: &mut Vec<Held>,
    mark: Option<i64>,
    out: &mut Streamed,
    sink: &mut Sink<'_>,
) -> Result<(), DataError> {
    let due = mark.map_or(held.len(), |m| held.partition_point(|h| h.t < m));
    for Held { rec, mut row, .. } in held.drain(..due) {
        match stages.process(p, &mut row) {
            Ok(()) => {
                out.events += 1;
                sink(&row, rec)?;
            }
            Err(e) => out.rejected.push((rec, e)),
        }
    }
    Ok(())
}
