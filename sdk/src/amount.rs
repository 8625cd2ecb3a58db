//! Amounts of money in base units.

use core::fmt;
use core::str::FromStr;

/// An amount of money in the currency's base units (for example 1e-9 USD). Money is always an
/// integer; the ABI and JSON carry it as a decimal string because it does not fit an `i64`.
///
/// ```
/// use machinomy_sdk::Amount;
///
/// let price: Amount = "2000".parse().unwrap();
/// assert_eq!(price.checked_mul(3), Some(Amount(6000)));
/// assert_eq!(Amount(6000).to_string(), "6000");
/// assert!("1.5".parse::<Amount>().is_err()); // base units: no fractions
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

/// Why a string is not an [`Amount`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    /// Empty, or something other than the digits 0-9 (no sign, spaces, fraction or exponent).
    NotDecimal,
    /// More than `u128::MAX`.
    Overflow,
}

impl Amount {
    /// Nothing.
    pub const ZERO: Amount = Amount(0);

    /// Parses a decimal string of base units: ASCII digits only, at least one.
    pub fn parse(s: &str) -> Result<Amount, AmountError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimal);
        }
        let mut value: u128 = 0;
        for b in s.bytes() {
            value =
                value.checked_mul(10).and_then(|v| v.checked_add(u128::from(b - b'0'))).ok_or(AmountError::Overflow)?;
        }
        Ok(Amount(value))
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `self - other`, or `None` if `other` is larger.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self × n`, or `None` on overflow.
    pub fn checked_mul(self, n: u128) -> Option<Amount> {
        self.0.checked_mul(n).map(Amount)
    }

    /// `self + other`, at most `u128::MAX`.
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// `self - other`, at least zero.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Amount, AmountError> {
        Amount::parse(s)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u64> for Amount {
    fn from(v: u64) -> Amount {
        Amount(u128::from(v))
    }
}

impl From<u128> for Amount {
    fn from(v: u128) -> Amount {
        Amount(v)
    }
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::NotDecimal => f.write_str("an amount is a decimal integer of base units"),
            AmountError::Overflow => f.write_str("amount too large"),
        }
    }
}

impl std::error::Error for AmountError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_decimal_base_units() {
        for s in ["0", "1", "2000", "340282366920938463463374607431768211455"] {
            assert_eq!(Amount::parse(s).map(|a| a.to_string()), Ok(s.to_string()));
        }
        assert_eq!(Amount::parse("007"), Ok(Amount(7)));
        assert_eq!(Amount::parse("340282366920938463463374607431768211455"), Ok(Amount(u128::MAX)));
    }

    #[test]
    fn refuses_anything_but_digits() {
        for s in ["", "-1", "+1", " 1", "1 ", "1.5", "1e3", "0x10", "١"] {
            assert_eq!(Amount::parse(s), Err(AmountError::NotDecimal), "{s:?}");
        }
        assert_eq!(Amount::parse("340282366920938463463374607431768211456"), Err(AmountError::Overflow));
        assert_eq!(Amount::parse(&"9".repeat(60)), Err(AmountError::Overflow));
    }

    #[test]
    fn arithmetic_never_wraps() {
        assert_eq!(Amount(u128::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Amount(u128::MAX).checked_mul(2), None);
        assert_eq!(Amount(u128::MAX).saturating_add(Amount(1)), Amount(u128::MAX));
        assert_eq!(Amount(1).saturating_sub(Amount(2)), Amount::ZERO);
        assert!(Amount::ZERO.is_zero());
    }
}
