//! `scorer replay`: score a historical range of a topic through the live scoring core, after
//! warming window state with everything before the range; predictions to a topic (through the
//! same pipelined sink as `scorer run`) or to a JSON-lines file.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, KafkaArgs};
use crate::model::{self, ModelArgs};
use crate::offsets::Tag;
use crate::out_file::{Lineage, OutFile, Prediction};
use crate::schema_registry::FormatArgs;
use crate::score::{Admitted, Outcome, Scorer, SourcePos};
use crate::shadow::Comparison;
use crate::sink::{
    DeadLetter, Sink, To, cut_str, lineage_headers, position_headers, source_headers,
};
use crate::source::{End, each_message, reader};
use rdkafka::message::BorrowedMessage;
use shared_features::Order;

/// `scorer replay` options.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    format: FormatArgs,
    /// The topic to replay.
    #[arg(long)]
    input: String,
    /// Start of the range: an offset (every partition) or an event time (`2013-12-01` or
    /// RFC 3339). Default: the beginning.
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive, like `--from`. Default: the end of each partition when the
    /// replay starts.
    #[arg(long)]
    to: Option<String>,
    /// Topic for the predictions (and, with `--dlq`, the dead letters).
    #[arg(long, conflicts_with = "out")]
    output: Option<String>,
    /// Dead-letter topic (default: none; bad events are only counted).
    #[arg(long, requires = "output")]
    dlq: Option<String>,
    /// Write the predictions to this file instead of a topic: a path or a store URL
    /// (`s3://BUCKET/KEY`, `gs://`, `az://`, uploaded when the replay ends); Parquet when the
    /// name ends in `.parquet` (typed columns: key, event_time, score, decision, model,
    /// version, fingerprint, topic, partition, offset), else JSON lines.
    #[arg(long)]
    out: Option<String>,
    /// Larger payloads are refused.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// How events reach the windows: `arrival` (each as it is read) or `watermark` (held until
    /// an event more than `[events] lateness` newer has been read, then in event-time order:
    /// the features `trainer fit --topic` computes over the same log, whatever the topic's
    /// disorder within the lateness; README, "Order").
    #[arg(long, default_value = "arrival")]
    order: Order,
    /// Lineage headers on each prediction too, as `scorer run --lineage-headers`.
    #[arg(long)]
    lineage_headers: bool,
    /// Also score every event with this model (`name@version` or `name@alias`, in the same
    /// store) as a shadow: its predictions decide and write nothing; the replay ends with a
    /// report comparing it with `--model` on the range (README, "Replay as shadow").
    /// Repeatable.
    #[arg(long, value_name = "MODEL")]
    shadow: Vec<String>,
    /// With `--shadow`: also write the report as `report.json` and `report.png` in this
    /// directory.
    #[arg(long, requires = "shadow", value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// Also measure the drift of the range's inputs and scores against the training split's
    /// reference distributions in the bundle (PSI and Jensen-Shannon per input; README,
    /// "Drift").
    #[arg(long)]
    drift: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    Offset(i64),
    Time(i64),
}

fn parse_bound(text: &str, flag: &str) -> Result<Bound> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Bound::Offset(text.parse()?));
    }
    shared_features::time::parse_date_or_timestamp(text)
        .map(Bound::Time)
        .map_err(|e| anyhow::anyhow!("{flag} `{text}`: not an offset nor a time: {e}"))
}

impl ReplayArgs {
    /// A replay that only measures drift (`scorer drift --input`): nothing written or printed.
    pub(crate) fn for_drift(
        kafka: KafkaArgs,
        model: ModelArgs,
        format: FormatArgs,
        input: String,
        (from, to): (Option<String>, Option<String>),
        order: Order,
    ) -> Self {
        Self {
            kafka,
            model,
            format,
            input,
            from,
            to,
            output: None,
            dlq: None,
            out: None,
            max_event_bytes: 1 << 20,
            order,
            lineage_headers: false,
            shadow: Vec::new(),
            report: None,
            drift: true,
            json: true,
        }
    }
}

#[derive(Serialize, Debug, Default)]
pub(crate) struct ReplaySummary {
    model: String,
    topic: String,
    partitions: usize,
    read: u64,
    replayed: u64,
    dead_lettered: u64,
    filtered: u64,
    warmed: u64,
    seconds: f64,
    events_per_second: f64,
    /// With shadows: the comparison (`events`, `agreement`, `models`, ...).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    comparison: Option<crate::shadow::Report>,
    /// With `--drift`: the range's drift against the training split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) drift: Option<crate::drift::Report>,
    /// With `--drift`: the range's share of events in each bin of the reference's score.
    #[serde(skip)]
    pub(crate) drift_score_shares: Vec<f64>,
}

/// Run a replay and print its summary.
pub fn replay(args: ReplayArgs) -> Result<()> {
    let s = run(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "replayed {} of {} ({} partitions) with {}: {} predictions, {} dead-lettered, {} \
             filtered, {} warm-up events; {:.1} s, {:.0} events/s",
            args.input,
            if args.from.is_some() || args.to.is_some() {
                "a range"
            } else {
                "everything"
            },
            s.partitions,
            s.model,
            s.replayed,
            s.dead_lettered,
            s.filtered,
            s.warmed,
            s.seconds,
            s.events_per_second
        );
    }
    Ok(())
}

/// Run a replay; return its summary (the tables of the drift and the shadows' report are
/// printed unless `--json`).
pub(crate) fn run(args: &ReplayArgs) -> Result<ReplaySummary> {
    if args.output.is_none() && args.out.is_none() && args.shadow.is_empty() && !args.drift {
        bail!("say where the predictions go: --output TOPIC or --out FILE");
    }
    let from = args
        .from
        .as_deref()
        .map(|t| parse_bound(t, "--from"))
        .transpose()?;
    let to = args
        .to
        .as_deref()
        .map(|t| parse_bound(t, "--to"))
        .transpose()?;
    let servable = model::load_blocking(&args.model)?;
    let shadows = args
        .shadow
        .iter()
        .map(|m| {
            model::load_blocking(&model::ModelArgs {
                store: args.model.store.clone(),
                model: m.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cmp = Comparison::new(&servable, &shadows);
    let reference = match (&servable.reference, args.drift) {
        (Some(r), true) => Some(r),
        (None, true) => bail!(
            "--drift: model {} has no reference distributions (reference.json): it was published \
             before trainer fit stored them; fit it again to measure drift",
            servable.id
        ),
        _ => None,
    };
    let token = CancellationToken::new();
    let (_rt, registry) = args.format.open_blocking(token.clone())?;
    if let Some(r) = &registry {
        r.check_topics(std::slice::from_ref(&args.input), &servable.pipeline)?;
        for m in &shadows {
            r.check_topics(std::slice::from_ref(&args.input), &m.pipeline)?;
        }
    }
    let consumer = reader(&args.kafka)?;
    let parts = kafka::partitions(&consumer, &args.input)?;
    if parts.len() > 1 && servable.pipeline.repartition_windows().next().is_some() {
        bail!(
            "topic `{}` has {} partitions and the pipeline has windows keyed by another column \
             than the partition key; replay needs one partition",
            args.input,
            parts.len()
        );
    }
    let sink = match &args.output {
        Some(t) => {
            let mut topics = vec![t.as_str()];
            topics.extend(args.dlq.as_deref());
            kafka::ensure_topics(&args.kafka, &topics, parts.len() as i32)?;
            Some(Sink::new(
                &args.kafka,
                t,
                args.dlq.as_deref().unwrap_or(t),
                None,
            )?)
        }
        None => None,
    };
    let lineage = Lineage {
        model: servable.name.clone(),
        version: servable.version,
        fingerprint: servable.fingerprint.clone(),
    };
    let file = args
        .out
        .as_deref()
        .map(|target| OutFile::create(target, &lineage))
        .transpose()?;
    let mut out = Outputs {
        sink,
        file,
        lineage_headers: args.lineage_headers,
        dlq: args.dlq.is_some(),
        model: servable.id.clone(),
        token: &token,
        drift: reference.map(|r| (r, crate::drift::Window::new(r))),
    };
    let mut s = ReplaySummary {
        model: servable.id.clone(),
        topic: args.input.clone(),
        partitions: parts.len(),
        ..Default::default()
    };
    let t0 = Instant::now();
    for &p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(&args.input, p, Duration::from_secs(30))
            .with_context(|| format!("cannot read offsets of {}/{p}", args.input))?;
        let end = match to {
            Some(Bound::Offset(o)) if o <= high => End::At(o),
            _ => End::Tail(high),
        };
        let make = |m: &std::sync::Arc<shared_models::Servable>| {
            match args.order {
                Order::Watermark => Scorer::ordered(m.clone(), args.max_event_bytes),
                Order::Arrival => Scorer::new(m.clone(), args.max_event_bytes),
            }
            .with_registry(registry.clone())
        };
        let mut scorer = make(&servable);
        // Each shadow with window state of its own: its pipeline may differ.
        let mut shadow_scorers: Vec<Scorer> = shadows.iter().map(make).collect();
        let in_offsets = |offset: i64| {
            !matches!(from, Some(Bound::Offset(o)) if offset < o)
                && !matches!(to, Some(Bound::Offset(o)) if offset >= o)
        };
        let in_time = |t: i64| {
            !matches!(from, Some(Bound::Time(f)) if t < f)
                && !matches!(to, Some(Bound::Time(e)) if t >= e)
        };
        let in_range = |offset: i64, t: i64| in_offsets(offset) && in_time(t);
        // A scored event in the range is written; anything else before or after it warmed the
        // windows.
        let scored = |s: &mut ReplaySummary,
                      out: &mut Outputs<'_>,
                      cmp: &mut Comparison,
                      scorer: &Scorer,
                      outcome: Outcome,
                      pos: SourcePos<'_>,
                      msg: Option<&BorrowedMessage<'_>>|
         -> Result<()> {
            match outcome {
                Outcome::Scored { event_time } if in_offsets(pos.offset) && in_time(event_time) => {
                    s.replayed += 1;
                    cmp.champion(
                        (pos.partition, pos.offset),
                        scorer.last_score(),
                        scorer.last_label(),
                    );
                    out.prediction(scorer, pos, event_time)
                }
                Outcome::Dead(why) if in_offsets(pos.offset) => {
                    s.dead_lettered += 1;
                    match msg {
                        Some(msg) => out.dead_letter(msg, &why),
                        None => bail!("{}/{}@{}: {why}", pos.topic, pos.partition, pos.offset),
                    }
                }
                _ => {
                    s.warmed += 1;
                    Ok(())
                }
            }
        };
        let topic = args.input.as_str();
        each_message(&consumer, &args.input, p, low, end, &token, |msg| {
            s.read += 1;
            let pos = SourcePos {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
            };
            scorer.prepare_waiting(msg.payload());
            for (i, shadow) in shadow_scorers.iter_mut().enumerate() {
                shadow_event(shadow, i, msg.payload(), pos, &mut cmp, &in_range);
            }
            if !scorer.is_ordered() {
                let outcome = scorer.score(msg.payload(), pos);
                return scored(&mut s, &mut out, &mut cmp, &scorer, outcome, pos, Some(msg));
            }
            // Watermark order: held until the watermark passes it, then scored in event-time
            // order; refused on arrival as the arrival order refuses.
            match scorer.push(msg.payload(), pos.offset, Some(0)) {
                Admitted::Held => {}
                Admitted::Filtered => s.warmed += 1,
                Admitted::Dead(why) => {
                    scored(
                        &mut s,
                        &mut out,
                        &mut cmp,
                        &scorer,
                        Outcome::Dead(why),
                        pos,
                        Some(msg),
                    )?;
                }
            }
            let mut done = Ok(());
            scorer.release(topic, pos.partition, |scorer, r| {
                if let (Ok(()), Some(outcome)) = (&done, r.outcome) {
                    done = scored(&mut s, &mut out, &mut cmp, scorer, outcome, r.pos, None);
                }
            });
            done
        })?;
        if scorer.is_ordered() {
            scorer.finish();
            let mut done = Ok(());
            scorer.release(topic, p, |scorer, r| {
                if let (Ok(()), Some(outcome)) = (&done, r.outcome) {
                    done = scored(&mut s, &mut out, &mut cmp, scorer, outcome, r.pos, None);
                }
            });
            done?;
            for (i, shadow) in shadow_scorers.iter_mut().enumerate() {
                shadow.finish();
                release_shadow(shadow, i, topic, p, &mut cmp, &in_range);
            }
        }
    }
    if let Some(sink) = &mut out.sink {
        if !sink.flush(Duration::from_secs(300), None) {
            bail!(
                "{} predictions not acknowledged after 300 s",
                sink.in_flight()
            );
        }
        check_reports(sink)?;
    }
    if let Some(f) = out.file.take() {
        f.finish()?;
    }
    s.seconds = t0.elapsed().as_secs_f64();
    s.events_per_second = s.read as f64 / s.seconds.max(1e-9);
    if let Some((r, w)) = &out.drift {
        let report = w.report(r);
        if !args.json {
            crate::drift::print(&report);
        }
        s.drift = Some(report);
        s.drift_score_shares = w.score_shares();
    }
    if !shadows.is_empty() {
        let (report, scores, labels) = cmp.report();
        if let Some(dir) = &args.report {
            crate::shadow::write(dir, &report, &scores, &labels)?;
        }
        if !args.json {
            crate::shadow::print(&report);
        }
        s.comparison = Some(report);
    }
    Ok(s)
}

/// Score one event with shadow `i` (arrival order: at once; watermark order: held, and what the
/// watermark releases), recording what it scored in the range.
fn shadow_event(
    shadow: &mut Scorer,
    i: usize,
    payload: Option<&[u8]>,
    pos: SourcePos<'_>,
    cmp: &mut Comparison,
    in_range: &dyn Fn(i64, i64) -> bool,
) {
    if !shadow.is_ordered() {
        if let Outcome::Scored { event_time } = shadow.score(payload, pos)
            && in_range(pos.offset, event_time)
        {
            cmp.shadow(i, (pos.partition, pos.offset), shadow.last_score());
        }
        return;
    }
    let _ = shadow.push(payload, pos.offset, Some(0));
    release_shadow(shadow, i, pos.topic, pos.partition, cmp, in_range);
}

/// Record what the watermark releases from shadow `i`.
fn release_shadow(
    shadow: &mut Scorer,
    i: usize,
    topic: &str,
    partition: i32,
    cmp: &mut Comparison,
    in_range: &dyn Fn(i64, i64) -> bool,
) {
    shadow.release(topic, partition, |scorer, r| {
        if let Some(Outcome::Scored { event_time }) = r.outcome
            && in_range(r.pos.offset, event_time)
        {
            cmp.shadow(i, (r.pos.partition, r.pos.offset), scorer.last_score());
        }
    });
}

/// Where replayed predictions and dead letters go.
struct Outputs<'a> {
    sink: Option<Sink>,
    file: Option<OutFile>,
    lineage_headers: bool,
    dlq: bool,
    model: String,
    token: &'a CancellationToken,
    /// With `--drift`: the reference and the window counted against it.
    drift: Option<(&'a shared_models::drift::Reference, crate::drift::Window)>,
}

impl Outputs<'_> {
    /// The prediction `scorer` just made for the event at `pos`.
    fn prediction(&mut self, scorer: &Scorer, pos: SourcePos<'_>, event_time: i64) -> Result<()> {
        if let Some((r, w)) = &mut self.drift {
            w.add(r, scorer.features(), scorer.last_score().0);
        }
        if let Some(f) = &mut self.file {
            f.write(&Prediction::of(scorer, pos, event_time))?;
        }
        if let Some(sink) = &mut self.sink {
            let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
            let position = source_headers(pos, &mut pbuf, &mut obuf);
            let all = lineage_headers(&position, &self.model);
            let headers: &[(&'static str, &[u8])] = if self.lineage_headers { &all } else { &[] };
            let (k, v) = (scorer.key(), scorer.prediction());
            sink.send_waiting(
                To::Output,
                k,
                v,
                Some(event_time),
                headers,
                Tag(0),
                self.token,
            )?;
            check_reports(sink)?;
        }
        Ok(())
    }

    /// A message that cannot be scored, with why, to the dead-letter topic (if any).
    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, why: &str) -> Result<()> {
        let Some(sink) = self.sink.as_mut().filter(|_| self.dlq) else {
            return Ok(());
        };
        let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
        let position = position_headers(msg, &mut pbuf, &mut obuf);
        let key = msg.key().unwrap_or_default();
        let mut headers = position.to_vec();
        headers.push(("kml.error", cut_str(why, 2048).as_bytes()));
        let original = msg.payload().unwrap_or_default();
        let d = DeadLetter::for_limit(original, sink.max_message_bytes(), key, &headers);
        if let Some(cut) = &d.cut {
            headers.extend(cut.headers());
        }
        let ts = msg.timestamp().to_millis();
        sink.send_waiting(
            To::DeadLetters,
            key,
            d.payload,
            ts,
            &headers,
            Tag(0),
            self.token,
        )?;
        check_reports(sink)
    }
}

/// A replay has no offsets to hold back: a record that failed for good fails the replay.
fn check_reports(sink: &mut Sink) -> Result<()> {
    let reports = sink.reports();
    let failed = reports.iter().find_map(|r| r.failure.as_ref());
    if let Some(f) = failed {
        bail!("a replayed output could not be delivered: {}", f.error);
    }
    sink.recycle(reports);
    Ok(())
}
