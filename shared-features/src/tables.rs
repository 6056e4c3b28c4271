//! Lookup and as-of tables for the online engine, built from CSV bytes without polars.
//!
//! The caller reads the files (this crate does no I/O) and hands over bytes; the offline engine
//! reads the same files with polars. Both read `NA` and the empty string as null.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::spec::Pipeline;
use crate::time::parse_timestamp;
use crate::value::{FieldType, Key, Map, Value};

/// Text read as null in CSV files.
pub const NULL_TOKENS: [&str; 2] = ["NA", ""];

/// A lookup table: unique key to the declared columns.
#[derive(Debug, Default)]
pub struct LookupTable {
    rows: Map<Key, Box<[Value]>>,
}

impl LookupTable {
    /// The row for a key.
    pub fn get(&self, key: &Key) -> Option<&[Value]> {
        self.rows.get(key).map(|r| &r[..])
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Rows of one as-of key: times ascending, and the row at each time.
type TimedRows = (Vec<i64>, Vec<Box<[Value]>>);
type TimedRow = (i64, Box<[Value]>);

/// An as-of table: for each key, rows sorted by time (ties keep file order).
#[derive(Debug, Default)]
pub struct AsofTable {
    by_key: Map<Key, TimedRows>,
}

impl AsofTable {
    /// The latest row for `key` at or before `t`, no older than `tolerance_ms`.
    pub fn get(&self, key: &Key, t: i64, tolerance_ms: Option<i64>) -> Option<&[Value]> {
        let (times, rows) = self.by_key.get(key)?;
        let i = times.partition_point(|&x| x <= t).checked_sub(1)?;
        // `times[i] <= t`, but both are arbitrary instants: the difference may not fit.
        if tolerance_ms.is_some_and(|tol| t.saturating_sub(times[i]) > tol) {
            return None;
        }
        Some(&rows[i])
    }
}

/// Every table of a pipeline, loaded, with the sha256 of each file.
#[derive(Debug, Default)]
pub struct Tables {
    /// One per `[[lookup]]`, in order.
    pub lookups: Vec<LookupTable>,
    /// One per `[[asof]]`, in order.
    pub asofs: Vec<AsofTable>,
    /// `(table name, sha256 hex of its file)`, lookups then as-ofs.
    pub digests: Vec<(String, String)>,
}

impl Tables {
    /// Load every table of `p`; `read` turns a table's `path` into its bytes.
    pub fn load(
        p: &Pipeline,
        mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Self, DataError> {
        let mut out = Tables::default();
        for l in &p.lookups {
            let bytes = read(&l.path).map_err(|m| DataError::file(&l.path, m))?;
            let mut rows = Map::default();
            let mut lines: Map<Key, usize> = Map::default();
            for (line, key, vals) in
                parse_csv(&bytes, &l.path, Some((&l.key, l.key_ty)), &l.columns)?
            {
                let Some(key) = key else { continue };
                if let Some(was) = lines.insert(key.clone(), line) {
                    return Err(duplicate_key(&l.path, line, &l.key, &key, was));
                }
                rows.insert(key, vals);
            }
            out.digests.push((l.name.clone(), sha256_hex(&bytes)));
            out.lookups.push(LookupTable { rows });
        }
        for a in &p.asofs {
            let bytes = read(&a.path).map_err(|m| DataError::file(&a.path, m))?;
            let t_idx = a
                .columns
                .iter()
                .position(|(n, _)| *n == a.time)
                .unwrap_or(0);
            let mut grouped: Map<Key, Vec<TimedRow>> = Map::default();
            for (line, key, vals) in
                parse_csv(&bytes, &a.path, Some((&a.key, a.key_ty)), &a.columns)?
            {
                let Some(key) = key else { continue };
                let Some(t) = vals[t_idx].as_i64() else {
                    return Err(DataError::at(
                        &a.path,
                        line,
                        &a.time,
                        "the as-of time is null",
                    ));
                };
                grouped.entry(key).or_default().push((t, vals));
            }
            let by_key = grouped
                .into_iter()
                .map(|(k, mut rows)| {
                    rows.sort_by_key(|(t, _)| *t); // stable: equal times keep file order
                    (k, rows.into_iter().unzip())
                })
                .collect();
            out.digests.push((a.name.clone(), sha256_hex(&bytes)));
            out.asofs.push(AsofTable { by_key });
        }
        Ok(out)
    }
}

/// A lookup key found on a second line: both engines refuse the table with this error.
pub(crate) fn duplicate_key(
    file: &str,
    line: usize,
    column: &str,
    key: &Key,
    was: usize,
) -> DataError {
    DataError::at(
        file,
        line,
        column,
        format!(
            "key {} appears twice (also on line {was}); lookup keys must be unique",
            key.shown()
        ),
    )
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

type ParsedRow = (usize, Option<Key>, Box<[Value]>);

fn parse_csv(
    bytes: &[u8],
    file: &str,
    key: Option<(&str, FieldType)>,
    columns: &[(String, FieldType)],
) -> Result<Vec<ParsedRow>, DataError> {
    let (mut reader, headers) = open_csv(bytes, file)?;
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            DataError::at(
                file,
                1,
                name,
                format!(
                    "no such column; the file has: {}",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let key_idx = key
        .map(|(name, ty)| find(name).map(|i| (i, name, ty)))
        .transpose()?;
    let idx: Vec<usize> = columns
        .iter()
        .map(|(n, _)| find(n))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| DataError::csv(file, &e))?;
        let cell = |c: usize| rec.get(c).unwrap_or("");
        let k = match key_idx {
            Some((c, name, ty)) => {
                let v = parse_cell(cell(c), ty).map_err(|m| DataError::at(file, line, name, m))?;
                Key::of(&v)
            }
            None => None,
        };
        let vals = idx
            .iter()
            .zip(columns)
            .map(|(&c, (name, ty))| {
                parse_cell(cell(c), *ty).map_err(|m| DataError::at(file, line, name, m))
            })
            .collect::<Result<Box<[Value]>, _>>()?;
        out.push((line, k, vals));
    }
    Ok(out)
}

/// Parse one CSV cell as a declared type.
pub fn parse_cell(text: &str, ty: FieldType) -> Result<Value, String> {
    if NULL_TOKENS.contains(&text) {
        return Ok(Value::Null);
    }
    match ty {
        FieldType::Int => text
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("`{text}` is not an int")),
        FieldType::Float => text
            .parse::<f64>()
            .map(Value::float)
            .map_err(|_| format!("`{text}` is not a float")),
        FieldType::Str => Ok(Value::Str(Arc::from(text))),
        FieldType::Timestamp => parse_timestamp(text).map(Value::Int),
    }
}

/// Check that every declared column of a CSV file exists and every cell parses as its type;
/// the first failure names the file, line and column.
pub fn check_csv(
    bytes: &[u8],
    file: &str,
    columns: &[(String, FieldType)],
) -> Result<(), DataError> {
    parse_csv(bytes, file, None, columns).map(|_| ())
}

/// A CSV reader over bytes, with the header record (line 1) already read.
pub(crate) fn open_csv<'a>(
    bytes: &'a [u8],
    file: &str,
) -> Result<(csv::Reader<&'a [u8]>, csv::StringRecord), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| DataError::csv(file, &e))?
        .clone();
    Ok((reader, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_parse_as_declared_with_nulls_and_nan() {
        assert_eq!(parse_cell("NA", FieldType::Int), Ok(Value::Null));
        assert_eq!(parse_cell("", FieldType::Str), Ok(Value::Null));
        assert_eq!(
            parse_cell("NaN", FieldType::Float),
            Ok(Value::Null),
            "NaN is null"
        );
        assert_eq!(
            parse_cell("1e3", FieldType::Float),
            Ok(Value::Float(1000.0))
        );
        assert_eq!(parse_cell("-7", FieldType::Int), Ok(Value::Int(-7)));
        assert!(parse_cell("7.5", FieldType::Int).is_err());
        assert_eq!(
            parse_cell("2013-01-01T06:00:00Z", FieldType::Timestamp),
            Ok(Value::Int(1_357_020_000_000))
        );
    }

    #[test]
    fn asof_takes_the_latest_row_at_or_before_within_tolerance() {
        let key = Key::Str("EWR".into());
        let row = |x: f64| -> Box<[Value]> { vec![Value::Float(x)].into_boxed_slice() };
        let mut t = AsofTable::default();
        // Two rows at time 10 (a duplicate report): the later one in file order wins.
        t.by_key.insert(
            key.clone(),
            (
                vec![0, 10, 10, 20],
                vec![row(0.0), row(1.0), row(2.0), row(3.0)],
            ),
        );
        assert_eq!(t.get(&key, -1, None), None, "nothing before the first row");
        assert_eq!(t.get(&key, 10, None), Some(&[Value::Float(2.0)][..]));
        assert_eq!(t.get(&key, 19, None), Some(&[Value::Float(2.0)][..]));
        assert_eq!(
            t.get(&key, 25, Some(5)),
            Some(&[Value::Float(3.0)][..]),
            "exactly at the tolerance matches"
        );
        assert_eq!(t.get(&key, 26, Some(5)), None);
        assert_eq!(t.get(&Key::Str("JFK".into()), 25, None), None);
        // Instants far apart: the distance saturates instead of overflowing.
        t.by_key
            .insert(key.clone(), (vec![i64::MIN], vec![row(9.0)]));
        assert_eq!(t.get(&key, i64::MAX, Some(5)), None);
        assert_eq!(t.get(&key, i64::MAX, None), Some(&[Value::Float(9.0)][..]));
    }
}
