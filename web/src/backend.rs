//! What the web layer needs from a hub. The hub implements [`Backend`]; tests implement it
//! with an in-memory double. Nothing here knows how the hub stores or moves money.

use std::future::Future;

use machinomy_core::{Approval, Budget, ChannelId, DeviceId, Verdict};

use crate::model::{
    BudgetView, CallBody, CallResult, ChannelView, DeviceView, HubStatus, NewDevice, PairedDevice, PeerView,
    ServicesView, SpendingQuery, SpendingReport,
};

/// Why the backend could not do what was asked. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// 404: no such channel, approval, budget …
    #[error("{0}")]
    NotFound(String),
    /// 400: the request is well-formed JSON but asks for something invalid.
    #[error("{0}")]
    Invalid(String),
    /// 409: the thing exists but is in the wrong state (already decided, already closed).
    #[error("{0}")]
    Conflict(String),
    /// 503: the hub is shutting down or a subsystem is not running.
    #[error("{0}")]
    Unavailable(String),
    /// 500: something broke inside the hub; the message is logged, the client sees a summary.
    #[error("{0}")]
    Internal(String),
}

/// The hub as the admin API sees it.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Result<HubStatus, BackendError>> + Send;

    fn channels(&self) -> impl Future<Output = Result<Vec<ChannelView>, BackendError>> + Send;
    fn channel(&self, id: ChannelId) -> impl Future<Output = Result<ChannelView, BackendError>> + Send;
    /// Closes an open channel; the answer is its new state.
    fn close_channel(&self, id: ChannelId) -> impl Future<Output = Result<ChannelView, BackendError>> + Send;

    fn budgets(&self) -> impl Future<Output = Result<Vec<BudgetView>, BackendError>> + Send;
    /// Creates or replaces the budget of `budget.subject`.
    fn set_budget(&self, budget: Budget) -> impl Future<Output = Result<BudgetView, BackendError>> + Send;

    /// Approvals, newest first; only pending ones when `pending_only`.
    fn approvals(&self, pending_only: bool) -> impl Future<Output = Result<Vec<Approval>, BackendError>> + Send;
    fn approval(&self, id: u64) -> impl Future<Output = Result<Approval, BackendError>> + Send;
    /// Records the owner's verdict; `by` names who decided (the authenticated principal).
    fn decide(
        &self,
        id: u64,
        verdict: Verdict,
        by: String,
    ) -> impl Future<Output = Result<Approval, BackendError>> + Send;

    fn spending(&self, query: SpendingQuery) -> impl Future<Output = Result<SpendingReport, BackendError>> + Send;

    /// Hubs known on the peer network.
    fn peers(&self) -> impl Future<Output = Result<Vec<PeerView>, BackendError>> + Send;
    /// Services this hub sells and those it has seen offered.
    fn services(&self) -> impl Future<Output = Result<ServicesView, BackendError>> + Send;
    /// Buys one call of `service` inside `call.subject`'s budget. A spend over the budget's
    /// threshold answers `Conflict` naming the pending approval.
    fn call_service(
        &self,
        service: String,
        call: CallBody,
    ) -> impl Future<Output = Result<CallResult, BackendError>> + Send;

    /// Registry devices (removed ones are gone from this list).
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceView>, BackendError>> + Send;
    fn device(&self, id: DeviceId) -> impl Future<Output = Result<DeviceView, BackendError>> + Send;
    /// Pairs a device: `Conflict` if the id is taken.
    fn add_device(&self, device: NewDevice) -> impl Future<Output = Result<PairedDevice, BackendError>> + Send;
    /// Unpairs a device: its credentials stop working and its key can no longer spend.
    fn remove_device(&self, id: DeviceId) -> impl Future<Output = Result<DeviceView, BackendError>> + Send;
    /// Sends `payload` (JSON) to the device's `cmd/<name>` topic (or its BLE characteristic).
    fn send_command(
        &self,
        id: DeviceId,
        name: String,
        payload: serde_json::Value,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}
