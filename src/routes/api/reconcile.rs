//! `POST /api/reconcile`: the network's conversion report (a CSV body, or its affiliate
//! API with `source=api`) against what cakelink recorded.

use std::collections::HashMap;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::{period, store_error};
use crate::clock::now_ms;
use crate::reconcile::{self, api, input, output, Sources};
use crate::routes::{error, json, text, Body};
use crate::state::AppState;

/// Largest report body taken: a few hundred thousand rows.
pub(crate) const MAX_REPORT_BYTES: usize = 256 * 1024 * 1024;

/// The header that says what `ingest=true` changed: `recorded=N reversed=N unchanged=N`.
pub(crate) const INGESTED_HEADER: &str = "x-cakelink-ingested";

pub(super) async fn reconcile(
    state: &AppState,
    query: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let name = query.get("network").map_or("cake", String::as_str);
    let Some(network) = state.config.networks.get(name) else {
        return error(StatusCode::BAD_REQUEST, &format!("network={name:?} is not a configured network"));
    };
    let period = match period(query) {
        Ok(p) => p,
        Err(res) => return res,
    };
    let ingest = match query.get("ingest").map(String::as_str) {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => return error(StatusCode::BAD_REQUEST, &format!("ingest={other:?}: use true or false")),
    };
    let format = query.get("format").map_or("json", String::as_str);
    if !matches!(format, "json" | "csv" | "table") {
        return error(StatusCode::BAD_REQUEST, &format!("format={format:?}: use json, csv or table"));
    }
    let rows = match query.get("source").map_or("file", String::as_str) {
        "file" => {
            let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("report body unreadable or larger than {MAX_REPORT_BYTES} bytes"),
                    )
                }
            };
            if body.is_empty() {
                return error(StatusCode::BAD_REQUEST, "the body must be the network's conversion report (CSV)");
            }
            match input::read_csv(&body, &network.reconcile, period.offset) {
                Ok(rows) => rows,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        "api" => {
            let Some(settings) = &network.api else {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "source=api needs [networks.{}.api] in the config (base_url, affiliate_id, api_key)",
                        network.name
                    ),
                );
            };
            // Whatever fails there (the API, or rows it sent that do not read) is the
            // network's side: a bad gateway, with its reason.
            match api::fetch(&reqwest::Client::new(), settings, &network.reconcile, &period).await {
                Ok(rows) => rows,
                Err(e) => return error(StatusCode::BAD_GATEWAY, &e.to_string()),
            }
        }
        other => return error(StatusCode::BAD_REQUEST, &format!("source={other:?}: use file (the body) or api")),
    };

    let store = &state.store;
    let sources = Sources {
        clicks: store.clicks(),
        conversions: store.conversions(),
        events: store.events(),
        keyring: &state.keyring,
        click_ttl: state.config.store.click_ttl(),
        event_log_max: state.config.store.event_log_max,
        queued: store.spool().queued_postbacks(),
    };
    let now = now_ms();
    let reconciliation = match reconcile::reconcile(&sources, network, &period, rows, now).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let ingested = if ingest {
        let ctx = state.postback_context(false, true);
        match reconcile::ingest(&ctx, network, &reconciliation, now).await {
            Ok(done) => Some(done),
            Err(e) => return store_error(e),
        }
    } else {
        None
    };
    let report = &reconciliation.report;
    let mut res = match format {
        "csv" => match output::csv(report) {
            Ok(bytes) => {
                let mut res = text(StatusCode::OK, bytes);
                res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
                res
            }
            Err(e) => return crate::routes::failure("writing the reconciliation CSV", &e),
        },
        "table" => text(StatusCode::OK, output::table(report)),
        _ => json(StatusCode::OK, report),
    };
    if let Some(done) = ingested {
        let value = format!("recorded={} reversed={} unchanged={}", done.recorded, done.reversed, done.unchanged);
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(INGESTED_HEADER, v);
        }
    }
    res
}
