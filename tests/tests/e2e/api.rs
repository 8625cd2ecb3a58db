//! The admin HTTP API of a real hub: authentication and error answers.

use machinomy_tests::{TestHub, error_answer, http_client};
use machinomy_web::model::BudgetView;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn the_api_needs_the_admin_token_and_healthz_does_not() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let api = hub.api().unwrap();

    let health = api.anonymous(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let budget = serde_json::json!({"subject": "device:tv", "period": "day", "limit": "100", "auto_approve": "10"});
    let routes = [
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/approvals?state=all"),
        (Method::POST, "/api/v1/approvals/1/approve"),
        (Method::PUT, "/api/v1/budgets"),
    ];
    let wrong = "0".repeat(64);
    for (method, path) in &routes {
        let without = api.anonymous(method.clone(), path).json(&budget).send().await.unwrap();
        assert!(without.headers().contains_key("www-authenticate"), "{method} {path}");
        assert_eq!(error_answer(without).await.unwrap().0, StatusCode::UNAUTHORIZED, "{method} {path} without a token");

        let with_wrong = api.anonymous(method.clone(), path).bearer_auth(&wrong).json(&budget).send().await.unwrap();
        assert_eq!(
            error_answer(with_wrong).await.unwrap().0,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a wrong token"
        );

        let basic =
            api.anonymous(method.clone(), path).basic_auth("admin", Some(hub.token().unwrap())).send().await.unwrap();
        assert_eq!(error_answer(basic).await.unwrap().0, StatusCode::UNAUTHORIZED, "{method} {path} with basic auth");
    }
    // None of those got through.
    let budgets: Vec<BudgetView> = api.get_json("/api/v1/budgets").await.unwrap();
    assert!(budgets.is_empty(), "{budgets:?}");

    // The CLI with a token the hub does not hold is told so in one line.
    std::fs::write(hub.data_dir().join("admin.token"), format!("{wrong}\n")).unwrap();
    let out = hub.cli(&["status"]).await.unwrap();
    assert!(out.error_line().unwrap().contains("admin token is not valid"), "{out}");
    assert!(hub.stop().await.unwrap().success());
}

#[tokio::test]
async fn malformed_requests_are_400_and_unknown_things_404_with_an_error_message() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let api = hub.api().unwrap();

    let bodies = [
        (r#"{"subject": "device:tv", "period": "#, "not valid JSON"),
        (r#"{"subject": "device:tv", "period": "fortnight", "limit": "1", "auto_approve": "0"}"#, "period"),
        (r#"{"subject": "device:tv", "period": "day", "limit": 1, "auto_approve": "0"}"#, "limit"),
        (r#"{"subject": "device:tv", "period": "day", "limit": "1", "auto_approve": "2"}"#, "above the limit"),
        (r#"{"subject": "device:tv", "period": "day", "limit": "1", "auto_approve": "0", "owner": "me"}"#, "owner"),
        ("", "needs a JSON body"),
    ];
    for (body, names) in bodies {
        let response =
            api.put("/api/v1/budgets").header("content-type", "application/json").body(body).send().await.unwrap();
        let (status, error) = error_answer(response).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(error.contains(names), "{body}: {error}");
    }
    let not_json = api.put("/api/v1/budgets").header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(error_answer(not_json).await.unwrap().0, StatusCode::BAD_REQUEST);
    let budgets: Vec<BudgetView> = api.get_json("/api/v1/budgets").await.unwrap();
    assert!(budgets.is_empty(), "a refused budget was stored: {budgets:?}");

    for (method, path, expected) in [
        (Method::GET, "/api/v1/approvals/999", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/approvals/999/approve", StatusCode::NOT_FOUND),
        (Method::POST, "/api/v1/approvals/999/deny", StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/approvals/nine", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/approvals?state=maybe", StatusCode::BAD_REQUEST),
        (Method::GET, &format!("/api/v1/channels/{}", "cd".repeat(32)), StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/spending?group_by=colour", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/spending?from=2026-02-30", StatusCode::BAD_REQUEST),
        (Method::GET, "/api/v1/nothing-here", StatusCode::NOT_FOUND),
        (Method::DELETE, "/api/v1/status", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let response = api.request(method.clone(), path).send().await.unwrap();
        let (status, error) = error_answer(response).await.unwrap();
        assert_eq!(status, expected, "{method} {path}: {error}");
    }

    let out = hub.cli(&["approvals", "approve", "999"]).await.unwrap();
    assert!(out.error_line().unwrap().contains("no approval 999"), "{out}");
    let out = hub.cli(&["approvals", "show", "999"]).await.unwrap();
    assert!(out.error_line().unwrap().contains("no approval 999"), "{out}");

    // The hub is still fine after all that.
    let health = http_client().unwrap().get(api.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(hub.stop().await.unwrap().success());
}
