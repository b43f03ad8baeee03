//! Key and field names: the layout table of the module doc, spelled out.
//!
//! Every key of one click (its hour bucket, its day's counters, the day index, its
//! interned values, its conversions and deliveries) carries the same shard as a hash tag
//! `{N}`, so one script can write them all, on a cluster too.

use super::SHARDS;
use crate::clickid::created_secs;
use crate::model::{DeliveryStatus, UnixHour};
use crate::store::record::InternKey;
use crate::store::{StoreError, StoreResult};

pub(super) const EVENT_LOG_KEY: &str = "cl:{ev}:log";
pub(super) const EVENT_SEQ_KEY: &str = "cl:{ev}:seq";
pub(super) const LINKS_KEY: &str = "cl:links";
/// The hour up to which personal data has been dropped.
pub(super) const PERSONAL_CURSOR_KEY: &str = "cl:pd";
/// Held by the one process sweeping personal data.
pub(super) const PERSONAL_LOCK_KEY: &str = "cl:pd:lock";

/// The shard of everything that belongs to `click_id`.
pub(super) fn shard(click_id: &str) -> u8 {
    blake3::hash(click_id.as_bytes()).as_bytes()[0] % SHARDS
}

/// The hour bucket holding the clicks of `shard` created in UTC hour `hour`.
pub(super) fn click_bucket_key(shard: u8, hour: UnixHour) -> String {
    tagged_number("cl:ck:", shard, hour)
}

/// `prefix{shard}`, with room for `more` bytes after it. The keys a batch of clicks
/// names and the counter field of each click are built by hand: they are built for every
/// batch and every click, and `format!` costs several times as many instructions.
fn tagged(prefix: &str, shard: u8, more: usize) -> String {
    let mut key = String::with_capacity(prefix.len() + 5 + more);
    key.push_str(prefix);
    key.push('{');
    key.push_str(itoa::Buffer::new().format(shard));
    key.push('}');
    key
}

/// `prefix{shard}:n`.
fn tagged_number(prefix: &str, shard: u8, n: u32) -> String {
    let mut buffer = itoa::Buffer::new();
    let n = buffer.format(n);
    let mut key = tagged(prefix, shard, n.len() + 1);
    key.push(':');
    key.push_str(n);
    key
}

/// The UTC hour a click id was created in (0 for text that is no click id: such a click
/// can only have been stored by a test, and is found where it was put).
pub(super) fn created_hour(click_id: &str) -> UnixHour {
    created_secs(click_id.as_bytes()).map_or(0, |secs| secs / 3600)
}

/// When the bucket of UTC hour `hour` expires (unix seconds): `click_ttl` after the
/// hour ends, so its last click lives as long as its first.
pub(super) fn bucket_expiry(hour: UnixHour, click_ttl_secs: u64) -> u64 {
    (u64::from(hour) + 1) * 3600 + click_ttl_secs
}

pub(super) fn intern_key(shard: u8, key: &InternKey) -> Vec<u8> {
    let mut digits = [0u8; 16];
    hex::encode_to_slice(key, &mut digits).expect("eight bytes are sixteen hex digits");
    let mut text = tagged("cl:in:", shard, 17).into_bytes();
    text.push(b':');
    text.extend_from_slice(&digits);
    text
}

pub(super) fn counters_key(shard: u8, day: u32) -> String {
    tagged_number("cl:ct:", shard, day)
}

pub(super) fn counter_days_key(shard: u8) -> String {
    tagged("cl:ctd:", shard, 0)
}

pub(super) fn conversion_key(shard: u8, conversion_id: &str) -> String {
    format!("cl:cv:{{{shard}}}:{conversion_id}")
}

/// The key of a cap counter (`cap_key` is `network/slug/offer/day`), tagged by its link so
/// that the counters of one click's choices, all offers of one link, share a slot.
pub(super) fn cap_counter_key(link: &str, cap_key: &str) -> String {
    format!("cl:cap:{{{link}}}:{}", cap_key.get(link.len() + 1..).unwrap_or(cap_key))
}

pub(super) fn conversion_times_key(shard: u8) -> String {
    format!("cl:cvt:{{{shard}}}")
}

/// The conversions of one click, in its shard: ids scored by `at`.
pub(super) fn click_conversions_key(shard: u8, click_id: &str) -> String {
    format!("cl:cvc:{{{shard}}}:{click_id}")
}

/// Set once every conversion of `shard` stored before the index by click existed is in it.
pub(super) fn click_index_built_key(shard: u8) -> String {
    format!("cl:cvci:{{{shard}}}")
}

/// The reversed conversions of `shard`: conversion id → reversal time (ms).
pub(super) fn reversals_key(shard: u8) -> String {
    format!("cl:rv:{{{shard}}}")
}

pub(super) fn delivery_key(shard: u8, id: &str) -> String {
    format!("cl:dl:{{{shard}}}:{id}")
}

pub(super) fn outbox_key(shard: u8, destination: &str) -> String {
    format!("cl:ob:{{{shard}}}:{destination}")
}

pub(super) fn lease_owners_key(shard: u8) -> String {
    format!("cl:dlo:{{{shard}}}")
}

pub(super) fn delivery_status_key(shard: u8, status: DeliveryStatus) -> String {
    format!("cl:dls:{{{shard}}}:{}", status.as_str())
}

/// The counters-hash field of one counter of one link in one hour.
pub(super) fn counter_field(hour: UnixHour, name: &str, link: &str) -> String {
    let mut buffer = itoa::Buffer::new();
    let hour = buffer.format(hour);
    let mut field = String::with_capacity(hour.len() + name.len() + link.len() + 2);
    field.push_str(hour);
    field.push('|');
    field.push_str(name);
    field.push('|');
    field.push_str(link);
    field
}

/// The day whose counters hash holds `hour`'s counters.
pub(super) fn day_of_hour(hour: UnixHour) -> u32 {
    hour / 24
}

/// Splits a counters-hash field back into hour, counter name and link.
pub(super) fn parse_counter_field(field: &str) -> StoreResult<(UnixHour, &str, &str)> {
    let corrupt = || StoreError::corrupt(format!("counter field {field:?}"));
    let mut parts = field.splitn(3, '|');
    let hour = parts.next().and_then(|h| h.parse().ok()).ok_or_else(corrupt)?;
    let name = parts.next().ok_or_else(corrupt)?;
    let link = parts.next().ok_or_else(corrupt)?;
    Ok((hour, name, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_click_share_a_hash_tag() {
        let n = shard("abc");
        assert!(n < SHARDS);
        let tag = format!("{{{n}}}");
        for key in [
            click_bucket_key(n, 490_000),
            String::from_utf8_lossy(&intern_key(n, b"12345678")).into_owned(),
            counters_key(n, 20_000),
            counter_days_key(n),
            conversion_key(n, "xyz"),
            conversion_times_key(n),
            click_conversions_key(n, "abc"),
            click_index_built_key(n),
            reversals_key(n),
        ] {
            assert!(key.starts_with("cl:"), "{key}");
            assert!(key.contains(&tag), "{key}");
        }
    }

    /// The layout is fixed forever: the keys built by hand are the ones the layout table
    /// spells out.
    #[test]
    fn keys_built_by_hand_keep_the_layout() {
        for shard in [0, 7, SHARDS - 1] {
            for n in [0u32, 9, 10, 20_416, 490_000, u32::MAX] {
                assert_eq!(click_bucket_key(shard, n), format!("cl:ck:{{{shard}}}:{n}"));
                assert_eq!(counters_key(shard, n), format!("cl:ct:{{{shard}}}:{n}"));
                assert_eq!(counter_field(n, "clicks", "cake/x|y"), format!("{n}|clicks|cake/x|y"));
            }
            assert_eq!(counter_days_key(shard), format!("cl:ctd:{{{shard}}}"));
            for key in [[0u8; 8], *b"12345678", [0xff, 0, 0xa5, 0x5a, 1, 0x10, 0xfe, 0x7f]] {
                let expected = format!("cl:in:{{{shard}}}:{:016x}", u64::from_be_bytes(key));
                assert_eq!(String::from_utf8(intern_key(shard, &key)).ok(), Some(expected));
            }
        }
    }

    #[test]
    fn counter_fields_round_trip_with_bars_in_the_link() {
        let field = counter_field(490_000, "clicks", "net/a|b");
        assert_eq!(parse_counter_field(&field).ok(), Some((490_000, "clicks", "net/a|b")));
        assert!(parse_counter_field("x|clicks|l").is_err());
    }
}
