//! `GET`/`HEAD /go/{network}/{slug}`: the hot path.
//!
//! Reads top to bottom: find the link (in process, no store read), classify the request,
//! mint a click id, pick the offer (links with several, see `offer`), read the query,
//! record the click, answer. The click is
//! acknowledged by the store before the redirect leaves, so a `302` the visitor received
//! is a click that survives a crash.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, LOCATION, REFERER, SET_COOKIE, USER_AGENT};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use smallvec::SmallVec;

use super::{error, failure, method_not_allowed, offer, path_segment, text, Body};
use crate::bots::{self, RequestTraits};
use crate::clock::now_ms;
use crate::model::{ClickIp, ClickView, LinkStatus, Pair, Pairs, AD_CLICK_IDS};
use crate::state::AppState;
use crate::store::ClickOrigin;
use crate::telemetry;
use crate::text::clip;

/// Headers a browser sets on a prefetch, built at compile time.
static PURPOSE_HEADERS: [HeaderName; 3] =
    [HeaderName::from_static("sec-purpose"), HeaderName::from_static("purpose"), HeaderName::from_static("x-purpose")];

/// Longest header value kept in a click (user agent, referer), in bytes.
const MAX_KEPT_HEADER: usize = 1024;

/// Redirects a visitor to the link's offer and records the click. Only the request's
/// head is read: a redirect has no body to wait for.
pub(crate) async fn redirect(
    state: &AppState,
    req: &Parts,
    network: &str,
    slug: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let is_head = req.method == Method::HEAD;
    if !is_head && req.method != Method::GET {
        return method_not_allowed("GET, HEAD");
    }
    let (network_name, slug) = match (path_segment(network), path_segment(slug)) {
        (Ok(n), Ok(s)) => (n, s),
        (Err(e), _) | (_, Err(e)) => {
            metrics::counter!(telemetry::REDIRECTS, "outcome" => "bad_request").increment(1);
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };

    // 1. The link, from memory.
    let Some(network) = state.links.network(&network_name) else {
        return not_found(&format!("unknown network {network_name:?}"));
    };
    let link = match state.links.find(&network_name, &slug).await {
        Ok(Some(link)) => link,
        Ok(None) => return not_found("unknown link"),
        Err(e) => return failure("loading a link", &e),
    };
    if link.link.status == LinkStatus::Paused {
        metrics::counter!(telemetry::REDIRECTS, "outcome" => "paused").increment(1);
        return match &link.link.fallback {
            Some(fallback) => redirect_to(StatusCode::FOUND, fallback.clone()),
            None => not_found("link paused"),
        };
    }

    // 2. Person, bot or prefetch.
    let read = ReadHeaders::of(&req.headers);
    let user_agent = read.user_agent;
    let bot = bots::classify(RequestTraits { is_head, purpose: read.purpose(), user_agent });

    // 3. A fresh click id.
    let now_ms = now_ms();
    let click_id = state.keyring.mint((now_ms / 1000) as u64);

    // 4. Which of the link's offers, for a link with several: its rules and weights, and
    //    what this process knows of the caps. The store has the last word on a cap.
    let routing =
        link.router.as_ref().map(|router| offer::route(state, req, peer, user_agent, router, now_ms, bot.is_none()));
    let url = link.url(routing.as_ref().and_then(|r| r.pick.candidates.first()));

    // 5. What the visitor's query carries: UTM, ad click ids, sub-ids to pass through,
    //    borrowed from the query unless they needed decoding.
    // Held inline, on the request's own future: no allocation for a usual query.
    let mut utm: SmallVec<[Pair; 6]> = SmallVec::new();
    let mut ad_click_ids: SmallVec<[Pair; 2]> = SmallVec::new();
    let mut subids: SmallVec<[Pair; 4]> = SmallVec::new();
    // Only the parameters kept are decoded; the rest (most of a long query) are skipped.
    // Most queries have nothing to decode at all: one look at the whole query (memchr
    // reads it several bytes at a time) spares a dozen looks at its names and values.
    let query = req.uri.query().unwrap_or_default();
    let encoded = memchr::memchr2(b'%', b'+', query.as_bytes()).is_some();
    let decode = |raw| if encoded { form_decode(raw) } else { Cow::Borrowed(raw) };
    for (raw_name, raw_value) in raw_pairs(query) {
        if raw_value.is_empty() {
            continue;
        }
        let name = decode(raw_name);
        if name.starts_with("utm_") {
            let key = match name {
                Cow::Borrowed(name) => Cow::Borrowed(&name[4..]),
                Cow::Owned(name) => Cow::Owned(name[4..].to_owned()),
            };
            if !utm.iter().any(|(k, _)| *k == key) {
                utm.push((key, decode(raw_value)));
            }
        } else if let Some(id) = AD_CLICK_IDS.iter().find(|id| name.eq_ignore_ascii_case(id)) {
            if !ad_click_ids.iter().any(|(k, _)| k == id) {
                ad_click_ids.push((Cow::Borrowed(id), decode(raw_value)));
            }
        } else if let Some(p) = network.passthrough.iter().find(|p| name.eq_ignore_ascii_case(p)) {
            // The affiliate's own value in the offer URL wins; the first visitor value wins.
            if url.offer_sets(p) || subids.iter().any(|(k, _)| k == p) {
                continue;
            }
            let value = decode(raw_value);
            if value.chars().count() > network.max_subid_len(p) {
                metrics::counter!(telemetry::SUBIDS_DROPPED).increment(1);
                continue;
            }
            subids.push((Cow::Borrowed(p), value));
        }
    }

    // 6. Record, acknowledged before the answer leaves (with the offer, when the store
    //    decides it against the caps). The click is borrowed from the request, the link
    //    and the config; the store encodes it straight into its record.
    let bot_reason = bot.map(|b| b.to_string());
    let mut click = ClickView {
        id: click_id.as_str(),
        link: &link.key,
        at: now_ms,
        bot: bot_reason.as_deref(),
        ip: Some(ClickIp::Addr(crate::privacy::stored_ip(&state.config.privacy, peer.ip()))),
        user_agent: user_agent.map(|u| clip(u, MAX_KEPT_HEADER)),
        referer: read.referer.map(|r| clip(r, MAX_KEPT_HEADER)),
        utm: Pairs::Borrowed(&utm),
        ad_click_ids: Pairs::Borrowed(&ad_click_ids),
        subids: Pairs::Borrowed(&subids),
        offer: None,
        rule: routing.as_ref().and_then(|r| r.pick.rule),
        fallback: None,
    };
    let (taken, recorded) = match &routing {
        None => (None, state.store.clicks().record_or_spool_click(click, ClickOrigin::Minted).await),
        Some(routing) => offer::record(state, routing, &mut click).await,
    };
    let hot = &state.hot;
    match recorded {
        Ok(()) if click.is_bot() => hot.bot_hits.increment(1),
        Ok(()) => hot.clicks.increment(1),
        Err(e) => {
            // The visitor is redirected all the same; the click is in the log line.
            hot.clicks_unstored.increment(1);
            let record = serde_json::to_string(&click.to_click()).unwrap_or_default();
            tracing::error!(error = %e, click = %record, "click not acknowledged by the store");
        }
    }

    // 7. Answer: the offer taken, or the fallback when no offer could take the visitor.
    // Sub-ids were sorted out against the first candidate's URL; should the store have
    // taken another offer, a parameter that offer sets itself is not passed on.
    let drawn = routing.as_ref().and_then(|r| r.pick.candidates.first());
    let pass: SmallVec<[(&str, &str); 4]> =
        click.subids.iter().filter(|(k, _)| taken == drawn || !link.url(taken).offer_sets(k)).collect();
    let status = StatusCode::from_u16(link.link.redirect).unwrap_or(StatusCode::FOUND);
    let mut res = match (&routing, taken) {
        (Some(_), None) => match &link.link.fallback {
            Some(fallback) => redirect_to(StatusCode::FOUND, fallback.clone()),
            None => not_found("no offer of this link is available"),
        },
        (_, offer) => redirect_to(status, link.url(offer).location(network, &pass, click_id.as_str())),
    };
    if let (Some(routing), Some(offer)) = (&routing, taken) {
        let id = routing.router.id(offer);
        if link.link.sticky_hours > 0 && routing.sticky != Some(id) {
            let path = format!("/go/{network_name}/{slug}");
            if let Some(cookie) = offer::sticky_cookie(id, link.link.sticky_hours, &path) {
                res.headers_mut().insert(SET_COOKIE, cookie);
            }
        }
    }
    if bot.is_some() { &hot.redirects_bot } else { &hot.redirects_click }.increment(1);
    hot.redirect_seconds.record(started.elapsed().as_secs_f64());
    res
}

/// The headers the redirect reads, found in one pass: a lookup by name hashes the name,
/// and of the five it wants three are usually absent. Each is its first value, as
/// `HeaderMap::get` gives it, when that is text.
struct ReadHeaders<'a> {
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
    /// `Sec-Purpose`, `Purpose`, `X-Purpose`, in that order of precedence.
    purposes: [Option<&'a str>; 3],
}

impl<'a> ReadHeaders<'a> {
    fn of(headers: &'a HeaderMap) -> ReadHeaders<'a> {
        let [sec_purpose, purpose, x_purpose] = &PURPOSE_HEADERS;
        // The first value of each name, in the order of the fields.
        let mut first: [Option<&'a HeaderValue>; 5] = [None; 5];
        for (name, value) in headers {
            let i = if name == USER_AGENT {
                0
            } else if name == REFERER {
                1
            } else if name == sec_purpose {
                2
            } else if name == purpose {
                3
            } else if name == x_purpose {
                4
            } else {
                continue;
            };
            first[i].get_or_insert(value);
        }
        let text = |i: usize| first[i].and_then(|v| v.to_str().ok());
        ReadHeaders { user_agent: text(0), referer: text(1), purposes: [text(2), text(3), text(4)] }
    }

    fn purpose(&self) -> Option<&'a str> {
        self.purposes.iter().find_map(|p| *p)
    }
}

/// The `name=value` pairs of a query, still encoded (a pair without `=` has an empty
/// value). It cuts at the bytes `&` and `=`, which are ASCII and so always fall between
/// characters: on a dozen short pairs, `str::split` and `split_once` cost several times
/// as much, searching for a `char`.
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = Some(query);
    std::iter::from_fn(move || {
        let text = rest?;
        let pair = match text.bytes().position(|b| b == b'&') {
            Some(end) => {
                rest = Some(&text[end + 1..]);
                &text[..end]
            }
            None => {
                rest = None;
                text
            }
        };
        Some(match pair.bytes().position(|b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, ""),
        })
    })
}

/// One `application/x-www-form-urlencoded` name or value, decoded (`+` is a space, bad
/// UTF-8 is replaced), borrowed when there is nothing to decode.
fn form_decode(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// A redirect that no cache may keep: a cached redirect would skip cakelink and reuse
/// an old click id. The location's buffer becomes the header's, uncopied.
fn redirect_to(status: StatusCode, location: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Body::default());
    *res.status_mut() = status;
    match HeaderValue::from_maybe_shared(location.into()) {
        Ok(v) => {
            res.headers_mut().insert(LOCATION, v);
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "offer URL cannot be sent as a header"),
    }
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    res
}

fn not_found(why: &str) -> Response<Body> {
    metrics::counter!(telemetry::REDIRECTS, "outcome" => "not_found").increment(1);
    let mut res = text(StatusCode::NOT_FOUND, format!("Link not found: {why}.\n"));
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_query_splits_into_its_raw_pairs() {
        let pairs: Vec<_> = raw_pairs("utm_source=fb&flag&&s2=a=b&é=%C3%A9&").collect();
        assert_eq!(pairs, vec![("utm_source", "fb"), ("flag", ""), ("", ""), ("s2", "a=b"), ("é", "%C3%A9"), ("", "")]);
        assert_eq!(raw_pairs("").collect::<Vec<_>>(), vec![("", "")]);
    }

    #[test]
    fn form_values_decode_and_plain_ones_are_borrowed() {
        assert!(matches!(form_decode("creative-7"), Cow::Borrowed("creative-7")));
        assert_eq!(form_decode("a%20b+c%C3%A9"), "a b cé");
        assert_eq!(form_decode("100%+sure"), "100% sure");
        assert_eq!(form_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn headers_read_in_one_pass_are_those_get_finds() {
        let mut headers = HeaderMap::new();
        headers.append(USER_AGENT, HeaderValue::from_static("first"));
        headers.append(USER_AGENT, HeaderValue::from_static("second"));
        headers.append("x-purpose", HeaderValue::from_static("preview"));
        headers.append("purpose", HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append("purpose", HeaderValue::from_static("prefetch"));
        let read = ReadHeaders::of(&headers);
        assert_eq!(read.user_agent, Some("first"));
        assert_eq!(read.referer, None);
        // `Purpose` came first but is not text, so `X-Purpose` speaks, as with `get`.
        assert_eq!(read.purposes, [None, None, Some("preview")]);
        assert_eq!(read.purpose(), Some("preview"));
        headers.append("sec-purpose", HeaderValue::from_static("prefetch;prerender"));
        headers.append(REFERER, HeaderValue::from_static("https://m.facebook.com/"));
        let read = ReadHeaders::of(&headers);
        assert_eq!((read.purpose(), read.referer), (Some("prefetch;prerender"), Some("https://m.facebook.com/")));
    }

    proptest! {
        /// The same pairs as `split('&')` and `split_once('=')`, on any text.
        #[test]
        fn raw_pairs_cut_where_split_does(query in "[a-z0-9é=&%+]{0,40}") {
            let by_split: Vec<(&str, &str)> =
                query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))).collect();
            prop_assert_eq!(raw_pairs(&query).collect::<Vec<_>>(), by_split);
        }
    }
}
