//! The five scenarios: each sets up a world, runs the operator, injects its faults on a
//! seeded schedule, waits for Ready and checks.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cyclr_sim::Faults;
use cyclr_testenv::TestEnv;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::rate::{bucket_bound, max_in_window};
use super::world::{self, World};
use super::{Scenario, Settings};
use crate::cluster::{self, Dialect, PARTNER_BURST};
use crate::operator::Operator;

/// The operator's `--concurrency` (its default).
const CONCURRENCY: u16 = 16;
/// Scenario 2's partner rate limit, requests/s: the default limit, which its faults are about.
/// The others run at `Settings::rate`.
const DEFAULT_RATE: u32 = 10;
/// Scenario 3's `--lease-duration`, seconds: the longest a standby waits after a kill.
const LEASE_SECONDS: u64 = 5;
const LEASE_NAME: &str = "cyclr-chaos";
/// A scenario gives up waiting once nothing became Ready for this long (a stuck resource).
const STUCK_AFTER: Duration = Duration::from_secs(90);

type Found = (World, Vec<String>, Vec<String>);

pub(super) async fn run(env: &'static TestEnv, settings: &Settings, scenario: Scenario) -> anyhow::Result<Found> {
    // The scenario's number in the seed: running a subset keeps each one's schedule.
    let mut rng = StdRng::seed_from_u64(settings.seed.wrapping_add(scenario.number()));
    let tag = format!("s{}", scenario.number());
    let (rate, faults) = match scenario {
        Scenario::CyclrFaults => (DEFAULT_RATE, cyclr_faults(settings.seed, settings.dialect)),
        _ => (settings.rate, Faults::default()),
    };
    let mut world = World::start(env, tag, settings, rate, faults).await?;
    world.note(format!(
        "namespace {}, cyclr-sim at {}, partner on {} at rateLimit {rate}/s burst {PARTNER_BURST}",
        world.namespace,
        world.sim.base_url(),
        settings.dialect.name()
    ));
    let mut figures = Vec::new();
    let mut lost = Vec::new();
    match scenario {
        Scenario::OperatorKills => operator_kills(settings, &mut world, &mut rng).await?,
        Scenario::CyclrFaults => cyclr_faults_run(settings, &mut world, &mut figures).await?,
        Scenario::LeaderKills => leader_kills(settings, &mut world, &mut rng, &mut figures).await?,
        Scenario::ApiServerRestarts => apiserver_restarts(env, settings, &mut world, &mut rng).await?,
        Scenario::StatusWiped => lost = status_wiped(settings, &mut world, &mut figures).await?,
    }
    world.settle(Duration::from_secs(3), Duration::from_secs(30)).await;
    lost.splice(0..0, world.check().await?);
    if scenario == Scenario::CyclrFaults {
        lost.extend(rate_check(&world, rate, &mut figures));
    }
    if let Some(cycles) = world.cycles_in_cyclr() {
        figures.push(format!(
            "{} template installs sent for {} CyclrCycles; Cyclr holds {cycles} cycles in the kept accounts",
            world.sim.stats().requests_to(TEMPLATE_INSTALL),
            world.cycle_count()
        ));
    }
    let stats = world.sim.stats();
    figures.push(format!(
        "Cyclr requests {} ({}), responses {}, writes applied {}, responses lost after the write {}",
        stats.total_requests(),
        counts(&stats.requests),
        counts(&stats.responses),
        stats.writes,
        stats.lost_responses
    ));
    Ok((world, lost, figures))
}

/// Scenario 2's Cyclr: a fifth of requests 5xx, 429 with `Retry-After: 2` above the partner's
/// own rate (the simulator's bucket holds 10, the partner's burst is 20, so bursts meet 429s),
/// tokens that last 30 s, and one write in ten applied with its response lost. On v1.0 also
/// writes applied after their client left, and new accounts missing from List Accounts for
/// 3 s ([`V1_LIST_LAG`]).
fn cyclr_faults(seed: u64, dialect: Dialect) -> Faults {
    Faults {
        error_rate: 0.2,
        rate_limit_rps: Some(DEFAULT_RATE),
        retry_after_secs: 2,
        token_ttl: Some(Duration::from_secs(30)),
        commit_then_fail_rate: 0.1,
        apply_after_disconnect: dialect == Dialect::V1,
        list_lag: if dialect == Dialect::V1 {
            V1_LIST_LAG
        } else {
            Duration::ZERO
        },
        seed: Some(seed),
        ..Faults::default()
    }
}

/// A template's install, as the simulator's statistics name it.
const TEMPLATE_INSTALL: &str = "POST /v1.0/templates/{id}/install";

/// How long a new account is missing from List Accounts in scenario 2 on v1.0.
const V1_LIST_LAG: Duration = Duration::from_secs(3);

/// `run` arguments of the scenarios with one operator at a time: without leader election, as
/// before it became the default, so an operator restarted after `kill -9` does not wait out its
/// predecessor's Lease (scenario 3 is about that).
const ALONE: &[&str] = &["--leader-election=false"];

/// The release (or test) operator binary as a child process for the world's namespace, its
/// log named after the namespace and `name`.
fn start_operator(settings: &Settings, world: &World, name: &str, extra: &[&str]) -> anyhow::Result<Operator> {
    let log = settings.logs.join(format!("{}-{name}.log", world.namespace));
    // Scoped: every scenario's world shares the control plane.
    let scope = crate::operator::scoped_to(&world.namespace);
    let page_size = settings.page_size.map(|size| format!("--v1-page-size={size}"));
    let args: Vec<&str> = scope
        .iter()
        .chain(&page_size)
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    Operator::start_with(
        &settings.operator,
        &world.kubeconfig,
        &world.namespace,
        CONCURRENCY,
        log,
        &args,
    )
}

async fn wait_partner(world: &mut World) -> anyhow::Result<()> {
    cluster::wait_partner_ready(&world.client, &world.namespace).await?;
    world.note("CyclrPartner Ready");
    Ok(())
}

fn seconds(rng: &mut StdRng, from: f64, to: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(from..to))
}

/// 1: kill -9 at random moments (1–5 s apart) while the rollout runs, restarting each time.
async fn operator_kills(settings: &Settings, world: &mut World, rng: &mut StdRng) -> anyhow::Result<()> {
    let mut op = start_operator(settings, world, "operator-0", ALONE)?;
    wait_partner(world).await?;
    world.create_resources().await?;
    for k in 1..=settings.kills {
        tokio::time::sleep(seconds(rng, 1.0, 5.0)).await;
        let Some(progress) = world.progress_before_kill(k, settings.kills).await? else {
            break;
        };
        let pid = op.pid();
        op.kill().await?;
        world.fault(format!("kill -9 operator pid {pid} ({progress})"));
        tokio::time::sleep(seconds(rng, 0.0, 1.0)).await;
        op = start_operator(settings, world, &format!("operator-{k}"), ALONE)?;
        world.note(format!("operator restarted: pid {}", op.pid()));
    }
    let progress = world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || op.check_running())
        .await?;
    if !progress.done() {
        world.note(format!("operator log: {}", op.log.display()));
    }
    op.stop().await
}

/// 2: the faults are on from the start; one operator, never restarted.
async fn cyclr_faults_run(settings: &Settings, world: &mut World, figures: &mut Vec<String>) -> anyhow::Result<()> {
    let faults = world.sim.faults();
    world.fault(format!(
        "faults on: {:.0}% 5xx, 429 above {}/s with Retry-After {} s, tokens expire after {:?}, {:.0}% of writes applied then answered 500, writes applied after the client left: {}, list lag {:?}, seed {}",
        faults.error_rate * 100.0,
        faults.rate_limit_rps.unwrap_or(0),
        faults.retry_after_secs,
        faults.token_ttl.unwrap_or_default(),
        faults.commit_then_fail_rate * 100.0,
        faults.apply_after_disconnect,
        faults.list_lag,
        faults.seed.unwrap_or_default()
    ));
    let mut op = start_operator(settings, world, "operator", ALONE)?;
    wait_partner(world).await?;
    // The rate is measured over the rollout: from here on.
    world.sim.reset_stats();
    let rollout = Instant::now();
    world.create_resources().await?;
    world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || op.check_running())
        .await?;
    figures.push(format!(
        "rollout under faults: {:.1} s",
        rollout.elapsed().as_secs_f64()
    ));
    op.stop().await
}

/// Scenario 2's limit: in every window of 1, 10 and 60 s, at most the partner's burst plus
/// its rate over the window (what its token bucket lets through).
fn rate_check(world: &World, rate: u32, figures: &mut Vec<String>) -> Vec<String> {
    let log = world.sim.request_log();
    let mut lost = Vec::new();
    if let (Some(first), Some(last)) = (log.iter().min(), log.iter().max()) {
        let span = last.duration_since(*first).as_secs_f64().max(1e-3);
        figures.push(format!(
            "Cyclr request rate: {} requests in {span:.1} s = {:.2}/s on average (limit {rate}/s)",
            log.len(),
            log.len() as f64 / span
        ));
    }
    for width in [1, 10, 60].map(Duration::from_secs) {
        let most = max_in_window(&log, width);
        let bound = bucket_bound(rate, PARTNER_BURST, width);
        figures.push(format!(
            "busiest {} s window: {most} requests (bound: burst {PARTNER_BURST} + {rate}/s × {} s = {bound})",
            width.as_secs(),
            width.as_secs()
        ));
        if most > bound {
            lost.push(format!(
                "the operator sent {most} requests within {} s, above the partner's rateLimit ({bound})",
                width.as_secs()
            ));
        }
    }
    lost
}

/// The pid at the end of the Lease's holder identity (`<host>-<pid>`), if held.
async fn leader(world: &World) -> Option<u32> {
    let lease = Api::<Lease>::namespaced(world.client.clone(), &world.namespace)
        .get_opt(LEASE_NAME)
        .await
        .ok()??;
    lease.spec?.holder_identity?.rsplit('-').next()?.parse().ok()
}

/// 3: two `--leader-election` replicas; the leader is killed at random moments (2–6 s after
/// a leader is in place) and a new standby started each time, so two always run.
async fn leader_kills(
    settings: &Settings,
    world: &mut World,
    rng: &mut StdRng,
    figures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let lease_seconds = LEASE_SECONDS.to_string();
    let args = [
        "--leader-election",
        "--lease-name",
        LEASE_NAME,
        "--lease-duration",
        lease_seconds.as_str(),
    ];
    let mut replicas = vec![
        start_operator(settings, world, "replica-0", &args)?,
        start_operator(settings, world, "replica-1", &args)?,
    ];
    world.note(format!(
        "replicas started: pids {} and {}, --lease-duration {LEASE_SECONDS}",
        replicas[0].pid(),
        replicas[1].pid()
    ));
    wait_partner(world).await?;
    world.create_resources().await?;
    let mut takeovers = Vec::new();
    for k in 1..=settings.kills {
        tokio::time::sleep(seconds(rng, 2.0, 6.0)).await;
        let Some(progress) = world.progress_before_kill(k, settings.kills).await? else {
            break;
        };
        let holder = cluster::wait_for("a leader", Duration::from_secs(60), || leader(world)).await?;
        let index = replicas
            .iter()
            .position(|r| r.pid() == holder)
            .with_context(|| format!("the Lease holder {holder} is none of the replicas"))?;
        let killed = replicas.remove(index);
        killed.kill().await?;
        let killed_at = Instant::now();
        world.fault(format!("kill -9 leader pid {holder} ({progress})"));
        let standby = replicas.first().map(Operator::pid);
        let new_leader = cluster::wait_for(
            "the standby to take the Lease",
            Duration::from_secs(LEASE_SECONDS * 4 + 30),
            || async { leader(world).await.filter(|pid| Some(*pid) == standby) },
        )
        .await?;
        takeovers.push(killed_at.elapsed().as_secs_f64());
        world.note(format!(
            "standby pid {new_leader} took the Lease after {:.1} s",
            killed_at.elapsed().as_secs_f64()
        ));
        let fresh = start_operator(settings, world, &format!("replica-{}", k + 1), &args)?;
        world.note(format!("new standby started: pid {}", fresh.pid()));
        replicas.push(fresh);
    }
    if !takeovers.is_empty() {
        let max = takeovers.iter().copied().fold(0.0, f64::max);
        figures.push(format!(
            "{} takeovers, slowest {max:.1} s (lease duration {LEASE_SECONDS} s)",
            takeovers.len()
        ));
    }
    world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || {
            // A replica that exits on its own (it lost the Lease) is a finding: say so.
            replicas.iter_mut().try_for_each(Operator::check_running)
        })
        .await?;
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

/// 4: the API server stopped 1–4 s into the rollout (or after the previous restart) and
/// started again 3–8 s later, on the same etcd; the operator is never restarted.
async fn apiserver_restarts(
    env: &'static TestEnv,
    settings: &Settings,
    world: &mut World,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let mut op = start_operator(settings, world, "operator", ALONE)?;
    let pid = op.pid();
    wait_partner(world).await?;
    world.create_resources().await?;
    for k in 1..=settings.apiserver_restarts {
        tokio::time::sleep(seconds(rng, 1.0, 4.0)).await;
        let progress = world.progress().await?;
        world.fault(format!("restart {k}: stopping kube-apiserver (SIGTERM; {progress})"));
        let stopping = Instant::now();
        // Blocking: it waits for the process to exit (SIGKILL after 15 s of graceful shutdown).
        tokio::task::spawn_blocking(move || env.stop_apiserver()).await??;
        world.note(format!(
            "kube-apiserver exited after {:.1} s",
            stopping.elapsed().as_secs_f64()
        ));
        let down = seconds(rng, 3.0, 8.0);
        tokio::time::sleep(down).await;
        env.start_apiserver().await?;
        world.note(format!(
            "kube-apiserver started again ({:.1} s down), /readyz 200",
            down.as_secs_f64()
        ));
    }
    world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || op.check_running())
        .await?;
    world.note(format!("operator pid {pid} ran throughout, never restarted"));
    op.stop().await
}

/// 5: a rollout, the operator stopped, every status emptied, the operator started again:
/// it must find every account and install again without a create or an install.
async fn status_wiped(
    settings: &Settings,
    world: &mut World,
    figures: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let mut op = start_operator(settings, world, "operator", ALONE)?;
    wait_partner(world).await?;
    world.create_resources().await?;
    let progress = world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || op.check_running())
        .await?;
    anyhow::ensure!(
        progress.done(),
        "the rollout before the wipe did not finish: {progress}"
    );
    world.settle(Duration::from_secs(3), Duration::from_secs(30)).await;
    op.stop().await?;
    world.note("operator stopped (SIGTERM)");
    let [accounts, installs, cycles] = world::wipe_statuses(&world.client, &world.namespace).await?;
    world.fault(format!(
        "status wiped through the status subresource: {accounts} accounts, {installs} installs, {cycles} cycles"
    ));
    world.sim.reset_stats();
    let mut op = start_operator(settings, world, "operator-restored", ALONE)?;
    world.note(format!("operator started: pid {}", op.pid()));
    world
        .wait_ready(settings.ready_timeout, STUCK_AFTER, || op.check_running())
        .await?;
    world.settle(Duration::from_secs(3), Duration::from_secs(30)).await;
    let stats = world.sim.stats();
    let creates = stats.requests_to("POST /api/partner/createaccount") + stats.requests_to("POST /v1.0/accounts");
    let installs = stats.requests_to("POST /api/partner/installconnector")
        + stats.requests_to("POST /v1.0/connectors/{connector}/install");
    let template_installs = stats.requests_to(TEMPLATE_INSTALL);
    figures.push(format!(
        "after the wipe: {creates} Create Account, {installs} Install Connector, {template_installs} template installs, {} writes applied",
        stats.writes
    ));
    op.stop().await?;
    let mut lost = Vec::new();
    if creates + installs + template_installs + stats.writes > 0 {
        lost.push(format!(
            "after the status wipe the operator wrote to Cyclr: {creates} Create Account, {installs} Install Connector, {template_installs} template installs, {} writes applied",
            stats.writes
        ));
    }
    Ok(lost)
}

/// `key: count, …`.
fn counts<K: std::fmt::Display>(map: &std::collections::BTreeMap<K, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
