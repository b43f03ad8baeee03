//! Exact money: integer micro-units (millionths of the currency unit), never a float.
//!
//! Networks send payouts as decimal text (`"7"`, `"12.345678"`); a float would turn
//! `0.1 + 0.2` into `0.30000000000000004` and drift over a month of conversions, so
//! the text is parsed by `rust_decimal` and kept as an `i64` count of micro-units.
//! Six decimals cover every currency and CAKE's own precision.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Micro-units per currency unit.
const SCALE: i64 = 1_000_000;

/// An exact, non-negative amount of money in micro-units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Money(i64);

/// Why a money value was refused; the text goes back to the network in the postback answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not a decimal number")]
    NotDecimal,
    #[error("negative amounts are not accepted")]
    Negative,
    #[error("more than 6 decimal places")]
    TooPrecise,
    #[error("amount too large")]
    TooLarge,
}

impl Money {
    pub const ZERO: Money = Money(0);

    /// Builds an amount from micro-units.
    pub const fn from_micros(micros: i64) -> Money {
        Money(micros)
    }

    /// The amount in micro-units.
    pub const fn micros(self) -> i64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses decimal text such as `7`, `7.5`, `+0.10` or `12.345678`.
    ///
    /// Thousands separators, exponents, currency signs and more than six significant
    /// decimals are refused rather than guessed at: money is either exact or rejected.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let text = text.trim();
        let plain = text.strip_prefix('+').unwrap_or(text);
        // `Decimal::from_str` accepts `_` separators and other leniencies; only plain
        // digits with at most one point are money here.
        let digits_ok = !plain.is_empty()
            && plain.bytes().filter(|b| *b == b'.').count() <= 1
            && plain.strip_prefix('-').unwrap_or(plain).bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && plain.bytes().any(|b| b.is_ascii_digit());
        if !digits_ok {
            return Err(MoneyError::NotDecimal);
        }
        let value = Decimal::from_str_exact(plain).map_err(|e| match e {
            rust_decimal::Error::ExceedsMaximumPossibleValue | rust_decimal::Error::LessThanMinimumPossibleValue => {
                MoneyError::TooLarge
            }
            rust_decimal::Error::Underflow => MoneyError::TooPrecise,
            _ => MoneyError::NotDecimal,
        })?;
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::Negative);
        }
        let value = value.normalize();
        if value.scale() > 6 {
            return Err(MoneyError::TooPrecise);
        }
        let micros =
            value.checked_mul(Decimal::from(SCALE)).and_then(|m| i64::try_from(m).ok()).ok_or(MoneyError::TooLarge)?;
        Ok(Money(micros))
    }

    /// Adds two amounts; saturates instead of wrapping (a sum past 9.2 trillion units
    /// is not a real report, but must not panic or turn negative).
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

/// Decimal text with at least two decimals and no trailing zeros past them:
/// `7.00`, `0.10`, `12.345678`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let units = abs / SCALE as u64;
        let mut frac = abs % SCALE as u64;
        let mut places = 6;
        while places > 2 && frac % 10 == 0 {
            frac /= 10;
            places -= 1;
        }
        write!(f, "{sign}{units}.{frac:0places$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_networks_send() {
        assert_eq!(Money::parse("7").unwrap().micros(), 7_000_000);
        assert_eq!(Money::parse("7.5").unwrap().micros(), 7_500_000);
        assert_eq!(Money::parse("+0.10").unwrap().micros(), 100_000);
        assert_eq!(Money::parse("12.345678").unwrap().micros(), 12_345_678);
        assert_eq!(Money::parse("12.3456780").unwrap().micros(), 12_345_678);
        assert_eq!(Money::parse("0").unwrap(), Money::ZERO);
        assert_eq!(Money::parse("-0").unwrap(), Money::ZERO);
        assert_eq!(Money::parse(".5").unwrap().micros(), 500_000);
    }

    #[test]
    fn refuses_what_is_not_exact_money() {
        assert_eq!(Money::parse("-1"), Err(MoneyError::Negative));
        assert_eq!(Money::parse("1.2345678"), Err(MoneyError::TooPrecise));
        for bad in ["", "abc", "1,000.00", "1e3", "$7", "1_000", "1.2.3", ".", "NaN", "inf"] {
            assert_eq!(Money::parse(bad), Err(MoneyError::NotDecimal), "{bad}");
        }
        assert_eq!(Money::parse("99999999999999999999"), Err(MoneyError::TooLarge));
    }

    #[test]
    fn formats_with_at_least_two_decimals() {
        assert_eq!(Money::from_micros(7_000_000).to_string(), "7.00");
        assert_eq!(Money::from_micros(100_000).to_string(), "0.10");
        assert_eq!(Money::from_micros(12_345_678).to_string(), "12.345678");
        assert_eq!(Money::from_micros(1).to_string(), "0.000001");
        assert_eq!(Money::ZERO.to_string(), "0.00");
    }

    proptest! {
        #[test]
        fn display_parses_back(micros in 0i64..i64::MAX / 2) {
            let m = Money::from_micros(micros);
            prop_assert_eq!(Money::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = Money::parse(&text);
        }
    }
}
