//! The Mosquitto config the product ships (packaging/mosquitto/), on a real broker, and the
//! Python appliance (tests/appliance.py) against it with a stand-in for the hub's MQTT bridge.
// The stand-in hub's helpers fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use ed25519_dalek::{Signature, VerifyingKey};
use machinomy_tests::mosquitto::{HUB_USER, MQTT_DEADLINE, Mosquitto, MqttClient, run_appliance};
use machinomy_tests::{random_key, wait_for};
use rumqttc::{ConnectReturnCode, Publish, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HUB_PW: &str = "hub-secret";

fn text(message: &Publish) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

/// The payload as JSON, or as a JSON string when it is not JSON (`online`).
fn payload(message: &Publish) -> Value {
    serde_json::from_slice(&message.payload).unwrap_or_else(|_| Value::String(text(message)))
}

fn topics(messages: &[Publish]) -> Vec<(String, String)> {
    messages.iter().map(|m| (m.topic.clone(), text(m))).collect()
}

#[tokio::test]
async fn the_test_broker_runs_the_shipped_config() {
    let broker = Mosquitto::start(&[(HUB_USER, HUB_PW)]).await.unwrap();
    let conf = std::fs::read_to_string(broker.dir().join("machinomy.conf")).unwrap();
    for line in ["per_listener_settings false", "allow_anonymous false", "max_packet_size 65536"] {
        assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
    }
    let settings: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!settings.iter().any(|l| l.contains("/etc/")), "the test config points at the machine's files:\n{conf}");
    assert!(conf.contains(&format!("listener {} 127.0.0.1", broker.port())), "{conf}");
    let acl = std::fs::read_to_string(broker.dir().join("machinomy.acl")).unwrap();
    assert!(acl.contains("pattern readwrite machinomy/%u/#"), "{acl}");
}

#[tokio::test]
async fn a_device_publishes_and_subscribes_under_its_own_prefix() {
    let broker = Mosquitto::start(&[(HUB_USER, HUB_PW), ("kettle", "kettle-pw")]).await.unwrap();
    let mut hub = broker.connect("hub", HUB_USER, HUB_PW).await.unwrap();
    hub.subscribe_granted("machinomy/#", QoS::AtLeastOnce).await.unwrap();
    let mut kettle = broker.connect("kettle", "kettle", "kettle-pw").await.unwrap();
    assert_eq!(
        kettle.subscribe("machinomy/kettle/#", QoS::AtLeastOnce).await.unwrap(),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );

    kettle.publish("machinomy/kettle/state", QoS::AtLeastOnce, true, r#"{"temperature":21.5}"#).await.unwrap();
    kettle.publish("machinomy/kettle/event/boiled", QoS::AtMostOnce, false, "{}").await.unwrap();
    let expected = vec![
        ("machinomy/kettle/state".to_owned(), r#"{"temperature":21.5}"#.to_owned()),
        ("machinomy/kettle/event/boiled".to_owned(), "{}".to_owned()),
    ];
    let own = kettle.recv_until(MQTT_DEADLINE, |m| m.topic.ends_with("/boiled")).await.unwrap();
    assert_eq!(topics(&own), expected);
    let seen = hub.recv_until(MQTT_DEADLINE, |m| m.topic.ends_with("/boiled")).await.unwrap();
    assert_eq!(topics(&seen), expected);

    // The hub can write to the device's prefix (a spend result), and the device reads it.
    hub.publish("machinomy/kettle/spend/result", QoS::AtLeastOnce, false, r#"{"request_id":"r1"}"#).await.unwrap();
    let result = kettle.recv(MQTT_DEADLINE).await.unwrap();
    assert_eq!(
        (result.topic.as_str(), text(&result).as_str()),
        ("machinomy/kettle/spend/result", r#"{"request_id":"r1"}"#)
    );

    // The retained state is there for whoever subscribes later.
    let mut late = broker.connect("hub-late", HUB_USER, HUB_PW).await.unwrap();
    late.subscribe_granted("machinomy/kettle/state", QoS::AtLeastOnce).await.unwrap();
    let retained = late.recv(MQTT_DEADLINE).await.unwrap();
    assert!(retained.retain, "{retained:?}");
    assert_eq!(text(&retained), r#"{"temperature":21.5}"#);
    kettle.disconnect().await.unwrap();
}

#[tokio::test]
async fn a_device_cannot_write_or_read_another_devices_topics() {
    let users = [(HUB_USER, HUB_PW), ("kettle", "kettle-pw"), ("fridge", "fridge-pw")];
    let broker = Mosquitto::start(&users).await.unwrap();
    let mut hub = broker.connect("hub", HUB_USER, HUB_PW).await.unwrap();
    hub.subscribe_granted("machinomy/#", QoS::AtLeastOnce).await.unwrap();
    let mut fridge = broker.connect("fridge", "fridge", "fridge-pw").await.unwrap();
    let mut kettle = broker.connect("kettle", "kettle", "kettle-pw").await.unwrap();
    fridge.publish("machinomy/fridge/state", QoS::AtLeastOnce, true, "fridge-1").await.unwrap();
    let first = hub.recv(MQTT_DEADLINE).await.unwrap();
    assert_eq!(text(&first), "fridge-1");

    // Mosquitto 2.0 grants a subscription outside the device's prefix (SUBACK success) and then
    // delivers nothing there that the ACL does not let it read.
    let granted = kettle.subscribe("machinomy/fridge/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(granted, SubscribeReasonCode::Success(QoS::AtLeastOnce));
    kettle.subscribe_granted("machinomy/kettle/#", QoS::AtLeastOnce).await.unwrap();

    // A forged, retained state: acknowledged (a 3.1.1 PUBACK has no reason code), dropped, and
    // the connection stays up.
    kettle.publish("machinomy/fridge/state", QoS::AtLeastOnce, true, "forged").await.unwrap();
    kettle.publish("machinomy/kettle/marker", QoS::AtLeastOnce, false, "kettle-marker").await.unwrap();
    fridge.publish("machinomy/fridge/state", QoS::AtLeastOnce, false, "fridge-2").await.unwrap();
    // Each publish above was acknowledged before the next was sent, so a forged message that got
    // through would have reached the hub before the markers.
    let seen = hub.recv_until(MQTT_DEADLINE, |m| text(m) == "fridge-2").await.unwrap();
    assert_eq!(
        topics(&seen),
        vec![
            ("machinomy/kettle/marker".to_owned(), "kettle-marker".to_owned()),
            ("machinomy/fridge/state".to_owned(), "fridge-2".to_owned()),
        ]
    );
    assert!(broker.log_text().contains("Denied PUBLISH from kettle"), "{}", broker.log_tail());

    // The kettle saw its own marker, and not the fridge's state published after it.
    kettle.publish("machinomy/kettle/marker", QoS::AtLeastOnce, false, "kettle-marker-2").await.unwrap();
    let kettle_saw = kettle.recv_until(MQTT_DEADLINE, |m| text(m) == "kettle-marker-2").await.unwrap();
    assert_eq!(
        topics(&kettle_saw),
        vec![
            ("machinomy/kettle/marker".to_owned(), "kettle-marker".to_owned()),
            ("machinomy/kettle/marker".to_owned(), "kettle-marker-2".to_owned()),
        ]
    );
    assert!(!kettle.is_closed());

    // The retained state is still the fridge's own.
    let mut late = broker.connect("hub-late", HUB_USER, HUB_PW).await.unwrap();
    late.subscribe_granted("machinomy/fridge/state", QoS::AtLeastOnce).await.unwrap();
    let retained = late.recv(MQTT_DEADLINE).await.unwrap();
    assert!(retained.retain, "{retained:?}");
    assert_eq!(text(&retained), "fridge-1");
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused_at_connect() {
    let broker = Mosquitto::start(&[(HUB_USER, HUB_PW), ("kettle", "kettle-pw")]).await.unwrap();
    for (user, password) in [("kettle", "wrong"), ("fridge", "kettle-pw"), (HUB_USER, "kettle-pw"), ("kettle", "")] {
        let refused = broker.try_connect(&format!("c-{user}"), user, password).await.unwrap();
        assert_eq!(refused.err(), Some(ConnectReturnCode::NotAuthorized), "{user}/{password}");
    }
    // No username at all (allow_anonymous false).
    let mut options = rumqttc::MqttOptions::new("anonymous", "127.0.0.1", broker.port());
    options.set_clean_session(true);
    assert_eq!(broker.try_connect_with(options).await.unwrap().err(), Some(ConnectReturnCode::NotAuthorized));

    // A device added while the broker runs can log in once it has reloaded.
    broker.add_user("fridge", "fridge-pw").await.unwrap();
    let fridge = broker.connect("fridge", "fridge", "fridge-pw").await.unwrap();
    fridge.disconnect().await.unwrap();
    // Changing a password locks the old one out.
    broker.add_user("fridge", "fridge-pw-2").await.unwrap();
    let old = broker.try_connect("fridge", "fridge", "fridge-pw").await.unwrap();
    assert_eq!(old.err(), Some(ConnectReturnCode::NotAuthorized));
}

#[tokio::test]
async fn an_oversized_publish_gets_its_sender_disconnected() {
    let broker = Mosquitto::start(&[(HUB_USER, HUB_PW), ("kettle", "kettle-pw")]).await.unwrap();
    let mut hub = broker.connect("hub", HUB_USER, HUB_PW).await.unwrap();
    hub.subscribe_granted("machinomy/#", QoS::AtLeastOnce).await.unwrap();
    let mut kettle = broker.connect("kettle", "kettle", "kettle-pw").await.unwrap();

    // Just under the limit (65536 bytes for the whole packet) goes through.
    let big = vec![b'x'; 60_000];
    kettle.publish("machinomy/kettle/blob", QoS::AtLeastOnce, false, big.clone()).await.unwrap();
    let through = hub.recv(MQTT_DEADLINE).await.unwrap();
    assert_eq!(through.payload.len(), big.len());

    // 1 MB: no PUBACK; the broker drops the connection and the message goes nowhere.
    let huge = vec![b'x'; 1_000_000];
    let refused = kettle.publish("machinomy/kettle/blob", QoS::AtLeastOnce, false, huge).await.unwrap_err();
    assert!(format!("{refused:#}").contains("connection closed"), "{refused:#}");
    assert!(kettle.is_closed());
    assert!(broker.log_text().contains("Client kettle disconnected due to oversize packet"), "{}", broker.log_tail());
    let mut again = broker.connect("kettle", "kettle", "kettle-pw").await.unwrap();
    again.publish("machinomy/kettle/marker", QoS::AtLeastOnce, false, "after").await.unwrap();
    let seen = hub.recv_until(MQTT_DEADLINE, |m| text(m) == "after").await.unwrap();
    assert_eq!(topics(&seen), vec![("machinomy/kettle/marker".to_owned(), "after".to_owned())]);
}

#[tokio::test]
async fn the_appliance_runs_under_the_system_python() {
    let run = run_appliance(&["--help"]).await.unwrap();
    assert!(run.success(), "{run}");
    for flag in ["--api", "--token", "--broker-port", "--device", "--payee", "--service", "--amount", "--bad-signature"]
    {
        assert!(run.stdout.contains(flag), "{flag} missing from\n{run}");
    }
}

#[tokio::test]
async fn the_appliance_signs_what_the_spec_says() {
    let seed = "07".repeat(32);
    let body = "½ litre ☕";
    let args = [
        "--sign-only",
        "--key-seed",
        &seed,
        "--device",
        "kettle",
        "--service",
        "milk-delivery",
        "--amount",
        "1500",
        "--memo",
        "milk",
        "--body",
        body,
        "--request-id",
        "r9",
    ];
    let out: Value = run_appliance(&args).await.unwrap().json().unwrap();
    let key = verifying_key_from_seed(&seed);
    assert_eq!(out["public_key"], hex::encode(key.as_bytes()));
    let request = &out["request"];
    assert_eq!(request["service"], "milk-delivery");
    assert_eq!(request["body"], body);
    assert!(request.get("payee").is_none(), "{request}");
    verify_spend_request("kettle", &key, request).unwrap();

    // The same request with a flipped signature byte does not verify.
    let mut bad_args = args.to_vec();
    bad_args.push("--bad-signature");
    let bad: Value = run_appliance(&bad_args).await.unwrap().json().unwrap();
    assert!(verify_spend_request("kettle", &key, &bad["request"]).is_err());
}

#[tokio::test]
async fn the_appliance_pairs_and_gets_its_spend_result_from_a_stand_in_hub() {
    let stand_in = StandIn::start().await;
    let hub_key = stand_in.payee.clone();
    let port = stand_in.broker.port().to_string();
    let args = [
        "--api",
        &stand_in.api,
        "--token",
        &stand_in.token,
        "--broker-port",
        &port,
        "--device",
        "kettle",
        "--payee",
        &hub_key,
        "--amount",
        "1500",
    ];
    let run = run_appliance(&args).await.unwrap();
    let result: Value = run.json().unwrap();
    assert_eq!(result, json!({"request_id": "r1", "status": "approved", "amount": "1500"}), "{run}");

    let seen = stand_in.finish("kettle").await;
    let from_device: Vec<(String, Value)> = seen
        .iter()
        .filter(|m| !m.topic.ends_with("/spend/request") && !m.topic.ends_with("/spend/result"))
        .map(|m| (m.topic.clone(), payload(m)))
        .collect();
    let want = [
        ("machinomy/kettle/status", json!("online")),
        ("machinomy/kettle/state", json!({"temperature": 21.5})),
        ("machinomy/kettle/event/door", json!({"open": true})),
        ("machinomy/kettle/status", json!("offline")),
    ];
    assert_eq!(from_device, want.map(|(t, v)| (t.to_owned(), v)));
    let request: Value =
        serde_json::from_slice(&seen.iter().find(|m| m.topic.ends_with("/spend/request")).unwrap().payload).unwrap();
    assert_eq!(request["payee"], hub_key.as_str());
    assert_eq!(request["memo"], "milk");
    assert_eq!(request["amount"], "1500");
    assert!(request.get("body").is_none(), "{request}");

    // What stays retained: the state, and `offline` (published before the clean disconnect).
    let mut late = stand_in.broker.connect("late", HUB_USER, HUB_PW).await.unwrap();
    late.subscribe_granted("machinomy/kettle/state", QoS::AtLeastOnce).await.unwrap();
    late.subscribe_granted("machinomy/kettle/status", QoS::AtLeastOnce).await.unwrap();
    let retained = [late.recv(MQTT_DEADLINE).await.unwrap(), late.recv(MQTT_DEADLINE).await.unwrap()];
    assert!(retained.iter().all(|m| m.retain), "{retained:?}");
    let retained: Vec<(String, Value)> = retained.iter().map(|m| (m.topic.clone(), payload(m))).collect();
    assert_eq!(
        retained,
        [
            ("machinomy/kettle/state".to_owned(), json!({"temperature": 21.5})),
            ("machinomy/kettle/status".to_owned(), json!("offline")),
        ]
    );
}

#[tokio::test]
async fn the_appliance_buys_a_service_with_a_body_through_a_stand_in_hub() {
    let stand_in = StandIn::start().await;
    let port = stand_in.broker.port().to_string();
    let args = [
        "--api",
        &stand_in.api,
        "--token",
        &stand_in.token,
        "--broker-port",
        &port,
        "--device",
        "oven",
        "--service",
        "recipes",
        "--amount",
        "7",
        "--memo",
        "bread ½",
        "--body",
        "{\"dish\": \"crème brûlée\"}",
        "--request-id",
        "r2",
    ];
    let result: Value = run_appliance(&args).await.unwrap().json().unwrap();
    assert_eq!(result, json!({"request_id": "r2", "status": "approved", "amount": "7"}));
    stand_in.finish("oven").await;
}

#[tokio::test]
async fn the_appliance_with_a_bad_signature_gets_an_error() {
    let stand_in = StandIn::start().await;
    let port = stand_in.broker.port().to_string();
    let payee = stand_in.payee.clone();
    let args = [
        "--api",
        &stand_in.api,
        "--token",
        &stand_in.token,
        "--broker-port",
        &port,
        "--device",
        "kettle",
        "--payee",
        &payee,
        "--amount",
        "1500",
        "--bad-signature",
    ];
    let error: Value = run_appliance(&args).await.unwrap().json().unwrap();
    assert_eq!(error, json!({"request_id": "r1", "error": "bad signature"}));
    stand_in.finish("kettle").await;

    // A wrong admin token: pairing fails, and the appliance says so in one line.
    let stand_in = StandIn::start().await;
    let port = stand_in.broker.port().to_string();
    let args = [
        "--api",
        &stand_in.api,
        "--token",
        "wrong",
        "--broker-port",
        &port,
        "--device",
        "kettle",
        "--payee",
        &payee,
        "--amount",
        "1",
        "--timeout",
        "15",
    ];
    let run = run_appliance(&args).await.unwrap();
    let line = run.error_line().unwrap();
    assert!(line.contains("pairing") && line.contains("401"), "{line}");
}

// --- the stand-in hub -------------------------------------------------------------------------

/// The canonical bytes a device signs for a spend request (the bridge's spec).
fn spend_request_bytes(fields: [&str; 7]) -> Vec<u8> {
    let mut out = b"machinomy-spend-request-v1".to_vec();
    for field in fields {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

fn verify_spend_request(device: &str, key: &VerifyingKey, request: &Value) -> Result<(), String> {
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    let (kind, target) = match (field("payee"), field("service")) {
        (Some(payee), None) => ("payee", payee),
        (None, Some(service)) => ("service", service),
        _ => return Err(format!("exactly one of payee and service: {request}")),
    };
    let fields = [
        device,
        field("request_id").ok_or("no request_id")?,
        field("amount").ok_or("no amount")?,
        kind,
        target,
        field("memo").ok_or("no memo")?,
        field("body").unwrap_or_default(),
    ];
    let signature = hex::decode(field("signature").ok_or("no signature")?).map_err(|e| e.to_string())?;
    let signature = Signature::from_slice(&signature).map_err(|e| e.to_string())?;
    key.verify_strict(&spend_request_bytes(fields), &signature).map_err(|e| e.to_string())
}

fn verifying_key_from_seed(seed: &str) -> VerifyingKey {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(seed, &mut bytes).unwrap();
    ed25519_dalek::SigningKey::from_bytes(&bytes).verifying_key()
}

/// What the hub's bridge will do, in the small: pairs devices over HTTP (adding them to the
/// broker), verifies their signed spend requests and answers on their result or error topic.
struct StandIn {
    broker: Arc<Mosquitto>,
    api: String,
    token: String,
    /// The hub's public key (hex), a payee.
    payee: String,
    /// Every message the stand-in hub received, in order.
    seen: Arc<Mutex<Vec<Publish>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Devices = Arc<Mutex<HashMap<String, VerifyingKey>>>;

impl StandIn {
    async fn start() -> StandIn {
        let broker = Arc::new(Mosquitto::start(&[(HUB_USER, HUB_PW)]).await.unwrap());
        let devices: Devices = Arc::default();
        let token = hex::encode(random_key().unwrap().to_bytes());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let pairing = tokio::spawn(serve_pairing(listener, token.clone(), Arc::clone(&broker), Arc::clone(&devices)));

        let mut hub = broker.connect("stand-in-hub", HUB_USER, HUB_PW).await.unwrap();
        hub.subscribe_granted("machinomy/#", QoS::AtLeastOnce).await.unwrap();
        let seen: Arc<Mutex<Vec<Publish>>> = Arc::default();
        let record = Arc::clone(&seen);
        let bridge = tokio::spawn(async move {
            loop {
                let message = hub.recv(Duration::from_secs(3600)).await.unwrap();
                if message.topic.ends_with("/spend/request") {
                    let device = message.topic.split('/').nth(1).unwrap_or_default().to_owned();
                    answer(&mut hub, &devices, &device, &message).await;
                }
                record.lock().unwrap().push(message);
            }
        });
        let payee = hex::encode(random_key().unwrap().verifying_key().as_bytes());
        StandIn { broker, api, token, payee, seen, tasks: vec![pairing, bridge] }
    }

    /// Everything the stand-in hub received, up to `device`'s `offline`.
    async fn finish(&self, device: &str) -> Vec<Publish> {
        let status = format!("machinomy/{device}/status");
        wait_for(&format!("`offline` on {status}"), Duration::from_secs(20), || async {
            ensure!(self.tasks.iter().all(|t| !t.is_finished()), "the stand-in hub stopped (see its panic above)");
            let seen = self.seen.lock().unwrap();
            Ok(seen.iter().any(|m| m.topic == status && text(m) == "offline").then(|| seen.clone()))
        })
        .await
        .unwrap()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn answer(hub: &mut MqttClient, devices: &Devices, device: &str, message: &Publish) {
    let request: Value = serde_json::from_slice(&message.payload).unwrap();
    let key = *devices.lock().unwrap().get(device).unwrap();
    let request_id = request["request_id"].clone();
    match verify_spend_request(device, &key, &request) {
        Ok(()) => {
            let result = json!({"request_id": request_id, "status": "approved", "amount": request["amount"]});
            let topic = format!("machinomy/{device}/spend/result");
            hub.publish(&topic, QoS::AtLeastOnce, false, result.to_string()).await.unwrap();
        }
        Err(_) => {
            let error = json!({"request_id": request_id, "error": "bad signature"});
            hub.publish(&format!("machinomy/{device}/error"), QoS::AtLeastOnce, false, error.to_string())
                .await
                .unwrap();
        }
    }
}

/// `POST /api/v1/devices` as the hub answers it, one request per connection.
async fn serve_pairing(listener: TcpListener, token: String, broker: Arc<Mosquitto>, devices: Devices) {
    loop {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let (head, body) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the pairing request ended early");
            request.extend_from_slice(&chunk[..n]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8(request[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break (head, request[end + 4..end + 4 + length].to_vec());
            }
        };
        let authorized = head.lines().any(|l| l == format!("Authorization: Bearer {token}"));
        let (status, answer) = if !head.starts_with("POST /api/v1/devices ") {
            ("404 Not Found", json!({"error": "no such route"}))
        } else if !authorized {
            ("401 Unauthorized", json!({"error": "missing or wrong admin token"}))
        } else {
            let pairing: Value = serde_json::from_slice(&body).unwrap();
            let id = pairing["id"].as_str().unwrap().to_owned();
            let key = verifying_key_from_hex(pairing["public_key"].as_str().unwrap());
            let password = hex::encode(random_key().unwrap().to_bytes());
            broker.add_user(&id, &password).await.unwrap();
            devices.lock().unwrap().insert(id.clone(), key);
            let device = json!({"id": id, "public_key": pairing["public_key"]});
            ("201 Created", json!({"device": device, "credentials": {"username": id, "password": password}}))
        };
        let answer = answer.to_string();
        let length = answer.len();
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n{answer}"
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
    }
}

fn verifying_key_from_hex(public_key: &str) -> VerifyingKey {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(public_key, &mut bytes).unwrap();
    VerifyingKey::from_bytes(&bytes).unwrap()
}
