//! Who holds what: one index, fed by watch events, answering "which resource holds this
//! Cyclr account" and "which install has this name in this account". Claims made by this
//! process are recorded at once, before the watch reports them, so two reconciles running
//! side by side can never both take the same thing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

use driver::stable_hash;

use crate::texts::Texts;

/// A resource holding a claim. Ordered oldest first, so when two claim the same thing
/// (across operators), every observer agrees the oldest keeps it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// creationTimestamp as RFC 3339 (sorts by time).
    pub created: String,
    /// The holder's uid.
    pub uid: String,
    /// `namespace/name`, for messages.
    pub name: String,
}

impl Holder {
    /// The holder described by an object's metadata.
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

/// Sized for a hundred thousand resources: a key is almost always held by one resource,
/// so its holders are a sorted `Vec` (a one-element `BTreeSet` allocates a node for eleven,
/// about 0.8 KiB), each holder is stored once ([`Kept`]) and shared by both maps, and keys
/// and uids are kept as 64-bit hashes (`stable_hash`). Two keys with the same hash (odds
/// about 10⁻⁹ among 100,000 keys) would read as one: a claim refused, never one shared.
#[derive(Default)]
struct Inner {
    /// By key hash, oldest first.
    holders: HashMap<u64, Vec<Arc<Kept>>>,
    /// What each resource (uid hash) holds, so an update or delete drops its old keys.
    keys: HashMap<u64, (Arc<Kept>, Box<[u64]>)>,
}

/// A holder as the index keeps it: its three texts in one allocation ([`Texts`]; about 140
/// bytes with the `Arc`, where a [`Holder`] takes four allocations and about 220).
struct Kept(Texts<3>);

impl Kept {
    fn new(holder: &Holder) -> Kept {
        Kept(Texts::new([
            Some(&holder.created),
            Some(&holder.uid),
            Some(&holder.name),
        ]))
    }

    fn uid(&self) -> &str {
        self.0.str(1)
    }

    fn holder(&self) -> Holder {
        let [created, uid, name] = self.order();
        Holder {
            created: created.to_owned(),
            uid: uid.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `Holder`'s order: oldest first (created, uid, name).
    fn order(&self) -> [&str; 3] {
        [self.0.str(0), self.0.str(1), self.0.str(2)]
    }
}

impl ClaimIndex {
    /// Records what `holder` holds now (from a watch event), replacing what it held before.
    pub fn set(&self, holder: Holder, keys: Vec<String>) {
        let mut inner = self.inner.lock().expect("lock");
        inner.remove(&holder.uid);
        if keys.is_empty() {
            return;
        }
        let kept = Arc::new(Kept::new(&holder));
        let keys: Box<[u64]> = keys.iter().map(|key| stable_hash(key.as_str())).collect();
        for key in &keys {
            inner.hold(*key, &kept);
        }
        inner.keys.insert(stable_hash(holder.uid.as_str()), (kept, keys));
    }

    /// Drops everything the resource `uid` held (deleted).
    pub fn remove(&self, uid: &str) {
        self.inner.lock().expect("lock").remove(uid);
    }

    /// The oldest holder of `key` other than `uid`, if any.
    pub fn held_by_other(&self, key: &str, uid: &str) -> Option<Holder> {
        let inner = self.inner.lock().expect("lock");
        inner
            .holders
            .get(&stable_hash(key))?
            .iter()
            .find(|h| h.uid() != uid)
            .map(|h| h.holder())
    }

    /// Claims `key` for `holder` unless an older resource holds it; adds it to what the
    /// holder already holds. Returns the holder that keeps it when that is another.
    pub fn claim(&self, key: &str, holder: &Holder) -> Result<(), Holder> {
        let key = stable_hash(key);
        let mut inner = self.inner.lock().expect("lock");
        if let Some(first) = inner.holders.get(&key).and_then(|h| h.first())
            && first.uid() != holder.uid
            && first.order() < [holder.created.as_str(), &holder.uid, &holder.name]
        {
            return Err(first.holder());
        }
        let (held_as, keys) = inner
            .keys
            .entry(stable_hash(holder.uid.as_str()))
            .or_insert_with(|| (Arc::new(Kept::new(holder)), Box::default()));
        let held_as = held_as.clone();
        if keys.contains(&key) {
            return Ok(());
        }
        *keys = keys.iter().copied().chain([key]).collect();
        inner.hold(key, &held_as);
        Ok(())
    }
}

impl Inner {
    fn hold(&mut self, key: u64, holder: &Arc<Kept>) {
        let holders = self.holders.entry(key).or_default();
        if let Err(at) = holders.binary_search_by(|h| h.order().cmp(&holder.order())) {
            holders.insert(at, holder.clone());
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some((holder, keys)) = self.keys.remove(&stable_hash(uid)) {
            for key in keys {
                if let Some(holders) = self.holders.get_mut(&key) {
                    holders.retain(|h| !Arc::ptr_eq(h, &holder));
                    if holders.is_empty() {
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

    #[test]
    fn a_key_held_twice_keeps_the_other_holder_when_one_goes() {
        let index = ClaimIndex::default();
        let (old, new) = (holder("a", "1"), holder("b", "2"));
        index.set(new.clone(), vec!["id1".into()]);
        index.set(old.clone(), vec!["id1".into(), "id2".into()]);
        assert_eq!(index.held_by_other("id1", "x"), Some(old.clone()), "oldest first");
        index.remove("a");
        assert_eq!(index.held_by_other("id1", "x"), Some(new));
        assert!(index.held_by_other("id2", "x").is_none());
        assert!(index.claim("id2", &holder("b", "2")).is_ok());
        assert_eq!(index.held_by_other("id2", "x").map(|h| h.uid), Some("b".into()));
    }
}
