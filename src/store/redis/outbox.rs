//! The forwarding outbox: deliveries claimed under a lease, their outcomes, and the
//! listings of the admin pages.
//!
//! A claim moves due entries' scores to the end of the lease and names the owner, so
//! another process skips them until the lease ends, and a late outcome from a process
//! that lost its lease is ignored.

use std::time::Duration;

use async_trait::async_trait;

use super::keys::{delivery_key, delivery_status_key, outbox_key, shard};
use super::{scripts, unavailable, Conn, RedisStore, SHARDS};
use crate::model::{Delivery, DeliveryStatus, UnixMillis};
use crate::store::schema::{self, decode};
use crate::store::{Outbox, Requeue, StoreResult};

#[async_trait]
impl Outbox for RedisStore {
    async fn claim_deliveries(
        &self,
        owner: &str,
        destination: &str,
        now: UnixMillis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let until = now.saturating_add(lease.as_millis() as i64);
        let owner = owner.to_owned();
        let destination = destination.to_owned();
        // Each shard may give up to `limit`; the caller takes what it asked for and the
        // rest simply wait out their lease, which is short next to a retry.
        let per_shard = limit.div_ceil(SHARDS as usize).max(1);
        let script = self.scripts.claim_deliveries.clone();
        let mut out = self
            .all_shards(move |mut con, n| {
                let script = script.clone();
                let owner = owner.clone();
                let destination = destination.clone();
                async move {
                    let ids: Vec<String> =
                        scripts::claim_deliveries(&script, n, &destination, &owner, now, until, per_shard)
                            .invoke_async(&mut con)
                            .await
                            .map_err(unavailable)?;
                    read_deliveries(&mut con, n, &ids).await
                }
            })
            .await?;
        out.sort_by_key(|d| d.next_at);
        Ok(out)
    }

    async fn finish_delivery(&self, owner: &str, delivery: &Delivery) -> StoreResult<bool> {
        let n = shard(&delivery.subject.click().id);
        let keep = self.limits.outbox.keep_settled();
        let done: i64 = scripts::finish_delivery(&self.scripts.finish_delivery, n, owner, delivery, keep)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        destination: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let statuses: Vec<DeliveryStatus> = status.map_or_else(|| DeliveryStatus::ALL.to_vec(), |s| vec![s]);
        // Filtering by destination happens after reading, so read more to fill the page.
        let per_index = if destination.is_some() { limit.saturating_mul(8).min(10_000) } else { limit };
        let mut out = self
            .all_shards(move |mut con, n| {
                let statuses = statuses.clone();
                async move {
                    let mut pipe = redis::pipe();
                    for s in &statuses {
                        pipe.cmd("ZREVRANGE").arg(delivery_status_key(n, *s)).arg(0).arg(per_index.max(1) - 1);
                    }
                    let lists: Vec<Vec<String>> = pipe.query_async(&mut con).await.map_err(unavailable)?;
                    let ids: Vec<String> = lists.into_iter().flatten().collect();
                    read_deliveries(&mut con, n, &ids).await
                }
            })
            .await?;
        out.retain(|d| status.is_none_or(|s| s == d.status) && destination.is_none_or(|name| name == d.destination));
        Ok(schema::newest_first(out, limit))
    }

    async fn deliveries_of(&self, click_id: &str, event_id: &str) -> StoreResult<Vec<Delivery>> {
        let n = shard(click_id);
        let ids: Vec<String> = self.limits.outbox.destinations().map(|d| Delivery::id_for(event_id, d)).collect();
        read_deliveries(&mut self.con(), n, &ids).await
    }

    async fn requeue_delivery(&self, id: &str, now: UnixMillis) -> StoreResult<Requeue> {
        // The id does not name its shard; an admin call can afford to ask all sixteen.
        let wanted = id.to_owned();
        let found = self
            .all_shards(move |mut con, n| {
                let key = delivery_key(n, &wanted);
                async move {
                    let bytes: Option<Vec<u8>> =
                        redis::cmd("GET").arg(key).query_async(&mut con).await.map_err(unavailable)?;
                    Ok(bytes.map(|b| (n, b)).into_iter().collect())
                }
            })
            .await?;
        let Some((n, old_bytes)) = found.into_iter().next() else {
            return Ok(Requeue::NotFound);
        };
        let old: Delivery = decode(&old_bytes)?;
        let d = match schema::requeued(&old, now) {
            Ok(d) => d,
            Err(refused) => return Ok(refused),
        };
        let done: i64 = scripts::requeue_delivery(&self.scripts.requeue_delivery, n, id, &old, &old_bytes, &d, now)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        // A concurrent requeue got there first: it is pending now either way.
        Ok(if done == 1 { Requeue::Done(Box::new(d)) } else { Requeue::NotDeadLettered(DeliveryStatus::Pending) })
    }

    async fn outbox_depth(&self) -> StoreResult<u64> {
        let destinations: Vec<String> = self.limits.outbox.destinations().map(str::to_owned).collect();
        if destinations.is_empty() {
            return Ok(0);
        }
        let sizes = self
            .all_shards(move |mut con, n| {
                let mut pipe = redis::pipe();
                for d in &destinations {
                    pipe.cmd("ZCARD").arg(outbox_key(n, d));
                }
                async move { pipe.query_async::<Vec<u64>>(&mut con).await.map_err(unavailable) }
            })
            .await?;
        Ok(sizes.into_iter().sum())
    }
}

/// The deliveries of shard `n` with these ids (missing ones skipped).
async fn read_deliveries(con: &mut Conn, n: u8, ids: &[String]) -> StoreResult<Vec<Delivery>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| delivery_key(n, id)).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(con).await.map_err(unavailable)?;
    values.into_iter().flatten().map(|b| decode(&b)).collect()
}
