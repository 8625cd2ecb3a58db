//! The host thread: owns every plugin's instance, delivers events to them one at a time,
//! fires their timers, applies the owner's commands, and quarantines plugins that keep faulting.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use machinomy_core::plugin::{FaultCounter, Manifest, PluginState, merge_config};
use machinomy_core::{Budget, PublicKey, Subject, TopicKind};
use machinomy_sdk::abi;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};
use wasmtime::{InstancePre, Module};

use super::abi_host::{HostContext, HostState, RecentLine, Session};
use super::money::{MoneyRequest, Outcome};
use super::runtime::{Fault, Instance, NotStarted, Runtime};
use super::{
    Command, Installed, Overrides, Package, PendingView, PluginError, PluginSettings, PluginView, RecentView, Upgraded,
    parse_manifest,
};
use crate::bridge::BridgeEvent;
use crate::hub::now;
use crate::market::{ProvidedAnswer, ServiceProvider, SoldService};
use crate::net::BoxFuture;
use crate::payments::{PaymentError, Payments};
use crate::store::{PendingUpgrade, PluginLogLine, PluginLogRecord, PluginRecord, Store, Write};
use machinomy_core::wire::{ErrorCode, WireError};

/// How long a peer's call of a plugin-sold service waits for the plugin's `respond`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What reaches the host thread besides commands.
#[derive(Debug)]
pub(crate) enum Input {
    Message { topic: Arc<str>, payload: Arc<[u8]> },
    Outcome(Outcome),
    ServiceCall { plugin: String, service: String, body: Vec<u8>, from: PublicKey, reply: Reply },
}

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// One installed plugin on the host.
struct Slot {
    record: PluginRecord,
    /// The current version, compiled and linked; `None` if it could not be loaded.
    pre: Option<InstancePre<HostState>>,
    instance: Option<Instance>,
    /// The session of an instance that faulted, for the next instance to carry on with.
    parked: Option<Session>,
    /// Bumped at every start, so timers of an earlier run never fire into a later one.
    epoch: u64,
    faults: FaultCounter,
    last_fault: Option<String>,
    events: u64,
    /// The owner's view of its log and refusals while no session holds them (stopped,
    /// disabled, quarantined): a new session carries on with them, so stopping and starting
    /// the plugin never wipes what the owner reads in `plugin show`.
    recent: VecDeque<RecentLine>,
    refused: u64,
    next_call: u64,
    /// The record changed outside an async context (a quarantine) and must be written.
    unsaved: bool,
}

impl Slot {
    fn session(&self) -> Option<&Session> {
        self.instance.as_ref().map(Instance::session).or(self.parked.as_ref())
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.instance {
            Some(instance) => Some(instance.session_mut()),
            None => self.parked.as_mut(),
        }
    }

    fn running(&self) -> bool {
        self.instance.is_some() || self.parked.is_some()
    }
}

/// A timer's next firing: (when, plugin, the run's epoch, timer id).
type DueTimer = (Instant, Arc<str>, u64, u64);

pub(crate) struct Host {
    settings: PluginSettings,
    runtime: Runtime,
    ctx: HostContext,
    store: Store,
    payments: Payments,
    sold: SoldByPlugins,
    slots: BTreeMap<String, Slot>,
    /// Soonest first.
    timers: BinaryHeap<Reverse<DueTimer>>,
    next_epoch: u64,
    /// Money orders of finished events, sent by [`Host::release_orders`] once the storage
    /// writes made before them are durable.
    held_orders: Vec<MoneyRequest>,
    /// Whether an event wrote to storage since the last commit.
    unsynced_storage: bool,
}

impl Host {
    pub(crate) fn new(
        settings: PluginSettings,
        runtime: Runtime,
        ctx: HostContext,
        store: Store,
        payments: Payments,
        sold: SoldByPlugins,
    ) -> Host {
        Host {
            settings,
            runtime,
            ctx,
            store,
            payments,
            sold,
            slots: BTreeMap::new(),
            timers: BinaryHeap::new(),
            next_epoch: 1,
            held_orders: Vec::new(),
            unsynced_storage: false,
        }
    }

    fn plugin_dir(&self, name: &str) -> PathBuf {
        self.settings.dir.join(name)
    }

    fn wasm_path(&self, name: &str, hash: &str) -> PathBuf {
        self.plugin_dir(name).join(format!("{hash}.wasm"))
    }

    fn compiled_path(&self, name: &str, hash: &str) -> PathBuf {
        self.plugin_dir(name).join(format!("{hash}-{}.cwasm", self.runtime.engine_tag()))
    }

    /// Loads every installed plugin and starts the enabled ones.
    async fn load_all(&mut self) -> Result<(), PluginError> {
        for record in self.store.plugins()? {
            if record.removed_at.is_some() {
                continue;
            }
            let name = record.name.clone();
            let mut slot = new_slot(record);
            match self.store.plugin_log(&name) {
                Ok(Some(log)) => {
                    slot.refused = log.refused;
                    for line in log.lines.into_iter().rev().take(super::abi_host::RECENT_LINES).rev() {
                        let level = super::abi_host::known_level(&line.level);
                        slot.recent.push_back(RecentLine { at_ms: line.at_ms, level, text: line.text });
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(plugin = %name, error = %e, "cannot read the plugin's saved log"),
            }
            match self.load_module(&mut slot.record) {
                Ok(pre) => slot.pre = Some(pre),
                Err(e) => {
                    warn!(plugin = %name, error = %e, "cannot load plugin");
                    slot.last_fault = Some(format!("cannot load: {e}"));
                }
            }
            // The compiled code's hash may be new.
            self.persist(&slot.record).await?;
            self.slots.insert(name.clone(), slot);
            self.sync_offers();
            if matches!(self.slots.get(&name).map(|s| &s.record.state), Some(PluginState::Enabled)) {
                self.start(&name);
            }
        }
        Ok(())
    }

    /// The record's module: its compiled code from the cache when that is intact, else
    /// compiled from the stored `.wasm` (and cached for next time).
    fn load_module(&self, record: &mut PluginRecord) -> Result<InstancePre<HostState>, PluginError> {
        let compiled = self.compiled_path(&record.name, &record.wasm_hash);
        let cached = record
            .compiled_hash
            .as_deref()
            .and_then(|h| h.parse::<blake3::Hash>().ok())
            .and_then(|hash| self.runtime.load_compiled(&compiled, &hash));
        let module = match cached {
            Some(module) => module,
            None => {
                let path = self.wasm_path(&record.name, &record.wasm_hash);
                let wasm = std::fs::read(&path).map_err(|e| PluginError::Io(format!("{}: {e}", path.display())))?;
                let module = self.runtime.compile(&wasm)?;
                record.compiled_hash = Some(self.runtime.save_compiled(&module, &compiled)?.to_hex().to_string());
                module
            }
        };
        self.runtime.prepare(&module)
    }

    /// Checks and stores a package's module; returns its hash, compiled code's hash, and
    /// the linked module.
    fn accept_module(
        &self,
        manifest: &Manifest,
        wasm: &[u8],
    ) -> Result<(String, String, InstancePre<HostState>), PluginError> {
        if wasm.len() > super::MAX_WASM {
            return Err(PluginError::TooLarge(wasm.len()));
        }
        let module = self.runtime.compile(wasm)?;
        check_memory(&module, manifest.limits.memory_mib)?;
        let pre = self.runtime.prepare(&module)?;
        self.probe(manifest, &pre)?;
        let hash = blake3::hash(wasm).to_hex().to_string();
        let dir = self.plugin_dir(&manifest.name);
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::Io(format!("{}: {e}", dir.display())))?;
        let path = self.wasm_path(&manifest.name, &hash);
        std::fs::write(&path, wasm).map_err(|e| PluginError::Io(format!("{}: {e}", path.display())))?;
        let compiled = self.runtime.save_compiled(&module, &self.compiled_path(&manifest.name, &hash))?;
        Ok((hash, compiled.to_hex().to_string(), pre))
    }

    /// Instantiates the module once, with the plugin's limits and a session that reaches
    /// nothing, to check what only a running module tells: the plugin ABI it speaks. A module
    /// that cannot start is refused now rather than faulting on every start.
    fn probe(&self, manifest: &Manifest, pre: &InstancePre<HostState>) -> Result<(), PluginError> {
        let ctx = HostContext { store: None, bridge: None, money: None, ..self.ctx.clone() };
        let config = merge_config(&manifest.config, &Overrides::new());
        let session = Session::new(&manifest.name, manifest.grants.clone(), &config, manifest.limits.kv_bytes, ctx);
        let limits = manifest.limits;
        match self.runtime.instantiate(pre, session, limits.memory_mib, limits.fuel_per_event) {
            Ok(_) => Ok(()),
            Err(failed) => Err(PluginError::BadModule(failed.fault.0)),
        }
    }

    async fn persist(&self, record: &PluginRecord) -> Result<(), PluginError> {
        self.store.write(&[Write::Plugin(record)])?;
        self.store.commit().await?;
        Ok(())
    }

    async fn set_budget(&self, manifest: &Manifest) -> Result<(), PluginError> {
        let Some(grant) = manifest.grants.budget else { return Ok(()) };
        let budget = Budget::new(Subject::Plugin(manifest.name.clone()), grant.period, grant.limit, grant.auto_approve)
            .map_err(|e| PluginError::Budget(e.to_string()))?;
        self.payments.set_budget(budget).await.map_err(|e| PluginError::Budget(e.to_string()))
    }

    /// A removed plugin's budget and waiting spends go with it: a later plugin of the same name
    /// is asked about anew, and nobody pays for one that is gone.
    async fn drop_budget(&self, name: &str) -> Result<(), PluginError> {
        let subject = Subject::Plugin(name.to_owned());
        let budget = |e: PaymentError| PluginError::Budget(e.to_string());
        self.payments.deny_pending_of(&subject, "the plugin was removed", now()).await.map_err(budget)?;
        match self.payments.remove_budget(&subject).await {
            Ok(_) | Err(PaymentError::UnknownBudget(_) | PaymentError::ConfigManaged(_)) => Ok(()),
            Err(e) => Err(budget(e)),
        }
    }

    pub(crate) async fn install(&mut self, package: Package, overrides: Overrides) -> Result<Installed, PluginError> {
        let manifest = parse_manifest(&package.manifest, &self.settings.ceiling)?;
        if self.slots.contains_key(&manifest.name) {
            return Err(PluginError::Exists(manifest.name));
        }
        let mut overrides = overrides;
        fit_declared(&manifest, &mut overrides)?;
        check_overrides(&overrides)?;
        let (wasm_hash, compiled_hash, pre) = self.accept_module(&manifest, &package.wasm)?;
        self.set_budget(&manifest).await?;
        let at = now();
        let record = PluginRecord {
            name: manifest.name.clone(),
            manifest,
            overrides,
            wasm_hash,
            compiled_hash: Some(compiled_hash),
            state: PluginState::Enabled,
            pending: None,
            installed_at: at,
            updated_at: at,
            removed_at: None,
        };
        self.persist(&record).await?;
        let name = record.name.clone();
        info!(plugin = %name, version = %record.manifest.version, "installed plugin");
        let mut slot = new_slot(record);
        slot.pre = Some(pre);
        self.slots.insert(name.clone(), slot);
        self.sync_offers();
        self.start(&name);
        Ok(Installed::Ready(self.view(&name)?))
    }

    /// Replaces a plugin with a new version (older ones too: a rollback is the owner's call).
    /// `overrides` go on top of the owner's current ones, which carry over.
    async fn upgrade(&mut self, package: Package, overrides: Overrides) -> Result<Upgraded, PluginError> {
        let manifest = parse_manifest(&package.manifest, &self.settings.ceiling)?;
        let name = manifest.name.clone();
        let slot = self.slots.get(&name).ok_or_else(|| PluginError::Unknown(name.clone()))?;
        let current = slot.record.manifest.clone();
        let replaced = slot.record.pending.clone();
        // Settings carried over are not checked again: a version may stop declaring one.
        let mut overrides = overrides;
        fit_declared(&manifest, &mut overrides)?;
        let mut merged = slot.record.overrides.clone();
        merged.extend(overrides.clone());
        check_overrides(&merged)?;
        let mut asks_for = manifest.grants.widening(&current.grants, self.payments.currency());
        asks_for.extend(manifest.limits.widening(&current.limits));
        let (wasm_hash, compiled_hash, pre) = self.accept_module(&manifest, &package.wasm)?;
        let answer = |installed| Upgraded {
            installed,
            from_version: current.version.clone(),
            replaced: replaced.as_ref().map(|p| p.manifest.version.clone()),
        };
        // A waiting upgrade this one replaces leaves no files behind (unless it is the same module).
        let forget_replaced = |host: &Host, kept: &[&str]| {
            if let Some(old) = &replaced
                && !kept.contains(&old.wasm_hash.as_str())
            {
                host.delete_files(&name, &old.wasm_hash);
            }
        };
        if !asks_for.is_empty() {
            let slot = self.slots.get_mut(&name).ok_or_else(|| PluginError::Unknown(name.clone()))?;
            info!(plugin = %name, version = %manifest.version, "plugin upgrade waits for the owner: it asks for more");
            slot.record.pending = Some(PendingUpgrade { manifest, wasm_hash, compiled_hash, asks_for, overrides });
            slot.record.updated_at = now();
            let record = slot.record.clone();
            self.persist(&record).await?;
            let pending_hash = record.pending.as_ref().map_or("", |p| p.wasm_hash.as_str());
            forget_replaced(self, &[record.wasm_hash.as_str(), pending_hash]);
            return Ok(answer(Installed::AwaitingApproval(self.view(&name)?)));
        }
        self.apply_upgrade(&name, manifest, wasm_hash.clone(), compiled_hash, pre, overrides).await?;
        let current_hash = self.slots.get(&name).map(|s| s.record.wasm_hash.clone()).unwrap_or_default();
        forget_replaced(self, &[current_hash.as_str(), wasm_hash.as_str()]);
        Ok(answer(Installed::Ready(self.view(&name)?)))
    }

    async fn approve(&mut self, name: &str) -> Result<PluginView, PluginError> {
        let slot = self.slots.get(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        let pending = slot.record.pending.clone().ok_or_else(|| PluginError::NothingToApprove(name.to_owned()))?;
        let mut record = slot.record.clone();
        record.manifest = pending.manifest.clone();
        record.wasm_hash = pending.wasm_hash.clone();
        record.compiled_hash = Some(pending.compiled_hash.clone());
        let pre = self.load_module(&mut record)?;
        let (manifest, wasm_hash, compiled_hash) = (pending.manifest, pending.wasm_hash, pending.compiled_hash);
        self.apply_upgrade(name, manifest, wasm_hash, compiled_hash, pre, pending.overrides).await?;
        self.view(name)
    }

    async fn apply_upgrade(
        &mut self,
        name: &str,
        manifest: Manifest,
        wasm_hash: String,
        compiled_hash: String,
        pre: InstancePre<HostState>,
        overrides: Overrides,
    ) -> Result<(), PluginError> {
        self.set_budget(&manifest).await?;
        let slot = self.slots.get_mut(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        let old_hash = std::mem::replace(&mut slot.record.wasm_hash, wasm_hash);
        info!(plugin = %name, from = %slot.record.manifest.version, to = %manifest.version, "upgraded plugin");
        slot.record.overrides.extend(overrides);
        slot.record.manifest = manifest;
        slot.record.compiled_hash = Some(compiled_hash);
        slot.record.pending = None;
        slot.record.updated_at = now();
        slot.pre = Some(pre);
        let record = slot.record.clone();
        self.persist(&record).await?;
        if old_hash != record.wasm_hash {
            self.delete_files(name, &old_hash);
        }
        self.stop(name, "upgraded");
        // Refusals are counted against the grants, which the new version changes.
        if let Some(slot) = self.slots.get_mut(name) {
            slot.refused = 0;
        }
        self.sync_offers();
        if record.state == PluginState::Enabled {
            self.start(name);
        }
        Ok(())
    }

    fn delete_files(&self, name: &str, hash: &str) {
        let _ = std::fs::remove_file(self.wasm_path(name, hash));
        let _ = std::fs::remove_file(self.compiled_path(name, hash));
    }

    async fn configure(&mut self, name: &str, mut changes: Overrides) -> Result<PluginView, PluginError> {
        let slot = self.slots.get(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        let mut record = slot.record.clone();
        // Going back to the default needs no declaration: a key a past version declared may go.
        let mut setting: Overrides =
            changes.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
        fit_declared(&record.manifest, &mut setting)?;
        changes.extend(setting);
        for (key, value) in changes {
            // An upgrade waiting for approval carries the settings asked for with it; the
            // owner's later word on a key stands over them.
            if let Some(pending) = record.pending.as_mut() {
                pending.overrides.remove(&key);
            }
            if value.is_null() {
                record.overrides.remove(&key);
            } else {
                record.overrides.insert(key, value);
            }
        }
        check_overrides(&record.overrides)?;
        if record.overrides == slot.record.overrides && record.pending == slot.record.pending {
            return self.view(name);
        }
        let before = merge_config(&slot.record.manifest.config, &slot.record.overrides);
        let after = merge_config(&record.manifest.config, &record.overrides);
        let mut changed: Vec<&str> = before.keys().chain(after.keys()).map(String::as_str).collect();
        changed.sort_unstable();
        changed.dedup();
        changed.retain(|key| before.get(*key) != after.get(*key));
        let them = if changed.len() == 1 { "it" } else { "them" };
        let changed = changed.join(", ");
        let restart = record.state == PluginState::Enabled && slot.running() && !changed.is_empty();
        record.updated_at = now();
        self.persist(&record).await?;
        if let Some(slot) = self.slots.get_mut(name) {
            slot.record = record;
        }
        info!(plugin = %name, "plugin settings changed");
        if !changed.is_empty() {
            let then = if restart { format!("; the plugin restarts to read {them}") } else { String::new() };
            self.note(name, format!("the owner changed {changed}{then}"));
        }
        // A plugin reads its settings when it likes (often once, in on_start): it starts afresh.
        if restart {
            self.stop(name, "reconfigured");
            self.start(name);
        }
        self.view(name)
    }

    /// A line of the hub's own in the plugin's log, for the owner (not the plugin's words).
    fn note(&mut self, name: &str, text: String) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        match slot.session_mut() {
            Some(session) => session.remember("hub", text),
            None => super::abi_host::remember(&mut slot.recent, "hub", text),
        }
    }

    async fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<PluginView, PluginError> {
        let slot = self.slots.get_mut(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        slot.record.state = if enabled { PluginState::Enabled } else { PluginState::Disabled };
        slot.record.updated_at = now();
        slot.faults.clear();
        let record = slot.record.clone();
        self.persist(&record).await?;
        self.stop(name, if enabled { "restarted" } else { "disabled" });
        if enabled {
            let slot = self.slots.get_mut(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
            if slot.pre.is_none() {
                let mut record = slot.record.clone();
                let pre = self.load_module(&mut record)?;
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.pre = Some(pre);
                    slot.last_fault = None;
                }
            }
            self.start(name);
        }
        self.sync_offers();
        self.view(name)
    }

    async fn remove(&mut self, name: &str) -> Result<(), PluginError> {
        let slot = self.slots.get(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        let mut record = slot.record.clone();
        record.removed_at = Some(now());
        // Its saved log goes with it: a plugin installed later under the name starts clean.
        let log = PluginLogRecord { name: name.to_owned(), ..PluginLogRecord::default() };
        self.store.write(&[Write::PluginLog(&log)])?;
        self.persist(&record).await?;
        self.stop(name, "removed");
        self.slots.remove(name);
        self.sync_offers();
        self.store.plugin_kv_clear(name)?;
        self.drop_budget(name).await?;
        let dir = self.plugin_dir(name);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!(plugin = %name, error = %e, "could not delete the plugin's files");
        }
        info!(plugin = %name, "removed plugin");
        Ok(())
    }

    /// Starts a fresh instance with a new session and runs `on_start`.
    fn start(&mut self, name: &str) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let Some(slot) = self.slots.get_mut(name) else { return };
        let Some(pre) = slot.pre.clone() else { return };
        let manifest = &slot.record.manifest;
        let config = merge_config(&manifest.config, &slot.record.overrides);
        let mut session =
            Session::new(name, manifest.grants.clone(), &config, manifest.limits.kv_bytes, self.ctx.clone());
        // The owner's log goes on across runs.
        session.recent = std::mem::take(&mut slot.recent);
        session.refused = slot.refused;
        slot.epoch = epoch;
        let (memory, fuel) = (manifest.limits.memory_mib, manifest.limits.fuel_per_event);
        match self.runtime.instantiate(&pre, session, memory, fuel) {
            Ok(instance) => slot.instance = Some(instance),
            Err(failed) => {
                let NotStarted { fault, session, permanent } = *failed;
                slot.parked = Some(session);
                self.fault(name, fault, permanent);
                return;
            }
        }
        self.deliver(name, |instance| instance.on_start());
    }

    /// Ends the plugin's instance and session: its timers, subscriptions and open calls go;
    /// its log and refusal count stay with the slot for the owner.
    fn stop(&mut self, name: &str, why: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let session = slot.instance.take().map(Instance::into_session).or(slot.parked.take());
        if let Some(mut session) = session {
            slot.recent = std::mem::take(&mut session.recent);
            slot.refused = session.refused;
            for (_, reply) in session.open_calls {
                let _ = reply.send(Err(format!("the plugin was {why}")));
            }
        }
    }

    /// Runs one event in the plugin's instance (making one from the parked session after a
    /// fault) and schedules the timers it set. A fault ends the event and is counted.
    fn deliver(&mut self, name: &str, event: impl FnOnce(&mut Instance) -> Result<(), Fault>) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        if slot.instance.is_none() {
            let (Some(session), Some(pre)) = (slot.parked.take(), slot.pre.clone()) else { return };
            let limits = slot.record.manifest.limits;
            match self.runtime.instantiate(&pre, session, limits.memory_mib, limits.fuel_per_event) {
                Ok(instance) => slot.instance = Some(instance),
                Err(failed) => {
                    let NotStarted { fault, session, permanent } = *failed;
                    slot.parked = Some(session);
                    self.fault(name, fault, permanent);
                    return;
                }
            }
        }
        let Some(instance) = slot.instance.as_mut() else { return };
        slot.events += 1;
        let result = event(instance);
        // What the event ordered stands even when it then faulted: the plugin was given ids.
        let session = instance.session_mut();
        self.held_orders.append(&mut session.outbox);
        self.unsynced_storage |= std::mem::take(&mut session.stored);
        self.schedule_new_timers(name);
        if let Err(fault) = result {
            self.fault(name, fault, false);
        }
    }

    /// Sends the held money orders, after making the storage writes that came before them
    /// durable: an invoice or a payment never goes out while a crash could still undo what the
    /// plugin stored about it. Waits for room in the money task's queue (back-pressure on the
    /// plugins, never on the rest of the hub).
    pub(crate) async fn release_orders(&mut self) {
        if std::mem::take(&mut self.unsynced_storage)
            && let Err(e) = self.store.commit().await
        {
            // The hub is stopping (or its disk failed): nothing more may move money.
            warn!(error = %e, orders = self.held_orders.len(), "plugin storage could not be made durable; held money orders dropped");
            self.held_orders.clear();
            return;
        }
        let Some(money) = self.ctx.money.clone() else {
            self.held_orders.clear();
            return;
        };
        for order in self.held_orders.drain(..) {
            if money.send(order).await.is_err() {
                warn!("the plugins' money task has stopped; held money orders dropped");
                break;
            }
        }
    }

    fn schedule_new_timers(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let epoch = slot.epoch;
        let Some(session) = slot.session_mut() else { return };
        let plugin = session.name.clone();
        for (id, spec) in std::mem::take(&mut session.new_timers) {
            let at = Instant::now() + Duration::from_millis(spec.delay_ms);
            self.timers.push(Reverse((at, plugin.clone(), epoch, id)));
        }
    }

    /// Counts a fault; the instance is dropped (its session parked for the next event), and
    /// after too many the plugin is quarantined. A `permanent` fault (no instance can ever
    /// start) quarantines it at once: retrying would only fault again.
    fn fault(&mut self, name: &str, fault: Fault, permanent: bool) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        if let Some(instance) = slot.instance.take() {
            slot.parked = Some(instance.into_session());
        }
        warn!(plugin = %name, fault = %fault, "plugin fault: the event was stopped");
        if let Some(session) = slot.parked.as_mut() {
            session.remember("fault", fault.0.clone());
        }
        slot.last_fault = Some(fault.0.clone());
        let too_many = slot.faults.record(now());
        let reason = if permanent {
            fault.0
        } else if too_many {
            format!(
                "{fault} ({} faults within {} minutes)",
                slot.faults.count(),
                machinomy_core::plugin::FAULT_WINDOW_SECS / 60
            )
        } else {
            return;
        };
        warn!(plugin = %name, %reason, "plugin quarantined");
        slot.record.state = PluginState::Quarantined { reason };
        slot.record.updated_at = now();
        slot.unsaved = true;
        self.stop(name, "quarantined");
        self.sync_offers();
    }

    /// Persists quarantines decided in [`Host::fault`] (faults happen in sync code).
    async fn persist_quarantines(&mut self) {
        let unsaved: Vec<PluginRecord> = self.slots.values().filter(|s| s.unsaved).map(|s| s.record.clone()).collect();
        for record in unsaved {
            if let Err(e) = self.persist(&record).await {
                warn!(plugin = %record.name, error = %e, "could not record a quarantine");
                continue;
            }
            if let Some(slot) = self.slots.get_mut(&record.name) {
                slot.unsaved = false;
            }
        }
    }

    pub(crate) fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let names: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.session().is_some_and(|s| s.wants(topic)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.deliver(&name, |instance| instance.on_message(topic, payload));
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let name = outcome.plugin.to_string();
        let running = self.slots.get(&name).is_some_and(Slot::running);
        if !running {
            return;
        }
        self.deliver(&name, |instance| instance.on_spend_result(outcome.request, outcome.status, &outcome.detail));
    }

    fn on_service_call(&mut self, plugin: &str, service: &str, body: &[u8], from: &PublicKey, reply: Reply) {
        let Some(slot) = self.slots.get_mut(plugin) else {
            let _ = reply.send(Err(format!("plugin {plugin} is not installed")));
            return;
        };
        let call = slot.next_call;
        slot.next_call += 1;
        let Some(session) = slot.session_mut() else {
            let _ = reply.send(Err(format!("plugin {plugin} is not running")));
            return;
        };
        session.open_calls.insert(call, reply);
        let from = super::peer_text(from);
        self.deliver(plugin, |instance| {
            if !instance.has_on_service_call() {
                return Ok(());
            }
            instance.on_service_call(call, service, body, &from)
        });
        // A call the plugin cannot answer any more (it faulted, or has no handler) is failed
        // now rather than at the timeout.
        let Some(slot) = self.slots.get_mut(plugin) else { return };
        let answerable = slot.instance.as_ref().is_some_and(Instance::has_on_service_call);
        if !answerable && let Some(reply) = slot.session_mut().and_then(|s| s.open_calls.remove(&call)) {
            let _ = reply.send(Err(format!("plugin {plugin} could not answer")));
        }
    }

    /// Fires every due timer; returns when the next one is due.
    fn fire_timers(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(Reverse((at, plugin, epoch, id))) = self.timers.peek().cloned() {
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            let name = plugin.to_string();
            let Some(slot) = self.slots.get_mut(&name) else { continue };
            if slot.epoch != epoch {
                continue;
            }
            let Some(session) = slot.session_mut() else { continue };
            let Some(spec) = session.timers.get(&id).copied() else { continue };
            if spec.repeat {
                let next = now + Duration::from_millis(spec.delay_ms);
                self.timers.push(Reverse((next, plugin, epoch, id)));
            } else {
                session.timers.remove(&id);
            }
            self.deliver(&name, |instance| instance.on_timer(id));
        }
        None
    }

    #[cfg(feature = "testing")]
    pub(crate) fn events_of(&self, name: &str) -> u64 {
        self.slots.get(name).map_or(0, |slot| slot.events)
    }

    fn view(&self, name: &str) -> Result<PluginView, PluginError> {
        let slot = self.slots.get(name).ok_or_else(|| PluginError::Unknown(name.to_owned()))?;
        let record = &slot.record;
        let session = slot.session();
        Ok(PluginView {
            name: record.name.clone(),
            version: record.manifest.version.clone(),
            description: record.manifest.description.clone(),
            state: record.state.clone(),
            running: slot.running(),
            grants: record.manifest.grants.clone(),
            limits: record.manifest.limits,
            config: merge_config(&record.manifest.config, &record.overrides),
            overridden: record.overrides.keys().cloned().collect(),
            pending_upgrade: record
                .pending
                .as_ref()
                .map(|p| PendingView { version: p.manifest.version.clone(), asks_for: p.asks_for.clone() }),
            faults: slot.faults.count(),
            last_fault: slot.last_fault.clone(),
            refused: session.map_or(slot.refused, |s| s.refused),
            events: slot.events,
            subscriptions: session.map(|s| s.subscriptions.clone()).unwrap_or_default(),
            timers: session.map_or(0, |s| s.timers.len()),
            storage_used: self.store.plugin_kv_usage(name).unwrap_or(0),
            recent: session
                .map_or(&slot.recent, |s| &s.recent)
                .iter()
                .map(|l| RecentView { at_ms: l.at_ms, level: l.level.to_owned(), text: l.text.clone() })
                .collect(),
            installed_at: record.installed_at,
            updated_at: record.updated_at,
        })
    }

    /// Tells the market which services running plugins sell.
    fn sync_offers(&self) {
        let offers = self
            .slots
            .values()
            .filter(|s| s.record.state == PluginState::Enabled)
            .flat_map(|s| {
                s.record.manifest.grants.sell.iter().map(|sell| {
                    (
                        s.record.name.clone(),
                        SoldService {
                            name: sell.service.clone(),
                            price: sell.price,
                            description: sell.description.clone(),
                        },
                    )
                })
            })
            .collect();
        self.sold.set(offers);
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Install { package, overrides, reply } => {
                let _ = reply.send(self.install(package, overrides).await);
            }
            Command::Upgrade { package, overrides, reply } => {
                let _ = reply.send(self.upgrade(package, overrides).await);
            }
            Command::Approve { name, reply } => {
                let _ = reply.send(self.approve(&name).await);
            }
            Command::SetEnabled { name, enabled, reply } => {
                let _ = reply.send(self.set_enabled(&name, enabled).await);
            }
            Command::Configure { name, overrides, reply } => {
                let _ = reply.send(self.configure(&name, overrides).await);
            }
            Command::Remove { name, reply } => {
                let _ = reply.send(self.remove(&name).await);
            }
            Command::List { reply } => {
                let _ = reply.send(self.slots.keys().filter_map(|name| self.view(name).ok()).collect());
            }
            Command::Show { name, reply } => {
                let _ = reply.send(self.view(&name));
            }
        }
        self.persist_quarantines().await;
    }

    /// Stops every plugin and saves what the owner reads of their runs (a crash loses only that).
    async fn shut_down(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in &names {
            self.stop(name, "stopped with the hub");
        }
        let logs: Vec<PluginLogRecord> = self
            .slots
            .iter()
            .map(|(name, slot)| PluginLogRecord {
                name: name.clone(),
                refused: slot.refused,
                lines: slot
                    .recent
                    .iter()
                    .map(|line| PluginLogLine {
                        at_ms: line.at_ms,
                        level: line.level.to_owned(),
                        text: line.text.clone(),
                    })
                    .collect(),
            })
            .collect();
        let writes: Vec<Write<'_>> = logs.iter().map(Write::PluginLog).collect();
        let saved = match self.store.write(&writes) {
            Ok(()) => self.store.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            warn!(error = %e, "could not save the plugins' logs");
        }
    }
}

fn new_slot(record: PluginRecord) -> Slot {
    Slot {
        record,
        pre: None,
        instance: None,
        parked: None,
        epoch: 0,
        faults: FaultCounter::default(),
        last_fault: None,
        events: 0,
        recent: VecDeque::new(),
        refused: 0,
        next_call: 1,
        unsaved: false,
    }
}

/// A module whose memory starts above the plugin's limit could never run.
fn check_memory(module: &Module, memory_mib: u64) -> Result<(), PluginError> {
    for export in module.exports() {
        if let wasmtime::ExternType::Memory(memory) = export.ty() {
            let minimum = memory.minimum().saturating_mul(memory.page_size());
            if minimum > memory_mib.saturating_mul(1024 * 1024) {
                return Err(PluginError::BadModule(format!(
                    "its memory starts at {} MiB, above its limit of {memory_mib} MiB",
                    minimum / (1024 * 1024)
                )));
            }
        }
    }
    Ok(())
}

/// Settings the owner gives must be ones the manifest declares, of the kind of their default:
/// a typo, or a text where a number belongs, is refused rather than handed to a plugin that
/// cannot use it. A number or true/false given for a text setting is taken as its text (`--set
/// max_price=1500` where the default is `"2000"`). `null` (back to the default) passes.
fn fit_declared(manifest: &Manifest, settings: &mut Overrides) -> Result<(), PluginError> {
    use serde_json::Value;
    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "true or false",
            Value::Number(_) => "a number",
            Value::String(_) => "a text",
            Value::Array(_) => "a list",
            Value::Object(_) => "a table",
        }
    }
    for (key, value) in settings.iter_mut() {
        let Some(default) = manifest.config.get(key) else {
            let known: Vec<&str> = manifest.config.keys().map(String::as_str).collect();
            let reason = match known.is_empty() {
                true => format!("{} declares no settings", manifest.name),
                false => format!("{} has no such setting (its settings: {})", manifest.name, known.join(", ")),
            };
            return Err(PluginError::BadOverride { key: key.clone(), reason });
        };
        match (default, &*value) {
            (_, Value::Null) | (Value::Null, _) => {}
            (Value::String(_), Value::Number(_) | Value::Bool(_)) => *value = Value::String(value.to_string()),
            (default, given) if kind(default) == kind(given) => {}
            (default, given) => {
                let reason = format!("it is {} (default {default}), and {given} is not", kind(default));
                return Err(PluginError::BadOverride { key: key.clone(), reason });
            }
        }
    }
    Ok(())
}

fn check_overrides(overrides: &Overrides) -> Result<(), PluginError> {
    if let Some(key) = overrides.keys().find(|key| !machinomy_core::plugin::valid_config_key(key)) {
        return Err(PluginError::BadOverride {
            key: key.clone(),
            reason: machinomy_core::plugin::CONFIG_KEY_RULE.into(),
        });
    }
    let size = serde_json::to_vec(overrides).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > machinomy_core::plugin::MAX_CONFIG {
        return Err(PluginError::BadOverride { key: String::new(), reason: "the overrides are too large".into() });
    }
    Ok(())
}

/// The host thread's body: a single-threaded runtime running [`Host`] until `stop`.
pub(crate) fn run(
    mut host: Host,
    mut commands: mpsc::Receiver<super::Command>,
    mut input: mpsc::Receiver<Input>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), PluginError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(PluginError::Runtime(format!("cannot start the plugin runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        if let Err(e) = host.load_all().await {
            let _ = ready.send(Err(e));
            return;
        }
        host.persist_quarantines().await;
        let _ = ready.send(Ok(()));
        loop {
            let next_timer = host.fire_timers();
            host.release_orders().await;
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(command) = commands.recv() => host.command(command).await,
                Some(event) = input.recv() => {
                    match event {
                        Input::Message { topic, payload } => host.on_message(&topic, &payload),
                        Input::Outcome(outcome) => host.on_outcome(outcome),
                        Input::ServiceCall { plugin, service, body, from, reply } => {
                            host.on_service_call(&plugin, &service, &body, &from, reply);
                        }
                    }
                    host.persist_quarantines().await;
                }
                () = sleep => {}
            }
            host.release_orders().await;
            host.persist_quarantines().await;
        }
        host.shut_down().await;
    });
}

/// Feeds device messages from the bridge into the host as MQTT topics plugins subscribe to.
pub(crate) async fn forward_bridge_events(
    mut events: broadcast::Receiver<BridgeEvent>,
    input: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            event = events.recv() => event,
        };
        let (topic, payload) = match event {
            Ok(BridgeEvent::Availability { device, online }) => {
                (TopicKind::Status.topic(&device), if online { b"online".to_vec() } else { b"offline".to_vec() })
            }
            Ok(BridgeEvent::State { device, state }) => {
                (TopicKind::State.topic(&device), serde_json::to_vec(&state).unwrap_or_default())
            }
            Ok(BridgeEvent::Event { device, name, payload }) => {
                (TopicKind::Event(name).topic(&device), serde_json::to_vec(&payload).unwrap_or_default())
            }
            Ok(BridgeEvent::Paired { .. } | BridgeEvent::Removed { .. }) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(missed, "plugins fell behind on device messages; some were not delivered");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let message = Input::Message { topic: Arc::from(topic), payload: Arc::from(payload) };
        if input.send(message).await.is_err() {
            return;
        }
    }
}

/// The services plugins sell, as the market sees them.
#[derive(Clone, Debug)]
pub struct SoldByPlugins {
    offers: Arc<RwLock<Vec<(String, SoldService)>>>,
    input: mpsc::Sender<Input>,
    /// Bumped whenever the offers change, so they are announced at once.
    changed: Arc<watch::Sender<u64>>,
}

impl SoldByPlugins {
    pub(crate) fn new(input: mpsc::Sender<Input>) -> SoldByPlugins {
        SoldByPlugins { offers: Arc::new(RwLock::new(Vec::new())), input, changed: Arc::new(watch::channel(0).0) }
    }

    fn set(&self, offers: Vec<(String, SoldService)>) {
        if let Ok(mut current) = self.offers.write() {
            if *current == offers {
                return;
            }
            *current = offers;
        }
        self.changed.send_modify(|version| *version += 1);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn seller(&self, service: &str) -> Option<String> {
        let offers = self.offers.read().ok()?;
        offers.iter().find(|(_, s)| s.name == service).map(|(plugin, _)| plugin.clone())
    }
}

impl ServiceProvider for SoldByPlugins {
    fn offers(&self) -> Vec<SoldService> {
        self.offers.read().map(|o| o.iter().map(|(_, s)| s.clone()).collect()).unwrap_or_default()
    }

    fn answer(
        &self,
        service: &str,
        from: PublicKey,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<ProvidedAnswer, WireError>> {
        let service = service.to_owned();
        Box::pin(async move {
            let unavailable = |message: String| WireError::new(ErrorCode::ServiceUnavailable, message);
            let plugin = self.seller(&service).ok_or_else(|| unavailable(format!("no plugin sells {service}")))?;
            let (reply, answer) = oneshot::channel();
            let call = Input::ServiceCall { plugin: plugin.clone(), service, body, from, reply };
            self.input.send(call).await.map_err(|_| unavailable("the plugin host is not running".to_owned()))?;
            match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
                Ok(Ok(Ok(body))) if body.len() <= abi::MAX_PAYLOAD => {
                    Ok(ProvidedAnswer { body, subject: Subject::Plugin(plugin) })
                }
                Ok(Ok(Ok(_))) => Err(unavailable("the plugin's answer is too large".to_owned())),
                Ok(Ok(Err(message))) => Err(unavailable(message)),
                Ok(Err(_)) => Err(unavailable(format!("plugin {plugin} did not answer"))),
                Err(_) => Err(unavailable(format!("plugin {plugin} did not answer within {ANSWER_TIMEOUT:?}"))),
            }
        })
    }
}
