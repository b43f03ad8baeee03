//! Replaying the spool into the store once it answers again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;

use super::file::{io_error, read_frame};
use super::{Entry, Resolve, SpooledStore, DIRECT, DRAINING, DRAIN_AT, REPLAY_CHUNK, SPOOLING};
use crate::store::{ClickOrigin, StoreError, StoreResult};
use crate::telemetry;

impl SpooledStore {
    /// Replays the spool into the inner store, in order, and empties it.
    pub(super) async fn replay(&self, resolver: &dyn Resolve) -> StoreResult<u64> {
        let _one = self.replaying.lock().await;
        // However the replay ends (an error, or its future dropped at a shutdown
        // deadline), writers waiting for a drain must not wait forever.
        let _undrain = Undrain(self);
        let mut offset = 0u64;
        let mut done = 0u64;
        loop {
            let end = self.lock().len;
            let mut entries = Vec::new();
            let mut next = offset;
            while entries.len() < REPLAY_CHUNK {
                match read_frame(&self.reader, next, end) {
                    Some((entry, after)) => {
                        entries.push(entry);
                        next = after;
                    }
                    None => break,
                }
            }
            if entries.is_empty() {
                if end > offset {
                    let e = StoreError::corrupt(format!("outage spool record at byte {offset} does not verify"));
                    return Err(e);
                }
                let mut f = self.lock();
                if f.len != offset {
                    continue;
                }
                f.file.set_len(0).map_err(io_error)?;
                f.len = 0;
                f.records = 0;
                f.clicks = HashMap::new();
                f.postbacks = Vec::new();
                f.dirty = true;
                self.full.store(false, Ordering::Relaxed);
                self.mode.store(DIRECT, Ordering::Release);
                self.publish(0, 0);
                drop(f);
                self.drained.notify_waiters();
                if done > 0 {
                    tracing::info!(records = done, "outage spool replayed into the store and emptied");
                }
                return Ok(done);
            }
            let n = entries.len() as u64;
            self.apply(entries, resolver).await?;
            done += n;
            self.replayed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(telemetry::SPOOL_REPLAYED).increment(n);
            offset = next;
            let f = self.lock();
            if f.len.saturating_sub(offset) <= DRAIN_AT {
                // The last few records: new writes wait for them so that the switch
                // back to the store cannot be overtaken.
                self.mode.store(DRAINING, Ordering::Release);
            }
        }
    }

    /// Writes a chunk of replayed records to the inner store, in three concurrent waves:
    /// every click first (no click depends on another), then every postback (each
    /// postback's click came before it in the spool, so it is stored by now; two copies of
    /// one postback share their conversion id, which the store records once), then the
    /// event-log entries in their order. Waiting for each record in turn would replay
    /// slower than a busy site spools, and the spool would never drain.
    async fn apply(&self, entries: Vec<Result<Entry, postcard::Error>>, resolver: &dyn Resolve) -> StoreResult<()> {
        let mut clicks = Vec::new();
        let mut postbacks = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            match entry {
                Ok(Entry::Click(click)) => clicks.push(click),
                Ok(Entry::Postback(postback)) => postbacks.push(postback),
                Ok(Entry::Event(event)) => events.push(event),
                // The frame verified, so this is a record of another version: keep going.
                Err(e) => tracing::error!(error = %e, "outage spool record cannot be read; skipped"),
            }
        }
        first_error(
            join_all(clicks.iter().map(|click| self.inner.record_click(click.view(), ClickOrigin::Replayed))).await,
        )?;
        first_error(join_all(postbacks.iter().map(|postback| resolver.resolve(&*self.inner, postback))).await)?;
        for event in &events {
            self.inner.log_event(event).await?;
        }
        Ok(())
    }
}

/// `Ok` when every write succeeded, else the first error (the whole chunk is replayed
/// again later; replaying is idempotent).
fn first_error(results: Vec<StoreResult<()>>) -> StoreResult<()> {
    results.into_iter().collect()
}

/// Ends a replay: if it stopped while draining, writers that wait for the drain go back
/// to the spool.
struct Undrain<'a>(&'a SpooledStore);

impl Drop for Undrain<'_> {
    fn drop(&mut self) {
        let store = self.0;
        let guard = store.lock();
        if store.mode.load(Ordering::Acquire) == DRAINING {
            store.mode.store(SPOOLING, Ordering::Release);
        }
        drop(guard);
        store.drained.notify_waiters();
    }
}
