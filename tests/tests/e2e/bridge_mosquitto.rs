//! The real hub on a real Mosquitto (`[mqtt] mode = "external"`, the shipped config with its
//! password file and per-device ACL), and the Python appliance (tests/appliance.py) against the
//! real hub.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // tests fail loudly

use std::time::Duration;

use machinomy_core::{
    Amount, DeviceId, PublicKey, SigningKey, SpendRequestMessage, SpendResultMessage, SpendStatus, SpendTarget,
};
use machinomy_tests::mosquitto::{HUB_USER, Mosquitto, MqttClient, loopback_options, run_appliance};
use machinomy_tests::{TestHub, TestHubBuilder, random_key, wait_for};
use machinomy_web::model::{DeviceView, HubStatus, PairedDevice, SpendingReport};
use rumqttc::{ConnectReturnCode, LastWill, Publish, QoS};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(20);
/// The hub's broker password file, next to its config (a relative `password_file`).
const PASSWORD_FILE: &str = "mqtt.pw";

/// A fresh random secret, as hex.
fn secret() -> String {
    hex::encode(random_key().unwrap().to_bytes())
}

fn text(message: &Publish) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

fn json_of(message: &Publish) -> Value {
    serde_json::from_slice(&message.payload).unwrap_or_else(|_| Value::String(text(message)))
}

/// A hub that grants credit on the peer network, and its address and key.
async fn payee_hub() -> (TestHub, String, PublicKey) {
    let mut payee = TestHub::builder().name("grocer").p2p(&[]).build().unwrap();
    payee.start().await.unwrap();
    let api = payee.api().unwrap();
    let (addr, key) = wait_for("the payee's peer address", DEADLINE, async || {
        let status: HubStatus = api.get_json("/api/v1/status").await?;
        Ok(status.p2p_addrs.into_iter().find(|a| a.contains("/tcp/")).map(|a| (a, status.public_key)))
    })
    .await
    .unwrap();
    (payee, addr, key)
}

/// A buyer hub on the payee's peer network whose device `device` may spend 0.000002 USD unasked,
/// 0.00001 a day.
fn buyer(payee_addr: &str, device: &str) -> TestHubBuilder {
    TestHub::builder()
        .name("home")
        .p2p(&[&format!("bootstrap = [\"{payee_addr}\"]"), "channel_capacity = \"0.0001\""])
        .extra(&format!(
            "[[budget]]\nsubject = \"device:{device}\"\nperiod = \"day\"\nlimit = \"0.00001\"\nauto_approve = \"0.000002\""
        ))
}

/// Builds a hub that uses `broker` as its external broker, logging in as the hub user with the
/// password in a file next to its config, and starts it.
async fn on_mosquitto(builder: TestHubBuilder, broker: &Mosquitto, hub_password: &str) -> TestHub {
    let url = format!("url = \"{}\"", broker.url());
    let username = format!("username = \"{HUB_USER}\"");
    let file = format!("password_file = \"{PASSWORD_FILE}\"");
    let mut hub = builder.mqtt(&["mode = \"external\"", &url, &username, &file]).build().unwrap();
    // As an owner would write it: with a final newline.
    std::fs::write(hub.dir().join(PASSWORD_FILE), format!("{hub_password}\n")).unwrap();
    hub.start().await.unwrap();
    hub
}

async fn pair(hub: &TestHub, id: &str, key: &SigningKey) -> PairedDevice {
    let body = json!({"id": id, "public_key": PublicKey::from(key.verifying_key()).to_hex()});
    let response = hub.api().unwrap().post("/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Pairs `id` and does what the answer's next steps ask: adds its login to Mosquitto.
async fn pair_on_mosquitto(hub: &TestHub, broker: &Mosquitto, id: &str, key: &SigningKey) -> (String, String) {
    let paired = pair(hub, id, key).await;
    let credentials = paired.credentials.as_ref().unwrap();
    assert_eq!(credentials.broker, format!("127.0.0.1:{}", broker.port()));
    assert_eq!(credentials.username, id);
    let [step] = paired.next_steps.as_slice() else { panic!("one next step expected: {paired:?}") };
    assert!(step.contains("mosquitto_passwd") && step.contains(&format!(" {id} {} ", credentials.password)), "{step}");
    broker.add_user(&credentials.username, &credentials.password).await.unwrap();
    (credentials.username.clone(), credentials.password.clone())
}

/// Connects as the device (client id = username = device id), with a retained `offline` last
/// will if asked, subscribed to its own topics.
async fn connect(broker: &Mosquitto, (username, password): &(String, String), will: bool) -> MqttClient {
    let mut options = loopback_options(broker.port(), username, username, password);
    if will {
        let status = format!("machinomy/{username}/status");
        options.set_last_will(LastWill::new(status, "offline", QoS::AtLeastOnce, true));
    }
    let mut client = broker.connect_with(options).await.unwrap();
    client.subscribe_granted(&format!("machinomy/{username}/#"), QoS::AtLeastOnce).await.unwrap();
    client
}

async fn device(hub: &TestHub, id: &str) -> DeviceView {
    hub.api().unwrap().get_json(&format!("/api/v1/devices/{id}")).await.unwrap()
}

async fn spending(hub: &TestHub) -> SpendingReport {
    hub.api().unwrap().get_json("/api/v1/spending").await.unwrap()
}

/// The next message on `topic`, as JSON.
async fn next_on(client: &mut MqttClient, topic: &str) -> Value {
    client.recv_json(topic, DEADLINE).await.unwrap()
}

async fn next_result(client: &mut MqttClient, id: &str) -> SpendResultMessage {
    serde_json::from_value(next_on(client, &format!("machinomy/{id}/spend/result")).await).unwrap()
}

fn spend(id: &str, key: &SigningKey, request: &str, amount: u128, payee: PublicKey) -> Vec<u8> {
    let device: DeviceId = id.parse().unwrap();
    let target = SpendTarget::Payee(payee);
    let message =
        SpendRequestMessage::sign(&device, key, request, Amount::from_base_units(amount), &target, "milk", None);
    serde_json::to_vec(&message).unwrap()
}

#[tokio::test]
async fn a_device_on_mosquitto_pairs_reports_takes_commands_and_pays_only_under_its_own_prefix() {
    let hub_password = secret();
    let broker = Mosquitto::start(&[(HUB_USER, &hub_password)]).await.unwrap();
    let (mut payee, payee_addr, payee_key) = payee_hub().await;
    let mut home = on_mosquitto(buyer(&payee_addr, "fridge"), &broker, &hub_password).await;
    // Whatever the hub user may see, as a second login of it: proves what Mosquitto delivered.
    let mut monitor = broker.connect("monitor", HUB_USER, &hub_password).await.unwrap();
    monitor.subscribe_granted("machinomy/#", QoS::AtLeastOnce).await.unwrap();

    // Pairing hands out credentials that Mosquitto does not know until the owner adds them.
    let key = random_key().unwrap();
    let paired = pair(&home, "fridge", &key).await;
    let credentials = paired.credentials.as_ref().unwrap();
    let early = broker.try_connect("fridge", "fridge", &credentials.password).await.unwrap();
    assert_eq!(early.err(), Some(ConnectReturnCode::NotAuthorized));
    let [step] = paired.next_steps.as_slice() else { panic!("one next step expected: {paired:?}") };
    assert!(step.contains("mosquitto_passwd") && step.contains(&credentials.password), "{step}");
    broker.add_user("fridge", &credentials.password).await.unwrap();
    let login = ("fridge".to_owned(), credentials.password.clone());

    let mut fridge = connect(&broker, &login, true).await;
    fridge.publish("machinomy/fridge/status", QoS::AtLeastOnce, true, "online").await.unwrap();
    fridge.publish("machinomy/fridge/state", QoS::AtLeastOnce, true, r#"{"temperature": 4.5}"#).await.unwrap();
    fridge.publish("machinomy/fridge/event/door", QoS::AtLeastOnce, false, r#"{"open": true}"#).await.unwrap();
    let seen = wait_for("the fridge online with its state", DEADLINE, async || {
        let view = device(&home, "fridge").await;
        Ok((view.online && view.state.get("temperature") == Some(&json!(4.5))).then_some(view))
    })
    .await
    .unwrap();
    assert!(seen.last_seen.is_some());
    // The hub logged in with the password from its file.
    assert!(broker.log_text().contains(&format!("u'{HUB_USER}'")), "{}", broker.log_tail());

    // A command from the owner reaches the device through Mosquitto.
    let sent = home.api().unwrap().post("/api/v1/devices/fridge/commands/defrost").json(&json!({"minutes": 5}));
    assert!(sent.send().await.unwrap().status().is_success());
    assert_eq!(next_on(&mut fridge, "machinomy/fridge/cmd/defrost").await, json!({"minutes": 5}));

    // Within the threshold: paid at once, over a channel to the payee hub.
    let request = spend("fridge", &key, "r1", 1500, payee_key);
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, request).await.unwrap();
    let paid = next_result(&mut fridge, "fridge").await;
    assert_eq!((paid.request_id.as_str(), paid.status), ("r1", SpendStatus::Paid), "{paid:?}");

    // Over the threshold: pending, then paid when the owner approves.
    let request = spend("fridge", &key, "r2", 3000, payee_key);
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, request).await.unwrap();
    let pending = next_result(&mut fridge, "fridge").await;
    assert_eq!((pending.request_id.as_str(), pending.status), ("r2", SpendStatus::Pending), "{pending:?}");
    let approval = pending.approval.unwrap();
    let approved = home.api().unwrap().post(&format!("/api/v1/approvals/{approval}/approve")).send().await.unwrap();
    assert!(approved.status().is_success());
    let paid = next_result(&mut fridge, "fridge").await;
    assert_eq!((paid.request_id.as_str(), paid.status), ("r2", SpendStatus::Paid), "{paid:?}");

    // A second paired device writes a spend request under the fridge's prefix (signed with its
    // own key). Mosquitto acknowledges it and drops it: the monitor sees the oven's marker,
    // published after it, but not the request.
    let oven_key = random_key().unwrap();
    let oven_login = pair_on_mosquitto(&home, &broker, "oven", &oven_key).await;
    let mut oven = connect(&broker, &oven_login, false).await;
    let forged = spend("fridge", &oven_key, "r3", 1500, payee_key);
    oven.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, forged).await.unwrap();
    oven.publish("machinomy/oven/event/marker", QoS::AtLeastOnce, false, "{}").await.unwrap();
    let delivered = monitor.recv_until(DEADLINE, |m| m.topic == "machinomy/oven/event/marker").await.unwrap();
    let requests: Vec<Value> =
        delivered.iter().filter(|m| m.topic == "machinomy/fridge/spend/request").map(json_of).collect();
    assert_eq!(requests.iter().map(|r| r["request_id"].clone()).collect::<Vec<_>>(), [json!("r1"), json!("r2")]);
    assert!(broker.log_text().contains("Denied PUBLISH from oven"), "{}", broker.log_tail());

    // On its own topic, a request whose signature does not verify is answered on `error`; a good
    // one after it is paid. Had the oven's request reached the hub (before both), the fridge
    // would have a second error.
    let mut bad: Value = serde_json::from_slice(&spend("fridge", &key, "r4", 1500, payee_key)).unwrap();
    bad["amount"] = json!("1000");
    let bad = serde_json::to_vec(&bad).unwrap();
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, bad).await.unwrap();
    let request = spend("fridge", &key, "r5", 1500, payee_key);
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, request).await.unwrap();
    let (mut errored, mut answered) = (false, false);
    let answers = fridge
        .recv_until(DEADLINE, |m| {
            errored |= m.topic == "machinomy/fridge/error";
            answered |= m.topic == "machinomy/fridge/spend/result";
            errored && answered
        })
        .await
        .unwrap();
    let errors: Vec<Value> = answers.iter().filter(|m| m.topic == "machinomy/fridge/error").map(json_of).collect();
    let [error] = errors.as_slice() else { panic!("one error expected: {errors:?}") };
    assert_eq!(error["topic"], "machinomy/fridge/spend/request");
    assert!(error["error"].as_str().unwrap().contains("signature"), "{error}");
    let results: Vec<Value> =
        answers.iter().filter(|m| m.topic == "machinomy/fridge/spend/result").map(json_of).collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let paid: SpendResultMessage = serde_json::from_value(results[0].clone()).unwrap();
    assert_eq!((paid.request_id.as_str(), paid.status), ("r5", SpendStatus::Paid), "{paid:?}");

    // Both hubs' books agree: 1500 + 3000 + 1500 base units went from the fridge to the grocer.
    assert_eq!(spending(&home).await.total_paid, Amount::from_base_units(6000));
    assert_eq!(spending(&payee).await.total_received, Amount::from_base_units(6000));

    // The fridge's connection dies: Mosquitto publishes its last will and the hub sees it offline.
    drop(fridge);
    let will = monitor.recv_until(DEADLINE, |m| m.topic == "machinomy/fridge/status").await.unwrap();
    assert_eq!(text(will.last().unwrap()), "offline");
    wait_for("the fridge offline", DEADLINE, async || Ok((!device(&home, "fridge").await.online).then_some(())))
        .await
        .unwrap();
    assert!(device(&home, "oven").await.state.is_empty());

    oven.disconnect().await.unwrap();
    assert!(home.stop().await.unwrap().success());
    assert!(payee.stop().await.unwrap().success());
}

#[tokio::test]
async fn retained_garbage_on_mosquitto_at_startup_is_answered_on_error_and_changes_nothing() {
    let hub_password = secret();
    let broker = Mosquitto::start(&[(HUB_USER, &hub_password)]).await.unwrap();
    let mut home = on_mosquitto(TestHub::builder().name("home"), &broker, &hub_password).await;
    let key = random_key().unwrap();
    let login = pair_on_mosquitto(&home, &broker, "kettle", &key).await;
    assert!(home.stop().await.unwrap().success());

    // While the hub is down, the kettle leaves garbage as its retained state, and a signed spend
    // request retained (which must not be paid at every start); it listens for the hub's errors.
    let mut kettle = connect(&broker, &login, false).await;
    kettle.publish("machinomy/kettle/state", QoS::AtLeastOnce, true, "not json").await.unwrap();
    let request = spend("kettle", &key, "r1", 1, random_key().unwrap().verifying_key().into());
    kettle.publish("machinomy/kettle/spend/request", QoS::AtLeastOnce, true, request).await.unwrap();
    let before: Vec<String> = kettle
        .recv_until(DEADLINE, |m| m.topic == "machinomy/kettle/spend/request")
        .await
        .unwrap()
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    assert!(!before.iter().any(|t| t.ends_with("/error")), "the hub is down, yet: {before:?}");

    home.start().await.unwrap();
    let mut errors = Vec::new();
    kettle
        .recv_until(DEADLINE, |m| {
            if m.topic == "machinomy/kettle/error" {
                errors.push(json_of(m));
            }
            errors.len() == 2
        })
        .await
        .unwrap();
    errors.sort_by_key(|e| e["topic"].as_str().unwrap_or_default().to_owned());
    assert_eq!(errors[0]["topic"], "machinomy/kettle/spend/request");
    assert!(errors[0]["error"].as_str().unwrap().contains("retained"), "{errors:?}");
    assert_eq!(errors[1]["topic"], "machinomy/kettle/state");
    assert!(errors[1]["error"].as_str().unwrap().contains("JSON"), "{errors:?}");

    // The hub is up, holds no state for the kettle and paid nothing.
    let status: HubStatus = home.api().unwrap().get_json("/api/v1/status").await.unwrap();
    assert_eq!((status.name.as_str(), status.approvals_pending), ("home", 0));
    let view = device(&home, "kettle").await;
    assert!(view.state.is_empty() && !view.online, "{view:?}");
    assert_eq!(spending(&home).await.total_paid, Amount::ZERO);

    // And it still takes what the kettle sends next.
    kettle.publish("machinomy/kettle/state", QoS::AtLeastOnce, true, r#"{"temperature": 95}"#).await.unwrap();
    wait_for("the kettle's new state", DEADLINE, async || {
        Ok((device(&home, "kettle").await.state.get("temperature") == Some(&json!(95))).then_some(()))
    })
    .await
    .unwrap();
    kettle.disconnect().await.unwrap();
    assert!(home.stop().await.unwrap().success());
}

#[tokio::test]
async fn the_python_appliance_pairs_reports_and_is_paid_for_by_the_real_hub() {
    let (mut payee, payee_addr, payee_key) = payee_hub().await;
    let (builder, port) = buyer(&payee_addr, "kettle").embedded_mqtt().unwrap();
    let mut home = builder.build().unwrap();
    home.start().await.unwrap();
    let api = format!("http://{}", home.addr().unwrap());
    let token = home.token().unwrap();
    let args = |device: &str| -> Vec<String> {
        let port = port.to_string();
        let payee = payee_key.to_hex();
        ["--api", &api, "--token", &token, "--broker-port", &port, "--device", device, "--payee", &payee]
            .into_iter()
            .chain(["--amount", "1500"])
            .map(str::to_owned)
            .collect()
    };

    // While the appliance runs, the hub shows it online.
    let kettle = args("kettle");
    let appliance = tokio::spawn(async move { run_appliance(&kettle).await });
    let online = wait_for("the appliance online", DEADLINE, async || {
        let response = home.api()?.get("/api/v1/devices/kettle").send().await?;
        if response.status().is_success() && response.json::<DeviceView>().await?.online {
            return Ok(Some(()));
        }
        anyhow::ensure!(!appliance.is_finished(), "appliance.py finished before the hub saw it online");
        Ok(None)
    })
    .await;
    let run = appliance.await.unwrap().unwrap();
    if let Err(e) = online {
        panic!("{e:#}\n{run}");
    }
    let result: Value = run.json().unwrap();
    assert_eq!((&result["request_id"], &result["status"]), (&json!("r1"), &json!("paid")), "{run}");
    assert!(result.get("error").is_none() && result.get("reason").is_none(), "{run}");

    // It said `offline` before it left; what it reported stays.
    let view = wait_for("the appliance offline", DEADLINE, async || {
        let view = device(&home, "kettle").await;
        Ok((!view.online).then_some(view))
    })
    .await
    .unwrap();
    assert_eq!(Value::Object(view.state), json!({"temperature": 21.5}));
    assert!(view.last_seen.is_some());
    assert_eq!(spending(&home).await.total_paid, Amount::from_base_units(1500));
    assert_eq!(spending(&payee).await.total_received, Amount::from_base_units(1500));

    // A flipped signature byte: the hub answers on `error`, which the appliance prints; no money moves.
    let mut bad = args("toaster");
    bad.push("--bad-signature".to_owned());
    let run = run_appliance(&bad).await.unwrap();
    let error: Value = run.json().unwrap();
    assert_eq!(error["topic"], "machinomy/toaster/spend/request", "{run}");
    assert!(error["error"].as_str().unwrap().contains("signature"), "{run}");
    assert_eq!(spending(&home).await.total_paid, Amount::from_base_units(1500));

    assert!(home.stop().await.unwrap().success());
    assert!(payee.stop().await.unwrap().success());
}

#[tokio::test]
async fn the_python_appliance_on_mosquitto_is_paid_for_by_the_real_hub() {
    let hub_password = secret();
    let broker = Mosquitto::start(&[(HUB_USER, &hub_password)]).await.unwrap();
    let (mut payee, payee_addr, payee_key) = payee_hub().await;
    let mut home = on_mosquitto(buyer(&payee_addr, "kettle"), &broker, &hub_password).await;
    let mut monitor = broker.connect("monitor", HUB_USER, &hub_password).await.unwrap();
    monitor.subscribe_granted("machinomy/kettle/status", QoS::AtLeastOnce).await.unwrap();

    // The owner pairs the appliance's key and adds its login to Mosquitto; the appliance logs in
    // with that password (no pairing of its own).
    let key = random_key().unwrap();
    let (_, password) = pair_on_mosquitto(&home, &broker, "kettle", &key).await;
    let seed = hex::encode(key.to_bytes());
    let port = broker.port().to_string();
    let payee_hex = payee_key.to_hex();
    let args = [
        "--password",
        &password,
        "--key-seed",
        &seed,
        "--broker-port",
        &port,
        "--device",
        "kettle",
        "--payee",
        &payee_hex,
        "--amount",
        "1500",
    ];
    let run = run_appliance(&args).await.unwrap();
    let result: Value = run.json().unwrap();
    assert_eq!((&result["request_id"], &result["status"]), (&json!("r1"), &json!("paid")), "{run}");

    // Mosquitto carried its `online`, then its `offline`; the hub holds its state and sees it gone.
    let statuses = monitor.recv_until(DEADLINE, |m| text(m) == "offline").await.unwrap();
    assert_eq!(statuses.iter().map(text).collect::<Vec<_>>(), ["online", "offline"]);
    let view = wait_for("the appliance offline", DEADLINE, async || {
        let view = device(&home, "kettle").await;
        Ok((!view.online).then_some(view))
    })
    .await
    .unwrap();
    assert_eq!(Value::Object(view.state), json!({"temperature": 21.5}));
    assert_eq!(spending(&payee).await.total_received, Amount::from_base_units(1500));

    assert!(home.stop().await.unwrap().success());
    assert!(payee.stop().await.unwrap().success());
}
