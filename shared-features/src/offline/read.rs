//! Reading history and tables: CSV (polars, with the csv crate to place errors), Parquet (cast
//! to the declared types, whole or a slice of rows) and JSON lines (the online decoder), each
//! with the declared columns typed as the pipeline says.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use super::{ROW, polars_err};
use crate::error::DataError;
use crate::tables::check_csv;
use crate::time;
use crate::value::FieldType;

/// "no such file", with the way to get it only where that is true: the nycflights13 tables
/// that `ci/fetch-data` downloads to `data/flights/raw`.
pub(crate) fn missing_file(path: &Path) -> String {
    const FETCHED: [&str; 5] = [
        "flights.csv",
        "planes.csv",
        "airlines.csv",
        "airports.csv",
        "weather.csv",
    ];
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let fetched = path
        .parent()
        .is_some_and(|d| d.ends_with("data/flights/raw"))
        && FETCHED.contains(&name);
    if fetched {
        "no such file (the nycflights13 tables are downloaded by ci/fetch-data)".into()
    } else {
        "no such file".into()
    }
}

/// One Parquet file of a history directory.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// The file.
    pub path: PathBuf,
    /// The `name=value` directories between the history directory and the file (hive
    /// partitions), values percent-decoded; `None` for Hive's null partition.
    pub hive: Vec<(String, Option<String>)>,
}

/// Hive's name for the partition of null values.
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Every Parquet file under `dir`, recursively, in path order (the order their records are
/// numbered in), with the hive partition values of its path. Names starting with `.` or `_`
/// (`_SUCCESS`, `.part-0.crc`: what Spark and Hive write beside data) are skipped.
pub(crate) fn parquet_parts(dir: &Path) -> Result<Vec<Part>, DataError> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), DataError> {
        let file = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::file(&file, e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::file(&file, e.to_string()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found)?;
            } else if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
                found.push(path);
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, &mut found)?;
    // Path order, numbers compared as numbers (`day=2` before `day=10`), so that partitions by
    // date or hour come in time order.
    found.sort_by(|a, b| {
        let key = |p: &PathBuf| -> Vec<(Option<i64>, String)> {
            p.components()
                .map(|c| {
                    let c = c.as_os_str().to_string_lossy().into_owned();
                    let n = c.split_once('=').and_then(|(_, v)| v.parse().ok());
                    (n, c)
                })
                .collect()
        };
        let (ka, kb) = (key(a), key(b));
        for ((na, ca), (nb, cb)) in ka.iter().zip(&kb) {
            let by_number = match (na, nb) {
                (Some(x), Some(y)) if ca.split('=').next() == cb.split('=').next() => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            };
            let order = by_number.then_with(|| ca.cmp(cb));
            if order.is_ne() {
                return order;
            }
        }
        ka.len().cmp(&kb.len())
    });
    if found.is_empty() {
        return Err(DataError::file(
            &dir.display().to_string(),
            "a history directory with no .parquet file in it",
        ));
    }
    found
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let mut hive = Vec::new();
            for segment in relative.parent().into_iter().flat_map(Path::components) {
                let segment = segment.as_os_str().to_string_lossy();
                let Some((name, value)) = segment.split_once('=') else {
                    continue;
                };
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|e| {
                        DataError::file(
                            &path.display().to_string(),
                            format!("partition `{segment}`: {e}"),
                        )
                    })?;
                hive.push((
                    name.to_string(),
                    (value != HIVE_NULL).then(|| value.into_owned()),
                ));
            }
            Ok(Part { path, hive })
        })
        .collect()
}

/// A column of `height` copies of a hive partition's value, typed as declared. A value that
/// is not of the declared type is an error naming the file and the field.
fn hive_column(
    path: &Path,
    name: &str,
    ty: FieldType,
    value: Option<&str>,
    height: usize,
) -> Result<Column, DataError> {
    let file = path.display().to_string();
    let bad = |what: &str| {
        DataError::column(
            &file,
            name,
            format!(
                "partition value `{}` (from the path) is not {what}",
                value.unwrap_or_default()
            ),
        )
    };
    let col = name.into();
    Ok(match ty {
        FieldType::Int => {
            let v = value
                .map(|v| v.parse::<i64>().map_err(|_| bad("an integer")))
                .transpose()?;
            Column::new(col, vec![v; height])
        }
        FieldType::Float => {
            let v = value
                .map(|v| v.parse::<f64>().map_err(|_| bad("a number")))
                .transpose()?;
            Column::new(col, vec![v; height])
        }
        FieldType::Str | FieldType::Timestamp => Column::new(col, vec![value; height]),
    })
}

/// The declared columns of a Parquet file, cast to their declared types (integers of any
/// width to i64, floats to f64; strings must be text; timestamps are RFC 3339 text or a Parquet
/// timestamp of any unit, read as UTC when it has no zone). A missing column or one that cannot
/// be cast is an error naming the file and the column.
fn read_parquet(
    path: &Path,
    columns: &[(String, FieldType)],
    slice: Option<(usize, usize)>,
    hive: &[(String, Option<String>)],
) -> Result<DataFrame, DataError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| DataError::file(&file, e.to_string()))?;
    let mut reader = ParquetReader::new(f);
    let schema = reader.schema().map_err(|e| polars_err(path, e))?;
    // Only the declared columns are read; one the file lacks is named below.
    let present: Vec<String> = columns
        .iter()
        .filter(|(n, _)| schema.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    let df = reader
        .with_columns(Some(present))
        .with_slice(slice)
        .finish()
        .map_err(|e| polars_err(path, e))?;
    let mut out = Vec::with_capacity(columns.len() + 1);
    for (name, ty) in columns {
        // A field the file lacks may be a partition of its directory.
        if !schema.contains(name.as_str())
            && let Some((_, value)) = hive.iter().find(|(n, _)| n == name)
        {
            out.push(hive_column(path, name, *ty, value.as_deref(), df.height())?);
            continue;
        }
        let c = df.column(name).map_err(|_| {
            DataError::column(&file, name, "declared field is not a column of the file")
        })?;
        // A Parquet timestamp (any unit, with or without a zone) becomes epoch milliseconds
        // here; a text column of RFC 3339 instants is parsed with the CSV's rules below.
        if *ty == FieldType::Timestamp
            && let DataType::Datetime(unit, _) = c.dtype()
        {
            let per_ms = match unit {
                TimeUnit::Nanoseconds => 1_000_000,
                TimeUnit::Microseconds => 1_000,
                TimeUnit::Milliseconds => 1,
            };
            let raw = c
                .cast(&DataType::Int64)
                .map_err(|e| DataError::column(&file, name, e.to_string()))?;
            let ms: Int64Chunked = raw
                .i64()
                .map_err(|e| DataError::column(&file, name, e.to_string()))?
                .iter()
                .map(|v| v.map(|v| v.div_euclid(per_ms)))
                .collect();
            out.push(ms.with_name(name.as_str().into()).into_column());
            continue;
        }
        let want = match ty {
            FieldType::Int => DataType::Int64,
            FieldType::Float => DataType::Float64,
            FieldType::Str | FieldType::Timestamp => DataType::String,
        };
        let ok = match ty {
            FieldType::Int => c.dtype().is_integer(),
            FieldType::Float => c.dtype().is_primitive_numeric(),
            FieldType::Str | FieldType::Timestamp => c.dtype() == &DataType::String,
        };
        if !ok {
            return Err(DataError::column(
                &file,
                name,
                format!(
                    "column of type {} cannot be read as {}",
                    c.dtype(),
                    ty.name()
                ),
            ));
        }
        let cast = c
            .strict_cast(&want)
            .map_err(|e| DataError::column(&file, name, e.to_string()))?;
        out.push(cast);
    }
    let height = df.height();
    DataFrame::new(height, out).map_err(|e| polars_err(path, e))
}

/// Read the declared columns of a CSV, Parquet or JSON-lines file (by extension), or of every
/// Parquet file of a directory ([`parquet_parts`]), with their types; timestamps become epoch
/// ms. On a CSV parse failure, find the offending line and column with the strict reader.
/// `slice` (first record, count) reads part of a Parquet file; the row index (`__row`) then
/// starts at its first record.
pub(super) fn read_table(
    path: &Path,
    columns: &[(String, FieldType)],
    row_index: bool,
    from_strings: &[&str],
    slice: Option<(usize, usize)>,
) -> Result<DataFrame, DataError> {
    if path.is_dir() {
        let mut whole: Option<DataFrame> = None;
        for part in parquet_parts(path)? {
            let df = read_part(&part, columns, from_strings, None, None)?;
            match &mut whole {
                None => whole = Some(df),
                Some(w) => {
                    w.vstack_mut(&df).map_err(|e| polars_err(&part.path, e))?;
                }
            }
        }
        let mut df = whole.unwrap_or_default();
        df.rechunk_mut();
        if row_index {
            df = df
                .with_row_index(ROW.into(), None)
                .map_err(|e| polars_err(path, e))?;
        }
        return Ok(df);
    }
    let part = Part {
        path: path.to_path_buf(),
        hive: Vec::new(),
    };
    let first = row_index.then(|| slice.map_or(0, |(first, _)| first));
    read_part(&part, columns, from_strings, slice, first)
}

/// [`read_table`] of one file (a Parquet one with its hive partition values); `row_index`: the
/// number of its first row read, when `__row` is wanted.
pub(super) fn read_part(
    part: &Part,
    columns: &[(String, FieldType)],
    from_strings: &[&str],
    slice: Option<(usize, usize)>,
    row_index: Option<usize>,
) -> Result<DataFrame, DataError> {
    let path = part.path.as_path();
    let file = path.display().to_string();
    if !path.exists() {
        return Err(DataError::file(&file, missing_file(path)));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut df = if ext == "parquet" {
        read_parquet(path, columns, slice, &part.hive)?
    } else if matches!(ext, "jsonl" | "ndjson" | "json") {
        read_json_lines(path, columns, from_strings)?
    } else if ext == "avro" {
        read_avro(path, columns, from_strings)?
    } else {
        read_csv_file(path, columns)?
    };
    for (name, ty) in columns {
        if *ty == FieldType::Float {
            // NaN is null everywhere, so that no feature is ever NaN.
            let c = df
                .column(name)
                .map_err(|e| polars_err(path, e))?
                .f64()
                .map_err(|e| polars_err(path, e))?
                .clone();
            let c: Float64Chunked = c.iter().map(|x| x.filter(|v| !v.is_nan())).collect();
            df.with_column(c.with_name(name.as_str().into()).into_column())
                .map_err(|e| polars_err(path, e))?;
        }
        let text = df
            .column(name)
            .is_ok_and(|c| c.dtype() == &DataType::String);
        if *ty == FieldType::Timestamp && text {
            let c = df
                .column(name)
                .map_err(|e| polars_err(path, e))?
                .str()
                .map_err(|e| polars_err(path, e))?
                .clone();
            let mut parsed: Vec<Option<i64>> = Vec::with_capacity(c.len());
            for (i, v) in c.iter().enumerate() {
                parsed.push(match v {
                    None => None,
                    Some(s) => Some(
                        time::parse_timestamp(s)
                            .map_err(|m| DataError::at(&file, i + 2, name, m))?,
                    ),
                });
            }
            df.with_column(Column::new(name.as_str().into(), parsed))
                .map_err(|e| polars_err(path, e))?;
        }
    }
    if let Some(first) = row_index {
        df = df
            .with_row_index(ROW.into(), Some(first as IdxSize))
            .map_err(|e| polars_err(path, e))?;
    }
    Ok(df)
}

/// Read an Avro object container file with the decoder a topic's records go through
/// ([`crate::wire`]), so that a history file and a topic of the same records give the same
/// values: a plain Avro data file, or a records file of a topic's Avro or Protobuf records
/// ([`crate::wire::write_records_file`]). A record that does not fit the declared fields is an
/// error naming its number and field.
fn read_avro(
    path: &Path,
    columns: &[(String, FieldType)],
    from_strings: &[&str],
) -> Result<DataFrame, DataError> {
    use crate::value::Value;
    use crate::wire::{FILE_SCHEMA_ID, Format, Known};
    let file = path.display().to_string();
    let (format, records) =
        crate::wire::container_records(path).map_err(|m| DataError::file(&file, m))?;
    if let Format::Avro(schemas) = &format
        && let Some(Known::Avro(schema)) = schemas.get(FILE_SCHEMA_ID)
    {
        crate::wire::resolve_fields(&schema, columns).map_err(|why| {
            DataError::file(
                &file,
                format!("its schema does not fit the pipeline: {why}"),
            )
        })?;
    }
    let mut decoder = crate::EventDecoder::for_fields(columns, from_strings, &format);
    let mut row = vec![Value::Null; columns.len()];
    let mut cols = Columns::new(columns.len());
    for (i, record) in records.iter().enumerate() {
        decoder.decode(record, &mut row).map_err(|e| {
            let field = crate::decode::Decoder::field_of(&e).unwrap_or("");
            DataError::at(&file, i + 1, field, format!("record {}: {e}", i + 1))
        })?;
        cols.push(columns, &row);
    }
    cols.frame(path, columns)
}

/// Typed columns built row by row.
struct Columns {
    height: usize,
    ints: Vec<Vec<Option<i64>>>,
    floats: Vec<Vec<Option<f64>>>,
    strs: Vec<Vec<Option<String>>>,
}

impl Columns {
    fn new(n: usize) -> Self {
        Self {
            height: 0,
            ints: vec![Vec::new(); n],
            floats: vec![Vec::new(); n],
            strs: vec![Vec::new(); n],
        }
    }

    fn push(&mut self, columns: &[(String, FieldType)], row: &[crate::value::Value]) {
        self.height += 1;
        for (i, ((_, ty), v)) in columns.iter().zip(row).enumerate() {
            match ty {
                FieldType::Int | FieldType::Timestamp => self.ints[i].push(v.as_i64()),
                FieldType::Float => self.floats[i].push(v.as_f64()),
                FieldType::Str => self.strs[i].push(v.as_str().map(str::to_string)),
            }
        }
    }

    fn frame(
        mut self,
        path: &Path,
        columns: &[(String, FieldType)],
    ) -> Result<DataFrame, DataError> {
        let mut out = Vec::with_capacity(columns.len());
        for (i, (name, ty)) in columns.iter().enumerate() {
            let name = name.as_str().into();
            out.push(match ty {
                FieldType::Int | FieldType::Timestamp => {
                    Column::new(name, std::mem::take(&mut self.ints[i]))
                }
                FieldType::Float => Column::new(name, std::mem::take(&mut self.floats[i])),
                FieldType::Str => Column::new(name, std::mem::take(&mut self.strs[i])),
            });
        }
        DataFrame::new(self.height, out).map_err(|e| polars_err(path, e))
    }
}

/// Read JSON lines (one event object per line, as on a topic) with the online decoder, so a
/// history file and a topic of the same events give the same values. Blank lines are skipped; a
/// bad line is an error naming its line and field.
fn read_json_lines(
    path: &Path,
    columns: &[(String, FieldType)],
    from_strings: &[&str],
) -> Result<DataFrame, DataError> {
    use crate::decode::Decoder;
    use crate::value::Value;
    use std::io::BufRead;

    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| DataError::file(&file, e.to_string()))?;
    let mut decoder = Decoder::for_fields(columns.iter().cloned())
        .with_numbers_from_strings(from_strings.iter().copied());
    let mut row = vec![Value::Null; columns.len()];
    let mut cols = Columns::new(columns.len());
    let mut line = Vec::new();
    let mut reader = std::io::BufReader::new(f);
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::file(&file, e.to_string()))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        row.iter_mut().for_each(|v| *v = Value::Null);
        decoder
            .decode(&line, &mut row)
            .map_err(|e| json_line_error(&file, number, &e))?;
        cols.push(columns, &row);
    }
    cols.frame(path, columns)
}

/// An event of a JSON-lines file that cannot be decoded, at the file's line: a syntax error
/// at its character position there (the decoder sees one line, so its own "line 1" is dropped),
/// anything else at the field it names.
fn json_line_error(file: &str, line: usize, e: &crate::EventError) -> DataError {
    match e {
        crate::EventError::Malformed {
            column, message, ..
        } => DataError {
            col: Some(*column),
            ..DataError::at(file, line, "", format!("malformed JSON: {message}"))
        },
        e => DataError::at(
            file,
            line,
            crate::decode::Decoder::field_of(e).unwrap_or(""),
            e.to_string(),
        ),
    }
}

fn read_csv_file(path: &Path, columns: &[(String, FieldType)]) -> Result<DataFrame, DataError> {
    let file = path.display().to_string();
    let schema: Schema = columns
        .iter()
        .map(|(n, ty)| {
            let dt = match ty {
                FieldType::Int => DataType::Int64,
                FieldType::Float => DataType::Float64,
                FieldType::Str | FieldType::Timestamp => DataType::String,
            };
            Field::new(n.as_str().into(), dt)
        })
        .collect();
    let names: Arc<[PlSmallStr]> = columns
        .iter()
        .map(|(n, _)| PlSmallStr::from(n.as_str()))
        .collect();
    let options = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_schema_overwrite(Some(Arc::new(schema)))
        .with_columns(Some(names))
        .map_parse_options(|o| {
            o.with_null_values(Some(NullValues::AllColumns(vec!["NA".into(), "".into()])))
        });
    check_field_counts(path, &file)?;
    let read = options
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish());
    match read {
        Ok(df) => Ok(df),
        Err(e) => {
            // polars says what failed; the strict reader says where.
            let bytes = std::fs::read(path).map_err(|io| DataError::file(&file, io.to_string()))?;
            check_csv(&bytes, &file, columns)?;
            Err(DataError::file(&file, e.to_string()))
        }
    }
}

/// Every record of a CSV file has as many fields as its header. polars fills a short row with
/// nulls, where the online path (`scorer feed`, the parity check) and the table loader refuse
/// it: refuse it here too, at its line, or the two engines would see different events. One
/// streaming pass of the csv crate over raw bytes (no UTF-8 or type checks), before polars reads.
fn check_field_counts(path: &Path, file: &str) -> Result<(), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| DataError::csv(file, &e))?;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(DataError::csv(file, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_hint_is_given_only_for_the_tables_fetch_data_downloads() {
        let fetched = missing_file(Path::new("/repo/data/flights/raw/planes.csv"));
        assert!(fetched.contains("ci/fetch-data"), "{fetched}");
        for other in [
            "/repo/data/flights/raw/mine.csv",
            "/repo/data/flights/fixtures/raw/planes.csv",
            "/home/me/events/flights.csv",
        ] {
            assert_eq!(missing_file(Path::new(other)), "no such file", "{other}");
        }
    }
}
