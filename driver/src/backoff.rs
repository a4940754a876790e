//! Per-object memory of failures, for the backoff gate: after a failure nothing reaches the
//! external API before the backoff (or a 429's hold) ends, unless the spec changed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::stable_hash;

/// Per-object memory of failures, for the backoff gate.
#[derive(Default)]
pub struct Backoffs {
    by_uid: Mutex<HashMap<u64, BackoffState>>,
}

struct BackoffState {
    failures: usize,
    until: Instant,
    generation: Option<i64>,
}

impl Backoffs {
    /// Jittered exponential backoff from 1 s to 5 min (backon), or the partner's hold when
    /// Cyclr said how long, whichever is longer.
    pub fn failed(&self, uid: &str, generation: Option<i64>, retry_after: Option<Duration>) -> Duration {
        let mut map = self.by_uid.lock().expect("lock");
        let state = map.entry(stable_hash(uid)).or_insert(BackoffState {
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
    pub fn wait(&self, uid: &str, generation: Option<i64>) -> Option<Duration> {
        let map = self.by_uid.lock().expect("lock");
        let state = map.get(&stable_hash(uid))?;
        (state.generation == generation)
            .then(|| state.until.checked_duration_since(Instant::now()))
            .flatten()
            .filter(|d| !d.is_zero())
    }

    /// Forgets the object's failures (it succeeded).
    pub fn succeeded(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(&stable_hash(uid));
    }

    /// Drops the object's record (deleted).
    pub fn forget(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(&stable_hash(uid));
    }
}
