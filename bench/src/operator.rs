//! The operator under test: the release `cyclr-operator` binary as a child process, so its
//! memory and CPU are its own (read from /proc) and its `/metrics` is the one users scrape.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cluster::LABEL;

/// `run` arguments that make the operator serve only the objects and partners of `namespace`
/// labelled for it (as a sharded install does, which adds a metadata-only watch of every
/// CyclrAccount for the claims): several operators then share one control plane.
pub fn scoped_to(namespace: &str) -> [String; 6] {
    let label = format!("{LABEL}={namespace}");
    [
        "--watch-namespace".to_owned(),
        namespace.to_owned(),
        "--label-selector".to_owned(),
        label.clone(),
        "--partner-label-selector".to_owned(),
        label,
    ]
}

/// A running operator; killed when dropped.
pub struct Operator {
    process: Process,
    /// `http://ADDR`, where `/metrics` and `/readyz` are served.
    http_base: String,
    http: reqwest::Client,
    /// Where its logs go (warnings and errors only).
    pub log: PathBuf,
}

/// A child process under measurement (the operator, or provider-http): its output goes to a
/// log file, and it is killed when dropped.
pub struct Process {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl Process {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut command: tokio::process::Command, log: &Path) -> anyhow::Result<Process> {
        let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().with_context(|| format!("{name} exited at once"))?;
        Ok(Process {
            name,
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); see {}", self.name, self.log.display());
        }
        Ok(())
    }

    /// Its peak RSS and CPU time so far.
    pub fn usage(&self) -> anyhow::Result<ProcUsage> {
        proc_usage(self.pid)
    }

    /// `kill -9`, and reaps the process.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("SIGKILL {}", self.name))
    }

    /// SIGTERM, then waits up to 10 s for the exit before killing it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// What /proc says of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcUsage {
    /// Peak resident set size (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
}

impl Operator {
    /// Starts `binary run` as installed by default (every namespace, no label selector; its
    /// own namespace for the lease and Events), with `/metrics` on a free local port.
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        namespace: &str,
        concurrency: u16,
        log: PathBuf,
    ) -> anyhow::Result<Operator> {
        Self::start_with(binary, kubeconfig, namespace, concurrency, log, &[])
    }

    /// [`Operator::start`] with more `run` arguments, e.g. `--leader-election` or
    /// [`scoped_to`].
    pub fn start_with(
        binary: &Path,
        kubeconfig: &Path,
        namespace: &str,
        concurrency: u16,
        log: PathBuf,
        extra_args: &[&str],
    ) -> anyhow::Result<Operator> {
        let addr = free_local_addr()?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["run", "--namespace", namespace])
            .args(["--http-addr", &addr.to_string(), "--log-level", "warn"])
            .args(["--concurrency", &concurrency.to_string()])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig);
        Ok(Operator {
            process: Process::spawn("the operator", command, &log)?,
            http_base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            log,
        })
    }

    /// Fails if the operator has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    /// The process id (the Lease holder identity ends with it).
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// `kill -9`, and reaps the process.
    pub async fn kill(self) -> anyhow::Result<()> {
        self.process.kill().await
    }

    /// Waits until the operator's `/readyz` answers 200: every watch has listed, so a rollout
    /// measured from now is not also timing the operator's start. Errors after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.http_base);
        crate::cluster::wait_for("the operator's /readyz", timeout, || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
    }

    /// `cyclr_operator_kubernetes_writes_total` by label set, e.g. `kind="CyclrAccount"`.
    pub async fn kubernetes_writes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.counter("cyclr_operator_kubernetes_writes_total").await
    }

    /// `cyclr_operator_reconciles_total` by label set, e.g. `kind="CyclrAccount",result="ok"`.
    pub async fn reconciles(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        self.counter("cyclr_operator_reconciles_total").await
    }

    /// The counter `name` from the operator's `/metrics`, by label set.
    async fn counter(&self, name: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let url = format!("{}/metrics", self.http_base);
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("scraping {url}"))?
            .text()
            .await?;
        Ok(parse_counter(&text, name))
    }

    /// The operator's peak RSS and CPU time so far.
    pub fn usage(&self) -> anyhow::Result<ProcUsage> {
        self.process.usage()
    }

    /// SIGTERM, then waits for the exit (the operator stops within its 5 s grace).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.process.stop().await
    }
}

/// The label that places a bench account in shard `s0`, `s1`, … when the operator runs as
/// several shards (`SHARDS`).
pub const SHARD_LABEL: &str = "cyclr.com/bench-shard";

/// The operator as the bench runs it: one process serving the whole cluster, or `SHARDS`
/// processes, shard `sJ` serving the accounts labelled [`SHARD_LABEL`]`=sJ` with `1/SHARDS` of
/// the partner's budget (`--shards`), the first also writing the partner's status. Counters are
/// summed over the processes.
pub struct Fleet {
    shards: Vec<Operator>,
}

impl Fleet {
    /// Starts `shards` operators (1: as installed by default), logs at `log` (with `.sJ`
    /// before the extension when sharded).
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        namespace: &str,
        concurrency: u16,
        log: PathBuf,
        shards: usize,
    ) -> anyhow::Result<Fleet> {
        if shards <= 1 {
            let one = Operator::start(binary, kubeconfig, namespace, concurrency, log)?;
            return Ok(Fleet { shards: vec![one] });
        }
        let count = shards.to_string();
        let shards = (0..shards)
            .map(|j| {
                let (shard, selector) = (format!("s{j}"), format!("{SHARD_LABEL}=s{j}"));
                let status_writer = if j == 0 {
                    "--partner-status=true"
                } else {
                    "--partner-status=false"
                };
                let args = [
                    "--shard",
                    &shard,
                    "--shards",
                    &count,
                    "--label-selector",
                    &selector,
                    status_writer,
                ];
                let log = log.with_extension(format!("{shard}.log"));
                Operator::start_with(binary, kubeconfig, namespace, concurrency, log, &args)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Fleet { shards })
    }

    /// The first process's log (the status writer's).
    pub fn log(&self) -> &Path {
        &self.shards[0].log
    }

    /// Fails if any process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.shards.iter_mut().try_for_each(Operator::check_running)
    }

    /// Waits until every process's `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        for shard in &self.shards {
            shard.wait_ready(timeout).await?;
        }
        Ok(())
    }

    /// `cyclr_operator_kubernetes_writes_total` by label set, summed over the processes.
    pub async fn kubernetes_writes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut sum = BTreeMap::new();
        for shard in &self.shards {
            add(&mut sum, shard.kubernetes_writes().await?);
        }
        Ok(sum)
    }

    /// `cyclr_operator_reconciles_total` by label set, summed over the processes.
    pub async fn reconciles(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut sum = BTreeMap::new();
        for shard in &self.shards {
            add(&mut sum, shard.reconciles().await?);
        }
        Ok(sum)
    }

    /// The largest peak RSS of the processes and their CPU time together.
    pub fn usage(&self) -> anyhow::Result<ProcUsage> {
        let each = self
            .shards
            .iter()
            .map(Operator::usage)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ProcUsage {
            peak_rss_kib: each.iter().map(|u| u.peak_rss_kib).max().unwrap_or(0),
            cpu_seconds: each.iter().map(|u| u.cpu_seconds).sum(),
        })
    }

    /// SIGTERM to every process, and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        for shard in self.shards {
            shard.stop().await?;
        }
        Ok(())
    }
}

fn add(sum: &mut BTreeMap<String, u64>, counts: BTreeMap<String, u64>) {
    for (labels, count) in counts {
        *sum.entry(labels).or_default() += count;
    }
}

/// A local address nobody listens on right now.
fn free_local_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The samples of one counter in Prometheus text format, by label set (without braces).
pub fn parse_counter(text: &str, name: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            let labels = labels.trim().trim_start_matches('{').trim_end_matches('}');
            Some((labels.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Peak RSS from `/proc/PID/status` and CPU time from `/proc/PID/stat`.
pub fn proc_usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th (fields 14 and 15 of proc(5)).
    let after_comm = stat.rsplit_once(')').context("unexpected /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcUsage {
        peak_rss_kib,
        cpu_seconds: ticks as f64 / per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_counter_by_label_set() {
        let text = "# HELP cyclr_operator_kubernetes_writes Writes\n\
                    cyclr_operator_kubernetes_writes_total{kind=\"CyclrAccount\"} 2000\n\
                    cyclr_operator_kubernetes_writes_total{kind=\"Event\"} 1000\n\
                    cyclr_other_total 5\n";
        let parsed = parse_counter(text, "cyclr_operator_kubernetes_writes_total");
        assert_eq!(parsed.get("kind=\"CyclrAccount\""), Some(&2000));
        assert_eq!(parsed.get("kind=\"Event\""), Some(&1000));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn reads_its_own_usage() {
        let usage = proc_usage(std::process::id()).unwrap();
        assert!(usage.peak_rss_kib > 0);
    }
}
