//! A headless Chromium for the web UI's end-to-end tests, driven over WebDriver by chromedriver
//! (the Debian packages `chromium` and `chromium-driver`; `packaging/setup-dev.sh` installs them).
//!
//! ```text
//! let browser = Browser::start(Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui")).await?;
//! browser.goto(&format!("{base}/")).await?;                 // waits for the page to load
//! browser.fill("input[name=password]", "secret").await?;
//! browser.click("form button[type=submit]").await?;
//! browser.wait_for("the dashboard", PAGE_DEADLINE, async |b| b.find_text("h1").await).await?;
//! browser.screenshot("dashboard.png").await?;               // <dir>/dashboard.png, path printed
//! // dropped: chromedriver quits Chromium, and anything left in its process group is killed
//! ```
//!
//! Every browser has its own chromedriver on a free loopback port, its own profile
//! (`--user-data-dir`) and `HOME` in a temporary directory, and no proxy. chromedriver runs in a
//! process group of its own, which Chromium's processes join (all but its crash handler, which
//! leaves the group and exits with the browser), so dropping the [`Browser`] can end every
//! process it started. Chromium's helpers that outlive their parent by a moment are reparented
//! to PID 1 and show as `<defunct>` until it reaps them. A test that panics keeps the directory
//! (chromedriver's log is there) and says where it is.

use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{LOG_TAIL_LINES, POLL_INTERVAL, SCRUBBED_ENV, free_port, http_client, tail};

/// Debian's Chromium (a launcher script that execs `/usr/lib/chromium/chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver, of the same version as [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// What to install when either is missing or does not start.
const INSTALL_HINT: &str =
    "install the Debian packages chromium and chromium-driver (packaging/setup-dev.sh installs them)";

/// How long chromedriver may take to answer, and Chromium to start or stop.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(30);
/// How long a test should wait for a page to show something (see [`Browser::wait_for`]).
pub const PAGE_DEADLINE: Duration = Duration::from_secs(20);

/// Chromium's command line: headless, nothing that talks to the network on its own (updates,
/// sync, background requests, QUIC), a fixed window for comparable screenshots, and no proxy (the
/// tests use only loopback). The profile directory is added per browser.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
    "--window-size=1280,1024",
];

/// A headless Chromium with one WebDriver session. Dropping it ends chromedriver and Chromium.
#[derive(Debug)]
pub struct Browser {
    // Declared before `_driver`, so the session's handle goes before the processes do.
    client: Client,
    screenshots: PathBuf,
    /// Held for its `Drop`, which ends chromedriver and Chromium.
    _driver: Driver,
}

impl Browser {
    /// Starts chromedriver on a free loopback port, waits until its `/status` says it is ready,
    /// and opens a session: a headless Chromium with a fresh profile. Screenshots go to
    /// `screenshots` (created when the first is taken).
    pub async fn start(screenshots: impl Into<PathBuf>) -> Result<Browser> {
        for (binary, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
            ensure!(Path::new(binary).is_file(), "{what} is not installed (no {binary}): {INSTALL_HINT}");
        }
        let mut driver = Driver::spawn().await?;
        let profile = driver.dir.as_ref().context("chromedriver without its directory")?.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(capabilities) = capabilities else { bail!("capabilities are not a JSON object") };
        let url = driver.url();
        let session = tokio::time::timeout(
            BROWSER_DEADLINE,
            ClientBuilder::new(HttpConnector::new()).capabilities(capabilities).connect(&url),
        )
        .await;
        let why = match session {
            Ok(Ok(client)) => return Ok(Browser { client, screenshots: screenshots.into(), _driver: driver }),
            Ok(Err(e)) => one_line(&e),
            Err(_) => format!("no session within {BROWSER_DEADLINE:?}"),
        };
        let log = driver.keep_dir().join("chromedriver.log");
        bail!(
            "Chromium ({CHROMIUM}) did not start through chromedriver: {why} ({INSTALL_HINT}; log: {})",
            log.display()
        )
    }

    /// The WebDriver session, for what these helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for it to load (following redirects).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client.goto(url).await.map_err(|e| self.error(e, &format!("opening {url}")))
    }

    /// The current URL.
    pub async fn url(&self) -> Result<String> {
        let url = self.client.current_url().await.map_err(|e| self.error(e, "reading the current URL"))?;
        Ok(url.to_string())
    }

    /// The current URL's path (`/setup`, `/approvals`).
    pub async fn path(&self) -> Result<String> {
        let url = self.client.current_url().await.map_err(|e| self.error(e, "reading the current URL"))?;
        Ok(url.path().to_owned())
    }

    /// The page's title.
    pub async fn title(&self) -> Result<String> {
        self.client.title().await.map_err(|e| self.error(e, "reading the title"))
    }

    /// Replaces the value of the (first) field matching `css` with `text`, typed as keys.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let field = self.find(css).await?;
        field.clear().await.map_err(|e| self.error(e, &format!("clearing {css}")))?;
        field.send_keys(text).await.map_err(|e| self.error(e, &format!("typing into {css}")))
    }

    /// Clicks the (first) element matching `css`. A click that submits a form or follows a link
    /// returns once the next page has loaded.
    pub async fn click(&self, css: &str) -> Result<()> {
        // A live page may swap the element in between finding and clicking it: find it again.
        for _ in 0..5 {
            match self.find(css).await?.click().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_stale_element_reference() => continue,
                Err(e) => return Err(self.error(e, &format!("clicking {css}"))),
            }
        }
        Err(anyhow::anyhow!("clicking {css}: the element kept being replaced"))
    }

    /// The visible text of the (first) element matching `css`; an error when there is none.
    pub async fn text(&self, css: &str) -> Result<String> {
        self.find(css).await?.text().await.map_err(|e| self.error(e, &format!("reading the text of {css}")))
    }

    /// The visible text of the (first) element matching `css`, or `None` when there is none (or
    /// it went away while being read): for conditions in [`Browser::wait_for`].
    pub async fn find_text(&self, css: &str) -> Result<Option<String>> {
        let element = match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) if e.is_no_such_element() => return Ok(None),
            Err(e) => return Err(self.error(e, &format!("looking for {css}"))),
        };
        match element.text().await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.is_stale_element_reference() => Ok(None),
            Err(e) => Err(self.error(e, &format!("reading the text of {css}"))),
        }
    }

    /// Whether anything on the page matches `css`.
    pub async fn exists(&self, css: &str) -> Result<bool> {
        let found = self.client.find_all(Locator::Css(css)).await;
        Ok(!found.map_err(|e| self.error(e, &format!("looking for {css}")))?.is_empty())
    }

    /// Polls `condition` on the page until it returns `Some`, or fails after `deadline` saying
    /// what it waited for, where the browser is and what the page shows (and saves a screenshot
    /// of it).
    pub async fn wait_for<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut condition: impl AsyncFnMut(&Browser) -> Result<Option<T>>,
    ) -> Result<T> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(value) = condition(self).await? {
                return Ok(value);
            }
            if Instant::now() >= until {
                let page = self.describe().await;
                let shot = match self.screenshot(&format!("timeout-{}.png", slug(what))).await {
                    Ok(path) => format!("screenshot {}", path.display()),
                    Err(e) => format!("no screenshot: {e:#}"),
                };
                bail!("gave up after {deadline:?} waiting for {what}; {shot}\n{page}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Saves a PNG of the window as `name` in the screenshot directory, prints where, and
    /// returns the path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        ensure!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "a screenshot name must be a plain file name, not {name:?}"
        );
        let png = self.client.screenshot().await.map_err(|e| self.error(e, "taking a screenshot"))?;
        fs::create_dir_all(&self.screenshots)
            .with_context(|| format!("cannot create {}", self.screenshots.display()))?;
        let path = self.screenshots.join(name);
        fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    async fn find(&self, css: &str) -> Result<fantoccini::elements::Element> {
        self.client.find(Locator::Css(css)).await.map_err(|e| self.error(e, &format!("finding {css}")))
    }

    /// A WebDriver error as one line, with what was being done and on which page.
    fn error(&self, e: CmdError, doing: &str) -> anyhow::Error {
        anyhow!("browser: {doing}: {}", one_line(&e))
    }

    /// Where the browser is and the start of what the page shows, for errors.
    async fn describe(&self) -> String {
        let url = match self.client.current_url().await {
            Ok(url) => url.to_string(),
            Err(e) => format!("<unknown: {}>", one_line(&e)),
        };
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_else(|e| format!("<unreadable: {}>", one_line(&e))),
            Err(e) => format!("<no body: {}>", one_line(&e)),
        };
        let text: String = text.chars().take(2000).collect();
        format!("--- page at {url} ---\n{text}")
    }
}

/// chromedriver's process (the leader of its own process group; Chromium runs inside it), its
/// port, and the directory with the profile, the `HOME` and the logs.
struct Driver {
    child: Option<Child>,
    port: u16,
    /// `None` only once `Drop` has decided whether to keep it.
    dir: Option<TempDir>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("port", &self.port)
            .field("dir", &self.dir.as_ref().map(TempDir::path))
            .finish()
    }
}

impl Driver {
    /// Starts chromedriver and waits until it says it is ready.
    async fn spawn() -> Result<Driver> {
        let dir =
            tempfile::Builder::new().prefix("machinomy-browser-").tempdir().context("cannot create a temp dir")?;
        let home = dir.path().join("home");
        fs::create_dir(&home).with_context(|| format!("cannot create {}", home.display()))?;
        let port = free_port()?;
        let log = |name: &str| {
            let path = dir.path().join(name);
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
        };
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", dir.path().join("chromedriver.log").display()))
            .stdin(Stdio::null())
            .stdout(log("chromedriver.stdout")?)
            .stderr(log("chromedriver.stderr")?)
            // Its own process group, which Chromium joins: `Drop` can end all of it at once.
            .process_group(0);
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        // Chromium writes some state under HOME and the XDG dirs whatever the profile says.
        command
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local").join("share"));
        let child =
            command.spawn().map_err(|e| anyhow!("cannot run {CHROMEDRIVER}: {e}; {INSTALL_HINT} (chromium-driver)"))?;
        let mut driver = Driver { child: Some(child), port, dir: Some(dir) };
        driver.wait_ready().await?;
        Ok(driver)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Keeps the directory (with chromedriver's log) after the processes are gone; its path.
    fn keep_dir(&mut self) -> PathBuf {
        match self.dir.take() {
            Some(dir) => dir.keep(),
            None => PathBuf::new(),
        }
    }

    /// Polls `/status` until it answers `"ready": true`; fails if chromedriver exits first.
    async fn wait_ready(&mut self) -> Result<()> {
        let client = http_client()?;
        let status = format!("{}/status", self.url());
        let until = Instant::now() + BROWSER_DEADLINE;
        loop {
            let child = self.child.as_mut().context("chromedriver is not running")?;
            if let Some(exit) = child.try_wait().context("cannot check on chromedriver")? {
                bail!("{CHROMEDRIVER} exited ({exit}) before it was ready; {INSTALL_HINT}\n{}", self.logs());
            }
            if let Ok(response) = client.get(&status).send().await
                && let Ok(body) = response.json::<Value>().await
                && body.pointer("/value/ready") == Some(&Value::Bool(true))
            {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!("gave up after {BROWSER_DEADLINE:?} waiting for {status} to say ready\n{}", self.logs());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The tails of chromedriver's output, for errors.
    fn logs(&self) -> String {
        let Some(dir) = &self.dir else { return String::new() };
        ["chromedriver.stderr", "chromedriver.log"]
            .iter()
            .map(|name| {
                let path = dir.path().join(name);
                format!("--- {} (tail) ---\n{}", path.display(), tail(&path, LOG_TAIL_LINES))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Driver {
    /// Asks chromedriver to shut down (it quits Chromium and waits for it), waits for it to exit,
    /// and kills whatever is still in its process group: after a crash, or when it does not exit
    /// in time.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let group = child.id();
            let asked = request_shutdown(self.port);
            let exited = wait_with_deadline(child, BROWSER_DEADLINE, group);
            if !exited || group_alive(group) {
                kill_group(group);
            }
            if let Err(e) = asked {
                eprintln!("machinomy-tests: chromedriver did not answer /shutdown ({e:#}); killed its process group");
            }
        }
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            let kept = dir.keep();
            eprintln!(
                "machinomy-tests: the failed test's browser directory (chromedriver.log) is kept at {}",
                kept.display()
            );
        }
    }
}

/// `GET /shutdown` on chromedriver, blocking (this runs in `Drop`), with bounded waits.
fn request_shutdown(port: u16) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, BROWSER_DEADLINE).context("connecting")?;
    stream.set_read_timeout(Some(BROWSER_DEADLINE)).context("setting a read timeout")?;
    stream.set_write_timeout(Some(BROWSER_DEADLINE)).context("setting a write timeout")?;
    stream
        .write_all(format!("GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .context("sending the request")?;
    // chromedriver answers once its sessions are closed, then exits (the connection may just
    // close instead: that is fine too).
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

/// Waits for `child` to exit, at most `deadline` (on a thread, so no polling); kills its group
/// and reaps it when it does not. Whether it exited by itself.
fn wait_with_deadline(mut child: Child, deadline: Duration, group: u32) -> bool {
    let (tx, rx) = sync_channel(1);
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exited = rx.recv_timeout(deadline).is_ok();
    if !exited {
        kill_group(group);
    }
    // Killed, its wait returns at once.
    let _ = waiter.join();
    exited
}

/// SIGKILL to every process in the group (`kill` the program: the workspace has no `unsafe`).
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether any live (not zombie) process is in process group `group`, read from `/proc`.
fn group_alive(group: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else { return false };
    entries.filter_map(|entry| entry.ok()).any(|entry| {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { return false };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
        pgrp == Some(group) && state != Some("Z")
    })
}

/// The first line of an error's message (WebDriver errors can carry a stack trace).
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().trim().to_owned()
}

/// `what` as a file name: lowercase letters, digits and dashes.
fn slug(what: &str) -> String {
    let mut out = String::new();
    for c in what.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(60).collect()
}
