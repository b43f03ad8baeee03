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
//!
//! The store is also the forwarding outbox: it is opened with the [`OutboxRoutes`] (which
//! destination wants which events), and recording a conversion, or a person's click when
//! some destination asked for clicks, enqueues one [`Delivery`] per destination in the same
//! atomic write. The forwarding worker then claims due entries under a lease, so several
//! processes sharing one Redis deliver each entry once and take over a dead one's entries.

pub mod embedded;
pub mod record;
pub mod redis;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    Click, Conversion, Delivery, DeliveryStatus, Event, HourCounters, Link, Recorded, Subject, UnixHour, UnixMillis,
};

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

    /// Up to `limit` pending deliveries to `destination` due at `now`, leased to `owner`
    /// until `now + lease`: no other claim returns them before the lease ends or `owner`
    /// settles them. Each destination has its own queue, so a slow one holds up no other.
    async fn claim_deliveries(
        &self,
        owner: &str,
        destination: &str,
        now: UnixMillis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    /// Stores the outcome of an attempt (the delivery as it now stands: pending again with
    /// a later `next_at`, or settled). `false` when `owner` no longer held the lease, in
    /// which case nothing changes.
    async fn finish_delivery(&self, owner: &str, delivery: &Delivery) -> StoreResult<bool>;

    /// Deliveries, most recently updated first, optionally only those with `status` or
    /// for `destination`, at most `limit`.
    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    /// Every delivery of one event (`event_id`, whose click is `click_id`).
    async fn deliveries_of(&self, click_id: &str, event_id: &str) -> StoreResult<Vec<Delivery>>;

    /// Puts a failed or expired delivery back in the queue, due at `now`, with its
    /// attempts reset.
    async fn requeue_delivery(&self, id: &str, now: UnixMillis) -> StoreResult<Requeue>;

    /// Pending deliveries of the configured destinations, leased ones included.
    async fn outbox_depth(&self) -> StoreResult<u64>;

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
    /// Which destinations a recorded conversion or click is enqueued for.
    pub outbox: OutboxRoutes,
}

/// What re-queuing a delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    Done(Box<Delivery>),
    NotFound,
    /// Only failed and expired deliveries go back in the queue.
    NotDeadLettered(DeliveryStatus),
}

/// One destination as the outbox sees it: which events it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRoute {
    pub destination: String,
    /// Conversion events it takes; `None` for all of them.
    pub events: Option<Vec<String>>,
    /// Whether it takes people's clicks (as `ViewContent`).
    pub clicks: bool,
    /// Ad click ids of which the click must carry one (Google needs a gclid, gbraid or
    /// wbraid); empty when any click will do.
    pub requires_any: Vec<String>,
}

impl OutboxRoute {
    fn takes(&self, click: &Click) -> bool {
        self.requires_any.is_empty() || click.ad_click_ids.iter().any(|(k, _)| self.requires_any.contains(k))
    }
}

/// The enabled destinations, in config order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxRoutes {
    routes: Vec<OutboxRoute>,
    wants_clicks: bool,
    /// How long settled deliveries are kept; `None` keeps them for ever.
    keep_settled: Option<Duration>,
}

impl OutboxRoutes {
    pub fn new(routes: Vec<OutboxRoute>) -> OutboxRoutes {
        let wants_clicks = routes.iter().any(|r| r.clicks);
        OutboxRoutes { routes, wants_clicks, keep_settled: None }
    }

    /// Drops delivered, failed, expired and dry-run deliveries `keep` after their last
    /// update.
    pub fn keep_settled_for(mut self, keep: Duration) -> OutboxRoutes {
        self.keep_settled = Some(keep);
        self
    }

    pub fn keep_settled(&self) -> Option<Duration> {
        self.keep_settled
    }

    /// Whether any destination takes clicks; when none does, recording a click does no
    /// outbox work at all.
    pub fn wants_clicks(&self) -> bool {
        self.wants_clicks
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn destinations(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.destination.as_str())
    }

    /// The deliveries recording `conversion` enqueues.
    pub fn for_conversion(&self, conversion: &Conversion, now: UnixMillis) -> Vec<Delivery> {
        self.routes
            .iter()
            .filter(|r| r.events.as_ref().is_none_or(|e| e.contains(&conversion.event)) && r.takes(&conversion.click))
            .map(|r| Delivery::new(&r.destination, Subject::Conversion(Box::new(conversion.clone())), now))
            .collect()
    }

    /// The deliveries recording `click` enqueues: none for a bot.
    pub fn for_click(&self, click: &Click, now: UnixMillis) -> Vec<Delivery> {
        if !self.wants_clicks || click.is_bot() {
            return Vec::new();
        }
        self.routes
            .iter()
            .filter(|r| r.clicks && r.takes(click))
            .map(|r| Delivery::new(&r.destination, Subject::Click(Box::new(click.clone())), now))
            .collect()
    }
}

/// Now, in milliseconds since the epoch.
pub(crate) fn now_ms() -> UnixMillis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
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
