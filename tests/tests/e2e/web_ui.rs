//! The web UI of a real hub process: the owner's password is kept in the data dir across a
//! restart, sessions are not.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use machinomy_tests::TestHub;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

const PASSWORD: &str = "correct-horse-battery";

/// A client that shows redirects instead of following them.
fn browser() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// The value of cookie `name` in a response's `Set-Cookie` headers.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get_all(SET_COOKIE).iter().find_map(|value| {
        let (pair, _) = value.to_str().ok()?.split_once(';')?;
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

/// The value of hidden field `name` in a page.
fn field(page: &str, name: &str) -> Result<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let (_, rest) = page.split_once(&marker).with_context(|| format!("no {name} in {page}"))?;
    Ok(rest.split('"').next().unwrap_or_default().to_owned())
}

fn location(response: &reqwest::Response) -> &str {
    response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Fills in the login (or setup) form at `path` and posts it; answers the session cookie.
async fn sign_in(client: &reqwest::Client, base: &str, path: &str) -> Result<String> {
    let form = client.get(format!("{base}{path}")).send().await?;
    ensure!(form.status() == StatusCode::OK, "GET {path}: {}", form.status());
    let form_cookie = set_cookie(&form, "machinomy_form").context("no form cookie")?;
    let token = field(&form.text().await?, "form_token")?;
    let body = format!("form_token={token}&password={PASSWORD}&confirm={PASSWORD}");
    let done = client
        .post(format!("{base}{path}"))
        .header(COOKIE, format!("machinomy_form={form_cookie}"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    ensure!(done.status() == StatusCode::SEE_OTHER && location(&done) == "/", "POST {path}: {}", done.status());
    set_cookie(&done, "machinomy_session").context("no session cookie")
}

#[tokio::test]
async fn the_owner_password_survives_a_restart_and_sessions_do_not() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let client = browser().unwrap();
    let base = hub.api().unwrap().url("");

    let first = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!((first.status(), location(&first)), (StatusCode::SEE_OTHER, "/setup"));
    let session = sign_in(&client, &base, "/setup").await.unwrap();

    let stored = hub.data_dir().join("owner.password");
    let text = std::fs::read_to_string(&stored).unwrap();
    assert!(text.starts_with("$argon2id$"), "{text}");
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);

    let with_session =
        |path: &str| client.get(format!("{base}{path}")).header(COOKIE, format!("machinomy_session={session}"));
    let dashboard = with_session("/").send().await.unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    let page = dashboard.text().await.unwrap();
    assert!(page.contains("<h1>Dashboard</h1>") && page.contains("Nothing is waiting for approval."), "{page}");
    assert_eq!(with_session("/api/v1/status").send().await.unwrap().status(), StatusCode::OK);

    assert!(hub.stop().await.unwrap().success());
    hub.start().await.unwrap();
    let base = hub.api().unwrap().url("");
    let old =
        client.get(format!("{base}/")).header(COOKIE, format!("machinomy_session={session}")).send().await.unwrap();
    assert_eq!((old.status(), location(&old)), (StatusCode::SEE_OTHER, "/login"), "sessions end with the process");
    let setup = client.get(format!("{base}/setup")).send().await.unwrap();
    assert_eq!((setup.status(), location(&setup)), (StatusCode::SEE_OTHER, "/login"), "the password was kept");
    let session = sign_in(&client, &base, "/login").await.unwrap();
    let dashboard =
        client.get(format!("{base}/")).header(COOKIE, format!("machinomy_session={session}")).send().await.unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    assert!(hub.stop().await.unwrap().success());
}

/// Posts the login form with `password`, with the form's own token and cookie.
async fn try_password(client: &reqwest::Client, base: &str, password: &str) -> Result<reqwest::Response> {
    let form = client.get(format!("{base}/login")).send().await?;
    let form_cookie = set_cookie(&form, "machinomy_form").context("no form cookie")?;
    let token = field(&form.text().await?, "form_token")?;
    Ok(client
        .post(format!("{base}/login"))
        .header(COOKIE, format!("machinomy_form={form_cookie}"))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("form_token={token}&password={password}"))
        .send()
        .await?)
}

#[tokio::test]
async fn a_session_of_another_hub_is_refused_and_wrong_passwords_slow_the_next_attempt() {
    let mut home = TestHub::new().unwrap();
    let mut neighbour = TestHub::new().unwrap();
    home.start().await.unwrap();
    neighbour.start().await.unwrap();
    let client = browser().unwrap();
    let (home_base, neighbour_base) = (home.api().unwrap().url(""), neighbour.api().unwrap().url(""));
    let session = sign_in(&client, &home_base, "/setup").await.unwrap();
    sign_in(&client, &neighbour_base, "/setup").await.unwrap();

    // The home's session cookie means nothing to the neighbour's hub (same password or not).
    let cookie = format!("machinomy_session={session}");
    let page = client.get(format!("{neighbour_base}/")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!((page.status(), location(&page)), (StatusCode::SEE_OTHER, "/login"));
    let api = client.get(format!("{neighbour_base}/api/v1/status")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    let home_page = client.get(format!("{home_base}/")).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(home_page.status(), StatusCode::OK, "and it still works at home");

    // Ten wrong passwords: the first five are only refused, then each locks the login longer,
    // and the next attempt (even with the right password) is told to wait.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(try_password(&client, &home_base, "wrong-password").await.unwrap().status());
    }
    assert!(statuses[..6].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let next = try_password(&client, &home_base, PASSWORD).await.unwrap();
    assert_eq!(next.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = next.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 1, "{wait}");
    assert!(set_cookie(&next, "machinomy_session").is_none(), "no session while locked out");
    let page = next.text().await.unwrap();
    assert!(page.contains("Too many wrong passwords. Try again in"), "{page}");

    assert!(home.stop().await.unwrap().success());
    assert!(neighbour.stop().await.unwrap().success());
}
