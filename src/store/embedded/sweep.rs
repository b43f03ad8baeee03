//! The writer's housekeeping: expired clicks, personal data past its lifetime, old cap
//! counters and settled deliveries, each dropped or rewritten a bounded batch at a time
//! on the writer thread, so it never races a write.

use fjall::Keyspace;

use super::caps;
use super::writer::{Writer, PERSONAL_DROPPED_UNTIL};
use super::{status_key, unavailable, MAX_BATCH};
use crate::clickid::ClickId;
use crate::clock::{now_ms, now_secs};
use crate::model::DeliveryStatus;
use crate::store::record;
use crate::store::schema;
use crate::store::{StoreError, StoreResult};

impl Writer {
    /// Drops settled deliveries last updated before the outbox's retention: a range of
    /// each settled status's index.
    pub(super) fn sweep_deliveries(&mut self) {
        let Some(keep) = self.limits.outbox.keep_settled() else { return };
        let cutoff = schema::settled_cutoff(now_ms(), keep);
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
    pub(super) fn sweep(&mut self) {
        self.drop_expired_clicks();
        self.drop_personal_data();
        self.drop_old_caps();
    }

    /// Cap counters are one small key per offer and day; days long past are dropped.
    fn drop_old_caps(&mut self) {
        let old = caps::expired(&self.t.caps, now_secs());
        if old.is_empty() {
            return;
        }
        let mut batch = self.t.db.batch();
        for key in old {
            batch.remove(&self.t.caps, key);
        }
        if let Err(e) = batch.commit() {
            tracing::warn!(error = %e, "dropping old cap counters failed; the next sweep retries");
        }
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
        let until = schema::personal_cutoff_secs(now_secs(), self.limits.personal_ttl);
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
        let conversions =
            self.rewrite_range(&self.t.conversions, from.as_slice()..to.as_slice(), schema::strip_conversion);
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
                Ok(None) | Err(StoreError::Corrupt { .. }) => {}
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
