//! What the operator's integration tests share: a real control plane (cyclr-testenv), the
//! CRDs installed once, a Cyclr simulator per test, and the operator run in-process against
//! one namespace and label so that tests running side by side never see each other's objects.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod kstatus;
pub mod process;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cyclr_operator::controllers::{self, OperatorConfig};
use cyclr_operator::metrics::Metrics;
use cyclr_operator::resources::{self, CyclrAccount, CyclrConnectorInstall, CyclrPartner};
use cyclr_sim::{SimConfig, SimHandle, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

pub const CLIENT_ID: &str = "partner-client";
pub const CLIENT_SECRET: &str = "partner-secret-value";

pub struct Harness {
    pub client: Client,
    pub namespace: String,
    pub sim: SimHandle,
    /// The CyclrPartner's name: the namespace, as partners are cluster-scoped.
    pub partner: String,
    /// The running operator's metrics (what `/metrics` serves).
    pub metrics: Arc<Metrics>,
    /// What the running operator's `/readyz` would answer.
    pub readiness: Arc<driver::readiness::Readiness>,
    operator: Option<JoinHandle<()>>,
}

impl Harness {
    /// A namespace, a simulator, the partner's credentials Secret and CyclrPartner, and a
    /// running operator. `resync` is the partner's resync and usage interval.
    pub async fn start(prefix: &str, resync: &str) -> Harness {
        Harness::start_with(prefix, resync, None).await
    }

    /// [`Harness::start`] with a partner that manages its accounts with Cyclr's v1.0 API
    /// (`spec.cyclrAPI: V1`).
    pub async fn start_v1(prefix: &str, resync: &str) -> Harness {
        Harness::start_with(prefix, resync, Some("V1")).await
    }

    /// [`Harness::start`] with the partner's `spec.cyclrAPI`, when given.
    pub async fn start_with(prefix: &str, resync: &str, cyclr_api: Option<&str>) -> Harness {
        let mut h = Harness::without_operator_with(prefix, resync, cyclr_api).await;
        h.start_operator();
        h
    }

    /// [`Harness::start`] without the operator: the test starts it, e.g. with
    /// [`Harness::start_operator_as`].
    pub async fn without_operator(prefix: &str, resync: &str) -> Harness {
        Harness::without_operator_with(prefix, resync, None).await
    }

    /// [`Harness::without_operator`] with the partner's `spec.cyclrAPI`, when given.
    pub async fn without_operator_with(prefix: &str, resync: &str, cyclr_api: Option<&str>) -> Harness {
        // `RUST_LOG=cyclr_operator=debug cargo test … -- --nocapture` shows the operator's logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let env = TestEnv::get().await;
        let client = env.client();
        install_crds(&client).await;
        let namespace = env.new_namespace(prefix).await;
        let sim = Simulator::start(SimConfig::new(CLIENT_ID, CLIENT_SECRET), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("start cyclr-sim");
        let h = Harness {
            client,
            partner: namespace.clone(),
            namespace,
            sim,
            metrics: Arc::new(Metrics::default()),
            readiness: Arc::default(),
            operator: None,
        };
        h.put_secret(
            "partner-credentials",
            &[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)],
        )
        .await;
        let mut partner = json!({
            "metadata": {"name": h.partner},
            "spec": {
                "apiURL": h.sim.base_url(),
                "credentialsSecretRef": {"name": "partner-credentials"},
                "resyncInterval": resync,
                "usageInterval": resync,
            }
        });
        if let Some(api) = cyclr_api {
            partner["spec"]["cyclrAPI"] = json!(api);
        }
        h.apply::<CyclrPartner>(partner).await;
        h
    }

    /// Starts the operator on this test's namespace and label only.
    pub fn start_operator(&mut self) {
        self.start_operator_as(self.client.clone());
    }

    /// [`Harness::start_operator`] with `client` as the operator's client (e.g. one that
    /// impersonates a ServiceAccount).
    pub fn start_operator_as(&mut self, client: Client) {
        let label = format!("cyclr.com/test={}", self.namespace);
        let config = OperatorConfig {
            watch_namespace: Some(self.namespace.clone()),
            label_selector: Some(label.clone()),
            partner_label_selector: Some(label),
            ..OperatorConfig::new(self.namespace.clone())
        };
        self.run_operator(client, config);
    }

    /// Starts the operator with `config` (its own namespace is this test's).
    pub fn start_operator_with(&mut self, config: OperatorConfig) {
        self.run_operator(self.client.clone(), config);
    }

    fn run_operator(&mut self, client: Client, config: OperatorConfig) {
        let metrics = self.metrics.clone();
        let readiness = self.readiness.clone();
        self.operator = Some(tokio::spawn(async move {
            let never = futures::FutureExt::shared(Box::pin(std::future::pending::<()>()));
            controllers::run(client, config, metrics, readiness, never)
                .await
                .expect("operator runs");
        }));
    }

    /// Stops the operator at once, wherever it is, as a crash or `kill -9` would.
    pub fn kill_operator(&mut self) {
        if let Some(task) = self.operator.take() {
            task.abort();
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Server-side applies an object of kind K, adding the test's label (and namespace).
    pub async fn apply<K>(&self, mut object: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.try_apply::<K>(&mut object)
            .await
            .unwrap_or_else(|e| panic!("apply {object}: {e}"))
    }

    pub async fn try_apply<K>(&self, object: &mut serde_json::Value) -> Result<K, kube::Error>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        try_apply::<K>(&self.client, &self.namespace, object).await
    }

    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: BTreeMap<String, String> = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"cyclr.com/test": self.namespace, "cyclr.com/credentials": "true"}},
            "stringData": data,
        });
        self.api::<Secret>()
            .patch(name, &PatchParams::apply("cyclr-tests").force(), &Patch::Apply(&secret))
            .await
            .expect("apply Secret");
    }

    /// A Cyclr account (named `elsewhere`) held by CyclrAccount `holder` in a new namespace,
    /// which this test's objects do not live in: (the account id, that namespace).
    pub async fn held_elsewhere(&self) -> (String, String) {
        let id = cyclr_client(&self.sim)
            .create_account(&cyclr::types::AccountFields {
                name: Some("elsewhere".into()),
                ..Default::default()
            })
            .await
            .expect("create the account in Cyclr");
        let namespace = TestEnv::get().await.new_namespace("team-a").await;
        Api::<CyclrAccount>::namespaced(self.client.clone(), &namespace)
            .patch(
                "holder",
                &PatchParams::apply("cyclr-tests"),
                &Patch::Apply(json!({
                    "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
                    "metadata": {"name": "holder", "annotations": {resources::annotations::ACCOUNT_ID: id}},
                    "spec": {"partnerRef": {"name": "nobody"}},
                })),
            )
            .await
            .expect("apply the holder");
        (id, namespace)
    }

    pub async fn account(&self, name: &str) -> CyclrAccount {
        self.api::<CyclrAccount>().get(name).await.expect("get CyclrAccount")
    }

    pub async fn install(&self, name: &str) -> CyclrConnectorInstall {
        self.api::<CyclrConnectorInstall>()
            .get(name)
            .await
            .expect("get CyclrConnectorInstall")
    }

    pub async fn partner(&self) -> CyclrPartner {
        Api::<CyclrPartner>::all(self.client.clone())
            .get(&self.partner)
            .await
            .expect("get CyclrPartner")
    }

    /// Waits until `check` returns Some, polling the API; panics with `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the object's condition `type_` has `status` (and `reason`, if given).
    pub async fn wait_condition<K>(&self, name: &str, type_: &str, status: &str, reason: Option<&str>) -> K
    where
        K: HasConditions
            + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let what = format!("{} {name} {type_}={status} {reason:?}", K::kind(&()));
        self.wait_for(&what, Duration::from_secs(60), || async {
            let object = self.api::<K>().get_opt(name).await.ok().flatten()?;
            let c = resources::condition(object.conditions(), type_)?;
            (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(object)
        })
        .await
    }

    /// Sets the partner's `resyncInterval` and `usageInterval` (e.g. `10s`, `1h`).
    pub async fn set_intervals(&self, resync: &str, usage: &str) {
        Api::<CyclrPartner>::all(self.client.clone())
            .patch(
                &self.partner,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"resyncInterval": resync, "usageInterval": usage}})),
            )
            .await
            .expect("patch the partner");
    }

    /// Waits until the partner's status shows its current generation (a spec change applied).
    pub async fn wait_partner_applied(&self) {
        self.wait_for("the partner's spec applied", Duration::from_secs(30), || async {
            let partner = self.partner().await;
            (partner.status?.observed_generation == partner.metadata.generation).then_some(())
        })
        .await;
    }

    pub async fn wait_partner_ready(&self, status: &str) -> CyclrPartner {
        self.wait_for(
            &format!("CyclrPartner Ready={status}"),
            Duration::from_secs(60),
            || async {
                let partner = Api::<CyclrPartner>::all(self.client.clone())
                    .get(&self.partner)
                    .await
                    .ok()?;
                let conditions = partner
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                (resources::condition(&conditions, resources::READY)?.status == status).then_some(partner)
            },
        )
        .await
    }

    /// Events about the object `name` with this reason.
    pub async fn events(&self, name: &str, reason: &str) -> Vec<Event> {
        self.api::<Event>()
            .list(&Default::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Waits until an Event with this reason exists for the object `name`.
    pub async fn wait_event(&self, name: &str, reason: &str) -> Event {
        self.wait_for(
            &format!("a {reason} Event for {name}"),
            Duration::from_secs(30),
            || async { self.events(name, reason).await.into_iter().next() },
        )
        .await
    }

    /// Waits until the account's status no longer carries the pending-create marker.
    pub async fn wait_no_pending_create(&self, name: &str) {
        self.wait_for(
            &format!("{name} without status.pendingCreate"),
            Duration::from_secs(30),
            || async {
                let account = self.account(name).await;
                account
                    .status
                    .is_some_and(|s| s.pending_create.is_none() && s.account_id.is_some())
                    .then_some(())
            },
        )
        .await
    }

    /// Requests the simulator received for one endpoint.
    pub fn cyclr_requests(&self, endpoint: &str) -> u64 {
        self.sim.stats().requests_to(endpoint)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_operator();
    }
}

/// The message of the object's Ready condition.
pub fn ready_message<K: HasConditions>(object: &K) -> String {
    resources::condition(object.conditions(), resources::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Kinds whose status carries kstatus conditions.
pub trait HasConditions {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition];
}

impl HasConditions for CyclrAccount {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl HasConditions for CyclrConnectorInstall {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl HasConditions for CyclrPartner {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// Server-side applies an object of kind K in `namespace` (ignored for CyclrPartner), with
/// the test label `cyclr.com/test=<namespace>`, so each test's operator sees only its own.
pub async fn try_apply<K>(client: &Client, namespace: &str, object: &mut serde_json::Value) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    object["apiVersion"] = json!(K::api_version(&()));
    object["kind"] = json!(K::kind(&()));
    object["metadata"]["labels"]["cyclr.com/test"] = json!(namespace);
    let name = object["metadata"]["name"].as_str().expect("a name").to_string();
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = if object_is_namespaced::<K>() {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let applied = api
        .patch(
            &name,
            &PatchParams::apply("cyclr-tests").force(),
            &Patch::Apply(&*object),
        )
        .await?;
    Ok(serde_json::from_value(serde_json::to_value(applied).expect("serialise")).expect("the applied object parses"))
}

fn object_is_namespaced<K: kube::Resource<DynamicType = ()>>() -> bool {
    K::kind(&()) != "CyclrPartner"
}

/// Applies the operator's CRDs once per test process and waits until they are established.
pub async fn install_crds(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in resources::all_crds() {
            let name = crd.metadata.name.clone().unwrap();
            api.patch(&name, &PatchParams::apply("cyclr-tests").force(), &Patch::Apply(&crd))
                .await
                .expect("apply CRD");
        }
        controllers::wait_for_crds(client.clone())
            .await
            .expect("CRDs established");
    })
    .await;
}

/// A client of the test's simulator, to act in Cyclr as someone outside the operator would;
/// not held to a partner's budget (1000 requests/s), so it seeds thousands of accounts quickly.
pub fn cyclr_client(sim: &SimHandle) -> cyclr::CyclrClient {
    let mut config = cyclr::ClientConfig::new(sim.base_url(), CLIENT_ID, secrecy::SecretString::from(CLIENT_SECRET));
    config.requests_per_second = 1000;
    config.burst = 1000;
    cyclr::CyclrClient::new(config).expect("client")
}

/// `count` v1.0 accounts made in Cyclr without the operator (no resource holds them): ids
/// `{prefix}-{n:05}`, names `{prefix} {n:05}`, 32 creates at a time.
pub async fn seed_v1_accounts(sim: &SimHandle, prefix: &str, count: usize) {
    use futures::StreamExt as _;
    let cyclr = cyclr_client(sim);
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |n| {
            let cyclr = &cyclr;
            async move {
                cyclr
                    .create_account_v1(&cyclr::types::AccountFieldsV1 {
                        id: Some(format!("{prefix}-{n:05}")),
                        name: Some(format!("{prefix} {n:05}")),
                        ..Default::default()
                    })
                    .await
                    .expect("seed an account");
            }
        })
        .await;
}
