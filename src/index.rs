//! Who holds what: one index, fed by watch events, answering "which resource holds this
//! Cyclr account" and "which install has this name in this account". Claims made by this
//! process are recorded at once, before the watch reports them, so two reconciles running
//! side by side can never both take the same thing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

/// A resource holding a claim. Ordered oldest first, so when two claim the same thing
/// (across operators), every observer agrees the oldest keeps it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// creationTimestamp as RFC 3339 (sorts by time).
    pub created: String,
    pub uid: String,
    /// `namespace/name`, for messages.
    pub name: String,
}

impl Holder {
    pub fn of(meta: &ObjectMeta) -> Holder {
        Holder {
            created: meta
                .creation_timestamp
                .as_ref()
                .map(|Time(t)| t.to_string())
                .unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            name: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// Keys (account ids, install names) → the resources holding them.
#[derive(Default)]
pub struct ClaimIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    holders: HashMap<String, BTreeSet<Holder>>,
    /// What each resource (uid) holds, so an update or delete drops its old keys.
    keys: HashMap<String, (Holder, Vec<String>)>,
}

impl ClaimIndex {
    /// Records what `holder` holds now (from a watch event), replacing what it held before.
    pub fn set(&self, holder: Holder, keys: Vec<String>) {
        let mut inner = self.inner.lock().expect("lock");
        inner.remove(&holder.uid);
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            inner.holders.entry(key.clone()).or_default().insert(holder.clone());
        }
        inner.keys.insert(holder.uid.clone(), (holder, keys));
    }

    /// Drops everything the resource `uid` held (deleted).
    pub fn remove(&self, uid: &str) {
        self.inner.lock().expect("lock").remove(uid);
    }

    /// The oldest holder of `key` other than `uid`, if any.
    pub fn held_by_other(&self, key: &str, uid: &str) -> Option<Holder> {
        let inner = self.inner.lock().expect("lock");
        inner.holders.get(key)?.iter().find(|h| h.uid != uid).cloned()
    }

    /// Claims `key` for `holder` unless an older resource holds it; adds it to what the
    /// holder already holds. Returns the holder that keeps it when that is another.
    pub fn claim(&self, key: &str, holder: &Holder) -> Result<(), Holder> {
        let mut inner = self.inner.lock().expect("lock");
        if let Some(first) = inner.holders.get(key).and_then(|h| h.iter().next())
            && first.uid != holder.uid
            && *first < *holder
        {
            return Err(first.clone());
        }
        inner.holders.entry(key.to_string()).or_default().insert(holder.clone());
        let entry = inner
            .keys
            .entry(holder.uid.clone())
            .or_insert_with(|| (holder.clone(), Vec::new()));
        if !entry.1.iter().any(|k| k == key) {
            entry.1.push(key.to_string());
        }
        Ok(())
    }
}

impl Inner {
    fn remove(&mut self, uid: &str) {
        if let Some((holder, keys)) = self.keys.remove(uid) {
            for key in keys {
                if let Some(set) = self.holders.get_mut(&key) {
                    set.remove(&holder);
                    if set.is_empty() {
                        self.holders.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(uid: &str, created: &str) -> Holder {
        Holder {
            created: created.into(),
            uid: uid.into(),
            name: format!("ns/{uid}"),
        }
    }

    #[test]
    fn the_oldest_holder_keeps_a_claim() {
        let index = ClaimIndex::default();
        let (old, new) = (holder("a", "2026-01-01T00:00:00Z"), holder("b", "2026-02-01T00:00:00Z"));
        index.claim("id1", &new).unwrap();
        index.claim("id1", &old).unwrap();
        assert_eq!(index.claim("id1", &new), Err(old.clone()));
        assert_eq!(index.held_by_other("id1", "b"), Some(old));
        assert_eq!(index.held_by_other("id1", "zzz").unwrap().uid, "a");
    }

    #[test]
    fn watch_updates_replace_and_deletes_release() {
        let index = ClaimIndex::default();
        let a = holder("a", "1");
        index.set(a.clone(), vec!["id1".into()]);
        assert!(index.held_by_other("id1", "x").is_some());
        index.set(a.clone(), vec!["id2".into()]);
        assert!(index.held_by_other("id1", "x").is_none());
        assert!(index.held_by_other("id2", "x").is_some());
        index.remove("a");
        assert!(index.held_by_other("id2", "x").is_none());
        assert!(index.claim("id2", &holder("b", "2")).is_ok());
    }
}
