//! Log lines in the hub's log, tagged with the plugin's name.
//!
//! Lines longer than [`abi::MAX_TEXT`] bytes are cut (on a character
//! boundary). The [`error!`](crate::error!), [`warn!`](crate::warn!), [`info!`](crate::info!) and
//! [`debug!`](crate::debug!) macros take `format!` arguments.

use crate::{abi, cut_text, host};

/// How important a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something failed and needs the owner's attention (a missing peer key, a refused call).
    Error,
    /// Something odd the plugin worked around (a malformed message it ignored).
    Warn,
    /// What the plugin did (an order placed, a bill sent).
    Info,
    /// Detail for the plugin's author.
    Debug,
}

impl Level {
    /// The ABI's `LOG_*` code.
    pub fn code(self) -> i32 {
        match self {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
        }
    }

    /// The level of a `LOG_*` code.
    pub fn from_code(code: i32) -> Option<Level> {
        match code {
            abi::LOG_ERROR => Some(Level::Error),
            abi::LOG_WARN => Some(Level::Warn),
            abi::LOG_INFO => Some(Level::Info),
            abi::LOG_DEBUG => Some(Level::Debug),
            _ => None,
        }
    }

    /// `"error"`, `"warn"`, `"info"` or `"debug"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Writes one line to the hub's log. Logging cannot fail.
pub fn log(level: Level, message: &str) {
    host::log(level.code(), cut_text(message).as_bytes());
}

/// Logs at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs a `format!` message at [`Level::Error`](crate::log::Level::Error).
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at [`Level::Warn`](crate::log::Level::Warn).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at [`Level::Info`](crate::log::Level::Info).
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs a `format!` message at [`Level::Debug`](crate::log::Level::Debug).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}
