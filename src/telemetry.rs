//! Logging: text for people, JSON (one object per line) for log pipelines, to stderr.
//!
//! The level is an `EnvFilter` directive (`info`, `debug`, `cyclr_operator=trace,kube=warn`):
//! `--log-level` when given, else `RUST_LOG`, else `info,kube=warn`.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
/// How log lines are written.
pub enum LogFormat {
    #[default]
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter when neither `--log-level` nor `RUST_LOG` says otherwise: kube's own
/// per-request logs are noise at info.
pub const DEFAULT_LOG_LEVEL: &str = "info,kube=warn";

/// Installs the process-wide subscriber. Errors when `level` (or `RUST_LOG`) is not a valid
/// filter directive, so a typo is not silently ignored.
pub fn init(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let directive = match level {
        Some(level) => level.to_owned(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
    };
    let filter = EnvFilter::try_new(&directive).map_err(|e| anyhow::anyhow!("invalid log level {directive:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Span fields (kind, namespace, name, generation of a reconcile) go on every line.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
    Ok(())
}
