//! Issue [I]: the engine's promises tried as a new user would, on a real kube-apiserver with
//! the Cyclr simulator: metrics that tell the truth about deletions and failures, a lost
//! create found by what it sent although the spec changed since, and a create that outlived
//! its resource reported where a person will find it.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, READY};
use cyclr_sim::Faults;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use support::Harness;

const CREATE: &str = "POST /api/partner/createaccount";
const UPDATE: &str = "PUT /api/partner/accounts/{id}";

/// The value of the series whose line starts with `series` (name and labels), 0 if absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const READY_ACCOUNTS: &str = r#"cyclr_operator_resources{kind="CyclrAccount",condition="Ready",status="True"}"#;

/// Row 1: a deleted Ready account stops being counted, and its per-uid entry goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_no_longer_counted() {
    let h = Harness::start("engine-count", "10s").await;
    for name in ["acme", "globex"] {
        h.apply::<CyclrAccount>(json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}}))
            .await;
        h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
    }
    assert_eq!(value(&h.metrics.encode(), READY_ACCOUNTS), 2.0);
    h.api::<CyclrAccount>()
        .delete("acme", &DeleteParams::default())
        .await
        .expect("delete");
    h.wait_for("one Ready account counted", Duration::from_secs(30), || async {
        (value(&h.metrics.encode(), READY_ACCOUNTS) == 1.0).then_some(())
    })
    .await;
}

/// Row 2: Cyclr answering 503 to every create counts failures, by category, not successes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reconciles_are_counted_as_failures_with_their_category() {
    let h = Harness::start("engine-fail", "10s").await;
    h.wait_partner_ready("True").await;
    h.sim.set_faults(Faults {
        outage: Duration::from_secs(600),
        outage_endpoints: vec![CREATE.into()],
        ..Default::default()
    });
    let successes = r#"cyclr_operator_reconciles_total{kind="CyclrAccount",result="success"}"#;
    let before = value(&h.metrics.encode(), successes);
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    h.wait_for("two failed reconciles", Duration::from_secs(30), || async {
        let text = h.metrics.encode();
        let failed = value(
            &text,
            r#"cyclr_operator_reconcile_failures_total{kind="CyclrAccount",category="cyclr_transient"}"#,
        );
        let errors = value(
            &text,
            r#"cyclr_operator_reconciles_total{kind="CyclrAccount",result="error"}"#,
        );
        (failed >= 2.0 && errors >= 2.0).then_some(())
    })
    .await;
    assert_eq!(h.sim.accounts().len(), 0);
    assert_eq!(
        value(&h.metrics.encode(), successes),
        before,
        "a reconcile whose create failed is no success"
    );
}

/// Row 3: the create committed, its response was lost (the operator died waiting for it), and
/// the name was fixed meanwhile: the account is found by the name the create sent, adopted,
/// and renamed with one Update. Never a second account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_is_found_by_what_it_sent_after_the_spec_changed() {
    let mut h = Harness::start("engine-sent", "10s").await;
    h.sim.set_faults(Faults {
        write_response_delay: Duration::from_secs(5),
        ..Default::default()
    });
    let partner = h.partner.clone();
    let manifest =
        |name: &str| json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": partner}, "name": name}});
    h.apply::<CyclrAccount>(manifest("Acme Typo")).await;
    h.wait_for("the account in Cyclr", Duration::from_secs(30), || async {
        (!h.sim.accounts().is_empty()).then_some(())
    })
    .await;
    h.kill_operator();
    let pending = h.account("acme").await.status.and_then(|s| s.pending_create);
    assert_eq!(
        pending.and_then(|p| p.sent).as_deref(),
        Some("Acme Typo"),
        "the marker says what the create sent"
    );
    h.sim.set_faults(Faults::default());
    h.apply::<CyclrAccount>(manifest("Acme")).await;
    h.start_operator();
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let accounts = h.sim.accounts();
    assert_eq!(accounts.len(), 1, "exactly one account: {accounts:?}");
    assert_eq!(accounts[0].name, "Acme", "the edit applied");
    assert_eq!(
        ready.status.and_then(|s| s.account_id).as_deref(),
        Some(accounts[0].id.as_str())
    );
    assert_eq!(h.cyclr_requests(CREATE), 1, "never created again");
    assert_eq!(h.cyclr_requests(UPDATE), 1, "one Update for the new name");
    h.wait_event("acme", "Adopted").await;
}

/// Row 5: the resource is deleted while its create is in flight: the new id is reported on
/// the partner (a Warning Event naming the resource and the id), and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_outlived_its_resource_is_reported_on_the_partner() {
    let h = Harness::start("engine-orphan", "10s").await;
    h.wait_partner_ready("True").await;
    h.sim.set_faults(Faults {
        write_response_delay: Duration::from_secs(3),
        ..Default::default()
    });
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    h.wait_for("the account in Cyclr", Duration::from_secs(30), || async {
        (!h.sim.accounts().is_empty()).then_some(())
    })
    .await;
    h.api::<CyclrAccount>()
        .delete("acme", &DeleteParams::default())
        .await
        .expect("delete");
    let id = h.sim.accounts()[0].id.clone();
    // Events about a cluster-scoped object are kept in `default`.
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let event = h
        .wait_for("an Orphaned Event on the partner", Duration::from_secs(30), || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Orphaned")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(h.partner.as_str())
                })
        })
        .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains(&id) && note.contains(&format!("{}/acme", h.namespace)),
        "names the resource and the id: {note}"
    );
    assert_eq!(
        value(
            &h.metrics.encode(),
            r#"cyclr_operator_orphaned_total{kind="CyclrAccount"}"#
        ),
        1.0
    );
}
