//! What users install: the Helm chart, the kustomize base in `deploy/`, the RBAC they grant
//! and the Argo CD health script, checked with the real tools (`bin/helm`, `bin/kustomize`,
//! Debian's `lua5.1`) against the real control plane. The operator runs out of cluster as
//! the chart's ServiceAccount (impersonation: the test control plane has no kubelet).

#[path = "support/kstatus.rs"]
mod kstatus;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cyclr_operator::resources;
use cyclr_sim::{SimConfig, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/cyclr-operator");
const HEALTH_LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua");
/// The namespace of the examples' partner credentials, so the chart goes there too.
const OPERATOR_NS: &str = "cyclr-system";
/// Not `cyclr-operator`: that name belongs to what `deploy/` installs in the same cluster.
const RELEASE: &str = "cyclr";
const SERVICE_ACCOUNT: &str = "cyclr-cyclr-operator";

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// A tool built into `bin/` by `make testbin`.
fn testbin(name: &str) -> Command {
    let path = repo("bin").join(name);
    assert!(path.exists(), "{} is missing: run `make testbin`", path.display());
    Command::new(path)
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `cmd`, which must fail; returns its stderr.
fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} succeeded but should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `bin/helm` talking to the test control plane, with its own cache and config directories.
fn helm(env: &TestEnv, home: &Path) -> Command {
    let mut cmd = testbin("helm");
    cmd.env("KUBECONFIG", env.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `helm template` of the chart with `--set` values; the documents it prints.
fn template(set: &[&str]) -> Vec<Value> {
    let mut cmd = testbin("helm");
    cmd.args([
        "template",
        "t",
        CHART,
        "--namespace",
        OPERATOR_NS,
        "--kube-version",
        "1.33.0",
    ]);
    for value in set {
        cmd.args(["--set", value]);
    }
    documents(&run(&mut cmd))
}

/// The objects of a multi-document YAML stream (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("valid YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect()
}

fn container_args(docs: &[Value]) -> Vec<String> {
    let deployment = find(docs, "Deployment").expect("a Deployment");
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args")
}

#[test]
fn chart_lints_and_renders_a_hardened_deployment() {
    run(testbin("helm").args(["lint", "--strict", CHART]));
    run(testbin("helm").args([
        "lint",
        "--strict",
        CHART,
        "--set",
        "replicaCount=3,partner.create=true,partner.apiURL=https://api.example.com,partner.credentialsSecretName=creds",
    ]));

    let docs = template(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    let pod = &find(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(container["env"][0]["name"], "POD_NAMESPACE");
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(pod["serviceAccountName"], "t-cyclr-operator");
    // Leader election even for one replica: a rolling update runs the old and new pod at once.
    let args = container_args(&docs);
    for expected in ["--leader-election", "--lease-name=t-cyclr-operator"] {
        assert!(args.contains(&expected.to_string()), "{expected} not in {args:?}");
    }
    assert_eq!(pod["terminationGracePeriodSeconds"], 50);
    let args = container_args(&template(&["leaderElection=false"]));
    assert!(args.contains(&"--leader-election=false".to_string()), "{args:?}");

    let docs = template(&[
        "replicaCount=2",
        "podDisruptionBudget.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "watchNamespace=tenants",
        "partner.create=true",
        "partner.apiURL=https://api.example.com",
        "partner.credentialsSecretName=creds",
    ]);
    let args = container_args(&docs);
    for expected in [
        "--leader-election",
        "--lease-name=t-cyclr-operator",
        "--watch-namespace=tenants",
    ] {
        assert!(args.contains(&expected.to_string()), "{expected} not in {args:?}");
    }
    assert!(find(&docs, "PodDisruptionBudget").is_some());
    assert!(find(&docs, "ServiceMonitor").is_some());
    let partner = find(&docs, "CyclrPartner").expect("the default CyclrPartner");
    assert_eq!(partner["spec"]["apiURL"], "https://api.example.com");
    assert_eq!(partner["spec"]["credentialsSecretRef"]["name"], "creds");

    // values.schema.json and `required` turn wrong values into a failed install.
    for (wrong, expected) in [
        (["--set", "logFormat=xml"], "logFormat"),
        (["--set-string", "replicaCount=two"], "replicaCount"),
        (["--set", "metrics.prot=9090"], "prot"),
        (["--set", "partner.create=true"], "partner.apiURL is required"),
        (
            ["--set", "leaderElection=false,replicaCount=2"],
            "leaderElection=false needs replicaCount <= 1",
        ),
    ] {
        let mut cmd = testbin("helm");
        cmd.args(["template", "t", CHART, "--kube-version", "1.33.0"])
            .args(wrong);
        let stderr = run_failing(&mut cmd);
        assert!(stderr.contains(expected), "{wrong:?}: {stderr}");
    }
}

#[test]
fn generated_manifests_match_their_sources() {
    let crds = resources::crds_yaml();
    for path in ["charts/cyclr-operator/crds/cyclr.com_crds.yaml", "deploy/crds.yaml"] {
        let committed = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            committed == crds,
            "{path} differs from `cyclr-operator crd`: run `make manifests`"
        );
    }
    let rendered = run(&mut Command::new(repo("hack/render-deploy.sh")));
    let committed = std::fs::read_to_string(repo("deploy/operator.yaml")).expect("deploy/operator.yaml");
    assert!(
        committed == rendered,
        "deploy/operator.yaml differs from the chart: run `make manifests`"
    );
}

/// (scope, API group, resource, verb) of each permission in a set of rules.
type Grant = (String, String, String, String);

fn grants(scope: &str, rules: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let s = |v: &Value| v.as_str().unwrap().to_string();
                    out.insert((scope.to_string(), s(group), s(resource), s(verb)));
                }
            }
        }
    }
    out
}

/// The grants listed in the RBAC table of docs/install.md.
fn documented_grants() -> BTreeSet<Grant> {
    let doc = std::fs::read_to_string(repo("docs/install.md")).expect("docs/install.md");
    let table = doc.split("## RBAC").nth(1).expect("an RBAC section in docs/install.md");
    let unquote = |s: &str| {
        let s = s.trim().trim_matches('`');
        if s.starts_with("\"\"") {
            String::new()
        } else {
            s.to_string()
        }
    };
    let mut out = BTreeSet::new();
    for row in table
        .lines()
        .filter(|l| l.starts_with("| cluster") || l.starts_with("| namespace"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (scope, group) = (cells[1], unquote(cells[2]));
        for resource in cells[3].split(',') {
            for verb in cells[4].split(',') {
                out.insert((scope.into(), group.clone(), unquote(resource), verb.trim().into()));
            }
        }
    }
    out
}

#[test]
fn rbac_is_exactly_the_documented_table() {
    let docs = template(&[]);
    let mut granted = grants("cluster", &find(&docs, "ClusterRole").unwrap()["rules"]);
    granted.extend(grants("namespace", &find(&docs, "Role").unwrap()["rules"]));
    assert_eq!(
        granted,
        documented_grants(),
        "the chart's RBAC and docs/install.md differ"
    );
    for (_, _, resource, verb) in &granted {
        assert!(resource != "*" && verb != "*", "a wildcard in the chart's RBAC");
        if resource == "secrets" {
            assert!(["get", "list", "watch"].contains(&verb.as_str()), "Secrets {verb}");
        }
    }
}

/// The CyclrPartner's URL field, `apiURL` (`apiUrl` in CRDs generated before the rename).
fn api_url_field() -> &'static str {
    if resources::crds_yaml().contains("apiURL:") {
        "apiURL"
    } else {
        "apiUrl"
    }
}

fn yaml_stream(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

/// Server-side applies every object of a YAML stream, as `kubectl apply --server-side` does
/// (field manager `kubectl`, no forced conflicts); namespaced objects without a namespace
/// go to `default`.
async fn apply_all(client: &Client, yaml: &str) {
    let mut discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    for doc in documents(yaml) {
        let gvk = GroupVersionKind::try_from(&serde_json::from_value::<kube::api::TypeMeta>(doc.clone()).unwrap())
            .expect("apiVersion and kind");
        // A CRD installed a moment ago may take a moment to be served.
        for _ in 0..20 {
            if discovery.resolve_gvk(&gvk).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            discovery = Discovery::new(client.clone()).run().await.expect("discovery");
        }
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("no API for {gvk:?}"));
        let name = doc["metadata"]["name"].as_str().expect("a name").to_string();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                doc["metadata"]["namespace"].as_str().unwrap_or("default"),
                &resource,
            ),
        };
        api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", gvk.kind));
    }
}

#[tokio::test]
async fn kustomize_base_installs_the_operator() {
    let env = TestEnv::get().await;
    let client = env.client();
    let rendered = run(testbin("kustomize").args(["build"]).arg(repo("deploy")));
    apply_all(&client, &rendered).await;

    let sa = Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NS)
        .get("cyclr-operator")
        .await
        .expect("the ServiceAccount from deploy/");
    assert_eq!(sa.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "kustomize");
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get("cyclr-operator")
        .await
        .expect("the ClusterRoleBinding from deploy/");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("cyclr-operator", Some(OPERATOR_NS))
    );
    let deployments = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"));
    Api::<DynamicObject>::namespaced_with(client.clone(), OPERATOR_NS, &deployments)
        .get("cyclr-operator")
        .await
        .expect("the Deployment from deploy/");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in resources::all_crds() {
        crds.get(crd.metadata.name.as_deref().unwrap())
            .await
            .expect("a CRD from deploy/");
    }
}

/// A kubeconfig that is the test cluster's admin one, impersonating `user`.
fn impersonating_kubeconfig(env: &TestEnv, user: &str, path: &Path) {
    let admin = std::fs::read_to_string(env.kubeconfig_path()).expect("admin kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
    for entry in config["users"].as_sequence_mut().expect("users") {
        entry["user"]["as"] = user.into();
    }
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).expect("write kubeconfig");
}

/// Whether `user` (a ServiceAccount of `OPERATOR_NS`) may do `verb` on `resource`.
async fn may(client: &Client, user: &str, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{OPERATOR_NS}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: namespace.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("a review status")
        .allowed
}

/// The HTTP status of `GET path` on the operator's HTTP port, if it answers.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The object of `kind` as the API server returns it.
async fn get_object(client: &Client, kind: &str, namespace: Option<&str>, name: &str) -> Value {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("cyclr.com", "v1alpha1", kind));
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    serde_json::to_value(api.get(name).await.unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))).unwrap()
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Polls until the object's condition `type_` has `status` (and `reason`, if given).
async fn wait_condition(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    (type_, status, reason): (&str, &str, Option<&str>),
    log: &Path,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let object = get_object(client, kind, namespace, name).await;
        if let Some(c) = condition(&object, type_)
            && c["status"] == status
            && reason.is_none_or(|r| c["reason"] == r)
        {
            return object;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "{kind} {name}: no {type_}={status} {reason:?} after 90s; status {}\noperator log:\n{}",
                object["status"],
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A Lua 5.1 expression for a JSON value, as Argo CD hands `obj` to a health script.
fn lua_value(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for byte in s.bytes() {
                match byte {
                    b'"' | b'\\' => out.extend(['\\', byte as char]),
                    0x20..=0x7e => out.push(byte as char),
                    _ => out.push_str(&format!("\\{byte}")),
                }
            }
            out + "\""
        }
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_value(&Value::String(k.clone())), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs deploy/argocd/health.lua with Debian's `lua5.1` on `object`: (status, message).
fn argocd_health(object: &Value) -> (String, String) {
    let script = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_value(object),
        lua_value(&Value::String(HEALTH_LUA.into()))
    );
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("lua5.1: {e}: install it (apt-get install lua5.1, or hack/install-deps.sh)"));
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "health.lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let (status, message) = out.split_once('\n').unwrap_or((&out, ""));
    (status.to_string(), message.to_string())
}

#[test]
fn argocd_files_carry_the_tested_health_script() {
    let script = std::fs::read_to_string(HEALTH_LUA).expect("deploy/argocd/health.lua");
    let patch = &documents(&std::fs::read_to_string(repo("deploy/argocd/argocd-cm.yaml")).unwrap())[0];
    for kind in ["CyclrPartner", "CyclrAccount", "CyclrConnectorInstall"] {
        let key = format!("resource.customizations.health.cyclr.com_{kind}");
        assert_eq!(
            patch["data"][&key],
            script.as_str(),
            "{key} in deploy/argocd/argocd-cm.yaml"
        );
    }
    let readme = std::fs::read_to_string(repo("charts/cyclr-operator/README.md")).expect("the chart's README");
    assert!(
        readme.contains(&script),
        "the chart's README does not carry deploy/argocd/health.lua"
    );
}

/// The whole install path: `helm install` the chart, the examples applied, and the operator
/// binary run as the chart's ServiceAccount until every example is Ready. Then the same run
/// supplies the Argo CD health script with a resource in each state, and the API server
/// confirms the ServiceAccount may do nothing beyond the documented RBAC.
#[tokio::test]
async fn chart_service_account_runs_the_examples() {
    let env = TestEnv::get().await;
    let client = env.client();
    let scratch = tempfile::tempdir().unwrap();
    run(helm(env, scratch.path()).args([
        "install",
        RELEASE,
        CHART,
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        "replicaCount=2",
    ]));

    // The examples as they are, but for the partner's URL: the local simulator's.
    let sim = Simulator::start(
        SimConfig::new("demo-client", "demo-secret"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("start cyclr-sim");
    for file in ["partner.yaml", "accounts.yaml", "connector-installs.yaml"] {
        let yaml = std::fs::read_to_string(repo("examples").join(file)).unwrap();
        let mut docs = documents(&yaml);
        for doc in docs.iter_mut().filter(|d| d["kind"] == "CyclrPartner") {
            doc["spec"][api_url_field()] = sim.base_url().into();
        }
        apply_all(&client, &yaml_stream(&docs)).await;
    }

    let user = format!("system:serviceaccount:{OPERATOR_NS}:{SERVICE_ACCOUNT}");
    let kubeconfig = scratch.path().join("kubeconfig");
    impersonating_kubeconfig(env, &user, &kubeconfig);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = scratch.path().join("operator.log");
    let _operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_cyclr-operator"))
        .args([
            "run",
            "--leader-election",
            "--lease-name",
            SERVICE_ACCOUNT,
            "--log-format",
            "json",
        ])
        .args(["--namespace", OPERATOR_NS, "--http-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("POD_NAMESPACE")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(scratch.path().join("operator.stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start cyclr-operator");

    let ready = ("Ready", "True", None);
    let partner = wait_condition(&client, "CyclrPartner", None, "default", ready, &log).await;
    let mut healthy = vec![partner];
    for account in ["acme", "globex", "initech"] {
        healthy.push(wait_condition(&client, "CyclrAccount", Some("tenants"), account, ready, &log).await);
    }
    for install in ["acme-slack", "globex-jira"] {
        healthy.push(wait_condition(&client, "CyclrConnectorInstall", Some("tenants"), install, ready, &log).await);
    }
    assert_eq!(http_status(port, "/readyz").await, Some(200));
    assert_eq!(http_status(port, "/healthz").await, Some(200));
    let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get(SERVICE_ACCOUNT)
        .await
        .expect("the leader Lease in the operator's namespace");
    assert!(lease.spec.unwrap().holder_identity.is_some(), "the Lease has a holder");

    // Argo CD health and Flux's kstatus, on real objects in each state: they agree.
    for object in &healthy {
        assert_eq!(argocd_health(object).0, "Healthy", "{}", object["metadata"]["name"]);
        assert_eq!(kstatus::kstatus(object).0, "Current", "{}", object["metadata"]["name"]);
    }
    let mut stale = healthy[1].clone();
    stale["metadata"]["generation"] = json!(stale["metadata"]["generation"].as_i64().unwrap() + 1);
    assert_eq!(
        argocd_health(&stale).0,
        "Progressing",
        "a newer generation than observed"
    );

    let broken = json!([
        {
            "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
            "metadata": {"name": "unknown-plan", "namespace": "tenants"},
            "spec": {"description": "No such plan", "pricePlan": {"name": "Platinum"}},
        },
        {
            "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrPartner",
            "metadata": {"name": "missing-credentials"},
            "spec": {api_url_field(): sim.base_url(), "credentialsSecretRef": {"name": "no-such-secret"}},
        },
    ]);
    apply_all(&client, &yaml_stream(broken.as_array().unwrap())).await;
    let stalled = ("Stalled", "True", None);
    let degraded = wait_condition(&client, "CyclrAccount", Some("tenants"), "unknown-plan", stalled, &log).await;
    let (status, message) = argocd_health(&degraded);
    assert_eq!(status, "Degraded");
    assert_eq!(kstatus::kstatus(&degraded).0, "Failed");
    assert!(
        message.contains("Platinum"),
        "the Stalled message names the plan: {message}"
    );

    let reconciling = ("Reconciling", "True", None);
    let progressing = wait_condition(&client, "CyclrPartner", None, "missing-credentials", reconciling, &log).await;
    assert_eq!(argocd_health(&progressing).0, "Progressing");
    assert_eq!(kstatus::kstatus(&progressing).0, "InProgress");

    let accounts = ApiResource::erase::<resources::CyclrAccount>(&());
    Api::<DynamicObject>::namespaced_with(client.clone(), "tenants", &accounts)
        .patch(
            "initech",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"cyclr.com/paused": "true"}}})),
        )
        .await
        .expect("pause initech");
    let paused = ("Ready", "True", Some("Paused"));
    let suspended = wait_condition(&client, "CyclrAccount", Some("tenants"), "initech", paused, &log).await;
    assert_eq!(argocd_health(&suspended).0, "Suspended");

    // No more than the documented RBAC: a sample of what the ServiceAccount must not do.
    for (verb, group, resource, namespace) in [
        ("create", "", "secrets", Some(OPERATOR_NS)),
        ("update", "", "secrets", Some("tenants")),
        ("patch", "", "secrets", Some("tenants")),
        ("delete", "", "secrets", Some(OPERATOR_NS)),
        ("delete", "", "namespaces", None),
        ("create", "", "pods", Some(OPERATOR_NS)),
        ("get", "", "configmaps", Some(OPERATOR_NS)),
        ("create", "", "events", Some("tenants")),
        ("create", "cyclr.com", "cyclraccounts", Some("tenants")),
        ("delete", "cyclr.com", "cyclraccounts", Some("tenants")),
        ("update", "cyclr.com", "cyclrpartners", None),
        ("delete", "cyclr.com", "cyclrpartners", None),
        ("update", "apiextensions.k8s.io", "customresourcedefinitions", None),
        ("create", "coordination.k8s.io", "leases", Some("tenants")),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings", None),
    ] {
        assert!(
            !may(&client, &user, verb, group, resource, namespace).await,
            "the chart's ServiceAccount may {verb} {group}/{resource} in {namespace:?}"
        );
    }
    // The review itself can tell yes: one it must allow.
    assert!(
        may(
            &client,
            &user,
            "patch",
            "cyclr.com",
            "cyclraccounts/status",
            Some("tenants")
        )
        .await
    );

    // And exactly what the table lists, as the API server sums it up for the ServiceAccount:
    // in its own namespace everything, elsewhere everything but the Leases.
    let as_operator = impersonated_client(&kubeconfig).await;
    let documented = documented_grants();
    let unscoped = |scope: &str| -> BTreeSet<(String, String, String)> {
        documented
            .iter()
            .filter(|g| scope == "namespace" || g.0 == "cluster")
            .map(|(_, group, resource, verb)| (group.clone(), resource.clone(), verb.clone()))
            .collect()
    };
    assert_eq!(rules_in(&as_operator, OPERATOR_NS).await, unscoped("namespace"));
    assert_eq!(rules_in(&as_operator, "tenants").await, unscoped("cluster"));
}

async fn impersonated_client(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("impersonating config");
    Client::try_from(config).expect("impersonating client")
}

/// (API group, resource, verb) the client's user may use in `namespace`, by
/// SelfSubjectRulesReview, less what every authenticated user may (reviewing itself).
async fn rules_in(client: &Client, namespace: &str) -> BTreeSet<(String, String, String)> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.into()),
        },
        ..Default::default()
    };
    let status = Api::<SelfSubjectRulesReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview")
        .status
        .expect("a review status");
    assert!(
        !status.incomplete,
        "the rules review is incomplete: {:?}",
        status.evaluation_error
    );
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        for group in rule.api_groups.unwrap_or_default() {
            if group == "authorization.k8s.io" || group == "authentication.k8s.io" {
                continue;
            }
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// `helm upgrade` and `helm uninstall` leave Cyclr resources (and so Cyclr accounts) alone:
/// the CRDs stay, and so does every CyclrAccount, unchanged.
#[tokio::test]
async fn helm_upgrade_and_uninstall_leave_accounts_alone() {
    let env = TestEnv::get().await;
    let client = env.client();
    let scratch = tempfile::tempdir().unwrap();
    let (release, namespace) = ("keep", "cyclr-keep");
    run(helm(env, scratch.path()).args([
        "install",
        release,
        CHART,
        "--namespace",
        namespace,
        "--create-namespace",
    ]));
    let tenants = env.new_namespace("keep-tenants").await;
    let accounts: Api<resources::CyclrAccount> = Api::namespaced(client.clone(), &tenants);
    let account: resources::CyclrAccount = serde_json::from_value(json!({
        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
        "metadata": {"name": "kept"},
        "spec": {"description": "Kept", "pricePlan": {"name": "Pro"}},
    }))
    .unwrap();
    let before = accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create account");

    run(helm(env, scratch.path()).args([
        "upgrade",
        release,
        CHART,
        "--namespace",
        namespace,
        "--set",
        "replicaCount=3,podDisruptionBudget.enabled=true",
    ]));
    run(helm(env, scratch.path()).args(["uninstall", release, "--namespace", namespace]));

    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(
        roles.get_opt("keep-cyclr-operator").await.unwrap().is_none(),
        "uninstall removes the ClusterRole"
    );
    let after = accounts.get("kept").await.expect("the account survives uninstall");
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(after.spec, before.spec);
    assert!(after.metadata.deletion_timestamp.is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in resources::all_crds() {
        crds.get(crd.metadata.name.as_deref().unwrap())
            .await
            .expect("helm uninstall leaves the CRDs");
    }
}
