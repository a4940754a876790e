//! Issue #19 row 2: a tenant namespace with 20 `deletionPolicy: Delete` accounts and their
//! connector installs is deleted, and a real namespace controller (kube-controller-manager,
//! built into `bin/` by `make testbin`) empties it: every one of the 20 Cyclr accounts is
//! deleted, the `Orphan` one is left, and the namespace goes away. Also an install owned by
//! its account (an owner reference, as a generator might set) is collected by the real
//! garbage collector once the account is deleted.
//!
//! Alone in its binary: the kube-controller-manager it starts serves the whole control plane.

mod support;

use std::time::Duration;

use cyclr_operator::controllers::OperatorConfig;
use cyclr_operator::resources::{ACCOUNT_FINALIZER, CyclrAccount, CyclrConnectorInstall, READY};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use support::Harness;

const ACCOUNTS: usize = 20;

/// A V1 partner whose operator watches every namespace for this test's label, with the
/// partner's credentials in the operator's own namespace (a tenant namespace being deleted
/// must not take them along), and kube-controller-manager running.
async fn offboarding_harness(prefix: &str) -> Harness {
    TestEnv::get()
        .await
        .start_controller_manager()
        .await
        .expect("kube-controller-manager (the namespace controller and the garbage collector)");
    let mut h = Harness::without_operator_with(prefix, "10m", Some("V1")).await;
    let label = format!("cyclr.com/test={}", h.namespace);
    h.start_operator_with(OperatorConfig {
        label_selector: Some(label.clone()),
        partner_label_selector: Some(label),
        ..OperatorConfig::new(h.namespace.clone())
    });
    h.wait_partner_ready("True").await;
    h
}

/// Server-side applies `object` of kind K into `namespace` with the operator's label.
async fn apply_in<K>(h: &Harness, namespace: &str, mut object: serde_json::Value) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    object["apiVersion"] = json!(K::api_version(&()));
    object["kind"] = json!(K::kind(&()));
    object["metadata"]["labels"]["cyclr.com/test"] = json!(h.namespace);
    let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
    Api::<K>::namespaced(h.client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply("cyclr-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {object}: {e}"))
}

fn account(h: &Harness, name: &str, policy: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}, "deletionPolicy": policy}})
}

fn install(account: &str, name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {
        "accountRef": {"name": account}, "connectorName": "Slack", "connectorVersion": "1.0",
        "auth": {"apiKeySecretRef": {"name": "slack-key"}}}})
}

/// The tenant's API key for its installs, in its own namespace.
async fn put_install_secret(h: &Harness, namespace: &str) {
    apply_in::<Secret>(
        h,
        namespace,
        json!({"metadata": {"name": "slack-key", "labels": {"cyclr.com/credentials": "true"}},
               "stringData": {"apiKey": "tenant-slack-key-value"}}),
    )
    .await;
}

/// Waits until the object's Ready condition is True; returns it.
async fn wait_ready<K>(h: &Harness, namespace: &str, name: &str) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + support::HasConditions,
{
    let api = Api::<K>::namespaced(h.client.clone(), namespace);
    h.wait_for(
        &format!("{} {namespace}/{name} Ready", K::kind(&())),
        Duration::from_secs(120),
        || async {
            let object = api.get_opt(name).await.ok().flatten()?;
            let ready = cyclr_operator::resources::condition(object.conditions(), READY)?;
            (ready.status == "True").then_some(object)
        },
    )
    .await
}

fn account_id(account: &CyclrAccount) -> String {
    account
        .status
        .as_ref()
        .and_then(|s| s.account_id.clone())
        .expect("an id when Ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_deletes_its_delete_accounts_in_cyclr_and_goes_away() {
    let h = offboarding_harness("offboard").await;
    let tenant = TestEnv::get().await.new_namespace("offboard-tenant").await;
    put_install_secret(&h, &tenant).await;
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("tenant-{i:02}")).collect();
    for name in &names {
        apply_in::<CyclrAccount>(&h, &tenant, account(&h, name, "Delete")).await;
        apply_in::<CyclrConnectorInstall>(&h, &tenant, install(name, &format!("{name}-slack"))).await;
    }
    apply_in::<CyclrAccount>(&h, &tenant, account(&h, "kept", "Orphan")).await;

    let mut ids = Vec::new();
    for name in &names {
        let ready = wait_ready::<CyclrAccount>(&h, &tenant, name).await;
        assert!(
            ready.finalizers().contains(&ACCOUNT_FINALIZER.to_string()),
            "{name}: Delete holds a finalizer"
        );
        ids.push(account_id(&ready));
        wait_ready::<CyclrConnectorInstall>(&h, &tenant, &format!("{name}-slack")).await;
    }
    let kept = account_id(&wait_ready::<CyclrAccount>(&h, &tenant, "kept").await);
    for id in &ids {
        assert!(h.sim.account_v1(id).is_some(), "{id} exists in Cyclr before the delete");
        assert_eq!(h.sim.installed_connectors(id).len(), 1, "{id} has its install");
    }

    let namespaces = Api::<Namespace>::all(h.client.clone());
    namespaces
        .delete(&tenant, &DeleteParams::default())
        .await
        .expect("delete the tenant namespace");
    // The namespace controller deletes every object in it; the operator deletes each Delete
    // account in Cyclr and lets its resource go; then the namespace itself goes.
    h.wait_for(
        &format!("namespace {tenant} gone"),
        Duration::from_secs(300),
        || async {
            namespaces
                .get_opt(&tenant)
                .await
                .ok()
                .and_then(|ns| ns.is_none().then_some(()))
        },
    )
    .await;

    let left: Vec<&String> = ids.iter().filter(|id| h.sim.account_v1(id).is_some()).collect();
    assert!(
        left.is_empty(),
        "Cyclr accounts not deleted with their namespace: {left:?}"
    );
    assert!(h.sim.account_v1(&kept).is_some(), "the Orphan account stays in Cyclr");
    assert_eq!(h.sim.accounts().len(), 1, "only the Orphan account is left");
    let deletes = h.cyclr_requests("DELETE /v1.0/accounts/{id}");
    assert!(
        deletes >= ACCOUNTS as u64,
        "{deletes} account deletes for {ACCOUNTS} accounts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_owned_by_its_account_is_collected_when_the_account_is_deleted() {
    let h = offboarding_harness("offboard-gc").await;
    put_install_secret(&h, &h.namespace).await;
    let owner = apply_in::<CyclrAccount>(&h, &h.namespace, account(&h, "acme", "Delete")).await;
    let mut owned = install("acme", "acme-slack");
    owned["metadata"]["ownerReferences"] = json!([{
        "apiVersion": CyclrAccount::api_version(&()), "kind": CyclrAccount::kind(&()),
        "name": "acme", "uid": owner.uid().expect("a uid"),
    }]);
    apply_in::<CyclrConnectorInstall>(&h, &h.namespace, owned).await;
    let id = account_id(&wait_ready::<CyclrAccount>(&h, &h.namespace, "acme").await);
    wait_ready::<CyclrConnectorInstall>(&h, &h.namespace, "acme-slack").await;

    h.api::<CyclrAccount>()
        .delete("acme", &DeleteParams::background())
        .await
        .expect("delete the account");
    h.wait_for("the owned install collected", Duration::from_secs(120), || async {
        let install = h.api::<CyclrConnectorInstall>().get_opt("acme-slack").await.ok()?;
        let account = h.api::<CyclrAccount>().get_opt("acme").await.ok()?;
        (install.is_none() && account.is_none()).then_some(())
    })
    .await;
    assert!(h.sim.account_v1(&id).is_none(), "the account deleted in Cyclr");
}
