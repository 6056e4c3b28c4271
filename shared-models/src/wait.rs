//! Waiting for a service that does not answer yet (a broker, a schema registry): retried with
//! backoff until it answers or the run is cancelled.

use std::time::Duration;

use anyhow::Result;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Retry `f` with exponential backoff (each failure logged with `what`) until it succeeds or
/// `token` is cancelled: a broker that is down at start is waited for, not a crash.
pub fn retry_until_cancelled<T>(
    token: &CancellationToken,
    what: &str,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if token.is_cancelled() => return Err(e),
            Err(e) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(
                    error = %format!("{e:#}"), backoff_ms = wait.as_millis() as u64,
                    "{what}; retrying"
                );
                // Sleep in slices so that a shutdown request is honoured promptly.
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until && !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}
