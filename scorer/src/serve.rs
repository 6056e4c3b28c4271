//! `scorer serve`: the model-server pattern. Applications (or a sidecar's neighbour) send events
//! over HTTP and get predictions back, computed by the same [`Scorer`] as live scoring and
//! replay: the same decoder, joins, windows, encoding and model, so an event scored over HTTP
//! gets the score it would get on a topic.
//!
//! - `POST /v1/score`: the body is one JSON event, or several as JSON lines. The answer has one
//!   JSON line per event line, in order: the prediction (as on the output topic; its lineage
//!   names topic `http`, partition 0 and the server's running event number as offset),
//!   `{"line": n, "filtered": true}`, or `{"line": n, "error": "..."}` for an event that cannot be
//!   scored (what live scoring would dead-letter). Status 200 when every line was scored or
//!   filtered, 422 when any was refused. Window state is the server's: events from all requests
//!   update it in the order they are handled.
//! - `GET /v1/model`: the model being served (name, version, kind, fingerprint, inputs, metrics).
//! - `/metrics`, `/healthz`, `/readyz` as in `scorer run`.
//!
//! HTTP/1.1 with keep-alive; bodies need a `Content-Length` (chunked uploads are refused with
//! 411). New model versions behind an alias are hot-reloaded between requests.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use shared_models::Servable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::log;
use crate::metrics::Metrics;
use crate::model::{self, ModelArgs};
use crate::score::{Outcome, Scorer, SourcePos};

/// `scorer serve` options.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0: any free port; the log says which).
    #[arg(long, env = "KML_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Larger events are refused.
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: usize,
    /// Seconds between checks of the model alias for a new version.
    #[arg(long, default_value_t = 10.0)]
    reload_interval: f64,
    /// Benchmark baseline: answer each event line with `{}` unscored, with everything else
    /// (HTTP, body framing, the lock, metrics) as when scoring.
    #[arg(long, hide = true)]
    pass_through: bool,
}

/// The scorer and the channel new model versions arrive on, behind one lock.
struct State {
    scorer: Scorer,
    updates: Receiver<Arc<Servable>>,
    next_offset: i64,
    pass_through: bool,
}

/// Serve until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<()> {
    let current = model::load_blocking(&args.model)?;
    let (registry, r) = args.model.open()?;
    let metrics = Arc::new(Metrics::default());
    metrics.model_version.store(current.version, Relaxed);
    let (tx, rx) = channel();
    let state = Arc::new(Mutex::new(State {
        scorer: Scorer::new(current.clone(), args.max_event_bytes),
        updates: rx,
        next_offset: 0,
        pass_through: args.pass_through,
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {} (--addr)", args.addr))?;
        let addr = listener.local_addr()?;
        tokio::spawn(model::watch(
            registry,
            r,
            current.version,
            Duration::from_secs_f64(args.reload_interval.max(0.1)),
            tx,
            metrics.clone(),
        ));
        metrics.ready.store(true, Relaxed);
        log::info(
            "serving the model over HTTP",
            json!({"addr": addr.to_string(), "model": current.id}),
        );
        let accept = async {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (state, metrics) = (state.clone(), metrics.clone());
                let limit = args.max_body_bytes;
                tokio::spawn(async move { connection(sock, state, metrics, limit).await });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown() => log::info("stopping: signal received", json!({})),
        }
        anyhow::Ok(())
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

/// Why a request could not be read: answer with this status and message, then close.
struct Refusal(&'static str, String);

const HEAD_LIMIT: usize = 16 * 1024;

/// Read one request from `buf` + the socket; `Ok(None)` when the peer closed cleanly.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::result::Result<Option<Request>, Refusal> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_LIMIT {
            return Err(Refusal(
                "431 Request Header Fields Too Large",
                "request head over 16 KiB".into(),
            ));
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => {
                return Err(Refusal("400 Bad Request", "incomplete request head".into()));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path, version) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or(""),
    );
    if method.is_empty() || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(Refusal(
            "400 Bad Request",
            "not an HTTP/1.x request line".into(),
        ));
    }
    let mut length = 0;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| {
                    Refusal("400 Bad Request", format!("bad Content-Length `{value}`"))
                })?;
            }
            "transfer-encoding" => {
                return Err(Refusal(
                    "411 Length Required",
                    "send the body with a Content-Length, not chunked".into(),
                ));
            }
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if length > limit {
        return Err(Refusal(
            "413 Content Too Large",
            format!("body of {length} bytes; the limit is {limit} (--max-body-bytes)"),
        ));
    }
    let start = head_end + 4;
    while buf.len() < start + length {
        let mut chunk = vec![0u8; (start + length - buf.len()).min(1 << 16)];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return Err(Refusal(
                    "400 Bad Request",
                    "body shorter than Content-Length".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[start..start + length].to_vec();
    buf.drain(..start + length);
    Ok(Some(Request {
        method,
        path,
        body,
        close,
    }))
}

async fn connection(
    mut sock: TcpStream,
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
    limit: usize,
) {
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut sock, &mut buf, limit).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(Refusal(status, message)) => {
                let body = format!("{}\n", json!({ "error": message }));
                let _ = respond(&mut sock, status, "application/json", body.as_bytes(), true).await;
                return;
            }
        };
        let (status, ctype, body) = route(&req, &state, &metrics);
        if respond(&mut sock, status, ctype, &body, req.close)
            .await
            .is_err()
            || req.close
        {
            return;
        }
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await
}

fn route(
    req: &Request,
    state: &Mutex<State>,
    metrics: &Metrics,
) -> (&'static str, &'static str, Vec<u8>) {
    let text = |status, s: String| (status, "text/plain", s.into_bytes());
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/score") => score(&req.body, state, metrics),
        ("GET", "/v1/model") => {
            let Ok(st) = state.lock() else {
                return text("500 Internal Server Error", "state poisoned\n".into());
            };
            let m = st.scorer.model();
            let body = json!({
                "model": m.id,
                "name": m.name,
                "version": m.version,
                "kind": m.model.kind(),
                "fingerprint": m.fingerprint,
                "inputs": m.fitted.names(),
                "metrics": m.metrics,
            });
            (
                "200 OK",
                "application/json",
                format!("{body}\n").into_bytes(),
            )
        }
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render().into_bytes(),
        ),
        ("GET", "/healthz") => text("200 OK", "ok\n".into()),
        ("GET", "/readyz") => text("200 OK", "ready\n".into()),
        (_, "/v1/score" | "/v1/model" | "/metrics" | "/healthz" | "/readyz") => {
            text("405 Method Not Allowed", "method not allowed\n".into())
        }
        _ => text(
            "404 Not Found",
            "not found: POST /v1/score, GET /v1/model, /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Score every line of the body, in order, under the lock (window state is shared).
fn score(
    body: &[u8],
    state: &Mutex<State>,
    metrics: &Metrics,
) -> (&'static str, &'static str, Vec<u8>) {
    let started = Instant::now();
    let Ok(mut st) = state.lock() else {
        return (
            "500 Internal Server Error",
            "text/plain",
            b"state poisoned\n".to_vec(),
        );
    };
    let st = &mut *st;
    // Hot reload between requests.
    while let Ok(m) = st.updates.try_recv() {
        let previous = st.scorer.model().id.clone();
        let kept = st.scorer.swap(m.clone());
        metrics.reloads.fetch_add(1, Relaxed);
        metrics.model_version.store(m.version, Relaxed);
        log::info(
            "serving a new model version",
            json!({"model": m.id, "previous": previous, "window_state_kept": kept}),
        );
    }
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    let mut refused = false;
    let mut n = 0u64;
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        n += 1;
        metrics.events_in.fetch_add(1, Relaxed);
        let pos = SourcePos {
            topic: "http",
            partition: 0,
            offset: st.next_offset,
        };
        st.next_offset += 1;
        if st.pass_through {
            out.extend_from_slice(b"{}\n");
            continue;
        }
        match st.scorer.score(Some(line), pos) {
            Outcome::Scored { .. } => {
                metrics.predictions_out.fetch_add(1, Relaxed);
                out.extend_from_slice(st.scorer.prediction());
            }
            Outcome::Filtered => {
                metrics.filtered.fetch_add(1, Relaxed);
                out.extend_from_slice(
                    json!({"line": i + 1, "filtered": true})
                        .to_string()
                        .as_bytes(),
                );
            }
            Outcome::Dead(reason) => {
                refused = true;
                metrics.dead_lettered.fetch_add(1, Relaxed);
                out.extend_from_slice(
                    json!({"line": i + 1, "error": reason})
                        .to_string()
                        .as_bytes(),
                );
            }
        }
        out.push(b'\n');
    }
    if n == 0 {
        return (
            "400 Bad Request",
            "application/json",
            format!(
                "{}\n",
                json!({"error": "no event in the body: send a JSON object per line"})
            )
            .into_bytes(),
        );
    }
    metrics.observe_latency(started.elapsed().as_secs_f64(), n);
    metrics
        .window_keys
        .store(st.scorer.state_keys() as u64, Relaxed);
    let status = if refused {
        "422 Unprocessable Content"
    } else {
        "200 OK"
    };
    (status, "application/x-ndjson", out)
}
