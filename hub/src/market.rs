//! The market: selling this hub's services to peers and buying theirs, paid over channels.
//!
//! Inbound, it is the peer protocol's handler: it answers channel proposals (the credit ledger
//! grants or refuses), payments (accept, then a signed receipt), invoices (the budget decides)
//! and service calls (accept the promise for the price, durably, then answer). Outbound, it buys:
//! finds a seller, asks the caller's budget, opens a channel when none has room, pays, calls,
//! checks the receipt, and resyncs with the seller when a call's fate is unknown. It also
//! invoices peers, pays per tick over hash-chain streams (a stream's channel is its own lane:
//! plain payments use other channels), and sells what a [`ServiceProvider`] (the plugin host)
//! offers beside the config's `[[sell]]`.
//!
//! It knows nothing of libp2p: peers are public keys, and the net layer carries the messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use machinomy_core::wire::{
    self, ChannelProposal, ChannelRequest, ChannelResponse, ErrorCode, Invoice, InvoiceResponse, PayRequest,
    PayResponse, Receipt, ServiceCall, ServiceOffer, ServiceResponse, TickRequest, WireError,
};
use machinomy_core::{
    Amount, ApprovalState, ChannelError, ChannelId, Currency, LedgerId, PromiseError, PublicKey, SigningKey,
    SpendRequest, Subject, Timestamp,
};
use tracing::{debug, warn};

use crate::config::{P2pSettings, SellSettings, ServiceAnswer};
use crate::hub::now;
use crate::ledger::{LedgerError, Proposal};
use crate::net::{BoxFuture, InboundHandler, NetError, NetHandle};
use crate::payments::{HubEvent, IncomingMeta, IncomingState, OutgoingMeta, PaymentError, Payments};
use crate::store::ChannelRecord;

/// Offers remembered from other hubs; beyond this the soonest to expire are dropped.
const MAX_OFFERS: usize = 4096;
/// How long a payment waits for a channel to the payee to come free.
const LANE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Invoices waiting for their payer's owner, remembered to book their payment; beyond this
/// the oldest are forgotten (their payment is then booked to the payer).
const MAX_INVOICES: usize = 4096;
/// The most ticks one stream commits to: the sender rebuilds the whole chain after a restart,
/// and one more signature per this many ticks is cheap.
const STREAM_TICKS: u64 = 256;
/// How a payment for an invoice names it: `invoice <reference>`.
const INVOICE_MEMO: &str = "invoice ";

/// A channel reserved for one payment; freed when dropped.
struct Lane<'a> {
    market: &'a Market,
    channel: ChannelId,
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        self.market.free_lane(self.channel);
    }
}

/// Why buying failed.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("no hub offers {0:?} (none announced it, and none was found in the DHT)")]
    NoSeller(String),
    #[error("spend request #{approval} waits for the owner's approval")]
    Pending { approval: u64 },
    #[error("the budget refused: {0}")]
    Denied(String),
    #[error("the seller refused: {0}")]
    Refused(WireError),
    #[error("the seller's answer is not what was asked: {0}")]
    BadAnswer(String),
    #[error("the peer network is not running")]
    NoNetwork,
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
}

/// What became of an invoice this hub sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceOutcome {
    /// Paid at once, and the promise durably accepted here: `amount` is what it added on `channel`.
    Paid {
        amount: Amount,
        channel: ChannelId,
    },
    /// Waiting for the payer's owner. If approved, the payment arrives later, booked to the
    /// invoicing subject, and [`HubEvent::InvoicePaid`] names the reference.
    Pending {
        approval: u64,
    },
    Denied {
        reason: String,
    },
}

/// A service sold by something outside the market (a plugin), like a `[[sell]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoldService {
    pub name: String,
    pub price: Amount,
    pub description: String,
}

/// A provider's answer to one paid call, and whose income the payment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidedAnswer {
    pub body: Vec<u8>,
    /// Booked as the payment's subject, e.g. `Subject::Plugin(name)`.
    pub subject: Subject,
}

/// Sells services beside the config's `[[sell]]` (the plugin host).
pub trait ServiceProvider: Send + Sync + std::fmt::Debug {
    /// Services sold right now (they change as plugins are installed or enabled).
    fn offers(&self) -> Vec<SoldService>;
    /// Answers one call whose payment was checked; the market takes the money only after an
    /// `Ok` answer (as for `[[sell]]`), so an error charges nothing.
    fn answer(&self, service: &str, from: PublicKey, body: Vec<u8>)
    -> BoxFuture<'_, Result<ProvidedAnswer, WireError>>;
}

/// What a bought call returned.
#[derive(Debug, Clone)]
pub struct Bought {
    pub seller: PublicKey,
    pub price: Amount,
    pub body: Vec<u8>,
    pub receipt: Receipt,
}

/// The latest state each device reported; filled by the appliance bridges. Kept as JSON
/// values and encoded only when a service call reads one: states change far more often.
#[derive(Debug, Default)]
pub struct DeviceStates(Mutex<HashMap<String, serde_json::Map<String, serde_json::Value>>>);

impl DeviceStates {
    pub fn set(&self, device: &str, state: serde_json::Map<String, serde_json::Value>) {
        if let Ok(mut states) = self.0.lock() {
            states.insert(device.to_owned(), state);
        }
    }

    /// The state as JSON bytes, as a service call answers it.
    pub fn get(&self, device: &str) -> Option<Vec<u8>> {
        serde_json::to_vec(self.0.lock().ok()?.get(device)?).ok()
    }
}

/// Who answers a call to a service this hub sells.
enum Seller<'a> {
    Config(&'a SellSettings),
    Provider(&'a dyn ServiceProvider, SoldService),
}

/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Market {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    payments: Payments,
    identity: SigningKey,
    ledger: LedgerId,
    currency: Currency,
    sell: Vec<SellSettings>,
    p2p: P2pSettings,
    settlement_period_secs: u64,
    devices: Arc<DeviceStates>,
    /// Offers seen, by (service, seller).
    offers: Mutex<BTreeMap<(String, PublicKey), ServiceOffer>>,
    /// Channels carrying a call right now. Promises are cumulative, so two calls in flight on
    /// one channel could arrive out of order and the lower one be refused: a channel is a
    /// lane that carries one payment at a time, and concurrent calls use other channels.
    busy: Mutex<std::collections::HashSet<ChannelId>>,
    /// Woken when a lane frees up.
    lane_freed: tokio::sync::Notify,
    /// Sellers' keys, decoded once for checking their receipts.
    seller_keys: Mutex<HashMap<PublicKey, ed25519_dalek::VerifyingKey>>,
    /// Channels whose last promise's fate is unknown (the call failed and the seller could not
    /// be asked): resynced before anything more is paid on them, so nothing is paid twice.
    unsettled: Mutex<std::collections::HashSet<ChannelId>>,
    /// Set once the net layer runs (it needs this market as its handler first).
    net: OnceLock<NetHandle>,
    /// Sells services beside `sell`; set once.
    provider: OnceLock<Arc<dyn ServiceProvider>>,
    invoices: Mutex<Invoices>,
    /// One invoice in flight per payer (payers hash to a stripe): the payer answers each with a
    /// cumulative promise on the same channel, and two answers crossing on the way would reach
    /// us out of order, the larger one first, so neither would match its invoice.
    invoicing: [tokio::sync::Mutex<()>; INVOICE_STRIPES],
}

/// How many payers may have an invoice in flight at once (more wait their turn).
const INVOICE_STRIPES: usize = 16;

/// Invoices sent and not yet paid: (payer, reference) → (order sent, subject to book to).
#[derive(Debug, Default)]
struct Invoices {
    next: u64,
    waiting: HashMap<(PublicKey, String), (u64, Subject)>,
}

impl Market {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        payments: Payments,
        identity: SigningKey,
        currency: Currency,
        sell: Vec<SellSettings>,
        p2p: P2pSettings,
        settlement_period_secs: u64,
        devices: Arc<DeviceStates>,
    ) -> Market {
        Market {
            inner: Arc::new(Inner {
                payments,
                identity,
                ledger: LedgerId::credit(),
                currency,
                sell,
                p2p,
                settlement_period_secs,
                devices,
                offers: Mutex::new(BTreeMap::new()),
                unsettled: Mutex::new(std::collections::HashSet::new()),
                busy: Mutex::new(std::collections::HashSet::new()),
                lane_freed: tokio::sync::Notify::new(),
                seller_keys: Mutex::new(HashMap::new()),
                net: OnceLock::new(),
                provider: OnceLock::new(),
                invoices: Mutex::new(Invoices::default()),
                invoicing: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            }),
        }
    }

    pub fn attach(&self, net: NetHandle) {
        let _ = self.inner.net.set(net);
    }

    pub fn net(&self) -> Option<&NetHandle> {
        self.inner.net.get()
    }

    /// Lets `provider` (the plugin host) sell services beside `[[sell]]`. Set once; later
    /// calls are ignored.
    pub fn set_service_provider(&self, provider: Arc<dyn ServiceProvider>) {
        if self.inner.provider.set(provider).is_err() {
            warn!("a service provider is already set; ignoring another");
        }
    }

    /// This hub's own offers, freshly signed: `[[sell]]`, then the provider's (a name
    /// `[[sell]]` already has, or an invalid one, is left out).
    pub fn own_offers(&self, now: Timestamp) -> Vec<ServiceOffer> {
        let expires = now.saturating_add_secs(self.inner.p2p.offer_ttl_secs);
        let sign = |name: &str, price: Amount, description: &str| {
            ServiceOffer::sign(name, price, self.inner.currency.code(), description, expires, &self.inner.identity)
        };
        let mut offers: Vec<ServiceOffer> =
            self.inner.sell.iter().map(|s| sign(&s.name, s.price, &s.description)).collect();
        for service in self.inner.provider.get().map(|p| p.offers()).unwrap_or_default() {
            if !wire::valid_service_name(&service.name) || service.description.len() > wire::MAX_DESCRIPTION {
                debug!(service = %service.name, "not offering a provided service with an invalid name or description");
                continue;
            }
            if !offers.iter().any(|o| o.name == service.name) {
                offers.push(sign(&service.name, service.price, &service.description));
            }
        }
        offers
    }

    /// The provider's service called `name`, unless `[[sell]]` has it.
    fn provided(&self, name: &str) -> Option<(&dyn ServiceProvider, SoldService)> {
        let provider = self.inner.provider.get()?;
        let service = provider.offers().into_iter().find(|s| s.name == name)?;
        Some((provider.as_ref(), service))
    }

    /// Announces every service this hub sells (gossip and DHT).
    pub async fn announce(&self) -> Result<usize, MarketError> {
        let net = self.net().ok_or(MarketError::NoNetwork)?;
        let offers = self.own_offers(now());
        for offer in &offers {
            net.announce(offer.clone()).await?;
        }
        Ok(offers.len())
    }

    /// Unexpired offers seen from other hubs, cheapest first within a service.
    pub fn offers(&self, now: Timestamp) -> Vec<ServiceOffer> {
        let Ok(mut offers) = self.inner.offers.lock() else { return Vec::new() };
        offers.retain(|_, offer| offer.expires_at > now);
        let mut list: Vec<ServiceOffer> = offers.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.price.cmp(&b.price)));
        list
    }

    fn remember(&self, offer: ServiceOffer) {
        let Ok(mut offers) = self.inner.offers.lock() else { return };
        if offers.len() >= MAX_OFFERS {
            let soonest = offers.iter().min_by_key(|(_, o)| o.expires_at).map(|(k, _)| k.clone());
            if let Some(key) = soonest {
                offers.remove(&key);
            }
        }
        offers.insert((offer.name.clone(), offer.seller), offer);
    }

    /// Checks an offer from `from` and remembers it; refuses unsigned, expired, foreign-currency
    /// offers and offers relayed in someone else's name.
    fn accept_offer(&self, from: &PublicKey, offer: ServiceOffer, now: Timestamp) -> Result<(), String> {
        if &offer.seller != from {
            return Err(format!("offer for {} arrived from {from}", offer.seller));
        }
        if offer.seller == self.inner.payments.public_key() {
            return Ok(()); // our own, echoed back
        }
        offer.verify(now).map_err(|e| e.to_string())?;
        if offer.currency_code != self.inner.currency.code() {
            return Err(format!(
                "offer is priced in {}, this hub uses {}",
                offer.currency_code,
                self.inner.currency.code()
            ));
        }
        self.remember(offer);
        Ok(())
    }

    // --- selling ------------------------------------------------------------------------------

    async fn on_channel(&self, from: PublicKey, request: ChannelRequest) -> ChannelResponse {
        match request {
            ChannelRequest::Propose(proposal) => match self.on_proposal(from, proposal).await {
                Ok(terms) => ChannelResponse::Accepted { terms },
                Err(e) => ChannelResponse::Error(e),
            },
            ChannelRequest::Resync { channel } => match self.inner.payments.incoming_state(channel, &from) {
                Ok(IncomingState { accepted, best, tick }) => ChannelResponse::State { channel, accepted, best, tick },
                Err(e) => ChannelResponse::Error(wire_error(&e)),
            },
            ChannelRequest::Offers => ChannelResponse::Offers { offers: self.own_offers(now()) },
        }
    }

    async fn on_proposal(
        &self,
        from: PublicKey,
        proposal: ChannelProposal,
    ) -> Result<machinomy_core::ChannelTerms, WireError> {
        if proposal.sender != from {
            return Err(WireError::new(ErrorCode::BadRequest, "the proposal's sender is not the peer that sent it"));
        }
        if proposal.ledger != self.inner.ledger {
            return Err(WireError::new(
                ErrorCode::WrongLedger,
                format!("this hub takes channels on {}, not {}", self.inner.ledger, proposal.ledger),
            ));
        }
        let proposal = Proposal {
            channel: proposal.channel,
            sender: proposal.sender,
            capacity: proposal.capacity,
            settlement_period_secs: proposal.settlement_period_secs,
        };
        self.inner.payments.accept_proposal(&proposal, now()).await.map_err(|e| wire_error(&e))
    }

    /// The promise must be on a channel `from` pays this hub on.
    fn check_sender(&self, from: &PublicKey, channel: ChannelId) -> Result<(), WireError> {
        match self.inner.payments.channel(&channel) {
            Ok(ChannelRecord::Receiver(c)) if &c.terms.sender == from => Ok(()),
            _ => Err(WireError::new(ErrorCode::UnknownChannel, format!("no channel {channel} from you is known here"))),
        }
    }

    async fn on_pay(&self, from: PublicKey, request: PayRequest) -> Result<Receipt, WireError> {
        wire::check_text("memo", &request.memo, wire::MAX_MEMO)?;
        let channel = request.promise.body.channel;
        self.check_sender(&from, channel)?;
        // Paying an invoice of ours that waited for the payer's owner.
        let reference = request.memo.strip_prefix(INVOICE_MEMO).filter(|r| !r.is_empty()).map(str::to_owned);
        let subject =
            reference.as_ref().and_then(|r| self.invoiced_subject(&from, r)).unwrap_or_else(|| peer_subject(&from));
        let meta = IncomingMeta { subject, memo: request.memo };
        let acceptance = self.inner.payments.accept(request.promise, &meta, now()).await.map_err(|e| wire_error(&e))?;
        if let Some(reference) = reference {
            self.forget_invoice(&from, &reference);
            self.inner.payments.emit(HubEvent::InvoicePaid { from, reference, amount: acceptance.increment });
        }
        Ok(self.inner.payments.receipt(channel, acceptance, now()))
    }

    async fn on_tick(&self, from: PublicKey, request: TickRequest) -> Result<Receipt, WireError> {
        wire::check_text("memo", &request.memo, wire::MAX_MEMO)?;
        self.check_sender(&from, request.channel)?;
        let meta = IncomingMeta { subject: peer_subject(&from), memo: request.memo };
        let acceptance = self
            .inner
            .payments
            .accept_tick(request.channel, &request.tick.preimage, &meta, now())
            .await
            .map_err(|e| wire_error(&e))?;
        Ok(self.inner.payments.receipt(request.channel, acceptance, now()))
    }

    async fn on_call(&self, from: PublicKey, call: ServiceCall) -> Result<(Vec<u8>, Receipt), WireError> {
        let seller = match self.inner.sell.iter().find(|s| s.name == call.service) {
            Some(service) => Seller::Config(service),
            None => match self.provided(&call.service) {
                Some((provider, service)) => Seller::Provider(provider, service),
                None => {
                    return Err(WireError::new(
                        ErrorCode::UnknownService,
                        format!("this hub does not sell {:?}", call.service),
                    ));
                }
            },
        };
        if call.body.len() > wire::MAX_BODY {
            return Err(WireError::new(ErrorCode::BadRequest, "the request body is too large"));
        }
        let channel = call.promise.body.channel;
        self.check_sender(&from, channel)?;
        // Have the answer before taking the money.
        let (price, body, subject) = match seller {
            Seller::Config(service) => {
                let (body, subject) = self.answer_sold(service, &from)?;
                (service.price, body, subject)
            }
            Seller::Provider(provider, service) => {
                // A plugin's work is worth more than a check: the payment is checked first.
                self.inner.payments.check_at_least(&call.promise, service.price).map_err(|e| refusal(&e))?;
                let answer = provider.answer(&call.service, from, call.body).await?;
                (service.price, answer.body, answer.subject)
            }
        };
        if body.len() > wire::MAX_BODY {
            return Err(WireError::new(ErrorCode::ServiceUnavailable, "the answer is too large to send"));
        }
        let meta = IncomingMeta { subject, memo: format!("service {}", call.service) };
        let acceptance =
            self.inner.payments.accept_at_least(call.promise, price, &meta, now()).await.map_err(|e| refusal(&e))?;
        Ok((body, self.inner.payments.receipt(channel, acceptance, now())))
    }

    /// A `[[sell]]` service's answer, and whose income it is.
    fn answer_sold(&self, service: &SellSettings, from: &PublicKey) -> Result<(Vec<u8>, Subject), WireError> {
        match &service.answer {
            ServiceAnswer::Text(text) => Ok((text.clone().into_bytes(), peer_subject(from))),
            ServiceAnswer::DeviceState { device } => match self.inner.devices.get(device) {
                Some(state) => Ok((state, Subject::Device(device.clone()))),
                None => Err(WireError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("device {device} has reported no state yet"),
                )),
            },
        }
    }

    async fn on_invoice(&self, from: PublicKey, invoice: Invoice) -> InvoiceResponse {
        if let Err(e) = wire::check_text("memo", &invoice.memo, wire::MAX_MEMO)
            .and_then(|()| wire::check_text("reference", &invoice.reference, wire::MAX_NAME))
        {
            return InvoiceResponse::Error(e);
        }
        let request = SpendRequest {
            subject: peer_subject(&from),
            payee: from.to_hex(),
            amount: invoice.amount,
            memo: invoice.memo.clone(),
            reference: invoice.reference.clone(),
            created_at: now(),
        };
        let approval = match self.inner.payments.request_spend(request, now()).await {
            Ok(approval) => approval,
            Err(e) => return InvoiceResponse::Error(wire_error(&e)),
        };
        match &approval.state {
            ApprovalState::Pending => InvoiceResponse::Pending { approval: approval.id },
            ApprovalState::Approved { .. } => {
                let memo = format!("{INVOICE_MEMO}{}", invoice.reference);
                match self.promise_to(&from, invoice.amount, &peer_subject(&from), &memo, Some(approval.id)).await {
                    // The promise travels back in this answer; the lane frees as it is sent.
                    Ok((promise, _lane)) => InvoiceResponse::Paid { promise },
                    Err(e) => {
                        let _ = self.inner.payments.spend_failed(approval.id, &e.to_string(), now()).await;
                        InvoiceResponse::Error(WireError::new(ErrorCode::Internal, e.to_string()))
                    }
                }
            }
            ApprovalState::Denied { reason, .. } => InvoiceResponse::Denied { reason: reason.clone() },
            ApprovalState::Expired { .. } => InvoiceResponse::Denied { reason: "expired".to_owned() },
        }
    }

    // --- invoicing ----------------------------------------------------------------------------

    /// Asks `payer` to pay this hub `amount`; the payer's budget decides. Paid at once, the
    /// promise must be on a channel from `payer` and is accepted durably here (booked to
    /// `subject`) before `Paid` is told; if it does not add exactly `amount` the answer is
    /// `BadAnswer`, though what it added is kept. Pending, the payer pays later with memo
    /// `invoice <reference>`, booked to `subject`, and [`HubEvent::InvoicePaid`] follows.
    /// `reference` (at most 64 bytes) should be unique: it is how that payment is recognised.
    pub async fn invoice(
        &self,
        payer: &PublicKey,
        amount: Amount,
        memo: &str,
        reference: &str,
        subject: &Subject,
    ) -> Result<InvoiceOutcome, MarketError> {
        wire::check_text("memo", memo, wire::MAX_MEMO)
            .and_then(|()| wire::check_text("reference", reference, wire::MAX_NAME))
            .map_err(MarketError::Refused)?;
        let net = self.net().ok_or(MarketError::NoNetwork)?;
        let stripe = usize::from(payer.as_bytes()[0]) % INVOICE_STRIPES;
        let _one_at_a_time = match self.inner.invoicing.get(stripe) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // Remembered before asking: the payer's owner may approve before its answer is here.
        self.expect_invoice(payer, reference, subject);
        let invoice = Invoice { amount, memo: memo.to_owned(), reference: reference.to_owned() };
        // Unanswered, it may still be pending there: it stays remembered.
        let answer = net.invoice(*payer, invoice).await?;
        if !matches!(answer, InvoiceResponse::Pending { .. }) {
            self.forget_invoice(payer, reference);
        }
        match answer {
            InvoiceResponse::Paid { promise } => {
                let channel = promise.body.channel;
                self.check_sender(payer, channel).map_err(|e| MarketError::BadAnswer(e.message))?;
                let meta = IncomingMeta { subject: subject.clone(), memo: memo.to_owned() };
                let acceptance = self.inner.payments.accept(promise, &meta, now()).await?;
                if acceptance.increment != amount {
                    return Err(MarketError::BadAnswer(format!(
                        "the payer paid {} of the {} invoiced (kept)",
                        acceptance.increment, amount
                    )));
                }
                Ok(InvoiceOutcome::Paid { amount: acceptance.increment, channel })
            }
            InvoiceResponse::Pending { approval } => Ok(InvoiceOutcome::Pending { approval }),
            InvoiceResponse::Denied { reason } => Ok(InvoiceOutcome::Denied { reason }),
            InvoiceResponse::Error(e) => Err(MarketError::Refused(e)),
        }
    }

    fn expect_invoice(&self, payer: &PublicKey, reference: &str, subject: &Subject) {
        let Ok(mut invoices) = self.inner.invoices.lock() else { return };
        let order = invoices.next;
        invoices.next += 1;
        let waiting = &mut invoices.waiting;
        if waiting.len() >= MAX_INVOICES {
            let oldest = waiting.iter().min_by_key(|(_, (order, _))| *order).map(|(key, _)| key.clone());
            if let Some(key) = oldest {
                waiting.remove(&key);
            }
        }
        waiting.insert((*payer, reference.to_owned()), (order, subject.clone()));
    }

    fn invoiced_subject(&self, payer: &PublicKey, reference: &str) -> Option<Subject> {
        let invoices = self.inner.invoices.lock().ok()?;
        invoices.waiting.get(&(*payer, reference.to_owned())).map(|(_, subject)| subject.clone())
    }

    fn forget_invoice(&self, payer: &PublicKey, reference: &str) {
        if let Ok(mut invoices) = self.inner.invoices.lock() {
            invoices.waiting.remove(&(*payer, reference.to_owned()));
        }
    }

    // --- buying -------------------------------------------------------------------------------

    /// A lane to `seller` with room for `amount`: an idle channel, or a new one when every
    /// channel with room is busy; when the seller's credit line allows no more, waits for a lane.
    async fn lane_to(&self, seller: &PublicKey, amount: Amount) -> Result<Lane<'_>, MarketError> {
        loop {
            let unsettled: Vec<ChannelId> =
                self.inner.unsettled.lock().map(|u| u.iter().copied().collect()).unwrap_or_default();
            for channel in unsettled {
                if matches!(self.inner.payments.channel(&channel), Ok(ChannelRecord::Sender(c)) if &c.terms.receiver == seller)
                    && self.try_take_lane(channel)
                {
                    self.resync(seller, channel).await;
                    self.free_lane(channel);
                }
            }
            let candidates = self.inner.payments.outgoing_with_room(seller, amount)?;
            let blocked = self.inner.unsettled.lock().map(|u| u.clone()).unwrap_or_default();
            for channel in candidates.iter().filter(|c| !blocked.contains(c)) {
                if self.try_take_lane(*channel) {
                    return Ok(Lane { market: self, channel: *channel });
                }
            }
            // Register for a wake-up before trying to open, so a lane freed meanwhile is not missed.
            let freed = self.inner.lane_freed.notified();
            match self.open_channel(seller, amount).await {
                Ok(channel) if self.try_take_lane(channel) => return Ok(Lane { market: self, channel }),
                Ok(_) => {}
                Err(MarketError::Refused(e)) if e.code == ErrorCode::CreditLimit && !candidates.is_empty() => {}
                Err(e) => return Err(e),
            }
            if tokio::time::timeout(LANE_WAIT, freed).await.is_err() {
                return Err(MarketError::BadAnswer(format!("no channel to {seller} came free in {LANE_WAIT:?}")));
            }
        }
    }

    fn try_take_lane(&self, channel: ChannelId) -> bool {
        self.inner.busy.lock().map(|mut busy| busy.insert(channel)).unwrap_or(false)
    }

    fn free_lane(&self, channel: ChannelId) {
        if let Ok(mut busy) = self.inner.busy.lock() {
            busy.remove(&channel);
        }
        self.inner.lane_freed.notify_waiters();
    }

    /// Proposes a new channel to `seller` with room for at least `amount`.
    async fn open_channel(&self, seller: &PublicKey, amount: Amount) -> Result<ChannelId, MarketError> {
        let net = self.net().ok_or(MarketError::NoNetwork)?;
        let capacity = self.inner.p2p.channel_capacity.max(amount);
        let proposal = ChannelProposal {
            channel: ChannelId::from_bytes(random_id()?),
            ledger: self.inner.ledger.clone(),
            sender: self.inner.payments.public_key(),
            capacity,
            settlement_period_secs: self.inner.settlement_period_secs,
        };
        let terms = match net.channel(*seller, ChannelRequest::Propose(proposal.clone())).await? {
            ChannelResponse::Accepted { terms } => terms,
            ChannelResponse::Error(e) => return Err(MarketError::Refused(e)),
            other => return Err(MarketError::BadAnswer(format!("{other:?}"))),
        };
        let as_proposed = terms.id == proposal.channel
            && terms.sender == proposal.sender
            && &terms.receiver == seller
            && terms.ledger == proposal.ledger
            && terms.capacity <= capacity
            && terms.capacity >= amount;
        if !as_proposed {
            return Err(MarketError::BadAnswer("the seller accepted terms that were not proposed".to_owned()));
        }
        debug!(channel = %terms.id, seller = %seller, capacity = %terms.capacity, "opened a channel");
        self.inner.payments.add_outgoing(terms.clone()).await?;
        Ok(terms.id)
    }

    /// Takes a lane to `payee` and signs a durable promise paying `amount` on it; the lane
    /// stays taken until the returned guard is dropped (after the promise is delivered).
    async fn promise_to(
        &self,
        payee: &PublicKey,
        amount: Amount,
        subject: &Subject,
        memo: &str,
        approval: Option<u64>,
    ) -> Result<(machinomy_core::Promise, Lane<'_>), MarketError> {
        let lane = self.lane_to(payee, amount).await?;
        let meta = OutgoingMeta { subject: subject.clone(), payee: payee.to_hex(), memo: memo.to_owned(), approval };
        let promise = self.inner.payments.pay(lane.channel, amount, &meta, now()).await?;
        Ok((promise, lane))
    }

    /// Finds sellers of `service`: offers already seen, else the DHT's providers, asked directly.
    async fn sellers(&self, service: &str) -> Result<Vec<ServiceOffer>, MarketError> {
        let known: Vec<ServiceOffer> = self.offers(now()).into_iter().filter(|o| o.name == service).collect();
        if !known.is_empty() {
            return Ok(known);
        }
        let net = self.net().ok_or(MarketError::NoNetwork)?;
        for provider in net.find_providers(service).await? {
            match net.channel(provider, ChannelRequest::Offers).await {
                Ok(ChannelResponse::Offers { offers }) => {
                    for offer in offers {
                        if let Err(e) = self.accept_offer(&provider, offer, now()) {
                            warn!(%provider, error = %e, "ignored an offer");
                        }
                    }
                }
                Ok(other) => warn!(%provider, answer = ?other, "provider did not list its offers"),
                Err(e) => warn!(%provider, error = %e, "could not ask a provider for its offers"),
            }
        }
        let found: Vec<ServiceOffer> = self.offers(now()).into_iter().filter(|o| o.name == service).collect();
        if found.is_empty() { Err(MarketError::NoSeller(service.to_owned())) } else { Ok(found) }
    }

    /// The cheapest offer of `service` known or found, so a buyer can ask its budget for the
    /// real price before [`Market::call_with_approval`].
    pub async fn quote(&self, service: &str) -> Result<ServiceOffer, MarketError> {
        let sellers = self.sellers(service).await?;
        sellers.into_iter().min_by_key(|o| o.price).ok_or_else(|| MarketError::NoSeller(service.to_owned()))
    }

    /// Buys one call of `service` for `subject`, inside `subject`'s budget.
    pub async fn call(&self, service: &str, body: Vec<u8>, subject: &Subject) -> Result<Bought, MarketError> {
        let offer = self.quote(service).await?;
        let request = SpendRequest {
            subject: subject.clone(),
            payee: offer.seller.to_hex(),
            amount: offer.price,
            memo: format!("service {service}"),
            reference: service.to_owned(),
            created_at: now(),
        };
        let approval = self.inner.payments.request_spend(request, now()).await?;
        match &approval.state {
            ApprovalState::Approved { .. } => {}
            ApprovalState::Pending => return Err(MarketError::Pending { approval: approval.id }),
            ApprovalState::Denied { reason, .. } => return Err(MarketError::Denied(reason.clone())),
            ApprovalState::Expired { .. } => return Err(MarketError::Denied("expired".to_owned())),
        }
        let result = self.call_paid(&offer, service, body, subject, approval.id).await;
        self.release_if_failed(approval.id, result).await
    }

    /// Buys one call of `service` with an approval already granted for up to `approval`'s
    /// amount (a device's spend request): the cheapest seller at or under it.
    pub async fn call_with_approval(
        &self,
        service: &str,
        body: Vec<u8>,
        approval: &machinomy_core::Approval,
    ) -> Result<Bought, MarketError> {
        let result = async {
            let offer = self
                .sellers(service)
                .await?
                .into_iter()
                .filter(|o| o.price <= approval.request.amount)
                .min_by_key(|o| o.price)
                .ok_or_else(|| MarketError::Denied(format!("no seller of {service:?} at or under the amount asked")))?;
            self.call_paid(&offer, service, body, &approval.request.subject, approval.id).await
        }
        .await;
        self.release_if_failed(approval.id, result).await
    }

    /// Releases an approval's budget when its spend failed: nothing was delivered (a promise
    /// the payee never stored is forgotten by the resync after the failure).
    async fn release_if_failed<T>(&self, approval: u64, result: Result<T, MarketError>) -> Result<T, MarketError> {
        if let Err(e) = &result {
            let _ = self.inner.payments.spend_failed(approval, &e.to_string(), now()).await;
        }
        result
    }

    async fn call_paid(
        &self,
        offer: &ServiceOffer,
        service: &str,
        body: Vec<u8>,
        subject: &Subject,
        approval: u64,
    ) -> Result<Bought, MarketError> {
        let net = self.net().ok_or(MarketError::NoNetwork)?;
        let seller = offer.seller;
        let (promise, _lane) =
            self.promise_to(&seller, offer.price, subject, &format!("service {service}"), Some(approval)).await?;
        let channel = promise.body.channel;
        let total = promise.body.amount;
        let call = ServiceCall { service: service.to_owned(), body, promise };
        let answer = net.call(seller, call).await;
        match answer {
            Ok(ServiceResponse::Result { body, receipt }) => {
                let valid =
                    self.verify_receipt(&receipt, &seller) && receipt.channel == channel && receipt.total == total;
                if !valid {
                    return Err(MarketError::BadAnswer("the receipt does not match the promise".to_owned()));
                }
                Ok(Bought { seller, price: offer.price, body, receipt })
            }
            Ok(ServiceResponse::Error(e)) => {
                self.resync(&seller, channel).await;
                Err(MarketError::Refused(e))
            }
            Err(e) => {
                // The promise may or may not have arrived: ask the seller what it holds.
                self.resync(&seller, channel).await;
                Err(e.into())
            }
        }
    }

    /// Pays an invoice the owner approved after it waited (see `on_invoice`): a promise for
    /// the invoiced amount, sent with the invoice's reference. Other approvals are ignored.
    pub async fn pay_approved_invoice(&self, approval: &machinomy_core::Approval) -> Result<(), MarketError> {
        let Subject::Peer(payee) = &approval.request.subject else { return Ok(()) };
        let owner_approved =
            matches!(&approval.state, ApprovalState::Approved { by, .. } if by != machinomy_core::BUDGET_PRINCIPAL);
        if !owner_approved || approval.outcome.is_some() || approval.request.payee != *payee {
            return Ok(());
        }
        let Ok(payee) = payee.parse::<PublicKey>() else { return Ok(()) };
        let memo = format!("{INVOICE_MEMO}{}", approval.request.reference);
        self.pay_with_approval(&payee, &memo, approval).await.map(|_| ())
    }

    /// Pays `payee` the approved amount over a channel, with `memo` for its books; on failure
    /// the approval is released.
    pub async fn pay_with_approval(
        &self,
        payee: &PublicKey,
        memo: &str,
        approval: &machinomy_core::Approval,
    ) -> Result<Receipt, MarketError> {
        let result = async {
            let net = self.net().ok_or(MarketError::NoNetwork)?;
            let (promise, _lane) = self
                .promise_to(payee, approval.request.amount, &approval.request.subject, memo, Some(approval.id))
                .await?;
            let channel = promise.body.channel;
            match net.pay(*payee, PayRequest { promise, memo: memo.to_owned() }).await {
                Ok(PayResponse::Receipt(receipt)) if receipt.verify(payee).is_ok() => Ok(receipt),
                Ok(PayResponse::Receipt(_)) => Err(MarketError::BadAnswer("the receipt does not verify".to_owned())),
                Ok(PayResponse::Error(e)) => {
                    self.resync(payee, channel).await;
                    Err(MarketError::Refused(e))
                }
                Err(e) => {
                    self.resync(payee, channel).await;
                    Err(e.into())
                }
            }
        }
        .await;
        self.release_if_failed(approval.id, result).await
    }

    /// Pays `payee` one tick of `price_per_tick` for `approval` (its budget already asked, for
    /// exactly that amount) over a stream. The first tick opens a stream on a channel of its
    /// own, its opening promise paying the tick; later ones reveal the next link of the stream's
    /// hash chain. When the stream is used up or its price differs, a new one is opened. The
    /// stream's lane is held for the tick, so its ticks go in order. On failure the approval is
    /// released and the channel resynced, as for [`Market::pay_with_approval`].
    pub async fn stream_tick_with_approval(
        &self,
        payee: &PublicKey,
        price_per_tick: Amount,
        memo: &str,
        approval: &machinomy_core::Approval,
    ) -> Result<Receipt, MarketError> {
        let result = async {
            if price_per_tick.is_zero() || approval.request.amount != price_per_tick {
                return Err(MarketError::Denied(format!(
                    "approval #{} is for {}, not one tick of {price_per_tick}",
                    approval.id, approval.request.amount
                )));
            }
            wire::check_text("memo", memo, wire::MAX_MEMO).map_err(MarketError::Refused)?;
            let net = self.net().ok_or(MarketError::NoNetwork)?;
            let lane = self.stream_lane(payee, price_per_tick).await?;
            let channel = lane.channel;
            let ChannelRecord::Sender(before) = self.inner.payments.channel(&channel)? else {
                return Err(PaymentError::WrongSide { id: channel, held: "receiver", wanted: "sender" }.into());
            };
            let total = before.promised().checked_add(price_per_tick).map_err(|_| PaymentError::Overflow)?;
            let meta = OutgoingMeta {
                subject: approval.request.subject.clone(),
                payee: payee.to_hex(),
                memo: memo.to_owned(),
                approval: Some(approval.id),
            };
            let ticking = before
                .stream
                .as_ref()
                .is_some_and(|s| s.terms.price_per_tick == price_per_tick && s.ticks_sent < s.terms.max_ticks);
            let tick = if ticking {
                match self.inner.payments.tick(channel, &meta, now()).await {
                    Ok(tick) => Some(tick),
                    // A stream known only from a resync cannot tick on: a new one starts here.
                    Err(PaymentError::Channel(ChannelError::Tick(_))) => None,
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            let answer = match tick {
                Some(tick) => net.tick(*payee, TickRequest { channel, tick, memo: memo.to_owned() }).await,
                None => {
                    let payments = &self.inner.payments;
                    let promise = match stream_length(before.remaining(), price_per_tick) {
                        // Only a channel whose stream cannot tick on lacks the room; pay it plainly.
                        0 => payments.pay(channel, price_per_tick, &meta, now()).await?,
                        ticks => {
                            payments.open_stream(channel, price_per_tick, price_per_tick, ticks, &meta, now()).await?
                        }
                    };
                    net.pay(*payee, PayRequest { promise, memo: memo.to_owned() }).await
                }
            };
            match answer {
                Ok(PayResponse::Receipt(receipt)) => {
                    let valid = self.verify_receipt(&receipt, payee)
                        && receipt.channel == channel
                        && receipt.total == total
                        && receipt.increment == price_per_tick;
                    if valid {
                        Ok(receipt)
                    } else {
                        Err(MarketError::BadAnswer("the receipt does not match the tick".to_owned()))
                    }
                }
                Ok(PayResponse::Error(e)) => {
                    self.resync(payee, channel).await;
                    Err(MarketError::Refused(e))
                }
                Err(e) => {
                    self.resync(payee, channel).await;
                    Err(e.into())
                }
            }
        }
        .await;
        self.release_if_failed(approval.id, result).await
    }

    /// A lane for one tick of `price` to `payee`: a channel whose stream ticks at that price,
    /// else one where a new stream fits (the opening payment and at least one tick) — a stream
    /// at another price is replaced rather than left stranded, as plain payments skip it.
    async fn stream_lane(&self, payee: &PublicKey, price: Amount) -> Result<Lane<'_>, MarketError> {
        let room = price.checked_mul(2).map_err(|_| PaymentError::Overflow)?;
        let streams = self.inner.payments.outgoing_streams(payee)?;
        let blocked = self.inner.unsettled.lock().map(|u| u.clone()).unwrap_or_default();
        let same_price = streams.iter().filter(|s| s.price_per_tick == price);
        let repriced = streams.iter().filter(|s| s.price_per_tick != price && s.remaining >= room);
        for stream in same_price.chain(repriced) {
            if !blocked.contains(&stream.channel) && self.try_take_lane(stream.channel) {
                return Ok(Lane { market: self, channel: stream.channel });
            }
        }
        self.lane_to(payee, room).await
    }

    fn verify_receipt(&self, receipt: &Receipt, seller: &PublicKey) -> bool {
        let cached = self.inner.seller_keys.lock().ok().and_then(|keys| keys.get(seller).copied());
        let key = match cached {
            Some(key) => key,
            None => {
                let Ok(key) = seller.verifying_key() else { return false };
                if let Ok(mut keys) = self.inner.seller_keys.lock() {
                    // Bounded like the offers they come from.
                    if keys.len() >= MAX_OFFERS {
                        keys.clear();
                    }
                    keys.insert(*seller, key);
                }
                key
            }
        };
        receipt.verify_with(&key).is_ok()
    }

    /// Adopts the seller's durable view of a channel after a failed or unanswered call; until
    /// that succeeds the channel is kept out of use.
    pub async fn resync(&self, seller: &PublicKey, channel: ChannelId) {
        let mark = |unsettled: bool| {
            if let Ok(mut set) = self.inner.unsettled.lock() {
                if unsettled {
                    set.insert(channel);
                } else {
                    set.remove(&channel);
                }
            }
        };
        let Some(net) = self.net() else { return mark(true) };
        match net.channel(*seller, ChannelRequest::Resync { channel }).await {
            Ok(ChannelResponse::State { best, tick, .. }) => {
                match self.inner.payments.resync_outgoing(channel, best, tick, now()).await {
                    Ok(_) => mark(false),
                    Err(e) => {
                        warn!(%channel, error = %e, "could not resync a channel");
                        mark(true);
                    }
                }
            }
            Ok(other) => {
                warn!(%channel, answer = ?other, "seller did not resync");
                mark(true);
            }
            Err(e) => {
                warn!(%channel, error = %e, "seller unreachable for a resync");
                mark(true);
            }
        }
    }
}

impl InboundHandler for Market {
    fn channel(&self, from: PublicKey, request: ChannelRequest) -> crate::net::BoxFuture<'_, ChannelResponse> {
        Box::pin(self.on_channel(from, request))
    }

    fn pay(&self, from: PublicKey, request: PayRequest) -> crate::net::BoxFuture<'_, PayResponse> {
        Box::pin(async move {
            match self.on_pay(from, request).await {
                Ok(receipt) => PayResponse::Receipt(receipt),
                Err(e) => PayResponse::Error(e),
            }
        })
    }

    fn tick(&self, from: PublicKey, request: TickRequest) -> crate::net::BoxFuture<'_, PayResponse> {
        Box::pin(async move {
            match self.on_tick(from, request).await {
                Ok(receipt) => PayResponse::Receipt(receipt),
                Err(e) => PayResponse::Error(e),
            }
        })
    }

    fn invoice(&self, from: PublicKey, request: Invoice) -> crate::net::BoxFuture<'_, InvoiceResponse> {
        Box::pin(self.on_invoice(from, request))
    }

    fn call(&self, from: PublicKey, request: ServiceCall) -> crate::net::BoxFuture<'_, ServiceResponse> {
        Box::pin(async move {
            match self.on_call(from, request).await {
                Ok((body, receipt)) => ServiceResponse::Result { body, receipt },
                Err(e) => ServiceResponse::Error(e),
            }
        })
    }

    fn offer(&self, from: PublicKey, offer: ServiceOffer) {
        if let Err(e) = self.accept_offer(&from, offer, now()) {
            debug!(%from, error = %e, "ignored a gossiped offer");
        }
    }
}

fn peer_subject(key: &PublicKey) -> Subject {
    Subject::Peer(key.to_hex())
}

fn random_id() -> Result<[u8; 32], MarketError> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| MarketError::BadAnswer(format!("no randomness: {e}")))?;
    Ok(id)
}

/// Ticks in a new stream: what the channel's room holds beyond the opening payment (which
/// pays the first tick), at most [`STREAM_TICKS`].
fn stream_length(remaining: Amount, price: Amount) -> u64 {
    let beyond_opening = remaining.saturating_sub(price).base_units() / price.base_units().max(1);
    u64::try_from(beyond_opening).unwrap_or(u64::MAX).min(STREAM_TICKS)
}

/// As [`wire_error`], telling a short payment how much is required.
fn refusal(e: &PaymentError) -> WireError {
    match e {
        PaymentError::Underpaid { required, .. } => {
            WireError { code: ErrorCode::PaymentRequired, message: e.to_string(), required: Some(*required) }
        }
        other => wire_error(other),
    }
}

/// The peer-facing form of a payment error: a stable code and a message without internals.
fn wire_error(e: &PaymentError) -> WireError {
    let code = match e {
        PaymentError::Promise(p) => ErrorCode::from(p),
        PaymentError::UnknownChannel(_) => ErrorCode::UnknownChannel,
        PaymentError::Ledger(LedgerError::CreditLimit { .. }) => ErrorCode::CreditLimit,
        PaymentError::Ledger(_) => ErrorCode::BadRequest,
        PaymentError::Channel(ChannelError::Tick(t)) => ErrorCode::from(t),
        PaymentError::Channel(_) => ErrorCode::ChannelClosed,
        PaymentError::Underpaid { .. } => ErrorCode::PaymentRequired,
        PaymentError::WrongSide { .. } => ErrorCode::UnknownChannel,
        PaymentError::Store(_) => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let message = match e {
        PaymentError::Store(_) => "the hub could not record this; try again".to_owned(),
        PaymentError::Promise(PromiseError::UnknownChannel(id)) => format!("no channel {id} is known here"),
        other => other.to_string(),
    };
    WireError::new(code, message)
}
