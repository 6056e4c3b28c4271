//! Reading history and tables: CSV (polars, with the csv crate to place errors), Parquet (cast
//! to the declared types, whole or a slice of rows) and JSON lines (the online decoder), each
//! with the declared columns typed as the pipeline says.

use std::path::Path;
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

/// The declared columns of a Parquet file, cast to their declared types (integers of any
/// width to i64, floats to f64; strings must be text; timestamps are RFC 3339 text or a Parquet
/// timestamp of any unit, read as UTC when it has no zone). A missing column or one that cannot
/// be cast is an error naming the file and the column.
fn read_parquet(
    path: &Path,
    columns: &[(String, FieldType)],
    slice: Option<(usize, usize)>,
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

/// Read the declared columns of a CSV, Parquet or JSON-lines file (by extension) with their
/// types; timestamps become epoch ms. On a CSV parse failure, find the offending line and column
/// with the strict reader. `slice` (first record, count) reads part of a Parquet file; the row
/// index (`__row`) then starts at its first record.
pub(super) fn read_table(
    path: &Path,
    columns: &[(String, FieldType)],
    row_index: bool,
    from_strings: &[&str],
    slice: Option<(usize, usize)>,
) -> Result<DataFrame, DataError> {
    let file = path.display().to_string();
    if !path.exists() {
        return Err(DataError::file(&file, missing_file(path)));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut df = if ext == "parquet" {
        read_parquet(path, columns, slice)?
    } else if matches!(ext, "jsonl" | "ndjson" | "json") {
        read_json_lines(path, columns, from_strings)?
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
    if row_index {
        let first = slice.map(|(first, _)| first as IdxSize);
        df = df
            .with_row_index(ROW.into(), first)
            .map_err(|e| polars_err(path, e))?;
    }
    Ok(df)
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
    let mut ints: Vec<Vec<Option<i64>>> = vec![Vec::new(); columns.len()];
    let mut floats: Vec<Vec<Option<f64>>> = vec![Vec::new(); columns.len()];
    let mut strs: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
    let mut line = Vec::new();
    let mut reader = std::io::BufReader::new(f);
    let (mut number, mut height) = (0, 0);
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
        height += 1;
        for (i, ((_, ty), v)) in columns.iter().zip(&row).enumerate() {
            match ty {
                FieldType::Int | FieldType::Timestamp => ints[i].push(v.as_i64()),
                FieldType::Float => floats[i].push(v.as_f64()),
                FieldType::Str => strs[i].push(v.as_str().map(str::to_string)),
            }
        }
    }
    let mut out = Vec::with_capacity(columns.len());
    for (i, (name, ty)) in columns.iter().enumerate() {
        let name = name.as_str().into();
        out.push(match ty {
            FieldType::Int | FieldType::Timestamp => {
                Column::new(name, std::mem::take(&mut ints[i]))
            }
            FieldType::Float => Column::new(name, std::mem::take(&mut floats[i])),
            FieldType::Str => Column::new(name, std::mem::take(&mut strs[i])),
        });
    }
    DataFrame::new(height, out).map_err(|e| polars_err(path, e))
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
