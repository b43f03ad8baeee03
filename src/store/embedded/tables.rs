//! The embedded store's keyspaces, how they are opened, and the keys of the outbox and
//! of the delivery status index (see the module documentation of `embedded` for what
//! each keyspace holds).

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::model::{DeliveryStatus, UnixMillis};

/// Most bytes of journal kept before memtables are written out to make room.
const JOURNAL_MAX: u64 = 128 * 1024 * 1024;
/// Memtable size of the clicks keyspace.
const CLICKS_MEMTABLE: u64 = 16 * 1024 * 1024;
#[derive(Clone)]
pub(super) struct Tables {
    pub(super) db: Database,
    pub(super) clicks: Keyspace,
    pub(super) conversions: Keyspace,
    pub(super) conversion_ids: Keyspace,
    /// Each click's conversions: click id ‖ 0 ‖ time ‖ conversion id → nothing; the
    /// part after the click's prefix is the conversion's key in `conversions`.
    pub(super) click_conversions: Keyspace,
    /// Reversed conversions: conversion id → reversal time (ms, i64 big-endian).
    pub(super) reversals: Keyspace,
    pub(super) counters: Keyspace,
    pub(super) events: Keyspace,
    pub(super) links: Keyspace,
    pub(super) interns: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) deliveries: Keyspace,
    pub(super) outbox: Keyspace,
    pub(super) delivery_status: Keyspace,
    /// Daily cap counters: `network/slug/offer/day` → count (u32, big-endian).
    pub(super) caps: Keyspace,
}

impl Tables {
    pub(super) fn open(path: &Path) -> Result<Tables, fjall::Error> {
        // The journal is kept until every keyspace with writes in it has flushed; bounding
        // it bounds the disk it takes and the time a restart spends replaying it.
        let db = Database::builder(path).max_journaling_size(JOURNAL_MAX).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        // Clicks now go to the click log; this keyspace keeps those written before it and
        // those whose id is not a click id. Its memtable stays small, as when it took
        // every click: the process's memory stays steady and the skiplist shallow.
        let clicks = db.keyspace("clicks", || KeyspaceCreateOptions::default().max_memtable_size(CLICKS_MEMTABLE))?;
        Ok(Tables {
            clicks,
            conversions: ks("conversions")?,
            conversion_ids: ks("conversion_ids")?,
            click_conversions: ks("click_conversions")?,
            reversals: ks("reversals")?,
            counters: ks("counters")?,
            events: ks("events")?,
            links: ks("links")?,
            interns: ks("interns")?,
            meta: ks("meta")?,
            deliveries: ks("deliveries")?,
            outbox: ks("outbox")?,
            delivery_status: ks("delivery_status")?,
            caps: ks("caps")?,
            db,
        })
    }
}

/// The key of a conversion in `conversions`: its time, then its id, so that a range
/// read finds a period's conversions in order.
pub(super) fn conversion_key(at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&(at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Where a click's entries in `click_conversions` start: its id and a zero byte, which
/// no click id contains, so one click's prefix never covers another's.
pub(super) fn click_conversions_prefix(click_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(click_id.len() + 1 + 8 + 24);
    key.extend_from_slice(click_id.as_bytes());
    key.push(0);
    key
}

/// The `click_conversions` entry of one conversion: its click's prefix, then its key in
/// `conversions`, so the click's conversions come back oldest first.
pub(super) fn click_conversion_key(click_id: &str, at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = click_conversions_prefix(click_id);
    key.extend_from_slice(&conversion_key(at, id));
    key
}

/// The outbox key of a pending delivery: its destination, then the due time, so that a
/// range read finds what is due for one destination.
pub(super) fn outbox_key(destination: &str, next_at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(destination.len() + 9 + id.len());
    key.extend_from_slice(destination.as_bytes());
    key.push(0);
    key.extend_from_slice(&(next_at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The status-index key of a delivery: newest last within a status.
pub(super) fn status_key(status: DeliveryStatus, updated_at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.push(status_byte(status));
    key.extend_from_slice(&(updated_at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

pub(super) fn status_byte(status: DeliveryStatus) -> u8 {
    DeliveryStatus::ALL.iter().position(|s| *s == status).unwrap_or(0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status bytes are stored in index keys: a status added later must take a new byte,
    /// never move the others.
    #[test]
    fn status_bytes_never_move() {
        let bytes: Vec<u8> = DeliveryStatus::ALL.iter().map(|s| status_byte(*s)).collect();
        assert_eq!(bytes, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(status_byte(DeliveryStatus::Skipped), 5);
        assert_eq!(status_byte(DeliveryStatus::Pending), 0);
    }

    #[test]
    fn a_clicks_conversion_keys_sort_by_time_and_stay_under_its_prefix() {
        let prefix = click_conversions_prefix("abc");
        let early = click_conversion_key("abc", 2_000, "zz");
        let late = click_conversion_key("abc", 10_000, "aa");
        assert!(early.starts_with(&prefix) && late.starts_with(&prefix));
        assert!(early < late);
        assert_eq!(&early[prefix.len()..], conversion_key(2_000, "zz").as_slice());
        // A click whose id extends another's is not under the shorter one's prefix.
        assert!(!click_conversion_key("abcd", 2_000, "zz").starts_with(&prefix));
    }
}
