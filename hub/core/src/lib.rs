//! The Machinomy hub's domain, sans-IO.
//!
//! Amounts, promises, channel state machines, payment streams, budgets, approvals and the
//! spending ledger's reports, and the appliance contract over MQTT. Nothing here reads a clock, touches a disk or a socket, or
//! spawns anything: the hub passes in time, keys and stored state, and persists what comes out.

pub mod amount;
pub mod approval;
pub mod budget;
pub mod channel;
pub mod device;
pub mod ids;
pub mod plugin;
pub mod promise;
pub mod spending;
pub mod stream;
pub mod time;
pub mod wire;

pub use amount::{Amount, AmountError, Currency};
pub use approval::{Approval, ApprovalError, ApprovalState, BUDGET_PRINCIPAL, SpendOutcome, Verdict, committed_since};
pub use budget::{Budget, BudgetError, Decision, DenyReason, Period, SpendRequest, Subject, evaluate};
pub use channel::{
    Acceptance, ChannelError, ChannelStatus, ChannelTerms, PromiseError, ReceiverChannel, SenderChannel,
};
pub use device::{
    DeviceError, DeviceId, ErrorMessage, SpendRequestMessage, SpendResultMessage, SpendStatus, SpendTarget, TopicKind,
    VerifiedSpendRequest,
};
pub use ids::{ChannelId, IdError, LedgerId, PublicKey};
pub use promise::{Promise, PromiseBody, Signature, StreamTerms};
pub use spending::{DailySpending, Direction, GroupBy, ReportError, ReportRow, SpendingEntry, SubjectSeries};
pub use stream::{HashChain, StreamVerifier, Tick, TickError};
pub use time::{Timestamp, Utc, UtcOffset};

/// Re-exported so callers sign with the same key type the core verifies.
pub use ed25519_dalek::SigningKey;
