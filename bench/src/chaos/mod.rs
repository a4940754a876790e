//! `make chaos`: the operator rolling out accounts, connector installs and (on v1.0) cycles
//! while things go wrong (the operator killed, Cyclr failing, the leader killed, the API
//! server restarted, status lost), each scenario ending with the same check read from the
//! simulator's state: exactly one Cyclr account per CyclrAccount, exactly one installed
//! connector per CyclrConnectorInstall, exactly one Active cycle per CyclrCycle, all Ready. On
//! a v1.0 partner every account has `deletionPolicy: Delete` and one in ten is deleted (with
//! its installs and cycles) once its Cyclr account exists: their Cyclr accounts, and only
//! theirs, must be gone. See docs/reliability.md.
//!
//! A scenario's fault schedule comes from a seeded generator (seed + scenario number), so the
//! same `SEED` tries the same faults at the same moments; the simulator's error dice are
//! seeded too. What the operator and the API server do in between is not deterministic.

mod rate;
mod scenarios;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cyclr_testenv::TestEnv;

use crate::cluster::Dialect;

pub use rate::{bucket_bound, max_in_window};

/// One way of going wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// 1: `kill -9` of the operator at random moments of the rollout, restarted each time.
    OperatorKills,
    /// 2: Cyclr answering 5xx, 429, expiring tokens and losing responses of applied writes.
    CyclrFaults,
    /// 3: two replicas with leader election, the leader killed again and again.
    LeaderKills,
    /// 4: kube-apiserver stopped and started again (same etcd) mid-rollout.
    ApiServerRestarts,
    /// 5: every resource's status wiped while the operator is stopped (a restore).
    StatusWiped,
}

impl Scenario {
    /// All of them, in order.
    pub const ALL: [Scenario; 5] = [
        Scenario::OperatorKills,
        Scenario::CyclrFaults,
        Scenario::LeaderKills,
        Scenario::ApiServerRestarts,
        Scenario::StatusWiped,
    ];

    /// 1–5, as `SCENARIOS` names them.
    pub fn number(self) -> u64 {
        match self {
            Scenario::OperatorKills => 1,
            Scenario::CyclrFaults => 2,
            Scenario::LeaderKills => 3,
            Scenario::ApiServerRestarts => 4,
            Scenario::StatusWiped => 5,
        }
    }

    /// The scenario numbered `n` (1–5).
    pub fn from_number(n: u64) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.number() == n)
    }

    /// What the scenario does, in a few words.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::OperatorKills => "operator kill -9 during the rollout",
            Scenario::CyclrFaults => "Cyclr faults: 5xx, 429, token expiry, commit then fail",
            Scenario::LeaderKills => "two replicas, the leader killed repeatedly",
            Scenario::ApiServerRestarts => "kube-apiserver restarted mid-rollout",
            Scenario::StatusWiped => "status wiped (a restore), operator restarted",
        }
    }
}

/// How big and how rough a run is.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Seeds each scenario's fault schedule (plus its number) and the simulator's dice.
    pub seed: u64,
    /// CyclrAccounts per scenario.
    pub accounts: usize,
    /// CyclrConnectorInstalls per scenario.
    pub installs: usize,
    /// CyclrCycles per scenario on v1.0 (cycle i into account i mod accounts, installing one
    /// of three templates); none on the Partner API, which has no cycles.
    pub cycles: usize,
    /// Operator kills (scenario 1) and leader kills (scenario 3).
    pub kills: usize,
    /// API server restarts (scenario 4).
    pub apiserver_restarts: usize,
    /// The partner's rate limit in scenarios 1, 3, 4 and 5, requests/s: how long their
    /// rollout lasts, so that their faults land in it (scenario 2 runs at the default 10).
    pub rate: u32,
    /// The `cyclr-operator` binary.
    pub operator: PathBuf,
    /// Where operator logs go.
    pub logs: PathBuf,
    /// The longest a scenario waits for everything to be Ready after its last fault.
    pub ready_timeout: Duration,
    /// The partner's Cyclr API (`spec.cyclrAPI`).
    pub dialect: Dialect,
    /// The operator's `--v1-page-size` (`None`: its default, 100): a few accounts in small
    /// pages list like very many in pages of 100 (issue #23 row 5).
    pub page_size: Option<u32>,
    /// The partner's `resyncInterval` (`10m`, the default, in `make chaos`: a rollout never
    /// waits for a resync); shorter, lists run all through the rollout, as at 100,000
    /// accounts, where a paged list is always under way.
    pub resync_interval: String,
}

/// What one scenario tried and what it lost.
#[derive(Debug)]
pub struct Outcome {
    /// Which scenario ran.
    pub scenario: Scenario,
    /// On which dialect.
    pub dialect: Dialect,
    /// Each fault and each event seen, with its time since the scenario started.
    pub tried: Vec<String>,
    /// How many faults were injected.
    pub faults: usize,
    /// Duplicates, losses, strays, resources not Ready, limits exceeded: empty when it passed.
    pub lost: Vec<String>,
    /// Measurements (request rates, Cyclr calls, takeover times).
    pub figures: Vec<String>,
    /// How long it took, set-up and check included.
    pub duration: Duration,
    /// List Accounts calls the simulator answered (pages, on v1.0), since its statistics were
    /// last reset.
    pub list_calls: u64,
}

impl Outcome {
    /// Nothing was lost.
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
    }
}

/// Every scenario, one after the other, on the control plane of `env` (the CRDs installed
/// first), as `make test` runs them small: panics when one cannot run or injects no fault;
/// returns what each scenario lost, `scenario N (title): …` with its log, for those that lost
/// something, and every outcome.
pub async fn run_every_scenario(env: &'static TestEnv, settings: &Settings) -> (Vec<String>, Vec<Outcome>) {
    crate::cluster::install_crds(&env.client(), &settings.operator)
        .await
        .expect("install the CRDs");
    let mut failed = Vec::new();
    let mut outcomes = Vec::new();
    for scenario in Scenario::ALL {
        let outcome = run(env, settings, scenario)
            .await
            .unwrap_or_else(|e| panic!("scenario {} could not run: {e:#}", scenario.number()));
        assert!(
            outcome.faults > 0,
            "scenario {}: no fault was injected",
            scenario.number()
        );
        if !outcome.passed() {
            failed.push(format!(
                "scenario {} ({}): {:#?}\n{}",
                scenario.number(),
                scenario.title(),
                outcome.lost,
                outcome.tried.join("\n")
            ));
        }
        outcomes.push(outcome);
    }
    (failed, outcomes)
}

/// Runs one scenario on the control plane of `env` (which scenario 4 restarts: nothing else
/// may use it meanwhile). An error means the scenario could not be run, not that it failed.
pub async fn run(env: &'static TestEnv, settings: &Settings, scenario: Scenario) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    println!(
        "\n== scenario {} on {}: {} ==",
        scenario.number(),
        settings.dialect.name(),
        scenario.title()
    );
    let (world, lost, figures) = scenarios::run(env, settings, scenario).await?;
    let outcome = Outcome {
        scenario,
        dialect: settings.dialect,
        tried: world.tried,
        faults: world.faults,
        lost,
        figures,
        duration: started.elapsed(),
        list_calls: world.sim.stats().requests_to(settings.dialect.list_accounts()),
    };
    world.sim.shutdown().await;
    for figure in &outcome.figures {
        println!("[s{}] figure: {figure}", scenario.number());
    }
    for lost in &outcome.lost {
        println!("[s{}] LOST: {lost}", scenario.number());
    }
    println!(
        "== scenario {} on {}: {} in {:.0} s ==",
        scenario.number(),
        settings.dialect.name(),
        if outcome.passed() {
            "passed, nothing lost"
        } else {
            "FAILED"
        },
        outcome.duration.as_secs_f64()
    );
    Ok(outcome)
}
