//! CBOR framing for the peer protocols: pure functions over bytes, and the request-response
//! codec that applies them to a stream with a size limit on every message.
//!
//! One request or response per stream: the writer writes the encoded message and closes its
//! side, the reader reads until the end or until the limit is passed. A message over the
//! limit is never decoded, and nothing over the limit is ever sent.

use std::io;
use std::marker::PhantomData;

use cbor4ii::core::dec::Read as _;
use cbor4ii::core::utils::SliceReader;
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocols::Protocol;

/// Why bytes could not become a message, or a message could not become bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message does not decode: {0}")]
    Malformed(String),
    #[error("message has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl From<CodecError> for io::Error {
    fn from(e: CodecError) -> io::Error {
        let kind = match e {
            CodecError::Encode(_) => io::ErrorKind::InvalidInput,
            CodecError::TooLarge { .. } | CodecError::Malformed(_) | CodecError::TrailingBytes(_) => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, e)
    }
}

/// Encodes `value` as CBOR, refusing to produce more than `limit` bytes.
pub(super) fn encode<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit });
    }
    Ok(bytes)
}

/// Decodes exactly one CBOR value from `bytes` (nothing may follow it), refusing inputs over
/// `limit` bytes before looking at them. Nesting is bounded by the decoder (256 levels).
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit });
    }
    let mut deserializer = cbor4ii::serde::Deserializer::new(SliceReader::new(bytes));
    let value = T::deserialize(&mut deserializer).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let mut rest = deserializer.into_inner();
    let trailing = match rest.fill(usize::MAX) {
        Ok(cbor4ii::core::dec::Reference::Long(tail)) => tail.len(),
        Ok(cbor4ii::core::dec::Reference::Short(tail)) => tail.len(),
        Err(never) => match never {},
    };
    if trailing != 0 {
        return Err(CodecError::TrailingBytes(trailing));
    }
    Ok(value)
}

/// Reads a whole stream, but never more than `limit` bytes of it.
async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    io.take(cap).read_to_end(&mut bytes).await?;
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit }.into());
    }
    Ok(bytes)
}

/// The request-response codec of one peer protocol.
pub(super) struct WireCodec<P>(PhantomData<fn() -> P>);

impl<P> Default for WireCodec<P> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<P> Clone for WireCodec<P> {
    fn clone(&self) -> Self {
        WireCodec(PhantomData)
    }
}

impl<P> std::fmt::Debug for WireCodec<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCodec")
    }
}

impl<P: Protocol> libp2p::request_response::Codec for WireCodec<P> {
    type Protocol = StreamProtocol;
    type Request = P::Request;
    type Response = P::Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<P::Request> {
        let bytes = read_limited(io, P::REQUEST_LIMIT).await?;
        Ok(decode(&bytes, P::REQUEST_LIMIT)?)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<P::Response> {
        let bytes = read_limited(io, P::RESPONSE_LIMIT).await?;
        Ok(decode(&bytes, P::RESPONSE_LIMIT)?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: P::Request,
    ) -> io::Result<()> {
        let bytes = encode(&request, P::REQUEST_LIMIT)?;
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: P::Response,
    ) -> io::Result<()> {
        let bytes = encode(&response, P::RESPONSE_LIMIT)?;
        io.write_all(&bytes).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use machinomy_core::wire::{ErrorCode, ServiceCall, ServiceResponse, WireError};
    use machinomy_core::{Amount, ChannelId, LedgerId, PromiseBody, SigningKey};
    use proptest::prelude::*;

    use super::*;

    fn call(body: Vec<u8>) -> ServiceCall {
        let promise = PromiseBody {
            ledger: LedgerId::credit(),
            channel: ChannelId::from_bytes([7; 32]),
            amount: Amount::from_base_units(5),
            stream: None,
        }
        .sign(&SigningKey::from_bytes(&[1; 32]));
        ServiceCall { service: "weather".into(), body, promise }
    }

    #[test]
    fn messages_round_trip_and_bodies_are_byte_strings() {
        let message = call(vec![0xab; 1000]);
        let bytes = encode(&message, 4096).unwrap();
        // A byte string costs one byte per byte, not two or three as an array of numbers would.
        assert!(bytes.len() < 1000 + 600, "{} bytes", bytes.len());
        assert_eq!(decode::<ServiceCall>(&bytes, 4096).unwrap(), message);
    }

    #[test]
    fn limits_apply_on_both_sides() {
        let message = call(vec![0; 2000]);
        assert!(matches!(encode(&message, 1000), Err(CodecError::TooLarge { limit: 1000, .. })));
        let bytes = encode(&message, 1 << 20).unwrap();
        assert!(matches!(decode::<ServiceCall>(&bytes, 1000), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_refused() {
        let response = ServiceResponse::Error(WireError::new(ErrorCode::Denied, "no"));
        let mut bytes = encode(&response, 1024).unwrap();
        assert!(matches!(decode::<ServiceResponse>(&bytes[..bytes.len() - 1], 1024), Err(CodecError::Malformed(_))));
        bytes.push(0);
        assert_eq!(decode::<ServiceResponse>(&bytes, 1024), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 100 000 nested one-element arrays, then a zero.
        let mut bytes = vec![0x81; 100_000];
        bytes.push(0);
        assert!(decode::<ServiceCall>(&bytes, 1 << 20).is_err());
        assert!(decode::<serde_json::Value>(&bytes, 1 << 20).is_err());
    }

    #[tokio::test]
    async fn the_stream_reader_stops_one_byte_past_the_limit() {
        let data = vec![1u8; 10_000];
        let mut reader = libp2p::futures::io::Cursor::new(data);
        let err = read_limited(&mut reader, 100).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(reader.position(), 101);
        let mut exact = libp2p::futures::io::Cursor::new(vec![1u8; 100]);
        assert_eq!(read_limited(&mut exact, 100).await.unwrap().len(), 100);
    }

    /// The resync answer as peers sent it before ticks travelled.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OldChannelResponse {
        State { channel: ChannelId, accepted: Amount, best: Option<machinomy_core::Promise> },
    }

    #[test]
    fn resync_answers_read_both_ways_across_the_tick_change() {
        use machinomy_core::Tick;
        use machinomy_core::wire::ChannelResponse;
        let (channel, accepted) = (ChannelId::from_bytes([3; 32]), Amount::from_base_units(9));
        let old = encode(&OldChannelResponse::State { channel, accepted, best: None }, 1024).unwrap();
        assert_eq!(
            decode::<ChannelResponse>(&old, 1024).unwrap(),
            ChannelResponse::State { channel, accepted, best: None, tick: None }
        );
        let tick = Some(Tick { index: 2, preimage: [4; 32] });
        let new = encode(&ChannelResponse::State { channel, accepted, best: None, tick }, 1024).unwrap();
        assert_eq!(
            decode::<OldChannelResponse>(&new, 1024).unwrap(),
            OldChannelResponse::State { channel, accepted, best: None }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<machinomy_core::wire::TickRequest>(&bytes, 1024);
            let _ = decode::<ServiceCall>(&bytes, 1024);
            let _ = decode::<ServiceResponse>(&bytes, 1024);
            let _ = decode::<machinomy_core::wire::ServiceOffer>(&bytes, 1024);
        }

        #[test]
        fn mutated_messages_never_panic(index in 0usize..400, byte in any::<u8>()) {
            let mut bytes = encode(&call(vec![3; 64]), 4096).unwrap();
            let len = bytes.len();
            bytes[index % len] = byte;
            let _ = decode::<ServiceCall>(&bytes, 4096);
        }
    }
}
