//! The error every host call can return.

use core::fmt;

use crate::abi;

/// Why a host call did not happen: one of the ABI's `ERR_*` codes, or a value the SDK could not
/// decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The plugin's manifest does not grant this (topic, service, payee, device, selling,
    /// spending). [`abi::ERR_NOT_GRANTED`]
    NotGranted,
    /// An argument is malformed: a bad topic or filter, amount, public key, unknown timer or
    /// call. [`abi::ERR_INVALID`]
    Invalid,
    /// An argument is over its size limit (see the `abi::MAX_*` constants).
    /// [`abi::ERR_TOO_LARGE`]
    TooLarge,
    /// No such key, device or config. The SDK turns this into `Ok(None)` where absence is a normal
    /// answer ([`kv::get`](crate::kv::get), [`device::state`](crate::device::state)).
    /// [`abi::ERR_NOT_FOUND`]
    NotFound,
    /// Over a quota: key-value bytes, timers or subscriptions. [`abi::ERR_QUOTA`]
    Quota,
    /// The host's queue for this kind of request is full; try again later. [`abi::ERR_BUSY`]
    Busy,
    /// The subsystem is not running on this hub (no MQTT broker, no peer network).
    /// [`abi::ERR_UNAVAILABLE`]
    Unavailable,
    /// The host answered, but with bytes the SDK could not decode (JSON, a number, UTF-8).
    Malformed,
    /// A negative code this version of the SDK does not know.
    Unknown(i32),
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// The error for a negative ABI result code.
    pub fn from_code(code: i32) -> Error {
        match code {
            abi::ERR_NOT_GRANTED => Error::NotGranted,
            abi::ERR_INVALID => Error::Invalid,
            abi::ERR_TOO_LARGE => Error::TooLarge,
            abi::ERR_NOT_FOUND => Error::NotFound,
            abi::ERR_QUOTA => Error::Quota,
            abi::ERR_BUSY => Error::Busy,
            abi::ERR_UNAVAILABLE => Error::Unavailable,
            other => Error::Unknown(other),
        }
    }

    /// The ABI code of this error ([`Error::Malformed`] has none and reports `ERR_INVALID`).
    pub fn code(self) -> i32 {
        match self {
            Error::NotGranted => abi::ERR_NOT_GRANTED,
            Error::Invalid | Error::Malformed => abi::ERR_INVALID,
            Error::TooLarge => abi::ERR_TOO_LARGE,
            Error::NotFound => abi::ERR_NOT_FOUND,
            Error::Quota => abi::ERR_QUOTA,
            Error::Busy => abi::ERR_BUSY,
            Error::Unavailable => abi::ERR_UNAVAILABLE,
            Error::Unknown(code) => code,
        }
    }

    /// Turns an `i32` host result into `Ok(value)` when it is not negative.
    pub(crate) fn check(result: i32) -> Result<i32> {
        if result < 0 {
            Err(Error::from_code(result))
        } else {
            Ok(result)
        }
    }

    /// Turns an `i64` host result (ids) into `Ok(value)` when it is not negative.
    pub(crate) fn check64(result: i64) -> Result<i64> {
        if result < 0 {
            // Every ERR_* code fits an i32; anything lower is reported as unknown.
            Err(i32::try_from(result).map(Error::from_code).unwrap_or(Error::Unknown(i32::MIN)))
        } else {
            Ok(result)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotGranted => f.write_str("not granted by the plugin's manifest"),
            Error::Invalid => f.write_str("invalid argument"),
            Error::TooLarge => f.write_str("argument too large"),
            Error::NotFound => f.write_str("not found"),
            Error::Quota => f.write_str("over quota"),
            Error::Busy => f.write_str("host busy, try again later"),
            Error::Unavailable => f.write_str("not available on this hub"),
            Error::Malformed => f.write_str("malformed answer from the host"),
            Error::Unknown(code) => write!(f, "unknown host error {code}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [
            abi::ERR_NOT_GRANTED,
            abi::ERR_INVALID,
            abi::ERR_TOO_LARGE,
            abi::ERR_NOT_FOUND,
            abi::ERR_QUOTA,
            abi::ERR_BUSY,
            abi::ERR_UNAVAILABLE,
            -99,
        ] {
            assert_eq!(Error::from_code(code).code(), code);
        }
    }

    #[test]
    fn check_keeps_non_negative_results() {
        assert_eq!(Error::check(0), Ok(0));
        assert_eq!(Error::check(abi::ERR_BUSY), Err(Error::Busy));
        assert_eq!(Error::check64(7), Ok(7));
        assert_eq!(Error::check64(i64::from(abi::ERR_QUOTA)), Err(Error::Quota));
        assert_eq!(Error::check64(i64::MIN), Err(Error::Unknown(i32::MIN)));
    }
}
