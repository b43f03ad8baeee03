//! The accept loop: HTTP/1.1 and HTTP/2 on one port, cleartext (HTTP/2 by prior
//! knowledge) or TLS (by ALPN). Each connection goes accept → optional TLS → serve.
//!
//! A connection cap bounds memory under a flood; accept errors (out of file
//! descriptors, say) are logged and survived; a connection that does not finish its
//! TLS handshake and request head within `header_read_timeout_secs` is closed, and so is
//! one with nothing in flight and no bytes moving for `idle_timeout_secs`. On shutdown
//! the listener stops, in-flight requests finish, and connections that outlive the
//! deadline are dropped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub mod h1;

use crate::routes;
use crate::state::AppState;
use crate::tls::Tls;

/// Turns transparent huge pages off for this process, where the system has them on
/// for every mapping (`always`), before the server allocates its working memory.
///
/// With them on, the first touch of fresh memory faults in and zeroes 2 MiB at once:
/// on a virtual machine several milliseconds of one thread's time, in which nothing else
/// on its core runs. The runtime's thread took such faults in the allocator under load,
/// and the store's housekeeping in its sort buffers; either stalled every redirect in
/// flight for that long. With 4 KiB pages the same zeroing comes in pieces of
/// microseconds, between which the scheduler can switch. Where the call is refused
/// (another kernel, a sandbox), the server runs as before.
pub fn small_pages_only() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::info!(error = %e, "transparent huge pages stay as the system sets them");
    }
}

/// Serves connections from `listener` (through `tls` when given) until `shutdown`
/// completes.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send,
) {
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
    // For a connection the redirect's own path has answered on: HTTP/1.1 it is, and a
    // later HTTP/2 preface is not to switch it.
    let h1_builder = Arc::new(builder.clone().http1_only());
    let builder = Arc::new(builder);
    // `true` once shutdown starts; the sender's `closed()` tells when every connection
    // task (each holds a receiver) has ended.
    let (draining, _) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let shutdown_timeout = cfg.shutdown_timeout;
    let header_read_timeout = cfg.header_read_timeout;
    let idle_timeout = cfg.idle_timeout;
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
        let activity = Arc::new(Activity::default());
        let fast_state = state.clone();
        let state = state.clone();
        let in_service = activity.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let in_flight = InFlight::start(&in_service);
            async move {
                let res = routes::handle(&state, req, peer).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let builder = builder.clone();
        let h1_builder = h1_builder.clone();
        let mut draining = draining.subscribe();
        let tls = tls.clone();
        tokio::spawn(async move {
            let io = Tracked { inner: stream, activity: activity.clone(), front: Bytes::new() };
            match tls {
                None => {
                    // hyper-util reads the first bytes (HTTP/1.1, or an HTTP/2 preface?) with
                    // no deadline and hyper's header timeout starts only after that: bound
                    // it too, or a client that connects and sends nothing holds the
                    // connection forever.
                    if tokio::time::timeout(header_read_timeout, first_bytes(&io.inner)).await.is_err() {
                        tracing::debug!(%peer, "no request within the header read timeout; closing");
                    } else {
                        // Waiting for its next request, a connection on the redirect's path
                        // is bounded as hyper bounds it: by the header read timeout.
                        let idle = idle_timeout.min(header_read_timeout);
                        let cleartext = Cleartext { state: &fast_state, peer, activity: &activity, idle };
                        if let Some((io, answered)) = cleartext.serve(io, &mut draining).await {
                            let builder = if answered { &h1_builder } else { &builder };
                            serve_connection(builder, io, service, &activity, idle_timeout, draining).await;
                        }
                    }
                }
                Some(tls) => match tokio::time::timeout(header_read_timeout, tls.acceptor().accept(io)).await {
                    Ok(Ok(io)) => {
                        serve_connection(&builder, io, service, &activity, idle_timeout, draining).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "no TLS handshake within the header read timeout; closing"),
                },
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = draining.send(true);
    if tokio::time::timeout(shutdown_timeout, draining.closed()).await.is_err() {
        tracing::warn!(timeout = ?shutdown_timeout, "connections still open at the shutdown deadline were dropped");
    }
}

/// A cleartext connection, served by the redirect's own HTTP/1.1 path ([`h1`]) until a
/// request is not a plain redirect, and by hyper from there on.
struct Cleartext<'a> {
    state: &'a AppState,
    peer: SocketAddr,
    activity: &'a Arc<Activity>,
    /// How long the connection may wait for its next request, nothing in flight.
    idle: Duration,
}

impl Cleartext<'_> {
    /// Serves plain redirects on `io`; gives it back, holding the bytes not yet
    /// answered, when hyper is to serve the rest of the connection, with whether any
    /// request was answered here.
    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut io: Tracked<IO>,
        draining: &mut watch::Receiver<bool>,
    ) -> Option<(Tracked<IO>, bool)> {
        let mut buf = BytesMut::new();
        let phase = h1::Phase::default();
        let answered = {
            let fast = h1::serve(&mut io, &mut buf, self.state, self.peer, self.activity, &phase);
            tokio::pin!(fast);
            loop {
                tokio::select! {
                    left = fast.as_mut() => match left {
                        h1::Left::Closed => return None,
                        h1::Left::ToHyper { answered } => break answered,
                    },
                    // As hyper's graceful close: the answer in progress is the last; a
                    // connection waiting for its next request closes now.
                    _ = draining.wait_for(|d| *d), if !phase.closing.load(Ordering::Relaxed) => {
                        phase.closing.store(true, Ordering::Relaxed);
                        if !phase.answering.load(Ordering::Relaxed) {
                            return None;
                        }
                    }
                    // Nothing in flight and no byte moving for that long.
                    _ = self.activity.idle_for(self.idle) => return None,
                }
            }
        };
        io.front = buf.freeze();
        Some((io, answered))
    }
}

/// Serves one connection until it ends, starting a graceful close (current requests
/// finish, then the connection closes) when the server drains or when the connection
/// goes idle; a connection still silent one idle period after that is dropped.
async fn serve_connection<IO, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    service: S,
    activity: &Activity,
    idle_timeout: Duration,
    mut draining: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<routes::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = draining.wait_for(|d| *d), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle_for(idle_timeout) => {
                if closing {
                    tracing::debug!("connection still idle after a graceful close; dropping it");
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing: bytes moved (a counter, so the I/O path reads no clock)
/// and requests in flight.
#[derive(Default)]
struct Activity {
    bytes: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// Completes once no request has been in flight and no byte has moved for `idle`
    /// (checked every quarter of it, so within 1.25 × `idle`).
    async fn idle_for(&self, idle: Duration) {
        let step = idle / 4;
        let mut seen = self.bytes.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        while quiet < idle {
            tokio::time::sleep(step).await;
            let now = self.bytes.load(Ordering::Relaxed);
            if now != seen || self.in_flight.load(Ordering::Relaxed) > 0 {
                seen = now;
                quiet = Duration::ZERO;
            } else {
                quiet += step;
            }
        }
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that counts the bytes it moves into its connection's [`Activity`].
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    /// Bytes read (and counted) already, to be read again first: what the redirect's
    /// own path read and left to hyper.
    front: Bytes,
}

impl<IO> Tracked<IO> {
    fn moved(&self, n: usize) {
        if n > 0 {
            self.activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.front.is_empty() && buf.remaining() > 0 {
            let n = self.front.len().min(buf.remaining());
            buf.put_slice(&self.front.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.moved(buf.filled().len() - before);
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
