//! Issue [M]: faults users of peer operators met, replayed on a real kube-apiserver with the
//! Cyclr simulator (rows 3 and 10; row 5 is in `tests/admission.rs`, row 7 in
//! `tests/apiserver_throttled.rs`). What each fault meets: docs/reliability.md.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, CyclrPartner, READY, STALLED, condition};
use kube::Api;
use serde_json::json;
use support::{CLIENT_ID, Harness};

const TOKEN: &str = "POST /oauth/token";

fn account(h: &Harness, name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}})
}

/// The partner's Ready condition: (status, reason).
async fn partner_ready(h: &Harness) -> (String, String) {
    let partner = Api::<CyclrPartner>::all(h.client.clone())
        .get(&h.partner)
        .await
        .expect("get CyclrPartner");
    let conditions = partner.status.map(|s| s.conditions).unwrap_or_default();
    condition(&conditions, READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// How many accounts Cyclr holds, and whether any name is there twice.
fn cyclr_names(h: &Harness) -> (usize, bool) {
    let mut names: Vec<String> = h.sim.accounts().into_iter().map(|a| a.name).collect();
    let all = names.len();
    names.sort();
    names.dedup();
    (all, names.len() != all)
}

/// Waits until at least `n` accounts exist in Cyclr and Cyclr has answered 401 more than
/// `refused` times (so a revocation met calls in flight); returns the 401 count.
async fn wait_created_and_refused(h: &Harness, n: usize, refused: u64) -> u64 {
    h.wait_for(
        &format!("{n} accounts in Cyclr and a 401 after the revocation"),
        Duration::from_secs(120),
        || async {
            let now = h.sim.stats().responses.get(&401).copied().unwrap_or(0);
            (h.sim.accounts().len() >= n && now > refused).then_some(now)
        },
    )
    .await
}

/// Row 10: the partner's token is revoked twice mid-rollout, then its client secret is rotated
/// in Cyclr (with the tokens revoked) while the Secret still holds the old one, for a while
/// ("a minute", scaled down). One token request per revocation, not one per 401; while the
/// secret is wrong, the partner says `AuthenticationFailed` and its accounts stop calling,
/// so the token endpoint is not asked again; the Secret's update heals everything without a
/// restart, with no account lost or made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_and_a_secret_rotated_in_cyclr_first() {
    const ACCOUNTS: usize = 100;
    let h = Harness::start("revoked", "10m").await;
    h.wait_partner_ready("True").await;
    assert_eq!(h.cyclr_requests(TOKEN), 1);
    for i in 0..ACCOUNTS {
        h.apply::<CyclrAccount>(account(&h, &format!("acct-{i:03}"))).await;
    }

    // Two revocations while the accounts are created.
    let mut refused = 0;
    for (revocation, at) in [(1, 15), (2, 35)] {
        h.wait_for(&format!("{at} accounts in Cyclr"), Duration::from_secs(120), || async {
            (h.sim.accounts().len() >= at).then_some(())
        })
        .await;
        let tokens = h.cyclr_requests(TOKEN);
        h.sim.expire_tokens();
        // Accounts created after the revocation needed the new token.
        let created = h.sim.accounts().len();
        refused = wait_created_and_refused(&h, created + 10, refused).await;
        assert_eq!(
            h.cyclr_requests(TOKEN),
            tokens + 1,
            "revocation {revocation}: one token request for every call it refused"
        );
    }

    // The secret rotated in Cyclr: the Secret is updated only later.
    let rotated = "rotated-in-cyclr";
    let before_rotation = h.cyclr_requests(TOKEN);
    assert!(h.sim.accounts().len() < ACCOUNTS, "the rotation comes mid-rollout");
    h.sim.set_client_secret(rotated);
    h.sim.expire_tokens();
    let (status, reason) = h
        .wait_for("the partner AuthenticationFailed", Duration::from_secs(60), || async {
            let ready = partner_ready(&h).await;
            (ready.1 == "AuthenticationFailed").then_some(ready)
        })
        .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AuthenticationFailed"));
    // "A minute" before the Secret is updated, scaled down: calls already under way end (each
    // gets the held refusal), then nothing at all is sent to Cyclr.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = h.sim.stats().total_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.sim.stats().total_requests(),
        requests,
        "no call while the partner's credentials are refused"
    );
    let refused_tokens = h.cyclr_requests(TOKEN);
    assert!(
        refused_tokens - before_rotation <= 4,
        "{} token requests with the wrong secret: asked calmly, not once per caller",
        refused_tokens - before_rotation
    );
    assert!(h.sim.accounts().len() < ACCOUNTS, "the rotation stopped the rollout");
    // Every create tried meanwhile was refused, so none is left pending. (One was: a
    // reconcile on the watch's copy of its own pending marker wrote the marker back after
    // the refusal, and the account waited a minute for a create that never happened.)
    let accounts = h.api::<CyclrAccount>().list(&Default::default()).await.unwrap();
    let pending: Vec<_> = accounts
        .items
        .iter()
        .filter(|a| a.status.as_ref().is_some_and(|s| s.pending_create.is_some()))
        .map(|a| a.metadata.name.clone().unwrap_or_default())
        .collect();
    assert!(pending.is_empty(), "refused creates left pending: {pending:?}");

    // The Secret is updated: no restart, every account Ready, none lost, none twice.
    h.put_secret(
        "partner-credentials",
        &[("client_id", CLIENT_ID), ("client_secret", rotated)],
    )
    .await;
    h.wait_partner_ready("True").await;
    h.wait_for("every account Ready", Duration::from_secs(60), || async {
        let accounts = h.api::<CyclrAccount>().list(&Default::default()).await.ok()?;
        let ready = accounts
            .items
            .iter()
            .filter(|a| condition(support::HasConditions::conditions(*a), READY).is_some_and(|c| c.status == "True"))
            .count();
        (ready == ACCOUNTS).then_some(())
    })
    .await;
    let (created, twice) = cyclr_names(&h);
    assert_eq!(created, ACCOUNTS);
    assert!(!twice, "an account was made twice");
    assert_eq!(
        h.cyclr_requests(TOKEN),
        refused_tokens + 1,
        "one token request with the new secret"
    );
}

/// Row 3 (the part the driver's cap did not yet prove on a real API server): Cyclr refuses a
/// create with a 300,000-character `Message`. The condition messages stay within about 1 KiB
/// and say what was cut; the Warning Event is published (the API server refuses a note over
/// 1 KiB); the object stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_cyclr_message_is_capped_in_status_and_events() {
    let h = Harness::start("long-message", "10m").await;
    h.sim.set_faults(cyclr_sim::Faults {
        long_rejection: Some(cyclr_sim::LongRejection {
            chars: 300_000,
            endpoints: vec!["POST /api/partner/createaccount".into()],
        }),
        ..Default::default()
    });
    h.apply::<CyclrAccount>(account(&h, "acme")).await;
    let stalled = h
        .wait_condition::<CyclrAccount>("acme", STALLED, "True", Some("CyclrRejected"))
        .await;
    let conditions = support::HasConditions::conditions(&stalled);
    for type_ in [READY, STALLED] {
        let message = &condition(conditions, type_).unwrap().message;
        assert!(message.len() <= 1024, "{type_}: {} bytes", message.len());
        assert!(
            message.starts_with("the account create: Cyclr rejected the request: The request is invalid"),
            "{type_}: {message}"
        );
        assert!(message.ends_with(" bytes cut]"), "{type_}: the cut is said: {message}");
    }
    let event = h.wait_event("acme", "CyclrRejected").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.len() <= 1024 && note.ends_with(" bytes cut]"), "{note}");
    let size = serde_json::to_vec(&h.account("acme").await).unwrap().len();
    assert!(size < 16 * 1024, "the object is {size} bytes");
    assert!(h.sim.accounts().is_empty());
}
