//! Kafka clients: configuration with pass-through properties, topic creation, logging of
//! librdkafka's own events, and producing a batch until every record is acknowledged.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde_json::json;

use crate::log;

/// Connection settings every command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, env = "KML_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Any librdkafka property, e.g. `-X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN`;
    /// repeatable, applied last.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

impl KafkaArgs {
    /// A client configuration with `extra` defaults, then the user's `-X` properties on top.
    pub fn config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Routes librdkafka's logs and errors into our structured log, and remembers partitions
/// revoked by a rebalance so that their window state is dropped.
#[derive(Default)]
pub struct Ctx {
    /// Partitions revoked since the scoring loop last looked.
    pub revoked: Mutex<Vec<(String, i32)>>,
    /// Records whose delivery failed since the last look: `(index, error)`.
    pub failed: Mutex<Vec<(usize, KafkaError)>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let lvl = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => "error",
            RDKafkaLogLevel::Warning => "warn",
            _ => return,
        };
        if fac == "CONFWARN" {
            return; // -X applies to every client; consumer-only properties warn in producers
        }
        log::log(
            lvl,
            "librdkafka",
            json!({"facility": fac, "detail": message}),
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log::warn(
            "kafka client error (retrying)",
            json!({"error": error.to_string(), "reason": reason}),
        );
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            if let Ok(mut v) = self.revoked.lock() {
                for e in tpl.elements() {
                    v.push((e.topic().to_string(), e.partition()));
                }
            }
            log::info("partitions revoked", json!({"count": tpl.count()}));
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let parts: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            log::info("partitions assigned", json!({"partitions": parts}));
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Err((e, _)) = result
            && let Ok(mut v) = self.failed.lock()
        {
            v.push((index, e.clone()));
        }
    }
}

/// Create topics that do not exist yet (existing ones are left as they are).
pub fn ensure_topics(args: &KafkaArgs, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = args
        .config(&[])
        .create()
        .context("cannot create an admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt
        .block_on(admin.create_topics(&new, &opts))
        .with_context(|| format!("cannot create topics {topics:?} on {}", args.brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic `{t}`: {e}"),
        }
    }
    Ok(())
}

/// Partitions of a topic, from the broker's metadata. Gives up after 10 s so that a broker that
/// is down is reported (and retried by the caller) promptly.
pub fn partitions(consumer: &BaseConsumer<Ctx>, topic: &str) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot read metadata of topic `{topic}`"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic `{topic}` does not exist"))?;
    if let Some(e) = t.error() {
        bail!("topic `{topic}`: {:?}", RDKafkaErrorCode::from(e));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        bail!("topic `{topic}` has no partitions");
    }
    Ok(ids)
}

/// One record to produce; its bytes live in a [`Batch`]'s buffer.
#[derive(Clone, Debug)]
pub struct OutRecord {
    /// Index into [`Batch::topics`].
    pub topic: usize,
    /// Key bytes: `buf[key.0..key.1]`.
    pub key: (usize, usize),
    /// Payload bytes: `buf[payload.0..payload.1]`.
    pub payload: (usize, usize),
    /// Event time or source timestamp (ms), when known.
    pub timestamp: Option<i64>,
    /// Headers: `(name, value range in buf)`.
    pub headers: [(&'static str, (usize, usize)); 4],
}

/// Records to produce, with their bytes in one buffer (no allocation per record's payload).
#[derive(Default, Debug)]
pub struct Batch {
    /// Topic names the records refer to by index.
    pub topics: Vec<String>,
    /// The records.
    pub records: Vec<OutRecord>,
    /// Their bytes.
    pub buf: Vec<u8>,
}

impl Batch {
    /// A batch producing to these topics.
    pub fn new(topics: Vec<String>) -> Self {
        Self {
            topics,
            ..Default::default()
        }
    }

    /// Append bytes to the buffer and return their range.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, usize) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        (start, self.buf.len())
    }

    /// Append formatted text and return its range.
    pub fn push_fmt(&mut self, args: std::fmt::Arguments<'_>) -> (usize, usize) {
        use std::io::Write;
        let start = self.buf.len();
        let _ = self.buf.write_fmt(args);
        (start, self.buf.len())
    }

    /// Forget every record, keeping the allocations.
    pub fn clear(&mut self) {
        self.records.clear();
        self.buf.clear();
    }

    fn bytes(&self, r: (usize, usize)) -> &[u8] {
        &self.buf[r.0..r.1]
    }
}

/// Enqueue every record of `batch` and wait until each is acknowledged. Failed deliveries are
/// retried with backoff until they succeed or `give_up` returns true (shutdown), so a broker that
/// goes away stalls the scorer instead of losing predictions.
pub fn deliver(
    producer: &BaseProducer<Ctx>,
    batch: &Batch,
    give_up: &dyn Fn() -> bool,
) -> Result<()> {
    let mut pending: Vec<usize> = (0..batch.records.len()).collect();
    let mut backoff = Duration::from_millis(100);
    loop {
        for &i in &pending {
            enqueue(producer, batch, i)?;
        }
        if let Err(e) = producer.flush(Duration::from_secs(600)) {
            log::warn("flush did not finish", json!({"error": e.to_string()}));
        }
        let failed: Vec<(usize, KafkaError)> = match producer.context().failed.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => bail!("delivery bookkeeping is poisoned"),
        };
        if failed.is_empty() {
            return Ok(());
        }
        log::warn(
            "deliveries failed; retrying",
            json!({"failed": failed.len(), "first_error": failed[0].1.to_string(),
                   "backoff_ms": backoff.as_millis() as u64}),
        );
        if give_up() {
            bail!("{} records not delivered at shutdown", failed.len());
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
        pending = failed.into_iter().map(|(i, _)| i).collect();
    }
}

/// Enqueue record `i` of `batch`, waiting while librdkafka's queue is full.
pub fn enqueue(producer: &BaseProducer<Ctx>, batch: &Batch, i: usize) -> Result<()> {
    let r = &batch.records[i];
    loop {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (name, range) in r.headers.iter().filter(|(n, _)| !n.is_empty()) {
            headers = headers.insert(Header {
                key: name,
                value: Some(batch.bytes(*range)),
            });
        }
        let mut rec = BaseRecord::with_opaque_to(&batch.topics[r.topic], i)
            .key(batch.bytes(r.key))
            .payload(batch.bytes(r.payload))
            .headers(headers);
        if let Some(t) = r.timestamp {
            rec = rec.timestamp(t);
        }
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => bail!(
                "cannot enqueue a record for `{}`: {e}",
                batch.topics[r.topic]
            ),
        }
    }
}
