//! Conversions and the counters reports read.
//!
//! A conversion is a key of its own plus an entry in its shard's time index; its counter
//! increments and outbox deliveries are written by the same script. Reports read every
//! shard concurrently and add up.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::keys::{
    conversion_key, conversion_times_key, counter_days_key, counters_key, day_of_hour, parse_counter_field, shard,
};
use super::scripts::{self, ConversionWrite};
use super::{unavailable, Conn, RedisStore};
use crate::clock::now_ms;
use crate::model::{Conversion, Counters, HourCounters, Recorded, UnixHour, UnixMillis};
use crate::store::schema::{decode, encode, ConversionPlan};
use crate::store::{ConversionStore, StoreResult};

#[async_trait]
impl ConversionStore for RedisStore {
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        let plan = ConversionPlan::of(conversion, &self.limits.outbox, now_ms());
        let write = ConversionWrite {
            shard: shard(&conversion.click.id),
            id: &conversion.id,
            bytes: encode(conversion),
            at: conversion.at.max(0),
            hour: plan.hour,
            link: &conversion.click.link,
            offer_link: plan.offer_link.as_deref(),
            counters: &plan.counters,
            deliveries: &plan.deliveries,
        };
        let new: i64 = scripts::record_conversion(&self.scripts.record_conversion, &write)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(if new == 1 { Recorded::New } else { Recorded::Duplicate })
    }

    async fn counters(&self, from: UnixHour, to: UnixHour) -> StoreResult<Vec<HourCounters>> {
        if to < from {
            return Ok(Vec::new());
        }
        let fields = self.all_shards(move |con, n| shard_counters(con, n, from, to)).await?;
        let mut totals: BTreeMap<(UnixHour, String), Counters> = BTreeMap::new();
        for (field, value) in &fields {
            let (hour, name, link) = parse_counter_field(field)?;
            if hour < from || hour > to {
                continue;
            }
            let mut delta = Counters::default();
            delta.set_field(name, *value);
            totals.entry((hour, link.to_owned())).or_default().add(&delta);
        }
        Ok(totals.into_iter().map(|((hour, link), counters)| HourCounters { hour, link, counters }).collect())
    }

    async fn conversions(&self, from: UnixMillis, to: UnixMillis) -> StoreResult<Vec<Conversion>> {
        let (from, to) = (from.max(0), to.max(0));
        if to <= from {
            return Ok(Vec::new());
        }
        let stored = self.all_shards(move |con, n| shard_conversions(con, n, from, to)).await?;
        let mut out = stored.iter().map(|bytes| decode::<Conversion>(bytes)).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| (a.at.max(0), &a.id).cmp(&(b.at.max(0), &b.id)));
        Ok(out)
    }
}

/// Every `(field, value)` of the counter hashes of `shard` for the days covering
/// `from..=to` hours.
async fn shard_counters(mut con: Conn, shard: u8, from: UnixHour, to: UnixHour) -> StoreResult<Vec<(String, i64)>> {
    let days: Vec<u32> = redis::cmd("ZRANGEBYSCORE")
        .arg(counter_days_key(shard))
        .arg(day_of_hour(from))
        .arg(day_of_hour(to))
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    if days.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for day in days {
        pipe.cmd("HGETALL").arg(counters_key(shard, day));
    }
    let hashes: Vec<HashMap<String, i64>> = pipe.query_async(&mut con).await.map_err(unavailable)?;
    Ok(hashes.into_iter().flatten().collect())
}

/// The stored bytes of the conversions of `shard` with `from <= at < to`.
async fn shard_conversions(mut con: Conn, shard: u8, from: i64, to: i64) -> StoreResult<Vec<Vec<u8>>> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(conversion_times_key(shard))
        .arg(from)
        .arg(format!("({to}"))
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| conversion_key(shard, id)).collect();
    let values: Vec<Option<Vec<u8>>> =
        redis::cmd("MGET").arg(&keys).query_async(&mut con).await.map_err(unavailable)?;
    Ok(values.into_iter().flatten().collect())
}
