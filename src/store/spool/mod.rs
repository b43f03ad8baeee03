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

mod capabilities;
pub(super) mod file;
mod replay;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{CapClaim, ClickOrigin, Store, StoreError, StoreResult};
use crate::clock::every;
use crate::model::{Click, ClickView, Event, QueuedPostback};
use crate::telemetry;
use file::{frame, io_error, read_frame, scan, Scanned, SpoolFile, FILE_NAME};
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
    async fn resolve(&self, store: &dyn Store, postback: &QueuedPostback) -> StoreResult<()>;
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
    /// One replay at a time (the background task, or the final one at shutdown): the
    /// one place an async lock is right, since the second replay must wait for the whole
    /// of the first, awaits included.
    #[allow(clippy::disallowed_types)]
    replaying: tokio::sync::Mutex<()>,
    full: AtomicBool,
    /// Whether the inner store answered the probe's last ping (while spooling).
    probe_up: AtomicBool,
    replayed: AtomicU64,
    max_bytes: u64,
    stop: Arc<AtomicBool>,
    stop_probe: Arc<Notify>,
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
        let Scanned { len, records, clicks, postbacks } = scan(&path, &file)?;
        let stop = Arc::new(AtomicBool::new(false));
        let store = Arc::new(SpooledStore {
            inner,
            mode: AtomicU8::new(if len > 0 { SPOOLING } else { DIRECT }),
            file: Mutex::new(SpoolFile { file, len, records, clicks, postbacks, dirty: false }),
            reader,
            drained: Notify::new(),
            #[allow(clippy::disallowed_types)]
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
        let mut tick = every(config.fsync);
        tokio::spawn(async move {
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(store) = weak.upgrade() else { return };
                // The fsync blocks; it runs on the blocking pool, off the request workers.
                match tokio::task::spawn_blocking(move || store.sync()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "fsync of the outage spool failed"),
                    Err(e) => tracing::error!(error = %e, "fsync of the outage spool did not finish"),
                }
            }
        });
        Ok(store)
    }

    /// The store the spool wraps, for what the spool does not change (links, the outbox).
    pub fn backend(&self) -> &Arc<dyn Store> {
        &self.inner
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
    pub async fn record_or_spool_click(&self, click: ClickView<'_>, origin: ClickOrigin) -> StoreResult<()> {
        let tried = self.mode.load(Ordering::Acquire) == DIRECT;
        if tried {
            match self.inner.record_click(click, origin).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "the store refused a click; spooling it"),
            }
        }
        // Boxed, so that the rare path does not grow every redirect's future.
        Box::pin(self.write(Entry::Click(click.to_click()), tried)).await
    }

    /// [`ClickStore::record_capped_click`] through the spool. While the store is down no
    /// cap can be checked, so the click takes the first candidate and is spooled with it:
    /// an outage may let a cap overshoot by the clicks it spooled, never lose a click.
    pub async fn record_or_spool_capped_click(
        &self,
        click: ClickView<'_>,
        claim: &CapClaim,
    ) -> StoreResult<Option<usize>> {
        let tried = self.mode.load(Ordering::Acquire) == DIRECT;
        if tried {
            match self.inner.record_capped_click(click, claim).await {
                Ok(taken) => return Ok(taken),
                Err(e) => tracing::debug!(error = %e, "the store refused a capped click; spooling it"),
            }
        }
        let mut kept = click.to_click();
        kept.offer = claim.candidates.first().map(|c| c.offer.clone());
        Box::pin(self.write(Entry::Click(kept), tried)).await.map(|()| Some(0).filter(|_| !claim.candidates.is_empty()))
    }

    /// Keeps a postback that could not be resolved for lack of a store.
    /// The postbacks waiting in the spool for the store, oldest first.
    pub fn queued_postbacks(&self) -> Vec<QueuedPostback> {
        self.lock().postbacks.clone()
    }

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
                    Entry::Click(click) => self.inner.record_click(click.view(), ClickOrigin::Replayed).await,
                    Entry::Event(event) => self.inner.log_event(event).await,
                    Entry::Postback(_) => Err(StoreError::Closed),
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
                    // Once full, it stays full until a replay empties it: what a smaller
                    // record would still fit is no reason to take it after refusing another.
                    if self.full.load(Ordering::Relaxed) || f.len + bytes.len() as u64 > self.max_bytes {
                        self.full.store(true, Ordering::Relaxed);
                        return Err(StoreError::SpoolFull);
                    }
                    if let Err(e) = f.file.write_all(&bytes) {
                        // Cut a partial write off so that the next record starts clean.
                        let len = f.len;
                        let _ = f.file.set_len(len);
                        return Err(io_error(e));
                    }
                    let at = f.len;
                    match &entry {
                        Entry::Click(click) => {
                            f.clicks.insert(click.id.clone(), at);
                        }
                        Entry::Postback(postback) => f.postbacks.push(postback.clone()),
                        Entry::Event(_) => {}
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
}
