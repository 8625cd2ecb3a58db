//! In-process hubs for tests and load tools (feature `testing`): real books and stores, and the
//! real peer network on loopback, without the daemon, the API or the config file.

use std::path::Path;
use std::sync::Arc;

use machinomy_core::{Amount, Budget, Currency, PublicKey, SigningKey};

use crate::config::{P2pSettings, SellSettings};
use crate::ledger::CreditLedger;
use crate::market::{DeviceStates, Market};
use crate::net::{self, NetConfig, NetError, NetTask};
use crate::payments::{PaymentError, PaymentSettings, Payments};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Peer-network settings for a hub on loopback only: a free TCP port, no mDNS.
pub fn loopback_p2p(bootstrap: Vec<String>, channel_capacity: Amount) -> P2pSettings {
    P2pSettings {
        enabled: true,
        listen: vec!["/ip4/127.0.0.1/tcp/0".to_owned()],
        bootstrap,
        mdns: false,
        relay_server: false,
        relays: Vec::new(),
        channel_capacity,
        offer_ttl_secs: 600,
    }
}

/// A hub in this process: its books in `dir`, its market on the peer network.
#[derive(Debug)]
pub struct InProcessHub {
    pub payments: Payments,
    pub market: Market,
    pub devices: Arc<DeviceStates>,
    task: Option<NetTask>,
}

impl InProcessHub {
    /// Starts a hub with identity `key` that sells `sell`, spends within `budgets` and grants
    /// each peer up to `max_credit` (USD, 9 decimals).
    pub async fn start(
        dir: &Path,
        key: SigningKey,
        sell: Vec<SellSettings>,
        budgets: &[Budget],
        max_credit: Amount,
        p2p: P2pSettings,
    ) -> Result<InProcessHub, TestingError> {
        let me = PublicKey::from(key.verifying_key());
        let store = Store::open(dir)?;
        let ledger = Arc::new(CreditLedger::new(me, Currency::usd(), max_credit, 60));
        let settings =
            PaymentSettings { approval_ttl_secs: 600, max_pending_approvals: 100, time_zone: jiff::tz::TimeZone::UTC };
        let payments = Payments::open(store, key.clone(), ledger, settings, budgets).await?;
        let devices = Arc::new(DeviceStates::default());
        let market =
            Market::new(payments.clone(), key.clone(), Currency::usd(), sell, p2p.clone(), 3600, devices.clone());
        let config = NetConfig { listen: p2p.listen, bootstrap: p2p.bootstrap, ..NetConfig::default() };
        let (handle, task) = net::start(&key, &config, Arc::new(market.clone())).await?;
        market.attach(handle);
        Ok(InProcessHub { payments, market, devices, task: Some(task) })
    }

    /// Where other hubs reach this one.
    pub async fn addrs(&self) -> Result<Vec<String>, TestingError> {
        match self.market.net() {
            Some(net) => Ok(net.listen_addrs().await?),
            None => Ok(Vec::new()),
        }
    }

    /// Stops the peer network and flushes the books.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.shutdown().await;
        }
        let _ = self.payments.store().close().await;
    }
}
