//! Reports: clicks, bot hits, conversions and revenue per link or per day.
//!
//! Reports read only the per-link, per-UTC-hour counters the store keeps beside every
//! write, never raw clicks, so a month's report costs the same at 10 clicks or 10
//! million. Keeping hours rather than days lets a report follow a network's time zone:
//! `tz=-05:00` regroups the same hours into that zone's days. Offsets must be whole
//! hours for that reason.

use std::collections::BTreeMap;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::model::{Counters, HourCounters, UnixHour, UnixMillis};

/// How rows are keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    Link,
    Day,
    /// By `network/slug/offer`, for links with offers.
    Offer,
}

/// Whether counters are an offer's (`network/slug/offer`) rather than a link's: they
/// repeat part of their link's and are reported only by offer.
fn is_offer_row(key: &str) -> bool {
    key.bytes().filter(|&b| b == b'/').count() >= 2
}

/// A date range in a time zone, `from` and `to` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub from: Date,
    pub to: Date,
    pub offset: UtcOffset,
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl Period {
    /// Reads `from`, `to` (`YYYY-MM-DD`) and `tz` (`±HH:MM`, whole hours; default UTC).
    pub fn parse(from: Option<&str>, to: Option<&str>, tz: Option<&str>) -> Result<Period, String> {
        let date = |name: &str, v: Option<&str>| -> Result<Date, String> {
            let v = v.ok_or_else(|| format!("{name} is required (YYYY-MM-DD)"))?;
            Date::parse(v, DATE).map_err(|_| format!("{name}={v:?} is not a date like 2026-11-24"))
        };
        let from = date("from", from)?;
        let to = date("to", to)?;
        if to < from {
            return Err("to is before from".into());
        }
        if (to - from).whole_days() > 3660 {
            return Err("the range may span at most 10 years".into());
        }
        let offset = match tz {
            None | Some("") | Some("Z") | Some("UTC") => UtcOffset::UTC,
            Some(tz) => parse_offset(tz)?,
        };
        Ok(Period { from, to, offset })
    }

    /// The period as milliseconds, `start..end`.
    pub fn millis(&self) -> (UnixMillis, UnixMillis) {
        let start = self.from.midnight().assume_offset(self.offset).unix_timestamp();
        let end = self.to.next_day().unwrap_or(self.to).midnight().assume_offset(self.offset).unix_timestamp();
        (start * 1000, end * 1000)
    }

    /// The UTC hours the period covers, inclusive.
    pub(crate) fn hours(&self) -> (UnixHour, UnixHour) {
        let (start, end) = self.millis();
        (crate::model::hour_of(start), crate::model::hour_of(end).saturating_sub(1))
    }

    /// The local date of a UTC hour.
    fn day_of(&self, hour: UnixHour) -> Date {
        let secs = hour as i64 * 3600 + self.offset.whole_seconds() as i64;
        OffsetDateTime::from_unix_timestamp(secs).map(|t| t.date()).unwrap_or(self.from)
    }
}

fn parse_offset(tz: &str) -> Result<UtcOffset, String> {
    let bad = || format!("tz={tz:?} is not an offset like -05:00 or +01:00");
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m != 0 {
        return Err(format!("tz={tz:?}: counters are kept per UTC hour, so only whole-hour offsets can be reported"));
    }
    if !(0..=14).contains(&h) {
        return Err(bad());
    }
    UtcOffset::from_hms(sign * h, 0, 0).map_err(|_| bad())
}

/// One report row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Row {
    pub key: String,
    pub clicks: u64,
    pub bot_hits: u64,
    pub conversions: u64,
    pub leads: u64,
    pub purchases: u64,
    /// Exact decimal text.
    pub revenue: String,
}

/// Sums hourly counters into rows keyed by link or by local day, sorted by key.
pub(crate) fn aggregate(period: &Period, group: Group, hours: &[HourCounters]) -> Vec<Row> {
    let (first, last) = period.hours();
    let mut sums: BTreeMap<String, Counters> = BTreeMap::new();
    let by_offer = group == Group::Offer;
    for h in hours.iter().filter(|h| (first..=last).contains(&h.hour) && is_offer_row(&h.link) == by_offer) {
        let key = match group {
            Group::Link | Group::Offer => h.link.clone(),
            Group::Day => period.day_of(h.hour).format(DATE).unwrap_or_default(),
        };
        sums.entry(key).or_default().add(&h.counters);
    }
    sums.into_iter()
        .map(|(key, c)| Row {
            key,
            clicks: c.clicks,
            bot_hits: c.bot_hits,
            conversions: c.conversions,
            leads: c.leads,
            purchases: c.purchases,
            revenue: c.revenue.to_string(),
        })
        .collect()
}

/// RFC 3339 text of a time in milliseconds, in UTC.
pub(crate) fn rfc3339(ms: UnixMillis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;

    fn hc(hour: UnixHour, link: &str, clicks: u64, revenue: i64) -> HourCounters {
        HourCounters {
            hour,
            link: link.into(),
            counters: Counters { clicks, revenue: Money::from_micros(revenue), ..Default::default() },
        }
    }

    #[test]
    fn days_follow_the_offset() {
        // 2026-11-24 00:00 UTC is hour 491_544.
        let h0 = (Date::from_calendar_date(2026, time::Month::November, 24)
            .unwrap()
            .midnight()
            .assume_utc()
            .unix_timestamp()
            / 3600) as u32;
        let p = Period::parse(Some("2026-11-23"), Some("2026-11-24"), Some("-05:00")).unwrap();
        let rows = aggregate(&p, Group::Day, &[hc(h0 + 3, "cake/a", 1, 0), hc(h0 + 6, "cake/a", 2, 1_500_000)]);
        assert_eq!(
            rows.iter().map(|r| (r.key.as_str(), r.clicks)).collect::<Vec<_>>(),
            [("2026-11-23", 1), ("2026-11-24", 2)]
        );
        assert_eq!(rows[1].revenue, "1.50");
        let utc = Period::parse(Some("2026-11-24"), Some("2026-11-24"), None).unwrap();
        assert_eq!(utc.hours(), (h0, h0 + 23));
    }

    #[test]
    fn offer_rows_are_apart_from_link_rows() {
        let p = Period::parse(Some("1970-01-01"), Some("1970-01-02"), None).unwrap();
        let hours = [hc(1, "cake/a", 3, 0), hc(1, "cake/a/x", 2, 0), hc(2, "cake/a/y", 1, 0)];
        let keys = |g| aggregate(&p, g, &hours).into_iter().map(|r| (r.key, r.clicks)).collect::<Vec<_>>();
        assert_eq!(keys(Group::Link), [("cake/a".to_owned(), 3)]);
        assert_eq!(keys(Group::Offer), [("cake/a/x".to_owned(), 2), ("cake/a/y".to_owned(), 1)]);
        assert_eq!(keys(Group::Day), [("1970-01-01".to_owned(), 3)]);
    }

    #[test]
    fn bad_periods_are_explained() {
        assert!(Period::parse(None, Some("2026-01-01"), None).unwrap_err().contains("from"));
        assert!(Period::parse(Some("2026-13-01"), Some("2026-01-01"), None).is_err());
        assert!(Period::parse(Some("2026-01-02"), Some("2026-01-01"), None).unwrap_err().contains("before"));
        assert!(Period::parse(Some("2026-01-01"), Some("2026-01-01"), Some("+05:30"))
            .unwrap_err()
            .contains("whole-hour"));
        assert!(Period::parse(Some("2026-01-01"), Some("2026-01-01"), Some("EST")).is_err());
    }
}
