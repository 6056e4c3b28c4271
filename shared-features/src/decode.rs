//! Decoding one JSON event into the declared fields of a row, without building a JSON tree.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::error::EventError;
use crate::spec::Pipeline;
use crate::time::rfc3339;
use crate::value::{FieldType, Map, Set, Value};

/// Distinct strings remembered per field for sharing (see [`Decoder`]); past this many, new
/// values of that field are allocated each time, so that an id-like field cannot grow memory.
const INTERNED_PER_FIELD: usize = 4096;

/// Decodes JSON objects into the event fields of a pipeline.
///
/// Types are strict, so that a producer's mistake is caught rather than guessed at: an `int`
/// field takes JSON integers, a `float` field takes any JSON number, a `str` field takes strings,
/// a `timestamp` field takes an RFC 3339 string or integer epoch milliseconds; an int or float
/// field listed in `[events] numbers_from_strings` also takes a string holding a number. `null` is a null
/// value; an absent field is an error, and so is a declared field given twice. Fields the
/// pipeline does not declare are ignored, but the whole event must be UTF-8 (RFC 8259 section
/// 8.1): an invalid byte anywhere, in an undeclared field too, refuses the event, because a
/// producer that writes one is broken and its other fields cannot be trusted either.
#[derive(Debug, Clone)]
pub struct Decoder {
    index: Map<Box<str>, usize>,
    /// For each key position of the last event, its name and what it resolved to: events from
    /// one producer list their keys in one order, so most keys cost one comparison, not a hash.
    memo: Vec<(Box<str>, Option<usize>)>,
    /// For each field, the strings seen in it so far (up to [`INTERNED_PER_FIELD`]): categorical
    /// fields repeat a few values, and sharing them saves an allocation and a free per field
    /// and event.
    strings: Vec<Set<Arc<str>>>,
    names: Vec<String>,
    types: Vec<FieldType>,
    /// Per field: whether a JSON string holding a number is read as one (`[events]
    /// numbers_from_strings`).
    from_strings: Vec<bool>,
}

impl Decoder {
    /// A decoder for the event fields of `p`.
    pub fn new(p: &Pipeline) -> Self {
        let fields = p.fields();
        let mut d = Self::for_fields(fields.iter().map(|c| (c.name.clone(), c.ty)));
        for &i in &p.numbers_from_strings {
            if let Some(f) = d.from_strings.get_mut(i) {
                *f = true;
            }
        }
        d
    }

    /// Read JSON strings holding numbers in these int and float fields as numbers.
    pub fn with_numbers_from_strings<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        for n in names {
            if let Some(&i) = self.index.get(n) {
                self.from_strings[i] = true;
            }
        }
        self
    }

    /// A decoder for these fields, in this order (the offline engine reads JSON-lines history
    /// with it, so that a file and a topic of the same events decode alike).
    pub fn for_fields(fields: impl IntoIterator<Item = (String, FieldType)>) -> Self {
        let (names, types): (Vec<String>, Vec<FieldType>) = fields.into_iter().unzip();
        Self {
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone().into_boxed_str(), i))
                .collect(),
            memo: Vec::new(),
            strings: vec![Set::default(); names.len()],
            from_strings: vec![false; names.len()],
            names,
            types,
        }
    }

    /// The field an error is about, if it names one.
    pub fn field_of(e: &EventError) -> Option<&str> {
        match e {
            EventError::Missing { field }
            | EventError::WrongType { field, .. }
            | EventError::Duplicate { field } => Some(field),
            _ => None,
        }
    }

    /// Decode `bytes` into `row[..n_fields]`.
    pub fn decode(&mut self, bytes: &[u8], row: &mut [Value]) -> Result<(), EventError> {
        let n = self.types.len();
        let mut seen = Seen::new(n);
        let mut problem = None;
        // serde_json checks UTF-8 only in the strings it reads, not in values it skips; one
        // pass here covers every byte, and lets the parser skip its own checks.
        let text = std::str::from_utf8(bytes).map_err(|e| EventError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let mut de = serde_json::Deserializer::from_str(text);
        let mut memo = std::mem::take(&mut self.memo);
        let mut strings = std::mem::take(&mut self.strings);
        let visitor = EventVisitor {
            dec: self,
            memo: &mut memo,
            strings: &mut strings,
            row: &mut row[..n],
            seen: &mut seen,
            problem: &mut problem,
        };
        let result = de::Deserializer::deserialize_map(&mut de, visitor).and_then(|()| de.end());
        self.memo = memo;
        self.strings = strings;
        if let Some(p) = problem {
            return Err(p);
        }
        if let Err(e) = result {
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            return Err(EventError::Malformed {
                line: e.line(),
                column: e.column(),
                message,
            });
        }
        if let Some(i) = seen.first_unset(n) {
            return Err(EventError::Missing {
                field: self.names[i].clone(),
            });
        }
        Ok(())
    }
}

/// Which declared fields an event has given: a bit mask for up to 64 fields, no allocation.
enum Seen {
    Bits(u64),
    Many(Vec<bool>),
}

impl Seen {
    fn new(n: usize) -> Self {
        if n <= 64 {
            Seen::Bits(0)
        } else {
            Seen::Many(vec![false; n])
        }
    }

    /// Mark field `i`; returns whether it was marked already.
    fn mark(&mut self, i: usize) -> bool {
        match self {
            Seen::Bits(b) => {
                let was = *b >> i & 1 == 1;
                *b |= 1 << i;
                was
            }
            Seen::Many(v) => std::mem::replace(&mut v[i], true),
        }
    }

    fn first_unset(&self, n: usize) -> Option<usize> {
        match self {
            Seen::Bits(b) => (0..n).find(|i| *b >> i & 1 == 0),
            Seen::Many(v) => v.iter().position(|s| !s),
        }
    }
}

struct EventVisitor<'a> {
    dec: &'a Decoder,
    memo: &'a mut Vec<(Box<str>, Option<usize>)>,
    strings: &'a mut [Set<Arc<str>>],
    row: &'a mut [Value],
    seen: &'a mut Seen,
    problem: &'a mut Option<EventError>,
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(slot) = map.next_key_seed(KeySeed {
            dec: self.dec,
            memo: self.memo,
            position,
        })? {
            position += 1;
            let Some(i) = slot else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let raw = map.next_value::<Raw<'de>>()?;
            let field = &self.dec.names[i];
            if self.seen.mark(i) {
                *self.problem = Some(EventError::Duplicate {
                    field: field.clone(),
                });
                return Err(de::Error::custom("duplicate field"));
            }
            let from_strings = self.dec.from_strings[i];
            match typed(
                raw,
                self.dec.types[i],
                field,
                from_strings,
                &mut self.strings[i],
            ) {
                Ok(v) => self.row[i] = v,
                Err(e) => {
                    *self.problem = Some(e);
                    return Err(de::Error::custom("bad field"));
                }
            }
        }
        Ok(())
    }
}

struct KeySeed<'a> {
    dec: &'a Decoder,
    memo: &'a mut Vec<(Box<str>, Option<usize>)>,
    position: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        if let Some((name, slot)) = self.memo.get(self.position)
            && **name == *v
        {
            return Ok(*slot);
        }
        let slot = self.dec.index.get(v).copied();
        // Remember what this position held, for the next event (bounded by the key count of
        // the widest event the pipeline declares plus what it ignores, up to 256 positions).
        if self.position < 256 {
            if self.memo.len() <= self.position {
                self.memo.resize(self.position + 1, (Box::from(""), None));
            }
            self.memo[self.position] = (Box::from(v), slot);
        }
        Ok(slot)
    }
}

/// A scalar as found (in JSON, or in another value format: see [`crate::wire`]), before it is
/// checked against the declared type.
pub(crate) enum Raw<'de> {
    Null,
    Int(i64),
    /// Integers beyond i64, and every number with a fraction or exponent.
    Float(f64),
    Str(std::borrow::Cow<'de, str>),
    Bool,
    Compound(&'static str),
}

impl<'de> de::Deserialize<'de> for Raw<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(std::borrow::Cow::Owned(v.to_string())))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Compound("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Compound("an object"))
    }
}

/// `raw` as a value of type `ty`, or why not; one rule for every value format.
pub(crate) fn typed(
    raw: Raw<'_>,
    ty: FieldType,
    field: &str,
    from_strings: bool,
    strings: &mut Set<Arc<str>>,
) -> Result<Value, EventError> {
    let wrong = |found: String| EventError::WrongType {
        field: field.to_string(),
        expected: ty.name(),
        found,
    };
    match (raw, ty) {
        (Raw::Null, _) => Ok(Value::Null),
        (Raw::Int(i), FieldType::Int | FieldType::Timestamp) => Ok(Value::Int(i)),
        (Raw::Int(i), FieldType::Float) => Ok(Value::Float(i as f64)),
        (Raw::Float(x), FieldType::Float) => Ok(Value::float(x)),
        (Raw::Str(s), FieldType::Str) => Ok(Value::Str(intern(strings, &s))),
        (Raw::Str(s), FieldType::Timestamp) => rfc3339(&s)
            .map(Value::Int)
            .map_err(|why| wrong(format!("the string {:?}, {why}", truncate(&s)))),
        (Raw::Str(s), FieldType::Int) if from_strings => {
            s.parse::<i64>().map(Value::Int).map_err(|_| {
                wrong(format!(
                    "the string {:?}, which is not an integer (numbers_from_strings reads digits \
                 with an optional sign)",
                    truncate(&s)
                ))
            })
        }
        (Raw::Str(s), FieldType::Float) if from_strings => match s.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Value::Float(x)),
            _ => Err(wrong(format!(
                "the string {:?}, which is not a finite number",
                truncate(&s)
            ))),
        },
        // A number sent as a string: say how to accept it, only when it is one.
        (Raw::Str(s), FieldType::Int | FieldType::Float) if s.parse::<f64>().is_ok() => {
            Err(wrong(format!(
                "the string {:?} (to read numbers sent as strings, declare `[events] \
                 numbers_from_strings = [\"{field}\"]`)",
                truncate(&s)
            )))
        }
        (Raw::Float(x), _) => Err(wrong(format!("the number {x}"))),
        (Raw::Int(i), _) => Err(wrong(format!("the number {i}"))),
        (Raw::Str(s), _) => Err(wrong(format!("the string {:?}", truncate(&s)))),
        (Raw::Bool, _) => Err(wrong("a boolean".to_string())),
        (Raw::Compound(kind), _) => Err(wrong(kind.to_string())),
    }
}

/// The shared copy of `s` among a field's strings, made if there is room.
pub(crate) fn intern(strings: &mut Set<Arc<str>>, s: &str) -> Arc<str> {
    if let Some(a) = strings.get(s) {
        return a.clone();
    }
    let a = Arc::<str>::from(s);
    if strings.len() < INTERNED_PER_FIELD {
        strings.insert(a.clone());
    }
    a
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::for_fields([("s".to_string(), FieldType::Str)])
    }

    fn decode(d: &mut Decoder, json: &str) -> Value {
        let mut row = vec![Value::Null];
        d.decode(json.as_bytes(), &mut row).unwrap();
        row.pop().unwrap()
    }

    #[test]
    fn repeated_strings_are_shared_and_new_ones_past_the_cap_still_decode() {
        let mut d = decoder();
        let (Value::Str(a), Value::Str(b)) = (
            decode(&mut d, r#"{"s":"JFK"}"#),
            decode(&mut d, r#"{"s":"JFK"}"#),
        ) else {
            panic!("not strings");
        };
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second JFK is not the first one's copy"
        );
        for i in 0..INTERNED_PER_FIELD + 10 {
            let v = decode(&mut d, &format!(r#"{{"s":"id-{i}"}}"#));
            assert_eq!(v, Value::Str(Arc::from(format!("id-{i}").as_str())));
        }
        assert_eq!(d.strings[0].len(), INTERNED_PER_FIELD);
        // An escaped string (not borrowed from the input) is shared by its decoded text.
        let Value::Str(c) = decode(&mut d, r#"{"s":"J\u0046K"}"#) else {
            panic!("not a string");
        };
        assert!(Arc::ptr_eq(&a, &c));
    }
}
