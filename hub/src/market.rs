//! The market: selling this hub's services to peers and buying theirs, paid over channels.
//!
//! Inbound, it is the peer protocol's handler: it answers channel proposals (the credit ledger
//! grants or refuses), payments (accept, then a signed receipt), invoices (the budget decides)
//! and service calls (accept the promise for the price, durably, then answer). Outbound, it buys:
//! finds a seller, asks the caller's budget, opens a channel when none has room, pays, calls,
//! checks the receipt, and resyncs with the seller when a call's fate is unknown.
//!
//! It knows nothing of libp2p: peers are public keys, and the net layer carries the messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use machinomy_core::wire::{
    self, ChannelProposal, ChannelRequest, ChannelResponse, ErrorCode, Invoice, InvoiceResponse, PayRequest,
    PayResponse, Receipt, ServiceCall, ServiceOffer, ServiceResponse, WireError,
};
use machinomy_core::{
    Amount, ApprovalState, ChannelId, Currency, LedgerId, PromiseError, PublicKey, SigningKey, SpendRequest, Subject,
    Timestamp,
};
use tracing::{debug, warn};

use crate::config::{P2pSettings, SellSettings, ServiceAnswer};
use crate::hub::now;
use crate::ledger::{LedgerError, Proposal};
use crate::net::{InboundHandler, NetError, NetHandle};
use crate::payments::{IncomingMeta, OutgoingMeta, PaymentError, Payments};
use crate::store::ChannelRecord;

/// Offers remembered from other hubs; beyond this the soonest to expire are dropped.
const MAX_OFFERS: usize = 4096;
/// How long a payment waits for a channel to the payee to come free.
const LANE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
            }),
        }
    }

    pub fn attach(&self, net: NetHandle) {
        let _ = self.inner.net.set(net);
    }

    pub fn net(&self) -> Option<&NetHandle> {
        self.inner.net.get()
    }

    /// This hub's own offers, freshly signed.
    pub fn own_offers(&self, now: Timestamp) -> Vec<ServiceOffer> {
        let expires = now.saturating_add_secs(self.inner.p2p.offer_ttl_secs);
        self.inner
            .sell
            .iter()
            .map(|s| {
                ServiceOffer::sign(
                    &s.name,
                    s.price,
                    self.inner.currency.code(),
                    &s.description,
                    expires,
                    &self.inner.identity,
                )
            })
            .collect()
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
                Ok((accepted, best)) => ChannelResponse::State { channel, accepted, best },
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
        let meta = IncomingMeta { subject: peer_subject(&from), memo: request.memo };
        let acceptance = self.inner.payments.accept(request.promise, &meta, now()).await.map_err(|e| wire_error(&e))?;
        Ok(self.inner.payments.receipt(channel, acceptance, now()))
    }

    async fn on_call(&self, from: PublicKey, call: ServiceCall) -> Result<(Vec<u8>, Receipt), WireError> {
        let service = self.inner.sell.iter().find(|s| s.name == call.service).ok_or_else(|| {
            WireError::new(ErrorCode::UnknownService, format!("this hub does not sell {:?}", call.service))
        })?;
        if call.body.len() > wire::MAX_BODY {
            return Err(WireError::new(ErrorCode::BadRequest, "the request body is too large"));
        }
        let channel = call.promise.body.channel;
        self.check_sender(&from, channel)?;
        // Have the answer before taking the money.
        let (body, subject) = match &service.answer {
            ServiceAnswer::Text(text) => (text.clone().into_bytes(), peer_subject(&from)),
            ServiceAnswer::DeviceState { device } => match self.inner.devices.get(device) {
                Some(state) => (state, Subject::Device(device.clone())),
                None => {
                    return Err(WireError::new(
                        ErrorCode::ServiceUnavailable,
                        format!("device {device} has reported no state yet"),
                    ));
                }
            },
        };
        let meta = IncomingMeta { subject, memo: format!("service {}", service.name) };
        let acceptance = self.inner.payments.accept_at_least(call.promise, service.price, &meta, now()).await.map_err(
            |e| match e {
                PaymentError::Underpaid { required, .. } => {
                    WireError { code: ErrorCode::PaymentRequired, message: e.to_string(), required: Some(required) }
                }
                other => wire_error(&other),
            },
        )?;
        Ok((body, self.inner.payments.receipt(channel, acceptance, now())))
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
                let memo = format!("invoice {}", invoice.reference);
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

    /// Buys one call of `service` for `subject`, inside `subject`'s budget.
    pub async fn call(&self, service: &str, body: Vec<u8>, subject: &Subject) -> Result<Bought, MarketError> {
        let sellers = self.sellers(service).await?;
        let offer =
            sellers.into_iter().min_by_key(|o| o.price).ok_or_else(|| MarketError::NoSeller(service.to_owned()))?;
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
        let memo = format!("invoice {}", approval.request.reference);
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
            Ok(ChannelResponse::State { best, .. }) => {
                match self.inner.payments.resync_outgoing(channel, best, now()).await {
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

/// The peer-facing form of a payment error: a stable code and a message without internals.
fn wire_error(e: &PaymentError) -> WireError {
    let code = match e {
        PaymentError::Promise(p) => ErrorCode::from(p),
        PaymentError::UnknownChannel(_) => ErrorCode::UnknownChannel,
        PaymentError::Ledger(LedgerError::CreditLimit { .. }) => ErrorCode::CreditLimit,
        PaymentError::Ledger(_) => ErrorCode::BadRequest,
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
