//! Issue [M] row 1: Cyclr (or a caching proxy, or a regional host mix-up) answers List
//! Accounts with `200 []` for a while. One list is not enough to call many accounts missing
//! at once: each is read back first, the partner says its list looked wrong, nothing is
//! written to Cyclr, and every account stays Ready.

mod support;

use std::time::Duration;

use cyclr_operator::resources::{CyclrAccount, READY, STALLED, condition};
use cyclr_sim::Faults;
use serde_json::json;
use support::{Harness, HasConditions, ready_message};

const CREATE: &str = "POST /api/partner/createaccount";
const UPDATE: &str = "PUT /api/partner/accounts/{id}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_does_not_make_accounts_missing() {
    let h = Harness::start("wrong-lists", "10s").await;
    let names: Vec<String> = (0..20).map(|i| format!("tenant-{i}")).collect();
    for name in &names {
        h.apply::<CyclrAccount>(json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}}))
            .await;
    }
    for name in &names {
        h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
    }
    let writes = || h.cyclr_requests(CREATE) + h.cyclr_requests(UPDATE);
    let before = writes();
    let window = Duration::from_secs(35);
    h.sim.set_faults(Faults {
        empty_lists: window,
        ..Default::default()
    });
    let started = tokio::time::Instant::now();
    let api = h.api::<CyclrAccount>();
    let mut partner_said = false;
    // Every account is resynced about three times (every 10 s) against lists that show nothing.
    while started.elapsed() < window {
        for account in api.list(&Default::default()).await.expect("list").items {
            let stalled = condition(account.conditions(), STALLED).is_some_and(|c| c.status == "True");
            assert!(
                !stalled,
                "{} went Stalled: {}",
                account.metadata.name.as_deref().unwrap_or_default(),
                ready_message(&account)
            );
        }
        partner_said |= ready_message(&h.partner().await).contains("left out account");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(partner_said, "the partner said its list looked wrong");
    assert_eq!(writes(), before, "nothing written to Cyclr meanwhile");
    assert_eq!(h.sim.accounts().len(), 20);
    for name in &names {
        h.wait_condition::<CyclrAccount>(name, READY, "True", None).await;
    }
}
