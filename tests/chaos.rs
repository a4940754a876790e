//! `make chaos` in small: the same five scenarios (bench/src/chaos/) with 20 accounts, 6
//! installs, 2 kills and one API server restart, against this build's operator binary. Each
//! ends with the check read from the simulator: exactly one Cyclr account per CyclrAccount,
//! exactly one installed connector per CyclrConnectorInstall, all Ready; scenario 2 also
//! checks the Cyclr request rate against the partner's rateLimit and scenario 5 that a
//! status wipe leads to no create and no install.
//!
//! One test, alone in its binary, because scenario 4 restarts this process's kube-apiserver.

use std::path::PathBuf;
use std::time::Duration;

use cyclr_bench::chaos::{self, Settings};
use cyclr_bench::cluster::Dialect;
use cyclr_testenv::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_operator_is_killed_cyclr_fails_and_the_api_server_restarts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_cyclr-operator"));
    let logs = std::env::temp_dir().join(format!("cyclr-chaos-test-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let settings = Settings {
        seed: 7,
        accounts: 20,
        installs: 6,
        cycles: 6,
        kills: 2,
        apiserver_restarts: 1,
        // Slow enough that the kills (1–5 s apart) land in the rollout.
        rate: 2,
        operator,
        logs,
        ready_timeout: Duration::from_secs(150),
        dialect: Dialect::Partner,
        page_size: None,
        resync_interval: "10m".into(),
    };
    let (failed, _) = chaos::run_every_scenario(TestEnv::get().await, &settings).await;
    assert!(failed.is_empty(), "lost:\n{}", failed.join("\n"));
}
