//! One reconcile of any kind: the driver's promises around the kind's observe → decide → act.
//! [`reconcile`] reads as the pipeline; each step below has its own error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::conditions::{READY, condition, same_conditions, stalled_reason};
use crate::pending::{Attempt, Pending};
use crate::{
    Applied, Cleanup, Facts, Fault, Health, Kind, ManagedStatus, Note, Packed, Plan, ReasonCode, Reconciler, State,
    annotation, is_paused, jittered,
};

/// Observe → decide rounds in one reconcile (a fresher list may be asked for once or twice).
const MAX_LOOKS: u32 = 3;

/// How often a resource stalled on another object is looked at again.
const RECHECK: Duration = Duration::from_secs(300);

/// The Kubernetes writes of a reconcile that failed, by step. Kube's error policy retries them
/// soon; the Cyclr side of a failure is reported in status instead (it is not an error here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Recording the pending-write marker before the write.
    #[error("recording the pending write: {0}")]
    Mark(#[source] kube::Error),
    /// Writing status after the reconcile.
    #[error("writing status: {0}")]
    Record(#[source] kube::Error),
    /// Recording the external id in the object's annotation.
    #[error("recording the id annotation: {0}")]
    Annotate(#[source] kube::Error),
    /// Adding or removing the kind's finalizer.
    #[error("updating the finalizer: {0}")]
    Finalize(#[source] kube::Error),
}

/// How a reconcile ended, for the requeue and the failure metric.
struct Done {
    action: Action,
    /// The failure's category, when the reconcile failed.
    failure: Option<&'static str>,
}

impl Done {
    fn ok(action: Action) -> Self {
        Done { action, failure: None }
    }
}

/// One reconcile of any kind, from the cached object to its status write.
pub async fn reconcile<K: Reconciler>(packed: Arc<Packed<K>>, kind: Arc<Kind<K>>) -> Result<Action, Error> {
    // This reconcile is the object's resync; a Ready outcome sets the next one.
    kind.resyncs.take(packed.meta());
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
    let result = run(&obj, packed.seen_at(), &kind).instrument(span).await;
    let failure = match &result {
        Ok(done) => done.failure,
        Err(_) => Some("kubernetes"),
    };
    kind.driver
        .metrics
        .reconciled(&K::kind(&()), failure, started.elapsed());
    result.map(|done| done.action)
}

/// The pipeline: gates → look (observe → decide) → mark → act → record.
async fn run<K: Reconciler>(obj: &K, seen_at: DateTime<Utc>, kind: &Kind<K>) -> Result<Done, Error> {
    let previous = obj.status().cloned().unwrap_or_default();
    let facts = match gate(obj, seen_at, kind, &previous) {
        Gate::Pass(facts) => facts,
        Gate::Stop(action) => return Ok(Done::ok(action)),
        Gate::Pause => {
            record(
                obj,
                kind,
                &previous,
                previous.clone(),
                &Health::paused(),
                vec![],
                How::Paused,
            )
            .await?;
            return Ok(Done::ok(Action::await_change()));
        }
        Gate::Delete => return delete(obj, kind, &previous).await,
    };
    let (observed, plan) = match look(obj, kind, &facts).await {
        Ok(Some(looked)) => looked,
        Ok(None) => return Ok(Done::ok(Action::requeue(Duration::from_secs(1)))),
        Err(failure) => return fail(obj, kind, &previous, previous.clone(), failure).await,
    };
    if !matches!(plan, Plan::Wait(_)) && must_add(K::FINALIZER, obj.meta(), obj.needs_finalizer(&observed)) {
        // On the object before anything is written for it; the decision is taken again from
        // the object the watch shows with it (its resourceVersion moved).
        finalize(obj, kind, true).await?;
        return Ok(Done::ok(Action::requeue(Duration::from_secs(1))));
    }
    match plan {
        Plan::Refresh(_) => unreachable!("`look` decides again until it is not a refresh"),
        Plan::Wait(after) => Ok(Done::ok(Action::requeue(after))),
        Plan::Report { health, status, event } => {
            record(
                obj,
                kind,
                &previous,
                status,
                &health,
                event.into_iter().collect(),
                How::Decided,
            )
            .await?;
            Ok(Done::ok(next(obj, kind, &health, &observed)))
        }
        // Stopping: a write started now could be cut off by the end of the grace period.
        Plan::Write { .. } if kind.driver.stopping() => Ok(Done::ok(Action::requeue(Duration::from_secs(1)))),
        Plan::Write {
            write,
            pending,
            status,
            event,
        } => {
            let (base, intent, marked) = match pending {
                None => (previous.clone(), None, None),
                Some(intent) => match mark(obj, kind, &previous, status.clone(), &intent, facts.now).await? {
                    Some((status, marked)) => (status, Some(intent), Some(marked)),
                    // Someone changed the object since it was read: decide again on the fresh object.
                    None => return Ok(Done::ok(Action::requeue(Duration::from_secs(1)))),
                },
            };
            // The rest is written from the marked object, so the versions a later reconcile
            // must not decide from include the marker's ([`crate::OwnWrites`]): the watch may
            // deliver it while the write runs, and a reconcile on it would write the marker back.
            let obj = marked.as_ref().unwrap_or(obj);
            let result = obj.act(&kind.state, &observed, write).await;
            if let Some(intent) = intent {
                remember(obj, kind, &intent.sent, &result);
            }
            let events: Vec<_> = event.into_iter().collect();
            match result {
                Ok(applied) => {
                    let Applied {
                        health,
                        mut status,
                        event,
                        made,
                    } = applied;
                    status.set_pending(None);
                    let events = events.into_iter().chain(event).collect();
                    match record(obj, kind, &base, status, &health, events, How::Decided).await {
                        Err(Error::Record(kube::Error::Api(e))) if e.code == 404 && made.is_some() => {
                            orphaned(obj, kind, made.as_deref().unwrap_or_default()).await;
                            Ok(Done::ok(Action::await_change()))
                        }
                        Err(e) => Err(e),
                        Ok(()) => Ok(Done::ok(next(obj, kind, &health, &observed))),
                    }
                }
                Err(failure) => {
                    // The plan's status (e.g. an adoption found before the write) stands; the
                    // marker stays only while the write's outcome is unknown.
                    let mut status = status;
                    status.set_pending(if failure.outcome_unknown() {
                        base.pending().cloned()
                    } else {
                        None
                    });
                    for (reason, note) in &events {
                        kind.driver
                            .event(&obj.object_ref(&()), EventType::Normal, *reason, reason.verb(), note)
                            .await;
                    }
                    fail(obj, kind, &base, status, failure).await
                }
            }
        }
    }
}

/// What the gates let through.
enum Gate {
    /// Go on, with these facts.
    Pass(Facts),
    /// Stop here, with this requeue.
    Stop(Action),
    /// Paused: report it, nothing else.
    Pause,
    /// Deleting, with the kind's finalizer: its cleanup.
    Delete,
}

/// The checks before any look: deletion, our own writes, pause, backoff, stalled, and an
/// object older than our own pending marker. A deleting object with the kind's finalizer
/// passes our own writes, pause and backoff to its cleanup; without it, nothing is done.
fn gate<K: Reconciler>(obj: &K, seen_at: DateTime<Utc>, kind: &Kind<K>, previous: &K::Status) -> Gate {
    let meta = obj.meta();
    let uid = meta.uid.as_deref().unwrap_or_default();
    let deleting = meta.deletion_timestamp.is_some();
    if deleting && !holds_finalizer::<K>(meta) {
        // Orphan: no finalizer, nothing to do.
        return Gate::Stop(Action::await_change());
    }
    if kind.driver.own_writes.cache_behind(meta) {
        // The watch has not delivered our own last write yet: a decision from this older
        // object could undo it (or write again what is already written).
        return Gate::Stop(Action::requeue(Duration::from_secs(1)));
    }
    if is_paused(meta) {
        return Gate::Pause;
    }
    if let Some(wait) = kind.driver.backoffs.wait(uid, meta.generation) {
        return Gate::Stop(Action::requeue(wait));
    }
    if deleting {
        // Before the stalled gate: a cleanup that stalled is tried again on every wake.
        return Gate::Delete;
    }
    if previous.observed_generation() == meta.generation
        && stalled_reason(previous.conditions())
            .is_some_and(|r| K::Reason::parse(r).is_none_or(K::Reason::waits_for_spec))
    {
        return Gate::Stop(Action::await_change());
    }
    let settled = previous.pending().is_none() && K::identity(previous).is_some();
    let facts = Facts {
        now: Utc::now(),
        seen_at,
        pending: Pending {
            marker: previous.pending().cloned(),
            attempt: kind.attempts.get(uid, settled),
        },
    };
    if facts.pending.behind_our_marker(facts.now) {
        // This process sent a write whose outcome it does not know, yet the object shows no
        // marker: it is older than our own marker write. Deciding from it could write the
        // marker away or start the write again.
        return Gate::Stop(Action::requeue(Duration::from_secs(1)));
    }
    Gate::Pass(facts)
}

/// Whether the object carries the kind's finalizer.
fn holds_finalizer<K: Reconciler>(meta: &ObjectMeta) -> bool {
    holds(meta, K::FINALIZER)
}

/// Whether `meta` carries `finalizer` (pure).
fn holds(meta: &ObjectMeta, finalizer: Option<&str>) -> bool {
    finalizer.is_some_and(|f| meta.finalizers.iter().flatten().any(|held| held == f))
}

/// Whether `finalizer` must be added: the kind has one, the object needs it (`needed`) and
/// does not carry it yet (pure).
fn must_add(finalizer: Option<&str>, meta: &ObjectMeta, needed: bool) -> bool {
    needed && finalizer.is_some() && !holds(meta, finalizer)
}

/// Adds (`held`) or removes the kind's finalizer, with a resourceVersion precondition so no
/// other finalizer's change is lost. A 409 is left to the next reconcile (requeued by the
/// caller); a 404 on removal means the object went already.
async fn finalize<K: Reconciler>(obj: &K, kind: &Kind<K>, held: bool) -> Result<(), Error> {
    let Some(finalizer) = K::FINALIZER else {
        return Ok(());
    };
    let mut finalizers: Vec<String> = obj
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if held {
        finalizers.push(finalizer.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}
    });
    let driver = &kind.driver;
    match obj
        .api(driver.client.clone())
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(patched) => {
            driver.own_writes.wrote(obj.meta(), patched.meta());
            driver.metrics.kubernetes_write(&K::kind(&()));
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || (e.code == 404 && !held) => Ok(()),
        Err(e) => Err(Error::Finalize(e)),
    }
}

/// A deleting object with the kind's finalizer: the kind's cleanup, then the finalizer goes;
/// or its report, and the finalizer stays.
async fn delete<K: Reconciler>(obj: &K, kind: &Kind<K>, previous: &K::Status) -> Result<Done, Error> {
    match obj.cleanup(&kind.state).await {
        Ok(Cleanup::Done(event)) => {
            if let Some((reason, note)) = event {
                kind.driver
                    .event(&obj.object_ref(&()), EventType::Normal, reason, reason.verb(), &note)
                    .await;
            }
            finalize(obj, kind, false).await?;
            // Requeued in case the removal met a change (409); a gone object is not looked at.
            Ok(Done::ok(Action::requeue(Duration::from_secs(1))))
        }
        Ok(Cleanup::Blocked(health)) => {
            record(obj, kind, previous, previous.clone(), &health, vec![], How::Decided).await?;
            Ok(Done::ok(waiting(&health)))
        }
        Err(failure) => fail(obj, kind, previous, previous.clone(), failure).await,
    }
}

/// Observe → decide, again while the kind asks for a fresher look (bounded: a kind that keeps
/// asking waits for the next reconcile, `None`).
async fn look<K: Reconciler>(
    obj: &K,
    kind: &Kind<K>,
    facts: &Facts,
) -> Result<Option<(K::Observed, Plan<K>)>, K::Failure> {
    let mut refresh = None;
    for looks in 1..=MAX_LOOKS {
        let observed = obj.observe(&kind.state, facts, refresh.take()).await?;
        match obj.decide(&observed, facts) {
            Plan::Refresh(_) if looks == MAX_LOOKS => return Ok(None),
            Plan::Refresh(again) => refresh = Some(again),
            plan => return Ok(Some((observed, plan))),
        }
    }
    Ok(None)
}

/// Records the pending marker (and the plan's status) with a resourceVersion precondition:
/// the status in force and the object as marked (at the marker's resourceVersion). `None`
/// when the object changed since it was read (409): decide again.
async fn mark<K: Reconciler>(
    obj: &K,
    kind: &Kind<K>,
    previous: &K::Status,
    mut status: K::Status,
    intent: &crate::Intent<K::Reason>,
    now: DateTime<Utc>,
) -> Result<Option<(K::Status, K)>, Error> {
    status.set_pending(Some(crate::pending::mark(intent, now)));
    let health = Health::reconciling(intent.reason, intent.message.clone());
    match write_status(obj, kind, previous, status, &health, true, true).await {
        Ok((written, version)) => {
            let mut marked = obj.clone();
            if version.is_some() {
                marked.meta_mut().resource_version = version;
            }
            Ok(Some((written, marked)))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(Error::Mark(e)),
    }
}

/// Remembers how a non-idempotent write ended, until the watch shows it.
fn remember<K: Reconciler>(obj: &K, kind: &Kind<K>, sent: &str, result: &Result<Applied<K>, K::Failure>) {
    let attempt = |made: Option<String>| Attempt {
        ended: Utc::now(),
        sent: sent.to_string(),
        made,
    };
    let attempt = match result {
        Ok(applied) => Some(attempt(applied.made.clone())),
        Err(failure) if failure.outcome_unknown() => Some(attempt(None)),
        // Refused, nothing made: nothing to remember.
        Err(_) => None,
    };
    kind.attempts
        .ended(obj.meta().uid.as_deref().unwrap_or_default(), attempt);
}

/// The resource went while its write was in flight: what the write made is reported where a
/// person will find it, so nothing is orphaned silently.
async fn orphaned<K: Reconciler>(obj: &K, kind: &Kind<K>, made: &str) {
    let what = format!(
        "{} {}/{} was deleted while its write was in flight; Cyclr object {made} was made and no resource holds it",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    tracing::warn!(made, "{what}");
    kind.driver.metrics.orphaned(&K::kind(&()));
    if let Some(regarding) = obj.orphan_report() {
        kind.driver
            .event(&regarding, EventType::Warning, K::Reason::ORPHANED, "Create", &what)
            .await;
    }
}

/// Reports a failure through the kind's table and backs off.
async fn fail<K: Reconciler>(
    obj: &K,
    kind: &Kind<K>,
    previous: &K::Status,
    status: K::Status,
    failure: K::Failure,
) -> Result<Done, Error> {
    let health = failure.health();
    let category = failure.category();
    tracing::warn!(reason = %health.reason, category, error = %kind.driver.scrub(&failure.to_string()), "reconcile failed");
    record(obj, kind, previous, status, &health, vec![], How::Failed).await?;
    let action = if health.is_stalled() {
        Action::await_change()
    } else {
        let uid = obj.meta().uid.as_deref().unwrap_or_default();
        Action::requeue(
            kind.driver
                .backoffs
                .failed(uid, obj.meta().generation, failure.retry_after()),
        )
    };
    Ok(Done {
        action,
        failure: Some(category),
    })
}

/// The requeue after a report or a write that did not fail.
fn next<K: Reconciler>(obj: &K, kind: &Kind<K>, health: &Health<K::Reason>, observed: &K::Observed) -> Action {
    let uid = obj.meta().uid.as_deref().unwrap_or_default();
    match health.state {
        State::Ready => {
            kind.driver.backoffs.succeeded(uid);
            if let Some(after) = obj.resync(&kind.state, observed) {
                kind.resyncs.resync(obj.meta(), after);
            }
            Action::await_change()
        }
        _ => waiting(health),
    }
}

/// The requeue of a resource that is not Ready.
fn waiting<R: ReasonCode>(health: &Health<R>) -> Action {
    match health.state {
        State::Stalled if !health.reason.waits_for_spec() => Action::requeue(jittered(RECHECK)),
        State::Ready | State::Stalled | State::Paused => Action::await_change(),
        // Waiting on something that is watched; a slow safety net besides.
        State::Reconciling => Action::requeue(Duration::from_secs(60)),
    }
}

/// How a reconcile came to its status.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Paused: the spec is not applied (`observedGeneration` stays).
    Paused,
    /// Decided by the kind, or written.
    Decided,
    /// A failure from the table: a Warning Event when its reason first appears.
    Failed,
}

/// The end of every reconcile: one status comparison, at most one status write, the
/// identity annotation, and Events (Normal for what was done, Warning when a failure or a
/// stall first appears); none of these writes for a kind this process does not write
/// ([`crate::KindConfig::writes_status`]).
async fn record<K: Reconciler>(
    obj: &K,
    kind: &Kind<K>,
    previous: &K::Status,
    status: K::Status,
    health: &Health<K::Reason>,
    events: Vec<Note<K::Reason>>,
    how: How,
) -> Result<(), Error> {
    let driver = &kind.driver;
    let health = Health {
        message: driver.scrub(&health.message),
        ..health.clone()
    };
    let (written, _) = write_status(obj, kind, previous, status, &health, how != How::Paused, false)
        .await
        .map_err(Error::Record)?;
    if !kind.config.writes_status {
        return Ok(());
    }
    if let Some((key, id)) = K::identity(&written)
        && annotation(obj.meta(), key) != Some(id.as_str())
    {
        tracing::debug!(annotation = key, %id, "recording the id in metadata");
        let patch = serde_json::json!({"metadata": {"annotations": {key: id}}});
        let patched = obj
            .api(driver.client.clone())
            .patch(
                &obj.name_any(),
                &PatchParams {
                    field_manager: Some(driver.config.manager.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::Annotate)?;
        driver.own_writes.wrote(obj.meta(), patched.meta());
        driver.metrics.kubernetes_write(&K::kind(&()));
    }
    let regarding = obj.object_ref(&());
    for (reason, note) in events {
        driver
            .event(&regarding, EventType::Normal, reason, reason.verb(), &note)
            .await;
    }
    let first_time = condition(previous.conditions(), READY).is_none_or(|c| c.reason != health.reason.as_str());
    if (how == How::Failed || health.is_stalled()) && first_time {
        driver
            .event(
                &regarding,
                EventType::Warning,
                health.reason,
                health.reason.verb(),
                &health.message,
            )
            .await;
    }
    Ok(())
}

/// Writes status when it differs from `previous` (server-side apply, one write), with a
/// resourceVersion precondition when `precondition`; never for a kind this process does not
/// write. Returns the status now in force and the resourceVersion the write left (`None`:
/// nothing written).
async fn write_status<K: Reconciler>(
    obj: &K,
    kind: &Kind<K>,
    previous: &K::Status,
    mut next: K::Status,
    health: &Health<K::Reason>,
    observed_spec: bool,
    precondition: bool,
) -> Result<(K::Status, Option<String>), kube::Error> {
    let driver = &kind.driver;
    // A spec that was not applied (paused, or not shown by the external system yet) is not
    // marked observed, so kstatus never reads it as Current.
    let generation = if observed_spec && (health.is_stalled() || obj.spec_applied(health)) {
        obj.meta().generation
    } else {
        previous.observed_generation()
    };
    next.set_conditions(health.conditions(generation, previous.conditions()));
    next.set_observed_generation(generation);
    driver
        .metrics
        .status_computed(&K::kind(&()), obj.meta(), previous.conditions(), next.conditions());
    if !kind.config.writes_status {
        // Another process writes it: computed (for the metrics), not written.
        return Ok((next, None));
    }
    let rest = |s: &K::Status| {
        let mut s = s.clone();
        s.set_conditions(vec![]);
        s.set_last_sync_time(None);
        s
    };
    let rest_changed = rest(previous) != rest(&next);
    if !rest_changed && same_conditions(previous.conditions(), next.conditions()) && !precondition {
        return Ok((previous.clone(), None));
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
    let patched = obj
        .api(driver.client.clone())
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(driver.config.manager).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    driver.own_writes.wrote(obj.meta(), patched.meta());
    driver.metrics.kubernetes_write(&K::kind(&()));
    Ok((next, patched.meta().resource_version.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_finalizer_is_added_only_to_an_object_that_needs_it_and_lacks_it() {
        let ours = Some("cyclr.com/account");
        assert!(must_add(ours, &meta(&[]), true));
        assert!(must_add(ours, &meta(&["someone.else/keep"]), true));
        assert!(!must_add(ours, &meta(&["cyclr.com/account"]), true), "held already");
        assert!(!must_add(ours, &meta(&[]), false), "Orphan needs none");
        assert!(!must_add(None, &meta(&[]), true), "a kind without a finalizer");
        assert!(!must_add(ours, &ObjectMeta::default(), false));
        assert!(holds(&meta(&["a", "cyclr.com/account"]), ours));
        assert!(!holds(&meta(&["cyclr.com/account"]), None));
    }
}
