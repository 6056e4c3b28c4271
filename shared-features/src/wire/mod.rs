//! Events in the schema registry's wire format, as Confluent's serializers write them: a zero
//! magic byte, the writer schema's id (4 bytes, big-endian), then the record in Avro's binary
//! encoding (this module) or as a Protobuf message ([`protobuf`], feature `protobuf`).
//!
//! The value format is a property of the topic, not of the features: the pipeline declares its
//! fields by name and type once, and an Avro record is resolved to them by name, as Avro's schema
//! resolution resolves a writer's record to a reader's. Field by field the rules are the JSON
//! decoder's ([`crate::decode`]): an `int` field takes Avro `int` and `long`; a `float` field any
//! number (`int`, `long`, `float`, `double`); a `str` field `string`, `enum` symbols, `uuid` and
//! UTF-8 `bytes`; a `timestamp` field a `long` or `int` of epoch milliseconds, the logical types
//! `timestamp-millis` and `timestamp-micros` (floored to the millisecond), or an RFC 3339
//! `string`. A union with `null` gives null where the JSON event would have `null`. So the same
//! event as JSON and as Avro decodes to the same row, bit for bit, and the feature fingerprint
//! does not depend on the format.
//!
//! This module does no I/O: [`Schemas`] is the cache of writer schemas by id that the caller
//! (the scorer's registry client) fills before it hands an event to the engine.

use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::types::Value as Avro;

use crate::decode::{Raw, typed};
use crate::error::EventError;
use crate::spec::Pipeline;
use crate::value::{FieldType, Map, Set, Value};

#[cfg(feature = "protobuf")]
pub mod protobuf;

/// Bytes before the record: the magic byte and the schema id.
pub const HEADER_BYTES: usize = 5;

/// How a topic's record values are encoded.
#[derive(Clone, Debug, Default)]
pub enum Format {
    /// A JSON object per record.
    #[default]
    Json,
    /// Avro in the schema registry's wire format, with the writer schemas met so far.
    Avro(Arc<Schemas>),
    /// Protobuf in the schema registry's wire format, with the writer schemas met so far.
    #[cfg(feature = "protobuf")]
    Protobuf(Arc<Schemas>),
}

/// The schema id of a record in the wire format, and the record's bytes after the header.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), EventError> {
    let wire = |message: String| EventError::Wire { message };
    match bytes {
        [] => Err(wire("an empty value".to_string())),
        [magic, ..] if *magic != 0 => Err(wire(format!(
            "magic byte 0x{magic:02x}, not 0: not the schema registry's wire format{}",
            if *magic == b'{' {
                " (it looks like JSON: is the topic's value format json?)"
            } else {
                ""
            }
        ))),
        [_, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(wire(format!(
            "{} bytes: truncated before the end of the 5-byte header (magic byte, schema id)",
            bytes.len()
        ))),
    }
}

/// Writer schemas by id, shared by a process's decoders: filled by whoever talks to the
/// registry ([`Schemas::insert`], [`Schemas::refuse`]), read by [`AvroDecoder`].
#[derive(Debug, Default)]
pub struct Schemas {
    known: RwLock<Map<u32, Known>>,
    /// The registry's text of each schema inserted, with its type: what a records file keeps
    /// ([`write_records_file`]).
    texts: RwLock<Map<u32, (Option<String>, String)>>,
}

/// What is known of one schema id.
#[derive(Clone, Debug)]
pub enum Known {
    /// The writer schema, parsed.
    Avro(Arc<Schema>),
    /// A Protobuf writer schema: its file, whose messages the records' indexes name.
    #[cfg(feature = "protobuf")]
    Protobuf(Arc<prost_reflect::FileDescriptor>),
    /// No usable schema: the registry does not know the id, or its schema is not Avro or does not
    /// parse. Events written with it are refused with this reason.
    Refused(Arc<str>),
}

impl Schemas {
    /// An empty cache.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// What is known of `id`, if it was looked up.
    pub fn get(&self, id: u32) -> Option<Known> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Record the registry's answer for `id`: the schema's text and its type (`AVRO` when the
    /// registry gives none). Returns what was recorded.
    pub fn insert(&self, id: u32, schema_type: Option<&str>, text: &str) -> Known {
        let known = match schema_type.unwrap_or("AVRO") {
            "AVRO" => match Schema::parse_str(text) {
                Ok(s) => Known::Avro(Arc::new(s)),
                Err(e) => {
                    Known::Refused(format!("schema id {id} does not parse as Avro: {e}").into())
                }
            },
            #[cfg(feature = "protobuf")]
            "PROTOBUF" => protobuf::parse(id, text),
            other => Known::Refused(format!("schema id {id} is a {other} schema").into()),
        };
        self.put(id, known.clone());
        self.texts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (schema_type.map(str::to_string), text.to_string()));
        known
    }

    /// What is known of `id`, or the error of a record naming an id nobody looked up (the
    /// caller is to fetch each id before the engine meets it).
    pub(crate) fn known(&self, id: u32) -> Result<Known, EventError> {
        self.get(id).ok_or_else(|| EventError::Schema {
            id,
            message: "not fetched from the schema registry".to_string(),
        })
    }

    /// Record that `id` cannot be used, and why.
    pub fn refuse(&self, id: u32, why: &str) {
        self.put(id, Known::Refused(why.into()));
    }

    fn put(&self, id: u32, k: Known) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, k);
    }
}

/// The schema id [`container_records`] gives the records of a plain Avro data file.
pub const FILE_SCHEMA_ID: u32 = 0;

/// The metadata key of a records file ([`write_records_file`]): the records' value format.
const RECORDS_FORMAT: &str = "kml.wire.format";
/// The metadata key of a records file: the writer schemas the records name, as JSON.
const RECORDS_SCHEMAS: &str = "kml.wire.schemas";
/// The schema of a records file: one field, the record's value as it was on the topic.
const RECORDS_SCHEMA: &str = r#"{"type": "record", "name": "Record", "namespace": "kml.wire",
    "fields": [{"name": "value", "type": "bytes"}]}"#;

/// One writer schema in a records file's metadata, as the registry gave it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSchema {
    id: u32,
    schema_type: Option<String>,
    schema: String,
}

/// The records of an Avro object container file (`.avro`) in the wire format, and the value
/// format to decode them with: so that a history file goes through the decoder a topic's records
/// go through. Two kinds of file:
///
/// - an Avro data file (any writer): each record framed under [`FILE_SCHEMA_ID`], the file's
///   writer schema under that id;
/// - a records file ([`write_records_file`]): the records as they were on a topic, Avro or
///   Protobuf, each naming its own writer schema, all of which the file's metadata holds.
///
/// Blocks compressed with `null` or `deflate` are read; other codecs are refused.
pub fn container_records(path: &std::path::Path) -> Result<(Format, Vec<Vec<u8>>), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = apache_avro::Reader::new(std::io::BufReader::new(f))
        .map_err(|e| format!("not an Avro object container file: {e}"))?;
    let schema = reader.writer_schema().clone();
    let meta = reader.user_metadata();
    if let Some(kind) = meta.get(RECORDS_FORMAT) {
        let kind = String::from_utf8_lossy(kind).into_owned();
        let stored: Vec<StoredSchema> = meta
            .get(RECORDS_SCHEMAS)
            .map(|b| serde_json::from_slice(b))
            .transpose()
            .map_err(|e| format!("a records file whose schemas do not read: {e}"))?
            .unwrap_or_default();
        let schemas = Schemas::new();
        for s in &stored {
            schemas.insert(s.id, s.schema_type.as_deref(), &s.schema);
        }
        let format = match kind.as_str() {
            "avro" => Format::Avro(schemas),
            #[cfg(feature = "protobuf")]
            "protobuf" => Format::Protobuf(schemas),
            other => {
                return Err(format!(
                    "a records file of value format `{other}`, not read here"
                ));
            }
        };
        let mut records = Vec::new();
        for (i, value) in reader.enumerate() {
            match value.map_err(|e| format!("record {}: {e}", i + 1))? {
                Avro::Record(fields) => match fields.into_iter().next() {
                    Some((_, Avro::Bytes(b))) => records.push(b),
                    _ => return Err(format!("record {}: no `value` bytes", i + 1)),
                },
                _ => return Err(format!("record {}: not a record", i + 1)),
            }
        }
        return Ok((format, records));
    }
    let mut records = Vec::new();
    for (i, value) in reader.enumerate() {
        let value = value.map_err(|e| format!("record {}: {e}", i + 1))?;
        let mut framed = vec![0];
        framed.extend_from_slice(&FILE_SCHEMA_ID.to_be_bytes());
        framed.extend(
            apache_avro::to_avro_datum(&schema, value)
                .map_err(|e| format!("record {}: {e}", i + 1))?,
        );
        records.push(framed);
    }
    let schemas = Schemas::new();
    schemas.put(FILE_SCHEMA_ID, Known::Avro(Arc::new(schema)));
    Ok((Format::Avro(schemas), records))
}

/// Write `records` (values in the wire format, as on a topic) to a records file at `path`: an
/// Avro object container file (deflate blocks) of the values as they are, with the writer
/// schemas `schemas` holds in its metadata, which [`container_records`] reads back with the
/// decoder of `format`. A topic range read for training is kept so.
pub fn write_records_file<'a>(
    path: &std::path::Path,
    format: &Format,
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    let (kind, schemas) = match format {
        Format::Json => return Err("a records file holds Avro or Protobuf records".to_string()),
        Format::Avro(s) => ("avro", s),
        #[cfg(feature = "protobuf")]
        Format::Protobuf(s) => ("protobuf", s),
    };
    let stored: Vec<StoredSchema> = {
        let texts = schemas.texts.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<StoredSchema> = texts
            .iter()
            .map(|(id, (t, text))| StoredSchema {
                id: *id,
                schema_type: t.clone(),
                schema: text.clone(),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    };
    let schema = Schema::parse_str(RECORDS_SCHEMA).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = apache_avro::Writer::with_codec(
        &schema,
        std::io::BufWriter::new(file),
        apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
    );
    let err = |e: apache_avro::Error| format!("{}: {e}", path.display());
    w.add_user_metadata(RECORDS_FORMAT.to_string(), kind)
        .map_err(err)?;
    let stored = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    w.add_user_metadata(RECORDS_SCHEMAS.to_string(), stored)
        .map_err(err)?;
    for r in records {
        w.append(Avro::Record(vec![(
            "value".to_string(),
            Avro::Bytes(r.to_vec()),
        )]))
        .map_err(err)?;
    }
    w.into_inner()
        .map_err(err)?
        .into_inner()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// How the declared fields are found in one writer schema: the position of each in the
/// writer's record.
#[derive(Clone, Debug)]
struct Plan {
    schema: Arc<Schema>,
    positions: Vec<usize>,
}

/// Check a writer schema against the declared fields: each must be a field of the writer's
/// record (by name or alias) whose type can be read as the declared type. Returns each declared
/// field's position in the writer's record, or a message naming the field and both types.
pub fn resolve_fields(
    schema: &Schema,
    fields: &[(String, FieldType)],
) -> Result<Vec<usize>, String> {
    let Schema::Record(record) = schema else {
        return Err(format!("the schema is {}, not a record", kind_name(schema)));
    };
    let name = record.name.fullname(None);
    fields
        .iter()
        .map(|(field, ty)| {
            let (pos, f) = record
                .fields
                .iter()
                .enumerate()
                .find(|(_, f)| {
                    f.name == *field
                        || f.aliases
                            .as_ref()
                            .is_some_and(|a| a.iter().any(|a| a == field))
                })
                .ok_or_else(|| format!("field {field}: missing from record {name}"))?;
            match unreadable(&f.schema, *ty) {
                None => Ok(pos),
                Some(found) => Err(format!(
                    "field {field}: record {name} gives it as {found}, which cannot be read as \
                     the declared {}",
                    ty.name()
                )),
            }
        })
        .collect()
}

/// The writer type that cannot be read as `ty`, if any (every branch of a union must be).
fn unreadable(s: &Schema, ty: FieldType) -> Option<String> {
    use FieldType as T;
    let ok = match s {
        Schema::Null => true,
        Schema::Union(u) => {
            return u.variants().iter().find_map(|v| unreadable(v, ty));
        }
        Schema::Int | Schema::Long => matches!(ty, T::Int | T::Float | T::Timestamp),
        Schema::Float | Schema::Double => ty == T::Float,
        Schema::String | Schema::Enum(_) | Schema::Uuid | Schema::Bytes => {
            matches!(ty, T::Str | T::Timestamp)
        }
        Schema::TimestampMillis | Schema::TimestampMicros => ty == T::Timestamp,
        _ => false,
    };
    (!ok).then(|| kind_name(s))
}

fn kind_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("a record ({})", r.name.fullname(None)),
        Schema::Union(_) => "a union".to_string(),
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => {
            "a local timestamp (no time zone: declare it as str, or write timestamp-millis)"
                .to_string()
        }
        other => {
            let k: apache_avro::schema::SchemaKind = other.into();
            format!("{k:?}").to_lowercase()
        }
    }
}

/// The pipeline's event fields with their types, and the names of those whose numbers may come
/// as strings: what a decoder of its events needs.
pub(crate) fn declared(p: &Pipeline) -> (Vec<(String, FieldType)>, Vec<&str>) {
    let fields = p.fields().iter().map(|c| (c.name.clone(), c.ty)).collect();
    let strings = p
        .numbers_from_strings
        .iter()
        .filter_map(|&i| p.fields().get(i).map(|c| c.name.as_str()))
        .collect();
    (fields, strings)
}

/// For each field, whether it is named in `from_strings`.
pub(crate) fn string_mask(fields: &[(String, FieldType)], from_strings: &[&str]) -> Vec<bool> {
    fields
        .iter()
        .map(|(n, _)| from_strings.contains(&n.as_str()))
        .collect()
}

/// Decodes records in the wire format into the event fields of a pipeline (see the module
/// documentation for the rules).
#[derive(Debug, Clone)]
pub struct AvroDecoder {
    schemas: Arc<Schemas>,
    fields: Vec<(String, FieldType)>,
    from_strings: Vec<bool>,
    plans: Map<u32, Result<Plan, Arc<str>>>,
    strings: Vec<Set<Arc<str>>>,
}

impl AvroDecoder {
    /// A decoder for the event fields of `p`, reading writer schemas from `schemas`.
    pub fn new(p: &Pipeline, schemas: Arc<Schemas>) -> Self {
        let (fields, strings) = declared(p);
        Self::for_fields(fields, &strings, schemas)
    }

    /// A decoder for these fields, in this order (the offline engine reads Avro history with
    /// it); the int and float fields named in `from_strings` also take strings holding numbers.
    pub fn for_fields(
        fields: impl IntoIterator<Item = (String, FieldType)>,
        from_strings: &[&str],
        schemas: Arc<Schemas>,
    ) -> Self {
        let fields: Vec<(String, FieldType)> = fields.into_iter().collect();
        let from_strings = string_mask(&fields, from_strings);
        Self {
            schemas,
            strings: vec![Set::default(); fields.len()],
            fields,
            from_strings,
            plans: Map::default(),
        }
    }

    /// Decode `bytes` into `row[..n_fields]`.
    pub fn decode(&mut self, bytes: &[u8], row: &mut [Value]) -> Result<(), EventError> {
        let (id, payload) = split_header(bytes)?;
        let plan = match self.plans.get(&id) {
            Some(p) => p,
            None => {
                let plan = match self.schemas.known(id)? {
                    Known::Refused(why) => Err(why),
                    Known::Avro(schema) => resolve_fields(&schema, &self.fields)
                        .map(|positions| Plan { schema, positions })
                        .map_err(Arc::from),
                    #[cfg(feature = "protobuf")]
                    Known::Protobuf(_) => Err(Arc::from(format!(
                        "schema id {id} is a PROTOBUF schema; the topic's value format is avro"
                    ))),
                };
                self.plans.entry(id).or_insert(plan)
            }
        };
        let plan = match plan {
            Ok(p) => p,
            Err(why) => {
                return Err(EventError::Schema {
                    id,
                    message: why.to_string(),
                });
            }
        };
        let size = payload.len();
        let mut input = Strict {
            rest: payload,
            short: false,
        };
        let record = apache_avro::from_avro_datum(&plan.schema, &mut input, None).map_err(|e| {
            EventError::Record {
                id,
                message: e.to_string(),
            }
        })?;
        // apache-avro reads a union's branch index cut off by the end of the input as null
        // (lenient to writers that leave trailing optional fields out): a truncated record
        // would decode with nulls. Any read past the end refuses the record instead.
        if input.short {
            return Err(EventError::Record {
                id,
                message: format!("truncated: the record's {size} bytes end before its last field"),
            });
        }
        let payload = input.rest;
        if !payload.is_empty() {
            return Err(EventError::Record {
                id,
                message: format!(
                    "{} bytes left over after the record's {} (the record does not match its schema)",
                    payload.len(),
                    size - payload.len()
                ),
            });
        }
        let Avro::Record(values) = record else {
            return Err(EventError::Record {
                id,
                message: "not a record".to_string(),
            });
        };
        for (i, &pos) in plan.positions.iter().enumerate() {
            let (field, ty) = &self.fields[i];
            let value = values.get(pos).map_or(&Avro::Null, |(_, v)| v);
            row[i] = typed(
                raw(value),
                *ty,
                field,
                self.from_strings[i],
                &mut self.strings[i],
            )?;
        }
        Ok(())
    }
}

/// A record's bytes, noting any read past their end.
struct Strict<'a> {
    rest: &'a [u8],
    short: bool,
}

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.rest.len());
        if n < buf.len() {
            self.short = true;
        }
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// An Avro value as the scalar the JSON decoder would have met.
fn raw(v: &Avro) -> Raw<'_> {
    use std::borrow::Cow::{Borrowed, Owned};
    match v {
        Avro::Null => Raw::Null,
        Avro::Boolean(_) => Raw::Bool,
        Avro::Int(i) => Raw::Int(i64::from(*i)),
        Avro::Long(i) | Avro::TimestampMillis(i) => Raw::Int(*i),
        Avro::TimestampMicros(i) => Raw::Int(i.div_euclid(1000)),
        Avro::Float(x) if x.is_infinite() => Raw::Compound("an infinite number"),
        Avro::Double(x) if x.is_infinite() => Raw::Compound("an infinite number"),
        Avro::Float(x) => Raw::Float(f64::from(*x)),
        Avro::Double(x) => Raw::Float(*x),
        Avro::String(s) | Avro::Enum(_, s) => Raw::Str(Borrowed(s)),
        Avro::Uuid(u) => Raw::Str(Owned(u.to_string())),
        Avro::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Raw::Str(Borrowed(s)),
            Err(_) => Raw::Compound("bytes that are not UTF-8"),
        },
        Avro::Union(_, v) => raw(v),
        Avro::Array(_) => Raw::Compound("an array"),
        Avro::Map(_) => Raw::Compound("a map"),
        Avro::Record(_) => Raw::Compound("a record"),
        _ => Raw::Compound("an Avro value of another logical type"),
    }
}
