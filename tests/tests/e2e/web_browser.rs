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

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui")
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
    let browser = Browser::start(screenshots()).await.unwrap();

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

#[tokio::test]
async fn the_owner_approves_a_devices_spend_in_the_browser_and_the_device_is_paid() {
    let (mut grocer, mut home, port) = grocer_and_home().await.unwrap();
    let grocer_key = grocer.api().unwrap().get_json::<HubStatus>("/api/v1/status").await.unwrap().public_key;
    let mut fridge = Device::pair(&home, port, "fridge", &[]).await.unwrap();
    let base = home.api().unwrap().url("");
    let browser = Browser::start(screenshots()).await.unwrap();
    set_password(&browser, &base).await.unwrap();

    // 0.000003 is over the fridge's 0.000002 threshold: the hub asks the owner.
    let device: DeviceId = "fridge".parse().unwrap();
    let target = SpendTarget::Payee(grocer_key);
    let amount = Amount::from_base_units(3000);
    let message = SpendRequestMessage::sign(&device, &fridge.key, "r1", amount, &target, "milk", None);
    let request = serde_json::to_vec(&message).unwrap();

    // For now the approvals page is opened once the request is pending. When the page updates
    // itself, move the `goto` line above the `publish` line: the wait for the item below then
    // waits for it to appear without a reload.
    fridge.client.publish(SPEND_REQUEST, QoS::AtLeastOnce, false, request).await.unwrap();
    let pending: SpendResultMessage = fridge.client.recv_json(SPEND_RESULT, DEADLINE).await.unwrap();
    browser.goto(&format!("{base}/approvals")).await.unwrap();
    assert_eq!((pending.request_id.as_str(), pending.status), ("r1", SpendStatus::Pending), "{pending:?}");
    let id = pending.approval.unwrap();
    let item = format!("li.approval#approval-{id}");
    let shown = browser
        .wait_for("the fridge's spend on the approvals page", PAGE_DEADLINE, async |b| b.find_text(&item).await)
        .await
        .unwrap();
    for part in ["fridge", "0.000003", "milk", &format!("#{id}")] {
        assert!(shown.contains(part), "{part:?} is not in the pending item: {shown}");
    }
    browser.screenshot("approval-pending.png").await.unwrap();

    browser.click(&format!("{item} button.approve")).await.unwrap();
    let paid: SpendResultMessage = fridge.client.recv_json(SPEND_RESULT, DEADLINE).await.unwrap();
    assert_eq!((paid.request_id.as_str(), paid.status), ("r1", SpendStatus::Paid), "{paid:?}");

    // Back on the approvals page: the spend is no longer pending, and the page says it was approved.
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
    browser.screenshot("approval-paid.png").await.unwrap();

    // Both hubs' books have the payment: 3000 base units from the fridge to the grocer.
    let spent = spending(&home).await.unwrap();
    assert_eq!(row(&spent, "device:fridge"), (3000, 0, 1), "{spent:?}");
    assert_eq!(spent.total_paid, amount, "{spent:?}");
    let received = spending(&grocer).await.unwrap();
    assert_eq!(received.total_received, amount, "{received:?}");

    drop(browser);
    assert!(home.stop().await.unwrap().success());
    assert!(grocer.stop().await.unwrap().success());
}
