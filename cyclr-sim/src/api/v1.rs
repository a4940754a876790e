//! Cyclr's v1.0 API: accounts, account connectors, templates and cycles. Account-level calls
//! (account connectors, cycles, template installs) need `X-Cyclr-Account`: 401 without it
//! (observed), 404 for an unknown account. Every list pages as [`page`] says.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Json, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use chrono::Utc;
use serde_json::{Value, json};

use super::{ApiError, Fields, ListAfterAnswer, Sim, field, json_object, page, query_param, required_text};
use crate::store::{self, ConnectorInstall, Schedule, connector_id, v1_date};
use crate::{Shared, TemplateSeed, lock};
use cyclr::types::{AccountFieldsV1, CyclrDate, MAX_RETENTION_HOURS};

type Query_ = Query<HashMap<String, String>>;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1.0/accounts", get(list_accounts).post(create_account))
        .route(
            "/v1.0/accounts/{id}",
            get(get_account).put(update_account).delete(delete_account),
        )
        .route("/v1.0/accounts/{id}/usage", get(account_usage))
        .route("/v1.0/accounts/{id}/signintoken", post(signin_token))
        .route("/v1.0/connectors/{connector}/install", post(install_connector))
        .route("/v1.0/account/connectors", get(list_connectors))
        .route(
            "/v1.0/account/connectors/{id}",
            get(get_connector).put(update_connector).delete(delete_connector),
        )
        .route("/v1.0/templates", get(list_templates))
        .route("/v1.0/templates/{id}", get(get_template))
        .route("/v1.0/templates/{id}/install", post(install_template))
        .route("/v1.0/cycles", get(list_cycles))
        .route("/v1.0/cycles/{id}", get(get_cycle).delete(delete_cycle))
        .route("/v1.0/cycles/{id}/activate", put(activate_cycle))
        .route("/v1.0/cycles/{id}/deactivate", put(deactivate_cycle))
        .route("/v1.0/cycles/{id}/prerequisites", get(prerequisites))
        .route("/v1.0/cycles/{id}/variables", get(variables))
        .route("/v1.0/cycles/{id}/variables/{name}", put(set_variable))
}

/// The account of an account-level call.
fn account_header(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("X-Cyclr-Account")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Authorization has been denied for this request: the X-Cyclr-Account header is required.".into(),
        })
}

fn max_page_size(sim: &Shared) -> Option<usize> {
    lock(&sim.faults).max_page_size()
}

// ---- accounts --------------------------------------------------------------------------------

/// The v1.0 account fields of a body; a negative retention is refused, naming the field.
fn account_fields(fields: &Fields) -> Result<AccountFieldsV1, ApiError> {
    let retention = |name: &str| match field::<i64>(fields, name) {
        Some(hours) if hours < 0 => Err(ApiError::bad_request(format!(
            "{name} must be between 0 and {MAX_RETENTION_HOURS}."
        ))),
        hours => Ok(hours.map(|h| u32::try_from(h).unwrap_or(u32::MAX))),
    };
    Ok(AccountFieldsV1 {
        id: field(fields, "Id"),
        name: field(fields, "Name"),
        description: field(fields, "Description"),
        timezone: field(fields, "Timezone"),
        audit_info: field(fields, "AuditInfo"),
        task_audit_info: field(fields, "TaskAuditInfo"),
        step_data_success_retention_hours: retention("StepDataSuccessRetentionHours")?,
        step_data_errored_retention_hours: retention("StepDataErroredRetentionHours")?,
        transaction_error_webhook_enabled: field(fields, "TransactionErrorWebhookEnabled"),
        transaction_error_webhook_url: field(fields, "TransactionErrorWebhookUrl"),
        transaction_error_webhook_include_warnings: field(fields, "TransactionErrorWebhookIncludeWarnings"),
        parent_account_id: field(fields, "ParentAccountId"),
    })
}

async fn list_accounts(State(sim): Sim, Query(query): Query_) -> Json<Vec<Value>> {
    let max = max_page_size(&sim);
    let store = sim.read_store();
    let listed = store.listed(Instant::now()).map(store::AccountRecord::to_v1_wire);
    Json(page(listed, &query, max, false))
}

async fn get_account(State(sim): Sim, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(sim.read_store().get(&id)?.to_v1_wire()))
}

/// 200 with the whole account (not 201); a taken `Id` is 400 `ID already in use`.
async fn create_account(State(sim): Sim, body: Bytes) -> Result<Response, ApiError> {
    let fields = account_fields(&json_object(&body)?)?;
    let mut listing = ListAfterAnswer {
        sim: &sim,
        lag: lock(&sim.faults).list_lag(),
        id: None,
    };
    Ok(sim
        .write(|store| {
            let id = store.create_account_v1(fields, Utc::now())?;
            tracing::info!(account_id = %id, "account created (v1.0)");
            if !listing.lag.is_zero() {
                store.unlist(&id, Instant::now());
                listing.id = Some(id.clone());
            }
            Ok(Json(store.get(&id)?.to_v1_wire()))
        })
        .await)
}

/// Only the fields present change; retention is clamped, a URL without scheme gets `https://`.
async fn update_account(State(sim): Sim, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let object = json_object(&body)?;
    sim.remember_update_body(&object);
    let fields = account_fields(&object)?;
    Ok(sim
        .write(|store| {
            store.update_account_v1(&id, fields)?;
            tracing::info!(account_id = %id, "account updated (v1.0)");
            Ok(Json(store.get(&id)?.to_v1_wire()))
        })
        .await)
}

/// Its connectors and cycles go with it.
async fn delete_account(State(sim): Sim, Path(id): Path<String>) -> Response {
    sim.write(|store| {
        store.delete_account(&id)?;
        tracing::info!(account_id = %id, "account deleted");
        Ok(StatusCode::OK)
    })
    .await
}

async fn account_usage(State(sim): Sim, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = sim.read_store();
    let usage = store::usage(store.get(&id)?, None, Utc::now());
    Ok(Json(json!({
        "Id": id,
        "TasksUsed": usage.task_count,
        "StartTime": usage.from_date.map(|date| v1_date(date.0)),
        "EndTime": usage.to_date.map(|date| v1_date(date.0)),
    })))
}

async fn signin_token(State(sim): Sim, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    required_text(&json_object(&body)?, "Username")?;
    sim.read_store().get(&id)?;
    Ok(Json(super::signin_token_answer()))
}

// ---- account connectors ----------------------------------------------------------------------

async fn install_connector(
    State(sim): Sim,
    Path(connector): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let fields = json_object(&body)?;
    // AuthValue is read only to tell whether credentials came (or to echo it under this
    // fault), never kept or logged.
    let auth_value = field::<String>(&fields, "AuthValue").filter(|value| !value.is_empty());
    if lock(&sim.faults).install_error_echoes_credentials()
        && let Some(secret) = &auth_value
    {
        return Err(ApiError::bad_request(format!(
            "Could not install {connector}: authentication failed with '{secret}'."
        )));
    }
    let install = ConnectorInstall {
        name: field::<String>(&fields, "Name").filter(|name| !name.trim().is_empty()),
        description: field(&fields, "Description"),
        authenticated: auth_value.is_some(),
        properties: field(&fields, "Properties").unwrap_or_default(),
    };
    Ok(sim
        .write(|store| {
            let id = store.install_connector_v1(&account_id, &connector, install)?;
            tracing::info!(%account_id, installed_id = id, "connector installed (v1.0)");
            Ok(Json(store.connector(&account_id, &id.to_string())?.to_wire()))
        })
        .await)
}

async fn list_connectors(
    State(sim): Sim,
    headers: HeaderMap,
    Query(query): Query_,
) -> Result<Json<Vec<Value>>, ApiError> {
    let account_id = account_header(&headers)?;
    let max = max_page_size(&sim);
    let store = sim.read_store();
    let connectors = store
        .get(&account_id)?
        .connectors
        .iter()
        .map(store::InstalledRecord::to_wire);
    Ok(Json(page(connectors, &query, max, false)))
}

async fn get_connector(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let account_id = account_header(&headers)?;
    Ok(Json(sim.read_store().connector(&account_id, &id)?.to_wire()))
}

/// `{"AuthValue"}` re-authenticates, `{"Description"}` changes the description.
async fn update_connector(
    State(sim): Sim,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let fields = json_object(&body)?;
    let authenticate = field::<String>(&fields, "AuthValue").is_some_and(|value| !value.is_empty());
    let description = field(&fields, "Description");
    Ok(sim
        .write(|store| {
            store.update_connector(&account_id, &id, authenticate, description)?;
            Ok(Json(store.connector(&account_id, &id)?.to_wire()))
        })
        .await)
}

async fn delete_connector(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    Ok(sim
        .write(|store| {
            store.delete_connector(&account_id, &id)?;
            Ok(StatusCode::OK)
        })
        .await)
}

// ---- templates -------------------------------------------------------------------------------

fn template_wire(template: &TemplateSeed) -> Value {
    let connectors: Vec<Value> = template
        .connectors
        .iter()
        .map(|c| {
            json!({
                "Id": connector_id(&c.name),
                "Name": c.name,
                "Version": c.version.as_deref().unwrap_or("v1"),
            })
        })
        .collect();
    json!({
        "Id": template.id,
        "Name": template.name,
        "Description": template.description,
        "Connectors": connectors,
        "Tags": [],
    })
}

async fn list_templates(State(sim): Sim, Query(query): Query_) -> Json<Vec<Value>> {
    let max = max_page_size(&sim);
    let store = sim.read_store();
    Json(page(store.templates().iter().map(template_wire), &query, max, false))
}

async fn get_template(State(sim): Sim, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(template_wire(sim.read_store().template(&id)?)))
}

/// Admin: adds a template (`TemplateSeed`'s JSON form), answered in the v1.0 form.
pub(super) async fn add_template(State(sim): Sim, Json(template): Json<TemplateSeed>) -> Result<Json<Value>, ApiError> {
    let Ok(id) = sim.mutate(|store| Ok::<_, Infallible>(store.add_template(template)));
    Ok(Json(template_wire(sim.read_store().template(&id)?)))
}

/// 200 with the new cycle, `Paused`.
async fn install_template(
    State(sim): Sim,
    Path(template_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let name = field::<String>(&json_object(&body)?, "Name").filter(|name| !name.trim().is_empty());
    Ok(sim
        .write(|store| {
            let now = Utc::now();
            let id = store.install_template(&account_id, &template_id, name, now)?;
            tracing::info!(%account_id, cycle_id = %id, "template installed");
            let record = store.get(&account_id)?;
            Ok(Json(record.cycle_wire(record.cycle(&id)?, now)))
        })
        .await)
}

// ---- cycles ----------------------------------------------------------------------------------

async fn list_cycles(State(sim): Sim, headers: HeaderMap, Query(query): Query_) -> Result<Json<Vec<Value>>, ApiError> {
    let account_id = account_header(&headers)?;
    let max = max_page_size(&sim);
    let now = Utc::now();
    let store = sim.read_store();
    let record = store.get(&account_id)?;
    let cycles = record.cycles.iter().map(|cycle| record.cycle_wire(cycle, now));
    Ok(Json(page(cycles, &query, max, false)))
}

async fn get_cycle(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let account_id = account_header(&headers)?;
    let store = sim.read_store();
    let record = store.get(&account_id)?;
    Ok(Json(record.cycle_wire(record.cycle(&id)?, Utc::now())))
}

/// 400 while a prerequisite fails; otherwise 200 with the cycle (the real answer's body is
/// not documented).
async fn activate_cycle(
    State(sim): Sim,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let fields = json_object(&body)?;
    let schedule = Schedule {
        start_time: field::<String>(&fields, "StartTime")
            .and_then(|text| CyclrDate::parse(&text))
            .map(|date| date.0),
        interval: field(&fields, "Interval"),
        run_once: field(&fields, "RunOnce").unwrap_or(false),
    };
    let hold = lock(&sim.faults).hold_cycle_changes();
    Ok(sim
        .write(|store| {
            let now = Utc::now();
            store.activate_cycle(&account_id, &id, schedule, hold, now)?;
            let record = store.get(&account_id)?;
            Ok(Json(record.cycle_wire(record.cycle(&id)?, now)))
        })
        .await)
}

/// `finishQueuedTransactions` is read and ignored: the simulator queues no work.
async fn deactivate_cycle(
    State(sim): Sim,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query_,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let finish = query_param(&query, "finishQueuedTransactions")
        .unwrap_or("true")
        .to_owned();
    let hold = lock(&sim.faults).hold_cycle_changes();
    Ok(sim
        .write(|store| {
            let now = Utc::now();
            store.deactivate_cycle(&account_id, &id, hold, now)?;
            tracing::info!(%account_id, cycle_id = %id, %finish, "cycle deactivated");
            let record = store.get(&account_id)?;
            Ok(Json(record.cycle_wire(record.cycle(&id)?, now)))
        })
        .await)
}

async fn prerequisites(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let account_id = account_header(&headers)?;
    let store = sim.read_store();
    let record = store.get(&account_id)?;
    Ok(Json(json!(record.prerequisites(record.cycle(&id)?))))
}

async fn variables(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Vec<Value>>, ApiError> {
    let account_id = account_header(&headers)?;
    let store = sim.read_store();
    let cycle = store.get(&account_id)?.cycle(&id)?;
    Ok(Json(
        cycle.variables.iter().map(store::VariableRecord::to_wire).collect(),
    ))
}

/// 409 while the cycle is Active.
async fn set_variable(
    State(sim): Sim,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    let value = field::<String>(&json_object(&body)?, "Value");
    Ok(sim
        .write(|store| {
            let variable = store.set_variable(&account_id, &id, &name, value)?;
            Ok(Json(variable.to_wire()))
        })
        .await)
}

async fn delete_cycle(State(sim): Sim, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let account_id = account_header(&headers)?;
    Ok(sim
        .write(|store| {
            store.delete_cycle(&account_id, &id)?;
            tracing::info!(%account_id, cycle_id = %id, "cycle deleted");
            Ok(StatusCode::OK)
        })
        .await)
}
