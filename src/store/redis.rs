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
//! | `cl:ck:{N}:<hour>` | hash | click id → compact click record ([`super::record`]) of the clicks created in that UTC hour; expires `click_ttl` after the hour ends |
//! | `cl:in:{N}:<16 hex digits>` | string | a value many clicks share (context, user agent), named by its content hash |
//! | `cl:pd` | string | the hour up to which personal data has been dropped from clicks |
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
//! # Clicks in hour buckets, recorded in batches
//!
//! A key of its own per click would cost Redis some 90 bytes of bookkeeping (key, TTL
//! entry, value object) before the click says anything; a field in its hour's hash costs
//! about a third of that, and the whole hour expires at once. The click id carries its
//! creation time, so a lookup knows the bucket without an index. Records are compact and
//! their shared parts interned (see [`super::record`]), which keeps a click without
//! ad-platform click ids near 100 bytes of Redis memory.
//!
//! Clicks are not sent one script call each: a batcher task takes every click waiting
//! and records each shard's share with one script call, all shards' calls in flight at
//! once (group commit, as in the embedded store). Redis runs a handful of large calls
//! instead of thousands of small ones, and each redirect still waits for Redis to
//! acknowledge its own click.
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
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use super::record::{self, EncodedClick, InternKey};
use super::schema::{self, decode, encode, ClickPlan, ConversionPlan};
use super::{
    CapClaim, ClickOrigin, ClickStore, ConversionStore, EventLog, Health, LinkStore, Outbox, Requeue, StoreError,
    StoreLimits, StoreResult,
};
use crate::clickid::ClickId;
use crate::clock::{now_ms, now_secs};
use crate::model::{
    link_key, Click, Conversion, Counters, Delivery, DeliveryStatus, Event, EventStatus, HourCounters, Link, Recorded,
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

/// Stores a batch of clicks, each unless present, and counts the new ones. Every key
/// (hour buckets, counter hashes, day indexes, interned values) is in KEYS and named by
/// its index from ARGV; on a cluster a batch holds one shard's clicks, so one slot's keys.
/// ARGV: count of interned values named but not sent, then their key indexes; click
/// count, then per click: bucket index, click id, record, counters index, counter field,
/// the offer's counter field (empty for a click sent to no offer);
/// interned count, then per value: key index, value, ttl seconds; expiry count, then per
/// bucket: key index, unix time; then (day index key, day) pairs.
/// Returns how many named interned values are missing: when any is, nothing is written
/// (the caller sends the batch again with the values). Counter increments are summed
/// first: one HINCRBY per field, not per click.
const RECORD_CLICKS: &str = r"
local missing = 0
local a = 2
for i = 1, tonumber(ARGV[1]) do
  if redis.call('EXISTS', KEYS[tonumber(ARGV[a])]) == 0 then
    missing = missing + 1
  end
  a = a + 1
end
if missing > 0 then
  return missing
end
local sums = {}
local order = {}
local n = tonumber(ARGV[a])
a = a + 1
local function count(index, field)
  local slot = index .. '|' .. field
  if sums[slot] then
    sums[slot][3] = sums[slot][3] + 1
  else
    sums[slot] = {tonumber(index), field, 1}
    order[#order + 1] = slot
  end
end
for i = 1, n do
  if redis.call('HSETNX', KEYS[tonumber(ARGV[a])], ARGV[a + 1], ARGV[a + 2]) == 1 then
    count(ARGV[a + 3], ARGV[a + 4])
    if ARGV[a + 5] ~= '' then
      count(ARGV[a + 3], ARGV[a + 5])
    end
  end
  a = a + 6
end
for _, slot in ipairs(order) do
  local s = sums[slot]
  redis.call('HINCRBY', KEYS[s[1]], s[2], s[3])
end
n = tonumber(ARGV[a])
a = a + 1
for i = 1, n do
  redis.call('SET', KEYS[tonumber(ARGV[a])], ARGV[a + 1], 'EX', ARGV[a + 2])
  a = a + 3
end
n = tonumber(ARGV[a])
a = a + 1
for i = 1, n do
  redis.call('EXPIREAT', KEYS[tonumber(ARGV[a])], ARGV[a + 1])
  a = a + 2
end
for i = a, #ARGV, 2 do
  redis.call('ZADD', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 1])
end
return 0
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

/// [`RECORD_CLICKS`] for one person's click that some destination forwards: the same
/// storage, plus its deliveries, in one step. Used only when a destination asked for
/// clicks, so it keeps to one click and always writes the interned values.
/// KEYS: the click's hour bucket, counters hash of its day, counter day index,
/// pending-status index, then per delivery its key and its destination's outbox, then the
/// interned values' keys.
/// ARGV: record, bucket expiry (unix time), day, delivery count n, then per delivery its
/// id, bytes and due time, then the click id, the interned count m, then per value its
/// bytes and ttl, then counter field/delta pairs.
const RECORD_FORWARDED_CLICK: &str = r"
local n = tonumber(ARGV[4])
local id = ARGV[5 + 3 * n]
local m = tonumber(ARGV[6 + 3 * n])
for i = 1, m do
  redis.call('SET', KEYS[4 + 2 * n + i], ARGV[5 + 3 * n + 2 * i], 'EX', ARGV[6 + 3 * n + 2 * i])
end
if redis.call('HSETNX', KEYS[1], id, ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
for i = 1, n do
  local a = 4 + (i - 1) * 3
  local k = 4 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[4], ARGV[a + 3], ARGV[a + 1])
end
for i = 7 + 3 * n + 2 * m, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
return 1
";

/// Records one person's click subject to daily caps, taking the first choice whose cap
/// has room (its counter moves by one) or, when all are full, the fallback record.
/// KEYS: the click's hour bucket, counters hash of its day, counter day index,
/// pending-status index, then per delivery its key and its destination's outbox, then the
/// interned values' keys, then per choice its cap counter.
/// ARGV: click id, bucket expiry, day, interned count m, choice count c, delivery count
/// n, fallback record, cap counter ttl, the link's counter field; then per delivery its
/// id, bytes and due time; per choice its cap (0: none), record and the offer's counter
/// field; per interned value its bytes and ttl.
/// Returns the choice taken (from 1), 0 for the fallback.
const RECORD_CAPPED_CLICK: &str = r"
local id = ARGV[1]
local m, c, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local choices = 9 + 3 * n
local interned = choices + 3 * c
for j = 1, m do
  redis.call('SET', KEYS[4 + 2 * n + j], ARGV[interned + 2 * j - 1], 'EX', ARGV[interned + 2 * j])
end
local taken = 0
for i = 1, c do
  local cap = tonumber(ARGV[choices + 3 * i - 2])
  local key = KEYS[4 + 2 * n + m + i]
  if cap == 0 then
    taken = i
    break
  end
  if tonumber(redis.call('GET', key) or '0') < cap then
    redis.call('INCR', key)
    redis.call('EXPIRE', key, ARGV[8])
    taken = i
    break
  end
end
local record = ARGV[7]
if taken > 0 then
  record = ARGV[choices + 3 * taken - 1]
  redis.call('HINCRBY', KEYS[2], ARGV[choices + 3 * taken], 1)
end
redis.call('HSET', KEYS[1], id, record)
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[9], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
for i = 1, n do
  local a = 9 + (i - 1) * 3
  local k = 4 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[4], ARGV[a + 3], ARGV[a + 1])
end
return taken
";

/// Claims one unit of the first cap with room (see `record_capped_click_on_cluster`).
/// KEYS: the choices' cap counters. ARGV: counter ttl, then each choice's cap (0: none).
/// Returns the choice taken (from 1), 0 when all are full.
const CLAIM_CAP: &str = r"
for i = 1, #KEYS do
  local cap = tonumber(ARGV[i + 1])
  if cap == 0 then
    return i
  end
  if tonumber(redis.call('GET', KEYS[i]) or '0') < cap then
    redis.call('INCR', KEYS[i])
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    return i
  end
end
return 0
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
    clicks: mpsc::Sender<PendingClick>,
    record_conversion: Script,
    record_forwarded_click: Script,
    record_capped_click: Script,
    claim_cap: Script,
    claim_deliveries: Script,
    finish_delivery: Script,
    requeue_delivery: Script,
    log_event: Script,
    /// Dropped with the store, which stops the personal-data sweep.
    _sweep_stop: oneshot::Sender<()>,
}

/// Most clicks one batch takes.
const MAX_BATCH: usize = 2048;
/// Batches in flight at once; more clicks wait and make the next batch larger.
const BATCHES_IN_FLIGHT: usize = 4;
/// Clicks waiting for the batcher before redirects wait too (backpressure).
const CLICK_QUEUE: usize = 65_536;
/// How long this process remembers that an interned value is in Redis.
const INTERN_REMEMBERED: Duration = Duration::from_secs(86_400);
/// Interned values outlive the clicks that name them by this much: the batcher rewrites
/// (and so re-arms) a value at least once per [`INTERN_REMEMBERED`] while it is in use.
const INTERN_SPARE: Duration = Duration::from_secs(2 * 86_400);
/// How often personal data past its lifetime is looked for.
const PERSONAL_SWEEP_EVERY: Duration = Duration::from_secs(600);
const PERSONAL_CURSOR_KEY: &str = "cl:pd";
const PERSONAL_LOCK_KEY: &str = "cl:pd:lock";

/// A click waiting for the batcher, encoded by the request that made it.
struct PendingClick {
    shard: u8,
    id: String,
    bucket_hour: UnixHour,
    counter_day: u32,
    counter_field: String,
    /// The same counter of the click's offer (`network/slug/offer`), if it went to one.
    offer_counter_field: Option<String>,
    encoded: EncodedClick,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// A key a batch's script touches, named by what it holds: its text is built once per
/// batch, however many clicks use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum BatchKey {
    Bucket(u8, UnixHour),
    Counters(u8, u32),
    CounterDays(u8),
    Intern(u8, InternKey),
}

impl BatchKey {
    fn text(self) -> Vec<u8> {
        match self {
            BatchKey::Bucket(shard, hour) => click_bucket_key(shard, hour).into_bytes(),
            BatchKey::Counters(shard, day) => counters_key(shard, day).into_bytes(),
            BatchKey::CounterDays(shard) => counter_days_key(shard).into_bytes(),
            BatchKey::Intern(shard, key) => intern_key(shard, &key),
        }
    }
}

/// The keys of one script call, each once, numbered as Lua's `KEYS` are (from 1).
#[derive(Default)]
struct KeyList {
    keys: Vec<Vec<u8>>,
    index: HashMap<BatchKey, u64, foldhash::fast::FixedState>,
}

impl KeyList {
    fn index(&mut self, key: BatchKey) -> u64 {
        *self.index.entry(key).or_insert_with(|| {
            self.keys.push(key.text());
            self.keys.len() as u64
        })
    }
}

/// What the batcher shares with the batches it sends.
#[derive(Clone)]
struct Batcher {
    con: Conn,
    /// A cluster takes one shard's clicks per script call.
    cluster: bool,
    script: Script,
    click_ttl: Duration,
    /// Interned values known to be in Redis, per shard.
    interns: moka::sync::Cache<(u8, InternKey), ()>,
}

impl Batcher {
    /// Takes whatever clicks are waiting and sends them, a few batches in flight at once.
    async fn run(self, mut rx: mpsc::Receiver<PendingClick>) {
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let mut waiting = Vec::with_capacity(MAX_BATCH);
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            if rx.recv_many(&mut waiting, MAX_BATCH).await == 0 {
                return;
            }
            let batch = std::mem::replace(&mut waiting, Vec::with_capacity(MAX_BATCH));
            let me = self.clone();
            tokio::spawn(async move {
                me.send(batch).await;
                drop(permit);
            });
        }
    }

    /// One script call for the whole batch on a single Redis; on a cluster one per shard
    /// (a script may only touch one slot), all in flight together. Each click's request
    /// learns how its call went.
    async fn send(&self, batch: Vec<PendingClick>) {
        if !self.cluster {
            return self.send_call(batch).await;
        }
        let mut by_shard: BTreeMap<u8, Vec<PendingClick>> = BTreeMap::new();
        for click in batch {
            by_shard.entry(click.shard).or_default().push(click);
        }
        let mut calls = JoinSet::new();
        for (_, clicks) in by_shard {
            let me = self.clone();
            calls.spawn(async move { me.send_call(clicks).await });
        }
        while calls.join_next().await.is_some() {}
    }

    async fn send_call(&self, clicks: Vec<PendingClick>) {
        // Interned values this process believes stored are only named; should Redis have
        // lost them (a restart without persistence, a flush), the script refuses the whole
        // batch and it is sent again with every value.
        let mut outcome = self.call(&clicks, false).await;
        if let Ok(Recording::MissingInterns) = outcome {
            for c in &clicks {
                for (key, _) in &c.encoded.interns {
                    self.interns.invalidate(&(c.shard, *key));
                }
            }
            outcome = self.call(&clicks, true).await;
        }
        let failure = match outcome {
            Ok(Recording::Done) => None,
            Ok(Recording::MissingInterns) => Some("interned values vanished while recording".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        for c in clicks {
            // A request that gave up (its connection closed) no longer listens.
            let _ = c.reply.send(match &failure {
                None => Ok(()),
                Some(e) => Err(StoreError::unavailable("Redis refused a batch of clicks", e.clone())),
            });
        }
    }

    /// One script call recording `clicks`, sending the value of every interned part when
    /// `all_interns`, else only of those not known to be stored.
    async fn call(&self, clicks: &[PendingClick], all_interns: bool) -> Result<Recording, RedisError> {
        let mut keys = KeyList::default();
        let mut days: Vec<(u8, u32)> = Vec::new();
        let mut buckets: Vec<(u8, UnixHour)> = Vec::new();
        let mut sent: Vec<(u8, InternKey, &[u8])> = Vec::new();
        let mut named: Vec<(u8, InternKey)> = Vec::new();
        for c in clicks {
            let shard = c.shard;
            if !days.contains(&(shard, c.counter_day)) {
                days.push((shard, c.counter_day));
            }
            if !buckets.contains(&(shard, c.bucket_hour)) {
                buckets.push((shard, c.bucket_hour));
            }
            for (key, value) in &c.encoded.interns {
                if sent.iter().any(|(n, k, _)| *n == shard && k == key) || named.contains(&(shard, *key)) {
                    continue;
                }
                if all_interns || !self.interns.contains_key(&(shard, *key)) {
                    sent.push((shard, *key, value));
                } else {
                    named.push((shard, *key));
                }
            }
        }
        // Arguments go straight into the call; keys are numbered as they are first named
        // and added once all are known.
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(named.len());
        for (shard, key) in &named {
            invocation.arg(keys.index(BatchKey::Intern(*shard, *key)));
        }
        invocation.arg(clicks.len());
        for c in clicks {
            invocation
                .arg(keys.index(BatchKey::Bucket(c.shard, c.bucket_hour)))
                .arg(&c.id)
                .arg(c.encoded.record.as_slice())
                .arg(keys.index(BatchKey::Counters(c.shard, c.counter_day)))
                .arg(&c.counter_field)
                .arg(c.offer_counter_field.as_deref().unwrap_or_default());
        }
        let intern_ttl = (self.click_ttl + INTERN_SPARE).as_secs();
        invocation.arg(sent.len());
        for (shard, key, value) in &sent {
            invocation.arg(keys.index(BatchKey::Intern(*shard, *key))).arg(*value).arg(intern_ttl);
        }
        invocation.arg(buckets.len());
        for (shard, hour) in &buckets {
            let expires = (u64::from(*hour) + 1) * 3600 + self.click_ttl.as_secs();
            invocation.arg(keys.index(BatchKey::Bucket(*shard, *hour))).arg(expires);
        }
        for (shard, day) in &days {
            invocation.arg(keys.index(BatchKey::CounterDays(*shard))).arg(*day);
        }
        for key in &keys.keys {
            invocation.key(key.as_slice());
        }
        let missing: i64 = invocation.invoke_async(&mut self.con.clone()).await?;
        if missing > 0 {
            return Ok(Recording::MissingInterns);
        }
        for (shard, key, _) in &sent {
            self.interns.insert((*shard, *key), ());
        }
        Ok(Recording::Done)
    }
}

/// How a batch's script call went.
enum Recording {
    Done,
    /// An interned value named but not sent is not in Redis; nothing was written.
    MissingInterns,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::unavailable("Redis failed", e)
}

/// The shard of everything that belongs to `click_id`.
fn shard(click_id: &str) -> u8 {
    blake3::hash(click_id.as_bytes()).as_bytes()[0] % SHARDS
}

/// The hour bucket holding the clicks of `shard` created in UTC hour `hour`.
fn click_bucket_key(shard: u8, hour: UnixHour) -> String {
    format!("cl:ck:{{{shard}}}:{hour}")
}

/// The UTC hour a click id was created in (0 for text that is no click id: such a click
/// can only have been stored by a test, and is found where it was put).
fn created_hour(click_id: &str) -> UnixHour {
    ClickId::parse(click_id).map_or(0, |id| (id.created_at() / 3600) as UnixHour)
}

fn intern_key(shard: u8, key: &InternKey) -> Vec<u8> {
    format!("cl:in:{{{shard}}}:{:016x}", u64::from_be_bytes(*key)).into_bytes()
}

fn counters_key(shard: u8, day: u32) -> String {
    format!("cl:ct:{{{shard}}}:{day}")
}

/// The Redis key of a cap counter (`cap_key` is `link/offer/day`): tagged by its link, so
/// that a click's choices, all of one link, live in one slot.
fn cap_counter_key(link: &str, cap_key: &str) -> String {
    format!("cl:cap:{{{link}}}:{}", cap_key.get(link.len() + 1..).unwrap_or(cap_key))
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
    let corrupt = || StoreError::corrupt(format!("counter field {field:?}"));
    let mut parts = field.splitn(3, '|');
    let hour = parts.next().and_then(|h| h.parse().ok()).ok_or_else(corrupt)?;
    let name = parts.next().ok_or_else(corrupt)?;
    let link = parts.next().ok_or_else(corrupt)?;
    Ok((hour, name, link))
}

/// Splits an event-log entry into its sequence number and event.
fn parse_event_entry(entry: &[u8]) -> StoreResult<(u64, Event)> {
    let corrupt = || StoreError::corrupt("event-log entry without a sequence number");
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
        let (clicks, rx) = mpsc::channel(CLICK_QUEUE);
        let batcher = Batcher {
            cluster: matches!(con, Conn::Cluster(_)),
            con: con.clone(),
            script: Script::new(RECORD_CLICKS),
            click_ttl: limits.click_ttl.max(Duration::from_secs(1)),
            interns: moka::sync::Cache::builder()
                .max_capacity(1 << 20)
                .time_to_live(INTERN_REMEMBERED.min(limits.click_ttl))
                .build(),
        };
        let (sweep_stop, mut stopped) = oneshot::channel::<()>();
        let store = RedisStore {
            con,
            limits,
            clicks,
            record_conversion: Script::new(RECORD_CONVERSION),
            record_forwarded_click: Script::new(RECORD_FORWARDED_CLICK),
            record_capped_click: Script::new(RECORD_CAPPED_CLICK),
            claim_cap: Script::new(CLAIM_CAP),
            claim_deliveries: Script::new(CLAIM_DELIVERIES),
            finish_delivery: Script::new(FINISH_DELIVERY),
            requeue_delivery: Script::new(REQUEUE_DELIVERY),
            log_event: Script::new(LOG_EVENT),
            _sweep_stop: sweep_stop,
        };
        store.ping().await.map_err(|e| anyhow::anyhow!("Redis at {shown} does not answer PING: {e}"))?;
        tokio::spawn(batcher.run(rx));
        let sweeper = store.clone_for_sweep();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PERSONAL_SWEEP_EVERY) => {}
                    _ = &mut stopped => return,
                }
                if let Err(e) = sweeper.drop_personal_data().await {
                    tracing::warn!(error = %e, "dropping personal data from old clicks failed; trying again later");
                }
            }
        });
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

/// One `HSCAN` answer: the next cursor and field/value pairs.
type ScanPage = (u64, Vec<(Vec<u8>, Vec<u8>)>);

/// Drops personal data from clicks, one hour bucket at a time, remembering in Redis how
/// far it got so that several processes sharing the Redis do the work once.
struct PersonalSweep {
    con: Conn,
    limits: StoreLimits,
}

impl PersonalSweep {
    async fn drop_personal_data(&self) -> StoreResult<usize> {
        let mut con = self.con.clone();
        let now = now_secs();
        // Buckets whose every click is older than the personal-data lifetime.
        let Some(last) = (schema::personal_cutoff_secs(now, self.limits.personal_ttl) / 3600).checked_sub(1) else {
            return Ok(0);
        };
        let locked: bool = redis::cmd("SET")
            .arg(PERSONAL_LOCK_KEY)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(3600)
            .query_async::<Option<String>>(&mut con)
            .await
            .map_err(unavailable)?
            .is_some();
        if !locked {
            return Ok(0);
        }
        let result = self.sweep_locked(&mut con, now, last).await;
        let _: Result<i64, _> = redis::cmd("DEL").arg(PERSONAL_LOCK_KEY).query_async(&mut con).await;
        result
    }

    async fn sweep_locked(&self, con: &mut Conn, now: u64, last: u64) -> StoreResult<usize> {
        let done: Option<u64> =
            redis::cmd("GET").arg(PERSONAL_CURSOR_KEY).query_async(con).await.map_err(unavailable)?;
        // Without a cursor, start at the oldest bucket that can still exist.
        let first =
            done.map_or((now.saturating_sub(self.limits.click_ttl.as_secs()) / 3600).saturating_sub(1), |d| d + 1);
        let mut rewritten = 0;
        for hour in first..=last {
            for shard in 0..SHARDS {
                let key = click_bucket_key(shard, hour as UnixHour);
                let mut cursor = 0u64;
                loop {
                    let (next, entries): ScanPage = redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(512)
                        .query_async(con)
                        .await
                        .map_err(unavailable)?;
                    let mut set = redis::cmd("HSET");
                    set.arg(&key);
                    let mut n = 0;
                    for (field, value) in entries {
                        if let Ok(Some(stripped)) = record::strip_personal(&value) {
                            set.arg(field).arg(stripped);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        let _: i64 = set.query_async(con).await.map_err(unavailable)?;
                        rewritten += n;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                rewritten += strip_conversions(con, shard, hour).await?;
            }
            let _: () =
                redis::cmd("SET").arg(PERSONAL_CURSOR_KEY).arg(hour).query_async(con).await.map_err(unavailable)?;
        }
        if rewritten > 0 {
            tracing::info!(rewritten, "IP addresses and user agents dropped from clicks past their lifetime");
        }
        Ok(rewritten)
    }
}

/// Drops the personal data of the click copies in the conversions of `shard` recorded in
/// UTC hour `hour` (their clicks are older still); how many were rewritten.
async fn strip_conversions(con: &mut Conn, shard: u8, hour: u64) -> StoreResult<usize> {
    let from = hour * 3_600_000;
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(conversion_times_key(shard))
        .arg(from)
        .arg(format!("({}", from + 3_600_000))
        .query_async(con)
        .await
        .map_err(unavailable)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = ids.iter().map(|id| conversion_key(shard, id)).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(con).await.map_err(unavailable)?;
    let mut pipe = redis::pipe();
    let mut n = 0;
    for (key, value) in keys.iter().zip(values) {
        // A damaged record is left as it is: reading it reports the damage.
        if let Some(Ok(Some(stripped))) = value.map(|v| schema::strip_conversion(&v)) {
            pipe.cmd("SET").arg(key).arg(stripped).ignore();
            n += 1;
        }
    }
    if n > 0 {
        let _: () = pipe.query_async(con).await.map_err(unavailable)?;
    }
    Ok(n)
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
impl ClickStore for RedisStore {
    /// Redis checks for the click itself (`HSETNX`), so the origin changes nothing here.
    async fn record_click(&self, click: &Click, _origin: ClickOrigin) -> StoreResult<()> {
        let plan = ClickPlan::of(click, &self.limits.outbox, now_ms());
        if !plan.deliveries.is_empty() {
            return self.record_forwarded_click(plan).await;
        }
        let (reply, answer) = oneshot::channel();
        // A click moves one counter by one (a click or a bot hit); the batch script adds
        // one per click to the field it names.
        let name = plan.counters.fields().into_iter().find(|(_, v)| *v != 0).map_or("clicks", |(name, _)| name);
        let pending = PendingClick {
            shard: shard(&plan.id),
            bucket_hour: created_hour(&plan.id),
            counter_day: day_of_hour(plan.hour),
            counter_field: counter_field(plan.hour, name, &plan.link),
            offer_counter_field: plan.offer_link.as_deref().map(|o| counter_field(plan.hour, name, o)),
            id: plan.id,
            encoded: plan.encoded,
            reply,
        };
        self.clicks.send(pending).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_capped_click(&self, click: &Click, claim: &CapClaim) -> StoreResult<Option<usize>> {
        self.record_capped_click_now(ClickPlan::capped(click, claim, &self.limits.outbox, now_ms())).await
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        let n = shard(click_id);
        let mut con = self.con();
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(click_bucket_key(n, created_hour(click_id)))
            .arg(click_id)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        let Some(bytes) = bytes else { return Ok(None) };
        let parsed = record::parse(&bytes)?;
        let mut get = redis::cmd("MGET");
        get.arg(intern_key(n, &parsed.context));
        if let Some(ua) = &parsed.user_agent {
            get.arg(intern_key(n, ua));
        }
        let mut values: Vec<Option<Vec<u8>>> = get.query_async(&mut con).await.map_err(unavailable)?;
        let user_agent = if parsed.user_agent.is_some() { values.pop().flatten() } else { None };
        let context =
            values.pop().flatten().ok_or_else(|| StoreError::corrupt(format!("context of click {click_id}")))?;
        parsed.into_click(click_id.to_owned(), &context, user_agent.as_deref()).map(Some)
    }
}

#[async_trait]
impl ConversionStore for RedisStore {
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        let n = shard(&conversion.click.id);
        let at = conversion.at.max(0);
        let plan = ConversionPlan::of(conversion, &self.limits.outbox, now_ms());
        let hour = plan.hour;
        let day = day_of_hour(hour);
        let mut invocation = self.record_conversion.prepare_invoke();
        invocation
            .key(conversion_key(n, &conversion.id))
            .key(conversion_times_key(n))
            .key(counters_key(n, day))
            .key(counter_days_key(n));
        add_delivery_args(&mut invocation, n, &plan.deliveries);
        invocation.arg(encode(conversion)).arg(at).arg(&conversion.id).arg(day);
        add_delivery_values(&mut invocation, &plan.deliveries);
        add_counter_args(&mut invocation, hour, &conversion.click.link, &plan.counters);
        if let Some(offer_link) = &plan.offer_link {
            add_counter_args(&mut invocation, hour, offer_link, &plan.counters);
        }
        let new: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(if new == 1 { Recorded::New } else { Recorded::Duplicate })
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
}

#[async_trait]
impl EventLog for RedisStore {
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

#[async_trait]
impl LinkStore for RedisStore {
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
}

#[async_trait]
impl Health for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.con()).await.map_err(unavailable)?;
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
}

#[async_trait]
impl Outbox for RedisStore {
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
        Ok(schema::newest_first(out, limit))
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
        let d = match schema::requeued(&old, now) {
            Ok(d) => d,
            Err(refused) => return Ok(refused),
        };
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
}

impl RedisStore {
    /// Records a person's click together with its deliveries, in one script.
    async fn record_forwarded_click(&self, plan: ClickPlan) -> StoreResult<()> {
        let ClickPlan { id, hour, link, offer_link, counters, encoded, deliveries, .. } = plan;
        let n = shard(&id);
        let day = day_of_hour(hour);
        let bucket = created_hour(&id);
        let expires = (u64::from(bucket) + 1) * 3600 + self.limits.click_ttl.as_secs();
        let mut invocation = self.record_forwarded_click.prepare_invoke();
        invocation.key(click_bucket_key(n, bucket)).key(counters_key(n, day)).key(counter_days_key(n));
        add_delivery_args(&mut invocation, n, &deliveries);
        for (key, _) in &encoded.interns {
            invocation.key(intern_key(n, key));
        }
        invocation.arg(encoded.record.as_slice()).arg(expires).arg(day);
        add_delivery_values(&mut invocation, &deliveries);
        invocation.arg(&id).arg(encoded.interns.len());
        let intern_ttl = (self.limits.click_ttl + INTERN_SPARE).as_secs();
        for (_, value) in &encoded.interns {
            invocation.arg(value.as_slice()).arg(intern_ttl);
        }
        add_counter_args(&mut invocation, hour, &link, &counters);
        if let Some(offer_link) = offer_link {
            add_counter_args(&mut invocation, hour, &offer_link, &counters);
        }
        let _new: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(())
    }

    /// A person's capped click in one script call ([`RECORD_CAPPED_CLICK`]): the click's
    /// own write and its cap check. Not batched with other clicks, whose script knows no
    /// caps; a capped click pays one round trip all the same.
    async fn record_capped_click_now(&self, mut plan: ClickPlan) -> StoreResult<Option<usize>> {
        if matches!(self.con, Conn::Cluster(_)) {
            return self.record_capped_click_on_cluster(plan).await;
        }
        let Some(caps) = plan.caps.take() else { return Err(StoreError::corrupt("a capped click without its caps")) };
        let ClickPlan { id, hour, link, counters, encoded, deliveries, .. } = plan;
        let n = shard(&id);
        let day = day_of_hour(hour);
        let bucket = created_hour(&id);
        let expires = (u64::from(bucket) + 1) * 3600 + self.limits.click_ttl.as_secs();
        let name = counters.fields().into_iter().find(|(_, v)| *v != 0).map_or("clicks", |(name, _)| name);
        let mut invocation = self.record_capped_click.prepare_invoke();
        invocation.key(click_bucket_key(n, bucket)).key(counters_key(n, day)).key(counter_days_key(n));
        add_delivery_args(&mut invocation, n, &deliveries);
        for (key, _) in &encoded.interns {
            invocation.key(intern_key(n, key));
        }
        for choice in &caps.choices {
            invocation.key(cap_counter_key(&link, &choice.cap_key));
        }
        invocation
            .arg(&id)
            .arg(expires)
            .arg(day)
            .arg(encoded.interns.len())
            .arg(caps.choices.len())
            .arg(deliveries.len())
            .arg(caps.fallback_record.as_slice())
            .arg(schema::CAP_KEEP_SECS)
            .arg(counter_field(hour, name, &link));
        for d in &deliveries {
            invocation.arg(&d.id).arg(encode(d)).arg(d.next_at);
        }
        for choice in &caps.choices {
            invocation.arg(choice.cap.unwrap_or(0)).arg(choice.record.as_slice()).arg(counter_field(
                hour,
                name,
                &choice.offer_link,
            ));
        }
        let intern_ttl = (self.limits.click_ttl + INTERN_SPARE).as_secs();
        for (_, value) in &encoded.interns {
            invocation.arg(value.as_slice()).arg(intern_ttl);
        }
        let taken: i64 = invocation.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        Ok(usize::try_from(taken).ok().and_then(|t| t.checked_sub(1)))
    }

    /// On a cluster the cap counters (in their link's slot) and the click (in its own
    /// shard's) cannot share a script: the cap is claimed first ([`CLAIM_CAP`]), then the
    /// click written with the choice taken. A failure between the two leaves a unit of
    /// the cap used without a click: a cap may then admit fewer clicks, never more.
    async fn record_capped_click_on_cluster(&self, mut plan: ClickPlan) -> StoreResult<Option<usize>> {
        let Some(caps) = plan.caps.take() else { return Err(StoreError::corrupt("a capped click without its caps")) };
        let mut claim = self.claim_cap.prepare_invoke();
        claim.arg(schema::CAP_KEEP_SECS);
        for choice in &caps.choices {
            claim.key(cap_counter_key(&plan.link, &choice.cap_key)).arg(choice.cap.unwrap_or(0));
        }
        let taken: i64 = claim.invoke_async(&mut self.con()).await.map_err(unavailable)?;
        let taken = usize::try_from(taken).ok().and_then(|t| t.checked_sub(1));
        match taken.and_then(|t| caps.choices.into_iter().nth(t)) {
            Some(choice) => (plan.encoded.record, plan.offer_link) = (choice.record, Some(choice.offer_link)),
            None => plan.encoded.record = caps.fallback_record,
        }
        self.record_forwarded_click(plan).await?;
        Ok(taken)
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
            click_bucket_key(n, 490_000),
            String::from_utf8_lossy(&intern_key(n, b"12345678")).into_owned(),
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
