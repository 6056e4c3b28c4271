//! HTTP for metrics, probes and the model server: axum routes on hyper's HTTP/1.1 server, with
//! the limits a server facing unknown clients needs.
//!
//! `axum::serve` does not expose hyper's connection settings, so connections are accepted here
//! and handed to hyper's `http1::Builder`. Limits:
//! - at most `max_connections` open connections: past that the accept loop waits for one to
//!   close (new connections queue in the kernel's backlog); it never spins, not even when the
//!   process is out of file descriptors (an accept error pauses it for 100 ms);
//! - the request head must arrive within `header_timeout` and fit in `max_header_bytes`
//!   (431 otherwise); hyper refuses conflicting `Content-Length` headers and answers
//!   `Expect: 100-continue`;
//! - a whole request, body included, must be handled within `request_timeout` (408), and the
//!   body may not stall for longer than `header_timeout` between two reads.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::metrics::Metrics;

/// Limits on clients, the same for every HTTP endpoint of the scorer.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpLimits {
    /// Most open HTTP connections; more wait in the listen backlog.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client may take to send a request head (and an idle keep-alive connection
    /// may stay open), or to send the next part of a body.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub header_timeout: f64,
    /// Seconds to receive and answer a whole request.
    #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
    pub request_timeout: f64,
    /// Largest request head (request line and headers), bytes.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1024..=65536))]
    pub max_header_bytes: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: 5.0,
            request_timeout: 30.0,
            max_header_bytes: 8192,
        }
    }
}

/// A number of seconds that is finite and above zero.
pub fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => Ok(x),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

/// `/metrics`, `/healthz` (the process is up) and `/readyz` (ready to score).
pub fn health_routes(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn render_metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn readyz(State(m): State<Metrics>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serve `app` on `listener` until `token` is cancelled; open connections are then closed
/// gracefully (requests in progress finish).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    token: CancellationToken,
) {
    let app = app.layer((
        TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs_f64(limits.request_timeout),
        ),
        RequestBodyTimeoutLayer::new(Duration::from_secs_f64(limits.header_timeout)),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(limits.header_timeout))
        .max_header_size(limits.max_header_bytes as usize)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = token.cancelled() => return,
        };
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    // Out of file descriptors, say: pause instead of spinning on the error.
                    tracing::warn!(error = %e, "cannot accept a connection; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = token.cancelled() => return,
        };
        let _ = sock.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(sock), TowerToHyperService::new(app.clone()));
        let token = token.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Bind `addr` (port 0: any free port). The address actually bound is returned for the log.
pub async fn bind(addr: &str, flag: &str) -> anyhow::Result<(TcpListener, String)> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({flag})"))?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    Ok((listener, bound))
}
