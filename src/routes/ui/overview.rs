//! The overview: a date range, totals, the chart, and the same figures per link.
//!
//! Everything comes from one read of the hourly counters for the range (the same call
//! and the same aggregation as `/api/stats`), so the page costs the same at a thousand
//! clicks or a million.
//!
//! Above the figures, a warning lists the links people clicked all day with no
//! conversion coming back (`reports::silent_links`, as `/api/health/postbacks` serves it
//! with its defaults).

use std::cmp::Ordering;
use std::collections::HashMap;

use askama::Template;
use hyper::{Response, StatusCode};
use time::{Date, Duration, OffsetDateTime};

use super::chart::{self, Chart, Day};
use super::{query_string, render, store_down, Ctx, Layout};
use crate::clock::now_ms;
use crate::money::Money;
use crate::reports::{self, rfc3339, Group, Period, Row, SilenceWindow};
use crate::routes::Body;

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// Longest range the dashboard draws, in days.
const MAX_DAYS: i64 = 400;

/// The range picker's state, shared by the overview and the conversions page.
pub(crate) struct RangeForm {
    pub(crate) action: &'static str,
    pub(crate) range: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) tz: String,
    pub(crate) error: Option<String>,
    /// Label, address and whether it is the current choice.
    pub(crate) presets: Vec<(&'static str, String, bool)>,
}

impl RangeForm {
    /// The range as query-string text, for links that keep it.
    pub(crate) fn query(&self) -> String {
        if self.range == "custom" {
            query_string(&[("range", "custom"), ("from", &self.from), ("to", &self.to), ("tz", &self.tz)])
        } else {
            query_string(&[("range", &self.range), ("tz", &self.tz)])
        }
    }
}

fn format_date(d: Date) -> String {
    d.format(DATE).unwrap_or_default()
}

/// Reads `range` (`today`, `7d`, `30d`, `custom` with `from` and `to`) and `tz` from
/// the query; the period is `None` when they are wrong, and the form says why.
pub(crate) fn range(ctx: &Ctx<'_>, action: &'static str) -> (RangeForm, Option<Period>) {
    let tz = ctx.q("tz").unwrap_or_default().to_owned();
    let custom_dates = ctx.q("from").is_some() || ctx.q("to").is_some();
    let choice = ctx.q("range").unwrap_or(if custom_dates { "custom" } else { "7d" }).to_owned();
    let presets = [("Today", "today"), ("7 days", "7d"), ("30 days", "30d")]
        .into_iter()
        .map(|(label, r)| (label, format!("{action}?{}", query_string(&[("range", r), ("tz", &tz)])), choice == r))
        .collect();
    let mut form = RangeForm {
        action,
        range: choice.clone(),
        from: ctx.q("from").unwrap_or_default().to_owned(),
        to: ctx.q("to").unwrap_or_default().to_owned(),
        tz: tz.clone(),
        error: None,
        presets,
    };
    let period = match pick(&choice, ctx.q("from"), ctx.q("to"), &tz) {
        Ok(p) => p,
        Err(e) => {
            form.error = Some(e);
            return (form, None);
        }
    };
    form.from = format_date(period.from);
    form.to = format_date(period.to);
    (form, Some(period))
}

fn pick(choice: &str, from: Option<&str>, to: Option<&str>, tz: &str) -> Result<Period, String> {
    let tz = Some(tz).filter(|t| !t.is_empty());
    // The offset, checked the way the API checks it.
    let offset = Period::parse(Some("2000-01-01"), Some("2000-01-01"), tz)?.offset;
    let today = OffsetDateTime::now_utc().to_offset(offset).date();
    let back = |days: i64| Period { from: today - Duration::days(days), to: today, offset };
    let period = match choice {
        "today" => back(0),
        "7d" => back(6),
        "30d" => back(29),
        "custom" => Period::parse(from, to, tz)?,
        other => return Err(format!("range={other:?}: use today, 7d, 30d or custom")),
    };
    if (period.to - period.from).whole_days() >= MAX_DAYS {
        return Err(format!("the dashboard shows at most {MAX_DAYS} days at once; the API takes longer ranges"));
    }
    Ok(period)
}

/// One link's (or the total's) figures, with the ratios as text.
pub(crate) struct Figures {
    pub(crate) key: String,
    pub(crate) clicks: u64,
    pub(crate) bot_hits: u64,
    pub(crate) conversions: u64,
    pub(crate) revenue: Money,
}

impl Figures {
    fn of(row: &Row) -> Figures {
        Figures {
            key: row.key.clone(),
            clicks: row.clicks,
            bot_hits: row.bot_hits,
            conversions: row.conversions,
            // The report's text is exact decimal; reading it back loses nothing.
            revenue: Money::parse(&row.revenue).unwrap_or(Money::ZERO),
        }
    }

    /// Conversions per click, in percent with two decimals (rounded half up).
    pub(crate) fn conversion_rate(&self) -> String {
        if self.clicks == 0 {
            return "—".into();
        }
        let hundredths = (self.conversions as u128 * 20_000 / self.clicks as u128).div_ceil(2);
        format!("{}.{:02}%", hundredths / 100, hundredths % 100)
    }

    /// Revenue per click, exact to the micro-unit (rounded half up).
    pub(crate) fn epc(&self) -> String {
        if self.clicks == 0 {
            return "—".into();
        }
        let clicks = self.clicks as i128;
        let micros = (self.revenue.micros() as i128 * 2 + clicks) / (2 * clicks);
        Money::from_micros(micros as i64).to_string()
    }

    pub(crate) fn clicks_text(&self) -> String {
        grouped(&self.clicks.to_string())
    }

    pub(crate) fn bot_hits_text(&self) -> String {
        grouped(&self.bot_hits.to_string())
    }

    pub(crate) fn conversions_text(&self) -> String {
        grouped(&self.conversions.to_string())
    }

    pub(crate) fn revenue_text(&self) -> String {
        grouped(&self.revenue.to_string())
    }

    fn add(&mut self, other: &Figures) {
        self.clicks += other.clicks;
        self.bot_hits += other.bot_hits;
        self.conversions += other.conversions;
        self.revenue = self.revenue.saturating_add(other.revenue);
    }
}

/// A decimal number's whole part in groups of three digits: `12,345.50`.
pub(crate) fn grouped(number: &str) -> String {
    let (whole, rest) = number.split_once('.').map_or((number, None), |(w, f)| (w, Some(f)));
    let mut out = String::with_capacity(number.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(rest) = rest {
        out.push('.');
        out.push_str(rest);
    }
    out
}

/// Columns the per-link table sorts by.
const COLUMNS: [(&str, &str); 7] = [
    ("link", "Link"),
    ("clicks", "Clicks"),
    ("bot_hits", "Bot hits"),
    ("conversions", "Conversions"),
    ("revenue", "Revenue"),
    ("cr", "Conv. rate"),
    ("epc", "EPC"),
];

/// `a/b` against `c/d`, exactly; no clicks sorts below any rate.
fn ratio(a: i128, b: u64, c: i128, d: u64) -> Ordering {
    match (b, d) {
        (0, 0) => Ordering::Equal,
        (0, _) => Ordering::Less,
        (_, 0) => Ordering::Greater,
        _ => (a * d as i128).cmp(&(c * b as i128)),
    }
}

fn compare(column: &str, a: &Figures, b: &Figures) -> Ordering {
    match column {
        "link" => a.key.cmp(&b.key),
        "bot_hits" => a.bot_hits.cmp(&b.bot_hits),
        "conversions" => a.conversions.cmp(&b.conversions),
        "revenue" => a.revenue.cmp(&b.revenue),
        "cr" => ratio(a.conversions as i128, a.clicks, b.conversions as i128, b.clicks),
        "epc" => ratio(a.revenue.micros() as i128, a.clicks, b.revenue.micros() as i128, b.clicks),
        _ => a.clicks.cmp(&b.clicks),
    }
}

pub(crate) struct Head {
    pub(crate) label: &'static str,
    pub(crate) href: String,
    /// `ascending`, `descending` or empty: for `aria-sort` and the arrow.
    pub(crate) sort: &'static str,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    page: Layout,
    range: RangeForm,
    totals: Option<Figures>,
    chart: Option<Chart>,
    heads: Vec<Head>,
    rows: Vec<Figures>,
    silence: Option<Silence>,
}

/// The silent links of the default window, as the warning shows them.
pub(crate) struct Silence {
    pub(crate) hours: u32,
    pub(crate) min_clicks: u64,
    pub(crate) links: Vec<SilentRow>,
}

pub(crate) struct SilentRow {
    pub(crate) link: String,
    pub(crate) clicks: String,
    /// RFC 3339, or what to say when none was seen in the look-back.
    pub(crate) last_postback: String,
}

/// `/ui/?range=…&tz=…&sort=…&dir=…`
pub(crate) async fn overview(ctx: &Ctx<'_>) -> Response<Body> {
    let (range, period) = range(ctx, "/ui/");
    let Some(period) = period else {
        let page = OverviewPage {
            page: ctx.layout("Overview", "overview"),
            range,
            totals: None,
            chart: None,
            heads: Vec::new(),
            rows: Vec::new(),
            silence: None,
        };
        return render(StatusCode::BAD_REQUEST, &page);
    };
    let (first, last) = period.hours();
    let hours = match ctx.state.store.conversions().counters(first, last).await {
        Ok(h) => h,
        Err(e) => return store_down(ctx, e),
    };
    let window = SilenceWindow::default();
    let silent = match reports::silent_links(ctx.state.store.conversions(), window, now_ms()).await {
        Ok(s) => s,
        Err(e) => return store_down(ctx, e),
    };
    let (mut page, status) = build(ctx, range, &period, &hours);
    page.silence = (!silent.is_empty()).then(|| Silence {
        hours: window.hours,
        min_clicks: window.min_clicks,
        links: silent
            .into_iter()
            .map(|s| SilentRow {
                link: s.link,
                clicks: grouped(&s.clicks.to_string()),
                last_postback: s
                    .last_postback_at
                    .map_or_else(|| format!("none in the {} days before", reports::LOOKBACK_HOURS / 24), rfc3339),
            })
            .collect(),
    });
    render(status, &page)
}

fn build(
    ctx: &Ctx<'_>,
    range: RangeForm,
    period: &Period,
    hours: &[crate::model::HourCounters],
) -> (OverviewPage, StatusCode) {
    let mut rows: Vec<Figures> = reports::aggregate(period, Group::Link, hours).iter().map(Figures::of).collect();
    let by_day: HashMap<String, Figures> =
        reports::aggregate(period, Group::Day, hours).iter().map(|r| (r.key.clone(), Figures::of(r))).collect();
    let mut totals = Figures { key: "Total".into(), clicks: 0, bot_hits: 0, conversions: 0, revenue: Money::ZERO };
    for r in &rows {
        totals.add(r);
    }
    let mut days = Vec::new();
    let mut day = period.from;
    loop {
        let date = format_date(day);
        let f = by_day.get(&date);
        days.push(Day { clicks: f.map_or(0, |f| f.clicks), conversions: f.map_or(0, |f| f.conversions), date });
        match day.next_day() {
            Some(next) if next <= period.to => day = next,
            _ => break,
        }
    }

    let mut status = StatusCode::OK;
    let mut problem = None;
    let mut column = ctx.q("sort").unwrap_or("clicks");
    if !COLUMNS.iter().any(|(c, _)| *c == column) {
        problem = Some(format!("sort={column:?}: use one of link, clicks, bot_hits, conversions, revenue, cr, epc"));
        status = StatusCode::BAD_REQUEST;
        column = "clicks";
    }
    let ascending = ctx.q("dir") == Some("asc");
    rows.sort_by(|a, b| {
        let o = compare(column, a, b).then_with(|| a.key.cmp(&b.key));
        if ascending {
            o
        } else {
            o.reverse()
        }
    });
    let base = range.query();
    let heads = COLUMNS
        .iter()
        .map(|(c, label)| {
            let current = *c == column;
            let dir = if current && !ascending { "asc" } else { "desc" };
            let sort = match (current, ascending) {
                (false, _) => "",
                (true, true) => "ascending",
                (true, false) => "descending",
            };
            Head { label, href: format!("/ui/?{base}&{}", query_string(&[("sort", c), ("dir", dir)])), sort }
        })
        .collect();
    let mut page = ctx.layout("Overview", "overview");
    page.problem = problem;
    let chart = Some(chart::draw(&days));
    (OverviewPage { page, range, totals: Some(totals), chart, heads, rows, silence: None }, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(clicks: u64, conversions: u64, revenue: i64) -> Figures {
        Figures { key: "k".into(), clicks, bot_hits: 0, conversions, revenue: Money::from_micros(revenue) }
    }

    #[test]
    fn rates_are_exact() {
        assert_eq!(f(3, 1, 10_000_000).conversion_rate(), "33.33%");
        assert_eq!(f(3, 2, 10_000_000).conversion_rate(), "66.67%");
        assert_eq!(f(3, 1, 10_000_000).epc(), "3.333333");
        assert_eq!(f(2, 1, 5_000_000).epc(), "2.50");
        assert_eq!(f(0, 0, 0).epc(), "—");
        assert_eq!(f(0, 0, 0).conversion_rate(), "—");
        // 0.1 + 0.2 per click stays 0.15, never 0.15000000000000002.
        assert_eq!(f(2, 2, 300_000).epc(), "0.15");
        assert_eq!(f(1_234_567, 0, 1_234_567_890_000).clicks_text(), "1,234,567");
        assert_eq!(f(0, 0, 1_234_567_890_000).revenue_text(), "1,234,567.89");
        assert_eq!(grouped("123"), "123");
        assert_eq!(grouped("1234.5"), "1,234.5");
    }

    #[test]
    fn ratios_sort_exactly() {
        assert_eq!(compare("cr", &f(3, 1, 0), &f(300, 100, 0)), Ordering::Equal);
        assert_eq!(compare("epc", &f(3, 1, 1), &f(0, 0, 0)), Ordering::Greater);
        assert_eq!(compare("epc", &f(3, 1, 2), &f(2, 1, 1)), Ordering::Greater);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(pick("7d", None, None, "").is_ok());
        assert!(pick("7d", None, None, "+05:30").unwrap_err().contains("whole-hour"));
        assert!(pick("year", None, None, "").unwrap_err().contains("range="));
        assert!(pick("custom", Some("2026-01-01"), None, "").unwrap_err().contains("to is required"));
        let p = pick("custom", Some("2026-01-01"), Some("2026-01-03"), "-05:00").unwrap();
        assert_eq!((p.to - p.from).whole_days(), 2);
        assert!(pick("custom", Some("2020-01-01"), Some("2026-01-03"), "").unwrap_err().contains("at most"));
        let p = pick("30d", None, None, "").unwrap();
        assert_eq!((p.to - p.from).whole_days(), 29);
    }
}
