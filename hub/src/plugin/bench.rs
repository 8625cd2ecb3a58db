//! For the dispatch benchmark (feature `testing`): the host's own path for one message into
//! one plugin, and a bare wasmtime call of the same export, to compare in one run.

use std::path::Path;

use machinomy_core::plugin::Ceiling;
use machinomy_core::{Amount, Currency, PublicKey, SigningKey};
use tokio::sync::mpsc;
use wasmtime::{Engine, Linker, Store, TypedFunc};

use super::abi_host::HostContext;
use super::host::{Host, SoldByPlugins};
use super::runtime::Runtime;
use super::{Overrides, Package, PluginError, PluginSettings};
use crate::ledger::CreditLedger;
use crate::payments::{PaymentSettings, Payments};
use crate::store::Store as Books;

/// A plugin host with one plugin installed, driven directly (no thread, no queues).
pub struct HostDispatch {
    host: Host,
    _input: mpsc::Receiver<super::host::Input>,
}

impl std::fmt::Debug for HostDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDispatch").finish_non_exhaustive()
    }
}

impl HostDispatch {
    /// Installs `package` into a host whose store and files live in `dir`.
    pub async fn new(dir: &Path, package: Package) -> Result<HostDispatch, PluginError> {
        let key = SigningKey::from_bytes(&[7; 32]);
        let books = Books::open(&dir.join("store"))?;
        let ledger = std::sync::Arc::new(CreditLedger::new(
            PublicKey::from(key.verifying_key()),
            Currency::usd(),
            Amount::MAX,
            0,
        ));
        let settings =
            PaymentSettings { approval_ttl_secs: 60, max_pending_approvals: 10, time_zone: jiff::tz::TimeZone::UTC };
        let payments = Payments::open(books.clone(), key, ledger, settings, &[])
            .await
            .map_err(|e| PluginError::Runtime(e.to_string()))?;
        let (input_tx, input) = mpsc::channel(16);
        let ctx = HostContext {
            store: Some(books.clone()),
            bridge: None,
            devices: Default::default(),
            money: None,
            currency: Currency::usd(),
        };
        let settings = PluginSettings { dir: dir.join("plugins"), ceiling: Ceiling::default() };
        let mut host = Host::new(settings, Runtime::new()?, ctx, books, payments, SoldByPlugins::new(input_tx));
        host.install(package, Overrides::new()).await?;
        Ok(HostDispatch { host, _input: input })
    }

    /// One message through the host: subscription match, arguments copied in, fuel set,
    /// the export called, timers collected.
    pub fn dispatch(&mut self, topic: &str, payload: &[u8]) {
        self.host.on_message(topic, payload);
    }

    /// Events the plugin has handled.
    pub fn events(&self, plugin: &str) -> u64 {
        self.host.events_of(plugin)
    }
}

/// The same module's `on_message` called straight through wasmtime, arguments already in its
/// memory: the floor the host's dispatch is measured against.
pub struct BareCall {
    store: Store<()>,
    on_message: TypedFunc<(i32, i32, i32, i32), ()>,
    args: (i32, i32, i32, i32),
}

impl std::fmt::Debug for BareCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareCall").finish_non_exhaustive()
    }
}

impl BareCall {
    /// Instantiates `wasm` with every import a no-op returning 0 (the bench module imports
    /// only `subscribe`), and writes `topic` and `payload` into its memory once.
    pub fn new(wasm: &[u8], topic: &str, payload: &[u8]) -> Result<BareCall, PluginError> {
        let err = |e: wasmtime::Error| PluginError::Runtime(super::runtime::first_line(&e));
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(err)?;
        let module = wasmtime::Module::new(&engine, wasm).map_err(err)?;
        let mut linker: Linker<()> = Linker::new(&engine);
        linker.func_wrap(machinomy_sdk::abi::MODULE, "subscribe", |_: i32, _: i32| 0i32).map_err(err)?;
        let mut store = Store::new(&engine, ());
        store.set_fuel(u64::MAX).map_err(err)?;
        let instance = linker.instantiate(&mut store, &module).map_err(err)?;
        let on_message = instance.get_typed_func(&mut store, "on_message").map_err(err)?;
        let alloc: TypedFunc<i32, i32> = instance.get_typed_func(&mut store, "machinomy_alloc").map_err(err)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| PluginError::Runtime("the module has no memory".to_owned()))?;
        let total = i32::try_from(topic.len() + payload.len()).map_err(|_| PluginError::TooLarge(payload.len()))?;
        let base = alloc.call(&mut store, total).map_err(err)?;
        let at = base as u32 as usize;
        memory.write(&mut store, at, topic.as_bytes()).map_err(|e| PluginError::Runtime(e.to_string()))?;
        memory.write(&mut store, at + topic.len(), payload).map_err(|e| PluginError::Runtime(e.to_string()))?;
        let args = (base, topic.len() as i32, base + topic.len() as i32, payload.len() as i32);
        Ok(BareCall { store, on_message, args })
    }

    pub fn call(&mut self) -> Result<(), PluginError> {
        self.on_message
            .call(&mut self.store, self.args)
            .map_err(|e| PluginError::Runtime(super::runtime::first_line(&e)))
    }
}
