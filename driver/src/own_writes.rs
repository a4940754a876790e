//! The resourceVersions of each object that are older than this process's own last write to
//! it, so no decision is made from a cache that has not seen our write yet.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::ObjectMeta;

use crate::stable_hash;

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
    pub fn wrote(&self, read: &ObjectMeta, written: &ObjectMeta) {
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
    pub fn cache_behind(&self, cached: &ObjectMeta) -> bool {
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
