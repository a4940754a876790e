//! The inputs of issue [H] that need the whole operator: status that tells the truth and an
//! operator that stays calm when Cyclr pushes back. (Admission is `tests/admission.rs`, the
//! kstatus table `tests/kstatus.rs`, the client's hold and adaptive rate `cyclr-sim/tests`.)

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, READY, STALLED, condition};
use cyclr_sim::Faults;
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use support::Harness;
use support::kstatus::kstatus;

const UPDATE: &str = "PUT /api/partner/accounts/{id}";
const INSTALL: &str = "POST /api/partner/installconnector";

fn account(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn warnings(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| format!("{:?}: {:?}", e.reason, e.note))
        .collect()
}

/// Row 3 (and 10): a date with a fraction of a second is applied once, never "corrected"
/// again; Row 5: twenty accounts applied at once meet no error on the normal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_rollout_is_quiet_and_dates_compare_at_the_apis_precision() {
    let h = Harness::start("quiet", "10s").await;
    h.wait_partner_ready("True").await;
    for i in 0..20 {
        h.apply::<CyclrAccount>(account(
            &format!("tenant-{i}"),
            // Usage off: the simulator's task counts grow every second, and each new value is
            // (rightly) written; this test counts the writes the operator adds by itself.
            json!({"partnerRef": {"name": h.partner}, "nextBillDate": "2030-03-09T16:23:08.5Z",
                   "usage": {"enabled": false}}),
        ))
        .await;
    }
    for i in 0..20 {
        h.wait_condition::<CyclrAccount>(&format!("tenant-{i}"), READY, "True", None)
            .await;
    }
    let writes_when_ready = h.metrics.encode();
    // Two resyncs with nothing to change.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(
        h.cyclr_requests(UPDATE),
        0,
        "no Update Account once Cyclr holds the date"
    );
    let events = h.api::<Event>().list(&Default::default()).await.unwrap().items;
    assert_eq!(warnings(&events), Vec::<String>::new(), "no error on the normal path");
    assert!(
        events.iter().all(|e| e.reason.as_deref() != Some("DriftCorrected")),
        "nothing corrected"
    );
    let writes = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("cyclr_operator_kubernetes_writes_total{kind=\"CyclrAccount\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Per new account: the pending marker, the created status, the id annotation, and the
    // bill dates Cyclr chose, which only the next list shows (Create Account returns the id).
    let after = writes(&h.metrics.encode());
    assert!(writes(&writes_when_ready) <= 4.0 * 20.0, "{writes_when_ready}");
    assert!(after <= 4.0 * 20.0, "{after} writes for 20 new accounts");
    // And once settled, a resync with nothing to change writes nothing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(writes(&h.metrics.encode()), after, "no idle writes");
}

/// Row 6: Cyclr answering 429 with `Retry-After: 60` to everything: one new account waits
/// out the hold, says `RateLimited`, and neither Cyclr nor the API server see a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_holds_the_partner_quietly() {
    let h = Harness::start("hold", "10m").await;
    h.wait_partner_ready("True").await;
    h.sim.set_faults(Faults {
        rate_limit_rps: Some(0),
        retry_after_secs: 60,
        ..Default::default()
    });
    let before = h.sim.stats().total_requests();
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    let limited = h
        .wait_condition::<CyclrAccount>("acme", READY, "False", Some("RateLimited"))
        .await;
    let version = limited.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = h.sim.stats().total_requests() - before;
    assert!(calls <= 3, "{calls} Cyclr calls during the hold");
    let now = h.account("acme").await;
    assert_eq!(
        now.metadata.resource_version, version,
        "no API-server write during the hold"
    );
    let c = condition(&now.status.unwrap().conditions, READY).unwrap().clone();
    assert_eq!(c.reason, "RateLimited");
}

/// A restart (a new leader, a rolling update) re-checks every partner before its accounts can
/// be judged: until then their status stays as it is, with no flip to "partner missing" and
/// no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rewrites_no_status() {
    let mut h = Harness::start("restart", "10s").await;
    h.wait_partner_ready("True").await;
    for name in ["a1", "a2", "a3"] {
        h.apply::<CyclrAccount>(account(
            name,
            json!({"partnerRef": {"name": h.partner}, "usage": {"enabled": false}}),
        ))
        .await;
    }
    // Settled: the bill dates Cyclr chose arrive with the first resync after the create.
    for name in ["a1", "a2", "a3"] {
        h.wait_for("the bill dates in status", Duration::from_secs(30), || async {
            h.account(name).await.status?.last_bill_date.map(|_| ())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = h.metrics.clone();
    let account_writes = move || {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("cyclr_operator_kubernetes_writes_total{kind=\"CyclrAccount\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = account_writes();
    // A slow partner check (3 s per Cyclr call, four calls): the accounts look at the
    // configured but unchecked partner meanwhile, and must wait for the check, not report it.
    h.sim.set_faults(Faults {
        latency: Duration::from_secs(3),
        ..Faults::default()
    });
    let lists = h.cyclr_requests("GET /api/partner/accounts");
    h.kill_operator();
    h.start_operator();
    h.wait_for("the partner checked again", Duration::from_secs(60), || async {
        (h.cyclr_requests("GET /api/partner/accounts") > lists).then_some(())
    })
    .await;
    // The list answers 3 s later; its accounts are woken by the check and looked at with
    // nothing to change.
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.sim.set_faults(Faults::default());
    assert_eq!(account_writes(), before, "no status written by the restart");
    for name in ["a1", "a2", "a3"] {
        let a = h.account(name).await;
        let ready = condition(&a.status.unwrap().conditions, READY).unwrap().clone();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Synced"));
    }
}

/// Row 2: an installed connector's API-key Secret rotated. The Partner API cannot change an
/// install's credentials, so the resource says so (Stalled, not Ready) without revealing a
/// value and without a second install; restoring the value makes it Ready again. (Renaming
/// `installedName` is refused at admission: `tests/admission.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_credentials_of_an_install_are_reported_not_hidden() {
    let h = Harness::start("rotate", "10s").await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    h.put_secret("slack-key", &[("apiKey", "first-api-key-value")]).await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0",
        "auth": {"apiKeySecretRef": {"name": "slack-key"}}}}))
        .await;
    let installed = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "True", Some("Installed"))
        .await;
    let digest = installed
        .status
        .unwrap()
        .credentials_digest
        .expect("the applied credentials' digest");
    assert!(!digest.contains("first-api-key-value"), "{digest}");

    h.put_secret("slack-key", &[("apiKey", "second-api-key-value")]).await;
    let stalled = h
        .wait_condition::<CyclrConnectorInstall>("slack", STALLED, "True", Some("CredentialsNotApplied"))
        .await;
    let status = stalled.status.clone().unwrap();
    let ready = condition(&status.conditions, READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("cannot change"), "{}", ready.message);
    assert!(!ready.message.contains("api-key-value"), "{}", ready.message);
    assert_eq!(
        status.credentials_digest.as_deref(),
        Some(digest.as_str()),
        "the applied digest is kept"
    );
    let (verdict, _) = kstatus(&serde_json::to_value(&stalled).unwrap());
    assert_eq!(
        verdict, "Failed",
        "kstatus: a human must re-install or restore the Secret"
    );
    let warning = h.wait_event("slack", "CredentialsNotApplied").await;
    assert!(!format!("{warning:?}").contains("api-key-value"));

    h.put_secret("slack-key", &[("apiKey", "first-api-key-value")]).await;
    h.wait_condition::<CyclrConnectorInstall>("slack", READY, "True", Some("Installed"))
        .await;
    assert_eq!(h.cyclr_requests(INSTALL), 1, "never installed twice");
}
