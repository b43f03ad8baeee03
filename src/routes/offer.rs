//! The redirect's choice among a link's offers: what the request tells of the visitor
//! (country, device, language, query, sticky cookie), the router's pick, and the cap
//! check that rides on the click's own write.
//!
//! Links without offers never come here. For the others, reading the visitor borrows
//! from the request and allocates nothing; only a click subject to a daily cap builds
//! the small claim the store checks.

use std::net::SocketAddr;

use hyper::header::{HeaderValue, ACCEPT_LANGUAGE, COOKIE};
use hyper::http::request::Parts;

use crate::access;
use crate::model::ClickView;
use crate::routing::{device, geo, NoOffer, Pick, Router, Visitor};
use crate::state::AppState;
use crate::store::{CapCandidate, CapClaim, ClickOrigin, StoreResult};

/// The cookie that keeps a visitor on one offer of a link (its path is the link's).
const STICKY_COOKIE: &str = "cakelink_offer";

/// What the router decided for one click of a link with offers.
pub(super) struct Routing<'a> {
    pub router: &'a Router,
    pub pick: Pick,
    /// The cap day of the click.
    pub day: u32,
    /// The offer the visitor's sticky cookie names, if any.
    pub sticky: Option<&'a str>,
}

/// Reads the visitor from the request and has `router` pick the candidates; `is_person`
/// is false for bots and prefetches, which never use a cap up.
pub(super) fn route<'a>(
    state: &AppState,
    req: &'a Parts,
    peer: SocketAddr,
    user_agent: Option<&str>,
    router: &'a Router,
    now_ms: i64,
    is_person: bool,
) -> Routing<'a> {
    let visitor = visitor(state, req, peer, user_agent, router);
    let day = router.cap_day(now_ms);
    let pick = router.pick(&visitor, day, is_person, &mut rand::rng());
    Routing { router, pick, day, sticky: visitor.sticky }
}

/// What the request tells of the visitor, as far as `router`'s rules ask.
fn visitor<'a>(
    state: &AppState,
    req: &'a Parts,
    peer: SocketAddr,
    user_agent: Option<&str>,
    router: &Router,
) -> Visitor<'a> {
    let headers = &req.headers;
    let (device, os) = device::classify(user_agent);
    let country = if router.uses_country() { country(state, req, peer) } else { None };
    Visitor {
        country,
        device: Some(device),
        os,
        accept_language: headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()),
        query: req.uri.query().unwrap_or_default(),
        sticky: headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(sticky_offer),
    }
}

/// The visitor's country: from the configured header when a trusted proxy sent the
/// request, else from the database by the visitor's address.
fn country(state: &AppState, req: &Parts, peer: SocketAddr) -> Option<geo::Country> {
    let geo = &state.config.geo;
    let trusted = &state.config.server.trusted_proxies;
    if let Some(name) = &geo.header {
        let peer_ip = peer.ip().to_canonical();
        if trusted.iter().any(|net| net.contains(&peer_ip)) {
            if let Some(code) = req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                return geo::parse_country(code);
            }
        }
    }
    let db = geo.mmdb.as_ref()?;
    let forwarded = req.headers.get_all("x-forwarded-for");
    let ip = access::postback_source(peer.ip(), forwarded.iter().filter_map(|v| v.to_str().ok()), trusted);
    db.country(ip)
}

/// The offer id in a `Cookie` header's sticky cookie, if it is there.
fn sticky_offer(cookie_header: &str) -> Option<&str> {
    cookie_header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == STICKY_COOKIE && crate::routing::definition::valid_offer_id(value)).then_some(value)
    })
}

/// The `Set-Cookie` value that keeps the visitor on `offer` for `hours`, scoped to the
/// link's own path.
pub(super) fn sticky_cookie(offer: &str, hours: u32, link_path: &str) -> Option<HeaderValue> {
    let text = format!("{STICKY_COOKIE}={offer}; Max-Age={}; Path={link_path}; HttpOnly; SameSite=Lax", hours * 3600);
    HeaderValue::from_str(&text).ok()
}

/// Records `click` (whose `rule` is set) for a link with offers, after `pick`: directly
/// when the offer is settled already (a bot, an uncapped offer, nothing eligible), or
/// with the store's cap check when a capped offer is among the candidates. Returns the
/// index of the offer taken (`None`: the visitor goes to the fallback) and how recording
/// went.
pub(super) async fn record<'a>(
    state: &AppState,
    routing: &Routing<'a>,
    click: &mut ClickView<'a>,
) -> (Option<usize>, StoreResult<()>) {
    let Routing { router, pick, day, .. } = routing;
    let day = *day;
    let candidates = pick.candidates.as_slice();
    let settled = match (pick.no_offer, candidates) {
        (Some(reason), _) => Some(Err(reason)),
        (None, [only]) if click.is_bot() || router.cap(usize::from(*only)).is_none() => Some(Ok(usize::from(*only))),
        _ => None,
    };
    if let Some(settled) = settled {
        match settled {
            Ok(i) => click.offer = Some(router.id(i)),
            Err(reason) => click.fallback = Some(reason.as_str()),
        }
        let offer = settled.ok();
        return (offer, state.store.clicks().record_or_spool_click(*click, ClickOrigin::Minted).await);
    }
    let claim = CapClaim {
        day,
        candidates: candidates
            .iter()
            .map(|&i| CapCandidate { offer: router.id(usize::from(i)).to_owned(), cap: router.cap(usize::from(i)) })
            .collect(),
    };
    match state.store.clicks().record_or_spool_capped_click(*click, &claim).await {
        Ok(taken) => {
            // Every candidate before the one taken was full: later clicks skip them today.
            for &full in &candidates[..taken.unwrap_or(candidates.len())] {
                router.mark_full(usize::from(full), day);
            }
            match taken {
                Some(t) => click.offer = Some(router.id(usize::from(candidates[t]))),
                None => click.fallback = Some(NoOffer::Capped.as_str()),
            }
            (taken.map(|t| usize::from(candidates[t])), Ok(()))
        }
        // Not stored anywhere: the visitor still gets the first candidate.
        Err(e) => (pick.candidates.first(), Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        assert_eq!(sticky_offer("a=1; cakelink_offer=b-2; c=3"), Some("b-2"));
        assert_eq!(sticky_offer("cakelink_offer=bad value"), None);
        assert_eq!(sticky_offer("other=1"), None);
        let cookie = sticky_cookie("a", 24, "/go/cake/sweeps").unwrap();
        assert_eq!(
            cookie.to_str().unwrap(),
            "cakelink_offer=a; Max-Age=86400; Path=/go/cake/sweeps; HttpOnly; SameSite=Lax"
        );
    }
}
