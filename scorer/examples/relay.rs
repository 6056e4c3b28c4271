//! The benchmark's ceiling: the simplest program doing the scorer's I/O. It consumes a topic in a
//! consumer group (`BaseConsumer`, offsets stored as consumed and auto-committed) and produces
//! each message's key and payload to another topic (`ThreadedProducer`, the scorer's producer
//! settings), with no decoding, no scoring, no headers and no offset tracking. It measures what
//! the client library carries on this machine; `ci/bench-scorer` runs it beside the scorer.
//!
//! `relay BROKERS INPUT OUTPUT GROUP IDLE_SECONDS` prints one JSON line: consumed, busy seconds
//! (first message to last acknowledgement), events per second, p50/p99 consume-to-ack latency
//! in ms, peak RSS in MiB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

struct Acks {
    t0: Instant,
    state: Mutex<(hdrhistogram::Histogram<u64>, Option<Instant>, u64)>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, consumed_us: usize) {
        let now = Instant::now();
        let us = now.duration_since(self.t0).as_micros() as u64;
        let mut s = self.state.lock().unwrap();
        if r.is_ok() {
            let _ = s.0.record(us.saturating_sub(consumed_us as u64).max(1));
            s.1 = Some(now);
            s.2 += 1;
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, brokers, input, output, group, idle] = &a[..] else {
        eprintln!("usage: relay BROKERS INPUT OUTPUT GROUP IDLE_SECONDS");
        std::process::exit(2);
    };
    let idle = Duration::from_secs_f64(idle.parse().unwrap());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "1000")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let t0 = Instant::now();
    let acks = Acks {
        t0,
        state: Mutex::new((
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap(),
            None,
            0,
        )),
    };
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
        .create_with_context(acks)
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let mut consumed = 0u64;
    let mut first = None;
    let mut last_msg = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last_msg = now;
                consumed += 1;
                let at = now.duration_since(t0).as_micros() as usize;
                let key = m.key().unwrap_or_default();
                let payload = m.payload().unwrap_or_default();
                loop {
                    let mut rec = BaseRecord::with_opaque_to(output, at)
                        .key(key)
                        .payload(payload);
                    if let Some(ts) = m.timestamp().to_millis() {
                        rec = rec.timestamp(ts);
                    }
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => panic!("{e}"),
                    }
                }
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None if first.is_some() && last_msg.elapsed() >= idle => break,
            None => {}
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let s = producer.context().state.lock().unwrap();
    let busy =
        s.1.zip(first)
            .map_or(0.0, |(l, f)| l.duration_since(f).as_secs_f64());
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "consumed": consumed,
            "predicted": s.2,
            "busy_seconds": busy,
            "events_per_second": consumed as f64 / busy.max(1e-9),
            "latency_p50_ms": s.0.value_at_quantile(0.5) as f64 / 1000.0,
            "latency_p99_ms": s.0.value_at_quantile(0.99) as f64 / 1000.0,
            "peak_rss_mib": rss,
        })
    );
    consumer.unsubscribe();
}
