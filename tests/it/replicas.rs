//! Writes the replicas confirm (`store.replicas_ack`), and the servers `/readyz` and
//! `/metrics` report.
//!
//! A primary with one real replica: a click is answered only once the replica has it.
//! With the replica killed, `WAIT` times out, the writes go to the outage spool and the
//! visitors are still redirected at once; with the replica back, the spool is replayed
//! and every click and conversion counts exactly once.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{count, spawn_app_on, today, StoreHandle, TestApp, ADMIN_TOKEN, SECRET};
use crate::outage::wait_drained;
use crate::redis_server::RedisServer;

/// Clicks per phase.
const CLICKS: usize = 25;
/// How long a redirect may take while the replica is gone: one `WAIT` timeout (100 ms)
/// and the spool's write, with room for a slow test machine.
const AT_ONCE: Duration = Duration::from_millis(1500);

/// Every click field in the click buckets of `redis`: what a server holds of the clicks.
fn stored_clicks(redis: &RedisServer) -> usize {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1)).expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS").arg("cl:ck:*").query(&mut con).expect("KEYS");
    keys.iter().map(|k| redis::cmd("HLEN").arg(k).query::<usize>(&mut con).expect("HLEN")).sum()
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let res = app.get("/readyz").await;
    (res.status(), res.json().await.expect("readyz answers JSON"))
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.expect("metrics")
}

async fn click_status(app: &TestApp, id: &str) -> StatusCode {
    let res = app.client.get(format!("{}/api/clicks/{id}", app.base)).bearer_auth(ADMIN_TOKEN).send().await;
    res.expect("request").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_waits_for_the_replica_and_is_spooled_while_it_is_gone() {
    let primary = RedisServer::start_primary();
    let mut replica = RedisServer::start_replica_of(&primary);
    let mut store = StoreHandle::on_redis(primary, tempfile::tempdir().expect("temp dir"));
    store.toml.push_str("replicas_ack = 1\nreplicas_ack_timeout_ms = 100\n");
    let app = spawn_app_on(&store, SECRET, &[]).await;
    let primary = store.redis.as_ref().expect("primary");

    // With the replica up, a 302 means the replica holds the click already.
    let mut clicks = Vec::new();
    for _ in 0..CLICKS {
        clicks.push(app.click("demo").await);
        assert_eq!(stored_clicks(&replica), clicks.len(), "the replica has every click answered");
    }
    let (status, body) = app.postback(&format!("s2={}&tid=R0&price=2.50", clicks[0])).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    let (_, body) = readyz(&app).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["spool"]["records"], 0, "{body}");

    // The replica dies: WAIT times out, but every visitor is redirected at once.
    replica.stop();
    let mut spooled = Vec::new();
    for _ in 0..CLICKS {
        let started = Instant::now();
        spooled.push(app.click("demo").await);
        assert!(started.elapsed() < AT_ONCE, "a redirect took {:?} with the replica gone", started.elapsed());
    }
    let (status, body) = app.postback(&format!("s2={}&tid=R1&price=2.50", spooled[0])).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{body}");
    let (status, body) = app.postback(&format!("s2={}&tid=R2&price=2.50", clicks[1])).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{body}");

    // The spool holds them (the primary may too, unconfirmed) and says so.
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spool"]["active"], true, "{body}");
    assert_ne!(body["status"], "ready", "{body}");
    let records = body["spool"]["records"].as_u64().expect("records");
    assert!(records >= CLICKS as u64 + 2, "every click and both postbacks are in the spool: {body}");
    for id in &spooled {
        assert_eq!(click_status(&app, id).await, StatusCode::OK, "spooled click {id} is found");
    }
    let text = metrics(&app).await;
    assert!(text.contains("cakelink_redis_writes_unconfirmed_total"), "{text}");

    // The replica comes back: the spool is replayed, each write waiting for it again.
    replica.restart();
    replica.wait_replicating(primary);
    let drained = wait_drained(&app).await;
    assert!(drained["spool"]["replayed"].as_u64().is_some_and(|n| n >= records), "{drained}");

    // Every click resolves, on the replica too, and counts once; each postback is one
    // conversion, the queued ones included.
    let all: Vec<&String> = clicks.iter().chain(&spooled).collect();
    for id in &all {
        assert_eq!(click_status(&app, id).await, StatusCode::OK, "click {id} resolves");
    }
    assert_eq!(stored_clicks(&replica), all.len(), "the replica has every click");
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), all.len() as u64, "{row}");
    assert_eq!(count(&row, "conversions"), 3, "{row}");
    let today = today();
    let list = app.api(&format!("conversions?from={today}&to={today}")).await;
    let mut tids: Vec<&str> = list["conversions"]
        .as_array()
        .expect("conversions")
        .iter()
        .filter_map(|c| c["transaction_id"].as_str())
        .collect();
    tids.sort_unstable();
    assert_eq!(tids, ["R0", "R1", "R2"], "{list}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_show_the_one_redis() {
    let store = StoreHandle::on_redis(RedisServer::start(), tempfile::tempdir().expect("temp dir"));
    let port = store.redis.as_ref().expect("redis").port();
    let app = spawn_app_on(&store, SECRET, &[]).await;
    let (_, body) = readyz(&app).await;
    shows_one_master(&app, &body, &format!("127.0.0.1:{port}"), Value::Null).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_show_every_cluster_node() {
    let store = one_node_cluster("replicas_ack = 0");
    let address = format!("127.0.0.1:{}", store.redis.as_ref().expect("cluster").port());
    let app = spawn_app_on(&store, SECRET, &[]).await;
    app.click("demo").await;
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ready")), "{body}");
    shows_one_master(&app, &body, &address, serde_json::json!(16384)).await;
    app.stop().await;
}

/// `/readyz`'s `body` lists one node, the connected master at `address` holding `slots`,
/// and `/metrics` says it is up.
async fn shows_one_master(app: &TestApp, body: &Value, address: &str, slots: Value) {
    assert_eq!(
        body["nodes"],
        serde_json::json!([{ "address": address, "role": "master", "state": "connected", "slots": slots }]),
        "{body}"
    );
    let text = metrics(app).await;
    let line = format!("cakelink_redis_node_up{{node=\"{address}\",role=\"master\"}} 1");
    assert!(text.contains(&line), "{line} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_has_no_nodes() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Embedded).await;
    let (_, body) = readyz(&app).await;
    assert_eq!(body["nodes"], serde_json::json!([]), "{body}");
    app.stop().await;
}

/// On the one-node test cluster, a write is followed by `WAIT` like on one Redis, and
/// with no replica there to confirm it, it is refused as an outage: the pipeline reached
/// the slot's master and `WAIT` answered from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_write_without_its_replica_is_refused() {
    let store = one_node_cluster("replicas_ack = 1\nreplicas_ack_timeout_ms = 50");
    let app = spawn_app_on(&store, SECRET, &[]).await;
    let started = Instant::now();
    let id = app.click("demo").await;
    assert!(started.elapsed() < AT_ONCE, "the redirect took {:?}", started.elapsed());
    let (_, body) = readyz(&app).await;
    assert_eq!(body["spool"]["active"], true, "no replica confirmed the click, so the spool has it: {body}");
    assert_eq!(click_status(&app, &id).await, StatusCode::OK);
    app.stop().await;
}

/// The one-node test cluster as a store, with its own spool and `ack` (the
/// `replicas_ack` lines of `[store]`).
fn one_node_cluster(ack: &str) -> StoreHandle {
    let cluster = RedisServer::start_cluster();
    let spool = tempfile::tempdir().expect("temp dir");
    StoreHandle {
        toml: format!(
            "backend = \"redis\"\nurls = [{:?}]\nspool_path = {:?}\n{ack}\n",
            cluster.url(),
            spool.path().join("spool").display().to_string()
        ),
        dir: spool,
        redis: Some(cluster),
    }
}
