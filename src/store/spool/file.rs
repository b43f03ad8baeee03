//! The spool file: length- and CRC-framed records, appended and read back by offset.

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
const HEADER: usize = 8;
/// Largest payload a frame may claim; anything larger is a torn or foreign header.
const MAX_PAYLOAD: usize = 16 << 20;

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
    let mut payload = vec![MARKER];
    payload.extend_from_slice(&postcard::to_stdvec(entry).map_err(io_error)?);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
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
    Some((decode_entry(&payload), next))
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
    let mut reader = std::io::BufReader::new(file.try_clone()?);
    let mut offset = 0u64;
    let mut records = 0u64;
    let mut clicks = HashMap::new();
    let mut postbacks = Vec::new();
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
        match decode_entry(&payload) {
            Ok(Entry::Click(click)) => {
                clicks.insert(click.id, offset);
            }
            Ok(Entry::Postback(postback)) => postbacks.push(postback),
            _ => {}
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
    Ok(Scanned { len: offset, records, clicks, postbacks })
}
