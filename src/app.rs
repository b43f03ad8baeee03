//! The application: shared state, and `Application` that opens the store, binds the
//! listener and serves until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::model::{EventStatus, QueuedPostback};
use crate::postback::{self, Context};
use crate::state::AppState;
use crate::store::spool::{Resolve, SpooledStore};
use crate::store::{self, EventLog, Storage, Store, StoreLimits, StoreResult};
use crate::tls::{self, Tls};
use crate::{server, telemetry};

/// A bound, ready-to-serve cakelink.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<Tls>>,
}

impl Application {
    /// Opens the store and binds the configured address (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let tls = config.server.tls.as_ref().map(Tls::load).transpose()?;
        let limits = StoreLimits {
            click_ttl: config.store.click_ttl(),
            event_log_max: config.store.event_log_max,
            personal_ttl: store::PERSONAL_DATA_TTL,
            outbox: config.forward.routes(),
        };
        let backend = store::open(&config.store.backend, limits).await.context("opening the store")?;
        let spool = SpooledStore::open(backend, &config.store.spool).context("opening the outage spool")?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let state = Arc::new(AppState::new(config, Storage::new(spool))?);
        seed_last_ok(state.store.events()).await;
        state.store.spool().start(Arc::new(QueuedPostbacks(Arc::downgrade(&state))));
        Ok(Application { listener, state, tls: tls.map(Arc::new) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.server.listen)
    }

    pub(crate) fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// The store it serves from, for tools that fill or read it beside the server (the
    /// benches seed it with clicks at chosen times).
    pub fn store(&self) -> Storage {
        self.state.store.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests, replays the
    /// outage spool if the store is back, and flushes the spool and the store, all within
    /// `shutdown_timeout_secs` of the signal. A spool the store could not take stays on
    /// disk and is replayed at the next start. SIGHUP reloads the TLS certificate and the
    /// country database.
    /// Conversions are forwarded in the background until the requests are drained, and
    /// links changed by other processes sharing the store are forgotten as they change.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let signalled = Arc::new(std::sync::OnceLock::new());
        let mark = signalled.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = mark.set(Instant::now());
        };
        let config = &self.state.config;
        let forwarder = Forwarder::spawn(self.state.store.outbox(), &config.forward, &config.server.public_url);
        let reloader = tokio::spawn(tls::reload_on_sighup(self.tls.clone(), config.geo.mmdb.clone()));
        let upkeep = self.state.metrics.clone().map(|handle| tokio::spawn(telemetry::upkeep(handle)));
        let link_changes = self.state.store.links().watch_changes().map(|changes| {
            let state = self.state.clone();
            tokio::spawn(async move { state.links.follow(changes).await })
        });
        server::serve(self.listener, self.state.clone(), self.tls, shutdown).await;
        reloader.abort();
        // Dropping the receiver also ends the store's subscription.
        if let Some(link_changes) = link_changes {
            link_changes.abort();
        }
        if let Some(upkeep) = upkeep {
            upkeep.abort();
        }
        if let Some(forwarder) = forwarder {
            forwarder.stop().await;
        }
        let deadline =
            signalled.get().copied().unwrap_or_else(Instant::now) + self.state.config.server.shutdown_timeout;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let state = self.state.clone();
        let finish = async move {
            let resolver = QueuedPostbacks(Arc::downgrade(&state));
            state.store.spool().close(&resolver).await.context("closing the outage spool")?;
            state.store.health().flush().await.context("flushing the store at shutdown")
        };
        match tokio::time::timeout(remaining, finish).await {
            Ok(done) => done,
            Err(_) => {
                // Out of time: the spool's records are already in the operating system's
                // buffers; one fsync makes them durable too.
                tracing::warn!("shutdown deadline reached before the store was flushed");
                self.state.store.spool().sync_and_report().context("syncing the outage spool at the shutdown deadline")
            }
        }
    }
}

/// Resolves the postbacks queued during a store outage, with the application's links,
/// networks and click-id keys.
struct QueuedPostbacks(Weak<AppState>);

#[async_trait]
impl Resolve for QueuedPostbacks {
    async fn resolve(&self, store: &dyn Store, queued: &QueuedPostback) -> StoreResult<()> {
        let Some(state) = self.0.upgrade() else {
            return Err(store::StoreError::Closed);
        };
        let Some(network) = state.links.network(&queued.network) else {
            tracing::error!(network = %queued.network, "queued postback for a network no longer configured; dropped");
            return Ok(());
        };
        let ctx = Context {
            clicks: store,
            conversions: store,
            events: store,
            links: &state.links,
            keyring: &state.keyring,
            spool: None,
            reconciled: false,
        };
        let answer = postback::resolve_queued(&ctx, network, queued).await?;
        if answer.status == EventStatus::Ok {
            telemetry::postback_ok(&network.name, queued.received_at);
        }
        Ok(())
    }
}

/// How many of the newest `ok` event-log entries seed the last-ok gauge at start-up: a
/// network whose last `ok` postback is older than that many others starts blank.
const LAST_OK_SEED: usize = 1000;

/// Sets each network's last-ok gauge from the event log, so that a restart does not
/// blank it. A store that cannot answer only leaves it blank; serving goes on.
async fn seed_last_ok(events: &dyn EventLog) {
    match events.events(Some(EventStatus::Ok), LAST_OK_SEED).await {
        // Newest first, and the gauge keeps the newest: every entry can be offered.
        Ok(list) => list.iter().for_each(|e| telemetry::postback_ok(&e.network, e.received_at)),
        Err(e) => tracing::warn!(error = %e, "the event log could not seed the last-ok postback gauge"),
    }
}
