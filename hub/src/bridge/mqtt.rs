//! The hub's own MQTT client: one task polls rumqttc's event loop, reads every device topic,
//! and answers on the device's `error` topic whatever it cannot accept. Others publish through
//! the cloneable [`Publisher`].

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use machinomy_core::device::{self, DeviceError, MAX_PAYLOAD};
use machinomy_core::{DeviceId, ErrorMessage, TopicKind};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Bridge, BridgeError, BridgeEvent, Device, broker, homeassistant, spend, zigbee};
use crate::config::HomeAssistantSettings;
use crate::hub::now;
use crate::store::DeviceKind;

/// Publishes waiting for the connection; beyond this, publishing waits (or `try_publish` fails).
const REQUEST_QUEUE: usize = 1024;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How to reach the broker.
#[derive(Debug, Clone)]
pub(super) struct Connection {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: String,
    pub(super) password: Option<String>,
}

/// Publishes on the hub's connection; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Publisher {
    client: AsyncClient,
    homeassistant: HomeAssistantSettings,
}

impl Publisher {
    /// Publishes at QoS 1 once the connection takes it (queued while reconnecting).
    pub(super) async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), BridgeError> {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.map_err(|_| BridgeError::NoBroker)
    }

    /// Publishes without waiting: for the event-loop task, which must never wait on its own queue.
    fn try_publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        if !self.publish_now(topic, payload, retain) {
            debug!("dropped an MQTT publish: the queue is full");
        }
    }

    /// Queues a publish without waiting; false when the queue is full.
    pub(super) fn publish_now(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok()
    }

    /// Tells a device, on its `error` topic, what the hub could not accept from `topic`.
    pub(super) async fn publish_error(&self, id: &DeviceId, topic: &str, error: &str, request_id: Option<&str>) {
        let _ = self.publish(TopicKind::Error.topic(id), error_payload(topic, error, request_id), false).await;
    }

    /// Clears what the hub published for a removed device (its Home Assistant entities).
    pub(super) async fn forget(&self, device: &Device) {
        if self.homeassistant.discovery {
            for topic in homeassistant::topics(&self.homeassistant.prefix, device) {
                let _ = self.publish(topic, Vec::new(), true).await;
            }
        }
    }

    pub(super) async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

fn error_payload(topic: &str, error: &str, request_id: Option<&str>) -> Vec<u8> {
    let message =
        ErrorMessage { topic: topic.to_owned(), error: error.to_owned(), request_id: request_id.map(str::to_owned) };
    serde_json::to_vec(&message).unwrap_or_default()
}

pub(super) struct Client {
    events: EventLoop,
    publisher: Publisher,
    zigbee_base: Option<String>,
    spend: mpsc::Sender<spend::Job>,
    /// State keys announced to Home Assistant, per device.
    discovered: HashMap<DeviceId, BTreeSet<String>>,
    /// Whether the broker has granted this connection's subscriptions.
    listening: watch::Sender<Listening>,
    /// Subscriptions sent on this connection that the broker has not answered yet.
    unacknowledged: usize,
    /// Whether the broker refused one of them.
    refused: bool,
}

/// Whether the hub hears what devices publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listening {
    /// Not connected, or the broker has not answered every subscription yet.
    Waiting,
    /// The broker granted every subscription.
    Subscribed,
    /// The broker refused a subscription (its ACL, most likely): some devices are not heard.
    Refused,
}

impl Client {
    pub(super) fn new(
        connection: Connection,
        hub_name: &str,
        homeassistant: HomeAssistantSettings,
        zigbee_base: Option<String>,
        spend: mpsc::Sender<spend::Job>,
        listening: watch::Sender<Listening>,
    ) -> (Publisher, Client) {
        // One client id per hub name, so two hubs can share a broker.
        let client_id: String =
            format!("machinomy-hub-{hub_name}").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let mut options = MqttOptions::new(client_id, connection.host, connection.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        // Larger than any device may send, so an oversized payload is read and answered with an
        // error instead of breaking the hub's connection.
        options.set_max_packet_size(broker::MAX_PACKET + 1024, broker::MAX_PACKET + 1024);
        options.set_credentials(connection.username, connection.password.unwrap_or_default());
        let (client, events) = AsyncClient::new(options, REQUEST_QUEUE);
        let publisher = Publisher { client, homeassistant };
        let client = Client {
            events,
            publisher: publisher.clone(),
            zigbee_base,
            spend,
            discovered: HashMap::new(),
            listening,
            unacknowledged: 0,
            refused: false,
        };
        (publisher, client)
    }

    pub(super) async fn run(mut self, bridge: Bridge, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut connected = false;
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                event = self.events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    info!("connected to the MQTT broker");
                    connected = true;
                    backoff = Duration::from_millis(100);
                    self.listening.send_replace(Listening::Waiting);
                    self.refused = false;
                    // A subscription that could not even be queued is never answered, so the
                    // hub does not claim to hear what it did not ask for.
                    self.unacknowledged = self.subscribe();
                    self.discovered.clear();
                    self.announce_all(&bridge);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        warn!("the MQTT broker refused a subscription of the hub's; check its ACL for the hub's user");
                        self.refused = true;
                    }
                    self.unacknowledged = self.unacknowledged.saturating_sub(1);
                    if self.unacknowledged == 0 {
                        self.listening.send_replace(if self.refused {
                            Listening::Refused
                        } else {
                            Listening::Subscribed
                        });
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.on_publish(&bridge, &publish.topic, &publish.payload, publish.retain).await;
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        warn!(error = %e, "lost the MQTT broker; reconnecting");
                    } else {
                        debug!(error = %e, "cannot reach the MQTT broker yet");
                    }
                    connected = false;
                    self.listening.send_replace(Listening::Waiting);
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Subscribes to what the hub listens to; returns how many answers to wait for (one per
    /// filter, sent or not).
    fn subscribe(&self) -> usize {
        let mut filters = vec![format!("{}/#", device::TOPIC_ROOT)];
        if self.publisher.homeassistant.discovery {
            filters.push(format!("{}/status", self.publisher.homeassistant.prefix));
        }
        if let Some(base) = &self.zigbee_base {
            filters.push(format!("{base}/#"));
        }
        let wanted = filters.len();
        for filter in filters {
            if let Err(e) = self.publisher.client.try_subscribe(filter, QoS::AtLeastOnce) {
                warn!(error = %e, "could not subscribe");
            }
        }
        wanted
    }

    async fn on_publish(&mut self, bridge: &Bridge, topic: &str, payload: &[u8], retained: bool) {
        if topic.starts_with(device::TOPIC_ROOT) && topic.as_bytes().get(device::TOPIC_ROOT.len()) == Some(&b'/') {
            self.on_device_topic(bridge, topic, payload, retained);
        } else if self.publisher.homeassistant.discovery
            && topic.strip_prefix(self.publisher.homeassistant.prefix.as_str()) == Some("/status")
        {
            if payload.trim_ascii() == b"online" {
                // Home Assistant restarted and forgot its entities: announce them again.
                self.discovered.clear();
                self.announce_all(bridge);
            }
        } else if let Some(base) = &self.zigbee_base
            && let Some(rest) = topic.strip_prefix(base.as_str()).and_then(|r| r.strip_prefix('/'))
        {
            let base = base.clone();
            zigbee::on_message(bridge, &base, rest, payload).await;
        }
    }

    fn on_device_topic(&mut self, bridge: &Bridge, topic: &str, payload: &[u8], retained: bool) {
        let (id, kind) = match device::parse_topic(topic) {
            Ok(parsed) => parsed,
            Err(e) => {
                // No valid device in the topic, so no device topic to answer on.
                debug!(topic, error = %e, "ignored a message");
                return;
            }
        };
        let kind = match kind {
            // What the hub sends (commands, results, errors) comes back to it; not for it.
            Ok(TopicKind::Command(_) | TopicKind::SpendResult | TopicKind::Error) => return,
            Ok(kind) => kind,
            Err(e) => return self.refuse(&id, topic, &e.to_string()),
        };
        if payload.is_empty() {
            // An empty retained message clears the topic; nothing to read.
            return;
        }
        let Some(device) = bridge.registry().get(&id) else {
            return self.refuse(&id, topic, &format!("device {id} is not paired with this hub"));
        };
        if payload.len() > MAX_PAYLOAD {
            return self.refuse(&id, topic, &DeviceError::TooLarge { size: payload.len() }.to_string());
        }
        if matches!(device.record.kind, DeviceKind::Ble { .. })
            && matches!(kind, TopicKind::Status | TopicKind::State | TopicKind::Event(_))
        {
            // The hub itself publishes these for a BLE device; reading its own echo back could
            // put an older value over a newer one.
            return;
        }
        let now = now();
        match kind {
            TopicKind::Status => match device::parse_status(payload) {
                Ok(online) => {
                    if bridge.registry().set_online(&id, online, now) != Some(online) {
                        bridge.emit(BridgeEvent::Availability { device: id, online });
                    }
                }
                Err(e) => self.refuse(&id, topic, &e.to_string()),
            },
            TopicKind::State => match device::parse_state(payload) {
                Ok(state) => {
                    // Only a field Home Assistant has not been told of costs more than the update.
                    let known = self.discovered.get(&id);
                    let fresh = self.publisher.homeassistant.discovery
                        && state.keys().any(|k| !known.is_some_and(|known| known.contains(k)));
                    bridge.state_reported(&id, state, false, now);
                    if fresh && let Some(device) = bridge.registry().get(&id) {
                        self.announce(&device);
                    }
                }
                Err(e) => self.refuse(&id, topic, &e.to_string()),
            },
            TopicKind::Event(name) => match device::parse_json(payload) {
                Ok(payload) => {
                    bridge.registry().record_event(&id, &name, &payload, now);
                    bridge.emit(BridgeEvent::Event { device: id, name, payload });
                }
                Err(e) => self.refuse(&id, topic, &e.to_string()),
            },
            TopicKind::SpendRequest if retained => {
                // A retained request would be re-delivered at every start.
                self.refuse(&id, topic, "spend requests must not be retained");
            }
            TopicKind::SpendRequest => {
                let job = spend::Job::Request { device: id.clone(), payload: payload.to_vec() };
                if self.spend.try_send(job).is_err() {
                    self.refuse(&id, topic, "the hub is busy with other spend requests; send it again later");
                }
            }
            TopicKind::Command(_) | TopicKind::SpendResult | TopicKind::Error => {}
        }
    }

    /// Tells a device, on its `error` topic, what the hub could not accept.
    fn refuse(&self, id: &DeviceId, topic: &str, error: &str) {
        debug!(device = %id, topic, error, "refused a device message");
        self.publisher.try_publish(TopicKind::Error.topic(id), error_payload(topic, error, None), false);
    }

    /// Announces a device's state fields to Home Assistant, once per field.
    fn announce(&mut self, device: &Device) {
        if !self.publisher.homeassistant.discovery || matches!(device.record.kind, DeviceKind::Zigbee2mqtt { .. }) {
            return;
        }
        let known = self.discovered.entry(device.record.id.clone()).or_default();
        let fresh: Vec<String> = device.state.keys().filter(|k| !known.contains(*k)).cloned().collect();
        if fresh.is_empty() {
            return;
        }
        for (topic, payload) in homeassistant::discovery(&self.publisher.homeassistant.prefix, device, &fresh) {
            self.publisher.try_publish(topic, payload, true);
        }
        known.extend(fresh);
    }

    fn announce_all(&mut self, bridge: &Bridge) {
        for device in bridge.registry().list() {
            self.announce(&device);
        }
    }
}
