//! The example plugins (`plugins/`) in end-to-end tests: built to wasm once per test process
//! with `plugins/build.sh`, installed into real hubs with the CLI, and the hubs and devices
//! around them.
//!
//! ```text
//! let package = plugin_package("weather-buyer")?;                   // plugins/dist/weather-buyer, built
//! let installed = install(&hub, &package, &[("every_secs", "1")]).await?;  // plugin install … --set … --json
//! let mut meter = Device::pair(&hub, port, "meter", &[STATEMENT]).await?;  // paired, connected, subscribed
//! meter.report(&hub, json!({"energy_wh": 1000})).await?;             // retained state, held by the hub
//! let statement = meter.next_on(STATEMENT, DEADLINE).await?;         // what the plugin published
//! let (paid, received, payments) = row(&spending(&hub).await?, "plugin:rental-billing");
//! ```
//!
//! The build is `plugins/build.sh` (rustup's wasm32 target or Debian's Rust 1.63; quick when
//! nothing changed). It runs with the test process's environment, so a `CARGO_TARGET_DIR` set
//! for the tests is where the plugins build too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use machinomy_core::{PublicKey, SigningKey};
use machinomy_web::model::{HubStatus, PairedDevice, PeerView, PluginInstalled, PluginView, SpendingReport};
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::mosquitto::{MqttClient, loopback_options, try_connect_to};
use crate::{TestHub, random_key, wait_for};

/// How long a hub may take to find a peer, or a plugin to act on an event.
pub const PEER_DEADLINE: Duration = Duration::from_secs(30);

/// `plugins/` in the source tree.
pub fn plugins_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugins")
}

/// `plugins/dist/`, after `plugins/build.sh` ran (once per test process) and succeeded.
pub fn plugin_dist() -> Result<PathBuf> {
    static DIST: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIST.get_or_init(|| build_plugins().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn build_plugins() -> Result<PathBuf> {
    let script = plugins_source().join("build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({}):\n{}{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let dist = plugins_source().join("dist");
    ensure!(dist.is_dir(), "{} succeeded but made no {}", script.display(), dist.display());
    Ok(dist)
}

/// `plugins/dist/<name>`: a package to install, with its `plugin.toml` and `<name>.wasm`.
pub fn plugin_package(name: &str) -> Result<PathBuf> {
    let dir = plugin_dist()?.join(name);
    for file in ["plugin.toml".to_owned(), format!("{name}.wasm")] {
        ensure!(dir.join(&file).is_file(), "plugins/build.sh made no {}", dir.join(file).display());
    }
    Ok(dir)
}

/// `plugin install <package> --set key=value … --json`: what the hub answered.
pub async fn install(hub: &TestHub, package: &Path, settings: &[(&str, &str)]) -> Result<PluginInstalled> {
    let package = package.to_str().context("a package path that is not UTF-8")?;
    let sets: Vec<String> = settings.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let mut args = vec!["plugin", "install", package];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    args.push("--json");
    hub.cli(&args).await?.json()
}

/// `plugin show <name> --json`.
pub async fn show(hub: &TestHub, name: &str) -> Result<PluginView> {
    hub.cli(&["plugin", "show", name, "--json"]).await?.json()
}

/// `plugin list --json`.
pub async fn list(hub: &TestHub) -> Result<Vec<PluginView>> {
    hub.cli(&["plugin", "list", "--json"]).await?.json()
}

/// `GET /api/v1/plugins/<name>`: the plugin as the API shows it (cheaper than the CLI to poll).
pub async fn view(hub: &TestHub, name: &str) -> Result<PluginView> {
    hub.api()?.get_json(&format!("/api/v1/plugins/{name}")).await
}

/// How many events the plugin has handled since the hub started.
pub async fn events(hub: &TestHub, name: &str) -> Result<u64> {
    Ok(view(hub, name).await?.events)
}

/// The hub's public key, as `identity --json` prints it.
pub async fn identity(hub: &TestHub) -> Result<PublicKey> {
    hub.cli(&["identity", "--json"]).await?.json()
}

/// The hub's TCP peer address (with its `/p2p/` id), for another hub's `bootstrap`.
pub async fn p2p_addr(hub: &TestHub) -> Result<String> {
    let api = hub.api()?;
    wait_for("the hub's peer address", PEER_DEADLINE, async || {
        let status: HubStatus = api.get_json("/api/v1/status").await?;
        Ok(status.p2p_addrs.into_iter().find(|a| a.contains("/tcp/")))
    })
    .await
}

/// Waits until `hub` is connected to the peer with `key`.
pub async fn wait_connected(hub: &TestHub, key: &PublicKey) -> Result<()> {
    let api = hub.api()?;
    wait_for(&format!("a connection to {key}"), PEER_DEADLINE, async || {
        let peers: Vec<PeerView> = api.get_json("/api/v1/peers").await?;
        Ok(peers.iter().any(|p| &p.key == key && p.connected).then_some(()))
    })
    .await
}

/// `GET /api/v1/spending?group_by=subject`.
pub async fn spending(hub: &TestHub) -> Result<SpendingReport> {
    hub.api()?.get_json("/api/v1/spending?group_by=subject").await
}

/// The (paid, received, payments) of one subject's row; zeros when it has none.
pub fn row(report: &SpendingReport, key: &str) -> (u128, u128, u64) {
    report
        .rows
        .iter()
        .find(|r| r.key == key)
        .map_or((0, 0, 0), |r| (r.paid.base_units(), r.received.base_units(), r.payments))
}

/// An amount as plugins write it in JSON: a decimal string of base units, or an integer.
pub fn amount(value: &Value) -> Result<u128> {
    match value {
        Value::String(text) => text.parse().with_context(|| format!("{text:?} is not an amount of base units")),
        Value::Number(n) => n.as_u64().map(u128::from).with_context(|| format!("{n} is not an amount of base units")),
        other => bail!("{other} is not an amount"),
    }
}

/// A `[[budget]]` table.
pub fn budget_toml(subject: &str, period: &str, limit: &str, auto_approve: &str) -> String {
    format!(
        "[[budget]]\nsubject = \"{subject}\"\nperiod = \"{period}\"\nlimit = \"{limit}\"\nauto_approve = \"{auto_approve}\""
    )
}

/// Base units in one currency unit (the credit ledger's default 9 decimals).
pub const UNIT: u128 = 1_000_000_000;

/// An appliance paired with a hub and connected to its embedded broker as an MQTT client,
/// subscribed to its own topics (and whatever else the test asks for).
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub key: SigningKey,
    pub paired: PairedDevice,
    pub client: MqttClient,
}

impl Device {
    /// Pairs `id` with `hub` (through the API, with a key of its own) and connects it to the
    /// hub's embedded broker on `port`, subscribed to `machinomy/<id>/#` and `also`.
    pub async fn pair(hub: &TestHub, port: u16, id: &str, also: &[&str]) -> Result<Device> {
        Device::pair_named(hub, port, id, None, also).await
    }

    /// [`Device::pair`] with a display name for the registry.
    pub async fn pair_named(hub: &TestHub, port: u16, id: &str, name: Option<&str>, also: &[&str]) -> Result<Device> {
        let key = random_key()?;
        let body = json!({"id": id, "name": name, "public_key": PublicKey::from(key.verifying_key()).to_hex()});
        let response = hub.api()?.post("/api/v1/devices").json(&body).send().await.context("pairing a device")?;
        let code = response.status();
        let text = response.text().await.context("reading the pairing answer")?;
        ensure!(code == 201, "pairing {id} → {code}: {text}");
        let paired: PairedDevice = serde_json::from_str(&text).with_context(|| format!("pairing {id}: {text}"))?;
        let credentials = paired.credentials.as_ref().context("an MQTT device paired without credentials")?;
        let options = loopback_options(port, &credentials.username, &credentials.username, &credentials.password);
        let mut client = match try_connect_to(options).await? {
            Ok(client) => client,
            Err(code) => bail!("the hub's broker refused {id}: {code:?}"),
        };
        client.subscribe_granted(&format!("machinomy/{id}/#"), QoS::AtLeastOnce).await?;
        for filter in also {
            client.subscribe_granted(filter, QoS::AtLeastOnce).await?;
        }
        Ok(Device { id: id.to_owned(), key, paired, client })
    }

    /// Publishes its state (retained, as devices do) and waits until `hub` holds it.
    pub async fn report(&mut self, hub: &TestHub, state: Value) -> Result<()> {
        let topic = format!("machinomy/{}/state", self.id);
        self.client.publish(&topic, QoS::AtLeastOnce, true, serde_json::to_vec(&state)?).await?;
        let api = hub.api()?;
        let path = format!("/api/v1/devices/{}", self.id);
        wait_for(&format!("{} to hold {state}", self.id), PEER_DEADLINE, async || {
            let view: machinomy_web::model::DeviceView = api.get_json(&path).await?;
            Ok(state
                .as_object()
                .is_some_and(|want| want.iter().all(|(k, v)| view.state.get(k) == Some(v)))
                .then_some(()))
        })
        .await
    }

    /// Publishes an event `machinomy/<id>/event/<name>`.
    pub async fn event(&mut self, name: &str, payload: Value) -> Result<()> {
        let topic = format!("machinomy/{}/event/{name}", self.id);
        self.client.publish(&topic, QoS::AtLeastOnce, false, serde_json::to_vec(&payload)?).await
    }

    /// The next message on `topic` (others are dropped), as JSON.
    pub async fn next_on(&mut self, topic: &str, deadline: Duration) -> Result<Value> {
        self.client.recv_json(topic, deadline).await
    }

    /// Every message that has already arrived, without waiting: (topic, payload as JSON, or as
    /// a JSON string when it is not JSON).
    pub async fn drain(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        while let Ok(message) = self.client.recv(Duration::ZERO).await {
            let payload = serde_json::from_slice(&message.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&message.payload).into_owned()));
            out.push((message.topic, payload));
        }
        out
    }
}
