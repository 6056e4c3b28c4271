//! Shadows in the model server (`scorer serve --shadow MODEL`): every event the served model
//! scores, over `/v1/score` or the Open Inference Protocol, is scored by each shadow too (on the
//! served model's feature row, or on window state of its own when it computes other features,
//! see [`Scorer::add_shadow`]). The answer is the served model's alone: a shadow decides
//! nothing. Each shadow's prediction is counted in the per-model metrics and, with
//! `--shadow-output TOPIC`, produced to that topic (keyed as the champion's, the same JSON
//! with the shadow's `model` and `version`), without ever holding up the answer: a record the
//! producer cannot take or deliver is counted in `kml_shadow_delivery_failures_total` and
//! dropped.

use std::sync::Arc;

use anyhow::{Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use shared_models::Servable;

use crate::kafka::{self, KafkaArgs};
use crate::metrics::{Counted, Metrics, ModelMetrics};
use crate::score::Scorer;

/// The shadows of a model server, and the per-model metrics of the served model and of each.
pub(crate) struct ServeShadows {
    champion: ModelMetrics,
    each: Vec<(Arc<Servable>, ModelMetrics)>,
    out: Option<Out>,
}

/// Where the shadows' predictions go.
struct Out {
    producer: ThreadedProducer<Delivered>,
    topic: String,
}

/// Counts what the producer delivered.
struct Delivered {
    metrics: Metrics,
}

impl ClientContext for Delivered {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_client(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(&error, reason);
    }
}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.metrics.shadow_predictions.inc();
            }
            Err((e, _)) => {
                self.metrics.shadow_delivery_failures.inc();
                tracing::warn!(error = %e, "a shadow prediction was not delivered; dropped");
            }
        }
    }
}

impl ServeShadows {
    /// Metrics for `champion` and each of `shadows`; their predictions produced to `topic`
    /// (created if missing) on the brokers of `kafka`, when given.
    pub(crate) fn new(
        champion: &Servable,
        shadows: &[Arc<Servable>],
        topic: Option<&str>,
        kafka: &KafkaArgs,
        metrics: &Metrics,
    ) -> Result<Self> {
        let out = match topic {
            Some(topic) => {
                kafka::ensure_topics(kafka, &[topic], 1)?;
                let producer = kafka
                    .config(&[("linger.ms", "5"), ("enable.idempotence", "true")])
                    .create_with_context(Delivered {
                        metrics: metrics.clone(),
                    })
                    .context("cannot create the producer for --shadow-output")?;
                Some(Out {
                    producer,
                    topic: topic.to_string(),
                })
            }
            None => None,
        };
        Ok(Self {
            champion: metrics.model(&champion.id, "champion"),
            each: (shadows.iter())
                .map(|m| (m.clone(), metrics.model(&m.id, "shadow")))
                .collect(),
            out,
        })
    }

    /// A new served model: its metrics.
    pub(crate) fn swap_champion(&mut self, champion: &Servable, metrics: &Metrics) {
        self.champion = metrics.model(&champion.id, "champion");
    }

    /// The served model in `scorer` just scored an event: count its score, and what each
    /// shadow made of the event, and send the shadows' predictions.
    pub(crate) fn after_champion(&self, scorer: &Scorer) {
        let champion = scorer.last_score();
        self.champion.observe(champion);
        for shadow in scorer.shadows() {
            let Some((_, metrics)) =
                (self.each.iter()).find(|(m, _)| Arc::ptr_eq(m, shadow.model()))
            else {
                continue;
            };
            if !matches!(
                metrics.count_shadow(shadow, champion.1),
                Counted::Scored { .. }
            ) {
                continue;
            }
            if let Some(o) = &self.out {
                let record = BaseRecord::to(&o.topic)
                    .key(shadow.key())
                    .payload(shadow.prediction());
                if let Err((e, _)) = o.producer.send(record) {
                    o.producer.context().metrics.shadow_delivery_failures.inc();
                    tracing::warn!(error = %e, "a shadow prediction was not sent; dropped");
                }
            }
        }
    }

    /// Deliver what is in flight, for up to `timeout` (at shutdown).
    pub(crate) fn flush(&self, timeout: std::time::Duration) {
        if let Some(o) = &self.out {
            let _ = o.producer.flush(timeout);
        }
    }
}
