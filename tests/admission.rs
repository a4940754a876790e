//! Admission on the real kube-apiserver: what the CRD schemas and their CEL rules refuse,
//! each with an error that names the field and says why, and what they keep accepting
//! (including everything in `examples/`). No operator and no simulator are needed, except
//! for what admission leaves to the operator (the time zone database, last test).
//!
//! The two table tests and the ratcheting test also run against the oldest kube-apiserver the
//! chart admits (its `kubeVersion` floor, docs/versioning.md): `admission_holds_on_the_chart_floor`
//! runs them again in a child process of this test binary on a control plane of that version.

mod support;

use cyclr_operator::resources::{CyclrAccount, CyclrConnectorInstall, CyclrPartner};
use cyclr_testenv::TestEnv;
use kube::Client;
use serde_json::{Value, json};

/// Set for the child run on the floor's control plane: the Kubernetes minor it must serve.
const FLOOR_MINOR_ENV: &str = "CYCLR_ADMISSION_FLOOR_MINOR";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Partner,
    Account,
    Install,
}

/// A valid spec of each kind that the cases change.
fn base(kind: Kind) -> Value {
    match kind {
        Kind::Partner => {
            json!({"apiURL": "https://api.cyclr.com", "credentialsSecretRef": {"name": "partner-credentials"}})
        }
        Kind::Account => json!({"description": "Acme"}),
        Kind::Install => json!({"accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1"}),
    }
}

/// `patch` applied to `base` as a JSON merge patch (RFC 7386): objects merge, null removes.
fn merged(mut base: Value, patch: &Value) -> Value {
    match (base.as_object_mut(), patch.as_object()) {
        (Some(target), Some(changes)) => {
            for (key, value) in changes {
                if value.is_null() {
                    target.remove(key);
                } else {
                    let current = target.remove(key).unwrap_or(Value::Null);
                    target.insert(key.clone(), merged(current, value));
                }
            }
            base
        }
        _ => patch.clone(),
    }
}

struct Cluster {
    client: Client,
    namespace: String,
}

impl Cluster {
    async fn start(prefix: &str) -> Cluster {
        let env = TestEnv::get().await;
        let client = env.client();
        if let Ok(minor) = std::env::var(FLOOR_MINOR_ENV) {
            let version = client.apiserver_version().await.expect("GET /version");
            assert_eq!(
                (version.major.as_str(), version.minor.trim_end_matches('+')),
                ("1", minor.as_str()),
                "the floor's control plane serves {}",
                version.git_version
            );
        }
        support::install_crds(&client).await;
        let namespace = env.new_namespace(prefix).await;
        Cluster { client, namespace }
    }

    /// Applies `spec` as an object of `kind` named `name` (cluster-scoped partners get the
    /// namespace as a prefix, so tests never share one); the apiserver's error text if refused.
    async fn apply(&self, kind: Kind, name: &str, spec: Value) -> Result<(), String> {
        let name = match kind {
            Kind::Partner => format!("{}-{name}", self.namespace),
            _ => name.to_string(),
        };
        let mut object = json!({"metadata": {"name": name}, "spec": spec});
        let (client, ns) = (&self.client, self.namespace.as_str());
        let applied = match kind {
            Kind::Partner => support::try_apply::<CyclrPartner>(client, ns, &mut object)
                .await
                .map(drop),
            Kind::Account => support::try_apply::<CyclrAccount>(client, ns, &mut object)
                .await
                .map(drop),
            Kind::Install => support::try_apply::<CyclrConnectorInstall>(client, ns, &mut object)
                .await
                .map(drop),
        };
        applied.map_err(|e| e.to_string())
    }
}

/// A manifest admission must refuse: `change` merged into the kind's valid spec, applied
/// after `before` (a valid spec the object is created with first) when the rule is about
/// updates. The error must name `field` and contain `why`.
struct Bad {
    kind: Kind,
    before: Option<Value>,
    change: Value,
    field: &'static str,
    why: &'static str,
}

fn bad(kind: Kind, change: Value, field: &'static str, why: &'static str) -> Bad {
    Bad {
        kind,
        before: None,
        change,
        field,
        why,
    }
}

fn bad_update(kind: Kind, before: Value, change: Value, field: &'static str, why: &'static str) -> Bad {
    Bad {
        kind,
        before: Some(before),
        change,
        field,
        why,
    }
}

fn long(n: usize) -> String {
    "a".repeat(n)
}

fn bad_manifests() -> Vec<Bad> {
    use Kind::*;
    const NOT_EMPTY: &str = "must not be empty, whitespace only, or start or end with whitespace";
    const OBJECT_NAME: &str = "must be the name of a Kubernetes object";
    const SECRET_KEY: &str = "must be a Secret data key";
    const TOO_LONG: &str = "Too long";
    const PATTERN: &str = "should match";
    const REAL_DATE: &str = "must be a real calendar date";
    const ONLY_AT_CREATE: &str = "accountID can only be set when the resource is created";
    vec![
        // CyclrAccount
        bad(
            Account,
            json!({"pricePlan": {"id": 0}}),
            "spec.pricePlan.id",
            "greater than or equal to 1",
        ),
        bad(
            Account,
            json!({"pricePlan": {"id": -1}}),
            "spec.pricePlan.id",
            "greater than or equal to 1",
        ),
        bad(
            Account,
            json!({"pricePlan": {"id": 2, "name": "Pro"}}),
            "spec.pricePlan",
            "exactly one of id or name",
        ),
        bad(
            Account,
            json!({"pricePlan": {}}),
            "spec.pricePlan",
            "exactly one of id or name",
        ),
        bad(
            Account,
            json!({"pricePlan": {"name": ""}}),
            "spec.pricePlan.name",
            NOT_EMPTY,
        ),
        bad(
            Account,
            json!({"pricePlan": {"name": " Pro"}}),
            "spec.pricePlan.name",
            NOT_EMPTY,
        ),
        bad(
            Account,
            json!({"partnerRef": {"name": ""}}),
            "spec.partnerRef.name",
            OBJECT_NAME,
        ),
        bad(
            Account,
            json!({"partnerRef": {"name": "   "}}),
            "spec.partnerRef.name",
            OBJECT_NAME,
        ),
        bad(
            Account,
            json!({"partnerRef": {"name": "Default"}}),
            "spec.partnerRef.name",
            OBJECT_NAME,
        ),
        bad(
            Account,
            json!({"partnerRef": {"name": long(254)}}),
            "spec.partnerRef.name",
            TOO_LONG,
        ),
        bad(Account, json!({"name": ""}), "spec.name", NOT_EMPTY),
        bad(Account, json!({"name": "   "}), "spec.name", NOT_EMPTY),
        bad(Account, json!({"name": "Acme "}), "spec.name", NOT_EMPTY),
        bad(Account, json!({"name": long(256)}), "spec.name", TOO_LONG),
        bad(
            Account,
            json!({"description": long(100_000)}),
            "spec.description",
            TOO_LONG,
        ),
        bad(Account, json!({"auditInfo": long(1001)}), "spec.auditInfo", TOO_LONG),
        bad(Account, json!({"timezone": "not a zone"}), "spec.timezone", PATTERN),
        bad(
            Account,
            json!({"timezone": format!("America/{}", long(60))}),
            "spec.timezone",
            TOO_LONG,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2030-02-30"}),
            "spec.nextBillDate",
            REAL_DATE,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2029-02-29T00:00:00Z"}),
            "spec.nextBillDate",
            REAL_DATE,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2100-02-29"}),
            "spec.nextBillDate",
            REAL_DATE,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2030-04-31"}),
            "spec.nextBillDate",
            REAL_DATE,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2030-13-01"}),
            "spec.nextBillDate",
            PATTERN,
        ),
        bad(
            Account,
            json!({"nextBillDate": "09/03/2030"}),
            "spec.nextBillDate",
            PATTERN,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2030-03-09T24:00:00"}),
            "spec.nextBillDate",
            PATTERN,
        ),
        bad(
            Account,
            json!({"nextBillDate": "2030-03-09T16:23:08+01:00"}),
            "spec.nextBillDate",
            PATTERN,
        ),
        bad(Account, json!({"accountID": ""}), "spec.accountID", NOT_EMPTY),
        bad(Account, json!({"accountID": " abc"}), "spec.accountID", NOT_EMPTY),
        bad(Account, json!({"accountID": long(65)}), "spec.accountID", TOO_LONG),
        bad(
            Account,
            json!({"deletionPolicy": "Keep"}),
            "spec.deletionPolicy",
            "Unsupported value",
        ),
        bad(
            Account,
            json!({"managementPolicy": "ObserveOnly"}),
            "spec.managementPolicy",
            "needs spec.accountID",
        ),
        bad(
            Account,
            json!({"usage": {"enabled": "yes"}}),
            "spec.usage.enabled",
            "boolean",
        ),
        bad_update(
            Account,
            json!({"partnerRef": {"name": "default"}}),
            json!({"partnerRef": {"name": "other"}}),
            "spec.partnerRef",
            "partnerRef is immutable",
        ),
        bad_update(
            Account,
            json!({}),
            json!({"accountID": "abc"}),
            "spec.accountID",
            ONLY_AT_CREATE,
        ),
        bad_update(
            Account,
            json!({"accountID": "abc"}),
            json!({"accountID": "def"}),
            "spec.accountID",
            ONLY_AT_CREATE,
        ),
        bad_update(
            Account,
            json!({"accountID": "abc"}),
            json!({"accountID": null}),
            "spec.accountID",
            ONLY_AT_CREATE,
        ),
        // CyclrConnectorInstall
        bad(
            Install,
            json!({"accountRef": {"name": ""}}),
            "spec.accountRef.name",
            OBJECT_NAME,
        ),
        bad(
            Install,
            json!({"accountRef": {"name": " acme"}}),
            "spec.accountRef.name",
            OBJECT_NAME,
        ),
        bad(Install, json!({"connectorName": ""}), "spec.connectorName", NOT_EMPTY),
        bad(Install, json!({"connectorName": "  "}), "spec.connectorName", NOT_EMPTY),
        bad(
            Install,
            json!({"connectorName": null}),
            "spec.connectorName",
            "Required value",
        ),
        bad(
            Install,
            json!({"connectorVersion": ""}),
            "spec.connectorVersion",
            NOT_EMPTY,
        ),
        bad(
            Install,
            json!({"connectorVersion": long(65)}),
            "spec.connectorVersion",
            TOO_LONG,
        ),
        bad(Install, json!({"installedName": ""}), "spec.installedName", NOT_EMPTY),
        bad(
            Install,
            json!({"installedName": " Slack "}),
            "spec.installedName",
            NOT_EMPTY,
        ),
        bad(
            Install,
            json!({"installedName": long(256)}),
            "spec.installedName",
            TOO_LONG,
        ),
        bad(
            Install,
            json!({"auth": {"apiKeySecretRef": {"name": "s"}, "basicAuthSecretRef": {"name": "t"}}}),
            "spec.auth",
            "at most one of apiKeySecretRef and basicAuthSecretRef",
        ),
        bad(
            Install,
            json!({"auth": {"apiKeySecretRef": {"name": ""}}}),
            "spec.auth.apiKeySecretRef.name",
            OBJECT_NAME,
        ),
        bad(
            Install,
            json!({"auth": {"apiKeySecretRef": {"name": "s", "key": "api key"}}}),
            "spec.auth.apiKeySecretRef.key",
            SECRET_KEY,
        ),
        bad(
            Install,
            json!({"auth": {"basicAuthSecretRef": {"name": "Bad_Name"}}}),
            "spec.auth.basicAuthSecretRef.name",
            OBJECT_NAME,
        ),
        bad(
            Install,
            json!({"auth": {"basicAuthSecretRef": {"name": "s", "passwordKey": ""}}}),
            "spec.auth.basicAuthSecretRef.passwordKey",
            SECRET_KEY,
        ),
        bad_update(
            Install,
            json!({}),
            json!({"accountRef": {"name": "globex"}}),
            "spec.accountRef",
            "accountRef is immutable",
        ),
        bad_update(
            Install,
            json!({}),
            json!({"connectorName": "Jira"}),
            "spec.connectorName",
            "connectorName is immutable",
        ),
        bad_update(
            Install,
            json!({}),
            json!({"connectorVersion": "v2"}),
            "spec.connectorVersion",
            "connectorVersion is immutable",
        ),
        bad_update(
            Install,
            json!({"installedName": "Slack"}),
            json!({"installedName": "Slack 2"}),
            "spec.installedName",
            "installedName is immutable",
        ),
        bad_update(
            Install,
            json!({}),
            json!({"installedName": "Slack"}),
            "spec.installedName",
            "installedName is immutable",
        ),
        bad_update(
            Install,
            json!({"installedName": "Slack"}),
            json!({"installedName": null}),
            "spec.installedName",
            "installedName is immutable",
        ),
        // CyclrPartner
        bad(
            Partner,
            json!({"apiURL": "api.cyclr.com"}),
            "spec.apiURL",
            "must be an absolute http:// or https:// URL",
        ),
        bad(
            Partner,
            json!({"apiURL": "https://api.cyclr.com", "cyclrAPI": "V2"}),
            "spec.cyclrAPI",
            "Unsupported value",
        ),
        bad(
            Partner,
            json!({"apiURL": "ftp://api.cyclr.com"}),
            "spec.apiURL",
            "must be an absolute http:// or https:// URL",
        ),
        bad(
            Partner,
            json!({"apiURL": ""}),
            "spec.apiURL",
            "must be an absolute http:// or https:// URL",
        ),
        bad(
            Partner,
            json!({"apiURL": "https://user:secret@api.cyclr.com"}),
            "spec.apiURL",
            "must not carry credentials",
        ),
        bad(
            Partner,
            json!({"apiURL": "https://api.cyclr.com/?region=eu"}),
            "spec.apiURL",
            "must not have a query or fragment",
        ),
        bad(
            Partner,
            json!({"apiURL": "https://api.cyclr.com#top"}),
            "spec.apiURL",
            "must not have a query or fragment",
        ),
        bad(
            Partner,
            json!({"apiURL": format!("https://api.cyclr.com/{}", long(2040))}),
            "spec.apiURL",
            TOO_LONG,
        ),
        bad(Partner, json!({"apiURL": null}), "spec.apiURL", "Required value"),
        bad(
            Partner,
            json!({"credentialsSecretRef": {"name": ""}}),
            "spec.credentialsSecretRef.name",
            OBJECT_NAME,
        ),
        bad(
            Partner,
            json!({"credentialsSecretRef": {"clientIDKey": "client id"}}),
            "spec.credentialsSecretRef.clientIDKey",
            SECRET_KEY,
        ),
        bad(
            Partner,
            json!({"rateLimit": {"requestsPerSecond": 0}}),
            "spec.rateLimit.requestsPerSecond",
            "greater than or equal to 1",
        ),
        bad(
            Partner,
            json!({"rateLimit": {"burst": 10001}}),
            "spec.rateLimit.burst",
            "less than or equal to 10000",
        ),
        bad(
            Partner,
            json!({"resyncInterval": "5s"}),
            "spec.resyncInterval",
            "resyncInterval must be at least 10s",
        ),
        bad(
            Partner,
            json!({"usageInterval": "1s"}),
            "spec.usageInterval",
            "usageInterval must be at least 10s",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_with_an_error_naming_the_field() {
    let cluster = Cluster::start("admission-bad").await;
    let cases = bad_manifests();
    assert!(cases.len() >= 40, "the table keeps at least 40 cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let spec = merged(base(case.kind), &case.change);
        if let Some(before) = &case.before {
            let first = merged(base(case.kind), before);
            if let Err(e) = cluster.apply(case.kind, &name, first).await {
                failures.push(format!(
                    "#{i} {:?}: the valid first version was refused: {e}",
                    case.kind
                ));
                continue;
            }
        }
        match cluster.apply(case.kind, &name, spec.clone()).await {
            Ok(()) => failures.push(format!(
                "#{i} {:?} {spec}: accepted, expected {:?}",
                case.kind, case.why
            )),
            Err(e) if e.contains(&format!("{}:", case.field)) && e.contains(case.why) => {}
            Err(e) => failures.push(format!(
                "#{i} {:?} {spec}: expected {}: ...{}, got: {e}",
                case.kind, case.field, case.why
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_manifests_and_the_examples_are_accepted() {
    use Kind::*;
    let cluster = Cluster::start("admission-good").await;
    let good = [
        (Account, json!({})),
        (
            Account,
            json!({"name": long(255), "description": long(1000), "auditInfo": long(1000)}),
        ),
        (
            Account,
            json!({"name": "Acme Ltd (EU)", "timezone": "America/Argentina/Buenos_Aires"}),
        ),
        // IANA names without an Area/ (issue [M] row 5).
        (Account, json!({"timezone": "CET"})),
        (Account, json!({"timezone": "Etc/GMT+5"})),
        (Account, json!({"timezone": "EST5EDT"})),
        (Account, json!({"pricePlan": {"id": 1}, "nextBillDate": "2028-02-29"})),
        (
            Account,
            json!({"pricePlan": {"name": "Pro"}, "nextBillDate": "2000-02-29T23:59:59"}),
        ),
        (Account, json!({"nextBillDate": "2030-03-09T16:23:08.5Z"})),
        (Account, json!({"nextBillDate": "2030-12-31T16:23:08.6440352Z"})),
        (
            Account,
            json!({"accountID": "JO-Test-1234567890", "managementPolicy": "ObserveOnly"}),
        ),
        (
            Account,
            json!({"accountID": "a6912cb01f18629a0957c95e9147066b", "deletionPolicy": "Orphan", "usage": {"enabled": false}}),
        ),
        // Delete needs a V1 partner: checked by the operator, which sees the partner.
        (Account, json!({"deletionPolicy": "Delete"})),
        (
            Install,
            json!({"installedName": "Slack (sales)", "auth": {"apiKeySecretRef": {"name": "acme-slack", "key": "api_key.v2"}}}),
        ),
        (
            Install,
            json!({"auth": {"basicAuthSecretRef": {"name": "jira", "usernameKey": "user", "passwordKey": "pass"}}}),
        ),
        (Partner, json!({"apiURL": "http://127.0.0.1:8080"})),
        (Partner, json!({"apiURL": "http://127.0.0.1:8080", "cyclrAPI": "V1"})),
        (
            Partner,
            json!({"apiURL": "http://127.0.0.1:8080", "cyclrAPI": "Partner"}),
        ),
        (
            Partner,
            json!({"apiURL": "https://cyclr.example.com/partner-api/", "rateLimit": {"requestsPerSecond": 10000, "burst": 1}}),
        ),
        (
            Partner,
            json!({"apiURL": "https://api.eu.cyclr.com", "resyncInterval": "10s", "usageInterval": "1h30m", "namespaceSelector": {"matchLabels": {"team": "a"}}}),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (kind, change)) in good.iter().enumerate() {
        let spec = merged(base(*kind), change);
        if let Err(e) = cluster.apply(*kind, &format!("good-{i}"), spec.clone()).await {
            failures.push(format!("{kind:?} {spec}: {e}"));
        }
    }
    // Updates the rules must allow: a mutable field changes; an immutable one is re-applied as is.
    let updates = [
        (
            Account,
            json!({"accountID": "abc", "description": "one"}),
            json!({"accountID": "abc", "description": "two", "pricePlan": {"id": 3}}),
        ),
        (
            Account,
            json!({"partnerRef": {"name": "default"}}),
            json!({"partnerRef": {"name": "default"}, "name": "Renamed", "timezone": "UTC"}),
        ),
        (
            Install,
            json!({"installedName": "Slack"}),
            json!({"installedName": "Slack", "auth": {"apiKeySecretRef": {"name": "rotated"}}}),
        ),
        (
            Partner,
            json!({}),
            json!({"apiURL": "https://api.us2.cyclr.com", "rateLimit": {"requestsPerSecond": 2}}),
        ),
    ];
    for (i, (kind, before, after)) in updates.iter().enumerate() {
        let name = format!("update-{i}");
        for spec in [before, after] {
            let spec = merged(base(*kind), spec);
            if let Err(e) = cluster.apply(*kind, &name, spec.clone()).await {
                failures.push(format!("update {kind:?} {spec}: {e}"));
            }
        }
    }
    // Every CyclrPartner, CyclrAccount and CyclrConnectorInstall in examples/.
    let mut examples = 0;
    for file in ["partner.yaml", "accounts.yaml", "connector-installs.yaml", "v1.yaml"] {
        let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document).expect("examples are YAML");
            let kind = match object["kind"].as_str() {
                Some("CyclrPartner") => Partner,
                Some("CyclrAccount") => Account,
                Some("CyclrConnectorInstall") => Install,
                _ => continue,
            };
            examples += 1;
            let name = object["metadata"]["name"].as_str().unwrap();
            if let Err(e) = cluster.apply(kind, name, object["spec"].clone()).await {
                failures.push(format!("examples/{file} {kind:?} {name}: {e}"));
            }
        }
    }
    assert_eq!(
        examples, 9,
        "examples/ holds two partners (Partner API and v1.0), four accounts and three installs"
    );
    assert!(failures.is_empty(), "refused:\n{}", failures.join("\n"));
}

/// Issue [M] row 5: every IANA name is admitted (`CET` was refused by a pattern that wanted
/// `Area/City`) and reaches Cyclr as spelled; a name shaped like one but not in the bundled
/// database (`CEST`, an abbreviation) is Stalled `InvalidSpec` naming the field, before any
/// Cyclr call for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_iana_zone_is_admitted_and_an_unknown_one_stalls_before_any_cyclr_call() {
    use cyclr_operator::resources::{READY, STALLED};
    let h = support::Harness::start("timezones", "10m").await;
    let zones = ["CET", "UTC", "Etc/GMT+5", "America/Argentina/Buenos_Aires"];
    let account = |name: &str, zone: &str| json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}, "timezone": zone}});
    for (i, zone) in zones.iter().enumerate() {
        h.apply::<CyclrAccount>(account(&format!("zone-{i}"), zone)).await;
    }
    h.apply::<CyclrAccount>(account("unknown-zone", "CEST")).await;

    let stalled = h
        .wait_condition::<CyclrAccount>("unknown-zone", STALLED, "True", Some("InvalidSpec"))
        .await;
    let message = support::ready_message(&stalled);
    assert!(
        message.starts_with("spec.timezone: ") && message.contains("not an IANA time zone"),
        "{message}"
    );
    h.wait_event("unknown-zone", "InvalidSpec").await;
    for i in 0..zones.len() {
        h.wait_condition::<CyclrAccount>(&format!("zone-{i}"), READY, "True", None)
            .await;
    }
    let mut created: Vec<(String, Option<String>)> =
        h.sim.accounts().into_iter().map(|a| (a.name, a.timezone)).collect();
    created.sort();
    let expected: Vec<(String, Option<String>)> = zones
        .iter()
        .enumerate()
        .map(|(i, zone)| (format!("zone-{i}"), Some(zone.to_string())))
        .collect();
    assert_eq!(
        created, expected,
        "each zone reached Cyclr as spelled; nothing for CEST"
    );
    assert_eq!(
        h.cyclr_requests("POST /api/partner/createaccount"),
        zones.len() as u64,
        "no create was tried for the unknown zone"
    );
    let stalled = h.account("unknown-zone").await;
    assert!(stalled.status.and_then(|s| s.account_id).is_none());
}

/// docs/versioning.md promises that a stricter rule never refuses an object already stored,
/// only new values (CRD validation ratcheting, on by default from Kubernetes 1.30): a copy of
/// the CyclrAccount CRD under a test group, first without the 1000-character limit of
/// `spec.description`, stores an account over it; with the limit back, that account still takes
/// a change to another field, while a new over-long value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_schema_spares_values_already_stored() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    use kube::{Api, CustomResourceExt};

    let cluster = Cluster::start("admission-ratchet").await;
    let (group, plural) = ("ratchet.cyclr.com", "ratchetaccounts");
    let crd_name = format!("{plural}.{group}");
    let mut strict = serde_json::to_value(CyclrAccount::crd()).unwrap();
    strict["metadata"] = json!({"name": crd_name});
    strict["spec"]["group"] = group.into();
    strict["spec"]["names"] = json!({"plural": plural, "singular": "ratchetaccount", "kind": "RatchetAccount", "listKind": "RatchetAccountList"});
    let description = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/description";
    assert_eq!(strict.pointer(&format!("{description}/maxLength")), Some(&json!(1000)));
    let mut loose = strict.clone();
    loose
        .pointer_mut(description)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("maxLength");

    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let apply_crd = |crd: Value| {
        let (crds, crd_name) = (crds.clone(), crd_name.clone());
        async move {
            crds.patch(
                &crd_name,
                &PatchParams::apply("cyclr-tests").force(),
                &Patch::Apply(crd),
            )
            .await
            .expect("apply the test CRD")
        }
    };
    apply_crd(loose).await;
    let established = await_condition(crds.clone(), &crd_name, conditions::is_crd_established());
    tokio::time::timeout(std::time::Duration::from_secs(30), established)
        .await
        .expect("the test CRD established in 30 s")
        .unwrap();
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1alpha1", "RatchetAccount"), plural);
    let accounts: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource);
    let account = |name: &str, spec: Value| json!({"apiVersion": format!("{group}/v1alpha1"), "kind": "RatchetAccount", "metadata": {"name": name}, "spec": spec});
    let apply = |name: &'static str, spec: Value| {
        let (accounts, object) = (accounts.clone(), account(name, spec));
        async move {
            accounts
                .patch(name, &PatchParams::apply("cyclr-tests"), &Patch::Apply(object))
                .await
                .map_err(|e| e.to_string())
        }
    };
    let stored = long(1001);
    apply("stored", json!({"description": stored}))
        .await
        .expect("stored before the limit");

    apply_crd(strict).await;
    // The new schema is in force once a new over-long value is refused (the API server
    // rebuilds its validators when it sees the CRD change).
    let mut refused = None;
    for attempt in 0.. {
        match apply("probe", json!({"description": long(1001)})).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) if attempt < 100 => {
                accounts
                    .delete("probe", &Default::default())
                    .await
                    .expect("delete the probe");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(_) => break,
        }
    }
    let refused = refused.expect("the limit is back in force");
    assert!(refused.contains("spec.description"), "{refused}");

    apply("stored", json!({"description": stored, "auditInfo": "changed later"}))
        .await
        .expect("an object stored before the limit takes a change to another field");
    let changed = apply(
        "stored",
        json!({"description": long(1002), "auditInfo": "changed later"}),
    )
    .await;
    assert!(
        changed.as_ref().is_err_and(|e| e.contains("spec.description")),
        "a new over-long value is refused: {changed:?}"
    );
}

/// The Kubernetes minor of the chart's floor: `kubeVersion: ">=1.N.0-0"` in Chart.yaml.
fn chart_floor_minor() -> String {
    let path = format!("{}/charts/cyclr-operator/Chart.yaml", env!("CARGO_MANIFEST_DIR"));
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let floor = chart["kubeVersion"].as_str().expect("the chart's kubeVersion");
    floor
        .strip_prefix(">=1.")
        .and_then(|rest| rest.strip_suffix(".0-0"))
        .unwrap_or_else(|| panic!("kubeVersion {floor:?} is not >=1.N.0-0"))
        .to_string()
}

/// Issue [L] row 13: the CRDs and their CEL rules hold on the oldest Kubernetes the chart
/// admits, and so does the ratcheting docs/versioning.md promises. The two table tests and
/// the ratcheting test above run again, in a child process of this test binary, on a
/// control plane whose kube-apiserver is `bin/kube-apiserver-1.N` (built by `make testbin`
/// at the floor's version), each checking the server's `/version` first.
#[test]
fn admission_holds_on_the_chart_floor() {
    let minor = chart_floor_minor();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("CYCLR_TESTBIN").map_or_else(|| root.join("bin"), std::path::PathBuf::from);
    let apiserver = bin.join(format!("kube-apiserver-1.{minor}"));
    assert!(
        apiserver.exists(),
        "{} is missing: run `make testbin` (hack/testbin.sh kube-apiserver-floor)",
        apiserver.display()
    );
    // A testbin folder whose kube-apiserver is the floor's.
    let floor = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&apiserver, floor.path().join("kube-apiserver")).unwrap();
    std::os::unix::fs::symlink(bin.join("etcd"), floor.path().join("etcd")).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bad_manifests_are_refused_with_an_error_naming_the_field",
            "good_manifests_and_the_examples_are_accepted",
            "a_stricter_schema_spares_values_already_stored",
        ])
        .env("CYCLR_TESTBIN", floor.path())
        .env(FLOOR_MINOR_ENV, &minor)
        .env_remove("CYCLR_TEST_KUBECONFIG")
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 3 passed"),
        "on kube-apiserver 1.{minor}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
