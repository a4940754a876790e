//! `make bench`: onboards N CyclrAccounts with the real operator (release binary, a child
//! process) on a real control plane (cyclr-testenv) against cyclr-sim with added latency, then
//! does the same with the floor (no operator logic), at the default partner rate limit and at
//! a raised one, and prints times, Cyclr calls, Kubernetes writes, memory and CPU. The same
//! job runs on a partner of each dialect (`DIALECTS`: the Partner API, and v1.0, whose runs
//! have no floor: the floor speaks the Partner API). With `PEER=1`, also Crossplane's
//! provider-http doing the same job (`peer.rs`).
//! See docs/performance.md.

mod curve;
mod floor;
mod peer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use cyclr_sim::{Faults, SimConfig, SimHandle, Simulator};
use cyclr_testenv::TestEnv;

use cyclr_bench::{cluster, operator};

use cluster::{CLIENT_ID, CLIENT_SECRET, Dialect, DialectsArg, PARTNER_BURST, ReadyWatch};
use cyclr::types::CycleStatus;
use operator::{Fleet, ProcUsage};

/// Onboarding N CyclrAccounts: the operator against the floor.
#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// Accounts per run. Several sizes (comma-separated, e.g. `1000,10000,30000`) run the
    /// whole bench at each and draw the curve of time and memory against N (`CURVE_SVG`).
    #[arg(long = "n", env = "N", value_delimiter = ',', default_value = "1000")]
    sizes: Vec<usize>,
    /// The size being run (one of `sizes`).
    #[arg(skip)]
    n: usize,
    /// Account creates in flight at once (the clients of the API server, e.g. a GitOps tool).
    #[arg(long, env = "CREATE_CONCURRENCY", default_value_t = 32)]
    create_concurrency: usize,
    /// The operator's `--concurrency`, and the floor's number of accounts handled at once.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 16)]
    operator_concurrency: u16,
    /// The partner rate limits to run at, requests per second (10 is the default limit).
    #[arg(long, env = "LIMITS", value_delimiter = ',', default_value = "10,1000")]
    limits: Vec<u32>,
    #[command(flatten)]
    dialects: DialectsArg,
    /// Latency the simulator adds to every request, in milliseconds.
    #[arg(long, env = "LATENCY_MS", default_value_t = 20)]
    latency_ms: u64,
    /// CyclrCycles per account on V1 runs, created with the accounts (cycle j of every
    /// account installs template j of the simulator's); 0: none.
    #[arg(long, env = "CYCLES", default_value_t = 0)]
    cycles: usize,
    /// The partner's resyncInterval, in seconds (the resync measured after the rollout).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// Unrelated Secrets and ConfigMaps (each) in the cluster before the runs; default the
    /// largest N.
    #[arg(long, env = "UNRELATED")]
    unrelated: Option<usize>,
    /// After the resyncs, also restart the operator with the N accounts Ready (issue #23
    /// row 3): time to `/readyz`, its Kubernetes writes and Cyclr calls until quiet.
    #[arg(long, env = "RESTART", value_parser = clap::builder::FalseyValueParser::new())]
    restart: bool,
    /// Run the floor after the operator on Partner runs (default); `FLOOR=0` skips it, for a
    /// look at the operator alone at a size where the floor takes most of an hour.
    #[arg(long, env = "FLOOR", default_value = "true", value_parser = clap::builder::FalseyValueParser::new())]
    floor: bool,
    /// Run the floor alone, with this many CyclrAccount writes per account (what an operator
    /// run at the same N made in its rollout, e.g. `3` for its 3.15), and no operator: the
    /// floor at a size where the whole bench outlasts the time at hand. Prints the floor's
    /// time and calls; draws no curve.
    #[arg(long, env = "FLOOR_ONLY")]
    floor_only: Option<u64>,
    /// Operator processes, each serving a shard of the accounts (`--shard sJ --shards SHARDS
    /// --label-selector`, accounts spread round robin) with its share of the partner's budget;
    /// 1: one process serving the whole cluster, as installed by default (issue #23 row 4).
    #[arg(long, env = "SHARDS", default_value_t = 1)]
    shards: usize,
    /// Where to draw the curve when several sizes run; default `curve.svg` in the run's log
    /// directory.
    #[arg(long, env = "CURVE_SVG")]
    curve_svg: Option<PathBuf>,
    /// The operator binary; default: `cyclr-operator` next to this binary.
    #[arg(long, env = "CYCLR_OPERATOR")]
    operator: Option<PathBuf>,
    /// Also run Crossplane's provider-http (`bin/provider-http`, built by
    /// `hack/testbin.sh provider-http`) doing the same job, and compare.
    // PEER=1 as well as PEER=true: any value but n, no, f, false, off, 0 or empty.
    #[arg(long, env = "PEER", value_parser = clap::builder::FalseyValueParser::new())]
    peer: bool,
    /// How long provider-http may take before the bench reports how many Requests were Ready;
    /// default: 120 s plus 1 s per account.
    #[arg(long, env = "PEER_TIMEOUT_SECONDS")]
    peer_timeout_seconds: Option<u64>,
    /// How long to watch provider-http once everything is Ready (its polls of each object).
    #[arg(long, env = "PEER_IDLE_SECONDS", default_value_t = 60)]
    peer_idle_seconds: u64,
}

/// The operator's rollout at one limit on one dialect, and the floor's (Partner only).
struct Run {
    dialect: Dialect,
    limit: u32,
    operator: OperatorRun,
    floor: Option<Rollout>,
}

/// One rollout of N accounts, operator or floor.
struct Rollout {
    /// When the accounts became Ready.
    readiness: cluster::Readiness,
    /// Cyclr requests by endpoint, and responses by status.
    calls: BTreeMap<String, u64>,
    responses: BTreeMap<u16, u64>,
}

struct OperatorRun {
    rollout: Rollout,
    /// Kubernetes writes during the rollout, by metric label set.
    writes: BTreeMap<String, u64>,
    /// Reconciles during the rollout, by kind and result.
    reconciles: BTreeMap<String, u64>,
    /// The most writes one account took, rollout and resyncs (from the accounts' watch).
    most_writes: Option<cluster::MostWrites>,
    usage: ProcUsage,
    /// The first resync after the rollout: the accounts' first usage reads.
    first_resync: Resync,
    /// The next one, with nothing to change.
    resync: Resync,
    /// Its cycles, on a V1 run with `CYCLES`.
    cycles: Option<CycleRun>,
    /// The restart with every account Ready, with `RESTART`.
    restart: Option<Restart>,
    /// The most Cyclr requests in any 1 s, 10 s and 60 s of the rollout, with the window.
    busiest: Vec<(Duration, usize)>,
}

/// The operator stopped and started again with N Ready accounts (issue #23 row 3).
struct Restart {
    /// From the new process's start to its `/readyz` answering 200.
    ready_after: Duration,
    /// Its Kubernetes writes until quiet (its own counter), and the account versions the
    /// bench's watch saw meanwhile ("at least" when the watch listed again).
    writes: BTreeMap<String, u64>,
    versions: (u64, bool),
    /// Cyclr calls until quiet, by endpoint.
    calls: BTreeMap<String, u64>,
    /// Its peak RSS and CPU until quiet.
    usage: ProcUsage,
}

/// The cycles of a V1 run, rolled out with its accounts.
struct CycleRun {
    /// How many: `CYCLES` per account.
    count: usize,
    /// When each was first Ready (Active in Cyclr), from its create.
    readiness: cluster::Readiness,
    /// The most writes one CyclrCycle took (its watch events), rollout and both resyncs.
    most_writes: Option<cluster::MostWrites>,
    /// The cycles Cyclr holds after the rollout, and how many of them are Active.
    in_cyclr: (usize, usize),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator_bin = match &args.operator {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("cyclr-operator"),
    };
    anyhow::ensure!(
        operator_bin.is_file(),
        "{} is missing: build it with `cargo build --release --bin cyclr-operator` (make bench does)",
        operator_bin.display()
    );
    let logs = std::env::temp_dir().join(format!("cyclr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;

    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    let unrelated = args.unrelated.unwrap_or(largest);
    println!(
        "cyclr-bench: N={:?} accounts ({} CyclrCycles each on V1), {} operator process(es), cyclr-sim +{} ms per request, {} creates in flight, operator concurrency {}, limits {:?} req/s, dialects {:?}, {unrelated} unrelated Secrets and ConfigMaps",
        args.sizes,
        args.cycles,
        args.shards,
        args.latency_ms,
        args.create_concurrency,
        args.operator_concurrency,
        args.limits,
        args.dialects.dialects,
    );
    println!("machine: {}", cyclr_bench::machine());
    println!(
        "note: this machine is shared (other builds may run): absolute times are noisy, the operator/floor ratio is the headline."
    );
    let env = TestEnv::get().await;
    let client = env.client();
    cluster::install_crds(&client, &operator_bin).await?;
    println!("creating {unrelated} unrelated Secrets and {unrelated} ConfigMaps…");
    let namespace = env.new_namespace("bench-unrelated").await;
    cluster::create_unrelated(&client, &namespace, unrelated, args.create_concurrency).await?;

    let mut curve: Vec<curve::Series> = Vec::new();
    for &n in &args.sizes {
        let args = Args { n, ..args.clone() };
        if let Some(writes) = args.floor_only {
            run_floor_alone(env, &args, writes).await?;
            continue;
        }
        let results = run_size(env, &args, &operator_bin, &logs).await?;
        for run in &results {
            let label = format!("{} {}/s", run.dialect.name(), run.limit);
            let point = curve::Point {
                n,
                operator: run.operator.rollout.readiness.all_ready,
                floor: run.floor.as_ref().map(|f| f.readiness.all_ready),
                peak_rss_mib: mib(run.operator.usage.peak_rss_kib),
                cpu_seconds: run.operator.usage.cpu_seconds,
            };
            match curve.iter_mut().find(|s| s.label == label) {
                Some(series) => series.points.push(point),
                None => curve.push(curve::Series {
                    label,
                    points: vec![point],
                }),
            }
        }
    }
    if args.sizes.len() > 1 {
        let path = args.curve_svg.clone().unwrap_or_else(|| logs.join("curve.svg"));
        curve::draw(&curve, MEMORY_GOAL_MIB, &path)?;
        println!(
            "\n## The curve (N = {:?})\n\n{}\ndrawn into {}",
            args.sizes,
            curve::table(&curve),
            path.display()
        );
    }
    Ok(())
}

/// Peak RSS the operator should stay under at N = 100,000 (issue #23 row 1), drawn on the curve.
const MEMORY_GOAL_MIB: f64 = 256.0;

/// The whole bench at one size (`args.n`): the operator and the floor at every dialect and
/// limit, then provider-http with `PEER`; prints the report and returns the runs.
async fn run_size(
    env: &TestEnv,
    args: &Args,
    operator_bin: &std::path::Path,
    logs: &std::path::Path,
) -> anyhow::Result<Vec<Run>> {
    let mut results = Vec::new();
    for &dialect in &args.dialects.dialects {
        for &limit in &args.limits {
            let tag = format!("[N={} {} {limit} req/s]", args.n, dialect.name());
            println!("\n{tag} operator: {} accounts…", args.n);
            let log = logs.join(format!("operator-{}-{}-{limit}.log", args.n, dialect.name()));
            let operator = run_operator(env, args, operator_bin, dialect, limit, log).await?;
            println!(
                "{tag} operator: all Ready in {:.1} s",
                operator.rollout.readiness.all_ready.as_secs_f64()
            );
            let floor = match dialect {
                Dialect::Partner if args.floor => {
                    let per_account = floor_work(&operator.writes, args.n);
                    println!("{tag} floor: {} accounts ({per_account:?})…", args.n);
                    let floor = run_floor(env, args, limit, per_account).await?;
                    println!(
                        "{tag} floor: all Ready in {:.1} s",
                        floor.readiness.all_ready.as_secs_f64()
                    );
                    Some(floor)
                }
                _ => None,
            };
            results.push(Run {
                dialect,
                limit,
                operator,
                floor,
            });
        }
    }
    let peer = if args.peer {
        println!("\n[provider-http] {} Requests…", args.n);
        let run = run_peer(env, args, logs.join(format!("provider-http-{}.log", args.n))).await?;
        println!(
            "[provider-http] {} of {} Ready and Synced in {:.1} s{}",
            run.ready,
            args.n,
            run.all_ready.as_secs_f64(),
            if run.timed_out { " (timed out)" } else { "" }
        );
        Some(run)
    } else {
        None
    };
    report(args, &results);
    if let Some(peer) = &peer {
        report_peer(args, &results, peer);
    }
    Ok(results)
}

/// provider-http on the same control plane: its CRDs (from `bin/provider-http-crds/`, copied
/// from the same module version as the binary), a fresh namespace and a fresh simulator.
async fn run_peer(env: &TestEnv, args: &Args, log: PathBuf) -> anyhow::Result<peer::PeerRun> {
    let bin = cyclr_testenv::control_plane::testbin_dir();
    let (binary, crds) = (bin.join("provider-http"), bin.join("provider-http-crds"));
    anyhow::ensure!(
        binary.is_file() && crds.is_dir(),
        "{} or {} is missing: run `bash hack/testbin.sh provider-http` (PEER=1 make bench does)",
        binary.display(),
        crds.display()
    );
    let mut yaml = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        yaml.extend_from_slice(b"\n---\n");
        yaml.extend(std::fs::read(file)?);
    }
    let client = env.client();
    cluster::apply_crds(&client, &yaml).await?;
    let namespace = env.new_namespace("bench-peer").await;
    let sim = start_sim(args).await?;
    let run = peer::run(
        &client,
        env.kubeconfig_path(),
        &namespace,
        &sim,
        peer::PeerArgs {
            binary: &binary,
            n: args.n,
            create_concurrency: args.create_concurrency,
            timeout: Duration::from_secs(args.peer_timeout_seconds.unwrap_or(120 + args.n as u64)),
            idle: Duration::from_secs(args.peer_idle_seconds),
            log,
        },
    )
    .await;
    sim.shutdown().await;
    run
}

async fn start_sim(args: &Args) -> anyhow::Result<SimHandle> {
    let mut config = SimConfig::new(CLIENT_ID, CLIENT_SECRET);
    config.faults = Faults {
        latency: Duration::from_millis(args.latency_ms),
        ..Faults::default()
    };
    Simulator::start(config, "127.0.0.1:0".parse()?).await
}

/// How long a rollout of `n` objects may take before the bench gives up: four Cyclr calls per
/// object at the limit, 10 objects/s of API server work, plus two minutes.
fn rollout_timeout(n: usize, limit: u32) -> Duration {
    Duration::from_secs(120 + 4 * n as u64 / u64::from(limit.max(1)) + n as u64 / 10)
}

async fn run_operator(
    env: &TestEnv,
    args: &Args,
    binary: &std::path::Path,
    dialect: Dialect,
    limit: u32,
    log: PathBuf,
) -> anyhow::Result<OperatorRun> {
    let client = env.client();
    let namespace = env.new_namespace("bench-operator").await;
    let sim = start_sim(args).await?;
    let per_account = if dialect == Dialect::V1 { args.cycles } else { 0 };
    cluster::seed_templates(&sim, per_account);
    let resync = format!("{}s", args.resync_seconds);
    cluster::create_partner(&client, &namespace, &sim.base_url(), dialect, limit, &resync).await?;
    let mut op = Fleet::start(
        binary,
        env.kubeconfig_path(),
        &namespace,
        args.operator_concurrency,
        log,
        args.shards,
    )?;
    let ready = async {
        cluster::wait_partner_ready(&client, &namespace).await?;
        op.wait_ready(Duration::from_secs(60)).await
    };
    if let Err(e) = ready.await {
        op.check_running()?;
        return Err(e.context(format!("operator log: {}", op.log().display())));
    }
    let before = op.kubernetes_writes().await?;
    let reconciles_before = op.reconciles().await?;
    sim.reset_stats();

    let (watch, watch_task) = ReadyWatch::start(&client, &namespace).await?;
    let cycle_count = args.n * per_account;
    let (cycle_watch, cycle_watch_task) =
        ReadyWatch::start_with(cluster::cycles(&client, &namespace), cluster::is_ready).await?;
    // Accounts and their cycles applied at once, as a GitOps tool applies a directory.
    let (sent, cycles_sent) = tokio::try_join!(
        cluster::create_accounts(&client, &namespace, args.n, args.create_concurrency, None, args.shards),
        cluster::create_cycles(&client, &namespace, args.n, per_account, args.create_concurrency),
    )?;
    let timeout = rollout_timeout(args.n + cycle_count, limit);
    let deadline = Instant::now() + timeout;
    while watch.count() < args.n || cycle_watch.count() < cycle_count {
        op.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} accounts and {} of {cycle_count} cycles Ready after {timeout:?}; operator log: {}",
            watch.count(),
            args.n,
            cycle_watch.count(),
            op.log().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readiness = cluster::readiness_times(&sent, &watch.snapshot())?;
    // Writes that trail the last Ready (Events, annotations) belong to the rollout.
    let after = settle(&op, &sim, Duration::from_secs(60)).await?;
    let requests = sim.request_log();
    let busiest = [1, 10, 60]
        .map(Duration::from_secs)
        .map(|width| (width, cyclr_bench::chaos::max_in_window(&requests, width)))
        .to_vec();
    let cycles_rollout = if cycle_count > 0 {
        let in_cyclr: Vec<_> = sim.accounts().iter().flat_map(|a| sim.cycles(&a.id)).collect();
        let active = in_cyclr.iter().filter(|c| c.status == CycleStatus::Active).count();
        Some((
            cluster::readiness_times(&cycles_sent, &cycle_watch.snapshot())?,
            (in_cyclr.len(), active),
        ))
    } else {
        None
    };
    let stats = sim.stats();
    let rollout = Rollout {
        readiness,
        calls: stats.requests,
        responses: stats.responses,
    };
    let writes = delta(&before, &after);
    let reconciles = delta(&reconciles_before, &op.reconciles().await?);

    // The first resync after the rollout does the accounts' first usage reads (an account's
    // usage is read once a List Accounts has shown it, at the account's own resync, not
    // during onboarding): it lasts until every account not read in the rollout is. The second
    // has nothing to change.
    let usage_timeout = rollout_timeout(args.n + cycle_count, limit);
    let list = dialect.list_accounts();
    let unread = (args.n as u64).saturating_sub(sim.stats().requests_to(cluster::ACCOUNT_USAGE));
    let first_resync = measure_resync(&op, &sim, list, unread, args.resync_seconds, usage_timeout, &after).await?;
    let resync = measure_resync(
        &op,
        &sim,
        list,
        0,
        args.resync_seconds,
        usage_timeout,
        &first_resync.writes_after,
    )
    .await?;

    let usage = op.usage()?;
    let restart = if args.restart {
        let log = op.log().with_extension("restart.log");
        op.stop().await?;
        let (restarted, restart) = measure_restart(args, binary, env, &namespace, &sim, &watch, log).await?;
        op = restarted;
        Some(restart)
    } else {
        None
    };
    let most_writes = watch.most_writes();
    watch_task.abort();
    let cycles = cycles_rollout.map(|(readiness, in_cyclr)| CycleRun {
        count: cycle_count,
        readiness,
        most_writes: cycle_watch.most_writes(),
        in_cyclr,
    });
    cycle_watch_task.abort();
    op.stop().await?;
    sim.shutdown().await;
    cluster::delete_run(&client, &namespace).await?;
    Ok(OperatorRun {
        rollout,
        writes,
        reconciles,
        most_writes,
        usage,
        first_resync,
        resync,
        cycles,
        restart,
        busiest,
    })
}

/// Starts the operator again (it was stopped with every account Ready) and measures how long
/// until `/readyz`, and what it writes and calls until quiet.
async fn measure_restart(
    args: &Args,
    binary: &std::path::Path,
    env: &TestEnv,
    namespace: &str,
    sim: &SimHandle,
    watch: &ReadyWatch,
    log: PathBuf,
) -> anyhow::Result<(Fleet, Restart)> {
    sim.reset_stats();
    let versions_before = watch.versions_seen().0;
    let started = Instant::now();
    let op = Fleet::start(
        binary,
        env.kubeconfig_path(),
        namespace,
        args.operator_concurrency,
        log,
        args.shards,
    )?;
    op.wait_ready(Duration::from_secs(600)).await?;
    let ready_after = started.elapsed();
    // Quiet for 3 s, but at least one resync interval: what a restart costs includes the
    // partner's first resync.
    tokio::time::sleep(Duration::from_secs(args.resync_seconds)).await;
    let writes = settle(&op, sim, Duration::from_secs(120)).await?;
    let (seen, relisted) = watch.versions_seen();
    let restart = Restart {
        ready_after,
        writes,
        versions: (seen - versions_before, relisted),
        calls: sim.stats().requests,
        usage: op.usage()?,
    };
    Ok((op, restart))
}

/// What one resync cost: Cyclr calls and Kubernetes writes from the next List Accounts
/// (`list`, the dialect's) until quiet.
struct Resync {
    calls: BTreeMap<String, u64>,
    writes: BTreeMap<String, u64>,
    /// The operator's write counters once quiet.
    writes_after: BTreeMap<String, u64>,
}

/// One resync: from a List Accounts and `usage_reads` Get Account Usage (waited for up to
/// the resync interval and `timeout`) until the operator and the simulator are quiet.
async fn measure_resync(
    op: &Fleet,
    sim: &SimHandle,
    list: &str,
    usage_reads: u64,
    resync_seconds: u64,
    timeout: Duration,
    before: &BTreeMap<String, u64>,
) -> anyhow::Result<Resync> {
    sim.reset_stats();
    cluster::wait_for(
        "a resync (List Accounts)",
        Duration::from_secs(resync_seconds + 30),
        || async { (sim.stats().requests_to(list) > 0).then_some(()) },
    )
    .await?;
    // At most that long: a read that fell between the rollout's count and this resync's
    // start is counted in neither, and the figures below say what came.
    let _ = cluster::wait_for(
        &format!("{usage_reads} usage reads"),
        Duration::from_secs(resync_seconds) + timeout,
        || async { (sim.stats().requests_to(cluster::ACCOUNT_USAGE) >= usage_reads).then_some(()) },
    )
    .await;
    let after = settle(op, sim, timeout).await?;
    Ok(Resync {
        calls: sim.stats().requests,
        writes: delta(before, &after),
        writes_after: after,
    })
}

/// Waits until neither the operator's Kubernetes writes nor the simulator's requests have
/// changed for 3 s (at most `max`), and returns the writes then.
async fn settle(op: &Fleet, sim: &SimHandle, max: Duration) -> anyhow::Result<BTreeMap<String, u64>> {
    let deadline = Instant::now() + max;
    let mut last = (op.kubernetes_writes().await?, sim.stats().total_requests());
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (op.kubernetes_writes().await?, sim.stats().total_requests());
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    Ok(last.0)
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The floor's writes per account: the operator's, rounded (its annotation patch included).
fn floor_work(writes: &BTreeMap<String, u64>, n: usize) -> floor::PerAccount {
    let per = |kind: &str| {
        let total = writes.get(&format!("kind=\"{kind}\"")).copied().unwrap_or(0);
        (total as f64 / n.max(1) as f64).round() as u64
    };
    let account_writes = per("CyclrAccount").max(1);
    let patches = u64::from(account_writes >= 2);
    floor::PerAccount {
        status_writes: account_writes - patches,
        patches,
        events: per("Event"),
    }
}

/// `FLOOR_ONLY`: the floor at each limit with `writes` CyclrAccount writes per account,
/// printed as it ends.
async fn run_floor_alone(env: &TestEnv, args: &Args, writes: u64) -> anyhow::Result<()> {
    let operator_writes = BTreeMap::from([("kind=\"CyclrAccount\"".to_string(), writes * args.n as u64)]);
    let work = floor_work(&operator_writes, args.n);
    for &limit in &args.limits {
        let tag = format!("[N={} Partner {limit} req/s]", args.n);
        println!("\n{tag} floor alone: {} accounts ({work:?})…", args.n);
        let floor = run_floor(env, args, limit, work).await?;
        let readiness = &floor.readiness;
        println!(
            "{tag} floor: all Ready in {}, p50 {}, p99 {}, last Ready after the last create {}; Cyclr calls per account: {}",
            secs(readiness.all_ready),
            secs(cluster::quantile(&readiness.each, 0.50)),
            secs(cluster::quantile(&readiness.each, 0.99)),
            secs(readiness.after_last_create),
            per_account(&floor.calls, args.n)
        );
    }
    Ok(())
}

async fn run_floor(env: &TestEnv, args: &Args, limit: u32, per_account: floor::PerAccount) -> anyhow::Result<Rollout> {
    let client = env.client();
    let namespace = env.new_namespace("bench-floor").await;
    let sim = start_sim(args).await?;
    let (watch, watch_task) = ReadyWatch::start(&client, &namespace).await?;
    let (created, to_handle) = futures::channel::mpsc::unbounded();
    let api_url = sim.base_url();
    let (sent, ()) = tokio::try_join!(
        cluster::create_accounts(&client, &namespace, args.n, args.create_concurrency, Some(created), 1),
        floor::run(
            &client,
            &namespace,
            &api_url,
            limit,
            usize::from(args.operator_concurrency),
            per_account,
            to_handle
        ),
    )?;
    watch.wait_all(args.n, Duration::from_secs(60)).await?;
    let readiness = cluster::readiness_times(&sent, &watch.snapshot())?;
    watch_task.abort();
    let stats = sim.stats();
    sim.shutdown().await;
    cluster::delete_run(&client, &namespace).await?;
    Ok(Rollout {
        readiness,
        calls: stats.requests,
        responses: stats.responses,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Each count divided by N, with the count itself (rare calls such as List Accounts round to 0.00).
fn per_account(map: &BTreeMap<String, u64>, n: usize) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {:.2} ({v})", *v as f64 / n as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A run's CyclrAccount writes per new account: (rollout, first resync). The first resync
/// writes the usage and bill dates read after the rollout, so their sum is what a new account
/// costs in Kubernetes writes.
fn account_writes(run: &OperatorRun, n: usize) -> (f64, f64) {
    let per = |writes: &BTreeMap<String, u64>| {
        writes.get("kind=\"CyclrAccount\"").copied().unwrap_or(0) as f64 / n.max(1) as f64
    };
    (per(&run.writes), per(&run.first_resync.writes))
}

fn report(args: &Args, results: &[Run]) {
    let n = args.n;
    println!("\n## Results (N = {n})\n");
    println!(
        "| dialect | limit | run | all Ready | accounts/s | time to Ready p50 | p99 | last Ready after the last create | operator/floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for run in results {
        let rows = std::iter::once(("operator", &run.operator.rollout)).chain(run.floor.iter().map(|f| ("floor", f)));
        for (name, r) in rows {
            let ratio = match (&run.floor, name) {
                (Some(floor), "operator") => format!(
                    "**{:.2}×**",
                    r.readiness.all_ready.as_secs_f64() / floor.readiness.all_ready.as_secs_f64().max(1e-9)
                ),
                (None, _) => "no floor (v1.0, or `FLOOR=0`)".to_owned(),
                _ => String::new(),
            };
            let r = &r.readiness;
            println!(
                "| {} | {}/s | {name} | {} | {:.1} | {} | {} | {} | {ratio} |",
                run.dialect.name(),
                run.limit,
                secs(r.all_ready),
                n as f64 / r.all_ready.as_secs_f64().max(1e-9),
                secs(cluster::quantile(&r.each, 0.5)),
                secs(cluster::quantile(&r.each, 0.99)),
                secs(r.after_last_create),
            );
        }
    }
    println!(
        "\n| dialect | limit | CyclrAccount writes per new account (rollout + first resync) | all Ready | p50 | operator peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    for run in results {
        let (rollout, first) = account_writes(&run.operator, n);
        let r = &run.operator.rollout.readiness;
        println!(
            "| {} | {}/s | **{:.2}** ({rollout:.2} + {first:.2}) | {} | {} | {:.1} MiB |",
            run.dialect.name(),
            run.limit,
            rollout + first,
            secs(r.all_ready),
            secs(cluster::quantile(&r.each, 0.5)),
            mib(run.operator.usage.peak_rss_kib),
        );
    }
    for Run {
        dialect,
        limit,
        operator: run,
        floor,
    } in results
    {
        let calls: u64 = run.rollout.calls.values().sum();
        let writes: u64 = run.writes.values().sum();
        println!("\n### {}, {limit} requests/s\n", dialect.name());
        println!(
            "- budget floor N × calls per account / limit: {n} × {:.2} / {limit} = {:.1} s",
            calls as f64 / n as f64,
            calls as f64 / f64::from(*limit)
        );
        println!(
            "- operator Cyclr calls per account: {}",
            per_account(&run.rollout.calls, n)
        );
        println!("- operator Cyclr responses: {}", counts_u16(&run.rollout.responses));
        if let Some(floor) = floor {
            println!("- floor Cyclr calls per account: {}", per_account(&floor.calls, n));
        }
        println!(
            "- operator Kubernetes writes per account: {:.2} ({})",
            writes as f64 / n as f64,
            per_account(&run.writes, n)
        );
        println!(
            "- operator reconciles per account (rollout): {}",
            per_account(&run.reconciles, n)
        );
        if let Some(most) = run.most_writes {
            println!(
                "- most writes to one CyclrAccount, rollout and both resyncs (its watch events): {}{} ({} of {n} accounts)",
                if most.lower_bound { "at least " } else { "" },
                most.writes,
                most.objects,
            );
        }
        println!(
            "- operator peak RSS {:.1} MiB, CPU {:.1} s (rollout and both resyncs)",
            mib(run.usage.peak_rss_kib),
            run.usage.cpu_seconds
        );
        println!(
            "- first resync after the rollout (first usage reads): Cyclr calls {}; Kubernetes writes {}",
            counts(&run.first_resync.calls),
            counts(&run.first_resync.writes)
        );
        println!(
            "- one full resync with nothing to change: Cyclr calls {}; Kubernetes writes {}",
            counts(&run.resync.calls),
            counts(&run.resync.writes)
        );
        for (width, most) in &run.busiest {
            let bound = cyclr_bench::chaos::bucket_bound(*limit, PARTNER_BURST, *width);
            println!(
                "- busiest {} s of the rollout: {most} Cyclr requests, all kinds, {} operator process{} together (the partner's bucket allows {bound}: burst {PARTNER_BURST} + {limit}/s × {} s){}",
                width.as_secs(),
                args.shards,
                if args.shards == 1 { "" } else { "es" },
                width.as_secs(),
                if *most > bound { " **above the limit**" } else { "" }
            );
        }
        if let Some(restart) = &run.restart {
            let (versions, relisted) = restart.versions;
            println!(
                "- **restart** with {n} accounts Ready: `/readyz` {} after the start; Kubernetes writes {} (the accounts' watch saw {}{versions} new versions); Cyclr calls {}; peak RSS {:.1} MiB, CPU {:.1} s until quiet",
                secs(restart.ready_after),
                counts(&restart.writes),
                if relisted { "at least " } else { "" },
                counts(&restart.calls),
                mib(restart.usage.peak_rss_kib),
                restart.usage.cpu_seconds,
            );
        }
        if let Some(cycles) = &run.cycles {
            report_cycles(n, run, cycles);
        }
    }
}

/// The cycles of a V1 run (issue #20 row 9): time to Active, Cyclr calls per cycle, writes,
/// and the lists of a quiet resync (the busiest seconds are the run's, above).
fn report_cycles(n: usize, run: &OperatorRun, cycles: &CycleRun) {
    let count = cycles.count;
    let r = &cycles.readiness;
    println!(
        "- **cycles**: {count} ({} per account), all Ready (Active in Cyclr) {} after the first create; time to Ready p50 {}, p99 {}; the last {} after the last create; Cyclr holds {} cycles, {} Active",
        count / n.max(1),
        secs(r.all_ready),
        secs(cluster::quantile(&r.each, 0.5)),
        secs(cluster::quantile(&r.each, 0.99)),
        secs(r.after_last_create),
        cycles.in_cyclr.0,
        cycles.in_cyclr.1,
    );
    let of_cycles = |calls: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        calls
            .iter()
            .filter(|(endpoint, _)| endpoint.contains("/v1.0/cycles") || endpoint.contains("/v1.0/templates"))
            .map(|(endpoint, n)| (endpoint.clone(), *n))
            .collect()
    };
    println!(
        "- Cyclr calls per cycle (rollout): {}",
        per_account(&of_cycles(&run.rollout.calls), count)
    );
    let cycle_writes = |writes: &BTreeMap<String, u64>| writes.get("kind=\"CyclrCycle\"").copied().unwrap_or(0);
    println!(
        "- CyclrCycle writes per cycle: {:.2} in the rollout ({}), {} in the first resync, {} in the quiet one",
        cycle_writes(&run.writes) as f64 / count as f64,
        cycle_writes(&run.writes),
        cycle_writes(&run.first_resync.writes),
        cycle_writes(&run.resync.writes)
    );
    if let Some(most) = cycles.most_writes {
        println!(
            "- most writes to one CyclrCycle, rollout and both resyncs (its watch events): {}{} ({} of {count})",
            if most.lower_bound { "at least " } else { "" },
            most.writes,
            most.objects,
        );
    }
    let quiet = of_cycles(&run.resync.calls);
    let lists = quiet.get("GET /v1.0/cycles").copied().unwrap_or(0);
    println!(
        "- the resync with nothing to change: {lists} cycle lists for {n} accounts with cycles ({:.2} per account, {:.2} per cycle); its cycle calls: {}",
        lists as f64 / n as f64,
        lists as f64 / count as f64,
        counts(&quiet)
    );
}

fn counts_u16(map: &BTreeMap<u16, u64>) -> String {
    counts(&map.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report_peer(args: &Args, results: &[Run], peer: &peer::PeerRun) {
    let n = args.n;
    println!("\n## provider-http (PEER=1), N = {n}\n");
    println!("- defaults (its --help): {}", peer.defaults.join(" "));
    println!(
        "- one namespaced Request per account: CREATE POST /api/partner/createaccount, OBSERVE GET /v1.0/accounts/{{id}}; Ready means Ready=True and Synced=True"
    );
    let done = if peer.timed_out {
        format!(
            "**timed out** after {}: {} of {n} Ready",
            secs(peer.all_ready),
            peer.ready
        )
    } else {
        format!("all {n} Ready in {}", secs(peer.all_ready))
    };
    println!(
        "- {done}; {:.1} accounts/s; time to Ready p50 {}, p99 {} (of those Ready)",
        peer.ready as f64 / peer.all_ready.as_secs_f64().max(1e-9),
        secs(cluster::quantile(&peer.each, 0.5)),
        secs(cluster::quantile(&peer.each, 0.99)),
    );
    println!("- Cyclr calls per account (rollout): {}", per_account(&peer.calls, n));
    println!("- Cyclr responses: {}", counts_u16(&peer.responses));
    println!(
        "- accounts in the simulator: {} ({} duplicates by name)",
        peer.accounts, peer.duplicates
    );
    println!(
        "- Request reconciles per account (rollout): {}",
        per_account(&peer.reconciles, n)
    );
    println!(
        "- idle {} s after the rollout: Cyclr calls {}; {} reconciles",
        peer.idle.as_secs(),
        counts(&peer.idle_calls),
        peer.idle_reconciles
    );
    println!(
        "- provider-http peak RSS {:.1} MiB, CPU {:.1} s (rollout and idle window)",
        mib(peer.usage.peak_rss_kib),
        peer.usage.cpu_seconds
    );
    println!(
        "\n| operator at | operator all Ready | provider-http all Ready | provider-http / operator time | operator peak RSS | provider-http peak RSS | memory operator / provider-http |"
    );
    println!("|---|---|---|---|---|---|---|");
    for Run {
        dialect,
        limit,
        operator: run,
        ..
    } in results
    {
        let bound = if peer.timed_out { "≥ " } else { "" };
        println!(
            "| {} {limit} req/s | {} | {bound}{} | **{bound}{:.1}×** | {:.1} MiB | {:.1} MiB | **{:.2}** |",
            dialect.name(),
            secs(run.rollout.readiness.all_ready),
            secs(peer.all_ready),
            peer.all_ready.as_secs_f64() / run.rollout.readiness.all_ready.as_secs_f64().max(1e-9),
            mib(run.usage.peak_rss_kib),
            mib(peer.usage.peak_rss_kib),
            run.usage.peak_rss_kib as f64 / peer.usage.peak_rss_kib.max(1) as f64,
        );
    }
}
