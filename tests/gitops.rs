//! Issue [M] row 9: edits a GitOps tool or `kubectl replace` makes behind the operator's back.
//! A dropped `cyclr.com/account-id` annotation is written back within seconds (not at the
//! next resync, here ten minutes away); a pause that disappears is reported in a Warning
//! Event naming the field manager of the newest write.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, READY, annotations};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_id_annotation_comes_back_and_a_lifted_pause_is_reported() {
    let h = Harness::start("gitops", "10m").await;
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let id = ready.status.as_ref().and_then(|s| s.account_id.clone()).unwrap();
    h.wait_for("the id annotation", Duration::from_secs(30), || async {
        (h.account("acme").await.annotations().get(annotations::ACCOUNT_ID) == Some(&id)).then_some(())
    })
    .await;

    // `kubectl replace` with a manifest that never had the annotation.
    let api = h.api::<CyclrAccount>();
    let mut replaced = h.account("acme").await;
    replaced.annotations_mut().remove(annotations::ACCOUNT_ID);
    replaced.metadata.managed_fields = None;
    let after_replace = api
        .replace("acme", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    assert!(!after_replace.annotations().contains_key(annotations::ACCOUNT_ID));
    h.wait_for("the id annotation written back", Duration::from_secs(30), || async {
        (h.account("acme").await.annotations().get(annotations::ACCOUNT_ID) == Some(&id)).then_some(())
    })
    .await;

    // Paused in Git, applied by the GitOps tool (server-side apply); then the annotation is
    // dropped from Git and the tool applies again.
    let from_git = |annotations: serde_json::Value| {
        json!({"apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount", "metadata": {
            "name": "acme", "annotations": annotations, "labels": {"cyclr.com/test": h.namespace}},
            "spec": {"partnerRef": {"name": h.partner}}})
    };
    let flux = PatchParams::apply("kustomize-controller").force();
    api.patch(
        "acme",
        &flux,
        &Patch::Apply(from_git(json!({annotations::PAUSED: "true"}))),
    )
    .await
    .expect("apply with the pause");
    h.wait_condition::<CyclrAccount>("acme", READY, "True", Some("Paused"))
        .await;
    // managedFields keep whole seconds: the next write must be in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let applied = api
        .patch("acme", &flux, &Patch::Apply(from_git(json!({}))))
        .await
        .expect("apply without the pause");
    assert!(!applied.annotations().contains_key(annotations::PAUSED));
    let event = h.wait_event("acme", "PauseRemoved").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("kustomize-controller"), "names who removed it: {note}");
    h.wait_condition::<CyclrAccount>("acme", READY, "True", Some("Synced"))
        .await;
}
