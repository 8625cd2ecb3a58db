//! The appliance bridge in-process: a real hub with the embedded broker, a simulated BLE radio,
//! Home Assistant discovery and Zigbee2MQTT on, watched from the outside by MQTT clients that log
//! in as paired devices (the embedded broker lets in nobody else; it has no topic ACLs, so a
//! paired device may subscribe to and publish on any topic).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use machinomy_core::DeviceId;
use machinomy_hub::bridge::ble::{BleBackend, SimulatedBle, SimulatedWrite, Uuid};
use machinomy_hub::bridge::{Bridge, BridgeError, BridgeEvent, BridgeTasks};
use machinomy_hub::store::DeviceKind;
use machinomy_hub::{Config, Hub, now};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every wait ends well within this, or the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);
/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(10);

const THERMOMETER_ADDR: &str = "AA:BB:CC:00:11:22";
const SERVICE: Uuid = Uuid::from_u128(0x0000181a_0000_1000_8000_00805f9b34fb);
const TEMPERATURE: Uuid = Uuid::from_u128(0x00002a6e_0000_1000_8000_00805f9b34fb);
const HUMIDITY: Uuid = Uuid::from_u128(0x00002a6f_0000_1000_8000_00805f9b34fb);
const BATTERY: Uuid = Uuid::from_u128(0x00002a19_0000_1000_8000_00805f9b34fb);
const BUTTON: Uuid = Uuid::from_u128(0x8d5e0001_3c2a_4f1b_9e7d_6a1f0c2b4d10);
const TARGET: Uuid = Uuid::from_u128(0x8d5e0002_3c2a_4f1b_9e7d_6a1f0c2b4d10);

fn id(name: &str) -> DeviceId {
    name.parse().unwrap()
}

/// Waits until `check` returns something, polling every [`POLL`]; fails after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < until, "gave up after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A hub in this process with the bridge running on a simulated radio.
struct TestBridge {
    hub: Hub,
    bridge: Bridge,
    tasks: BridgeTasks,
    radio: Arc<SimulatedBle>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TestBridge {
    async fn start() -> TestBridge {
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("ble-profiles");
        std::fs::create_dir(&profiles).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ble-profiles/thermometer.toml");
        std::fs::copy(shipped, profiles.join("thermometer.toml")).unwrap();
        // A free port can be taken by someone else before the broker binds it: try another.
        for attempt in 1.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let text = format!(
                "[hub]\nname = \"bridge-test\"\ndata_dir = {data}\n\
                 [p2p]\nenabled = false\n\
                 [mqtt]\nlisten = \"127.0.0.1:{port}\"\n\
                 [ble]\nenabled = true\nbackend = \"simulated\"\nprofiles = {profiles}\n\
                 [homeassistant]\ndiscovery = true\n\
                 [zigbee2mqtt]\nenabled = true\n",
                data = toml_string(&dir.path().join(format!("data-{attempt}"))),
                profiles = toml_string(&profiles),
            );
            let config = Config::parse(&text, &dir.path().join("hub.toml"), Path::new("/unused")).unwrap();
            let (hub, _) = Hub::open(&config).await.unwrap();
            let radio = Arc::new(SimulatedBle::new());
            let backend: Arc<dyn BleBackend> = radio.clone();
            let started = Bridge::start_with(
                &config,
                hub.payments().clone(),
                hub.market().clone(),
                hub.devices().clone(),
                Some(backend),
            )
            .await;
            match started {
                Ok((bridge, tasks)) => {
                    assert_eq!(bridge.broker_addr(), Some(format!("127.0.0.1:{port}").as_str()));
                    return TestBridge { hub, bridge, tasks, radio, port, _dir: dir };
                }
                Err(BridgeError::Broker { .. }) if attempt < 3 => hub.close().await.unwrap(),
                Err(e) => panic!("the bridge did not start: {e}"),
            }
        }
        unreachable!()
    }

    /// Pairs an MQTT device and logs in as it.
    async fn device_client(&self, name: &str) -> Client {
        let pairing = self.bridge.pair(id(name), None, None, None, now()).await.unwrap();
        Client::connect(self.port, name, &pairing.password.unwrap()).await
    }

    /// Says goodbye on the broker, stops every bridge task and closes the store, in time.
    async fn stop(self) {
        let TestBridge { hub, tasks, bridge, .. } = self;
        drop(bridge);
        tokio::time::timeout(DEADLINE, async {
            tasks.shutdown().await;
            hub.close().await.unwrap();
        })
        .await
        .expect("the bridge and the hub shut down in time");
    }
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.to_str().unwrap().to_owned()).to_string()
}

/// One MQTT connection to the embedded broker, its event loop on its own task.
struct Client {
    name: String,
    client: AsyncClient,
    packets: mpsc::Receiver<Result<Packet, String>>,
    messages: VecDeque<Publish>,
    task: JoinHandle<()>,
}

impl Client {
    /// Logs in as device `name` (its client id must be its id), retrying while the broker is
    /// not listening yet.
    async fn connect(port: u16, name: &str, password: &str) -> Client {
        let until = Instant::now() + DEADLINE;
        loop {
            let mut options = MqttOptions::new(name, "127.0.0.1", port);
            options.set_credentials(name, password).set_keep_alive(Duration::from_secs(30));
            let (client, mut events) = AsyncClient::new(options, 64);
            match tokio::time::timeout(DEADLINE, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    let (tx, packets) = mpsc::channel(1024);
                    let task = tokio::spawn(async move {
                        loop {
                            let packet = match events.poll().await {
                                Ok(Event::Incoming(packet)) => Ok(packet),
                                Ok(Event::Outgoing(_)) => continue,
                                Err(e) => Err(e.to_string()),
                            };
                            let end = packet.is_err();
                            if tx.send(packet).await.is_err() || end {
                                return;
                            }
                        }
                    });
                    let name = name.to_owned();
                    return Client { name, client, packets, messages: VecDeque::new(), task };
                }
                other => assert!(Instant::now() < until, "{name} could not log in to the broker: {other:?}"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Takes one packet, keeping messages; fails at `until`.
    async fn pump(&mut self, until: Instant, what: &str) -> Packet {
        let remaining = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.packets.recv()).await {
            Ok(Some(Ok(packet))) => {
                if let Packet::Publish(message) = &packet {
                    self.messages.push_back(message.clone());
                }
                packet
            }
            Ok(Some(Err(e))) => panic!("{}: the connection ended ({e}) while waiting for {what}", self.name),
            Ok(None) => panic!("{}: the event loop stopped while waiting for {what}", self.name),
            Err(_) => {
                let topics: Vec<&str> = self.messages.iter().map(|m| m.topic.as_str()).collect();
                panic!("{}: gave up after {DEADLINE:?} waiting for {what} (unread: {topics:?})", self.name)
            }
        }
    }

    /// Subscribes and waits for the broker's SUBACK.
    async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let until = Instant::now() + DEADLINE;
        while !matches!(self.pump(until, &format!("SUBACK for {filter}")).await, Packet::SubAck(_)) {}
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK (one publish in flight at a time).
    async fn publish(&mut self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.unwrap();
        let until = Instant::now() + DEADLINE;
        while !matches!(self.pump(until, &format!("PUBACK for {topic}")).await, Packet::PubAck(_)) {}
    }

    /// The first unread message (already here, or arriving) that `wanted` matches; the others
    /// stay unread.
    async fn recv(&mut self, what: &str, mut wanted: impl FnMut(&Publish) -> bool) -> Publish {
        let until = Instant::now() + DEADLINE;
        let mut checked = 0;
        loop {
            if let Some(at) = self.messages.iter().skip(checked).position(&mut wanted)
                && let Some(message) = self.messages.remove(checked + at)
            {
                return message;
            }
            checked = self.messages.len();
            self.pump(until, what).await;
        }
    }

    /// The next message on `topic` whose JSON payload `wanted` accepts.
    async fn recv_json(&mut self, topic: &str, mut wanted: impl FnMut(&Value) -> bool) -> (Publish, Value) {
        let message = self
            .recv(topic, |m| {
                m.topic == topic && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|value| wanted(&value))
            })
            .await;
        let value = serde_json::from_slice(&message.payload).unwrap();
        (message, value)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A thermometer in range: 20.00 °C, 45.50 %, battery 87 %.
fn add_thermometer(radio: &SimulatedBle) {
    radio.add_peripheral(THERMOMETER_ADDR, Some("Thermo"), &[SERVICE]);
    radio.set_value(THERMOMETER_ADDR, TEMPERATURE, &2000i16.to_le_bytes());
    radio.set_value(THERMOMETER_ADDR, HUMIDITY, &4550u16.to_le_bytes());
    radio.set_value(THERMOMETER_ADDR, BATTERY, &[87]);
    radio.set_value(THERMOMETER_ADDR, BUTTON, &[0]);
    radio.set_value(THERMOMETER_ADDR, TARGET, &[0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ble_thermometer_reports_into_the_registry_and_on_mqtt_and_takes_commands() {
    let rig = TestBridge::start().await;
    let mut observer = rig.device_client("observer").await;
    observer.subscribe("machinomy/thermo/#").await;
    let mut events = rig.bridge.subscribe();

    add_thermometer(&rig.radio);
    let thermo = id("thermo");
    let address = THERMOMETER_ADDR.to_ascii_lowercase(); // addresses are matched in any case
    let pairing = rig
        .bridge
        .pair(thermo.clone(), Some("Thermometer".into()), None, Some((address, "thermometer".into())), now())
        .await
        .unwrap();
    assert!(pairing.password.is_none(), "a BLE device gets no broker password");
    assert!(matches!(pairing.device.record.kind, DeviceKind::Ble { ref profile, .. } if profile == "thermometer"));

    // On connect the hub reads the fields that do not notify, and says so on MQTT.
    let status = observer.recv("status online", |m| m.topic == "machinomy/thermo/status").await;
    assert_eq!(&status.payload[..], b"online");
    observer.recv_json("machinomy/thermo/state", |s| s["humidity"] == json!(45.5) && s["battery"] == json!(87)).await;
    eventually("the registry to hold the read fields", || {
        rig.bridge.registry().get(&thermo).filter(|d| d.online && d.state.get("battery") == Some(&json!(87)))
    })
    .await;

    // A notification: the registry, the listeners, the sold-state table and MQTT all hear it.
    eventually("the thermometer to be subscribed", || rig.radio.is_connected(THERMOMETER_ADDR).then_some(())).await;
    rig.radio.notify(THERMOMETER_ADDR, TEMPERATURE, &2150i16.to_le_bytes()).await.unwrap();
    let device = eventually("the notified temperature in the registry", || {
        rig.bridge.registry().get(&thermo).filter(|d| d.state.get("temperature") == Some(&json!(21.5)))
    })
    .await;
    assert_eq!(device.state.get("humidity"), Some(&json!(45.5)), "BLE fields are merged, not replaced");
    assert!(device.last_seen.is_some());
    let (_, state) = observer.recv_json("machinomy/thermo/state", |s| s["temperature"] == json!(21.5)).await;
    assert_eq!(state, json!({"temperature": 21.5, "humidity": 45.5, "battery": 87}));
    let sold: Value = serde_json::from_slice(&rig.hub.devices().get("thermo").unwrap()).unwrap();
    assert_eq!(sold["temperature"], json!(21.5));
    let mut heard = (false, false);
    while heard != (true, true) {
        match tokio::time::timeout(DEADLINE, events.recv()).await.expect("bridge events").unwrap() {
            BridgeEvent::Availability { device, online: true } if device == thermo => heard.0 = true,
            BridgeEvent::State { device, state } if device == thermo && state.get("temperature").is_some() => {
                heard.1 = true;
            }
            _ => {}
        }
    }

    // An event field is published as an event, not kept as state.
    rig.radio.notify(THERMOMETER_ADDR, BUTTON, &[2]).await.unwrap();
    let (press, value) = observer.recv_json("machinomy/thermo/event/button", |_| true).await;
    assert_eq!(value, json!(2));
    assert!(!press.retain);
    let seen = rig.bridge.registry().get(&thermo).unwrap();
    assert!(!seen.state.contains_key("button"));
    let last = seen.events.back().unwrap();
    assert_eq!((last.name.as_str(), last.payload.as_str()), ("button", "2"), "kept for the owner to see");

    // State and status are retained: a client that subscribes later gets both at once.
    let mut late = rig.device_client("late").await;
    late.subscribe("machinomy/thermo/#").await;
    let retained = late.recv("the retained status", |m| m.topic == "machinomy/thermo/status").await;
    assert!(retained.retain && &retained.payload[..] == b"online", "{retained:?}");
    let (retained, state) = late.recv_json("machinomy/thermo/state", |_| true).await;
    assert!(retained.retain);
    assert_eq!(state["temperature"], json!(21.5));

    // A command is encoded by the profile (21.5 → 2150 → i16le) and written to its characteristic.
    rig.bridge.command(&thermo, "set_target", json!(22.5)).await.unwrap();
    let write = SimulatedWrite {
        address: THERMOMETER_ADDR.to_owned(),
        characteristic: TARGET,
        value: 2250i16.to_le_bytes().to_vec(),
    };
    assert_eq!(rig.radio.writes(), vec![write]);
    let refused = rig.bridge.command(&thermo, "self_destruct", json!(1)).await.unwrap_err();
    assert!(refused.to_string().contains("no command"), "{refused}");
    let refused = rig.bridge.command(&thermo, "set_target", json!("warm")).await.unwrap_err();
    assert!(matches!(refused, BridgeError::Ble(_)), "{refused}");
    assert_eq!(rig.radio.writes().len(), 1, "refused commands write nothing");

    // An unknown profile is refused at pairing, and nothing is paired.
    let unknown = rig.bridge.pair(id("kettle"), None, None, Some(("AA:00:00:00:00:01".into(), "kettle".into())), now());
    assert!(unknown.await.unwrap_err().to_string().contains("no BLE profile"));
    assert!(!rig.bridge.registry().contains(&id("kettle")));

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_discovers_state_fields_again_on_its_restart_and_forgets_removed_devices() {
    let rig = TestBridge::start().await;
    let mut observer = rig.device_client("observer").await;
    observer.subscribe("homeassistant/#").await;
    let mut kitchen = rig.device_client("kitchen").await;
    kitchen
        .publish("machinomy/kitchen/state", true, r#"{"temperature": 21.5, "humidity": 40, "door_open": false}"#)
        .await;

    let topics = [
        "homeassistant/sensor/machinomy_kitchen/temperature/config",
        "homeassistant/sensor/machinomy_kitchen/humidity/config",
        "homeassistant/binary_sensor/machinomy_kitchen/door_open/config",
    ];
    for topic in topics {
        let (_, config) = observer.recv_json(topic, |_| true).await;
        assert_eq!(config["state_topic"], "machinomy/kitchen/state", "{topic}");
        assert_eq!(config["availability_topic"], "machinomy/kitchen/status", "{topic}");
        assert_eq!(config["device"]["identifiers"], json!(["machinomy_kitchen"]), "{topic}");
    }
    assert_eq!(rig.bridge.registry().get(&id("kitchen")).unwrap().state.get("humidity"), Some(&json!(40)));

    // Retained: a Home Assistant that starts later finds them.
    let mut late = rig.device_client("late").await;
    late.subscribe("homeassistant/+/machinomy_kitchen/#").await;
    let found = late.recv("a retained discovery config", |m| m.topic == topics[0]).await;
    assert!(found.retain, "{found:?}");

    // Home Assistant restarts and says so: every entity is announced again.
    observer.publish("homeassistant/status", false, "online").await;
    for topic in topics {
        let (again, config) = observer.recv_json(topic, |_| true).await;
        assert!(!again.retain, "a fresh copy, not the retained one");
        assert_eq!(config["state_topic"], "machinomy/kitchen/state");
    }

    // Removing the device clears its entities: an empty retained message on each topic.
    rig.bridge.remove(&id("kitchen"), now()).await.unwrap();
    for topic in topics {
        let cleared = observer.recv(topic, |m| m.topic == topic).await;
        assert!(cleared.payload.is_empty(), "{topic}: {cleared:?}");
    }
    assert!(rig.bridge.registry().get(&id("kitchen")).is_none());

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zigbee2mqtt_devices_join_on_their_first_message_and_take_commands() {
    let rig = TestBridge::start().await;
    // Zigbee2MQTT itself would log in as a paired device; this one plays it and watches.
    let mut z2m = rig.device_client("z2m").await;
    z2m.subscribe("zigbee2mqtt/#").await;

    // The bridge's own topics are not devices.
    z2m.publish("zigbee2mqtt/bridge/state", true, r#"{"state":"online"}"#).await;
    z2m.publish("zigbee2mqtt/Kitchen Lamp", true, r#"{"state":"ON","brightness":10}"#).await;
    let lamp = id("z2m-kitchen_lamp");
    let device = eventually("the lamp in the registry with its state", || {
        rig.bridge.registry().get(&lamp).filter(|d| d.state.get("brightness") == Some(&json!(10)))
    })
    .await;
    assert_eq!(device.state.get("state"), Some(&json!("ON")));
    assert_eq!(device.record.name, "Kitchen Lamp");
    assert!(
        matches!(device.record.kind, DeviceKind::Zigbee2mqtt { ref friendly_name } if friendly_name == "Kitchen Lamp")
    );
    let ids: Vec<String> = rig.bridge.registry().list().iter().map(|d| d.record.id.to_string()).collect();
    assert_eq!(ids, ["z2m", "z2m-kitchen_lamp"], "zigbee2mqtt/bridge/state made no device");

    // Availability, in Zigbee2MQTT's JSON form and its older plain form.
    z2m.publish("zigbee2mqtt/Kitchen Lamp/availability", true, r#"{"state":"online"}"#).await;
    eventually("the lamp online", || rig.bridge.registry().get(&lamp).filter(|d| d.online)).await;
    z2m.publish("zigbee2mqtt/Kitchen Lamp/availability", true, r#"{"state":"offline"}"#).await;
    eventually("the lamp offline", || rig.bridge.registry().get(&lamp).filter(|d| !d.online)).await;
    z2m.publish("zigbee2mqtt/Kitchen Lamp/availability", true, "online").await;
    eventually("the lamp online again", || rig.bridge.registry().get(&lamp).filter(|d| d.online)).await;

    // Later state merges into what the lamp said before.
    z2m.publish("zigbee2mqtt/Kitchen Lamp", true, r#"{"brightness":200}"#).await;
    let device = eventually("the new brightness", || {
        rig.bridge.registry().get(&lamp).filter(|d| d.state.get("brightness") == Some(&json!(200)))
    })
    .await;
    assert_eq!(device.state.get("state"), Some(&json!("ON")));

    // A command goes to the lamp's `set` topic as Zigbee2MQTT expects it.
    rig.bridge.command(&lamp, "state", json!("OFF")).await.unwrap();
    let (set, body) = z2m.recv_json("zigbee2mqtt/Kitchen Lamp/set", |_| true).await;
    assert_eq!(body, json!({"state": "OFF"}));
    assert!(!set.retain);
    rig.bridge.command(&lamp, "set", json!({"brightness": 3, "transition": 2})).await.unwrap();
    let (_, body) = z2m.recv_json("zigbee2mqtt/Kitchen Lamp/set", |_| true).await;
    assert_eq!(body, json!({"brightness": 3, "transition": 2}));

    // Zigbee2MQTT announces a device it already knew with its retained availability and state
    // back to back: both count, though the first one is still pairing the device. (The
    // publishes are not awaited one by one, so they reach the hub together.)
    for i in 0..10 {
        let name = format!("zigbee2mqtt/Sensor {i}");
        let online = r#"{"state":"online"}"#;
        z2m.client.publish(format!("{name}/availability"), QoS::AtLeastOnce, true, online).await.unwrap();
        z2m.client.publish(name, QoS::AtLeastOnce, true, r#"{"occupancy":true}"#).await.unwrap();
    }
    for i in 0..10 {
        let sensor = id(&format!("z2m-sensor_{i}"));
        eventually(&format!("sensor {i} online with its state"), || {
            rig.bridge.registry().get(&sensor).filter(|d| d.online && d.state.get("occupancy") == Some(&json!(true)))
        })
        .await;
    }

    // The command did not come back as state (the hub ignores `/set`).
    assert_eq!(rig.bridge.registry().get(&lamp).unwrap().state.get("state"), Some(&json!("ON")));
    rig.stop().await;
}
