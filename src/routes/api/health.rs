//! `/api/health/postbacks`: the links people click whose postbacks never come back.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use serde::Serialize;

use super::store_error;
use crate::clock::now_ms;
use crate::reports::{self, rfc3339, SilenceWindow, SilentLink};
use crate::routes::{error, json, Body};
use crate::state::AppState;

#[derive(Serialize)]
struct Silent {
    silent: Vec<SilentRow>,
}

#[derive(Serialize)]
struct SilentRow {
    link: String,
    clicks: u64,
    postbacks: u64,
    last_postback_at: Option<String>,
}

impl From<SilentLink> for SilentRow {
    fn from(s: SilentLink) -> SilentRow {
        SilentRow {
            link: s.link,
            clicks: s.clicks,
            postbacks: s.postbacks,
            last_postback_at: s.last_postback_at.map(rfc3339),
        }
    }
}

/// `GET /api/health/postbacks?hours=24&min_clicks=100`
pub(super) async fn postbacks(state: &AppState, query: &HashMap<String, String>) -> Response<Body> {
    let window =
        match SilenceWindow::parse(query.get("hours").map(String::as_str), query.get("min_clicks").map(String::as_str))
        {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
    match reports::silent_links(state.store.conversions(), window, now_ms()).await {
        Ok(silent) => json(StatusCode::OK, &Silent { silent: silent.into_iter().map(SilentRow::from).collect() }),
        Err(e) => store_error(e),
    }
}
