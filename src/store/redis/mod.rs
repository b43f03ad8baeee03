//! The Redis store: one Redis server, or a Redis Cluster, shared by several cakelink
//! processes.
//!
//! # Key layout
//!
//! Every key starts with `cl:` so cakelink can share a Redis with other software.
//! Records are spread over [`SHARDS`] shards; a record's shard is the first byte of the
//! BLAKE3 hash of its click id, modulo [`SHARDS`], and its keys carry that shard as a
//! hash tag `{N}`. Redis Cluster places keys by their hash tag, so every key one write
//! touches (the click, its hour's counters, the day index) lives in one slot, which is
//! what lets a single Lua script update them atomically on a cluster too. Sixteen shards
//! spread the load over up to sixteen nodes while keeping the reads that must visit
//! every shard (reports) down to sixteen small requests, sent concurrently.
//!
//! | key | type | content |
//! |---|---|---|
//! | `cl:ck:{N}:<hour>` | hash | click id → compact click record (the store's `record` module) of the clicks created in that UTC hour; expires `click_ttl` after the hour ends |
//! | `cl:in:{N}:<16 hex digits>` | string | a value many clicks share (context, user agent), named by its content hash |
//! | `cl:pd` | string | the hour up to which personal data has been dropped from clicks |
//! | `cl:ct:{N}:<day>` | hash | `<hour>\|<counter>\|<network/slug>` → count (revenue in micros); `<network/slug/offer>` for a link's offers |
//! | `cl:ctd:{N}` | sorted set | days that have a `cl:ct:{N}:<day>` hash (score = member = day) |
//! | `cl:cv:{N}:<conversion id>` | string | postcard [`Conversion`](crate::model::Conversion); `N` from its click's id |
//! | `cl:cvt:{N}` | sorted set | conversion ids, scored by `at` (ms) |
//! | `cl:cvc:{N}:<click id>` | sorted set | the ids of that click's conversions, scored by `at` (ms) |
//! | `cl:cvci:{N}` | string | present once the conversions of shard `N` stored before `cl:cvc` existed are in it |
//! | `cl:rv:{N}` | hash | reversed conversion id → when the network reversed it (ms); the conversion's record never changes |
//! | `cl:{ev}:log` | list | `<seq>\|<postcard Event>`, newest first, capped at `event_log_max` |
//! | `cl:{ev}:seq` | string | sequence number of the newest event |
//! | `cl:links` | hash | `network/slug` → postcard [`Link`](crate::model::Link) |
//! | `cl:links:changed` | pub/sub channel | `network/slug` of each link put or deleted, published by the write's own script |
//! | `cl:dl:{N}:<delivery id>` | string | postcard [`Delivery`](crate::model::Delivery); `N` from its click's id; settled ones expire after `forward.keep_days` |
//! | `cl:ob:{N}:<destination>` | sorted set | pending delivery ids, scored by when they are due (a lease pushes the score out) |
//! | `cl:dlo:{N}` | hash | claimed delivery id → the process token holding its lease |
//! | `cl:dls:{N}:<status>` | sorted set | delivery ids with that status, scored by last update (ms) |
//! | `cl:cap:{<network/slug>}:<offer>/<cap day>` | string | human clicks an offer admitted on that day; tagged by link, kept three days |
//!
//! Days are `hour / 24` (UTC). Counters live in one hash per shard and day so a report
//! reads only the days it covers; the day index `cl:ctd:{N}` lists the days that exist,
//! so a report over years reads only the days that had traffic instead of probing every
//! day in the range. Conversions are rare next to clicks, so one time index per shard
//! answers any range with a single `ZRANGEBYSCORE`.
//!
//! # Clicks in hour buckets, recorded in batches
//!
//! A key of its own per click would cost Redis some 90 bytes of bookkeeping (key, TTL
//! entry, value object) before the click says anything; a field in its hour's hash costs
//! about a third of that, and the whole hour expires at once. The click id carries its
//! creation time, so a lookup knows the bucket without an index. Records are compact and
//! their shared parts interned (see the store's `record` module), which keeps a click without
//! ad-platform click ids near 100 bytes of Redis memory.
//!
//! Clicks are not sent one script call each: a batcher task takes every click waiting
//! and records each shard's share with one script call, all shards' calls in flight at
//! once (group commit, as in the embedded store). Redis runs a handful of large calls
//! instead of thousands of small ones, and each redirect still waits for Redis to
//! acknowledge its own click.
//!
//! A person's click on an offer with a daily cap is the exception: it is recorded with
//! one script call of its own (`record_capped_click.lua`), which checks and counts the
//! cap in the same step as the click's write. On a cluster the counters live in their
//! link's slot, so the cap is claimed first and the click written next.
//!
//! # Why scripts and TTLs
//!
//! Recording must be idempotent and atomic: a retried click must not count twice, and a
//! crash between "store the click" and "count it" must not leave the two disagreeing.
//! `SET … NX` and the counter increments therefore run in one Lua script (sent as
//! `EVALSHA`, loaded on `NOSCRIPT`, e.g. after a restart of Redis), which Redis runs
//! without interleaving other commands. Clicks expire through Redis's own TTL, so there
//! is no sweep and no scan. A conversion's outbox entries are written by the same script
//! that records it, in its shard; a claim moves due entries' scores to the end of the
//! lease and names the owner, so another process skips them until the lease ends and a
//! late outcome from a process that lost its lease is ignored. Events carry a sequence
//! number so that listing the log in chunks skips entries that concurrent writes pushed
//! back into a later chunk.
//!
//! # Durability
//!
//! A write is acknowledged once Redis has applied it; whether it survives a crash of
//! Redis is Redis's `appendonly`/`appendfsync` configuration. [`RedisStore::flush`] has
//! nothing to add. Whether it survives the loss of the master that took it is
//! `store.replicas_ack`: with N above 0 a write is acknowledged only once N replicas
//! have it (`WAIT`, once per script call, so once per shard of a batch of clicks; see
//! `replicas`), and one they do not confirm in time is refused as an outage so that the
//! outage spool keeps it.
//!
//! On a cluster, a request that meets a topology change (`MOVED`, `ASK`, a failover, a
//! node that is gone) is retried for at most [`CLUSTER_RETRY_BOUND`]; whatever is not
//! written by then is refused as an outage too.
//!
//! # Where things are
//!
//! - `keys`: the names of keys and counter fields;
//! - `scripts/*.lua` and `scripts`: the Lua scripts, each with its KEYS and arguments
//!   listed by name at its top, and the one function per script that builds its call in
//!   that order;
//! - `batcher`: the group commit of clicks;
//! - `replicas`: the connection writes go through, and their `WAIT`;
//! - `nodes`: the servers' state for `/readyz`, looked at every second;
//! - one file per capability: `clicks`, `conversions`, `events`, `links`, `outbox`;
//!   [`Health`] is here;
//! - `link_changes`: the subscription that tells this process of links changed by others;
//! - `retention`: dropping personal data past its lifetime;
//! - `upgrade`: indexes older versions did not keep, built once per shard on connecting.

mod batcher;
mod clicks;
mod conversions;
mod events;
mod keys;
mod link_changes;
mod links;
mod nodes;
mod outbox;
mod renewable;
mod replicas;
mod retention;
mod scripts;
mod upgrade;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};
use renewable::Renewable;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{Health, NodeState, ReplicaAck, StoreError, StoreLimits, StoreResult};
use batcher::{Batcher, PendingClick};
use replicas::Writes;
use retention::PersonalSweep;
use scripts::Scripts;

/// Number of shards (hash tags). Fixed forever: changing it would orphan stored keys.
pub const SHARDS: u8 = 16;

/// Each connection attempt gives up after this long, so a dead Redis fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each request gives up after this long: a stalled Redis must fail a redirect, not hang it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// On a cluster, a request and all its retries (after `MOVED`, `ASK`, `TRYAGAIN`, a
/// failover, a node that is gone) give up after this long; what is not written by then
/// is refused as an outage, and the outage spool keeps it.
const CLUSTER_RETRY_BOUND: Duration = Duration::from_millis(2500);
/// Retries of one cluster request, the first waiting [`CLUSTER_RETRY_MIN_WAIT_MS`] and
/// each later one about twice as long, up to [`CLUSTER_RETRY_MAX_WAIT_MS`]: a failover
/// that settles within a second or two is ridden out; a longer one ends in
/// [`CLUSTER_RETRY_BOUND`] whatever the count.
const CLUSTER_RETRIES: u32 = 8;
const CLUSTER_RETRY_MIN_WAIT_MS: u64 = 25;
const CLUSTER_RETRY_MAX_WAIT_MS: u64 = 500;
/// Clicks waiting for the batcher before redirects wait too (backpressure).
const CLICK_QUEUE: usize = 65_536;
/// Interned values outlive the clicks that name them by this much: the batcher rewrites
/// (and so re-arms) a value at least once per [`batcher::INTERN_REMEMBERED`] while it is
/// in use.
const INTERN_SPARE: Duration = Duration::from_secs(2 * 86_400);

/// One Redis or a cluster: both are cheap, cloneable, multiplexed handles, so every call
/// clones one and no lock is ever held. The cluster's is renewed when it wedges (see
/// `renewable`).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<Renewable>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(shared) => {
                let shared = shared.clone();
                Box::pin(async move {
                    let mut con = shared.connection();
                    let result = con.req_packed_command(cmd).await;
                    shared.note(&result);
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(shared) => {
                let shared = shared.clone();
                Box::pin(async move {
                    let mut con = shared.connection();
                    let result = con.req_packed_commands(pipeline, offset, count).await;
                    shared.note(&result);
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    con: Conn,
    /// What records clicks, conversions, reversals and events: `con` itself, or, when
    /// replicas must confirm them, a connection of their own.
    writes: Writes,
    /// The servers as last seen.
    nodes: nodes::Seen,
    limits: StoreLimits,
    clicks: mpsc::Sender<PendingClick>,
    scripts: Scripts,
    /// Where to subscribe to link changes: the one Redis, or each configured cluster node
    /// in turn.
    link_nodes: Vec<redis::Client>,
    /// Dropped with the store, which stops the personal-data sweep.
    _sweep_stop: oneshot::Sender<()>,
}

impl RedisStore {
    /// Connects to one Redis server through an auto-reconnecting, multiplexed
    /// connection, and checks that it answers.
    ///
    /// A plain connection probes the server first: the connection manager retries a
    /// refused connection for several seconds, which is right once running but only
    /// delays the message an operator needs at startup.
    pub async fn connect(url: &str, limits: StoreLimits) -> anyhow::Result<RedisStore> {
        RedisStore::connect_with(url, limits, ReplicaAck::default()).await
    }

    /// [`RedisStore::connect`], each write confirmed by `ack.replicas` replicas.
    pub async fn connect_with(url: &str, limits: StoreLimits, ack: ReplicaAck) -> anyhow::Result<RedisStore> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL {shown}: {e}"))?;
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(|e| anyhow::anyhow!("Redis at {shown} does not answer PING: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(|e| anyhow::anyhow!("Redis at {shown} does not answer PING: {e}"))?;
        drop(probe);

        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let link_nodes = vec![client.clone()];
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
        let con = Conn::Single(manager);
        let write_con = if ack.replicas > 0 {
            let manager = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
            Conn::Single(manager)
        } else {
            con.clone()
        };
        let address = node_address(url);
        RedisStore::with(con, Writes::new(write_con, ack), Some(address), link_nodes, limits, &shown).await
    }

    /// Connects to a Redis Cluster through any of its nodes, and checks that it answers.
    pub async fn connect_cluster(urls: &[String], limits: StoreLimits) -> anyhow::Result<RedisStore> {
        RedisStore::connect_cluster_with(urls, limits, ReplicaAck::default()).await
    }

    /// [`RedisStore::connect_cluster`], each write confirmed by `ack.replicas` replicas
    /// of the master that took it.
    pub async fn connect_cluster_with(
        urls: &[String],
        limits: StoreLimits,
        ack: ReplicaAck,
    ) -> anyhow::Result<RedisStore> {
        let shown = urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ");
        if urls.is_empty() {
            anyhow::bail!("no Redis Cluster node URL configured");
        }
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_RETRY_BOUND))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_RETRY_MIN_WAIT_MS)
            .max_retry_wait(CLUSTER_RETRY_MAX_WAIT_MS)
            .retry_wait_formula(CLUSTER_RETRY_MIN_WAIT_MS, 2)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid Redis Cluster URLs {shown}: {e}"))?;
        let connect = || async {
            Renewable::connect(client.clone())
                .await
                .map(Conn::Cluster)
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis Cluster at {shown}: {e}"))
        };
        let con = connect().await?;
        let write_con = if ack.replicas > 0 { connect().await? } else { con.clone() };
        let link_nodes = urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("invalid Redis Cluster URLs {shown}: {e}"))?;
        RedisStore::with(con, Writes::new(write_con, ack), None, link_nodes, limits, &shown).await
    }

    /// The store over `con` (and `writes`), once Redis answers. `address` names the one
    /// Redis; `None` for a cluster, whose nodes it lists itself. `link_nodes` are where
    /// link changes are listened for.
    async fn with(
        con: Conn,
        writes: Writes,
        address: Option<String>,
        link_nodes: Vec<redis::Client>,
        limits: StoreLimits,
        shown: &str,
    ) -> anyhow::Result<RedisStore> {
        let (clicks, rx) = mpsc::channel(CLICK_QUEUE);
        let scripts = Scripts::load();
        let cluster = matches!(con, Conn::Cluster(_));
        let batcher = Batcher::new(writes.clone(), cluster, scripts.record_clicks.clone(), limits.click_ttl);
        let (sweep_stop, stopped) = oneshot::channel::<()>();
        let seen: nodes::Seen = Arc::new(Mutex::new(Vec::new()));
        let store = RedisStore {
            con,
            writes,
            nodes: seen.clone(),
            limits,
            clicks,
            scripts,
            link_nodes,
            _sweep_stop: sweep_stop,
        };
        store.ping().await.map_err(|e| anyhow::anyhow!("Redis at {shown} does not answer PING: {e}"))?;
        // Seen once before the first readiness check, then every second.
        nodes::look(&store.con, address.as_deref(), &seen).await;
        tokio::spawn(nodes::watch(store.con.clone(), address, Arc::downgrade(&seen)));
        let indexed = store
            .all_shards(|con, n| async move { upgrade::index_conversions_by_click(con, n).await.map(|k| vec![k]) })
            .await
            .map_err(|e| anyhow::anyhow!("cannot index the conversions in Redis at {shown} by click: {e}"))?;
        let indexed: usize = indexed.into_iter().sum();
        if indexed > 0 {
            tracing::info!(indexed, "conversions recorded before the index by click are now indexed");
        }
        tokio::spawn(batcher.run(rx));
        tokio::spawn(store.clone_for_sweep().run(stopped));
        Ok(store)
    }

    /// A second handle on the same Redis for background work: shares the connection,
    /// not the click batcher.
    fn clone_for_sweep(&self) -> PersonalSweep {
        PersonalSweep { con: self.con.clone(), limits: self.limits.clone() }
    }

    /// Drops the IP address and user agent of clicks past their lifetime now, instead of
    /// waiting for the timer; returns how many clicks were rewritten.
    pub async fn drop_personal_data(&self) -> StoreResult<usize> {
        self.clone_for_sweep().drop_personal_data().await
    }

    /// A handle for one call: cheap, and never shared across an `.await` with a lock.
    fn con(&self) -> Conn {
        self.con.clone()
    }

    /// Runs `per_shard` on every shard concurrently and gathers what they return.
    async fn all_shards<T, F, Fut>(&self, per_shard: F) -> StoreResult<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(Conn, u8) -> Fut,
        Fut: std::future::Future<Output = StoreResult<Vec<T>>> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for shard in 0..SHARDS {
            tasks.spawn(per_shard(self.con(), shard));
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let part = joined.map_err(|e| StoreError::unavailable("a per-shard Redis read did not finish", e))??;
            out.extend(part);
        }
        Ok(out)
    }
}

#[async_trait]
impl Health for RedisStore {
    /// On a cluster, every shard is asked by a command routed by its slot, so the probe
    /// reaches the master that serves it now: a bare `PING` goes to the masters of the
    /// client's slot map, which after a failover may still name the dead one, and never
    /// makes the client learn the new map.
    async fn ping(&self) -> StoreResult<()> {
        match self.con {
            Conn::Single(_) => {
                let _: String = redis::cmd("PING").query_async(&mut self.con()).await.map_err(unavailable)?;
            }
            Conn::Cluster(_) => {
                self.all_shards(|mut con, shard| async move {
                    let _: i64 = redis::cmd("EXISTS")
                        .arg(keys::counter_days_key(shard))
                        .query_async(&mut con)
                        .await
                        .map_err(unavailable)?;
                    Ok(Vec::<()>::new())
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Clicks expire by TTL; only personal data needs dropping.
    async fn sweep(&self) -> StoreResult<()> {
        self.drop_personal_data().await.map(|_| ())
    }

    /// Redis acknowledges a write once applied; durability is its own configuration.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn nodes(&self) -> Vec<NodeState> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::unavailable("Redis failed", e)
}

/// The `host:port` (or socket path) of the Redis at `url`, as `/readyz` names it.
fn node_address(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "unix" | "redis+unix") => parsed.path().to_owned(),
        Ok(parsed) => format!("{}:{}", parsed.host_str().unwrap_or("localhost"), parsed.port().unwrap_or(6379)),
        Err(_) => redact(url),
    }
}

/// `url` with any password replaced, for error messages and logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(redact("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }

    #[test]
    fn a_single_redis_is_named_by_host_and_port() {
        assert_eq!(node_address("redis://:hunter2@10.0.0.1:6380/0"), "10.0.0.1:6380");
        assert_eq!(node_address("redis://cache.internal/"), "cache.internal:6379");
        assert_eq!(node_address("redis+unix:///run/redis.sock"), "/run/redis.sock");
    }
}
