//! An in-memory [`Backend`] for tests of the HTTP layer (enabled by the `testing` feature).
//!
//! [`MemoryBackend::sample`] holds a small, fixed home: two channels, a budget, approvals, a
//! spending report, two peers and a few service offers. Tests read and change its state with
//! [`MemoryBackend::with_state`], see what the handlers passed in (`decisions`,
//! `spending_queries`, `service_calls`), and make the next call fail with
//! [`MemoryBackend::fail_next`].
//!
//! Service calls: a service among the seen offers answers a canned [`CallResult`] from its
//! cheapest seller; [`EXPENSIVE_SERVICE`] answers `Conflict` (a spend waiting for approval);
//! any other name answers `NotFound`.
//!
//! Devices: an in-memory registry, listed in id order. The sample home has [`SAMPLE_DEVICE`]
//! (MQTT, online, with a key and some state) and [`SAMPLE_BLE_DEVICE`] (Bluetooth LE, offline,
//! no key). Pairing takes an unused id (`Conflict` otherwise), makes broker credentials for
//! MQTT devices and, without a given public key, a key pair whose secret it returns; the
//! password and key are derived from a counter, not random: this is a test double. Commands to
//! a known device are recorded ([`MemoryBackend::device_commands`]); an unknown id is `NotFound`.
//!
//! Time and live events: the home's time zone is [`MemoryState::zone`] (UTC unless a test sets
//! it); [`MemoryBackend::emit`] sends a [`LiveEvent`] to every open `/api/v1/events` stream, and
//! [`MemoryBackend::stop_live`] ends them all, as a stopping hub does.
//!
//! The web UI's needs: `owner_password_hash` (set once, `Conflict` after), `payments` (the
//! ledger, listed newest first), and `bridge_stopped` / `plugins_stopped`, which make listing
//! devices or plugins `Unavailable` as on a hub without those parts running.
//!
//! Plugins: an in-memory list in name order; no module ever runs. Manifests are parsed and
//! validated with the core's rules (and the default ceiling); a module must start with the
//! wasm magic bytes (`BadModule`-like `Invalid` otherwise) and be at most
//! [`PLUGIN_WASM_LIMIT`] (`TooLarge`). An upgrade that asks for more grants or limits than
//! were approved waits for approval, as in the hub. The sample home has [`SAMPLE_PLUGIN`]
//! (enabled, running, with log lines) and [`QUARANTINED_PLUGIN`].

use std::sync::{Mutex, PoisonError};

use jiff::tz::TimeZone;
use tokio::sync::broadcast;

use machinomy_core::wire::Receipt;
use machinomy_core::{
    Amount, Approval, Budget, ChannelId, ChannelStatus, Currency, DeviceId, LedgerId, Period, PublicKey, ReportRow,
    Signature, SigningKey, SpendRequest, SpendingEntry, Subject, Timestamp, Utc, Verdict,
};

use machinomy_core::plugin::{Ceiling, Manifest};

use crate::PLUGIN_WASM_LIMIT;
use crate::backend::{Backend, BackendError, PluginUpload};
use crate::model::{
    BudgetView, CallBody, CallResult, ChannelView, DailySpendingView, DeviceEventView, DeviceView, HubStatus,
    InstallStatus, LiveEvent, MqttCredentials, NewDevice, OfferView, PairedDevice, PeerView, PendingUpgrade,
    PluginInstalled, PluginLogLine, PluginStateName, PluginView, Role, ServicesView, SpendingQuery, SpendingReport,
};

/// "Now" in the sample home: 2026-11-24 12:00 UTC.
pub const SAMPLE_NOW: Timestamp = Timestamp(1_795_521_600);

/// The sample home's open channel (this hub pays on it).
pub const OPEN_CHANNEL: ChannelId = ChannelId::from_bytes([0x11; 32]);
/// The sample home's settled channel (this hub is paid on it).
pub const SETTLED_CHANNEL: ChannelId = ChannelId::from_bytes([0x22; 32]);
/// A pending approval of the sample home.
pub const PENDING_APPROVAL: u64 = 7;
/// An approval the owner already approved.
pub const APPROVED_APPROVAL: u64 = 3;

/// The sample home's connected peer: the counterparty of [`OPEN_CHANNEL`] and the seller of
/// [`SAMPLE_SERVICE`].
pub const CONNECTED_PEER: PublicKey = PublicKey::from_bytes([0x02; 32]);
/// A peer the sample home knows but is not connected to; it also sells [`SAMPLE_SERVICE`], dearer.
pub const OFFLINE_PEER: PublicKey = PublicKey::from_bytes([0x04; 32]);
/// A service the sample home can buy: calling it answers a canned [`CallResult`].
pub const SAMPLE_SERVICE: &str = "weather.forecast";
/// What a call of [`SAMPLE_SERVICE`] answers in `CallResult::body`.
pub const SAMPLE_SERVICE_ANSWER: &str = "sunny, 21 C";
/// The cheapest price of [`SAMPLE_SERVICE`] (from [`CONNECTED_PEER`]), in base units.
pub const SAMPLE_SERVICE_PRICE: u128 = 2_000;
/// A service whose call always waits for the owner's approval ([`PENDING_APPROVAL`]): `Conflict`.
pub const EXPENSIVE_SERVICE: &str = "expensive";
/// A service this hub sells.
pub const OWN_SERVICE: &str = "solar.surplus";
/// The sample home's MQTT device: online, with a key ([`SAMPLE_DEVICE_KEY`]) and reported state.
pub const SAMPLE_DEVICE: &str = "fridge";
/// The public key of [`SAMPLE_DEVICE`].
pub const SAMPLE_DEVICE_KEY: PublicKey = PublicKey::from_bytes([0x0f; 32]);
/// The sample home's Bluetooth LE device: offline, never seen, no key.
pub const SAMPLE_BLE_DEVICE: &str = "thermometer";
/// Where paired MQTT devices are told to connect.
pub const SAMPLE_BROKER: &str = "192.168.1.10:1883";

/// The sample home's plugin: enabled and running, with a few log lines.
pub const SAMPLE_PLUGIN: &str = "weather-buyer";
/// The manifest of [`SAMPLE_PLUGIN`] (version 0.1.0).
pub const SAMPLE_PLUGIN_MANIFEST: &str = r#"name = "weather-buyer"
version = "0.1.0"
description = "Buys a forecast and pauses irrigation when rain is coming."

[grants]
publish = ["machinomy/irrigation/cmd/#"]

[[grants.call]]
service = "weather.forecast"
max_price = "2000"

[grants.budget]
period = "day"
limit = "100000"
auto_approve = "2000"

[config]
every_secs = 3600
irrigation = "irrigation"
"#;
/// A plugin of the sample home the hub quarantined after repeated faults.
pub const QUARANTINED_PLUGIN: &str = "flaky";
/// Why [`QUARANTINED_PLUGIN`] was quarantined.
pub const QUARANTINE_REASON: &str = "3 faults within 10 minutes: out of fuel";
/// The smallest module the double accepts: the wasm magic and version.
pub const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// A plugin in the double: what the API shows, the approved manifest and module, the owner's
/// overrides and an upgrade waiting for approval.
#[derive(Debug, Clone)]
pub struct MemoryPlugin {
    pub view: PluginView,
    pub manifest: Manifest,
    pub wasm: Vec<u8>,
    pub overrides: serde_json::Map<String, serde_json::Value>,
    /// The new version's manifest and module.
    pub pending: Option<(Manifest, Vec<u8>)>,
}

/// Everything the double knows; public so tests can arrange and inspect it.
#[derive(Debug, Clone)]
pub struct MemoryState {
    pub now: Timestamp,
    /// The home's time zone.
    pub zone: TimeZone,
    pub status: HubStatus,
    pub channels: Vec<ChannelView>,
    pub budgets: Vec<BudgetView>,
    /// Kept in id order; listed newest first.
    pub approvals: Vec<Approval>,
    /// What every spending query answers (the double does not filter).
    pub report_rows: Vec<ReportRow>,
    /// Every `decide` call: (id, verdict, by).
    pub decisions: Vec<(u64, Verdict, String)>,
    /// Every spending query, as the handler built it.
    pub spending_queries: Vec<SpendingQuery>,
    pub peers: Vec<PeerView>,
    pub services: ServicesView,
    /// Every `call_service` call that reached the backend: (service, call).
    pub service_calls: Vec<(String, CallBody)>,
    /// The device registry, in id order.
    pub devices: Vec<DeviceView>,
    /// Every command sent to a known device: (device, command name, payload).
    pub device_commands: Vec<(DeviceId, String, serde_json::Value)>,
    /// What pairing an MQTT device tells the owner to do next (copied into each answer).
    pub pairing_next_steps: Vec<String>,
    /// How many devices were paired (seeds the made-up passwords and keys).
    pub pairings: u64,
    /// Installed plugins, in name order.
    pub plugins: Vec<MemoryPlugin>,
    /// The spending ledger's entries, in any order (`recent_payments` sorts them).
    pub payments: Vec<SpendingEntry>,
    /// The web UI owner's password hash; `None` until set.
    pub owner_password_hash: Option<String>,
    /// Listing devices answers `Unavailable`, as a hub whose appliance bridge is not running.
    pub bridge_stopped: bool,
    /// Listing plugins answers `Unavailable`, as a hub with plugins disabled.
    pub plugins_stopped: bool,
    /// Makes the next backend call fail with this error.
    pub fail_next: Option<BackendError>,
}

/// The in-memory backend.
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
    /// The live feed; `None` once stopped.
    live: Mutex<Option<broadcast::Sender<LiveEvent>>>,
}

fn key(byte: u8) -> PublicKey {
    PublicKey::from_bytes([byte; 32])
}

fn request(subject: &str, payee: &str, amount: u128, memo: &str, created_at: Timestamp) -> SpendRequest {
    SpendRequest {
        subject: subject.parse().unwrap_or(Subject::Device("sample".to_owned())),
        payee: payee.to_owned(),
        amount: Amount::from_base_units(amount),
        memo: memo.to_owned(),
        reference: format!("req-{}", created_at.secs()),
        created_at,
    }
}

fn offer(service: &str, seller: PublicKey, price: u128, description: &str, expires_at: Timestamp) -> OfferView {
    OfferView {
        service: service.to_owned(),
        seller,
        price: Amount::from_base_units(price),
        currency: Currency::usd().code().to_owned(),
        description: description.to_owned(),
        expires_at,
    }
}

fn budget_view(budget: Budget, now: Timestamp, spent: Amount) -> BudgetView {
    let (start, end) = (budget.period.start(now, &Utc), budget.period.end(now, &Utc));
    BudgetView { budget, currency: Currency::usd(), spent_this_period: spent, period_start: start, period_end: end }
}

impl MemoryBackend {
    /// A home with nothing in it.
    pub fn empty() -> MemoryBackend {
        let now = SAMPLE_NOW;
        let status = HubStatus {
            name: "test-home".to_owned(),
            version: "0.0.0-test".to_owned(),
            public_key: key(0x01),
            started_at: Timestamp(now.secs() - 3_600),
            uptime_secs: 3_600,
            now,
            currency: Currency::usd(),
            channels_open: 0,
            approvals_pending: 0,
            budgets: 0,
            peer_id: None,
            p2p_addrs: Vec::new(),
        };
        MemoryBackend::from_state(MemoryState {
            now,
            zone: TimeZone::UTC,
            status,
            channels: Vec::new(),
            budgets: Vec::new(),
            approvals: Vec::new(),
            report_rows: Vec::new(),
            decisions: Vec::new(),
            spending_queries: Vec::new(),
            peers: Vec::new(),
            services: ServicesView { own: Vec::new(), seen: Vec::new() },
            service_calls: Vec::new(),
            devices: Vec::new(),
            device_commands: Vec::new(),
            pairing_next_steps: Vec::new(),
            pairings: 0,
            plugins: Vec::new(),
            payments: Vec::new(),
            owner_password_hash: None,
            bridge_stopped: false,
            plugins_stopped: false,
            fail_next: None,
        })
    }

    /// The sample home described in the module docs.
    pub fn sample() -> MemoryBackend {
        let backend = MemoryBackend::empty();
        backend.with_state(|s| {
            let now = s.now;
            s.channels = vec![
                ChannelView {
                    id: OPEN_CHANNEL,
                    role: Role::Sender,
                    ledger: LedgerId::credit(),
                    counterparty: CONNECTED_PEER,
                    currency: Currency::usd(),
                    capacity: Amount::from_base_units(10_000_000_000),
                    spent: Amount::from_base_units(1_500_000_000),
                    remaining: Amount::from_base_units(8_500_000_000),
                    status: ChannelStatus::Open,
                    opened_at: Timestamp(now.secs() - 86_400),
                    settlement_period_secs: 86_400,
                },
                ChannelView {
                    id: SETTLED_CHANNEL,
                    role: Role::Receiver,
                    ledger: LedgerId::credit(),
                    counterparty: key(0x03),
                    currency: Currency::usd(),
                    capacity: Amount::from_base_units(5_000),
                    spent: Amount::from_base_units(5_000),
                    remaining: Amount::ZERO,
                    status: ChannelStatus::Settled {
                        at: Timestamp(now.secs() - 60),
                        amount: Amount::from_base_units(5_000),
                    },
                    opened_at: Timestamp(now.secs() - 7 * 86_400),
                    settlement_period_secs: 3_600,
                },
            ];
            let fridge = Budget {
                subject: Subject::Device("fridge".to_owned()),
                period: Period::Day,
                limit: Amount::from_base_units(5_000),
                auto_approve: Amount::from_base_units(500),
            };
            s.budgets = vec![budget_view(fridge, now, Amount::from_base_units(1_200))];
            let mut approved = Approval::new(
                APPROVED_APPROVAL,
                request("device:fridge", "grocer", 900, "milk", Timestamp(now.secs() - 7_200)),
                Timestamp(now.secs() + 3_600),
            );
            approved.state = machinomy_core::ApprovalState::Approved {
                by: "admin-token".to_owned(),
                at: Timestamp(now.secs() - 7_000),
            };
            // The grocer charged less than the most the fridge would pay.
            approved.outcome = Some(machinomy_core::SpendOutcome::Paid {
                at: Timestamp(now.secs() - 6_990),
                channel: None,
                amount: Some(Amount::from_base_units(800)),
            });
            let pending = Approval::new(
                PENDING_APPROVAL,
                request("device:fridge", "grocer", 4_000, "weekly groceries", Timestamp(now.secs() - 60)),
                Timestamp(now.secs() + 3_600),
            );
            s.approvals = vec![approved, pending];
            s.report_rows = vec![
                ReportRow {
                    key: "device:fridge".to_owned(),
                    paid: Amount::from_base_units(1_500_000_000),
                    received: Amount::ZERO,
                    payments: 3,
                },
                ReportRow {
                    key: "plugin:solar".to_owned(),
                    paid: Amount::ZERO,
                    received: Amount::from_base_units(250),
                    payments: 1,
                },
            ];
            s.peers = vec![
                PeerView {
                    key: CONNECTED_PEER,
                    peer_id: "12D3KooWSamplePeerConnected".to_owned(),
                    addrs: vec!["/ip4/192.168.1.20/tcp/4001".to_owned()],
                    connected: true,
                },
                PeerView {
                    key: OFFLINE_PEER,
                    peer_id: "12D3KooWSamplePeerOffline".to_owned(),
                    addrs: Vec::new(),
                    connected: false,
                },
            ];
            let expires_at = Timestamp(now.secs() + 600);
            s.services = ServicesView {
                own: vec![offer(OWN_SERVICE, s.status.public_key, 100, "surplus solar power, per kWh", expires_at)],
                seen: vec![
                    offer(EXPENSIVE_SERVICE, CONNECTED_PEER, 9_000_000_000, "a very dear service", expires_at),
                    offer(SAMPLE_SERVICE, CONNECTED_PEER, SAMPLE_SERVICE_PRICE, "tomorrow's weather", expires_at),
                    offer(SAMPLE_SERVICE, OFFLINE_PEER, 3_000, "tomorrow's weather", expires_at),
                ],
            };
            let mut state = serde_json::Map::new();
            state.insert("temperature_c".to_owned(), serde_json::json!(4.5));
            state.insert("door".to_owned(), serde_json::json!("closed"));
            s.devices = vec![
                DeviceView {
                    id: device_id(SAMPLE_DEVICE),
                    name: "Kitchen fridge".to_owned(),
                    kind: "mqtt".to_owned(),
                    address: None,
                    profile: None,
                    public_key: Some(SAMPLE_DEVICE_KEY),
                    online: true,
                    last_seen: Some(Timestamp(now.secs() - 30)),
                    state,
                    added_at: Timestamp(now.secs() - 30 * 86_400),
                    recent_events: vec![DeviceEventView {
                        at: Timestamp(now.secs() - 45),
                        name: "door_opened".to_owned(),
                        payload: r#"{"seconds":12}"#.to_owned(),
                    }],
                },
                DeviceView {
                    id: device_id(SAMPLE_BLE_DEVICE),
                    name: "Balcony thermometer".to_owned(),
                    kind: "ble".to_owned(),
                    address: Some("A4:C1:38:00:11:22".to_owned()),
                    profile: Some("xiaomi-lywsd03mmc".to_owned()),
                    public_key: None,
                    online: false,
                    last_seen: None,
                    state: serde_json::Map::new(),
                    added_at: Timestamp(now.secs() - 86_400),
                    recent_events: Vec::new(),
                },
            ];
            s.plugins = sample_plugins(now);
            s.status.channels_open = 1;
            s.status.approvals_pending = 1;
            s.status.budgets = 1;
        });
        backend
    }

    pub fn from_state(state: MemoryState) -> MemoryBackend {
        let (live, _) = broadcast::channel(16);
        MemoryBackend { state: Mutex::new(state), live: Mutex::new(Some(live)) }
    }

    /// Sends `event` to every open event stream; answers how many there were.
    pub fn emit(&self, event: LiveEvent) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.as_ref().and_then(|sender| sender.send(event).ok()).unwrap_or(0)
    }

    /// Ends every open event stream and refuses new ones, as a stopping hub.
    pub fn stop_live(&self) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Reads or changes the state.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut MemoryState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// Makes the next backend call fail with `error`.
    pub fn fail_next(&self, error: BackendError) {
        self.with_state(|s| s.fail_next = Some(error));
    }

    /// Every command sent to a known device, in order: (device, command name, payload).
    pub fn device_commands(&self) -> Vec<(DeviceId, String, serde_json::Value)> {
        self.with_state(|s| s.device_commands.clone())
    }

    /// Runs `f` on the state unless a failure was queued.
    fn call<R>(&self, f: impl FnOnce(&mut MemoryState) -> Result<R, BackendError>) -> Result<R, BackendError> {
        self.with_state(|s| match s.fail_next.take() {
            Some(error) => Err(error),
            None => f(s),
        })
    }
}

fn sample_plugins(now: Timestamp) -> Vec<MemoryPlugin> {
    let installed_at = Timestamp(now.secs() - 2 * 86_400);
    let mut plugins = Vec::new();
    let flaky = format!(
        "name = \"{QUARANTINED_PLUGIN}\"\nversion = \"1.0.0\"\n\n[grants]\nsubscribe = [\"machinomy/+/state\"]\n"
    );
    if let Ok(mut plugin) = new_plugin(&flaky, EMPTY_MODULE.to_vec(), serde_json::Map::new(), installed_at) {
        plugin.view.state = PluginStateName::Quarantined;
        plugin.view.quarantine_reason = Some(QUARANTINE_REASON.to_owned());
        plugin.view.running = false;
        plugin.view.faults = 3;
        plugin.view.last_fault = Some("out of fuel in on_message".to_owned());
        plugin.view.events = 41;
        plugin.view.updated_at = Timestamp(now.secs() - 300);
        plugins.push(plugin);
    }
    let mut overrides = serde_json::Map::new();
    overrides.insert("every_secs".to_owned(), serde_json::json!(600));
    if let Ok(mut plugin) = new_plugin(SAMPLE_PLUGIN_MANIFEST, EMPTY_MODULE.to_vec(), overrides, installed_at) {
        plugin.view.events = 12;
        plugin.view.refused = 1;
        plugin.view.timers = 1;
        plugin.view.storage_used = 120;
        let at_ms = (now.secs() - 60) * 1000;
        plugin.view.recent = vec![
            PluginLogLine { at_ms, level: "info".to_owned(), text: "rain 70%: irrigation paused".to_owned() },
            PluginLogLine { at_ms: at_ms + 5, level: "warn".to_owned(), text: "publish refused".to_owned() },
        ];
        plugins.push(plugin);
    }
    plugins
}

/// A manifest as the hub reads it (strict, validated under the default ceiling).
fn plugin_manifest(text: &str) -> Result<Manifest, BackendError> {
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| BackendError::Invalid(format!("plugin.toml: {}", e.message())))?;
    manifest.validate(&Ceiling::default()).map_err(|e| BackendError::Invalid(e.to_string()))?;
    Ok(manifest)
}

fn check_module(wasm: &[u8]) -> Result<(), BackendError> {
    if wasm.len() > PLUGIN_WASM_LIMIT {
        return Err(BackendError::TooLarge(format!(
            "the module is {} bytes; the most is {PLUGIN_WASM_LIMIT}",
            wasm.len()
        )));
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(BackendError::Invalid("the module was refused: it is not a WebAssembly module".to_owned()));
    }
    Ok(())
}

/// A newly installed, enabled and running plugin.
fn new_plugin(
    manifest: &str,
    wasm: Vec<u8>,
    overrides: serde_json::Map<String, serde_json::Value>,
    at: Timestamp,
) -> Result<MemoryPlugin, BackendError> {
    let manifest = plugin_manifest(manifest)?;
    check_module(&wasm)?;
    if let Some(key) = overrides.keys().find(|k| !machinomy_core::plugin::valid_config_key(k)) {
        let rule = machinomy_core::plugin::CONFIG_KEY_RULE;
        return Err(BackendError::Invalid(format!("setting {key:?}: {rule}")));
    }
    let view = PluginView {
        name: manifest.name.clone(),
        version: String::new(),
        description: String::new(),
        state: PluginStateName::Enabled,
        quarantine_reason: None,
        running: true,
        grants: Default::default(),
        limits: manifest.limits,
        config: serde_json::Map::new(),
        overridden: Vec::new(),
        pending_upgrade: None,
        faults: 0,
        last_fault: None,
        refused: 0,
        events: 0,
        subscriptions: Vec::new(),
        timers: 0,
        storage_used: 0,
        recent: Vec::new(),
        installed_at: at,
        updated_at: at,
    };
    let mut plugin = MemoryPlugin { view, manifest: manifest.clone(), overrides, pending: None, wasm: Vec::new() };
    plugin.apply(manifest, wasm, at);
    Ok(plugin)
}

impl MemoryPlugin {
    /// Runs `manifest`'s version from now on.
    fn apply(&mut self, manifest: Manifest, wasm: Vec<u8>, at: Timestamp) {
        let view = &mut self.view;
        view.version = manifest.version.clone();
        view.description = manifest.description.clone();
        view.grants = manifest.grants.clone().into();
        view.limits = manifest.limits;
        let mut config = manifest.config.clone();
        config.extend(self.overrides.clone());
        view.config = config;
        view.overridden = self.overrides.keys().cloned().collect();
        view.subscriptions = if view.running { manifest.grants.subscribe.clone() } else { Vec::new() };
        view.pending_upgrade = None;
        view.updated_at = at;
        self.manifest = manifest;
        self.pending = None;
        self.wasm = wasm;
    }
}

fn no_plugin(name: &str) -> BackendError {
    BackendError::NotFound(format!("no plugin {name:?} is installed"))
}

fn no_channel(id: ChannelId) -> BackendError {
    BackendError::NotFound(format!("there is no channel {id}"))
}

fn no_approval(id: u64) -> BackendError {
    BackendError::NotFound(format!("there is no approval {id}"))
}

fn no_device(id: &DeviceId) -> BackendError {
    BackendError::NotFound(format!("there is no device {id}"))
}

/// A device id known to be valid (the sample's constants).
fn device_id(text: &str) -> DeviceId {
    text.parse().unwrap_or_else(|_| unreachable!("the sample's device ids are valid"))
}

/// `n` made-up bytes from `seed` (splitmix64): distinct per pairing, the same in every run.
fn made_up_bytes<const N: usize>(seed: u64) -> [u8; N] {
    let mut state = seed;
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for (byte, value) in chunk.iter_mut().zip(z.to_le_bytes()) {
            *byte = value;
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Backend for MemoryBackend {
    async fn status(&self) -> Result<HubStatus, BackendError> {
        self.call(|s| Ok(HubStatus { now: s.now, ..s.status.clone() }))
    }

    fn time_zone(&self) -> TimeZone {
        self.with_state(|s| s.zone.clone())
    }

    fn live_events(&self) -> Result<broadcast::Receiver<LiveEvent>, BackendError> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or_else(|| BackendError::Unavailable("the hub is stopping".to_owned()))
    }

    async fn daily_spending(&self, from: Timestamp, to: Timestamp) -> Result<DailySpendingView, BackendError> {
        self.call(|s| {
            let zone = s.zone.clone();
            let offset = move |at: Timestamp| crate::zone_offset(&zone, at);
            let daily = machinomy_core::spending::daily_paid(&s.payments, from, to, &offset)
                .map_err(|e| BackendError::Invalid(e.to_string()))?;
            Ok(DailySpendingView { currency: s.status.currency.clone(), from, to, daily })
        })
    }

    async fn channels(&self) -> Result<Vec<ChannelView>, BackendError> {
        self.call(|s| Ok(s.channels.clone()))
    }

    async fn channel(&self, id: ChannelId) -> Result<ChannelView, BackendError> {
        self.call(|s| s.channels.iter().find(|c| c.id == id).cloned().ok_or_else(|| no_channel(id)))
    }

    async fn close_channel(&self, id: ChannelId) -> Result<ChannelView, BackendError> {
        self.call(|s| {
            let now = s.now;
            let channel = s.channels.iter_mut().find(|c| c.id == id).ok_or_else(|| no_channel(id))?;
            if !channel.status.is_open() {
                return Err(BackendError::Conflict(format!("channel {id} is already {}", channel.status.name())));
            }
            channel.status = ChannelStatus::Closing {
                since: now,
                settle_after: now.saturating_add_secs(channel.settlement_period_secs),
                final_amount: channel.spent,
            };
            Ok(channel.clone())
        })
    }

    async fn budgets(&self) -> Result<Vec<BudgetView>, BackendError> {
        self.call(|s| Ok(s.budgets.clone()))
    }

    async fn remove_budget(&self, subject: Subject) -> Result<Budget, BackendError> {
        self.call(|s| {
            let at = s.budgets.iter().position(|b| b.budget.subject == subject);
            let at = at.ok_or_else(|| BackendError::NotFound(format!("{subject} has no budget")))?;
            Ok(s.budgets.remove(at).budget)
        })
    }

    async fn set_budget(&self, budget: Budget) -> Result<BudgetView, BackendError> {
        self.call(|s| {
            let view = budget_view(budget, s.now, Amount::ZERO);
            match s.budgets.iter_mut().find(|b| b.budget.subject == view.budget.subject) {
                Some(existing) => {
                    let spent = existing.spent_this_period;
                    *existing = BudgetView { spent_this_period: spent, ..view };
                    Ok(existing.clone())
                }
                None => {
                    s.budgets.push(view.clone());
                    Ok(view)
                }
            }
        })
    }

    async fn approvals(&self, pending_only: bool) -> Result<Vec<Approval>, BackendError> {
        self.call(|s| Ok(s.approvals.iter().rev().filter(|a| !pending_only || a.is_pending()).cloned().collect()))
    }

    async fn approval(&self, id: u64) -> Result<Approval, BackendError> {
        self.call(|s| s.approvals.iter().find(|a| a.id == id).cloned().ok_or_else(|| no_approval(id)))
    }

    async fn decide(&self, id: u64, verdict: Verdict, by: String) -> Result<Approval, BackendError> {
        self.call(|s| {
            let now = s.now;
            let approval = s.approvals.iter_mut().find(|a| a.id == id).ok_or_else(|| no_approval(id))?;
            approval.decide(verdict.clone(), &by, now).map_err(|e| BackendError::Conflict(e.to_string()))?;
            let approval = approval.clone();
            s.decisions.push((id, verdict, by));
            Ok(approval)
        })
    }

    async fn recent_payments(&self, limit: usize) -> Result<Vec<SpendingEntry>, BackendError> {
        self.call(|s| {
            let mut payments = s.payments.clone();
            payments.sort_by_key(|p| std::cmp::Reverse(p.at));
            payments.truncate(limit);
            Ok(payments)
        })
    }

    async fn owner_password_hash(&self) -> Result<Option<String>, BackendError> {
        self.call(|s| Ok(s.owner_password_hash.clone()))
    }

    async fn set_owner_password_hash(&self, hash: String) -> Result<(), BackendError> {
        self.call(|s| {
            if s.owner_password_hash.is_some() {
                return Err(BackendError::Conflict("the owner's password is already set".to_owned()));
            }
            s.owner_password_hash = Some(hash);
            Ok(())
        })
    }

    async fn spending(&self, query: SpendingQuery) -> Result<SpendingReport, BackendError> {
        self.call(|s| {
            s.spending_queries.push(query.clone());
            let total = |pick: fn(&ReportRow) -> Amount| {
                s.report_rows
                    .iter()
                    .try_fold(Amount::ZERO, |sum, row| sum.checked_add(pick(row)))
                    .map_err(|e| BackendError::Internal(e.to_string()))
            };
            Ok(SpendingReport {
                currency: s.status.currency.clone(),
                group_by: query.group_by,
                from: query.from,
                to: query.to,
                rows: s.report_rows.clone(),
                total_paid: total(|r| r.paid)?,
                total_received: total(|r| r.received)?,
            })
        })
    }

    async fn peers(&self) -> Result<Vec<PeerView>, BackendError> {
        self.call(|s| Ok(s.peers.clone()))
    }

    async fn services(&self) -> Result<ServicesView, BackendError> {
        self.call(|s| Ok(s.services.clone()))
    }

    async fn call_service(&self, service: String, call: CallBody) -> Result<CallResult, BackendError> {
        self.call(|s| {
            s.service_calls.push((service.clone(), call.clone()));
            if service == EXPENSIVE_SERVICE {
                return Err(BackendError::Conflict(format!(
                    "spend request #{PENDING_APPROVAL} waits for the owner's approval"
                )));
            }
            let cheapest = s
                .services
                .seen
                .iter()
                .filter(|o| o.service == service)
                .min_by_key(|o| o.price)
                .ok_or_else(|| BackendError::NotFound(format!("no hub offers the service {service:?}")))?;
            let receipt = Receipt {
                channel: OPEN_CHANNEL,
                total: cheapest.price,
                increment: cheapest.price,
                at: s.now,
                signature: Signature([0x5a; 64]),
            };
            Ok(CallResult {
                service,
                seller: cheapest.seller,
                price: cheapest.price,
                currency: s.status.currency.clone(),
                body: SAMPLE_SERVICE_ANSWER.to_owned(),
                receipt,
            })
        })
    }

    async fn devices(&self) -> Result<Vec<DeviceView>, BackendError> {
        self.call(|s| {
            if s.bridge_stopped {
                return Err(BackendError::Unavailable("the appliance bridge is not running".to_owned()));
            }
            Ok(s.devices.clone())
        })
    }

    async fn device(&self, id: DeviceId) -> Result<DeviceView, BackendError> {
        self.call(|s| s.devices.iter().find(|d| d.id == id).cloned().ok_or_else(|| no_device(&id)))
    }

    async fn add_device(&self, device: NewDevice) -> Result<PairedDevice, BackendError> {
        self.call(|s| {
            let NewDevice { id, name, public_key, ble } = device;
            let at = match s.devices.binary_search_by(|d| d.id.cmp(&id)) {
                Ok(_) => return Err(BackendError::Conflict(format!("device {id} is already paired"))),
                Err(at) => at,
            };
            s.pairings += 1;
            let seed = s.pairings;
            let (public_key, secret_key) = match public_key {
                Some(key) => (key, None),
                None => {
                    let secret: [u8; 32] = made_up_bytes(seed << 1);
                    let key = PublicKey::from(SigningKey::from_bytes(&secret).verifying_key());
                    (key, Some(to_hex(&secret)))
                }
            };
            let (kind, address, profile, credentials, next_steps) = match ble {
                Some(ble) => ("ble", Some(ble.address), Some(ble.profile), None, Vec::new()),
                None => {
                    let password: [u8; 16] = made_up_bytes((seed << 1) | 1);
                    let credentials = MqttCredentials {
                        broker: SAMPLE_BROKER.to_owned(),
                        username: id.to_string(),
                        password: to_hex(&password),
                    };
                    ("mqtt", None, None, Some(credentials), s.pairing_next_steps.clone())
                }
            };
            let view = DeviceView {
                name: name.unwrap_or_else(|| id.to_string()),
                id,
                kind: kind.to_owned(),
                address,
                profile,
                public_key: Some(public_key),
                online: false,
                last_seen: None,
                state: serde_json::Map::new(),
                added_at: s.now,
                recent_events: Vec::new(),
            };
            s.devices.insert(at, view.clone());
            Ok(PairedDevice { device: view, credentials, secret_key, next_steps })
        })
    }

    async fn remove_device(&self, id: DeviceId) -> Result<DeviceView, BackendError> {
        self.call(|s| {
            let at = s.devices.iter().position(|d| d.id == id).ok_or_else(|| no_device(&id))?;
            Ok(s.devices.remove(at))
        })
    }

    async fn send_command(&self, id: DeviceId, name: String, payload: serde_json::Value) -> Result<(), BackendError> {
        self.call(|s| {
            if !s.devices.iter().any(|d| d.id == id) {
                return Err(no_device(&id));
            }
            s.device_commands.push((id, name, payload));
            Ok(())
        })
    }

    async fn plugins(&self) -> Result<Vec<PluginView>, BackendError> {
        self.call(|s| {
            if s.plugins_stopped {
                return Err(BackendError::Unavailable("plugins are disabled on this hub".to_owned()));
            }
            Ok(s.plugins.iter().map(|p| p.view.clone()).collect())
        })
    }

    async fn plugin(&self, name: String) -> Result<PluginView, BackendError> {
        self.call(|s| {
            s.plugins.iter().find(|p| p.view.name == name).map(|p| p.view.clone()).ok_or_else(|| no_plugin(&name))
        })
    }

    async fn install_plugin(
        &self,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginInstalled, BackendError> {
        self.call(|s| {
            let plugin = new_plugin(&upload.manifest, upload.wasm, config, s.now)?;
            let at = match s.plugins.binary_search_by(|p| p.view.name.cmp(&plugin.view.name)) {
                Ok(_) => {
                    return Err(BackendError::Conflict(format!(
                        "plugin {:?} is already installed; upgrade it instead",
                        plugin.view.name
                    )));
                }
                Err(at) => at,
            };
            let view = plugin.view.clone();
            s.plugins.insert(at, plugin);
            Ok(PluginInstalled::install(InstallStatus::Ready, view))
        })
    }

    async fn upgrade_plugin(
        &self,
        name: String,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginInstalled, BackendError> {
        self.call(|s| {
            let manifest = plugin_manifest(&upload.manifest)?;
            if manifest.name != name {
                return Err(BackendError::Invalid(format!(
                    "the new version is plugin {:?}, not {name:?}",
                    manifest.name
                )));
            }
            let now = s.now;
            let plugin = s.plugins.iter_mut().find(|p| p.view.name == name).ok_or_else(|| no_plugin(&name))?;
            check_module(&upload.wasm)?;
            let previous_version = Some(plugin.view.version.clone());
            let downgrade = machinomy_core::plugin::compare_versions(&manifest.version, &plugin.view.version)
                == std::cmp::Ordering::Less;
            let replaced_upgrade = plugin.pending.take().map(|(pending, _)| pending.version);
            // The double applies the new settings at once, also for an upgrade that waits.
            plugin.overrides.extend(config);
            let answer = |status, plugin: PluginView| PluginInstalled {
                status,
                plugin,
                previous_version,
                downgrade,
                replaced_upgrade,
            };
            let mut asks_for = manifest.grants.widening(&plugin.manifest.grants, &s.status.currency);
            asks_for.extend(manifest.limits.widening(&plugin.manifest.limits));
            if asks_for.is_empty() {
                plugin.apply(manifest, upload.wasm, now);
                return Ok(answer(InstallStatus::Ready, plugin.view.clone()));
            }
            plugin.view.pending_upgrade = Some(PendingUpgrade { version: manifest.version.clone(), asks_for });
            plugin.view.updated_at = now;
            plugin.pending = Some((manifest, upload.wasm));
            Ok(answer(InstallStatus::AwaitingApproval, plugin.view.clone()))
        })
    }

    async fn approve_plugin(&self, name: String) -> Result<PluginView, BackendError> {
        self.call(|s| {
            let now = s.now;
            let plugin = s.plugins.iter_mut().find(|p| p.view.name == name).ok_or_else(|| no_plugin(&name))?;
            let (manifest, wasm) = plugin.pending.take().ok_or_else(|| {
                BackendError::Conflict(format!("plugin {name:?} has no upgrade waiting for approval"))
            })?;
            plugin.apply(manifest, wasm, now);
            Ok(plugin.view.clone())
        })
    }

    async fn set_plugin_enabled(&self, name: String, enabled: bool) -> Result<PluginView, BackendError> {
        self.call(|s| {
            let now = s.now;
            let plugin = s.plugins.iter_mut().find(|p| p.view.name == name).ok_or_else(|| no_plugin(&name))?;
            let view = &mut plugin.view;
            view.state = if enabled { PluginStateName::Enabled } else { PluginStateName::Disabled };
            view.quarantine_reason = None;
            view.running = enabled;
            view.faults = 0;
            view.subscriptions = if enabled { plugin.manifest.grants.subscribe.clone() } else { Vec::new() };
            view.updated_at = now;
            Ok(view.clone())
        })
    }

    async fn configure_plugin(
        &self,
        name: String,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginView, BackendError> {
        self.call(|s| {
            let now = s.now;
            let plugin = s.plugins.iter_mut().find(|p| p.view.name == name).ok_or_else(|| no_plugin(&name))?;
            if let Some(key) = config.keys().find(|k| !machinomy_core::plugin::valid_config_key(k)) {
                let rule = machinomy_core::plugin::CONFIG_KEY_RULE;
                return Err(BackendError::Invalid(format!("setting {key:?}: {rule}")));
            }
            for (key, value) in config {
                if value.is_null() {
                    plugin.overrides.remove(&key);
                } else {
                    plugin.overrides.insert(key, value);
                }
            }
            let mut merged = plugin.manifest.config.clone();
            merged.extend(plugin.overrides.clone());
            plugin.view.config = merged;
            plugin.view.overridden = plugin.overrides.keys().cloned().collect();
            plugin.view.updated_at = now;
            Ok(plugin.view.clone())
        })
    }

    async fn remove_plugin(&self, name: String) -> Result<(), BackendError> {
        self.call(|s| {
            let at = s.plugins.iter().position(|p| p.view.name == name).ok_or_else(|| no_plugin(&name))?;
            s.plugins.remove(at);
            Ok(())
        })
    }
}
