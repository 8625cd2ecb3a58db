//! The device registry: which devices are paired, how they prove who they are (broker password,
//! spend-signing key), and what each last reported. Records live in the store; what a device
//! reports (online, last seen, state) is kept in memory and re-learned from retained messages.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;
use machinomy_core::{DeviceId, Timestamp};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::BridgeError;
use crate::store::{DeviceKind, DeviceRecord, Store, Write};

/// The most devices a hub pairs, so a script gone wrong cannot fill the store.
pub const MAX_DEVICES: usize = 10_000;

/// Events kept per device for the owner to see; older ones are dropped.
pub const RECENT_EVENTS: usize = 10;
/// How much of an event's payload is kept for the owner, in bytes of JSON text.
pub const EVENT_TEXT_LIMIT: usize = 256;

/// A device and what it last reported.
#[derive(Clone, Debug)]
pub struct Device {
    pub record: DeviceRecord,
    pub online: bool,
    pub last_seen: Option<Timestamp>,
    pub state: Map<String, Value>,
    /// Its latest events, oldest first (at most [`RECENT_EVENTS`]), kept in memory only.
    pub events: VecDeque<RecentEvent>,
}

impl Device {
    fn new(record: DeviceRecord) -> Device {
        Device { record, online: false, last_seen: None, state: Map::new(), events: VecDeque::new() }
    }
}

/// An event a device sent, as the owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentEvent {
    pub at: Timestamp,
    pub name: String,
    /// The payload as JSON text, cut to [`EVENT_TEXT_LIMIT`] bytes (ending in `…` when cut).
    pub payload: String,
}

/// `text` cut to at most `limit` bytes on a character boundary, marked when cut.
fn cut(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let end = (0..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
        text.push('…');
    }
    text
}

#[derive(Debug)]
struct Entry {
    device: Device,
    /// The spend key, parsed once.
    key: Option<VerifyingKey>,
}

#[derive(Debug)]
pub struct Registry {
    store: Store,
    devices: RwLock<HashMap<DeviceId, Entry>>,
    /// Serialises pairing and unpairing, so the store and the map never disagree.
    changes: tokio::sync::Mutex<()>,
}

/// A new device's broker password: 128 random bits, shown once.
pub fn new_password() -> Result<String, BridgeError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| BridgeError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Hashes a broker password for storage as `blake3$<salt>$<hash>`. The passwords are random
/// 128-bit secrets the hub generates, so a fast keyed hash is as strong as a slow one here,
/// and the broker can check one on every connect without a stall.
pub fn hash_password(password: &str) -> Result<String, BridgeError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| BridgeError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("blake3${}${}", hex::encode(salt), hex::encode(salted(&salt, password))))
}

fn salted(salt: &[u8], password: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    *hasher.finalize().as_bytes()
}

fn password_matches(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("blake3"), Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (hex::decode(salt), hex::decode(hash)) else { return false };
    bool::from(salted(&salt, password).as_slice().ct_eq(&hash))
}

impl Registry {
    /// Loads the paired devices from the store.
    pub fn open(store: Store) -> Result<Registry, BridgeError> {
        let mut devices = HashMap::new();
        for record in store.devices()? {
            if record.removed_at.is_none() {
                let key = record.public_key.as_ref().and_then(|k| k.verifying_key().ok());
                let device = Device::new(record);
                devices.insert(device.record.id.clone(), Entry { device, key });
            }
        }
        Ok(Registry { store, devices: RwLock::new(devices), changes: tokio::sync::Mutex::new(()) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<DeviceId, Entry>> {
        // Nothing panics while holding the lock, so a poisoned one still holds consistent data.
        self.devices.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<DeviceId, Entry>> {
        self.devices.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pairs a device, durably. The id must be free (a removed device's id may be reused).
    pub async fn add(&self, record: DeviceRecord) -> Result<Device, BridgeError> {
        let key = match &record.public_key {
            Some(key) => Some(key.verifying_key().map_err(|_| BridgeError::BadKey)?),
            None => None,
        };
        let _change = self.changes.lock().await;
        {
            let devices = self.read();
            if devices.contains_key(&record.id) {
                return Err(BridgeError::Taken(record.id.clone()));
            }
            if devices.len() >= MAX_DEVICES {
                return Err(BridgeError::TooManyDevices);
            }
        }
        self.store.write(&[Write::Device(&record)])?;
        self.store.commit().await?;
        let device = Device::new(record);
        self.write().insert(device.record.id.clone(), Entry { device: device.clone(), key });
        Ok(device)
    }

    /// Unpairs a device, durably: its password and key stop working at once.
    pub async fn remove(&self, id: &DeviceId, now: Timestamp) -> Result<Device, BridgeError> {
        let _change = self.changes.lock().await;
        let mut device = self.get(id).ok_or_else(|| BridgeError::UnknownDevice(id.clone()))?;
        device.record.removed_at = Some(now);
        self.store.write(&[Write::Device(&device.record)])?;
        self.store.commit().await?;
        self.write().remove(id);
        Ok(device)
    }

    pub fn get(&self, id: &DeviceId) -> Option<Device> {
        self.read().get(id).map(|entry| entry.device.clone())
    }

    pub fn list(&self) -> Vec<Device> {
        let mut all: Vec<Device> = self.read().values().map(|e| e.device.clone()).collect();
        all.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        all
    }

    pub fn contains(&self, id: &DeviceId) -> bool {
        self.read().contains_key(id)
    }

    /// The key `id` signs spend requests with.
    pub fn spend_key(&self, id: &DeviceId) -> Option<VerifyingKey> {
        self.read().get(id).and_then(|entry| entry.key)
    }

    /// Whether `username`/`password` are a paired MQTT device's broker credentials.
    pub fn check_password(&self, username: &str, password: &str) -> bool {
        let Ok(id) = username.parse::<DeviceId>() else { return false };
        let devices = self.read();
        let Some(entry) = devices.get(&id) else { return false };
        match (&entry.device.record.kind, &entry.device.record.password_hash) {
            (DeviceKind::Mqtt, Some(hash)) => password_matches(hash, password),
            _ => false,
        }
    }

    /// The device Zigbee2MQTT calls `friendly_name`, if it is in the registry.
    pub fn by_friendly_name(&self, friendly_name: &str) -> Option<DeviceId> {
        self.read().values().find_map(|entry| match &entry.device.record.kind {
            DeviceKind::Zigbee2mqtt { friendly_name: f } if f == friendly_name => Some(entry.device.record.id.clone()),
            _ => None,
        })
    }

    /// Records that `id` was heard from; returns whether it is paired.
    pub fn seen(&self, id: &DeviceId, now: Timestamp) -> bool {
        match self.write().get_mut(id) {
            Some(entry) => {
                entry.device.last_seen = Some(now);
                true
            }
            None => false,
        }
    }

    /// Records an event `id` sent (and that it was heard from); returns whether it is paired.
    pub fn record_event(&self, id: &DeviceId, name: &str, payload: &Value, now: Timestamp) -> bool {
        let mut devices = self.write();
        let Some(entry) = devices.get_mut(id) else { return false };
        let device = &mut entry.device;
        device.last_seen = Some(now);
        if device.events.len() >= RECENT_EVENTS {
            device.events.pop_front();
        }
        device.events.push_back(RecentEvent {
            at: now,
            name: name.to_owned(),
            payload: cut(payload.to_string(), EVENT_TEXT_LIMIT),
        });
        true
    }

    /// Sets availability; returns the previous value, or `None` if `id` is not paired.
    pub fn set_online(&self, id: &DeviceId, online: bool, now: Timestamp) -> Option<bool> {
        let mut devices = self.write();
        let entry = devices.get_mut(id)?;
        let was = entry.device.online;
        entry.device.online = online;
        entry.device.last_seen = Some(now);
        Some(was)
    }

    /// Replaces the reported state (MQTT state is the whole object) or merges fields into it
    /// (BLE and Zigbee report what changed). Returns the state now held.
    pub fn set_state(
        &self,
        id: &DeviceId,
        fields: Map<String, Value>,
        merge: bool,
        now: Timestamp,
    ) -> Option<Map<String, Value>> {
        let mut devices = self.write();
        let entry = devices.get_mut(id)?;
        if merge {
            entry.device.state.extend(fields);
        } else {
            entry.device.state = fields;
        }
        entry.device.last_seen = Some(now);
        Some(entry.device.state.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_are_checked_against_their_salted_hash_only() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("blake3$") && !hash.contains("s3cret"));
        assert!(password_matches(&hash, "s3cret"));
        assert!(!password_matches(&hash, "s3cret "));
        assert!(!password_matches("blake3$zz$00", "s3cret"));
        assert!(!password_matches("plain", "plain"));
        assert_ne!(hash_password("s3cret").unwrap(), hash, "every hash has its own salt");
    }

    #[test]
    fn event_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short".to_owned(), 10), "short");
        assert_eq!(cut("abcdef".to_owned(), 3), "abc…");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(cut("aé".to_owned(), 2), "a…");
    }
}
