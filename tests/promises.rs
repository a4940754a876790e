//! The promises of issue [G], each tried the way it broke for users of peer operators, on a
//! real kube-apiserver with the Cyclr simulator: identity survives status and resource loss,
//! nothing is adopted that is not ours, one Cyclr object belongs to one resource, only
//! labelled Secrets are read, secrets never reach status or Events, and the partner's
//! lifecycle (deletion, transient failures, Secret edits) never disturbs or leaks.

mod support;

use std::time::Duration;

use cyclr::types::AccountFields;
use cyclr_operator::resources::{
    CyclrAccount, CyclrAccountSpec, CyclrConnectorInstall, CyclrPartner, CyclrPartnerSpec, READY, STALLED, annotations,
    condition,
};
use cyclr_sim::Faults;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{Harness, cyclr_client, ready_message};

const CREATE: &str = "POST /api/partner/createaccount";
const UPDATE: &str = "PUT /api/partner/accounts/{id}";
const INSTALL: &str = "POST /api/partner/installconnector";

/// An account manifest; `account_id` is set through the Rust type, so the test does not
/// depend on the field's JSON spelling.
fn account(name: &str, spec: Value, account_id: Option<&str>) -> Value {
    let mut spec: CyclrAccountSpec = serde_json::from_value(spec).expect("a valid spec");
    spec.account_id = account_id.map(str::to_string);
    json!({"metadata": {"name": name}, "spec": spec})
}

/// A condition's status and reason; empty before the first status.
fn reason<K: support::HasConditions>(obj: &K, type_: &str) -> (String, String) {
    condition(obj.conditions(), type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

async fn ready_account(h: &Harness, name: &str, spec: Value) -> String {
    h.apply::<CyclrAccount>(account(name, spec, None)).await;
    h.wait_condition::<CyclrAccount>(name, READY, "True", None)
        .await
        .status
        .unwrap()
        .account_id
        .unwrap()
}

/// Rows 1 and 2, and the rest of their kind: however status or the resource is lost, the
/// id comes back from the annotation, or the operator stops before creating a twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_survives_status_loss_restore_and_reapply() {
    let h = Harness::start("identity", "10s").await;
    let spec = json!({"partnerRef": {"name": h.partner}, "description": "first"});
    let id = ready_account(&h, "acme", spec.clone()).await;
    let stored = h.account("acme").await;
    assert_eq!(
        stored.annotations().get(annotations::ACCOUNT_ID),
        Some(&id),
        "the id is kept in metadata too"
    );

    // Row 2: status.accountID removed through the status subresource, then a spec change.
    let api = h.api::<CyclrAccount>();
    // Both spellings, so the edit does not depend on the field's JSON name.
    api.patch_status(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"accountId": null, "accountID": null}})),
    )
    .await
    .expect("status edited without the id");
    let mut changed = spec.clone();
    changed["description"] = json!("second");
    h.apply::<CyclrAccount>(account("acme", changed, None)).await;
    h.wait_for("the new description in Cyclr", Duration::from_secs(30), || async {
        (h.sim.accounts()[0].description.as_deref() == Some("second")).then_some(())
    })
    .await;
    h.wait_for("the id back in status", Duration::from_secs(30), || async {
        (h.account("acme").await.status?.account_id? == id).then_some(())
    })
    .await;
    assert_eq!(h.sim.accounts().len(), 1, "no second account");
    assert_eq!(h.cyclr_requests(CREATE), 1);

    // A restore that keeps metadata but not status (Velero, a GitOps re-sync of an exported
    // object): the annotation brings the id back, no create.
    api.delete("acme", &DeleteParams::default()).await.unwrap();
    h.wait_for("acme gone", Duration::from_secs(30), || async {
        api.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    let mut restored = account("acme", spec.clone(), None);
    restored["metadata"]["annotations"] = json!({annotations::ACCOUNT_ID: id});
    h.apply::<CyclrAccount>(restored).await;
    let back = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(back.status.unwrap().account_id.as_deref(), Some(id.as_str()));
    h.wait_event("acme", "Adopted").await;

    // Row 1: deleted (Orphan) and the same manifest applied again, metadata and all lost:
    // the operator stops before creating, names the account and says how to adopt it.
    api.delete("acme", &DeleteParams::default()).await.unwrap();
    h.wait_for("acme gone", Duration::from_secs(30), || async {
        api.get_opt("acme").await.unwrap().is_none().then_some(())
    })
    .await;
    h.apply::<CyclrAccount>(account("acme", spec, None)).await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("AccountNameInUse"))
        .await;
    let message = ready_message(&stalled);
    assert!(message.contains(&id) && message.contains("spec.accountID"), "{message}");
    assert_eq!(h.sim.accounts().len(), 1, "no second account");
    assert_eq!(h.cyclr_requests(CREATE), 1);
}

/// Rows 3 and 5: an account made by hand is never adopted or changed, whatever happens to
/// the operator's create and whatever a tenant writes into annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_made_by_hand_is_never_adopted() {
    let h = Harness::start("handmade", "10s").await;
    h.wait_partner_ready("True").await;
    let cyclr = cyclr_client(&h.sim);
    let handmade = cyclr
        .create_account(&AccountFields {
            name: Some("Acme".into()),
            description: Some("made by hand".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let creates = h.cyclr_requests(CREATE);
    // Row 3: Cyclr failing creates with 5xx that did not commit, then recovering.
    h.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    let spec = json!({"partnerRef": {"name": h.partner}, "name": "Acme", "description": "from git"});
    h.apply::<CyclrAccount>(account("acme", spec.clone(), None)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.sim.set_faults(Faults::default());
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("AccountNameInUse"))
        .await;
    assert!(ready_message(&stalled).contains(&handmade));
    // Row 5: a tenant's hand-written create-pending marker decides nothing.
    let mut forged = account("forged", spec, None);
    forged["metadata"]["annotations"] = json!({"cyclr.com/create-pending": "2026-01-01T00:00:00Z"});
    h.apply::<CyclrAccount>(forged).await;
    h.wait_condition::<CyclrAccount>("forged", STALLED, "True", Some("AccountNameInUse"))
        .await;

    assert_eq!(h.cyclr_requests(CREATE), creates, "never created");
    assert_eq!(h.cyclr_requests(UPDATE), 0, "never changed");
    let accounts = h.sim.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].description.as_deref(), Some("made by hand"));
    for name in ["acme", "forged"] {
        let a = h.account(name).await;
        assert!(a.status.unwrap().account_id.is_none(), "{name} holds nothing");
    }
}

/// Rows 4 and 9: one Cyclr account belongs to one resource, wherever the other resource is;
/// an id is never switched under a resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_held_by_one_resource_cannot_be_taken_by_another() {
    let h = Harness::start("claims", "10s").await;
    let id = ready_account(
        &h,
        "acme",
        json!({"partnerRef": {"name": h.partner}, "description": "a"}),
    )
    .await;
    let updates = h.cyclr_requests(UPDATE);
    h.apply::<CyclrAccount>(account(
        "intruder",
        json!({"partnerRef": {"name": h.partner}, "description": "b"}),
        Some(&id),
    ))
    .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("intruder", STALLED, "True", Some("AccountClaimed"))
        .await;
    assert!(ready_message(&stalled).contains("/acme"), "{}", ready_message(&stalled));

    // A holder outside what this operator watches (another namespace) counts too.
    let (other, team_a) = h.held_elsewhere().await;
    h.apply::<CyclrAccount>(account(
        "team-b",
        json!({"partnerRef": {"name": h.partner}, "description": "b"}),
        Some(&other),
    ))
    .await;
    let stalled = h
        .wait_condition::<CyclrAccount>("team-b", STALLED, "True", Some("AccountClaimed"))
        .await;
    assert!(ready_message(&stalled).contains(&format!("{team_a}/holder")));

    // Row 9: accountID added to a resource that holds another account.
    let mut with_id = account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "description": "a"}),
        Some(&other),
    );
    match h.try_apply::<CyclrAccount>(&mut with_id).await {
        Err(refused) => assert!(refused.to_string().contains("accountID"), "{refused}"),
        Ok(_) => {
            h.wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("AccountIDMismatch"))
                .await;
        }
    }
    assert_eq!(h.cyclr_requests(UPDATE), updates, "no Cyclr write for any of them");
    let acme = h.account("acme").await;
    assert_eq!(acme.status.unwrap().account_id.as_deref(), Some(id.as_str()));
}

/// Row 10: one installed name per account: a second resource is refused, never adopted,
/// and two applied together make one install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_install_of_one_name_is_refused_never_adopted() {
    let h = Harness::start("install-name", "10s").await;
    let id = ready_account(&h, "acme", json!({"partnerRef": {"name": h.partner}})).await;
    h.put_secret("key-1", &[("apiKey", "first-key-value")]).await;
    h.put_secret("key-2", &[("apiKey", "second-key-value")]).await;
    let install = |name: &str, version: &str, secret: &str| {
        json!({"metadata": {"name": name}, "spec": {
            "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": version,
            "installedName": "slack", "auth": {"apiKeySecretRef": {"name": secret}}}})
    };
    h.apply::<CyclrConnectorInstall>(install("first", "1.0", "key-1")).await;
    h.wait_condition::<CyclrConnectorInstall>("first", READY, "True", None)
        .await;
    h.apply::<CyclrConnectorInstall>(install("second", "2.0", "key-2"))
        .await;
    h.wait_condition::<CyclrConnectorInstall>("second", STALLED, "True", Some("InstalledNameInUse"))
        .await;
    // Applied together.
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "third"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0", "installedName": "twin"}}))
        .await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "fourth"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0", "installedName": "twin"}}))
        .await;
    h.wait_for(
        "one of the twins installed, the other refused",
        Duration::from_secs(60),
        || async {
            let t = h.install("third").await;
            let f = h.install("fourth").await;
            let reasons = [reason(&t, READY), reason(&f, READY)];
            (reasons.iter().any(|r| r.0 == "True") && reasons.iter().any(|r| r.1 == "InstalledNameInUse")).then_some(())
        },
    )
    .await;
    let installed = h.sim.installed_connectors(&id);
    let names: Vec<&str> = installed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "slack").count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "twin").count(), 1, "{names:?}");
    assert_eq!(h.cyclr_requests(INSTALL), 2);
}

/// Row 8: an unlabelled Secret is never read, so a partner pointed at one sends nothing
/// anywhere, and says which label is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_labelled_secrets_are_read() {
    let h = Harness::start("labels", "10s").await;
    // An unrelated Secret in the operator's namespace, without the label.
    let secrets: Api<Secret> = h.api();
    secrets
        .patch(
            "unrelated",
            &PatchParams::apply("cyclr-tests"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "unrelated"},
                "stringData": {"client_id": "stolen-id", "client_secret": "stolen-secret"}})),
        )
        .await
        .unwrap();
    // A listener of the writer's choice: nothing may ever connect to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let name = format!("{}-thief", h.partner);
    let mut spec: CyclrPartnerSpec = serde_json::from_value(json!({
        "apiUrl": "http://placeholder", "apiURL": "http://placeholder",
        "credentialsSecretRef": {"name": "unrelated"}
    }))
    .unwrap();
    spec.api_url = url;
    h.apply::<CyclrPartner>(json!({"metadata": {"name": name}, "spec": spec}))
        .await;
    let partner = h
        .wait_for(
            "the partner to say the label is missing",
            Duration::from_secs(30),
            || async {
                let p = Api::<CyclrPartner>::all(h.client.clone()).get(&name).await.ok()?;
                let c = condition(&p.status.as_ref()?.conditions, READY)?.clone();
                (c.reason == "SecretNotLabelled").then_some(c)
            },
        )
        .await;
    assert_eq!(partner.status, "False");
    assert!(
        partner.message.contains("cyclr.com/credentials=true"),
        "{}",
        partner.message
    );
    let accepted = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await;
    assert!(accepted.is_err(), "nothing connects to the listener");
    Api::<CyclrPartner>::all(h.client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

/// Row 6: a deleted partner stops every Cyclr call at once and its accounts say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_partner_stops_all_calls_at_once() {
    let h = Harness::start("partner-gone", "10s").await;
    ready_account(&h, "acme", json!({"partnerRef": {"name": h.partner}})).await;
    Api::<CyclrPartner>::all(h.client.clone())
        .delete(&h.partner, &DeleteParams::default())
        .await
        .unwrap();
    h.api::<Secret>()
        .delete("partner-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let gone = h
        .wait_condition::<CyclrAccount>("acme", READY, "False", Some("PartnerNotFound"))
        .await;
    assert!(ready_message(&gone).contains(&h.partner));
    let calls = h.sim.stats().total_requests();
    h.apply::<CyclrAccount>(account(
        "acme",
        json!({"partnerRef": {"name": h.partner}, "description": "changed"}),
        None,
    ))
    .await;
    h.apply::<CyclrAccount>(account("newcomer", json!({"partnerRef": {"name": h.partner}}), None))
        .await;
    h.wait_condition::<CyclrAccount>("newcomer", READY, "False", Some("PartnerNotFound"))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.sim.stats().total_requests(), calls, "no Cyclr call after the delete");
    assert_eq!(h.sim.accounts().len(), 1);
}

/// Rows 7 and 12: a short Cyclr outage during the partner's check, and an edit of the
/// credentials Secret that changes no value, leave the accounts alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_hiccups_and_secret_edits_do_not_disturb_accounts() {
    let h = Harness::start("partner-calm", "5m").await;
    for name in ["a1", "a2", "a3"] {
        ready_account(&h, name, json!({"partnerRef": {"name": h.partner}})).await;
    }
    let versions = |accounts: Vec<CyclrAccount>| {
        accounts
            .into_iter()
            .map(|a| (a.name_any(), a.resource_version()))
            .collect::<Vec<_>>()
    };
    let list = || async { h.api::<CyclrAccount>().list(&Default::default()).await.unwrap().items };
    let secrets = h.api::<Secret>();
    let label = |value: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "partner-credentials",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"team": value}}})),
                )
                .await
                .unwrap();
        }
    };
    // A first edit of the Secret (a label: no value changed) checks the partner; a new
    // account's usage is in status from its create, so nothing is due after that.
    label("payments").await;
    h.wait_for("usage in every account", Duration::from_secs(30), || async {
        list()
            .await
            .iter()
            .all(|a| a.status.as_ref().is_some_and(|s| s.usage.is_some()))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = versions(list().await);

    // Row 12: a label changed on the Secret: no value changed.
    label("billing").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(versions(list().await), before, "no account status was written");

    // Row 7: Cyclr answers 5xx for under 2 s while the partner is checked.
    h.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    Api::<CyclrPartner>::all(h.client.clone())
        .patch(
            &h.partner,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"usageInterval": "6m"}})),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        for a in list().await {
            assert_eq!(reason(&a, READY).0, "True", "{} stays Ready", a.name_any());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.sim.set_faults(Faults::default());
    let started = std::time::Instant::now();
    h.wait_partner_ready("True").await;
    for a in list().await {
        assert_eq!(reason(&a, READY).0, "True", "{} stays Ready", a.name_any());
    }
    eprintln!("partner ready again {:?} after the outage", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retried with backoff, not after a resync"
    );
}

/// Row 13: a deleted account's series leave /metrics with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_no_metric_series() {
    let h = Harness::start("series", "10s").await;
    ready_account(&h, "acme", json!({"partnerRef": {"name": h.partner}})).await;
    let series = "name=\"acme\"";
    h.wait_for("usage series for acme", Duration::from_secs(30), || async {
        h.metrics.encode().contains(series).then_some(())
    })
    .await;
    h.api::<CyclrAccount>()
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    h.wait_for("the series gone", Duration::from_secs(30), || async {
        (!h.metrics.encode().contains(series)).then_some(())
    })
    .await;
}

/// Row 11: Cyclr's error text echoing the API key never reaches status, Events or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_echoed_by_cyclr_is_scrubbed_from_status_and_events() {
    let h = Harness::start("scrub", "10s").await;
    ready_account(&h, "acme", json!({"partnerRef": {"name": h.partner}})).await;
    let key = "sk-live-4f9a1c2e7b3d";
    h.put_secret("slack-key", &[("apiKey", key)]).await;
    h.sim.set_faults(Faults {
        install_error_echoes_credentials: true,
        ..Default::default()
    });
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "slack"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "1.0",
        "auth": {"apiKeySecretRef": {"name": "slack-key"}}}}))
        .await;
    let refused = h
        .wait_condition::<CyclrConnectorInstall>("slack", STALLED, "True", Some("CyclrRejected"))
        .await;
    let message = ready_message(&refused);
    assert!(
        message.contains("[redacted]"),
        "Cyclr's message is kept, the key is not: {message}"
    );
    let event = h.wait_event("slack", "CyclrRejected").await;
    let everything = format!(
        "{} {:?} {}",
        serde_json::to_string(&refused).unwrap(),
        event.note,
        h.metrics.encode()
    );
    assert!(!everything.contains(key), "the key leaked: {everything}");
}

/// Deliver 4 and 5: a partner serves only the namespaces its `namespaceSelector` selects,
/// and a paused partner makes no calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_serves_only_the_namespaces_it_selects_and_honours_pause() {
    let h = Harness::start("tenancy", "10s").await;
    h.wait_partner_ready("True").await;
    let partners = Api::<CyclrPartner>::all(h.client.clone());
    partners
        .patch(
            &h.partner,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"namespaceSelector": {"matchLabels": {"tier": "gold"}}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.apply::<CyclrAccount>(account("acme", json!({"partnerRef": {"name": h.partner}}), None))
        .await;
    let refused = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("PartnerNotAllowed"))
        .await;
    assert!(ready_message(&refused).contains("namespaceSelector"));
    assert_eq!(h.cyclr_requests(CREATE), 0);
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(h.client.clone());
    let tier = |tier: &'static str| {
        let namespaces = namespaces.clone();
        let namespace = h.namespace.clone();
        async move {
            namespaces
                .patch(
                    &namespace,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"tier": tier}}})),
                )
                .await
                .unwrap();
        }
    };
    // Selecting the namespace lets it through, with no spec change.
    tier("gold").await;
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    // Settled, the account sleeps until its usage read (an hour now); the namespace losing
    // the label wakes it at once, and it stops using the partner.
    h.set_intervals("10s", "1h").await;
    h.wait_partner_applied().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tier("silver").await;
    h.wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("PartnerNotAllowed"))
        .await;

    // Paused: the partner's check stops, and so do its calls.
    partners
        .patch(
            &h.partner,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotations::PAUSED: "true"}}})),
        )
        .await
        .unwrap();
    h.wait_for("the partner paused", Duration::from_secs(30), || async {
        let p = partners.get(&h.partner).await.ok()?;
        (condition(&p.status?.conditions, READY)?.reason == "Paused").then_some(())
    })
    .await;
    let details = h.cyclr_requests("GET /api/partner/details");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        h.cyclr_requests("GET /api/partner/details"),
        details,
        "no check while paused (resync is 10 s)"
    );
}
