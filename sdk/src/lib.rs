//! Write plugins for the Machinomy hub in Rust.
//!
//! A plugin is a WebAssembly module (`wasm32-unknown-unknown`, a `cdylib` crate) that the hub
//! runs in a sandbox. It reacts to events — the hub starting it, MQTT messages from appliances,
//! timers, the outcome of payments, peers buying a service it sells — and acts through the
//! host's calls: publish and subscribe on MQTT, timers, its own key-value store, device states,
//! its config, and money (pay a peer, buy a service, invoice a peer, pay a stream tick). It can
//! do only what its manifest, `plugin.toml`, grants; the hub enforces every grant and budget.
//!
//! This crate wraps the raw ABI ([`abi`]) in safe functions and, on every target but wasm32,
//! answers them with a mock host (module `mock`) so a plugin's logic is tested with plain `cargo test`.
//!
//! # A plugin and its test
//!
//! ```
//! use machinomy_sdk::json::{self, Value};
//! use machinomy_sdk::{mqtt, Plugin};
//!
//! /// Turns the hall light on when the hall sensor sees motion.
//! #[derive(Default)]
//! struct NightLight;
//!
//! impl Plugin for NightLight {
//!     fn on_start(&mut self) {
//!         if let Err(e) = mqtt::subscribe("machinomy/hall-sensor/state") {
//!             machinomy_sdk::error!("cannot watch the sensor: {e}");
//!         }
//!     }
//!
//!     fn on_message(&mut self, _topic: &str, payload: &[u8]) {
//!         let state = match json::parse(payload) {
//!             Ok(state) => state,
//!             Err(e) => return machinomy_sdk::warn!("ignored a sensor state: {e}"),
//!         };
//!         if state.get("motion").and_then(Value::as_bool) == Some(true) {
//!             let command = Value::object().with("reason", "motion");
//!             if let Err(e) = mqtt::publish_json("machinomy/hall-light/cmd/on", &command, false) {
//!                 machinomy_sdk::error!("cannot turn the light on: {e}");
//!             }
//!         }
//!     }
//! }
//!
//! machinomy_sdk::export_plugin!(NightLight);
//!
//! // The test, natively against the mock host (in the plugin's `#[cfg(test)] mod tests`):
//! use machinomy_sdk::mock;
//!
//! mock::reset();
//! let mut plugin = NightLight::default();
//! plugin.on_start();
//! assert_eq!(mock::subscriptions(), ["machinomy/hall-sensor/state"]);
//!
//! plugin.on_message("machinomy/hall-sensor/state", br#"{"motion": true}"#);
//! let sent = mock::take_published();
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].topic, "machinomy/hall-light/cmd/on");
//! assert_eq!(sent[0].text(), r#"{"reason":"motion"}"#);
//!
//! plugin.on_message("machinomy/hall-sensor/state", b"garbage"); // logged, ignored
//! assert!(mock::take_published().is_empty());
//! assert_eq!(mock::logs().last().map(|l| l.level), Some(machinomy_sdk::log::Level::Warn));
//! ```
//!
//! A test can also load the plugin's own manifest with
//! `mock::load_manifest(include_str!("../plugin.toml"))`: the mock
//! then answers with the manifest's `[config]` and refuses whatever its grants do not allow,
//! as the hub would.
//!
//! # Rules of thumb
//!
//! - Keep what must survive in [`kv`]: after a fault the hub starts a fresh instance from
//!   `Default` without calling `on_start` (kv, subscriptions and timers are kept).
//! - Money requests answer later: store what you need under the [`RequestId`] and finish the
//!   work in [`Plugin::on_spend_result`].
//! - Amounts are integers ([`Amount`], base units), never floats; JSON carries them as strings.
//! - Every run (hub start, enable, upgrade) begins with [`Plugin::on_start`] and no
//!   subscriptions or timers: set them up there every time (`mock::restart` tests it).
//! - Never panic on input: a panic traps the instance and counts as a fault (its message is
//!   logged for the owner); repeated faults quarantine the plugin.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod abi;
pub mod device;
pub mod json;
pub mod kv;
pub mod log;
pub mod money;
pub mod mqtt;
pub mod service;
pub mod timer;

mod amount;
mod error;
mod host;
mod plugin;

#[cfg(not(target_arch = "wasm32"))]
pub mod mock;

#[cfg(target_arch = "wasm32")]
pub use plugin::__rt;

pub use amount::{Amount, AmountError};
pub use error::{Error, Result};
pub use money::{RequestId, SpendStatus};
pub use plugin::Plugin;
pub use service::CallId;
pub use timer::TimerId;

/// The clock: milliseconds since the Unix epoch (see [`timer::now_ms`]).
pub mod time {
    pub use crate::timer::now_ms;
}

/// The plugin's `[config]` table from its manifest (with the owner's overrides) as a JSON
/// object. An empty object if the host has none or answers something unreadable (logged).
pub fn config() -> json::Value {
    match try_config() {
        Ok(config) => config,
        Err(e) => {
            warn!("cannot read the plugin's config: {e}");
            json::Value::object()
        }
    }
}

/// [`config`], with the reason when it cannot be read.
pub fn try_config() -> Result<json::Value> {
    match kv::read_growing(host::config)? {
        None => Ok(json::Value::object()),
        Some(bytes) => match json::parse(&bytes) {
            Ok(config @ json::Value::Object(_)) => Ok(config),
            _ => Err(Error::Malformed),
        },
    }
}

/// `text` cut to at most [`abi::MAX_TEXT`] bytes, on a character boundary.
pub(crate) fn cut_text(text: &str) -> &str {
    cut(text, abi::MAX_TEXT)
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_char_boundary() {
        assert_eq!(cut("hello", 10), "hello");
        assert_eq!(cut("hello", 5), "hello");
        assert_eq!(cut("hello", 4), "hell");
        assert_eq!(cut("aé", 2), "a"); // é is two bytes
        assert_eq!(cut("€€", 5), "€");
        assert_eq!(cut("😀", 3), "");
        let long = "é".repeat(abi::MAX_TEXT);
        assert_eq!(cut_text(&long).len(), abi::MAX_TEXT);
        let odd = format!("a{long}");
        assert_eq!(cut_text(&odd).len(), abi::MAX_TEXT - 1);
    }
}
