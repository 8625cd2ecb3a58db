//! The host side of the plugin ABI (`machinomy_sdk::abi`): every import a plugin may call,
//! each checked against the plugin's grants and limits. Nothing here blocks: money and
//! service calls are queued for the money task and answered later through `on_spend_result`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use machinomy_core::plugin::{Grants, check_filter, check_topic};
use machinomy_core::{Amount, Currency, PublicKey};
use machinomy_sdk::abi;
use tokio::sync::{mpsc, oneshot};
use wasmtime::{Caller, Linker, Memory, StoreLimits};

use super::money::{MoneyRequest, Order};
use crate::bridge::Bridge;
use crate::market::DeviceStates;
use crate::store::Store;

/// Every import this host provides, by name (signatures are checked when a module is linked).
pub(crate) const IMPORTS: [&str; 17] = [
    "log",
    "publish",
    "subscribe",
    "unsubscribe",
    "set_timer",
    "cancel_timer",
    "now",
    "kv_get",
    "kv_set",
    "kv_delete",
    "device_state",
    "config",
    "spend",
    "call_service",
    "invoice",
    "stream_tick",
    "respond",
];

/// Log lines one event may write; the rest are counted and dropped so a loop cannot flood
/// the hub's log.
const LOG_LINES_PER_EVENT: u32 = 64;
/// Recent log lines and refusals kept per plugin for the owner.
pub(crate) const RECENT_LINES: usize = 32;

/// What every plugin's host calls reach: shared, cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct HostContext {
    pub(crate) store: Option<Store>,
    pub(crate) bridge: Option<Bridge>,
    pub(crate) devices: Arc<DeviceStates>,
    pub(crate) money: Option<mpsc::Sender<MoneyRequest>>,
    /// The hub's currency, for amounts in the owner's log lines.
    pub(crate) currency: Currency,
}

/// A timer a plugin set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerSpec {
    pub(crate) delay_ms: u64,
    pub(crate) repeat: bool,
}

/// A line the owner sees in `plugin show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecentLine {
    pub(crate) at_ms: u64,
    pub(crate) level: &'static str,
    pub(crate) text: String,
}

/// A stored line's level as one of the names lines are made with ("info" for any other).
pub(crate) fn known_level(level: &str) -> &'static str {
    const LEVELS: [&str; 8] = ["debug", "info", "warn", "error", "invalid", "refused", "fault", "hub"];
    LEVELS.into_iter().find(|known| *known == level).unwrap_or("info")
}

/// Adds a line to a plugin's recent log, dropping the oldest past [`RECENT_LINES`].
pub(crate) fn remember(recent: &mut VecDeque<RecentLine>, level: &'static str, text: String) {
    if recent.len() >= RECENT_LINES {
        recent.pop_front();
    }
    recent.push_back(RecentLine { at_ms: now_ms(), level, text });
}

/// A plugin's state on the host that outlives one instance: a fault re-instantiates the module
/// but keeps its subscriptions, timers and open calls.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) name: Arc<str>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) config_json: Arc<[u8]>,
    pub(crate) kv_quota: u64,
    pub(crate) kv_used: u64,
    pub(crate) ctx: HostContext,
    pub(crate) subscriptions: Vec<String>,
    pub(crate) timers: HashMap<u64, TimerSpec>,
    /// Timers set during the current event, for the scheduler to pick up.
    pub(crate) new_timers: Vec<(u64, TimerSpec)>,
    /// Timer and request ids start at a random point in every run, so an id kept from an
    /// earlier run (or an outcome that arrives after a restart) never names something of this one.
    pub(crate) next_timer: u64,
    pub(crate) next_request: u64,
    /// Service calls waiting for `respond`.
    pub(crate) open_calls: HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>,
    pub(crate) recent: VecDeque<RecentLine>,
    /// Calls refused for being outside the grants, since the plugin started.
    pub(crate) refused: u64,
    /// Money orders of the current event: the host sends them once the event's storage writes
    /// are durable, so a crash never leaves money moved that the plugin's storage forgot.
    pub(crate) outbox: Vec<MoneyRequest>,
    /// Whether the current event wrote to storage.
    pub(crate) stored: bool,
}

impl Session {
    pub(crate) fn new(
        name: &str,
        grants: Grants,
        config: &serde_json::Map<String, serde_json::Value>,
        kv_quota: u64,
        ctx: HostContext,
    ) -> Session {
        let kv_used = ctx.store.as_ref().and_then(|s| s.plugin_kv_usage(name).ok()).unwrap_or(0);
        Session {
            name: Arc::from(name),
            grants: Arc::new(grants),
            config_json: Arc::from(serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec())),
            kv_quota,
            kv_used,
            ctx,
            subscriptions: Vec::new(),
            timers: HashMap::new(),
            new_timers: Vec::new(),
            next_timer: first_id(),
            next_request: first_id(),
            open_calls: HashMap::new(),
            recent: VecDeque::new(),
            refused: 0,
            outbox: Vec::new(),
            stored: false,
        }
    }

    pub(crate) fn remember(&mut self, level: &'static str, text: String) {
        remember(&mut self.recent, level, text);
    }

    /// Whether a message on `topic` goes to this plugin.
    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.subscriptions.iter().any(|f| machinomy_core::plugin::topic_matches(f, topic))
    }

    /// An amount as the owner reads it elsewhere in the hub ("2.50 USD"), not in base units.
    fn money(&self, amount: Amount) -> String {
        self.ctx.currency.format(amount)
    }

    /// Tells the owner (and the author, in `plugin show`) which argument made a call invalid:
    /// the ABI answers only `ERR_INVALID`.
    fn invalid(&mut self, call: &str, why: &str) -> i32 {
        tracing::debug!(target: "plugin", plugin = %self.name, "{call}: {why}");
        self.remember("invalid", format!("{call}: {why}"));
        abi::ERR_INVALID
    }

    fn refuse(&mut self, what: String) -> i32 {
        self.refused += 1;
        tracing::warn!(target: "plugin", plugin = %self.name, "refused: {what}");
        self.remember("refused", what);
        abi::ERR_NOT_GRANTED
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }
}

/// The data of one instance's `Store`.
pub(crate) struct HostState {
    pub(crate) session: Session,
    pub(crate) limits: StoreLimits,
    pub(crate) memory: Option<Memory>,
    log_lines: u32,
}

impl HostState {
    pub(crate) fn new(session: Session, limits: StoreLimits) -> HostState {
        HostState { session, limits, memory: None, log_lines: 0 }
    }

    pub(crate) fn begin_event(&mut self) {
        self.log_lines = 0;
    }
}

/// Ids below 2^52 (exact in a JSON number read as a double, short in a reference), at least 1,
/// with room above for any run.
const ID_BITS: u32 = 52;

/// A run's first timer or request id: random, so runs (and hub starts) do not repeat ids.
fn first_id() -> u64 {
    let mut bytes = [0u8; 8];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // No randomness: the clock still differs between runs.
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    // The lower half of the range, so a run never reaches 2^52.
    (random >> (64 - ID_BITS + 1)).max(1)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The guest bytes at (`ptr`, `len`), or a trap: a pointer outside its memory is a bug.
fn guest_slice(memory: &[u8], ptr: i32, len: i32) -> wasmtime::Result<&[u8]> {
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    memory
        .get(start..start.saturating_add(len))
        .ok_or_else(|| wasmtime::format_err!("a pointer passed to the host is outside the plugin's memory"))
}

fn guest_str(memory: &[u8], ptr: i32, len: i32) -> wasmtime::Result<Result<&str, i32>> {
    Ok(std::str::from_utf8(guest_slice(memory, ptr, len)?).map_err(|_| abi::ERR_INVALID))
}

/// Splits the caller into its memory and its state, so host calls read guest bytes in place.
fn parts<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<(&'a mut [u8], &'a mut HostState)> {
    let memory = caller.data().memory.ok_or_else(|| wasmtime::format_err!("the plugin has no memory"))?;
    Ok(memory.data_and_store_mut(caller))
}

/// Writes `value` to the guest's (`out`, `cap`) buffer when it fits; returns its length.
fn write_out(memory: &mut [u8], out: i32, cap: i32, value: &[u8]) -> wasmtime::Result<i32> {
    let Ok(len) = i32::try_from(value.len()) else { return Ok(abi::ERR_TOO_LARGE) };
    if value.len() <= cap as u32 as usize {
        let start = out as u32 as usize;
        let target = memory
            .get_mut(start..start + value.len())
            .ok_or_else(|| wasmtime::format_err!("the output buffer is outside the plugin's memory"))?;
        target.copy_from_slice(value);
    }
    Ok(len)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(abi::MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

fn parse_amount(text: &str) -> Option<Amount> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u128>().ok().map(Amount::from_base_units)
}

/// The most money orders one event may make.
pub(crate) const ORDERS_PER_EVENT: usize = 32;

/// Holds a money order for the host to send when the event ends (see [`Session::outbox`]).
fn queue(state: &mut HostState, order: Order) -> i64 {
    let session = &mut state.session;
    match &session.ctx.money {
        None => return i64::from(abi::ERR_UNAVAILABLE),
        Some(money) if money.is_closed() => return i64::from(abi::ERR_UNAVAILABLE),
        Some(_) if session.outbox.len() >= ORDERS_PER_EVENT => return i64::from(abi::ERR_BUSY),
        Some(_) => {}
    }
    let id = session.request_id();
    session.outbox.push(MoneyRequest { plugin: session.name.clone(), request: id, order });
    id as i64
}

/// Registers every import on `linker`.
pub(crate) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = abi::MODULE;

    linker.func_wrap(
        m,
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let (memory, state) = parts(&mut caller)?;
            state.log_lines += 1;
            if state.log_lines > LOG_LINES_PER_EVENT {
                return Ok(());
            }
            let text = String::from_utf8_lossy(guest_slice(memory, ptr, len.min(abi::MAX_TEXT as i32))?).into_owned();
            let name = &state.session.name;
            let level = match level {
                abi::LOG_ERROR => {
                    tracing::error!(target: "plugin", plugin = %name, "{text}");
                    "error"
                }
                abi::LOG_WARN => {
                    tracing::warn!(target: "plugin", plugin = %name, "{text}");
                    "warn"
                }
                abi::LOG_INFO => {
                    tracing::info!(target: "plugin", plugin = %name, "{text}");
                    "info"
                }
                _ => {
                    tracing::debug!(target: "plugin", plugin = %name, "{text}");
                    "debug"
                }
            };
            if level != "debug" {
                state.session.remember(level, text);
            }
            Ok(())
        },
    )?;

    linker.func_wrap(
        m,
        "publish",
        |mut caller: Caller<'_, HostState>, tp: i32, tl: i32, pp: i32, pl: i32, retain: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if tl as u32 as usize > abi::MAX_TOPIC || pl as u32 as usize > abi::MAX_PAYLOAD {
                let what = format!("a publish of {} bytes (the most is {})", pl as u32, abi::MAX_PAYLOAD);
                state.session.remember("refused", what);
                return Ok(abi::ERR_TOO_LARGE);
            }
            let topic = match guest_str(memory, tp, tl)? {
                Ok(topic) => topic,
                Err(code) => return Ok(code),
            };
            if check_topic(topic).is_err() {
                return Ok(abi::ERR_INVALID);
            }
            if !state.session.grants.may_publish(topic) {
                let what = format!("publish on {topic}");
                return Ok(state.session.refuse(what));
            }
            let Some(bridge) = state.session.ctx.bridge.as_ref() else { return Ok(abi::ERR_UNAVAILABLE) };
            let payload = guest_slice(memory, pp, pl)?.to_vec();
            Ok(match bridge.try_publish(topic, payload, retain != 0) {
                Ok(()) => 0,
                Err(crate::bridge::BridgeError::NoBroker) => abi::ERR_UNAVAILABLE,
                Err(_) => abi::ERR_BUSY,
            })
        },
    )?;

    linker.func_wrap(
        m,
        "subscribe",
        |mut caller: Caller<'_, HostState>, fp: i32, fl: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if fl as u32 as usize > abi::MAX_TOPIC {
                return Ok(abi::ERR_TOO_LARGE);
            }
            let filter = match guest_str(memory, fp, fl)? {
                Ok(filter) => filter,
                Err(code) => return Ok(code),
            };
            if check_filter(filter).is_err() {
                return Ok(abi::ERR_INVALID);
            }
            if !state.session.grants.may_subscribe(filter) {
                let what = format!("subscribe to {filter}");
                return Ok(state.session.refuse(what));
            }
            let session = &mut state.session;
            if session.subscriptions.iter().any(|s| s == filter) {
                return Ok(0);
            }
            if session.subscriptions.len() >= abi::MAX_SUBSCRIPTIONS {
                return Ok(abi::ERR_QUOTA);
            }
            session.subscriptions.push(filter.to_owned());
            Ok(0)
        },
    )?;

    linker.func_wrap(
        m,
        "unsubscribe",
        |mut caller: Caller<'_, HostState>, fp: i32, fl: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            let filter = match guest_str(memory, fp, fl.min(abi::MAX_TOPIC as i32 + 1))? {
                Ok(filter) => filter,
                Err(code) => return Ok(code),
            };
            state.session.subscriptions.retain(|s| s != filter);
            Ok(0)
        },
    )?;

    linker.func_wrap(m, "set_timer", |mut caller: Caller<'_, HostState>, delay_ms: i64, repeat: i32| -> i64 {
        let session = &mut caller.data_mut().session;
        if delay_ms < abi::MIN_TIMER_MS {
            return i64::from(abi::ERR_INVALID);
        }
        if session.timers.len() >= abi::MAX_TIMERS {
            return i64::from(abi::ERR_QUOTA);
        }
        let id = session.next_timer;
        session.next_timer += 1;
        let spec = TimerSpec { delay_ms: delay_ms as u64, repeat: repeat != 0 };
        session.timers.insert(id, spec);
        session.new_timers.push((id, spec));
        id as i64
    })?;

    linker.func_wrap(m, "cancel_timer", |mut caller: Caller<'_, HostState>, timer: i64| -> i32 {
        match caller.data_mut().session.timers.remove(&(timer as u64)) {
            Some(_) => 0,
            None => abi::ERR_INVALID,
        }
    })?;

    linker.func_wrap(m, "now", || -> i64 { now_ms() as i64 })?;

    linker.func_wrap(
        m,
        "kv_get",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, out: i32, cap: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if kl as u32 as usize > abi::MAX_KEY {
                return Ok(abi::ERR_TOO_LARGE);
            }
            let key = guest_slice(memory, kp, kl)?.to_vec();
            let Some(store) = state.session.ctx.store.as_ref() else { return Ok(abi::ERR_UNAVAILABLE) };
            match store.plugin_kv_get(&state.session.name, &key) {
                Ok(Some(value)) => write_out(memory, out, cap, &value),
                Ok(None) => Ok(abi::ERR_NOT_FOUND),
                Err(e) => {
                    tracing::warn!(plugin = %state.session.name, error = %e, "plugin storage read failed");
                    Ok(abi::ERR_UNAVAILABLE)
                }
            }
        },
    )?;

    linker.func_wrap(
        m,
        "kv_set",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if kl as u32 as usize > abi::MAX_KEY || vl as u32 as usize > abi::MAX_VALUE || kl == 0 {
                return Ok(if kl == 0 { abi::ERR_INVALID } else { abi::ERR_TOO_LARGE });
            }
            let key = guest_slice(memory, kp, kl)?;
            let value = guest_slice(memory, vp, vl)?;
            let session = &mut state.session;
            let Some(store) = session.ctx.store.as_ref() else { return Ok(abi::ERR_UNAVAILABLE) };
            let old = match store.plugin_kv_get(&session.name, key) {
                Ok(old) => old.map_or(0, |v| (key.len() + v.len()) as u64),
                Err(_) => return Ok(abi::ERR_UNAVAILABLE),
            };
            let new = (key.len() + value.len()) as u64;
            let used = session.kv_used.saturating_sub(old).saturating_add(new);
            if used > session.kv_quota {
                let what = format!("storing {new} bytes: over its storage quota of {} bytes", session.kv_quota);
                session.remember("refused", what);
                return Ok(abi::ERR_QUOTA);
            }
            match store.plugin_kv_set(&session.name, key, value) {
                Ok(()) => {
                    session.stored = true;
                    session.kv_used = used;
                    Ok(0)
                }
                Err(e) => {
                    tracing::warn!(plugin = %session.name, error = %e, "plugin storage write failed");
                    Ok(abi::ERR_UNAVAILABLE)
                }
            }
        },
    )?;

    linker.func_wrap(
        m,
        "kv_delete",
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if kl as u32 as usize > abi::MAX_KEY {
                return Ok(abi::ERR_TOO_LARGE);
            }
            let key = guest_slice(memory, kp, kl)?;
            let session = &mut state.session;
            let Some(store) = session.ctx.store.as_ref() else { return Ok(abi::ERR_UNAVAILABLE) };
            match store.plugin_kv_delete(&session.name, key) {
                Ok(Some(freed)) => {
                    session.stored = true;
                    session.kv_used = session.kv_used.saturating_sub((key.len() + freed) as u64);
                    Ok(0)
                }
                Ok(None) => Ok(0),
                Err(_) => Ok(abi::ERR_UNAVAILABLE),
            }
        },
    )?;

    linker.func_wrap(
        m,
        "device_state",
        |mut caller: Caller<'_, HostState>, dp: i32, dl: i32, out: i32, cap: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            let device = match guest_str(memory, dp, dl.min(65))? {
                Ok(device) => device.to_owned(),
                Err(code) => return Ok(code),
            };
            if !state.session.grants.may_read_device(&device) {
                let what = format!("read the state of {device}");
                return Ok(state.session.refuse(what));
            }
            match state.session.ctx.devices.get(&device) {
                Some(json) => write_out(memory, out, cap, &json),
                None => Ok(abi::ERR_NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        m,
        "config",
        |mut caller: Caller<'_, HostState>, out: i32, cap: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            let config = state.session.config_json.clone();
            write_out(memory, out, cap, &config)
        },
    )?;

    linker.func_wrap(
        m,
        "spend",
        |mut caller: Caller<'_, HostState>,
         pp: i32,
         pl: i32,
         ap: i32,
         al: i32,
         mp: i32,
         ml: i32|
         -> wasmtime::Result<i64> {
            let (memory, state) = parts(&mut caller)?;
            let args = peer_amount_memo(memory, pp, pl, ap, al, mp, ml)?;
            let (payee, amount, memo) = match args {
                Ok(args) => args,
                Err(bad) => return Ok(i64::from(bad.answer(&mut state.session, "spend", "payee"))),
            };
            if !state.session.grants.pay {
                let what = format!("pay {} to {payee}", state.session.money(amount));
                return Ok(i64::from(state.session.refuse(what)));
            }
            Ok(queue(state, Order::Pay { payee, amount, memo }))
        },
    )?;

    linker.func_wrap(
        m,
        "stream_tick",
        |mut caller: Caller<'_, HostState>,
         pp: i32,
         pl: i32,
         ap: i32,
         al: i32,
         mp: i32,
         ml: i32|
         -> wasmtime::Result<i64> {
            let (memory, state) = parts(&mut caller)?;
            let (payee, price, memo) = match peer_amount_memo(memory, pp, pl, ap, al, mp, ml)? {
                Ok(args) => args,
                Err(bad) => return Ok(i64::from(bad.answer(&mut state.session, "stream_tick", "payee"))),
            };
            if !state.session.grants.pay {
                let what = format!("stream {} per tick to {payee}", state.session.money(price));
                return Ok(i64::from(state.session.refuse(what)));
            }
            Ok(queue(state, Order::Tick { payee, price, memo }))
        },
    )?;

    linker.func_wrap(
        m,
        "invoice",
        |mut caller: Caller<'_, HostState>,
         pp: i32,
         pl: i32,
         ap: i32,
         al: i32,
         mp: i32,
         ml: i32|
         -> wasmtime::Result<i64> {
            let (memory, state) = parts(&mut caller)?;
            let (payer, amount, memo) = match peer_amount_memo(memory, pp, pl, ap, al, mp, ml)? {
                Ok(args) => args,
                Err(bad) => return Ok(i64::from(bad.answer(&mut state.session, "invoice", "payer"))),
            };
            if !state.session.grants.invoice {
                let what = format!("invoice {payer} for {}", state.session.money(amount));
                return Ok(i64::from(state.session.refuse(what)));
            }
            Ok(queue(state, Order::Invoice { payer, amount, memo }))
        },
    )?;

    linker.func_wrap(
        m,
        "call_service",
        |mut caller: Caller<'_, HostState>,
         sp: i32,
         sl: i32,
         bp: i32,
         bl: i32,
         mp: i32,
         ml: i32|
         -> wasmtime::Result<i64> {
            let (memory, state) = parts(&mut caller)?;
            if bl as u32 as usize > abi::MAX_PAYLOAD {
                return Ok(i64::from(abi::ERR_TOO_LARGE));
            }
            let service = match guest_str(memory, sp, sl.min(65))? {
                Ok(s) if machinomy_core::wire::valid_service_name(s) => s.to_owned(),
                _ => {
                    let why = "the service is not a service name (1 to 64 of a-z, A-Z, 0-9, '-', '_', '.')";
                    return Ok(i64::from(state.session.invalid("call_service", why)));
                }
            };
            let max_price = match guest_str(memory, mp, ml.min(40))?.ok().and_then(parse_amount) {
                Some(a) => a,
                None => {
                    let why = "the most it may cost is not a decimal amount of base units";
                    return Ok(i64::from(state.session.invalid("call_service", why)));
                }
            };
            match state.session.grants.call_limit(&service) {
                Some(limit) if max_price <= limit => {}
                Some(limit) => {
                    let session = &mut state.session;
                    let what = format!(
                        "buy {service} at up to {} (granted up to {})",
                        session.money(max_price),
                        session.money(limit)
                    );
                    return Ok(i64::from(session.refuse(what)));
                }
                None => return Ok(i64::from(state.session.refuse(format!("buy {service}")))),
            }
            let body = guest_slice(memory, bp, bl)?.to_vec();
            Ok(queue(state, Order::Call { service, body, max_price }))
        },
    )?;

    linker.func_wrap(
        m,
        "respond",
        |mut caller: Caller<'_, HostState>, call: i64, ok: i32, bp: i32, bl: i32| -> wasmtime::Result<i32> {
            let (memory, state) = parts(&mut caller)?;
            if bl as u32 as usize > abi::MAX_PAYLOAD {
                return Ok(abi::ERR_TOO_LARGE);
            }
            let body = guest_slice(memory, bp, bl)?;
            let Some(reply) = state.session.open_calls.remove(&(call as u64)) else { return Ok(abi::ERR_INVALID) };
            let answer = if ok != 0 { Ok(body.to_vec()) } else { Err(cut(&String::from_utf8_lossy(body))) };
            // The caller may have given up (timeout); nothing more to do then.
            let _ = reply.send(answer);
            Ok(0)
        },
    )?;

    Ok(())
}

/// Which of the (peer, amount, memo) arguments was invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadArgument {
    Peer,
    Amount,
    Memo,
}

impl BadArgument {
    /// Records why in the plugin's log and gives the ABI's code; `peer` names the first
    /// argument as the call does (payee, payer).
    fn answer(self, session: &mut Session, call: &str, peer: &str) -> i32 {
        let why = match self {
            BadArgument::Peer => format!("the {peer} is not a peer's public key (64 hex digits)"),
            BadArgument::Amount => "the amount is not a decimal amount of base units above zero".to_owned(),
            BadArgument::Memo => "the memo is not UTF-8 text".to_owned(),
        };
        session.invalid(call, &why)
    }
}

/// The (peer, amount, memo) arguments of `spend`, `stream_tick` and `invoice`; `Err` says
/// which one is invalid.
#[allow(clippy::too_many_arguments)]
fn peer_amount_memo(
    memory: &[u8],
    pp: i32,
    pl: i32,
    ap: i32,
    al: i32,
    mp: i32,
    ml: i32,
) -> wasmtime::Result<Result<(PublicKey, Amount, String), BadArgument>> {
    let peer = match guest_str(memory, pp, pl.min(200))? {
        Ok(text) => match text.parse::<PublicKey>() {
            Ok(peer) => peer,
            Err(_) => return Ok(Err(BadArgument::Peer)),
        },
        Err(_) => return Ok(Err(BadArgument::Peer)),
    };
    let amount = match guest_str(memory, ap, al.min(40))?.ok().and_then(parse_amount) {
        Some(amount) if amount > Amount::ZERO => amount,
        _ => return Ok(Err(BadArgument::Amount)),
    };
    let memo = match guest_str(memory, mp, ml.min(abi::MAX_TEXT as i32))? {
        Ok(memo) => cut(memo),
        Err(_) => return Ok(Err(BadArgument::Memo)),
    };
    Ok(Ok((peer, amount, cut_memo(&memo))))
}

/// Memos travel in the peer protocol, which takes at most `wire::MAX_MEMO` bytes.
fn cut_memo(memo: &str) -> String {
    let mut end = memo.len().min(machinomy_core::wire::MAX_MEMO);
    while !memo.is_char_boundary(end) {
        end -= 1;
    }
    memo.get(..end).unwrap_or_default().to_owned()
}
