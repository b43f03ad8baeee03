//! The redirect's own HTTP/1.1 path, for cleartext connections.
//!
//! A redirect is a request head with no body, answered by a response head with no body.
//! A cleartext connection starts here. As long as each request is a plain one for
//! `/go/...`, it is read, answered and written here, without hyper's connection
//! machinery. The first request that is anything else goes to hyper, with every byte not
//! yet answered, and hyper serves the connection from there on. That covers another
//! route, another method, a body or an `Expect`, an upgrade, `Connection: close`,
//! HTTP/1.0 or HTTP/2, a head that does not parse, and a head not yet whole after a read.
//! So every answer to a request outside the plain case is hyper's, as before.
//!
//! A plain request's head is parsed with `httparse` under hyper's default settings. It
//! becomes the same `Uri` and `HeaderMap` hyper would build, and is answered by the same
//! code (`routes::go`). A fuzz target (`fuzz/fuzz_targets/h1_head.rs`) checks that the
//! head taken here is the one hyper reads from the same bytes.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, Uri, Version};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Activity, InFlight};
use crate::clock::now_secs;
use crate::routes::{self, Body};
use crate::state::AppState;

/// Most header fields a request on this path may have; one with more goes to hyper,
/// which takes up to 100.
const MAX_HEADERS: usize = 48;

/// Room for a request head, ahead of each read.
const READ_AHEAD: usize = 4096;

/// A head's fields: each name, and where its value sits in the head's bytes.
type Fields = SmallVec<[(HeaderName, Range<usize>); 16]>;

/// How a connection left this path.
pub(super) enum Left {
    /// The connection ended, or the server is draining and its last answer is out.
    Closed,
    /// A request this path does not serve: hyper takes the connection, reading what is
    /// in the buffer first. `answered` tells whether this path answered any request
    /// before: the connection is HTTP/1.1 then, and stays so.
    ToHyper { answered: bool },
}

/// Where a connection on this path stands, for the loop that drains and times it out.
#[derive(Default)]
pub(super) struct Phase {
    /// The server is draining: the answer in progress is the last, and says so.
    pub(super) closing: AtomicBool,
    /// A request was read and its answer is not yet all written.
    pub(super) answering: AtomicBool,
}

/// Serves plain `/go` requests on `io` until the connection ends or a request is not
/// one. `buf` keeps what was read and not yet answered.
pub(super) async fn serve<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    state: &AppState,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    phase: &Phase,
) -> Left
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(512);
    // The last request's header map, emptied: its memory serves the next (as hyper does).
    let mut spare = HeaderMap::new();
    let mut answered = false;
    loop {
        // Draining began while the last answer was on its way: it was the last.
        if phase.closing.load(Ordering::Relaxed) {
            return Left::Closed;
        }
        if buf.is_empty() {
            // Reuses the buffer's memory once everything in it was answered.
            buf.clear();
            buf.reserve(READ_AHEAD);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return Left::Closed,
                Ok(_) => {}
            }
        }
        let Some(head) = take_head(buf, std::mem::take(&mut spare)) else {
            return Left::ToHyper { answered };
        };
        phase.answering.store(true, Ordering::Relaxed);
        let in_flight = InFlight::start(activity);
        let res = routes::go(state, &head, peer).await;
        // As on hyper's path, a request is in flight until its answer is ready: a client
        // that stops reading its answers is idle from here.
        drop(in_flight);
        let last = phase.closing.load(Ordering::Relaxed);
        encode(res, head.method == Method::HEAD, last, &mut out).await;
        let written = io.write_all(&out).await;
        out.clear();
        phase.answering.store(false, Ordering::Relaxed);
        if written.is_err() || last {
            return Left::Closed;
        }
        answered = true;
        spare = head.headers;
        spare.clear();
    }
}

/// Takes a plain `/go` request head off the front of `buf`: HTTP/1.1, `GET` or `HEAD`, a
/// target starting `/go/`, no body, no `Expect` or `Upgrade`, and `Connection` absent or
/// `keep-alive`. Anything else, or a head not yet whole, leaves `buf` as it was and
/// gives `None`. The head is hyper's reading of the same bytes; its target and values
/// share `buf`'s memory.
pub fn plain_head(buf: &mut BytesMut) -> Option<Parts> {
    take_head(buf, HeaderMap::new())
}

/// [`plain_head`], with `headers` (empty) to hold the head's fields.
fn take_head(buf: &mut BytesMut, headers: HeaderMap) -> Option<Parts> {
    let (len, method, target, fields) = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return None,
        };
        if req.version != Some(1) {
            return None;
        }
        let method = match req.method? {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            _ => return None,
        };
        let path = req.path?;
        if !path.starts_with("/go/") {
            return None;
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let target = offset(path.as_bytes())..offset(path.as_bytes()) + path.len();
        let mut fields = Fields::new();
        for h in req.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let plain = if name == CONNECTION {
                h.value.eq_ignore_ascii_case(b"keep-alive")
            } else {
                name != CONTENT_LENGTH && name != TRANSFER_ENCODING && name != EXPECT && name != UPGRADE
            };
            if !plain {
                return None;
            }
            let start = offset(h.value);
            fields.push((name, start..start + h.value.len()));
        }
        (len, method, target, fields)
    };
    let bytes = buf.split_to(len).freeze();
    match head_of(&bytes, method, target, fields, headers) {
        Some(head) => Some(head),
        None => {
            restore_bytes(buf, &bytes);
            None
        }
    }
}

/// The request head, built as hyper builds it from the same bytes.
fn head_of(
    bytes: &Bytes,
    method: Method,
    target: Range<usize>,
    fields: Fields,
    mut headers: HeaderMap,
) -> Option<Parts> {
    let uri = Uri::from_maybe_shared(bytes.slice(target)).ok()?;
    headers.reserve(fields.len());
    for (name, value) in fields {
        headers.append(name, HeaderValue::from_maybe_shared(bytes.slice(value)).ok()?);
    }
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = uri;
    head.version = Version::HTTP_11;
    head.headers = headers;
    Some(head)
}

/// Puts bytes back in front of `buf`.
fn restore_bytes(buf: &mut BytesMut, front: &[u8]) {
    let mut whole = BytesMut::with_capacity(front.len() + buf.len());
    whole.extend_from_slice(front);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// Writes `res` as HTTP/1.1 into `out`: the status line, its fields, `content-length`
/// when it has none (unless it is `0` for a `HEAD`), `connection: close` when `last`,
/// `date`, and the body unless the request was `HEAD`.
async fn encode(res: Response<Body>, is_head: bool, last: bool, out: &mut Vec<u8>) {
    let (head, body) = res.into_parts();
    // A `Full` body is whole already: collecting it does not wait.
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // As hyper: no `content-length: 0` for a `HEAD` whose answer would have no body.
    let no_length = is_head && body.is_empty();
    if !no_length && !head.headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
    if !is_head {
        out.extend_from_slice(&body);
    }
}

/// Calls `f` with the `Date` header's value for now, formatted once a second per thread.
fn date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = now_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        }
        f(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(text: &str) -> (Option<Parts>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (plain_head(&mut buf), buf)
    }

    #[test]
    fn a_plain_redirect_head_is_taken_and_what_follows_stays() {
        let (head, rest) = take(
            "GET /go/cake/demo?utm_source=fb&s3=a+b HTTP/1.1\r\nHost: x\r\nUser-Agent: UA\r\nuser-agent: two\r\nConnection: Keep-Alive\r\n\r\nGET /go",
        );
        let head = head.expect("taken");
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/go/cake/demo");
        assert_eq!(head.uri.query(), Some("utm_source=fb&s3=a+b"));
        assert_eq!(head.version, Version::HTTP_11);
        let agents: Vec<_> = head.headers.get_all("user-agent").iter().collect();
        assert_eq!(agents, ["UA", "two"]);
        assert_eq!(head.headers.len(), 4);
        assert_eq!(&rest[..], b"GET /go");
    }

    #[test]
    fn anything_but_a_plain_redirect_head_is_left_whole() {
        for text in [
            "GET /go/cake/demo HTTP/1.1\r\nHost: x\r\n",
            "GET /go/cake/demo HTTP/1.0\r\n\r\n",
            "POST /go/cake/demo HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n\r\n",
            "GET http://x/go/cake/demo HTTP/1.1\r\n\r\n",
            "GET /go/cake/demo HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let (head, rest) = take(text);
            assert!(head.is_none(), "{text:?} was taken");
            assert_eq!(&rest[..], text.as_bytes(), "{text:?} was not left whole");
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET /go/cake/demo HTTP/1.1\r\n{many}\r\n");
        assert_eq!(take(&text).1, text.as_bytes());
    }
}
