//! Plugins' manifests and grants, sans-IO: what a `plugin.toml` may ask for, whether a topic is
//! inside a grant, and what a new version asks for beyond what the owner approved.
//!
//! The hub parses the TOML into [`Manifest`] (unknown keys refused by serde) and checks it here
//! against the owner's [`Ceiling`]; the wasm runtime enforces the result per call.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, Currency};
use crate::budget::Period;

/// Longest MQTT topic or filter a plugin may use, in bytes.
pub const MAX_TOPIC: usize = machinomy_sdk::abi::MAX_TOPIC;
/// Most topic filters, devices, services in one grant list.
pub const MAX_GRANT_ENTRIES: usize = 64;
/// Largest `[config]` table, as JSON bytes.
pub const MAX_CONFIG: usize = 64 * 1024;

/// Why a manifest, a topic or a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("plugin name {0:?} must be 1 to 64 characters of a-z, 0-9, '_' or '-'")]
    BadName(String),
    #[error("version {0:?} must be 1 to 32 characters of a-z, A-Z, 0-9, '.', '-' or '+'")]
    BadVersion(String),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    #[error("{field} is {asked}, above this hub's ceiling of {ceiling} ([plugins] in hub.toml)")]
    AboveCeiling { field: &'static str, asked: u64, ceiling: u64 },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field { field: field.into(), reason: reason.into() }
}

/// `plugin.toml`, as the author wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The module's file name next to the manifest; `<name>.wasm` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<String>,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default)]
    pub limits: Limits,
    /// Free-form settings handed to the plugin as JSON; the owner may override keys.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// What a plugin may do beyond computing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// MQTT filters it may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Filters every topic it publishes on must match.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Devices whose state it may read; `"*"` for every device.
    #[serde(default)]
    pub devices: Vec<String>,
    /// May pay peers (spend, stream ticks) inside its budget.
    #[serde(default)]
    pub pay: bool,
    /// May invoice peers.
    #[serde(default)]
    pub invoice: bool,
    /// Services it may buy, each at most a price per call.
    #[serde(default)]
    pub call: Vec<CallGrant>,
    /// Services it sells to peers.
    #[serde(default)]
    pub sell: Vec<SellGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallGrant {
    pub service: String,
    pub max_price: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SellGrant {
    pub service: String,
    pub price: Amount,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetGrant {
    pub period: Period,
    pub limit: Amount,
    #[serde(default)]
    pub auto_approve: Amount,
}

/// The sandbox's size per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "Limits::default_memory_mib")]
    pub memory_mib: u64,
    #[serde(default = "Limits::default_fuel")]
    pub fuel_per_event: u64,
    #[serde(default = "Limits::default_kv_bytes")]
    pub kv_bytes: u64,
}

impl Limits {
    fn default_memory_mib() -> u64 {
        16
    }
    fn default_fuel() -> u64 {
        50_000_000
    }
    fn default_kv_bytes() -> u64 {
        1024 * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: Self::default_memory_mib(),
            fuel_per_event: Self::default_fuel(),
            kv_bytes: Self::default_kv_bytes(),
        }
    }
}

/// The most any plugin on this hub may ask for (`[plugins]` in hub.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub memory_mib: u64,
    pub fuel_per_event: u64,
    pub kv_bytes: u64,
}

impl Default for Ceiling {
    fn default() -> Self {
        Ceiling { memory_mib: 256, fuel_per_event: 1_000_000_000, kv_bytes: 64 * 1024 * 1024 }
    }
}

/// A plugin name: `[a-z0-9_-]{1,64}`, so it is a budget subject, a file name and a URL segment.
pub fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What a setting's name may be, as the owner is told.
pub const CONFIG_KEY_RULE: &str = "keys are 1 to 64 of a-z, A-Z, 0-9, '_', '-'";

/// A setting's name ([`CONFIG_KEY_RULE`]): it reads the same in `--set key=value`, a line of
/// the settings box and JSON.
pub fn valid_config_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Manifest {
    /// Checks everything that does not depend on other plugins: names, filters, amounts,
    /// limits under `ceiling`.
    pub fn validate(&self, ceiling: &Ceiling) -> Result<(), ManifestError> {
        if !valid_plugin_name(&self.name) {
            return Err(ManifestError::BadName(self.name.clone()));
        }
        let version_ok = (1..=32).contains(&self.version.len())
            && self.version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'));
        if !version_ok {
            return Err(ManifestError::BadVersion(self.version.clone()));
        }
        if self.description.len() > 1024 {
            return Err(field_error("description", "is longer than 1024 bytes"));
        }
        if let Some(wasm) = &self.wasm {
            let plain = !wasm.is_empty()
                && wasm.len() <= 128
                && !wasm.starts_with('.')
                && wasm.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !plain {
                return Err(field_error("wasm", "must be a plain file name next to plugin.toml"));
            }
        }
        self.grants.validate()?;
        let limits = [
            ("limits.memory_mib", self.limits.memory_mib, ceiling.memory_mib),
            ("limits.fuel_per_event", self.limits.fuel_per_event, ceiling.fuel_per_event),
            ("limits.kv_bytes", self.limits.kv_bytes, ceiling.kv_bytes),
        ];
        for (field, asked, ceiling) in limits {
            if asked == 0 {
                return Err(field_error(field, "must be above 0"));
            }
            if asked > ceiling {
                return Err(ManifestError::AboveCeiling { field, asked, ceiling });
            }
        }
        if let Some(key) = self.config.keys().find(|key| !valid_config_key(key)) {
            return Err(field_error("config", format!("{key:?}: {CONFIG_KEY_RULE}")));
        }
        let config_len = serde_json::to_vec(&self.config).map(|c| c.len()).unwrap_or(usize::MAX);
        if config_len > MAX_CONFIG {
            return Err(field_error("config", format!("is over {MAX_CONFIG} bytes as JSON")));
        }
        Ok(())
    }

    /// The module's file name next to the manifest.
    pub fn wasm_file(&self) -> String {
        self.wasm.clone().unwrap_or_else(|| format!("{}.wasm", self.name))
    }
}

impl Grants {
    fn validate(&self) -> Result<(), ManifestError> {
        for (list, name) in [(&self.subscribe, "grants.subscribe"), (&self.publish, "grants.publish")] {
            if list.len() > MAX_GRANT_ENTRIES {
                return Err(field_error(name, format!("has more than {MAX_GRANT_ENTRIES} entries")));
            }
            for (i, filter) in list.iter().enumerate() {
                check_grant_filter(filter).map_err(|e| field_error(format!("{name}[{i}]"), e.to_string()))?;
            }
        }
        if self.devices.len() > MAX_GRANT_ENTRIES {
            return Err(field_error("grants.devices", format!("has more than {MAX_GRANT_ENTRIES} entries")));
        }
        for (i, device) in self.devices.iter().enumerate() {
            if device != "*" && device.parse::<crate::device::DeviceId>().is_err() {
                return Err(field_error(
                    format!("grants.devices[{i}]"),
                    format!("{device:?} is not a device id or \"*\""),
                ));
            }
        }
        for (i, call) in self.call.iter().enumerate() {
            if !crate::wire::valid_service_name(&call.service) {
                return Err(field_error(
                    format!("grants.call[{i}].service"),
                    format!("{:?} is not a service name", call.service),
                ));
            }
        }
        for (i, sell) in self.sell.iter().enumerate() {
            if !crate::wire::valid_service_name(&sell.service) {
                return Err(field_error(
                    format!("grants.sell[{i}].service"),
                    format!("{:?} is not a service name", sell.service),
                ));
            }
            if self.sell.iter().take(i).any(|s| s.service == sell.service) {
                return Err(field_error(
                    format!("grants.sell[{i}].service"),
                    format!("{:?} is sold twice", sell.service),
                ));
            }
            if sell.description.len() > crate::wire::MAX_MEMO {
                return Err(field_error(format!("grants.sell[{i}].description"), "is too long"));
            }
        }
        let spends = self.pay || !self.call.is_empty();
        match &self.budget {
            None if spends => Err(field_error("grants.budget", "is required when the plugin pays or buys services")),
            Some(budget) if budget.auto_approve > budget.limit => Err(field_error(
                "grants.budget.auto_approve",
                format!("{} is above the limit {}", budget.auto_approve, budget.limit),
            )),
            _ => Ok(()),
        }
    }

    /// The topic filter in `subscribe` that allows subscribing to `filter`, if any.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|granted| filter_covers(granted, filter))
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|granted| topic_matches(granted, topic))
    }

    pub fn may_read_device(&self, device: &str) -> bool {
        self.devices.iter().any(|d| d == "*" || d == device)
    }

    /// The most this plugin may pay per call of `service`, if it may buy it at all.
    pub fn call_limit(&self, service: &str) -> Option<Amount> {
        self.call.iter().find(|c| c.service == service).map(|c| c.max_price)
    }

    /// What `self` (a new version's grants) asks for beyond `approved`, one line each, amounts
    /// in `currency`'s units; empty when the new grants are the same or narrower.
    pub fn widening(&self, approved: &Grants, currency: &Currency) -> Vec<String> {
        let money = |amount: Amount| currency.format(amount);
        let mut wider = Vec::new();
        for filter in &self.subscribe {
            if !approved.may_subscribe(filter) {
                wider.push(format!("subscribe to {filter}"));
            }
        }
        for filter in &self.publish {
            if !approved.publish.iter().any(|granted| filter_covers(granted, filter)) {
                wider.push(format!("publish on {filter}"));
            }
        }
        for device in &self.devices {
            if !approved.devices.iter().any(|d| d == "*" || d == device) {
                wider.push(format!("read the state of {device}"));
            }
        }
        if self.pay && !approved.pay {
            wider.push("pay peers".to_owned());
        }
        if self.invoice && !approved.invoice {
            wider.push("invoice peers".to_owned());
        }
        for call in &self.call {
            match approved.call_limit(&call.service) {
                Some(max) if max >= call.max_price => {}
                Some(max) => wider.push(format!(
                    "pay up to {} per call of {} (was {})",
                    money(call.max_price),
                    call.service,
                    money(max)
                )),
                None => wider.push(format!("buy {} at up to {} per call", call.service, money(call.max_price))),
            }
        }
        for sell in &self.sell {
            if !approved.sell.iter().any(|s| s.service == sell.service) {
                wider.push(format!("sell {}", sell.service));
            }
        }
        match (&self.budget, &approved.budget) {
            (Some(new), Some(old)) => {
                if new.limit > old.limit || new.period != old.period {
                    wider.push(format!(
                        "a budget of {} per {} (was {} per {})",
                        money(new.limit),
                        period_name(new.period),
                        money(old.limit),
                        period_name(old.period)
                    ));
                }
                if new.auto_approve > old.auto_approve {
                    wider.push(format!(
                        "auto-approve up to {} (was {})",
                        money(new.auto_approve),
                        money(old.auto_approve)
                    ));
                }
            }
            (Some(new), None) => {
                wider.push(format!("a budget of {} per {}", money(new.limit), period_name(new.period)))
            }
            (None, _) => {}
        }
        wider
    }
}

fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
    }
}

impl Limits {
    /// What `self` asks for beyond `approved`.
    pub fn widening(&self, approved: &Limits) -> Vec<String> {
        let mut wider = Vec::new();
        if self.memory_mib > approved.memory_mib {
            wider.push(format!("{} MiB of memory (was {})", self.memory_mib, approved.memory_mib));
        }
        if self.fuel_per_event > approved.fuel_per_event {
            wider.push(format!("{} fuel per event (was {})", self.fuel_per_event, approved.fuel_per_event));
        }
        if self.kv_bytes > approved.kv_bytes {
            wider.push(format!("{} bytes of storage (was {})", self.kv_bytes, approved.kv_bytes));
        }
        wider
    }
}

/// Why a topic or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TOPIC} bytes")]
    TooLong,
    #[error("contains a NUL character")]
    Nul,
    #[error("a topic to publish on may not contain '+' or '#'")]
    WildcardInTopic,
    #[error("'#' may only be a whole last level and '+' only a whole level")]
    BadWildcard,
    #[error("may not start with a wildcard: grant a named first level, not everything")]
    WildcardFirstLevel,
    #[error("topics starting with '$' belong to the broker")]
    BrokerTopic,
}

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC {
        return Err(TopicError::TooLong);
    }
    if text.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic a plugin publishes on: no wildcards.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic);
    }
    if topic.starts_with('$') {
        return Err(TopicError::BrokerTopic);
    }
    Ok(())
}

/// A filter a plugin subscribes to: MQTT wildcard rules.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    if filter.starts_with('$') {
        return Err(TopicError::BrokerTopic);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        let bad = match *level {
            "+" => false,
            "#" => i != last,
            other => other.contains(['+', '#']),
        };
        if bad {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// A filter in a grant: a valid filter whose first level is named, so no manifest can ask for
/// every topic on the broker (`#`, `+/#`).
pub fn check_grant_filter(filter: &str) -> Result<(), TopicError> {
    check_filter(filter)?;
    match filter.split('/').next() {
        Some("+" | "#") => Err(TopicError::WildcardFirstLevel),
        _ => Ok(()),
    }
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 §4.7).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is also matched by `outer`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            // `+` covers one level of anything, but not `#` (which may be many levels).
            (Some("+"), Some(i)) if i != "#" => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A plugin's settings: the manifest's `[config]` with the owner's overrides on top.
pub fn merge_config(
    manifest: &serde_json::Map<String, serde_json::Value>,
    overrides: &BTreeMap<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut config = manifest.clone();
    for (key, value) in overrides {
        config.insert(key.clone(), value.clone());
    }
    config
}

/// Whether the plugin runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PluginState {
    Enabled,
    Disabled,
    /// Stopped by the hub after repeated faults; the owner re-enables it.
    Quarantined {
        reason: String,
    },
}

impl fmt::Display for PluginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginState::Enabled => f.write_str("enabled"),
            PluginState::Disabled => f.write_str("disabled"),
            PluginState::Quarantined { reason } => write!(f, "quarantined: {reason}"),
        }
    }
}

/// Faults within this window count towards quarantine.
pub const FAULT_WINDOW_SECS: u64 = 600;
/// This many faults inside the window quarantine a plugin.
pub const FAULTS_TO_QUARANTINE: usize = 3;

/// Counts a plugin's recent faults; says when it must be quarantined.
#[derive(Debug, Clone, Default)]
pub struct FaultCounter {
    /// Times of the faults inside the window, oldest first.
    recent: std::collections::VecDeque<crate::Timestamp>,
}

impl FaultCounter {
    /// Records a fault at `now`; true when the plugin has now faulted too often.
    pub fn record(&mut self, now: crate::Timestamp) -> bool {
        let window_start = now.secs().saturating_sub(FAULT_WINDOW_SECS);
        while self.recent.front().is_some_and(|t| t.secs() < window_start) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() >= FAULTS_TO_QUARANTINE
    }

    pub fn count(&self) -> usize {
        self.recent.len()
    }

    pub fn clear(&mut self) {
        self.recent.clear();
    }
}

/// Orders two manifest versions the way people read them: dot-separated parts compared as
/// numbers when both are numbers ("0.10.0" after "0.9.1"), else as text; a version with a
/// pre-release or build suffix (`-rc1`, `+git`) comes before the same version without one.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let split = |v: &str| -> (String, Option<String>) {
        match v.split_once(['-', '+']) {
            Some((core, suffix)) => (core.to_owned(), Some(suffix.to_owned())),
            None => (v.to_owned(), None),
        }
    };
    let ((a_core, a_suffix), (b_core, b_suffix)) = (split(a), split(b));
    let mut a_parts = a_core.split('.');
    let mut b_parts = b_core.split('.');
    loop {
        let order = match (a_parts.next(), b_parts.next()) {
            (None, None) => break,
            // A missing part is a zero: "1.0" is "1.0.0".
            (Some(x), None) => x.parse::<u64>().map_or(Ordering::Greater, |n| n.cmp(&0)),
            (None, Some(y)) => y.parse::<u64>().map_or(Ordering::Less, |n| 0.cmp(&n)),
            (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            },
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    match (a_suffix, b_suffix) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(&y),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_as_people_read_them() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        for (a, b, order) in [
            ("0.1.0", "0.3.0", Less),
            ("0.10.0", "0.9.1", Greater),
            ("1.0", "1.0.0", Equal),
            ("1.0.1", "1.0", Greater),
            ("2.0.0-rc1", "2.0.0", Less),
            ("2.0.0", "2.0.0", Equal),
            ("1.a", "1.b", Less),
        ] {
            assert_eq!(compare_versions(a, b), order, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), order.reverse(), "{b} vs {a}");
        }
    }

    fn manifest(toml_grants: Grants) -> Manifest {
        Manifest {
            name: "demo".into(),
            version: "1.0.0".into(),
            description: String::new(),
            wasm: None,
            grants: toml_grants,
            limits: Limits::default(),
            config: serde_json::Map::new(),
        }
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(topic_matches("machinomy/+/state", "machinomy/fridge/state"));
        assert!(!topic_matches("machinomy/+/state", "machinomy/fridge/event/x"));
        assert!(topic_matches("machinomy/fridge/#", "machinomy/fridge"));
        assert!(topic_matches("machinomy/fridge/#", "machinomy/fridge/event/open"));
        assert!(!topic_matches("machinomy/fridge", "machinomy/fridge/state"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/+", "a"));
    }

    #[test]
    fn coverage_is_containment() {
        assert!(filter_covers("machinomy/#", "machinomy/+/state"));
        assert!(filter_covers("machinomy/+/state", "machinomy/fridge/state"));
        assert!(!filter_covers("machinomy/+/state", "machinomy/#"));
        assert!(!filter_covers("machinomy/+", "machinomy/#"));
        assert!(!filter_covers("machinomy/fridge/state", "machinomy/+/state"));
        assert!(filter_covers("a/b", "a/b"));
    }

    #[test]
    fn a_grant_may_not_ask_for_everything() {
        assert_eq!(check_grant_filter("#"), Err(TopicError::WildcardFirstLevel));
        assert_eq!(check_grant_filter("+/state"), Err(TopicError::WildcardFirstLevel));
        assert_eq!(check_grant_filter("$SYS/#"), Err(TopicError::BrokerTopic));
        assert_eq!(check_grant_filter("a/#/b"), Err(TopicError::BadWildcard));
        assert_eq!(check_grant_filter("a/b+"), Err(TopicError::BadWildcard));
        assert!(check_grant_filter("machinomy/+/state").is_ok());
        assert_eq!(check_topic("a/+"), Err(TopicError::WildcardInTopic));
        assert_eq!(check_topic(&"a".repeat(MAX_TOPIC + 1)), Err(TopicError::TooLong));
    }

    #[test]
    fn manifests_are_checked_against_the_ceiling() {
        let mut m = manifest(Grants::default());
        assert!(m.validate(&Ceiling::default()).is_ok());
        m.limits.memory_mib = 10_000;
        assert!(matches!(
            m.validate(&Ceiling::default()),
            Err(ManifestError::AboveCeiling { field: "limits.memory_mib", .. })
        ));
        let mut m = manifest(Grants { subscribe: vec!["#".into()], ..Grants::default() });
        assert!(
            matches!(m.validate(&Ceiling::default()), Err(ManifestError::Field { field, .. }) if field == "grants.subscribe[0]")
        );
        m.grants.subscribe.clear();
        m.grants.pay = true;
        assert!(m.validate(&Ceiling::default()).is_err(), "paying needs a budget");
        m.name = "Bad Name".into();
        assert!(matches!(m.validate(&Ceiling::default()), Err(ManifestError::BadName(_))));
    }

    #[test]
    fn widening_lists_what_is_new() {
        let old = Grants {
            subscribe: vec!["machinomy/fridge/#".into()],
            call: vec![CallGrant { service: "grocery".into(), max_price: Amount::from_base_units(10) }],
            budget: Some(BudgetGrant {
                period: Period::Day,
                limit: Amount::from_base_units(100),
                auto_approve: Amount::ZERO,
            }),
            pay: true,
            ..Grants::default()
        };
        let narrower = Grants { subscribe: vec!["machinomy/fridge/state".into()], ..old.clone() };
        let eur = Currency::new("EUR", 2).unwrap();
        assert!(narrower.widening(&old, &eur).is_empty());
        let wider = Grants {
            subscribe: vec!["machinomy/+/state".into()],
            call: vec![CallGrant { service: "grocery".into(), max_price: Amount::from_base_units(11) }],
            invoice: true,
            ..old.clone()
        };
        let lines = wider.widening(&old, &eur);
        assert_eq!(
            lines,
            [
                "subscribe to machinomy/+/state",
                "invoice peers",
                "pay up to 0.11 EUR per call of grocery (was 0.10 EUR)"
            ]
        );
        let bigger = Grants {
            budget: Some(BudgetGrant {
                period: Period::Day,
                limit: Amount::from_base_units(200),
                auto_approve: Amount::from_base_units(5),
            }),
            ..old.clone()
        };
        assert_eq!(
            bigger.widening(&old, &eur),
            ["a budget of 2.00 EUR per day (was 1.00 EUR per day)", "auto-approve up to 0.05 EUR (was 0.00 EUR)"]
        );
    }

    #[test]
    fn three_faults_in_ten_minutes_quarantine() {
        let mut faults = FaultCounter::default();
        let t = crate::Timestamp;
        assert!(!faults.record(t(0)));
        assert!(!faults.record(t(1)));
        // The first two fell out of the window.
        assert!(!faults.record(t(700)));
        assert!(!faults.record(t(701)));
        assert!(faults.record(t(702)));
    }
}
