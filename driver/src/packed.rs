//! The watch cache's form of an object: what kube's controller and the wake filter read, and
//! the rest packed as JSON, decoded by the reconcile that works on it.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kube::Resource;
use kube::api::ObjectMeta;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer};

use crate::{Reconciler, Watched, annotations, is_paused, stable_hash};

/// A watched object as the cache holds it: its name, namespace, uid, resourceVersion,
/// generation and deletionTimestamp (what kube's controller, the wake filter and
/// [`OwnWrites`](crate::OwnWrites) read; plus the pause annotation when set), and everything
/// else as the JSON the API server sent, less the field managers, the labels (the label
/// selector is applied by the API server) and kubectl's last-applied copy, which no reconcile
/// reads.
///
/// Why: decoded, a CyclrAccount with its usage and three conditions is about 2.6 KiB of heap
/// (an annotation map alone is a 0.5 KiB B-tree node, each condition four strings); as JSON
/// it is about 1.2 KB, compressed (see [`Body`]) a fraction of that. With 100,000
/// accounts that is the largest part of the operator's memory. A reconcile decodes the one
/// object it works on.
#[derive(Clone)]
pub struct Packed<K> {
    metadata: ObjectMeta,
    /// The rest of the object, or why it could not be read.
    body: Result<Body, Arc<str>>,
    /// A hash of [`Reconciler::depends_on`] (0 for none).
    depends_on: u64,
    /// When the watch delivered this version: the object existed then.
    seen_at: DateTime<Utc>,
    /// Whether the identity annotation shows the external id status holds (`None`: status
    /// holds none): a dropped annotation (a `kubectl replace`, say) is written back.
    identity_recorded: Option<bool>,
    /// A hash of the external id ([`stable_hash`]) when the object is settled
    /// ([`is_settled`](crate::is_settled)) and the id recorded in its annotation; 0 otherwise.
    settled: u64,
    kind: PhantomData<fn() -> K>,
}

impl<K: Reconciler> Packed<K> {
    /// Packs an object from the watch (or why it could not be read).
    pub fn pack(guard: Watched<K>) -> Self {
        let seen_at = Utc::now();
        match guard.0 {
            Ok(mut obj) => {
                let depends_on = obj.depends_on().map_or(0, |on| stable_hash(&on));
                let identity_recorded = obj
                    .status()
                    .and_then(K::identity)
                    .map(|(key, id)| crate::annotation(obj.meta(), key) == Some(id.as_str()));
                let settled = settled_identity(&obj, identity_recorded);
                let meta = obj.meta_mut();
                meta.managed_fields = None;
                meta.labels = None;
                if let Some(annotations) = &mut meta.annotations {
                    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
                let metadata = lean(meta);
                // Kept once, in `metadata`; restored by `unpack`.
                (meta.name, meta.namespace, meta.uid, meta.resource_version) = (None, None, None, None);
                let body = serde_json::to_vec(&obj)
                    .map(|json| Body::compress::<K>(&json))
                    .map_err(|e| Arc::from(e.to_string()));
                Packed {
                    metadata,
                    body,
                    depends_on,
                    seen_at,
                    identity_recorded,
                    settled,
                    kind: PhantomData,
                }
            }
            Err(invalid) => Packed {
                metadata: lean(&invalid.metadata),
                body: Err(Arc::from(invalid.error)),
                depends_on: 0,
                seen_at,
                identity_recorded: None,
                settled: 0,
                kind: PhantomData,
            },
        }
    }

    /// The whole object, as the watch delivered it (less what `pack` dropped).
    ///
    /// Errors: why the object could not be read (a spec the operator's types reject).
    pub fn unpack(&self) -> Result<K, Box<InvalidObject>> {
        let invalid = |error: String| {
            Box::new(InvalidObject {
                error,
                metadata: self.metadata.clone(),
            })
        };
        let body = self.body.as_ref().map_err(|e| invalid(e.to_string()))?;
        let json = body.decompress().map_err(|e| invalid(e.to_string()))?;
        let mut obj: K = serde_json::from_slice(&json).map_err(|e| invalid(e.to_string()))?;
        let meta = obj.meta_mut();
        meta.name.clone_from(&self.metadata.name);
        meta.namespace.clone_from(&self.metadata.namespace);
        meta.uid.clone_from(&self.metadata.uid);
        meta.resource_version.clone_from(&self.metadata.resource_version);
        Ok(obj)
    }

    /// When the watch delivered this version of the object (so it existed then): a list of
    /// Cyclr accounts taken later shows every account made before the object was.
    pub fn seen_at(&self) -> DateTime<Utc> {
        self.seen_at
    }

    /// Whether the identity annotation shows the external id status holds (`None`: status
    /// holds none).
    pub fn identity_recorded(&self) -> Option<bool> {
        self.identity_recorded
    }

    /// Whether a change of the external objects whose ids hash to `changed` ([`stable_hash`]
    /// of each id) can pass this object over: it is settled (see [`Packed`]'s fields) and its
    /// own id is not among them. Reads no body.
    pub fn settled_apart_from(&self, changed: &std::collections::HashSet<u64>) -> bool {
        self.settled != 0 && !changed.contains(&self.settled)
    }

    /// Whether this object depends on the object `name` (in `namespace`, for a namespaced
    /// one), by [`Reconciler::depends_on`]. Reads no body; a hash collision (odds about
    /// 1 in 2^64 per pair) only wakes one object more.
    pub fn depends_on(&self, namespace: Option<&str>, name: &str) -> bool {
        self.depends_on != 0 && self.depends_on == stable_hash(&(namespace, name))
    }
}

/// An object's JSON, compressed with LZ4 (`lz4_flex`'s block format, its length prepended)
/// against a dictionary: the largest body of the same kind packed before it. Objects of a
/// kind share most of their JSON (field names, condition reasons and messages, the partner's
/// name, the finalizer), so most of a body is references into the dictionary: with 3,000
/// accounts the heap held 1.3 KiB less per account than with plain JSON (a heap profile of
/// `make bench`, docs/performance.md). Compressing or decompressing one takes microseconds.
///
/// Shared: kube's cache stores a clone of each object the watch delivers, which then costs no
/// second body; the dictionary is held by the bodies compressed against it, so a newer one
/// can replace it at any time.
#[derive(Clone)]
struct Body {
    compressed: Arc<[u8]>,
    dictionary: Arc<[u8]>,
}

/// A kind's dictionary, by the kind's type name.
type Dictionary = (&'static str, Arc<[u8]>);

/// Each kind's dictionary.
static DICTIONARIES: Mutex<Vec<Dictionary>> = Mutex::new(Vec::new());

/// A dictionary larger than this is not taken: an outsized object (a long message) would be
/// kept alive by every body after it for no better compression.
const MAX_DICTIONARY: usize = 4096;

impl Body {
    fn compress<K>(json: &[u8]) -> Body {
        let dictionary = {
            let mut dictionaries = DICTIONARIES.lock().expect("lock");
            let kind = std::any::type_name::<K>();
            let index = match dictionaries.iter().position(|(k, _)| *k == kind) {
                Some(index) => index,
                None => {
                    dictionaries.push((kind, Arc::from(&[][..])));
                    dictionaries.len() - 1
                }
            };
            let current = &mut dictionaries[index].1;
            if json.len() > current.len() && json.len() <= MAX_DICTIONARY {
                *current = Arc::from(json);
            }
            current.clone()
        };
        Body {
            compressed: lz4_flex::block::compress_prepend_size_with_dict(json, &dictionary).into(),
            dictionary,
        }
    }

    /// Errors: only for bytes this module did not write.
    fn decompress(&self) -> Result<Vec<u8>, lz4_flex::block::DecompressError> {
        lz4_flex::block::decompress_size_prepended_with_dict(&self.compressed, &self.dictionary)
    }
}

/// The metadata the cache keeps in the clear.
/// The hash of `obj`'s external id when it is settled (0 otherwise): see [`Packed`].
fn settled_identity<K: Reconciler>(obj: &K, identity_recorded: Option<bool>) -> u64 {
    match obj.status().and_then(K::identity) {
        Some((_, id)) if identity_recorded == Some(true) && crate::is_settled(obj) => stable_hash(id.as_str()),
        _ => 0,
    }
}

fn lean(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp.clone(),
        annotations: is_paused(meta).then(|| [(annotations::PAUSED.to_owned(), "true".to_owned())].into()),
        ..ObjectMeta::default()
    }
}

/// A watch event with its object packed.
pub fn pack_event<K: Reconciler>(event: watcher::Event<Watched<K>>) -> watcher::Event<Packed<K>> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(Packed::pack(obj)),
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(Packed::pack(obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(Packed::pack(obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

impl<K: Reconciler> Resource for Packed<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kube's controller asks for it; the operator's watch packs after deserializing instead.
impl<'de, K: Reconciler> Deserialize<'de> for Packed<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Watched::<K>::deserialize(deserializer).map(Packed::pack)
    }
}

impl<K> fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packed")
            .field("metadata", &self.metadata)
            .field("body_bytes", &self.body.as_ref().map(|b| b.compressed.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::tests::Widget;

    fn account(annotations: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "test.cyclr.com/v1",
            "kind": "Widget",
            "metadata": {
                "name": "acme", "namespace": "team-a", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "labels": {"team": "a"}, "annotations": annotations,
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"ownerRef": {"name": "prod"}, "name": "Acme"},
            "status": {"widgetID": "c-1", "observedGeneration": 3, "conditions": [{
                "type": "Ready", "status": "True", "reason": "Synced", "message": "in sync",
                "lastTransitionTime": "2026-12-06T12:00:00Z", "observedGeneration": 3,
            }]},
        })
    }

    fn packed(json: &serde_json::Value) -> Packed<Widget> {
        serde_json::from_value(json.clone()).unwrap()
    }

    #[test]
    fn unpacking_gives_the_object_less_what_no_reconcile_reads() {
        let json = account(serde_json::json!({
            "cyclr.com/account-id": "c-1",
            "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
        }));
        let mut expected: Widget = serde_json::from_value(json.clone()).unwrap();
        expected.metadata.managed_fields = None;
        expected.metadata.labels = None;
        expected.metadata.annotations = Some([("cyclr.com/account-id".to_owned(), "c-1".to_owned())].into());
        let packed = packed(&json);
        let unpacked = packed.unpack().unwrap();
        assert_eq!(
            serde_json::to_value(&unpacked).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        let meta = packed.meta();
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref(), meta.uid.as_deref()),
            (Some("acme"), Some("team-a"), Some("u-1"))
        );
        assert_eq!(
            (meta.resource_version.as_deref(), meta.generation),
            (Some("42"), Some(3))
        );
        assert!(
            meta.annotations.is_none() && meta.labels.is_none() && meta.managed_fields.is_none(),
            "kept only in the body"
        );
        let json = packed.body.as_ref().unwrap().decompress().unwrap();
        let body = std::str::from_utf8(&json).unwrap();
        assert!(!body.contains("team-a") && !body.contains("u-1"), "kept once: {body}");
    }

    #[test]
    fn bodies_compress_against_an_earlier_object_of_the_kind_and_outlive_its_replacement() {
        let named = |name: &str, message: &str| {
            let mut json = account(serde_json::json!({"cyclr.com/account-id": format!("id-{name}")}));
            json["metadata"]["name"] = name.into();
            json["spec"]["name"] = name.into();
            json["status"]["conditions"][0]["message"] = message.into();
            json
        };
        let first = packed(&named("first", "in sync"));
        let second = packed(&named("second", "in sync"));
        let body = second.body.as_ref().unwrap();
        let json = body.decompress().unwrap();
        assert!(
            body.compressed.len() * 3 < json.len(),
            "{} bytes compressed from {}",
            body.compressed.len(),
            json.len()
        );
        // A larger object becomes the dictionary; what was packed before still unpacks.
        let larger = packed(&named("third", &"a much longer message ".repeat(30)));
        let sizes = |p: &Packed<Widget>| {
            let body = p.body.as_ref().unwrap();
            (body.dictionary.len(), body.decompress().unwrap().len())
        };
        let (replaced, _) = sizes(&first);
        let (dictionary, len) = sizes(&larger);
        assert!(replaced < len && dictionary >= len, "{replaced}, {dictionary}, {len}");
        for (packed, name) in [(first, "first"), (second, "second"), (larger, "third")] {
            assert_eq!(packed.unpack().unwrap().spec.name.as_deref(), Some(name));
        }
    }

    #[test]
    fn the_pause_annotation_stays_in_the_clear_for_the_wake_filter() {
        let packed = packed(&account(serde_json::json!({"cyclr.com/paused": "True"})));
        assert!(is_paused(packed.meta()));
        assert!(is_paused(&packed.unpack().unwrap().metadata));
        let running = self::packed(&account(serde_json::json!({"cyclr.com/paused": "false"})));
        assert!(!is_paused(running.meta()) && running.meta().annotations.is_none());
    }

    #[test]
    fn an_unreadable_object_keeps_its_name_and_why() {
        let mut json = account(serde_json::json!({}));
        json["spec"]["ownerRef"] = serde_json::json!(7);
        let packed = packed(&json);
        assert_eq!(packed.meta().name.as_deref(), Some("acme"));
        let invalid = packed.unpack().unwrap_err();
        assert_eq!(invalid.metadata.name.as_deref(), Some("acme"));
        assert!(invalid.error.contains("OwnerRef"), "{}", invalid.error);
    }

    #[test]
    fn a_settled_object_is_passed_over_by_changes_of_other_external_objects() {
        let settled = packed(&account(serde_json::json!({"cyclr.com/account-id": "c-1"})));
        let others = [stable_hash("c-2")].into();
        assert!(settled.settled_apart_from(&others));
        assert!(
            !settled.settled_apart_from(&[stable_hash("c-1")].into()),
            "its own changed"
        );
        let unsettled = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut json = account(serde_json::json!({"cyclr.com/account-id": "c-1"}));
            change(&mut json);
            !packed(&json).settled_apart_from(&others)
        };
        assert!(
            unsettled(&|j| j["metadata"]["annotations"] = serde_json::json!({})),
            "id not recorded"
        );
        assert!(unsettled(&|j| j["metadata"]["generation"] = 4.into()), "a newer spec");
        assert!(
            unsettled(&|j| j["status"]["conditions"][0]["status"] = "False".into()),
            "not Ready"
        );
        assert!(
            unsettled(&|j| j["status"]["widgetID"] = serde_json::Value::Null),
            "no id"
        );
        assert!(
            unsettled(&|j| j["metadata"]["deletionTimestamp"] = "2026-12-07T12:00:00Z".into()),
            "being deleted"
        );
    }

    #[test]
    fn dependants_are_found_by_the_object_they_name() {
        let packed = packed(&account(serde_json::json!({})));
        assert!(packed.depends_on(None, "prod"));
        assert!(!packed.depends_on(None, "staging"));
        assert!(
            !packed.depends_on(Some("team-a"), "prod"),
            "partners are cluster-scoped"
        );
    }
}
