//! Peer ids and addresses at the boundary: the rest of the hub knows peers by their ed25519
//! [`PublicKey`] and addresses as text; libp2p knows them as `PeerId` and `Multiaddr`.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity};
use machinomy_core::PublicKey;

use super::NetError;

/// The multihash code of an inlined ("identity") key.
const IDENTITY_MULTIHASH: u64 = 0;

/// The PeerId of a hub key. Fails for byte strings that are not ed25519 points.
pub(super) fn peer_id_of(key: &PublicKey) -> Result<PeerId, NetError> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).map_err(|_| NetError::BadKey(*key))?;
    Ok(identity::PublicKey::from(ed).to_peer_id())
}

/// The hub key inside a PeerId, if the PeerId inlines an ed25519 key (every hub's does).
pub(super) fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != IDENTITY_MULTIHASH {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    Some(PublicKey::from_bytes(ed.to_bytes()))
}

/// Reads a multiaddr given as text.
pub(super) fn parse_addr(text: &str) -> Result<Multiaddr, NetError> {
    let addr = text
        .trim()
        .parse::<Multiaddr>()
        .map_err(|e| NetError::BadAddress { addr: text.to_owned(), reason: e.to_string() })?;
    let named = addr
        .iter()
        .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)));
    if named {
        return Err(NetError::BadAddress {
            addr: text.to_owned(),
            reason: "host names are not resolved here; give an /ip4/ or /ip6/ address".into(),
        });
    }
    Ok(addr)
}

/// Splits a trailing `/p2p/<peer id>` off an address.
pub(super) fn split_peer(mut addr: Multiaddr) -> (Multiaddr, Option<PeerId>) {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

/// Reads an address that must name its peer (`…/p2p/<peer id>`), as bootstrap and relay
/// addresses do, and checks that the peer is a hub (an ed25519 key).
pub(super) fn parse_peer_addr(text: &str) -> Result<(PeerId, Multiaddr), NetError> {
    let full = parse_addr(text)?;
    let (_, peer) = split_peer(full.clone());
    let peer = peer.ok_or_else(|| NetError::BadAddress {
        addr: text.to_owned(),
        reason: "the address must end in /p2p/<peer id>".into(),
    })?;
    if public_key_of(&peer).is_none() {
        return Err(NetError::BadAddress { addr: text.to_owned(), reason: "the peer id is not an ed25519 key".into() });
    }
    Ok((peer, full))
}

/// `addr` with `/p2p/<peer>` at its end, unless it already names a peer.
pub(super) fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

#[cfg(test)]
mod tests {
    use machinomy_core::SigningKey;

    use super::*;

    #[test]
    fn keys_and_peer_ids_convert_both_ways() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let key = PublicKey::from(signing.verifying_key());
        let peer = peer_id_of(&key).unwrap();
        assert_eq!(public_key_of(&peer), Some(key));
        // The libp2p keypair made from the same secret has the same PeerId.
        let keypair = identity::Keypair::ed25519_from_bytes(signing.to_bytes()).unwrap();
        assert_eq!(keypair.public().to_peer_id(), peer);
    }

    #[test]
    fn peer_ids_without_an_ed25519_key_are_not_hubs() {
        // A PeerId of 32 random bytes: an identity multihash that is no key at all.
        assert_eq!(public_key_of(&PeerId::random()), None);
        // A sha2-256 PeerId (how large keys are named) carries no key either.
        let hashed: PeerId = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse().unwrap();
        assert_eq!(public_key_of(&hashed), None);
    }

    #[test]
    fn invalid_keys_are_refused() {
        // Not every 32-byte string is a curve point.
        let bad = (0u8..=255).map(|b| PublicKey::from_bytes([b; 32])).find(|k| k.verifying_key().is_err()).unwrap();
        assert!(matches!(peer_id_of(&bad), Err(NetError::BadKey(_))));
    }

    #[test]
    fn addresses_are_parsed_with_clear_errors() {
        assert!(parse_addr("/ip4/127.0.0.1/tcp/4001").is_ok());
        let err = parse_addr("/ip4/999.0.0.1/tcp/1").unwrap_err();
        assert!(err.to_string().contains("/ip4/999.0.0.1/tcp/1"), "{err}");
        assert!(matches!(parse_peer_addr("/ip4/127.0.0.1/tcp/1"), Err(NetError::BadAddress { .. })));
        let err = parse_addr("/dns4/hub.example/tcp/4001").unwrap_err();
        assert!(err.to_string().contains("host names are not resolved"), "{err}");
        let key = PublicKey::from(SigningKey::from_bytes(&[3; 32]).verifying_key());
        let peer = peer_id_of(&key).unwrap();
        let text = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}");
        let (parsed, full) = parse_peer_addr(&text).unwrap();
        assert_eq!(parsed, peer);
        assert_eq!(full.to_string(), text);
        assert_eq!(split_peer(full.clone()).0.to_string(), "/ip4/127.0.0.1/tcp/1");
        assert_eq!(with_peer(&full, peer), full);
    }
}
