//! Money: pay peers, buy services, invoice peers. Nothing here waits: each call returns a
//! [`RequestId`] at once, and the outcome arrives later in
//! [`Plugin::on_spend_result`](crate::Plugin::on_spend_result) with that id, so a plugin stores
//! what it needs to know about a request (in [`kv`](crate::kv)) under its id.
//!
//! Peers are hub public keys in hex. Amounts are base units. Memos longer than
//! [`abi::MAX_TEXT`] bytes are cut.

use core::fmt;

use crate::{abi, cut_text, host, Amount, Error, Result};

/// A money request, as returned by [`spend`], [`call_service`], [`invoice`] and [`stream_tick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub i64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The outcome of a money request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpendStatus {
    /// The money moved. For [`call_service`] the detail is the service's answer; for
    /// [`invoice`] the peer paid.
    Paid,
    /// The owner must decide (the detail is the approval id); a final status follows.
    Pending,
    /// The budget or the owner (for an invoice: the payer) said no; the detail is the reason.
    Denied,
    /// Allowed but it did not happen (no seller, no network, refused by the peer).
    Failed,
}

impl SpendStatus {
    /// The status of an ABI `STATUS_*` code.
    pub fn from_code(code: i32) -> Option<SpendStatus> {
        match code {
            abi::STATUS_PAID => Some(SpendStatus::Paid),
            abi::STATUS_PENDING => Some(SpendStatus::Pending),
            abi::STATUS_DENIED => Some(SpendStatus::Denied),
            abi::STATUS_FAILED => Some(SpendStatus::Failed),
            _ => None,
        }
    }

    /// The ABI `STATUS_*` code.
    pub fn code(self) -> i32 {
        match self {
            SpendStatus::Paid => abi::STATUS_PAID,
            SpendStatus::Pending => abi::STATUS_PENDING,
            SpendStatus::Denied => abi::STATUS_DENIED,
            SpendStatus::Failed => abi::STATUS_FAILED,
        }
    }

    /// `"paid"`, `"pending"`, `"denied"` or `"failed"` (as the hub's MQTT topics spell them).
    pub fn as_str(self) -> &'static str {
        match self {
            SpendStatus::Paid => "paid",
            SpendStatus::Pending => "pending",
            SpendStatus::Denied => "denied",
            SpendStatus::Failed => "failed",
        }
    }

    /// Whether no other status follows this one (all but [`SpendStatus::Pending`]).
    pub fn is_final(self) -> bool {
        self != SpendStatus::Pending
    }
}

impl fmt::Display for SpendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pays `amount` to the peer `payee` from the plugin's budget (manifest: `grants.pay`).
pub fn spend(payee: &str, amount: Amount, memo: &str) -> Result<RequestId> {
    let amount = amount.to_string();
    let id = host::spend(payee.as_bytes(), amount.as_bytes(), cut_text(memo).as_bytes());
    Error::check64(id).map(RequestId)
}

/// Buys one call of a peer's `service` with `body` as the request, paying at most `max_price`
/// (manifest: `grants.call`). On [`SpendStatus::Paid`] the detail is the answer.
pub fn call_service(service: &str, body: &[u8], max_price: Amount) -> Result<RequestId> {
    let max_price = max_price.to_string();
    Error::check64(host::call_service(service.as_bytes(), body, max_price.as_bytes())).map(RequestId)
}

/// Asks the peer `peer` to pay this hub `amount` (manifest: `grants.invoice`); the peer's budget
/// decides, and [`SpendStatus::Paid`] means it paid.
pub fn invoice(peer: &str, amount: Amount, memo: &str) -> Result<RequestId> {
    let amount = amount.to_string();
    let id = host::invoice(peer.as_bytes(), amount.as_bytes(), cut_text(memo).as_bytes());
    Error::check64(id).map(RequestId)
}

/// Pays one tick of `price` on a payment stream to `payee` (opened on first use; manifest:
/// `grants.pay`).
pub fn stream_tick(payee: &str, price: Amount, memo: &str) -> Result<RequestId> {
    let price = price.to_string();
    let id = host::stream_tick(payee.as_bytes(), price.as_bytes(), cut_text(memo).as_bytes());
    Error::check64(id).map(RequestId)
}
