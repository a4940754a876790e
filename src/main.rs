mod allocator;
mod leader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use secrecy::SecretString;
use tokio::signal::unix::{SignalKind, signal};

use cyclr_operator::controllers::{self, OperatorConfig};
use cyclr_operator::metrics::Metrics;
use cyclr_operator::telemetry::{self, LogFormat};
use cyclr_operator::{http, resources};
use driver::readiness::{NeededCrd, Readiness};
use leader::{Leadership, LeaseSettings};

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
    Run(Box<RunArgs>),
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
    /// Serve only accounts, installs and cycles with these labels (e.g. `shard=a`).
    /// CyclrPartners are not filtered by it: every shard uses them (see
    /// `--partner-label-selector`).
    #[arg(long)]
    label_selector: Option<String>,
    /// Use only CyclrPartners with these labels (default: all).
    #[arg(long)]
    partner_label_selector: Option<String>,
    /// The name of the shard this process serves (its `--label-selector`): its Lease is
    /// `<lease-name>-<shard>`, so each shard has a leader of its own.
    #[arg(long, requires = "label_selector")]
    shard: Option<String>,
    /// How many shards are deployed: each keeps to this share of every partner's
    /// `rateLimit` (rate and burst divided, at least 1 each), so that together they keep to it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    shards: u32,
    /// Accounts asked for per page of a v1.0 list (`pageSize`). Cyclr documents no largest
    /// page size and its own tests use 100; a list ends at the first shorter page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    v1_page_size: u32,
    /// Write the CyclrPartners' status. In a sharded install exactly one shard does (the
    /// chart's first); the others check each partner for their own use only.
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    partner_status: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// A tracing filter directive, e.g. `debug` or `cyclr_operator=trace,kube=warn`
    /// [default: `RUST_LOG`, else `info,kube=warn`].
    #[arg(long)]
    log_level: Option<String>,
    /// Run only while holding a Lease in the operator's namespace, so two processes never
    /// reconcile at once: a standby, or the old and new pod of a rolling update, which overlap
    /// even with one replica. `--leader-election=false` for a process that is surely alone.
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    leader_election: bool,
    #[arg(long, default_value = "cyclr-operator")]
    lease_name: String,
    /// Reconciles running at once, per kind.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Threads that run the reconciles. The work waits on the API server and Cyclr, and one
    /// thread keeps up with either: a second costs wakeups between threads (a third less CPU
    /// with one, and a faster rollout beside a busy API server; docs/performance.md). With 1,
    /// the watches, the reconciles and the HTTP server share the process's main thread
    /// (tokio's current-thread runtime); with more, they run on that many workers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
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
            runtime(args.worker_threads)?.block_on(run(*args))?
        }
    }
    Ok(())
}

/// The async runtime for `threads` threads: with one, everything runs on the calling thread
/// (a multi-thread runtime with one worker would still hand work between the caller, which
/// polls the controllers, and its worker: a 30,000 rollout took 23 % less CPU without those
/// wakeups; docs/performance.md).
fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.into());
            builder
        }
    };
    builder.enable_all().build()
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
    let crd_check = tokio::spawn(readiness.clone().check_crds(client.clone(), needed_crds()));
    tokio::spawn(allocator::trim_periodically());
    let shutdown = shutdown_signal()?;
    let shard = args.shard.clone();
    metrics.set_leader(shard.as_deref(), false);

    let leadership = if args.leader_election {
        let lease = LeaseSettings {
            client: client.clone(),
            namespace: args.namespace.clone(),
            name: match &args.shard {
                Some(shard) => format!("{}-{shard}", args.lease_name),
                None => args.lease_name.clone(),
            },
            duration: args.lease_duration,
        };
        match Leadership::acquire(lease, shutdown.clone()).await? {
            Some(leadership) => Some(leadership),
            // Stopped while standing by: nothing to hand over.
            None => return Ok(()),
        }
    } else {
        None
    };
    let config = OperatorConfig {
        namespace: args.namespace,
        watch_namespace: args.watch_namespace,
        label_selector: args.label_selector,
        partner_label_selector: args.partner_label_selector,
        partner_status: args.partner_status,
        shards: args.shards,
        v1_page_size: args.v1_page_size,
        concurrency: args.concurrency,
    };
    metrics.set_leader(shard.as_deref(), true);
    let result = run_controllers(client, config, metrics.clone(), readiness, shutdown).await;
    metrics.set_leader(shard.as_deref(), false);
    // Only now, with the controllers stopped, may another replica lead.
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    server.abort();
    crd_check.abort();
    result
}

/// The CRDs `/readyz` waits for, each with the version this binary's types speak (the one its
/// own CRDs store), so a binary older than the cluster's CRDs says which version it misses.
fn needed_crds() -> Vec<NeededCrd> {
    resources::all_crds().iter().filter_map(NeededCrd::stored_in).collect()
}

/// Runs the controllers until `shutdown`; then they start no reconcile and finish those under
/// way, for at most [`shutdown_grace`], after which they are dropped.
async fn run_controllers(
    client: kube::Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> anyhow::Result<()> {
    let controllers = controllers::run(client, config, metrics, readiness, shutdown.clone());
    let grace = shutdown_grace();
    let deadline = shutdown.then(|()| tokio::time::sleep(grace));
    tokio::select! {
        result = controllers => Ok(result?),
        () = deadline => {
            tracing::warn!(?grace, "the controllers did not stop in time; stopping them now");
            Ok(())
        }
    }
}

/// How long the reconciles under way at SIGTERM may take to end. Cut short, a create already
/// sent could still commit in Cyclr after the Lease went to a replica whose list did not show
/// it, which would create it again. A Cyclr request gets its answer within the client's request
/// timeout (partners' clients keep the default: `controllers::partner`); the margin is for the
/// status write that records it. The chart's `terminationGracePeriodSeconds` leaves room for
/// this and the Lease's release.
fn shutdown_grace() -> Duration {
    let cyclr = cyclr::ClientConfig::new(String::new(), String::new(), SecretString::from(""));
    cyclr.request_timeout + RECORD_MARGIN
}

/// After a Cyclr write's answer: the status write that records it, and the controllers' stop.
const RECORD_MARGIN: Duration = Duration::from_secs(10);

/// Resolves, for every clone, on SIGTERM (how Kubernetes stops a pod) or Ctrl-C (how a person
/// does).
fn shutdown_signal() -> anyhow::Result<Shared<BoxFuture<'static, ()>>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
    .boxed()
    .shared())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz` asks of each CRD the version the kinds' types read and write.
    #[test]
    fn readiness_needs_the_version_each_kind_speaks() {
        use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, CyclrCycle, CyclrPartner};
        use kube::{CustomResourceExt, Resource};
        let speaks = [
            (CyclrPartner::crd_name(), CyclrPartner::version(&())),
            (CyclrAccount::crd_name(), CyclrAccount::version(&())),
            (CyclrConnectorInstall::crd_name(), CyclrConnectorInstall::version(&())),
            (CyclrCycle::crd_name(), CyclrCycle::version(&())),
        ];
        let needed: Vec<(String, String)> = needed_crds().into_iter().map(|c| (c.name, c.version)).collect();
        let speaks: Vec<(String, String)> = speaks
            .into_iter()
            .map(|(name, version)| (name.to_owned(), version.into_owned()))
            .collect();
        assert_eq!(needed, speaks);
    }

    /// One thread by default (the caller's: no worker to hand work to); none is refused with a
    /// message naming the flag.
    #[test]
    fn reconciles_run_on_one_thread_unless_asked() {
        let threads = |extra: &[&str]| {
            let args = ["cyclr-operator", "run", "--namespace", "ops"].iter().chain(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(Command::Run(run)) => Ok(run.worker_threads),
                Ok(_) => unreachable!("parsed `run`"),
                Err(error) => Err(error.to_string()),
            }
        };
        assert_eq!(threads(&[]), Ok(1));
        assert_eq!(threads(&["--worker-threads", "4"]), Ok(4));
        use tokio::runtime::RuntimeFlavor;
        let flavor = |threads| runtime(threads).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread, "one thread: the caller's");
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
        let refused = threads(&["--worker-threads", "0"]).unwrap_err();
        assert!(refused.contains("--worker-threads"), "{refused}");
    }

    /// The kubelet kills a pod `terminationGracePeriodSeconds` after SIGTERM: killed during the
    /// grace, a leader drops its Cyclr write and leaves its Lease to expire.
    #[test]
    fn the_charts_termination_grace_period_fits_the_shutdown() {
        let deployment = include_str!("../charts/cyclr-operator/templates/deployment.yaml");
        let seconds: u64 = deployment
            .lines()
            .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .expect("the chart sets terminationGracePeriodSeconds")
            .trim()
            .parse()
            .expect("terminationGracePeriodSeconds is a number of seconds");
        let needed = shutdown_grace() + leader::RELEASE_TIMEOUT;
        assert!(
            Duration::from_secs(seconds) >= needed,
            "terminationGracePeriodSeconds {seconds} is shorter than the grace and the release: {needed:?}"
        );
    }
}
