//! The only Secrets the operator reads: those labelled `cyclr.com/credentials: "true"`,
//! cached by one label-selected watch, so it neither caches unrelated Secrets nor can be
//! pointed at one. Every value it holds is also what [`Secrets::scrub`] removes from text
//! bound for status, Events and logs.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

/// The label a Secret must carry for the operator to read it.
pub const CREDENTIALS_LABEL: &str = "cyclr.com/credentials";

/// The label selector of the Secret watch.
pub fn selector() -> String {
    format!("{CREDENTIALS_LABEL}=true")
}

/// What looking a Secret up found.
pub enum Lookup {
    Found(Arc<Secret>),
    /// It exists but lacks the label: the operator does not read it.
    NotLabelled,
    Missing,
}

/// The labelled Secrets, from the watch.
#[derive(Clone)]
pub struct Secrets {
    store: Store<Secret>,
    client: Client,
}

impl Secrets {
    pub fn new(store: Store<Secret>, client: Client) -> Self {
        Secrets { store, client }
    }

    /// The Secret `namespace/name` if it is labelled. A miss is told apart from a missing
    /// label by a metadata-only GET, which reads no values.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Lookup, kube::Error> {
        if let Some(secret) = self.store.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Lookup::Found(secret));
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        Ok(match api.get_metadata_opt(name).await? {
            Some(_) => Lookup::NotLabelled,
            None => Lookup::Missing,
        })
    }

    /// `text` with every value of every labelled Secret (and its base64 form, as a basic-auth
    /// header would carry it) replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        use base64::Engine as _;
        let mut out = text.to_string();
        for secret in self.store.state() {
            for value in secret.data.iter().flat_map(|d| d.values()) {
                let Ok(plain) = std::str::from_utf8(&value.0) else {
                    continue;
                };
                let plain = plain.trim();
                // Very short values would redact ordinary words; they are not credentials.
                if plain.len() < 4 {
                    continue;
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
                out = out.replace(plain, "[redacted]").replace(&encoded, "[redacted]");
            }
        }
        out
    }
}

/// A value of a Secret's `data`, as text.
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}
