//! Avro object container files as history (issue 17): the fixture flights written as Avro give
//! the parity check every vector bit-identical, sorted, under disorder and repartitioned, and
//! the same offline rows as the CSV they came from; a file whose schema does not fit the
//! pipeline is refused naming the file and the field. A records file (a topic's Avro records
//! kept with the writer schemas they name, as the trainer keeps a topic range) reads the same.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::{Schema, Writer};
use serde_json::Value as Json;
use shared_features::events::csv_to_json;
use shared_features::{Order, Pipeline, offline, parity};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn flights_pipeline() -> Arc<Pipeline> {
    let text = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    Arc::new(Pipeline::parse(&text, "pipeline.toml").unwrap())
}

fn fixtures() -> PathBuf {
    repo().join("data/flights/fixtures")
}

/// The fixture flights as a topic would carry them (JSON objects), and each field's Avro type:
/// a union with null of long, double or string, from the values it takes.
/// One event as a JSON object.
type Event = serde_json::Map<String, Json>;

fn flights_as_json() -> (Vec<Event>, Vec<(String, &'static str)>) {
    let p = flights_pipeline();
    let csv = std::fs::read(fixtures().join("raw/flights.csv")).unwrap();
    let rows: Vec<Event> = csv_to_json(&p, &csv, "flights.csv")
        .unwrap()
        .iter()
        .map(|j| serde_json::from_slice(j).unwrap())
        .collect();
    let types = rows[0]
        .keys()
        .map(|k| {
            let seen = |f: fn(&Json) -> bool| rows.iter().any(|r| f(&r[k]));
            let t = if seen(|v| v.is_f64()) {
                "double"
            } else if seen(|v| v.is_i64()) {
                "long"
            } else {
                "string"
            };
            (k.clone(), t)
        })
        .collect();
    (rows, types)
}

fn avro_value(v: &Json, t: &str) -> Avro {
    let inner = match (v, t) {
        (Json::Null, _) => return Avro::Union(0, Box::new(Avro::Null)),
        (v, "double") => Avro::Double(v.as_f64().unwrap()),
        (v, "long") => Avro::Long(v.as_i64().unwrap()),
        (Json::String(s), _) => Avro::String(s.clone()),
        (v, _) => Avro::String(v.to_string()),
    };
    Avro::Union(1, Box::new(inner))
}

/// Write the flights to an Avro file, with `retype` (field, Avro type) changing one field's
/// type.
fn write_avro(path: &Path, retype: Option<(&str, &str)>) {
    let (rows, types) = flights_as_json();
    let fields: Vec<String> = types
        .iter()
        .map(|(n, t)| {
            let t = retype.filter(|(f, _)| f == n).map_or(*t, |(_, t)| t);
            format!(r#"{{"name": "{n}", "type": ["null", "{t}"]}}"#)
        })
        .collect();
    let schema = Schema::parse_str(&format!(
        r#"{{"type": "record", "name": "Flight", "fields": [{}]}}"#,
        fields.join(", ")
    ))
    .unwrap();
    let mut w = Writer::new(&schema, Vec::new());
    for r in &rows {
        let record = Avro::Record(
            types
                .iter()
                .map(|(n, t)| {
                    let t = retype.filter(|(f, _)| f == n).map_or(*t, |(_, t)| t);
                    let v = if t == "string" && !r[n].is_string() && !r[n].is_null() {
                        Avro::Union(1, Box::new(Avro::String(r[n].to_string())))
                    } else {
                        avro_value(&r[n], t)
                    };
                    (n.clone(), v)
                })
                .collect(),
        );
        w.append(record).unwrap();
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
}

#[test]
fn fixture_flights_as_avro_are_bit_identical_in_every_mode_and_read_as_the_csv() {
    let p = flights_pipeline();
    let dir = common::tempdir("avro-history");
    let avro = dir.join("flights.avro");
    write_avro(&avro, None);
    let csv = fixtures().join("raw/flights.csv");

    let sorted = parity::check(&p, &avro, &fixtures()).unwrap();
    assert_eq!(
        sorted.first_mismatch.as_ref().map(|m| m.feature.clone()),
        None
    );
    let from_csv = parity::check(&p, &csv, &fixtures()).unwrap();
    assert!(sorted.events > 2000, "{} events", sorted.events);
    assert_eq!(
        (sorted.records, sorted.events, sorted.identical),
        (from_csv.records, from_csv.events, from_csv.events)
    );
    let disorder = || parity::Feed {
        disorder: Some(parity::Disorder {
            seed: 7,
            order: Order::Watermark,
        }),
        ..Default::default()
    };
    let repartitioned = || parity::Feed {
        partitions: Some(4),
        ..Default::default()
    };
    for feed in [disorder, repartitioned] {
        let r = parity::check_feed(&p, &avro, &fixtures(), feed()).unwrap();
        assert_eq!(r.identical, r.events, "{}: {:?}", r.mode, r.first_mismatch);
        // The same events compared as from the CSV in that mode (under disorder, those the
        // lateness admits).
        let c = parity::check_feed(&p, &csv, &fixtures(), feed()).unwrap();
        assert_eq!(
            (r.events, r.identical),
            (c.events, c.identical),
            "{}",
            r.mode
        );
    }

    // The offline engine reads the same rows from the Avro file as from the CSV, bit for bit.
    let a = offline::run(&p, &avro, &fixtures()).unwrap();
    let c = offline::run(&p, &csv, &fixtures()).unwrap();
    assert_eq!(a.rows.len(), c.rows.len());
    let bits = |rows: &[Vec<shared_features::Value>]| format!("{rows:?}");
    assert_eq!(bits(&a.rows), bits(&c.rows));
}

#[test]
fn an_avro_file_whose_schema_does_not_fit_is_named_with_the_field() {
    let p = flights_pipeline();
    let dir = common::tempdir("avro-history");
    let bad = dir.join("retyped.avro");
    write_avro(&bad, Some(("dep_delay", "string")));
    let said = offline::run(&p, &bad, &fixtures()).unwrap_err().to_string();
    assert!(
        said.contains("retyped.avro")
            && said.contains("field dep_delay: record Flight gives it as string, which cannot be read as the declared float"),
        "{said}"
    );
    let not_avro = dir.join("garbage.avro");
    std::fs::write(&not_avro, b"this is not avro").unwrap();
    let said = parity::check(&p, &not_avro, &fixtures())
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("garbage.avro") && said.contains("not an Avro object container file"),
        "{said}"
    );
}

/// The flights as a topic's Avro records, the first half written with one schema (id 7) and the
/// rest with a compatible evolution of it (id 8: fields in reverse order, one added with a
/// default), kept in a records file: the offline engine reads the CSV's rows from it and the
/// parity check finds every vector identical, each record decoded under its own schema.
#[test]
fn a_records_file_of_two_schema_versions_reads_as_the_csv() {
    let p = flights_pipeline();
    let dir = common::tempdir("avro-history");
    let (rows, types) = flights_as_json();
    let field = |(n, t): &(String, &str)| format!(r#"{{"name": "{n}", "type": ["null", "{t}"]}}"#);
    let v1: Vec<String> = types.iter().map(field).collect();
    let mut v2: Vec<String> = types.iter().rev().map(field).collect();
    v2.push(r#"{"name": "source", "type": "string", "default": "tower"}"#.into());
    let text = |fields: &[String]| {
        format!(
            r#"{{"type": "record", "name": "Flight", "fields": [{}]}}"#,
            fields.join(", ")
        )
    };
    let schemas = shared_features::wire::Schemas::new();
    schemas.insert(7, None, &text(&v1));
    schemas.insert(8, Some("AVRO"), &text(&v2));
    let (s1, s2) = (
        Schema::parse_str(&text(&v1)).unwrap(),
        Schema::parse_str(&text(&v2)).unwrap(),
    );
    let half = rows.len() / 2;
    let records: Vec<Vec<u8>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut fields: Vec<(String, Avro)> = types
                .iter()
                .map(|(n, t)| (n.clone(), avro_value(&r[n], t)))
                .collect();
            let (id, schema) = if i < half {
                (7u32, &s1)
            } else {
                fields.reverse();
                fields.push(("source".into(), Avro::String("radar".into())));
                (8, &s2)
            };
            let mut framed = vec![0];
            framed.extend_from_slice(&id.to_be_bytes());
            framed.extend(apache_avro::to_avro_datum(schema, Avro::Record(fields)).unwrap());
            framed
        })
        .collect();
    let file = dir.join("topic.avro");
    let format = shared_features::wire::Format::Avro(schemas);
    shared_features::wire::write_records_file(&file, &format, records.iter().map(Vec::as_slice))
        .unwrap();

    let (back, read) = shared_features::wire::container_records(&file).unwrap();
    assert!(read == records, "the records file gives back other bytes");
    assert!(matches!(back, shared_features::wire::Format::Avro(_)));

    let csv = fixtures().join("raw/flights.csv");
    let r = parity::check(&p, &file, &fixtures()).unwrap();
    let c = parity::check(&p, &csv, &fixtures()).unwrap();
    assert!(r.events > 2000, "{} events", r.events);
    assert_eq!(
        (r.records, r.events, r.identical),
        (c.records, c.events, c.events),
        "{:?}",
        r.first_mismatch
    );
    let a = offline::run(&p, &file, &fixtures()).unwrap();
    let b = offline::run(&p, &csv, &fixtures()).unwrap();
    let bits = |rows: &[Vec<shared_features::Value>]| format!("{rows:?}");
    assert_eq!(a.rows.len(), b.rows.len());
    assert_eq!(bits(&a.rows), bits(&b.rows));
}
