use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube_lease_manager::LeaseManagerBuilder;

use cyclr_operator::controllers::{self, OperatorConfig};
use cyclr_operator::metrics::Metrics;
use cyclr_operator::telemetry::{self, LogFormat};
use cyclr_operator::{http, resources};

/// Cyclr partner accounts and connector installs as Kubernetes resources.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[derive(Args)]
struct RunArgs {
    /// The operator's own namespace, where partner credential Secrets live.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Watch accounts and installs in this namespace only (default: all).
    #[arg(long)]
    watch_namespace: Option<String>,
    /// Reconcile only objects with these labels (e.g. `shard=a`).
    #[arg(long)]
    label_selector: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Run only while holding a Lease in the operator's namespace (for 2+ replicas).
    #[arg(long)]
    leader_election: bool,
    #[arg(long, default_value = "cyclr-operator")]
    lease_name: String,
    /// Reconciles running at once, per kind.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", resources::crds_yaml()),
        Command::Run(args) => run(args).await?,
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster configuration")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(http::serve(args.http_addr, metrics.clone(), ready.clone()));

    if args.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.namespace)
            .build()
            .await
            .context("creating the leader-election lease manager")?;
        let (mut leading, _task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, "waiting to become the leader");
        while !*leading.borrow_and_update() {
            leading.changed().await.context("lease manager stopped")?;
        }
        tracing::info!("became the leader");
        // Losing the lease ends the process, so a restart starts again from waiting.
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                if !*leading.borrow() {
                    tracing::error!("lost the leader lease; exiting");
                    std::process::exit(1);
                }
            }
        });
    }

    let config = OperatorConfig {
        namespace: args.namespace,
        watch_namespace: args.watch_namespace,
        label_selector: args.label_selector,
        concurrency: args.concurrency,
    };
    ready.store(true, Ordering::Relaxed);
    // SIGTERM is how Kubernetes stops a pod; Ctrl-C is how a person does.
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let result = controllers::run(client, config, metrics, futures::FutureExt::shared(Box::pin(shutdown))).await;
    server.abort();
    result.map_err(Into::into)
}
