//! Home Assistant MQTT discovery: one sensor per state field of each device, reading the
//! device's retained `state` topic, available while its `status` says online. Retained, so Home
//! Assistant finds them whenever it starts; announced again when it says `online`.

use serde_json::{Value, json};

use super::Device;

/// Field names Home Assistant accepts in an object id.
fn valid_field(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn component(value: Option<&Value>) -> &'static str {
    match value {
        Some(Value::Bool(_)) => "binary_sensor",
        _ => "sensor",
    }
}

fn config_topic(prefix: &str, component: &str, device: &Device, field: &str) -> String {
    format!("{prefix}/{component}/machinomy_{}/{field}/config", device.record.id)
}

/// Discovery messages `(topic, payload)` for `fields` of `device`.
pub(super) fn discovery(prefix: &str, device: &Device, fields: &[String]) -> Vec<(String, Vec<u8>)> {
    let id = &device.record.id;
    fields
        .iter()
        .filter(|field| valid_field(field))
        .map(|field| {
            let component = component(device.state.get(field.as_str()));
            let mut config = json!({
                "name": field,
                "unique_id": format!("machinomy_{id}_{field}"),
                "object_id": format!("machinomy_{id}_{field}"),
                "state_topic": machinomy_core::TopicKind::State.topic(id),
                "value_template": format!("{{{{ value_json.{field} }}}}"),
                "availability_topic": machinomy_core::TopicKind::Status.topic(id),
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {
                    "identifiers": [format!("machinomy_{id}")],
                    "name": device.record.name,
                    "via_device": "machinomy_hub",
                },
            });
            if component == "binary_sensor"
                && let Some(object) = config.as_object_mut()
            {
                object.insert("payload_on".to_owned(), json!("True"));
                object.insert("payload_off".to_owned(), json!("False"));
            }
            (config_topic(prefix, component, device, field), serde_json::to_vec(&config).unwrap_or_default())
        })
        .collect()
}

/// Every discovery topic of `device` (to clear them when it is removed).
pub(super) fn topics(prefix: &str, device: &Device) -> Vec<String> {
    device
        .state
        .iter()
        .filter(|(field, _)| valid_field(field))
        .map(|(field, value)| config_topic(prefix, component(Some(value)), device, field))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::store::{DeviceKind, DeviceRecord};
    use machinomy_core::Timestamp;

    fn thermometer() -> Device {
        let mut state = serde_json::Map::new();
        state.insert("temperature".into(), json!(21.5));
        state.insert("door_open".into(), json!(false));
        state.insert("bad key".into(), json!(1));
        Device {
            record: DeviceRecord {
                id: "kitchen".parse().unwrap(),
                name: "Kitchen".into(),
                kind: DeviceKind::Mqtt,
                public_key: None,
                password_hash: None,
                added_at: Timestamp(0),
                removed_at: None,
            },
            online: true,
            last_seen: None,
            state,
            events: Default::default(),
        }
    }

    #[test]
    fn each_valid_field_becomes_an_entity_on_the_device_topics() {
        let device = thermometer();
        let fields: Vec<String> = device.state.keys().cloned().collect();
        let messages = discovery("homeassistant", &device, &fields);
        assert_eq!(messages.len(), 2, "the field with a space is skipped");
        let (topic, payload) = messages.iter().find(|(t, _)| t.contains("temperature")).unwrap();
        assert_eq!(topic, "homeassistant/sensor/machinomy_kitchen/temperature/config");
        let config: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(config["state_topic"], "machinomy/kitchen/state");
        assert_eq!(config["availability_topic"], "machinomy/kitchen/status");
        assert_eq!(config["value_template"], "{{ value_json.temperature }}");
        assert!(messages.iter().any(|(t, _)| t == "homeassistant/binary_sensor/machinomy_kitchen/door_open/config"));
        assert_eq!(topics("homeassistant", &device).len(), 2);
    }
}
