//! Avro records in the schema registry's wire format (issue 17): the same events as JSON and as
//! Avro decode to the same rows bit for bit, writer schemas that evolved compatibly still decode,
//! and every malformed record is refused naming what was wrong, never a panic.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

mod departures;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use departures::{AIRPORTS, Dep, bits, deps, engine, json, pipeline};
use proptest::prelude::*;
use shared_features::wire::{Format, Schemas, resolve_fields, split_header};
use shared_features::{EventError, FieldType, OnlineEngine};

/// The schema a producer of these events would register: every field nullable, and a field the
/// pipeline does not read.
const V1: &str = r#"{"type": "record", "name": "Departure", "namespace": "flights", "fields": [
  {"name": "dep_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "dep_time", "type": ["null", "int"]},
  {"name": "dep_delay", "type": ["null", "double"]},
  {"name": "tailnum", "type": "string"},
  {"name": "origin", "type": ["null", "string"]},
  {"name": "gate", "type": ["null", "string"]}
]}"#;

/// A compatible evolution: fields reordered, `dep_time` widened to long, `origin` an enum, a new
/// field with a default, `gate` gone.
const V2: &str = r#"{"type": "record", "name": "Departure", "namespace": "flights", "fields": [
  {"name": "tailnum", "type": "string"},
  {"name": "terminal", "type": "string", "default": ""},
  {"name": "origin", "type": ["null", {"type": "enum", "name": "Airport", "symbols": ["EWR", "JFK", "LGA"]}]},
  {"name": "dep_delay", "type": ["null", "double"]},
  {"name": "dep_time", "type": ["null", "long"]},
  {"name": "dep_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
]}"#;

fn nullable(v: Option<Avro>) -> Avro {
    match v {
        None => Avro::Union(0, Box::new(Avro::Null)),
        Some(v) => Avro::Union(1, Box::new(v)),
    }
}

/// The wire format: magic byte, schema id, the record.
fn framed(id: u32, schema: &Schema, record: Avro) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, record).unwrap());
    out
}

fn avro_v1(d: &Dep, schema: &Schema) -> Vec<u8> {
    let r = Avro::Record(vec![
        ("dep_at".into(), Avro::TimestampMillis(d.at)),
        ("dep_time".into(), nullable(d.time.map(Avro::Int))),
        ("dep_delay".into(), nullable(d.delay.map(Avro::Double))),
        ("tailnum".into(), Avro::String(d.tail.clone())),
        (
            "origin".into(),
            nullable(d.origin.map(|i| Avro::String(AIRPORTS[i].into()))),
        ),
        ("gate".into(), nullable(Some(Avro::String("B7".into())))),
    ]);
    framed(1, schema, r)
}

fn avro_v2(d: &Dep, schema: &Schema) -> Vec<u8> {
    let r = Avro::Record(vec![
        ("tailnum".into(), Avro::String(d.tail.clone())),
        ("terminal".into(), Avro::String("4".into())),
        (
            "origin".into(),
            nullable(d.origin.map(|i| Avro::Enum(i as u32, AIRPORTS[i].into()))),
        ),
        ("dep_delay".into(), nullable(d.delay.map(Avro::Double))),
        (
            "dep_time".into(),
            nullable(d.time.map(|t| Avro::Long(i64::from(t)))),
        ),
        ("dep_at".into(), Avro::TimestampMillis(d.at)),
    ]);
    framed(2, schema, r)
}

fn schemas() -> (Arc<Schemas>, Schema, Schema) {
    let s = Schemas::new();
    s.insert(1, None, V1);
    s.insert(2, Some("AVRO"), V2);
    (
        s,
        Schema::parse_str(V1).unwrap(),
        Schema::parse_str(V2).unwrap(),
    )
}

proptest! {
    /// Every feature row from Avro records, written with either of two compatible schemas in
    /// turn, equals the row from the same events as JSON, bit for bit.
    #[test]
    fn avro_and_json_events_give_the_same_rows(events in deps()) {
        let (schemas, v1, v2) = schemas();
        let mut from_json = engine(&Format::Json);
        let mut from_avro = engine(&Format::Avro(schemas));
        for (i, d) in events.iter().enumerate() {
            let a = from_json.process(&json(d)).unwrap().map(bits);
            let bytes = if i % 2 == 0 { avro_v1(d, &v1) } else { avro_v2(d, &v2) };
            let b = from_avro.process(&bytes).unwrap().map(bits);
            prop_assert_eq!(a, b, "event {}: {:?}", i, d);
        }
    }

    /// Arbitrary bytes, with and without a valid header: a row or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64), id in 0u32..4) {
        let (schemas, _, _) = schemas();
        schemas.refuse(3, "schema id 3 is not known to the schema registry");
        let mut e = engine(&Format::Avro(schemas));
        let mut framed = vec![0];
        framed.extend_from_slice(&id.to_be_bytes());
        framed.extend_from_slice(&tail);
        let _ = e.process(&framed);
        let _ = e.process(&tail);
    }
}

fn refused(e: &mut OnlineEngine, bytes: &[u8]) -> EventError {
    e.process(bytes).expect_err("should be refused")
}

#[test]
fn malformed_records_are_refused_naming_what_is_wrong() {
    let (schemas, v1, _) = schemas();
    schemas.refuse(7, "schema id 7 is not known to the schema registry");
    let mut e = engine(&Format::Avro(schemas));
    let d = Dep {
        at: 1_356_998_400_000,
        time: Some(517),
        delay: Some(2.0),
        tail: "N14228".into(),
        origin: Some(0),
    };
    let good = avro_v1(&d, &v1);
    assert!(e.process(&good).unwrap().is_some());

    let said = refused(&mut e, &json(&d)).to_string();
    assert!(
        said.contains("magic byte 0x7b, not 0") && said.contains("JSON"),
        "{said}"
    );
    assert_eq!(refused(&mut e, &json(&d)).kind(), "wire");
    let said = refused(&mut e, &good[..3]).to_string();
    assert!(
        said.contains("3 bytes: truncated before the end of the 5-byte header"),
        "{said}"
    );
    assert_eq!(refused(&mut e, b"").to_string(), "an empty value");

    // A record cut short anywhere, and one with bytes after its end. (Cut inside its last
    // union's index, apache-avro alone would read the field as null.)
    for cut in 5..good.len() {
        let said = refused(&mut e, &good[..cut]);
        assert_eq!(said.kind(), "record", "cut at {cut}: {said}");
        assert!(said.to_string().contains("(id 1)"), "{said}");
    }
    let mut long = good.clone();
    long.push(0);
    let said = refused(&mut e, &long).to_string();
    assert!(
        said.contains("1 bytes left over after the record's"),
        "{said}"
    );

    // Ids the registry does not know, or that were never fetched.
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        refused(&mut e, &unknown).to_string(),
        "schema id 7: schema id 7 is not known to the schema registry"
    );
    unknown[1..5].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(
        refused(&mut e, &unknown).to_string(),
        "schema id 8: not fetched from the schema registry"
    );
    // The good record still decodes after all of that.
    assert!(e.process(&good).unwrap().is_some());
}

#[test]
fn a_schema_without_a_declared_field_or_with_another_type_is_named() {
    let fields: Vec<(String, FieldType)> = pipeline()
        .fields()
        .iter()
        .map(|c| (c.name.clone(), c.ty))
        .collect();
    // Each declared field's position in the writer's record, by name.
    let v1_order = [
        "dep_at",
        "dep_time",
        "dep_delay",
        "tailnum",
        "origin",
        "gate",
    ];
    let want: Vec<usize> = fields
        .iter()
        .map(|(f, _)| v1_order.iter().position(|n| n == f).unwrap())
        .collect();
    assert_eq!(
        resolve_fields(&Schema::parse_str(V1).unwrap(), &fields).unwrap(),
        want
    );
    let missing = V1.replace(r#""name": "origin""#, r#""name": "airport""#);
    assert_eq!(
        resolve_fields(&Schema::parse_str(&missing).unwrap(), &fields).unwrap_err(),
        "field origin: missing from record flights.Departure"
    );
    // An alias is the field under its old name.
    let aliased = V1.replace(
        r#""name": "origin""#,
        r#""name": "airport", "aliases": ["origin"]"#,
    );
    assert!(resolve_fields(&Schema::parse_str(&aliased).unwrap(), &fields).is_ok());
    let wrong = V1.replace(
        r#"{"name": "tailnum", "type": "string"}"#,
        r#"{"name": "tailnum", "type": ["null", "long", "boolean"]}"#,
    );
    assert_eq!(
        resolve_fields(&Schema::parse_str(&wrong).unwrap(), &fields).unwrap_err(),
        "field tailnum: record flights.Departure gives it as long, which cannot be read as the \
         declared str"
    );
    let local = V1.replace("timestamp-millis", "local-timestamp-millis");
    let said = resolve_fields(&Schema::parse_str(&local).unwrap(), &fields).unwrap_err();
    assert!(
        said.starts_with("field dep_at:") && said.contains("no time zone"),
        "{said}"
    );
    assert_eq!(
        resolve_fields(&Schema::parse_str(r#""string""#).unwrap(), &fields).unwrap_err(),
        "the schema is string, not a record"
    );
    // A registry answer of a type we do not read, or not a schema, is refused for good.
    let s = Schemas::new();
    let said = format!("{:?}", s.insert(4, Some("JSON"), "{}"));
    assert!(said.contains("schema id 4 is a JSON schema"), "{said}");
    let said = format!("{:?}", s.insert(5, None, "{not json"));
    assert!(said.contains("does not parse as Avro"), "{said}");
}

#[test]
fn the_header_gives_the_schema_id_big_endian() {
    let (id, rest) = split_header(&[0, 0, 0, 1, 2, 9, 9]).unwrap();
    assert_eq!((id, rest), (258, &[9u8, 9][..]));
}
