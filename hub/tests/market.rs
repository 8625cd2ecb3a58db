//! Buying and selling services between two real hubs in one process: their own books and
//! stores, and libp2p on loopback between them.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // test helpers fail the test

use std::sync::Arc;

use machinomy_core::PublicKey;
use machinomy_core::wire::ErrorCode;
use machinomy_core::{Amount, Budget, Currency, Period, SigningKey, Subject};
use machinomy_hub::config::{P2pSettings, SellSettings, ServiceAnswer};
use machinomy_hub::ledger::CreditLedger;
use machinomy_hub::market::{DeviceStates, Market, MarketError};
use machinomy_hub::net::{self, NetConfig, NetTask};
use machinomy_hub::payments::{PaymentSettings, Payments};
use machinomy_hub::store::{ChannelRecord, Store};

const PRICE: u128 = 1_000;

struct TestHub {
    _dir: tempfile::TempDir,
    payments: Payments,
    market: Market,
    task: Option<NetTask>,
    devices: Arc<DeviceStates>,
}

fn p2p(bootstrap: Vec<String>) -> P2pSettings {
    P2pSettings {
        enabled: true,
        listen: vec!["/ip4/127.0.0.1/tcp/0".to_owned()],
        bootstrap,
        mdns: false,
        relay_server: false,
        relays: Vec::new(),
        channel_capacity: Amount::from_base_units(100 * PRICE),
        offer_ttl_secs: 600,
    }
}

async fn hub(seed: u8, sell: Vec<SellSettings>, budgets: &[Budget], bootstrap: Vec<String>) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[seed; 32]);
    let me = PublicKey::from(key.verifying_key());
    let store = Store::open(dir.path()).unwrap();
    let ledger = Arc::new(CreditLedger::new(me, Currency::usd(), Amount::from_base_units(1_000_000), 60));
    let settings = PaymentSettings { approval_ttl_secs: 600, max_pending_approvals: 10 };
    let payments = Payments::open(store, key.clone(), ledger, settings, budgets).await.unwrap();
    let devices = Arc::new(DeviceStates::default());
    let settings = p2p(bootstrap);
    let market =
        Market::new(payments.clone(), key.clone(), Currency::usd(), sell, settings.clone(), 3600, devices.clone());
    let config =
        NetConfig { listen: settings.listen.clone(), bootstrap: settings.bootstrap.clone(), ..NetConfig::default() };
    let (handle, task) = net::start(&key, &config, Arc::new(market.clone())).await.unwrap();
    market.attach(handle);
    TestHub { _dir: dir, payments, market, task: Some(task), devices }
}

impl TestHub {
    async fn addrs(&self) -> Vec<String> {
        self.market.net().unwrap().listen_addrs().await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.shutdown().await;
        }
    }
}

fn weather(answer: ServiceAnswer) -> SellSettings {
    SellSettings {
        name: "weather".to_owned(),
        price: Amount::from_base_units(PRICE),
        description: "local forecast".to_owned(),
        answer,
    }
}

fn buyer_budget(limit: u128, auto: u128) -> Budget {
    Budget::new(
        "plugin:weather-buyer".parse().unwrap(),
        Period::Day,
        Amount::from_base_units(limit),
        Amount::from_base_units(auto),
    )
    .unwrap()
}

fn buyer_subject() -> Subject {
    "plugin:weather-buyer".parse().unwrap()
}

#[tokio::test]
async fn a_thousand_paid_calls_agree_on_both_hubs_to_the_base_unit() {
    let seller = hub(2, vec![weather(ServiceAnswer::Text("sunny".to_owned()))], &[], Vec::new()).await;
    let buyer = hub(1, Vec::new(), &[buyer_budget(10_000 * PRICE, PRICE)], seller.addrs().await).await;
    buyer.market.net().unwrap().dial(&seller.addrs().await[0]).await.unwrap();
    seller.market.announce().await.unwrap();

    for _ in 0..1000 {
        let bought = buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap();
        assert_eq!(bought.body, b"sunny");
        assert_eq!(bought.price, Amount::from_base_units(PRICE));
    }

    let total = Amount::from_base_units(1000 * PRICE);
    let paid: u128 = buyer.payments.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    let received: u128 = seller.payments.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(paid, total.base_units());
    assert_eq!(received, total.base_units());
    let promised: Amount = buyer
        .payments
        .channels()
        .unwrap()
        .iter()
        .map(|c| match c {
            ChannelRecord::Sender(s) => s.promised(),
            ChannelRecord::Receiver(_) => panic!("the buyer receives nothing"),
        })
        .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap());
    let accepted: Amount = seller
        .payments
        .channels()
        .unwrap()
        .iter()
        .map(|c| match c {
            ChannelRecord::Receiver(r) => r.accepted(),
            ChannelRecord::Sender(_) => panic!("the seller pays nothing"),
        })
        .fold(Amount::ZERO, |a, b| a.checked_add(b).unwrap());
    assert_eq!(promised, total);
    assert_eq!(accepted, total);
    // 100 calls fit one channel's capacity: running out opened new ones, never a failure.
    assert_eq!(buyer.payments.channels().unwrap().len(), 10);
    buyer.stop().await;
    seller.stop().await;
}

#[tokio::test]
async fn a_device_state_service_answers_with_the_latest_state_and_charges_nothing_without_one() {
    let seller =
        hub(4, vec![weather(ServiceAnswer::DeviceState { device: "station".to_owned() })], &[], Vec::new()).await;
    let buyer = hub(3, Vec::new(), &[buyer_budget(10 * PRICE, PRICE)], seller.addrs().await).await;
    buyer.market.net().unwrap().dial(&seller.addrs().await[0]).await.unwrap();
    seller.market.announce().await.unwrap();
    let err = buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap_err();
    assert!(matches!(err, MarketError::Refused(ref e) if e.code == ErrorCode::ServiceUnavailable), "{err}");
    assert_eq!(seller.payments.spending(None, None).unwrap().len(), 0, "no answer, no charge");
    seller.devices.set("station", br#"{"rain_mm":3}"#.to_vec());
    let bought = buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap();
    assert_eq!(bought.body, br#"{"rain_mm":3}"#);
    buyer.stop().await;
    seller.stop().await;
}

#[tokio::test]
async fn a_call_over_the_budget_threshold_waits_for_the_owner_and_pays_nothing() {
    let seller = hub(6, vec![weather(ServiceAnswer::Text("sunny".to_owned()))], &[], Vec::new()).await;
    let buyer = hub(5, Vec::new(), &[buyer_budget(10 * PRICE, PRICE - 1)], seller.addrs().await).await;
    buyer.market.net().unwrap().dial(&seller.addrs().await[0]).await.unwrap();
    seller.market.announce().await.unwrap();
    let err = buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap_err();
    assert!(matches!(err, MarketError::Pending { .. }), "{err}");
    assert!(buyer.payments.spending(None, None).unwrap().is_empty());
    let err = buyer.market.call("nothing-sold", Vec::new(), &buyer_subject()).await.unwrap_err();
    assert!(matches!(err, MarketError::NoSeller(_)), "{err}");
    buyer.stop().await;
    seller.stop().await;
}
