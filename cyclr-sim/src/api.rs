//! The HTTP side: routes, the fault and token layers, the endpoint handlers, the admin API.
//!
//! Request bodies are read leniently, as the real (ASP.NET) service reads them: property
//! names match case-insensitively, unknown properties are ignored, and a property of the
//! wrong type is ignored rather than rejected.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::FormRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::faults::{Faults, LostResponse, Verdict};
use super::store::{self, Store};
use super::{Shared, SimStats, lock};
use cyclr::types::{Account, AccountFields, AccountId, AccountUsage, CyclrDate, ErrorBody, IdResponse, PricePlan};

mod v1;

type Sim = State<Arc<Shared>>;
type Fields = Map<String, Value>;

/// Page size of a List Accounts call that names a `page` but no `pageSize`.
const DEFAULT_PAGE_SIZE: usize = 50;

/// The page of `html_answer`, as a web application firewall writes one: longer than the 200
/// characters a client quotes of it.
const FIREWALL_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Request Rejected</title></head>\n\
<body><h1>Request Rejected</h1><p>The requested URL was rejected by the web application \
firewall. Please consult with your administrator.</p><p>Your support ID is: \
8620134751190384651</p><p><a href='javascript:history.back();'>[Go Back]</a></p></body></html>\n";

/// How long a sign-in token lasts, per Cyclr's documentation.
const SIGNIN_TOKEN_TTL: chrono::Duration = chrono::Duration::minutes(5);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/partner/accounts", get(list_accounts))
        .route("/api/partner/details", get(partner_details))
        .route("/api/partner/createaccount", post(create_account))
        .route("/api/partner/accounts/{id}", put(update_account))
        .route("/api/partner/createaccountsignintoken", post(create_signin_token))
        .route("/api/partner/installconnector", post(install_connector))
        .route("/api/partner/priceplans", get(price_plans))
        .route("/api/partner/accounts/{id}/billing", get(account_usage))
        .merge(v1::routes())
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_token))
        // Added after the token layer, so it needs no token; the fault layer covers it.
        .route("/oauth/token", post(issue_token))
        .route_layer(middleware::from_fn_with_state(shared.clone(), faults_and_stats));
    let admin = Router::new()
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/stats", get(get_stats))
        .route("/_sim/stats/reset", post(reset_stats))
        .route("/_sim/tokens/expire", post(expire_tokens))
        .route("/_sim/templates", post(v1::add_template))
        .route("/_sim/client-secret", put(set_client_secret));
    api.merge(admin).fallback(no_such_resource).with_state(shared)
}

/// An error answered with Cyclr's `{"Message": …}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn name_required() -> Self {
        ApiError::bad_request("Name is required.")
    }

    pub fn account_not_found(id: &str) -> Self {
        ApiError::not_found(format!("Account {id} not found."))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Authorization has been denied for this request.".into(),
        }
    }

    fn server_error(status: StatusCode) -> Self {
        let message = if status == StatusCode::SERVICE_UNAVAILABLE {
            "The service is unavailable."
        } else {
            "An error has occurred."
        };
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { message: self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl Shared {
    /// Applies a write and answers it, unless "commit then fail" asks for its response to be
    /// lost: then the write stays applied and the client gets a 500 or a dropped connection.
    async fn write<T: IntoResponse>(&self, change: impl FnOnce(&mut Store) -> Result<T, ApiError>) -> Response {
        let answer = match self.mutate(change) {
            Ok(answer) => answer,
            Err(e) => return e.into_response(),
        };
        lock(&self.stats).writes += 1;
        let delay = lock(&self.faults).write_response_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let lost = lock(&self.faults).take_commit_then_fail();
        if lost.is_some() {
            lock(&self.stats).lost_responses += 1;
        }
        match lost {
            None => answer.into_response(),
            Some(LostResponse::ServerError) => {
                tracing::warn!("fault: write applied, answering 500");
                ApiError::server_error(StatusCode::INTERNAL_SERVER_ERROR).into_response()
            }
            Some(LostResponse::Disconnect) => {
                tracing::warn!("fault: write applied, dropping the connection");
                // A body that fails at once makes the server close the connection before the
                // buffered response head is flushed.
                let failing = futures::stream::once(async { Err::<Bytes, _>(std::io::Error::other("response lost")) });
                Response::new(Body::from_stream(failing))
            }
        }
    }
}

/// Counts every API request by route template, then applies latency, the firewall, outage,
/// rate limit and errors. Under `apply_after_disconnect` the rest runs in a task of its own,
/// which the server does not cancel when the client goes away (it drops only this future).
async fn faults_and_stats(State(sim): Sim, route: MatchedPath, request: Request, next: Next) -> Response {
    let endpoint = format!("{} {}", request.method(), route.as_str());
    *lock(&sim.stats).requests.entry(endpoint.clone()).or_default() += 1;
    lock(&sim.request_log).push(Instant::now());
    if lock(&sim.faults).apply_after_disconnect() {
        return tokio::spawn(faulted(sim, endpoint, request, next))
            .await
            .unwrap_or_else(|_| ApiError::server_error(StatusCode::INTERNAL_SERVER_ERROR).into_response());
    }
    faulted(sim, endpoint, request, next).await
}

async fn faulted(sim: Arc<Shared>, endpoint: String, request: Request, next: Next) -> Response {
    let latency = lock(&sim.faults).latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let verdict = lock(&sim.faults).verdict(&endpoint);
    let response = match verdict {
        Verdict::Proceed => next.run(request).await,
        Verdict::RateLimited { retry_after } => {
            let message = format!("Too many requests. Retry after {retry_after}.");
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(ErrorBody { message })).into_response();
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Verdict::ServerError(status) => ApiError::server_error(status).into_response(),
        Verdict::Rejected(message) => {
            tracing::warn!(%endpoint, chars = message.len(), "fault: rejected with a long message");
            ApiError::bad_request(message).into_response()
        }
        Verdict::Html(status) => {
            tracing::warn!(%endpoint, "fault: answered by the firewall's HTML page");
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                FIREWALL_PAGE,
            )
                .into_response()
        }
    };
    let status = response.status();
    *lock(&sim.stats).responses.entry(status.as_u16()).or_default() += 1;
    tracing::debug!(%endpoint, status = status.as_u16(), "request");
    response
}

async fn require_token(State(sim): Sim, request: Request, next: Next) -> Response {
    if bearer_token(request.headers()).is_some_and(|token| sim.token_valid(token)) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers.get(header::AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn no_such_resource() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "No HTTP resource was found that matches the request URI.".into(),
    }
}

// ---- request parsing -------------------------------------------------------------------------

/// A JSON object body; an empty body is an object with no fields.
fn json_object(body: &Bytes) -> Result<Fields, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(ApiError::bad_request("The request is invalid.")),
    }
}

/// A field by case-insensitive name; absent when missing, null or of the wrong type.
fn field<T: DeserializeOwned>(fields: &Fields, name: &str) -> Option<T> {
    let (_, value) = fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(name))?;
    if value.is_null() {
        return None;
    }
    serde_json::from_value(value.clone()).ok()
}

fn required_text(fields: &Fields, name: &str) -> Result<String, ApiError> {
    field::<String>(fields, name)
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("{name} is required.")))
}

fn account_fields(fields: &Fields) -> AccountFields {
    AccountFields {
        name: field(fields, "Name"),
        description: field(fields, "Description"),
        timezone: field(fields, "Timezone"),
        price_plan_id: field(fields, "PricePlanId"),
        next_bill_date: field(fields, "NextBillDate"),
        audit_info: field(fields, "AuditInfo"),
    }
}

/// A query parameter by case-insensitive name, as ASP.NET binds them; empty counts as absent.
fn query_param<'q>(query: &'q HashMap<String, String>, name: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

// ---- OAuth -----------------------------------------------------------------------------------

async fn issue_token(State(sim): Sim, form: Result<Form<HashMap<String, String>>, FormRejection>) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Send a form body with grant_type, client_id and client_secret.",
        );
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only client_credentials is supported.",
        );
    }
    if !sim.credentials_match(form.get("client_id"), form.get("client_secret")) {
        tracing::warn!("token refused: invalid client credentials");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client credentials are invalid.",
        );
    }
    let ttl = sim.token_ttl();
    let Ok(token) = sim.mutate(|store| Ok::<_, Infallible>(store.issue_token(ttl, Utc::now())));
    tracing::debug!(expires_in = ttl.as_secs(), "token issued");
    Json(json!({
        "token_type": "bearer",
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "clientId": sim.client_id,
    }))
    .into_response()
}

/// OAuth's own error form, plus Cyclr's `Message` so clients that read only that see the cause.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description, "Message": description })),
    )
        .into_response()
}

// ---- Partner API -----------------------------------------------------------------------------

/// One page of `items` (`page` from 1, `pageSize`), capped at `max_page_size`. Without either
/// parameter the whole list, capped too unless `whole_unpaged` (the Partner API's List
/// Accounts, which knows no paging). A page past the end is empty.
fn page<T>(
    items: impl Iterator<Item = T>,
    query: &HashMap<String, String>,
    max_page_size: Option<usize>,
    whole_unpaged: bool,
) -> Vec<T> {
    let page = query_param(query, "page").and_then(|v| v.parse::<usize>().ok());
    let page_size = query_param(query, "pageSize").and_then(|v| v.parse::<usize>().ok());
    let cap = max_page_size.unwrap_or(usize::MAX).max(1);
    match (page, page_size) {
        (None, None) if whole_unpaged => items.collect(),
        (None, None) => items.take(cap).collect(),
        _ => {
            let size = page_size.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, cap);
            let skip = (page.unwrap_or(1).max(1) - 1).saturating_mul(size);
            items.skip(skip).take(size).collect()
        }
    }
}

/// The accounts List Accounts shows now, paged as [`page`] says.
fn accounts_page(sim: &Shared, query: &HashMap<String, String>, whole_unpaged: bool) -> Vec<Account> {
    let (max_page_size, empty) = {
        let faults = lock(&sim.faults);
        (faults.max_page_size(), faults.lists_empty())
    };
    if empty {
        return Vec::new();
    }
    let store = sim.read_store();
    let accounts = store.listed(Instant::now()).map(|record| record.account.clone());
    page(accounts, query, max_page_size, whole_unpaged)
}

/// List Accounts with exactly the seed's fields: no `Timezone` (the seed's list shows none,
/// although Create and Update take it), and `null` for a field never set.
async fn list_accounts(State(sim): Sim, Query(query): Query<HashMap<String, String>>) -> Json<Vec<Value>> {
    Json(accounts_page(&sim, &query, true).iter().map(legacy_account).collect())
}

/// One account of the seed's List Accounts.
fn legacy_account(account: &Account) -> Value {
    json!({
        "Id": account.id,
        "Name": account.name,
        "Description": account.description,
        "PricePlanId": account.price_plan_id,
        "LastBillDate": account.last_bill_date,
        "NextBillDate": account.next_bill_date,
        "AuditInfo": account.audit_info,
    })
}

async fn partner_details() -> Json<Value> {
    Json(json!({
        "AnonymousAccountsEnabled": true,
        "ApplicationDisplayName": "Example Partner",
        "ApplicationIcon": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
        "AppStyle": null,
        "ComingSoonConnectorsEnabled": true,
        "CustomConnectorsEnabled": true,
        "CycleNoun": "Cycle",
        "CycleSharingEnabled": true,
        "Domain": "partner.example.com",
        "IntercomAPIKey": null,
        "IntercomAppId": null,
        "IntercomSecretKey": null,
        "HeaderHtml": null,
        "FooterHtml": null,
    }))
}

async fn price_plans() -> Json<Vec<PricePlan>> {
    Json(store::price_plans())
}

async fn create_account(State(sim): Sim, body: Bytes) -> Result<Response, ApiError> {
    let fields = account_fields(&json_object(&body)?);
    let mut listing = ListAfterAnswer {
        sim: &sim,
        lag: lock(&sim.faults).list_lag(),
        id: None,
    };
    Ok(sim
        .write(|store| {
            let id = store.create_account(fields, Utc::now())?;
            tracing::info!(account_id = %id, "account created");
            if !listing.lag.is_zero() {
                store.unlist(&id, Instant::now());
                listing.id = Some(id.clone());
            }
            Ok(Json(IdResponse { id }))
        })
        .await)
}

/// Under `list_lag_ms`, lists the account a create made `lag` after the create answered; on
/// drop, so also when the client went away before the answer.
struct ListAfterAnswer<'a> {
    sim: &'a Shared,
    lag: Duration,
    id: Option<AccountId>,
}

impl Drop for ListAfterAnswer<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut store = self.sim.store.write().unwrap_or_else(PoisonError::into_inner);
            store.list_from(&id, Instant::now() + self.lag);
        }
    }
}

async fn update_account(State(sim): Sim, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let object = json_object(&body)?;
    sim.remember_update_body(&object);
    let fields = account_fields(&object);
    Ok(sim
        .write(|store| {
            store.update_account(&id, fields)?;
            tracing::info!(account_id = %id, "account updated");
            Ok(Json(IdResponse { id }))
        })
        .await)
}

async fn create_signin_token(State(sim): Sim, body: Bytes) -> Result<Json<Value>, ApiError> {
    let fields = json_object(&body)?;
    let account_id = required_text(&fields, "AccountId")?;
    required_text(&fields, "Username")?;
    sim.read_store().get(&account_id)?;
    Ok(Json(signin_token_answer()))
}

/// A new sign-in token, as both APIs answer it.
fn signin_token_answer() -> Value {
    json!({
        "ExpiresAtUtc": store::v1_date(Utc::now() + SIGNIN_TOKEN_TTL),
        "Token": store::random_hex(1),
    })
}

async fn install_connector(State(sim): Sim, body: Bytes) -> Result<Response, ApiError> {
    let fields = json_object(&body)?;
    let account_id = required_text(&fields, "AccountId")?;
    let connector_name = required_text(&fields, "ConnectorName")?;
    let version = field(&fields, "ConnectorVersion").unwrap_or_else(|| "v1".to_owned());
    let installed_name = field(&fields, "InstalledName").unwrap_or_else(|| connector_name.clone());
    // ApiKey and Password are read only to echo them back under this fault, never kept or logged.
    if lock(&sim.faults).install_error_echoes_credentials()
        && let Some(secret) = field::<String>(&fields, "ApiKey").or_else(|| field(&fields, "Password"))
    {
        return Err(ApiError::bad_request(format!(
            "Could not install {connector_name}: authentication failed with '{secret}'."
        )));
    }
    Ok(sim
        .write(|store| {
            let installed_id = store.install_connector(&account_id, connector_name, version, installed_name)?;
            tracing::info!(%account_id, installed_id, "connector installed");
            Ok(StatusCode::OK)
        })
        .await)
}

async fn account_usage(
    State(sim): Sim,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AccountUsage>, ApiError> {
    let from = match query_param(&query, "fromDate") {
        None => None,
        Some(text) => Some(
            CyclrDate::parse(text)
                .ok_or_else(|| ApiError::bad_request(format!("The value '{text}' is not valid for fromDate.")))?,
        ),
    };
    let store = sim.read_store();
    Ok(Json(store::usage(store.get(&id)?, from, Utc::now())))
}

// ---- admin API (tests only: no authentication) -----------------------------------------------

async fn get_faults(State(sim): Sim) -> Json<Faults> {
    Json(sim.faults())
}

async fn put_faults(State(sim): Sim, Json(faults): Json<Faults>) -> Json<Faults> {
    sim.set_faults(faults);
    Json(sim.faults())
}

async fn get_stats(State(sim): Sim) -> Json<SimStats> {
    Json(sim.stats())
}

async fn reset_stats(State(sim): Sim) -> StatusCode {
    sim.reset_stats();
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(sim): Sim) -> StatusCode {
    sim.expire_tokens();
    StatusCode::NO_CONTENT
}

/// `{"client_secret": "…"}`: the secret `POST /oauth/token` accepts from now on.
async fn set_client_secret(State(sim): Sim, Json(body): Json<Value>) -> StatusCode {
    match body.get("client_secret").and_then(Value::as_str) {
        Some(secret) if !secret.is_empty() => {
            sim.set_client_secret(secret.to_owned());
            StatusCode::NO_CONTENT
        }
        _ => StatusCode::BAD_REQUEST,
    }
}
