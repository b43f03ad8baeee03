//! The schema both backends share: how records are encoded, and what one write does.
//!
//! A backend decides only *how* to put bytes somewhere (a fjall batch, a Redis script);
//! *what* a click or a conversion writes is decided here, once:
//!
//! - the record codec ([`encode`], [`decode`]; clicks use the compact record of
//!   [`super::record`]);
//! - the write plan of a click ([`ClickPlan`]) and of a conversion ([`ConversionPlan`]):
//!   the record, its interned values, the counter increments of its hour and the outbox
//!   deliveries it enqueues;
//! - the outbox's transitions ([`requeued`]) and its listing order ([`newest_first`]);
//! - retention: where personal data and settled deliveries stop being kept
//!   ([`personal_cutoff_secs`], [`settled_cutoff`], [`strip_conversion`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::record::{self, EncodedClick};
use super::{Requeue, StoreError, StoreResult};
use crate::model::{hour_of, Click, Conversion, Counters, Delivery, DeliveryStatus, Subject, UnixHour, UnixMillis};

/// Encodes one of the crate's records (postcard).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing the crate's own plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a stored record; a record that does not decode is reported corrupt.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
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
    /// What the click adds to its hour's counters: one click or one bot hit.
    pub counters: Counters,
    /// The compact record and the interned values it names.
    pub encoded: EncodedClick,
    /// Outbox entries for destinations that take clicks (usually none).
    pub deliveries: Vec<Delivery>,
}

impl ClickPlan {
    pub(super) fn of(click: &Click, outbox: &OutboxRoutes, now: UnixMillis) -> ClickPlan {
        ClickPlan {
            deliveries: outbox.for_click(click, now),
            id: click.id.clone(),
            hour: hour_of(click.at),
            link: click.link.clone(),
            counters: Counters::for_click(click),
            encoded: record::encode(click),
        }
    }
}

/// Everything recording one conversion writes, beside the conversion itself.
pub(crate) struct ConversionPlan {
    /// The UTC hour the conversion counts in.
    pub hour: UnixHour,
    pub counters: Counters,
    pub deliveries: Vec<Delivery>,
}

impl ConversionPlan {
    pub(super) fn of(conversion: &Conversion, outbox: &OutboxRoutes, now: UnixMillis) -> ConversionPlan {
        ConversionPlan {
            hour: hour_of(conversion.at),
            counters: Counters::for_conversion(conversion),
            deliveries: outbox.for_conversion(conversion, now),
        }
    }
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
    fn takes(&self, click: &Click) -> bool {
        self.requires_any.is_empty() || click.ad_click_ids.iter().any(|(k, _)| self.requires_any.contains(k))
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

    /// Drops delivered, failed, expired and dry-run deliveries `keep` after their last
    /// update.
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
            .filter(|r| r.events.as_ref().is_none_or(|e| e.contains(&conversion.event)) && r.takes(&conversion.click))
            .map(|r| Delivery::new(&r.destination, Subject::Conversion(Box::new(conversion.clone())), now))
            .collect()
    }

    /// The deliveries recording `click` enqueues: none for a bot.
    pub fn for_click(&self, click: &Click, now: UnixMillis) -> Vec<Delivery> {
        if !self.wants_clicks || click.is_bot() {
            return Vec::new();
        }
        self.routes
            .iter()
            .filter(|r| r.clicks && r.takes(click))
            .map(|r| Delivery::new(&r.destination, Subject::Click(Box::new(click.clone())), now))
            .collect()
    }
}
