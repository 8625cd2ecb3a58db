//! Helpers for the end-to-end tests: real `machinomy-hub` processes, each in its own temporary
//! directory, listening on loopback port 0.
//!
//! ```text
//! let mut hub = TestHub::new()?;          // writes <tmp>/hub.toml (data_dir = "data", port 0)
//! hub.start().await?;                     // `run`, then waits for run/api.addr and /healthz
//! let out = hub.cli(&["status"]).await?;  // the CLI with --config <tmp>/hub.toml
//! hub.stop().await?;                      // SIGTERM, waits for the exit status
//! ```
//!
//! The binary under test is `machinomy-hub` from the same target directory and profile as the
//! test binary (see [`hub_bin`]), or `$MACHINOMY_HUB_BIN`.
//!
//! Every wait polls for a condition with a deadline; nothing sleeps for a fixed time. Every log
//! a hub process writes goes to a file in its test directory, and an error about that process
//! ends with the log's tail. A test that panics keeps its directory and says where it is.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use machinomy_core::{Amount, ChannelId, PromiseBody, SigningKey, SpendRequest, Subject, Timestamp};
use machinomy_hub::Hub;
use machinomy_hub::config::Config;
use machinomy_hub::datadir::{API_ADDR_FILE, RUN_DIR, TOKEN_FILE};
use machinomy_hub::ledger::Proposal;
use machinomy_hub::payments::IncomingMeta;
use serde::de::DeserializeOwned;
use tempfile::TempDir;

pub mod browser;
pub mod mosquitto;
pub mod plugins;

/// How long a hub may take to start answering, or to stop after a signal.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(20);
/// How long one CLI command may take.
pub const CLI_DEADLINE: Duration = Duration::from_secs(20);
/// How often a wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many lines of a log an error shows.
const LOG_TAIL_LINES: usize = 30;

/// The env var that names a prebuilt hub binary (skips the build in [`hub_bin`]).
pub const HUB_BIN_ENV: &str = "MACHINOMY_HUB_BIN";

/// Variables a hub process must not inherit from whoever runs the tests: they would change which
/// config it reads, what it logs, or where its HTTP client connects.
const SCRUBBED_ENV: &[&str] = &[
    "MACHINOMY_CONFIG",
    "RUST_LOG",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The `machinomy-hub` binary to test.
///
/// `$MACHINOMY_HUB_BIN` wins when set. Otherwise this runs `cargo build -p machinomy-hub --bin
/// machinomy-hub` once per test process, into the target directory and profile the test binary
/// itself was built in (`<target>/<profile>/deps/<test>` → `<target>/<profile>/machinomy-hub`).
///
/// Why build here: cargo builds a package's binaries for its own integration tests only, so
/// `cargo test -p machinomy-tests` builds the hub *library* but not the hub *binary*. Using
/// whatever binary happens to be lying in the target directory would test stale code after any
/// change to the hub; building (a no-op when it is fresh) always tests the current source.
pub fn hub_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_and_build_hub().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn locate_and_build_hub() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(HUB_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "${HUB_BIN_ENV} names {}, which is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the test binary's own path")?;
    let deps = exe.parent().filter(|d| d.file_name().is_some_and(|n| n == "deps")).ok_or_else(|| {
        anyhow!(
            "the test binary {} is not in a cargo `deps` directory; set ${HUB_BIN_ENV} to the hub binary",
            exe.display()
        )
    })?;
    let profile_dir = deps.parent().context("a deps directory without a parent")?;
    let profile_name = profile_dir.file_name().and_then(|n| n.to_str()).context("an unreadable profile directory")?;
    // Cargo's `dev` profile builds into `debug/`; every other profile into a directory of its name.
    let profile = if profile_name == "debug" { "dev" } else { profile_name };
    let mut target_dir = profile_dir.parent().context("a profile directory without a parent")?.to_owned();
    // With `--target <triple>` the layout is <target>/<triple>/<profile>; cargo marks the root.
    let mut triple = None;
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let Some(root) = target_dir.parent().filter(|root| root.join("CACHEDIR.TAG").exists())
    {
        triple = target_dir.file_name().map(ToOwned::to_owned);
        target_dir = root.to_owned();
    }
    let bin = profile_dir.join("machinomy-hub");

    let workspace_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = Command::new(&cargo);
    build
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&workspace_manifest)
        .args(["-p", "machinomy-hub", "--bin", "machinomy-hub", "--profile", profile])
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null());
    // What cargo set for this test binary's run (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …) must not
    // reach the inner cargo: build scripts that watch those variables (ring's) would see them
    // change between this build and the next outer `cargo test`, and rebuild every crate above
    // them both times.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_cargo_run_var) {
            build.env_remove(&key);
        }
    }
    if let Some(triple) = &triple {
        build.arg("--target").arg(triple);
    }
    let output = build
        .output()
        .with_context(|| format!("cannot run {} to build the hub (or set ${HUB_BIN_ENV})", cargo.to_string_lossy()))?;
    ensure!(
        output.status.success(),
        "building the hub failed ({}); build it with `cargo build -p machinomy-hub` or set ${HUB_BIN_ENV}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        bin.is_file(),
        "no hub binary at {} after building it; build it with `cargo build -p machinomy-hub` or set ${HUB_BIN_ENV}",
        bin.display()
    );
    Ok(bin)
}

/// Whether cargo sets `key` for the process it runs (a test binary, a build script), as opposed
/// to cargo's own configuration (`CARGO_HOME`, `CARGO_BUILD_*`, `CARGO_NET_*`, …).
fn is_cargo_run_var(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_BIN_EXE_")
}

/// Polls `check` until it returns `Some`, or fails after `deadline` saying what it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= until {
            bail!("gave up after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// What a finished CLI command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The stdout of a command that must have succeeded.
    pub fn ok(&self) -> Result<&str> {
        ensure!(self.success(), "{self}");
        Ok(&self.stdout)
    }

    /// The stdout of a successful command, parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.ok()?).with_context(|| format!("stdout of {:?} is not the expected JSON", self.args))
    }

    /// The one line a failed command must print: `machinomy-hub: <message>`. Fails if the
    /// command succeeded or printed anything else on stderr.
    pub fn error_line(&self) -> Result<&str> {
        ensure!(!self.success(), "expected {:?} to fail, but it succeeded:\n{self}", self.args);
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.as_slice() {
            [line] if line.starts_with("machinomy-hub: ") => Ok(line),
            _ => bail!("expected one stderr line starting `machinomy-hub: `:\n{self}"),
        }
    }
}

impl CliOutput {
    /// The error line of a failed `run`, whose stderr is also the daemon's log: the last line,
    /// and the only one starting `machinomy-hub: `.
    pub fn final_error_line(&self) -> Result<&str> {
        ensure!(!self.success(), "expected {:?} to fail, but it succeeded:\n{self}", self.args);
        let errors = self.stderr.lines().filter(|l| l.starts_with("machinomy-hub: ")).count();
        match self.stderr.lines().last() {
            Some(line) if errors == 1 && line.starts_with("machinomy-hub: ") => Ok(line),
            _ => bail!("expected stderr to end with one line starting `machinomy-hub: `:\n{self}"),
        }
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machinomy-hub {} → {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// How a [`TestHub`] finds its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigMode {
    /// A `hub.toml` the helper writes, passed with `--config`.
    Explicit,
    /// No `--config`: `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME` point into the test dir,
    /// and nothing is written beforehand.
    Xdg,
}

/// Builds a [`TestHub`]'s config.
#[derive(Debug, Clone)]
pub struct TestHubBuilder {
    name: String,
    hub_lines: Vec<String>,
    /// `None`: the peer network is off. `Some`: on, on loopback only, with these extra lines.
    p2p_lines: Option<Vec<String>>,
    /// `None`: no MQTT bridge. `Some`: the `[mqtt]` table's lines.
    mqtt_lines: Option<Vec<String>>,
    extra: Vec<String>,
}

impl TestHubBuilder {
    /// The hub's `[hub] name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// A line in the `[hub]` table, e.g. `approval_ttl_secs = 60`.
    pub fn hub_line(mut self, line: &str) -> Self {
        self.hub_lines.push(line.to_owned());
        self
    }

    /// Turns the peer network on: listening on loopback only (TCP and QUIC, free ports), mDNS off
    /// (it would send multicast beyond loopback); `lines` go into the `[p2p]` table
    /// (e.g. `bootstrap = ["/ip4/127.0.0.1/tcp/…/p2p/…"]`).
    pub fn p2p(mut self, lines: &[&str]) -> Self {
        self.p2p_lines = Some(lines.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// Runs the embedded MQTT broker on a free loopback port (returned, for devices to use).
    pub fn embedded_mqtt(mut self) -> Result<(Self, u16)> {
        let port = free_port()?;
        self.mqtt_lines = Some(vec![format!("listen = \"127.0.0.1:{port}\"")]);
        Ok((self, port))
    }

    /// The `[mqtt]` table's lines (e.g. an external broker).
    pub fn mqtt(mut self, lines: &[&str]) -> Self {
        self.mqtt_lines = Some(lines.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// TOML appended after `[hub]` and `[web]`: other tables, `[[budget]]` entries.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// The config text this builder writes.
    pub fn config_text(&self) -> String {
        let mut text = String::from("[hub]\n");
        let _ = writeln!(text, "name = {}", toml_string(&self.name));
        text.push_str("data_dir = \"data\"\n");
        for line in &self.hub_lines {
            let _ = writeln!(text, "{line}");
        }
        text.push_str("\n[web]\nlisten = \"127.0.0.1:0\"\n");
        match &self.p2p_lines {
            None => text.push_str("\n[p2p]\nenabled = false\n"),
            Some(lines) => {
                if lines.iter().any(|l| l.trim_start().starts_with("listen")) {
                    text.push_str("\n[p2p]\nmdns = false\n");
                } else {
                    text.push_str(P2P_LOOPBACK);
                }
                for line in lines {
                    let _ = writeln!(text, "{line}");
                }
            }
        }
        // Off unless asked for: the broker's default port is fixed, and tests run side by side.
        text.push_str("\n[mqtt]\n");
        match &self.mqtt_lines {
            None => text.push_str("mode = \"off\"\n"),
            Some(lines) => {
                for line in lines {
                    let _ = writeln!(text, "{line}");
                }
            }
        }
        for extra in &self.extra {
            let _ = write!(text, "\n{extra}\n");
        }
        text
    }

    /// Creates the test directory and writes `hub.toml` into it.
    pub fn build(self) -> Result<TestHub> {
        let hub = TestHub::empty(ConfigMode::Explicit)?;
        fs::write(&hub.config_path, self.config_text())
            .with_context(|| format!("cannot write {}", hub.config_path.display()))?;
        Ok(hub)
    }
}

/// A free TCP port on loopback, for a process to bind later (or a hub that must come back on
/// the same address). Picked at random below the kernel's ephemeral range: ports there are
/// never handed to outgoing connections or to `bind(…:0)`; and never handed out twice by this
/// process, so two tests side by side do not get the same one.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ephemeral_start = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    if ephemeral_start > LOWEST {
        let span = ephemeral_start - LOWEST;
        for _ in 0..64 {
            let mut bytes = [0u8; 2];
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("cannot gather randomness: {e}"))?;
            let port = LOWEST + u16::from_le_bytes(bytes) % span;
            if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr().context("cannot read the port")?.port())
}

/// The `[p2p]` table of a test hub on the peer network: loopback only, no mDNS.
pub const P2P_LOOPBACK: &str =
    "\n[p2p]\nlisten = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\n";

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One hub under test: a temporary directory with its config and data dir, and at most one
/// running `machinomy-hub run` process. Dropping it kills a process still running.
#[derive(Debug)]
pub struct TestHub {
    /// `None` only once `Drop` has decided whether to keep the directory.
    dir: Option<TempDir>,
    root: PathBuf,
    mode: ConfigMode,
    config_path: PathBuf,
    data_dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    process: Option<Running>,
    /// How many processes (daemons and CLI commands) this hub has started; names log files.
    spawned: AtomicU32,
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    addr: Option<SocketAddr>,
}

impl TestHub {
    pub fn builder() -> TestHubBuilder {
        TestHubBuilder {
            name: "test-hub".to_owned(),
            hub_lines: Vec::new(),
            p2p_lines: None,
            mqtt_lines: None,
            extra: Vec::new(),
        }
    }

    /// A hub with the default test config: `data_dir = "data"`, `listen = "127.0.0.1:0"`.
    pub fn new() -> Result<TestHub> {
        TestHub::builder().build()
    }

    /// A hub for first-run tests: nothing on disk and no `--config`, so the hub's defaults apply;
    /// they land in the test directory, where `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME` point
    /// (for every test hub).
    pub fn first_run() -> Result<TestHub> {
        TestHub::empty(ConfigMode::Xdg)
    }

    fn empty(mode: ConfigMode) -> Result<TestHub> {
        let dir = tempfile::Builder::new().prefix("machinomy-e2e-").tempdir().context("cannot create a temp dir")?;
        let root = dir.path().to_owned();
        fs::create_dir(root.join("logs")).context("cannot create the logs dir")?;
        // Both kinds get a HOME of their own, so no hub reads or writes the real one.
        let home = root.join("home");
        let config_home = home.join(".config");
        let data_home = home.join(".local").join("share");
        fs::create_dir(&home).context("cannot create the test HOME")?;
        let env = vec![
            (OsString::from("HOME"), home.into_os_string()),
            (OsString::from("XDG_CONFIG_HOME"), config_home.clone().into_os_string()),
            (OsString::from("XDG_DATA_HOME"), data_home.clone().into_os_string()),
        ];
        let (config_path, data_dir) = match mode {
            ConfigMode::Explicit => (root.join("hub.toml"), root.join("data")),
            ConfigMode::Xdg => (config_home.join("machinomy").join("hub.toml"), data_home.join("machinomy")),
        };
        Ok(TestHub {
            dir: Some(dir),
            root,
            mode,
            config_path,
            data_dir,
            env,
            process: None,
            spawned: AtomicU32::new(0),
        })
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn api_addr_file(&self) -> PathBuf {
        self.data_dir.join(RUN_DIR).join(API_ADDR_FILE)
    }

    /// Sets an environment variable for every process this hub starts from now on.
    pub fn set_env(&mut self, key: &str, value: impl Into<OsString>) {
        let key = OsString::from(key);
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
    }

    /// Replaces the config file.
    pub fn write_config(&self, text: &str) -> Result<()> {
        fs::write(&self.config_path, text).with_context(|| format!("cannot write {}", self.config_path.display()))
    }

    /// Appends TOML to the config file (e.g. a `[web]` table to a first-run config).
    pub fn append_config(&self, toml: &str) -> Result<()> {
        let mut text = fs::read_to_string(&self.config_path)
            .with_context(|| format!("cannot read {}", self.config_path.display()))?;
        let _ = write!(text, "\n{toml}\n");
        fs::write(&self.config_path, text).with_context(|| format!("cannot write {}", self.config_path.display()))
    }

    /// The admin token from the data dir.
    pub fn token(&self) -> Result<String> {
        let path = self.data_dir.join(TOKEN_FILE);
        Ok(fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?.trim().to_owned())
    }

    /// Where the running hub's API listens.
    pub fn addr(&self) -> Result<SocketAddr> {
        self.process.as_ref().and_then(|p| p.addr).context("the hub is not running")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The process id of the running hub.
    pub fn pid(&self) -> Result<u32> {
        Ok(self.process.as_ref().context("the hub is not running")?.child.id())
    }

    /// Everything the running (or last) hub process wrote to stderr: its log.
    pub fn log(&self) -> Result<String> {
        let path = self.log_path(self.last_daemon_run()?, "stderr");
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    fn last_daemon_run(&self) -> Result<u32> {
        // Daemon logs are named daemon-<n>; find the newest.
        let mut newest = None;
        for entry in fs::read_dir(self.root.join("logs")).context("cannot list the logs dir")? {
            let name = entry.context("cannot list the logs dir")?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix("daemon-").and_then(|r| r.strip_suffix(".stderr"))
                && let Ok(n) = n.parse::<u32>()
            {
                newest = newest.max(Some(n));
            }
        }
        newest.context("no hub process has been started")
    }

    fn next_spawn(&self) -> u32 {
        self.spawned.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn log_path(&self, n: u32, stream: &str) -> PathBuf {
        self.root.join("logs").join(format!("daemon-{n}.{stream}"))
    }

    /// A command for the hub binary with this hub's environment (and `--config` unless this is a
    /// first-run hub). Output is not redirected.
    pub fn command(&self) -> Result<Command> {
        let mut command = self.bare_command()?;
        if self.mode == ConfigMode::Explicit {
            command.arg("--config").arg(&self.config_path);
        }
        Ok(command)
    }

    /// The hub binary with this hub's environment and no arguments.
    fn bare_command(&self) -> Result<Command> {
        let mut command = Command::new(hub_bin()?);
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        command.env("RUST_LOG", "info");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.current_dir(&self.root).stdin(Stdio::null());
        Ok(command)
    }

    /// Runs `machinomy-hub <args>` to completion (killed after [`CLI_DEADLINE`]).
    pub async fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let mut command = self.command()?;
        command.args(args);
        self.run_to_end(command, args, CLI_DEADLINE).await
    }

    /// Runs the hub binary with `args` to completion, without this hub's `--config`: for testing
    /// how the CLI treats its arguments.
    pub async fn cli_raw(&self, args: &[&str]) -> Result<CliOutput> {
        let mut command = self.bare_command()?;
        command.args(args);
        self.run_to_end(command, args, CLI_DEADLINE).await
    }

    /// Runs a command to completion with its output in files (so it can never block on a full
    /// pipe), killing it after `deadline`.
    pub async fn run_to_end(&self, mut command: Command, args: &[&str], deadline: Duration) -> Result<CliOutput> {
        let n = self.next_spawn();
        let stdout_path = self.root.join("logs").join(format!("cli-{n}.stdout"));
        let stderr_path = self.root.join("logs").join(format!("cli-{n}.stderr"));
        command.stdout(create(&stdout_path)?).stderr(create(&stderr_path)?);
        let mut child = command.spawn().with_context(|| format!("cannot start machinomy-hub {}", args.join(" ")))?;
        let status = wait_exit(&mut child, deadline).await?;
        let read = |path: &Path| fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
        let output = CliOutput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: status.with_context(|| {
                format!(
                    "machinomy-hub {} did not finish within {deadline:?}; killed it. stderr:\n{}",
                    args.join(" "),
                    tail(&stderr_path, LOG_TAIL_LINES)
                )
            })?,
            stdout: read(&stdout_path)?,
            stderr: read(&stderr_path)?,
        };
        Ok(output)
    }

    /// Starts `machinomy-hub run` and waits until it has written `run/api.addr` and answers
    /// `/healthz` there.
    pub async fn start(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "the hub is already running");
        // A hub that was killed leaves its address file behind; wait for a new one, not that.
        let stale = fs::metadata(self.api_addr_file()).ok().map(|m| (m.dev(), m.ino()));

        let n = self.next_spawn();
        let (stdout, stderr) = (self.log_path(n, "stdout"), self.log_path(n, "stderr"));
        let mut command = self.command()?;
        command.arg("run").stdout(create(&stdout)?).stderr(create(&stderr)?);
        let child = command.spawn().context("cannot start machinomy-hub run")?;
        self.process = Some(Running { child, stdout, stderr, addr: None });

        match self.wait_ready(stale).await {
            Ok(addr) => {
                if let Some(process) = self.process.as_mut() {
                    process.addr = Some(addr);
                }
                Ok(())
            }
            Err(e) => {
                let logs = self.describe_process();
                // Don't leave a half-started hub behind.
                if let Some(mut process) = self.process.take() {
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                }
                Err(e.context(format!("the hub did not start\n{logs}")))
            }
        }
    }

    async fn wait_ready(&mut self, stale: Option<(u64, u64)>) -> Result<SocketAddr> {
        let client = http_client()?;
        let addr_file = self.api_addr_file();
        let until = Instant::now() + PROCESS_DEADLINE;
        loop {
            let process = self.process.as_mut().context("the hub is not running")?;
            if let Some(status) = process.child.try_wait().context("cannot check on the hub process")? {
                self.process_exited();
                bail!("machinomy-hub run exited ({status}) before it answered");
            }
            let fresh = fs::metadata(&addr_file).ok().filter(|m| Some((m.dev(), m.ino())) != stale);
            if fresh.is_some()
                && let Some(addr) = machinomy_hub::datadir::read_api_addr(&self.data_dir)
                && let Ok(response) = client.get(format!("http://{addr}/healthz")).send().await
                && response.status().is_success()
            {
                return Ok(addr);
            }
            if Instant::now() >= until {
                bail!("gave up after {PROCESS_DEADLINE:?} waiting for {} and /healthz", addr_file.display());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The process exited on its own: reap it. Its logs stay where `describe_process` finds them.
    fn process_exited(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.wait();
        }
    }

    /// The tails of the current (or last) hub process's logs, for error messages.
    pub fn describe_process(&self) -> String {
        let (stdout, stderr) = match (&self.process, self.last_daemon_run()) {
            (Some(p), _) => (p.stdout.clone(), p.stderr.clone()),
            (None, Ok(n)) => (self.log_path(n, "stdout"), self.log_path(n, "stderr")),
            (None, Err(_)) => return "(no hub process was started)".to_owned(),
        };
        format!(
            "--- {} (tail) ---\n{}\n--- {} (tail) ---\n{}",
            stdout.display(),
            tail(&stdout, LOG_TAIL_LINES),
            stderr.display(),
            tail(&stderr, LOG_TAIL_LINES)
        )
    }

    /// Stops the hub with SIGTERM and returns its exit status.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_with("TERM").await
    }

    /// Stops the hub with SIGINT (what ctrl-c sends) and returns its exit status.
    pub async fn interrupt(&mut self) -> Result<ExitStatus> {
        self.stop_with("INT").await
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `INT`) and waits for the exit.
    pub async fn stop_with(&mut self, signal: &str) -> Result<ExitStatus> {
        let pid = self.pid()?;
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("cannot run `kill` to signal the hub")?;
        ensure!(sent.success(), "kill -{signal} {pid} failed ({sent})");
        let process = self.process.as_mut().context("the hub is not running")?;
        let waited = wait_exit(&mut process.child, PROCESS_DEADLINE).await;
        let logs = self.describe_process();
        self.process = None;
        match waited {
            Ok(Some(status)) => Ok(status),
            Ok(None) => bail!("the hub did not exit within {PROCESS_DEADLINE:?} of SIG{signal}; killed it\n{logs}"),
            Err(e) => Err(e.context(logs)),
        }
    }

    /// Kills the hub with SIGKILL (no chance to clean up) and waits for it.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        let mut process = self.process.take().context("the hub is not running")?;
        process.child.kill().context("cannot kill the hub")?;
        process.child.wait().context("cannot wait for the killed hub")
    }

    /// An authenticated client for the running hub's admin API.
    pub fn api(&self) -> Result<Api> {
        Ok(Api { base: format!("http://{}", self.addr()?), token: self.token()?, client: http_client()? })
    }

    /// Opens the hub's books in this process, runs `seed` on them, then closes them (flushed,
    /// and the store's lock released) whatever `seed` returned. The hub process must be stopped:
    /// the store is locked while it runs.
    pub async fn with_books<T>(&self, seed: impl AsyncFnOnce(&Hub) -> Result<T>) -> Result<T> {
        let hub = self.open_hub_in_process().await?;
        let seeded = seed(&hub).await;
        let closed = hub.close().await;
        // The store's lock goes with the last handle, not with `close`.
        drop(hub);
        let value = seeded?;
        closed.context("closing the books opened in-process")?;
        Ok(value)
    }

    /// Opens the hub's books in this process, for seeding data the API cannot create. The hub
    /// process must be stopped (the store is locked while it runs). Before starting the process
    /// again, `close().await` the hub *and drop it*: the store stays locked until the last
    /// handle is gone. [`TestHub::with_books`] does both.
    pub async fn open_hub_in_process(&self) -> Result<Hub> {
        ensure!(self.process.is_none(), "stop the hub process before opening its books in-process");
        // What the hub itself would default to, with the test HOME (see `empty`).
        let default_data_dir = self.root.join("home").join(".local").join("share").join("machinomy");
        let config = Config::load(&self.config_path, &default_data_dir)?;
        let (hub, _created) = Hub::open(&config).await?;
        Ok(hub)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            let kept = dir.keep();
            eprintln!("machinomy-tests: the failed test's hub directory is kept at {}", kept.display());
        }
    }
}

fn create(path: &Path) -> Result<fs::File> {
    fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Polls a child until it exits; `None` (after killing it) if it outlives `deadline`.
async fn wait_exit(child: &mut Child, deadline: Duration) -> Result<Option<ExitStatus>> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().context("cannot check on a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// An HTTP client for loopback tests: no proxy, bounded waits.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        // Above the hub's own waits on peers (a dial, a channel opening) on a loaded machine.
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build an HTTP client")
}

/// The admin API of a running hub: requests get the bearer token unless built with
/// [`Api::anonymous`].
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(&self.token)
    }

    /// A request without any credentials.
    pub fn anonymous(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, path)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, path)
    }

    /// GETs `path` and parses a successful JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.get(path).send().await.with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("GET {path}: reading the body"))?;
        ensure!(status.is_success(), "GET {path} → {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("GET {path}: unexpected JSON: {text}"))
    }
}

/// The `{"error": ...}` answer of a failed request: its status and message.
pub async fn error_answer(response: reqwest::Response) -> Result<(reqwest::StatusCode, String)> {
    let status = response.status();
    let text = response.text().await.context("reading an error answer")?;
    let body: machinomy_web::model::ErrorBody =
        serde_json::from_str(&text).with_context(|| format!("{status}: not an error body: {text}"))?;
    ensure!(!body.error.is_empty(), "{status}: an empty error message");
    Ok((status, body.error))
}

/// A file's permission bits.
pub fn file_mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?.mode() & 0o777)
}

/// The public key (hex, as the hub prints it) of the secret in an `identity.key` file.
pub fn identity_in(key_file: &Path) -> Result<String> {
    let text = fs::read_to_string(key_file).with_context(|| format!("cannot read {}", key_file.display()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).with_context(|| format!("{} is not 64 hex", key_file.display()))?;
    Ok(hex::encode(SigningKey::from_bytes(&secret).verifying_key().as_bytes()))
}

/// Every path under `dir`, relative to it, sorted: to show that nothing was created or removed.
pub fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
            out.push(path.strip_prefix(root)?.to_owned());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// A fresh random ed25519 key (a peer hub's identity, a device's key).
pub fn random_key() -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&random_bytes()?))
}

pub fn random_channel_id() -> Result<ChannelId> {
    Ok(ChannelId::from_bytes(random_bytes()?))
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("cannot gather randomness: {e}"))?;
    Ok(bytes)
}

/// A receiver channel seeded into a hub's books by [`seed_receiver_channel`].
#[derive(Debug)]
pub struct SeededChannel {
    pub id: ChannelId,
    /// The (test-made) sender's key.
    pub sender: SigningKey,
    pub capacity: Amount,
    /// The cumulative amount of the last accepted promise: everything paid.
    pub total: Amount,
}

/// Opens a credit channel from a new random sender to `hub` and has `hub` accept one promise
/// per increment (cumulative amounts, as a real sender would sign them), each recorded in the
/// spending ledger under `subject`.
pub async fn seed_receiver_channel(
    hub: &Hub,
    capacity: Amount,
    increments: &[Amount],
    subject: &Subject,
    memo: &str,
) -> Result<SeededChannel> {
    let sender = random_key()?;
    let proposal = Proposal {
        channel: random_channel_id()?,
        sender: sender.verifying_key().into(),
        capacity,
        settlement_period_secs: 24 * 3600,
    };
    let terms = hub.payments().accept_proposal(&proposal, machinomy_hub::now()).await?;
    let meta = IncomingMeta { subject: subject.clone(), memo: memo.to_owned() };
    let mut total = Amount::ZERO;
    for increment in increments {
        total = total.checked_add(*increment)?;
        let promise =
            PromiseBody { ledger: terms.ledger.clone(), channel: terms.id, amount: total, stream: None }.sign(&sender);
        let acceptance = hub.payments().accept(promise, &meta, machinomy_hub::now()).await?;
        ensure!(acceptance.increment == *increment, "accepted {:?}, expected {increment:?}", acceptance.increment);
    }
    Ok(SeededChannel { id: terms.id, sender, capacity: terms.capacity, total })
}

/// A spend request as a device would make it.
pub fn spend_request(subject: &str, payee: &str, amount: Amount, memo: &str) -> Result<SpendRequest> {
    Ok(SpendRequest {
        subject: subject.parse()?,
        payee: payee.to_owned(),
        amount,
        memo: memo.to_owned(),
        reference: format!("ref-{memo}"),
        created_at: machinomy_hub::now(),
    })
}

/// The hub's clock, for bracketing timestamps the hub records.
pub fn now() -> Timestamp {
    machinomy_hub::now()
}
