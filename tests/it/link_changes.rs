//! A link changed through one process is in effect on every other process sharing the
//! Redis within a second (README, Admin API): two cakelinks over one Redis (over TCP or a
//! unix socket), or over one cluster, one changing links through its API while the test
//! asks the other for the redirect every 20 ms. The other caches links for five seconds,
//! so only the change's message can make it answer differently sooner.
//!
//! The one-second bound is the contract under test, not a performance figure.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{location, spawn_app_over, StoreHandle, TestApp, ADMIN_TOKEN};
use crate::redis_server::RedisServer;

/// How soon a change must be in effect on another process.
const WITHIN: Duration = Duration::from_secs(1);
/// How often the other process is asked.
const POLL: Duration = Duration::from_millis(20);
/// The channel the Redis store publishes link changes on.
const CHANNEL: &str = "cl:links:changed";

/// An `/api` request with the admin token; the status must be `expect`.
async fn api(app: &TestApp, method: Method, path: &str, body: Option<Value>, expect: StatusCode) {
    let mut req = app.client.request(method.clone(), format!("{}/api/{path}", app.base)).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    assert_eq!(status, expect, "{method} /api/{path}: {}", res.text().await.unwrap_or_default());
}

/// What `/go/cake/{slug}` answers, comparably: the status and, for a redirect, where to
/// without the click id (`302 https://v1.example.com/?o=1&`).
async fn answer(app: &TestApp, slug: &str) -> String {
    let res = app.get(&format!("/go/cake/{slug}")).await;
    let status = res.status().as_u16();
    if res.status().is_redirection() {
        let to = location(&res);
        let without_click_id = to.split("s2=").next().unwrap_or_default();
        format!("{status} {without_click_id}")
    } else {
        status.to_string()
    }
}

/// Asks `app` every [`POLL`] until `/go/cake/{slug}` answers `want`, and returns how long
/// that took from `since`; fails once [`WITHIN`] has passed.
async fn in_effect(app: &TestApp, slug: &str, want: &str, since: Instant) -> Duration {
    loop {
        let got = answer(app, slug).await;
        let took = since.elapsed();
        if got == want {
            return took;
        }
        assert!(took < WITHIN, "after {took:?} the other process still answers {got:?}, not {want:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Makes the other process answer `want` for `slug` now, so that it holds it cached.
async fn cached(app: &TestApp, slug: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = answer(app, slug).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{slug} answers {got:?}, expected {want:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Creates, changes, pauses and deletes `slug` through `a`, checking each change on `b`
/// within a second of the request to `a`; returns what took how long.
async fn each_change_reaches(a: &TestApp, b: &TestApp, slug: &str) -> Vec<(&'static str, Duration)> {
    let v1 = "https://v1.example.com/?o=1";
    let v2 = "https://v2.example.com/?o=2";
    let fallback = "https://fallback.example.com/x";
    let mut took = Vec::new();

    cached(b, slug, "404").await;
    let since = Instant::now();
    api(a, Method::POST, "links", Some(json!({"slug": slug, "offer": v1})), StatusCode::CREATED).await;
    took.push(("created", in_effect(b, slug, &format!("302 {v1}&"), since).await));

    let path = format!("links/cake/{slug}");
    let since = Instant::now();
    api(a, Method::PUT, &path, Some(json!({"offer": v2})), StatusCode::OK).await;
    took.push(("offer changed", in_effect(b, slug, &format!("302 {v2}&"), since).await));

    let since = Instant::now();
    let paused = json!({"offer": v2, "status": "paused", "fallback": fallback});
    api(a, Method::PUT, &path, Some(paused), StatusCode::OK).await;
    took.push(("paused", in_effect(b, slug, &format!("302 {fallback}"), since).await));

    let since = Instant::now();
    api(a, Method::DELETE, &path, None, StatusCode::NO_CONTENT).await;
    took.push(("deleted", in_effect(b, slug, "404", since).await));
    took
}

/// Redis's `CLIENT LIST`, asked over TCP.
async fn client_list(redis: &RedisServer) -> String {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client.get_multiplexed_async_connection().await.expect("connection");
    redis::cmd("CLIENT").arg("LIST").query_async(&mut con).await.expect("CLIENT LIST")
}

/// How many connections listen for link changes on `redis`.
async fn listeners(redis: &RedisServer) -> Option<u64> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let (_, n): (String, u64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(CHANNEL).query_async(&mut con).await.ok()?;
    Some(n)
}

/// Waits until `n` processes listen for link changes on `redis`; returns how long it took.
async fn listening(redis: &RedisServer, n: u64) -> Duration {
    let started = Instant::now();
    while listeners(redis).await != Some(n) {
        assert!(started.elapsed() < Duration::from_secs(10), "{n} processes did not subscribe to {CHANNEL}");
        tokio::time::sleep(POLL).await;
    }
    started.elapsed()
}

/// A Redis store over a one-node cluster, given by its node URLs.
fn on_cluster(redis: RedisServer) -> StoreHandle {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool").display().to_string();
    StoreHandle {
        toml: format!("backend = \"redis\"\nurls = [{:?}]\nspool_path = {spool:?}\n", redis.url()),
        dir,
        redis: Some(redis),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_process_is_in_effect_on_another_within_a_second() {
    let store = StoreHandle::on_redis(RedisServer::start(), tempfile::tempdir().expect("temp dir"));
    two_processes_see_each_change(&store, "one Redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_process_is_in_effect_on_another_within_a_second_on_a_cluster() {
    let store = on_cluster(RedisServer::start_cluster());
    two_processes_see_each_change(&store, "Redis Cluster").await;
}

/// Two processes on one Redis reached over a unix socket (README, "How fast"), the
/// subscription included: each link change reaches the other process, and a click one
/// records is found by a postback the other answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_changes_reach_another_process_and_clicks_resolve_on_it() {
    let sockets = tempfile::tempdir().expect("temp dir");
    let socket = sockets.path().join("redis.sock").display().to_string();
    let redis = RedisServer::start_with(&["--unixsocket", &socket, "--unixsocketperm", "700"]);
    let url = format!("redis+unix://{socket}");
    let store = StoreHandle::on_redis_at(redis, &url, tempfile::tempdir().expect("temp dir"));
    let a = spawn_app_over(&store, "").await;
    let b = spawn_app_over(&store, "").await;
    listening(store.redis.as_ref().expect("redis"), 2).await;
    each_change_reaches(&a, &b, "shared").await;

    let id = a.click("demo").await;
    let (status, body) = b.postback(&format!("s2={id}&tid=U1&price=4.20")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    // Both processes' connections, the subscriptions among them, are on the socket
    // (Redis flags those `U`); the test's own look goes over TCP.
    let clients = client_list(store.redis.as_ref().expect("redis")).await;
    let on_socket = |line: &&str| line.split(' ').any(|f| f.starts_with("flags=") && f.contains('U'));
    let subscribed: Vec<&str> = clients.lines().filter(|l| l.contains(" sub=1 ")).collect();
    assert_eq!(subscribed.len(), 2, "{clients}");
    assert!(subscribed.iter().all(on_socket), "{clients}");
    assert!(clients.lines().filter(|l| !l.contains(" sub=1 ")).any(|l| on_socket(&l)), "{clients}");
    a.stop().await;
    b.stop().await;
}

/// Two processes on `store`, both listening: each change made through one is in effect
/// on the other (see [`each_change_reaches`]).
async fn two_processes_see_each_change(store: &StoreHandle, label: &str) {
    let a = spawn_app_over(store, "").await;
    let b = spawn_app_over(store, "").await;
    listening(store.redis.as_ref().expect("redis"), 2).await;

    let took = each_change_reaches(&a, &b, "shared").await;
    eprintln!("{label}, change on A in effect on B after: {took:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_another_process_again_once_redis_is_back() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut store = StoreHandle::on_redis(redis, tempfile::tempdir().expect("temp dir"));
    let a = spawn_app_over(&store, "").await;
    let b = spawn_app_over(&store, "").await;
    listening(store.redis.as_ref().expect("redis"), 2).await;
    let v1 = "https://v1.example.com/?o=1";
    api(&a, Method::POST, "links", Some(json!({"slug": "kept", "offer": v1})), StatusCode::CREATED).await;
    cached(&b, "kept", &format!("302 {v1}&")).await;

    let redis = store.redis.as_mut().expect("redis");
    redis.restart();
    let resubscribed = listening(redis, 2).await;
    eprintln!("both processes subscribed again {resubscribed:?} after Redis was back");
    // Both answer from Redis again (their command connections reconnect on first use).
    cached(&b, "kept", &format!("302 {v1}&")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let read_link = || a.client.get(format!("{}/api/links/cake/kept", a.base)).bearer_auth(ADMIN_TOKEN).send();
    while read_link().await.expect("request").status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "A does not reach Redis again");
        tokio::time::sleep(POLL).await;
    }

    let v2 = "https://v2.example.com/?o=2";
    let since = Instant::now();
    api(&a, Method::PUT, "links/cake/kept", Some(json!({"offer": v2})), StatusCode::OK).await;
    let took = in_effect(&b, "kept", &format!("302 {v2}&"), since).await;
    eprintln!("after a restart of Redis, change on A in effect on B after {took:?}");

    let took = each_change_reaches(&a, &b, "after-restart").await;
    eprintln!("after a restart of Redis: {took:?}");
    a.stop().await;
    b.stop().await;
}

/// A message published while a process was not listening is lost; on subscribing again
/// the process forgets every link it had cached, so nothing stale outlives the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_lost_its_subscription_forgets_every_cached_link() {
    let store = StoreHandle::on_redis(RedisServer::start(), tempfile::tempdir().expect("temp dir"));
    let redis = store.redis.as_ref().expect("redis");
    let a = spawn_app_over(&store, "").await;
    let v1 = "https://v1.example.com/?o=1";
    api(&a, Method::POST, "links", Some(json!({"slug": "gap", "offer": v1})), StatusCode::CREATED).await;
    // B starts after the link's creation was published: a late copy of that message
    // would make B forget the link at a moment of its own choosing, and the checks
    // below want it cached until the subscription is dropped.
    let b = spawn_app_over(&store, "").await;
    listening(redis, 2).await;
    cached(&b, "gap", &format!("302 {v1}&")).await;

    // A change nobody publishes, as one made while B was not listening would be.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client.get_multiplexed_async_connection().await.expect("connect");
    let removed: i64 = redis::cmd("HDEL").arg("cl:links").arg("cake/gap").query_async(&mut con).await.expect("HDEL");
    assert_eq!(removed, 1);
    assert_eq!(answer(&b, "gap").await, format!("302 {v1}&"), "B still has the link cached");

    let since = Instant::now();
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut con).await.expect("CLIENT KILL");
    assert_eq!(killed, 2, "both processes' subscriptions dropped");
    let took = in_effect(&b, "gap", "404", since).await;
    eprintln!("a resubscribed process forgot its cached links after {took:?}");
    a.stop().await;
    b.stop().await;
}
