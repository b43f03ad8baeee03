//! The redirect's HTTP/1.1 path: on any bytes, the head it takes is the head hyper reads
//! from the same bytes (method, target, version and every field, in order), hyper too
//! keeps the connection open after it (it reads a request that follows), and bytes the
//! path does not take are left as they were, for hyper.
#![no_main]

use std::convert::Infallible;
use std::sync::{Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use cakelink::server::h1::plain_head;
use http_body_util::Empty;
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

/// A plain request sent after the head taken: hyper must read it too.
const NEXT: &[u8] = b"GET /go/next/one HTTP/1.1\r\n\r\n";

/// The heads hyper's HTTP/1.1 server reads from `bytes`, in order.
fn hyper_heads(bytes: &[u8]) -> Vec<Parts> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
    });
    let seen: Mutex<Vec<Parts>> = Mutex::new(Vec::new());
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| {
            seen.lock().expect("not poisoned").push(req.into_parts().0);
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
        let send = async {
            client.write_all(bytes).await.expect("the duplex takes the bytes");
            client.shutdown().await.expect("half close");
            // Keeps the client's end open (its reads unread) until hyper is done.
            client
        };
        let (_, _client) = tokio::join!(conn, send);
    });
    seen.into_inner().expect("not poisoned")
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Some(ours) = plain_head(&mut buf) else {
        assert_eq!(&buf[..], data, "bytes not taken are left as they were");
        return;
    };
    let taken = data.len() - buf.len();
    assert_eq!(&buf[..], &data[taken..], "what follows the head is left as it was");
    let heads = hyper_heads(&[&data[..taken], NEXT].concat());
    assert_eq!(heads.len(), 2, "hyper reads the head taken, and the request after it");
    assert_eq!(heads[1].uri, "/go/next/one");
    let theirs = &heads[0];
    assert_eq!(ours.method, theirs.method);
    assert_eq!(ours.uri, theirs.uri);
    assert_eq!(ours.version, theirs.version);
    let fields = |p: &Parts| p.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
    assert_eq!(fields(&ours), fields(theirs));
});
