//! The plugin ABI, version 1: the contract between the hub (host) and a plugin (guest), shared by
//! both sides so the numbers cannot drift.
//!
//! A plugin is a core WebAssembly module (not a component) built for `wasm32-unknown-unknown`.
//!
//! # Exports the host looks for
//!
//! | export | signature | when |
//! |---|---|---|
//! | `memory` | memory | required |
//! | `machinomy_abi_version` | `() -> i32` | required; returns [`ABI_VERSION`] |
//! | `machinomy_alloc` | `(size: i32) -> i32` | required; `size` bytes for the host to write, 0 if none |
//! | `on_start` | `()` | once when the plugin is enabled (and at each hub start) |
//! | `on_message` | `(topic_ptr, topic_len, payload_ptr, payload_len: i32)` | an MQTT message matching a subscription |
//! | `on_timer` | `(timer: i64)` | a timer set with `set_timer` fired |
//! | `on_spend_result` | `(request: i64, status: i32, detail_ptr, detail_len: i32)` | a money request's outcome |
//! | `on_service_call` | `(call: i64, service_ptr, service_len, body_ptr, body_len, from_ptr, from_len: i32)` | a peer bought a service the plugin sells |
//!
//! Every `on_*` export is optional; the host calls only those that exist.
//!
//! **Buffers into the guest.** For an event that carries bytes, the host calls
//! `machinomy_alloc(total)` once, with `total` the sum of the lengths, writes the arguments one
//! after the other in argument order, and passes the pointers. The guest owns that one
//! allocation (first pointer, `total` bytes, alignment 1) and frees it when the handler returns.
//! When `total` is 0 no allocation is made and every pointer is 0.
//!
//! **Statuses** passed to `on_spend_result`: [`STATUS_PAID`], [`STATUS_PENDING`],
//! [`STATUS_DENIED`], [`STATUS_FAILED`]. `pending` is followed later by one final status when
//! the owner decides. The detail is: for a paid `call_service`, the service's answer; for
//! `pending`, the approval id in decimal; for `denied` and `failed`, the reason; else empty.
//!
//! # Imports the host provides (module `machinomy`)
//!
//! Pointers and lengths are `i32`; amounts are decimal strings of base units (they do not fit
//! an `i64`); peers are hub public keys in hex. A negative result is one of the `ERR_*` codes.
//! A pointer/length pair outside the guest's memory traps (a bug, counted as a fault).
//!
//! | import | signature | result |
//! |---|---|---|
//! | `log` | `(level: i32, ptr, len)` | none; levels `LOG_*` |
//! | `publish` | `(topic_ptr, topic_len, payload_ptr, payload_len, retain: i32) -> i32` | 0 |
//! | `subscribe` | `(filter_ptr, filter_len) -> i32` | 0 |
//! | `unsubscribe` | `(filter_ptr, filter_len) -> i32` | 0 |
//! | `set_timer` | `(delay_ms: i64, repeat: i32) -> i64` | timer id ≥ 1; repeats every `delay_ms` if `repeat` ≠ 0 |
//! | `cancel_timer` | `(timer: i64) -> i32` | 0 |
//! | `now` | `() -> i64` | milliseconds since the Unix epoch |
//! | `kv_get` | `(key_ptr, key_len, out_ptr, out_cap) -> i32` | value length; written only if ≤ `out_cap` |
//! | `kv_set` | `(key_ptr, key_len, value_ptr, value_len) -> i32` | 0 |
//! | `kv_delete` | `(key_ptr, key_len) -> i32` | 0 (also when absent) |
//! | `device_state` | `(device_ptr, device_len, out_ptr, out_cap) -> i32` | JSON object length, as `kv_get` |
//! | `config` | `(out_ptr, out_cap) -> i32` | the plugin's `[config]` as a JSON object, as `kv_get` |
//! | `spend` | `(payee_ptr, payee_len, amount_ptr, amount_len, memo_ptr, memo_len) -> i64` | request id ≥ 1 |
//! | `call_service` | `(service_ptr, service_len, body_ptr, body_len, max_price_ptr, max_price_len) -> i64` | request id ≥ 1 |
//! | `invoice` | `(peer_ptr, peer_len, amount_ptr, amount_len, memo_ptr, memo_len) -> i64` | request id ≥ 1 |
//! | `stream_tick` | `(payee_ptr, payee_len, price_ptr, price_len, memo_ptr, memo_len) -> i64` | request id ≥ 1 |
//! | `respond` | `(call: i64, ok: i32, body_ptr, body_len) -> i32` | 0; `ok` = 0 answers with an error message |
//!
//! `spend`, `call_service`, `invoice` and `stream_tick` never wait: each returns a request id at
//! once and its outcome arrives later through `on_spend_result` with that id. `spend` and
//! `stream_tick` pay a peer from the plugin's budget (`stream_tick` pays one tick of a hash-chain
//! stream to the payee at that price, opening the stream on first use); `call_service` buys one
//! call of a service at most `max_price`; `invoice` asks a peer to pay this hub (the peer's
//! budget decides). `respond` answers an `on_service_call`, in the handler or later.
//!
//! # Lifetimes
//!
//! Subscriptions, timers and open service calls belong to the plugin's *run*: from enable (or
//! hub start) until disable, upgrade, quarantine or hub stop. `on_start` begins each run, so it
//! must subscribe and set its timers every time; only the key-value store outlives a run. A
//! fault (trap, out of fuel, over memory) ends the event and the instance — the next event
//! gets a fresh instance of the module *without* another `on_start`, keeping the run's
//! subscriptions and timers — so state that must survive a fault belongs in the key-value
//! store. Subscribing twice to one filter is a no-op; `cancel_timer` of an unknown or fired
//! one-shot timer answers [`ERR_INVALID`]; `set_timer` refuses delays under [`MIN_TIMER_MS`].
//! Messages carry no retained flag: a retained state is delivered like a fresh one.

/// The ABI version this crate speaks; the host refuses a module that reports another.
pub const ABI_VERSION: i32 = 1;
/// The import module name.
pub const MODULE: &str = "machinomy";

/// A call the plugin's manifest does not grant (topic, service, payee, selling, spending).
pub const ERR_NOT_GRANTED: i32 = -1;
/// An argument is malformed: not UTF-8, a bad topic or filter, an amount that is not a decimal
/// integer, a bad public key, an unknown timer or call.
pub const ERR_INVALID: i32 = -2;
/// An argument is over its size limit (see the `MAX_*` constants).
pub const ERR_TOO_LARGE: i32 = -3;
/// No such key, device, or config.
pub const ERR_NOT_FOUND: i32 = -4;
/// Over a quota: the key-value store's bytes, timers or subscriptions.
pub const ERR_QUOTA: i32 = -5;
/// The host's queue for this kind of request is full; try again later.
pub const ERR_BUSY: i32 = -6;
/// The subsystem is not running on this hub (no MQTT broker, no peer network).
pub const ERR_UNAVAILABLE: i32 = -7;

/// `on_spend_result`: the money moved (and, for `call_service`, the answer is the detail).
pub const STATUS_PAID: i32 = 0;
/// `on_spend_result`: the owner must decide; a final status follows.
pub const STATUS_PENDING: i32 = 1;
/// `on_spend_result`: the budget or the owner (or, for an invoice, the payer) said no.
pub const STATUS_DENIED: i32 = 2;
/// `on_spend_result`: it was allowed but did not happen (no seller, network, refused by the peer).
pub const STATUS_FAILED: i32 = 3;

/// `log` level: an error.
pub const LOG_ERROR: i32 = 0;
/// `log` level: a warning.
pub const LOG_WARN: i32 = 1;
/// `log` level: information.
pub const LOG_INFO: i32 = 2;
/// `log` level: detail for debugging.
pub const LOG_DEBUG: i32 = 3;

/// Largest MQTT topic or filter, in bytes.
pub const MAX_TOPIC: usize = 256;
/// Largest publish payload, service body or answer, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest key-value key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest key-value value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Largest log line or memo, in bytes (longer ones are cut, not refused).
pub const MAX_TEXT: usize = 1024;
/// Shortest timer delay, so a repeating timer cannot spin the host.
pub const MIN_TIMER_MS: i64 = 10;
/// Most live timers per plugin.
pub const MAX_TIMERS: usize = 64;
/// Most subscriptions per plugin.
pub const MAX_SUBSCRIPTIONS: usize = 64;
