//! A sharded install (issue #23 row 4): `cyclr-operator run` processes, each serving the
//! accounts of one label selector (`--shard`, `--shards`), all for one partner, against the
//! control plane and the Cyclr simulator:
//!
//! - three shards together keep to the partner's `rateLimit` (the simulator's busiest 1 s,
//!   10 s and 60 s windows), every account is created once, one shard writes the partner's
//!   status, and an account claimed in one shard is seen as claimed in another;
//! - two processes of one shard and one of another: `kill -9` of the first shard's leader
//!   hands that shard, and only it, to its standby; the other shard goes on undisturbed.

mod support;

use std::path::Path;
use std::time::Duration;

use cyclr_bench::chaos::{bucket_bound, max_in_window};
use cyclr_operator::resources::{CyclrAccount, CyclrPartner, READY, STALLED, condition};
use cyclr_testenv::TestEnv;
use serde_json::json;
use support::process::{OperatorProcess, lease_holder};
use support::{Harness, ready_message};
use tokio::time::Instant;

/// The `--lease-name` default; a shard's Lease is `<it>-<shard>`.
const LEASE: &str = "cyclr-operator";
const CREATE: &str = "POST /api/partner/createaccount";

/// A namespace, a simulator and a partner with this `rateLimit`, no operator yet.
async fn partner_with_limit(prefix: &str, requests_per_second: u32, burst: u32) -> Harness {
    let h = Harness::without_operator(prefix, "10m").await;
    h.apply::<CyclrPartner>(json!({
        "metadata": {"name": h.partner},
        "spec": {
            "apiURL": h.sim.base_url(),
            "credentialsSecretRef": {"name": "partner-credentials"},
            "resyncInterval": "10m",
            "usageInterval": "10m",
            "rateLimit": {"requestsPerSecond": requests_per_second, "burst": burst},
        }
    }))
    .await;
    h
}

/// An operator process serving shard `shard` (`shard=<shard>` among the test's objects) of
/// `shards`, with its own Lease; `partner_status` says whether it writes the partner's status.
fn shard_process(
    kubeconfig: &Path,
    h: &Harness,
    shard: &str,
    name: &str,
    shards: u32,
    partner_status: bool,
) -> OperatorProcess {
    let selector = format!("cyclr.com/test={},shard={shard}", h.namespace);
    let shards = shards.to_string();
    let partner_status = format!("--partner-status={partner_status}");
    let args = [
        "--shard",
        shard,
        "--shards",
        &shards,
        &partner_status,
        "--lease-duration",
        "5",
    ];
    OperatorProcess::start_serving(
        kubeconfig,
        &h.namespace,
        &selector,
        name,
        "info,cyclr_operator=debug",
        &args,
    )
}

/// Creates the CyclrAccount `name` in shard `shard`; `account_id` adopts that Cyclr account.
async fn create_account(h: &Harness, name: &str, shard: &str, account_id: Option<&str>) {
    let mut spec = json!({"partnerRef": {"name": h.partner}});
    if let Some(id) = account_id {
        spec["accountID"] = json!(id);
    }
    h.apply::<CyclrAccount>(json!({
        "metadata": {"name": name, "labels": {"shard": shard}},
        "spec": spec,
    }))
    .await;
}

/// The test's CyclrAccounts that are Ready, by name, with their Cyclr ids.
async fn ready_accounts(h: &Harness) -> Vec<(String, String)> {
    h.api::<CyclrAccount>()
        .list(&Default::default())
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
        .filter_map(|a| Some((a.metadata.name.clone()?, a.account_id()?.to_string())))
        .collect()
}

/// Waits until `count` accounts are Ready; their names and ids.
async fn wait_ready(h: &Harness, count: usize, timeout: Duration, logs: &[&OperatorProcess]) -> Vec<(String, String)> {
    let logs: Vec<String> = logs.iter().map(|p| p.log.display().to_string()).collect();
    h.wait_for(&format!("{count} Ready accounts (logs: {logs:?})"), timeout, || async {
        let ready = ready_accounts(h).await;
        (ready.len() >= count).then_some(ready)
    })
    .await
}

/// Every Cyclr account is held by exactly one resource: as many accounts as resources, and
/// every resource's id distinct.
fn one_cyclr_account_each(h: &Harness, ready: &[(String, String)], expected: usize) {
    assert_eq!(ready.len(), expected);
    let in_cyclr = h.sim.accounts();
    assert_eq!(in_cyclr.len(), expected, "one Cyclr account per resource");
    assert_eq!(h.cyclr_requests(CREATE), expected as u64, "each created once");
    let mut ids: Vec<&str> = ready.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected, "every resource holds its own Cyclr account");
}

/// Ready accounts a process reports on `/metrics`: those of its own shard.
async fn served_ready(process: &OperatorProcess) -> f64 {
    process
        .counter(
            "cyclr_operator_resources",
            r#"kind="CyclrAccount",condition="Ready",status="True""#,
        )
        .await
}

/// Writes to CyclrPartners a process made (their status).
async fn partner_writes(process: &OperatorProcess) -> f64 {
    process
        .counter("cyclr_operator_kubernetes_writes_total", r#"kind="CyclrPartner""#)
        .await
}

/// Partner Details requests a process sent: one per check of the partner.
async fn partner_checks(process: &OperatorProcess) -> f64 {
    process
        .counter("cyclr_api_requests_total", r#"endpoint="partner_details""#)
        .await
}

/// Waits until the shard's Lease is held by `pid`.
async fn wait_leader(h: &Harness, shard: &str, pid: u32, timeout: Duration) {
    let lease = format!("{LEASE}-{shard}");
    h.wait_for(&format!("pid {pid} holding {lease}"), timeout, || async {
        (lease_holder(&h.client, &h.namespace, &lease).await == Some(pid)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_keep_to_one_partners_rate_limit_together() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const PER_SHARD: usize = 24;
    const RATE: u32 = 10;
    const BURST: u32 = 3;
    let h = partner_with_limit("shards", RATE, BURST).await;
    let kubeconfig = TestEnv::get().await.kubeconfig_path();
    let shards: Vec<OperatorProcess> = ["a", "b", "c"]
        .into_iter()
        .map(|shard| shard_process(kubeconfig, &h, shard, shard, 3, shard == "a"))
        .collect();
    for process in &shards {
        process.wait_readyz(200, "ready").await;
    }
    // Every shard sees the unlabelled-by-shard partner; shard a reports it.
    h.wait_partner_ready("True").await;

    // Applied at once, so each shard onboards as fast as its share lets it.
    futures::future::join_all(["a", "b", "c"].into_iter().flat_map(|shard| {
        let h = &h;
        (0..PER_SHARD).map(move |i| async move { create_account(h, &format!("{shard}-{i:02}"), shard, None).await })
    }))
    .await;
    let logs: Vec<&OperatorProcess> = shards.iter().collect();
    let ready = wait_ready(&h, 3 * PER_SHARD, Duration::from_secs(90), &logs).await;
    one_cyclr_account_each(&h, &ready, 3 * PER_SHARD);

    // The partner's limit held across the three: its token bucket's allowance in every window.
    let log = h.sim.request_log();
    eprintln!("{} Cyclr requests from three shards", log.len());
    for width in [1, 10, 60].map(Duration::from_secs) {
        let most = max_in_window(&log, width);
        let bound = bucket_bound(RATE, BURST, width);
        eprintln!("busiest {width:?}: {most} requests (allowance {bound})");
        assert!(
            most <= bound,
            "{most} requests within {width:?}: above the partner's allowance of {bound}"
        );
    }

    for (process, shard) in shards.iter().zip(["a", "b", "c"]) {
        // Each served its own shard, all of it.
        assert_eq!(served_ready(process).await, PER_SHARD as f64, "shard {shard}");
        // One writer of the partner's status: shard a.
        let partner_writes = partner_writes(process).await;
        if shard == "a" {
            assert!(partner_writes >= 1.0, "shard a writes the partner's status");
        } else {
            assert_eq!(partner_writes, 0.0, "shard {shard} wrote to the partner");
        }
        // Each shard lists for its own accounts, one list for many.
        let lists = process
            .counter("cyclr_api_requests_total", r#"endpoint="list_accounts""#)
            .await;
        eprintln!("shard {shard}: {lists} List Accounts for {PER_SHARD} accounts");
        assert!(lists < (PER_SHARD / 2) as f64, "shard {shard}: {lists} lists");
    }
    // Only the writer checks the partner again after its creates (for the count in its
    // status); the other shards checked it once, at start.
    h.wait_for("shard a's check after its creates", Duration::from_secs(30), || async {
        (partner_checks(&shards[0]).await >= 2.0).then_some(())
    })
    .await;
    for (process, shard) in shards.iter().zip(["a", "b", "c"]).skip(1) {
        assert_eq!(
            partner_checks(process).await,
            1.0,
            "shard {shard} checked the partner again"
        );
    }
    // Claims are cluster-wide: shard b sees that an account of shard a holds this id.
    let (held_by, id) = ready.iter().find(|(name, _)| name.starts_with("a-")).unwrap();
    create_account(&h, "intruder", "b", Some(id)).await;
    let stalled = h
        .wait_condition::<CyclrAccount>("intruder", STALLED, "True", Some("AccountClaimed"))
        .await;
    assert!(
        ready_message(&stalled).contains(&format!("/{held_by}")),
        "{}",
        ready_message(&stalled)
    );
    assert_eq!(h.sim.accounts().len(), 3 * PER_SHARD, "nothing created for it");

    // Moving an account to another shard: relabelled, it is served there, by its id, with no
    // Cyclr write, and the shard it left still sees it claimed.
    let writes = h.sim.stats().writes;
    create_account(&h, held_by, "c", None).await;
    h.wait_for(
        &format!("{held_by} served by shard c"),
        Duration::from_secs(30),
        || async { (served_ready(&shards[2]).await == (PER_SHARD + 1) as f64).then_some(()) },
    )
    .await;
    assert_eq!(
        served_ready(&shards[0]).await,
        (PER_SHARD - 1) as f64,
        "shard a let it go"
    );
    let moved = h.wait_condition::<CyclrAccount>(held_by, READY, "True", None).await;
    assert_eq!(moved.account_id(), Some(id.as_str()));
    create_account(&h, "intruder-in-a", "a", Some(id)).await;
    h.wait_condition::<CyclrAccount>("intruder-in-a", STALLED, "True", Some("AccountClaimed"))
        .await;
    assert_eq!(h.sim.stats().writes, writes, "no Cyclr write for the move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_standby_takes_over_that_shard_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const PER_SHARD: usize = 6;
    // Two shards of 2 requests/s each: a rollout of six lasts seconds, so the kill lands in it.
    let h = partner_with_limit("shard-failover", 4, 2).await;
    // Shard a writes the partner's status: its standby must take that over too.
    let kubeconfig = TestEnv::get().await.kubeconfig_path();
    let first = shard_process(kubeconfig, &h, "a", "a1", 2, true);
    let second = shard_process(kubeconfig, &h, "a", "a2", 2, true);
    let b = shard_process(kubeconfig, &h, "b", "b", 2, false);
    for process in [&first, &second, &b] {
        process.wait_readyz(200, "ready").await;
    }
    let holder = |shard: &'static str| {
        let h = &h;
        async move {
            h.wait_for(
                &format!("a holder of shard {shard}'s Lease"),
                Duration::from_secs(30),
                || async { lease_holder(&h.client, &h.namespace, &format!("{LEASE}-{shard}")).await },
            )
            .await
        }
    };
    let a_leader = holder("a").await;
    let b_leader = holder("b").await;
    assert_eq!(b_leader, b.pid(), "shard b has a leader of its own");
    let (mut leader, standby) = if a_leader == first.pid() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(leader.pid(), a_leader, "one of shard a's processes leads it");
    h.wait_partner_ready("True").await;

    for shard in ["a", "b"] {
        for i in 0..PER_SHARD {
            create_account(&h, &format!("{shard}-{i:02}"), shard, None).await;
        }
    }
    // kill -9 shard a's leader once some, not all, of its accounts are Ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready_at_kill = loop {
        let ready = ready_accounts(&h).await;
        let in_a = ready.iter().filter(|(name, _)| name.starts_with("a-")).count();
        if in_a >= 2 {
            break in_a;
        }
        assert!(
            Instant::now() < deadline,
            "no account of shard a Ready (log: {})",
            leader.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    leader.child.start_kill().expect("SIGKILL shard a's leader");
    leader.child.wait().await.expect("the leader is gone");
    eprintln!("killed shard a's leader with {ready_at_kill} of its {PER_SHARD} accounts Ready");
    assert!(ready_at_kill < PER_SHARD, "the kill must land mid-rollout");

    wait_leader(&h, "a", standby.pid(), Duration::from_secs(15)).await;
    for shard in ["a", "b"] {
        for i in PER_SHARD..PER_SHARD + 2 {
            create_account(&h, &format!("{shard}-{i:02}"), shard, None).await;
        }
    }
    let total = 2 * (PER_SHARD + 2);
    let ready = wait_ready(&h, total, Duration::from_secs(90), &[&standby, &b]).await;
    one_cyclr_account_each(&h, &ready, total);

    // The standby took shard a only; shard b kept its leader throughout.
    assert_eq!(standby.counter("cyclr_operator_leader", r#"shard="a""#).await, 1.0);
    assert_eq!(b.counter("cyclr_operator_leader", r#"shard="b""#).await, 1.0);
    assert_eq!(served_ready(&standby).await, (PER_SHARD + 2) as f64);
    assert_eq!(served_ready(&b).await, (PER_SHARD + 2) as f64);
    assert_eq!(
        lease_holder(&h.client, &h.namespace, &format!("{LEASE}-b")).await,
        Some(b.pid()),
        "shard b's Lease never moved"
    );
    let mut b = b;
    assert!(b.child.try_wait().expect("poll").is_none(), "shard b's process runs on");
    // Writing the partner's status moved with shard a (its creates have it checked again).
    h.wait_for(
        "the standby writing the partner's status",
        Duration::from_secs(30),
        || async { (partner_writes(&standby).await >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(partner_writes(&b).await, 0.0, "shard b never writes the partner");
}
