//! MQTT: publish on the hub's broker and subscribe to topics; messages arrive in
//! [`Plugin::on_message`](crate::Plugin::on_message).
//!
//! Every topic published must match one of the manifest's `grants.publish` filters, and every
//! filter subscribed must lie within `grants.subscribe`; otherwise the call is
//! [`Error::NotGranted`]. Subscriptions outlive a fault of the plugin (the host keeps them), and
//! subscribing to a filter again is harmless, so `on_start` may simply subscribe every time.

use crate::json::Value;
use crate::{host, Error, Result};

/// Publishes `payload` on `topic` (no wildcards), retained if `retain`.
pub fn publish(topic: &str, payload: &[u8], retain: bool) -> Result<()> {
    Error::check(host::publish(topic.as_bytes(), payload, retain)).map(drop)
}

/// Publishes a JSON value (compact text) on `topic`.
pub fn publish_json(topic: &str, value: &Value, retain: bool) -> Result<()> {
    publish(topic, value.to_string().as_bytes(), retain)
}

/// Subscribes to a topic filter (`+` and `#` wildcards allowed as whole levels).
pub fn subscribe(filter: &str) -> Result<()> {
    Error::check(host::subscribe(filter.as_bytes())).map(drop)
}

/// Ends a subscription.
pub fn unsubscribe(filter: &str) -> Result<()> {
    Error::check(host::unsubscribe(filter.as_bytes())).map(drop)
}

/// Whether `topic` matches the MQTT topic `filter` (`+` is one level, a final `#` any number of
/// levels including none). Handy to route [`Plugin::on_message`](crate::Plugin::on_message).
///
/// ```
/// use machinomy_sdk::mqtt::topic_matches;
///
/// assert!(topic_matches("machinomy/+/state", "machinomy/meter/state"));
/// assert!(topic_matches("machinomy/meter/#", "machinomy/meter"));
/// assert!(!topic_matches("machinomy/+/state", "machinomy/meter/event/checkout"));
/// ```
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_like_mqtt() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "anything/at/all", true),
            ("a/+", "a/", true),
            ("+/+", "/x", true),
            ("a/b/#", "a/c", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(topic_matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }
}
