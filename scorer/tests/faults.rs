//! Fault injection with librdkafka's mock cluster, on the scorer's sink and offset tracker:
//! delivery reports that arrive out of order (retries, two partitions) never make an offset
//! committable before every output below it is acknowledged; a broker that is down stalls
//! delivery and loses nothing; an output that fails for good freezes its partition.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use scorer::kafka::KafkaArgs;
use scorer::offsets::{Tag, Tracker};
use scorer::sink::{Sink, To};

fn sink(bootstrap: &str, timeout_ms: u32) -> Sink {
    let args = KafkaArgs {
        brokers: bootstrap.to_string(),
        properties: vec![
            ("message.timeout.ms".into(), timeout_ms.to_string()),
            ("retry.backoff.ms".into(), "10".into()),
        ],
    };
    Sink::new(&args, "out", "dlq", None).unwrap()
}

fn read(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    // Read until n records, then 2 s more to see any duplicate.
    let mut done_at = None;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "read {} of {n}",
            out.len()
        );
        if out.len() >= n && done_at.is_none() {
            done_at = Some(Instant::now());
        }
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8(m.unwrap().payload().unwrap().to_vec()).unwrap());
        }
    }
    out
}

/// Feed `n` events of each of two input partitions through a tracker and the sink (one output
/// each; every fifth event filtered, with none), then apply reports as they come. After every
/// step, each committable offset must be at most the first offset with an output not yet
/// acknowledged.
fn drive(sink: &mut Sink, n: i64, deadline: Duration) -> (Tracker, BTreeMap<usize, i64>) {
    let now = Instant::now();
    let mut t = Tracker::default();
    let mut unacked: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
    let mut tag_offset: BTreeMap<usize, (usize, i64)> = BTreeMap::new();
    for slot in 0..2usize {
        t.reset(slot, Some(0));
    }
    for o in 0..n {
        for slot in 0..2usize {
            let seq = t.begin(slot, o, now);
            if o % 5 == 4 {
                continue; // filtered: nothing to produce
            }
            let tag = t.expect(slot, seq, false);
            tag_offset.insert(tag.0, (slot, o));
            unacked.entry(slot).or_default().insert(o);
            let payload = format!("{slot}/{o}");
            sink.send(To::Output, b"k", payload.as_bytes(), None, &[], tag)
                .unwrap();
        }
    }
    let t0 = Instant::now();
    let mut last = BTreeMap::new();
    while unacked.values().any(|s| !s.is_empty()) {
        assert!(t0.elapsed() < deadline, "not all acknowledged: {unacked:?}");
        let _ = sink.drain_backlog();
        std::thread::sleep(Duration::from_millis(5));
        for r in sink.reports() {
            let (slot, o) = tag_offset[&r.tag.0];
            if r.failure.is_none() && t.ack(r.tag, Instant::now()).current {
                unacked.get_mut(&slot).unwrap().remove(&o);
            }
        }
        for slot in 0..2usize {
            if let Some(c) = t.advance(slot) {
                last.insert(slot, c);
            }
            let c = t.committable(slot).unwrap();
            if let Some(first) = unacked[&slot].first() {
                assert!(
                    c <= *first,
                    "slot {slot}: committable {c} passes unacknowledged offset {first}"
                );
            }
        }
    }
    (t, last)
}

#[test]
fn out_of_order_reports_never_commit_an_unacknowledged_offset() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("out", 4, 1).unwrap();
    // Retriable errors on produce requests: librdkafka retries them, and the reports of the
    // four output partitions (on three brokers) come back in no particular order.
    let errs = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ];
    cluster.request_errors(RDKafkaApiKey::Produce, &errs.repeat(5));
    let mut s = sink(&cluster.bootstrap_servers(), 30_000);
    let (t, last) = drive(&mut s, 2000, Duration::from_secs(60));
    // Everything acknowledged: both partitions committable to the end, nothing in flight.
    assert_eq!(last.get(&0), Some(&2000));
    assert_eq!(last.get(&1), Some(&2000));
    assert_eq!(t.in_flight(), 0);
    // Idempotent retries: every output once.
    let got = read(&cluster.bootstrap_servers(), "out", 4, 3200);
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 3200, "duplicates or losses");
    assert_eq!(distinct.len(), 3200);
}

#[test]
fn a_broker_that_is_down_stalls_delivery_and_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    let mut s = sink(&cluster.bootstrap_servers(), 60_000);
    cluster.broker_down(1).unwrap();
    let mut t = Tracker::default();
    t.reset(0, Some(0));
    let now = Instant::now();
    for o in 0..200 {
        let seq = t.begin(0, o, now);
        let tag = t.expect(0, seq, false);
        s.send(
            To::Output,
            b"k",
            format!("record {o}").as_bytes(),
            None,
            &[],
            tag,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let early = s.reports();
    assert!(
        early.is_empty(),
        "reports while the broker is down: {early:?}"
    );
    assert_eq!(
        t.advance(0),
        None,
        "nothing committable while the broker is down"
    );
    cluster.broker_up(1).unwrap();
    assert!(s.flush(Duration::from_secs(30), None));
    for r in s.reports() {
        assert!(r.failure.is_none(), "{r:?}");
        assert!(t.ack(r.tag, Instant::now()).current);
    }
    assert_eq!(t.advance(0), Some(200));
    let got: BTreeSet<String> = read(&cluster.bootstrap_servers(), "out", 1, 200)
        .into_iter()
        .collect();
    let want: BTreeSet<String> = (0..200).map(|i| format!("record {i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn an_output_that_fails_for_good_freezes_its_partition_at_that_event() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    // Short message timeout: with the broker down, records fail for good.
    let mut s = sink(&cluster.bootstrap_servers(), 1500);
    let mut t = Tracker::default();
    t.reset(0, Some(0));
    let now = Instant::now();
    let mut tags: Vec<Tag> = Vec::new();
    // 50 records delivered while the broker is up...
    for o in 0..50 {
        let seq = t.begin(0, o, now);
        let tag = t.expect(0, seq, false);
        tags.push(tag);
        s.send(To::Output, b"k", b"ok", None, &[], tag).unwrap();
    }
    assert!(s.flush(Duration::from_secs(30), None));
    // ...then 50 that time out.
    cluster.broker_down(1).unwrap();
    for o in 50..100 {
        let seq = t.begin(0, o, now);
        let tag = t.expect(0, seq, false);
        s.send(To::Output, b"k", b"lost", None, &[], tag).unwrap();
    }
    assert!(
        s.flush(Duration::from_secs(30), None),
        "reports within the timeout"
    );
    let (mut ok, mut failed) = (0, 0);
    for r in s.reports() {
        match &r.failure {
            None => {
                t.ack(r.tag, Instant::now());
                ok += 1;
            }
            Some(f) => {
                assert!(t.fail(r.tag), "{}", f.error);
                failed += 1;
            }
        }
    }
    assert_eq!((ok, failed), (50, 50));
    assert_eq!(
        t.advance(0),
        Some(50),
        "committable up to the first failure, not past it"
    );
    assert!(t.failed(0));
    assert_eq!(
        t.first_incomplete(0),
        Some(50),
        "a rewind starts at the failed event"
    );
}
