//! Protobuf records in the schema registry's wire format (issue 17): the same events as JSON and
//! as Protobuf messages (a Timestamp, a wrapper type, an enum, optional scalars; the message
//! named by a path of indexes) decode to the same rows bit for bit, and malformed records are
//! refused naming what was wrong, never a panic.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

mod departures;

use base64::Engine;
use departures::{AIRPORTS, Dep, bits, deps, engine, json};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as Proto};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto,
};
use shared_features::OnlineEngine;
use shared_features::wire::{Format, Schemas};

fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(str::to_string),
        ..Default::default()
    }
}

/// A proto2 file with an unrelated first message and the departures second (message index 1);
/// `tailnum_type` changes one field's type.
fn file(tailnum_type: Type) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some("departure.proto".into()),
        package: Some("flights".into()),
        syntax: Some("proto2".into()),
        dependency: vec![
            "google/protobuf/timestamp.proto".into(),
            "google/protobuf/wrappers.proto".into(),
        ],
        enum_type: vec![EnumDescriptorProto {
            name: Some("Airport".into()),
            value: AIRPORTS
                .iter()
                .enumerate()
                .map(|(i, a)| EnumValueDescriptorProto {
                    name: Some((*a).into()),
                    number: Some(i as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        message_type: vec![
            DescriptorProto {
                name: Some("Other".into()),
                field: vec![field("x", 1, Type::Int64, None)],
                ..Default::default()
            },
            DescriptorProto {
                name: Some("Departure".into()),
                field: vec![
                    field(
                        "dep_at",
                        1,
                        Type::Message,
                        Some(".google.protobuf.Timestamp"),
                    ),
                    field("dep_time", 2, Type::Int32, None),
                    field(
                        "dep_delay",
                        3,
                        Type::Message,
                        Some(".google.protobuf.DoubleValue"),
                    ),
                    field("tailnum", 4, tailnum_type, None),
                    field("origin", 5, Type::Enum, Some(".flights.Airport")),
                    field("gate", 6, Type::String, None),
                ],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// The registry's serialized form of a file.
fn serialized(f: &FileDescriptorProto) -> String {
    base64::engine::general_purpose::STANDARD.encode(f.encode_to_vec())
}

fn departure_message() -> MessageDescriptor {
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file(Type::String)).unwrap();
    pool.get_message_by_name("flights.Departure").unwrap()
}

/// The wire format: magic byte, schema id, message indexes [1] (count 1, index 1, zigzag),
/// the message.
fn proto(d: &Dep, desc: &MessageDescriptor) -> Vec<u8> {
    let mut m = DynamicMessage::new(desc.clone());
    let pool = desc.parent_pool();
    let mut ts = DynamicMessage::new(
        pool.get_message_by_name("google.protobuf.Timestamp")
            .unwrap(),
    );
    ts.set_field_by_name("seconds", Proto::I64(d.at.div_euclid(1000)));
    ts.set_field_by_name(
        "nanos",
        Proto::I32((d.at.rem_euclid(1000) * 1_000_000) as i32),
    );
    m.set_field_by_name("dep_at", Proto::Message(ts));
    if let Some(t) = d.time {
        m.set_field_by_name("dep_time", Proto::I32(t));
    }
    if let Some(x) = d.delay {
        let mut w = DynamicMessage::new(
            pool.get_message_by_name("google.protobuf.DoubleValue")
                .unwrap(),
        );
        w.set_field_by_name("value", Proto::F64(x));
        m.set_field_by_name("dep_delay", Proto::Message(w));
    }
    m.set_field_by_name("tailnum", Proto::String(d.tail.clone()));
    if let Some(o) = d.origin {
        m.set_field_by_name("origin", Proto::EnumNumber(o as i32));
    }
    m.set_field_by_name("gate", Proto::String("B7".into()));
    let mut out = vec![0, 0, 0, 0, 1, 2, 2];
    out.extend(m.encode_to_vec());
    out
}

fn schemas() -> Arc<Schemas> {
    let s = Schemas::new();
    s.insert(1, Some("PROTOBUF"), &serialized(&file(Type::String)));
    s.insert(2, Some("PROTOBUF"), &serialized(&file(Type::Int64)));
    s
}

proptest! {
    /// Every feature row from Protobuf messages equals the row from the same events as JSON.
    #[test]
    fn protobuf_and_json_events_give_the_same_rows(events in deps()) {
        let desc = departure_message();
        let mut from_json = engine(&Format::Json);
        let mut from_proto = engine(&Format::Protobuf(schemas()));
        for (i, d) in events.iter().enumerate() {
            // prost-reflect's encoder (this test's writer) leaves a -0.0 out of a proto3 wrapper
            // as if it were the default 0.0, so the message would carry +0.0: not a case for the
            // decoder, which reads the bits it is given.
            let mut d = d.clone();
            d.delay = d.delay.map(|x| if x == 0.0 { 0.0 } else { x });
            let d = &d;
            let a = from_json.process(&json(d)).unwrap().map(bits);
            let b = from_proto.process(&proto(d, &desc)).unwrap().map(bits);
            prop_assert_eq!(a, b, "event {}: {:?}", i, d);
        }
    }

    /// Arbitrary bytes after a valid header, with and without message indexes: a row or an
    /// error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut e = engine(&Format::Protobuf(schemas()));
        let mut framed = vec![0, 0, 0, 0, 1];
        framed.extend_from_slice(&tail);
        let _ = e.process(&framed);
        framed.splice(5..5, [2, 2]);
        let _ = e.process(&framed);
    }
}

#[test]
fn malformed_records_and_unfit_schemas_are_named() {
    let desc = departure_message();
    let mut e = engine(&Format::Protobuf(schemas()));
    let d = Dep {
        at: 1_356_998_400_000,
        time: Some(517),
        delay: Some(2.0),
        tail: "N14228".into(),
        origin: Some(1),
    };
    let good = proto(&d, &desc);
    assert!(e.process(&good).unwrap().is_some());

    let said =
        |bytes: &[u8], e: &mut OnlineEngine| e.process(bytes).expect_err("refused").to_string();
    assert_eq!(
        said(&good[..6], &mut e),
        "truncated in the message indexes (an index)"
    );
    // Message index 0 is the unrelated message, which lacks the declared fields.
    let mut first = good.clone();
    first.splice(5..7, [0]);
    assert_eq!(
        said(&first, &mut e),
        "schema id 1: field dep_at: missing from message flights.Other"
    );
    let mut beyond = good.clone();
    beyond[6] = 8; // index 4
    assert!(
        said(&beyond, &mut e).contains("message index 4"),
        "{}",
        said(&beyond, &mut e)
    );
    // A field of another type in the writer's schema (id 2: tailnum int64).
    let mut other = good.clone();
    other[4] = 2;
    assert_eq!(
        said(&other, &mut e),
        "schema id 2: field tailnum: message flights.Departure gives it as int64, which cannot be \
         read as the declared str"
    );
    // A message cut short.
    let cut = e.process(&good[..good.len() - 3]).expect_err("refused");
    assert_eq!(cut.kind(), "record", "{cut}");
    // A schema as .proto text, or not a descriptor at all.
    let s = Schemas::new();
    let text = format!(
        "{:?}",
        s.insert(3, Some("PROTOBUF"), "syntax = \"proto3\";")
    );
    assert!(text.contains("format=serialized"), "{text}");
    let junk = format!("{:?}", s.insert(4, Some("PROTOBUF"), "AAAA"));
    assert!(junk.contains("schema id 4"), "{junk}");
    // An Avro topic's decoder meeting a Protobuf schema says so.
    let mut avro = engine(&Format::Avro(schemas()));
    assert!(
        said(&good, &mut avro).contains("is a PROTOBUF schema; the topic's value format is avro")
    );
}
