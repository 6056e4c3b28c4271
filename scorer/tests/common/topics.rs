//! Topics on the test broker: created, produced to, read back, and their committed offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::Offset;

use super::Broker;

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Rec {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Whether `topic` exists yet.
pub fn broker_has(broker: &Broker, topic: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    c.fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

/// The high watermark of partition 0 of `topic`.
pub fn high_watermark(broker: &Broker, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_or(0, |(_, high)| high)
}

/// Every record of partition 0 of `topic`, up to its high watermark now.
pub fn read_all(broker: &Broker, topic: &str) -> Vec<Rec> {
    read_partition(broker, topic, 0)
}

/// Every record of every partition of `topic`, partition by partition.
pub fn read_every_partition(broker: &Broker, topic: &str) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    (0..n)
        .flat_map(|p| read_partition(broker, topic, p))
        .collect()
}

/// Every record of `partition` of `topic`, up to its high watermark now.
pub fn read_partition(broker: &Broker, topic: &str, partition: i32) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = c
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap();
    let mut out = Vec::new();
    if high <= low {
        return out;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .unwrap();
    c.assign(&tpl).unwrap();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "reading {topic} timed out"
        );
        // Read past the high watermark until quiet: tansu's counts only the first record of
        // the newest batch. Transaction markers take offsets but are never delivered, so the
        // position tells where reading is, not the last message.
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            match c.position().unwrap().elements()[0].offset() {
                Offset::Offset(at) if at >= high => break,
                _ => continue,
            }
        };
        let m = m.unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                headers.insert(
                    x.key.to_string(),
                    String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// The committed offset of `group` on partition 0 of `topic` (`None`: nothing committed).
pub fn committed(broker: &Broker, group: &str, topic: &str) -> Option<i64> {
    committed_all(broker, group, topic, 1)[0]
}

/// The committed offsets of `group` on partitions `0..n` of `topic`.
pub fn committed_all(broker: &Broker, group: &str, topic: &str, n: i32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// Produce raw records to partition 0 of `topic`.
pub fn produce_raw<K: AsRef<str>>(broker: &Broker, topic: &str, records: &[(K, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for (k, v) in records {
        p.send(
            BaseRecord::to(topic)
                .key(k.as_ref())
                .payload(v.as_slice())
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Produce records with any key and payload (`None`: no payload) to partition 0 of `topic`,
/// allowing records of up to 2 MB, in order.
pub fn produce_records(broker: &Broker, topic: &str, records: &[(Vec<u8>, Option<Vec<u8>>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    create_topic(broker, topic, 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.max.bytes", "2000000")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (k, v) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(k.as_slice()).partition(0);
        if let Some(v) = v {
            rec = rec.payload(v.as_slice());
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        e.to_string().contains("Queue full"),
                        "cannot produce to {topic}: {e}"
                    );
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Create `topic` with `partitions` partitions unless it exists.
pub fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = rt
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .unwrap();
    for x in r {
        match x {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => panic!("cannot create {t}: {e}"),
        }
    }
}
