//! The floor: the least work that onboards N accounts. The same Cyclr client and budget as
//! the operator (one token, one Create Account per account) and the same number of
//! Kubernetes writes per account, at the same concurrency, with no operator logic.

use std::sync::Arc;

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use cyclr::types::AccountFields;
use cyclr::{ClientConfig, CyclrClient};
use futures::StreamExt;
use futures::channel::mpsc;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use secrecy::SecretString;
use serde_json::json;

use crate::cluster::{self, CLIENT_ID, CLIENT_SECRET};

const FIELD_MANAGER: &str = "cyclr-bench-floor";

/// What the floor does per account, copied from the operator's run.
#[derive(Clone, Copy, Debug)]
pub struct PerAccount {
    /// Status writes (the last one sets Ready=True).
    pub status_writes: u64,
    /// Other writes to the account (annotation patches).
    pub patches: u64,
    /// Events created.
    pub events: u64,
}

/// Handles each account name from `created` as it arrives, `concurrency` at a time, until the
/// sender is dropped.
pub async fn run(
    client: &Client,
    namespace: &str,
    api_url: &str,
    requests_per_second: u32,
    concurrency: usize,
    per_account: PerAccount,
    created: mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new(api_url, CLIENT_ID, SecretString::from(CLIENT_SECRET));
    config.requests_per_second = requests_per_second;
    config.burst = 20;
    let cyclr = Arc::new(CyclrClient::new(config)?);
    let accounts = cluster::accounts(client, namespace);
    let events: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    let results: Vec<anyhow::Result<()>> = created
        .map(|name| one_account(&cyclr, &accounts, &events, namespace, name, per_account))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn one_account(
    cyclr: &CyclrClient,
    accounts: &Api<DynamicObject>,
    events: &Api<DynamicObject>,
    namespace: &str,
    name: String,
    per_account: PerAccount,
) -> anyhow::Result<()> {
    let writes = per_account.status_writes.max(1);
    // Like the operator: one write before the create (the pending marker), the rest after.
    if writes > 1 {
        write_status(accounts, &name, None, false).await?;
    }
    let fields = AccountFields {
        name: Some(name.clone()),
        description: Some("cyclr-bench".into()),
        ..AccountFields::default()
    };
    let id = cyclr
        .create_account(&fields)
        .await
        .with_context(|| format!("Create Account {name}"))?;
    for i in 1..writes {
        write_status(accounts, &name, Some(&id), i + 1 == writes).await?;
    }
    for _ in 0..per_account.patches {
        let patch = json!({"metadata": {"annotations": {"cyclr.com/account-id": id}}});
        accounts
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("annotating {name}"))?;
    }
    for _ in 0..per_account.events {
        create_event(events, namespace, &name).await?;
    }
    if writes == 1 {
        write_status(accounts, &name, Some(&id), true).await?;
    }
    Ok(())
}

/// Writes the status the operator writes at the same step, field for field: the three kstatus
/// conditions, `observedGeneration` and `lastSyncTime`; before the create (`ready` false) the
/// `pendingCreate` marker (without the operator's resourceVersion precondition: the floor never
/// reads the object), after it the account id. The server's cost of a write grows with
/// its fields, so a floor writing less would measure the schema, not the operator.
async fn write_status(accounts: &Api<DynamicObject>, name: &str, id: Option<&str>, ready: bool) -> anyhow::Result<()> {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": 1,
        })
    };
    let mut body = if ready {
        json!({
            "conditions": [
                condition("Ready", "True", "Synced", "the Cyclr account matches the spec"),
                condition("Reconciling", "False", "Synced", ""),
                condition("Stalled", "False", "Synced", ""),
            ],
        })
    } else {
        json!({
            "conditions": [
                condition("Ready", "False", "Creating", "creating the Cyclr account"),
                condition("Reconciling", "True", "Creating", "creating the Cyclr account"),
                condition("Stalled", "False", "Creating", ""),
            ],
            "pendingCreate": {"since": now},
        })
    };
    body["observedGeneration"] = json!(1);
    body["lastSyncTime"] = json!(Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
    if let Some(id) = id {
        body["accountID"] = json!(id);
    }
    let patch = json!({"apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount", "status": body});
    accounts
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .with_context(|| format!("writing the status of {name}"))?;
    Ok(())
}

async fn create_event(events: &Api<DynamicObject>, namespace: &str, name: &str) -> anyhow::Result<()> {
    let event: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}-"), "namespace": namespace},
        "eventTime": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "reportingController": "cyclr.com/bench-floor",
        "reportingInstance": "cyclr-bench",
        "action": "Created",
        "reason": "Created",
        "type": "Normal",
        "note": "cyclr-bench floor",
        "regarding": {
            "apiVersion": "cyclr.com/v1alpha1",
            "kind": "CyclrAccount",
            "namespace": namespace,
            "name": name,
        },
    }))?;
    events
        .create(&PostParams::default(), &event)
        .await
        .with_context(|| format!("creating an Event for {name}"))?;
    Ok(())
}
