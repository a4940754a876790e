//! The three kinds, plugged into the driver ([`crate::driver`]), and the watches that feed
//! them. Each kind's file is observe → decide (pure) → act; this module holds the context they
//! share and starts everything.

pub mod account;
pub mod connector_install;
pub mod partner;
pub mod partners;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use rand::Rng;

use crate::driver::{self, Backoffs, OwnWrites, Packed, Reason, Reconciler, Resyncs, stable_hash};
use crate::index::{ClaimIndex, Holder};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::resources::{self, CyclrAccount, CyclrPartner, MANAGER, annotations};
use crate::secrets::{self, Secrets};
use partners::Partners;

/// Where and what the operator watches.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The operator's own namespace: partner credential Secrets are read from here only.
    pub namespace: String,
    /// Watch accounts and installs in this namespace only (default: all namespaces).
    pub watch_namespace: Option<String>,
    /// Reconcile only objects (of all three kinds) with these labels: for sharding, and for
    /// running several operators side by side in tests.
    pub label_selector: Option<String>,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
}

impl OperatorConfig {
    pub fn new(namespace: impl Into<String>) -> Self {
        OperatorConfig {
            namespace: namespace.into(),
            watch_namespace: None,
            label_selector: None,
            concurrency: 16,
        }
    }
}

/// Everything a reconcile needs, shared by all three kinds.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub partners: Partners,
    pub metrics: Arc<Metrics>,
    pub backoffs: Backoffs,
    /// Our own last write per object, until the watch delivers it.
    pub own_writes: OwnWrites,
    /// The labelled credential Secrets.
    pub secrets: Secrets,
    /// Cyclr account ids held by CyclrAccounts anywhere in the cluster (metadata watch of
    /// their `cyclr.com/account-id` annotation, plus claims this process just made).
    pub account_claims: ClaimIndex,
    /// Installed names per account held by CyclrConnectorInstalls (`namespace/account/name`).
    pub install_claims: ClaimIndex,
    /// The watched accounts, for installs looking up their account.
    accounts: OnceLock<Store<Packed<CyclrAccount>>>,
    /// The watched partners, to tell "not checked yet" from "does not exist".
    partner_objects: OnceLock<Store<Packed<CyclrPartner>>>,
    /// Namespace labels, for the partners' namespaceSelector.
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Partner names whose accounts should be reconciled now.
    wake_partner: mpsc::UnboundedSender<String>,
    /// When each account's usage was last read (by uid hash): in memory, not status, so a
    /// poll that finds nothing new writes nothing.
    usage_polls: Mutex<HashMap<u64, Instant>>,
    /// Each account's latest create attempt that did or may have created something, by uid
    /// (see [`account::CreateAttempt`]): what this process knows before its own status
    /// writes are seen.
    create_attempts: Mutex<HashMap<String, account::CreateAttempt>>,
    /// The same for each connector install, by uid (see
    /// [`connector_install::InstallAttempt`]).
    install_attempts: Mutex<HashMap<String, connector_install::InstallAttempt>>,
    recorder: Recorder,
    /// What `/readyz` reports: every watch registers here.
    readiness: Arc<Readiness>,
    /// Each kind's resync timers, by kind.
    resyncs: Mutex<HashMap<String, Arc<Resyncs>>>,
}

impl Context {
    /// Publishes an Event (events.k8s.io); the recorder folds repeats into a series.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: Reason, note: String) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, %reason, "could not publish an Event");
        } else {
            self.metrics.kubernetes_write("Event");
        }
    }

    /// The resync timers of `kind`.
    pub fn resyncs_of(&self, kind: &str) -> Arc<Resyncs> {
        let mut resyncs = self.resyncs.lock().expect("lock");
        match resyncs.get(kind) {
            Some(timers) => timers.clone(),
            None => resyncs.entry(kind.to_owned()).or_default().clone(),
        }
    }

    /// `text` without any credential value the operator holds.
    pub fn scrub(&self, text: &str) -> String {
        self.secrets.scrub(text)
    }

    /// Wakes every account of the partner (new snapshot, readiness change, deletion).
    pub fn wake_partner(&self, partner: &str) {
        let _ = self.wake_partner.unbounded_send(partner.to_string());
    }

    /// The account `namespace/name` from the watch.
    pub fn account(&self, namespace: &str, name: &str) -> Option<Arc<CyclrAccount>> {
        let packed = self.accounts.get()?.get(&ObjectRef::new(name).within(namespace))?;
        packed.unpack().ok().map(Arc::new)
    }

    /// Whether a CyclrPartner of this name exists (from the watch; `true` until the watch
    /// has listed, so a restart never reports a partner missing).
    pub fn partner_exists(&self, name: &str) -> bool {
        use futures::FutureExt as _;
        self.partner_objects.get().is_none_or(|store| {
            // Listed yet? (`wait_until_ready` is ready at once when it has.)
            store.wait_until_ready().now_or_never().is_none() || store.get(&ObjectRef::new(name)).is_some()
        })
    }

    /// Records the Cyclr account a CyclrAccount holds by its `cyclr.com/account-id`
    /// annotation (from a watch event).
    fn claim_annotated(&self, meta: &kube::api::ObjectMeta) {
        let id = resources::annotation(meta, annotations::ACCOUNT_ID).map(str::to_string);
        self.account_claims.set(Holder::of(meta), id.into_iter().collect());
    }

    /// The labels of a namespace, from the watch.
    pub fn namespace_labels(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// One item of a controller's result stream.
pub type ReconcileResult<K> =
    Result<(ObjectRef<Packed<K>>, controller::Action), controller::Error<driver::Error, watcher::Error>>;

/// Requeue after `interval` with up to 10% jitter, so objects spread out over time.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..1.0))
}

/// What kube's error policy does with a failed status write: retry soon, with jitter.
fn error_policy<K>(_obj: Arc<Packed<K>>, error: &driver::Error, _ctx: Arc<Context>) -> controller::Action {
    tracing::warn!(%error, "reconcile failed");
    controller::Action::requeue(jittered(Duration::from_secs(5)))
}

/// A controller for kind K driven by the driver: the watch reports deletions to the kind's
/// `forget` (and every event to `on_event`, with the whole object), the cache keeps each
/// object packed ([`Packed`]), and reconciles are woken only for spec (generation), pause and
/// deletion changes, so the operator's own writes never wake it. Every wake, from the watch
/// or a timer, goes through the kind's resync queue ([`Resyncs`]).
fn controller_for<K>(
    ctx: &Arc<Context>,
    api: Api<DeserializeGuard<K>>,
    on_event: impl Fn(&watcher::Event<DeserializeGuard<K>>) + Send + 'static,
) -> Controller<Packed<K>>
where
    K: Reconciler,
{
    let (reader, writer) = reflector::store();
    let forget_ctx = ctx.clone();
    let mut wakes = Wakes::default();
    let seen_ctx = ctx.clone();
    let resyncs = ctx.resyncs_of(&K::kind(&()));
    let wake_on = resyncs.clone();
    let stream = ctx
        .readiness
        .watched(&K::kind(&()), watcher::watcher(api, watch_config(&ctx.config)))
        .default_backoff()
        .map_ok(move |event| {
            if let watcher::Event::Delete(DeserializeGuard(Ok(obj))) = &event {
                let uid = obj.meta().uid.as_deref().unwrap_or_default();
                K::forget(&forget_ctx, obj.meta());
                forget_ctx.resyncs_of(&K::kind(&())).take(obj.meta());
                forget_ctx.backoffs.forget(uid);
                forget_ctx.own_writes.forget(uid);
            }
            on_event(&event);
            driver::pack_event(event)
        })
        .reflect(writer)
        .try_filter_map(move |event| {
            // After `reflect`: the cache already holds this version when the record goes.
            if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = &event {
                seen_ctx.own_writes.seen(obj.meta());
            }
            // A woken object waits on the resync queue, which hands kube's scheduler a few at
            // a time: a rollout of thousands never sits there at once (a request there costs
            // about 0.7 KiB, and the scheduler's tables keep their largest size for good).
            if let Some(obj) = wakes.wake(event) {
                wake_on.schedule(obj.meta(), Duration::ZERO);
            }
            futures::future::ready(Ok(None))
        });
    Controller::for_stream(stream, reader)
        .reconcile_on(resyncs.due())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
}

/// What each watched object last woke a reconcile for: its generation, pause and deletion,
/// hashed, by a hash of its uid, with the watch (re)list it was last seen in. An event wakes
/// a reconcile only when that changed, so the operator's own status writes never wake it.
/// (kube's `predicate_filter` does the same with three strings per object and forgets only
/// after an hour; this keeps 24 bytes and forgets at the Delete event, or, for objects
/// deleted while the watch was down, at the end of the relist that no longer holds them.)
#[derive(Default)]
struct Wakes {
    seen: HashMap<u64, (u64, u32)>,
    list: u32,
}

impl Wakes {
    /// The object to reconcile for this watch event, if any.
    fn wake<K: Resource>(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let meta = obj.meta();
                let wake = stable_hash(&(
                    meta.generation,
                    resources::is_paused(meta),
                    meta.deletion_timestamp.is_some(),
                ));
                let last = self.seen.insert(stable_hash(&meta.uid), (wake, self.list));
                (last.map(|(w, _)| w) != Some(wake)).then_some(obj)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&stable_hash(&obj.meta().uid));
                None
            }
            watcher::Event::Init => {
                self.list = self.list.wrapping_add(1);
                None
            }
            watcher::Event::InitDone => {
                let list = self.list;
                self.seen.retain(|_, (_, seen_in)| *seen_in == list);
                None
            }
        }
    }
}

fn watch_config(config: &OperatorConfig) -> watcher::Config {
    let wc = watcher::Config::default().any_semantic();
    match &config.label_selector {
        Some(selector) => wc.labels(selector),
        None => wc,
    }
}

fn namespaced_api<K>(client: Client, config: &OperatorConfig) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &config.watch_namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
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

/// Runs the three controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Result<(), kube::runtime::wait::Error> {
    wait_for_crds(client.clone()).await?;

    // Only labelled Secrets, in the namespaces they are read from: one watch and store each.
    let (to_partners, secret_changes_partners) = mpsc::unbounded::<Secret>();
    let (to_installs, secret_changes_installs) = mpsc::unbounded::<Secret>();
    let (mut secret_stores, mut secret_runs) = (Vec::new(), Vec::new());
    for namespace in secret_namespaces(&config) {
        let (api, watch): (Api<Secret>, _) = match &namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), format!("Secret in {ns}")),
            None => (Api::all(client.clone()), "Secret".to_string()),
        };
        let (store, writer) = reflector::store();
        secret_stores.push(store);
        let (to_partners, to_installs) = (to_partners.clone(), to_installs.clone());
        // Each watch of labelled Secrets feeds its store and wakes partners and installs.
        secret_runs.push(
            readiness
                .watched(
                    &watch,
                    watcher::watcher(api, watcher::Config::default().labels(&secrets::selector())),
                )
                .default_backoff()
                .modify(|s: &mut Secret| s.metadata.managed_fields = None)
                .reflect(writer)
                .touched_objects()
                .for_each(move |secret| {
                    match secret {
                        Ok(secret) => {
                            let _ = to_partners.unbounded_send(secret.clone());
                            let _ = to_installs.unbounded_send(secret);
                        }
                        Err(error) => tracing::warn!(%error, "Secret watch failed; retrying"),
                    }
                    futures::future::ready(())
                }),
        );
    }
    let (namespace_store, namespace_writer) = reflector::store();
    let namespace_run = readiness
        .watched(
            "Namespace",
            watcher::watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .reflect(namespace_writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, "Namespace watch failed; retrying");
            }
        });
    let (wake_partner, partner_wakes) = mpsc::unbounded();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ),
        client: client.clone(),
        config: config.clone(),
        partners: Partners::default(),
        metrics,
        backoffs: Backoffs::default(),
        own_writes: OwnWrites::default(),
        secrets: Secrets::new(secret_stores.clone(), client.clone()),
        account_claims: ClaimIndex::default(),
        install_claims: ClaimIndex::default(),
        accounts: OnceLock::new(),
        partner_objects: OnceLock::new(),
        namespaces: namespace_store.clone(),
        wake_partner,
        usage_polls: Mutex::default(),
        create_attempts: Mutex::default(),
        install_attempts: Mutex::default(),
        readiness: readiness.clone(),
        resyncs: Mutex::default(),
    });
    // Claims come from every CyclrAccount in the cluster, not only those this operator
    // serves. When it serves them all, the account controller's watch keeps the index;
    // otherwise (a namespace, a shard) a metadata-only watch of the rest is added.
    let whole_cluster = config.watch_namespace.is_none() && config.label_selector.is_none();
    let claims_run = (!whole_cluster).then(|| {
        let claims_ctx = ctx.clone();
        readiness
            .watched(
                "CyclrAccount claims",
                watcher::watcher(
                    Api::<PartialObjectMeta<CyclrAccount>>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                        claims_ctx.claim_annotated(&m.metadata)
                    }
                    Ok(watcher::Event::Delete(m)) => claims_ctx
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

    let partners = partner::controller(ctx.clone(), secret_changes_partners, shutdown.clone());
    let (account_changes, account_changes_installs) = mpsc::unbounded();
    let accounts = account::controller(
        ctx.clone(),
        partner_wakes,
        account_changes,
        whole_cluster,
        shutdown.clone(),
    );
    let installs =
        connector_install::controller(ctx.clone(), secret_changes_installs, account_changes_installs, shutdown);
    tracing::info!(namespace = %config.namespace, "controllers started");
    futures::join!(report(partners), report(accounts), report(installs));
    background.abort();
    Ok(())
}

/// Drains a controller's result stream, logging what kube itself could not run.
async fn report<S, T, E>(results: S)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await
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
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(uid: &str, generation: i64, paused: bool) -> ConfigMap {
        let mut obj = ConfigMap::default();
        obj.metadata.uid = Some(uid.into());
        obj.metadata.generation = Some(generation);
        obj.metadata.resource_version = Some(format!("{generation}{paused}"));
        if paused {
            obj.metadata.annotations = Some([(annotations::PAUSED.to_string(), "true".to_string())].into());
        }
        obj
    }

    #[test]
    fn only_spec_pause_and_deletion_changes_wake_a_reconcile() {
        let mut wakes = Wakes::default();
        let woke = |wakes: &mut Wakes, event| wakes.wake(event).is_some();
        assert!(woke(&mut wakes, watcher::Event::InitApply(object("a", 1, false))));
        let mut status_write = object("a", 1, false);
        status_write.data = Some([("status".to_string(), "written".to_string())].into());
        assert!(!woke(&mut wakes, watcher::Event::Apply(status_write)), "our own write");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, false))), "spec");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, true))), "pause");
        let mut deleting = object("a", 2, true);
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(woke(&mut wakes, watcher::Event::Apply(deleting.clone())), "deletion");
        assert!(
            woke(&mut wakes, watcher::Event::Apply(object("b", 2, true))),
            "another object"
        );
        assert!(!woke(&mut wakes, watcher::Event::Delete(deleting)));
        assert_eq!(wakes.seen.len(), 1, "a deleted object is forgotten");
        assert!(woke(&mut wakes, watcher::Event::Apply(object("a", 2, true))));

        // A relist after the watch was down: "b" was deleted meanwhile, "a" is unchanged.
        assert!(!woke(&mut wakes, watcher::Event::Init));
        assert!(
            !woke(&mut wakes, watcher::Event::InitApply(object("a", 2, true))),
            "unchanged"
        );
        assert!(!woke(&mut wakes, watcher::Event::InitDone));
        assert_eq!(wakes.seen.len(), 1, "an object gone from the relist is forgotten");
        assert!(wakes.seen.contains_key(&stable_hash(&Some("a".to_string()))));
    }
}
