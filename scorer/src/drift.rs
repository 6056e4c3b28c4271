//! Drift of the inputs and the score against the training split's reference distributions
//! (`reference.json` in the bundle, [`shared_models::drift`]): a window of scored events counted
//! in the reference's bins, and per column the PSI and the Jensen-Shannon distance, flagged past
//! the default thresholds (Evidently's: PSI 0.1, Jensen-Shannon 0.1).

use serde::Serialize;
use shared_models::drift::{Distribution, JS_THRESHOLD, PSI_THRESHOLD, Reference};

/// Counts of scored events in the reference's bins.
pub struct Window {
    inputs: Vec<Vec<u64>>,
    score: Vec<u64>,
    events: u64,
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
        "drift of {} events against {} training events (PSI > {}, Jensen-Shannon > {}): {} of {} \
         inputs drifted{}",
        r.events,
        r.reference_events,
        r.psi_threshold,
        r.js_threshold,
        r.drifted.len(),
        r.inputs.len(),
        if r.score.drifted {
            ", and the score"
        } else {
            ""
        }
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
