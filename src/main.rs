mod allocator;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::signal::unix::{SignalKind, signal};

use cyclr_operator::controllers::{self, OperatorConfig};
use cyclr_operator::metrics::Metrics;
use cyclr_operator::telemetry::{self, LogFormat};
use cyclr_operator::{http, resources};
use driver::readiness::Readiness;

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
    Crd {
        /// Print the API reference (docs/api.md) written from them instead, as Markdown.
        #[arg(long)]
        reference: bool,
    },
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
    /// A tracing filter directive, e.g. `debug` or `cyclr_operator=trace,kube=warn`
    /// [default: `RUST_LOG`, else `info,kube=warn`].
    #[arg(long)]
    log_level: Option<String>,
    /// Run only while holding a Lease in the operator's namespace (for 2+ replicas).
    #[arg(long)]
    leader_election: bool,
    #[arg(long, default_value = "cyclr-operator")]
    lease_name: String,
    /// Reconciles running at once, per kind.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Seconds a leader's Lease lasts without renewal: the longest a standby waits after the
    /// leader dies. A clean shutdown (SIGTERM) releases the Lease at once.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { reference: false } => print!("{}", resources::crds_yaml()),
        Command::Crd { reference: true } => print!("{}", resources::api_reference()),
        Command::Run(args) => {
            // Before the runtime starts its threads, so they share the arenas set here.
            allocator::tune();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(args))?
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, args.log_level.as_deref())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster configuration")?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let server = tokio::spawn(http::serve(args.http_addr, metrics.clone(), readiness.clone()));
    let crd_names = resources::all_crds()
        .into_iter()
        .filter_map(|crd| crd.metadata.name)
        .collect();
    let crd_check = tokio::spawn(readiness.clone().check_crds(client.clone(), crd_names));
    tokio::spawn(allocator::trim_periodically());

    // SIGTERM is how Kubernetes stops a pod; Ctrl-C is how a person does.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
    .boxed()
    .shared();

    let lease = if args.leader_election {
        match lead(&client, &args, shutdown.clone()).await? {
            Some(lease) => Some(lease),
            None => return Ok(()),
        }
    } else {
        None
    };

    let config = OperatorConfig {
        namespace: args.namespace,
        watch_namespace: args.watch_namespace,
        label_selector: args.label_selector,
        concurrency: args.concurrency,
    };
    let controllers = controllers::run(client, config, metrics, readiness, shutdown.clone());
    // The controllers finish their reconciles after the signal, but not for ever: the Lease
    // is released only once they stopped (or were dropped), so two leaders never overlap.
    let deadline = shutdown.then(|()| tokio::time::sleep(SHUTDOWN_GRACE));
    let result = tokio::select! {
        result = controllers => result,
        () = deadline => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "the controllers did not stop in time; stopping them now");
            Ok(())
        }
    };
    if let Some(lease) = lease {
        lease.release().await;
    }
    server.abort();
    crd_check.abort();
    result.map_err(Into::into)
}

/// How long reconciles under way may take to finish after SIGTERM, well inside a pod's
/// default 30 s termination grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The leader's Lease: while held, a task ends the process the moment it is lost, so two
/// replicas never reconcile at once.
struct Leadership {
    guard: tokio::task::JoinHandle<()>,
    holder: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Gives the Lease up, so the standby takes over at once instead of after it expires.
    async fn release(self) {
        // Dropping the last receiver tells `hold_lease` to release the Lease and end.
        self.guard.abort();
        let _ = self.guard.await;
        if tokio::time::timeout(Duration::from_secs(5), self.holder).await.is_err() {
            tracing::warn!("releasing the leader lease timed out");
        }
    }
}

/// Waits until this replica holds the Lease; `None` when shut down first.
async fn lead(
    client: &kube::Client,
    args: &RunArgs,
    shutdown: impl Future<Output = ()> + Clone + Send + 'static,
) -> anyhow::Result<Option<Leadership>> {
    let settings = LeaseSettings {
        client: client.clone(),
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: lease_identity(),
        duration: args.lease_duration,
    };
    let manager = settings
        .manager()
        .await
        .context("creating the leader-election lease manager")?;
    let identity = settings.identity.clone();
    let (sender, mut leading) = tokio::sync::watch::channel(false);
    tracing::info!(lease = %settings.name, %identity, "waiting to become the leader");
    let holder = tokio::spawn(hold_lease(settings, manager, sender));
    let became_leader = async {
        while !*leading.borrow_and_update() {
            leading.changed().await?;
        }
        Ok::<_, tokio::sync::watch::error::RecvError>(())
    };
    tokio::select! {
        result = became_leader => result.context("the lease manager stopped")?,
        _ = shutdown.clone() => {
            drop(leading);
            let _ = tokio::time::timeout(Duration::from_secs(5), holder).await;
            return Ok(None);
        }
    }
    tracing::info!(%identity, "became the leader");
    let guard = tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            if !*leading.borrow() {
                // Another replica may already be reconciling: stop every write now.
                tracing::error!("lost the leader lease; exiting");
                std::process::exit(1);
            }
        }
    });
    Ok(Some(Leadership { guard, holder }))
}

/// Which Lease, and who this replica is in it.
struct LeaseSettings {
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    /// Seconds.
    duration: u64,
}

impl LeaseSettings {
    async fn manager(&self) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
        LeaseManagerBuilder::new(self.client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.duration)
            // Renew a third of the duration before expiry, and never less than a second before.
            .with_grace((self.duration / 3).clamp(1, 5))
            .build()
            .await
    }
}

/// Tries to take and keep the Lease, sending whether this replica holds it, until every
/// receiver is gone; then releases it.
///
/// The lease manager alone reads the Lease again only when its cached copy expires, so a
/// standby would wait out a Lease its holder already released. The Lease is watched as well,
/// and a release starts a fresh manager, which takes the Lease at once: a rolling update
/// hands over without waiting for the lease duration.
async fn hold_lease(settings: LeaseSettings, mut manager: LeaseManager, sender: tokio::sync::watch::Sender<bool>) {
    let leases: Api<Lease> = Api::namespaced(settings.client.clone(), &settings.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", settings.name));
    let mut lease_changes = watcher(leases, config).default_backoff().applied_objects().boxed();
    loop {
        tokio::select! {
            biased;
            _ = sender.closed() => break,
            changed = manager.changed() => match changed {
                Ok(holding) => {
                    let _ = sender.send(holding);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(Ok(lease)) = lease_changes.next() => {
                let released = lease.spec.and_then(|s| s.holder_identity).is_none_or(|h| h.is_empty());
                if released && !*sender.borrow() {
                    match settings.manager().await {
                        Ok(fresh) => manager = fresh,
                        Err(e) => tracing::warn!(error = %e, "leader election"),
                    }
                }
            }
        }
    }
    match manager.release().await {
        Ok(()) => tracing::info!("released the leader lease"),
        Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
    }
}

/// `POD_NAME` in a pod (unique per replica, shown in the Lease), else host name and pid.
fn lease_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "cyclr-operator".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}
