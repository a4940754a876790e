//! Two real `cyclr-operator run --leader-election` processes against the control plane and the
//! Cyclr simulator: `/readyz` while the CRDs are missing and once they are there (standby
//! included), `kill -9` of the leader mid-rollout (the standby takes over within the lease
//! duration, no duplicate Cyclr accounts), and the Lease handed over at once on SIGTERM.
//!
//! The replicas log at `RUST_LOG=trace` in JSON; at the end every line must be JSON, and no log
//! line, Event or status may carry the partner's client secret or a connector's API key.
//!
//! One test, because the first step needs a control plane without the CRDs.

mod support;

use std::path::Path;
use std::time::Duration;

use cyclr_operator::resources::{
    ApiKeySecretRef, ConnectorAuthSpec, CredentialsSecretRef, CyclrAccount, CyclrAccountSpec, CyclrConnectorInstall,
    CyclrConnectorInstallSpec, CyclrPartner, CyclrPartnerSpec, NameRef, READY, RateLimit, condition,
};
use cyclr_sim::{Faults, SimConfig, Simulator};
use cyclr_testenv::TestEnv;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::process::{OperatorProcess, lease_holder};
use support::{CLIENT_ID, CLIENT_SECRET, install_crds};
use tokio::time::Instant;

/// Seconds; long enough that a SIGTERM handover (immediate) and a wait for expiry differ.
const LEASE_DURATION: u64 = 10;
const ACCOUNTS: usize = 12;
const LEASE: &str = "cyclr-operator";
const API_KEY: &str = "connector-api-key-value";

/// A replica of this test: leader election on the test's Lease, logging everything.
fn start_replica(kubeconfig: &Path, namespace: &str, name: &str) -> OperatorProcess {
    let lease_duration = LEASE_DURATION.to_string();
    let args = [
        "--leader-election",
        "--lease-duration",
        &lease_duration,
        "--lease-name",
        LEASE,
    ];
    // Everything, from every crate, so the secret scan below sees all there is.
    OperatorProcess::start(kubeconfig, namespace, name, "trace", &args)
}

async fn wait_holder(client: &Client, namespace: &str, pid: u32, timeout: Duration) -> Duration {
    let started = Instant::now();
    while lease_holder(client, namespace, LEASE).await != Some(pid) {
        assert!(
            started.elapsed() < timeout,
            "pid {pid} did not take the Lease within {timeout:?} (holder: {:?})",
            lease_holder(client, namespace, LEASE).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

async fn ready_accounts(api: &Api<CyclrAccount>) -> Vec<CyclrAccount> {
    api.list(&Default::default())
        .await
        .expect("list accounts")
        .items
        .into_iter()
        .filter(|a| {
            a.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, READY))
                .is_some_and(|c| c.status == "True")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fails_over_without_duplicates_and_hands_over_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await;
    let client = env.client();
    let namespace = env.new_namespace("failover").await;

    // 1. No CRDs yet: both replicas are live but not ready, and say why.
    let a = start_replica(env.kubeconfig_path(), &namespace, "a");
    let b = start_replica(env.kubeconfig_path(), &namespace, "b");
    a.wait_readyz(503, "is not installed").await;
    b.wait_readyz(503, "is not installed").await;

    // 2. CRDs established: leader and standby both ready.
    install_crds(&client).await;
    a.wait_readyz(200, "ready").await;
    b.wait_readyz(200, "ready").await;
    let leader_pid = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = lease_holder(&client, &namespace, LEASE).await {
                break pid;
            }
            assert!(Instant::now() < deadline, "nobody took the Lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (mut leader, survivor) = if leader_pid == a.pid() { (a, b) } else { (b, a) };
    assert_eq!(leader.pid(), leader_pid, "the holder is one of the two replicas");

    // 3. A partner and a rollout of accounts, slowed down by Cyclr latency.
    let sim = Simulator::start(SimConfig::new(CLIENT_ID, CLIENT_SECRET), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start cyclr-sim");
    sim.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let test_label = || Some([("cyclr.com/test".to_owned(), namespace.clone())].into());
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "partner-credentials", "labels": {"cyclr.com/credentials": "true"}},
        "stringData": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    }))
    .unwrap();
    secret
        .metadata
        .labels
        .get_or_insert_default()
        .insert("cyclr.com/test".into(), namespace.clone());
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
            // Paced so the rollout lasts seconds: the kill must land mid-rollout however fast
            // the operator onboards (a burst of 20 let all 12 go Ready between two polls).
            rate_limit: RateLimit {
                requests_per_second: 2,
                burst: 1,
            },
            resync_interval: "10s".parse().unwrap(),
            usage_interval: "10m".parse().unwrap(),
            service_url: None,
            cyclr_api: Default::default(),
        },
    );
    partner.metadata.labels = test_label();
    Api::<CyclrPartner>::all(client.clone())
        .create(&PostParams::default(), &partner)
        .await
        .expect("CyclrPartner");
    let accounts: Api<CyclrAccount> = Api::namespaced(client.clone(), &namespace);
    for i in 0..ACCOUNTS {
        let mut spec: CyclrAccountSpec = serde_json::from_value(json!({})).expect("defaults");
        spec.partner_ref.name = namespace.clone();
        let account = CyclrAccount {
            metadata: ObjectMeta {
                name: Some(format!("tenant-{i:02}")),
                labels: test_label(),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        };
        accounts
            .create(&PostParams::default(), &account)
            .await
            .expect("CyclrAccount");
    }

    let mut key_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "connector-key", "labels": {"cyclr.com/credentials": "true"}},
        "stringData": {"apiKey": API_KEY},
    }))
    .unwrap();
    key_secret
        .metadata
        .labels
        .get_or_insert_default()
        .insert("cyclr.com/test".into(), namespace.clone());
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &key_secret)
        .await
        .expect("connector Secret");
    let install = CyclrConnectorInstall {
        metadata: ObjectMeta {
            name: Some("crm".into()),
            labels: test_label(),
            ..ObjectMeta::default()
        },
        spec: CyclrConnectorInstallSpec {
            account_ref: NameRef {
                name: "tenant-00".into(),
            },
            connector_name: "Salesforce".into(),
            connector_version: "1.0".into(),
            installed_name: None,
            auth: Some(ConnectorAuthSpec {
                api_key_secret_ref: Some(ApiKeySecretRef {
                    name: "connector-key".into(),
                    key: "apiKey".into(),
                }),
                basic_auth_secret_ref: None,
            }),
            connector_id: None,
            properties: vec![],
            deletion_policy: Default::default(),
        },
        status: None,
    };
    let installs: Api<CyclrConnectorInstall> = Api::namespaced(client.clone(), &namespace);
    installs
        .create(&PostParams::default(), &install)
        .await
        .expect("CyclrConnectorInstall");

    // 4. kill -9 the leader once some, not all, accounts are Ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready_at_kill = loop {
        let ready = ready_accounts(&accounts).await.len();
        if ready >= 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "no account Ready under the leader (log: {})",
            leader.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    leader.child.start_kill().expect("SIGKILL the leader");
    let killed_at = Instant::now();
    leader.child.wait().await.expect("the leader is gone");
    eprintln!("killed the leader with {ready_at_kill} of {ACCOUNTS} accounts Ready");
    assert!(
        ready_at_kill < ACCOUNTS,
        "the kill must land mid-rollout ({ready_at_kill} of {ACCOUNTS} Ready)"
    );

    // 5. The standby takes over within the lease duration (plus the lease manager's up to 1s
    //    of random wait before taking an expired Lease), and the rollout completes.
    wait_holder(
        &client,
        &namespace,
        survivor.pid(),
        Duration::from_secs(LEASE_DURATION + 5),
    )
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover after kill -9: {takeover:?} (lease duration {LEASE_DURATION}s)");
    assert!(
        takeover <= Duration::from_secs(LEASE_DURATION + 2),
        "took over after {takeover:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready = loop {
        let ready = ready_accounts(&accounts).await;
        if ready.len() == ACCOUNTS {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {ACCOUNTS} accounts Ready after the failover (log: {})",
            ready.len(),
            survivor.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let in_cyclr = sim.accounts();
    let mut names: Vec<&str> = in_cyclr.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(in_cyclr.len(), ACCOUNTS, "one Cyclr account per resource: {names:?}");
    assert_eq!(names.len(), ACCOUNTS, "no duplicate names in Cyclr");
    let mut ids: Vec<&str> = ready.iter().filter_map(|a| a.account_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ACCOUNTS, "every resource holds its own Cyclr id");
    survivor.wait_readyz(200, "ready").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let install = installs.get("crm").await.expect("get install");
        if install
            .status
            .is_some_and(|s| condition(&s.conditions, READY).is_some_and(|c| c.status == "True"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the install is not Ready (log: {})",
            survivor.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connectors: usize = sim
        .accounts()
        .iter()
        .map(|a| sim.installed_connectors(&a.id).len())
        .sum();
    assert_eq!(connectors, 1, "one connector installed in Cyclr");

    // 6. SIGTERM: the leader releases the Lease and a new standby takes over at once.
    let standby = start_replica(env.kubeconfig_path(), &namespace, "c");
    standby.wait_readyz(200, "ready").await;
    let mut old_leader = survivor;
    old_leader.terminate();
    let term_at = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(10), old_leader.child.wait())
        .await
        .expect("the old leader exits within 10s of SIGTERM (no slow Cyclr call under way)")
        .expect("wait");
    let exited_at = Instant::now();
    assert!(
        exit.success(),
        "a clean shutdown exits 0: {exit:?} (log: {})",
        old_leader.log.display()
    );
    let handover = wait_holder(&client, &namespace, standby.pid(), Duration::from_secs(LEASE_DURATION)).await;
    eprintln!(
        "SIGTERM to exit: {:?}; exit to handover: {handover:?}",
        exited_at.duration_since(term_at)
    );
    assert!(
        handover < Duration::from_millis(1500),
        "a released Lease is taken at once, not after it expires: {handover:?} (logs: {}, {})",
        old_leader.log.display(),
        standby.log.display()
    );
    standby.wait_readyz(200, "ready").await;

    // 7. No secret anywhere: logs (every line JSON), Events, statuses.
    let secrets = [CLIENT_SECRET, API_KEY];
    let encoded: Vec<String> = secrets
        .iter()
        .map(|s| k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .map(|b| serde_json::to_value(b).unwrap().as_str().unwrap().to_owned())
        .collect();
    let mut lines = 0;
    for log in [&leader.log, &old_leader.log, &standby.log] {
        let text = std::fs::read_to_string(log).expect("read the log");
        for line in text.lines() {
            lines += 1;
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}) in {}: {line}", log.display()));
            for secret in secrets.iter().copied().chain(encoded.iter().map(String::as_str)) {
                assert!(!line.contains(secret), "a secret in {}: {line}", log.display());
            }
        }
    }
    eprintln!("scanned {lines} trace log lines");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &namespace)
        .list(&Default::default())
        .await
        .expect("list Events");
    let statuses = (
        accounts.list(&Default::default()).await.unwrap(),
        installs.list(&Default::default()).await.unwrap(),
        Api::<CyclrPartner>::all(client.clone()).get(&namespace).await.unwrap(),
    );
    let kubernetes_side = format!(
        "{}{}",
        serde_json::to_string(&events).unwrap(),
        serde_json::to_string(&statuses).unwrap()
    );
    assert!(!events.items.is_empty(), "the scenario made Events");
    for secret in secrets {
        assert!(!kubernetes_side.contains(secret), "a secret in an Event or a status");
    }
}
