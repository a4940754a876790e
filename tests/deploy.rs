//! What users install: the Helm chart, the kustomize base in `deploy/`, the RBAC they grant
//! and the Argo CD health script, checked with the real tools (`bin/helm`, `bin/kustomize`,
//! Debian's `lua5.1`) against the real control plane. The operator runs out of cluster as
//! the chart's ServiceAccount (impersonation: the test control plane has no kubelet).

#[path = "support/chart.rs"]
mod chart;
#[path = "support/kstatus.rs"]
mod kstatus;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chart::{CHART, ROOT, helm, repo, run, testbin};
use cyclr_operator::resources;
use cyclr_sim::{SimConfig, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEALTH_LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua");
/// The namespace of the examples' partner credentials, so the chart goes there too.
const OPERATOR_NS: &str = "cyclr-system";
/// Not `cyclr-operator`: that name belongs to what `deploy/` installs in the same cluster.
const RELEASE: &str = "cyclr";
const SERVICE_ACCOUNT: &str = "cyclr-cyclr-operator";

/// Runs `cmd`, which must fail; returns its stderr.
fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} succeeded but should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    deployment_args(find(docs, "Deployment").expect("a Deployment"))
}

fn deployment_args(deployment: &Value) -> Vec<String> {
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args")
}

/// The README's two commands are the whole set-up of a fresh machine: `make test`, `make
/// demo` (and `make image`, which `make test` runs) install what they need before anything else.
#[test]
fn make_targets_install_what_they_need_first() {
    for target in ["test", "demo", "image"] {
        // Run by `make test`, this is a sub-make: no directory lines, no parent's jobserver.
        let plan = run(Command::new("make")
            .args(["-n", "--no-print-directory", target])
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .current_dir(ROOT));
        assert_eq!(
            plan.lines().next(),
            Some("bash hack/install-deps.sh"),
            "`make {target}` does not start with the install step:\n{plan}"
        );
    }
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
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    let role_names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let aggregated = ["t-cyclr-operator-view", "t-cyclr-operator-edit"].map(String::from);
    assert!(role_names(&docs).is_superset(&aggregated.clone().into()));
    assert!(role_names(&template(&["rbac.aggregateClusterRoles=false"])).is_disjoint(&aggregated.into()));
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
    let args = container_args(&template(&["leaderElection.enabled=false"]));
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
            ["--set", "leaderElection.enabled=false,replicaCount=2"],
            "leaderElection.enabled=false needs replicaCount <= 1",
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
    for path in ["charts/cyclr-operator/files/crds.yaml", "deploy/crds.yaml"] {
        let committed = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            committed == crds,
            "{path} differs from `cyclr-operator crd`: run `make manifests`"
        );
    }
    assert!(
        read("charts/cyclr-operator/files/grafana-dashboard.json") == read("deploy/grafana/cyclr-operator.json"),
        "the chart's dashboard differs from deploy/grafana/cyclr-operator.json: run `make manifests`"
    );
    assert!(
        read("charts/cyclr-operator/files/alerts.yaml") == read("deploy/prometheus/alerts.yaml"),
        "the chart's alerts differ from deploy/prometheus/alerts.yaml: run `make manifests`"
    );
    let rendered = run(&mut Command::new(repo("hack/render-deploy.sh")));
    let committed = std::fs::read_to_string(repo("deploy/operator.yaml")).expect("deploy/operator.yaml");
    assert!(
        committed == rendered,
        "deploy/operator.yaml differs from the chart: run `make manifests`"
    );
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One version for everything users pin (docs/versioning.md): the chart's appVersion and so
/// the default image tag, and the krew plugin, follow Cargo.toml (the image is checked in
/// tests/image.rs). The license the krew archives pack, and the changelog, exist.
#[test]
fn one_version_a_license_and_a_changelog() {
    let version = env!("CARGO_PKG_VERSION");
    let chart: Value = serde_yaml::from_str(&read("charts/cyclr-operator/Chart.yaml")).unwrap();
    assert_eq!(
        chart["appVersion"], version,
        "the chart's appVersion is not Cargo.toml's version: run `make manifests`"
    );
    let deployment = find(&template(&[]), "Deployment").cloned().unwrap();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image.ends_with(&format!(":{version}")), "default image {image}");

    let krew: Value = serde_yaml::from_str(&read("deploy/krew/cyclr.yaml")).unwrap();
    assert_eq!(
        krew["spec"]["version"],
        format!("v{version}"),
        "deploy/krew/cyclr.yaml: run `make manifests`"
    );
    let platforms = krew["spec"]["platforms"].as_array().unwrap();
    assert!(!platforms.is_empty());
    for platform in platforms {
        let uri = platform["uri"].as_str().unwrap();
        assert!(uri.contains(&format!("/kubectl-cyclr-v{version}-")), "{uri}");
        assert!(
            platform["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["from"] == "LICENSE")
        );
    }

    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let license = read("LICENSE");
    for expected in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(
            license.contains(expected),
            "LICENSE is not Apache-2.0's text: no {expected:?}"
        );
    }
    let changelog = read("CHANGELOG.md");
    assert!(
        changelog.contains("\n## [Unreleased]\n"),
        "CHANGELOG.md has no Unreleased section"
    );
}

/// The chart's CRDs are the operator's, from the one generated file, with the release's
/// labels and (unless `crds.keep=false`) kept on uninstall; `crds.enabled=false` leaves them out.
#[test]
fn chart_templates_the_generated_crds() {
    let crds = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .cloned()
            .collect()
    };
    let rendered = crds(&template(&[]));
    let generated: Vec<Value> = resources::all_crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(rendered.len(), generated.len());
    for (rendered, generated) in rendered.iter().zip(&generated) {
        assert_eq!(rendered["metadata"]["name"], generated["metadata"]["name"]);
        assert_eq!(rendered["spec"], generated["spec"], "{}", generated["metadata"]["name"]);
        assert_eq!(rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        assert_eq!(rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    }
    for crd in crds(&template(&["crds.keep=false"])) {
        assert!(crd["metadata"].get("annotations").is_none(), "{crd}");
    }
    assert!(crds(&template(&["crds.enabled=false"])).is_empty());
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
    let operator_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "t-cyclr-operator")
        .expect("the operator's ClusterRole");
    let mut granted = grants("cluster", &operator_role["rules"]);
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

/// The CRDs as a team that manages them outside the chart applies them (`crds.enabled=false`
/// for every release here: CRDs belong to one owner, and the chart's own CRD handling is
/// tested alone on its control plane in tests/chart_upgrade.rs); returns once all are served.
async fn apply_crds(client: &Client) {
    apply_all(client, &resources::crds_yaml()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in resources::all_crds() {
        let name = crd.metadata.name.unwrap();
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("{name} not established after 30s"))
            .expect("watch the CRD");
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
    for kind in ["CyclrPartner", "CyclrAccount", "CyclrConnectorInstall", "CyclrCycle"] {
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
    apply_crds(&client).await;
    run(helm(env, scratch.path()).args([
        "install",
        RELEASE,
        CHART,
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        "replicaCount=2,crds.enabled=false",
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

/// What the clusterrole-aggregation controller of kube-controller-manager does for the
/// built-in `role` (the test control plane runs no controller-manager): its rules become
/// those of every ClusterRole its aggregationRule selects, read from the API server. So the
/// chart's labels are tested as well as its rules.
async fn aggregate(client: &Client, role: &str) {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let mut target = roles
        .get(role)
        .await
        .unwrap_or_else(|e| panic!("ClusterRole {role}: {e}"));
    let selectors = target
        .aggregation_rule
        .clone()
        .and_then(|a| a.cluster_role_selectors)
        .unwrap_or_else(|| panic!("{role} aggregates nothing"));
    let mut rules = Vec::new();
    for selector in selectors {
        assert!(
            selector.match_expressions.is_none(),
            "{role}: only matchLabels emulated"
        );
        let labels: Vec<String> = selector
            .match_labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let selected = roles
            .list(&ListParams::default().labels(&labels.join(",")))
            .await
            .expect("list ClusterRoles");
        for source in selected
            .items
            .into_iter()
            .filter(|r| r.metadata.name.as_deref() != Some(role))
        {
            for rule in source.rules.unwrap_or_default() {
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
    }
    target.rules = Some(rules);
    roles
        .replace(role, &PostParams::default(), &target)
        .await
        .unwrap_or_else(|e| panic!("aggregate {role}: {e}"));
}

/// The HTTP status of a refused API call (panics on success or on another error).
fn refused<T: std::fmt::Debug>(result: kube::Result<T>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A tenant bound to the built-in `edit` role in its namespace creates and changes
/// CyclrAccounts and CyclrConnectorInstalls (and cannot before the chart's roles are
/// aggregated), but writes no status and no CyclrPartner; a `view` user only reads.
#[tokio::test]
async fn namespace_editors_manage_accounts_through_the_builtin_roles() {
    let env = TestEnv::get().await;
    let client = env.client();
    let scratch = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    run(helm(env, scratch.path()).args([
        "install",
        "roles",
        CHART,
        "--namespace",
        "cyclr-roles",
        "--create-namespace",
        "--set",
        "crds.enabled=false",
    ]));
    let tenants = env.new_namespace("tenant").await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &tenants);
    for (user, role) in [("tenant-editor", "edit"), ("tenant-viewer", "view")] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .expect("RoleBinding");
    }
    let as_user = |user: &str| {
        let path = scratch.path().join(format!("{user}.kubeconfig"));
        impersonating_kubeconfig(env, user, &path);
        path
    };
    let editor = impersonated_client(&as_user("tenant-editor")).await;
    let viewer = impersonated_client(&as_user("tenant-viewer")).await;
    let account = |name: &str| -> resources::CyclrAccount {
        serde_json::from_value(json!({
            "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
            "metadata": {"name": name},
            "spec": {"description": "A tenant's account"},
        }))
        .unwrap()
    };
    let as_editor: Api<resources::CyclrAccount> = Api::namespaced(editor.clone(), &tenants);
    assert_eq!(
        refused(as_editor.create(&PostParams::default(), &account("before")).await),
        403,
        "the built-in edit role covered CyclrAccounts before aggregation"
    );

    for role in ["view", "edit", "admin"] {
        aggregate(&client, role).await;
    }
    as_editor
        .create(&PostParams::default(), &account("acme"))
        .await
        .expect("an editor creates a CyclrAccount");
    as_editor
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"description": "Changed"}})),
        )
        .await
        .expect("an editor changes a CyclrAccount");
    let status = Patch::Merge(json!({"status": {"accountID": "forged"}}));
    assert_eq!(
        refused(as_editor.patch_status("acme", &PatchParams::default(), &status).await),
        403,
        "an editor writes status"
    );
    let install: resources::CyclrConnectorInstall = serde_json::from_value(json!({
        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrConnectorInstall",
        "metadata": {"name": "acme-slack"},
        "spec": {"accountRef": {"name": "acme"}, "connectorName": "Slack", "connectorVersion": "v1"},
    }))
    .unwrap();
    Api::<resources::CyclrConnectorInstall>::namespaced(editor.clone(), &tenants)
        .create(&PostParams::default(), &install)
        .await
        .expect("an editor creates a CyclrConnectorInstall");
    let partner: resources::CyclrPartner = serde_json::from_value(json!({
        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrPartner",
        "metadata": {"name": "tenant-made"},
        "spec": {"apiURL": "https://cyclr.example.com", "credentialsSecretRef": {"name": "creds"}},
    }))
    .unwrap();
    assert_eq!(
        refused(
            Api::<resources::CyclrPartner>::all(editor)
                .create(&PostParams::default(), &partner)
                .await
        ),
        403,
        "an editor creates a CyclrPartner"
    );

    let as_viewer: Api<resources::CyclrAccount> = Api::namespaced(viewer, &tenants);
    let seen = as_viewer.get("acme").await.expect("a viewer reads a CyclrAccount");
    assert_eq!(seen.spec.description.as_deref(), Some("Changed"));
    assert_eq!(
        refused(as_viewer.create(&PostParams::default(), &account("viewer-made")).await),
        403,
        "a viewer creates a CyclrAccount"
    );
    assert_eq!(
        refused(as_viewer.delete("acme", &Default::default()).await),
        403,
        "a viewer deletes a CyclrAccount"
    );
    as_editor
        .delete("acme", &Default::default())
        .await
        .expect("an editor deletes a CyclrAccount");
}

/// Every flag of `cyclr-operator run` can be set through values (the chart passes the
/// binary's own defaults unless told otherwise), `extraArgs` comes last, and the security
/// contexts can be changed key by key with the rest of the restricted defaults kept.
#[test]
fn every_run_flag_is_reachable_through_values() {
    let help = run(Command::new(env!("CARGO_BIN_EXE_cyclr-operator")).args(["run", "--help"]));
    // (flag, the environment variable clap also reads it from, its default): an option's line
    // starts with its flag, and its notes may follow on the lines after.
    let mut flags: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in help.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().is_some_and(|w| w.starts_with('-'))
            && let Some(flag) = words.iter().find(|w| w.starts_with("--"))
        {
            // `--flag[=<VALUE>]` for a flag whose value may be left out.
            let flag = flag.trim_end_matches(',').split('[').next().unwrap_or_default();
            flags.push((flag.to_string(), None, None));
        }
        let after = |key: &str| {
            line.split(key)
                .nth(1)
                .map(|s| s.split(['=', ']']).next().unwrap().to_string())
        };
        if let Some(last) = flags.last_mut() {
            last.1 = last.1.take().or(after("[env: "));
            last.2 = last.2.take().or(after("[default: "));
        }
    }
    flags.retain(|f| f.0 != "--help");
    assert!(flags.len() >= 10, "too few flags read from:\n{help}");

    // The tuning flags' defaults are the binary's (logFormat is json on purpose).
    let defaults = container_args(&template(&["replicaCount=2"]));
    for tuning in ["--concurrency", "--worker-threads", "--lease-duration"] {
        let default = flags.iter().find(|f| f.0 == tuning).and_then(|f| f.2.clone());
        let expected = format!("{tuning}={}", default.expect("a default in --help"));
        assert!(defaults.contains(&expected), "{expected} not in {defaults:?}");
    }

    let docs = template(&[
        "replicaCount=2",
        "watchNamespace=tenants",
        "labelSelector=team=payments",
        "partnerLabelSelector=region=eu",
        "shards[0].name=a",
        "shards[0].selector=shard=a",
        "shards[1].name=b",
        "shards[1].selector=shard=b",
        "logFormat=text",
        "logLevel=debug",
        "concurrency=4",
        "workerThreads=2",
        "v1PageSize=50",
        "leaderElection.leaseDuration=30",
    ]);
    // Every shard's flags: `--partner-status=false` is the second shard's.
    let args: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(deployment_args)
        .collect();
    let deployment = find(&docs, "Deployment").unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    for (flag, env_var, _) in &flags {
        let in_args = args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        let in_env = env_var
            .as_ref()
            .is_some_and(|var| env.as_array().unwrap().iter().any(|e| e["name"] == var.as_str()));
        assert!(in_args || in_env, "{flag} is not reachable through values: {args:?}");
    }
    for expected in [
        "--label-selector=team=payments,shard=a",
        "--partner-label-selector=region=eu",
        "--log-format=text",
        "--log-level=debug",
        "--concurrency=4",
        "--worker-threads=2",
        "--v1-page-size=50",
        "--lease-duration=30",
    ] {
        assert!(args.contains(&expected.to_string()), "{expected} not in {args:?}");
    }

    let docs = template(&[
        "extraArgs[0]=--log-level=trace",
        "extraVolumes[0].name=ca",
        "extraVolumes[0].configMap.name=corporate-ca",
        "extraVolumeMounts[0].name=ca",
        "extraVolumeMounts[0].mountPath=/etc/corporate-ca",
    ]);
    let args = container_args(&docs);
    assert_eq!(args.last().map(String::as_str), Some("--log-level=trace"));
    let pod = &find(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([{"name": "ca", "configMap": {"name": "corporate-ca"}}])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "ca", "mountPath": "/etc/corporate-ca"}])
    );

    let docs = template(&[
        "podSecurityContext.runAsUser=null",
        "podSecurityContext.runAsGroup=null",
        "podSecurityContext.fsGroup=1000",
        "securityContext.runAsUser=1000",
    ]);
    let pod = &find(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    let (pod_context, container_context) = (&pod["securityContext"], &pod["containers"][0]["securityContext"]);
    assert!(pod_context.get("runAsUser").is_none(), "{pod_context}");
    assert!(pod_context.get("runAsGroup").is_none(), "{pod_context}");
    assert_eq!(pod_context["fsGroup"], 1000);
    assert_eq!(pod_context["runAsNonRoot"], true);
    assert_eq!(pod_context["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container_context["runAsUser"], 1000);
    assert_eq!(container_context["readOnlyRootFilesystem"], true);
    assert_eq!(container_context["allowPrivilegeEscalation"], false);
    assert_eq!(container_context["capabilities"]["drop"], json!(["ALL"]));
}

/// `networkPolicy.enabled` renders a NetworkPolicy the API server accepts that lets the
/// operator's pod take metrics scrapes and reach DNS, the API server and Cyclr, on their
/// ports only.
#[tokio::test]
async fn network_policy_opens_only_what_the_operator_uses() {
    assert!(find(&template(&[]), "NetworkPolicy").is_none(), "off by default");
    let docs = template(&[
        "networkPolicy.enabled=true",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "networkPolicy.cyclr.cidrs={203.0.113.0/24,198.51.100.7/32}",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
    ]);
    let policy = find(&docs, "NetworkPolicy").expect("a NetworkPolicy");
    let deployment = find(&docs, "Deployment").unwrap();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = &policy["spec"]["ingress"];
    assert_eq!(ingress.as_array().unwrap().len(), 1);
    assert_eq!(ingress[0]["ports"], json!([{"port": "http", "protocol": "TCP"}]));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"],
        "http"
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["team"],
        "monitoring"
    );

    // Each egress rule as (destination blocks, ports): nothing open on every port.
    let egress: Vec<(Vec<String>, Vec<String>)> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let blocks = rule["to"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|peer| peer["ipBlock"]["cidr"].as_str().map(String::from))
                .collect();
            let ports = rule["ports"]
                .as_array()
                .expect("every egress rule names its ports")
                .iter()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap()))
                .collect();
            (blocks, ports)
        })
        .collect();
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        egress,
        vec![
            (vec![], strings(&["53/UDP", "53/TCP"])),
            (strings(&["10.0.0.1/32"]), strings(&["443/TCP", "6443/TCP"])),
            (strings(&["203.0.113.0/24", "198.51.100.7/32"]), strings(&["443/TCP"])),
        ]
    );

    let env = TestEnv::get().await;
    let namespace = env.new_namespace("netpol").await;
    let mut policy: NetworkPolicy = serde_json::from_value(policy.clone()).unwrap();
    policy.metadata.namespace = Some(namespace.clone());
    Api::<NetworkPolicy>::namespaced(env.client(), &namespace)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &policy,
        )
        .await
        .expect("the API server accepts the NetworkPolicy");
}

/// With `watchNamespace`, the chart grants Secrets in the operator's namespace and the
/// watched one only (the rest as in the documented table), and the operator runs on that:
/// it is ready, so none of its watches is forbidden.
#[tokio::test]
async fn watch_namespace_install_reads_secrets_in_two_namespaces_only() {
    let env = TestEnv::get().await;
    let client = env.client();
    let scratch = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    let own = env.new_namespace("scoped").await;
    let watched = env.new_namespace("scoped-tenants").await;
    let other = env.new_namespace("scoped-other").await;
    run(helm(env, scratch.path())
        .args(["install", "scoped", CHART, "--namespace", &own])
        .args(["--set", &format!("crds.enabled=false,watchNamespace={watched}")]));

    let kubeconfig = scratch.path().join("kubeconfig");
    impersonating_kubeconfig(
        env,
        &format!("system:serviceaccount:{own}:scoped-cyclr-operator"),
        &kubeconfig,
    );
    let as_operator = impersonated_client(&kubeconfig).await;
    let documented = documented_grants();
    let grants = |scope: &str| -> BTreeSet<(String, String, String)> {
        documented
            .iter()
            .filter(|g| g.0 == scope && g.2 != "secrets")
            .map(|(_, group, resource, verb)| (group.clone(), resource.clone(), verb.clone()))
            .collect()
    };
    let secrets: BTreeSet<_> = ["get", "list", "watch"]
        .map(|verb| (String::new(), "secrets".to_string(), verb.to_string()))
        .into();
    let cluster = grants("cluster");
    assert!(cluster.iter().any(|g| g.1 == "namespaces"), "the table was read");
    assert_eq!(rules_in(&as_operator, &other).await, cluster, "in another namespace");
    assert_eq!(
        rules_in(&as_operator, &watched).await,
        &cluster | &secrets,
        "in the watched namespace"
    );
    assert_eq!(
        rules_in(&as_operator, &own).await,
        &(&cluster | &secrets) | &grants("namespace"),
        "in the operator's namespace"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = scratch.path().join("operator.log");
    // A label nothing carries: it reconciles nothing of the other tests, but runs every watch.
    let _operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_cyclr-operator"))
        .args(["run", "--namespace", &own, "--watch-namespace", &watched])
        .args(["--label-selector", &format!("cyclr.com/test={own}")])
        .args(["--partner-label-selector", &format!("cyclr.com/test={own}")])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("POD_NAMESPACE")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(scratch.path().join("operator.stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start cyclr-operator");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http_status(port, "/readyz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready after 60s as the watchNamespace ServiceAccount:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `shards`: one Deployment per shard, each with its own pods (selector), its shard's label
/// selector and Lease, the whole number of shards (each keeps to its share of a partner's
/// budget), and one writer of the partners' status; without `shards`, the one Deployment
/// carries none of that.
#[test]
fn chart_deploys_one_deployment_per_shard() {
    let docs = template(&[
        "replicaCount=2",
        "shards[0].name=a",
        "shards[0].selector=shard=a",
        "shards[1].name=b",
        "shards[1].selector=shard=b",
        "shards[2].name=c",
        "shards[2].selector=shard in (c\\,d)",
    ]);
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let names: Vec<&str> = deployments
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["t-cyclr-operator-a", "t-cyclr-operator-b", "t-cyclr-operator-c"]
    );
    for (deployment, (shard, selector)) in
        deployments
            .iter()
            .zip([("a", "shard=a"), ("b", "shard=b"), ("c", "shard in (c,d)")])
    {
        assert_eq!(deployment["spec"]["replicas"], 2, "replicaCount per shard");
        let matched = &deployment["spec"]["selector"]["matchLabels"];
        assert_eq!(matched["cyclr.com/shard"], shard, "each shard's own pods");
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["cyclr.com/shard"],
            shard
        );
        let args = deployment_args(deployment);
        for expected in [
            format!("--label-selector={selector}"),
            format!("--shard={shard}"),
            "--shards=3".to_string(),
            format!("--partner-status={}", shard == "a"),
            "--lease-name=t-cyclr-operator".to_string(),
        ] {
            assert!(args.contains(&expected), "{expected} not in shard {shard}'s {args:?}");
        }
    }
    assert_eq!(
        docs.iter().filter(|d| d["kind"] == "ServiceAccount").count(),
        1,
        "the shards share the ServiceAccount and its RBAC"
    );

    let single = template(&[]);
    assert_eq!(single.iter().filter(|d| d["kind"] == "Deployment").count(), 1);
    let args = container_args(&single);
    assert!(
        !args.iter().any(|a| a.starts_with("--shard")
            || a.starts_with("--partner-status")
            || a.starts_with("--label-selector")),
        "{args:?}"
    );
    let schema = run_failing(
        testbin("helm")
            .args(["template", "t", CHART, "--kube-version", "1.33.0"])
            .args(["--set", "shards[0].name=a"]),
    );
    assert!(
        schema.contains("selector"),
        "a shard without a selector is refused: {schema}"
    );
}

/// `grafanaDashboard.enabled` ships deploy/grafana's dashboard in a ConfigMap that Grafana's
/// dashboard sidecar picks up by its label.
#[test]
fn grafana_dashboard_ships_as_a_sidecar_configmap() {
    assert!(find(&template(&[]), "ConfigMap").is_none(), "off by default");
    let docs = template(&["grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"]);
    let config_map = find(&docs, "ConfigMap").expect("the dashboard ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    let shipped: Value = serde_json::from_str(config_map["data"]["cyclr-operator.json"].as_str().unwrap())
        .expect("the ConfigMap holds JSON");
    let source: Value = serde_json::from_str(&read("deploy/grafana/cyclr-operator.json")).unwrap();
    assert_eq!(shipped, source);
}
