//! The schema both backends share: how records are encoded, and what one write does.
//!
//! A backend decides only *how* to put bytes somewhere (a fjall batch, a Redis script);
//! *what* a click or a conversion writes is decided here, once:
//!
//! - the record codec ([`encode`], [`decode`]; clicks use the compact record of
//!   [`super::record`]);
//! - the write plan of a click ([`ClickPlan`]) and of a conversion ([`ConversionPlan`]):
//!   the record, its interned values, the counter increments of its hour and the outbox
//!   deliveries it enqueues; and of a conversion's reversal ([`ReversalPlan`]): the same
//!   counters taken back and the reversal's deliveries;
//! - the outbox's transitions ([`requeued`]) and its listing order ([`newest_first`]);
//! - retention: where personal data and settled deliveries stop being kept
//!   ([`personal_cutoff_secs`], [`settled_cutoff`], [`strip_conversion`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::legacy;
use super::record::{self, EncodedClick};
use super::{CapClaim, Requeue, StoreError, StoreResult};
use crate::model::{
    hour_of, ClickView, Conversion, Counters, Delivery, DeliveryStatus, Event, Link, Pairs, Subject, UnixHour,
    UnixMillis,
};
use crate::routing::NoOffer;

/// A record the store keeps in postcard form. Types that gained fields since version 1
/// are written after [`legacy::MARKER`] and read back in either shape.
pub(crate) trait Stored: Serialize + DeserializeOwned {
    /// The version 1 shape, for types that changed; `None` for those that never did.
    fn from_v1(_bytes: &[u8]) -> Option<Result<Self, postcard::Error>> {
        None
    }
}

impl Stored for Event {}
impl Stored for Counters {}

impl Stored for Link {
    fn from_v1(bytes: &[u8]) -> Option<Result<Link, postcard::Error>> {
        Some(postcard::from_bytes::<legacy::LinkV1>(bytes).map(Link::from))
    }
}

impl Stored for Conversion {
    fn from_v1(bytes: &[u8]) -> Option<Result<Conversion, postcard::Error>> {
        Some(postcard::from_bytes::<legacy::ConversionV1>(bytes).map(Conversion::from))
    }
}

impl Stored for Delivery {
    fn from_v1(bytes: &[u8]) -> Option<Result<Delivery, postcard::Error>> {
        Some(postcard::from_bytes::<legacy::DeliveryV1>(bytes).map(Delivery::from))
    }
}

/// Encodes one of the crate's records (postcard, after the marker for types that changed).
pub(crate) fn encode<T: Stored>(value: &T) -> Vec<u8> {
    // Serializing the crate's own plain structs into a Vec cannot fail.
    let body = postcard::to_stdvec(value).unwrap_or_default();
    if T::from_v1(&[]).is_none() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(legacy::MARKER);
    out.extend_from_slice(&body);
    out
}

/// Decodes a stored record, in its current or its version 1 shape; a record that does
/// not decode is reported corrupt.
pub(crate) fn decode<T: Stored>(bytes: &[u8]) -> StoreResult<T> {
    let decoded = match (bytes.split_first(), T::from_v1(&[]).is_some()) {
        (Some((&legacy::MARKER, rest)), true) => postcard::from_bytes(rest),
        (_, true) => T::from_v1(bytes).unwrap_or_else(|| postcard::from_bytes(bytes)),
        (_, false) => postcard::from_bytes(bytes),
    };
    decoded.map_err(|e| StoreError::Corrupt {
        what: std::any::type_name::<T>().rsplit("::").next().unwrap_or("record").to_owned(),
        source: Some(Box::new(e)),
    })
}

/// Everything recording one click writes, computed by the caller (which may run on
/// another core than the backend's writer).
pub(crate) struct ClickPlan {
    pub id: String,
    /// The UTC hour the click counts in.
    pub hour: UnixHour,
    /// `network/slug`.
    pub link: String,
    /// `network/slug/offer` when the click went to one of the link's offers: its counters
    /// move too, for reports by offer.
    pub offer_link: Option<String>,
    /// What the click adds to its hour's counters: one click or one bot hit.
    pub counters: Counters,
    /// The compact record and the interned values it names.
    pub encoded: EncodedClick,
    /// Outbox entries for destinations that take clicks (usually none).
    pub deliveries: Vec<Delivery>,
    /// For a person's click subject to daily caps: the offers it may take, of which the
    /// backend takes the first with room, in the same atomic write as the click.
    pub caps: Option<CapPlan>,
}

impl ClickPlan {
    pub(super) fn of(click: &ClickView<'_>, outbox: &OutboxRoutes, now: UnixMillis) -> ClickPlan {
        ClickPlan {
            deliveries: outbox.for_click(click, now),
            id: click.id.to_owned(),
            hour: hour_of(click.at),
            link: click.link.to_owned(),
            offer_link: click.offer.map(|o| offer_link(click.link, o)),
            counters: Counters::for_click(click),
            encoded: record::encode(click),
            caps: None,
        }
    }

    /// The plan of a person's `click` (with no offer yet) that takes the first of
    /// `claim`'s candidates with room, or, when all are full, the fallback.
    pub(super) fn capped(click: &ClickView<'_>, claim: &CapClaim, outbox: &OutboxRoutes, now: UnixMillis) -> ClickPlan {
        let mut plan = ClickPlan::of(click, outbox, now);
        let choices = claim
            .candidates
            .iter()
            .map(|c| CapChoice {
                cap_key: cap_key(click.link, &c.offer, claim.day),
                cap: c.cap,
                record: record::with_route(&plan.encoded.record, Some(&c.offer), click.rule, None),
                offer_link: offer_link(click.link, &c.offer),
            })
            .collect();
        let fallback_record =
            record::with_route(&plan.encoded.record, None, click.rule, Some(NoOffer::Capped.as_str()));
        plan.caps = Some(CapPlan { choices, fallback_record });
        plan
    }
}

/// A capped click's choices, each with what the write does when it takes that one.
pub(crate) struct CapPlan {
    pub choices: Vec<CapChoice>,
    /// The record when every choice is full.
    pub fallback_record: Vec<u8>,
}

/// One offer a capped click may take.
pub(crate) struct CapChoice {
    /// The counter of this offer's human clicks on the cap day.
    pub cap_key: String,
    /// `None`: no cap, always taken.
    pub cap: Option<u32>,
    /// The click's record when it takes this offer.
    pub record: Vec<u8>,
    /// `network/slug/offer`, whose report counters move.
    pub offer_link: String,
}

/// The report key of one offer of a link: `network/slug/offer`.
pub(crate) fn offer_link(link: &str, offer: &str) -> String {
    // Built by hand: it runs for every click of a link with offers, and `format!` costs
    // several times as many instructions.
    let mut key = String::with_capacity(link.len() + 1 + offer.len());
    key.push_str(link);
    key.push('/');
    key.push_str(offer);
    key
}

/// The key of one offer's cap counter on one cap day: `network/slug/offer/day`.
pub(crate) fn cap_key(link: &str, offer: &str, day: u32) -> String {
    format!("{link}/{offer}/{day}")
}

/// How long a cap counter is kept after its day: long enough for any `cap_tz`.
pub(crate) const CAP_KEEP_SECS: u64 = 3 * 86_400;

/// Everything recording one conversion writes, beside the conversion itself.
pub(crate) struct ConversionPlan {
    /// The UTC hour the conversion counts in.
    pub hour: UnixHour,
    /// `network/slug/offer` of its click's offer, whose counters move too.
    pub offer_link: Option<String>,
    pub counters: Counters,
    pub deliveries: Vec<Delivery>,
}

impl ConversionPlan {
    pub(super) fn of(conversion: &Conversion, outbox: &OutboxRoutes, now: UnixMillis) -> ConversionPlan {
        ConversionPlan { deliveries: outbox.for_conversion(conversion, now), ..ConversionPlan::counted(conversion) }
    }

    /// Where and what `conversion` counts, without deliveries: shared with its reversal,
    /// which takes back exactly this.
    fn counted(conversion: &Conversion) -> ConversionPlan {
        ConversionPlan {
            hour: hour_of(conversion.at),
            offer_link: conversion.click.offer.as_deref().map(|o| offer_link(&conversion.click.link, o)),
            counters: Counters::for_conversion(conversion),
            deliveries: Vec::new(),
        }
    }
}

/// Everything reversing one stored conversion writes, beside its reversal time: the
/// counters it added leave the same two rows of the same hour that recording moved
/// ([`ConversionPlan`]), and its reversal is enqueued for the destinations it went to.
pub(crate) struct ReversalPlan {
    /// The conversion's id.
    pub id: String,
    /// When the network reversed it (ms), kept as its `reversed_at`.
    pub at: UnixMillis,
    /// The UTC hour the conversion counted in.
    pub hour: UnixHour,
    /// `network/slug` of its click.
    pub link: String,
    /// `network/slug/offer` of its click's offer, whose counters moved too.
    pub offer_link: Option<String>,
    /// What recording added, and reversing takes back.
    pub counters: Counters,
    pub deliveries: Vec<Delivery>,
}

impl ReversalPlan {
    pub(super) fn of(conversion: &Conversion, at: UnixMillis, outbox: &OutboxRoutes, now: UnixMillis) -> ReversalPlan {
        let recorded = ConversionPlan::counted(conversion);
        ReversalPlan {
            id: conversion.id.clone(),
            at,
            hour: recorded.hour,
            link: conversion.click.link.clone(),
            offer_link: recorded.offer_link,
            counters: recorded.counters,
            deliveries: outbox.for_reversal(conversion, at, now),
        }
    }
}

/// How a reversal time is kept beside a conversion: eight bytes, big-endian.
pub(crate) fn encode_reversed_at(at: UnixMillis) -> [u8; 8] {
    at.to_be_bytes()
}

/// The reversal time kept by [`encode_reversed_at`].
pub(crate) fn decode_reversed_at(bytes: &[u8]) -> StoreResult<UnixMillis> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| StoreError::corrupt("reversal time"))?;
    Ok(UnixMillis::from_be_bytes(bytes))
}

/// `old` put back in the queue, due at `now` with its attempts reset, or why it cannot
/// be: only failed and expired deliveries go back.
pub(crate) fn requeued(old: &Delivery, now: UnixMillis) -> Result<Delivery, Requeue> {
    if !old.status.can_requeue() {
        return Err(Requeue::NotDeadLettered(old.status));
    }
    let mut d = old.clone();
    d.status = DeliveryStatus::Pending;
    d.attempts = 0;
    d.next_at = now;
    d.updated_at = now;
    Ok(d)
}

/// Orders deliveries most recently updated first (ties by id) and keeps `limit`.
pub(crate) fn newest_first(mut list: Vec<Delivery>, limit: usize) -> Vec<Delivery> {
    list.sort_by(|a, b| (b.updated_at, &b.id).cmp(&(a.updated_at, &a.id)));
    list.truncate(limit);
    list
}

/// Unix second before which clicks keep no IP address or user agent.
pub(crate) fn personal_cutoff_secs(now_secs: u64, personal_ttl: Duration) -> u64 {
    now_secs.saturating_sub(personal_ttl.as_secs())
}

/// Time (ms) before which settled deliveries are dropped.
pub(crate) fn settled_cutoff(now: UnixMillis, keep: Duration) -> UnixMillis {
    now.saturating_sub(keep.as_millis() as i64)
}

/// A stored conversion rewritten without its click's personal data, or `None` when it
/// had none left to drop.
pub(crate) fn strip_conversion(bytes: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    let mut conversion: Conversion = decode(bytes)?;
    Ok(conversion.click.drop_personal_data().then(|| encode(&conversion)))
}

/// One destination as the outbox sees it: which events it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRoute {
    pub destination: String,
    /// Conversion events it takes; `None` for all of them.
    pub events: Option<Vec<String>>,
    /// Whether it takes people's clicks (as `ViewContent`).
    pub clicks: bool,
    /// Ad click ids of which the click must carry one (Google needs a gclid, gbraid or
    /// wbraid); empty when any click will do.
    pub requires_any: Vec<String>,
}

impl OutboxRoute {
    fn takes(&self, ad_click_ids: Pairs<'_>) -> bool {
        self.requires_any.is_empty() || ad_click_ids.iter().any(|(k, _)| self.requires_any.iter().any(|r| r == k))
    }
}

/// The enabled destinations, in config order: which deliveries a write enqueues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxRoutes {
    routes: Vec<OutboxRoute>,
    wants_clicks: bool,
    /// How long settled deliveries are kept; `None` keeps them for ever.
    keep_settled: Option<Duration>,
}

impl OutboxRoutes {
    pub fn new(routes: Vec<OutboxRoute>) -> OutboxRoutes {
        let wants_clicks = routes.iter().any(|r| r.clicks);
        OutboxRoutes { routes, wants_clicks, keep_settled: None }
    }

    /// Drops settled deliveries (delivered, failed, expired, dry-run and skipped) `keep`
    /// after their last update.
    pub fn keep_settled_for(mut self, keep: Duration) -> OutboxRoutes {
        self.keep_settled = Some(keep);
        self
    }

    pub fn keep_settled(&self) -> Option<Duration> {
        self.keep_settled
    }

    /// Whether any destination takes clicks; when none does, recording a click does no
    /// outbox work at all.
    pub fn wants_clicks(&self) -> bool {
        self.wants_clicks
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn destinations(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.destination.as_str())
    }

    /// The deliveries recording `conversion` enqueues.
    pub fn for_conversion(&self, conversion: &Conversion, now: UnixMillis) -> Vec<Delivery> {
        self.routes
            .iter()
            .filter(|r| {
                r.events.as_ref().is_none_or(|e| e.contains(&conversion.event))
                    && r.takes(Pairs::Owned(&conversion.click.ad_click_ids))
            })
            .map(|r| Delivery::new(&r.destination, Subject::Conversion(Box::new(conversion.clone())), now))
            .collect()
    }

    /// The reversal of `conversion` (reversed at `at`) for each destination its
    /// conversion was routed to.
    pub fn for_reversal(&self, conversion: &Conversion, at: UnixMillis, now: UnixMillis) -> Vec<Delivery> {
        self.for_conversion(conversion, now)
            .into_iter()
            .map(|d| Delivery::new(&d.destination, Subject::Reversal(Box::new(conversion.clone()), at), now))
            .collect()
    }

    /// The deliveries recording `click` enqueues: none for a bot.
    pub fn for_click(&self, click: &ClickView<'_>, now: UnixMillis) -> Vec<Delivery> {
        if !self.wants_clicks || click.is_bot() {
            return Vec::new();
        }
        self.routes
            .iter()
            .filter(|r| r.clicks && r.takes(click.ad_click_ids))
            .map(|r| Delivery::new(&r.destination, Subject::Click(Box::new(click.to_click())), now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Click;
    use crate::money::Money;

    fn conversion(event: &str, offer: Option<&str>, gclid: bool) -> Conversion {
        let click = Click {
            id: "c1".into(),
            link: "cake/summer".into(),
            at: 1_000,
            bot: None,
            ip: None,
            user_agent: None,
            referer: None,
            utm: Vec::new(),
            ad_click_ids: if gclid { vec![("gclid".into(), "g".into())] } else { Vec::new() },
            subids: Vec::new(),
            offer: offer.map(str::to_owned),
            rule: None,
            fallback: None,
        };
        Conversion {
            id: "v1".into(),
            at: 7_200_000 + 5,
            network: "cake".into(),
            event: event.into(),
            value: Money::from_micros(2_500_000),
            currency: "USD".into(),
            transaction_id: None,
            item_id: None,
            fields: Vec::new(),
            click,
            reversed_at: None,
        }
    }

    fn routes() -> OutboxRoutes {
        OutboxRoutes::new(vec![
            OutboxRoute { destination: "meta".into(), events: None, clicks: false, requires_any: vec![] },
            OutboxRoute {
                destination: "gads".into(),
                events: Some(vec!["Purchase".into()]),
                clicks: false,
                requires_any: vec!["gclid".into()],
            },
        ])
    }

    #[test]
    fn a_reversal_takes_back_what_recording_added_from_the_same_rows() {
        let c = conversion("Purchase", Some("o2"), false);
        let recorded = ConversionPlan::of(&c, &routes(), 9);
        let reversed = ReversalPlan::of(&c, 50_000_000, &routes(), 9);
        assert_eq!(reversed.hour, recorded.hour);
        assert_eq!(reversed.hour, 2);
        assert_eq!(reversed.link, "cake/summer");
        assert_eq!(reversed.offer_link, recorded.offer_link);
        assert_eq!(reversed.offer_link.as_deref(), Some("cake/summer/o2"));
        assert_eq!(reversed.counters, recorded.counters);
        assert_eq!(
            reversed.counters,
            Counters { conversions: 1, purchases: 1, revenue: Money::from_micros(2_500_000), ..Counters::default() }
        );
        assert_eq!((reversed.id.as_str(), reversed.at), ("v1", 50_000_000));
    }

    #[test]
    fn a_reversal_goes_only_where_its_conversion_went() {
        let lead = conversion("Lead", None, true);
        let reversed = ReversalPlan::of(&lead, 77, &routes(), 9);
        assert_eq!(reversed.deliveries.len(), 1);
        let d = &reversed.deliveries[0];
        assert_eq!((d.destination.as_str(), d.id.as_str()), ("meta", "v1.reversal~meta"));
        assert_eq!(d.subject, Subject::Reversal(Box::new(lead.clone()), 77));
        assert_eq!((d.status, d.next_at), (DeliveryStatus::Pending, 9));

        let purchase = conversion("Purchase", None, true);
        let mut to: Vec<String> =
            ReversalPlan::of(&purchase, 77, &routes(), 9).deliveries.into_iter().map(|d| d.destination).collect();
        to.sort();
        assert_eq!(to, vec!["gads", "meta"]);
        assert!(ReversalPlan::of(&purchase, 77, &OutboxRoutes::default(), 9).deliveries.is_empty());
    }

    #[test]
    fn reversal_times_round_trip_and_damage_is_reported() {
        for at in [0, 1, 1_764_000_000_123, -1] {
            assert_eq!(decode_reversed_at(&encode_reversed_at(at)).ok(), Some(at));
        }
        assert!(decode_reversed_at(b"short").is_err());
    }
}
