//! Identifiers and keys, with canonical hex text forms.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be {len} hex characters")]
    BadHex { what: &'static str, len: usize },
    #[error("{0:?} is not a valid ed25519 public key")]
    BadPublicKey(String),
    #[error("ledger id {0:?} must be 1 to 64 characters of a-z, 0-9, ':', '-', '_' or '.'")]
    BadLedgerId(String),
}

macro_rules! hex_bytes_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(s, &mut bytes)
                    .map_err(|_| IdError::BadHex { what: $what, len: $len * 2 })?;
                Ok($name(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes_id!(
    /// A channel id: 32 random bytes, never reused.
    ChannelId, 32, "a channel id"
);

hex_bytes_id!(
    /// An ed25519 public key (a hub's identity, a device's key, a channel party).
    PublicKey, 32, "a public key"
);

impl PublicKey {
    /// The key as a verifier; fails for byte strings that are not curve points.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::BadPublicKey(self.to_hex()))
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(key: VerifyingKey) -> Self {
        PublicKey(key.to_bytes())
    }
}

/// Which ledger a channel lives on, e.g. `credit` or `ethereum:31337:0x5fbd…`.
///
/// It is part of every signed promise, so a promise for one ledger is worthless on another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LedgerId(String);

impl LedgerId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: &str) -> Result<LedgerId, IdError> {
        let valid = (1..=Self::MAX_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'-' | b'_' | b'.'));
        if valid { Ok(LedgerId(id.to_owned())) } else { Err(IdError::BadLedgerId(id.to_owned())) }
    }

    /// The embedded credit ledger.
    pub fn credit() -> LedgerId {
        LedgerId("credit".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for LedgerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        LedgerId::new(&s)
    }
}

impl From<LedgerId> for String {
    fn from(id: LedgerId) -> Self {
        id.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn channel_ids_round_trip_through_hex() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        let id = ChannelId::from_bytes(bytes);
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, id.to_string());
        assert_eq!(hex.parse::<ChannelId>(), Ok(id));
        assert_eq!(id.as_bytes(), &bytes);
        assert!(format!("{id:?}").contains(&hex));
    }

    #[test]
    fn hex_of_the_wrong_length_or_alphabet_is_refused() {
        let bad = IdError::BadHex { what: "a channel id", len: 64 };
        for text in [
            "",
            "00",
            &"0".repeat(63),
            &"0".repeat(65),
            &"0".repeat(66),
            &"g".repeat(64),
            &format!("0x{}", "0".repeat(62)),
        ] {
            assert_eq!(text.parse::<ChannelId>(), Err(bad.clone()), "{text:?}");
        }
        assert_eq!("zz".parse::<PublicKey>(), Err(IdError::BadHex { what: "a public key", len: 64 }));
    }

    #[test]
    fn ids_serialize_as_hex_strings() {
        let id = ChannelId::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<ChannelId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ChannelId>("\"abab\"").is_err());
        assert!(serde_json::from_str::<ChannelId>("[1,2,3]").is_err());
    }

    #[test]
    fn a_real_key_round_trips_and_verifies() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let key = PublicKey::from(signing.verifying_key());
        assert_eq!(key.to_hex().parse::<PublicKey>(), Ok(key));
        assert_eq!(key.verifying_key().unwrap(), signing.verifying_key());
    }

    #[test]
    fn bytes_that_are_not_a_curve_point_are_not_a_verifying_key() {
        // About half of all y coordinates have no point on the curve; find one deterministically.
        let not_a_point = (0u8..=255)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[0] = i;
                bytes[1] = 1;
                PublicKey::from_bytes(bytes)
            })
            .find(|key| VerifyingKey::from_bytes(key.as_bytes()).is_err())
            .expect("some 32-byte string is not a point");
        assert_eq!(not_a_point.verifying_key(), Err(IdError::BadPublicKey(not_a_point.to_hex())));
    }

    #[test]
    fn ledger_ids_are_validated() {
        for good in
            ["credit", "ethereum:31337:0x5fbdb2315678afecb367f032d93f642f64180aa3", "a", "x-y_z.w", &"a".repeat(64)]
        {
            let id = LedgerId::new(good).unwrap();
            assert_eq!(id.as_str(), good);
            assert_eq!(id.to_string(), good);
        }
        for bad in ["", "Credit", "credit ", "ethereum/1", "é", &"a".repeat(65)] {
            assert_eq!(LedgerId::new(bad), Err(IdError::BadLedgerId(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(LedgerId::credit().as_str(), "credit");
    }

    #[test]
    fn ledger_ids_are_validated_when_deserialized() {
        assert_eq!(serde_json::from_str::<LedgerId>("\"credit\"").unwrap(), LedgerId::credit());
        assert_eq!(serde_json::to_string(&LedgerId::credit()).unwrap(), "\"credit\"");
        assert!(serde_json::from_str::<LedgerId>("\"CREDIT\"").is_err());
        assert!(serde_json::from_str::<LedgerId>("\"\"").is_err());
    }
}
