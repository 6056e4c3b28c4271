//! `scorer run --model-server URL`: the stream application that calls a model server (the
//! field's first deployment pattern). Features are computed here by the same engine as embedded
//! scoring, with the bundle's pipeline and encoding; each batch of encoded vectors goes to a
//! server that speaks the Open Inference Protocol, over REST (`http://`, `https://`) or gRPC
//! (`grpc://`), and the scores that come back become predictions whose lineage names the
//! remote model and its version.
//!
//! The loop ([`crate::live`]) hands rows to [`Remote::push`]; a batch leaves at
//! `--model-server-batch` rows or at the end of the loop's consume step, and at most
//! `--model-server-in-flight` requests are out at once. Answers are taken in the order the
//! requests were sent, so each partition's predictions keep their order. A row waiting for its
//! answer is held in the offset tracker: nothing past it is committed.
//!
//! Failures, sorted:
//! - the server is down, slow (`--model-server-timeout`), overloaded, not ready, or answers
//!   5xx, 404, 408 or 429 (gRPC: anything but the codes below): not the events' fault. The
//!   request is retried with backoff until it is answered, every failure logged and counted
//!   (`kml_model_server_failures_total`); once every request slot waits, the loop stops
//!   consuming (`kml_model_server_stalled` is 1) while still polling the group. Nothing is
//!   lost and nothing is dead-lettered for it.
//! - the server refuses a request (HTTP 400, 413, 422; gRPC `INVALID_ARGUMENT`, `OUT_OF_RANGE`,
//!   `RESOURCE_EXHAUSTED`): the batch is split in halves until the refused rows are alone;
//!   each goes to the dead-letter topic with the server's reason, the others are scored.
//! - the answer names a per-row `error` (the `error` output of `scorer serve`'s models): that
//!   row is dead-lettered with it. An answer without the score output, or of the wrong size,
//!   counts as a server failure (retried): it is not the row's fault either.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use shared_models::Servable;
pub(crate) use shared_models::schema_registry::transport_error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::http::positive_seconds;
use crate::metrics::Metrics;

mod client;

pub use client::{Checked, Client, Datatype, Failure, RowResult};

/// `--model-server` options of `scorer run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Score with a model server speaking the Open Inference Protocol instead of the bundle's
    /// own model: `http://HOST:PORT` (REST; `https://` too) or `grpc://HOST:PORT`. Features are
    /// still computed here, with the bundle's pipeline and encoding.
    #[arg(long, env = "KML_MODEL_SERVER")]
    pub model_server: Option<String>,
    /// The model's name on the server (default: `<bundle name>_features`, the name
    /// `scorer serve` gives the bundle's model of encoded vectors).
    #[arg(long)]
    pub model_server_model: Option<String>,
    /// The model's version on the server (default: the server's choice).
    #[arg(long)]
    pub model_server_version: Option<String>,
    /// Name of the input tensor (shape `[n, d]`, `d` the bundle's input width).
    #[arg(long, default_value = "features")]
    pub model_server_input: String,
    /// Datatype of the input tensor. FP32 rounds the features, so scores may differ from
    /// embedded scoring's.
    #[arg(long, value_enum, default_value_t = Datatype::Fp64)]
    pub model_server_datatype: Datatype,
    /// The output tensor holding the score: shape `[n]` or `[n, 1]`, or `[n, 2]` (a binary
    /// classifier's class probabilities, e.g. scikit-learn's `predict_proba`: the second column
    /// is taken).
    #[arg(long, default_value = "score")]
    pub model_server_output: String,
    /// Most rows per request.
    #[arg(long, default_value_t = 256)]
    pub model_server_batch: usize,
    /// Most requests out at once; the scorer stops consuming while all of them wait.
    #[arg(long, default_value_t = 4)]
    pub model_server_in_flight: usize,
    /// Seconds a request may take before it is abandoned and sent again.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub model_server_timeout: f64,
}

/// Score rows `x` (`n` of `width`): retried while the server is down (until `token` is
/// cancelled), split in halves while it refuses, until each refused row is alone.
async fn score_rows(
    client: Client,
    x: Vec<f64>,
    token: CancellationToken,
    metrics: Metrics,
) -> Answer {
    let width = client.width.max(1);
    let n = x.len() / width;
    let mut rows = Vec::with_capacity(n);
    let mut model = client.model.clone();
    let mut version = String::new();
    // Ranges still to score, in order.
    let mut todo = vec![(0, n)];
    let mut delays = delays();
    let mut failing = false;
    while let Some((a, b)) = todo.pop() {
        let t0 = Instant::now();
        match client.infer(&x[a * width..b * width]).await {
            Ok(reply) => {
                metrics
                    .model_server_latency
                    .observe(t0.elapsed().as_secs_f64());
                metrics.model_server_requests.inc();
                if failing {
                    tracing::info!(url = %client.url, "the model server answers again");
                    failing = false;
                    delays = crate::remote::delays();
                }
                rows.extend(reply.rows);
                model = reply.model;
                version = reply.version;
            }
            Err(Failure::Refused(why)) if b - a > 1 => {
                metrics.model_server_refusals.inc();
                tracing::debug!(rows = b - a, reason = %why, "the model server refused a batch; splitting it");
                let mid = a + (b - a) / 2;
                todo.push((mid, b));
                todo.push((a, mid));
            }
            Err(Failure::Refused(why)) => {
                metrics.model_server_refusals.inc();
                rows.push(RowResult::Refused(format!(
                    "the model server refused the row: {why}"
                )));
            }
            Err(Failure::Down(why)) => {
                metrics.model_server_failures.inc();
                if token.is_cancelled() {
                    return Answer::Cancelled;
                }
                let wait = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(
                    url = %client.url, model = %client.model, error = %why,
                    backoff_ms = wait.as_millis() as u64,
                    "the model server did not answer; retrying (nothing is committed past these rows)"
                );
                failing = true;
                todo.push((a, b));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = token.cancelled() => return Answer::Cancelled,
                }
            }
        }
    }
    Answer::Done {
        x,
        rows,
        model,
        version,
    }
}

fn delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How a request ended.
#[derive(Debug)]
enum Answer {
    /// Answered: one result per row, and the model that gave them.
    Done {
        x: Vec<f64>,
        rows: Vec<RowResult>,
        model: String,
        version: String,
    },
    /// Shutting down before an answer: the rows stay uncommitted (scored again next time).
    Cancelled,
}

/// One row waiting for its score: where its output goes, and what a dead letter needs.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The partition slot and sequence number in the offset tracker.
    pub slot: usize,
    /// Its sequence number.
    pub seq: u64,
    /// Its source partition and offset.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its event time (epoch ms).
    pub event_time: i64,
    /// The record's timestamp, for a dead letter.
    pub timestamp: Option<i64>,
    key: (u32, u32),
    source_key: (u32, u32),
    payload: (u32, u32),
}

/// Rows of one request and their bytes (keys, and the source events for dead letters).
#[derive(Debug, Default)]
pub struct Batch {
    rows: Vec<Row>,
    bytes: Vec<u8>,
    x: Vec<f64>,
    /// The bundle whose pipeline and encoding computed the rows (a hot reload starts a new
    /// batch).
    model: Option<Arc<Servable>>,
}

impl Batch {
    fn clear(&mut self) {
        self.rows.clear();
        self.bytes.clear();
        self.x.clear();
        self.model = None;
    }

    /// The bundle that computed the rows' features.
    pub fn model(&self) -> Option<&Arc<Servable>> {
        self.model.as_ref()
    }

    fn put(&mut self, b: &[u8]) -> (u32, u32) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(b);
        (start, self.bytes.len() as u32)
    }

    fn get(&self, r: (u32, u32)) -> &[u8] {
        &self.bytes[r.0 as usize..r.1 as usize]
    }

    /// The prediction key of `row`.
    pub fn key(&self, row: &Row) -> &[u8] {
        self.get(row.key)
    }

    /// The source event's key and payload of `row` (empty for a row from a merge).
    pub fn source(&self, row: &Row) -> (&[u8], &[u8]) {
        (self.get(row.source_key), self.get(row.payload))
    }

    /// The rows, in the order they were pushed.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }
}

/// What [`Remote::push`] needs of a row besides its features.
pub struct Pushed<'a> {
    /// Slot and sequence number in the tracker.
    pub slot: usize,
    /// Sequence number.
    pub seq: u64,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Event time (epoch ms).
    pub event_time: i64,
    /// The prediction's key.
    pub key: &'a [u8],
    /// The source record's key, payload and timestamp (for a dead letter).
    pub source: (&'a [u8], &'a [u8], Option<i64>),
}

struct InFlight {
    batch: Batch,
    rx: oneshot::Receiver<Answer>,
}

/// An answered batch, taken by [`Remote::next_done`].
pub struct Done {
    /// The rows and their bytes.
    pub batch: Batch,
    /// One result per row, in order.
    pub results: Vec<RowResult>,
    /// The remote model's name and version, as the server answered.
    pub model: String,
    /// Its version (empty when the server gave none).
    pub version: String,
}

/// The loop's side: the batch being filled and the requests out.
pub struct Remote {
    client: Client,
    handle: tokio::runtime::Handle,
    token: CancellationToken,
    metrics: Metrics,
    batch_rows: usize,
    max_in_flight: usize,
    pending: Batch,
    in_flight: VecDeque<InFlight>,
    spare: Vec<Batch>,
    /// Since when every request slot is taken (a stall, when it lasts).
    full_since: Option<Instant>,
}

impl Remote {
    /// The loop's side of `client`, sending requests on `handle`'s runtime.
    pub fn new(
        client: Client,
        args: &RemoteArgs,
        handle: tokio::runtime::Handle,
        token: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            handle,
            token,
            metrics,
            batch_rows: args.model_server_batch,
            max_in_flight: args.model_server_in_flight,
            pending: Batch::default(),
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            full_since: None,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Add a row with its features `x`, computed by `model`; a full batch is sent when a
    /// request slot is free.
    pub fn push(&mut self, r: Pushed<'_>, x: &[f64], model: &Arc<Servable>) {
        if self
            .pending
            .model
            .as_ref()
            .is_some_and(|m| !Arc::ptr_eq(m, model))
        {
            // A new version computed these: its rows go in a batch of their own, even past the
            // in-flight limit (once per reload).
            self.send();
        }
        let b = &mut self.pending;
        b.model.get_or_insert_with(|| model.clone());
        let key = b.put(r.key);
        let source_key = b.put(r.source.0);
        let payload = b.put(r.source.1);
        b.x.extend_from_slice(x);
        b.rows.push(Row {
            slot: r.slot,
            seq: r.seq,
            partition: r.partition,
            offset: r.offset,
            event_time: r.event_time,
            timestamp: r.source.2,
            key,
            source_key,
            payload,
        });
        if self.pending.rows.len() >= self.batch_rows {
            self.flush();
        }
    }

    /// Send the rows pushed so far, if any and if a request slot is free.
    pub fn flush(&mut self) {
        if self.in_flight.len() < self.max_in_flight {
            self.send();
        }
    }

    fn send(&mut self) {
        if self.pending.rows.is_empty() {
            return;
        }
        let mut batch = std::mem::replace(&mut self.pending, self.spare.pop().unwrap_or_default());
        let x = std::mem::take(&mut batch.x);
        let (tx, rx) = oneshot::channel();
        let (client, token, metrics) = (
            self.client.clone(),
            self.token.clone(),
            self.metrics.clone(),
        );
        self.handle.spawn(async move {
            let _ = tx.send(score_rows(client, x, token, metrics).await);
        });
        self.in_flight.push_back(InFlight { batch, rx });
        self.metrics
            .model_server_in_flight
            .set(self.in_flight.len() as i64);
        self.update_stall();
    }

    fn update_stall(&mut self) {
        let full = self.in_flight.len() >= self.max_in_flight;
        match (full, self.full_since) {
            (true, None) => self.full_since = Some(Instant::now()),
            (false, Some(_)) => {
                self.full_since = None;
                self.metrics.model_server_stalled.set(0);
            }
            _ => {}
        }
        // A wait longer than a request's timeout is a stall, not a busy server.
        if let Some(t) = self.full_since
            && t.elapsed() > self.client.timeout
        {
            self.metrics.model_server_stalled.set(1);
        }
    }

    /// Whether every request slot is taken and a batch waits: consuming more would only grow
    /// the queue.
    pub fn full(&mut self) -> bool {
        self.update_stall();
        self.in_flight.len() >= self.max_in_flight && self.pending.rows.len() >= self.batch_rows
    }

    /// Nothing pushed and nothing out.
    pub fn idle(&self) -> bool {
        self.pending.rows.is_empty() && self.in_flight.is_empty()
    }

    /// Rows pushed and not yet answered.
    pub fn waiting(&self) -> usize {
        self.pending.rows.len()
            + self
                .in_flight
                .iter()
                .map(|f| f.batch.rows.len())
                .sum::<usize>()
    }

    /// The oldest request, if it is answered (answers are taken in the order sent).
    pub fn next_done(&mut self) -> Option<Done> {
        let front = self.in_flight.front_mut()?;
        let answer = match front.rx.try_recv() {
            Ok(a) => a,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            // The task is gone (the runtime shut down): the rows stay uncommitted.
            Err(oneshot::error::TryRecvError::Closed) => Answer::Cancelled,
        };
        let f = self.in_flight.pop_front()?;
        self.metrics
            .model_server_in_flight
            .set(self.in_flight.len() as i64);
        self.update_stall();
        match answer {
            Answer::Done {
                x,
                rows,
                model,
                version,
            } => {
                let mut batch = f.batch;
                batch.x = x;
                Some(Done {
                    batch,
                    results: rows,
                    model,
                    version,
                })
            }
            Answer::Cancelled => {
                self.recycle(f.batch);
                None
            }
        }
    }

    /// Give an answered batch's buffers back.
    pub fn recycle(&mut self, mut b: Batch) {
        b.clear();
        if self.spare.len() < self.max_in_flight + 1 {
            self.spare.push(b);
        }
    }

    /// Drop what waits for partitions no longer ours (the tracker has forgotten them): their
    /// outputs would be repeats of the new owner's.
    pub fn forget(&mut self, current: impl Fn(usize, u64) -> bool) {
        let b = &mut self.pending;
        let mut x = Vec::with_capacity(b.x.len());
        let width = self.client.width.max(1);
        let mut rows = Vec::with_capacity(b.rows.len());
        for (i, r) in b.rows.iter().enumerate() {
            if current(r.slot, r.seq) {
                rows.push(*r);
                x.extend_from_slice(&b.x[i * width..(i + 1) * width]);
            }
        }
        b.rows = rows;
        b.x = x;
    }

    /// Wait up to `timeout` for every pushed row to be sent and answered, calling `each` with
    /// each answer in order.
    pub fn drain(&mut self, timeout: Duration, mut each: impl FnMut(Done)) -> bool {
        let until = Instant::now() + timeout;
        loop {
            self.flush();
            while let Some(d) = self.next_done() {
                each(d);
            }
            if self.idle() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
