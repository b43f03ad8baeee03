//! Dropping personal data past its lifetime.
//!
//! Clicks expire through Redis's own TTL, so there is no sweep of clicks; only their IP
//! address and user agent must go earlier. A sweep rewrites whole hour buckets, one at a
//! time, and remembers in Redis (`cl:pd`) how far it got, so several processes sharing
//! the Redis do the work once; a lock key keeps two from sweeping together.

use std::time::Duration;

use tokio::sync::oneshot;

use super::keys::{click_bucket_key, conversion_key, conversion_times_key, PERSONAL_CURSOR_KEY, PERSONAL_LOCK_KEY};
use super::{unavailable, Conn, SHARDS};
use crate::clock::now_secs;
use crate::model::UnixHour;
use crate::store::record;
use crate::store::schema;
use crate::store::{StoreLimits, StoreResult};

/// How often personal data past its lifetime is looked for.
const PERSONAL_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// One `HSCAN` answer: the next cursor and field/value pairs.
type ScanPage = (u64, Vec<(Vec<u8>, Vec<u8>)>);

/// Drops personal data from clicks, one hour bucket at a time.
pub(super) struct PersonalSweep {
    pub con: Conn,
    pub limits: StoreLimits,
}

impl PersonalSweep {
    /// Sweeps every [`PERSONAL_SWEEP_EVERY`] until `stopped` fires (the store is dropped).
    pub(super) async fn run(self, mut stopped: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PERSONAL_SWEEP_EVERY) => {}
                _ = &mut stopped => return,
            }
            if let Err(e) = self.drop_personal_data().await {
                tracing::warn!(error = %e, "dropping personal data from old clicks failed; trying again later");
            }
        }
    }

    pub(super) async fn drop_personal_data(&self) -> StoreResult<usize> {
        let mut con = self.con.clone();
        let now = now_secs();
        // Buckets whose every click is older than the personal-data lifetime.
        let Some(last) = (schema::personal_cutoff_secs(now, self.limits.personal_ttl) / 3600).checked_sub(1) else {
            return Ok(0);
        };
        let locked: bool = redis::cmd("SET")
            .arg(PERSONAL_LOCK_KEY)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(3600)
            .query_async::<Option<String>>(&mut con)
            .await
            .map_err(unavailable)?
            .is_some();
        if !locked {
            return Ok(0);
        }
        let result = self.sweep_locked(&mut con, now, last).await;
        let _: Result<i64, _> = redis::cmd("DEL").arg(PERSONAL_LOCK_KEY).query_async(&mut con).await;
        result
    }

    async fn sweep_locked(&self, con: &mut Conn, now: u64, last: u64) -> StoreResult<usize> {
        let done: Option<u64> =
            redis::cmd("GET").arg(PERSONAL_CURSOR_KEY).query_async(con).await.map_err(unavailable)?;
        // Without a cursor, start at the oldest bucket that can still exist.
        let first =
            done.map_or((now.saturating_sub(self.limits.click_ttl.as_secs()) / 3600).saturating_sub(1), |d| d + 1);
        let mut rewritten = 0;
        for hour in first..=last {
            for shard in 0..SHARDS {
                rewritten += strip_bucket(con, shard, hour as UnixHour).await?;
                rewritten += strip_conversions(con, shard, hour).await?;
            }
            let _: () =
                redis::cmd("SET").arg(PERSONAL_CURSOR_KEY).arg(hour).query_async(con).await.map_err(unavailable)?;
        }
        if rewritten > 0 {
            tracing::info!(rewritten, "IP addresses and user agents dropped from clicks past their lifetime");
        }
        Ok(rewritten)
    }
}

/// Drops the personal data of the clicks in the bucket of `shard` and UTC hour `hour`, a
/// page at a time; how many were rewritten.
async fn strip_bucket(con: &mut Conn, shard: u8, hour: UnixHour) -> StoreResult<usize> {
    let key = click_bucket_key(shard, hour);
    let mut rewritten = 0;
    let mut cursor = 0u64;
    loop {
        let (next, entries): ScanPage = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(512)
            .query_async(con)
            .await
            .map_err(unavailable)?;
        let mut set = redis::cmd("HSET");
        set.arg(&key);
        let mut n = 0;
        for (field, value) in entries {
            if let Ok(Some(stripped)) = record::strip_personal(&value) {
                set.arg(field).arg(stripped);
                n += 1;
            }
        }
        if n > 0 {
            let _: i64 = set.query_async(con).await.map_err(unavailable)?;
            rewritten += n;
        }
        if next == 0 {
            return Ok(rewritten);
        }
        cursor = next;
    }
}

/// Drops the personal data of the click copies in the conversions of `shard` recorded in
/// UTC hour `hour` (their clicks are older still); how many were rewritten.
async fn strip_conversions(con: &mut Conn, shard: u8, hour: u64) -> StoreResult<usize> {
    let from = hour * 3_600_000;
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(conversion_times_key(shard))
        .arg(from)
        .arg(format!("({}", from + 3_600_000))
        .query_async(con)
        .await
        .map_err(unavailable)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = ids.iter().map(|id| conversion_key(shard, id)).collect();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(con).await.map_err(unavailable)?;
    let mut pipe = redis::pipe();
    let mut n = 0;
    for (key, value) in keys.iter().zip(values) {
        // A damaged record is left as it is: reading it reports the damage.
        if let Some(Ok(Some(stripped))) = value.map(|v| schema::strip_conversion(&v)) {
            pipe.cmd("SET").arg(key).arg(stripped).ignore();
            n += 1;
        }
    }
    if n > 0 {
        let _: () = pipe.query_async(con).await.map_err(unavailable)?;
    }
    Ok(n)
}
