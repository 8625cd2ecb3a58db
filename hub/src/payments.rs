//! The hub's payments: channels on both sides, spend requests against budgets, the owner's
//! approvals and the spending ledger. Rules come from `machinomy-core`; this module holds the
//! state, orders the writes, and makes sure nothing is told "accepted" or "sent" before it is
//! on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use machinomy_core::{
    Acceptance, Amount, Approval, ApprovalError, ApprovalState, Budget, ChannelError, ChannelId, ChannelTerms,
    Currency, Decision, DenyReason, Direction, Period, Promise, PromiseError, PublicKey, ReceiverChannel,
    SenderChannel, SigningKey, SpendOutcome, SpendRequest, SpendingEntry, StreamVerifier, Subject, Tick, Timestamp,
    Verdict, committed_since, evaluate,
};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::ledger::{Ledger, LedgerError, Proposal};
use crate::store::{ChannelRecord, Settlement, Store, StoreError, Write};

/// How many events a slow listener may fall behind before it misses some.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Promise(#[from] PromiseError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no channel {0} is known here")]
    UnknownChannel(ChannelId),
    #[error("no approval {0} is known here")]
    UnknownApproval(u64),
    #[error("{0} has no budget")]
    UnknownBudget(Subject),
    #[error("this hub is the {held} of channel {id}, not the {wanted}")]
    WrongSide { id: ChannelId, held: &'static str, wanted: &'static str },
    #[error("approval {0} is not an approved spend waiting to be paid")]
    NotPayable(u64),
    #[error("ledger {0} is not configured on this hub")]
    UnknownLedger(String),
    #[error("the amount overflows")]
    Overflow,
    #[error("the promise pays {got}, but this costs {required}")]
    Underpaid { required: Amount, got: Amount },
    #[error("{0}'s budget is set in the config file; change it there (it is applied at every start)")]
    ConfigManaged(Subject),
}

/// Something happened that a listener (the web UI, a bridge, a plugin) may care about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubEvent {
    ApprovalCreated {
        approval: Approval,
    },
    ApprovalDecided {
        approval: Approval,
    },
    PaymentReceived {
        channel: ChannelId,
        amount: Amount,
        total: Amount,
    },
    PaymentSent {
        channel: ChannelId,
        amount: Amount,
        total: Amount,
    },
    ChannelChanged {
        channel: ChannelId,
    },
    /// A payer paid an invoice of this hub's that had waited for its owner (memo
    /// `invoice <reference>`), durably. Listeners check `from` and `amount` against their invoice.
    InvoicePaid {
        from: PublicKey,
        reference: String,
        amount: Amount,
    },
}

#[derive(Debug, Clone)]
pub struct PaymentSettings {
    pub approval_ttl_secs: u64,
    pub max_pending_approvals: usize,
    /// The home's clock: budget periods begin at its midnights.
    pub time_zone: jiff::tz::TimeZone,
}

/// Who an incoming payment was for, for the spending ledger.
#[derive(Debug, Clone)]
pub struct IncomingMeta {
    /// What in this home was paid (a service, a device).
    pub subject: Subject,
    pub memo: String,
}

/// Who an outgoing payment is from and for.
#[derive(Debug, Clone)]
pub struct OutgoingMeta {
    pub subject: Subject,
    pub payee: String,
    pub memo: String,
    /// The approved spend request this payment fulfils, if any.
    pub approval: Option<u64>,
}

/// What a receiver holds on a channel (see [`Payments::incoming_state`]).
#[derive(Debug, Clone)]
pub struct IncomingState {
    pub accepted: Amount,
    pub best: Option<Promise>,
    pub tick: Option<Tick>,
}

/// A channel this hub pays a stream on, with ticks left.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingStream {
    pub channel: ChannelId,
    pub price_per_tick: Amount,
    /// Room left on the channel beyond what was promised and ticked.
    pub remaining: Amount,
}

/// Whether a channel's stream has ticks left (a used-up stream's channel is free for payments).
fn ticking(channel: &SenderChannel) -> bool {
    channel.stream.as_ref().is_some_and(|s| s.ticks_sent < s.terms.max_ticks)
}

/// Cheap to clone; all clones share the same books.
#[derive(Clone, Debug)]
pub struct Payments {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    identity: SigningKey,
    me: PublicKey,
    ledger: Arc<dyn Ledger>,
    settings: PaymentSettings,
    /// Subjects whose budgets come from the config file, which wins at every start.
    config_budgets: Vec<Subject>,
    channels: RwLock<HashMap<ChannelId, Arc<Mutex<ChannelRecord>>>>,
    /// Serialises spend decisions so two requests never both fit the same budget headroom.
    spend: tokio::sync::Mutex<SpendState>,
    events: broadcast::Sender<HubEvent>,
}

#[derive(Debug)]
struct SpendState {
    next_approval_id: u64,
    /// Pending approvals, kept in memory: bounded by `max_pending_approvals`.
    pending: BTreeMap<u64, Approval>,
    /// What each subject has committed in its current budget period, so a spend request does
    /// not rescan the period's approvals: (period start, amount). Changed only under this lock,
    /// together with the approvals it sums; dropped whenever a budget changes.
    committed: HashMap<Subject, (Timestamp, Amount)>,
    /// Approved by the budget and not yet paid or failed. Such an approval promises nothing by
    /// itself, so it is kept here and written with the payment that uses it (or by
    /// `spend_failed`): one sync per paid call instead of two. A crash loses only approvals
    /// that moved no money. Bounded by `MAX_GRANTED`; beyond that they are written at once.
    granted: BTreeMap<u64, Approval>,
    /// Approvals whose payment is being made right now (not yet durable).
    paying: std::collections::HashSet<u64>,
}

/// How many budget-approved spends may wait in memory for their payment.
const MAX_GRANTED: usize = 4096;

impl SpendState {
    /// Takes `amount` off a subject's cached total, if a request made at `created_at` falls in
    /// the cached period. (A total cached for a period that has since ended is rebuilt anyway.)
    fn release_committed(&mut self, subject: &Subject, created_at: Timestamp, amount: Amount) {
        if let Some((start, total)) = self.committed.get_mut(subject)
            && created_at >= *start
        {
            *total = total.checked_sub(amount).unwrap_or(Amount::ZERO);
        }
    }

    /// Adds `amount` to a subject's cached total, if the total is cached for the period that
    /// starts at `period_start`.
    fn add_committed(&mut self, subject: &Subject, period_start: Timestamp, amount: Amount) {
        if let Some((start, total)) = self.committed.get_mut(subject)
            && *start == period_start
        {
            *total = total.checked_add(amount).unwrap_or(Amount::MAX);
        }
    }
}

impl Payments {
    /// Loads the books from `store`. `budgets` (from the config) replace stored ones for the
    /// same subjects.
    pub async fn open(
        store: Store,
        identity: SigningKey,
        ledger: Arc<dyn Ledger>,
        settings: PaymentSettings,
        budgets: &[Budget],
    ) -> Result<Payments, PaymentError> {
        let channels =
            store.channels()?.into_iter().map(|record| (record.id(), Arc::new(Mutex::new(record)))).collect();
        let approvals = store.approvals()?;
        // Approved but never paid: the hub stopped between the decision and the payment (a
        // payment is written in the same batch as its outcome). Nothing will pay them now, so
        // they stop holding their budget.
        let unpaid: Vec<Approval> = approvals
            .iter()
            .filter(|a| a.outcome.is_none())
            .filter_map(|a| match a.state {
                ApprovalState::Approved { at, .. } => {
                    let reason = "the hub stopped before paying it".to_owned();
                    Some(Approval { outcome: Some(SpendOutcome::Failed { at, reason }), ..a.clone() })
                }
                _ => None,
            })
            .collect();
        let pending = approvals.into_iter().filter(Approval::is_pending).map(|a| (a.id, a)).collect();
        let next_approval_id = store.next_approval_id()?;
        let mut writes: Vec<Write<'_>> = budgets.iter().map(Write::Budget).collect();
        writes.extend(unpaid.iter().map(Write::Approval));
        if !writes.is_empty() {
            store.write(&writes)?;
            store.commit().await?;
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let me = PublicKey::from(identity.verifying_key());
        Ok(Payments {
            inner: Arc::new(Inner {
                store,
                identity,
                me,
                ledger,
                settings,
                config_budgets: budgets.iter().map(|b| b.subject.clone()).collect(),
                channels: RwLock::new(channels),
                spend: tokio::sync::Mutex::new(SpendState {
                    next_approval_id,
                    pending,
                    committed: HashMap::new(),
                    granted: BTreeMap::new(),
                    paying: std::collections::HashSet::new(),
                }),
                events,
            }),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.inner.me
    }

    pub fn currency(&self) -> &Currency {
        self.inner.ledger.currency()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.inner.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn emit(&self, event: HubEvent) {
        // No listener is not an error: events are for whoever is watching.
        let _ = self.inner.events.send(event);
    }

    fn channel_slot(&self, id: &ChannelId) -> Result<Arc<Mutex<ChannelRecord>>, PaymentError> {
        let channels = self.inner.channels.read().map_err(|_| poisoned())?;
        channels.get(id).cloned().ok_or(PaymentError::UnknownChannel(*id))
    }

    /// Every channel this hub holds a side of.
    pub fn channels(&self) -> Result<Vec<ChannelRecord>, PaymentError> {
        let slots: Vec<_> = self.inner.channels.read().map_err(|_| poisoned())?.values().cloned().collect();
        slots.iter().map(|slot| slot.lock().map(|c| c.clone()).map_err(|_| poisoned())).collect()
    }

    pub fn channel(&self, id: &ChannelId) -> Result<ChannelRecord, PaymentError> {
        let slot = self.channel_slot(id)?;
        let record = slot.lock().map_err(|_| poisoned())?.clone();
        Ok(record)
    }

    /// Capacity granted to `sender` on receiver channels still open.
    fn granted_to(&self, sender: &PublicKey) -> Result<Amount, PaymentError> {
        self.channels()?
            .iter()
            .filter_map(|record| match record {
                ChannelRecord::Receiver(c) if &c.terms.sender == sender && c.status.is_open() => Some(c.terms.capacity),
                _ => None,
            })
            .try_fold(Amount::ZERO, |sum, capacity| sum.checked_add(capacity).map_err(|_| PaymentError::Overflow))
    }

    async fn insert_channel(&self, record: ChannelRecord) -> Result<(), PaymentError> {
        let id = record.id();
        {
            let mut channels = self.inner.channels.write().map_err(|_| poisoned())?;
            if channels.contains_key(&id) || self.inner.store.channel(&id)?.is_some() {
                return Err(LedgerError::DuplicateChannel(id).into());
            }
            self.inner.store.write(&[Write::Channel(&record)])?;
            channels.insert(id, Arc::new(Mutex::new(record)));
        }
        self.inner.store.commit().await?;
        self.emit(HubEvent::ChannelChanged { channel: id });
        Ok(())
    }

    /// As receiver: opens a channel a sender proposed, on the ledger's terms. Durable before
    /// it returns.
    pub async fn accept_proposal(&self, proposal: &Proposal, now: Timestamp) -> Result<ChannelTerms, PaymentError> {
        let granted = self.granted_to(&proposal.sender)?;
        let terms = self.inner.ledger.open(proposal, granted, now).await?;
        self.insert_channel(ChannelRecord::Receiver(ReceiverChannel::new(terms.clone()))).await?;
        Ok(terms)
    }

    /// As sender: records a channel the receiver agreed to. Durable before it returns.
    pub async fn add_outgoing(&self, terms: ChannelTerms) -> Result<(), PaymentError> {
        if terms.sender != self.inner.me {
            return Err(PaymentError::WrongSide { id: terms.id, held: "receiver", wanted: "sender" });
        }
        if &terms.ledger != self.inner.ledger.id() {
            return Err(PaymentError::UnknownLedger(terms.ledger.to_string()));
        }
        self.insert_channel(ChannelRecord::Sender(SenderChannel::new(terms))).await
    }

    /// As receiver: accepts a promise. The answer comes only once the promise and its
    /// spending-ledger row are on disk.
    pub async fn accept(
        &self,
        promise: Promise,
        meta: &IncomingMeta,
        now: Timestamp,
    ) -> Result<Acceptance, PaymentError> {
        self.accept_at_least(promise, Amount::ZERO, meta, now).await
    }

    /// As [`Payments::accept`], refusing (and recording nothing) unless the promise pays at
    /// least `required` more than everything accepted so far: a service's price is checked
    /// under the channel's lock, so concurrent calls cannot both count the same increment.
    pub async fn accept_at_least(
        &self,
        promise: Promise,
        required: Amount,
        meta: &IncomingMeta,
        now: Timestamp,
    ) -> Result<Acceptance, PaymentError> {
        let id = promise.body.channel;
        let slot = self.channel_slot(&id).map_err(|_| PromiseError::UnknownChannel(id))?;
        let acceptance = {
            let mut record = slot.lock().map_err(|_| poisoned())?;
            let ChannelRecord::Receiver(channel) = &*record else {
                return Err(PaymentError::WrongSide { id, held: "sender", wanted: "receiver" });
            };
            let mut next = channel.clone();
            let acceptance = next.accept(promise)?;
            if acceptance.increment < required {
                return Err(PaymentError::Underpaid { required, got: acceptance.increment });
            }
            self.record_incoming(&mut record, next, acceptance, meta, now)?;
            acceptance
        };
        self.inner.store.commit().await?;
        self.emit(HubEvent::PaymentReceived { channel: id, amount: acceptance.increment, total: acceptance.total });
        Ok(acceptance)
    }

    /// As receiver: whether `promise` would pay at least `required`, changing nothing; for
    /// checking a payment before doing the work it pays for.
    pub fn check_at_least(&self, promise: &Promise, required: Amount) -> Result<Acceptance, PaymentError> {
        let id = promise.body.channel;
        let slot = self.channel_slot(&id).map_err(|_| PromiseError::UnknownChannel(id))?;
        let record = slot.lock().map_err(|_| poisoned())?;
        let ChannelRecord::Receiver(channel) = &*record else {
            return Err(PaymentError::WrongSide { id, held: "sender", wanted: "receiver" });
        };
        let acceptance = channel.check(promise)?;
        if acceptance.increment < required {
            return Err(PaymentError::Underpaid { required, got: acceptance.increment });
        }
        Ok(acceptance)
    }

    /// A receipt for an acceptance on channel `id`, signed by this hub.
    pub fn receipt(&self, id: ChannelId, acceptance: Acceptance, now: Timestamp) -> machinomy_core::wire::Receipt {
        machinomy_core::wire::Receipt::sign(id, acceptance.total, acceptance.increment, now, &self.inner.identity)
    }

    /// The open channels this hub pays `receiver` on with at least `room` left, except those
    /// carrying a stream with ticks left: a plain payment would end the stream.
    pub fn outgoing_with_room(&self, receiver: &PublicKey, room: Amount) -> Result<Vec<ChannelId>, PaymentError> {
        let mut ids = Vec::new();
        self.each_outgoing(receiver, |c| {
            if c.remaining() >= room && !ticking(c) {
                ids.push(c.terms.id);
            }
        })?;
        Ok(ids)
    }

    /// The open channels this hub pays `receiver` on whose stream has ticks left.
    pub fn outgoing_streams(&self, receiver: &PublicKey) -> Result<Vec<OutgoingStream>, PaymentError> {
        let mut streams = Vec::new();
        self.each_outgoing(receiver, |c| {
            if let Some(stream) = c.stream.as_ref().filter(|_| ticking(c)) {
                streams.push(OutgoingStream {
                    channel: c.terms.id,
                    price_per_tick: stream.terms.price_per_tick,
                    remaining: c.remaining(),
                });
            }
        })?;
        Ok(streams)
    }

    fn each_outgoing(&self, receiver: &PublicKey, mut f: impl FnMut(&SenderChannel)) -> Result<(), PaymentError> {
        let slots: Vec<_> = self.inner.channels.read().map_err(|_| poisoned())?.values().cloned().collect();
        for slot in slots {
            // Looked at in place: this runs for every payment, and cloning channels is not free.
            let record = slot.lock().map_err(|_| poisoned())?;
            if let ChannelRecord::Sender(c) = &*record
                && &c.terms.receiver == receiver
                && c.status.is_open()
            {
                f(c);
            }
        }
        Ok(())
    }

    /// As sender: adopts the receiver's durable view of channel `id` (see `SenderChannel::resync`).
    /// Whatever that withdraws — promises the receiver never stored, for things never
    /// delivered — goes into the spending ledger as money back, so the books match the channel.
    pub async fn resync_outgoing(
        &self,
        id: ChannelId,
        best: Option<Promise>,
        tick: Option<Tick>,
        now: Timestamp,
    ) -> Result<Amount, PaymentError> {
        let slot = self.channel_slot(&id)?;
        let promised = {
            let mut record = slot.lock().map_err(|_| poisoned())?;
            let ChannelRecord::Sender(channel) = &*record else {
                return Err(PaymentError::WrongSide { id, held: "receiver", wanted: "sender" });
            };
            let before = channel.promised();
            let receiver = channel.terms.receiver;
            let mut next = channel.clone();
            let promised = next.resync(best, tick)?;
            let withdrawn = before.saturating_sub(promised);
            let entry = SpendingEntry {
                at: now,
                direction: Direction::In,
                subject: Subject::Peer(receiver.to_hex()),
                counterparty: receiver.to_hex(),
                amount: withdrawn,
                memo: "withdrawn: a promise the receiver never stored".to_owned(),
                channel: Some(id),
                approval: None,
            };
            let next = ChannelRecord::Sender(next);
            let mut writes = vec![Write::Progress(&next)];
            if !withdrawn.is_zero() {
                writes.push(Write::Spending(&entry));
            }
            self.inner.store.write(&writes)?;
            *record = next;
            promised
        };
        self.inner.store.commit().await?;
        self.emit(HubEvent::ChannelChanged { channel: id });
        Ok(promised)
    }

    /// As receiver: the best promise held on channel `id` from `sender`, with the latest tick
    /// of the stream it opened (if any), for a resync.
    pub fn incoming_state(&self, id: ChannelId, sender: &PublicKey) -> Result<IncomingState, PaymentError> {
        match self.channel(&id)? {
            ChannelRecord::Receiver(c) if &c.terms.sender == sender => Ok(IncomingState {
                accepted: c.accepted(),
                tick: c.stream.as_ref().and_then(StreamVerifier::last_tick),
                best: c.best,
            }),
            // Another hub's channel is none of this peer's business: same answer as unknown.
            _ => Err(PaymentError::UnknownChannel(id)),
        }
    }

    /// As receiver: accepts the next tick of the channel's open stream. Durable before it returns.
    pub async fn accept_tick(
        &self,
        id: ChannelId,
        preimage: &[u8; 32],
        meta: &IncomingMeta,
        now: Timestamp,
    ) -> Result<Acceptance, PaymentError> {
        let slot = self.channel_slot(&id)?;
        let acceptance = {
            let mut record = slot.lock().map_err(|_| poisoned())?;
            let ChannelRecord::Receiver(channel) = &*record else {
                return Err(PaymentError::WrongSide { id, held: "sender", wanted: "receiver" });
            };
            let mut next = channel.clone();
            let acceptance = next.accept_tick(preimage)?;
            self.record_incoming(&mut record, next, acceptance, meta, now)?;
            acceptance
        };
        self.inner.store.commit().await?;
        self.emit(HubEvent::PaymentReceived { channel: id, amount: acceptance.increment, total: acceptance.total });
        Ok(acceptance)
    }

    /// Writes the new channel state with its ledger row in one batch, then swaps it in.
    fn record_incoming(
        &self,
        record: &mut ChannelRecord,
        next: ReceiverChannel,
        acceptance: Acceptance,
        meta: &IncomingMeta,
        now: Timestamp,
    ) -> Result<(), PaymentError> {
        let entry = SpendingEntry {
            at: now,
            direction: Direction::In,
            subject: meta.subject.clone(),
            counterparty: next.terms.sender.to_hex(),
            amount: acceptance.increment,
            memo: meta.memo.clone(),
            channel: Some(next.terms.id),
            approval: None,
        };
        let next = ChannelRecord::Receiver(next);
        self.inner.store.write(&[Write::Progress(&next), Write::Spending(&entry)])?;
        *record = next;
        Ok(())
    }

    /// As sender: signs a promise paying `increment` more on channel `id`. The promise, the
    /// spending-ledger row and (if given) the approval's outcome are on disk before the promise
    /// is returned to be sent.
    pub async fn pay(
        &self,
        id: ChannelId,
        increment: Amount,
        meta: &OutgoingMeta,
        now: Timestamp,
    ) -> Result<Promise, PaymentError> {
        self.update_sender(id, meta, now, |channel, identity| channel.pay(increment, identity).map(|p| (p, increment)))
            .await
    }

    /// As sender: opens a stream on channel `id` (see `SenderChannel::open_stream`). The
    /// stream's seed is persisted with the promise, so ticks survive a restart.
    pub async fn open_stream(
        &self,
        id: ChannelId,
        increment: Amount,
        price_per_tick: Amount,
        max_ticks: u64,
        meta: &OutgoingMeta,
        now: Timestamp,
    ) -> Result<Promise, PaymentError> {
        let seed = random_seed()?;
        let promise = self
            .update_sender(id, meta, now, |channel, identity| {
                channel.open_stream(increment, price_per_tick, max_ticks, seed, identity).map(|p| (p, increment))
            })
            .await?;
        Ok(promise)
    }

    /// As sender: the next tick of the channel's open stream, persisted before it is returned.
    pub async fn tick(
        &self,
        id: ChannelId,
        meta: &OutgoingMeta,
        now: Timestamp,
    ) -> Result<machinomy_core::Tick, PaymentError> {
        self.update_sender(id, meta, now, |channel, _| {
            let price = channel.stream.as_ref().map_or(Amount::ZERO, |s| s.terms.price_per_tick);
            channel.next_tick().map(|tick| (tick, price))
        })
        .await
    }

    /// Applies `change` to a sender channel and writes the new state with its spending row.
    async fn update_sender<T>(
        &self,
        id: ChannelId,
        meta: &OutgoingMeta,
        now: Timestamp,
        change: impl FnOnce(&mut SenderChannel, &SigningKey) -> Result<(T, Amount), ChannelError>,
    ) -> Result<T, PaymentError> {
        // Paying an approval must happen once: it is marked as being paid (under the spend lock)
        // until its payment is durable, and the store says "paid" from then on.
        let (mut approval, granted) = match meta.approval {
            Some(approval_id) => {
                let mut state = self.inner.spend.lock().await;
                if state.paying.contains(&approval_id) {
                    return Err(PaymentError::NotPayable(approval_id));
                }
                let granted = state.granted.remove(&approval_id);
                let approval = match &granted {
                    Some(approval) => approval.clone(),
                    None => self.payable_approval(approval_id)?,
                };
                state.paying.insert(approval_id);
                (Some(approval), granted)
            }
            None => (None, None),
        };
        let result = self.update_sender_channel(id, meta, now, approval.as_mut(), change).await;
        if let Some(approval_id) = meta.approval {
            let mut state = self.inner.spend.lock().await;
            state.paying.remove(&approval_id);
            if let (Err(_), Some(granted)) = (&result, granted) {
                state.granted.insert(approval_id, granted);
            }
            // Paid for less than asked (a service's price): the cached total counted the asked
            // amount; it gives back the difference rather than being rebuilt from the store on
            // the next request, which would rescan the period on every such purchase.
            if let (Ok(_), Some(paid)) = (&result, &approval)
                && let Ok(unused) = paid.request.amount.checked_sub(paid.committed_amount())
                && !unused.is_zero()
            {
                state.release_committed(&paid.request.subject, paid.request.created_at, unused);
            }
        }
        result
    }

    async fn update_sender_channel<T>(
        &self,
        id: ChannelId,
        meta: &OutgoingMeta,
        now: Timestamp,
        mut approval: Option<&mut Approval>,
        change: impl FnOnce(&mut SenderChannel, &SigningKey) -> Result<(T, Amount), ChannelError>,
    ) -> Result<T, PaymentError> {
        let slot = self.channel_slot(&id)?;
        let (value, amount, total) = {
            let mut record = slot.lock().map_err(|_| poisoned())?;
            let ChannelRecord::Sender(channel) = &*record else {
                return Err(PaymentError::WrongSide { id, held: "receiver", wanted: "sender" });
            };
            let mut next = channel.clone();
            let (value, amount) = change(&mut next, &self.inner.identity)?;
            let total = next.promised();
            let entry = SpendingEntry {
                at: now,
                direction: Direction::Out,
                subject: meta.subject.clone(),
                counterparty: meta.payee.clone(),
                amount,
                memo: meta.memo.clone(),
                channel: Some(id),
                approval: meta.approval,
            };
            if let Some(approval) = approval.as_mut() {
                approval.outcome = Some(SpendOutcome::Paid { at: now, channel: Some(id), amount: Some(amount) });
            }
            let next = ChannelRecord::Sender(next);
            let mut writes = vec![Write::Progress(&next)];
            if !amount.is_zero() {
                writes.push(Write::Spending(&entry));
            }
            if let Some(approval) = approval.as_deref() {
                writes.push(Write::Approval(approval));
            }
            self.inner.store.write(&writes)?;
            *record = next;
            (value, amount, total)
        };
        self.inner.store.commit().await?;
        self.emit(HubEvent::PaymentSent { channel: id, amount, total });
        Ok(value)
    }

    fn payable_approval(&self, id: u64) -> Result<Approval, PaymentError> {
        let approval = self.inner.store.approval(id)?.ok_or(PaymentError::UnknownApproval(id))?;
        if !approval.counts_against_budget() || approval.outcome.is_some() {
            return Err(PaymentError::NotPayable(id));
        }
        Ok(approval)
    }

    /// Records that an approved spend could not be paid, releasing its budget.
    pub async fn spend_failed(&self, id: u64, reason: &str, now: Timestamp) -> Result<Approval, PaymentError> {
        let mut state = self.inner.spend.lock().await;
        if state.paying.contains(&id) {
            return Err(PaymentError::NotPayable(id));
        }
        let mut approval = match state.granted.get(&id) {
            Some(granted) => granted.clone(),
            None => self.payable_approval(id)?,
        };
        approval.outcome = Some(SpendOutcome::Failed { at: now, reason: reason.to_owned() });
        self.inner.store.write(&[Write::Approval(&approval)])?;
        self.inner.store.commit().await?;
        state.granted.remove(&id);
        state.committed.remove(&approval.request.subject);
        Ok(approval)
    }

    /// Closes a channel on its ledger and records the amount to settle.
    pub async fn close(&self, id: ChannelId, now: Timestamp) -> Result<ChannelRecord, PaymentError> {
        let slot = self.channel_slot(&id)?;
        let snapshot = slot.lock().map_err(|_| poisoned())?.clone();
        let terms = snapshot.terms().clone();
        let closing = self.inner.ledger.close(&terms, snapshot.total(), now).await?;
        let settlement = Settlement {
            channel: id,
            sender: terms.sender,
            receiver: terms.receiver,
            amount: closing.final_amount,
            closed_at: now,
            settled_at: None,
        };
        self.replace_channel(&slot, |next| next.close(now, closing.settle_after).map(|_| ()), &settlement).await
    }

    /// Marks a closing channel settled once its settlement period has passed.
    pub async fn settle(&self, id: ChannelId, now: Timestamp) -> Result<ChannelRecord, PaymentError> {
        let slot = self.channel_slot(&id)?;
        let mut snapshot = slot.lock().map_err(|_| poisoned())?.clone();
        let amount = snapshot.settle(now)?;
        let terms = snapshot.terms().clone();
        let amount = self.inner.ledger.settle(&terms, amount, now).await?;
        let closed_at = self.inner.store.settlement(&id)?.map_or(now, |s| s.closed_at);
        let settlement = Settlement {
            channel: id,
            sender: terms.sender,
            receiver: terms.receiver,
            amount,
            closed_at,
            settled_at: Some(now),
        };
        self.replace_channel(&slot, |next| next.settle(now).map(|_| ()), &settlement).await
    }

    /// Applies a status change to a channel under its lock and writes it with its settlement row.
    async fn replace_channel(
        &self,
        slot: &Mutex<ChannelRecord>,
        change: impl FnOnce(&mut ChannelRecord) -> Result<(), ChannelError>,
        settlement: &Settlement,
    ) -> Result<ChannelRecord, PaymentError> {
        let next = {
            let mut record = slot.lock().map_err(|_| poisoned())?;
            let mut next = record.clone();
            change(&mut next)?;
            self.inner.store.write(&[Write::Channel(&next), Write::Settlement(settlement)])?;
            *record = next.clone();
            next
        };
        self.inner.store.commit().await?;
        self.emit(HubEvent::ChannelChanged { channel: next.id() });
        Ok(next)
    }

    pub fn budgets(&self) -> Result<Vec<Budget>, PaymentError> {
        Ok(self.inner.store.budgets()?)
    }

    pub async fn set_budget(&self, budget: Budget) -> Result<(), PaymentError> {
        if self.inner.config_budgets.contains(&budget.subject) {
            return Err(PaymentError::ConfigManaged(budget.subject));
        }
        let mut state = self.inner.spend.lock().await;
        self.inner.store.write(&[Write::Budget(&budget)])?;
        self.inner.store.commit().await?;
        state.committed.remove(&budget.subject);
        Ok(())
    }

    /// Removes `subject`'s budget: from now on it may spend nothing (its requests are denied).
    /// What it already spent stays in the books.
    pub async fn remove_budget(&self, subject: &Subject) -> Result<Budget, PaymentError> {
        if self.inner.config_budgets.contains(subject) {
            return Err(PaymentError::ConfigManaged(subject.clone()));
        }
        let mut state = self.inner.spend.lock().await;
        let budget = self.inner.store.budget(subject)?.ok_or_else(|| PaymentError::UnknownBudget(subject.clone()))?;
        self.inner.store.write(&[Write::RemoveBudget(subject)])?;
        self.inner.store.commit().await?;
        state.committed.remove(subject);
        Ok(budget)
    }

    /// The committed total for `budget`'s subject this period, from the cache or the store.
    /// On a miss, first commits: decisions written by earlier requests (under this lock) may
    /// still be on their way to the store, and must be counted.
    async fn committed(&self, state: &mut SpendState, budget: &Budget, now: Timestamp) -> Result<Amount, PaymentError> {
        let start = self.period_start(budget.period, now);
        if let Some((cached_start, total)) = state.committed.get(&budget.subject)
            && *cached_start == start
        {
            return Ok(*total);
        }
        self.inner.store.commit().await?;
        let since = start;
        let mut approvals = self.inner.store.approvals_created_since(since)?;
        approvals.extend(state.granted.values().cloned());
        let total = committed_since(&approvals, &budget.subject, since).map_err(|_| PaymentError::Overflow)?;
        state.committed.insert(budget.subject.clone(), (start, total));
        Ok(total)
    }

    /// When the budget period containing `now` began and when it ends, on the home's clock.
    pub fn period_bounds(&self, period: Period, now: Timestamp) -> (Timestamp, Timestamp) {
        let zone = self.zone();
        (period.start(now, &zone), period.end(now, &zone))
    }

    fn period_start(&self, period: Period, now: Timestamp) -> Timestamp {
        period.start(now, &self.zone())
    }

    fn zone(&self) -> impl Fn(Timestamp) -> i32 + '_ {
        |at| machinomy_web::zone_offset(&self.inner.settings.time_zone, at)
    }

    /// What `subject` has committed to spend in the budget period containing `now`.
    pub async fn spent_this_period(&self, budget: &Budget, now: Timestamp) -> Result<Amount, PaymentError> {
        let mut state = self.inner.spend.lock().await;
        self.committed(&mut state, budget, now).await
    }

    /// Decides a spend request against its subject's budget and records it. Approved ones count
    /// against the budget at once (pay them with [`Payments::pay`] naming the approval, or
    /// release them with [`Payments::spend_failed`]); pending ones wait for the owner.
    pub async fn request_spend(&self, request: SpendRequest, now: Timestamp) -> Result<Approval, PaymentError> {
        let mut state = self.inner.spend.lock().await;
        let budget = self.inner.store.budget(&request.subject)?;
        let spent = match &budget {
            Some(budget) => self.committed(&mut state, budget, now).await?,
            None => Amount::ZERO,
        };
        let mut decision = evaluate(budget.as_ref(), spent, &request, now, self.inner.settings.approval_ttl_secs);
        if matches!(decision, Decision::Pending { .. })
            && state.pending.len() >= self.inner.settings.max_pending_approvals
        {
            decision = Decision::Denied { reason: DenyReason::TooManyPending };
        }
        let id = state.next_approval_id;
        let approval = Approval::from_decision(id, request, &decision, now);
        let keep_in_memory = approval.counts_against_budget() && state.granted.len() < MAX_GRANTED;
        if keep_in_memory {
            state.granted.insert(id, approval.clone());
        } else {
            self.inner.store.write(&[Write::Approval(&approval)])?;
        }
        // The decision counts from now on, before it is durable: the lock is released for the
        // sync, so concurrent requests share it, and none of them can use the same headroom.
        state.next_approval_id += 1;
        if approval.is_pending() {
            state.pending.insert(id, approval.clone());
        }
        if approval.counts_against_budget()
            && let Some(budget) = &budget
        {
            let start = self.period_start(budget.period, approval.request.created_at);
            state.add_committed(&approval.request.subject, start, approval.request.amount);
        }
        drop(state);
        // Pending and denied answers are told to the requester, so they are durable first.
        if !keep_in_memory {
            self.inner.store.commit().await?;
        }
        self.emit(HubEvent::ApprovalCreated { approval: approval.clone() });
        Ok(approval)
    }

    /// Every spend request, newest first; with `pending_only`, just those waiting for the owner.
    pub async fn approvals(&self, pending_only: bool, now: Timestamp) -> Result<Vec<Approval>, PaymentError> {
        self.expire_due(now).await?;
        if pending_only {
            let state = self.inner.spend.lock().await;
            return Ok(state.pending.values().rev().cloned().collect());
        }
        let mut all = self.inner.store.approvals()?;
        all.extend(self.inner.spend.lock().await.granted.values().cloned());
        all.sort_by_key(|approval| std::cmp::Reverse(approval.id));
        Ok(all)
    }

    pub async fn approval(&self, id: u64, now: Timestamp) -> Result<Approval, PaymentError> {
        self.expire_due(now).await?;
        if let Some(granted) = self.inner.spend.lock().await.granted.get(&id) {
            return Ok(granted.clone());
        }
        self.inner.store.approval(id)?.ok_or(PaymentError::UnknownApproval(id))
    }

    /// Records the owner's verdict on a pending request.
    pub async fn decide(&self, id: u64, verdict: Verdict, by: &str, now: Timestamp) -> Result<Approval, PaymentError> {
        let mut state = self.inner.spend.lock().await;
        let mut approval = match state.pending.get(&id) {
            Some(pending) => pending.clone(),
            None => self.inner.store.approval(id)?.ok_or(PaymentError::UnknownApproval(id))?,
        };
        let result = approval.decide(verdict, by, now);
        if !approval.is_pending() && state.pending.contains_key(&id) {
            // Decided or expired just now: either way it leaves the queue, durably.
            self.inner.store.write(&[Write::Approval(&approval)])?;
            self.inner.store.commit().await?;
            state.pending.remove(&id);
            // The owner's approval counts against the period the request was made in.
            state.committed.remove(&approval.request.subject);
        }
        drop(state);
        result?;
        self.emit(HubEvent::ApprovalDecided { approval: approval.clone() });
        Ok(approval)
    }

    /// Denies every pending request of `subject` (a device that was unpaired, a plugin that was
    /// removed): nobody is left to be paid for. Returns them.
    pub async fn deny_pending_of(
        &self,
        subject: &Subject,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<Approval>, PaymentError> {
        let ids: Vec<u64> = {
            let state = self.inner.spend.lock().await;
            state.pending.values().filter(|a| &a.request.subject == subject).map(|a| a.id).collect()
        };
        let mut denied = Vec::with_capacity(ids.len());
        for id in ids {
            match self.decide(id, Verdict::Deny { reason: reason.to_owned() }, "hub", now).await {
                Ok(approval) => denied.push(approval),
                // Decided or expired meanwhile: nothing left to deny.
                Err(PaymentError::Approval(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(denied)
    }

    /// Expires pending requests whose time has come; returns them.
    pub async fn expire_due(&self, now: Timestamp) -> Result<Vec<Approval>, PaymentError> {
        let mut state = self.inner.spend.lock().await;
        let mut expired: Vec<Approval> = state.pending.values().filter(|a| now >= a.expires_at).cloned().collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        for approval in &mut expired {
            approval.expire_if_due(now);
        }
        let writes: Vec<Write<'_>> = expired.iter().map(Write::Approval).collect();
        self.inner.store.write(&writes)?;
        self.inner.store.commit().await?;
        for approval in &expired {
            state.pending.remove(&approval.id);
        }
        drop(state);
        for approval in &expired {
            self.emit(HubEvent::ApprovalDecided { approval: approval.clone() });
        }
        Ok(expired)
    }

    pub async fn pending_count(&self) -> usize {
        self.inner.spend.lock().await.pending.len()
    }

    /// Spending-ledger rows with `from <= at < to`.
    pub fn spending(&self, from: Option<Timestamp>, to: Option<Timestamp>) -> Result<Vec<SpendingEntry>, PaymentError> {
        Ok(self.inner.store.spending(from, to)?)
    }

    /// The newest `limit` payments made or received, newest first.
    pub fn recent_spending(&self, limit: usize) -> Result<Vec<SpendingEntry>, PaymentError> {
        Ok(self.inner.store.recent_spending(limit)?)
    }
}

fn random_seed() -> Result<[u8; 32], PaymentError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| PaymentError::Store(StoreError::Io(format!("no randomness: {e}"))))?;
    Ok(seed)
}

fn poisoned() -> PaymentError {
    // A lock is only poisoned if a thread panicked while holding it, which nothing here does.
    PaymentError::Store(StoreError::Io("internal lock poisoned".to_owned()))
}
