//! Issue [M] row 8, the relist: under many Ready accounts, kube-apiserver is stopped, etcd's
//! revision moved on and its history compacted past everything the operator has seen, and
//! kube-apiserver started again. The operator's watches cannot resume (`410 Gone`) and list
//! everything again; after that relist it writes nothing: no Cyclr write, no Kubernetes write
//! (counted by the new kube-apiserver's own `apiserver_request_total`, which starts at zero, so
//! every write after the restart is in it). The other half of row 8, a CRD deleted for a while,
//! is `tests/crd_outage.rs`.
//!
//! Sizing: 500 accounts, not the 2,000. Cyclr is not what holds the rollout back (the
//! partner's budget is 1,000 calls/s); kube-apiserver on two shared cores is, at about three
//! writes per account plus the test's own applies. The whole 2,000 passed here (0 writes
//! after the relist) but took 258 s (152 s to apply them, all Ready after 188 s, load
//! average 17); 500 keeps the test near two minutes on such a machine. What is checked does
//! not change with the number: the relist is one list per watch, and any write it caused
//! would be counted. `ACCOUNTS` scales it.
//! Alone in its binary: it restarts the control plane's kube-apiserver.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cyclr_operator::resources::{self, CyclrAccount, CyclrPartner, READY, condition};
use cyclr_testenv::TestEnv;
use driver::readiness::NeededCrd;
use etcd::Etcd;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{Harness, HasConditions};

const ACCOUNTS: usize = 500;

/// Requests kube-apiserver has served since it started, by verb, for the operator's kinds
/// and Events (the only resources it writes), from its own `/metrics`.
async fn requests_by_verb(client: &Client) -> BTreeMap<String, u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let metrics = client.request_text(request).await.expect("kube-apiserver /metrics");
    let mut verbs = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&line[start..start + line[start..].find('"')?])
        };
        let ours = matches!(
            label("resource"),
            Some("cyclraccounts" | "cyclrpartners" | "cyclrconnectorinstalls" | "events")
        );
        let (Some(verb), Some(count)) = (label("verb"), line.rsplit(' ').next()) else {
            continue;
        };
        if ours {
            *verbs.entry(verb.to_owned()).or_default() += count.parse::<f64>().unwrap_or(0.0) as u64;
        }
    }
    verbs
}

/// The writes among [`requests_by_verb`]: everything but reads.
fn writes(verbs: &BTreeMap<String, u64>) -> u64 {
    verbs
        .iter()
        .filter(|(verb, _)| !matches!(verb.as_str(), "GET" | "LIST" | "WATCH" | "WATCHLIST"))
        .map(|(_, n)| n)
        .sum()
}

/// Each account's resourceVersion and whether it is Ready.
async fn accounts(h: &Harness) -> BTreeMap<String, (String, bool)> {
    let list = h.api::<CyclrAccount>().list(&Default::default()).await.expect("list");
    list.items
        .into_iter()
        .map(|a| {
            let ready = condition(a.conditions(), READY).is_some_and(|c| c.status == "True");
            let name = a.metadata.name.clone().unwrap_or_default();
            (name, (a.metadata.resource_version.clone().unwrap_or_default(), ready))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_compaction_and_an_api_server_restart_writes_nothing() {
    let env = TestEnv::get().await;
    let etcd = Etcd::new(env.etcd_url().expect("our own etcd"));
    let mut h = Harness::without_operator("compaction", "10m").await;
    // Cyclr lets the operator go fast, so Kubernetes is what holds it back.
    let rate = json!({"spec": {"rateLimit": {"requestsPerSecond": 1000, "burst": 1000}}});
    kube::Api::<CyclrPartner>::all(h.client.clone())
        .patch(&h.partner, &PatchParams::default(), &Patch::Merge(&rate))
        .await
        .expect("raise the partner's rate limit");
    h.start_operator();
    tokio::spawn(h.readiness.clone().check_crds(
        h.client.clone(),
        resources::all_crds().iter().filter_map(NeededCrd::stored_in).collect(),
    ));
    h.wait_partner_ready("True").await;

    let started = Instant::now();
    futures::stream::iter(0..ACCOUNTS)
        .map(|i| {
            let h = &h;
            async move {
                let mut account =
                    json!({"metadata": {"name": format!("acct-{i:04}")}, "spec": {"partnerRef": {"name": h.partner}}});
                h.try_apply::<CyclrAccount>(&mut account).await.map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .expect("apply the accounts");
    let applied = started.elapsed();
    h.wait_for("every account Ready", Duration::from_secs(240), || async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let accounts = accounts(&h).await;
        (accounts.values().filter(|(_, ready)| *ready).count() == ACCOUNTS).then_some(())
    })
    .await;
    let ready = started.elapsed();
    // Quiet: the partner's recheck after the creates, the last usage reads.
    let before = h
        .wait_for("no account changing for 5 s", Duration::from_secs(60), || async {
            let before = accounts(&h).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            (accounts(&h).await == before).then_some(before)
        })
        .await;
    let partner_version = h.partner().await.metadata.resource_version;
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items.len();
    let cyclr = h.sim.stats();

    // The fault: kube-apiserver down; meanwhile etcd moves on and is compacted past
    // everything the operator saw; kube-apiserver up again.
    tokio::task::block_in_place(|| env.stop_apiserver()).expect("stop kube-apiserver");
    let revision = etcd.put("/cyclr-tests/compaction", "moves the revision on").await;
    etcd.compact(revision).await;
    env.start_apiserver().await.expect("start kube-apiserver");
    let restarted = Instant::now();

    // The operator lists again (the new kube-apiserver counts from zero), and its watches are
    // synced; then it has a while to do whatever a relist makes it do.
    h.wait_for("the operator's relist", Duration::from_secs(120), || async {
        let verbs = requests_by_verb(&h.client).await;
        (verbs.get("LIST").copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    h.wait_for("ready", Duration::from_secs(120), || async { h.readiness.check().ok() })
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    let verbs = requests_by_verb(&h.client).await;
    let after = accounts(&h).await;
    let changed: Vec<_> = after.iter().filter(|(name, v)| before.get(*name) != Some(v)).collect();
    let now = h.sim.stats();
    eprintln!(
        "{ACCOUNTS} accounts: applied in {applied:?}, all Ready after {ready:?}; after the restart \
         ({:?} ago): kube-apiserver requests {verbs:?}; Cyclr requests {} → {}",
        restarted.elapsed(),
        cyclr.total_requests(),
        now.total_requests()
    );
    assert_eq!(now.writes, cyclr.writes, "no Cyclr write after the relist");
    assert_eq!(writes(&verbs), 0, "no Kubernetes write after the relist: {verbs:?}");
    assert!(changed.is_empty(), "accounts written after the relist: {changed:?}");
    assert_eq!(h.partner().await.metadata.resource_version, partner_version);
    assert_eq!(
        h.api::<Event>().list(&Default::default()).await.unwrap().items.len(),
        events,
        "no Event"
    );
}
