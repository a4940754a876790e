//! What Flux's kstatus library computes for each state the operator can put a resource in,
//! driven for real (control plane, simulator, operator): `Current` only when the spec is
//! applied, `Failed` only when a human is needed, `InProgress` otherwise. The table in
//! docs/operator.md ("kstatus") lists the same states.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, READY, RECONCILING, STALLED};
use cyclr_sim::Faults;
use serde_json::json;
use support::Harness;
use support::kstatus::kstatus;

fn account(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

/// kstatus's verdict on the object as the API server holds it now.
fn status_of<K: serde::Serialize>(object: &K) -> String {
    let value = serde_json::to_value(object).expect("serialise");
    let (status, message) = kstatus(&value);
    eprintln!("kstatus: {status} ({message}) for {}", value["status"]);
    status
}

async fn current_account(h: &Harness, name: &str) -> String {
    status_of(&h.account(name).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_resources_of_every_kind_are_current() {
    let h = Harness::start("ks-ready", "10s").await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {"accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1"}}))
        .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(status_of(&ready), "Current");
    let installed = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "True", None)
        .await;
    assert_eq!(status_of(&installed), "Current");
    let partner = h.wait_partner_ready("True").await;
    assert_eq!(status_of(&partner), "Current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reconcile_is_in_progress() {
    let h = Harness::start("ks-first", "10s").await;
    h.wait_partner_ready("True").await;
    // Cyclr holds the create's response, so the account stays in its first reconcile.
    h.sim.set_faults(Faults {
        write_response_delay: Duration::from_secs(5),
        ..Faults::default()
    });
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    let first = h
        .wait_condition::<CyclrAccount>("acme", RECONCILING, "True", None)
        .await;
    assert_eq!(status_of(&first), "InProgress");
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(current_account(&h, "acme").await, "Current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_on_an_unknown_price_plan_is_failed() {
    let h = Harness::start("ks-stalled", "10s").await;
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "pricePlan": {"name": "Platinum"}}),
    ))
    .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("PricePlanNotFound"))
        .await;
    assert_eq!(status_of(&stalled), "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_whose_partner_is_not_ready_is_in_progress() {
    let h = Harness::start("ks-partner", "10s").await;
    h.put_secret(
        "partner-credentials",
        &[("client_id", support::CLIENT_ID), ("client_secret", "wrong")],
    )
    .await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    let waiting = h
        .wait_condition::<CyclrAccount>("acme", READY, "False", Some("PartnerNotReady"))
        .await;
    assert_eq!(status_of(&waiting), "InProgress", "the account waits on its partner");
}

/// Credentials Cyclr refuses do not fix themselves: a human must correct the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_whose_credentials_cyclr_refuses_is_failed() {
    let h = Harness::start("ks-creds", "10s").await;
    h.put_secret(
        "partner-credentials",
        &[("client_id", support::CLIENT_ID), ("client_secret", "wrong")],
    )
    .await;
    let refused = h.wait_partner_ready("False").await;
    assert_eq!(status_of(&refused), "Failed", "a human must fix the credentials Secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_waiting_for_its_account_is_in_progress() {
    let h = Harness::start("ks-install", "10s").await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {"accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1"}}))
        .await;
    let waiting = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "False", Some("AccountNotReady"))
        .await;
    assert_eq!(status_of(&waiting), "InProgress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_is_current_only_while_the_spec_it_holds_was_applied() {
    let h = Harness::start("ks-paused", "10s").await;
    let paused = json!({"cyclr.com/paused": "true"});
    // Paused from the start: nothing was ever applied.
    h.apply::<CyclrAccount>(
        json!({"metadata": {"name": "fresh", "annotations": paused}, "spec": {"partnerRef": {"name": h.partner}}}),
    )
    .await;
    let fresh = h
        .wait_condition::<CyclrAccount>("fresh", RECONCILING, "False", Some("Paused"))
        .await;
    assert_eq!(status_of(&fresh), "InProgress", "paused before anything was applied");
    // Paused once Ready: the spec in force was applied.
    let spec = json!({"partnerRef": {"name": h.partner}, "description": "one"});
    h.apply::<CyclrAccount>(account("acme", spec.clone())).await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", Some("Synced"))
        .await;
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme", "annotations": paused}, "spec": spec}))
        .await;
    let held = h
        .wait_condition::<CyclrAccount>("acme", READY, "True", Some("Paused"))
        .await;
    assert_eq!(status_of(&held), "Current", "paused with the applied spec");
    // Paused, then the spec changes: the new spec is not applied, so it must not read Current.
    let changed = json!({"partnerRef": {"name": h.partner}, "description": "two"});
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme", "annotations": paused}, "spec": changed}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the operator has seen the change by now
    assert_eq!(
        current_account(&h, "acme").await,
        "InProgress",
        "paused after a spec change: nothing was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_only_is_current_once_observed() {
    let h = Harness::start("ks-observe", "10s").await;
    let id = support::cyclr_client(&h.sim)
        .create_account(&cyclr::types::AccountFields {
            name: Some("watched".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    h.apply::<CyclrAccount>(account(
        "watched",
        json!({"partnerRef": {"name": h.partner}, "accountID": id, "managementPolicy": "ObserveOnly", "description": "differs"}),
    ))
    .await;
    let observed = h
        .wait_condition::<CyclrAccount>("watched", READY, "True", Some("Observed"))
        .await;
    assert_eq!(status_of(&observed), "Current");
}
