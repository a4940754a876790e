//! The operator against a real kube-apiserver and the Cyclr simulator: each test checks the
//! Cyclr side through the Cyclr API (or the simulator's request counts) and the Kubernetes
//! side through status, conditions and Events.

mod support;

use std::time::Duration;

use cyclr::types::{AccountFields, PricePlanId};
use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, READY, RECONCILING, STALLED, condition};
use cyclr_sim::Faults;
use kube::api::DeleteParams;
use serde_json::json;
use support::{Harness, cyclr_client, ready_message};

const CREATE: &str = "POST /api/partner/createaccount";
const UPDATE: &str = "PUT /api/partner/accounts/{id}";
const INSTALL: &str = "POST /api/partner/installconnector";
const USAGE: &str = "GET /api/partner/accounts/{id}/billing";

fn account(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn ready_reason(account: &CyclrAccount) -> (String, String) {
    let c = condition(&account.status.as_ref().unwrap().conditions, READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_gives_ready_account_with_id_and_exactly_one_cyclr_account() {
    let h = Harness::start("create", "10s").await;
    // Usage is read once an hour: the first read still comes at the first resync after a list
    // shows the account, not an hour after the create.
    h.set_intervals("10s", "1h").await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}, "pricePlan": {"name": "Pro"}, "description": "Acme Ltd", "timezone": "Europe/London"}))).await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let status = ready.status.unwrap();
    let id = status.account_id.expect("status.accountID");
    let accounts = h.sim.accounts();
    assert_eq!(accounts.len(), 1, "exactly one account in Cyclr: {accounts:?}");
    assert_eq!(accounts[0].id, id);
    assert_eq!(accounts[0].name, "acme");
    assert_eq!(
        accounts[0].price_plan_id,
        Some(PricePlanId(3)),
        "plan Pro resolved by name"
    );
    assert_eq!(status.price_plan_id, Some(3));
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert_eq!(h.cyclr_requests(CREATE), 1);
    h.wait_no_pending_create("acme").await;
    // A create is the normal path: status says it, no Event is written for it (a rollout of
    // thousands would write thousands).
    assert!(h.events("acme", "Created").await.is_empty());
    // A new account's usage (nothing used yet) is in status by the time it is Ready; the
    // first read brings Cyclr's own period.
    let new_usage = status.usage.clone().expect("usage when Ready");
    assert_eq!((new_usage.task_count, new_usage.current_price_plan_id), (0, Some(3)));
    let with_usage = h
        .wait_for("usage read in status", Duration::from_secs(30), || async {
            h.account("acme")
                .await
                .status
                .and_then(|s| s.usage)
                .filter(|u| u.from_date.is_some())
        })
        .await;
    assert_eq!(with_usage.current_price_plan_id, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_sends_one_update_with_only_the_changed_field() {
    let h = Harness::start("update", "10s").await;
    let spec = json!({"partnerRef": {"name": h.partner}, "pricePlan": {"id": 2}, "description": "before", "auditInfo": "gitops"});
    h.apply::<CyclrAccount>(account("acme", spec.clone())).await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let before = h.sim.accounts()[0].clone();
    let mut changed = spec;
    changed["description"] = json!("after");
    h.apply::<CyclrAccount>(account("acme", changed)).await;
    h.wait_for("the new description in Cyclr", Duration::from_secs(30), || async {
        (h.sim.accounts()[0].description.as_deref() == Some("after")).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(UPDATE), 1, "one Update Account");
    let body = h.sim.last_update_body().expect("the update body");
    assert_eq!(body, json!({"Description": "after"}), "only the changed field is sent");
    let after = h.sim.accounts()[0].clone();
    assert_eq!(
        (after.name, after.price_plan_id, after.audit_info),
        (before.name, before.price_plan_id, before.audit_info)
    );
    h.wait_event("acme", "Updated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_in_cyclr_is_corrected_within_the_resync_interval() {
    let h = Harness::start("drift", "10s").await;
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "pricePlan": {"id": 3}, "description": "managed"}),
    ))
    .await;
    let id = h
        .wait_condition::<CyclrAccount>("acme", READY, "True", None)
        .await
        .status
        .unwrap()
        .account_id
        .unwrap();
    let cyclr = cyclr_client(&h.sim);
    let tamper = AccountFields {
        description: Some("changed by hand".into()),
        price_plan_id: Some(PricePlanId(2)),
        ..Default::default()
    };
    cyclr
        .update_account(&id, &tamper)
        .await
        .expect("update behind the operator's back");
    let updates_before = h.cyclr_requests(UPDATE);
    let start = std::time::Instant::now();
    h.wait_for("drift corrected in Cyclr", Duration::from_secs(25), || async {
        let list = cyclr.list_accounts().await.ok()?;
        let a = list.into_iter().find(|a| a.id == id)?;
        (a.description.as_deref() == Some("managed") && a.price_plan_id == Some(PricePlanId(3))).then_some(())
    })
    .await;
    eprintln!("drift corrected after {:?}", start.elapsed());
    assert_eq!(h.cyclr_requests(UPDATE) - updates_before, 1, "one corrective update");
    h.wait_event("acme", "DriftCorrected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_by_account_id_and_an_account_deleted_in_cyclr_is_reported() {
    let h = Harness::start("adopt", "10s").await;
    let cyclr = cyclr_client(&h.sim);
    let fields = AccountFields {
        name: Some("existing".into()),
        price_plan_id: Some(PricePlanId(2)),
        ..Default::default()
    };
    let id = cyclr.create_account(&fields).await.unwrap();
    let creates = h.cyclr_requests(CREATE);
    h.apply::<CyclrAccount>(account(
        "existing",
        json!({"partnerRef": {"name": h.partner}, "accountID": id, "pricePlan": {"id": 2}}),
    ))
    .await;
    let ready = h.wait_condition::<CyclrAccount>("existing", READY, "True", None).await;
    assert_eq!(ready.status.unwrap().account_id.as_deref(), Some(id.as_str()));
    assert_eq!(h.cyclr_requests(CREATE), creates, "adoption creates nothing");
    h.wait_event("existing", "Adopted").await;

    assert!(h.sim.delete_account(&id));
    let stalled = h
        .wait_condition::<CyclrAccount>("existing", STALLED, "True", Some("ExternalAccountMissing"))
        .await;
    assert_eq!(ready_reason(&stalled).0, "False");
    assert_eq!(h.sim.accounts().len(), 0, "never re-created");
    assert_eq!(h.cyclr_requests(CREATE), creates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_response_still_gives_exactly_one_account() {
    let h = Harness::start("lost", "10s").await;
    h.sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Default::default()
    });
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let accounts = h.sim.accounts();
    assert_eq!(accounts.len(), 1, "exactly one account: {accounts:?}");
    assert_eq!(
        ready.status.unwrap().account_id.as_deref(),
        Some(accounts[0].id.as_str())
    );
    assert_eq!(h.cyclr_requests(CREATE), 1, "the create was never re-sent");
    h.wait_event("acme", "Adopted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_between_create_and_status_write_adopts_on_restart() {
    let mut h = Harness::start("kill", "10s").await;
    // The write is committed, then its response takes 5 s: long enough to kill the operator
    // while it waits, before it can store the id.
    h.sim.set_faults(Faults {
        write_response_delay: Duration::from_secs(5),
        ..Default::default()
    });
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    h.wait_for("the account to exist in Cyclr", Duration::from_secs(30), || async {
        (!h.sim.accounts().is_empty()).then_some(())
    })
    .await;
    h.kill_operator();
    let orphaned = h.account("acme").await;
    assert!(
        orphaned.status.as_ref().and_then(|s| s.account_id.as_ref()).is_none(),
        "killed before the status write"
    );
    assert!(
        orphaned
            .status
            .as_ref()
            .and_then(|s| s.pending_create.as_ref())
            .is_some(),
        "the pending marker is in status"
    );

    h.sim.set_faults(Faults::default());
    h.start_operator();
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let accounts = h.sim.accounts();
    assert_eq!(accounts.len(), 1, "still exactly one account");
    assert_eq!(
        ready.status.unwrap().account_id.as_deref(),
        Some(accounts[0].id.as_str())
    );
    assert_eq!(h.cyclr_requests(CREATE), 1);
    h.wait_no_pending_create("acme").await;
    h.wait_event("acme", "Adopted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_price_plan_stalls_and_makes_no_more_calls_until_the_spec_changes() {
    let h = Harness::start("plan", "10s").await;
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "pricePlan": {"name": "Platinum"}}),
    ))
    .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("PricePlanNotFound"))
        .await;
    let message = ready_message(&stalled);
    assert!(message.contains("Platinum") && message.contains("Starter"), "{message}");
    let requests = h.sim.stats();
    tokio::time::sleep(Duration::from_secs(12)).await; // past one resync
    let later = h.sim.stats();
    for endpoint in [CREATE, UPDATE, USAGE] {
        assert_eq!(
            later.requests_to(endpoint),
            requests.requests_to(endpoint),
            "no {endpoint} while stalled"
        );
    }
    assert_eq!(h.sim.accounts().len(), 0);
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "pricePlan": {"name": "Starter"}}),
    ))
    .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(ready.status.unwrap().price_plan_id, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_installs_happen_exactly_once_across_restarts_and_resyncs() {
    let mut h = Harness::start("install", "10s").await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    // The API-key install waits for its Secret, and says which.
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1",
        "auth": {"apiKeySecretRef": {"name": "slack-key", "key": "apiKey"}}}}))
        .await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "jira"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Jira", "connectorVersion": "v2", "installedName": "Jira Cloud",
        "auth": {"basicAuthSecretRef": {"name": "jira-login"}}}})).await;
    h.put_secret("jira-login", &[("username", "robot"), ("password", "hunter2-password")])
        .await;
    let waiting = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "False", Some("SecretNotFound"))
        .await;
    assert!(ready_message(&waiting).contains("slack-key"));
    h.put_secret("slack-key", &[("apiKey", "sk-live-123456")]).await;
    let slack = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "True", None)
        .await;
    let jira = h
        .wait_condition::<CyclrConnectorInstall>("jira", READY, "True", None)
        .await;
    let account_id = h.account("acme").await.status.unwrap().account_id.unwrap();
    assert_eq!(slack.status.unwrap().account_id.as_deref(), Some(account_id.as_str()));
    assert!(jira.status.unwrap().installed_at.is_some());
    let installed = h.sim.installed_connectors(&account_id);
    let mut names: Vec<_> = installed.iter().map(|c| c.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["Jira Cloud", "slack"]);
    assert_eq!(h.cyclr_requests(INSTALL), 2);

    // Restart and let resyncs pass: nothing is installed again.
    h.kill_operator();
    h.start_operator();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        h.cyclr_requests(INSTALL),
        2,
        "no install repeated after restart and resync"
    );
    assert_eq!(h.sim.installed_connectors(&account_id).len(), 2);
    for install in ["slack", "jira"] {
        let yaml = serde_json::to_string(&h.install(install).await).unwrap();
        assert!(
            !yaml.contains("sk-live-123456") && !yaml.contains("hunter2-password"),
            "no credential in the resource"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_partner_credentials_make_accounts_wait_and_recover_when_fixed() {
    let h = Harness::start("creds", "10s").await;
    h.put_secret(
        "partner-credentials",
        &[("client_id", support::CLIENT_ID), ("client_secret", "wrong")],
    )
    .await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}})))
        .await;
    let partner = h.wait_partner_ready("False").await;
    let c = condition(&partner.status.unwrap().conditions, READY).unwrap().clone();
    assert_eq!(c.reason, "AuthenticationFailed");
    h.wait_condition::<CyclrAccount>("acme", READY, "False", Some("PartnerNotReady"))
        .await;
    assert_eq!(h.cyclr_requests(CREATE), 0);
    h.put_secret(
        "partner-credentials",
        &[
            ("client_id", support::CLIENT_ID),
            ("client_secret", support::CLIENT_SECRET),
        ],
    )
    .await;
    h.wait_partner_ready("True").await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(h.sim.accounts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_observe_only_accounts_make_no_cyclr_writes() {
    let h = Harness::start("quiet", "10s").await;
    let cyclr = cyclr_client(&h.sim);
    let id = cyclr
        .create_account(&AccountFields {
            name: Some("watched".into()),
            description: Some("as is".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let writes = h.sim.stats().writes;
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "paused", "annotations": {"cyclr.com/paused": "true"}}, "spec": {"partnerRef": {"name": h.partner}}})).await;
    h.apply::<CyclrAccount>(account("watched", json!({"partnerRef": {"name": h.partner}, "accountID": id, "managementPolicy": "ObserveOnly", "description": "different"}))).await;
    // Ready keeps whatever it had (False or Unknown, depending on timing); the reason says why.
    h.wait_condition::<CyclrAccount>("paused", RECONCILING, "False", Some("Paused"))
        .await;
    let observed = h
        .wait_condition::<CyclrAccount>("watched", READY, "True", Some("Observed"))
        .await;
    assert!(ready_message(&observed).contains("not corrected"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(h.sim.stats().writes, writes, "no Cyclr writes");
    assert_eq!(h.sim.accounts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_writes_and_orphan_deletion_is_immediate() {
    let h = Harness::start("steady", "10s").await;
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "pricePlan": {"id": 2}, "usage": {"enabled": false}}),
    ))
    .await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "hook"}, "spec": {"accountRef": {"name": "acme"}, "connectorName": "Webhook", "connectorVersion": "v1"}})).await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    h.wait_condition::<CyclrConnectorInstall>("hook", READY, "True", None)
        .await;
    // Converged: the first resync has brought the bill dates Cyclr set and the account count.
    h.wait_for("bill dates and account count", Duration::from_secs(30), || async {
        let billed = h.account("acme").await.status?.last_bill_date.is_some();
        let counted = h.partner().await.status?.account_count == Some(1);
        (billed && counted).then_some(())
    })
    .await;
    let before = (
        serde_json::to_string(&h.account("acme").await.status).unwrap(),
        serde_json::to_string(&h.partner().await.status).unwrap(),
    );
    let versions = (
        h.account("acme").await.metadata.resource_version,
        h.install("hook").await.metadata.resource_version,
        h.partner().await.metadata.resource_version,
    );
    let writes = h.sim.stats().writes;
    let lists = h.cyclr_requests("GET /api/partner/accounts");
    tokio::time::sleep(Duration::from_secs(25)).await; // two resyncs
    let after = (
        h.account("acme").await.metadata.resource_version,
        h.install("hook").await.metadata.resource_version,
        h.partner().await.metadata.resource_version,
    );
    let after_status = (
        serde_json::to_string(&h.account("acme").await.status).unwrap(),
        serde_json::to_string(&h.partner().await.status).unwrap(),
    );
    assert_eq!(
        versions, after,
        "no Kubernetes write at steady state: {before:#?} {after_status:#?}"
    );
    assert_eq!(h.sim.stats().writes, writes, "no Cyclr write at steady state");
    let lists_made = h.cyclr_requests("GET /api/partner/accounts") - lists;
    assert!(
        (1..=3).contains(&lists_made),
        "one shared List Accounts per resync, saw {lists_made} in 25 s"
    );

    // Orphan: no finalizer, so deletion completes at once and the Cyclr account stays.
    assert!(
        h.account("acme")
            .await
            .metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
    );
    h.api::<CyclrAccount>()
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    h.api::<CyclrConnectorInstall>()
        .delete("hook", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        h.api::<CyclrAccount>().get_opt("acme").await.unwrap().is_none(),
        "deleted at once"
    );
    assert!(
        h.api::<CyclrConnectorInstall>()
            .get_opt("hook")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(h.sim.accounts().len(), 1, "the Cyclr account is orphaned, not deleted");
}
