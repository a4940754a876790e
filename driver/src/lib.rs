//! The reconcile engine of cyclr-operator. It knows Kubernetes (kube-rs), not Cyclr: the
//! operator's kinds plug into it through [`Reconciler`], and the compiler keeps this crate
//! from importing them.
//!
//! One object's way from its watch event to its status write:
//!
//! ```text
//! watch ─► pack (Packed) ─► wake filter (spec, pause, deletion) ─► resync queue (Resyncs)
//!       ─► reconcile: gates ─► look (observe → decide) ─► mark ─► act ─► record ─► requeue
//! ```
//!
//! Every promise the kinds share is kept here, once:
//!
//! 1. a malformed object is reported, never breaks the watch;
//! 2. deletion needs no finalizer (Orphan) unless the kind says an object needs one
//!    ([`Reconciler::needs_finalizer`]): the driver adds it before the first write, runs
//!    [`Reconciler::cleanup`] on deletion (pause and backoff hold it too) and removes it once
//!    the cleanup is done; per-object state and metric series are dropped on the watch's
//!    Delete event ([`Reconciler::forget`], [`Metrics::forget`]);
//! 3. the backoff gate: after a failure nothing reaches Cyclr before the backoff (or a 429's
//!    hold) ends, unless the spec changed;
//! 4. pause (`cyclr.com/paused: "true"`): no external call, the spec is not marked observed;
//!    nor is it while the kind says the external system does not show it yet
//!    ([`Reconciler::spec_applied`]);
//! 5. the stalled gate: a terminal failure waits for a new generation;
//! 6. the pending-write protocol ([`pending`]): a non-idempotent write is recorded in status
//!    first, with a resourceVersion precondition and what it sends, remembered in memory
//!    once it ended, and judged only from a look taken after it ended;
//! 7. one status comparison and at most one status write per reconcile (plus the pending
//!    marker before a write), `lastSyncTime` only when something else changed;
//! 8. one failure → condition table (the kind's [`Fault::health`]), messages scrubbed of
//!    secrets and capped in size;
//! 9. Events: Normal for what a kind did, Warning when a failure reason first appears;
//! 10. requeue: resync when Ready (compact timers, [`Resyncs`]), backoff when failing,
//!     nothing when stalled or paused;
//! 11. no decision from a cached object older than this process's own last write to it
//!     ([`OwnWrites`]).

#![warn(missing_docs)]

mod backoff;
pub mod conditions;
mod controller;
mod health;
mod kind;
mod own_writes;
mod packed;
pub mod pending;
pub mod readiness;
mod reconcile;
mod resync;
mod watched;

use std::time::Duration;

use rand::Rng;

pub use backoff::Backoffs;
pub use controller::{
    Driver, DriverConfig, Kind, KindConfig, Metrics, ReconcileResult, controller_for, error_policy, report,
};
pub use health::{Health, State};
pub use kind::{Applied, Cleanup, Facts, Fault, ManagedStatus, Note, Plan, ReasonCode, Reconciler};
pub use own_writes::OwnWrites;
pub use packed::{Packed, pack_event};
pub use pending::{Attempt, Intent, Pending, PendingWrite};
pub use reconcile::{Error, reconcile};
pub use resync::Resyncs;
pub use watched::Watched;

/// The annotations the driver reads and writes on every kind.
pub mod annotations {
    /// `"true"` pauses reconciliation: no external call, status says Paused.
    pub const PAUSED: &str = "cyclr.com/paused";
}

/// The value of annotation `key`, if set.
pub fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether `obj`'s status says its spec is applied with nothing under way: Ready for its
/// generation, no pending write, not being deleted. Such an object has nothing to do until
/// something it looks at changes, or its own resync comes.
pub fn is_settled<K: Reconciler>(obj: &K) -> bool {
    let meta = obj.meta();
    obj.status().is_some_and(|status| {
        meta.deletion_timestamp.is_none()
            && status.observed_generation() == meta.generation
            && status.pending().is_none()
            && status
                .conditions()
                .iter()
                .any(|c| c.type_ == conditions::READY && c.status == "True")
    })
}

/// Whether the object is paused by `cyclr.com/paused: "true"` (any case).
pub fn is_paused(meta: &kube::api::ObjectMeta) -> bool {
    annotation(meta, annotations::PAUSED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A 64-bit hash of `value`, the same on every thread for the life of the process (keys of
/// the per-object maps, where a string uid would cost 60 bytes more per object). Not stable
/// across Rust versions: nothing compares it between processes.
pub fn stable_hash(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// `interval` less up to 10% (uniform), so objects requeued together spread out over time.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..1.0))
}

/// `text` cut to at most `max` bytes (on a character boundary), the cut said, so a message
/// from outside can never make a condition or an Event too large to write (the API server
/// refuses an Event note over 1 KiB; a large status can make an object unwritable).
pub fn capped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let marker = format!("… [{} bytes cut]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end]).into()
}

/// The backoff of every watch: from 0.8 s, doubling, jittered, up to a minute (kube's default
/// stops at 30 s). A watch whose resource is gone (its CRD deleted) then retries calmly, about
/// once a minute, and recovers by itself when the resource is back; after two quiet minutes
/// it starts from 0.8 s again.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    use backon::ExponentialBuilder;
    let exponential = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

/// The longest message a condition or an Event note carries, in bytes.
pub const MESSAGE_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_back_off_to_about_a_minute() {
        let delays: Vec<Duration> = watch_backoff().take(12).collect();
        assert!(delays[0] <= Duration::from_millis(1600), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(120)), "{delays:?}");
        assert!(
            delays[11] >= Duration::from_secs(60),
            "a minute apart at last: {delays:?}"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(capped("short", 1024), "short");
        let long = "é".repeat(150_000);
        let cut = capped(&long, MESSAGE_MAX);
        assert!(cut.len() <= MESSAGE_MAX, "{}", cut.len());
        assert!(cut.ends_with("… [300000 bytes cut]"), "{cut}");
        assert!(cut.starts_with("éé"));
    }
}
