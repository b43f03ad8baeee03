//! Durability (DESIGN §10): the real `cakelink` binary is killed (SIGKILL) or stopped
//! (SIGTERM) while clicks flow, restarted over the same store, and every click whose
//! `302` the visitor received still resolves, with the counters intact, on both stores.
//! Clicks expire after attribution_days + postback_grace_days, without a scan.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cakelink::clickid::Keyring;
use cakelink::model::{hour_of, Click};
use cakelink::store::embedded::EmbeddedStore;
use cakelink::store::{ClickOrigin, ClickStore, ConversionStore, Health, StoreLimits};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    attach, config_text, count, serve_command, spawn_app, spawn_app_with, Backend, StoreHandle, TestApp, CHROME,
    POSTBACK_KEY, SECRET,
};
use crate::on_both_stores;
use crate::redis_server::RedisServer;
use crate::stream::{click, Seen, Stream};

const DAY: u64 = 86_400;
/// How long the binary gets to answer `/healthz` after it starts.
const STARTUP_BOUND: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd process gets to exit on its own.
const EXIT_BOUND: Duration = Duration::from_secs(30);
/// Clicks sent and completed before the process is stopped.
const SETTLED_CLICKS: usize = 300;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// How long clicks flowing to a running process may take to reach a count.
const FLOW_BOUND: Duration = Duration::from_secs(60);

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The real binary, serving over `store`.
struct Process {
    child: Child,
    app: TestApp,
    log: PathBuf,
}

impl Process {
    /// Starts `cakelink serve` over `store` and waits (bounded) until `/healthz` answers.
    async fn start(store: &StoreHandle, run: usize) -> Process {
        Process::start_with(store, run, "").await
    }

    /// [`Process::start`] with `server` lines added to `[server]`.
    async fn start_with(store: &StoreHandle, run: usize, server: &str) -> Process {
        let mut last = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let config = store.dir.path().join("cakelink.toml");
            let text = config_text(&format!("127.0.0.1:{port}"), &store.toml, "", "")
                .replace("[server]\n", &format!("[server]\n{server}"));
            std::fs::write(&config, text).expect("write config");
            let log = store.dir.path().join(format!("cakelink-{run}-{attempt}.log"));
            let child = serve_command(&config, &log).spawn().expect("start the cakelink binary");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
            let mut process = Process { child, app: attach(addr, store), log };
            match process.wait_healthy().await {
                Ok(()) => return process,
                Err(e) => {
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                    last = format!("{e}\n{}", process.log_text());
                    // Another test may have taken the port between our probe and the bind.
                    if !last.contains("binding") {
                        break;
                    }
                }
            }
        }
        panic!("cakelink did not start: {last}");
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_BOUND;
        let url = format!("{}/healthz", self.app.base);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("cakelink exited before serving: {status}"));
            }
            if let Ok(res) = self.app.client.get(&url).timeout(Duration::from_secs(1)).send().await {
                if res.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from {url} within {STARTUP_BOUND:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap the killed process");
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits (bounded) for the process to exit on its own.
    async fn wait_exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, self.log_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("cakelink did not exit within {EXIT_BOUND:?} of SIGTERM:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `total` clicks from [`CLIENTS`] concurrent clients, all of which must succeed.
async fn settled_clicks(app: &TestApp, total: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, base) = (app.client.clone(), app.base.clone());
        let n = total / CLIENTS + usize::from(c < total % CLIENTS);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(click(&client, &base).await.expect("a click while the server is up"));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("click task"));
    }
    assert_eq!(ids.len(), total);
    ids
}

/// Before the stop: settled clicks, and one conversion on the first of them.
async fn before_stop(app: &TestApp) -> (Vec<String>, serde_json::Value) {
    let ids = settled_clicks(app, SETTLED_CLICKS).await;
    let (status, body) = app.postback(&format!("s2={}&tid=DUR1&price=7", ids[0])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), SETTLED_CLICKS as u64, "{row}");
    (ids, body["conversion_id"].clone())
}

/// The stored click of `id`, whose 302 was received before the restart: it must resolve.
async fn resolved_click(app: &TestApp, id: &str) -> serde_json::Value {
    let res = app
        .client
        .get(format!("{}/api/clicks/{id}", app.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK, "click {id}, whose 302 was received, resolves after the restart");
    res.json().await.expect("JSON")
}

/// After the restart: every id resolves, the conversion is still there once, and the
/// store takes new writes.
async fn after_restart(app: &TestApp, ids: &[String], conversion_id: &serde_json::Value) -> u64 {
    for id in ids {
        let click = resolved_click(app, id).await;
        assert_eq!(click["link"], "cake/demo", "{click}");
    }
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(row["revenue"], "7.00", "{row}");

    // The conversion recorded before the stop still de-duplicates.
    let (status, body) = app.postback(&format!("s2={}&tid=DUR1&price=7", ids[0])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "duplicate", "{body}");
    assert_eq!(body["conversion_id"], *conversion_id);
    // A click from the last moments before the stop converts.
    let last = ids.last().expect("ids");
    let (_, body) = app.postback(&format!("s2={last}&tid=DUR2&price=0")).await;
    assert_eq!(body["status"], "ok", "{body}");
    let clicks = count(&row, "clicks");
    // New clicks count on top.
    app.click("demo").await;
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), clicks + 1, "{row}");
    assert_eq!(count(&row, "conversions"), 2, "{row}");
    assert_eq!(count(&row, "leads"), 1, "{row}");
    clicks
}

async fn sigkill_loses_no_acknowledged_click(backend: Backend) {
    let store = StoreHandle::new(backend);

    // Settled clicks, then a kill with nothing in flight: the counters are exact.
    let process = Process::start(&store, 0).await;
    let (ids, conversion_id) = before_stop(&process.app).await;
    process.kill();
    let process = Process::start(&store, 1).await;
    let clicks = after_restart(&process.app, &ids, &conversion_id).await;
    assert_eq!(clicks, SETTLED_CLICKS as u64, "nothing lost, nothing counted twice");
    let mut all = ids;
    all.push(process.app.click("demo").await);
    let before = count(&process.app.stats_for("cake/demo").await, "clicks");

    // Now a kill while clicks are in flight: every 302 received resolves; a click
    // recorded whose answer was cut off may count, and nothing counts twice.
    let flow = Stream::until_gone(&process.app.base, CLIENTS, FLOW_BOUND);
    flow.until(150, 0).await;
    process.kill();
    let Seen { clicks: received, attempts, .. } = flow.finish().await;
    assert!(received.len() >= 150 && attempts >= received.len(), "{} of {attempts}", received.len());
    let process = Process::start(&store, 2).await;
    all.extend(received.iter().cloned());
    let clicks = after_restart_flow(&process.app, &all, &received).await;
    let low = before + received.len() as u64;
    let high = before + attempts as u64;
    assert!((low..=high).contains(&clicks), "clicks {clicks} within [{low}, {high}]");
    process.kill();
}

/// The served process runs with transparent huge pages off (`server::small_pages_only`),
/// as the kernel reports in the process's status, and serves clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_takes_no_transparent_huge_pages() {
    let store = StoreHandle::new(Backend::Embedded);
    let process = Process::start(&store, 0).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).expect("the process's status");
    let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("the kernel reports THP_enabled");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    let id = process.app.click("demo").await;
    assert_eq!(resolved_click(&process.app, &id).await["click_id"], id.as_str());
    process.kill();
}

/// Checks the in-flight clicks after a restart; returns the click count.
async fn after_restart_flow(app: &TestApp, all: &[String], received: &[String]) -> u64 {
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "click ids are unique");
    for id in received {
        resolved_click(app, id).await;
    }
    // A conversion on the last click received before the stop.
    let last = received.last().expect("received");
    let (_, body) = app.postback(&format!("s2={last}&tid=FLOW&price=1")).await;
    assert_eq!(body["status"], "ok", "{body}");
    count(&app.stats_for("cake/demo").await, "clicks")
}

async fn sigterm_drains_and_loses_nothing(backend: Backend) {
    let store = StoreHandle::new(backend);

    let process = Process::start(&store, 0).await;
    let (ids, conversion_id) = before_stop(&process.app).await;
    process.terminate();
    let (status, log) = process.wait_exit().await;
    assert!(status.success(), "SIGTERM ends cakelink with success, not {status}:\n{log}");
    assert!(log.contains("stopped"), "{log}");

    let process = Process::start(&store, 1).await;
    let clicks = after_restart(&process.app, &ids, &conversion_id).await;
    assert_eq!(clicks, SETTLED_CLICKS as u64, "nothing lost, nothing counted twice");
    let before = count(&process.app.stats_for("cake/demo").await, "clicks");

    // SIGTERM while clicks are in flight: in-flight requests finish, so the count is
    // exactly the 302s received.
    let flow = Stream::until_gone(&process.app.base, CLIENTS, FLOW_BOUND);
    flow.until(150, 0).await;
    process.terminate();
    let Seen { clicks: received, attempts, .. } = flow.finish().await;
    let (status, log) = process.wait_exit().await;
    assert!(status.success(), "SIGTERM under load ends with success, not {status}:\n{log}");
    assert!(received.len() >= 150 && attempts >= received.len(), "{} of {attempts}", received.len());

    let process = Process::start(&store, 2).await;
    let mut all = ids;
    all.extend(received.iter().cloned());
    let clicks = after_restart_flow(&process.app, &all, &received).await;
    assert_eq!(clicks, before + received.len() as u64, "a drained shutdown answers every click it recorded");
    process.kill();
}

on_both_stores!(sigkill_loses_no_acknowledged_click, sigterm_drains_and_loses_nothing);

/// Redis keeps a click for attribution_days + postback_grace_days through its own TTL.
async fn redis_ttl_of(app: &TestApp, id: &str) -> i64 {
    let url = app.store.redis.as_ref().expect("a redis store").url();
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client.get_multiplexed_async_connection().await.expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS").arg("cl:ck:*").query_async(&mut con).await.expect("KEYS");
    let mut holding = Vec::new();
    for key in keys {
        let held: bool = redis::cmd("HEXISTS").arg(&key).arg(id).query_async(&mut con).await.expect("HEXISTS");
        if held {
            holding.push(key);
        }
    }
    assert_eq!(holding.len(), 1, "one hour bucket holds click {id}: {holding:?}");
    redis::cmd("TTL").arg(&holding[0]).query_async(&mut con).await.expect("TTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clicks_expire_after_attribution_plus_grace() {
    let app = spawn_app(Backend::Redis).await;
    let ttl = redis_ttl_of(&app, &app.click("demo").await).await;
    // A click's hour bucket expires the lifetime after the hour ends.
    let want = (37 * DAY) as i64;
    assert!((want - 300..=want + 3600).contains(&ttl), "default 30 + 7 days: TTL {ttl}");
    app.stop().await;

    let app = spawn_app_with(Backend::Redis, "attribution_days = 3\npostback_grace_days = 2\n", "").await;
    let ttl = redis_ttl_of(&app, &app.click("demo").await).await;
    let want = (5 * DAY) as i64;
    assert!((want - 300..=want + 3600).contains(&ttl), "3 + 2 days: TTL {ttl}");
    app.stop().await;
}

fn click_at(id: &str, secs: u64) -> Click {
    Click {
        id: id.to_owned(),
        link: "cake/demo".into(),
        at: (secs * 1000) as i64,
        bot: None,
        ip: Some("203.0.113.7".into()),
        user_agent: Some(CHROME.into()),
        referer: None,
        utm: Vec::new(),
        ad_click_ids: Vec::new(),
        subids: Vec::new(),
        offer: None,
        rule: None,
        fallback: None,
    }
}

/// The embedded store drops expired clicks as the key range below the cut-off id (ids
/// sort by creation time), keeping younger clicks and the report counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweep_drops_expired_clicks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ttl = Duration::from_secs(60);
    let store = EmbeddedStore::open(
        &dir.path().join("db"),
        Duration::from_millis(100),
        StoreLimits {
            click_ttl: ttl,
            event_log_max: 100,
            personal_ttl: cakelink::store::PERSONAL_DATA_TTL,
            outbox: Default::default(),
        },
    )
    .expect("open the store");
    let ring = Keyring::new(SECRET, &[], ttl.as_secs());
    let now = now_secs();
    let ages = [DAY, 3600, 120, 0];
    let mut ids = Vec::new();
    for age in ages {
        let id = ring.mint(now - age).to_string();
        store.record_click(click_at(&id, now - age).view(), ClickOrigin::Replayed).await.expect("record");
        assert!(store.find_click(&id).await.expect("read").is_some());
        ids.push(id);
    }
    // A fresh id that sorts last, with a 60 s margin against a slow machine.
    let fresh = ring.mint(now + 60).to_string();
    store.record_click(click_at(&fresh, now).view(), ClickOrigin::Replayed).await.expect("record");

    store.sweep().await.expect("sweep");

    for (id, age) in ids.iter().zip(ages) {
        let found = store.find_click(id).await.expect("read");
        if age > ttl.as_secs() {
            assert!(found.is_none(), "a click {age} s old is past the {ttl:?} lifetime and dropped");
        }
    }
    assert!(store.find_click(&fresh).await.expect("read").is_some(), "a young click stays");
    // Expiry drops raw clicks, not the figures they made.
    let hours =
        store.counters(hour_of(((now - DAY) * 1000) as i64), hour_of((now * 1000) as i64)).await.expect("counters");
    let clicks: u64 = hours.iter().map(|h| h.counters.clicks).sum();
    assert_eq!(clicks, 5, "{hours:?}");
    // Sweeping again finds nothing more to do.
    store.sweep().await.expect("sweep");
    assert!(store.find_click(&fresh).await.expect("read").is_some());
}

/// The expiry sweep is a task on the runtime's clock, not a thread that sleeps: with the
/// clock paused, advancing it past the sweep interval drops an expired click, without the
/// test waiting a minute and without calling `sweep` by hand.
#[tokio::test(start_paused = true)]
async fn the_embedded_expiry_sweep_runs_on_the_runtimes_clock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ttl = Duration::from_secs(60);
    let limits = StoreLimits {
        click_ttl: ttl,
        event_log_max: 100,
        personal_ttl: cakelink::store::PERSONAL_DATA_TTL,
        outbox: Default::default(),
    };
    let store = EmbeddedStore::open(&dir.path().join("db"), Duration::from_secs(1), limits).expect("open the store");
    let ring = Keyring::new(SECRET, &[], ttl.as_secs());
    let now = now_secs();
    let old = ring.mint(now - DAY).to_string();
    let young = ring.mint(now + 60).to_string();
    store.record_click(click_at(&old, now - DAY).view(), ClickOrigin::Replayed).await.expect("record");
    store.record_click(click_at(&young, now).view(), ClickOrigin::Replayed).await.expect("record");

    // Past one sweep interval (a minute) of the paused clock (the runtime may also have
    // jumped there by itself while idle, which is the same clock). Nothing else sweeps;
    // the sweep then runs on the writer thread, in real time, so the check waits for it,
    // bounded.
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut dropped = false;
    for _ in 0..200 {
        if store.find_click(&old).await.expect("read").is_none() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(dropped, "the timer's sweep dropped the expired click");
    assert!(store.find_click(&young).await.expect("read").is_some(), "a young click stays");
}

/// A postback for an id past its lifetime is `no_match` with an `expired` reason, told
/// apart from an unknown id.
async fn expired_ids_are_no_match_expired(backend: Backend) {
    let app = spawn_app(backend).await;
    let ring = Keyring::new(SECRET, &[], 37 * DAY);
    let now = now_secs();

    let expired = ring.mint(now - 40 * DAY);
    let (status, body) = app.postback(&format!("s2={expired}&tid=E1&price=7")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "no_match", "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("expired")), "{body}");

    let unknown = ring.mint(now - DAY);
    let (status, body) = app.postback(&format!("s2={unknown}&tid=E2&price=7")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "no_match", "{body}");
    let reason = body["reason"].as_str().expect("reason");
    assert!(reason.contains("unknown") && !reason.contains("expired"), "{body}");

    let event = app.last_event().await;
    assert_eq!(event["status"], "no_match", "{event}");
    let res = app
        .client
        .get(format!("{}/api/clicks/{expired}", app.base))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.text().await.expect("body").contains("expired"));
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 0);
    app.stop().await;
}

on_both_stores!(expired_ids_are_no_match_expired);

/// SIGTERM while Redis is down and clicks flow: in-flight requests finish (one that
/// never completes is cut at `shutdown_timeout_secs`), the process exits by that
/// deadline, the spooled clicks stay on disk, and the next start replays them once
/// Redis is back: every `302` received resolves, each click counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_keeps_the_spool_for_the_next_start() {
    const DEADLINE: Duration = Duration::from_secs(3);
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut store = StoreHandle::on_redis(redis, tempfile::tempdir().expect("temp dir"));
    let server = format!("shutdown_timeout_secs = {}\n", DEADLINE.as_secs());
    let process = Process::start_with(&store, 0, &server).await;

    let flow = Stream::until_gone(&process.app.base, CLIENTS, FLOW_BOUND);
    flow.until(100, 0).await;
    store.redis.as_mut().expect("redis").stop();
    flow.until(200, 0).await;

    // A request in flight that never completes: a health check answered first proves
    // the connection is served, then a postback whose body never arrives in full.
    let mut stalled = tokio::net::TcpStream::connect(process.app.addr).await.expect("connect");
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nPOST /collect/cake/{POSTBACK_KEY} HTTP/1.1\r\nHost: t\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ns2="
    );
    stalled.write_all(request.as_bytes()).await.expect("write");
    let mut answer = [0u8; 12];
    stalled.read_exact(&mut answer).await.expect("the health check is answered");
    assert_eq!(&answer, b"HTTP/1.1 200");

    let signalled = Instant::now();
    process.terminate();
    let Seen { clicks: received, attempts, .. } = flow.finish().await;
    let (status, log) = process.wait_exit().await;
    let took = signalled.elapsed();
    assert!(status.success(), "SIGTERM during an outage ends with success, not {status}:\n{log}");
    assert!(took >= DEADLINE - Duration::from_millis(500), "the stalled request was waited for: {took:?}\n{log}");
    assert!(took < DEADLINE + Duration::from_secs(3), "exited {took:?} after SIGTERM, deadline {DEADLINE:?}:\n{log}");
    assert!(log.contains("kept on disk for the next start"), "{log}");
    assert!(received.len() >= 300 && attempts >= received.len(), "{} of {attempts}", received.len());
    let spool = store.dir.path().join("spool").join("spool.log");
    assert!(std::fs::metadata(&spool).expect("the spool file").len() > 0, "the spool is kept on disk");
    drop(stalled);

    store.redis.as_mut().expect("redis").restart();
    let process = Process::start(&store, 1).await;
    crate::outage::wait_drained(&process.app).await;
    assert_eq!(std::fs::metadata(&spool).expect("the spool file").len(), 0, "replayed and emptied");
    let clicks = after_restart_flow(&process.app, &received, &received).await;
    assert_eq!(clicks, received.len() as u64, "every click answered is counted, once");
    process.kill();
}

/// SIGKILL while Redis is down and clicks flow: the spooled clicks were in the
/// operating system's buffers before their `302` left, so the next start (Redis back)
/// replays every one of them; a record torn by the kill is dropped, not replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_outage_loses_no_spooled_click() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut store = StoreHandle::on_redis(redis, tempfile::tempdir().expect("temp dir"));
    let process = Process::start(&store, 0).await;

    let flow = Stream::until_gone(&process.app.base, CLIENTS, FLOW_BOUND);
    flow.until(100, 0).await;
    store.redis.as_mut().expect("redis").stop();
    flow.until(200, 0).await;
    process.kill();
    let Seen { clicks: received, attempts, .. } = flow.finish().await;
    assert!(received.len() >= 300 && attempts >= received.len(), "{} of {attempts}", received.len());

    store.redis.as_mut().expect("redis").restart();
    let process = Process::start(&store, 1).await;
    crate::outage::wait_drained(&process.app).await;
    let clicks = after_restart_flow(&process.app, &received, &received).await;
    // A click spooled whose answer the kill cut off may count too; none counts twice.
    let high = attempts as u64;
    assert!((received.len() as u64..=high).contains(&clicks), "clicks {clicks} within [{}, {high}]", received.len());
    process.kill();
}
