//! Issue #23 row 5: the 100,000-account rollout under `make chaos`'s faults, scaled down to
//! what fits in a test. What makes 100,000 accounts different from 20 is on the v1.0 API: a
//! full List Accounts is many pages (1,000 of 100), fetched at a pace that leaves the budget to
//! creates, and one is always under way. Here the operator asks for pages of 3 accounts, so the
//! 24 accounts of each scenario list as 8 pages, the partner resyncs every 15 s so lists run
//! all through the rollout, and the five scenarios of `make chaos` (operator kills, Cyclr failing and
//! losing answers, leader kills, an API server restart, status wiped) run on a v1.0 partner.
//! Each ends with the check read from the simulator: exactly one Cyclr account per
//! CyclrAccount, one installed connector per CyclrConnectorInstall, one cycle per CyclrCycle,
//! all Ready.
//!
//! One test, alone in its binary, because scenario 4 restarts this process's kube-apiserver.

use std::path::PathBuf;
use std::time::Duration;

use cyclr_bench::chaos::{self, Settings};
use cyclr_bench::cluster::Dialect;
use cyclr_testenv::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_on_v1_when_every_list_is_many_pages() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_cyclr-operator"));
    let logs = std::env::temp_dir().join(format!("cyclr-chaos-at-scale-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let settings = Settings {
        seed: 23,
        accounts: 24,
        installs: 4,
        cycles: 4,
        kills: 2,
        apiserver_restarts: 1,
        rate: 2,
        operator,
        logs,
        ready_timeout: Duration::from_secs(180),
        dialect: Dialect::V1,
        page_size: Some(3),
        // Lists all through the rollout, as at 100,000 accounts.
        resync_interval: "15s".into(),
    };
    let (failed, outcomes) = chaos::run_every_scenario(TestEnv::get().await, &settings).await;
    assert!(failed.is_empty(), "lost:\n{}", failed.join("\n"));
    // The simulator's counts restart in scenario 2 (its rate check); at least three whole
    // lists of 8 pages in all shows that paged lists ran while the faults did.
    let pages: u64 = outcomes.iter().map(|o| o.list_calls).sum();
    assert!(pages >= 24, "{pages} v1.0 list pages in the five scenarios");
}
