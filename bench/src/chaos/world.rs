//! One scenario's world: its namespace, simulator and partner, the accounts and installs it
//! rolls out, what was tried (with times), and the end check against the simulator's state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cyclr_sim::{Faults, SimConfig, SimHandle, Simulator};
use cyclr_testenv::TestEnv;
use futures::{StreamExt, TryStreamExt};
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::Settings;
use crate::cluster::{self, CLIENT_ID, CLIENT_SECRET, Dialect, LABEL};
use cyclr::types::{Cycle, CycleStatus};

/// Resources created at once (a GitOps tool applying a directory).
const CREATE_CONCURRENCY: usize = 32;
/// The connector every install installs; its installed name is the resource's name.
const CONNECTOR: &str = "Slack";
/// On v1.0, account i is deleted (with its installs and cycles) when i mod this is this minus
/// one.
const DELETE_EVERY: usize = 10;
/// On v1.0, cycle i installs template i mod this of the simulator's.
const TEMPLATES: usize = 3;

/// A scenario's namespace, simulator and partner, and its record of what was tried.
pub(crate) struct World {
    pub client: Client,
    /// The control plane's admin kubeconfig, for the operators started.
    pub kubeconfig: std::path::PathBuf,
    pub namespace: String,
    pub sim: SimHandle,
    accounts: usize,
    installs: usize,
    /// CyclrCycles (v1.0 only: cycles exist only there).
    cycles: usize,
    dialect: Dialect,
    /// The accounts deleted, by name (v1.0 only), and how many installs and cycles went with
    /// them.
    deleted: BTreeSet<String>,
    deleted_installs: usize,
    deleted_cycles: usize,
    /// The task deleting them.
    deleter: Option<AbortOnDrop>,
    started: Instant,
    /// What was tried and seen, each with its time since the scenario started.
    pub tried: Vec<String>,
    /// How many faults were injected.
    pub faults: usize,
    /// Printed as `[sN +12.3s] …` while the scenario runs.
    tag: String,
}

/// How far a rollout is, from the resources' Ready conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub accounts_ready: usize,
    pub installs_ready: usize,
    pub cycles_ready: usize,
    /// How many of each should exist at the end (the deleted ones not counted).
    pub accounts: usize,
    pub installs: usize,
    pub cycles: usize,
    /// Resources deleted but not gone yet (waiting for their finalizer).
    pub deleting: usize,
}

impl Progress {
    /// Every resource that stays is Ready, and every deleted one is gone.
    pub fn done(&self) -> bool {
        self.accounts_ready == self.accounts
            && self.installs_ready == self.installs
            && self.cycles_ready == self.cycles
            && self.deleting == 0
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} accounts and {}/{} installs Ready",
            self.accounts_ready, self.accounts, self.installs_ready, self.installs
        )?;
        if self.cycles > 0 {
            write!(f, ", {}/{} cycles", self.cycles_ready, self.cycles)?;
        }
        if self.deleting > 0 {
            write!(f, ", {} deleting", self.deleting)?;
        }
        Ok(())
    }
}

impl World {
    /// A fresh namespace, a simulator with `faults` and a CyclrPartner on the settings'
    /// dialect at `rate` requests/s, for the settings' numbers of accounts and installs; no
    /// operator yet.
    pub async fn start(
        env: &TestEnv,
        tag: String,
        settings: &Settings,
        rate: u32,
        faults: Faults,
    ) -> anyhow::Result<World> {
        let client = env.client();
        let namespace = env.new_namespace("chaos").await;
        let mut config = SimConfig::new(CLIENT_ID, CLIENT_SECRET);
        config.faults = faults;
        let sim = Simulator::start(config, "127.0.0.1:0".parse()?).await?;
        let cycles = match settings.dialect {
            Dialect::Partner => 0,
            Dialect::V1 => settings.cycles,
        };
        cluster::seed_templates(&sim, TEMPLATES);
        cluster::create_partner(
            &client,
            &namespace,
            &sim.base_url(),
            settings.dialect,
            rate,
            &settings.resync_interval,
        )
        .await?;
        Ok(World {
            client,
            kubeconfig: env.kubeconfig_path().to_path_buf(),
            namespace,
            sim,
            accounts: settings.accounts,
            installs: settings.installs,
            cycles,
            dialect: settings.dialect,
            deleted: BTreeSet::new(),
            deleted_installs: 0,
            deleted_cycles: 0,
            deleter: None,
            started: Instant::now(),
            tried: Vec::new(),
            faults: 0,
            tag,
        })
    }

    /// Seconds since the scenario started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records and prints one thing tried (or seen), with the time.
    pub fn note(&mut self, what: impl Into<String>) {
        let line = format!("{:6.1} s  {}", self.elapsed(), what.into());
        println!("[{}] {line}", self.tag);
        self.tried.push(line);
    }

    /// Records and prints one fault injected.
    pub fn fault(&mut self, what: impl Into<String>) {
        self.faults += 1;
        self.note(what);
    }

    /// Creates the accounts `acct-00000`… (Cyclr name = resource name), the installs
    /// `inst-00000`…, install i into account i mod accounts, and on v1.0 the cycles
    /// `cyc-00000`… the same way, all at once; on v1.0 with `deletionPolicy: Delete`, and then
    /// deletes one account in ten with its installs and cycles.
    pub async fn create_resources(&mut self) -> anyhow::Result<()> {
        let (namespace, accounts) = (self.namespace.clone(), self.accounts);
        let deletion_policy = match self.dialect {
            Dialect::Partner => "Orphan",
            Dialect::V1 => "Delete",
        };
        let account_api = cluster::accounts(&self.client, &namespace);
        let install_api = cluster::installs(&self.client, &namespace);
        let cycle_api = cluster::cycles(&self.client, &namespace);
        let objects = (0..self.accounts)
            .map(|i| {
                let name = account_name(i);
                (
                    account_api.clone(),
                    json!({
                        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrAccount",
                        "metadata": {"name": name, "labels": {LABEL: namespace}},
                        "spec": {
                            "partnerRef": {"name": namespace}, "name": name, "description": "cyclr-chaos",
                            "deletionPolicy": deletion_policy,
                        },
                    }),
                )
            })
            .chain((0..self.installs).map(|i| {
                let name = install_name(i);
                (
                    install_api.clone(),
                    json!({
                        "apiVersion": "cyclr.com/v1alpha1", "kind": "CyclrConnectorInstall",
                        "metadata": {"name": name, "labels": {LABEL: namespace}},
                        "spec": {
                            "accountRef": {"name": account_name(i % accounts.max(1))},
                            "connectorName": CONNECTOR, "connectorVersion": "v1", "installedName": name,
                        },
                    }),
                )
            }))
            .chain((0..self.cycles).map(|i| {
                let name = cycle_name(i);
                let account = account_name(i % accounts.max(1));
                (
                    cycle_api.clone(),
                    cluster::cycle_object(&namespace, &name, &account, i % TEMPLATES),
                )
            }));
        futures::stream::iter(objects)
            .map(|(api, object)| async move {
                let object: DynamicObject = serde_json::from_value(object)?;
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating {:?}", object.metadata.name))?;
                anyhow::Ok(())
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.note(format!(
            "created {} CyclrAccounts, {} CyclrConnectorInstalls and {} CyclrCycles",
            self.accounts, self.installs, self.cycles
        ));
        if self.dialect == Dialect::V1 {
            self.delete_some();
        }
        Ok(())
    }

    /// Deletes account i for each i mod [`DELETE_EVERY`] = [`DELETE_EVERY`] − 1, and the
    /// installs and cycles into it, each once its Cyclr account exists (status.accountID), so the
    /// deletes reach Cyclr while the scenario's faults go on: a task of its own, retrying
    /// through API server restarts, not awaited ([`World::progress`] counts what is left) and
    /// stopped when the world is dropped.
    fn delete_some(&mut self) {
        let doomed: Vec<usize> = (0..self.accounts)
            .filter(|i| i % DELETE_EVERY == DELETE_EVERY - 1)
            .collect();
        let into_doomed = |count: usize| -> Vec<usize> {
            (0..count)
                .filter(|i| doomed.contains(&(i % self.accounts.max(1))))
                .collect()
        };
        let (installs, cycles) = (into_doomed(self.installs), into_doomed(self.cycles));
        self.deleted = doomed.iter().copied().map(account_name).collect();
        self.deleted_installs = installs.len();
        self.deleted_cycles = cycles.len();
        self.note(format!(
            "deleting {} CyclrAccounts (deletionPolicy Delete) and the {} CyclrConnectorInstalls and {} CyclrCycles into them, each once its Cyclr account exists",
            self.deleted.len(),
            self.deleted_installs,
            self.deleted_cycles
        ));
        let account_api = cluster::accounts(&self.client, &self.namespace);
        let install_api = cluster::installs(&self.client, &self.namespace);
        let cycle_api = cluster::cycles(&self.client, &self.namespace);
        let accounts = self.accounts.max(1);
        let mut left: BTreeSet<usize> = doomed.into_iter().collect();
        let deleter = tokio::spawn(async move {
            while !left.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for i in left.clone() {
                    let created = account_api
                        .get_opt(&account_name(i))
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.data["status"]["accountID"].is_string());
                    if !created {
                        continue;
                    }
                    let names = installs
                        .iter()
                        .filter(|&&n| n % accounts == i)
                        .map(|&n| (&install_api, install_name(n)))
                        .chain(
                            cycles
                                .iter()
                                .filter(|&&n| n % accounts == i)
                                .map(|&n| (&cycle_api, cycle_name(n))),
                        )
                        .chain([(&account_api, account_name(i))]);
                    let mut done = true;
                    for (api, name) in names {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(status)) if status.code == 404 => {}
                            Err(_) => done = false,
                        }
                    }
                    if done {
                        left.remove(&i);
                    }
                }
            }
        });
        self.deleter = Some(AbortOnDrop(deleter.abort_handle()));
    }

    /// How many CyclrCycles the scenario created.
    pub fn cycle_count(&self) -> usize {
        self.cycles
    }

    /// The cycles Cyclr holds in the accounts not deleted, when the scenario has cycles.
    pub fn cycles_in_cyclr(&self) -> Option<usize> {
        (self.cycles > 0).then(|| {
            self.sim
                .accounts()
                .iter()
                .filter(|a| !self.deleted.contains(&a.name))
                .map(|a| self.sim.cycles(&a.id).len())
                .sum()
        })
    }

    /// Ready counts now; an error while the API server is away.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        let (accounts, installs, cycles) = self.list().await?;
        let deleting = |o: &&DynamicObject| o.metadata.deletion_timestamp.is_some();
        let ready = |objects: &[DynamicObject]| objects.iter().filter(|o| !deleting(o) && cluster::is_ready(o)).count();
        Ok(Progress {
            accounts_ready: ready(&accounts),
            installs_ready: ready(&installs),
            cycles_ready: ready(&cycles),
            accounts: self.accounts - self.deleted.len(),
            installs: self.installs - self.deleted_installs,
            cycles: self.cycles - self.deleted_cycles,
            deleting: accounts.iter().chain(&installs).chain(&cycles).filter(deleting).count(),
        })
    }

    /// The progress before kill `k` of `kills`, or `None` (noted) when the rollout is
    /// already done and the remaining kills are not made.
    pub async fn progress_before_kill(&mut self, k: usize, kills: usize) -> anyhow::Result<Option<Progress>> {
        let progress = self.progress().await?;
        if progress.done() {
            self.note(format!(
                "rollout done before kill {k}: {} kills not made",
                kills - k + 1
            ));
            return Ok(None);
        }
        Ok(Some(progress))
    }

    async fn list(&self) -> anyhow::Result<(Vec<DynamicObject>, Vec<DynamicObject>, Vec<DynamicObject>)> {
        let params = ListParams::default().labels(&format!("{LABEL}={}", self.namespace));
        let accounts = cluster::accounts(&self.client, &self.namespace).list(&params).await?;
        let installs = cluster::installs(&self.client, &self.namespace).list(&params).await?;
        let cycles = cluster::cycles(&self.client, &self.namespace).list(&params).await?;
        Ok((accounts.items, installs.items, cycles.items))
    }

    /// Waits until every resource is Ready, giving up after `timeout` or when nothing became
    /// Ready for `stuck_after`; `alive` fails the wait (e.g. the operator exited). Returns the
    /// last progress seen.
    pub async fn wait_ready(
        &mut self,
        timeout: Duration,
        stuck_after: Duration,
        mut alive: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Progress> {
        let deadline = Instant::now() + timeout;
        let mut last = Progress::default();
        let mut changed = Instant::now();
        loop {
            alive()?;
            // The API server may be away for a moment: that is progress unknown, not an error.
            if let Ok(now) = self.progress().await {
                if now.done() {
                    self.note(format!("all Ready: {now}"));
                    return Ok(now);
                }
                if now != last {
                    last = now;
                    changed = Instant::now();
                }
            }
            if Instant::now() > deadline || changed.elapsed() > stuck_after {
                self.note(format!("gave up waiting: {last}"));
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the simulator has had no request for `quiet` (at most `max`), so writes in
    /// flight land before the check.
    pub async fn settle(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        let mut last = self.sim.stats().total_requests();
        let mut since = Instant::now();
        while since.elapsed() < quiet && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.sim.stats().total_requests();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }

    /// The end check, from the simulator's state and the resources: exactly one Cyclr account
    /// per CyclrAccount (and none besides), none left of a deleted one, exactly one installed
    /// connector per CyclrConnectorInstall and exactly one Active cycle per CyclrCycle (its
    /// template installed once; none besides), every resource Ready and its status naming
    /// what it stands for. Returns what is wrong: duplicates, losses, strays, stuck
    /// resources, accounts a delete left behind.
    pub async fn check(&self) -> anyhow::Result<Vec<String>> {
        let (accounts, installs, cycles) = self.list().await.context("listing the resources for the check")?;
        let mut lost = Vec::new();
        let (kept_accounts, kept_installs, kept_cycles) = (
            self.accounts - self.deleted.len(),
            self.installs - self.deleted_installs,
            self.cycles - self.deleted_cycles,
        );
        if accounts.len() != kept_accounts || installs.len() != kept_installs || cycles.len() != kept_cycles {
            lost.push(format!(
                "{} CyclrAccounts, {} CyclrConnectorInstalls and {} CyclrCycles exist, {kept_accounts}, {kept_installs} and {kept_cycles} were created and not deleted",
                accounts.len(),
                installs.len(),
                cycles.len(),
            ));
        }
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for account in self.sim.accounts() {
            by_name.entry(account.name).or_default().push(account.id);
        }
        for name in &self.deleted {
            if let Some(ids) = by_name.remove(name) {
                lost.push(format!(
                    "CyclrAccount {name} was deleted with deletionPolicy Delete, but Cyclr still has {}",
                    ids.join(", ")
                ));
            }
        }
        let mut account_ids = HashMap::new();
        for account in &accounts {
            let name = account.metadata.name.clone().unwrap_or_default();
            let ids = by_name.remove(&name).unwrap_or_default();
            match ids.as_slice() {
                [id] => {
                    if account.data["status"]["accountID"].as_str() != Some(id) {
                        lost.push(format!(
                            "CyclrAccount {name}: status.accountID {} is not its Cyclr account {id}",
                            account.data["status"]["accountID"]
                        ));
                    }
                    account_ids.insert(name.clone(), id.clone());
                }
                [] => lost.push(format!("CyclrAccount {name}: no Cyclr account")),
                _ => lost.push(format!(
                    "CyclrAccount {name}: {} Cyclr accounts (duplicates: {})",
                    ids.len(),
                    ids.join(", ")
                )),
            }
            if !cluster::is_ready(account) {
                lost.push(format!("CyclrAccount {name}: not Ready ({})", ready_condition(account)));
            }
        }
        for (name, ids) in by_name {
            lost.push(format!(
                "Cyclr account(s) {name:?} that no resource holds: {}",
                ids.join(", ")
            ));
        }
        let mut installed: BTreeMap<(String, String), usize> = BTreeMap::new();
        for id in account_ids.values() {
            for connector in self.sim.installed_connectors(id) {
                *installed.entry((id.clone(), connector.name)).or_default() += 1;
            }
        }
        for install in &installs {
            let name = install.metadata.name.clone().unwrap_or_default();
            let account = install.data["spec"]["accountRef"]["name"].as_str().unwrap_or_default();
            let installed_name = install.data["spec"]["installedName"].as_str().unwrap_or_default();
            match account_ids.get(account) {
                None => lost.push(format!(
                    "CyclrConnectorInstall {name}: its account {account} has no Cyclr account"
                )),
                Some(id) => match installed.remove(&(id.clone(), installed_name.to_owned())) {
                    Some(1) => {}
                    None => lost.push(format!(
                        "CyclrConnectorInstall {name}: nothing installed as {installed_name:?} in {id}"
                    )),
                    Some(n) => lost.push(format!(
                        "CyclrConnectorInstall {name}: {n} connectors installed as {installed_name:?} in {id}"
                    )),
                },
            }
            if !cluster::is_ready(install) {
                lost.push(format!(
                    "CyclrConnectorInstall {name}: not Ready ({})",
                    ready_condition(install)
                ));
            }
        }
        for ((id, name), n) in installed {
            lost.push(format!(
                "{n} installed connector(s) {name:?} in {id} that no resource holds"
            ));
        }
        lost.extend(self.check_cycles(&cycles, &account_ids));
        Ok(lost)
    }

    /// The cycles' part of [`World::check`]: each CyclrCycle's template installed exactly once
    /// into its account's Cyclr account (one Cyclr cycle with its name: the operator names a
    /// cycle after its resource), that cycle Active and in `status.cycleID`; no other cycle
    /// in those accounts.
    fn check_cycles(&self, cycles: &[DynamicObject], account_ids: &HashMap<String, String>) -> Vec<String> {
        let mut lost = Vec::new();
        let mut in_cyclr: BTreeMap<(String, String), Vec<Cycle>> = BTreeMap::new();
        for id in account_ids.values() {
            for cycle in self.sim.cycles(id) {
                in_cyclr
                    .entry((id.clone(), cycle.name.clone()))
                    .or_default()
                    .push(cycle);
            }
        }
        for resource in cycles {
            let name = resource.metadata.name.clone().unwrap_or_default();
            let account = resource.data["spec"]["accountRef"]["name"].as_str().unwrap_or_default();
            let Some(id) = account_ids.get(account) else {
                lost.push(format!("CyclrCycle {name}: its account {account} has no Cyclr account"));
                continue;
            };
            match in_cyclr
                .remove(&(id.clone(), name.clone()))
                .unwrap_or_default()
                .as_slice()
            {
                [one] => {
                    if resource.data["status"]["cycleID"].as_str() != Some(one.id.as_str()) {
                        lost.push(format!(
                            "CyclrCycle {name}: status.cycleID {} is not its Cyclr cycle {}",
                            resource.data["status"]["cycleID"], one.id
                        ));
                    }
                    if one.status != CycleStatus::Active {
                        lost.push(format!(
                            "CyclrCycle {name}: Cyclr shows cycle {} {}",
                            one.id, one.status
                        ));
                    }
                }
                [] => lost.push(format!("CyclrCycle {name}: no cycle named so in {id}")),
                many => lost.push(format!(
                    "CyclrCycle {name}: its template installed {} times into {id} (cycles {})",
                    many.len(),
                    many.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
            if !cluster::is_ready(resource) {
                lost.push(format!("CyclrCycle {name}: not Ready ({})", ready_condition(resource)));
            }
        }
        for ((id, name), strays) in in_cyclr {
            lost.push(format!(
                "{} cycle(s) {name:?} in {id} that no resource holds",
                strays.len()
            ));
        }
        lost
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn account_name(i: usize) -> String {
    format!("acct-{i:05}")
}

fn install_name(i: usize) -> String {
    format!("inst-{i:05}")
}

fn cycle_name(i: usize) -> String {
    format!("cyc-{i:05}")
}

/// `Ready=False Reason: message`, for saying why a resource is stuck.
fn ready_condition(object: &DynamicObject) -> String {
    object.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map_or_else(
            || "no Ready condition".to_owned(),
            |c| {
                format!(
                    "Ready={} {}: {}",
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or("?"),
                    c["message"].as_str().unwrap_or("")
                )
            },
        )
}

/// Every account, install and cycle of a namespace with its status emptied through the
/// status subresource, as a restore from an etcd backup without status (or a careless status
/// edit) leaves them. Returns how many of each.
pub(crate) async fn wipe_statuses(client: &Client, namespace: &str) -> anyhow::Result<[usize; 3]> {
    let mut counts = [0; 3];
    for (api, count) in [
        cluster::accounts(client, namespace),
        cluster::installs(client, namespace),
        cluster::cycles(client, namespace),
    ]
    .iter()
    .zip(&mut counts)
    {
        let objects = api.list(&ListParams::default()).await?.items;
        wipe(api, &objects).await?;
        *count = objects.len();
    }
    Ok(counts)
}

async fn wipe(api: &Api<DynamicObject>, objects: &[DynamicObject]) -> anyhow::Result<()> {
    let patch = kube::api::Patch::Merge(json!({"status": null}));
    for object in objects {
        let name = object.metadata.name.clone().unwrap_or_default();
        let wiped = api
            .patch_status(&name, &kube::api::PatchParams::default(), &patch)
            .await
            .with_context(|| format!("wiping the status of {name}"))?;
        anyhow::ensure!(
            wiped.data.get("status").is_none_or(|s| s.is_null() || s == &json!({})),
            "the status of {name} is still {}",
            wiped.data["status"]
        );
    }
    Ok(())
}
