//! Streams: pay per tick by revealing preimages of a BLAKE3 hash chain.
//!
//! The sender picks a secret seed and hashes it `n` times; the last hash is the root it signs
//! into a promise. Tick `i` reveals the hash `n - i` steps from the seed, which the receiver
//! checks with a single hash against the previous tick (or the root).

use crate::amount::{Amount, AmountError};
use crate::promise::{MAX_STREAM_TICKS, StreamTerms};

/// Why a tick was refused, or a chain could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickError {
    #[error("the tick's preimage does not hash to the previous tick")]
    WrongPreimage,
    #[error("the stream already has its maximum of {max} ticks")]
    PastMaximum { max: u64 },
    #[error("a stream may have 1 to {MAX_STREAM_TICKS} ticks, not {0}")]
    BadLength(u64),
    #[error("there is no open stream on this channel")]
    NoStream,
    /// The stored seed does not lead to the stream's root: the sender cannot continue a stream
    /// it learnt of only from the receiver (a resync), and must open a new one.
    #[error("the stream's hash chain is not known here; open a new stream")]
    UnknownChain,
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// One revealed link of a hash chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    /// 1 for the first tick after the root.
    pub index: u64,
    #[serde(with = "crate::promise::hex_32")]
    pub preimage: [u8; 32],
}

/// The sender's side: the whole chain, root first.
#[derive(Clone)]
pub struct HashChain {
    /// `links[0]` is the root, `links[i]` the preimage revealed by tick `i`.
    links: Vec<[u8; 32]>,
}

impl std::fmt::Debug for HashChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The links are secrets until revealed.
        f.debug_struct("HashChain").field("max_ticks", &self.max_ticks()).finish_non_exhaustive()
    }
}

impl HashChain {
    /// Hashes `seed` `max_ticks` times.
    pub fn new(seed: [u8; 32], max_ticks: u64) -> Result<HashChain, TickError> {
        if max_ticks == 0 || max_ticks > MAX_STREAM_TICKS {
            return Err(TickError::BadLength(max_ticks));
        }
        let len = usize::try_from(max_ticks).map_err(|_| TickError::BadLength(max_ticks))? + 1;
        let mut links = vec![seed; len];
        // Build from the seed (the last tick) backwards to the root.
        for i in (0..len - 1).rev() {
            let next = links.get(i + 1).copied().unwrap_or(seed);
            if let Some(link) = links.get_mut(i) {
                *link = *blake3::hash(&next).as_bytes();
            }
        }
        Ok(HashChain { links })
    }

    pub fn root(&self) -> [u8; 32] {
        self.links.first().copied().unwrap_or_default()
    }

    pub fn max_ticks(&self) -> u64 {
        self.links.len() as u64 - 1
    }

    /// The tick with this index (1-based), if the chain is long enough.
    pub fn tick(&self, index: u64) -> Option<Tick> {
        let i = usize::try_from(index).ok()?;
        if i == 0 {
            return None;
        }
        self.links.get(i).map(|preimage| Tick { index, preimage: *preimage })
    }
}

/// Checks that `tick` is link `tick.index` of the chain under `terms`: hashing its preimage
/// `index` times gives the root. Lets a sender trust a receiver's claim to ticks it can no
/// longer recompute; costs at most `terms.max_ticks` hashes.
pub fn verify_tick(terms: &StreamTerms, tick: &Tick) -> Result<(), TickError> {
    if tick.index > terms.max_ticks {
        return Err(TickError::PastMaximum { max: terms.max_ticks });
    }
    if tick.index == 0 {
        return Err(TickError::WrongPreimage);
    }
    let mut link = tick.preimage;
    for _ in 0..tick.index {
        link = *blake3::hash(&link).as_bytes();
    }
    if link != terms.root {
        return Err(TickError::WrongPreimage);
    }
    Ok(())
}

/// The receiver's side: the terms it accepted and the latest verified tick.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamVerifier {
    pub terms: StreamTerms,
    /// The amount of the promise that opened the stream; ticks add to it.
    pub base: Amount,
    pub ticks: u64,
    #[serde(with = "crate::promise::hex_32")]
    pub last: [u8; 32],
}

impl StreamVerifier {
    pub fn new(base: Amount, terms: StreamTerms) -> StreamVerifier {
        StreamVerifier { terms, base, ticks: 0, last: terms.root }
    }

    /// Checks one tick with one hash; on success the stream is worth one more tick.
    pub fn verify(&mut self, preimage: &[u8; 32]) -> Result<u64, TickError> {
        if self.ticks >= self.terms.max_ticks {
            return Err(TickError::PastMaximum { max: self.terms.max_ticks });
        }
        if blake3::hash(preimage).as_bytes() != &self.last {
            return Err(TickError::WrongPreimage);
        }
        self.last = *preimage;
        self.ticks += 1;
        Ok(self.ticks)
    }

    /// Checks a tick without recording it.
    pub fn check(&self, preimage: &[u8; 32]) -> Result<(), TickError> {
        self.clone().verify(preimage).map(|_| ())
    }

    /// The latest verified tick, if any (proof of what the stream is worth, for a resync).
    pub fn last_tick(&self) -> Option<Tick> {
        (self.ticks > 0).then_some(Tick { index: self.ticks, preimage: self.last })
    }

    /// What the receiver can claim now: the base amount plus every verified tick.
    pub fn claimable(&self) -> Result<Amount, AmountError> {
        self.base.checked_add(self.terms.price_per_tick.checked_mul(u128::from(self.ticks))?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn terms(chain: &HashChain, price: u128) -> StreamTerms {
        StreamTerms { root: chain.root(), price_per_tick: Amount::from_base_units(price), max_ticks: chain.max_ticks() }
    }

    #[test]
    fn a_chain_must_have_one_to_the_maximum_ticks() {
        assert_eq!(HashChain::new([0; 32], 0).unwrap_err(), TickError::BadLength(0));
        assert_eq!(
            HashChain::new([0; 32], MAX_STREAM_TICKS + 1).unwrap_err(),
            TickError::BadLength(MAX_STREAM_TICKS + 1)
        );
        assert_eq!(HashChain::new([0; 32], u64::MAX).unwrap_err(), TickError::BadLength(u64::MAX));
        assert_eq!(HashChain::new([0; 32], 1).unwrap().max_ticks(), 1);
    }

    #[test]
    fn each_tick_hashes_to_the_one_before_and_the_last_is_the_seed() {
        let seed = [5; 32];
        let chain = HashChain::new(seed, 4).unwrap();
        let mut previous = chain.root();
        for index in 1..=4 {
            let tick = chain.tick(index).unwrap();
            assert_eq!(tick.index, index);
            assert_eq!(blake3::hash(&tick.preimage).as_bytes(), &previous);
            previous = tick.preimage;
        }
        assert_eq!(previous, seed);
        assert_eq!(chain.tick(0), None);
        assert_eq!(chain.tick(5), None);
        assert_eq!(chain.tick(u64::MAX), None);
    }

    #[test]
    fn the_chain_does_not_debug_print_its_secrets() {
        let chain = HashChain::new([5; 32], 2).unwrap();
        let text = format!("{chain:?}");
        assert!(!text.contains(&format!("{:?}", chain.root())));
        assert!(text.contains("max_ticks: 2"));
    }

    #[test]
    fn the_verifier_accepts_ticks_in_order_and_claims_each() {
        let chain = HashChain::new([1; 32], 3).unwrap();
        let mut verifier = StreamVerifier::new(Amount::from_base_units(100), terms(&chain, 7));
        assert_eq!(verifier.claimable(), Ok(Amount::from_base_units(100)));
        for i in 1..=3 {
            assert_eq!(verifier.verify(&chain.tick(i).unwrap().preimage), Ok(i));
            assert_eq!(verifier.claimable(), Ok(Amount::from_base_units(100 + 7 * u128::from(i))));
        }
    }

    #[test]
    fn the_verifier_refuses_a_wrong_or_skipped_preimage_and_stays_put() {
        let chain = HashChain::new([1; 32], 3).unwrap();
        let mut verifier = StreamVerifier::new(Amount::ZERO, terms(&chain, 7));
        let before = verifier.clone();
        assert_eq!(verifier.verify(&[0; 32]), Err(TickError::WrongPreimage));
        assert_eq!(verifier.verify(&chain.tick(2).unwrap().preimage), Err(TickError::WrongPreimage));
        assert_eq!(verifier.verify(&chain.root()), Err(TickError::WrongPreimage));
        assert_eq!(verifier, before);
        verifier.verify(&chain.tick(1).unwrap().preimage).unwrap();
        // Replaying tick 1 does not count twice.
        assert_eq!(verifier.verify(&chain.tick(1).unwrap().preimage), Err(TickError::WrongPreimage));
        assert_eq!(verifier.ticks, 1);
    }

    #[test]
    fn the_verifier_refuses_ticks_past_the_maximum() {
        // A longer chain than the terms allow: the extra preimage hashes correctly but is not paid for.
        let chain = HashChain::new([2; 32], 3).unwrap();
        let mut verifier = StreamVerifier::new(Amount::ZERO, StreamTerms { max_ticks: 2, ..terms(&chain, 1) });
        verifier.verify(&chain.tick(1).unwrap().preimage).unwrap();
        verifier.verify(&chain.tick(2).unwrap().preimage).unwrap();
        assert_eq!(verifier.verify(&chain.tick(3).unwrap().preimage), Err(TickError::PastMaximum { max: 2 }));
        assert_eq!(verifier.claimable(), Ok(Amount::from_base_units(2)));
    }

    #[test]
    fn check_does_not_record_the_tick() {
        let chain = HashChain::new([2; 32], 2).unwrap();
        let verifier = StreamVerifier::new(Amount::ZERO, terms(&chain, 1));
        let tick = chain.tick(1).unwrap();
        assert_eq!(verifier.check(&tick.preimage), Ok(()));
        assert_eq!(verifier.check(&[9; 32]), Err(TickError::WrongPreimage));
        assert_eq!(verifier.ticks, 0);
        assert_eq!(verifier.last, chain.root());
    }

    #[test]
    fn a_tick_proves_its_position_under_the_root_and_nothing_else() {
        let chain = HashChain::new([3; 32], 4).unwrap();
        let terms = terms(&chain, 1);
        for index in 1..=4 {
            assert_eq!(verify_tick(&terms, &chain.tick(index).unwrap()), Ok(()));
        }
        let second = chain.tick(2).unwrap();
        assert_eq!(verify_tick(&terms, &Tick { index: 3, ..second }), Err(TickError::WrongPreimage));
        assert_eq!(verify_tick(&terms, &Tick { index: 0, preimage: terms.root }), Err(TickError::WrongPreimage));
        assert_eq!(verify_tick(&terms, &Tick { index: 5, ..second }), Err(TickError::PastMaximum { max: 4 }));
        let mut verifier = StreamVerifier::new(Amount::ZERO, terms);
        assert_eq!(verifier.last_tick(), None);
        verifier.verify(&chain.tick(1).unwrap().preimage).unwrap();
        verifier.verify(&second.preimage).unwrap();
        assert_eq!(verifier.last_tick(), Some(second));
    }

    #[test]
    fn claimable_reports_overflow_instead_of_wrapping() {
        let chain = HashChain::new([2; 32], 2).unwrap();
        let mut verifier = StreamVerifier::new(Amount::MAX, terms(&chain, 1));
        verifier.verify(&chain.tick(1).unwrap().preimage).unwrap();
        assert_eq!(verifier.claimable(), Err(AmountError::Overflow));
    }

    #[test]
    fn ticks_and_verifiers_round_trip_through_json() {
        let chain = HashChain::new([2; 32], 2).unwrap();
        let tick = chain.tick(1).unwrap();
        let json = serde_json::to_string(&tick).unwrap();
        assert_eq!(serde_json::from_str::<Tick>(&json).unwrap(), tick);
        let mut verifier = StreamVerifier::new(Amount::from_base_units(5), terms(&chain, 3));
        verifier.verify(&tick.preimage).unwrap();
        let json = serde_json::to_string(&verifier).unwrap();
        assert_eq!(serde_json::from_str::<StreamVerifier>(&json).unwrap(), verifier);
    }
}
