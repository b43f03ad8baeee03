//! Malformed, oversized and slow requests (DESIGN §11): each gets a clear 4xx or a
//! closed connection, never a panic, and the server keeps serving afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{count, spawn_app, spawn_app_edited, Backend, TestApp, POSTBACK_KEY};
use crate::on_both_stores;

/// Upper bound for the server to answer or hang up; a bound, not a timing target.
pub(crate) const BOUND: Duration = Duration::from_secs(5);

/// The server still redirects, and records, after whatever came before.
async fn assert_still_serves(app: &TestApp) {
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = app.click("demo").await;
    assert_eq!(app.api(&format!("clicks/{id}")).await["click_id"], id.as_str());
}

/// Asserts a JSON error answer with `status` and returns its reason.
async fn assert_json_error(res: reqwest::Response, status: StatusCode, context: &str) -> String {
    assert_eq!(res.status(), status, "{context}");
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(content_type.starts_with("application/json"), "{context}: content type {content_type:?}");
    let body: Value = res.json().await.unwrap_or_else(|e| panic!("{context}: JSON body: {e}"));
    let reason = body["error"].as_str().unwrap_or_else(|| panic!("{context}: an error reason in {body}"));
    assert!(!reason.is_empty(), "{context}");
    reason.to_owned()
}

/// Writes `bytes` on a fresh connection and reads until the server closes it, within
/// [`BOUND`]. Returns what the server sent (possibly nothing).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and hang up before it read everything; a failed write is fine.
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream).await
}

/// Reads until EOF (or a reset, which also closes); panics when the server neither
/// closes nor stops talking within [`BOUND`].
pub(crate) async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {BOUND:?}; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// The status code of a raw HTTP/1.1 answer, if any came.
fn raw_status(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn oversized_target_is_414(backend: Backend) {
    let app = spawn_app(backend).await;
    // Just under the 8 KiB limit still redirects.
    let under = format!("/go/cake/demo?pad={}", "a".repeat(8 * 1024 - 100));
    assert_eq!(app.get(&under).await.status(), StatusCode::FOUND);

    let over = format!("/go/cake/demo?pad={}", "a".repeat(8 * 1024 + 1));
    let reason = assert_json_error(app.get(&over).await, StatusCode::URI_TOO_LONG, "9 KiB target").await;
    assert!(reason.contains("8192"), "{reason}");
    let over_path = format!("/go/cake/{}", "p".repeat(9 * 1024));
    assert_json_error(app.get(&over_path).await, StatusCode::URI_TOO_LONG, "9 KiB path").await;

    // Far past the limit, and past the server's read buffer: still a 4xx, then a close.
    let huge = format!("GET /go/cake/demo?pad={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(40 * 1024));
    let answer = raw_exchange(app.addr, huge.as_bytes()).await;
    if let Some(status) = raw_status(&answer) {
        assert!(status == 414 || status == 431, "a 40 KiB target answered {status}");
    }

    // Only the one click above counted.
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 1);
    assert_still_serves(&app).await;
    app.stop().await;
}

async fn oversized_headers_are_431(backend: Backend) {
    let app = spawn_app(backend).await;
    let ok = app
        .client
        .get(format!("{}/go/cake/demo", app.base))
        .header("user-agent", "Mozilla/5.0")
        .header("x-pad", "a".repeat(15 * 1024));
    assert_eq!(ok.send().await.expect("request").status(), StatusCode::FOUND, "15 KiB of headers fit");

    let over = app.client.get(format!("{}/go/cake/demo", app.base)).header("x-pad", "a".repeat(17 * 1024));
    match over.send().await {
        Ok(res) => {
            let reason = assert_json_error(res, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "one 17 KiB header").await;
            assert!(reason.contains("16384"), "{reason}");
        }
        Err(e) => panic!("a 17 KiB header gets an answer, not {e}"),
    }
    // Many headers adding up past the limit.
    let mut many = app.client.get(format!("{}/go/cake/demo", app.base));
    for i in 0..20 {
        many = many.header(format!("x-pad-{i}"), "b".repeat(1000));
    }
    assert_json_error(many.send().await.expect("request"), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "20 × 1 KB")
        .await;

    // Past the read buffer: hyper answers 431 itself, or hangs up.
    let huge = format!("GET /go/cake/demo HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
    let answer = raw_exchange(app.addr, huge.as_bytes()).await;
    if let Some(status) = raw_status(&answer) {
        assert_eq!(status, 431, "{}", String::from_utf8_lossy(&answer));
    }

    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 1);
    assert_still_serves(&app).await;
    app.stop().await;
}

async fn bad_path_encoding_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        ("/go/cake/%zz", "percent"),
        ("/go/cake/demo%2", "percent"),
        ("/go/%zz/demo", "percent"),
        ("/go/cake/%ff%fe", "utf-8"),
        ("/go/cake/a%00b", "control"),
        ("/go/cake/a%0d%0ab", "control"),
        ("/go/cake/a%0ab", "control"),
    ];
    for (path, why) in cases {
        let res = app.get(path).await;
        let reason = assert_json_error(res, StatusCode::BAD_REQUEST, path).await;
        assert!(reason.to_ascii_lowercase().contains(why), "{path}: {reason:?} should mention {why}");
    }
    // The same checks guard the postback path.
    let res = app.get_as(&format!("/collect/%zz/{POSTBACK_KEY}?s2=x"), None).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 0);
    assert_still_serves(&app).await;
    app.stop().await;
}

async fn raw_control_characters_in_the_request_line(backend: Backend) {
    let app = spawn_app(backend).await;
    let requests: [&[u8]; 5] = [
        b"GET /go/cake/a\0b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /go/cake/a\rb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /go/cake/a\nb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /go/cake/demo HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n",
        b"\x00\x01\x02 garbage\r\n\r\n",
    ];
    for request in requests {
        let answer = raw_exchange(app.addr, request).await;
        let status = raw_status(&answer);
        assert!(
            status.is_none_or(|s| s == 400),
            "{:?} answered {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&answer)
        );
        assert_still_serves(&app).await;
    }
    // No click was counted for any of them: only the ones assert_still_serves made.
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), requests.len() as u64);
    app.stop().await;
}

async fn unknown_routes_and_networks_are_404(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/nope", "/uix", "/go", "/go/cake", "/healthz/extra", "/collect/cake"] {
        assert_json_error(app.get(path).await, StatusCode::NOT_FOUND, path).await;
    }
    // `/` is the dashboard's front door (and 404 with the dashboard off: tests/it/dashboard.rs).
    let res = app.get("/").await;
    assert_eq!((res.status(), crate::helpers::location(&res)), (StatusCode::FOUND, "/ui/".to_owned()));
    let res = app.get("/go/nonet/demo").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["cache-control"], "no-store, private");
    let res = app.get_as(&format!("/collect/nonet/{POSTBACK_KEY}?s2=x"), None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_still_serves(&app).await;
    app.stop().await;
}

async fn wrong_methods_are_405(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (Method::POST, "/go/cake/demo".to_owned(), "GET"),
        (Method::DELETE, "/go/cake/demo".to_owned(), "GET"),
        (Method::PUT, format!("/collect/cake/{POSTBACK_KEY}"), "POST"),
        (Method::DELETE, format!("/collect/cake/{POSTBACK_KEY}"), "POST"),
        (Method::PATCH, "/healthz".to_owned(), "GET"),
        (Method::POST, "/readyz".to_owned(), "GET"),
        (Method::PUT, "/metrics".to_owned(), "GET"),
    ];
    for (method, path, allowed) in cases {
        let res = app.client.request(method.clone(), format!("{}{path}", app.base)).send().await.expect("request");
        let context = format!("{method} {path}");
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{context}");
        let allow = res
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{context}: an Allow header"))
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(allow.contains(allowed), "{context}: Allow {allow:?}");
        assert_json_error(res, StatusCode::METHOD_NOT_ALLOWED, &context).await;
    }
    // A refused method is neither a click nor a postback.
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks") + count(&row, "bot_hits"), 0, "{row}");
    assert!(app.api("events?limit=10").await["events"].as_array().expect("events").is_empty());
    assert_still_serves(&app).await;
    app.stop().await;
}

async fn oversized_and_invalid_postback_bodies(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let url = format!("{}/collect/cake/{POSTBACK_KEY}", app.base);

    let big = format!("s2={id}&price=7&pad={}", "a".repeat(65 * 1024));
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["status"], "rejected", "{body}");

    for bad in ["{\"s2\": ", "[1,2]", "not json at all"] {
        let res =
            app.client.post(&url).header("content-type", "application/json").body(bad).send().await.expect("request");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["status"], "rejected", "{bad}: {body}");
        assert!(body["reason"].as_str().is_some_and(|r| r.to_ascii_lowercase().contains("json")), "{bad}: {body}");
    }
    // A form body that is not UTF-8 or has a broken escape.
    let res = app.client.post(&url).body(vec![b's', b'2', b'=', 0xff, 0xfe]).send().await.expect("request");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app.client.post(&url).body(format!("s2={id}&price=%zz")).send().await.expect("request");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // None of them recorded a conversion, and each is in the event log as rejected.
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 0, "{row}");
    let events = app.api("events?status=rejected&limit=100").await;
    assert_eq!(events["events"].as_array().expect("events").len(), 6, "{events}");

    // The same click still converts afterwards.
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(format!("{{\"s2\":\"{id}\",\"price\":\"7\"}}"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 1);
    assert_still_serves(&app).await;
    app.stop().await;
}

/// A head that never ends is cut off by `header_read_timeout_secs` (1 in the test config).
async fn unfinished_headers_are_cut_off(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(b"GET /go/cake/demo HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let answer = read_until_closed(&mut stream).await;
    if let Some(status) = raw_status(&answer) {
        assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
    }
    // The unfinished request was never a click.
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 0);
    assert_still_serves(&app).await;
    app.stop().await;
}

/// A connection that sends nothing at all is cut off the same way.
async fn silent_connections_are_cut_off(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut silent = TcpStream::connect(app.addr).await.expect("connect");
    let mut almost_h2 = TcpStream::connect(app.addr).await.expect("connect");
    almost_h2.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let mut one_byte = TcpStream::connect(app.addr).await.expect("connect");
    one_byte.write_all(b"G").await.expect("write");
    for stream in [&mut silent, &mut almost_h2, &mut one_byte] {
        let answer = read_until_closed(stream).await;
        if let Some(status) = raw_status(&answer) {
            assert_eq!(status, 408, "{}", String::from_utf8_lossy(&answer));
        }
    }
    assert_still_serves(&app).await;
    app.stop().await;
}

/// A config whose `[server]` section sets `keys` too (the head timeout made long, so
/// that only the limit under test can close a connection).
async fn spawn_with_server_keys(backend: Backend, keys: &str) -> TestApp {
    spawn_app_edited(backend, |text| {
        text.replace("header_read_timeout_secs = 1\n", &format!("header_read_timeout_secs = 30\n{keys}\n"))
    })
    .await
}

/// Reads one HTTP/1.1 answer (head and `content-length` body) within [`BOUND`],
/// leaving the connection open.
pub(crate) async fn read_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| panic!("no complete answer within {BOUND:?}; got {:?}", String::from_utf8_lossy(&got)))
}

/// An HTTP/1.1 keep-alive connection with nothing more to ask is closed after
/// `idle_timeout_secs`.
async fn idle_http1_connections_are_closed(backend: Backend) {
    let app = spawn_with_server_keys(backend, "idle_timeout_secs = 1").await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Still open for a second request right away: keep-alive works.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then silence: the server hangs up, having sent nothing more.
    let rest = read_until_closed(&mut stream).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_still_serves(&app).await;
    app.stop().await;
}

/// An HTTP/2 connection that sent the preface and went silent is closed after
/// `idle_timeout_secs`, with a GOAWAY first.
async fn idle_http2_connections_are_closed(backend: Backend) {
    let app = spawn_with_server_keys(backend, "idle_timeout_secs = 1").await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write");
    let sent = read_until_closed(&mut stream).await;
    // Frames: 3 bytes length, 1 type, 1 flags, 4 stream id, then the payload.
    let mut types = Vec::new();
    let mut rest = &sent[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    assert_eq!(types.first(), Some(&SETTINGS), "the server's preface comes first: {types:?}");
    assert!(types.contains(&GOAWAY), "a GOAWAY before the close: {types:?}");
    assert_still_serves(&app).await;
    app.stop().await;
}

/// With `max_connections = 2` a third connection waits in the accept queue until one of
/// the two closes, and is then served.
async fn connections_beyond_the_cap_wait(backend: Backend) {
    let app = spawn_with_server_keys(backend, "max_connections = 2").await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(app.addr).await.expect("connect");
    first.write_all(request).await.expect("write");
    assert!(read_answer(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(app.addr).await.expect("connect");
    second.write_all(request).await.expect("write");
    assert!(read_answer(&mut second).await.starts_with("HTTP/1.1 200"));

    let mut third = TcpStream::connect(app.addr).await.expect("the kernel queues the connection");
    third.write_all(request).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(early.is_err(), "the third connection was served while two were open: {early:?}");

    drop(first);
    let answer = read_answer(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    drop(third);
    app.stop().await;
}

on_both_stores!(oversized_and_invalid_postback_bodies, wrong_methods_are_405, bad_path_encoding_is_400);

mod embedded_store {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_target_is_414() {
        super::oversized_target_is_414(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_headers_are_431() {
        super::oversized_headers_are_431(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_control_characters_in_the_request_line() {
        super::raw_control_characters_in_the_request_line(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_routes_and_networks_are_404() {
        super::unknown_routes_and_networks_are_404(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unfinished_headers_are_cut_off() {
        super::unfinished_headers_are_cut_off(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_are_cut_off() {
        super::silent_connections_are_cut_off(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_http1_connections_are_closed() {
        super::idle_http1_connections_are_closed(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_http2_connections_are_closed() {
        super::idle_http2_connections_are_closed(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_cap_wait() {
        super::connections_beyond_the_cap_wait(Backend::Embedded).await
    }
}
