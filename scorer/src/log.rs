//! Structured logs (tracing): one JSON object per line on stderr, or text for a terminal.
//! Fields are flat: `{"timestamp": ..., "level": "INFO", "message": "...", "addr": ...}`.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for collectors).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Install the global subscriber. The level filter comes from `KML_LOG` (e.g. `debug`,
/// `scorer=debug,info`), default `info`. A panic is logged as an error before it unwinds.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KML_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %panic_message(info.payload()), %location, "panic");
    }));
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
