//! Issue [M] row 7: kube-apiserver throttles the operator (API Priority and Fairness answers
//! 429) in the middle of a rollout, then recovers. The operator runs as a ServiceAccount
//! (impersonated, as in `tests/deploy.rs`): `system:masters`, the test's admin, is exempt
//! from APF. Alone in its binary: the FlowSchema it adds is the cluster's.

mod support;

use std::time::{Duration, Instant};

use cyclr_operator::resources::{CyclrAccount, READY, annotations, condition};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::{Harness, HasConditions};

/// Enough to run well past the throttle on this 2-core machine, shared with other builds.
const ACCOUNTS: usize = 200;

/// A client of the test cluster that is `user` (the admin's kubeconfig, impersonating).
async fn impersonating(env: &TestEnv, user: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig_path()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig config");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("impersonating client")
}

/// Requests of `flow_schema` that APF rejected so far, from kube-apiserver's /metrics.
async fn rejected(client: &Client, flow_schema: &str) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let metrics = client.request_text(request).await.expect("kube-apiserver /metrics");
    let label = format!("flow_schema=\"{flow_schema}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("apiserver_flowcontrol_rejected_requests_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_throttled_by_the_api_server_loses_nothing() {
    let env = TestEnv::get().await;
    let mut h = Harness::without_operator("throttled", "10m").await;
    let admin = h.client.clone();
    let apply = PatchParams::apply("cyclr-tests").force();
    let service_account = "cyclr-operator";
    let user = format!("system:serviceaccount:{}:{service_account}", h.namespace);
    let name = format!("cyclr-throttled-{}", h.namespace);
    // What the operator may do is not this test's subject (tests/deploy.rs checks the chart's
    // RBAC rule by rule): the ServiceAccount gets cluster-admin.
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": h.namespace}],
            })),
        )
        .await
        .expect("bind the ServiceAccount");
    // Cyclr lets the operator go fast, so Kubernetes is what holds it back.
    h.apply::<cyclr_operator::resources::CyclrPartner>(json!({
        "metadata": {"name": h.partner},
        "spec": {
            "apiURL": h.sim.base_url(),
            "credentialsSecretRef": {"name": "partner-credentials"},
            "resyncInterval": "10m",
            "usageInterval": "10m",
            "rateLimit": {"requestsPerSecond": 100, "burst": 100},
        }
    }))
    .await;
    h.start_operator_as(impersonating(env, &user).await);
    h.wait_partner_ready("True").await;
    let apply_accounts = |range: std::ops::Range<usize>| {
        let h = &h;
        async move {
            for i in range {
                h.apply::<CyclrAccount>(json!({
                    "metadata": {"name": format!("acct-{i:03}")},
                    "spec": {"partnerRef": {"name": h.partner}},
                }))
                .await;
            }
        }
    };
    apply_accounts(0..30).await;
    h.wait_for("10 accounts in Cyclr", Duration::from_secs(120), || async {
        (h.sim.accounts().len() >= 10).then_some(())
    })
    .await;

    // The throttle: a priority level with no seats that rejects at once, for the operator.
    let levels = Api::<PriorityLevelConfiguration>::all(admin.clone());
    let schemas = Api::<FlowSchema>::all(admin.clone());
    levels
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
                "metadata": {"name": name},
                "spec": {"type": "Limited", "limited": {
                    "nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
                    "limitResponse": {"type": "Reject"},
                }},
            })),
        )
        .await
        .expect("apply the PriorityLevelConfiguration");
    schemas
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": {"name": name},
                "spec": {
                    "priorityLevelConfiguration": {"name": name},
                    "matchingPrecedence": 100,
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [{
                        "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": service_account, "namespace": h.namespace}}],
                        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }],
                },
            })),
        )
        .await
        .expect("apply the FlowSchema");
    let throttled = Instant::now();
    let created_before = h.sim.accounts().len();
    // The rest of the rollout arrives while the operator is throttled (the test's own
    // requests are exempt).
    apply_accounts(30..ACCOUNTS).await;
    h.wait_for("APF rejecting the operator", Duration::from_secs(60), || async {
        (rejected(&admin, &name).await > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let created_meanwhile = h.sim.accounts().len() - created_before;
    let rejections = rejected(&admin, &name).await;
    let seconds = throttled.elapsed().as_secs_f64();
    schemas
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the FlowSchema");
    levels
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the level");
    eprintln!(
        "throttled {seconds:.0} s: {rejections} requests rejected, {created_meanwhile} accounts created meanwhile"
    );
    assert!(
        rejections as f64 <= 20.0 * seconds,
        "{rejections} rejections in {seconds:.0} s: kube's client retries calmly (Retry-After, backoff)"
    );

    // Recovery: every account Ready, one Cyclr account each, the one its status names.
    h.wait_for("every account Ready", Duration::from_secs(240), || async {
        let accounts = h.api::<CyclrAccount>().list(&Default::default()).await.ok()?;
        let ready = accounts
            .items
            .iter()
            .filter(|a| condition(a.conditions(), READY).is_some_and(|c| c.status == "True"))
            .count();
        (ready == ACCOUNTS).then_some(())
    })
    .await;
    let in_cyclr = h.sim.accounts();
    assert_eq!(in_cyclr.len(), ACCOUNTS, "no account lost, none made twice");
    assert_eq!(h.cyclr_requests("POST /api/partner/createaccount"), ACCOUNTS as u64);
    for account in h.api::<CyclrAccount>().list(&Default::default()).await.unwrap().items {
        let name = account.metadata.name.clone().unwrap();
        let id = account.status.as_ref().and_then(|s| s.account_id.clone());
        let made: Vec<_> = in_cyclr
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(made.len(), 1, "{name}: {made:?}");
        assert_eq!(id.as_ref(), Some(&made[0]), "{name}: its status names its account");
        assert_eq!(
            account
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::ACCOUNT_ID)),
            Some(&made[0]),
            "{name}: and so does its annotation"
        );
    }
    Api::<ClusterRoleBinding>::all(admin)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the binding");
}
