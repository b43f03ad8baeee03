//! HTTP routes: one dispatcher, one module per kind of caller.
//!
//! - [`redirect`]: visitors, `/go/{network}/{slug}`
//! - [`postback`]: networks, `/collect/{network}/{key}`
//! - [`api`]: the owner, `/api/...` with a bearer token
//! - [`ops`]: load balancers and Prometheus, `/healthz`, `/readyz`, `/metrics`
//!
//! Every answer that is not a redirect is built by [`json`] or [`text`]; a failure on
//! cakelink's side is answered by [`failure`] alone, whose body never carries internal
//! error text: that goes to the log.

pub(crate) mod api;
mod offer;
pub(crate) mod ops;
pub(crate) mod postback;
pub(crate) mod redirect;
pub(crate) mod ui;

use std::borrow::Cow;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use serde::Serialize;

pub(crate) use crate::secret::secret_matches;
use crate::state::AppState;
use crate::store::StoreError;

pub(crate) type Body = Full<Bytes>;

/// Routes one request. Never fails: every problem is an HTTP answer.
pub(crate) async fn handle(state: &AppState, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if go_route(req.uri().path()).is_some() {
        let (head, _) = req.into_parts();
        return go(state, &head, peer).await;
    }
    if let Some(refused) = oversized(state, req.uri(), req.headers()) {
        return refused;
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("collect"), Some(network), Some(key)) => postback::postback(state, req, network, key, peer).await,
        (Some("api"), _, _) => api::api(state, req).await,
        (Some("healthz"), None, None) => ops::healthz(&req),
        (Some("readyz"), None, None) => ops::readyz(state, &req).await,
        (Some("metrics"), None, None) => ops::metrics(state, &req).await,
        (Some(""), None, None) => ui::root(state, &req),
        (Some("ui"), _, _) => ui::serve(state, req, peer).await,
        _ => no_route(),
    }
}

fn no_route() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// Answers a request from its head alone, as [`handle`] answers it, for a path that
/// [`handle`] would route by its head alone: `/go/...`, or no route at all. The server's
/// HTTP/1.1 path for redirects calls this.
pub(crate) async fn go(state: &AppState, head: &Parts, peer: SocketAddr) -> Response<Body> {
    if let Some(refused) = oversized(state, &head.uri, &head.headers) {
        return refused;
    }
    match go_route(head.uri.path()) {
        Some((network, slug)) => redirect::redirect(state, head, network, slug, peer).await,
        None => no_route(),
    }
}

/// The network and slug of a `/go/{network}/{slug}` path (the slug may hold further `/`).
fn go_route(path: &str) -> Option<(&str, &str)> {
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("go"), Some(network), Some(slug)) => Some((network, slug)),
        _ => None,
    }
}

/// `414` or `431` for a request whose target or headers pass the configured limits.
fn oversized(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Option<Response<Body>> {
    let limits = &state.config.server;
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_target_bytes {
        return Some(error(
            StatusCode::URI_TOO_LONG,
            &format!("request target longer than {} bytes", limits.max_target_bytes),
        ));
    }
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes {
        return Some(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request headers larger than {} bytes", limits.max_header_bytes),
        ));
    }
    None
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(Full::new(Bytes::from(bytes)));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// A JSON error: `{"error": reason}`.
pub(crate) fn error(status: StatusCode, reason: &str) -> Response<Body> {
    json(status, &ErrorBody { error: reason })
}

/// The one place a failure on cakelink's side becomes an HTTP answer: a store that is
/// down is `503` (the caller may retry), a corrupt record or anything else `500`. The
/// body says only that; the cause chain, with what the request was doing, goes to the log.
pub(crate) fn failure(during: &'static str, err: &(dyn std::error::Error + 'static)) -> Response<Body> {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %chain, during, "request failed");
    match err.downcast_ref::<StoreError>() {
        Some(StoreError::Corrupt { .. }) => error(StatusCode::INTERNAL_SERVER_ERROR, "stored record is corrupt"),
        Some(_) => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// `405` naming the methods the route takes.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = error(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed; use {allow}"));
    res.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// Percent-decodes one path segment, refusing bad escapes, invalid UTF-8 and control
/// characters (NUL, CR, LF) that have no business in a slug or key. Borrowed when there
/// is nothing to decode, as for nearly every redirect.
pub(crate) fn path_segment(raw: &str) -> Result<Cow<'_, str>, String> {
    // A segment without `%` (nearly every one) decodes to itself: one look, not three.
    let decoded = if !raw.as_bytes().contains(&b'%') {
        Cow::Borrowed(raw)
    } else if !crate::text::valid_percent_encoding(raw) {
        return Err(format!("invalid percent-encoding in path segment {:?}", truncate(raw)));
    } else {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("path segment {:?} is not valid UTF-8", truncate(raw)))?
    };
    if decoded.chars().any(char::is_control) {
        return Err("control characters (NUL, CR, LF…) are not allowed in the path".into());
    }
    Ok(decoded)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
