//! Every metric the scorer exports, by name, in one place (prometheus-client). Labels never
//! carry keys or offsets: their number would grow with the data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histogram's buckets: 100 us to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the score histogram's buckets: tenths of the unit interval.
const SCORE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn score_histogram() -> Histogram {
    Histogram::new(SCORE_BUCKETS)
}

/// Labels of the per-model metrics.
type Labels = Vec<(&'static str, String)>;

/// The per-model metrics of one model in one role ([`Metrics::model`]): handles into the
/// families, so that scoring an event costs no label look-up.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    /// Its scores (`kml_model_scores{model,role}`).
    pub scores: Histogram,
    /// Its positive decisions (`kml_model_decisions_total{model,role,decision="positive"}`).
    pub positive: Counter,
    /// Its negative decisions (`...{decision="negative"}`).
    pub negative: Counter,
    /// A shadow: events the champion scored too (`kml_shadow_events_total{model}`).
    pub compared: Counter,
    /// A shadow: of those, the ones it decided as the champion did
    /// (`kml_shadow_agreements_total{model}`).
    pub agreements: Counter,
    /// A shadow: events it failed on, a caught panic (`kml_shadow_failures_total{model}`).
    pub failures: Counter,
}

impl ModelMetrics {
    /// Count one score and decision.
    pub fn observe(&self, (score, decision): (f64, bool)) {
        self.scores.observe(score);
        if decision {
            self.positive.inc();
        } else {
            self.negative.inc();
        }
    }

    /// Count what `shadow` made of the event the champion decided `champion` (the shadow's
    /// metrics), logging a failure; what was counted.
    pub fn count_shadow(&self, shadow: &crate::score::Shadow, champion: bool) -> Counted {
        match shadow.outcome() {
            None => Counted::Nothing,
            Some(Err(why)) => {
                self.failures.inc();
                tracing::warn!(shadow = %shadow.model().id, error = why,
                               "a shadow failed on an event");
                Counted::Failed
            }
            Some(Ok(())) => {
                let scored = shadow.last_score();
                self.observe(scored);
                self.compared.inc();
                let agreed = scored.1 == champion;
                if agreed {
                    self.agreements.inc();
                }
                Counted::Scored {
                    score: scored.0,
                    agreed,
                }
            }
        }
    }
}

/// What a shadow made of an event, as [`ModelMetrics::count_shadow`] counted it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counted {
    /// No outcome: the champion did not score the event, or the shadow's pipeline filtered it.
    Nothing,
    /// It failed on the event.
    Failed,
    /// It scored it: its score, and whether it decided as the champion did.
    Scored {
        /// Its score.
        score: f64,
        /// Whether its decision was the champion's.
        agreed: bool,
    },
}

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
    /// Shadow predictions acknowledged (`kml_shadow_predictions_total`).
    pub shadow_predictions: Counter,
    /// Shadow predictions whose delivery failed for good (`kml_shadow_delivery_failures_total`):
    /// counted and dropped; the champion's partition goes on.
    pub shadow_delivery_failures: Counter,
    model_scores: Family<Labels, Histogram, fn() -> Histogram>,
    model_decisions: Family<Labels, Counter>,
    shadow_events: Family<Labels, Counter>,
    shadow_agreements: Family<Labels, Counter>,
    shadow_failures: Family<Labels, Counter>,
    /// `--drift-window`: PSI of each input (`column` = its name) and of the score
    /// (`column="score"`) over the window, against the training split (`kml_drift_psi`).
    pub drift_psi: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The Jensen-Shannon distance (base 2) of the same (`kml_drift_js`).
    pub drift_js: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Scored events in the drift window (`kml_drift_window_events`).
    pub drift_window_events: Gauge,
    /// Columns past a threshold, the score included (`kml_drift_drifted_columns`).
    pub drift_drifted: Gauge,
    /// 1 when drift is measured; 0 when the model has no reference distributions or the
    /// window is off (`kml_drift_available`).
    pub drift_available: Gauge,
    /// `--labels`: label records by what became of them (`kml_labels_total{outcome}`:
    /// `joined`, `duplicate`, `unmatched`, `too_late`, `malformed`).
    pub labels: Family<Labels, Counter>,
    /// Predictions whose label never came within the horizon
    /// (`kml_unlabelled_predictions_total`).
    pub unlabelled: Counter,
    /// Predictions waiting for their label (`kml_label_pending_predictions`).
    pub label_pending: Gauge,
    /// Labels waiting for their prediction (`kml_label_pending_labels`).
    pub label_early: Gauge,
    accuracy: [Family<Labels, Gauge<f64, AtomicU64>>; 6],
    /// Guarded rollout: decisions by outcome (`kml_rollouts_total{outcome}`: `promoted`,
    /// `rolled_back`, `superseded`).
    pub rollouts: Family<Labels, Counter>,
    /// The version on trial, 0 when none (`kml_rollout_candidate_version`).
    pub rollout_candidate: Gauge,
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
        let shadow_predictions = counter(
            &mut r,
            "kml_shadow_predictions",
            "Shadow predictions acknowledged (scorer run --shadow).",
        );
        let shadow_delivery_failures = counter(
            &mut r,
            "kml_shadow_delivery_failures",
            "Shadow predictions whose delivery failed for good; dropped.",
        );
        let model_scores =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(score_histogram);
        r.register(
            "kml_model_scores",
            "Scores by model and role (champion, shadow).",
            model_scores.clone(),
        );
        let family = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let model_decisions = family(
            &mut r,
            "kml_model_decisions",
            "Decisions by model, role and decision (positive, negative).",
        );
        let shadow_events = family(
            &mut r,
            "kml_shadow_events",
            "Events a shadow scored beside the champion, by shadow.",
        );
        let shadow_agreements = family(
            &mut r,
            "kml_shadow_agreements",
            "Of those, the events the shadow decided as the champion did.",
        );
        let shadow_failures = family(
            &mut r,
            "kml_shadow_failures",
            "Events a shadow failed on (a panic caught); the champion's prediction stands.",
        );
        let gauges = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            r.register(name, help, f.clone());
            f
        };
        let drift_psi = gauges(
            &mut r,
            "kml_drift_psi",
            "PSI over the drift window against the training split, by column (score: the score).",
        );
        let drift_js = gauges(
            &mut r,
            "kml_drift_js",
            "Jensen-Shannon distance (base 2) over the drift window, by column.",
        );
        let drift_window_events = gauge(
            &mut r,
            "kml_drift_window_events",
            "Scored events in the drift window.",
        );
        let drift_drifted = gauge(
            &mut r,
            "kml_drift_drifted_columns",
            "Columns past a drift threshold (PSI 0.1 or Jensen-Shannon 0.1), the score included.",
        );
        let drift_available = gauge(
            &mut r,
            "kml_drift_available",
            "1 when drift is measured (the model has reference distributions).",
        );
        let labels = family(
            &mut r,
            "kml_labels",
            "Label records by outcome: joined, duplicate, unmatched, too_late, malformed.",
        );
        let unlabelled = counter(
            &mut r,
            "kml_unlabelled_predictions",
            "Predictions whose label never came within --label-horizon.",
        );
        let label_pending = gauge(
            &mut r,
            "kml_label_pending_predictions",
            "Predictions waiting for their label.",
        );
        let label_early = gauge(
            &mut r,
            "kml_label_pending_labels",
            "Labels waiting for their prediction.",
        );
        let accuracy = [
            (
                "kml_label_auc",
                "ROC AUC over the last --label-window labelled predictions.",
            ),
            ("kml_label_log_loss", "Log loss over the same."),
            ("kml_label_brier", "Brier score over the same."),
            ("kml_label_mean_score", "Mean score over the same."),
            (
                "kml_label_positive_rate",
                "Share of positive labels over the same.",
            ),
            (
                "kml_label_window_events",
                "Labelled predictions in the window.",
            ),
        ]
        .map(|(name, help)| gauges(&mut r, name, help));
        let rollouts = family(
            &mut r,
            "kml_rollouts",
            "Guarded rollout decisions by outcome: promoted, rolled_back, superseded.",
        );
        let rollout_candidate = gauge(
            &mut r,
            "kml_rollout_candidate_version",
            "The version on trial beside the champion; 0 when none.",
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
            shadow_predictions,
            shadow_delivery_failures,
            model_scores,
            model_decisions,
            shadow_events,
            shadow_agreements,
            shadow_failures,
            drift_psi,
            drift_js,
            drift_window_events,
            drift_drifted,
            drift_available,
            labels,
            unlabelled,
            label_pending,
            label_early,
            accuracy,
            rollouts,
            rollout_candidate,
            ready_gauge,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The per-model metrics of model `id` (`name@version`) in `role` (`champion`, `shadow`).
    pub fn model(&self, id: &str, role: &'static str) -> ModelMetrics {
        let labels: Labels = vec![("model", id.to_string()), ("role", role.to_string())];
        let decision = |d: &str| {
            let mut l = labels.clone();
            l.push(("decision", d.to_string()));
            self.model_decisions.get_or_create(&l).clone()
        };
        // The shadow counters of a champion are not registered: no series of zeros.
        let shadow: Labels = vec![("model", id.to_string())];
        let of = |f: &Family<Labels, Counter>| {
            if role != "champion" {
                f.get_or_create(&shadow).clone()
            } else {
                Counter::default()
            }
        };
        ModelMetrics {
            scores: self.model_scores.get_or_create(&labels).clone(),
            positive: decision("positive"),
            negative: decision("negative"),
            compared: of(&self.shadow_events),
            agreements: of(&self.shadow_agreements),
            failures: of(&self.shadow_failures),
        }
    }

    /// Set the accuracy gauges of one model (`kml_label_auc{model,role}`, ...).
    pub fn accuracy(&self, a: &crate::labels::ModelAccuracy) {
        let labels: Labels = vec![("model", a.model.clone()), ("role", a.role.to_string())];
        let values = [
            a.auc,
            a.log_loss,
            a.brier,
            a.mean_score,
            a.positive_rate,
            Some(a.events as f64),
        ];
        for (family, v) in self.accuracy.iter().zip(values) {
            if let Some(v) = v {
                family.get_or_create(&labels).set(v);
            }
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
