//! Prometheus metrics and the health and readiness endpoints, served over plain HTTP/1.1.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters and gauges of one scorer process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages consumed.
    pub events_in: AtomicU64,
    /// Predictions acknowledged by the broker.
    pub predictions_out: AtomicU64,
    /// Events sent to the dead-letter topic and acknowledged.
    pub dead_lettered: AtomicU64,
    /// Events a pipeline filter dropped (no prediction due).
    pub filtered: AtomicU64,
    /// Models swapped in without a restart.
    pub reloads: AtomicU64,
    /// Bundles refused on reload (the old model kept serving).
    pub reload_failures: AtomicU64,
    /// Version of the model being served.
    pub model_version: AtomicU64,
    /// Sum over assigned partitions of high watermark minus position.
    pub lag: AtomicI64,
    /// Keys holding window state, over windows and partitions.
    pub window_keys: AtomicU64,
    /// Transactions committed (exactly-once mode).
    pub transactions: AtomicU64,
    /// The consumer has an assignment and a model: ready to score.
    pub ready: AtomicBool,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Record `n` events that each took `seconds` from being consumed to being acknowledged.
    pub fn observe_latency(&self, seconds: f64, n: u64) {
        for (b, le) in self.latency_buckets.iter().zip(BUCKETS) {
            if seconds <= le {
                b.fetch_add(n, Relaxed);
            }
        }
        self.latency_count.fetch_add(n, Relaxed);
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64 * n, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        let counters = [
            ("kml_events_in_total", "Messages consumed.", &self.events_in),
            (
                "kml_predictions_total",
                "Predictions acknowledged by the broker.",
                &self.predictions_out,
            ),
            (
                "kml_dead_lettered_total",
                "Events sent to the dead-letter topic.",
                &self.dead_lettered,
            ),
            (
                "kml_filtered_total",
                "Events dropped by a pipeline filter.",
                &self.filtered,
            ),
            (
                "kml_model_reloads_total",
                "Models swapped in.",
                &self.reloads,
            ),
            (
                "kml_model_reload_failures_total",
                "Bundles refused on reload.",
                &self.reload_failures,
            ),
            (
                "kml_transactions_total",
                "Transactions committed.",
                &self.transactions,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP kml_model_version Version of the model being served.\n\
             # TYPE kml_model_version gauge\nkml_model_version {}",
            self.model_version.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kml_consumer_lag Messages behind the high watermark, all partitions.\n\
             # TYPE kml_consumer_lag gauge\nkml_consumer_lag {}",
            self.lag.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kml_window_keys Entities holding window state, summed over windows and \
             partitions.\n# TYPE kml_window_keys gauge\nkml_window_keys {}",
            self.window_keys.load(Relaxed)
        );
        let name = "kml_event_latency_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} From consumed to prediction acknowledged.\n# TYPE {name} histogram"
        );
        for (b, le) in self.latency_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "{name}_sum {sum}\n{name}_count {count}");
        s
    }
}

/// Serve `/metrics`, `/healthz` (the process is up) and `/readyz` (assigned and serving a
/// model) until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the request head (a request may arrive in several segments).
            let mut buf = [0u8; 4096];
            let mut n = 0;
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            let req = std::str::from_utf8(&buf[..n]).unwrap_or("");
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if metrics.ready.load(Relaxed) => {
                    ("200 OK", "text/plain", "ready\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
