//! The embedded store: fjall, an LSM engine in one directory.
//!
//! All writes go through one writer thread that drains whatever requests are waiting
//! and commits them as one batch (group commit): one journal write, flushed to the
//! operating system's buffers, acknowledges a whole burst of clicks. Once in the OS
//! buffers a write survives a kill of the process; a background thread fsyncs the
//! journal every `fsync_ms` for power loss, as Redis's `appendfsync everysec` does.
//! Because one thread applies every write, "insert unless present" and counter updates
//! are atomic without locks. Reads go straight to fjall on the blocking pool.
//!
//! Keyspaces: `clicks` (id → compact click record, see [`super::record`]; ids sort by
//! creation time, so expired clicks are a key range), `interns` (content hash → a value
//! many clicks share), `meta` (how far personal data has been dropped), `conversions`
//! (time ‖ id → conversion), `conversion_ids` (id → time), `counters` (hour ‖ link →
//! counters), `events` (sequence → event), `links`,
//! `deliveries` (delivery id → delivery) and `outbox` (destination ‖ 0 ‖ next attempt
//! time ‖ delivery id → nothing: each destination's pending deliveries in the order they
//! fall due), `delivery_status` (status ‖ last update ‖ delivery id → nothing: the
//! listing by status, and what the sweep drops once settled deliveries are old enough).
//!
//! Only one process can open the directory, so the leases of claimed deliveries live in
//! memory: a restart forgets them, and what was in flight is due again at once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::record::{self, EncodedClick, InternKey};
use super::{now_ms, OutboxRoutes, Requeue, Store, StoreError, StoreLimits, StoreResult};
use crate::clickid::ClickId;
use crate::model::{
    hour_of, link_key, Click, Conversion, Counters, Delivery, DeliveryStatus, Event, HourCounters, Link, Recorded,
    UnixHour, UnixMillis,
};

/// Most requests one batch takes; bounds the latency one commit adds.
const MAX_BATCH: usize = 4096;
/// Requests waiting for the writer before senders wait too (backpressure).
const QUEUE_DEPTH: usize = 65_536;
/// Most bytes of journal kept before memtables are written out to make room.
const JOURNAL_MAX: u64 = 128 * 1024 * 1024;
/// Memtable size of the clicks keyspace.
const CLICKS_MEMTABLE: u64 = 16 * 1024 * 1024;
/// How often expired clicks are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Tables {
    db: Database,
    clicks: Keyspace,
    conversions: Keyspace,
    conversion_ids: Keyspace,
    counters: Keyspace,
    events: Keyspace,
    links: Keyspace,
    interns: Keyspace,
    meta: Keyspace,
    deliveries: Keyspace,
    outbox: Keyspace,
    delivery_status: Keyspace,
}

impl Tables {
    fn open(path: &Path) -> Result<Tables, fjall::Error> {
        // The journal is kept until every keyspace with writes in it has flushed; bounding
        // it bounds the disk it takes and the time a restart spends replaying it.
        let db = Database::builder(path).max_journaling_size(JOURNAL_MAX).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        // Clicks fill their memtable fastest; a smaller one keeps the process's memory
        // steady (it grows to this size, then is written out) and its skiplist shallow.
        let clicks = db.keyspace("clicks", || KeyspaceCreateOptions::default().max_memtable_size(CLICKS_MEMTABLE))?;
        Ok(Tables {
            clicks,
            conversions: ks("conversions")?,
            conversion_ids: ks("conversion_ids")?,
            counters: ks("counters")?,
            events: ks("events")?,
            links: ks("links")?,
            interns: ks("interns")?,
            meta: ks("meta")?,
            deliveries: ks("deliveries")?,
            outbox: ks("outbox")?,
            delivery_status: ks("delivery_status")?,
            db,
        })
    }
}

/// A click on its way to the writer: encoded by the caller, which may run on another core.
struct NewClick {
    id: String,
    hour: UnixHour,
    link: String,
    counters: Counters,
    encoded: EncodedClick,
    /// Minted for this request, so certainly not stored yet: no need to look.
    fresh: bool,
    /// Outbox entries for destinations that take clicks (usually none).
    deliveries: Vec<Delivery>,
}

enum Op {
    Click(Box<NewClick>, oneshot::Sender<StoreResult<()>>),
    Conversion(Box<Conversion>, oneshot::Sender<StoreResult<Recorded>>),
    Event(Event, oneshot::Sender<StoreResult<()>>),
    PutLink(Link, oneshot::Sender<StoreResult<()>>),
    DeleteLink(String, oneshot::Sender<StoreResult<bool>>),
    FinishDelivery(Box<Delivery>, oneshot::Sender<StoreResult<bool>>),
    Requeue(String, UnixMillis, oneshot::Sender<StoreResult<Requeue>>),
    Sweep,
    Flush(oneshot::Sender<StoreResult<()>>),
}

/// The fjall-backed store.
pub struct EmbeddedStore {
    tables: Tables,
    ops: mpsc::Sender<Op>,
    stop: Arc<AtomicBool>,
    /// Claimed deliveries: id → (owner, lease end in ms).
    leases: Mutex<HashMap<String, (String, UnixMillis)>>,
    /// Which destinations a click is enqueued for (decided by the caller, off the writer).
    outbox: OutboxRoutes,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing the crate's own plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The outbox key of a pending delivery: its destination, then the due time, so that a
/// range read finds what is due for one destination.
fn outbox_key(destination: &str, next_at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(destination.len() + 9 + id.len());
    key.extend_from_slice(destination.as_bytes());
    key.push(0);
    key.extend_from_slice(&(next_at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The status-index key of a delivery: newest last within a status.
fn status_key(status: DeliveryStatus, updated_at: UnixMillis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.push(status_byte(status));
    key.extend_from_slice(&(updated_at.max(0) as u64).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn status_byte(status: DeliveryStatus) -> u8 {
    DeliveryStatus::ALL.iter().position(|s| *s == status).unwrap_or(0) as u8
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl EmbeddedStore {
    /// Opens (creating when missing) the store directory and starts its writer, its
    /// fsync timer and its expiry sweep.
    pub fn open(path: &Path, fsync: Duration, limits: StoreLimits) -> anyhow::Result<EmbeddedStore> {
        std::fs::create_dir_all(path)
            .map_err(|e| anyhow::anyhow!("cannot create store directory {}: {e}", path.display()))?;
        let tables = Tables::open(path).map_err(|e| anyhow::anyhow!("cannot open store at {}: {e}", path.display()))?;
        let (ops, rx) = mpsc::channel(QUEUE_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let outbox = limits.outbox.clone();

        let mut writer = Writer::new(tables.clone(), limits)?;
        std::thread::Builder::new().name("store-writer".into()).spawn(move || writer.run(rx))?;

        let db = tables.db.clone();
        let stop_sync = stop.clone();
        std::thread::Builder::new().name("store-fsync".into()).spawn(move || {
            while !stop_sync.load(Ordering::Relaxed) {
                std::thread::sleep(fsync);
                if let Err(e) = db.persist(PersistMode::SyncAll) {
                    tracing::error!(error = %e, "fsync of the store journal failed");
                }
            }
        })?;

        let sweep = ops.clone();
        let stop_sweep = stop.clone();
        std::thread::Builder::new().name("store-sweep".into()).spawn(move || {
            let mut since = Duration::ZERO;
            while !stop_sweep.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                since += Duration::from_millis(500);
                if since >= SWEEP_EVERY {
                    since = Duration::ZERO;
                    if sweep.blocking_send(Op::Sweep).is_err() {
                        return;
                    }
                }
            }
        })?;

        Ok(EmbeddedStore { tables, ops, stop, leases: Mutex::new(HashMap::new()), outbox })
    }

    async fn submit<T>(&self, op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreResult<T> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let tables = self.tables.clone();
        tokio::task::spawn_blocking(move || f(&tables)).await.map_err(unavailable)?
    }
}

impl NewClick {
    fn of(click: &Click, fresh: bool, outbox: &OutboxRoutes) -> NewClick {
        NewClick {
            deliveries: outbox.for_click(click, now_ms()),
            id: click.id.clone(),
            hour: hour_of(click.at),
            link: click.link.clone(),
            counters: Counters::for_click(click),
            encoded: record::encode(click),
            fresh,
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn record_click(&self, click: &Click) -> StoreResult<()> {
        self.submit(|tx| Op::Click(Box::new(NewClick::of(click, false, &self.outbox)), tx)).await
    }

    async fn record_new_click(&self, click: &Click) -> StoreResult<()> {
        self.submit(|tx| Op::Click(Box::new(NewClick::of(click, true, &self.outbox)), tx)).await
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        let id = click_id.to_owned();
        self.read(move |t| {
            let Some(bytes) = t.clicks.get(id.as_bytes()).map_err(unavailable)? else {
                return Ok(None);
            };
            let parsed = record::parse(&bytes)?;
            let interned = |key: InternKey| t.interns.get(key).map_err(unavailable);
            let context = interned(parsed.context)?.ok_or_else(|| StoreError::Corrupt("click context".into()))?;
            let user_agent = match parsed.user_agent {
                Some(key) => interned(key)?,
                None => None,
            };
            parsed.into_click(id, &context, user_agent.as_deref()).map(Some)
        })
        .await
    }

    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        self.submit(|tx| Op::Conversion(Box::new(conversion.clone()), tx)).await
    }

    async fn log_event(&self, event: &Event) -> StoreResult<()> {
        self.submit(|tx| Op::Event(event.clone(), tx)).await
    }

    async fn events(&self, status: Option<&str>, limit: usize) -> StoreResult<Vec<Event>> {
        let status = status.map(str::to_owned);
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.events.iter().rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = kv.into_inner().map_err(unavailable)?;
                let event: Event = decode(&v)?;
                if status.as_deref().is_none_or(|s| s == event.status) {
                    out.push(event);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        self.read(move |t| {
            let mut out = Vec::new();
            let start = from.to_be_bytes();
            let end = to.saturating_add(1).to_be_bytes();
            let range = t.counters.range(start.as_slice()..end.as_slice());
            for kv in range {
                let (k, v) = kv.into_inner().map_err(unavailable)?;
                if k.len() < 4 {
                    continue;
                }
                let hour = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
                let link = String::from_utf8_lossy(&k[4..]).into_owned();
                out.push(HourCounters { hour, link, counters: decode(&v)? });
            }
            Ok(out)
        })
        .await
    }

    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>> {
        self.read(move |t| {
            let start = (from.max(0) as u64).to_be_bytes();
            let end = (to.max(0) as u64).to_be_bytes();
            t.conversions
                .range(start.as_slice()..end.as_slice())
                .map(|kv| decode(&kv.into_inner().map_err(unavailable)?.1))
                .collect()
        })
        .await
    }

    async fn links(&self) -> StoreResult<Vec<Link>> {
        self.read(|t| t.links.iter().map(|kv| decode(&kv.into_inner().map_err(unavailable)?.1)).collect()).await
    }

    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>> {
        let key = link_key(network, slug);
        self.read(move |t| match t.links.get(key.as_bytes()).map_err(unavailable)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn put_link(&self, link: &Link) -> StoreResult<()> {
        self.submit(|tx| Op::PutLink(link.clone(), tx)).await
    }

    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool> {
        self.submit(|tx| Op::DeleteLink(link_key(network, slug), tx)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.ops.is_closed() {
            return Err(StoreError::Closed);
        }
        self.read(|t| t.links.first_key_value().map(|_| ()).map_or(Ok(()), Ok)).await
    }

    async fn sweep(&self) -> StoreResult<()> {
        self.ops.send(Op::Sweep).await.map_err(|_| StoreError::Closed)?;
        self.flush().await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.submit(Op::Flush).await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        destination: &str,
        now: UnixMillis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        // Read a little more than `limit`: some due entries may be leased already.
        let leased = self.leases.lock().map_or(0, |l| l.len());
        let want = limit + leased;
        let start = outbox_key(destination, 0, "");
        let prefix_len = start.len();
        let end = outbox_key(destination, now.saturating_add(1), "");
        let due: Vec<Delivery> = self
            .read(move |t| {
                let mut out = Vec::new();
                for kv in t.outbox.range(start..end).take(want) {
                    let key = kv.key().map_err(unavailable)?;
                    let id = &key[prefix_len..];
                    if let Some(bytes) = t.deliveries.get(id).map_err(unavailable)? {
                        out.push(decode::<Delivery>(&bytes)?);
                    }
                }
                Ok(out)
            })
            .await?;
        let until = now.saturating_add(lease.as_millis() as i64);
        let mut leases = self.leases.lock().map_err(|_| StoreError::Unavailable("lease table poisoned".into()))?;
        let mut claimed = Vec::new();
        for d in due {
            if claimed.len() >= limit {
                break;
            }
            if leases.get(&d.id).is_some_and(|(_, end)| *end > now) {
                continue;
            }
            leases.insert(d.id.clone(), (owner.to_owned(), until));
            claimed.push(d);
        }
        Ok(claimed)
    }

    async fn finish_delivery(&self, owner: &str, delivery: &Delivery) -> StoreResult<bool> {
        let holds = self.leases.lock().is_ok_and(|l| l.get(&delivery.id).is_some_and(|(o, _)| o == owner));
        if !holds {
            return Ok(false);
        }
        let done = self.submit(|tx| Op::FinishDelivery(Box::new(delivery.clone()), tx)).await;
        if let Ok(mut leases) = self.leases.lock() {
            leases.remove(&delivery.id);
        }
        done
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let destination = destination.map(str::to_owned);
        let statuses: Vec<DeliveryStatus> = status.map_or_else(|| DeliveryStatus::ALL.to_vec(), |s| vec![s]);
        self.read(move |t| {
            let mut out = Vec::new();
            // Newest first within each status; several statuses are merged below.
            for status in statuses {
                let mut taken = 0;
                for kv in t.delivery_status.prefix([status_byte(status)]).rev() {
                    if taken >= limit {
                        break;
                    }
                    let key = kv.key().map_err(unavailable)?;
                    let Some(bytes) = t.deliveries.get(&key[9..]).map_err(unavailable)? else { continue };
                    let d: Delivery = decode(&bytes)?;
                    if destination.as_deref().is_none_or(|n| n == d.destination) {
                        out.push(d);
                        taken += 1;
                    }
                }
            }
            out.sort_by(|a, b| (b.updated_at, &b.id).cmp(&(a.updated_at, &a.id)));
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn deliveries_of(&self, _click_id: &str, event_id: &str) -> StoreResult<Vec<Delivery>> {
        let prefix = Delivery::id_for(event_id, "");
        self.read(move |t| {
            t.deliveries.prefix(prefix.as_bytes()).map(|kv| decode(&kv.into_inner().map_err(unavailable)?.1)).collect()
        })
        .await
    }

    async fn requeue_delivery(&self, id: &str, now: UnixMillis) -> StoreResult<Requeue> {
        self.submit(|tx| Op::Requeue(id.to_owned(), now, tx)).await
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        self.read(|t| {
            let mut n = 0u64;
            for kv in t.outbox.iter() {
                kv.key().map_err(unavailable)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// The one thread that writes.
struct Writer {
    t: Tables,
    limits: StoreLimits,
    /// Sequence number of the newest and the oldest event kept.
    last_event: u64,
    first_event: u64,
    /// Interned values known to be stored, so each is written once, not once per click.
    /// Cleared when it grows large; rewriting an interned value is harmless.
    known: HashSet<InternKey, foldhash::fast::FixedState>,
}

/// Interned keys remembered by the writer before it starts over.
const KNOWN_INTERNS_MAX: usize = 1 << 20;
/// `meta` key: creation time (unix seconds) below which clicks have no personal data.
const PERSONAL_DROPPED_UNTIL: &[u8] = b"personal_dropped_until";

/// Replies owed once a batch is committed.
enum Reply {
    Unit(oneshot::Sender<StoreResult<()>>),
    Recorded(oneshot::Sender<StoreResult<Recorded>>, Recorded),
    Bool(oneshot::Sender<StoreResult<bool>>, bool),
    Requeue(oneshot::Sender<StoreResult<Requeue>>, Requeue),
}

impl Reply {
    fn send(self, failure: Option<&str>) {
        let err = || StoreError::Unavailable(failure.unwrap_or_default().to_owned());
        // A requester that gave up (its connection closed) no longer listens; that is fine.
        match self {
            Reply::Unit(tx) => {
                let _ = tx.send(failure.map_or(Ok(()), |_| Err(err())));
            }
            Reply::Recorded(tx, r) => {
                let _ = tx.send(failure.map_or(Ok(r), |_| Err(err())));
            }
            Reply::Bool(tx, b) => {
                let _ = tx.send(failure.map_or(Ok(b), |_| Err(err())));
            }
            Reply::Requeue(tx, r) => {
                let _ = tx.send(failure.map_or(Ok(r), |_| Err(err())));
            }
        }
    }
}

impl Writer {
    fn new(t: Tables, limits: StoreLimits) -> anyhow::Result<Writer> {
        let seq = |kv: Option<fjall::Guard>| -> anyhow::Result<Option<u64>> {
            Ok(match kv {
                Some(g) => {
                    let k = g.key()?;
                    Some(u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
                }
                None => None,
            })
        };
        let last = seq(t.events.last_key_value())?;
        let first = seq(t.events.first_key_value())?;
        Ok(Writer {
            last_event: last.unwrap_or(0),
            first_event: first.unwrap_or(1),
            t,
            limits,
            known: HashSet::default(),
        })
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = rx.blocking_recv() {
            ops.push(op);
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.apply(&mut ops);
        }
        if let Err(e) = self.t.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "final fsync of the store failed");
        }
    }

    /// Applies a burst of requests as one atomic batch, then answers them all.
    fn apply(&mut self, ops: &mut Vec<Op>) {
        let mut batch = self.t.db.batch();
        let mut replies = Vec::with_capacity(ops.len());
        let mut flushes = Vec::new();
        let mut deltas: HashMap<(UnixHour, String), Counters, foldhash::fast::FixedState> = HashMap::default();
        let mut new_ids: HashSet<String> = HashSet::new();
        let mut failure: Option<String> = None;
        let mut new_interns: Vec<InternKey> = Vec::new();
        let event_mark = (self.first_event, self.last_event);

        for op in ops.drain(..) {
            match op {
                Op::Click(click, tx) => {
                    let NewClick { id, hour, link, counters, encoded, fresh, deliveries } = *click;
                    let stored = if fresh { Ok(false) } else { self.t.clicks.contains_key(id.as_bytes()) };
                    match stored {
                        Ok(false) if fresh || new_ids.insert(id.clone()) => {
                            deltas.entry((hour, link)).or_default().add(&counters);
                            for (key, value) in encoded.interns {
                                if self.known.len() >= KNOWN_INTERNS_MAX {
                                    self.known.clear();
                                }
                                if self.known.insert(key) {
                                    new_interns.push(key);
                                    batch.insert(&self.t.interns, key, value);
                                }
                            }
                            batch.insert(&self.t.clicks, id.as_bytes(), encoded.record);
                            if !deliveries.is_empty() {
                                self.enqueue(&mut batch, deliveries);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => failure = Some(e.to_string()),
                    }
                    replies.push(Reply::Unit(tx));
                }
                Op::Conversion(conv, tx) => {
                    let outcome = match self.t.conversion_ids.contains_key(conv.id.as_bytes()) {
                        Ok(false) if new_ids.insert(conv.id.clone()) => {
                            let at = (conv.at.max(0) as u64).to_be_bytes();
                            let mut key = at.to_vec();
                            key.extend_from_slice(conv.id.as_bytes());
                            deltas
                                .entry((hour_of(conv.at), conv.click.link.clone()))
                                .or_default()
                                .add(&Counters::for_conversion(&conv));
                            batch.insert(&self.t.conversions, key, encode(&*conv));
                            batch.insert(&self.t.conversion_ids, conv.id.as_bytes(), at.to_vec());
                            self.enqueue(&mut batch, self.limits.outbox.for_conversion(&conv, now_ms()));
                            Recorded::New
                        }
                        Ok(_) => Recorded::Duplicate,
                        Err(e) => {
                            failure = Some(e.to_string());
                            Recorded::Duplicate
                        }
                    };
                    replies.push(Reply::Recorded(tx, outcome));
                }
                Op::Event(event, tx) => {
                    self.last_event += 1;
                    batch.insert(&self.t.events, self.last_event.to_be_bytes(), encode(&event));
                    while self.last_event + 1 - self.first_event > self.limits.event_log_max.max(1) as u64 {
                        batch.remove(&self.t.events, self.first_event.to_be_bytes());
                        self.first_event += 1;
                    }
                    replies.push(Reply::Unit(tx));
                }
                Op::PutLink(link, tx) => {
                    batch.insert(&self.t.links, link.key().as_bytes(), encode(&link));
                    replies.push(Reply::Unit(tx));
                }
                Op::DeleteLink(key, tx) => {
                    let existed = match self.t.links.contains_key(key.as_bytes()) {
                        Ok(existed) => existed,
                        Err(e) => {
                            failure = Some(e.to_string());
                            false
                        }
                    };
                    batch.remove(&self.t.links, key.as_bytes());
                    replies.push(Reply::Bool(tx, existed));
                }
                Op::FinishDelivery(delivery, tx) => {
                    let stored = self
                        .t
                        .deliveries
                        .get(delivery.id.as_bytes())
                        .map_err(unavailable)
                        .and_then(|v| v.map(|b| decode::<Delivery>(&b)).transpose());
                    let applied = match stored {
                        Ok(Some(old)) if old.status == DeliveryStatus::Pending => {
                            self.put_delivery(&mut batch, &delivery, Some(&old));
                            true
                        }
                        Ok(_) => false,
                        Err(e) => {
                            failure = Some(e.to_string());
                            false
                        }
                    };
                    replies.push(Reply::Bool(tx, applied));
                }
                Op::Requeue(id, now, tx) => {
                    let stored = self
                        .t
                        .deliveries
                        .get(id.as_bytes())
                        .map_err(unavailable)
                        .and_then(|v| v.map(|b| decode::<Delivery>(&b)).transpose());
                    let outcome = match stored {
                        Ok(Some(old)) if old.status.can_requeue() => {
                            let mut d = old.clone();
                            d.status = DeliveryStatus::Pending;
                            d.attempts = 0;
                            d.next_at = now;
                            d.updated_at = now;
                            self.put_delivery(&mut batch, &d, Some(&old));
                            Requeue::Done(Box::new(d))
                        }
                        Ok(Some(d)) => Requeue::NotDeadLettered(d.status),
                        Ok(None) => Requeue::NotFound,
                        Err(e) => {
                            failure = Some(e.to_string());
                            Requeue::NotFound
                        }
                    };
                    replies.push(Reply::Requeue(tx, outcome));
                }
                Op::Sweep => {
                    self.sweep();
                    self.sweep_deliveries();
                }
                Op::Flush(tx) => flushes.push(tx),
            }
        }

        for ((hour, link), delta) in deltas {
            let mut key = hour.to_be_bytes().to_vec();
            key.extend_from_slice(link.as_bytes());
            let mut total = match self.t.counters.get(&key) {
                Ok(Some(v)) => decode::<Counters>(&v).unwrap_or_default(),
                Ok(None) => Counters::default(),
                Err(e) => {
                    failure = Some(e.to_string());
                    Counters::default()
                }
            };
            total.add(&delta);
            batch.insert(&self.t.counters, key, encode(&total));
        }

        if failure.is_none() {
            if let Err(e) = batch.commit() {
                failure = Some(e.to_string());
            }
        }
        if let Some(f) = &failure {
            tracing::error!(error = %f, "store batch failed; its requests are answered with an error");
            (self.first_event, self.last_event) = event_mark;
            for key in new_interns {
                self.known.remove(&key);
            }
        }
        for reply in replies {
            reply.send(failure.as_deref());
        }
        for tx in flushes {
            let _ = tx.send(self.t.db.persist(PersistMode::SyncAll).map_err(unavailable));
        }
    }

    /// Adds new outbox entries to `batch`.
    fn enqueue(&self, batch: &mut fjall::OwnedWriteBatch, deliveries: Vec<Delivery>) {
        for d in &deliveries {
            self.put_delivery(batch, d, None);
        }
    }

    /// Writes a delivery, its status-index entry and, while it is pending, its place in
    /// the outbox, replacing those of `old`.
    fn put_delivery(&self, batch: &mut fjall::OwnedWriteBatch, d: &Delivery, old: Option<&Delivery>) {
        if let Some(old) = old {
            if old.status == DeliveryStatus::Pending {
                batch.remove(&self.t.outbox, outbox_key(&old.destination, old.next_at, &old.id));
            }
            batch.remove(&self.t.delivery_status, status_key(old.status, old.updated_at, &old.id));
        }
        batch.insert(&self.t.deliveries, d.id.as_bytes(), encode(d));
        batch.insert(&self.t.delivery_status, status_key(d.status, d.updated_at, &d.id), Vec::<u8>::new());
        if d.status == DeliveryStatus::Pending {
            batch.insert(&self.t.outbox, outbox_key(&d.destination, d.next_at, &d.id), Vec::<u8>::new());
        }
    }

    /// Drops settled deliveries last updated before the outbox's retention: a range of
    /// each settled status's index.
    fn sweep_deliveries(&mut self) {
        let Some(keep) = self.limits.outbox.keep_settled() else { return };
        let cutoff = now_ms().saturating_sub(keep.as_millis() as i64);
        let mut dropped = 0usize;
        for status in DeliveryStatus::ALL.into_iter().filter(|s| *s != DeliveryStatus::Pending) {
            let range = status_key(status, 0, "")..status_key(status, cutoff, "");
            let removed = self.remove_range(&self.t.delivery_status, range, |batch, k| {
                batch.remove(&self.t.deliveries, k[9..].to_vec());
            });
            match removed {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery sweep stopped");
                    return;
                }
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, "settled deliveries past their retention dropped");
        }
    }

    /// Removes every key of `range` from `keyspace`, a bounded batch at a time, letting
    /// `also` remove what belongs to each key elsewhere in the same batch; how many.
    fn remove_range<R: std::ops::RangeBounds<Vec<u8>> + Clone>(
        &self,
        keyspace: &Keyspace,
        range: R,
        also: impl Fn(&mut fjall::OwnedWriteBatch, &[u8]),
    ) -> Result<usize, fjall::Error> {
        let mut removed = 0;
        loop {
            let mut batch = self.t.db.batch();
            let mut n = 0;
            for kv in keyspace.range(range.clone()).take(MAX_BATCH) {
                let k = kv.key()?;
                also(&mut batch, &k);
                batch.remove(keyspace, k);
                n += 1;
            }
            if n == 0 {
                return Ok(removed);
            }
            batch.commit()?;
            removed += n;
        }
    }

    /// Drops clicks past their lifetime, then the personal data of clicks past theirs.
    fn sweep(&mut self) {
        self.drop_expired_clicks();
        self.drop_personal_data();
    }

    /// Expired clicks are the key range below the id bound of the cut-off time, so only
    /// expired keys are visited.
    fn drop_expired_clicks(&mut self) {
        let cutoff = now_secs().saturating_sub(self.limits.click_ttl.as_secs());
        let bound = ClickId::lower_bound(cutoff).as_str().as_bytes().to_vec();
        match self.remove_range(&self.t.clicks, ..bound, |_, _| {}) {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "expired clicks dropped"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep stopped"),
        }
    }

    /// Rewrites the clicks created since the last pass and now older than the personal
    /// data lifetime without their IP address and user agent. The pass remembers where it
    /// stopped, so each click is rewritten once.
    fn drop_personal_data(&mut self) {
        let until = now_secs().saturating_sub(self.limits.personal_ttl.as_secs());
        let since = match self.t.meta.get(PERSONAL_DROPPED_UNTIL) {
            Ok(v) => v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "personal-data sweep stopped");
                return;
            }
        };
        if since >= until {
            return;
        }
        let (from, to) = (ClickId::lower_bound(since), ClickId::lower_bound(until));
        let clicks = self.rewrite_range(&self.t.clicks, from.as_str().as_bytes()..to.as_str().as_bytes(), |v| {
            record::strip_personal(v)
        });
        // Conversions keep a copy of their click for reports and forwarding: the same
        // rule applies to it, by the conversion's time (its click is older still).
        let (from, to) = ((since * 1000).to_be_bytes(), (until * 1000).to_be_bytes());
        let conversions = self.rewrite_range(&self.t.conversions, from.as_slice()..to.as_slice(), |v| {
            let mut conversion: Conversion = decode(v)?;
            Ok(conversion.click.drop_personal_data().then(|| encode(&conversion)))
        });
        let outcome = clicks.and_then(|c| Ok((c, conversions?))).and_then(|counts| {
            let mut batch = self.t.db.batch();
            batch.insert(&self.t.meta, PERSONAL_DROPPED_UNTIL, until.to_be_bytes());
            batch.commit().map_err(unavailable)?;
            Ok(counts)
        });
        match outcome {
            Ok((0, 0)) => {}
            Ok((clicks, conversions)) => tracing::info!(
                clicks,
                conversions,
                "IP addresses and user agents dropped from clicks past their lifetime"
            ),
            Err(e) => tracing::warn!(error = %e, "personal-data sweep stopped; it resumes on the next pass"),
        }
    }

    /// Replaces each value of `range` in `keyspace` by what `rewrite` makes of it (`None`:
    /// leave it), a bounded batch at a time; how many were replaced. A damaged value is
    /// left as it is: reading it reports the damage.
    fn rewrite_range(
        &self,
        keyspace: &Keyspace,
        range: std::ops::Range<&[u8]>,
        rewrite: impl Fn(&[u8]) -> StoreResult<Option<Vec<u8>>>,
    ) -> StoreResult<usize> {
        let mut rewritten = 0;
        let mut batch = self.t.db.batch();
        let mut pending = 0;
        for kv in keyspace.range(range) {
            let (k, v) = kv.into_inner().map_err(unavailable)?;
            match rewrite(&v) {
                Ok(Some(new)) => {
                    batch.insert(keyspace, k, new);
                    pending += 1;
                }
                Ok(None) | Err(StoreError::Corrupt(_)) => {}
                Err(e) => return Err(e),
            }
            if pending >= MAX_BATCH {
                std::mem::replace(&mut batch, self.t.db.batch()).commit().map_err(unavailable)?;
                rewritten += pending;
                pending = 0;
            }
        }
        batch.commit().map_err(unavailable)?;
        Ok(rewritten + pending)
    }
}
