//! The floor hyper and tokio set for the redirect: a server that answers every request
//! with the 302 cakelink's `/go` sends (same status, headers and body), and does nothing
//! else. `benches/load.sh` measures it beside nginx and cakelink, so the gap between
//! nginx and cakelink splits into what hyper and tokio cost and what cakelink adds.
//!
//! The settings that matter for a redirect's cost can each be switched:
//!
//! ```text
//! hyper_floor PORT [--runtime multi|current] [--http1-only] [--no-date]
//!                  [--writev auto|on|off] [--max-buf-size BYTES] [--no-header-timeout]
//! ```
//!
//! The defaults are cakelink's own: the multi-threaded runtime (one worker when pinned to
//! one core), hyper-util's automatic HTTP/1.1 and HTTP/2 builder, the date header, hyper's
//! own choice of write vectoring, cakelink's read buffer limit, and its default header
//! read timeout (10 s), which arms a timer for every request head.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The offer URL of the benches' links, with a click id as cakelink mints them.
const LOCATION_VALUE: &str = "https://offers.example.com/?a=200&c=761&s1=yes&s2=3G3DuGDuOR53QIu3AyGH8R05neFSPjIC";

struct Settings {
    port: u16,
    current_thread: bool,
    http1_only: bool,
    date: bool,
    writev: Option<bool>,
    max_buf_size: usize,
    header_timeout: bool,
}

const USAGE: &str = "usage: hyper_floor PORT [--runtime multi|current] [--http1-only] [--no-date] \
                     [--writev auto|on|off] [--max-buf-size BYTES] [--no-header-timeout]";

/// The settings the command line asks for, or what is wrong with it.
fn settings() -> Result<Settings, String> {
    let mut args = std::env::args().skip(1);
    let port = args.next().ok_or("no port given")?;
    let port = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
    // cakelink's default: the largest target and headers it accepts, and room for more.
    let mut s = Settings {
        port,
        current_thread: false,
        http1_only: false,
        date: true,
        writev: None,
        max_buf_size: 81_920,
        header_timeout: true,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--runtime" => match value("--runtime")?.as_str() {
                "multi" => s.current_thread = false,
                "current" => s.current_thread = true,
                other => return Err(format!("--runtime is multi or current, not {other:?}")),
            },
            "--http1-only" => s.http1_only = true,
            "--no-date" => s.date = false,
            "--no-header-timeout" => s.header_timeout = false,
            "--writev" => {
                s.writev = match value("--writev")?.as_str() {
                    "auto" => None,
                    "on" => Some(true),
                    "off" => Some(false),
                    other => return Err(format!("--writev is auto, on or off, not {other:?}")),
                }
            }
            "--max-buf-size" => {
                let v = value("--max-buf-size")?;
                s.max_buf_size = v.parse().map_err(|_| format!("--max-buf-size {v:?} is not a size"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(s)
}

fn redirect() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::FOUND;
    res.headers_mut().insert(LOCATION, HeaderValue::from_static(LOCATION_VALUE));
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    res
}

async fn serve(s: Settings) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], s.port))).await?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new()).keep_alive(true).auto_date_header(s.date).max_buf_size(s.max_buf_size);
        if let Some(writev) = s.writev {
            h1.writev(writev);
        }
        if s.header_timeout {
            h1.header_read_timeout(std::time::Duration::from_secs(10));
        }
    }
    builder.http2().timer(TokioTimer::new()).auto_date_header(s.date);
    let builder = if s.http1_only { builder.http1_only() } else { builder };
    let builder = std::sync::Arc::new(builder);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(|_req| async { Ok::<_, Infallible>(redirect()) });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn main() -> ExitCode {
    let s = match settings() {
        Ok(s) => s,
        Err(problem) => {
            eprintln!("hyper_floor: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = if s.current_thread {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    match runtime.and_then(|runtime| runtime.block_on(serve(s))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
