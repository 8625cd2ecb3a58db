//! A channel's hot state — the best promise and the stream position — in a compact binary
//! record, written on every payment. The full JSON channel record is written only when the
//! terms or the status change, so a payment writes ~200 bytes instead of a whole channel.
//!
//! ```text
//! progress  = version (1) ‖ promise? ‖ stream?
//! promise?  = 0 | 1 ‖ len (u16 BE) ‖ canonical promise body ‖ signature (64)
//! receiver stream? = 0 | 1 ‖ ticks (u64 BE) ‖ last preimage (32)
//! sender stream?   = 0 | 1 ‖ seed (32) ‖ ticks sent (u64 BE)
//! ```
//! Stream terms and base amount are not repeated: they are in the promise that opened the stream.

use machinomy_core::channel::SenderStream;
use machinomy_core::{Promise, PromiseBody, ReceiverChannel, SenderChannel, Signature, StreamVerifier};

const VERSION: u8 = 1;

pub(super) fn encode_receiver(channel: &ReceiverChannel) -> Vec<u8> {
    let mut out = vec![VERSION];
    put_promise(&mut out, channel.best.as_ref());
    match &channel.stream {
        Some(stream) => {
            out.push(1);
            out.extend_from_slice(&stream.ticks.to_be_bytes());
            out.extend_from_slice(&stream.last);
        }
        None => out.push(0),
    }
    out
}

pub(super) fn encode_sender(channel: &SenderChannel) -> Vec<u8> {
    let mut out = vec![VERSION];
    put_promise(&mut out, channel.latest.as_ref());
    match &channel.stream {
        Some(stream) => {
            out.push(1);
            out.extend_from_slice(&stream.seed);
            out.extend_from_slice(&stream.ticks_sent.to_be_bytes());
        }
        None => out.push(0),
    }
    out
}

/// Overlays stored progress on a receiver channel.
pub(super) fn apply_receiver(channel: &mut ReceiverChannel, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(bytes)?;
    let best = r.promise()?;
    let stream = match (r.flag()?, &best) {
        (false, _) => None,
        (true, Some(promise)) => {
            let terms = promise.body.stream.ok_or("stream progress without a stream promise")?;
            let mut verifier = StreamVerifier::new(promise.body.amount, terms);
            verifier.ticks = r.u64()?;
            verifier.last = r.array()?;
            Some(verifier)
        }
        (true, None) => return Err("stream progress without a promise".to_owned()),
    };
    r.end()?;
    channel.best = best;
    channel.stream = stream;
    Ok(())
}

/// Overlays stored progress on a sender channel.
pub(super) fn apply_sender(channel: &mut SenderChannel, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(bytes)?;
    let latest = r.promise()?;
    let stream = match (r.flag()?, &latest) {
        (false, _) => None,
        (true, Some(promise)) => {
            let terms = promise.body.stream.ok_or("stream progress without a stream promise")?;
            let seed = r.array()?;
            Some(SenderStream::restore(seed, terms, promise.body.amount, r.u64()?))
        }
        (true, None) => return Err("stream progress without a promise".to_owned()),
    };
    r.end()?;
    channel.latest = latest;
    channel.stream = stream;
    Ok(())
}

fn put_promise(out: &mut Vec<u8>, promise: Option<&Promise>) {
    match promise {
        Some(promise) => {
            let body = promise.body.canonical_bytes();
            out.push(1);
            // Canonical bodies are under 200 bytes (the ledger id is at most 64).
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(&promise.signature.0);
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, String> {
        let mut r = Reader(bytes);
        match r.take(1)? {
            [VERSION] => Ok(r),
            other => Err(format!("unknown progress version {other:?}")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("progress record ends early".to_owned());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(format!("bad flag {other}")),
        }
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn promise(&mut self) -> Result<Option<Promise>, String> {
        if !self.flag()? {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes(self.array()?));
        let body = PromiseBody::from_canonical_bytes(self.take(len)?).map_err(|e| e.to_string())?;
        Ok(Some(Promise { body, signature: Signature(self.array()?) }))
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() { Ok(()) } else { Err(format!("{} bytes after the progress record", self.0.len())) }
    }
}
