//! Devices' current states, as the hub's registry knows them (the last retained
//! `machinomy/<device>/state`). Readable for the devices in the manifest's `grants.devices`.

use crate::json::{self, Value};
use crate::kv::read_growing;
use crate::{host, Error, Result};

/// The state of `device` as a JSON object, or `None` if the hub knows no state for it.
pub fn state(device: &str) -> Result<Option<Value>> {
    match read_growing(|out| host::device_state(device.as_bytes(), out))? {
        Some(bytes) => json::parse(&bytes).map(Some).map_err(|_| Error::Malformed),
        None => Ok(None),
    }
}
