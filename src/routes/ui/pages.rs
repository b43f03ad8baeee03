//! Sign-in and sign-out, and the list pages: events, a click, conversions, deliveries
//! and setup.

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::overview::{self, RangeForm};
use super::{page_error, read_form, redirect, render, store_down, Ctx, Layout};
use crate::clock::now_ms;
use crate::model::DeliveryStatus;
use crate::model::EventStatus;
use crate::model::Subject;
use crate::reports::rfc3339;
use crate::routes::api::{requeue_refused, to_csv};
use crate::routes::{error, secret_matches, Body};
use crate::sessions::{COOKIE, MAX_FAILURES};
use crate::state::AppState;
use crate::store::ClickStore;
use crate::store::Requeue;

/// Rows a list page shows at most.
const LIST_LIMIT: usize = 200;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Layout,
    error: Option<String>,
}

fn login_page(status: StatusCode, error: Option<String>) -> Response<Body> {
    let page = Layout { title: "Sign in".into(), nav: "login", csrf: String::new(), notice: None, problem: None };
    render(status, &LoginPage { page, error })
}

/// `/ui/login`: the form, and checking the admin token it posts.
pub(crate) async fn login(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return login_page(StatusCode::OK, None);
    }
    if req.method() != Method::POST {
        return crate::routes::method_not_allowed("GET, POST");
    }
    let forwarded = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let ip = crate::access::postback_source(peer.ip(), forwarded, &state.config.server.trusted_proxies);
    if state.sessions.locked_out(ip) {
        let text = format!("More than {MAX_FAILURES} failed sign-ins from your address in a minute. Wait a minute.");
        let mut res = login_page(StatusCode::TOO_MANY_REQUESTS, Some(text));
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return res;
    }
    let form = match read_form(state, req).await {
        Ok(form) => form,
        Err(res) => return res,
    };
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() || !secret_matches(token.as_bytes(), state.config.security.admin_token.expose().as_bytes()) {
        state.sessions.failed(ip);
        tracing::warn!(%ip, "dashboard sign-in with a wrong token");
        return login_page(StatusCode::UNAUTHORIZED, Some("That is not the admin token.".into()));
    }
    let value = state.sessions.start();
    let mut res = redirect(StatusCode::SEE_OTHER, "/ui/");
    set_cookie(state, &mut res, &value, state.sessions.lifetime().as_secs());
    res
}

fn set_cookie(state: &AppState, res: &mut Response<Body>, value: &str, max_age: u64) {
    let secure = if state.config.server.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `POST /ui/logout`: ends the session here and clears the cookie.
pub(crate) fn logout(ctx: &Ctx<'_>) -> Response<Body> {
    ctx.state.sessions.end(&ctx.session);
    let mut res = redirect(StatusCode::SEE_OTHER, "/ui/login");
    set_cookie(ctx.state, &mut res, "", 0);
    res
}

/// `GET /ui/logout`: the same, for a typed address (a cross-site link carries no cookie:
/// it is `SameSite=Strict`).
pub(crate) fn logout_page(ctx: &Ctx<'_>) -> Response<Body> {
    logout(ctx)
}

/// Time in UTC, to the second.
pub(crate) fn when(ms: i64) -> String {
    let text = rfc3339(ms);
    match text.get(..19) {
        Some(head) => format!("{} {} UTC", &head[..10], &head[11..]),
        None => text,
    }
}

/// A value for a URL path segment.
pub(crate) fn path_enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

struct EventRow {
    at: String,
    network: String,
    status: &'static str,
    reason: String,
    fields: Vec<(String, String)>,
    click: Option<(String, String)>,
    conversion_id: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    page: Layout,
    statuses: Vec<(&'static str, String, bool)>,
    rows: Vec<EventRow>,
}

/// `/ui/events?status=…`: the postback event log, newest first.
pub(crate) async fn events(ctx: &Ctx<'_>) -> Response<Body> {
    let status = match ctx.q("status").map(|s| (s, EventStatus::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((s, None)) => {
            let names: Vec<&str> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
            let text = format!("status={s:?}: use one of {}.", names.join(", "));
            return page_error(ctx, StatusCode::BAD_REQUEST, &text);
        }
    };
    let list = match ctx.state.store.events().events(status, LIST_LIMIT).await {
        Ok(list) => list,
        Err(e) => return store_down(ctx, e),
    };
    let rows = list
        .into_iter()
        .map(|e| EventRow {
            at: when(e.received_at),
            fields: form_urlencoded::parse(e.query.as_bytes()).into_owned().collect(),
            click: e.click_id.map(|id| (format!("/ui/clicks/{}", path_enc(&id)), id)),
            conversion_id: e.conversion_id.unwrap_or_default(),
            network: e.network,
            status: e.status.as_str(),
            reason: e.reason,
        })
        .collect();
    let mut statuses = vec![("all", "/ui/events".to_owned(), status.is_none())];
    statuses
        .extend(EventStatus::ALL.iter().map(|s| (s.as_str(), format!("/ui/events?status={s}"), status == Some(*s))));
    render(StatusCode::OK, &EventsPage { page: ctx.layout("Events", "events"), statuses, rows })
}

#[derive(Template)]
#[template(path = "click.html")]
struct ClickPage {
    page: Layout,
    id: String,
    rows: Vec<(&'static str, String)>,
    lists: Vec<(&'static str, Vec<(String, String)>)>,
}

/// `/ui/clicks/{id}`: one stored click.
pub(crate) async fn click(ctx: &Ctx<'_>, raw: &str) -> Response<Body> {
    let Ok(text) = crate::routes::path_segment(raw) else {
        return page_error(ctx, StatusCode::BAD_REQUEST, "That is not a click id.");
    };
    let now = (now_ms() / 1000) as u64;
    let id = match ctx.state.keyring.verify(&text, now) {
        Ok(id) => id,
        Err(e) => return page_error(ctx, StatusCode::NOT_FOUND, &format!("No such click ({}).", e.reason())),
    };
    let c = match ctx.state.store.clicks().find_click(id.as_str()).await {
        Ok(Some(c)) => c,
        Ok(None) => return page_error(ctx, StatusCode::NOT_FOUND, "No such click (unknown_click_id)."),
        Err(e) => return store_down(ctx, e),
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let rows = vec![
        ("Link", c.link.clone()),
        ("Clicked", when(c.at)),
        ("Bot", opt(c.bot.clone())),
        ("IP address", opt(c.ip.clone())),
        ("User agent", opt(c.user_agent.clone())),
        ("Referer", opt(c.referer.clone())),
    ];
    let lists = vec![("Sub-ids", c.subids), ("UTM", c.utm), ("Ad click ids", c.ad_click_ids)];
    render(StatusCode::OK, &ClickPage { page: ctx.layout("Click", "events"), id: c.id, rows, lists })
}

struct ConversionRow {
    at: String,
    link: String,
    event: String,
    value: String,
    /// `ok` or `reversed`.
    status: &'static str,
    /// When the network reversed it, or empty.
    reversed_at: String,
    transaction_id: String,
    click: (String, String),
    clicked_at: String,
    utm_source: String,
    utm_campaign: String,
    bot: String,
}

#[derive(Template)]
#[template(path = "conversions.html")]
struct ConversionsPage {
    page: Layout,
    range: RangeForm,
    rows: Vec<ConversionRow>,
    total: usize,
    /// How many of `total` the network reversed.
    reversed: usize,
    csv: String,
}

fn pair<'a>(list: &'a [(String, String)], key: &str) -> &'a str {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_default()
}

/// `/ui/conversions`: the reconciliation list, newest first, with its CSV.
pub(crate) async fn conversions(ctx: &Ctx<'_>) -> Response<Body> {
    let (range, period) = overview::range(ctx, "/ui/conversions");
    let Some(period) = period else {
        let page = ConversionsPage {
            page: ctx.layout("Conversions", "conversions"),
            range,
            rows: Vec::new(),
            total: 0,
            reversed: 0,
            csv: String::new(),
        };
        return render(StatusCode::BAD_REQUEST, &page);
    };
    let (from, to) = period.millis();
    let mut list = match ctx.state.store.conversions().conversions(from, to).await {
        Ok(l) => l,
        Err(e) => return store_down(ctx, e),
    };
    list.sort_by_key(|c| std::cmp::Reverse(c.at));
    let total = list.len();
    let reversed = list.iter().filter(|c| c.reversed_at.is_some()).count();
    let rows = list
        .iter()
        .take(LIST_LIMIT)
        .map(|c| ConversionRow {
            at: when(c.at),
            link: c.click.link.clone(),
            event: c.event.clone(),
            value: format!("{} {}", c.value, c.currency),
            status: c.status(),
            reversed_at: c.reversed_at.map(when).unwrap_or_default(),
            transaction_id: c.transaction_id.clone().unwrap_or_default(),
            click: (format!("/ui/clicks/{}", path_enc(&c.click.id)), c.click.id.clone()),
            clicked_at: when(c.click.at),
            utm_source: pair(&c.click.utm, "source").to_owned(),
            utm_campaign: pair(&c.click.utm, "campaign").to_owned(),
            bot: c.click.bot.clone().unwrap_or_default(),
        })
        .collect();
    let csv = format!("/ui/conversions.csv?{}", range.query());
    let page = ConversionsPage { page: ctx.layout("Conversions", "conversions"), range, rows, total, reversed, csv };
    render(StatusCode::OK, &page)
}

/// `/ui/conversions.csv`: the same file as `/api/conversions?format=csv`.
pub(crate) async fn conversions_csv(ctx: &Ctx<'_>) -> Response<Body> {
    let (range, period) = overview::range(ctx, "/ui/conversions");
    let Some(period) = period else {
        return page_error(ctx, StatusCode::BAD_REQUEST, range.error.as_deref().unwrap_or("bad range"));
    };
    let (from, to) = period.millis();
    let list = match ctx.state.store.conversions().conversions(from, to).await {
        Ok(l) => l,
        Err(e) => return store_down(ctx, e),
    };
    match to_csv(&list) {
        Ok(body) => {
            let mut res = crate::routes::text(StatusCode::OK, body);
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
            res.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"conversions.csv\""),
            );
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "CSV export failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "CSV export failed")
        }
    }
}

struct DeliveryRow {
    id: String,
    requeue: Option<String>,
    destination: String,
    event: String,
    /// `conversion`, `click` or `reversal`, as the deliveries API says.
    kind: &'static str,
    /// For a reversal, when the network reversed the conversion.
    reversed_at: String,
    click: (String, String),
    status: &'static str,
    attempts: u32,
    updated_at: String,
    next_at: String,
    last_status: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
struct DeliveriesPage {
    page: Layout,
    statuses: Vec<(&'static str, String, bool)>,
    destinations: Vec<(String, bool)>,
    status: String,
    configured: bool,
    rows: Vec<DeliveryRow>,
}

/// `/ui/deliveries?status=…&destination=…`: forwarding outcomes, newest first.
pub(crate) async fn deliveries(ctx: &Ctx<'_>) -> Response<Body> {
    let status = match ctx.q("status") {
        None => None,
        Some(s) => match DeliveryStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                return page_error(ctx, StatusCode::BAD_REQUEST, &format!("status={s:?} is not a delivery status."))
            }
        },
    };
    let configured = &ctx.state.config.forward.destinations;
    let destination = ctx.q("destination");
    if let Some(name) = destination {
        if !configured.iter().any(|d| d.name == name) {
            let text = format!("destination={name:?} is not a configured destination.");
            return page_error(ctx, StatusCode::BAD_REQUEST, &text);
        }
    }
    let list = match ctx.state.store.outbox().deliveries(status, destination, LIST_LIMIT).await {
        Ok(l) => l,
        Err(e) => return store_down(ctx, e),
    };
    let rows = list
        .iter()
        .map(|d| DeliveryRow {
            id: d.id.clone(),
            requeue: d.status.can_requeue().then(|| format!("/ui/deliveries/{}/requeue", path_enc(&d.id))),
            destination: d.destination.clone(),
            event: d.subject.event_name().to_owned(),
            kind: match d.subject {
                Subject::Conversion(_) => "conversion",
                Subject::Click(_) => "click",
                Subject::Reversal(..) => "reversal",
            },
            reversed_at: match &d.subject {
                Subject::Reversal(_, at) => when(*at),
                _ => String::new(),
            },
            click: {
                let id = &d.subject.click().id;
                (format!("/ui/clicks/{}", path_enc(id)), id.clone())
            },
            status: d.status.as_str(),
            attempts: d.attempts,
            updated_at: when(d.updated_at),
            next_at: if d.status == DeliveryStatus::Pending { when(d.next_at) } else { String::new() },
            last_status: d.last_status.map(|s| s.to_string()).unwrap_or_default(),
            last_error: d.last_error.clone().unwrap_or_default(),
        })
        .collect();
    let current = status.map(DeliveryStatus::as_str);
    let mut statuses = vec![("all", "/ui/deliveries".to_owned(), current.is_none())];
    statuses.extend(
        DeliveryStatus::ALL
            .iter()
            .map(|s| (s.as_str(), format!("/ui/deliveries?status={}", s.as_str()), current == Some(s.as_str()))),
    );
    let destinations = configured.iter().map(|d| (d.name.clone(), destination == Some(d.name.as_str()))).collect();
    let page = DeliveriesPage {
        page: ctx.layout("Deliveries", "deliveries"),
        statuses,
        destinations,
        status: current.unwrap_or_default().to_owned(),
        configured: !configured.is_empty(),
        rows,
    };
    render(StatusCode::OK, &page)
}

/// `POST /ui/deliveries/{id}/requeue`.
pub(crate) async fn requeue(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    match ctx.state.store.outbox().requeue_delivery(id, now_ms()).await {
        Ok(Requeue::Done(_)) => redirect(StatusCode::SEE_OTHER, "/ui/deliveries?requeued=1"),
        Ok(Requeue::NotFound) => page_error(ctx, StatusCode::NOT_FOUND, "No such delivery."),
        Ok(Requeue::NotDeadLettered(s)) => page_error(ctx, StatusCode::CONFLICT, &requeue_refused(s)),
        Err(e) => store_down(ctx, e),
    }
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    page: Layout,
    /// Network, URL, and the element id of its field.
    postback_urls: Vec<(String, String, String)>,
    readiness: Vec<(&'static str, String)>,
    ready: bool,
    facts: Vec<(&'static str, String)>,
}

/// `/ui/setup`: the postback URLs, the store's and spool's state, the version.
pub(crate) async fn setup(ctx: &Ctx<'_>) -> Response<Body> {
    let config = &ctx.state.config;
    let key = config.security.postback_key.expose();
    let postback_urls = config
        .networks
        .values()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), n.postback_url(&config.server.public_url, key), format!("postback-{i}")))
        .collect();
    let (http, r) = crate::routes::ops::readiness(ctx.state).await;
    let readiness = vec![
        ("Status", r.status.to_owned()),
        ("Store", format!("{} ({})", r.store, if r.store_up { "up" } else { "down" })),
        ("Outage spool", if r.spool.active { "in use".into() } else { "idle".into() }),
        (
            "Spool size",
            format!("{} of {}, {} records", bytes(r.spool.bytes), bytes(r.spool.max_bytes), r.spool.records),
        ),
        ("Replayed since start", r.spool.replayed.to_string()),
    ];
    let facts = vec![
        ("Version", env!("CARGO_PKG_VERSION").to_owned()),
        ("Public URL", config.server.public_url.clone()),
        ("Destinations", config.forward.destinations.len().to_string()),
        ("Sign-in lasts", format!("{} hours", config.dashboard.session.as_secs() / 3600)),
    ];
    let ready = http == StatusCode::OK && r.store_up;
    let page = SetupPage { page: ctx.layout("Setup", "setup"), postback_urls, readiness, ready, facts };
    render(StatusCode::OK, &page)
}

/// A size for people: `512 B`, `3.2 MiB`, `4.0 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A notice for a page from its `?created=`-style query, after a form was handled.
pub(crate) fn notice(query: &HashMap<String, String>) -> Option<String> {
    if let Some(k) = query.get("created") {
        return Some(format!("Created {k}."));
    }
    if let Some(k) = query.get("saved") {
        return Some(format!("Saved {k}."));
    }
    if let Some(k) = query.get("deleted") {
        return Some(format!("Deleted {k}."));
    }
    query.contains_key("requeued").then(|| "Re-queued: the delivery will be sent again shortly.".to_owned())
}
