//! The client's v1.0 calls against the in-process simulator: paging, accounts with
//! caller-chosen ids, partial updates as Cyclr normalises them, deletes, account connectors,
//! templates and cycles, and the Partner API's faults on the v1.0 calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyclr::types::{
    AccountFieldsV1, ActivateCycle, ConnectorAuth, ConnectorProperty, CycleStatus, Deleted, InstallAccountConnector,
    Prerequisite,
};
use cyclr::{CallObserver, CallRecord, ClientConfig, CyclrClient, CyclrError, RetryPolicy};
use cyclr_sim::{
    Faults, HtmlAnswer, SimConfig, SimHandle, Simulator, TemplateConnectorSeed, TemplateSeed, VariableSeed,
};
use secrecy::ExposeSecret;

const CLIENT_ID: &str = "partner-client-id";
const CLIENT_SECRET: &str = "partner-client-s3cret";

async fn sim() -> SimHandle {
    Simulator::start(SimConfig::new(CLIENT_ID, CLIENT_SECRET), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator starts")
}

/// Fast retries and no rate limit to speak of.
fn config(sim: &SimHandle) -> ClientConfig {
    let mut config = ClientConfig::new(sim.base_url(), CLIENT_ID, CLIENT_SECRET.into());
    config.requests_per_second = 1000;
    config.burst = 1000;
    config.request_timeout = Duration::from_secs(5);
    config.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(10),
    };
    config
}

fn client(sim: &SimHandle) -> CyclrClient {
    CyclrClient::new(config(sim)).unwrap()
}

fn named(id: Option<&str>, name: &str) -> AccountFieldsV1 {
    AccountFieldsV1 {
        id: id.map(str::to_owned),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn api_key(key: &str) -> ConnectorAuth {
    ConnectorAuth::ApiKey(key.into())
}

fn install(name: &str, auth: ConnectorAuth) -> InstallAccountConnector {
    InstallAccountConnector {
        name: name.into(),
        description: None,
        auth,
        properties: Vec::new(),
    }
}

/// A template needing `Tickets` (API key) and `Clock` (no authentication), with one variable.
fn sync_template() -> TemplateSeed {
    TemplateSeed {
        id: Some("sync".into()),
        name: "Tickets sync".into(),
        description: Some("Tickets to the clock".into()),
        connectors: vec![
            TemplateConnectorSeed {
                name: "Tickets".into(),
                version: Some("v2".into()),
                auth_type: None,
            },
            TemplateConnectorSeed {
                name: "Clock".into(),
                version: None,
                auth_type: Some("None".into()),
            },
        ],
        variables: vec![VariableSeed {
            system_name: "region".into(),
            display_name: Some("Region".into()),
            value: Some("eu".into()),
        }],
        prerequisites: Vec::new(),
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<CallRecord>>);

impl CallObserver for Recorder {
    fn observe(&self, call: &CallRecord) {
        self.0.lock().unwrap().push(call.clone());
    }
}

// ---- accounts --------------------------------------------------------------------------------

#[tokio::test]
async fn every_page_is_read_when_cyclr_serves_at_most_100() {
    let sim = sim().await;
    let recorder = Arc::new(Recorder::default());
    let cyclr = client(&sim).with_observer(recorder.clone());
    for n in 0..250 {
        cyclr
            .create_account_v1(&named(Some(&format!("tenant-{n:03}")), &format!("Tenant {n}")))
            .await
            .unwrap();
    }
    sim.set_faults(Faults {
        max_page_size: Some(100),
        ..Faults::default()
    });
    sim.reset_stats();

    let accounts = cyclr.list_accounts_v1().await.unwrap();
    let ids: Vec<String> = accounts.iter().map(|a| a.id.clone()).collect();
    let expected: Vec<String> = (0..250).map(|n| format!("tenant-{n:03}")).collect();
    assert_eq!(ids, expected, "all 250, in creation order, none twice");
    assert_eq!(sim.stats().requests_to("GET /v1.0/accounts"), 3, "100 + 100 + 50");
    let pages = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.endpoint == "list_accounts_v1")
        .count();
    assert_eq!(pages, 3);

    // A page asked beyond the cap is cut to it: the server decides, whatever the client asks.
    let mut wide = config(&sim);
    wide.page_size = 1000;
    let capped = CyclrClient::new(wide).unwrap().list_accounts_v1().await.unwrap();
    assert_eq!(capped.len(), 100, "a page shorter than asked is taken as the last");

    // Exactly two full pages: the third, past the end, is `[]`.
    for n in 200..250 {
        assert_eq!(
            cyclr.delete_account_v1(&format!("tenant-{n:03}")).await.unwrap(),
            Deleted::Deleted
        );
    }
    sim.reset_stats();
    assert_eq!(cyclr.list_accounts_v1().await.unwrap().len(), 200);
    assert_eq!(sim.stats().requests_to("GET /v1.0/accounts"), 3);
}

#[tokio::test]
async fn a_chosen_id_taken_is_id_in_use_and_the_account_is_read_by_it() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let fields = AccountFieldsV1 {
        description: Some("first".into()),
        timezone: Some("Europe/London".into()),
        step_data_success_retention_hours: Some(1000),
        transaction_error_webhook_url: Some("hooks.example.com/errors".into()),
        ..named(Some("JO-Test-1234567890"), "Acme")
    };
    let created = cyclr.create_account_v1(&fields).await.unwrap();
    assert_eq!(created.id, "JO-Test-1234567890", "the caller's id");
    assert_eq!(created.step_data_success_retention_hours, Some(744), "clamped");
    assert_eq!(
        created.transaction_error_webhook_url.as_deref(),
        Some("https://hooks.example.com/errors")
    );
    assert!(created.created_date.is_some() && created.next_bill_date_utc.is_some());
    assert!(
        fields.changes_to(&created).is_empty(),
        "normalised, the create is in line"
    );

    let again = AccountFieldsV1 {
        description: Some("second".into()),
        ..fields.clone()
    };
    let error = cyclr.create_account_v1(&again).await.unwrap_err();
    assert!(
        matches!(&error, CyclrError::IdInUse { message } if message.contains("ID already in use")),
        "{error:?}"
    );
    assert!(!error.is_retryable() && !error.outcome_unknown());
    assert_eq!(error.cyclr_message(), Some("ID already in use"));
    let read = cyclr.get_account_v1("JO-Test-1234567890").await.unwrap();
    assert_eq!(read, created, "untouched by the second create");
    assert_eq!(sim.accounts().len(), 1);

    // Without an id Cyclr picks one; the Partner API's list shows v1.0 accounts too.
    let own = cyclr.create_account_v1(&named(None, "Beta")).await.unwrap();
    assert_eq!(own.id.len(), 32);
    assert_eq!(cyclr.list_accounts().await.unwrap().len(), 2);

    assert!(matches!(
        cyclr.get_account_v1("nobody").await,
        Err(CyclrError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_lost_create_with_a_chosen_id_is_retried_and_answers_id_in_use_never_a_second_account() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.authenticate().await.unwrap();
    sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Faults::default()
    });
    let error = cyclr
        .create_account_v1(&named(Some("tenant-1"), "Acme"))
        .await
        .unwrap_err();
    assert!(matches!(error, CyclrError::IdInUse { .. }), "{error:?}");
    assert_eq!(sim.stats().requests_to("POST /v1.0/accounts"), 2, "retried once");
    assert_eq!(sim.accounts().len(), 1);
    assert_eq!(cyclr.get_account_v1("tenant-1").await.unwrap().name, "Acme");

    // Without a chosen id the create is never re-sent: only the caller can look for it.
    sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Faults::default()
    });
    sim.reset_stats();
    let error = cyclr.create_account_v1(&named(None, "Beta")).await.unwrap_err();
    assert!(error.outcome_unknown(), "{error:?}");
    assert_eq!(sim.stats().requests_to("POST /v1.0/accounts"), 1);
    assert_eq!(sim.accounts().len(), 2);
}

#[tokio::test]
async fn creates_are_validated_as_cyclr_does() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let refused = |fields: AccountFieldsV1, needle: &'static str| {
        let cyclr = cyclr.clone();
        async move {
            let error = cyclr.create_account_v1(&fields).await.unwrap_err();
            assert!(
                matches!(&error, CyclrError::Validation { status: 400, message } if message.contains(needle)),
                "{needle}: {error:?}"
            );
        }
    };
    refused(named(Some("x"), " "), "Name is required").await;
    refused(
        AccountFieldsV1 {
            transaction_error_webhook_enabled: Some(true),
            ..named(Some("x"), "Acme")
        },
        "TransactionErrorWebhookUrl",
    )
    .await;
    refused(
        AccountFieldsV1 {
            parent_account_id: Some("no-such-parent".into()),
            ..named(Some("x"), "Acme")
        },
        "no-such-parent",
    )
    .await;
    assert!(sim.accounts().is_empty());

    // A negative retention cannot be typed by the client: sent by hand, it names the field.
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = http
        .post(format!("{}/v1.0/accounts", sim.base_url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&serde_json::json!({"Name": "Acme", "StepDataErroredRetentionHours": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("StepDataErroredRetentionHours"),
        "{body}"
    );

    // A sub-account names an existing parent.
    let parent = cyclr.create_account_v1(&named(Some("parent"), "Parent")).await.unwrap();
    let child = cyclr
        .create_account_v1(&AccountFieldsV1 {
            parent_account_id: Some(parent.id.clone()),
            ..named(Some("child"), "Child")
        })
        .await
        .unwrap();
    assert_eq!(child.parent_account_id.as_deref(), Some("parent"));
}

#[tokio::test]
async fn an_update_changes_only_what_it_sends_as_cyclr_normalises_it() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let before = cyclr
        .create_account_v1(&AccountFieldsV1 {
            description: Some("old".into()),
            timezone: Some("Europe/London".into()),
            audit_info: Some("ops".into()),
            step_data_success_retention_hours: Some(24),
            ..named(Some("acme"), "Acme")
        })
        .await
        .unwrap();

    let desired = AccountFieldsV1 {
        description: Some("new".into()),
        step_data_errored_retention_hours: Some(9999),
        transaction_error_webhook_enabled: Some(true),
        transaction_error_webhook_url: Some("hooks.example.com/x".into()),
        ..Default::default()
    };
    let change = desired.changes_to(&before);
    assert_eq!(change, desired.normalized(), "every field differs from the account");
    let after = cyclr.update_account_v1("acme", &change).await.unwrap();
    assert_eq!(after.description.as_deref(), Some("new"));
    assert_eq!(after.step_data_errored_retention_hours, Some(744), "clamped to 744");
    assert_eq!(
        after.transaction_error_webhook_url.as_deref(),
        Some("https://hooks.example.com/x")
    );
    assert_eq!(after.transaction_error_webhook_enabled, Some(true));
    // Omitted fields keep their values.
    assert_eq!(
        (
            after.name.as_str(),
            after.timezone.as_deref(),
            after.audit_info.as_deref()
        ),
        ("Acme", Some("Europe/London"), Some("ops"))
    );
    assert_eq!(after.step_data_success_retention_hours, Some(24));
    assert_eq!(sim.account_v1("acme").unwrap(), after, "what Cyclr stored");
    // Only the fields sent went on the wire.
    let body = sim.last_update_body().unwrap();
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Description",
            "StepDataErroredRetentionHours",
            "TransactionErrorWebhookEnabled",
            "TransactionErrorWebhookUrl"
        ]
    );
    // Compared as Cyclr normalises, the desired value is in line: no perpetual drift.
    assert!(desired.changes_to(&after).is_empty());
    // The raw (clamped-away) value would have differed forever.
    assert_ne!(
        desired.step_data_errored_retention_hours,
        after.step_data_errored_retention_hours
    );

    assert!(matches!(
        cyclr.update_account_v1("nobody", &desired).await,
        Err(CyclrError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_delete_twice_is_deleted_then_already_gone() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.create_account_v1(&named(Some("gone"), "Gone")).await.unwrap();
    cyclr
        .install_connector_v1("gone", "Tickets", &install("Tickets", api_key("k")))
        .await
        .unwrap();
    assert_eq!(cyclr.delete_account_v1("gone").await.unwrap(), Deleted::Deleted);
    assert_eq!(cyclr.delete_account_v1("gone").await.unwrap(), Deleted::AlreadyGone);
    assert_eq!(
        sim.stats().requests_to("DELETE /v1.0/accounts/{id}"),
        2,
        "a 404 is final"
    );
    assert!(sim.accounts().is_empty());
    assert!(
        sim.installed_connectors("gone").is_empty(),
        "its connectors went with it"
    );
    assert!(matches!(
        cyclr.get_account_v1("gone").await,
        Err(CyclrError::NotFound { .. })
    ));

    // A delete whose answer was lost is retried, and the retry's 404 means it is done.
    cyclr.create_account_v1(&named(Some("lost"), "Lost")).await.unwrap();
    sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Faults::default()
    });
    assert_eq!(cyclr.delete_account_v1("lost").await.unwrap(), Deleted::AlreadyGone);
    assert!(sim.accounts().is_empty());
}

#[tokio::test]
async fn usage_and_sign_in_tokens_on_v1() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.create_account_v1(&named(Some("acme"), "Acme")).await.unwrap();
    let usage = cyclr.account_usage_v1("acme").await.unwrap();
    assert_eq!(usage.id, "acme");
    let (start, end) = (usage.start_time.unwrap(), usage.end_time.unwrap());
    assert!(start < end, "{start} .. {end}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cyclr.account_usage_v1("acme").await.unwrap().tasks_used > usage.tasks_used);

    let token = cyclr.create_signin_token_v1("acme", "user@example.com").await.unwrap();
    assert!(!token.token.expose_secret().is_empty());
    assert!(token.expires_at_utc.0 > chrono::Utc::now() + chrono::Duration::minutes(4));
    assert_eq!(sim.stats().requests_to("POST /v1.0/accounts/{id}/signintoken"), 1);
    assert!(matches!(
        cyclr.create_signin_token_v1("nobody", "u").await,
        Err(CyclrError::NotFound { .. })
    ));
    assert!(matches!(
        cyclr.account_usage_v1("nobody").await,
        Err(CyclrError::NotFound { .. })
    ));
}

// ---- account connectors ----------------------------------------------------------------------

#[tokio::test]
async fn connectors_install_with_properties_and_are_re_authenticated() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.create_account_v1(&named(Some("acme"), "Acme")).await.unwrap();

    let subdomain = vec![ConnectorProperty {
        name: "Subdomain".into(),
        value: Some("acme".into()),
    }];
    let tickets = cyclr
        .install_connector_v1(
            "acme",
            "Tickets",
            &InstallAccountConnector {
                description: Some("support desk".into()),
                properties: subdomain.clone(),
                ..install("Acme tickets", api_key("k-1"))
            },
        )
        .await
        .unwrap();
    assert!(tickets.authenticated, "an API key came with it");
    assert_eq!(tickets.properties, subdomain);
    assert_eq!(tickets.description.as_deref(), Some("support desk"));
    assert_eq!(
        (tickets.connector.name.as_str(), tickets.connector.version.as_deref()),
        ("Tickets", Some("v1"))
    );

    // Without credentials: installed, not authenticated. By the catalogue id too.
    let second = cyclr
        .install_connector_v1(
            "acme",
            &tickets.connector.id,
            &install("Other tickets", ConnectorAuth::None),
        )
        .await
        .unwrap();
    assert!(!second.authenticated);
    assert_eq!(second.connector.name, "Tickets");

    let error = cyclr
        .install_connector_v1("acme", "Tickets", &install("Acme tickets", api_key("k")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CyclrError::Validation { status: 400, message } if message.contains("is in use")),
        "{error:?}"
    );

    let basic = ConnectorAuth::Basic {
        username: "user".into(),
        password: "pass".into(),
    };
    let again = cyclr
        .reauthenticate_connector_v1("acme", &second.id, &basic)
        .await
        .unwrap();
    assert!(again.authenticated);
    assert!(
        cyclr
            .get_account_connector_v1("acme", &second.id)
            .await
            .unwrap()
            .authenticated
    );
    assert!(matches!(
        cyclr
            .reauthenticate_connector_v1("acme", &second.id, &ConnectorAuth::None)
            .await,
        Err(CyclrError::Config(_))
    ));

    // Basic auth travels as the base64 of `user:password` (echoed by this fault).
    sim.set_faults(Faults {
        install_error_echoes_credentials: true,
        ..Faults::default()
    });
    let echoed = cyclr
        .install_connector_v1("acme", "Tickets", &install("Third", basic))
        .await
        .unwrap_err();
    assert!(echoed.cyclr_message().unwrap().contains("dXNlcjpwYXNz"), "{echoed:?}");
    sim.set_faults(Faults {
        max_page_size: Some(1),
        ..Faults::default()
    });

    let mut paged = config(&sim);
    paged.page_size = 1;
    let listed = CyclrClient::new(paged)
        .unwrap()
        .list_account_connectors_v1("acme")
        .await
        .unwrap();
    assert_eq!(listed, [tickets.clone(), again.clone()]);
    assert_eq!(
        sim.stats().requests_to("GET /v1.0/account/connectors"),
        3,
        "1 + 1 + the empty page"
    );

    assert_eq!(
        cyclr.delete_account_connector_v1("acme", &tickets.id).await.unwrap(),
        Deleted::Deleted
    );
    assert_eq!(
        cyclr.delete_account_connector_v1("acme", &tickets.id).await.unwrap(),
        Deleted::AlreadyGone
    );
    assert!(matches!(
        cyclr.get_account_connector_v1("acme", &tickets.id).await,
        Err(CyclrError::NotFound { .. })
    ));
    assert_eq!(sim.installed_connectors("acme").len(), 1);
}

#[tokio::test]
async fn account_level_calls_without_the_account_header_are_denied() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.create_account_v1(&named(Some("acme"), "Acme")).await.unwrap();
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, "/v1.0/account/connectors"),
        (reqwest::Method::POST, "/v1.0/connectors/Tickets/install"),
        (reqwest::Method::GET, "/v1.0/cycles"),
        (reqwest::Method::POST, "/v1.0/templates/sync/install"),
        (reqwest::Method::PUT, "/v1.0/cycles/c1/activate"),
    ] {
        let answer = http
            .request(method.clone(), format!("{}{path}", sim.base_url()))
            .bearer_auth(token)
            .json(&serde_json::json!({"Name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{method} {path}");
    }
    assert!(sim.installed_connectors("acme").is_empty());
}

// ---- templates and cycles --------------------------------------------------------------------

/// An account `acme` with an unauthenticated `Tickets` v2 connector and the sync template.
async fn account_with_template(sim: &SimHandle, cyclr: &CyclrClient) -> String {
    cyclr.create_account_v1(&named(Some("acme"), "Acme")).await.unwrap();
    assert_eq!(sim.add_template(sync_template()), "sync");
    let tickets = cyclr
        .install_connector_v1("acme", "Tickets", &install("Tickets", ConnectorAuth::None))
        .await
        .unwrap();
    assert_eq!(
        tickets.connector.version.as_deref(),
        Some("v2"),
        "the template's version"
    );
    tickets.id
}

/// A Paused cycle of the sync template in `acme`, its Tickets connector authenticated: its id.
async fn installed_cycle(sim: &SimHandle, cyclr: &CyclrClient) -> String {
    let tickets = account_with_template(sim, cyclr).await;
    cyclr
        .reauthenticate_connector_v1("acme", &tickets, &api_key("k"))
        .await
        .unwrap();
    cyclr.install_template_v1("acme", "sync", None).await.unwrap().id
}

#[tokio::test]
async fn a_template_installs_as_a_paused_cycle_that_activates_once_its_connectors_are_authenticated() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let tickets = account_with_template(&sim, &cyclr).await;

    let templates = cyclr.list_templates_v1().await.unwrap();
    assert_eq!(templates.len(), 1);
    let template = cyclr.get_template_v1("sync").await.unwrap();
    assert_eq!(template, templates[0]);
    let needed: Vec<&str> = template.connectors.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(needed, ["Tickets", "Clock"]);

    let cycle = cyclr.install_template_v1("acme", "sync", None).await.unwrap();
    assert_eq!(cycle.status, CycleStatus::Paused);
    assert_eq!(
        (cycle.name.as_str(), cycle.template_id.as_deref()),
        ("Tickets sync", Some("sync"))
    );
    assert_eq!(cycle.tasks_used, 0);
    assert_eq!(
        cycle.connectors[0].account_connector_id.as_deref(),
        Some(tickets.as_str()),
        "the account's Tickets connector reused"
    );
    assert!(!cycle.connectors[0].authenticated);
    assert!(
        cycle.connectors[1].authenticated,
        "Clock needs no authentication: made authenticated"
    );
    let connectors = cyclr.list_account_connectors_v1("acme").await.unwrap();
    assert_eq!(connectors.len(), 2, "Tickets reused, Clock made");

    let prerequisites = cyclr.cycle_prerequisites_v1("acme", &cycle.id).await.unwrap();
    assert_eq!(prerequisites.len(), 1, "{prerequisites:?}");
    let missing = &prerequisites[0];
    assert_eq!(missing.reason_code, Prerequisite::CONNECTOR_NOT_AUTHENTICATED);
    assert_eq!(
        (missing.object_type.as_deref(), missing.object_id.as_deref()),
        (Some("AccountConnector"), Some(tickets.as_str()))
    );

    let schedule = ActivateCycle {
        interval: Some(15),
        ..Default::default()
    };
    let error = cyclr.activate_cycle_v1("acme", &cycle.id, &schedule).await.unwrap_err();
    assert!(
        matches!(&error, CyclrError::Validation { status: 400, message } if message.contains("cannot be activated")),
        "{error:?}"
    );
    assert_eq!(sim.cycles("acme")[0].status, CycleStatus::Paused);

    cyclr
        .reauthenticate_connector_v1("acme", &tickets, &api_key("k-2"))
        .await
        .unwrap();
    assert!(
        cyclr
            .cycle_prerequisites_v1("acme", &cycle.id)
            .await
            .unwrap()
            .is_empty()
    );
    let wrong = ActivateCycle {
        interval: Some(10),
        ..Default::default()
    };
    assert!(matches!(
        cyclr.activate_cycle_v1("acme", &cycle.id, &wrong).await,
        Err(CyclrError::Validation { message, .. }) if message.contains("Interval 10")
    ));
    cyclr.activate_cycle_v1("acme", &cycle.id, &schedule).await.unwrap();
    let active = cyclr.get_cycle_v1("acme", &cycle.id).await.unwrap();
    assert_eq!(active.status, CycleStatus::Active);
    assert!(active.connectors.iter().all(|c| c.authenticated));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = cyclr.list_cycles_v1("acme").await.unwrap();
    assert_eq!(later.len(), 1);
    assert!(later[0].tasks_used >= 2, "tasks grow while Active: {later:?}");
    assert!(later[0].last_successful_run_date.is_some());

    // A second install of the same template makes a second cycle, reusing both connectors.
    let second = cyclr
        .install_template_v1("acme", "sync", Some("Second sync"))
        .await
        .unwrap();
    assert_eq!(second.name, "Second sync");
    assert_eq!(cyclr.list_account_connectors_v1("acme").await.unwrap().len(), 2);
    assert!(matches!(
        cyclr.install_template_v1("acme", "nope", None).await,
        Err(CyclrError::NotFound { .. })
    ));
}

#[tokio::test]
async fn variables_are_refused_while_active_then_set_between_deactivate_and_activate() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let cycle = installed_cycle(&sim, &cyclr).await;
    let variables = cyclr.cycle_variables_v1("acme", &cycle).await.unwrap();
    assert_eq!(
        (variables[0].system_name.as_str(), variables[0].value.as_deref()),
        ("region", Some("eu"))
    );

    cyclr
        .activate_cycle_v1("acme", &cycle, &ActivateCycle::default())
        .await
        .unwrap();
    let error = cyclr
        .set_cycle_variable_v1("acme", &cycle, "region", "us")
        .await
        .unwrap_err();
    assert!(matches!(error, CyclrError::Conflict { .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert_eq!(
        cyclr.cycle_variables_v1("acme", &cycle).await.unwrap()[0]
            .value
            .as_deref(),
        Some("eu")
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    cyclr.deactivate_cycle_v1("acme", &cycle, true).await.unwrap();
    let paused = cyclr.get_cycle_v1("acme", &cycle).await.unwrap();
    assert_eq!(paused.status, CycleStatus::Paused);
    let set = cyclr
        .set_cycle_variable_v1("acme", &cycle, "region", "us")
        .await
        .unwrap();
    assert_eq!(set.value.as_deref(), Some("us"));
    cyclr
        .activate_cycle_v1("acme", &cycle, &ActivateCycle::default())
        .await
        .unwrap();
    let active = cyclr.get_cycle_v1("acme", &cycle).await.unwrap();
    assert_eq!(active.status, CycleStatus::Active);
    assert!(
        active.tasks_used >= paused.tasks_used && paused.tasks_used >= 1,
        "tasks are kept"
    );
    assert_eq!(
        cyclr.cycle_variables_v1("acme", &cycle).await.unwrap()[0]
            .value
            .as_deref(),
        Some("us")
    );
    assert_eq!(
        sim.stats().requests_to("PUT /v1.0/cycles/{id}/deactivate"),
        1,
        "one deactivate"
    );
}

#[tokio::test]
async fn held_cycle_changes_are_answered_but_shown_only_once_the_fault_is_lifted() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let cycle = installed_cycle(&sim, &cyclr).await;
    let shown = || async { cyclr.get_cycle_v1("acme", &cycle).await.unwrap().status };
    sim.set_faults(Faults {
        hold_cycle_changes: true,
        ..Faults::default()
    });
    cyclr
        .activate_cycle_v1("acme", &cycle, &ActivateCycle::default())
        .await
        .unwrap();
    assert_eq!(shown().await, CycleStatus::Paused, "answered, not shown");
    assert_eq!(
        cyclr.list_cycles_v1("acme").await.unwrap()[0].status,
        CycleStatus::Paused
    );
    // A deactivation while held still shows the status from before both.
    cyclr.deactivate_cycle_v1("acme", &cycle, true).await.unwrap();
    cyclr
        .activate_cycle_v1("acme", &cycle, &ActivateCycle::default())
        .await
        .unwrap();
    assert_eq!(shown().await, CycleStatus::Paused);
    sim.set_faults(Faults::default());
    assert_eq!(shown().await, CycleStatus::Active, "shown once lifted");

    // A deactivation held back: still Active, so variables are refused as for an Active cycle.
    sim.set_faults(Faults {
        hold_cycle_changes: true,
        ..Faults::default()
    });
    cyclr.deactivate_cycle_v1("acme", &cycle, true).await.unwrap();
    assert_eq!(shown().await, CycleStatus::Active);
    let error = cyclr
        .set_cycle_variable_v1("acme", &cycle, "region", "us")
        .await
        .unwrap_err();
    assert!(matches!(error, CyclrError::Conflict { .. }), "{error:?}");
    sim.set_faults(Faults::default());
    assert_eq!(shown().await, CycleStatus::Paused);
    cyclr
        .set_cycle_variable_v1("acme", &cycle, "region", "us")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_connector_losing_its_authentication_stops_its_cycles_and_cycles_delete() {
    let sim = sim().await;
    let cyclr = client(&sim);
    let tickets = account_with_template(&sim, &cyclr).await;
    assert!(sim.set_connector_authenticated("acme", &tickets, true));
    let cycle = cyclr.install_template_v1("acme", "sync", None).await.unwrap().id;
    cyclr
        .activate_cycle_v1(
            "acme",
            &cycle,
            &ActivateCycle {
                run_once: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let once = cyclr.get_cycle_v1("acme", &cycle).await.unwrap();
    assert_eq!(
        (once.status, once.tasks_used),
        (CycleStatus::Paused, 1),
        "ran once, paused"
    );

    cyclr
        .activate_cycle_v1("acme", &cycle, &ActivateCycle::default())
        .await
        .unwrap();
    assert!(sim.set_connector_authenticated("acme", &tickets, false));
    assert!(!sim.set_connector_authenticated("acme", "999", false));
    let stopped = cyclr.get_cycle_v1("acme", &cycle).await.unwrap();
    assert_eq!(stopped.status, CycleStatus::Stopped);
    assert_eq!(
        cyclr.cycle_prerequisites_v1("acme", &cycle).await.unwrap()[0]
            .object_id
            .as_deref(),
        Some(tickets.as_str())
    );

    assert_eq!(cyclr.delete_cycle_v1("acme", &cycle).await.unwrap(), Deleted::Deleted);
    assert_eq!(
        cyclr.delete_cycle_v1("acme", &cycle).await.unwrap(),
        Deleted::AlreadyGone
    );
    assert!(sim.cycles("acme").is_empty());
    assert!(matches!(
        cyclr.get_cycle_v1("acme", &cycle).await,
        Err(CyclrError::NotFound { .. })
    ));
}

#[tokio::test]
async fn templates_are_added_by_the_admin_api_in_their_json_form() {
    let sim = sim().await;
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/_sim/templates", sim.base_url()))
        .json(&serde_json::json!({"Id": 42, "Name": "Numbers",
            "Connectors": [{"Name": "Ledger", "Version": "v3"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["Id"], "42", "{answer}");
    let template = client(&sim).get_template_v1("42").await.unwrap();
    assert_eq!(template.name, "Numbers");
    assert_eq!(template.connectors[0].version.as_deref(), Some("v3"));
    assert_eq!(
        sim.stats().total_requests(),
        2,
        "the admin call is not counted: token + get"
    );
}

// ---- faults on v1.0 --------------------------------------------------------------------------

#[tokio::test]
async fn a_lost_template_install_is_never_repeated() {
    let sim = sim().await;
    let cyclr = client(&sim);
    account_with_template(&sim, &cyclr).await;
    sim.set_faults(Faults {
        commit_then_fail: 1,
        ..Faults::default()
    });
    let error = cyclr.install_template_v1("acme", "sync", None).await.unwrap_err();
    assert!(error.outcome_unknown(), "{error:?}");
    assert_eq!(sim.stats().requests_to("POST /v1.0/templates/{id}/install"), 1);
    assert_eq!(sim.cycles("acme").len(), 1, "applied once, never twice");
}

#[tokio::test]
async fn the_partner_apis_faults_apply_to_v1_calls() {
    let sim = sim().await;
    let cyclr = client(&sim);
    cyclr.authenticate().await.unwrap();

    // A firewall page is named, and nothing is applied.
    sim.set_faults(Faults {
        html_answer: Some(HtmlAnswer {
            status: 200u16.try_into().unwrap(),
            endpoints: vec!["POST /v1.0/accounts".into()],
        }),
        ..Faults::default()
    });
    let error = cyclr.create_account_v1(&named(None, "Acme")).await.unwrap_err();
    assert!(matches!(error, CyclrError::NotJson { status: 200, .. }), "{error:?}");
    assert!(sim.accounts().is_empty());

    // 429 with Retry-After, then the retry succeeds.
    sim.set_faults(Faults {
        rate_limit_rps: Some(1),
        retry_after_secs: 1,
        ..Faults::default()
    });
    cyclr.list_accounts_v1().await.unwrap();
    cyclr.list_accounts_v1().await.unwrap();
    assert_eq!(sim.stats().responses.get(&429), Some(&1));

    // A new account shows in the list only after the lag; by id at once.
    sim.set_faults(Faults {
        list_lag: Duration::from_millis(800),
        ..Faults::default()
    });
    cyclr
        .create_account_v1(&named(Some("lagging"), "Lagging"))
        .await
        .unwrap();
    assert!(cyclr.list_accounts_v1().await.unwrap().is_empty());
    assert_eq!(cyclr.get_account_v1("lagging").await.unwrap().name, "Lagging");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(cyclr.list_accounts_v1().await.unwrap().len(), 1);

    // Every request failing: retried, then a server error; a cycle list is no exception.
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    sim.reset_stats();
    let error = cyclr.list_cycles_v1("lagging").await.unwrap_err();
    assert!(matches!(error, CyclrError::Server { .. }), "{error:?}");
    assert_eq!(sim.stats().requests_to("GET /v1.0/cycles"), 3, "max_attempts");
}

#[tokio::test]
async fn a_server_that_ignores_the_page_number_is_named_not_read_forever() {
    // Two accounts on every page, whatever `page` says.
    let app = axum::Router::new()
        .route(
            "/oauth/token",
            axum::routing::post(|| async {
                axum::Json(serde_json::json!({"access_token": "t", "token_type": "bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/v1.0/accounts",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!([{"Id": "a", "Name": "A"}, {"Id": "b", "Name": "B"}]))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = ClientConfig::new(format!("http://{addr}"), CLIENT_ID, CLIENT_SECRET.into());
    config.page_size = 2;
    let error = CyclrClient::new(config).unwrap().list_accounts_v1().await.unwrap_err();
    assert!(
        matches!(&error, CyclrError::Decode(message) if message.contains("page 2 is page 1 again")),
        "{error:?}"
    );
    server.abort();
}

#[tokio::test]
async fn v1_state_survives_a_restart_with_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig {
        state_file: Some(dir.path().join("state.json")),
        templates: vec![sync_template()],
        ..SimConfig::new(CLIENT_ID, CLIENT_SECRET)
    };
    let sim = Simulator::start(config.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let cyclr = client(&sim);
    let account = cyclr
        .create_account_v1(&AccountFieldsV1 {
            step_data_errored_retention_hours: Some(48),
            ..named(Some("acme"), "Acme")
        })
        .await
        .unwrap();
    let cycle = cyclr.install_template_v1("acme", "sync", None).await.unwrap();
    let connectors = cyclr.list_account_connectors_v1("acme").await.unwrap();
    sim.shutdown().await;

    let again = Simulator::start(
        SimConfig {
            templates: Vec::new(),
            ..config
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let cyclr = client(&again);
    assert_eq!(cyclr.get_account_v1("acme").await.unwrap(), account);
    assert_eq!(cyclr.get_cycle_v1("acme", &cycle.id).await.unwrap(), cycle);
    assert_eq!(cyclr.list_account_connectors_v1("acme").await.unwrap(), connectors);
    assert_eq!(cyclr.get_template_v1("sync").await.unwrap().name, "Tickets sync");
}
