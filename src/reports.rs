//! Reports: clicks, bot hits, conversions and revenue per link or per day.
//!
//! Reports read only the per-link, per-UTC-hour counters the store keeps beside every
//! write, never raw clicks, so a month's report costs the same at 10 clicks or 10
//! million. Keeping hours rather than days lets a report follow a network's time zone:
//! `tz=-05:00` regroups the same hours into that zone's days. Offsets must be whole
//! hours for that reason.
//!
//! The same counters tell which links are *silent*: people click them but no postback
//! comes back, which on CAKE almost always means the offer has no postback URL set.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::model::{hour_of, Counters, HourCounters, UnixHour, UnixMillis};
use crate::store::{ConversionStore, StoreResult};

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

/// The window silent links are looked for in: the last `hours` UTC hours, the current
/// (partial) one included, and the human clicks a link needs in it to be suspicious.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SilenceWindow {
    pub hours: u32,
    pub min_clicks: u64,
}

/// Longest window, in hours (30 days): past that, the owner wants `/api/stats`.
const MAX_WINDOW_HOURS: u32 = 720;
/// Most clicks a window can ask for; higher is surely a typo.
const MAX_MIN_CLICKS: u64 = 1_000_000_000;
/// How far before the window the last postback of a silent link is looked for, in hours
/// (90 days).
pub(crate) const LOOKBACK_HOURS: u32 = 90 * 24;

impl Default for SilenceWindow {
    /// A day, and enough clicks that a day without a conversion is not bad luck.
    fn default() -> SilenceWindow {
        SilenceWindow { hours: 24, min_clicks: 100 }
    }
}

impl SilenceWindow {
    /// Reads `hours` (1 to 720) and `min_clicks` (1 or more); each defaults when absent.
    pub(crate) fn parse(hours: Option<&str>, min_clicks: Option<&str>) -> Result<SilenceWindow, String> {
        let mut window = SilenceWindow::default();
        if let Some(v) = hours {
            window.hours = v
                .parse()
                .ok()
                .filter(|h| (1..=MAX_WINDOW_HOURS).contains(h))
                .ok_or_else(|| format!("hours={v:?}: use a whole number of hours from 1 to {MAX_WINDOW_HOURS}"))?;
        }
        if let Some(v) = min_clicks {
            window.min_clicks = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_MIN_CLICKS).contains(n))
                .ok_or_else(|| format!("min_clicks={v:?}: use a whole number from 1 to {MAX_MIN_CLICKS}"))?;
        }
        Ok(window)
    }

    /// The UTC hours the window covers at `now`, inclusive.
    pub(crate) fn hours_at(&self, now: UnixMillis) -> (UnixHour, UnixHour) {
        let last = hour_of(now);
        (last.saturating_sub(self.hours.saturating_sub(1)), last)
    }
}

/// A link people clicked with no conversion to show for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SilentLink {
    /// `network/slug`.
    pub link: String,
    /// Clicks by people in the window; bot hits are not counted.
    pub clicks: u64,
    /// Conversions recorded in the window: 0, or the link would not be silent.
    pub postbacks: u64,
    /// The newest conversion of the link in the look-back before the window.
    pub last_postback_at: Option<UnixMillis>,
}

/// The links whose people clicks in `hours` reached `min_clicks` with no conversion
/// among them, most clicked first (then by name). Offer rows repeat their link's figures
/// and are left out. `last_postback_at` is not filled in here.
fn silent_in(hours: &[HourCounters], min_clicks: u64) -> Vec<SilentLink> {
    let mut sums: HashMap<&str, Counters> = HashMap::new();
    for h in hours.iter().filter(|h| !is_offer_row(&h.link)) {
        sums.entry(&h.link).or_default().add(&h.counters);
    }
    let mut silent: Vec<SilentLink> = sums
        .into_iter()
        .filter(|(_, c)| c.clicks >= min_clicks && c.conversions == 0)
        .map(|(link, c)| SilentLink {
            link: link.to_owned(),
            clicks: c.clicks,
            postbacks: c.conversions,
            last_postback_at: None,
        })
        .collect();
    silent.sort_by(|a, b| b.clicks.cmp(&a.clicks).then_with(|| a.link.cmp(&b.link)));
    silent
}

/// For each of `links`, the newest hour in `hours` in which it counted a conversion.
fn newest_conversion_hours(hours: &[HourCounters], links: &[SilentLink]) -> HashMap<String, UnixHour> {
    let mut newest: HashMap<String, UnixHour> = HashMap::new();
    for h in hours.iter().filter(|h| h.counters.conversions > 0) {
        if links.iter().any(|l| l.link == h.link) {
            let hour = newest.entry(h.link.clone()).or_insert(h.hour);
            *hour = (*hour).max(h.hour);
        }
    }
    newest
}

/// The silent links at `now`: one read of the window's counters, and for the silent
/// ones only, the counters of the look-back to find the hour of their last conversion,
/// then that hour's conversions for its exact time. The admin API and the dashboard
/// both call this.
pub(crate) async fn silent_links(
    store: &dyn ConversionStore,
    window: SilenceWindow,
    now: UnixMillis,
) -> StoreResult<Vec<SilentLink>> {
    let (first, last) = window.hours_at(now);
    let mut silent = silent_in(&store.counters(first, last).await?, window.min_clicks);
    if silent.is_empty() || first == 0 {
        return Ok(silent);
    }
    let before = store.counters(first.saturating_sub(LOOKBACK_HOURS), first - 1).await?;
    let newest = newest_conversion_hours(&before, &silent);
    let mut by_hour: BTreeMap<UnixHour, Vec<&str>> = BTreeMap::new();
    for (link, hour) in &newest {
        by_hour.entry(*hour).or_default().push(link);
    }
    let mut at: HashMap<&str, UnixMillis> = HashMap::new();
    for (hour, links) in by_hour {
        let start = hour as UnixMillis * 3_600_000;
        let conversions = store.conversions(start, start + 3_600_000).await?;
        for link in links {
            // The counters say there was one; should its record be gone, the hour is
            // still the best answer.
            let newest = conversions.iter().filter(|c| c.click.link == link).map(|c| c.at).max();
            at.insert(link, newest.unwrap_or(start));
        }
    }
    for s in &mut silent {
        s.last_postback_at = at.get(s.link.as_str()).copied();
    }
    Ok(silent)
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

    fn counted(hour: UnixHour, link: &str, clicks: u64, bot_hits: u64, conversions: u64) -> HourCounters {
        HourCounters {
            hour,
            link: link.into(),
            counters: Counters { clicks, bot_hits, conversions, ..Default::default() },
        }
    }

    #[test]
    fn silent_links_have_enough_human_clicks_and_no_conversion() {
        let hours = [
            counted(10, "cake/quiet", 60, 0, 0),
            counted(11, "cake/quiet", 60, 0, 0),
            counted(11, "cake/quiet/offer-a", 120, 0, 0),
            counted(10, "cake/converts", 500, 0, 0),
            counted(11, "cake/converts", 0, 0, 1),
            counted(11, "cake/few", 99, 0, 0),
            counted(11, "cake/bots", 10, 400, 0),
            counted(11, "cake/busier", 300, 0, 0),
        ];
        let silent = silent_in(&hours, 100);
        let listed: Vec<_> = silent.iter().map(|s| (s.link.as_str(), s.clicks, s.postbacks)).collect();
        assert_eq!(listed, [("cake/busier", 300, 0), ("cake/quiet", 120, 0)]);
        let newest = newest_conversion_hours(
            &[counted(3, "cake/quiet", 0, 0, 2), counted(7, "cake/quiet", 5, 0, 1), counted(9, "cake/other", 0, 0, 1)],
            &silent,
        );
        assert_eq!(newest.into_iter().collect::<Vec<_>>(), [("cake/quiet".to_owned(), 7)]);
    }

    #[test]
    fn silence_windows_are_checked() {
        assert_eq!(SilenceWindow::parse(None, None), Ok(SilenceWindow { hours: 24, min_clicks: 100 }));
        assert_eq!(SilenceWindow::parse(Some("720"), Some("1")), Ok(SilenceWindow { hours: 720, min_clicks: 1 }));
        for (hours, min_clicks, named) in [
            ("0", "1", "hours"),
            ("721", "1", "hours"),
            ("x", "1", "hours"),
            ("1", "0", "min_clicks"),
            ("1", "-3", "min_clicks"),
        ] {
            let e = SilenceWindow::parse(Some(hours), Some(min_clicks)).unwrap_err();
            assert!(e.starts_with(named), "{hours}, {min_clicks}: {e}");
        }
        let w = SilenceWindow { hours: 3, min_clicks: 1 };
        assert_eq!(w.hours_at(10 * 3_600_000 + 5), (8, 10));
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
