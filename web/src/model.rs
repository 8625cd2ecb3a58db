//! The JSON shapes of the admin API, shared by the server and the CLI client.
//!
//! Amounts are strings of base units (see DESIGN.md §3); each view also carries the currency so
//! a client can show `1.5 USD` without asking again.

use machinomy_core::{
    Amount, Budget, ChannelId, ChannelStatus, Currency, GroupBy, LedgerId, PublicKey, ReportRow, Timestamp,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    pub name: String,
    pub version: String,
    /// The hub's ed25519 identity.
    pub public_key: PublicKey,
    pub started_at: Timestamp,
    pub uptime_secs: u64,
    pub currency: Currency,
    pub channels_open: u64,
    pub approvals_pending: u64,
    pub budgets: u64,
}

/// Which end of a channel this hub holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This hub pays on the channel.
    Sender,
    /// This hub is paid on the channel.
    Receiver,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub id: ChannelId,
    pub role: Role,
    pub ledger: LedgerId,
    /// The other party's public key.
    pub counterparty: PublicKey,
    pub currency: Currency,
    pub capacity: Amount,
    /// Promised (sender) or accepted (receiver) so far.
    pub spent: Amount,
    pub remaining: Amount,
    pub status: ChannelStatus,
    pub opened_at: Timestamp,
    pub settlement_period_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetView {
    #[serde(flatten)]
    pub budget: Budget,
    pub currency: Currency,
    pub spent_this_period: Amount,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
}

/// `GET /api/v1/spending?group_by=subject&from=2026-11-01&to=2026-12-01`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingQuery {
    pub group_by: GroupBy,
    /// Inclusive start.
    pub from: Option<Timestamp>,
    /// Exclusive end.
    pub to: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingReport {
    pub currency: Currency,
    pub group_by: GroupBy,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub rows: Vec<ReportRow>,
    pub total_paid: Amount,
    pub total_received: Amount,
}

/// `POST /api/v1/approvals/{id}/deny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    #[serde(default)]
    pub reason: String,
}

/// Every error answer: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
