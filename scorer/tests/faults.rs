//! Fault injection with librdkafka's mock cluster: a broker that is down, and produce requests
//! that fail. The scorer's delivery (produce, wait for acknowledgement, retry what failed) must
//! end with every record in the topic exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::BaseProducer;
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use scorer::kafka::{Batch, Ctx, KafkaArgs, OutRecord, deliver};

fn batch(n: usize) -> Batch {
    let mut b = Batch::new(vec!["t".into()]);
    for i in 0..n {
        let key = b.push(b"k");
        let payload = b.push_fmt(format_args!("record {i}"));
        b.records.push(OutRecord {
            topic: 0,
            key,
            payload,
            timestamp: None,
            headers: [("", (0, 0)); 4],
        });
    }
    b
}

fn read(bootstrap: &str, n: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) || out.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "read {} of {n}",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap());
        } else if out.len() >= n {
            break;
        }
    }
    out
}

fn producer(bootstrap: &str) -> BaseProducer<Ctx> {
    let args = KafkaArgs {
        brokers: bootstrap.to_string(),
        properties: vec![("message.timeout.ms".into(), "1500".into())],
    };
    args.config(&[("enable.idempotence", "true")])
        .create_with_context(Ctx::default())
        .unwrap()
}

#[test]
fn a_broker_that_is_down_stalls_delivery_and_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let p = producer(&cluster.bootstrap_servers());
    cluster.broker_down(1).unwrap();
    let rounds = Cell::new(0);
    let b = batch(200);
    // Each failed round asks whether to give up; the second time, the broker comes back.
    deliver(&p, &b, &|| {
        rounds.set(rounds.get() + 1);
        if rounds.get() == 2 {
            cluster.broker_up(1).unwrap();
        }
        false
    })
    .unwrap();
    assert!(
        rounds.get() >= 2,
        "delivery failed while the broker was down"
    );
    let got: BTreeSet<String> = read(&cluster.bootstrap_servers(), 200)
        .into_iter()
        .collect();
    let want: BTreeSet<String> = (0..200).map(|i| format!("record {i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn failing_produce_requests_are_retried_without_duplicates() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let p = producer(&cluster.bootstrap_servers());
    deliver(&p, &batch(300), &|| false).unwrap();
    let got = read(&cluster.bootstrap_servers(), 300);
    assert_eq!(got.len(), 300, "duplicates or losses");
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 300);
}

#[test]
fn giving_up_at_shutdown_is_an_error_not_a_silent_loss() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let p = producer(&cluster.bootstrap_servers());
    cluster.broker_down(1).unwrap();
    let err = deliver(&p, &batch(10), &|| true).unwrap_err();
    assert!(
        err.to_string().contains("not delivered at shutdown"),
        "{err}"
    );
}
