//! The admin API: JSON under `/api`, behind `Authorization: Bearer <admin_token>`.

use std::collections::HashMap;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

mod health;
mod links;
mod outbox;
mod reconcile;
mod reports;

use super::{error, failure, method_not_allowed, path_segment, secret_matches, Body};
use crate::reports::Period;
use crate::state::AppState;
use crate::store::StoreError;
use crate::text::valid_percent_encoding;
pub(crate) use links::{all_links, remove_link, save_link, LinkChangeError, READ_ONLY};
use links::{create_link, delete_link, get_link, list_links, read_link_body};
pub(crate) use outbox::requeue_refused;
use outbox::{deliveries, events, requeue};
pub(crate) use reports::to_csv;
use reports::{click, conversions, stats};

/// Most events one `/api/events` call returns.
pub(super) const MAX_EVENTS: usize = 1000;

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
        (["links"], Method::GET) => list_links(state).await,
        (["links"], Method::POST) => match read_link_body(state, req).await {
            Ok(body) => create_link(state, body, None).await,
            Err(res) => res,
        },
        (["links"], _) => method_not_allowed("GET, POST"),
        (["links", network, slug], m) => {
            let (network, slug) = match (path_segment(network), path_segment(slug)) {
                (Ok(n), Ok(s)) => (n, s),
                (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
            };
            match m {
                Method::GET => get_link(state, &network, &slug).await,
                Method::PUT => match read_link_body(state, req).await {
                    Ok(body) => create_link(state, body, Some((network.into_owned(), slug.into_owned()))).await,
                    Err(res) => res,
                },
                Method::DELETE => delete_link(state, &network, &slug).await,
                _ => method_not_allowed("GET, PUT, DELETE"),
            }
        }
        (["reconcile"], Method::POST) => reconcile::reconcile(state, &query, req).await,
        (["reconcile"], _) => method_not_allowed("POST"),
        (["stats"], Method::GET) => stats(state, &query).await,
        (["health", "postbacks"], Method::GET) => health::postbacks(state, &query).await,
        (["conversions"], Method::GET) => conversions(state, &query).await,
        (["clicks", id], Method::GET) => click(state, id).await,
        (["events"], Method::GET) => events(state, &query).await,
        (["deliveries"], Method::GET) => deliveries(state, &query).await,
        (["deliveries", id, "requeue"], Method::POST) => match path_segment(id) {
            Ok(id) => requeue(state, &id).await,
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        },
        (["deliveries", _, "requeue"], _) => method_not_allowed("POST"),
        (["stats"] | ["conversions"] | ["clicks", _] | ["events"] | ["deliveries"] | ["health", "postbacks"], _) => {
            method_not_allowed("GET")
        }
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

pub(super) fn store_error(e: StoreError) -> Response<Body> {
    failure("an admin API call", &e)
}

// An early answer is the error arm here; boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
pub(super) fn period(query: &HashMap<String, String>) -> Result<Period, Response<Body>> {
    Period::parse(
        query.get("from").map(String::as_str),
        query.get("to").map(String::as_str),
        query.get("tz").map(String::as_str),
    )
    .map_err(|e| error(StatusCode::BAD_REQUEST, &e))
}
