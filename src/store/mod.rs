//! Storage: small capabilities, spoken in the domain's words, over one schema.
//!
//! Each caller holds only the capability it uses: the redirect a [`ClickStore`] (through
//! the spool), the postback clicks, conversions and the [`EventLog`], the link catalog a
//! [`LinkStore`], the forwarding worker the [`Outbox`], `/readyz` the [`Health`]. A
//! backend implements them all, which makes it a [`Store`]. What a write does (its
//! record, interned values, counter increments and deliveries) is decided once, in
//! [`schema`], so the backends keep only their I/O.
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
mod legacy;
mod record;
pub mod redis;
mod schema;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use schema::{OutboxRoute, OutboxRoutes};
use spool::SpooledStore;

use crate::model::{
    Click, ClickView, Conversion, Delivery, DeliveryStatus, Event, EventStatus, HourCounters, Link, Recorded, Reversed,
    UnixHour, UnixMillis,
};

/// A store failure. The cause is for the log; clients only learn that the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer or refused the write; the source says why.
    #[error("store unavailable: {what}")]
    Unavailable {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// A stored record did not decode: retrying cannot mend it.
    #[error("stored record is corrupt: {what}")]
    Corrupt {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The store is down and the outage spool has no room left for the write.
    #[error("the store is down and the outage spool is full")]
    SpoolFull,
    #[error("store is shutting down")]
    Closed,
}

/// Any error a backend's driver reports, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// The store could not do `what`, because of `source`.
    pub fn unavailable(what: &'static str, source: impl Into<BoxError>) -> StoreError {
        StoreError::Unavailable { what, source: source.into() }
    }

    /// A record (`what`) that does not decode.
    pub fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt { what: what.into(), source: None }
    }

    /// Whether waiting can mend it (the store is down or busy), unlike a corrupt record.
    pub fn is_outage(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where a click's id came from, which tells a backend whether the click can be stored
/// already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClickOrigin {
    /// Minted for this very request: with 96 random bits it cannot be stored yet, so the
    /// backend need not look.
    Minted,
    /// Seen before, or possibly (a replay of the outage spool, an import): the backend
    /// records it only if it is not there yet.
    Replayed,
}

/// The daily caps a person's click is subject to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapClaim {
    /// The cap day: days since the epoch in the link's `cap_tz`.
    pub day: u32,
    /// Offers the click may take, in order; all but the last have a cap.
    pub candidates: Vec<CapCandidate>,
}

/// One offer a capped click may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapCandidate {
    pub offer: String,
    /// Human clicks admitted per cap day; `None` for no cap.
    pub cap: Option<u32>,
}

/// Clicks: what the redirect writes and the postback reads.
#[async_trait]
pub trait ClickStore: Send + Sync + 'static {
    /// Stores a click and counts it (as a click or a bot hit) in its hour. Once this
    /// returns `Ok`, the click survives a crash of the process. Recording the same click
    /// id again changes nothing.
    async fn record_click(&self, click: ClickView<'_>, origin: ClickOrigin) -> StoreResult<()>;

    /// Records a person's click (whose `offer` is not set yet) sent to the first of
    /// `claim`'s candidates whose daily cap has room: that offer's count for the cap day
    /// moves in the same atomic write as the click, so a cap admits exactly its number
    /// of clicks whatever the concurrency. Returns the index of the candidate taken, or
    /// `None` when all were full (the click is then stored as sent to the fallback,
    /// `capped`). A freshly minted click is never stored twice, so this is not replayed.
    async fn record_capped_click(&self, click: ClickView<'_>, claim: &CapClaim) -> StoreResult<Option<usize>>;

    /// The stored click, or `None` when it is unknown or has expired.
    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>>;
}

/// Conversions, and the figures reports read.
#[async_trait]
pub trait ConversionStore: Send + Sync + 'static {
    /// Stores a conversion and counts it, unless a conversion with the same id exists.
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded>;

    /// Counters of every link for the hours `from..=to`.
    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>>;

    /// Conversions recorded in `from..to` (milliseconds), oldest first, reversed ones
    /// included (with their `reversed_at`).
    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>>;

    /// Every conversion of the click `click_id`, oldest first, with their `reversed_at`.
    async fn conversions_of_click(&self, click_id: &str) -> StoreResult<Vec<Conversion>>;

    /// Reverses the stored conversion `conversion.id` at `at`, in one atomic write: its
    /// counters leave the hour it counted in (conversions, leads or purchases, revenue),
    /// `at` is kept as its `reversed_at`, and a [`Subject::Reversal`](crate::model::Subject)
    /// delivery is enqueued for each destination its conversion was routed to. Reversing
    /// again changes nothing (`Already`), and without a stored conversion of that id
    /// nothing is written (`NotFound`).
    async fn reverse_conversion(&self, conversion: &Conversion, at: UnixMillis) -> StoreResult<Reversed>;
}

/// The capped log of every postback.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends to the capped event log (oldest entries dropped first).
    async fn log_event(&self, event: &Event) -> StoreResult<()>;

    /// Newest first, optionally only those with `status`, at most `limit`.
    async fn events(&self, status: Option<EventStatus>, limit: usize) -> StoreResult<Vec<Event>>;
}

/// Links created through the API (config links live in the config).
#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    async fn links(&self) -> StoreResult<Vec<Link>>;
    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>>;
    /// Stores a link; on a store shared by several processes, the others hear of it
    /// through [`LinkStore::watch_changes`].
    async fn put_link(&self, link: &Link) -> StoreResult<()>;
    /// Whether a link was there to delete. Heard of by the other processes as a put is.
    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool>;

    /// The links other processes put or delete, as they happen, for a process that keeps
    /// links in memory. `None` when no other process can change them (the embedded store
    /// belongs to one process, which forgets its own changes itself). The watch keeps
    /// going, reconnecting as needed, until the receiver is dropped.
    fn watch_changes(&self) -> Option<tokio::sync::mpsc::Receiver<LinkChange>> {
        None
    }
}

/// What [`LinkStore::watch_changes`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// The link with this key (`network/slug`) was put or deleted.
    Link(String),
    /// Changes may have been missed (the watch has just started, or reconnected after
    /// losing the store): any link may have changed.
    Any,
}

/// The forwarding outbox: deliveries are enqueued by the writes that record conversions
/// (and forwarded clicks); the worker claims, attempts and settles them.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
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
}

/// Health and housekeeping.
#[async_trait]
pub trait Health: Send + Sync + 'static {
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

    /// The servers behind the store as last seen, for `/readyz` and `/metrics`: a Redis
    /// Cluster lists every node, one Redis itself. Answers at once from what a background
    /// check last saw, so a store that is down cannot hold up a readiness check; a store
    /// without servers of its own (the embedded one) has none.
    fn nodes(&self) -> Vec<NodeState> {
        Vec::new()
    }
}

/// One server behind the store, as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeState {
    /// `host:port`.
    pub address: String,
    /// `master` or `replica`.
    pub role: &'static str,
    /// `connected`; `failing` when the cluster believes it down (or suspects it);
    /// `disconnected` when it does not answer or its cluster link is down.
    pub state: &'static str,
    /// Hash slots a cluster master serves; `None` for a Redis that is not a cluster.
    pub slots: Option<u32>,
}

impl NodeState {
    /// Whether the node is up as far as the store can tell.
    pub fn is_up(&self) -> bool {
        self.state == "connected"
    }
}

/// A whole backend: every capability. Only the code that opens a store, the outage
/// spool's replay and the store tests hold one; everything else holds the capability it
/// uses.
pub trait Store: ClickStore + ConversionStore + EventLog + LinkStore + Outbox + Health {}

impl<T: ClickStore + ConversionStore + EventLog + LinkStore + Outbox + Health> Store for T {}

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

/// Where the data lives, from `[store]`.
#[derive(Clone, Debug)]
pub enum Backend {
    Embedded { path: std::path::PathBuf, fsync: Duration },
    Redis { url: String, replicas: ReplicaAck },
    RedisCluster { urls: Vec<String>, replicas: ReplicaAck },
}

/// How many replicas must confirm a Redis write before it is acknowledged
/// (`store.replicas_ack`, `store.replicas_ack_timeout_ms`). With `replicas` 0, a write
/// is acknowledged once its master applied it, and a master that dies before its
/// replicas copied the write loses it; with 1 or more every write (a batch of clicks,
/// a conversion, a reversal, an event) is followed by `WAIT`, and a write the replicas
/// do not confirm in time is refused as an outage, so that the outage spool keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAck {
    pub replicas: u32,
    /// How long `WAIT` waits for them.
    pub timeout: Duration,
}

impl Default for ReplicaAck {
    fn default() -> ReplicaAck {
        ReplicaAck { replicas: 0, timeout: Duration::from_millis(100) }
    }
}

/// The store as the application holds it: the backend behind the outage spool, handed
/// out one capability at a time. Writes that must survive an outage (clicks, events,
/// conversions) and health go through the spool; links and the outbox go straight to
/// the backend, which the spool would only pass them to.
#[derive(Clone)]
pub struct Storage {
    spool: Arc<SpooledStore>,
}

impl Storage {
    /// The spool and, behind it, the backend it wraps.
    pub fn new(spool: Arc<SpooledStore>) -> Storage {
        Storage { spool }
    }

    /// Clicks, through the spool (its inherent `record_click` is what the redirect calls,
    /// awaited in place without a boxed future).
    pub fn clicks(&self) -> &SpooledStore {
        &self.spool
    }

    pub fn conversions(&self) -> &dyn ConversionStore {
        &*self.spool
    }

    pub fn events(&self) -> &dyn EventLog {
        &*self.spool
    }

    pub fn links(&self) -> Arc<dyn LinkStore> {
        self.spool.backend().clone()
    }

    pub fn outbox(&self) -> Arc<dyn Outbox> {
        self.spool.backend().clone()
    }

    pub fn health(&self) -> &dyn Health {
        &*self.spool
    }

    /// The outage spool itself: its state, queued postbacks, replay and shutdown.
    pub fn spool(&self) -> &Arc<SpooledStore> {
        &self.spool
    }
}

/// Opens the configured backend.
pub async fn open(backend: &Backend, limits: StoreLimits) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend {
        Backend::Embedded { path, fsync } => Arc::new(embedded::EmbeddedStore::open(path, *fsync, limits)?),
        Backend::Redis { url, replicas } => Arc::new(redis::RedisStore::connect_with(url, limits, *replicas).await?),
        Backend::RedisCluster { urls, replicas } => {
            Arc::new(redis::RedisStore::connect_cluster_with(urls, limits, *replicas).await?)
        }
    })
}
