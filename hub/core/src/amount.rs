//! Amounts of money: integers of base units, never floats.
//!
//! A [`Currency`] says how many decimals a base unit has; parsing and formatting go through
//! strings digit by digit, so `0.000000001 USD` at 9 decimals is exactly one base unit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most decimals a currency may have: 10^38 still fits in a `u128`.
pub const MAX_DECIMALS: u8 = 38;

/// Why an amount could not be parsed or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} must be a whole number of base units (digits only)")]
    NotBaseUnits(String),
    #[error("amount {0:?} is not a plain decimal number (digits with at most one '.')")]
    NotDecimal(String),
    #[error("amount {input:?} has more than {decimals} decimal places")]
    TooPrecise { input: String, decimals: u8 },
    #[error("amount overflows the largest representable value")]
    Overflow,
    #[error("amount would go below zero")]
    Underflow,
    #[error("a currency may have at most {MAX_DECIMALS} decimals, not {0}")]
    DecimalsOutOfRange(u8),
    #[error("currency code {0:?} must be 1 to 8 characters A-Z or 0-9")]
    BadCurrencyCode(String),
}

/// A non-negative amount of base units of some currency.
///
/// JSON carries it as a decimal string of base units (`"1500"`), because JSON numbers lose
/// precision above 2^53.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const MAX: Amount = Amount(u128::MAX);

    pub const fn from_base_units(units: u128) -> Self {
        Amount(units)
    }

    pub const fn base_units(self) -> u128 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_add(other.0).map(Amount).ok_or(AmountError::Overflow)
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_sub(other.0).map(Amount).ok_or(AmountError::Underflow)
    }

    pub fn checked_mul(self, factor: u128) -> Result<Amount, AmountError> {
        self.0.checked_mul(factor).map(Amount).ok_or(AmountError::Overflow)
    }

    /// The difference, or zero where `other` is larger.
    pub const fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// Parses `"12.5"` in a currency of `decimals` decimals into base units.
    pub fn parse_decimal(input: &str, decimals: u8) -> Result<Amount, AmountError> {
        let scale = pow10(decimals)?;
        if input.is_empty() {
            return Err(AmountError::Empty);
        }
        let (whole, fraction) = match input.split_once('.') {
            Some((w, f)) => (w, f),
            None => (input, ""),
        };
        let not_decimal = || AmountError::NotDecimal(input.to_owned());
        if (whole.is_empty() && fraction.is_empty())
            || input.ends_with('.')
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(not_decimal());
        }
        // Trailing zeros beyond the currency's precision carry no value: "1.50" at 1 decimal is fine.
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > usize::from(decimals) {
            return Err(AmountError::TooPrecise { input: input.to_owned(), decimals });
        }
        let mut units: u128 = 0;
        for digit in whole.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(u128::from(digit - b'0')))
                .ok_or(AmountError::Overflow)?;
        }
        units = units.checked_mul(scale).ok_or(AmountError::Overflow)?;
        let mut fraction_units: u128 = 0;
        for digit in fraction.bytes() {
            fraction_units = fraction_units * 10 + u128::from(digit - b'0');
        }
        // `fraction.len() <= decimals`, so this power cannot fail.
        let fraction_scale = pow10(decimals - fraction.len() as u8)?;
        let fraction_units = fraction_units.checked_mul(fraction_scale).ok_or(AmountError::Overflow)?;
        units.checked_add(fraction_units).map(Amount).ok_or(AmountError::Overflow)
    }

    /// Formats base units as a decimal in a currency of `decimals` decimals, without trailing
    /// zeros in the fraction: 1_500_000_000 at 9 decimals is `"1.5"`.
    pub fn format_decimal(self, decimals: u8) -> String {
        let digits = self.0.to_string();
        let decimals = usize::from(decimals.min(MAX_DECIMALS));
        if decimals == 0 {
            return digits;
        }
        let padded = format!("{digits:0>width$}", width = decimals + 1);
        let (whole, fraction) = padded.split_at(padded.len() - decimals);
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() { whole.to_owned() } else { format!("{whole}.{fraction}") }
    }
}

fn pow10(decimals: u8) -> Result<u128, AmountError> {
    if decimals > MAX_DECIMALS {
        return Err(AmountError::DecimalsOutOfRange(decimals));
    }
    Ok(10u128.pow(u32::from(decimals)))
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Parses base units (an integer string).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotBaseUnits(s.to_owned()));
        }
        s.parse::<u128>().map(Amount).map_err(|_| AmountError::Overflow)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A currency: a short code and how many decimals one unit has.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CurrencyRepr", into = "CurrencyRepr")]
pub struct Currency {
    code: String,
    decimals: u8,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrencyRepr {
    code: String,
    decimals: u8,
}

impl TryFrom<CurrencyRepr> for Currency {
    type Error = AmountError;
    fn try_from(repr: CurrencyRepr) -> Result<Self, Self::Error> {
        Currency::new(&repr.code, repr.decimals)
    }
}

impl From<Currency> for CurrencyRepr {
    fn from(c: Currency) -> Self {
        CurrencyRepr { code: c.code, decimals: c.decimals }
    }
}

impl Currency {
    pub fn new(code: &str, decimals: u8) -> Result<Currency, AmountError> {
        let valid = (1..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !valid {
            return Err(AmountError::BadCurrencyCode(code.to_owned()));
        }
        if decimals > MAX_DECIMALS {
            return Err(AmountError::DecimalsOutOfRange(decimals));
        }
        Ok(Currency { code: code.to_owned(), decimals })
    }

    /// The credit ledger's default: US dollars to nine decimals (a base unit is 1e-9 USD).
    pub fn usd() -> Currency {
        Currency { code: "USD".to_owned(), decimals: 9 }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn decimals(&self) -> u8 {
        self.decimals
    }

    pub fn parse(&self, input: &str) -> Result<Amount, AmountError> {
        Amount::parse_decimal(input, self.decimals)
    }

    /// `"1.50 USD"`, `"0.000004 USD"`: as people write money, with cents where the currency
    /// has them, and every digit the amount needs beyond them. Every surface (CLI, web UI,
    /// messages) shows amounts this way.
    pub fn format(&self, amount: Amount) -> String {
        let text = amount.format_decimal(self.decimals);
        let cents = usize::from(self.decimals.min(2));
        let missing = match text.split_once('.') {
            Some((_, fraction)) => cents.saturating_sub(fraction.len()),
            None => cents,
        };
        let point = if missing == cents && cents > 0 { "." } else { "" };
        format!("{text}{point}{} {}", "0".repeat(missing), self.code)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn parse(input: &str, decimals: u8) -> Result<u128, AmountError> {
        Amount::parse_decimal(input, decimals).map(Amount::base_units)
    }

    fn not_decimal(input: &str) -> AmountError {
        AmountError::NotDecimal(input.to_owned())
    }

    #[test]
    fn parses_a_decimal_into_base_units() {
        assert_eq!(parse("1.5", 9), Ok(1_500_000_000));
        assert_eq!(parse("0.000000001", 9), Ok(1));
        assert_eq!(parse("12", 9), Ok(12_000_000_000));
        assert_eq!(parse("0", 9), Ok(0));
        assert_eq!(parse("007.25", 2), Ok(725));
        assert_eq!(parse("42", 0), Ok(42));
    }

    #[test]
    fn trailing_zeros_beyond_the_precision_carry_no_value() {
        assert_eq!(parse("1.50", 1), Ok(15));
        assert_eq!(parse("1.5000000000000", 9), Ok(1_500_000_000));
        assert_eq!(parse("3.000", 0), Ok(3));
    }

    #[test]
    fn a_leading_point_is_read_as_zero_whole_units() {
        assert_eq!(parse(".5", 9), Ok(500_000_000));
    }

    #[test]
    fn refuses_more_decimals_than_the_currency_has() {
        assert_eq!(
            parse("0.0000000001", 9),
            Err(AmountError::TooPrecise { input: "0.0000000001".into(), decimals: 9 })
        );
        assert_eq!(parse("1.5", 0), Err(AmountError::TooPrecise { input: "1.5".into(), decimals: 0 }));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        assert_eq!(parse("", 9), Err(AmountError::Empty));
        for input in ["1.", ".", "-1", "+1", "1e3", " 1", "1 ", "1.2.3", "1,5", "0x10", "١", "NaN", "inf", "1._5"] {
            assert_eq!(parse(input, 9), Err(not_decimal(input)), "{input:?}");
        }
    }

    #[test]
    fn refuses_amounts_that_overflow_u128() {
        // u128::MAX is 340282366920938463463374607431768211455.
        assert_eq!(parse("340282366920938463463374607431768211455", 0), Ok(u128::MAX));
        assert_eq!(parse("340282366920938463463374607431768211456", 0), Err(AmountError::Overflow));
        assert_eq!(parse("340282366920938463463374607431.768211456", 9), Err(AmountError::Overflow));
        assert_eq!(parse("340282366920938463463374607431.768211455", 9), Ok(u128::MAX));
        assert_eq!(parse("1000000000000000000000000000000000000000000", 0), Err(AmountError::Overflow));
        assert_eq!(parse("4", 38), Err(AmountError::Overflow));
        assert_eq!(parse("3.4", 38), Ok(34 * 10u128.pow(37)));
    }

    #[test]
    fn refuses_currencies_with_too_many_decimals() {
        assert_eq!(parse("1", 39), Err(AmountError::DecimalsOutOfRange(39)));
        assert_eq!(parse("1", 38), Ok(10u128.pow(38)));
    }

    #[test]
    fn formats_without_trailing_zeros() {
        let format = |units: u128, decimals: u8| Amount::from_base_units(units).format_decimal(decimals);
        assert_eq!(format(1_500_000_000, 9), "1.5");
        assert_eq!(format(1, 9), "0.000000001");
        assert_eq!(format(0, 9), "0");
        assert_eq!(format(12_000_000_000, 9), "12");
        assert_eq!(format(42, 0), "42");
        assert_eq!(format(u128::MAX, 38), "3.40282366920938463463374607431768211455");
    }

    #[test]
    fn format_and_parse_round_trip() {
        for decimals in [0u8, 1, 2, 6, 9, 18, 38] {
            for units in [0u128, 1, 9, 10, 99, 1_500_000_000, 10u128.pow(20) + 7, u128::MAX] {
                let amount = Amount::from_base_units(units);
                let text = amount.format_decimal(decimals);
                assert_eq!(Amount::parse_decimal(&text, decimals), Ok(amount), "{text} at {decimals}");
            }
        }
    }

    #[test]
    fn checked_arithmetic_reports_overflow_and_underflow() {
        let one = Amount::from_base_units(1);
        let two = Amount::from_base_units(2);
        assert_eq!(one.checked_add(two), Ok(Amount::from_base_units(3)));
        assert_eq!(Amount::MAX.checked_add(one), Err(AmountError::Overflow));
        assert_eq!(two.checked_sub(one), Ok(one));
        assert_eq!(one.checked_sub(one), Ok(Amount::ZERO));
        assert_eq!(one.checked_sub(two), Err(AmountError::Underflow));
        assert_eq!(two.checked_mul(3), Ok(Amount::from_base_units(6)));
        assert_eq!(Amount::MAX.checked_mul(2), Err(AmountError::Overflow));
        assert_eq!(Amount::MAX.checked_mul(0), Ok(Amount::ZERO));
        assert_eq!(one.saturating_sub(two), Amount::ZERO);
        assert!(Amount::ZERO.is_zero());
        assert!(!one.is_zero());
    }

    #[test]
    fn base_unit_strings_parse_strictly() {
        assert_eq!("1500".parse::<Amount>(), Ok(Amount::from_base_units(1500)));
        assert_eq!("000".parse::<Amount>(), Ok(Amount::ZERO));
        assert_eq!("".parse::<Amount>(), Err(AmountError::Empty));
        assert_eq!("+1".parse::<Amount>(), Err(AmountError::NotBaseUnits("+1".to_owned())));
        assert_eq!("1.5".parse::<Amount>(), Err(AmountError::NotBaseUnits("1.5".to_owned())));
        assert_eq!("340282366920938463463374607431768211456".parse::<Amount>(), Err(AmountError::Overflow));
        assert_eq!(Amount::from_base_units(1500).to_string(), "1500");
    }

    #[test]
    fn currency_codes_and_decimals_are_validated() {
        assert!(Currency::new("USD", 9).is_ok());
        assert!(Currency::new("ETH", 18).is_ok());
        assert!(Currency::new("A1234567", 38).is_ok());
        for code in ["", "usd", "US D", "ABCDEFGHI", "US-D", "€"] {
            assert_eq!(Currency::new(code, 2), Err(AmountError::BadCurrencyCode(code.into())), "{code:?}");
        }
        assert_eq!(Currency::new("USD", 39), Err(AmountError::DecimalsOutOfRange(39)));
    }

    #[test]
    fn currency_parses_and_formats_in_its_decimals() {
        let usd = Currency::usd();
        assert_eq!(usd.code(), "USD");
        assert_eq!(usd.decimals(), 9);
        assert_eq!(usd.parse("1.5"), Ok(Amount::from_base_units(1_500_000_000)));
        assert_eq!(usd.format(Amount::from_base_units(1_500_000_000)), "1.50 USD");
        assert_eq!(usd.format(Amount::from_base_units(2_000_000_000)), "2.00 USD");
        assert_eq!(usd.format(Amount::from_base_units(4_000)), "0.000004 USD");
        assert_eq!(usd.format(Amount::ZERO), "0.00 USD");
        let cents = Currency::new("EUR", 2).unwrap();
        assert_eq!(cents.parse("0.001"), Err(AmountError::TooPrecise { input: "0.001".into(), decimals: 2 }));
    }

    #[test]
    fn currency_serde_validates() {
        let usd: Currency = serde_json::from_str(r#"{"code":"USD","decimals":9}"#).unwrap();
        assert_eq!(usd, Currency::usd());
        assert_eq!(serde_json::to_string(&usd).unwrap(), r#"{"code":"USD","decimals":9}"#);
        assert!(serde_json::from_str::<Currency>(r#"{"code":"usd","decimals":9}"#).is_err());
        assert!(serde_json::from_str::<Currency>(r#"{"code":"USD","decimals":40}"#).is_err());
        assert!(serde_json::from_str::<Currency>(r#"{"code":"USD","decimals":9,"x":1}"#).is_err());
    }

    #[test]
    fn json_carries_amounts_as_decimal_strings_of_base_units() {
        let amount = Amount::from_base_units(u128::MAX);
        let json = serde_json::to_string(&amount).unwrap();
        assert_eq!(json, "\"340282366920938463463374607431768211455\"");
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), amount);
        assert_eq!(serde_json::from_str::<Amount>("\"1500\"").unwrap(), Amount::from_base_units(1500));
    }

    #[test]
    fn json_refuses_numbers_and_garbage_for_amounts() {
        for json in [
            "1500",
            "1.5",
            "\"1.5\"",
            "\"-1\"",
            "\"\"",
            "\"abc\"",
            "null",
            "[]",
            "\"340282366920938463463374607431768211456\"",
        ] {
            assert!(serde_json::from_str::<Amount>(json).is_err(), "{json}");
        }
    }
}
