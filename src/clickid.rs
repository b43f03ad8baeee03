//! Click ids: the token that travels to CAKE in `s2` and comes back in the postback.
//!
//! An id is 32 characters of `[0-9A-Za-z]` encoding 23 bytes:
//!
//! | bytes | content |
//! |---|---|
//! | 0..4  | creation time, unix seconds, big-endian (ids sort by time) |
//! | 4     | key id: which secret tagged it (first byte of its hash) |
//! | 5..17 | 96 random bits |
//! | 17..23| 48-bit keyed tag (BLAKE3 keyed hash of bytes 0..17) |
//!
//! The tag lets the postback reject a forged or mangled id without a store read, and
//! the embedded time tells an *expired* id from an *unknown* one. The key id lets a
//! rotated secret keep verifying the ids it minted (`security.previous_secrets`).
//! Bytes 0..16 are written as 22 base62 digits and bytes 16..23 as 10; base62's
//! alphabet is in ASCII order, so the text sorts by creation time like the bytes do.

use std::fmt;

use rand::RngCore;

/// Length of every click id, in characters.
pub const CLICK_ID_LEN: usize = 32;
const RAW_LEN: usize = 23;
const SIGNED_LEN: usize = 17;
const TAG_LEN: usize = RAW_LEN - SIGNED_LEN;
const HEAD_DIGITS: usize = 22;
const TAG_CONTEXT: &str = "cakelink 2026-11 click-id tag v1";

/// A well-formed click id (its tag is checked by [`Keyring::verify`], not by the type).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClickId([u8; CLICK_ID_LEN]);

impl ClickId {
    pub fn as_str(&self) -> &str {
        // Only base62 digits are ever stored in the array.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Creation time in unix seconds.
    pub fn created_at(&self) -> u64 {
        created_secs(&self.0).map_or(0, u64::from)
    }

    /// Parses the text form; checks shape only.
    pub fn parse(text: &str) -> Result<ClickId, ClickIdError> {
        let bytes: [u8; CLICK_ID_LEN] = text.as_bytes().try_into().map_err(|_| ClickIdError::Malformed)?;
        let id = ClickId(bytes);
        id.raw()?;
        Ok(id)
    }

    /// The smallest id text created at `secs`: every id minted earlier sorts below it,
    /// which lets a store drop expired clicks with a range delete instead of a scan.
    pub fn lower_bound(secs: u64) -> ClickId {
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&(secs.min(u32::MAX as u64) as u32).to_be_bytes());
        ClickId::encode(&raw)
    }

    fn raw(&self) -> Result<[u8; RAW_LEN], ClickIdError> {
        let head = base62::decode(&self.0[..HEAD_DIGITS]).map_err(|_| ClickIdError::Malformed)?;
        let tail = base62::decode(&self.0[HEAD_DIGITS..]).map_err(|_| ClickIdError::Malformed)?;
        if tail >= 1u128 << 56 {
            return Err(ClickIdError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN];
        raw[..16].copy_from_slice(&head.to_be_bytes());
        raw[16..].copy_from_slice(&tail.to_be_bytes()[9..]);
        Ok(raw)
    }

    fn encode(raw: &[u8; RAW_LEN]) -> ClickId {
        let mut out = [b'0'; CLICK_ID_LEN];
        let mut head = [0u8; 16];
        head.copy_from_slice(&raw[..16]);
        let mut tail = [0u8; 16];
        tail[9..].copy_from_slice(&raw[16..]);
        write_digits(u128::from_be_bytes(head), &mut out[..HEAD_DIGITS]);
        write_digits(u128::from_be_bytes(tail), &mut out[HEAD_DIGITS..]);
        ClickId(out)
    }
}

/// The creation time (unix seconds) in a click id's text: the top 32 bits of the number
/// its first 22 base62 digits spell. `None` for text not shaped like a click id (its tag
/// is not checked). Both stores place a click by it, on writing and on reading, so this
/// one function decides where every click is; it decodes only what the time needs,
/// where [`ClickId::parse`] decodes all of it.
pub fn created_secs(id: &[u8]) -> Option<u32> {
    if id.len() != CLICK_ID_LEN || !id[HEAD_DIGITS..].iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    // Ten digits at a time fit a u64 (62^10 < 2^64); only the last step needs 128 bits.
    let digits = |text: &[u8]| -> Option<u64> {
        text.iter().try_fold(0u64, |n, &c| {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'Z' => c - b'A' + 10,
                b'a'..=b'z' => c - b'a' + 36,
                _ => return None,
            };
            Some(n * 62 + u64::from(digit))
        })
    };
    const POW2: u128 = 62 * 62;
    const POW12: u128 = POW2 * 62u128.pow(10);
    let (high, mid, low) = (digits(&id[..10])?, digits(&id[10..20])?, digits(&id[20..HEAD_DIGITS])?);
    let head = u128::from(high).checked_mul(POW12)?.checked_add(u128::from(mid) * POW2 + u128::from(low))?;
    Some((head >> 96) as u32)
}

/// Writes `value` right-aligned into `out`, zero-padded to its full width.
fn write_digits(value: u128, out: &mut [u8]) {
    let mut buf = [0u8; 22];
    // 22 digits hold any u128, so encoding cannot fail.
    let len = base62::encode_bytes(value, &mut buf).unwrap_or(0);
    let start = out.len() - len;
    out[start..].copy_from_slice(&buf[..len]);
}

impl fmt::Display for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ClickId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClickId({})", self.as_str())
    }
}

/// Why a click id does not resolve; each maps to a `no_match` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClickIdError {
    #[error("malformed click id")]
    Malformed,
    #[error("forged click id: tag does not verify")]
    Forged,
    #[error("expired click id")]
    Expired,
}

impl ClickIdError {
    /// Short machine-readable reason for the event log.
    pub fn reason(self) -> &'static str {
        match self {
            ClickIdError::Malformed => "malformed_click_id",
            ClickIdError::Forged => "forged_click_id",
            ClickIdError::Expired => "expired_click_id",
        }
    }
}

struct TagKey {
    id: u8,
    key: [u8; 32],
}

impl TagKey {
    fn new(secret: &str) -> TagKey {
        TagKey {
            id: blake3::hash(secret.as_bytes()).as_bytes()[0],
            key: blake3::derive_key(TAG_CONTEXT, secret.as_bytes()),
        }
    }

    fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let hash = blake3::keyed_hash(&self.key, signed);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }
}

/// The current secret, which tags new ids, and the previous ones, which still verify.
pub struct Keyring {
    current: TagKey,
    previous: Vec<TagKey>,
    lifetime_secs: u64,
}

impl Keyring {
    /// `lifetime_secs` is how long an id stays resolvable (attribution plus grace).
    pub fn new(secret: &str, previous: &[String], lifetime_secs: u64) -> Keyring {
        Keyring {
            current: TagKey::new(secret),
            previous: previous.iter().map(|s| TagKey::new(s)).collect(),
            lifetime_secs,
        }
    }

    /// Mints a fresh id created at `now_secs`.
    pub fn mint(&self, now_secs: u64) -> ClickId {
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&(now_secs as u32).to_be_bytes());
        raw[4] = self.current.id;
        rand::rng().fill_bytes(&mut raw[5..SIGNED_LEN]);
        let tag = self.current.tag(&raw[..SIGNED_LEN]);
        raw[SIGNED_LEN..].copy_from_slice(&tag);
        ClickId::encode(&raw)
    }

    /// Checks shape, tag and age of an id received in a postback, without a store read.
    pub fn verify(&self, text: &str, now_secs: u64) -> Result<ClickId, ClickIdError> {
        let id = ClickId::parse(text)?;
        let raw = id.raw()?;
        let (signed, tag) = raw.split_at(SIGNED_LEN);
        let genuine = std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|k| k.id == raw[4])
            .any(|k| subtle::ConstantTimeEq::ct_eq(&k.tag(signed)[..], tag).into());
        if !genuine {
            return Err(ClickIdError::Forged);
        }
        if id.created_at().saturating_add(self.lifetime_secs) < now_secs {
            return Err(ClickIdError::Expired);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_795_000_000;

    fn ring() -> Keyring {
        Keyring::new("s3cret", &[], 37 * DAY)
    }

    #[test]
    fn minted_ids_verify_and_carry_their_time() {
        let ring = ring();
        let id = ring.mint(NOW);
        assert_eq!(id.as_str().len(), CLICK_ID_LEN);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(ring.verify(id.as_str(), NOW + 5).unwrap(), id);
        assert_eq!(id.created_at(), NOW);
    }

    #[test]
    fn ids_are_distinct_and_sort_by_time() {
        let ring = ring();
        let a = ring.mint(NOW);
        let b = ring.mint(NOW);
        let c = ring.mint(NOW + 1);
        assert_ne!(a, b);
        assert!(a.as_str() < c.as_str() && b.as_str() < c.as_str());
    }

    #[test]
    fn tells_malformed_forged_and_expired_apart() {
        let ring = ring();
        let id = ring.mint(NOW);
        assert_eq!(ring.verify("abc", NOW), Err(ClickIdError::Malformed));
        assert_eq!(ring.verify(&"-".repeat(32), NOW), Err(ClickIdError::Malformed));
        assert_eq!(ring.verify(&"z".repeat(32), NOW), Err(ClickIdError::Malformed));
        let mut mangled = id.as_str().to_owned().into_bytes();
        mangled[12] = if mangled[12] == b'a' { b'b' } else { b'a' };
        assert_eq!(ring.verify(std::str::from_utf8(&mangled).unwrap(), NOW), Err(ClickIdError::Forged));
        let other = Keyring::new("another", &[], 37 * DAY).mint(NOW);
        assert_eq!(ring.verify(other.as_str(), NOW), Err(ClickIdError::Forged));
        assert_eq!(ring.verify(id.as_str(), NOW + 37 * DAY), Ok(id));
        assert_eq!(ring.verify(id.as_str(), NOW + 37 * DAY + 1), Err(ClickIdError::Expired));
    }

    #[test]
    fn rotated_secret_keeps_old_ids_valid() {
        let old = Keyring::new("old", &[], DAY).mint(NOW);
        let rotated = Keyring::new("new", &["old".to_owned()], DAY);
        assert_eq!(rotated.verify(old.as_str(), NOW), Ok(old));
        let fresh = rotated.mint(NOW);
        assert_eq!(Keyring::new("old", &[], DAY).verify(fresh.as_str(), NOW), Err(ClickIdError::Forged));
    }

    #[test]
    fn the_creation_time_is_the_one_minted_in() {
        let ring = ring();
        for secs in [0, 1, NOW, NOW + 3_599, u64::from(u32::MAX)] {
            for _ in 0..50 {
                let id = ring.mint(secs);
                assert_eq!(created_secs(id.as_str().as_bytes()).map(u64::from), Some(secs), "{id}");
                assert_eq!(id.created_at(), secs, "{id}");
            }
        }
        assert_eq!(created_secs(b"c"), None);
        assert_eq!(created_secs(&[b'z'; 32]), None, "beyond 128 bits");
        assert_eq!(created_secs(b"0000000000000000000000000000000-"), None);
    }

    proptest! {
        #[test]
        fn verify_never_panics(text in "[0-9A-Za-z]{0,40}|.{0,40}") {
            let _ = ring().verify(&text, NOW);
        }

        #[test]
        fn encoding_round_trips(raw in proptest::array::uniform23(any::<u8>())) {
            let id = ClickId::encode(&raw);
            prop_assert_eq!(ClickId::parse(id.as_str()).unwrap().raw().unwrap(), raw);
            let secs = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            prop_assert_eq!(created_secs(id.as_str().as_bytes()), Some(secs));
        }
    }
}
