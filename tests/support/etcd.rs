//! etcd itself, behind the test's kube-apiserver, through etcd's JSON gateway (`POST /v3/kv/*`;
//! keys and values in base64, 64-bit numbers as strings): what the API server stored, and
//! compaction. Used with `#[path = "support/etcd.rs"] mod etcd;` by the binaries that need it.

#![allow(dead_code)] // each test binary uses a different part of this module

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The etcd at `url` (`cyclr_testenv::TestEnv::etcd_url`).
pub struct Etcd {
    url: String,
    http: reqwest::Client,
}

impl Etcd {
    pub fn new(url: &str) -> Etcd {
        Etcd {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.url);
        self.http
            .post(&url)
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("etcd {url} {body}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("etcd {url}: not JSON: {e}"))
    }

    /// Writes `value` at `key` (one the API server never reads, i.e. outside `/registry/`) and
    /// returns etcd's revision after it: a way to move the revision past everything the API
    /// server has written.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let answer = self
            .call(
                "/v3/kv/put",
                json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)}),
            )
            .await;
        number(&answer["header"]["revision"])
    }

    /// Compacts (physically) every revision before `revision`: a watch or list from an older
    /// resourceVersion is then answered `410 Gone`.
    pub async fn compact(&self, revision: i64) {
        self.call(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
        )
        .await;
    }

    /// Every key under `prefix` (e.g. `/registry/cyclr.com/`) with its value, as stored.
    pub async fn prefixed(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        let answer = self
            .call(
                "/v3/kv/range",
                json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(end)}),
            )
            .await;
        let decode = |v: &Value| {
            STANDARD
                .decode(v.as_str().unwrap_or_default())
                .expect("base64 from etcd")
        };
        answer["kvs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let key = String::from_utf8(decode(&kv["key"])).expect("a UTF-8 key");
                (key, decode(&kv["value"]))
            })
            .collect()
    }
}

/// A 64-bit number from the gateway, which writes them as strings.
fn number(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
        .unwrap_or_else(|| panic!("not a number from etcd: {value}"))
}
