//! The admin JSON API (`/api/v1`) and `/healthz`.
//!
//! | Method | Path                              | Answer                                   |
//! |--------|-----------------------------------|------------------------------------------|
//! | GET    | `/healthz`                        | `ok` (no auth)                           |
//! | GET    | `/api/v1/status`                  | [`HubStatus`]                            |
//! | GET    | `/api/v1/channels?peer=`          | `[ChannelView]`, only those with `peer` (a public key) when given |
//! | GET    | `/api/v1/channels/{id}`           | [`ChannelView`]                          |
//! | POST   | `/api/v1/channels/{id}/close`     | [`ChannelView`] in its new state         |
//! | GET    | `/api/v1/budgets`                 | `[BudgetView]`                           |
//! | PUT    | `/api/v1/budgets`                 | [`BudgetView`]; body: a core `Budget`    |
//! | DELETE | `/api/v1/budgets/{subject}`       | the core `Budget` removed (`device:fridge`); 404 if none |
//! | GET    | `/api/v1/approvals?state=`        | `[Approval]`, `pending` (default) or `all` |
//! | GET    | `/api/v1/approvals/{id}`          | `Approval`                               |
//! | POST   | `/api/v1/approvals/{id}/approve`  | `Approval`; no body                      |
//! | POST   | `/api/v1/approvals/{id}/deny`     | `Approval`; optional [`DenyBody`]        |
//! | GET    | `/api/v1/spending?group_by=&from=&to=` | [`SpendingReport`]                  |
//! | GET    | `/api/v1/spending.csv?…`          | the same report as `text/csv`            |
//! | GET    | `/api/v1/spending/daily?from=&to=`| [`DailySpendingView`]: paid per subject per day (both dates required, at most a year) |
//! | GET    | `/api/v1/events`                  | server-sent events, one per change ([`LiveEvent`](crate::model::LiveEvent)) |
//! | GET    | `/api/v1/peers`                   | `[PeerView]`                             |
//! | GET    | `/api/v1/services`                | [`ServicesView`] (own and seen offers)   |
//! | POST   | `/api/v1/services/{name}/call`    | [`CallResult`]; body: [`CallBody`]; 409 while an approval is pending |
//! | GET    | `/api/v1/devices`                 | `[DeviceView]`                           |
//! | POST   | `/api/v1/devices`                 | 201 [`PairedDevice`]; body: [`NewDevice`]; 409 if the id is taken |
//! | GET    | `/api/v1/devices/{id}`            | [`DeviceView`]                           |
//! | DELETE | `/api/v1/devices/{id}`            | [`DeviceView`] of the removed device     |
//! | POST   | `/api/v1/devices/{id}/commands/{name}` | 202 `{"sent": true}`; body: the payload (any JSON value) |
//! | GET    | `/api/v1/plugins`                 | `[PluginView]`                           |
//! | POST   | `/api/v1/plugins`                 | 201 [`PluginInstalled`]; body: [`NewPlugin`]; 409 if the name is taken |
//! | GET    | `/api/v1/plugins/{name}`          | [`PluginView`]                           |
//! | PUT    | `/api/v1/plugins/{name}`          | [`PluginInstalled`] (with the version before); body: [`PluginUpgrade`] of the same plugin |
//! | PATCH  | `/api/v1/plugins/{name}`          | [`PluginView`]; body: [`PluginConfigChange`]; changes settings, keeps version and storage |
//! | DELETE | `/api/v1/plugins/{name}`          | 204                                      |
//! | POST   | `/api/v1/plugins/{name}/approve`  | [`PluginView`]; applies the upgrade waiting for approval (409 if none) |
//! | POST   | `/api/v1/plugins/{name}/enable`   | [`PluginView`]; also clears a quarantine |
//! | POST   | `/api/v1/plugins/{name}/disable`  | [`PluginView`]                           |
//!
//! The same router serves the web UI's pages (`/`, `/approvals`, `/login`, `/setup` …; see
//! `ui`).
//!
//! Dates (`from`, `to`) are days of the hub's time zone (midnight there), or unix seconds; `from`
//! is included and `to` is not, and report days are that zone's days.
//!
//! Device ids, command names and plugin names are `[a-z0-9_-]{1,64}`; anything else is a 400.
//! Plugin uploads carry the module as base64 and may be up to [`PLUGIN_BODY_LIMIT`]; every
//! other body up to [`BODY_LIMIT`].
//!
//! Everything under `/api/v1` needs `Authorization: Bearer <admin token>`, or the owner's web
//! session cookie (reads; a change also needs the session's token in `X-CSRF-Token`). Errors are
//! `{"error": "..."}` (see [`ApiError`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, http::StatusCode};
use jiff::tz::TimeZone;
use machinomy_core::{Approval, ChannelId, DeviceId, GroupBy, PublicKey, Timestamp, Verdict};
use serde::{Deserialize, Serialize};

use crate::auth::{AdminAuth, Gate, Principal, require_auth};
use crate::backend::{Backend, PluginUpload};
use crate::csv::spending_csv;
use crate::error::ApiError;
use crate::events::{Streams, events};
use crate::extract::{
    ApiPath, ApiQuery, BODY_LIMIT, JsonBody, OptionalJson, PLUGIN_BODY_LIMIT, PLUGIN_WASM_LIMIT, UploadBody,
};
use crate::model::{
    BudgetView, CallBody, CallResult, ChannelView, DailySpendingView, DenyBody, DeviceView, HubStatus, NewDevice,
    NewPlugin, PairedDevice, PeerView, PluginConfigChange, PluginInstalled, PluginUpgrade, PluginView, ServicesView,
    SpendingQuery, SpendingReport,
};
use crate::ui::session::{Clock, Sessions, SystemClock};

/// The hub's HTTP service: `/healthz`, the admin API over `backend` (guarded by `auth` or the
/// owner's web session) and the web UI (see `ui`).
///
/// Unknown paths answer 404 and known paths with the wrong method 405, both as JSON; request
/// bodies above [`BODY_LIMIT`] answer 413.
pub fn router<B: Backend>(backend: Arc<B>, auth: AdminAuth) -> Router {
    router_with_clock(backend, auth, Arc::new(SystemClock))
}

/// [`router`] with the sessions' and login limiter's clock given (tests move it by hand).
pub(crate) fn router_with_clock<B: Backend>(backend: Arc<B>, auth: AdminAuth, clock: Arc<dyn Clock>) -> Router {
    let sessions = Arc::new(Sessions::new(clock));
    let gate = Arc::new(Gate { admin: auth, sessions: sessions.clone() });
    let pages = crate::ui::routes(backend.clone(), sessions);
    let streams = Streams::new(backend.clone());
    let api = Router::new()
        .route("/api/v1/status", get(status::<B>))
        .route("/api/v1/channels", get(channels::<B>))
        .route("/api/v1/channels/{id}", get(channel::<B>))
        .route("/api/v1/channels/{id}/close", post(close_channel::<B>))
        .route("/api/v1/budgets", get(budgets::<B>).put(set_budget::<B>))
        .route("/api/v1/budgets/{subject}", delete(remove_budget::<B>))
        .route("/api/v1/approvals", get(approvals::<B>))
        .route("/api/v1/approvals/{id}", get(approval::<B>))
        .route("/api/v1/approvals/{id}/approve", post(approve::<B>))
        .route("/api/v1/approvals/{id}/deny", post(deny::<B>))
        .route("/api/v1/spending", get(spending::<B>))
        .route("/api/v1/spending.csv", get(spending_csv_report::<B>))
        .route("/api/v1/spending/daily", get(daily_spending::<B>))
        .route("/api/v1/events", get(events::<B>).with_state(streams))
        .route("/api/v1/peers", get(peers::<B>))
        .route("/api/v1/services", get(services::<B>))
        .route("/api/v1/services/{name}/call", post(call_service::<B>))
        .route("/api/v1/devices", get(devices::<B>).post(add_device::<B>))
        .route("/api/v1/devices/{id}", get(device::<B>).delete(remove_device::<B>))
        .route("/api/v1/devices/{id}/commands/{name}", post(send_command::<B>))
        // Uploads carry a module: only they may be larger than `BODY_LIMIT`.
        .route(
            "/api/v1/plugins",
            get(plugins::<B>).post(install_plugin::<B>.layer(DefaultBodyLimit::max(PLUGIN_BODY_LIMIT))),
        )
        .route(
            "/api/v1/plugins/{name}",
            get(plugin::<B>)
                .put(upgrade_plugin::<B>.layer(DefaultBodyLimit::max(PLUGIN_BODY_LIMIT)))
                .patch(configure_plugin::<B>)
                .delete(remove_plugin::<B>),
        )
        .route("/api/v1/plugins/{name}/approve", post(approve_plugin::<B>))
        .route("/api/v1/plugins/{name}/enable", post(enable_plugin::<B>))
        .route("/api/v1/plugins/{name}/disable", post(disable_plugin::<B>))
        .method_not_allowed_fallback(method_not_allowed)
        // `route_layer`: authentication runs for every API route, including a wrong method.
        .route_layer(middleware::from_fn_with_state(gate, require_auth))
        .with_state(backend);
    Router::new()
        .route("/healthz", get(healthz))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(api)
        .merge(pages)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found(method: Method, uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return ApiError::not_found(format!("there is no {method} {} in this hub's API", uri.path())).into_response();
    }
    crate::ui::not_found_page(uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not accept {method}", uri.path()))
}

async fn status<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<HubStatus>, ApiError> {
    Ok(Json(backend.status().await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsParams {
    peer: Option<String>,
}

async fn channels<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiQuery(params): ApiQuery<ChannelsParams>,
) -> Result<Json<Vec<ChannelView>>, ApiError> {
    let peer = match params.peer.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_peer_key(text)?),
    };
    let mut channels = backend.channels().await?;
    if let Some(peer) = peer {
        channels.retain(|c| c.counterparty == peer);
    }
    Ok(Json(channels))
}

async fn channel<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ChannelView>, ApiError> {
    Ok(Json(backend.channel(parse_channel_id(&id)?).await?))
}

async fn close_channel<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ChannelView>, ApiError> {
    Ok(Json(backend.close_channel(parse_channel_id(&id)?).await?))
}

async fn budgets<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<Vec<BudgetView>>, ApiError> {
    Ok(Json(backend.budgets().await?))
}

async fn set_budget<B: Backend>(
    State(backend): State<Arc<B>>,
    JsonBody(budget): JsonBody<machinomy_core::Budget>,
) -> Result<Json<BudgetView>, ApiError> {
    // `Budget` deserializes through `Budget::new`, so a threshold above the limit never gets here.
    Ok(Json(backend.set_budget(budget).await?))
}

async fn remove_budget<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(subject): ApiPath<String>,
) -> Result<Json<machinomy_core::Budget>, ApiError> {
    let subject = subject.parse::<machinomy_core::Subject>().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(backend.remove_budget(subject).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsParams {
    state: Option<String>,
}

async fn approvals<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiQuery(params): ApiQuery<ApprovalsParams>,
) -> Result<Json<Vec<Approval>>, ApiError> {
    let pending_only = match params.state.as_deref() {
        None | Some("" | "pending") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!("`state` must be `pending` or `all`, not {other:?}")));
        }
    };
    Ok(Json(backend.approvals(pending_only).await?))
}

async fn approval<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(backend.approval(parse_approval_id(&id)?).await?))
}

/// `approve` takes no body; `{}` is tolerated for clients that always send JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

async fn approve<B: Backend>(
    State(backend): State<Arc<B>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<Approval>, ApiError> {
    let id = parse_approval_id(&id)?;
    Ok(Json(backend.decide(id, Verdict::Approve, principal.name()).await?))
}

async fn deny<B: Backend>(
    State(backend): State<Arc<B>>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<DenyBody>,
) -> Result<Json<Approval>, ApiError> {
    let id = parse_approval_id(&id)?;
    Ok(Json(backend.decide(id, Verdict::Deny { reason: body.reason }, principal.name()).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpendingParams {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

impl SpendingParams {
    fn into_query(self, zone: &TimeZone) -> Result<SpendingQuery, ApiError> {
        let group_by = match self.group_by.as_deref() {
            None | Some("" | "subject") => GroupBy::Subject,
            Some("payee") => GroupBy::Payee,
            Some("day") => GroupBy::Day,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`group_by` must be `subject`, `payee` or `day`, not {other:?}"
                )));
            }
        };
        let from = optional_time("from", self.from.as_deref(), zone)?;
        let to = optional_time("to", self.to.as_deref(), zone)?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(ApiError::bad_request(
                "`from` must be before `to` (`from` is included, `to` is not: from=2026-11-01&to=2026-12-01 is November)",
            ));
        }
        Ok(SpendingQuery { group_by, from, to })
    }
}

async fn spending<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiQuery(params): ApiQuery<SpendingParams>,
) -> Result<Json<SpendingReport>, ApiError> {
    Ok(Json(backend.spending(params.into_query(&backend.time_zone())?).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DailyParams {
    from: Option<String>,
    to: Option<String>,
}

async fn daily_spending<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiQuery(params): ApiQuery<DailyParams>,
) -> Result<Json<DailySpendingView>, ApiError> {
    let zone = backend.time_zone();
    let from = optional_time("from", params.from.as_deref(), &zone)?;
    let to = optional_time("to", params.to.as_deref(), &zone)?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::bad_request("`from` and `to` are both needed: from=2026-11-01&to=2026-12-01"));
    };
    if from >= to {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    Ok(Json(backend.daily_spending(from, to).await?))
}

async fn spending_csv_report<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiQuery(params): ApiQuery<SpendingParams>,
) -> Result<Response, ApiError> {
    let report = backend.spending(params.into_query(&backend.time_zone())?).await?;
    let group = match report.group_by {
        GroupBy::Subject => "subject",
        GroupBy::Payee => "payee",
        GroupBy::Day => "day",
    };
    let disposition = format!("attachment; filename=\"machinomy-spending-by-{group}.csv\"");
    let mut response = spending_csv(&report).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn peers<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    Ok(Json(backend.peers().await?))
}

async fn services<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<ServicesView>, ApiError> {
    Ok(Json(backend.services().await?))
}

async fn call_service<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    JsonBody(call): JsonBody<CallBody>,
) -> Result<Json<CallResult>, ApiError> {
    check_service_name(&name)?;
    Ok(Json(backend.call_service(name, call).await?))
}

async fn devices<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<Vec<DeviceView>>, ApiError> {
    Ok(Json(backend.devices().await?))
}

async fn add_device<B: Backend>(
    State(backend): State<Arc<B>>,
    JsonBody(device): JsonBody<NewDevice>,
) -> Result<(StatusCode, Json<PairedDevice>), ApiError> {
    // `NewDevice` deserializes its id through `DeviceId::from_str`, so a bad id never gets here.
    Ok((StatusCode::CREATED, Json(backend.add_device(device).await?)))
}

async fn device<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(backend.device(parse_device_id(&id)?).await?))
}

async fn remove_device<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(backend.remove_device(parse_device_id(&id)?).await?))
}

/// The answer to a command the hub passed on to the device.
#[derive(Debug, Serialize)]
struct CommandSent {
    /// Handed to the broker (or the BLE link); the device's reaction shows in its state.
    sent: bool,
}

async fn send_command<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    JsonBody(payload): JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<CommandSent>), ApiError> {
    let id = parse_device_id(&id)?;
    machinomy_core::device::check_name("command", &name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    backend.send_command(id, name, payload).await?;
    Ok((StatusCode::ACCEPTED, Json(CommandSent { sent: true })))
}

async fn plugins<B: Backend>(State(backend): State<Arc<B>>) -> Result<Json<Vec<PluginView>>, ApiError> {
    Ok(Json(backend.plugins().await?))
}

async fn plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(backend.plugin(name).await?))
}

async fn install_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    UploadBody(new): UploadBody<NewPlugin>,
) -> Result<(StatusCode, Json<PluginInstalled>), ApiError> {
    let upload = PluginUpload { wasm: decode_wasm(&new.wasm)?, manifest: new.manifest };
    Ok((StatusCode::CREATED, Json(backend.install_plugin(upload, new.config).await?)))
}

async fn upgrade_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    UploadBody(upgrade): UploadBody<PluginUpgrade>,
) -> Result<Json<PluginInstalled>, ApiError> {
    check_plugin_name(&name)?;
    let upload = PluginUpload { wasm: decode_wasm(&upgrade.wasm)?, manifest: upgrade.manifest };
    Ok(Json(backend.upgrade_plugin(name, upload, upgrade.config).await?))
}

async fn configure_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    JsonBody(settings): JsonBody<PluginConfigChange>,
) -> Result<Json<PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(backend.configure_plugin(name, settings.config).await?))
}

async fn remove_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_plugin_name(&name)?;
    backend.remove_plugin(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn approve_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(backend.approve_plugin(name).await?))
}

async fn enable_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(backend.set_plugin_enabled(name, true).await?))
}

async fn disable_plugin<B: Backend>(
    State(backend): State<Arc<B>>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<PluginView>, ApiError> {
    check_plugin_name(&name)?;
    Ok(Json(backend.set_plugin_enabled(name, false).await?))
}

/// A plugin name: `[a-z0-9_-]{1,64}` (also its budget subject and its directory's name).
fn check_plugin_name(name: &str) -> Result<(), ApiError> {
    if machinomy_core::plugin::valid_plugin_name(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(machinomy_core::plugin::ManifestError::BadName(name.to_owned()).to_string()))
}

/// The `wasm` field of an upload: base64 (standard alphabet, padded) of at most
/// [`PLUGIN_WASM_LIMIT`] bytes.
fn decode_wasm(text: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let wasm = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| {
        ApiError::bad_request(format!("invalid request body: `wasm` is not base64 (standard alphabet, padded): {e}"))
    })?;
    if wasm.len() > PLUGIN_WASM_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the module is {} bytes; the most is {PLUGIN_WASM_LIMIT}", wasm.len()),
        ));
    }
    Ok(wasm)
}

/// The longest service name (the peer protocol's limit on an offer's name).
const MAX_SERVICE_NAME: usize = machinomy_core::wire::MAX_NAME;

/// A service name: 1 to 64 characters of `A-Z a-z 0-9 - _ .` (what a URL path carries unescaped).
fn check_service_name(name: &str) -> Result<(), ApiError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if (1..=MAX_SERVICE_NAME).contains(&name.len()) && name.bytes().all(allowed) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "the service name must be 1 to {MAX_SERVICE_NAME} characters of A-Z, a-z, 0-9, '-', '_' or '.', not {name:?}"
    )))
}

fn parse_peer_key(text: &str) -> Result<PublicKey, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`peer` must be a public key (64 hex characters), not {text:?}")))
}

fn parse_device_id(text: &str) -> Result<DeviceId, ApiError> {
    text.parse().map_err(|e: machinomy_core::DeviceError| ApiError::bad_request(e.to_string()))
}

fn parse_channel_id(text: &str) -> Result<ChannelId, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("{text:?} is not a channel id (64 hex characters)")))
}

fn parse_approval_id(text: &str) -> Result<u64, ApiError> {
    if !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(id) = text.parse()
    {
        return Ok(id);
    }
    Err(ApiError::bad_request(format!("{text:?} is not an approval id (a whole number)")))
}

fn optional_time(name: &str, value: Option<&str>, zone: &TimeZone) -> Result<Option<Timestamp>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => parse_time(text, zone).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{name}` must be a date (YYYY-MM-DD, in the hub's time zone) or unix seconds, not {text:?}"
            ))
        }),
    }
}

/// Unix seconds (`1764547200`) or a calendar date (`2026-12-01`: midnight in `zone`).
fn parse_time(text: &str, zone: &TimeZone) -> Option<Timestamp> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Timestamp);
    }
    let midnight = parse_date(text)?.to_zoned_datetime(zone.clone()).ok()?.timestamp().as_second();
    // Dates before 1970 are refused, as unix seconds cannot be negative either.
    u64::try_from(midnight).ok().map(Timestamp)
}

/// A calendar date written `YYYY-MM-DD`, and nothing else; days a month lacks are refused.
pub(crate) fn parse_date(text: &str) -> Option<jiff::civil::Date> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = text.split('-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(y), Some(m), Some(d), None) if digits(y, 4) && digits(m, 2) && digits(d, 2) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests;
