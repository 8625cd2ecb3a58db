//! Promises: the sender's signature over a cumulative amount on one channel.
//!
//! The signed bytes are canonical and domain-separated, so a signature made for a promise can
//! never be replayed as anything else, nor on another ledger or channel.

use ed25519_dalek::{Signature as DalekSignature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::ids::{ChannelId, LedgerId, PublicKey};

/// Prefixes every signed promise; the trailing version lets the encoding change safely.
pub const PROMISE_DOMAIN: &[u8] = b"machinomy-hub/promise/v1\0";

/// The most ticks one stream may commit to (the sender keeps the whole hash chain).
pub const MAX_STREAM_TICKS: u64 = 1 << 22;

/// What a stream promise commits to: each tick reveals the next preimage of `root`'s hash chain
/// and is worth `price_per_tick`, up to `max_ticks` ticks on top of the promise's amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTerms {
    #[serde(with = "hex_32")]
    pub root: [u8; 32],
    pub price_per_tick: Amount,
    pub max_ticks: u64,
}

impl StreamTerms {
    /// The amount of the promise plus every tick: the most this promise can ever be worth.
    pub fn ceiling(&self, base: Amount) -> Result<Amount, crate::amount::AmountError> {
        base.checked_add(self.price_per_tick.checked_mul(u128::from(self.max_ticks))?)
    }
}

/// The part of a promise that is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseBody {
    pub ledger: LedgerId,
    pub channel: ChannelId,
    /// Cumulative: everything paid on the channel so far, not the increment.
    pub amount: Amount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamTerms>,
}

/// Why bytes are not a canonical promise body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("promise bytes do not start with the promise domain tag")]
    WrongDomain,
    #[error("promise bytes end early")]
    Truncated,
    #[error("promise bytes have {0} bytes after the end")]
    TrailingBytes(usize),
    #[error("promise bytes carry an invalid ledger id")]
    BadLedger,
    #[error("promise bytes carry an unknown stream flag {0}")]
    BadStreamFlag(u8),
}

impl PromiseBody {
    /// The canonical byte string that is signed:
    /// `domain ‖ len(ledger) as u8 ‖ ledger ‖ channel (32) ‖ amount (u128 BE) ‖ stream flag (u8)
    /// [‖ root (32) ‖ price per tick (u128 BE) ‖ max ticks (u64 BE)]`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let ledger = self.ledger.as_str().as_bytes();
        let mut out = Vec::with_capacity(PROMISE_DOMAIN.len() + 1 + ledger.len() + 32 + 16 + 1 + 56);
        out.extend_from_slice(PROMISE_DOMAIN);
        // LedgerId is at most 64 bytes, so its length fits a byte.
        out.push(ledger.len() as u8);
        out.extend_from_slice(ledger);
        out.extend_from_slice(self.channel.as_bytes());
        out.extend_from_slice(&self.amount.base_units().to_be_bytes());
        match &self.stream {
            None => out.push(0),
            Some(stream) => {
                out.push(1);
                out.extend_from_slice(&stream.root);
                out.extend_from_slice(&stream.price_per_tick.base_units().to_be_bytes());
                out.extend_from_slice(&stream.max_ticks.to_be_bytes());
            }
        }
        out
    }

    /// Reads a canonical byte string back; the inverse of [`PromiseBody::canonical_bytes`].
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<PromiseBody, DecodeError> {
        let mut reader = Reader(bytes);
        if reader.take(PROMISE_DOMAIN.len())? != PROMISE_DOMAIN {
            return Err(DecodeError::WrongDomain);
        }
        let ledger_len = usize::from(reader.byte()?);
        let ledger = std::str::from_utf8(reader.take(ledger_len)?).map_err(|_| DecodeError::BadLedger)?;
        let ledger = LedgerId::new(ledger).map_err(|_| DecodeError::BadLedger)?;
        let channel = ChannelId::from_bytes(reader.array()?);
        let amount = Amount::from_base_units(u128::from_be_bytes(reader.array()?));
        let stream = match reader.byte()? {
            0 => None,
            1 => Some(StreamTerms {
                root: reader.array()?,
                price_per_tick: Amount::from_base_units(u128::from_be_bytes(reader.array()?)),
                max_ticks: u64::from_be_bytes(reader.array()?),
            }),
            flag => return Err(DecodeError::BadStreamFlag(flag)),
        };
        if !reader.0.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.0.len()));
        }
        Ok(PromiseBody { ledger, channel, amount, stream })
    }

    pub fn sign(self, key: &SigningKey) -> Promise {
        let signature = key.sign(&self.canonical_bytes());
        Promise { body: self, signature: Signature(signature.to_bytes()) }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(text.as_ref(), &mut bytes)
            .map_err(|_| serde::de::Error::custom("a signature must be 128 hex characters"))?;
        Ok(Signature(bytes))
    }
}

/// A signed promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub body: PromiseBody,
    pub signature: Signature,
}

/// The signature does not verify under the channel's sender key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("promise signature does not verify under the channel sender's key")]
pub struct BadSignature;

impl Promise {
    /// Checks the signature against `sender` (strict verification: no malleable signatures).
    pub fn verify(&self, sender: &PublicKey) -> Result<(), BadSignature> {
        let key = sender.verifying_key().map_err(|_| BadSignature)?;
        self.verify_with(&key)
    }

    /// As [`Promise::verify`], with the sender's key already decoded (decoding a key costs
    /// about a third of a verification, so channels keep theirs).
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), BadSignature> {
        let signature = DalekSignature::from_bytes(&self.signature.0);
        key.verify_strict(&self.body.canonical_bytes(), &signature).map_err(|_| BadSignature)
    }
}

pub(crate) mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.as_ref(), &mut bytes)
            .map_err(|_| serde::de::Error::custom("expected 64 hex characters"))?;
        Ok(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public(key: &SigningKey) -> PublicKey {
        PublicKey::from(key.verifying_key())
    }

    fn plain() -> PromiseBody {
        PromiseBody {
            ledger: LedgerId::credit(),
            channel: ChannelId::from_bytes([7; 32]),
            amount: Amount::from_base_units(1_500),
            stream: None,
        }
    }

    fn streamed() -> PromiseBody {
        PromiseBody {
            stream: Some(StreamTerms { root: [3; 32], price_per_tick: Amount::from_base_units(10), max_ticks: 1_000 }),
            ..plain()
        }
    }

    #[test]
    fn canonical_bytes_round_trip_without_a_stream() {
        let body = plain();
        let bytes = body.canonical_bytes();
        assert!(bytes.starts_with(PROMISE_DOMAIN));
        assert_eq!(bytes.len(), PROMISE_DOMAIN.len() + 1 + "credit".len() + 32 + 16 + 1);
        assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Ok(body));
    }

    #[test]
    fn canonical_bytes_round_trip_with_a_stream() {
        let body = streamed();
        let bytes = body.canonical_bytes();
        assert_eq!(bytes.len(), PROMISE_DOMAIN.len() + 1 + "credit".len() + 32 + 16 + 1 + 32 + 16 + 8);
        assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Ok(body));
    }

    #[test]
    fn canonical_bytes_have_the_documented_layout() {
        let bytes = plain().canonical_bytes();
        let rest = &bytes[PROMISE_DOMAIN.len()..];
        assert_eq!(rest[0], 6);
        assert_eq!(&rest[1..7], b"credit");
        assert_eq!(&rest[7..39], &[7; 32]);
        assert_eq!(&rest[39..55], &1_500u128.to_be_bytes());
        assert_eq!(rest[55], 0);
    }

    #[test]
    fn decoding_refuses_another_domain() {
        let mut bytes = plain().canonical_bytes();
        bytes[0] ^= 1;
        assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Err(DecodeError::WrongDomain));
        let mut v2 = plain().canonical_bytes();
        let version = PROMISE_DOMAIN.len() - 2;
        v2[version] = b'2';
        assert_eq!(PromiseBody::from_canonical_bytes(&v2), Err(DecodeError::WrongDomain));
    }

    #[test]
    fn decoding_refuses_every_truncation() {
        for body in [plain(), streamed()] {
            let bytes = body.canonical_bytes();
            for len in 0..bytes.len() {
                assert_eq!(
                    PromiseBody::from_canonical_bytes(&bytes[..len]),
                    Err(DecodeError::Truncated),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn decoding_refuses_trailing_bytes() {
        let mut bytes = streamed().canonical_bytes();
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Err(DecodeError::TrailingBytes(3)));
    }

    #[test]
    fn decoding_refuses_an_unknown_stream_flag() {
        let mut bytes = plain().canonical_bytes();
        *bytes.last_mut().unwrap() = 2;
        assert_eq!(PromiseBody::from_canonical_bytes(&bytes), Err(DecodeError::BadStreamFlag(2)));
    }

    #[test]
    fn decoding_refuses_an_invalid_ledger() {
        let at = PROMISE_DOMAIN.len();
        // Uppercase is not a ledger id.
        let mut upper = plain().canonical_bytes();
        upper[at + 1] = b'C';
        assert_eq!(PromiseBody::from_canonical_bytes(&upper), Err(DecodeError::BadLedger));
        // Not UTF-8.
        let mut binary = plain().canonical_bytes();
        binary[at + 1] = 0xff;
        assert_eq!(PromiseBody::from_canonical_bytes(&binary), Err(DecodeError::BadLedger));
        // Empty ledger.
        let mut empty = PROMISE_DOMAIN.to_vec();
        empty.push(0);
        empty.extend_from_slice(&[7; 32]);
        empty.extend_from_slice(&1u128.to_be_bytes());
        empty.push(0);
        assert_eq!(PromiseBody::from_canonical_bytes(&empty), Err(DecodeError::BadLedger));
    }

    #[test]
    fn a_signed_promise_verifies_under_its_signer_only() {
        let alice = key(1);
        let promise = streamed().sign(&alice);
        assert_eq!(promise.verify(&public(&alice)), Ok(()));
        assert_eq!(promise.verify(&public(&key(2))), Err(BadSignature));
    }

    #[test]
    fn the_signature_binds_every_field() {
        let alice = key(1);
        let sender = public(&alice);
        let original = streamed().sign(&alice);
        let tamper: [fn(&mut PromiseBody); 6] = [
            |b| b.ledger = LedgerId::new("ethereum:1:0xabc").unwrap(),
            |b| b.channel = ChannelId::from_bytes([8; 32]),
            |b| b.amount = Amount::from_base_units(1_501),
            |b| b.stream = None,
            |b| b.stream.as_mut().unwrap().price_per_tick = Amount::from_base_units(11),
            |b| b.stream.as_mut().unwrap().max_ticks = 1_001,
        ];
        for (i, change) in tamper.iter().enumerate() {
            let mut forged = original.clone();
            change(&mut forged.body);
            assert_ne!(forged.body, original.body);
            assert_eq!(forged.verify(&sender), Err(BadSignature), "tamper {i}");
        }
        let mut new_root = original.clone();
        new_root.body.stream.as_mut().unwrap().root = [4; 32];
        assert_eq!(new_root.verify(&sender), Err(BadSignature));
        let mut flipped = original.clone();
        flipped.signature.0[0] ^= 1;
        assert_eq!(flipped.verify(&sender), Err(BadSignature));
        // Adding a stream to a plain promise breaks it too.
        let plain_signed = plain().sign(&alice);
        let mut added = plain_signed.clone();
        added.body.stream = streamed().stream;
        assert_eq!(added.verify(&sender), Err(BadSignature));
    }

    #[test]
    fn a_signature_over_the_bytes_without_the_domain_tag_does_not_verify() {
        let alice = key(1);
        let body = plain();
        let bytes = body.canonical_bytes();
        let undomained = &bytes[PROMISE_DOMAIN.len()..];
        let signature = alice.sign(undomained);
        // It is a valid signature of something...
        assert!(alice.verifying_key().verify(undomained, &signature).is_ok());
        // ...but not of a promise.
        let promise = Promise { body, signature: Signature(signature.to_bytes()) };
        assert_eq!(promise.verify(&public(&alice)), Err(BadSignature));
    }

    #[test]
    fn a_sender_key_that_is_not_a_point_verifies_nothing() {
        let alice = key(1);
        let promise = plain().sign(&alice);
        let mut bytes = [0u8; 32];
        let not_a_point = (0u8..=255)
            .map(|i| {
                bytes[0] = i;
                bytes[1] = 1;
                PublicKey::from_bytes(bytes)
            })
            .find(|k| k.verifying_key().is_err())
            .unwrap();
        assert_eq!(promise.verify(&not_a_point), Err(BadSignature));
    }

    #[test]
    fn promises_round_trip_through_json() {
        let promise = streamed().sign(&key(1));
        let json = serde_json::to_string(&promise).unwrap();
        assert!(json.contains("\"amount\":\"1500\""), "{json}");
        assert!(json.contains(&format!("\"root\":\"{}\"", "03".repeat(32))), "{json}");
        let back: Promise = serde_json::from_str(&json).unwrap();
        assert_eq!(back, promise);
        let plain_json = serde_json::to_string(&plain().sign(&key(1))).unwrap();
        assert!(!plain_json.contains("stream"), "{plain_json}");
    }

    #[test]
    fn json_refuses_a_short_signature() {
        let mut json: serde_json::Value = serde_json::to_value(plain().sign(&key(1))).unwrap();
        json["signature"] = serde_json::Value::String("ab".repeat(63));
        assert!(serde_json::from_value::<Promise>(json).is_err());
    }

    #[test]
    fn the_ceiling_is_the_amount_plus_every_tick() {
        let terms = streamed().stream.unwrap();
        assert_eq!(terms.ceiling(Amount::from_base_units(1_500)), Ok(Amount::from_base_units(1_500 + 10 * 1_000)));
        let huge = StreamTerms { price_per_tick: Amount::MAX, ..terms };
        assert_eq!(huge.ceiling(Amount::ZERO), Err(crate::amount::AmountError::Overflow));
    }
}
