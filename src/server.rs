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
        .max_buf_size((cfg.max_target_bytes + cfg.max_header_bytes + 4096).max(64 * 1024 + cfg.max_header_bytes));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size((cfg.max_target_bytes + cfg.max_header_bytes) as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let shutdown_timeout = cfg.shutdown_timeout;
    let header_read_timeout = cfg.header_read_timeout;
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
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            // hyper-util reads the first bytes (HTTP/1.1, or an HTTP/2 preface?) with no
            // deadline and hyper's header timeout starts only after that: bound it too, or
            // a client that connects and sends nothing holds the connection forever.
            if tokio::time::timeout(header_read_timeout, first_bytes(&stream)).await.is_err() {
                tracing::debug!(%peer, "no request within the header read timeout; closing");
                drop(permit);
                return;
            }
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
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

/// Waits until a connection has sent enough for hyper-util to tell HTTP/1.1 from
/// HTTP/2 (the first byte, or the whole preface when it starts like one), or closed.
async fn first_bytes(stream: &tokio::net::TcpStream) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(n) if n > 0 && n < PREFACE.len() && buf[..n] == PREFACE[..n] => {
                // Part of a preface: peek again shortly rather than spin on readiness.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return,
        }
    }
}
