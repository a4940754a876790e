//! Leader election: a replica reconciles only while it holds a Lease in the operator's
//! namespace, so two replicas (a standby, or the old and new pod of a rolling update) never
//! write at once.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

/// Which Lease this replica competes for.
pub struct LeaseSettings {
    pub client: kube::Client,
    pub namespace: String,
    pub name: String,
    /// Seconds a holder's Lease lasts without renewal.
    pub duration: u64,
}

/// The longest [`Leadership::release`] waits for the Lease to be given up.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's Lease: while held, a task ends the process the moment it is lost, so two
/// replicas never reconcile at once.
pub struct Leadership {
    guard: tokio::task::JoinHandle<()>,
    holder: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Waits until this replica holds the Lease; `None` when `shutdown` resolves first.
    pub async fn acquire(
        settings: LeaseSettings,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Option<Leadership>> {
        let identity = identity();
        let manager = new_manager(&settings, &identity)
            .await
            .context("creating the leader-election lease manager")?;
        let (sender, mut leading) = tokio::sync::watch::channel(false);
        tracing::info!(lease = %settings.name, %identity, "waiting to become the leader");
        let holder = tokio::spawn(hold(settings, identity.clone(), manager, sender));
        let became_leader = async {
            while !*leading.borrow_and_update() {
                leading.changed().await?;
            }
            Ok::<_, tokio::sync::watch::error::RecvError>(())
        };
        tokio::select! {
            result = became_leader => result.context("the lease manager stopped")?,
            () = shutdown => {
                drop(leading);
                let _ = tokio::time::timeout(RELEASE_TIMEOUT, holder).await;
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

    /// Gives the Lease up, so the standby takes over at once instead of after it expires.
    /// Call it only once this replica's reconciles have stopped.
    pub async fn release(self) {
        tracing::info!("releasing the leader lease");
        // Dropping the last receiver tells `hold` to release the Lease and end.
        self.guard.abort();
        let _ = self.guard.await;
        if tokio::time::timeout(RELEASE_TIMEOUT, self.holder).await.is_err() {
            tracing::warn!("releasing the leader lease timed out");
        }
    }
}

async fn new_manager(
    settings: &LeaseSettings,
    identity: &str,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(settings.client.clone(), &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(identity)
        .with_duration(settings.duration)
        // Renew a third of the duration before expiry, and never less than a second before.
        .with_grace((settings.duration / 3).clamp(1, 5))
        .build()
        .await
}

/// Tries to take and keep the Lease, sending whether this replica holds it, until every
/// receiver is gone; then releases it.
///
/// The lease manager alone reads the Lease again only when its cached copy expires, so a
/// standby would wait out a Lease its holder already released. The Lease is watched as well,
/// and a release starts a fresh manager, which takes the Lease at once: a rolling update
/// hands over without waiting for the lease duration.
async fn hold(
    settings: LeaseSettings,
    identity: String,
    mut manager: LeaseManager,
    sender: tokio::sync::watch::Sender<bool>,
) {
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
                    match new_manager(&settings, &identity).await {
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
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "cyclr-operator".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}
