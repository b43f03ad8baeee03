//! The click log: clicks appended to files by the UTC hour of their id, instead of a
//! keyspace. Clicks are written once, arrive in time order and expire by the hour, so
//! they need no memtable, no flush and no compaction: the writer appends a batch's
//! frames with one `write` per segment touched, and expiry deletes whole files.
//!
//! **Segments.** `clicklog/2026-11-24T13.0000.log` holds clicks whose id was created in
//! that hour (the id carries its creation time, so a lookup knows the hour). An hour has
//! one open segment at a time; the next one starts when it reaches
//! [`MAX_SEGMENT_CLICKS`], when the process restarts, or when late clicks (a spool
//! replay) arrive for an hour already sealed. The file format is in `segment`. Only the
//! writer keeps file descriptors, for the few segments it wrote last
//! ([`MAX_HANDLES`]); a read opens the file it needs, so a month of segments costs no
//! descriptors.
//!
//! **Index.** An open segment's index is in memory (id key → offset, rebuilt by scanning
//! the file on open). When a segment closes (its hour ended [`SEAL_AFTER_SECS`] ago, or it
//! is full), a background task writes its index once, sorted, at the end of the file, and
//! the memory goes. A lookup in a sealed segment is a binary search with positioned reads.
//! Memory: the current hour's segment starts with room for [`MAX_SEGMENT_CLICKS`] clicks
//! (2^19 buckets of 16 bytes, about 9 MiB), which is all there is under steady traffic,
//! plus one spare of that size: the index of the last sealed segment, emptied, or one
//! the housekeeping prepared. A new segment takes the spare, whose memory is already
//! faulted in; a fresh table would fault in its pages on the writer's first inserts,
//! and with transparent huge pages that is milliseconds of zeroing on the redirect path.
//! Sealing is paced (see `pace`), and its buffers are kept from one seal to the next.
//! Other hours' segments (late clicks, a shuffled import) grow as needed; all open
//! indexes together hold at most [`MAX_OPEN_CLICKS`] clicks (the segment written least
//! lately closes beyond), at most about 64 MiB with the maps' slack.
//!
//! **Durability.** Each append is in the operating system's buffers before the batch is
//! acknowledged, as the journal is; the fsync timer fsyncs the open segments before the
//! journal, so the journal never claims more of a segment than is on disk.
//!
//! **Crash consistency with the counters.** The counters, cap counts and deliveries of a
//! batch's clicks are committed to fjall after the append (for plain clicks, with a later
//! commit: see `writer`), with, per segment, the length the commit covers (`meta`,
//! `clicklog/<original file name>`). On open, the frames of any segment past that length
//! are counted again (see `recount`) and the length recorded; a torn last frame of an open
//! segment is cut off. Interned values travel in the log beside the first click naming
//! them, so a lost batch's values come back too.
//!
//! **Retention.** A sealed segment whose newest click is past `click_ttl` is deleted; one
//! whose newest click is past `personal_ttl` is rewritten once without IP addresses and
//! user-agent keys, with its index: written under a temporary name, fsynced, renamed to
//! `….lean.log`, then the original deleted (on open, a lean file wins). Within the hour a
//! segment can straddle, each sweep's cut-offs hold click by click, as they did when
//! clicks were keys: an open segment's index forgets the clicks past `click_ttl`, a sealed
//! segment hides those created before the last sweep's cut-off, and a read drops the
//! personal data of a click created before the last sweep's personal cut-off.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fjall::Keyspace;
use tokio::sync::{mpsc, oneshot};

use super::pace::{self, Pacer};
use super::segment::{self, Frame, OpenIndex, Sealed};
use super::tables::Tables;
use super::MAX_BATCH;
use crate::model::UnixHour;
use crate::store::record::InternKey;
use crate::store::spool::file::read_payload;

/// The click log's directory inside the store's.
pub(super) const DIR: &str = "clicklog";
/// Most clicks one segment takes: its in-memory index then fits a map of 2^19 buckets.
pub(super) const MAX_SEGMENT_CLICKS: usize = 458_752;
/// Most bytes one segment takes (offsets in the index are 32 bits).
const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Most clicks indexed in memory over all open segments; beyond, the segment written
/// least lately closes.
pub(super) const MAX_OPEN_CLICKS: usize = 1 << 21;
/// Most file descriptors the writer keeps, for the segments it wrote last.
pub(super) const MAX_HANDLES: usize = 8;
/// How long an hour's segment stays open after the hour: for a click minted in its last
/// moment and written in the next one.
pub(super) const SEAL_AFTER_SECS: u64 = 120;
/// `meta` key prefix: `clicklog/<file name>` → the segment's length the counters cover.
const META_PREFIX: &[u8] = b"clicklog/";

/// Where a click id lives in the log: its creation hour and second, and its index key.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub hour: UnixHour,
    pub sec: u32,
    pub key: u64,
}

impl Place {
    /// The place of `id`; `None` for text that is not a click id (such clicks are kept in
    /// the `clicks` keyspace, as before the log).
    pub(super) fn of(id: &str) -> Option<Place> {
        let sec = crate::clickid::created_secs(id.as_bytes())?;
        Some(Place { hour: sec / 3600, sec, key: segment::index_key(id.as_bytes()) })
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still consistent: each
    // writer of it changes it in one step.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

enum Index {
    Open(OpenIndex),
    Sealed(Sealed),
}

struct State {
    /// Where the published frames end.
    len: u64,
    clicks: usize,
    /// Creation seconds of the oldest and newest id held (`(MAX, 0)` while empty).
    range: (u32, u32),
    index: Index,
}

/// One segment file.
pub(super) struct Segment {
    hour: UnixHour,
    seq: u32,
    name: String,
    path: PathBuf,
    /// `meta` key of its covered length, built once.
    meta_key: Vec<u8>,
    state: RwLock<State>,
    /// Written since its last fsync.
    dirty: AtomicBool,
}

impl Segment {
    pub(super) fn meta_key(&self) -> &[u8] {
        &self.meta_key
    }

    /// Its hour and number.
    pub(super) fn id(&self) -> (UnixHour, u32) {
        (self.hour, self.seq)
    }

    fn open_file(&self) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(&self.path)
    }

    /// The record of click `id` if this segment holds it; a sealed segment hides the
    /// clicks created before `expired_before`. A segment deleted or replaced meanwhile
    /// answers `NotFound`.
    fn find(&self, id: &str, place: &Place, expired_before: u32) -> io::Result<Option<Vec<u8>>> {
        let (offsets, end, file) = {
            let s = read(&self.state);
            if place.sec < s.range.0 || place.sec > s.range.1 {
                return Ok(None);
            }
            match &s.index {
                Index::Open(index) => (index.offsets(place.key), s.len, None),
                Index::Sealed(_) if place.sec < expired_before => return Ok(None),
                Index::Sealed(sealed) => {
                    let file = self.open_file()?;
                    (segment::sealed_offsets(&file, sealed, place.key)?, sealed.data_end, Some(file))
                }
            }
        };
        if offsets.is_empty() {
            return Ok(None);
        }
        let file = match file {
            Some(file) => file,
            None => self.open_file()?,
        };
        for offset in offsets {
            let Some((payload, _)) = read_payload(&file, u64::from(offset), end) else { continue };
            if let Some(Frame::Click { id: held, record, .. }) = segment::parse_frame(&payload) {
                if held == id.as_bytes() {
                    return Ok(Some(record.to_vec()));
                }
            }
        }
        Ok(None)
    }

    #[cfg(test)]
    fn is_sealed(&self) -> bool {
        matches!(read(&self.state).index, Index::Sealed(_))
    }
}

/// The segment file name of `hour`'s segment number `seq`: `2026-11-24T13.0000.log`,
/// or once rewritten without personal data `2026-11-24T13.0000.lean.log`.
pub(super) fn file_name(hour: UnixHour, seq: u32, lean: bool) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(i64::from(hour) * 3600).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let lean = if lean { ".lean" } else { "" };
    format!("{:04}-{:02}-{:02}T{:02}.{seq:04}{lean}.log", at.year(), at.month() as u8, at.day(), at.hour())
}

/// The `meta` key of a segment's covered length: by its original name, which a rewrite
/// without personal data keeps (the rewrite is shorter, so still covered whole).
fn meta_key(hour: UnixHour, seq: u32) -> Vec<u8> {
    [META_PREFIX, file_name(hour, seq, false).as_bytes()].concat()
}

/// The hour, number and leanness a segment file name gives.
fn parse_name(name: &str) -> Option<(UnixHour, u32, bool)> {
    let stem = name.strip_suffix(".log")?;
    let (stem, lean) = match stem.strip_suffix(".lean") {
        Some(stem) => (stem, true),
        None => (stem, false),
    };
    let (at, seq) = stem.split_once('.')?;
    let (date, hour) = at.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i32>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(y, month, u8::try_from(d).ok()?).ok()?;
    let secs = date.with_hms(hour.parse().ok()?, 0, 0).ok()?.assume_utc().unix_timestamp();
    Some((u32::try_from(secs / 3600).ok()?, seq.parse().ok()?, lean))
}

/// Frames of an open segment that its recorded length does not cover: a batch whose
/// append reached the file but whose commit did not reach fjall.
pub(super) struct Tail {
    /// The `meta` key of its covered length, and the length to record.
    pub meta_key: Vec<u8>,
    pub end: u64,
    pub frames: Vec<Vec<u8>>,
}

/// The segments, by hour and number.
pub(super) struct ClickLog {
    dir: PathBuf,
    segments: RwLock<BTreeMap<(UnixHour, u32), Arc<Segment>>>,
    /// A segment was created or renamed since the directory's last fsync.
    dir_dirty: AtomicBool,
    /// The last sweep's cut-offs (unix seconds): clicks created before the first are
    /// expired, before the second have no personal data.
    expired_before: AtomicU32,
    personal_before: AtomicU32,
    /// An empty index with a full segment's room, faulted in, for the next segment of the
    /// current hour: a sealed segment's, recycled, or one the housekeeping prepared.
    spare: Mutex<Option<OpenIndex>>,
}

/// What opening the log found that its caller must finish: the uncovered tails to count,
/// and the open segments left by the last run, to seal.
pub(super) struct Opened {
    pub log: Arc<ClickLog>,
    pub tails: Vec<Tail>,
    pub unsealed: Vec<Arc<Segment>>,
}

impl ClickLog {
    /// Opens the log in `dir` (created when missing): reads each sealed segment's trailer
    /// and scans each open one, cutting torn tails; `meta` gives what the counters cover.
    /// `personal_before` is where the last sweep dropped personal data.
    pub(super) fn open(dir: &Path, meta: &Keyspace, personal_before: u64) -> anyhow::Result<Opened> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        let (mut tails, mut unsealed) = (Vec::new(), Vec::new());
        let mut found: BTreeMap<(UnixHour, u32), (PathBuf, bool)> = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(".tmp") {
                // A rewrite that did not finish: the original is still in place.
                std::fs::remove_file(&path)?;
                continue;
            }
            let Some((hour, seq, lean)) = parse_name(name) else { continue };
            match found.get(&(hour, seq)) {
                // A rewrite finished, but its original was not deleted yet.
                Some((_, true)) => std::fs::remove_file(&path)?,
                Some((original, false)) if lean => {
                    std::fs::remove_file(original)?;
                    found.insert((hour, seq), (path, lean));
                }
                _ => {
                    found.insert((hour, seq), (path, lean));
                }
            }
        }
        for ((hour, seq), (path, _)) in found {
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let key = meta_key(hour, seq);
            let covered = meta.get(&key)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
            let state = match segment::read_trailer(&file, size) {
                Some(sealed) => {
                    // Closed while its last clicks' counters still waited for a commit.
                    if covered < sealed.data_end {
                        let frames = segment::read_frames(&path, covered, sealed.data_end)?;
                        tails.push(Tail { meta_key: key.clone(), end: sealed.data_end, frames });
                    }
                    State {
                        len: sealed.data_end,
                        clicks: sealed.entries as usize,
                        range: (sealed.min_sec, sealed.max_sec),
                        index: Index::Sealed(sealed),
                    }
                }
                None => {
                    let scanned = segment::scan(&path, &file, covered)?;
                    if !scanned.tail.is_empty() || covered != scanned.data_end {
                        tails.push(Tail { meta_key: key.clone(), end: scanned.data_end, frames: scanned.tail });
                    }
                    State {
                        len: scanned.data_end,
                        clicks: scanned.index.len(),
                        range: scanned.range,
                        index: Index::Open(scanned.index),
                    }
                }
            };
            let sealed = matches!(state.index, Index::Sealed(_));
            let seg = Arc::new(Segment {
                hour,
                seq,
                name,
                path,
                meta_key: key,
                state: RwLock::new(state),
                dirty: AtomicBool::new(!sealed),
            });
            if !sealed {
                unsealed.push(seg.clone());
            }
            segments.insert((hour, seq), seg);
        }
        let log = Arc::new(ClickLog {
            dir: dir.to_owned(),
            segments: RwLock::new(segments),
            dir_dirty: AtomicBool::new(true),
            expired_before: AtomicU32::new(0),
            personal_before: AtomicU32::new(secs32(personal_before)),
            spare: Mutex::new(None),
        });
        Ok(Opened { log, tails, unsealed })
    }

    /// The record of click `id` (at `place`), if the log holds it.
    pub(super) fn find(&self, id: &str, place: &Place) -> io::Result<Option<Vec<u8>>> {
        self.lookup(id, place, false)
    }

    fn lookup(&self, id: &str, place: &Place, retried: bool) -> io::Result<Option<Vec<u8>>> {
        let candidates: Vec<Arc<Segment>> =
            read(&self.segments).range((place.hour, 0)..=(place.hour, u32::MAX)).map(|(_, s)| s.clone()).collect();
        let expired_before = self.expired_before.load(Ordering::Relaxed);
        for seg in candidates {
            match seg.find(id, place, expired_before) {
                Ok(None) => {}
                Ok(Some(record)) => return Ok(Some(record)),
                // Deleted or rewritten since the list was taken: look at the list again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !retried => return self.lookup(id, place, true),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether a click created at `sec` has had its personal data dropped.
    pub(super) fn is_past_personal(&self, sec: u32) -> bool {
        sec < self.personal_before.load(Ordering::Relaxed)
    }

    /// Applies a sweep's cut-offs to reads: open segments forget the clicks past their
    /// lifetime, sealed ones hide them until they are deleted.
    fn cut_off(&self, expired_before: u64, personal_before: u64) {
        let (expired_before, personal_before) = (secs32(expired_before), secs32(personal_before));
        self.personal_before.fetch_max(personal_before, Ordering::Relaxed);
        self.expired_before.fetch_max(expired_before, Ordering::Relaxed);
        let segments: Vec<Arc<Segment>> = read(&self.segments).values().cloned().collect();
        for seg in segments {
            let mut s = write(&seg.state);
            if s.range.0 < expired_before {
                if let Index::Open(index) = &mut s.index {
                    index.forget_before(expired_before);
                }
            }
        }
    }

    /// Fsyncs what was appended since the last call, and the directory if a segment was
    /// created or replaced.
    pub(super) fn sync(&self) -> io::Result<()> {
        let dirty: Vec<Arc<Segment>> =
            read(&self.segments).values().filter(|s| s.dirty.load(Ordering::Relaxed)).cloned().collect();
        for seg in dirty {
            seg.dirty.store(false, Ordering::Relaxed);
            if let Err(e) = seg.open_file().and_then(|f| f.sync_data()) {
                seg.dirty.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if self.dir_dirty.swap(false, Ordering::Relaxed) {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.dir_dirty.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A new, empty segment for `hour`, numbered after the hour's others, and its file.
    /// `room` is how many clicks its index starts with room for.
    fn create(&self, hour: UnixHour, room: usize) -> io::Result<(Arc<Segment>, File)> {
        let mut segments = write(&self.segments);
        let seq = segments.range((hour, 0)..=(hour, u32::MAX)).next_back().map_or(0, |((_, seq), _)| seq + 1);
        let name = file_name(hour, seq, false);
        let path = self.dir.join(&name);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        let seg = Arc::new(Segment {
            hour,
            seq,
            name,
            path,
            meta_key: meta_key(hour, seq),
            state: RwLock::new(State {
                len: 0,
                clicks: 0,
                range: (u32::MAX, 0),
                index: Index::Open(self.index_with_room(room)),
            }),
            dirty: AtomicBool::new(false),
        });
        segments.insert((hour, seq), seg.clone());
        self.dir_dirty.store(true, Ordering::Relaxed);
        Ok((seg, file))
    }

    /// The spare index (see [`ClickLog::spare`]), locked.
    fn spare(&self) -> MutexGuard<'_, Option<OpenIndex>> {
        // As with `read` and `write`: what a panic leaves behind is a whole index or none.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty index with room for `room` entries: the spare when it has that room.
    fn index_with_room(&self, room: usize) -> OpenIndex {
        let mut spare = self.spare();
        match spare.take() {
            Some(index) if room > 0 && index.capacity() >= room => index,
            other => {
                *spare = other;
                OpenIndex::with_capacity(room)
            }
        }
    }

    /// Makes a spare index ready when there is none.
    fn prepare_spare(&self, pacer: &mut Pacer) {
        // Not held while the index is prepared: a new segment may take the lock meanwhile.
        if self.spare().is_none() {
            let index = OpenIndex::prefaulted(MAX_SEGMENT_CLICKS, pacer);
            self.spare().get_or_insert(index);
        }
    }

    /// Writes the index of a closed segment at its end; its in-memory index goes (to
    /// the spare, when it has a full segment's room and there is none).
    fn seal(&self, seg: &Segment, bufs: &mut SealBuffers, pacer: &mut Pacer) -> io::Result<()> {
        let (len, range) = {
            // Held across the pacer's yields: only this thread writes a closed segment's
            // state, and lookups only read it.
            let s = read(&seg.state);
            match &s.index {
                Index::Open(index) => index.sorted_into(&mut bufs.entries, &mut bufs.scratch, pacer),
                Index::Sealed(_) => return Ok(()),
            }
            (s.len, s.range)
        };
        let sealed = segment::seal(&seg.open_file()?, len, &bufs.entries, range, false, pacer)?;
        seg.dirty.store(false, Ordering::Relaxed);
        let old = std::mem::replace(&mut write(&seg.state).index, Index::Sealed(sealed));
        if let Index::Open(mut index) = old {
            let mut spare = self.spare();
            if spare.is_none() && index.capacity() >= MAX_SEGMENT_CLICKS {
                index.clear();
                *spare = Some(index);
            }
        }
        Ok(())
    }

    /// Deletes sealed segments whose newest click was created before `click_cutoff`, and
    /// rewrites without personal data those whose newest click was created before
    /// `personal_cutoff` (unix seconds). Returns the segments deleted and rewritten.
    fn retain(
        &self,
        t: &Tables,
        click_cutoff: u64,
        personal_cutoff: u64,
        pacer: &mut Pacer,
    ) -> io::Result<(usize, usize)> {
        let all: Vec<Arc<Segment>> = read(&self.segments).values().cloned().collect();
        let (mut deleted, mut rewritten) = (0, 0);
        for seg in all {
            let sealed = match &read(&seg.state).index {
                Index::Sealed(sealed) => *sealed,
                Index::Open(_) => continue,
            };
            if u64::from(sealed.max_sec) < click_cutoff || sealed.entries == 0 {
                write(&self.segments).remove(&(seg.hour, seg.seq));
                std::fs::remove_file(&seg.path)?;
                let mut batch = t.db.batch();
                batch.remove(&t.meta, seg.meta_key());
                batch.commit().map_err(io::Error::other)?;
                deleted += 1;
            } else if !sealed.personal_dropped && u64::from(sealed.max_sec) < personal_cutoff {
                // Under a new name, so that a read still holding the original's index
                // never reads the copy's offsets; the original goes once replaced.
                let name = file_name(seg.hour, seg.seq, true);
                let path = self.dir.join(&name);
                let sealed = segment::rewrite_without_personal(&seg.path, &path, &sealed, pacer)?;
                let replaced = Arc::new(Segment {
                    hour: seg.hour,
                    seq: seg.seq,
                    name,
                    path,
                    meta_key: seg.meta_key.clone(),
                    state: RwLock::new(State {
                        len: sealed.data_end,
                        clicks: sealed.entries as usize,
                        range: (sealed.min_sec, sealed.max_sec),
                        index: Index::Sealed(sealed),
                    }),
                    dirty: AtomicBool::new(false),
                });
                write(&self.segments).insert((seg.hour, seg.seq), replaced);
                std::fs::remove_file(&seg.path)?;
                rewritten += 1;
            }
        }
        Ok((deleted, rewritten))
    }
}

fn secs32(secs: u64) -> u32 {
    secs.min(u64::from(u32::MAX)) as u32
}

/// Work on closed segments, done in order off the writer thread.
pub(super) enum Job {
    Seal(Arc<Segment>),
    /// Make a spare index ready for the next segment (see [`ClickLog::spare`]).
    PrepareSpare,
    /// Expiry and personal data, at the unix-second cut-offs; `done` hears when finished.
    Retain {
        click_cutoff: u64,
        personal_cutoff: u64,
        done: Option<oneshot::Sender<()>>,
    },
}

/// The housekeeping's buffers for sealing, kept from one seal to the next so that a
/// seal every few seconds does not allocate (and return) megabytes each time.
#[derive(Default)]
struct SealBuffers {
    entries: Vec<(u64, u32)>,
    scratch: Vec<(u64, u32)>,
}

/// Starts the thread that seals segments and applies retention, one job at a time
/// (they read, write and fsync whole files). It paces its work ([`Pacer`]) and runs
/// under `SCHED_BATCH`, so that a seal every few seconds at full speed does not hold up
/// redirects on the core it shares with them.
pub(super) fn start_housekeeping(log: Arc<ClickLog>, t: Tables) -> io::Result<mpsc::UnboundedSender<Job>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new().name("store-housekeeping".into()).spawn(move || {
        pace::defer_to_waker();
        let mut bufs = SealBuffers::default();
        let waiter = pace::Waiter::new();
        while let Some(job) = waiter.wait(|cx| rx.poll_recv(cx)) {
            let mut pacer = Pacer::new();
            match job {
                Job::PrepareSpare => log.prepare_spare(&mut pacer),
                Job::Seal(seg) => {
                    if let Err(e) = log.seal(&seg, &mut bufs, &mut pacer) {
                        tracing::error!(error = %e, segment = %seg.name, "sealing a click log segment failed; the next start retries");
                    }
                }
                Job::Retain { click_cutoff, personal_cutoff, done } => {
                    match log.retain(&t, click_cutoff, personal_cutoff, &mut pacer) {
                        Ok((0, 0)) => {}
                        Ok((deleted, rewritten)) => tracing::info!(
                            deleted,
                            rewritten,
                            "click log segments past their lifetime deleted, past the personal data's rewritten"
                        ),
                        Err(e) => tracing::warn!(error = %e, "click log retention stopped; the next sweep resumes it"),
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            }
        }
    })?;
    // The first segment of this run finds a spare ready, unless traffic beats the
    // housekeeping to it.
    let _ = tx.send(Job::PrepareSpare);
    Ok(tx)
}

/// One batch's appends to one segment.
struct Slot {
    seg: Arc<Segment>,
    file: Arc<File>,
    /// The segment's length before the batch.
    start: u64,
    buf: Vec<u8>,
    /// Key, offset and creation second of each click.
    entries: Vec<(u64, u32, u32)>,
    range: (u32, u32),
    written: bool,
}

/// A segment the writer appends to.
struct Open {
    seg: Arc<Segment>,
    /// Its file, while it is among the [`MAX_HANDLES`] written last.
    file: Option<Arc<File>>,
    /// The batch it was last written in.
    used: u64,
}

/// The writer thread's side of the log: the open segments and the batch being built.
pub(super) struct LogWriter {
    log: Arc<ClickLog>,
    open: Vec<Open>,
    jobs: mpsc::UnboundedSender<Job>,
    slots: Vec<Slot>,
    batch: u64,
    /// Buffers of earlier batches, kept to spare an allocation per batch.
    spare: Vec<Vec<u8>>,
}

impl LogWriter {
    pub(super) fn new(log: Arc<ClickLog>, jobs: mpsc::UnboundedSender<Job>) -> LogWriter {
        LogWriter { log, open: Vec::new(), jobs, slots: Vec::new(), batch: 0, spare: Vec::new() }
    }

    pub(super) fn log(&self) -> &ClickLog {
        &self.log
    }

    /// Hands a segment left open by the last run to the housekeeping task to seal.
    pub(super) fn close(&self, seg: Arc<Segment>) {
        let _ = self.jobs.send(Job::Seal(seg));
    }

    /// This batch's appends to `hour`'s open segment, which is opened (or started
    /// anew, when full) on the batch's first click of that hour.
    fn slot(&mut self, hour: UnixHour) -> io::Result<&mut Slot> {
        if let Some(i) = self.slots.iter().position(|s| s.seg.hour == hour) {
            return Ok(&mut self.slots[i]);
        }
        let (seg, file) = self.open_segment(hour)?;
        let start = read(&seg.state).len;
        let buf = self.spare.pop().unwrap_or_default();
        self.slots.push(Slot { seg, file, start, buf, entries: Vec::new(), range: (u32::MAX, 0), written: false });
        let last = self.slots.len() - 1;
        Ok(&mut self.slots[last])
    }

    /// `hour`'s open segment and its file (opened again if its descriptor was let go),
    /// or a new one when there is none or it is full. Called once per hour and batch.
    fn open_segment(&mut self, hour: UnixHour) -> io::Result<(Arc<Segment>, Arc<File>)> {
        if let Some(i) = self.open.iter().position(|o| o.seg.hour == hour) {
            let (len, clicks) = {
                let s = read(&self.open[i].seg.state);
                (s.len, s.clicks)
            };
            if clicks + MAX_BATCH <= MAX_SEGMENT_CLICKS && len < MAX_SEGMENT_BYTES {
                let open = &mut self.open[i];
                open.used = self.batch;
                let file = match &open.file {
                    Some(file) => file.clone(),
                    None => Arc::new(open.seg.open_file()?),
                };
                open.file = Some(file.clone());
                let seg = open.seg.clone();
                self.let_go_of_handles();
                return Ok((seg, file));
            }
            let full = self.open.swap_remove(i);
            self.close(full.seg);
        }
        // The current hour's segment will take a full segment's clicks at full speed: its
        // index gets its room at once rather than growing (each growth rehashes it all).
        let current = crate::clock::now_secs() / 3600 == u64::from(hour);
        let (seg, file) = self.log.create(hour, if current { MAX_SEGMENT_CLICKS } else { 0 })?;
        if current {
            // The spare was this segment's, or there was none: one ready for the next.
            let _ = self.jobs.send(Job::PrepareSpare);
        }
        let file = Arc::new(file);
        self.open.push(Open { seg: seg.clone(), file: Some(file.clone()), used: self.batch });
        self.let_go_of_handles();
        Ok((seg, file))
    }

    /// Closes the descriptors of the segments written least lately beyond [`MAX_HANDLES`]
    /// (a slot of this batch keeps its own).
    fn let_go_of_handles(&mut self) {
        let held = self.open.iter().filter(|o| o.file.is_some()).count();
        if held > MAX_HANDLES {
            if let Some(idle) = self.open.iter_mut().filter(|o| o.file.is_some()).min_by_key(|o| o.used) {
                idle.file = None;
            }
        }
    }

    /// Adds an interned value to this batch's appends to `hour`'s segment.
    pub(super) fn add_intern(&mut self, hour: UnixHour, key: &InternKey, value: &[u8]) -> io::Result<()> {
        segment::put_intern(&mut self.slot(hour)?.buf, key, value);
        Ok(())
    }

    /// Adds a click to this batch's appends: its frame is built in the segment's buffer.
    pub(super) fn add_click(
        &mut self,
        place: &Place,
        id: &str,
        cap_key: Option<&str>,
        record: &[u8],
    ) -> io::Result<()> {
        let slot = self.slot(place.hour)?;
        let offset = u32::try_from(slot.start + slot.buf.len() as u64)
            .map_err(|_| io::Error::other("a click log segment outgrew its 32-bit offsets"))?;
        segment::put_click(&mut slot.buf, id, cap_key, record);
        slot.entries.push((place.key, offset, place.sec));
        slot.range = (slot.range.0.min(place.sec), slot.range.1.max(place.sec));
        Ok(())
    }

    /// Writes this batch's appends, one `write` per segment; returns each segment and the
    /// length to commit for it. On failure nothing stays written.
    pub(super) fn write(&mut self) -> io::Result<Vec<(Arc<Segment>, u64)>> {
        let mut covered = Vec::with_capacity(self.slots.len());
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Err(e) = slot.file.write_all_at(&slot.buf, slot.start) {
                // A part of it may be there.
                slot.written = true;
                self.finish(false);
                return Err(e);
            }
            slot.written = true;
            slot.seg.dirty.store(true, Ordering::Relaxed);
            covered.push((slot.seg.clone(), slot.start + slot.buf.len() as u64));
        }
        Ok(covered)
    }

    /// Ends the batch: its clicks become readable when it was committed; otherwise what
    /// was written of it is cut off again.
    pub(super) fn finish(&mut self, committed: bool) {
        for mut slot in self.slots.drain(..) {
            if committed {
                let mut s = write(&slot.seg.state);
                if let Index::Open(index) = &mut s.index {
                    for &(key, offset, sec) in &slot.entries {
                        index.insert(key, offset, sec);
                    }
                }
                s.len = slot.start + slot.buf.len() as u64;
                s.clicks += slot.entries.len();
                s.range = (s.range.0.min(slot.range.0), s.range.1.max(slot.range.1));
            } else if slot.written {
                if let Err(e) = slot.file.set_len(slot.start) {
                    // Left there, the frames are counted on the next start.
                    tracing::error!(error = %e, segment = %slot.seg.name, "cutting a failed append off the click log failed");
                }
            }
            slot.buf.clear();
            self.spare.push(std::mem::take(&mut slot.buf));
        }
        self.spare.truncate(4);
        self.batch += 1;
        // Memory: beyond the bound, the segments written least lately close.
        let mut indexed: usize = self.open.iter().map(|o| read(&o.seg.state).clicks).sum();
        while indexed > MAX_OPEN_CLICKS && self.open.len() > 1 {
            let Some(i) = self.open.iter().enumerate().min_by_key(|(_, o)| o.used).map(|(i, _)| i) else { break };
            let idle = self.open.swap_remove(i);
            indexed -= read(&idle.seg.state).clicks;
            self.close(idle.seg);
        }
    }

    /// Closes the segments of hours that ended long enough ago and queues the retention
    /// pass for the given lifetimes (unix-second cut-offs); `done` hears when it finished.
    pub(super) fn sweep(
        &mut self,
        now_secs: u64,
        click_cutoff: u64,
        personal_cutoff: u64,
        done: Option<oneshot::Sender<()>>,
    ) {
        let mut i = 0;
        while i < self.open.len() {
            let hour_end = (u64::from(self.open[i].seg.hour) + 1) * 3600;
            if hour_end + SEAL_AFTER_SECS <= now_secs {
                let ended = self.open.swap_remove(i);
                self.close(ended.seg);
            } else {
                i += 1;
            }
        }
        self.log.cut_off(click_cutoff, personal_cutoff);
        let sent = self.jobs.send(Job::Retain { click_cutoff, personal_cutoff, done });
        if let Err(mpsc::error::SendError(Job::Retain { done: Some(done), .. })) = sent {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_read_back() {
        let hour = 1_795_000_000 / 3600;
        let name = file_name(hour, 7, false);
        assert_eq!(name, "2026-11-18T11.0007.log");
        assert_eq!(parse_name(&name), Some((hour, 7, false)));
        assert_eq!(parse_name(&file_name(hour, 7, true)), Some((hour, 7, true)));
        assert_eq!(parse_name("2026-11-18T08.0007.tmp"), None);
        assert_eq!(parse_name("notes.log"), None);
    }

    #[test]
    fn a_place_is_the_ids_creation_hour() {
        let ring = crate::clickid::Keyring::new("s", &[], 86_400);
        let id = ring.mint(1_795_000_000).to_string();
        let place = Place::of(&id).expect("a click id");
        assert_eq!((place.hour, place.sec), (1_795_000_000 / 3600, 1_795_000_000));
        assert!(Place::of("c").is_none());
    }

    #[test]
    fn a_rewrite_whose_original_outlived_it_wins_on_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let t = Tables::open(&dir.path().join("db")).expect("tables");
        let log = dir.path().join(DIR);
        std::fs::create_dir_all(&log).expect("directory");
        for name in [file_name(10, 0, false), file_name(10, 0, true), "2026-11-18T11.0000.lean.tmp".into()] {
            std::fs::write(log.join(name), b"").expect("write");
        }
        let opened = ClickLog::open(&log, &t.meta, 0).expect("open");
        let mut left: Vec<String> = std::fs::read_dir(&log)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        left.sort();
        assert_eq!(left, vec![file_name(10, 0, true)]);
        assert_eq!(opened.unsealed.len(), 1);
    }

    #[test]
    fn a_sealed_segment_is_not_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let t = Tables::open(&dir.path().join("db")).expect("tables");
        let opened = ClickLog::open(&dir.path().join(DIR), &t.meta, 0).expect("open");
        let (seg, _) = opened.log.create(10, 0).expect("create");
        assert!(!seg.is_sealed());
        opened.log.seal(&seg, &mut SealBuffers::default(), &mut Pacer::new()).expect("seal");
        assert!(seg.is_sealed());
    }

    fn spare_room(log: &ClickLog) -> Option<usize> {
        log.spare().as_ref().map(OpenIndex::capacity)
    }

    #[test]
    fn a_sealed_full_size_index_is_the_next_segments() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let t = Tables::open(&dir.path().join("db")).expect("tables");
        let log = ClickLog::open(&dir.path().join(DIR), &t.meta, 0).expect("open").log;
        let (full, _) = log.create(10, MAX_SEGMENT_CLICKS).expect("create");
        assert_eq!(spare_room(&log), None);
        log.seal(&full, &mut SealBuffers::default(), &mut Pacer::new()).expect("seal");
        assert!(spare_room(&log).is_some_and(|room| room >= MAX_SEGMENT_CLICKS), "the sealed index is the spare");

        // A segment of another hour (no room asked) leaves the spare alone...
        let (late, _) = log.create(9, 0).expect("create");
        assert!(spare_room(&log).is_some());
        log.seal(&late, &mut SealBuffers::default(), &mut Pacer::new()).expect("seal");
        assert!(spare_room(&log).is_some_and(|room| room >= MAX_SEGMENT_CLICKS), "a small index is not kept");
        // ...and the next full-size segment takes it.
        let (next, _) = log.create(10, MAX_SEGMENT_CLICKS).expect("create");
        assert_eq!(spare_room(&log), None);
        match &read(&next.state).index {
            Index::Open(index) => assert!(index.capacity() >= MAX_SEGMENT_CLICKS && index.len() == 0),
            Index::Sealed(_) => panic!("a new segment is open"),
        }

        // With none left, the housekeeping prepares one.
        log.prepare_spare(&mut Pacer::new());
        assert!(spare_room(&log).is_some_and(|room| room >= MAX_SEGMENT_CLICKS));
    }
}
