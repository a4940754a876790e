//! The Kubernetes side of a scenario: the CRDs, a namespace's partner objects, accounts
//! created concurrently, and a watch that notes when each account first reports Ready.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::oneshot;

/// The label every object of a scenario carries (value: the namespace), and the operator's
/// `--label-selector`, so scenarios never see each other's objects.
pub const LABEL: &str = "cyclr.com/bench";
/// The partner credentials the simulators accept.
pub const CLIENT_ID: &str = "bench-client";
pub const CLIENT_SECRET: &str = "bench-secret";
const FIELD_MANAGER: &str = "cyclr-bench";
/// The partner's `rateLimit.burst` in every scenario (the CRD's default).
pub const PARTNER_BURST: u32 = 20;

/// The Cyclr API a scenario's partner uses (its `spec.cyclrAPI`); `DIALECTS=Partner,V1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "verbatim")]
pub enum Dialect {
    /// The Partner API, the CRD's default: a pending marker before each create.
    Partner,
    /// Cyclr's v1.0 API: ids the operator chooses, `deletionPolicy: Delete`, paged lists.
    V1,
}

/// `DIALECTS`, the knob `make bench` and `make chaos` share.
#[derive(clap::Args, Debug, Clone)]
pub struct DialectsArg {
    /// The partners' Cyclr APIs (`spec.cyclrAPI`), comma-separated: the bench runs at every
    /// limit on each, chaos runs every scenario on each.
    #[arg(
        long,
        env = "DIALECTS",
        value_delimiter = ',',
        default_value = "Partner,V1",
        ignore_case = true
    )]
    pub dialects: Vec<Dialect>,
}

impl Dialect {
    /// The value of `spec.cyclrAPI`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Partner => "Partner",
            Dialect::V1 => "V1",
        }
    }

    /// The partner's List Accounts, as the simulator's statistics name it: each resync
    /// starts with one.
    pub fn list_accounts(self) -> &'static str {
        match self {
            Dialect::Partner => "GET /api/partner/accounts",
            Dialect::V1 => "GET /v1.0/accounts",
        }
    }
}

/// Get Account Usage as the simulator's statistics name it (both dialects read usage there).
pub const ACCOUNT_USAGE: &str = "GET /api/partner/accounts/{id}/billing";

/// `cyclr.com/v1alpha1` CyclrAccount, for dynamic objects (the bench does not link the operator).
pub fn account_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cyclr.com", "v1alpha1", "CyclrAccount"))
}

/// `cyclr.com/v1alpha1` CyclrConnectorInstall, for dynamic objects.
pub fn install_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cyclr.com", "v1alpha1", "CyclrConnectorInstall"))
}

/// The CyclrConnectorInstalls of `namespace`.
pub fn installs(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &install_resource())
}

/// `cyclr.com/v1alpha1` CyclrCycle, for dynamic objects.
pub fn cycle_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cyclr.com", "v1alpha1", "CyclrCycle"))
}

/// The CyclrCycles of `namespace`.
pub fn cycles(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &cycle_resource())
}

fn partner_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cyclr.com", "v1alpha1", "CyclrPartner"))
}

/// The CyclrAccounts of `namespace`.
pub fn accounts(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &account_resource())
}

fn partners(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &partner_resource())
}

/// Applies the CRDs the operator binary prints (`cyclr-operator crd`), so the bench installs
/// exactly what it measures, and waits until they are Established.
pub async fn install_crds(client: &Client, operator: &Path) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(operator)
        .arg("crd")
        .output()
        .await
        .with_context(|| format!("running {} crd", operator.display()))?;
    if !output.status.success() {
        bail!(
            "{} crd failed: {}",
            operator.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    apply_crds(client, &output.stdout).await
}

/// Applies the CRDs of a YAML stream (server-side) and waits until they are Established.
pub async fn apply_crds(client: &Client, yaml: &[u8]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for document in serde_yaml::Deserializer::from_slice(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document).context("parsing CRDs")?;
        // Files may start with `---`, which leaves empty documents between them.
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_value(value).context("parsing a CRD")?;
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    wait_for("the CRDs to be Established", Duration::from_secs(60), || async {
        for name in &names {
            let crd = api.get(name).await.ok()?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if !established {
                return None;
            }
        }
        Some(())
    })
    .await
}

/// The partner of a scenario: its credentials Secret (in `namespace`) and a CyclrPartner named
/// after the namespace, on `dialect`, at `requests_per_second` (burst [`PARTNER_BURST`], the
/// default).
pub async fn create_partner(
    client: &Client,
    namespace: &str,
    api_url: &str,
    dialect: Dialect,
    requests_per_second: u32,
    resync: &str,
) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "partner-credentials",
            "labels": {LABEL: namespace, "cyclr.com/credentials": "true"},
        },
        "stringData": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the partner credentials Secret")?;
    let partner: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cyclr.com/v1alpha1",
        "kind": "CyclrPartner",
        "metadata": {"name": namespace, "labels": {LABEL: namespace}},
        "spec": {
            "apiURL": api_url,
            "cyclrAPI": dialect.name(),
            "credentialsSecretRef": {"name": "partner-credentials"},
            "rateLimit": {"requestsPerSecond": requests_per_second, "burst": PARTNER_BURST},
            "resyncInterval": resync,
            // Usage polls would fall into the resync window; the first read still happens.
            "usageInterval": "1h",
        },
    }))?;
    partners(client)
        .create(&PostParams::default(), &partner)
        .await
        .context("creating the CyclrPartner")?;
    Ok(())
}

/// Waits until the CyclrPartner reports Ready=True.
pub async fn wait_partner_ready(client: &Client, name: &str) -> anyhow::Result<()> {
    let api = partners(client);
    wait_for("the CyclrPartner to be Ready", Duration::from_secs(60), || async {
        is_ready(&api.get(name).await.ok()?).then_some(())
    })
    .await
}

/// Deletes a run's CyclrCycles and CyclrAccounts in `namespace` and its CyclrPartner (named
/// after the namespace, if any), and waits until the accounts are gone: the next run's
/// operator serves the whole cluster and must find nothing of this one. (No finalizers: the
/// operator's deletion policy is Orphan.)
pub async fn delete_run(client: &Client, namespace: &str) -> anyhow::Result<()> {
    cycles(client, namespace)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .with_context(|| format!("deleting the CyclrCycles in {namespace}"))?;
    let api = accounts(client, namespace);
    // With tens of thousands of accounts one delete-collection can outlast the connection;
    // each try deletes what it reached, so a few tries finish the job.
    let mut tries = 0;
    while let Err(error) = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
    {
        tries += 1;
        if tries == 5 {
            return Err(error).with_context(|| format!("deleting the CyclrAccounts in {namespace}, 5 tries"));
        }
    }
    match partners(client).delete(namespace, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(e).with_context(|| format!("deleting the CyclrPartner {namespace}")),
    }
    // The API server deletes a few hundred a second here.
    let left = api.list_metadata(&ListParams::default().limit(1)).await?;
    let count = left.metadata.remaining_item_count.unwrap_or(0).max(0) as u64 + left.items.len() as u64;
    wait_for(
        "the run's CyclrAccounts to be deleted",
        Duration::from_secs(600 + count / 50),
        || async {
            let left = api.list_metadata(&ListParams::default().limit(1)).await.ok()?;
            left.items.is_empty().then_some(())
        },
    )
    .await
}

/// Whether the object's `status.conditions` holds Ready=True.
pub fn is_ready(object: &DynamicObject) -> bool {
    has_condition(object, "Ready")
}

/// Whether the object's `status.conditions` holds a condition `type_` with status True.
pub fn has_condition(object: &DynamicObject, type_: &str) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

/// Polls `check` every 200 ms until it returns Some; an error naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `n` CyclrAccounts `acct-00000`… with `concurrency` creates in flight, and returns
/// when each create was sent. Each created name is also sent to `created`, if given.
pub async fn create_accounts(
    client: &Client,
    namespace: &str,
    n: usize,
    concurrency: usize,
    created: Option<mpsc::UnboundedSender<String>>,
    shards: usize,
) -> anyhow::Result<HashMap<String, Instant>> {
    let api = accounts(client, namespace);
    create_named(&api, 0..n, concurrency, created, |&i| {
        let name = account_name(i);
        // Round robin over the shards, when the operator runs as several (`SHARDS`).
        let shard = format!("s{}", i % shards.max(1));
        let body = json!({
            "apiVersion": "cyclr.com/v1alpha1",
            "kind": "CyclrAccount",
            "metadata": {"name": name, "labels": {LABEL: namespace, crate::operator::SHARD_LABEL: shard}},
            "spec": {"partnerRef": {"name": namespace}, "description": "cyclr-bench"},
        });
        (name, body)
    })
    .await
}

/// The name of the `i`th account of a run, the same in every run.
pub fn account_name(i: usize) -> String {
    format!("acct-{i:05}")
}

/// The name of cycle `j` of account `i`; also its Cyclr cycle's name.
pub fn cycle_name(i: usize, j: usize) -> String {
    format!("cyc-{i:05}-{j}")
}

/// The id of template `j` of [`seed_templates`].
pub fn template_id(j: usize) -> String {
    format!("bench-template-{j}")
}

/// Adds `count` templates to the simulator, ids from [`template_id`]: no connectors and no
/// variables, so nothing stands between an install and its activation but the operator.
pub fn seed_templates(sim: &cyclr_sim::SimHandle, count: usize) {
    for j in 0..count {
        sim.add_template(cyclr_sim::TemplateSeed {
            id: Some(template_id(j)),
            name: format!("Bench template {j}"),
            description: None,
            connectors: Vec::new(),
            variables: Vec::new(),
            prerequisites: Vec::new(),
        });
    }
}

/// A CyclrCycle `name` of account `account` installing template `j` ([`template_id`]),
/// `state: Active`, every 15 minutes, labelled for `namespace`'s run.
pub fn cycle_object(namespace: &str, name: &str, account: &str, j: usize) -> serde_json::Value {
    json!({
        "apiVersion": "cyclr.com/v1alpha1",
        "kind": "CyclrCycle",
        "metadata": {"name": name, "labels": {LABEL: namespace}},
        "spec": {
            "accountRef": {"name": account},
            "templateRef": {"id": template_id(j)},
            "state": "Active",
            "schedule": {"interval": 15},
        },
    })
}

/// Creates `per_account` CyclrCycles ([`cycle_object`]) in each of the `accounts` accounts,
/// `concurrency` creates in flight, and returns when each create was sent.
pub async fn create_cycles(
    client: &Client,
    namespace: &str,
    accounts: usize,
    per_account: usize,
    concurrency: usize,
) -> anyhow::Result<HashMap<String, Instant>> {
    let names = (0..accounts).flat_map(|i| (0..per_account).map(move |j| (i, j)));
    let api = cycles(client, namespace);
    create_named(&api, names, concurrency, None, |&(i, j)| {
        (
            cycle_name(i, j),
            cycle_object(namespace, &cycle_name(i, j), &account_name(i), j),
        )
    })
    .await
}

/// Creates `n` objects, each `object(name)` for the names [`account_name`] gives, with
/// `concurrency` creates in flight, and returns when each create was sent. Each created name
/// is also sent to `created`, if given.
pub async fn create_objects(
    api: &Api<DynamicObject>,
    n: usize,
    concurrency: usize,
    created: Option<mpsc::UnboundedSender<String>>,
    object: impl Fn(&str) -> serde_json::Value,
) -> anyhow::Result<HashMap<String, Instant>> {
    create_named(api, 0..n, concurrency, created, |&i| {
        let name = account_name(i);
        let body = object(&name);
        (name, body)
    })
    .await
}

/// Creates one object per key, `object(key)` giving its name and body, with `concurrency`
/// creates in flight, and returns when each create was sent, by name.
async fn create_named<T>(
    api: &Api<DynamicObject>,
    keys: impl Iterator<Item = T>,
    concurrency: usize,
    created: Option<mpsc::UnboundedSender<String>>,
    object: impl Fn(&T) -> (String, serde_json::Value),
) -> anyhow::Result<HashMap<String, Instant>> {
    futures::stream::iter(keys)
        .map(|key| {
            let (name, body) = object(&key);
            let body = serde_json::from_value::<DynamicObject>(body);
            let created = created.clone();
            async move {
                let body = body.with_context(|| format!("building {name}"))?;
                let sent = Instant::now();
                api.create(&PostParams::default(), &body)
                    .await
                    .with_context(|| format!("creating {name}"))?;
                if let Some(created) = created {
                    let _ = created.unbounded_send(name.clone());
                }
                Ok::<_, anyhow::Error>((name, sent))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// Creates `count` unlabelled Secrets and as many ConfigMaps (1 KiB of data each) in
/// `namespace`, `concurrency` at a time: the rest of a real cluster, which the operator must
/// neither cache nor pay for.
pub async fn create_unrelated(
    client: &Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let value = "x".repeat(1024);
    futures::stream::iter(0..count)
        .map(|i| {
            let (secrets, config_maps, value) = (secrets.clone(), config_maps.clone(), value.clone());
            async move {
                let name = format!("unrelated-{i:05}");
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": name}, "stringData": {"value": value}}))?;
                secrets.create(&PostParams::default(), &secret).await?;
                let config_map: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": name}, "data": {"value": value}}))?;
                config_maps.create(&PostParams::default(), &config_map).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
        .context("creating unrelated Secrets and ConfigMaps")
}

/// When each object of a kind in a namespace (by default: each account) was first seen
/// Ready, and how many times each was written, from a watch started before any of them
/// exists.
#[derive(Clone, Default)]
pub struct ReadyWatch {
    ready: Arc<Mutex<HashMap<String, Instant>>>,
    versions: Arc<Mutex<Versions>>,
}

/// The versions a watch delivered, by object name.
#[derive(Default)]
struct Versions {
    /// Each object's last resourceVersion and how many distinct ones were seen.
    by_name: HashMap<String, (String, u32)>,
    /// Lists after the first: versions written while the watch was down were not seen.
    relists: u32,
}

/// The most writes any one object took, from its watch events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MostWrites {
    /// Writes after the create (versions seen less one).
    pub writes: u32,
    /// How many objects took that many.
    pub objects: usize,
    /// Whether the watch had to list again, so versions may have been missed (a lower bound).
    pub lower_bound: bool,
}

impl ReadyWatch {
    /// Starts the watch of the namespace's accounts and returns once its initial list is done.
    pub async fn start(client: &Client, namespace: &str) -> anyhow::Result<(ReadyWatch, tokio::task::JoinHandle<()>)> {
        Self::start_with(accounts(client, namespace), is_ready).await
    }

    /// Starts a watch of `api`'s objects, where `is_ready` says which are Ready, and returns
    /// once its initial list is done.
    pub async fn start_with(
        api: Api<DynamicObject>,
        is_ready: fn(&DynamicObject) -> bool,
    ) -> anyhow::Result<(ReadyWatch, tokio::task::JoinHandle<()>)> {
        let watch = ReadyWatch::default();
        let (listed, mut on_listed) = oneshot::channel();
        let ready = watch.ready.clone();
        let versions = watch.versions.clone();
        let stream = watcher(api, watcher::Config::default());
        let task = tokio::spawn(async move {
            let mut listed = Some(listed);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(listed) = listed.take() {
                            let _ = listed.send(());
                        }
                    }
                    Ok(watcher::Event::Init) if listed.is_none() => {
                        versions.lock().expect("versions").relists += 1;
                    }
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                        let name = obj.metadata.name.clone().unwrap_or_default();
                        versions
                            .lock()
                            .expect("versions")
                            .saw(&name, &obj.metadata.resource_version);
                        if is_ready(&obj) {
                            ready
                                .lock()
                                .expect("ready map")
                                .entry(name)
                                .or_insert_with(Instant::now);
                        }
                    }
                    // The watcher re-lists by itself after an error.
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), &mut on_listed)
            .await
            .context("the watch did not list within 30 s")??;
        Ok((watch, task))
    }

    /// Accounts seen Ready so far.
    pub fn count(&self) -> usize {
        self.ready.lock().expect("ready map").len()
    }

    /// When each account was first seen Ready, by name.
    pub fn snapshot(&self) -> HashMap<String, Instant> {
        self.ready.lock().expect("ready map").clone()
    }

    /// The most writes one object took since it was created, and how many objects took that
    /// many (`None` before any object was seen).
    pub fn most_writes(&self) -> Option<MostWrites> {
        self.versions.lock().expect("versions").most_writes()
    }

    /// Every version the watch delivered so far, of every object (a write shows as one more),
    /// and whether it had to list again (then versions may have been missed).
    pub fn versions_seen(&self) -> (u64, bool) {
        let versions = self.versions.lock().expect("versions");
        let seen = versions.by_name.values().map(|(_, count)| u64::from(*count)).sum();
        (seen, versions.relists > 0)
    }

    /// Waits until `n` accounts are Ready, or fails after `timeout` saying how many were.
    pub async fn wait_all(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                bail!("only {} of {n} accounts Ready after {timeout:?}", self.count());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Versions {
    fn saw(&mut self, name: &str, version: &Option<String>) {
        let version = version.as_deref().unwrap_or_default();
        match self.by_name.get_mut(name) {
            Some((last, _)) if last == version => {}
            Some((last, seen)) => {
                *last = version.to_owned();
                *seen += 1;
            }
            None => {
                self.by_name.insert(name.to_owned(), (version.to_owned(), 1));
            }
        }
    }

    fn most_writes(&self) -> Option<MostWrites> {
        let most = self.by_name.values().map(|(_, seen)| *seen).max()?;
        Some(MostWrites {
            writes: most - 1,
            objects: self.by_name.values().filter(|(_, seen)| *seen == most).count(),
            lower_bound: self.relists > 0,
        })
    }
}

/// When a rollout's accounts became Ready, measured from the bench's creates.
#[derive(Debug, PartialEq)]
pub struct Readiness {
    /// Each account's time from its create to its first Ready, sorted.
    pub each: Vec<Duration>,
    /// From the first create sent to the last account Ready.
    pub all_ready: Duration,
    /// From the last create sent to the last account Ready: the tail the creates do not
    /// explain (how long the last accounts waited once nothing new arrived).
    pub after_last_create: Duration,
}

/// The readiness of every account in `sent` (name → when its create was sent) from `ready`
/// (name → when its first Ready was seen). Errors if none was sent or one never became Ready.
pub fn readiness_times(sent: &HashMap<String, Instant>, ready: &HashMap<String, Instant>) -> anyhow::Result<Readiness> {
    let first = sent.values().min().context("no account was created")?;
    let last_sent = sent.values().max().context("no account was created")?;
    let last = ready.values().max().context("no account was Ready")?;
    let mut each: Vec<Duration> = sent
        .iter()
        .map(|(name, at)| {
            let ready = ready.get(name).with_context(|| format!("{name} never Ready"))?;
            Ok(ready.saturating_duration_since(*at))
        })
        .collect::<anyhow::Result<_>>()?;
    each.sort();
    Ok(Readiness {
        each,
        all_ready: last.saturating_duration_since(*first),
        after_last_create: last.saturating_duration_since(*last_sent),
    })
}

/// The `q` quantile (0.0–1.0) of sorted durations, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_measured_from_the_first_and_the_last_create() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let sent = HashMap::from([("a".to_owned(), at(0)), ("b".to_owned(), at(100))]);
        let ready = HashMap::from([("a".to_owned(), at(700)), ("b".to_owned(), at(400))]);
        let readiness = readiness_times(&sent, &ready).unwrap();
        assert_eq!(
            readiness,
            Readiness {
                each: vec![Duration::from_millis(300), Duration::from_millis(700)],
                all_ready: Duration::from_millis(700),
                after_last_create: Duration::from_millis(600),
            }
        );
        let never = HashMap::from([("a".to_owned(), at(700))]);
        assert!(
            readiness_times(&sent, &never)
                .unwrap_err()
                .to_string()
                .contains("b never Ready")
        );
    }

    #[test]
    fn writes_are_the_versions_seen_after_the_create() {
        let mut versions = Versions::default();
        assert_eq!(versions.most_writes(), None);
        for (name, version) in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "3"), ("a", "4"), ("b", "5")] {
            versions.saw(name, &Some(version.to_owned()));
        }
        let most = MostWrites {
            writes: 2,
            objects: 1,
            lower_bound: false,
        };
        assert_eq!(
            versions.most_writes(),
            Some(most),
            "a's create, then 3 and 4 (3 delivered twice)"
        );
        versions.saw("b", &Some("6".to_owned()));
        assert_eq!(versions.most_writes().map(|m| m.objects), Some(2));
        versions.relists += 1;
        assert!(versions.most_writes().is_some_and(|m| m.lower_bound));
    }
}
