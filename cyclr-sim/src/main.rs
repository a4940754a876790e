//! `cyclr-sim`: serves a simulated Cyclr API until Ctrl-C (or SIGTERM). See docs/simulator.md.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cyclr_sim::{DEFAULT_TOKEN_TTL, Faults, SimConfig, Simulator};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "A simulator of the Cyclr Partner API, for tests and demos")]
struct Args {
    /// Address to serve plain HTTP on (port 0 picks a free port).
    #[arg(long, env = "CYCLR_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The partner client id that POST /oauth/token accepts.
    #[arg(long, env = "CYCLR_SIM_CLIENT_ID")]
    client_id: String,
    /// The partner client secret (prefer the environment variable: arguments show in `ps`).
    #[arg(long, env = "CYCLR_SIM_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// Keep state in this JSON file across restarts (rewritten after each change).
    #[arg(long, env = "CYCLR_SIM_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "CYCLR_SIM_TOKEN_TTL", default_value_t = DEFAULT_TOKEN_TTL.as_secs())]
    token_ttl: u64,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, env = "CYCLR_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share (0.0–1.0) of API requests answered 500/503.
    #[arg(long, env = "CYCLR_SIM_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Answer 429 above this many requests per second.
    #[arg(long, env = "CYCLR_SIM_RATE_LIMIT_RPS")]
    rate_limit_rps: Option<u32>,
    /// Retry-After sent with a 429, in seconds (0 and negative values are sent as they are).
    #[arg(
        long,
        env = "CYCLR_SIM_RETRY_AFTER",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    retry_after: i64,
    /// Apply the next N writes but lose their response (answer 500).
    #[arg(long, env = "CYCLR_SIM_COMMIT_THEN_FAIL", default_value_t = 0)]
    commit_then_fail: u32,
    /// Serve the templates of this JSON file (an array, each as `POST /_sim/templates` takes it).
    #[arg(long, env = "CYCLR_SIM_TEMPLATES")]
    templates: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr, leaving stdout to the one line scripts read.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0.0 and 1.0"
    );
    let templates = match &args.templates {
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parsing templates in {}", path.display()))?
        }
        None => Vec::new(),
    };
    let config = SimConfig {
        token_ttl: Duration::from_secs(args.token_ttl),
        faults: Faults {
            latency: Duration::from_millis(args.latency_ms),
            error_rate: args.error_rate,
            rate_limit_rps: args.rate_limit_rps,
            retry_after_secs: args.retry_after,
            commit_then_fail: args.commit_then_fail,
            ..Faults::default()
        },
        state_file: args.state_file,
        templates,
        ..SimConfig::new(args.client_id, args.client_secret)
    };
    let sim = Simulator::start(config, args.listen).await?;
    // On stdout, for scripts that start the simulator on port 0 and need to know where it is.
    println!("cyclr-sim listening on {}", sim.base_url());
    shutdown_signal().await?;
    tracing::info!("stopping");
    sim.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM as sent by `kill` and by Kubernetes.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
