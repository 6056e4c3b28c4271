//! Errors: bad data files, bad events.

/// A data file (history or a lookup table) that cannot be read, and where: shown as
/// `file:line:col: column `name`: message`, each part only when known (a Parquet file has
/// columns but no lines; a CSV cell has a line and a column name; a JSON line has a line and a
/// character position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), col.map(|c| format!(":{c}")).unwrap_or_default(), if column.is_empty() { String::new() } else { format!(": column `{column}`") })]
pub struct DataError {
    /// The file.
    pub file: String,
    /// 1-based line (the header is line 1), when known.
    pub line: Option<usize>,
    /// 1-based character position in the line, when known.
    pub col: Option<usize>,
    /// The column (or JSON field), or empty.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

impl DataError {
    fn new(file: &str, line: Option<usize>, column: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line,
            col: None,
            column: column.to_string(),
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self::new(file, None, "", message)
    }

    /// An error at a line and column of a file.
    pub fn at(file: &str, line: usize, column: &str, message: impl Into<String>) -> Self {
        Self::new(file, Some(line), column, message)
    }

    /// An error about a whole column of a file without lines (Parquet).
    pub fn column(file: &str, column: &str, message: impl Into<String>) -> Self {
        Self::new(file, None, column, message)
    }

    /// An error in the CSV reader (a record with the wrong number of fields, bytes that are not
    /// UTF-8, an I/O failure), said in one sentence with the line it is on.
    pub fn csv(file: &str, e: &csv::Error) -> Self {
        let line = e.position().map(|p| p.line() as usize);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("the row has {len} fields where the header has {expected_len}"),
            csv::ErrorKind::Utf8 { err, .. } => format!(
                "field {} is not UTF-8 (at byte {} of the field)",
                err.field() + 1,
                err.valid_up_to()
            ),
            csv::ErrorKind::Io(io) => io.to_string(),
            _ => e.to_string(),
        };
        Self::new(file, line, "", message)
    }
}

/// Why one event could not be turned into features. The scorer sends such events to the
/// dead-letter topic with this message; nothing here panics on any input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The bytes are not a JSON object.
    #[error("malformed JSON at line {line} column {column}: {message}")]
    Malformed {
        /// 1-based line in the payload.
        line: usize,
        /// 1-based column in the payload.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The bytes are not UTF-8, which JSON must be (RFC 8259).
    #[error(
        "invalid UTF-8 at byte {offset}: an event must be UTF-8 JSON (RFC 8259), in every field"
    )]
    NotUtf8 {
        /// 0-based offset of the first byte that is not valid UTF-8.
        offset: usize,
    },
    /// A declared field appears more than once, so which value counts would be a guess.
    #[error("field `{field}` appears twice in the event")]
    Duplicate {
        /// The field.
        field: String,
    },
    /// A declared field is absent (JSON `null` is a present null).
    #[error("field `{field}` is missing")]
    Missing {
        /// The field.
        field: String,
    },
    /// A field holds a value of another type.
    #[error("field `{field}` should be {expected}, got {found}")]
    WrongType {
        /// The field.
        field: String,
        /// The declared type.
        expected: &'static str,
        /// What the event holds.
        found: String,
    },
    /// The event time cannot be computed.
    #[error("no event time: {0}")]
    Time(String),
    /// The event is further ahead of the stream's progress than `[events] max_future` allows.
    #[error(
        "future event: event time {event_time} is more than {} ahead of the stream's progress {progress} ([events] max_future)", crate::time::format_duration(*max_future_ms)
    )]
    Future {
        /// The event's time (RFC 3339).
        event_time: String,
        /// The stream's progress (RFC 3339).
        progress: String,
        /// The bound.
        max_future_ms: i64,
    },
    /// The event is older than its key's newest event minus the allowed lateness.
    #[error(
        "late event for key {key:?}: event time {event_time} is more than {} ([events] lateness) behind the key's newest event {watermark}", crate::time::format_duration(*lateness_ms)
    )]
    Late {
        /// The entity key.
        key: String,
        /// The event's time (RFC 3339).
        event_time: String,
        /// The key's newest event time (RFC 3339).
        watermark: String,
        /// The allowed lateness.
        lateness_ms: i64,
    },
    /// Upstream of a repartition: the event is older than the newest event of its input
    /// partition minus the allowed lateness, behind the watermark the merge orders events by.
    #[error(
        "late event: event time {event_time} is more than {} ([events] lateness) behind the newest event of its input partition {newest} (a pipeline that repartitions orders events behind a watermark per input partition)", crate::time::format_duration(*lateness_ms)
    )]
    LateInPartition {
        /// The event's time (RFC 3339).
        event_time: String,
        /// The partition's newest event time (RFC 3339).
        newest: String,
        /// The allowed lateness.
        lateness_ms: i64,
    },
    /// A value in the schema registry's wire format that cannot even be split into its header
    /// and record ([`crate::wire`]).
    #[error("{message}")]
    Wire {
        /// What is wrong, with the byte counts.
        message: String,
    },
    /// The writer schema a record names cannot be used: unknown to the registry, not Avro, or
    /// without a declared field.
    #[error("schema id {id}: {message}")]
    Schema {
        /// The schema id from the record's header.
        id: u32,
        /// Why.
        message: String,
    },
    /// A record (Avro or Protobuf) that does not decode with the schema it names.
    #[error("the record does not decode with its schema (id {id}): {message}")]
    Record {
        /// The schema id from the record's header.
        id: u32,
        /// The decoder's message.
        message: String,
    },
}

impl EventError {
    /// A short name of the kind of error, for counts and metrics labels: `malformed`,
    /// `not_utf8`, `duplicate`, `missing`, `wrong_type`, `time`, `future`, `late`, or for the
    /// registry's wire format `wire`, `schema` and `record`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::Duplicate { .. } => "duplicate",
            Self::Missing { .. } => "missing",
            Self::WrongType { .. } => "wrong_type",
            Self::Time(_) => "time",
            Self::Future { .. } => "future",
            Self::Late { .. } | Self::LateInPartition { .. } => "late",
            Self::Wire { .. } => "wire",
            Self::Schema { .. } => "schema",
            Self::Record { .. } => "record",
        }
    }
}
