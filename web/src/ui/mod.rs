//! The homeowner's web UI: server-rendered pages that work without JavaScript; one small script
//! (`/static/live.js`) refreshes a page's live parts when the hub reports a change over
//! `/api/v1/events`.
//!
//! | Method | Path                          | What                                               |
//! |--------|-------------------------------|----------------------------------------------------|
//! | GET    | `/setup`                      | first run: the form that sets the owner's password |
//! | POST   | `/setup`                      | sets it (once; 409 after), signs in, 303 to `/`    |
//! | GET    | `/login`                      | the sign-in form                                   |
//! | POST   | `/login`                      | signs in (303 to `/`); 401 wrong, 429 locked out   |
//! | POST   | `/logout`                     | ends the session, 303 to `/login`                  |
//! | GET    | `/`                           | the dashboard                                      |
//! | GET    | `/approvals`                  | pending spends with approve/deny forms, recent decisions |
//! | GET    | `/approvals/{id}`             | 303 to that approval on `/approvals`               |
//! | POST   | `/approvals/{id}/approve`     | approves, 303 back with a message                  |
//! | POST   | `/approvals/{id}/deny`        | denies with an optional `reason`, 303 back         |
//! | GET    | `/spending?from=&through=&by=`| the report for a period, the daily chart, CSV link |
//! | GET    | `/budgets`                    | budgets with their spend, and the form to set one  |
//! | POST   | `/budgets`                    | sets a budget (`subject`, `period`, `limit`, `auto_approve` in units) |
//! | POST   | `/budgets/remove`             | removes the budget of `subject`                    |
//! | GET    | `/devices`                    | the registry, and the form to pair a device        |
//! | POST   | `/devices`                    | pairs a device; its credentials are shown once     |
//! | GET    | `/devices/{id}`               | one device: state, availability, command form      |
//! | POST   | `/devices/{id}/command`       | sends a command (`name`, `payload` JSON)           |
//! | POST   | `/devices/{id}/remove`        | unpairs it                                         |
//! | GET    | `/channels`                   | channels: capacity, spent, status, settlement progress |
//! | POST   | `/channels/{id}/close`        | closes an open channel                             |
//! | GET    | `/services`                   | offers seen on the network, and this hub's own     |
//! | GET    | `/plugins`                    | installed plugins, and the upload form             |
//! | POST   | `/plugins`                    | installs an uploaded plugin (multipart: `manifest`, `wasm`, `settings`) |
//! | GET    | `/plugins/{name}`             | one plugin: grants, state, quarantine reason, log  |
//! | POST   | `/plugins/{name}/{action}`    | `enable`, `disable`, `approve` (a waiting upgrade), `remove` |
//! | POST   | `/plugins/{name}/upgrade`     | uploads a new version (multipart)                  |
//! | POST   | `/plugins/{name}/settings`    | changes its settings to the box's `KEY=VALUE` lines |
//! | GET    | `/peers`                      | hubs known on the peer network                     |
//! | GET    | `/static/ui.css`, `/static/live.js` | the stylesheet and the live-update script (no session needed) |
//!
//! Every page needs the owner's session: without one a GET is sent to `/login` (or `/setup`
//! before a password is set) and anything else is refused with 403. Every form posted from a
//! session carries the session's CSRF token (`csrf`); the login and setup forms, which have no
//! session yet, carry a double-submit token (`form_token`, also in a `SameSite=Strict` cookie).
//! A form's address opened with GET is sent to the page the form is on; an address with no
//! page gets an HTML 404 (under `/api/` a JSON one).
//!
//! A form without the right token, or one the browser says came from another site (`Origin`,
//! `Sec-Fetch-Site`), is refused with 403 before anything is read from it. Bad values are shown
//! beside their field with a 422, and nothing changes.

mod account;
mod budgets;
mod chart;
mod devices;
mod home;
mod network;
pub(crate) mod password;
mod plugins;
pub(crate) mod session;
mod spending;
mod view;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, BackendError};
use crate::error::ApiError;

use self::session::{
    FORM_COOKIE, Flash, SessionInfo, Sessions, cookie, form_cookie, random_token, same_secret, session_cookie,
};
pub(crate) use self::view::to_jiff;
use self::view::{ErrorPage, Layout};

/// The longest reason a denial may give, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 500;

const STYLESHEET: &str = include_str!("../../static/ui.css");
const LIVE_SCRIPT: &str = include_str!("../../static/live.js");

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
        .route("/", get(home::dashboard::<B>))
        .route("/approvals", get(home::approvals::<B>))
        .route("/approvals/{id}", get(approval_on_its_page))
        .route("/approvals/{id}/approve", post(home::approve::<B>))
        .route("/approvals/{id}/deny", post(home::deny::<B>))
        .route("/spending", get(spending::page::<B>))
        .route("/budgets", get(budgets::page::<B>).post(budgets::set::<B>))
        .route("/budgets/remove", post(budgets::remove::<B>))
        .route("/devices", get(devices::list::<B>).post(devices::pair::<B>))
        .route("/devices/{id}", get(devices::show::<B>))
        .route("/devices/{id}/command", post(devices::command::<B>))
        .route("/devices/{id}/remove", post(devices::remove::<B>))
        .route("/channels", get(network::channels::<B>))
        .route("/channels/{id}", get(|| async { Redirect::to("/channels") }))
        .route("/channels/{id}/close", post(network::close_channel::<B>))
        .route("/services", get(network::services::<B>))
        .route("/peers", get(network::peers::<B>))
        // Uploads carry a module: only they may be larger than the default body limit.
        .route(
            "/plugins",
            get(plugins::list::<B>).post(plugins::install::<B>).layer(DefaultBodyLimit::max(plugins::UPLOAD_LIMIT)),
        )
        .route("/plugins/{name}", get(plugins::show::<B>))
        .route(
            "/plugins/{name}/upgrade",
            post(plugins::upgrade::<B>).layer(DefaultBodyLimit::max(plugins::UPLOAD_LIMIT)),
        )
        .route("/plugins/{name}/settings", post(plugins::configure::<B>))
        .route("/plugins/{name}/{action}", post(plugins::act::<B>))
        .route("/setup", get(account::setup_form::<B>).post(account::setup::<B>))
        .route("/login", get(account::login_form::<B>).post(account::login::<B>))
        .route("/logout", post(account::logout::<B>))
        .method_not_allowed_fallback(form_address)
        .route_layer(middleware::from_fn(same_origin_changes))
        .route_layer(middleware::map_response(page_headers))
        .route("/static/ui.css", get(stylesheet))
        .route("/static/live.js", get(live_script))
        .with_state(Ui { backend, sessions })
}

/// An approval's number, as the approvals page shows it (`#12`): that page, at its entry.
async fn approval_on_its_page(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id) => Redirect::to(&format!("/approvals#approval-{id}")).into_response(),
        Err(_) => not_found_page(&format!("/approvals/{id}")).into_response(),
    }
}

/// A form's address opened directly (reloaded after a refused form, typed, bookmarked): the
/// page the form is on, one step up the path; any other method is refused.
async fn form_address(method: Method, uri: axum::http::Uri) -> Response {
    if method == Method::GET || method == Method::HEAD {
        let page = match uri.path().rsplit_once('/') {
            Some((parent, _)) if !parent.is_empty() => parent,
            _ => "/",
        };
        return Redirect::to(page).into_response();
    }
    PageError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take {method}", uri.path())).into_response()
}

/// The page for an address that has none.
pub(crate) fn not_found_page(path: &str) -> PageError {
    PageError::new(StatusCode::NOT_FOUND, format!("There is no page at {path}."))
}

/// Whether the browser says a request came from another site: `Sec-Fetch-Site` (every current
/// browser sends it) or an `Origin` naming another host. Requests without either (scripts, the
/// CLI) are judged by their credentials alone.
pub(crate) fn from_another_site(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if matches!(header("sec-fetch-site"), Some("cross-site" | "same-site")) {
        return true;
    }
    match (header(header::ORIGIN.as_str()), header(header::HOST.as_str())) {
        // Browsers send `null` from sandboxed frames and some redirects: never our own page.
        (Some("null"), _) => true,
        (Some(origin), Some(host)) => origin.split_once("://").is_none_or(|(_, rest)| rest != host),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Refuses a change (anything but GET and HEAD) that a browser says came from another site,
/// before its form is read. The CSRF tokens stop such posts too; this makes sure.
async fn same_origin_changes(request: Request, next: Next) -> Response {
    let reading = request.method() == Method::GET || request.method() == Method::HEAD;
    if !reading && from_another_site(request.headers()) {
        tracing::warn!(path = %request.uri().path(), "a form posted from another site was refused");
        return PageError::forbidden(CROSS_SITE_REFUSED).into_response();
    }
    next.run(request).await
}

const CROSS_SITE_REFUSED: &str = "This form was sent from another site, so it was refused: changes to your hub \
                                  can only be made from its own pages.";

/// Pages carry private data and run only the hub's own script; nothing may frame them.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    static_file("text/css; charset=utf-8", STYLESHEET)
}

async fn live_script() -> impl IntoResponse {
    static_file("text/javascript; charset=utf-8", LIVE_SCRIPT)
}

fn static_file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
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
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Page { status, message: message.into() }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }

    pub(crate) fn internal(detail: impl std::fmt::Display) -> PageError {
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
pub(crate) fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "a page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, crate::INTERNAL_ERROR_MESSAGE).into_response()
        }
    }
}

pub(crate) fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(crate) const CSRF_REFUSED: &str = "This form did not come from this hub's own pages (its security token is missing or \
                            wrong), so it was refused. Reload the page and try again.";

/// The owner's session behind a page request.
#[derive(Debug)]
pub(crate) struct Owner(pub(crate) SessionInfo);

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
    pub(crate) owner: SessionInfo,
    pub(crate) form: T,
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

pub(crate) fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PageError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, format!("This form could not be read: {e}.")))
}

/// A form that carries nothing but its token.
#[derive(Debug, Deserialize)]
pub(crate) struct NoFields {}

/// The login and setup forms' token: the cookie's if the browser has a good one, else a new one.
pub(crate) fn form_token(headers: &HeaderMap) -> Result<(String, bool), PageError> {
    match cookie(headers, FORM_COOKIE) {
        Some(token) if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok((token.to_owned(), false))
        }
        _ => Ok((random_token().map_err(PageError::internal)?, true)),
    }
}

/// The login or setup page, setting the form cookie when it is new.
pub(crate) fn form_page(status: StatusCode, page: &impl Template, token: &str, new_cookie: bool) -> Response {
    let response = (status, render(page)).into_response();
    if new_cookie { with_cookie(response, &form_cookie(token)) } else { response }
}

/// Refuses a login or setup form whose token is not the one in the browser's cookie.
pub(crate) fn check_form_token(headers: &HeaderMap, sent: &str) -> Result<(), PageError> {
    match cookie(headers, FORM_COOKIE) {
        Some(expected) if same_secret(sent, expected) => Ok(()),
        _ => Err(PageError::forbidden(CSRF_REFUSED)),
    }
}

/// Signs the owner in: a new session, its cookie, and on to the dashboard.
pub(crate) fn signed_in(ui_sessions: &Sessions) -> Result<Response, PageError> {
    let info = ui_sessions.create().map_err(PageError::internal)?;
    Ok(with_cookie(Redirect::to("/").into_response(), &session_cookie(&info.id)))
}

/// What every signed-in page needs before its own content: the hub's name, the time zone, the
/// pending count for the title, and this session's flash.
pub(crate) struct Frame {
    pub(crate) status: crate::model::HubStatus,
    pub(crate) zone: TimeZone,
    pending: u64,
}

impl Frame {
    pub(crate) async fn load<B: Backend>(ui: &Ui<B>) -> Result<Frame, PageError> {
        let status = ui.backend.status().await?;
        Ok(Frame { pending: status.approvals_pending, zone: ui.backend.time_zone(), status })
    }

    /// The page's layout: `title` in the title bar, `active` in the navigation, and the live
    /// event kinds that refresh it.
    pub(crate) fn layout(
        &self,
        ui_sessions: &Sessions,
        owner: &SessionInfo,
        title: impl Into<String>,
        active: &'static str,
        live_on: &'static str,
    ) -> Layout {
        Layout {
            title: title.into(),
            hub: self.status.name.clone(),
            active,
            csrf: owner.csrf.clone(),
            pending: self.pending,
            flash: ui_sessions.take_flash(&owner.id),
            live_on,
        }
    }

    /// The same, with the pending count the page itself counted (fresher than the status's).
    pub(crate) fn with_pending(mut self, pending: usize) -> Frame {
        self.pending = pending as u64;
        self
    }
}

/// A part of the hub that may not run (bridge, plugin host, peer network): `None` then.
pub(crate) fn optional<T>(result: Result<T, BackendError>) -> Result<Option<T>, PageError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(BackendError::Unavailable(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Says what came of a change on the next page, and goes there.
pub(crate) fn done(ui_sessions: &Sessions, owner: &SessionInfo, ok: bool, text: String, to: &str) -> Response {
    ui_sessions.set_flash(&owner.id, Flash { ok, text });
    Redirect::to(to).into_response()
}

/// A form's answer when a field is wrong: the page again, 422, with the error beside it.
pub(crate) fn invalid(page: &impl Template) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, render(page)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests;
