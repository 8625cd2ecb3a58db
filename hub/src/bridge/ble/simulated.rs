//! An in-memory radio: peripherals with characteristic values, recorded writes, notifications
//! and link drops pushed by the caller. The bridge's tests drive the real bridge through it, and
//! the hub's dev mode (`[ble] backend = "simulated"`) runs on it without Bluetooth hardware.

use std::collections::{BTreeMap, BTreeSet};
use std::future::ready;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{BleBackend, BleError, BleEvent, BleFuture, EVENT_QUEUE, PeripheralInfo, normalize_address};

/// Writes remembered for [`SimulatedBle::writes`]; older ones are forgotten.
pub const MAX_RECORDED_WRITES: usize = 1024;

/// A characteristic write the simulated radio received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedWrite {
    pub address: String,
    pub characteristic: Uuid,
    pub value: Vec<u8>,
}

#[derive(Debug, Default)]
struct Peripheral {
    name: Option<String>,
    services: Vec<Uuid>,
    /// What a read returns; writes replace it, as on a real GATT server.
    values: BTreeMap<Uuid, Vec<u8>>,
    connected: bool,
    subscribed: BTreeSet<Uuid>,
    failing_connects: u32,
    connects: u32,
}

#[derive(Debug, Default)]
struct Radio {
    peripherals: BTreeMap<String, Peripheral>,
    writes: Vec<SimulatedWrite>,
}

/// See the module docs. Explicit [`BleBackend::disconnect`]s send no event; only
/// [`SimulatedBle::drop_link`] does, as a peripheral walking away would.
#[derive(Debug)]
pub struct SimulatedBle {
    radio: Mutex<Radio>,
    events: mpsc::Sender<BleEvent>,
    receiver: Mutex<Option<mpsc::Receiver<BleEvent>>>,
}

impl Default for SimulatedBle {
    fn default() -> Self {
        SimulatedBle::new()
    }
}

impl SimulatedBle {
    pub fn new() -> Self {
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        SimulatedBle { radio: Mutex::new(Radio::default()), events, receiver: Mutex::new(Some(receiver)) }
    }

    /// The lock is only ever held for a few map operations, never across an await, so a
    /// poisoned one still holds consistent data.
    fn radio(&self) -> MutexGuard<'_, Radio> {
        self.radio.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) a peripheral in range.
    pub fn add_peripheral(&self, address: &str, name: Option<&str>, services: &[Uuid]) {
        let peripheral =
            Peripheral { name: name.map(str::to_owned), services: services.to_vec(), ..Peripheral::default() };
        self.radio().peripherals.insert(normalize_address(address), peripheral);
    }

    /// Sets what reading `characteristic` returns (adding the characteristic if new).
    pub fn set_value(&self, address: &str, characteristic: Uuid, value: &[u8]) {
        if let Some(p) = self.radio().peripherals.get_mut(&normalize_address(address)) {
            p.values.insert(characteristic, value.to_vec());
        }
    }

    /// The next `times` connects to `address` fail.
    pub fn fail_connects(&self, address: &str, times: u32) {
        if let Some(p) = self.radio().peripherals.get_mut(&normalize_address(address)) {
            p.failing_connects = times;
        }
    }

    pub fn is_connected(&self, address: &str) -> bool {
        self.radio().peripherals.get(&normalize_address(address)).is_some_and(|p| p.connected)
    }

    /// Connect attempts so far, failed ones included.
    pub fn connects(&self, address: &str) -> u32 {
        self.radio().peripherals.get(&normalize_address(address)).map_or(0, |p| p.connects)
    }

    /// Writes received so far, oldest first.
    pub fn writes(&self) -> Vec<SimulatedWrite> {
        self.radio().writes.clone()
    }

    /// The peripheral notifies a new value of a subscribed characteristic (which also becomes
    /// what reads return). Waits while the event queue is full.
    pub async fn notify(&self, address: &str, characteristic: Uuid, value: &[u8]) -> Result<(), BleError> {
        let address = normalize_address(address);
        {
            let mut radio = self.radio();
            let p = radio.peripherals.get_mut(&address).ok_or(BleError::NotFound { address: address.clone() })?;
            if !p.connected {
                return Err(BleError::NotConnected { address });
            }
            if !p.subscribed.contains(&characteristic) {
                return Err(BleError::Failed { op: "notify", address, reason: "not subscribed".into() });
            }
            p.values.insert(characteristic, value.to_vec());
        }
        self.send(BleEvent::Notification { address, characteristic, value: value.to_vec() }).await
    }

    /// The peripheral drops the link (walks out of range, reboots): it is disconnected and the
    /// bridge hears of it.
    pub async fn drop_link(&self, address: &str) -> Result<(), BleError> {
        let address = normalize_address(address);
        {
            let mut radio = self.radio();
            let p = radio.peripherals.get_mut(&address).ok_or(BleError::NotFound { address: address.clone() })?;
            if !p.connected {
                return Err(BleError::NotConnected { address });
            }
            p.connected = false;
            p.subscribed.clear();
        }
        self.send(BleEvent::Disconnected { address }).await
    }

    async fn send(&self, event: BleEvent) -> Result<(), BleError> {
        self.events.send(event).await.map_err(|_| BleError::Stopped)
    }

    /// Runs `f` on a connected peripheral.
    fn with_connected<T>(
        &self,
        address: &str,
        f: impl FnOnce(&mut Peripheral, &mut Vec<SimulatedWrite>) -> Result<T, BleError>,
    ) -> Result<T, BleError> {
        let address = normalize_address(address);
        let mut radio = self.radio();
        let Radio { peripherals, writes } = &mut *radio;
        let p = peripherals.get_mut(&address).ok_or_else(|| BleError::NotFound { address: address.clone() })?;
        if !p.connected {
            return Err(BleError::NotConnected { address });
        }
        f(p, writes)
    }
}

fn no_characteristic(address: &str, characteristic: Uuid) -> BleError {
    BleError::NoCharacteristic { address: normalize_address(address), characteristic }
}

impl BleBackend for SimulatedBle {
    fn scan(&self, _timeout: Duration) -> BleFuture<'_, Vec<PeripheralInfo>> {
        let found = self
            .radio()
            .peripherals
            .iter()
            .map(|(address, p)| PeripheralInfo {
                address: address.clone(),
                name: p.name.clone(),
                services: p.services.clone(),
            })
            .collect();
        Box::pin(ready(Ok(found)))
    }

    fn connect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        let address = normalize_address(address);
        let mut radio = self.radio();
        let result = match radio.peripherals.get_mut(&address) {
            None => Err(BleError::NotFound { address }),
            Some(p) => {
                p.connects += 1;
                if p.failing_connects > 0 {
                    p.failing_connects -= 1;
                    Err(BleError::Failed { op: "connect", address, reason: "simulated failure".into() })
                } else {
                    p.connected = true;
                    Ok(())
                }
            }
        };
        Box::pin(ready(result))
    }

    fn read<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, Vec<u8>> {
        let result = self.with_connected(address, |p, _| {
            p.values.get(&characteristic).cloned().ok_or_else(|| no_characteristic(address, characteristic))
        });
        Box::pin(ready(result))
    }

    fn write<'a>(&'a self, address: &'a str, characteristic: Uuid, value: &'a [u8]) -> BleFuture<'a, ()> {
        let result = self.with_connected(address, |p, writes| {
            if !p.values.contains_key(&characteristic) {
                return Err(no_characteristic(address, characteristic));
            }
            p.values.insert(characteristic, value.to_vec());
            if writes.len() >= MAX_RECORDED_WRITES {
                writes.remove(0);
            }
            writes.push(SimulatedWrite { address: normalize_address(address), characteristic, value: value.to_vec() });
            Ok(())
        });
        Box::pin(ready(result))
    }

    fn subscribe<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, ()> {
        let result = self.with_connected(address, |p, _| {
            if !p.values.contains_key(&characteristic) {
                return Err(no_characteristic(address, characteristic));
            }
            p.subscribed.insert(characteristic);
            Ok(())
        });
        Box::pin(ready(result))
    }

    fn disconnect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()> {
        if let Some(p) = self.radio().peripherals.get_mut(&normalize_address(address)) {
            p.connected = false;
            p.subscribed.clear();
        }
        Box::pin(ready(Ok(())))
    }

    fn events(&self) -> Option<mpsc::Receiver<BleEvent>> {
        self.receiver.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}
