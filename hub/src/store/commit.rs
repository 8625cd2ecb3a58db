//! Group commit: one thread owns the write-ahead log and every write to sled. Callers encode
//! their records on their own threads and queue the batch, then queue a reply slot and wait; the
//! thread appends the batches to the log and applies them to sled in order, syncs the log once,
//! and answers every waiting slot, so N concurrent accepts cost one `fdatasync` instead of N.
//!
//! A sync costs a fixed slice of kernel time whatever it carries, so when writers
//! are concurrent (the last batch had more than one) the thread lingers to let the batch fill:
//! it keeps collecting while requests keep arriving less than [`ARRIVAL_GAP`] apart, for at most
//! [`MAX_LINGER`]. A lone writer is flushed at once. (PostgreSQL's `commit_delay` is the same idea.)

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;
use super::wal::{Entry, Wal};

/// Once the log holds this much, sled is flushed and the log emptied.
const CHECKPOINT_BYTES: u64 = 16 << 20;

/// How many commits may wait for the flush thread.
const QUEUE: usize = 4096;
/// While requests arrive closer together than this, the batch is still filling.
const ARRIVAL_GAP: Duration = Duration::from_micros(60);
/// The most a commit waits for others to join its flush.
const MAX_LINGER: Duration = Duration::from_millis(1);

type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Request {
    Write(Vec<Entry>),
    Commit(Reply),
    Close(Reply),
}

#[derive(Debug)]
pub(super) struct GroupCommit {
    requests: SyncSender<Request>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    pub(super) fn start(db: sled::Db, books: sled::Tree, wal: Wal) -> std::io::Result<GroupCommit> {
        let (requests, rx) = sync_channel(QUEUE);
        let thread =
            std::thread::Builder::new().name("store-commit".to_owned()).spawn(move || run(&db, &books, wal, &rx))?;
        Ok(GroupCommit { requests, thread: std::sync::Mutex::new(Some(thread)) })
    }

    /// Queues a batch; it is applied before any commit queued after it. When the queue is full
    /// this waits for room: that is the store's back-pressure.
    pub(super) fn write(&self, batch: Vec<Entry>) -> Result<(), StoreError> {
        match self.requests.try_send(Request::Write(batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(TrySendError::Full(request)) => self.requests.send(request).map_err(|_| StoreError::Closed),
        }
    }

    async fn send(&self, request: Request) -> Result<(), StoreError> {
        match self.requests.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            // The queue is bounded; when it is full, wait for room off the async threads.
            Err(TrySendError::Full(request)) => {
                let requests = self.requests.clone();
                tokio::task::spawn_blocking(move || requests.send(request))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(|_| StoreError::Closed)
            }
        }
    }

    pub(super) async fn commit(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Commit(reply)).await?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn close(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        if self.send(Request::Close(reply)).await.is_err() {
            return Ok(()); // already closed
        }
        let result = done.await.map_err(|_| StoreError::Closed)?;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            // The thread has answered and is returning; joining cannot block for long.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// Applies one batch to sled. Plain inserts, not `sled::Batch`: sled forces I/O for every
/// batch, and atomicity comes from the log, which holds the whole batch before any of it
/// reaches sled (a crash mid-way is completed by the replay).
pub(super) fn apply(books: &sled::Tree, batch: &[Entry]) -> sled::Result<()> {
    for (key, value) in batch {
        // Plugin storage is written to its tree when the plugin writes; the log keeps it
        // only for a replay.
        if key.first() != Some(&super::PLUGIN_KV_LOGGED) {
            apply_entry(books, key, value)?;
        }
    }
    Ok(())
}

/// One entry of the books: an empty value deletes its key.
fn apply_entry(books: &sled::Tree, key: &[u8], value: &[u8]) -> sled::Result<()> {
    if value.is_empty() {
        books.remove(key)?;
    } else {
        books.insert(key, value)?;
    }
    Ok(())
}

/// Applies one batch found in the log at open: the books' entries, and plugin-storage writes
/// that may not have reached their tree before a crash.
pub(super) fn replay(books: &sled::Tree, plugin_kv: &sled::Tree, batch: &[Entry]) -> sled::Result<()> {
    for (key, value) in batch {
        match key.split_first() {
            Some((&super::PLUGIN_KV_LOGGED, id)) => match value.split_first() {
                Some((1, stored)) => {
                    plugin_kv.insert(id, stored)?;
                }
                _ => {
                    plugin_kv.remove(id)?;
                }
            },
            _ => apply_entry(books, key, value)?,
        }
    }
    Ok(())
}

/// Flushes sled, then empties the log it no longer needs.
pub(super) fn checkpoint(db: &sled::Db, wal: &mut Wal) -> Result<(), String> {
    db.flush().map_err(|e| e.to_string())?;
    wal.truncate().map_err(|e| format!("{}: {e}", wal.path().display()))
}

fn run(db: &sled::Db, books: &sled::Tree, mut wal: Wal, rx: &Receiver<Request>) {
    let mut waiting: Vec<Reply> = Vec::new();
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut close = None;
        let mut batches: Vec<Vec<Entry>> = Vec::new();
        let mut take = |request| match request {
            Request::Write(batch) => {
                wal.append(&batch);
                batches.push(batch);
            }
            Request::Commit(reply) => waiting.push(reply),
            Request::Close(reply) => close = Some(reply),
        };
        take(first);
        while let Ok(request) = rx.try_recv() {
            take(request);
        }
        if last_batch > 1 {
            let deadline = Instant::now() + MAX_LINGER;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left.min(ARRIVAL_GAP)) {
                    Ok(request) => take(request),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
                if left.is_zero() {
                    break;
                }
            }
        }
        last_batch = waiting.len();
        // Durable first, then visible: sled only ever holds what the log already has.
        let mut result = wal.sync().map_err(|e| format!("{}: {e}", wal.path().display()));
        if result.is_ok() {
            for batch in &batches {
                if let Err(e) = apply(books, batch) {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        if result.is_ok() && wal.len() > CHECKPOINT_BYTES {
            result = checkpoint(db, &mut wal);
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(result.clone().map_err(StoreError::Io));
        }
        if let Some(reply) = close {
            // Answer anything that raced in after the close, then stop.
            let last = checkpoint(db, &mut wal);
            while let Ok(request) = rx.try_recv() {
                if let Request::Commit(r) | Request::Close(r) = request {
                    let _ = r.send(Err(StoreError::Closed));
                }
            }
            let _ = reply.send(result.and(last).map_err(StoreError::Io));
            return;
        }
    }
    // Every handle was dropped without a close: make what is there durable.
    let _ = checkpoint(db, &mut wal);
}
