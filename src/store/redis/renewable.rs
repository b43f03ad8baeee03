//! A cluster connection that is replaced when it stops answering.
//!
//! The cluster client repairs itself after `MOVED`, `ASK` and failovers, but after a
//! failover in which a dead master comes back as a replica it has been seen to wedge: a
//! slot refresh begins and never completes, and every request on the connection then
//! times out for good while the cluster itself is healthy. Waiting cannot mend that, so
//! after [`RENEW_AFTER`] requests in a row fail for want of a connection (I/O, a timeout,
//! a refused or dropped connection, no connection for the slot), a new connection is
//! opened from the same client and takes the old one's place for every holder at once.
//! At most one renewal runs at a time, and one starts at most every [`RENEW_EVERY`], so
//! a real outage costs a connection attempt every few seconds and no more.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

use crate::clock::now_ms;

/// Requests in a row that failed for want of a connection before one is opened anew.
const RENEW_AFTER: u32 = 3;
/// Least time between two renewals.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long opening the new connection may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared, replaceable cluster connection.
pub(super) struct Renewable {
    client: ClusterClient,
    current: ArcSwap<ClusterConnection>,
    failures: AtomicU32,
    renewing: AtomicBool,
    /// When the last renewal started (ms).
    renewed_at: AtomicI64,
    /// Renewals done, for the log and the tests.
    renewals: AtomicU32,
}

impl Renewable {
    /// Opens the first connection.
    pub(super) async fn connect(client: ClusterClient) -> RedisResult<Arc<Renewable>> {
        let first = client.get_async_connection().await?;
        Ok(Arc::new(Renewable {
            client,
            current: ArcSwap::from_pointee(first),
            failures: AtomicU32::new(0),
            renewing: AtomicBool::new(false),
            renewed_at: AtomicI64::new(0),
            renewals: AtomicU32::new(0),
        }))
    }

    /// The connection to send a request on (a cheap handle).
    pub(super) fn connection(&self) -> ClusterConnection {
        (**self.current.load()).clone()
    }

    /// Notes how a request went; enough failures in a row start a renewal.
    pub(super) fn note<T>(self: &Arc<Self>, result: &RedisResult<T>) {
        match result {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(e) if wants_connection(e) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= RENEW_AFTER {
                    self.renew();
                }
            }
            Err(_) => {}
        }
    }

    fn renew(self: &Arc<Self>) {
        let now = now_ms();
        if now - self.renewed_at.load(Ordering::Relaxed) < RENEW_EVERY.as_millis() as i64
            || self.renewing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.renewed_at.store(now, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(RENEW_TIMEOUT, this.client.get_async_connection()).await {
                Ok(Ok(fresh)) => {
                    this.current.store(Arc::new(fresh));
                    this.failures.store(0, Ordering::Relaxed);
                    let n = this.renewals.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(renewals = n, "the Redis Cluster connection stopped answering; opened a new one");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not open a new Redis Cluster connection; will retry"),
                Err(_) => tracing::warn!("opening a new Redis Cluster connection timed out; will retry"),
            }
            this.renewing.store(false, Ordering::Release);
        });
    }
}

/// Whether a failure says the request found no working connection, rather than that
/// Redis answered with an error.
fn wants_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_connection_counts() {
        let io: RedisError = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert!(wants_connection(&io));
        let timeout: RedisError = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert!(wants_connection(&timeout));
        let script: RedisError = (ErrorKind::Server(ServerErrorKind::ResponseError), "ERR bad script").into();
        assert!(!wants_connection(&script));
        let down: RedisError = (ErrorKind::Server(ServerErrorKind::ClusterDown), "CLUSTERDOWN").into();
        assert!(wants_connection(&down));
    }
}
