//! The operator as a cluster-wide deployment runs it (no namespace, no label selector): its
//! one watch of CyclrAccounts also keeps the claim index and wakes the installs, with no
//! second watch of the kind. Its own test process, so its own control plane: a cluster-wide
//! operator would otherwise reconcile the other tests' objects.

mod support;

use cyclr_operator::controllers::OperatorConfig;
use cyclr_operator::resources::{CyclrAccount, CyclrAccountSpec, CyclrConnectorInstall, READY, STALLED};
use serde_json::json;
use support::{Harness, ready_message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_watch_serves_claims_and_installs() {
    let mut h = Harness::start("cluster-wide", "10s").await;
    h.kill_operator();
    h.start_operator_with(OperatorConfig::new(h.namespace.clone()));

    // An install applied before its account waits, and is woken when the account is Ready.
    h.put_secret("slack-key", &[("apiKey", "cluster-wide-key-value")]).await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0",
        "auth": {"apiKeySecretRef": {"name": "slack-key"}}}}))
        .await;
    h.wait_condition::<CyclrConnectorInstall>("slack", READY, "False", Some("AccountNotReady"))
        .await;
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    h.wait_condition::<CyclrConnectorInstall>("slack", READY, "True", Some("Installed"))
        .await;

    // A Cyclr account held by a resource in another namespace cannot be taken.
    let (other, team_a) = h.held_elsewhere().await;
    let mut spec: CyclrAccountSpec = serde_json::from_value(json!({"partnerRef": {"name": h.partner}})).unwrap();
    spec.account_id = Some(other.clone());
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "taker"}, "spec": spec}))
        .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("taker", STALLED, "True", Some("AccountClaimed"))
        .await;
    assert!(
        ready_message(&stalled).contains(&format!("{team_a}/holder")),
        "{}",
        ready_message(&stalled)
    );
}
