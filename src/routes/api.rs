//! The admin API: JSON under `/api`, behind `Authorization: Bearer <admin_token>`.

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::{error, failure, json, links_api, method_not_allowed, path_segment, secret_matches, text, Body};
use crate::clock::now_ms;
use crate::model::{Click, Conversion, Delivery, DeliveryStatus, Event, EventStatus, AD_CLICK_IDS};
use crate::reports::{self, rfc3339, Group, Period};
use crate::state::AppState;
use crate::store::ClickStore;
use crate::store::Requeue;
use crate::text::valid_percent_encoding;

/// Most events one `/api/events` call returns.
const MAX_EVENTS: usize = 1000;

/// Serves `/api/...`.
pub(crate) async fn api(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        let mut res = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        res.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    let raw_query = req.uri().query().unwrap_or_default();
    if !valid_percent_encoding(raw_query) {
        return error(StatusCode::BAD_REQUEST, "invalid percent-encoding in the query");
    }
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["links"], Method::GET) => links_api::list_links(state).await,
        (["links"], Method::POST) => match links_api::read_link_body(state, req).await {
            Ok(body) => links_api::create_link(state, body, None).await,
            Err(res) => res,
        },
        (["links"], _) => method_not_allowed("GET, POST"),
        (["links", network, slug], m) => {
            let (network, slug) = match (path_segment(network), path_segment(slug)) {
                (Ok(n), Ok(s)) => (n, s),
                (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
            };
            match m {
                Method::GET => links_api::get_link(state, &network, &slug).await,
                Method::PUT => match links_api::read_link_body(state, req).await {
                    Ok(body) => links_api::create_link(state, body, Some((network, slug))).await,
                    Err(res) => res,
                },
                Method::DELETE => links_api::delete_link(state, &network, &slug).await,
                _ => method_not_allowed("GET, PUT, DELETE"),
            }
        }
        (["stats"], Method::GET) => stats(state, &query).await,
        (["conversions"], Method::GET) => conversions(state, &query).await,
        (["clicks", id], Method::GET) => click(state, id).await,
        (["events"], Method::GET) => events(state, &query).await,
        (["deliveries"], Method::GET) => deliveries(state, &query).await,
        (["deliveries", id, "requeue"], Method::POST) => match path_segment(id) {
            Ok(id) => requeue(state, &id).await,
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        },
        (["deliveries", _, "requeue"], _) => method_not_allowed("POST"),
        (["stats"] | ["conversions"] | ["clicks", _] | ["events"] | ["deliveries"], _) => method_not_allowed("GET"),
        _ => error(StatusCode::NOT_FOUND, "no such API route"),
    }
}

fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or_default();
    secret_matches(given.trim().as_bytes(), state.config.security.admin_token.expose().as_bytes())
}

pub(super) fn store_error(e: crate::store::StoreError) -> Response<Body> {
    failure("an admin API call", &e)
}

// An early answer is the error arm here; boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn period(query: &HashMap<String, String>) -> Result<Period, Response<Body>> {
    Period::parse(
        query.get("from").map(String::as_str),
        query.get("to").map(String::as_str),
        query.get("tz").map(String::as_str),
    )
    .map_err(|e| error(StatusCode::BAD_REQUEST, &e))
}

#[derive(Serialize)]
struct Rows {
    rows: Vec<reports::Row>,
}

async fn stats(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
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

async fn conversions(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
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

fn to_csv(list: &[Conversion]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "conversion_id",
        "converted_at",
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

async fn click(state: &AppState, id: &str) -> Response<Body> {
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

#[derive(Serialize)]
struct EventView<'a> {
    received_at: String,
    network: &'a str,
    status: &'a str,
    reason: &'a str,
    click_id: Option<&'a str>,
    conversion_id: Option<&'a str>,
    query: &'a str,
    /// Where the conversion stands with each destination (empty when nothing forwards it).
    deliveries: Vec<DeliveryView<'a>>,
}

#[derive(Serialize)]
struct Events<'a> {
    events: Vec<EventView<'a>>,
}

/// One delivery as the API shows it: what was sent and what came back.
#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    destination: &'a str,
    event_id: &'a str,
    event: &'a str,
    click_id: &'a str,
    status: &'static str,
    attempts: u32,
    created_at: String,
    updated_at: String,
    /// When the next attempt is due, while pending.
    next_attempt_at: Option<String>,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
    /// This event's part of the last request built.
    request: Option<serde_json::Value>,
}

impl<'a> DeliveryView<'a> {
    fn new(d: &'a Delivery) -> DeliveryView<'a> {
        DeliveryView {
            id: &d.id,
            destination: &d.destination,
            event_id: d.subject.event_id(),
            event: d.subject.event_name(),
            click_id: &d.subject.click().id,
            status: d.status.as_str(),
            attempts: d.attempts,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_at)),
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
            request: d.request.as_deref().and_then(|r| serde_json::from_str(r).ok()),
        }
    }
}

#[derive(Serialize)]
struct Deliveries<'a> {
    deliveries: Vec<DeliveryView<'a>>,
}

async fn deliveries(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_EVENTS).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, &format!("limit must be a number from 1 to {MAX_EVENTS}")),
    };
    let status = match query.get("status").map(|s| (s, DeliveryStatus::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            let known: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
            return error(StatusCode::BAD_REQUEST, &format!("status={s:?}: use one of {}", known.join(", ")));
        }
    };
    let destination = query.get("destination").map(String::as_str);
    if let Some(name) = destination {
        if !state.config.forward.destinations.iter().any(|d| d.name == name) {
            return error(StatusCode::BAD_REQUEST, &format!("destination={name:?} is not a configured destination"));
        }
    }
    match state.store.outbox().deliveries(status, destination, limit).await {
        Ok(list) => json(StatusCode::OK, &Deliveries { deliveries: list.iter().map(DeliveryView::new).collect() }),
        Err(e) => store_error(e),
    }
}

async fn requeue(state: &AppState, id: &str) -> Response<Body> {
    match state.store.outbox().requeue_delivery(id, now_ms()).await {
        Ok(Requeue::Done(d)) => json(StatusCode::OK, &DeliveryView::new(&d)),
        Ok(Requeue::NotFound) => error(StatusCode::NOT_FOUND, "no such delivery"),
        Ok(Requeue::NotDeadLettered(s)) => error(
            StatusCode::CONFLICT,
            &format!("the delivery is {}; only failed or expired deliveries can be re-queued", s.as_str()),
        ),
        Err(e) => store_error(e),
    }
}

async fn events(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_EVENTS).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, &format!("limit must be a number from 1 to {MAX_EVENTS}")),
    };
    let status = match query.get("status").map(|s| (s, EventStatus::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((s, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("status={s:?}: use ok, duplicate, no_match, rejected or queued"),
            )
        }
    };
    let list = match state.store.events().events(status, limit).await {
        Ok(list) => list,
        Err(e) => return store_error(e),
    };
    let mut outcomes: Vec<Vec<Delivery>> = Vec::with_capacity(list.len());
    for e in &list {
        let found = match (&e.click_id, &e.conversion_id) {
            (Some(click), Some(conversion)) if !state.config.forward.destinations.is_empty() => {
                match state.store.outbox().deliveries_of(click, conversion).await {
                    Ok(found) => found,
                    Err(err) => return store_error(err),
                }
            }
            _ => Vec::new(),
        };
        outcomes.push(found);
    }
    let events = list.iter().zip(&outcomes).map(|(e, d)| event_view(e, d)).collect();
    json(StatusCode::OK, &Events { events })
}

fn event_view<'a>(e: &'a Event, deliveries: &'a [Delivery]) -> EventView<'a> {
    EventView {
        deliveries: deliveries.iter().map(DeliveryView::new).collect(),
        received_at: rfc3339(e.received_at),
        network: &e.network,
        status: e.status.as_str(),
        reason: &e.reason,
        click_id: e.click_id.as_deref(),
        conversion_id: e.conversion_id.as_deref(),
        query: &e.query,
    }
}
