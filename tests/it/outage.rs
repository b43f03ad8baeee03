//! Store outages (DESIGN §11): `redis-server` is killed while clicks and postbacks flow.
//! Visitors still get their `302`, postbacks are checked without the store and answered
//! `202 queued`, both wait in the outage spool, and once Redis is back the spool is
//! replayed: every click whose `302` was received resolves and every queued conversion
//! is there, once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{click_id_in, count, spawn_app_on, today, StoreHandle, TestApp, SECRET};
use crate::redis_server::RedisServer;
use crate::stream::{Postback, Stream};

/// Concurrent clients in the stream.
const CLIENTS: usize = 4;
/// How long the spool gets to drain once Redis is back.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long a phase of the stream may take to reach its count.
const PHASE_BOUND: Duration = Duration::from_secs(60);

/// Redis that writes every command to its append-only file before answering, so that a
/// SIGKILL loses nothing it acknowledged.
fn durable_redis() -> StoreHandle {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    StoreHandle::on_redis(redis, tempfile::tempdir().expect("temp dir"))
}

async fn spawn_on(store: &StoreHandle) -> TestApp {
    spawn_app_on(store, SECRET, &["an-older-secret-0123456789"]).await
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let res = app.get("/readyz").await;
    (res.status(), res.json().await.expect("readyz answers JSON"))
}

/// Waits (bounded) until the spool is replayed and empty, and the store answers.
pub async fn wait_drained(app: &TestApp) -> Value {
    let deadline = Instant::now() + DRAIN_BOUND;
    loop {
        let (status, body) = readyz(app).await;
        if status == StatusCode::OK && body["status"] == "ready" && body["spool"]["records"] == 0 {
            return body;
        }
        assert!(Instant::now() < deadline, "the spool did not drain within {DRAIN_BOUND:?}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click_status(app: &TestApp, id: &str) -> StatusCode {
    app.client
        .get(format!("{}/api/clicks/{id}", app.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("request")
        .status()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_no_click_and_no_conversion() {
    let mut store = durable_redis();
    let app = spawn_on(&store).await;
    let stream = Stream::start(vec![app.base.clone()], CLIENTS, &["ok"], PHASE_BOUND);
    stream.until(90, 0).await;

    // Redis dies; the stream goes on.
    store.redis.as_mut().expect("redis").stop();
    stream.until(150, 20).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK, "ready while the spool has room: {body}");
    assert_eq!(body["store_up"], false, "{body}");
    assert_eq!(body["status"], "store_down_spooling", "{body}");
    assert!(body["spool"]["records"].as_u64().is_some_and(|n| n > 0), "{body}");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metric(&metrics, "cakelink_spool_bytes") > 0.0, "{metrics}");
    assert!(metric(&metrics, "cakelink_spool_records") > 0.0);

    // Redis comes back with what its append-only file holds; the stream goes on.
    store.redis.as_mut().expect("redis").restart();
    stream.until(90, 0).await;
    let seen = stream.finish().await;
    let drained = wait_drained(&app).await;
    assert!(drained["spool"]["replayed"].as_u64().is_some_and(|n| n > 0), "{drained}");
    assert!(seen.unexpected.is_empty(), "every click a 302, every postback ok or queued: {:?}", seen.unexpected);

    // Zero lost: every click whose 302 arrived resolves...
    let unique: HashSet<&String> = seen.clicks.iter().collect();
    assert_eq!(unique.len(), seen.clicks.len(), "click ids are unique");
    for id in &seen.clicks {
        assert_eq!(click_status(&app, id).await, StatusCode::OK, "click {id} resolves");
    }
    // ...every postback, queued or not, is one conversion of its click...
    let today = today();
    let list = app.api(&format!("conversions?from={today}&to={today}")).await;
    let mut recorded: HashMap<(String, String), usize> = HashMap::new();
    for c in list["conversions"].as_array().expect("conversions") {
        let key = (c["click_id"].as_str().unwrap_or_default().to_owned(), c["transaction_id"].to_string());
        *recorded.entry(key).or_default() += 1;
    }
    let queued = seen.postbacks.iter().filter(|p| p.status == "queued").count();
    assert!(queued >= 20, "{queued} postbacks were queued");
    for Postback { click: id, tid, status } in &seen.postbacks {
        let n = recorded.get(&(id.clone(), format!("{tid:?}"))).copied().unwrap_or(0);
        assert_eq!(n, 1, "the {status} postback {tid} for {id} is one conversion");
    }
    // ...and the figures count each click and conversion once.
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), seen.clicks.len() as u64, "{row}");
    assert_eq!(count(&row, "conversions"), seen.postbacks.len() as u64, "{row}");

    // Each queued postback is in the event log as queued (the API lists up to 1000),
    // and the newest of them also as what it came to.
    let events = app.api("events?status=queued&limit=1000").await;
    let logged = events["events"].as_array().expect("events");
    assert_eq!(logged.len(), queued.min(1000), "{events}");
    let newest = logged[0]["query"].as_str().expect("query").to_owned();
    let resolved = app.api("events?status=ok&limit=1000").await;
    assert!(
        resolved["events"].as_array().expect("events").iter().any(|e| e["query"] == newest.as_str()),
        "the queued postback {newest} is in the event log as ok"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postbacks_are_checked_without_the_store_and_a_full_spool_refuses_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = StoreHandle::on_redis(RedisServer::start(), dir);
    store.toml.push_str("spool_max_bytes = 4096\n");
    let app = spawn_on(&store).await;
    let before = app.click("demo").await;
    store.redis.as_mut().expect("redis").stop();

    // Key and click-id tag are checked without the store.
    let res = app.get_as(&format!("/collect/cake/wrong-key?s2={before}&price=1"), None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (status, body) = app.postback("s2=0000000000000000000000000000000&price=1").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("no_match")), "{body}");
    let (status, body) = app.postback(&format!("s2={before}&tid=Q1&price=1")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{body}");
    assert_eq!(body["conversion_id"], Value::Null, "decided when it is resolved: {body}");

    // A spooled click can be read while it waits, and the process is still ready.
    let waiting = app.click("demo").await;
    assert_eq!(click_status(&app, &waiting).await, StatusCode::OK, "a spooled click is found");
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("store_down_spooling")), "{body}");

    // Fill the spool: visitors are still redirected.
    let mut spooled = Vec::new();
    let deadline = Instant::now() + PHASE_BOUND;
    loop {
        let res = app.get("/go/cake/demo").await;
        assert_eq!(res.status(), StatusCode::FOUND, "a visitor is redirected even with the spool full");
        spooled.push(click_id_in(&res, "s2"));
        let (status, body) = readyz(&app).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["status"], "spool_full", "{body}");
            assert_eq!(body["spool"]["full"], true, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the 4096-byte spool never filled: {body}");
    }
    // The click that did not fit is counted and logged, not kept.
    let unstored = spooled.pop().expect("a refused click");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metric(&metrics, "cakelink_clicks_unstored_total") >= 1.0);
    let (status, body) = app.postback(&format!("s2={before}&tid=Q2&price=1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a full spool makes the network retry: {body}");

    store.redis.as_mut().expect("redis").restart();
    wait_drained(&app).await;
    spooled.push(waiting);
    for id in &spooled {
        assert_eq!(click_status(&app, id).await, StatusCode::OK, "spooled click {id} resolves");
    }
    assert_eq!(click_status(&app, &unstored).await, StatusCode::NOT_FOUND);
    // Redis ran without persistence, so only the spooled clicks and the queued
    // conversion are there: they were replayed.
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), spooled.len() as u64, "{row}");
    // The click made before the outage was lost with Redis's memory: the queued
    // postback resolves to an unknown click, and says so.
    let events = app.api("events?limit=50").await;
    let q1: Vec<&Value> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["query"].as_str().is_some_and(|q| q.contains("tid=Q1")))
        .collect();
    let statuses: Vec<&str> = q1.iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["no_match", "queued"], "logged as queued, then as what it came to: {q1:?}");
    // Postbacks now resolve directly again.
    let id = app.click("demo").await;
    let (status, body) = app.postback(&format!("s2={id}&tid=Q3&price=1")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    app.stop().await;
}
