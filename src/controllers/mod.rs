//! The three controllers. Each reconcile runs observe → decide (pure, unit-tested) → act →
//! report status; this module holds what they share.

pub mod account;
pub mod connector_install;
pub mod partner;
pub mod partners;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::PredicateConfig;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::resources::{self, CyclrAccount, CyclrConnectorInstall, CyclrPartner, MANAGER};
use cyclr::CyclrError;

/// The Api through which an object of each kind is written.
pub trait ScopedApi: Resource<DynamicType = ()> + Sized {
    fn api_for(client: Client, obj: &Self) -> Api<Self>;
}

impl ScopedApi for CyclrPartner {
    fn api_for(client: Client, _: &Self) -> Api<Self> {
        Api::all(client)
    }
}

impl ScopedApi for CyclrAccount {
    fn api_for(client: Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, obj.meta().namespace.as_deref().unwrap_or_default())
    }
}

impl ScopedApi for CyclrConnectorInstall {
    fn api_for(client: Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, obj.meta().namespace.as_deref().unwrap_or_default())
    }
}
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
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cyclr(#[from] CyclrError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    /// A transient failure already reported in status; retried with backoff.
    #[error("will retry: {0}")]
    Transient(String),
}

/// Everything a reconcile needs, shared by all three controllers.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub partners: Partners,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// The account store, for "is this Cyclr account claimed by another resource".
    accounts: OnceLock<Store<DeserializeGuard<CyclrAccount>>>,
    /// Partner names whose accounts should be reconciled now (new snapshot, readiness change).
    partner_changed: mpsc::UnboundedSender<String>,
    /// When each account's usage was last read (by uid): kept in memory, not in status, so
    /// a poll that finds nothing new writes nothing.
    usage_polls: Mutex<HashMap<String, Instant>>,
}

impl Context {
    /// Publishes an Event (events.k8s.io); the recorder de-duplicates repeats into a series.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, "could not publish an Event");
        }
    }

    /// Jittered exponential backoff per object for transient failures.
    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("lock");
        let n = failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        let base = Duration::from_secs(2u64.saturating_pow((*n).min(8))).min(Duration::from_secs(300));
        base.mul_f64(rand::rng().random_range(0.5..1.0))
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().expect("lock").remove(key);
    }

    /// Ids of Cyclr accounts held by CyclrAccounts other than `except` (a uid).
    pub fn claimed_account_ids(&self, except: &str) -> Vec<String> {
        let Some(store) = self.accounts.get() else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|account| account.uid().as_deref() != Some(except))
            .filter_map(|account| account.account_id().map(str::to_string))
            .collect()
    }

    pub fn partner_changed(&self, partner: &str) {
        let _ = self.partner_changed.unbounded_send(partner.to_string());
    }

    /// Writes the status subresource by server-side apply, so fields we stop reporting go away.
    pub async fn apply_status<K, S>(&self, obj: &K, status: &S) -> Result<(), Error>
    where
        K: ScopedApi + DeserializeOwned + Clone + Debug,
        S: Serialize,
    {
        let api = K::api_for(self.client.clone(), obj);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.metrics.kubernetes_write(&K::kind(&()));
        Ok(())
    }

    /// Sets or removes one annotation. With `expect_version`, the write fails with a
    /// conflict if the object changed since it was read (optimistic concurrency).
    pub async fn set_annotation<K>(
        &self,
        obj: &K,
        key: &str,
        value: Option<&str>,
        expect_version: bool,
    ) -> Result<K, Error>
    where
        K: ScopedApi + DeserializeOwned + Clone + Debug,
    {
        let api = K::api_for(self.client.clone(), obj);
        let mut metadata = serde_json::json!({ "annotations": { key: value } });
        if expect_version {
            metadata["resourceVersion"] = serde_json::json!(obj.resource_version());
        }
        let updated = api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "metadata": metadata })),
            )
            .await?;
        self.metrics.kubernetes_write(&K::kind(&()));
        Ok(updated)
    }
}

/// What a reconcile error means for the next attempt.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = guard_key(&obj);
    let delay = match error {
        Error::Cyclr(e) => e.retry_after().unwrap_or_else(|| ctx.backoff(&key)),
        _ => ctx.backoff(&key),
    };
    tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn guard_key<K: Resource<DynamicType = ()>>(obj: &DeserializeGuard<K>) -> String {
    let meta = match &obj.0 {
        Ok(o) => o.meta(),
        Err(invalid) => &invalid.metadata,
    };
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Runs one reconcile with the bookkeeping every controller shares: malformed objects are
/// reported rather than breaking the watch, and outcomes feed metrics and backoff.
async fn guarded<K, F, Fut>(obj: Arc<DeserializeGuard<K>>, ctx: Arc<Context>, reconcile: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let key = guard_key(&obj);
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(resource) => reconcile(Arc::new(resource.clone()), ctx.clone()).await,
        Err(invalid) => {
            tracing::warn!(object = %key, error = %invalid, "cannot read object; fix its spec");
            Ok(Action::await_change())
        }
    };
    ctx.metrics.reconciled(&K::kind(&()), result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// Requeue after `interval` with up to 10% jitter, so objects spread out over time.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..1.0))
}

/// A controller whose own status writes do not wake it: only spec (generation), annotation
/// (pause, create-pending) and deletion changes do, plus the periodic requeue. Objects that
/// fail to deserialise arrive as errors in the guard instead of breaking the watch, and
/// managed fields are dropped from the cache to save memory.
fn controller_for<K>(api: Api<DeserializeGuard<K>>, config: &OperatorConfig) -> Controller<DeserializeGuard<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, watch_config(config))
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_annotations, PredicateConfig::default());
    Controller::for_stream(stream, reader)
}

fn spec_or_annotations<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, &meta.annotations, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
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
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match &config.watch_namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Waits until the operator's CRDs are established, so the watches do not fail at start.
pub async fn wait_for_crds(client: Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap_or_default();
        tracing::info!(crd = %name, "waiting for the CRD to be established");
        await_condition(api.clone(), &name, conditions::is_crd_established())
            .await
            .map_err(|e| Error::Invalid(format!("waiting for CRD {name}: {e}")))?;
    }
    Ok(())
}

/// Runs the three controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Result<(), Error> {
    wait_for_crds(client.clone()).await?;
    let (partner_changed, partner_changes) = mpsc::unbounded();
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
        failures: Mutex::default(),
        accounts: OnceLock::new(),
        partner_changed,
        usage_polls: Mutex::default(),
    });

    let partners = partner::controller(ctx.clone(), shutdown.clone());
    let accounts = account::controller(ctx.clone(), partner_changes, shutdown.clone());
    let installs = connector_install::controller(ctx.clone(), shutdown);
    tracing::info!(namespace = %config.namespace, "controllers started");
    futures::join!(
        partners.for_each(|_| async {}),
        accounts.for_each(|_| async {}),
        installs.for_each(|_| async {})
    );
    Ok(())
}

/// The Kubernetes Secret API of the operator's namespace, where partner credentials live.
fn operator_secrets(ctx: &Context) -> Api<k8s_openapi::api::core::v1::Secret> {
    Api::namespaced(ctx.client.clone(), &ctx.config.namespace)
}
