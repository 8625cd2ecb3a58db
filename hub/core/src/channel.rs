//! One-way payment channels: the sender's and the receiver's state machines.
//!
//! ```text
//!   open ──pay/accept──▶ open ──close──▶ closing ──settle (after the period)──▶ settled
//! ```
//! Every transition is a method that either returns the new facts or a typed error and leaves
//! the state untouched, so the caller can persist exactly what changed.

use std::sync::OnceLock;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::ids::{ChannelId, LedgerId, PublicKey};
use crate::promise::{BadSignature, MAX_STREAM_TICKS, Promise, PromiseBody, StreamTerms};
use crate::stream::{HashChain, StreamVerifier, Tick, TickError, verify_tick};
use crate::time::Timestamp;

/// What both sides agreed when the channel opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelTerms {
    pub id: ChannelId,
    pub ledger: LedgerId,
    pub sender: PublicKey,
    pub receiver: PublicKey,
    /// Deposit or credit line: the most the sender can ever promise.
    pub capacity: Amount,
    /// After a close, how long the receiver has to present its best promise.
    pub settlement_period_secs: u64,
    pub opened_at: Timestamp,
}

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChannelStatus {
    Open,
    /// Closed to new promises; `final_amount` settles once `settle_after` has passed.
    Closing {
        since: Timestamp,
        settle_after: Timestamp,
        final_amount: Amount,
    },
    Settled {
        at: Timestamp,
        amount: Amount,
    },
}

impl ChannelStatus {
    pub fn is_open(&self) -> bool {
        matches!(self, ChannelStatus::Open)
    }

    pub fn name(&self) -> &'static str {
        match self {
            ChannelStatus::Open => "open",
            ChannelStatus::Closing { .. } => "closing",
            ChannelStatus::Settled { .. } => "settled",
        }
    }
}

/// Why a promise was refused by the receiver. Each reason is its own variant so a peer (and a
/// test) can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromiseError {
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    #[error("no channel {0} is known here")]
    UnknownChannel(ChannelId),
    #[error("channel {0} is {1}, not open")]
    ChannelClosed(ChannelId, &'static str),
    #[error("promise is for channel {got}, not {expected}")]
    WrongChannel { expected: ChannelId, got: ChannelId },
    #[error("promise is for ledger {got}, but the channel is on {expected}")]
    WrongLedger { expected: LedgerId, got: LedgerId },
    #[error("promised {got} is not more than the {last} already accepted")]
    NotIncreasing { last: Amount, got: Amount },
    #[error("promised {got} is above the channel capacity of {capacity}")]
    AboveCapacity { capacity: Amount, got: Amount },
    #[error("stream of {0} ticks is not allowed (1 to {MAX_STREAM_TICKS})")]
    BadStream(u64),
    /// A tick offered as proof of a stream's worth (in a resync) is not one of its ticks.
    #[error("the stream's tick does not verify: {0}")]
    Tick(#[from] TickError),
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// Why the sender could not make a promise or a channel transition failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel {0} is {1}, not open")]
    NotOpen(ChannelId, &'static str),
    #[error("paying {increment} would take the channel to {total}, above its capacity of {capacity}")]
    InsufficientCapacity { increment: Amount, total: Amount, capacity: Amount },
    #[error("a payment must be more than zero")]
    ZeroPayment,
    #[error("channel {0} is not closing")]
    NotClosing(ChannelId),
    #[error("channel {id} cannot settle before {settle_after:?}")]
    SettlementPeriodRunning { id: ChannelId, settle_after: Timestamp },
    #[error(transparent)]
    Tick(#[from] TickError),
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// What an accepted promise or tick was worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptance {
    /// The payment: new total minus the previous total.
    pub increment: Amount,
    /// Everything accepted on the channel so far.
    pub total: Amount,
}

fn close_status(
    id: ChannelId,
    status: ChannelStatus,
    final_amount: Amount,
    now: Timestamp,
    period: u64,
) -> Result<ChannelStatus, ChannelError> {
    match status {
        ChannelStatus::Open => {
            Ok(ChannelStatus::Closing { since: now, settle_after: now.saturating_add_secs(period), final_amount })
        }
        other => Err(ChannelError::NotOpen(id, other.name())),
    }
}

fn settle_status(id: ChannelId, status: ChannelStatus, now: Timestamp) -> Result<ChannelStatus, ChannelError> {
    match status {
        ChannelStatus::Closing { settle_after, final_amount, .. } if now >= settle_after => {
            Ok(ChannelStatus::Settled { at: now, amount: final_amount })
        }
        ChannelStatus::Closing { settle_after, .. } => Err(ChannelError::SettlementPeriodRunning { id, settle_after }),
        _ => Err(ChannelError::NotClosing(id)),
    }
}

/// The receiver's side of a channel: verifies promises and ticks, keeps the best one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverChannel {
    pub terms: ChannelTerms,
    pub status: ChannelStatus,
    /// The best promise accepted so far (the one to settle with).
    pub best: Option<Promise>,
    /// The stream opened by `best`, if it opened one.
    pub stream: Option<StreamVerifier>,
    /// `terms.sender` decoded once, on first use, with the bytes it was decoded from (the terms
    /// are public, so the key may be replaced after the cache was filled).
    #[serde(skip)]
    sender_key: OnceLock<(PublicKey, Result<VerifyingKey, BadSignature>)>,
}

/// Equal when the channel state is; whether the sender key was decoded yet does not matter.
impl PartialEq for ReceiverChannel {
    fn eq(&self, other: &Self) -> bool {
        self.terms == other.terms
            && self.status == other.status
            && self.best == other.best
            && self.stream == other.stream
    }
}

impl Eq for ReceiverChannel {}

impl ReceiverChannel {
    pub fn new(terms: ChannelTerms) -> ReceiverChannel {
        ReceiverChannel { terms, status: ChannelStatus::Open, best: None, stream: None, sender_key: OnceLock::new() }
    }

    fn sender_key(&self) -> Result<VerifyingKey, BadSignature> {
        let decode = || self.terms.sender.verifying_key().map_err(|_| BadSignature);
        match self.sender_key.get_or_init(|| (self.terms.sender, decode())) {
            (decoded_from, key) if *decoded_from == self.terms.sender => *key,
            _ => decode(),
        }
    }

    /// Everything accepted so far, ticks included.
    pub fn accepted(&self) -> Amount {
        match (&self.stream, &self.best) {
            (Some(stream), _) => stream.claimable().unwrap_or(Amount::MAX),
            (None, Some(best)) => best.body.amount,
            (None, None) => Amount::ZERO,
        }
    }

    /// Checks a promise against every rule without changing anything.
    pub fn check(&self, promise: &Promise) -> Result<Acceptance, PromiseError> {
        let id = self.terms.id;
        let body = &promise.body;
        if body.channel != id {
            return Err(PromiseError::WrongChannel { expected: id, got: body.channel });
        }
        if body.ledger != self.terms.ledger {
            return Err(PromiseError::WrongLedger { expected: self.terms.ledger.clone(), got: body.ledger.clone() });
        }
        if !self.status.is_open() {
            return Err(PromiseError::ChannelClosed(id, self.status.name()));
        }
        let last = self.accepted();
        if body.amount <= last {
            return Err(PromiseError::NotIncreasing { last, got: body.amount });
        }
        let ceiling = match &body.stream {
            Some(stream) => {
                if stream.max_ticks == 0 || stream.max_ticks > MAX_STREAM_TICKS {
                    return Err(PromiseError::BadStream(stream.max_ticks));
                }
                stream.ceiling(body.amount)?
            }
            None => body.amount,
        };
        if ceiling > self.terms.capacity {
            return Err(PromiseError::AboveCapacity { capacity: self.terms.capacity, got: ceiling });
        }
        // Signature last: it is the expensive check, and the cheap ones reject most garbage.
        promise.verify_with(&self.sender_key()?)?;
        Ok(Acceptance { increment: body.amount.checked_sub(last)?, total: body.amount })
    }

    /// Accepts a promise: it must verify, be for this open channel, be strictly more than
    /// everything accepted so far and (with every tick of a stream it opens) within capacity.
    pub fn accept(&mut self, promise: Promise) -> Result<Acceptance, PromiseError> {
        let acceptance = self.check(&promise)?;
        self.stream = promise.body.stream.map(|terms| StreamVerifier::new(promise.body.amount, terms));
        self.best = Some(promise);
        Ok(acceptance)
    }

    /// Accepts the next tick of the open stream.
    pub fn accept_tick(&mut self, preimage: &[u8; 32]) -> Result<Acceptance, ChannelError> {
        if !self.status.is_open() {
            return Err(ChannelError::NotOpen(self.terms.id, self.status.name()));
        }
        let stream = self.stream.as_mut().ok_or(TickError::NoStream)?;
        let before = stream.claimable()?;
        stream.verify(preimage)?;
        let total = stream.claimable()?;
        Ok(Acceptance { increment: total.checked_sub(before)?, total })
    }

    /// Closes the channel to further promises; the final amount is everything accepted.
    pub fn close(&mut self, now: Timestamp) -> Result<Amount, ChannelError> {
        let final_amount = self.accepted();
        // The receiver closing gives up nothing it holds, so it need not wait out the period.
        self.status = close_status(self.terms.id, self.status, final_amount, now, 0)?;
        Ok(final_amount)
    }

    /// Records that the closing amount was settled.
    pub fn settle(&mut self, now: Timestamp) -> Result<Amount, ChannelError> {
        self.status = settle_status(self.terms.id, self.status, now)?;
        Ok(self.accepted())
    }

    /// Raises the capacity (a deposit or a larger credit line).
    pub fn top_up(&mut self, additional: Amount) -> Result<Amount, ChannelError> {
        if !self.status.is_open() {
            return Err(ChannelError::NotOpen(self.terms.id, self.status.name()));
        }
        self.terms.capacity = self.terms.capacity.checked_add(additional)?;
        Ok(self.terms.capacity)
    }
}

/// The sender's side of a channel: makes promises within capacity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SenderChannel {
    pub terms: ChannelTerms,
    pub status: ChannelStatus,
    /// The latest promise made (persist it before sending it).
    pub latest: Option<Promise>,
    /// The open stream's ticks sent so far; the chain itself is regenerated from its seed.
    pub stream: Option<SenderStream>,
}

/// A stream the sender opened.
#[derive(Clone, Serialize, Deserialize)]
pub struct SenderStream {
    #[serde(with = "crate::promise::hex_32")]
    pub seed: [u8; 32],
    pub terms: StreamTerms,
    pub base: Amount,
    pub ticks_sent: u64,
    #[serde(skip)]
    chain: Option<HashChain>,
}

impl SenderStream {
    /// Rebuilds a stream from what was stored; the chain is regenerated from `seed` on the
    /// next tick.
    pub fn restore(seed: [u8; 32], terms: StreamTerms, base: Amount, ticks_sent: u64) -> SenderStream {
        SenderStream { seed, terms, base, ticks_sent, chain: None }
    }
}

impl std::fmt::Debug for SenderStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderStream")
            .field("terms", &self.terms)
            .field("base", &self.base)
            .field("ticks_sent", &self.ticks_sent)
            .finish_non_exhaustive()
    }
}

impl SenderChannel {
    pub fn new(terms: ChannelTerms) -> SenderChannel {
        SenderChannel { terms, status: ChannelStatus::Open, latest: None, stream: None }
    }

    /// Everything promised so far, sent ticks included.
    pub fn promised(&self) -> Amount {
        match (&self.stream, &self.latest) {
            (Some(stream), _) => stream
                .terms
                .price_per_tick
                .checked_mul(u128::from(stream.ticks_sent))
                .and_then(|ticks| stream.base.checked_add(ticks))
                .unwrap_or(Amount::MAX),
            (None, Some(latest)) => latest.body.amount,
            (None, None) => Amount::ZERO,
        }
    }

    /// What can still be promised.
    pub fn remaining(&self) -> Amount {
        self.terms.capacity.saturating_sub(self.promised())
    }

    fn next_total(&self, increment: Amount) -> Result<Amount, ChannelError> {
        if !self.status.is_open() {
            return Err(ChannelError::NotOpen(self.terms.id, self.status.name()));
        }
        if increment.is_zero() {
            return Err(ChannelError::ZeroPayment);
        }
        let total = self.promised().checked_add(increment)?;
        if total > self.terms.capacity {
            return Err(ChannelError::InsufficientCapacity { increment, total, capacity: self.terms.capacity });
        }
        Ok(total)
    }

    /// Signs a promise paying `increment` more than everything promised so far. Ends any
    /// open stream (its sent ticks are folded into the new amount).
    pub fn pay(&mut self, increment: Amount, key: &SigningKey) -> Result<Promise, ChannelError> {
        let total = self.next_total(increment)?;
        let promise =
            PromiseBody { ledger: self.terms.ledger.clone(), channel: self.terms.id, amount: total, stream: None }
                .sign(key);
        self.latest = Some(promise.clone());
        self.stream = None;
        Ok(promise)
    }

    /// Opens a stream: a promise paying `increment` now that also commits to up to `max_ticks`
    /// ticks of `price_per_tick`, derived from the secret `seed`.
    pub fn open_stream(
        &mut self,
        increment: Amount,
        price_per_tick: Amount,
        max_ticks: u64,
        seed: [u8; 32],
        key: &SigningKey,
    ) -> Result<Promise, ChannelError> {
        let base = self.next_total(increment)?;
        let chain = HashChain::new(seed, max_ticks)?;
        let terms = StreamTerms { root: chain.root(), price_per_tick, max_ticks };
        let ceiling = terms.ceiling(base)?;
        if ceiling > self.terms.capacity {
            return Err(ChannelError::InsufficientCapacity {
                increment,
                total: ceiling,
                capacity: self.terms.capacity,
            });
        }
        let promise = PromiseBody {
            ledger: self.terms.ledger.clone(),
            channel: self.terms.id,
            amount: base,
            stream: Some(terms),
        }
        .sign(key);
        self.latest = Some(promise.clone());
        self.stream = Some(SenderStream { seed, terms, base, ticks_sent: 0, chain: Some(chain) });
        Ok(promise)
    }

    /// The next tick of the open stream, worth one `price_per_tick`.
    pub fn next_tick(&mut self) -> Result<Tick, ChannelError> {
        if !self.status.is_open() {
            return Err(ChannelError::NotOpen(self.terms.id, self.status.name()));
        }
        let stream = self.stream.as_mut().ok_or(TickError::NoStream)?;
        if stream.ticks_sent >= stream.terms.max_ticks {
            return Err(TickError::PastMaximum { max: stream.terms.max_ticks }.into());
        }
        if stream.chain.is_none() {
            // Restored from storage (or learnt from a resync): rebuild the chain from its seed once.
            let chain = HashChain::new(stream.seed, stream.terms.max_ticks)?;
            if chain.root() != stream.terms.root {
                return Err(TickError::UnknownChain.into());
            }
            stream.chain = Some(chain);
        }
        let index = stream.ticks_sent + 1;
        let tick = stream
            .chain
            .as_ref()
            .and_then(|chain| chain.tick(index))
            .ok_or(TickError::PastMaximum { max: stream.terms.max_ticks })?;
        stream.ticks_sent = index;
        Ok(tick)
    }

    /// Adopts the receiver's durable view after a reconnect: `best` is the best promise it
    /// holds (which must be ours, for this channel) and, if that promise opened a stream,
    /// `tick` the latest tick it verified. Promises and ticks the receiver never stored are
    /// forgotten, so the next payment pays for what was really delivered; the sender's liability
    /// never exceeds the largest promise it ever signed, so trusting the receiver here is safe.
    /// A tick must prove its place in the chain: a receiver cannot claim ticks never revealed.
    pub fn resync(&mut self, best: Option<Promise>, tick: Option<Tick>) -> Result<Amount, PromiseError> {
        if let Some(promise) = &best {
            if promise.body.channel != self.terms.id {
                return Err(PromiseError::WrongChannel { expected: self.terms.id, got: promise.body.channel });
            }
            promise.verify(&self.terms.sender)?;
            if promise.body.amount > self.terms.capacity {
                return Err(PromiseError::AboveCapacity { capacity: self.terms.capacity, got: promise.body.amount });
            }
        }
        let stream = match (best.as_ref().and_then(|p| p.body.stream.map(|terms| (terms, p.body.amount))), tick) {
            (None, None) => None,
            (None, Some(_)) => return Err(TickError::NoStream.into()),
            (Some((terms, base)), tick) => {
                let ticks = match tick {
                    Some(tick) => {
                        verify_tick(&terms, &tick)?;
                        tick.index
                    }
                    None => 0,
                };
                if terms.ceiling(base)? > self.terms.capacity {
                    return Err(PromiseError::AboveCapacity { capacity: self.terms.capacity, got: base });
                }
                Some(match self.stream.take() {
                    // Still our open stream: it goes on from where the receiver is.
                    Some(ours) if ours.terms == terms => SenderStream { base, ticks_sent: ticks, ..ours },
                    // A stream this side has moved on from: its ticks count, but it cannot tick
                    // on (its seed is gone; the zero seed fails `next_tick`'s root check).
                    _ => SenderStream { seed: [0; 32], terms, base, ticks_sent: ticks, chain: None },
                })
            }
        };
        self.stream = stream;
        self.latest = best;
        Ok(self.promised())
    }

    /// Closes the channel; the receiver may settle once the period has passed.
    pub fn close(&mut self, now: Timestamp) -> Result<Amount, ChannelError> {
        let final_amount = self.promised();
        self.status = close_status(self.terms.id, self.status, final_amount, now, self.terms.settlement_period_secs)?;
        Ok(final_amount)
    }

    pub fn settle(&mut self, now: Timestamp) -> Result<Amount, ChannelError> {
        self.status = settle_status(self.terms.id, self.status, now)?;
        Ok(self.promised())
    }

    pub fn top_up(&mut self, additional: Amount) -> Result<Amount, ChannelError> {
        if !self.status.is_open() {
            return Err(ChannelError::NotOpen(self.terms.id, self.status.name()));
        }
        self.terms.capacity = self.terms.capacity.checked_add(additional)?;
        Ok(self.terms.capacity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const CAPACITY: u128 = 1_000;

    fn alice() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn mallory() -> SigningKey {
        SigningKey::from_bytes(&[66; 32])
    }

    fn units(n: u128) -> Amount {
        Amount::from_base_units(n)
    }

    fn terms() -> ChannelTerms {
        ChannelTerms {
            id: ChannelId::from_bytes([7; 32]),
            ledger: LedgerId::credit(),
            sender: PublicKey::from(alice().verifying_key()),
            receiver: PublicKey::from(SigningKey::from_bytes(&[2; 32]).verifying_key()),
            capacity: units(CAPACITY),
            settlement_period_secs: 3_600,
            opened_at: Timestamp(1_000),
        }
    }

    fn body(amount: u128) -> PromiseBody {
        PromiseBody { ledger: LedgerId::credit(), channel: terms().id, amount: units(amount), stream: None }
    }

    fn promise(amount: u128) -> Promise {
        body(amount).sign(&alice())
    }

    fn stream_promise(amount: u128, chain: &HashChain, price: u128) -> Promise {
        PromiseBody {
            stream: Some(StreamTerms {
                root: chain.root(),
                price_per_tick: units(price),
                max_ticks: chain.max_ticks(),
            }),
            ..body(amount)
        }
        .sign(&alice())
    }

    fn receiver() -> ReceiverChannel {
        ReceiverChannel::new(terms())
    }

    fn sender() -> SenderChannel {
        SenderChannel::new(terms())
    }

    /// Asserts that `promise` is refused with `expected` and the channel did not change.
    fn refused(channel: &mut ReceiverChannel, promise: Promise, expected: PromiseError) {
        let before = channel.clone();
        assert_eq!(channel.accept(promise), Err(expected));
        assert_eq!(*channel, before);
    }

    // ---- receiver: plain promises ----

    #[test]
    fn accepts_increasing_promises_and_returns_each_increment() {
        let mut channel = receiver();
        assert_eq!(channel.accepted(), Amount::ZERO);
        assert_eq!(channel.accept(promise(100)), Ok(Acceptance { increment: units(100), total: units(100) }));
        assert_eq!(channel.accept(promise(250)), Ok(Acceptance { increment: units(150), total: units(250) }));
        assert_eq!(channel.accept(promise(CAPACITY)), Ok(Acceptance { increment: units(750), total: units(CAPACITY) }));
        assert_eq!(channel.accepted(), units(CAPACITY));
        assert_eq!(channel.best, Some(promise(CAPACITY)));
    }

    #[test]
    fn check_answers_like_accept_without_changing_anything() {
        let mut channel = receiver();
        channel.accept(promise(100)).unwrap();
        let before = channel.clone();
        assert_eq!(channel.check(&promise(130)), Ok(Acceptance { increment: units(30), total: units(130) }));
        assert_eq!(
            channel.check(&promise(100)),
            Err(PromiseError::NotIncreasing { last: units(100), got: units(100) })
        );
        assert_eq!(channel, before);
    }

    #[test]
    fn refuses_a_promise_signed_by_another_key() {
        let mut channel = receiver();
        refused(&mut channel, body(100).sign(&mallory()), PromiseError::BadSignature(BadSignature));
    }

    #[test]
    fn refuses_a_promise_with_a_tampered_amount() {
        let mut channel = receiver();
        let mut forged = promise(100);
        forged.body.amount = units(900);
        refused(&mut channel, forged, PromiseError::BadSignature(BadSignature));
    }

    #[test]
    fn refuses_a_replayed_promise() {
        let mut channel = receiver();
        channel.accept(promise(100)).unwrap();
        refused(&mut channel, promise(100), PromiseError::NotIncreasing { last: units(100), got: units(100) });
    }

    #[test]
    fn refuses_a_decreasing_promise() {
        let mut channel = receiver();
        channel.accept(promise(100)).unwrap();
        refused(&mut channel, promise(99), PromiseError::NotIncreasing { last: units(100), got: units(99) });
    }

    #[test]
    fn refuses_a_zero_promise_on_a_fresh_channel() {
        let mut channel = receiver();
        refused(&mut channel, promise(0), PromiseError::NotIncreasing { last: Amount::ZERO, got: Amount::ZERO });
    }

    #[test]
    fn refuses_a_promise_above_capacity() {
        let mut channel = receiver();
        refused(
            &mut channel,
            promise(CAPACITY + 1),
            PromiseError::AboveCapacity { capacity: units(CAPACITY), got: units(CAPACITY + 1) },
        );
    }

    #[test]
    fn refuses_a_promise_for_another_channel() {
        let mut channel = receiver();
        let other = ChannelId::from_bytes([8; 32]);
        let foreign = PromiseBody { channel: other, ..body(100) }.sign(&alice());
        refused(&mut channel, foreign, PromiseError::WrongChannel { expected: terms().id, got: other });
    }

    #[test]
    fn refuses_a_promise_for_another_ledger() {
        let mut channel = receiver();
        let eth = LedgerId::new("ethereum:1:0xabc").unwrap();
        let foreign = PromiseBody { ledger: eth.clone(), ..body(100) }.sign(&alice());
        refused(&mut channel, foreign, PromiseError::WrongLedger { expected: LedgerId::credit(), got: eth });
    }

    #[test]
    fn refuses_promises_once_closed_or_settled() {
        let mut channel = receiver();
        channel.accept(promise(100)).unwrap();
        channel.close(Timestamp(5_000)).unwrap();
        refused(&mut channel, promise(200), PromiseError::ChannelClosed(terms().id, "closing"));
        channel.settle(Timestamp(5_000)).unwrap();
        refused(&mut channel, promise(200), PromiseError::ChannelClosed(terms().id, "settled"));
    }

    #[test]
    fn refuses_every_promise_when_the_sender_key_is_not_a_curve_point() {
        let not_a_point = (0u8..=255)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[0] = i;
                bytes[1] = 1;
                PublicKey::from_bytes(bytes)
            })
            .find(|key| key.verifying_key().is_err())
            .unwrap();
        let mut channel = ReceiverChannel::new(ChannelTerms { sender: not_a_point, ..terms() });
        refused(&mut channel, promise(100), PromiseError::BadSignature(BadSignature));
    }

    #[test]
    fn a_replaced_sender_key_is_the_one_that_verifies() {
        let mut channel = receiver();
        channel.accept(promise(100)).unwrap();
        // The terms are public: whoever changes the sender must not be verified against the old key.
        channel.terms.sender = PublicKey::from(mallory().verifying_key());
        refused(&mut channel, promise(200), PromiseError::BadSignature(BadSignature));
        assert_eq!(channel.accept(body(200).sign(&mallory())).unwrap().increment, units(100));
    }

    #[test]
    fn equality_is_about_the_channel_state_not_what_was_decoded() {
        let mut used = receiver();
        assert!(used.check(&promise(100)).is_ok());
        assert_eq!(used, receiver());
        used.accept(promise(100)).unwrap();
        let restored: ReceiverChannel = serde_json::from_str(&serde_json::to_string(&used).unwrap()).unwrap();
        assert_eq!(restored, used);
        assert_ne!(restored, receiver());
    }

    // ---- receiver: streams ----

    #[test]
    fn refuses_a_stream_whose_ceiling_exceeds_capacity() {
        let chain = HashChain::new([4; 32], 10).unwrap();
        let mut channel = receiver();
        // 100 + 10 * 91 = 1010 > 1000, though the amount itself is well within.
        refused(
            &mut channel,
            stream_promise(100, &chain, 91),
            PromiseError::AboveCapacity { capacity: units(CAPACITY), got: units(1_010) },
        );
        assert_eq!(channel.accept(stream_promise(100, &chain, 90)).unwrap().total, units(100));
    }

    #[test]
    fn refuses_a_stream_whose_ceiling_overflows() {
        let chain = HashChain::new([4; 32], 10).unwrap();
        let mut channel = receiver();
        refused(&mut channel, stream_promise(100, &chain, u128::MAX / 2), PromiseError::Amount(AmountError::Overflow));
    }

    #[test]
    fn refuses_a_stream_of_zero_or_too_many_ticks() {
        let mut channel = receiver();
        for max_ticks in [0, MAX_STREAM_TICKS + 1] {
            let bad = PromiseBody {
                stream: Some(StreamTerms { root: [0; 32], price_per_tick: units(0), max_ticks }),
                ..body(100)
            }
            .sign(&alice());
            refused(&mut channel, bad, PromiseError::BadStream(max_ticks));
        }
    }

    #[test]
    fn ticks_verify_and_each_adds_the_price() {
        let chain = HashChain::new([4; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        for i in 1..=5u64 {
            let tick = chain.tick(i).unwrap();
            let total = units(100 + 20 * u128::from(i));
            assert_eq!(channel.accept_tick(&tick.preimage), Ok(Acceptance { increment: units(20), total }));
            assert_eq!(channel.accepted(), total);
        }
    }

    #[test]
    fn refuses_a_tick_with_the_wrong_preimage() {
        let chain = HashChain::new([4; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        let before = channel.clone();
        assert_eq!(channel.accept_tick(&[0; 32]), Err(ChannelError::Tick(TickError::WrongPreimage)));
        assert_eq!(
            channel.accept_tick(&chain.tick(2).unwrap().preimage),
            Err(ChannelError::Tick(TickError::WrongPreimage))
        );
        assert_eq!(channel, before);
    }

    #[test]
    fn refuses_a_tick_past_the_maximum() {
        let chain = HashChain::new([4; 32], 2).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        channel.accept_tick(&chain.tick(1).unwrap().preimage).unwrap();
        channel.accept_tick(&chain.tick(2).unwrap().preimage).unwrap();
        // Nothing more is paid for, whatever the preimage.
        assert_eq!(channel.accept_tick(&[4; 32]), Err(ChannelError::Tick(TickError::PastMaximum { max: 2 })));
        assert_eq!(channel.accepted(), units(140));
    }

    #[test]
    fn refuses_a_tick_without_a_stream() {
        let mut channel = receiver();
        assert_eq!(channel.accept_tick(&[0; 32]), Err(ChannelError::Tick(TickError::NoStream)));
        channel.accept(promise(100)).unwrap();
        assert_eq!(channel.accept_tick(&[0; 32]), Err(ChannelError::Tick(TickError::NoStream)));
    }

    #[test]
    fn refuses_a_tick_once_closed() {
        let chain = HashChain::new([4; 32], 2).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        channel.close(Timestamp(5_000)).unwrap();
        assert_eq!(
            channel.accept_tick(&chain.tick(1).unwrap().preimage),
            Err(ChannelError::NotOpen(terms().id, "closing"))
        );
        assert_eq!(channel.accepted(), units(100));
    }

    #[test]
    fn a_later_plain_promise_must_exceed_the_base_plus_ticks() {
        let chain = HashChain::new([4; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        channel.accept_tick(&chain.tick(1).unwrap().preimage).unwrap();
        channel.accept_tick(&chain.tick(2).unwrap().preimage).unwrap();
        // Worth 140 now: a promise of 130 (above the base) is still a step back.
        refused(&mut channel, promise(130), PromiseError::NotIncreasing { last: units(140), got: units(130) });
        refused(&mut channel, promise(140), PromiseError::NotIncreasing { last: units(140), got: units(140) });
        assert_eq!(channel.accept(promise(150)), Ok(Acceptance { increment: units(10), total: units(150) }));
        // The plain promise ended the stream.
        assert_eq!(channel.stream, None);
        assert_eq!(channel.accept_tick(&chain.tick(3).unwrap().preimage), Err(ChannelError::Tick(TickError::NoStream)));
    }

    #[test]
    fn a_new_stream_replaces_the_old_one() {
        let first = HashChain::new([4; 32], 5).unwrap();
        let second = HashChain::new([5; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &first, 20)).unwrap();
        channel.accept_tick(&first.tick(1).unwrap().preimage).unwrap();
        assert_eq!(channel.accept(stream_promise(130, &second, 10)).unwrap().increment, units(10));
        assert_eq!(
            channel.accept_tick(&first.tick(2).unwrap().preimage),
            Err(ChannelError::Tick(TickError::WrongPreimage))
        );
        assert_eq!(channel.accept_tick(&second.tick(1).unwrap().preimage).unwrap().total, units(140));
    }

    // ---- receiver: close, settle, top up ----

    #[test]
    fn the_receiver_closes_with_everything_accepted_and_settles_at_once() {
        let chain = HashChain::new([4; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        channel.accept_tick(&chain.tick(1).unwrap().preimage).unwrap();
        assert_eq!(channel.close(Timestamp(5_000)), Ok(units(120)));
        assert_eq!(
            channel.status,
            ChannelStatus::Closing {
                since: Timestamp(5_000),
                settle_after: Timestamp(5_000),
                final_amount: units(120)
            }
        );
        assert_eq!(channel.close(Timestamp(5_001)), Err(ChannelError::NotOpen(terms().id, "closing")));
        assert_eq!(channel.settle(Timestamp(5_000)), Ok(units(120)));
        assert_eq!(channel.status, ChannelStatus::Settled { at: Timestamp(5_000), amount: units(120) });
        assert_eq!(channel.settle(Timestamp(6_000)), Err(ChannelError::NotClosing(terms().id)));
        assert_eq!(channel.close(Timestamp(6_000)), Err(ChannelError::NotOpen(terms().id, "settled")));
    }

    #[test]
    fn an_open_channel_cannot_settle() {
        let mut channel = receiver();
        assert_eq!(channel.settle(Timestamp(5_000)), Err(ChannelError::NotClosing(terms().id)));
        assert_eq!(channel.status, ChannelStatus::Open);
    }

    #[test]
    fn top_up_raises_the_capacity_while_open() {
        let mut channel = receiver();
        refused(
            &mut channel,
            promise(1_500),
            PromiseError::AboveCapacity { capacity: units(CAPACITY), got: units(1_500) },
        );
        assert_eq!(channel.top_up(units(500)), Ok(units(1_500)));
        assert_eq!(channel.accept(promise(1_500)).unwrap().total, units(1_500));
        assert_eq!(channel.top_up(Amount::MAX), Err(ChannelError::Amount(AmountError::Overflow)));
        assert_eq!(channel.terms.capacity, units(1_500));
        channel.close(Timestamp(5_000)).unwrap();
        assert_eq!(channel.top_up(units(1)), Err(ChannelError::NotOpen(terms().id, "closing")));
    }

    #[test]
    fn receiver_state_round_trips_through_json() {
        let chain = HashChain::new([4; 32], 5).unwrap();
        let mut channel = receiver();
        channel.accept(stream_promise(100, &chain, 20)).unwrap();
        channel.accept_tick(&chain.tick(1).unwrap().preimage).unwrap();
        let json = serde_json::to_string(&channel).unwrap();
        let mut restored: ReceiverChannel = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, channel);
        assert_eq!(restored.accept_tick(&chain.tick(2).unwrap().preimage).unwrap().total, units(140));
    }

    #[test]
    fn channel_status_json_is_tagged_by_state() {
        let closing =
            ChannelStatus::Closing { since: Timestamp(1), settle_after: Timestamp(2), final_amount: units(3) };
        let json = serde_json::to_string(&closing).unwrap();
        assert_eq!(json, r#"{"state":"closing","since":1,"settle_after":2,"final_amount":"3"}"#);
        assert_eq!(serde_json::from_str::<ChannelStatus>(&json).unwrap(), closing);
        assert_eq!(serde_json::to_string(&ChannelStatus::Open).unwrap(), r#"{"state":"open"}"#);
    }

    // ---- sender ----

    #[test]
    fn the_sender_pays_within_capacity_with_cumulative_promises() {
        let mut channel = sender();
        let first = channel.pay(units(100), &alice()).unwrap();
        assert_eq!(first.body.amount, units(100));
        let second = channel.pay(units(50), &alice()).unwrap();
        assert_eq!(second.body.amount, units(150));
        assert_eq!(channel.promised(), units(150));
        assert_eq!(channel.remaining(), units(850));
        assert_eq!(channel.latest, Some(second.clone()));
        let mut receiver = receiver();
        assert_eq!(receiver.accept(first).unwrap().increment, units(100));
        assert_eq!(receiver.accept(second).unwrap().increment, units(50));
    }

    #[test]
    fn the_sender_refuses_to_pay_beyond_capacity() {
        let mut channel = sender();
        channel.pay(units(900), &alice()).unwrap();
        let before = channel.latest.clone();
        assert_eq!(
            channel.pay(units(101), &alice()),
            Err(ChannelError::InsufficientCapacity {
                increment: units(101),
                total: units(1_001),
                capacity: units(CAPACITY)
            })
        );
        assert_eq!(channel.pay(Amount::MAX, &alice()), Err(ChannelError::Amount(AmountError::Overflow)));
        assert_eq!(channel.latest, before);
        assert_eq!(channel.pay(units(100), &alice()).unwrap().body.amount, units(CAPACITY));
        assert_eq!(channel.remaining(), Amount::ZERO);
    }

    #[test]
    fn the_sender_refuses_a_zero_payment() {
        let mut channel = sender();
        assert_eq!(channel.pay(Amount::ZERO, &alice()), Err(ChannelError::ZeroPayment));
        assert_eq!(channel.latest, None);
    }

    #[test]
    fn the_sender_cannot_pay_or_tick_once_closed() {
        let mut channel = sender();
        channel.open_stream(units(10), units(1), 3, [9; 32], &alice()).unwrap();
        assert_eq!(channel.close(Timestamp(5_000)), Ok(units(10)));
        let id = terms().id;
        assert_eq!(channel.pay(units(1), &alice()), Err(ChannelError::NotOpen(id, "closing")));
        assert_eq!(channel.next_tick(), Err(ChannelError::NotOpen(id, "closing")));
        assert_eq!(
            channel.open_stream(units(1), units(1), 1, [9; 32], &alice()),
            Err(ChannelError::NotOpen(id, "closing"))
        );
        assert_eq!(channel.top_up(units(1)), Err(ChannelError::NotOpen(id, "closing")));
    }

    #[test]
    fn the_sender_waits_out_the_settlement_period() {
        let mut channel = sender();
        channel.pay(units(100), &alice()).unwrap();
        assert_eq!(channel.close(Timestamp(5_000)), Ok(units(100)));
        let settle_after = Timestamp(5_000 + 3_600);
        assert_eq!(
            channel.status,
            ChannelStatus::Closing { since: Timestamp(5_000), settle_after, final_amount: units(100) }
        );
        assert_eq!(
            channel.settle(Timestamp(8_599)),
            Err(ChannelError::SettlementPeriodRunning { id: terms().id, settle_after })
        );
        assert_eq!(channel.settle(Timestamp(8_600)), Ok(units(100)));
        assert_eq!(channel.status, ChannelStatus::Settled { at: Timestamp(8_600), amount: units(100) });
    }

    #[test]
    fn the_sender_cannot_open_a_stream_beyond_capacity() {
        let mut channel = sender();
        assert_eq!(
            channel.open_stream(units(100), units(91), 10, [9; 32], &alice()),
            Err(ChannelError::InsufficientCapacity {
                increment: units(100),
                total: units(1_010),
                capacity: units(CAPACITY)
            })
        );
        assert_eq!(
            channel.open_stream(units(100), units(1), 0, [9; 32], &alice()),
            Err(ChannelError::Tick(TickError::BadLength(0)))
        );
        assert_eq!(channel.open_stream(Amount::ZERO, units(1), 1, [9; 32], &alice()), Err(ChannelError::ZeroPayment));
        assert!(channel.stream.is_none() && channel.latest.is_none());
    }

    #[test]
    fn ticks_from_the_sender_are_accepted_by_the_receiver() {
        let mut sending = sender();
        let mut receiving = receiver();
        let opening = sending.open_stream(units(100), units(20), 5, [9; 32], &alice()).unwrap();
        assert_eq!(receiving.accept(opening).unwrap().increment, units(100));
        for i in 1..=5u64 {
            let tick = sending.next_tick().unwrap();
            assert_eq!(tick.index, i);
            assert_eq!(receiving.accept_tick(&tick.preimage).unwrap().increment, units(20));
            assert_eq!(sending.promised(), receiving.accepted());
        }
        assert_eq!(sending.next_tick(), Err(ChannelError::Tick(TickError::PastMaximum { max: 5 })));
        assert_eq!(sending.promised(), units(200));
        // Paying again folds the ticks into a plain promise the receiver takes as the increment.
        let after = sending.pay(units(5), &alice()).unwrap();
        assert_eq!(after.body.amount, units(205));
        assert_eq!(receiving.accept(after).unwrap().increment, units(5));
    }

    #[test]
    fn next_tick_without_a_stream_is_refused() {
        let mut channel = sender();
        assert_eq!(channel.next_tick(), Err(ChannelError::Tick(TickError::NoStream)));
        channel.open_stream(units(1), units(1), 2, [9; 32], &alice()).unwrap();
        channel.pay(units(1), &alice()).unwrap();
        assert_eq!(channel.next_tick(), Err(ChannelError::Tick(TickError::NoStream)));
    }

    #[test]
    fn a_restored_sender_regenerates_the_chain_and_sends_the_right_next_tick() {
        let mut sending = sender();
        let mut receiving = receiver();
        receiving.accept(sending.open_stream(units(100), units(20), 6, [9; 32], &alice()).unwrap()).unwrap();
        for _ in 0..2 {
            receiving.accept_tick(&sending.next_tick().unwrap().preimage).unwrap();
        }
        let json = serde_json::to_string(&sending).unwrap();
        let mut restored: SenderChannel = serde_json::from_str(&json).unwrap();
        assert_eq!(restored.promised(), units(140));
        let tick = restored.next_tick().unwrap();
        assert_eq!(tick.index, 3);
        assert_eq!(tick, sending.next_tick().unwrap());
        assert_eq!(receiving.accept_tick(&tick.preimage).unwrap().total, units(160));
        assert_eq!(receiving.accept_tick(&restored.next_tick().unwrap().preimage).unwrap().total, units(180));
    }

    #[test]
    fn the_sender_stream_does_not_debug_print_its_seed() {
        let mut channel = sender();
        channel.open_stream(units(1), units(1), 2, [0xab; 32], &alice()).unwrap();
        let text = format!("{channel:?}");
        assert!(!text.contains("171, 171"), "{text}");
        assert!(text.contains("ticks_sent"));
    }

    #[test]
    fn the_sender_top_up_raises_what_remains() {
        let mut channel = sender();
        channel.pay(units(CAPACITY), &alice()).unwrap();
        assert_eq!(channel.top_up(units(10)), Ok(units(CAPACITY + 10)));
        assert_eq!(channel.remaining(), units(10));
        assert_eq!(channel.pay(units(10), &alice()).unwrap().body.amount, units(CAPACITY + 10));
    }
}

#[cfg(test)]
mod resync_tests {
    use super::*;
    use crate::ids::LedgerId;

    fn terms() -> ChannelTerms {
        ChannelTerms {
            id: ChannelId::from_bytes([3; 32]),
            ledger: LedgerId::credit(),
            sender: PublicKey::from(SigningKey::from_bytes(&[1; 32]).verifying_key()),
            receiver: PublicKey::from(SigningKey::from_bytes(&[2; 32]).verifying_key()),
            capacity: Amount::from_base_units(100),
            settlement_period_secs: 0,
            opened_at: Timestamp(0),
        }
    }

    #[test]
    fn a_sender_adopts_what_the_receiver_durably_holds() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut sender = SenderChannel::new(terms());
        let mut receiver = ReceiverChannel::new(terms());
        let first = sender.pay(Amount::from_base_units(10), &key).unwrap();
        receiver.accept(first).unwrap();
        // The second promise is lost with the receiver's crash.
        let _lost = sender.pay(Amount::from_base_units(10), &key).unwrap();
        assert_eq!(sender.resync(receiver.best.clone(), None), Ok(Amount::from_base_units(10)));
        let next = sender.pay(Amount::from_base_units(10), &key).unwrap();
        assert_eq!(receiver.accept(next).unwrap().increment, Amount::from_base_units(10));
    }

    #[test]
    fn a_forged_or_foreign_resync_is_refused_and_changes_nothing() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut sender = SenderChannel::new(terms());
        sender.pay(Amount::from_base_units(10), &key).unwrap();
        let forged = PromiseBody {
            ledger: LedgerId::credit(),
            channel: terms().id,
            amount: Amount::from_base_units(5),
            stream: None,
        }
        .sign(&SigningKey::from_bytes(&[9; 32]));
        assert!(matches!(sender.resync(Some(forged), None), Err(PromiseError::BadSignature(_))));
        let other = PromiseBody {
            ledger: LedgerId::credit(),
            channel: ChannelId::from_bytes([4; 32]),
            amount: Amount::from_base_units(5),
            stream: None,
        }
        .sign(&key);
        assert!(matches!(sender.resync(Some(other), None), Err(PromiseError::WrongChannel { .. })));
        assert_eq!(sender.promised(), Amount::from_base_units(10));
    }

    fn stream_pair(max_ticks: u64) -> (SigningKey, SenderChannel, ReceiverChannel) {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut sender = SenderChannel::new(terms());
        let mut receiver = ReceiverChannel::new(terms());
        let opener =
            sender.open_stream(Amount::from_base_units(2), Amount::from_base_units(3), max_ticks, [8; 32], &key);
        receiver.accept(opener.unwrap()).unwrap();
        (key, sender, receiver)
    }

    fn last_tick(receiver: &ReceiverChannel) -> Option<Tick> {
        receiver.stream.as_ref().and_then(StreamVerifier::last_tick)
    }

    #[test]
    fn a_stream_resumes_from_the_receivers_last_tick() {
        let (_, mut sender, mut receiver) = stream_pair(10);
        for _ in 0..3 {
            let tick = sender.next_tick().unwrap();
            receiver.accept_tick(&tick.preimage).unwrap();
        }
        // Two ticks lost on the way.
        sender.next_tick().unwrap();
        sender.next_tick().unwrap();
        assert_eq!(sender.promised(), Amount::from_base_units(2 + 5 * 3));
        assert_eq!(sender.resync(receiver.best.clone(), last_tick(&receiver)), Ok(receiver.accepted()));
        let tick = sender.next_tick().unwrap();
        assert_eq!(tick.index, 4);
        assert_eq!(receiver.accept_tick(&tick.preimage).unwrap().total, sender.promised());
    }

    #[test]
    fn a_stream_the_sender_moved_on_from_still_counts_its_ticks_but_cannot_tick() {
        let (key, mut sender, mut receiver) = stream_pair(10);
        for _ in 0..2 {
            let tick = sender.next_tick().unwrap();
            receiver.accept_tick(&tick.preimage).unwrap();
        }
        // A plain payment ended the stream, and was lost.
        let _lost = sender.pay(Amount::from_base_units(1), &key).unwrap();
        assert_eq!(sender.resync(receiver.best.clone(), last_tick(&receiver)), Ok(Amount::from_base_units(8)));
        assert_eq!(sender.next_tick(), Err(ChannelError::Tick(TickError::UnknownChain)));
        let next = sender.pay(Amount::from_base_units(1), &key).unwrap();
        assert_eq!(receiver.accept(next).unwrap().increment, Amount::from_base_units(1));
    }

    #[test]
    fn a_receiver_cannot_claim_ticks_it_was_never_given() {
        let (_, mut sender, mut receiver) = stream_pair(10);
        let first = sender.next_tick().unwrap();
        receiver.accept_tick(&first.preimage).unwrap();
        let claimed = Tick { index: 5, ..first };
        assert_eq!(
            sender.resync(receiver.best.clone(), Some(claimed)),
            Err(PromiseError::Tick(TickError::WrongPreimage))
        );
        assert_eq!(sender.promised(), Amount::from_base_units(5));
        assert_eq!(sender.resync(None, Some(first)), Err(PromiseError::Tick(TickError::NoStream)));
        assert_eq!(sender.promised(), Amount::from_base_units(5));
    }
}
