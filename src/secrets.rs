//! The only Secrets the operator reads: those labelled `cyclr.com/credentials: "true"`,
//! cached by one label-selected watch, so it neither caches unrelated Secrets nor can be
//! pointed at one. Every value it holds is also what [`Secrets::scrub`] removes from text
//! bound for status, Events and logs.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

use crate::driver::Reason;

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

/// Why a referenced Secret cannot be used: the condition reason and its message.
pub type Unusable = (Reason, String);

impl Secrets {
    /// The values of `keys` in the labelled Secret `namespace/name`, in order, or why they
    /// cannot be had (missing, not labelled, a key missing), with the fix in the message.
    pub async fn values(
        &self,
        namespace: &str,
        name: &str,
        keys: &[&str],
    ) -> Result<Result<Vec<String>, Unusable>, kube::Error> {
        let secret = match self.get(namespace, name).await? {
            Lookup::Found(secret) => secret,
            Lookup::Missing => {
                return Ok(Err((
                    Reason::SecretNotFound,
                    format!("Secret {namespace}/{name} not found"),
                )));
            }
            Lookup::NotLabelled => {
                return Ok(Err((
                    Reason::SecretNotLabelled,
                    format!(
                        "Secret {namespace}/{name} is not labelled {CREDENTIALS_LABEL}=true; the operator reads only Secrets so labelled: kubectl label secret -n {namespace} {name} {CREDENTIALS_LABEL}=true"
                    ),
                )));
            }
        };
        Ok(keys
            .iter()
            .map(|key| {
                value(&secret, key).ok_or_else(|| {
                    (
                        Reason::SecretKeyNotFound,
                        format!("Secret {namespace}/{name} has no key {key:?}"),
                    )
                })
            })
            .collect())
    }
}

/// A value of a Secret's `data`, as text.
fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}
