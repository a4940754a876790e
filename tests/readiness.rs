//! `/readyz` of a real `cyclr-operator run` whose ServiceAccount lacks one permission (list
//! and watch Secrets): 503 naming the failing watch while it lacks it, 200 once it is granted.

mod support;

use std::process::Stdio;
use std::time::Duration;

use cyclr_testenv::TestEnv;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::json;
use support::install_crds;
use tokio::time::Instant;

/// What the operator needs, except reading Secrets unless `with_secrets`.
async fn grant(client: &Client, name: &str, user_ns: &str, with_secrets: bool) {
    let mut rules = vec![
        json!({"apiGroups": ["cyclr.com"], "resources": ["*"], "verbs": ["*"]}),
        json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["*"]}),
        json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]}),
    ];
    if with_secrets {
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}));
    }
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    let apply = PatchParams::apply("cyclr-tests").force();
    Api::<ClusterRole>::all(client.clone())
        .patch(name, &apply, &Patch::Apply(&role))
        .await
        .expect("ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": user_ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(name, &apply, &Patch::Apply(&binding))
        .await
        .expect("ClusterRoleBinding");
}

async fn readyz(port: u16) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn readyz_is_503_while_the_secret_watch_is_forbidden() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await;
    let client = env.client();
    install_crds(&client).await;
    let namespace = env.new_namespace("readyz").await;
    grant(&client, &namespace, &namespace, false).await;

    // The admin kubeconfig, impersonating the operator's ServiceAccount.
    let mut kubeconfig = Kubeconfig::read_from(env.kubeconfig_path()).expect("kubeconfig");
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.impersonate = Some(format!("system:serviceaccount:{namespace}:operator"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let log = dir.path().join("operator.log");
    let _operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_cyclr-operator"))
        .args(["run", "--namespace", &namespace, "--watch-namespace", &namespace])
        // Alone, so its watches start at once: a standby (no Lease yet) is ready without them.
        .arg("--leader-election=false")
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start cyclr-operator");

    // Not ready for as long as the Secret watch is forbidden (past the failure grace).
    let until = Instant::now() + Duration::from_secs(15);
    let mut answered = false;
    while Instant::now() < until {
        let (status, body) = readyz(port).await;
        if status != 0 {
            answered = true;
            assert_eq!(status, 503, "ready without reading Secrets: {body:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(answered, "/readyz never answered (log: {})", log.display());
    let (_, body) = readyz(port).await;
    assert!(body.contains("Secret"), "/readyz names the failing watch: {body:?}");

    // Granted: ready.
    grant(&client, &namespace, &namespace, true).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(port).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready once Secrets are readable: {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
