//! The plugin's own key-value store, kept by the hub across restarts and faults: the place for
//! everything the plugin must remember (its memory is lost when the host re-instantiates it).
//!
//! Keys are at most [`abi::MAX_KEY`](crate::abi::MAX_KEY) bytes, values at most
//! [`abi::MAX_VALUE`](crate::abi::MAX_VALUE), and all of them together at most the manifest's
//! `limits.kv_bytes` ([`Error::Quota`] beyond).

use crate::json::{self, Value};
use crate::{host, Error, Result};

/// First buffer size for reads; a longer value is read again with a buffer of its exact size.
const FIRST_READ: usize = 512;

/// Reads from the host with a buffer that grows to the length the host reports. `None` for
/// [`Error::NotFound`].
pub(crate) fn read_growing(mut read: impl FnMut(&mut [u8]) -> i32) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; FIRST_READ];
    // The value cannot change between two reads (the plugin is single-threaded), but a
    // misbehaving host could keep answering a larger length: give up after a few tries.
    for _ in 0..4 {
        let len = match Error::check(read(&mut buf)) {
            Ok(len) => len as usize,
            Err(Error::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if len <= buf.len() {
            buf.truncate(len);
            return Ok(Some(buf));
        }
        buf = vec![0u8; len];
    }
    Err(Error::Malformed)
}

/// The value of `key`, or `None` if it is not set.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    read_growing(|out| host::kv_get(key.as_bytes(), out))
}

/// Sets `key` to `value`.
pub fn set(key: &str, value: &[u8]) -> Result<()> {
    Error::check(host::kv_set(key.as_bytes(), value)).map(drop)
}

/// Deletes `key` (also fine when it is not set).
pub fn delete(key: &str) -> Result<()> {
    Error::check(host::kv_delete(key.as_bytes())).map(drop)
}

/// The value of `key` as text; [`Error::Malformed`] if it is not UTF-8.
pub fn get_str(key: &str) -> Result<Option<String>> {
    match get(key)? {
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| Error::Malformed),
        None => Ok(None),
    }
}

/// Sets `key` to a text.
pub fn set_str(key: &str, value: &str) -> Result<()> {
    set(key, value.as_bytes())
}

/// The value of `key` as a decimal `u128` (amounts, counters); [`Error::Malformed`] if it is not
/// one.
pub fn get_u128(key: &str) -> Result<Option<u128>> {
    match get_str(key)? {
        Some(text) => crate::Amount::parse(&text).map(|a| Some(a.0)).map_err(|_| Error::Malformed),
        None => Ok(None),
    }
}

/// Sets `key` to a decimal `u128`.
pub fn set_u128(key: &str, value: u128) -> Result<()> {
    set_str(key, &value.to_string())
}

/// The value of `key` as a decimal `u64`; [`Error::Malformed`] if it is not one.
pub fn get_u64(key: &str) -> Result<Option<u64>> {
    match get_u128(key)? {
        Some(v) => u64::try_from(v).map(Some).map_err(|_| Error::Malformed),
        None => Ok(None),
    }
}

/// Sets `key` to a decimal `u64`.
pub fn set_u64(key: &str, value: u64) -> Result<()> {
    set_str(key, &value.to_string())
}

/// The value of `key` as JSON; [`Error::Malformed`] if it is not JSON.
pub fn get_json(key: &str) -> Result<Option<Value>> {
    match get(key)? {
        Some(bytes) => json::parse(&bytes).map(Some).map_err(|_| Error::Malformed),
        None => Ok(None),
    }
}

/// Sets `key` to a JSON value.
pub fn set_json(key: &str, value: &Value) -> Result<()> {
    set(key, value.to_string().as_bytes())
}
