//! The JSON shapes of the admin API, shared by the server and the CLI client.
//!
//! Amounts are strings of base units (see DESIGN.md §3); each view also carries the currency so
//! a client can show `1.50 USD` without asking again.

use machinomy_core::{
    Amount, Budget, ChannelId, ChannelStatus, Currency, DeviceId, Direction, GroupBy, LedgerId, PublicKey, ReportRow,
    Timestamp,
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
    /// The hub's clock when it answered.
    #[serde(default)]
    pub now: Timestamp,
    pub currency: Currency,
    pub channels_open: u64,
    pub approvals_pending: u64,
    pub budgets: u64,
    /// The hub's libp2p peer id, when the peer network runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Where other hubs can reach it (full multiaddrs with `/p2p/<peer id>`).
    #[serde(default)]
    pub p2p_addrs: Vec<String>,
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

/// `GET /api/v1/spending/daily?from=&to=`: what each subject paid out on each day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySpendingView {
    pub currency: Currency,
    pub from: Timestamp,
    pub to: Timestamp,
    #[serde(flatten)]
    pub daily: machinomy_core::DailySpending,
}

/// Something changed in the hub, as `GET /api/v1/events` streams it (server-sent events whose
/// event name is the `type`). A page that shows that kind of thing reloads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A spend waits for the owner, or was decided or expired.
    Approval { id: u64, state: String },
    /// Money moved.
    Payment { direction: Direction, amount: Amount },
    /// A channel opened, changed state or was paid on.
    Channel { id: ChannelId },
    /// A device was paired or removed, came or went, or reported its state.
    Device { id: DeviceId },
    /// A plugin was installed, upgraded, enabled, disabled, quarantined or removed.
    Plugin { name: String },
    /// The reader fell behind and missed events: anything may have changed.
    Resync,
}

impl LiveEvent {
    /// The SSE event name: what kind of thing changed.
    pub fn kind(&self) -> &'static str {
        match self {
            LiveEvent::Approval { .. } => "approval",
            LiveEvent::Payment { .. } => "payment",
            LiveEvent::Channel { .. } => "channel",
            LiveEvent::Device { .. } => "device",
            LiveEvent::Plugin { .. } => "plugin",
            LiveEvent::Resync => "resync",
        }
    }
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

/// A hub this hub knows on the peer network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's ed25519 identity (what channels and offers name).
    pub key: PublicKey,
    /// Its libp2p peer id (derived from the key).
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub connected: bool,
}

/// A service offered on the peer network (by another hub, or by this one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferView {
    pub service: String,
    pub seller: PublicKey,
    /// Per call, in base units of `currency`.
    pub price: Amount,
    pub currency: String,
    pub description: String,
    pub expires_at: Timestamp,
}

/// `GET /api/v1/services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesView {
    /// What this hub sells.
    pub own: Vec<OfferView>,
    /// What other hubs offer, cheapest first within a service.
    pub seen: Vec<OfferView>,
}

/// `POST /api/v1/services/{name}/call`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// Whose budget pays (`device:…`, `plugin:…`).
    pub subject: machinomy_core::Subject,
    /// The request to send to the service (text).
    #[serde(default)]
    pub body: String,
}

/// What a bought service call returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    pub service: String,
    pub seller: PublicKey,
    pub price: Amount,
    pub currency: Currency,
    /// The service's answer, as text (invalid UTF-8 replaced).
    pub body: String,
    /// The seller's signed receipt for the payment.
    pub receipt: machinomy_core::wire::Receipt,
}

/// A device in the registry, with what it last reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: machinomy_core::DeviceId,
    pub name: String,
    /// `mqtt`, `ble` or `zigbee2mqtt`.
    pub kind: String,
    /// BLE: the peripheral's address; Zigbee2MQTT: the friendly name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// BLE: the device profile that maps its characteristics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The key that signs its spend requests (none: it cannot spend).
    pub public_key: Option<PublicKey>,
    pub online: bool,
    pub last_seen: Option<Timestamp>,
    /// The latest state it reported (a JSON object; empty until it reports).
    pub state: serde_json::Map<String, serde_json::Value>,
    pub added_at: Timestamp,
    /// Its latest events since the hub started, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<DeviceEventView>,
}

/// An event a device sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEventView {
    pub at: Timestamp,
    pub name: String,
    /// Its payload as JSON text, cut short (ending in `…`) when long.
    pub payload: String,
}

/// `POST /api/v1/devices`: pairs a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub id: machinomy_core::DeviceId,
    /// A display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// The device's ed25519 public key for signing spend requests. Without one the hub makes a
    /// key pair and returns the secret key once, for devices that cannot make their own.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// Pair a Bluetooth LE peripheral instead of an MQTT device: its address and profile.
    #[serde(default)]
    pub ble: Option<NewBleDevice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBleDevice {
    pub address: String,
    pub profile: String,
}

/// What pairing returns. Credentials and a generated secret key are shown this once only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedDevice {
    pub device: DeviceView,
    /// Broker credentials (MQTT devices): username = the device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<MqttCredentials>,
    /// The device's signing key, when the hub made it (64 hex characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// What the owner must still do (e.g. add the credentials to an external broker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_steps: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttCredentials {
    /// Where the device connects (`host:port`), as this hub sees it.
    pub broker: String,
    pub username: String,
    pub password: String,
}

/// Whether a plugin runs: `enabled`, `disabled`, or `quarantined` by the hub after repeated
/// faults (the reason is in [`PluginView::quarantine_reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginStateName {
    Enabled,
    Disabled,
    Quarantined,
}

impl PluginStateName {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginStateName::Enabled => "enabled",
            PluginStateName::Disabled => "disabled",
            PluginStateName::Quarantined => "quarantined",
        }
    }
}

/// What a plugin may do beyond computing (the manifest's `[grants]` as the owner approved
/// them). Amounts are strings of base units; `budget` is `null` when it may not spend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginGrants {
    /// MQTT filters it may subscribe to.
    pub subscribe: Vec<String>,
    /// Filters every topic it publishes on must match.
    pub publish: Vec<String>,
    /// Devices whose state it may read; `"*"` for every device.
    pub devices: Vec<String>,
    /// May pay peers inside its budget.
    pub pay: bool,
    /// May invoice peers.
    pub invoice: bool,
    /// Services it may buy, each at most a price per call.
    pub call: Vec<machinomy_core::plugin::CallGrant>,
    /// Services it sells to peers.
    pub sell: Vec<machinomy_core::plugin::SellGrant>,
    pub budget: Option<machinomy_core::plugin::BudgetGrant>,
}

impl From<machinomy_core::plugin::Grants> for PluginGrants {
    fn from(g: machinomy_core::plugin::Grants) -> Self {
        PluginGrants {
            subscribe: g.subscribe,
            publish: g.publish,
            devices: g.devices,
            pay: g.pay,
            invoice: g.invoice,
            call: g.call,
            sell: g.sell,
            budget: g.budget,
        }
    }
}

/// A new version waiting for the owner's approval because it asks for more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpgrade {
    pub version: String,
    /// What it asks for beyond what was approved, one line each.
    pub asks_for: Vec<String>,
}

/// One line of a plugin's recent log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLogLine {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub level: String,
    pub text: String,
}

/// An installed plugin as the owner sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub state: PluginStateName,
    /// Why the hub stopped it; `null` unless quarantined.
    pub quarantine_reason: Option<String>,
    /// Whether an instance is live right now.
    pub running: bool,
    pub grants: PluginGrants,
    pub limits: machinomy_core::plugin::Limits,
    /// Its settings: the manifest's `[config]` with the owner's overrides on top.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The keys of `config` the owner set; the others hold the manifest's defaults.
    #[serde(default)]
    pub overridden: Vec<String>,
    pub pending_upgrade: Option<PendingUpgrade>,
    /// Recent faults (traps, fuel or memory exhausted) counting towards quarantine.
    pub faults: u64,
    pub last_fault: Option<String>,
    /// Calls refused for being outside its grants, since it started.
    pub refused: u64,
    /// Events delivered to it, since it started.
    pub events: u64,
    /// The MQTT filters it is subscribed to now.
    pub subscriptions: Vec<String>,
    /// Timers it has set.
    pub timers: u64,
    /// Bytes of its key-value storage in use.
    pub storage_used: u64,
    /// Its latest log lines, oldest first.
    pub recent: Vec<PluginLogLine>,
    pub installed_at: Timestamp,
    pub updated_at: Timestamp,
}

/// `POST /api/v1/plugins`: installs a plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlugin {
    /// The text of its `plugin.toml`.
    pub manifest: String,
    /// The module (`.wasm`), base64 (standard alphabet, padded).
    pub wasm: String,
    /// The owner's settings on top of the manifest's `[config]`.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// One plugin setting as the owner types it, `KEY=VALUE` (`machinomy-hub plugin install --set`,
/// a line of the web UI's settings box): the value is JSON if it parses as JSON (`3`, `true`,
/// `"text"`, `{...}`), else the text itself. A number JSON would change (`1e3`, an integer past
/// 64 bits) stays the text it was typed as.
pub fn parse_setting(text: &str) -> Result<(String, serde_json::Value), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err("expected KEY=VALUE".to_owned());
    };
    if key.is_empty() {
        return Err("the key is empty".to_owned());
    }
    let text_value = || serde_json::Value::String(value.to_owned());
    let parsed = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Number(n)) => {
            let exponent = value.contains(['e', 'E']);
            let integer_too_large = !value.contains('.') && n.is_f64();
            if exponent || integer_too_large { text_value() } else { serde_json::Value::Number(n) }
        }
        Ok(other) => other,
        Err(_) => text_value(),
    };
    Ok((key.to_owned(), parsed))
}

/// `PUT /api/v1/plugins/{name}`: replaces a plugin with a new version of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUpgrade {
    /// The text of its `plugin.toml`; its `name` must be the one in the path.
    pub manifest: String,
    /// The module (`.wasm`), base64 (standard alphabet, padded).
    pub wasm: String,
    /// Settings to change with the upgrade, on top of the owner's current overrides (which
    /// carry over); applied when the new version is, so with an approval if it waits for one.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// `PATCH /api/v1/plugins/{name}`: changes the owner's settings of a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigChange {
    /// Each replaces the setting of its name; `null` goes back to the manifest's value.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// What an install or an upgrade did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStatus {
    /// Installed (or upgraded) with the grants in its manifest.
    Ready,
    /// The new version asks for more than was approved: it waits for
    /// `POST /api/v1/plugins/{name}/approve` while the old one keeps running.
    AwaitingApproval,
}

/// The answer to an install or an upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginInstalled {
    pub status: InstallStatus,
    pub plugin: PluginView,
    /// For an upgrade: the version that ran before; `null` for an install.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// For an upgrade: whether its version is older than the one before (a rollback, allowed).
    #[serde(default)]
    pub downgrade: bool,
    /// For an upgrade: the version of an upgrade that waited for approval, which this one
    /// replaced.
    #[serde(default)]
    pub replaced_upgrade: Option<String>,
}

impl PluginInstalled {
    /// The answer to an install.
    pub fn install(status: InstallStatus, plugin: PluginView) -> PluginInstalled {
        PluginInstalled { status, plugin, previous_version: None, downgrade: false, replaced_upgrade: None }
    }
}
