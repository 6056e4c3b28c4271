//! Pipeline files: parse TOML, check it once, and hand out a [`Pipeline`] that both engines trust.
//!
//! A pipeline is a chain of columns. The event's declared fields come first, then `event_time`,
//! then the columns each lookup and as-of join adds, then window aggregates, then derived features,
//! in file order. A column may only use columns defined before it, which is what makes "a feature
//! used before it is defined" an error with a line number instead of a runtime surprise.

mod check;
mod raw;

use serde::Serialize;

use crate::value::FieldType;

pub use check::SpecError;

/// A checked pipeline. Build one with [`Pipeline::parse`].
///
/// Its serialized form is what the feature fingerprint ([`crate::fingerprint`]) and the
/// scorer's "same window state" check hash: the semantics only. The name, the description and
/// where the history and the tables are read from are left out (the tables' content is in the
/// fingerprint through their digests), so renaming, rewording, or training from a copy of the
/// same events in another file or format changes neither.
#[derive(Clone, Debug, Serialize)]
pub struct Pipeline {
    /// The pipeline's name (`[pipeline] name`), used as the default model name.
    #[serde(skip)]
    pub name: String,
    /// Free text.
    #[serde(skip)]
    pub description: String,
    /// Where history lives, relative to the pipeline file (`[events] path`).
    #[serde(skip)]
    pub events_path: Option<String>,
    /// Number of declared event fields: layout columns `0..n_fields`.
    pub n_fields: usize,
    /// The entity key column: the topic's partition key.
    pub key: usize,
    /// How far behind the newest event of its key an event may arrive and still be aggregated.
    pub lateness_ms: i64,
    /// Forget the window state of a key whose newest event is this far behind the newest event
    /// of any key (`[events] idle_key_ttl`); `None` keeps every key. Left out of the serialized
    /// spec when unset, so fingerprints of pipelines without it do not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_key_ttl_ms: Option<i64>,
    /// How far ahead of the stream's progress an event may be (`[events] max_future`, default
    /// [`DEFAULT_MAX_FUTURE_MS`]); one further ahead is refused before it touches any window
    /// (see [`crate::Stages`]). Left out of the serialized spec when it is the default, so that
    /// fingerprints of pipelines that do not set it are those they had before the bound existed.
    #[serde(skip_serializing_if = "is_default_max_future")]
    pub max_future_ms: i64,
    /// Int and float fields that also accept a JSON string holding a number
    /// (`[events] numbers_from_strings`), as event-field indices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub numbers_from_strings: Vec<usize>,
    /// How `event_time` is computed from the fields.
    pub time: EventTime,
    /// Filters, all of which an event must pass.
    pub filters: Vec<Predicate>,
    /// Exact-match lookups.
    pub lookups: Vec<Lookup>,
    /// As-of joins on time.
    pub asofs: Vec<Asof>,
    /// Per-entity windowed aggregations.
    pub windows: Vec<Window>,
    /// Derived columns computed after the joins and before the windows (`before_windows =
    /// true`): windows may key or aggregate by them. Layout columns
    /// `pre_derive_first_col..pre_derive_first_col + pre_derives.len()`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pre_derives: Vec<Derive>,
    /// The first layout column of [`Pipeline::pre_derives`] (the column after the joins').
    #[serde(skip)]
    pub pre_derive_first_col: usize,
    /// Derived features, computed after the windows: the last layout columns.
    pub derives: Vec<Derive>,
    /// What goes into the model's input vector, and how it is encoded.
    pub features: Features,
    /// The training label, if declared.
    pub label: Option<Predicate>,
    /// Events at or after this instant form the validation split.
    pub valid_from: Option<i64>,
    /// Every column, in order.
    pub layout: Vec<Column>,
    /// The `[model]` table, checked by the trainer; not part of the feature fingerprint.
    #[serde(skip)]
    pub model: Option<toml::Table>,
    /// The file the pipeline was read from, for messages only.
    #[serde(skip)]
    pub file: String,
}

/// The bound on events ahead of the stream when `[events] max_future` is not set: seven days.
///
/// Long enough for clock skew, and for a stream (or a partition of a topic) that is quiet for a
/// long weekend: since progress is measured in event time, an event that is legitimately first
/// after a gap longer than the bound is refused. Short enough that an event dated a year ahead
/// (a broken clock, a typo in the year, seconds read as milliseconds) is refused instead of
/// locking its window keys out for a year.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 7 * 86_400_000;

fn is_default_max_future(ms: &i64) -> bool {
    *ms == DEFAULT_MAX_FUTURE_MS
}

/// A named, typed column of the layout.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Column {
    /// The column's name, unique in the pipeline.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
}

/// The unit of an int event-time field: what one step of it is.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    /// Seconds since 1970-01-01T00:00:00Z.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds (truncated to the millisecond, toward negative infinity).
    Us,
    /// Nanoseconds (truncated to the millisecond, toward negative infinity).
    Ns,
}

impl EpochUnit {
    /// Parse `s`, `ms`, `us` or `ns`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "s" => Self::S,
            "ms" => Self::Ms,
            "us" => Self::Us,
            "ns" => Self::Ns,
            _ => return None,
        })
    }

    /// The name in a pipeline file.
    pub fn name(self) -> &'static str {
        match self {
            Self::S => "s",
            Self::Ms => "ms",
            Self::Us => "us",
            Self::Ns => "ns",
        }
    }

    /// `v` units since the epoch as epoch milliseconds, `None` on overflow.
    pub fn to_ms(self, v: i64) -> Option<i64> {
        match self {
            Self::S => v.checked_mul(1000),
            Self::Ms => Some(v),
            Self::Us => Some(v.div_euclid(1000)),
            Self::Ns => Some(v.div_euclid(1_000_000)),
        }
    }
}

/// How the event time is computed.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum EventTime {
    /// A timestamp field, used as is, or an int field counting `unit`s since the epoch.
    Field {
        /// The timestamp or int column.
        col: usize,
        /// The unit of an int column (required for one, absent for a timestamp).
        #[serde(skip_serializing_if = "Option::is_none")]
        unit: Option<EpochUnit>,
    },
    /// A local date-time text field (`format`, chrono's strftime syntax) in a time zone.
    Local {
        /// The str column.
        col: usize,
        /// The format, e.g. `%Y-%m-%d %H:%M:%S`; a format without a time of day means midnight.
        format: String,
        /// IANA time zone name.
        tz: TzName,
    },
    /// A local date plus a local `hhmm` wall-clock time in a time zone.
    LocalHhmm {
        /// Year, month and day columns.
        date: [usize; 3],
        /// The `hhmm` column.
        hhmm: usize,
        /// A scheduled `hhmm` that tells on which side of midnight `hhmm` falls.
        reference: Option<usize>,
        /// IANA time zone name.
        tz: TzName,
    },
}

impl EventTime {
    /// The columns the event time is computed from.
    pub fn columns(&self) -> Vec<usize> {
        match self {
            Self::Field { col, .. } | Self::Local { col, .. } => vec![*col],
            Self::LocalHhmm {
                date,
                hhmm,
                reference,
                ..
            } => date
                .iter()
                .copied()
                .chain([*hhmm])
                .chain(*reference)
                .collect(),
        }
    }
}

/// A time zone, kept with its name so that specs serialize readably.
#[derive(Clone, Debug)]
pub struct TzName(pub chrono_tz::Tz);

impl Serialize for TzName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

/// A comparison of one column with a literal, for filters and labels.
#[derive(Clone, Debug, Serialize)]
pub struct Predicate {
    /// The column compared.
    pub col: usize,
    /// The comparison.
    pub op: CmpOp,
    /// The literal(s); empty for `not_null` and `is_null`, several for `in`.
    pub values: Vec<Literal>,
}

/// Comparison operators. Any comparison with null is false, except `is_null`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// The value is not null.
    NotNull,
    /// The value is null.
    IsNull,
    /// Equal.
    Eq,
    /// Not equal (null is neither equal nor not equal).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// Equal to one of a list.
    In,
}

impl CmpOp {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "not_null" => Self::NotNull,
            "is_null" => Self::IsNull,
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "le" => Self::Le,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "in" => Self::In,
            _ => return None,
        })
    }
}

/// A literal in a predicate, already matched to the column's type.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Literal {
    /// An integer, compared exactly with int columns and as f64 with float columns.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Str(String),
}

/// An exact-match join with a lookup table.
#[derive(Clone, Debug, Serialize)]
pub struct Lookup {
    /// The table's name.
    pub name: String,
    /// The table's file, relative to the pipeline file (its content, not its place, is in the
    /// fingerprint).
    #[serde(skip)]
    pub path: String,
    /// The event column matched against the table's key.
    pub on: usize,
    /// The table's key column; its values must be unique.
    pub key: String,
    /// The key column's type (that of `on`).
    pub key_ty: FieldType,
    /// Table columns brought in, with their types; each becomes `prefix + name`.
    pub columns: Vec<(String, FieldType)>,
    /// Layout index of the first added column.
    pub first_col: usize,
}

/// An as-of join: the latest row of the table for the key whose time is at or before the event time.
#[derive(Clone, Debug, Serialize)]
pub struct Asof {
    /// The table's name.
    pub name: String,
    /// The table's file, relative to the pipeline file (its content, not its place, is in the
    /// fingerprint).
    #[serde(skip)]
    pub path: String,
    /// The event column matched against the table's key.
    pub on: usize,
    /// The table's key column.
    pub key: String,
    /// The key column's type.
    pub key_ty: FieldType,
    /// The table's timestamp column.
    pub time: String,
    /// Rows older than this (event time minus row time) do not match.
    pub tolerance_ms: Option<i64>,
    /// Table columns brought in (the time column among them).
    pub columns: Vec<(String, FieldType)>,
    /// Layout index of the first added column.
    pub first_col: usize,
}

/// Per-entity aggregates over the events of the same key in a trailing time window.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// The window's name.
    pub name: String,
    /// The column whose value names the entity.
    pub key: usize,
    /// Window length: an earlier event at time `s` is in the window of an event at `t` when
    /// `t - length < s <= t`.
    pub length_ms: i64,
    /// Whether the event itself counts in its own window.
    pub include_current: bool,
    /// The aggregates.
    pub aggs: Vec<Agg>,
    /// Layout index of the first aggregate column.
    pub first_col: usize,
}

/// One aggregate of a window.
#[derive(Clone, Debug, Serialize)]
pub struct Agg {
    /// Output column name.
    pub name: String,
    /// The function.
    pub func: AggFn,
    /// The aggregated column (`count` without one counts events).
    pub field: Option<usize>,
}

/// Aggregate functions. Nulls are skipped; an empty window gives 0 for counts and sums and null
/// for the rest.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Events in the window (or non-null values of the field).
    Count,
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Sample standard deviation (n - 1); null below two values.
    Std,
    /// The most recent non-null value.
    Last,
    /// Number of distinct non-null values.
    DistinctCount,
}

impl AggFn {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "mean" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "std" => Self::Std,
            "last" => Self::Last,
            "distinct_count" => Self::DistinctCount,
            _ => return None,
        })
    }
}

/// A derived feature.
#[derive(Clone, Debug, Serialize)]
pub struct Derive {
    /// Output column name.
    pub name: String,
    /// The function.
    pub func: DeriveFn,
    /// Argument columns.
    pub args: Vec<usize>,
}

/// Functions for derived features. Null in, null out; a result that is not a finite number is null.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum DeriveFn {
    /// Local hour of day, 0 to 23.
    HourOfDay {
        /// Time zone.
        tz: TzName,
    },
    /// Local day of week, Monday 0 to Sunday 6.
    DayOfWeek {
        /// Time zone.
        tz: TzName,
    },
    /// Local month, 1 to 12.
    MonthOfYear {
        /// Time zone.
        tz: TzName,
    },
    /// Local calendar year.
    Year {
        /// Time zone.
        tz: TzName,
    },
    /// Local day of month, 1 to 31.
    DayOfMonth {
        /// Time zone.
        tz: TzName,
    },
    /// Local ISO 8601 week of the year, 1 to 53.
    WeekOfYear {
        /// Time zone.
        tz: TzName,
    },
    /// `ln(1 + x)`; null for `x <= -1`.
    Log1p,
    /// `a / b` (or `a / value`); null when the divisor is 0.
    Ratio {
        /// The constant second operand, when there is one argument.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
    },
    /// `a - b` (or `a - value`).
    Sub {
        /// The constant second operand.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
    },
    /// `a + b` (or `a + value`).
    Add {
        /// The constant second operand.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
    },
    /// `a * b` (or `a * value`).
    Mul {
        /// The constant second operand.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
    },
    /// Whether a multi-valued text field (`a|b|c`, split on `sep`) holds `value`: 1 or 0.
    Has {
        /// The value looked for, compared with each part exactly.
        value: String,
        /// The separator.
        sep: String,
    },
    /// How many non-empty values a multi-valued text field holds.
    CountValues {
        /// The separator.
        sep: String,
    },
    /// The number of bounds at or below `x` (0 to `bounds.len()`).
    Bucket {
        /// Strictly increasing bucket boundaries.
        bounds: Vec<f64>,
    },
}

/// The model's input: numeric columns (standard-scaled) then categorical columns (one-hot).
#[derive(Clone, Debug, Serialize)]
pub struct Features {
    /// Numeric columns, scaled with the training split's mean and standard deviation.
    pub numeric: Vec<usize>,
    /// Categorical columns, one-hot over the training split's vocabulary plus one "other" slot.
    pub categorical: Vec<usize>,
    /// A category needs this many training rows to get its own slot.
    pub min_count: u64,
}

impl Pipeline {
    /// Parse and check pipeline text. `file` names the source in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, SpecError> {
        check::check(text, file)
    }

    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.layout.iter().position(|c| c.name == name)
    }

    /// Index of the `event_time` column.
    pub fn event_time_col(&self) -> usize {
        self.n_fields
    }

    /// The declared event fields.
    pub fn fields(&self) -> &[Column] {
        &self.layout[..self.n_fields]
    }

    /// `(name, path)` of every table the pipeline joins: lookups, then as-of tables.
    pub fn table_paths(&self) -> impl Iterator<Item = (&str, &str)> {
        let lookups = self
            .lookups
            .iter()
            .map(|l| (l.name.as_str(), l.path.as_str()));
        lookups.chain(
            self.asofs
                .iter()
                .map(|a| (a.name.as_str(), a.path.as_str())),
        )
    }

    /// Windows keyed by something other than the entity key. Online, their events are spread
    /// over partitions, so a consumer of some partitions sees only part of each window; they
    /// need a repartition step before they can be computed live.
    pub fn repartition_windows(&self) -> impl Iterator<Item = &Window> {
        self.windows.iter().filter(move |w| w.key != self.key)
    }
}
