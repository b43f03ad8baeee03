//! The click batcher: group commit of clicks.
//!
//! Redirects hand their encoded click to one task, which takes every click waiting and
//! records them with one script call ([`record_clicks.lua`](super::scripts)), a few calls
//! in flight at once. Redis runs a handful of large calls instead of thousands of small
//! ones, and each redirect still waits for Redis to acknowledge its own click.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use super::keys::{click_bucket_key, counter_days_key, counters_key, intern_key};
use super::replicas::{WriteError, Writes};
use super::{scripts, INTERN_SPARE};
use crate::model::UnixHour;
use crate::store::record::{EncodedClick, InternKey};
use crate::store::{StoreError, StoreResult};

/// Most clicks one batch takes.
const MAX_BATCH: usize = 2048;
/// Batches in flight at once; more clicks wait and make the next batch larger.
const BATCHES_IN_FLIGHT: usize = 4;
/// How long this process remembers that an interned value is in Redis.
pub(super) const INTERN_REMEMBERED: Duration = Duration::from_secs(86_400);

/// A click waiting for the batcher, encoded by the request that made it.
pub(super) struct PendingClick {
    pub shard: u8,
    pub id: String,
    pub bucket_hour: UnixHour,
    pub counter_day: u32,
    pub counter_field: String,
    /// The same counter of the click's offer (`network/slug/offer`), if it went to one.
    pub offer_counter_field: Option<String>,
    pub encoded: EncodedClick,
    pub reply: oneshot::Sender<StoreResult<()>>,
}

/// A key a batch's script touches, named by what it holds: its text is built once per
/// batch, however many clicks use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum BatchKey {
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
pub(super) struct KeyList {
    pub keys: Vec<Vec<u8>>,
    index: HashMap<BatchKey, u64, foldhash::fast::FixedState>,
}

impl KeyList {
    pub(super) fn index(&mut self, key: BatchKey) -> u64 {
        *self.index.entry(key).or_insert_with(|| {
            self.keys.push(key.text());
            self.keys.len() as u64
        })
    }
}

/// What one batch's script call writes besides the clicks themselves, each once.
pub(super) struct BatchParts<'c> {
    /// Interned values believed stored: only named, and checked by the script.
    pub named: Vec<(u8, InternKey)>,
    /// Interned values sent with their bytes.
    pub sent: Vec<(u8, InternKey, &'c [u8])>,
    /// Hour buckets to (re-)arm the expiry of.
    pub buckets: Vec<(u8, UnixHour)>,
    /// Days to list in their shard's counter day index.
    pub days: Vec<(u8, u32)>,
}

/// What the batcher shares with the batches it sends.
#[derive(Clone)]
pub(super) struct Batcher {
    /// One script call per batch (per shard on a cluster), each followed by `WAIT` when
    /// replicas must confirm it: one `WAIT` per call, never one per click.
    writes: Writes,
    /// A cluster takes one shard's clicks per script call.
    cluster: bool,
    script: Script,
    click_ttl: Duration,
    /// Interned values known to be in Redis, per shard.
    interns: moka::sync::Cache<(u8, InternKey), ()>,
}

impl Batcher {
    pub(super) fn new(writes: Writes, cluster: bool, script: Script, click_ttl: Duration) -> Batcher {
        Batcher {
            cluster,
            writes,
            script,
            click_ttl: click_ttl.max(Duration::from_secs(1)),
            interns: moka::sync::Cache::builder()
                .max_capacity(1 << 20)
                .time_to_live(INTERN_REMEMBERED.min(click_ttl))
                .build(),
        }
    }

    /// Takes whatever clicks are waiting and sends them, a few batches in flight at once.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<PendingClick>) {
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
            Err(e) => {
                tracing::debug!(error = %e, clicks = clicks.len(), "Redis refused a batch of clicks");
                Some(e.to_string())
            }
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
    async fn call(&self, clicks: &[PendingClick], all_interns: bool) -> Result<Recording, WriteError> {
        let parts = self.parts(clicks, all_interns);
        let intern_ttl = (self.click_ttl + INTERN_SPARE).as_secs();
        let call = scripts::record_clicks(&self.script, clicks, &parts, self.click_ttl.as_secs(), intern_ttl);
        let missing: i64 = self.writes.invoke(&call).await?;
        if missing > 0 {
            return Ok(Recording::MissingInterns);
        }
        for (shard, key, _) in &parts.sent {
            self.interns.insert((*shard, *key), ());
        }
        Ok(Recording::Done)
    }

    /// The buckets, days and interned values `clicks` touch, each once.
    fn parts<'c>(&self, clicks: &'c [PendingClick], all_interns: bool) -> BatchParts<'c> {
        let mut parts = BatchParts { named: Vec::new(), sent: Vec::new(), buckets: Vec::new(), days: Vec::new() };
        for c in clicks {
            let shard = c.shard;
            if !parts.days.contains(&(shard, c.counter_day)) {
                parts.days.push((shard, c.counter_day));
            }
            if !parts.buckets.contains(&(shard, c.bucket_hour)) {
                parts.buckets.push((shard, c.bucket_hour));
            }
            for (key, value) in &c.encoded.interns {
                if parts.sent.iter().any(|(n, k, _)| *n == shard && k == key) || parts.named.contains(&(shard, *key)) {
                    continue;
                }
                if all_interns || !self.interns.contains_key(&(shard, *key)) {
                    parts.sent.push((shard, *key, value));
                } else {
                    parts.named.push((shard, *key));
                }
            }
        }
        parts
    }
}

/// How a batch's script call went.
enum Recording {
    Done,
    /// An interned value named but not sent is not in Redis; nothing was written.
    MissingInterns,
}
