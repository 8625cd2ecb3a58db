//! The appliance bridges: the MQTT broker (embedded rumqttd, or a Mosquitto the home runs), the
//! hub's own MQTT client, and Bluetooth LE, all feeding one device registry.
//!
//! ```text
//!   devices ──MQTT──▶ broker ──▶ mqtt::Client task ──▶ Registry, events, spend worker ──▶ Market
//!   BLE peripherals ─▶ ble::BleBridge task ──reports──▶ same path, republished on MQTT
//!   API / plugins ──▶ Bridge (cloneable handle) ──▶ commands out over MQTT or BLE
//! ```
//! Only this module knows MQTT and BLE. The topic and message contract lives in
//! `machinomy_core::device`, without I/O.

pub mod ble;
mod ble_link;
mod broker;
mod homeassistant;
mod mqtt;
pub mod registry;
mod spend;
mod zigbee;

use std::sync::Arc;

use machinomy_core::{DeviceId, Timestamp};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::{Config, MqttSettings};
use crate::market::{DeviceStates, Market};
use crate::payments::Payments;
use crate::store::{DeviceKind, DeviceRecord, StoreError};
pub use mqtt::Listening;
pub use registry::{Device, Registry};

/// The username the hub itself uses on the broker.
pub const HUB_MQTT_USER: &str = "machinomy-hub";
/// Bridge events kept for slow listeners (the UI, plugins) before the oldest are dropped.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("device {0} is already paired")]
    Taken(DeviceId),
    #[error("no device {0} is paired")]
    UnknownDevice(DeviceId),
    #[error("the hub pairs at most {} devices", registry::MAX_DEVICES)]
    TooManyDevices,
    #[error("the public key is not a valid ed25519 key")]
    BadKey,
    #[error("{0}")]
    Invalid(String),
    #[error("the MQTT bridge is not running ([mqtt] mode = \"off\")")]
    NoBroker,
    #[error(
        "cannot start the embedded MQTT broker on {addr}: {message} (set [mqtt] listen, or mode = \"external\" to use a broker already running there)"
    )]
    Broker { addr: std::net::SocketAddr, message: String },
    #[error("MQTT password file {path}: {message}")]
    PasswordFile { path: std::path::PathBuf, message: String },
    #[error(transparent)]
    Ble(#[from] ble::BleError),
    #[error(transparent)]
    Profile(#[from] ble::ProfileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the MQTT client's queue is full; try again")]
    Busy,
    #[error("{0}")]
    Internal(String),
}

/// What the bridge heard from devices, for the UI and plugins.
#[derive(Clone, Debug)]
pub enum BridgeEvent {
    Availability { device: DeviceId, online: bool },
    State { device: DeviceId, state: Map<String, Value> },
    Event { device: DeviceId, name: String, payload: Value },
    Paired { device: DeviceId },
    Removed { device: DeviceId },
}

/// The bridge as the rest of the hub sees it; cheap to clone.
#[derive(Clone, Debug)]
pub struct Bridge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    mqtt: Option<mqtt::Publisher>,
    ble: Option<ble_link::BleLink>,
    events: broadcast::Sender<BridgeEvent>,
    /// Where devices connect, as shown to the owner at pairing.
    broker_addr: Option<String>,
    external_broker: bool,
    zigbee_base: Option<String>,
    /// Device states as sold services read them (`[[sell]] topic`).
    states: Arc<DeviceStates>,
    /// Whether the hub's MQTT client hears devices (always waiting without MQTT).
    listening: tokio::sync::watch::Receiver<Listening>,
}

/// The bridge's tasks; stopped by [`BridgeTasks::shutdown`].
#[derive(Debug)]
pub struct BridgeTasks {
    tasks: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    mqtt: Option<mqtt::Publisher>,
}

impl BridgeTasks {
    /// Says goodbye on the broker (the hub's status goes offline), then stops every task.
    pub async fn shutdown(self) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.disconnect().await;
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(3), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// A pairing's one-time secrets.
#[derive(Debug)]
pub struct Pairing {
    pub device: Device,
    /// Broker password (MQTT devices).
    pub password: Option<String>,
    /// The signing key the hub made, when the device brought none.
    pub secret_key: Option<String>,
}

impl Bridge {
    /// Starts the bridge for `config`: the embedded broker or a connection to the external one,
    /// the hub's MQTT client, the spend worker, and BLE when enabled.
    pub async fn start(
        config: &Config,
        payments: Payments,
        market: Market,
        states: Arc<DeviceStates>,
    ) -> Result<(Bridge, BridgeTasks), BridgeError> {
        Bridge::start_with(config, payments, market, states, None).await
    }

    /// [`Bridge::start`] with a BLE backend of the caller's (a simulated one, in tests).
    pub async fn start_with(
        config: &Config,
        payments: Payments,
        market: Market,
        states: Arc<DeviceStates>,
        ble_backend: Option<Arc<dyn ble::BleBackend>>,
    ) -> Result<(Bridge, BridgeTasks), BridgeError> {
        let registry = Arc::new(Registry::open(payments.store().clone())?);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let (spend_tx, spend_rx) = mpsc::channel(spend::QUEUE);

        let (connection, broker_addr, external) = match &config.mqtt {
            MqttSettings::Off => (None, None, false),
            MqttSettings::Embedded { listen } => {
                let password = registry::new_password()?;
                let (task, addr) = broker::start(*listen, password.clone(), stopped.clone(), registry.clone())?;
                tasks.push(task);
                let connection = mqtt::Connection {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    username: HUB_MQTT_USER.to_owned(),
                    password: Some(password),
                };
                (Some(connection), Some(addr.to_string()), false)
            }
            MqttSettings::External { host, port, username, password_file } => {
                let password = match password_file {
                    Some(path) => Some(read_password(path)?),
                    None => None,
                };
                let connection =
                    mqtt::Connection { host: host.clone(), port: *port, username: username.clone(), password };
                (Some(connection), Some(format!("{host}:{port}")), true)
            }
        };
        let zigbee_base = config.zigbee2mqtt.enabled.then(|| config.zigbee2mqtt.base_topic.clone());
        let (listening_tx, listening) = tokio::sync::watch::channel(Listening::Waiting);
        let (publisher, client) = match connection {
            Some(connection) => {
                let (publisher, client) = mqtt::Client::new(
                    connection,
                    &config.hub.name,
                    config.homeassistant.clone(),
                    zigbee_base.clone(),
                    spend_tx.clone(),
                    listening_tx,
                );
                (Some(publisher), Some(client))
            }
            None => (None, None),
        };

        let (ble_link, ble_runner) = if config.ble.enabled {
            let backend = ble_link::backend(&config.ble, ble_backend).await?;
            let (link, runner, reports) = ble_link::start(&config.ble, backend, &registry)?;
            (Some(link), Some((runner, reports)))
        } else {
            (None, None)
        };

        let bridge = Bridge {
            inner: Arc::new(Inner {
                registry,
                mqtt: publisher.clone(),
                ble: ble_link,
                events,
                broker_addr,
                external_broker: external,
                zigbee_base,
                states,
                listening,
            }),
        };
        if let Some(client) = client {
            tasks.push(tokio::spawn(client.run(bridge.clone(), stopped.clone())));
        }
        if let Some((runner, reports)) = ble_runner {
            tasks.push(tokio::spawn(runner.run(stopped.clone())));
            tasks.push(tokio::spawn(ble_link::relay_reports(bridge.clone(), reports, stopped.clone())));
        }
        // Subscribed here, not in the task, so a decision made before it first runs still counts.
        let decisions = payments.subscribe();
        let worker = spend::Worker::new(bridge.clone(), payments, market);
        tasks.push(tokio::spawn(worker.run(spend_rx, decisions, stopped)));
        Ok((bridge, BridgeTasks { tasks, stop, mqtt: publisher }))
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BridgeEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, event: BridgeEvent) {
        // No listener is fine: events are for whoever watches.
        let _ = self.inner.events.send(event);
    }

    /// Where devices connect (`host:port`), if there is a broker.
    pub fn broker_addr(&self) -> Option<&str> {
        self.inner.broker_addr.as_deref()
    }

    /// Waits up to `within` for the broker to answer the hub's subscriptions, so what devices
    /// publish from then on is heard; `Waiting` if it has not by then (or there is no MQTT).
    pub async fn listening(&self, within: std::time::Duration) -> Listening {
        if self.inner.mqtt.is_none() {
            return Listening::Waiting;
        }
        let mut listening = self.inner.listening.clone();
        match tokio::time::timeout(within, listening.wait_for(|state| *state != Listening::Waiting)).await {
            Ok(Ok(state)) => *state,
            _ => Listening::Waiting,
        }
    }

    /// Pairs an MQTT device (or a BLE one when `ble` is given). Without a public key the hub
    /// makes a signing key pair and hands out the secret once.
    pub async fn pair(
        &self,
        id: DeviceId,
        name: Option<String>,
        public_key: Option<machinomy_core::PublicKey>,
        ble: Option<(String, String)>,
        now: Timestamp,
    ) -> Result<Pairing, BridgeError> {
        let name = name.unwrap_or_else(|| id.to_string());
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(BridgeError::Invalid("name must be 1 to 64 printable characters".to_owned()));
        }
        let (public_key, secret_key) = match public_key {
            Some(key) => (key, None),
            None => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| BridgeError::Internal(format!("no randomness: {e}")))?;
                let key = machinomy_core::SigningKey::from_bytes(&seed);
                (machinomy_core::PublicKey::from(key.verifying_key()), Some(hex::encode(seed)))
            }
        };
        let (kind, password) = match &ble {
            Some((address, profile)) => {
                let Some(handle) = &self.inner.ble else {
                    return Err(BridgeError::Invalid("Bluetooth LE is off ([ble] enabled = false)".to_owned()));
                };
                handle.check_profile(profile)?;
                (DeviceKind::Ble { address: address.clone(), profile: profile.clone() }, None)
            }
            None => (DeviceKind::Mqtt, Some(registry::new_password()?)),
        };
        let record = DeviceRecord {
            id: id.clone(),
            name,
            kind,
            public_key: Some(public_key),
            password_hash: password.as_deref().map(registry::hash_password).transpose()?,
            added_at: now,
            removed_at: None,
        };
        let device = self.inner.registry.add(record).await?;
        if let (Some(handle), Some((address, profile))) = (&self.inner.ble, ble)
            && let Err(e) = handle.add(&id, &address, &profile).await
        {
            warn!(device = %id, error = %e, "paired, but the BLE bridge did not take the device");
        }
        self.emit(BridgeEvent::Paired { device: id });
        Ok(Pairing { device, password, secret_key })
    }

    /// Whether the owner must copy credentials into an external broker.
    pub fn external_broker(&self) -> bool {
        self.inner.external_broker
    }

    /// Unpairs a device; its broker connection is refused from now on (embedded broker) and its
    /// key can no longer spend. Home Assistant forgets it.
    pub async fn remove(&self, id: &DeviceId, now: Timestamp) -> Result<Device, BridgeError> {
        let device = self.inner.registry.remove(id, now).await?;
        if let Some(mqtt) = &self.inner.mqtt {
            mqtt.forget(&device).await;
        }
        if let (Some(handle), DeviceKind::Ble { .. }) = (&self.inner.ble, &device.record.kind) {
            let _ = handle.remove(id).await;
        }
        self.emit(BridgeEvent::Removed { device: id.clone() });
        Ok(device)
    }

    /// Publishes on any topic without waiting (plugins' publishes, already checked against
    /// their grants); `Busy` when the client's queue is full.
    pub fn try_publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), BridgeError> {
        let mqtt = self.inner.mqtt.as_ref().ok_or(BridgeError::NoBroker)?;
        if mqtt.publish_now(topic.to_owned(), payload, retain) { Ok(()) } else { Err(BridgeError::Busy) }
    }

    /// Sends a command to a device: `machinomy/<id>/cmd/<name>`, Zigbee2MQTT's `/set`, or a
    /// BLE characteristic write.
    pub async fn command(&self, id: &DeviceId, name: &str, payload: Value) -> Result<(), BridgeError> {
        machinomy_core::device::check_name("command", name).map_err(|e| BridgeError::Invalid(e.to_string()))?;
        let device = self.inner.registry.get(id).ok_or_else(|| BridgeError::UnknownDevice(id.clone()))?;
        match &device.record.kind {
            DeviceKind::Ble { .. } => {
                let handle = self.inner.ble.as_ref().ok_or(BridgeError::Invalid("Bluetooth LE is off".to_owned()))?;
                handle.command(id, name, payload).await
            }
            DeviceKind::Mqtt => {
                let mqtt = self.inner.mqtt.as_ref().ok_or(BridgeError::NoBroker)?;
                let topic = machinomy_core::TopicKind::Command(name.to_owned()).topic(id);
                mqtt.publish(topic, json_bytes(&payload), false).await
            }
            DeviceKind::Zigbee2mqtt { friendly_name } => {
                let mqtt = self.inner.mqtt.as_ref().ok_or(BridgeError::NoBroker)?;
                let base = self.inner.zigbee_base.as_deref().unwrap_or("zigbee2mqtt");
                let (topic, body) = zigbee::command(base, friendly_name, name, payload);
                mqtt.publish(topic, json_bytes(&body), false).await
            }
        }
    }

    /// Records a device's new state (whole, or merged for BLE and Zigbee), tells listeners, and
    /// for devices the hub speaks for, republishes it on the device's own retained topic.
    fn state_reported(&self, id: &DeviceId, fields: Map<String, Value>, merge: bool, now: Timestamp) {
        if let Some(state) = self.inner.registry.set_state(id, fields, merge, now) {
            self.inner.states.set(id.as_str(), state.clone());
            self.emit(BridgeEvent::State { device: id.clone(), state });
        }
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn read_password(path: &std::path::Path) -> Result<String, BridgeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BridgeError::PasswordFile { path: path.to_owned(), message: e.to_string() })?;
    let password = text.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(BridgeError::PasswordFile { path: path.to_owned(), message: "is empty".to_owned() });
    }
    Ok(password)
}
