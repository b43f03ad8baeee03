//! Daily caps in the embedded store: one counter per link, offer and cap day, in the
//! `caps` keyspace, read and moved only by the writer thread.
//!
//! The writer is the only one who writes, so a check followed by an increment is atomic
//! as long as both happen while it builds one batch: this batch's counts are kept in
//! memory, starting from what is stored, and written with the clicks they admitted. A
//! batch that fails to commit leaves neither the clicks nor the counts.

use std::collections::HashMap;

use fjall::Keyspace;

use crate::store::schema::{CapChoice, CAP_KEEP_SECS};

/// The cap counts one batch reads and moves.
pub(super) struct BatchCaps {
    counts: HashMap<String, u32>,
}

impl BatchCaps {
    pub(super) fn new() -> BatchCaps {
        BatchCaps { counts: HashMap::new() }
    }

    /// The index of the first of `choices` with room, counting one click against it;
    /// `None` when every one is full.
    pub(super) fn admit(&mut self, table: &Keyspace, choices: &[CapChoice]) -> Result<Option<usize>, fjall::Error> {
        for (i, choice) in choices.iter().enumerate() {
            let Some(cap) = choice.cap else { return Ok(Some(i)) };
            let count = match self.counts.get(&choice.cap_key) {
                Some(n) => *n,
                None => stored_count(table, &choice.cap_key)?,
            };
            if count < cap {
                self.counts.insert(choice.cap_key.clone(), count + 1);
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Puts the counts this batch moved into it.
    pub(super) fn write(self, batch: &mut fjall::OwnedWriteBatch, table: &Keyspace) {
        for (key, count) in self.counts {
            batch.insert(table, key.as_bytes(), count.to_be_bytes());
        }
    }
}

fn stored_count(table: &Keyspace, key: &str) -> Result<u32, fjall::Error> {
    Ok(table.get(key.as_bytes())?.and_then(|v| v.as_ref().try_into().ok()).map(u32::from_be_bytes).unwrap_or(0))
}

/// Keys of counters whose day ended long enough ago (`network/slug/offer/day`).
pub(super) fn expired(table: &Keyspace, now_secs: u64) -> Vec<Vec<u8>> {
    let today = (now_secs / 86_400) as u32;
    let keep_days = (CAP_KEEP_SECS / 86_400) as u32;
    table
        .iter()
        .filter_map(|kv| kv.key().ok())
        .filter(|key| {
            let day =
                std::str::from_utf8(key.as_ref()).ok().and_then(|k| k.rsplit('/').next()).and_then(|d| d.parse().ok());
            day.is_some_and(|d: u32| d.saturating_add(keep_days) < today)
        })
        .map(|key| key.to_vec())
        .collect()
}
