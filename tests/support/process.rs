//! `cyclr-operator run` as a child process (the built binary), for tests of what only a whole
//! process does: leader election, signals, `/readyz`, `/metrics`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// One operator process restricted to a namespace and its test label, logging JSON to a file.
pub struct OperatorProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `cyclr-operator run` for `namespace` (its own namespace too), logging with the
    /// `RUST_LOG` filter `log_filter` to a file named after the namespace and `name`; `args`
    /// are added to the command line.
    pub fn start(kubeconfig: &Path, namespace: &str, name: &str, log_filter: &str, args: &[&str]) -> OperatorProcess {
        let selector = format!("cyclr.com/test={namespace}");
        OperatorProcess::start_serving(kubeconfig, namespace, &selector, name, log_filter, args)
    }

    /// [`OperatorProcess::start`] serving only the accounts, installs and cycles `selector`
    /// selects (a shard of the test's objects, e.g. `cyclr.com/test=<namespace>,shard=a`);
    /// the partners it uses are the test's.
    pub fn start_serving(
        kubeconfig: &Path,
        namespace: &str,
        selector: &str,
        name: &str,
        log_filter: &str,
        args: &[&str],
    ) -> OperatorProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("cyclr-operator-{namespace}-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_cyclr-operator"))
            .args(["run", "--namespace", namespace, "--watch-namespace", namespace])
            .args(["--label-selector", selector])
            .args(["--partner-label-selector", &format!("cyclr.com/test={namespace}")])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "json"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", log_filter)
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start cyclr-operator");
        OperatorProcess { child, port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM, as the kubelet does to stop a pod.
    pub fn terminate(&self) {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(term.success(), "kill -TERM {}", self.pid());
    }

    /// `/readyz`'s status code and body; status 0 while nothing answers.
    pub async fn readyz(&self) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        match reqwest::get(&url).await {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    pub async fn wait_readyz(&self, want: u16, body_has: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.readyz().await;
            if status == want && body.contains(body_has) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz of pid {} answers {status} {body:?}, not {want} with {body_has:?} (log: {})",
                self.pid(),
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum of the samples of the counter `name` (`cyclr_api_requests_total`, …) on
    /// `/metrics` whose labels contain `labels` (`kind="CyclrAccount"`; `""`: all of them); 0
    /// while there is none.
    pub async fn counter(&self, name: &str, labels: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url)
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body");
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(labels))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The process's log lines, each parsed as JSON.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).expect("read the log");
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}) in {}: {line}", self.log.display()))
            })
            .collect()
    }
}

/// The pid at the end of the Lease's holder identity (`<host>-<pid>`), if it is held.
pub async fn lease_holder(client: &Client, namespace: &str, lease: &str) -> Option<u32> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(lease)
        .await
        .ok()??;
    lease.spec?.holder_identity?.rsplit('-').next()?.parse().ok()
}
