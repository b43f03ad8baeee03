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
//! Clicks are not in a keyspace: they are appended to the click log (`clicklog`), files
//! by the UTC hour of the click id, sealed with an index once the hour is over, deleted
//! whole once expired; their counters, cap counts and deliveries stay here, committed
//! after the append with how far each log file is counted (for a batch of plain clicks,
//! with the next commit; see `writer`). See `clicklog` for the crash consistency between
//! the two, and `recount`. Sealing and rewriting log files run on a housekeeping thread;
//! it and the writer run under `SCHED_BATCH`, wait for work without spinning, and the
//! housekeeping is paced, so that on a core shared with the runtime neither holds up the
//! redirects (`pace`).
//!
//! Keyspaces: `clicks` (id → compact click record, see [`super::record`]: clicks written
//! before the click log, and clicks whose id is not a click id; ids sort by creation
//! time, so expired clicks are a key range, and the expiry sweep empties it within
//! `click_ttl` of the upgrade), `interns` (content hash → a value many clicks share),
//! `meta` (how far personal data has been dropped, how far each click log file is
//! counted), `conversions` (time ‖ id → conversion), `conversion_ids` (id → time), `click_conversions` (click
//! id ‖ 0 ‖ time ‖ conversion id → nothing: each click's conversions, oldest first),
//! `reversals` (conversion id → when the network reversed it; the conversion's record
//! never changes), `counters` (hour ‖ link → counters), `events` (sequence → event),
//! `links`,
//! `deliveries` (delivery id → delivery) and `outbox` (destination ‖ 0 ‖ next attempt
//! time ‖ delivery id → nothing: each destination's pending deliveries in the order they
//! fall due), `delivery_status` (status ‖ last update ‖ delivery id → nothing: the
//! listing by status, and what the sweep drops once settled deliveries are old enough).
//!
//! A directory written before `click_conversions` existed gets it built once on opening
//! (`upgrade`), which `meta` then remembers.
//!
//! Only one process can open the directory, so the leases of claimed deliveries live in
//! memory: a restart forgets them, and what was in flight is due again at once.

mod caps;
mod clicklog;
mod pace;
mod recount;
mod segment;
mod sweep;
mod tables;
#[cfg(test)]
mod tests;
mod upgrade;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot};

use super::record::{self, InternKey};
use super::schema::{self, decode, decode_reversed_at, ClickPlan, ReversalPlan};
use super::{
    BoxError, CapClaim, ClickOrigin, ClickStore, ConversionStore, EventLog, Health, LinkStore, Outbox, OutboxRoutes,
    Requeue, StoreError, StoreLimits, StoreResult,
};
use crate::clock::{every, now_ms};
use crate::model::{
    link_key, Click, ClickView, Conversion, Delivery, DeliveryStatus, Event, EventStatus, HourCounters, Link, Recorded,
    Reversed, UnixHour, UnixMillis,
};
use clicklog::{ClickLog, LogWriter, Opened, Place};
use tables::{click_conversions_prefix, outbox_key, status_byte, status_key, Tables};
use writer::Writer;

/// Most requests one batch takes; bounds the latency one commit adds.
const MAX_BATCH: usize = 4096;
/// Requests waiting for the writer before senders wait too (backpressure).
const QUEUE_DEPTH: usize = 65_536;
/// How often expired clicks are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A click on its way to the writer: planned by the caller, which may run on another core.
struct NewClick {
    plan: ClickPlan,
    /// Minted for this request, so certainly not stored yet: no need to look.
    fresh: bool,
    /// Where in the click log it goes; `None` for an id that is not a click id.
    place: Option<Place>,
}

enum Op {
    Click(Box<NewClick>, oneshot::Sender<StoreResult<()>>),
    /// A person's click subject to daily caps; answered with the choice taken.
    CappedClick(Box<NewClick>, oneshot::Sender<StoreResult<Option<usize>>>),
    Conversion(Box<Conversion>, oneshot::Sender<StoreResult<Recorded>>),
    Reverse(Box<ReversalPlan>, oneshot::Sender<StoreResult<Reversed>>),
    Event(Event, oneshot::Sender<StoreResult<()>>),
    PutLink(Link, oneshot::Sender<StoreResult<()>>),
    DeleteLink(String, oneshot::Sender<StoreResult<bool>>),
    FinishDelivery(Box<Delivery>, oneshot::Sender<StoreResult<bool>>),
    Requeue(String, UnixMillis, oneshot::Sender<StoreResult<Requeue>>),
    /// Expiry and personal data; the sender hears when the click log's part is done.
    Sweep(Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<StoreResult<()>>),
    /// Commits the counters of logged clicks still waiting in the writer's memory.
    Commit(Option<oneshot::Sender<StoreResult<()>>>),
}

/// The fjall-backed store.
pub struct EmbeddedStore {
    tables: Tables,
    log: Arc<ClickLog>,
    ops: mpsc::Sender<Op>,
    stop: Arc<AtomicBool>,
    /// Claimed deliveries: id → (owner, lease end in ms).
    leases: Mutex<HashMap<String, (String, UnixMillis)>>,
    /// Which destinations a click is enqueued for (decided by the caller, off the writer).
    outbox: OutboxRoutes,
}

fn unavailable(e: impl Into<BoxError>) -> StoreError {
    StoreError::unavailable("the embedded store failed", e)
}

impl EmbeddedStore {
    /// Opens (creating when missing) the store directory and starts its writer, its
    /// fsync timer and its expiry sweep.
    ///
    /// Must be called within a tokio runtime: the fsync timer and the expiry sweep are
    /// tasks on it (so tests can drive them with paused time). The writer is a thread of
    /// its own, see [`Writer`].
    pub fn open(path: &Path, fsync: Duration, limits: StoreLimits) -> anyhow::Result<EmbeddedStore> {
        std::fs::create_dir_all(path)
            .map_err(|e| anyhow::anyhow!("cannot create store directory {}: {e}", path.display()))?;
        let tables = Tables::open(path).map_err(|e| anyhow::anyhow!("cannot open store at {}: {e}", path.display()))?;
        let indexed = upgrade::index_conversions_by_click(&tables)
            .map_err(|e| anyhow::anyhow!("cannot index the conversions of the store at {}: {e}", path.display()))?;
        if indexed > 0 {
            tracing::info!(indexed, "conversions recorded before the index by click are now indexed");
        }
        let personal_before = tables
            .meta
            .get(writer::PERSONAL_DROPPED_UNTIL)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let Opened { log, tails, unsealed } = ClickLog::open(&path.join(clicklog::DIR), &tables.meta, personal_before)
            .map_err(|e| anyhow::anyhow!("cannot open the click log of the store at {}: {e}", path.display()))?;
        let (ops, rx) = mpsc::channel(QUEUE_DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let outbox = limits.outbox.clone();

        let jobs = clicklog::start_housekeeping(log.clone(), tables.clone())?;
        let mut writer = Writer::new(tables.clone(), limits, LogWriter::new(log.clone(), jobs))?;
        let recounted = writer
            .recount(tails)
            .map_err(|e| anyhow::anyhow!("cannot count the logged clicks of the store at {}: {e}", path.display()))?;
        if recounted > 0 {
            tracing::warn!(recounted, "clicks logged before a crash, but not yet counted, are now counted");
        }
        // The last run's open segments get their index; this run starts new ones.
        for seg in unsealed {
            writer.log.close(seg);
        }
        std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            pace::defer_to_waker();
            writer.run(rx)
        })?;

        let db = tables.db.clone();
        let sync_log = log.clone();
        let stop_sync = stop.clone();
        let commit = ops.downgrade();
        tokio::spawn(async move {
            let mut tick = every(fsync);
            loop {
                tick.tick().await;
                if stop_sync.load(Ordering::Relaxed) {
                    return;
                }
                // Counters of logged clicks wait in the writer at most this long.
                if let Some(ops) = commit.upgrade() {
                    let _ = ops.send(Op::Commit(None)).await;
                }
                let (db, log) = (db.clone(), sync_log.clone());
                // The click log first: the journal must not count clicks the disk lacks.
                let sync =
                    move || log.sync().map_err(fjall::Error::from).and_then(|()| db.persist(PersistMode::SyncAll));
                match tokio::task::spawn_blocking(sync).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "fsync of the store journal failed"),
                    Err(e) => tracing::error!(error = %e, "fsync of the store journal did not finish"),
                }
            }
        });

        // A weak sender: once the store is dropped the writer's queue closes, and so
        // does this task.
        let sweep = ops.downgrade();
        tokio::spawn(async move {
            let mut tick = every(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(ops) = sweep.upgrade() else { return };
                if ops.send(Op::Sweep(None)).await.is_err() {
                    return;
                }
            }
        });

        Ok(EmbeddedStore { tables, log, ops, stop, leases: Mutex::new(HashMap::new()), outbox })
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
    fn of(click: &ClickView<'_>, origin: ClickOrigin, outbox: &OutboxRoutes) -> NewClick {
        NewClick {
            plan: ClickPlan::of(click, outbox, now_ms()),
            fresh: origin == ClickOrigin::Minted,
            place: Place::of(click.id),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl ClickStore for EmbeddedStore {
    async fn record_click(&self, click: ClickView<'_>, origin: ClickOrigin) -> StoreResult<()> {
        self.submit(|tx| Op::Click(Box::new(NewClick::of(&click, origin, &self.outbox)), tx)).await
    }

    async fn record_capped_click(&self, click: ClickView<'_>, claim: &CapClaim) -> StoreResult<Option<usize>> {
        let plan = ClickPlan::capped(&click, claim, &self.outbox, now_ms());
        let place = Place::of(click.id);
        self.submit(|tx| Op::CappedClick(Box::new(NewClick { plan, fresh: true, place }), tx)).await
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        let id = click_id.to_owned();
        let log = self.log.clone();
        self.read(move |t| {
            let logged = match Place::of(&id) {
                Some(place) => match log.find(&id, &place).map_err(unavailable)? {
                    // Segments are rewritten without personal data an hour apart: within
                    // the hour, the read drops it.
                    Some(r) if log.is_past_personal(place.sec) => Some(record::strip_personal(&r)?.unwrap_or(r)),
                    other => other,
                },
                None => None,
            };
            // Not in the log: a click written before it, in the `clicks` keyspace.
            let bytes = match logged {
                Some(bytes) => bytes,
                None => match t.clicks.get(id.as_bytes()).map_err(unavailable)? {
                    Some(bytes) => bytes.to_vec(),
                    None => return Ok(None),
                },
            };
            let parsed = record::parse(&bytes)?;
            let interned = |key: InternKey| t.interns.get(key).map_err(unavailable);
            let context = interned(parsed.context)?.ok_or_else(|| StoreError::corrupt("click context"))?;
            let user_agent = match parsed.user_agent {
                Some(key) => interned(key)?,
                None => None,
            };
            parsed.into_click(id, &context, user_agent.as_deref()).map(Some)
        })
        .await
    }
}

#[async_trait]
impl EventLog for EmbeddedStore {
    async fn log_event(&self, event: &Event) -> StoreResult<()> {
        self.submit(|tx| Op::Event(event.clone(), tx)).await
    }

    async fn events(&self, status: Option<EventStatus>, limit: usize) -> StoreResult<Vec<Event>> {
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.events.iter().rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, v) = kv.into_inner().map_err(unavailable)?;
                let event: Event = decode(&v)?;
                if status.is_none_or(|s| s == event.status) {
                    out.push(event);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl ConversionStore for EmbeddedStore {
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        self.submit(|tx| Op::Conversion(Box::new(conversion.clone()), tx)).await
    }

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        // The latest clicks' counters may still wait in the writer.
        self.submit(|tx| Op::Commit(Some(tx))).await?;
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
                .map(|kv| with_reversal(t, decode(&kv.into_inner().map_err(unavailable)?.1)?))
                .collect()
        })
        .await
    }

    async fn conversions_of_click(&self, click_id: &str) -> StoreResult<Vec<Conversion>> {
        let prefix = click_conversions_prefix(click_id);
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.click_conversions.prefix(&prefix) {
                let key = kv.key().map_err(unavailable)?;
                // Past the click's prefix is the conversion's own key.
                let Some(bytes) = t.conversions.get(&key[prefix.len()..]).map_err(unavailable)? else { continue };
                out.push(with_reversal(t, decode(&bytes)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn reverse_conversion(&self, conversion: &Conversion, at: UnixMillis) -> StoreResult<Reversed> {
        let plan = ReversalPlan::of(conversion, at, &self.outbox, now_ms());
        self.submit(|tx| Op::Reverse(Box::new(plan), tx)).await
    }
}

/// `conversion` as read back: with its reversal time, when it was reversed.
fn with_reversal(t: &Tables, mut conversion: Conversion) -> StoreResult<Conversion> {
    if let Some(at) = t.reversals.get(conversion.id.as_bytes()).map_err(unavailable)? {
        conversion.reversed_at = Some(decode_reversed_at(&at)?);
    }
    Ok(conversion)
}

#[async_trait]
impl LinkStore for EmbeddedStore {
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
}

#[async_trait]
impl Health for EmbeddedStore {
    async fn ping(&self) -> StoreResult<()> {
        if self.ops.is_closed() {
            return Err(StoreError::Closed);
        }
        self.read(|t| t.links.first_key_value().map(|_| ()).map_or(Ok(()), Ok)).await
    }

    async fn sweep(&self) -> StoreResult<()> {
        let (done, swept) = oneshot::channel();
        self.ops.send(Op::Sweep(Some(done))).await.map_err(|_| StoreError::Closed)?;
        swept.await.map_err(|_| StoreError::Closed)?;
        self.flush().await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.submit(Op::Flush).await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[async_trait]
impl Outbox for EmbeddedStore {
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
        let mut leases = self
            .leases
            .lock()
            .map_err(|_| StoreError::unavailable("claiming deliveries", "the lease table is poisoned"))?;
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
            Ok(schema::newest_first(out, limit))
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
}
