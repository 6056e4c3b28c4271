//! `scorer run`: the arguments, turned once into a checked [`RunConfig`], and the wiring of
//! source, scoring core and sink ([`crate::live`]) with telemetry, model watching and signals.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::http::{self, HttpLimits, positive_seconds};
use crate::kafka::{self, KafkaArgs};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::model::{self, ModelArgs};
use crate::sink::Sink;
use crate::source;

/// `scorer run` options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    http: HttpLimits,
    #[command(flatten)]
    remote: crate::remote::RemoteArgs,
    #[command(flatten)]
    format: crate::schema_registry::FormatArgs,
    #[command(flatten)]
    labels: crate::labels::LabelArgs,
    #[command(flatten)]
    rollout: crate::live::RolloutArgs,
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
    /// Exactly-once: commit the open transaction after this many seconds...
    #[arg(long, default_value_t = 0.1, value_parser = positive_seconds)]
    transaction_interval: f64,
    /// ...or after this many events, whichever comes first.
    #[arg(long, default_value_t = 10_000)]
    transaction_max_events: usize,
    /// Most events consumed between two bookkeeping steps (delivery reports, offsets, model
    /// swaps, rebalances).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Larger payloads are dead-lettered.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Address for /metrics, /healthz and /readyz; `off` for none.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: String,
    /// Seconds between checks of the model alias for a new version.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    reload_interval: f64,
    /// Exit (after committing) once no event has arrived for this many seconds and every
    /// output is acknowledged.
    #[arg(long, value_parser = positive_seconds)]
    exit_when_idle: Option<f64>,
    /// Seconds allowed at shutdown for in-flight outputs to be acknowledged and offsets
    /// committed; what is not acknowledged by then is not committed (scored again next time).
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    shutdown_timeout: f64,
    /// Also put the lineage in headers of each prediction (`kml.source.topic`,
    /// `kml.source.partition`, `kml.source.offset`, `kml.model`), for routing without parsing;
    /// it is always in the value. Costs the producer an allocation per header and record.
    #[arg(long)]
    lineage_headers: bool,
    /// Seconds between checkpoints of each input partition's window state to the model store
    /// (`checkpoints/<group>/...`), also written on revocation and shutdown; a restart or a
    /// new owner of the partition restores the newest one and reads only the events after it.
    /// `off`: no checkpoints, state is rebuilt from the partition's beginning.
    #[arg(long, default_value = "30", value_parser = seconds_or_off)]
    checkpoint_interval: Every,
    /// ...or after this many events of the partition, whichever comes first.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_events: u64,
    /// For a pipeline with windows keyed by another column than the partition key, on an
    /// input topic of several partitions: the repartition topic that brings each such key's
    /// events to one place (created with the input's partition count; default
    /// `kml-<group>-<input>-repartition`).
    #[arg(long)]
    repartition_topic: Option<String>,
    /// Seconds after which an input partition that delivered nothing is marked idle, so that
    /// the merge behind the repartition topic stops waiting for it.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    idle_after: f64,
    /// How events reach the windows: `arrival` (each scored as it is read) or `watermark`
    /// (held until an event more than `[events] lateness` newer has been read in its partition,
    /// then scored in event-time order: exactly the features `trainer fit --topic` computes
    /// over the same log, at a latency of up to the lateness; README, "Order"). At-least-once,
    /// a held event's offset is not committed until its prediction is acknowledged;
    /// exactly-once, a transaction commits every offset consumed, and a restart's rebuilt state
    /// holds (and scores) exactly the events held at the commit. Checkpoints carry the held
    /// events.
    #[arg(long, default_value = "arrival")]
    order: shared_features::Order,
    /// Also score every event with this model (`name@version` or `name@alias`, in the same
    /// store) as a shadow: on the champion's features, or on window state of its own when its
    /// pipeline or tables differ (arrival order only), its predictions going to
    /// `--shadow-output` with the same lineage, deciding nothing (README, "Shadows on the live
    /// stream"). Repeatable. Resolved at start.
    #[arg(long, value_name = "MODEL")]
    shadow: Vec<String>,
    /// Topic for the shadows' predictions (default: `<output>.shadow`).
    #[arg(long, value_name = "TOPIC")]
    shadow_output: Option<String>,
    /// Measure drift over the champion's last this many scored events against the training
    /// split's reference distributions in the bundle: per input and for the score, PSI and
    /// Jensen-Shannon as Prometheus gauges (`kml_drift_psi`, `kml_drift_js`; README, "Drift");
    /// 0: off.
    #[arg(long, default_value_t = 10_000, value_name = "EVENTS")]
    drift_window: usize,
    /// Print the summary at exit as one JSON object.
    #[arg(long)]
    json: bool,
    /// Benchmark baseline: copy each event to the output unscored, with everything else
    /// (clients, delivery tracking, offsets) as in scoring.
    #[arg(long, hide = true)]
    pass_through: bool,
}

/// The checked configuration of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Client settings.
    pub kafka: KafkaArgs,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Predictions topic.
    pub output: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Consumer group.
    pub group: String,
    /// Transactional id, in exactly-once mode.
    pub transactional_id: Option<String>,
    /// Exactly-once: commit cadence.
    pub transaction_interval: Duration,
    /// Exactly-once: most events per transaction.
    pub transaction_max_events: usize,
    /// Events between bookkeeping steps.
    pub batch_size: usize,
    /// Larger payloads are dead-lettered.
    pub max_event_bytes: usize,
    /// Exit when idle this long.
    pub exit_when_idle: Option<Duration>,
    /// Time allowed for the final flush and commit.
    pub shutdown_timeout: Duration,
    /// Lineage headers on predictions.
    pub lineage_headers: bool,
    /// Copy events unscored (benchmark baseline).
    pub pass_through: bool,
    /// Checkpoint cadence; `None`: no checkpoints.
    pub checkpoint: Option<Cadence>,
    /// The repartition step, when the pipeline and the input need one.
    pub repartition: Option<Repartition>,
    /// The topic `--repartition-topic` names, if given.
    pub repartition_topic: Option<String>,
    /// An input partition silent this long is marked idle.
    pub idle_after: Duration,
    /// How events reach the windows.
    pub order: shared_features::Order,
    /// The shadows' predictions topic.
    pub shadow_output: String,
    /// Events in the drift window (0: off).
    pub drift_window: usize,
    /// Guarded rollout of new versions.
    pub rollout: crate::live::RolloutArgs,
}

/// The repartition step of a run ([`crate::merge`]).
#[derive(Debug, Clone)]
pub struct Repartition {
    /// The repartition topic.
    pub topic: String,
    /// The input topic.
    pub input: String,
    /// Partitions of the input topic.
    pub inputs: usize,
    /// Partitions of the repartition topic.
    pub partitions: i32,
}

/// How often a partition's window state is checkpointed: after `interval` or `events`,
/// whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Events between checkpoints.
    pub events: u64,
}

/// Seconds, or `off`.
#[derive(Debug, Clone, Copy)]
struct Every(Option<f64>);

fn seconds_or_off(s: &str) -> Result<Every, String> {
    if s == "off" {
        Ok(Every(None))
    } else {
        positive_seconds(s).map(|x| Every(Some(x)))
    }
}

impl RunConfig {
    fn new(a: &RunArgs) -> Result<Self> {
        if a.batch_size == 0 || a.batch_size > 1_000_000 {
            bail!(
                "--batch-size {} must be between 1 and 1000000",
                a.batch_size
            );
        }
        if a.drift_window > 1_000_000 {
            bail!(
                "--drift-window {} must be at most 1000000 events (each keeps a bin per input)",
                a.drift_window
            );
        }
        if a.transaction_max_events == 0 {
            bail!("--transaction-max-events must be at least 1");
        }
        if a.max_event_bytes == 0 {
            bail!("--max-event-bytes must be at least 1");
        }
        for t in a.input.iter().chain([&a.output, &a.dlq]) {
            if t.is_empty() {
                bail!("a topic name is empty (--input, --output, --dlq)");
            }
        }
        if a.input.contains(&a.output) || a.input.contains(&a.dlq) || a.output == a.dlq {
            bail!(
                "--input, --output and --dlq must be different topics (input {:?}, output `{}`, \
                 dlq `{}`)",
                a.input,
                a.output,
                a.dlq
            );
        }
        let watermark = a.order == shared_features::Order::Watermark;
        if watermark && a.pass_through {
            bail!("--order watermark scores; --pass-through copies events unscored");
        }
        if let Some(l) = &a.labels.labels
            && (l.is_empty()
                || a.input.contains(l)
                || [&a.output, &a.dlq].contains(&l)
                || a.shadow_output.as_ref() == Some(l))
        {
            bail!("--labels `{l}` must be a topic of its own (not an input or an output)");
        }
        if a.rollout.rollout_revert_alias {
            let alias = matches!(
                shared_models::ModelRef::parse(&a.model.model),
                Ok(shared_models::ModelRef::Alias(..))
            );
            if a.rollout.rollout_events.is_none() || !alias {
                bail!(
                    "--rollout-revert-alias points the watched alias back at the champion when a \
                     rollout is rolled back: it needs --rollout-events and --model NAME@ALIAS \
                     (not `{}`)",
                    a.model.model
                );
            }
        }
        let shadow_output = a
            .shadow_output
            .clone()
            .unwrap_or_else(|| format!("{}.shadow", a.output));
        // Shadows and rollout candidates are scored here, beside the champion, and write to
        // the shadow topic.
        if !a.shadow.is_empty() || a.rollout.rollout_events.is_some() {
            if a.remote.model_server.is_some() || a.pass_through {
                bail!(
                    "--shadow and --rollout-events score beside the champion in this process: \
                     not with --model-server or --pass-through"
                );
            }
            if shadow_output.is_empty()
                || a.input.contains(&shadow_output)
                || [&a.output, &a.dlq].contains(&&shadow_output)
            {
                bail!(
                    "--shadow-output `{shadow_output}` must differ from --input, --output and \
                     --dlq"
                );
            }
        }
        Ok(Self {
            kafka: a.kafka.clone(),
            inputs: a.input.clone(),
            output: a.output.clone(),
            dlq: a.dlq.clone(),
            group: a.group.clone(),
            transactional_id: a.exactly_once.then(|| {
                a.transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("kml-scorer-{}", a.group))
            }),
            transaction_interval: Duration::from_secs_f64(a.transaction_interval),
            transaction_max_events: a.transaction_max_events,
            batch_size: a.batch_size,
            max_event_bytes: a.max_event_bytes,
            exit_when_idle: a.exit_when_idle.map(Duration::from_secs_f64),
            shutdown_timeout: Duration::from_secs_f64(a.shutdown_timeout),
            lineage_headers: a.lineage_headers,
            pass_through: a.pass_through,
            checkpoint: a.checkpoint_interval.0.map(|s| Cadence {
                interval: Duration::from_secs_f64(s),
                events: a.checkpoint_events,
            }),
            repartition: None,
            repartition_topic: a.repartition_topic.clone(),
            idle_after: Duration::from_secs_f64(a.idle_after),
            order: a.order,
            shadow_output,
            rollout: a.rollout.clone(),
            // With a model server the scores are not seen here (yet): no drift window.
            drift_window: if a.pass_through || a.remote.model_server.is_some() {
                0
            } else {
                a.drift_window
            },
        })
    }

    /// Exactly-once mode.
    pub fn exactly_once(&self) -> bool {
        self.transactional_id.is_some()
    }
}

/// What a run did, printed at exit.
#[derive(Serialize, Debug, Default)]
pub struct Summary {
    /// Model served last (`name@version`).
    pub model: String,
    /// Messages consumed (a message scored again after a rewind counts again).
    pub consumed: u64,
    /// Predictions acknowledged (and, in exactly-once mode, committed).
    pub predicted: u64,
    /// Dead letters acknowledged (and committed).
    pub dead_lettered: u64,
    /// Rows forwarded to the repartition topic and acknowledged (each becomes a prediction
    /// downstream, in this instance or another).
    pub forwarded: u64,
    /// Events a pipeline filter dropped.
    pub filtered: u64,
    /// Events read to rebuild window state.
    pub warmed: u64,
    /// Partitions whose state was restored from a checkpoint (the rest were rebuilt from
    /// their beginning).
    pub restored: u64,
    /// Snapshots refused at restore (corrupt, another pipeline's).
    pub snapshots_refused: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Partitions rewound after a failed delivery or an aborted transaction.
    pub rewinds: u64,
    /// Outputs whose delivery failed for good.
    pub delivery_failures: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Transactions aborted.
    pub transactions_aborted: u64,
    /// Shadow predictions acknowledged (`--shadow`, and candidates on trial).
    pub shadow_predicted: u64,
    /// Shadow predictions whose delivery failed for good (dropped).
    pub shadow_delivery_failures: u64,
    /// Guarded rollout: candidates promoted.
    pub rollouts_promoted: u64,
    /// Guarded rollout: candidates rolled back.
    pub rollouts_rolled_back: u64,
    /// Each shadow: events scored, agreement with the champion, failures.
    pub shadows: Vec<crate::live::ShadowSummary>,
    /// The drift of the last window at exit (`--drift-window`); `null` when the model has no
    /// reference distributions or the window is off.
    pub drift: Option<crate::drift::Report>,
    /// `--labels`: what became of the label records, and each model's accuracy at exit.
    pub labels: Option<crate::live::LabelSummary>,
    /// Seconds from the first event to the last acknowledgement.
    pub busy_seconds: f64,
    /// Seconds from the process's start to the first output acknowledged: model load, group
    /// join, state restore or rebuild, and one event scored (what a restart costs).
    pub first_output_seconds: Option<f64>,
    /// Consumed events per busy second.
    pub events_per_second: f64,
    /// Median consumption-to-acknowledgement latency of the outputs, milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
    /// Peak resident memory of the process (MiB), where the OS tells.
    pub peak_rss_mib: Option<f64>,
}

/// Run the scorer until SIGINT/SIGTERM (or idleness, with `--exit-when-idle`).
pub fn run(args: RunArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let cfg = RunConfig::new(&args)?;
    let metrics = Metrics::new();
    let token = CancellationToken::new();
    let hard = CancellationToken::new();
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
    let current = Arc::new(first);
    metrics.model_version.set(current.version as i64);
    tracing::info!(model = %current.id, fingerprint = %current.fingerprint, "model loaded");
    let shadows = rt.block_on(model::load_shadows(
        &args.model.store,
        &args.shadow,
        &current,
        args.order == shared_features::Order::Watermark,
    ))?;
    if let Some(topic) = &args.labels.labels
        && current.pipeline.label.is_none()
    {
        bail!(
            "--labels `{topic}`: the pipeline {} declares no [label] to read from the label \
             records",
            current.pipeline.name
        );
    }

    if args.metrics_addr != "off" {
        let (listener, addr) = rt.block_on(http::bind(&args.metrics_addr, "--metrics-addr"))?;
        tracing::info!(addr = %addr, "metrics and health endpoints");
        rt.spawn(http::serve(
            listener,
            http::health_routes(metrics.clone()),
            args.http.clone(),
            token.clone(),
        ));
    }
    rt.spawn(crate::signals(token.clone(), hard.clone()));
    let remote = match &args.remote.model_server {
        Some(url) => {
            if cfg.exactly_once() {
                bail!(
                    "--model-server runs at-least-once only: a transaction cannot wait for a \
                     model server's answers (drop --exactly-once, or score embedded)"
                );
            }
            let width = current.fitted.names().len();
            // tonic's lazy channel takes the runtime it is made in.
            let client = {
                let _rt = rt.enter();
                crate::remote::Client::new(&args.remote, url, &current.name, width)?
            };
            rt.block_on(check_model_server(&client, &token))?;
            Some(crate::remote::Remote::new(
                client,
                &args.remote,
                rt.handle().clone(),
                hard.clone(),
                metrics.clone(),
            ))
        }
        None => None,
    };
    let schemas = args.format.open(
        rt.handle().clone(),
        token.clone(),
        metrics.schema_registry_failures.clone(),
    )?;
    if let Some(r) = &schemas {
        r.check_topics(&cfg.inputs, &current.pipeline)?;
    }
    let checkpoints = cfg
        .checkpoint
        .map(|_| Checkpoints::new(registry.store(), &cfg.group, rt.handle().clone()));
    let revert = match (&r, cfg.rollout.rollout_revert_alias) {
        (shared_models::ModelRef::Alias(name, alias), true) => Some(crate::live::Revert {
            registry: registry.clone(),
            name: name.clone(),
            alias: alias.clone(),
            rt: rt.handle().clone(),
        }),
        _ => None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(model::watch(
        registry,
        r,
        current.version,
        Duration::from_secs_f64(args.reload_interval),
        move |m| tx.send(m).is_ok(),
        metrics.clone(),
    ));

    let consumer = source::group_consumer(
        &cfg.kafka,
        &cfg.group,
        cfg.exactly_once(),
        metrics.lag.clone(),
    )?;
    // Windows keyed by something other than the partition key see only their partition's
    // share of events; with one partition per topic that share is everything. Otherwise the
    // events go through a repartition topic (crate::merge).
    let by = crate::merge::repartition_key(&current.pipeline).map_err(anyhow::Error::msg)?;
    let mut cfg = cfg;
    let mut out_partitions = 1;
    for t in &cfg.inputs {
        let n = crate::retry_until_cancelled(&token, "broker not ready", || {
            kafka::partitions(&consumer, t)
        })?
        .len();
        out_partitions = out_partitions.max(n as i32);
        if n > 1
            && let Some(by) = by
        {
            if cfg.inputs.len() > 1 {
                bail!(
                    "topic `{t}` has {n} partitions and the pipeline's windows keyed by `{by}` \
                     need a repartition step, which takes one input topic; give one --input"
                );
            }
            if cfg.exactly_once() {
                bail!(
                    "topic `{t}` has {n} partitions and the pipeline's windows keyed by `{by}` \
                     need a repartition step, which runs at-least-once only (drop --exactly-once, \
                     or use one partition)"
                );
            }
            if cfg.order == shared_features::Order::Watermark {
                bail!(
                    "topic `{t}` has {n} partitions and the pipeline's windows keyed by `{by}` \
                     need a repartition step, whose merge orders them by time already; \
                     --order watermark is not supported with it yet (drop it, or use one \
                     partition)"
                );
            }
            let topic = cfg
                .repartition_topic
                .clone()
                .unwrap_or_else(|| format!("kml-{}-{t}-repartition", cfg.group));
            if cfg.inputs.contains(&topic) || topic == cfg.output || topic == cfg.dlq {
                bail!("--repartition-topic `{topic}` must differ from the other topics");
            }
            kafka::ensure_topics(&cfg.kafka, &[&topic], n as i32)?;
            let partitions = crate::retry_until_cancelled(&token, "broker not ready", || {
                kafka::partitions(&consumer, &topic)
            })?
            .len() as i32;
            tracing::info!(
                input = %t, repartition = %topic, by, partitions,
                "windows keyed by another column: repartitioning"
            );
            if !shadows.is_empty() || cfg.rollout.rollout_events.is_some() {
                bail!(
                    "topic `{t}` has {n} partitions and the pipeline's windows keyed by `{by}` \
                     need a repartition step; --shadow and --rollout-events are not supported \
                     with it yet (use one partition, or `scorer replay --shadow` on the topic)"
                );
            }
            cfg.repartition = Some(crate::run::Repartition {
                topic,
                input: t.clone(),
                inputs: n,
                partitions,
            });
        }
    }
    let mut outputs = vec![cfg.output.as_str(), cfg.dlq.as_str()];
    if !shadows.is_empty() || cfg.rollout.rollout_events.is_some() {
        outputs.push(&cfg.shadow_output);
    }
    kafka::ensure_topics(&cfg.kafka, &outputs, out_partitions)?;
    let sink = Sink::new(
        &cfg.kafka,
        &cfg.output,
        &cfg.dlq,
        cfg.transactional_id.as_deref(),
    )?;
    if cfg.exactly_once() {
        crate::retry_until_cancelled(&token, "cannot initialise transactions", || {
            sink.init_transactions(Duration::from_secs(10))
                .context("cannot initialise transactions")
        })?;
    }
    let sink = match &cfg.repartition {
        Some(r) => sink.with_repartition(&r.topic),
        None => sink,
    }
    .with_shadows(&cfg.shadow_output);
    let mut inputs: Vec<&str> = cfg.inputs.iter().map(String::as_str).collect();
    if let Some(r) = &cfg.repartition {
        inputs.push(&r.topic);
    }
    rdkafka::consumer::Consumer::subscribe(&consumer, &inputs).context("cannot subscribe")?;
    tracing::info!(
        input = ?cfg.inputs, output = %cfg.output, dlq = %cfg.dlq, group = %cfg.group,
        exactly_once = cfg.exactly_once(), "scoring"
    );
    let reader = source::reader(&cfg.kafka)?;
    let pipeline = current.pipeline.clone();
    let mut live = Live::new(
        cfg.clone(),
        consumer,
        reader,
        sink,
        current,
        metrics,
        token.clone(),
        hard,
        checkpoints,
    );
    if let Some(r) = remote {
        live = live.with_remote(r);
    }
    let labels = match &args.labels.labels {
        Some(topic) => {
            let format = schemas
                .as_ref()
                .map_or(shared_features::wire::Format::Json, |r| r.format());
            let Some(reader) = crate::labels::LabelReader::new(pipeline.clone(), &format) else {
                bail!("--labels `{topic}`: the pipeline declares no [label]");
            };
            crate::live::Labels::open(&args.labels, &cfg.kafka, reader)?
        }
        None => None,
    };
    let mut live = live
        .with_registry(schemas)
        .with_shadows(shadows)
        .with_labels(labels)
        .with_revert(revert);
    live.started_at(started);
    let result = live.run(&rx);
    let summary = live.finish(result.is_ok());
    live.close();
    result?;
    print_summary(&summary, args.json)?;
    token.cancel();
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Wait for the model server to answer its metadata (a server that is down at start is waited
/// for, like the broker), then refuse a model that does not fit the bundle.
async fn check_model_server(
    client: &crate::remote::Client,
    token: &CancellationToken,
) -> Result<()> {
    use crate::remote::Failure;
    let mut wait = Duration::from_millis(200);
    loop {
        match client.check().await {
            Ok(c) => {
                tracing::info!(
                    url = client.url(), model = client.model(), versions = ?c.versions,
                    "scoring with a model server"
                );
                return Ok(());
            }
            Err(Failure::Refused(why)) => bail!("--model-server: {why}"),
            Err(Failure::Down(why)) => {
                if token.is_cancelled() {
                    bail!("--model-server {}: {why}", client.url());
                }
                tracing::warn!(
                    url = client.url(), model = client.model(), error = %why,
                    backoff_ms = wait.as_millis() as u64,
                    "the model server does not answer for the model yet; waiting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = token.cancelled() => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!(
            "scored with {}: {} consumed, {} predicted, {} dead-lettered, {} filtered, {} warmed; \
             {:.0} events/s",
            s.model,
            s.consumed,
            s.predicted,
            s.dead_lettered,
            s.filtered,
            s.warmed,
            s.events_per_second
        );
    }
    Ok(())
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
