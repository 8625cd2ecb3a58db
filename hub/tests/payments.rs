//! The payments books end to end in one process: a sender and a receiver hub with their own
//! stores, restarts, and every refusal the receiver must make.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)] // test helpers fail the test

use std::path::Path;
use std::sync::Arc;

use machinomy_core::{
    Amount, ApprovalState, Budget, ChannelId, Currency, DenyReason, Period, PromiseBody, PromiseError, PublicKey,
    SigningKey, SpendOutcome, SpendRequest, Subject, Timestamp, Verdict,
};
use machinomy_hub::ledger::{CreditLedger, LedgerError, Proposal};
use machinomy_hub::payments::{IncomingMeta, OutgoingMeta, PaymentError, PaymentSettings, Payments};
use machinomy_hub::store::{ChannelRecord, Store};

const NOW: Timestamp = Timestamp(1_800_000_000);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(seed: u8) -> PublicKey {
    PublicKey::from(key(seed).verifying_key())
}

async fn books(dir: &Path, seed: u8, budgets: &[Budget]) -> Payments {
    let store = Store::open(dir).unwrap();
    let ledger = Arc::new(CreditLedger::new(public(seed), Currency::usd(), Amount::from_base_units(1_000_000), 60));
    let settings =
        PaymentSettings { approval_ttl_secs: 600, max_pending_approvals: 3, time_zone: jiff::tz::TimeZone::UTC };
    Payments::open(store, key(seed), ledger, settings, budgets).await.unwrap()
}

fn incoming() -> IncomingMeta {
    IncomingMeta { subject: "device:weather".parse().unwrap(), memo: "forecast".to_owned() }
}

fn outgoing(approval: Option<u64>) -> OutgoingMeta {
    OutgoingMeta {
        subject: "plugin:weather-buyer".parse().unwrap(),
        payee: public(2).to_hex(),
        memo: "forecast".to_owned(),
        approval,
    }
}

/// Opens a channel from hub 1 (sender) to hub 2 (receiver) of `capacity`.
async fn open_pair(sender: &Payments, receiver: &Payments, capacity: u128) -> ChannelId {
    let proposal = Proposal {
        channel: ChannelId::from_bytes(rand_id()),
        sender: sender.public_key(),
        capacity: Amount::from_base_units(capacity),
        settlement_period_secs: 3600,
    };
    let terms = receiver.accept_proposal(&proposal, NOW).await.unwrap();
    sender.add_outgoing(terms).await.unwrap();
    proposal.channel
}

fn rand_id() -> [u8; 32] {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).unwrap();
    id
}

#[tokio::test]
async fn a_thousand_payments_agree_on_both_sides_to_the_base_unit() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sender = books(a.path(), 1, &[]).await;
    let receiver = books(b.path(), 2, &[]).await;
    let channel = open_pair(&sender, &receiver, 1_000_000).await;
    let mut expected = Amount::ZERO;
    for i in 1..=1000u128 {
        let increment = Amount::from_base_units(i % 7 + 1);
        expected = expected.checked_add(increment).unwrap();
        let promise = sender.pay(channel, increment, &outgoing(None), NOW).await.unwrap();
        let accepted = receiver.accept(promise, &incoming(), NOW).await.unwrap();
        assert_eq!(accepted.increment, increment);
    }
    let ChannelRecord::Sender(s) = sender.channel(&channel).unwrap() else { panic!("sender side expected") };
    let ChannelRecord::Receiver(r) = receiver.channel(&channel).unwrap() else { panic!("receiver side expected") };
    assert_eq!(s.promised(), expected);
    assert_eq!(r.accepted(), expected);
    let paid: u128 = sender.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    let received: u128 = receiver.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(paid, expected.base_units());
    assert_eq!(received, expected.base_units());
}

#[tokio::test]
async fn acknowledged_promises_survive_a_restart_and_replays_stay_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sender = books(a.path(), 1, &[]).await;
    let channel;
    let last;
    {
        let receiver = books(b.path(), 2, &[]).await;
        channel = open_pair(&sender, &receiver, 1000).await;
        let mut promise = None;
        for _ in 0..5 {
            let p = sender.pay(channel, Amount::from_base_units(10), &outgoing(None), NOW).await.unwrap();
            receiver.accept(p.clone(), &incoming(), NOW).await.unwrap();
            promise = Some(p);
        }
        last = promise.unwrap();
        receiver.store().close().await.unwrap();
    }
    let receiver = books(b.path(), 2, &[]).await;
    let ChannelRecord::Receiver(r) = receiver.channel(&channel).unwrap() else { panic!("receiver side expected") };
    assert_eq!(r.best.as_ref(), Some(&last));
    assert_eq!(r.accepted(), Amount::from_base_units(50));
    let err = receiver.accept(last, &incoming(), NOW).await.unwrap_err();
    assert!(matches!(err, PaymentError::Promise(PromiseError::NotIncreasing { .. })), "{err}");
    assert_eq!(receiver.spending(None, None).unwrap().len(), 5);
}

#[tokio::test]
async fn bad_promises_are_refused_and_change_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sender = books(a.path(), 1, &[]).await;
    let receiver = books(b.path(), 2, &[]).await;
    let channel = open_pair(&sender, &receiver, 100).await;
    let good = sender.pay(channel, Amount::from_base_units(30), &outgoing(None), NOW).await.unwrap();
    receiver.accept(good.clone(), &incoming(), NOW).await.unwrap();

    let sign = |amount: u128, with: u8, channel: ChannelId| {
        PromiseBody {
            ledger: machinomy_core::LedgerId::credit(),
            channel,
            amount: Amount::from_base_units(amount),
            stream: None,
        }
        .sign(&key(with))
    };
    let forged = sign(40, 9, channel);
    assert!(matches!(
        receiver.accept(forged, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::BadSignature(_)))
    ));
    let decreasing = sign(20, 1, channel);
    assert!(matches!(
        receiver.accept(decreasing, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::NotIncreasing { .. }))
    ));
    let over = sign(101, 1, channel);
    assert!(matches!(
        receiver.accept(over, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::AboveCapacity { .. }))
    ));
    let unknown = sign(40, 1, ChannelId::from_bytes([0xee; 32]));
    assert!(matches!(
        receiver.accept(unknown, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::UnknownChannel(_)))
    ));
    assert!(matches!(
        receiver.accept(good, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::NotIncreasing { .. }))
    ));

    let ChannelRecord::Receiver(r) = receiver.channel(&channel).unwrap() else { panic!("receiver side expected") };
    assert_eq!(r.accepted(), Amount::from_base_units(30));
    assert_eq!(receiver.spending(None, None).unwrap().len(), 1);
}

#[tokio::test]
async fn a_proposal_above_the_credit_line_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sender = books(a.path(), 1, &[]).await;
    let receiver = books(b.path(), 2, &[]).await;
    open_pair(&sender, &receiver, 900_000).await;
    let proposal = Proposal {
        channel: ChannelId::from_bytes(rand_id()),
        sender: sender.public_key(),
        capacity: Amount::from_base_units(200_000),
        settlement_period_secs: 3600,
    };
    let err = receiver.accept_proposal(&proposal, NOW).await.unwrap_err();
    assert!(matches!(err, PaymentError::Ledger(LedgerError::CreditLimit { .. })), "{err}");
    assert_eq!(receiver.channels().unwrap().len(), 1);
}

#[tokio::test]
async fn streams_pay_per_tick_and_resume_after_the_sender_restarts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let receiver = books(b.path(), 2, &[]).await;
    let channel;
    {
        let sender = books(a.path(), 1, &[]).await;
        channel = open_pair(&sender, &receiver, 10_000).await;
        let promise = sender
            .open_stream(channel, Amount::from_base_units(100), Amount::from_base_units(5), 60, &outgoing(None), NOW)
            .await
            .unwrap();
        receiver.accept(promise, &incoming(), NOW).await.unwrap();
        for _ in 0..10 {
            let tick = sender.tick(channel, &outgoing(None), NOW).await.unwrap();
            let accepted = receiver.accept_tick(channel, &tick.preimage, &incoming(), NOW).await.unwrap();
            assert_eq!(accepted.increment, Amount::from_base_units(5));
        }
        sender.store().close().await.unwrap();
    }
    let sender = books(a.path(), 1, &[]).await;
    let tick = sender.tick(channel, &outgoing(None), NOW).await.unwrap();
    assert_eq!(tick.index, 11);
    let accepted = receiver.accept_tick(channel, &tick.preimage, &incoming(), NOW).await.unwrap();
    assert_eq!(accepted.total, Amount::from_base_units(155));
    let err = receiver.accept_tick(channel, &[0u8; 32], &incoming(), NOW).await.unwrap_err();
    assert!(err.to_string().contains("preimage"), "{err}");
    let received: u128 = receiver.spending(None, None).unwrap().iter().map(|e| e.amount.base_units()).sum();
    assert_eq!(received, 155);
}

#[tokio::test]
async fn a_resync_keeps_the_ticks_the_receiver_proves_and_a_stream_left_behind_stays_shut_after_a_restart() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let receiver = books(b.path(), 2, &[]).await;
    let channel;
    let units = Amount::from_base_units;
    {
        let sender = books(a.path(), 1, &[]).await;
        channel = open_pair(&sender, &receiver, 10_000).await;
        let opener = sender.open_stream(channel, units(10), units(5), 60, &outgoing(None), NOW).await.unwrap();
        receiver.accept(opener, &incoming(), NOW).await.unwrap();
        for _ in 0..4 {
            let tick = sender.tick(channel, &outgoing(None), NOW).await.unwrap();
            receiver.accept_tick(channel, &tick.preimage, &incoming(), NOW).await.unwrap();
        }
        // A plain payment ends the stream here, and never reaches the receiver.
        sender.pay(channel, units(1), &outgoing(None), NOW).await.unwrap();
        let held = receiver.incoming_state(channel, &public(1)).unwrap();
        assert_eq!(held.tick.map(|t| t.index), Some(4));
        assert_eq!(sender.resync_outgoing(channel, held.best, held.tick, NOW).await.unwrap(), units(30));
        sender.store().close().await.unwrap();
    }
    let sender = books(a.path(), 1, &[]).await;
    let err = sender.tick(channel, &outgoing(None), NOW).await.unwrap_err();
    assert!(err.to_string().contains("not known here"), "{err}");
    let promise = sender.pay(channel, units(3), &outgoing(None), NOW).await.unwrap();
    assert_eq!(receiver.accept(promise, &incoming(), NOW).await.unwrap().increment, units(3));
    // The books agree: the withdrawn payment came back in.
    let flow = |p: &Payments| -> i128 {
        p.spending(None, None)
            .unwrap()
            .iter()
            .map(|e| {
                let amount = i128::try_from(e.amount.base_units()).unwrap();
                if e.direction == machinomy_core::Direction::In { amount } else { -amount }
            })
            .sum()
    };
    assert_eq!((flow(&sender), flow(&receiver)), (-33, 33));
}

#[tokio::test]
async fn closing_records_the_final_amount_for_settlement() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sender = books(a.path(), 1, &[]).await;
    let receiver = books(b.path(), 2, &[]).await;
    let channel = open_pair(&sender, &receiver, 1000).await;
    let p = sender.pay(channel, Amount::from_base_units(77), &outgoing(None), NOW).await.unwrap();
    receiver.accept(p.clone(), &incoming(), NOW).await.unwrap();
    receiver.close(channel, NOW).await.unwrap();
    let settlements = receiver.store().settlements().unwrap();
    assert_eq!(settlements.len(), 1);
    assert_eq!(settlements[0].amount, Amount::from_base_units(77));
    assert!(matches!(
        receiver.accept(p, &incoming(), NOW).await,
        Err(PaymentError::Promise(PromiseError::ChannelClosed(..)))
    ));
    receiver.settle(channel, NOW).await.unwrap();
    assert_eq!(receiver.store().settlements().unwrap()[0].settled_at, Some(NOW));
    // The sender's close waits out the settlement period before it can settle.
    sender.close(channel, NOW).await.unwrap();
    assert!(sender.settle(channel, NOW).await.is_err());
    sender.settle(channel, NOW.saturating_add_secs(3600)).await.unwrap();
}

fn fridge_budget() -> Budget {
    Budget::new(
        Subject::Device("fridge".into()),
        Period::Day,
        Amount::from_base_units(100),
        Amount::from_base_units(20),
    )
    .unwrap()
}

fn request(amount: u128, subject: &str) -> SpendRequest {
    SpendRequest {
        subject: subject.parse().unwrap(),
        payee: "grocer".to_owned(),
        amount: Amount::from_base_units(amount),
        memo: "milk".to_owned(),
        reference: "r".to_owned(),
        created_at: NOW,
    }
}

#[tokio::test]
async fn budgets_approve_small_spends_queue_big_ones_and_never_overrun_without_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let books = books(dir.path(), 1, &[fridge_budget()]).await;
    let small = books.request_spend(request(20, "device:fridge"), NOW).await.unwrap();
    assert!(matches!(small.state, ApprovalState::Approved { ref by, .. } if by == "budget"));
    let big = books.request_spend(request(21, "device:fridge"), NOW).await.unwrap();
    assert!(big.is_pending());
    for _ in 0..3 {
        books.request_spend(request(20, "device:fridge"), NOW).await.unwrap();
    }
    // 80 spent: the next 20 would reach 100 — allowed; then the limit is reached.
    let at_limit = books.request_spend(request(20, "device:fridge"), NOW).await.unwrap();
    assert!(matches!(at_limit.state, ApprovalState::Approved { .. }));
    let over = books.request_spend(request(1, "device:fridge"), NOW).await.unwrap();
    assert!(over.is_pending(), "over the limit must wait for the owner");
    let none = books.request_spend(request(1, "device:toaster"), NOW).await.unwrap();
    assert!(matches!(none.state, ApprovalState::Denied { .. }));

    let decided = books.decide(big.id, Verdict::Approve, "owner", NOW).await.unwrap();
    assert!(matches!(decided.state, ApprovalState::Approved { ref by, at } if by == "owner" && at == NOW));
    assert!(books.decide(big.id, Verdict::Deny { reason: "no".into() }, "owner", NOW).await.is_err());
    assert_eq!(books.spent_this_period(&fridge_budget(), NOW).await.unwrap(), Amount::from_base_units(121));
}

#[tokio::test]
async fn a_day_budget_starts_again_at_the_homes_midnight() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ledger = Arc::new(CreditLedger::new(public(1), Currency::usd(), Amount::from_base_units(1_000_000), 60));
    let pacific = jiff::tz::TimeZone::fixed(jiff::tz::offset(-8));
    let settings = PaymentSettings { approval_ttl_secs: 600, max_pending_approvals: 3, time_zone: pacific };
    let books = Payments::open(store, key(1), ledger, settings, &[fridge_budget()]).await.unwrap();
    // 2026-11-24 07:00 UTC is 23:00 on the 23rd in the home; its midnight is 08:00 UTC.
    let home_midnight = Timestamp::from_civil(2026, 11, 24).saturating_add_secs(8 * 3_600);
    let late_evening = Timestamp(home_midnight.secs() - 3_600);
    let at = |amount, when| SpendRequest { created_at: when, ..request(amount, "device:fridge") };
    for _ in 0..5 {
        let approval = books.request_spend(at(20, late_evening), late_evening).await.unwrap();
        assert!(matches!(approval.state, ApprovalState::Approved { .. }));
    }
    let before_midnight = Timestamp(home_midnight.secs() - 1);
    assert!(books.request_spend(at(1, before_midnight), before_midnight).await.unwrap().is_pending());
    // The same UTC day, but a new day at home: the budget has room again.
    let after_midnight = home_midnight.saturating_add_secs(60);
    let approval = books.request_spend(at(20, after_midnight), after_midnight).await.unwrap();
    assert!(matches!(approval.state, ApprovalState::Approved { ref by, .. } if by == "budget"));
    assert_eq!(books.spent_this_period(&fridge_budget(), after_midnight).await.unwrap(), Amount::from_base_units(20));
    let next_midnight = home_midnight.saturating_add_secs(86_400);
    assert_eq!(books.period_bounds(Period::Day, after_midnight), (home_midnight, next_midnight));
}

#[tokio::test]
async fn the_pending_queue_is_bounded_and_pending_requests_expire() {
    let dir = tempfile::tempdir().unwrap();
    let books = books(dir.path(), 1, &[fridge_budget()]).await;
    for _ in 0..3 {
        assert!(books.request_spend(request(50, "device:fridge"), NOW).await.unwrap().is_pending());
    }
    let fourth = books.request_spend(request(50, "device:fridge"), NOW).await.unwrap();
    assert!(
        matches!(fourth.state, ApprovalState::Denied { ref reason, .. } if reason == &DenyReason::TooManyPending.to_string())
    );
    let expired = books.expire_due(NOW.saturating_add_secs(600)).await.unwrap();
    assert_eq!(expired.len(), 3);
    let err = books.decide(expired[0].id, Verdict::Approve, "owner", NOW.saturating_add_secs(601)).await.unwrap_err();
    assert!(err.to_string().contains("already decided") || err.to_string().contains("expired"), "{err}");
    assert!(books.approvals(true, NOW.saturating_add_secs(601)).await.unwrap().is_empty());
}

#[tokio::test]
async fn decisions_and_pending_requests_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (approved, pending);
    {
        let books = books(dir.path(), 1, &[fridge_budget()]).await;
        approved = books.request_spend(request(50, "device:fridge"), NOW).await.unwrap();
        pending = books.request_spend(request(60, "device:fridge"), NOW).await.unwrap();
        books.decide(approved.id, Verdict::Approve, "owner", NOW).await.unwrap();
        books.store().close().await.unwrap();
    }
    let books = books(dir.path(), 1, &[]).await;
    assert_eq!(books.budgets().unwrap(), vec![fridge_budget()]);
    let all = books.approvals(false, NOW).await.unwrap();
    assert_eq!(all.len(), 2);
    let decided = all.iter().find(|a| a.id == approved.id).unwrap();
    assert!(matches!(decided.state, ApprovalState::Approved { ref by, .. } if by == "owner"));
    // Approved but not paid when the hub stopped: nothing pays it now, so it holds no budget.
    assert!(
        matches!(&decided.outcome, Some(SpendOutcome::Failed { reason, .. }) if reason == "the hub stopped before paying it"),
        "{decided:?}"
    );
    assert_eq!(books.spent_this_period(&fridge_budget(), NOW).await.unwrap(), Amount::ZERO);
    let still_pending = books.approvals(true, NOW).await.unwrap();
    assert_eq!(still_pending.iter().map(|a| a.id).collect::<Vec<_>>(), vec![pending.id]);
    let next = books.request_spend(request(1, "device:fridge"), NOW).await.unwrap();
    assert!(next.id > pending.id, "approval ids are never reused");
}

#[tokio::test]
async fn paying_an_approval_marks_it_paid_once_and_failures_release_the_budget() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let budget = Budget::new(
        "plugin:weather-buyer".parse().unwrap(),
        Period::Day,
        Amount::from_base_units(100),
        Amount::from_base_units(50),
    )
    .unwrap();
    let sender = books(a.path(), 1, std::slice::from_ref(&budget)).await;
    let receiver = books(b.path(), 2, &[]).await;
    let channel = open_pair(&sender, &receiver, 1000).await;
    let approval = sender.request_spend(request(40, "plugin:weather-buyer"), NOW).await.unwrap();
    sender.pay(channel, Amount::from_base_units(40), &outgoing(Some(approval.id)), NOW).await.unwrap();
    let paid = sender.approval(approval.id, NOW).await.unwrap();
    assert!(matches!(paid.outcome, Some(SpendOutcome::Paid { channel: Some(c), .. }) if c == channel));
    let again = sender.pay(channel, Amount::from_base_units(40), &outgoing(Some(approval.id)), NOW).await.unwrap_err();
    assert!(matches!(again, PaymentError::NotPayable(_)), "{again}");

    let failing = sender.request_spend(request(50, "plugin:weather-buyer"), NOW).await.unwrap();
    assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(90));
    sender.spend_failed(failing.id, "no route to payee", NOW).await.unwrap();
    assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(40));
}

#[tokio::test]
async fn a_budget_approval_is_durable_with_its_payment_and_an_unpaid_one_moves_no_money() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let budget = Budget::new(
        "plugin:weather-buyer".parse().unwrap(),
        Period::Day,
        Amount::from_base_units(100),
        Amount::from_base_units(50),
    )
    .unwrap();
    let receiver = books(b.path(), 2, &[]).await;
    let (paid, unpaid);
    {
        let sender = books(a.path(), 1, std::slice::from_ref(&budget)).await;
        let channel = open_pair(&sender, &receiver, 1000).await;
        paid = sender.request_spend(request(30, "plugin:weather-buyer"), NOW).await.unwrap();
        unpaid = sender.request_spend(request(20, "plugin:weather-buyer"), NOW).await.unwrap();
        sender.pay(channel, Amount::from_base_units(30), &outgoing(Some(paid.id)), NOW).await.unwrap();
        // Before the restart the unpaid approval is listed, and its amount is spoken for.
        let listed: Vec<u64> = sender.approvals(false, NOW).await.unwrap().iter().map(|a| a.id).collect();
        assert_eq!(listed, vec![unpaid.id, paid.id]);
        assert_eq!(sender.approval(unpaid.id, NOW).await.unwrap().request.amount, Amount::from_base_units(20));
        assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(50));
        sender.store().close().await.unwrap();
    }
    let sender = books(a.path(), 1, std::slice::from_ref(&budget)).await;
    let after: Vec<_> = sender.approvals(false, NOW).await.unwrap();
    assert_eq!(after.len(), 1, "only the approval that paid is on disk");
    assert!(matches!(after[0].outcome, Some(SpendOutcome::Paid { .. })));
    assert!(matches!(sender.approval(unpaid.id, NOW).await, Err(PaymentError::UnknownApproval(_))));
    assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(30));
}

#[tokio::test]
async fn a_spend_paid_for_less_than_asked_takes_only_what_it_paid_from_the_budget() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let budget = fridge_budget();
    let receiver = books(b.path(), 2, &[]).await;
    {
        let sender = books(a.path(), 1, std::slice::from_ref(&budget)).await;
        let channel = open_pair(&sender, &receiver, 1000).await;
        // Up to 20 asked (the most the buyer would pay); the seller's price was 8.
        let approval = sender.request_spend(request(20, "device:fridge"), NOW).await.unwrap();
        assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(20));
        sender.pay(channel, Amount::from_base_units(8), &outgoing(Some(approval.id)), NOW).await.unwrap();
        assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(8));
        let paid = sender.approval(approval.id, NOW).await.unwrap();
        assert!(
            matches!(paid.outcome, Some(SpendOutcome::Paid { amount: Some(a), .. }) if a == Amount::from_base_units(8))
        );
        sender.store().close().await.unwrap();
    }
    let sender = books(a.path(), 1, std::slice::from_ref(&budget)).await;
    assert_eq!(sender.spent_this_period(&budget, NOW).await.unwrap(), Amount::from_base_units(8));
}
