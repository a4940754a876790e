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

/// The labelled Secrets, from the watches (one, or one per namespace they are read from).
#[derive(Clone)]
pub struct Secrets {
    stores: Vec<Store<Secret>>,
    client: Client,
}

impl Secrets {
    pub fn new(stores: Vec<Store<Secret>>, client: Client) -> Self {
        Secrets { stores, client }
    }

    /// The Secret `namespace/name` if it is labelled. A miss is told apart from a missing
    /// label by a metadata-only GET, which reads no values.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Lookup, kube::Error> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(secret) = self.stores.iter().find_map(|store| store.get(&key)) {
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
        for secret in self.stores.iter().flat_map(Store::state) {
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

/// A keyed digest of connector credentials: it tells whether the credentials changed since
/// an install without revealing them, even weak ones, to anyone who can read status.
///
/// HMAC-SHA256 keyed from the partner's OAuth client secret (a random value Cyclr issues, so
/// the key cannot be guessed, and the operator holds it anyway). Shape:
/// `v1:<key id, 16 hex>:<mac, 64 hex>`. The key id tells a digest made before the partner's
/// secret was rotated, which cannot be compared any more, from credentials that changed.
#[derive(Clone)]
pub struct CredentialsDigest {
    key: ring::hmac::Key,
    key_id: String,
}

impl CredentialsDigest {
    /// The digest keyed from `client_secret`.
    pub fn new(client_secret: &str) -> Self {
        use ring::hmac;
        let derive = hmac::Key::new(hmac::HMAC_SHA256, client_secret.as_bytes());
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&derive, b"cyclr-operator credentials digest").as_ref(),
        );
        let key_id = hex(&hmac::sign(&key, b"key id").as_ref()[..8]);
        CredentialsDigest { key, key_id }
    }

    /// The digest of `auth` (its form and every value, length-prefixed so no two differ only
    /// in where one value ends).
    pub fn of(&self, auth: &cyclr::types::ConnectorAuth) -> String {
        use cyclr::types::ConnectorAuth;
        use secrecy::ExposeSecret;
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        let fields: Vec<&str> = match auth {
            ConnectorAuth::None => vec!["none"],
            ConnectorAuth::ApiKey(key) => vec!["apiKey", key.expose_secret()],
            ConnectorAuth::Basic { username, password } => vec!["basic", username, password.expose_secret()],
        };
        for field in fields {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        format!("v1:{}:{}", self.key_id, hex(ctx.sign().as_ref()))
    }

    /// Whether two digests were made with the same key, so comparing them means something.
    pub fn comparable(a: &str, b: &str) -> bool {
        let key_id = |d: &str| d.split(':').nth(1).map(str::to_owned);
        key_id(a).is_some() && key_id(a) == key_id(b)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyclr::types::ConnectorAuth;
    use secrecy::SecretString;

    fn key(k: &str) -> ConnectorAuth {
        ConnectorAuth::ApiKey(SecretString::from(k))
    }

    #[test]
    fn a_digest_changes_with_any_value_and_reveals_none() {
        let digest = CredentialsDigest::new("client-secret");
        let a = digest.of(&key("hunter2"));
        assert_eq!(a, digest.of(&key("hunter2")));
        assert_ne!(a, digest.of(&key("hunter3")));
        assert!(!a.contains("hunter2"));
        let basic = |u: &str, p: &str| ConnectorAuth::Basic {
            username: u.into(),
            password: SecretString::from(p),
        };
        assert_ne!(digest.of(&basic("ab", "c")), digest.of(&basic("a", "bc")));
        assert_ne!(digest.of(&ConnectorAuth::None), digest.of(&key("none")));
        assert!(CredentialsDigest::comparable(&a, &digest.of(&key("other"))));
    }

    #[test]
    fn another_partner_secret_makes_incomparable_digests() {
        let old = CredentialsDigest::new("old-secret");
        let new = CredentialsDigest::new("new-secret");
        let made = old.of(&key("k"));
        assert!(!CredentialsDigest::comparable(&made, &new.of(&key("k"))));
        assert_ne!(made, new.of(&key("k")));
    }
}
