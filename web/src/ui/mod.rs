//! The homeowner's web UI: server-rendered pages that work without JavaScript.
//!
//! | Method | Path                        | What                                             |
//! |--------|-----------------------------|--------------------------------------------------|
//! | GET    | `/setup`                    | first run: the form that sets the owner's password |
//! | POST   | `/setup`                    | sets it (once; 409 after), signs in, 303 to `/`  |
//! | GET    | `/login`                    | the sign-in form                                 |
//! | POST   | `/login`                    | signs in (303 to `/`); 401 wrong, 429 locked out |
//! | POST   | `/logout`                   | ends the session, 303 to `/login`                |
//! | GET    | `/`                         | the dashboard                                    |
//! | GET    | `/approvals`                | pending spends with approve/deny forms, and recent decisions |
//! | POST   | `/approvals/{id}/approve`   | approves, 303 back with a message                |
//! | POST   | `/approvals/{id}/deny`      | denies with an optional `reason`, 303 back       |
//! | GET    | `/static/ui.css`            | the stylesheet (no session needed)               |
//!
//! Every page needs the owner's session: without one a GET is sent to `/login` (or `/setup`
//! before a password is set) and anything else is refused with 403. Every form posted from a
//! session carries the session's CSRF token (`csrf`); the login and setup forms, which have no
//! session yet, carry a double-submit token (`form_token`, also in a `SameSite=Strict` cookie).
//! A form without the right token is refused with 403 before anything is read from it.

pub(crate) mod password;
pub(crate) mod session;
mod view;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use machinomy_core::{Currency, Verdict};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::backend::{Backend, BackendError};
use crate::error::ApiError;

use self::password::FieldError;
use self::session::{
    FORM_COOKIE, Flash, SessionInfo, Sessions, cleared_session_cookie, cookie, form_cookie, random_token, same_secret,
    session_cookie,
};
use self::view::{
    ApprovalsPage, BudgetRow, Count, DashboardPage, DecidedRow, ErrorPage, Layout, LoginPage, PaymentRow, PendingRow,
    SetupPage,
};

/// Pending approvals the dashboard lists (the approvals page has them all).
const DASHBOARD_PENDING: usize = 5;
/// Payments the dashboard lists.
pub(crate) const DASHBOARD_PAYMENTS: usize = 10;
/// Decided approvals the approvals page lists.
const DECIDED_SHOWN: usize = 20;
/// The longest reason a denial may give, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 500;

const STYLESHEET: &str = include_str!("../../static/ui.css");

/// What the pages' handlers share.
#[derive(Debug)]
pub(crate) struct Ui<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) sessions: Arc<Sessions>,
}

impl<B> Clone for Ui<B> {
    fn clone(&self) -> Self {
        Ui { backend: self.backend.clone(), sessions: self.sessions.clone() }
    }
}

/// The pages, to merge into the hub's router.
pub(crate) fn routes<B: Backend>(backend: Arc<B>, sessions: Arc<Sessions>) -> Router {
    Router::new()
        .route("/", get(dashboard::<B>))
        .route("/approvals", get(approvals::<B>))
        .route("/approvals/{id}/approve", post(approve::<B>))
        .route("/approvals/{id}/deny", post(deny::<B>))
        .route("/setup", get(setup_form::<B>).post(setup::<B>))
        .route("/login", get(login_form::<B>).post(login::<B>))
        .route("/logout", post(logout::<B>))
        .route_layer(middleware::map_response(page_headers))
        .route("/static/ui.css", get(stylesheet))
        .with_state(Ui { backend, sessions })
}

/// Pages carry private data and run no script yet; nothing may frame them.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600")),
        ],
        STYLESHEET,
    )
}

/// Why a page cannot be shown: somewhere else to go, or an error page.
#[derive(Debug)]
pub(crate) enum PageError {
    /// 303 to this path.
    Redirect(&'static str),
    Page {
        status: StatusCode,
        message: String,
    },
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Page { status, message: message.into() }
    }

    fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }

    fn internal(detail: impl std::fmt::Display) -> PageError {
        PageError::from(ApiError::internal(detail))
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError::new(error.status(), error.message())
    }
}

impl From<BackendError> for PageError {
    fn from(error: BackendError) -> PageError {
        PageError::from(ApiError::from(error))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Redirect(to) => Redirect::to(to).into_response(),
            PageError::Page { status, message } => {
                let reason = status.canonical_reason().unwrap_or("Error").to_owned();
                let page = ErrorPage { reason, message };
                (status, render(&page)).into_response()
            }
        }
    }
}

/// The page's HTML; a template that fails to render (it cannot, short of a bug) is a 500.
fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "a page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, crate::INTERNAL_ERROR_MESSAGE).into_response()
        }
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

const CSRF_REFUSED: &str = "This form did not come from this hub's own pages (its security token is missing or \
                            wrong), so it was refused. Reload the page and try again.";

/// The owner's session behind a page request.
#[derive(Debug)]
pub(crate) struct Owner(SessionInfo);

impl<B: Backend> FromRequestParts<Ui<B>> for Owner {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui<B>) -> Result<Owner, PageError> {
        if let Some(info) = ui.sessions.find(&parts.headers) {
            return Ok(Owner(info));
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            let first_run = ui.backend.owner_password_hash().await?.is_none();
            return Err(PageError::Redirect(if first_run { "/setup" } else { "/login" }));
        }
        Err(PageError::forbidden(
            "You are not signed in (your session ended, or this form came from another site). Sign in and try again.",
        ))
    }
}

/// A form posted from the owner's session with the session's CSRF token; the token is checked
/// before the form is parsed, whatever its content type claims.
#[derive(Debug)]
pub(crate) struct SessionForm<T> {
    owner: SessionInfo,
    form: T,
}

#[derive(Debug, Default, Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<B: Backend, T: DeserializeOwned> FromRequest<Ui<B>> for SessionForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, ui: &Ui<B>) -> Result<SessionForm<T>, PageError> {
        let (mut parts, body) = request.into_parts();
        let Owner(owner) = Owner::from_request_parts(&mut parts, ui).await?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), ui)
            .await
            .map_err(|e| PageError::new(e.status(), e.body_text()))?;
        let token: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        if !same_secret(&token.csrf, &owner.csrf) {
            return Err(PageError::forbidden(CSRF_REFUSED));
        }
        Ok(SessionForm { owner, form: parse_form(&bytes)? })
    }
}

fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PageError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, format!("This form could not be read: {e}.")))
}

/// A form that carries nothing but its token.
#[derive(Debug, Deserialize)]
struct NoFields {}

/// The login and setup forms' token: the cookie's if the browser has a good one, else a new one.
fn form_token(headers: &HeaderMap) -> Result<(String, bool), PageError> {
    match cookie(headers, FORM_COOKIE) {
        Some(token) if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok((token.to_owned(), false))
        }
        _ => Ok((random_token().map_err(PageError::internal)?, true)),
    }
}

/// The login or setup page, setting the form cookie when it is new.
fn form_page(status: StatusCode, page: &impl Template, token: &str, new_cookie: bool) -> Response {
    let response = (status, render(page)).into_response();
    if new_cookie { with_cookie(response, &form_cookie(token)) } else { response }
}

/// Refuses a login or setup form whose token is not the one in the browser's cookie.
fn check_form_token(headers: &HeaderMap, sent: &str) -> Result<(), PageError> {
    match cookie(headers, FORM_COOKIE) {
        Some(expected) if same_secret(sent, expected) => Ok(()),
        _ => Err(PageError::forbidden(CSRF_REFUSED)),
    }
}

/// Signs the owner in: a new session, its cookie, and on to the dashboard.
fn signed_in(ui_sessions: &Sessions) -> Result<Response, PageError> {
    let info = ui_sessions.create().map_err(PageError::internal)?;
    Ok(with_cookie(Redirect::to("/").into_response(), &session_cookie(&info.id)))
}

async fn setup_form<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap) -> Result<Response, PageError> {
    if ui.backend.owner_password_hash().await?.is_some() {
        return Err(PageError::Redirect("/login"));
    }
    let (token, new) = form_token(&headers)?;
    let page = SetupPage { form_token: token.clone(), password_error: None, confirm_error: None };
    Ok(form_page(StatusCode::OK, &page, &token, new))
}

#[derive(Debug, Deserialize)]
struct SetupForm {
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

const ALREADY_SET: &str = "The owner's password is already set; sign in with it. (To start over, stop the hub \
                           and remove owner.password from its data directory.)";

async fn setup<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap, body: Bytes) -> Result<Response, PageError> {
    let form: SetupForm = parse_form(&body)?;
    check_form_token(&headers, &form.form_token)?;
    if ui.backend.owner_password_hash().await?.is_some() {
        return Err(PageError::new(StatusCode::CONFLICT, ALREADY_SET));
    }
    if let Err(FieldError { field, message }) = password::check_new(&form.password, &form.confirm) {
        let (password_error, confirm_error) =
            if field == "confirm" { (None, Some(message)) } else { (Some(message), None) };
        let page = SetupPage { form_token: form.form_token.clone(), password_error, confirm_error };
        return Ok(form_page(StatusCode::UNPROCESSABLE_ENTITY, &page, &form.form_token, false));
    }
    let hash = tokio::task::spawn_blocking(move || password::hash(&form.password))
        .await
        .map_err(PageError::internal)?
        .map_err(PageError::internal)?;
    match ui.backend.set_owner_password_hash(hash).await {
        Ok(()) => {}
        // Another setup won the race.
        Err(BackendError::Conflict(_)) => return Err(PageError::new(StatusCode::CONFLICT, ALREADY_SET)),
        Err(e) => return Err(e.into()),
    }
    tracing::info!("the owner's password was set");
    signed_in(&ui.sessions)
}

async fn login_form<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap) -> Result<Response, PageError> {
    if ui.backend.owner_password_hash().await?.is_none() {
        return Err(PageError::Redirect("/setup"));
    }
    if ui.sessions.find(&headers).is_some() {
        return Err(PageError::Redirect("/"));
    }
    let (token, new) = form_token(&headers)?;
    let page = LoginPage { form_token: token.clone(), error: None, note: None };
    Ok(form_page(StatusCode::OK, &page, &token, new))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    password: String,
}

async fn login<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap, body: Bytes) -> Result<Response, PageError> {
    let form: LoginForm = parse_form(&body)?;
    check_form_token(&headers, &form.form_token)?;
    let Some(stored) = ui.backend.owner_password_hash().await? else {
        return Err(PageError::Redirect("/setup"));
    };
    let page = |error: String| LoginPage { form_token: form.form_token.clone(), error: Some(error), note: None };
    if let Err(wait) = ui.sessions.begin_login() {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!(wait_secs = secs, "a login was refused: too many wrong passwords");
        let message = format!("Too many wrong passwords. Try again in {secs} s.");
        let mut response = form_page(StatusCode::TOO_MANY_REQUESTS, &page(message), &form.form_token, false);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    let password = form.password.clone();
    let matches = tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .map_err(PageError::internal)?
        .map_err(PageError::internal)?;
    if !matches {
        tracing::warn!("a login failed: wrong password");
        return Ok(form_page(StatusCode::UNAUTHORIZED, &page("Wrong password.".to_owned()), &form.form_token, false));
    }
    ui.sessions.login_succeeded();
    signed_in(&ui.sessions)
}

async fn logout<B: Backend>(
    State(ui): State<Ui<B>>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Response {
    ui.sessions.end(&owner.id);
    with_cookie(Redirect::to("/login").into_response(), &cleared_session_cookie())
}

/// What every signed-in page shows around its content.
fn layout(
    sessions: &Sessions,
    owner: &SessionInfo,
    hub: &str,
    pending: u64,
    page: (&'static str, &'static str),
) -> Layout {
    let (title, active) = page;
    Layout {
        title,
        hub: hub.to_owned(),
        active,
        csrf: owner.csrf.clone(),
        pending,
        flash: sessions.take_flash(&owner.id),
    }
}

/// A part of the hub that may not run (bridge, plugin host, peer network): `None` then.
fn optional<T>(result: Result<T, BackendError>) -> Result<Option<T>, PageError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(BackendError::Unavailable(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn dashboard<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    let b = &ui.backend;
    let (status, pending, budgets, payments, devices, plugins, peers) = tokio::join!(
        b.status(),
        b.approvals(true),
        b.budgets(),
        b.recent_payments(DASHBOARD_PAYMENTS),
        b.devices(),
        b.plugins(),
        b.peers()
    );
    let (status, pending, budgets, payments) = (status?, pending?, budgets?, payments?);
    let devices = optional(devices)?;
    let no_devices = Vec::new();
    let device_list = devices.as_ref().unwrap_or(&no_devices);
    let page = DashboardPage {
        layout: layout(&ui.sessions, &owner, &status.name, pending.len() as u64, ("Dashboard", "dashboard")),
        pending_total: pending.len(),
        pending_head: pending
            .iter()
            .take(DASHBOARD_PENDING)
            .map(|a| PendingRow::new(a, &status.currency, device_list))
            .collect(),
        budgets: budgets.iter().map(BudgetRow::new).collect(),
        payments: payments.iter().map(|p| PaymentRow::new(p, &status.currency)).collect(),
        channels_open: status.channels_open,
        devices: devices.as_ref().map(|d| Count { up: d.iter().filter(|d| d.online).count(), total: d.len() }),
        plugins: optional(plugins)?.map(|p| Count { up: p.iter().filter(|p| p.running).count(), total: p.len() }),
        peers: optional(peers)?.map(|p| Count { up: p.iter().filter(|p| p.connected).count(), total: p.len() }),
    };
    Ok(render(&page))
}

/// The approvals page, with `reason_error` beside the deny form of approval `.0`.
async fn approvals_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    reason_error: Option<(u64, String, String)>,
) -> Result<ApprovalsPage, PageError> {
    let b = &ui.backend;
    let (status, all, devices) = tokio::join!(b.status(), b.approvals(false), b.devices());
    let (status, all) = (status?, all?);
    let devices = optional(devices)?.unwrap_or_default();
    let mut pending: Vec<PendingRow> =
        all.iter().filter(|a| a.is_pending()).map(|a| PendingRow::new(a, &status.currency, &devices)).collect();
    if let Some((id, reason, error)) = reason_error
        && let Some(row) = pending.iter_mut().find(|r| r.id == id)
    {
        row.reason = reason;
        row.reason_error = Some(error);
    }
    let decided = all
        .iter()
        .filter(|a| !a.is_pending())
        .take(DECIDED_SHOWN)
        .map(|a| DecidedRow::new(a, &status.currency, &devices))
        .collect();
    Ok(ApprovalsPage {
        layout: layout(&ui.sessions, owner, &status.name, pending.len() as u64, ("Approvals", "approvals")),
        pending,
        decided,
    })
}

async fn approvals<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    Ok(render(&approvals_page(&ui, &owner, None).await?))
}

fn approval_id(text: &str) -> Result<u64, PageError> {
    text.parse::<u64>()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not an approval number.")))
}

/// Records the owner's verdict and goes back to the approvals page with what came of it.
async fn decide<B: Backend>(ui: &Ui<B>, owner: &SessionInfo, id: u64, verdict: Verdict) -> Result<Response, PageError> {
    let approving = verdict == Verdict::Approve;
    let flash = match ui.backend.decide(id, verdict, Principal::Owner.name()).await {
        Ok(approval) => {
            let currency = ui.backend.status().await.map(|s| s.currency).unwrap_or_else(|_| Currency::usd());
            let amount = view::money(&currency, approval.request.amount);
            let what = if approving { "Approved" } else { "Denied" };
            Flash { ok: true, text: format!("{what} #{id}: {amount} to {}.", approval.request.payee) }
        }
        // Already decided, expired or gone: say so on the page rather than as an error page.
        Err(BackendError::Conflict(m) | BackendError::NotFound(m)) => Flash { ok: false, text: m },
        Err(e) => return Err(e.into()),
    };
    ui.sessions.set_flash(&owner.id, flash);
    Ok(Redirect::to("/approvals").into_response())
}

async fn approve<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Result<Response, PageError> {
    decide(&ui, &owner, approval_id(&id)?, Verdict::Approve).await
}

#[derive(Debug, Deserialize)]
struct DenyForm {
    #[serde(default)]
    reason: String,
}

async fn deny<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form }: SessionForm<DenyForm>,
) -> Result<Response, PageError> {
    let id = approval_id(&id)?;
    let reason = form.reason.trim();
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        let error = format!("Keep the reason to {MAX_REASON_CHARS} characters (this has {chars}).");
        let page = approvals_page(&ui, &owner, Some((id, form.reason.clone(), error))).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
    }
    decide(&ui, &owner, id, Verdict::Deny { reason: reason.to_owned() }).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests;
