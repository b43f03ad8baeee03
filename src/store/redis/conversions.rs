//! Conversions and the counters reports read.
//!
//! A conversion is a key of its own plus an entry in its shard's time index and in its
//! click's index; its counter increments and outbox deliveries are written by the same
//! script. A reversal is an entry in its shard's reversals hash, written with what it
//! takes back from the counters and its deliveries by one script too; conversions read
//! back pick their reversal time up from that hash. Reports read every shard
//! concurrently and add up.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::keys::{
    click_conversions_key, conversion_key, conversion_times_key, counter_days_key, counters_key, day_of_hour,
    parse_counter_field, reversals_key, shard,
};
use super::scripts::{self, ConversionWrite};
use super::{unavailable, Conn, RedisStore};
use crate::clock::now_ms;
use crate::model::{Conversion, Counters, HourCounters, Recorded, Reversed, UnixHour, UnixMillis};
use crate::store::schema::{decode, encode, ConversionPlan, ReversalPlan};
use crate::store::{ConversionStore, StoreResult};

#[async_trait]
impl ConversionStore for RedisStore {
    async fn record_conversion(&self, conversion: &Conversion) -> StoreResult<Recorded> {
        let plan = ConversionPlan::of(conversion, &self.limits.outbox, now_ms());
        let write = ConversionWrite {
            shard: shard(&conversion.click.id),
            id: &conversion.id,
            click_id: &conversion.click.id,
            bytes: encode(conversion),
            at: conversion.at.max(0),
            hour: plan.hour,
            link: &conversion.click.link,
            offer_link: plan.offer_link.as_deref(),
            counters: &plan.counters,
            deliveries: &plan.deliveries,
        };
        let new: i64 = self.writes.invoke(&scripts::record_conversion(&self.scripts.record_conversion, &write)).await?;
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
        read_back(stored)
    }

    async fn conversions_of_click(&self, click_id: &str) -> StoreResult<Vec<Conversion>> {
        let n = shard(click_id);
        let mut con = self.con();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(click_conversions_key(n, click_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        read_back(read_conversions(&mut con, n, &ids).await?)
    }

    async fn reverse_conversion(&self, conversion: &Conversion, at: UnixMillis) -> StoreResult<Reversed> {
        let plan = ReversalPlan::of(conversion, at, &self.limits.outbox, now_ms());
        let call = scripts::reverse_conversion(&self.scripts.reverse_conversion, &conversion.click.id, &plan);
        let outcome: i64 = self.writes.invoke(&call).await?;
        Ok(match outcome {
            1 => Reversed::Done,
            2 => Reversed::Already,
            _ => Reversed::NotFound,
        })
    }
}

/// A stored conversion and, when it was reversed, when.
type StoredConversion = (Vec<u8>, Option<i64>);

/// Conversions as read back: decoded, with their reversal times, oldest first (ties by id).
fn read_back(stored: Vec<StoredConversion>) -> StoreResult<Vec<Conversion>> {
    let mut out = stored
        .into_iter()
        .map(|(bytes, reversed_at)| Ok(Conversion { reversed_at, ..decode::<Conversion>(&bytes)? }))
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by(|a, b| (a.at.max(0), &a.id).cmp(&(b.at.max(0), &b.id)));
    Ok(out)
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

/// The stored conversions of `shard` with `from <= at < to`.
async fn shard_conversions(mut con: Conn, shard: u8, from: i64, to: i64) -> StoreResult<Vec<StoredConversion>> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(conversion_times_key(shard))
        .arg(from)
        .arg(format!("({to}"))
        .query_async(&mut con)
        .await
        .map_err(unavailable)?;
    read_conversions(&mut con, shard, &ids).await
}

/// The conversions of `shard` with these ids (missing ones skipped), each with its
/// reversal time, read together.
async fn read_conversions(con: &mut Conn, shard: u8, ids: &[String]) -> StoreResult<Vec<StoredConversion>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| conversion_key(shard, id)).collect();
    let mut pipe = redis::pipe();
    pipe.cmd("MGET").arg(&keys).cmd("HMGET").arg(reversals_key(shard)).arg(ids);
    let (values, reversed): (Vec<Option<Vec<u8>>>, Vec<Option<i64>>) =
        pipe.query_async(con).await.map_err(unavailable)?;
    Ok(values.into_iter().zip(reversed).filter_map(|(bytes, at)| Some((bytes?, at))).collect())
}
