//! Recording and finding clicks.
//!
//! A click is a field of its hour's bucket hash, its shared parts interned (see the
//! module doc). Most clicks go through the [batcher](super::batcher); a person's click
//! that some destination forwards is recorded with its deliveries in one script of its
//! own, and so is a person's click subject to daily caps, whose cap check rides on that
//! one script call.

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::batcher::PendingClick;
use super::keys::{bucket_expiry, click_bucket_key, counter_field, created_hour, day_of_hour, intern_key, shard};
use super::scripts::{self, CappedClickWrite, ForwardedClickWrite};
use super::{unavailable, Conn, RedisStore, INTERN_SPARE};
use crate::clock::now_ms;
use crate::model::{Click, ClickView};
use crate::store::record;
use crate::store::schema::ClickPlan;
use crate::store::{CapClaim, ClickOrigin, ClickStore, StoreError, StoreResult};

#[async_trait]
impl ClickStore for RedisStore {
    /// Redis checks for the click itself (`HSETNX`), so the origin changes nothing here.
    async fn record_click(&self, click: ClickView<'_>, _origin: ClickOrigin) -> StoreResult<()> {
        let plan = ClickPlan::of(&click, &self.limits.outbox, now_ms());
        if !plan.deliveries.is_empty() {
            return self.record_forwarded_click(plan).await;
        }
        let (reply, answer) = oneshot::channel();
        // A click moves one counter by one (a click or a bot hit); the batch script adds
        // one per click to the field it names.
        let name = plan.counters.fields().into_iter().find(|(_, v)| *v != 0).map_or("clicks", |(name, _)| name);
        let pending = PendingClick {
            shard: shard(&plan.id),
            bucket_hour: created_hour(&plan.id),
            counter_day: day_of_hour(plan.hour),
            counter_field: counter_field(plan.hour, name, &plan.link),
            offer_counter_field: plan.offer_link.as_deref().map(|o| counter_field(plan.hour, name, o)),
            id: plan.id,
            encoded: plan.encoded,
            reply,
        };
        self.clicks.send(pending).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_capped_click(&self, click: ClickView<'_>, claim: &CapClaim) -> StoreResult<Option<usize>> {
        let plan = ClickPlan::capped(&click, claim, &self.limits.outbox, now_ms());
        if matches!(self.con, Conn::Cluster(_)) {
            return self.record_capped_click_on_cluster(plan).await;
        }
        let Some(caps) = &plan.caps else { return Err(StoreError::corrupt("a capped click without its caps")) };
        let bucket = created_hour(&plan.id);
        let write = CappedClickWrite {
            shard: shard(&plan.id),
            id: &plan.id,
            bucket,
            bucket_expiry: bucket_expiry(bucket, self.limits.click_ttl.as_secs()),
            hour: plan.hour,
            link: &plan.link,
            encoded: &plan.encoded,
            intern_ttl_secs: (self.limits.click_ttl + INTERN_SPARE).as_secs(),
            deliveries: &plan.deliveries,
            caps,
        };
        let taken: i64 =
            self.writes.invoke(&scripts::record_capped_click(&self.scripts.record_capped_click, &write)).await?;
        Ok(usize::try_from(taken).ok().and_then(|t| t.checked_sub(1)))
    }

    async fn find_click(&self, click_id: &str) -> StoreResult<Option<Click>> {
        let n = shard(click_id);
        let mut con = self.con();
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(click_bucket_key(n, created_hour(click_id)))
            .arg(click_id)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        let Some(bytes) = bytes else { return Ok(None) };
        let parsed = record::parse(&bytes)?;
        let mut get = redis::cmd("MGET");
        get.arg(intern_key(n, &parsed.context));
        if let Some(ua) = &parsed.user_agent {
            get.arg(intern_key(n, ua));
        }
        let mut values: Vec<Option<Vec<u8>>> = get.query_async(&mut con).await.map_err(unavailable)?;
        let user_agent = if parsed.user_agent.is_some() { values.pop().flatten() } else { None };
        let context =
            values.pop().flatten().ok_or_else(|| StoreError::corrupt(format!("context of click {click_id}")))?;
        parsed.into_click(click_id.to_owned(), &context, user_agent.as_deref()).map(Some)
    }
}

impl RedisStore {
    /// On a cluster a click's cap counters (in their link's slot) and the click (in its
    /// shard's) cannot share a script: the cap is claimed first (`claim_cap.lua`), then
    /// the click written with the choice taken. A failure between the two leaves a unit
    /// of the cap used without a click: a cap may then admit fewer clicks, never more.
    /// Only the click waits for replicas: a claim lost with its master could let the cap
    /// admit one click more, which an outage (the spool cannot check caps) may too.
    async fn record_capped_click_on_cluster(&self, mut plan: ClickPlan) -> StoreResult<Option<usize>> {
        let Some(caps) = plan.caps.take() else { return Err(StoreError::corrupt("a capped click without its caps")) };
        let taken: i64 = scripts::claim_cap(&self.scripts.claim_cap, &plan.link, &caps)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        let taken = usize::try_from(taken).ok().and_then(|t| t.checked_sub(1));
        match taken.and_then(|t| caps.choices.into_iter().nth(t)) {
            Some(choice) => (plan.encoded.record, plan.offer_link) = (choice.record, Some(choice.offer_link)),
            None => plan.encoded.record = caps.fallback_record,
        }
        self.record_forwarded_click(plan).await?;
        Ok(taken)
    }

    /// Records a person's click together with its deliveries, in one script. Used only
    /// when a destination asked for clicks, so it keeps to one click and always writes
    /// the interned values.
    async fn record_forwarded_click(&self, plan: ClickPlan) -> StoreResult<()> {
        let bucket = created_hour(&plan.id);
        let write = ForwardedClickWrite {
            shard: shard(&plan.id),
            id: &plan.id,
            bucket,
            bucket_expiry: bucket_expiry(bucket, self.limits.click_ttl.as_secs()),
            hour: plan.hour,
            link: &plan.link,
            offer_link: plan.offer_link.as_deref(),
            counters: &plan.counters,
            encoded: &plan.encoded,
            intern_ttl_secs: (self.limits.click_ttl + INTERN_SPARE).as_secs(),
            deliveries: &plan.deliveries,
        };
        let _new: i64 =
            self.writes.invoke(&scripts::record_forwarded_click(&self.scripts.record_forwarded_click, &write)).await?;
        Ok(())
    }
}
