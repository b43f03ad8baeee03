//! `/healthz`, `/readyz`, `/metrics`.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::{error, json, method_not_allowed, text, Body};
use crate::state::AppState;
use crate::store::spool::SpoolStatus;
use crate::store::NodeState;
use crate::telemetry;

fn only_get(req: &Request<Incoming>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| method_not_allowed("GET, HEAD"))
}

/// `200` while the process serves.
pub(crate) fn healthz(req: &Request<Incoming>) -> Response<Body> {
    only_get(req).unwrap_or_else(|| text(StatusCode::OK, "ok\n"))
}

/// What `/readyz` reports (and the dashboard's setup page shows).
#[derive(Serialize)]
pub(crate) struct Readiness {
    pub(crate) status: &'static str,
    pub(crate) store: &'static str,
    pub(crate) store_up: bool,
    pub(crate) spool: SpoolStatus,
    /// The servers behind the store as last seen (every node of a Redis Cluster, the one
    /// Redis; none for the embedded store).
    pub(crate) nodes: Vec<NodeState>,
}

/// `200` while redirects can be served and their clicks kept: the store answers, or the
/// outage spool has room (`503` once it is full). The body says the store's state, how
/// full the spool is, and each server behind the store.
pub(crate) async fn readyz(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    if let Some(r) = only_get(req) {
        return r;
    }
    let (http, readiness) = readiness(state).await;
    json(http, &readiness)
}

/// The store's and the outage spool's state, and the status code `/readyz` answers.
pub(crate) async fn readiness(state: &AppState) -> (StatusCode, Readiness) {
    let up = store_up(state).await;
    let spool = state.store.spool().status();
    let (http, status) = match (up, spool.active, spool.full) {
        (_, true, true) => (StatusCode::SERVICE_UNAVAILABLE, "spool_full"),
        (true, false, _) => (StatusCode::OK, "ready"),
        (true, true, _) => (StatusCode::OK, "replaying_spool"),
        (false, _, _) => (StatusCode::OK, "store_down_spooling"),
    };
    let nodes = nodes(state);
    (http, Readiness { status, store: state.store.health().backend(), store_up: up, spool, nodes })
}

/// The store's servers as last seen, also set as `cakelink_redis_node_up`.
fn nodes(state: &AppState) -> Vec<NodeState> {
    let nodes = state.store.health().nodes();
    telemetry::redis_nodes(nodes.iter().map(|n| (n.address.as_str(), n.role, n.is_up())));
    nodes
}

async fn store_up(state: &AppState) -> bool {
    // While spooling, the spool's probe knows whether the store is back: a store that is
    // down must not make a load balancer or Prometheus wait for a ping to time out.
    let up = match state.store.spool().probed_store_up() {
        Some(up) => up,
        None => matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), state.store.health().ping()).await,
            Ok(Ok(()))
        ),
    };
    metrics::gauge!(telemetry::STORE_UP, "backend" => state.store.health().backend()).set(if up { 1.0 } else { 0.0 });
    up
}

/// Prometheus text exposition.
pub(crate) async fn metrics(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    if let Some(r) = only_get(req) {
        return r;
    }
    store_up(state).await;
    nodes(state);
    match &state.metrics {
        Some(handle) => {
            let mut res = text(StatusCode::OK, handle.render());
            res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            res
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed"),
    }
}
