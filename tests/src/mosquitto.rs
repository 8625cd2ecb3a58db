//! A real Mosquitto broker for the MQTT bridge's tests, configured as the product ships it.
//!
//! ```text
//! let broker = Mosquitto::start(&[(HUB_USER, "hub-pw"), ("kettle", "pw")]).await?;
//! let mut hub = broker.connect("hub", HUB_USER, "hub-pw").await?;  // waits for CONNACK
//! hub.subscribe("machinomy/#", QoS::AtLeastOnce).await?;          // waits for SUBACK
//! broker.add_user("fridge", "pw2").await?;                        // SIGHUP, waits until it can log in
//! let run = run_appliance(&["--help"]).await?;                    // tests/appliance.py
//! ```
//!
//! The config is `packaging/mosquitto/machinomy.conf` and `machinomy.acl`, read at start, with
//! only the file paths moved into the test's temporary directory, the shipped `listener` replaced
//! by one on a free loopback port, and logging to `mosquitto.log` there. The broker and the
//! Python appliance are Debian packages: `packaging/setup-dev.sh` installs them.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{LOG_TAIL_LINES, POLL_INTERVAL, free_port, tail, wait_exit};

/// The hub's own MQTT user: the shipped ACL gives it every topic.
pub const HUB_USER: &str = "machinomy-hub";
/// How long the broker may take to start, to reload, or to answer one MQTT request.
pub const MQTT_DEADLINE: Duration = Duration::from_secs(20);
/// How long one run of `tests/appliance.py` may take (its own waits are 20 s each by default).
pub const APPLIANCE_DEADLINE: Duration = Duration::from_secs(90);
/// The Python that has Debian's python3-paho-mqtt and python3-nacl (a pyenv one on PATH may not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// The largest packet (in bytes, the whole MQTT packet) a test client sends or accepts: far more
/// than the broker's limit, so that it is the broker that refuses big packets, not the client.
pub const CLIENT_MAX_PACKET: usize = 4 * 1024 * 1024;

const SETUP_HINT: &str = "run packaging/setup-dev.sh";
const CONF_NAME: &str = "machinomy.conf";
const ACL_NAME: &str = "machinomy.acl";
const PASSWD_NAME: &str = "machinomy.passwd";
const LOG_NAME: &str = "mosquitto.log";
/// Options in the shipped config that name a file or directory: each must be moved into the test
/// directory (or, for `listener`, replaced). One this list does not know fails the start, rather
/// than letting a test read or write the machine's own files.
const PATH_OPTIONS: &[&str] = &[
    "auth_plugin",
    "cafile",
    "capath",
    "certfile",
    "crlfile",
    "dhparamfile",
    "include_dir",
    "keyfile",
    "log_dest",
    "persistence_file",
    "persistence_location",
    "pid_file",
    "plugin",
    "psk_file",
];
/// How many times a start is tried again when another process took the free port first.
const START_ATTEMPTS: u32 = 3;

/// `packaging/mosquitto/`, where the shipped broker config lives.
pub fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("packaging").join("mosquitto")
}

/// A running `mosquitto` on `127.0.0.1:<free port>` in its own temporary directory. Dropping it
/// kills the broker; a test that panics keeps the directory (with the log) and says where.
#[derive(Debug)]
pub struct Mosquitto {
    /// `None` only once `Drop` has decided whether to keep the directory.
    dir: Option<TempDir>,
    root: PathBuf,
    port: u16,
    child: Child,
    passwd_bin: PathBuf,
    passwd: PathBuf,
    log: PathBuf,
    /// One `mosquitto_passwd` at a time rewrites the password file.
    passwd_lock: Mutex<()>,
}

impl Mosquitto {
    /// Writes the config, creates the password file with `users` (name, password), starts the
    /// broker and waits until its port accepts TCP connections.
    pub async fn start(users: &[(&str, &str)]) -> Result<Mosquitto> {
        let broker_bin = find_binary("mosquitto", &["/usr/sbin", "/usr/bin"])?;
        let passwd_bin = find_binary("mosquitto_passwd", &["/usr/bin", "/usr/sbin"])?;
        let mut dir =
            tempfile::Builder::new().prefix("machinomy-mqtt-").tempdir().context("cannot create a temp dir")?;
        let root = dir.path().to_owned();
        let passwd = root.join(PASSWD_NAME);
        let log = root.join(LOG_NAME);

        let shipped = packaging_dir();
        let acl = fs::read_to_string(shipped.join(ACL_NAME))
            .with_context(|| format!("cannot read {}", shipped.join(ACL_NAME).display()))?;
        fs::write(root.join(ACL_NAME), acl).context("cannot write the test ACL file")?;
        let conf_text = fs::read_to_string(shipped.join(CONF_NAME))
            .with_context(|| format!("cannot read {}", shipped.join(CONF_NAME).display()))?;

        match users.split_first() {
            Some((&(name, password), rest)) => {
                mosquitto_passwd(&passwd_bin, &["-c", "-b"], &passwd, name, password)?;
                for &(name, password) in rest {
                    mosquitto_passwd(&passwd_bin, &["-b"], &passwd, name, password)?;
                }
            }
            None => fs::write(&passwd, "").context("cannot create the empty password file")?,
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let conf = root.join(CONF_NAME);
            fs::write(&conf, test_config(&conf_text, &root, port)?).context("cannot write the test config")?;
            let log_file = fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
            let child = Command::new(&broker_bin)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().context("cannot share the log file")?)
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("cannot start {}", broker_bin.display()))?;
            let mut broker = Mosquitto {
                dir: Some(dir),
                root: root.clone(),
                port,
                child,
                passwd_bin: passwd_bin.clone(),
                passwd: passwd.clone(),
                log: log.clone(),
                passwd_lock: Mutex::new(()),
            };
            match broker.wait_listening().await {
                Ok(()) => return Ok(broker),
                Err(_) if attempt < START_ATTEMPTS && broker.log_text().contains("Address already in use") => {
                    // Another process took the port between `free_port` and the bind: try another.
                    dir = broker.dir.take().context("the test directory went missing")?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_listening(&mut self) -> Result<()> {
        let until = Instant::now() + MQTT_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot check on mosquitto")? {
                bail!("mosquitto exited ({status}) before it listened on port {}\n{}", self.port, self.describe());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "gave up after {MQTT_DEADLINE:?} waiting for mosquitto on port {}\n{}",
                    self.port,
                    self.describe()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The broker's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`, as the hub's `[mqtt] url` takes it.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The test directory: config, ACL, password file, log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the broker's log (it logs everything: connections, denials, packets).
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// The whole log, to assert on what the broker did.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!("--- {} (tail) ---\n{}", self.log.display(), self.log_tail())
    }

    /// Adds a user (or changes its password) with `mosquitto_passwd -b`, has the broker reload
    /// with SIGHUP, and waits until `name` can log in with `password`.
    pub async fn add_user(&self, name: &str, password: &str) -> Result<()> {
        {
            let _one_at_a_time = self.passwd_lock.lock().map_err(|_| anyhow!("the password-file lock is poisoned"))?;
            mosquitto_passwd(&self.passwd_bin, &["-b"], &self.passwd, name, password)?;
        }
        let sent = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .context("cannot run `kill` to make mosquitto reload")?;
        ensure!(sent.success(), "kill -HUP {} failed ({sent})", self.child.id());
        let until = Instant::now() + MQTT_DEADLINE;
        let mut probe = 0u32;
        loop {
            probe += 1;
            let client_id = format!("machinomy-tests-probe-{name}-{probe}");
            match self.try_connect(&client_id, name, password).await? {
                Ok(client) => {
                    client.disconnect().await?;
                    return Ok(());
                }
                Err(code) if Instant::now() >= until => bail!(
                    "gave up after {MQTT_DEADLINE:?} waiting for mosquitto to let {name} in (last: {code:?})\n{}",
                    self.describe()
                ),
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// Options for a client of this broker: MQTT 3.1.1, clean session, the given login, packet
    /// limits of [`CLIENT_MAX_PACKET`] both ways.
    pub fn options(&self, client_id: &str, user: &str, password: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port);
        options
            .set_credentials(user, password)
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET);
        options
    }

    /// Connects with [`Mosquitto::options`]; fails if the broker refuses.
    pub async fn connect(&self, client_id: &str, user: &str, password: &str) -> Result<MqttClient> {
        self.connect_with(self.options(client_id, user, password)).await
    }

    /// Connects with the given options; fails if the broker refuses.
    pub async fn connect_with(&self, options: MqttOptions) -> Result<MqttClient> {
        let client_id = options.client_id();
        match self.try_connect_with(options).await? {
            Ok(client) => Ok(client),
            Err(code) => bail!("mosquitto refused {client_id}: {code:?}\n{}", self.describe()),
        }
    }

    /// Connects, telling a refusal (the CONNACK's return code) apart from other failures.
    pub async fn try_connect(
        &self,
        client_id: &str,
        user: &str,
        password: &str,
    ) -> Result<std::result::Result<MqttClient, ConnectReturnCode>> {
        self.try_connect_with(self.options(client_id, user, password)).await
    }

    /// [`Mosquitto::try_connect`] with the given options.
    pub async fn try_connect_with(
        &self,
        options: MqttOptions,
    ) -> Result<std::result::Result<MqttClient, ConnectReturnCode>> {
        try_connect_to(options).await.with_context(|| self.describe())
    }
}

/// Options for a client of a broker on loopback `port` (the hub's embedded broker, say), like
/// [`Mosquitto::options`].
pub fn loopback_options(port: u16, client_id: &str, user: &str, password: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_credentials(user, password)
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET);
    options
}

/// Connects to any broker, telling a refusal (the CONNACK's return code) apart from failures.
pub async fn try_connect_to(options: MqttOptions) -> Result<std::result::Result<MqttClient, ConnectReturnCode>> {
    {
        let client_id = options.client_id();
        let (client, mut events) = AsyncClient::new(options, 16);
        let first = tokio::time::timeout(MQTT_DEADLINE, events.poll()).await;
        match first {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                Ok(Ok(MqttClient::run(client_id, client, events)))
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => Ok(Err(ack.code)),
            Ok(Err(ConnectionError::ConnectionRefused(code))) => Ok(Err(code)),
            Ok(Ok(other)) => bail!("{client_id}: expected CONNACK, got {other:?}"),
            Ok(Err(e)) => Err(anyhow!(e).context(format!("{client_id} cannot connect"))),
            Err(_) => bail!("{client_id}: no CONNACK within {MQTT_DEADLINE:?}"),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            let kept = dir.keep();
            eprintln!("machinomy-tests: the failed test's mosquitto directory is kept at {}", kept.display());
        }
    }
}

/// The shipped config with its paths moved into `root` and a listener on `127.0.0.1:<port>`.
fn test_config(shipped: &str, root: &Path, port: u16) -> Result<String> {
    let mut text = String::from("# packaging/mosquitto/machinomy.conf, moved into the test directory\n");
    for line in shipped.lines() {
        let option = line.split_whitespace().next().unwrap_or_default();
        match option {
            "password_file" => {
                let _ = writeln!(text, "password_file {}", root.join(PASSWD_NAME).display());
            }
            "acl_file" => {
                let _ = writeln!(text, "acl_file {}", root.join(ACL_NAME).display());
            }
            // The shipped listener (every interface, port 1883) is replaced by the test's below.
            "listener" => {
                let _ = writeln!(text, "# (shipped) {line}");
            }
            _ if PATH_OPTIONS.contains(&option) => bail!(
                "packaging/mosquitto/{CONF_NAME} sets `{option}`, which tests/src/mosquitto.rs does not move into \
                 the test directory: teach `test_config` about it"
            ),
            _ => {
                let _ = writeln!(text, "{line}");
            }
        }
    }
    text.push_str("\n# added by tests/src/mosquitto.rs\n");
    text.push_str("log_dest stderr\nlog_type all\nconnection_messages true\n");
    // Started as root, mosquitto would switch to the `mosquitto` user, which cannot read the test
    // directory; `root` means "stay". Ignored when not started as root.
    text.push_str("user root\n");
    let _ = writeln!(text, "listener {port} 127.0.0.1");
    Ok(text)
}

fn mosquitto_passwd(bin: &Path, flags: &[&str], file: &Path, name: &str, password: &str) -> Result<()> {
    let output = Command::new(bin)
        .args(flags)
        .arg(file)
        .arg(name)
        .arg(password)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    ensure!(
        output.status.success(),
        "{} {} {} {name} … failed ({}): {}{}",
        bin.display(),
        flags.join(" "),
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `name` on PATH, else in one of `dirs`; an error saying how to install it.
fn find_binary(name: &str, dirs: &[&str]) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow!("`{name}` not found on PATH nor in {}: {SETUP_HINT}", dirs.join(", ")))
}

/// What an [`MqttClient`]'s event-loop task saw.
#[derive(Debug)]
enum Seen {
    Packet(Packet),
    Sent(Outgoing),
    /// The connection ended (the task stopped): the error, as text.
    Closed(String),
}

/// One connection to the broker, its event loop driven by its own task. Each call waits for the
/// broker's answer (SUBACK, PUBACK); messages that arrive meanwhile are kept for
/// [`MqttClient::recv`]. Dropping it drops the connection without a DISCONNECT (a device dying:
/// the broker sends its will).
#[derive(Debug)]
pub struct MqttClient {
    client_id: String,
    client: AsyncClient,
    seen: mpsc::Receiver<Seen>,
    messages: VecDeque<Publish>,
    closed: Option<String>,
    task: JoinHandle<()>,
}

impl MqttClient {
    fn run(client_id: String, client: AsyncClient, mut events: EventLoop) -> MqttClient {
        let (tx, seen) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            loop {
                let seen = match events.poll().await {
                    Ok(Event::Incoming(packet)) => Seen::Packet(packet),
                    Ok(Event::Outgoing(outgoing)) => Seen::Sent(outgoing),
                    Err(e) => {
                        let _ = tx.send(Seen::Closed(e.to_string())).await;
                        return;
                    }
                };
                if tx.send(seen).await.is_err() {
                    return;
                }
            }
        });
        MqttClient { client_id, client, seen, messages: VecDeque::new(), closed: None, task }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Subscribes to one filter and returns the broker's answer for it (Mosquitto 2.0 grants a
    /// device's subscription outside its ACL and then delivers nothing it may not read).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.with_context(|| format!("{}: subscribe {filter}", self.client_id))?;
        let what = format!("SUBACK for {filter}");
        let pkid = self.next(&what, |seen| matches!(seen, Seen::Sent(Outgoing::Subscribe(_)))).await?;
        let Seen::Sent(Outgoing::Subscribe(pkid)) = pkid else { bail!("{what}: unexpected {pkid:?}") };
        let ack =
            self.next(&what, |seen| matches!(seen, Seen::Packet(Packet::SubAck(ack)) if ack.pkid == pkid)).await?;
        match ack {
            Seen::Packet(Packet::SubAck(ack)) => ack.return_codes.first().copied().context("an empty SUBACK"),
            other => bail!("{what}: unexpected {other:?}"),
        }
    }

    /// Subscribes and fails unless the broker granted it.
    pub async fn subscribe_granted(&mut self, filter: &str, qos: QoS) -> Result<()> {
        match self.subscribe(filter, qos).await? {
            SubscribeReasonCode::Success(_) => Ok(()),
            SubscribeReasonCode::Failure => {
                bail!("{}: the broker refused the subscription to {filter}", self.client_id)
            }
        }
    }

    /// Publishes and waits until it is written (QoS 0) or acknowledged (QoS 1: PUBACK; QoS 2:
    /// PUBCOMP). Mosquitto acknowledges a publish its ACL denies too: that proves nothing.
    pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .with_context(|| format!("{}: publish to {topic}", self.client_id))?;
        let what = format!("the publish to {topic} to go out");
        let sent = self.next(&what, |seen| matches!(seen, Seen::Sent(Outgoing::Publish(_)))).await?;
        let Seen::Sent(Outgoing::Publish(pkid)) = sent else { bail!("{what}: unexpected {sent:?}") };
        let what = format!("the broker to acknowledge the publish to {topic}");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.next(&what, |seen| matches!(seen, Seen::Packet(Packet::PubAck(ack)) if ack.pkid == pkid)).await?;
            }
            QoS::ExactlyOnce => {
                self.next(&what, |seen| matches!(seen, Seen::Packet(Packet::PubComp(ack)) if ack.pkid == pkid)).await?;
            }
        }
        Ok(())
    }

    /// The next message, waiting up to `deadline`.
    pub async fn recv(&mut self, deadline: Duration) -> Result<Publish> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(message) = self.messages.pop_front() {
                return Ok(message);
            }
            self.pump(until, "a message").await?;
        }
    }

    /// Every message up to and including the first that `last` matches, in order of arrival.
    pub async fn recv_until(
        &mut self,
        deadline: Duration,
        mut last: impl FnMut(&Publish) -> bool,
    ) -> Result<Vec<Publish>> {
        let until = Instant::now() + deadline;
        let mut out = Vec::new();
        loop {
            while let Some(message) = self.messages.pop_front() {
                let done = last(&message);
                out.push(message);
                if done {
                    return Ok(out);
                }
            }
            let topics: Vec<&str> = out.iter().map(|m| m.topic.as_str()).collect();
            self.pump(until, &format!("the awaited message (so far: {topics:?})")).await?;
        }
    }

    /// The next message on `topic` (others are dropped), parsed as JSON.
    pub async fn recv_json<T: DeserializeOwned>(&mut self, topic: &str, deadline: Duration) -> Result<T> {
        let mut messages = self.recv_until(deadline, |m| m.topic == topic).await?;
        let message = messages.pop().context("recv_until returned nothing")?;
        serde_json::from_slice(&message.payload)
            .with_context(|| format!("{topic}: unexpected payload {:?}", String::from_utf8_lossy(&message.payload)))
    }

    /// Waits until the connection ends (the broker dropped it) and returns why, as the client
    /// saw it. Messages that arrive first are kept.
    pub async fn closed(&mut self, deadline: Duration) -> Result<String> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(reason) = &self.closed {
                return Ok(reason.clone());
            }
            self.pump(until, "the connection to close").await?;
        }
    }

    /// Whether the connection has ended, as far as seen so far.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Sends DISCONNECT (so the broker does not send the will) and waits until it is written.
    pub async fn disconnect(mut self) -> Result<()> {
        self.client.disconnect().await.with_context(|| format!("{}: disconnect", self.client_id))?;
        self.next("DISCONNECT to go out", |seen| matches!(seen, Seen::Sent(Outgoing::Disconnect))).await?;
        Ok(())
    }

    /// Waits for an event `wanted` matches, keeping messages that arrive meanwhile.
    async fn next(&mut self, what: &str, mut wanted: impl FnMut(&Seen) -> bool) -> Result<Seen> {
        let until = Instant::now() + MQTT_DEADLINE;
        loop {
            if let Some(reason) = &self.closed {
                bail!("{}: the connection closed ({reason}) while waiting for {what}", self.client_id);
            }
            let remaining = until.saturating_duration_since(Instant::now());
            let seen = match tokio::time::timeout(remaining, self.seen.recv()).await {
                Ok(Some(seen)) => seen,
                Ok(None) => Seen::Closed("the event loop stopped".to_owned()),
                Err(_) => bail!("{}: gave up after {MQTT_DEADLINE:?} waiting for {what}", self.client_id),
            };
            if wanted(&seen) {
                return Ok(seen);
            }
            self.keep(seen);
        }
    }

    /// Takes one event (or fails at `until`), keeping messages and noting a closed connection.
    async fn pump(&mut self, until: Instant, what: &str) -> Result<()> {
        if let Some(reason) = &self.closed {
            bail!("{}: the connection closed ({reason}) while waiting for {what}", self.client_id);
        }
        let remaining = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.seen.recv()).await {
            Ok(Some(seen)) => self.keep(seen),
            Ok(None) => self.closed = Some("the event loop stopped".to_owned()),
            Err(_) => bail!("{}: timed out waiting for {what}", self.client_id),
        }
        Ok(())
    }

    fn keep(&mut self, seen: Seen) {
        match seen {
            Seen::Packet(Packet::Publish(message)) => self.messages.push_back(message),
            Seen::Closed(reason) => self.closed = Some(reason),
            Seen::Packet(_) | Seen::Sent(_) => {}
        }
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `tests/appliance.py`.
pub fn appliance_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.py")
}

/// What a run of `tests/appliance.py` printed and how it exited.
#[derive(Debug, Clone)]
pub struct ApplianceRun {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ApplianceRun {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The one JSON line a successful run prints, parsed.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        ensure!(self.success(), "{self}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        let [line] = lines.as_slice() else { bail!("expected one line on stdout:\n{self}") };
        serde_json::from_str(line).with_context(|| format!("not the expected JSON:\n{self}"))
    }

    /// The one-line reason a failed run prints on stderr.
    pub fn error_line(&self) -> Result<&str> {
        ensure!(!self.success(), "expected appliance.py to fail, but it succeeded:\n{self}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.as_slice() {
            [line] if line.starts_with("appliance.py: ") => Ok(line),
            _ => bail!("expected one stderr line starting `appliance.py: `:\n{self}"),
        }
    }
}

impl std::fmt::Display for ApplianceRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "appliance.py {} → {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `/usr/bin/python3 tests/appliance.py <args>` to completion (killed after
/// [`APPLIANCE_DEADLINE`]), without the environment's Python or proxy settings.
pub async fn run_appliance<S: AsRef<OsStr>>(args: &[S]) -> Result<ApplianceRun> {
    ensure!(Path::new(SYSTEM_PYTHON).is_file(), "{SYSTEM_PYTHON} not found: {SETUP_HINT}");
    let dir = tempfile::Builder::new().prefix("machinomy-appliance-").tempdir().context("cannot create a temp dir")?;
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let stdout = fs::File::create(&stdout_path).context("cannot create the appliance's stdout file")?;
    let stderr = fs::File::create(&stderr_path).context("cannot create the appliance's stderr file")?;
    let mut command = Command::new(SYSTEM_PYTHON);
    command.arg(appliance_script()).args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    for var in [
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command.env("PYTHONNOUSERSITE", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    let mut child = command.spawn().with_context(|| format!("cannot start {SYSTEM_PYTHON}: {SETUP_HINT}"))?;
    let status = wait_exit(&mut child, APPLIANCE_DEADLINE).await?;
    let run = ApplianceRun {
        args: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect(),
        status: match status {
            Some(status) => status,
            None => bail!(
                "appliance.py did not finish within {APPLIANCE_DEADLINE:?}; killed it\n--- stderr ---\n{}",
                tail(&stderr_path, LOG_TAIL_LINES)
            ),
        },
        stdout: fs::read_to_string(&stdout_path).context("cannot read the appliance's stdout")?,
        stderr: fs::read_to_string(&stderr_path).context("cannot read the appliance's stderr")?,
    };
    Ok(run)
}
