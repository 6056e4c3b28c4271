//! `scorer serve`: the model-server pattern. Applications (or a sidecar's neighbour) send events
//! over HTTP and get predictions back, computed by the same [`Scorer`] as live scoring and
//! replay: the same decoder, joins, windows, encoding and model, so an event scored over HTTP
//! gets the score it would get on a topic.
//!
//! - `POST /v1/score`: the body is one JSON event, or several as JSON lines (with
//!   `--value-format avro` or `protobuf`: one record in the schema registry's wire format, the
//!   bytes a producer writes to the topic). The answer has one
//!   JSON line per event line, in order: the prediction (as on the output topic; its lineage
//!   names topic `http`, partition 0 and the server's running event number as offset),
//!   `{"line": n, "filtered": true}`, or `{"line": n, "error": "..."}` for an event that cannot be
//!   scored (what live scoring would dead-letter). Status 200 when every line was scored or
//!   filtered, 422 when any was refused. Window state is the server's: events update it in the
//!   order they are handled. A large request is scored in slices of [`SLICE`] lines, the lock
//!   released between them, so that a small request never waits behind a whole large one.
//! - Avro and Protobuf events (`--value-format`, `--schema-registry`) are read as on a topic: the
//!   writer schema each record names is fetched from the registry once. A registry that does not
//!   answer is not the event's fault: the request gets 503 and no event of it touches the
//!   window state, so that the client can send it again.
//! - `GET /v1/model`: the model being served (name, version, kind, fingerprint, inputs, metrics).
//! - `/metrics`, `/healthz`, `/readyz` as in `scorer run`.
//! - `--shadow MODEL`: challengers scored beside the served model on every event, their
//!   predictions counted and, with `--shadow-output`, produced to a topic (`serve/shadows.rs`).
//!
//! HTTP/1.1 (hyper, axum) with the limits of [`crate::http`]. A new model version behind an
//! alias is swapped in as soon as the watcher has validated it. A panic while scoring (a bug)
//! is caught: the event is refused, window state is reset (it may be half-updated) and counted
//! in `kml_scoring_panics_total`; the server goes on.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use shared_models::Servable;
use tokio_util::sync::CancellationToken;

use crate::http::{self, HttpLimits, positive_seconds};
use crate::kafka::KafkaArgs;
use crate::metrics::Metrics;
use crate::model::{self, ModelArgs};
use crate::schema_registry::{FormatArgs, SchemaRegistry};
use crate::score::{Outcome, Scorer, SourcePos};

mod shadows;

/// Lines scored per hold of the lock.
pub const SLICE: usize = 256;

/// `scorer serve` options.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    http: HttpLimits,
    #[command(flatten)]
    format: FormatArgs,
    /// Address to listen on (port 0: any free port; the log says which).
    #[arg(long, env = "KML_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Also serve the Open Inference Protocol over gRPC on this address (port 0: any free port;
    /// the log says which).
    #[arg(long, env = "KML_SERVE_GRPC_ADDR")]
    grpc_addr: Option<String>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Larger events are refused.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Seconds between checks of the model alias for a new version.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    reload_interval: f64,
    /// Also score every event with this model (`name@version` or `name@alias`, in the same
    /// store) as a shadow: it decides nothing, its scores are counted in the per-model metrics
    /// (README, "Shadows in the model server"). Repeatable. Resolved at start.
    #[arg(long, value_name = "MODEL")]
    shadow: Vec<String>,
    /// Produce the shadows' predictions to this topic (on `--brokers`); default: only count
    /// them.
    #[arg(long, value_name = "TOPIC")]
    shadow_output: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Benchmark baseline: answer each event line with `{}` unscored, with everything else
    /// (HTTP, body framing, the lock, metrics) as when scoring.
    #[arg(long, hide = true)]
    pass_through: bool,
}

/// The scorer behind one lock.
pub(crate) struct Inner {
    scorer: Scorer,
    next_offset: i64,
    /// `--shadow`: the per-model metrics, and where the shadows' predictions go (`None`
    /// without shadows: the served model alone, nothing more per event).
    shadows: Option<shadows::ServeShadows>,
}

impl Inner {
    /// The model being served.
    pub(crate) fn model(&self) -> &Arc<Servable> {
        self.scorer.model()
    }
}

#[derive(Clone)]
pub(crate) struct App {
    inner: Arc<Mutex<Inner>>,
    pub(crate) metrics: Metrics,
    max_event_bytes: usize,
    pass_through: bool,
    /// The schema registry of Avro or Protobuf events; `None`: JSON.
    pub(crate) registry: Option<Arc<SchemaRegistry>>,
    /// `--shadow`: the challengers every scorer gets.
    shadows: Arc<Vec<Arc<Servable>>>,
}

/// What became of one event scored over HTTP.
pub(crate) enum Scored {
    /// Its score and decision; the prediction JSON is in the scorer.
    Score(f64, bool),
    /// A filter dropped it.
    Filtered,
    /// Refused (what live scoring dead-letters), and why.
    Refused(String),
}

impl App {
    /// The lock. A poisoned lock (a panic that escaped while holding it) resets the window
    /// state, which that panic may have left half-updated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                self.inner.clear_poison();
                let mut g = poisoned.into_inner();
                let model = g.scorer.model().clone();
                g.scorer = self.fresh(model);
                tracing::error!("window state reset after a panic");
                g
            }
        }
    }

    /// A scorer with empty window state for `model` and the shadows, reading the server's
    /// value format.
    fn fresh(&self, model: Arc<Servable>) -> Scorer {
        scorer_for(
            model,
            self.max_event_bytes,
            self.registry.clone(),
            &self.shadows,
        )
    }

    /// Make sure the registry has given the schema of every event (Avro, Protobuf). `Err`: it
    /// did not answer, and the request is to be sent again (503); no event was scored.
    pub(crate) async fn prepare(&self, events: &[&[u8]]) -> Result<(), String> {
        if let Some(r) = &self.registry {
            for ev in events {
                r.prepare_async(Some(ev)).await?;
            }
        }
        Ok(())
    }

    fn swap(&self, m: Arc<Servable>) {
        let mut g = self.lock();
        let previous = g.scorer.model().id.clone();
        let kept = g.scorer.swap(m.clone());
        if let Some(s) = g.shadows.as_mut() {
            s.swap_champion(&m, &self.metrics);
        }
        drop(g);
        self.metrics.reloads.inc();
        self.metrics.model_version.set(m.version as i64);
        tracing::info!(model = %m.id, previous = %previous, window_state_kept = kept,
                       "serving a new model version");
    }
}

/// A scorer with empty window state for `model` and `shadows`, refusing events larger than
/// `max_event_bytes`, reading them through `registry` (`None`: JSON).
fn scorer_for(
    model: Arc<Servable>,
    max_event_bytes: usize,
    registry: Option<Arc<SchemaRegistry>>,
    shadows: &[Arc<Servable>],
) -> Scorer {
    let mut s = Scorer::new(model, max_event_bytes).with_registry(registry);
    for m in shadows {
        if let Err(why) = s.add_shadow(m.clone()) {
            tracing::error!(error = why, "shadow left out");
        }
    }
    s
}

/// Serve until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<()> {
    let current = model::load_blocking(&args.model)?;
    let (registry, r) = args.model.open()?;
    let metrics = Metrics::new();
    metrics.model_version.set(current.version as i64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let token = CancellationToken::new();
    let schemas = args.format.open(
        rt.handle().clone(),
        token.clone(),
        metrics.schema_registry_failures.clone(),
    )?;
    if args.shadow.is_empty() && args.shadow_output.is_some() {
        anyhow::bail!("--shadow-output names where shadows' predictions go: give --shadow too");
    }
    let shadow_models = rt.block_on(model::load_shadows(
        &args.model.store,
        &args.shadow,
        &current,
        false,
    ))?;
    let shadows = if shadow_models.is_empty() {
        None
    } else {
        Some(shadows::ServeShadows::new(
            &current,
            &shadow_models,
            args.shadow_output.as_deref(),
            &args.kafka,
            &metrics,
        )?)
    };
    let app = App {
        inner: Arc::new(Mutex::new(Inner {
            scorer: scorer_for(
                current.clone(),
                args.max_event_bytes,
                schemas.clone(),
                &shadow_models,
            ),
            next_offset: 0,
            shadows,
        })),
        metrics: metrics.clone(),
        max_event_bytes: args.max_event_bytes,
        pass_through: args.pass_through,
        registry: schemas,
        shadows: Arc::new(shadow_models),
    };
    let app_at_exit = app.clone();
    if let Some(r) = &app.registry {
        tracing::info!(registry = %r.url(), format = ?args.format.value_format,
                       "events are read through the schema registry");
    }
    rt.block_on(async move {
        let (listener, addr) = http::bind(&args.addr, "--addr").await?;
        let watcher = app.clone();
        tokio::spawn(model::watch(
            registry,
            r,
            current.version,
            Duration::from_secs_f64(args.reload_interval),
            move |m| {
                watcher.swap(m);
                true
            },
            metrics.clone(),
        ));
        tokio::spawn(crate::signals(token.clone(), CancellationToken::new()));
        let grpc = match &args.grpc_addr {
            Some(a) => {
                let (listener, grpc_addr) = http::bind(a, "--grpc-addr").await?;
                tracing::info!(addr = %grpc_addr, model = %current.id,
                               "serving the model over gRPC (Open Inference Protocol)");
                Some(tokio::spawn(crate::grpc::serve(
                    listener,
                    app.clone(),
                    args.max_body_bytes,
                    args.http.max_connections as usize,
                    Duration::from_secs_f64(args.http.request_timeout),
                    token.clone(),
                )))
            }
            None => None,
        };
        metrics.set_ready(true);
        tracing::info!(addr = %addr, model = %current.id, "serving the model over HTTP");
        let routes = Router::new()
            .route("/v1/score", post(score))
            .route("/v1/model", get(describe))
            .merge(crate::oip::routes())
            .with_state(app)
            .layer(DefaultBodyLimit::max(args.max_body_bytes))
            .merge(http::health_routes(metrics))
            .fallback(not_found);
        http::serve(listener, routes, args.http, token.clone()).await;
        if let Some(g) = grpc {
            match g.await {
                Ok(Err(e)) => tracing::error!(error = %e, "the gRPC server stopped with an error"),
                Err(e) => tracing::error!(error = %e, "the gRPC server task failed"),
                Ok(Ok(())) => {}
            }
        }
        tracing::info!("stopping: signal received");
        if let Some(s) = app_at_exit.lock().shadows.as_ref() {
            s.flush(Duration::from_secs(5));
        }
        anyhow::Ok(())
    })
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "not found: POST /v1/score, GET /v1/model, the Open Inference Protocol under /v2, \
         /metrics, /healthz, /readyz\n",
    )
}

async fn describe(State(app): State<App>) -> Response {
    let m = app.lock().scorer.model().clone();
    let body = json!({
        "model": m.id,
        "name": m.name,
        "version": m.version,
        "kind": m.model.kind(),
        "fingerprint": m.fingerprint,
        "inputs": m.fitted.names(),
        "metrics": m.metrics,
    });
    json_response(StatusCode::OK, &body)
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
        .into_response()
}

/// Score every line of the body, in order, in slices under the lock.
async fn score(State(app): State<App>, body: Bytes) -> Response {
    if app.registry.is_some() {
        return score_record(app, body).await;
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    let mut refused = false;
    let mut n = 0u64;
    let lines = event_lines(&body);
    for (k, slice) in lines.chunks(SLICE).enumerate() {
        if k > 0 {
            tokio::task::yield_now().await;
        }
        let mut g = app.lock();
        for &(i, line) in slice {
            n += 1;
            refused |= score_line(&app, &mut g, i, line, &mut out);
        }
        app.metrics.window_keys.set(g.scorer.state_keys() as i64);
    }
    if n == 0 {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "no event in the body: send a JSON object per line"}),
        );
    }
    answered(&app, started, refused, out)
}

/// Score a body that is one record in the schema registry's wire format.
async fn score_record(app: App, body: Bytes) -> Response {
    let started = Instant::now();
    if body.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "no event in the body: send one record in the schema registry's \
                              wire format"}),
        );
    }
    if let Err(why) = app.prepare(&[&body]).await {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": format!("{why}: send the event again")}),
        );
    }
    let mut out = Vec::with_capacity(512);
    let refused = {
        let mut g = app.lock();
        let refused = score_line(&app, &mut g, 1, &body, &mut out);
        app.metrics.window_keys.set(g.scorer.state_keys() as i64);
        refused
    };
    answered(&app, started, refused, out)
}

/// The answer to a scoring request: one JSON line per event; 422 when any was refused.
fn answered(app: &App, started: Instant, refused: bool, out: Vec<u8>) -> Response {
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
    let status = if refused {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        out,
    )
        .into_response()
}

/// The non-blank lines of a body with their 1-based numbers.
fn event_lines(body: &[u8]) -> Vec<(usize, &[u8])> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Score one line into `out`; returns whether it was refused.
fn score_line(app: &App, g: &mut Inner, line_no: usize, line: &[u8], out: &mut Vec<u8>) -> bool {
    if app.pass_through {
        app.metrics.events_in.inc();
        g.next_offset += 1;
        out.extend_from_slice(b"{}\n");
        return false;
    }
    let refused = match score_one(app, g, line, |g| {
        out.extend_from_slice(g.scorer.prediction())
    }) {
        Scored::Score(..) => false,
        Scored::Filtered => {
            let answer = json!({"line": line_no, "filtered": true});
            out.extend_from_slice(answer.to_string().as_bytes());
            false
        }
        Scored::Refused(reason) => {
            let answer = json!({"line": line_no, "error": reason});
            out.extend_from_slice(answer.to_string().as_bytes());
            true
        }
    };
    out.push(b'\n');
    refused
}

/// Score one event with the server's window state, counting it in the metrics; `scored` sees
/// the scorer right after a prediction (its JSON in [`Scorer::prediction`]). A panic (a bug)
/// resets the window state.
pub(crate) fn score_one(
    app: &App,
    g: &mut Inner,
    event: &[u8],
    scored: impl FnOnce(&Inner),
) -> Scored {
    app.metrics.events_in.inc();
    let pos = SourcePos {
        topic: "http",
        partition: 0,
        offset: g.next_offset,
    };
    g.next_offset += 1;
    let outcome = match g.scorer.score(Some(event), pos) {
        Outcome::Scored { .. } => {
            app.metrics.predictions.inc();
            scored(g);
            if let Some(s) = &g.shadows {
                s.after_champion(&g.scorer);
            }
            let (score, decision) = g.scorer.last_score();
            Scored::Score(score, decision)
        }
        Outcome::Filtered => {
            app.metrics.filtered.inc();
            Scored::Filtered
        }
        Outcome::Dead(reason) => {
            app.metrics.dead_lettered.inc();
            Scored::Refused(reason)
        }
    };
    if g.scorer.broken() {
        app.metrics.panics.inc();
        tracing::error!(
            offset = pos.offset,
            "scoring panicked (a bug); window state reset"
        );
        let model = g.scorer.model().clone();
        g.scorer = app.fresh(model);
    }
    outcome
}
