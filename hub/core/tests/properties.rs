//! Properties of the money rules, over random sequences a peer or a device could send.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use machinomy_core::promise::{MAX_STREAM_TICKS, PROMISE_DOMAIN};
use machinomy_core::spending::spent_since;
use machinomy_core::{
    Amount, AmountError, Approval, ApprovalState, BUDGET_PRINCIPAL, Budget, ChannelId, ChannelStatus, ChannelTerms,
    Decision, Direction, HashChain, LedgerId, Period, Promise, PromiseBody, PublicKey, ReceiverChannel, SenderChannel,
    SigningKey, SpendOutcome, SpendRequest, SpendingEntry, StreamTerms, Subject, Timestamp, Utc, Verdict,
    committed_since, evaluate,
};
use proptest::prelude::*;

const CAPACITY: u128 = 10_000;

fn sender_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn forger_key() -> SigningKey {
    SigningKey::from_bytes(&[66; 32])
}

fn channel_id() -> ChannelId {
    ChannelId::from_bytes([7; 32])
}

fn terms() -> ChannelTerms {
    ChannelTerms {
        id: channel_id(),
        ledger: LedgerId::credit(),
        sender: PublicKey::from(sender_key().verifying_key()),
        receiver: PublicKey::from(SigningKey::from_bytes(&[2; 32]).verifying_key()),
        capacity: Amount::from_base_units(CAPACITY),
        settlement_period_secs: 60,
        opened_at: Timestamp(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver channels under random promises and ticks
// ---------------------------------------------------------------------------------------------

/// How a promise's amount is picked: near what was accepted (to hit the boundaries) or anywhere.
#[derive(Debug, Clone)]
enum Target {
    Relative(i64),
    Absolute(u128),
}

#[derive(Debug, Clone)]
enum Op {
    Promise { target: Target, forged: bool, wrong_channel: bool, wrong_ledger: bool, stream: Option<(u128, u64, u8)> },
    Tick { honest: bool },
    TopUp(u128),
    Close,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => (-50i64..400).prop_map(Target::Relative),
        1 => (0u128..=CAPACITY + 100).prop_map(Target::Absolute),
        1 => any::<u128>().prop_map(Target::Absolute),
    ]
}

fn stream_terms() -> impl Strategy<Value = Option<(u128, u64, u8)>> {
    prop_oneof![
        3 => Just(None),
        2 => (0u128..200, 1u64..8, any::<u8>()).prop_map(Some),
        1 => (prop_oneof![Just(0u128), Just(u128::MAX), 0u128..5], prop_oneof![Just(0u64), Just(MAX_STREAM_TICKS + 1), 1u64..4], any::<u8>()).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (target(), prop::bool::weighted(0.1), prop::bool::weighted(0.05), prop::bool::weighted(0.05), stream_terms())
            .prop_map(|(target, forged, wrong_channel, wrong_ledger, stream)| Op::Promise { target, forged, wrong_channel, wrong_ledger, stream }),
        10 => prop::bool::weighted(0.85).prop_map(|honest| Op::Tick { honest }),
        2 => (0u128..500).prop_map(Op::TopUp),
        1 => Just(Op::Close),
    ]
}

/// Everything the properties check about one run, recomputed independently of the channel.
#[derive(Debug, Default)]
struct Ledger {
    increments: u128,
    last_promise: Option<u128>,
    total: u128,
}

fn run_receiver(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut channel = ReceiverChannel::new(terms());
    let mut chains: HashMap<[u8; 32], HashChain> = HashMap::new();
    let mut seen = Ledger::default();
    for op in ops {
        let before = channel.clone();
        let changed;
        match op {
            Op::Promise { target, forged, wrong_channel, wrong_ledger, stream } => {
                let last = channel.accepted().base_units();
                let amount = match target {
                    Target::Relative(delta) => {
                        if *delta < 0 {
                            last.saturating_sub(delta.unsigned_abs().into())
                        } else {
                            last.saturating_add(*delta as u128)
                        }
                    }
                    Target::Absolute(amount) => *amount,
                };
                let stream = stream.and_then(|(price, max_ticks, seed)| {
                    // Sometimes the chain is longer than the ticks signed for: the extra links
                    // hash correctly but must not be paid.
                    let chain_len = max_ticks.saturating_add(u64::from(seed % 3));
                    let root = match HashChain::new([seed; 32], chain_len) {
                        Ok(chain) => {
                            let root = chain.root();
                            chains.insert(root, chain);
                            root
                        }
                        Err(_) => [seed; 32],
                    };
                    Some(StreamTerms { root, price_per_tick: Amount::from_base_units(price), max_ticks })
                });
                let body = PromiseBody {
                    ledger: if *wrong_ledger { LedgerId::new("ethereum:1:0xabc").unwrap() } else { LedgerId::credit() },
                    channel: if *wrong_channel { ChannelId::from_bytes([8; 32]) } else { channel_id() },
                    amount: Amount::from_base_units(amount),
                    stream,
                };
                let ceiling = match &body.stream {
                    None => Some(amount),
                    Some(s) if (1..=MAX_STREAM_TICKS).contains(&s.max_ticks) => s
                        .price_per_tick
                        .base_units()
                        .checked_mul(u128::from(s.max_ticks))
                        .and_then(|t| t.checked_add(amount)),
                    Some(_) => None,
                };
                let should_accept = !forged
                    && !wrong_channel
                    && !wrong_ledger
                    && channel.status.is_open()
                    && amount > last
                    && ceiling.is_some_and(|c| c <= channel.terms.capacity.base_units());
                let signer = if *forged { forger_key() } else { sender_key() };
                let promise = body.sign(&signer);
                let result = channel.accept(promise.clone());
                changed = result.is_ok();
                prop_assert_eq!(result.is_ok(), should_accept, "{:?} on {:?}", result, before);
                if let Ok(acceptance) = result {
                    // Accepted amounts strictly increase.
                    prop_assert!(acceptance.total.base_units() > seen.total);
                    if let Some(previous) = seen.last_promise {
                        prop_assert!(amount > previous);
                    }
                    prop_assert_eq!(acceptance.total.base_units(), amount);
                    prop_assert_eq!(acceptance.increment.base_units(), amount - seen.total);
                    prop_assert_eq!(channel.best.as_ref(), Some(&promise));
                    seen.increments += acceptance.increment.base_units();
                    seen.last_promise = Some(amount);
                    seen.total = amount;
                }
            }
            Op::Tick { honest } => {
                let preimage = match (&channel.stream, honest) {
                    (Some(stream), true) => chains
                        .get(&stream.terms.root)
                        .and_then(|chain| chain.tick(stream.ticks + 1))
                        .map_or([0xee; 32], |tick| tick.preimage),
                    _ => [0xee; 32],
                };
                let expected = channel
                    .stream
                    .as_ref()
                    .filter(|s| *honest && channel.status.is_open() && s.ticks < s.terms.max_ticks)
                    .map(|s| s.terms.price_per_tick.base_units());
                let result = channel.accept_tick(&preimage);
                changed = result.is_ok();
                prop_assert_eq!(result.is_ok(), expected.is_some(), "{:?} on {:?}", result, before);
                if let Ok(acceptance) = result {
                    prop_assert_eq!(Some(acceptance.increment.base_units()), expected);
                    prop_assert!(acceptance.total.base_units() >= seen.total);
                    seen.increments += acceptance.increment.base_units();
                    seen.total = acceptance.total.base_units();
                }
            }
            Op::TopUp(extra) => {
                let result = channel.top_up(Amount::from_base_units(*extra));
                changed = result.is_ok();
                prop_assert_eq!(result.is_ok(), before.status.is_open());
            }
            Op::Close => {
                let result = channel.close(Timestamp(100));
                changed = result.is_ok();
                prop_assert_eq!(result.is_ok(), before.status.is_open());
                if let Ok(final_amount) = result {
                    prop_assert_eq!(final_amount.base_units(), seen.total);
                }
            }
        }
        // Whatever was refused left the channel exactly as it was.
        if !changed {
            prop_assert_eq!(&channel, &before, "a refused {:?} changed the channel", op);
        }
        // The accepted total is never above capacity.
        prop_assert!(channel.accepted() <= channel.terms.capacity);
        // The sum of the increments is everything accepted, ticks included.
        prop_assert_eq!(channel.accepted().base_units(), seen.increments);
        prop_assert_eq!(seen.total, seen.increments);
        // And that is the best promise plus its stream's ticks.
        let from_best = match (&channel.best, &channel.stream) {
            (Some(best), Some(stream)) => {
                best.body.amount.base_units() + stream.terms.price_per_tick.base_units() * u128::from(stream.ticks)
            }
            (Some(best), None) => best.body.amount.base_units(),
            (None, _) => 0,
        };
        prop_assert_eq!(from_best, seen.increments);
    }
    Ok(())
}

proptest! {
    // Each case signs and verifies dozens of promises, slow in a debug build: fewer, longer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Accepted promises strictly increase, the total never passes capacity, and the sum of the
    /// increments (ticks included) is always what the best promise and its ticks are worth.
    #[test]
    fn receiver_channel_money_invariants_hold(ops in prop::collection::vec(op(), 1..40)) {
        run_receiver(&ops)?;
    }
}

#[derive(Debug, Clone)]
enum SenderOp {
    Pay(u128),
    OpenStream {
        increment: u128,
        price: u128,
        max_ticks: u64,
        seed: u8,
    },
    Tick,
    /// The sender restarts: its state goes through JSON, and the hash chain is rebuilt from the seed.
    Restore,
}

fn sender_op() -> impl Strategy<Value = SenderOp> {
    prop_oneof![
        3 => prop_oneof![0u128..600, Just(CAPACITY + 1)].prop_map(SenderOp::Pay),
        2 => (0u128..300, 0u128..300, 1u64..12, any::<u8>())
            .prop_map(|(increment, price, max_ticks, seed)| SenderOp::OpenStream { increment, price, max_ticks, seed }),
        6 => Just(SenderOp::Tick),
        1 => Just(SenderOp::Restore),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Everything an honest sender produces, the receiver accepts, paying exactly what the sender
    /// meant; and both sides always agree on the total, across sender restarts.
    #[test]
    fn receiver_accepts_exactly_what_the_sender_pays(ops in prop::collection::vec(sender_op(), 1..40)) {
        let key = sender_key();
        let mut sending = SenderChannel::new(terms());
        let mut receiving = ReceiverChannel::new(terms());
        for op in &ops {
            let before = sending.promised();
            match op {
                SenderOp::Pay(increment) => {
                    if let Ok(promise) = sending.pay(Amount::from_base_units(*increment), &key) {
                        let acceptance = receiving.accept(promise);
                        prop_assert_eq!(acceptance.map(|a| a.increment.base_units()), Ok(*increment));
                    } else {
                        prop_assert!(*increment == 0 || before.base_units() + increment > CAPACITY);
                    }
                }
                SenderOp::OpenStream { increment, price, max_ticks, seed } => {
                    let opened = sending.open_stream(
                        Amount::from_base_units(*increment),
                        Amount::from_base_units(*price),
                        *max_ticks,
                        [*seed; 32],
                        &key,
                    );
                    if let Ok(promise) = opened {
                        let acceptance = receiving.accept(promise);
                        prop_assert_eq!(acceptance.map(|a| a.increment.base_units()), Ok(*increment));
                    } else {
                        let ceiling = before.base_units() + increment + price * u128::from(*max_ticks);
                        prop_assert!(*increment == 0 || ceiling > CAPACITY);
                    }
                }
                SenderOp::Tick => match sending.next_tick() {
                    Ok(tick) => {
                        let acceptance = receiving.accept_tick(&tick.preimage);
                        let price = sending.stream.as_ref().map(|s| s.terms.price_per_tick.base_units());
                        prop_assert_eq!(acceptance.map(|a| a.increment.base_units()).ok(), price);
                    }
                    Err(_) => {
                        let exhausted = sending.stream.as_ref().is_none_or(|s| s.ticks_sent == s.terms.max_ticks);
                        prop_assert!(exhausted);
                    }
                },
                SenderOp::Restore => {
                    let json = serde_json::to_string(&sending).unwrap();
                    sending = serde_json::from_str(&json).unwrap();
                }
            }
            prop_assert_eq!(sending.promised(), receiving.accepted());
            prop_assert!(sending.promised() <= sending.terms.capacity);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Budgets: nothing is spent past a limit without the owner
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ask {
    amount: u128,
    gap_secs: u64,
    owner_approves: bool,
    owner_delay_secs: u64,
    payment_fails: bool,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        prop_oneof![4 => 0u128..300, 1 => 0u128..3_000],
        prop_oneof![3 => 0u64..3_600, 1 => 0u64..4 * 86_400],
        prop::bool::weighted(0.5),
        0u64..1_200,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(amount, gap_secs, owner_approves, owner_delay_secs, payment_fails)| Ask {
            amount,
            gap_secs,
            owner_approves,
            owner_delay_secs,
            payment_fails,
        })
}

fn period() -> impl Strategy<Value = Period> {
    prop_oneof![Just(Period::Day), Just(Period::Week), Just(Period::Month)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever devices ask, the spending approved without the owner stays within each period's
    /// limit, and each such payment is within the auto-approve threshold. Requests go through
    /// `evaluate` as the hub does: what was committed this period comes from the approvals so far.
    #[test]
    fn no_budget_is_exceeded_without_the_owner(
        limit in 0u128..2_000,
        threshold_percent in 0u128..=100,
        period in period(),
        start in 0u64..4_000_000_000,
        asks in prop::collection::vec(ask(), 1..80),
    ) {
        const TTL: u64 = 600;
        let subject: Subject = "device:fridge".parse().unwrap();
        let budget = Budget::new(
            subject.clone(),
            period,
            Amount::from_base_units(limit),
            Amount::from_base_units(limit * threshold_percent / 100),
        )
        .unwrap();
        let mut approvals: Vec<Approval> = Vec::new();
        let mut entries: Vec<SpendingEntry> = Vec::new();
        let mut now = Timestamp(start);
        for (id, ask) in asks.iter().enumerate() {
            now = now.saturating_add_secs(ask.gap_secs);
            let committed = committed_since(&approvals, &subject, period.start(now, &Utc)).unwrap();
            let request = SpendRequest {
                subject: subject.clone(),
                payee: "grocer".into(),
                amount: Amount::from_base_units(ask.amount),
                memo: String::new(),
                reference: format!("r-{id}"),
                created_at: now,
            };
            let decision = evaluate(Some(&budget), committed, &request, now, TTL);
            let mut approval = Approval::from_decision(id as u64, request.clone(), &decision, now);
            match decision {
                Decision::Approved => {
                    prop_assert!(request.amount <= budget.auto_approve);
                    prop_assert!(committed.base_units() + ask.amount <= limit);
                    prop_assert_eq!(&approval.state, &ApprovalState::Approved { by: BUDGET_PRINCIPAL.into(), at: now });
                }
                Decision::Pending { expires_at } => {
                    prop_assert_eq!(expires_at, now.saturating_add_secs(TTL));
                    prop_assert!(ask.amount > budget.auto_approve.base_units() || committed.base_units() + ask.amount > limit);
                    prop_assert!(approval.is_pending());
                    if ask.owner_approves {
                        let decided_at = now.saturating_add_secs(ask.owner_delay_secs);
                        let result = approval.decide(Verdict::Approve, "owner", decided_at);
                        prop_assert_eq!(result.is_ok(), decided_at < expires_at);
                        now = decided_at;
                    }
                }
                Decision::Denied { reason } => {
                    prop_assert_eq!(ask.amount, 0, "denied {:?}", reason);
                    prop_assert!(!approval.counts_against_budget());
                }
            }
            if approval.counts_against_budget() {
                if ask.payment_fails {
                    approval.outcome = Some(SpendOutcome::Failed { at: now, reason: "no route".into() });
                    prop_assert!(!approval.counts_against_budget());
                } else {
                    approval.outcome = Some(SpendOutcome::Paid { at: now, channel: None, amount: None });
                    entries.push(SpendingEntry {
                        at: approval.request.created_at,
                        direction: Direction::Out,
                        subject: subject.clone(),
                        counterparty: "grocer".into(),
                        amount: request.amount,
                        memo: String::new(),
                        channel: None,
                        approval: Some(approval.id),
                    });
                }
            }
            approvals.push(approval);
        }
        // Per period: what the budget approved by itself (and was not refunded) is within the limit.
        let mut auto_by_period: BTreeMap<Timestamp, u128> = BTreeMap::new();
        let mut owner_total = 0u128;
        for approval in approvals.iter().filter(|a| a.counts_against_budget()) {
            match &approval.state {
                ApprovalState::Approved { by, .. } if by == BUDGET_PRINCIPAL => {
                    *auto_by_period.entry(period.start(approval.request.created_at, &Utc)).or_default() += approval.request.amount.base_units();
                }
                _ => owner_total += approval.request.amount.base_units(),
            }
        }
        for (period_start, auto) in &auto_by_period {
            prop_assert!(*auto <= limit, "{} auto-approved in the period from {:?}, limit {}", auto, period_start, limit);
        }
        // The spending ledger agrees with the approvals.
        let paid = spent_since(&entries, &subject, Timestamp(0)).unwrap().base_units();
        prop_assert_eq!(paid, auto_by_period.values().sum::<u128>() + owner_total);
    }

    /// A period contains the instant it is asked about and lasts one day, one week or one month
    /// of the home's clock, from its midnight (a fixed offset here, -12:00 to +14:00).
    #[test]
    fn periods_contain_their_instant(secs in 0u64..253_402_300_799, period in period(), quarter_hours in -48i32..=56) {
        let offset = quarter_hours * 900;
        let zone = move |_: Timestamp| offset;
        let now = Timestamp(secs);
        let (start, end) = (period.start(now, &zone), period.end(now, &zone));
        prop_assert!(start <= now && now < end, "{:?} {:?} {:?}", start, now, end);
        // Clamped at the epoch, the first period is cut short.
        let from_the_epoch = start == Timestamp(0);
        prop_assert!((start.secs() as i64 + i64::from(offset)) % 86_400 == 0 || from_the_epoch);
        prop_assert_eq!((end.secs() as i64 + i64::from(offset)) % 86_400, 0);
        let days = (end.secs() - start.secs()) / 86_400;
        match period {
            Period::Day => prop_assert!(days == 1 || from_the_epoch),
            Period::Week => prop_assert!(days == 7 || from_the_epoch),
            Period::Month => prop_assert!((28..=31).contains(&days) || from_the_epoch),
        }
        prop_assert_eq!(period.start(start, &zone), start);
        prop_assert_eq!(period.start(Timestamp(end.secs() - 1), &zone), start);
    }

    #[test]
    fn periods_never_panic(secs in any::<u64>(), period in period()) {
        prop_assert!(period.start(Timestamp(secs), &Utc) <= period.end(Timestamp(secs), &Utc));
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical encodings round-trip
// ---------------------------------------------------------------------------------------------

fn ledger_id() -> impl Strategy<Value = LedgerId> {
    "[a-z0-9:._-]{1,64}".prop_map(|s| LedgerId::new(&s).unwrap())
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![any::<u128>(), 0u128..1_000_000, Just(u128::MAX), Just(0)].prop_map(Amount::from_base_units)
}

fn promise_body() -> impl Strategy<Value = PromiseBody> {
    let stream = prop::option::of(
        (any::<[u8; 32]>(), amount(), any::<u64>()).prop_map(|(root, price_per_tick, max_ticks)| StreamTerms {
            root,
            price_per_tick,
            max_ticks,
        }),
    );
    (ledger_id(), any::<[u8; 32]>(), amount(), stream).prop_map(|(ledger, channel, amount, stream)| PromiseBody {
        ledger,
        channel: ChannelId::from_bytes(channel),
        amount,
        stream,
    })
}

fn subject() -> impl Strategy<Value = Subject> {
    ("[a-zA-Z0-9_.-]{1,64}", 0..3).prop_map(|(name, kind)| match kind {
        0 => Subject::Device(name),
        1 => Subject::Plugin(name),
        _ => Subject::Peer(name),
    })
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}

fn channel_status() -> impl Strategy<Value = ChannelStatus> {
    prop_oneof![
        Just(ChannelStatus::Open),
        (timestamp(), timestamp(), amount()).prop_map(|(since, settle_after, final_amount)| ChannelStatus::Closing {
            since,
            settle_after,
            final_amount
        }),
        (timestamp(), amount()).prop_map(|(at, amount)| ChannelStatus::Settled { at, amount }),
    ]
}

fn approval() -> impl Strategy<Value = Approval> {
    let state = prop_oneof![
        Just(ApprovalState::Pending),
        (".{0,20}", timestamp()).prop_map(|(by, at)| ApprovalState::Approved { by, at }),
        (".{0,20}", timestamp(), ".{0,40}").prop_map(|(by, at, reason)| ApprovalState::Denied { by, at, reason }),
        timestamp().prop_map(|at| ApprovalState::Expired { at }),
    ];
    let request = (subject(), ".{0,20}", amount(), ".{0,40}", ".{0,20}", timestamp()).prop_map(
        |(subject, payee, amount, memo, reference, created_at)| SpendRequest {
            subject,
            payee,
            amount,
            memo,
            reference,
            created_at,
        },
    );
    let outcome = prop::option::of(prop_oneof![
        (timestamp(), prop::option::of(any::<[u8; 32]>().prop_map(ChannelId::from_bytes)))
            .prop_map(|(at, channel)| SpendOutcome::Paid { at, channel, amount: None }),
        (timestamp(), ".{0,40}").prop_map(|(at, reason)| SpendOutcome::Failed { at, reason }),
    ]);
    (any::<u64>(), request, timestamp(), state, outcome)
        .prop_map(|(id, request, expires_at, state, outcome)| Approval { id, request, expires_at, state, outcome })
}

proptest! {
    #[test]
    fn promise_bodies_round_trip_through_canonical_bytes(body in promise_body()) {
        let bytes = body.canonical_bytes();
        prop_assert!(bytes.starts_with(PROMISE_DOMAIN));
        prop_assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Ok(body));
    }

    #[test]
    fn distinct_promise_bodies_have_distinct_canonical_bytes(a in promise_body(), b in promise_body()) {
        prop_assert_eq!(a == b, a.canonical_bytes() == b.canonical_bytes());
    }

    #[test]
    fn amounts_round_trip_through_decimal_text(units in any::<u128>(), decimals in 0u8..=38) {
        let amount = Amount::from_base_units(units);
        let text = amount.format_decimal(decimals);
        prop_assert_eq!(Amount::parse_decimal(&text, decimals), Ok(amount));
        // Canonical text: no dangling point, no trailing zeros in a fraction.
        let dangling = text.ends_with('.');
        let trailing_zero = text.contains('.') && text.ends_with('0');
        prop_assert!(!dangling && !trailing_zero, "{}", text);
        prop_assert_eq!(amount.to_string().parse::<Amount>(), Ok(amount));
    }

    /// `parse_decimal` agrees with an independent reading of the digits: exact, or refused as
    /// too precise, or refused as too large.
    #[test]
    fn decimal_parsing_matches_a_digit_string_oracle(text in "[0-9]{1,42}(\\.[0-9]{0,42}0{0,3})?", decimals in 0u8..=38) {
        let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
        let significant = fraction.trim_end_matches('0');
        let expected = if text.ends_with('.') {
            Err(AmountError::NotDecimal(text.clone()))
        } else if significant.len() > usize::from(decimals) {
            Err(AmountError::TooPrecise { input: text.clone(), decimals })
        } else {
            let digits = format!("{whole}{significant:0<width$}", width = usize::from(decimals));
            let digits = digits.trim_start_matches('0');
            if digits.is_empty() {
                Ok(Amount::ZERO)
            } else {
                digits.parse::<u128>().map(Amount::from_base_units).map_err(|_| AmountError::Overflow)
            }
        };
        prop_assert_eq!(Amount::parse_decimal(&text, decimals), expected);
    }

    #[test]
    fn parsed_decimals_format_back_to_the_same_value(text in "[0-9]{1,30}(\\.[0-9]{1,40})?", decimals in 0u8..=38) {
        if let Ok(amount) = Amount::parse_decimal(&text, decimals) {
            let formatted = amount.format_decimal(decimals);
            prop_assert_eq!(Amount::parse_decimal(&formatted, decimals), Ok(amount));
            // Same number: equal once leading zeros of the whole part and trailing zeros of the fraction go.
            let normalize = |s: &str| {
                let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
                let whole = whole.trim_start_matches('0');
                (if whole.is_empty() { "0".to_owned() } else { whole.to_owned() }, fraction.trim_end_matches('0').to_owned())
            };
            prop_assert_eq!(normalize(&formatted), normalize(&text));
        }
    }

    #[test]
    fn budgets_round_trip_through_json(subject in subject(), period in period(), limit in amount(), auto in amount()) {
        let (limit, auto) = if auto <= limit { (limit, auto) } else { (auto, limit) };
        let budget = Budget::new(subject, period, limit, auto).unwrap();
        let json = serde_json::to_string(&budget).unwrap();
        prop_assert_eq!(serde_json::from_str::<Budget>(&json).unwrap(), budget);
    }

    #[test]
    fn approvals_round_trip_through_json(approval in approval()) {
        let json = serde_json::to_string(&approval).unwrap();
        prop_assert_eq!(serde_json::from_str::<Approval>(&json).unwrap(), approval);
    }

    #[test]
    fn channel_statuses_round_trip_through_json(status in channel_status()) {
        let json = serde_json::to_string(&status).unwrap();
        prop_assert_eq!(serde_json::from_str::<ChannelStatus>(&json).unwrap(), status);
    }

    #[test]
    fn subjects_round_trip_through_text(subject in subject()) {
        prop_assert_eq!(subject.to_string().parse::<Subject>(), Ok(subject));
    }
}

proptest! {
    // Signing is slow in a debug build; the encodings themselves are covered above.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn promises_round_trip_through_json(body in promise_body()) {
        let promise = body.sign(&sender_key());
        let json = serde_json::to_string(&promise).unwrap();
        let back: Promise = serde_json::from_str(&json).unwrap();
        prop_assert!(back.verify(&PublicKey::from(sender_key().verifying_key())).is_ok());
        prop_assert_eq!(back, promise);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding what a peer sends never panics
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = PromiseBody::from_canonical_bytes(&bytes);
    }

    #[test]
    fn decoding_damaged_promises_never_panics_and_never_yields_another_body(
        body in promise_body(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut bytes = body.canonical_bytes();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        let cut = cut.index(bytes.len() + 1);
        bytes.truncate(cut);
        bytes.extend_from_slice(&extra);
        if let Ok(decoded) = PromiseBody::from_canonical_bytes(&bytes) {
            // Whatever decodes is canonical: it encodes back to exactly these bytes.
            prop_assert_eq!(decoded.canonical_bytes(), bytes);
        }
    }

    #[test]
    fn parsing_random_text_never_panics(text in "\\PC{0,60}", decimals in any::<u8>()) {
        let _ = text.parse::<Amount>();
        let _ = Amount::parse_decimal(&text, decimals);
        let _ = text.parse::<Subject>();
        let _ = text.parse::<ChannelId>();
        let _ = text.parse::<Period>();
        let _ = LedgerId::new(&text);
    }

    #[test]
    fn parsing_number_like_text_never_panics(text in "[0-9.+\\- e]{0,80}", decimals in 0u8..=40) {
        if let Ok(amount) = Amount::parse_decimal(&text, decimals) {
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            prop_assert_eq!(Amount::parse_decimal(&amount.format_decimal(decimals), decimals), Ok(amount));
        }
        if let Ok(amount) = text.parse::<Amount>() {
            let digits = text.trim_start_matches('0');
            prop_assert_eq!(amount.to_string(), if digits.is_empty() { "0" } else { digits });
        }
    }

    #[test]
    fn parsing_subject_like_text_never_panics(text in "(device|plugin|peer|x)?:?[a-zA-Z0-9_.:/ -]{0,70}") {
        if let Ok(subject) = text.parse::<Subject>() {
            prop_assert_eq!(subject.to_string(), text);
        }
    }
}
