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
use crate::testing::{APPROVED_APPROVAL, MemoryBackend, PENDING_APPROVAL, SAMPLE_DEVICE, SAMPLE_NOW};
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
        .contains("<time datetime=\"2026-11-24T13:00:00Z\">2026-11-24 13:00 UTC</time>")
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
        .contains("expires <time datetime=\"2026-11-24T13:00:00Z\">")
        .contains(&format!("action=\"/approvals/{PENDING_APPROVAL}/approve\""))
        .contains(&format!("action=\"/approvals/{PENDING_APPROVAL}/deny\""))
        .contains(&format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"))
        .contains(&format!("<td>{APPROVED_APPROVAL}</td>"))
        .contains("approved by admin-token");
    assert_eq!(csrf.len(), 64);
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
