//! Hubs on the peer network: real hub processes that find each other, open credit channels and
//! pay for each other's services, with both sets of books agreeing to the base unit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test

use std::time::Duration;

use anyhow::Result;
use machinomy_core::Amount;
use machinomy_tests::{TestHub, error_answer, wait_for};
use machinomy_web::model::{CallResult, ChannelView, HubStatus, Role, ServicesView, SpendingReport};
use serde_json::json;

/// 0.000001 USD a call, in base units (9 decimals).
const PRICE: u128 = 1_000;

/// A seller of "weather" answering "sunny", re-announcing its offer every 2 s.
async fn seller(extra_p2p: &[&str]) -> TestHub {
    let mut lines = vec!["offer_ttl_secs = 6"];
    lines.extend_from_slice(extra_p2p);
    let mut hub = TestHub::builder()
        .name("seller")
        .p2p(&lines)
        .extra(
            "[[sell]]\nname = \"weather\"\nprice = \"0.000001\"\ndescription = \"today's forecast\"\ntext = \"sunny\"",
        )
        .build()
        .unwrap();
    hub.start().await.unwrap();
    hub
}

/// A buyer whose plugin `weather-buyer` may spend up to 1 USD a day, 0.000001 per call unasked.
async fn buyer(bootstrap: &str) -> TestHub {
    let mut hub = TestHub::builder()
        .name("buyer")
        .p2p(&[&format!("bootstrap = [\"{bootstrap}\"]"), "channel_capacity = \"0.0001\""])
        .extra("[[budget]]\nsubject = \"plugin:weather-buyer\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"0.000001\"")
        .build()
        .unwrap();
    hub.start().await.unwrap();
    hub
}

async fn p2p_addr(hub: &TestHub) -> String {
    let api = hub.api().unwrap();
    wait_for("the hub's peer address", Duration::from_secs(20), async || {
        let status: HubStatus = api.get_json("/api/v1/status").await?;
        Ok(status.p2p_addrs.into_iter().find(|a| a.contains("/tcp/")))
    })
    .await
    .unwrap()
}

async fn call(hub: &TestHub, service: &str) -> reqwest::Response {
    let body = json!({"subject": "plugin:weather-buyer", "body": ""});
    hub.api().unwrap().post(&format!("/api/v1/services/{service}/call")).json(&body).send().await.unwrap()
}

fn sum(channels: &[ChannelView], role: Role) -> u128 {
    channels.iter().filter(|c| c.role == role).map(|c| c.spent.base_units()).sum()
}

#[tokio::test]
async fn a_buyer_pays_a_seller_for_a_thousand_calls_and_both_books_agree() {
    let mut seller = seller(&[]).await;
    let mut buyer = buyer(&p2p_addr(&seller).await).await;

    // The seller's gossiped offer reaches the buyer.
    let api = buyer.api().unwrap();
    let services: ServicesView = wait_for("the weather offer", Duration::from_secs(30), async || {
        let services: ServicesView = api.get_json("/api/v1/services").await?;
        Ok(services.seen.iter().any(|o| o.service == "weather").then_some(services))
    })
    .await
    .unwrap();
    assert_eq!(services.seen[0].price, Amount::from_base_units(PRICE));

    for _ in 0..1000 {
        let response = call(&buyer, "weather").await;
        assert_eq!(response.status(), 200);
        let result: CallResult = response.json().await.unwrap();
        assert_eq!(result.body, "sunny");
    }

    let total = 1000 * PRICE;
    let paid: SpendingReport = buyer.api().unwrap().get_json("/api/v1/spending?group_by=payee").await.unwrap();
    let received: SpendingReport = seller.api().unwrap().get_json("/api/v1/spending?group_by=subject").await.unwrap();
    assert_eq!(paid.total_paid.base_units(), total);
    assert_eq!(received.total_received.base_units(), total);
    let buyer_channels: Vec<ChannelView> = buyer.api().unwrap().get_json("/api/v1/channels").await.unwrap();
    let seller_channels: Vec<ChannelView> = seller.api().unwrap().get_json("/api/v1/channels").await.unwrap();
    assert_eq!(sum(&buyer_channels, Role::Sender), total);
    assert_eq!(sum(&seller_channels, Role::Receiver), total);
    // 0.0001 of credit is 100 calls: running out opened new channels, never a failed call.
    assert_eq!(buyer_channels.len(), 10);

    // The same through the CLI.
    let listed = buyer.cli(&["service", "list"]).await.unwrap();
    let text = listed.ok().unwrap();
    assert!(text.contains("weather") && text.contains("0.000001 USD"), "{text}");
    let bought = buyer.cli(&["service", "call", "weather", "--as", "plugin:weather-buyer"]).await.unwrap();
    assert!(bought.ok().unwrap().starts_with("sunny\n(paid 0.000001 USD"), "{bought}");
    let seller_key: HubStatus = seller.api().unwrap().get_json("/api/v1/status").await.unwrap();
    let peers = buyer.cli(&["peers"]).await.unwrap();
    assert!(peers.ok().unwrap().contains(&seller_key.public_key.to_hex()), "{peers}");
    let with_seller: Vec<ChannelView> = buyer
        .cli(&["channel", "list", "--peer", &seller_key.public_key.to_hex(), "--json"])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(with_seller.len(), 11, "the 1001st call needed an eleventh channel");
    let bad = buyer.cli(&["service", "call", "no/such", "--as", "plugin:weather-buyer"]).await.unwrap();
    assert!(bad.error_line().unwrap().contains("not a service name"), "{bad}");

    let unknown = call(&buyer, "astrology").await;
    let (status, error) = error_answer(unknown).await.unwrap();
    assert_eq!(status, 404, "{error}");
    assert!(buyer.stop().await.unwrap().success());
    assert!(seller.stop().await.unwrap().success());
}

/// Keeps buying until told to stop; counts the results received.
fn keep_buying(hub: &TestHub, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    let api = hub.api().unwrap();
    tokio::spawn(async move {
        let mut received = 0u64;
        while !*stop.borrow() {
            let body = json!({"subject": "plugin:weather-buyer", "body": ""});
            let answer = api.post("/api/v1/services/weather/call").json(&body).send().await;
            let paid = match answer {
                Ok(response) if response.status() == 200 => {
                    response.json::<CallResult>().await.is_ok_and(|r| r.body == "sunny")
                }
                _ => false,
            };
            if paid {
                received += 1;
            } else {
                // The seller is down or restarting: give it the cores instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        received
    })
}

async fn received_by(hub: &TestHub) -> Result<u128> {
    let report: SpendingReport = hub.api()?.get_json("/api/v1/spending?group_by=subject").await?;
    Ok(report.total_received.base_units())
}

#[tokio::test]
async fn a_seller_killed_mid_stream_holds_a_promise_for_every_delivered_call_and_both_views_converge() {
    let port = machinomy_tests::free_port().unwrap();
    let listen = format!("listen = [\"/ip4/127.0.0.1/tcp/{port}\"]");
    let mut seller = seller(&[&listen]).await;
    let mut buyer = buyer(&p2p_addr(&seller).await).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let buying = keep_buying(&buyer, stopped.clone());
    wait_for("a hundred paid calls", Duration::from_secs(60), async || {
        // A slow answer is asked again, not a failure.
        Ok(received_by(&seller).await.ok().filter(|received| *received >= 100 * PRICE).map(drop))
    })
    .await
    .unwrap();
    let before_kill = received_by(&seller).await.unwrap();
    seller.kill().await.unwrap();
    seller.start().await.unwrap();
    let before_restart = received_by(&seller).await.unwrap();
    assert!(before_restart >= before_kill, "the restart lost acknowledged payments");
    wait_for("calls paid after the restart", Duration::from_secs(60), async || {
        Ok(received_by(&seller).await.ok().filter(|received| *received >= before_restart + 50 * PRICE).map(drop))
    })
    .await
    .unwrap();
    stop.send(true).unwrap();
    let delivered = buying.await.unwrap();

    // Every result the buyer received is covered by what the seller durably holds.
    let held = received_by(&seller).await.unwrap();
    assert!(held >= u128::from(delivered) * PRICE, "delivered {delivered} calls, seller holds {held}");
    // One more call settles any promise whose fate the crash left open; then both views agree.
    assert_eq!(call(&buyer, "weather").await.status(), 200);
    let buyer_channels: Vec<ChannelView> = buyer.api().unwrap().get_json("/api/v1/channels").await.unwrap();
    let seller_channels: Vec<ChannelView> = seller.api().unwrap().get_json("/api/v1/channels").await.unwrap();
    for ours in &buyer_channels {
        let theirs = seller_channels.iter().find(|c| c.id == ours.id).expect("the seller knows every channel");
        assert_eq!(ours.spent, theirs.spent, "channel {}", ours.id);
    }
    let paid: SpendingReport = buyer.api().unwrap().get_json("/api/v1/spending?group_by=payee").await.unwrap();
    let net_paid = paid.total_paid.base_units() - paid.total_received.base_units();
    assert_eq!(net_paid, received_by(&seller).await.unwrap(), "the buyer's books net to what the seller holds");
    assert!(buyer.stop().await.unwrap().success());
    assert!(seller.stop().await.unwrap().success());
}
