//! What every request handler shares.
//!
//! Its own module so that the server, the routes and the application that builds it all
//! depend on it, and none on each other in a circle.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::clickid::Keyring;
use crate::config::Config;
use crate::links::LinkCatalog;
use crate::postback::Context;
use crate::store::Storage;
use crate::telemetry;

/// What every request handler shares; cheap to reach through an `Arc`.
pub(crate) struct AppState {
    pub config: Config,
    /// The configured backend behind the outage spool, one capability at a time.
    pub store: Storage,
    pub links: LinkCatalog,
    pub keyring: Keyring,
    pub metrics: Option<PrometheusHandle>,
    /// Metric handles of the redirect path.
    pub hot: telemetry::HotMetrics,
    /// The dashboard's sign-in sessions and failed sign-ins.
    pub sessions: crate::sessions::Sessions,
}

impl AppState {
    /// Builds the state around an opened store.
    pub(crate) fn new(config: Config, store: Storage) -> anyhow::Result<AppState> {
        let networks = Arc::new(config.networks.clone());
        let links = LinkCatalog::new(&config.links, networks, store.links()).map_err(anyhow::Error::msg)?;
        let previous: Vec<String> = config.security.previous_secrets.iter().map(|s| s.expose().to_owned()).collect();
        let keyring = Keyring::new(config.security.secret.expose(), &previous, config.store.click_ttl().as_secs());
        let metrics = telemetry::metrics();
        let sessions = crate::sessions::Sessions::for_config(&config);
        Ok(AppState { config, store, links, keyring, metrics, hot: telemetry::HotMetrics::new(), sessions })
    }

    /// What resolving a postback needs, through the spool. `queueing`: a postback may
    /// wait in the outage spool while the store is down (a network's call; a reconciled
    /// report is refused instead, to be run again). `reconciled`: it comes from the
    /// network's report, and the event log says so.
    pub(crate) fn postback_context(&self, queueing: bool, reconciled: bool) -> Context<'_> {
        let store = &self.store;
        Context {
            clicks: store.clicks(),
            conversions: store.conversions(),
            events: store.events(),
            links: &self.links,
            keyring: &self.keyring,
            spool: queueing.then(|| &**store.spool()),
            reconciled,
        }
    }
}
