//! `GET`/`POST /collect/{network}/{key}`: the network reports a conversion.
//!
//! Refused only for a sender outside the network's `postback_allowlist` or a wrong key
//! (`403`), or a bad field value (`400`); every other
//! outcome, `no_match` included, is a `200` whose body says what happened, because
//! networks disable postback URLs that fail often. Every postback is logged.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::{json, method_not_allowed, path_segment, secret_matches, Body};
use crate::access;
use crate::clock::now_ms;
use crate::model::EventStatus;
use crate::postback::{self, Answer, Fields};
use crate::state::AppState;
use crate::telemetry;

#[derive(Serialize)]
struct AnswerBody<'a> {
    status: &'a str,
    reason: &'a str,
    conversion_id: Option<&'a str>,
}

fn respond(answer: &Answer) -> Response<Body> {
    metrics::counter!(telemetry::POSTBACKS, "status" => answer.status.as_str()).increment(1);
    let status = StatusCode::from_u16(answer.http).unwrap_or(StatusCode::OK);
    json(
        status,
        &AnswerBody {
            status: answer.status.as_str(),
            reason: &answer.reason,
            conversion_id: answer.conversion_id.as_deref(),
        },
    )
}

/// Handles one postback.
pub(crate) async fn postback(
    state: &AppState,
    req: Request<Incoming>,
    network: &str,
    key: &str,
    peer: SocketAddr,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return method_not_allowed("GET, POST");
    }
    let now = now_ms();
    let network_name = match path_segment(network) {
        Ok(n) => n,
        Err(e) => return respond(&Answer::rejected(400, e)),
    };
    let Some(network) = state.links.network(&network_name) else {
        return respond(&Answer::rejected(404, format!("unknown network {network_name:?}")));
    };

    let query = req.uri().query().unwrap_or_default().to_owned();
    let query_fields = Fields::from_query(&query);
    let forwarded = req.headers().get_all("x-forwarded-for");
    let forwarded = forwarded.iter().filter_map(|v| v.to_str().ok());
    let source = access::postback_source(peer.ip(), forwarded, &state.config.server.trusted_proxies);
    if !network.accepts_postback_from(source) {
        let reason = format!("postbacks from {source} are not on the allowlist of network {:?}", network.name);
        let answer = Answer::rejected(403, reason);
        log(state, &answer, &network.name, &query_fields.clone().unwrap_or_default(), now).await;
        return respond(&answer);
    }
    let key_ok = secret_matches(key.as_bytes(), state.config.security.postback_key.expose().as_bytes());
    if !key_ok {
        let answer = Answer::rejected(403, "wrong postback key");
        log(state, &answer, &network.name, &query_fields.clone().unwrap_or_default(), now).await;
        return respond(&answer);
    }

    let fields = match read_fields(state, req, query_fields).await {
        Ok(f) => f,
        Err((status, reason)) => {
            let answer = Answer::rejected(status, reason);
            log(state, &answer, &network.name, &Fields::default(), now).await;
            return respond(&answer);
        }
    };
    let ctx = state.postback_context(true, false);
    let answer = postback::process(&ctx, network, &fields, now).await;
    if answer.status == EventStatus::Ok {
        telemetry::postback_ok(&network.name, now);
    }
    if answer.status == EventStatus::Queued {
        // Logged when it is resolved, with its `queued` entry first: logging it now
        // would put that entry after the spooled records it must precede.
        tracing::info!(network = %network.name, "postback queued while the store is down");
    } else {
        log(state, &answer, &network.name, &fields, now).await;
    }
    respond(&answer)
}

/// The postback's fields: the query string, plus a form or JSON body on `POST`.
async fn read_fields(
    state: &AppState,
    req: Request<Incoming>,
    query: Result<Fields, postback::FieldsError>,
) -> Result<Fields, (u16, String)> {
    let mut fields = query.map_err(|e| (400, e.to_string()))?;
    if req.method() != Method::POST {
        return Ok(fields);
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    let limit = state.config.server.max_body_bytes;
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            (413, format!("body larger than {limit} bytes"))
        } else {
            (400, "body could not be read".to_owned())
        }
    })?;
    let body = body.to_bytes();
    let body_fields = if body.is_empty() {
        Fields::default()
    } else if is_json {
        Fields::from_json(&body).map_err(|e| (400, e.to_string()))?
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| (400, "body is not valid UTF-8".to_owned()))?;
        Fields::from_query(text).map_err(|e| (400, e.to_string()))?
    };
    // Body fields first: on a POST the body is the postback, the query only adds.
    let mut merged = body_fields;
    merged.merge(std::mem::take(&mut fields));
    Ok(merged)
}

async fn log(state: &AppState, answer: &Answer, network: &str, fields: &Fields, now: i64) {
    let event = answer.to_event(network, fields, now);
    if let Err(e) = state.store.events().log_event(&event).await {
        tracing::error!(error = %e, status = answer.status.as_str(), "postback could not be written to the event log");
    }
    tracing::info!(network, status = answer.status.as_str(), reason = %answer.reason, "postback");
}
