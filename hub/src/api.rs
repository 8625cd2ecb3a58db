//! The hub as the web layer's [`Backend`]: maps the books into API views and hub errors into
//! HTTP-shaped ones.

use machinomy_core::{Approval, Budget, ChannelId, DeviceId, Subject, Timestamp, Verdict, spending};
use machinomy_web::backend::PluginUpload;
use machinomy_web::model::{
    BudgetView, CallBody, CallResult, ChannelView, DailySpendingView, DeviceEventView, DeviceView, HubStatus,
    InstallStatus, LiveEvent, MqttCredentials, NewDevice, OfferView, PairedDevice, PeerView, PendingUpgrade,
    PluginInstalled, PluginLogLine, PluginStateName, PluginView, Role, ServicesView, SpendingQuery, SpendingReport,
};
use machinomy_web::{Backend, BackendError};

use crate::bridge::ble::BleError;
use crate::bridge::{BridgeError, Device};
use crate::hub::{Hub, now};
use crate::market::MarketError;
use crate::payments::PaymentError;
use crate::plugin::{Installed, Package, PluginError, Plugins, Upgraded};
use crate::store::ChannelRecord;
use crate::store::DeviceKind;

impl From<PaymentError> for BackendError {
    fn from(e: PaymentError) -> Self {
        use machinomy_core::ChannelError;
        match &e {
            PaymentError::UnknownChannel(_) | PaymentError::UnknownApproval(_) | PaymentError::UnknownBudget(_) => {
                BackendError::NotFound(e.to_string())
            }
            PaymentError::Approval(_)
            | PaymentError::NotPayable(_)
            | PaymentError::ConfigManaged(_)
            | PaymentError::Channel(ChannelError::NotOpen(..) | ChannelError::NotClosing(_))
            | PaymentError::Channel(ChannelError::SettlementPeriodRunning { .. }) => {
                BackendError::Conflict(e.to_string())
            }
            PaymentError::Store(_) => BackendError::Internal(e.to_string()),
            _ => BackendError::Invalid(e.to_string()),
        }
    }
}

impl Hub {
    fn channel_view(&self, record: &ChannelRecord) -> ChannelView {
        let terms = record.terms();
        let (role, counterparty) = match record {
            ChannelRecord::Sender(_) => (Role::Sender, terms.receiver),
            ChannelRecord::Receiver(_) => (Role::Receiver, terms.sender),
        };
        ChannelView {
            id: terms.id,
            role,
            ledger: terms.ledger.clone(),
            counterparty,
            currency: self.payments().currency().clone(),
            capacity: terms.capacity,
            spent: record.total(),
            remaining: terms.capacity.saturating_sub(record.total()),
            status: record.status(),
            opened_at: terms.opened_at,
            settlement_period_secs: terms.settlement_period_secs,
        }
    }

    async fn budget_view(&self, budget: Budget) -> Result<BudgetView, PaymentError> {
        let now = now();
        let spent_this_period = self.payments().spent_this_period(&budget, now).await?;
        let (period_start, period_end) = self.payments().period_bounds(budget.period, now);
        Ok(BudgetView {
            currency: self.payments().currency().clone(),
            spent_this_period,
            period_start,
            period_end,
            budget,
        })
    }
}

impl Backend for Hub {
    fn time_zone(&self) -> jiff::tz::TimeZone {
        Hub::time_zone(self).clone()
    }

    fn live_events(&self) -> Result<tokio::sync::broadcast::Receiver<LiveEvent>, BackendError> {
        self.subscribe_live()
            .ok_or_else(|| BackendError::Unavailable("the hub is not running its live feed".to_owned()))
    }

    async fn status(&self) -> Result<HubStatus, BackendError> {
        let payments = self.payments();
        let channels = payments.channels()?;
        let now = now();
        Ok(HubStatus {
            name: self.name().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            public_key: payments.public_key(),
            started_at: self.started_at(),
            uptime_secs: now.secs().saturating_sub(self.started_at().secs()),
            now,
            currency: payments.currency().clone(),
            channels_open: channels.iter().filter(|c| c.status().is_open()).count() as u64,
            approvals_pending: {
                payments.expire_due(now).await?;
                payments.pending_count().await as u64
            },
            budgets: payments.budgets()?.len() as u64,
            peer_id: self.market().net().map(|n| n.peer_id()),
            p2p_addrs: match self.market().net() {
                Some(net) => net.listen_addrs().await.unwrap_or_default(),
                None => Vec::new(),
            },
        })
    }

    async fn channels(&self) -> Result<Vec<ChannelView>, BackendError> {
        let mut records = self.payments().channels()?;
        records.sort_by_key(|r| std::cmp::Reverse(r.terms().opened_at));
        Ok(records.iter().map(|r| self.channel_view(r)).collect())
    }

    async fn channel(&self, id: ChannelId) -> Result<ChannelView, BackendError> {
        Ok(self.channel_view(&self.payments().channel(&id)?))
    }

    async fn close_channel(&self, id: ChannelId) -> Result<ChannelView, BackendError> {
        Ok(self.channel_view(&self.payments().close(id, now()).await?))
    }

    async fn budgets(&self) -> Result<Vec<BudgetView>, BackendError> {
        let budgets = self.payments().budgets()?;
        let mut views = Vec::with_capacity(budgets.len());
        for budget in budgets {
            views.push(self.budget_view(budget).await?);
        }
        Ok(views)
    }

    async fn set_budget(&self, budget: Budget) -> Result<BudgetView, BackendError> {
        if let Some(problem) = crate::config::budget_subject_problem(&budget.subject) {
            return Err(BackendError::Invalid(problem));
        }
        self.payments().set_budget(budget.clone()).await?;
        Ok(self.budget_view(budget).await?)
    }

    async fn remove_budget(&self, subject: Subject) -> Result<Budget, BackendError> {
        Ok(self.payments().remove_budget(&subject).await?)
    }

    async fn approvals(&self, pending_only: bool) -> Result<Vec<Approval>, BackendError> {
        Ok(self.payments().approvals(pending_only, now()).await?)
    }

    async fn approval(&self, id: u64) -> Result<Approval, BackendError> {
        Ok(self.payments().approval(id, now()).await?)
    }

    async fn decide(&self, id: u64, verdict: Verdict, by: String) -> Result<Approval, BackendError> {
        Ok(self.payments().decide(id, verdict, &by, now()).await?)
    }

    async fn peers(&self) -> Result<Vec<PeerView>, BackendError> {
        let Some(net) = self.market().net() else { return Ok(Vec::new()) };
        let peers = net.peers().await.map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Ok(peers
            .into_iter()
            .map(|p| PeerView { key: p.key, peer_id: p.peer_id, addrs: p.addrs, connected: p.connected })
            .collect())
    }

    async fn services(&self) -> Result<ServicesView, BackendError> {
        let now = now();
        Ok(ServicesView {
            own: self.market().own_offers(now).iter().map(offer_view).collect(),
            seen: self.market().offers(now).iter().map(offer_view).collect(),
        })
    }

    async fn call_service(&self, service: String, call: CallBody) -> Result<CallResult, BackendError> {
        let bought = self.market().call(&service, call.body.into_bytes(), &call.subject).await?;
        Ok(CallResult {
            service,
            seller: bought.seller,
            price: bought.price,
            currency: self.payments().currency().clone(),
            body: String::from_utf8_lossy(&bought.body).into_owned(),
            receipt: bought.receipt,
        })
    }

    async fn spending(&self, query: SpendingQuery) -> Result<SpendingReport, BackendError> {
        let entries = self.payments().spending(query.from, query.to)?;
        let zone = self.zone_offset();
        let rows = spending::report(&entries, query.group_by, query.from, query.to, &zone)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let sum = |f: fn(&machinomy_core::ReportRow) -> machinomy_core::Amount| {
            rows.iter().try_fold(machinomy_core::Amount::ZERO, |s, r| s.checked_add(f(r)))
        };
        Ok(SpendingReport {
            currency: self.payments().currency().clone(),
            group_by: query.group_by,
            from: query.from,
            to: query.to,
            total_paid: sum(|r| r.paid).map_err(|e| BackendError::Internal(e.to_string()))?,
            total_received: sum(|r| r.received).map_err(|e| BackendError::Internal(e.to_string()))?,
            rows,
        })
    }

    async fn daily_spending(&self, from: Timestamp, to: Timestamp) -> Result<DailySpendingView, BackendError> {
        let entries = self.payments().spending(Some(from), Some(to))?;
        let daily = spending::daily_paid(&entries, from, to, &self.zone_offset()).map_err(|e| match e {
            spending::ReportError::Amount(_) => BackendError::Internal(e.to_string()),
            spending::ReportError::EmptyPeriod | spending::ReportError::TooManyDays { .. } => {
                BackendError::Invalid(e.to_string())
            }
        })?;
        Ok(DailySpendingView { currency: self.payments().currency().clone(), from, to, daily })
    }

    async fn recent_payments(&self, limit: usize) -> Result<Vec<machinomy_core::SpendingEntry>, BackendError> {
        Ok(self.payments().recent_spending(limit)?)
    }

    // A small file in the data dir, read or written only at setup, login and a signed-out visit.
    async fn owner_password_hash(&self) -> Result<Option<String>, BackendError> {
        self.data_dir().owner_password_hash().map_err(|e| BackendError::Internal(e.to_string()))
    }

    async fn set_owner_password_hash(&self, hash: String) -> Result<(), BackendError> {
        match self.data_dir().set_owner_password_hash(&hash) {
            Ok(true) => Ok(()),
            Ok(false) => Err(BackendError::Conflict("the owner's password is already set".to_owned())),
            Err(e) => Err(BackendError::Internal(e.to_string())),
        }
    }

    async fn devices(&self) -> Result<Vec<DeviceView>, BackendError> {
        Ok(self.bridge_or_unavailable()?.registry().list().into_iter().map(device_view).collect())
    }

    async fn device(&self, id: DeviceId) -> Result<DeviceView, BackendError> {
        let bridge = self.bridge_or_unavailable()?;
        bridge.registry().get(&id).map(device_view).ok_or_else(|| BridgeError::UnknownDevice(id).into())
    }

    async fn add_device(&self, device: NewDevice) -> Result<PairedDevice, BackendError> {
        let bridge = self.bridge_or_unavailable()?;
        let ble = device.ble.map(|b| (b.address, b.profile));
        let pairing = bridge.pair(device.id, device.name, device.public_key, ble, now()).await?;
        let mut next_steps = Vec::new();
        let credentials = match (&pairing.password, bridge.broker_addr()) {
            (Some(password), Some(broker)) => {
                let username = pairing.device.record.id.to_string();
                // Commands and spend results sent while a device is away reach it only in a
                // persistent session.
                let session = "connect with a persistent session (clean session off) and QoS 1, so commands and \
                               spend results sent while the device is offline reach it";
                if bridge.external_broker() {
                    next_steps.push(format!(
                        "add the device to the broker: mosquitto_passwd -b /etc/mosquitto/machinomy.passwd {username} {password} && systemctl reload mosquitto; then {session}"
                    ));
                } else {
                    next_steps.push(format!(
                        "connect as client id {username:?} (the broker refuses any other client id for this login); {session}"
                    ));
                }
                Some(MqttCredentials { broker: broker.to_owned(), username, password: password.clone() })
            }
            (Some(_), None) => {
                next_steps
                    .push("the MQTT bridge is off ([mqtt] mode = \"off\"): the device cannot connect yet".to_owned());
                None
            }
            (None, _) => None,
        };
        Ok(PairedDevice {
            device: device_view(pairing.device),
            credentials,
            secret_key: pairing.secret_key,
            next_steps,
        })
    }

    async fn remove_device(&self, id: DeviceId) -> Result<DeviceView, BackendError> {
        let device = self.bridge_or_unavailable()?.remove(&id, now()).await?;
        // What it asked for and the owner has not yet approved would pay for a stranger.
        self.payments().deny_pending_of(&Subject::Device(id.to_string()), "the device was unpaired", now()).await?;
        Ok(device_view(device))
    }

    async fn send_command(&self, id: DeviceId, name: String, payload: serde_json::Value) -> Result<(), BackendError> {
        Ok(self.bridge_or_unavailable()?.command(&id, &name, payload).await?)
    }

    async fn plugins(&self) -> Result<Vec<PluginView>, BackendError> {
        let mut plugins = self.plugins_or_unavailable()?.list().await?;
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(plugins.into_iter().map(plugin_view).collect())
    }

    async fn plugin(&self, name: String) -> Result<PluginView, BackendError> {
        Ok(plugin_view(self.plugins_or_unavailable()?.show(&name).await?))
    }

    async fn install_plugin(
        &self,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginInstalled, BackendError> {
        let plugins = self.plugins_or_unavailable()?;
        let package = Package { manifest: upload.manifest, wasm: upload.wasm };
        let done = installed(plugins.install(package, config.into_iter().collect()).await?);
        self.tell_pages(LiveEvent::Plugin { name: done.plugin.name.clone() });
        Ok(done)
    }

    async fn upgrade_plugin(
        &self,
        name: String,
        upload: PluginUpload,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginInstalled, BackendError> {
        let plugins = self.plugins_or_unavailable()?;
        // The host upgrades whichever plugin the manifest names: it must be the one asked for.
        if let Some(found) = manifest_name(&upload.manifest)
            && found != name
        {
            return Err(PluginError::WrongName { expected: name, found }.into());
        }
        // A manifest whose name that quick look cannot read is refused by the host's strict parse.
        let package = Package { manifest: upload.manifest, wasm: upload.wasm };
        let done = upgraded(plugins.upgrade(package, config.into_iter().collect()).await?);
        self.tell_pages(LiveEvent::Plugin { name });
        Ok(done)
    }

    async fn approve_plugin(&self, name: String) -> Result<PluginView, BackendError> {
        let view = plugin_view(self.plugins_or_unavailable()?.approve(&name).await?);
        self.tell_pages(LiveEvent::Plugin { name });
        Ok(view)
    }

    async fn set_plugin_enabled(&self, name: String, enabled: bool) -> Result<PluginView, BackendError> {
        let view = plugin_view(self.plugins_or_unavailable()?.set_enabled(&name, enabled).await?);
        self.tell_pages(LiveEvent::Plugin { name });
        Ok(view)
    }

    async fn configure_plugin(
        &self,
        name: String,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<PluginView, BackendError> {
        let view = plugin_view(self.plugins_or_unavailable()?.configure(&name, config.into_iter().collect()).await?);
        self.tell_pages(LiveEvent::Plugin { name });
        Ok(view)
    }

    async fn remove_plugin(&self, name: String) -> Result<(), BackendError> {
        self.plugins_or_unavailable()?.remove(&name).await?;
        self.tell_pages(LiveEvent::Plugin { name });
        Ok(())
    }
}

// The web layer's upload limits must admit every module and manifest the plugin host accepts.
const _: () = assert!(machinomy_web::PLUGIN_WASM_LIMIT == crate::plugin::MAX_WASM);
const _: () = assert!(
    machinomy_web::PLUGIN_BODY_LIMIT >= crate::plugin::MAX_WASM.div_ceil(3) * 4 + 6 * crate::plugin::MAX_MANIFEST
);

impl Hub {
    /// The home's clock as the core's reports read it.
    fn zone_offset(&self) -> impl Fn(Timestamp) -> i32 + '_ {
        |at| machinomy_web::zone_offset(Hub::time_zone(self), at)
    }

    fn plugins_or_unavailable(&self) -> Result<&Plugins, BackendError> {
        self.plugins().ok_or_else(|| {
            BackendError::Unavailable(
                "plugins are disabled on this hub ([plugins] enabled = false in hub.toml)".to_owned(),
            )
        })
    }
}

/// The `name` of a manifest, if it is TOML with a string `name` (the host checks the rest).
fn manifest_name(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("name")?.as_str().map(str::to_owned)
}

impl From<PluginError> for BackendError {
    fn from(e: PluginError) -> Self {
        match &e {
            PluginError::Manifest(_)
            | PluginError::Invalid(_)
            | PluginError::BadModule(_)
            | PluginError::WrongName { .. }
            | PluginError::BadOverride { .. }
            | PluginError::Budget(_) => BackendError::Invalid(e.to_string()),
            PluginError::Unknown(_) => BackendError::NotFound(e.to_string()),
            PluginError::Exists(_) | PluginError::NothingToApprove(_) => BackendError::Conflict(e.to_string()),
            PluginError::TooLarge(_) => BackendError::TooLarge(e.to_string()),
            PluginError::Stopped => {
                BackendError::Unavailable(format!("{e} (the hub may be shutting down; its log says why)"))
            }
            PluginError::Runtime(_) | PluginError::Io(_) | PluginError::Store(_) => {
                BackendError::Internal(e.to_string())
            }
        }
    }
}

fn installed(installed: Installed) -> PluginInstalled {
    let (status, plugin) = match installed {
        Installed::Ready(view) => (InstallStatus::Ready, view),
        Installed::AwaitingApproval(view) => (InstallStatus::AwaitingApproval, view),
    };
    PluginInstalled::install(status, plugin_view(plugin))
}

fn upgraded(upgraded: Upgraded) -> PluginInstalled {
    let mut answer = installed(upgraded.installed);
    // The version asked for: the one running now, or the one waiting for approval.
    let new_version = match (&answer.status, &answer.plugin.pending_upgrade) {
        (InstallStatus::AwaitingApproval, Some(pending)) => &pending.version,
        _ => &answer.plugin.version,
    };
    answer.downgrade =
        machinomy_core::plugin::compare_versions(new_version, &upgraded.from_version) == std::cmp::Ordering::Less;
    answer.previous_version = Some(upgraded.from_version);
    answer.replaced_upgrade = upgraded.replaced;
    answer
}

fn plugin_view(view: crate::plugin::PluginView) -> PluginView {
    use machinomy_core::plugin::PluginState;
    let (state, quarantine_reason) = match view.state {
        PluginState::Enabled => (PluginStateName::Enabled, None),
        PluginState::Disabled => (PluginStateName::Disabled, None),
        PluginState::Quarantined { reason } => (PluginStateName::Quarantined, Some(reason)),
    };
    PluginView {
        name: view.name,
        version: view.version,
        description: view.description,
        state,
        quarantine_reason,
        running: view.running,
        grants: view.grants.into(),
        limits: view.limits,
        config: view.config,
        overridden: view.overridden,
        pending_upgrade: view.pending_upgrade.map(|p| PendingUpgrade { version: p.version, asks_for: p.asks_for }),
        faults: view.faults as u64,
        last_fault: view.last_fault,
        refused: view.refused,
        events: view.events,
        subscriptions: view.subscriptions,
        timers: view.timers as u64,
        storage_used: view.storage_used,
        recent: view
            .recent
            .into_iter()
            .map(|line| PluginLogLine { at_ms: line.at_ms, level: line.level, text: line.text })
            .collect(),
        installed_at: view.installed_at,
        updated_at: view.updated_at,
    }
}

impl From<BridgeError> for BackendError {
    fn from(e: BridgeError) -> Self {
        match &e {
            BridgeError::Taken(_) => BackendError::Conflict(e.to_string()),
            BridgeError::UnknownDevice(_) => BackendError::NotFound(e.to_string()),
            BridgeError::TooManyDevices | BridgeError::BadKey | BridgeError::Invalid(_) | BridgeError::Profile(_) => {
                BackendError::Invalid(e.to_string())
            }
            BridgeError::Ble(
                BleError::InvalidDevice(_)
                | BleError::DuplicateDevice(_)
                | BleError::DuplicateAddress { .. }
                | BleError::UnknownCommand { .. }
                | BleError::Payload { .. },
            ) => BackendError::Invalid(e.to_string()),
            BridgeError::NoBroker | BridgeError::Ble(_) => BackendError::Unavailable(e.to_string()),
            _ => BackendError::Internal(e.to_string()),
        }
    }
}

fn device_view(device: Device) -> DeviceView {
    let (kind, address, profile) = match &device.record.kind {
        DeviceKind::Mqtt => ("mqtt", None, None),
        DeviceKind::Ble { address, profile } => ("ble", Some(address.clone()), Some(profile.clone())),
        DeviceKind::Zigbee2mqtt { friendly_name } => ("zigbee2mqtt", Some(friendly_name.clone()), None),
    };
    DeviceView {
        id: device.record.id,
        name: device.record.name,
        kind: kind.to_owned(),
        address,
        profile,
        public_key: device.record.public_key,
        online: device.online,
        last_seen: device.last_seen,
        state: device.state,
        added_at: device.record.added_at,
        recent_events: device
            .events
            .into_iter()
            .map(|e| DeviceEventView { at: e.at, name: e.name, payload: e.payload })
            .collect(),
    }
}

impl Hub {
    fn bridge_or_unavailable(&self) -> Result<&crate::bridge::Bridge, BackendError> {
        self.bridge().ok_or_else(|| BackendError::Unavailable("the appliance bridge is not running".to_owned()))
    }
}

impl From<MarketError> for BackendError {
    fn from(e: MarketError) -> Self {
        match e {
            MarketError::NoSeller(_) => BackendError::NotFound(e.to_string()),
            MarketError::Pending { .. } | MarketError::Denied(_) | MarketError::Refused(_) => {
                BackendError::Conflict(e.to_string())
            }
            MarketError::NoNetwork | MarketError::Net(_) | MarketError::BadAnswer(_) => {
                BackendError::Unavailable(e.to_string())
            }
            MarketError::Payment(p) => p.into(),
        }
    }
}

fn offer_view(offer: &machinomy_core::wire::ServiceOffer) -> OfferView {
    OfferView {
        service: offer.name.clone(),
        seller: offer.seller,
        price: offer.price,
        currency: offer.currency_code.clone(),
        description: offer.description.clone(),
        expires_at: offer.expires_at,
    }
}
