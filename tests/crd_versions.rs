//! Issue [M] row 11: the CRDs move from `v1alpha1` to `v1beta1` as docs/versioning.md says
//! (both served with `v1beta1` stored, the storage migrated, then `v1alpha1` no longer served)
//! under a running operator and Ready objects: no status field is lost, etcd ends up holding
//! only `v1beta1`, nothing is written to Cyclr, and a binary that speaks `v1alpha1` reports not
//! ready on `/readyz` and in its log, naming the version and each CRD. And the CRDs we ship list
//! every version a release of ours ever stored, since a cluster's `status.storedVersions` keeps
//! them and the API server refuses CRDs that drop one.
//!
//! The `v1beta1` CRDs are generated here from today's (same schema, `conversion: None`): the
//! project has not moved yet. A binary of its own: it changes the control plane's CRDs for good.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cyclr_operator::resources::{self, CyclrAccount, CyclrConnectorInstall, READY};
use cyclr_testenv::TestEnv;
use driver::readiness::NeededCrd;
use etcd::Etcd;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::Harness;
use support::process::OperatorProcess;

/// Every version a released CRD of ours has stored, oldest first. A cluster that ran any
/// release may hold each in its CRDs' `status.storedVersions`, and the API server refuses CRDs
/// that do not list all of them, so the CRDs we ship must. A release that changes the storage
/// version adds it here; one leaves only a full release after the storage migration
/// (docs/versioning.md, step 3).
const RELEASED_STORED_VERSIONS: &[&str] = &["v1alpha1"];

/// Where the CRDs ship: the release's manifests, the chart, and the kustomize install.
const SHIPPED: &[&str] = &[
    "crds/cyclr.com_crds.yaml",
    "charts/cyclr-operator/files/crds.yaml",
    "deploy/crds.yaml",
];

const FROM: &str = "v1alpha1";
const TO: &str = "v1beta1";

/// The CRDs in one shipped file.
fn shipped(path: &str) -> Vec<CustomResourceDefinition> {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The versions a CRD lists, served or not.
fn listed(crd: &CustomResourceDefinition) -> Vec<&str> {
    crd.spec.versions.iter().map(|v| v.name.as_str()).collect()
}

#[test]
fn the_shipped_crds_list_every_version_a_release_stored() {
    for path in SHIPPED {
        let crds = shipped(path);
        assert_eq!(crds.len(), resources::all_crds().len(), "{path}");
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            for version in RELEASED_STORED_VERSIONS {
                assert!(
                    listed(crd).contains(version),
                    "{path}: CRD {name} does not list {version}, which released CRDs stored: \
                     clusters have it in status.storedVersions and would refuse these CRDs \
                     (docs/versioning.md)"
                );
            }
            let stored = NeededCrd::stored_in(crd).unwrap_or_else(|| panic!("{path}: {name} stores no version"));
            assert!(
                RELEASED_STORED_VERSIONS.contains(&stored.version.as_str()),
                "{path}: CRD {name} stores {}: add it to RELEASED_STORED_VERSIONS",
                stored.version
            );
        }
    }
}

/// The API resource of `crd`'s kind at `version`.
fn resource(crd: &CustomResourceDefinition, version: &str) -> ApiResource {
    let group = &crd.spec.group;
    ApiResource {
        group: group.clone(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    }
}

/// `crd` with `to` added beside `from` (same schema and columns): both served, `to` stored,
/// `from` deprecated (step 1 and 2 of docs/versioning.md in one apply, as a cluster that
/// upgrades to step 2 sees it). With `from_served` false, `from` is no longer served (step 3).
fn moved(crd: &CustomResourceDefinition, from_served: bool) -> CustomResourceDefinition {
    let mut crd = crd.clone();
    let mut old = crd.spec.versions[0].clone();
    assert_eq!(old.name, FROM);
    let mut new = old.clone();
    new.name = TO.into();
    new.served = true;
    new.storage = true;
    old.served = from_served;
    old.storage = false;
    old.deprecated = Some(true);
    old.deprecation_warning = Some(format!(
        "{}/{FROM} {} is deprecated; use {}/{TO}",
        crd.spec.group, crd.spec.names.kind, crd.spec.group
    ));
    crd.spec.versions = vec![new, old];
    crd.metadata = kube::api::ObjectMeta {
        name: crd.metadata.name.clone(),
        ..Default::default()
    };
    crd
}

/// Applies `crds` and waits until each is established and answers a list at every version it
/// serves (the API server installs a changed CRD's handlers asynchronously).
async fn apply_crds(client: &Client, crds: &[CustomResourceDefinition]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("cyclr-tests").force(), &Patch::Apply(crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for crd in crds {
        for version in crd.spec.versions.iter().filter(|v| v.served) {
            let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &resource(crd, &version.name));
            while let Err(e) = dynamic.list(&Default::default()).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} not served at {}: {e}",
                    crd.spec.names.plural,
                    version.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The cluster's `status.storedVersions` of each of our CRDs.
async fn stored_versions(client: &Client) -> BTreeMap<String, Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut stored = BTreeMap::new();
    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap();
        let found = api.get(&name).await.expect("get CRD");
        stored.insert(name, found.status.and_then(|s| s.stored_versions).unwrap_or_default());
    }
    stored
}

/// Every object of our kinds as the API server returns it at `version`:
/// `<kind> <namespace>/<name>` → its annotations and status (all the operator keeps).
async fn snapshot(client: &Client, version: &str) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for crd in resources::all_crds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(&crd, version));
        for object in api.list(&Default::default()).await.expect("list").items {
            assert_eq!(
                object.types.as_ref().map(|t| t.api_version.clone()),
                Some(format!("cyclr.com/{version}"))
            );
            let key = format!(
                "{} {}/{}",
                crd.spec.names.kind,
                object.metadata.namespace.clone().unwrap_or_default(),
                object.metadata.name.clone().unwrap_or_default()
            );
            let kept = json!({"annotations": object.metadata.annotations, "status": object.data["status"]});
            objects.insert(key, kept);
        }
    }
    objects
}

/// What kube-storage-version-migrator does for one CRD (and docs/versioning.md's procedure):
/// every object written back unchanged, so that the API server stores it again in the CRD's
/// storage version (a write of the same bytes would be skipped, new bytes are not; status is
/// not touched by a write of the main resource), then the old version trimmed from
/// `status.storedVersions`. Returns how many objects were rewritten.
async fn migrate_storage(client: &Client, crd: &CustomResourceDefinition, storage: &str) -> usize {
    let name = crd.metadata.name.clone().unwrap();
    let resource = resource(crd, storage);
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut rewritten = 0;
    for object in all.list(&Default::default()).await.expect("list").items {
        let object_name = object.metadata.name.clone().unwrap();
        let api: Api<DynamicObject> = match &object.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut current = object;
        // A conflict: someone (the operator) wrote it since it was read: read it again.
        while let Err(e) = api.replace(&object_name, &PostParams::default(), &current).await {
            assert!(
                matches!(&e, kube::Error::Api(r) if r.code == 409),
                "rewrite {name} {object_name}: {e}"
            );
            current = api.get(&object_name).await.expect("read again");
        }
        rewritten += 1;
    }
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"storedVersions": [storage]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("trim the stored versions of {name}: {e}"));
    rewritten
}

/// The API version each object under `/registry/cyclr.com/` is stored in, read from etcd.
async fn stored_in_etcd(etcd: &Etcd) -> BTreeMap<String, String> {
    etcd.prefixed("/registry/cyclr.com/")
        .await
        .into_iter()
        .map(|(key, value)| {
            let object: Value = serde_json::from_slice(&value).unwrap_or_else(|e| panic!("{key}: not JSON: {e}"));
            (key, object["apiVersion"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Waits until the snapshot at `version` stays the same across two looks 5 s apart, and
/// returns it: the operator has finished what a rollout leaves it to do (usage, the partner's
/// count), so what changes later is the move's doing.
async fn settled(h: &Harness, version: &str) -> BTreeMap<String, Value> {
    h.wait_for("a quiet operator", Duration::from_secs(90), || async {
        let before = snapshot(&h.client, version).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        (snapshot(&h.client, version).await == before).then_some(before)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_move_to_v1beta1_without_losing_status_and_an_old_binary_says_what_it_needs() {
    let env = TestEnv::get().await;
    let etcd = Etcd::new(env.etcd_url().expect("our own etcd"));
    let h = Harness::start("versions", "10m").await;
    tokio::spawn(h.readiness.clone().check_crds(
        h.client.clone(),
        resources::all_crds().iter().filter_map(NeededCrd::stored_in).collect(),
    ));

    // Installed: every stored version is one a release stored and every shipped file lists.
    for (name, versions) in stored_versions(&h.client).await {
        for version in &versions {
            assert!(
                RELEASED_STORED_VERSIONS.contains(&version.as_str()),
                "{name}: {versions:?}"
            );
            for path in SHIPPED {
                let crd = shipped(path)
                    .into_iter()
                    .find(|c| c.metadata.name.as_ref() == Some(&name));
                let crd = crd.unwrap_or_else(|| panic!("{path} lacks {name}"));
                assert!(
                    listed(&crd).contains(&version.as_str()),
                    "{path}: {name} lacks {version}"
                );
            }
        }
    }

    // A rollout to Ready: the partner, three accounts, two installs.
    let accounts = ["acme", "globex", "initech"];
    for name in accounts {
        h.apply::<CyclrAccount>(json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}}))
            .await;
    }
    h.put_secret("slack-key", &[("apiKey", "k-123456")]).await;
    for (name, account) in [("slack", "acme"), ("slack-2", "globex")] {
        h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": name}, "spec": {
            "accountRef": {"name": account}, "connectorName": "Slack", "connectorVersion": "1.0",
            "auth": {"apiKeySecretRef": {"name": "slack-key"}}}}))
            .await;
    }
    for name in accounts {
        h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
    }
    for name in ["slack", "slack-2"] {
        h.wait_condition::<CyclrConnectorInstall>(name, READY, "True", None)
            .await;
    }
    h.wait_partner_ready("True").await;
    h.wait_for("ready", Duration::from_secs(30), || async { h.readiness.check().ok() })
        .await;
    let before = settled(&h, FROM).await;
    assert_eq!(before.len(), 1 + accounts.len() + 2, "{before:#?}");
    for (key, kept) in &before {
        assert!(kept["status"].is_object(), "{key} has a status: {kept}");
    }
    let writes = h.sim.stats().writes;
    assert_eq!(writes, 5, "3 accounts created, 2 connectors installed");
    assert!(stored_in_etcd(&etcd).await.values().all(|v| v == "cyclr.com/v1alpha1"));

    // Steps 1 and 2: v1beta1 served and stored beside v1alpha1, with the operator running.
    let ours = resources::all_crds();
    let step2: Vec<_> = ours.iter().map(|crd| moved(crd, true)).collect();
    apply_crds(&h.client, &step2).await;
    for (name, versions) in stored_versions(&h.client).await {
        assert_eq!(versions, [FROM, TO], "{name}: both stored now");
    }
    let mut rewritten = 0;
    for crd in &step2 {
        rewritten += migrate_storage(&h.client, crd, TO).await;
    }
    assert_eq!(rewritten, before.len());
    for (name, versions) in stored_versions(&h.client).await {
        assert_eq!(versions, [TO], "{name}: the migration trimmed {FROM}");
    }
    let in_etcd = stored_in_etcd(&etcd).await;
    assert_eq!(in_etcd.len(), before.len(), "{in_etcd:#?}");
    for (key, api_version) in &in_etcd {
        assert_eq!(api_version, "cyclr.com/v1beta1", "{key} is stored in the new version");
    }
    // Nothing lost, read at either version; nothing sent to Cyclr.
    assert_eq!(settled(&h, TO).await, before, "annotations and status kept at {TO}");
    assert_eq!(snapshot(&h.client, FROM).await, before, "and at {FROM}");
    assert_eq!(h.sim.stats().writes, writes, "no Cyclr write during the migration");

    // Step 3: v1alpha1 no longer served. The running operator and a new process of this
    // binary, which speaks v1alpha1, say so.
    let step3: Vec<_> = ours.iter().map(|crd| moved(crd, false)).collect();
    apply_crds(&h.client, &step3).await;
    let unserved: Vec<String> = ours
        .iter()
        .map(|crd| format!("CRD {} does not serve v1alpha1", crd.metadata.name.as_deref().unwrap()))
        .collect();
    // Every CRD named at once (a check between two of the three applies names fewer).
    let why = h
        .wait_for(
            "/readyz naming v1alpha1 for each CRD",
            Duration::from_secs(30),
            || async {
                let why = h.readiness.check().err()?;
                unserved.iter().all(|line| why.contains(line)).then_some(why)
            },
        )
        .await;
    assert!(why.contains("it serves: v1beta1"), "{why}");
    let old = OperatorProcess::start(env.kubeconfig_path(), &h.namespace, "v1alpha1", "info", &[]);
    old.wait_readyz(503, "CRD cyclraccounts.cyclr.com does not serve v1alpha1")
        .await;
    let (_, body) = old.readyz().await;
    for line in &unserved {
        assert!(body.contains(line), "{body}");
    }
    let logged = old.log_lines().into_iter().any(|line| {
        let text = line.to_string();
        line["level"] == "WARN" && text.contains("does not serve v1alpha1") && text.contains("cyclraccounts.cyclr.com")
    });
    assert!(logged, "a warning naming v1alpha1 and the CRD in {}", old.log.display());
    // Still not ready and idle a while later: no Cyclr write, the objects as they were.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(old.readyz().await.0, 503);
    assert_eq!(h.sim.stats().writes, writes, "no Cyclr write by either binary");
    assert_eq!(snapshot(&h.client, TO).await, before);
}
