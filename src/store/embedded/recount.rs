//! Counting again, on open, the clicks a crash left in the click log but not in fjall.
//!
//! The writer appends a batch's clicks to the log before it commits their counters, cap
//! counts and deliveries to fjall, with the length each segment then reached. A kill
//! between the two leaves frames past that length: clicks whose `302` may have left (the
//! append was in the operating system's buffers) but that nothing counts. Opening the
//! store counts them as the writer would have (their hour's counters, their offer's, the
//! cap counter the frame names, deliveries for destinations that take clicks), stores the
//! interned values their frames carry, and records the segments' lengths, in one batch,
//! before the writer takes any request. Doing it twice is impossible: the batch that counts
//! a frame also moves the length past it.

use std::collections::HashMap;

use super::clicklog::Tail;
use super::segment::{self, Frame};
use super::unavailable;
use super::writer::{Deltas, Writer};
use crate::clock::now_ms;
use crate::model::{hour_of, Counters};
use crate::store::record::{self, InternKey};
use crate::store::schema::offer_link;
use crate::store::{StoreError, StoreResult};

impl Writer {
    /// Counts the clicks of `tails`; how many.
    pub(super) fn recount(&mut self, tails: Vec<Tail>) -> StoreResult<usize> {
        if tails.is_empty() {
            return Ok(0);
        }
        let mut batch = self.t.db.batch();
        // Interned values first: a click may name one carried in another segment's tail.
        let mut interns: HashMap<InternKey, Vec<u8>> = HashMap::new();
        for tail in &tails {
            for payload in &tail.frames {
                if let Some(Frame::Intern { key, value }) = segment::parse_frame(payload) {
                    batch.insert(&self.t.interns, key, value.to_vec());
                    interns.insert(key, value.to_vec());
                }
            }
        }
        let interned = |key: InternKey| -> StoreResult<Option<Vec<u8>>> {
            match interns.get(&key) {
                Some(v) => Ok(Some(v.clone())),
                None => Ok(self.t.interns.get(key).map_err(unavailable)?.map(|v| v.to_vec())),
            }
        };
        let mut deltas = Deltas::default();
        let mut caps: HashMap<String, u32> = HashMap::new();
        let mut deliveries = Vec::new();
        let mut counted = 0;
        for tail in &tails {
            for payload in &tail.frames {
                let Some(Frame::Click { id, cap_key, record }) = segment::parse_frame(payload) else { continue };
                let id = String::from_utf8_lossy(id).into_owned();
                let click = record::parse(record).and_then(|parsed| {
                    let context = interned(parsed.context)?.ok_or_else(|| StoreError::corrupt("click context"))?;
                    let user_agent = match parsed.user_agent {
                        Some(key) => interned(key)?,
                        None => None,
                    };
                    parsed.into_click(id.clone(), &context, user_agent.as_deref())
                });
                let click = match click {
                    Ok(click) => click,
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::warn!(error = %e, click = %id, "a click in the log's uncovered tail does not read; it is not counted");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (hour, counters) = (hour_of(click.at), Counters::for_click(&click.view()));
                if let Some(offer) = &click.offer {
                    deltas.entry((hour, offer_link(&click.link, offer))).or_default().add(&counters);
                }
                deltas.entry((hour, click.link.clone())).or_default().add(&counters);
                if !cap_key.is_empty() {
                    *caps.entry(String::from_utf8_lossy(cap_key).into_owned()).or_default() += 1;
                }
                deliveries.extend(self.limits.outbox.for_click(&click.view(), now_ms()));
                counted += 1;
            }
        }
        for (row, added) in deltas {
            self.move_counters(&mut batch, row, &added, None).map_err(unavailable)?;
        }
        for (key, n) in caps {
            let stored = self.t.caps.get(key.as_bytes()).map_err(unavailable)?;
            let stored = stored.and_then(|v| v.as_ref().try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
            batch.insert(&self.t.caps, key.as_bytes(), stored.saturating_add(n).to_be_bytes());
        }
        self.enqueue(&mut batch, deliveries);
        for tail in &tails {
            batch.insert(&self.t.meta, tail.meta_key.as_slice(), tail.end.to_be_bytes());
        }
        batch.commit().map_err(unavailable)?;
        self.t.db.persist(fjall::PersistMode::SyncAll).map_err(unavailable)?;
        Ok(counted)
    }
}
