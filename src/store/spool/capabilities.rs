//! What the spool changes of the store it wraps: click recording and reading (spooled
//! clicks stay readable), conversion, reversal and event writes (refused or spooled while
//! the store is down), and health (a flush also fsyncs the spool). Everything else (links, the
//! outbox, report reads) goes straight to the backend through `Storage`.

use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::file::io_error;
use super::{Entry, SpooledStore, DIRECT};
use crate::model::{
    Click, ClickView, Conversion, Event, EventStatus, HourCounters, Recorded, Reversed, UnixHour, UnixMillis,
};
use crate::store::{
    CapClaim, ClickOrigin, ClickStore, ConversionStore, EventLog, Health, NodeState, StoreError, StoreResult,
};

#[async_trait]
impl ClickStore for SpooledStore {
    async fn record_click(&self, click: ClickView<'_>, origin: ClickOrigin) -> StoreResult<()> {
        self.record_or_spool_click(click, origin).await
    }

    async fn record_capped_click(&self, click: ClickView<'_>, claim: &CapClaim) -> StoreResult<Option<usize>> {
        self.record_or_spool_capped_click(click, claim).await
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        if self.mode.load(Ordering::Acquire) != DIRECT {
            if let Some(click) = self.spooled_click(click_id) {
                return Ok(Some(click));
            }
        }
        self.inner.find_click(click_id).await
    }
}

#[async_trait]
impl ConversionStore for SpooledStore {
    /// Conversions come only from postbacks, which are queued whole while spooling: a
    /// conversion written now could overtake a queued one.
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        if self.mode.load(Ordering::Acquire) != DIRECT {
            return Err(StoreError::unavailable(
                "recording a conversion",
                "the store is down or replaying its outage spool",
            ));
        }
        self.inner.record_conversion(conversion).await
    }

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        self.inner.counters(from, to).await
    }

    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>> {
        self.inner.conversions(from, to).await
    }

    async fn conversions_of_click(&self, click_id: &str) -> StoreResult<Vec<Conversion>> {
        self.inner.conversions_of_click(click_id).await
    }

    /// Reversals come from postbacks too, and are never spooled: while the store is down
    /// or replaying, one could overtake the queued postback of the very conversion it
    /// reverses. The caller gets the store's outage error and queues the postback whole.
    async fn reverse_conversion(&self, conversion: &Conversion, at: UnixMillis) -> StoreResult<Reversed> {
        if self.mode.load(Ordering::Acquire) != DIRECT {
            return Err(StoreError::unavailable(
                "reversing a conversion",
                "the store is down or replaying its outage spool",
            ));
        }
        self.inner.reverse_conversion(conversion, at).await
    }
}

#[async_trait]
impl EventLog for SpooledStore {
    async fn log_event(&self, event: &Event) -> StoreResult<()> {
        if self.mode.load(Ordering::Acquire) == DIRECT {
            match self.inner.log_event(event).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "the store refused an event; spooling it"),
            }
            return self.write(Entry::Event(event.clone()), true).await;
        }
        self.write(Entry::Event(event.clone()), false).await
    }

    async fn events(&self, status: Option<EventStatus>, limit: usize) -> StoreResult<Vec<Event>> {
        self.inner.events(status, limit).await
    }
}

#[async_trait]
impl Health for SpooledStore {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn sweep(&self) -> StoreResult<()> {
        self.inner.sweep().await
    }

    /// Fsyncs the spool, then flushes the inner store. While the store is down its
    /// flush may fail; the spool holds what it could not take.
    async fn flush(&self) -> StoreResult<()> {
        self.sync().map_err(io_error)?;
        match self.inner.flush().await {
            Err(e) if self.is_spooling() => {
                tracing::warn!(error = %e, "store flush failed while spooling");
                Ok(())
            }
            other => other,
        }
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn nodes(&self) -> Vec<NodeState> {
        self.inner.nodes()
    }
}
