//! The JSON examples of the seed document (`cyclr-partner-api.txt`), pasted verbatim, parsed
//! into the client's wire types; plus the forms the real service also uses (v1.0 dates,
//! `PricePlanId` as a string or a number, extra fields).

use chrono::{NaiveDateTime, Timelike};
use cyclr::types::{
    Account, AccountFields, AccountUsage, ConnectorAuth, CyclrDate, IdResponse, InstallConnectorBody,
    InstallConnectorRequest, PartnerDetails, PricePlan, PricePlanId, SignInToken, SignInTokenRequest,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const SEED_ID: &str = "00000000000000000000000000000000";

/// A legacy-form date, parsed independently of `CyclrDate::parse`.
fn date(text: &str) -> CyclrDate {
    CyclrDate(
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
            .unwrap()
            .and_utc(),
    )
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

// ---- List Accounts ---------------------------------------------------------------------------

const LIST_ACCOUNTS_RESPONSE: &str = r#"[
  {
    "Id": "00000000000000000000000000000000",
    "Name": "Demo Account",
    "Description": "This account is used for demos.",
    "PricePlanId": 2,
    "LastBillDate": "2017-02-09T16:23:08",
    "NextBillDate": "2017-03-09T16:23:08",
    "AuditInfo": "Demo"
  }
]"#;

#[test]
fn list_accounts_response() {
    let accounts: Vec<Account> = serde_json::from_str(LIST_ACCOUNTS_RESPONSE).unwrap();
    assert_eq!(
        accounts,
        vec![Account {
            id: SEED_ID.into(),
            name: "Demo Account".into(),
            description: Some("This account is used for demos.".into()),
            timezone: None,
            price_plan_id: Some(PricePlanId(2)),
            last_bill_date: Some(date("2017-02-09T16:23:08")),
            next_bill_date: Some(date("2017-03-09T16:23:08")),
            audit_info: Some("Demo".into()),
        }]
    );
    // Written back in the legacy form the seed uses.
    assert_eq!(serde_json::to_value(&accounts).unwrap(), value(LIST_ACCOUNTS_RESPONSE));
}

// ---- Partner Details -------------------------------------------------------------------------

const PARTNER_DETAILS_RESPONSE: &str = r#"{
  "AnonymousAccountsEnabled":true,
  "ApplicationDisplayName":"Example Partner",
  "ApplicationIcon":"data:image/png;base64,...",
  "AppStyle":null,
  "ComingSoonConnectorsEnabled":true,
  "CustomConnectorsEnabled":true,
  "CycleNoun":"Cycle",
  "CycleSharingEnabled":true,
  "Domain":"partner.example.com",
  "IntercomAPIKey":null,
  "IntercomAppId":null,
  "IntercomSecretKey":null,
  "HeaderHtml":null,
  "FooterHtml":null
}"#;

#[test]
fn partner_details_response() {
    let details: PartnerDetails = serde_json::from_str(PARTNER_DETAILS_RESPONSE).unwrap();
    assert_eq!(
        details,
        PartnerDetails {
            anonymous_accounts_enabled: true,
            application_display_name: Some("Example Partner".into()),
            coming_soon_connectors_enabled: true,
            custom_connectors_enabled: true,
            cycle_noun: Some("Cycle".into()),
            cycle_sharing_enabled: true,
            domain: Some("partner.example.com".into()),
        }
    );
}

#[test]
fn intercom_keys_are_not_retained() {
    let mut with_keys = value(PARTNER_DETAILS_RESPONSE);
    with_keys["IntercomAPIKey"] = json!("intercom-api-key-value");
    with_keys["IntercomSecretKey"] = json!("intercom-secret-value");
    let details: PartnerDetails = serde_json::from_value(with_keys).unwrap();
    let written = serde_json::to_string(&details).unwrap();
    let debug = format!("{details:?}");
    for text in [&written, &debug] {
        assert!(
            !text.contains("intercom-api-key-value") && !text.contains("intercom-secret-value"),
            "{text}"
        );
        assert!(!text.to_lowercase().contains("intercom"), "{text}");
    }
}

// ---- Create Account / Update Account -----------------------------------------------------------

const CREATE_ACCOUNT_REQUEST: &str = r#"{
  "Name": "Demo Account",
  "Description": "This account is used for demos.",
  "Timezone": "Europe/London",
  "PricePlanId": 2,
  "NextBillDate": "2017-03-09T16:23:08",
  "AuditInfo": "Demo"
}"#;

const UPDATE_ACCOUNT_REQUEST: &str = r#"{
  "Name": "New Demo Account",
  "Description": "",
  "Timezone": "Europe/London",
  "PricePlanId": 3,
  "NextBillDate": "2017-03-10T16:23:08",
  "AuditInfo": "Demo"
}"#;

/// Create Account's and Update Account's response exactly as the seed prints it.
const SEED_ID_RESPONSE_AS_PRINTED: &str = r#"{
  Id: "00000000000000000000000000000000"
}"#;

#[test]
fn create_and_update_requests_round_trip() {
    let create: AccountFields = serde_json::from_str(CREATE_ACCOUNT_REQUEST).unwrap();
    assert_eq!(
        create,
        AccountFields {
            name: Some("Demo Account".into()),
            description: Some("This account is used for demos.".into()),
            timezone: Some("Europe/London".into()),
            price_plan_id: Some(PricePlanId(2)),
            next_bill_date: Some(date("2017-03-09T16:23:08")),
            audit_info: Some("Demo".into()),
        }
    );
    // What the client sends is the seed's body, field for field.
    assert_eq!(serde_json::to_value(&create).unwrap(), value(CREATE_ACCOUNT_REQUEST));

    let update: AccountFields = serde_json::from_str(UPDATE_ACCOUNT_REQUEST).unwrap();
    assert_eq!(
        update.description.as_deref(),
        Some(""),
        "an empty Description is a value, not an absence"
    );
    assert_eq!(update.price_plan_id, Some(PricePlanId(3)));
    assert_eq!(serde_json::to_value(&update).unwrap(), value(UPDATE_ACCOUNT_REQUEST));
}

#[test]
fn update_sends_only_the_fields_that_are_set() {
    // "All the fields in the request body are optional."
    let empty: AccountFields = serde_json::from_str("{}").unwrap();
    assert!(empty.is_empty());
    assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
    let one = AccountFields {
        price_plan_id: Some(PricePlanId(3)),
        ..Default::default()
    };
    assert_eq!(serde_json::to_value(&one).unwrap(), json!({ "PricePlanId": 3 }));
}

#[test]
fn the_seeds_printed_id_response_is_not_json() {
    // The seed writes the key unquoted; no JSON parser accepts that. The real service
    // returns valid JSON, which is what the client reads (next test).
    assert!(serde_json::from_str::<IdResponse>(SEED_ID_RESPONSE_AS_PRINTED).is_err());
    assert!(serde_json::from_str::<Value>(SEED_ID_RESPONSE_AS_PRINTED).is_err());
}

#[test]
fn the_real_id_response_parses() {
    // The seed's response with its key quoted, as the real service sends it.
    let real = SEED_ID_RESPONSE_AS_PRINTED.replace("Id:", "\"Id\":");
    assert_eq!(
        serde_json::from_str::<IdResponse>(&real).unwrap(),
        IdResponse { id: SEED_ID.into() }
    );
    let compact: IdResponse = serde_json::from_str(r#"{"Id":"JO-Test-1234567890"}"#).unwrap();
    assert_eq!(compact.id, "JO-Test-1234567890");
}

// ---- Get Account Signin Token ------------------------------------------------------------------

const SIGNIN_TOKEN_REQUEST: &str = r#"{
  "AccountId": "00000000000000000000000000000000",
  "Username": "user@example.com"
}"#;

const SIGNIN_TOKEN_RESPONSE: &str = r#"{
  "ExpiresAtUtc": "2016-11-18T10:50:45.6509216Z",
  "Token": "0000000000000000000000000000000000000"
}"#;

#[test]
fn signin_token_request_is_the_seeds() {
    let request = SignInTokenRequest {
        account_id: SEED_ID.into(),
        username: "user@example.com".into(),
    };
    assert_eq!(serde_json::to_value(&request).unwrap(), value(SIGNIN_TOKEN_REQUEST));
}

#[test]
fn signin_token_response_with_seven_fraction_digits() {
    let token: SignInToken = serde_json::from_str(SIGNIN_TOKEN_RESPONSE).unwrap();
    let expected = date("2016-11-18T10:50:45").0.with_nanosecond(650_921_600).unwrap();
    assert_eq!(token.expires_at_utc, CyclrDate(expected));
    assert_eq!(token.token.expose_secret(), "0000000000000000000000000000000000000");
    // The token signs a user in: Debug must not show it.
    assert!(!format!("{token:?}").contains("0000000000000000000000000000000000000"));
}

// ---- Install Connector ---------------------------------------------------------------------------

const INSTALL_WITH_API_KEY: &str = r#"{
  "AccountId": "0000000000000000000000000000000000000",
  "ConnectorName": "Connector",
  "ConnectorVersion": "v1",
  "InstalledName": "Demo Connector",
  "ApiKey": "api-key"
}"#;

const INSTALL_WITH_USERNAME_AND_PASSWORD: &str = r#"{
  "AccountId": "0000000000000000000000000000000000000",
  "ConnectorName": "Connector",
  "ConnectorVersion": "v1",
  "InstalledName": "Demo Connector",
  "Username": "user",
  "Password": "password"
}"#;

fn install(auth: ConnectorAuth) -> InstallConnectorRequest {
    InstallConnectorRequest {
        account_id: "0000000000000000000000000000000000000".into(),
        connector_name: "Connector".into(),
        connector_version: "v1".into(),
        installed_name: "Demo Connector".into(),
        auth,
    }
}

#[test]
fn install_connector_bodies_are_the_seeds() {
    let api_key = install(ConnectorAuth::ApiKey("api-key".into()));
    assert_eq!(serde_json::to_value(&api_key).unwrap(), value(INSTALL_WITH_API_KEY));
    let basic = install(ConnectorAuth::Basic {
        username: "user".into(),
        password: "password".into(),
    });
    assert_eq!(
        serde_json::to_value(&basic).unwrap(),
        value(INSTALL_WITH_USERNAME_AND_PASSWORD)
    );
    let none = serde_json::to_value(install(ConnectorAuth::None)).unwrap();
    assert_eq!(
        none.as_object().unwrap().len(),
        4,
        "no credential fields without auth: {none}"
    );
}

#[test]
fn install_connector_bodies_parse_on_the_server_side() {
    let body: InstallConnectorBody = serde_json::from_str(INSTALL_WITH_API_KEY).unwrap();
    assert_eq!(body.connector_name.as_deref(), Some("Connector"));
    assert_eq!(body.api_key.as_ref().map(|k| k.expose_secret()), Some("api-key"));
    let body: InstallConnectorBody = serde_json::from_str(INSTALL_WITH_USERNAME_AND_PASSWORD).unwrap();
    assert_eq!(body.username.as_deref(), Some("user"));
    assert_eq!(body.password.as_ref().map(|p| p.expose_secret()), Some("password"));
}

#[test]
fn connector_credentials_never_appear_in_debug() {
    let api_key = install(ConnectorAuth::ApiKey("k3y-0f-the-c0nnector".into()));
    let basic = install(ConnectorAuth::Basic {
        username: "user".into(),
        password: "pa55-0f-the-c0nnector".into(),
    });
    for text in [
        format!("{api_key:?}"),
        format!("{basic:#?}"),
        format!("{:?}", basic.auth),
    ] {
        assert!(
            !text.contains("k3y-0f-the-c0nnector") && !text.contains("pa55-0f-the-c0nnector"),
            "{text}"
        );
    }
    let body: InstallConnectorBody = serde_json::from_str(&serde_json::to_string(&basic).unwrap()).unwrap();
    assert!(!format!("{body:?}").contains("pa55-0f-the-c0nnector"));
}

// ---- Get Price Plans -------------------------------------------------------------------------------

const PRICE_PLANS_RESPONSE: &str = r#"[
  {
    "Id": "2",
    "Name": "Starter"
  },
  {
    "Id": "3",
    "Name": "Pro"
  }
]"#;

#[test]
fn price_plans_with_string_ids() {
    let plans: Vec<PricePlan> = serde_json::from_str(PRICE_PLANS_RESPONSE).unwrap();
    assert_eq!(
        plans,
        vec![
            PricePlan {
                id: PricePlanId(2),
                name: "Starter".into()
            },
            PricePlan {
                id: PricePlanId(3),
                name: "Pro".into()
            },
        ]
    );
    // Written back as strings, as the list has them.
    assert_eq!(serde_json::to_value(&plans).unwrap(), value(PRICE_PLANS_RESPONSE));
}

// ---- Get Account Usage -----------------------------------------------------------------------------

const ACCOUNT_USAGE_RESPONSE: &str = r#"{
  "TaskCount": 1623,
  "CycleCount": 10,
  "FromDate": "2016-12-09T16:23:08",
  "ToDate": "2017-01-08T16:23:08",
  "CurrentPricePlanId": 3,
  "AuditInfo": "Demo"
}"#;

#[test]
fn account_usage_response() {
    let usage: AccountUsage = serde_json::from_str(ACCOUNT_USAGE_RESPONSE).unwrap();
    assert_eq!(
        usage,
        AccountUsage {
            task_count: 1623,
            cycle_count: 10,
            from_date: Some(date("2016-12-09T16:23:08")),
            to_date: Some(date("2017-01-08T16:23:08")),
            current_price_plan_id: Some(PricePlanId(3)),
            audit_info: Some("Demo".into()),
        }
    );
}

// ---- what the real service also sends --------------------------------------------------------------

#[test]
fn v1_dates_are_read_and_legacy_dates_written() {
    let v1 = CyclrDate::parse("2017-12-06T15:54:06.6440352Z").unwrap();
    assert_eq!(
        v1.0,
        date("2017-12-06T15:54:06").0.with_nanosecond(644_035_200).unwrap()
    );
    assert_eq!(serde_json::to_value(v1).unwrap(), json!("2017-12-06T15:54:06"));
    let account: Account = serde_json::from_value(json!({
        "Id": "JO-Test-1234567890",
        "Name": "v1.0 account",
        "NextBillDate": "2017-12-06T15:54:06.6440352Z",
    }))
    .unwrap();
    assert_eq!(account.next_bill_date, Some(v1));
    assert!(serde_json::from_value::<CyclrDate>(json!("06/12/2017")).is_err());
}

#[test]
fn price_plan_id_as_number_or_string() {
    for id in [json!(2), json!("2"), json!(" 2 ")] {
        let account: Account = serde_json::from_value(json!({ "Id": "a", "Name": "n", "PricePlanId": id })).unwrap();
        assert_eq!(account.price_plan_id, Some(PricePlanId(2)), "{id}");
        let usage: AccountUsage =
            serde_json::from_value(json!({ "TaskCount": 0, "CycleCount": 0, "CurrentPricePlanId": id })).unwrap();
        assert_eq!(usage.current_price_plan_id, Some(PricePlanId(2)), "{id}");
    }
    let plan: PricePlan = serde_json::from_value(json!({ "Id": 7, "Name": "Numeric" })).unwrap();
    assert_eq!(plan.id, PricePlanId(7));
    assert!(serde_json::from_value::<PricePlan>(json!({ "Id": "gold", "Name": "Gold" })).is_err());
}

#[test]
fn unknown_fields_are_ignored() {
    let mut accounts = value(LIST_ACCOUNTS_RESPONSE);
    accounts[0]["Connectors"] = json!([{ "Id": 1 }]);
    accounts[0]["CreatedOnUtc"] = json!("2017-01-01T00:00:00Z");
    let parsed: Vec<Account> = serde_json::from_value(accounts).unwrap();
    assert_eq!(
        parsed,
        serde_json::from_str::<Vec<Account>>(LIST_ACCOUNTS_RESPONSE).unwrap()
    );

    let mut usage = value(ACCOUNT_USAGE_RESPONSE);
    usage["Extra"] = json!({ "Nested": true });
    assert_eq!(serde_json::from_value::<AccountUsage>(usage).unwrap().task_count, 1623);

    let token: SignInToken =
        serde_json::from_value(json!({ "Token": "t", "ExpiresAtUtc": "2016-11-18T10:50:45Z", "Url": "x" })).unwrap();
    assert_eq!(token.token.expose_secret(), "t");
}

// ---- normalised comparisons ------------------------------------------------------------------

#[test]
fn dates_that_denote_the_same_second_are_equal() {
    use std::collections::HashSet;
    let forms = [
        "2030-03-09T16:23:08.5Z",
        "2030-03-09T16:23:08",
        "2030-03-09T16:23:08.0000000Z",
        "2030-03-09T16:23:08+00:00",
        "2030-03-09T17:23:08.999+01:00",
    ];
    let dates: Vec<CyclrDate> = forms.iter().map(|f| CyclrDate::parse(f).unwrap()).collect();
    for (form, date) in forms.iter().zip(&dates) {
        assert_eq!(*date, dates[1], "{form}");
        assert!(date.same_instant(&dates[1]), "{form}");
        assert_eq!(date.cmp(&dates[1]), std::cmp::Ordering::Equal, "{form}");
        assert_eq!(date.to_rfc3339(), "2030-03-09T16:23:08Z", "{form}");
        assert_eq!(date.to_legacy_string(), "2030-03-09T16:23:08", "{form}");
    }
    assert_eq!(
        dates.iter().collect::<HashSet<_>>().len(),
        1,
        "hashes agree with equality"
    );
    let next_second = CyclrDate::parse("2030-03-09T16:23:09").unwrap();
    assert!(!next_second.same_instant(&dates[0]) && next_second > dates[0]);
    // The normalising constructor drops the fraction the legacy API does not keep.
    let stored = CyclrDate::whole_seconds(dates[0].0);
    assert_eq!(stored.0, dates[1].0);
}

#[test]
fn price_plan_ids_compare_as_numbers_whatever_their_form() {
    let from_string: PricePlanId = "2".parse().unwrap();
    let from_padded: PricePlanId = " 2 ".parse().unwrap();
    let from_json_string: PricePlanId = serde_json::from_value(json!("2")).unwrap();
    let from_json_number: PricePlanId = serde_json::from_value(json!(2)).unwrap();
    assert!(
        [from_string, from_padded, from_json_string, from_json_number]
            .iter()
            .all(|id| *id == PricePlanId(2))
    );
    assert!("two".parse::<PricePlanId>().is_err());
}
