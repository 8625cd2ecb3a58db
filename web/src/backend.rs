//! What the web layer needs from a hub. The hub implements [`Backend`]; tests implement it
//! with an in-memory double. Nothing here knows how the hub stores or moves money.

use std::future::Future;

use jiff::tz::TimeZone;
use machinomy_core::{Approval, Budget, ChannelId, DeviceId, SpendingEntry, Subject, Timestamp, Verdict};
use tokio::sync::broadcast;

use crate::model::{
    BudgetView, CallBody, CallResult, ChannelView, DailySpendingView, DeviceView, HubStatus, LiveEvent, NewDevice,
    PairedDevice, PeerView, PluginInstalled, PluginView, ServicesView, SpendingQuery, SpendingReport,
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
    /// 413: an upload is larger than the hub accepts.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the hub is shutting down or a subsystem is not running.
    #[error("{0}")]
    Unavailable(String),
    /// 500: something broke inside the hub; the message is logged, the client sees a summary.
    #[error("{0}")]
    Internal(String),
}

/// A plugin as uploaded: its manifest's text and its module, decoded from base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginUpload {
    pub manifest: String,
    pub wasm: Vec<u8>,
}

/// The hub as the admin API sees it.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Result<HubStatus, BackendError>> + Send;

    /// The home's time zone: pages show times in it, and dates (`from=2026-11-01`, the days of a
    /// report) are its calendar days.
    fn time_zone(&self) -> TimeZone;

    /// Changes as they happen, for `GET /api/v1/events`. The stream ends when the hub stops;
    /// `Unavailable` while nothing feeds it.
    fn live_events(&self) -> Result<broadcast::Receiver<LiveEvent>, BackendError>;

    fn channels(&self) -> impl Future<Output = Result<Vec<ChannelView>, BackendError>> + Send;
    fn channel(&self, id: ChannelId) -> impl Future<Output = Result<ChannelView, BackendError>> + Send;
    /// Closes an open channel; the answer is its new state.
    fn close_channel(&self, id: ChannelId) -> impl Future<Output = Result<ChannelView, BackendError>> + Send;

    fn budgets(&self) -> impl Future<Output = Result<Vec<BudgetView>, BackendError>> + Send;
    /// Creates or replaces the budget of `budget.subject`.
    fn set_budget(&self, budget: Budget) -> impl Future<Output = Result<BudgetView, BackendError>> + Send;
    /// Removes `subject`'s budget (it may spend nothing after); the answer is the budget removed.
    fn remove_budget(&self, subject: Subject) -> impl Future<Output = Result<Budget, BackendError>> + Send;

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
    /// What each subject paid out on each day of `[from, to)` (at most a year).
    fn daily_spending(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> impl Future<Output = Result<DailySpendingView, BackendError>> + Send;
    /// The newest `limit` payments made or received, newest first.
    fn recent_payments(&self, limit: usize) -> impl Future<Output = Result<Vec<SpendingEntry>, BackendError>> + Send;

    /// The web UI owner's password hash (an argon2id PHC string); `None` until the owner sets one.
    fn owner_password_hash(&self) -> impl Future<Output = Result<Option<String>, BackendError>> + Send;
    /// Stores the owner's password hash: `Conflict` if one is set (this never replaces it).
    fn set_owner_password_hash(&self, hash: String) -> impl Future<Output = Result<(), BackendError>> + Send;

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

    /// Installed plugins, in name order.
    fn plugins(&self) -> impl Future<Output = Result<Vec<PluginView>, BackendError>> + Send;
    fn plugin(&self, name: String) -> impl Future<Output = Result<PluginView, BackendError>> + Send;
    /// Installs a plugin with the owner's `config` overrides: `Conflict` if one of that name is
    /// installed, `TooLarge` for a module over the hub's limit.
    fn install_plugin(
        &self,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<PluginInstalled, BackendError>> + Send;
    /// Replaces plugin `name` with a new version; its manifest must name the same plugin
    /// (`Invalid` otherwise). One asking for more waits for [`Backend::approve_plugin`]. The
    /// owner's config overrides carry over, with `config` on top.
    fn upgrade_plugin(
        &self,
        name: String,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<PluginInstalled, BackendError>> + Send;
    /// Applies the upgrade waiting for approval: `Conflict` when there is none.
    fn approve_plugin(&self, name: String) -> impl Future<Output = Result<PluginView, BackendError>> + Send;
    /// Enables (clearing a quarantine) or disables a plugin.
    fn set_plugin_enabled(
        &self,
        name: String,
        enabled: bool,
    ) -> impl Future<Output = Result<PluginView, BackendError>> + Send;
    /// Changes the owner's settings of plugin `name`, keeping its version and storage: each
    /// entry of `config` replaces the setting of its name, `null` goes back to the manifest's
    /// value. A running plugin restarts to read them.
    fn configure_plugin(
        &self,
        name: String,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<PluginView, BackendError>> + Send;
    /// Stops a plugin and removes it with its files and storage.
    fn remove_plugin(&self, name: String) -> impl Future<Output = Result<(), BackendError>> + Send;
}
