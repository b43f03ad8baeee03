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
//! | `cl:ck:{N}:<click id>` | string | postcard [`Click`], with a TTL of `click_ttl` |
//! | `cl:ct:{N}:<day>` | hash | `<hour>\|<counter>\|<network/slug>` → count (revenue in micros) |
//! | `cl:ctd:{N}` | sorted set | days that have a `cl:ct:{N}:<day>` hash (score = member = day) |
//! | `cl:cv:{N}:<conversion id>` | string | postcard [`Conversion`]; `N` from its click's id |
//! | `cl:cvt:{N}` | sorted set | conversion ids, scored by `at` (ms) |
//! | `cl:{ev}:log` | list | `<seq>\|<postcard Event>`, newest first, capped at `event_log_max` |
//! | `cl:{ev}:seq` | string | sequence number of the newest event |
//! | `cl:links` | hash | `network/slug` → postcard [`Link`] |
//! | `cl:dl:{N}:<delivery id>` | string | postcard [`Delivery`]; `N` from its click's id; settled ones expire after `forward.keep_days` |
//! | `cl:ob:{N}:<destination>` | sorted set | pending delivery ids, scored by when they are due (a lease pushes the score out) |
//! | `cl:dlo:{N}` | hash | claimed delivery id → the process token holding its lease |
//! | `cl:dls:{N}:<status>` | sorted set | delivery ids with that status, scored by last update (ms) |
//!
//! Days are `hour / 24` (UTC). Counters live in one hash per shard and day so a report
//! reads only the days it covers; the day index `cl:ctd:{N}` lists the days that exist,
//! so a report over years reads only the days that had traffic instead of probing every
//! day in the range. Conversions are rare next to clicks, so one time index per shard
//! answers any range with a single `ZRANGEBYSCORE`.
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
//! late outcome from a process that lost its lease is ignored. Events carry a sequence number so that listing the log in
//! chunks skips entries that concurrent writes pushed back into a later chunk.
//!
//! # Durability
//!
//! A write is acknowledged once Redis has applied it; whether it survives a crash of
//! Redis is Redis's `appendonly`/`appendfsync` configuration. [`RedisStore::flush`] has
//! nothing to add.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Script, ScriptInvocation, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{Requeue, Store, StoreError, StoreLimits, StoreResult};
use crate::model::{
    hour_of, link_key, Click, Conversion, Counters, Delivery, DeliveryStatus, Event, HourCounters, Link, Recorded,
    UnixHour, UnixMillis,
};

/// Number of shards (hash tags). Fixed forever: changing it would orphan stored keys.
pub const SHARDS: u8 = 16;

/// Each connection attempt gives up after this long, so a dead Redis fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each request gives up after this long: a stalled Redis must fail a redirect, not hang it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Event-log entries read per request while filtering by status.
const EVENT_CHUNK: usize = 256;

const EVENT_LOG_KEY: &str = "cl:{ev}:log";
const EVENT_SEQ_KEY: &str = "cl:{ev}:seq";
const LINKS_KEY: &str = "cl:links";

/// Stores a click unless present and, only if it was new, counts it.
/// KEYS: click, counters hash of its day, counter day index.
/// ARGV: click bytes, ttl seconds, day, then counter field/delta pairs.
const RECORD_CLICK: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
return 1
";

/// Stores a conversion unless present and, only if it was new, indexes and counts it and
/// enqueues its deliveries.
/// KEYS: conversion, time index, counters hash of its day, counter day index,
/// pending-status index, then per delivery its key and its destination's outbox.
/// ARGV: conversion bytes, at (ms), conversion id, day, delivery count, then per delivery
/// its id, bytes and due time, then counter field/delta pairs.
const RECORD_CONVERSION: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local n = tonumber(ARGV[5])
for i = 1, n do
  local a = 5 + (i - 1) * 3
  local k = 5 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[5], ARGV[a + 3], ARGV[a + 1])
end
for i = 6 + 3 * n, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
return 1
";

/// [`RECORD_CLICK`] for a person's click that some destination forwards: the same, plus
/// its deliveries. Used only when a destination asked for clicks.
/// KEYS: click, counters hash of its day, counter day index, pending-status index, then
/// per delivery its key and its destination's outbox.
/// ARGV: click bytes, ttl seconds, day, delivery count, then per delivery its id, bytes
/// and due time, then counter field/delta pairs.
const RECORD_FORWARDED_CLICK: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
local n = tonumber(ARGV[4])
for i = 1, n do
  local a = 4 + (i - 1) * 3
  local k = 4 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[4], ARGV[a + 3], ARGV[a + 1])
end
for i = 5 + 3 * n, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
return 1
";

/// Leases up to ARGV[3] due deliveries of one shard to the owner ARGV[4] until ARGV[2].
/// KEYS: outbox, lease owners. ARGV: now, lease end, limit, owner.
const CLAIM_DELIVERIES: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('HSET', KEYS[2], id, ARGV[4])
end
return ids
";

/// Stores an attempt's outcome if the owner still holds the lease. A settled delivery
/// expires after the retention (when there is one), and its status index drops entries
/// older than that.
/// KEYS: outbox, lease owners, delivery, pending-status index, new-status index.
/// ARGV: owner, id, delivery bytes, '1' when still pending, due time, updated time,
/// retention in ms (0 keeps it for ever).
const FINISH_DELIVERY: &str = r"
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[2])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
  local keep = tonumber(ARGV[7])
  if keep > 0 then
    redis.call('PEXPIRE', KEYS[3], keep)
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', string.format('(%d', tonumber(ARGV[6]) - keep))
  end
end
return 1
";

/// Puts a dead-lettered delivery back in the queue, unless it changed since it was read.
/// KEYS: delivery, outbox, its old status index, pending-status index.
/// ARGV: bytes as read, new bytes, id, now.
const REQUEUE_DELIVERY: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return 1
";

/// Pushes an event, numbered, and trims the log to its cap in the same step.
/// KEYS: log, sequence. ARGV: event bytes, cap.
const LOG_EVENT: &str = r"
local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], string.format('%d|', seq) .. ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return seq
";

/// One Redis or a cluster: both are cheap, cloneable, multiplexed handles, so every call
/// clones one and no lock is ever held.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis-backed store.
pub struct RedisStore {
    con: Conn,
    limits: StoreLimits,
    record_click: Script,
    record_conversion: Script,
    record_forwarded_click: Script,
    claim_deliveries: Script,
    finish_delivery: Script,
    requeue_delivery: Script,
    log_event: Script,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing the crate's own plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The shard of everything that belongs to `click_id`.
fn shard(click_id: &str) -> u8 {
    blake3::hash(click_id.as_bytes()).as_bytes()[0] % SHARDS
}

fn click_key(shard: u8, click_id: &str) -> String {
    format!("cl:ck:{{{shard}}}:{click_id}")
}

fn counters_key(shard: u8, day: u32) -> String {
    format!("cl:ct:{{{shard}}}:{day}")
}

fn counter_days_key(shard: u8) -> String {
    format!("cl:ctd:{{{shard}}}")
}

fn conversion_key(shard: u8, conversion_id: &str) -> String {
    format!("cl:cv:{{{shard}}}:{conversion_id}")
}

fn conversion_times_key(shard: u8) -> String {
    format!("cl:cvt:{{{shard}}}")
}

fn delivery_key(shard: u8, id: &str) -> String {
    format!("cl:dl:{{{shard}}}:{id}")
}

fn outbox_key(shard: u8, destination: &str) -> String {
    format!("cl:ob:{{{shard}}}:{destination}")
}

fn lease_owners_key(shard: u8) -> String {
    format!("cl:dlo:{{{shard}}}")
}

fn delivery_status_key(shard: u8, status: DeliveryStatus) -> String {
    format!("cl:dls:{{{shard}}}:{}", status.as_str())
}

/// Adds the outbox keys and arguments of new deliveries to a recording script's call.
fn add_delivery_args(invocation: &mut ScriptInvocation<'_>, shard: u8, deliveries: &[Delivery]) {
    invocation.key(delivery_status_key(shard, DeliveryStatus::Pending));
    for d in deliveries {
        invocation.key(delivery_key(shard, &d.id)).key(outbox_key(shard, &d.destination));
    }
}

fn add_delivery_values(invocation: &mut ScriptInvocation<'_>, deliveries: &[Delivery]) {
    invocation.arg(deliveries.len());
    for d in deliveries {
        invocation.arg(&d.id).arg(encode(d)).arg(d.next_at);
    }
}

/// The counters-hash field of one counter of one link in one hour.
fn counter_field(hour: UnixHour, name: &str, link: &str) -> String {
    format!("{hour}|{name}|{link}")
}

/// Appends the `field, delta` pairs a recording script adds to the counters hash; only
/// non-zero counters, so a hash holds no field that never moved.
fn add_counter_args(invocation: &mut ScriptInvocation<'_>, hour: UnixHour, link: &str, delta: &Counters) {
    for (name, value) in delta.fields() {
        if value != 0 {
            invocation.arg(counter_field(hour, name, link)).arg(value);
        }
    }
}

fn day_of_hour(hour: UnixHour) -> u32 {
    hour / 24
}

/// Splits a counters-hash field back into hour, counter name and link.
fn parse_counter_field(field: &str) -> StoreResult<(UnixHour, &str, &str)> {
    let corrupt = || StoreError::Corrupt(format!("counter field {field:?}"));
    let mut parts = field.splitn(3, '|');
    let hour = parts.next().and_then(|h| h.parse().ok()).ok_or_else(corrupt)?;
    let name = parts.next().ok_or_else(corrupt)?;
    let link = parts.next().ok_or_else(corrupt)?;
    Ok((hour, name, link))
}

/// Splits an event-log entry into its sequence number and event.
fn parse_event_entry(entry: &[u8]) -> StoreResult<(u64, Event)> {
    let corrupt = || StoreError::Corrupt("event-log entry without a sequence number".to_owned());
    let bar = entry.iter().position(|&b| b == b'|').ok_or_else(corrupt)?;
    let seq = std::str::from_utf8(&entry[..bar]).ok().and_then(|s| s.parse().ok()).ok_or_else(corrupt)?;
    Ok((seq, decode(&entry[bar + 1..])?))
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

impl RedisStore {
    /// Connects to one Redis server through an auto-reconnecting, multiplexed
    /// connection, and checks that it answers.
    ///
    /// A plain connection probes the server first: the connection manager retries a
    /// refused connection for several seconds, which is right once running but only
    /// delays the message an operator needs at startup.
    pub async fn connect(url: &str, limits: StoreLimits) -> anyhow::Result<RedisStore> {
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
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
        RedisStore::with(Conn::Single(manager), limits, &shown).await
    }

    /// Connects to a Redis Cluster through any of its nodes, and checks that it answers.
    pub async fn connect_cluster(urls: &[String], limits: StoreLimits) -> anyhow::Result<RedisStore> {
        let shown = urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ");
        if urls.is_empty() {
            anyhow::bail!("no Redis Cluster node URL configured");
        }
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid Redis Cluster URLs {shown}: {e}"))?;
        let con = client
            .get_async_connection()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis Cluster at {shown}: {e}"))?;
        RedisStore::with(Conn::Cluster(con), limits, &shown).await
    }

    async fn with(con: Conn, limits: StoreLimits, shown: &str) -> anyhow::Result<RedisStore> {
        let store = RedisStore {
            con,
            limits,
            record_click: Script::new(RECORD_CLICK),
            record_conversion: Script::new(RECORD_CONVERSION),
            record_forwarded_click: Script::new(RECORD_FORWARDED_CLICK),
            claim_deliveries: Script::new(CLAIM_DELIVERIES),
            finish_delivery: Script::new(FINISH_DELIVERY),
            requeue_delivery: Script::new(REQUEUE_DELIVERY),
            log_event: Script::new(LOG_EVENT),
        };
        store.ping().await.map_err(|e| anyhow::anyhow!("Redis at {shown} does not answer PING: {e}"))?;
        Ok(store)
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
            let part = joined.map_err(|e| StoreError::Unavailable(e.to_string()))??;
            out.extend(part);
        }
        Ok(out)
    }
}

/// Every `(field, value)` of the counter hashes of `shard` for the days covering
/// `from..=to` hours.
async fn shard_counters(mut con: Conn, shard: u8, from: UnixHour, to: UnixHour) -> StoreResult<Vec<(String, i64)>> {
    let days: Vec<u32> = redis::cmd("ZRANGEBYSCORE")
        .arg(counter_days_key(shard))
        .arg(day_of_hour(from))
        .arg(day_of_hour(to))
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    if days.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for day in days {
        pipe.cmd("HGETALL").arg(counters_key(shard, day));
    }
    let hashes: Vec<HashMap<String, i64>> = pipe.query_async(&mut con).await.map_err(unavailable)?;
    Ok(hashes.into_iter().flatten().collect())
}

/// The stored bytes of the conversions of `shard` with `from <= at < to`.
async fn shard_conversions(mut con: Conn, shard: u8, from: i64, to: i64) -> StoreResult<Vec<Vec<u8>>> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(conversion_times_key(shard))
        .arg(from)
        .arg(format!("({to}"))
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| conversion_key(shard, id)).collect();
    let values: Vec<Option<Vec<u8>>> =
        redis::cmd("MGET").arg(&keys).query_async(&mut con).await.map_err(unavailable)?;
    Ok(values.into_iter().flatten().collect())
}

#[async_trait]
impl Store for RedisStore {
    async fn record_click(&self, click: &Click) -> StoreResult<()> {
        if self.limits.outbox.wants_clicks() && !click.is_bot() {
            return self.record_forwarded_click(click).await;
        }
        let n = shard(&click.id);
        let hour = hour_of(click.at);
        let day = day_of_hour(hour);
        let mut invocation = self.record_click.prepare_invoke();
        invocation
            .key(click_key(n, &click.id))
            .key(counters_key(n, day))
            .key(counter_days_key(n))
            .arg(encode(click))
            .arg(self.limits.click_ttl.as_secs().max(1))
            .arg(day);
        add_counter_args(&mut invocation, hour, &click.link, &Counters::for_click(click));
        let _new: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(click_key(shard(click_id), click_id))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        bytes.map(|b| decode(&b)).transpose()
    }

    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        let n = shard(&conversion.click.id);
        let at = conversion.at.max(0);
        let hour = hour_of(at);
        let day = day_of_hour(hour);
        let mut invocation = self.record_conversion.prepare_invoke();
        invocation
            .key(conversion_key(n, &conversion.id))
            .key(conversion_times_key(n))
            .key(counters_key(n, day))
            .key(counter_days_key(n));
        let deliveries = self.limits.outbox.for_conversion(conversion, super::now_ms());
        add_delivery_args(&mut invocation, n, &deliveries);
        invocation.arg(encode(conversion)).arg(at).arg(&conversion.id).arg(day);
        add_delivery_values(&mut invocation, &deliveries);
        let delta = Counters::for_conversion(conversion);
        add_counter_args(&mut invocation, hour, &conversion.click.link, &delta);
        let new: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(if new == 1 { Recorded::New } else { Recorded::Duplicate })
    }

    async fn log_event(&self, event: &Event) -> StoreResult<()> {
        let _: i64 = self
            .log_event
            .key(EVENT_LOG_KEY)
            .key(EVENT_SEQ_KEY)
            .arg(encode(event))
            .arg(self.limits.event_log_max.max(1))
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn events(&self, status: Option<&str>, limit: usize) -> StoreResult<Vec<Event>> {
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

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        if to < from {
            return Ok(Vec::new());
        }
        let fields = self.all_shards(move |con, n| shard_counters(con, n, from, to)).await?;
        let mut totals: BTreeMap<(UnixHour, String), Counters> = BTreeMap::new();
        for (field, value) in &fields {
            let (hour, name, link) = parse_counter_field(field)?;
            if hour < from || hour > to {
                continue;
            }
            let mut delta = Counters::default();
            delta.set_field(name, *value);
            totals.entry((hour, link.to_owned())).or_default().add(&delta);
        }
        Ok(totals.into_iter().map(|((hour, link), counters)| HourCounters { hour, link, counters }).collect())
    }

    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>> {
        let (from, to) = (from.max(0), to.max(0));
        if to <= from {
            return Ok(Vec::new());
        }
        let stored = self.all_shards(move |con, n| shard_conversions(con, n, from, to)).await?;
        let mut out = stored.iter().map(|bytes| decode::<Conversion>(bytes)).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| (a.at.max(0), &a.id).cmp(&(b.at.max(0), &b.id)));
        Ok(out)
    }

    async fn links(&self) -> StoreResult<Vec<Link>> {
        // A BTreeMap orders by `network/slug`, as the embedded store lists them.
        let stored: BTreeMap<String, Vec<u8>> =
            redis::cmd("HGETALL").arg(LINKS_KEY).query_async(&mut self.con()).await.map_err(unavailable)?;
        stored.values().map(|bytes| decode(bytes)).collect()
    }

    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>> {
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(LINKS_KEY)
            .arg(link_key(network, slug))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        bytes.map(|b| decode(&b)).transpose()
    }

    async fn put_link(&self, link: &Link) -> StoreResult<()> {
        let _: i64 = redis::cmd("HSET")
            .arg(LINKS_KEY)
            .arg(link.key())
            .arg(encode(link))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(LINKS_KEY)
            .arg(link_key(network, slug))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(())
    }

    /// Redis acknowledges a write once applied; durability is its own configuration.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        destination: &str,
        now: UnixMillis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let until = now.saturating_add(lease.as_millis() as i64);
        let owner = owner.to_owned();
        let destination = destination.to_owned();
        // Each shard may give up to `limit`; the caller takes what it asked for and the
        // rest simply wait out their lease, which is short next to a retry.
        let per_shard = limit.div_ceil(SHARDS as usize).max(1);
        let script = self.claim_deliveries.clone();
        let mut out = self
            .all_shards(move |mut con, n| {
                let script = script.clone();
                let owner = owner.clone();
                let outbox = outbox_key(n, &destination);
                async move {
                    let ids: Vec<String> = script
                        .key(outbox)
                        .key(lease_owners_key(n))
                        .arg(now)
                        .arg(until)
                        .arg(per_shard)
                        .arg(owner)
                        .invoke_async(&mut con)
                        .await
                        .map_err(unavailable)?;
                    read_deliveries(&mut con, n, &ids).await
                }
            })
            .await?;
        out.sort_by_key(|d| d.next_at);
        Ok(out)
    }

    async fn finish_delivery(&self, owner: &str, delivery: &Delivery) -> StoreResult<bool> {
        let n = shard(&delivery.subject.click().id);
        let pending = delivery.status == DeliveryStatus::Pending;
        let done: i64 = self
            .finish_delivery
            .key(outbox_key(n, &delivery.destination))
            .key(lease_owners_key(n))
            .key(delivery_key(n, &delivery.id))
            .key(delivery_status_key(n, DeliveryStatus::Pending))
            .key(delivery_status_key(n, delivery.status))
            .arg(owner)
            .arg(&delivery.id)
            .arg(encode(delivery))
            .arg(if pending { "1" } else { "0" })
            .arg(delivery.next_at)
            .arg(delivery.updated_at)
            .arg(self.limits.outbox.keep_settled().map_or(0, |k| k.as_millis() as u64))
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let statuses: Vec<DeliveryStatus> = status.map_or_else(|| DeliveryStatus::ALL.to_vec(), |s| vec![s]);
        // Filtering by destination happens after reading, so read more to fill the page.
        let per_index = if destination.is_some() { limit.saturating_mul(8).min(10_000) } else { limit };
        let mut out = self
            .all_shards(move |mut con, n| {
                let statuses = statuses.clone();
                async move {
                    let mut pipe = redis::pipe();
                    for s in &statuses {
                        pipe.cmd("ZREVRANGE").arg(delivery_status_key(n, *s)).arg(0).arg(per_index.max(1) - 1);
                    }
                    let lists: Vec<Vec<String>> = pipe.query_async(&mut con).await.map_err(unavailable)?;
                    let ids: Vec<String> = lists.into_iter().flatten().collect();
                    read_deliveries(&mut con, n, &ids).await
                }
            })
            .await?;
        out.retain(|d| status.is_none_or(|s| s == d.status) && destination.is_none_or(|name| name == d.destination));
        out.sort_by(|a, b| (b.updated_at, &b.id).cmp(&(a.updated_at, &a.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn deliveries_of(&self, click_id: &str, event_id: &str) -> StoreResult<Vec<Delivery>> {
        let n = shard(click_id);
        let ids: Vec<String> = self.limits.outbox.destinations().map(|d| Delivery::id_for(event_id, d)).collect();
        read_deliveries(&mut self.con(), n, &ids).await
    }

    async fn requeue_delivery(&self, id: &str, now: UnixMillis) -> StoreResult<Requeue> {
        // The id does not name its shard; an admin call can afford to ask all sixteen.
        let wanted = id.to_owned();
        let found = self
            .all_shards(move |mut con, n| {
                let key = delivery_key(n, &wanted);
                async move {
                    let bytes: Option<Vec<u8>> =
                        redis::cmd("GET").arg(key).query_async(&mut con).await.map_err(unavailable)?;
                    Ok(bytes.map(|b| (n, b)).into_iter().collect())
                }
            })
            .await?;
        let Some((n, old_bytes)) = found.into_iter().next() else {
            return Ok(Requeue::NotFound);
        };
        let old: Delivery = decode(&old_bytes)?;
        if !old.status.can_requeue() {
            return Ok(Requeue::NotDeadLettered(old.status));
        }
        let mut d = old.clone();
        d.status = DeliveryStatus::Pending;
        d.attempts = 0;
        d.next_at = now;
        d.updated_at = now;
        let done: i64 = self
            .requeue_delivery
            .key(delivery_key(n, id))
            .key(outbox_key(n, &old.destination))
            .key(delivery_status_key(n, old.status))
            .key(delivery_status_key(n, DeliveryStatus::Pending))
            .arg(old_bytes)
            .arg(encode(&d))
            .arg(id)
            .arg(now)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        // A concurrent requeue got there first: it is pending now either way.
        Ok(if done == 1 { Requeue::Done(Box::new(d)) } else { Requeue::NotDeadLettered(DeliveryStatus::Pending) })
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        let destinations: Vec<String> = self.limits.outbox.destinations().map(str::to_owned).collect();
        if destinations.is_empty() {
            return Ok(0);
        }
        let sizes = self
            .all_shards(move |mut con, n| {
                let mut pipe = redis::pipe();
                for d in &destinations {
                    pipe.cmd("ZCARD").arg(outbox_key(n, d));
                }
                async move { pipe.query_async::<Vec<u64>>(&mut con).await.map_err(unavailable) }
            })
            .await?;
        Ok(sizes.into_iter().sum())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

impl RedisStore {
    /// Records a person's click together with its deliveries, in one script.
    async fn record_forwarded_click(&self, click: &Click) -> StoreResult<()> {
        let n = shard(&click.id);
        let hour = hour_of(click.at);
        let day = day_of_hour(hour);
        let deliveries = self.limits.outbox.for_click(click, super::now_ms());
        let mut invocation = self.record_forwarded_click.prepare_invoke();
        invocation.key(click_key(n, &click.id)).key(counters_key(n, day)).key(counter_days_key(n));
        add_delivery_args(&mut invocation, n, &deliveries);
        invocation.arg(encode(click)).arg(self.limits.click_ttl.as_secs().max(1)).arg(day);
        add_delivery_values(&mut invocation, &deliveries);
        add_counter_args(&mut invocation, hour, &click.link, &Counters::for_click(click));
        let _new: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(())
    }
}

/// The deliveries of shard `n` with these ids (missing ones skipped).
async fn read_deliveries(con: &mut Conn, n: u8, ids: &[String]) -> StoreResult<Vec<Delivery>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| delivery_key(n, id)).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(con).await.map_err(unavailable)?;
    values.into_iter().flatten().map(|b| decode(&b)).collect()
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
            click_key(n, "abc"),
            counters_key(n, 20_000),
            counter_days_key(n),
            conversion_key(n, "xyz"),
            conversion_times_key(n),
        ] {
            assert!(key.starts_with("cl:"), "{key}");
            assert!(key.contains(&tag), "{key}");
        }
    }

    #[test]
    fn counter_fields_round_trip_with_bars_in_the_link() {
        let field = counter_field(490_000, "clicks", "net/a|b");
        assert_eq!(parse_counter_field(&field).ok(), Some((490_000, "clicks", "net/a|b")));
        assert!(parse_counter_field("x|clicks|l").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(redact("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
