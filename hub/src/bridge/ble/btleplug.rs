//! The real radio: btleplug, which on Linux is BlueZ over the system D-Bus (build needs
//! libdbus-1-dev). The only code that knows btleplug.
//!
//! btleplug gives one notification stream per peripheral and one event stream per adapter;
//! tasks owned by the backend forward both into its one bounded [`BleEvent`] queue, and are
//! aborted when the peripheral disconnects or the backend is dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    ValueNotification, WriteType,
};
use ::btleplug::platform::{Adapter, Manager, Peripheral};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{BleBackend, BleError, BleEvent, BleFuture, EVENT_QUEUE, PeripheralInfo, normalize_address};

/// How long a connect scans for a peripheral BlueZ has not seen yet. Keep the bridge's
/// connect timeout above it, or a timed-out connect leaves discovery on until the next scan.
pub const FIND_WINDOW: Duration = Duration::from_secs(10);
/// How often a scan looks for the peripheral it waits for.
const FIND_STEP: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Link {
    peripheral: Peripheral,
    /// Forwards this peripheral's notifications.
    forwarder: JoinHandle<()>,
}

/// Connected peripherals by address.
type Links = Arc<Mutex<HashMap<String, Link>>>;

/// The lock is held only for map operations, never across an await.
fn lock(links: &Links) -> MutexGuard<'_, HashMap<String, Link>> {
    links.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first Bluetooth adapter, through btleplug.
#[derive(Debug)]
pub struct BtleplugBackend {
    adapter: Adapter,
    links: Links,
    events: mpsc::Sender<BleEvent>,
    receiver: Mutex<Option<mpsc::Receiver<BleEvent>>>,
    /// Turns the adapter's disconnect events into [`BleEvent::Disconnected`].
    watcher: JoinHandle<()>,
    /// One scan at a time: BlueZ has one discovery session per client, and one finder stopping
    /// it would cut another's short.
    scanning: tokio::sync::Mutex<()>,
}

impl BtleplugBackend {
    /// Opens the first adapter. Fails (never panics) without a system D-Bus, BlueZ or adapter.
    pub async fn new() -> Result<Self, BleError> {
        // Connecting to the system bus blocks briefly; this runs once at start-up.
        let manager = Manager::new()
            .await
            .map_err(|e| BleError::NoAdapter(format!("cannot reach BlueZ on the system D-Bus: {e}")))?;
        let adapter = manager
            .adapters()
            .await
            .map_err(|e| BleError::NoAdapter(format!("cannot list adapters: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| BleError::NoAdapter("BlueZ lists none".into()))?;
        let central_events = adapter.events().await.map_err(adapter_error("events"))?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let links = Links::default();
        let watcher = tokio::spawn(watch_disconnects(central_events, links.clone(), events.clone()));
        Ok(BtleplugBackend {
            adapter,
            links,
            events,
            receiver: Mutex::new(Some(receiver)),
            watcher,
            scanning: tokio::sync::Mutex::new(()),
        })
    }

    async fn known(&self, address: &str) -> Result<Option<Peripheral>, BleError> {
        let peripherals = self.adapter.peripherals().await.map_err(adapter_error("list peripherals"))?;
        Ok(peripherals.into_iter().find(|p| p.address().to_string().eq_ignore_ascii_case(address)))
    }

    /// BlueZ can connect only to peripherals it has seen advertising (or bonded ones): scan for
    /// a while if this one is new.
    async fn find(&self, address: &str) -> Result<Peripheral, BleError> {
        if let Some(found) = self.known(address).await? {
            return Ok(found);
        }
        let _scan = self.scanning.lock().await;
        self.adapter.start_scan(ScanFilter::default()).await.map_err(adapter_error("start scan"))?;
        let found = tokio::time::timeout(FIND_WINDOW, async {
            loop {
                match self.known(address).await {
                    Ok(None) => tokio::time::sleep(FIND_STEP).await,
                    other => return other,
                }
            }
        })
        .await;
        let _ = self.adapter.stop_scan().await;
        match found {
            Ok(Ok(Some(peripheral))) => Ok(peripheral),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) | Err(_) => Err(BleError::NotFound { address: address.to_owned() }),
        }
    }

    fn linked(&self, address: &str) -> Result<Peripheral, BleError> {
        let address = normalize_address(address);
        lock(&self.links).get(&address).map(|link| link.peripheral.clone()).ok_or(BleError::NotConnected { address })
    }

    fn characteristic(peripheral: &Peripheral, address: &str, uuid: Uuid) -> Result<Characteristic, BleError> {
        peripheral
            .characteristics()
            .into_iter()
            .find(|c| c.uuid == uuid)
            .ok_or_else(|| BleError::NoCharacteristic { address: normalize_address(address), characteristic: uuid })
    }
}

impl Drop for BtleplugBackend {
    fn drop(&mut self) {
        self.watcher.abort();
        for link in lock(&self.links).values() {
            link.forwarder.abort();
        }
    }
}

impl BleBackend for BtleplugBackend {
    fn scan(&self, timeout: Duration) -> BleFuture<'_, Vec<PeripheralInfo>> {
        Box::pin(async move {
            let _scan = self.scanning.lock().await;
            self.adapter.start_scan(ScanFilter::default()).await.map_err(adapter_error("start scan"))?;
            tokio::time::sleep(timeout).await;
            let peripherals = self.adapter.peripherals().await.map_err(adapter_error("list peripherals"));
            let _ = self.adapter.stop_scan().await;
            let mut found = Vec::new();
            for peripheral in peripherals? {
                // A peripheral that vanished between listing and asking is simply not reported.
                let Ok(properties) = peripheral.properties().await else { continue };
                let (name, services) = properties.map(|p| (p.local_name, p.services)).unwrap_or_default();
                found.push(PeripheralInfo { address: peripheral.address().to_string(), name, services });
            }
            Ok(found)
        })
    }

    fn connect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        Box::pin(async move {
            let address = normalize_address(address);
            let peripheral = self.find(&address).await?;
            let failed = |op| failed(op, &address);
            if !peripheral.is_connected().await.map_err(failed("connect"))? {
                peripheral.connect().await.map_err(failed("connect"))?;
            }
            peripheral.discover_services().await.map_err(failed("discover services"))?;
            let notifications = peripheral.notifications().await.map_err(failed("notifications"))?;
            let forwarder = tokio::spawn(forward_notifications(address.clone(), notifications, self.events.clone()));
            if let Some(old) = lock(&self.links).insert(address, Link { peripheral, forwarder }) {
                old.forwarder.abort();
            }
            Ok(())
        })
    }

    fn read<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let peripheral = self.linked(address)?;
            let characteristic = Self::characteristic(&peripheral, address, characteristic)?;
            peripheral.read(&characteristic).await.map_err(failed("read", address))
        })
    }

    fn write<'a>(&'a self, address: &'a str, characteristic: Uuid, value: &'a [u8]) -> BleFuture<'a, ()> {
        Box::pin(async move {
            let peripheral = self.linked(address)?;
            let characteristic = Self::characteristic(&peripheral, address, characteristic)?;
            // With response where the peripheral offers it, so the command's answer means written.
            let kind = if characteristic.properties.contains(CharPropFlags::WRITE) {
                WriteType::WithResponse
            } else {
                WriteType::WithoutResponse
            };
            peripheral.write(&characteristic, value, kind).await.map_err(failed("write", address))
        })
    }

    fn subscribe<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, ()> {
        Box::pin(async move {
            let peripheral = self.linked(address)?;
            let characteristic = Self::characteristic(&peripheral, address, characteristic)?;
            peripheral.subscribe(&characteristic).await.map_err(failed("subscribe", address))
        })
    }

    fn disconnect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        Box::pin(async move {
            let Some(link) = lock(&self.links).remove(&normalize_address(address)) else { return Ok(()) };
            link.forwarder.abort();
            link.peripheral.disconnect().await.map_err(failed("disconnect", address))
        })
    }

    fn events(&self) -> Option<mpsc::Receiver<BleEvent>> {
        self.receiver.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

fn adapter_error(op: &'static str) -> impl FnOnce(::btleplug::Error) -> BleError {
    move |e| BleError::Adapter { op, reason: e.to_string() }
}

fn failed<'a>(op: &'static str, address: &'a str) -> impl FnOnce(::btleplug::Error) -> BleError + 'a {
    move |e| match e {
        ::btleplug::Error::NotConnected => BleError::NotConnected { address: normalize_address(address) },
        ::btleplug::Error::DeviceNotFound => BleError::NotFound { address: normalize_address(address) },
        e => BleError::Failed { op, address: normalize_address(address), reason: e.to_string() },
    }
}

async fn forward_notifications(
    address: String,
    mut notifications: Pin<Box<dyn Stream<Item = ValueNotification> + Send>>,
    events: mpsc::Sender<BleEvent>,
) {
    while let Some(ValueNotification { uuid, value }) = notifications.next().await {
        let event = BleEvent::Notification { address: address.clone(), characteristic: uuid, value };
        if events.send(event).await.is_err() {
            break;
        }
    }
}

async fn watch_disconnects(
    mut central: Pin<Box<dyn Stream<Item = CentralEvent> + Send>>,
    links: Links,
    events: mpsc::Sender<BleEvent>,
) {
    while let Some(event) = central.next().await {
        let CentralEvent::DeviceDisconnected(id) = event else { continue };
        // Only links this backend made are reported; an explicit disconnect has removed its own.
        let address = {
            let mut links = lock(&links);
            let address = links.iter().find(|(_, link)| link.peripheral.id() == id).map(|(a, _)| a.clone());
            if let Some(link) = address.as_ref().and_then(|a| links.remove(a)) {
                link.forwarder.abort();
            }
            address
        };
        if let Some(address) = address
            && events.send(BleEvent::Disconnected { address }).await.is_err()
        {
            break;
        }
    }
}
