//! `scorer evaluate`: join the predictions in a topic with the labels of the events they
//! scored (by source position) and report online ROC AUC beside the trainer's validation AUC.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};
use shared_features::{OnlineEngine, eval};
use shared_models::metrics::roc_auc;

use crate::kafka::{self, KafkaArgs};
use crate::model::{self, ModelArgs};
use crate::source::{End, each_message, reader};

/// `scorer evaluate` options.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    format: crate::schema_registry::FormatArgs,
    /// The topic the events were scored from.
    #[arg(long)]
    input: String,
    /// The topic holding the predictions.
    #[arg(long, default_value = "predictions")]
    predictions: String,
    /// Only events at or after this event time count (`2013-11-01` or RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize)]
struct Pred {
    topic: String,
    partition: i32,
    offset: i64,
    score: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    predictions: u64,
    repeated: u64,
    labelled: u64,
    joined: u64,
    unscored: u64,
    online_auc: f64,
    offline_auc: Option<f64>,
}

/// Read both topics to their ends, join, and print the report.
pub fn evaluate(args: EvaluateArgs) -> Result<()> {
    let servable = model::load_blocking(&args.model)?;
    let p = &*servable.pipeline;
    let Some(label) = &p.label else {
        bail!("the model's pipeline declares no [label]");
    };
    let from = args
        .from
        .as_deref()
        .map(shared_features::time::parse_date_or_timestamp)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let consumer = reader(&args.kafka)?;
    let token = tokio_util::sync::CancellationToken::new();
    let (_rt, registry) = args.format.open_blocking(token.clone())?;
    let format = registry
        .as_ref()
        .map_or(shared_features::wire::Format::Json, |r| r.format());
    let mut scores: HashMap<(i32, i64), f64> = HashMap::new();
    let (mut predictions, mut repeated) = (0u64, 0u64);
    for part in kafka::partitions(&consumer, &args.predictions)? {
        let (low, high) = consumer
            .fetch_watermarks(&args.predictions, part, Duration::from_secs(30))
            .context("cannot read offsets of the predictions topic")?;
        each_message(
            &consumer,
            &args.predictions,
            part,
            low,
            End::Tail(high),
            &token,
            |m| {
                let pred: Pred = serde_json::from_slice(m.payload().unwrap_or_default())
                    .with_context(|| {
                        format!(
                            "{}/{part}@{}: not a prediction",
                            args.predictions,
                            m.offset()
                        )
                    })?;
                if pred.topic == args.input {
                    predictions += 1;
                    if scores
                        .insert((pred.partition, pred.offset), pred.score)
                        .is_some()
                    {
                        repeated += 1;
                    }
                }
                Ok(())
            },
        )?;
    }
    let (mut ys, mut ss) = (Vec::new(), Vec::new());
    let (mut labelled, mut unscored) = (0u64, 0u64);
    for part in kafka::partitions(&consumer, &args.input)? {
        let (low, high) = consumer
            .fetch_watermarks(&args.input, part, Duration::from_secs(30))
            .context("cannot read offsets of the input topic")?;
        let mut engine = OnlineEngine::new(servable.pipeline.clone(), servable.tables.clone())
            .with_format(&format);
        each_message(
            &consumer,
            &args.input,
            part,
            low,
            End::Tail(high),
            &token,
            |m| {
                if let Some(r) = &registry {
                    r.prepare_waiting(m.payload());
                }
                let Ok(Some(row)) = engine.process(m.payload().unwrap_or_default()) else {
                    return Ok(());
                };
                let t = row[p.event_time_col()].as_i64().unwrap_or(i64::MIN);
                if from.is_some_and(|f| t < f) {
                    return Ok(());
                }
                let Some(y) = eval::label(label, row) else {
                    return Ok(());
                };
                labelled += 1;
                match scores.get(&(part, m.offset())) {
                    Some(&s) => {
                        ys.push(y > 0.5);
                        ss.push(s);
                    }
                    None => unscored += 1,
                }
                Ok(())
            },
        )?;
    }
    let r = Report {
        model: servable.id.clone(),
        predictions,
        repeated,
        labelled,
        joined: ys.len() as u64,
        unscored,
        online_auc: roc_auc(&ss, &ys),
        offline_auc: servable.metrics.get("auc").copied(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: {} predictions joined with {} labelled events ({} unscored); online ROC AUC \
             {:.4}, trainer's validation AUC {}",
            r.model,
            r.joined,
            r.labelled,
            r.unscored,
            r.online_auc,
            r.offline_auc.map_or("-".into(), |a| format!("{a:.4}"))
        );
    }
    Ok(())
}
