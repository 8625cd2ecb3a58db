//! Bluetooth LE appliances as registry devices.
//!
//! A [`DeviceProfile`] (TOML) says which GATT characteristics of a kind of appliance are state
//! fields, events and commands, and how their bytes map to JSON ([`decode`], [`encode`]: pure,
//! property-tested). A [`BleBackend`] talks to the radio: [`BtleplugBackend`] (feature `ble`,
//! BlueZ over the system D-Bus) or [`SimulatedBle`] (in memory, for tests and dev mode). Only
//! `btleplug.rs` knows btleplug.
//!
//! # Shape
//!
//! [`BleBridge::run`] is the one task that owns the BLE devices: it connects each (retrying with
//! exponential backoff, [`BleConfig::retry_min`] to [`BleConfig::retry_max`]), subscribes its
//! notify fields, reads the others on connect and every [`BleConfig::poll`], and turns
//! everything into [`BleReport`]s on the caller's bounded channel: the device's merged state,
//! its events, its availability, and errors for bytes its profile cannot decode (which change
//! nothing). Everything else holds a cloneable [`BleHandle`]: commands, adding and removing
//! devices, each over a bounded queue with a oneshot answer.
//!
//! The loop never waits on the radio: connects, polls and writes run as tasks the bridge owns
//! (each backend call under a timeout), and their results come back to the loop. Shutdown is
//! injected as a future; when it fires the bridge aborts its tasks, disconnects its devices
//! (for at most [`STOP_GRACE`]) and returns. Bounded: backend events ([`EVENT_QUEUE`]),
//! requests ([`REQUEST_QUEUE`]), writes in flight ([`MAX_WRITES_IN_FLIGHT`], beyond which a
//! command is refused as busy), and the caller's report channel (a slow reader slows the bridge,
//! so no state is dropped).

#[cfg(feature = "ble")]
mod btleplug;
mod profile;
mod simulated;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

#[cfg(feature = "ble")]
pub use self::btleplug::{BtleplugBackend, FIND_WINDOW};
pub use profile::{
    Command, DeviceProfile, Field, Format, MAX_ATTRIBUTE_LEN, MAX_NAME_LEN, ProfileError, decode, encode,
};
pub use simulated::{MAX_RECORDED_WRITES, SimulatedBle, SimulatedWrite};
pub use uuid::Uuid;

/// Backend events (notifications, disconnects) waiting for the bridge.
pub const EVENT_QUEUE: usize = 256;
/// Requests waiting for the bridge.
pub const REQUEST_QUEUE: usize = 64;
/// A good size for the caller's report channel.
pub const REPORT_QUEUE: usize = 256;
/// Characteristic writes running at once.
pub const MAX_WRITES_IN_FLIGHT: usize = 64;
/// How long a stopping bridge waits for its devices to disconnect.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("no Bluetooth adapter: {0}")]
    NoAdapter(String),
    #[error("Bluetooth adapter: {op}: {reason}")]
    Adapter { op: &'static str, reason: String },
    #[error("no BLE peripheral {address} in range")]
    NotFound { address: String },
    #[error("BLE peripheral {address} is not connected")]
    NotConnected { address: String },
    #[error("BLE peripheral {address} has no characteristic {characteristic}")]
    NoCharacteristic { address: String, characteristic: Uuid },
    #[error("{op} {address}: {reason}")]
    Failed { op: &'static str, address: String, reason: String },
    #[error("{op} {address}: timed out")]
    TimedOut { op: &'static str, address: String },
    #[error("invalid BLE device: {0}")]
    InvalidDevice(String),
    #[error("unknown BLE device {0:?}")]
    UnknownDevice(String),
    #[error("BLE device {0:?} is already bridged")]
    DuplicateDevice(String),
    #[error("BLE address {address} already belongs to device {device:?}")]
    DuplicateAddress { address: String, device: String },
    #[error("BLE device {device:?} has no command {name:?}")]
    UnknownCommand { device: String, name: String },
    #[error("command {name:?} for BLE device {device:?}: {source}")]
    Payload { device: String, name: String, source: Box<ProfileError> },
    #[error("BLE device {0:?} is offline")]
    Offline(String),
    #[error("too many BLE writes in flight")]
    Busy,
    #[error("the BLE bridge has stopped")]
    Stopped,
    #[error("the BLE backend's events already belong to another bridge")]
    EventsTaken,
    #[error("the BLE backend closed its event stream")]
    BackendClosed,
}

/// What every backend call returns: boxed so that [`BleBackend`] is object-safe and the hub
/// can choose a backend from its config at run time.
pub type BleFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BleError>> + Send + 'a>>;

/// A peripheral seen by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeripheralInfo {
    /// `AA:BB:CC:DD:EE:FF`, upper case.
    pub address: String,
    pub name: Option<String>,
    /// Advertised services.
    pub services: Vec<Uuid>,
}

/// Something a backend tells the bridge without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BleEvent {
    Notification {
        address: String,
        characteristic: Uuid,
        value: Vec<u8>,
    },
    /// The link to a connected peripheral was lost.
    Disconnected {
        address: String,
    },
}

/// The radio. Addresses are `AA:BB:CC:DD:EE:FF` (compared case-insensitively); a
/// characteristic is named by its UUID alone (the first one found with it, in any service).
/// Calls may take long or never finish: the bridge puts each under a timeout.
pub trait BleBackend: Send + Sync + fmt::Debug + 'static {
    /// Peripherals seen advertising within `timeout`.
    fn scan(&self, timeout: Duration) -> BleFuture<'_, Vec<PeripheralInfo>>;
    /// Connects and discovers services; Ok if already connected.
    fn connect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()>;
    fn read<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, Vec<u8>>;
    fn write<'a>(&'a self, address: &'a str, characteristic: Uuid, value: &'a [u8]) -> BleFuture<'a, ()>;
    /// Notifications from `characteristic` then arrive as [`BleEvent::Notification`].
    fn subscribe<'a>(&'a self, address: &'a str, characteristic: Uuid) -> BleFuture<'a, ()>;
    fn disconnect<'a>(&'a self, address: &'a str) -> BleFuture<'a, ()>;
    /// The one receiver of this backend's events (bounded, [`EVENT_QUEUE`]); `None` once taken,
    /// so two bridges cannot silently split one radio's notifications between them.
    fn events(&self) -> Option<mpsc::Receiver<BleEvent>>;
}

/// A registry device reached over BLE.
#[derive(Clone, Debug, PartialEq)]
pub struct BleDevice {
    /// The registry's device id: reports name the device by it.
    pub id: String,
    pub address: String,
    pub profile: DeviceProfile,
}

/// What the bridge tells its owner, in order per device.
#[derive(Clone, Debug, PartialEq)]
pub enum BleReport {
    /// The device's whole known state (every state field decoded so far), sent on connect and
    /// whenever a field changes.
    State { device: String, fields: Map<String, Value> },
    /// A notification from an `event = true` field.
    Event { device: String, name: String, value: Value },
    /// Sent when the device comes online or goes offline (first failed connect included).
    Availability { device: String, online: bool },
    /// The device sent bytes its profile cannot decode, or a read or subscribe failed; the state
    /// is unchanged.
    Error { device: String, error: String },
}

/// A request to the bridge; [`BleHandle`] builds these.
#[derive(Debug)]
pub enum BleRequest {
    /// Encode `payload` with the profile's command `name` and write it.
    Command {
        device: String,
        name: String,
        payload: Value,
        reply: oneshot::Sender<Result<(), BleError>>,
    },
    AddDevice {
        device: BleDevice,
        reply: oneshot::Sender<Result<(), BleError>>,
    },
    /// Stop bridging the device and disconnect it. No report follows for it.
    RemoveDevice {
        device: String,
        reply: oneshot::Sender<Result<(), BleError>>,
    },
}

/// Talks to a running [`BleBridge`].
#[derive(Clone, Debug)]
pub struct BleHandle {
    requests: mpsc::Sender<BleRequest>,
}

impl BleHandle {
    /// A handle and the request queue to give to [`BleBridge::run`].
    pub fn channel() -> (BleHandle, mpsc::Receiver<BleRequest>) {
        let (requests, receiver) = mpsc::channel(REQUEST_QUEUE);
        (BleHandle { requests }, receiver)
    }

    /// Answers once the characteristic is written (with response where the peripheral allows).
    pub async fn command(&self, device: &str, name: &str, payload: Value) -> Result<(), BleError> {
        self.ask(|reply| BleRequest::Command { device: device.to_owned(), name: name.to_owned(), payload, reply }).await
    }

    /// Starts bridging a device; it connects in the background.
    pub async fn add_device(&self, device: BleDevice) -> Result<(), BleError> {
        self.ask(|reply| BleRequest::AddDevice { device, reply }).await
    }

    pub async fn remove_device(&self, device: &str) -> Result<(), BleError> {
        self.ask(|reply| BleRequest::RemoveDevice { device: device.to_owned(), reply }).await
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<(), BleError>>) -> BleRequest,
    ) -> Result<(), BleError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| BleError::Stopped)?;
        answer.await.map_err(|_| BleError::Stopped)?
    }
}

/// Timing of the bridge's work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BleConfig {
    /// How often non-notify fields are read again; `None` reads them only on connect.
    pub poll: Option<Duration>,
    /// Limit for one connect (it may include a scan for the peripheral).
    pub connect_timeout: Duration,
    /// Limit for one read, write, subscribe or disconnect.
    pub op_timeout: Duration,
    /// First wait before reconnecting; doubled after each failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            poll: Some(Duration::from_secs(60)),
            connect_timeout: Duration::from_secs(30),
            op_timeout: Duration::from_secs(10),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// Addresses are compared in one case: btleplug prints upper case, people type either.
fn normalize_address(address: &str) -> String {
    address.trim().to_ascii_uppercase()
}

/// Runs a backend call under a time limit.
async fn within<T>(limit: Duration, op: &'static str, address: &str, call: BleFuture<'_, T>) -> Result<T, BleError> {
    tokio::time::timeout(limit, call).await.map_err(|_| BleError::TimedOut { op, address: address.to_owned() })?
}

/// Where a device's link is.
#[derive(Debug)]
enum Link {
    Waiting {
        retry_at: Instant,
    },
    /// `dropped`: a disconnect was reported while connecting, so the attempt counts as failed.
    Connecting {
        dropped: bool,
    },
    Online {
        next_poll: Option<Instant>,
        polling: bool,
    },
}

#[derive(Debug)]
struct Slot {
    device: BleDevice,
    state: Map<String, Value>,
    link: Link,
    /// The current connect attempt; results of older ones are stale.
    attempt: u64,
    backoff: Duration,
    /// The availability last reported.
    announced: Option<bool>,
}

/// A field value read from the peripheral, or why not.
type Reads = Vec<(String, Result<Vec<u8>, BleError>)>;

/// What a task the bridge spawned came back with.
#[derive(Debug)]
enum Done {
    Connected { device: String, address: String, attempt: u64, reads: Reads, subscribe_errors: Vec<BleError> },
    ConnectFailed { device: String, attempt: u64, error: BleError },
    Polled { device: String, attempt: u64, reads: Reads },
    Written,
    Disconnected,
}

/// The task that owns the BLE devices (see the module docs).
#[derive(Debug)]
pub struct BleBridge {
    backend: Arc<dyn BleBackend>,
    config: BleConfig,
    events: mpsc::Receiver<BleEvent>,
    devices: BTreeMap<String, Slot>,
    tasks: JoinSet<Done>,
    /// What each running task's outcome is taken to be if it dies (a backend that panicked), so
    /// its device is not left connecting or polling for good.
    if_lost: HashMap<tokio::task::Id, Done>,
    attempts: u64,
    writes_in_flight: usize,
}

impl BleBridge {
    /// Takes the backend's events; fails if another bridge has them or a device is invalid.
    pub fn new(backend: Arc<dyn BleBackend>, devices: Vec<BleDevice>, config: BleConfig) -> Result<Self, BleError> {
        let events = backend.events().ok_or(BleError::EventsTaken)?;
        let mut bridge = BleBridge {
            backend,
            config,
            events,
            devices: BTreeMap::new(),
            tasks: JoinSet::new(),
            if_lost: HashMap::new(),
            attempts: 0,
            writes_in_flight: 0,
        };
        for device in devices {
            bridge.add(device)?;
        }
        Ok(bridge)
    }

    /// Runs until `shutdown` resolves (Ok), the report receiver is dropped (Ok), or the backend
    /// closes its events (Err). Spawn it; it is the one owner of the BLE devices.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<BleRequest>,
        reports: mpsc::Sender<BleReport>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BleError> {
        // Dropping `work` wherever it waits (even on a full report channel) is what makes the stop
        // prompt; every request it held is answered `Stopped` when its oneshot drops.
        let outcome = tokio::select! {
            biased;
            () = shutdown => Ok(()),
            outcome = self.work(&mut requests, &reports) => outcome,
        };
        self.stop().await;
        outcome
    }

    async fn work(
        &mut self,
        requests: &mut mpsc::Receiver<BleRequest>,
        reports: &mpsc::Sender<BleReport>,
    ) -> Result<(), BleError> {
        let mut requests_open = true;
        loop {
            let wake = self.next_wake();
            let out = tokio::select! {
                request = requests.recv(), if requests_open => match request {
                    Some(request) => self.on_request(request),
                    // No handles left: nothing more to command, but devices still report.
                    None => {
                        requests_open = false;
                        Vec::new()
                    }
                },
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return Err(BleError::BackendClosed),
                },
                Some(done) = self.tasks.join_next_with_id() => {
                    let done = match done {
                        Ok((id, done)) => {
                            self.if_lost.remove(&id);
                            Some(done)
                        }
                        Err(e) => {
                            warn!(error = %e, "a BLE task failed");
                            self.if_lost.remove(&e.id())
                        }
                    };
                    done.map(|done| self.on_done(done)).unwrap_or_default()
                },
                () = sleep_until(wake) => self.on_timers(),
            };
            for report in out {
                if reports.send(report).await.is_err() {
                    debug!("BLE report receiver dropped: stopping the bridge");
                    return Ok(());
                }
            }
        }
    }

    async fn stop(&mut self) {
        // Aborts connects, polls and writes; a command waiting on a write is answered `Stopped`.
        self.tasks.shutdown().await;
        self.if_lost.clear();
        let mut disconnects = JoinSet::new();
        for slot in self.devices.values() {
            if matches!(slot.link, Link::Online { .. } | Link::Connecting { .. }) {
                let backend = self.backend.clone();
                let address = slot.device.address.clone();
                disconnects.spawn(async move { backend.disconnect(&address).await });
            }
        }
        let _ = tokio::time::timeout(STOP_GRACE, async { while disconnects.join_next().await.is_some() {} }).await;
    }

    fn add(&mut self, device: BleDevice) -> Result<(), BleError> {
        if device.id.is_empty() || device.id.len() > 128 {
            return Err(BleError::InvalidDevice("a device id must be 1 to 128 bytes".into()));
        }
        let address = normalize_address(&device.address);
        if address.is_empty() {
            return Err(BleError::InvalidDevice(format!("device {:?} has no address", device.id)));
        }
        if self.devices.contains_key(&device.id) {
            return Err(BleError::DuplicateDevice(device.id));
        }
        if let Some(other) = self.devices.values().find(|slot| slot.device.address == address) {
            return Err(BleError::DuplicateAddress { address, device: other.device.id.clone() });
        }
        let slot = Slot {
            device: BleDevice { address, ..device },
            state: Map::new(),
            link: Link::Waiting { retry_at: Instant::now() },
            attempt: 0,
            backoff: self.config.retry_min,
            announced: None,
        };
        self.devices.insert(slot.device.id.clone(), slot);
        Ok(())
    }

    /// The earliest retry or poll due.
    fn next_wake(&self) -> Option<Instant> {
        self.devices
            .values()
            .filter_map(|slot| match slot.link {
                Link::Waiting { retry_at } => Some(retry_at),
                Link::Online { next_poll, polling: false } => next_poll,
                Link::Online { polling: true, .. } | Link::Connecting { .. } => None,
            })
            .min()
    }

    fn on_timers(&mut self) -> Vec<BleReport> {
        let now = Instant::now();
        let mut due_connects = Vec::new();
        let mut due_polls = Vec::new();
        for (id, slot) in &self.devices {
            match slot.link {
                Link::Waiting { retry_at } if retry_at <= now => due_connects.push(id.clone()),
                Link::Online { next_poll: Some(at), polling: false } if at <= now => due_polls.push(id.clone()),
                _ => {}
            }
        }
        for id in due_connects {
            self.start_connect(&id);
        }
        for id in due_polls {
            self.start_poll(&id);
        }
        Vec::new()
    }

    fn start_connect(&mut self, id: &str) {
        let Some(slot) = self.devices.get_mut(id) else { return };
        self.attempts += 1;
        slot.attempt = self.attempts;
        slot.link = Link::Connecting { dropped: false };
        let profile = &slot.device.profile;
        let subscribe: Vec<Uuid> = profile.fields().iter().filter(|f| f.notify).map(|f| f.characteristic).collect();
        let reads = polled_fields(profile);
        let (backend, config, device, address, attempt) =
            (self.backend.clone(), self.config.clone(), id.to_owned(), slot.device.address.clone(), slot.attempt);
        let lost = Done::ConnectFailed {
            device: device.clone(),
            attempt,
            error: BleError::Failed { op: "connect", address: address.clone(), reason: "the task failed".into() },
        };
        self.spawn(lost, async move {
            if let Err(error) = within(config.connect_timeout, "connect", &address, backend.connect(&address)).await {
                // A timed-out connect may still complete inside the stack; undo it so the next
                // attempt starts clean.
                let _ = within(config.op_timeout, "disconnect", &address, backend.disconnect(&address)).await;
                return Done::ConnectFailed { device, attempt, error };
            }
            let mut subscribe_errors = Vec::new();
            for characteristic in subscribe {
                let call = backend.subscribe(&address, characteristic);
                if let Err(error) = within(config.op_timeout, "subscribe", &address, call).await {
                    subscribe_errors.push(error);
                }
            }
            let reads = read_all(&*backend, &address, reads, config.op_timeout).await;
            Done::Connected { device, address, attempt, reads, subscribe_errors }
        });
    }

    fn start_poll(&mut self, id: &str) {
        let Some(slot) = self.devices.get_mut(id) else { return };
        let Link::Online { polling, .. } = &mut slot.link else { return };
        *polling = true;
        let reads = polled_fields(&slot.device.profile);
        let (backend, limit, device, address, attempt) =
            (self.backend.clone(), self.config.op_timeout, id.to_owned(), slot.device.address.clone(), slot.attempt);
        self.spawn(Done::Polled { device: device.clone(), attempt, reads: Vec::new() }, async move {
            let reads = read_all(&*backend, &address, reads, limit).await;
            Done::Polled { device, attempt, reads }
        });
    }

    fn on_done(&mut self, done: Done) -> Vec<BleReport> {
        let mut out = Vec::new();
        match done {
            Done::Written => self.writes_in_flight = self.writes_in_flight.saturating_sub(1),
            Done::Disconnected => {}
            Done::ConnectFailed { device, attempt, error } => {
                let Some(slot) = self.devices.get_mut(&device).filter(|s| s.attempt == attempt) else { return out };
                if slot.announced != Some(false) {
                    warn!(device, %error, "BLE device unreachable; retrying");
                } else {
                    debug!(device, %error, "BLE connect failed again");
                }
                self.retry_later(&device, &mut out);
            }
            Done::Connected { device, address, attempt, reads, subscribe_errors } => {
                let Some(slot) = self.devices.get_mut(&device) else {
                    // Removed while connecting: nobody wants this link.
                    self.spawn_disconnect(address);
                    return out;
                };
                if slot.attempt != attempt {
                    return out;
                }
                if matches!(slot.link, Link::Connecting { dropped: true }) {
                    debug!(device, "BLE link dropped while connecting; retrying");
                    self.retry_later(&device, &mut out);
                    return out;
                }
                slot.backoff = self.config.retry_min;
                slot.link = Link::Online { next_poll: self.config.poll.map(|p| Instant::now() + p), polling: false };
                announce(slot, true, &mut out);
                for error in subscribe_errors {
                    out.push(BleReport::Error { device: device.clone(), error: error.to_string() });
                }
                let (_, lost) = apply_reads(slot, reads, &mut out);
                // A connect always tells the whole state, so a reader that missed the offline
                // period catches up.
                if !slot.state.is_empty() {
                    out.push(BleReport::State { device: device.clone(), fields: slot.state.clone() });
                }
                if lost {
                    self.retry_later(&device, &mut out);
                }
            }
            Done::Polled { device, attempt, reads } => {
                let Some(slot) = self.devices.get_mut(&device).filter(|s| s.attempt == attempt) else { return out };
                let Link::Online { next_poll, polling } = &mut slot.link else { return out };
                *polling = false;
                *next_poll = self.config.poll.map(|p| Instant::now() + p);
                let (changed, lost) = apply_reads(slot, reads, &mut out);
                if changed {
                    out.push(BleReport::State { device: device.clone(), fields: slot.state.clone() });
                }
                if lost {
                    self.retry_later(&device, &mut out);
                }
            }
        }
        out
    }

    fn spawn_disconnect(&mut self, address: String) {
        let backend = self.backend.clone();
        let limit = self.config.op_timeout;
        self.spawn(Done::Disconnected, async move {
            let _ = within(limit, "disconnect", &address, backend.disconnect(&address)).await;
            Done::Disconnected
        });
    }

    fn spawn(&mut self, if_lost: Done, task: impl Future<Output = Done> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.if_lost.insert(id, if_lost);
    }

    /// Marks the device offline and schedules its next connect after the current backoff.
    fn retry_later(&mut self, device: &str, out: &mut Vec<BleReport>) {
        let Some(slot) = self.devices.get_mut(device) else { return };
        slot.link = Link::Waiting { retry_at: Instant::now() + slot.backoff };
        slot.backoff = (slot.backoff * 2).min(self.config.retry_max);
        announce(slot, false, out);
    }

    fn on_event(&mut self, event: BleEvent) -> Vec<BleReport> {
        let mut out = Vec::new();
        match event {
            BleEvent::Disconnected { address } => {
                let address = normalize_address(&address);
                let Some(slot) = self.devices.values_mut().find(|s| s.device.address == address) else { return out };
                match &mut slot.link {
                    Link::Online { .. } => {
                        // A link that was up retries at once-ish: the device was just there.
                        slot.backoff = self.config.retry_min;
                        let device = slot.device.id.clone();
                        self.retry_later(&device, &mut out);
                    }
                    Link::Connecting { dropped } => *dropped = true,
                    Link::Waiting { .. } => {}
                }
            }
            BleEvent::Notification { address, characteristic, value } => {
                let address = normalize_address(&address);
                let Some(slot) = self.devices.values_mut().find(|s| s.device.address == address) else { return out };
                let Some(field) = slot.device.profile.field_for(characteristic) else {
                    debug!(device = slot.device.id, %characteristic, "notification from a characteristic the profile does not map");
                    return out;
                };
                let device = slot.device.id.clone();
                match decode(field.format, field.scale, &value) {
                    Err(e) => out.push(BleReport::Error { device, error: format!("field {}: {e}", field.name) }),
                    Ok(value) if field.event => out.push(BleReport::Event { device, name: field.name.clone(), value }),
                    Ok(value) => {
                        if slot.state.get(&field.name) != Some(&value) {
                            slot.state.insert(field.name.clone(), value);
                            out.push(BleReport::State { device, fields: slot.state.clone() });
                        }
                    }
                }
            }
        }
        out
    }

    fn on_request(&mut self, request: BleRequest) -> Vec<BleReport> {
        match request {
            BleRequest::Command { device, name, payload, reply } => match self.prepare_write(device, name, &payload) {
                Err(error) => {
                    debug!(%error, "BLE command refused");
                    let _ = reply.send(Err(error));
                }
                Ok((address, characteristic, bytes)) => {
                    self.writes_in_flight += 1;
                    let (backend, limit) = (self.backend.clone(), self.config.op_timeout);
                    self.spawn(Done::Written, async move {
                        let call = backend.write(&address, characteristic, &bytes);
                        let _ = reply.send(within(limit, "write", &address, call).await);
                        Done::Written
                    });
                }
            },
            BleRequest::AddDevice { device, reply } => {
                let _ = reply.send(self.add(device));
            }
            BleRequest::RemoveDevice { device, reply } => {
                let result = match self.devices.remove(&device) {
                    None => Err(BleError::UnknownDevice(device)),
                    // A connecting device is disconnected when its connect comes back.
                    Some(slot) => {
                        if matches!(slot.link, Link::Online { .. }) {
                            self.spawn_disconnect(slot.device.address);
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
        }
        Vec::new()
    }

    /// Encodes a command for writing: the address, characteristic and bytes, or why not.
    fn prepare_write(
        &self,
        device: String,
        name: String,
        payload: &Value,
    ) -> Result<(String, Uuid, Vec<u8>), BleError> {
        let Some(slot) = self.devices.get(&device) else { return Err(BleError::UnknownDevice(device)) };
        let Some(command) = slot.device.profile.command(&name) else {
            return Err(BleError::UnknownCommand { device, name });
        };
        let bytes = encode(command.format, command.scale, payload).map_err(|source| BleError::Payload {
            device: device.clone(),
            name,
            source: Box::new(source),
        })?;
        if !matches!(slot.link, Link::Online { .. }) {
            return Err(BleError::Offline(device));
        }
        if self.writes_in_flight >= MAX_WRITES_IN_FLIGHT {
            return Err(BleError::Busy);
        }
        Ok((slot.device.address.clone(), command.characteristic, bytes))
    }
}

/// The fields read on connect and polled: those that do not notify.
fn polled_fields(profile: &DeviceProfile) -> Vec<(String, Uuid)> {
    profile.fields().iter().filter(|f| !f.notify).map(|f| (f.name.clone(), f.characteristic)).collect()
}

async fn read_all(backend: &dyn BleBackend, address: &str, fields: Vec<(String, Uuid)>, limit: Duration) -> Reads {
    let mut reads = Vec::with_capacity(fields.len());
    for (name, characteristic) in fields {
        let value = within(limit, "read", address, backend.read(address, characteristic)).await;
        let lost = matches!(value, Err(BleError::NotConnected { .. }));
        reads.push((name, value));
        if lost {
            break;
        }
    }
    reads
}

/// Decodes read values into the state, reporting what failed. Returns whether the state
/// changed and whether the link turned out to be gone.
fn apply_reads(slot: &mut Slot, reads: Reads, out: &mut Vec<BleReport>) -> (bool, bool) {
    let device = &slot.device.id;
    let (mut changed, mut lost) = (false, false);
    for (name, read) in reads {
        let Some(field) = slot.device.profile.fields().iter().find(|f| f.name == name) else { continue };
        let bytes = match read {
            Ok(bytes) => bytes,
            // The availability report says it; an error per field would only repeat it.
            Err(BleError::NotConnected { .. }) => {
                lost = true;
                continue;
            }
            Err(error) => {
                out.push(BleReport::Error { device: device.clone(), error: format!("read {name}: {error}") });
                continue;
            }
        };
        match decode(field.format, field.scale, &bytes) {
            Ok(value) => {
                if slot.state.get(&name) != Some(&value) {
                    slot.state.insert(name, value);
                    changed = true;
                }
            }
            Err(e) => out.push(BleReport::Error { device: device.clone(), error: format!("field {name}: {e}") }),
        }
    }
    (changed, lost)
}

fn announce(slot: &mut Slot, online: bool, out: &mut Vec<BleReport>) {
    if slot.announced != Some(online) {
        slot.announced = Some(online);
        out.push(BleReport::Availability { device: slot.device.id.clone(), online });
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
