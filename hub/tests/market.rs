//! Buying and selling services between two real hubs in one process: their own books and
//! stores, and libp2p on loopback between them.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // test helpers fail the test

use machinomy_core::wire::ErrorCode;
use machinomy_core::{Amount, Budget, Period, SigningKey, Subject};
use machinomy_hub::config::{SellSettings, ServiceAnswer};
use machinomy_hub::market::MarketError;
use machinomy_hub::store::ChannelRecord;
use machinomy_hub::testing::{InProcessHub, loopback_p2p};

const PRICE: u128 = 1_000;

struct TestHub {
    _dir: tempfile::TempDir,
    hub: InProcessHub,
}

impl std::ops::Deref for TestHub {
    type Target = InProcessHub;
    fn deref(&self) -> &InProcessHub {
        &self.hub
    }
}

async fn hub(seed: u8, sell: Vec<SellSettings>, budgets: &[Budget], bootstrap: Vec<String>) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let p2p = loopback_p2p(bootstrap, Amount::from_base_units(100 * PRICE));
    let key = SigningKey::from_bytes(&[seed; 32]);
    let hub =
        InProcessHub::start(dir.path(), key, sell, budgets, Amount::from_base_units(1_000_000), p2p).await.unwrap();
    TestHub { _dir: dir, hub }
}

impl TestHub {
    async fn addrs(&self) -> Vec<String> {
        self.hub.addrs().await.unwrap()
    }

    async fn stop(self) {
        self.hub.stop().await;
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
    let state = serde_json::json!({"rain_mm": 3}).as_object().cloned().unwrap();
    seller.devices.set("station", state);
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

#[tokio::test]
async fn bad_requests_from_a_peer_get_error_answers_and_the_hub_stays_healthy() {
    use machinomy_core::wire::{
        ChannelProposal, ChannelRequest, ChannelResponse, PayRequest, PayResponse, ServiceCall, ServiceOffer,
        ServiceResponse,
    };
    use machinomy_core::{ChannelId, LedgerId, PromiseBody, PublicKey, Timestamp};
    use machinomy_hub::net::InboundHandler;
    use machinomy_hub::payments::OutgoingMeta;

    let seller = hub(8, vec![weather(ServiceAnswer::Text("sunny".to_owned()))], &[], Vec::new()).await;
    let buyer = hub(7, Vec::new(), &[buyer_budget(100 * PRICE, PRICE)], seller.addrs().await).await;
    let net = buyer.market.net().unwrap();
    let seller_key = PublicKey::from(SigningKey::from_bytes(&[8; 32]).verifying_key());
    net.dial(&seller.addrs().await[0]).await.unwrap();
    seller.market.announce().await.unwrap();
    buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap();
    let channel = match buyer.payments.channels().unwrap().first() {
        Some(ChannelRecord::Sender(c)) => c.terms.id,
        other => panic!("expected the buyer's channel, got {other:?}"),
    };
    let meta =
        OutgoingMeta { subject: buyer_subject(), payee: seller_key.to_hex(), memo: String::new(), approval: None };
    let expect_error = |answer: PayResponse, code: ErrorCode| match answer {
        PayResponse::Error(e) => assert_eq!(e.code, code, "{e}"),
        PayResponse::Receipt(r) => panic!("expected {code:?}, got a receipt {r:?}"),
    };

    // A replayed promise, then a decreasing one.
    let promise =
        buyer.payments.pay(channel, Amount::from_base_units(PRICE), &meta, machinomy_hub::now()).await.unwrap();
    let first = net.pay(seller_key, PayRequest { promise: promise.clone(), memo: String::new() }).await.unwrap();
    assert!(matches!(first, PayResponse::Receipt(_)));
    expect_error(
        net.pay(seller_key, PayRequest { promise: promise.clone(), memo: String::new() }).await.unwrap(),
        ErrorCode::NotIncreasing,
    );
    let lower = PromiseBody { amount: Amount::from_base_units(1), ..promise.body.clone() }
        .sign(&SigningKey::from_bytes(&[7; 32]));
    expect_error(
        net.pay(seller_key, PayRequest { promise: lower, memo: String::new() }).await.unwrap(),
        ErrorCode::NotIncreasing,
    );
    // A forged promise: right channel, someone else's key.
    let forged = PromiseBody { amount: Amount::from_base_units(10 * PRICE), ..promise.body.clone() }
        .sign(&SigningKey::from_bytes(&[9; 32]));
    expect_error(
        net.pay(seller_key, PayRequest { promise: forged, memo: String::new() }).await.unwrap(),
        ErrorCode::BadSignature,
    );
    // A promise for a channel this peer does not pay on (another hub's, or none at all).
    let foreign = PromiseBody {
        ledger: LedgerId::credit(),
        channel: ChannelId::from_bytes([0xab; 32]),
        amount: Amount::from_base_units(5),
        stream: None,
    }
    .sign(&SigningKey::from_bytes(&[7; 32]));
    expect_error(
        net.pay(seller_key, PayRequest { promise: foreign.clone(), memo: String::new() }).await.unwrap(),
        ErrorCode::UnknownChannel,
    );
    // A memo too long to be honest.
    let promise =
        buyer.payments.pay(channel, Amount::from_base_units(PRICE), &meta, machinomy_hub::now()).await.unwrap();
    expect_error(
        net.pay(seller_key, PayRequest { promise, memo: "x".repeat(10_000) }).await.unwrap(),
        ErrorCode::BadRequest,
    );
    // A call for a service nobody sells here.
    let unknown = net
        .call(seller_key, ServiceCall { service: "astrology".to_owned(), body: Vec::new(), promise: foreign })
        .await
        .unwrap();
    assert!(matches!(unknown, ServiceResponse::Error(ref e) if e.code == ErrorCode::UnknownService), "{unknown:?}");
    // A proposal above the credit line.
    let greedy = ChannelProposal {
        channel: ChannelId::from_bytes([0xcd; 32]),
        ledger: LedgerId::credit(),
        sender: PublicKey::from(SigningKey::from_bytes(&[7; 32]).verifying_key()),
        capacity: Amount::from_base_units(2_000_000),
        settlement_period_secs: 3600,
    };
    let answer = net.channel(seller_key, ChannelRequest::Propose(greedy)).await.unwrap();
    assert!(matches!(answer, ChannelResponse::Error(ref e) if e.code == ErrorCode::CreditLimit), "{answer:?}");
    // Offers that are unsigned, expired, or relayed in someone else's name are not believed.
    let now = machinomy_hub::now();
    let mut unsigned = ServiceOffer::sign(
        "cheap",
        Amount::from_base_units(1),
        "USD",
        "",
        Timestamp(now.secs() + 60),
        &SigningKey::from_bytes(&[8; 32]),
    );
    unsigned.signature = machinomy_core::Signature([0; 64]);
    let expired = ServiceOffer::sign(
        "stale",
        Amount::from_base_units(1),
        "USD",
        "",
        Timestamp(now.secs() - 1),
        &SigningKey::from_bytes(&[8; 32]),
    );
    let impostor = ServiceOffer::sign(
        "fake",
        Amount::from_base_units(1),
        "USD",
        "",
        Timestamp(now.secs() + 60),
        &SigningKey::from_bytes(&[9; 32]),
    );
    for offer in [unsigned, expired, impostor] {
        InboundHandler::offer(&buyer.market, seller_key, offer);
    }
    let names: Vec<String> = buyer.market.offers(now).into_iter().map(|o| o.name).collect();
    assert_eq!(names, vec!["weather".to_owned()]);

    // The connection and both hubs are still fine: a real call goes through, paid correctly
    // (the promise the memo check refused was never accepted, so this call pays for both).
    let resync = buyer.market.call("weather", Vec::new(), &buyer_subject()).await;
    assert!(resync.is_ok(), "{resync:?}");
    buyer.stop().await;
    seller.stop().await;
}

#[tokio::test]
async fn a_buyer_finds_a_seller_it_never_dialed_through_the_dht_of_five_hubs() {
    // A chain: the buyer knows only hub 1, each hub the one before it, the seller is hub 4.
    let first = hub(20, Vec::new(), &[buyer_budget(10 * PRICE, PRICE)], Vec::new()).await;
    let mut chain = vec![first];
    for seed in 21..=24u8 {
        let previous = chain.last().unwrap().addrs().await;
        let sell = if seed == 24 { vec![weather(ServiceAnswer::Text("from afar".to_owned()))] } else { Vec::new() };
        chain.push(hub(seed, sell, &[], previous).await);
    }
    let seller_key = machinomy_core::PublicKey::from(SigningKey::from_bytes(&[24; 32]).verifying_key());
    let seller = chain.last().unwrap();
    let buyer = chain.first().unwrap();
    // Provider records propagate as the DHT's routing fills in: announce until the buyer finds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        seller.market.announce().await.unwrap();
        let providers = buyer.market.net().unwrap().find_providers("weather").await.unwrap();
        if providers.contains(&seller_key) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the buyer never found the seller in the DHT");
    }
    let bought = buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap();
    assert_eq!(bought.body, b"from afar");
    assert_eq!(bought.seller, seller_key);
    for hub in chain {
        hub.stop().await;
    }
}

#[tokio::test]
async fn invoices_are_paid_inside_the_budget_or_after_the_owner_approves() {
    use machinomy_core::wire::{Invoice, InvoiceResponse};
    use machinomy_core::{ApprovalState, PublicKey, Verdict};
    use machinomy_hub::payments::IncomingMeta;

    let payee_key = PublicKey::from(SigningKey::from_bytes(&[31; 32]).verifying_key());
    let payer_key = PublicKey::from(SigningKey::from_bytes(&[30; 32]).verifying_key());
    let budget = Budget::new(
        Subject::Peer(payee_key.to_hex()),
        Period::Month,
        Amount::from_base_units(50 * PRICE),
        Amount::from_base_units(5 * PRICE),
    )
    .unwrap();
    let payer = hub(30, Vec::new(), &[budget], Vec::new()).await;
    let payee = hub(31, Vec::new(), &[], payer.addrs().await).await;
    let net = payee.market.net().unwrap();
    net.dial(&payer.addrs().await[0]).await.unwrap();
    let meta = IncomingMeta { subject: "device:meter".parse().unwrap(), memo: "rent".to_owned() };

    // Within the threshold: paid at once, with a promise the payee accepts.
    let small = Invoice {
        amount: Amount::from_base_units(3 * PRICE),
        memo: "two hours".to_owned(),
        reference: "stay-1".to_owned(),
    };
    let promise = match net.invoice(payer_key, small).await.unwrap() {
        InvoiceResponse::Paid { promise } => promise,
        other => panic!("expected payment, got {other:?}"),
    };
    let accepted = payee.payments.accept(promise, &meta, machinomy_hub::now()).await.unwrap();
    assert_eq!(accepted.increment, Amount::from_base_units(3 * PRICE));

    // Over the threshold: pending until the payer's owner approves, then paid over the network.
    let big = Invoice {
        amount: Amount::from_base_units(20 * PRICE),
        memo: "the week".to_owned(),
        reference: "stay-2".to_owned(),
    };
    let approval = match net.invoice(payer_key, big).await.unwrap() {
        InvoiceResponse::Pending { approval } => approval,
        other => panic!("expected pending, got {other:?}"),
    };
    let decided = payer.payments.decide(approval, Verdict::Approve, "owner", machinomy_hub::now()).await.unwrap();
    assert!(matches!(decided.state, ApprovalState::Approved { .. }));
    payer.market.pay_approved_invoice(&decided).await.unwrap();
    let received: u128 = payee.payments.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(received, 23 * PRICE);
    let paid_again = payer.payments.approval(approval, machinomy_hub::now()).await.unwrap();
    assert!(paid_again.outcome.is_some(), "the approval records its payment");
    // Paying it twice is refused.
    assert!(payer.market.pay_approved_invoice(&paid_again).await.is_ok(), "an already-paid approval is skipped");
    let received_after: u128 = payee.payments.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(received_after, 23 * PRICE);

    // Above what the budget allows at all, and denied by the owner: nothing moves.
    let huge = Invoice {
        amount: Amount::from_base_units(100 * PRICE),
        memo: "a year".to_owned(),
        reference: "stay-3".to_owned(),
    };
    let approval = match net.invoice(payer_key, huge).await.unwrap() {
        InvoiceResponse::Pending { approval } => approval,
        other => panic!("expected pending, got {other:?}"),
    };
    let denied = payer
        .payments
        .decide(approval, Verdict::Deny { reason: "too much".into() }, "owner", machinomy_hub::now())
        .await
        .unwrap();
    payer.market.pay_approved_invoice(&denied).await.unwrap();
    let received_final: u128 = payee.payments.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(received_final, 23 * PRICE);
    payer.stop().await;
    payee.stop().await;
}
