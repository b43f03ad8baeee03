//! `/api/links`: the links created through the API (config links are listed and read
//! here too, but are read-only). A link's JSON mirrors its `[[links]]` table, offers and
//! rules included, and is checked by the same readers and the same validation as the
//! config file.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::api::store_error;
use super::{error, json, text, Body};
use crate::links::validate_link;
use crate::model::{Link, LinkSource, LinkStatus};
use crate::state::AppState;

#[derive(Serialize)]
struct Links<'a> {
    links: Vec<&'a Link>,
}

pub(super) async fn list_links(state: &AppState) -> Response<Body> {
    let stored = match state.store.links().links().await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    let mut all: Vec<&Link> = state.links.config_links().chain(stored.iter()).collect();
    all.sort_by(|a, b| (&a.network, &a.slug).cmp(&(&b.network, &b.slug)));
    json(StatusCode::OK, &Links { links: all })
}

pub(super) async fn get_link(state: &AppState, network: &str, slug: &str) -> Response<Body> {
    if let Some(l) = state.links.config_links().find(|l| l.network == network && l.slug == slug) {
        return json(StatusCode::OK, l);
    }
    match state.store.links().link(network, slug).await {
        Ok(Some(link)) => json(StatusCode::OK, &link),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such link"),
        Err(e) => store_error(e),
    }
}

/// What `POST /api/links` and `PUT /api/links/{network}/{slug}` take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkBody {
    slug: Option<String>,
    network: Option<String>,
    offer: String,
    redirect: Option<u16>,
    status: Option<LinkStatus>,
    fallback: Option<String>,
    event: Option<String>,
    /// Read as TOML would be, so the API and the config file report problems alike.
    offers: Option<serde_json::Value>,
    rules: Option<serde_json::Value>,
    sticky_hours: Option<u32>,
    cap_tz: Option<String>,
}

pub(super) async fn read_link_body(state: &AppState, req: Request<Incoming>) -> Result<LinkBody, Response<Body>> {
    let limit = state.config.server.max_body_bytes;
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body missing or larger than {limit} bytes")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("link JSON: {e}")))
}

/// Creates (`POST`, path `None`) or replaces (`PUT`) an API link.
pub(super) async fn create_link(state: &AppState, body: LinkBody, path: Option<(String, String)>) -> Response<Body> {
    let (network, slug) = match path.clone() {
        Some((n, s)) => {
            if body.network.as_ref().is_some_and(|b| *b != n) || body.slug.as_ref().is_some_and(|b| *b != s) {
                return error(StatusCode::BAD_REQUEST, "network and slug in the body differ from the path");
            }
            (n, s)
        }
        None => match body.slug {
            Some(s) => (body.network.unwrap_or_else(|| "cake".into()), s),
            None => return error(StatusCode::BAD_REQUEST, "slug is required"),
        },
    };
    let is_put = path.is_some();
    let (offers, rules) = match crate::config::read_routing_json(body.offers.as_ref(), body.rules.as_ref()) {
        Ok(read) => read,
        Err(problems) => {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return error(StatusCode::BAD_REQUEST, &text.join("; "));
        }
    };
    let link = Link {
        network,
        slug,
        offer: body.offer,
        redirect: body.redirect.unwrap_or(302),
        status: body.status.unwrap_or_default(),
        fallback: body.fallback,
        event: body.event,
        source: LinkSource::Api,
        offers,
        rules,
        sticky_hours: body.sticky_hours.unwrap_or(0),
        cap_tz: body.cap_tz,
    };
    if state.links.is_config_link(&link.network, &link.slug) {
        return error(StatusCode::CONFLICT, "this link is defined in the config file and is read-only here");
    }
    let problems = validate_link(&link, state.links.networks());
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        return error(StatusCode::BAD_REQUEST, &text.join("; "));
    }
    let existed = match state.store.links().link(&link.network, &link.slug).await {
        Ok(found) => found.is_some(),
        Err(e) => return store_error(e),
    };
    if existed && !is_put {
        return error(
            StatusCode::CONFLICT,
            "a link with this network and slug exists; PUT /api/links/{network}/{slug} replaces it",
        );
    }
    if let Err(e) = state.store.links().put_link(&link).await {
        return store_error(e);
    }
    state.links.invalidate(&link.network, &link.slug);
    json(if existed { StatusCode::OK } else { StatusCode::CREATED }, &link)
}

pub(super) async fn delete_link(state: &AppState, network: &str, slug: &str) -> Response<Body> {
    if state.links.is_config_link(network, slug) {
        return error(StatusCode::CONFLICT, "this link is defined in the config file and is read-only here");
    }
    match state.store.links().delete_link(network, slug).await {
        Ok(true) => {
            state.links.invalidate(network, slug);
            let mut res = text(StatusCode::NO_CONTENT, "");
            res.headers_mut().remove(CONTENT_TYPE);
            res
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "no such link"),
        Err(e) => store_error(e),
    }
}
