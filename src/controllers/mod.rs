//! The four kinds, plugged into the driver (crate `driver`), and the watches that feed them.
//! Each kind's file is its controller plus observe → decide (pure) → act; this module holds
//! the services they share ([`Services`]) and starts everything ([`run`]).

pub mod account;
pub mod connector_install;
pub mod cycle;
pub mod partner;
pub mod partners;

use std::sync::Arc;

use driver::readiness::Readiness;
use driver::{Cleanup, Driver, DriverConfig, KindConfig, Packed, Reconciler};
use futures::channel::mpsc;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};

use crate::index::{ClaimIndex, Holder};
use crate::metrics::Metrics;
use crate::reason::{Health, Reason};
use crate::resources::{self, CyclrAccount, CyclrApi, MANAGER, annotations};
use crate::secrets::{self, Secrets};
use partners::{PartnerRuntime, PartnerState, Partners, Woken};

/// Where and what the operator watches.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The operator's own namespace: partner credential Secrets are read from here only.
    pub namespace: String,
    /// Watch accounts and installs in this namespace only (default: all namespaces).
    pub watch_namespace: Option<String>,
    /// Serve only accounts, installs and cycles with these labels: a shard's (e.g.
    /// `shard=a`), or a test's. Partners are not filtered by it: every shard uses them.
    pub label_selector: Option<String>,
    /// Use only CyclrPartners with these labels (several operators, each with its own
    /// partners, e.g. side by side in tests); `None`: all.
    pub partner_label_selector: Option<String>,
    /// Whether this process writes the CyclrPartners' status. In a sharded install one shard
    /// does; the others check each partner for their own use and write nothing to it.
    pub partner_status: bool,
    /// How many shards (processes serving disjoint label selectors) share each partner's
    /// `rateLimit`: each keeps to `1/shards` of it (at least 1).
    pub shards: u32,
    /// Accounts asked for per page of a v1.0 list (`pageSize`; 100, what Cyclr's own tests
    /// use: Cyclr documents no largest page size).
    pub v1_page_size: u32,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
}

impl OperatorConfig {
    /// Watches every namespace, all objects, writes the partners' status, holds each
    /// partner's whole budget, 16 reconciles at once per kind.
    pub fn new(namespace: impl Into<String>) -> Self {
        OperatorConfig {
            namespace: namespace.into(),
            watch_namespace: None,
            label_selector: None,
            partner_label_selector: None,
            partner_status: true,
            shards: 1,
            v1_page_size: 100,
            concurrency: 16,
        }
    }

    /// Whether this process serves every CyclrAccount in the cluster (no namespace, no
    /// selector): then its account watch alone keeps the claims.
    pub fn serves_whole_cluster(&self) -> bool {
        self.watch_namespace.is_none() && self.label_selector.is_none()
    }

    /// How the kinds this process serves (accounts, installs, cycles) are watched.
    pub fn served(&self) -> KindConfig {
        KindConfig {
            label_selector: self.label_selector.clone(),
            writes_status: true,
        }
    }

    /// How the partners are watched, and whether their status is written here.
    pub fn partners(&self) -> KindConfig {
        KindConfig {
            label_selector: self.partner_label_selector.clone(),
            writes_status: self.partner_status,
        }
    }
}

/// The operator's services that more than one kind uses: the partners' runtimes, the
/// labelled Secrets, the claim indexes, the namespaces' labels and the partner wakes. Each
/// kind keeps its own state in a struct of its own (e.g. [`account::AccountState`]).
pub struct Services {
    /// Where and what the operator watches.
    pub config: OperatorConfig,
    /// Each CyclrPartner's client, state and account snapshot.
    pub partners: Partners,
    /// The operator's series (the driver's, plus Cyclr calls, usage, snapshots).
    pub metrics: Arc<Metrics>,
    /// The labelled credential Secrets.
    pub secrets: Secrets,
    /// Cyclr account ids held by CyclrAccounts anywhere in the cluster (from their
    /// `cyclr.com/account-id` annotation, plus claims this process just made).
    pub account_claims: ClaimIndex,
    /// Installed names per account held by CyclrConnectorInstalls (`namespace/account/name`).
    pub install_claims: ClaimIndex,
    /// The cluster's identity (the `kube-system` namespace's uid, read once at start): part
    /// of the account ids the operator derives on `V1` partners, so two clusters sharing a
    /// partner never derive the same id.
    pub cluster_id: String,
    /// Namespace labels, for the partners' namespaceSelector.
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Partners whose accounts (those a wake is for) and cycles should be reconciled now.
    wake_partner: mpsc::UnboundedSender<PartnerWake>,
    /// Partner names to check again now: Cyclr refused their credentials to a call.
    check_partner: mpsc::UnboundedSender<String>,
}

impl Services {
    /// Wakes the partner's accounts `woken` is for (a new snapshot: those it shows changed
    /// and those not settled; a readiness change or deletion: all), and all its cycles but
    /// for [`Woken::UsageReads`].
    pub fn wake_partner(&self, partner: &str, woken: Woken) {
        self.partner_waker(partner)(woken);
    }

    /// [`wake_partner`](Self::wake_partner) for `partner`, for a task that outlives the caller.
    pub fn partner_waker(&self, partner: &str) -> impl Fn(Woken) + Send + 'static {
        let (wakes, partner) = (self.wake_partner.clone(), partner.to_string());
        move |woken| {
            let _ = wakes.unbounded_send(PartnerWake {
                partner: partner.clone(),
                woken,
            });
        }
    }

    /// The labels of a namespace, from the watch.
    pub fn namespace_labels(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    /// Records the Cyclr account a CyclrAccount holds by its `cyclr.com/account-id`
    /// annotation (from a watch event).
    fn claim_annotated(&self, meta: &kube::api::ObjectMeta) {
        let id = resources::annotation(meta, annotations::ACCOUNT_ID).map(str::to_string);
        self.account_claims.set(Holder::of(meta), id.into_iter().collect());
    }
}

/// The namespaced Api of kind K that the operator watches: one namespace or all.
fn namespaced_api<K>(client: Client, config: &OperatorConfig) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &config.watch_namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// The CyclrAccount a namespaced kind refers to (`account`, from the account watch: `name` in
/// `namespace`) and its partner's runtime, when both can be used: the account has a Cyclr id,
/// and its partner is in service, Ready and admits the namespace. Else the reason and message
/// to report; the kind says how (a cycle stalls on `PartnerNotAllowed`).
pub fn usable_account(
    services: &Services,
    partners: &partner::Partners,
    namespace: &str,
    name: &str,
    account: Option<&CyclrAccount>,
) -> Result<(String, Arc<PartnerRuntime>), (Reason, String)> {
    let Some(account) = account else {
        return Err((Reason::AccountNotReady, format!("CyclrAccount {name:?} not found")));
    };
    let Some(account_id) = account.status.as_ref().and_then(|s| s.account_id.clone()) else {
        return Err((
            Reason::AccountNotReady,
            format!("CyclrAccount {name:?} has no Cyclr account id yet"),
        ));
    };
    let partner = &account.spec.partner_ref.name;
    let unchecked = || {
        (
            Reason::PartnerNotReady,
            format!("CyclrPartner {partner:?} has not been checked yet"),
        )
    };
    let Some(runtime) = services.partners.get(partner) else {
        return Err(if partners.exists(partner) {
            unchecked()
        } else {
            (
                Reason::PartnerNotFound,
                format!("CyclrPartner {partner:?} does not exist"),
            )
        });
    };
    if !runtime.admits(&services.namespace_labels(namespace).unwrap_or_default()) {
        return Err((
            Reason::PartnerNotAllowed,
            format!("CyclrPartner {partner:?} does not admit namespace {namespace:?}"),
        ));
    }
    match runtime.state() {
        PartnerState::Ready => Ok((account_id, runtime)),
        PartnerState::Unchecked => Err(unchecked()),
        PartnerState::NotReady(why) => Err((
            Reason::PartnerNotReady,
            format!("the account's partner is not ready: {why}"),
        )),
    }
}

/// A Cyclr object that deleting its resource deletes through the resource's partner, named
/// as the kind's messages name it.
pub struct Deleting<'a> {
    /// What is deleted: `Cyclr account a1`.
    pub what: String,
    /// The same, shorter, as left in Cyclr: `the account`.
    pub kept: &'a str,
    /// What the Partner API cannot delete: `accounts`.
    pub objects: &'a str,
    /// The resource as kubectl names it: `cyclraccount acme`.
    pub resource: String,
}

impl Deleting<'_> {
    /// `DeletionBlocked`: the object could not be deleted because `why`; the message says how
    /// to let the resource go (`deletionPolicy: Orphan`).
    pub fn blocked(&self, why: &str) -> Cleanup<Reason> {
        Cleanup::Blocked(Health::stalled(
            Reason::DeletionBlocked,
            format!(
                "{} could not be deleted: {why}. To let this resource go and leave {} in Cyclr, set spec.deletionPolicy to Orphan on it: kubectl patch {} --type merge -p '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}'",
                self.what, self.kept, self.resource
            ),
        ))
    }

    /// Whether the partner lets the delete go ahead now (pure): `None` for a ready `V1`
    /// partner; else the cleanup to report: wait for the partner's first check, or blocked
    /// (no such partner, not ready, or on the Partner API, which deletes nothing).
    /// `partner` is the runtime's state and dialect when it is in service.
    pub fn through(
        &self,
        name: &str,
        partner: Option<(PartnerState, CyclrApi)>,
        exists: bool,
    ) -> Option<Cleanup<Reason>> {
        let waiting = || {
            Some(Cleanup::Blocked(Health::reconciling(
                Reason::PartnerNotReady,
                format!(
                    "CyclrPartner {name:?} has not been checked yet; {} is deleted once it is",
                    self.what
                ),
            )))
        };
        match partner {
            None if exists => waiting(),
            None => Some(self.blocked(&format!("CyclrPartner {name:?} does not exist"))),
            Some((PartnerState::Unchecked, _)) => waiting(),
            Some((PartnerState::NotReady(why), _)) => {
                Some(self.blocked(&format!("CyclrPartner {name:?} is not ready: {why}")))
            }
            Some((PartnerState::Ready, CyclrApi::Partner)) => Some(self.blocked(&format!(
                "CyclrPartner {name:?} uses cyclrAPI Partner, which cannot delete {}",
                self.objects
            ))),
            Some((PartnerState::Ready, CyclrApi::V1)) => None,
        }
    }
}

/// Where labelled Secrets are read from (`None`: everywhere): partners' credentials in the
/// operator's namespace, installs' in the namespaces it watches. With a watch namespace
/// these are namespaced watches, so RBAC need grant Secrets in those namespaces only.
fn secret_namespaces(config: &OperatorConfig) -> Vec<Option<String>> {
    match &config.watch_namespace {
        None => vec![None],
        Some(ns) if *ns == config.namespace => vec![Some(ns.clone())],
        Some(ns) => vec![Some(config.namespace.clone()), Some(ns.clone())],
    }
}

/// Waits until the operator's CRDs are established, so the watches do not fail at start.
pub async fn wait_for_crds(client: Client) -> Result<(), kube::runtime::wait::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap_or_default();
        tracing::info!(crd = %name, "waiting for the CRD to be established");
        await_condition(api.clone(), &name, conditions::is_crd_established()).await?;
    }
    Ok(())
}

/// Runs the four controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Result<(), kube::runtime::wait::Error> {
    // Before the first wait: the kinds' watches are registered only after the Secrets' and
    // Namespaces' stores have synced, and `/readyz` must not answer ready in between.
    readiness.setting_up(CONTROLLERS);
    wait_for_crds(client.clone()).await?;

    // Only labelled Secrets, in the namespaces they are read from: one watch and store each.
    let (to_partners, secret_changes_partners) = mpsc::unbounded::<Secret>();
    let (to_installs, secret_changes_installs) = mpsc::unbounded::<Secret>();
    let (to_cycles, secret_changes_cycles) = mpsc::unbounded::<Secret>();
    let (mut secret_stores, mut secret_runs) = (Vec::new(), Vec::new());
    for namespace in secret_namespaces(&config) {
        let (api, watch): (Api<Secret>, _) = match &namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), format!("Secret in {ns}")),
            None => (Api::all(client.clone()), "Secret".to_string()),
        };
        let (store, writer) = reflector::store();
        secret_stores.push(store);
        let (to_partners, to_installs, to_cycles) = (to_partners.clone(), to_installs.clone(), to_cycles.clone());
        // Each watch of labelled Secrets feeds its store and wakes partners and installs.
        secret_runs.push(
            readiness
                .watched(
                    &watch,
                    watcher::watcher(api, watcher::Config::default().labels(&secrets::selector())),
                )
                .backoff(driver::watch_backoff())
                .modify(|s: &mut Secret| s.metadata.managed_fields = None)
                .reflect(writer)
                .touched_objects()
                .for_each(move |secret| {
                    match secret {
                        Ok(secret) => {
                            let _ = to_partners.unbounded_send(secret.clone());
                            let _ = to_installs.unbounded_send(secret.clone());
                            let _ = to_cycles.unbounded_send(secret);
                        }
                        Err(error) => tracing::warn!(%error, "Secret watch failed; retrying"),
                    }
                    futures::future::ready(())
                }),
        );
    }
    let (namespace_store, namespace_writer) = reflector::store();
    // A namespace changed (its labels, for a partner's namespaceSelector) wakes its accounts.
    let (namespace_changed, namespace_changes) = mpsc::unbounded();
    let namespace_run = readiness
        .watched(
            "Namespace",
            watcher::watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .backoff(driver::watch_backoff())
        .reflect(namespace_writer)
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(namespace)) => {
                    let _ = namespace_changed.unbounded_send(namespace.metadata.name.unwrap_or_default());
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "Namespace watch failed; retrying"),
            }
            futures::future::ready(())
        });
    let cluster_id = cluster_identity(client.clone()).await;
    let (wake_partner, partner_wakes) = mpsc::unbounded();
    let (check_partner, partner_checks) = mpsc::unbounded();
    let secrets = Secrets::new(secret_stores.clone(), client.clone());
    let scrubber = secrets.clone();
    let driver = Arc::new(Driver::new(
        client.clone(),
        DriverConfig {
            manager: MANAGER,
            concurrency: config.concurrency,
        },
        metrics.clone(),
        readiness.clone(),
        move |text| scrubber.scrub(text),
    ));
    let services = Arc::new(Services {
        config: config.clone(),
        partners: Partners::default(),
        metrics,
        secrets,
        account_claims: ClaimIndex::default(),
        install_claims: ClaimIndex::default(),
        namespaces: namespace_store.clone(),
        wake_partner,
        check_partner,
        cluster_id,
    });
    // Claims come from every CyclrAccount in the cluster, not only those this operator
    // serves. When it serves them all, the account controller's watch keeps the index;
    // otherwise (a namespace, a shard) a metadata-only watch of the rest is added.
    let whole_cluster = config.serves_whole_cluster();
    let claims_run = (!whole_cluster).then(|| {
        let claims = services.clone();
        readiness
            .watched(
                "CyclrAccount claims",
                watcher::watcher(
                    Api::<PartialObjectMeta<CyclrAccount>>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .backoff(driver::watch_backoff())
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => claims.claim_annotated(&m.metadata),
                    Ok(watcher::Event::Delete(m)) => claims
                        .account_claims
                        .remove(m.metadata.uid.as_deref().unwrap_or_default()),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "account claim watch failed; retrying"),
                }
                futures::future::ready(())
            })
    });
    let background = tokio::spawn(async move {
        let claims_run = async move {
            if let Some(run) = claims_run {
                run.await
            }
        };
        futures::join!(futures::future::join_all(secret_runs), namespace_run, claims_run);
    });
    for store in &secret_stores {
        let _ = store.wait_until_ready().await;
    }
    let _ = namespace_store.wait_until_ready().await;

    // Once stopping, no new Cyclr write starts; those already sent end within the grace.
    tokio::spawn({
        let (driver, shutdown) = (driver.clone(), shutdown.clone());
        async move {
            shutdown.await;
            driver.stop_writes();
        }
    });
    // Built in this order so each kind is handed the stores it looks up: accounts read the
    // partners' watch, installs the accounts'.
    let (partners, partner_objects) = partner::controller(
        driver.clone(),
        services.clone(),
        secret_changes_partners,
        partner_checks,
        shutdown.clone(),
    );
    let (account_changes, account_changes_installs) = mpsc::unbounded();
    // Accounts' changes and partner wakes go to the cycles too.
    let (account_changes_installs, account_changes_cycles) = fan_out(account_changes_installs);
    let (partner_wakes, partner_wakes_cycles) = fan_out(partner_wakes);
    let (accounts, account_store) = account::controller(
        driver.clone(),
        account::AccountState::new(services.clone(), partner_objects.clone()),
        partner_wakes,
        namespace_changes,
        account_changes,
        whole_cluster,
        shutdown.clone(),
    );
    // Installs that are done wake their account's cycles, as the account's changes do.
    let (installed, installed_cycles) = mpsc::unbounded();
    let (installs, install_store) = connector_install::controller(
        driver.clone(),
        connector_install::InstallState::new(services.clone(), partner_objects.clone(), account_store.clone()),
        secret_changes_installs,
        account_changes_installs,
        installed,
        shutdown.clone(),
    );
    let cycles = cycle::controller(
        driver,
        cycle::CycleKindState::new(services, partner_objects, account_store, install_store),
        secret_changes_cycles,
        stream::select(account_changes_cycles, installed_cycles),
        partner_wakes_cycles,
        shutdown,
    );
    // Every kind's watch is registered now (`driver::controller_for`).
    readiness.set_up(CONTROLLERS);
    tracing::info!(
        namespace = %config.namespace,
        selector = config.label_selector.as_deref().unwrap_or(""),
        shards = config.shards,
        partner_status = config.partner_status,
        "controllers started"
    );
    futures::join!(
        driver::report(partners),
        driver::report(accounts),
        driver::report(installs),
        driver::report(cycles)
    );
    background.abort();
    Ok(())
}

/// What `/readyz` names while the controllers set up ([`Readiness::setting_up`]).
const CONTROLLERS: &str = "the controllers";

/// The uid of the `kube-system` namespace, read once: it lives as long as the cluster.
/// Asked again until the API server answers (an id derived without it would differ from the
/// one derived before a restart). Empty, with a warning, where there is no such namespace:
/// derived ids then depend on the namespace and name alone.
async fn cluster_identity(client: Client) -> String {
    let api = Api::<Namespace>::all(client);
    loop {
        match api.get_metadata_opt("kube-system").await {
            Ok(Some(ns)) => return ns.metadata.uid.unwrap_or_default(),
            Ok(None) => {
                tracing::warn!(
                    "no kube-system namespace: account ids derived on V1 partners will not tell this cluster from another"
                );
                return String::new();
            }
            Err(error) => {
                tracing::warn!(%error, "reading the cluster's identity (the kube-system namespace); retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Copies each item of `items` to two receivers (a wake several kinds listen to). The copying
/// task ends with `items`.
fn fan_out<T: Clone + Send + 'static>(
    items: mpsc::UnboundedReceiver<T>,
) -> (mpsc::UnboundedReceiver<T>, mpsc::UnboundedReceiver<T>) {
    let (first, first_rx) = mpsc::unbounded();
    let (second, second_rx) = mpsc::unbounded();
    tokio::spawn(items.for_each(move |item| {
        let _ = first.unbounded_send(item.clone());
        let _ = second.unbounded_send(item);
        futures::future::ready(())
    }));
    (first_rx, second_rx)
}

/// A partner's wake of its dependants.
#[derive(Clone, Debug)]
pub struct PartnerWake {
    /// The CyclrPartner's name.
    pub partner: String,
    /// Which of its accounts to wake (its cycles wake at each).
    pub woken: Woken,
}

/// Maps a changed Secret to the objects in `store` that use it (for `.watches_stream`).
/// Decodes every object: Secrets with the credentials label change rarely.
fn users_of_secret<K: Reconciler>(
    store: Store<Packed<K>>,
    uses: impl Fn(&K, &Secret) -> bool + Send + Sync + 'static,
) -> impl Fn(Secret) -> Vec<ObjectRef<Packed<K>>> + Send + Sync + 'static {
    move |secret| {
        store
            .state()
            .iter()
            .filter(|packed| packed.unpack().is_ok_and(|obj| uses(&obj, &secret)))
            .map(|packed| ObjectRef::from_obj(packed.as_ref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_watched_where_they_are_read() {
        let config = |watch: Option<&str>| OperatorConfig {
            watch_namespace: watch.map(String::from),
            ..OperatorConfig::new("cyclr-system")
        };
        assert_eq!(secret_namespaces(&config(None)), vec![None]);
        assert_eq!(
            secret_namespaces(&config(Some("cyclr-system"))),
            vec![Some("cyclr-system".to_string())]
        );
        assert_eq!(
            secret_namespaces(&config(Some("tenants"))),
            vec![Some("cyclr-system".to_string()), Some("tenants".to_string())]
        );
    }
}
