//! `PEER=1`: the same job done the way a platform team would do it with Crossplane's
//! provider-http (built into `bin/` by `hack/testbin.sh provider-http`): one namespaced
//! `Request` (`http.m.crossplane.io/v1alpha2`) per account, CREATE = Create Account, OBSERVE =
//! a GET of the created account by the id Create Account answered, the bearer token injected
//! from a Secret. provider-http runs out of cluster as a child process with its defaults, on the
//! same control plane, against a fresh simulator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::{self, CLIENT_ID, CLIENT_SECRET, ReadyWatch};
use crate::operator::{self, ProcUsage, Process};

/// provider-http's Request controller, as its metrics name it.
const CONTROLLER: &str = "managed/request.http.m.crossplane.io";
/// Where provider-http serves its metrics: controller-runtime's default, which it has no flag
/// to change.
const METRICS_URL: &str = "http://127.0.0.1:8080/metrics";
/// The Secret holding the Cyclr bearer token, and its key.
const TOKEN_SECRET: &str = "cyclr-token";
const TOKEN_KEY: &str = "token";
const PROVIDER_CONFIG: &str = "cyclr";

/// What one provider-http run measured.
pub struct PeerRun {
    /// The provider's defaults, as its `--help` prints them.
    pub defaults: Vec<String>,
    /// How many Requests were Ready and Synced at the end (all, unless it timed out).
    pub ready: usize,
    /// Whether the rollout ran into the time limit.
    pub timed_out: bool,
    /// From the first create sent to the last Request Ready and Synced (or to the time limit).
    pub all_ready: Duration,
    /// Each Ready Request's time from its create to Ready and Synced, sorted.
    pub each: Vec<Duration>,
    /// Cyclr requests during the rollout by endpoint, and responses by status.
    pub calls: BTreeMap<String, u64>,
    pub responses: BTreeMap<u16, u64>,
    /// The Request controller's reconciles during the rollout, by result.
    pub reconciles: BTreeMap<String, u64>,
    /// Accounts in the simulator, and how many more than one per name.
    pub accounts: usize,
    pub duplicates: usize,
    /// Cyclr calls and reconciles in the idle window after the rollout.
    pub idle: Duration,
    pub idle_calls: BTreeMap<String, u64>,
    pub idle_reconciles: u64,
    pub usage: ProcUsage,
}

/// The settings of a run.
pub struct PeerArgs<'a> {
    pub binary: &'a Path,
    pub n: usize,
    pub create_concurrency: usize,
    pub timeout: Duration,
    pub idle: Duration,
    pub log: PathBuf,
}

fn request_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("http.m.crossplane.io", "v1alpha2", "Request"))
}

/// Ready=True and Synced=True: what a platform team waits for on a Crossplane managed resource
/// (`kubectl wait --for=condition=Ready`, and Synced says the last reconcile succeeded).
fn ready_and_synced(object: &DynamicObject) -> bool {
    cluster::has_condition(object, "Ready") && cluster::has_condition(object, "Synced")
}

/// The provider's defaults for the flags that bound its throughput, from its `--help`.
pub async fn defaults(binary: &Path) -> anyhow::Result<Vec<String>> {
    let output = tokio::process::Command::new(binary)
        .arg("--help")
        .output()
        .await
        .with_context(|| format!("running {} --help", binary.display()))?;
    // kingpin prints the help on stderr.
    let help = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    let flags: Vec<String> = help
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["--poll=", "--max-reconcile-rate=", "--sync=", "--timeout="]
                .iter()
                .any(|f| l.contains(f))
        })
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    anyhow::ensure!(!flags.is_empty(), "no defaults in {} --help:\n{help}", binary.display());
    Ok(flags)
}

/// Runs provider-http with `sim` as Cyclr in `namespace` (its CRDs installed) and measures
/// it: the rollout of `args.n` Requests, then an idle window.
pub async fn run(
    client: &Client,
    kubeconfig: &Path,
    namespace: &str,
    sim: &cyclr_sim::SimHandle,
    args: PeerArgs<'_>,
) -> anyhow::Result<PeerRun> {
    let defaults = defaults(args.binary).await?;
    let api_url = sim.base_url();
    let token = token(&api_url).await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": TOKEN_SECRET},
        "stringData": {TOKEN_KEY: token},
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the token Secret")?;
    let config: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "http.m.crossplane.io/v1alpha2",
        "kind": "ProviderConfig",
        "metadata": {"name": PROVIDER_CONFIG, "namespace": namespace},
        // The token goes in each Request's headers, by secret injection.
        "spec": {"credentials": {"source": "None"}},
    }))?;
    let configs = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "http.m.crossplane.io",
        "v1alpha2",
        "ProviderConfig",
    ));
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &configs)
        .create(&PostParams::default(), &config)
        .await
        .context("creating the ProviderConfig")?;
    sim.reset_stats();

    let http = reqwest::Client::new();
    anyhow::ensure!(
        http.get(METRICS_URL).send().await.is_err(),
        "something already listens on {METRICS_URL}, where provider-http serves its metrics (it has no flag to move them)"
    );
    let mut command = tokio::process::Command::new(args.binary);
    command.env("KUBECONFIG", kubeconfig);
    let mut provider = Process::spawn("provider-http", command, &args.log)?;
    // Its controllers start once its CRD gate has seen their CRDs; creates sent before then
    // would count the provider's start-up against it.
    cluster::wait_for(
        "provider-http's Request controller",
        Duration::from_secs(60),
        || async {
            let workers = scrape(&http, "controller_runtime_max_concurrent_reconciles")
                .await
                .ok()?;
            workers.keys().any(|k| k.contains(CONTROLLER)).then_some(())
        },
    )
    .await
    .with_context(|| format!("provider-http log: {}", args.log.display()))?;

    let requests = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &request_resource());
    let (watch, watch_task) = ReadyWatch::start_with(requests.clone(), ready_and_synced).await?;
    let reconciles_before = reconciles(&http).await?;
    let started = Instant::now();
    let sent = cluster::create_objects(&requests, args.n, args.create_concurrency, None, |name| {
        request(namespace, name, &api_url)
    })
    .await?;
    let deadline = started + args.timeout;
    while watch.count() < args.n && Instant::now() < deadline {
        provider.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_at = watch.snapshot();
    let timed_out = ready_at.len() < args.n;
    let stats = sim.stats();
    let reconciles_after = reconciles(&http).await?;
    let (each, all_ready) = if timed_out {
        let mut each: Vec<Duration> = ready_at
            .iter()
            .filter_map(|(name, at)| Some(at.saturating_duration_since(*sent.get(name)?)))
            .collect();
        each.sort();
        (each, args.timeout)
    } else {
        let readiness = cluster::readiness_times(&sent, &ready_at)?;
        (readiness.each, readiness.all_ready)
    };
    watch_task.abort();

    // Steady state: what the provider does once everything is Ready (its per-object polls).
    sim.reset_stats();
    let idle_before = reconciles(&http).await?;
    tokio::time::sleep(args.idle).await;
    provider.check_running()?;
    let idle_calls = sim.stats().requests;
    let idle_reconciles = total(&reconciles(&http).await?) - total(&idle_before);

    let usage = provider.usage()?;
    provider.stop().await?;
    let accounts = sim.accounts();
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for account in &accounts {
        *by_name.entry(account.name.as_str()).or_default() += 1;
    }
    Ok(PeerRun {
        defaults,
        ready: ready_at.len(),
        timed_out,
        all_ready,
        each,
        calls: stats.requests,
        responses: stats.responses,
        reconciles: reconciles_after
            .iter()
            .map(|(k, v)| (k.clone(), v - reconciles_before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect(),
        accounts: accounts.len(),
        duplicates: by_name.values().map(|c| c - 1).sum(),
        idle: args.idle,
        idle_calls,
        idle_reconciles,
        usage,
    })
}

/// One Request as its documentation shows them: the account's fields as the payload, CREATE
/// posting them to Create Account, OBSERVE getting the account by the id in the last response
/// (`/v1.0/accounts/{id}`: one account per call, 404 once it is gone, where the partner API's
/// only read is the list of all accounts). No UPDATE or REMOVE mapping: the operator's run
/// neither updates nor deletes either.
fn request(namespace: &str, name: &str, api_url: &str) -> serde_json::Value {
    let headers = json!({
        "Content-Type": ["application/json"],
        "Authorization": [format!("Bearer {{{{ {TOKEN_SECRET}:{namespace}:{TOKEN_KEY} }}}}")],
    });
    json!({
        "apiVersion": "http.m.crossplane.io/v1alpha2",
        "kind": "Request",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "providerConfigRef": {"name": PROVIDER_CONFIG, "kind": "ProviderConfig"},
            "forProvider": {
                "headers": headers,
                "payload": {
                    "baseUrl": api_url,
                    "body": json!({"Name": name, "Description": "cyclr-bench"}).to_string(),
                },
                "mappings": [
                    {
                        "action": "CREATE",
                        "method": "POST",
                        "url": r#"(.payload.baseUrl + "/api/partner/createaccount")"#,
                        "body": "{Name: .payload.body.Name, Description: .payload.body.Description}",
                    },
                    {
                        "action": "OBSERVE",
                        "method": "GET",
                        "url": r#"(.payload.baseUrl + "/v1.0/accounts/" + (.response.body.Id|tostring))"#,
                    },
                ],
            },
        },
    })
}

/// A Cyclr token from the simulator's token endpoint (its lifetime, 14 days, outlasts the run).
async fn token(api_url: &str) -> anyhow::Result<String> {
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("{api_url}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .context("getting a token from the simulator")?
        .json()
        .await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the token response")
}

async fn scrape(http: &reqwest::Client, metric: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = http
        .get(METRICS_URL)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("scraping {METRICS_URL}"))?
        .text()
        .await?;
    Ok(operator::parse_counter(&text, metric))
}

/// The Request controller's reconciles so far, by result (`success`, `requeue`,
/// `requeue_after`, `error`).
async fn reconciles(http: &reqwest::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let all = scrape(http, "controller_runtime_reconcile_total").await?;
    Ok(all
        .into_iter()
        .filter(|(labels, _)| labels.contains(&format!("controller=\"{CONTROLLER}\"")))
        .map(|(labels, v)| {
            let result = labels
                .split(',')
                .find_map(|l| l.strip_prefix("result=\""))
                .map_or(labels.clone(), |r| r.trim_end_matches('"').to_string());
            (result, v)
        })
        .collect())
}

fn total(map: &BTreeMap<String, u64>) -> u64 {
    map.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_injects_the_token_and_maps_create_and_observe() {
        let request = request("ns", "acct-00001", "http://127.0.0.1:1");
        let for_provider = &request["spec"]["forProvider"];
        // provider-http's secret injection syntax: {{ name:namespace:key }}.
        assert_eq!(
            for_provider["headers"]["Authorization"][0],
            "Bearer {{ cyclr-token:ns:token }}"
        );
        let body: serde_json::Value = serde_json::from_str(for_provider["payload"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["Name"], "acct-00001");
        let actions: Vec<&str> = for_provider["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["CREATE", "OBSERVE"]);
        serde_json::from_value::<DynamicObject>(request).unwrap();
    }
}
