//! The spool file: length- and CRC-framed records, appended and read back by offset.
//!
//! The framing itself ([`put_frame`], [`read_payload`], [`scan_frames`]) is shared with
//! the embedded store's click log, whose segments are framed the same way: a crash that
//! tears the last record is found and cut the same way in both.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Deserialize;

use super::Entry;
use crate::model::{Event, QueuedPostback};
use crate::store::legacy::{ClickV1, MARKER};
use crate::store::{StoreError, StoreResult};

/// The spool file inside the spool directory.
pub(super) const FILE_NAME: &str = "spool.log";
/// Bytes of a frame header: payload length and its CRC-32.
pub(in crate::store) const HEADER: usize = 8;
/// Largest payload a frame may claim; anything larger is a torn or foreign header.
const MAX_PAYLOAD: usize = 16 << 20;

/// Appends one frame to `out`, its payload written in place by `payload`: the header is
/// reserved first and filled in once the payload's length and CRC are known, so a record
/// is built straight into the buffer that is written.
pub(in crate::store) fn put_frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    payload(out);
    let body = &out[start + HEADER..];
    let header = frame_header(body.len(), crc32fast::hash(body));
    out[start..start + HEADER].copy_from_slice(&header);
}

/// The header of a frame whose payload is `len` bytes with CRC `crc`, for a writer that
/// writes the payload first.
pub(in crate::store) fn frame_header(len: usize, crc: u32) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The payload length and CRC a header claims; `None` for a length no frame may have.
fn parse_header(header: &[u8; HEADER]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len <= MAX_PAYLOAD).then_some((len, crc))
}

/// Reads the payload of the frame at `offset` of `file`, whose valid content ends at
/// `end`, and the offset after it; `None` when no whole, verified frame is there.
pub(in crate::store) fn read_payload(file: &File, offset: u64, end: u64) -> Option<(Vec<u8>, u64)> {
    if offset + HEADER as u64 > end {
        return None;
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset).ok()?;
    let (len, crc) = parse_header(&header)?;
    let next = offset + (HEADER + len) as u64;
    if next > end {
        return None;
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + HEADER as u64).ok()?;
    (crc32fast::hash(&payload) == crc).then_some((payload, next))
}

/// Reads frames from `reader` until the first that is torn or does not verify, or until
/// `each` (given each frame's offset from the start of `reader` and its payload) answers
/// `false`; returns where the frames read and accepted end.
pub(in crate::store) fn scan_frames(reader: impl Read, mut each: impl FnMut(u64, &[u8]) -> bool) -> u64 {
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    while reader.read_exact(&mut header).is_ok() {
        let Some((len, crc)) = parse_header(&header) else { break };
        payload.resize(len, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc || !each(offset, &payload) {
            break;
        }
        offset += (HEADER + len) as u64;
    }
    offset
}

/// The spool file and what is known about its content.
pub(super) struct SpoolFile {
    pub file: File,
    pub len: u64,
    pub records: u64,
    /// Spooled click id → offset of its frame.
    pub clicks: HashMap<String, u64>,
    /// Postbacks waiting for the store, oldest first.
    pub postbacks: Vec<QueuedPostback>,
    /// Written since the last fsync.
    pub dirty: bool,
}

/// A spool I/O failure, its cause kept.
pub(super) fn io_error(e: impl Into<crate::store::BoxError>) -> StoreError {
    StoreError::unavailable("the outage spool failed", e)
}

/// A frame for `entry`.
pub(super) fn frame(entry: &Entry) -> StoreResult<Vec<u8>> {
    let body = postcard::to_stdvec(entry).map_err(io_error)?;
    let mut out = Vec::with_capacity(HEADER + 1 + body.len());
    put_frame(&mut out, |out| {
        out.push(MARKER);
        out.extend_from_slice(&body);
    });
    Ok(out)
}

/// An entry as version 1 wrote it, before clicks carried their offer (see
/// `store::legacy`); entries since are written after the marker byte.
#[derive(Deserialize)]
enum EntryV1 {
    Click(ClickV1),
    Event(Event),
    Postback(QueuedPostback),
}

/// A frame's payload, in the current shape or in version 1's.
fn decode_entry(payload: &[u8]) -> Result<Entry, postcard::Error> {
    match payload.split_first() {
        Some((&MARKER, rest)) => postcard::from_bytes(rest),
        _ => Ok(match postcard::from_bytes::<EntryV1>(payload)? {
            EntryV1::Click(c) => Entry::Click(c.into()),
            EntryV1::Event(e) => Entry::Event(e),
            EntryV1::Postback(p) => Entry::Postback(p),
        }),
    }
}

/// Reads the frame at `offset` of `file`, whose valid content ends at `end`: the entry
/// and the offset after it, or `None` when no whole, verified frame is there.
pub(super) fn read_frame(file: &File, offset: u64, end: u64) -> Option<(Result<Entry, postcard::Error>, u64)> {
    read_payload(file, offset, end).map(|(payload, next)| (decode_entry(&payload), next))
}

/// What [`scan`] learns of a spool file.
pub(super) struct Scanned {
    pub len: u64,
    pub records: u64,
    pub clicks: HashMap<String, u64>,
    pub postbacks: Vec<QueuedPostback>,
}

/// Reads the spool file at startup: its valid length, record count, click index and
/// waiting postbacks. A torn or corrupt tail is cut off.
pub(super) fn scan(path: &Path, file: &File) -> anyhow::Result<Scanned> {
    let size = file.metadata()?.len();
    let mut records = 0u64;
    let mut clicks = HashMap::new();
    let mut postbacks = Vec::new();
    let len = scan_frames(file.try_clone()?, |offset, payload| {
        match decode_entry(payload) {
            Ok(Entry::Click(click)) => {
                clicks.insert(click.id, offset);
            }
            Ok(Entry::Postback(postback)) => postbacks.push(postback),
            _ => {}
        }
        records += 1;
        true
    });
    if len < size {
        tracing::warn!(
            spool = %path.display(),
            dropped_bytes = size - len,
            "outage spool ends in a torn or corrupt record (a crash while writing); it is dropped"
        );
        file.set_len(len)?;
        file.sync_data()?;
    }
    Ok(Scanned { len, records, clicks, postbacks })
}
