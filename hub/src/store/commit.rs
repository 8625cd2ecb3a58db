//! Group commit: one thread owns `fsync`. Callers queue a reply slot and wait; the thread takes
//! every waiting slot, flushes once, and answers them all, so N concurrent accepts cost one
//! flush instead of N.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// How many commits may wait for the flush thread before callers are slowed down.
const QUEUE: usize = 4096;

enum Request {
    Commit(oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

#[derive(Debug)]
pub(super) struct GroupCommit {
    requests: mpsc::Sender<Request>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    pub(super) fn start(db: sled::Db) -> std::io::Result<GroupCommit> {
        let (requests, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new().name("store-commit".to_owned()).spawn(move || run(db, rx))?;
        Ok(GroupCommit { requests, thread: std::sync::Mutex::new(Some(thread)) })
    }

    pub(super) async fn commit(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.requests.send(Request::Commit(reply)).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn close(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        if self.requests.send(Request::Close(reply)).await.is_err() {
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

fn run(db: sled::Db, mut rx: mpsc::Receiver<Request>) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut close = None;
        for request in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match request {
                Request::Commit(reply) => waiting.push(reply),
                Request::Close(reply) => close = Some(reply),
            }
        }
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for reply in waiting.drain(..) {
            let _ = reply.send(result.clone().map_err(StoreError::Io));
        }
        if let Some(reply) = close {
            rx.close();
            // Answer anything that raced in before the channel closed, then stop.
            let last = db.flush().map(|_| ()).map_err(|e| e.to_string());
            while let Ok(request) = rx.try_recv() {
                let (Request::Commit(r) | Request::Close(r)) = request;
                let _ = r.send(last.clone().map_err(StoreError::Io));
            }
            let _ = reply.send(result.and(last).map_err(StoreError::Io));
            return;
        }
    }
    // Every handle was dropped without a close: flush what is there.
    let _ = db.flush();
}
