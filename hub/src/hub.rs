//! The Hub: opens the data dir and the store, builds the payments books and the ledger, and
//! answers the admin API. The daemon runs it; tests open it in-process.

use std::sync::Arc;

use machinomy_core::Timestamp;

use crate::config::Config;
use crate::datadir::{DataDir, DataDirError};
use crate::ledger::CreditLedger;
use crate::market::{DeviceStates, Market};
use crate::payments::{PaymentError, PaymentSettings, Payments};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payments(#[from] PaymentError),
}

/// The clock the hub passes into the core.
pub fn now() -> Timestamp {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Timestamp(secs)
}

/// A running hub's state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    name: String,
    started_at: Timestamp,
    data_dir: DataDir,
    payments: Payments,
    market: Market,
    devices: Arc<DeviceStates>,
    /// Set once the daemon has started the appliance bridge.
    bridge: std::sync::OnceLock<crate::bridge::Bridge>,
    /// Set once the daemon has started the plugin host.
    plugins: std::sync::OnceLock<crate::plugin::Plugins>,
    /// The home's time zone (`[hub] time_zone`).
    time_zone: jiff::tz::TimeZone,
    /// The live feed's sender, held weakly: the feed task owns it, and pages' streams end with it.
    live: std::sync::OnceLock<tokio::sync::broadcast::WeakSender<machinomy_web::model::LiveEvent>>,
}

impl Hub {
    /// Opens (or on first run creates) the hub's data dir and books. `created` tells whether
    /// this was the first run.
    pub async fn open(config: &Config) -> Result<(Hub, bool), HubError> {
        let (data_dir, created) = DataDir::open_or_create(&config.hub.data_dir)?;
        let store = Store::open(&data_dir.store_path())?;
        let ledger = Arc::new(CreditLedger::new(
            data_dir.public_key(),
            config.credit.currency.clone(),
            config.credit.max_credit_per_peer,
            config.credit.min_settlement_period_secs,
        ));
        let settings = PaymentSettings {
            approval_ttl_secs: config.hub.approval_ttl_secs,
            max_pending_approvals: config.hub.max_pending_approvals,
            time_zone: config.hub.time_zone.clone(),
        };
        let payments = Payments::open(store, data_dir.identity().clone(), ledger, settings, &config.budgets).await?;
        let devices = Arc::new(DeviceStates::default());
        let market = Market::new(
            payments.clone(),
            data_dir.identity().clone(),
            config.credit.currency.clone(),
            config.sell.clone(),
            config.p2p.clone(),
            config.credit.settlement_period_secs,
            devices.clone(),
        );
        let hub = Hub {
            inner: Arc::new(HubInner {
                name: config.hub.name.clone(),
                started_at: now(),
                data_dir,
                payments,
                market,
                devices,
                bridge: std::sync::OnceLock::new(),
                plugins: std::sync::OnceLock::new(),
                time_zone: config.hub.time_zone.clone(),
                live: std::sync::OnceLock::new(),
            }),
        };
        Ok((hub, created))
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn started_at(&self) -> Timestamp {
        self.inner.started_at
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.inner.data_dir
    }

    pub fn payments(&self) -> &Payments {
        &self.inner.payments
    }

    pub fn market(&self) -> &Market {
        &self.inner.market
    }

    /// The latest state of each device, for services that sell it.
    pub fn devices(&self) -> &Arc<DeviceStates> {
        &self.inner.devices
    }

    /// Hands the hub its appliance bridge (once; later calls are ignored).
    pub fn attach_bridge(&self, bridge: crate::bridge::Bridge) {
        let _ = self.inner.bridge.set(bridge);
    }

    pub fn bridge(&self) -> Option<&crate::bridge::Bridge> {
        self.inner.bridge.get()
    }

    /// Hands the hub its plugin host (once; later calls are ignored).
    pub fn attach_plugins(&self, plugins: crate::plugin::Plugins) {
        let _ = self.inner.plugins.set(plugins);
    }

    pub fn plugins(&self) -> Option<&crate::plugin::Plugins> {
        self.inner.plugins.get()
    }

    pub fn time_zone(&self) -> &jiff::tz::TimeZone {
        &self.inner.time_zone
    }

    /// Hands the hub the live feed's sender to subscribe pages with (once; later calls are
    /// ignored). The hub keeps it weakly.
    pub fn attach_live(&self, sender: &tokio::sync::broadcast::Sender<machinomy_web::model::LiveEvent>) {
        let _ = self.inner.live.set(sender.downgrade());
    }

    /// A new reader of the live feed; `None` before it starts and after it stops.
    pub fn subscribe_live(&self) -> Option<tokio::sync::broadcast::Receiver<machinomy_web::model::LiveEvent>> {
        self.inner.live.get()?.upgrade().map(|sender| sender.subscribe())
    }

    /// Tells open pages of a change the feed does not see (plugins managed through the API).
    pub fn tell_pages(&self, event: machinomy_web::model::LiveEvent) {
        if let Some(sender) = self.inner.live.get().and_then(tokio::sync::broadcast::WeakSender::upgrade) {
            let _ = sender.send(event);
        }
    }

    /// Flushes the books and stops the store; the last thing the daemon does. The store's lock
    /// is released when the last clone of the hub is dropped.
    pub async fn close(&self) -> Result<(), HubError> {
        self.inner.payments.store().close().await?;
        Ok(())
    }
}
