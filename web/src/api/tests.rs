//! The admin API, request by request, against the in-memory backend; no sockets.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use machinomy_core::{Amount, ApprovalState, GroupBy, Period, Subject, Timestamp, Verdict};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{parse_approval_id, parse_time};
use crate::model::{CallBody, PluginStateName};
use crate::testing::{
    APPROVED_APPROVAL, CONNECTED_PEER, EMPTY_MODULE, EXPENSIVE_SERVICE, MemoryBackend, OFFLINE_PEER, OPEN_CHANNEL,
    OWN_SERVICE, PENDING_APPROVAL, QUARANTINE_REASON, QUARANTINED_PLUGIN, SAMPLE_BLE_DEVICE, SAMPLE_BROKER,
    SAMPLE_DEVICE, SAMPLE_DEVICE_KEY, SAMPLE_NOW, SAMPLE_PLUGIN, SAMPLE_PLUGIN_MANIFEST, SAMPLE_SERVICE,
    SAMPLE_SERVICE_ANSWER, SAMPLE_SERVICE_PRICE, SETTLED_CHANNEL,
};
use crate::{AdminAuth, BODY_LIMIT, BackendError, INTERNAL_ERROR_MESSAGE, PLUGIN_BODY_LIMIT, PLUGIN_WASM_LIMIT};
use jiff::tz::TimeZone;

const TOKEN: &str = "test-admin-token-5f2c9a";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` string of an error answer.
    fn error(&self) -> String {
        let body = self.json();
        body["error"].as_str().unwrap_or_else(|| panic!("no \"error\" string in {body}")).to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        self
    }

    /// Asserts an error answer with `status` whose message contains `needle`.
    #[track_caller]
    fn expect_error(self, status: StatusCode, needle: &str) -> String {
        let this = self.expect(status);
        assert!(this.header(header::CONTENT_TYPE).starts_with("application/json"));
        let error = this.error();
        assert!(error.contains(needle), "error {error:?} does not mention {needle:?}");
        error
    }
}

struct Harness {
    backend: Arc<MemoryBackend>,
    app: Router,
}

fn harness() -> Harness {
    harness_with(MemoryBackend::sample())
}

fn harness_with(backend: MemoryBackend) -> Harness {
    let backend = Arc::new(backend);
    let app = super::router(backend.clone(), AdminAuth::new(TOKEN).unwrap());
    Harness { backend, app }
}

fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(request(Method::GET, uri).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, uri: &str) -> Answer {
        self.send(request(Method::POST, uri).body(Body::empty()).unwrap()).await
    }

    async fn send_json(&self, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
        self.send(request(method, uri).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap())
            .await
    }
}

fn hex(id: machinomy_core::ChannelId) -> String {
    id.to_hex()
}

/// Every API route with a request that would succeed with the right token.
fn api_routes() -> Vec<(Method, String)> {
    vec![
        (Method::GET, "/api/v1/status".to_owned()),
        (Method::GET, "/api/v1/channels".to_owned()),
        (Method::GET, format!("/api/v1/channels/{}", hex(OPEN_CHANNEL))),
        (Method::POST, format!("/api/v1/channels/{}/close", hex(OPEN_CHANNEL))),
        (Method::GET, "/api/v1/budgets".to_owned()),
        (Method::PUT, "/api/v1/budgets".to_owned()),
        (Method::DELETE, "/api/v1/budgets/device:fridge".to_owned()),
        (Method::GET, "/api/v1/approvals".to_owned()),
        (Method::GET, format!("/api/v1/approvals/{PENDING_APPROVAL}")),
        (Method::POST, format!("/api/v1/approvals/{PENDING_APPROVAL}/approve")),
        (Method::POST, format!("/api/v1/approvals/{PENDING_APPROVAL}/deny")),
        (Method::GET, "/api/v1/spending".to_owned()),
        (Method::GET, "/api/v1/spending.csv".to_owned()),
        (Method::GET, "/api/v1/spending/daily?from=2026-11-01&to=2026-12-01".to_owned()),
        (Method::GET, "/api/v1/events".to_owned()),
        (Method::GET, "/api/v1/peers".to_owned()),
        (Method::GET, "/api/v1/services".to_owned()),
        (Method::POST, format!("/api/v1/services/{SAMPLE_SERVICE}/call")),
        (Method::GET, "/api/v1/devices".to_owned()),
        (Method::POST, "/api/v1/devices".to_owned()),
        (Method::GET, format!("/api/v1/devices/{SAMPLE_DEVICE}")),
        (Method::DELETE, format!("/api/v1/devices/{SAMPLE_DEVICE}")),
        (Method::POST, format!("/api/v1/devices/{SAMPLE_DEVICE}/commands/defrost")),
        (Method::GET, "/api/v1/plugins".to_owned()),
        (Method::POST, "/api/v1/plugins".to_owned()),
        (Method::GET, format!("/api/v1/plugins/{SAMPLE_PLUGIN}")),
        (Method::PUT, format!("/api/v1/plugins/{SAMPLE_PLUGIN}")),
        (Method::DELETE, format!("/api/v1/plugins/{SAMPLE_PLUGIN}")),
        (Method::POST, format!("/api/v1/plugins/{SAMPLE_PLUGIN}/approve")),
        (Method::POST, format!("/api/v1/plugins/{SAMPLE_PLUGIN}/enable")),
        (Method::POST, format!("/api/v1/plugins/{SAMPLE_PLUGIN}/disable")),
    ]
}

// ---- health and routing ----

#[tokio::test]
async fn healthz_answers_ok_without_a_token() {
    let h = harness();
    let answer = h.send(Request::get("/healthz").body(Body::empty()).unwrap()).await.expect(StatusCode::OK);
    assert_eq!(answer.text(), "ok");
}

#[tokio::test]
async fn unknown_paths_answer_404_as_json() {
    let h = harness();
    let error = h.get("/api/v1/nothing-here").await.expect_error(StatusCode::NOT_FOUND, "/api/v1/nothing-here");
    assert!(error.contains("GET"), "{error}");
    h.get("/api/v1/status/").await.expect_error(StatusCode::NOT_FOUND, "");
}

#[tokio::test]
async fn wrong_methods_answer_405_as_json_with_allow() {
    let h = harness();
    let answer = h.send(request(Method::DELETE, "/api/v1/budgets").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.header(header::ALLOW), "GET,HEAD,PUT");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "DELETE");
    h.get(&format!("/api/v1/approvals/{PENDING_APPROVAL}/approve"))
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "GET");
    h.send(Request::post("/healthz").body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
}

// ---- authentication ----

#[tokio::test]
async fn every_api_route_refuses_a_request_without_a_token() {
    let h = harness();
    for (method, uri) in api_routes() {
        let answer = h.send(Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(answer.header(header::WWW_AUTHENTICATE).starts_with("Bearer"), "{method} {uri}");
        assert!(answer.error().contains("admin token"), "{method} {uri}: {}", answer.error());
    }
    // Nothing was done on the way.
    h.backend.with_state(|s| {
        assert!(s.decisions.is_empty());
        assert!(s.service_calls.is_empty());
        assert!(s.channels.iter().all(|c| c.id != OPEN_CHANNEL || c.status.is_open()));
        assert_eq!(s.devices.len(), 2);
        assert!(s.device_commands.is_empty());
        assert_eq!(s.plugins.len(), 2);
        let sample = s.plugins.iter().find(|p| p.view.name == SAMPLE_PLUGIN).unwrap();
        assert_eq!((sample.view.state, sample.view.version.as_str()), (PluginStateName::Enabled, "0.1.0"));
    });
}

#[tokio::test]
async fn every_api_route_refuses_a_wrong_token() {
    let h = harness();
    for (method, uri) in api_routes() {
        for authorization in [format!("Bearer {TOKEN}x"), "Bearer wrong".to_owned(), "Bearer ".to_owned()] {
            let request = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header(header::AUTHORIZATION, authorization.as_str())
                .body(Body::empty())
                .unwrap();
            let answer = h.send(request).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {uri} with {authorization:?}");
            assert!(answer.header(header::WWW_AUTHENTICATE).contains("invalid_token"));
            assert!(answer.error().contains("not valid") || answer.error().contains("Bearer <token>"));
        }
    }
    h.backend.with_state(|s| {
        assert!(s.decisions.is_empty());
        assert!(s.service_calls.is_empty());
        assert_eq!(s.devices.len(), 2);
        assert!(s.device_commands.is_empty());
        assert_eq!(s.plugins.len(), 2);
    });
}

#[tokio::test]
async fn other_authorization_schemes_are_refused() {
    let h = harness();
    let request = Request::get("/api/v1/status")
        .header(header::AUTHORIZATION, format!("Basic {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    h.send(request).await.expect_error(StatusCode::UNAUTHORIZED, "Bearer <token>");
}

#[tokio::test]
async fn unknown_api_paths_and_wrong_methods_need_no_token_to_be_told_apart() {
    // Auth guards routes; an unknown path is a 404 for anybody, a wrong method needs the token.
    let h = harness();
    h.send(Request::get("/api/v1/nothing").body(Body::empty()).unwrap()).await.expect_error(StatusCode::NOT_FOUND, "");
    h.send(Request::delete("/api/v1/status").body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "admin token");
}

#[tokio::test]
async fn api_answers_are_not_cached() {
    let h = harness();
    let answer = h.get("/api/v1/status").await.expect(StatusCode::OK);
    assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
}

// ---- status ----

#[tokio::test]
async fn status_reports_the_hub() {
    let h = harness();
    let body = h.get("/api/v1/status").await.expect(StatusCode::OK).json();
    assert_eq!(body["name"], "test-home");
    assert_eq!(body["currency"], json!({"code": "USD", "decimals": 9}));
    assert_eq!(body["approvals_pending"], 1);
}

// ---- channels ----

#[tokio::test]
async fn channels_are_listed_with_amounts_as_strings() {
    let h = harness();
    let body = h.get("/api/v1/channels").await.expect(StatusCode::OK).json();
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], hex(OPEN_CHANNEL));
    assert_eq!(list[0]["capacity"], "10000000000");
    assert_eq!(list[0]["status"]["state"], "open");
}

#[tokio::test]
async fn one_channel_is_shown_by_its_hex_id() {
    let h = harness();
    let body = h.get(&format!("/api/v1/channels/{}", hex(SETTLED_CHANNEL))).await.expect(StatusCode::OK).json();
    assert_eq!(body["role"], "receiver");
    assert_eq!(body["status"]["state"], "settled");
}

#[tokio::test]
async fn an_unknown_channel_is_404() {
    let h = harness();
    let unknown = "ab".repeat(32);
    h.get(&format!("/api/v1/channels/{unknown}")).await.expect_error(StatusCode::NOT_FOUND, &unknown);
    h.post(&format!("/api/v1/channels/{unknown}/close")).await.expect_error(StatusCode::NOT_FOUND, &unknown);
}

#[tokio::test]
async fn a_channel_id_that_is_not_64_hex_characters_is_400() {
    let h = harness();
    for bad in ["fridge", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
        let error = h.get(&format!("/api/v1/channels/{bad}")).await.expect_error(StatusCode::BAD_REQUEST, "channel id");
        assert!(error.contains("64 hex"), "{error}");
        h.post(&format!("/api/v1/channels/{bad}/close")).await.expect_error(StatusCode::BAD_REQUEST, "");
    }
    // Not even UTF-8 once percent-decoded.
    h.get("/api/v1/channels/%FF%FE").await.expect_error(StatusCode::BAD_REQUEST, "bad path");
}

#[tokio::test]
async fn closing_a_channel_answers_its_new_state_and_closing_again_is_409() {
    let h = harness();
    let uri = format!("/api/v1/channels/{}/close", hex(OPEN_CHANNEL));
    let body = h.post(&uri).await.expect(StatusCode::OK).json();
    assert_eq!(body["status"]["state"], "closing");
    assert_eq!(body["status"]["final_amount"], "1500000000");
    h.post(&uri).await.expect_error(StatusCode::CONFLICT, "already closing");
}

// ---- budgets ----

#[tokio::test]
async fn budgets_are_listed_flat_with_their_period() {
    let h = harness();
    let body = h.get("/api/v1/budgets").await.expect(StatusCode::OK).json();
    let fridge = &body[0];
    assert_eq!(fridge["subject"], "device:fridge");
    assert_eq!(fridge["period"], "day");
    assert_eq!(fridge["limit"], "5000");
    assert_eq!(fridge["auto_approve"], "500");
    assert_eq!(fridge["spent_this_period"], "1200");
    assert_eq!(fridge["period_start"], SAMPLE_NOW.secs() - 12 * 3_600);
}

#[tokio::test]
async fn putting_a_budget_creates_it() {
    let h = harness();
    let body = json!({"subject": "plugin:weather", "period": "month", "limit": "2000000000", "auto_approve": "0"});
    let answer = h.send_json(Method::PUT, "/api/v1/budgets", body.to_string()).await.expect(StatusCode::OK).json();
    assert_eq!(answer["subject"], "plugin:weather");
    assert_eq!(answer["limit"], "2000000000");
    h.backend.with_state(|s| {
        let budget = &s.budgets.iter().find(|b| b.budget.subject == Subject::Plugin("weather".to_owned())).unwrap();
        assert_eq!(budget.budget.period, Period::Month);
        assert_eq!(budget.budget.auto_approve, Amount::ZERO);
    });
}

#[tokio::test]
async fn deleting_a_budget_removes_it_once() {
    let h = harness();
    let removed = h.delete("/api/v1/budgets/device:fridge").await.expect(StatusCode::OK).json();
    assert_eq!((removed["subject"].as_str(), removed["limit"].as_str()), (Some("device:fridge"), Some("5000")));
    h.backend.with_state(|s| assert!(s.budgets.is_empty()));
    h.delete("/api/v1/budgets/device:fridge").await.expect_error(StatusCode::NOT_FOUND, "device:fridge has no budget");
    h.delete("/api/v1/budgets/fridge").await.expect_error(StatusCode::BAD_REQUEST, "fridge");
}

#[tokio::test]
async fn putting_a_budget_replaces_the_subjects_budget() {
    let h = harness();
    let body = json!({"subject": "device:fridge", "period": "week", "limit": "9000", "auto_approve": "9000"});
    h.send_json(Method::PUT, "/api/v1/budgets", body.to_string()).await.expect(StatusCode::OK);
    h.backend.with_state(|s| {
        assert_eq!(s.budgets.len(), 1);
        assert_eq!(s.budgets[0].budget.limit, Amount::from_base_units(9_000));
        assert_eq!(s.budgets[0].budget.period, Period::Week);
    });
}

#[tokio::test]
async fn a_threshold_above_the_limit_is_400_and_changes_nothing() {
    let h = harness();
    let body = json!({"subject": "device:fridge", "period": "day", "limit": "500", "auto_approve": "501"});
    let error = h.send_json(Method::PUT, "/api/v1/budgets", body.to_string()).await;
    let error = error.expect_error(StatusCode::BAD_REQUEST, "auto-approve threshold 501 is above the limit 500");
    assert!(error.starts_with("invalid request body"), "{error}");
    h.backend.with_state(|s| assert_eq!(s.budgets[0].budget.limit, Amount::from_base_units(5_000)));
}

#[tokio::test]
async fn malformed_budget_bodies_are_400_with_what_was_wrong() {
    let h = harness();
    let cases = [
        (r#"{"subject": "device:fridge", "#, "not valid JSON"),
        ("not json", "not valid JSON"),
        (r#"{"subject":"device:fridge","period":"day","limit":"5000","auto_approve":"1"} x"#, "not valid JSON"),
        (r#"{"subject":"device:fridge","period":"day","limit":"5000"}"#, "missing field `auto_approve`"),
        (r#"{"subject":"device:fridge","period":"day","limit":"5 USD","auto_approve":"1"}"#, "`limit`"),
        (r#"{"subject":"device:fridge","period":"day","limit":5000,"auto_approve":"1"}"#, "`limit`"),
        (r#"{"subject":"fridge","period":"day","limit":"5000","auto_approve":"1"}"#, "`subject`"),
        (r#"{"subject":"device:fridge","period":"fortnight","limit":"5000","auto_approve":"1"}"#, "`period`"),
        (r#"{"subject":"device:fridge","period":"day","limit":"1","auto_approve":"1","x":1}"#, "unknown field `x`"),
        ("[]", "invalid request body"),
    ];
    for (body, needle) in cases {
        let error = h.send_json(Method::PUT, "/api/v1/budgets", body).await;
        assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error.error().contains(needle), "{body}: {:?} lacks {needle:?}", error.error());
    }
}

#[tokio::test]
async fn a_budget_needs_a_json_body_and_content_type() {
    let h = harness();
    h.send_json(Method::PUT, "/api/v1/budgets", "").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    let body = json!({"subject": "device:fridge", "period": "day", "limit": "5000", "auto_approve": "1"});
    let request = request(Method::PUT, "/api/v1/budgets").header(header::CONTENT_TYPE, "text/plain");
    h.send(request.body(Body::from(body.to_string())).unwrap())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "Content-Type: application/json");
    let request = request_without_content_type(Method::PUT, "/api/v1/budgets", body.to_string());
    h.send(request).await.expect_error(StatusCode::BAD_REQUEST, "Content-Type: application/json");
}

fn request_without_content_type(method: Method, uri: &str, body: String) -> Request<Body> {
    request(method, uri).body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let h = harness();
    let memo = "x".repeat(BODY_LIMIT);
    let body =
        format!(r#"{{"subject":"device:fridge","period":"day","limit":"1","auto_approve":"1","memo":"{memo}"}}"#);
    h.send_json(Method::PUT, "/api/v1/budgets", body.clone())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "64 KiB");
    let deny = format!("/api/v1/approvals/{PENDING_APPROVAL}/deny");
    h.send_json(Method::POST, &deny, body).await.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "too large");
    h.backend.with_state(|s| assert!(s.decisions.is_empty()));
}

// ---- approvals ----

#[tokio::test]
async fn approvals_list_pending_ones_by_default() {
    let h = harness();
    for uri in ["/api/v1/approvals", "/api/v1/approvals?state=pending", "/api/v1/approvals?state="] {
        let body = h.get(uri).await.expect(StatusCode::OK).json();
        let ids: Vec<_> = body.as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [PENDING_APPROVAL], "{uri}");
    }
}

#[tokio::test]
async fn approvals_state_all_lists_decided_ones_too() {
    let h = harness();
    let body = h.get("/api/v1/approvals?state=all").await.expect(StatusCode::OK).json();
    let ids: Vec<_> = body.as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [PENDING_APPROVAL, APPROVED_APPROVAL]);
    assert_eq!(body[1]["state"]["state"], "approved");
}

#[tokio::test]
async fn bad_approval_queries_are_400_naming_the_parameter() {
    let h = harness();
    h.get("/api/v1/approvals?state=denied").await.expect_error(StatusCode::BAD_REQUEST, "`state` must be");
    h.get("/api/v1/approvals?status=all").await.expect_error(StatusCode::BAD_REQUEST, "unknown field `status`");
    h.get("/api/v1/approvals?state=all&state=pending").await.expect_error(StatusCode::BAD_REQUEST, "state");
}

#[tokio::test]
async fn one_approval_is_shown_by_id() {
    let h = harness();
    let body = h.get(&format!("/api/v1/approvals/{PENDING_APPROVAL}")).await.expect(StatusCode::OK).json();
    assert_eq!(body["request"]["amount"], "4000");
    assert_eq!(body["request"]["subject"], "device:fridge");
    assert_eq!(body["state"]["state"], "pending");
}

#[tokio::test]
async fn an_unknown_approval_is_404_everywhere() {
    let h = harness();
    h.get("/api/v1/approvals/999").await.expect_error(StatusCode::NOT_FOUND, "999");
    h.post("/api/v1/approvals/999/approve").await.expect_error(StatusCode::NOT_FOUND, "999");
    h.post("/api/v1/approvals/999/deny").await.expect_error(StatusCode::NOT_FOUND, "999");
}

#[tokio::test]
async fn a_non_numeric_approval_id_is_400() {
    let h = harness();
    for bad in ["seven", "-1", "1.5", "0x10", "99999999999999999999999"] {
        h.get(&format!("/api/v1/approvals/{bad}")).await.expect_error(StatusCode::BAD_REQUEST, "not an approval id");
        h.post(&format!("/api/v1/approvals/{bad}/approve")).await.expect_error(StatusCode::BAD_REQUEST, "approval id");
        h.post(&format!("/api/v1/approvals/{bad}/deny")).await.expect_error(StatusCode::BAD_REQUEST, "approval id");
    }
    h.backend.with_state(|s| assert!(s.decisions.is_empty()));
}

#[tokio::test]
async fn approving_records_the_admin_token_as_the_decider() {
    let h = harness();
    let body = h.post(&format!("/api/v1/approvals/{PENDING_APPROVAL}/approve")).await.expect(StatusCode::OK).json();
    assert_eq!(body["state"], json!({"state": "approved", "by": "admin-token", "at": SAMPLE_NOW.secs()}));
    h.backend.with_state(|s| {
        assert_eq!(s.decisions, [(PENDING_APPROVAL, Verdict::Approve, "admin-token".to_owned())]);
    });
}

#[tokio::test]
async fn approving_accepts_an_empty_json_object_but_not_fields() {
    let h = harness();
    let uri = format!("/api/v1/approvals/{PENDING_APPROVAL}/approve");
    h.send_json(Method::POST, &uri, r#"{"reason":"x"}"#).await.expect_error(StatusCode::BAD_REQUEST, "unknown field");
    h.send_json(Method::POST, &uri, "{}").await.expect(StatusCode::OK);
}

#[tokio::test]
async fn deciding_twice_is_409() {
    let h = harness();
    let approve = format!("/api/v1/approvals/{PENDING_APPROVAL}/approve");
    let deny = format!("/api/v1/approvals/{PENDING_APPROVAL}/deny");
    h.post(&approve).await.expect(StatusCode::OK);
    h.post(&approve).await.expect_error(StatusCode::CONFLICT, "already decided");
    h.post(&deny).await.expect_error(StatusCode::CONFLICT, "already decided");
    h.post(&format!("/api/v1/approvals/{APPROVED_APPROVAL}/deny"))
        .await
        .expect_error(StatusCode::CONFLICT, "already decided");
    h.backend.with_state(|s| assert_eq!(s.decisions.len(), 1));
}

#[tokio::test]
async fn denying_records_the_reason() {
    let h = harness();
    let uri = format!("/api/v1/approvals/{PENDING_APPROVAL}/deny");
    let body = h.send_json(Method::POST, &uri, r#"{"reason": "too pricey"}"#).await.expect(StatusCode::OK).json();
    assert_eq!(body["state"]["state"], "denied");
    assert_eq!(body["state"]["reason"], "too pricey");
    assert_eq!(body["state"]["by"], "admin-token");
}

#[tokio::test]
async fn denying_without_a_body_gives_no_reason() {
    let h = harness();
    h.post(&format!("/api/v1/approvals/{PENDING_APPROVAL}/deny")).await.expect(StatusCode::OK);
    h.backend.with_state(|s| {
        assert_eq!(s.decisions[0].1, Verdict::Deny { reason: String::new() });
        let approval = s.approvals.iter().find(|a| a.id == PENDING_APPROVAL).unwrap();
        assert!(matches!(&approval.state, ApprovalState::Denied { reason, .. } if reason.is_empty()));
    });
}

#[tokio::test]
async fn malformed_deny_bodies_are_400_and_decide_nothing() {
    let h = harness();
    let uri = format!("/api/v1/approvals/{PENDING_APPROVAL}/deny");
    h.send_json(Method::POST, &uri, r#"{"reason": "#).await.expect_error(StatusCode::BAD_REQUEST, "not valid JSON");
    h.send_json(Method::POST, &uri, r#"{"reason": 5}"#).await.expect_error(StatusCode::BAD_REQUEST, "`reason`");
    h.send_json(Method::POST, &uri, r#"{"why": "no"}"#).await.expect_error(StatusCode::BAD_REQUEST, "unknown field");
    let plain = request(Method::POST, &uri).header(header::CONTENT_TYPE, "text/plain");
    h.send(plain.body(Body::from(r#"{"reason":"no"}"#)).unwrap())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "application/json");
    h.backend.with_state(|s| assert!(s.decisions.is_empty()));
}

// ---- spending ----

#[tokio::test]
async fn spending_report_passes_the_query_through() {
    let h = harness();
    let body =
        h.get("/api/v1/spending?group_by=payee&from=2026-11-01&to=1795521600").await.expect(StatusCode::OK).json();
    assert_eq!(body["group_by"], "payee");
    assert_eq!(body["from"], 1_793_491_200u64);
    assert_eq!(body["total_paid"], "1500000000");
    assert_eq!(body["total_received"], "250");
    assert_eq!(body["rows"][0]["key"], "device:fridge");
    h.backend.with_state(|s| {
        let query = &s.spending_queries[0];
        assert_eq!(query.group_by, GroupBy::Payee);
        assert_eq!(query.from, Some(Timestamp::from_civil(2026, 11, 1)));
        assert_eq!(query.to, Some(SAMPLE_NOW));
    });
}

#[tokio::test]
async fn spending_defaults_to_grouping_by_subject_over_all_time() {
    let h = harness();
    h.get("/api/v1/spending").await.expect(StatusCode::OK);
    h.get("/api/v1/spending?group_by=day&from=&to=").await.expect(StatusCode::OK);
    h.backend.with_state(|s| {
        assert_eq!(s.spending_queries[0].group_by, GroupBy::Subject);
        assert_eq!((s.spending_queries[0].from, s.spending_queries[0].to), (None, None));
        assert_eq!(s.spending_queries[1].group_by, GroupBy::Day);
        assert_eq!((s.spending_queries[1].from, s.spending_queries[1].to), (None, None));
    });
}

#[tokio::test]
async fn bad_spending_parameters_are_400_naming_the_parameter() {
    let h = harness();
    let cases = [
        ("group_by=month", "`group_by`"),
        ("from=yesterday", "`from`"),
        ("from=2026-13-01", "`from`"),
        ("from=2026-02-30", "`from`"),
        ("from=1969-12-31", "`from`"),
        ("from=2026-1-5", "`from`"),
        ("to=-5", "`to`"),
        ("to=1.5", "`to`"),
        ("to=99999999999999999999999", "`to`"),
        ("to=2026-11-01T00:00:00Z", "`to`"),
        ("from=2026-12-01&to=2026-11-01", "`from` must be before `to`"),
        ("from=2026-11-01&to=2026-11-01", "`from` must be before `to`"),
        ("groupby=day", "unknown field `groupby`"),
    ];
    for (query, needle) in cases {
        for path in ["/api/v1/spending", "/api/v1/spending.csv"] {
            let answer = h.get(&format!("{path}?{query}")).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}?{query}");
            assert!(answer.error().contains(needle), "{path}?{query}: {:?} lacks {needle:?}", answer.error());
        }
    }
    h.backend.with_state(|s| assert!(s.spending_queries.is_empty()));
}

#[tokio::test]
async fn spending_csv_has_decimal_columns_and_the_currency() {
    let h = harness();
    let answer = h.get("/api/v1/spending.csv?group_by=subject").await.expect(StatusCode::OK);
    assert_eq!(answer.header(header::CONTENT_TYPE), "text/csv; charset=utf-8");
    assert!(answer.header(header::CONTENT_DISPOSITION).contains("machinomy-spending-by-subject.csv"));
    assert_eq!(
        answer.text(),
        "key,paid,received,payments,currency\r\n\
         device:fridge,1.5,0,3,USD\r\n\
         plugin:solar,0,0.00000025,1,USD\r\n"
    );
}

#[tokio::test]
async fn spending_csv_quotes_keys_and_defuses_formulas() {
    let h = harness();
    h.backend.with_state(|s| {
        let row = |key: &str| machinomy_core::ReportRow {
            key: key.to_owned(),
            paid: Amount::from_base_units(1),
            received: Amount::ZERO,
            payments: 1,
        };
        s.report_rows = vec![
            row("Acme, Inc."),
            row("the \"best\" grocer"),
            row("=HYPERLINK(\"http://evil\",\"click\")"),
            row("+1"),
            row("-1"),
            row("@SUM(A1)"),
            row("line\nbreak"),
        ];
    });
    let text = h.get("/api/v1/spending.csv?group_by=payee").await.expect(StatusCode::OK).text();
    let lines: Vec<_> = text.split("\r\n").collect();
    assert_eq!(
        lines,
        [
            "key,paid,received,payments,currency",
            "\"Acme, Inc.\",0.000000001,0,1,USD",
            "\"the \"\"best\"\" grocer\",0.000000001,0,1,USD",
            "\"'=HYPERLINK(\"\"http://evil\"\",\"\"click\"\")\",0.000000001,0,1,USD",
            "'+1,0.000000001,0,1,USD",
            "'-1,0.000000001,0,1,USD",
            "'@SUM(A1),0.000000001,0,1,USD",
            "\"line\nbreak\",0.000000001,0,1,USD",
            "",
        ]
    );
}

#[tokio::test]
async fn an_empty_report_is_just_the_header() {
    let h = harness_with(MemoryBackend::empty());
    let text = h.get("/api/v1/spending.csv").await.expect(StatusCode::OK).text();
    assert_eq!(text, "key,paid,received,payments,currency\r\n");
}

// ---- channels by peer ----

#[tokio::test]
async fn channels_can_be_filtered_by_peer() {
    let h = harness();
    let ids = |body: Value| -> Vec<String> {
        body.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };
    let body = h.get(&format!("/api/v1/channels?peer={CONNECTED_PEER}")).await.expect(StatusCode::OK).json();
    assert_eq!(ids(body), [hex(OPEN_CHANNEL)]);
    let settled_peer = "03".repeat(32);
    let body = h.get(&format!("/api/v1/channels?peer={settled_peer}")).await.expect(StatusCode::OK).json();
    assert_eq!(ids(body), [hex(SETTLED_CHANNEL)]);
    // Upper-case hex names the same key.
    let upper = settled_peer.to_ascii_uppercase();
    let body = h.get(&format!("/api/v1/channels?peer={upper}")).await.expect(StatusCode::OK).json();
    assert_eq!(ids(body), [hex(SETTLED_CHANNEL)]);
    // A known peer without channels, and an empty filter (no filter, like the other parameters).
    let body = h.get(&format!("/api/v1/channels?peer={OFFLINE_PEER}")).await.expect(StatusCode::OK).json();
    assert_eq!(body, json!([]));
    let body = h.get("/api/v1/channels?peer=").await.expect(StatusCode::OK).json();
    assert_eq!(ids(body), [hex(OPEN_CHANNEL), hex(SETTLED_CHANNEL)]);
}

#[tokio::test]
async fn a_bad_peer_filter_is_400_naming_peer() {
    let h = harness();
    let short = "ab".repeat(31);
    let long = "ab".repeat(33);
    let not_hex = "zz".repeat(32);
    for bad in ["fridge", short.as_str(), long.as_str(), not_hex.as_str(), "12D3KooWSamplePeerConnected"] {
        let error =
            h.get(&format!("/api/v1/channels?peer={bad}")).await.expect_error(StatusCode::BAD_REQUEST, "`peer`");
        assert!(error.contains("64 hex") && error.contains(bad), "{error}");
    }
    let uri = format!("/api/v1/channels?peer={CONNECTED_PEER}&peer={OFFLINE_PEER}");
    h.get(&uri).await.expect_error(StatusCode::BAD_REQUEST, "peer");
    h.get("/api/v1/channels?counterparty=ab")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unknown field `counterparty`");
}

// ---- peers and services ----

#[tokio::test]
async fn peers_are_listed() {
    let h = harness();
    let body = h.get("/api/v1/peers").await.expect(StatusCode::OK).json();
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["key"], CONNECTED_PEER.to_hex());
    assert_eq!(list[0]["connected"], true);
    assert_eq!(list[0]["addrs"], json!(["/ip4/192.168.1.20/tcp/4001"]));
    assert_eq!(list[1]["key"], OFFLINE_PEER.to_hex());
    assert_eq!(list[1]["connected"], false);
    assert!(list[1]["peer_id"].is_string());
}

#[tokio::test]
async fn no_peers_is_an_empty_list() {
    let h = harness_with(MemoryBackend::empty());
    assert_eq!(h.get("/api/v1/peers").await.expect(StatusCode::OK).json(), json!([]));
    assert_eq!(h.get("/api/v1/services").await.expect(StatusCode::OK).json(), json!({"own": [], "seen": []}));
}

#[tokio::test]
async fn services_list_own_and_seen_offers_with_prices_as_strings() {
    let h = harness();
    let body = h.get("/api/v1/services").await.expect(StatusCode::OK).json();
    assert_eq!(body["own"].as_array().unwrap().len(), 1);
    assert_eq!(body["own"][0]["service"], OWN_SERVICE);
    assert_eq!(body["own"][0]["seller"], "01".repeat(32));
    let seen = body["seen"].as_array().unwrap();
    assert_eq!(seen.len(), 3);
    let weather = seen.iter().find(|o| o["service"] == SAMPLE_SERVICE).unwrap();
    assert_eq!(weather["price"], SAMPLE_SERVICE_PRICE.to_string());
    assert_eq!(weather["currency"], "USD");
    assert_eq!(weather["seller"], CONNECTED_PEER.to_hex());
    assert_eq!(weather["expires_at"], SAMPLE_NOW.secs() + 600);
}

fn call_uri(service: &str) -> String {
    format!("/api/v1/services/{service}/call")
}

#[tokio::test]
async fn calling_a_service_answers_its_result_and_receipt() {
    let h = harness();
    let request = json!({"subject": "device:fridge", "body": "tomorrow in Berlin?"});
    let body =
        h.send_json(Method::POST, &call_uri(SAMPLE_SERVICE), request.to_string()).await.expect(StatusCode::OK).json();
    assert_eq!(body["service"], SAMPLE_SERVICE);
    assert_eq!(body["seller"], CONNECTED_PEER.to_hex());
    assert_eq!(body["price"], SAMPLE_SERVICE_PRICE.to_string());
    assert_eq!(body["currency"], json!({"code": "USD", "decimals": 9}));
    assert_eq!(body["body"], SAMPLE_SERVICE_ANSWER);
    assert_eq!(body["receipt"]["channel"], hex(OPEN_CHANNEL));
    assert_eq!(body["receipt"]["increment"], SAMPLE_SERVICE_PRICE.to_string());
    assert_eq!(body["receipt"]["signature"].as_str().unwrap().len(), 128);
    h.backend.with_state(|s| {
        let expected =
            CallBody { subject: Subject::Device("fridge".to_owned()), body: "tomorrow in Berlin?".to_owned() };
        assert_eq!(s.service_calls, [(SAMPLE_SERVICE.to_owned(), expected)]);
    });
}

#[tokio::test]
async fn a_call_without_a_body_text_sends_an_empty_request() {
    let h = harness();
    let request = json!({"subject": "plugin:weather-widget"});
    h.send_json(Method::POST, &call_uri(SAMPLE_SERVICE), request.to_string()).await.expect(StatusCode::OK);
    h.backend.with_state(|s| {
        let (_, call) = &s.service_calls[0];
        assert_eq!(call.subject, Subject::Plugin("weather-widget".to_owned()));
        assert_eq!(call.body, "");
    });
}

#[tokio::test]
async fn malformed_call_bodies_are_400_and_call_nothing() {
    let h = harness();
    let uri = call_uri(SAMPLE_SERVICE);
    let cases = [
        (r#"{"subject": "device:fridge", "#, "not valid JSON"),
        ("not json", "not valid JSON"),
        (r#"{"subject": "device:fridge"} {}"#, "not valid JSON"),
        (r#"{"body": "hi"}"#, "missing field `subject`"),
        (r#"{"subject": "fridge", "body": "hi"}"#, "`subject`"),
        (r#"{"subject": "device:", "body": "hi"}"#, "`subject`"),
        (r#"{"subject": "device:fridge", "body": 5}"#, "`body`"),
        (r#"{"subject": "device:fridge", "body": "hi", "price": "1"}"#, "unknown field `price`"),
        (r#"{"subject": "device:fridge", "service": "other"}"#, "unknown field `service`"),
        ("[]", "invalid request body"),
    ];
    for (body, needle) in cases {
        let answer = h.send_json(Method::POST, &uri, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(answer.error().contains(needle), "{body}: {:?} lacks {needle:?}", answer.error());
    }
    h.send_json(Method::POST, &uri, "").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    h.post(&uri).await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    let plain = request(Method::POST, &uri).header(header::CONTENT_TYPE, "text/plain");
    h.send(plain.body(Body::from(r#"{"subject":"device:fridge"}"#)).unwrap())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "application/json");
    h.backend.with_state(|s| assert!(s.service_calls.is_empty()));
}

#[tokio::test]
async fn an_oversized_call_is_413_and_calls_nothing() {
    let h = harness();
    let body = json!({"subject": "device:fridge", "body": "x".repeat(BODY_LIMIT)});
    h.send_json(Method::POST, &call_uri(SAMPLE_SERVICE), body.to_string())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "64 KiB");
    h.backend.with_state(|s| assert!(s.service_calls.is_empty()));
}

#[tokio::test]
async fn bad_service_names_are_400_and_call_nothing() {
    let h = harness();
    let body = json!({"subject": "device:fridge"}).to_string();
    let too_long = "a".repeat(65);
    let cases = [
        (too_long.as_str(), too_long.as_str()),
        ("two%20words", "two words"),
        ("caf%C3%A9", "café"),
        ("a%2Fb", "a/b"),
        ("semi;colon", "semi;colon"),
        ("star*", "star*"),
        ("tab%09", "tab\\t"),
        ("", "not \"\""),
    ];
    for (in_path, shown) in cases {
        let answer = h.send_json(Method::POST, &call_uri(in_path), body.clone()).await;
        let error = answer.expect_error(StatusCode::BAD_REQUEST, "service name");
        assert!(error.contains("1 to 64 characters") && error.contains(shown), "{in_path}: {error}");
    }
    // Not UTF-8 once percent-decoded.
    h.send_json(Method::POST, &call_uri("%FF"), body.clone()).await.expect_error(StatusCode::BAD_REQUEST, "bad path");
    h.backend.with_state(|s| assert!(s.service_calls.is_empty()));
    // The longest name and every allowed character pass (and reach the backend, which knows neither).
    let longest = "b".repeat(64);
    for name in [longest.as_str(), "Az09-_.x"] {
        h.send_json(Method::POST, &call_uri(name), body.clone()).await.expect_error(StatusCode::NOT_FOUND, name);
    }
    h.backend.with_state(|s| assert_eq!(s.service_calls.len(), 2));
}

#[tokio::test]
async fn calling_an_unknown_service_is_404() {
    let h = harness();
    let body = json!({"subject": "device:fridge", "body": "hi"}).to_string();
    h.send_json(Method::POST, &call_uri("no-such-service"), body)
        .await
        .expect_error(StatusCode::NOT_FOUND, "no-such-service");
    h.backend.with_state(|s| assert_eq!(s.service_calls[0].0, "no-such-service"));
}

#[tokio::test]
async fn a_call_waiting_for_approval_is_409_naming_the_request() {
    let h = harness();
    let body = json!({"subject": "device:fridge", "body": "hi"}).to_string();
    let error = h
        .send_json(Method::POST, &call_uri(EXPENSIVE_SERVICE), body)
        .await
        .expect_error(StatusCode::CONFLICT, "approval");
    assert_eq!(error, format!("spend request #{PENDING_APPROVAL} waits for the owner's approval"));
}

#[tokio::test]
async fn the_call_route_only_accepts_post() {
    let h = harness();
    let answer = h.get(&call_uri(SAMPLE_SERVICE)).await;
    assert_eq!(answer.header(header::ALLOW), "POST");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "GET");
    h.send(request(Method::POST, "/api/v1/services").body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
    h.send(request(Method::POST, "/api/v1/peers").body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
}

#[tokio::test]
async fn peer_and_service_backend_failures_map_to_statuses() {
    let h = harness();
    h.backend.fail_next(BackendError::Unavailable("the peer network is not running".into()));
    h.get("/api/v1/peers").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "peer network");
    h.backend.fail_next(BackendError::Unavailable("the peer network is not running".into()));
    h.get("/api/v1/services").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "peer network");
    h.backend.fail_next(BackendError::Invalid("device:fridge has no budget".into()));
    let body = json!({"subject": "device:fridge"}).to_string();
    h.send_json(Method::POST, &call_uri(SAMPLE_SERVICE), body).await.expect_error(StatusCode::BAD_REQUEST, "no budget");
    h.backend.fail_next(BackendError::Internal("secret detail".into()));
    let error = h.get("/api/v1/channels").await.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!error.contains("secret"));
}

// ---- devices ----

fn device_uri(id: &str) -> String {
    format!("/api/v1/devices/{id}")
}

fn command_uri(id: &str, name: &str) -> String {
    format!("/api/v1/devices/{id}/commands/{name}")
}

/// Ids that are not device ids, as they go in a path, and as the error quotes them.
fn bad_device_ids() -> Vec<(String, String)> {
    let long = "a".repeat(200);
    vec![
        ("a+b".to_owned(), "a+b".to_owned()),
        ("a%2Fb".to_owned(), "a/b".to_owned()),
        (long.clone(), long),
        ("Fridge".to_owned(), "Fridge".to_owned()),
        ("two%20words".to_owned(), "two words".to_owned()),
        ("a.b".to_owned(), "a.b".to_owned()),
        ("%C3%A9".to_owned(), "é".to_owned()),
    ]
}

#[tokio::test]
async fn devices_are_listed_in_id_order_with_their_state() {
    let h = harness();
    let body = h.get("/api/v1/devices").await.expect(StatusCode::OK).json();
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let fridge = &list[0];
    assert_eq!(fridge["id"], SAMPLE_DEVICE);
    assert_eq!(fridge["name"], "Kitchen fridge");
    assert_eq!(fridge["kind"], "mqtt");
    assert_eq!(fridge["public_key"], SAMPLE_DEVICE_KEY.to_hex());
    assert_eq!(fridge["online"], true);
    assert_eq!(fridge["last_seen"], SAMPLE_NOW.secs() - 30);
    assert_eq!(fridge["state"], json!({"temperature_c": 4.5, "door": "closed"}));
    assert!(fridge.get("address").is_none() && fridge.get("profile").is_none());
    let thermometer = &list[1];
    assert_eq!(thermometer["id"], SAMPLE_BLE_DEVICE);
    assert_eq!(thermometer["kind"], "ble");
    assert_eq!(thermometer["address"], "A4:C1:38:00:11:22");
    assert_eq!(thermometer["public_key"], Value::Null);
    assert_eq!(thermometer["last_seen"], Value::Null);
    assert_eq!(thermometer["state"], json!({}));
}

#[tokio::test]
async fn no_devices_is_an_empty_list() {
    let h = harness_with(MemoryBackend::empty());
    assert_eq!(h.get("/api/v1/devices").await.expect(StatusCode::OK).json(), json!([]));
}

#[tokio::test]
async fn one_device_is_shown_by_its_id() {
    let h = harness();
    let body = h.get(&device_uri(SAMPLE_BLE_DEVICE)).await.expect(StatusCode::OK).json();
    assert_eq!(body["name"], "Balcony thermometer");
    assert_eq!(body["profile"], "xiaomi-lywsd03mmc");
    assert_eq!(body["online"], false);
}

#[tokio::test]
async fn an_unknown_device_is_404_everywhere() {
    let h = harness();
    h.get(&device_uri("toaster")).await.expect_error(StatusCode::NOT_FOUND, "toaster");
    h.send(request(Method::DELETE, &device_uri("toaster")).body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::NOT_FOUND, "toaster");
    h.send_json(Method::POST, &command_uri("toaster", "on"), "{}").await.expect_error(StatusCode::NOT_FOUND, "toaster");
    assert!(h.backend.device_commands().is_empty());
}

#[tokio::test]
async fn bad_device_ids_are_400_everywhere_and_reach_nothing() {
    let h = harness();
    for (in_path, shown) in bad_device_ids() {
        let error = h.get(&device_uri(&in_path)).await.expect_error(StatusCode::BAD_REQUEST, "device id");
        assert!(error.contains("1 to 64 characters of a-z, 0-9") && error.contains(&shown), "{in_path}: {error}");
        h.send(request(Method::DELETE, &device_uri(&in_path)).body(Body::empty()).unwrap())
            .await
            .expect_error(StatusCode::BAD_REQUEST, &shown);
        h.send_json(Method::POST, &command_uri(&in_path, "on"), "{}")
            .await
            .expect_error(StatusCode::BAD_REQUEST, &shown);
    }
    // Not UTF-8 once percent-decoded.
    h.get(&device_uri("%FF")).await.expect_error(StatusCode::BAD_REQUEST, "bad path");
    // An unescaped slash is another path: no such route.
    h.get("/api/v1/devices/a/b").await.expect_error(StatusCode::NOT_FOUND, "/api/v1/devices/a/b");
    h.backend.with_state(|s| {
        assert_eq!(s.devices.len(), 2);
        assert!(s.device_commands.is_empty());
    });
    // The longest id and every allowed character pass (and reach the backend, which knows neither).
    let longest = "b".repeat(64);
    for id in [longest.as_str(), "az09_-"] {
        h.get(&device_uri(id)).await.expect_error(StatusCode::NOT_FOUND, id);
    }
}

#[tokio::test]
async fn pairing_an_mqtt_device_without_a_key_answers_credentials_and_a_secret_key_once() {
    let h = harness();
    h.backend.with_state(|s| s.pairing_next_steps = vec!["add the user to your broker".to_owned()]);
    let answer = h.send_json(Method::POST, "/api/v1/devices", r#"{"id": "washer"}"#).await.expect(StatusCode::CREATED);
    assert!(answer.header(header::CONTENT_TYPE).starts_with("application/json"));
    let body = answer.json();
    assert_eq!(body["device"]["id"], "washer");
    assert_eq!(body["device"]["name"], "washer", "the name defaults to the id");
    assert_eq!(body["device"]["kind"], "mqtt");
    assert_eq!(body["device"]["online"], false);
    assert_eq!(body["device"]["added_at"], SAMPLE_NOW.secs());
    assert_eq!(body["credentials"]["broker"], SAMPLE_BROKER);
    assert_eq!(body["credentials"]["username"], "washer");
    let password = body["credentials"]["password"].as_str().unwrap();
    assert!(password.len() >= 16, "{password}");
    // The secret key is the one behind the device's public key.
    let secret = body["secret_key"].as_str().unwrap();
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap()).collect();
    let signing = machinomy_core::SigningKey::from_bytes(&bytes.try_into().unwrap());
    let public = machinomy_core::PublicKey::from(signing.verifying_key());
    assert_eq!(body["device"]["public_key"], public.to_hex());
    assert_eq!(body["next_steps"], json!(["add the user to your broker"]));
    // Listed from now on, without its credentials.
    let shown = h.get(&device_uri("washer")).await.expect(StatusCode::OK).json();
    assert_eq!(shown, body["device"]);
    assert!(!String::from_utf8_lossy(&h.get("/api/v1/devices").await.body).contains(password));
}

#[tokio::test]
async fn pairing_with_a_key_and_a_name_keeps_them_and_makes_no_secret() {
    let h = harness();
    let key = "ab".repeat(32);
    let request = json!({"id": "washer", "name": "Washing machine", "public_key": key});
    let body =
        h.send_json(Method::POST, "/api/v1/devices", request.to_string()).await.expect(StatusCode::CREATED).json();
    assert_eq!(body["device"]["name"], "Washing machine");
    assert_eq!(body["device"]["public_key"], key);
    assert!(body.get("secret_key").is_none(), "{body}");
    assert!(body.get("next_steps").is_none(), "{body}");
    assert_eq!(body["credentials"]["username"], "washer");
}

#[tokio::test]
async fn pairing_a_ble_device_records_its_address_and_profile_without_broker_credentials() {
    let h = harness();
    let request = json!({"id": "scale", "ble": {"address": "C8:47:8C:00:00:01", "profile": "mi-scale"}});
    let body =
        h.send_json(Method::POST, "/api/v1/devices", request.to_string()).await.expect(StatusCode::CREATED).json();
    assert_eq!(body["device"]["kind"], "ble");
    assert_eq!(body["device"]["address"], "C8:47:8C:00:00:01");
    assert_eq!(body["device"]["profile"], "mi-scale");
    assert!(body.get("credentials").is_none(), "{body}");
    assert_eq!(body["secret_key"].as_str().unwrap().len(), 64);
    let ids: Vec<_> = h.backend.with_state(|s| s.devices.iter().map(|d| d.id.to_string()).collect());
    assert_eq!(ids, ["fridge", "scale", "thermometer"]);
}

#[tokio::test]
async fn pairing_a_taken_id_is_409_and_changes_nothing() {
    let h = harness();
    let request = json!({"id": SAMPLE_DEVICE, "name": "Another fridge"});
    h.send_json(Method::POST, "/api/v1/devices", request.to_string())
        .await
        .expect_error(StatusCode::CONFLICT, "already paired");
    h.backend.with_state(|s| {
        assert_eq!(s.devices.len(), 2);
        assert_eq!(s.devices[0].name, "Kitchen fridge");
    });
}

#[tokio::test]
async fn malformed_pairing_bodies_are_400_and_pair_nothing() {
    let h = harness();
    let cases = [
        (r#"{"id": "washer", "#, "not valid JSON"),
        ("not json", "not valid JSON"),
        (r#"{"id": "washer"} {}"#, "not valid JSON"),
        (r#"{"name": "Washer"}"#, "missing field `id`"),
        (r#"{"id": "Washer"}"#, "`id`"),
        (r#"{"id": "a/b"}"#, "device id \"a/b\""),
        (r#"{"id": "a+b"}"#, "must be 1 to 64 characters"),
        (r#"{"id": ""}"#, "`id`"),
        (r#"{"id": 5}"#, "`id`"),
        (r#"{"id": "washer", "public_key": "abc"}"#, "`public_key`"),
        (r#"{"id": "washer", "name": 5}"#, "`name`"),
        (r#"{"id": "washer", "password": "hunter2"}"#, "unknown field `password`"),
        (r#"{"id": "washer", "ble": {"address": "x"}}"#, "missing field `profile`"),
        (r#"{"id": "washer", "ble": {"address": "x", "profile": "y", "pin": 1}}"#, "unknown field `pin`"),
        ("[]", "invalid request body"),
    ];
    for (body, needle) in cases {
        let answer = h.send_json(Method::POST, "/api/v1/devices", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(answer.error().contains(needle), "{body}: {:?} lacks {needle:?}", answer.error());
    }
    h.send_json(Method::POST, "/api/v1/devices", "").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    h.post("/api/v1/devices").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    let plain = request(Method::POST, "/api/v1/devices").header(header::CONTENT_TYPE, "text/plain");
    h.send(plain.body(Body::from(r#"{"id":"washer"}"#)).unwrap())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "application/json");
    let huge = json!({"id": "washer", "name": "x".repeat(BODY_LIMIT)});
    h.send_json(Method::POST, "/api/v1/devices", huge.to_string())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "64 KiB");
    h.backend.with_state(|s| {
        assert_eq!(s.devices.len(), 2);
        assert_eq!(s.pairings, 0);
    });
}

#[tokio::test]
async fn removing_a_device_answers_it_and_it_is_gone() {
    let h = harness();
    let uri = device_uri(SAMPLE_DEVICE);
    let body = h.send(request(Method::DELETE, &uri).body(Body::empty()).unwrap()).await.expect(StatusCode::OK).json();
    assert_eq!(body["id"], SAMPLE_DEVICE);
    assert_eq!(body["name"], "Kitchen fridge");
    h.get(&uri).await.expect_error(StatusCode::NOT_FOUND, SAMPLE_DEVICE);
    h.send(request(Method::DELETE, &uri).body(Body::empty()).unwrap())
        .await
        .expect_error(StatusCode::NOT_FOUND, SAMPLE_DEVICE);
    let list = h.get("/api/v1/devices").await.expect(StatusCode::OK).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The id is free again.
    h.send_json(Method::POST, "/api/v1/devices", json!({"id": SAMPLE_DEVICE}).to_string())
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn a_command_is_accepted_and_its_payload_passed_on() {
    let h = harness();
    let payload = json!({"target_c": 3, "mode": "eco"});
    let answer = h.send_json(Method::POST, &command_uri(SAMPLE_DEVICE, "set_temp"), payload.to_string()).await;
    assert_eq!(answer.expect(StatusCode::ACCEPTED).json(), json!({"sent": true}));
    // Any JSON value is a payload.
    for other in ["{}", "null", "42", "\"on\"", "[1, 2]", "true"] {
        h.send_json(Method::POST, &command_uri(SAMPLE_BLE_DEVICE, "light-1"), other).await.expect(StatusCode::ACCEPTED);
    }
    let commands = h.backend.device_commands();
    assert_eq!(commands.len(), 7);
    let (device, name, sent) = &commands[0];
    assert_eq!((device.as_str(), name.as_str(), sent), (SAMPLE_DEVICE, "set_temp", &payload));
    let rest: Vec<Value> = commands[1..].iter().map(|(_, _, p)| p.clone()).collect();
    assert_eq!(rest, [json!({}), Value::Null, json!(42), json!("on"), json!([1, 2]), json!(true)]);
    assert!(commands[1..].iter().all(|(d, n, _)| d.as_str() == SAMPLE_BLE_DEVICE && n == "light-1"));
}

#[tokio::test]
async fn bad_command_names_are_400_and_send_nothing() {
    let h = harness();
    let too_long = "a".repeat(65);
    let cases = [
        (too_long.as_str(), too_long.as_str()),
        ("Defrost", "Defrost"),
        ("a.b", "a.b"),
        ("a%2Fb", "a/b"),
        ("a+b", "a+b"),
        ("%23", "#"),
        ("two%20words", "two words"),
    ];
    for (in_path, shown) in cases {
        let error = h
            .send_json(Method::POST, &command_uri(SAMPLE_DEVICE, in_path), "{}")
            .await
            .expect_error(StatusCode::BAD_REQUEST, "command name");
        assert!(error.contains("1 to 64 characters") && error.contains(shown), "{in_path}: {error}");
    }
    // An empty name is no route at all.
    h.send_json(Method::POST, &command_uri(SAMPLE_DEVICE, ""), "{}").await.expect_error(StatusCode::NOT_FOUND, "");
    assert!(h.backend.device_commands().is_empty());
    let longest = "c".repeat(64);
    h.send_json(Method::POST, &command_uri(SAMPLE_DEVICE, &longest), "{}").await.expect(StatusCode::ACCEPTED);
    assert_eq!(h.backend.device_commands().len(), 1);
}

#[tokio::test]
async fn malformed_command_payloads_are_400_and_send_nothing() {
    let h = harness();
    let uri = command_uri(SAMPLE_DEVICE, "on");
    h.send_json(Method::POST, &uri, r#"{"a": "#).await.expect_error(StatusCode::BAD_REQUEST, "not valid JSON");
    h.send_json(Method::POST, &uri, "{} {}").await.expect_error(StatusCode::BAD_REQUEST, "not valid JSON");
    h.send_json(Method::POST, &uri, "on").await.expect_error(StatusCode::BAD_REQUEST, "not valid JSON");
    h.send_json(Method::POST, &uri, "").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    h.post(&uri).await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    let plain = request(Method::POST, &uri).header(header::CONTENT_TYPE, "text/plain");
    h.send(plain.body(Body::from("{}")).unwrap()).await.expect_error(StatusCode::BAD_REQUEST, "application/json");
    let huge = json!({"blob": "x".repeat(BODY_LIMIT)});
    h.send_json(Method::POST, &uri, huge.to_string()).await.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "64 KiB");
    assert!(h.backend.device_commands().is_empty());
}

#[tokio::test]
async fn device_routes_allow_only_their_methods() {
    let h = harness();
    let answer = h.send(request(Method::PUT, "/api/v1/devices").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.header(header::ALLOW), "GET,HEAD,POST");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "PUT");
    let answer = h.post(&device_uri(SAMPLE_DEVICE)).await;
    assert_eq!(answer.header(header::ALLOW), "GET,HEAD,DELETE");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
    let answer = h.get(&command_uri(SAMPLE_DEVICE, "on")).await;
    assert_eq!(answer.header(header::ALLOW), "POST");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "GET");
    h.backend.with_state(|s| assert_eq!(s.devices.len(), 2));
}

#[tokio::test]
async fn device_backend_failures_map_to_statuses() {
    let h = harness();
    h.backend.fail_next(BackendError::Unavailable("the MQTT bridge is not running".into()));
    h.get("/api/v1/devices").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "MQTT bridge");
    h.backend.fail_next(BackendError::Unavailable("the device is offline".into()));
    h.send_json(Method::POST, &command_uri(SAMPLE_DEVICE, "on"), "{}")
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "offline");
    h.backend.fail_next(BackendError::Invalid("unknown BLE profile \"nope\"".into()));
    let request = json!({"id": "scale", "ble": {"address": "x", "profile": "nope"}});
    h.send_json(Method::POST, "/api/v1/devices", request.to_string())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "BLE profile");
    h.backend.fail_next(BackendError::Internal("sled: io error".into()));
    let error = h.get(&device_uri(SAMPLE_DEVICE)).await.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!error.contains("sled"));
    assert!(h.backend.device_commands().is_empty());
}

// ---- plugins ----

fn plugin_uri(name: &str) -> String {
    format!("/api/v1/plugins/{name}")
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A manifest of another plugin, granted nothing.
fn plain_manifest(name: &str, version: &str) -> String {
    format!("name = \"{name}\"\nversion = \"{version}\"\ndescription = \"a test plugin\"\n\n[config]\nlevel = 1\n")
}

/// The sample plugin's manifest at another version, with `grants` lines added to `[grants]`.
fn sample_manifest(version: &str, grants: &str) -> String {
    SAMPLE_PLUGIN_MANIFEST
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
        .replace("[grants]\n", &format!("[grants]\n{grants}"))
}

fn install_body(manifest: &str, wasm: &[u8]) -> String {
    json!({"manifest": manifest, "wasm": base64(wasm)}).to_string()
}

fn upgrade_body(manifest: &str) -> String {
    json!({"manifest": manifest, "wasm": base64(EMPTY_MODULE)}).to_string()
}

impl Harness {
    async fn delete(&self, uri: &str) -> Answer {
        self.send(request(Method::DELETE, uri).body(Body::empty()).unwrap()).await
    }

    fn plugin_version(&self, name: &str) -> String {
        self.backend.with_state(|s| s.plugins.iter().find(|p| p.view.name == name).unwrap().view.version.clone())
    }
}

#[tokio::test]
async fn plugins_are_listed_in_name_order_with_grants_limits_and_counters() {
    let h = harness();
    let body = h.get("/api/v1/plugins").await.expect(StatusCode::OK).json();
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let flaky = &list[0];
    assert_eq!(flaky["name"], QUARANTINED_PLUGIN);
    assert_eq!(flaky["state"], "quarantined");
    assert_eq!(flaky["quarantine_reason"], QUARANTINE_REASON);
    assert_eq!(flaky["running"], false);
    assert_eq!(flaky["faults"], 3);
    assert_eq!(flaky["last_fault"], "out of fuel in on_message");
    assert_eq!(flaky["grants"]["subscribe"], json!(["machinomy/+/state"]));
    assert_eq!(flaky["grants"]["budget"], Value::Null);
    let weather = &list[1];
    assert_eq!(weather["name"], SAMPLE_PLUGIN);
    assert_eq!(weather["version"], "0.1.0");
    assert_eq!(weather["description"], "Buys a forecast and pauses irrigation when rain is coming.");
    assert_eq!(weather["state"], "enabled");
    assert_eq!(weather["quarantine_reason"], Value::Null);
    assert_eq!(weather["running"], true);
    assert_eq!(
        weather["grants"],
        json!({
            "subscribe": [],
            "publish": ["machinomy/irrigation/cmd/#"],
            "devices": [],
            "pay": false,
            "invoice": false,
            "call": [{"service": "weather.forecast", "max_price": "2000"}],
            "sell": [],
            "budget": {"period": "day", "limit": "100000", "auto_approve": "2000"},
        })
    );
    assert_eq!(weather["limits"], json!({"memory_mib": 16, "fuel_per_event": 50_000_000, "kv_bytes": 1_048_576}));
    // The owner's override on top of the manifest's config.
    assert_eq!(weather["config"], json!({"every_secs": 600, "irrigation": "irrigation"}));
    assert_eq!(weather["pending_upgrade"], Value::Null);
    assert_eq!(weather["faults"], 0);
    assert_eq!(weather["last_fault"], Value::Null);
    assert_eq!(weather["refused"], 1);
    assert_eq!(weather["events"], 12);
    assert_eq!(weather["subscriptions"], json!([]));
    assert_eq!(weather["timers"], 1);
    assert_eq!(weather["storage_used"], 120);
    let at_ms = (SAMPLE_NOW.secs() - 60) * 1000;
    assert_eq!(weather["recent"][0], json!({"at_ms": at_ms, "level": "info", "text": "rain 70%: irrigation paused"}));
    assert_eq!(weather["installed_at"], SAMPLE_NOW.secs() - 2 * 86_400);
    assert_eq!(weather["updated_at"], SAMPLE_NOW.secs() - 2 * 86_400);
}

#[tokio::test]
async fn no_plugins_is_an_empty_list() {
    let h = harness_with(MemoryBackend::empty());
    assert_eq!(h.get("/api/v1/plugins").await.expect(StatusCode::OK).json(), json!([]));
}

#[tokio::test]
async fn one_plugin_is_shown_by_its_name() {
    let h = harness();
    let body = h.get(&plugin_uri(SAMPLE_PLUGIN)).await.expect(StatusCode::OK).json();
    let list = h.get("/api/v1/plugins").await.expect(StatusCode::OK).json();
    assert_eq!(body, list[1]);
}

#[tokio::test]
async fn an_unknown_plugin_is_404_everywhere() {
    let h = harness();
    let uri = plugin_uri("nope");
    h.get(&uri).await.expect_error(StatusCode::NOT_FOUND, "no plugin \"nope\" is installed");
    h.delete(&uri).await.expect_error(StatusCode::NOT_FOUND, "nope");
    h.send_json(Method::PUT, &uri, upgrade_body(&plain_manifest("nope", "2.0.0")))
        .await
        .expect_error(StatusCode::NOT_FOUND, "nope");
    for action in ["approve", "enable", "disable"] {
        h.post(&format!("{uri}/{action}")).await.expect_error(StatusCode::NOT_FOUND, "nope");
    }
    h.backend.with_state(|s| assert_eq!(s.plugins.len(), 2));
}

#[tokio::test]
async fn bad_plugin_names_are_400_everywhere_and_reach_nothing() {
    let h = harness();
    let long = "a".repeat(65);
    for (in_path, shown) in [("Weather", "Weather"), ("a.b", "a.b"), ("a%2Fb", "a/b"), (long.as_str(), long.as_str())] {
        let uri = plugin_uri(in_path);
        let error = h.get(&uri).await.expect_error(StatusCode::BAD_REQUEST, "plugin name");
        assert!(error.contains("1 to 64 characters of a-z, 0-9") && error.contains(shown), "{in_path}: {error}");
        h.delete(&uri).await.expect_error(StatusCode::BAD_REQUEST, shown);
        h.send_json(Method::PUT, &uri, upgrade_body(SAMPLE_PLUGIN_MANIFEST))
            .await
            .expect_error(StatusCode::BAD_REQUEST, shown);
        for action in ["approve", "enable", "disable"] {
            h.post(&format!("{uri}/{action}")).await.expect_error(StatusCode::BAD_REQUEST, shown);
        }
    }
    h.backend.with_state(|s| {
        assert_eq!(s.plugins.len(), 2);
        assert!(s.plugins.iter().all(|p| p.pending.is_none()));
    });
}

#[tokio::test]
async fn installing_a_plugin_answers_201_ready_with_its_view_and_config_overrides() {
    let h = harness();
    let module = b"\0asm\x01\0\0\0 and some code";
    let body = json!({
        "manifest": plain_manifest("lights", "1.2.0"),
        "wasm": base64(module),
        "config": {"level": 3, "room": "hall"},
    });
    let answer = h.send_json(Method::POST, "/api/v1/plugins", body.to_string()).await.expect(StatusCode::CREATED);
    assert!(answer.header(header::CONTENT_TYPE).starts_with("application/json"));
    let body = answer.json();
    assert_eq!(body["status"], "ready");
    let plugin = &body["plugin"];
    assert_eq!(plugin["name"], "lights");
    assert_eq!(plugin["version"], "1.2.0");
    assert_eq!(plugin["state"], "enabled");
    assert_eq!(plugin["running"], true);
    assert_eq!(plugin["config"], json!({"level": 3, "room": "hall"}));
    assert_eq!(plugin["grants"]["budget"], Value::Null);
    assert_eq!(plugin["installed_at"], SAMPLE_NOW.secs());
    // The module arrived decoded; the plugin is listed from now on.
    h.backend.with_state(|s| assert_eq!(s.plugins.iter().find(|p| p.view.name == "lights").unwrap().wasm, module));
    let names: Vec<String> = h.backend.with_state(|s| s.plugins.iter().map(|p| p.view.name.clone()).collect());
    assert_eq!(names, [QUARANTINED_PLUGIN, "lights", SAMPLE_PLUGIN]);
    assert_eq!(h.get(&plugin_uri("lights")).await.expect(StatusCode::OK).json(), body["plugin"]);
}

#[tokio::test]
async fn installing_without_config_keeps_the_manifests() {
    let h = harness();
    let body = install_body(&plain_manifest("lights", "1.0.0"), EMPTY_MODULE);
    let answer = h.send_json(Method::POST, "/api/v1/plugins", body).await.expect(StatusCode::CREATED).json();
    assert_eq!(answer["plugin"]["config"], json!({"level": 1}));
}

#[tokio::test]
async fn installing_a_taken_name_is_409_and_changes_nothing() {
    let h = harness();
    let body = install_body(&sample_manifest("9.9.9", ""), EMPTY_MODULE);
    h.send_json(Method::POST, "/api/v1/plugins", body)
        .await
        .expect_error(StatusCode::CONFLICT, "already installed; upgrade it instead");
    assert_eq!(h.plugin_version(SAMPLE_PLUGIN), "0.1.0");
}

#[tokio::test]
async fn malformed_install_bodies_are_400_and_install_nothing() {
    let h = harness();
    let manifest = plain_manifest("lights", "1.0.0");
    let wasm = base64(EMPTY_MODULE);
    let cases = [
        (json!({"wasm": wasm}).to_string(), "missing field `manifest`"),
        (json!({"manifest": manifest}).to_string(), "missing field `wasm`"),
        (json!({"manifest": manifest, "wasm": "not base64!"}).to_string(), "`wasm` is not base64"),
        (json!({"manifest": manifest, "wasm": "AGFzbQEAAAA"}).to_string(), "`wasm` is not base64"),
        (json!({"manifest": manifest, "wasm": 5}).to_string(), "`wasm`"),
        (json!({"manifest": manifest, "wasm": wasm, "config": [1]}).to_string(), "`config`"),
        (json!({"manifest": manifest, "wasm": wasm, "name": "x"}).to_string(), "unknown field `name`"),
        (r#"{"manifest": "#.to_owned(), "not valid JSON"),
        ("[]".to_owned(), "invalid request body"),
        // Well-formed requests the backend refuses.
        (install_body("name = \"lights\"\n", EMPTY_MODULE), "plugin.toml: missing field `version`"),
        (install_body("name = \"Lights\"\nversion = \"1\"\n", EMPTY_MODULE), "plugin name \"Lights\""),
        (install_body(&manifest, b"MZ not wasm"), "not a WebAssembly module"),
    ];
    for (body, needle) in cases {
        let answer = h.send_json(Method::POST, "/api/v1/plugins", body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(answer.error().contains(needle), "{body}: {:?} lacks {needle:?}", answer.error());
    }
    h.post("/api/v1/plugins").await.expect_error(StatusCode::BAD_REQUEST, "needs a JSON body");
    let plain = request(Method::POST, "/api/v1/plugins").header(header::CONTENT_TYPE, "text/plain");
    h.send(plain.body(Body::from(install_body(&manifest, EMPTY_MODULE))).unwrap())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "application/json");
    h.backend.with_state(|s| assert_eq!(s.plugins.len(), 2));
}

#[tokio::test]
async fn uploads_may_be_larger_than_other_bodies_up_to_their_own_limit() {
    let h = harness();
    // A module far above the 64 KiB of other requests is accepted.
    let mut module = EMPTY_MODULE.to_vec();
    module.resize(4 * BODY_LIMIT, 0);
    let body = install_body(&plain_manifest("big", "1.0.0"), &module);
    h.send_json(Method::POST, "/api/v1/plugins", body).await.expect(StatusCode::CREATED);
    let mut manifest = sample_manifest("0.1.1", "");
    manifest.push_str(&format!("# {}\n", "x".repeat(BODY_LIMIT)));
    let body = json!({"manifest": manifest, "wasm": base64(&module)}).to_string();
    h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), body).await.expect(StatusCode::OK);
    assert_eq!(h.plugin_version(SAMPLE_PLUGIN), "0.1.1");
    // The other plugin routes keep the small limit.
    let huge = json!({"x": "x".repeat(BODY_LIMIT)}).to_string();
    h.send_json(Method::POST, &format!("{}/enable", plugin_uri(SAMPLE_PLUGIN)), huge)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "64 KiB");
}

#[tokio::test]
async fn a_module_above_the_limit_is_413_and_installs_nothing() {
    let h = harness();
    let mut module = EMPTY_MODULE.to_vec();
    module.resize(PLUGIN_WASM_LIMIT + 1, 0);
    let body = install_body(&plain_manifest("big", "1.0.0"), &module);
    assert!(body.len() < PLUGIN_BODY_LIMIT);
    let error = h.send_json(Method::POST, "/api/v1/plugins", body).await;
    error.expect_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the most is {PLUGIN_WASM_LIMIT}"));
    // A body above the upload limit is cut off before it is parsed.
    let body = format!(r#"{{"manifest": "", "wasm": "{}"}}"#, "A".repeat(PLUGIN_BODY_LIMIT));
    h.send_json(Method::POST, "/api/v1/plugins", body.clone())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "the limit is 22.3 MiB");
    h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), body).await.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "MiB");
    h.backend.with_state(|s| assert_eq!(s.plugins.len(), 2));
    assert_eq!(h.plugin_version(SAMPLE_PLUGIN), "0.1.0");
}

#[tokio::test]
async fn an_upgrade_asking_for_no_more_is_ready_at_once() {
    let h = harness();
    // Narrower: no budget change, one grant fewer.
    let manifest = sample_manifest("0.2.0", "").replace("publish = [\"machinomy/irrigation/cmd/#\"]\n", "");
    let body = h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), upgrade_body(&manifest)).await;
    let body = body.expect(StatusCode::OK).json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["plugin"]["version"], "0.2.0");
    assert_eq!(body["plugin"]["grants"]["publish"], json!([]));
    assert_eq!(body["plugin"]["pending_upgrade"], Value::Null);
    // The owner's overrides survive the upgrade.
    assert_eq!(body["plugin"]["config"]["every_secs"], 600);
    assert_eq!(h.plugin_version(SAMPLE_PLUGIN), "0.2.0");
}

#[tokio::test]
async fn an_upgrade_carries_config_changes_and_says_when_it_goes_back() {
    let h = harness();
    let uri = plugin_uri(SAMPLE_PLUGIN);
    let older = json!({"manifest": sample_manifest("0.0.9", ""), "wasm": base64(EMPTY_MODULE), "config": {"extra": 5}});
    let body = h.send_json(Method::PUT, &uri, older.to_string()).await.expect(StatusCode::OK).json();
    assert_eq!(body["status"], "ready");
    assert_eq!((&body["previous_version"], &body["downgrade"]), (&json!("0.1.0"), &json!(true)));
    assert_eq!(body["replaced_upgrade"], Value::Null);
    assert_eq!((&body["plugin"]["config"]["extra"], &body["plugin"]["config"]["every_secs"]), (&json!(5), &json!(600)));
}

#[tokio::test]
async fn an_upgrade_asking_for_more_waits_for_approval_then_runs() {
    let h = harness();
    let manifest = sample_manifest("0.2.0", "pay = true\nsubscribe = [\"machinomy/rain/state\"]\n");
    let uri = plugin_uri(SAMPLE_PLUGIN);
    let body = h.send_json(Method::PUT, &uri, upgrade_body(&manifest)).await.expect(StatusCode::OK).json();
    assert_eq!(body["status"], "awaiting_approval");
    // The old version keeps running with its grants.
    assert_eq!(body["plugin"]["version"], "0.1.0");
    assert_eq!(body["plugin"]["grants"]["pay"], false);
    assert_eq!(
        body["plugin"]["pending_upgrade"],
        json!({"version": "0.2.0", "asks_for": ["subscribe to machinomy/rain/state", "pay peers"]})
    );
    assert_eq!(h.get(&uri).await.expect(StatusCode::OK).json(), body["plugin"]);

    let approved = h.post(&format!("{uri}/approve")).await.expect(StatusCode::OK).json();
    assert_eq!(approved["version"], "0.2.0");
    assert_eq!(approved["grants"]["pay"], true);
    assert_eq!(approved["pending_upgrade"], Value::Null);
    h.post(&format!("{uri}/approve")).await.expect_error(StatusCode::CONFLICT, "no upgrade waiting for approval");
    // `{}` is a body too.
    h.send_json(Method::POST, &format!("{uri}/approve"), "{}").await.expect_error(StatusCode::CONFLICT, "");
    h.send_json(Method::POST, &format!("{uri}/approve"), r#"{"force": true}"#)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unknown field `force`");
}

#[tokio::test]
async fn an_upgrade_must_be_of_the_plugin_in_the_path() {
    let h = harness();
    let error = h
        .send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), upgrade_body(&plain_manifest("lights", "2.0.0")))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "the new version is plugin \"lights\"");
    assert!(error.contains(SAMPLE_PLUGIN), "{error}");
    h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), json!({"manifest": SAMPLE_PLUGIN_MANIFEST}).to_string())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "missing field `wasm`");
    h.send_json(
        Method::PUT,
        &plugin_uri(SAMPLE_PLUGIN),
        json!({"manifest": SAMPLE_PLUGIN_MANIFEST, "wasm": base64(EMPTY_MODULE), "settings": {}}).to_string(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "unknown field `settings`");
    h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), json!({"manifest": "", "wasm": "%%%"}).to_string())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "`wasm` is not base64");
    assert_eq!(h.plugin_version(SAMPLE_PLUGIN), "0.1.0");
    h.backend.with_state(|s| assert!(s.plugins.iter().all(|p| p.pending.is_none())));
}

#[tokio::test]
async fn disabling_stops_a_plugin_and_enabling_clears_a_quarantine() {
    let h = harness();
    let disabled = h.post(&format!("{}/disable", plugin_uri(SAMPLE_PLUGIN))).await.expect(StatusCode::OK).json();
    assert_eq!(disabled["state"], "disabled");
    assert_eq!(disabled["running"], false);
    let enabled = h.post(&format!("{}/enable", plugin_uri(QUARANTINED_PLUGIN))).await.expect(StatusCode::OK).json();
    assert_eq!(enabled["state"], "enabled");
    assert_eq!(enabled["quarantine_reason"], Value::Null);
    assert_eq!(enabled["running"], true);
    assert_eq!(enabled["faults"], 0);
    let list = h.get("/api/v1/plugins").await.expect(StatusCode::OK).json();
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["enabled", "disabled"]);
}

#[tokio::test]
async fn settings_change_in_place_and_null_goes_back_to_the_manifests_value() {
    let h = harness();
    let uri = plugin_uri(SAMPLE_PLUGIN);
    let version = h.plugin_version(SAMPLE_PLUGIN);
    let body = json!({"config": {"irrigation": "garden-valve", "every_secs": null}}).to_string();
    let view = h.send_json(Method::PATCH, &uri, body).await.expect(StatusCode::OK).json();
    // `every_secs` was the owner's 600; null gives the manifest's 3600 back.
    assert_eq!(view["config"], json!({"every_secs": 3600, "irrigation": "garden-valve"}));
    assert_eq!(view["version"], version.as_str());
    let shown = h.get(&uri).await.expect(StatusCode::OK).json();
    assert_eq!(shown["config"], view["config"]);
}

#[tokio::test]
async fn a_settings_change_that_cannot_apply_changes_nothing() {
    let h = harness();
    let uri = plugin_uri(SAMPLE_PLUGIN);
    let before = h.get(&uri).await.expect(StatusCode::OK).json();
    let long_key = "k".repeat(65);
    for (body, status, needle) in [
        (json!({"config": {long_key.as_str(): 1}}).to_string(), StatusCode::BAD_REQUEST, "keys are 1 to 64"),
        (json!({"config": [1, 2]}).to_string(), StatusCode::BAD_REQUEST, "config"),
        (json!({"config": {}, "wasm": "AAAA"}).to_string(), StatusCode::BAD_REQUEST, "wasm"),
        ("{\"config\": {".to_owned(), StatusCode::BAD_REQUEST, "JSON"),
    ] {
        h.send_json(Method::PATCH, &uri, body).await.expect_error(status, needle);
    }
    h.send_json(Method::PATCH, &plugin_uri("nope"), json!({"config": {"a": 1}}).to_string())
        .await
        .expect_error(StatusCode::NOT_FOUND, "nope");
    h.send_json(Method::PATCH, &plugin_uri("No.Such"), json!({"config": {"a": 1}}).to_string())
        .await
        .expect_error(StatusCode::BAD_REQUEST, "plugin name");
    assert_eq!(h.get(&uri).await.expect(StatusCode::OK).json(), before);
}

#[tokio::test]
async fn removing_a_plugin_answers_204_and_it_is_gone() {
    let h = harness();
    let uri = plugin_uri(SAMPLE_PLUGIN);
    let answer = h.delete(&uri).await.expect(StatusCode::NO_CONTENT);
    assert!(answer.body.is_empty());
    h.get(&uri).await.expect_error(StatusCode::NOT_FOUND, SAMPLE_PLUGIN);
    h.delete(&uri).await.expect_error(StatusCode::NOT_FOUND, SAMPLE_PLUGIN);
    // The name is free again.
    h.send_json(Method::POST, "/api/v1/plugins", install_body(SAMPLE_PLUGIN_MANIFEST, EMPTY_MODULE))
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn plugin_routes_allow_only_their_methods() {
    let h = harness();
    let answer = h.send(request(Method::PUT, "/api/v1/plugins").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.header(header::ALLOW), "GET,HEAD,POST");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "PUT");
    let answer = h.post(&plugin_uri(SAMPLE_PLUGIN)).await;
    assert_eq!(answer.header(header::ALLOW), "GET,HEAD,PUT,PATCH,DELETE");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "POST");
    let answer = h.get(&format!("{}/enable", plugin_uri(SAMPLE_PLUGIN))).await;
    assert_eq!(answer.header(header::ALLOW), "POST");
    answer.expect_error(StatusCode::METHOD_NOT_ALLOWED, "GET");
}

#[tokio::test]
async fn plugin_backend_failures_map_to_statuses() {
    let h = harness();
    let off = "plugins are disabled on this hub ([plugins] enabled = false in hub.toml)";
    h.backend.fail_next(BackendError::Unavailable(off.into()));
    h.get("/api/v1/plugins").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "[plugins] enabled = false");
    h.backend.fail_next(BackendError::Unavailable("the plugin host is not running".into()));
    h.send_json(Method::POST, "/api/v1/plugins", install_body(&plain_manifest("x", "1"), EMPTY_MODULE))
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "not running");
    h.backend.fail_next(BackendError::TooLarge("the module is 99 bytes; the most is 98".into()));
    h.send_json(Method::PUT, &plugin_uri(SAMPLE_PLUGIN), upgrade_body(SAMPLE_PLUGIN_MANIFEST))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "the most is 98");
    h.backend.fail_next(BackendError::Internal("wasmtime: cranelift exploded".into()));
    let error = h.get(&plugin_uri(SAMPLE_PLUGIN)).await.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!error.contains("wasmtime"));
    h.backend.with_state(|s| assert_eq!(s.plugins.len(), 2));
}

// ---- backend failures ----

#[tokio::test]
async fn backend_errors_map_to_statuses() {
    let h = harness();
    let cases = [
        (BackendError::NotFound("no such thing".into()), StatusCode::NOT_FOUND, "no such thing"),
        (BackendError::Invalid("bad idea".into()), StatusCode::BAD_REQUEST, "bad idea"),
        (BackendError::Conflict("too late".into()), StatusCode::CONFLICT, "too late"),
        (BackendError::Unavailable("the hub is shutting down".into()), StatusCode::SERVICE_UNAVAILABLE, "shutting"),
    ];
    for (error, status, needle) in cases {
        h.backend.fail_next(error);
        h.get("/api/v1/status").await.expect_error(status, needle);
    }
}

#[tokio::test]
async fn internal_errors_hide_their_detail() {
    let h = harness();
    h.backend.fail_next(BackendError::Internal("sled: corrupted page 0x1f at /var/lib/machinomy".into()));
    let error = h.get("/api/v1/budgets").await.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    assert_eq!(error, INTERNAL_ERROR_MESSAGE);
    assert!(!error.contains("sled"));
}

// ---- live events and the daily series ----

/// The next server-sent event's text, within a deadline (a frame may be a keep-alive comment,
/// which is skipped).
async fn next_event(body: &mut Body) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.ok()??.ok()?;
        let Ok(data) = frame.into_data() else { continue };
        let text = String::from_utf8(data.to_vec()).unwrap();
        if !text.starts_with(':') {
            return Some(text);
        }
    }
}

#[tokio::test]
async fn events_stream_each_change_by_kind_until_the_hub_stops() {
    let h = harness();
    let response =
        h.app.clone().oneshot(request(Method::GET, "/api/v1/events").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body();
    let told = h.backend.emit(crate::model::LiveEvent::Approval { id: 7, state: "pending".to_owned() });
    assert_eq!(told, 1, "one stream is open");
    let event = next_event(&mut body).await.unwrap();
    assert_eq!(event, "event: approval\ndata: {\"type\":\"approval\",\"id\":7,\"state\":\"pending\"}\n\n");
    h.backend.emit(crate::model::LiveEvent::Payment {
        direction: machinomy_core::Direction::In,
        amount: Amount::from_base_units(5),
    });
    assert!(
        next_event(&mut body)
            .await
            .unwrap()
            .starts_with("event: payment\ndata: {\"type\":\"payment\",\"direction\":\"in\",\"amount\":\"5\"")
    );
    h.backend.stop_live();
    assert_eq!(next_event(&mut body).await, None, "the stream ends with the hub");
    // A stopped hub opens no new streams.
    h.get("/api/v1/events").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "stopping");
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_told_to_resync() {
    let h = harness();
    let response =
        h.app.clone().oneshot(request(Method::GET, "/api/v1/events").body(Body::empty()).unwrap()).await.unwrap();
    let mut body = response.into_body();
    for id in 0..100 {
        h.backend.emit(crate::model::LiveEvent::Approval { id, state: "pending".to_owned() });
    }
    assert!(next_event(&mut body).await.unwrap().starts_with("event: resync\n"));
}

#[tokio::test]
async fn live_streams_are_bounded() {
    let h = harness();
    let mut open = Vec::new();
    for _ in 0..crate::MAX_STREAMS {
        let response =
            h.app.clone().oneshot(request(Method::GET, "/api/v1/events").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    h.get("/api/v1/events").await.expect_error(StatusCode::SERVICE_UNAVAILABLE, "live pages");
    // Closing one frees its place.
    drop(open.pop());
    let again =
        h.app.clone().oneshot(request(Method::GET, "/api/v1/events").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_daily_series_is_paid_per_subject_per_day_of_the_period() {
    let h = harness();
    h.backend.with_state(|s| {
        s.payments = vec![machinomy_core::SpendingEntry {
            at: Timestamp::from_civil(2026, 11, 2),
            direction: machinomy_core::Direction::Out,
            subject: "device:fridge".parse().unwrap(),
            counterparty: "grocer".to_owned(),
            amount: Amount::from_base_units(900),
            memo: String::new(),
            channel: None,
            approval: None,
        }];
    });
    let body = h.get("/api/v1/spending/daily?from=2026-11-01&to=2026-11-04").await.expect(StatusCode::OK).json();
    assert_eq!(body["days"], json!(["2026-11-01", "2026-11-02", "2026-11-03"]));
    assert_eq!(body["subjects"], json!([{"subject": "device:fridge", "paid": ["0", "900", "0"], "total": "900"}]));
    assert_eq!(body["currency"]["code"], "USD");
    h.get("/api/v1/spending/daily?from=2026-11-01").await.expect_error(StatusCode::BAD_REQUEST, "both needed");
    h.get("/api/v1/spending/daily?from=2026-11-04&to=2026-11-01").await.expect_error(StatusCode::BAD_REQUEST, "before");
    h.get("/api/v1/spending/daily?from=2020-01-01&to=2026-01-01")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "at most 366");
    h.get("/api/v1/spending/daily?from=2026-11-01&to=2026-12-01&x=1").await.expect(StatusCode::BAD_REQUEST);
}

// ---- parsing helpers ----

#[test]
fn dates_are_midnight_in_the_hubs_zone() {
    let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
    assert_eq!(parse_time("2026-11-24", &berlin), Some(Timestamp(1_795_478_400 - 3_600)));
    // Summer time: two hours ahead.
    assert_eq!(parse_time("2026-07-01", &berlin), Some(Timestamp(Timestamp::from_civil(2026, 7, 1).secs() - 7_200)));
    assert_eq!(parse_time("1795521600", &berlin), Some(Timestamp(1_795_521_600)), "seconds are seconds");
    assert_eq!(parse_time("1970-01-01", &berlin), None, "before the epoch");
}

#[test]
fn times_are_unix_seconds_or_utc_dates() {
    assert_eq!(parse_time("0", &TimeZone::UTC), Some(Timestamp(0)));
    assert_eq!(parse_time("1795521600", &TimeZone::UTC), Some(Timestamp(1_795_521_600)));
    assert_eq!(parse_time("2026-11-24", &TimeZone::UTC), Some(Timestamp(1_795_478_400)));
    assert_eq!(parse_time("2024-02-29", &TimeZone::UTC), Some(Timestamp::from_civil(2024, 2, 29)));
    assert_eq!(parse_time("1970-01-01", &TimeZone::UTC), Some(Timestamp(0)));
    for bad in ["", "2025-02-29", "2026-04-31", "2026-00-10", "2026-11-00", "+5", " 5", "2026-11-24-1", "20261124x"] {
        assert_eq!(parse_time(bad, &TimeZone::UTC), None, "{bad:?}");
    }
}

#[test]
fn approval_ids_are_plain_whole_numbers() {
    assert_eq!(parse_approval_id("0").unwrap(), 0);
    assert_eq!(parse_approval_id("18446744073709551615").unwrap(), u64::MAX);
    for bad in ["", "+1", "18446744073709551616", " 1"] {
        assert!(parse_approval_id(bad).is_err(), "{bad:?}");
    }
}
