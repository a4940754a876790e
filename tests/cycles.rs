//! Issue #20 ([K]), `CyclrCycle` on a CyclrPartner with `spec.cyclrAPI: V1`, one test per
//! row on the real control plane with the simulator as Cyclr: a template installed once and
//! activated (row 1), an unauthenticated connector (row 2), other prerequisites (row 3), a
//! variable changed while Active (row 4), Paused and back, `observedGeneration` moving only
//! once Cyclr shows it (row 5), drift made in Cyclr, corrected or under `ObserveOnly` only
//! reported (row 6), a cycle deleted in Cyclr or with its resource (row 7), `kubectl cyclr auth` and
//! `status` (row 8) and bad input (row 10); Flux's kstatus reads a Ready cycle as Current and
//! one waiting for a person as Failed.

mod support;

use std::time::Duration;

use cyclr::types::{CycleStatus, Prerequisite};
use cyclr_operator::resources::{CYCLE_FINALIZER, CyclrAccount, CyclrConnectorInstall, CyclrCycle, READY, annotations};
use cyclr_sim::{Faults, TemplateConnectorSeed, TemplateSeed, VariableSeed};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, ValidationDirective};
use serde_json::json;
use support::kstatus::kstatus;
use support::{Harness, HasConditions, cyclr_client, ready_message};

impl HasConditions for CyclrCycle {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

const INSTALL: &str = "POST /v1.0/templates/{id}/install";
const ACTIVATE: &str = "PUT /v1.0/cycles/{id}/activate";
const DEACTIVATE: &str = "PUT /v1.0/cycles/{id}/deactivate";
const LIST_CYCLES: &str = "GET /v1.0/cycles";
const INSTALL_CONNECTOR: &str = "POST /v1.0/connectors/{connector}/install";

/// A template `id` named `name` needing `connectors` (name, auth type), with a variable
/// `region` (`eu`).
fn template(id: &str, name: &str, connectors: &[(&str, &str)]) -> TemplateSeed {
    TemplateSeed {
        id: Some(id.into()),
        name: name.into(),
        description: None,
        connectors: connectors
            .iter()
            .map(|(name, auth)| TemplateConnectorSeed {
                name: (*name).into(),
                version: None,
                auth_type: Some((*auth).into()),
            })
            .collect(),
        variables: vec![VariableSeed {
            system_name: "region".into(),
            display_name: Some("Region".into()),
            value: Some("eu".into()),
        }],
        prerequisites: Vec::new(),
    }
}

/// A harness on a V1 partner (resync every 10 s) with Ready CyclrAccount `acme`: its id.
async fn with_account(prefix: &str) -> (Harness, String) {
    let h = Harness::start_v1(prefix, "10s").await;
    h.wait_partner_ready("True").await;
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    let ready = h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    let id = ready.status.and_then(|s| s.account_id).expect("an id when Ready");
    (h, id)
}

/// A harness with Ready account `acme` and cycle `sync` of the template `sync`, which needs
/// only the Clock connector (no credentials), Ready with `spec` (templateRef added): the
/// account's id and the cycle's.
async fn with_ready_cycle(prefix: &str, spec: serde_json::Value) -> (Harness, String, String) {
    let (h, account) = with_account(prefix).await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Clock", "None")]));
    let mut spec = spec;
    spec["templateRef"] = json!({"id": "sync"});
    apply_cycle(&h, "sync", spec).await;
    let id = ready(&h, "sync").await.status.and_then(|s| s.cycle_id).expect("id");
    (h, account, id)
}

async fn apply_cycle(h: &Harness, name: &str, spec: serde_json::Value) -> CyclrCycle {
    let mut spec = spec;
    spec["accountRef"] = json!({"name": "acme"});
    h.apply::<CyclrCycle>(json!({"metadata": {"name": name}, "spec": spec}))
        .await
}

async fn cycle(h: &Harness, name: &str) -> CyclrCycle {
    h.api::<CyclrCycle>().get(name).await.expect("get CyclrCycle")
}

/// Waits until the cycle is Ready for its current generation.
async fn ready(h: &Harness, name: &str) -> CyclrCycle {
    h.wait_for(
        &format!("CyclrCycle {name} Ready for its generation"),
        Duration::from_secs(60),
        || async {
            let c = cycle(h, name).await;
            let status = c.status.as_ref()?;
            let ready = cyclr_operator::resources::condition(&status.conditions, READY)?;
            (ready.status == "True" && status.observed_generation == c.metadata.generation).then_some(c)
        },
    )
    .await
}

/// Waits until the cycle is Stalled for `reason`, with Ready's message naming `names`.
async fn stalled(h: &Harness, name: &str, reason: &str, names: &str) -> CyclrCycle {
    let stalled = h
        .wait_condition::<CyclrCycle>(name, "Stalled", "True", Some(reason))
        .await;
    let message = ready_message(&stalled);
    assert!(message.contains(names), "{message}");
    stalled
}

/// The simulator's status of the account's cycle `id`.
fn sim_status(h: &Harness, account: &str, id: &str) -> Option<CycleStatus> {
    h.sim.cycles(account).into_iter().find(|c| c.id == id).map(|c| c.status)
}

async fn variable(h: &Harness, account: &str, cycle: &str, name: &str) -> Option<String> {
    cyclr_client(&h.sim)
        .cycle_variables_v1(account, cycle)
        .await
        .expect("read the variables")
        .into_iter()
        .find(|v| v.system_name == name)
        .and_then(|v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row1_a_template_is_installed_once_and_activated_with_its_schedule() {
    let (h, account) = with_account("cyc-install").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Clock", "None")]));
    h.sim
        .add_template(template("digest", "Daily digest", &[("Clock", "None")]));
    let by_name_every = |minutes: u32| {
        json!({"templateRef": {"name": "Tickets sync"}, "schedule": {"interval": minutes, "startTime": "2026-01-01T00:00:00Z"},
               "variables": [{"name": "region", "value": "us"}]})
    };
    apply_cycle(&h, "by-name", by_name_every(15)).await;
    apply_cycle(&h, "by-id", json!({"templateRef": {"id": "digest"}, "state": "Active"})).await;

    let by_name = ready(&h, "by-name").await;
    assert_eq!(
        kstatus(&serde_json::to_value(&by_name).unwrap()).0,
        "Current",
        "Flux's kstatus"
    );
    let status = by_name.status.clone().expect("status");
    let id = status.cycle_id.clone().expect("the cycle id");
    assert_eq!(status.cyclr_status.as_deref(), Some("Active"));
    assert_eq!(status.account_id.as_deref(), Some(account.as_str()));
    assert_eq!(status.template_id.as_deref(), Some("sync"));
    assert_eq!(status.connectors.len(), 1, "{status:?}");
    assert!(status.connectors[0].authenticated && status.connectors[0].account_connector_id.is_some());
    assert!(status.tasks_used.is_some() && status.error_count == Some(0));
    assert!(status.pending_install.is_none());
    assert_eq!(by_name.annotations().get(annotations::CYCLE_ID), Some(&id));
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Active));
    assert_eq!(variable(&h, &account, &id, "region").await.as_deref(), Some("us"));
    let by_id = ready(&h, "by-id").await;
    assert_eq!(by_id.status.and_then(|s| s.template_id).as_deref(), Some("digest"));

    // One install per resource, though both reused the account's one Clock connector.
    assert_eq!(h.sim.cycles(&account).len(), 2);
    assert_eq!(h.cyclr_requests(INSTALL), 2);
    assert_eq!(h.sim.installed_connectors(&account).len(), 1);
    let installed = h.wait_event("by-name", "Installed").await;
    assert!(installed.note.unwrap_or_default().contains(&id));
    // A resync (every 10 s) looks again and installs nothing.
    let lists = h.cyclr_requests("GET /v1.0/cycles");
    h.wait_for("a resync's cycle list", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/cycles") > lists).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(INSTALL), 2);
    assert_eq!(h.sim.cycles(&account).len(), 2);

    // A new schedule (Cyclr shows none): deactivated and activated again with it.
    let (deactivations, activations) = (h.cyclr_requests(DEACTIVATE), h.cyclr_requests(ACTIVATE));
    apply_cycle(&h, "by-name", by_name_every(60)).await;
    let rescheduled = ready(&h, "by-name").await;
    assert_eq!(rescheduled.metadata.generation, Some(2));
    let sent = rescheduled
        .status
        .and_then(|s| s.activated_schedule)
        .and_then(|s| s.interval);
    assert_eq!(sent, Some(60));
    assert_eq!(h.cyclr_requests(DEACTIVATE), deactivations + 1);
    assert_eq!(h.cyclr_requests(ACTIVATE), activations + 1);
    let updated = h.wait_event("by-name", "Updated").await.note.unwrap_or_default();
    assert!(updated.contains("every 60 minutes"), "{updated}");
}

/// Row 1's pending-write protocol: the install applied in Cyclr and its answer lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row1_an_install_whose_answer_was_lost_is_found_never_installed_twice() {
    let (h, account) = with_account("cyc-lost").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Clock", "None")]));
    // The next write, the install, is applied and then answered 500.
    h.sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Faults::default()
    });
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}})).await;
    let active = ready(&h, "sync").await;
    let in_cyclr = h.sim.cycles(&account);
    assert_eq!(in_cyclr.len(), 1, "installed once: {in_cyclr:?}");
    assert_eq!(h.cyclr_requests(INSTALL), 1, "the install was never sent again");
    assert_eq!(h.sim.stats().lost_responses, 1, "the fault was used");
    let status = active.status.expect("status");
    assert_eq!(status.cycle_id.as_deref(), Some(in_cyclr[0].id.as_str()));
    assert_eq!(sim_status(&h, &account, &in_cyclr[0].id), Some(CycleStatus::Active));
    h.wait_event("sync", "Adopted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row2_an_unauthenticated_connector_is_named_and_never_activated_until_authenticated() {
    let (h, account) = with_account("cyc-auth").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Tickets", "ApiKey")]));
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}})).await;
    let stalled = h
        .wait_condition::<CyclrCycle>("sync", "Stalled", "True", Some("ConnectorNotAuthenticated"))
        .await;
    assert_eq!(
        kstatus(&serde_json::to_value(&stalled).unwrap()).0,
        "Failed",
        "a person must act"
    );
    let status = stalled.status.clone().expect("status");
    let connector = status.connectors[0].account_connector_id.clone().expect("its id");
    let message = ready_message(&stalled);
    assert!(
        message.contains("Tickets")
            && message.contains(&format!("account connector {connector}"))
            && message.contains("CyclrConnectorInstall")
            && message.contains("kubectl cyclr auth"),
        "{message}"
    );
    assert!(!status.connectors[0].authenticated);
    // Rechecked at the partner's resync, without an activation that must fail.
    let checks = h.cyclr_requests("GET /v1.0/cycles/{id}/prerequisites");
    h.wait_for("a recheck", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/cycles/{id}/prerequisites") > checks).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(ACTIVATE), 0);

    // A person authenticates it (the OAuth link of `kubectl cyclr auth`): Active at the next look.
    assert!(h.sim.set_connector_authenticated(&account, &connector, true));
    let active = ready(&h, "sync").await;
    assert_eq!(active.status.and_then(|s| s.cyclr_status).as_deref(), Some("Active"));
    assert_eq!(h.cyclr_requests(ACTIVATE), 1);
}

/// Row 2, as GitOps applies a directory: a cycle applied together with the
/// CyclrConnectorInstall of its template's connector waits for that install (here slowed by a
/// Cyclr outage of the install endpoint) and then uses its authenticated account connector,
/// Active with no person and one account connector. Installed first, the template would make
/// an unauthenticated connector of its own and wait for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row2_a_cycle_applied_with_its_connectors_install_waits_for_it_and_uses_it() {
    let (h, account) = with_account("cyc-order").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Tickets", "ApiKey")]));
    h.sim.set_faults(Faults {
        outage: Duration::from_secs(8),
        outage_endpoints: vec![INSTALL_CONNECTOR.into()],
        ..Default::default()
    });
    h.put_secret("tickets-key", &[("apiKey", "tickets-api-key-value")])
        .await;
    h.apply::<CyclrConnectorInstall>(json!({"metadata": {"name": "tickets"}, "spec": {
        "accountRef": {"name": "acme"}, "connectorName": "Tickets", "connectorVersion": "v1",
        "auth": {"apiKeySecretRef": {"name": "tickets-key"}}}}))
        .await;
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}})).await;
    let waiting = h
        .wait_condition::<CyclrCycle>("sync", READY, "False", Some("ConnectorInstallPending"))
        .await;
    assert!(
        ready_message(&waiting).contains("tickets (Tickets)"),
        "{}",
        ready_message(&waiting)
    );
    assert_eq!(
        h.cyclr_requests(INSTALL),
        0,
        "no template install before its connector's"
    );
    let active = ready(&h, "sync").await;
    assert_eq!(active.status.and_then(|s| s.cyclr_status).as_deref(), Some("Active"));
    assert_eq!(h.cyclr_requests(INSTALL), 1);
    let connectors = h.sim.account_connectors(&account);
    assert_eq!(
        connectors.len(),
        1,
        "the template used the installed account connector: {connectors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row3_other_prerequisites_stall_with_cyclrs_reasons_and_no_activate_storm() {
    let (h, _) = with_account("cyc-prereq").await;
    let mut seed = template("sync", "Tickets sync", &[("Clock", "None")]);
    seed.prerequisites = vec![Prerequisite {
        reason_code: 41,
        reason: "Field 'Email' is not mapped.".into(),
        object_type: Some("Step".into()),
        object_id: Some("7".into()),
    }];
    h.sim.add_template(seed);
    apply_cycle(&h, "sync", json!({"templateRef": {"name": "Tickets sync"}})).await;
    stalled(
        &h,
        "sync",
        "PrerequisitesNotMet",
        "Field 'Email' is not mapped. (reason code 41)",
    )
    .await;
    let checks = h.cyclr_requests("GET /v1.0/cycles/{id}/prerequisites");
    h.wait_for("a recheck", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/cycles/{id}/prerequisites") > checks).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(ACTIVATE), 0, "never an activation that must fail");
    assert_eq!(h.cyclr_requests(INSTALL), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row4_a_variable_changed_while_active_is_set_between_a_deactivate_and_an_activate() {
    let (h, account, id) =
        with_ready_cycle("cyc-vars", json!({"variables": [{"name": "region", "value": "us"}]})).await;
    assert_eq!(h.cyclr_requests(DEACTIVATE), 0, "set before the first activation");
    assert!(
        h.events("sync", "Updated").await.is_empty(),
        "a new cycle's first variables and activation are said by status alone"
    );
    let secret_value = "token-from-a-secret-7f3a";
    h.put_secret("region", &[("value", secret_value)]).await;
    apply_cycle(
        &h,
        "sync",
        json!({"templateRef": {"id": "sync"}, "finishQueuedTransactions": false,
               "variables": [{"name": "region", "valueFrom": {"secretKeyRef": {"name": "region", "key": "value"}}}]}),
    )
    .await;
    let updated = ready(&h, "sync").await;
    assert_eq!(
        variable(&h, &account, &id, "region").await.as_deref(),
        Some(secret_value)
    );
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Active));
    assert_eq!(h.cyclr_requests(DEACTIVATE), 1);
    assert_eq!(h.cyclr_requests(ACTIVATE), 2);
    let events = h.events("sync", "Updated").await;
    assert_eq!(events.len(), 1, "one Event: {events:?}");
    assert!(events[0].series.is_none(), "published once: {events:?}");
    let note = events[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("deactivated") && note.contains("region") && note.contains("activated it"),
        "{note}"
    );
    // Never shown: not in status, Events or conditions.
    let shown = serde_json::to_string(&updated.status).unwrap() + &serde_json::to_string(&events).unwrap();
    assert!(!shown.contains(secret_value));
    assert!(h.events("sync", "CyclrRejected").await.is_empty(), "no 409 surfaced");

    // The Secret's value changes: the same again.
    h.put_secret("region", &[("value", "another-value-0b1c")]).await;
    h.wait_for("the new value in Cyclr", Duration::from_secs(60), || async {
        (variable(&h, &account, &id, "region").await.as_deref() == Some("another-value-0b1c")).then_some(())
    })
    .await;
    ready(&h, "sync").await;
    h.wait_for("the cycle Active again", Duration::from_secs(60), || async {
        (sim_status(&h, &account, &id) == Some(CycleStatus::Active)).then_some(())
    })
    .await;
}

/// Waits until the cycle says Cyclr answered a change to `to` that it does not show yet.
async fn answered_not_shown(h: &Harness, name: &str, to: &str) -> CyclrCycle {
    h.wait_for(
        &format!("CyclrCycle {name} looking for Cyclr to show it {to}"),
        Duration::from_secs(60),
        || async {
            let c = cycle(h, name).await;
            let ready = cyclr_operator::resources::condition(&c.status.as_ref()?.conditions, READY)?;
            ready.message.contains(&format!("show the cycle {to}")).then_some(c)
        },
    )
    .await
}

/// The cycle's generation is not observed while Cyclr holds back a change it answered (the
/// fault `hold_cycle_changes`), and the change is looked for, not sent again: `endpoint` stays
/// at `sent` calls.
async fn held_back(h: &Harness, name: &str, to: &str, observed: i64, (endpoint, sent): (&str, u64)) {
    let waiting = answered_not_shown(h, name, to).await;
    let status = waiting.status.clone().expect("status");
    assert_eq!(waiting.metadata.generation, Some(observed + 1));
    assert_eq!(status.observed_generation, Some(observed), "Cyclr does not show it yet");
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(observed)),
        "{:?}",
        status.conditions
    );
    assert_eq!(kstatus(&serde_json::to_value(&waiting).unwrap()).0, "InProgress");
    let lists = h.cyclr_requests("GET /v1.0/cycles");
    h.wait_for("two more looks at the cycle list", Duration::from_secs(60), || async {
        (h.cyclr_requests("GET /v1.0/cycles") >= lists + 2).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(endpoint), sent, "{endpoint} not sent again");
    let still = cycle(h, name).await.status.and_then(|s| s.observed_generation);
    assert_eq!(still, Some(observed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row5_paused_then_active_again_moves_observed_generation_with_cyclr() {
    let (h, account, id) = with_ready_cycle("cyc-pause", json!({})).await;
    let hold = Faults {
        hold_cycle_changes: true,
        ..Faults::default()
    };

    // Cyclr answers the deactivation but still shows the cycle Active (finishing its queue).
    h.sim.set_faults(hold.clone());
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}, "state": "Paused"})).await;
    held_back(&h, "sync", "Paused", 1, (DEACTIVATE, 1)).await;
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Active));
    h.sim.set_faults(Faults::default());
    let paused = ready(&h, "sync").await;
    assert_eq!(paused.metadata.generation, Some(2));
    assert_eq!(paused.status.and_then(|s| s.cyclr_status).as_deref(), Some("Paused"));
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Paused));
    assert_eq!(h.cyclr_requests(DEACTIVATE), 1);

    // And the activation back.
    h.sim.set_faults(hold);
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}, "state": "Active"})).await;
    held_back(&h, "sync", "Active", 2, (ACTIVATE, 2)).await;
    h.sim.set_faults(Faults::default());
    let active = ready(&h, "sync").await;
    assert_eq!(active.metadata.generation, Some(3));
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Active));
    assert_eq!(h.cyclr_requests(ACTIVATE), 2);
    assert_eq!(h.cyclr_requests(INSTALL), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row6_a_cycle_paused_in_cyclr_is_activated_again_at_the_next_resync() {
    let (h, account, id) = with_ready_cycle("cyc-drift", json!({"schedule": {"interval": 60}})).await;
    // Someone pauses it in Cyclr's console.
    cyclr_client(&h.sim)
        .deactivate_cycle_v1(&account, &id, true)
        .await
        .expect("pause it in Cyclr");
    let corrected = h.wait_event("sync", "DriftCorrected").await;
    assert!(corrected.note.unwrap_or_default().contains("every 60 minutes"));
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Active));
    assert_eq!(h.cyclr_requests(INSTALL), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row6_under_observe_only_a_cycle_paused_in_cyclr_is_only_reported() {
    let (h, account, id) = with_ready_cycle("cyc-observe", json!({})).await;
    // Handed over to people working in Cyclr's console: the operator only watches.
    apply_cycle(
        &h,
        "sync",
        json!({"templateRef": {"id": "sync"}, "managementPolicy": "ObserveOnly"}),
    )
    .await;
    let observed = h
        .wait_condition::<CyclrCycle>("sync", READY, "True", Some("Observed"))
        .await;
    assert_eq!(observed.status.and_then(|s| s.observed_generation), Some(2));
    cyclr_client(&h.sim)
        .deactivate_cycle_v1(&account, &id, true)
        .await
        .expect("pause it in Cyclr");
    let note = h.wait_event("sync", "Observed").await.note.unwrap_or_default();
    assert!(note.contains("Paused") && note.contains("not corrected"), "{note}");
    let reported = h
        .wait_for("the difference in Ready's message", Duration::from_secs(60), || async {
            let c = cycle(&h, "sync").await;
            ready_message(&c).contains("not corrected").then_some(c)
        })
        .await;
    assert_eq!(kstatus(&serde_json::to_value(&reported).unwrap()).0, "Current");
    assert_eq!(reported.status.and_then(|s| s.cyclr_status).as_deref(), Some("Paused"));
    // Later resyncs look again and write nothing.
    let lists = h.cyclr_requests("GET /v1.0/cycles");
    h.wait_for("a resync's cycle list", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/cycles") > lists).then_some(())
    })
    .await;
    assert_eq!(h.cyclr_requests(ACTIVATE), 1, "only the first activation");
    assert_eq!(sim_status(&h, &account, &id), Some(CycleStatus::Paused));
    assert!(h.events("sync", "DriftCorrected").await.is_empty());

    // A resource that holds no cycle has nothing to observe: said, nothing installed.
    apply_cycle(
        &h,
        "unheld",
        json!({"templateRef": {"id": "sync"}, "managementPolicy": "ObserveOnly"}),
    )
    .await;
    stalled(&h, "unheld", "InvalidSpec", "spec.managementPolicy").await;
    assert_eq!(h.cyclr_requests(INSTALL), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row7_a_cycle_deleted_in_cyclr_is_reported_never_reinstalled_and_delete_deletes_it() {
    let (h, account) = with_account("cyc-delete").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Clock", "None")]));
    apply_cycle(&h, "gone", json!({"templateRef": {"id": "sync"}})).await;
    apply_cycle(
        &h,
        "deleted",
        json!({"templateRef": {"id": "sync"}, "deletionPolicy": "Delete"}),
    )
    .await;
    apply_cycle(&h, "kept", json!({"templateRef": {"id": "sync"}})).await;
    let gone = ready(&h, "gone").await.status.and_then(|s| s.cycle_id).expect("id");
    let deleted = ready(&h, "deleted").await;
    let kept = ready(&h, "kept").await.status.and_then(|s| s.cycle_id).expect("id");
    assert!(deleted.finalizers().contains(&CYCLE_FINALIZER.to_string()));
    let deleted = deleted.status.and_then(|s| s.cycle_id).expect("id");

    // Deleted in Cyclr: said, never installed again.
    cyclr_client(&h.sim)
        .delete_cycle_v1(&account, &gone)
        .await
        .expect("delete it in Cyclr");
    stalled(&h, "gone", "ExternalCycleMissing", &gone).await;
    assert_eq!(h.cyclr_requests(INSTALL), 3);

    // Deleted with its resource (Delete), or left in Cyclr (Orphan, the default).
    for name in ["deleted", "kept"] {
        h.api::<CyclrCycle>()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the CyclrCycle");
    }
    for name in ["deleted", "kept"] {
        h.wait_for(&format!("CyclrCycle {name} gone"), Duration::from_secs(60), || async {
            h.api::<CyclrCycle>()
                .get_opt(name)
                .await
                .ok()
                .and_then(|found| found.is_none().then_some(()))
        })
        .await;
    }
    assert_eq!(sim_status(&h, &account, &deleted), None, "deleted in Cyclr");
    assert_eq!(sim_status(&h, &account, &kept), Some(CycleStatus::Active), "Orphan");
    assert_eq!(
        h.cyclr_requests("DELETE /v1.0/cycles/{id}"),
        2,
        "the test's own and Delete's"
    );
    let event = h.wait_event("deleted", "Deleted").await;
    assert!(event.note.unwrap_or_default().contains(&deleted));
}

/// Applies `spec` as CyclrCycle `name` with strict field validation: the API server's answer.
async fn try_cycle(h: &Harness, name: &str, spec: serde_json::Value) -> Result<(), String> {
    let object = json!({
        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrCycle",
        "metadata": {"name": name, "labels": {"cyclr.com/test": h.namespace}},
        "spec": spec,
    });
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(h.client.clone(), &h.namespace, &ApiResource::erase::<CyclrCycle>(&()));
    let params = PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply("cyclr-tests").force()
    };
    api.patch(name, &params, &Patch::Apply(&object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Waits for the partner's next resync (its account list, every 10 s here), then a moment for
/// the reconciles it wakes.
async fn after_next_resync(h: &Harness) {
    let lists = h.cyclr_requests("GET /v1.0/accounts");
    h.wait_for("the partner's next resync", Duration::from_secs(40), || async {
        (h.cyclr_requests("GET /v1.0/accounts") > lists).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Row 9 in small (`CYCLES=3 make bench` runs 500 accounts of 3): the three Ready cycles of
/// an account share its cycle list, one `GET /v1.0/cycles` per partner resync (never a read
/// per cycle), and resyncs with nothing to change send Cyclr no cycle write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row9_the_cycles_of_an_account_share_one_list_per_resync() {
    let (h, account, _) = with_ready_cycle("cyc-share", json!({})).await;
    for name in ["sync-2", "sync-3"] {
        apply_cycle(&h, name, json!({"templateRef": {"id": "sync"}})).await;
        ready(&h, name).await;
    }
    assert_eq!(h.sim.cycles(&account).len(), 3);
    after_next_resync(&h).await;
    let counts = || {
        [LIST_CYCLES, "GET /v1.0/cycles/{id}", INSTALL, ACTIVATE, DEACTIVATE].map(|endpoint| h.cyclr_requests(endpoint))
    };
    let before = counts();
    for _ in 0..3 {
        after_next_resync(&h).await;
    }
    let [lists, reads, installs, activations, deactivations] = std::array::from_fn(|i| counts()[i] - before[i]);
    // Three resyncs, and at most one more list for a resync that straddled the window's ends.
    assert!(
        (3..=4).contains(&lists),
        "{lists} cycle lists over 3 resyncs of 3 cycles"
    );
    assert_eq!(reads, 0, "no cycle is read on its own");
    assert_eq!((installs, activations, deactivations), (0, 0, 0), "nothing to change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row10_bad_input_is_refused_at_admission_or_stalled_before_any_install() {
    let (h, _) = with_account("cyc-admission").await;
    let acme = json!({"name": "acme"});
    let refused = [
        (
            json!({"accountRef": acme, "templateRef": {"id": "sync"}, "schedule": {"interval": 7}}),
            "spec.schedule.interval",
            "Cyclr's intervals",
        ),
        (
            json!({"accountRef": acme, "templateRef": {"id": "sync"}, "schedule": {"interval": 15, "runOnce": true}}),
            "spec.schedule",
            "runOnce",
        ),
        (
            json!({"accountRef": acme, "templateRef": {"id": "sync"}, "variables": [{"name": "region"}]}),
            "spec.variables[0]",
            "exactly one of value and valueFrom",
        ),
        (
            json!({"accountRef": acme, "templateRef": {"id": "sync", "name": "Tickets sync"}}),
            "spec.templateRef",
            "exactly one of id or name",
        ),
        (
            json!({"accountRef": {"name": "acme", "namespace": "elsewhere"}, "templateRef": {"id": "sync"}}),
            "spec.accountRef.namespace",
            "not declared in schema",
        ),
        (
            json!({"accountRef": acme, "templateRef": {"id": "sync"}, "schedule": {"startTime": "tomorrow"}}),
            "spec.schedule.startTime",
            "RFC 3339",
        ),
    ];
    for (spec, field, why) in refused {
        let error = try_cycle(&h, "bad", spec.clone())
            .await
            .expect_err(&format!("{spec} refused"));
        assert!(error.contains(field) && error.contains(why), "{spec}: {error}");
    }
    try_cycle(
        &h,
        "good",
        json!({"accountRef": acme, "templateRef": {"name": "No such template"}}),
    )
    .await
    .expect("a well-formed cycle is admitted");
    for (spec, field) in [
        (
            json!({"accountRef": acme, "templateRef": {"name": "Other"}}),
            "spec.templateRef",
        ),
        (
            json!({"accountRef": {"name": "other"}, "templateRef": {"name": "No such template"}}),
            "spec.accountRef",
        ),
    ] {
        let error = try_cycle(&h, "good", spec).await.expect_err("immutable");
        assert!(error.contains(field) && error.contains("immutable"), "{error}");
    }
    // examples/cycles.yaml is admitted as it is.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cycles.yaml")).unwrap();
    let mut examples = 0;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: serde_json::Value = serde::Deserialize::deserialize(document).expect("YAML");
        if object["kind"] == "CyclrCycle" {
            examples += 1;
            let name = object["metadata"]["name"].as_str().unwrap();
            try_cycle(&h, name, object["spec"].clone())
                .await
                .unwrap_or_else(|e| panic!("examples/cycles.yaml {name}: {e}"));
        }
    }
    assert_eq!(examples, 1);
    // Unknown to Cyclr: said with the field, nothing installed.
    stalled(&h, "good", "TemplateNotFound", "spec.templateRef.name").await;
    assert_eq!(h.cyclr_requests(INSTALL), 0);
}

/// Runs the built `kubectl-cyclr` against this test's namespace (where the harness keeps the
/// partner's credentials Secret too).
async fn plugin(h: &Harness, args: &[&str]) -> std::process::Output {
    let env = cyclr_testenv::TestEnv::get().await;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-cyclr"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .args(["-n", &h.namespace, "--operator-namespace", &h.namespace])
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("CYCLR_OPERATOR_NAMESPACE")
        .output()
        .await
        .expect("run kubectl-cyclr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row8_kubectl_cyclr_auth_prints_the_connector_auth_link_and_status_lists_the_cycle() {
    let (h, _) = with_account("cyc-plugin").await;
    h.sim
        .add_template(template("sync", "Tickets sync", &[("Tickets", "OAuth2")]));
    apply_cycle(&h, "sync", json!({"templateRef": {"id": "sync"}})).await;
    let stalled = h
        .wait_condition::<CyclrCycle>("sync", "Stalled", "True", Some("ConnectorNotAuthenticated"))
        .await;
    let connector = stalled
        .status
        .and_then(|s| s.connectors[0].account_connector_id.clone())
        .expect("its id");

    let out = plugin(&h, &["auth", "acme", "Tickets"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "auth failed: {stderr}");
    let base = h.sim.base_url();
    let prefix = format!("{base}/connectorauth/updateaccountconnectoroauth?id={connector}&token=");
    let rest = stdout
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("stdout is not one connector-auth link: {stdout:?}"));
    let (token, origin) = rest.split_once("&targetOrigin=").expect("a targetOrigin");
    assert!(
        !token.is_empty() && !stderr.contains(token),
        "the token on stdout only: {stderr}"
    );
    assert!(origin.starts_with("http%3A%2F%2F127.0.0.1"), "{origin}");
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(h.cyclr_requests("POST /v1.0/accounts/{id}/signintoken"), 1);
    // The same by the account connector's id; an unknown one is named with what exists.
    assert!(plugin(&h, &["auth", "acme", &connector]).await.status.success());
    let unknown = plugin(&h, &["auth", "acme", "Nothing"]).await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains(&format!("id {connector}")));

    // `kubectl cyclr status` shows the cycle under its account, with why it is not Ready.
    let out = plugin(&h, &["status"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = stdout
        .lines()
        .find(|l| l.starts_with("CyclrCycle"))
        .unwrap_or_else(|| panic!("a cycle row: {stdout}"));
    assert!(
        row.contains("acme/sync") && row.contains("ConnectorNotAuthenticated"),
        "{row}"
    );
}
