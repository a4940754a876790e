//! Issue [M] row 4: a web application firewall in front of Cyclr answers HTML. A `403` page to
//! everything is not a credentials problem (teams would rotate secrets for nothing); a `200`
//! page to every POST is not a success. Both are named as answers that are not JSON, with
//! their status, content type and the start of the page.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use cyclr_operator::resources::{CyclrAccount, READY, RECONCILING};
use cyclr_sim::{Faults, HtmlAnswer};
use serde_json::json;
use support::{Harness, ready_message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_from_a_firewall_is_named_never_taken_for_refused_credentials_or_success() {
    let h = Harness::start("firewall", "10s").await;
    h.wait_partner_ready("True").await;
    // A block page claiming success for every POST: the create is of unknown outcome.
    h.sim.set_faults(Faults {
        html_answer: Some(HtmlAnswer {
            status: StatusCode::OK,
            endpoints: vec!["POST".into()],
        }),
        ..Default::default()
    });
    h.apply::<CyclrAccount>(json!({"metadata": {"name": "acme"}, "spec": {"partnerRef": {"name": h.partner}}}))
        .await;
    let blocked = h
        .wait_condition::<CyclrAccount>("acme", RECONCILING, "True", Some("CyclrAnswerNotJSON"))
        .await;
    let message = ready_message(&blocked);
    assert!(message.contains("200") && message.contains("text/html"), "{message}");
    assert!(h.sim.accounts().is_empty(), "the firewall let nothing through");

    // A 403 page to everything: the partner is not reported as having bad credentials.
    h.sim.set_faults(Faults {
        html_answer: Some(HtmlAnswer {
            status: StatusCode::FORBIDDEN,
            endpoints: vec![],
        }),
        token_ttl: Some(Duration::from_secs(1)),
        ..Default::default()
    });
    h.wait_for(
        "the partner naming the HTML answer",
        Duration::from_secs(60),
        || async {
            let partner = h.partner().await;
            let message = ready_message(&partner);
            (message.contains("403") && message.contains("text/html")).then_some(message)
        },
    )
    .await;
    let partner = h.partner().await;
    let reason =
        cyclr_operator::resources::condition(partner.status.as_ref().map_or(&[][..], |s| &s.conditions), READY)
            .map(|c| c.reason.clone());
    assert_eq!(
        reason.as_deref(),
        Some("CyclrAnswerNotJSON"),
        "not AuthenticationFailed"
    );

    h.sim.set_faults(Faults::default());
    h.wait_condition::<CyclrAccount>("acme", READY, "True", None).await;
    assert_eq!(h.sim.accounts().len(), 1, "created once the firewall let it through");
}
