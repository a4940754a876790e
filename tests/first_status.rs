//! Issue [M] row 6: once a rollout is Ready, the partner's account count is current and every
//! new account shows its usage (nothing used yet), without waiting for a resync (here ten
//! minutes away).

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, READY};
use serde_json::json;
use support::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_counts_new_accounts_and_new_accounts_show_usage() {
    let h = Harness::start("first-status", "10m").await;
    h.wait_partner_ready("True").await;
    assert_eq!(h.partner().await.status.and_then(|s| s.account_count), Some(0));
    for name in ["a1", "a2", "a3"] {
        h.apply::<CyclrAccount>(json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}}))
            .await;
    }
    for name in ["a1", "a2", "a3"] {
        let ready = h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
        let usage = ready.status.and_then(|s| s.usage).expect("usage when Ready");
        assert_eq!(usage.task_count, 0);
    }
    h.wait_for("the partner counting 3 accounts", Duration::from_secs(30), || async {
        (h.partner().await.status.and_then(|s| s.account_count) == Some(3)).then_some(())
    })
    .await;
}
