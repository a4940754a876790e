//! The OAuth access token, cached and shared by every clone of a client.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::sync::Mutex;

use super::error::{CyclrError, Result};
use super::retry::RetryPolicy;
use super::types::TokenResponse;

/// Renew this long before the token runs out: a tenth of its life, at most a minute, so a
/// token is never sent in its last moments (requests take time; clocks differ).
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(60);
/// Cyclr's tokens live about 14 days; a bogus `expires_in` must not overflow the clock.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Refused client credentials are asked about again only after this, doubling with each
/// refusal in a row up to [`MAX_REFUSED_HOLD`]: a client's credentials never change (new
/// values make a new client, with a new cache), so asking sooner only gets the same answer,
/// once per caller, while a secret is wrong.
const REFUSED_HOLD: Duration = Duration::from_secs(1);
/// At most this long between two token requests with refused credentials, so a refusal that
/// was Cyclr's mistake, or a secret set back in Cyclr, is noticed within a minute.
const MAX_REFUSED_HOLD: Duration = Duration::from_secs(60);

/// An access token and the cache generation that produced it, so that a caller refused with
/// it (401) can ask for a newer one without discarding one a concurrent caller just fetched.
#[derive(Clone)]
pub(crate) struct BearerToken {
    pub(crate) secret: SecretString,
    pub(crate) generation: u64,
}

struct Cached {
    token: BearerToken,
    renew_at: Instant,
}

struct Failed {
    error: CyclrError,
    at: Instant,
    /// Token requests failed in a row.
    count: u32,
}

impl Failed {
    /// How long this failure is the answer instead of a new token request: refused
    /// credentials calmly ([`REFUSED_HOLD`]), any other failure within the shortest backoff
    /// `policy` gives after that many failures.
    fn hold(&self, policy: &RetryPolicy) -> Duration {
        match self.error {
            CyclrError::Unauthorized { .. } => REFUSED_HOLD
                .saturating_mul(1 << self.count.saturating_sub(1).min(16))
                .min(MAX_REFUSED_HOLD),
            _ => policy.shortest_delay(self.count),
        }
    }
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The latest token request, if it failed and no token was fetched since.
    failed: Option<Failed>,
    /// The generation of the latest token fetched (0: none yet).
    generation: u64,
}

#[derive(Default)]
pub(crate) struct TokenCache {
    /// Held across a renewal: only one token request is in flight, concurrent callers wait
    /// for its result (a token or the same error) instead of each fetching their own.
    slot: Mutex<Slot>,
}

impl TokenCache {
    /// The generation of the token cached now, if any.
    pub(crate) async fn generation(&self) -> Option<u64> {
        self.slot
            .lock()
            .await
            .cached
            .as_ref()
            .map(|cached| cached.token.generation)
    }

    /// A usable token: the cached one unless it is due for renewal or is generation `stale`,
    /// else a new one from `fetch`. `fetch` runs while the cache is locked.
    ///
    /// A failed fetch is not repeated for the callers that waited on it, nor for those that
    /// ask within the shortest backoff `policy` gives after that many failures in a row: they
    /// get its error. Callers retrying a failed call in the same round (their jittered
    /// backoffs differ by less than that) so share one token request instead of each sending
    /// their own, while a caller's own retry, which waits at least as long, makes a new one.
    /// Refused credentials are held longer (1 s, doubling, at most a minute; see
    /// [`REFUSED_HOLD`]): every caller meanwhile gets the refusal without a request.
    pub(crate) async fn get(
        &self,
        stale: Option<u64>,
        policy: &RetryPolicy,
        fetch: impl AsyncFnOnce() -> Result<TokenResponse>,
    ) -> Result<BearerToken> {
        let arrived = Instant::now();
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.cached.as_ref()
            && Some(cached.token.generation) != stale
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }
        if let Some(failed) = &slot.failed
            && (failed.at >= arrived || failed.at.elapsed() < failed.hold(policy))
        {
            return Err(failed.error.clone());
        }
        // Measured from before the request, so the renewal time errs on the early side.
        let requested_at = Instant::now();
        let response = match fetch().await {
            Ok(response) => response,
            Err(error) => {
                // The token being replaced (refused by Cyclr) is not handed out again: later
                // callers get this failure (held, see `Failed::hold`) instead of sending a
                // request bound to be refused.
                if slot
                    .cached
                    .as_ref()
                    .is_some_and(|cached| Some(cached.token.generation) == stale)
                {
                    slot.cached = None;
                }
                let count = slot.failed.as_ref().map_or(1, |failed| failed.count.saturating_add(1));
                slot.failed = Some(Failed {
                    error: error.clone(),
                    at: Instant::now(),
                    count,
                });
                return Err(error);
            }
        };
        let lifetime = Duration::from_secs(response.expires_in).min(MAX_LIFETIME);
        let token = BearerToken {
            secret: response.access_token,
            generation: slot.generation + 1,
        };
        *slot = Slot {
            cached: Some(Cached {
                token: token.clone(),
                renew_at: requested_at + lifetime - renewal_margin(lifetime),
            }),
            failed: None,
            generation: token.generation,
        };
        Ok(token)
    }
}

fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_RENEWAL_MARGIN)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use secrecy::ExposeSecret;

    use super::*;
    use crate::CyclrError;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn response(secret: &str, expires_in: u64) -> TokenResponse {
        TokenResponse {
            access_token: secret.into(),
            token_type: Some("bearer".into()),
            expires_in,
        }
    }

    #[test]
    fn renews_a_tenth_early_but_at_most_a_minute_early() {
        assert_eq!(renewal_margin(Duration::from_secs(1_209_599)), Duration::from_secs(60));
        assert_eq!(renewal_margin(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(renewal_margin(Duration::from_secs(2)), Duration::from_millis(200));
        assert_eq!(renewal_margin(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn reuses_a_fresh_token_and_renews_a_stale_generation_once() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = async || {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(response(&format!("token-{n}"), 3600))
        };
        let first = cache.get(None, &policy(), fetch).await.unwrap();
        let again = cache.get(None, &policy(), fetch).await.unwrap();
        assert_eq!(again.secret.expose_secret(), "token-1");
        assert_eq!(cache.generation().await, Some(first.generation));

        let renewed = cache.get(Some(first.generation), &policy(), fetch).await.unwrap();
        assert_eq!(renewed.secret.expose_secret(), "token-2");
        // A second caller refused with the old token gets the new one, not a third fetch.
        let other = cache.get(Some(first.generation), &policy(), fetch).await.unwrap();
        assert_eq!(other.secret.expose_secret(), "token-2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_past_its_renewal_time_is_replaced() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = async || {
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok(response("short", 0))
        };
        cache.get(None, &policy(), fetch).await.unwrap();
        cache.get(None, &policy(), fetch).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_renewal() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, fetches) = (cache.clone(), fetches.clone());
                tokio::spawn(async move {
                    cache
                        .get(None, &policy(), async || {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(response("shared", 3600))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().secret.expose_secret(), "shared");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failure() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, fetches) = (cache.clone(), fetches.clone());
                tokio::spawn(async move {
                    cache
                        .get(None, &policy(), async || {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err(CyclrError::Server {
                                status: 503,
                                message: "down".into(),
                            })
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.unwrap(),
                Err(CyclrError::Server { status: 503, .. })
            ));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_renewal_is_not_cached() {
        let cache = TokenCache::default();
        let error = cache
            .get(None, &policy(), async || {
                Err(CyclrError::Server {
                    status: 503,
                    message: "down".into(),
                })
            })
            .await;
        assert!(matches!(error, Err(CyclrError::Server { .. })));
        assert_eq!(cache.generation().await, None);
        // Within the shortest backoff the failure is the answer; after it, a new request.
        let again = cache.get(None, &policy(), async || Ok(response("early", 3600))).await;
        assert!(matches!(again, Err(CyclrError::Server { .. })));
        tokio::time::sleep(policy().initial_backoff / 2).await;
        let token = cache
            .get(None, &policy(), async || Ok(response("after", 3600)))
            .await
            .unwrap();
        assert_eq!(token.secret.expose_secret(), "after");
    }

    #[test]
    fn refused_credentials_are_held_calmly() {
        let refused = |count| Failed {
            error: CyclrError::Unauthorized {
                message: "invalid_client".into(),
            },
            at: Instant::now(),
            count,
        };
        let holds: Vec<u64> = [1, 2, 3, 7, 8, 100]
            .into_iter()
            .map(|count| refused(count).hold(&policy()).as_secs())
            .collect();
        assert_eq!(holds, [1, 2, 4, 60, 60, 60]);
        let unavailable = Failed {
            error: CyclrError::Server {
                status: 503,
                message: "down".into(),
            },
            at: Instant::now(),
            count: 1,
        };
        assert_eq!(unavailable.hold(&policy()), policy().shortest_delay(1));
    }
}
