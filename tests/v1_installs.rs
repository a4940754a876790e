//! Issue #19 ([J]), connector installs on a CyclrPartner with `spec.cyclrAPI: V1`: a rotated
//! API key re-authenticates the installed connector (row 7), properties from the spec and
//! from a labelled Secret are sent with the install (row 8), an install by connector id keeps
//! the account connector's id in status and `deletionPolicy: Delete` deletes it with its
//! resource (deliver 6). On a `Partner` partner the same fields are refused before any call.

mod support;

use std::time::Duration;

use cyclr::types::ConnectorProperty;
use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, INSTALL_FINALIZER, READY, STALLED};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;
use support::{Harness, ready_message};

const INSTALL_V1: &str = "POST /v1.0/connectors/{connector}/install";
const REAUTHENTICATE: &str = "PUT /v1.0/account/connectors/{id}";
const DELETE_CONNECTOR: &str = "DELETE /v1.0/account/connectors/{id}";

/// A Ready CyclrAccount `acme` of the harness's partner: its Cyclr id.
async fn ready_account(h: &Harness) -> String {
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    ready.status.and_then(|s| s.account_id).expect("an id when Ready")
}

fn install(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["accountRef"] = json!({"name": "acme"});
    json!({"metadata": {"name": name}, "spec": spec})
}

/// Ready `Installed`, with the account connector's id in status.
async fn installed_id(h: &Harness, name: &str) -> String {
    let ready = h
        .wait_condition::<CyclrConnectorInstall>(name, READY, "True", Some("Installed"))
        .await;
    ready
        .status
        .and_then(|s| s.installed_connector_id)
        .expect("the account connector's id in status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row7_a_rotated_api_key_re_authenticates_the_installed_connector() {
    let h = Harness::start_v1("v1-reauth", "10m").await;
    h.wait_partner_ready("True").await;
    let account_id = ready_account(&h).await;
    h.put_secret("slack-key", &[("apiKey", "first-api-key-value")]).await;
    h.apply::<CyclrConnectorInstall>(install(
        "slack",
        json!({"connectorName": "Slack", "connectorVersion": "v1",
               "auth": {"apiKeySecretRef": {"name": "slack-key"}}}),
    ))
    .await;
    let id = installed_id(&h, "slack").await;
    let connectors = h.sim.account_connectors(&account_id);
    assert_eq!(connectors.len(), 1);
    assert_eq!(connectors[0].id, id, "status holds Cyclr's account connector id");
    let digest = h.install("slack").await.status.unwrap().credentials_digest;

    h.put_secret("slack-key", &[("apiKey", "second-api-key-value")]).await;
    let event = h.wait_event("slack", "Reauthenticated").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains(&id) && !note.contains("api-key-value"), "{note}");
    let ready = h
        .wait_condition::<CyclrConnectorInstall>("slack", READY, "True", Some("Installed"))
        .await;
    let status = ready.status.unwrap();
    assert_eq!(
        status.installed_connector_id.as_deref(),
        Some(id.as_str()),
        "the id is kept"
    );
    assert_ne!(
        status.credentials_digest, digest,
        "the new credentials are the applied ones"
    );
    assert_eq!(h.cyclr_requests(REAUTHENTICATE), 1, "one re-authentication");
    assert_eq!(h.cyclr_requests(INSTALL_V1), 1, "never installed again");
    assert!(h.sim.account_connectors(&account_id)[0].authenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row8_properties_from_the_spec_and_a_secret_are_sent_with_the_install() {
    let h = Harness::start_v1("v1-props", "10m").await;
    h.wait_partner_ready("True").await;
    let account_id = ready_account(&h).await;
    let spec = json!({"connectorName": "Zendesk", "connectorVersion": "v2", "properties": [
        {"name": "Subdomain", "value": "acme"},
        {"name": "Region", "valueFrom": {"secretKeyRef": {"name": "zendesk-settings", "key": "region"}}},
    ]});
    h.apply::<CyclrConnectorInstall>(install("zendesk", spec.clone())).await;
    // Its Secret is missing: waits, naming it, and installs nothing.
    let waiting = h
        .wait_condition::<CyclrConnectorInstall>("zendesk", READY, "False", Some("SecretNotFound"))
        .await;
    assert!(ready_message(&waiting).contains("zendesk-settings"));
    assert_eq!(h.cyclr_requests(INSTALL_V1), 0);

    h.put_secret("zendesk-settings", &[("region", "eu-west")]).await;
    installed_id(&h, "zendesk").await;
    let installed = h.sim.account_connectors(&account_id);
    assert_eq!(installed.len(), 1);
    assert_eq!(
        installed[0].properties,
        [
            ConnectorProperty {
                name: "Subdomain".into(),
                value: Some("acme".into()),
            },
            ConnectorProperty {
                name: "Region".into(),
                value: Some("eu-west".into()),
            },
        ]
    );

    // Admission: sent once, so immutable; exactly one source; each name once.
    let mut changed = install("zendesk", spec.clone());
    changed["spec"]["properties"][0]["value"] = json!("other");
    let refused = h.try_apply::<CyclrConnectorInstall>(&mut changed).await.unwrap_err();
    assert!(refused.to_string().contains("properties are immutable"), "{refused}");
    let mut both = install(
        "both",
        json!({"connectorName": "Zendesk", "connectorVersion": "v2", "properties": [
            {"name": "Subdomain", "value": "a", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
    );
    let refused = h.try_apply::<CyclrConnectorInstall>(&mut both).await.unwrap_err();
    assert!(
        refused.to_string().contains("exactly one of value and valueFrom"),
        "{refused}"
    );
    let mut twice = install(
        "twice",
        json!({"connectorName": "Zendesk", "connectorVersion": "v2", "properties": [
            {"name": "Subdomain", "value": "a"}, {"name": "Subdomain", "value": "b"}]}),
    );
    let refused = h.try_apply::<CyclrConnectorInstall>(&mut twice).await.unwrap_err();
    assert!(refused.to_string().contains("only once"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver6_an_install_by_connector_id_is_deleted_with_its_resource() {
    let h = Harness::start_v1("v1-cidel", "10m").await;
    h.wait_partner_ready("True").await;
    let account_id = ready_account(&h).await;
    h.apply::<CyclrConnectorInstall>(install(
        "kept",
        json!({"connectorName": "Slack", "connectorVersion": "v1"}),
    ))
    .await;
    let kept = installed_id(&h, "kept").await;
    let catalogue_id = h.sim.account_connectors(&account_id)[0].connector.id.clone();
    h.apply::<CyclrConnectorInstall>(install(
        "gone",
        json!({"connectorName": "Slack", "connectorVersion": "v1", "connectorID": catalogue_id,
               "installedName": "Slack by id", "deletionPolicy": "Delete"}),
    ))
    .await;
    let gone = installed_id(&h, "gone").await;
    let by_id = h.sim.account_connectors(&account_id);
    let made = by_id.iter().find(|c| c.id == gone).expect("installed in Cyclr");
    assert_eq!(
        (made.name.as_str(), made.connector.id.as_str()),
        ("Slack by id", catalogue_id.as_str())
    );
    assert!(
        h.install("gone")
            .await
            .finalizers()
            .contains(&INSTALL_FINALIZER.to_string())
    );
    assert!(
        h.install("kept").await.finalizers().is_empty(),
        "Orphan needs no finalizer"
    );

    for name in ["gone", "kept"] {
        h.api::<CyclrConnectorInstall>()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the install");
    }
    h.wait_for("both installs gone", Duration::from_secs(60), || async {
        let api = h.api::<CyclrConnectorInstall>();
        let left = [api.get_opt("gone").await.ok()?, api.get_opt("kept").await.ok()?];
        left.iter().all(Option::is_none).then_some(())
    })
    .await;
    let left: Vec<String> = h
        .sim
        .account_connectors(&account_id)
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, [kept], "Delete deleted its connector, Orphan left its own");
    assert_eq!(h.cyclr_requests(DELETE_CONNECTOR), 1);
    let event = h.wait_event("gone", "Deleted").await;
    assert!(event.note.unwrap_or_default().contains(&gone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_partner_api_partner_v1_only_fields_are_refused_before_any_call() {
    let h = Harness::start("v1-only", "10m").await;
    h.wait_partner_ready("True").await;
    ready_account(&h).await;
    h.apply::<CyclrConnectorInstall>(install(
        "zendesk",
        json!({"connectorName": "Zendesk", "connectorVersion": "v2", "deletionPolicy": "Delete",
               "properties": [{"name": "Subdomain", "value": "acme"}]}),
    ))
    .await;
    let stalled = h
        .wait_condition::<CyclrConnectorInstall>("zendesk", STALLED, "True", Some("InvalidSpec"))
        .await;
    let message = ready_message(&stalled);
    assert!(
        message.contains("spec.properties") && message.contains("spec.deletionPolicy") && message.contains("V1"),
        "{message}"
    );
    assert!(
        stalled.finalizers().is_empty(),
        "no finalizer where nothing can be deleted"
    );
    assert_eq!(h.cyclr_requests("POST /api/partner/installconnector"), 0);
}
