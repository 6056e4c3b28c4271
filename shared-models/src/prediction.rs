//! The prediction record and the last step of scoring, shared by every scorer: `scorer run`,
//! `replay` and `serve`, and the WebAssembly build. One function writes the record, so a
//! prediction is the same bytes wherever it was made.

use serde::Serialize;
use shared_features::Value;
use shared_features::time::format_timestamp;

use crate::serving::Servable;

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePos<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The lineage of a score from a model server: its URL, and the model's name and version as
/// the server answered them (`model`, `version` and `fingerprint` stay the bundle's, whose
/// pipeline and encoding computed the features).
#[derive(Serialize, Clone, Copy, Debug)]
pub struct ServedBy<'a> {
    /// The server's URL.
    pub url: &'a str,
    /// The model's name on the server.
    pub model: &'a str,
    /// Its version (empty when the server gave none).
    pub version: &'a str,
}

/// One prediction as written to the output topic.
#[derive(Serialize)]
struct Prediction<'a> {
    key: &'a str,
    event_time: &'a str,
    event_time_ms: i64,
    score: f64,
    decision: bool,
    model: &'a str,
    version: u64,
    fingerprint: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    /// With `--model-server`: the model that gave the score.
    #[serde(skip_serializing_if = "Option::is_none")]
    served_by: Option<ServedBy<'a>>,
}

/// The payload of a message, when it is one a scorer takes: present, and at most `max` bytes.
/// Otherwise the dead-letter reason.
pub fn admit(payload: Option<&[u8]>, max: usize) -> Result<&[u8], String> {
    let Some(payload) = payload else {
        return Err("empty message: no payload".into());
    };
    if payload.len() > max {
        return Err(format!(
            "oversized payload: {} bytes, the limit is {max} (--max-event-bytes)",
            payload.len()
        ));
    }
    Ok(payload)
}

/// Write `text` of a key value into `buf` (null: nothing).
pub fn key_text(v: &Value, buf: &mut Vec<u8>) {
    buf.clear();
    match v {
        Value::Null => {}
        Value::Str(s) => buf.extend_from_slice(s.as_bytes()),
        v => {
            use std::io::Write;
            let _ = write!(buf, "{v}");
        }
    }
}

/// A full feature row's event time (epoch ms), its key (as text, into `key`) and its encoded
/// vector (into `x`): what a prediction needs before the model scores it.
pub fn encode(m: &Servable, row: &[Value], key: &mut Vec<u8>, x: &mut Vec<f64>) -> i64 {
    let p = &*m.pipeline;
    let event_time = row[p.event_time_col()].as_i64().unwrap_or_default();
    key_text(&row[p.key], key);
    m.fitted.transform(p, row, x);
    event_time
}

/// Score a full feature row with the bundle's model and write its prediction record into `out`;
/// `key` and `x` are scratch buffers that keep the key and the encoded vector. Returns the event
/// time, the score and the decision.
pub fn predict(
    m: &Servable,
    row: &[Value],
    pos: SourcePos<'_>,
    key: &mut Vec<u8>,
    x: &mut Vec<f64>,
    out: &mut Vec<u8>,
) -> (i64, f64, bool) {
    let event_time = encode(m, row, key, x);
    let score = m.model.predict_proba(x);
    let decision = m.model.decide(score);
    // Keys are text from a JSON string or a number: valid UTF-8 either way.
    let text = std::str::from_utf8(key).unwrap_or_default();
    write_prediction(out, m, text, event_time, (score, decision), pos, None);
    (event_time, score, decision)
}

/// Write the JSON value of a prediction into `out`: the event's key and time, the score and
/// decision, the bundle (`m`) and the source position, and where a model server gave the
/// score, its lineage.
pub fn write_prediction(
    out: &mut Vec<u8>,
    m: &Servable,
    key: &str,
    event_time: i64,
    (score, decision): (f64, bool),
    pos: SourcePos<'_>,
    served_by: Option<ServedBy<'_>>,
) {
    let time = format_timestamp(event_time);
    out.clear();
    let pred = Prediction {
        key,
        event_time: &time,
        event_time_ms: event_time,
        score,
        decision,
        model: &m.name,
        version: m.version,
        fingerprint: &m.fingerprint,
        topic: pos.topic,
        partition: pos.partition,
        offset: pos.offset,
        served_by,
    };
    // Plain strings and numbers: serializing into a Vec cannot fail, and a NaN score becomes
    // null (serde_json), which the reader rejects loudly.
    let _ = serde_json::to_writer(&mut *out, &pred);
}
