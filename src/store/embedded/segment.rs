//! One segment of the click log: a file of framed records, appended to while it is open,
//! then sealed with an index, and never appended to again.
//!
//! ```text
//! frame* ‖ [index frame ‖ trailer]      (the part in brackets once sealed)
//! ```
//!
//! Frames are the outage spool's (`length ‖ CRC-32 ‖ payload`, see `spool::file`), so a
//! torn last record is found and cut off the same way. A payload starts with its kind:
//!
//! - **click**: id length (1 byte), id, cap key length (2 bytes LE, 0 for none), cap
//!   key, then the compact record of `store::record`. The cap key is the daily-cap
//!   counter the click took, so that a recount after a crash moves it too.
//! - **intern**: an interned value's 8-byte key, then the value. Written in the same
//!   append as the first click that needs it, so that the click log alone can restore
//!   what a lost batch of the other keyspaces held.
//! - **index**: the sealed segment's index, `(key u64 LE, offset u32 LE)` pairs sorted
//!   by key, where the key is [`index_key`] of a click id and the offset that of its frame.
//!
//! The trailer (fixed size, at the very end) says where the index starts, how many
//! entries it has, the range of creation times (unix seconds) of the ids it holds, and
//! whether personal data was dropped; it ends with its CRC and a magic number. It is
//! written only after the index is on disk, so a file with a valid trailer has a whole
//! index: opening a sealed segment reads only the trailer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::pace::{self, Pacer};
use crate::clickid::created_secs;
use crate::store::record::{self, InternKey};
use crate::store::spool::file::{frame_header, put_frame, scan_frames, HEADER};

const KIND_CLICK: u8 = 1;
const KIND_INTERN: u8 = 2;
const KIND_INDEX: u8 = 3;
/// Bytes of one index entry: key and offset.
const ENTRY: u64 = 12;
/// Bytes of the trailer.
const TRAILER: u64 = 36;
const MAGIC: &[u8; 8] = b"cklogix1";
/// Trailer flag: the clicks of this segment keep no IP address or user agent.
const PERSONAL_DROPPED: u32 = 1;

/// The index key of a click id: FNV-1a, 64 bits. Sealed indexes store it, so it must
/// never change with a library version; collisions are allowed (each candidate's id is
/// compared), merely rare.
pub(super) fn index_key(id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Appends a click's frame: its id, the cap counter it took (if any) and its record.
pub(super) fn put_click(out: &mut Vec<u8>, id: &str, cap_key: Option<&str>, record: &[u8]) {
    let cap_key = cap_key.unwrap_or_default();
    put_frame(out, |out| {
        out.reserve(4 + id.len() + cap_key.len() + record.len());
        out.push(KIND_CLICK);
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&(cap_key.len() as u16).to_le_bytes());
        out.extend_from_slice(cap_key.as_bytes());
        out.extend_from_slice(record);
    });
}

/// Appends an interned value's frame.
pub(super) fn put_intern(out: &mut Vec<u8>, key: &InternKey, value: &[u8]) {
    put_frame(out, |out| {
        out.push(KIND_INTERN);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    });
}

/// A frame's payload, read.
pub(super) enum Frame<'a> {
    Click { id: &'a [u8], cap_key: &'a [u8], record: &'a [u8] },
    Intern { key: InternKey, value: &'a [u8] },
    Index,
}

/// Reads a payload; `None` for one this version does not know (damage, since a frame's
/// CRC verified: it is skipped, and reading the click it held reports it missing).
pub(super) fn parse_frame(payload: &[u8]) -> Option<Frame<'_>> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        KIND_CLICK => {
            let (&id_len, rest) = rest.split_first()?;
            let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
            let (len, rest) = rest.split_at_checked(2)?;
            let (cap_key, record) = rest.split_at_checked(usize::from(u16::from_le_bytes([len[0], len[1]])))?;
            Some(Frame::Click { id, cap_key, record })
        }
        KIND_INTERN => {
            let (key, value) = rest.split_at_checked(8)?;
            Some(Frame::Intern { key: key.try_into().ok()?, value })
        }
        KIND_INDEX => Some(Frame::Index),
        _ => None,
    }
}

/// The index of an open segment, in memory: key → offset and the id's creation second
/// (16 bytes a bucket), and the rare second click whose key another already has.
#[derive(Default)]
pub(super) struct OpenIndex {
    map: HashMap<u64, (u32, u32), foldhash::fast::FixedState>,
    extra: Vec<(u64, u32, u32)>,
}

impl OpenIndex {
    pub(super) fn with_capacity(n: usize) -> OpenIndex {
        OpenIndex { map: HashMap::with_capacity_and_hasher(n, Default::default()), extra: Vec::new() }
    }

    pub(super) fn insert(&mut self, key: u64, offset: u32, sec: u32) {
        if let Some(&(had, _)) = self.map.get(&key) {
            if had != offset {
                self.extra.push((key, offset, sec));
            }
            return;
        }
        self.map.insert(key, (offset, sec));
    }

    /// Offsets of the frames whose id has `key`.
    pub(super) fn offsets(&self, key: u64) -> Vec<u32> {
        let mut out: Vec<u32> = self.map.get(&key).map(|(o, _)| *o).into_iter().collect();
        out.extend(self.extra.iter().filter(|(k, ..)| *k == key).map(|(_, o, _)| *o));
        out
    }

    /// Forgets the clicks whose id was created before `cutoff` (unix seconds).
    pub(super) fn forget_before(&mut self, cutoff: u32) {
        self.map.retain(|_, (_, sec)| *sec >= cutoff);
        self.extra.retain(|(_, _, sec)| *sec >= cutoff);
    }

    pub(super) fn len(&self) -> usize {
        self.map.len() + self.extra.len()
    }

    /// Every entry, sorted by key then offset, into `out`: the sealed index. `scratch`
    /// is the sort's merge buffer; both keep their memory for the next seal.
    pub(super) fn sorted_into(&self, out: &mut Vec<(u64, u32)>, scratch: &mut Vec<(u64, u32)>, pacer: &mut Pacer) {
        out.clear();
        out.reserve(self.len());
        for (k, (o, _)) in &self.map {
            out.push((*k, *o));
            pacer.tick(1);
        }
        out.extend(self.extra.iter().map(|(k, o, _)| (*k, *o)));
        pace::sort(out, scratch, pacer);
    }

    /// Room for this many entries without growing.
    pub(super) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Empties it, keeping its memory (already faulted in) for the next segment.
    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.extra = Vec::new();
    }

    /// An empty index with room for `n` entries whose memory is already faulted in: the
    /// first inserts into a fresh table each fault in a page (with transparent huge pages,
    /// 2 MiB to zero), a stall of milliseconds for whoever inserts them.
    pub(super) fn prefaulted(n: usize, pacer: &mut Pacer) -> OpenIndex {
        let mut index = OpenIndex::with_capacity(n);
        for key in 0..n as u64 {
            index.map.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), (0, 0));
            pacer.tick(4);
        }
        index.clear();
        index
    }
}

/// What the trailer of a sealed segment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sealed {
    /// Where the click frames end and the index frame starts.
    pub data_end: u64,
    pub entries: u32,
    pub min_sec: u32,
    pub max_sec: u32,
    pub personal_dropped: bool,
}

impl Sealed {
    fn trailer(&self) -> [u8; TRAILER as usize] {
        let mut out = [0u8; TRAILER as usize];
        out[0..8].copy_from_slice(&self.data_end.to_le_bytes());
        out[8..12].copy_from_slice(&self.entries.to_le_bytes());
        out[12..16].copy_from_slice(&self.min_sec.to_le_bytes());
        out[16..20].copy_from_slice(&self.max_sec.to_le_bytes());
        let flags = if self.personal_dropped { PERSONAL_DROPPED } else { 0 };
        out[20..24].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out[28..36].copy_from_slice(MAGIC);
        out
    }

    /// Where the first index entry is.
    fn entries_at(&self) -> u64 {
        self.data_end + HEADER as u64 + 1
    }

    /// The size of a file sealed this way.
    fn file_len(&self) -> u64 {
        self.entries_at() + u64::from(self.entries) * ENTRY + TRAILER
    }
}

/// The trailer of `file` (of `size` bytes), when it has a valid one.
pub(super) fn read_trailer(file: &File, size: u64) -> Option<Sealed> {
    if size < TRAILER {
        return None;
    }
    let mut t = [0u8; TRAILER as usize];
    file.read_exact_at(&mut t, size - TRAILER).ok()?;
    let word = |i: usize| u32::from_le_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
    if &t[28..36] != MAGIC || crc32fast::hash(&t[..24]) != word(24) {
        return None;
    }
    let mut data_end = [0u8; 8];
    data_end.copy_from_slice(&t[0..8]);
    let sealed = Sealed {
        data_end: u64::from_le_bytes(data_end),
        entries: word(8),
        min_sec: word(12),
        max_sec: word(16),
        personal_dropped: word(20) & PERSONAL_DROPPED != 0,
    };
    (sealed.file_len() == size).then_some(sealed)
}

/// Seals `file`, whose frames end at `data_end`: appends the index of `entries`
/// (sorted), fsyncs, then the trailer, and fsyncs again.
pub(super) fn seal(
    file: &File,
    data_end: u64,
    entries: &[(u64, u32)],
    range: (u32, u32),
    personal_dropped: bool,
    pacer: &mut Pacer,
) -> io::Result<Sealed> {
    // The index frame is written a piece at a time, its CRC taken along the way, and its
    // header last: the same bytes as `put_frame` would build, without a second copy of
    // the whole index in memory.
    file.set_len(data_end)?;
    let payload_len = 1 + entries.len() * ENTRY as usize;
    let mut crc = crc32fast::Hasher::new();
    let mut piece = Vec::with_capacity(PIECE + ENTRY as usize);
    piece.push(KIND_INDEX);
    let mut at = data_end + HEADER as u64;
    let mut flush = |piece: &mut Vec<u8>| -> io::Result<()> {
        crc.update(piece);
        write_paced(file, piece, at, pacer)?;
        at += piece.len() as u64;
        piece.clear();
        Ok(())
    };
    for (key, offset) in entries {
        piece.extend_from_slice(&key.to_le_bytes());
        piece.extend_from_slice(&offset.to_le_bytes());
        if piece.len() >= PIECE {
            flush(&mut piece)?;
        }
    }
    if !piece.is_empty() {
        flush(&mut piece)?;
    }
    file.write_all_at(&frame_header(payload_len, crc.finalize()), data_end)?;
    file.sync_data()?;
    let sealed =
        Sealed { data_end, entries: entries.len() as u32, min_sec: range.0, max_sec: range.1, personal_dropped };
    file.write_all_at(&sealed.trailer(), sealed.file_len() - TRAILER)?;
    file.sync_data()?;
    Ok(sealed)
}

/// Bytes written to a file in one call by paced work: a copy of megabytes into the
/// page cache is itself a millisecond.
const PIECE: usize = 128 << 10;

/// Writes `bytes` at `offset` of `file` a piece at a time, pacing between pieces.
fn write_paced(file: &File, bytes: &[u8], offset: u64, pacer: &mut Pacer) -> io::Result<()> {
    for (i, piece) in bytes.chunks(PIECE).enumerate() {
        file.write_all_at(piece, offset + (i * PIECE) as u64)?;
        pacer.tick(u32::MAX);
    }
    Ok(())
}

/// Offsets of the frames whose id has `key` in a sealed segment: a binary search of its
/// index, one positioned read per step.
pub(super) fn sealed_offsets(file: &File, sealed: &Sealed, key: u64) -> io::Result<Vec<u32>> {
    let entry = |i: u32| -> io::Result<(u64, u32)> {
        let mut e = [0u8; ENTRY as usize];
        file.read_exact_at(&mut e, sealed.entries_at() + u64::from(i) * ENTRY)?;
        let mut k = [0u8; 8];
        k.copy_from_slice(&e[..8]);
        Ok((u64::from_le_bytes(k), u32::from_le_bytes([e[8], e[9], e[10], e[11]])))
    };
    let (mut lo, mut hi) = (0u32, sealed.entries);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid)?.0 < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut out = Vec::new();
    while lo < sealed.entries {
        let (k, offset) = entry(lo)?;
        if k != key {
            break;
        }
        out.push(offset);
        lo += 1;
    }
    Ok(out)
}

/// What scanning an open segment finds.
pub(super) struct Scanned {
    /// Where its whole, verified click and intern frames end.
    pub data_end: u64,
    pub index: OpenIndex,
    pub range: (u32, u32),
    /// Payloads of the frames at or after `from` (see [`scan`]), in order.
    pub tail: Vec<Vec<u8>>,
}

/// Reads an open segment (one without a valid trailer): rebuilds its index and keeps
/// the payloads from offset `from` on. Stops at the first frame that is torn, fails its
/// CRC, or is an index (a seal cut short); the file is cut there.
pub(super) fn scan(path: &Path, file: &File, from: u64) -> io::Result<Scanned> {
    let size = file.metadata()?.len();
    let mut index = OpenIndex::default();
    let mut range = (u32::MAX, 0u32);
    let mut tail = Vec::new();
    let data_end = scan_frames(File::open(path)?, |offset, payload| {
        let Ok(at) = u32::try_from(offset) else { return false };
        match parse_frame(payload) {
            Some(Frame::Index) => return false,
            Some(Frame::Click { id, .. }) => {
                let sec = created_secs(id).unwrap_or(0);
                index.insert(index_key(id), at, sec);
                range = (range.0.min(sec), range.1.max(sec));
            }
            _ => {}
        }
        if offset >= from {
            tail.push(payload.to_vec());
        }
        true
    });
    if data_end < size {
        tracing::warn!(
            segment = %path.display(),
            dropped_bytes = size - data_end,
            "click log segment ends in a torn or corrupt record (a crash while writing); it is dropped"
        );
        file.set_len(data_end)?;
        file.sync_data()?;
    }
    Ok(Scanned { data_end, index, range, tail })
}

/// The payloads of the frames of the segment at `path` between offsets `from` and `to`
/// (both frame boundaries), in order.
pub(super) fn read_frames(path: &Path, from: u64, to: u64) -> io::Result<Vec<Vec<u8>>> {
    let mut file = File::open(path)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(from))?;
    let mut out = Vec::new();
    scan_frames(file.take(to.saturating_sub(from)), |_, payload| {
        out.push(payload.to_vec());
        true
    });
    Ok(out)
}

/// Writes at `to` a copy of the sealed segment at `from` without personal data (each
/// click's record without its IP address and user-agent key, and no interned values),
/// indexed and sealed: written under a temporary name, fsynced, then renamed, so a crash
/// leaves no partial copy. Returns the copy's trailer.
pub(super) fn rewrite_without_personal(
    from: &Path,
    to: &Path,
    sealed: &Sealed,
    pacer: &mut Pacer,
) -> io::Result<Sealed> {
    let tmp = to.with_extension("tmp");
    let mut out = Vec::with_capacity(sealed.data_end as usize);
    let mut entries = Vec::with_capacity(sealed.entries as usize);
    let mut range = (u32::MAX, 0u32);
    scan_frames(File::open(from)?.take(sealed.data_end), |_, payload| {
        if let Some(Frame::Click { id, cap_key, record }) = parse_frame(payload) {
            let stripped = record::strip_personal(record).ok().flatten();
            let Ok(offset) = u32::try_from(out.len()) else { return false };
            entries.push((index_key(id), offset));
            if let Some(sec) = created_secs(id) {
                range = (range.0.min(sec), range.1.max(sec));
            }
            // Ids in the log are click ids, ASCII; the cap key is a link path and a day.
            let (id, cap_key) = (String::from_utf8_lossy(id), String::from_utf8_lossy(cap_key));
            let cap_key = Some(cap_key.as_ref()).filter(|k| !k.is_empty());
            put_click(&mut out, &id, cap_key, stripped.as_deref().unwrap_or(record));
            // Decoding and encoding a record is the work of a few dozen index entries.
            pacer.tick(32);
        }
        true
    });
    pace::sort(&mut entries, &mut Vec::new(), pacer);
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    write_paced(&file, &out, 0, pacer)?;
    let sealed = seal(&file, out.len() as u64, &entries, range, true, pacer)?;
    std::fs::rename(&tmp, to)?;
    if let Some(dir) = to.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_damage_is_none() {
        let mut out = Vec::new();
        put_click(&mut out, "abc", Some("cake/x/a/7"), b"rec");
        put_intern(&mut out, &[7; 8], b"value");
        let mut payloads = Vec::new();
        let end = scan_frames(out.as_slice(), |_, p| {
            payloads.push(p.to_vec());
            true
        });
        assert_eq!(end, out.len() as u64);
        match parse_frame(&payloads[0]) {
            Some(Frame::Click { id, cap_key, record }) => {
                assert_eq!((id, cap_key, record), (&b"abc"[..], &b"cake/x/a/7"[..], &b"rec"[..]))
            }
            _ => panic!("a click frame"),
        }
        match parse_frame(&payloads[1]) {
            Some(Frame::Intern { key, value }) => assert_eq!((key, value), ([7; 8], &b"value"[..])),
            _ => panic!("an intern frame"),
        }
        for cut in 0..payloads[0].len() {
            let _ = parse_frame(&payloads[0][..cut]);
        }
        assert!(parse_frame(&[9, 1, 2]).is_none());
    }

    #[test]
    fn a_sealed_index_finds_every_key_and_keeps_collisions() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("s.log");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).expect("create");
        file.write_all_at(&[0u8; 100], 0).expect("write");
        // More entries than one piece of the paced write holds.
        let mut entries: Vec<(u64, u32)> = (0..20_000u32).map(|i| (index_key(&i.to_le_bytes()), i)).collect();
        // Two ids with one key: both offsets come back.
        entries.push((entries[10].0, 5000));
        entries.sort_unstable();
        let sealed = seal(&file, 100, &entries, (5, 9), false, &mut Pacer::new()).expect("seal");
        let size = file.metadata().expect("metadata").len();
        assert_eq!(read_trailer(&file, size), Some(sealed));
        // The index, written a piece at a time, is one whole frame whose CRC holds.
        let (payload, end) =
            crate::store::spool::file::read_payload(&file, 100, size - TRAILER).expect("a whole index frame");
        assert_eq!((payload.len(), end), (1 + entries.len() * ENTRY as usize, size - TRAILER));
        assert_eq!(parse_frame(&payload).map(|f| matches!(f, Frame::Index)), Some(true));
        for i in 0..1000u32 {
            let found = sealed_offsets(&file, &sealed, index_key(&i.to_le_bytes())).expect("search");
            if i == 10 {
                assert_eq!(found, vec![10, 5000]);
            } else {
                assert_eq!(found, vec![i]);
            }
        }
        assert!(sealed_offsets(&file, &sealed, 42).expect("search").is_empty());
        // A trailer cut short or damaged is no trailer.
        assert_eq!(read_trailer(&file, size - 1), None);
        file.write_all_at(&[0xff], size - 20).expect("damage");
        assert_eq!(read_trailer(&file, size), None);
    }

    #[test]
    fn index_keys_do_not_change() {
        assert_eq!(index_key(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(index_key(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
