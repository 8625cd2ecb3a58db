//! The mock host: on every target but wasm32 the SDK's calls land here, so a plugin's logic is
//! tested natively with `cargo test`.
//!
//! The state is per thread (each test runs on its own thread), starts empty, and is cleared by
//! [`reset`] — call it first in every test. A test creates the plugin value, calls its
//! [`Plugin`] methods directly as the hub would, and looks at what the plugin did:
//!
//! ```
//! use machinomy_sdk::{mock, money, Amount, Plugin, SpendStatus};
//!
//! /// A peer hub's public key: 64 hex digits.
//! const BARISTA: &str = "b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1b4a1";
//!
//! #[derive(Default)]
//! struct Tipper;
//!
//! impl Plugin for Tipper {
//!     fn on_start(&mut self) {
//!         let _ = money::spend(BARISTA, Amount(5), "thanks");
//!     }
//! }
//!
//! mock::reset();
//! let mut plugin = Tipper::default();
//! plugin.on_start();
//! assert_eq!(
//!     mock::requests(),
//!     [mock::Request::Spend { id: machinomy_sdk::RequestId(1), payee: BARISTA.into(), amount: Amount(5), memo: "thanks".into() }]
//! );
//!
//! // Make the next spend fail the way the hub would.
//! mock::fail_next(mock::Import::Spend, machinomy_sdk::Error::Busy);
//! plugin.on_start();
//! assert_eq!(mock::requests().len(), 1);
//! ```
//!
//! The mock checks arguments as the hub does (sizes, topic and filter syntax, service names,
//! decimal amounts above zero, peers as 64 hex digits, unknown timers, key-value quota). Grants are enforced only after
//! [`load_manifest`], which also sets the config from the manifest's `[config]`; without a
//! manifest every call is allowed. Budgets are not simulated: the test decides each request's
//! outcome by calling `on_spend_result` itself. Log lines are also printed to stderr, which the
//! test harness shows for failing tests.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::json::{self, Value};
use crate::log::Level;
use crate::{abi, mqtt, Amount, CallId, Error, Plugin, RequestId, TimerId};

mod manifest;

pub use manifest::Grants;

/// A message the plugin published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether it was retained.
    pub retain: bool,
}

impl Published {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        json::parse(&self.payload).unwrap_or(Value::Null)
    }
}

/// A money request the plugin made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// [`money::spend`](crate::money::spend).
    Spend {
        /// Its id.
        id: RequestId,
        /// To whom.
        payee: String,
        /// How much.
        amount: Amount,
        /// The memo.
        memo: String,
    },
    /// [`money::call_service`](crate::money::call_service).
    CallService {
        /// Its id.
        id: RequestId,
        /// Which service.
        service: String,
        /// The request body.
        body: Vec<u8>,
        /// The most it may cost.
        max_price: Amount,
    },
    /// [`money::invoice`](crate::money::invoice).
    Invoice {
        /// Its id.
        id: RequestId,
        /// Who is asked to pay.
        peer: String,
        /// How much.
        amount: Amount,
        /// The memo.
        memo: String,
    },
    /// [`money::stream_tick`](crate::money::stream_tick).
    StreamTick {
        /// Its id.
        id: RequestId,
        /// To whom.
        payee: String,
        /// The price of the tick.
        price: Amount,
        /// The memo.
        memo: String,
    },
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        match self {
            Request::Spend { id, .. }
            | Request::CallService { id, .. }
            | Request::Invoice { id, .. }
            | Request::StreamTick { id, .. } => *id,
        }
    }

    /// The amount (the price for a tick, the most for a service call).
    pub fn amount(&self) -> Amount {
        match self {
            Request::Spend { amount, .. } | Request::Invoice { amount, .. } => *amount,
            Request::CallService { max_price, .. } => *max_price,
            Request::StreamTick { price, .. } => *price,
        }
    }

    /// The memo (empty for a service call).
    pub fn memo(&self) -> &str {
        match self {
            Request::Spend { memo, .. } | Request::Invoice { memo, .. } | Request::StreamTick { memo, .. } => memo,
            Request::CallService { .. } => "",
        }
    }
}

/// A live timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Its id.
    pub id: TimerId,
    /// Its delay (and period when it repeats), in milliseconds.
    pub delay_ms: u64,
    /// Whether it repeats.
    pub repeat: bool,
    /// When it fires next, on the mock clock.
    pub due_ms: u64,
}

/// A log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// The text.
    pub message: String,
}

/// An answer to a service call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The call answered.
    pub call: CallId,
    /// `Ok(body)`, or `Err(message)`.
    pub answer: Result<Vec<u8>, String>,
}

/// A host import, to make it fail with [`fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Import {
    /// `publish`.
    Publish,
    /// `subscribe`.
    Subscribe,
    /// `unsubscribe`.
    Unsubscribe,
    /// `set_timer`.
    SetTimer,
    /// `cancel_timer`.
    CancelTimer,
    /// `kv_get`.
    KvGet,
    /// `kv_set`.
    KvSet,
    /// `kv_delete`.
    KvDelete,
    /// `device_state`.
    DeviceState,
    /// `config`.
    Config,
    /// `spend`.
    Spend,
    /// `call_service`.
    CallService,
    /// `invoice`.
    Invoice,
    /// `stream_tick`.
    StreamTick,
    /// `respond`.
    Respond,
}

/// The default key-value quota, as the hub's (`limits.kv_bytes`).
pub const DEFAULT_KV_BYTES: usize = 1024 * 1024;
/// The shortest timer the hub sets, in milliseconds (shorter is [`Error::Invalid`]), so a
/// repeating timer cannot spin it.
pub const MIN_TIMER_MS: u64 = crate::abi::MIN_TIMER_MS as u64;
/// Where the mock clock starts: 2024-01-01T00:00:00Z.
pub const START_MS: u64 = 1_704_067_200_000;

struct State {
    now_ms: u64,
    config: Vec<u8>,
    grants: Option<Grants>,
    kv_limit: usize,
    devices: BTreeMap<String, Vec<u8>>,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    subscriptions: Vec<String>,
    timers: Vec<Timer>,
    next_timer: i64,
    next_request: i64,
    requests: Vec<Request>,
    published: Vec<Published>,
    logs: Vec<LogLine>,
    responses: Vec<Response>,
    failures: Vec<(Import, Error)>,
}

impl State {
    fn new() -> State {
        State {
            now_ms: START_MS,
            config: b"{}".to_vec(),
            grants: None,
            kv_limit: DEFAULT_KV_BYTES,
            devices: BTreeMap::new(),
            kv: BTreeMap::new(),
            subscriptions: Vec::new(),
            timers: Vec::new(),
            next_timer: 1,
            next_request: 1,
            requests: Vec::new(),
            published: Vec::new(),
            logs: Vec::new(),
            responses: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The injected failure for `import`, if one is queued.
    fn injected(&mut self, import: Import) -> Option<Error> {
        let index = self.failures.iter().position(|(i, _)| *i == import)?;
        Some(self.failures.remove(index).1)
    }

    fn grants(&self) -> Option<&Grants> {
        self.grants.as_ref()
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::new());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

/// Clears everything: config, grants, devices, kv, timers, requests, messages, logs, failures;
/// the clock back at [`START_MS`]. From the first `reset` on, a panic is logged as the SDK logs
/// it on the hub (see [`logs`]).
pub fn reset() {
    record_panics();
    with(|s| *s = State::new());
}

/// Makes a panic log its message and place at [`Level::Error`] in the panicking thread's mock
/// log, as the SDK does on the hub before the panic traps the plugin, so a test that catches it
/// (`std::panic::catch_unwind`) can check what the owner would read. The panic is then reported
/// as before (the test harness prints it).
fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = crate::plugin::panic_line(&info.to_string());
            // A panic inside the mock itself (state borrowed) or during thread exit logs nothing
            // rather than panicking again.
            let _ = STATE.try_with(|state| {
                if let Ok(mut state) = state.try_borrow_mut() {
                    state.logs.push(LogLine { level: Level::Error, message });
                }
            });
            previous(info);
        }));
    });
}

/// Loads a plugin's `plugin.toml` as the hub would (strictly: unknown keys and bad values are an
/// error): its `[config]` becomes the config, its grants are enforced from now on, and
/// `limits.kv_bytes` sets the key-value quota. Use it with `include_str!("../plugin.toml")`.
pub fn load_manifest(toml: &str) -> Result<(), String> {
    let manifest = manifest::Manifest::parse(toml)?;
    with(|s| {
        s.config = manifest.config.to_string().into_bytes();
        s.kv_limit = manifest.kv_bytes;
        s.grants = Some(manifest.grants);
    });
    Ok(())
}

/// The grants in force ([`load_manifest`]), if any.
pub fn grants() -> Option<Grants> {
    with(|s| s.grants.clone())
}

/// Replaces the whole config with a JSON object's text.
pub fn set_config(json: &str) {
    with(|s| s.config = json.as_bytes().to_vec());
}

/// Sets one config key, as the owner's `--set key=value` at install does.
pub fn set_config_value(key: &str, value: impl Into<Value>) {
    let value = value.into();
    with(|s| {
        let mut config = json::parse(&s.config).unwrap_or_else(|_| Value::object());
        if config.as_object().is_none() {
            config = Value::object();
        }
        config.insert(key, value);
        s.config = config.to_string().into_bytes();
    });
}

/// Sets a device's state (its JSON text), as the hub's registry would know it.
pub fn set_device_state(device: &str, json: &str) {
    with(|s| s.devices.insert(device.to_string(), json.as_bytes().to_vec()));
}

/// Forgets a device's state.
pub fn remove_device_state(device: &str) {
    with(|s| s.devices.remove(device));
}

/// The mock clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    with(|s| s.now_ms)
}

/// Sets the mock clock.
pub fn set_now(ms: u64) {
    with(|s| s.now_ms = ms);
}

/// Ends the plugin's run, as the hub does when it restarts or the owner disables and enables or
/// upgrades the plugin: its subscriptions and timers are gone. The key-value store, config,
/// grants, device states, the clock and everything recorded so far stay, and ids keep counting
/// (the hub never gives a run an id of an earlier one). Then make a fresh `Default` value and
/// call its `on_start`, as the hub does:
///
/// ```
/// use machinomy_sdk::{mock, mqtt, timer, Plugin};
///
/// #[derive(Default)]
/// struct Ticker;
///
/// impl Plugin for Ticker {
///     fn on_start(&mut self) {
///         let _ = mqtt::subscribe("machinomy/clock/state");
///         let _ = timer::every(60_000);
///     }
/// }
///
/// mock::reset();
/// Ticker::default().on_start();
/// mock::restart();
/// assert!(mock::subscriptions().is_empty() && mock::timers().is_empty());
/// Ticker::default().on_start();
/// assert_eq!(mock::timers().len(), 1, "one timer, not two");
/// ```
pub fn restart() {
    with(|s| {
        s.subscriptions.clear();
        s.timers.clear();
    });
}

/// Moves the mock clock forward without firing timers (see [`run_for`]).
pub fn advance(ms: u64) {
    with(|s| s.now_ms = s.now_ms.saturating_add(ms));
}

/// Moves the clock forward by `ms`, firing every timer that comes due on the way, in order, by
/// calling `plugin.on_timer` (repeating timers are rescheduled, one-shot timers removed, as the
/// hub does). Returns the ids fired.
pub fn run_for(plugin: &mut impl Plugin, ms: u64) -> Vec<TimerId> {
    let until = now_ms().saturating_add(ms);
    let mut fired = Vec::new();
    loop {
        // Take the next due timer while holding the state, then call the plugin without it.
        let next = with(|s| {
            let index = (0..s.timers.len())
                .filter(|&i| s.timers.get(i).map_or(false, |t| t.due_ms <= until))
                .min_by_key(|&i| s.timers.get(i).map(|t| (t.due_ms, t.id)))?;
            let timer = *s.timers.get(index)?;
            if timer.repeat {
                if let Some(t) = s.timers.get_mut(index) {
                    // A zero period would fire forever; step at least one millisecond.
                    t.due_ms = t.due_ms.saturating_add(t.delay_ms.max(1));
                }
            } else {
                s.timers.remove(index);
            }
            s.now_ms = s.now_ms.max(timer.due_ms);
            Some(timer.id)
        });
        match next {
            Some(id) => {
                fired.push(id);
                plugin.on_timer(id);
            }
            None => break,
        }
    }
    set_now(until.max(now_ms()));
    fired
}

/// Makes the next call of `import` fail with `error` (queue several to fail several calls).
pub fn fail_next(import: Import, error: Error) {
    with(|s| s.failures.push((import, error)));
}

/// Every message published since the last [`reset`] or [`take_published`].
pub fn published() -> Vec<Published> {
    with(|s| s.published.clone())
}

/// The messages published so far, clearing the list.
pub fn take_published() -> Vec<Published> {
    with(|s| std::mem::take(&mut s.published))
}

/// The last message published on `topic`.
pub fn last_published(topic: &str) -> Option<Published> {
    with(|s| s.published.iter().rev().find(|p| p.topic == topic).cloned())
}

/// Every money request since the last [`reset`] or [`take_requests`].
pub fn requests() -> Vec<Request> {
    with(|s| s.requests.clone())
}

/// The money requests so far, clearing the list (ids keep counting).
pub fn take_requests() -> Vec<Request> {
    with(|s| std::mem::take(&mut s.requests))
}

/// The live timers, in the order they were set.
pub fn timers() -> Vec<Timer> {
    with(|s| s.timers.clone())
}

/// The current subscriptions, in the order they were made.
pub fn subscriptions() -> Vec<String> {
    with(|s| s.subscriptions.clone())
}

/// Every log line since the last [`reset`] or [`take_logs`]: the plugin's own, a panic's
/// message (at `Error`, as on the hub), and the mock's word on an argument it found invalid (at
/// `Debug`, starting `host: `), which the ABI's [`Error::Invalid`] cannot carry.
pub fn logs() -> Vec<LogLine> {
    with(|s| s.logs.clone())
}

/// The log lines so far, clearing the list.
pub fn take_logs() -> Vec<LogLine> {
    with(|s| std::mem::take(&mut s.logs))
}

/// Whether a line at `level` contains `text`.
pub fn logged(level: Level, text: &str) -> bool {
    with(|s| s.logs.iter().any(|l| l.level == level && l.message.contains(text)))
}

/// The answers to service calls.
pub fn responses() -> Vec<Response> {
    with(|s| s.responses.clone())
}

/// The value stored under `key` in the plugin's key-value store.
pub fn kv(key: &str) -> Option<Vec<u8>> {
    with(|s| s.kv.get(key.as_bytes()).cloned())
}

/// The value stored under `key`, as text (lossy).
pub fn kv_str(key: &str) -> Option<String> {
    kv(key).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Stores a value directly, as if the plugin had (for example, state left by an older version).
pub fn set_kv(key: &str, value: &[u8]) {
    with(|s| s.kv.insert(key.as_bytes().to_vec(), value.to_vec()));
}

/// Every key in the key-value store, sorted.
pub fn kv_keys() -> Vec<String> {
    with(|s| s.kv.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect())
}

/// The host side of the SDK's calls, with the ABI's raw results.
pub(crate) mod host {
    use super::*;

    fn text(bytes: &[u8]) -> Result<&str, i32> {
        core::str::from_utf8(bytes).map_err(|_| abi::ERR_INVALID)
    }

    fn code(result: Result<i32, i32>) -> i32 {
        result.unwrap_or_else(|e| e)
    }

    fn code64(result: Result<i64, i32>) -> i64 {
        result.unwrap_or_else(i64::from)
    }

    /// Fails with the injected error for `import`, if any.
    fn injected(s: &mut State, import: Import) -> Result<(), i32> {
        match s.injected(import) {
            Some(e) => Err(e.code()),
            None => Ok(()),
        }
    }

    /// A topic to publish on: non-empty, no wildcards, at most MAX_TOPIC bytes.
    fn topic(bytes: &[u8]) -> Result<&str, i32> {
        if bytes.len() > abi::MAX_TOPIC {
            return Err(abi::ERR_TOO_LARGE);
        }
        let topic = text(bytes)?;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.starts_with('$') {
            return Err(abi::ERR_INVALID);
        }
        Ok(topic)
    }

    /// A filter to subscribe to: MQTT syntax, at most MAX_TOPIC bytes.
    fn filter(bytes: &[u8]) -> Result<&str, i32> {
        if bytes.len() > abi::MAX_TOPIC {
            return Err(abi::ERR_TOO_LARGE);
        }
        let filter = text(bytes)?;
        if manifest::valid_filter(filter) {
            Ok(filter)
        } else {
            Err(abi::ERR_INVALID)
        }
    }

    fn key(bytes: &[u8]) -> Result<&[u8], i32> {
        match bytes.len() {
            0 => Err(abi::ERR_INVALID),
            n if n > abi::MAX_KEY => Err(abi::ERR_TOO_LARGE),
            _ => Ok(bytes),
        }
    }

    fn amount(bytes: &[u8]) -> Result<Amount, i32> {
        Amount::parse(text(bytes)?).map_err(|_| abi::ERR_INVALID)
    }

    /// An amount to pay or invoice: the hub refuses zero.
    fn positive(bytes: &[u8]) -> Result<Amount, i32> {
        match amount(bytes)? {
            Amount(0) => Err(abi::ERR_INVALID),
            amount => Ok(amount),
        }
    }

    /// A service name, as peers offer them: 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.', not only dots.
    fn service(bytes: &[u8]) -> Result<&str, i32> {
        let name = text(bytes)?;
        let valid = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.bytes().all(|b| b == b'.');
        if valid {
            Ok(name)
        } else {
            Err(abi::ERR_INVALID)
        }
    }

    /// A peer's public key: 32 bytes in hex, as the hub reads it.
    fn peer(bytes: &[u8]) -> Result<&str, i32> {
        let peer = text(bytes)?;
        if peer.len() != 64 || !peer.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(abi::ERR_INVALID);
        }
        Ok(peer)
    }

    fn memo(bytes: &[u8]) -> Result<String, i32> {
        if bytes.len() > abi::MAX_TEXT {
            // The hub cuts; the SDK already did, so a long memo here is an SDK bug.
            return Err(abi::ERR_TOO_LARGE);
        }
        text(bytes).map(str::to_string)
    }

    /// Logs which argument of `call` was invalid (at `Debug`, so counts of the plugin's own
    /// warnings and errors stay as they are), then gives the code back.
    fn explain(s: &mut State, call: &str, why: impl FnOnce() -> String, code: i32) -> i32 {
        if code == abi::ERR_INVALID {
            let message = format!("host: {call}: {}", why());
            eprintln!("plugin debug: {message}");
            s.logs.push(LogLine { level: Level::Debug, message });
        }
        code
    }

    fn shown(bytes: &[u8]) -> String {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }

    /// The (peer, amount, memo) of `spend`, `invoice` and `stream_tick`, each refusal explained.
    fn peer_amount_memo(
        s: &mut State,
        call: &str,
        role: &str,
        (peer_bytes, amount_bytes, memo_bytes): (&[u8], &[u8], &[u8]),
    ) -> Result<(String, Amount, String), i32> {
        let peer = peer(peer_bytes).map_err(|code| {
            let why = || format!("the {role} {} is not a peer's public key (64 hex digits)", shown(peer_bytes));
            explain(s, call, why, code)
        })?;
        let amount = positive(amount_bytes).map_err(|code| {
            let why = || format!("the amount {} is not a decimal amount of base units above zero", shown(amount_bytes));
            explain(s, call, why, code)
        })?;
        let memo = memo(memo_bytes).map_err(|code| explain(s, call, || "the memo is not UTF-8".to_string(), code))?;
        Ok((peer.to_string(), amount, memo))
    }

    fn granted(allowed: bool) -> Result<(), i32> {
        if allowed {
            Ok(())
        } else {
            Err(abi::ERR_NOT_GRANTED)
        }
    }

    /// Copies `value` into `out` if it fits; answers its length either way.
    fn read_into(value: &[u8], out: &mut [u8]) -> i32 {
        if let Some(dest) = out.get_mut(..value.len()) {
            dest.copy_from_slice(value);
        }
        value.len() as i32
    }

    fn new_request(s: &mut State, make: impl FnOnce(RequestId) -> Request) -> i64 {
        let id = RequestId(s.next_request);
        s.next_request += 1;
        s.requests.push(make(id));
        id.0
    }

    pub(crate) fn log(level: i32, message: &[u8]) {
        let level = Level::from_code(level).unwrap_or(Level::Error);
        let message = String::from_utf8_lossy(message).into_owned();
        eprintln!("plugin {}: {message}", level.as_str());
        with(|s| s.logs.push(LogLine { level, message }));
    }

    pub(crate) fn publish(topic_bytes: &[u8], payload: &[u8], retain: bool) -> i32 {
        code(with(|s| {
            injected(s, Import::Publish)?;
            let topic = topic(topic_bytes)?;
            if payload.len() > abi::MAX_PAYLOAD {
                return Err(abi::ERR_TOO_LARGE);
            }
            if let Some(grants) = s.grants() {
                granted(grants.publish.iter().any(|f| mqtt::topic_matches(f, topic)))?;
            }
            let message = Published { topic: topic.to_string(), payload: payload.to_vec(), retain };
            s.published.push(message);
            Ok(0)
        }))
    }

    pub(crate) fn subscribe(filter_bytes: &[u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::Subscribe)?;
            let filter = filter(filter_bytes)?;
            if let Some(grants) = s.grants() {
                granted(grants.subscribe.iter().any(|g| manifest::filter_covers(g, filter)))?;
            }
            if !s.subscriptions.iter().any(|f| f == filter) {
                if s.subscriptions.len() >= abi::MAX_SUBSCRIPTIONS {
                    return Err(abi::ERR_QUOTA);
                }
                s.subscriptions.push(filter.to_string());
            }
            Ok(0)
        }))
    }

    pub(crate) fn unsubscribe(filter_bytes: &[u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::Unsubscribe)?;
            let filter = filter(filter_bytes)?;
            s.subscriptions.retain(|f| f != filter);
            Ok(0)
        }))
    }

    pub(crate) fn set_timer(delay_ms: i64, repeat: bool) -> i64 {
        code64(with(|s| {
            injected(s, Import::SetTimer)?;
            let delay_ms = match u64::try_from(delay_ms) {
                Ok(delay_ms) if delay_ms >= MIN_TIMER_MS => delay_ms,
                _ => return Err(abi::ERR_INVALID),
            };
            if s.timers.len() >= abi::MAX_TIMERS {
                return Err(abi::ERR_QUOTA);
            }
            let id = TimerId(s.next_timer);
            s.next_timer += 1;
            let due_ms = s.now_ms.saturating_add(delay_ms);
            s.timers.push(Timer { id, delay_ms, repeat, due_ms });
            Ok(id.0)
        }))
    }

    pub(crate) fn cancel_timer(timer: i64) -> i32 {
        code(with(|s| {
            injected(s, Import::CancelTimer)?;
            let index = s.timers.iter().position(|t| t.id == TimerId(timer)).ok_or(abi::ERR_INVALID)?;
            s.timers.remove(index);
            Ok(0)
        }))
    }

    pub(crate) fn now() -> i64 {
        with(|s| i64::try_from(s.now_ms).unwrap_or(i64::MAX))
    }

    pub(crate) fn kv_get(key_bytes: &[u8], out: &mut [u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::KvGet)?;
            let key = key(key_bytes)?;
            let value = s.kv.get(key).ok_or(abi::ERR_NOT_FOUND)?;
            Ok(read_into(value, out))
        }))
    }

    pub(crate) fn kv_set(key_bytes: &[u8], value: &[u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::KvSet)?;
            let key = key(key_bytes)?;
            if value.len() > abi::MAX_VALUE {
                return Err(abi::ERR_TOO_LARGE);
            }
            let used: usize = s.kv.iter().filter(|(k, _)| k.as_slice() != key).map(|(k, v)| k.len() + v.len()).sum();
            if used + key.len() + value.len() > s.kv_limit {
                return Err(abi::ERR_QUOTA);
            }
            s.kv.insert(key.to_vec(), value.to_vec());
            Ok(0)
        }))
    }

    pub(crate) fn kv_delete(key_bytes: &[u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::KvDelete)?;
            let key = key(key_bytes)?;
            s.kv.remove(key);
            Ok(0)
        }))
    }

    pub(crate) fn device_state(device_bytes: &[u8], out: &mut [u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::DeviceState)?;
            let device = text(device_bytes)?;
            if let Some(grants) = s.grants() {
                granted(grants.devices.iter().any(|d| d == "*" || d == device))?;
            }
            let state = s.devices.get(device).ok_or(abi::ERR_NOT_FOUND)?;
            Ok(read_into(state, out))
        }))
    }

    pub(crate) fn config(out: &mut [u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::Config)?;
            Ok(read_into(&s.config, out))
        }))
    }

    pub(crate) fn spend(payee: &[u8], amount_bytes: &[u8], memo_bytes: &[u8]) -> i64 {
        code64(with(|s| {
            injected(s, Import::Spend)?;
            let (payee, amount, memo) = peer_amount_memo(s, "spend", "payee", (payee, amount_bytes, memo_bytes))?;
            if let Some(grants) = s.grants() {
                granted(grants.pay)?;
            }
            Ok(new_request(s, |id| Request::Spend { id, payee, amount, memo }))
        }))
    }

    pub(crate) fn call_service(service: &[u8], body: &[u8], max_price: &[u8]) -> i64 {
        code64(with(|s| {
            injected(s, Import::CallService)?;
            let name = service;
            let service = self::service(name)
                .map_err(|code| {
                    let why = || format!("the service {} is not a service name", shown(name));
                    explain(s, "call_service", why, code)
                })?
                .to_string();
            let price = max_price;
            let max_price = amount(price).map_err(|code| {
                let why = || format!("the most it may cost, {}, is not a decimal amount of base units", shown(price));
                explain(s, "call_service", why, code)
            })?;
            if body.len() > abi::MAX_PAYLOAD {
                return Err(abi::ERR_TOO_LARGE);
            }
            if let Some(grants) = s.grants() {
                granted(grants.call.iter().any(|(name, most)| *name == service && max_price <= *most))?;
            }
            let body = body.to_vec();
            Ok(new_request(s, |id| Request::CallService { id, service, body, max_price }))
        }))
    }

    pub(crate) fn invoice(peer_bytes: &[u8], amount_bytes: &[u8], memo_bytes: &[u8]) -> i64 {
        code64(with(|s| {
            injected(s, Import::Invoice)?;
            let (peer, amount, memo) = peer_amount_memo(s, "invoice", "payer", (peer_bytes, amount_bytes, memo_bytes))?;
            if let Some(grants) = s.grants() {
                granted(grants.invoice)?;
            }
            Ok(new_request(s, |id| Request::Invoice { id, peer, amount, memo }))
        }))
    }

    pub(crate) fn stream_tick(payee: &[u8], price: &[u8], memo_bytes: &[u8]) -> i64 {
        code64(with(|s| {
            injected(s, Import::StreamTick)?;
            let (payee, price, memo) = peer_amount_memo(s, "stream_tick", "payee", (payee, price, memo_bytes))?;
            if let Some(grants) = s.grants() {
                granted(grants.pay)?;
            }
            Ok(new_request(s, |id| Request::StreamTick { id, payee, price, memo }))
        }))
    }

    pub(crate) fn respond(call: i64, ok: bool, body: &[u8]) -> i32 {
        code(with(|s| {
            injected(s, Import::Respond)?;
            if call < 1 {
                return Err(abi::ERR_INVALID);
            }
            if body.len() > abi::MAX_PAYLOAD {
                return Err(abi::ERR_TOO_LARGE);
            }
            let answer = if ok { Ok(body.to_vec()) } else { Err(text(body)?.to_string()) };
            s.responses.push(Response { call: CallId(call), answer });
            Ok(0)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, device, kv, money, service, timer};

    #[test]
    fn kv_reads_grow_the_buffer_for_long_values() {
        reset();
        let long = vec![7u8; 5000];
        kv::set("long", &long).unwrap();
        assert_eq!(kv::get("long").unwrap(), Some(long));
        assert_eq!(kv::get("missing").unwrap(), None);
        kv::set_u128("n", u128::MAX).unwrap();
        assert_eq!(kv::get_u128("n").unwrap(), Some(u128::MAX));
        assert_eq!(kv::get_u64("n"), Err(Error::Malformed));
        kv::set_json("j", &Value::object().with("a", 1u8)).unwrap();
        assert_eq!(kv::get_json("j").unwrap().and_then(|v| v.get("a").and_then(Value::as_u64)), Some(1));
        kv::delete("j").unwrap();
        kv::delete("j").unwrap();
        assert_eq!(kv::get_str("j").unwrap(), None);
        set_kv("bad", &[0xff]);
        assert_eq!(kv::get_str("bad"), Err(Error::Malformed));
    }

    #[test]
    fn kv_enforces_sizes_and_quota() {
        reset();
        assert_eq!(kv::set("", b"x"), Err(Error::Invalid));
        assert_eq!(kv::set(&"k".repeat(abi::MAX_KEY + 1), b"x"), Err(Error::TooLarge));
        assert_eq!(kv::set("k", &vec![0; abi::MAX_VALUE + 1]), Err(Error::TooLarge));
        load_manifest("name = \"q\"\nversion = \"1\"\n[limits]\nkv_bytes = 10\n").unwrap();
        kv::set("a", b"12345678").unwrap();
        assert_eq!(kv::set("b", b"12"), Err(Error::Quota));
        kv::set("a", b"123456789").unwrap(); // replacing counts the new size only
    }

    #[test]
    fn config_and_device_state_come_from_the_mock() {
        reset();
        assert_eq!(config(), Value::object());
        set_config(r#"{"meter":"m1"}"#);
        set_config_value("every_secs", 60u32);
        let c = config();
        assert_eq!(c.get("meter").and_then(Value::as_str), Some("m1"));
        assert_eq!(c.get("every_secs").and_then(Value::as_u64), Some(60));
        set_config("[1]");
        assert_eq!(crate::try_config(), Err(Error::Malformed));
        assert_eq!(config(), Value::object());
        assert!(logged(Level::Warn, "config"));

        assert_eq!(device::state("meter").unwrap(), None);
        set_device_state("meter", r#"{"energy_wh":5}"#);
        assert_eq!(device::state("meter").unwrap().and_then(|s| s.get("energy_wh").and_then(Value::as_u64)), Some(5));
        set_device_state("meter", "{");
        assert_eq!(device::state("meter"), Err(Error::Malformed));
        remove_device_state("meter");
        assert_eq!(device::state("meter"), Ok(None));
    }

    #[test]
    fn timers_fire_in_order_with_run_for() {
        #[derive(Default)]
        struct Count(Vec<TimerId>);
        impl Plugin for Count {
            fn on_timer(&mut self, timer: TimerId) {
                self.0.push(timer);
            }
        }
        reset();
        let every = timer::every(1000).unwrap();
        let once = timer::once(2500).unwrap();
        let mut plugin = Count::default();
        let start = now_ms();
        assert_eq!(run_for(&mut plugin, 3000), vec![every, every, once, every]);
        assert_eq!(plugin.0.len(), 4);
        assert_eq!(now_ms(), start + 3000);
        assert_eq!(timers().len(), 1);
        timer::cancel(every).unwrap();
        assert_eq!(timer::cancel(every), Err(Error::Invalid));
        assert!(timers().is_empty());
        assert_eq!(timer::once(MIN_TIMER_MS - 1), Err(Error::Invalid));
        for _ in 0..abi::MAX_TIMERS {
            timer::once(MIN_TIMER_MS).unwrap();
        }
        assert_eq!(timer::once(MIN_TIMER_MS), Err(Error::Quota));
        assert_eq!(timer::set(u64::MAX, false), Err(Error::Invalid));
    }

    #[test]
    fn money_requests_are_recorded_with_ids() {
        reset();
        let peer = "ab".repeat(32);
        let a = money::spend(&peer, Amount(10), "one").unwrap();
        let b = money::invoice(&peer, Amount(20), "two").unwrap();
        let c = money::stream_tick(&peer, Amount(1), "three").unwrap();
        let d = money::call_service("weather.forecast", b"{}", Amount(2000)).unwrap();
        assert_eq!((a, b, c, d), (RequestId(1), RequestId(2), RequestId(3), RequestId(4)));
        let all = take_requests();
        assert_eq!(
            all.iter().map(Request::amount).collect::<Vec<_>>(),
            [Amount(10), Amount(20), Amount(1), Amount(2000)]
        );
        assert_eq!(all.iter().map(Request::memo).collect::<Vec<_>>(), ["one", "two", "three", ""]);
        assert_eq!(money::spend("not hex", Amount(1), ""), Err(Error::Invalid));
        assert_eq!(money::spend("", Amount(1), ""), Err(Error::Invalid));
        assert_eq!(money::spend("ab01", Amount(1), ""), Err(Error::Invalid), "a key is 64 hex digits");
        assert_eq!(money::spend(&peer, Amount(0), ""), Err(Error::Invalid));
        assert_eq!(money::invoice(&peer, Amount(0), ""), Err(Error::Invalid));
        assert_eq!(money::stream_tick(&peer, Amount(0), ""), Err(Error::Invalid));
        assert_eq!(money::call_service("no spaces", b"{}", Amount(1)), Err(Error::Invalid));
        assert_eq!(money::call_service("...", b"{}", Amount(1)), Err(Error::Invalid));
        fail_next(Import::Invoice, Error::Busy);
        assert_eq!(money::invoice(&peer, Amount(1), ""), Err(Error::Busy));
        assert_eq!(money::invoice(&peer, Amount(1), "").unwrap(), RequestId(5));
    }

    #[test]
    fn an_invalid_argument_is_named_in_the_log() {
        reset();
        assert_eq!(money::spend("zz", Amount(1), ""), Err(Error::Invalid));
        assert!(logged(Level::Debug, r#"host: spend: the payee "zz" is not a peer's public key"#), "{:?}", logs());
        assert_eq!(money::invoice(&"ab".repeat(32), Amount(0), ""), Err(Error::Invalid));
        assert!(logged(Level::Debug, r#"host: invoice: the amount "0" is not"#), "{:?}", logs());
        assert_eq!(money::call_service("no spaces", b"{}", Amount(1)), Err(Error::Invalid));
        assert!(logged(Level::Debug, r#"host: call_service: the service "no spaces""#), "{:?}", logs());
        assert!(!logs().iter().any(|l| l.level == Level::Warn || l.level == Level::Error));
    }

    #[test]
    fn a_panic_is_logged_as_on_the_hub() {
        #[derive(Default)]
        struct Fragile;
        impl Plugin for Fragile {
            fn on_message(&mut self, topic: &str, _payload: &[u8]) {
                panic!("no meter configured for {topic}");
            }
        }
        reset();
        let mut plugin = Fragile;
        let fault = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plugin.on_message("m/state", b"{}")));
        assert!(fault.is_err());
        let logs = logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].level, Level::Error);
        assert!(logs[0].message.starts_with("panicked") && logs[0].message.contains("no meter configured for m/state"));
    }

    #[test]
    fn long_memos_and_logs_are_cut() {
        reset();
        let long = "€".repeat(1000);
        money::spend(&"ab".repeat(32), Amount(1), &long).unwrap();
        let memo = requests()[0].memo().to_string();
        assert!(memo.len() <= abi::MAX_TEXT && memo.len() > abi::MAX_TEXT - 3);
        crate::log::info(&long);
        assert!(logs()[0].message.len() <= abi::MAX_TEXT);
    }

    #[test]
    fn grants_are_enforced_after_loading_a_manifest() {
        reset();
        load_manifest(
            r#"
            name = "g"
            version = "0.1.0"
            [grants]
            subscribe = ["machinomy/meter/#"]
            publish = ["machinomy-plugins/g/+"]
            devices = ["meter"]
            invoice = true
            [[grants.call]]
            service = "weather.forecast"
            max_price = "2000"
            [grants.budget]
            period = "day"
            limit = "1000"
            auto_approve = "10"
            [config]
            meter = "meter"
            "#,
        )
        .unwrap();
        let peer = "ab".repeat(32);
        assert_eq!(mqtt::subscribe("machinomy/meter/state"), Ok(()));
        assert_eq!(mqtt::subscribe("machinomy/meter/#"), Ok(()));
        assert_eq!(mqtt::subscribe("machinomy/+/state"), Err(Error::NotGranted));
        assert_eq!(mqtt::subscribe("machinomy/meter/#/x"), Err(Error::Invalid));
        assert_eq!(mqtt::publish("machinomy-plugins/g/out", b"", false), Ok(()));
        assert_eq!(mqtt::publish("machinomy-plugins/g/a/b", b"", false), Err(Error::NotGranted));
        assert_eq!(mqtt::publish("machinomy-plugins/g/+", b"", false), Err(Error::Invalid));
        assert_eq!(device::state("fridge"), Err(Error::NotGranted));
        assert_eq!(money::spend(&peer, Amount(1), ""), Err(Error::NotGranted));
        assert_eq!(money::stream_tick(&peer, Amount(1), ""), Err(Error::NotGranted));
        assert!(money::invoice(&peer, Amount(1), "").is_ok());
        assert!(money::call_service("weather.forecast", b"{}", Amount(2000)).is_ok());
        assert_eq!(money::call_service("weather.forecast", b"{}", Amount(2001)), Err(Error::NotGranted));
        assert_eq!(money::call_service("other", b"{}", Amount(1)), Err(Error::NotGranted));
        assert_eq!(config().get("meter").and_then(Value::as_str), Some("meter"));
        mqtt::unsubscribe("machinomy/meter/#").unwrap();
        assert_eq!(subscriptions(), ["machinomy/meter/state"]);
    }

    #[test]
    fn a_restart_ends_the_run_but_keeps_storage_and_ids_counting() {
        reset();
        mqtt::subscribe("machinomy/a/state").unwrap();
        let first = timer::every(1000).unwrap();
        kv::set("k", b"v").unwrap();
        restart();
        assert!(subscriptions().is_empty() && timers().is_empty());
        assert_eq!(timer::cancel(first), Err(Error::Invalid), "the earlier run's timer is gone");
        assert_eq!(kv("k"), Some(b"v".to_vec()));
        let second = timer::every(1000).unwrap();
        assert_ne!(first, second, "ids are not given again");
    }

    #[test]
    fn service_calls_are_answered() {
        #[derive(Default)]
        struct Seller;
        impl Plugin for Seller {}
        reset();
        let mut plugin = Seller;
        plugin.on_service_call(CallId(3), "forecast.relay", b"{}", "ab");
        service::respond(CallId(4), Ok(b"{\"ok\":1}")).unwrap();
        let answers = responses();
        assert_eq!(answers[0].call, CallId(3));
        assert_eq!(answers[0].answer, Err("this plugin does not sell forecast.relay".to_string()));
        assert_eq!(answers[1].answer, Ok(b"{\"ok\":1}".to_vec()));
        assert_eq!(service::respond(CallId(0), Ok(b"")), Err(Error::Invalid));
    }

    #[test]
    fn publish_checks_topics_and_sizes() {
        reset();
        assert_eq!(mqtt::publish("", b"", false), Err(Error::Invalid));
        assert_eq!(mqtt::publish("a/#", b"", false), Err(Error::Invalid));
        assert_eq!(mqtt::publish(&"a".repeat(abi::MAX_TOPIC + 1), b"", false), Err(Error::TooLarge));
        assert_eq!(mqtt::publish("a", &vec![0; abi::MAX_PAYLOAD + 1], false), Err(Error::TooLarge));
        mqtt::publish_json("a/b", &Value::object().with("x", 1u8), true).unwrap();
        assert_eq!(last_published("a/b").map(|p| (p.json(), p.retain)), Some((Value::object().with("x", 1u8), true)));
        for i in 0..abi::MAX_SUBSCRIPTIONS {
            mqtt::subscribe(&format!("t/{i}")).unwrap();
        }
        mqtt::subscribe("t/0").unwrap(); // again: no new subscription
        assert_eq!(mqtt::subscribe("t/x"), Err(Error::Quota));
    }
}
