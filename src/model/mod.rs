//! The records cakelink keeps: clicks, conversions, event-log entries, report counters
//! and links. Both store backends persist exactly these; the routes build and read them.

use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::routing::{Offer, Rule};

mod view;
pub use view::{ClickIp, ClickView, Pair, Pairs};

/// Milliseconds since the unix epoch.
pub type UnixMillis = i64;

/// Hours since the unix epoch: the grain of the report counters.
pub type UnixHour = u32;

pub fn hour_of(ms: UnixMillis) -> UnixHour {
    (ms.max(0) / 3_600_000) as UnixHour
}

/// Ad-platform click ids a click keeps from the visitor's query, in the order reports
/// list them.
pub const AD_CLICK_IDS: [&str; 6] = ["fbclid", "gclid", "gbraid", "wbraid", "ttclid", "msclkid"];

/// One visitor's pass through `/go/{network}/{slug}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    pub id: String,
    /// `network/slug` of the link clicked.
    pub link: String,
    pub at: UnixMillis,
    /// Why the request was classified as a bot or prefetch; `None` for a person.
    pub bot: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// `utm_source` … `utm_content`, keyed without the `utm_` prefix.
    pub utm: Vec<(String, String)>,
    /// Ad-platform click ids: `fbclid`, `gclid`, `gbraid`, `wbraid`, `ttclid`, `msclkid`.
    pub ad_click_ids: Vec<(String, String)>,
    /// Sub-ids passed through to the offer URL (`s1`, `s3`…), as sent.
    pub subids: Vec<(String, String)>,
    /// Id of the link's offer the visitor was sent to (links with `[[links.offers]]`).
    #[serde(default)]
    pub offer: Option<String>,
    /// Index of the link's rule that matched, if one did.
    #[serde(default)]
    pub rule: Option<u32>,
    /// Why the visitor went to the link's fallback instead of an offer: `paused` or
    /// `capped`.
    #[serde(default)]
    pub fallback: Option<String>,
}

impl Click {
    pub fn is_bot(&self) -> bool {
        self.bot.is_some()
    }

    /// Forgets the IP address and user agent (kept only as long as the conversion APIs
    /// take them); whether there was anything to forget.
    pub fn drop_personal_data(&mut self) -> bool {
        let had = self.ip.is_some() || self.user_agent.is_some();
        self.ip = None;
        self.user_agent = None;
        had
    }
}

/// A conversion recorded from a postback, with a copy of its click so that reports and
/// forwarding never depend on the click still being in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// Stable id derived from the de-duplication key; the downstream `event_id`/`order_id`.
    pub id: String,
    pub at: UnixMillis,
    /// Network whose postback URL was called.
    pub network: String,
    pub event: String,
    pub value: Money,
    pub currency: String,
    pub transaction_id: Option<String>,
    pub item_id: Option<String>,
    /// Every postback field that carried a value, names lower-cased.
    pub fields: Vec<(String, String)>,
    pub click: Click,
    /// When the network reversed it (rejected, returned, scrubbed), if it did. Kept by
    /// the store beside the record (the record itself never changes) and filled in when
    /// the conversion is read back.
    #[serde(skip)]
    pub reversed_at: Option<UnixMillis>,
}

impl Conversion {
    /// `"ok"`, or `"reversed"` once the network reversed it.
    pub fn status(&self) -> &'static str {
        if self.reversed_at.is_some() {
            "reversed"
        } else {
            "ok"
        }
    }

    /// Derives the conversion id from what makes a conversion unique: the click, the
    /// network's transaction id (or, without one, the exact set of fields) and the event.
    pub fn derive_id(click_id: &str, transaction_id: Option<&str>, fields: &[(String, String)], event: &str) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"cakelink conversion v1\0");
        h.update(click_id.as_bytes());
        h.update(b"\0");
        match transaction_id {
            Some(tid) => {
                h.update(b"tid\0");
                h.update(tid.as_bytes());
            }
            None => {
                let mut sorted: Vec<_> = fields.iter().collect();
                sorted.sort();
                h.update(b"fields\0");
                for (k, v) in sorted {
                    h.update(k.as_bytes());
                    h.update(b"=");
                    h.update(v.as_bytes());
                    h.update(b"&");
                }
            }
        }
        h.update(b"\0");
        h.update(event.as_bytes());
        let hash = h.finalize();
        let mut n = [0u8; 16];
        n.copy_from_slice(&hash.as_bytes()[..16]);
        format!("{:0>22}", base62::encode(u128::from_be_bytes(n)))
    }
}

/// What recording a conversion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
}

/// What reversing a conversion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reversed {
    /// It left its day's figures and its reversal was enqueued for its destinations.
    Done,
    /// It was reversed before; nothing changed.
    Already,
    /// No conversion with that id is stored.
    NotFound,
}

/// What a postback came to: the status of its event-log entry.
///
/// Stored and shown as its name (`"no_match"`), so that the stored event log reads the
/// same whatever order the variants are declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Ok,
    Duplicate,
    NoMatch,
    Rejected,
    Queued,
    /// The network reversed a recorded conversion (its disposition).
    Reversed,
}

impl EventStatus {
    pub const ALL: [EventStatus; 6] = [
        EventStatus::Ok,
        EventStatus::Duplicate,
        EventStatus::NoMatch,
        EventStatus::Rejected,
        EventStatus::Queued,
        EventStatus::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Ok => "ok",
            EventStatus::Duplicate => "duplicate",
            EventStatus::NoMatch => "no_match",
            EventStatus::Rejected => "rejected",
            EventStatus::Queued => "queued",
            EventStatus::Reversed => "reversed",
        }
    }

    /// The status named `name`, if any.
    pub fn parse(name: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventStatus, D::Error> {
        let name = String::deserialize(deserializer)?;
        EventStatus::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown event status {name:?}")))
    }
}

/// The event a conversion without a value is recorded as.
pub const LEAD: &str = "Lead";
/// The event a conversion with a value is recorded as.
pub const PURCHASE: &str = "Purchase";

/// One entry of the postback event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub received_at: UnixMillis,
    pub network: String,
    pub status: EventStatus,
    pub reason: String,
    pub click_id: Option<String>,
    pub conversion_id: Option<String>,
    /// The postback's fields as received, with any key redacted.
    pub query: String,
}

/// A postback that arrived while the store was down: kept in the outage spool and
/// resolved, as if it arrived at `received_at`, once the store is back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPostback {
    pub received_at: UnixMillis,
    /// Network whose postback URL was called.
    pub network: String,
    /// Fields that carried a value, names lower-cased.
    pub present: Vec<(String, String)>,
    /// Fields that arrived empty, `null` or as an unreplaced token, with what arrived.
    pub absent: Vec<(String, String)>,
}

/// Report counters for one link in one UTC hour. Every field is additive, so the same
/// type is the stored total and the delta one write adds to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub clicks: u64,
    pub bot_hits: u64,
    pub conversions: u64,
    pub leads: u64,
    pub purchases: u64,
    pub revenue: Money,
}

impl Counters {
    /// What recording `click` adds.
    pub fn for_click(click: &ClickView<'_>) -> Counters {
        if click.is_bot() {
            Counters { bot_hits: 1, ..Counters::default() }
        } else {
            Counters { clicks: 1, ..Counters::default() }
        }
    }

    /// What recording `conversion` adds.
    pub fn for_conversion(conversion: &Conversion) -> Counters {
        Counters {
            conversions: 1,
            leads: (conversion.event == LEAD) as u64,
            purchases: (conversion.event == PURCHASE) as u64,
            revenue: conversion.value,
            ..Counters::default()
        }
    }

    pub fn add(&mut self, other: &Counters) {
        self.clicks += other.clicks;
        self.bot_hits += other.bot_hits;
        self.conversions += other.conversions;
        self.leads += other.leads;
        self.purchases += other.purchases;
        self.revenue = self.revenue.saturating_add(other.revenue);
    }

    /// Takes back what `other` added (a reversed conversion leaves its hour), never
    /// going below zero: a counter that lost part of its history stays at zero rather
    /// than wrapping.
    pub fn subtract(&mut self, other: &Counters) {
        self.clicks = self.clicks.saturating_sub(other.clicks);
        self.bot_hits = self.bot_hits.saturating_sub(other.bot_hits);
        self.conversions = self.conversions.saturating_sub(other.conversions);
        self.leads = self.leads.saturating_sub(other.leads);
        self.purchases = self.purchases.saturating_sub(other.purchases);
        self.revenue = Money::from_micros(self.revenue.micros().saturating_sub(other.revenue.micros()).max(0));
    }

    /// The counters as named fields, for stores that keep one number per field.
    pub fn fields(&self) -> [(&'static str, i64); 6] {
        [
            ("clicks", self.clicks as i64),
            ("bot_hits", self.bot_hits as i64),
            ("conversions", self.conversions as i64),
            ("leads", self.leads as i64),
            ("purchases", self.purchases as i64),
            ("revenue", self.revenue.micros()),
        ]
    }

    /// Sets one named field (the inverse of [`Counters::fields`]); unknown names are
    /// ignored. A negative stored value (a take-back that outran what was counted) reads
    /// as zero.
    pub fn set_field(&mut self, name: &str, value: i64) {
        let v = value.max(0) as u64;
        match name {
            "clicks" => self.clicks = v,
            "bot_hits" => self.bot_hits = v,
            "conversions" => self.conversions = v,
            "leads" => self.leads = v,
            "purchases" => self.purchases = v,
            "revenue" => self.revenue = Money::from_micros(value.max(0)),
            _ => {}
        }
    }
}

/// Counters of one link in one hour, as read back for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourCounters {
    pub hour: UnixHour,
    pub link: String,
    pub counters: Counters,
}

/// Whether a link sends visitors to its offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    #[default]
    Active,
    Paused,
}

/// Where a link was defined: config links are read-only through the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkSource {
    Config,
    #[default]
    Api,
}

/// A tracking link as its owner defined it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub network: String,
    pub slug: String,
    pub offer: String,
    pub redirect: u16,
    pub status: LinkStatus,
    pub fallback: Option<String>,
    pub event: Option<String>,
    pub source: LinkSource,
    /// Weighted offers; when empty, every visitor goes to `offer`.
    #[serde(default)]
    pub offers: Vec<Offer>,
    /// Checked in order; the first that matches picks the eligible offers.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Hours a visitor keeps the offer they got (a cookie); 0 turns stickiness off.
    #[serde(default)]
    pub sticky_hours: u32,
    /// Offset (`-05:00`) at which the offers' daily caps turn; UTC when absent.
    #[serde(default)]
    pub cap_tz: Option<String>,
}

impl Link {
    /// `network/slug`, the key reports use.
    pub fn key(&self) -> String {
        link_key(&self.network, &self.slug)
    }
}

pub fn link_key(network: &str, slug: &str) -> String {
    format!("{network}/{slug}")
}

/// What a delivery forwards: a conversion (with its click) or, for destinations that
/// asked for them, a person's click.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    Conversion(Box<Conversion>),
    Click(Box<Click>),
    /// The network reversed a conversion that was forwarded: platforms that can retract
    /// it are told, the others record why they were not. The conversion carries its
    /// `reversed_at`.
    Reversal(Box<Conversion>, UnixMillis),
}

impl Subject {
    /// The id a platform de-duplicates on: the conversion id, or the click id.
    pub fn event_id(&self) -> &str {
        match self {
            Subject::Conversion(c) | Subject::Reversal(c, _) => &c.id,
            Subject::Click(c) => &c.id,
        }
    }

    /// What a delivery of this subject is keyed on: the event id, or for a reversal the
    /// conversion's id with `.reversal`, so that a conversion's reversal is a delivery of
    /// its own beside the conversion's.
    pub fn delivery_key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Subject::Reversal(c, _) => format!("{}.reversal", c.id).into(),
            _ => self.event_id().into(),
        }
    }

    /// The click behind the event (the conversion's copy, or the click itself).
    pub fn click(&self) -> &Click {
        match self {
            Subject::Conversion(c) | Subject::Reversal(c, _) => &c.click,
            Subject::Click(c) => c,
        }
    }

    /// When the event happened.
    pub fn at(&self) -> UnixMillis {
        match self {
            Subject::Conversion(c) | Subject::Reversal(c, _) => c.at,
            Subject::Click(c) => c.at,
        }
    }

    /// The event's name before any per-destination mapping: the conversion's event,
    /// or `ViewContent` for a click.
    pub fn event_name(&self) -> &str {
        match self {
            Subject::Conversion(c) | Subject::Reversal(c, _) => &c.event,
            Subject::Click(_) => "ViewContent",
        }
    }
}

/// Where one event stands with one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or for a retry.
    Pending,
    /// The platform accepted it (or already had it).
    Delivered,
    /// Dead-lettered: refused for good, or out of attempts; can be re-queued.
    Failed,
    /// Too old for the platform to take when its turn came; never sent.
    Expired,
    /// The destination is in dry run: the request was built and kept, not sent.
    DryRun,
    /// Nothing to send: the platform has no way to take it (a reversal on a platform
    /// without retractions); `last_error` says why.
    Skipped,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Expired,
        DeliveryStatus::DryRun,
        DeliveryStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::DryRun => "dry_run",
            DeliveryStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the API may put it back in the queue.
    pub fn can_requeue(self) -> bool {
        matches!(self, DeliveryStatus::Failed | DeliveryStatus::Expired)
    }
}

/// One event on its way to one destination: the outbox entry and, once settled, the
/// record of what was sent and what came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `<event id>~<destination>`: unique, and stable across retries.
    pub id: String,
    pub destination: String,
    pub subject: Subject,
    pub status: DeliveryStatus,
    /// Requests made so far.
    pub attempts: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When the next attempt is due (pending entries only).
    pub next_at: UnixMillis,
    /// HTTP status of the last answer, if one came.
    pub last_status: Option<u16>,
    /// The platform's error text, or why nothing was sent.
    pub last_error: Option<String>,
    /// This event's part of the last request built (JSON), for troubleshooting.
    pub request: Option<String>,
}

impl Delivery {
    pub fn id_for(event_id: &str, destination: &str) -> String {
        format!("{event_id}~{destination}")
    }

    /// A new pending entry, due at once.
    pub fn new(destination: &str, subject: Subject, now: UnixMillis) -> Delivery {
        Delivery {
            id: Delivery::id_for(&subject.delivery_key(), destination),
            destination: destination.to_owned(),
            subject,
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: now,
            updated_at: now,
            next_at: now,
            last_status: None,
            last_error: None,
            request: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_counters_takes_back_exactly_and_never_goes_below_zero() {
        let mut hour = Counters {
            clicks: 3,
            bot_hits: 1,
            conversions: 2,
            leads: 1,
            purchases: 1,
            revenue: Money::from_micros(12_345_679),
        };
        let purchase =
            Counters { conversions: 1, purchases: 1, revenue: Money::from_micros(12_345_678), ..Counters::default() };
        hour.subtract(&purchase);
        assert_eq!(
            hour,
            Counters { clicks: 3, bot_hits: 1, conversions: 1, leads: 1, purchases: 0, revenue: Money::from_micros(1) }
        );
        hour.subtract(&purchase);
        assert_eq!(
            hour,
            Counters { clicks: 3, bot_hits: 1, conversions: 0, leads: 1, purchases: 0, revenue: Money::ZERO }
        );
        let mut read = Counters::default();
        read.set_field("revenue", -5);
        read.set_field("conversions", -1);
        assert_eq!(read, Counters::default());
    }

    #[test]
    fn conversion_id_depends_on_tid_or_fields_and_event() {
        let f1 = vec![("price".to_owned(), "7".to_owned())];
        let f2 = vec![("price".to_owned(), "8".to_owned())];
        let a = Conversion::derive_id("c1", Some("t"), &f1, "Purchase");
        assert_eq!(a.len(), 22);
        assert_eq!(a, Conversion::derive_id("c1", Some("t"), &f2, "Purchase"));
        assert_ne!(a, Conversion::derive_id("c2", Some("t"), &f1, "Purchase"));
        assert_ne!(a, Conversion::derive_id("c1", Some("t"), &f1, "Lead"));
        let n1 = Conversion::derive_id("c1", None, &f1, "Purchase");
        assert_ne!(n1, Conversion::derive_id("c1", None, &f2, "Purchase"));
        let mut reordered = vec![("b".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())];
        let x = Conversion::derive_id("c1", None, &reordered, "Lead");
        reordered.reverse();
        assert_eq!(x, Conversion::derive_id("c1", None, &reordered, "Lead"));
    }
}
