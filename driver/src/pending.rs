//! The pending-write protocol, for every kind that makes a write that is not idempotent (a
//! create that a repeat would duplicate):
//!
//! 1. **mark**: before the write, status records [`PendingWrite`]: when it started, by when it
//!    surely ended (the client's deadline), what it sends (what identifies the object it
//!    makes) and the ids of look-alikes that existed before. Written with a resourceVersion
//!    precondition, so two writers cannot both start.
//! 2. **remember**: once the write ended, this process keeps an [`Attempt`] in memory (when it
//!    ended, what it made, or that its response was lost) until the watch shows the outcome:
//!    the status write recording it can fail, and the watch can lag behind our own marker.
//! 3. **judge**: a kind decides what a lost write did only from a look taken after the write
//!    ended ([`Pending::judge_after`]), searching for what the write *sent* (the spec may have
//!    changed since), never adopting a look-alike that existed before it.
//! 4. **wait for the watch**: a cached object that shows neither the marker nor the outcome
//!    of a write this process knows of is older than our own writes: no decision from it
//!    until [`STALE_AFTER`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stable_hash;

/// A write whose outcome is not recorded yet. Kept in status, written with a resourceVersion
/// precondition before the write is sent, so only the operator can set it and two writers
/// cannot both start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingWrite {
    /// When the attempt started (RFC 3339).
    pub since: String,
    /// By when the attempt has surely ended, answered or given up by the client (RFC 3339):
    /// `since` plus the client's deadline. After a restart, the outcome is judged only from a
    /// look taken after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// What identifies the object the write makes, as sent (e.g. an account's name): a
    /// lost write is looked for under this, even if the spec changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// Ids of look-alike objects (the same `sent`) that existed before the attempt: never
    /// adopted as ours.
    #[serde(default, rename = "existingIDs", skip_serializing_if = "Vec::is_empty")]
    pub existing_ids: Vec<String>,
}

/// What a kind says about a non-idempotent write it decided on; the driver turns it into the
/// [`PendingWrite`] marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent<R> {
    /// What identifies the object the write makes, as sent.
    pub sent: String,
    /// Look-alikes that exist before the write.
    pub existing_ids: Vec<String>,
    /// The longest the write can take, retries included (the client's deadline).
    pub lasts: Duration,
    /// The reason status shows while the write is under way (e.g. `Creating`).
    pub reason: R,
    /// The message status shows while the write is under way.
    pub message: String,
}

/// A write this process sent that did or may have made something, kept in memory until the
/// object shows its outcome (or is deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When it ended (answered or failed).
    pub ended: DateTime<Utc>,
    /// What identified it ([`Intent::sent`]).
    pub sent: String,
    /// What it made (an id), or `None` when its response was lost.
    pub made: Option<String>,
}

/// How long an object showing neither the pending marker nor the outcome of a write this
/// process made is taken as stale: the watch catches up well within it.
pub const STALE_AFTER: TimeDelta = TimeDelta::minutes(5);

/// The pending write as a kind's `decide` sees it: the marker in the object's status and this
/// process's attempt, if any.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    /// The marker in status.
    pub marker: Option<PendingWrite>,
    /// This process's latest attempt for the object.
    pub attempt: Option<Attempt>,
}

impl Pending {
    /// Whether a write was started and its outcome is not recorded (the marker is set).
    pub fn is_open(&self) -> bool {
        self.marker.is_some()
    }

    /// What the open write sent, if the marker says (markers older than this field do not).
    pub fn sent(&self) -> Option<&str> {
        self.marker.as_ref()?.sent.as_deref()
    }

    /// Whether `id` existed before the open write started (never ours).
    pub fn existed_before(&self, id: &str) -> bool {
        self.marker
            .as_ref()
            .is_some_and(|m| m.existing_ids.iter().any(|e| e == id))
    }

    /// When the open write started: a look taken before it cannot show what it made.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        parse(&self.marker.as_ref()?.since)
    }

    /// How long until the open write may be judged to have made nothing (see
    /// [`Pending::judge_after`]), if that is still ahead of `now`.
    pub fn wait_to_judge(&self, now: DateTime<Utc>) -> Option<Duration> {
        (self.judge_after()? - now).to_std().ok().filter(|d| !d.is_zero())
    }

    /// The earliest a look may be taken to judge the open write: after it ended, as this
    /// process saw it end, or else after the client's deadline recorded in the marker (a
    /// write abandoned at a restart may still be applied until then). `None` when no write
    /// is open.
    pub fn judge_after(&self) -> Option<DateTime<Utc>> {
        let marker = self.marker.as_ref()?;
        let since = parse(&marker.since);
        let ended = match &self.attempt {
            Some(attempt) => Some(attempt.ended),
            None => marker.until.as_deref().and_then(parse),
        };
        since.into_iter().chain(ended).max()
    }

    /// What this process's attempt made, when it was answered: the outcome the watch may not
    /// show yet.
    pub fn made(&self) -> Option<&str> {
        self.attempt.as_ref()?.made.as_deref()
    }

    /// Whether the object is older than our own marker: this process sent a write whose
    /// outcome it does not know, yet the object shows no marker, and not for long.
    pub fn behind_our_marker(&self, now: DateTime<Utc>) -> bool {
        self.marker.is_none()
            && self
                .attempt
                .as_ref()
                .is_some_and(|a| a.made.is_none() && now - a.ended < STALE_AFTER)
    }
}

/// The marker for `intent`, stamped `now`.
pub fn mark<R>(intent: &Intent<R>, now: DateTime<Utc>) -> PendingWrite {
    let until = now + TimeDelta::from_std(intent.lasts).unwrap_or(TimeDelta::MAX);
    PendingWrite {
        since: now.to_rfc3339_opts(SecondsFormat::Micros, true),
        until: Some(until.to_rfc3339_opts(SecondsFormat::Micros, true)),
        sent: Some(intent.sent.clone()),
        existing_ids: intent.existing_ids.clone(),
    }
}

fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|d| d.with_timezone(&Utc))
}

/// Each object's latest attempt, by a hash of its uid.
#[derive(Default)]
pub struct Attempts {
    by_uid: Mutex<HashMap<u64, Attempt>>,
}

impl Attempts {
    /// The object's attempt, forgotten once `settled` (its status shows the outcome and no
    /// marker): 10,000 Ready objects keep none.
    pub fn get(&self, uid: &str, settled: bool) -> Option<Attempt> {
        let mut map = self.by_uid.lock().expect("lock");
        let key = stable_hash(uid);
        if settled {
            map.remove(&key);
            return None;
        }
        map.get(&key).cloned()
    }

    /// Records how a write ended: `Some` to remember it (it did or may have made something),
    /// `None` when it was refused (nothing made, nothing to remember).
    pub fn ended(&self, uid: &str, attempt: Option<Attempt>) {
        let mut map = self.by_uid.lock().expect("lock");
        match attempt {
            Some(attempt) => map.insert(stable_hash(uid), attempt),
            None => map.remove(&stable_hash(uid)),
        };
    }

    /// Drops the object's attempt (deleted).
    pub fn forget(&self, uid: &str) {
        self.by_uid.lock().expect("lock").remove(&stable_hash(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(second, 0).unwrap()
    }

    fn marker(since: i64, lasts: u64) -> PendingWrite {
        mark(
            &Intent {
                sent: "acme".into(),
                existing_ids: vec!["old".into()],
                lasts: Duration::from_secs(lasts),
                reason: (),
                message: String::new(),
            },
            at(since),
        )
    }

    #[test]
    fn a_write_is_judged_after_it_ended_or_after_the_clients_deadline() {
        let open = Pending {
            marker: Some(marker(100, 30)),
            attempt: None,
        };
        assert_eq!(open.judge_after(), Some(at(130)), "after a restart: the deadline");
        assert_eq!(open.since(), Some(at(100)));
        assert_eq!(open.wait_to_judge(at(120)), Some(Duration::from_secs(10)));
        assert_eq!(open.wait_to_judge(at(130)), None);
        let ended = Pending {
            attempt: Some(Attempt {
                ended: at(104),
                sent: "acme".into(),
                made: None,
            }),
            ..open.clone()
        };
        assert_eq!(ended.judge_after(), Some(at(104)), "this process saw it end");
        assert_eq!(Pending::default().judge_after(), None);
        assert_eq!(open.sent(), Some("acme"));
        assert!(open.existed_before("old") && !open.existed_before("new"));
    }

    #[test]
    fn an_object_without_our_marker_is_behind_only_for_an_unanswered_recent_write() {
        let lost = Attempt {
            ended: at(100),
            sent: "acme".into(),
            made: None,
        };
        let behind = Pending {
            marker: None,
            attempt: Some(lost.clone()),
        };
        assert!(behind.behind_our_marker(at(101)));
        assert!(!behind.behind_our_marker(at(100 + 301)), "stale after five minutes");
        let answered = Pending {
            marker: None,
            attempt: Some(Attempt {
                made: Some("id".into()),
                ..lost
            }),
        };
        assert!(!answered.behind_our_marker(at(101)));
        assert_eq!(answered.made(), Some("id"));
    }

    #[test]
    fn attempts_are_forgotten_once_settled() {
        let attempts = Attempts::default();
        let attempt = Attempt {
            ended: at(1),
            sent: "acme".into(),
            made: Some("id".into()),
        };
        attempts.ended("u1", Some(attempt.clone()));
        assert_eq!(attempts.get("u1", false), Some(attempt));
        assert_eq!(attempts.get("u1", true), None);
        assert_eq!(attempts.get("u1", false), None, "forgotten");
        attempts.ended("u2", None);
        assert_eq!(attempts.get("u2", false), None);
    }
}
