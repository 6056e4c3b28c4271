//! Protobuf records in the schema registry's wire format, as Confluent's serializers write them:
//! after the magic byte and the schema id, the message indexes (which message of the schema's
//! file, as a path through nested messages: a zigzag varint count, then each index; a single
//! zero byte for the file's first message), then the message.
//!
//! Writer schemas are taken in the registry's serialized form (a base64 `FileDescriptorProto`,
//! what `GET /schemas/ids/{id}?format=serialized` gives and what Confluent's Python serializer
//! registers) and read with prost-reflect's dynamic messages. A declared field is found by name;
//! the typing rules are the JSON decoder's, with these additions: a field without presence
//! (a proto3 scalar that is not `optional`) reads as its default value, since the message cannot
//! say null; declare such fields `optional` (or use proto2, or a wrapper type) to carry nulls.
//! An `int` field takes any integer type; a `float` field any number; a `str` field a `string`,
//! an enum (its value's name) or UTF-8 `bytes`; a `timestamp` field an integer of epoch
//! milliseconds, an RFC 3339 `string` or a `google.protobuf.Timestamp` (floored to the
//! millisecond). The wrapper types (`google.protobuf.DoubleValue`, ...) read as what they wrap.

use std::sync::Arc;

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value as Proto,
};

use super::{Known, Schemas, split_header};
use crate::decode::{Raw, typed};
use crate::error::EventError;
use crate::spec::Pipeline;
use crate::value::{FieldType, Map, Set, Value};

/// The writer schema of a Protobuf id from the registry's serialized form, or why not.
pub(super) fn parse(id: u32, text: &str) -> Known {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
        return Known::Refused(
            format!(
                "schema id {id}: a Protobuf schema as .proto text; ask the registry for its \
                 serialized form (GET /schemas/ids/{id}?format=serialized)"
            )
            .into(),
        );
    };
    let proto = match <prost_types::FileDescriptorProto as prost::Message>::decode(&bytes[..]) {
        Ok(p) => p,
        Err(e) => {
            return Known::Refused(
                format!("schema id {id}: not a serialized FileDescriptorProto: {e}").into(),
            );
        }
    };
    let name = proto.name().to_string();
    // With the well-known types (google/protobuf/timestamp.proto, wrappers.proto, ...) to import.
    let mut pool = DescriptorPool::global();
    if let Err(e) = pool.add_file_descriptor_proto(proto) {
        return Known::Refused(
            format!("schema id {id}: {e} (schemas that import files other than the well-known types are not supported yet)")
                .into(),
        );
    }
    match pool.get_file_by_name(&name) {
        Some(f) => Known::Protobuf(Arc::new(f)),
        None => Known::Refused(format!("schema id {id}: no file in the descriptor").into()),
    }
}

/// Whether a registry's answer is in the serialized form (base64) this module takes.
pub fn is_serialized(text: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .is_ok()
}

/// The message indexes after the header, and the message's bytes after them.
fn message_indexes(bytes: &[u8]) -> Result<(Vec<i64>, &[u8]), EventError> {
    let mut rest = bytes;
    let mut next = |what: &str| -> Result<i64, EventError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some((&b, tail)) = rest.split_first() else {
                return Err(EventError::Wire {
                    message: format!("truncated in the message indexes ({what})"),
                });
            };
            rest = tail;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // Zigzag.
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(EventError::Wire {
            message: format!("a message index varint longer than 10 bytes ({what})"),
        })
    };
    let n = next("their count")?;
    if n == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=32).contains(&n) {
        return Err(EventError::Wire {
            message: format!("{n} message indexes: not a path through nested messages"),
        });
    }
    let mut path = Vec::with_capacity(n as usize);
    for _ in 0..n {
        path.push(next("an index")?);
    }
    Ok((path, rest))
}

/// The message a path of indexes names in a file.
fn message_at(file: &FileDescriptor, path: &[i64]) -> Result<MessageDescriptor, String> {
    let mut msg: Option<MessageDescriptor> = None;
    for &i in path {
        let found = match &msg {
            None => usize::try_from(i).ok().and_then(|i| file.messages().nth(i)),
            Some(m) => usize::try_from(i)
                .ok()
                .and_then(|i| m.child_messages().nth(i)),
        };
        msg = Some(found.ok_or_else(|| {
            format!("message index {i} (path {path:?}) is not a message of the schema")
        })?);
    }
    msg.ok_or_else(|| "no message index".to_string())
}

/// Check a writer message against the declared fields: each must be a field of the message
/// whose type can be read as the declared type. Returns each declared field's descriptor.
pub fn resolve_fields(
    message: &MessageDescriptor,
    fields: &[(String, FieldType)],
) -> Result<Vec<FieldDescriptor>, String> {
    fields
        .iter()
        .map(|(field, ty)| {
            let f = message
                .get_field_by_name(field)
                .ok_or_else(|| format!("field {field}: missing from message {}", message.full_name()))?;
            if f.is_list() || f.is_map() {
                return Err(format!(
                    "field {field}: message {} gives it as a repeated field or map, which cannot be \
                     read as the declared {}",
                    message.full_name(),
                    ty.name()
                ));
            }
            if readable(&f.kind(), *ty) {
                Ok(f)
            } else {
                Err(format!(
                    "field {field}: message {} gives it as {}, which cannot be read as the declared {}",
                    message.full_name(),
                    kind_name(&f.kind()),
                    ty.name()
                ))
            }
        })
        .collect()
}

fn readable(k: &Kind, ty: FieldType) -> bool {
    use FieldType as T;
    let int = matches!(ty, T::Int | T::Float | T::Timestamp);
    match k {
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Fixed32
        | Kind::Fixed64
        | Kind::Sfixed32
        | Kind::Sfixed64 => int,
        Kind::Float | Kind::Double => ty == T::Float,
        Kind::String | Kind::Bytes | Kind::Enum(_) => matches!(ty, T::Str | T::Timestamp),
        Kind::Bool => false,
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => ty == T::Timestamp,
            "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => ty == T::Float,
            "google.protobuf.Int64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.UInt32Value" => int,
            "google.protobuf.StringValue" | "google.protobuf.BytesValue" => {
                matches!(ty, T::Str | T::Timestamp)
            }
            _ => false,
        },
    }
}

fn kind_name(k: &Kind) -> String {
    match k {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// How the declared fields are found in one message of one writer schema.
#[derive(Clone, Debug)]
struct Plan {
    message: MessageDescriptor,
    fields: Vec<FieldDescriptor>,
}

/// A message path's plan, or why there is none.
type PathPlan = (Vec<i64>, Result<Plan, Arc<str>>);

/// Decodes Protobuf records in the wire format into the event fields of a pipeline (see the
/// module documentation for the rules).
#[derive(Debug, Clone)]
pub struct ProtobufDecoder {
    schemas: Arc<Schemas>,
    fields: Vec<(String, FieldType)>,
    from_strings: Vec<bool>,
    /// Per schema id, per message path.
    plans: Map<u32, Vec<PathPlan>>,
    strings: Vec<Set<Arc<str>>>,
}

impl ProtobufDecoder {
    /// A decoder for the event fields of `p`, reading writer schemas from `schemas`.
    pub fn new(p: &Pipeline, schemas: Arc<Schemas>) -> Self {
        let (fields, strings) = super::declared(p);
        Self::for_fields(fields, &strings, schemas)
    }

    /// A decoder for these fields, in this order (the offline engine reads records files with
    /// it); the int and float fields named in `from_strings` also take strings holding numbers.
    pub fn for_fields(
        fields: impl IntoIterator<Item = (String, FieldType)>,
        from_strings: &[&str],
        schemas: Arc<Schemas>,
    ) -> Self {
        let fields: Vec<(String, FieldType)> = fields.into_iter().collect();
        let from_strings = super::string_mask(&fields, from_strings);
        Self {
            schemas,
            strings: vec![Set::default(); fields.len()],
            fields,
            from_strings,
            plans: Map::default(),
        }
    }

    fn plan(&mut self, id: u32, path: &[i64]) -> Result<&Plan, EventError> {
        let plans = self.plans.entry(id).or_default();
        let at = match plans.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                let plan = match self.schemas.known(id)? {
                    Known::Refused(why) => Err(why),
                    Known::Avro(_) => Err(Arc::from(format!(
                        "schema id {id} is an AVRO schema; the topic's value format is protobuf"
                    ))),
                    Known::Protobuf(file) => message_at(&file, path)
                        .and_then(|message| {
                            resolve_fields(&message, &self.fields)
                                .map(|fields| Plan { message, fields })
                        })
                        .map_err(Arc::from),
                };
                plans.push((path.to_vec(), plan));
                plans.len() - 1
            }
        };
        plans[at].1.as_ref().map_err(|why| EventError::Schema {
            id,
            message: why.to_string(),
        })
    }

    /// Decode `bytes` into `row[..n_fields]`.
    pub fn decode(&mut self, bytes: &[u8], row: &mut [Value]) -> Result<(), EventError> {
        let (id, rest) = split_header(bytes)?;
        let (path, payload) = message_indexes(rest)?;
        let plan = self.plan(id, &path)?.clone();
        let msg = DynamicMessage::decode(plan.message.clone(), payload).map_err(|e| {
            EventError::Record {
                id,
                message: e.to_string(),
            }
        })?;
        for (i, fd) in plan.fields.iter().enumerate() {
            let (field, ty) = &self.fields[i];
            let value = if fd.supports_presence() && !msg.has_field(fd) {
                None
            } else {
                Some(msg.get_field(fd))
            };
            let raw = value.as_deref().map_or(Raw::Null, |v| raw(v, fd));
            row[i] = typed(raw, *ty, field, self.from_strings[i], &mut self.strings[i])?;
        }
        Ok(())
    }
}

/// A Protobuf value as the scalar the JSON decoder would have met.
fn raw<'a>(v: &'a Proto, fd: &FieldDescriptor) -> Raw<'a> {
    use std::borrow::Cow::{Borrowed, Owned};
    match v {
        Proto::Bool(_) => Raw::Bool,
        Proto::I32(i) => Raw::Int(i64::from(*i)),
        Proto::I64(i) => Raw::Int(*i),
        Proto::U32(i) => Raw::Int(i64::from(*i)),
        Proto::U64(i) => i64::try_from(*i).map_or(Raw::Float(*i as f64), Raw::Int),
        Proto::F32(x) if x.is_infinite() => Raw::Compound("an infinite number"),
        Proto::F64(x) if x.is_infinite() => Raw::Compound("an infinite number"),
        Proto::F32(x) => Raw::Float(f64::from(*x)),
        Proto::F64(x) => Raw::Float(*x),
        Proto::String(s) => Raw::Str(Borrowed(s)),
        Proto::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Raw::Str(Borrowed(s)),
            Err(_) => Raw::Compound("bytes that are not UTF-8"),
        },
        Proto::EnumNumber(n) => match fd.kind() {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => Raw::Str(Owned(v.name().to_string())),
                None => Raw::Compound("an enum number the schema does not name"),
            },
            _ => Raw::Compound("an enum number"),
        },
        Proto::Message(m) => message_value(m),
        Proto::List(_) => Raw::Compound("a list"),
        Proto::Map(_) => Raw::Compound("a map"),
    }
}

/// A well-known message (a timestamp, a wrapper) as a scalar.
fn message_value(m: &DynamicMessage) -> Raw<'static> {
    let d = m.descriptor();
    let get = |name: &str| {
        d.get_field_by_name(name)
            .map(|f| m.get_field(&f).into_owned())
    };
    match d.full_name() {
        "google.protobuf.Timestamp" => {
            let seconds = get("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = get("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            match seconds
                .checked_mul(1000)
                .and_then(|ms| ms.checked_add(i64::from(nanos).div_euclid(1_000_000)))
            {
                Some(ms) => Raw::Int(ms),
                None => Raw::Compound("a timestamp out of range"),
            }
        }
        name if name.starts_with("google.protobuf.") && name.ends_with("Value") => {
            match get("value") {
                Some(v) => owned(&v),
                None => Raw::Null,
            }
        }
        _ => Raw::Compound("a message"),
    }
}

fn owned(v: &Proto) -> Raw<'static> {
    use std::borrow::Cow::Owned;
    match v {
        Proto::I32(i) => Raw::Int(i64::from(*i)),
        Proto::I64(i) => Raw::Int(*i),
        Proto::U32(i) => Raw::Int(i64::from(*i)),
        Proto::U64(i) => i64::try_from(*i).map_or(Raw::Float(*i as f64), Raw::Int),
        Proto::F32(x) if x.is_finite() => Raw::Float(f64::from(*x)),
        Proto::F64(x) if x.is_finite() => Raw::Float(*x),
        Proto::String(s) => Raw::Str(Owned(s.clone())),
        Proto::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Raw::Str(Owned(s.to_string())),
            Err(_) => Raw::Compound("bytes that are not UTF-8"),
        },
        _ => Raw::Compound("a wrapped value of another type"),
    }
}
