//! `make chaos`: the release operator rolling out CyclrAccounts, CyclrConnectorInstalls and
//! (on v1.0) CyclrCycles on a real control plane and cyclr-sim while it is killed, Cyclr
//! fails, the leader is killed, the API server restarts and status is lost; prints what was
//! tried and what was lost (nothing, when the operator is right) and exits 1 if anything was.
//! See docs/reliability.md.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use cyclr_bench::chaos::{self, Outcome, Scenario, Settings};
use cyclr_bench::cluster::{Dialect, DialectsArg};
use cyclr_testenv::TestEnv;

/// Chaos scenarios against the operator; every knob is also an environment variable.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Seeds the fault schedule and the simulator's dice; default: from the clock (printed).
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
    /// CyclrAccounts per scenario.
    #[arg(long, env = "ACCOUNTS", default_value_t = 300)]
    accounts: usize,
    /// CyclrConnectorInstalls per scenario (install i goes into account i mod ACCOUNTS).
    #[arg(long, env = "INSTALLS", default_value_t = 100)]
    installs: usize,
    /// CyclrCycles per scenario on a V1 partner (cycle i goes into account i mod ACCOUNTS).
    #[arg(long, env = "CYCLES", default_value_t = 100)]
    cycles: usize,
    /// Which scenarios, comma-separated: 1 operator kills, 2 Cyclr faults, 3 leader kills,
    /// 4 API server restarts, 5 status wiped.
    #[arg(long, env = "SCENARIOS", value_delimiter = ',', default_value = "1,2,3,4,5")]
    scenarios: Vec<u64>,
    /// Operator kills (scenario 1) and leader kills (scenario 3).
    #[arg(long, env = "KILLS", default_value_t = 6)]
    kills: usize,
    /// API server restarts (scenario 4).
    #[arg(long, env = "APISERVER_RESTARTS", default_value_t = 2)]
    apiserver_restarts: usize,
    /// The partner's rateLimit in scenarios 1, 3, 4 and 5, requests/s (2 runs at 10).
    #[arg(long, env = "RATE", default_value_t = 20)]
    rate: u32,
    /// The longest a scenario waits for Ready after its last fault, in seconds.
    #[arg(long, env = "READY_TIMEOUT", default_value_t = 600)]
    ready_timeout: u64,
    /// The operator's `--v1-page-size` (default: its own, 100): small pages make every list
    /// of a few accounts as many pages as one of 100,000.
    #[arg(long, env = "PAGE_SIZE")]
    page_size: Option<u32>,
    /// The partners' `resyncInterval`: the default, 10m, never resyncs during a rollout;
    /// shorter, lists run all through it, as at 100,000 accounts.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m")]
    resync_interval: String,
    #[command(flatten)]
    dialects: DialectsArg,
    /// The operator binary; default: `cyclr-operator` next to this binary.
    #[arg(long, env = "CYCLR_OPERATOR")]
    operator: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator = match &args.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("cyclr-operator"),
    };
    anyhow::ensure!(
        operator.is_file(),
        "{} is missing: build it with `cargo build --release --bin cyclr-operator` (make chaos does)",
        operator.display()
    );
    let scenarios = args
        .scenarios
        .iter()
        .map(|&n| Scenario::from_number(n).ok_or_else(|| anyhow::anyhow!("no scenario {n}: SCENARIOS takes 1–5")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let logs = std::env::temp_dir().join(format!("cyclr-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let settings = Settings {
        seed,
        accounts: args.accounts,
        installs: args.installs,
        cycles: args.cycles,
        kills: args.kills,
        apiserver_restarts: args.apiserver_restarts,
        rate: args.rate,
        operator,
        logs: logs.clone(),
        ready_timeout: Duration::from_secs(args.ready_timeout),
        dialect: Dialect::Partner,
        page_size: args.page_size,
        resync_interval: args.resync_interval.clone(),
    };
    println!(
        "cyclr-chaos: SEED={seed} ACCOUNTS={} INSTALLS={} CYCLES={} SCENARIOS={} DIALECTS={} KILLS={} APISERVER_RESTARTS={} RATE={} PAGE_SIZE={} RESYNC_INTERVAL={}",
        args.accounts,
        args.installs,
        args.cycles,
        scenarios
            .iter()
            .map(|s| s.number().to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.dialects
            .dialects
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(","),
        args.kills,
        args.apiserver_restarts,
        args.rate,
        args.page_size.map_or("100".to_owned(), |p| p.to_string()),
        args.resync_interval
    );
    println!("operator: {}; logs: {}", settings.operator.display(), logs.display());
    println!("machine: {}", cyclr_bench::machine());
    let started = Instant::now();
    let env = TestEnv::get().await;
    cyclr_bench::cluster::install_crds(&env.client(), &settings.operator).await?;
    let mut outcomes = Vec::new();
    for &dialect in &args.dialects.dialects {
        let settings = Settings {
            dialect,
            ..settings.clone()
        };
        for &scenario in &scenarios {
            outcomes.push(chaos::run(env, &settings, scenario).await?);
        }
    }
    summary(&outcomes, seed, started.elapsed());
    if outcomes.iter().any(|o| !o.passed()) {
        std::process::exit(1);
    }
    Ok(())
}

fn summary(outcomes: &[Outcome], seed: u64, took: Duration) {
    println!("\n## Summary (SEED={seed}, {:.0} s in all)\n", took.as_secs_f64());
    println!("| dialect | scenario | result | faults tried | lost | duration |");
    println!("|---|---|---|---|---|---|");
    for o in outcomes {
        println!(
            "| {} | {} {} | {} | {} | {} | {:.0} s |",
            o.dialect.name(),
            o.scenario.number(),
            o.scenario.title(),
            if o.passed() { "passed" } else { "FAILED" },
            o.faults,
            o.lost.len(),
            o.duration.as_secs_f64()
        );
    }
}
