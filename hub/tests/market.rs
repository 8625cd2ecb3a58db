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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        seller.market.announce().await.unwrap();
        let providers = buyer.market.net().unwrap().find_providers("weather").await.unwrap();
        if providers.contains(&seller_key) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the buyer never found the seller in the DHT");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
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

// --- invoices, streams and provided services ---------------------------------------------------

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use machinomy_core::wire::{PayRequest, PayResponse, ServiceCall, ServiceResponse, TickRequest, WireError};
use machinomy_core::{
    Approval, ApprovalState, ChannelId, Direction, HashChain, LedgerId, PromiseBody, PublicKey, SpendOutcome,
    SpendRequest, StreamTerms, Tick, Verdict,
};
use machinomy_hub::market::{InvoiceOutcome, ProvidedAnswer, ServiceProvider, SoldService};
use machinomy_hub::net::BoxFuture;
use machinomy_hub::payments::{HubEvent, OutgoingMeta};

fn public(seed: u8) -> PublicKey {
    PublicKey::from(SigningKey::from_bytes(&[seed; 32]).verifying_key())
}

fn units(n: u128) -> Amount {
    Amount::from_base_units(n)
}

fn meter() -> Subject {
    Subject::Device("meter".to_owned())
}

fn meter_budget(limit: u128, auto: u128) -> Budget {
    Budget::new(meter(), Period::Day, units(limit), units(auto)).unwrap()
}

/// What the spending ledger says moved in (positive) or out (negative), net.
fn net_flow(hub: &InProcessHub) -> i128 {
    hub.payments
        .spending(None, None)
        .unwrap()
        .iter()
        .map(|e| {
            let amount = i128::try_from(e.amount.base_units()).unwrap();
            if e.direction == Direction::In { amount } else { -amount }
        })
        .sum()
}

fn promised(hub: &InProcessHub) -> u128 {
    let channels = hub.payments.channels().unwrap();
    channels.iter().map(|c| if let ChannelRecord::Sender(s) = c { s.promised().base_units() } else { 0 }).sum()
}

fn accepted(hub: &InProcessHub) -> u128 {
    let channels = hub.payments.channels().unwrap();
    channels.iter().map(|c| if let ChannelRecord::Receiver(r) = c { r.accepted().base_units() } else { 0 }).sum()
}

fn sender_channels(hub: &InProcessHub) -> Vec<machinomy_core::SenderChannel> {
    let mut channels: Vec<_> = hub
        .payments
        .channels()
        .unwrap()
        .into_iter()
        .filter_map(|c| if let ChannelRecord::Sender(s) = c { Some(s) } else { None })
        .collect();
    channels.sort_by_key(|c| c.terms.opened_at);
    channels
}

/// The meter's budget approves `amount` for `payee`.
async fn approved(hub: &InProcessHub, payee: &PublicKey, amount: u128) -> Approval {
    let request = SpendRequest {
        subject: meter(),
        payee: payee.to_hex(),
        amount: units(amount),
        memo: "a minute of power".to_owned(),
        reference: "tick".to_owned(),
        created_at: machinomy_hub::now(),
    };
    let approval = hub.payments.request_spend(request, machinomy_hub::now()).await.unwrap();
    assert!(matches!(approval.state, ApprovalState::Approved { .. }), "{approval:?}");
    approval
}

async fn tick(payer: &InProcessHub, payee: &PublicKey, price: u128) -> machinomy_core::wire::Receipt {
    let approval = approved(payer, payee, price).await;
    let receipt = payer.market.stream_tick_with_approval(payee, units(price), "a minute", &approval).await.unwrap();
    receipt.verify(payee).unwrap();
    assert_eq!(receipt.increment, units(price));
    let paid = payer.payments.approval(approval.id, machinomy_hub::now()).await.unwrap();
    assert!(matches!(paid.outcome, Some(SpendOutcome::Paid { .. })), "{paid:?}");
    receipt
}

/// Two connected hubs: (payer, payee), the payer with the meter's budget.
async fn pair(payer_seed: u8, payee_seed: u8, sell: Vec<SellSettings>) -> (TestHub, TestHub) {
    let payee = hub(payee_seed, sell, &[], Vec::new()).await;
    let payer = hub(payer_seed, Vec::new(), &[meter_budget(1_000_000_000, 100 * PRICE)], payee.addrs().await).await;
    payer.market.net().unwrap().dial(&payee.addrs().await[0]).await.unwrap();
    (payer, payee)
}

fn expect_error(answer: PayResponse, code: ErrorCode) {
    match answer {
        PayResponse::Error(e) => assert_eq!(e.code, code, "{e}"),
        PayResponse::Receipt(r) => panic!("expected {code:?}, got a receipt {r:?}"),
    }
}

#[tokio::test]
async fn stream_ticks_agree_on_both_hubs_and_a_used_up_stream_is_followed_by_a_new_one() {
    const TICK: u128 = 7;
    let (payer, payee) = pair(40, 41, Vec::new()).await;
    let payee_key = public(41);
    for i in 1..=300u128 {
        let receipt = tick(&payer, &payee_key, TICK).await;
        assert_eq!(receipt.total, units(i * TICK));
    }
    assert_eq!(net_flow(&payer), -300 * 7);
    assert_eq!(net_flow(&payee), 300 * 7);
    assert_eq!(promised(&payer), 300 * TICK);
    assert_eq!(accepted(&payee), 300 * TICK);
    // One channel: a stream of its opening payment and 256 ticks, then a second stream.
    let channels = sender_channels(&payer);
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].stream.as_ref().unwrap().ticks_sent, 300 - 257 - 1);
    payer.stop().await;
    payee.stop().await;
}

#[tokio::test]
async fn a_full_stream_channel_is_followed_by_a_new_one_and_plain_payments_leave_streams_alone() {
    // Ten payments fill a channel (capacity 100 × PRICE): an opening payment and nine ticks.
    const TICK: u128 = 10 * PRICE;
    let (payer, payee) = pair(42, 43, Vec::new()).await;
    let payee_key = public(43);
    for _ in 0..15 {
        tick(&payer, &payee_key, TICK).await;
    }
    // Channel ids are random, so the list is in no particular order.
    let channels = sender_channels(&payer);
    assert_eq!(channels.len(), 2);
    let (full, open): (Vec<_>, Vec<_>) = channels.iter().partition(|c| c.remaining() == Amount::ZERO);
    assert_eq!((full.len(), open.len()), (1, 1));
    let streaming = open[0].terms.id;
    assert_eq!(open[0].stream.as_ref().unwrap().ticks_sent, 4);

    // A plain payment to the same payee takes another channel.
    let approval = approved(&payer, &payee_key, PRICE).await;
    let receipt = payer.market.pay_with_approval(&payee_key, "a coffee", &approval).await.unwrap();
    assert_ne!(receipt.channel, streaming);
    assert_eq!(sender_channels(&payer).len(), 3);
    // And the stream goes on where it was.
    let receipt = tick(&payer, &payee_key, TICK).await;
    assert_eq!((receipt.channel, receipt.total), (streaming, units(6 * TICK)));

    let total = 16 * TICK + PRICE;
    assert_eq!((promised(&payer), accepted(&payee)), (total, total));
    assert_eq!(net_flow(&payer), -i128::try_from(total).unwrap());
    assert_eq!(net_flow(&payee), i128::try_from(total).unwrap());
    payer.stop().await;
    payee.stop().await;
}

#[tokio::test]
async fn a_tick_lost_on_the_way_is_withdrawn_by_the_resync_and_the_stream_goes_on() {
    const TICK: u128 = 5;
    let (payer, payee) = pair(44, 45, Vec::new()).await;
    let payee_key = public(45);
    for _ in 0..3 {
        tick(&payer, &payee_key, TICK).await;
    }
    // A tick the payee never hears of: durable here, never sent.
    let channel = sender_channels(&payer)[0].terms.id;
    let meta = OutgoingMeta { subject: meter(), payee: payee_key.to_hex(), memo: "lost".to_owned(), approval: None };
    payer.payments.tick(channel, &meta, machinomy_hub::now()).await.unwrap();

    // The next one skips a link: refused, and the resync withdraws the lost tick.
    let approval = approved(&payer, &payee_key, TICK).await;
    let err = payer.market.stream_tick_with_approval(&payee_key, units(TICK), "a minute", &approval).await.unwrap_err();
    assert!(matches!(err, MarketError::Refused(ref e) if e.code == ErrorCode::WrongPreimage), "{err}");
    assert_eq!(promised(&payer), 3 * TICK);
    let receipt = tick(&payer, &payee_key, TICK).await;
    assert_eq!((receipt.channel, receipt.total), (channel, units(4 * TICK)));
    assert_eq!(net_flow(&payer), -4 * 5);
    assert_eq!(net_flow(&payee), 4 * 5);
    payer.stop().await;
    payee.stop().await;
}

#[tokio::test]
async fn forged_unknown_and_excess_ticks_are_refused_and_change_nothing() {
    let (payer, payee) = pair(46, 47, Vec::new()).await;
    let (payer_key, payee_key) = (SigningKey::from_bytes(&[46; 32]), public(47));
    tick(&payer, &payee_key, PRICE).await;
    let channel = sender_channels(&payer)[0].terms.id;
    let net = payer.market.net().unwrap();
    let send = |channel: ChannelId, tick: Tick, memo: String| net.tick(payee_key, TickRequest { channel, tick, memo });
    let books = || (payee.payments.spending(None, None).unwrap().len(), accepted(&payee));
    let before = books();

    expect_error(
        send(channel, Tick { index: 1, preimage: [7; 32] }, String::new()).await.unwrap(),
        ErrorCode::WrongPreimage,
    );
    let unknown = ChannelId::from_bytes([0xab; 32]);
    expect_error(
        send(unknown, Tick { index: 1, preimage: [7; 32] }, String::new()).await.unwrap(),
        ErrorCode::UnknownChannel,
    );
    expect_error(
        send(channel, Tick { index: 1, preimage: [7; 32] }, "x".repeat(10_000)).await.unwrap(),
        ErrorCode::BadRequest,
    );
    assert_eq!(books(), before);

    // A stream of two ticks from a chain of three: the third link hashes right but is not paid for.
    let chain = HashChain::new([5; 32], 3).unwrap();
    let opener = PromiseBody {
        ledger: LedgerId::credit(),
        channel,
        amount: units(PRICE + 1),
        stream: Some(StreamTerms { root: chain.root(), price_per_tick: units(1), max_ticks: 2 }),
    }
    .sign(&payer_key);
    assert!(matches!(
        net.pay(payee_key, PayRequest { promise: opener, memo: String::new() }).await.unwrap(),
        PayResponse::Receipt(_)
    ));
    for index in 1..=2 {
        let answer = send(channel, chain.tick(index).unwrap(), String::new()).await.unwrap();
        assert!(
            matches!(answer, PayResponse::Receipt(ref r) if r.total == units(PRICE + 1 + u128::from(index))),
            "{answer:?}"
        );
    }
    let before = books();
    expect_error(send(channel, chain.tick(3).unwrap(), String::new()).await.unwrap(), ErrorCode::StreamEnded);
    // A plain promise ends the stream; a tick after it has nothing to tick.
    let plain =
        PromiseBody { ledger: LedgerId::credit(), channel, amount: units(PRICE + 4), stream: None }.sign(&payer_key);
    assert!(matches!(
        net.pay(payee_key, PayRequest { promise: plain, memo: String::new() }).await.unwrap(),
        PayResponse::Receipt(_)
    ));
    let before_plain = (before.0 + 1, before.1 + 1);
    expect_error(send(channel, chain.tick(3).unwrap(), String::new()).await.unwrap(), ErrorCode::StreamEnded);
    assert_eq!(books(), before_plain);
    payer.stop().await;
    payee.stop().await;
}

fn landlord() -> Subject {
    Subject::Plugin("landlord".to_owned())
}

#[tokio::test]
async fn invoices_sent_are_paid_at_once_or_after_the_owner_approves_or_denied_and_booked_alike() {
    let (payer_key, payee_key) = (public(50), public(51));
    let budget =
        Budget::new(Subject::Peer(payee_key.to_hex()), Period::Month, units(50 * PRICE), units(5 * PRICE)).unwrap();
    let payer = hub(50, Vec::new(), &[budget], Vec::new()).await;
    let payee = hub(51, Vec::new(), &[], payer.addrs().await).await;
    payee.market.net().unwrap().dial(&payer.addrs().await[0]).await.unwrap();

    // Within the payer's budget: paid at once, booked to the invoicing plugin.
    let outcome = payee
        .market
        .invoice(&payer_key, units(3 * PRICE), "two hours", "plugin:landlord:1", &landlord())
        .await
        .unwrap();
    assert!(matches!(outcome, InvoiceOutcome::Paid { amount, .. } if amount == units(3 * PRICE)), "{outcome:?}");
    let rows = payee.payments.spending(None, None).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].direction, &rows[0].subject, rows[0].amount), (Direction::In, &landlord(), units(3 * PRICE)));
    assert_eq!(rows[0].counterparty, payer_key.to_hex());
    assert_eq!(net_flow(&payer), -3 * 1_000);

    // Over the threshold: pending; once the payer's owner approves, paid and announced.
    let mut events = payee.payments.subscribe();
    let outcome = payee
        .market
        .invoice(&payer_key, units(20 * PRICE), "the week", "plugin:landlord:2", &landlord())
        .await
        .unwrap();
    let InvoiceOutcome::Pending { approval } = outcome else { panic!("expected pending, got {outcome:?}") };
    let decided = payer.payments.decide(approval, Verdict::Approve, "owner", machinomy_hub::now()).await.unwrap();
    payer.market.pay_approved_invoice(&decided).await.unwrap();
    let paid = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let HubEvent::InvoicePaid { from, reference, amount } = events.recv().await.unwrap() {
                break (from, reference, amount);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(paid, (payer_key, "plugin:landlord:2".to_owned(), units(20 * PRICE)));
    let rows = payee.payments.spending(None, None).unwrap();
    assert!(rows.iter().all(|r| r.subject == landlord()), "{rows:?}");
    assert_eq!(net_flow(&payee), 23 * 1_000);
    assert_eq!(net_flow(&payer), -23 * 1_000);

    // A payer with no budget for this payee says no, and nothing moves.
    let outcome = payer.market.invoice(&payee_key, units(PRICE), "", "back", &landlord()).await.unwrap();
    assert!(matches!(outcome, InvoiceOutcome::Denied { ref reason } if reason.contains("budget")), "{outcome:?}");
    assert_eq!(net_flow(&payee), 23 * 1_000);
    payer.stop().await;
    payee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_sent_to_one_payer_at_once_are_each_paid_exactly() {
    let (payer_key, payee_key) = (public(52), public(53));
    let budget =
        Budget::new(Subject::Peer(payee_key.to_hex()), Period::Month, units(500 * PRICE), units(50 * PRICE)).unwrap();
    let payer = hub(52, Vec::new(), &[budget], Vec::new()).await;
    let payee = hub(53, Vec::new(), &[], payer.addrs().await).await;
    payee.market.net().unwrap().dial(&payer.addrs().await[0]).await.unwrap();

    // The payer answers each with a cumulative promise on one channel: were the answers to
    // cross, the larger would arrive first and neither would match its invoice.
    let mut invoices = tokio::task::JoinSet::new();
    for n in 1..=8u128 {
        let market = payee.market.clone();
        invoices.spawn(async move {
            let reference = format!("plugin:landlord:{n}");
            (n, market.invoice(&payer_key, units(n * PRICE), "bill", &reference, &landlord()).await)
        });
    }
    while let Some(joined) = invoices.join_next().await {
        let (n, outcome) = joined.unwrap();
        let paid = matches!(outcome, Ok(InvoiceOutcome::Paid { amount, .. }) if amount == units(n * PRICE));
        assert!(paid, "invoice {n}: {outcome:?}");
    }
    assert_eq!(net_flow(&payee), 36 * 1_000);
    assert_eq!(net_flow(&payer), -36 * 1_000);
    payer.stop().await;
    payee.stop().await;
}

/// Sells a forecast the way a plugin would, and counts the calls it answers.
#[derive(Debug, Default)]
struct Forecaster {
    answered: AtomicUsize,
}

impl ServiceProvider for Forecaster {
    fn offers(&self) -> Vec<SoldService> {
        let sold = |name: &str, price: u128| SoldService {
            name: name.to_owned(),
            price: units(price),
            description: format!("{name} from a plugin"),
        };
        vec![sold("forecast", 2 * PRICE), sold("weather", 1), sold("broken", PRICE), sold("bad name!", 1)]
    }

    fn answer(
        &self,
        service: &str,
        _from: PublicKey,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<ProvidedAnswer, WireError>> {
        let service = service.to_owned();
        Box::pin(async move {
            self.answered.fetch_add(1, Ordering::SeqCst);
            match service.as_str() {
                "forecast" => Ok(ProvidedAnswer {
                    body: [b"rain ".as_slice(), &body].concat(),
                    subject: Subject::Plugin("forecaster".to_owned()),
                }),
                _ => Err(WireError::new(ErrorCode::ServiceUnavailable, "the plugin trapped")),
            }
        })
    }
}

#[tokio::test]
async fn services_a_provider_sells_are_offered_answered_and_paid_and_the_config_wins_a_clash() {
    let seller = hub(53, vec![weather(ServiceAnswer::Text("sunny".to_owned()))], &[], Vec::new()).await;
    let forecaster = Arc::new(Forecaster::default());
    seller.market.set_service_provider(forecaster.clone());
    let offers = seller.market.own_offers(machinomy_hub::now());
    let offered: Vec<(&str, u128)> = offers.iter().map(|o| (o.name.as_str(), o.price.base_units())).collect();
    assert_eq!(offered, vec![("weather", PRICE), ("forecast", 2 * PRICE), ("broken", PRICE)]);

    let buyer = hub(52, Vec::new(), &[buyer_budget(100 * PRICE, 10 * PRICE)], seller.addrs().await).await;
    buyer.market.net().unwrap().dial(&seller.addrs().await[0]).await.unwrap();
    seller.market.announce().await.unwrap();
    let quote = buyer.market.quote("forecast").await.unwrap();
    assert_eq!((quote.seller, quote.price), (public(53), units(2 * PRICE)));

    let bought = buyer.market.call("forecast", b"tomorrow".to_vec(), &buyer_subject()).await.unwrap();
    assert_eq!(bought.body, b"rain tomorrow");
    let rows = seller.payments.spending(None, None).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((&rows[0].subject, rows[0].amount), (&Subject::Plugin("forecaster".to_owned()), units(2 * PRICE)));
    assert_eq!(buyer.market.call("weather", Vec::new(), &buyer_subject()).await.unwrap().body, b"sunny");

    // The provider's error charges nothing.
    let err = buyer.market.call("broken", Vec::new(), &buyer_subject()).await.unwrap_err();
    assert!(matches!(err, MarketError::Refused(ref e) if e.code == ErrorCode::ServiceUnavailable), "{err}");
    assert_eq!(seller.payments.spending(None, None).unwrap().len(), 2);
    assert_eq!(net_flow(&seller), 3 * 1_000);
    assert_eq!(net_flow(&buyer), -3 * 1_000);

    // An underpaid call never reaches the provider; an unknown service is refused as before.
    let net = buyer.market.net().unwrap();
    let channel = sender_channels(&buyer)[0].terms.id;
    let meta =
        OutgoingMeta { subject: buyer_subject(), payee: public(53).to_hex(), memo: String::new(), approval: None };
    let short = buyer.payments.pay(channel, units(1), &meta, machinomy_hub::now()).await.unwrap();
    let asked = forecaster.answered.load(Ordering::SeqCst);
    let call = |service: &str| ServiceCall { service: service.to_owned(), body: Vec::new(), promise: short.clone() };
    let answer = net.call(public(53), call("forecast")).await.unwrap();
    assert!(
        matches!(answer, ServiceResponse::Error(ref e) if e.code == ErrorCode::PaymentRequired && e.required == Some(units(2 * PRICE))),
        "{answer:?}"
    );
    assert_eq!(forecaster.answered.load(Ordering::SeqCst), asked);
    let answer = net.call(public(53), call("astrology")).await.unwrap();
    assert!(matches!(answer, ServiceResponse::Error(ref e) if e.code == ErrorCode::UnknownService), "{answer:?}");
    let err = buyer.market.call("astrology", Vec::new(), &buyer_subject()).await.unwrap_err();
    assert!(matches!(err, MarketError::NoSeller(_)), "{err}");
    buyer.stop().await;
    seller.stop().await;
}
