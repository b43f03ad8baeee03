//! The accept loop: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on one port.
//!
//! A connection cap bounds memory under a flood; accept errors (out of file
//! descriptors, say) are logged and survived; a connection that does not finish its
//! request head within `header_read_timeout_secs` is closed. On shutdown the listener
//! stops, in-flight requests finish, and connections that outlive the deadline are
//! dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::routes;

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send) {
    let cfg = &state.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true)
        // Room for the largest target and headers we accept, so that our own checks
        // answer 414/431 with a reason before hyper's buffer limit is reached.
        .max_buf_size((cfg.max_target_bytes + cfg.max_header_bytes + 4096).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size((cfg.max_target_bytes + cfg.max_header_bytes) as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let shutdown_timeout = cfg.shutdown_timeout;
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?shutdown_timeout, "connections still open at the shutdown deadline were dropped");
    }
}
