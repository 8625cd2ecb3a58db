//! Appliances on the hub's embedded MQTT broker: pairing, availability with a last will, state,
//! events, commands, and signed spend requests paid to another hub over a credit channel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly

use std::time::Duration;

use machinomy_core::{
    Amount, Approval, ApprovalState, DeviceId, PublicKey, SigningKey, SpendRequestMessage, SpendResultMessage,
    SpendStatus, SpendTarget,
};
use machinomy_tests::mosquitto::{MqttClient, loopback_options, try_connect_to};
use machinomy_tests::{TestHub, random_key, wait_for};
use machinomy_web::model::{DeviceView, HubStatus, PairedDevice, SpendingReport};
use rumqttc::{LastWill, QoS};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(20);

/// A hub that grants credit, and a buyer hub with the embedded broker whose fridge may spend
/// 0.000002 USD unasked, 0.00001 a day.
async fn two_hubs() -> (TestHub, TestHub, u16) {
    let mut payee = TestHub::builder().name("grocer").p2p(&[]).build().unwrap();
    payee.start().await.unwrap();
    let api = payee.api().unwrap();
    let addr = wait_for("the payee's peer address", DEADLINE, async || {
        let status: HubStatus = api.get_json("/api/v1/status").await?;
        Ok(status.p2p_addrs.into_iter().find(|a| a.contains("/tcp/")))
    })
    .await
    .unwrap();
    let (builder, port) = TestHub::builder()
        .name("home")
        .p2p(&[&format!("bootstrap = [\"{addr}\"]"), "channel_capacity = \"0.0001\""])
        .extra("[[budget]]\nsubject = \"device:fridge\"\nperiod = \"day\"\nlimit = \"0.00001\"\nauto_approve = \"0.000002\"")
        .embedded_mqtt()
        .unwrap();
    let mut home = builder.build().unwrap();
    home.start().await.unwrap();
    (payee, home, port)
}

async fn pair(hub: &TestHub, id: &str, key: &SigningKey) -> PairedDevice {
    let body = json!({"id": id, "public_key": PublicKey::from(key.verifying_key()).to_hex()});
    let response = hub.api().unwrap().post("/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn connect(port: u16, paired: &PairedDevice, will: bool) -> MqttClient {
    let credentials = paired.credentials.as_ref().unwrap();
    let mut options = loopback_options(port, &credentials.username, &credentials.username, &credentials.password);
    if will {
        let status = format!("machinomy/{}/status", credentials.username);
        options.set_last_will(LastWill::new(status, "offline", QoS::AtLeastOnce, true));
    }
    let mut client = try_connect_to(options).await.unwrap().unwrap();
    let own = format!("machinomy/{}/#", credentials.username);
    client.subscribe_granted(&own, QoS::AtLeastOnce).await.unwrap();
    client
}

async fn device(hub: &TestHub, id: &str) -> DeviceView {
    hub.api().unwrap().get_json(&format!("/api/v1/devices/{id}")).await.unwrap()
}

/// The next message on `topic`, as JSON.
async fn next_on(client: &mut MqttClient, topic: &str) -> Value {
    let seen = client.recv_until(DEADLINE, |p| p.topic == topic).await.unwrap();
    serde_json::from_slice(&seen.last().unwrap().payload).unwrap()
}

fn spend(id: &str, key: &SigningKey, request: &str, amount: u128, payee: PublicKey) -> Vec<u8> {
    let device: DeviceId = id.parse().unwrap();
    let message = SpendRequestMessage::sign(
        &device,
        key,
        request,
        Amount::from_base_units(amount),
        &SpendTarget::Payee(payee),
        "milk",
        None,
    );
    serde_json::to_vec(&message).unwrap()
}

#[tokio::test]
async fn a_paired_device_reports_takes_commands_and_pays_inside_its_budget() {
    let (mut payee, mut home, port) = two_hubs().await;
    let payee_key = payee.api().unwrap().get_json::<HubStatus>("/api/v1/status").await.unwrap().public_key;
    let key = random_key().unwrap();
    let paired = pair(&home, "fridge", &key).await;
    assert_eq!(paired.credentials.as_ref().unwrap().broker, format!("127.0.0.1:{port}"));
    assert!(paired.secret_key.is_none(), "the device brought its own key");

    // Wrong password, or another device's client id: the broker refuses the login (rumqttd
    // closes the connection instead of answering with a return code).
    let wrong = loopback_options(port, "fridge", "fridge", "not-the-password");
    assert!(!matches!(try_connect_to(wrong).await, Ok(Ok(_))));
    let password = &paired.credentials.as_ref().unwrap().password;
    let impostor = loopback_options(port, "oven", "fridge", password);
    assert!(!matches!(try_connect_to(impostor).await, Ok(Ok(_))));

    let mut fridge = connect(port, &paired, true).await;
    fridge.publish("machinomy/fridge/status", QoS::AtLeastOnce, true, "online").await.unwrap();
    fridge.publish("machinomy/fridge/state", QoS::AtLeastOnce, true, r#"{"temperature": 4.5}"#).await.unwrap();
    fridge.publish("machinomy/fridge/event/door", QoS::AtLeastOnce, false, r#"{"open": true}"#).await.unwrap();
    let seen = wait_for("the fridge's state and event", DEADLINE, async || {
        let view = device(&home, "fridge").await;
        let state = view.online && view.state.get("temperature") == Some(&json!(4.5));
        Ok((state && !view.recent_events.is_empty()).then_some(view))
    })
    .await
    .unwrap();
    assert!(seen.last_seen.is_some());
    // The event is kept for the owner to see.
    let event = &seen.recent_events[0];
    assert_eq!((event.name.as_str(), event.payload.as_str()), ("door", r#"{"open":true}"#));

    // A command from the owner reaches the device.
    let sent = home.api().unwrap().post("/api/v1/devices/fridge/commands/defrost").json(&json!({"minutes": 5}));
    assert!(sent.send().await.unwrap().status().is_success());
    assert_eq!(next_on(&mut fridge, "machinomy/fridge/cmd/defrost").await, json!({"minutes": 5}));

    // Within the threshold: paid at once, over a channel to the payee hub.
    fridge
        .publish(
            "machinomy/fridge/spend/request",
            QoS::AtLeastOnce,
            false,
            spend("fridge", &key, "r1", 1500, payee_key),
        )
        .await
        .unwrap();
    let result: SpendResultMessage =
        serde_json::from_value(next_on(&mut fridge, "machinomy/fridge/spend/result").await).unwrap();
    assert_eq!((result.request_id.as_str(), result.status), ("r1", SpendStatus::Paid), "{result:?}");

    // Over the threshold: pending, then paid when the owner approves.
    fridge
        .publish(
            "machinomy/fridge/spend/request",
            QoS::AtLeastOnce,
            false,
            spend("fridge", &key, "r2", 3000, payee_key),
        )
        .await
        .unwrap();
    let pending: SpendResultMessage =
        serde_json::from_value(next_on(&mut fridge, "machinomy/fridge/spend/result").await).unwrap();
    assert_eq!(pending.status, SpendStatus::Pending);
    let approval = pending.approval.unwrap();
    let approved = home.api().unwrap().post(&format!("/api/v1/approvals/{approval}/approve")).send().await.unwrap();
    assert!(approved.status().is_success());
    let paid: SpendResultMessage =
        serde_json::from_value(next_on(&mut fridge, "machinomy/fridge/spend/result").await).unwrap();
    assert_eq!((paid.request_id.as_str(), paid.status), ("r2", SpendStatus::Paid), "{paid:?}");

    // A replay, a forged signature and a stranger's key are refused on `error`; nothing is paid.
    fridge
        .publish(
            "machinomy/fridge/spend/request",
            QoS::AtLeastOnce,
            false,
            spend("fridge", &key, "r1", 1500, payee_key),
        )
        .await
        .unwrap();
    let replay = next_on(&mut fridge, "machinomy/fridge/error").await;
    assert!(replay["error"].as_str().unwrap().contains("used already"), "{replay}");
    assert_eq!(replay["request_id"], "r1", "the device is told which request was refused");
    let mut forged: Value = serde_json::from_slice(&spend("fridge", &key, "r3", 1500, payee_key)).unwrap();
    forged["amount"] = json!("1000");
    fridge
        .publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    let refused = next_on(&mut fridge, "machinomy/fridge/error").await;
    assert!(refused["error"].as_str().unwrap().contains("signature"), "{refused}");
    let stranger = random_key().unwrap();
    fridge
        .publish(
            "machinomy/fridge/spend/request",
            QoS::AtLeastOnce,
            false,
            spend("fridge", &stranger, "r4", 1500, payee_key),
        )
        .await
        .unwrap();
    let refused = next_on(&mut fridge, "machinomy/fridge/error").await;
    assert!(refused["error"].as_str().unwrap().contains("signature"), "{refused}");

    // Paying this hub itself is refused at once, not after an approval.
    let own = home.api().unwrap().get_json::<HubStatus>("/api/v1/status").await.unwrap().public_key;
    let to_self = spend("fridge", &key, "r5", 1500, own);
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, to_self).await.unwrap();
    let refused = next_on(&mut fridge, "machinomy/fridge/error").await;
    assert!(refused["error"].as_str().unwrap().contains("this hub itself"), "{refused}");
    assert_eq!(refused["request_id"], "r5");
    assert!(paired.next_steps.iter().any(|step| step.contains("client id \"fridge\"")), "{:?}", paired.next_steps);

    // Both hubs' books agree: 4500 base units went from the fridge to the grocer.
    let spent: SpendingReport = home.api().unwrap().get_json("/api/v1/spending").await.unwrap();
    let received: SpendingReport = payee.api().unwrap().get_json("/api/v1/spending").await.unwrap();
    assert_eq!(spent.total_paid, Amount::from_base_units(4500), "{spent:?}");
    assert_eq!(received.total_received, Amount::from_base_units(4500), "{received:?}");

    // Dropping the connection fires the last will: the hub sees the fridge go offline.
    drop(fridge);
    wait_for("the fridge offline", DEADLINE, async || Ok((!device(&home, "fridge").await.online).then_some(())))
        .await
        .unwrap();

    // Unpaired while a request waits: the request is denied, and approving it pays nothing.
    let mut fridge = connect(port, &paired, false).await;
    let request = spend("fridge", &key, "r6", 3000, payee_key);
    fridge.publish("machinomy/fridge/spend/request", QoS::AtLeastOnce, false, request).await.unwrap();
    let pending: SpendResultMessage =
        serde_json::from_value(next_on(&mut fridge, "machinomy/fridge/spend/result").await).unwrap();
    assert_eq!(pending.status, SpendStatus::Pending, "{pending:?}");
    let approval = pending.approval.unwrap();
    let removed = home.api().unwrap().delete("/api/v1/devices/fridge").send().await.unwrap();
    assert!(removed.status().is_success());
    let denied: Approval = home.api().unwrap().get_json(&format!("/api/v1/approvals/{approval}")).await.unwrap();
    assert!(
        matches!(&denied.state, ApprovalState::Denied { reason, .. } if reason == "the device was unpaired"),
        "{denied:?}"
    );
    let approve = home.api().unwrap().post(&format!("/api/v1/approvals/{approval}/approve")).send().await.unwrap();
    assert_eq!(approve.status(), 409);
    let spent: SpendingReport = home.api().unwrap().get_json("/api/v1/spending").await.unwrap();
    assert_eq!(spent.total_paid, Amount::from_base_units(4500), "{spent:?}");

    assert!(home.stop().await.unwrap().success());
    assert!(payee.stop().await.unwrap().success());
}

#[tokio::test]
async fn bad_device_input_is_answered_on_error_and_changes_nothing() {
    let (builder, port) = TestHub::builder().name("home").embedded_mqtt().unwrap();
    let mut home = builder.build().unwrap();
    home.start().await.unwrap();
    let key = random_key().unwrap();
    let paired = pair(&home, "oven", &key).await;
    let mut oven = connect(port, &paired, false).await;
    oven.publish("machinomy/oven/state", QoS::AtLeastOnce, true, r#"{"temperature": 180}"#).await.unwrap();
    wait_for("the oven's state", DEADLINE, async || {
        Ok((device(&home, "oven").await.state.get("temperature") == Some(&json!(180))).then_some(()))
    })
    .await
    .unwrap();

    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("machinomy/oven/state", b"not json".to_vec(), "JSON"),
        ("machinomy/oven/state", b"[1, 2]".to_vec(), "object"),
        ("machinomy/oven/status", b"sleepy".to_vec(), "online"),
        ("machinomy/oven/spend/request", br#"{"request_id": 7}"#.to_vec(), "JSON"),
        ("machinomy/oven/telemetry", b"{}".to_vec(), "not a machinomy device topic"),
        ("machinomy/oven/state", vec![b' '; 100 * 1024], "bytes"),
    ];
    for (topic, payload, expected) in cases {
        oven.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        let error = next_on(&mut oven, "machinomy/oven/error").await;
        assert_eq!(error["topic"], topic);
        assert!(error["error"].as_str().unwrap().contains(expected), "{topic}: {error}");
    }
    // None of it changed the state the hub holds.
    assert_eq!(device(&home, "oven").await.state.get("temperature"), Some(&json!(180)));

    // A 1 MB payload is over the broker's limit: the broker drops that connection.
    oven.publish("machinomy/oven/state", QoS::AtMostOnce, false, vec![b'x'; 1024 * 1024]).await.ok();
    oven.closed(DEADLINE).await.unwrap();

    // Ids with wildcards, separators or 200 characters cannot be paired.
    for bad in ["a+b", "a#", "a/b", &"x".repeat(200)] {
        let body = json!({"id": bad});
        let response = home.api().unwrap().post("/api/v1/devices").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }

    // The hub is still up and answering.
    let status: HubStatus = home.api().unwrap().get_json("/api/v1/status").await.unwrap();
    assert_eq!(status.name, "home");
    assert!(home.stop().await.unwrap().success());
}
