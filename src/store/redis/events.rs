//! The event log: one capped list, newest first.
//!
//! Each entry is `<seq>|<postcard Event>`. The sequence number lets a filtered listing,
//! which reads the list in chunks, skip entries that concurrent writes pushed back into
//! a later chunk.

use async_trait::async_trait;

use super::keys::EVENT_LOG_KEY;
use super::{scripts, unavailable, RedisStore};
use crate::model::{Event, EventStatus};
use crate::store::schema::{decode, encode};
use crate::store::{EventLog, StoreError, StoreResult};

/// Event-log entries read per request while filtering by status.
const EVENT_CHUNK: usize = 256;

#[async_trait]
impl EventLog for RedisStore {
    async fn log_event(&self, event: &Event) -> StoreResult<()> {
        let call = scripts::log_event(&self.scripts.log_event, encode(event), self.limits.event_log_max.max(1));
        let _: i64 = self.writes.invoke(&call).await?;
        Ok(())
    }

    async fn events(&self, status: Option<EventStatus>, limit: usize) -> StoreResult<Vec<Event>> {
        let want = limit.min(self.limits.event_log_max.max(1));
        let mut out = Vec::new();
        if want == 0 {
            return Ok(out);
        }
        // Without a filter the first `want` entries are the answer: one request.
        let chunk = if status.is_none() { want } else { EVENT_CHUNK };
        let mut con = self.con();
        let mut start = 0usize;
        // Sequence number of the oldest entry seen: anything at or above it that shows
        // up again was pushed back by newer events and was already looked at.
        let mut below = u64::MAX;
        loop {
            let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(EVENT_LOG_KEY)
                .arg(start)
                .arg(start + chunk - 1)
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            let got = entries.len();
            for entry in entries {
                let (seq, event) = parse_event_entry(&entry)?;
                if seq >= below {
                    continue;
                }
                below = seq;
                if status.is_none_or(|s| s == event.status) {
                    out.push(event);
                    if out.len() >= want {
                        return Ok(out);
                    }
                }
            }
            if got < chunk {
                return Ok(out);
            }
            start += chunk;
        }
    }
}

/// Splits an event-log entry into its sequence number and event.
fn parse_event_entry(entry: &[u8]) -> StoreResult<(u64, Event)> {
    let corrupt = || StoreError::corrupt("event-log entry without a sequence number");
    let bar = entry.iter().position(|&b| b == b'|').ok_or_else(corrupt)?;
    let seq = std::str::from_utf8(&entry[..bar]).ok().and_then(|s| s.parse().ok()).ok_or_else(corrupt)?;
    Ok((seq, decode(&entry[bar + 1..])?))
}
