//! Issue [M] row 2: every object gets its Events, whatever its name's length. kube's recorder
//! names an Event `<object name>.<hex time>`, which the API server refuses past 253
//! characters; a CyclrAccount named with 245 characters (a valid name) must still get its
//! Warning Event when it stalls.

mod support;

use cyclr_operator::resources::{CyclrAccount, STALLED};
use serde_json::json;
use support::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_with_a_long_name_still_gets_its_events() {
    let h = Harness::start("events-long", "10s").await;
    let name = format!("{}.{}", "a".repeat(200), "b".repeat(44));
    assert_eq!(name.len(), 245);
    h.apply::<CyclrAccount>(json!({"metadata": {"name": name}, "spec": {
        "partnerRef": {"name": h.partner}, "name": "Acme", "pricePlan": {"name": "Gold"}}}))
        .await;
    h.wait_condition::<CyclrAccount>(&name, STALLED, "True", Some("PricePlanNotFound"))
        .await;
    let event = h.wait_event(&name, "PricePlanNotFound").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let event_name = event.metadata.name.unwrap_or_default();
    assert!(event_name.len() <= 253, "{event_name}");
    assert!(event.note.unwrap_or_default().contains("Gold"));
}
