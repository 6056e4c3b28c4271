//! `scorer run`: consume, score, produce; dead-letter what cannot be scored; store offsets only
//! after the broker acknowledged every output of a batch (or commit them inside a transaction).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::Offset;
use serde::Serialize;
use serde_json::json;
use shared_models::Servable;

use crate::kafka::{self, Batch, Ctx, KafkaArgs, OutRecord};
use crate::log;
use crate::metrics::{self, Metrics};
use crate::model::{self, ModelArgs};
use crate::score::{Outcome, Scorer, SourcePos};

/// `scorer run` options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Input topics (comma-separated or repeated).
    #[arg(long, required = true, value_delimiter = ',')]
    input: Vec<String>,
    /// Topic for predictions.
    #[arg(long, default_value = "predictions")]
    output: String,
    /// Dead-letter topic for events that cannot be scored.
    #[arg(long, default_value = "dead-letter")]
    dlq: String,
    /// Consumer group.
    #[arg(long, default_value = "kml-scorer")]
    group: String,
    /// Consume-score-produce in Kafka transactions (needs a broker with transactions).
    #[arg(long)]
    exactly_once: bool,
    /// Transactional id in exactly-once mode (default: `kml-scorer-<group>`); one per instance.
    #[arg(long)]
    transactional_id: Option<String>,
    /// Most events per batch (one produce-and-acknowledge or one transaction per batch).
    #[arg(long, default_value_t = 5000)]
    batch_size: usize,
    /// Larger payloads are dead-lettered.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Address for /metrics, /healthz and /readyz; `off` for none.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: String,
    /// Seconds between checks of the model alias for a new version.
    #[arg(long, default_value_t = 10.0)]
    reload_interval: f64,
    /// Exit (after committing) once no event has arrived for this many seconds.
    #[arg(long)]
    exit_when_idle: Option<f64>,
    /// Print the summary at exit as one JSON object.
    #[arg(long)]
    json: bool,
    /// Benchmark baseline: copy each event to the output unscored, with everything else
    /// (clients, batching, acknowledgements, offsets) as in scoring.
    #[arg(long, hide = true)]
    pass_through: bool,
}

/// What a run did, printed at exit.
#[derive(Serialize, Debug, Default)]
pub struct Summary {
    /// Model served last (`name@version`).
    pub model: String,
    /// Messages consumed.
    pub consumed: u64,
    /// Predictions produced and acknowledged.
    pub predicted: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Events a pipeline filter dropped.
    pub filtered: u64,
    /// Events read to rebuild window state of newly assigned partitions.
    pub warmed: u64,
    /// Seconds from the first event to the last acknowledgement.
    pub busy_seconds: f64,
    /// Consumed events per busy second.
    pub events_per_second: f64,
    /// Peak resident memory of the process (MiB), where the OS tells.
    pub peak_rss_mib: Option<f64>,
}

struct Part {
    topic: String,
    partition: i32,
    scorer: Scorer,
    next: i64,
    touched: bool,
}

/// Run the scorer until SIGINT/SIGTERM (or idleness, with `--exit-when-idle`).
pub fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (registry, r) = args.model.open()?;
    let first = rt.block_on(model::load(&registry, &r)).with_context(|| {
        format!(
            "cannot load model `{}` from {}",
            args.model.model, args.model.store
        )
    })?;
    let mut current = Arc::new(first);
    metrics.model_version.store(current.version, Relaxed);
    log::info(
        "model loaded",
        json!({"model": current.id, "fingerprint": current.fingerprint}),
    );

    if args.metrics_addr != "off" {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&args.metrics_addr))
            .with_context(|| format!("cannot listen on {} (--metrics-addr)", args.metrics_addr))?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        log::info("metrics and health endpoints", json!({"addr": addr}));
        rt.spawn(metrics::serve(listener, metrics.clone()));
    }
    {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            log::info("shutdown requested", log::none());
            shutdown.store(true, Relaxed);
        });
    }
    let (tx, rx) = mpsc::channel();
    rt.spawn(model::watch(
        registry,
        r,
        current.version,
        Duration::from_secs_f64(args.reload_interval.max(0.1)),
        tx,
        metrics.clone(),
    ));

    let inputs: Vec<&str> = args.input.iter().map(String::as_str).collect();
    let eos = args.exactly_once;
    let consumer: BaseConsumer<Ctx> = args
        .kafka
        .config(&[
            ("group.id", &args.group),
            ("enable.auto.offset.store", "false"),
            ("enable.auto.commit", if eos { "false" } else { "true" }),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            // A member that dies is noticed within 10 s, and a join waits at most for the
            // poll interval of a member that never left (tansu holds joins that long).
            ("session.timeout.ms", "10000"),
            ("max.poll.interval.ms", "30000"),
        ])
        .create_with_context(Ctx::default())
        .context("cannot create the consumer")?;
    // Windows keyed by something other than the partition key see only their partition's
    // share of events; with one partition per topic that share is everything.
    let spread: Vec<&str> = current
        .pipeline
        .repartition_windows()
        .map(|w| w.name.as_str())
        .collect();
    for t in &inputs {
        let n = wait_for(&shutdown, || kafka::partitions(&consumer, t))?.len();
        if n > 1 && !spread.is_empty() {
            bail!(
                "topic `{t}` has {n} partitions but windows {spread:?} are keyed by another \
                 column than the partition key: each instance would see only part of them. \
                 Repartition the topic by that column, or use one partition"
            );
        }
    }
    let out_partitions = kafka::partitions(&consumer, inputs[0])?.len() as i32;
    kafka::ensure_topics(&args.kafka, &[&args.output, &args.dlq], out_partitions)?;
    let tid = args
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("kml-scorer-{}", args.group));
    let mut pconf = vec![("enable.idempotence", "true"), ("linger.ms", "5")];
    if eos {
        pconf.push(("transactional.id", tid.as_str()));
    }
    let producer: BaseProducer<Ctx> = args
        .kafka
        .config(&pconf)
        .create_with_context(Ctx::default())
        .context("cannot create the producer")?;
    if eos {
        wait_for(&shutdown, || {
            producer
                .init_transactions(Duration::from_secs(30))
                .context("cannot initialise transactions")
        })?;
    }
    consumer.subscribe(&inputs).context("cannot subscribe")?;
    log::info(
        "scoring",
        json!({"input": inputs, "output": args.output, "dlq": args.dlq, "group": args.group,
               "exactly_once": eos}),
    );

    let mut parts: Vec<Part> = Vec::new();
    let mut batch = Batch::new(vec![args.output.clone(), args.dlq.clone()]);
    let mut summary = Summary::default();
    let mut idle_since = Instant::now();
    let mut first_event: Option<Instant> = None;
    let mut last_ack = Instant::now();
    let mut lag_at = Instant::now();
    let idle_limit = args.exit_when_idle.map(Duration::from_secs_f64);
    while !shutdown.load(Relaxed) {
        while let Ok(m) = rx.try_recv() {
            swap(&mut parts, &m, &metrics);
            current = m;
        }
        if let Ok(mut revoked) = consumer.context().revoked.lock() {
            for (t, p) in revoked.drain(..) {
                parts.retain(|x| !(x.topic == t && x.partition == p));
            }
        }
        batch.clear();
        let started = Instant::now();
        let (mut n, mut dead, mut filtered) = (0u64, 0u64, 0u64);
        let mut timeout = Duration::from_millis(100);
        while (n as usize) < args.batch_size {
            let msg = match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    log::warn("consume error", json!({"error": e.to_string()}));
                    break;
                }
                Some(Ok(m)) => m,
            };
            timeout = Duration::ZERO;
            n += 1;
            let i = match parts
                .iter()
                .position(|x| x.partition == msg.partition() && x.topic == msg.topic())
            {
                Some(i) => i,
                None => {
                    let mut scorer = Scorer::new(current.clone(), args.max_event_bytes);
                    let warmed = crate::replay::warm(
                        &args.kafka,
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        &mut scorer,
                    )?;
                    summary.warmed += warmed;
                    parts.push(Part {
                        topic: msg.topic().to_string(),
                        partition: msg.partition(),
                        scorer,
                        next: msg.offset(),
                        touched: false,
                    });
                    parts.len() - 1
                }
            };
            let part = &mut parts[i];
            if args.pass_through {
                copy(&msg, &mut batch);
                part.next = msg.offset() + 1;
                part.touched = true;
                continue;
            }
            match append(&mut part.scorer, &msg, &mut batch) {
                Outcome::Scored { .. } => {}
                Outcome::Filtered => filtered += 1,
                Outcome::Dead(_) => dead += 1,
            }
            part.next = msg.offset() + 1;
            part.touched = true;
        }
        if n == 0 {
            let assigned = consumer.assignment().is_ok_and(|a| a.count() > 0);
            metrics.ready.store(assigned, Relaxed);
            if !assigned {
                idle_since = Instant::now(); // idle means nothing to read, not still joining
            }
            if lag_at.elapsed() > Duration::from_secs(5) {
                update_lag(&consumer, &metrics);
                lag_at = Instant::now();
            }
            if idle_limit.is_some_and(|l| idle_since.elapsed() >= l) {
                log::info("idle; exiting", log::none());
                break;
            }
            continue;
        }
        first_event.get_or_insert(started);
        idle_since = Instant::now();
        metrics.ready.store(true, Relaxed);
        metrics.events_in.fetch_add(n, Relaxed);
        let mut tpl = TopicPartitionList::new();
        for p in parts.iter_mut().filter(|p| p.touched) {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))?;
            p.touched = false;
        }
        if eos {
            commit_transaction(&producer, &consumer, &batch, &tpl)?;
            metrics.transactions.fetch_add(1, Relaxed);
        } else {
            kafka::deliver(&producer, &batch, &|| shutdown.load(Relaxed))?;
            if let Err(e) = consumer.store_offsets(&tpl) {
                // Partitions revoked meanwhile: their new owner re-scores from the commit.
                log::warn("cannot store offsets", json!({"error": e.to_string()}));
            }
        }
        last_ack = Instant::now();
        let predicted = batch.records.len() as u64 - dead;
        metrics.predictions_out.fetch_add(predicted, Relaxed);
        metrics.dead_lettered.fetch_add(dead, Relaxed);
        metrics.filtered.fetch_add(filtered, Relaxed);
        metrics.observe_latency(started.elapsed().as_secs_f64(), n);
        let keys: usize = parts.iter().map(|p| p.scorer.state_keys()).sum();
        metrics.window_keys.store(keys as u64, Relaxed);
        summary.consumed += n;
        summary.predicted += predicted;
        summary.dead_lettered += dead;
        summary.filtered += filtered;
        if lag_at.elapsed() > Duration::from_secs(5) {
            update_lag(&consumer, &metrics);
            lag_at = Instant::now();
        }
    }
    metrics.ready.store(false, Relaxed);
    if !eos {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => log::info("offsets committed", log::none()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => log::warn("final commit", json!({"error": e.to_string()})),
        }
    }
    consumer.unsubscribe();
    drop(consumer); // closes the consumer: leaves the group now, not at session timeout
    summary.model = current.id.clone();
    summary.peak_rss_mib = peak_rss_mib();
    if let Some(t0) = first_event {
        summary.busy_seconds = last_ack.duration_since(t0).as_secs_f64();
        if summary.busy_seconds > 0.0 {
            summary.events_per_second = summary.consumed as f64 / summary.busy_seconds;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "scored with {}: {} consumed, {} predicted, {} dead-lettered, {} filtered, {} warmed; \
             {:.0} events/s",
            summary.model,
            summary.consumed,
            summary.predicted,
            summary.dead_lettered,
            summary.filtered,
            summary.warmed,
            summary.events_per_second
        );
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Score one message into the batch: a prediction for the output topic, or the original bytes
/// for the dead-letter topic. Both carry the source position in headers.
pub fn append(scorer: &mut Scorer, msg: &BorrowedMessage<'_>, batch: &mut Batch) -> Outcome {
    let pos = SourcePos {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    let outcome = scorer.score(msg.payload(), pos);
    if matches!(outcome, Outcome::Filtered) {
        return outcome;
    }
    let src_topic = batch.push(msg.topic().as_bytes());
    let src_part = batch.push_fmt(format_args!("{}", msg.partition()));
    let src_off = batch.push_fmt(format_args!("{}", msg.offset()));
    match &outcome {
        Outcome::Scored {
            key, event_time, ..
        } => {
            let key = batch.push(key.as_bytes());
            let payload = batch.push(scorer.prediction());
            let model = batch.push(scorer.model().id.as_bytes());
            batch.records.push(OutRecord {
                topic: 0,
                key,
                payload,
                timestamp: Some(*event_time),
                headers: [
                    ("kml.source.topic", src_topic),
                    ("kml.source.partition", src_part),
                    ("kml.source.offset", src_off),
                    ("kml.model", model),
                ],
            });
        }
        Outcome::Filtered => {} // returned above: nothing to produce
        Outcome::Dead(reason) => {
            let key = batch.push(msg.key().unwrap_or_default());
            let payload = batch.push(msg.payload().unwrap_or_default());
            let error = batch.push(reason.as_bytes());
            batch.records.push(OutRecord {
                topic: 1,
                key,
                payload,
                timestamp: msg.timestamp().to_millis(),
                headers: [
                    ("kml.source.topic", src_topic),
                    ("kml.source.partition", src_part),
                    ("kml.source.offset", src_off),
                    ("kml.error", error),
                ],
            });
        }
    }
    outcome
}

fn copy(msg: &BorrowedMessage<'_>, batch: &mut Batch) {
    let key = batch.push(msg.key().unwrap_or_default());
    let payload = batch.push(msg.payload().unwrap_or_default());
    batch.records.push(OutRecord {
        topic: 0,
        key,
        payload,
        timestamp: msg.timestamp().to_millis(),
        headers: [("", (0, 0)); 4],
    });
}

/// Peak resident set size of this process in MiB (Linux: VmHWM in /proc/self/status).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn swap(parts: &mut [Part], m: &Arc<Servable>, metrics: &Metrics) {
    let mut kept = true;
    for p in parts.iter_mut() {
        kept &= p.scorer.swap(m.clone());
    }
    metrics.reloads.fetch_add(1, Relaxed);
    metrics.model_version.store(m.version, Relaxed);
    log::info(
        "model swapped in",
        json!({"model": m.id, "window_state_kept": kept}),
    );
}

fn commit_transaction(
    producer: &BaseProducer<Ctx>,
    consumer: &BaseConsumer<Ctx>,
    batch: &Batch,
    offsets: &TopicPartitionList,
) -> Result<()> {
    let attempt = || -> Result<()> {
        producer.begin_transaction()?;
        for i in 0..batch.records.len() {
            kafka::enqueue(producer, batch, i)?;
        }
        let group = consumer
            .group_metadata()
            .context("the consumer has no group metadata")?;
        producer.send_offsets_to_transaction(offsets, &group, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(60))?;
        let failed = producer
            .context()
            .failed
            .lock()
            .map(|mut v| std::mem::take(&mut *v));
        match failed {
            Ok(v) if v.is_empty() => Ok(()),
            Ok(v) => bail!("{} records of a committed transaction failed", v.len()),
            Err(_) => bail!("delivery bookkeeping is poisoned"),
        }
    };
    attempt().inspect_err(|e| {
        log::error(
            "transaction failed; aborting",
            json!({"error": e.to_string()}),
        );
        let _ = producer.abort_transaction(Duration::from_secs(30));
    })
}

fn update_lag(consumer: &BaseConsumer<Ctx>, metrics: &Metrics) {
    let Ok(pos) = consumer.position() else { return };
    let mut lag = 0i64;
    for e in pos.elements() {
        if let Ok((_, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500))
            && let Offset::Offset(at) = e.offset()
        {
            lag += (high - at).max(0);
        }
    }
    metrics.lag.store(lag, Relaxed);
}

/// Retry `f` with backoff (logging each failure) until it succeeds or shutdown is requested:
/// a broker that is down at start is waited for, not a crash.
fn wait_for<T>(shutdown: &AtomicBool, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if shutdown.load(Relaxed) => return Err(e),
            Err(e) => {
                log::warn(
                    "broker not ready; retrying",
                    json!({"error": format!("{e:#}"), "backoff_ms": backoff.as_millis() as u64}),
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
