//! The redirect's own HTTP/1.1 path (`server::h1`): plain `/go` requests on cleartext
//! HTTP/1.1 are answered there, and a connection moves to hyper at its first request
//! that is anything else, losing no byte and no answer on the way.

use std::collections::HashSet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bad_input::{read_answer, read_until_closed, BOUND};
use crate::helpers::{count, spawn_app, Backend};

const GO: &str =
    "GET /go/cake/demo?utm_source=fb&s3=a+b HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (iPhone)\r\n\r\n";

/// The `s2` click id in a raw answer's `location`.
fn click_id(answer: &str) -> String {
    let location =
        answer.lines().find_map(|l| l.strip_prefix("location: ")).unwrap_or_else(|| panic!("a location in {answer}"));
    let url = url::Url::parse(location).expect("absolute location");
    url.query_pairs().find(|(k, _)| k == "s2").map(|(_, v)| v.into_owned()).expect("s2")
}

/// Reads `N` answers that may arrive together (pipelined), each cut at its head's end
/// and its `content-length`.
async fn read_answers<const N: usize>(stream: &mut TcpStream) -> [String; N] {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answers = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        while answers.len() < N {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse::<usize>().expect("a length"));
                if got.len() >= end + 4 + length {
                    answers.push(text[..end + 4 + length].to_owned());
                    got.drain(..end + 4 + length);
                    continue;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    assert!(read.is_ok() && answers.len() == N, "{N} answers within {BOUND:?}; got {answers:?}");
    answers.try_into().expect("N answers")
}

/// Reads until `n` answer heads have come, for answers without a body.
async fn read_heads(stream: &mut TcpStream, n: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(BOUND, async {
        while String::from_utf8_lossy(&got).matches("\r\n\r\n").count() < n {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "{n} heads within {BOUND:?}; got {text:?}");
    text
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

/// Requests sent together are answered in order, each with its own click, all recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_redirects_are_answered_in_order() {
    let app = spawn_app(Backend::Embedded).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let unknown = "GET /go/cake/nope HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(format!("{GO}{unknown}{GO}").as_bytes()).await.expect("write");
    let [first, second, third] = read_answers::<3>(&mut stream).await;
    assert_eq!((status(&first), status(&second), status(&third)), ("302", "404", "302"), "{first}{second}{third}");
    assert!(second.contains("Link not found: unknown link."), "{second}");
    for answer in [&first, &third] {
        assert!(answer.contains("cache-control: no-store, private\r\n"), "{answer}");
        assert!(answer.contains("content-length: 0\r\n"), "{answer}");
        let date = answer.lines().find_map(|l| l.strip_prefix("date: ")).expect("a date");
        httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("date {date:?}: {e}"));
        assert!(answer.contains("&s3=a+b"), "the sub-id passed on: {answer}");
    }
    let ids: HashSet<String> = [click_id(&first), click_id(&third)].into();
    assert_eq!(ids.len(), 2, "each request its own click");
    for id in &ids {
        assert_eq!(app.api(&format!("clicks/{id}")).await["click_id"], id.as_str());
    }
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 2);
    app.stop().await;
}

/// A request for another route hands the connection to hyper, which serves it and
/// every request after it, redirects included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_hyper_at_another_route_and_keeps_serving() {
    let app = spawn_app(Backend::Embedded).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // The second redirect arrives in the same write as the health check.
    stream.write_all(GO.as_bytes()).await.expect("write");
    let first = read_answer(&mut stream).await;
    stream.write_all(format!("{health}{GO}").as_bytes()).await.expect("write");
    let [second, third] = read_answers::<2>(&mut stream).await;
    assert_eq!((status(&first), status(&second), status(&third)), ("302", "200", "302"), "{first}{second}{third}");
    assert_ne!(click_id(&first), click_id(&third));
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 2);
    app.stop().await;
}

/// A head that arrives in pieces, a `HEAD`, and `Connection: close` are all answered as
/// hyper answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_heads_head_requests_and_closes() {
    let app = spawn_app(Backend::Embedded).await;

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let (start, rest) = GO.split_at(30);
    stream.write_all(start.as_bytes()).await.expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stream.write_all(rest.as_bytes()).await.expect("write");
    let answer = read_answer(&mut stream).await;
    assert_eq!(status(&answer), "302", "{answer}");

    // `HEAD` of a missing link: the length of the body it would have, and no body, so
    // the next answer on the connection starts right after its head.
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(format!("HEAD /go/cake/nope HTTP/1.1\r\nHost: x\r\n\r\n{GO}").as_bytes()).await.expect("write");
    let both = read_heads(&mut stream, 2).await;
    let (head, next) = both.split_once("\r\n\r\n").expect("two heads");
    assert_eq!(status(head), "404", "{both}");
    let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).expect("a length");
    assert!(length.parse::<usize>().expect("a number") > 0, "{head}");
    assert!(next.starts_with("HTTP/1.1 302 Found\r\n"), "no body after a HEAD answer: {both}");

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(GO.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n").as_bytes()).await.expect("write");
    let closed = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert_eq!(status(&closed), "302", "{closed}");
    assert!(closed.contains("connection: close\r\n"), "{closed}");
    app.stop().await;
}

/// After a redirect answered on the new path, the connection is HTTP/1.1 for good (a
/// later HTTP/2 preface does not switch it), and waiting for its next request it is
/// closed after the header read timeout, as hyper closes it. A `HEAD` redirect carries no
/// `content-length: 0`, as from hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stays_http1_and_its_wait_is_bounded() {
    // The suite's config sets `header_read_timeout_secs = 1` and leaves the idle timeout
    // at 60 s, so a close within `BOUND` is the header timeout's.
    let app = spawn_app(Backend::Embedded).await;

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(GO.as_bytes()).await.expect("write");
    assert_eq!(status(&read_answer(&mut stream).await), "302");
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write");
    let rest = read_until_closed(&mut stream).await;
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 4") || rest.starts_with(b"HTTP/1.1 5"),
        "an HTTP/1.1 refusal or a close, not HTTP/2 frames: {rest:?}"
    );

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(GO.replacen("GET", "HEAD", 1).as_bytes()).await.expect("write");
    let head = read_heads(&mut stream, 1).await;
    assert_eq!(status(&head), "302", "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    // Then silence: closed by the header read timeout, having sent nothing more.
    let rest = read_until_closed(&mut stream).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    app.stop().await;
}
