//! Typed values and rows: what both engines compute on.

use std::fmt;
use std::sync::Arc;

/// The hash map of the engines' hot paths (window keys, lookup tables, field names): foldhash,
/// several times faster than the standard SipHash on short keys and seeded per process, so
/// that keys from event data cannot be chosen to collide in every process alike.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set that goes with [`Map`].
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The declared type of a field of the event schema or of a lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// 64-bit signed integer.
    Int,
    /// 64-bit float. NaN is read as null, so that no feature is ever NaN.
    Float,
    /// UTF-8 text.
    Str,
    /// An instant, RFC 3339 text (`2013-01-01T06:00:00Z`), held as milliseconds since the epoch (UTC).
    Timestamp,
}

impl FieldType {
    /// Parse a type name as written in a pipeline file.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "int" => Self::Int,
            "float" => Self::Float,
            "str" => Self::Str,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    /// The name as written in a pipeline file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::Float => "float",
            Self::Str => "str",
            Self::Timestamp => "timestamp",
        }
    }
}

/// One cell. Timestamps are [`Value::Int`] milliseconds since the epoch.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// Missing: `NA` in CSV, `null` in JSON, no lookup match, an empty window.
    #[default]
    Null,
    /// An integer (or a timestamp in epoch milliseconds).
    Int(i64),
    /// A float; never NaN (NaN is normalised to [`Value::Null`] on the way in).
    Float(f64),
    /// Text, shared so that copying a joined value does not allocate.
    Str(#[serde(with = "arc_str")] Arc<str>),
}

impl Value {
    /// A float value, with NaN mapped to null.
    pub fn float(x: f64) -> Self {
        if x.is_nan() {
            Self::Null
        } else {
            Self::Float(x)
        }
    }

    /// A float value from an option, with NaN and non-finite results mapped to null.
    pub fn finite(x: Option<f64>) -> Self {
        match x {
            Some(x) if x.is_finite() => Self::Float(x),
            _ => Self::Null,
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The value as a number: ints widen to f64, text is not a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Int(i) => Some(i as f64),
            Self::Float(x) => Some(x),
            _ => None,
        }
    }

    /// The value as an integer (floats are not truncated: they are not integers).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a message key: text as it is (no quotes), numbers printed, null none.
    pub fn key_text(&self) -> Option<String> {
        match self {
            Self::Null => None,
            Self::Str(s) => Some(s.to_string()),
            v => Some(v.to_string()),
        }
    }
}

impl PartialEq for Value {
    /// Bitwise equality for floats: the parity contract is about identical bits.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Null, Self::Null) => true,
            (Self::Int(a), Self::Int(b)) => a == b,
            (Self::Float(a), Self::Float(b)) => a.to_bits() == b.to_bits(),
            (Self::Str(a), Self::Str(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x:?}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A key of per-entity state or of a lookup: the non-null values a key column can hold.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A text key.
    Str(#[serde(with = "arc_str")] Arc<str>),
}

impl Key {
    /// The key as a user wrote it: text quoted, an integer as its digits.
    pub fn shown(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Str(s) => format!("{s:?}"),
        }
    }

    /// The key of a value; null has none (null keys never match and keep no state).
    pub fn of(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(Self::Int(*i)),
            Value::Str(s) => Some(Self::Str(s.clone())),
            // Float keys are refused when the spec is checked.
            Value::Float(_) | Value::Null => None,
        }
    }
}

/// A row: values by column position in the pipeline's layout ([`crate::Pipeline::layout`]).
pub type Row = Vec<Value>;

/// Shared text as a plain string on the wire (serde's `rc` feature would change serde for the
/// whole dependency graph).
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(de).map(Arc::from)
    }
}
