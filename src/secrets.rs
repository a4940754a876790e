//! The only Secrets the operator reads: those labelled `cyclr.com/credentials: "true"`,
//! cached by one label-selected watch, so it neither caches unrelated Secrets nor can be
//! pointed at one. Every value it holds is also what [`Secrets::scrub`] removes from text
//! bound for status, Events and logs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

use secrecy::SecretString;

use crate::reason::Reason;
use crate::resources::NamedValue;

/// The label a Secret must carry for the operator to read it.
pub const CREDENTIALS_LABEL: &str = "cyclr.com/credentials";

/// The label selector of the Secret watch.
pub fn selector() -> String {
    format!("{CREDENTIALS_LABEL}=true")
}

/// What looking a Secret up found.
pub enum Lookup {
    /// Labelled: its data may be read.
    Found(Arc<Secret>),
    /// It exists but lacks the label: the operator does not read it.
    NotLabelled,
    /// No Secret of that name.
    Missing,
}

/// The labelled Secrets, from the watches (one, or one per namespace they are read from).
#[derive(Clone)]
pub struct Secrets {
    stores: Vec<Store<Secret>>,
    client: Client,
    /// Built for the store's state when a scrub first needs it, kept until a Secret changes.
    scrubber: Arc<Mutex<Arc<Scrubber>>>,
}

impl Secrets {
    /// The labelled Secrets of `stores` (the watches'); `client` for metadata-only lookups.
    pub fn new(stores: Vec<Store<Secret>>, client: Client) -> Self {
        Secrets {
            stores,
            client,
            scrubber: Arc::default(),
        }
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

    /// `text` with every credential form of every labelled Secret replaced by `[redacted]`
    /// (see [`Scrubber`]), in one pass.
    pub fn scrub(&self, text: &str) -> String {
        self.scrubber().scrub(text)
    }

    /// The scrubber of the store's state: the cached one unless a Secret was added, changed
    /// or removed since it was built. Built under the lock, so concurrent scrubs build once.
    fn scrubber(&self) -> Arc<Scrubber> {
        let secrets: Vec<_> = self.stores.iter().flat_map(Store::state).collect();
        let mut cached = self.scrubber.lock().expect("lock");
        if !cached.built_from(&secrets) {
            *cached = Arc::new(Scrubber::new(&secrets));
        }
        cached.clone()
    }
}

/// Values shorter than this are not scrubbed: they would redact ordinary words, and are no
/// credentials.
const MIN_SECRET_LEN: usize = 4;

/// A Secret with more values than this gets no `user:password` pairs (their number grows with
/// the square of its values); its values are still scrubbed one by one.
const MAX_PAIRED_VALUES: usize = 32;

/// Finds every form in which a credential of the labelled Secrets can appear in a message,
/// all in one pass over it (Aho-Corasick, longest match first): each value (trimmed); its
/// base64 (as an API-key header or a token may carry it); and the base64 of `user:password`
/// for every ordered pair of values of one Secret, which is what a basic-auth header
/// (`Authorization: Basic …`) or Cyclr's v1.0 `AuthValue` carries. Any two values may pair:
/// the install's `usernameKey` and `passwordKey` (and a partner's `client_id` and
/// `client_secret`) can be any keys. The base64 forms are of the values as stored and as
/// trimmed, each with and without padding.
#[derive(Default)]
struct Scrubber {
    /// The Secrets it was built from, as (uid, resourceVersion), sorted; `None` when one had
    /// neither, so it is never taken for current.
    versions: Option<Vec<(String, String)>>,
    /// `None` when there is nothing to scrub.
    automaton: Option<AhoCorasick>,
}

impl Scrubber {
    fn new(secrets: &[Arc<Secret>]) -> Self {
        let mut patterns = BTreeSet::new();
        for secret in secrets {
            let values: Vec<&str> = secret
                .data
                .iter()
                .flat_map(|data| data.values())
                .filter_map(|value| std::str::from_utf8(&value.0).ok())
                .collect();
            for value in &values {
                if value.trim().len() >= MIN_SECRET_LEN {
                    patterns.insert(value.trim().to_owned());
                    patterns.extend(base64(value));
                    patterns.extend(base64(value.trim()));
                }
            }
            if values.len() > MAX_PAIRED_VALUES {
                continue;
            }
            for (i, password) in values.iter().enumerate() {
                // A short user name still makes a credential with a real password.
                if password.trim().len() < MIN_SECRET_LEN {
                    continue;
                }
                for (_, user) in values
                    .iter()
                    .enumerate()
                    .filter(|(j, user)| *j != i && !user.trim().is_empty())
                {
                    patterns.extend(base64(&format!("{user}:{password}")));
                    patterns.extend(base64(&format!("{}:{}", user.trim(), password.trim())));
                }
            }
        }
        let automaton = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("a few thousand patterns fit the automaton")
        });
        Scrubber {
            versions: versions(secrets).map(|versions| {
                versions
                    .into_iter()
                    .map(|(uid, version)| (uid.to_owned(), version.to_owned()))
                    .collect()
            }),
            automaton,
        }
    }

    fn built_from(&self, secrets: &[Arc<Secret>]) -> bool {
        match (&self.versions, versions(secrets)) {
            (Some(built), Some(now)) => built
                .iter()
                .map(|(uid, version)| (uid.as_str(), version.as_str()))
                .eq(now),
            _ => false,
        }
    }

    fn scrub(&self, text: &str) -> String {
        match &self.automaton {
            Some(automaton) => {
                let mut out = String::with_capacity(text.len());
                automaton.replace_all_with(text, &mut out, |_, _, out| {
                    out.push_str("[redacted]");
                    true
                });
                out
            }
            None => text.to_owned(),
        }
    }
}

/// Each Secret's (uid, resourceVersion), sorted: what changes whenever its values can.
fn versions(secrets: &[Arc<Secret>]) -> Option<Vec<(&str, &str)>> {
    let mut versions = secrets
        .iter()
        .map(|secret| {
            Some((
                secret.metadata.uid.as_deref()?,
                secret.metadata.resource_version.as_deref()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    versions.sort_unstable();
    Some(versions)
}

/// Padded and not, so either occurrence is replaced whole (the longest match wins).
fn base64(text: &str) -> [String; 2] {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    [STANDARD.encode(text), STANDARD_NO_PAD.encode(text)]
}

/// Why a referenced Secret cannot be used: the condition reason and its message.
pub type Unusable = (Reason, String);

impl Secrets {
    /// The value of each of `values` (a resource's properties or variables, in `namespace`),
    /// in order, as (name, value): the literal one, or the key of its labelled Secret.
    ///
    /// Errors: `Ok(Err(..))` when a Secret or key is missing or unlabelled (or a value has
    /// no source, which admission refuses), its message naming `field` and the value's name;
    /// `Err` when the API server cannot be asked.
    pub async fn resolve(
        &self,
        namespace: &str,
        field: &str,
        values: &[NamedValue],
    ) -> Result<Result<Vec<(String, SecretString)>, Unusable>, kube::Error> {
        let mut resolved = Vec::with_capacity(values.len());
        for named in values {
            let value = match (&named.value, &named.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(source)) => {
                    let key = &source.secret_key_ref;
                    match self.values(namespace, &key.name, &[&key.key]).await? {
                        Ok(mut found) => found.remove(0),
                        Err((reason, message)) => {
                            return Ok(Err((reason, format!("{field} {:?}: {message}", named.name))));
                        }
                    }
                }
                (None, None) => {
                    let message = format!("{field} {:?} has neither value nor valueFrom", named.name);
                    return Ok(Err((Reason::InvalidSpec, message)));
                }
            };
            resolved.push((named.name.clone(), SecretString::from(value)));
        }
        Ok(Ok(resolved))
    }

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
        let fields: Vec<&str> = match auth {
            ConnectorAuth::None => vec!["none"],
            ConnectorAuth::ApiKey(key) => vec!["apiKey", key.expose_secret()],
            ConnectorAuth::Basic { username, password } => vec!["basic", username, password.expose_secret()],
        };
        self.of_fields(&fields)
    }

    /// The digest of `fields` in order (each length-prefixed), e.g. a cycle's variable names
    /// and values.
    pub fn of_fields(&self, fields: &[&str]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
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
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use cyclr::types::ConnectorAuth;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::{reflector, watcher};
    use secrecy::SecretString;

    fn secret(uid: &str, version: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("secret-{uid}")),
                namespace: Some("tenants".into()),
                uid: Some(uid.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn scrubber(secrets: &[Secret]) -> Scrubber {
        Scrubber::new(&secrets.iter().cloned().map(Arc::new).collect::<Vec<_>>())
    }

    #[test]
    fn a_basic_auth_header_echoing_user_and_password_is_scrubbed() {
        let scrubber = scrubber(&[secret(
            "a",
            "1",
            &[
                ("apiKey", "unrelated-key"),
                ("username", "bob"),
                ("password", "pa55w0rd-9f"),
            ],
        )]);
        for (user, password) in [("bob", "pa55w0rd-9f"), ("pa55w0rd-9f", "unrelated-key")] {
            let header = STANDARD.encode(format!("{user}:{password}"));
            let message = format!("Cyclr: 'Authorization: Basic {header}' was refused");
            assert_eq!(
                scrubber.scrub(&message),
                "Cyclr: 'Authorization: Basic [redacted]' was refused",
                "{user}:{password}"
            );
        }
        // Unpadded, as some servers echo it.
        let unpadded = STANDARD_NO_PAD.encode("bob:pa55w0rd-9f");
        assert_eq!(scrubber.scrub(&format!("Basic {unpadded}.")), "Basic [redacted].");
        // The user name alone is too short to be a secret.
        assert_eq!(scrubber.scrub("user bob"), "user bob");
    }

    #[test]
    fn plain_and_base64_values_are_scrubbed_but_not_short_ones() {
        let scrubber = scrubber(&[
            secret("a", "1", &[("apiKey", "k3y-0b7e51\n"), ("short", "abc")]),
            secret(
                "b",
                "7",
                &[("client_secret", "s3cr3t-value"), ("other", "s3cr3t-value-2")],
            ),
        ]);
        let message = format!(
            "failed with 'k3y-0b7e51', {} and {}; abc; s3cr3t-value-2 s3cr3t-value",
            STANDARD.encode("k3y-0b7e51"),
            STANDARD.encode("k3y-0b7e51\n"),
        );
        assert_eq!(
            scrubber.scrub(&message),
            "failed with '[redacted]', [redacted] and [redacted]; abc; [redacted] [redacted]"
        );
        assert_eq!(Scrubber::default().scrub("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn a_scrubber_is_current_until_a_secret_is_added_changed_or_removed() {
        let built = [secret("a", "1", &[("k", "value-1")]), secret("b", "2", &[])];
        let arcs = |secrets: &[Secret]| secrets.iter().cloned().map(Arc::new).collect::<Vec<_>>();
        let scrubber = scrubber(&built);
        let reordered = [built[1].clone(), built[0].clone()];
        assert!(scrubber.built_from(&arcs(&reordered)));
        let changed = [secret("a", "3", &[("k", "value-2")]), built[1].clone()];
        assert!(!scrubber.built_from(&arcs(&changed)));
        assert!(!scrubber.built_from(&arcs(&built[..1])));
        let added = [built[0].clone(), built[1].clone(), secret("c", "4", &[])];
        assert!(!scrubber.built_from(&arcs(&added)));
        let mut unversioned = built.clone();
        unversioned[0].metadata.resource_version = None;
        assert!(!Scrubber::new(&arcs(&unversioned)).built_from(&arcs(&unversioned)));
    }

    #[tokio::test]
    async fn scrub_builds_once_per_state_of_the_store() {
        let (store, mut writer) = reflector::store::<Secret>();
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let secrets = Secrets::new(vec![store], Client::try_from(config).unwrap());
        writer.apply_watcher_event(&watcher::Event::Apply(secret("a", "1", &[("apiKey", "first-key")])));
        assert_eq!(secrets.scrub("first-key"), "[redacted]");
        let first = secrets.scrubber();
        assert!(
            Arc::ptr_eq(&first, &secrets.clone().scrubber()),
            "cached, clones share it"
        );

        writer.apply_watcher_event(&watcher::Event::Apply(secret("a", "2", &[("apiKey", "rotated-key")])));
        assert_eq!(secrets.scrub("first-key rotated-key"), "first-key [redacted]");
        assert!(!Arc::ptr_eq(&first, &secrets.scrubber()), "rebuilt after the change");
    }

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
