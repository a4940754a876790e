//! The quick start of docs/install.md, run as written: its fenced `sh` blocks, in order, by
//! bash (`set -euo pipefail`) with the real `kubectl` and `bin/helm`, against the test control
//! plane and `cyclr-sim`. Alone in its binary: the chart owns the CRDs here, as in the quick
//! start. What this cluster cannot do is substituted, and only that:
//!
//! - the variables of the first block point at this run: `CYCLR_API_URL`, `CYCLR_CLIENT_ID`
//!   and `CYCLR_CLIENT_SECRET` at the simulator (appended after the block's own `export`s,
//!   whose `VERSION` and `CHART_VERSION` must be this release's);
//! - no container engine: `skopeo copy oci-archive:…` checks that the release's image archive
//!   exists in dist/ (`make release`), `kind load` does nothing;
//! - the chart comes from dist/ (the package a release publishes) instead of the registry;
//! - no kubelet: `rollout status` is where the test starts the operator binary itself, with
//!   the Deployment's own arguments (its HTTP address moved to a free loopback port), as the
//!   chart's ServiceAccount (impersonation), as tests/deploy.rs does.

#[path = "support/chart.rs"]
#[allow(dead_code)] // the chart tests' helpers; this one runs helm from the quick start's text
mod chart;

use std::path::Path;
use std::process::Command;

use chart::{repo, run, testbin};
use cyclr_sim::{SimConfig, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The fenced `sh` blocks of the section `## Quick start` of docs/install.md, in order.
fn quick_start_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(repo("docs/install.md")).expect("docs/install.md");
    let section = text
        .split("\n## Quick start\n")
        .nth(1)
        .expect("docs/install.md has a `## Quick start` section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in the quick start");
    blocks
}

/// The substitutions of the module's doc for one line of the quick start, or the line.
fn substitute(line: &str, chart_package: &Path) -> String {
    let image_archive = repo("dist").join(format!("cyclr-operator-{VERSION}.oci.tar"));
    if line.starts_with("skopeo copy ") {
        assert!(
            line.contains("\"oci-archive:cyclr-operator-$VERSION.oci.tar:$VERSION\""),
            "{line}"
        );
        return format!(
            "test -f {} || {{ echo 'no image archive: run make release' >&2; exit 1; }}",
            image_archive.display()
        );
    }
    if line.starts_with("  \"docker-archive:") {
        return String::new();
    }
    if line.starts_with("kind load ") {
        return "true".to_string();
    }
    if line.starts_with("kubectl -n cyclr-system rollout status deploy/cyclr-operator") {
        return "exit 0 # the test starts the operator".to_string();
    }
    line.replace(
        "oci://$REGISTRY/charts/cyclr-operator --version \"$CHART_VERSION\"",
        &chart_package.display().to_string(),
    )
}

/// bash running `script`, with the admin kubeconfig and `bin/` (helm) first on `PATH`.
fn bash(env: &TestEnv, home: &Path, script: &str) -> Command {
    let path = format!(
        "{}:{}",
        repo("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(home)
        .env("PATH", path)
        .env("KUBECONFIG", env.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_runs_as_written_to_a_ready_account() {
    let kubectl_on_path = Command::new("kubectl").arg("version").arg("--client").output().is_ok();
    assert!(
        kubectl_on_path || repo("bin/kubectl").exists(),
        "kubectl is missing: install it, or run `bash hack/testbin.sh kubectl`"
    );
    drop(testbin("helm")); // fails naming `make testbin` when bin/helm is missing
    let chart_version = {
        let chart: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(repo("charts/cyclr-operator/Chart.yaml")).unwrap()).unwrap();
        chart["version"].as_str().unwrap().to_string()
    };
    let chart_package = repo("dist").join(format!("cyclr-operator-{chart_version}.tgz"));
    assert!(
        chart_package.exists(),
        "{} is missing: run `make release` (or `RELEASE_PROFILE=dev bash hack/release.sh`)",
        chart_package.display()
    );

    let blocks = quick_start_blocks();
    assert_eq!(blocks.len(), 5, "variables, image, chart, partner, account");
    assert!(
        blocks[0].contains(&format!("export VERSION={VERSION} CHART_VERSION={chart_version}\n")),
        "the quick start installs this release: {}",
        blocks[0]
    );
    let env = TestEnv::get().await;
    let client = env.client();
    let sim = Simulator::start(
        SimConfig::new("quickstart-client", "quickstart-secret"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("start cyclr-sim");
    let overrides = format!(
        "export CYCLR_API_URL={} CYCLR_CLIENT_ID=quickstart-client CYCLR_CLIENT_SECRET=quickstart-secret\n",
        sim.base_url()
    );
    let script: Vec<String> = blocks
        .iter()
        .enumerate()
        .flat_map(|(i, block)| {
            let mut lines: Vec<String> = block.lines().map(|l| substitute(l, &chart_package)).collect();
            if i == 0 {
                lines.push(overrides.clone());
            }
            lines
        })
        .collect();
    // Up to the rollout (which the test plays), then the variables again and the rest.
    let rollout = script
        .iter()
        .position(|l| l.starts_with("exit 0 # the test starts the operator"))
        .expect("the quick start waits for the rollout");
    let (install, rest) = script.split_at(rollout);
    let variables = format!("{}{overrides}", blocks[0]);
    let scratch = tempfile::tempdir().unwrap();
    run(&mut bash(env, scratch.path(), &install.join("\n")));

    // The operator, as the Deployment the chart made would run it.
    let deployment = Api::<Deployment>::namespaced(client.clone(), "cyclr-system")
        .get("cyclr-operator")
        .await
        .expect("the chart's Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let service_account = pod.service_account_name.expect("a ServiceAccount");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = pod.containers[0]
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            if a.starts_with("--http-addr=") {
                format!("--http-addr=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    let admin = std::fs::read_to_string(env.kubeconfig_path()).unwrap();
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    for entry in kubeconfig["users"].as_sequence_mut().unwrap() {
        entry["user"]["as"] = format!("system:serviceaccount:cyclr-system:{service_account}").into();
    }
    let kubeconfig_path = scratch.path().join("operator.kubeconfig");
    std::fs::write(&kubeconfig_path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let log = scratch.path().join("operator.log");
    let _operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_cyclr-operator"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig_path)
        .env("POD_NAMESPACE", "cyclr-system")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(scratch.path().join("operator.stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start cyclr-operator");

    let out = bash(env, scratch.path(), &format!("{variables}{}", rest[1..].join("\n")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the quick start failed after the rollout: {}\n{stdout}\noperator log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Its last command lists the account, Ready, with the Cyclr id the simulator gave it.
    let accounts = sim.accounts();
    assert_eq!(accounts.len(), 1, "one account created in Cyclr");
    assert_eq!(accounts[0].name, "Acme Ltd");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("acme "))
        .unwrap_or_else(|| panic!("no row for acme in:\n{stdout}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], accounts[0].id, "ACCOUNT-ID: {row}");
    assert_eq!(columns[2], "True", "READY: {row}");
}

/// The README's install section is the quick start's: every command line of its first `sh`
/// block (comments aside) is a line of the quick start, so the two cannot drift apart.
#[test]
fn readme_install_matches_the_quick_start() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let install = readme.split("\n## Install\n").nth(1).expect("README has `## Install`");
    let block = install
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sh block in the README's install section");
    let quick_start: Vec<String> = quick_start_blocks()
        .iter()
        .flat_map(|b| b.lines().map(String::from).collect::<Vec<_>>())
        .collect();
    let mut checked = 0;
    for line in block.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            quick_start.iter().any(|q| q == line),
            "README line not in the quick start: {line}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "the README's install block has the helm and Secret commands"
    );
}
