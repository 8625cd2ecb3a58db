//! The money task: carries out what plugins asked for through `spend`, `stream_tick`,
//! `call_service` and `invoice`, inside each plugin's budget, and reports every outcome back
//! to the plugin host. Host calls only queue here, so a plugin never waits on the owner or
//! the network; a spend the owner must decide is answered `pending` and finished when the
//! decision arrives.

use std::collections::HashMap;
use std::sync::Arc;

use machinomy_core::{Amount, Approval, ApprovalState, PublicKey, SpendRequest, Subject};
use machinomy_sdk::abi;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tracing::warn;

use super::host::Input;
use crate::hub::now;
use crate::market::{InvoiceOutcome, Market};
use crate::payments::{HubEvent, Payments};

/// Money requests queued from all plugins; a full queue answers `ERR_BUSY`.
pub(crate) const MONEY_QUEUE: usize = 256;
/// Requests carried out at once; more wait in the queue.
const IN_FLIGHT: usize = 64;
/// Requests waiting for the owner (or, for invoices, the payer) remembered at once.
const MAX_WAITING: usize = 4096;

/// What a plugin asked for.
#[derive(Debug, Clone)]
pub(crate) enum Order {
    Pay { payee: PublicKey, amount: Amount, memo: String },
    Tick { payee: PublicKey, price: Amount, memo: String },
    Invoice { payer: PublicKey, amount: Amount, memo: String },
    Call { service: String, body: Vec<u8>, max_price: Amount },
}

#[derive(Debug)]
pub(crate) struct MoneyRequest {
    pub(crate) plugin: Arc<str>,
    /// The id the plugin got back; its outcome carries it.
    pub(crate) request: u64,
    pub(crate) order: Order,
}

/// A request's outcome for the plugin's `on_spend_result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) plugin: Arc<str>,
    pub(crate) request: u64,
    pub(crate) status: i32,
    pub(crate) detail: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Money {
    payments: Payments,
    market: Market,
    host: mpsc::Sender<Input>,
}

/// Runs until `stop` turns true; requests in flight are finished or abandoned at shutdown
/// (abandoned ones released their budget or never moved money: payments persist first).
/// The caller subscribes `events` before spawning this, so a decision made the moment the
/// plugins are up is not missed.
pub(crate) async fn run(
    mut requests: mpsc::Receiver<MoneyRequest>,
    mut events: broadcast::Receiver<HubEvent>,
    payments: Payments,
    market: Market,
    host: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    let money = Money { payments: payments.clone(), market, host };
    let mut in_flight: JoinSet<()> = JoinSet::new();
    // Approval id → the request waiting on it; invoice reference → the request.
    let mut waiting: HashMap<u64, MoneyRequest> = HashMap::new();
    let mut invoices: HashMap<String, (Arc<str>, u64)> = HashMap::new();
    let (waits_tx, mut waits) = mpsc::channel::<Wait>(MONEY_QUEUE);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            Some(wait) = waits.recv() => match wait {
                Wait::Approval(id, request) if waiting.len() < MAX_WAITING => { waiting.insert(id, request); }
                Wait::Invoice(reference, plugin, request) if invoices.len() < MAX_WAITING => { invoices.insert(reference, (plugin, request)); }
                _ => warn!("too many plugin requests wait for a decision; one will get no answer"),
            },
            event = events.recv() => match event {
                Ok(HubEvent::ApprovalDecided { approval }) => {
                    let money = money.clone();
                    match waiting.remove(&approval.id) {
                        Some(request) => { in_flight.spawn(async move { money.decided(request, approval).await }); }
                        // Asked for before the hub restarted (or in the moment before it was
                        // remembered): what it was for is in the approval.
                        None => if let Some(asked) = Asked::of(&approval) {
                            in_flight.spawn(async move { money.decided_unremembered(asked, approval).await });
                        },
                    }
                }
                Ok(HubEvent::InvoicePaid { reference, amount, .. }) => {
                    if let Some((plugin, request)) = invoices.remove(&reference) {
                        money.report(Outcome { plugin, request, status: abi::STATUS_PAID, detail: amount.to_string().into_bytes() }).await;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "plugin money task fell behind on hub events; some pending plugin requests may get no answer");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(request) = requests.recv(), if in_flight.len() < IN_FLIGHT => {
                let money = money.clone();
                let waits = waits_tx.clone();
                in_flight.spawn(async move { money.carry_out(request, waits).await });
            }
        }
    }
    in_flight.shutdown().await;
}

enum Wait {
    Approval(u64, MoneyRequest),
    Invoice(String, Arc<str>, u64),
}

impl Money {
    async fn report(&self, outcome: Outcome) {
        let _ = self.host.send(Input::Outcome(outcome)).await;
    }

    async fn answer(&self, request: &MoneyRequest, status: i32, detail: impl Into<Vec<u8>>) {
        self.report(Outcome {
            plugin: request.plugin.clone(),
            request: request.request,
            status,
            detail: detail.into(),
        })
        .await;
    }

    async fn carry_out(&self, request: MoneyRequest, waits: mpsc::Sender<Wait>) {
        let subject = Subject::Plugin(request.plugin.to_string());
        let reference = reference(&request.plugin, request.request, &request.order);
        let (payee, amount, memo) = match &request.order {
            Order::Pay { payee, amount, memo } => (payee.to_hex(), *amount, memo.clone()),
            Order::Tick { payee, price, memo } => (payee.to_hex(), *price, memo.clone()),
            Order::Call { service, max_price, .. } => match self.market.quote(service).await {
                Ok(offer) if offer.price <= *max_price => {
                    (offer.seller.to_hex(), offer.price, format!("service {service}"))
                }
                Ok(offer) => {
                    let reason = format!("the cheapest seller of {service} asks {}, above {max_price}", offer.price);
                    return self.answer(&request, abi::STATUS_FAILED, reason).await;
                }
                Err(e) => return self.answer(&request, abi::STATUS_FAILED, e.to_string()).await,
            },
            Order::Invoice { payer, amount, memo } => {
                let outcome = self.market.invoice(payer, *amount, memo, &reference, &subject).await;
                return match outcome {
                    Ok(InvoiceOutcome::Paid { amount, .. }) => {
                        self.answer(&request, abi::STATUS_PAID, amount.to_string()).await;
                    }
                    Ok(InvoiceOutcome::Pending { approval }) => {
                        let _ = waits.send(Wait::Invoice(reference, request.plugin.clone(), request.request)).await;
                        self.answer(&request, abi::STATUS_PENDING, approval.to_string()).await;
                    }
                    Ok(InvoiceOutcome::Denied { reason }) => self.answer(&request, abi::STATUS_DENIED, reason).await,
                    Err(e) => self.answer(&request, abi::STATUS_FAILED, e.to_string()).await,
                };
            }
        };
        let spend = SpendRequest { subject, payee, amount, memo, reference, created_at: now() };
        let approval = match self.payments.request_spend(spend, now()).await {
            Ok(approval) => approval,
            Err(e) => return self.answer(&request, abi::STATUS_FAILED, e.to_string()).await,
        };
        match &approval.state {
            ApprovalState::Approved { .. } => self.pay(request, approval).await,
            ApprovalState::Pending => {
                let id = approval.id;
                self.answer(&request, abi::STATUS_PENDING, id.to_string()).await;
                let _ = waits.send(Wait::Approval(id, request)).await;
            }
            ApprovalState::Denied { reason, .. } => self.answer(&request, abi::STATUS_DENIED, reason.clone()).await,
            ApprovalState::Expired { .. } => self.answer(&request, abi::STATUS_DENIED, "expired").await,
        }
    }

    /// The owner decided a request that waited.
    async fn decided(&self, request: MoneyRequest, approval: Approval) {
        match &approval.state {
            ApprovalState::Approved { .. } => self.pay(request, approval).await,
            ApprovalState::Denied { reason, .. } => self.answer(&request, abi::STATUS_DENIED, reason.clone()).await,
            ApprovalState::Expired { .. } => self.answer(&request, abi::STATUS_DENIED, "expired").await,
            ApprovalState::Pending => {}
        }
    }

    /// The owner decided a request this task no longer remembers (the hub restarted while it
    /// waited): a payment or a tick is carried out from the approval; a service purchase is
    /// not, since its request body is gone, and its budget is released.
    async fn decided_unremembered(&self, asked: Asked, approval: Approval) {
        let Asked { plugin, request, kind } = asked;
        let tell = |status: i32, detail: Vec<u8>| Outcome { plugin: plugin.clone(), request, status, detail };
        match (&approval.state, kind) {
            (ApprovalState::Approved { .. }, Kind::Call) => {
                let reason = "the hub restarted while the purchase waited for the owner; ask again";
                if let Err(e) = self.payments.spend_failed(approval.id, reason, now()).await {
                    warn!(approval = approval.id, error = %e, "could not release a plugin's lost purchase");
                }
                self.report(tell(abi::STATUS_FAILED, reason.into())).await;
            }
            (ApprovalState::Approved { .. }, Kind::Pay | Kind::Tick) => {
                let Ok(payee) = approval.request.payee.parse::<PublicKey>() else {
                    return warn!(approval = approval.id, "an approved plugin spend names no payee key");
                };
                let (amount, memo) = (approval.request.amount, approval.request.memo.clone());
                let order = match kind {
                    Kind::Tick => Order::Tick { payee, price: amount, memo },
                    _ => Order::Pay { payee, amount, memo },
                };
                self.pay(MoneyRequest { plugin: plugin.clone(), request, order }, approval).await;
            }
            (ApprovalState::Denied { reason, .. }, _) => {
                self.report(tell(abi::STATUS_DENIED, reason.clone().into())).await
            }
            (ApprovalState::Expired { .. }, _) => self.report(tell(abi::STATUS_DENIED, b"expired".to_vec())).await,
            (ApprovalState::Pending, _) => {}
        }
    }

    /// Moves the money of an approved request.
    async fn pay(&self, request: MoneyRequest, approval: Approval) {
        let result = match &request.order {
            Order::Pay { payee, memo, .. } => {
                self.market.pay_with_approval(payee, memo, &approval).await.map(|_| Vec::new())
            }
            Order::Tick { payee, price, memo } => {
                self.market.stream_tick_with_approval(payee, *price, memo, &approval).await.map(|_| Vec::new())
            }
            Order::Call { service, body, .. } => {
                self.market.call_with_approval(service, body.clone(), &approval).await.map(|bought| bought.body)
            }
            Order::Invoice { .. } => return,
        };
        match result {
            Ok(detail) => self.answer(&request, abi::STATUS_PAID, detail).await,
            Err(e) => self.answer(&request, abi::STATUS_FAILED, e.to_string()).await,
        }
    }
}

/// What a plugin asked the money task for, as its approval's reference says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pay,
    Tick,
    Call,
}

/// The plugin, its request id and the kind of request an approval was made for.
#[derive(Debug, Clone)]
struct Asked {
    plugin: Arc<str>,
    request: u64,
    kind: Kind,
}

/// A request's reference in its approval (or invoice): `plugin:<name>:<id>`, with `:tick` or
/// `:call` after a stream tick or a purchase, so a decision that arrives after a restart can
/// still be carried out. An invoice's reference (at most `wire::MAX_NAME` bytes, and it has no
/// approval here) cuts a long name short; the id keeps it unique.
fn reference(plugin: &str, request: u64, order: &Order) -> String {
    match order {
        Order::Pay { .. } => format!("plugin:{plugin}:{request}"),
        Order::Tick { .. } => format!("plugin:{plugin}:{request}:tick"),
        Order::Call { .. } => format!("plugin:{plugin}:{request}:call"),
        Order::Invoice { .. } => {
            let tail = format!(":{request}");
            let room = machinomy_core::wire::MAX_NAME.saturating_sub("plugin:".len() + tail.len());
            // Plugin names are ASCII, so any cut is on a character boundary.
            let name = plugin.get(..room.min(plugin.len())).unwrap_or_default();
            format!("plugin:{name}{tail}")
        }
    }
}

impl Asked {
    /// The request a plugin's approval was made for, if it is one (its subject is the plugin
    /// its reference names).
    fn of(approval: &Approval) -> Option<Asked> {
        let Subject::Plugin(subject) = &approval.request.subject else { return None };
        let mut parts = approval.request.reference.split(':');
        let (Some("plugin"), Some(name), Some(id)) = (parts.next(), parts.next(), parts.next()) else { return None };
        let kind = match (parts.next(), parts.next()) {
            (None, _) => Kind::Pay,
            (Some("tick"), None) => Kind::Tick,
            (Some("call"), None) => Kind::Call,
            _ => return None,
        };
        if name != subject || approval.outcome.is_some() {
            return None;
        }
        Some(Asked { plugin: Arc::from(name), request: id.parse().ok()?, kind })
    }
}
