//! The peer protocol's messages (DESIGN.md §5), as plain data. The net layer frames them as
//! CBOR over libp2p request-response; every field a peer controls is checked by the receiver.
//!
//! Signed artefacts — receipts and service offers — carry their own canonical, domain-separated
//! bytes, like promises, so a signature made for one can never pass as another.

use ed25519_dalek::{Signature as DalekSignature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::channel::ChannelTerms;
use crate::ids::{ChannelId, LedgerId, PublicKey};
use crate::promise::{BadSignature, Promise, Signature};
use crate::stream::{Tick, TickError};
use crate::time::Timestamp;

/// Prefix of every signed receipt.
pub const RECEIPT_DOMAIN: &[u8] = b"machinomy-hub/receipt/v1\0";
/// Prefix of every signed service offer.
pub const OFFER_DOMAIN: &[u8] = b"machinomy-hub/offer/v1\0";

/// Longest service name, memo, reference or description a peer may send.
pub const MAX_NAME: usize = 64;
pub const MAX_MEMO: usize = 256;
pub const MAX_DESCRIPTION: usize = 512;
/// Largest service request or result body.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a peer's request was refused; stable codes a peer can act on, plus a message for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    BadSignature,
    UnknownChannel,
    ChannelClosed,
    WrongChannel,
    WrongLedger,
    NotIncreasing,
    AboveCapacity,
    CreditLimit,
    UnknownService,
    /// The promise does not pay the service's price; `required` says how much.
    PaymentRequired,
    ServiceUnavailable,
    Denied,
    Internal,
    /// A stream tick whose preimage is not the next link of the stream's chain.
    WrongPreimage,
    /// A stream tick on a channel with no open stream, or past the stream's maximum.
    StreamEnded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    /// With `PaymentRequired`: the increment the call costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<Amount>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError { code, message: message.into(), required: None }
    }
}

impl From<&crate::channel::PromiseError> for ErrorCode {
    fn from(e: &crate::channel::PromiseError) -> Self {
        use crate::channel::PromiseError as P;
        match e {
            P::BadSignature(_) => ErrorCode::BadSignature,
            P::UnknownChannel(_) => ErrorCode::UnknownChannel,
            P::ChannelClosed(..) => ErrorCode::ChannelClosed,
            P::WrongChannel { .. } => ErrorCode::WrongChannel,
            P::WrongLedger { .. } => ErrorCode::WrongLedger,
            P::NotIncreasing { .. } => ErrorCode::NotIncreasing,
            P::AboveCapacity { .. } | P::BadStream(_) | P::Amount(_) => ErrorCode::AboveCapacity,
            P::Tick(t) => ErrorCode::from(t),
        }
    }
}

impl From<&TickError> for ErrorCode {
    fn from(e: &TickError) -> Self {
        match e {
            TickError::WrongPreimage => ErrorCode::WrongPreimage,
            TickError::PastMaximum { .. } | TickError::NoStream => ErrorCode::StreamEnded,
            TickError::BadLength(_) | TickError::UnknownChain | TickError::Amount(_) => ErrorCode::BadRequest,
        }
    }
}

/// A sender asks to open a channel; the receiver answers with the terms it grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelProposal {
    pub channel: ChannelId,
    pub ledger: LedgerId,
    /// Must be the key of the peer that sends the proposal.
    pub sender: PublicKey,
    pub capacity: Amount,
    pub settlement_period_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelRequest {
    Propose(ChannelProposal),
    /// "What do you hold for this channel?" — after a reconnect, so both sides converge on
    /// the receiver's durable state instead of guessing.
    Resync {
        channel: ChannelId,
    },
    /// "What do you sell?" — the seller's current signed offers (a buyer that found the seller
    /// through Kademlia has not necessarily seen its gossip).
    Offers,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelResponse {
    Accepted {
        terms: ChannelTerms,
    },
    /// The receiver's view: the best promise it holds and what it is worth.
    State {
        channel: ChannelId,
        accepted: Amount,
        best: Option<Promise>,
        /// When `best` opened a stream: the latest tick verified, proving what the stream is
        /// worth (absent from peers before ticks travelled; they hold no ticks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tick: Option<Tick>,
    },
    Offers {
        offers: Vec<ServiceOffer>,
    },
    Error(WireError),
}

/// Pay on a channel: the promise's increment is the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayRequest {
    pub promise: Promise,
    pub memo: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PayResponse {
    Receipt(Receipt),
    Error(WireError),
}

/// The next tick of the stream open on `channel` (the stream was opened by a [`PayRequest`]
/// whose promise carries stream terms); answered with a [`PayResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRequest {
    pub channel: ChannelId,
    pub tick: Tick,
    pub memo: String,
}

/// A payee asks to be paid; the payer's budget decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub amount: Amount,
    pub memo: String,
    /// The payee's own reference, echoed in every answer.
    pub reference: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InvoiceResponse {
    Paid {
        promise: Promise,
    },
    /// Waiting for the payer's owner; the payer pays (or says no) later.
    Pending {
        approval: u64,
    },
    Denied {
        reason: String,
    },
    Error(WireError),
}

/// Call a service, paying its price with the promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCall {
    pub service: String,
    #[serde(with = "serde_bytes_vec")]
    pub body: Vec<u8>,
    pub promise: Promise,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServiceResponse {
    Result {
        #[serde(with = "serde_bytes_vec")]
        body: Vec<u8>,
        receipt: Receipt,
    },
    Error(WireError),
}

/// The receiver's signed acknowledgement that a promise was accepted (and is durable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub channel: ChannelId,
    /// Everything accepted on the channel, this payment included.
    pub total: Amount,
    pub increment: Amount,
    pub at: Timestamp,
    pub signature: Signature,
}

impl Receipt {
    fn signed_bytes(channel: &ChannelId, total: Amount, increment: Amount, at: Timestamp) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_DOMAIN.len() + 32 + 16 + 16 + 8);
        out.extend_from_slice(RECEIPT_DOMAIN);
        out.extend_from_slice(channel.as_bytes());
        out.extend_from_slice(&total.base_units().to_be_bytes());
        out.extend_from_slice(&increment.base_units().to_be_bytes());
        out.extend_from_slice(&at.secs().to_be_bytes());
        out
    }

    pub fn sign(channel: ChannelId, total: Amount, increment: Amount, at: Timestamp, key: &SigningKey) -> Receipt {
        let signature = Signature(key.sign(&Receipt::signed_bytes(&channel, total, increment, at)).to_bytes());
        Receipt { channel, total, increment, at, signature }
    }

    pub fn verify(&self, receiver: &PublicKey) -> Result<(), BadSignature> {
        verify(receiver, &Receipt::signed_bytes(&self.channel, self.total, self.increment, self.at), &self.signature)
    }

    /// As [`Receipt::verify`] with the receiver's key already decoded (a buyer checks a
    /// receipt per call; decoding the key costs a third of a verification).
    pub fn verify_with(&self, receiver: &VerifyingKey) -> Result<(), BadSignature> {
        let bytes = Receipt::signed_bytes(&self.channel, self.total, self.increment, self.at);
        receiver.verify_strict(&bytes, &DalekSignature::from_bytes(&self.signature.0)).map_err(|_| BadSignature)
    }
}

/// A seller's signed, expiring announcement of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOffer {
    pub seller: PublicKey,
    pub name: String,
    /// Per call, in base units of `currency_code`.
    pub price: Amount,
    pub currency_code: String,
    pub description: String,
    pub expires_at: Timestamp,
    pub signature: Signature,
}

/// Why an offer is not to be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("offer signature does not verify under the seller's key")]
    BadSignature,
    #[error("offer expired at {0:?}")]
    Expired(Timestamp),
    #[error("offer field {0} is empty or too long")]
    BadField(&'static str),
}

impl ServiceOffer {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(OFFER_DOMAIN.len() + 32 + 16 + self.name.len() + self.description.len() + 32);
        out.extend_from_slice(OFFER_DOMAIN);
        out.extend_from_slice(self.seller.as_bytes());
        for field in [self.name.as_bytes(), self.currency_code.as_bytes(), self.description.as_bytes()] {
            // Length-prefixed, so no two field splits give the same bytes.
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.price.base_units().to_be_bytes());
        out.extend_from_slice(&self.expires_at.secs().to_be_bytes());
        out
    }

    /// Signs an offer as `key`'s seller.
    pub fn sign(
        name: &str,
        price: Amount,
        currency_code: &str,
        description: &str,
        expires_at: Timestamp,
        key: &SigningKey,
    ) -> ServiceOffer {
        let mut offer = ServiceOffer {
            seller: PublicKey::from(key.verifying_key()),
            name: name.to_owned(),
            price,
            currency_code: currency_code.to_owned(),
            description: description.to_owned(),
            expires_at,
            signature: Signature([0; 64]),
        };
        offer.signature = Signature(key.sign(&offer.signed_bytes()).to_bytes());
        offer
    }

    /// Checks the fields, the signature and the expiry.
    pub fn verify(&self, now: Timestamp) -> Result<(), OfferError> {
        if !valid_service_name(&self.name) {
            return Err(OfferError::BadField("name"));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(OfferError::BadField("description"));
        }
        if self.currency_code.is_empty() || self.currency_code.len() > 8 {
            return Err(OfferError::BadField("currency_code"));
        }
        verify(&self.seller, &self.signed_bytes(), &self.signature).map_err(|_| OfferError::BadSignature)?;
        if now >= self.expires_at {
            return Err(OfferError::Expired(self.expires_at));
        }
        Ok(())
    }
}

fn verify(key: &PublicKey, bytes: &[u8], signature: &Signature) -> Result<(), BadSignature> {
    let key: VerifyingKey = key.verifying_key().map_err(|_| BadSignature)?;
    key.verify_strict(bytes, &DalekSignature::from_bytes(&signature.0)).map_err(|_| BadSignature)
}

/// Service names: 1 to 64 of `A-Z a-z 0-9 - _ .`, not only dots (they must fit a URL path).
pub fn valid_service_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.bytes().all(|b| b == b'.')
}

/// Checks a peer-supplied text field's length.
pub fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), WireError> {
    if text.len() > max {
        return Err(WireError::new(ErrorCode::BadRequest, format!("{field} is longer than {max} bytes")));
    }
    Ok(())
}

/// Byte vectors as CBOR byte strings rather than arrays of numbers (a quarter of the size).
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn receipts_verify_under_the_receiver_and_bind_every_field() {
        let receipt = Receipt::sign(
            ChannelId::from_bytes([1; 32]),
            Amount::from_base_units(10),
            Amount::from_base_units(3),
            Timestamp(5),
            &key(2),
        );
        let receiver = PublicKey::from(key(2).verifying_key());
        assert!(receipt.verify(&receiver).is_ok());
        assert!(receipt.verify(&PublicKey::from(key(3).verifying_key())).is_err());
        let mut forged = receipt.clone();
        forged.total = Amount::from_base_units(11);
        assert!(forged.verify(&receiver).is_err());
    }

    #[test]
    fn offers_verify_expire_and_refuse_tampering() {
        let offer =
            ServiceOffer::sign("weather", Amount::from_base_units(1000), "USD", "forecast", Timestamp(100), &key(4));
        assert_eq!(offer.verify(Timestamp(99)), Ok(()));
        assert_eq!(offer.verify(Timestamp(100)), Err(OfferError::Expired(Timestamp(100))));
        let mut cheaper = offer.clone();
        cheaper.price = Amount::from_base_units(1);
        assert_eq!(cheaper.verify(Timestamp(0)), Err(OfferError::BadSignature));
        let mut unsigned = offer.clone();
        unsigned.signature = Signature([0; 64]);
        assert_eq!(unsigned.verify(Timestamp(0)), Err(OfferError::BadSignature));
        let long = ServiceOffer::sign(&"x".repeat(65), Amount::ZERO, "USD", "", Timestamp(100), &key(4));
        assert_eq!(long.verify(Timestamp(0)), Err(OfferError::BadField("name")));
    }

    #[test]
    fn a_resync_answer_without_a_tick_still_reads() {
        // As peers that predate ticks on the wire send it.
        let old = r#"{"type":"state","channel":"0101010101010101010101010101010101010101010101010101010101010101","accepted":"5","best":null}"#;
        let ChannelResponse::State { tick, accepted, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not a state")
        };
        assert_eq!((tick, accepted), (None, Amount::from_base_units(5)));
        let state = ChannelResponse::State {
            channel: ChannelId::from_bytes([1; 32]),
            accepted: Amount::ZERO,
            best: None,
            tick: None,
        };
        assert!(!serde_json::to_string(&state).unwrap().contains("tick"));
    }

    #[test]
    fn offer_fields_cannot_be_shifted_between_each_other() {
        let a = ServiceOffer::sign("ab", Amount::ZERO, "USD", "c", Timestamp(100), &key(4));
        let mut b = a.clone();
        b.name = "a".into();
        b.description = "bc".into();
        assert_eq!(b.verify(Timestamp(0)), Err(OfferError::BadSignature));
    }
}
