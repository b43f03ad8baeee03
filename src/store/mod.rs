//! Storage: one trait, spoken in the domain's words, and a backend per file.
//!
//! - [`embedded`]: fjall in one directory, the default; no server to run.
//! - [`redis`]: one Redis or a Redis Cluster, shared by several cakelink processes.
//! - [`spool`]: wraps either backend; keeps clicks and postbacks on local disk while
//!   the backend is down and replays them when it is back.
//!
//! Every write that changes a figure (a click, a conversion) also updates the per-link,
//! per-UTC-hour [`Counters`](crate::model::Counters) in the same atomic operation, so reports read only counters
//! and never disagree with the raw records. Recording is idempotent: replaying a click
//! or a conversion never counts twice.

pub mod embedded;
pub mod record;
pub mod redis;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Click, Conversion, Event, HourCounters, Link, Recorded, UnixHour, UnixMillis};

/// A store failure. The cause is for the log; clients only learn that the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("store is shutting down")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What every backend keeps and answers.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a click and counts it (as a click or a bot hit) in its hour. Once this
    /// returns `Ok`, the click survives a crash of the process. Recording the same click
    /// id again changes nothing.
    async fn record_click(&self, click: &Click) -> StoreResult<()>;

    /// [`Store::record_click`] for a click whose id was minted for this very request: with
    /// 96 random bits in it, it cannot be stored already, so a backend may skip looking.
    async fn record_new_click(&self, click: &Click) -> StoreResult<()> {
        self.record_click(click).await
    }

    /// The stored click, or `None` when it is unknown or has expired.
    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>>;

    /// Stores a conversion and counts it, unless a conversion with the same id exists.
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded>;

    /// Appends to the capped event log (oldest entries dropped first).
    async fn log_event(&self, event: &Event) -> StoreResult<()>;

    /// Newest first, optionally only those with `status`, at most `limit`.
    async fn events(&self, status: Option<&str>, limit: usize) -> StoreResult<Vec<Event>>;

    /// Counters of every link for the hours `from..=to`.
    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>>;

    /// Conversions recorded in `from..to` (milliseconds), oldest first.
    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>>;

    /// Links created through the API (config links live in the config).
    async fn links(&self) -> StoreResult<Vec<Link>>;
    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>>;
    async fn put_link(&self, link: &Link) -> StoreResult<()>;
    /// Whether a link was there to delete.
    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool>;

    /// Answers when the store can take writes.
    async fn ping(&self) -> StoreResult<()>;

    /// Does now the housekeeping that otherwise runs on a timer: drops expired clicks
    /// (where the backend does not expire them itself) and the personal data of clicks
    /// past [`StoreLimits::personal_ttl`].
    async fn sweep(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Flushes pending writes to durable storage; called on shutdown.
    async fn flush(&self) -> StoreResult<()>;

    /// Short name for `/readyz` and `/metrics`.
    fn backend(&self) -> &'static str;
}

/// How long stored clicks keep their IP address and user agent: long enough for every
/// conversion API (Meta takes events up to 7 days old), no longer.
pub const PERSONAL_DATA_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Settings every backend needs beside its own address.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// How long a click stays resolvable: attribution plus postback grace.
    pub click_ttl: Duration,
    /// Most event-log entries kept.
    pub event_log_max: usize,
    /// How long a click keeps its IP address and user agent (they serve only the
    /// conversion APIs); after that they are dropped from the stored click.
    pub personal_ttl: Duration,
}

/// Where the data lives, from `[store]`.
#[derive(Clone, Debug)]
pub enum Backend {
    Embedded { path: std::path::PathBuf, fsync: Duration },
    Redis { url: String },
    RedisCluster { urls: Vec<String> },
}

/// Opens the configured backend.
pub async fn open(backend: &Backend, limits: StoreLimits) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Embedded { path, fsync } => Arc::new(embedded::EmbeddedStore::open(path, *fsync, limits)?),
        Backend::Redis { url } => Arc::new(redis::RedisStore::connect(url, limits).await?),
        Backend::RedisCluster { urls } => Arc::new(redis::RedisStore::connect_cluster(urls, limits).await?),
    })
}
