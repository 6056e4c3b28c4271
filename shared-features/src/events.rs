//! History files as the events a topic would carry: CSV rows to JSON objects, and their order.
//!
//! The scorer's feed command and the parity check both use this, so that what is published to a
//! topic is exactly what the online engine is tested on.

use std::sync::Arc;

use crate::decode::Decoder;
use crate::error::DataError;
use crate::eval;
use crate::spec::Pipeline;
use crate::tables::{open_csv, parse_cell};
use crate::value::{Key, Row, Value};

/// Turn every record of a CSV history file into one JSON object. Declared fields are typed as
/// declared (`NA` and empty become `null`); other columns pass through as strings.
pub fn csv_to_json(p: &Pipeline, bytes: &[u8], file: &str) -> Result<Vec<Vec<u8>>, DataError> {
    let (mut reader, headers) = open_csv(bytes, file)?;
    let types: Vec<_> = headers
        .iter()
        .map(|h| p.fields().iter().find(|c| c.name == h).map(|c| c.ty))
        .collect();
    for c in p.fields() {
        if !headers.iter().any(|h| h == c.name) {
            return Err(DataError::at(
                file,
                1,
                &c.name,
                "declared field is not a column of the file",
            ));
        }
    }
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| DataError::csv(file, &e))?;
        let mut obj = serde_json::Map::with_capacity(rec.len());
        for ((h, cell), ty) in headers.iter().zip(rec.iter()).zip(&types) {
            let v = match ty {
                Some(ty) => {
                    match parse_cell(cell, *ty).map_err(|m| DataError::at(file, line, h, m))? {
                        Value::Null => serde_json::Value::Null,
                        Value::Int(n) if *ty == crate::FieldType::Timestamp => {
                            serde_json::Value::String(crate::time::format_timestamp(n))
                        }
                        Value::Int(n) => n.into(),
                        Value::Float(x) => serde_json::Number::from_f64(x)
                            .map_or(serde_json::Value::Null, Into::into),
                        Value::Str(s) => serde_json::Value::String(s.to_string()),
                    }
                }
                None if crate::tables::NULL_TOKENS.contains(&cell) => serde_json::Value::Null,
                None => serde_json::Value::String(cell.to_string()),
            };
            obj.insert(h.to_string(), v);
        }
        buf.clear();
        serde_json::to_writer(&mut buf, &obj)
            .map_err(|e| DataError::at(file, line, "", e.to_string()))?;
        out.push(buf.clone());
    }
    Ok(out)
}

/// The order a topic should carry events in: by event time, ties by partition key (nulls
/// first), then file order, as the offline engine sorts them. Events without a computable time
/// (they will be refused anyway) go last, in file order.
pub fn event_order(p: &Arc<Pipeline>, events: &[Vec<u8>]) -> Vec<usize> {
    let mut d = Decoder::new(p);
    event_order_with(p, events, &mut |b, row| d.decode(b, row))
}

/// Decodes one event's bytes into the declared fields of a row ([`Decoder::decode`], or another
/// value format's decoder).
pub type Decode<'a> = dyn FnMut(&[u8], &mut [Value]) -> Result<(), crate::EventError> + 'a;

/// [`event_order`] of events in another value format, decoded by `decode`.
pub fn event_order_with(p: &Arc<Pipeline>, events: &[Vec<u8>], decode: &mut Decode) -> Vec<usize> {
    let mut keyed: Vec<(i64, Option<Key>, usize)> = event_keys(p, events, decode)
        .into_iter()
        .enumerate()
        .map(|(i, (k, t))| match t {
            Some(t) => (t, k, i),
            None => (i64::MAX, None, i),
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

/// Each event's partition key and event time, when they can be computed.
fn event_keys(
    p: &Arc<Pipeline>,
    events: &[Vec<u8>],
    decode: &mut Decode,
) -> Vec<(Option<Key>, Option<i64>)> {
    let mut row: Row = vec![Value::Null; p.layout.len()];
    events
        .iter()
        .map(|e| {
            if decode(e, &mut row).is_err() {
                return (None, None);
            }
            (Key::of(&row[p.key]), eval::event_time(p, &row).ok())
        })
        .collect()
}

/// Each event's partition key (as text) and event time, when they can be computed.
pub fn event_meta(p: &Arc<Pipeline>, events: &[Vec<u8>]) -> Vec<(Option<String>, Option<i64>)> {
    let mut d = Decoder::new(p);
    event_meta_with(p, events, &mut |b, row| d.decode(b, row))
}

/// [`event_meta`] of events in another value format, decoded by `decode`.
pub fn event_meta_with(
    p: &Arc<Pipeline>,
    events: &[Vec<u8>],
    decode: &mut Decode,
) -> Vec<(Option<String>, Option<i64>)> {
    let mut row: Row = vec![Value::Null; p.layout.len()];
    events
        .iter()
        .map(|e| {
            if decode(e, &mut row).is_err() {
                return (None, None);
            }
            (row[p.key].key_text(), eval::event_time(p, &row).ok())
        })
        .collect()
}
