//! Issue #19 ([J]), on a CyclrPartner with `spec.cyclrAPI: V1`: accounts deleted with their
//! resource (row 1), a delete that cannot happen never hangs (row 3), the same manifest
//! applied again finds the same account (row 4), a create whose status write was lost is
//! found by its id, in at most two Kubernetes writes per new account (row 5), and paged lists
//! (row 6). The pacing of those lists and restarts are in `drift.rs`.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{ACCOUNT_FINALIZER, CyclrAccount, CyclrPartner, READY};
use cyclr_sim::Faults;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Harness, ready_message};

/// The CyclrAccount writes the operator made so far (status, annotations, finalizers).
fn account_writes(h: &Harness) -> f64 {
    h.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("cyclr_operator_kubernetes_writes_total{kind=\"CyclrAccount\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn account(h: &Harness, name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["partnerRef"] = json!({"name": h.partner});
    json!({"metadata": {"name": name}, "spec": spec})
}

async fn ready_id(h: &Harness, name: &str) -> String {
    let ready = h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
    ready.status.and_then(|s| s.account_id).expect("an id when Ready")
}

async fn wait_gone(h: &Harness, name: &str) {
    h.wait_for(
        &format!("CyclrAccount {name} gone"),
        Duration::from_secs(60),
        || async {
            h.api::<CyclrAccount>()
                .get_opt(name)
                .await
                .ok()
                .and_then(|found| found.is_none().then_some(()))
        },
    )
    .await;
}

async fn delete(h: &Harness, name: &str) {
    h.api::<CyclrAccount>()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete the CyclrAccount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row1_a_delete_account_is_deleted_in_cyclr_with_its_resource() {
    let h = Harness::start_v1("v1-delete", "10m").await;
    h.wait_partner_ready("True").await;
    h.apply::<CyclrAccount>(account(&h, "gone", json!({"deletionPolicy": "Delete"})))
        .await;
    h.apply::<CyclrAccount>(account(&h, "kept", json!({}))).await;
    let gone = ready_id(&h, "gone").await;
    let kept = ready_id(&h, "kept").await;
    assert!(h.sim.account_v1(&gone).is_some(), "created through v1.0 with its id");
    assert!(
        h.account("gone")
            .await
            .finalizers()
            .contains(&ACCOUNT_FINALIZER.to_string())
    );
    assert!(
        h.account("kept").await.finalizers().is_empty(),
        "Orphan needs no finalizer"
    );

    delete(&h, "gone").await;
    delete(&h, "kept").await;
    wait_gone(&h, "gone").await;
    wait_gone(&h, "kept").await;
    assert!(h.sim.account_v1(&gone).is_none(), "deleted in Cyclr");
    assert!(h.sim.account_v1(&kept).is_some(), "Orphan: left as it is");
    assert_eq!(h.cyclr_requests("DELETE /v1.0/accounts/{id}"), 1);
    let event = h.wait_event("gone", "Deleted").await;
    assert!(event.note.unwrap_or_default().contains(&gone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row1_delete_on_a_partner_api_partner_is_refused_before_any_cyclr_call() {
    let h = Harness::start("v1-refused", "10m").await;
    h.wait_partner_ready("True").await;
    let creates = h.cyclr_requests("POST /api/partner/createaccount");
    h.apply::<CyclrAccount>(account(&h, "acme", json!({"deletionPolicy": "Delete"})))
        .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", "Stalled", "True", Some("InvalidSpec"))
        .await;
    assert!(
        ready_message(&stalled).contains("spec.deletionPolicy"),
        "{}",
        ready_message(&stalled)
    );
    assert!(stalled.finalizers().is_empty());
    assert_eq!(h.cyclr_requests("POST /api/partner/createaccount"), creates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row3_a_delete_whose_partner_is_gone_stalls_and_lets_go_with_orphan() {
    let h = Harness::start_v1("v1-blocked", "10m").await;
    h.wait_partner_ready("True").await;
    h.apply::<CyclrAccount>(account(&h, "acme", json!({"deletionPolicy": "Delete"})))
        .await;
    let id = ready_id(&h, "acme").await;
    Api::<CyclrPartner>::all(h.client.clone())
        .delete(&h.partner, &DeleteParams::default())
        .await
        .expect("delete the partner");
    h.wait_for("the partner gone", Duration::from_secs(30), || async {
        Api::<CyclrPartner>::all(h.client.clone())
            .get_opt(&h.partner)
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    delete(&h, "acme").await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", "Stalled", "True", Some("DeletionBlocked"))
        .await;
    let message = ready_message(&stalled);
    assert!(
        message.contains("could not be deleted") && message.contains("deletionPolicy") && message.contains("Orphan"),
        "{message}"
    );
    assert!(
        stalled.metadata.deletion_timestamp.is_some(),
        "held, not hanging silently"
    );
    h.api::<CyclrAccount>()
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .expect("let it go");
    wait_gone(&h, "acme").await;
    assert!(h.sim.account_v1(&id).is_some(), "Orphan: the account stays in Cyclr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row4_the_same_manifest_applied_again_adopts_the_same_account() {
    let h = Harness::start_v1("v1-again", "10m").await;
    h.wait_partner_ready("True").await;
    let manifest = account(&h, "acme", json!({"description": "tenant"}));
    h.apply::<CyclrAccount>(manifest.clone()).await;
    let first = ready_id(&h, "acme").await;
    assert!(first.starts_with("k8s-"), "an id the operator chose: {first}");
    delete(&h, "acme").await;
    wait_gone(&h, "acme").await;

    h.apply::<CyclrAccount>(manifest).await;
    let again = ready_id(&h, "acme").await;
    assert_eq!(again, first, "the same account");
    assert_eq!(h.sim.accounts().len(), 1, "no second account");
    let adopted = h.wait_event("acme", "Adopted").await;
    assert!(adopted.note.unwrap_or_default().contains(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row5_a_new_account_takes_at_most_two_kubernetes_writes_with_its_first_resync() {
    let h = Harness::start_v1("v1-writes", "10s").await;
    // Lists every 10 s; usage, which the simulator grows every second, once an hour: the
    // first resync has nothing new of its own to write.
    Api::<CyclrPartner>::all(h.client.clone())
        .patch(
            &h.partner,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"usageInterval": "1h"}})),
        )
        .await
        .expect("patch the partner");
    h.wait_partner_ready("True").await;
    let before = account_writes(&h);
    h.apply::<CyclrAccount>(account(&h, "acme", json!({"pricePlan": {"name": "Starter"}})))
        .await;
    let id = ready_id(&h, "acme").await;
    let ready = h.account("acme").await.status.expect("status");
    assert!(ready.usage.is_some() && ready.next_bill_date.is_some(), "{ready:?}");
    assert!(ready.pending_create.is_none());
    // The first resync (every 10 s) reads the list and usage again: nothing new to write.
    let lists = h.cyclr_requests("GET /v1.0/accounts");
    h.wait_for("a resync's list", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/accounts") > lists).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(h.account("acme").await.status.and_then(|s| s.account_id), Some(id));
    let writes = account_writes(&h) - before;
    assert!(writes <= 2.0, "{writes} Kubernetes writes for one new account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row5_a_create_whose_answer_died_with_the_operator_is_found_by_its_id() {
    let mut h = Harness::start_v1("v1-kill", "10m").await;
    h.wait_partner_ready("True").await;
    // The create is applied, then its answer held: the operator is killed in that window.
    h.sim.set_faults(Faults {
        write_response_delay: Duration::from_secs(30),
        ..Faults::default()
    });
    h.apply::<CyclrAccount>(account(&h, "acme", json!({}))).await;
    let made = h
        .wait_for("the create applied in Cyclr", Duration::from_secs(30), || async {
            h.sim.accounts().first().map(|a| a.id.clone())
        })
        .await;
    h.kill_operator();
    let status = h.account("acme").await.status.unwrap_or_default();
    assert_eq!(status.account_id, None, "killed before the status write");
    assert_eq!(
        status.pending_create, None,
        "no marker is written before a create with a chosen id"
    );

    h.sim.set_faults(Faults::default());
    h.start_operator();
    assert_eq!(ready_id(&h, "acme").await, made, "found by its id");
    assert_eq!(h.sim.accounts().len(), 1, "no second account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row6_every_page_is_read_for_the_name_check_and_the_count() {
    let h = Harness::start_v1("v1-pages", "10s").await;
    h.wait_partner_ready("True").await;
    h.sim.set_faults(Faults {
        max_page_size: Some(100),
        ..Faults::default()
    });
    support::seed_v1_accounts(&h.sim, "tenant", 250).await;
    // The name check reads the partner's last list (a drift check, not a list of its own):
    // one that shows the seeded accounts, counted on every page.
    h.wait_for("the partner counting 250 accounts", Duration::from_secs(60), || async {
        (h.partner().await.status.and_then(|s| s.account_count) == Some(250)).then_some(())
    })
    .await;
    // On the third page: a create would make a second "tenant 00249".
    h.apply::<CyclrAccount>(account(&h, "twin", json!({"name": "tenant 00249"})))
        .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("twin", "Stalled", "True", Some("AccountNameInUse"))
        .await;
    assert!(
        ready_message(&stalled).contains("tenant-00249"),
        "{}",
        ready_message(&stalled)
    );
    assert!(
        h.cyclr_requests("GET /v1.0/accounts") >= 3,
        "a list of 250 accounts at most 100 a page is three pages"
    );
    // Named by spec.accountID, on the third page: adopted, not created.
    h.apply::<CyclrAccount>(account(
        &h,
        "named",
        json!({"accountID": "tenant-00240", "name": "tenant 00240"}),
    ))
    .await;
    assert_eq!(ready_id(&h, "named").await, "tenant-00240");
    h.wait_event("named", "Adopted").await;
    assert_eq!(h.sim.accounts().len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row3_a_delete_whose_credentials_secret_is_gone_stalls_and_lets_go_with_orphan() {
    let h = Harness::start_v1("v1-nosecret", "10m").await;
    h.wait_partner_ready("True").await;
    h.apply::<CyclrAccount>(account(&h, "acme", json!({"deletionPolicy": "Delete"})))
        .await;
    let id = ready_id(&h, "acme").await;
    h.api::<k8s_openapi::api::core::v1::Secret>()
        .delete("partner-credentials", &DeleteParams::default())
        .await
        .expect("delete the credentials Secret");
    h.wait_partner_ready("False").await;
    delete(&h, "acme").await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", "Stalled", "True", Some("DeletionBlocked"))
        .await;
    let message = ready_message(&stalled);
    assert!(message.contains("not ready") && message.contains("Orphan"), "{message}");
    h.api::<CyclrAccount>()
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .expect("let it go");
    wait_gone(&h, "acme").await;
    assert!(h.sim.account_v1(&id).is_some(), "Orphan: the account stays in Cyclr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_delete_until_it_is_lifted() {
    let h = Harness::start_v1("v1-pause", "10m").await;
    h.wait_partner_ready("True").await;
    h.apply::<CyclrAccount>(account(&h, "acme", json!({"deletionPolicy": "Delete"})))
        .await;
    let id = ready_id(&h, "acme").await;
    let pause = |paused: bool| {
        let value = if paused { json!("true") } else { json!(null) };
        json!({"metadata": {"annotations": {"cyclr.com/paused": value}}})
    };
    h.api::<CyclrAccount>()
        .patch("acme", &PatchParams::default(), &Patch::Merge(pause(true)))
        .await
        .expect("pause");
    h.wait_condition::<CyclrAccount>("acme", READY, "True", Some("Paused"))
        .await;
    delete(&h, "acme").await;
    h.wait_for("the deleting resource held", Duration::from_secs(30), || async {
        let held = h.account("acme").await;
        held.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.sim.account_v1(&id).is_some(), "paused: not deleted");
    assert_eq!(h.cyclr_requests("DELETE /v1.0/accounts/{id}"), 0);
    h.api::<CyclrAccount>()
        .patch("acme", &PatchParams::default(), &Patch::Merge(pause(false)))
        .await
        .expect("unpause");
    wait_gone(&h, "acme").await;
    assert!(h.sim.account_v1(&id).is_none(), "deleted once unpaused");
}
