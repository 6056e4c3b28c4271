//! Drift of the inputs and the score against the training split's reference distributions
//! (`reference.json` in the bundle, [`shared_models::drift`]): a window of scored events counted
//! in the reference's bins, and per column the PSI and the Jensen-Shannon distance, flagged past
//! the default thresholds (Evidently's: PSI 0.1, Jensen-Shannon 0.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shared_features::Order;
use shared_models::Servable;
use shared_models::drift::{Distribution, JS_THRESHOLD, PSI_THRESHOLD, Reference};

use crate::kafka::KafkaArgs;
use crate::model::ModelArgs;
use crate::schema_registry::FormatArgs;
use crate::score::{Outcome, Scorer, SourcePos};

/// `scorer drift` options.
#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    format: FormatArgs,
    /// The topic whose range is measured (as `scorer replay --drift` scores it).
    #[arg(long, required_unless_present = "events", conflicts_with = "events")]
    input: Option<String>,
    /// ...or a history file (CSV, or JSON lines by the .jsonl/.ndjson/.json extension), scored
    /// in event order as `scorer feed` would publish it.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Start of the range (an event time; with `--input` also an offset); earlier events only
    /// fill the windows.
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive, like `--from`.
    #[arg(long)]
    to: Option<String>,
    /// With `--input`: how events reach the windows (`arrival` or `watermark`, as `scorer
    /// replay --order`).
    #[arg(long, default_value = "arrival")]
    order: Order,
    /// Also write the report as `drift.json` and `drift.png` in this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `scorer drift --json` prints.
#[derive(Serialize)]
struct DriftSummary<'a> {
    model: &'a str,
    /// `topic NAME` or the history file's path.
    source: String,
    #[serde(flatten)]
    report: &'a Report,
}

/// Measure the drift of a topic range or a history file against the model's reference
/// distributions; print it as a table or JSON, and write it with `--report`.
pub fn drift(args: DriftArgs) -> Result<()> {
    let servable = crate::model::load_blocking(&args.model)?;
    if servable.reference.is_none() {
        bail!(
            "model {} has no reference distributions (reference.json): it was published before \
             trainer fit stored them; fit it again to measure drift",
            servable.id
        );
    }
    let (source, report, shares) = match (&args.input, &args.events) {
        (Some(topic), _) => {
            let replay = crate::replay::ReplayArgs::for_drift(
                args.kafka.clone(),
                args.model.clone(),
                args.format.clone(),
                topic.clone(),
                (args.from.clone(), args.to.clone()),
                args.order,
            );
            let s = crate::replay::run(&replay)?;
            let report = s.drift.context("the replay measured no drift")?;
            (format!("topic {topic}"), report, s.drift_score_shares)
        }
        (None, Some(path)) => {
            let (report, shares) = file_drift(&servable, path, &args)?;
            (path.display().to_string(), report, shares)
        }
        (None, None) => bail!("give --input TOPIC or --events FILE"),
    };
    if let Some(dir) = &args.report {
        let reference = servable.reference.as_ref().map(|r| r.score.shares.clone());
        write(
            dir,
            &report,
            &reference.unwrap_or_default(),
            &shares,
            &source,
        )?;
    }
    if args.json {
        let s = DriftSummary {
            model: &servable.id,
            source,
            report: &report,
        };
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("{} on {source}:", servable.id);
        print(&report);
    }
    Ok(())
}

/// The drift of a history file's events in `[--from, --to)`, scored in event order (the
/// earlier ones fill the windows).
fn file_drift(m: &Arc<Servable>, path: &Path, args: &DriftArgs) -> Result<(Report, Vec<f64>)> {
    let Some(reference) = m.reference.as_ref() else {
        bail!("model {} has no reference distributions", m.id);
    };
    let p = &m.pipeline;
    let bound = |t: &Option<String>, flag: &str| {
        t.as_deref()
            .map(|s| {
                shared_features::time::parse_date_or_timestamp(s)
                    .map_err(|e| anyhow::anyhow!("{flag} `{s}`: not an event time: {e}"))
            })
            .transpose()
    };
    let (from, to) = (bound(&args.from, "--from")?, bound(&args.to, "--to")?);
    let events = crate::feed::read_events(p, path)?;
    let meta = shared_features::events::event_meta(p, &events);
    let name = path.display().to_string();
    let mut scorer = Scorer::new(m.clone(), usize::MAX);
    let mut window = Window::new(reference);
    for i in shared_features::events::event_order(p, &events) {
        let Some(t) = meta[i].1 else {
            continue; // no event time: the scorer would dead-letter it
        };
        if to.is_some_and(|e| t >= e) {
            break; // in event order: the rest is later still
        }
        if from.is_some_and(|f| t < f) {
            scorer.warm(&events[i], i as i64);
            continue;
        }
        let pos = SourcePos {
            topic: &name,
            partition: 0,
            offset: i as i64,
        };
        if let Outcome::Scored { .. } = scorer.score(Some(&events[i]), pos) {
            window.add(reference, scorer.features(), scorer.last_score().0);
        }
    }
    if window.events == 0 {
        bail!("{name}: no event of the range was scored");
    }
    Ok((window.report(reference), window.score_shares()))
}

/// Write `drift.json` and (with the `plots` feature) `drift.png` into `dir`.
pub fn write(
    dir: &Path,
    report: &Report,
    score_reference: &[f64],
    score_window: &[f64],
    source: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("drift.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    #[cfg(feature = "plots")]
    {
        let columns: Vec<shared_models::plots::Drifted> = std::iter::once(&report.score)
            .chain(&report.inputs)
            .filter_map(|c| {
                Some(shared_models::plots::Drifted {
                    name: c.name.clone(),
                    psi: c.psi?,
                    drifted: c.drifted,
                })
            })
            .collect();
        let title = format!(
            "Drift of {} events of {source} against {} training events: {}",
            report.events,
            report.reference_events,
            report.headline()
        );
        let png = shared_models::plots::drift_png(
            &title,
            &columns,
            report.psi_threshold,
            score_reference,
            score_window,
        )?;
        let path = dir.join("drift.png");
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[cfg(not(feature = "plots"))]
    let _ = (score_reference, score_window, source);
    Ok(())
}

/// Counts of scored events in the reference's bins.
pub struct Window {
    inputs: Vec<Vec<u64>>,
    score: Vec<u64>,
    events: u64,
}

/// The last `capacity` scored events counted in the reference's bins (`scorer run
/// --drift-window`): each event's bins are kept in a ring, so the oldest is counted out as a
/// new one comes in, and the counts are always exactly those of the last `capacity` events.
pub struct Sliding {
    counts: Window,
    /// The bin of each column (the inputs, then the score) of each event in the window.
    ring: Vec<u16>,
    width: usize,
    capacity: usize,
    /// Where the next event's bins go.
    next: usize,
    len: usize,
}

impl Sliding {
    /// An empty window of at most `capacity` events (at least 1) for `reference`.
    pub fn new(reference: &Reference, capacity: usize) -> Self {
        let width = reference.inputs.len() + 1;
        let capacity = capacity.max(1);
        Self {
            counts: Window::new(reference),
            ring: vec![0; width * capacity],
            width,
            capacity,
            next: 0,
            len: 0,
        }
    }

    /// Count one scored event in, and the oldest out when the window is full.
    pub fn add(&mut self, reference: &Reference, x: &[f64], score: f64) {
        let w = self.width;
        let slot = &mut self.ring[self.next * w..(self.next + 1) * w];
        if self.len == self.capacity {
            let (inputs, last) = slot.split_at(w - 1);
            for (counts, &b) in self.counts.inputs.iter_mut().zip(inputs) {
                counts[usize::from(b)] -= 1;
            }
            self.counts.score[usize::from(last[0])] -= 1;
            self.counts.events -= 1;
        } else {
            self.len += 1;
        }
        for (i, (d, &v)) in reference.inputs.iter().zip(x).enumerate() {
            let b = d.bin(v);
            self.counts.inputs[i][b] += 1;
            slot[i] = b as u16;
        }
        let b = reference.score.bin(score);
        self.counts.score[b] += 1;
        slot[w - 1] = b as u16;
        self.counts.events += 1;
        self.next = (self.next + 1) % self.capacity;
    }

    /// Events in the window.
    pub fn events(&self) -> u64 {
        self.counts.events
    }

    /// The window's drift against `reference`.
    pub fn report(&self, reference: &Reference) -> Report {
        self.counts.report(reference)
    }
}

/// One column's drift.
#[derive(Serialize, Debug, Clone)]
pub struct Column {
    /// The input's name, or `score`.
    pub name: String,
    /// Population stability index against the reference.
    pub psi: Option<f64>,
    /// Jensen-Shannon distance (base 2) from the reference.
    pub js: Option<f64>,
    /// Past either threshold.
    pub drifted: bool,
}

/// The drift of a window.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// Events in the window.
    pub events: u64,
    /// Training events of the reference.
    pub reference_events: u64,
    /// The thresholds applied.
    pub psi_threshold: f64,
    /// The thresholds applied.
    pub js_threshold: f64,
    /// The score's drift.
    pub score: Column,
    /// The inputs that drifted, by PSI, largest first.
    pub drifted: Vec<String>,
    /// Every input's drift, in input order.
    pub inputs: Vec<Column>,
}

impl Report {
    /// `k of n inputs drifted`, and whether the score did.
    pub fn headline(&self) -> String {
        format!(
            "{} of {} inputs drifted{}",
            self.drifted.len(),
            self.inputs.len(),
            if self.score.drifted {
                ", and the score"
            } else {
                ""
            }
        )
    }
}

impl Window {
    /// An empty window for `reference`.
    pub fn new(reference: &Reference) -> Self {
        Self {
            inputs: reference.inputs.iter().map(|d| vec![0; d.len()]).collect(),
            score: vec![0; reference.score.len()],
            events: 0,
        }
    }

    /// Count one scored event: its encoded inputs `x` and its score.
    pub fn add(&mut self, reference: &Reference, x: &[f64], score: f64) {
        for ((counts, d), &v) in self.inputs.iter_mut().zip(&reference.inputs).zip(x) {
            counts[d.bin(v)] += 1;
        }
        self.score[reference.score.bin(score)] += 1;
        self.events += 1;
    }

    /// The window's share of events in each bin of the reference's score.
    pub fn score_shares(&self) -> Vec<f64> {
        let n = self.events.max(1) as f64;
        self.score.iter().map(|&c| c as f64 / n).collect()
    }

    /// The window's drift against `reference`.
    pub fn report(&self, reference: &Reference) -> Report {
        let column = |d: &Distribution, counts: &[u64]| {
            let (psi, js) = (d.psi(counts), d.jensen_shannon(counts));
            Column {
                name: d.name.clone(),
                drifted: psi.is_some_and(|p| p > PSI_THRESHOLD)
                    || js.is_some_and(|j| j > JS_THRESHOLD),
                psi,
                js,
            }
        };
        let inputs: Vec<Column> = reference
            .inputs
            .iter()
            .zip(&self.inputs)
            .map(|(d, c)| column(d, c))
            .collect();
        let mut drifted: Vec<&Column> = inputs.iter().filter(|c| c.drifted).collect();
        drifted.sort_by(|a, b| b.psi.unwrap_or(0.0).total_cmp(&a.psi.unwrap_or(0.0)));
        Report {
            events: self.events,
            reference_events: reference.events,
            psi_threshold: PSI_THRESHOLD,
            js_threshold: JS_THRESHOLD,
            score: column(&reference.score, &self.score),
            drifted: drifted.iter().map(|c| c.name.clone()).collect(),
            inputs,
        }
    }
}

/// The report as a table, for people: the score, then the inputs by PSI, largest first.
pub fn print(r: &Report) {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "drift of {} events against {} training events (PSI > {}, Jensen-Shannon > {}): {}",
        r.events,
        r.reference_events,
        r.psi_threshold,
        r.js_threshold,
        r.headline()
    );
    let mut rows: Vec<&Column> = std::iter::once(&r.score).chain(&r.inputs).collect();
    rows[1..].sort_by(|a, b| b.psi.unwrap_or(0.0).total_cmp(&a.psi.unwrap_or(0.0)));
    println!("  {:<40}{:>10}{:>10}  drifted", "column", "PSI", "JS");
    for c in rows {
        println!(
            "  {:<40}{:>10}{:>10}  {}",
            c.name,
            f(c.psi),
            f(c.js),
            if c.drifted { "yes" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sliding window's counts are those of a fresh window over its last `capacity`
    /// events, whatever came before: checked after every event of a stream that changes.
    #[test]
    fn a_sliding_window_counts_exactly_its_last_events() {
        let names = vec!["a".to_string(), "flag".to_string()];
        let rows: Vec<Vec<f64>> = (0..500)
            .map(|i| vec![f64::from(i % 97), f64::from(i % 2)])
            .collect();
        let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let scores: Vec<f64> = (0..500).map(|i| f64::from(i % 100) / 100.0).collect();
        let reference = Reference::fit(&names, &refs, &scores);
        let stream: Vec<(Vec<f64>, f64)> = (0..300)
            .map(|i| {
                let shift = if i < 150 { 0.0 } else { 60.0 };
                (
                    vec![f64::from(i * 7 % 113) + shift, f64::from(i % 2)],
                    f64::from(i % 37) / 37.0,
                )
            })
            .collect();
        let mut sliding = Sliding::new(&reference, 40);
        for (n, (x, score)) in stream.iter().enumerate() {
            sliding.add(&reference, x, *score);
            let mut fresh = Window::new(&reference);
            for (x, score) in &stream[(n + 1).saturating_sub(40)..=n] {
                fresh.add(&reference, x, *score);
            }
            assert_eq!(sliding.counts.inputs, fresh.inputs, "after event {n}");
            assert_eq!(sliding.counts.score, fresh.score, "after event {n}");
            assert_eq!(sliding.events(), fresh.events);
        }
        // The window moved past the shift: the first input drifted, the flag did not.
        let r = sliding.report(&reference);
        assert_eq!(r.drifted, vec!["a".to_string()], "{r:?}");
    }
}
