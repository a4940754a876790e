//! Starting and stopping one etcd + kube-apiserver pair: the single implementation behind
//! both the test harness and `make cluster-up`; and, for the tests that ask for it, a
//! kube-controller-manager running only the namespace controller and the garbage collector.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::certs;
use crate::process::{self, Lifetime};

/// Generous: on two busy cores kube-apiserver can take a while to finish its post-start hooks.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Free ports are picked before the processes bind them, so another process can win the race.
const START_ATTEMPTS: u32 = 3;

const ETCD: &str = "etcd";
const KUBE_APISERVER: &str = "kube-apiserver";
const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// The controllers [`start_controller_manager`] runs, by their kube-controller-manager names.
const CONTROLLERS: &str = "namespace-controller,garbage-collector-controller";
/// The ServiceAccounts kube-controller-manager creates in kube-system for those controllers
/// (`--use-service-account-credentials`): once both exist, it has authenticated and started them.
const CONTROLLER_ACCOUNTS: [&str; 2] = ["namespace-controller", "generic-garbage-collector"];

/// Where [`start`] writes the admin kubeconfig (certificates embedded).
pub fn kubeconfig_in(dir: &Path) -> PathBuf {
    dir.join("kubeconfig")
}

/// The directory holding the etcd and kube-apiserver binaries: `$CYCLR_TESTBIN`, or `bin/`
/// at the workspace root where `make testbin` puts them.
pub fn testbin_dir() -> PathBuf {
    std::env::var_os("CYCLR_TESTBIN").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("testenv lives inside the workspace")
            .join("bin")
    })
}

/// Starts etcd and kube-apiserver with their data, certificates, logs and kubeconfig under
/// `dir`, and returns an admin config once `/readyz` answers 200. With
/// [`Lifetime::Detached`] it also writes `etcd.pid` and `kube-apiserver.pid` for [`stop`].
pub async fn start(dir: &Path, lifetime: Lifetime) -> Result<kube::Config> {
    Ok(start_with_apiserver(dir, lifetime).await?.0)
}

/// [`start`], also returning what it takes to stop and start the same kube-apiserver again.
pub async fn start_with_apiserver(dir: &Path, lifetime: Lifetime) -> Result<(kube::Config, ApiServer)> {
    let dir = std::path::absolute(dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = testbin_dir();
    let (etcd, apiserver) = (bin.join(ETCD), bin.join(KUBE_APISERVER));
    for binary in [&etcd, &apiserver] {
        if !binary.is_file() {
            bail!(
                "{} is missing: run `make testbin` to build etcd and kube-apiserver into bin/ \
                 (or point CYCLR_TESTBIN at a directory holding them)",
                binary.display()
            );
        }
    }
    let mut attempt = 1;
    loop {
        let result = try_start(&dir, &etcd, &apiserver, lifetime).await;
        if result.is_err() && attempt < START_ATTEMPTS && port_clash(&dir) {
            attempt += 1;
            continue;
        }
        return result;
    }
}

async fn try_start(dir: &Path, etcd: &Path, apiserver: &Path, lifetime: Lifetime) -> Result<(kube::Config, ApiServer)> {
    let ports = free_ports(3)?;
    let (etcd_port, peer_port, secure_port) = (ports[0], ports[1], ports[2]);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let server = format!("https://127.0.0.1:{secure_port}");

    // Fresh state on every start: certificates and ports change, so old data is useless.
    let (data, pki_dir, cert_dir) = (dir.join("etcd"), dir.join("pki"), dir.join("serving"));
    for d in [&data, &pki_dir, &cert_dir] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d)?;
    }
    let pki = certs::generate()?;
    write_private(&pki_dir.join("ca.crt"), &pki.ca_cert)?;
    write_private(&pki_dir.join("sa.key"), &pki.service_account_key)?;
    write_private(&pki_dir.join("sa.pub"), &pki.service_account_pub)?;
    // kube-apiserver uses <cert-dir>/apiserver.{crt,key} when present instead of making a
    // self-signed pair, so clients can trust our CA.
    write_private(&cert_dir.join("apiserver.crt"), &pki.serving_cert)?;
    write_private(&cert_dir.join("apiserver.key"), &pki.serving_key)?;
    let kubeconfig = kubeconfig_in(dir);
    write_private(
        &kubeconfig,
        &kubeconfig_yaml(
            &server,
            &pki.ca_cert,
            "cyclr-testenv-admin",
            &pki.admin_cert,
            &pki.admin_key,
        ),
    )?;
    write_private(
        &controller_manager_kubeconfig(dir),
        &kubeconfig_yaml(
            &server,
            &pki.ca_cert,
            KUBE_CONTROLLER_MANAGER,
            &pki.controller_manager_cert,
            &pki.controller_manager_key,
        ),
    )?;

    let mut etcd_cmd = Command::new(etcd);
    etcd_cmd.args([
        "--name=default".to_owned(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        // Throw-away data: fsync only costs time.
        "--unsafe-no-fsync=true".to_owned(),
        // The bench's 100,000 accounts and their history pass the default 2 GiB.
        "--quota-backend-bytes=8589934592".to_owned(),
    ]);
    let apiserver_args = vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", cert_dir.display()),
        format!("--secure-port={secure_port}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        // No nodes exist, so there is nothing to publish as endpoints of the kubernetes service.
        "--endpoint-reconciler-type=none".to_owned(),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--allow-privileged=true".to_owned(),
        // No controller-manager creates the default ServiceAccount this plugin waits for.
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        format!("--client-ca-file={}", pki_dir.join("ca.crt").display()),
        format!("--service-account-issuer={server}/"),
        format!("--service-account-key-file={}", pki_dir.join("sa.pub").display()),
        format!(
            "--service-account-signing-key-file={}",
            pki_dir.join("sa.key").display()
        ),
    ];
    let mut apiserver_cmd = Command::new(apiserver);
    apiserver_cmd.args(&apiserver_args);

    let mut children = Vec::new();
    let config = async {
        children.push(spawn_logged(etcd_cmd, dir, ETCD, lifetime)?);
        children.push(spawn_logged(apiserver_cmd, dir, KUBE_APISERVER, lifetime)?);
        let config = Kubeconfig::read_from(&kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
        wait_ready(&config, &[ETCD, KUBE_APISERVER], &mut children).await?;
        anyhow::Ok(config)
    }
    .await;
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("starting the control plane failed: {err:#}\n{}", log_tails(dir));
        }
    };
    let restartable = ApiServer {
        binary: apiserver.to_path_buf(),
        args: apiserver_args,
        dir: dir.to_path_buf(),
        lifetime,
        pid: std::sync::Mutex::new(Some(children[1].id() as libc::pid_t)),
        starts: std::sync::atomic::AtomicU32::new(1),
    };
    match lifetime {
        Lifetime::Process => process::kill_at_exit(children),
        Lifetime::Detached => {
            for (name, child) in [ETCD, KUBE_APISERVER].into_iter().zip(&children) {
                fs::write(pid_file(dir, name), format!("{}\n", child.id()))?;
            }
        }
    }
    Ok((config, restartable))
}

/// The kube-apiserver of a control plane, to be stopped and started again on the same port,
/// certificates and etcd (whose data stays): an API server restart as a user's cluster sees
/// one during an upgrade.
pub struct ApiServer {
    binary: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    lifetime: Lifetime,
    /// The running process, if any.
    pid: std::sync::Mutex<Option<libc::pid_t>>,
    /// How many times it was started, to name each run's log.
    starts: std::sync::atomic::AtomicU32,
}

impl ApiServer {
    /// SIGTERM (SIGKILL after 15 s) and waits until it has exited. Fine if it is not running.
    pub fn stop(&self) {
        if let Some(pid) = self.pid.lock().expect("apiserver pid").take() {
            terminate(pid, KUBE_APISERVER);
        }
    }

    /// The client URL of the etcd it stores in (its `--etcd-servers`), plain HTTP on loopback.
    pub fn etcd_url(&self) -> Option<&str> {
        self.args.iter().find_map(|arg| arg.strip_prefix("--etcd-servers="))
    }

    /// Starts it again with the same arguments and waits until `/readyz` answers (at most
    /// 120 s); its log goes to `kube-apiserver.<n>.log` beside the first one. Does nothing
    /// while it runs. A detached control plane's pid file is not updated: `control-plane
    /// down` would not stop a restarted one, so only tests (lifetime `Process`) restart.
    pub async fn start(&self, config: &kube::Config) -> Result<()> {
        if self.pid.lock().expect("apiserver pid").is_some() {
            return Ok(());
        }
        let n = self.starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        let name = format!("{KUBE_APISERVER}.{n}");
        let mut children = vec![spawn_logged(cmd, &self.dir, &name, self.lifetime)?];
        if let Err(err) = wait_ready(config, &[KUBE_APISERVER], &mut children).await {
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(err.context(format!(
                "restarting kube-apiserver (log: {})",
                log_file(&self.dir, &name).display()
            )));
        }
        *self.pid.lock().expect("apiserver pid") = Some(children[0].id() as libc::pid_t);
        if self.lifetime == Lifetime::Process {
            process::kill_at_exit(children);
        }
        Ok(())
    }
}

/// Starts kube-controller-manager (`bin/kube-controller-manager`) against the control plane
/// [`start`] made in `dir`, with only the namespace controller and the garbage collector:
/// a deleted namespace is emptied and goes away, dependents of a deleted owner are collected.
/// It authenticates as `system:kube-controller-manager` and gives each controller its own
/// ServiceAccount in kube-system (`--use-service-account-credentials`), as a real control
/// plane does, so they act with the default RBAC roles of those controllers. No leader
/// election, no serving port (several test processes may each run one). Returns once it has
/// created both controllers' ServiceAccounts (at most 120 s); fails with its log's tail if it
/// exits first. It lives as long as `lifetime` says.
pub async fn start_controller_manager(dir: &Path, config: &kube::Config, lifetime: Lifetime) -> Result<()> {
    let binary = testbin_dir().join(KUBE_CONTROLLER_MANAGER);
    if !binary.is_file() {
        bail!(
            "{} is missing: run `make testbin` to build kube-controller-manager into bin/ \
             (or point CYCLR_TESTBIN at a directory holding it)",
            binary.display()
        );
    }
    let kubeconfig = controller_manager_kubeconfig(dir);
    let mut cmd = Command::new(binary);
    cmd.args([
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--controllers={CONTROLLERS}"),
        "--use-service-account-credentials=true".to_owned(),
        "--leader-elect=false".to_owned(),
        // No HTTPS endpoint: nothing scrapes it, and a fixed port would clash between processes.
        "--secure-port=0".to_owned(),
    ]);
    let mut child = spawn_logged(cmd, dir, KUBE_CONTROLLER_MANAGER, lifetime)?;
    let client = kube::Client::try_from(config.clone())?;
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> = kube::Api::namespaced(client, "kube-system");
    let deadline = Instant::now() + READY_TIMEOUT;
    let started = loop {
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "kube-controller-manager exited during start-up ({status})"
            ));
        }
        let mut missing = Vec::new();
        for name in CONTROLLER_ACCOUNTS {
            if accounts.get_opt(name).await?.is_none() {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "kube-controller-manager created no ServiceAccount {missing:?} in kube-system within {READY_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Err(err) = started {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{err}\n{}", log_tail(dir, KUBE_CONTROLLER_MANAGER));
    }
    if lifetime == Lifetime::Process {
        process::kill_at_exit(vec![child]);
    }
    Ok(())
}

/// The kubeconfig kube-controller-manager uses (its own client certificate), beside the admin's.
fn controller_manager_kubeconfig(dir: &Path) -> PathBuf {
    dir.join("controller-manager.kubeconfig")
}

fn spawn_logged(mut cmd: Command, dir: &Path, name: &str, lifetime: Lifetime) -> Result<Child> {
    let log = File::create(log_file(dir, name))?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    process::spawn(cmd, lifetime).with_context(|| format!("spawning {name}"))
}

/// Waits for `/readyz`; fails at once if one of `children` (named by `names`) exits.
async fn wait_ready(config: &kube::Config, names: &[&str], children: &mut [Child]) -> Result<()> {
    let client = kube::Client::try_from(config.clone())?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for (name, child) in names.iter().zip(children.iter_mut()) {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during start-up ({status})");
            }
        }
        let readyz = http::Request::get("/readyz").body(Vec::new())?;
        // The client's own read timeout is minutes; a stuck request must not eat the budget.
        let last_error = match tokio::time::timeout(Duration::from_secs(5), client.request_text(readyz)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "/readyz timed out".to_owned(),
        };
        if Instant::now() > deadline {
            bail!("kube-apiserver not ready after {READY_TIMEOUT:?}: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True when both processes recorded by a detached [`start`] in `dir` are running.
pub fn is_running(dir: &Path) -> bool {
    [ETCD, KUBE_APISERVER]
        .iter()
        .all(|name| read_pid(dir, name).is_some_and(|pid| alive(pid, name)))
}

/// Stops a control plane started with [`Lifetime::Detached`] in `dir` and removes its pid
/// files and kubeconfig; logs stay for post-mortems. Fine if nothing runs.
pub fn stop(dir: &Path) -> Result<()> {
    // kube-apiserver first, so it does not log a storm of etcd connection errors.
    for name in [KUBE_APISERVER, ETCD] {
        if let Some(pid) = read_pid(dir, name) {
            terminate(pid, name);
        }
        let pid_file = pid_file(dir, name);
        if pid_file.exists() {
            fs::remove_file(&pid_file)?;
        }
    }
    let kubeconfig = kubeconfig_in(dir);
    if kubeconfig.exists() {
        fs::remove_file(kubeconfig)?;
    }
    Ok(())
}

fn terminate(pid: libc::pid_t, name: &str) {
    for (signal, grace) in [(libc::SIGTERM, 15), (libc::SIGKILL, 5)] {
        if !alive(pid, name) {
            return;
        }
        // SAFETY: plain syscall; `alive` checked the pid still belongs to `name`.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(grace);
        while alive(pid, name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `pid` is a live (not zombie) process running the binary `name`: a stale pid file
/// must never make us signal an unrelated process that reused the pid.
fn alive(pid: libc::pid_t, name: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let runs_name = Path::new(OsStr::from_bytes(argv0))
        .file_name()
        .is_some_and(|file| file == name);
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(true);
    runs_name && !zombie
}

fn read_pid(dir: &Path, name: &str) -> Option<libc::pid_t> {
    fs::read_to_string(pid_file(dir, name)).ok()?.trim().parse().ok()
}

fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn port_clash(dir: &Path) -> bool {
    [ETCD, KUBE_APISERVER]
        .iter()
        .any(|name| fs::read_to_string(log_file(dir, name)).is_ok_and(|log| log.contains("address already in use")))
}

fn log_tails(dir: &Path) -> String {
    [ETCD, KUBE_APISERVER].iter().map(|name| log_tail(dir, name)).collect()
}

fn log_tail(dir: &Path, name: &str) -> String {
    const LINES: usize = 25;
    let path = log_file(dir, name);
    let log = fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
    format!("--- last {LINES} lines of {} ---\n{tail}\n", path.display())
}

/// Ports the kernel considers free right now; all listeners are held until the last one is
/// bound so the ports are distinct.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|addr| addr.port()))
        .collect::<std::io::Result<_>>()?)
}

/// Keys and the admin kubeconfig are readable by their owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// A kubeconfig for `user`, authenticating with a client certificate, all PEM embedded.
fn kubeconfig_yaml(server: &str, ca: &str, user: &str, cert: &str, key: &str) -> String {
    let ca = BASE64.encode(ca);
    let cert = BASE64.encode(cert);
    let key = BASE64.encode(key);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: cyclr-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: cyclr-testenv
  context:
    cluster: cyclr-testenv
    user: {user}
current-context: cyclr-testenv
"
    )
}
