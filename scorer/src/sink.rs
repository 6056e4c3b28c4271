//! The sink: a producer whose records carry a [`Tag`] (their source partition slot and event
//! sequence) to their delivery report, so that offsets become committable as reports arrive
//! ([`crate::offsets`]) while consuming and scoring go on. Nothing here waits for an
//! acknowledgement except [`Sink::flush`], used on revocation, shutdown and at the end of a
//! replay.
//!
//! - Retries are librdkafka's (idempotent producer: order kept, no duplicates from retries); a
//!   report with an error is a failure for good, and goes back to the caller.
//! - Backpressure: when librdkafka's queue is full, records wait in order in a backlog of the
//!   sink's own; the caller pauses consumption until it drains, so memory stays bounded by the
//!   queue's limits (`queue.buffering.max.messages`, `queue.buffering.max.kbytes`).
//! - Size: a record larger than the producer's `message.max.bytes` is never sent as it is. A
//!   dead letter is cut to fit ([`DeadLetter`]) with its original size and SHA-256 in headers;
//!   a report of `MessageSizeTooLarge` from a broker with a smaller limit returns the record's
//!   head so that the caller can send a reduced dead letter in its place.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, KafkaArgs};
use crate::offsets::Tag;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Room kept under the limit for the record's framing and headers librdkafka adds.
const FRAMING_BYTES: usize = 512;
/// Bytes of the original payload a reduced dead letter keeps.
pub const REDUCED_PAYLOAD_BYTES: usize = 4096;

/// Which topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// Predictions.
    Output,
    /// Dead letters.
    DeadLetters,
    /// The repartition topic ([`crate::merge`]), to a given partition or by key.
    Repartition(Option<i32>),
    /// The shadows' predictions (`scorer run --shadow`).
    Shadows,
}

/// A delivery report.
#[derive(Debug)]
pub struct Report {
    /// The record's tag.
    pub tag: Tag,
    /// `None` when acknowledged.
    pub failure: Option<Failure>,
}

/// A record that librdkafka gave up on, with enough of it to send a reduced dead letter.
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub error: KafkaError,
    /// The record's key.
    pub key: Vec<u8>,
    /// The record's headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its first [`REDUCED_PAYLOAD_BYTES`] payload bytes.
    pub payload_head: Vec<u8>,
    /// Its payload's size.
    pub payload_len: usize,
}

impl Failure {
    /// Whether the broker refused the record for its size (so a smaller one may pass).
    pub fn too_large(&self) -> bool {
        matches!(
            self.error,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        )
    }
}

/// The producer's context: routes logs and collects delivery reports for the caller.
#[derive(Default)]
pub struct SinkCtx {
    reports: Mutex<Vec<Report>>,
}

impl ClientContext for SinkCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }
}

impl ProducerContext for SinkCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let failure = match result {
            Ok(_) => None,
            Err((error, msg)) => Some(Failure {
                error: error.clone(),
                key: msg.key().unwrap_or_default().to_vec(),
                headers: msg
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                payload_head: msg
                    .payload()
                    .map(|p| p[..p.len().min(REDUCED_PAYLOAD_BYTES)].to_vec())
                    .unwrap_or_default(),
                payload_len: msg.payload_len(),
            }),
        };
        // A poisoned lock means a panic elsewhere; the report is then lost to the caller, which
        // keeps the event uncommitted: at worst a repeat, never a loss.
        if let Ok(mut v) = self.reports.lock() {
            v.push(Report {
                tag: Tag(tag),
                failure,
            });
        }
    }
}

/// A record waiting for room in librdkafka's queue.
#[derive(Debug)]
struct Owned {
    to: To,
    key: Vec<u8>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
    headers: Vec<(&'static str, Vec<u8>)>,
    tag: Tag,
}

/// Why a record was not enqueued.
#[derive(Debug)]
pub enum SendError {
    /// Larger than `message.max.bytes`: the caller dead-letters the event instead.
    TooLarge(usize),
    /// librdkafka refused it for another reason (unknown topic, bad configuration...).
    Refused(KafkaError),
}

/// Producer, topics and backlog.
pub struct Sink {
    producer: ThreadedProducer<SinkCtx>,
    output: String,
    dlq: String,
    repartition: String,
    shadows: String,
    max_message_bytes: usize,
    backlog: VecDeque<Owned>,
    spare: Vec<Report>,
}

impl Sink {
    /// A producer for `output` (predictions) and `dlq` (dead letters), transactional when
    /// `transactional_id` is given. `message.max.bytes` and other properties come from `-X`.
    pub fn new(
        kafka: &KafkaArgs,
        output: &str,
        dlq: &str,
        transactional_id: Option<&str>,
    ) -> Result<Self> {
        let mut conf = vec![
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            // Bounded memory: at most this much waits in librdkafka's queue.
            ("queue.buffering.max.kbytes", "65536"),
        ];
        if let Some(id) = transactional_id {
            conf.push(("transactional.id", id));
        }
        let max_message_bytes = match kafka.property("message.max.bytes") {
            Some(v) => v
                .parse()
                .with_context(|| format!("-X message.max.bytes={v} is not a number"))?,
            None => DEFAULT_MAX_MESSAGE_BYTES,
        };
        let producer: ThreadedProducer<SinkCtx> = kafka
            .config(&conf)
            .create_with_context(SinkCtx::default())
            .context("cannot create the producer")?;
        Ok(Self {
            producer,
            output: output.to_string(),
            dlq: dlq.to_string(),
            repartition: String::new(),
            shadows: String::new(),
            max_message_bytes,
            backlog: VecDeque::new(),
            spare: Vec::new(),
        })
    }

    /// Send [`To::Repartition`] records to `topic`.
    pub fn with_repartition(mut self, topic: &str) -> Self {
        self.repartition = topic.to_string();
        self
    }

    /// Send [`To::Shadows`] records to `topic`.
    pub fn with_shadows(mut self, topic: &str) -> Self {
        self.shadows = topic.to_string();
        self
    }

    /// The largest record the producer sends (`message.max.bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Whether a record of these parts fits under `message.max.bytes`.
    pub fn fits(&self, key: &[u8], payload: &[u8], headers: &[(&str, &[u8])]) -> bool {
        record_size(key, payload, headers) + FRAMING_BYTES <= self.max_message_bytes
    }

    /// Enqueue a record (librdkafka copies it). When the queue is full it waits in the backlog,
    /// behind any record already there: see [`Sink::backlogged`].
    pub fn send(
        &mut self,
        to: To,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: &[(&'static str, &[u8])],
        tag: Tag,
    ) -> Result<(), SendError> {
        if !self.fits(key, payload, headers) {
            return Err(SendError::TooLarge(record_size(key, payload, headers)));
        }
        if !self.backlog.is_empty() {
            self.backlog
                .push_back(owned(to, key, payload, timestamp, headers, tag));
            return Ok(());
        }
        match self.enqueue(to, key, payload, timestamp, headers, tag) {
            Ok(()) => Ok(()),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                self.backlog
                    .push_back(owned(to, key, payload, timestamp, headers, tag));
                Ok(())
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                Err(SendError::TooLarge(record_size(key, payload, headers)))
            }
            Err(e) => Err(SendError::Refused(e)),
        }
    }

    fn enqueue(
        &self,
        to: To,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: &[(&str, &[u8])],
        tag: Tag,
    ) -> Result<(), KafkaError> {
        let topic = match to {
            To::Output => &self.output,
            To::DeadLetters => &self.dlq,
            To::Repartition(_) => &self.repartition,
            To::Shadows => &self.shadows,
        };
        let mut rec = BaseRecord::with_opaque_to(topic, tag.0)
            .key(key)
            .payload(payload);
        if let To::Repartition(Some(p)) = to {
            rec = rec.partition(p);
        }
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                h = h.insert(Header {
                    key: name,
                    value: Some(*value),
                });
            }
            rec = rec.headers(h);
        }
        if let Some(t) = timestamp {
            rec = rec.timestamp(t);
        }
        self.producer.send(rec).map_err(|(e, _)| e)
    }

    /// Records waiting for room in librdkafka's queue: while there are any, stop consuming and
    /// call [`Sink::drain_backlog`].
    pub fn backlogged(&self) -> usize {
        self.backlog.len()
    }

    /// Move backlogged records into librdkafka's queue until it is full again. A record refused
    /// for another reason is returned with its tag (its event is then a delivery failure).
    pub fn drain_backlog(&mut self) -> Vec<(Tag, KafkaError)> {
        let mut refused = Vec::new();
        while let Some(r) = self.backlog.front() {
            let headers: Vec<(&str, &[u8])> =
                r.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            match self.enqueue(r.to, &r.key, &r.payload, r.timestamp, &headers, r.tag) {
                Ok(()) => {}
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => break,
                Err(e) => refused.push((r.tag, e)),
            }
            self.backlog.pop_front();
        }
        refused
    }

    /// Enqueue, waiting (without consuming) while the queue is full: for commands that do not
    /// consume in a group (feed, replay). Gives up when `token` is cancelled.
    #[allow(clippy::too_many_arguments)]
    pub fn send_waiting(
        &mut self,
        to: To,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: &[(&'static str, &[u8])],
        tag: Tag,
        token: &CancellationToken,
    ) -> Result<()> {
        match self.send(to, key, payload, timestamp, headers, tag) {
            Ok(()) => {}
            Err(SendError::TooLarge(n)) => {
                anyhow::bail!("a record of {n} bytes exceeds message.max.bytes")
            }
            Err(SendError::Refused(e)) => return Err(e).context("cannot produce"),
        }
        while self.backlogged() > 0 {
            if token.is_cancelled() {
                anyhow::bail!("cancelled with {} records not sent", self.backlogged());
            }
            std::thread::sleep(Duration::from_millis(1));
            if let Some((_, e)) = self.drain_backlog().into_iter().next() {
                return Err(e).context("cannot produce");
            }
        }
        Ok(())
    }

    /// Take the delivery reports that arrived since the last call.
    pub fn reports(&mut self) -> Vec<Report> {
        let mut out = std::mem::take(&mut self.spare);
        if let Ok(mut v) = self.producer.context().reports.lock() {
            std::mem::swap(&mut *v, &mut out);
        }
        out
    }

    /// Give a drained report vector back, so that its allocation is reused.
    pub fn recycle(&mut self, mut v: Vec<Report>) {
        v.clear();
        self.spare = v;
    }

    /// Wait until every enqueued record has its delivery report, at most `timeout`, and no
    /// longer than until `token` is cancelled (checked every 100 ms). Returns whether everything
    /// was delivered or failed (no record still in flight).
    pub fn flush(&mut self, timeout: Duration, token: Option<&CancellationToken>) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.drain_backlog();
            if self.backlog.is_empty()
                && self
                    .producer
                    .flush(Duration::from_millis(100).min(timeout))
                    .is_ok()
            {
                return true;
            }
            if Instant::now() >= deadline || token.is_some_and(CancellationToken::is_cancelled) {
                return false;
            }
        }
    }

    /// Records enqueued and not yet reported.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0) + self.backlog.len()
    }

    /// librdkafka's fatal error, if the producer has one (fenced, or its idempotence state
    /// lost by the broker): it can then only be replaced.
    pub fn fatal(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Begin a transaction.
    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Initialise transactions (fencing older producers with the same transactional id).
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.init_transactions(timeout)
    }

    /// Send consumer offsets inside the open transaction, then commit it.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<()> {
        if self.backlogged() > 0 && !self.flush(timeout, None) {
            anyhow::bail!(
                "{} records still waiting for room in the producer's queue",
                self.backlogged()
            );
        }
        if offsets.count() > 0 {
            self.producer
                .send_offsets_to_transaction(offsets, group, timeout)
                .context("cannot send the offsets to the transaction")?;
        }
        self.producer
            .commit_transaction(timeout)
            .context("cannot commit the transaction")
    }

    /// Abort the open transaction; its records stay invisible to read_committed consumers.
    pub fn abort(&mut self, timeout: Duration) -> Result<(), KafkaError> {
        self.backlog.clear();
        self.producer.abort_transaction(timeout)
    }
}

fn record_size(key: &[u8], payload: &[u8], headers: &[(&str, &[u8])]) -> usize {
    key.len()
        + payload.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

fn owned(
    to: To,
    key: &[u8],
    payload: &[u8],
    timestamp: Option<i64>,
    headers: &[(&'static str, &[u8])],
    tag: Tag,
) -> Owned {
    Owned {
        to,
        key: key.to_vec(),
        payload: payload.to_vec(),
        timestamp,
        headers: headers.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        tag,
    }
}

/// A dead letter's payload, cut to fit when the original is too large to forward whole.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    /// The bytes to send: the original, or its head.
    pub payload: &'a [u8],
    /// When cut: the original size and SHA-256.
    pub cut: Option<Cut>,
}

/// What a cut dead letter tells of its original payload.
#[derive(Debug)]
pub struct Cut {
    /// The original size in bytes (decimal text).
    pub bytes: String,
    /// SHA-256 of the original payload (hex).
    pub sha256: String,
}

impl Cut {
    /// The headers `kml.payload.bytes`, `kml.payload.sha256` and `kml.payload.truncated`.
    pub fn headers(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("kml.payload.bytes", self.bytes.as_bytes()),
            ("kml.payload.sha256", self.sha256.as_bytes()),
            ("kml.payload.truncated", b"true"),
        ]
    }
}

impl<'a> DeadLetter<'a> {
    /// The payload as it fits in `room` bytes.
    pub fn fit(original: &'a [u8], room: usize) -> Self {
        if original.len() <= room {
            return Self {
                payload: original,
                cut: None,
            };
        }
        let keep = room.min(REDUCED_PAYLOAD_BYTES.max(room / 2));
        let digest = Sha256::digest(original);
        let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            payload: &original[..keep],
            cut: Some(Cut {
                bytes: original.len().to_string(),
                sha256,
            }),
        }
    }

    /// Fit `original` into a dead letter with this key and these other headers under
    /// `max_message_bytes`.
    pub fn for_limit(
        original: &'a [u8],
        max_message_bytes: usize,
        key: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Self {
        let fixed: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let room = max_message_bytes
            .saturating_sub(FRAMING_BYTES)
            .saturating_sub(key.len())
            .saturating_sub(fixed)
            .saturating_sub(256); // the cut's own headers
        Self::fit(original, room)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `kml.source.topic`, `.partition` and `.offset` headers of a consumed message, formatted
/// into the caller's buffers: the position a dead letter (and, with lineage headers, a
/// prediction) carries.
pub fn position_headers<'a>(
    msg: &'a BorrowedMessage<'_>,
    pbuf: &'a mut itoa::Buffer,
    obuf: &'a mut itoa::Buffer,
) -> [(&'static str, &'a [u8]); 3] {
    [
        ("kml.source.topic", msg.topic().as_bytes()),
        (
            "kml.source.partition",
            pbuf.format(msg.partition()).as_bytes(),
        ),
        ("kml.source.offset", obuf.format(msg.offset()).as_bytes()),
    ]
}

/// The `kml.source.*` headers of an event's position.
pub fn source_headers<'a>(
    pos: crate::score::SourcePos<'a>,
    pbuf: &'a mut itoa::Buffer,
    obuf: &'a mut itoa::Buffer,
) -> [(&'static str, &'a [u8]); 3] {
    [
        ("kml.source.topic", pos.topic.as_bytes()),
        (
            "kml.source.partition",
            pbuf.format(pos.partition).as_bytes(),
        ),
        ("kml.source.offset", obuf.format(pos.offset).as_bytes()),
    ]
}

/// A prediction's lineage headers: its source position and the model (`kml.model`).
pub fn lineage_headers<'a>(
    position: &[(&'static str, &'a [u8]); 3],
    model: &'a str,
) -> [(&'static str, &'a [u8]); 4] {
    let [t, p, o] = *position;
    [t, p, o, ("kml.model", model.as_bytes())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_that_fit_are_whole_and_others_are_cut_with_size_and_hash() {
        let small = b"{\"a\": 1}";
        let d = DeadLetter::fit(small, 100);
        assert_eq!(d.payload, small);
        assert!(d.cut.is_none());
        let big = vec![b'x'; 2_000_000];
        let d = DeadLetter::fit(&big, 999_000);
        assert_eq!(d.payload.len(), 499_500);
        let cut = d.cut.unwrap();
        assert_eq!(cut.bytes, "2000000");
        let hash = cut.sha256;
        // `hashlib.sha256(b"x" * 2_000_000).hexdigest()` in Python.
        assert_eq!(
            hash,
            "be8889d3b8893c11d290b8dcf682164c326a90e6998f6bddb25d9a3a02daf666"
        );
        assert_eq!(DeadLetter::fit(&big, 1000).payload.len(), 1000);
    }

    #[test]
    fn error_texts_are_cut_at_a_character_boundary() {
        assert_eq!(cut_str("héllo", 2), "h");
        assert_eq!(cut_str("héllo", 3), "hé");
        assert_eq!(cut_str("abc", 10), "abc");
    }
}
