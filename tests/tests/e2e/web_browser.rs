//! The web UI in a real browser (headless Chromium through chromedriver, see
//! `machinomy_tests::browser`) against real hub processes: the owner's first visit, signing out
//! and in, and approving a device's spend that waits for the owner. Screenshots go to
//! `<CARGO_TARGET_TMPDIR>/web-ui/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};
use machinomy_core::{Amount, DeviceId, SpendRequestMessage, SpendResultMessage, SpendStatus, SpendTarget};
use machinomy_tests::browser::{Browser, PAGE_DEADLINE};
use machinomy_tests::plugins::{Device, budget_toml, row, spending};
use machinomy_tests::{TestHub, wait_for};
use machinomy_web::model::HubStatus;
use rumqttc::QoS;

const PASSWORD: &str = "correct-horse-battery";
const DEADLINE: Duration = Duration::from_secs(20);
/// What the approvals page and the dashboard say when nothing waits for the owner.
const NOTHING_PENDING: &str = "[aria-labelledby=pending-h] .empty";
const SPEND_REQUEST: &str = "machinomy/fridge/spend/request";
const SPEND_RESULT: &str = "machinomy/fridge/spend/result";

/// Where one test's screenshots go: a folder each, since the tests run side by side.
fn screenshots(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui").join(test)
}

/// The page's `<h1>`, once there is one that reads `heading`.
async fn wait_for_heading(browser: &Browser, heading: &str) -> Result<()> {
    browser
        .wait_for(&format!("a page headed {heading:?}"), PAGE_DEADLINE, async |b| {
            Ok(b.find_text("h1").await?.filter(|h| h == heading).map(|_| ()))
        })
        .await
}

/// The owner's first visit: the hub sends the browser to `/setup`, where the owner chooses the
/// password, and then shows the dashboard.
async fn set_password(browser: &Browser, base: &str) -> Result<()> {
    browser.goto(&format!("{base}/")).await?;
    let path = browser.path().await?;
    ensure!(path == "/setup", "the first visit went to {path}, not /setup");
    browser.fill("input[name=password]", PASSWORD).await?;
    browser.fill("input[name=confirm]", PASSWORD).await?;
    browser.click("form[action='/setup'] button[type=submit]").await?;
    wait_for_heading(browser, "Dashboard").await
}

/// Signs in on the login page the browser is on.
async fn sign_in(browser: &Browser, password: &str) -> Result<()> {
    browser.fill("form[action='/login'] input[name=password]", password).await?;
    browser.click("form[action='/login'] button[type=submit]").await
}

#[tokio::test]
async fn the_owner_sets_a_password_signs_out_and_in_and_opens_the_approvals_page() {
    let mut hub = TestHub::new().unwrap();
    hub.start().await.unwrap();
    let base = hub.api().unwrap().url("");
    let browser = Browser::start(screenshots("sign-in")).await.unwrap();

    set_password(&browser, &base).await.unwrap();
    assert_eq!(browser.path().await.unwrap(), "/");
    assert!(browser.title().await.unwrap().contains("Dashboard"), "{}", browser.title().await.unwrap());
    let waiting = browser.text(NOTHING_PENDING).await.unwrap();
    assert_eq!(waiting, "Nothing is waiting for approval.");
    browser.screenshot("dashboard.png").await.unwrap();

    // Signing out ends the session: the dashboard now sends the browser to the login page.
    browser.click("header form.logout button[type=submit]").await.unwrap();
    wait_for_heading(&browser, "Sign in").await.unwrap();
    assert_eq!(browser.path().await.unwrap(), "/login");
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.path().await.unwrap(), "/login");

    // A wrong password is refused on the page; the right one opens the dashboard.
    sign_in(&browser, "not-the-password").await.unwrap();
    browser
        .wait_for("the wrong password's message", PAGE_DEADLINE, async |b| b.find_text("#password-error").await)
        .await
        .unwrap();
    assert_eq!(browser.find_text("h1").await.unwrap().as_deref(), Some("Sign in"));
    sign_in(&browser, PASSWORD).await.unwrap();
    wait_for_heading(&browser, "Dashboard").await.unwrap();

    browser.goto(&format!("{base}/approvals")).await.unwrap();
    wait_for_heading(&browser, "Approvals").await.unwrap();
    assert_eq!(browser.text(NOTHING_PENDING).await.unwrap(), "Nothing is waiting for approval.");
    assert!(!browser.exists("li.approval").await.unwrap());
    browser.screenshot("approvals.png").await.unwrap();

    drop(browser);
    assert!(hub.stop().await.unwrap().success());
}

/// A hub that grants credit (the grocer), and the home hub with the embedded broker, where the
/// fridge may spend 0.000002 unasked, 0.00001 a day.
async fn grocer_and_home() -> Result<(TestHub, TestHub, u16)> {
    let mut grocer = TestHub::builder().name("grocer").p2p(&[]).build()?;
    grocer.start().await?;
    let api = grocer.api()?;
    let addr = wait_for("the grocer's peer address", DEADLINE, async || {
        let status: HubStatus = api.get_json("/api/v1/status").await?;
        Ok(status.p2p_addrs.into_iter().find(|a| a.contains("/tcp/")))
    })
    .await?;
    let (builder, port) = TestHub::builder()
        .name("home")
        .p2p(&[&format!("bootstrap = [\"{addr}\"]"), "channel_capacity = \"0.0001\""])
        .extra(&budget_toml("device:fridge", "day", "0.00001", "0.000002"))
        .embedded_mqtt()?;
    let mut home = builder.build()?;
    home.start().await?;
    Ok((grocer, home, port))
}

/// Marks the page the browser shows, so a test can tell a live update from a reload.
async fn mark_page(browser: &Browser) -> Result<()> {
    browser.client().execute("document.body.dataset.testMark = 'kept'", vec![]).await?;
    Ok(())
}

async fn page_was_kept(browser: &Browser) -> Result<bool> {
    let mark = browser.client().execute("return document.body.dataset.testMark || ''", vec![]).await?;
    Ok(mark.as_str() == Some("kept"))
}

/// What `path` answers when fetched by the page itself (with the owner's session).
async fn fetch_in_page(browser: &Browser, path: &str) -> Result<String> {
    let script = "const done = arguments[arguments.length - 1];
                  fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done, e => done('failed: ' + e));";
    let text = browser.client().execute_async(script, vec![serde_json::json!(path)]).await?;
    Ok(text.as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_owner_approves_a_devices_spend_that_appears_live_and_sees_it_in_the_spending_chart_and_csv() {
    let (mut grocer, mut home, port) = grocer_and_home().await.unwrap();
    let grocer_key = grocer.api().unwrap().get_json::<HubStatus>("/api/v1/status").await.unwrap().public_key;
    let mut fridge = Device::pair(&home, port, "fridge", &[]).await.unwrap();
    let base = home.api().unwrap().url("");
    let browser = Browser::start(screenshots("approve-and-spending")).await.unwrap();
    set_password(&browser, &base).await.unwrap();

    // The owner has the approvals page open; the fridge asks to spend 0.000003, over its
    // 0.000002 threshold, and the request appears on the page without a reload.
    browser.goto(&format!("{base}/approvals")).await.unwrap();
    wait_for_heading(&browser, "Approvals").await.unwrap();
    assert_eq!(browser.text(NOTHING_PENDING).await.unwrap(), "Nothing is waiting for approval.");
    assert!(!browser.title().await.unwrap().starts_with('('), "nothing pending yet");
    mark_page(&browser).await.unwrap();
    let device: DeviceId = "fridge".parse().unwrap();
    let target = SpendTarget::Payee(grocer_key);
    let amount = Amount::from_base_units(3000);
    let message = SpendRequestMessage::sign(&device, &fridge.key, "r1", amount, &target, "milk", None);
    fridge.client.publish(SPEND_REQUEST, QoS::AtLeastOnce, false, serde_json::to_vec(&message).unwrap()).await.unwrap();
    let pending: SpendResultMessage = fridge.client.recv_json(SPEND_RESULT, DEADLINE).await.unwrap();
    assert_eq!((pending.request_id.as_str(), pending.status), ("r1", SpendStatus::Pending), "{pending:?}");
    let id = pending.approval.unwrap();
    let item = format!("li.approval#approval-{id}");
    let shown = browser
        .wait_for("the fridge's spend to appear on the open page", PAGE_DEADLINE, async |b| b.find_text(&item).await)
        .await
        .unwrap();
    for part in ["fridge", "0.000003 USD", "milk", &format!("#{id}")] {
        assert!(shown.contains(part), "{part:?} is not in the pending item: {shown}");
    }
    assert!(page_was_kept(&browser).await.unwrap(), "the page was reloaded instead of updated");
    let title = browser
        .wait_for("the count in the title", PAGE_DEADLINE, async |b| {
            Ok(Some(b.title().await?).filter(|t| t.starts_with("(1) ")))
        })
        .await
        .unwrap();
    assert!(title.starts_with("(1) Approvals"), "{title}");
    assert_eq!(browser.text("#pending-count").await.unwrap(), "1");
    browser.screenshot("approvals.png").await.unwrap();

    browser.click(&format!("{item} button.approve")).await.unwrap();
    let paid: SpendResultMessage = fridge.client.recv_json(SPEND_RESULT, DEADLINE).await.unwrap();
    assert_eq!((paid.request_id.as_str(), paid.status), ("r1", SpendStatus::Paid), "{paid:?}");
    let flash = browser
        .wait_for("the approval's message", PAGE_DEADLINE, async |b| {
            if b.path().await? != "/approvals" || b.exists(&item).await? {
                return Ok(None);
            }
            b.find_text("p.flash.ok").await
        })
        .await
        .unwrap();
    assert!(flash.contains(&format!("Approved #{id}")), "{flash}");
    assert_eq!(browser.text(NOTHING_PENDING).await.unwrap(), "Nothing is waiting for approval.");

    // Both hubs' books have the payment: 3000 base units from the fridge to the grocer.
    let spent = spending(&home).await.unwrap();
    assert_eq!(row(&spent, "device:fridge"), (3000, 0, 1), "{spent:?}");
    let received = spending(&grocer).await.unwrap();
    assert_eq!(received.total_received, amount, "{received:?}");

    // The dashboard lists it among recent payments.
    browser.goto(&format!("{base}/")).await.unwrap();
    wait_for_heading(&browser, "Dashboard").await.unwrap();
    let payments = browser.text("[data-live=payments] table").await.unwrap();
    assert!(payments.contains("device:fridge") && payments.contains("−0.000003 USD"), "{payments}");
    browser.screenshot("dashboard.png").await.unwrap();

    // The spending page: this month's chart has the fridge's bar, the table its total, and
    // the CSV behind the page's link has its row.
    browser.goto(&format!("{base}/spending")).await.unwrap();
    wait_for_heading(&browser, "Spending").await.unwrap();
    let bar = browser.client().find(fantoccini::Locator::Css("svg.chart rect.bar title")).await.unwrap();
    let bar_title = bar.html(true).await.unwrap();
    assert!(bar_title.starts_with("device:fridge on ") && bar_title.ends_with(": 0.000003 USD"), "{bar_title}");
    let table = browser.text("table.report").await.unwrap();
    assert!(table.contains("fridge") && table.contains("0.000003 USD"), "{table}");
    browser.screenshot("spending.png").await.unwrap();
    let csv_link = browser.client().find(fantoccini::Locator::Css("a#csv")).await.unwrap();
    let href = csv_link.attr("href").await.unwrap().unwrap();
    let csv = fetch_in_page(&browser, &href).await.unwrap();
    let line =
        csv.lines().find(|l| l.starts_with("device:fridge,")).unwrap_or_else(|| panic!("no fridge row in {csv}"));
    assert!(line.contains("3000") || line.contains("0.000003"), "{line}");

    drop(browser);
    assert!(home.stop().await.unwrap().success());
    assert!(grocer.stop().await.unwrap().success());
}

/// Serves one page forever on a loopback port of its own: another site, as far as the browser
/// knows (`localhost` and `127.0.0.1` are different sites). Answers its address.
async fn serve_other_site(page: String) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    Ok((addr, task))
}

#[tokio::test]
async fn a_form_posted_from_another_site_changes_nothing_and_html_in_names_and_memos_stays_text() {
    let (mut grocer, mut home, port) = grocer_and_home().await.unwrap();
    let grocer_key = grocer.api().unwrap().get_json::<HubStatus>("/api/v1/status").await.unwrap().public_key;
    let api = home.api().unwrap();
    // A device whose name is markup, and a spend whose memo is a script.
    let name = "<img src=x onerror=\"document.title='pwned'\">";
    let mut fridge = Device::pair_named(&home, port, "fridge", Some(name), &[]).await.unwrap();
    let base = api.url("");
    let browser = Browser::start(screenshots("security")).await.unwrap();
    set_password(&browser, &base).await.unwrap();

    let memo = "<script>document.title='pwned'</script>";
    let device: DeviceId = "fridge".parse().unwrap();
    let message = SpendRequestMessage::sign(
        &device,
        &fridge.key,
        "r1",
        Amount::from_base_units(3000),
        &SpendTarget::Payee(grocer_key),
        memo,
        None,
    );
    fridge.client.publish(SPEND_REQUEST, QoS::AtLeastOnce, false, serde_json::to_vec(&message).unwrap()).await.unwrap();
    let pending: SpendResultMessage = fridge.client.recv_json(SPEND_RESULT, DEADLINE).await.unwrap();
    let id = pending.approval.unwrap();
    browser.goto(&format!("{base}/approvals")).await.unwrap();
    let item = format!("li.approval#approval-{id}");
    let shown = browser.wait_for("the pending spend", PAGE_DEADLINE, async |b| b.find_text(&item).await).await.unwrap();
    assert!(shown.contains(memo), "the memo is shown as text: {shown}");
    assert!(shown.contains("<img src=x"), "the name is shown as text: {shown}");
    browser.goto(&format!("{base}/devices")).await.unwrap();
    wait_for_heading(&browser, "Devices").await.unwrap();
    assert!(browser.text("#device-fridge").await.unwrap().contains("<img src=x"));
    assert!(!browser.title().await.unwrap().contains("pwned"), "markup ran");

    // Another site the owner visits while signed in posts the approve form to the hub.
    let evil = format!(
        "<!doctype html><form id=f method=post action=\"{base}/approvals/{id}/approve\"><input name=csrf value=guess></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let (evil_addr, evil_task) = serve_other_site(evil).await.unwrap();
    browser.goto(&format!("http://localhost:{}/", evil_addr.port())).await.unwrap();
    let refused = browser
        .wait_for("the hub's answer to the other site's form", PAGE_DEADLINE, async |b| {
            if !b.url().await?.starts_with(&base) {
                return Ok(None);
            }
            b.find_text("h1").await
        })
        .await
        .unwrap();
    assert_eq!(refused, "Forbidden");
    browser.screenshot("cross-site-refused.png").await.unwrap();
    evil_task.abort();
    let approval: machinomy_core::Approval = api.get_json(&format!("/api/v1/approvals/{id}")).await.unwrap();
    assert!(approval.is_pending(), "the other site's form approved it: {approval:?}");
    assert!(fridge.drain().await.iter().all(|(topic, _)| topic != SPEND_RESULT), "no second answer reached the fridge");

    // The owner is still signed in on the hub's own pages.
    browser.goto(&format!("{base}/approvals")).await.unwrap();
    wait_for_heading(&browser, "Approvals").await.unwrap();
    assert!(browser.exists(&item).await.unwrap());

    drop(browser);
    assert!(home.stop().await.unwrap().success());
    assert!(grocer.stop().await.unwrap().success());
}
