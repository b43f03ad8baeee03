//! `/api/stats`, `/api/conversions` (JSON or CSV) and `/api/clicks/{id}`: what the owner
//! reads back.

use std::collections::HashMap;

use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{period, store_error};
use crate::clock::now_ms;
use crate::model::{Click, Conversion, AD_CLICK_IDS};
use crate::reports::{self, rfc3339, Group};
use crate::routes::{error, failure, json, text, Body};
use crate::state::AppState;
use crate::store::ClickStore;

#[derive(Serialize)]
struct Rows {
    rows: Vec<reports::Row>,
}

pub(super) async fn stats(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let period = match period(query) {
        Ok(p) => p,
        Err(res) => return res,
    };
    let group = match query.get("group").map(String::as_str) {
        None | Some("link") => Group::Link,
        Some("day") => Group::Day,
        Some("offer") => Group::Offer,
        Some(other) => return error(StatusCode::BAD_REQUEST, &format!("group={other:?}: use link, day or offer")),
    };
    let (from, to) = period.hours();
    match state.store.conversions().counters(from, to).await {
        Ok(hours) => json(StatusCode::OK, &Rows { rows: reports::aggregate(&period, group, &hours) }),
        Err(e) => store_error(e),
    }
}

/// One conversion as an affiliate reconciles it against the network.
#[derive(Serialize)]
struct ConversionRow<'a> {
    conversion_id: &'a str,
    converted_at: String,
    /// `ok`, or `reversed` once the network reversed it (it then counts in no figure).
    status: &'static str,
    reversed_at: Option<String>,
    network: &'a str,
    event: &'a str,
    value: String,
    currency: &'a str,
    transaction_id: Option<&'a str>,
    item_id: Option<&'a str>,
    click_id: &'a str,
    link: &'a str,
    /// The link's offer the click went to, for links with offers.
    offer: Option<&'a str>,
    clicked_at: String,
    bot: Option<&'a str>,
    subids: HashMap<&'a str, &'a str>,
    utm: HashMap<&'a str, &'a str>,
    ad_click_ids: HashMap<&'a str, &'a str>,
}

fn pairs(list: &[(String, String)]) -> HashMap<&str, &str> {
    list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl<'a> ConversionRow<'a> {
    fn new(c: &'a Conversion) -> ConversionRow<'a> {
        ConversionRow {
            conversion_id: &c.id,
            converted_at: rfc3339(c.at),
            status: c.status(),
            reversed_at: c.reversed_at.map(rfc3339),
            network: &c.network,
            event: &c.event,
            value: c.value.to_string(),
            currency: &c.currency,
            transaction_id: c.transaction_id.as_deref(),
            item_id: c.item_id.as_deref(),
            click_id: &c.click.id,
            link: &c.click.link,
            offer: c.click.offer.as_deref(),
            clicked_at: rfc3339(c.click.at),
            bot: c.click.bot.as_deref(),
            subids: pairs(&c.click.subids),
            utm: pairs(&c.click.utm),
            ad_click_ids: pairs(&c.click.ad_click_ids),
        }
    }
}

#[derive(Serialize)]
struct Conversions<'a> {
    conversions: Vec<ConversionRow<'a>>,
}

/// CSV columns; sub-ids, UTM and ad click ids get one column each.
const CSV_SUBIDS: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];
const CSV_UTM: [&str; 5] = ["source", "medium", "campaign", "term", "content"];

pub(super) async fn conversions(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let period = match period(query) {
        Ok(p) => p,
        Err(res) => return res,
    };
    let (from, to) = period.millis();
    let list = match state.store.conversions().conversions(from, to).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    match query.get("format").map(String::as_str) {
        None | Some("json") => {
            json(StatusCode::OK, &Conversions { conversions: list.iter().map(ConversionRow::new).collect() })
        }
        Some("csv") => match to_csv(&list) {
            Ok(body) => {
                let mut res = text(StatusCode::OK, body);
                res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
                res.headers_mut()
                    .insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"conversions.csv\""));
                res
            }
            Err(e) => failure("exporting conversions as CSV", &e),
        },
        Some(other) => error(StatusCode::BAD_REQUEST, &format!("format={other:?}: use json or csv")),
    }
}

/// The conversions CSV, as `/api/conversions?format=csv` and the dashboard serve it.
pub(crate) fn to_csv(list: &[Conversion]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "conversion_id",
        "converted_at",
        "status",
        "reversed_at",
        "network",
        "event",
        "value",
        "currency",
        "transaction_id",
        "item_id",
        "click_id",
        "link",
        "offer",
        "clicked_at",
        "bot",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    header.extend(CSV_SUBIDS.iter().map(|s| s.to_string()));
    header.extend(CSV_UTM.iter().map(|s| format!("utm_{s}")));
    header.extend(AD_CLICK_IDS.iter().map(|s| s.to_string()));
    w.write_record(&header)?;
    let get = |list: &[(String, String)], key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    for c in list {
        let mut row = vec![
            c.id.clone(),
            rfc3339(c.at),
            c.status().to_owned(),
            c.reversed_at.map(rfc3339).unwrap_or_default(),
            c.network.clone(),
            c.event.clone(),
            c.value.to_string(),
            c.currency.clone(),
            c.transaction_id.clone().unwrap_or_default(),
            c.item_id.clone().unwrap_or_default(),
            c.click.id.clone(),
            c.click.link.clone(),
            c.click.offer.clone().unwrap_or_default(),
            rfc3339(c.click.at),
            c.click.bot.clone().unwrap_or_default(),
        ];
        row.extend(CSV_SUBIDS.iter().map(|k| if *k == "s2" { c.click.id.clone() } else { get(&c.click.subids, k) }));
        row.extend(CSV_UTM.iter().map(|k| get(&c.click.utm, k)));
        row.extend(AD_CLICK_IDS.iter().map(|k| get(&c.click.ad_click_ids, k)));
        w.write_record(&row)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// A stored click as the API shows it.
#[derive(Serialize)]
struct ClickView<'a> {
    click_id: &'a str,
    link: &'a str,
    /// The link's offer the visitor was sent to, and the rule that chose it.
    offer: Option<&'a str>,
    rule: Option<u32>,
    /// Why the visitor went to the fallback (`paused`, `capped`), if they did.
    fallback: Option<&'a str>,
    clicked_at: String,
    bot: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    subids: HashMap<&'a str, &'a str>,
    utm: HashMap<&'a str, &'a str>,
    ad_click_ids: HashMap<&'a str, &'a str>,
}

impl<'a> ClickView<'a> {
    fn new(c: &'a Click) -> ClickView<'a> {
        ClickView {
            click_id: &c.id,
            link: &c.link,
            offer: c.offer.as_deref(),
            rule: c.rule,
            fallback: c.fallback.as_deref(),
            clicked_at: rfc3339(c.at),
            bot: c.bot.as_deref(),
            ip: c.ip.as_deref(),
            user_agent: c.user_agent.as_deref(),
            referer: c.referer.as_deref(),
            subids: pairs(&c.subids),
            utm: pairs(&c.utm),
            ad_click_ids: pairs(&c.ad_click_ids),
        }
    }
}

pub(super) async fn click(state: &AppState, id: &str) -> Response<Body> {
    let now = (now_ms() / 1000) as u64;
    let id = match state.keyring.verify(id, now) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::NOT_FOUND, e.reason()),
    };
    match state.store.clicks().find_click(id.as_str()).await {
        Ok(Some(c)) => json(StatusCode::OK, &ClickView::new(&c)),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown_click_id"),
        Err(e) => store_error(e),
    }
}
