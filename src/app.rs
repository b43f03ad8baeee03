//! The application: shared state, and `Application` that opens the store, binds the
//! listener and serves until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::clickid::Keyring;
use crate::config::Config;
use crate::forward::Forwarder;
use crate::links::LinkCatalog;
use crate::store::{self, Store, StoreLimits};
use crate::{server, telemetry};

/// What every request handler shares; cheap to reach through an `Arc`.
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub links: LinkCatalog,
    pub keyring: Keyring,
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// Builds the state around an opened store.
    pub fn new(config: Config, store: Arc<dyn Store>) -> anyhow::Result<AppState> {
        let networks = Arc::new(config.networks.clone());
        let links = LinkCatalog::new(&config.links, networks, store.clone()).map_err(anyhow::Error::msg)?;
        let previous: Vec<String> = config.security.previous_secrets.iter().map(|s| s.expose().to_owned()).collect();
        let keyring = Keyring::new(config.security.secret.expose(), &previous, config.store.click_ttl().as_secs());
        Ok(AppState { config, store, links, keyring, metrics: telemetry::metrics() })
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A bound, ready-to-serve cakelink.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Opens the store and binds the configured address (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let limits = StoreLimits {
            click_ttl: config.store.click_ttl(),
            event_log_max: config.store.event_log_max,
            outbox: config.forward.routes(),
        };
        let store = store::open(&config.store.backend, limits).await.context("opening the store")?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let state = Arc::new(AppState::new(config, store)?);
        Ok(Application { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.server.listen)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves (and forwards conversions in the background) until `shutdown` completes,
    /// then drains in-flight requests (bounded by `shutdown_timeout_secs`), stops
    /// forwarding and flushes the store.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let config = &self.state.config;
        let forwarder = Forwarder::spawn(self.state.store.clone(), &config.forward, &config.server.public_url);
        server::serve(self.listener, self.state.clone(), shutdown).await;
        if let Some(forwarder) = forwarder {
            forwarder.stop().await;
        }
        self.state.store.flush().await.context("flushing the store at shutdown")?;
        Ok(())
    }
}
