//! Two `cyclr-operator run` processes with the default flags, as a rolling update runs the old
//! and the new pod of a one-replica install, against the control plane and the Cyclr
//! simulator:
//!
//! - the new process reconciles nothing (no Cyclr call, no Kubernetes write) until the old one
//!   has stopped and released the Lease: leader election is on by default;
//! - SIGTERM to the leader while a Create Account is under way: the leader lets it end and
//!   records the id before it releases the Lease, so the next leader never creates again.

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cyclr_operator::resources::{
    CredentialsSecretRef, CyclrAccount, CyclrAccountSpec, CyclrPartner, CyclrPartnerSpec, READY, RateLimit,
    annotations, condition,
};
use cyclr_sim::{Faults, SimConfig, SimHandle, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::process::{OperatorProcess, lease_holder};
use support::{CLIENT_ID, CLIENT_SECRET, install_crds};
use tokio::time::Instant;

/// The `--lease-name` default.
const LEASE: &str = "cyclr-operator";
const CREATE: &str = "POST /api/partner/createaccount";
/// How long the simulator holds every request in the graceful-stop test: a create that is
/// still under way when SIGTERM arrives, longer than the old 5 s shutdown grace.
const CREATE_LATENCY: Duration = Duration::from_secs(7);
/// The operator's lines that only reconciling produces: controllers, the driver, the Cyclr
/// client.
const WORK_TARGETS: [&str; 3] = ["cyclr_operator::controllers", "cyclr_operator::driver", "cyclr::"];

/// A namespace with a partner on its own simulator; operators started for it.
struct Scene {
    client: Client,
    namespace: String,
    sim: SimHandle,
    kubeconfig: &'static Path,
}

impl Scene {
    async fn start(prefix: &str) -> Scene {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env = TestEnv::get().await;
        let client = env.client();
        install_crds(&client).await;
        let namespace = env.new_namespace(prefix).await;
        let sim = Simulator::start(SimConfig::new(CLIENT_ID, CLIENT_SECRET), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("start cyclr-sim");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "partner-credentials",
                "labels": {"cyclr.com/credentials": "true", "cyclr.com/test": namespace},
            },
            "stringData": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("credentials Secret");
        let mut partner = CyclrPartner::new(
            &namespace,
            CyclrPartnerSpec {
                api_url: sim.base_url(),
                credentials_secret_ref: CredentialsSecretRef {
                    name: "partner-credentials".into(),
                    client_id_key: "client_id".into(),
                    client_secret_key: "client_secret".into(),
                },
                namespace_selector: None,
                rate_limit: RateLimit {
                    requests_per_second: 10,
                    burst: 20,
                },
                resync_interval: "10m".parse().unwrap(),
                usage_interval: "10m".parse().unwrap(),
                service_url: None,
                cyclr_api: Default::default(),
            },
        );
        partner.metadata.labels = Some([("cyclr.com/test".to_owned(), namespace.clone())].into());
        Api::<CyclrPartner>::all(client.clone())
            .create(&PostParams::default(), &partner)
            .await
            .expect("CyclrPartner");
        Scene {
            client,
            namespace,
            sim,
            kubeconfig: env.kubeconfig_path(),
        }
    }

    /// An operator process with the default flags (leader election not asked for).
    fn operator(&self, name: &str) -> OperatorProcess {
        let filter = "info,cyclr_operator=debug,cyclr=debug";
        OperatorProcess::start(self.kubeconfig, &self.namespace, name, filter, &[])
    }

    fn accounts(&self) -> Api<CyclrAccount> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create_account(&self, name: &str) {
        let mut spec: CyclrAccountSpec = serde_json::from_value(json!({})).expect("defaults");
        spec.partner_ref.name = self.namespace.clone();
        let account = CyclrAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("cyclr.com/test".to_owned(), self.namespace.clone())].into()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        };
        self.accounts()
            .create(&PostParams::default(), &account)
            .await
            .expect("CyclrAccount");
    }

    /// Waits until the account is Ready at its current generation.
    async fn wait_ready(&self, name: &str, log: &Path) -> CyclrAccount {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let account = self.accounts().get(name).await.expect("get account");
            let status = account.status.as_ref();
            let current = status.and_then(|s| s.observed_generation) == account.metadata.generation;
            if current
                && status
                    .and_then(|s| condition(&s.conditions, READY))
                    .is_some_and(|c| c.status == "True")
            {
                return account;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is not Ready: {:?} (log: {})",
                account.status,
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_holder(&self, operator: &OperatorProcess) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lease_holder(&self.client, &self.namespace, LEASE).await != Some(operator.pid()) {
            assert!(
                Instant::now() < deadline,
                "pid {} did not take the Lease (log: {})",
                operator.pid(),
                operator.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the process has done so far, by counter: Cyclr calls, Kubernetes writes, reconciles.
async fn work(operator: &OperatorProcess) -> Vec<(&'static str, f64)> {
    let mut counts = Vec::new();
    for counter in [
        "cyclr_api_requests_total",
        "cyclr_operator_kubernetes_writes_total",
        "cyclr_operator_reconciles_total",
    ] {
        counts.push((counter, operator.counter(counter, "").await));
    }
    counts
}

fn assert_idle(operator: &OperatorProcess, work: &[(&str, f64)], when: &str) {
    assert!(
        work.iter().all(|(_, count)| *count == 0.0),
        "the standby worked {when}: {work:?} (log: {})",
        operator.log.display()
    );
}

/// When the first log line with this message was written.
fn logged_at(operator: &OperatorProcess, message: &str) -> DateTime<Utc> {
    let line = operator
        .log_lines()
        .into_iter()
        .find(|line| line["message"] == message)
        .unwrap_or_else(|| panic!("{message:?} not in {}", operator.log.display()));
    timestamp(&line)
}

fn timestamp(line: &serde_json::Value) -> DateTime<Utc> {
    line["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_pod_of_a_rolling_update_reconciles_only_after_the_old_one_stopped() {
    let scene = Scene::start("rolling").await;
    let old = scene.operator("old");
    scene.create_account("tenant-a").await;
    scene.wait_ready("tenant-a", &old.log).await;

    // The new pod starts while the old one runs, as a rolling update's surge does, and there
    // is work to do while both run: a new account and a changed one.
    let new = scene.operator("new");
    new.wait_readyz(200, "ready").await;
    scene.create_account("tenant-b").await;
    scene
        .accounts()
        .patch(
            "tenant-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"description": "changed during the rollout"}})),
        )
        .await
        .expect("change tenant-a");
    scene.wait_ready("tenant-b", &old.log).await;
    scene.wait_ready("tenant-a", &old.log).await;
    let done = work(&new).await;
    scene.wait_holder(&old).await;
    assert_idle(&new, &done, "while the old pod led");

    // Stopped, the old pod hands over; until its Lease is released the new one stays idle.
    // The counters are read first: the old pod still holding the Lease afterwards means the
    // new one did not lead when they were read.
    old.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = work(&new).await;
        if lease_holder(&scene.client, &scene.namespace, LEASE).await != Some(old.pid()) {
            break;
        }
        assert_idle(&new, &done, "while the old pod held the Lease");
        assert!(Instant::now() < deadline, "the old pod kept its Lease after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut old = old;
    let exit = tokio::time::timeout(Duration::from_secs(30), old.child.wait())
        .await
        .expect("the old pod exits after SIGTERM")
        .expect("wait");
    assert!(
        exit.success(),
        "a clean stop exits 0: {exit:?} (log: {})",
        old.log.display()
    );
    scene.wait_holder(&new).await;

    // The new pod works once it leads (so the counters above could have moved), and its first
    // reconcile, Cyclr call or write came after the old pod's controllers stopped and it set out
    // to release the Lease.
    scene.create_account("tenant-c").await;
    scene.wait_ready("tenant-c", &new.log).await;
    assert!(new.counter("cyclr_operator_reconciles_total", "").await > 0.0);
    assert!(new.counter("cyclr_api_requests_total", "").await > 0.0);
    let released = logged_at(&old, "releasing the leader lease");
    let first_work = new
        .log_lines()
        .iter()
        .filter(|line| {
            let target = line["target"].as_str().unwrap_or_default();
            WORK_TARGETS.iter().any(|t| target.starts_with(t))
        })
        .map(timestamp)
        .min()
        .expect("the new leader logged its work");
    assert!(
        first_work >= released,
        "the new pod worked at {first_work}, before the old one released the Lease at {released} (log: {})",
        new.log.display()
    );
    let names: Vec<String> = scene.sim.accounts().into_iter().map(|a| a.name).collect();
    assert_eq!(names.len(), 3, "one Cyclr account per resource: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_records_the_create_under_way_before_it_releases_the_lease() {
    let scene = Scene::start("graceful").await;
    let leader = scene.operator("leader");
    scene.create_account("warm-up").await;
    scene.wait_ready("warm-up", &leader.log).await;
    scene.wait_holder(&leader).await;
    let standby = scene.operator("standby");
    standby.wait_readyz(200, "ready").await;

    // A slow Cyclr: SIGTERM once the Create Account has reached it (counted on arrival,
    // before the latency), so the create is under way.
    scene.sim.set_faults(Faults {
        latency: CREATE_LATENCY,
        ..Faults::default()
    });
    scene.create_account("slow").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scene.sim.stats().requests_to(CREATE) < 2 {
        assert!(
            Instant::now() < deadline,
            "no Create Account for slow (log: {})",
            leader.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut leader = leader;
    leader.terminate();
    let exit = tokio::time::timeout(Duration::from_secs(45), leader.child.wait())
        .await
        .expect("the leader exits within its shutdown grace")
        .expect("wait");
    assert!(
        exit.success(),
        "a clean stop exits 0: {exit:?} (log: {})",
        leader.log.display()
    );

    // The stopping leader waited for Cyclr's answer and recorded the id, status and
    // annotation, before it let go of the Lease.
    let account = scene.accounts().get("slow").await.expect("get slow");
    let status = account.status.clone().expect("status");
    let id = status.account_id.clone().unwrap_or_else(|| {
        panic!(
            "the stopping leader did not record the id: {status:?} (log: {})",
            leader.log.display()
        )
    });
    assert_eq!(status.pending_create, None, "the pending marker is cleared");
    assert_eq!(
        account
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::ACCOUNT_ID)),
        Some(&id)
    );
    let in_cyclr: Vec<String> = scene
        .sim
        .accounts()
        .into_iter()
        .filter(|a| a.name == "slow")
        .map(|a| a.id)
        .collect();
    assert_eq!(
        in_cyclr,
        std::slice::from_ref(&id),
        "the one account Cyclr created is the one recorded"
    );

    // The next leader reconciles the account and keeps it: no second Create Account.
    scene.sim.set_faults(Faults::default());
    scene.wait_holder(&standby).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby
        .counter("cyclr_operator_reconciles_total", "kind=\"CyclrAccount\"")
        .await
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "the new leader did not reconcile both accounts (log: {})",
            standby.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let account = scene.wait_ready("slow", &standby.log).await;
    assert_eq!(account.account_id(), Some(id.as_str()));
    assert_eq!(scene.sim.stats().requests_to(CREATE), 2, "one create per account, ever");
    assert_eq!(scene.sim.accounts().len(), 2);
}
