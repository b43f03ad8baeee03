//! Daily caps: exact under concurrency on both stores and with two processes on one
//! Redis, bots never using a cap up, the fallback when every offer is full, and the day
//! turning (on the stores directly, the day given as a parameter rather than waited for).

use std::time::Duration;

use cakelink::clickid::Keyring;
use cakelink::model::Click;
use cakelink::store::embedded::EmbeddedStore;
use cakelink::store::redis::RedisStore;
use cakelink::store::{CapCandidate, CapClaim, ClickStore, StoreLimits};
use reqwest::StatusCode;

use crate::helpers::{
    count, spawn_app_over, spawn_app_with, today, Backend, StoreHandle, TestApp, ADMIN_TOKEN, CHROME,
};
use crate::on_both_stores;
use crate::redis_server::RedisServer;

const SOLD_OUT: &str = "https://example.com/sold-out";

/// One offer capped at 25, and a link whose two capped offers fall back in turn.
const CAPPED: &str = r#"
[[links]]
slug = "capped"
offer = "https://offers.example.com/?c=0"
fallback = "https://example.com/sold-out"
  [[links.offers]]
  id = "a"
  url = "https://offers.example.com/?c=1"
  daily_cap = 25

[[links]]
slug = "chain"
offer = "https://offers.example.com/?c=0"
fallback = "https://example.com/sold-out"
  [[links.offers]]
  id = "a"
  url = "https://offers.example.com/?c=1"
  daily_cap = 3
  [[links.offers]]
  id = "b"
  url = "https://offers.example.com/?c=2"
  daily_cap = 3

[[links]]
slug = "botcap"
offer = "https://offers.example.com/?c=0"
  [[links.offers]]
  id = "a"
  url = "https://offers.example.com/?c=1"
  daily_cap = 3
"#;

/// `n` concurrent clicks on `slug`, spread over `apps`; the `Location`s they got.
async fn clicks(apps: &[&TestApp], slug: &str, n: usize, user_agent: &str) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        let (client, url, ua) = (app.client.clone(), format!("{}/go/cake/{slug}", app.base), user_agent.to_owned());
        set.spawn(async move { client.get(url).header("user-agent", ua).send().await.expect("click") });
    }
    let mut out = Vec::new();
    while let Some(res) = set.join_next().await {
        let res = res.expect("task");
        match res.status() {
            StatusCode::FOUND => out.push(res.headers()["location"].to_str().expect("ascii").to_owned()),
            other => out.push(other.as_str().to_owned()),
        }
    }
    out
}

fn admitted(locations: &[String], offer_url: &str) -> usize {
    locations.iter().filter(|l| l.starts_with(offer_url)).count()
}

async fn forty_concurrent_clicks_against_a_cap_of_25_admit_25(backend: Backend) {
    let app = spawn_app_with(backend, "", CAPPED).await;
    let got = clicks(&[&app], "capped", 40, CHROME).await;
    assert_eq!(admitted(&got, "https://offers.example.com/?c=1"), 25, "{got:?}");
    assert_eq!(got.iter().filter(|l| *l == SOLD_OUT).count(), 15);
    let rows = app.api(&format!("stats?from={0}&to={0}&group=offer", today())).await;
    let row = rows["rows"].as_array().expect("rows").iter().find(|r| r["key"] == "cake/capped/a").cloned();
    assert_eq!(count(&row.expect("offer row"), "clicks"), 25);
    // Every click is recorded, the 15 sent to the fallback with the reason.
    assert_eq!(count(&app.stats_for("cake/capped").await, "clicks"), 40);
    app.stop().await;
}

async fn full_offers_fall_back_in_turn_then_to_the_fallback(backend: Backend) {
    let app = spawn_app_with(backend, "", CAPPED).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(clicks(&[&app], "chain", 1, CHROME).await);
    }
    assert_eq!(admitted(&got, "https://offers.example.com/?c=1"), 3, "{got:?}");
    assert_eq!(admitted(&got, "https://offers.example.com/?c=2"), 3, "{got:?}");
    assert_eq!(got[6..], vec![SOLD_OUT.to_owned(); 4]);
    assert_eq!(count(&app.stats_for("cake/chain").await, "clicks"), 10, "fallback clicks are recorded too");
    app.stop().await;
}

async fn bots_never_use_a_cap_up(backend: Backend) {
    let app = spawn_app_with(backend, "", CAPPED).await;
    let bots = clicks(&[&app], "botcap", 10, "Mozilla/5.0 (compatible; Googlebot/2.1)").await;
    assert_eq!(admitted(&bots, "https://offers.example.com/?c=1"), 10, "bots see the offer");
    let people = clicks(&[&app], "botcap", 4, CHROME).await;
    assert_eq!(admitted(&people, "https://offers.example.com/?c=1"), 3, "{people:?}");
    // No fallback on this link: the fourth person gets a 404, and is still recorded.
    assert_eq!(people.iter().filter(|l| *l == "404").count(), 1);
    assert_eq!(count(&app.stats_for("cake/botcap").await, "clicks"), 4);
    assert_eq!(count(&app.stats_for("cake/botcap").await, "bot_hits"), 10);
    app.stop().await;
}

on_both_stores!(
    forty_concurrent_clicks_against_a_cap_of_25_admit_25,
    full_offers_fall_back_in_turn_then_to_the_fallback,
    bots_never_use_a_cap_up,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_redis_share_a_cap_exactly() {
    let store = StoreHandle::new(Backend::Redis);
    let a = spawn_app_over(&store, CAPPED).await;
    let b = spawn_app_over(&store, CAPPED).await;
    let got = clicks(&[&a, &b], "capped", 40, CHROME).await;
    assert_eq!(admitted(&got, "https://offers.example.com/?c=1"), 25, "{got:?}");
    let res = a.client.get(format!("{}/api/links", a.base)).bearer_auth(ADMIN_TOKEN).send().await.expect("api");
    assert_eq!(res.status(), StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

fn limits() -> StoreLimits {
    StoreLimits {
        click_ttl: Duration::from_secs(86_400 * 30),
        event_log_max: 10,
        personal_ttl: cakelink::store::PERSONAL_DATA_TTL,
        outbox: Default::default(),
    }
}

fn person(id: &str, at: i64) -> Click {
    Click {
        id: id.to_owned(),
        link: "cake/day".into(),
        at,
        bot: None,
        ip: None,
        user_agent: None,
        referer: None,
        utm: vec![],
        ad_click_ids: vec![],
        subids: vec![],
        offer: None,
        rule: Some(0),
        fallback: None,
    }
}

/// A cap of 2 on `day`: two clicks admitted, the third refused; on `day + 1` the cap
/// starts over. The stored clicks carry the offer or the fallback's reason.
async fn check_the_day_turns(store: &dyn ClickStore) {
    // Today, so that the stored clicks are within their lifetime; the next day is only
    // named, not waited for.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let day = (now / 86_400_000) as u32;
    let at = now;
    let claim = |day| CapClaim { day, candidates: vec![CapCandidate { offer: "a".into(), cap: Some(2) }] };
    let ring = Keyring::new("a-test-secret-0123456789", &[], 86_400);
    let ids: Vec<String> = (0..4).map(|_| ring.mint((now / 1000) as u64).to_string()).collect();
    let mut taken = Vec::new();
    for id in &ids[..3] {
        taken.push(store.record_capped_click(person(id, at).view(), &claim(day)).await.expect("record"));
    }
    assert_eq!(taken, [Some(0), Some(0), None]);
    let next_day = store.record_capped_click(person(&ids[3], at + 86_400_000).view(), &claim(day + 1)).await;
    assert_eq!(next_day.expect("next day"), Some(0));
    let first = store.find_click(&ids[0]).await.expect("find").expect("stored");
    assert_eq!((first.offer.as_deref(), first.rule, first.fallback.as_deref()), (Some("a"), Some(0), None));
    let third = store.find_click(&ids[2]).await.expect("find").expect("stored");
    assert_eq!((third.offer.as_deref(), third.fallback.as_deref()), (None, Some("capped")));
}

#[tokio::test]
async fn the_day_turns_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store = EmbeddedStore::open(dir.path(), Duration::from_millis(500), limits()).expect("open");
    check_the_day_turns(&store).await;
}

#[tokio::test]
async fn the_day_turns_on_redis() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    check_the_day_turns(&store).await;
}

#[tokio::test]
async fn the_day_turns_on_a_redis_cluster() {
    let server = RedisServer::start_cluster();
    let store = RedisStore::connect_cluster(&[server.url()], limits()).await.expect("connect");
    check_the_day_turns(&store).await;
}
