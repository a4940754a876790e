//! `helm upgrade` upgrades the CRDs: a release of the previous chart, whose CRDs lack a status
//! field and sit in `crds/` (where Helm installs them once and never upgrades them), is
//! upgraded to this chart, and the new field is kept from then on. Alone in its binary, so
//! on its own control plane: here the chart owns the CRDs, while every release in
//! tests/deploy.rs leaves them to the test (`crds.enabled=false`).

#[path = "support/chart.rs"]
mod chart;

use std::path::Path;
use std::time::Duration;

use chart::{CHART, helm, run};
use cyclr_operator::resources::{self, CyclrAccount};
use cyclr_testenv::TestEnv;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

const RELEASE: &str = "upgraded";
const NAMESPACE: &str = "cyclr-upgrade";
/// The status field the previous chart's CyclrAccount CRD lacks.
const NEW_FIELD: &str = "lastBillDate";

/// The previous chart: this one with its CRDs in `crds/` and no CRD template (as 0.1.0 had
/// them), and CyclrAccount's status without `NEW_FIELD`.
fn previous_chart(dir: &Path) {
    copy_dir(Path::new(CHART), dir);
    std::fs::remove_file(dir.join("templates/crds.yaml")).unwrap();
    std::fs::remove_dir_all(dir.join("files")).unwrap();
    let mut crds = String::new();
    for crd in resources::all_crds() {
        let mut crd = serde_json::to_value(&crd).unwrap();
        if crd["spec"]["names"]["kind"] == "CyclrAccount" {
            let status = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
            status["properties"]
                .as_object_mut()
                .unwrap()
                .remove(NEW_FIELD)
                .expect("the field exists today");
        }
        crds.push_str(&format!("---\n{}", serde_yaml::to_string(&crd).unwrap()));
    }
    std::fs::create_dir(dir.join("crds")).unwrap();
    std::fs::write(dir.join("crds/cyclr.com_crds.yaml"), crds).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes `NEW_FIELD` into the account's status (as the operator would) and reads it back:
/// the API server prunes a field its CRD's schema does not have.
async fn status_keeps_new_field(accounts: &Api<CyclrAccount>, value: &str) -> bool {
    let patch = Patch::Merge(json!({"status": {NEW_FIELD: value}}));
    accounts
        .patch_status("acme", &PatchParams::default(), &patch)
        .await
        .expect("patch status");
    let account: Value = serde_json::to_value(accounts.get("acme").await.unwrap()).unwrap();
    account["status"][NEW_FIELD] == value
}

async fn wait_established(crds: &Api<CustomResourceDefinition>) {
    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap();
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("{name} not established after 30s"))
            .expect("watch the CRD");
    }
}

#[tokio::test]
async fn helm_upgrade_brings_new_crd_fields_and_uninstall_keeps_accounts() {
    let env = TestEnv::get().await;
    let client = env.client();
    let scratch = tempfile::tempdir().unwrap();
    let previous = scratch.path().join("previous");
    previous_chart(&previous);
    let helm_run = |args: &[&str]| run(helm(env, scratch.path()).args(args));

    helm_run(&[
        "install",
        RELEASE,
        previous.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ]);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_established(&crds).await;
    let tenants = env.new_namespace("upgrade-tenants").await;
    let accounts: Api<CyclrAccount> = Api::namespaced(client.clone(), &tenants);
    let account: CyclrAccount = serde_json::from_value(json!({
        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
        "metadata": {"name": "acme"},
        "spec": {"description": "Acme", "pricePlan": {"name": "Pro"}},
    }))
    .unwrap();
    let before = accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create account");
    assert!(
        !status_keeps_new_field(&accounts, "2030-01-01").await,
        "the previous chart's CRD already had status.{NEW_FIELD}: the test proves nothing"
    );

    // The CRDs 0.1.0 installed from crds/ belong to no release: the first upgrade adopts them.
    helm_run(&["upgrade", RELEASE, CHART, "--namespace", NAMESPACE, "--take-ownership"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // The API server takes a moment to serve the new schema.
    while !status_keeps_new_field(&accounts, "2030-02-01").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status.{NEW_FIELD} still pruned 30s after helm upgrade"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let crd = crds.get("cyclraccounts.cyclr.com").await.unwrap();
    let annotations = crd.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("meta.helm.sh/release-name").map(String::as_str),
        Some(RELEASE)
    );
    assert_eq!(
        annotations.get("helm.sh/resource-policy").map(String::as_str),
        Some("keep")
    );

    // Later upgrades need nothing special.
    helm_run(&[
        "upgrade",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--set",
        "replicaCount=3,podDisruptionBudget.enabled=true",
    ]);
    helm_run(&["uninstall", RELEASE, "--namespace", NAMESPACE]);

    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap();
        let kept = crds.get(&name).await.expect("helm uninstall keeps the CRDs");
        assert!(kept.metadata.deletion_timestamp.is_none(), "{name} is being deleted");
    }
    let after = accounts.get("acme").await.expect("the account survives uninstall");
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(after.spec, before.spec);
    assert!(after.metadata.deletion_timestamp.is_none());
    let status: Value = serde_json::to_value(&after.status).unwrap();
    assert_eq!(status[NEW_FIELD], "2030-02-01");
}
