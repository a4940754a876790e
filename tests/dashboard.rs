//! The Grafana dashboard (`deploy/grafana/cyclr-operator.json`) and the alerts
//! (`deploy/prometheus/alerts.yaml`) query only series that `/metrics` serves: every recording
//! method is called once, for every kind, and every `cyclr_*` name in their queries must then
//! appear as a sample in the exposition, as must every `kind="…"` they select.

use std::collections::BTreeSet;
use std::time::Duration;

use cyclr::client::CallRecord;
use cyclr_operator::metrics::Metrics;
use driver::Metrics as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

const DASHBOARD: &str = include_str!("../deploy/grafana/cyclr-operator.json");
const ALERTS: &str = include_str!("../deploy/prometheus/alerts.yaml");

/// Every `expr` in the dashboard (panel targets and template variables).
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("cyclr_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("team-a".into()),
        uid: Some(format!("uid-{name}")),
        creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        ..ObjectMeta::default()
    }
}

fn exercised_metrics() -> String {
    let metrics = std::sync::Arc::new(Metrics::default());
    metrics.reconciled("CyclrAccount", None, Duration::from_millis(3));
    metrics.reconciled("CyclrAccount", Some("cyclr_transient"), Duration::from_millis(3));
    metrics.kubernetes_write("CyclrAccount");
    metrics.account_usage("team-a", "acme", 42, 7);
    let ready = Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Available".into(),
        message: String::new(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    };
    for kind in ["CyclrPartner", "CyclrAccount", "CyclrConnectorInstall", "CyclrCycle"] {
        metrics.status_computed(kind, &meta("acme"), &[], std::slice::from_ref(&ready));
    }
    metrics.account_snapshot("default", 1, chrono::Utc::now());
    metrics.set_leader(None, true);
    metrics.set_watches(&[("CyclrAccount".into(), false)]);
    let observer = metrics.cyclr_observer("default");
    for (endpoint, status) in [("oauth_token", 200), ("list_accounts", 429)] {
        observer.observe(&CallRecord {
            endpoint,
            method: "GET",
            status: Some(status),
            latency: Duration::from_millis(20),
            waited: Duration::from_millis(5),
            attempt: 1,
        });
    }
    metrics.encode()
}

#[test]
fn every_metric_the_dashboard_queries_is_served() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    assert!(all.len() >= 10, "the dashboard has its queries: {all:?}");
    assert_served(&all);
}

#[test]
fn every_metric_the_alerts_query_is_served() {
    let alerts: serde_yaml::Value = serde_yaml::from_str(ALERTS).expect("the alerts are YAML");
    let exprs: Vec<String> = alerts["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|rule| rule["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 6, "the alerts have their expressions: {exprs:?}");
    assert_served(&exprs);
}

/// Every `cyclr_*` series named in `queries` is a sample of the exercised metrics.
fn assert_served(queries: &[String]) {
    let all = queries;
    let wanted: BTreeSet<String> = all.iter().flat_map(|q| metric_names(q)).collect();
    let served = exercised_metrics();
    let samples: BTreeSet<&str> = served
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|name| !samples.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "queried but not served: {missing:?}\n{served}");
    let kinds: Vec<&str> = all
        .iter()
        .flat_map(|q| q.split(r#"kind=""#).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    for kind in kinds {
        assert!(
            served.contains(&format!(r#"kind="{kind}""#)),
            "a query selects kind {kind:?}, which no series carries\n{served}"
        );
    }
}

#[test]
fn the_dashboard_shows_cycles_by_state() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panel = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Cycles by state")
        .expect("a panel of cycles");
    let mut exprs = Vec::new();
    queries(panel, &mut exprs);
    assert!(
        exprs
            .iter()
            .any(|q| q.contains(r#"kind="CyclrCycle""#) && q.contains("by (condition)")),
        "{exprs:?}"
    );
}

#[test]
fn usage_and_condition_series_go_away_with_their_resource() {
    let metrics = Metrics::default();
    metrics.account_usage("team-a", "acme", 40, 7);
    metrics.account_usage("team-a", "acme", 42, 7);
    let text = metrics.encode();
    for series in [
        r#"cyclr_account_tasks{namespace="team-a",name="acme"} 42"#,
        r#"cyclr_account_cycles{namespace="team-a",name="acme"} 7"#,
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
    metrics.forget_account("team-a", "acme");
    let not_ready = Condition {
        type_: "Ready".into(),
        status: "False".into(),
        reason: "PartnerNotReady".into(),
        message: String::new(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    };
    metrics.status_computed("CyclrAccount", &meta("acme"), &[], std::slice::from_ref(&not_ready));
    metrics.status_computed("CyclrAccount", &meta("globex"), &[], &[not_ready]);
    metrics.forget("CyclrAccount", &meta("acme"));
    let text = metrics.encode();
    assert!(!text.contains("name=\"acme\""), "usage series removed: {text}");
    assert!(
        text.contains(r#"cyclr_operator_resources{kind="CyclrAccount",condition="Ready",status="False"} 1"#),
        "one account left not Ready: {text}"
    );
}

#[test]
fn time_to_first_ready_is_observed_once_and_never_for_a_resource_first_seen_ready() {
    let metrics = Metrics::default();
    let ready = |status: &str| Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: "R".into(),
        message: String::new(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    };
    let (t, f) = (ready("True"), ready("False"));
    metrics.status_computed("CyclrAccount", &meta("new"), &[], std::slice::from_ref(&f));
    metrics.status_computed(
        "CyclrAccount",
        &meta("new"),
        std::slice::from_ref(&f),
        std::slice::from_ref(&t),
    );
    metrics.status_computed(
        "CyclrAccount",
        &meta("new"),
        std::slice::from_ref(&t),
        std::slice::from_ref(&f),
    );
    metrics.status_computed(
        "CyclrAccount",
        &meta("new"),
        std::slice::from_ref(&f),
        std::slice::from_ref(&t),
    );
    // Already Ready when this process first sees it (a restart): not observed.
    metrics.status_computed(
        "CyclrAccount",
        &meta("old"),
        std::slice::from_ref(&t),
        std::slice::from_ref(&t),
    );
    let text = metrics.encode();
    assert!(
        text.contains(r#"cyclr_operator_time_to_first_ready_seconds_count{kind="CyclrAccount"} 1"#),
        "{text}"
    );
}
