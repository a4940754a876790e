//! The resync timers of Ready objects, one small entry each.
//!
//! kube's controller could hold them (`Action::requeue`), but its scheduler keeps every timer
//! as a request holding the object's reference (name, namespace, uid, resourceVersion) twice,
//! about 0.7 KiB: 7 MiB for 10,000 Ready accounts (a heap profile of `make bench`). Here a
//! timer is a deadline and a name, about 100 bytes, and reaches kube's scheduler only when
//! due, through [`Resyncs::due`] (`Controller::reconcile_on`). The same queue takes every
//! other wake too (a watch event that changed the spec, pause or deletion; a partner's wake of
//! all its accounts): handed to kube's scheduler only a few at a time ([`HANDED_MAX`]), so the
//! 10,000 objects of a rollout never sit there at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::Resource;
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::stable_hash;

/// Objects handed to kube's scheduler whose reconcile has not started yet, at most: enough
/// that a worker finishing a reconcile finds the next one waiting, few enough that the order
/// is this queue's (first due, first reconciled). kube's scheduler holds what its workers
/// cannot take yet in a hash set and takes from it in hash order: with 64 handed, about 50
/// accounts of a 1,000-account rollout waited there until the rollout's end (`make bench`,
/// p99 time to Ready equal to the whole rollout).
pub const HANDED_MAX: usize = 4;

/// A handed object whose reconcile never started (deleted meanwhile) stops counting after this.
const HANDED_FOR: Duration = Duration::from_secs(60);

/// One kind's resync timers. A reconcile takes its object's timer ([`Resyncs::take`]); a
/// Ready outcome sets the next one ([`Resyncs::schedule`]).
#[derive(Default)]
pub struct Resyncs {
    timers: Mutex<Timers>,
    /// A timer sooner than all others was set, or a handed reconcile started.
    changed: Notify,
}

#[derive(Default)]
struct Timers {
    /// Soonest first, by uid hash. An entry whose deadline `by_uid` no longer holds was
    /// replaced or taken, and is skipped when it comes up.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    /// uid hash → (deadline, `namespace/name`, or `name` when cluster-scoped).
    by_uid: HashMap<u64, (Instant, Box<str>)>,
    /// uid hash → when it was handed to kube's scheduler, until its reconcile starts.
    handed: HashMap<u64, Instant>,
}

impl Resyncs {
    /// Reconciles the object again `after` from now, replacing its earlier timer.
    pub fn schedule(&self, meta: &ObjectMeta, after: Duration) {
        self.set(meta, after, false);
    }

    /// The next resync of an object whose reconcile just ended, `after` from now, unless a
    /// sooner timer is set: a wake that came while it ran (its deletion, a spec change, a
    /// dependency) and is still waiting here must not be put off by a whole resync interval.
    pub fn resync(&self, meta: &ObjectMeta, after: Duration) {
        self.set(meta, after, true);
    }

    fn set(&self, meta: &ObjectMeta, after: Duration, keep_sooner: bool) {
        let deadline = Instant::now() + after;
        let uid = stable_hash(meta.uid.as_deref().unwrap_or_default());
        let name = match (&meta.namespace, &meta.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.clone(),
            (_, None) => return,
        };
        let mut timers = self.timers.lock().expect("lock");
        if keep_sooner && timers.by_uid.get(&uid).is_some_and(|(at, _)| *at <= deadline) {
            return;
        }
        let soonest = timers.queue.peek().map(|Reverse((at, _))| *at);
        timers.by_uid.insert(uid, (deadline, name.into_boxed_str()));
        timers.queue.push(Reverse((deadline, uid)));
        if soonest.is_none_or(|soonest| deadline < soonest) {
            self.changed.notify_one();
        }
    }

    /// Drops the object's timer: it is being reconciled now, or is gone.
    pub fn take(&self, meta: &ObjectMeta) {
        let uid = stable_hash(meta.uid.as_deref().unwrap_or_default());
        let mut timers = self.timers.lock().expect("lock");
        timers.by_uid.remove(&uid);
        if timers.handed.remove(&uid).is_some() && timers.handed.len() == HANDED_MAX - 1 {
            self.changed.notify_one();
        }
    }

    /// The objects whose timer is due, as they come due; never ends.
    pub fn due<K: Resource<DynamicType = ()>>(self: Arc<Self>) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        futures::stream::unfold(self, |resyncs| async move {
            loop {
                let soonest = match resyncs.pop_due(Instant::now()) {
                    Ok(name) => {
                        let object = match name.split_once('/') {
                            Some((namespace, name)) => ObjectRef::new(name).within(namespace),
                            None => ObjectRef::new(&name),
                        };
                        return Some((object, resyncs));
                    }
                    Err(soonest) => soonest,
                };
                // `notify_one` keeps a permit when nobody waits: a change since `pop_due`
                // is not missed.
                match soonest {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = resyncs.changed.notified() => {}
                        }
                    }
                    None => resyncs.changed.notified().await,
                }
            }
        })
    }

    /// The name of an object due at `now` (now handed), or else when to look again: the
    /// soonest deadline, or while [`HANDED_MAX`] are handed, when the oldest stops counting.
    fn pop_due(&self, now: Instant) -> Result<Box<str>, Option<Instant>> {
        let mut timers = self.timers.lock().expect("lock");
        timers.handed.retain(|_, at| now.duration_since(*at) < HANDED_FOR);
        if timers.handed.len() >= HANDED_MAX {
            return Err(timers.handed.values().min().map(|at| *at + HANDED_FOR));
        }
        while let Some(&Reverse((at, uid))) = timers.queue.peek() {
            if timers.by_uid.get(&uid).is_none_or(|(deadline, _)| *deadline != at) {
                timers.queue.pop();
                continue;
            }
            if at > now {
                return Err(Some(at));
            }
            timers.queue.pop();
            let (_, name) = timers.by_uid.remove(&uid).expect("checked above");
            timers.handed.insert(uid, now);
            return Ok(name);
        }
        Err(None)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectMeta::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_soonest_first_once_each_and_not_after_being_taken() {
        let resyncs = Arc::new(Resyncs::default());
        resyncs.schedule(&meta("a"), Duration::from_secs(30));
        resyncs.schedule(&meta("b"), Duration::from_secs(10));
        resyncs.schedule(&meta("c"), Duration::from_secs(20));
        resyncs.schedule(&meta("a"), Duration::from_secs(5)); // replaces a's 30 s timer
        resyncs.take(&meta("c")); // reconciled meanwhile, not Ready since
        let started = Instant::now();
        let mut due = Box::pin(resyncs.clone().due::<ConfigMap>());

        let first = due.next().await.unwrap();
        assert_eq!((first.name.as_str(), first.namespace.as_deref()), ("a", Some("ns")));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        resyncs.take(&meta("a"));
        assert_eq!(due.next().await.unwrap().name, "b");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        resyncs.take(&meta("b"));

        // Nothing left: a timer set now, sooner than anything, wakes the waiting stream.
        let waiting = tokio::spawn(async move { due.next().await.map(|o| o.name) });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!waiting.is_finished(), "a's replaced and c's taken timers never fire");
        resyncs.schedule(&meta("d"), Duration::from_secs(1));
        assert_eq!(waiting.await.unwrap().as_deref(), Some("d"));
        assert_eq!(started.elapsed(), Duration::from_secs(111));
        resyncs.take(&meta("d"));
        let timers = resyncs.timers.lock().unwrap();
        assert!(timers.by_uid.is_empty() && timers.handed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_while_the_object_is_reconciled_is_not_put_off_by_its_resync() {
        let resyncs = Arc::new(Resyncs::default());
        resyncs.take(&meta("a")); // its reconcile starts
        resyncs.schedule(&meta("a"), Duration::ZERO); // the watch shows its deletion meanwhile
        resyncs.resync(&meta("a"), Duration::from_secs(600)); // the reconcile ends Ready
        let started = Instant::now();
        let mut due = Box::pin(resyncs.clone().due::<ConfigMap>());
        assert_eq!(due.next().await.unwrap().name, "a");
        assert_eq!(started.elapsed(), Duration::ZERO, "the wake, not the resync");
        resyncs.take(&meta("a"));

        // A later timer is replaced by the sooner resync.
        resyncs.schedule(&meta("b"), Duration::from_secs(900));
        resyncs.resync(&meta("b"), Duration::from_secs(600));
        assert_eq!(due.next().await.unwrap().name, "b");
        assert_eq!(started.elapsed(), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_of_many_reaches_kube_a_few_at_a_time() {
        let resyncs = Arc::new(Resyncs::default());
        let all: Vec<_> = (0..HANDED_MAX + 10).map(|i| meta(&format!("acct-{i}"))).collect();
        for m in &all {
            resyncs.schedule(m, Duration::ZERO);
        }
        let mut due = Box::pin(resyncs.clone().due::<ConfigMap>());
        let mut handed = Vec::new();
        for _ in 0..HANDED_MAX {
            handed.push(due.next().await.unwrap().name);
        }
        let more = tokio::time::timeout(Duration::from_secs(10), due.next()).await;
        assert!(more.is_err(), "no more while {HANDED_MAX} wait for their reconcile");

        // One reconcile starts: one more is handed, at once.
        let first = all
            .iter()
            .find(|m| m.name.as_deref() == Some(handed[0].as_str()))
            .unwrap();
        resyncs.take(first);
        let started = Instant::now();
        assert!(due.next().await.is_some());
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Reconciles that never start (their objects went) stop counting after a while.
        let rounds = 9_u32.div_ceil(HANDED_MAX as u32) + 1;
        let rest = tokio::time::timeout(HANDED_FOR * rounds, async {
            let mut n = 0;
            while n < 9 {
                due.next().await.unwrap();
                n += 1;
            }
        })
        .await;
        assert!(rest.is_ok(), "the other 9 come once the handed ones stop counting");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_scoped_object_comes_back_without_a_namespace() {
        let resyncs = Arc::new(Resyncs::default());
        let partner = ObjectMeta {
            namespace: None,
            ..meta("partner")
        };
        resyncs.schedule(&partner, Duration::from_secs(1));
        let due = Box::pin(resyncs.due::<ConfigMap>()).next().await.unwrap();
        assert_eq!((due.name.as_str(), due.namespace), ("partner", None));
    }
}
