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
use crate::links::LinkCatalog;
use crate::store::{self, Store, StoreLimits};
use crate::tls::{self, Tls};
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
    tls: Option<Arc<Tls>>,
}

impl Application {
    /// Opens the store and binds the configured address (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let tls = config.server.tls.as_ref().map(Tls::load).transpose().map_err(anyhow::Error::msg)?;
        let limits = StoreLimits { click_ttl: config.store.click_ttl(), event_log_max: config.store.event_log_max };
        let store = store::open(&config.store.backend, limits).await.context("opening the store")?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let state = Arc::new(AppState::new(config, store)?);
        Ok(Application { listener, state, tls: tls.map(Arc::new) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.server.listen)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Whether it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests (bounded by
    /// `shutdown_timeout_secs`) and flushes the store. SIGHUP reloads the certificate.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let reloader = tokio::spawn(tls::reload_on_sighup(self.tls.clone()));
        server::serve(self.listener, self.state.clone(), self.tls, shutdown).await;
        reloader.abort();
        self.state.store.flush().await.context("flushing the store at shutdown")?;
        Ok(())
    }
}
