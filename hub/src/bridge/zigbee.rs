//! Zigbee2MQTT ingestion: devices Zigbee2MQTT publishes (`<base>/<friendly name>`, with
//! `/availability`) join the registry on their first message; commands go to `<base>/<name>/set`.

use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::{Bridge, BridgeEvent};
use crate::hub::now;
use crate::store::{DeviceKind, DeviceRecord};
use machinomy_core::DeviceId;

/// A registry id for a Zigbee2MQTT friendly name: lower case, other characters as `_`.
pub(super) fn device_id(friendly_name: &str) -> Option<DeviceId> {
    let id: String = friendly_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
            _ => '_',
        })
        .take(60)
        .collect();
    format!("z2m-{id}").parse().ok()
}

/// The topic and body for command `name` to a Zigbee2MQTT device: `set` sends the payload as
/// it is (`{"state": "ON"}`), any other name sets that one attribute.
pub(super) fn command(base: &str, friendly_name: &str, name: &str, payload: Value) -> (String, Value) {
    let body = if name == "set" {
        payload
    } else {
        let mut one = Map::new();
        one.insert(name.to_owned(), payload);
        Value::Object(one)
    };
    (format!("{base}/{friendly_name}/set"), body)
}

enum Message {
    State(Map<String, Value>),
    Availability(bool),
}

fn read(rest: &str, payload: &[u8]) -> Option<(String, Message)> {
    if rest.starts_with("bridge/") || payload.is_empty() || payload.len() > machinomy_core::device::MAX_PAYLOAD {
        return None;
    }
    if let Some(name) = rest.strip_suffix("/availability") {
        let online = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(object)) => object.get("state").and_then(Value::as_str) == Some("online"),
            _ => payload.trim_ascii() == b"online",
        };
        return Some((name.to_owned(), Message::Availability(online)));
    }
    if rest.ends_with("/set") || rest.ends_with("/get") {
        return None;
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(state)) => Some((rest.to_owned(), Message::State(state))),
        _ => None,
    }
}

pub(super) async fn on_message(bridge: &Bridge, base: &str, rest: &str, payload: &[u8]) {
    let Some((friendly_name, message)) = read(rest, payload) else {
        debug!(topic = %format!("{base}/{rest}"), "ignored a Zigbee2MQTT message");
        return;
    };
    if let Some(id) = bridge.registry().by_friendly_name(&friendly_name) {
        return apply(bridge, &id, message);
    }
    let Some(id) = device_id(&friendly_name) else { return };
    if bridge.registry().contains(&id) {
        warn!(%friendly_name, %id, "a Zigbee2MQTT device maps to an id already paired; ignored");
        return;
    }
    // First message from this device: pair it (durably), then apply what it said. Awaited, not
    // spawned: Zigbee2MQTT sends a device's retained availability and state back to back, and
    // the second must find the device paired, not race the first to pair it (and be dropped).
    let record = DeviceRecord {
        id: id.clone(),
        name: friendly_name.clone(),
        kind: DeviceKind::Zigbee2mqtt { friendly_name },
        public_key: None,
        password_hash: None,
        added_at: now(),
        removed_at: None,
    };
    match bridge.registry().add(record).await {
        Ok(_) => {
            bridge.emit(BridgeEvent::Paired { device: id.clone() });
            apply(bridge, &id, message);
        }
        Err(e) => debug!(%id, error = %e, "did not add a Zigbee2MQTT device"),
    }
}

fn apply(bridge: &Bridge, id: &DeviceId, message: Message) {
    match message {
        Message::State(state) => bridge.state_reported(id, state, true, now()),
        Message::Availability(online) => {
            if bridge.registry().set_online(id, online, now()) != Some(online) {
                bridge.emit(BridgeEvent::Availability { device: id.clone(), online });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn friendly_names_become_safe_ids() {
        assert_eq!(device_id("Living Room/Lamp").unwrap().as_str(), "z2m-living_room_lamp");
        assert_eq!(device_id(&"x".repeat(200)).unwrap().as_str().len(), 64);
    }

    #[test]
    fn commands_go_to_set() {
        let (topic, body) = command("zigbee2mqtt", "lamp", "state", Value::from("ON"));
        assert_eq!(topic, "zigbee2mqtt/lamp/set");
        assert_eq!(body, serde_json::json!({"state": "ON"}));
        let (_, body) = command("zigbee2mqtt", "lamp", "set", serde_json::json!({"brightness": 3}));
        assert_eq!(body, serde_json::json!({"brightness": 3}));
    }

    #[test]
    fn bridge_topics_and_garbage_are_ignored() {
        assert!(read("bridge/state", b"online").is_none());
        assert!(read("lamp", b"not json").is_none());
        assert!(read("lamp/set", b"{}").is_none());
        assert!(matches!(read("lamp/availability", br#"{"state":"online"}"#), Some((_, Message::Availability(true)))));
        assert!(matches!(read("lamp", br#"{"state":"ON"}"#), Some((n, Message::State(_))) if n == "lamp"));
    }
}
