//! Issue [M] row 8: the `cyclrconnectorinstalls` CRD is deleted under a running operator, then
//! applied again. Meanwhile `/readyz` says which CRD is missing, the accounts are left alone
//! (no Cyclr write, no status write), and the installs' watch retries calmly (backing off to
//! about a minute, `driver::watch_backoff`); once the CRD is back the operator recovers by
//! itself, without a restart. A binary of its own: it deletes a CRD of the shared control
//! plane.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{self, CyclrAccount, CyclrConnectorInstall, READY};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::Harness;

const INSTALLS: &str = "cyclrconnectorinstalls.cyclr.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_crd_is_named_in_readyz_and_recovered_from_without_a_restart() {
    let h = Harness::start("crd-outage", "10m").await;
    let needed = resources::all_crds()
        .iter()
        .filter_map(driver::readiness::NeededCrd::stored_in)
        .collect();
    tokio::spawn(h.readiness.clone().check_crds(h.client.clone(), needed));
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    h.wait_for("ready", Duration::from_secs(30), || async { h.readiness.check().ok() })
        .await;

    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let installs_crd = crds.get(INSTALLS).await.expect("the CRD");
    crds.delete(INSTALLS, &DeleteParams::default())
        .await
        .expect("delete the CRD");
    h.wait_for("the CRD gone", Duration::from_secs(60), || async {
        crds.get_opt(INSTALLS).await.ok().flatten().is_none().then_some(())
    })
    .await;
    let account_version = h.account("acme").await.metadata.resource_version;
    let why = h
        .wait_for("/readyz naming the missing CRD", Duration::from_secs(30), || async {
            h.readiness.check().err().filter(|why| why.contains(INSTALLS))
        })
        .await;
    assert!(why.contains("not installed"), "{why}");
    // The rest goes on: the account is neither written nor touched in Cyclr.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(h.account("acme").await.metadata.resource_version, account_version);
    assert_eq!(h.sim.accounts().len(), 1);

    let mut crd = installs_crd;
    crd.metadata = kube::api::ObjectMeta {
        name: Some(INSTALLS.into()),
        ..Default::default()
    };
    crd.status = None;
    crds.patch(
        INSTALLS,
        &PatchParams::apply("cyclr-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the CRD applied again");
    // The watch backs off to about a minute while the CRD is missing; it comes back by itself.
    h.wait_for("ready again", Duration::from_secs(150), || async {
        h.readiness.check().ok()
    })
    .await;
    h.put_secret("slack-key", &[("apiKey", "k-123456")]).await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0",
        "auth": {"apiKeySecretRef": {"name": "slack-key"}}}}))
        .await;
    h.wait_condition::<CyclrConnectorInstall>("slack", READY, "True", None)
        .await;
}
