//! CyclrCycle: installs a template into its account at most once (the pending-write
//! protocol: an install is not idempotent), sets the cycle's variables and keeps it Active or
//! Paused as the spec says. Observe → decide (pure) → act; the driver does the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use driver::{Applied, Cleanup, Driver, Facts, Intent, Kind, Packed, Plan, Reconciler, Watched, jittered};
use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::partners::{PartnerRuntime, Woken};
use super::{PartnerWake, Services, namespaced_api, users_of_secret};
use crate::reason::{Failure, Health, Reason};
use crate::resources::{
    CYCLE_FINALIZER, CycleConnectorStatus, CycleState, CyclrAccount, CyclrApi, CyclrConnectorInstall, CyclrCycle,
    CyclrCycleStatus, DeletionPolicy, ManagementPolicy, READY, annotations, condition,
};
use cyclr::CyclrError;
use cyclr::types::{ActivateCycle, Cycle, CycleStatus, CyclrDate, Deleted, Prerequisite, Template};

/// How long a cycle list of an account is shared by the reconciles of its cycles: those woken
/// together (a partner's resync, a rollout) make one list call.
const SHARED_LIST: TimeDelta = TimeDelta::seconds(10);

/// How long an activation or deactivation Cyclr answered is waited for (not sent again) while
/// Cyclr does not show it yet, and how often it is looked for meanwhile.
const CONFIRM: TimeDelta = TimeDelta::minutes(2);
const CONFIRM_RECHECK: Duration = Duration::from_secs(5);

/// A Ready cycle's own resync, in `resyncInterval`s (less up to 10 %): later than its
/// partner's wake (about one interval apart), so it fires only when that wake did not come.
const OWN_RESYNC: f64 = 1.2;

/// The oldest list a Ready cycle shares, in `resyncInterval`s: older than its own resync, so
/// that timer (or any wake between two of the partner's) takes the list of the partner's last
/// wake, which may come late (its drift check runs before it); the next own resync lists
/// when no wake came at all.
const SHARED_LIST_AGE: f64 = 1.5;

/// The cycle kind's own state.
pub struct CycleKindState {
    services: Arc<Services>,
    /// The watched partners, to tell "not checked yet" from "does not exist".
    partners: super::partner::Partners,
    /// The watched accounts: a cycle reads its account from here (no GET).
    accounts: Store<Packed<CyclrAccount>>,
    /// The watched connector installs: a template is installed after those of its account.
    installs: Store<Packed<CyclrConnectorInstall>>,
    /// Each account's cycle list, shared by its cycles.
    lists: CycleLists,
    /// The state changes Cyclr answered and does not show yet, by the resource's uid.
    sent: Mutex<HashMap<String, Sent>>,
    /// The kind itself, to look at a cycle again at once after a write that leaves more to do
    /// (an install is followed by its activation).
    kind: OnceLock<Weak<Kind<CyclrCycle>>>,
}

impl CycleKindState {
    /// The state of the cycle kind, reading partners, accounts and installs from their watches.
    pub fn new(
        services: Arc<Services>,
        partners: super::partner::Partners,
        accounts: Store<Packed<CyclrAccount>>,
        installs: Store<Packed<CyclrConnectorInstall>>,
    ) -> Self {
        CycleKindState {
            services,
            partners,
            accounts,
            installs,
            lists: CycleLists::default(),
            sent: Mutex::default(),
            kind: OnceLock::new(),
        }
    }

    /// The account `namespace/name` from the watch.
    fn account(&self, namespace: &str, name: &str) -> Option<CyclrAccount> {
        let packed = self.accounts.get(&ObjectRef::new(name).within(namespace))?;
        packed.unpack().ok()
    }

    /// Remembers that Cyclr answered a change of `cycle` to `to` now.
    fn sent(&self, cycle: &CyclrCycle, to: CycleState) {
        let sent = Sent { to, at: Utc::now() };
        self.sent.lock().expect("lock").insert(uid(cycle), sent);
    }

    /// The change of `cycle` Cyclr answered and `found` does not show yet; one it shows is
    /// forgotten.
    fn unconfirmed(&self, cycle: &CyclrCycle, found: Option<&Cycle>) -> Option<Sent> {
        let mut sent = self.sent.lock().expect("lock");
        let uid = uid(cycle);
        let pending = *sent.get(&uid)?;
        if found.is_none_or(|c| shows(c, pending.to)) {
            sent.remove(&uid);
            return None;
        }
        Some(pending)
    }

    /// Reconciles `cycle` again soon.
    fn wake(&self, cycle: &CyclrCycle) {
        if let Some(kind) = self.kind.get().and_then(Weak::upgrade) {
            kind.wake(cycle.meta());
        }
    }
}

/// The accounts' cycle lists (`GET /v1.0/cycles`, every page), each shared by the reconciles
/// of that account's cycles and dropped when one of them writes.
#[derive(Default)]
struct CycleLists {
    lists: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Listed>>>>>,
    /// When the partner's resync last woke each account's cycles, by account id.
    resynced: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// One account's cycles, and when the list was asked for.
#[derive(Clone)]
struct Listed {
    taken: DateTime<Utc>,
    cycles: Arc<Vec<Cycle>>,
}

impl CycleLists {
    /// The account's cycles, from a list asked for at or after `after` (one call shared by
    /// every caller waiting for it).
    async fn since(
        &self,
        runtime: &PartnerRuntime,
        account_id: &str,
        after: DateTime<Utc>,
    ) -> Result<Arc<Vec<Cycle>>, CyclrError> {
        let slot = self
            .lists
            .lock()
            .expect("lock")
            .entry(account_id.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(listed) = slot.as_ref().filter(|l| l.taken >= after) {
            return Ok(listed.cycles.clone());
        }
        let taken = Utc::now();
        let cycles = Arc::new(runtime.client.list_cycles_v1(account_id).await?);
        *slot = Some(Listed {
            taken,
            cycles: cycles.clone(),
        });
        Ok(cycles)
    }

    /// Drops the account's list: a write changed what it shows.
    fn forget(&self, account_id: &str) {
        self.lists.lock().expect("lock").remove(account_id);
    }

    /// Notes that the partner's resync woke the account's cycles at `at`.
    fn resynced(&self, account_id: &str, at: DateTime<Utc>) {
        self.resynced.lock().expect("lock").insert(account_id.to_string(), at);
    }

    /// The oldest list a Ready cycle of the account decides from: one taken since the
    /// partner's resync last woke it, and within [`SHARED_LIST_AGE`] `interval`s. Its
    /// siblings' timers and that wake, each reconciling it at its own moment (a wake of many
    /// accounts takes a while at a low rate limit), then share one list per account per resync.
    fn settled_after(&self, account_id: &str, now: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
        let floor = now - TimeDelta::from_std(interval.mul_f64(SHARED_LIST_AGE)).unwrap_or(SHARED_LIST);
        let woken = self.resynced.lock().expect("lock").get(account_id).copied();
        woken.map_or(floor, |at| at.max(floor))
    }
}

fn uid(cycle: &CyclrCycle) -> String {
    cycle.metadata.uid.clone().unwrap_or_default()
}

/// Whether Cyclr's `cycle` shows the state `to`: `Active`, or any other status for `Paused`
/// (`Stopped` is not running either).
fn shows(cycle: &Cycle, to: CycleState) -> bool {
    (cycle.status == CycleStatus::Active) == (to == CycleState::Active)
}

/// An activation (`to: Active`) or deactivation Cyclr answered at `at`, not shown yet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    /// The state asked for.
    pub to: CycleState,
    /// When Cyclr answered.
    pub at: DateTime<Utc>,
}

/// The cycle controller. Woken by its own watch, by its account's changes, by its partner's
/// resync (drift and the recheck of a cycle waiting on Cyclr) and by its variables' Secrets.
pub fn controller(
    driver: Arc<Driver>,
    state: CycleKindState,
    secret_changes: UnboundedReceiver<Secret>,
    account_changes: impl Stream<Item = ObjectRef<CyclrAccount>> + Send + 'static,
    partner_wakes: UnboundedReceiver<PartnerWake>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = driver::ReconcileResult<CyclrCycle>> {
    let api = namespaced_api::<Watched<CyclrCycle>>(driver.client.clone(), &state.services.config);
    let watch = state.services.config.served();
    let kind = Kind::<CyclrCycle>::new(driver, state, watch);
    let _ = kind.state.kind.set(Arc::downgrade(&kind));
    let controller = driver::controller_for(&kind, api, |_| {});
    let cycles = controller.store();
    let users = users_of_secret(controller.store(), |c: &CyclrCycle, s: &Secret| {
        c.namespace() == s.namespace() && c.secret_names().contains(&s.name_any().as_str())
    });
    // Both wakes go through the kind's resync queue. (Streams that never yield, polled by the
    // controller for as long as it runs.)
    let waker = kind.clone();
    let by_account = cycles.clone();
    let accounts = account_changes.filter_map(move |account| {
        for cycle in by_account.state() {
            if cycle.depends_on(account.namespace.as_deref(), &account.name) {
                waker.wake(cycle.meta());
            }
        }
        futures::future::ready(None)
    });
    let waker = kind.clone();
    let partners = partner_wakes.filter_map(move |PartnerWake { partner, woken }| {
        if matches!(woken, Woken::UsageReads(_)) {
            return futures::future::ready(None);
        }
        let now = Utc::now();
        for cycle in cycles.state() {
            let Ok(c) = cycle.unpack() else { continue };
            let namespace = c.namespace().unwrap_or_default();
            let Some(account) = waker.state.account(&namespace, &c.spec.account_ref.name) else {
                continue;
            };
            if account.spec.partner_ref.name == partner {
                if let Some(id) = account.status.as_ref().and_then(|s| s.account_id.as_deref()) {
                    waker.state.lists.resynced(id, now);
                }
                waker.wake(cycle.meta());
            }
        }
        futures::future::ready(None)
    });
    controller
        .reconcile_on(accounts)
        .reconcile_on(partners)
        .watches_stream(secret_changes.map(Ok), users)
        .graceful_shutdown_on(shutdown)
        .run(driver::reconcile, driver::error_policy, kind)
}

driver::managed_status!(CyclrCycleStatus, pending = pending_install);

/// The account (and its partner) as a cycle needs it.
pub enum AccountView {
    /// Not usable yet: what to report.
    Waiting(Health),
    /// Ready, on a `V1` partner, with its Cyclr id and its partner's runtime.
    Ready {
        /// The account's Cyclr id.
        account_id: String,
        /// Its partner's client and state.
        runtime: Arc<PartnerRuntime>,
    },
}

/// The variables the spec sets, with their values read.
pub enum VariablesView {
    /// Each variable's system name and value, in spec order, and their keyed digest.
    Ready(Vec<(String, SecretString)>, String),
    /// A value cannot be read (a Secret or key missing): the reason and message.
    Missing(Reason, String),
}

/// The template to install, when looked up (only before the install).
pub enum TemplateView {
    /// Not looked up: the cycle is installed, or its account is not ready.
    NotLooked,
    /// The one template the reference names.
    Found(Template),
    /// None (or several): why, for the condition.
    Missing(String),
}

/// Everything `decide` looks at (the clock and the pending install are in [`Facts`]).
pub struct Observed {
    /// The cycle's account, as it can be used.
    pub account: AccountView,
    /// The spec's variables with their values.
    pub variables: VariablesView,
    /// The template, before the install.
    pub template: TemplateView,
    /// The account's CyclrConnectorInstalls of a connector the template uses that are under
    /// way (not installed, not stalled), as `name (connector)`, before the install.
    pub installs_under_way: Vec<String>,
    /// The account's cycles (a shared list), when the account is ready.
    pub cycles: Option<Arc<Vec<Cycle>>>,
    /// What stops the cycle from being activated, when asked (before an activation).
    pub prerequisites: Option<Vec<Prerequisite>>,
    /// The state change Cyclr answered and its list does not show yet (this process's memory).
    pub sent: Option<Sent>,
}

/// One external write of a cycle.
#[derive(Debug)]
pub enum Write {
    /// Install the template (id) as a new cycle named after the resource.
    Install(String),
    /// Change the installed cycle, in this order: deactivate it, set these variables,
    /// activate it with this schedule.
    Apply {
        /// Deactivate first.
        deactivate: bool,
        /// The variables to set, and the digest to record once they are.
        variables: Option<(Vec<(String, SecretString)>, String)>,
        /// Activate last, with this schedule.
        activate: Option<ActivateCycle>,
        /// Whether the change puts back what was changed in Cyclr (a `DriftCorrected` Event).
        drift: bool,
    },
}

impl Reconciler for CyclrCycle {
    type State = CycleKindState;
    type Status = CyclrCycleStatus;
    type Reason = Reason;
    type Failure = Failure;
    type Observed = Observed;
    type Refresh = ();
    type Write = Write;

    fn status(&self) -> Option<&CyclrCycleStatus> {
        self.status.as_ref()
    }

    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, self.metadata.namespace.as_deref().unwrap_or_default())
    }

    async fn observe(
        &self,
        state: &CycleKindState,
        facts: &Facts,
        prerequisites: Option<()>,
    ) -> Result<Observed, Failure> {
        let account = observe_account(self, state);
        let variables = observe_variables(self, state, &account).await?;
        let mut observed = Observed {
            account,
            variables,
            template: TemplateView::NotLooked,
            installs_under_way: Vec::new(),
            cycles: None,
            prerequisites: None,
            sent: None,
        };
        let AccountView::Ready { account_id, runtime } = &observed.account else {
            return Ok(observed);
        };
        // A list asked for after any install this resource may have made ended; a cycle with
        // nothing to do looks at its account's list of this resync, one with work at a recent one.
        let recent = if settled(self) {
            state
                .lists
                .settled_after(account_id, facts.now, runtime.resync_interval)
        } else {
            facts.now - SHARED_LIST
        };
        let after = recent.max(facts.pending.judge_after().unwrap_or(recent));
        observed.cycles = Some(
            state
                .lists
                .since(runtime, account_id, after)
                .await
                .map_err(Failure::cyclr("listing the account's cycles"))?,
        );
        if let (Some(id), Some(cycles)) = (self.cycle_id(), &observed.cycles) {
            observed.sent = state.unconfirmed(self, cycles.iter().find(|c| c.id == id));
        }
        match self.cycle_id() {
            None if self.observes_only() => {}
            None => {
                observed.template = observe_template(self, runtime).await?;
                if let TemplateView::Found(template) = &observed.template {
                    observed.installs_under_way = installs_under_way(self, state, template);
                }
            }
            Some(id) if prerequisites.is_some() => {
                observed.prerequisites = Some(
                    runtime
                        .client
                        .cycle_prerequisites_v1(account_id, id)
                        .await
                        .map_err(Failure::cyclr("reading the cycle's prerequisites"))?,
                );
            }
            Some(_) => {}
        }
        Ok(observed)
    }

    fn decide(&self, observed: &Observed, facts: &Facts) -> Plan<Self> {
        decide(self, observed, facts)
    }

    async fn act(&self, state: &CycleKindState, observed: &Observed, write: Write) -> Result<Applied<Self>, Failure> {
        let AccountView::Ready { account_id, runtime } = &observed.account else {
            unreachable!("cycles are written only for a ready account")
        };
        let applied = match write {
            Write::Install(template_id) => install(self, runtime, account_id, &template_id).await,
            Write::Apply {
                deactivate,
                variables,
                activate,
                drift,
            } => {
                let change = Change {
                    deactivate,
                    variables,
                    activate,
                    drift,
                };
                let mut listed = observed.cycles.iter().flat_map(|c| c.iter());
                let found = listed.find(|c| Some(c.id.as_str()) == self.cycle_id());
                apply(self, state, runtime, (account_id.as_str(), found), change).await
            }
        };
        state.lists.forget(account_id);
        let applied = applied?;
        if applied.health.state != driver::State::Ready && !applied.health.is_stalled() {
            state.wake(self);
        }
        Ok(applied)
    }

    /// Only once Cyclr shows the spec's state (Ready): an activation it answered is not yet
    /// an Active cycle.
    fn spec_applied(&self, health: &Health) -> bool {
        health.state == driver::State::Ready
    }

    fn forget(state: &CycleKindState, meta: &ObjectMeta) {
        state
            .sent
            .lock()
            .expect("lock")
            .remove(meta.uid.as_deref().unwrap_or_default());
    }

    /// A safety net behind the partner's resync, which wakes every cycle about once an
    /// interval: firing after that wake, a cycle's own timer finds the list it took.
    fn resync(&self, _: &CycleKindState, observed: &Observed) -> Option<Duration> {
        match &observed.account {
            AccountView::Ready { runtime, .. } => Some(jittered(runtime.resync_interval.mul_f64(OWN_RESYNC))),
            AccountView::Waiting(_) => None,
        }
    }

    fn identity(status: &CyclrCycleStatus) -> Option<(&'static str, String)> {
        status.cycle_id.clone().map(|id| (annotations::CYCLE_ID, id))
    }

    fn depends_on(&self) -> Option<(Option<&str>, &str)> {
        Some((self.metadata.namespace.as_deref(), &self.spec.account_ref.name))
    }

    const FINALIZER: Option<&'static str> = Some(CYCLE_FINALIZER);

    /// Only a resource whose deletion deletes the cycle, once its account can be used.
    fn needs_finalizer(&self, observed: &Observed) -> bool {
        self.deletes() && matches!(observed.account, AccountView::Ready { .. })
    }

    /// `DELETE /v1.0/cycles/{id}` (404 counts as done), then waits while Cyclr shows the
    /// cycle `DeleteScheduled`; nothing under `deletionPolicy: Orphan` or `ObserveOnly`.
    async fn cleanup(&self, state: &CycleKindState) -> Result<Cleanup<Reason>, Failure> {
        let (true, Some(id)) = (self.deletes(), self.cycle_id()) else {
            return Ok(Cleanup::Done(None));
        };
        let (account_id, runtime) = match observe_account(self, state) {
            AccountView::Ready { account_id, runtime } => (account_id, runtime),
            AccountView::Waiting(health) => {
                let deleting = super::Deleting {
                    what: format!("Cyclr cycle {id}"),
                    kept: "the cycle",
                    objects: "cycles",
                    resource: format!("cyclrcycle {}", self.name_any()),
                };
                return Ok(deleting.blocked(&health.message));
            }
        };
        let client = &runtime.client;
        let current = client.get_cycle_v1(&account_id, id).await;
        let gone = |how: &str| {
            Ok(Cleanup::Done(Some((
                Reason::Deleted,
                format!("Cyclr cycle {id} {how} (deletionPolicy Delete)"),
            ))))
        };
        let deleting = || {
            Ok(Cleanup::Blocked(Health::reconciling(
                Reason::Deleting,
                format!("Cyclr shows cycle {id} DeleteScheduled; the resource goes once it is gone"),
            )))
        };
        match current {
            Err(CyclrError::NotFound { .. }) => return gone("was already gone"),
            Err(error) => return Err(Failure::cyclr("reading the cycle before its delete")(error)),
            Ok(cycle) if cycle.status == CycleStatus::DeleteScheduled => return deleting(),
            Ok(_) => {}
        }
        let deleted = client
            .delete_cycle_v1(&account_id, id)
            .await
            .map_err(Failure::cyclr("the cycle delete"))?;
        state.lists.forget(&account_id);
        match (deleted, client.get_cycle_v1(&account_id, id).await) {
            (Deleted::AlreadyGone, _) => gone("was already gone"),
            (_, Err(CyclrError::NotFound { .. })) => gone("was deleted with its resource"),
            (_, Ok(cycle)) if cycle.status == CycleStatus::DeleteScheduled => deleting(),
            (_, Ok(_)) => Ok(Cleanup::Blocked(Health::reconciling(
                Reason::Deleting,
                format!("Cyclr still shows cycle {id} after its delete; asking again"),
            ))),
            (_, Err(error)) => Err(Failure::cyclr("reading the cycle after its delete")(error)),
        }
    }
}

impl CyclrCycle {
    /// Whether the operator only reads and reports this cycle (`ObserveOnly`).
    fn observes_only(&self) -> bool {
        self.spec.management_policy == ManagementPolicy::ObserveOnly
    }

    /// Whether deleting the resource deletes the cycle: `deletionPolicy: Delete`, and the
    /// operator manages it (ObserveOnly never deletes).
    fn deletes(&self) -> bool {
        self.spec.deletion_policy == DeletionPolicy::Delete && !self.observes_only()
    }
}

/// What an [`Write::Apply`] changes.
struct Change {
    deactivate: bool,
    variables: Option<(Vec<(String, SecretString)>, String)>,
    activate: Option<ActivateCycle>,
    drift: bool,
}

/// Installs the template: the new cycle, recorded at once; its activation is decided next.
async fn install(
    cycle: &CyclrCycle,
    runtime: &PartnerRuntime,
    account_id: &str,
    template_id: &str,
) -> Result<Applied<CyclrCycle>, Failure> {
    let previous = cycle.status.clone().unwrap_or_default();
    let made = match runtime
        .client
        .install_template_v1(account_id, template_id, Some(&cycle.name_any()))
        .await
    {
        Err(CyclrError::NotFound { message }) => {
            return Ok(Applied {
                health: Health::stalled(
                    Reason::TemplateNotFound,
                    format!("spec.templateRef: Cyclr has no template {template_id}: {message}"),
                ),
                status: previous,
                event: None,
                made: None,
            });
        }
        other => other.map_err(Failure::cyclr("the template install"))?,
    };
    Ok(Applied {
        health: Health::reconciling(
            Reason::Installing,
            "the template is installed; activating the cycle next",
        ),
        status: CyclrCycleStatus {
            installed_at: Some(Time(Timestamp::now())),
            ..recorded(previous, account_id, &made)
        },
        event: Some((
            Reason::Installed,
            format!(
                "installed template {template_id} into account {account_id} as cycle {}",
                made.id
            ),
        )),
        made: Some(made.id),
    })
}

/// Deactivates, sets variables and activates, in that order, as `change` says: one Event.
/// Cyclr's status is recorded as listed, not as asked: the next look (at once) confirms a
/// state change, and a change Cyclr answered is remembered, not sent again while it waits.
async fn apply(
    cycle: &CyclrCycle,
    state: &CycleKindState,
    runtime: &PartnerRuntime,
    (account_id, listed): (&str, Option<&Cycle>),
    change: Change,
) -> Result<Applied<CyclrCycle>, Failure> {
    let previous = cycle.status.clone().unwrap_or_default();
    let mut status = match listed {
        Some(found) => recorded(previous, account_id, found),
        None => previous,
    };
    let id = cycle.cycle_id().unwrap_or_default().to_string();
    let client = &runtime.client;
    let mut done = Vec::new();
    // The state Cyclr was last asked for, to look for.
    let mut asked = None;
    let missing = |message: String| Applied {
        health: external_missing(&id, account_id, &message),
        status: CyclrCycleStatus {
            cyclr_status: None,
            ..cycle.status.clone().unwrap_or_default()
        },
        event: None,
        made: None,
    };
    if change.deactivate {
        match client
            .deactivate_cycle_v1(account_id, &id, cycle.spec.finish_queued_transactions)
            .await
        {
            Err(CyclrError::NotFound { message }) => return Ok(missing(message)),
            other => other.map_err(Failure::cyclr("the cycle deactivation"))?,
        }
        state.sent(cycle, CycleState::Paused);
        asked = Some(CycleState::Paused);
        done.push("deactivated".to_string());
    }
    if let Some((variables, digest)) = change.variables {
        for (name, value) in &variables {
            match client
                .set_cycle_variable_v1(account_id, &id, name, value.expose_secret())
                .await
            {
                Err(CyclrError::NotFound { message }) => return Ok(missing(message)),
                // Still Active in Cyclr (the deactivation not shown yet, or an activation
                // there meanwhile): not the user's error; looked at again.
                Err(CyclrError::Conflict { .. }) => {
                    return Ok(Applied {
                        health: Health::reconciling(
                            Reason::Updating,
                            "Cyclr still shows the cycle Active, so its variables cannot be set yet; they are set once it shows it Paused",
                        ),
                        status,
                        event: None,
                        made: None,
                    });
                }
                other => {
                    other.map_err(Failure::cyclr("setting a cycle variable"))?;
                }
            }
        }
        let names: Vec<&str> = variables.iter().map(|(n, _)| n.as_str()).collect();
        done.push(format!("set variables {}", names.join(", ")));
        status.variables_digest = Some(digest);
    }
    if let Some(schedule) = &change.activate {
        match client.activate_cycle_v1(account_id, &id, schedule).await {
            Err(CyclrError::NotFound { message }) => return Ok(missing(message)),
            other => other.map_err(Failure::cyclr("the cycle activation"))?,
        }
        if schedule.run_once == Some(true) {
            // It runs once and pauses itself.
            status.ran_once_generation = cycle.metadata.generation;
            status.cyclr_status = Some(CycleStatus::Paused.to_string());
            done.push("ran it once".to_string());
        } else {
            state.sent(cycle, CycleState::Active);
            asked = Some(CycleState::Active);
            status.activated_schedule = Some(cycle.spec.schedule.clone().unwrap_or_default());
            done.push(match schedule.interval {
                Some(interval) => format!("activated it (every {interval} minutes)"),
                None => "activated it".to_string(),
            });
        }
    }
    let health = match asked {
        Some(to) => Health::reconciling(
            Reason::Updating,
            format!(
                "Cyclr answered ({}); looking for it to show the cycle {to:?}",
                done.join(", ")
            ),
        ),
        None => in_sync(cycle, &status).unwrap_or_else(|| {
            Health::reconciling(Reason::Updating, "the cycle's variables are set; activating it next")
        }),
    };
    // Bringing a new cycle up (its first variables and activation) is said by status alone,
    // as an account's create is: Events are for changes to a cycle that was in place.
    let was_ready = condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
    let event = (change.drift || change.deactivate || was_ready).then(|| {
        let reason = if change.drift {
            Reason::DriftCorrected
        } else {
            Reason::Updated
        };
        (reason, format!("cycle {id}: {}", done.join(", ")))
    });
    Ok(Applied {
        health,
        status,
        event,
        made: None,
    })
}

/// Ready when Cyclr's status (as `status` records it) is what the spec asks for.
fn in_sync(cycle: &CyclrCycle, status: &CyclrCycleStatus) -> Option<Health> {
    let cyclr = status.cyclr_status.as_deref().map(CycleStatus::from);
    match (cycle.spec.state, cyclr) {
        (CycleState::Active, Some(CycleStatus::Active)) => Some(Health::ready(Reason::Synced, "the cycle is Active")),
        (CycleState::Active, Some(_)) if ran_once(cycle, status) => Some(Health::ready(
            Reason::Synced,
            "the cycle ran once (schedule.runOnce) and Cyclr paused it",
        )),
        (CycleState::Paused, Some(CycleStatus::Paused)) => Some(Health::ready(Reason::Synced, "the cycle is Paused")),
        _ => None,
    }
}

/// Whether the cycle is installed and Ready for its current generation, no install open:
/// a reconcile of it only looks.
fn settled(cycle: &CyclrCycle) -> bool {
    cycle.cycle_id().is_some() && driver::is_settled(cycle)
}

/// Whether a run-once activation was sent for this generation.
fn ran_once(cycle: &CyclrCycle, status: &CyclrCycleStatus) -> bool {
    run_once(cycle) && status.ran_once_generation.is_some() && status.ran_once_generation == cycle.metadata.generation
}

fn run_once(cycle: &CyclrCycle) -> bool {
    cycle.spec.schedule.as_ref().and_then(|s| s.run_once) == Some(true)
}

/// `status` with what Cyclr shows of the cycle.
fn recorded(status: CyclrCycleStatus, account_id: &str, cycle: &Cycle) -> CyclrCycleStatus {
    CyclrCycleStatus {
        account_id: Some(account_id.to_string()),
        cycle_id: Some(cycle.id.clone()),
        template_id: cycle.template_id.clone().or(status.template_id),
        cyclr_status: Some(cycle.status.to_string()),
        connectors: cycle
            .connectors
            .iter()
            .map(|c| CycleConnectorStatus {
                name: c.name.clone(),
                version: c.version.clone(),
                account_connector_id: c.account_connector_id.clone(),
                authenticated: c.authenticated,
            })
            .collect(),
        tasks_used: Some(cycle.tasks_used),
        error_count: Some(cycle.error_count),
        warning_count: Some(cycle.warning_count),
        last_successful_run: cycle.last_successful_run_date.as_ref().map(CyclrDate::to_rfc3339),
        pending_install: None,
        ..status
    }
}

fn external_missing(id: &str, account_id: &str, why: &str) -> Health {
    Health::stalled(
        Reason::ExternalCycleMissing,
        format!(
            "this resource's cycle {id} is gone from account {account_id} ({why}); it is never installed again: delete and re-create this resource to install the template anew"
        ),
    )
}

/// The schedule to activate with, from the spec.
fn schedule(cycle: &CyclrCycle) -> ActivateCycle {
    let Some(spec) = &cycle.spec.schedule else {
        return ActivateCycle::default();
    };
    ActivateCycle {
        start_time: spec.start_time.as_deref().and_then(CyclrDate::parse),
        interval: spec.interval,
        run_once: spec.run_once,
    }
}

/// The one decision of a reconcile (pure: the time and the pending install are in `facts`).
pub fn decide(cycle: &CyclrCycle, obs: &Observed, facts: &Facts) -> Plan<CyclrCycle> {
    let previous = cycle.status.clone().unwrap_or_default();
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    let (account_id, runtime) = match &obs.account {
        AccountView::Waiting(health) => return report(health.clone()),
        AccountView::Ready { account_id, runtime } => (account_id.clone(), runtime),
    };
    let Some(cycles) = &obs.cycles else {
        unreachable!("the cycles of a ready account are listed")
    };
    if cycle.observes_only() {
        return decide_observed(cycle, &account_id, cycles);
    }
    let (values, digest) = match &obs.variables {
        VariablesView::Missing(reason, message) => return report(Health::reconciling(*reason, message.clone())),
        VariablesView::Ready(values, digest) => (values, digest),
    };
    let Some(id) = cycle.cycle_id() else {
        return decide_install(cycle, obs, facts, &account_id, runtime, cycles);
    };
    let Some(found) = cycles.iter().find(|c| c.id == id) else {
        return report(external_missing(id, &account_id, "not in its cycle list"));
    };
    let mut status = recorded(previous.clone(), &account_id, found);
    // Cyclr shows neither a cycle's schedule nor its variables. An Active cycle whose status
    // does not say what was sent (written back by a restore, or by an operator before it
    // recorded them) is taken to run the spec's: recorded, not sent again, so that a restore
    // never pauses and restarts running cycles. A later spec change is sent as usual.
    if found.status == CycleStatus::Active {
        if status.activated_schedule.is_none() && !run_once(cycle) {
            status.activated_schedule = Some(cycle.spec.schedule.clone().unwrap_or_default());
        }
        if status.variables_digest.is_none() && !values.is_empty() {
            status.variables_digest = Some(digest.clone());
        }
    }
    let status = status;
    let with = |health: Health| Plan::Report {
        health,
        status: status.clone(),
        event: None,
    };
    if found.status == CycleStatus::DeleteScheduled {
        return with(external_missing(id, &account_id, "Cyclr shows it DeleteScheduled"));
    }
    let active = found.status == CycleStatus::Active;
    let wants_active = cycle.spec.state == CycleState::Active;
    // The spec was applied before and Cyclr moved away from it: someone changed it there.
    let drift = previous.observed_generation == cycle.metadata.generation && in_sync(cycle, &previous).is_some();
    let write =
        |deactivate: bool, variables: Option<(Vec<(String, SecretString)>, String)>, activate: bool| Plan::Write {
            write: Write::Apply {
                deactivate,
                variables,
                activate: activate.then(|| schedule(cycle)),
                drift,
            },
            pending: None,
            status: status.clone(),
            event: None,
        };
    // A change Cyclr answered and does not show yet is looked for, not sent again (for a while).
    let awaited = |to: CycleState| obs.sent.is_some_and(|s| s.to == to && facts.now - s.at < CONFIRM);
    let variables_changed = !values.is_empty() && status.variables_digest.as_deref() != Some(digest.as_str());
    if variables_changed {
        if active && awaited(CycleState::Paused) {
            return Plan::Wait(jittered(CONFIRM_RECHECK));
        }
        // Cyclr refuses edits to an Active cycle (409): deactivate, set, activate again.
        let values = values.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        return write(active, Some((values, digest.clone())), active && wants_active);
    }
    // Cyclr does not show a cycle's schedule: one changed since the last activation is sent
    // by deactivating and activating again.
    let rescheduled =
        !run_once(cycle) && status.activated_schedule != Some(cycle.spec.schedule.clone().unwrap_or_default());
    match (wants_active, active) {
        (true, true) if rescheduled && !awaited(CycleState::Active) => return write(true, None, true),
        (false, true) if awaited(CycleState::Paused) => return Plan::Wait(jittered(CONFIRM_RECHECK)),
        (false, true) => return write(true, None, false),
        (true, false) if awaited(CycleState::Active) && !ran_once(cycle, &status) => {
            return Plan::Wait(jittered(CONFIRM_RECHECK));
        }
        (true, false) if !ran_once(cycle, &status) => {
            let Some(prerequisites) = &obs.prerequisites else {
                return Plan::Refresh(());
            };
            if let Some(health) = unmet(found, prerequisites) {
                return with(health);
            }
            return write(false, None, true);
        }
        _ => {}
    }
    match in_sync(cycle, &status) {
        Some(health) => with(health),
        // Stopped, or another status Cyclr writes, on a cycle that is to be Paused.
        None => with(Health::reconciling(
            Reason::Updating,
            format!("Cyclr shows the cycle {}", found.status),
        )),
    }
}

/// `ObserveOnly` (pure): what Cyclr shows is reported, a state other than the spec's is said
/// (in the Ready message, and in an `Observed` Event when Cyclr's status changes to it), and
/// nothing is written to Cyclr.
fn decide_observed(cycle: &CyclrCycle, account_id: &str, cycles: &[Cycle]) -> Plan<CyclrCycle> {
    let previous = cycle.status.clone().unwrap_or_default();
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    let Some(id) = cycle.cycle_id() else {
        return report(Health::stalled(
            Reason::InvalidSpec,
            "spec.managementPolicy: ObserveOnly needs a cycle this resource installed (status.cycleID or the cyclr.com/cycle-id annotation), and it has none; the operator installs nothing it only observes. Set managementPolicy Full to install the template",
        ));
    };
    let found = match cycles.iter().find(|c| c.id == id) {
        Some(found) if found.status != CycleStatus::DeleteScheduled => found,
        Some(_) => return report(external_missing(id, account_id, "Cyclr shows it DeleteScheduled")),
        None => return report(external_missing(id, account_id, "not in its cycle list")),
    };
    let status = recorded(previous.clone(), account_id, found);
    let (message, event) = if shows(found, cycle.spec.state) {
        (format!("observed; Cyclr shows the cycle {}", found.status), None)
    } else {
        let differs = format!(
            "observed; Cyclr shows the cycle {}, the spec says {:?} (ObserveOnly: not corrected)",
            found.status, cycle.spec.state
        );
        let changed = previous.cyclr_status != status.cyclr_status;
        let event = changed.then(|| (Reason::Observed, format!("cycle {id}: {differs}")));
        (differs, event)
    };
    Plan::Report {
        health: Health::ready(Reason::Observed, message),
        status,
        event,
    }
}

/// What stops the cycle's activation, as a condition: unauthenticated connectors first
/// (each named, with its account connector id and how to authenticate it), then the rest in
/// Cyclr's words.
fn unmet(cycle: &Cycle, prerequisites: &[Prerequisite]) -> Option<Health> {
    let (auth, other): (Vec<&Prerequisite>, Vec<&Prerequisite>) = prerequisites
        .iter()
        .partition(|p| p.reason_code == Prerequisite::CONNECTOR_NOT_AUTHENTICATED);
    if !auth.is_empty() {
        let named: Vec<String> = auth
            .iter()
            .map(|p| {
                let id = p.object_id.as_deref().unwrap_or_default();
                let name = cycle
                    .connectors
                    .iter()
                    .find(|c| c.account_connector_id.as_deref() == Some(id))
                    .map_or("a connector", |c| c.name.as_str());
                format!("{name} (account connector {id})")
            })
            .collect();
        return Some(Health::stalled(
            Reason::ConnectorNotAuthenticated,
            format!(
                "the cycle cannot be activated until these account connectors are authenticated: {}. Authenticate each with a CyclrConnectorInstall with its credentials, or for OAuth with the link `kubectl cyclr auth ACCOUNT ACCOUNT-CONNECTOR-ID` prints; this is checked again at the partner's resync",
                named.join(", ")
            ),
        ));
    }
    if other.is_empty() {
        return None;
    }
    let reasons: Vec<String> = other
        .iter()
        .map(|p| format!("{} (reason code {})", p.reason, p.reason_code))
        .collect();
    Some(Health::stalled(
        Reason::PrerequisitesNotMet,
        format!(
            "Cyclr will not activate the cycle: {}. Fix the cycle in Cyclr; this is checked again at the partner's resync",
            reasons.join("; ")
        ),
    ))
}

/// The CyclrConnectorInstalls of the cycle's account, of a connector `template` uses (by
/// name, and version when the template names one), that are under way: not installed yet and
/// not stalled. Installed after them, the template reuses their authenticated account
/// connectors; installed first, it would make unauthenticated ones of its own, and the cycle
/// would wait for a person (`ConnectorNotAuthenticated`).
fn installs_under_way(cycle: &CyclrCycle, state: &CycleKindState, template: &Template) -> Vec<String> {
    let namespace = cycle.namespace();
    let account = &cycle.spec.account_ref.name;
    state
        .installs
        .state()
        .iter()
        .filter(|packed| packed.depends_on(namespace.as_deref(), account))
        .filter_map(|packed| packed.unpack().ok())
        .filter(|install| {
            let status = install.status.as_ref();
            status.is_none_or(|s| s.installed_at.is_none())
                && status.is_none_or(|s| driver::conditions::stalled_reason(&s.conditions).is_none())
                && install.metadata.deletion_timestamp.is_none()
        })
        .filter(|install| {
            template.connectors.iter().any(|c| {
                c.name == install.spec.connector_name
                    && c.version.as_ref().is_none_or(|v| *v == install.spec.connector_version)
            })
        })
        .map(|install| format!("{} ({})", install.name_any(), install.spec.connector_name))
        .collect()
}

/// No cycle id yet: look for what an open install made, else install.
fn decide_install(
    cycle: &CyclrCycle,
    obs: &Observed,
    facts: &Facts,
    account_id: &str,
    runtime: &PartnerRuntime,
    cycles: &[Cycle],
) -> Plan<CyclrCycle> {
    let previous = cycle.status.clone().unwrap_or_default();
    let report = |health: Health| Plan::Report {
        health,
        status: previous.clone(),
        event: None,
    };
    let template = match &obs.template {
        TemplateView::Found(template) => template,
        TemplateView::Missing(why) => return report(Health::stalled(Reason::TemplateNotFound, why.clone())),
        TemplateView::NotLooked => unreachable!("the template of a cycle to install is looked up"),
    };
    let name = cycle.name_any();
    let pending = &facts.pending;
    let sent = pending.sent().unwrap_or(&template.id);
    let ours = |c: &&Cycle| c.template_id.as_deref() == Some(sent) && c.name == name;
    if pending.is_open() {
        let new: Vec<&Cycle> = cycles
            .iter()
            .filter(ours)
            .filter(|c| !pending.existed_before(&c.id))
            .collect();
        match new.as_slice() {
            [found] => {
                return Plan::Report {
                    health: Health::reconciling(
                        Reason::Installing,
                        "the template is installed; activating the cycle next",
                    ),
                    status: CyclrCycleStatus {
                        installed_at: Some(time(facts.now)),
                        ..recorded(previous.clone(), account_id, found)
                    },
                    event: Some((
                        Reason::Adopted,
                        format!(
                            "template {sent} was installed into account {account_id} as cycle {} by an earlier attempt whose response was lost",
                            found.id
                        ),
                    )),
                };
            }
            [_, _, ..] => {
                return report(Health::stalled(
                    Reason::InstallOutcomeUnknown,
                    format!(
                        "several new cycles of template {sent} are named {name:?} in account {account_id}; check Cyclr"
                    ),
                ));
            }
            [] => {
                if let Some(wait) = pending.wait_to_judge(facts.now) {
                    return Plan::Wait(wait);
                }
            }
        }
    }
    if !obs.installs_under_way.is_empty() {
        return report(Health::reconciling(
            Reason::ConnectorInstallPending,
            format!(
                "installing template {} once these CyclrConnectorInstalls of the account are installed, so its cycle uses their authenticated account connectors: {}",
                template.id,
                obs.installs_under_way.join(", ")
            ),
        ));
    }
    Plan::Write {
        write: Write::Install(template.id.clone()),
        pending: Some(Intent {
            sent: template.id.clone(),
            existing_ids: cycles.iter().filter(ours).map(|c| c.id.clone()).collect(),
            lasts: runtime.client.call_deadline(),
            reason: Reason::Installing,
            message: format!("installing template {}", template.id),
        }),
        status: previous,
        event: None,
    }
}

/// `at` as a Kubernetes timestamp.
fn time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_microsecond(at.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The cycle's account from the watch, and its partner: usable only on a ready `V1` partner
/// that admits the namespace.
fn observe_account(cycle: &CyclrCycle, state: &CycleKindState) -> AccountView {
    let namespace = cycle.namespace().unwrap_or_default();
    let name = &cycle.spec.account_ref.name;
    let account = state.account(&namespace, name);
    let (account_id, runtime) =
        match super::usable_account(&state.services, &state.partners, &namespace, name, account.as_ref()) {
            Ok(usable) => usable,
            Err((Reason::PartnerNotAllowed, message)) => {
                return AccountView::Waiting(Health::stalled(Reason::PartnerNotAllowed, message));
            }
            Err((reason, message)) => return AccountView::Waiting(Health::reconciling(reason, message)),
        };
    if runtime.dialect != CyclrApi::V1 {
        let partner = account.map(|a| a.spec.partner_ref.name).unwrap_or_default();
        return AccountView::Waiting(Health::stalled(
            Reason::InvalidSpec,
            format!(
                "spec.accountRef: cycles exist only in Cyclr's v1.0 API, and CyclrPartner {partner:?} uses the Partner API; set spec.cyclrAPI: V1 on it"
            ),
        ));
    }
    AccountView::Ready { account_id, runtime }
}

/// The spec's variables with their values (from labelled Secrets where asked), and their
/// digest under the partner's key (without a ready partner, no digest is needed yet).
async fn observe_variables(
    cycle: &CyclrCycle,
    state: &CycleKindState,
    account: &AccountView,
) -> Result<VariablesView, Failure> {
    let namespace = cycle.namespace().unwrap_or_default();
    let values = match state
        .services
        .secrets
        .resolve(&namespace, "spec.variables", &cycle.spec.variables)
        .await?
    {
        Ok(values) => values,
        Err((reason, message)) => return Ok(VariablesView::Missing(reason, message)),
    };
    let digest = match account {
        AccountView::Ready { runtime, .. } => {
            let fields: Vec<&str> = values
                .iter()
                .flat_map(|(n, v)| [n.as_str(), v.expose_secret()])
                .collect();
            runtime.credentials_digest.of_fields(&fields)
        }
        AccountView::Waiting(_) => String::new(),
    };
    Ok(VariablesView::Ready(values, digest))
}

/// The template the spec names: by id (`GET /v1.0/templates/{id}`) or by its one name in
/// the partner's list.
async fn observe_template(cycle: &CyclrCycle, runtime: &PartnerRuntime) -> Result<TemplateView, Failure> {
    let reference = &cycle.spec.template_ref;
    if let Some(id) = &reference.id {
        return match runtime.client.get_template_v1(id).await {
            Ok(template) => Ok(TemplateView::Found(template)),
            Err(CyclrError::NotFound { message }) => Ok(TemplateView::Missing(format!(
                "spec.templateRef.id: Cyclr has no template {id:?}: {message}"
            ))),
            Err(error) => Err(Failure::cyclr("reading the template")(error)),
        };
    }
    let name = reference.name.as_deref().unwrap_or_default();
    let templates = runtime
        .client
        .list_templates_v1()
        .await
        .map_err(Failure::cyclr("listing the partner's templates"))?;
    let mut named: Vec<Template> = templates.into_iter().filter(|t| t.name == name).collect();
    Ok(match named.len() {
        1 => TemplateView::Found(named.remove(0)),
        0 => TemplateView::Missing(format!(
            "spec.templateRef.name: the partner has no template named {name:?}"
        )),
        _ => TemplateView::Missing(format!(
            "spec.templateRef.name: {} templates are named {name:?} (ids {}); name one with spec.templateRef.id",
            named.len(),
            named.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(", ")
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PendingWrite;
    use cyclr::ClientConfig;
    use cyclr::types::CycleConnector;
    use driver::{Pending, State};

    fn cycle(spec: serde_json::Value) -> CyclrCycle {
        let mut spec = spec;
        spec["accountRef"] = serde_json::json!({"name": "acme"});
        spec["templateRef"] = serde_json::json!({"name": "Sync"});
        let mut c = CyclrCycle::new("sync", serde_json::from_value(spec).unwrap());
        c.metadata.namespace = Some("t".into());
        c.metadata.generation = Some(1);
        c
    }

    /// `c` installed as cycle `c1`, its status last showing `cyclr` for generation `seen`.
    fn installed(mut c: CyclrCycle, cyclr: &str, seen: i64) -> CyclrCycle {
        let mut status = CyclrCycleStatus {
            cycle_id: Some("c1".into()),
            cyclr_status: Some(cyclr.into()),
            observed_generation: Some(seen),
            ..Default::default()
        };
        status.variables_digest = Some(digest(&[]));
        status.activated_schedule = Some(c.spec.schedule.clone().unwrap_or_default());
        c.status = Some(status);
        c
    }

    fn digest(values: &[(&str, &str)]) -> String {
        let fields: Vec<&str> = values.iter().flat_map(|(n, v)| [*n, *v]).collect();
        crate::secrets::CredentialsDigest::new("s").of_fields(&fields)
    }

    fn listed(status: &str, authenticated: bool) -> Cycle {
        Cycle {
            id: "c1".into(),
            name: "sync".into(),
            description: None,
            template_id: Some("t1".into()),
            status: CycleStatus::from(status),
            connectors: vec![CycleConnector {
                id: "9".into(),
                account_connector_id: Some("42".into()),
                name: "Tickets".into(),
                version: Some("v1".into()),
                authenticated,
            }],
            tasks_used: 3,
            error_count: 0,
            warning_count: 0,
            created_on_utc: None,
            last_successful_run_date: None,
        }
    }

    fn observed(cycles: Vec<Cycle>, values: &[(&str, &str)]) -> Observed {
        let config = ClientConfig::new("http://127.0.0.1:9", "id", SecretString::from("s"));
        Observed {
            account: AccountView::Ready {
                account_id: "a1".into(),
                runtime: Arc::new(PartnerRuntime::for_tests(config)),
            },
            variables: VariablesView::Ready(
                values
                    .iter()
                    .map(|(n, v)| (n.to_string(), SecretString::from(v.to_string())))
                    .collect(),
                digest(values),
            ),
            template: TemplateView::Found(Template {
                id: "t1".into(),
                name: "Sync".into(),
                description: None,
                connectors: vec![],
                tags: vec![],
            }),
            installs_under_way: vec![],
            cycles: Some(Arc::new(cycles)),
            prerequisites: None,
            sent: None,
        }
    }

    fn decide_at(c: &CyclrCycle, obs: &Observed, now: DateTime<Utc>) -> Plan<CyclrCycle> {
        let facts = Facts {
            now,
            seen_at: now,
            pending: Pending {
                marker: c.status.as_ref().and_then(|s| s.pending_install.clone()),
                attempt: None,
            },
        };
        super::decide(c, obs, &facts)
    }

    fn decide(c: &CyclrCycle, obs: &Observed) -> Plan<CyclrCycle> {
        decide_at(c, obs, Utc::now())
    }

    fn health(plan: &Plan<CyclrCycle>) -> Health {
        match plan {
            Plan::Report { health, .. } => health.clone(),
            _ => panic!("expected a report"),
        }
    }

    fn prerequisite(code: u32, reason: &str, id: &str) -> Prerequisite {
        Prerequisite {
            reason_code: code,
            reason: reason.into(),
            object_type: Some("AccountConnector".into()),
            object_id: Some(id.into()),
        }
    }

    #[test]
    fn a_template_waits_for_the_accounts_installs_of_its_connectors() {
        let mut obs = observed(vec![], &[]);
        obs.installs_under_way = vec!["tickets (Tickets)".into()];
        let waiting = health(&decide(&cycle(serde_json::json!({})), &obs));
        assert_eq!(waiting.state, driver::State::Reconciling);
        assert_eq!(waiting.reason, Reason::ConnectorInstallPending);
        assert!(waiting.message.contains("tickets (Tickets)"), "{}", waiting.message);
    }

    #[test]
    fn a_new_cycle_installs_its_template_under_the_pending_protocol() {
        match decide(&cycle(serde_json::json!({})), &observed(vec![], &[])) {
            Plan::Write {
                write: Write::Install(template),
                pending: Some(intent),
                ..
            } => {
                assert_eq!(template, "t1");
                assert_eq!(intent.sent, "t1");
                assert!(intent.existing_ids.is_empty());
            }
            _ => panic!("expected the install"),
        }
        let mut obs = observed(vec![], &[]);
        obs.template = TemplateView::Missing("spec.templateRef.name: none".into());
        let stalled = health(&decide(&cycle(serde_json::json!({})), &obs));
        assert_eq!(
            (stalled.state, stalled.reason),
            (State::Stalled, Reason::TemplateNotFound)
        );
    }

    #[test]
    fn a_lost_install_is_found_and_recorded_never_installed_twice() {
        let mut c = cycle(serde_json::json!({}));
        c.status = Some(CyclrCycleStatus {
            pending_install: Some(PendingWrite {
                since: "2026-01-01T00:00:00Z".into(),
                until: Some("2026-01-01T00:01:00Z".into()),
                sent: Some("t1".into()),
                existing_ids: vec![],
            }),
            ..Default::default()
        });
        match decide(&c, &observed(vec![listed("Paused", true)], &[])) {
            Plan::Report { status, event, .. } => {
                assert_eq!(status.cycle_id.as_deref(), Some("c1"));
                assert!(status.pending_install.is_none());
                assert_eq!(event.map(|e| e.0), Some(Reason::Adopted));
            }
            _ => panic!("expected the lost install to be recorded"),
        }
        // One that existed before the attempt is never ours: after its deadline, installed.
        c.status
            .as_mut()
            .unwrap()
            .pending_install
            .as_mut()
            .unwrap()
            .existing_ids = vec!["c1".into()];
        assert!(matches!(
            decide(&c, &observed(vec![listed("Paused", true)], &[])),
            Plan::Write {
                write: Write::Install(_),
                ..
            }
        ));
        // Before its deadline: wait, no list judges it yet.
        let early = DateTime::parse_from_rfc3339("2026-01-01T00:00:30Z").unwrap().to_utc();
        assert!(matches!(decide_at(&c, &observed(vec![], &[]), early), Plan::Wait(_)));
    }

    #[test]
    fn a_cycle_gone_from_cyclr_is_reported_never_reinstalled() {
        let c = installed(cycle(serde_json::json!({})), "Active", 1);
        let missing = health(&decide(&c, &observed(vec![], &[])));
        assert_eq!(missing.reason, Reason::ExternalCycleMissing);
        assert!(missing.message.contains("c1"));
        let scheduled = health(&decide(&c, &observed(vec![listed("DeleteScheduled", true)], &[])));
        assert_eq!(scheduled.reason, Reason::ExternalCycleMissing);
    }

    #[test]
    fn activation_waits_for_prerequisites_and_names_what_stops_it() {
        let c = installed(cycle(serde_json::json!({"schedule": {"interval": 15}})), "Paused", 1);
        let mut obs = observed(vec![listed("Paused", false)], &[]);
        assert!(matches!(decide(&c, &obs), Plan::Refresh(())));
        obs.prerequisites = Some(vec![prerequisite(
            20,
            "Connector 'Tickets' is not authenticated.",
            "42",
        )]);
        let stalled = health(&decide(&c, &obs));
        assert_eq!(stalled.reason, Reason::ConnectorNotAuthenticated);
        assert!(
            stalled.message.contains("Tickets (account connector 42)"),
            "{}",
            stalled.message
        );
        obs.prerequisites = Some(vec![prerequisite(41, "Field 'Email' is not mapped.", "7")]);
        let stalled = health(&decide(&c, &obs));
        assert_eq!(stalled.reason, Reason::PrerequisitesNotMet);
        assert!(
            stalled
                .message
                .contains("Field 'Email' is not mapped. (reason code 41)")
        );
        obs.prerequisites = Some(vec![]);
        match decide(&c, &obs) {
            Plan::Write {
                write:
                    Write::Apply {
                        deactivate: false,
                        variables: None,
                        activate: Some(schedule),
                        ..
                    },
                pending: None,
                ..
            } => assert_eq!(schedule.interval, Some(15)),
            _ => panic!("expected the activation"),
        }
    }

    #[test]
    fn a_changed_variable_on_an_active_cycle_is_set_between_a_deactivate_and_an_activate() {
        let c = installed(
            cycle(serde_json::json!({"variables": [{"name": "region", "value": "us"}]})),
            "Active",
            1,
        );
        match decide(&c, &observed(vec![listed("Active", true)], &[("region", "us")])) {
            Plan::Write {
                write:
                    Write::Apply {
                        deactivate: true,
                        variables: Some((values, digest_sent)),
                        activate: Some(_),
                        ..
                    },
                ..
            } => {
                assert_eq!(values.len(), 1);
                assert_eq!(digest_sent, digest(&[("region", "us")]));
            }
            _ => panic!("expected deactivate, set, activate"),
        }
        // Set already: in sync, Ready.
        let mut c = c;
        c.status.as_mut().unwrap().variables_digest = Some(digest(&[("region", "us")]));
        let ready = health(&decide(
            &c,
            &observed(vec![listed("Active", true)], &[("region", "us")]),
        ));
        assert_eq!((ready.state, ready.reason), (State::Ready, Reason::Synced));
    }

    #[test]
    fn paused_in_the_spec_deactivates_and_paused_in_cyclr_is_drift() {
        let paused = installed(cycle(serde_json::json!({"state": "Paused"})), "Active", 1);
        assert!(matches!(
            decide(&paused, &observed(vec![listed("Active", true)], &[])),
            Plan::Write {
                write: Write::Apply {
                    deactivate: true,
                    activate: None,
                    drift: false,
                    ..
                },
                ..
            }
        ));
        // Applied and Active before; now Paused in Cyclr with the spec unchanged: drift.
        let active = installed(cycle(serde_json::json!({})), "Active", 1);
        let mut obs = observed(vec![listed("Paused", true)], &[]);
        obs.prerequisites = Some(vec![]);
        assert!(matches!(
            decide(&active, &obs),
            Plan::Write {
                write: Write::Apply {
                    activate: Some(_),
                    drift: true,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn a_state_change_cyclr_answered_is_looked_for_not_sent_again() {
        let now = Utc::now();
        let paused = installed(cycle(serde_json::json!({"state": "Paused"})), "Active", 1);
        let mut obs = observed(vec![listed("Active", true)], &[]);
        obs.sent = Some(Sent {
            to: CycleState::Paused,
            at: now - TimeDelta::seconds(30),
        });
        assert!(matches!(decide_at(&paused, &obs, now), Plan::Wait(_)));
        // Still not shown long after: asked again.
        assert!(matches!(
            decide_at(&paused, &obs, now + CONFIRM),
            Plan::Write {
                write: Write::Apply { deactivate: true, .. },
                ..
            }
        ));
        let active = installed(cycle(serde_json::json!({})), "Paused", 1);
        let mut obs = observed(vec![listed("Paused", true)], &[]);
        obs.sent = Some(Sent {
            to: CycleState::Active,
            at: now,
        });
        assert!(matches!(decide_at(&active, &obs, now), Plan::Wait(_)));
        // Ready, and its generation observed, only once Cyclr shows it.
        let ready = health(&decide_at(&active, &observed(vec![listed("Active", true)], &[]), now));
        assert_eq!(ready.state, State::Ready);
        assert!(active.spec_applied(&ready));
        assert!(!active.spec_applied(&Health::reconciling(Reason::Updating, "answered")));
    }

    #[test]
    fn observe_only_reports_a_cycle_paused_in_cyclr_and_never_writes() {
        let mut c = installed(
            cycle(serde_json::json!({"managementPolicy": "ObserveOnly", "deletionPolicy": "Delete"})),
            "Active",
            1,
        );
        let obs = observed(vec![listed("Paused", true)], &[]);
        match decide(&c, &obs) {
            Plan::Report { health, status, event } => {
                assert_eq!((health.state, health.reason), (State::Ready, Reason::Observed));
                assert!(
                    health.message.contains("Paused") && health.message.contains("not corrected"),
                    "{}",
                    health.message
                );
                assert_eq!(status.cyclr_status.as_deref(), Some("Paused"));
                assert_eq!(event.map(|e| e.0), Some(Reason::Observed));
            }
            _ => panic!("expected a report, no write"),
        }
        // Said once: the status shows it already.
        c.status.as_mut().unwrap().cyclr_status = Some("Paused".into());
        assert!(matches!(decide(&c, &obs), Plan::Report { event: None, .. }));
        assert!(!c.deletes() && !c.needs_finalizer(&obs), "ObserveOnly never deletes");
        // Nothing to observe: said, nothing installed.
        let new = cycle(serde_json::json!({"managementPolicy": "ObserveOnly"}));
        let stalled = health(&decide(&new, &obs));
        assert_eq!((stalled.state, stalled.reason), (State::Stalled, Reason::InvalidSpec));
    }

    #[test]
    fn a_new_schedule_on_an_active_cycle_is_sent_by_deactivating_and_activating_again() {
        let mut c = installed(cycle(serde_json::json!({"schedule": {"interval": 15}})), "Active", 1);
        let obs = observed(vec![listed("Active", true)], &[]);
        assert_eq!(health(&decide(&c, &obs)).state, State::Ready);
        c.spec.schedule.as_mut().unwrap().interval = Some(60);
        c.metadata.generation = Some(2);
        match decide(&c, &obs) {
            Plan::Write {
                write:
                    Write::Apply {
                        deactivate: true,
                        variables: None,
                        activate: Some(schedule),
                        drift: false,
                    },
                ..
            } => assert_eq!(schedule.interval, Some(60)),
            _ => panic!("expected deactivate and activate with the new schedule"),
        }
    }

    #[test]
    fn an_active_cycle_whose_status_was_restored_without_what_was_sent_is_adopted_not_restarted() {
        let mut c = installed(cycle(serde_json::json!({"schedule": {"interval": 15}})), "Active", 1);
        let status = c.status.as_mut().unwrap();
        (status.activated_schedule, status.variables_digest) = (None, None);
        let obs = observed(vec![listed("Active", true)], &[("region", "us")]);
        match decide(&c, &obs) {
            Plan::Report { health, status, .. } => {
                assert_eq!(health.state, State::Ready);
                assert_eq!(status.activated_schedule.and_then(|s| s.interval), Some(15));
                assert_eq!(status.variables_digest, Some(digest(&[("region", "us")])));
            }
            _ => panic!("expected the Active cycle adopted as it runs, with no write"),
        }
        // Paused with nothing recorded: the variables are set before it is activated.
        let mut paused = c.clone();
        paused.status.as_mut().unwrap().cyclr_status = Some("Paused".into());
        assert!(matches!(
            decide(&paused, &observed(vec![listed("Paused", true)], &[("region", "us")])),
            Plan::Write {
                write: Write::Apply { variables: Some(_), .. },
                ..
            }
        ));
    }

    #[test]
    fn a_cycle_that_ran_once_is_not_run_again_until_the_spec_changes() {
        let mut c = installed(cycle(serde_json::json!({"schedule": {"runOnce": true}})), "Paused", 1);
        c.status.as_mut().unwrap().ran_once_generation = Some(1);
        let ready = health(&decide(&c, &observed(vec![listed("Paused", true)], &[])));
        assert_eq!(ready.state, State::Ready);
        c.metadata.generation = Some(2);
        assert!(matches!(
            decide(&c, &observed(vec![listed("Paused", true)], &[])),
            Plan::Refresh(())
        ));
    }

    #[test]
    fn a_ready_cycle_looks_at_its_accounts_list_of_the_partners_last_resync() {
        let lists = CycleLists::default();
        let now = Utc::now();
        let interval = Duration::from_secs(600);
        let ago = |s: i64| now - TimeDelta::seconds(s);
        assert_eq!(lists.settled_after("a1", now, interval), ago(900), "no resync seen yet");
        lists.resynced("a1", ago(30));
        assert_eq!(lists.settled_after("a1", now, interval), ago(30));
        assert_eq!(lists.settled_after("a2", now, interval), ago(900), "another account's");
        lists.resynced("a2", ago(700));
        assert_eq!(
            lists.settled_after("a2", now, interval),
            ago(700),
            "a wake later than one interval: the own resync shares its list"
        );
        lists.resynced("a2", ago(1000));
        assert_eq!(
            lists.settled_after("a2", now, interval),
            ago(900),
            "at most 1.5 intervals old"
        );

        // Only a cycle installed and Ready for its generation looks at that list.
        let mut c = installed(cycle(serde_json::json!({})), "Active", 1);
        assert!(!settled(&c), "no Ready condition yet");
        let status = c.status.as_mut().unwrap();
        status.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: READY.into(),
            status: "True".into(),
            reason: "Synced".into(),
            message: String::new(),
            last_transition_time: time(now),
            observed_generation: Some(1),
        }];
        assert!(settled(&c));
        c.metadata.generation = Some(2);
        assert!(!settled(&c), "a new spec to apply");
    }
}
