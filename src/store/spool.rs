//! The outage spool: clicks and postbacks kept on local disk while the store is down.
//!
//! DESIGN §11 promises that a visitor is always redirected and that nothing accepted is
//! lost when the store fails (Redis gone, or the embedded store's disk refusing writes).
//! [`SpooledStore`] wraps the configured store and implements [`Store`] itself:
//!
//! - **Direct** (the normal state): every call goes straight to the inner store. The
//!   only added cost is one atomic load of the mode.
//! - **Spooling**: a write the inner store refused, and every write after it, is appended
//!   to `spool.log` in the spool directory. The click is acknowledged once its record is
//!   in the operating system's buffers (it survives a kill of the process); a background
//!   thread fsyncs the file every `fsync_ms`, as the embedded store does its journal, so
//!   one fsync covers every record of the interval. Each record is one `write` under a
//!   short lock: a page-cache write of a few hundred bytes, cheaper than handing it to a
//!   writer thread and waiting for the reply, and the spool only runs during an outage.
//!   Postbacks are checked without the store, kept as [`QueuedPostback`] records and
//!   answered `202 queued` by the postback route.
//! - **Draining**: a background task pings the inner store; once it answers, the spool
//!   is replayed in order through the store's idempotent writes (queued postbacks through
//!   a [`Resolve`] the application provides). When the replay is within a few records of
//!   the end, new writes wait for those last records (milliseconds), the file is
//!   truncated, and the mode goes back to direct. New writes go to the spool until then
//!   so that a postback never overtakes the click it converts.
//!
//! Each record is framed as `length (u32 LE) ‖ CRC-32 of the payload (u32 LE) ‖ payload`
//! (the payload is postcard). A crash can leave a torn last record; opening the spool
//! checks every frame and cuts the file at the first one that does not verify, so a torn
//! tail is dropped, never replayed as garbage. A record replayed twice (a crash during a
//! replay, before the truncation) changes nothing: the store's writes are idempotent.
//!
//! Spooled clicks stay readable: an in-memory index maps each spooled click id to its
//! record's offset, and [`Store::find_click`] reads the record back from the file. The
//! index costs a few dozen bytes per click instead of the whole click, and a lookup is
//! one read from the page cache; replaying on every read would cost a scan of the file.
//!
//! The spool is bounded by `spool_max_bytes`. When it is full a click is refused (the
//! redirect still answers and logs the click in full) and postbacks answer `503` so that
//! the network retries them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Requeue, Store, StoreError, StoreResult};
use crate::model::{
    Click, Conversion, Delivery, DeliveryStatus, Event, HourCounters, Link, QueuedPostback, Recorded, UnixHour,
    UnixMillis,
};
use crate::telemetry;

/// The spool file inside the spool directory.
const FILE_NAME: &str = "spool.log";
/// Bytes of a frame header: payload length and its CRC-32.
const HEADER: usize = 8;
/// Largest payload a frame may claim; anything larger is a torn or foreign header.
const MAX_PAYLOAD: usize = 16 << 20;
/// How often a spooling store's inner store is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Records read and replayed per step.
const REPLAY_CHUNK: usize = 4096;
/// When no more than this many bytes are left to replay, new writes wait for the end.
const DRAIN_AT: u64 = 64 * 1024;

const DIRECT: u8 = 0;
const SPOOLING: u8 = 1;
const DRAINING: u8 = 2;

/// `[store]` settings of the spool.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// Directory holding `spool.log`; created when missing.
    pub path: PathBuf,
    /// Most bytes the spool file may hold.
    pub max_bytes: u64,
    /// How often written records are fsync'd.
    pub fsync: Duration,
}

/// What the spool keeps, in arrival order.
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Click(Click),
    Event(Event),
    Postback(QueuedPostback),
}

/// Resolves a postback that was queued during an outage, now that the store answers.
/// The application provides it: resolving needs the links, networks and click-id keys,
/// which the storage layer knows nothing of.
#[async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `postback` against `store` as if it had arrived at its `received_at`,
    /// and logs its event. An error leaves it in the spool for the next attempt.
    async fn resolve(&self, store: &Arc<dyn Store>, postback: &QueuedPostback) -> StoreResult<()>;
}

/// The spool's state, for `/readyz` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SpoolStatus {
    /// Whether writes go to the spool (the store failed, or the spool is being replayed).
    pub active: bool,
    /// Whether a write was refused for lack of room since the spool was last emptied.
    pub full: bool,
    pub bytes: u64,
    pub max_bytes: u64,
    pub records: u64,
    /// Records replayed into the store since the process started.
    pub replayed: u64,
}

/// The spool file and what is known about its content.
struct SpoolFile {
    file: File,
    len: u64,
    records: u64,
    /// Spooled click id → offset of its frame.
    clicks: HashMap<String, u64>,
    /// Written since the last fsync.
    dirty: bool,
}

/// A store that keeps writes on local disk while its inner store is down. See the
/// module documentation.
pub struct SpooledStore {
    inner: Arc<dyn Store>,
    mode: AtomicU8,
    file: Mutex<SpoolFile>,
    /// A second handle on the file, for reads and fsync without the lock.
    reader: File,
    /// Wakes writers waiting for a drain to end.
    drained: Notify,
    /// One replay at a time (the background task, or the final one at shutdown).
    replaying: tokio::sync::Mutex<()>,
    full: AtomicBool,
    /// Whether the inner store answered the probe's last ping (while spooling).
    probe_up: AtomicBool,
    replayed: AtomicU64,
    max_bytes: u64,
    stop: Arc<AtomicBool>,
    stop_probe: Arc<Notify>,
}

fn io_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("outage spool: {e}"))
}

/// A frame for `entry`.
fn frame(entry: &Entry) -> StoreResult<Vec<u8>> {
    let payload = postcard::to_stdvec(entry).map_err(io_error)?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the frame at `offset` of `file`, whose valid content ends at `end`: the entry
/// and the offset after it, or `None` when no whole, verified frame is there.
fn read_frame(file: &File, offset: u64, end: u64) -> Option<(Result<Entry, String>, u64)> {
    if offset + HEADER as u64 > end {
        return None;
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset).ok()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let next = offset + (HEADER + len) as u64;
    if len > MAX_PAYLOAD || next > end {
        return None;
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + HEADER as u64).ok()?;
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    Some((postcard::from_bytes(&payload).map_err(|e| e.to_string()), next))
}

impl SpooledStore {
    /// Opens (creating when missing) the spool in `config.path` around `inner`, drops a
    /// torn tail, and starts the fsync thread. A spool left non-empty by an earlier run
    /// starts in spooling mode and is replayed once [`SpooledStore::start`] runs.
    pub fn open(inner: Arc<dyn Store>, config: &SpoolConfig) -> anyhow::Result<Arc<SpooledStore>> {
        let dir = &config.path;
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create spool directory {}: {e}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open spool {}: {e}", path.display()))?;
        let reader = file.try_clone()?;
        let (len, records, clicks) = scan(&path, &file)?;
        let stop = Arc::new(AtomicBool::new(false));
        let store = Arc::new(SpooledStore {
            inner,
            mode: AtomicU8::new(if len > 0 { SPOOLING } else { DIRECT }),
            file: Mutex::new(SpoolFile { file, len, records, clicks, dirty: false }),
            reader,
            drained: Notify::new(),
            replaying: tokio::sync::Mutex::new(()),
            full: AtomicBool::new(false),
            probe_up: AtomicBool::new(false),
            replayed: AtomicU64::new(0),
            max_bytes: config.max_bytes,
            stop: stop.clone(),
            stop_probe: Arc::new(Notify::new()),
        });
        if len > 0 {
            tracing::warn!(records, bytes = len, "outage spool holds records from an earlier run; replaying them");
        }
        store.publish(len, records);

        let weak = Arc::downgrade(&store);
        let fsync = config.fsync;
        std::thread::Builder::new().name("spool-fsync".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(fsync);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.sync() {
                    tracing::error!(error = %e, "fsync of the outage spool failed");
                }
            }
        })?;
        Ok(store)
    }

    /// Starts the task that probes the inner store while spooling and replays the spool
    /// once it answers.
    pub fn start(self: &Arc<SpooledStore>, resolver: Arc<dyn Resolve>) {
        let weak = Arc::downgrade(self);
        let stop_probe = self.stop_probe.clone();
        tokio::spawn(async move {
            // Failed replays in a row: a store that answers pings but refuses writes (a
            // full disk) would otherwise log four warnings a second.
            let mut failures = 0u32;
            loop {
                let Some(store) = weak.upgrade() else { return };
                if store.stop.load(Ordering::Relaxed) {
                    return;
                }
                if store.mode.load(Ordering::Acquire) != DIRECT {
                    let up = tokio::time::timeout(PROBE_EVERY * 8, store.inner.ping()).await;
                    let up = matches!(up, Ok(Ok(())));
                    store.probe_up.store(up, Ordering::Relaxed);
                    if up {
                        match store.replay(resolver.as_ref()).await {
                            Ok(_) => failures = 0,
                            Err(e) => {
                                if failures % 40 == 0 {
                                    tracing::warn!(error = %e, failures, "replay of the outage spool stopped; retrying");
                                }
                                failures = failures.wrapping_add(1);
                            }
                        }
                    }
                }
                let stopped = stop_probe.notified();
                drop(store);
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                    _ = stopped => return,
                }
            }
        });
    }

    /// The spool's state.
    pub fn status(&self) -> SpoolStatus {
        let f = self.lock();
        SpoolStatus {
            active: self.mode.load(Ordering::Acquire) != DIRECT,
            full: self.full.load(Ordering::Relaxed),
            bytes: f.len,
            max_bytes: self.max_bytes,
            records: f.records,
            replayed: self.replayed.load(Ordering::Relaxed),
        }
    }

    /// While spooling, whether the store answered the last probe (every 250 ms), so that
    /// `/readyz` need not wait on a store that is down; `None` in direct mode.
    pub fn probed_store_up(&self) -> Option<bool> {
        self.is_spooling().then(|| self.probe_up.load(Ordering::Relaxed))
    }

    /// Whether writes currently go to the spool; postbacks are then queued.
    pub fn is_spooling(&self) -> bool {
        self.mode.load(Ordering::Acquire) != DIRECT
    }

    /// Records a click, or keeps it in the spool when the store refuses it: what the
    /// redirect calls. Being an inherent `async fn`, it is awaited in place, so in direct
    /// mode it adds one atomic load to the store's own call and no allocation (going
    /// through the `Store` trait would box one more future per click).
    /// `fresh`: the click id was minted for this request (see [`Store::record_new_click`]).
    pub async fn record_or_spool_click(&self, click: &Click, fresh: bool) -> StoreResult<()> {
        let tried = self.mode.load(Ordering::Acquire) == DIRECT;
        if tried {
            let recorded =
                if fresh { self.inner.record_new_click(click).await } else { self.inner.record_click(click).await };
            match recorded {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "the store refused a click; spooling it"),
            }
        }
        // Boxed, so that the rare path does not grow every redirect's future.
        Box::pin(self.write(Entry::Click(click.clone()), tried)).await
    }

    /// Keeps a postback that could not be resolved for lack of a store.
    pub async fn queue_postback(&self, postback: QueuedPostback) -> StoreResult<()> {
        self.write(Entry::Postback(postback), true).await
    }

    /// Fsyncs what was written to the spool.
    pub fn sync(&self) -> std::io::Result<()> {
        let dirty = std::mem::replace(&mut self.lock().dirty, false);
        if dirty {
            if let Err(e) = self.reader.sync_data() {
                // Try again next time.
                self.lock().dirty = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// At shutdown: stops the probe, replays what it can if the store answers, and
    /// fsyncs the spool; whatever is left is replayed at the next start.
    pub async fn close(&self, resolver: &dyn Resolve) -> StoreResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_probe.notify_waiters();
        if self.is_spooling() && matches!(tokio::time::timeout(PROBE_EVERY * 8, self.inner.ping()).await, Ok(Ok(()))) {
            if let Err(e) = self.replay(resolver).await {
                tracing::warn!(error = %e, "outage spool not fully replayed at shutdown; it is kept for the next start");
            }
        }
        self.sync_and_report().map_err(io_error)
    }

    /// Fsyncs the spool and logs what it keeps for the next start: the last step of a
    /// shutdown, also when the deadline leaves no time for a replay.
    pub fn sync_and_report(&self) -> std::io::Result<()> {
        self.sync()?;
        let status = self.status();
        if status.records > 0 {
            tracing::warn!(
                records = status.records,
                bytes = status.bytes,
                "outage spool kept on disk for the next start"
            );
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, SpoolFile> {
        // A panic while holding the lock leaves a consistent file: every field is set
        // after the write it describes.
        self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, bytes: u64, records: u64) {
        metrics::gauge!(telemetry::SPOOL_BYTES).set(bytes as f64);
        metrics::gauge!(telemetry::SPOOL_RECORDS).set(records as f64);
    }

    /// Writes `entry` to the inner store while in direct mode (unless `tried` says the
    /// store just refused it), to the spool otherwise.
    async fn write(&self, mut entry: Entry, mut tried: bool) -> StoreResult<()> {
        loop {
            if !tried && self.mode.load(Ordering::Acquire) == DIRECT {
                let direct = match &entry {
                    Entry::Click(click) => self.inner.record_click(click).await,
                    Entry::Event(event) => self.inner.log_event(event).await,
                    Entry::Postback(_) => Err(StoreError::Unavailable("postbacks are only queued".into())),
                };
                match direct {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::debug!(error = %e, "the store refused a write; spooling it"),
                }
            }
            tried = false;
            match self.append(entry).await? {
                None => return Ok(()),
                Some(back) => entry = back,
            }
        }
    }

    /// Appends one record, waiting while a drain finishes. Once this returns `Ok(None)`
    /// the record is in the operating system's buffers. `Ok(Some(entry))` hands a click
    /// or event back when a drain ended while it waited: the store takes it directly.
    async fn append(&self, entry: Entry) -> StoreResult<Option<Entry>> {
        let bytes = frame(&entry)?;
        let mut waited = false;
        loop {
            let drained = self.drained.notified();
            {
                let mut f = self.lock();
                let mode = self.mode.load(Ordering::Acquire);
                if waited && mode == DIRECT && !matches!(entry, Entry::Postback(_)) {
                    return Ok(Some(entry));
                }
                if mode != DRAINING {
                    if f.len + bytes.len() as u64 > self.max_bytes {
                        self.full.store(true, Ordering::Relaxed);
                        return Err(StoreError::Unavailable("the store is down and the outage spool is full".into()));
                    }
                    if let Err(e) = f.file.write_all(&bytes) {
                        // Cut a partial write off so that the next record starts clean.
                        let len = f.len;
                        let _ = f.file.set_len(len);
                        return Err(io_error(e));
                    }
                    let at = f.len;
                    if let Entry::Click(click) = &entry {
                        f.clicks.insert(click.id.clone(), at);
                    }
                    f.len += bytes.len() as u64;
                    f.records += 1;
                    f.dirty = true;
                    if mode == DIRECT {
                        self.probe_up.store(false, Ordering::Relaxed);
                        self.mode.store(SPOOLING, Ordering::Release);
                        tracing::warn!(
                            "the store refused a write; keeping writes in the outage spool until it is back"
                        );
                    }
                    self.publish(f.len, f.records);
                    return Ok(None);
                }
            }
            drained.await;
            waited = true;
        }
    }

    /// The click `id` if it is waiting in the spool.
    fn spooled_click(&self, id: &str) -> Option<Click> {
        let f = self.lock();
        let offset = *f.clicks.get(id)?;
        match read_frame(&self.reader, offset, f.len) {
            Some((Ok(Entry::Click(click)), _)) if click.id == id => Some(click),
            _ => None,
        }
    }

    /// Replays the spool into the inner store, in order, and empties it.
    async fn replay(&self, resolver: &dyn Resolve) -> StoreResult<u64> {
        let _one = self.replaying.lock().await;
        // However the replay ends (an error, or its future dropped at a shutdown
        // deadline), writers waiting for a drain must not wait forever.
        let _undrain = Undrain(self);
        let mut offset = 0u64;
        let mut done = 0u64;
        loop {
            let end = self.lock().len;
            let mut entries = Vec::new();
            let mut next = offset;
            while entries.len() < REPLAY_CHUNK {
                match read_frame(&self.reader, next, end) {
                    Some((entry, after)) => {
                        entries.push(entry);
                        next = after;
                    }
                    None => break,
                }
            }
            if entries.is_empty() {
                if end > offset {
                    let e = StoreError::Corrupt(format!("outage spool record at byte {offset} does not verify"));
                    return Err(e);
                }
                let mut f = self.lock();
                if f.len != offset {
                    continue;
                }
                f.file.set_len(0).map_err(io_error)?;
                f.len = 0;
                f.records = 0;
                f.clicks = HashMap::new();
                f.dirty = true;
                self.full.store(false, Ordering::Relaxed);
                self.mode.store(DIRECT, Ordering::Release);
                self.publish(0, 0);
                drop(f);
                self.drained.notify_waiters();
                if done > 0 {
                    tracing::info!(records = done, "outage spool replayed into the store and emptied");
                }
                return Ok(done);
            }
            let n = entries.len() as u64;
            self.apply(entries, resolver).await?;
            done += n;
            self.replayed.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(telemetry::SPOOL_REPLAYED).increment(n);
            offset = next;
            let f = self.lock();
            if f.len.saturating_sub(offset) <= DRAIN_AT {
                // The last few records: new writes wait for them so that the switch
                // back to the store cannot be overtaken.
                self.mode.store(DRAINING, Ordering::Release);
            }
        }
    }

    /// Writes a chunk of replayed records to the inner store, in three concurrent waves:
    /// every click first (no click depends on another), then every postback (each
    /// postback's click came before it in the spool, so it is stored by now; two copies of
    /// one postback share their conversion id, which the store records once), then the
    /// event-log entries in their order. Waiting for each record in turn would replay
    /// slower than a busy site spools, and the spool would never drain.
    async fn apply(&self, entries: Vec<Result<Entry, String>>, resolver: &dyn Resolve) -> StoreResult<()> {
        let mut clicks = Vec::new();
        let mut postbacks = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            match entry {
                Ok(Entry::Click(click)) => clicks.push(click),
                Ok(Entry::Postback(postback)) => postbacks.push(postback),
                Ok(Entry::Event(event)) => events.push(event),
                // The frame verified, so this is a record of another version: keep going.
                Err(e) => tracing::error!(error = %e, "outage spool record cannot be read; skipped"),
            }
        }
        first_error(join_all(clicks.iter().map(|click| self.inner.record_click(click))).await)?;
        first_error(join_all(postbacks.iter().map(|postback| resolver.resolve(&self.inner, postback))).await)?;
        for event in &events {
            self.inner.log_event(event).await?;
        }
        Ok(())
    }
}

/// `Ok` when every write succeeded, else the first error (the whole chunk is replayed
/// again later; replaying is idempotent).
fn first_error(results: Vec<StoreResult<()>>) -> StoreResult<()> {
    results.into_iter().collect()
}

/// Ends a replay: if it stopped while draining, writers that wait for the drain go back
/// to the spool.
struct Undrain<'a>(&'a SpooledStore);

impl Drop for Undrain<'_> {
    fn drop(&mut self) {
        let store = self.0;
        let guard = store.lock();
        if store.mode.load(Ordering::Acquire) == DRAINING {
            store.mode.store(SPOOLING, Ordering::Release);
        }
        drop(guard);
        store.drained.notify_waiters();
    }
}

/// Reads the spool file at startup: its valid length, record count and click index. A
/// torn or corrupt tail is cut off.
fn scan(path: &Path, file: &File) -> anyhow::Result<(u64, u64, HashMap<String, u64>)> {
    let size = file.metadata()?.len();
    let mut reader = std::io::BufReader::new(file.try_clone()?);
    let mut offset = 0u64;
    let mut records = 0u64;
    let mut clicks = HashMap::new();
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            break;
        }
        payload.resize(len, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        if let Ok(Entry::Click(click)) = postcard::from_bytes::<Entry>(&payload) {
            clicks.insert(click.id, offset);
        }
        offset += (HEADER + len) as u64;
        records += 1;
    }
    if offset < size {
        tracing::warn!(
            spool = %path.display(),
            dropped_bytes = size - offset,
            "outage spool ends in a torn or corrupt record (a crash while writing); it is dropped"
        );
        file.set_len(offset)?;
        file.sync_data()?;
    }
    Ok((offset, records, clicks))
}

#[async_trait]
impl Store for SpooledStore {
    async fn record_click(&self, click: &Click) -> StoreResult<()> {
        self.record_or_spool_click(click, false).await
    }

    async fn record_new_click(&self, click: &Click) -> StoreResult<()> {
        self.record_or_spool_click(click, true).await
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        if self.mode.load(Ordering::Acquire) != DIRECT {
            if let Some(click) = self.spooled_click(click_id) {
                return Ok(Some(click));
            }
        }
        self.inner.find_click(click_id).await
    }

    /// Conversions come only from postbacks, which are queued whole while spooling: a
    /// conversion written now could overtake a queued one.
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        if self.mode.load(Ordering::Acquire) != DIRECT {
            return Err(StoreError::Unavailable("the store is down or replaying its outage spool".into()));
        }
        self.inner.record_conversion(conversion).await
    }

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

    async fn events(&self, status: Option<&str>, limit: usize) -> StoreResult<Vec<Event>> {
        self.inner.events(status, limit).await
    }

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        self.inner.counters(from, to).await
    }

    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>> {
        self.inner.conversions(from, to).await
    }

    async fn links(&self) -> StoreResult<Vec<Link>> {
        self.inner.links().await
    }

    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>> {
        self.inner.link(network, slug).await
    }

    async fn put_link(&self, link: &Link) -> StoreResult<()> {
        self.inner.put_link(link).await
    }

    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool> {
        self.inner.delete_link(network, slug).await
    }

    // The outbox lives in the store: while it is down the worker's calls fail and it
    // tries again later; deliveries are enqueued by the replayed conversions themselves.
    async fn claim_deliveries(
        &self,
        owner: &str,
        destination: &str,
        now: UnixMillis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.inner.claim_deliveries(owner, destination, now, lease, limit).await
    }

    async fn finish_delivery(&self, owner: &str, delivery: &Delivery) -> StoreResult<bool> {
        self.inner.finish_delivery(owner, delivery).await
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.inner.deliveries(status, destination, limit).await
    }

    async fn deliveries_of(&self, click_id: &str, event_id: &str) -> StoreResult<Vec<Delivery>> {
        self.inner.deliveries_of(click_id, event_id).await
    }

    async fn requeue_delivery(&self, id: &str, now: UnixMillis) -> StoreResult<Requeue> {
        self.inner.requeue_delivery(id, now).await
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        self.inner.outbox_depth().await
    }

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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::model::{hour_of, Conversion};
    use crate::money::Money;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::StoreLimits;

    fn click(id: &str, at: UnixMillis) -> Click {
        Click {
            id: id.to_owned(),
            link: "cake/demo".into(),
            at,
            bot: None,
            ip: Some("203.0.113.9".into()),
            user_agent: Some("Mozilla/5.0".into()),
            referer: None,
            utm: vec![("source".into(), "facebook".into())],
            ad_click_ids: Vec::new(),
            subids: Vec::new(),
        }
    }

    fn queued(click_id: &str, at: UnixMillis) -> QueuedPostback {
        QueuedPostback {
            received_at: at,
            network: "cake".into(),
            present: vec![("s2".into(), click_id.into()), ("price".into(), "7".into())],
            absent: Vec::new(),
        }
    }

    /// A real embedded store in `dir`.
    fn embedded(dir: &Path) -> Arc<dyn Store> {
        let limits = StoreLimits {
            click_ttl: Duration::from_secs(86_400),
            event_log_max: 100,
            personal_ttl: crate::store::PERSONAL_DATA_TTL,
            outbox: Default::default(),
        };
        Arc::new(EmbeddedStore::open(&dir.join("db"), Duration::from_millis(100), limits).expect("open the store"))
    }

    fn spool_over(inner: Arc<dyn Store>, dir: &Path, max_bytes: u64) -> Arc<SpooledStore> {
        let config = SpoolConfig { path: dir.join("spool"), max_bytes, fsync: Duration::from_millis(50) };
        SpooledStore::open(inner, &config).expect("open the spool")
    }

    /// Resolves a queued postback into a conversion of its click, noting what it saw.
    #[derive(Default)]
    struct Converter {
        seen: StdMutex<Vec<(String, bool)>>,
    }

    #[async_trait]
    impl Resolve for Converter {
        async fn resolve(&self, store: &Arc<dyn Store>, postback: &QueuedPostback) -> StoreResult<()> {
            let id = postback.present[0].1.clone();
            let found = store.find_click(&id).await?;
            self.seen.lock().expect("lock").push((id.clone(), found.is_some()));
            if let Some(click) = found {
                let conversion = Conversion {
                    id: format!("conv-{id}"),
                    at: postback.received_at,
                    network: postback.network.clone(),
                    event: "Purchase".into(),
                    value: Money::from_micros(7_000_000),
                    currency: "USD".into(),
                    transaction_id: None,
                    item_id: None,
                    fields: postback.present.clone(),
                    click,
                };
                store.record_conversion(&conversion).await?;
            }
            Ok(())
        }
    }

    async fn clicks_counted(store: &Arc<dyn Store>, at: UnixMillis) -> (u64, u64) {
        let hours = store.counters(hour_of(at), hour_of(at)).await.expect("counters");
        let clicks = hours.iter().map(|h| h.counters.clicks).sum();
        let conversions = hours.iter().map(|h| h.counters.conversions).sum();
        (clicks, conversions)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_or_corrupt_tail_is_dropped_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = embedded(dir.path());
        let at = 1_700_000_000_000;
        let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
        for id in ["a", "b", "c"] {
            spool.append(Entry::Click(click(id, at))).await.expect("append");
        }
        let whole = spool.status();
        assert_eq!((whole.records, whole.active), (3, true));
        drop(spool);

        // A crash in the middle of a write: a header promising more than follows.
        let file_path = dir.path().join("spool").join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&file_path).expect("open");
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).expect("write a torn record");
        drop(file);
        let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
        let status = spool.status();
        assert_eq!((status.records, status.bytes), (3, whole.bytes), "the torn tail is gone, the rest kept");
        assert_eq!(std::fs::metadata(&file_path).expect("stat").len(), whole.bytes);
        assert!(status.active, "a non-empty spool from an earlier run waits for replay");
        assert_eq!(spool.find_click("c").await.expect("read").map(|c| c.id), Some("c".to_owned()));
        drop(spool);

        // A flipped bit in the last record's payload: its checksum fails, it is dropped.
        let mut bytes = std::fs::read(&file_path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file_path, &bytes).expect("write");
        let spool = spool_over(inner, dir.path(), 1 << 20);
        assert_eq!(spool.status().records, 2);
        assert_eq!(spool.find_click("c").await.expect("read"), None, "not in the spool, not in the store");
        assert!(spool.find_click("b").await.expect("read").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spool_is_bounded_and_emptied_by_a_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = embedded(dir.path());
        let spool = spool_over(inner.clone(), dir.path(), 4096);
        let at = 1_700_000_000_000;
        let mut kept = Vec::new();
        let refused = loop {
            let id = format!("click-{}", kept.len());
            match spool.append(Entry::Click(click(&id, at))).await {
                Ok(_) => kept.push(id),
                Err(e) => break e,
            }
            assert!(kept.len() < 1000, "the bound was never reached");
        };
        assert!(refused.to_string().contains("full"), "{refused}");
        let status = spool.status();
        assert!(status.full && status.bytes <= 4096 && status.records == kept.len() as u64, "{status:?}");

        assert_eq!(spool.replay(&Converter::default()).await.expect("replay"), kept.len() as u64);
        let status = spool.status();
        assert_eq!((status.active, status.full, status.bytes, status.records), (false, false, 0, 0));
        assert_eq!(clicks_counted(&inner, at).await, (kept.len() as u64, 0));
        assert_eq!(std::fs::metadata(dir.path().join("spool").join(FILE_NAME)).expect("stat").len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_keeps_order_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = embedded(dir.path());
        let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
        let at = 1_700_000_000_000;
        // "a" reached the store before the outage (its answer was lost, so it was spooled too).
        inner.record_click(&click("a", at)).await.expect("record");
        let entries = || {
            let mut out = vec![Entry::Click(click("a", at))];
            out.extend((0..600).map(|i| Entry::Click(click(&format!("bulk-{i}"), at))));
            out.push(Entry::Click(click("b", at)));
            out.push(Entry::Postback(queued("b", at + 1)));
            out.push(Entry::Event(Event {
                received_at: at + 1,
                network: "cake".into(),
                status: "queued".into(),
                reason: "store_unavailable".into(),
                click_id: Some("b".into()),
                conversion_id: None,
                query: "s2=b&price=7".into(),
            }));
            out.push(Entry::Postback(queued("a", at + 2)));
            out
        };
        for entry in entries() {
            spool.append(entry).await.expect("append");
        }
        assert!(spool.find_click("b").await.expect("read").is_some(), "a spooled click is found before replay");
        let converter = Converter::default();
        assert_eq!(spool.replay(&converter).await.expect("replay"), 605);
        let mut seen = converter.seen.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(
            seen,
            [("a".to_owned(), true), ("b".to_owned(), true)],
            "each postback is resolved after its click is in the store"
        );
        assert_eq!(clicks_counted(&inner, at).await, (602, 2), "\"a\" counts once");
        assert_eq!(inner.events(None, 10).await.expect("events").len(), 1);

        // A crash after the records reached the store but before the spool was emptied:
        // the same records are replayed again and change no figure.
        for entry in entries() {
            spool.append(entry).await.expect("append");
        }
        spool.replay(&converter).await.expect("replay");
        assert_eq!(clicks_counted(&inner, at).await, (602, 2));
        assert!(!spool.is_spooling());
    }
}
