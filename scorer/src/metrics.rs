//! Every metric the scorer exports, by name, in one place (prometheus-client). Labels never
//! carry keys or offsets: their number would grow with the data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histogram's buckets: 100 us to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Counters and gauges of one scorer process. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Messages consumed (`kml_events_in_total`).
    pub events_in: Counter,
    /// Predictions acknowledged by the broker (`kml_predictions_total`).
    pub predictions: Counter,
    /// Rows forwarded to the repartition topic and acknowledged (`kml_forwarded_total`).
    pub forwarded: Counter,
    /// Dead letters acknowledged by the broker (`kml_dead_lettered_total`).
    pub dead_lettered: Counter,
    /// Events a pipeline filter dropped: no output is due (`kml_filtered_total`).
    pub filtered: Counter,
    /// Models swapped in without a restart (`kml_model_reloads_total`).
    pub reloads: Counter,
    /// Reload attempts that failed: alias unresolvable, bundle unreadable or refused
    /// (`kml_model_reload_failures_total`); the old model keeps serving.
    pub reload_failures: Counter,
    /// Outputs whose delivery failed for good after librdkafka's retries
    /// (`kml_delivery_failures_total`); their partition is rewound, nothing past them committed.
    pub delivery_failures: Counter,
    /// Partitions rewound to their committable offset and re-scored (`kml_rewinds_total`).
    pub rewinds: Counter,
    /// Panics caught while scoring one event (`kml_scoring_panics_total`): always a bug.
    pub panics: Counter,
    /// Producers recreated after a fatal error (`kml_producer_restarts_total`).
    pub producer_restarts: Counter,
    /// Transactions committed, exactly-once mode (`kml_transactions_total`).
    pub transactions: Counter,
    /// Transactions aborted, exactly-once mode (`kml_transactions_aborted_total`).
    pub transactions_aborted: Counter,
    /// Checkpoints of window state written (`kml_checkpoints_total`).
    pub checkpoints: Counter,
    /// Checkpoint writes that failed (`kml_checkpoint_failures_total`); scoring goes on.
    pub checkpoint_failures: Counter,
    /// Size of the last checkpoint written, bytes (`kml_checkpoint_bytes`).
    pub checkpoint_bytes: Gauge,
    /// Partitions whose state was restored from a checkpoint (`kml_restores_total`).
    pub restores: Counter,
    /// Snapshots refused at restore: corrupt, another pipeline's (`kml_snapshots_refused_total`).
    pub snapshots_refused: Counter,
    /// Events read to build window state at assignment or rewind (`kml_warmed_events_total`).
    pub warmed: Counter,
    /// Version of the model being served (`kml_model_version`).
    pub model_version: Gauge,
    /// Messages behind the high watermark over assigned partitions, from librdkafka's
    /// statistics (`kml_consumer_lag`).
    pub lag: Gauge,
    /// Keys holding window state, over windows and partitions (`kml_window_keys`).
    pub window_keys: Gauge,
    /// Outputs produced and not yet acknowledged (`kml_outputs_in_flight`).
    pub in_flight: Gauge,
    /// From an event's consumption to its output's acknowledgement, per output; for a filtered
    /// event, to the moment it became committable (`kml_event_latency_seconds`).
    pub latency: Histogram,
    /// Requests answered by the model server, `--model-server` (`kml_model_server_requests_total`).
    pub model_server_requests: Counter,
    /// Requests the model server did not answer (down, timed out, 5xx), each retried
    /// (`kml_model_server_failures_total`).
    pub model_server_failures: Counter,
    /// Schema look-ups the schema registry did not answer (down, timed out, 5xx): the partition
    /// waits and the record is read again (`kml_schema_registry_failures_total`).
    pub schema_registry_failures: Counter,
    /// Requests the model server refused (the batch is split until the refused rows are
    /// alone; those are dead-lettered) (`kml_model_server_refusals_total`).
    pub model_server_refusals: Counter,
    /// Requests out to the model server (`kml_model_server_in_flight`).
    pub model_server_in_flight: Gauge,
    /// 1 while every request slot has waited longer than the request timeout: consumption
    /// stopped for the model server (`kml_model_server_stalled`).
    pub model_server_stalled: Gauge,
    /// Time of one answered request to the model server (`kml_model_server_latency_seconds`).
    pub model_server_latency: Histogram,
    /// 1 when serving: a model, an assignment (run) (`kml_ready`); also `/readyz`.
    pub ready_gauge: Gauge<i64, AtomicI64>,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::<u64, AtomicU64>::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<i64, AtomicI64>::default();
            r.register(name, help, g.clone());
            g
        };
        let events_in = counter(&mut r, "kml_events_in", "Messages consumed.");
        let predictions = counter(
            &mut r,
            "kml_predictions",
            "Predictions acknowledged by the broker.",
        );
        let forwarded = counter(
            &mut r,
            "kml_forwarded",
            "Rows forwarded to the repartition topic and acknowledged by the broker.",
        );
        let dead_lettered = counter(
            &mut r,
            "kml_dead_lettered",
            "Dead letters acknowledged by the broker.",
        );
        let filtered = counter(
            &mut r,
            "kml_filtered",
            "Events dropped by a pipeline filter.",
        );
        let reloads = counter(&mut r, "kml_model_reloads", "Models swapped in.");
        let reload_failures = counter(
            &mut r,
            "kml_model_reload_failures",
            "Reload attempts that failed (alias, fetch or validation); the old model serves on.",
        );
        let delivery_failures = counter(
            &mut r,
            "kml_delivery_failures",
            "Outputs that failed for good after the client's retries.",
        );
        let rewinds = counter(
            &mut r,
            "kml_rewinds",
            "Partitions rewound to their committable offset and scored again.",
        );
        let panics = counter(
            &mut r,
            "kml_scoring_panics",
            "Panics caught while scoring an event (a bug; the event was dead-lettered).",
        );
        let producer_restarts = counter(
            &mut r,
            "kml_producer_restarts",
            "Producers recreated after a fatal error.",
        );
        let transactions = counter(&mut r, "kml_transactions", "Transactions committed.");
        let transactions_aborted =
            counter(&mut r, "kml_transactions_aborted", "Transactions aborted.");
        let checkpoints = counter(
            &mut r,
            "kml_checkpoints",
            "Checkpoints of window state written.",
        );
        let checkpoint_failures = counter(
            &mut r,
            "kml_checkpoint_failures",
            "Checkpoint writes that failed; scoring went on.",
        );
        let checkpoint_bytes = gauge(
            &mut r,
            "kml_checkpoint_bytes",
            "Size of the last checkpoint written, bytes.",
        );
        let restores = counter(
            &mut r,
            "kml_restores",
            "Partitions whose window state was restored from a checkpoint.",
        );
        let snapshots_refused = counter(
            &mut r,
            "kml_snapshots_refused",
            "Snapshots refused at restore (corrupt, truncated, another pipeline's).",
        );
        let warmed = counter(
            &mut r,
            "kml_warmed_events",
            "Events read to build window state at assignment or rewind.",
        );
        let model_version = gauge(
            &mut r,
            "kml_model_version",
            "Version of the model being served.",
        );
        let lag = gauge(
            &mut r,
            "kml_consumer_lag",
            "Messages behind the high watermark, all assigned partitions.",
        );
        let window_keys = gauge(
            &mut r,
            "kml_window_keys",
            "Entities holding window state, summed over windows and partitions.",
        );
        let in_flight = gauge(
            &mut r,
            "kml_outputs_in_flight",
            "Outputs produced and not yet acknowledged.",
        );
        let ready_gauge = gauge(&mut r, "kml_ready", "1 when ready to score.");
        let latency = Histogram::new(LATENCY_BUCKETS);
        r.register(
            "kml_event_latency_seconds",
            "From an event's consumption to its output's acknowledgement.",
            latency.clone(),
        );
        let model_server_requests = counter(
            &mut r,
            "kml_model_server_requests",
            "Requests answered by the model server (--model-server).",
        );
        let schema_registry_failures = counter(
            &mut r,
            "kml_schema_registry_failures",
            "Schema look-ups the schema registry did not answer; the record waits and is read again.",
        );
        let model_server_failures = counter(
            &mut r,
            "kml_model_server_failures",
            "Requests the model server did not answer (down, timed out, 5xx); each is retried.",
        );
        let model_server_refusals = counter(
            &mut r,
            "kml_model_server_refusals",
            "Requests the model server refused; refused rows are dead-lettered.",
        );
        let model_server_in_flight = gauge(
            &mut r,
            "kml_model_server_in_flight",
            "Requests out to the model server.",
        );
        let model_server_stalled = gauge(
            &mut r,
            "kml_model_server_stalled",
            "1 while consumption waits for the model server.",
        );
        let model_server_latency = Histogram::new(LATENCY_BUCKETS);
        r.register(
            "kml_model_server_latency_seconds",
            "Time of one answered request to the model server.",
            model_server_latency.clone(),
        );
        Self {
            registry: Arc::new(r),
            events_in,
            predictions,
            forwarded,
            dead_lettered,
            filtered,
            reloads,
            reload_failures,
            delivery_failures,
            rewinds,
            panics,
            producer_restarts,
            transactions,
            transactions_aborted,
            checkpoints,
            checkpoint_failures,
            checkpoint_bytes,
            restores,
            snapshots_refused,
            warmed,
            model_version,
            lag,
            window_keys,
            in_flight,
            latency,
            model_server_requests,
            model_server_failures,
            schema_registry_failures,
            model_server_refusals,
            model_server_in_flight,
            model_server_stalled,
            model_server_latency,
            ready_gauge,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Mark the process ready (or not) for `/readyz` and `kml_ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready
            .store(ready, std::sync::atomic::Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}
