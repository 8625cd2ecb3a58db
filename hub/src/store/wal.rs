//! The write-ahead log that makes commits durable.
//!
//! sled's own flush costs a page-rewrite storm per call and syncs with `sync_file_range`, which
//! does not reach the device's cache. So the commit thread appends every batch here and makes a
//! commit durable with one `write` + `fdatasync` of this file; sled gets the same batches in
//! memory and persists them in the background. After sled has flushed, the log is truncated
//! (a checkpoint). Opening the store replays whatever the log still holds: batches carry whole
//! values, so replaying one sled already has is harmless.
//!
//! Record: `len (u32 BE) ‖ checksum (first 8 bytes of BLAKE3 of the payload) ‖ payload`;
//! payload: `count (u32 BE)` then per entry `key len (u32 BE) ‖ key ‖ value len (u32 BE) ‖ value`.
//! A torn record at the end (a crash mid-write) fails its length or checksum and ends the replay:
//! it was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One key-value write; a batch is a list of them applied atomically.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

const HEADER: usize = 4 + 8;

#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Appended but not yet written to the file.
    pending: Vec<u8>,
    /// Bytes in the file.
    len: u64,
}

impl Wal {
    /// Opens (or creates) the log and returns the batches it holds, oldest first.
    pub(super) fn open(path: &Path) -> std::io::Result<(Wal, Vec<Vec<Entry>>)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let batches = decode_all(&bytes);
        Ok((Wal { file, path: path.to_owned(), pending: Vec::new(), len: bytes.len() as u64 }, batches))
    }

    pub(super) fn append(&mut self, batch: &[Entry]) {
        let mut payload = Vec::with_capacity(4 + batch.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
        put_u32(&mut payload, batch.len());
        for (key, value) in batch {
            put_u32(&mut payload, key.len());
            payload.extend_from_slice(key);
            put_u32(&mut payload, value.len());
            payload.extend_from_slice(value);
        }
        put_u32(&mut self.pending, payload.len());
        self.pending.extend(blake3::hash(&payload).as_bytes().iter().take(8));
        self.pending.extend_from_slice(&payload);
    }

    /// Writes what was appended and waits until it is on the device.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.len += self.pending.len() as u64;
            self.pending.clear();
        }
        self.file.sync_data()
    }

    pub(super) fn len(&self) -> u64 {
        self.len + self.pending.len() as u64
    }

    /// Empties the log; call only once everything in it is durable elsewhere (sled flushed).
    pub(super) fn truncate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.len = 0;
        self.file.sync_all()
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Keys and values are hub records of a few hundred bytes; u32 is far beyond them.
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn decode_all(mut bytes: &[u8]) -> Vec<Vec<Entry>> {
    let mut batches = Vec::new();
    while let Some((batch, rest)) = decode_one(bytes) {
        batches.push(batch);
        bytes = rest;
    }
    batches
}

fn decode_one(bytes: &[u8]) -> Option<(Vec<Entry>, &[u8])> {
    let len = usize::try_from(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    let checksum = bytes.get(4..HEADER)?;
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if &blake3::hash(payload).as_bytes()[..8] != checksum {
        return None;
    }
    let mut r = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (r.get(..n)?, r.get(n..)?);
        r = tail;
        Some(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut batch = Vec::new();
    for _ in 0..count {
        let key_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let key = take(key_len)?.to_vec();
        let value_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let value = take(value_len)?.to_vec();
        batch.push((key, value));
    }
    Some((batch, bytes.get(HEADER + len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Vec<Entry> {
        vec![(vec![b'k', n], vec![n; 100]), (vec![b'j', n], vec![])]
    }

    #[test]
    fn synced_batches_are_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, old) = Wal::open(&path).unwrap();
        assert!(old.is_empty());
        for n in 0..3 {
            wal.append(&batch(n));
        }
        wal.sync().unwrap();
        drop(wal);
        let (_, batches) = Wal::open(&path).unwrap();
        assert_eq!(batches, vec![batch(0), batch(1), batch(2)]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&batch(1));
        wal.append(&batch(2));
        wal.sync().unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![batch(1)]);
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![batch(1)]);
    }

    #[test]
    fn truncate_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&batch(1));
        wal.truncate().unwrap();
        wal.append(&batch(2));
        wal.sync().unwrap();
        assert_eq!(Wal::open(&path).unwrap().1, vec![batch(2)]);
    }
}
