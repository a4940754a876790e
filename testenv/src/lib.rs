//! A real Kubernetes control plane (etcd + kube-apiserver built into `bin/` by
//! `make testbin`) for integration tests and the local demo.
//!
//! ```no_run
//! # async fn demo() {
//! let env = cyclr_testenv::TestEnv::get().await;
//! let ns = env.new_namespace("my-test").await;
//! let client = env.client();
//! # }
//! ```
//!
//! One control plane is started per test process, on first use, and killed when the process
//! ends, however it ends. Set `CYCLR_TEST_KUBECONFIG` to run against an existing cluster
//! instead (e.g. `.cluster/kubeconfig` from `make cluster-up`). A test that needs namespaces
//! to go away or owner references followed asks for a kube-controller-manager with
//! [`TestEnv::start_controller_manager`].

mod certs;
pub mod control_plane;
mod process;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::OnceCell;

pub use process::Lifetime;

/// The control plane shared by all tests of one test process.
pub struct TestEnv {
    kubeconfig: PathBuf,
    config: kube::Config,
    /// The kube-apiserver this process started; `None` on a cluster given by
    /// `CYCLR_TEST_KUBECONFIG`, which is not ours to restart.
    apiserver: Option<control_plane::ApiServer>,
    /// The outcome of [`TestEnv::start_controller_manager`], once asked.
    controller_manager: OnceCell<Result<(), String>>,
}

impl TestEnv {
    /// The process-wide control plane, started on first use. Panics, with the etcd and
    /// kube-apiserver log tails, if it cannot start; the panic repeats for every later test
    /// rather than starting again.
    pub async fn get() -> &'static TestEnv {
        static ENV: OnceCell<Result<TestEnv, String>> = OnceCell::const_new();
        let env = ENV
            .get_or_init(|| async { Self::start().await.map_err(|e| format!("{e:#}")) })
            .await;
        match env {
            Ok(env) => env,
            Err(err) => panic!("cyclr-testenv: no control plane: {err}"),
        }
    }

    async fn start() -> Result<TestEnv> {
        if let Some(path) = std::env::var_os("CYCLR_TEST_KUBECONFIG") {
            let kubeconfig = PathBuf::from(path);
            let config = Kubeconfig::read_from(&kubeconfig)
                .with_context(|| format!("CYCLR_TEST_KUBECONFIG={}", kubeconfig.display()))?;
            let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
            return Ok(TestEnv {
                kubeconfig,
                config,
                apiserver: None,
                controller_manager: OnceCell::new(),
            });
        }
        let dir = scratch_dir()?;
        let (config, apiserver) = control_plane::start_with_apiserver(&dir, Lifetime::Process).await?;
        // Only now: after a failed start the logs stay for reading until the next run.
        process::remove_dir_at_exit(dir.clone());
        Ok(TestEnv {
            kubeconfig: control_plane::kubeconfig_in(&dir),
            config,
            apiserver: Some(apiserver),
            controller_manager: OnceCell::new(),
        })
    }

    /// An admin (system:masters) client. A new one per call: a client is bound to the tokio
    /// runtime that built it, and every `#[tokio::test]` has its own runtime.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("building a client for the test cluster")
    }

    /// Stops kube-apiserver (SIGTERM, then waits for its exit); etcd and its data stay. Tests
    /// that use this must not share the control plane with tests running at the same time.
    pub fn stop_apiserver(&self) -> Result<()> {
        self.own_apiserver()?.stop();
        Ok(())
    }

    /// Starts kube-apiserver again (same port, certificates and etcd) after
    /// [`TestEnv::stop_apiserver`], and returns once `/readyz` answers.
    pub async fn start_apiserver(&self) -> Result<()> {
        self.own_apiserver()?.start(&self.config).await
    }

    /// etcd's client URL (plain HTTP on loopback), for tests that read or compact etcd itself
    /// through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/compaction`). Not on a
    /// `CYCLR_TEST_KUBECONFIG` cluster, whose etcd is not ours.
    pub fn etcd_url(&self) -> Result<&str> {
        self.own_apiserver()?
            .etcd_url()
            .context("kube-apiserver was started without --etcd-servers")
    }

    fn own_apiserver(&self) -> Result<&control_plane::ApiServer> {
        self.apiserver
            .as_ref()
            .context("this control plane came from CYCLR_TEST_KUBECONFIG: its kube-apiserver is not ours to restart")
    }

    /// Starts kube-controller-manager with the namespace controller and the garbage collector
    /// against this control plane, once per process (later calls return the first outcome);
    /// see [`control_plane::start_controller_manager`]. It runs until the process ends and
    /// affects every test of the process: deleted namespaces go away, dependents of deleted
    /// owners are collected. On a `CYCLR_TEST_KUBECONFIG` cluster nothing is started: a real
    /// cluster runs its own (`make cluster-up`'s does not). Fails, with the tail of its log,
    /// when `bin/kube-controller-manager` is missing or it cannot start.
    pub async fn start_controller_manager(&self) -> Result<()> {
        let started = self
            .controller_manager
            .get_or_init(|| async {
                if self.apiserver.is_none() {
                    return Ok(());
                }
                let dir = self.kubeconfig.parent().expect("the kubeconfig is in the scratch dir");
                control_plane::start_controller_manager(dir, &self.config, Lifetime::Process)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })
            .await;
        started
            .clone()
            .map_err(|e| anyhow::anyhow!("cyclr-testenv: no kube-controller-manager: {e}"))
    }

    /// The admin kubeconfig, e.g. for building an impersonating client or running kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates a namespace named `<prefix>-<random suffix>` and returns its name. Nothing
    /// deletes it: without a controller-manager ([`TestEnv::start_controller_manager`]) a
    /// deleted namespace never finishes terminating, and the whole cluster is thrown away at
    /// the end anyway.
    pub async fn new_namespace(&self, prefix: &str) -> String {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating a namespace {prefix}-*: {e}"));
        created.metadata.name.expect("the server names the namespace")
    }
}

/// A per-process directory under the system temp dir. Directories of processes that no longer
/// exist (killed before their exit hook ran) are removed first.
fn scratch_dir() -> Result<PathBuf> {
    const PREFIX: &str = "cyclr-testenv-";
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
