//! Reconciling with the network: its conversion report against what cakelink recorded,
//! with the reason for every conversion one side has and the other lacks.
//!
//! [`input`] reads the report (a CSV export, or the network's API through [`api`]);
//! [`reconcile`] matches it against the stored conversions, clicks and event log;
//! [`output`] prints the result as a table or CSV (JSON is the [`Report`] itself);
//! [`ingest`] records what was missing through the postback path and applies the
//! report's reversals.
//!
//! A network conversion matches a cakelink conversion of the same click with the same
//! transaction id; without a transaction id, one with the same payout on the same day.
//! Each cakelink conversion matches at most one row. Reversed conversions are not
//! cakelink's (they left its figures); a row the network reports as reversed (its
//! disposition) is not the network's.

pub mod api;
pub mod input;
pub mod output;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::clickid::{ClickIdError, Keyring};
use crate::model::{Conversion, Event, EventStatus, QueuedPostback, UnixMillis};
use crate::networks::Network;
use crate::postback::{self, Context, Fields};
use crate::reports::{rfc3339, Period};
use crate::store::{ClickStore, ConversionStore, EventLog, StoreError, StoreResult};
pub use input::{InputError, NetworkRow};

/// How far outside the period cakelink's conversions are read, so that a conversion the
/// network dates just inside it and whose postback came just after still matches.
const MARGIN_MS: i64 = 2 * 86_400_000;
/// Click lookups in flight at once (they are independent reads).
const LOOKUPS: usize = 32;

/// The reconciliation, as `--format json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub network: String,
    pub from: String,
    pub to: String,
    pub totals: Totals,
    pub missing: Vec<Missing>,
    pub extra: Vec<Extra>,
    pub amount_mismatch: Vec<AmountMismatch>,
    pub by_day: Vec<Day>,
}

/// `network` = `matched` + `missing`; `cakelink` = `matched` + `extra`; the amount
/// mismatches are matched conversions whose amounts differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub network: u64,
    pub cakelink: u64,
    pub matched: u64,
    pub missing: u64,
    pub extra: u64,
    pub amount_mismatch: u64,
    /// `missing / network × 100`, two decimals.
    pub gap_pct: String,
}

/// A conversion the network has and cakelink does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub click_id: String,
    pub transaction_id: String,
    pub price: String,
    pub converted_at: String,
    pub offer: String,
    pub reason: Reason,
}

/// A conversion cakelink has and the network does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Extra {
    pub conversion_id: String,
    pub click_id: String,
    pub transaction_id: String,
    pub revenue: String,
    pub converted_at: String,
}

/// A conversion both have, with different amounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AmountMismatch {
    pub conversion_id: String,
    pub click_id: String,
    pub transaction_id: String,
    pub network_price: String,
    pub cakelink_revenue: String,
}

/// One day of the period, in the report's time zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Day {
    pub day: String,
    pub network: u64,
    pub cakelink: u64,
    pub missing: u64,
    pub extra: u64,
}

/// Why cakelink lacks a conversion the network has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The row carries no click id: the offer link did not pass it in the sub-id.
    ClickIdMissing,
    /// Not a cakelink click id, or its tag does not verify under any secret.
    ClickIdForged,
    /// The conversion came after the attribution window, or the click is no longer kept.
    ClickIdExpired,
    /// The id verifies but no such click was stored.
    ClickUnknown,
    /// A postback came and was rejected (a bad field value, a wrong key).
    PostbackRejected,
    /// A postback came and matched no click.
    PostbackNoMatch,
    /// A postback came while the store was down and waits to be resolved.
    PostbackQueued,
    /// The click is here and no postback came: the offer probably lacks the postback URL.
    NoPostback,
    /// cakelink recorded it and then reversed it (a disposition), while the network now
    /// reports it as valid.
    Reversed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClickIdMissing => "click_id_missing",
            Reason::ClickIdForged => "click_id_forged",
            Reason::ClickIdExpired => "click_id_expired",
            Reason::ClickUnknown => "click_unknown",
            Reason::PostbackRejected => "postback_rejected",
            Reason::PostbackNoMatch => "postback_no_match",
            Reason::PostbackQueued => "postback_queued",
            Reason::NoPostback => "no_postback",
            Reason::Reversed => "reversed",
        }
    }
}

/// What reconciling reads.
pub struct Sources<'a> {
    pub clicks: &'a dyn ClickStore,
    pub conversions: &'a dyn ConversionStore,
    pub events: &'a dyn EventLog,
    pub keyring: &'a Keyring,
    /// How long a click is kept: attribution plus postback grace.
    pub click_ttl: Duration,
    /// Event-log entries to look through (the whole capped log).
    pub event_log_max: usize,
    /// Postbacks kept in the outage spool, not resolved yet.
    pub queued: Vec<QueuedPostback>,
}

/// The report, and what `--ingest` would change.
#[derive(Clone, Debug)]
pub struct Reconciliation {
    pub report: Report,
    /// Missing rows whose click is stored: `--ingest` records them.
    pub recordable: Vec<NetworkRow>,
    /// Rows the network reports as reversed, whose conversion cakelink still counts.
    pub reversible: Vec<(NetworkRow, Conversion)>,
}

/// Matches the network's `rows` against what cakelink recorded for `network` in `period`.
pub async fn reconcile(
    src: &Sources<'_>,
    network: &Network,
    period: &Period,
    rows: Vec<NetworkRow>,
    now: UnixMillis,
) -> StoreResult<Reconciliation> {
    let (start, end) = period.millis();
    let in_period = |at: UnixMillis| at >= start && at < end;
    let (reversing, valid): (Vec<NetworkRow>, Vec<NetworkRow>) = rows
        .into_iter()
        .filter(|r| in_period(r.converted_at))
        .partition(|r| r.disposition.as_deref().is_some_and(|d| network.reverses(d)));

    let stored: Vec<Conversion> = src
        .conversions
        .conversions(start - MARGIN_MS, end + MARGIN_MS)
        .await?
        .into_iter()
        .filter(|c| c.network == network.name)
        .collect();
    let mut pool = Pool::new(&stored, period.offset);

    let mut totals = Totals::default();
    let mut days: BTreeMap<Date, Day> = BTreeMap::new();
    let offset = period.offset;
    let day = |days: &mut BTreeMap<Date, Day>, at: UnixMillis| -> Date {
        let d = local_day(at, offset);
        days.entry(d).or_insert_with(|| Day { day: d.to_string(), network: 0, cakelink: 0, missing: 0, extra: 0 });
        d
    };
    let count = |days: &mut BTreeMap<Date, Day>, at: UnixMillis, add: fn(&mut Day)| {
        let d = day(days, at);
        if let Some(x) = days.get_mut(&d) {
            add(x);
        }
    };
    let mut amount_mismatch = Vec::new();
    let mut unmatched = Vec::new();
    for row in valid {
        count(&mut days, row.converted_at, |x| x.network += 1);
        totals.network += 1;
        match pool.take(&row) {
            Some(i) => {
                let c = &stored[i];
                totals.matched += 1;
                totals.cakelink += 1;
                count(&mut days, row.converted_at, |x| x.cakelink += 1);
                if c.value != row.price {
                    amount_mismatch.push(AmountMismatch {
                        conversion_id: c.id.clone(),
                        click_id: c.click.id.clone(),
                        transaction_id: c.transaction_id.clone().unwrap_or_default(),
                        network_price: row.price.to_string(),
                        cakelink_revenue: c.value.to_string(),
                    });
                }
            }
            None => {
                count(&mut days, row.converted_at, |x| x.missing += 1);
                unmatched.push(row);
            }
        }
    }
    // A reversed row takes its conversion out of the pool only for `--ingest`: until it
    // is reversed here too, cakelink counts what the network does not.
    let reversible: Vec<(NetworkRow, Conversion)> =
        reversing.into_iter().filter_map(|row| pool.peek(&row).map(|i| (row, stored[i].clone()))).collect();

    let mut extra = Vec::new();
    for (i, c) in stored.iter().enumerate() {
        if pool.taken[i] || c.reversed_at.is_some() || !in_period(c.at) {
            continue;
        }
        count(&mut days, c.at, |x| {
            x.cakelink += 1;
            x.extra += 1;
        });
        totals.cakelink += 1;
        extra.push(Extra {
            conversion_id: c.id.clone(),
            click_id: c.click.id.clone(),
            transaction_id: c.transaction_id.clone().unwrap_or_default(),
            revenue: c.value.to_string(),
            converted_at: rfc3339(c.at),
        });
    }

    let explained = explain(src, network, &stored, unmatched, now).await?;
    let mut missing = Vec::with_capacity(explained.len());
    let mut recordable = Vec::new();
    for (row, reason, click_stored) in explained {
        missing.push(Missing {
            click_id: row.click_id.clone().unwrap_or_default(),
            transaction_id: row.transaction_id.clone().unwrap_or_default(),
            price: row.price.to_string(),
            converted_at: rfc3339(row.converted_at),
            offer: row.offer.clone().unwrap_or_default(),
            reason,
        });
        if click_stored && reason != Reason::Reversed {
            recordable.push(row);
        }
    }
    totals.missing = missing.len() as u64;
    totals.extra = extra.len() as u64;
    totals.amount_mismatch = amount_mismatch.len() as u64;
    totals.gap_pct = percent(totals.missing, totals.network);

    // Every day of the period is listed, quiet ones too, so the table has no holes.
    let mut d = period.from;
    while d <= period.to {
        day(&mut days, d.midnight().assume_offset(period.offset).unix_timestamp() * 1000);
        d = match d.next_day() {
            Some(next) => next,
            None => break,
        };
    }
    let by_day = days.into_iter().filter(|(d, _)| *d >= period.from && *d <= period.to).map(|(_, v)| v).collect();
    Ok(Reconciliation {
        report: Report {
            network: network.name.clone(),
            from: period.from.to_string(),
            to: period.to.to_string(),
            totals,
            missing,
            extra,
            amount_mismatch,
            by_day,
        },
        recordable,
        reversible,
    })
}

/// cakelink's conversions as candidates, each taken by at most one row.
struct Pool<'a> {
    stored: &'a [Conversion],
    taken: Vec<bool>,
    by_transaction: HashMap<(&'a str, &'a str), Vec<usize>>,
    by_click: HashMap<&'a str, Vec<usize>>,
    offset: UtcOffset,
}

impl<'a> Pool<'a> {
    fn new(stored: &'a [Conversion], offset: UtcOffset) -> Pool<'a> {
        let mut by_transaction: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        let mut by_click: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, c) in stored.iter().enumerate().filter(|(_, c)| c.reversed_at.is_none()) {
            match c.transaction_id.as_deref() {
                Some(tid) => by_transaction.entry((c.click.id.as_str(), tid)).or_default().push(i),
                None => by_click.entry(c.click.id.as_str()).or_default().push(i),
            }
        }
        Pool { stored, taken: vec![false; stored.len()], by_transaction, by_click, offset }
    }

    /// The live conversion `row` matches and no other row took: same click and
    /// transaction id; else (no transaction id on either side) same click, payout and day.
    fn peek(&self, row: &NetworkRow) -> Option<usize> {
        let click = row.click_id.as_deref()?;
        let free = |list: Option<&Vec<usize>>| list.into_iter().flatten().copied().find(|&i| !self.taken[i]);
        if let Some(tid) = row.transaction_id.as_deref() {
            if let Some(i) = free(self.by_transaction.get(&(click, tid))) {
                return Some(i);
            }
        }
        let day = local_day(row.converted_at, self.offset);
        self.by_click.get(click).into_iter().flatten().copied().find(|&i| {
            let c = &self.stored[i];
            !self.taken[i] && c.value == row.price && local_day(c.at, self.offset) == day
        })
    }

    fn take(&mut self, row: &NetworkRow) -> Option<usize> {
        let i = self.peek(row)?;
        self.taken[i] = true;
        Some(i)
    }
}

/// The reason for each missing row, and whether its click is stored here.
async fn explain(
    src: &Sources<'_>,
    network: &Network,
    stored: &[Conversion],
    rows: Vec<NetworkRow>,
    now: UnixMillis,
) -> StoreResult<Vec<(NetworkRow, Reason, bool)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let log = src.events.events(None, src.event_log_max).await?;
    let postbacks = PostbackIndex::new(&log, &src.queued, network);
    let reversed: HashSet<(&str, Option<&str>)> = stored
        .iter()
        .filter(|c| c.reversed_at.is_some())
        .map(|c| (c.click.id.as_str(), c.transaction_id.as_deref()))
        .collect();
    stream::iter(rows)
        .map(|row| {
            let postbacks = &postbacks;
            let reversed = &reversed;
            async move {
                let (reason, stored) = reason_for(src, postbacks, reversed, &row, now).await?;
                Ok::<_, crate::store::StoreError>((row, reason, stored))
            }
        })
        .buffered(LOOKUPS)
        .try_collect()
        .await
}

async fn reason_for(
    src: &Sources<'_>,
    postbacks: &PostbackIndex,
    reversed: &HashSet<(&str, Option<&str>)>,
    row: &NetworkRow,
    now: UnixMillis,
) -> StoreResult<(Reason, bool)> {
    let Some(raw) = row.click_id.as_deref() else {
        return Ok((Reason::ClickIdMissing, false));
    };
    let converted_secs = (row.converted_at / 1000).max(0) as u64;
    let id = match src.keyring.verify(raw, converted_secs) {
        Ok(id) => id,
        Err(ClickIdError::Expired) => return Ok((Reason::ClickIdExpired, false)),
        Err(ClickIdError::Malformed | ClickIdError::Forged) => return Ok((Reason::ClickIdForged, false)),
    };
    let click_stored = src.clicks.find_click(id.as_str()).await?.is_some();
    if let Some(status) = postbacks.latest(id.as_str(), row.transaction_id.as_deref()) {
        let reason = match status {
            EventStatus::Rejected => Some(Reason::PostbackRejected),
            EventStatus::NoMatch => Some(Reason::PostbackNoMatch),
            EventStatus::Queued => Some(Reason::PostbackQueued),
            EventStatus::Ok | EventStatus::Duplicate | EventStatus::Reversed => None,
        };
        if let Some(reason) = reason {
            return Ok((reason, click_stored));
        }
    }
    if reversed.contains(&(id.as_str(), row.transaction_id.as_deref())) {
        return Ok((Reason::Reversed, click_stored));
    }
    if click_stored {
        return Ok((Reason::NoPostback, true));
    }
    let age_ms = now.saturating_sub(id.created_at() as i64 * 1000);
    Ok((if age_ms > src.click_ttl.as_millis() as i64 { Reason::ClickIdExpired } else { Reason::ClickUnknown }, false))
}

/// The postbacks of one network, by click id, newest first: those still waiting in the
/// outage spool, then the event log's.
struct PostbackIndex {
    by_click: HashMap<String, Vec<(EventStatus, Option<String>)>>,
}

impl PostbackIndex {
    fn new(log: &[Event], queued: &[QueuedPostback], network: &Network) -> PostbackIndex {
        let mut by_click: HashMap<String, Vec<(EventStatus, Option<String>)>> = HashMap::new();
        let mut add = |status: EventStatus, click: Option<&str>, fields: &Fields| {
            // A postback refused before its click id was read (a bad price) names it only
            // in its fields.
            let Some(click) = click.or_else(|| fields.get(&network.click_id_field)) else { return };
            let tid = fields.get(&network.transaction_field).map(str::to_owned);
            by_click.entry(click.to_owned()).or_default().push((status, tid));
        };
        for p in queued.iter().rev().filter(|p| p.network == network.name) {
            add(EventStatus::Queued, None, &Fields::from_queued(p));
        }
        for e in log.iter().filter(|e| e.network == network.name) {
            let fields = Fields::from_query(&e.query).unwrap_or_default();
            add(e.status, e.click_id.as_deref(), &fields);
        }
        PostbackIndex { by_click }
    }

    /// The status of the newest postback for this click and transaction id (a postback
    /// without a transaction id counts for any).
    fn latest(&self, click: &str, transaction_id: Option<&str>) -> Option<EventStatus> {
        self.by_click
            .get(click)?
            .iter()
            .find(|(_, tid)| tid.is_none() || transaction_id.is_none() || tid.as_deref() == transaction_id)
            .map(|(status, _)| *status)
    }
}

/// What `--ingest` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ingested {
    /// Missing conversions recorded now.
    pub recorded: u64,
    /// Conversions the network reported reversed, reversed now.
    pub reversed: u64,
    /// Rows that changed nothing (already recorded or reversed, or refused; the event
    /// log says why).
    pub unchanged: u64,
}

/// Records the missing conversions whose click is stored, through the postback path
/// (same de-duplication, same forwarding, each logged `ok` with reason `reconciled`),
/// and reverses the conversions the network reports reversed.
pub async fn ingest(
    ctx: &Context<'_>,
    network: &Network,
    reconciliation: &Reconciliation,
    now: UnixMillis,
) -> StoreResult<Ingested> {
    let mut done = Ingested::default();
    for row in &reconciliation.recordable {
        let fields = row_fields(network, row);
        let answer = postback::process(ctx, network, &fields, row.converted_at).await;
        if answer.http == 503 {
            return Err(StoreError::unavailable("recording a reconciled conversion", answer.reason));
        }
        ctx.events.log_event(&answer.to_event(&network.name, &fields, now)).await?;
        if answer.status == EventStatus::Ok {
            done.recorded += 1;
        } else {
            done.unchanged += 1;
        }
    }
    for (row, conversion) in &reconciliation.reversible {
        let why = format!("reconciled: disposition {}", row.disposition.as_deref().unwrap_or_default());
        let reversal =
            postback::reverse(ctx.conversions, &conversion.click.id, conversion.transaction_id.as_deref(), now, &why)
                .await?;
        let fields = row_fields(network, row);
        let answer = reversal.answer(postback::Answer::no_match(""));
        let mut event = answer.to_event(&network.name, &fields, now);
        event.click_id = Some(conversion.click.id.clone());
        ctx.events.log_event(&event).await?;
        if answer.status == EventStatus::Reversed {
            done.reversed += 1;
        } else {
            done.unchanged += 1;
        }
    }
    Ok(done)
}

/// A report row as the network's postback would have carried it.
fn row_fields(network: &Network, row: &NetworkRow) -> Fields {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(id) = &row.click_id {
        pairs.push((&network.click_id_field, id.clone()));
    }
    if let Some(tid) = &row.transaction_id {
        pairs.push((&network.transaction_field, tid.clone()));
    }
    pairs.push((&network.value_field, row.price.to_string()));
    if let Some(offer) = &row.offer {
        pairs.push((&network.item_field, offer.clone()));
    }
    if let (Some(field), Some(d)) = (&network.disposition_field, &row.disposition) {
        pairs.push((field, d.clone()));
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        query.append_pair(k, v);
    }
    Fields::from_query(&query.finish()).unwrap_or_default()
}

fn local_day(at: UnixMillis, offset: UtcOffset) -> Date {
    OffsetDateTime::from_unix_timestamp(at.div_euclid(1000)).map(|t| t.to_offset(offset).date()).unwrap_or(Date::MIN)
}

/// `part / whole × 100` with two decimals, exact (`"0.00"` when `whole` is 0).
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.00".to_owned();
    }
    let hundredths = (part as u128 * 10_000 + whole as u128 / 2) / whole as u128;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_is_exact_to_two_decimals() {
        assert_eq!(percent(0, 0), "0.00");
        assert_eq!(percent(1, 3), "33.33");
        assert_eq!(percent(2, 3), "66.67");
        assert_eq!(percent(5, 120), "4.17");
        assert_eq!(percent(7, 7), "100.00");
    }
}
