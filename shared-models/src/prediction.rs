//! The prediction record and the last step of scoring, shared by every scorer: `scorer run`,
//! `replay` and `serve`, and the WebAssembly build. One function writes the record, so a
//! prediction is the same bytes wherever it was made.

use serde::Serialize;
use shared_features::Value;
use shared_features::time::TimestampText;

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

/// One prediction as written to the output topic: the record [`write_prediction`] writes, field
/// by field (this serialization is its test's oracle).
#[cfg(test)]
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

/// The bundle's part of a prediction record (`,"model":…,"version":…,"fingerprint":…`), the
/// same for every event it scores: [`crate::Servable`] keeps it.
pub(crate) fn lineage_json(name: &str, version: u64, fingerprint: &str) -> Box<str> {
    let mut out = Vec::with_capacity(name.len() + fingerprint.len() + 48);
    out.extend_from_slice(b",\"model\":");
    json_str(&mut out, name);
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
    out.extend_from_slice(b",\"fingerprint\":");
    json_str(&mut out, fingerprint);
    // serde_json writes UTF-8 (valid input, escapes ASCII).
    String::from_utf8(out).unwrap_or_default().into_boxed_str()
}

/// `s` as a JSON string (serde_json's escaping, as for every other string in the record).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

thread_local! {
    /// The day's text of the last event time written on this thread: consecutive events
    /// mostly share their day.
    static TIME_TEXT: std::cell::RefCell<(TimestampText, String)> = Default::default();
}

/// Write the JSON value of a prediction into `out`: the event's key and time, the score and
/// decision, the bundle (`m`) and the source position, and where a model server gave the
/// score, its lineage.
///
/// The fields are written in the record's order, each value by serde_json (strings escaped,
/// a NaN score as `null`, which the reader rejects loudly); the bundle's part is written once
/// per model ([`crate::Servable`]), and the event time without an allocation. A test checks
/// the bytes against serde's serialization of the record.
pub fn write_prediction(
    out: &mut Vec<u8>,
    m: &Servable,
    key: &str,
    event_time: i64,
    (score, decision): (f64, bool),
    pos: SourcePos<'_>,
    served_by: Option<ServedBy<'_>>,
) {
    write_record(
        out,
        &m.lineage_json,
        key,
        event_time,
        (score, decision),
        pos,
        served_by,
    );
}

/// [`write_prediction`] with the bundle's part (`lineage`, from [`lineage_json`]).
fn write_record(
    out: &mut Vec<u8>,
    lineage: &str,
    key: &str,
    event_time: i64,
    (score, decision): (f64, bool),
    pos: SourcePos<'_>,
    served_by: Option<ServedBy<'_>>,
) {
    let mut n = itoa::Buffer::new();
    out.clear();
    out.extend_from_slice(b"{\"key\":");
    json_str(out, key);
    out.extend_from_slice(b",\"event_time\":\"");
    TIME_TEXT.with_borrow_mut(|(text, buf)| {
        buf.clear();
        text.push(event_time, buf);
        out.extend_from_slice(buf.as_bytes());
    });
    out.extend_from_slice(b"\",\"event_time_ms\":");
    out.extend_from_slice(n.format(event_time).as_bytes());
    out.extend_from_slice(b",\"score\":");
    let _ = serde_json::to_writer(&mut *out, &score);
    out.extend_from_slice(if decision {
        b",\"decision\":true"
    } else {
        b",\"decision\":false"
    });
    out.extend_from_slice(lineage.as_bytes());
    out.extend_from_slice(b",\"topic\":");
    json_str(out, pos.topic);
    out.extend_from_slice(b",\"partition\":");
    out.extend_from_slice(n.format(pos.partition).as_bytes());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(n.format(pos.offset).as_bytes());
    if let Some(sb) = served_by {
        out.extend_from_slice(b",\"served_by\":");
        let _ = serde_json::to_writer(&mut *out, &sb);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_features::time::format_timestamp;

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9_-]{0,12}",
            any::<String>(),
            Just("quote \" back \\ tab \t nul \u{0} e\u{301} \u{1F600}".to_string()),
        ]
    }

    fn any_score() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0..1.0f64,
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1e-300),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The record written field by field is serde's serialization of the record, byte for
        /// byte, for any text (escapes, control characters, astral planes), any event time
        /// (also outside years 0 to 9999), any score (NaN, infinities) and with or without a
        /// model server's lineage; times of consecutive events share the cached day.
        #[test]
        fn the_record_is_serdes_serialization(
            name in any_text(),
            version in any::<u64>(),
            fingerprint in any_text(),
            events in proptest::collection::vec(
                (any_text(), prop_oneof![any::<i64>(), 1_356_998_400_000i64..1_420_070_400_000],
                 any_score(), any::<bool>(), any_text(), any::<i32>(), any::<i64>(),
                 proptest::option::of((any_text(), any_text(), any_text()))),
                1..6,
            ),
        ) {
            let lineage = lineage_json(&name, version, &fingerprint);
            let mut out = Vec::new();
            for (key, t, score, decision, topic, partition, offset, sb) in &events {
                let served_by = sb.as_ref().map(|(url, model, version)| ServedBy {
                    url, model, version,
                });
                let pos = SourcePos { topic, partition: *partition, offset: *offset };
                write_record(&mut out, &lineage, key, *t, (*score, *decision), pos, served_by);
                let time = format_timestamp(*t);
                let expected = serde_json::to_vec(&Prediction {
                    key,
                    event_time: &time,
                    event_time_ms: *t,
                    score: *score,
                    decision: *decision,
                    model: &name,
                    version,
                    fingerprint: &fingerprint,
                    topic,
                    partition: *partition,
                    offset: *offset,
                    served_by,
                })
                .unwrap();
                prop_assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&expected)
                );
            }
        }
    }
}
