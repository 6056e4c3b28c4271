//! Structured logs: one JSON object per line on stderr, with a time, a level and a message.

use serde_json::{Map, Value, json};

/// Write one log line. `fields` is a JSON object (or `Value::Null` for none).
pub fn log(level: &str, msg: &str, fields: Value) {
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    obj.insert("level".into(), level.into());
    obj.insert("msg".into(), msg.into());
    if let Value::Object(f) = fields {
        obj.extend(f);
    }
    eprintln!("{}", Value::Object(obj));
}

/// `log("info", ...)`.
pub fn info(msg: &str, fields: Value) {
    log("info", msg, fields);
}

/// `log("warn", ...)`.
pub fn warn(msg: &str, fields: Value) {
    log("warn", msg, fields);
}

/// `log("error", ...)`.
pub fn error(msg: &str, fields: Value) {
    log("error", msg, fields);
}

/// Fields for a message with no fields.
pub fn none() -> Value {
    json!({})
}
