//! A value that must never reach a log line or an error message: the click-id key, the
//! admin token, the postback key and the ad platforms' credentials.
//!
//! It lives on its own so that whoever holds a secret (the config reader, the forwarders)
//! depends only on this small type and not on each other.

use std::fmt;

/// A secret value: `Debug` prints `[redacted]`, and the only way to the text is the
/// explicit [`Secret::expose`], so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; from here on it is printed as `[redacted]`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The text itself, for the one place that has to use it (signing, a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Token and key comparison in constant time. Both sides are hashed first, so
/// that not even the secret's length shows in the timing.
pub(crate) fn secret_matches(given: &[u8], expected: &[u8]) -> bool {
    let (given, expected) = (blake3::hash(given), blake3::hash(expected));
    subtle::ConstantTimeEq::ct_eq(&given.as_bytes()[..], &expected.as_bytes()[..]).into()
}
