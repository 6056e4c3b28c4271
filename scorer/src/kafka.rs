//! Kafka clients: configuration with pass-through properties, topic creation and metadata, and
//! librdkafka's own logs routed into ours. The source and the sink are in `source.rs` and
//! `sink.rs`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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

    /// The value the user gave a property with `-X`, the last one when repeated.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Log a librdkafka log line through tracing (warnings and errors only).
pub fn log_client(level: RDKafkaLogLevel, fac: &str, message: &str) {
    if fac == "CONFWARN" {
        return; // -X applies to every client; consumer-only properties warn in producers
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(facility = fac, detail = message, "librdkafka");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, detail = message, "librdkafka"),
        _ => {}
    }
}

/// Log an error librdkafka reports on its own (it retries these itself).
pub fn log_client_error(error: &KafkaError, reason: &str) {
    tracing::warn!(error = %error, reason, "kafka client error (retrying)");
}

/// A client context that only routes librdkafka's logs and errors into ours (readers, admin).
#[derive(Default)]
pub struct LogCtx;

impl ClientContext for LogCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LogCtx {}

/// Create topics that do not exist yet (existing ones are left as they are).
pub fn ensure_topics(args: &KafkaArgs, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<LogCtx> = args
        .config(&[])
        .create_with_context(LogCtx)
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
pub fn partitions<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<Vec<i32>> {
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
