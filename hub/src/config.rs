//! `hub.toml`: parsed strictly (unknown keys are errors naming the key and the file), then
//! validated into typed settings. Every key has a default, so an empty file is a valid config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use machinomy_core::{Amount, Budget, Currency, Period, Subject};
use serde::Deserialize;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write config {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Key { path: PathBuf, key: String, message: String },
    #[error("no home directory: set HOME, XDG_CONFIG_HOME or pass --config")]
    NoHome,
}

/// The file as written: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    ledger: RawLedgers,
    #[serde(default)]
    budget: Vec<RawBudget>,
    #[serde(default)]
    p2p: RawP2p,
    #[serde(default)]
    sell: Vec<RawSell>,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    ble: RawBle,
    #[serde(default)]
    homeassistant: RawHomeAssistant,
    #[serde(default)]
    zigbee2mqtt: RawZigbee2Mqtt,
    #[serde(default)]
    plugins: RawPlugins,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    enabled: Option<bool>,
    dir: Option<PathBuf>,
    max_memory_mib: Option<u64>,
    max_fuel_per_event: Option<u64>,
    max_kv_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    mode: Option<String>,
    listen: Option<SocketAddr>,
    url: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBle {
    enabled: Option<bool>,
    backend: Option<String>,
    profiles: Option<PathBuf>,
    poll_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeAssistant {
    discovery: Option<bool>,
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZigbee2Mqtt {
    enabled: Option<bool>,
    base_topic: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawP2p {
    enabled: Option<bool>,
    listen: Option<Vec<String>>,
    bootstrap: Option<Vec<String>>,
    mdns: Option<bool>,
    relay_server: Option<bool>,
    relays: Option<Vec<String>>,
    channel_capacity: Option<String>,
    offer_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSell {
    name: String,
    price: String,
    #[serde(default)]
    description: String,
    topic: Option<String>,
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    approval_ttl_secs: Option<u64>,
    max_pending_approvals: Option<usize>,
    time_zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedgers {
    #[serde(default)]
    credit: RawCredit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredit {
    currency: Option<String>,
    decimals: Option<u8>,
    max_credit_per_peer: Option<String>,
    settlement_period_secs: Option<u64>,
    min_settlement_period_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    subject: String,
    period: String,
    limit: String,
    auto_approve: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (or would be written to).
    pub path: PathBuf,
    pub hub: HubSettings,
    pub web: WebSettings,
    pub credit: CreditSettings,
    /// Budgets from the file; applied at start, so the file wins over the API for these subjects.
    pub budgets: Vec<Budget>,
    pub p2p: P2pSettings,
    /// Services this hub sells to peers.
    pub sell: Vec<SellSettings>,
    pub mqtt: MqttSettings,
    pub ble: BleSettings,
    pub homeassistant: HomeAssistantSettings,
    pub zigbee2mqtt: Zigbee2MqttSettings,
    /// `None` when plugins are off.
    pub plugins: Option<crate::plugin::PluginSettings>,
}

/// Where the appliances' MQTT broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttSettings {
    /// No broker and no bridge (BLE devices still work).
    Off,
    /// The hub runs the broker itself (rumqttd), on `listen`.
    Embedded { listen: SocketAddr },
    /// A broker the home already runs (Mosquitto), which the hub joins as `username`.
    External { host: String, port: u16, username: String, password_file: Option<PathBuf> },
}

pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleSettings {
    pub enabled: bool,
    pub backend: BleBackendKind,
    /// A directory of device profiles (`*.toml`).
    pub profiles: Option<PathBuf>,
    /// How often fields that do not notify are read again.
    pub poll_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BleBackendKind {
    /// The system's Bluetooth adapter, through BlueZ (btleplug).
    Btleplug,
    /// In-memory peripherals, for trying the hub without hardware.
    Simulated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    /// Publish Home Assistant MQTT discovery for every device.
    pub discovery: bool,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zigbee2MqttSettings {
    /// Bring Zigbee2MQTT's devices into the registry.
    pub enabled: bool,
    pub base_topic: String,
}

#[derive(Debug, Clone)]
pub struct P2pSettings {
    pub enabled: bool,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs (with `/p2p/<peer id>`) to connect to at start.
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    /// Relay other hubs' connections (for hubs behind NATs).
    pub relay_server: bool,
    /// Relays to be reachable through.
    pub relays: Vec<String>,
    /// Credit to ask for when this hub opens a channel to a seller.
    pub channel_capacity: Amount,
    /// How long this hub's offers stay valid; they are re-announced well before.
    pub offer_ttl_secs: u64,
}

/// A service this hub sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellSettings {
    pub name: String,
    pub price: Amount,
    pub description: String,
    pub answer: ServiceAnswer,
}

/// What answers a call to a sold service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAnswer {
    /// The latest retained state of a device topic (`machinomy/<device>/state`).
    DeviceState { device: String },
    /// A fixed reply (a price list, a notice, a test fixture).
    Text(String),
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub name: String,
    pub data_dir: PathBuf,
    /// How long a pending spend waits for the owner before it expires.
    pub approval_ttl_secs: u64,
    /// Pending approvals beyond this are denied outright, so a noisy device cannot flood the owner.
    pub max_pending_approvals: usize,
    /// The home's time zone: the web UI shows times in it and reports count its days.
    pub time_zone: jiff::tz::TimeZone,
}

#[derive(Debug, Clone)]
pub struct WebSettings {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct CreditSettings {
    pub currency: Currency,
    /// The most credit this hub grants any one peer across its open channels.
    pub max_credit_per_peer: Amount,
    /// The settlement period this hub asks for when it opens a channel.
    pub settlement_period_secs: u64,
    /// The shortest settlement period it accepts from a peer opening a channel to it.
    pub min_settlement_period_secs: u64,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where config and data live by default (XDG base directories).
#[derive(Debug, Clone)]
pub struct DefaultPaths {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
}

impl DefaultPaths {
    pub fn from_env() -> Result<DefaultPaths, ConfigError> {
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let xdg = |var: &str, fallback: &str| -> Result<PathBuf, ConfigError> {
            match std::env::var_os(var).filter(|v| !v.is_empty()) {
                Some(dir) => Ok(PathBuf::from(dir)),
                None => home.as_ref().map(|h| h.join(fallback)).ok_or(ConfigError::NoHome),
            }
        };
        Ok(DefaultPaths {
            config_file: xdg("XDG_CONFIG_HOME", ".config")?.join("machinomy").join("hub.toml"),
            data_dir: xdg("XDG_DATA_HOME", ".local/share")?.join("machinomy"),
        })
    }
}

/// What `run` and `init` write when there is no config yet.
pub const FIRST_RUN_CONFIG: &str = "\
# Machinomy hub configuration. Every key is optional and has a default;
# packaging/hub.example.toml in the source tree documents each one.

[hub]
name = \"machinomy-hub\"
";

impl Config {
    /// Reads and validates the config at `path`. `default_data_dir` applies when the file does
    /// not set `hub.data_dir`.
    pub fn load(path: &Path, default_data_dir: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path, default_data_dir)
    }

    /// Loads the config, first writing the first-run config if there is none.
    pub fn load_or_create(path: &Path, default_data_dir: &Path) -> Result<(Config, bool), ConfigError> {
        let created = match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(FIRST_RUN_CONFIG.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|source| ConfigError::Write { path: path.to_owned(), source })?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent)
                    .map_err(|source| ConfigError::Write { path: path.to_owned(), source })?;
                return Config::load_or_create(path, default_data_dir);
            }
            Err(source) => return Err(ConfigError::Write { path: path.to_owned(), source }),
        };
        Ok((Config::load(path, default_data_dir)?, created))
    }

    pub fn parse(text: &str, path: &Path, default_data_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_strict(text).map_err(|e| match e.key {
            Some(key) => ConfigError::Key { path: path.to_owned(), key, message: e.message },
            None => ConfigError::Syntax { path: path.to_owned(), message: e.message },
        })?;
        raw.validate(path, default_data_dir)
    }
}

/// Why a TOML file could not be read into its raw shape: the key at fault (if the syntax was
/// fine) and one line saying why.
#[derive(Debug)]
pub(crate) struct TomlError {
    pub key: Option<String>,
    pub message: String,
}

/// Reads TOML into `T`, naming the key at fault (with `deny_unknown_fields`, unknown keys too).
/// Shared by `hub.toml` and the BLE device profiles.
pub(crate) fn parse_strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| TomlError { key: None, message: one_line(&e.to_string()) })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let message = one_line(&e.into_inner().to_string());
        TomlError { key: (key != "." && !key.is_empty()).then_some(key), message }
    })
}

/// Reads `mqtt://host:port` (port 1883 if absent). TLS brokers are not supported yet: the
/// bridge is meant for a broker on the same machine or home network.
fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let Some(rest) = url.strip_prefix("mqtt://") else {
        return Err(format!("{url:?} must look like mqtt://host:port (mqtts:// is not supported)"));
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| format!("{port:?} is not a port number"))?),
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// TOML errors come with a multi-line snippet; the CLI promises one clear line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // toml puts the actual complaint on the last line, after the source excerpt.
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if lines.len() > 1 => format!("{last} ({first})"),
        (Some(only), _) => (*only).to_owned(),
        _ => message.to_owned(),
    }
}

impl RawConfig {
    fn validate(self, path: &Path, default_data_dir: &Path) -> Result<Config, ConfigError> {
        let key_error =
            |key: &str, message: String| ConfigError::Key { path: path.to_owned(), key: key.to_owned(), message };

        let name = self.hub.name.unwrap_or_else(|| "machinomy-hub".to_owned());
        if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(key_error("hub.name", "must be 1 to 64 printable characters".to_owned()));
        }
        let data_dir = match self.hub.data_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(key_error("hub.data_dir", "must not be empty".to_owned()));
            }
            // A relative data dir is relative to the config file, not to wherever the hub was started.
            Some(dir) if dir.is_relative() => path.parent().unwrap_or(Path::new(".")).join(dir),
            Some(dir) => dir,
            None if default_data_dir.as_os_str().is_empty() => {
                return Err(key_error(
                    "hub.data_dir",
                    "is not set, and there is no HOME or XDG_DATA_HOME to default to".to_owned(),
                ));
            }
            None => default_data_dir.to_owned(),
        };
        let approval_ttl_secs = self.hub.approval_ttl_secs.unwrap_or(24 * 3600);
        if approval_ttl_secs == 0 {
            return Err(key_error("hub.approval_ttl_secs", "must be more than 0".to_owned()));
        }
        let max_pending_approvals = self.hub.max_pending_approvals.unwrap_or(1000);
        if max_pending_approvals == 0 {
            return Err(key_error("hub.max_pending_approvals", "must be more than 0".to_owned()));
        }
        let time_zone = match self.hub.time_zone.as_deref() {
            // The machine's own zone (TZ, else /etc/localtime); UTC where it has none.
            None | Some("") => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                key_error(
                    "hub.time_zone",
                    format!("{name:?} is not a time zone this machine knows (an IANA name such as \"Europe/Berlin\")"),
                )
            })?,
        };

        let listen = match self.web.listen {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse().map_err(|_| key_error("web.listen", "bad default".to_owned()))?,
        };

        let code = self.ledger.credit.currency.unwrap_or_else(|| "USD".to_owned());
        let decimals = self.ledger.credit.decimals.unwrap_or(9);
        let currency =
            Currency::new(&code, decimals).map_err(|e| key_error("ledger.credit.currency", e.to_string()))?;
        let max_credit_per_peer = match self.ledger.credit.max_credit_per_peer {
            Some(text) => {
                currency.parse(&text).map_err(|e| key_error("ledger.credit.max_credit_per_peer", e.to_string()))?
            }
            None => currency.parse("10").map_err(|e| key_error("ledger.credit.max_credit_per_peer", e.to_string()))?,
        };
        let settlement_period_secs = self.ledger.credit.settlement_period_secs.unwrap_or(24 * 3600);
        let min_settlement_period_secs = self.ledger.credit.min_settlement_period_secs.unwrap_or(3600);
        if settlement_period_secs < min_settlement_period_secs {
            return Err(key_error(
                "ledger.credit.settlement_period_secs",
                format!("is shorter than min_settlement_period_secs ({min_settlement_period_secs})"),
            ));
        }

        let mut budgets: Vec<Budget> = Vec::with_capacity(self.budget.len());
        for (i, raw) in self.budget.into_iter().enumerate() {
            let key = |field: &str| format!("budget[{i}].{field}");
            let subject: Subject = raw
                .subject
                .parse()
                .map_err(|e: machinomy_core::BudgetError| key_error(&key("subject"), e.to_string()))?;
            let period: Period = raw
                .period
                .parse()
                .map_err(|e: machinomy_core::BudgetError| key_error(&key("period"), e.to_string()))?;
            let limit = currency.parse(&raw.limit).map_err(|e| key_error(&key("limit"), e.to_string()))?;
            let auto_approve =
                currency.parse(&raw.auto_approve).map_err(|e| key_error(&key("auto_approve"), e.to_string()))?;
            let budget = Budget::new(subject, period, limit, auto_approve)
                .map_err(|e| key_error(&key("auto_approve"), e.to_string()))?;
            if let Some(problem) = budget_subject_problem(&budget.subject) {
                // Every command reads this file: say how to get going again.
                let problem = format!("{problem}; remove or fix this [[budget]] to start the hub");
                return Err(key_error(&key("subject"), problem));
            }
            if budgets.iter().any(|b| b.subject == budget.subject) {
                return Err(key_error(&key("subject"), format!("{} has a budget already", budget.subject)));
            }
            budgets.push(budget);
        }

        let p2p = self.p2p;
        let p2p = P2pSettings {
            enabled: p2p.enabled.unwrap_or(true),
            listen: p2p.listen.unwrap_or_else(|| {
                vec!["/ip4/0.0.0.0/tcp/4001".to_owned(), "/ip4/0.0.0.0/udp/4001/quic-v1".to_owned()]
            }),
            bootstrap: p2p.bootstrap.unwrap_or_default(),
            mdns: p2p.mdns.unwrap_or(true),
            relay_server: p2p.relay_server.unwrap_or(false),
            relays: p2p.relays.unwrap_or_default(),
            channel_capacity: currency
                .parse(p2p.channel_capacity.as_deref().unwrap_or("1"))
                .map_err(|e| key_error("p2p.channel_capacity", e.to_string()))?,
            offer_ttl_secs: match p2p.offer_ttl_secs.unwrap_or(3600) {
                0 => return Err(key_error("p2p.offer_ttl_secs", "must be more than 0".to_owned())),
                ttl => ttl,
            },
        };
        for (key, addrs) in
            [("p2p.listen", &p2p.listen), ("p2p.bootstrap", &p2p.bootstrap), ("p2p.relays", &p2p.relays)]
        {
            if let Some(bad) = addrs.iter().find(|a| !a.starts_with('/') || a.chars().any(char::is_whitespace)) {
                return Err(key_error(key, format!("{bad:?} is not a multiaddr (like /ip4/192.0.2.1/tcp/4001)")));
            }
        }

        let mut sell: Vec<SellSettings> = Vec::with_capacity(self.sell.len());
        for (i, raw) in self.sell.into_iter().enumerate() {
            let key = |field: &str| format!("sell[{i}].{field}");
            if !machinomy_core::wire::valid_service_name(&raw.name) {
                return Err(key_error(
                    &key("name"),
                    "must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' or '.'".to_owned(),
                ));
            }
            if sell.iter().any(|s| s.name == raw.name) {
                return Err(key_error(&key("name"), format!("{:?} is sold twice", raw.name)));
            }
            let price = currency.parse(&raw.price).map_err(|e| key_error(&key("price"), e.to_string()))?;
            if raw.description.len() > machinomy_core::wire::MAX_DESCRIPTION {
                return Err(key_error(&key("description"), "is longer than 512 bytes".to_owned()));
            }
            let answer = match (raw.topic, raw.text) {
                (Some(topic), None) => {
                    let device = topic
                        .strip_prefix("machinomy/")
                        .and_then(|rest| rest.strip_suffix("/state"))
                        .filter(|d| {
                            !d.is_empty()
                                && d.len() <= 64
                                && d.bytes()
                                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
                        })
                        .ok_or_else(|| {
                            key_error(
                                &key("topic"),
                                format!("{topic:?} is not a device state topic (machinomy/<device>/state)"),
                            )
                        })?;
                    ServiceAnswer::DeviceState { device: device.to_owned() }
                }
                (None, Some(text)) => ServiceAnswer::Text(text),
                _ => return Err(key_error(&key("topic"), "set exactly one of `topic` or `text`".to_owned())),
            };
            sell.push(SellSettings { name: raw.name, price, description: raw.description, answer });
        }

        let mqtt = match self.mqtt.mode.as_deref().unwrap_or("embedded") {
            "off" => MqttSettings::Off,
            "embedded" => MqttSettings::Embedded {
                listen: match self.mqtt.listen {
                    Some(addr) => addr,
                    None => {
                        DEFAULT_MQTT_LISTEN.parse().map_err(|_| key_error("mqtt.listen", "bad default".to_owned()))?
                    }
                },
            },
            "external" => {
                let url = self.mqtt.url.as_deref().unwrap_or("mqtt://127.0.0.1:1883");
                let (host, port) = parse_mqtt_url(url).map_err(|m| key_error("mqtt.url", m))?;
                let username = self.mqtt.username.unwrap_or_else(|| "machinomy-hub".to_owned());
                if username.is_empty() || username.contains(['/', '+', '#']) {
                    return Err(key_error("mqtt.username", "must be a non-empty name without / + #".to_owned()));
                }
                let password_file = self.mqtt.password_file.map(|file| match file.is_relative() {
                    true => path.parent().unwrap_or(Path::new(".")).join(file),
                    false => file,
                });
                MqttSettings::External { host, port, username, password_file }
            }
            other => {
                return Err(key_error("mqtt.mode", format!("{other:?} must be embedded, external or off")));
            }
        };
        let ble = BleSettings {
            enabled: self.ble.enabled.unwrap_or(false),
            backend: match self.ble.backend.as_deref().unwrap_or("btleplug") {
                "btleplug" => BleBackendKind::Btleplug,
                "simulated" => BleBackendKind::Simulated,
                other => return Err(key_error("ble.backend", format!("{other:?} must be btleplug or simulated"))),
            },
            profiles: self.ble.profiles.map(|dir| match dir.is_relative() {
                true => path.parent().unwrap_or(Path::new(".")).join(dir),
                false => dir,
            }),
            poll_secs: match self.ble.poll_secs.unwrap_or(60) {
                0 => return Err(key_error("ble.poll_secs", "must be more than 0".to_owned())),
                secs => secs,
            },
        };
        let topic_level = |key: &str, value: String| {
            if value.is_empty() || value.contains(['+', '#']) || value.starts_with('/') || value.ends_with('/') {
                Err(key_error(key, format!("{value:?} must be a topic prefix without wildcards")))
            } else {
                Ok(value)
            }
        };
        let homeassistant = HomeAssistantSettings {
            discovery: self.homeassistant.discovery.unwrap_or(true),
            prefix: topic_level(
                "homeassistant.prefix",
                self.homeassistant.prefix.unwrap_or_else(|| "homeassistant".to_owned()),
            )?,
        };
        let zigbee2mqtt = Zigbee2MqttSettings {
            enabled: self.zigbee2mqtt.enabled.unwrap_or(false),
            base_topic: topic_level(
                "zigbee2mqtt.base_topic",
                self.zigbee2mqtt.base_topic.unwrap_or_else(|| "zigbee2mqtt".to_owned()),
            )?,
        };

        let plugins = if self.plugins.enabled.unwrap_or(true) {
            let defaults = machinomy_core::plugin::Ceiling::default();
            let mut ceiling = defaults;
            for (key, value, slot) in [
                ("plugins.max_memory_mib", self.plugins.max_memory_mib, &mut ceiling.memory_mib),
                ("plugins.max_fuel_per_event", self.plugins.max_fuel_per_event, &mut ceiling.fuel_per_event),
                ("plugins.max_kv_bytes", self.plugins.max_kv_bytes, &mut ceiling.kv_bytes),
            ] {
                match value {
                    Some(0) => return Err(key_error(key, "must be above 0".to_owned())),
                    Some(value) => *slot = value,
                    None => {}
                }
            }
            let dir = match self.plugins.dir {
                Some(dir) if dir.as_os_str().is_empty() => {
                    return Err(key_error("plugins.dir", "must not be empty".to_owned()));
                }
                Some(dir) if dir.is_relative() => path.parent().unwrap_or(Path::new(".")).join(dir),
                Some(dir) => dir,
                None => data_dir.join("plugins"),
            };
            Some(crate::plugin::PluginSettings { dir, ceiling })
        } else {
            None
        };

        Ok(Config {
            plugins,
            p2p,
            sell,
            mqtt,
            ble,
            homeassistant,
            zigbee2mqtt,
            path: path.to_owned(),
            hub: HubSettings { name, data_dir, approval_ttl_secs, max_pending_approvals, time_zone },
            web: WebSettings { listen },
            credit: CreditSettings {
                currency,
                max_credit_per_peer,
                settlement_period_secs,
                min_settlement_period_secs,
            },
            budgets,
        })
    }
}

/// Why a budget's subject could never apply, if it could not. Invoices are counted against
/// `peer:<their key>`, so a peer named any other way would match nothing.
/// `peer:<key>` is matched as written, so the key must be in the form invoices use (lowercase).
pub(crate) fn budget_subject_problem(subject: &Subject) -> Option<String> {
    let Subject::Peer(key) = subject else { return None };
    let canonical = key.parse::<machinomy_core::PublicKey>().is_ok_and(|parsed| parsed.to_hex() == *key);
    (!canonical).then(|| {
        format!("{subject}: a peer is named by its public key, 64 lowercase hex characters (as `machinomy-hub peer list` shows)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/machinomy/hub.toml"), Path::new("/var/lib/machinomy"))
    }

    #[test]
    fn empty_file_takes_every_default() {
        let config = parse("").unwrap();
        assert_eq!(config.hub.data_dir, Path::new("/var/lib/machinomy"));
        assert_eq!(config.web.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.credit.currency, Currency::usd());
        assert_eq!(config.credit.max_credit_per_peer, Amount::from_base_units(10_000_000_000));
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let err = parse("[web]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n").unwrap_err().to_string();
        assert!(err.contains("/etc/machinomy/hub.toml"), "{err}");
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key_and_the_file() {
        let err = parse("[web]\nlisten = \"not an address\"\n").unwrap_err().to_string();
        assert!(err.contains("web.listen"), "{err}");
        assert!(err.contains("/etc/machinomy/hub.toml"), "{err}");
        let err = parse(
            "[[budget]]\nsubject = \"device:x\"\nperiod = \"fortnight\"\nlimit = \"1\"\nauto_approve = \"0.1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("budget[0].period"), "{err}");
        let err = parse("[hub]\ntime_zone = \"Mars/Olympus_Mons\"\n").unwrap_err().to_string();
        assert!(err.contains("hub.time_zone") && err.contains("Mars/Olympus_Mons"), "{err}");
    }

    #[test]
    fn syntax_error_is_one_line_naming_the_file() {
        let err = parse("[hub\nname = 1").unwrap_err().to_string();
        assert!(err.starts_with("config /etc/machinomy/hub.toml:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_peer_budget_must_name_the_peers_key() {
        let err =
            parse("[[budget]]\nsubject = \"peer:alice\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"0\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("budget[0].subject") && err.contains("public key"), "{err}");
        let upper = "AB".repeat(32);
        let err = parse(&format!(
            "[[budget]]\nsubject = \"peer:{upper}\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"0\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("lowercase") && err.contains("remove or fix this [[budget]]"), "{err}");
        let key = "ab".repeat(32);
        let config = parse(&format!(
            "[[budget]]\nsubject = \"peer:{key}\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"0\"\n"
        ))
        .unwrap();
        assert_eq!(config.budgets[0].subject, Subject::Peer(key));
    }

    #[test]
    fn budgets_parse_in_currency_units() {
        let config = parse(
            "[[budget]]\nsubject = \"device:fridge\"\nperiod = \"week\"\nlimit = \"20\"\nauto_approve = \"2.5\"\n",
        )
        .unwrap();
        let budget = &config.budgets[0];
        assert_eq!(budget.limit, Amount::from_base_units(20_000_000_000));
        assert_eq!(budget.auto_approve, Amount::from_base_units(2_500_000_000));
    }

    #[test]
    fn threshold_above_limit_is_refused() {
        let err = parse("[[budget]]\nsubject = \"device:a\"\nperiod = \"day\"\nlimit = \"1\"\nauto_approve = \"2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("budget[0].auto_approve"), "{err}");
    }

    #[test]
    fn bad_peer_network_and_sell_entries_name_their_key() {
        let cases = [
            ("[p2p]\nlisten = [\"0.0.0.0:4001\"]\n", "p2p.listen"),
            ("[p2p]\nbootstrap = [\"not an address\"]\n", "p2p.bootstrap"),
            ("[p2p]\nchannel_capacity = \"lots\"\n", "p2p.channel_capacity"),
            ("[p2p]\noffer_ttl_secs = 0\n", "p2p.offer_ttl_secs"),
            ("[[sell]]\nname = \"a b\"\nprice = \"1\"\ntext = \"x\"\n", "sell[0].name"),
            ("[[sell]]\nname = \"w\"\nprice = \"1\"\n", "sell[0].topic"),
            ("[[sell]]\nname = \"w\"\nprice = \"1\"\ntopic = \"weather\"\n", "sell[0].topic"),
            ("[[sell]]\nname = \"w\"\nprice = \"-1\"\ntext = \"x\"\n", "sell[0].price"),
            (
                "[[sell]]\nname = \"w\"\nprice = \"1\"\ntext = \"x\"\n[[sell]]\nname = \"w\"\nprice = \"1\"\ntext = \"y\"\n",
                "sell[1].name",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn relative_data_dir_is_relative_to_the_config_file() {
        let config = parse("[hub]\ndata_dir = \"data\"\n").unwrap();
        assert_eq!(config.hub.data_dir, Path::new("/etc/machinomy/data"));
    }
    #[test]
    fn mqtt_modes_and_their_errors_name_the_key() {
        let external =
            parse("[mqtt]\nmode = \"external\"\nurl = \"mqtt://broker.lan\"\npassword_file = \"mqtt.pw\"\n").unwrap();
        assert_eq!(
            external.mqtt,
            MqttSettings::External {
                host: "broker.lan".into(),
                port: 1883,
                username: "machinomy-hub".into(),
                password_file: Some(PathBuf::from("/etc/machinomy/mqtt.pw")),
            }
        );
        assert_eq!(parse("[mqtt]\nmode = \"off\"\n").unwrap().mqtt, MqttSettings::Off);
        for (text, key) in [
            ("[mqtt]\nmode = \"cloud\"\n", "mqtt.mode"),
            ("[mqtt]\nmode = \"external\"\nurl = \"mqtts://x:8883\"\n", "mqtt.url"),
            ("[mqtt]\nmode = \"external\"\nurl = \"mqtt://x:port\"\n", "mqtt.url"),
            ("[ble]\nbackend = \"bluez\"\n", "ble.backend"),
            ("[zigbee2mqtt]\nbase_topic = \"z/#\"\n", "zigbee2mqtt.base_topic"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The shipped example documents every key; it must parse, and to the values it shows.
    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/hub.example.toml"));
        let config = Config::load(path, Path::new("/unused")).unwrap();
        assert_eq!(config.hub.name, "machinomy-hub");
        assert_eq!(config.hub.data_dir, Path::new("/var/lib/machinomy"));
        assert_eq!(config.hub.approval_ttl_secs, 86_400);
        assert_eq!(config.hub.max_pending_approvals, 1000);
        assert_eq!(config.hub.time_zone.iana_name(), Some("Europe/Berlin"));
        assert_eq!(config.web.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.credit.currency, Currency::usd());
        assert_eq!(config.credit.settlement_period_secs, 86_400);
        assert_eq!(config.budgets.len(), 1);
        assert_eq!(config.budgets[0].auto_approve, Amount::from_base_units(2_500_000_000));
        assert!(config.p2p.enabled && config.p2p.mdns && !config.p2p.relay_server);
        assert_eq!(config.p2p.listen.len(), 2);
        assert_eq!(config.p2p.channel_capacity, Amount::from_base_units(1_000_000_000));
        assert_eq!(config.sell.len(), 1);
        assert_eq!(config.sell[0].answer, ServiceAnswer::DeviceState { device: "station".to_owned() });
        assert_eq!(config.credit.min_settlement_period_secs, 3600);
        assert_eq!(config.mqtt, MqttSettings::Embedded { listen: "127.0.0.1:1883".parse().unwrap() });
        assert!(!config.ble.enabled && config.ble.backend == BleBackendKind::Btleplug && config.ble.poll_secs == 60);
        assert_eq!(config.ble.profiles.as_deref(), Some(Path::new("/etc/machinomy/ble-profiles")));
        assert!(config.homeassistant.discovery && config.homeassistant.prefix == "homeassistant");
        assert!(!config.zigbee2mqtt.enabled && config.zigbee2mqtt.base_topic == "zigbee2mqtt");
        let plugins = config.plugins.unwrap();
        assert_eq!(plugins.dir, Path::new("/var/lib/machinomy/plugins"));
        assert_eq!(plugins.ceiling, machinomy_core::plugin::Ceiling::default());
    }

    #[test]
    fn plugin_ceilings_and_switch() {
        let load = |text: &str| Config::parse(text, Path::new("/etc/machinomy/hub.toml"), Path::new("/var/lib"));
        let config = load("[plugins]\nmax_memory_mib = 32\ndir = \"mods\"\n").unwrap();
        let plugins = config.plugins.unwrap();
        assert_eq!(plugins.ceiling.memory_mib, 32);
        assert!(plugins.dir.ends_with("mods") && plugins.dir.is_absolute());
        assert!(load("[plugins]\nenabled = false\n").unwrap().plugins.is_none());
        let error = load("[plugins]\nmax_fuel_per_event = 0\n").unwrap_err().to_string();
        assert!(error.contains("plugins.max_fuel_per_event"), "{error}");
        let error = load("[plugins]\nmax_fuel = 1\n").unwrap_err().to_string();
        assert!(error.contains("max_fuel"), "{error}");
    }
}
