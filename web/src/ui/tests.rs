//! The pages, request by request, through a small cookie-keeping "browser" over the router;
//! no sockets, and a manual clock instead of sleeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use machinomy_core::{Amount, Direction, SpendingEntry, Subject, Timestamp, Verdict};
use tower::ServiceExt;

use super::password;
use super::session::{IDLE_TIMEOUT, ManualClock};
use crate::testing::{APPROVED_APPROVAL, MemoryBackend, PENDING_APPROVAL, SAMPLE_BROKER, SAMPLE_DEVICE, SAMPLE_NOW};
use crate::{AdminAuth, BackendError, INTERNAL_ERROR_MESSAGE};

const TOKEN: &str = "test-admin-token-5f2c9a";
const PASSWORD: &str = "correct horse battery";

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Page {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }

    /// Asserts a 303 to `to`.
    #[track_caller]
    fn redirects_to(&self, to: &str) {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "body: {}", self.text());
        assert_eq!(self.header(header::LOCATION), to);
    }

    #[track_caller]
    fn contains(&self, needle: &str) -> &Self {
        let text = self.text();
        assert!(text.contains(needle), "page does not contain {needle:?}:\n{text}");
        self
    }

    #[track_caller]
    fn lacks(&self, needle: &str) -> &Self {
        let text = self.text();
        assert!(!text.contains(needle), "page contains {needle:?}:\n{text}");
        self
    }

    /// The value of the first hidden field `name` in the page.
    fn field(&self, name: &str) -> String {
        let text = self.text();
        let marker = format!("name=\"{name}\" value=\"");
        let start = text.find(&marker).unwrap_or_else(|| panic!("no field {name} in {text}")) + marker.len();
        text[start..].split('"').next().unwrap().to_owned()
    }
}

/// Keeps cookies between requests, as a browser on the hub's own pages would.
struct Browser {
    app: Router,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(app: &Router) -> Browser {
        Browser { app: app.clone(), cookies: BTreeMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn send(&mut self, request: Request<Body>) -> Page {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        for set in parts.headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = Request::get(path).header(header::COOKIE, self.cookie_header()).body(Body::empty()).unwrap();
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = serde_urlencoded::to_string(fields).unwrap();
        let request = Request::post(path)
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// The signed-in session's CSRF token, as the pages carry it.
    async fn csrf(&mut self) -> String {
        self.get("/approvals").await.expect(StatusCode::OK).field("csrf")
    }

    async fn login(&mut self, password: &str) -> Page {
        let token = self.get("/login").await.expect(StatusCode::OK).field("form_token");
        self.post("/login", &[("form_token", &token), ("password", password)]).await
    }

    fn has_session(&self) -> bool {
        self.cookies.contains_key("machinomy_session")
    }
}

struct Hub {
    backend: Arc<MemoryBackend>,
    clock: Arc<ManualClock>,
    app: Router,
}

impl Hub {
    fn with(backend: MemoryBackend) -> Hub {
        let backend = Arc::new(backend);
        let clock = Arc::new(ManualClock::new());
        let app = crate::api::router_with_clock(backend.clone(), AdminAuth::new(TOKEN).unwrap(), clock.clone());
        Hub { backend, clock, app }
    }

    /// The sample home before its first visit: no owner password.
    fn first_run() -> Hub {
        Hub::with(MemoryBackend::sample())
    }

    /// The sample home with the owner's password set and a few payments.
    fn set_up() -> Hub {
        let hub = Hub::first_run();
        let hash = password::hash(PASSWORD).unwrap();
        hub.backend.with_state(|s| {
            s.owner_password_hash = Some(hash);
            s.payments = vec![
                payment(SAMPLE_NOW.secs() - 600, Direction::Out, "device:fridge", "grocer", 900, "milk"),
                payment(SAMPLE_NOW.secs() - 300, Direction::In, "plugin:solar", "neighbour", 250, "surplus kWh"),
            ];
        });
        hub
    }

    async fn signed_in(&self) -> Browser {
        let mut browser = Browser::new(&self.app);
        browser.login(PASSWORD).await.redirects_to("/");
        browser
    }
}

fn payment(
    at: u64,
    direction: Direction,
    subject: &str,
    counterparty: &str,
    amount: u128,
    memo: &str,
) -> SpendingEntry {
    SpendingEntry {
        at: Timestamp(at),
        direction,
        subject: subject.parse::<Subject>().unwrap(),
        counterparty: counterparty.to_owned(),
        amount: Amount::from_base_units(amount),
        memo: memo.to_owned(),
        channel: None,
        approval: None,
    }
}

fn decisions(hub: &Hub) -> Vec<(u64, Verdict, String)> {
    hub.backend.with_state(|s| s.decisions.clone())
}

#[tokio::test]
async fn the_first_visit_sets_the_password_and_signs_in() {
    let hub = Hub::first_run();
    let mut browser = Browser::new(&hub.app);
    browser.get("/").await.redirects_to("/setup");
    browser.get("/approvals").await.redirects_to("/setup");
    browser.get("/login").await.redirects_to("/setup");

    let form = browser.get("/setup").await.expect(StatusCode::OK);
    form.contains("name=\"password\"").contains("name=\"confirm\"");
    let set_cookie = form.header(header::SET_COOKIE);
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let token = form.field("form_token");

    let done = browser.post("/setup", &[("form_token", &token), ("password", PASSWORD), ("confirm", PASSWORD)]).await;
    done.redirects_to("/");
    let session = done.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
    let session = session.iter().find(|c| c.starts_with("machinomy_session=")).unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(session.contains(attribute), "{session} lacks {attribute}");
    }
    assert!(!session.contains("Secure"), "plain http on loopback: {session}");
    let stored = hub.backend.with_state(|s| s.owner_password_hash.clone()).unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(password::verify(PASSWORD, &stored).unwrap());

    browser.get("/").await.expect(StatusCode::OK).contains("<h1>Dashboard</h1>");
    browser.get("/setup").await.redirects_to("/login");
}

#[tokio::test]
async fn setup_is_refused_once_a_password_is_set() {
    let hub = Hub::first_run();
    let mut owner = Browser::new(&hub.app);
    let mut intruder = Browser::new(&hub.app);
    let owner_token = owner.get("/setup").await.field("form_token");
    let intruder_token = intruder.get("/setup").await.field("form_token");
    owner
        .post("/setup", &[("form_token", &owner_token), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await
        .redirects_to("/");

    let other = "another password entirely";
    let refused =
        intruder.post("/setup", &[("form_token", &intruder_token), ("password", other), ("confirm", other)]).await;
    refused.expect(StatusCode::CONFLICT).contains("already set");
    assert!(!intruder.has_session());
    let mut fresh = Browser::new(&hub.app);
    fresh.login(other).await.expect(StatusCode::UNAUTHORIZED);
    fresh.login(PASSWORD).await.redirects_to("/");
}

#[tokio::test]
async fn setup_shows_what_is_wrong_beside_the_field() {
    let hub = Hub::first_run();
    let mut browser = Browser::new(&hub.app);
    let token = browser.get("/setup").await.field("form_token");

    let short = browser.post("/setup", &[("form_token", &token), ("password", "short"), ("confirm", "short")]).await;
    short
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("aria-describedby=\"password-error\"")
        .contains("<span class=\"field-error\" id=\"password-error\">Use at least 10 characters (this has 5).</span>");
    let differ =
        browser.post("/setup", &[("form_token", &token), ("password", PASSWORD), ("confirm", "correct horse")]).await;
    differ
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("<span class=\"field-error\" id=\"confirm-error\">The two passwords differ.</span>")
        .lacks("password-error\"")
        .lacks(PASSWORD);
    assert_eq!(hub.backend.with_state(|s| s.owner_password_hash.clone()), None);
    assert!(!browser.has_session());
}

#[tokio::test]
async fn login_and_setup_forms_without_their_token_are_refused() {
    let hub = Hub::first_run();
    let mut browser = Browser::new(&hub.app);
    browser.get("/setup").await.expect(StatusCode::OK);
    // The cookie is there, but a cross-site form cannot know its value.
    let forged = [("form_token", "0".repeat(64)), ("password", PASSWORD.to_owned()), ("confirm", PASSWORD.to_owned())];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser.post("/setup", &forged).await.expect(StatusCode::FORBIDDEN);
    let mut cookieless = Browser::new(&hub.app);
    let token = browser.get("/setup").await.field("form_token");
    cookieless
        .post("/setup", &[("form_token", &token), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(hub.backend.with_state(|s| s.owner_password_hash.clone()), None);

    let hub = Hub::set_up();
    let mut browser = Browser::new(&hub.app);
    browser.post("/login", &[("password", PASSWORD)]).await.expect(StatusCode::FORBIDDEN);
    assert!(!browser.has_session());
}

#[tokio::test]
async fn a_wrong_password_is_shown_beside_the_field_and_the_right_one_signs_in() {
    let hub = Hub::set_up();
    let mut browser = Browser::new(&hub.app);
    browser.get("/setup").await.redirects_to("/login");
    browser.get("/").await.redirects_to("/login");
    let wrong = browser.login("not the password").await;
    wrong
        .expect(StatusCode::UNAUTHORIZED)
        .contains("<span class=\"field-error\" id=\"password-error\">Wrong password.</span>")
        .lacks("not the password");
    assert!(!browser.has_session());
    browser.login(PASSWORD).await.redirects_to("/");
    assert!(browser.has_session());
    browser.get("/login").await.redirects_to("/");
}

#[tokio::test]
async fn ten_wrong_passwords_lock_the_login_for_longer_each_time() {
    let hub = Hub::set_up();
    let mut browser = Browser::new(&hub.app);
    for _ in 0..6 {
        browser.login("guess").await.expect(StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, without being checked.
    let locked = browser.login(PASSWORD).await.expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.header(header::RETRY_AFTER), "1");
    locked.contains("Try again in 1 s.");
    for wait in [1, 2, 4, 8] {
        hub.clock.advance(Duration::from_secs(wait));
        browser.login("guess").await.expect(StatusCode::UNAUTHORIZED);
    }
    let locked = browser.login(PASSWORD).await.expect(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.header(header::RETRY_AFTER), "16", "ten failures: 16 s");
    assert!(!browser.has_session());
    hub.clock.advance(Duration::from_secs(15));
    browser.login(PASSWORD).await.expect(StatusCode::TOO_MANY_REQUESTS);
    hub.clock.advance(Duration::from_secs(1));
    browser.login(PASSWORD).await.redirects_to("/");
    // A success starts the count again.
    let mut other = Browser::new(&hub.app);
    other.login("guess").await.expect(StatusCode::UNAUTHORIZED);
    other.login(PASSWORD).await.redirects_to("/");
}

#[tokio::test]
async fn logout_ends_the_session_and_needs_the_csrf_token() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    browser.post("/logout", &[]).await.expect(StatusCode::FORBIDDEN);
    browser.post("/logout", &[("csrf", "wrong")]).await.expect(StatusCode::FORBIDDEN);
    browser.get("/").await.expect(StatusCode::OK);

    let session = browser.cookies.get("machinomy_session").cloned().unwrap();
    browser.post("/logout", &[("csrf", &csrf)]).await.redirects_to("/login");
    assert!(!browser.has_session(), "the cookie is cleared");
    browser.cookies.insert("machinomy_session".to_owned(), session);
    browser.get("/").await.redirects_to("/login");
}

#[tokio::test]
async fn pages_without_a_session_redirect_and_forms_are_refused() {
    let hub = Hub::set_up();
    let mut browser = Browser::new(&hub.app);
    for path in ["/", "/approvals"] {
        browser.get(path).await.redirects_to("/login");
    }
    browser.cookies.insert("machinomy_session".to_owned(), "ab".repeat(32));
    browser.get("/").await.redirects_to("/login");
    for path in ["/approvals/7/approve", "/approvals/7/deny", "/logout"] {
        browser.post(path, &[("csrf", "anything")]).await.expect(StatusCode::FORBIDDEN);
    }
    assert!(decisions(&hub).is_empty());
}

#[tokio::test]
async fn a_session_ends_after_twelve_idle_hours() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    hub.clock.advance(IDLE_TIMEOUT - Duration::from_secs(60));
    browser.get("/").await.expect(StatusCode::OK);
    hub.clock.advance(IDLE_TIMEOUT);
    browser.get("/").await.redirects_to("/login");
}

#[tokio::test]
async fn the_dashboard_shows_approvals_budgets_payments_and_counts() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let page = browser.get("/").await.expect(StatusCode::OK);
    assert_eq!(page.header(header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
    assert!(page.header(header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'"));
    page.contains("<title>(1) Dashboard · test-home</title>")
        .contains("<strong>1</strong> pending approval</a>")
        .contains("<strong>1</strong> open channel<")
        .contains("<strong>1</strong> of 2 devices online")
        .contains("<strong>1</strong> of 2 plugins running")
        .contains("<strong>1</strong> of 2 peers connected")
        // The pending spend: who asks, whom it pays, how much, why, until when.
        .contains("Kitchen fridge (fridge)")
        .contains("<code>grocer</code>")
        .contains("0.000004 USD")
        .contains("weekly groceries")
        .contains("<time datetime=\"2026-11-24T13:00:00+00:00\">2026-11-24 13:00 UTC</time>")
        // The budget: spent against the limit.
        .contains("device:fridge")
        .contains("0.0000012 USD")
        .contains("0.000005 USD")
        .contains("<progress max=\"100\" value=\"24\">")
        // Payments out and in.
        .contains("−0.0000009 USD")
        .contains("+0.00000025 USD")
        .contains("surplus kWh")
        .lacks(">4000<");
}

#[tokio::test]
async fn the_dashboard_and_approvals_say_which_parts_of_the_hub_are_not_running() {
    let hub = Hub::set_up();
    hub.backend.with_state(|s| {
        s.bridge_stopped = true;
        s.plugins_stopped = true;
    });
    let mut browser = hub.signed_in().await;
    browser
        .get("/")
        .await
        .expect(StatusCode::OK)
        .contains("Devices: bridge not running")
        .contains("Plugins: host not running")
        .contains("<strong>1</strong> of 2 peers connected")
        // Without the registry, a device is named by its id.
        .contains("<span class=\"kind\">device</span> fridge</td>");
    browser.get("/approvals").await.expect(StatusCode::OK).contains("<strong>fridge</strong> asks to pay");
}

#[tokio::test]
async fn a_failing_backend_is_an_error_page_without_internals() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    hub.backend.fail_next(BackendError::Unavailable("the hub is shutting down".to_owned()));
    browser.get("/").await.expect(StatusCode::SERVICE_UNAVAILABLE).contains("the hub is shutting down");
    hub.backend.fail_next(BackendError::Internal("disk on fire".to_owned()));
    let page = browser.get("/").await.expect(StatusCode::INTERNAL_SERVER_ERROR);
    page.contains(&INTERNAL_ERROR_MESSAGE.replace('\'', "&#39;")).lacks("disk on fire");
}

#[tokio::test]
async fn the_approvals_page_lists_pending_spends_with_forms_and_recent_decisions() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let page = browser.get("/approvals").await.expect(StatusCode::OK);
    let csrf = page.field("csrf");
    page.contains("<title>(1) Approvals · test-home</title>")
        .contains("<span class=\"kind\">device</span> <strong>Kitchen fridge (fridge)</strong> asks to pay")
        .contains("<strong class=\"amount\">0.000004 USD</strong> to <code>grocer</code>")
        .contains("“weekly groceries”")
        .contains("expires <time datetime=\"2026-11-24T13:00:00+00:00\">")
        .contains(&format!("action=\"/approvals/{PENDING_APPROVAL}/approve\""))
        .contains(&format!("action=\"/approvals/{PENDING_APPROVAL}/deny\""))
        .contains(&format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"))
        .contains(&format!("<td>{APPROVED_APPROVAL}</td>"))
        .contains("approved by admin-token<br><span class=\"outcome\">paid 0.0000008 USD</span>");
    assert_eq!(csrf.len(), 64);
}

#[tokio::test]
async fn addresses_without_a_page_answer_with_a_page_and_form_addresses_lead_to_their_form() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let missing = browser.get("/nonexistent").await.expect(StatusCode::NOT_FOUND);
    assert!(missing.header(header::CONTENT_TYPE).starts_with("text/html"));
    missing.contains("There is no page at /nonexistent.").contains("Back to the dashboard");
    browser.get("/static/nope.css").await.expect(StatusCode::NOT_FOUND).contains("There is no page");
    // Under /api/ an unknown address stays JSON.
    let api = browser.get("/api/v1/nothing").await.expect(StatusCode::NOT_FOUND);
    assert!(api.header(header::CONTENT_TYPE).starts_with("application/json"));
    // An approval's number leads to it on the approvals page.
    browser.get("/approvals/9").await.redirects_to("/approvals#approval-9");
    browser.get("/approvals/nine").await.expect(StatusCode::NOT_FOUND);
    browser.get("/channels/abc").await.redirects_to("/channels");
    // A form's address opened directly (a reload after a refused form): the form's page.
    for (form, page) in [
        ("/devices/fridge/command", "/devices/fridge"),
        ("/devices/fridge/remove", "/devices/fridge"),
        ("/plugins/solar/upgrade", "/plugins/solar"),
        ("/plugins/solar/enable", "/plugins/solar"),
        ("/approvals/7/approve", "/approvals/7"),
        ("/logout", "/"),
    ] {
        browser.get(form).await.redirects_to(page);
    }
    let csrf = browser.csrf().await;
    let wrong = browser.send(Request::delete("/budgets").header("x-csrf-token", csrf).body(Body::empty()).unwrap());
    wrong.await.expect(StatusCode::METHOD_NOT_ALLOWED).contains("/budgets does not take DELETE");
}

#[tokio::test]
async fn approving_by_form_decides_as_the_owner_and_says_so_once() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    browser.post("/approvals/7/approve", &[("csrf", &csrf)]).await.redirects_to("/approvals");
    assert_eq!(decisions(&hub), vec![(PENDING_APPROVAL, Verdict::Approve, "owner".to_owned())]);
    let page = browser.get("/approvals").await.expect(StatusCode::OK);
    page.contains("<p class=\"flash ok\" role=\"status\">Approved #7: 0.000004 USD to grocer.</p>")
        .contains("Nothing is waiting for approval.")
        .contains("approved by owner");
    browser.get("/approvals").await.lacks("flash ok");

    // Deciding again is a message on the page, not an error page.
    browser.post("/approvals/7/deny", &[("csrf", &csrf)]).await.redirects_to("/approvals");
    browser.get("/approvals").await.contains("<p class=\"flash error\" role=\"status\">approval 7 was already decided");
    browser.post("/approvals/99/approve", &[("csrf", &csrf)]).await.redirects_to("/approvals");
    browser.get("/approvals").await.contains("flash error");
    browser.post("/approvals/seven/approve", &[("csrf", &csrf)]).await.expect(StatusCode::BAD_REQUEST);
    assert_eq!(decisions(&hub).len(), 1);
}

#[tokio::test]
async fn denying_by_form_records_the_reason_and_a_too_long_one_is_shown_beside_the_field() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let long = "x".repeat(super::MAX_REASON_CHARS + 1);
    let page = browser.post("/approvals/7/deny", &[("csrf", &csrf), ("reason", &long)]).await;
    page.expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("aria-describedby=\"reason-7-error\"")
        .contains("<span class=\"field-error\" id=\"reason-7-error\">Keep the reason to 500 characters (this has 501).</span>")
        .contains(&format!("value=\"{long}\""));
    assert!(decisions(&hub).is_empty());

    browser.post("/approvals/7/deny", &[("csrf", &csrf), ("reason", "  too dear  ")]).await.redirects_to("/approvals");
    let deny = Verdict::Deny { reason: "too dear".to_owned() };
    assert_eq!(decisions(&hub), vec![(PENDING_APPROVAL, deny, "owner".to_owned())]);
    browser.get("/approvals").await.contains("Denied #7").contains("denied by owner: too dear");
}

#[tokio::test]
async fn a_cross_site_form_post_is_refused() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    // No token, a wrong token, and a text/plain post: each refused before anything happens.
    browser.post("/approvals/7/approve", &[]).await.expect(StatusCode::FORBIDDEN).contains("security token");
    browser.post("/approvals/7/approve", &[("csrf", &"f".repeat(64))]).await.expect(StatusCode::FORBIDDEN);
    browser.post("/approvals/7/deny", &[("reason", "x")]).await.expect(StatusCode::FORBIDDEN);
    let request = Request::post("/approvals/7/approve")
        .header(header::COOKIE, browser.cookie_header())
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("csrf="))
        .unwrap();
    browser.send(request).await.expect(StatusCode::FORBIDDEN);
    // A token of another session is no good either.
    let mut other = hub.signed_in().await;
    let other_csrf = other.csrf().await;
    browser.post("/approvals/7/approve", &[("csrf", &other_csrf)]).await.expect(StatusCode::FORBIDDEN);
    assert!(decisions(&hub).is_empty());
}

#[tokio::test]
async fn html_in_device_names_and_memos_is_escaped() {
    let hub = Hub::set_up();
    hub.backend.with_state(|s| {
        let device = s.devices.iter_mut().find(|d| d.id.as_str() == SAMPLE_DEVICE).unwrap();
        device.name = "<script>alert('name')</script>".to_owned();
        let pending = s.approvals.iter_mut().find(|a| a.id == PENDING_APPROVAL).unwrap();
        pending.request.memo = "<img src=x onerror=alert(1)>".to_owned();
        pending.request.payee = "\"><b>payee</b>".to_owned();
        s.payments[0].memo = "<script>alert('memo')</script>".to_owned();
    });
    let mut browser = hub.signed_in().await;
    for path in ["/", "/approvals"] {
        let page = browser.get(path).await.expect(StatusCode::OK);
        page.lacks("<script>").lacks("<img").lacks("<b>payee").contains("&#60;script&#62;alert(&#39;name&#39;)");
        page.contains("&#60;img src=x onerror=alert(1)&#62;").contains("&#34;&#62;&#60;b&#62;payee");
    }
    browser.get("/").await.contains("&#60;script&#62;alert(&#39;memo&#39;)");
}

#[tokio::test]
async fn the_api_takes_the_session_cookie_and_the_csrf_header_for_changes() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let cookies = browser.cookie_header();
    let api = |method: Method, path: &str, csrf: Option<&str>| {
        let mut request = Request::builder().method(method).uri(path).header(header::COOKIE, cookies.as_str());
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.body(Body::empty()).unwrap()
    };
    let status = browser.send(api(Method::GET, "/api/v1/status", None)).await.expect(StatusCode::OK);
    assert!(status.text().contains("\"name\":\"test-home\""));
    let refused = browser.send(api(Method::POST, "/api/v1/approvals/7/approve", None)).await;
    refused.expect(StatusCode::FORBIDDEN).contains("X-CSRF-Token");
    let wrong = api(Method::POST, "/api/v1/approvals/7/approve", Some("0000"));
    browser.send(wrong).await.expect(StatusCode::FORBIDDEN);
    assert!(decisions(&hub).is_empty());
    let ok = api(Method::POST, "/api/v1/approvals/7/approve", Some(&csrf));
    browser.send(ok).await.expect(StatusCode::OK).contains("\"by\":\"owner\"");
    assert_eq!(decisions(&hub), vec![(PENDING_APPROVAL, Verdict::Approve, "owner".to_owned())]);

    // The bearer token still works, and nothing at all is still a 401.
    let bearer =
        Request::get("/api/v1/status").header(header::AUTHORIZATION, format!("Bearer {TOKEN}")).body(Body::empty());
    assert_eq!(hub.app.clone().oneshot(bearer.unwrap()).await.unwrap().status(), StatusCode::OK);
    let anonymous = hub.app.clone().oneshot(Request::get("/api/v1/status").body(Body::empty()).unwrap()).await;
    assert_eq!(anonymous.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_session_cookie_from_another_hub_is_refused() {
    let home = Hub::set_up();
    let neighbour = Hub::set_up();
    let browser = home.signed_in().await;
    let mut stolen = Browser::new(&neighbour.app);
    stolen.cookies = browser.cookies.clone();
    stolen.get("/").await.redirects_to("/login");
    stolen.get("/api/v1/status").await.expect(StatusCode::UNAUTHORIZED);
    // And the same hub's router after a restart (sessions are in memory).
    let restarted = Hub::with(MemoryBackend::sample());
    restarted
        .backend
        .with_state(|s| s.owner_password_hash = home.backend.with_state(|h| h.owner_password_hash.clone()));
    let mut after_restart = Browser::new(&restarted.app);
    after_restart.cookies = browser.cookies.clone();
    after_restart.get("/").await.redirects_to("/login");
}

#[tokio::test]
async fn the_stylesheet_needs_no_session() {
    let hub = Hub::first_run();
    let mut browser = Browser::new(&hub.app);
    let css = browser.get("/static/ui.css").await.expect(StatusCode::OK);
    assert_eq!(css.header(header::CONTENT_TYPE), "text/css; charset=utf-8");
    css.contains("--accent");
    // Pages link only to it: no external assets.
    let page = browser.get("/setup").await;
    page.contains("<link rel=\"stylesheet\" href=\"/static/ui.css\">").lacks("http://").lacks("https://");
}

// ---- the rest of the pages ----

/// Every page a signed-in owner can open, and what its title says.
const PAGES: [(&str, &str); 12] = [
    ("/", "Dashboard"),
    ("/approvals", "Approvals"),
    ("/spending", "Spending"),
    ("/budgets", "Budgets"),
    ("/devices", "Devices"),
    ("/devices/fridge", "Kitchen fridge"),
    ("/channels", "Channels"),
    ("/services", "Services"),
    ("/plugins", "Plugins"),
    ("/plugins/weather-buyer", "weather-buyer"),
    ("/peers", "Peers"),
    ("/budgets?edit=device:fridge", "Budgets"),
];

/// Every form a page posts, each with a valid target in the sample home.
const FORMS: [&str; 14] = [
    "/logout",
    "/approvals/7/approve",
    "/approvals/7/deny",
    "/budgets",
    "/devices",
    "/devices/fridge/command",
    "/devices/fridge/remove",
    "/channels/1111111111111111111111111111111111111111111111111111111111111111/close",
    "/plugins",
    "/plugins/weather-buyer/upgrade",
    "/plugins/weather-buyer/disable",
    "/plugins/weather-buyer/enable",
    "/plugins/weather-buyer/remove",
    "/plugins/weather-buyer/settings",
];

#[tokio::test]
async fn every_page_renders_for_the_owner_with_the_navigation_and_the_live_script() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    for (path, title) in PAGES {
        let page = browser.get(path).await.expect(StatusCode::OK);
        page.contains(&format!("<title>(1) {title} · test-home</title>"))
            .contains("<script src=\"/static/live.js\" defer></script>")
            .contains("href=\"/spending\"")
            .contains("href=\"/plugins\"")
            .contains("<span class=\"badge\" id=\"pending-count\">1</span>")
            .lacks("http://")
            .lacks("https://");
        assert_eq!(page.header(header::CACHE_CONTROL), "no-store", "{path}");
        assert!(page.header(header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"), "{path}");
    }
}

#[tokio::test]
async fn without_a_session_every_page_goes_to_login_and_every_form_is_refused() {
    let hub = Hub::set_up();
    let mut stranger = Browser::new(&hub.app);
    for (path, _) in PAGES {
        stranger.get(path).await.redirects_to("/login");
    }
    for path in FORMS {
        let page = stranger.post(path, &[("csrf", "")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.text());
    }
    // A signed-in owner's form without the session's token is refused too, and nothing changed.
    let mut browser = hub.signed_in().await;
    for path in FORMS.iter().skip(1) {
        let page = browser.post(path, &[("csrf", &"0".repeat(64))]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.text());
    }
    assert!(decisions(&hub).is_empty());
    assert!(hub.backend.device_commands().is_empty());
    hub.backend.with_state(|s| {
        assert_eq!(s.devices.len(), 2);
        assert_eq!(s.plugins.len(), 2);
        assert!(s.channels.iter().any(|c| c.status.is_open()));
    });
}

/// A post the browser says came from another site, with the right token all the same.
fn cross_site(path: &str, cookies: &str, csrf: &str, header_name: &str, value: &str) -> Request<Body> {
    Request::post(path)
        .header(header::COOKIE, cookies)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header_name, value)
        .body(Body::from(format!("csrf={csrf}")))
        .unwrap()
}

#[tokio::test]
async fn a_post_from_another_origin_is_refused_even_with_the_right_token() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let cookies = browser.cookie_header();
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "http://127.0.0.1:9999"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let page = browser.send(cross_site("/approvals/7/approve", &cookies, &csrf, name, value)).await;
        page.expect(StatusCode::FORBIDDEN).contains("sent from another site");
        let api = Request::post("/api/v1/approvals/7/approve")
            .header(header::COOKIE, &cookies)
            .header("x-csrf-token", &csrf)
            .header(header::HOST, "127.0.0.1:8080")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        browser.send(api).await.expect(StatusCode::FORBIDDEN).contains("another site");
    }
    assert!(decisions(&hub).is_empty());
    // The hub's own page: same origin, and the browser says so.
    let own = cross_site("/approvals/7/approve", &cookies, &csrf, "origin", "http://127.0.0.1:8080");
    browser.send(own).await.redirects_to("/approvals");
    assert_eq!(decisions(&hub).len(), 1);
}

#[tokio::test]
async fn the_spending_page_reports_the_month_with_a_chart_and_a_csv_link() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let page = browser.get("/spending").await.expect(StatusCode::OK);
    // The sample's "now" is 2026-11-24: this month by default.
    page.contains("value=\"2026-11-01\"")
        .contains("value=\"2026-11-30\"")
        .contains("<option value=\"subject\" selected>")
        .contains("<span class=\"kind\">device</span> fridge</td>")
        .contains("<td class=\"num\">1.50 USD</td>")
        .contains("href=\"/api/v1/spending.csv?group_by=subject&#38;from=2026-11-01&#38;to=2026-12-01\"")
        .contains("<svg viewBox=\"0 0 760 260\" role=\"img\"")
        .contains("<title>device:fridge on 2026-11-24: 0.0000009 USD</title>")
        .contains("Spending per day from 2026-11-01 to 2026-11-30")
        .contains("href=\"/spending?from=2026-10-01&#38;through=2026-10-31&#38;by=subject\"");
    let query = hub.backend.with_state(|s| s.spending_queries.last().cloned().unwrap());
    assert_eq!(query.from, Some(Timestamp::from_civil(2026, 11, 1)));
    assert_eq!(query.to, Some(Timestamp::from_civil(2026, 12, 1)));

    let by_day = browser.get("/spending?from=2026-11-20&through=2026-11-24&by=day").await.expect(StatusCode::OK);
    by_day.contains("<option value=\"day\" selected>").contains("to=2026-11-25\"").contains(">11-24</text>");
    let query = hub.backend.with_state(|s| s.spending_queries.last().cloned().unwrap());
    assert_eq!((query.group_by, query.to), (machinomy_core::GroupBy::Day, Some(Timestamp::from_civil(2026, 11, 25))));
    browser.get("/spending?by=payee").await.expect(StatusCode::OK).contains("Whom it paid</th>");
}

#[tokio::test]
async fn the_spending_chart_and_days_follow_the_homes_time_zone() {
    let hub = Hub::set_up();
    let berlin = jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
    hub.backend.with_state(|s| {
        s.zone = berlin;
        // 23:30 UTC on the 23rd is 00:30 on the 24th in Berlin.
        s.payments.push(payment(
            Timestamp::from_civil(2026, 11, 23).secs() + 84_600,
            Direction::Out,
            "plugin:weather",
            "station",
            7_000,
            "forecast",
        ));
    });
    let mut browser = hub.signed_in().await;
    let page = browser.get("/spending?from=2026-11-23&through=2026-11-24").await.expect(StatusCode::OK);
    page.contains("<title>plugin:weather on 2026-11-24: 0.000007 USD</title>");
    let query = hub.backend.with_state(|s| s.spending_queries.last().cloned().unwrap());
    assert_eq!(query.from, Some(Timestamp(Timestamp::from_civil(2026, 11, 23).secs() - 3_600)), "Berlin's midnight");
    // Times on the pages are Berlin's too.
    browser.get("/").await.contains("2026-11-24 12:50 CET");
}

#[tokio::test]
async fn bad_spending_periods_are_shown_beside_their_fields() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let cases = [
        ("/spending?from=yesterday&through=2026-11-24", "from-error", "A date, as YYYY-MM-DD."),
        ("/spending?from=2026-11-24&through=2026-02-30", "through-error", "A date, as YYYY-MM-DD."),
        ("/spending?from=2026-11-24&through=2026-11-01", "through-error", "must not be before the first"),
        ("/spending?from=2024-01-01&through=2026-01-01", "through-error", "at most 366 days"),
        ("/spending?by=%3Cscript%3E", "by-error", "Choose one of the groupings listed."),
    ];
    let asked = hub.backend.with_state(|s| s.spending_queries.len());
    for (path, id, message) in cases {
        let page = browser.get(path).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
        page.contains(&format!("id=\"{id}\">"))
            .contains(message)
            .contains("aria-invalid=\"true\"")
            .lacks("<svg viewBox");
    }
    assert_eq!(hub.backend.with_state(|s| s.spending_queries.len()), asked, "no report was asked for");
    // Garbage in the query string is just missing fields: the default report.
    browser.get("/spending?%ZZ=%%").await.expect(StatusCode::OK);
}

#[tokio::test]
async fn budgets_are_listed_edited_and_set_in_units() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    browser
        .get("/budgets")
        .await
        .expect(StatusCode::OK)
        .contains("0.0000012 USD")
        .contains("href=\"/budgets?edit=device:fridge#budget-form\"");
    let edit = browser.get("/budgets?edit=device:fridge").await.expect(StatusCode::OK);
    edit.contains("value=\"device:fridge\"").contains("value=\"0.000005\"").contains("<option value=\"day\" selected>");
    let csrf = edit.field("csrf");
    let form = [
        ("csrf", csrf.as_str()),
        ("subject", "plugin:weather"),
        ("period", "week"),
        ("limit", "20"),
        ("auto_approve", "2.50"),
    ];
    browser.post("/budgets", &form).await.redirects_to("/budgets");
    browser
        .get("/budgets")
        .await
        .contains("plugin:weather may spend 20.00 USD per week, and is asked about anything over 2.50 USD.")
        .contains("<td>plugin:weather</td>");
    let set = hub
        .backend
        .with_state(|s| s.budgets.iter().find(|b| b.budget.subject.to_string() == "plugin:weather").cloned());
    let set = set.unwrap().budget;
    assert_eq!((set.limit.base_units(), set.auto_approve.base_units()), (20_000_000_000, 2_500_000_000));

    // Each budget has a button that removes it; a second removal says there is none.
    let page = browser.get("/budgets").await;
    page.contains("<form method=\"post\" action=\"/budgets/remove\" class=\"inline\">")
        .contains("name=\"subject\" value=\"plugin:weather\"");
    let remove = [("csrf", csrf.as_str()), ("subject", "plugin:weather")];
    browser.post("/budgets/remove", &remove).await.redirects_to("/budgets");
    browser
        .get("/budgets")
        .await
        .contains("Removed the budget of plugin:weather: it may spend nothing until it has one again.")
        .lacks("<td>plugin:weather</td>");
    browser.post("/budgets/remove", &remove).await.redirects_to("/budgets");
    browser.get("/budgets").await.contains("plugin:weather has no budget");
    let forged = [("csrf", "0".repeat(64)), ("subject", "device:fridge".to_owned())];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser.post("/budgets/remove", &forged).await.expect(StatusCode::FORBIDDEN);
    assert_eq!(hub.backend.with_state(|s| s.budgets.len()), 1, "the fridge's budget stays");
}

#[tokio::test]
async fn a_bad_budget_form_shows_each_error_beside_its_field_and_changes_nothing() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let before = hub.backend.with_state(|s| s.budgets.clone());
    let form =
        [("csrf", csrf.as_str()), ("subject", "fridge"), ("period", "year"), ("limit", "lots"), ("auto_approve", "1")];
    browser
        .post("/budgets", &form)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"subject-error\"")
        .contains("id=\"period-error\"")
        .contains("id=\"limit-error\">An amount in USD")
        .contains("value=\"lots\"")
        .lacks("id=\"auto_approve-error\"");
    let above = [
        ("csrf", csrf.as_str()),
        ("subject", "device:fridge"),
        ("period", "day"),
        ("limit", "1"),
        ("auto_approve", "2"),
    ];
    browser
        .post("/budgets", &above)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"auto_approve-error\"");
    // Each amount's problem in the owner's words.
    for (limit, said) in [
        ("-5", "An amount cannot be negative."),
        ("", "Enter an amount in USD, such as 2.50."),
        ("0.0000000001", "USD has at most 9 decimal places."),
        ("1".repeat(40).as_str(), "That is more than this hub can count."),
    ] {
        let form =
            [("csrf", csrf.as_str()), ("subject", ""), ("period", "day"), ("limit", limit), ("auto_approve", "0")];
        let page = browser.post("/budgets", &form).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
        page.contains(&format!("id=\"limit-error\">{said}</span>"))
            .contains("id=\"subject-error\">Whose budget: device:&#60;id&#62;");
    }
    // A budget from hub.toml: the hub refuses, and says so beside the subject.
    hub.backend.fail_next(BackendError::Conflict("device:fridge is set in hub.toml; change it there".to_owned()));
    let managed = [
        ("csrf", csrf.as_str()),
        ("subject", "device:fridge"),
        ("period", "day"),
        ("limit", "1"),
        ("auto_approve", "0"),
    ];
    let page = browser.post("/budgets", &managed).await;
    // The status call ran first and took the failure: the form is not lost either way.
    assert!(page.status == StatusCode::CONFLICT || page.status == StatusCode::UNPROCESSABLE_ENTITY, "{}", page.status);
    assert_eq!(hub.backend.with_state(|s| s.budgets.clone()), before);
}

#[tokio::test]
async fn devices_show_state_and_availability_and_take_commands() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    browser
        .get("/devices")
        .await
        .expect(StatusCode::OK)
        .contains("<a href=\"/devices/fridge\">Kitchen fridge</a>")
        .contains("<span class=\"up\">online</span>")
        .contains("<span class=\"down\">offline</span>")
        .contains("temperature_c: <strong>4.5</strong>")
        .contains("door: <strong>closed</strong>");
    let page = browser.get("/devices/fridge").await.expect(StatusCode::OK);
    page.contains("<code>0f0f0f0f").contains("action=\"/devices/fridge/command\"");
    page.contains("<td>door_opened</td><td><code>{&#34;seconds&#34;:12}</code></td>");
    let csrf = page.field("csrf");
    browser
        .post("/devices/fridge/command", &[("csrf", &csrf), ("name", "defrost"), ("payload", r#"{"minutes": 5}"#)])
        .await
        .redirects_to("/devices/fridge");
    browser.get("/devices/fridge").await.contains("Sent defrost to fridge");
    let sent = hub.backend.device_commands();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.as_str(), sent[0].1.as_str(), &sent[0].2),
        ("fridge", "defrost", &serde_json::json!({"minutes": 5}))
    );

    // Bad values are shown beside their fields, and nothing is sent.
    browser
        .post("/devices/fridge/command", &[("csrf", &csrf), ("name", "a/b"), ("payload", "{nope")])
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"name-error\"")
        .contains("id=\"payload-error\">Not JSON")
        .contains(">{nope</textarea>");
    assert_eq!(hub.backend.device_commands().len(), 1);
    browser.get("/devices/nobody").await.expect(StatusCode::NOT_FOUND);
    browser.get("/devices/Bad%20Id").await.expect(StatusCode::BAD_REQUEST);
    browser.post("/devices/nobody/command", &[("csrf", &csrf), ("name", "x")]).await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pairing_shows_the_credentials_once_and_unpairing_removes_the_device() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let page = browser
        .post("/devices", &[("csrf", &csrf), ("id", "washer"), ("name", "Washing machine"), ("public_key", "")])
        .await;
    let page = page.expect(StatusCode::CREATED);
    page.contains("<h1>Paired washer</h1>")
        .contains("id=\"device-password\"")
        .contains("id=\"device-secret\"")
        .contains(SAMPLE_BROKER);
    assert!(hub.backend.with_state(|s| s.devices.iter().any(|d| d.id.as_str() == "washer")));
    // The same id again, and bad fields: beside their fields, nothing paired.
    browser
        .post("/devices", &[("csrf", &csrf), ("id", "washer"), ("name", ""), ("public_key", "")])
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"id-error\"");
    browser
        .post("/devices", &[("csrf", &csrf), ("id", "Dryer!"), ("name", "x"), ("public_key", "zz")])
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"id-error\"")
        .contains("id=\"public_key-error\"");
    assert_eq!(hub.backend.with_state(|s| s.devices.len()), 3);

    browser.post("/devices/washer/remove", &[("csrf", &csrf)]).await.redirects_to("/devices");
    browser.get("/devices").await.contains("Unpaired Washing machine").lacks("href=\"/devices/washer\"");
}

#[tokio::test]
async fn channels_show_capacity_and_a_closing_ones_settlement_progress() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let page = browser.get("/channels").await.expect(StatusCode::OK);
    page.contains("10.00 USD").contains("8.50 USD").contains("<progress max=\"100\" value=\"15\">").contains("settled");
    let csrf = page.field("csrf");
    let open = "1".repeat(64);
    browser.post(&format!("/channels/{open}/close"), &[("csrf", &csrf)]).await.redirects_to("/channels");
    // Closing started now with a day's settlement period: 0% through, settles tomorrow.
    browser
        .get("/channels")
        .await
        .contains("Channel 11111111…1111 is closing; it settles after 2026-11-25 12:00 UTC.")
        .contains("<progress class=\"settling\" max=\"100\" value=\"0\">");
    hub.backend.with_state(|s| s.now = Timestamp(s.now.secs() + 21_600));
    browser.get("/channels").await.contains("<progress class=\"settling\" max=\"100\" value=\"25\">");
    // Closing it again is a message, an unknown id too; a malformed id is a 400.
    browser.post(&format!("/channels/{open}/close"), &[("csrf", &csrf)]).await.redirects_to("/channels");
    browser.get("/channels").await.contains("flash error");
    browser.post("/channels/xyz/close", &[("csrf", &csrf)]).await.expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn services_and_peers_show_what_the_network_knows() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    browser
        .get("/services")
        .await
        .expect(StatusCode::OK)
        .contains("<td>solar.surplus</td>")
        .contains("surplus solar power, per kWh")
        .contains("<td>weather.forecast</td>")
        .contains("0.000002 USD")
        .contains("tomorrow&#39;s weather");
    browser
        .get("/peers")
        .await
        .expect(StatusCode::OK)
        .contains("12D3KooWSamplePeerConnected")
        .contains("<span class=\"up\">connected</span>")
        .contains("<span class=\"down\">not connected</span>")
        .contains("/ip4/192.168.1.20/tcp/4001")
        .contains(&"01".repeat(32));
}

#[tokio::test]
async fn plugins_show_grants_state_and_the_quarantine_reason() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    browser
        .get("/plugins")
        .await
        .expect(StatusCode::OK)
        .contains("<a href=\"/plugins/weather-buyer\">weather-buyer</a>")
        .contains("<span class=\"down\">quarantined</span>: 3 faults within 10 minutes: out of fuel")
        .contains("enctype=\"multipart/form-data\"");
    browser
        .get("/plugins/weather-buyer")
        .await
        .expect(StatusCode::OK)
        .contains("weather.forecast at most 0.000002 USD a call")
        .contains("machinomy/irrigation/cmd/#")
        .contains("0.0001 USD per day, asks you above 0.000002 USD")
        .contains("action=\"/plugins/weather-buyer/disable\"");
    browser
        .get("/plugins/flaky")
        .await
        .contains("id=\"quarantine-reason\">3 faults within 10 minutes: out of fuel")
        .contains("Lift the quarantine and enable");
    browser.get("/plugins/nobody").await.expect(StatusCode::NOT_FOUND);
    browser.get("/plugins/Bad%20Name").await.expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn plugins_are_enabled_disabled_and_removed_by_form() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let state =
        |name: &str| hub.backend.with_state(|s| s.plugins.iter().find(|p| p.view.name == name).map(|p| p.view.state));
    browser.post("/plugins/weather-buyer/disable", &[("csrf", &csrf)]).await.redirects_to("/plugins/weather-buyer");
    assert_eq!(state("weather-buyer"), Some(crate::model::PluginStateName::Disabled));
    browser.get("/plugins/weather-buyer").await.contains("weather-buyer is disabled");
    browser.post("/plugins/flaky/enable", &[("csrf", &csrf)]).await.redirects_to("/plugins/flaky");
    assert_eq!(state("flaky"), Some(crate::model::PluginStateName::Enabled));
    // Nothing waits for approval: a message, not an error page.
    browser.post("/plugins/flaky/approve", &[("csrf", &csrf)]).await.redirects_to("/plugins/flaky");
    browser.get("/plugins/flaky").await.contains("flash error");
    browser.post("/plugins/flaky/explode", &[("csrf", &csrf)]).await.expect(StatusCode::NOT_FOUND);
    browser.post("/plugins/flaky/remove", &[("csrf", &csrf)]).await.redirects_to("/plugins");
    assert_eq!(state("flaky"), None);
    browser.get("/plugins").await.contains("Removed flaky with its storage.");
}

#[tokio::test]
async fn a_plugins_settings_are_changed_by_form_and_a_line_left_out_goes_back_to_its_own_value() {
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let overrides = || {
        hub.backend.with_state(|s| s.plugins.iter().find(|p| p.view.name == "weather-buyer").unwrap().overrides.clone())
    };
    // The box holds the settings as they are, values as JSON.
    browser
        .get("/plugins/weather-buyer")
        .await
        .contains("action=\"/plugins/weather-buyer/settings#settings-h\"")
        .contains("<th>every_secs</th><td><code>600</code></td><td>set by you</td>")
        .contains("<td><span class=\"muted\">the plugin's default</span></td>")
        .contains("every_secs=600\nirrigation=&#34;irrigation&#34;\n</textarea>");

    // A line that cannot be read: the form comes back with the text and why; nothing changes.
    let before = overrides();
    browser
        .post("/plugins/weather-buyer/settings", &[("csrf", &csrf), ("settings", "every_secs=60\nno equals")])
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("id=\"settings-error\">Line 2: expected KEY=VALUE.")
        .contains("every_secs=60\nno equals</textarea>");
    assert_eq!(overrides(), before);

    browser
        .post("/plugins/weather-buyer/settings", &[("csrf", &csrf), ("settings", "every_secs=null")])
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY)
        .contains("Line 1: null is not a setting; leave the line out to use the plugin&#39;s own value.");
    assert_eq!(overrides(), before);

    // `every_secs` left out goes back to the manifest's 3600; the valve is renamed (spaces
    // around the `=` are layout).
    browser
        .post("/plugins/weather-buyer/settings", &[("csrf", &csrf), ("settings", "irrigation = garden \n\n")])
        .await
        .redirects_to("/plugins/weather-buyer");
    assert_eq!(serde_json::Value::Object(overrides()), serde_json::json!({"irrigation": "garden"}));
    browser
        .get("/plugins/weather-buyer")
        .await
        .contains("Changed the settings of weather-buyer; it restarted with them.")
        .contains("every_secs=3600\nirrigation=&#34;garden&#34;\n</textarea>");

    // The same again changes nothing and says so.
    browser
        .post(
            "/plugins/weather-buyer/settings",
            &[("csrf", &csrf), ("settings", "every_secs=3600\nirrigation=\"garden\"")],
        )
        .await
        .redirects_to("/plugins/weather-buyer");
    browser.get("/plugins/weather-buyer").await.contains("Nothing changed.");
    assert_eq!(serde_json::Value::Object(overrides()), serde_json::json!({"irrigation": "garden"}));
    // Leaving out a line that already held the plugin's own value changes nothing it reads.
    browser
        .post("/plugins/weather-buyer/settings", &[("csrf", &csrf), ("settings", "irrigation=garden")])
        .await
        .redirects_to("/plugins/weather-buyer");
    browser.get("/plugins/weather-buyer").await.contains("The settings of weather-buyer are as they were.");

    // Lines that cannot be one setting each, and a form without its box, change nothing.
    for (settings, error) in [
        ("irrigation=a\nirrigation=b", "Line 2: irrigation is set twice."),
        ("a b=1", "Line 1: &#34;a b&#34; is not a setting&#39;s name"),
    ] {
        browser
            .post("/plugins/weather-buyer/settings", &[("csrf", &csrf), ("settings", settings)])
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY)
            .contains(error);
    }
    browser.post("/plugins/weather-buyer/settings", &[("csrf", &csrf)]).await.expect(StatusCode::BAD_REQUEST);
    assert_eq!(serde_json::Value::Object(overrides()), serde_json::json!({"irrigation": "garden"}));
    browser.post("/plugins/nope/settings", &[("csrf", &csrf), ("settings", "a=1")]).await.expect(StatusCode::NOT_FOUND);
}

/// A multipart upload as a browser sends the install form.
fn upload_form(
    path: &str,
    cookies: &str,
    csrf: &str,
    manifest: Option<&str>,
    wasm: Option<&[u8]>,
    settings: &str,
) -> Request<Body> {
    const BOUNDARY: &str = "----machinomy-test-boundary";
    let mut body: Vec<u8> = Vec::new();
    let mut part = |name: &str, filename: Option<&str>, content: &[u8]| {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(file) = filename {
            body.extend_from_slice(
                format!("; filename=\"{file}\"\r\nContent-Type: application/octet-stream").as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    };
    part("csrf", None, csrf.as_bytes());
    part("manifest", Some("plugin.toml"), manifest.unwrap_or_default().as_bytes());
    part("wasm", Some("plugin.wasm"), wasm.unwrap_or_default());
    part("settings", None, settings.as_bytes());
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Request::post(path)
        .header(header::COOKIE, cookies)
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_plugin_is_installed_by_upload_with_its_settings() {
    use crate::testing::EMPTY_MODULE;
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let cookies = browser.cookie_header();
    let manifest = "name = \"lights\"\nversion = \"1.0.0\"\n[grants]\npublish = [\"machinomy/lamp/cmd/#\"]\n";
    let request =
        upload_form("/plugins", &cookies, &csrf, Some(manifest), Some(EMPTY_MODULE), "after = \"22:00\"\nlevel=3\n");
    browser.send(request).await.redirects_to("/plugins/lights");
    browser.get("/plugins/lights").await.contains("Installed lights 1.0.0.").contains("machinomy/lamp/cmd/#");
    let config =
        hub.backend.with_state(|s| s.plugins.iter().find(|p| p.view.name == "lights").map(|p| p.overrides.clone()));
    assert_eq!(serde_json::Value::Object(config.unwrap()), serde_json::json!({"after": "22:00", "level": 3}));
}

#[tokio::test]
async fn a_bad_upload_is_refused_beside_its_field_and_installs_nothing() {
    use crate::testing::EMPTY_MODULE;
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let cookies = browser.cookie_header();
    let manifest = "name = \"lights\"\nversion = \"1.0.0\"\n";
    type Case<'a> = (Option<&'a str>, Option<&'a [u8]>, &'a str, &'a str);
    let cases: [Case<'_>; 5] = [
        (None, Some(EMPTY_MODULE), "", "id=\"manifest-error\">Choose the plugin&#39;s plugin.toml."),
        (Some(manifest), None, "", "id=\"wasm-error\">Choose the plugin&#39;s .wasm module."),
        (Some(manifest), Some(b"#!/bin/sh\n"), "", "id=\"wasm-error\">"),
        (Some("name = \"lights\"\n[grants]\nsubscribe = [\"#\"]\n"), Some(EMPTY_MODULE), "", "id=\"manifest-error\">"),
        (Some(manifest), Some(EMPTY_MODULE), "no equals sign", "id=\"settings-error\">Line 1: expected KEY=VALUE."),
    ];
    for (manifest, wasm, settings, expected) in cases {
        let page = browser.send(upload_form("/plugins", &cookies, &csrf, manifest, wasm, settings)).await;
        page.expect(StatusCode::UNPROCESSABLE_ENTITY).contains(expected);
    }
    // Without the session's token, nothing is even read.
    browser
        .send(upload_form("/plugins", &cookies, "", Some(manifest), Some(EMPTY_MODULE), ""))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(hub.backend.with_state(|s| s.plugins.len()), 2);
}

#[tokio::test]
async fn an_upgrade_asking_for_more_waits_for_the_owners_approval_on_the_plugins_page() {
    use crate::testing::{EMPTY_MODULE, SAMPLE_PLUGIN_MANIFEST};
    let hub = Hub::set_up();
    let mut browser = hub.signed_in().await;
    let csrf = browser.csrf().await;
    let cookies = browser.cookie_header();
    let wider = SAMPLE_PLUGIN_MANIFEST.replace("version = \"0.1.0\"", "version = \"0.2.0\"").replace(
        "publish = [\"machinomy/irrigation/cmd/#\"]",
        "publish = [\"machinomy/irrigation/cmd/#\", \"machinomy/sprinkler/cmd/#\"]",
    );
    let request = upload_form("/plugins/weather-buyer/upgrade", &cookies, &csrf, Some(&wider), Some(EMPTY_MODULE), "");
    browser.send(request).await.redirects_to("/plugins/weather-buyer");
    let page = browser.get("/plugins/weather-buyer").await;
    page.contains("asks for more than you approved")
        .contains("Version 0.2.0 waits for your approval")
        .contains("machinomy/sprinkler/cmd/#");
    browser.post("/plugins/weather-buyer/approve", &[("csrf", &csrf)]).await.redirects_to("/plugins/weather-buyer");
    browser.get("/plugins/weather-buyer").await.contains("Approved: weather-buyer 0.2.0 runs now.");
    // An upgrade naming another plugin is refused beside the manifest.
    let other = SAMPLE_PLUGIN_MANIFEST.replace("name = \"weather-buyer\"", "name = \"other\"");
    let request = upload_form("/plugins/weather-buyer/upgrade", &cookies, &csrf, Some(&other), Some(EMPTY_MODULE), "");
    browser.send(request).await.expect(StatusCode::UNPROCESSABLE_ENTITY).contains("id=\"manifest-error\">");
}

#[tokio::test]
async fn html_in_names_descriptions_and_state_is_escaped_on_every_page() {
    let hub = Hub::set_up();
    let evil = "<script>alert(1)</script>";
    hub.backend.with_state(|s| {
        let device = s.devices.iter_mut().find(|d| d.id.as_str() == SAMPLE_DEVICE).unwrap();
        device.name = evil.to_owned();
        device.state.insert("note".to_owned(), serde_json::json!(evil));
        s.services.seen[0].description = evil.to_owned();
        s.plugins[0].view.description = evil.to_owned();
        s.plugins[0].view.recent.push(crate::model::PluginLogLine {
            at_ms: 0,
            level: "info".to_owned(),
            text: evil.to_owned(),
        });
    });
    let mut browser = hub.signed_in().await;
    for path in ["/devices", "/devices/fridge", "/services", "/plugins", "/plugins/flaky", "/plugins/weather-buyer"] {
        let page = browser.get(path).await.expect(StatusCode::OK);
        page.lacks("<script>alert");
    }
    browser.get("/devices/fridge").await.contains("&#60;script&#62;alert(1)&#60;/script&#62;");
}

#[tokio::test]
async fn the_live_script_needs_no_session_and_is_served_as_javascript() {
    let hub = Hub::first_run();
    let mut browser = Browser::new(&hub.app);
    let script = browser.get("/static/live.js").await.expect(StatusCode::OK);
    assert_eq!(script.header(header::CONTENT_TYPE), "text/javascript; charset=utf-8");
    assert_eq!(script.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    script.contains("new EventSource(\"/api/v1/events\")").contains("data-live");
}
