//! The hub's books, in sled. The only module that knows sled.
//!
//! Everything lives in one tree so that a payment's channel state and its spending-ledger row
//! are written in one atomic batch. Keys are a one-byte kind and a sortable id:
//!
//! ```text
//! c <channel id>           ChannelRecord      (this hub's side of a channel: terms, status)
//! p <channel id>           progress           (best promise, stream position; see progress.rs)
//! b <subject>              Budget
//! a <approval id, u64 BE>  Approval
//! s <at, u64 BE><seq BE>   SpendingEntry      (time-ordered, so reports read a range)
//! l <channel id>           Settlement         (credit ledger: what to settle outside)
//! d <device id>            DeviceRecord       (the device registry; removed ones stay, marked)
//! q <device id> 0 <req id> SpendRef           (a device's spend request ids, so replays are answered, not redone)
//! ```
//! Writes become durable at the next group commit ([`Store::commit`]): callers write, then
//! await the commit before they tell anyone the write happened.

mod commit;
mod progress;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use machinomy_core::{Approval, Budget, ChannelId, ReceiverChannel, SenderChannel, SpendingEntry, Subject, Timestamp};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use commit::GroupCommit;

/// The on-disk format this code reads and writes.
pub const FORMAT_VERSION: &str = "1";
const FORMAT_KEY: &[u8] = b"format";
/// The write-ahead log, inside sled's directory so the store stays one directory.
const WAL_FILE: &str = "machinomy.wal";

const CHANNEL: u8 = b'c';
const PROGRESS: u8 = b'p';
const BUDGET: u8 = b'b';
const APPROVAL: u8 = b'a';
const SPENDING: u8 = b's';
const SETTLEMENT: u8 = b'l';
const DEVICE: u8 = b'd';
const SPEND_REF: u8 = b'q';
const PLUGIN: u8 = b'g';
const PLUGIN_LOG: u8 = b'o';
/// Marks a plugin-storage write in the write-ahead log; no key of the books starts with it.
pub(super) const PLUGIN_KV_LOGGED: u8 = 0xfe;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} cannot be opened: {message}")]
    Open { path: PathBuf, message: String },
    #[error("store {path} is in use by another hub process")]
    Locked { path: PathBuf },
    #[error("store {path} has format {found:?}; this hub reads format {FORMAT_VERSION}")]
    Format { path: PathBuf, found: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("store record {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error("store is closed")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// This hub's side of a channel, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
// Both sides are a few hundred bytes; boxing one would only add an allocation per payment.
#[allow(clippy::large_enum_variant)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChannelRecord {
    Sender(SenderChannel),
    Receiver(ReceiverChannel),
}

impl ChannelRecord {
    pub fn id(&self) -> ChannelId {
        self.terms().id
    }

    pub fn terms(&self) -> &machinomy_core::ChannelTerms {
        match self {
            ChannelRecord::Sender(c) => &c.terms,
            ChannelRecord::Receiver(c) => &c.terms,
        }
    }

    pub fn status(&self) -> machinomy_core::ChannelStatus {
        match self {
            ChannelRecord::Sender(c) => c.status,
            ChannelRecord::Receiver(c) => c.status,
        }
    }

    /// Everything paid on the channel: promised (sender) or accepted (receiver).
    pub fn total(&self) -> machinomy_core::Amount {
        match self {
            ChannelRecord::Sender(c) => c.promised(),
            ChannelRecord::Receiver(c) => c.accepted(),
        }
    }

    /// Closes this side; `settle_after` is when the ledger allows settling.
    pub fn close(
        &mut self,
        now: Timestamp,
        settle_after: Timestamp,
    ) -> Result<machinomy_core::Amount, machinomy_core::ChannelError> {
        let (amount, status) = match self {
            ChannelRecord::Sender(c) => (c.close(now)?, &mut c.status),
            ChannelRecord::Receiver(c) => (c.close(now)?, &mut c.status),
        };
        if let machinomy_core::ChannelStatus::Closing { settle_after: s, .. } = status {
            *s = settle_after;
        }
        Ok(amount)
    }

    pub fn settle(&mut self, now: Timestamp) -> Result<machinomy_core::Amount, machinomy_core::ChannelError> {
        match self {
            ChannelRecord::Sender(c) => c.settle(now),
            ChannelRecord::Receiver(c) => c.settle(now),
        }
    }
}

/// A closed credit channel's amount, owed outside the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub channel: ChannelId,
    pub sender: machinomy_core::PublicKey,
    pub receiver: machinomy_core::PublicKey,
    pub amount: machinomy_core::Amount,
    pub closed_at: Timestamp,
    pub settled_at: Option<Timestamp>,
}

/// One write in an atomic batch.
#[derive(Debug)]
pub enum Write<'a> {
    /// The whole channel: terms, status and progress.
    Channel(&'a ChannelRecord),
    /// Only what a payment changes (the promise, the stream position): the hot path.
    Progress(&'a ChannelRecord),
    Budget(&'a Budget),
    /// Deletes a subject's budget: it may spend nothing from then on.
    RemoveBudget(&'a Subject),
    Approval(&'a Approval),
    Spending(&'a SpendingEntry),
    Settlement(&'a Settlement),
    Device(&'a DeviceRecord),
    SpendRef(&'a SpendRef),
    Plugin(&'a PluginRecord),
    PluginLog(&'a PluginLogRecord),
}

/// What kind of appliance a registry device is, and how the hub reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceKind {
    /// Speaks the machinomy MQTT contract with its own broker credentials.
    Mqtt,
    /// A Bluetooth LE peripheral the hub connects to, read through a device profile.
    Ble { address: String, profile: String },
    /// A Zigbee device as Zigbee2MQTT publishes it (`zigbee2mqtt/<friendly name>`).
    Zigbee2mqtt { friendly_name: String },
}

/// A device in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: machinomy_core::DeviceId,
    pub name: String,
    #[serde(flatten)]
    pub kind: DeviceKind,
    /// The key that signs this device's spend requests; without one it cannot spend.
    pub public_key: Option<machinomy_core::PublicKey>,
    /// A keyed hash of the broker password the hub generated at pairing (never the password).
    pub password_hash: Option<String>,
    pub added_at: Timestamp,
    pub removed_at: Option<Timestamp>,
}

/// A device's spend request id and what the hub made of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRef {
    pub device: machinomy_core::DeviceId,
    pub request_id: String,
    pub approval: u64,
    /// A service call's request body, kept for when the owner approves a pending one.
    pub body: String,
}

/// An installed plugin: the manifest it runs with (its grants are what the owner approved),
/// the owner's config overrides, and its module by content hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: String,
    pub manifest: machinomy_core::plugin::Manifest,
    pub overrides: std::collections::BTreeMap<String, serde_json::Value>,
    /// BLAKE3 of the `.wasm`, hex; the file is `<plugins dir>/<name>/<hash>.wasm`.
    pub wasm_hash: String,
    /// BLAKE3 of the cached compiled code, checked before it is loaded.
    pub compiled_hash: Option<String>,
    pub state: machinomy_core::plugin::PluginState,
    /// A new version that asks for more than was approved, waiting for the owner.
    pub pending: Option<PendingUpgrade>,
    pub installed_at: Timestamp,
    pub updated_at: Timestamp,
    pub removed_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingUpgrade {
    pub manifest: machinomy_core::plugin::Manifest,
    pub wasm_hash: String,
    pub compiled_hash: String,
    pub asks_for: Vec<String>,
    /// Config overrides given with this upgrade, applied over the current ones on approval.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, serde_json::Value>,
}

/// What the owner reads of a plugin's recent runs (its last log lines and how many of its calls
/// were refused), saved when the hub stops so a restart does not wipe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLogRecord {
    pub name: String,
    pub refused: u64,
    pub lines: Vec<PluginLogLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLogLine {
    pub at_ms: u64,
    pub level: String,
    pub text: String,
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    books: sled::Tree,
    /// Plugins' key-value storage. Written here directly (a plugin reads its own writes at
    /// once) and logged in the write-ahead log for durability: the log's copy is only replayed
    /// on open, never applied at run time.
    plugin_kv: sled::Tree,
    commit: GroupCommit,
    /// Orders spending rows within one second. It starts at a random point in each process:
    /// sled's own id generator keeps its counter outside the write-ahead log, so after a crash
    /// it can hand out ids already used, and a row written then would replace an older one.
    spending_seq: std::sync::atomic::AtomicU64,
}

/// Creates an empty store at `path` and closes it (a first run does this, so that an empty
/// store directory later means lost books).
pub fn initialize(path: &Path) -> Result<(), StoreError> {
    let db = sled::Config::new()
        .path(path)
        .open()
        .map_err(|e| StoreError::Open { path: path.to_owned(), message: e.to_string() })?;
    db.insert(FORMAT_KEY, FORMAT_VERSION.as_bytes())?;
    db.flush()?;
    Ok(())
}

impl Store {
    /// Opens the store at `path`, creating it if the directory is empty.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // Commits are made durable by the write-ahead log; sled persists in the background.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked { path: path.to_owned() }
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    StoreError::Locked { path: path.to_owned() }
                }
                sled::Error::Corruption { .. } => StoreError::Open {
                    path: path.to_owned(),
                    message: "its data is corrupt; restore the store directory from a backup".to_owned(),
                },
                other => StoreError::Open { path: path.to_owned(), message: other.to_string() },
            })?;
        match db.get(FORMAT_KEY)? {
            Some(found) if found.as_ref() != FORMAT_VERSION.as_bytes() => {
                return Err(StoreError::Format {
                    path: path.to_owned(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            Some(_) => {}
            None => {
                db.insert(FORMAT_KEY, FORMAT_VERSION.as_bytes())?;
                db.flush()?;
            }
        }
        let books = db.open_tree("books")?;
        let plugin_kv = db.open_tree("plugin-kv")?;
        let wal_path = path.join(WAL_FILE);
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", wal_path.display()));
        let (mut wal, unapplied) = wal::Wal::open(&wal_path).map_err(io)?;
        if !unapplied.is_empty() {
            for batch in &unapplied {
                commit::replay(&books, &plugin_kv, batch)?;
            }
            commit::checkpoint(&db, &mut wal).map_err(StoreError::Io)?;
        }
        let commit = GroupCommit::start(db.clone(), books.clone(), wal).map_err(io)?;
        let mut start = [0u8; 8];
        getrandom::fill(&mut start).map_err(|e| StoreError::Io(format!("no randomness: {e}")))?;
        // The top bit stays clear so the counter never wraps in practice.
        let spending_seq = std::sync::atomic::AtomicU64::new(u64::from_be_bytes(start) >> 1);
        Ok(Store { inner: Arc::new(Inner { books, plugin_kv, commit, spending_seq }) })
    }

    /// Queues all records as one atomic batch. Not yet durable, nor visible to reads: await
    /// [`Store::commit`], which returns once this batch is applied and on disk.
    pub fn write(&self, writes: &[Write<'_>]) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(writes.len() + 1);
        for write in writes {
            let (key, value) = match write {
                Write::Channel(record) => {
                    batch.push((key(PROGRESS, record.id().as_bytes()), encode_progress(record)));
                    (key(CHANNEL, record.id().as_bytes()), encode(record)?)
                }
                Write::Progress(record) => (key(PROGRESS, record.id().as_bytes()), encode_progress(record)),
                Write::Budget(budget) => (key(BUDGET, budget.subject.to_string().as_bytes()), encode(budget)?),
                // No record encodes to nothing: an empty value is a deletion (see `commit::apply`).
                Write::RemoveBudget(subject) => (key(BUDGET, subject.to_string().as_bytes()), Vec::new()),
                Write::Approval(approval) => (key(APPROVAL, &approval.id.to_be_bytes()), encode(approval)?),
                Write::Spending(entry) => {
                    let seq = self.inner.spending_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut id = entry.at.secs().to_be_bytes().to_vec();
                    id.extend_from_slice(&seq.to_be_bytes());
                    (key(SPENDING, &id), encode(entry)?)
                }
                Write::Settlement(s) => (key(SETTLEMENT, s.channel.as_bytes()), encode(s)?),
                Write::Device(device) => (key(DEVICE, device.id.as_str().as_bytes()), encode(device)?),
                Write::SpendRef(r) => (spend_ref_key(&r.device, &r.request_id), encode(r)?),
                Write::Plugin(p) => (key(PLUGIN, p.name.as_bytes()), encode(p)?),
                Write::PluginLog(log) => (key(PLUGIN_LOG, log.name.as_bytes()), encode(log)?),
            };
            batch.push((key, value));
        }
        self.inner.commit.write(batch)
    }

    /// Waits until every write made before this call is on disk (fsynced). Concurrent callers
    /// share one flush.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.inner.commit.commit().await
    }

    /// Flushes and stops the group-commit thread; later commits fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.commit.close().await
    }

    pub fn channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        self.scan(CHANNEL)?.into_iter().map(|record| self.with_progress(record)).collect()
    }

    pub fn channel(&self, id: &ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        self.get(&key(CHANNEL, id.as_bytes()))?.map(|record| self.with_progress(record)).transpose()
    }

    fn with_progress(&self, mut record: ChannelRecord) -> Result<ChannelRecord, StoreError> {
        let progress_key = key(PROGRESS, record.id().as_bytes());
        let Some(bytes) = self.inner.books.get(&progress_key)? else { return Ok(record) };
        let applied = match &mut record {
            ChannelRecord::Sender(c) => progress::apply_sender(c, &bytes),
            ChannelRecord::Receiver(c) => progress::apply_receiver(c, &bytes),
        };
        applied.map_err(|message| corrupt(&progress_key, &message))?;
        Ok(record)
    }

    pub fn budgets(&self) -> Result<Vec<Budget>, StoreError> {
        self.scan(BUDGET)
    }

    pub fn budget(&self, subject: &Subject) -> Result<Option<Budget>, StoreError> {
        self.get(&key(BUDGET, subject.to_string().as_bytes()))
    }

    pub fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        self.scan(APPROVAL)
    }

    pub fn approval(&self, id: u64) -> Result<Option<Approval>, StoreError> {
        self.get(&key(APPROVAL, &id.to_be_bytes()))
    }

    /// Approvals whose request was made at or after `since`, oldest first. Ids grow with time,
    /// so this reads backwards from the newest and stops at the first older one.
    pub fn approvals_created_since(&self, since: Timestamp) -> Result<Vec<Approval>, StoreError> {
        let mut recent = Vec::new();
        for item in self.inner.books.scan_prefix([APPROVAL]).rev() {
            let approval: Approval = decode_item(item?)?;
            if approval.request.created_at < since {
                break;
            }
            recent.push(approval);
        }
        recent.reverse();
        Ok(recent)
    }

    /// The id the next approval should take.
    pub fn next_approval_id(&self) -> Result<u64, StoreError> {
        let last = self.inner.books.scan_prefix([APPROVAL]).keys().next_back().transpose()?;
        Ok(match last {
            Some(k) => {
                let mut id = [0u8; 8];
                id.copy_from_slice(k.get(1..9).ok_or_else(|| corrupt(&k, "short approval key"))?);
                u64::from_be_bytes(id).saturating_add(1)
            }
            None => 1,
        })
    }

    /// Spending entries with `from <= at < to`, oldest first.
    pub fn spending(&self, from: Option<Timestamp>, to: Option<Timestamp>) -> Result<Vec<SpendingEntry>, StoreError> {
        let start = key(SPENDING, &from.map_or(0, Timestamp::secs).to_be_bytes());
        let end = match to {
            Some(to) => key(SPENDING, &to.secs().to_be_bytes()),
            None => vec![SPENDING + 1],
        };
        self.inner.books.range(start..end).map(|item| decode_item(item?)).collect()
    }

    /// The newest `limit` spending entries, newest first: read from the end of the ledger, so
    /// the cost does not grow with its length.
    pub fn recent_spending(&self, limit: usize) -> Result<Vec<SpendingEntry>, StoreError> {
        self.inner
            .books
            .range(vec![SPENDING]..vec![SPENDING + 1])
            .rev()
            .take(limit)
            .map(|item| decode_item(item?))
            .collect()
    }

    pub fn settlements(&self) -> Result<Vec<Settlement>, StoreError> {
        self.scan(SETTLEMENT)
    }

    pub fn settlement(&self, channel: &ChannelId) -> Result<Option<Settlement>, StoreError> {
        self.get(&key(SETTLEMENT, channel.as_bytes()))
    }

    /// Every device ever registered, removed ones included.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.scan(DEVICE)
    }

    pub fn spend_ref(
        &self,
        device: &machinomy_core::DeviceId,
        request_id: &str,
    ) -> Result<Option<SpendRef>, StoreError> {
        self.get(&spend_ref_key(device, request_id))
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        self.scan(PLUGIN)
    }

    pub fn plugin_log(&self, name: &str) -> Result<Option<PluginLogRecord>, StoreError> {
        self.get(&key(PLUGIN_LOG, name.as_bytes()))
    }

    pub fn plugin_kv_get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.plugin_kv.get(plugin_kv_key(plugin, key))?.map(|v| v.to_vec()))
    }

    /// Stores a plugin's value: visible at once, durable at the next [`Store::commit`].
    pub fn plugin_kv_set(&self, plugin: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let id = plugin_kv_key(plugin, key);
        self.inner.plugin_kv.insert(&id, value)?;
        self.log_plugin_kv(id, Some(value))
    }

    /// Deletes a key; returns the length of the value it held. Durable at the next commit.
    pub fn plugin_kv_delete(&self, plugin: &str, key: &[u8]) -> Result<Option<usize>, StoreError> {
        let id = plugin_kv_key(plugin, key);
        let old = self.inner.plugin_kv.remove(&id)?.map(|v| v.len());
        self.log_plugin_kv(id, None)?;
        Ok(old)
    }

    /// Logs a plugin-storage write: `marker ‖ key` → `1 ‖ value`, or `0` for a deletion.
    fn log_plugin_kv(&self, id: Vec<u8>, value: Option<&[u8]>) -> Result<(), StoreError> {
        let mut logged = Vec::with_capacity(id.len() + 1);
        logged.push(PLUGIN_KV_LOGGED);
        logged.extend_from_slice(&id);
        let value = match value {
            Some(value) => [&[1u8][..], value].concat(),
            None => vec![0],
        };
        self.inner.commit.write(vec![(logged, value)])
    }

    /// Bytes of keys and values a plugin stores.
    pub fn plugin_kv_usage(&self, plugin: &str) -> Result<u64, StoreError> {
        let prefix = plugin_kv_key(plugin, b"");
        let mut used = 0u64;
        for item in self.inner.plugin_kv.scan_prefix(&prefix) {
            let (key, value) = item?;
            used += (key.len() - prefix.len() + value.len()) as u64;
        }
        Ok(used)
    }

    pub fn plugin_kv_clear(&self, plugin: &str) -> Result<(), StoreError> {
        let prefix = plugin_kv_key(plugin, b"");
        for item in self.inner.plugin_kv.scan_prefix(&prefix) {
            let (key, _) = item?;
            self.inner.plugin_kv.remove(&key)?;
            self.log_plugin_kv(key.to_vec(), None)?;
        }
        Ok(())
    }

    fn scan<T: DeserializeOwned>(&self, kind: u8) -> Result<Vec<T>, StoreError> {
        self.inner.books.scan_prefix([kind]).map(|item| decode_item(item?)).collect()
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.inner.books.get(key)? {
            Some(value) => Ok(Some(decode(key, &value)?)),
            None => Ok(None),
        }
    }
}

fn key(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(kind);
    key.extend_from_slice(id);
    key
}

fn spend_ref_key(device: &machinomy_core::DeviceId, request_id: &str) -> Vec<u8> {
    // Device ids never contain 0, so the separator keeps one device's ids out of another's.
    let mut id = device.as_str().as_bytes().to_vec();
    id.push(0);
    id.extend_from_slice(request_id.as_bytes());
    key(SPEND_REF, &id)
}

fn plugin_kv_key(plugin: &str, key: &[u8]) -> Vec<u8> {
    // Plugin names never contain 0, so one plugin's keys never reach into another's.
    let mut id = plugin.as_bytes().to_vec();
    id.push(0);
    id.extend_from_slice(key);
    id
}

fn encode_progress(record: &ChannelRecord) -> Vec<u8> {
    match record {
        ChannelRecord::Sender(c) => progress::encode_sender(c),
        ChannelRecord::Receiver(c) => progress::encode_receiver(c),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))
}

fn decode_item<T: DeserializeOwned>((key, value): (sled::IVec, sled::IVec)) -> Result<T, StoreError> {
    decode(&key, &value)
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, &e.to_string()))
}

fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt { key: hex::encode(key), message: message.to_owned() }
}

#[cfg(test)]
mod tests;
