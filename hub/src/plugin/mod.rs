//! Plugins: sandboxed WebAssembly automations, run by wasmtime to the ABI in
//! `machinomy_sdk::abi`.
//!
//! ```text
//!   API / CLI ──▶ Plugins (handle) ──commands──▶ host thread: every plugin's Store, timers,
//!   bridge events ─────────messages──────────▶   dispatch, faults and quarantine
//!   peers' calls of sold services ──────────▶        │ spend / call / invoice / tick
//!                          money task ◀──────────────┘  (never blocks the host)
//!                          (budgets, Market) ──outcomes──▶ host thread ──▶ on_spend_result
//! ```
//! The host thread runs its own single-threaded runtime, so a plugin burning its fuel delays
//! only other plugins, never the hub's network or web server. Only this module knows wasmtime.

mod abi_host;
mod host;
mod money;
mod runtime;

use std::collections::BTreeMap;
use std::sync::Arc;

use machinomy_core::plugin::{Ceiling, Grants, Limits, Manifest, ManifestError, PluginState};
use machinomy_core::{PublicKey, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bridge::Bridge;
use crate::market::{DeviceStates, Market};
use crate::payments::Payments;
use crate::store::{Store, StoreError};

pub use host::SoldByPlugins;

/// Commands from the API queued at once.
const COMMAND_QUEUE: usize = 64;
/// Messages, outcomes and service calls queued for the host thread.
const INPUT_QUEUE: usize = 1024;
/// Largest module accepted.
pub const MAX_WASM: usize = 16 * 1024 * 1024;
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin.toml: {0}")]
    Manifest(String),
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    #[error("the module was refused: {0}")]
    BadModule(String),
    #[error("no plugin {0:?} is installed")]
    Unknown(String),
    #[error("plugin {0:?} is already installed; upgrade it instead")]
    Exists(String),
    #[error("the new version is plugin {found:?}, not {expected:?}")]
    WrongName { expected: String, found: String },
    #[error("plugin {0:?} has no upgrade waiting for approval")]
    NothingToApprove(String),
    #[error("setting {key:?}: {reason}")]
    BadOverride { key: String, reason: String },
    #[error("the module is {0} bytes; the most is {MAX_WASM}")]
    TooLarge(usize),
    #[error("the plugin runtime: {0}")]
    Runtime(String),
    #[error("plugin files: {0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the budget: {0}")]
    Budget(String),
    #[error("the plugin host is not running")]
    Stopped,
}

/// A plugin as the author ships it: the manifest's text and the module's bytes.
#[derive(Clone, Debug)]
pub struct Package {
    pub manifest: String,
    pub wasm: Vec<u8>,
}

/// The owner's settings on top of the manifest's `[config]`.
pub type Overrides = BTreeMap<String, serde_json::Value>;

/// What the owner sees of a plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub state: PluginState,
    /// Whether an instance is live right now.
    pub running: bool,
    pub grants: Grants,
    pub limits: Limits,
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The keys of `config` the owner set (the rest are the manifest's defaults).
    pub overridden: Vec<String>,
    /// A new version waiting for the owner because it asks for more.
    pub pending_upgrade: Option<PendingView>,
    pub faults: usize,
    pub last_fault: Option<String>,
    /// Calls refused for being outside the grants, since this version was installed (or the
    /// hub started); disabling, enabling and quarantine keep counting.
    pub refused: u64,
    pub events: u64,
    pub subscriptions: Vec<String>,
    pub timers: usize,
    pub storage_used: u64,
    pub recent: Vec<RecentView>,
    pub installed_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingView {
    pub version: String,
    /// What it asks for beyond what was approved, one line each.
    pub asks_for: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentView {
    pub at_ms: u64,
    pub level: String,
    pub text: String,
}

/// What an install or upgrade did.
#[derive(Clone, Debug, PartialEq)]
pub enum Installed {
    /// Running (or installed disabled) with these grants.
    Ready(PluginView),
    /// The new version asks for more; it waits for `approve`, the old one keeps running.
    AwaitingApproval(PluginView),
}

/// What an upgrade did.
#[derive(Clone, Debug, PartialEq)]
pub struct Upgraded {
    pub installed: Installed,
    /// The version that ran before (an upgrade may go back to an older one).
    pub from_version: String,
    /// The version of an upgrade that waited for the owner's approval and this one replaced.
    pub replaced: Option<String>,
}

/// Parses `plugin.toml` strictly (unknown keys named) and checks it against `ceiling`.
pub fn parse_manifest(text: &str, ceiling: &Ceiling) -> Result<Manifest, PluginError> {
    if text.len() > MAX_MANIFEST {
        return Err(PluginError::Manifest(format!("is over {MAX_MANIFEST} bytes")));
    }
    let manifest: Manifest = crate::config::parse_strict(text).map_err(|e| {
        PluginError::Manifest(match e.key {
            Some(key) => format!("{key}: {}", e.message),
            None => e.message,
        })
    })?;
    manifest.validate(ceiling)?;
    Ok(manifest)
}

#[derive(Debug)]
enum Command {
    Install { package: Package, overrides: Overrides, reply: oneshot::Sender<Result<Installed, PluginError>> },
    Upgrade { package: Package, overrides: Overrides, reply: oneshot::Sender<Result<Upgraded, PluginError>> },
    Approve { name: String, reply: oneshot::Sender<Result<PluginView, PluginError>> },
    SetEnabled { name: String, enabled: bool, reply: oneshot::Sender<Result<PluginView, PluginError>> },
    Configure { name: String, overrides: Overrides, reply: oneshot::Sender<Result<PluginView, PluginError>> },
    Remove { name: String, reply: oneshot::Sender<Result<(), PluginError>> },
    List { reply: oneshot::Sender<Vec<PluginView>> },
    Show { name: String, reply: oneshot::Sender<Result<PluginView, PluginError>> },
}

/// The plugin host as the rest of the hub sees it; cheap to clone.
#[derive(Clone, Debug)]
pub struct Plugins {
    commands: mpsc::Sender<Command>,
    sold: SoldByPlugins,
}

/// The host thread and the money task; stopped by [`PluginTasks::shutdown`].
#[derive(Debug)]
pub struct PluginTasks {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    money: tokio::task::JoinHandle<()>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl PluginTasks {
    /// Stops delivering events, lets the current event finish, and joins the host thread.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.money).await;
        self.money.abort();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// What the plugin host runs with.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Where installed modules and their compiled code live.
    pub dir: std::path::PathBuf,
    pub ceiling: Ceiling,
}

/// The parts of the hub plugins reach.
#[derive(Debug, Clone)]
pub struct PluginDeps {
    pub store: Store,
    pub payments: Payments,
    pub market: Market,
    pub devices: Arc<DeviceStates>,
    pub bridge: Option<Bridge>,
}

impl Plugins {
    /// Starts the host thread (loading and starting every enabled plugin), the money task,
    /// and the feed of bridge events into plugins; registers plugin-sold services with the
    /// market.
    pub async fn start(settings: PluginSettings, deps: PluginDeps) -> Result<(Plugins, PluginTasks), PluginError> {
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| PluginError::Io(format!("{}: {e}", settings.dir.display())))?;
        let runtime = runtime::Runtime::new()?;
        let (stop, stop_rx) = watch::channel(false);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (input_tx, input) = mpsc::channel(INPUT_QUEUE);
        let (money_tx, money_rx) = mpsc::channel(money::MONEY_QUEUE);

        let sold = SoldByPlugins::new(input_tx.clone());
        deps.market.set_service_provider(Arc::new(sold.clone()));

        let ctx = abi_host::HostContext {
            store: Some(deps.store.clone()),
            bridge: deps.bridge.clone(),
            devices: deps.devices.clone(),
            money: Some(money_tx),
            currency: deps.payments.currency().clone(),
        };
        let sold_handle = sold.clone();
        let host = host::Host::new(settings, runtime, ctx, deps.store.clone(), deps.payments.clone(), sold);
        let (ready_tx, ready) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("plugins".to_owned())
            .spawn({
                let stop = stop_rx.clone();
                move || host::run(host, commands, input, stop, ready_tx)
            })
            .map_err(|e| PluginError::Runtime(format!("cannot start the plugin thread: {e}")))?;
        ready.await.map_err(|_| PluginError::Stopped)??;

        let events = deps.payments.subscribe();
        let money =
            tokio::spawn(money::run(money_rx, events, deps.payments, deps.market, input_tx.clone(), stop_rx.clone()));
        let forwarder = deps
            .bridge
            .as_ref()
            .map(|bridge| tokio::spawn(host::forward_bridge_events(bridge.subscribe(), input_tx, stop_rx)));
        Ok((
            Plugins { commands: commands_tx, sold: sold_handle },
            PluginTasks { stop, thread: Some(thread), money, forwarder },
        ))
    }

    /// Changes whenever the services plugins sell change (to announce them at once).
    pub fn offers_changed(&self) -> watch::Receiver<u64> {
        self.sold.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PluginError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| PluginError::Stopped)?;
        answer.await.map_err(|_| PluginError::Stopped)
    }

    /// Installs a new plugin: the owner's act, so the manifest's grants are approved as they are.
    pub async fn install(&self, package: Package, overrides: Overrides) -> Result<Installed, PluginError> {
        self.ask(|reply| Command::Install { package, overrides, reply }).await?
    }

    /// Replaces a plugin with a new version; one asking for more waits for [`Plugins::approve`]
    /// (replacing any upgrade already waiting). The owner's config overrides carry over, with
    /// `overrides` on top.
    pub async fn upgrade(&self, package: Package, overrides: Overrides) -> Result<Upgraded, PluginError> {
        self.ask(|reply| Command::Upgrade { package, overrides, reply }).await?
    }

    pub async fn approve(&self, name: &str) -> Result<PluginView, PluginError> {
        self.ask(|reply| Command::Approve { name: name.to_owned(), reply }).await?
    }

    /// Enables (clearing a quarantine) or disables a plugin.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<PluginView, PluginError> {
        self.ask(|reply| Command::SetEnabled { name: name.to_owned(), enabled, reply }).await?
    }

    /// Changes the owner's settings of a plugin, keeping its version and storage: each of
    /// `overrides` replaces the setting of its name (`null` goes back to the manifest's value),
    /// and a running plugin is restarted to read them.
    pub async fn configure(&self, name: &str, overrides: Overrides) -> Result<PluginView, PluginError> {
        self.ask(|reply| Command::Configure { name: name.to_owned(), overrides, reply }).await?
    }

    /// Stops and removes a plugin with its files and storage.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        self.ask(|reply| Command::Remove { name: name.to_owned(), reply }).await?
    }

    pub async fn list(&self) -> Result<Vec<PluginView>, PluginError> {
        self.ask(|reply| Command::List { reply }).await
    }

    pub async fn show(&self, name: &str) -> Result<PluginView, PluginError> {
        self.ask(|reply| Command::Show { name: name.to_owned(), reply }).await?
    }
}

/// A peer's public key as plugins see it.
fn peer_text(key: &PublicKey) -> String {
    key.to_hex()
}

#[cfg(feature = "testing")]
pub mod bench;
