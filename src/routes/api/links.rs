//! `/api/links`: listing, reading, creating, replacing and deleting links; the saving
//! and removing the dashboard's forms share.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::store_error;
use crate::links::validate_link;
use crate::model::{Link, LinkSource, LinkStatus};
use crate::routes::{error, json, text, Body};
use crate::state::AppState;
use crate::store::{StoreError, StoreResult};

#[derive(Serialize)]
struct Links<'a> {
    links: Vec<&'a Link>,
}

pub(super) async fn list_links(state: &AppState) -> Response<Body> {
    match all_links(state).await {
        Ok(all) => json(StatusCode::OK, &Links { links: all.iter().collect() }),
        Err(e) => store_error(e),
    }
}

/// Every link, from the config file and from the store, by network and slug. The API
/// and the dashboard list the same thing.
pub(crate) async fn all_links(state: &AppState) -> StoreResult<Vec<Link>> {
    let stored = state.store.links().links().await?;
    let mut all: Vec<Link> = state.links.config_links().cloned().chain(stored).collect();
    all.sort_by(|a, b| (&a.network, &a.slug).cmp(&(&b.network, &b.slug)));
    Ok(all)
}

/// Why a link was not changed.
pub(crate) enum LinkChangeError {
    /// Defined in the config file.
    ReadOnly,
    /// `(field, problem)` pairs.
    Invalid(Vec<(String, String)>),
    /// Creating, and the link exists.
    Exists,
    /// Deleting, and there is no such link.
    NotFound,
    Store(StoreError),
}

/// The text of a read-only refusal, the same for every caller.
pub(crate) const READ_ONLY: &str = "this link is defined in the config file and is read-only here";

/// Checks and stores an API link; `replace` allows overwriting an existing one. Returns
/// whether the link existed. The API and the dashboard's forms both go through here.
pub(crate) async fn save_link(state: &AppState, link: &Link, replace: bool) -> Result<bool, LinkChangeError> {
    if state.links.is_config_link(&link.network, &link.slug) {
        return Err(LinkChangeError::ReadOnly);
    }
    let problems = validate_link(link, state.links.networks());
    if !problems.is_empty() {
        return Err(LinkChangeError::Invalid(problems));
    }
    let existed = state.store.links().link(&link.network, &link.slug).await.map_err(LinkChangeError::Store)?.is_some();
    if existed && !replace {
        return Err(LinkChangeError::Exists);
    }
    state.store.links().put_link(link).await.map_err(LinkChangeError::Store)?;
    state.links.invalidate(&link.network, &link.slug);
    Ok(existed)
}

/// Deletes an API link.
pub(crate) async fn remove_link(state: &AppState, network: &str, slug: &str) -> Result<(), LinkChangeError> {
    if state.links.is_config_link(network, slug) {
        return Err(LinkChangeError::ReadOnly);
    }
    match state.store.links().delete_link(network, slug).await {
        Ok(true) => {
            state.links.invalidate(network, slug);
            Ok(())
        }
        Ok(false) => Err(LinkChangeError::NotFound),
        Err(e) => Err(LinkChangeError::Store(e)),
    }
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
    match save_link(state, &link, is_put).await {
        Ok(existed) => json(if existed { StatusCode::OK } else { StatusCode::CREATED }, &link),
        Err(e) => link_change_error(e),
    }
}

pub(super) async fn delete_link(state: &AppState, network: &str, slug: &str) -> Response<Body> {
    match remove_link(state, network, slug).await {
        Ok(()) => {
            let mut res = text(StatusCode::NO_CONTENT, "");
            res.headers_mut().remove(CONTENT_TYPE);
            res
        }
        Err(e) => link_change_error(e),
    }
}

fn link_change_error(e: LinkChangeError) -> Response<Body> {
    match e {
        LinkChangeError::ReadOnly => error(StatusCode::CONFLICT, READ_ONLY),
        LinkChangeError::Invalid(problems) => {
            let text: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
            error(StatusCode::BAD_REQUEST, &text.join("; "))
        }
        LinkChangeError::Exists => error(
            StatusCode::CONFLICT,
            "a link with this network and slug exists; PUT /api/links/{network}/{slug} replaces it",
        ),
        LinkChangeError::NotFound => error(StatusCode::NOT_FOUND, "no such link"),
        LinkChangeError::Store(e) => store_error(e),
    }
}
