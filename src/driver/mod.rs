//! The one reconcile driver. It holds every promise the three kinds share, so each kind is
//! only observe → decide (pure) → act:
//!
//! 1. a malformed object is reported, never breaks the watch;
//! 2. deletion needs no finalizer (Orphan); per-object state and metric series are dropped
//!    on the watch's Delete event ([`Reconciler::forget`]);
//! 3. the backoff gate: after a failure nothing, not even our own writes waking the watch,
//!    reaches Cyclr before the backoff (or a 429's hold) ends, unless the spec changed;
//! 4. pause (`cyclr.com/paused: "true"`): no Cyclr call, the spec is not marked observed;
//! 5. the stalled gate: a terminal failure waits for a new generation;
//! 6. the pending-write protocol: a non-idempotent Cyclr write is recorded in status first,
//!    with a resourceVersion precondition, and cleared after;
//! 7. one status comparison and at most one status write per reconcile (plus the pending
//!    marker before a write), `lastSyncTime` only when something else changed;
//! 8. one failure → condition table ([`reason::health_of`]), messages scrubbed of secrets;
//! 9. Events: Normal for what a kind did, Warning when a failure reason first appears;
//! 10. requeue: resync when healthy (on compact timers, [`Resyncs`]), backoff when failing,
//!     nothing when stalled or paused;
//! 11. no decision from a cached object older than this process's own last write to it
//!     ([`OwnWrites`]): the reconcile waits for the watch instead.

mod health;
mod packed;
pub mod reason;
mod resync;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

pub use health::Health;
pub use packed::{Packed, pack_event};
pub use reason::{Failure, Reason, health_of};
pub use resync::Resyncs;

use crate::controllers::{Context, jittered};
use crate::resources::{MANAGER, PendingWrite, annotation, condition, is_paused, same_conditions, stalled_reason};

/// The status every kind shares: kstatus conditions, `observedGeneration`, and (for kinds with
/// non-idempotent Cyclr writes) the pending-write marker.
pub trait ManagedStatus: Clone + Default + PartialEq + Debug + Serialize + Send + Sync + 'static {
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
    fn observed_generation(&self) -> Option<i64>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
    /// The pending-write marker, where the kind has one.
    fn pending(&self) -> Option<&PendingWrite> {
        None
    }
    fn set_pending(&mut self, _pending: Option<PendingWrite>) {}
    /// `lastSyncTime`, where the kind has one: moved only when the rest of status changed.
    fn set_last_sync_time(&mut self, _time: Option<Time>) {}
}

/// Implements [`ManagedStatus`] for a status struct with `conditions` and
/// `observed_generation` fields, and optionally its pending marker and `lastSyncTime` fields:
/// `managed_status!(CyclrAccountStatus, pending = pending_create, last_sync_time = last_sync_time);`
#[macro_export]
macro_rules! managed_status {
    ($status:ty $(, pending = $pending:ident)? $(, last_sync_time = $sync:ident)?) => {
        impl $crate::driver::ManagedStatus for $status {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &self.conditions
            }
            fn set_conditions(&mut self, conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>) {
                self.conditions = conditions;
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
            $(
                fn pending(&self) -> Option<&$crate::resources::PendingWrite> {
                    self.$pending.as_ref()
                }
                fn set_pending(&mut self, pending: Option<$crate::resources::PendingWrite>) {
                    self.$pending = pending;
                }
            )?
            $(
                fn set_last_sync_time(&mut self, time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) {
                    self.$sync = time;
                }
            )?
        }
    };
}

/// What a kind gives the driver.
pub trait Reconciler:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    type Status: ManagedStatus;
    /// Everything `decide` reads, gathered by `observe` (I/O).
    type Observed: Send + Sync;
    /// What `observe` should look at again before deciding once more (e.g. a fresher list).
    type Refresh: Send;
    /// One Cyclr write.
    type Write: Debug + Send;

    fn status(&self) -> Option<&Self::Status>;

    /// The Api through which this object is written (its namespace, or cluster-wide).
    fn api(&self, client: Client) -> Api<Self>;

    /// Reads what `decide` needs: referenced objects, the partner, Cyclr lists. `seen_at` is
    /// when the watch delivered this version of the object ([`Packed::seen_at`]): it existed
    /// then.
    fn observe(
        &self,
        ctx: &Context,
        seen_at: chrono::DateTime<chrono::Utc>,
        refresh: Option<Self::Refresh>,
    ) -> impl Future<Output = Result<Self::Observed, Failure>> + Send;

    /// The one decision of a reconcile. Pure: unit-tested without a cluster.
    fn decide(&self, observed: &Self::Observed) -> Plan<Self>;

    /// Sends one Cyclr write and says what it gave.
    fn act(
        &self,
        ctx: &Context,
        observed: &Self::Observed,
        write: Self::Write,
    ) -> impl Future<Output = Result<Applied<Self::Status>, Failure>> + Send;

    /// How long until the next look when Ready (the resync interval, jittered).
    fn resync(&self, observed: &Self::Observed) -> Option<Duration>;

    /// The annotation that keeps the Cyclr id in metadata, once status holds one.
    fn identity(_status: &Self::Status) -> Option<(&'static str, String)> {
        None
    }

    /// The object whose changes wake this one (the partner of an account, the account of an
    /// install), as namespace (`None` for a cluster-scoped one) and name. The cache keeps a
    /// hash of it, so the dependants of a change are found without decoding every object.
    fn depends_on(&self) -> Option<(Option<&str>, &str)> {
        None
    }

    /// Drops what the operator keeps about the object outside Kubernetes (metric series,
    /// usage timers); called when the watch reports the object deleted.
    fn forget(_ctx: &Context, _meta: &ObjectMeta) {}
}

/// Observe → decide rounds in one reconcile (a fresher list may be asked for once or twice).
const MAX_LOOKS: u32 = 3;

/// How often a resource stalled on another object is looked at again.
const RECHECK: Duration = Duration::from_secs(300);

/// A kind's decision.
pub enum Plan<K: Reconciler> {
    /// Observe again with this, then decide once more.
    Refresh(K::Refresh),
    /// Nothing to report yet (e.g. the partner's first check after a restart is under way):
    /// no write, look again after this long, or when woken.
    Wait(Duration),
    /// No Cyclr write: report this health and status (an Event with it, if given).
    Report {
        health: Health,
        status: K::Status,
        event: Option<Note>,
    },
    /// One Cyclr write. With `pending`, the driver records the marker (and `status`) first,
    /// with a resourceVersion precondition, so no second writer can start the same write.
    /// `event` is published once the write succeeded (e.g. an adoption it completes).
    Write {
        write: K::Write,
        pending: Option<PendingWrite>,
        status: K::Status,
        event: Option<Note>,
    },
}

/// What a Cyclr write gave.
pub struct Applied<S> {
    pub health: Health,
    pub status: S,
    pub event: Option<Note>,
}

/// A Normal Event: its reason and note.
pub type Note = (Reason, String);

/// The reconcile errors that reach kube's error policy: only failures to write status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Kube(#[from] kube::Error),
}

/// Per-object memory of failures, for the backoff gate.
#[derive(Default)]
pub struct Backoffs {
    by_uid: Mutex<HashMap<String, BackoffState>>,
}

struct BackoffState {
    failures: usize,
    until: Instant,
    generation: Option<i64>,
}

impl Backoffs {
    /// Jittered exponential backoff from 1 s to 5 min (backon), or the partner's hold when
    /// Cyclr said how long, whichever is longer.
    fn failed(&self, uid: &str, generation: Option<i64>, retry_after: Option<Duration>) -> Duration {
        let mut map = self.by_uid.lock().expect("lock");
        let state = map.entry(uid.to_string()).or_insert(BackoffState {
            failures: 0,
            until: Instant::now(),
            generation,
        });
        let delay = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(300))
            .with_jitter()
            .without_max_times()
            .build()
            .nth(state.failures)
            .unwrap_or(Duration::from_secs(300));
        let delay = delay.max(retry_after.unwrap_or_default());
        state.failures += 1;
        state.until = Instant::now() + delay;
        state.generation = generation;
        delay
    }

    /// How long the object must still wait, unless its spec changed since it failed.
    fn wait(&self, uid: &str, generation: Option<i64>) -> Option<Duration> {
        let map = self.by_uid.lock().expect("lock");
        let state = map.get(uid)?;
        (state.generation == generation)
            .then(|| state.until.checked_duration_since(Instant::now()))
            .flatten()
            .filter(|d| !d.is_zero())
    }

    fn succeeded(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(uid);
    }

    /// Drops the object's record (deleted).
    pub fn forget(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(uid);
    }
}

/// The resourceVersions of each object that this process knows to be older than its own
/// last write: the version a reconcile read, and those its earlier writes produced (the
/// pending marker, then the status). A reconcile that finds the cache at one of them (the
/// watch is behind our own write) waits for it: found by `make bench`, where an account's
/// resync timer and its partner's wake ran back to back and the second wrote its usage away.
/// Uids and versions are kept as 64-bit hashes, and a record lasts only until the watch
/// delivers our write: 10,000 Ready accounts hold nothing here.
#[derive(Default)]
pub struct OwnWrites {
    by_uid: Mutex<HashMap<u64, Written>>,
}

struct Written {
    older: Vec<u64>,
    last: u64,
}

impl OwnWrites {
    /// Records a write made from the object `read` that left it at `written`. A write that
    /// changed nothing (the same resourceVersion) brings no watch event: nothing to wait for.
    fn wrote(&self, read: &ObjectMeta, written: &ObjectMeta) {
        let (Some(uid), Some(read), Some(written)) = (&read.uid, &read.resource_version, &written.resource_version)
        else {
            return;
        };
        if read == written {
            return;
        }
        let (read, written) = (stable_hash(read), stable_hash(written));
        let mut map = self.by_uid.lock().expect("lock");
        let entry = map.entry(stable_hash(uid.as_str())).or_insert_with(|| Written {
            older: Vec::new(),
            last: read,
        });
        for version in [read, std::mem::replace(&mut entry.last, written)] {
            if !entry.older.contains(&version) {
                entry.older.push(version);
            }
        }
    }

    /// Whether the cached object `cached` is older than our last write; forgets the record
    /// once the cache has moved on.
    fn cache_behind(&self, cached: &ObjectMeta) -> bool {
        let uid = stable_hash(cached.uid.as_deref().unwrap_or_default());
        let mut map = self.by_uid.lock().expect("lock");
        let Some(written) = map.get(&uid) else {
            return false;
        };
        let version = cached.resource_version.as_ref().map(stable_hash);
        if version.is_some_and(|v| written.older.contains(&v)) {
            return true;
        }
        map.remove(&uid);
        false
    }

    /// The watch delivered (and the cache now holds) this version of the object: forgets
    /// its record if that is our last write or newer.
    pub fn seen(&self, cached: &ObjectMeta) {
        self.cache_behind(cached);
    }

    /// Drops the object's record (deleted).
    pub fn forget(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(&stable_hash(uid));
    }
}

/// A 64-bit hash of `value`, the same on every thread for the life of the process (keys of
/// the per-object maps, where a string uid would cost 60 bytes more per object). Not stable
/// across Rust versions: nothing compares it between processes.
pub fn stable_hash(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// The Api through which an object is written.
fn api_for<K: Reconciler>(client: Client, obj: &K) -> Api<K> {
    obj.api(client)
}

/// One reconcile of any kind: the driver's promises around the kind's steps.
pub async fn reconcile<K: Reconciler>(packed: Arc<Packed<K>>, ctx: Arc<Context>) -> Result<Action, Error> {
    // This reconcile is the object's resync; a Ready outcome sets the next one.
    ctx.resyncs_of(&K::kind(&())).take(packed.meta());
    let obj = match packed.unpack() {
        Ok(obj) => obj,
        Err(invalid) => {
            tracing::warn!(kind = %K::kind(&()), name = ?invalid.metadata.name, error = %invalid, "cannot read the object; fix its spec");
            return Ok(Action::await_change());
        }
    };
    let span = tracing::info_span!(
        "reconcile",
        kind = %K::kind(&()),
        namespace = obj.meta().namespace.as_deref().unwrap_or(""),
        name = %obj.name_any(),
        generation = obj.meta().generation.unwrap_or_default()
    );
    let started = Instant::now();
    let result = run_once(&obj, packed.seen_at(), &ctx).instrument(span).await;
    let category = match &result {
        Ok(_) => None,
        Err(_) => Some("kubernetes"),
    };
    ctx.metrics
        .reconciled(&K::kind(&()), category.is_none(), started.elapsed());
    result
}

async fn run_once<K: Reconciler>(
    obj: &K,
    seen_at: chrono::DateTime<chrono::Utc>,
    ctx: &Context,
) -> Result<Action, Error> {
    let meta = obj.meta();
    if meta.deletion_timestamp.is_some() {
        // Orphan is the only policy the Partner API allows: no finalizer, nothing to do.
        return Ok(Action::await_change());
    }
    let uid = meta.uid.clone().unwrap_or_default();
    if ctx.own_writes.cache_behind(meta) {
        // The watch has not delivered our own last write yet: a decision from this older
        // object could undo it (or write again what is already written).
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let generation = meta.generation;
    let previous = obj.status().cloned().unwrap_or_default();
    if is_paused(meta) {
        let paused = Health::paused();
        finish(obj, ctx, &previous, previous.clone(), &paused, vec![], false).await?;
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.backoffs.wait(&uid, generation) {
        return Ok(Action::requeue(wait));
    }
    if previous.observed_generation() == generation
        && stalled_reason(previous.conditions()).is_some_and(|r| Reason::parse(r).is_none_or(Reason::waits_for_spec))
    {
        return Ok(Action::await_change());
    }

    let mut refresh = None;
    let mut looks = 0;
    let (observed, plan) = loop {
        looks += 1;
        let observed = match obj.observe(ctx, seen_at, refresh.take()).await {
            Ok(observed) => observed,
            Err(failure) => return failed(obj, ctx, &previous, previous.clone(), failure).await,
        };
        match obj.decide(&observed) {
            // Bounded: a kind that keeps asking for a fresher look waits for the next reconcile.
            Plan::Refresh(_) if looks >= MAX_LOOKS => return Ok(Action::requeue(Duration::from_secs(1))),
            Plan::Refresh(again) => refresh = Some(again),
            plan => break (observed, plan),
        }
    };
    match plan {
        Plan::Refresh(_) => unreachable!("handled in the loop"),
        Plan::Wait(after) => Ok(Action::requeue(after)),
        Plan::Report { health, status, event } => {
            finish(obj, ctx, &previous, status, &health, event.into_iter().collect(), true).await?;
            Ok(next_action(obj, ctx, &health, &observed))
        }
        Plan::Write {
            write,
            pending,
            mut status,
            event,
        } => {
            let mut base = previous.clone();
            if let Some(mut pending) = pending {
                // Stamped now, after every list `decide` read: a later list taken after this
                // time shows whatever the write did.
                pending.since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                status.set_pending(Some(pending));
                let progress = match K::kind(&()).as_ref() {
                    "CyclrConnectorInstall" => Health::progressing(Reason::Installing, "installing the connector"),
                    _ => Health::progressing(Reason::Creating, "creating the Cyclr account"),
                };
                match write_status(obj, ctx, &previous, status.clone(), &progress, true, true).await {
                    Ok(written) => base = written,
                    // Someone changed the object since it was read (or the cache is behind
                    // our own last write): decide again on the fresh object.
                    Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(Duration::from_secs(1))),
                    Err(e) => return Err(e.into()),
                }
            }
            match obj.act(ctx, &observed, write).await {
                Ok(mut applied) => {
                    applied.status.set_pending(None);
                    let events = event.into_iter().chain(applied.event).collect();
                    finish(obj, ctx, &base, applied.status, &applied.health, events, true).await?;
                    Ok(next_action(obj, ctx, &applied.health, &observed))
                }
                Err(failure) => {
                    let mut status = base.clone();
                    if !failure.outcome_unknown() {
                        status.set_pending(None);
                    }
                    failed(obj, ctx, &base, status, failure).await
                }
            }
        }
    }
}

/// Reports a failure through the table and backs off.
async fn failed<K: Reconciler>(
    obj: &K,
    ctx: &Context,
    previous: &K::Status,
    status: K::Status,
    failure: Failure,
) -> Result<Action, Error> {
    let health = health_of(&failure);
    let message = ctx.scrub(&failure.to_string());
    tracing::warn!(reason = %health.reason(), category = failure.category(), error = %message, "reconcile failed");
    finish(obj, ctx, previous, status, &health, vec![], true).await?;
    if health.is_stalled() {
        return Ok(Action::await_change());
    }
    let uid = obj.meta().uid.clone().unwrap_or_default();
    Ok(Action::requeue(ctx.backoffs.failed(
        &uid,
        obj.meta().generation,
        failure.retry_after(),
    )))
}

fn next_action<K: Reconciler>(obj: &K, ctx: &Context, health: &Health, observed: &K::Observed) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    match health {
        Health::Ready { .. } => {
            ctx.backoffs.succeeded(&uid);
            if let Some(after) = obj.resync(observed) {
                ctx.resyncs_of(&K::kind(&())).schedule(obj.meta(), after);
            }
            Action::await_change()
        }
        Health::Stalled { reason, .. } if !reason.waits_for_spec() => Action::requeue(jittered(RECHECK)),
        Health::Stalled { .. } | Health::Paused { .. } => Action::await_change(),
        // Waiting on something that is watched; a slow safety net besides.
        Health::Progressing { .. } => Action::requeue(Duration::from_secs(60)),
        Health::Failing { .. } => Action::requeue(ctx.backoffs.failed(&uid, obj.meta().generation, None)),
    }
}

/// The end of every reconcile: one status comparison, at most one status write, the
/// identity annotation, and Events.
async fn finish<K: Reconciler>(
    obj: &K,
    ctx: &Context,
    previous: &K::Status,
    status: K::Status,
    health: &Health,
    events: Vec<Note>,
    observed_spec: bool,
) -> Result<(), Error> {
    let health = health.clone().map_message(|m| ctx.scrub(m));
    let written = write_status(obj, ctx, previous, status, &health, observed_spec, false).await?;
    if let Some((key, id)) = K::identity(&written)
        && annotation(obj.meta(), key) != Some(id.as_str())
    {
        tracing::debug!(annotation = key, %id, "recording the id in metadata");
        let patch = serde_json::json!({"metadata": {"annotations": {key: id}}});
        let patched = api_for(ctx.client.clone(), obj)
            .patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        ctx.own_writes.wrote(obj.meta(), patched.meta());
        ctx.metrics.kubernetes_write(&K::kind(&()));
    }
    for (reason, note) in events {
        ctx.event(obj, EventType::Normal, reason, ctx.scrub(&note)).await;
    }
    if let Health::Stalled { reason, message } | Health::Failing { reason, message } = &health
        && condition(previous.conditions(), crate::resources::READY).is_none_or(|c| c.reason != reason.as_str())
    {
        ctx.event(obj, EventType::Warning, *reason, message.clone()).await;
    }
    Ok(())
}

/// Writes status when it differs from `previous` (server-side apply, one write), with a
/// resourceVersion precondition when `precondition`. Returns the status now in force.
async fn write_status<K: Reconciler>(
    obj: &K,
    ctx: &Context,
    previous: &K::Status,
    mut next: K::Status,
    health: &Health,
    observed_spec: bool,
    precondition: bool,
) -> Result<K::Status, kube::Error> {
    // A spec that was not applied (paused) is not marked observed, so kstatus never reads
    // it as Current.
    let generation = if observed_spec {
        obj.meta().generation
    } else {
        previous.observed_generation()
    };
    next.set_conditions(health.conditions(generation, previous.conditions()));
    next.set_observed_generation(generation);
    ctx.metrics
        .status_computed(&K::kind(&()), obj.meta(), previous.conditions(), next.conditions());
    let rest = |s: &K::Status| {
        let mut s = s.clone();
        s.set_conditions(vec![]);
        s.set_last_sync_time(None);
        s
    };
    let rest_changed = rest(previous) != rest(&next);
    if !rest_changed && same_conditions(previous.conditions(), next.conditions()) && !precondition {
        return Ok(previous.clone());
    }
    if rest_changed {
        next.set_last_sync_time(Some(Time(Timestamp::now())));
    }
    tracing::debug!(?previous, ?next, "writing status");
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": next,
    });
    if precondition {
        patch["metadata"] = serde_json::json!({"resourceVersion": obj.resource_version()});
    }
    let patched = api_for(ctx.client.clone(), obj)
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.own_writes.wrote(obj.meta(), patched.meta());
    ctx.metrics.kubernetes_write(&K::kind(&()));
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some("u1".into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_cache_is_behind_until_it_shows_our_last_write() {
        let writes = OwnWrites::default();
        // The pending marker (read at 10, written 11), then the status (still from 10, written 12).
        writes.wrote(&meta("10"), &meta("11"));
        writes.wrote(&meta("10"), &meta("12"));
        assert!(writes.cache_behind(&meta("10")), "the version the reconcile read");
        assert!(writes.cache_behind(&meta("11")), "our own intermediate write");
        assert!(!writes.cache_behind(&meta("12")), "caught up");
        assert!(!writes.cache_behind(&meta("10")), "forgotten once caught up");
        let other = ObjectMeta {
            uid: Some("other".into()),
            ..meta("10")
        };
        assert!(!writes.cache_behind(&other));
    }

    #[test]
    fn a_write_that_changed_nothing_is_not_waited_for() {
        let writes = OwnWrites::default();
        writes.wrote(&meta("10"), &meta("10"));
        assert!(!writes.cache_behind(&meta("10")));
        writes.wrote(&meta("10"), &meta("11"));
        assert!(!writes.cache_behind(&meta("13")), "someone else's newer write");
    }

    #[test]
    fn the_watch_delivering_our_write_forgets_it() {
        let writes = OwnWrites::default();
        writes.wrote(&meta("10"), &meta("11"));
        writes.seen(&meta("10"));
        assert_eq!(writes.by_uid.lock().unwrap().len(), 1, "an older version: still behind");
        writes.seen(&meta("11"));
        assert!(
            writes.by_uid.lock().unwrap().is_empty(),
            "nothing kept per Ready object"
        );
    }
}
