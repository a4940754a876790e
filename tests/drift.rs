//! Issue #23 rows 2 and 3 in small. Row 2: on a `V1` partner a drift check (a full, paged
//! List Accounts) takes at most a tenth of the partner's rate whatever the number of pages,
//! and accounts onboarded during one keep at least 90% of it. Row 3: the operator restarted
//! with Ready accounts makes no Kubernetes write and no more Cyclr calls than one list's pages
//! and 3 (token, Partner Details, price plans), and every account stays Ready.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cyclr_operator::resources::{self, CyclrAccount, READY, condition};
use driver::readiness::NeededCrd;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::json;
use support::{Harness, HasConditions};
use tokio::time::Instant;

/// v1.0 list pages (`GET /v1.0/accounts`) per second at most: a tenth of 10 req/s.
const PAGES_PER_SECOND: f64 = 1.0;

fn account(h: &Harness, name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"partnerRef": {"name": h.partner}}})
}

/// How many of this test's CyclrAccounts are Ready, and how many hold a usage and the bill
/// dates (on the Partner API, written after the partner's next list).
async fn ready_and_with_usage(h: &Harness) -> (usize, usize) {
    let accounts = h
        .api::<CyclrAccount>()
        .list(&ListParams::default())
        .await
        .expect("list CyclrAccounts")
        .items;
    let ready = accounts
        .iter()
        .filter(|a| condition(a.conditions(), READY).is_some_and(|c| c.status == "True"))
        .count();
    let usage = accounts
        .iter()
        .filter(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.usage.is_some() && s.next_bill_date.is_some())
        })
        .count();
    (ready, usage)
}

async fn wait_ready(h: &Harness, n: usize, with_usage: bool, timeout: Duration) {
    h.wait_for(&format!("{n} Ready CyclrAccounts"), timeout, || async {
        let (ready, usage) = ready_and_with_usage(h).await;
        (ready == n && (!with_usage || usage == n)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row2_drift_checks_take_a_tenth_of_the_budget_and_onboarding_keeps_ninety_percent() {
    let mut h = Harness::without_operator_with("drift-pace", "10s", Some("V1")).await;
    h.set_intervals("10s", "1h").await;
    // 2,000 accounts: a list is 20 pages of 100, longer (paced at 1 s a page) than the 10 s
    // resync interval, so drift checks run back to back.
    support::seed_v1_accounts(&h.sim, "seed", 2000).await;
    h.start_operator();
    h.wait_partner_ready("True").await;
    let pages = || h.cyclr_requests("GET /v1.0/accounts");
    let first = pages();
    assert!(first >= 20, "the first list reads every page: {first}");

    // Steady state: pages over a window stay within a tenth of 10 req/s.
    let (start, before) = (Instant::now(), pages());
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (seconds, read) = (start.elapsed().as_secs_f64(), pages() - before);
    eprintln!("steady state: {read} pages in {seconds:.1} s");
    assert!(read >= 5, "drift checks go on: {read} pages in {seconds:.1} s");
    assert!(
        read as f64 <= seconds * PAGES_PER_SECOND + 1.0,
        "{read} pages in {seconds:.1} s: more than a tenth of the budget"
    );

    // 100 accounts applied during a drift check: created at once, with at least 90% of the
    // calls in the window.
    let creates = || h.cyclr_requests("POST /v1.0/accounts");
    let (start, pages_before, creates_before) = (Instant::now(), pages(), creates());
    let new = 100;
    for n in 0..new {
        h.apply::<CyclrAccount>(account(&h, &format!("tenant-{n:03}"))).await;
    }
    wait_ready(&h, new, false, Duration::from_secs(90)).await;
    let seconds = start.elapsed().as_secs_f64();
    let (pages, creates) = (pages() - pages_before, creates() - creates_before);
    assert_eq!(creates, new as u64, "one create per account");
    eprintln!("onboarding: {creates} creates and {pages} pages in {seconds:.1} s");
    let share = creates as f64 / (creates + pages) as f64;
    assert!(
        share >= 0.9,
        "creates had {:.1}% of the calls ({creates} creates, {pages} pages in {seconds:.1} s)",
        share * 100.0
    );
    assert!(
        pages as f64 <= seconds * PAGES_PER_SECOND / 2.0 + 1.0,
        "{pages} pages in {seconds:.1} s of onboarding: more than a twentieth of the budget"
    );
    h.kill_operator();
}

/// What a restart must leave alone: every CyclrAccount's and the partner's resourceVersion,
/// and the Events of the namespace.
async fn kubernetes_state(h: &Harness) -> (BTreeMap<String, String>, usize) {
    let mut versions: BTreeMap<String, String> = h
        .api::<CyclrAccount>()
        .list(&ListParams::default())
        .await
        .expect("list CyclrAccounts")
        .items
        .iter()
        .map(|a| (a.name_any(), a.resource_version().unwrap_or_default()))
        .collect();
    versions.insert(
        "CyclrPartner".into(),
        h.partner().await.resource_version().unwrap_or_default(),
    );
    let events = h
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .len();
    (versions, events)
}

/// CyclrAccount reconciles this test's operator ran (all processes: the metrics are the
/// harness's).
fn account_reconciles(h: &Harness) -> f64 {
    h.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("cyclr_operator_reconciles_total{") && l.contains("kind=\"CyclrAccount\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `n` accounts onboarded and settled (Ready, usage read, nothing left to write), then the
/// operator killed and started again: the restart's Cyclr calls, Kubernetes writes and
/// time to ready. `list_endpoint` is the partner's account list; `pages` its pages.
async fn restart_with_ready_accounts(mut h: Harness, n: usize, list_endpoint: &str, pages: u64) {
    h.wait_partner_ready("True").await;
    for i in 0..n {
        h.apply::<CyclrAccount>(account(&h, &format!("tenant-{i:03}"))).await;
    }
    // Resyncs every 10 s until each account's first usage is read, then every 10 minutes:
    // none falls in the restart's window.
    wait_ready(&h, n, true, Duration::from_secs(90)).await;
    h.set_intervals("10m", "1h").await;
    h.wait_partner_applied().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.kill_operator();

    let (versions, events) = kubernetes_state(&h).await;
    let (calls, lists, reconciles) = (
        h.sim.stats().total_requests(),
        h.cyclr_requests(list_endpoint),
        account_reconciles(&h),
    );
    // What `/readyz` answers for the new process: its CRD check and its watches.
    h.readiness = Default::default();
    let needed = resources::all_crds().iter().filter_map(NeededCrd::stored_in).collect();
    let crd_check = tokio::spawn(h.readiness.clone().check_crds(h.client.clone(), needed));
    let started = Instant::now();
    h.start_operator();
    h.wait_for("/readyz ready", Duration::from_secs(60), || async {
        h.readiness.check().ok()
    })
    .await;
    eprintln!(
        "/readyz ready {:?} after the restart with {n} Ready accounts",
        started.elapsed()
    );
    // Every account is looked at when the operator starts, and again when its partner's
    // check (the list) wakes it, at once.
    h.wait_for(
        "the partner's list and every account reconciled",
        Duration::from_secs(60),
        || async {
            (h.cyclr_requests(list_endpoint) >= lists + pages && account_reconciles(&h) >= reconciles + n as f64)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let made = h.sim.stats().total_requests() - calls;
    assert!(
        made <= pages + 3,
        "{made} Cyclr calls for a restart, one list is {pages} pages"
    );
    assert_eq!(h.cyclr_requests(list_endpoint) - lists, pages, "one list");
    assert_eq!(kubernetes_state(&h).await, (versions, events), "no Kubernetes write");
    let (ready, _) = ready_and_with_usage(&h).await;
    assert_eq!(ready, n, "every account still Ready");
    let partner = h.partner().await;
    assert!(
        condition(partner.conditions(), READY).is_some_and(|c| c.status == "True"),
        "the partner too"
    );
    crd_check.abort();
    h.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row3_a_restart_with_ready_v1_accounts_reads_one_list_and_writes_nothing() {
    let mut h = Harness::without_operator_with("drift-restart-v1", "10s", Some("V1")).await;
    // With the 30 accounts, 280: three pages of 100.
    support::seed_v1_accounts(&h.sim, "seed", 250).await;
    h.start_operator();
    restart_with_ready_accounts(h, 30, "GET /v1.0/accounts", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row3_a_restart_with_ready_partner_api_accounts_reads_one_list_and_writes_nothing() {
    let mut h = Harness::without_operator("drift-restart", "10s").await;
    h.start_operator();
    restart_with_ready_accounts(h, 30, "GET /api/partner/accounts", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row2_a_change_made_in_cyclr_is_corrected_after_a_paced_drift_check() {
    let mut h = Harness::without_operator_with("drift-found", "10s", Some("V1")).await;
    h.set_intervals("10s", "1h").await;
    // Three pages, read one a second after the first list.
    support::seed_v1_accounts(&h.sim, "seed", 250).await;
    h.start_operator();
    let mut manifest = account(&h, "acme");
    manifest["spec"]["description"] = json!("tenant");
    h.apply::<CyclrAccount>(manifest).await;
    wait_ready(&h, 1, false, Duration::from_secs(60)).await;
    let id = h
        .account("acme")
        .await
        .status
        .and_then(|s| s.account_id)
        .expect("an id");

    let pages = h.cyclr_requests("GET /v1.0/accounts");
    support::cyclr_client(&h.sim)
        .update_account_v1(
            &id,
            &cyclr::types::AccountFieldsV1 {
                description: Some("changed by hand".into()),
                ..Default::default()
            },
        )
        .await
        .expect("change the account in Cyclr");
    let event = h.wait_event("acme", "DriftCorrected").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("Description"), "{note}");
    assert_eq!(
        h.sim.account_v1(&id).and_then(|a| a.description).as_deref(),
        Some("tenant"),
        "put back"
    );
    assert!(
        h.cyclr_requests("GET /v1.0/accounts") >= pages + 3,
        "found by a drift check: every page read"
    );
    h.kill_operator();
}
