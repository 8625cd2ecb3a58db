//! Timers and the clock. A timer fires [`Plugin::on_timer`](crate::Plugin::on_timer) with its
//! id. Timers outlive a fault of the plugin; whether they outlive a restart of the hub is the
//! host's business, so a plugin that needs one should cancel the id it stored and set a new one
//! in `on_start` (cancelling an unknown id is a harmless [`Error::Invalid`]).

use crate::{host, Error, Result};

/// A timer, as returned by [`set`] and passed to `on_timer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub i64);

/// Sets a timer that fires after `delay_ms` milliseconds, and then every `delay_ms` if
/// `repeat`. At most [`abi::MAX_TIMERS`](crate::abi::MAX_TIMERS) live timers.
pub fn set(delay_ms: u64, repeat: bool) -> Result<TimerId> {
    let delay = i64::try_from(delay_ms).map_err(|_| Error::Invalid)?;
    Error::check64(host::set_timer(delay, repeat)).map(TimerId)
}

/// A timer that fires once after `delay_ms`.
pub fn once(delay_ms: u64) -> Result<TimerId> {
    set(delay_ms, false)
}

/// A timer that fires every `period_ms`.
pub fn every(period_ms: u64) -> Result<TimerId> {
    set(period_ms, true)
}

/// Cancels a timer.
pub fn cancel(timer: TimerId) -> Result<()> {
    Error::check(host::cancel_timer(timer.0)).map(drop)
}

/// The hub's clock, in milliseconds since the Unix epoch (0 if the host reports a time before it).
pub fn now_ms() -> u64 {
    u64::try_from(host::now()).unwrap_or(0)
}
