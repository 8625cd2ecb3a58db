//! The Machinomy hub: adapters around `machinomy-core` (store, ledgers, payments) and the
//! daemon and CLI that run them.

pub mod api;
pub mod bridge;
pub mod client;
pub mod config;
pub mod daemon;
pub mod datadir;
pub mod hub;
pub mod ledger;
pub mod live;
pub mod market;
pub mod net;
pub mod payments;
pub mod plugin;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use hub::{Hub, HubError, now};
