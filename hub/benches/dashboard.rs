//! The owner's dashboard, rendered through the whole HTTP stack (session check, the hub's books
//! in sled, askama), with 10,000 payments in the spending ledger; in the same run, the same page
//! over a ledger of only the 10 payments it lists, and a bare `/healthz` through the same router.
//! Prints `ratio …` lines: a dashboard whose cost grew with the ledger would show in the first.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing, clippy::print_stdout)] // a benchmark stops at the first failure

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, criterion_group};
use http_body_util::BodyExt;
use machinomy_core::{Amount, Direction, SpendingEntry, Subject, Timestamp};
use machinomy_hub::config::Config;
use machinomy_hub::hub::Hub;
use machinomy_hub::store::Write;
use machinomy_web::{AdminAuth, Backend};
use tower::ServiceExt;

const PAYMENTS: u64 = 10_000;
/// The payments the dashboard lists: a ledger of these renders the same page.
const SHOWN: u64 = 10;
const PASSWORD: &str = "correct horse battery";

struct Site {
    _dir: tempfile::TempDir,
    app: Router,
    cookie: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A hub whose ledger holds `payments` payments over the last 30 days, and a signed-in session.
async fn site(payments: u64) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("[hub]\ndata_dir = {:?}\n[p2p]\nenabled = false\n", dir.path().join("data"));
    let config = Config::parse(&text, &dir.path().join("hub.toml"), Path::new("/nonexistent")).expect("config");
    let (hub, _) = Hub::open(&config).await.expect("hub");
    let now = machinomy_hub::hub::now().secs();
    let subjects: Vec<Subject> =
        ["device:fridge", "device:washer", "plugin:weather-buyer", "plugin:grocery-ordering", "device:ebike"]
            .iter()
            .map(|s| s.parse().expect("subject"))
            .collect();
    let entries: Vec<SpendingEntry> = (0..payments)
        .map(|i| SpendingEntry {
            at: Timestamp(now - 30 * 86_400 + i * (30 * 86_400 / PAYMENTS)),
            direction: if i % 7 == 0 { Direction::In } else { Direction::Out },
            subject: subjects[(i % subjects.len() as u64) as usize].clone(),
            counterparty: format!("{:064x}", i % 13),
            amount: Amount::from_base_units(u128::from(1_000 + i)),
            memo: format!("payment {i}"),
            channel: None,
            approval: None,
        })
        .collect();
    for chunk in entries.chunks(500) {
        let writes: Vec<Write<'_>> = chunk.iter().map(Write::Spending).collect();
        hub.payments().store().write(&writes).expect("write");
        hub.payments().store().commit().await.expect("commit");
    }
    let hash = tokio::task::spawn_blocking(|| {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(&[7; 16]).expect("salt");
        argon2::Argon2::default().hash_password(PASSWORD.as_bytes(), &salt).expect("hash").to_string()
    })
    .await
    .expect("hash task");
    hub.set_owner_password_hash(hash).await.expect("password");
    let app = machinomy_web::router(Arc::new(hub), AdminAuth::new("bench-token").expect("token"));
    let cookie = sign_in(&app).await;
    Site { _dir: dir, app, cookie }
}

/// Signs in through the login form, as a browser would; answers the cookies to send.
async fn sign_in(app: &Router) -> String {
    let form = app.clone().oneshot(Request::get("/login").body(Body::empty()).unwrap()).await.unwrap();
    let form_cookie = set_cookie(&form, "machinomy_form");
    let page = String::from_utf8(form.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let token = page.split("name=\"form_token\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let login = Request::post("/login")
        .header(header::COOKIE, format!("machinomy_form={form_cookie}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("form_token={token}&password={}", PASSWORD.replace(' ', "+"))))
        .unwrap();
    let done = app.clone().oneshot(login).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER, "login");
    format!("machinomy_session={}", set_cookie(&done, "machinomy_session"))
}

fn set_cookie(response: &axum::response::Response, name: &str) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}="))?.split(';').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

impl Site {
    /// One page, read whole; panics unless it is a 200.
    async fn get(&self, path: &str) -> usize {
        let request = Request::get(path).header(header::COOKIE, &self.cookie).body(Body::empty()).unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.into_body().collect().await.unwrap().to_bytes().len()
    }
}

fn per_request(rt: &tokio::runtime::Runtime, site: &Site, path: &str, iterations: u32) -> f64 {
    rt.block_on(async {
        for _ in 0..iterations / 10 {
            site.get(path).await;
        }
        let start = Instant::now();
        for _ in 0..iterations {
            site.get(path).await;
        }
        start.elapsed().as_secs_f64() / f64::from(iterations)
    })
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let full = rt.block_on(site(PAYMENTS));
    let small = rt.block_on(site(SHOWN));
    let mut group = c.benchmark_group("dashboard");
    group.bench_function("dashboard_10k_payments", |b| b.to_async(&rt).iter(|| full.get("/")));
    group.bench_function("dashboard_10_payments", |b| b.to_async(&rt).iter(|| small.get("/")));
    group.bench_function("spending_month_10k_payments", |b| b.to_async(&rt).iter(|| full.get("/spending")));
    group.bench_function("healthz", |b| b.to_async(&rt).iter(|| full.get("/healthz")));
    group.finish();
}

criterion_group!(group, benches);

fn main() {
    group();
    criterion::Criterion::default().configure_from_args().final_summary();

    // The ratios, measured back to back in this run.
    let rt = runtime();
    let full = rt.block_on(site(PAYMENTS));
    let small = rt.block_on(site(SHOWN));
    let bytes = rt.block_on(full.get("/"));
    let dashboard = per_request(&rt, &full, "/", 2_000);
    let dashboard_small = per_request(&rt, &small, "/", 2_000);
    let spending = per_request(&rt, &full, "/spending", 50);
    let healthz = per_request(&rt, &full, "/healthz", 5_000);
    println!("dashboard, {PAYMENTS} payments: {:.0} µs per render ({bytes} bytes)", dashboard * 1e6);
    println!("dashboard, {SHOWN} payments:     {:.0} µs per render", dashboard_small * 1e6);
    println!("spending page, a month of {PAYMENTS} payments: {:.0} µs per render", spending * 1e6);
    println!("healthz through the same router: {:.1} µs", healthz * 1e6);
    println!("ratio dashboard_10k/dashboard_{SHOWN} = {:.2}", dashboard / dashboard_small);
    println!("ratio dashboard_10k/healthz = {:.1}", dashboard / healthz);
}
