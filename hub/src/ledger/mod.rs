//! Ledgers: where a channel's money really sits. The hub talks to every ledger through
//! [`Ledger`]; `credit` (the embedded default) needs no chain at all.

mod credit;

use std::future::Future;
use std::pin::Pin;

use machinomy_core::{Amount, ChannelId, ChannelTerms, Currency, LedgerId, PublicKey, Timestamp};

pub use credit::CreditLedger;

/// A sender's request to open a channel to this hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub channel: ChannelId,
    pub sender: PublicKey,
    pub capacity: Amount,
    pub settlement_period_secs: u64,
}

/// What a ledger says about a closed channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closing {
    pub final_amount: Amount,
    /// When the amount may be settled.
    pub settle_after: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("asked for {requested} of credit but only {available} is left for this peer (limit {limit})")]
    CreditLimit { requested: Amount, available: Amount, limit: Amount },
    #[error("a channel needs a capacity above zero")]
    ZeroCapacity,
    #[error("settlement period {got}s is shorter than the {min}s this hub requires")]
    SettlementTooShort { got: u64, min: u64 },
    #[error("channel {0} is already known; channel ids are never reused")]
    DuplicateChannel(ChannelId),
    #[error("a channel with ourselves makes no sense")]
    SelfChannel,
    #[error("the amount overflows")]
    Overflow,
}

pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// One ledger's rules for opening, topping up, closing and settling channels.
///
/// Methods receive what they need about other channels from the caller (the payments module
/// owns channel state); a chain-backed ledger also talks to its chain here.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    fn id(&self) -> &LedgerId;
    fn currency(&self) -> &Currency;

    /// As receiver: the terms on which to open `proposal`, given the capacity already granted
    /// to the same sender on channels still open.
    fn open<'a>(
        &'a self,
        proposal: &'a Proposal,
        granted_to_sender: Amount,
        now: Timestamp,
    ) -> LedgerFuture<'a, ChannelTerms>;

    /// As receiver: the new capacity after raising `terms` by `additional`.
    fn top_up<'a>(
        &'a self,
        terms: &'a ChannelTerms,
        additional: Amount,
        granted_to_sender: Amount,
    ) -> LedgerFuture<'a, Amount>;

    /// Either side: close with the final amount this side holds.
    fn close<'a>(&'a self, terms: &'a ChannelTerms, final_amount: Amount, now: Timestamp) -> LedgerFuture<'a, Closing>;

    /// Either side: the amount settled.
    fn settle<'a>(&'a self, terms: &'a ChannelTerms, final_amount: Amount, now: Timestamp) -> LedgerFuture<'a, Amount>;
}
