//! `kubectl cyclr` (the built `kubectl-cyclr` binary) against the real control plane and the
//! Cyclr simulator. No operator runs: each test writes the accounts' status itself (through
//! the Rust types, so field names follow the CRDs), which is what the plugin reads.

mod support;

use std::process::Output;

use cyclr::types::{AccountFields, PricePlanId};
use cyclr_operator::resources::{
    CredentialsSecretRef, CyclrAccount, CyclrAccountSpec, CyclrAccountStatus, CyclrApi, CyclrPartner, CyclrPartnerSpec,
    CyclrPartnerStatus, PricePlanStatus, READY, UsageStatus,
};
use cyclr_sim::{SimConfig, SimHandle, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::{CLIENT_ID, CLIENT_SECRET, cyclr_client, install_crds};

const SIGNIN: &str = "POST /api/partner/createaccountsignintoken";
const SIGNIN_V1: &str = "POST /v1.0/accounts/{id}/signintoken";

/// A namespace with accounts, an operator namespace with the partner's Secret, a partner
/// pointing at a fresh simulator.
struct Fixture {
    client: Client,
    namespace: String,
    operator_namespace: String,
    partner: String,
    sim: SimHandle,
}

impl Fixture {
    async fn start(prefix: &str) -> Fixture {
        Fixture::start_with(prefix, CyclrApi::Partner).await
    }

    /// The fixture with a partner that speaks `cyclr_api`.
    async fn start_with(prefix: &str, cyclr_api: CyclrApi) -> Fixture {
        let env = TestEnv::get().await;
        let client = env.client();
        install_crds(&client).await;
        let namespace = env.new_namespace(prefix).await;
        let operator_namespace = env.new_namespace(&format!("{prefix}-op")).await;
        let sim = Simulator::start(SimConfig::new(CLIENT_ID, CLIENT_SECRET), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("start cyclr-sim");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "partner-credentials", "labels": {"cyclr.com/credentials": "true"}},
            "stringData": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &operator_namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create the credentials Secret");
        let partner = namespace.clone();
        let spec = CyclrPartnerSpec {
            api_url: sim.base_url(),
            credentials_secret_ref: CredentialsSecretRef {
                name: "partner-credentials".into(),
                client_id_key: "client_id".into(),
                client_secret_key: "client_secret".into(),
            },
            namespace_selector: None,
            rate_limit: Default::default(),
            resync_interval: "10m".parse().unwrap(),
            usage_interval: "15m".parse().unwrap(),
            service_url: None,
            cyclr_api,
        };
        let partners: Api<CyclrPartner> = Api::all(client.clone());
        partners
            .create(&PostParams::default(), &CyclrPartner::new(&partner, spec))
            .await
            .expect("create the CyclrPartner");
        let status = CyclrPartnerStatus {
            conditions: vec![ready_condition("True", "Available", "")],
            price_plans: vec![PricePlanStatus {
                id: 3,
                name: "Pro".into(),
            }],
            account_count: Some(1),
            ..Default::default()
        };
        partners
            .patch_status(
                &partner,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .expect("partner status");
        Fixture {
            client,
            namespace,
            operator_namespace,
            partner,
            sim,
        }
    }

    /// A CyclrAccount with the given status; with `cyclr_name`, a real account in the
    /// simulator whose id the status carries.
    async fn account(&self, name: &str, cyclr_name: Option<&str>, mut status: CyclrAccountStatus) -> Option<String> {
        let id = match cyclr_name {
            Some(cyclr_name) => Some(
                cyclr_client(&self.sim)
                    .create_account(&AccountFields {
                        name: Some(cyclr_name.into()),
                        price_plan_id: Some(PricePlanId(3)),
                        ..Default::default()
                    })
                    .await
                    .expect("create the Cyclr account"),
            ),
            None => None,
        };
        status.account_id = id.clone();
        let mut spec: CyclrAccountSpec = serde_json::from_value(json!({})).expect("defaults");
        spec.partner_ref.name = self.partner.clone();
        let api: Api<CyclrAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        api.create(&PostParams::default(), &CyclrAccount::new(name, spec))
            .await
            .expect("create the CyclrAccount");
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .expect("account status");
        id
    }

    /// Runs `kubectl-cyclr` as the test's admin, or impersonating `user`.
    async fn plugin(&self, user: Option<&str>, args: &[&str]) -> Output {
        let env = TestEnv::get().await;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-cyclr"));
        command
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .args(["-n", &self.namespace, "--operator-namespace", &self.operator_namespace])
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("CYCLR_OPERATOR_NAMESPACE");
        if let Some(user) = user {
            command.args(["--as", user]);
        }
        command.output().await.expect("run kubectl-cyclr")
    }
}

fn ready_condition(status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ready_status() -> CyclrAccountStatus {
    CyclrAccountStatus {
        conditions: vec![ready_condition("True", "Available", "in sync with Cyclr")],
        price_plan_id: Some(3),
        usage: Some(UsageStatus {
            task_count: 42,
            cycle_count: 7,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `kubectl cyclr signin` on a partner that speaks `cyclr_api`: one URL with a fresh token
/// on stdout, the expiry on stderr; the simulator's stats after it.
async fn signin_on(prefix: &str, cyclr_api: CyclrApi) -> cyclr_sim::SimStats {
    let f = Fixture::start_with(prefix, cyclr_api).await;
    f.account("acme", Some("Acme"), ready_status()).await.unwrap();
    let out = f
        .plugin(None, &["signin", "acme", "--username", "alice@acme.example"])
        .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "signin failed: {stderr}");
    let prefix = format!("{}/account/signinwithtoken?token=", f.sim.base_url());
    let token = stdout
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("stdout is not one sign-in URL: {stdout:?}"));
    assert!(
        !token.is_empty() && token.chars().all(|c| c.is_ascii_hexdigit()),
        "a token: {token:?}"
    );
    assert_eq!(stdout.lines().count(), 1, "stdout is the URL alone: {stdout:?}");
    assert!(stderr.contains("expires at"), "the expiry on stderr: {stderr}");
    assert!(!stderr.contains(token), "the token never reaches stderr: {stderr}");
    f.sim.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signin_prints_a_url_with_a_fresh_token_on_stdout_only() {
    let stats = signin_on("plugin-signin", CyclrApi::Partner).await;
    assert_eq!(stats.requests_to(SIGNIN), 1, "one Get Account Signin Token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signin_on_a_v1_partner_uses_the_v1_sign_in_token() {
    let stats = signin_on("plugin-signin-v1", CyclrApi::V1).await;
    assert_eq!(stats.requests_to(SIGNIN_V1), 1, "one v1.0 sign-in token");
    assert_eq!(stats.requests_to(SIGNIN), 0, "the Partner API's call is not used on V1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signin_refuses_an_account_that_is_not_ready_with_its_reason() {
    let f = Fixture::start("plugin-notready").await;
    let stalled = CyclrAccountStatus {
        conditions: vec![ready_condition(
            "False",
            "AccountNameInUse",
            "Cyclr already has an account named acme (id 123)",
        )],
        ..Default::default()
    };
    f.account("acme", None, stalled).await;
    let out = f.plugin(None, &["signin", "acme", "--username", "alice"]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "signin must fail");
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", text(&out.stdout));
    assert!(
        stderr.contains("AccountNameInUse") && stderr.contains("already has an account named acme"),
        "the account's own reason and message: {stderr}"
    );
    assert_eq!(f.sim.stats().requests_to(SIGNIN), 0, "no token asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signin_without_permission_on_the_secret_names_the_missing_permission() {
    let f = Fixture::start("plugin-rbac").await;
    f.account("acme", Some("Acme"), ready_status()).await.unwrap();
    // A support user who may read accounts and partners, but not Secrets.
    let user = format!("support-{}", f.namespace);
    let rules =
        |resources: &[&str]| json!([{"apiGroups": ["cyclr.com"], "resources": resources, "verbs": ["get", "list"]}]);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "cyclr-support"},
        "rules": rules(&["cyclraccounts", "cyclrconnectorinstalls"]),
    }))
    .unwrap();
    Api::<Role>::namespaced(f.client.clone(), &f.namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "cyclr-support"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cyclr-support"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(f.client.clone(), &f.namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": user},
        "rules": rules(&["cyclrpartners"]),
    }))
    .unwrap();
    Api::<ClusterRole>::all(f.client.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(f.client.clone())
        .create(&PostParams::default(), &cluster_binding)
        .await
        .unwrap();

    // RBAC reaches the authorizer's cache a moment after the bindings are created.
    let want = format!(
        "forbidden: you cannot get secrets in namespace {}",
        f.operator_namespace
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        let out = f.plugin(Some(&user), &["signin", "acme", "--username", "alice"]).await;
        if text(&out.stderr).contains(&want) || tokio::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "signin must fail");
    assert!(stderr.contains(&want), "names verb, resource and namespace: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert_eq!(f.sim.stats().requests_to(SIGNIN), 0, "Cyclr never asked");

    // The same user can still see the status table, which needs no Secret.
    let out = f.plugin(Some(&user), &["status"]).await;
    assert!(out.status.success(), "status as {user}: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_partners_accounts_and_why_anything_is_not_ready() {
    let f = Fixture::start("plugin-status").await;
    let id = f.account("acme", Some("Acme"), ready_status()).await.unwrap();
    let failing = CyclrAccountStatus {
        conditions: vec![ready_condition(
            "False",
            "PartnerNotReady",
            "the partner cannot get a token",
        )],
        ..Default::default()
    };
    f.account("globex", None, failing).await;

    let out = f.plugin(None, &["status"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("a row for {name}: {stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let acme = line("acme");
    assert_eq!(acme[0], "CyclrAccount");
    assert!(
        acme.contains(&id.as_str()) && acme.contains(&"Pro") && acme.contains(&"42") && acme.contains(&"7"),
        "{acme:?}"
    );
    assert!(line("globex").contains(&"PartnerNotReady"), "{stdout}");
    let header = stdout.lines().next().unwrap();
    assert!(header.starts_with("KIND"), "{stdout}");
    let kinds: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let partner_at = kinds
        .iter()
        .position(|k| *k == "CyclrPartner")
        .expect("the partner row");
    assert!(
        partner_at < kinds.iter().position(|k| *k == "CyclrAccount").unwrap(),
        "partners first"
    );

    let wide = text(&f.plugin(None, &["status", "-o", "wide"]).await.stdout);
    assert!(
        wide.contains("the partner cannot get a token"),
        "wide has the message: {wide}"
    );

    let json = f.plugin(None, &["status", "-A", "-o", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("JSON rows");
    let acme = rows
        .iter()
        .find(|r| r["name"] == "acme" && r["namespace"] == f.namespace.as_str())
        .expect("acme in -A");
    assert_eq!(acme["accountID"], id.as_str());
    assert_eq!(acme["tasks"], 42);
    assert_eq!(acme["reason"], "", "no reason when Ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_plans_and_usage_come_from_cyclr_through_the_partner() {
    let f = Fixture::start("plugin-usage").await;
    let id = f.account("acme", Some("Acme"), ready_status()).await.unwrap();

    let out = f.plugin(None, &["price-plans", &f.partner]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "price-plans: {}", text(&out.stderr));
    assert!(stdout.contains("Starter") && stdout.contains("Enterprise"), "{stdout}");
    assert_eq!(f.sim.stats().requests_to("GET /api/partner/priceplans"), 1);

    let out = f.plugin(None, &["usage", "acme", "--from", "2026-01-01"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "usage: {}", text(&out.stderr));
    let row: Vec<&str> = stdout.lines().nth(1).expect("a usage row").split_whitespace().collect();
    assert_eq!(&row[..3], &["acme", id.as_str(), "2026-01-01"], "{stdout}");
    assert_eq!(f.sim.stats().requests_to("GET /api/partner/accounts/{id}/billing"), 1);

    let out = f.plugin(None, &["usage", "missing"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CyclrAccount missing not found"),
        "{}",
        text(&out.stderr)
    );
}
