//! Postback health over HTTP, on both stores: `/api/health/postbacks` lists the links
//! people click with no postback coming back, and `/metrics` has the time of each
//! network's last `ok` postback, seeded from the event log at start-up.

use cakelink::app::Application;
use cakelink::config::Config;
use cakelink::model::{Click, Conversion, Event, EventStatus, UnixMillis};
use cakelink::money::Money;
use cakelink::store::{ClickOrigin, ClickStore, Storage};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::helpers::{
    attach, config_text, spawn_app, spawn_app_over, Backend, StoreHandle, TestApp, ADMIN_TOKEN, POSTBACK_KEY,
};
use crate::on_both_stores;

const SLACKBOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

/// One link per case the health check tells apart.
const LINKS: &str = r#"
[[links]]
slug = "quiet"
offer = "https://offers.example.com/?a=1&c=11"

[[links]]
slug = "converting"
offer = "https://offers.example.com/?a=1&c=12"

[[links]]
slug = "few"
offer = "https://offers.example.com/?a=1&c=13"

[[links]]
slug = "bots"
offer = "https://offers.example.com/?a=1&c=14"

[[links]]
slug = "lapsed"
offer = "https://offers.example.com/?a=1&c=15"
"#;

/// A cakelink over `store` whose storage the test can also write to, at chosen times.
pub struct Seedable {
    pub app: TestApp,
    pub storage: Storage,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Seedable {
    pub async fn start(store: &StoreHandle, extra: &str) -> Seedable {
        let text = config_text("127.0.0.1:0", &store.toml, "", extra);
        let config = Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("test config: {e}"));
        let app = Application::build(config).await.expect("app builds");
        let addr = app.local_addr();
        let storage = app.store();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Seedable { app: attach(addr, store), storage, stop: Some(stop), task }
    }

    /// Stores `n` clicks on `link` (`network/slug`) at `at`, by people or by a bot.
    pub async fn clicks(&self, link: &str, n: usize, at: UnixMillis, bot: bool) {
        let writes = (0..n).map(|i| {
            let click = click(&format!("seed-{link}-{at}-{bot}-{i}"), link, at, bot);
            async move { self.storage.clicks().record_click(click.view(), ClickOrigin::Replayed).await }
        });
        for done in futures_util::future::join_all(writes).await {
            done.expect("record click");
        }
    }

    /// Stores a conversion on `link` at `at`.
    pub async fn conversion(&self, link: &str, at: UnixMillis) {
        let conversion = Conversion {
            id: format!("seed-conversion-{link}-{at}"),
            at,
            network: "cake".into(),
            event: "Lead".into(),
            value: Money::ZERO,
            currency: "USD".into(),
            transaction_id: None,
            item_id: None,
            fields: vec![],
            click: click(&format!("seed-converted-{link}-{at}"), link, at - 60_000, false),
            reversed_at: None,
        };
        self.storage.conversions().record_conversion(&conversion).await.expect("record conversion");
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task").expect("server stops cleanly");
    }
}

fn click(id: &str, link: &str, at: UnixMillis, bot: bool) -> Click {
    Click {
        id: id.into(),
        link: link.into(),
        at,
        bot: bot.then(|| "crawler: seeded".to_owned()),
        ip: None,
        user_agent: None,
        referer: None,
        utm: vec![],
        ad_click_ids: vec![],
        subids: vec![],
        offer: None,
        rule: None,
        fallback: None,
    }
}

pub fn now_ms() -> UnixMillis {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as UnixMillis
}

async fn health(app: &TestApp, query: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .request(Method::GET, format!("{}/api/health/postbacks{query}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    let status = res.status();
    (status, res.json().await.expect("JSON"))
}

/// The listed links as (link, clicks).
fn listed(body: &Value) -> Vec<(String, u64)> {
    body["silent"]
        .as_array()
        .unwrap_or_else(|| panic!("a silent list in {body}"))
        .iter()
        .map(|s| (s["link"].as_str().expect("link").to_owned(), s["clicks"].as_u64().expect("clicks")))
        .collect()
}

fn entry<'a>(body: &'a Value, link: &str) -> &'a Value {
    body["silent"].as_array().and_then(|l| l.iter().find(|s| s["link"] == link)).unwrap_or(&Value::Null)
}

async fn silent_links_are_the_clicked_ones_without_postbacks(backend: Backend) {
    let store = StoreHandle::new(backend);
    let seeded = Seedable::start(&store, LINKS).await;
    let app = &seeded.app;
    // Through the redirect, as visitors and bots send them.
    for _ in 0..7 {
        app.click("quiet").await;
    }
    let mut converting = Vec::new();
    for _ in 0..6 {
        converting.push(app.click("converting").await);
    }
    for _ in 0..4 {
        app.click("few").await;
        app.click("bots").await;
    }
    for _ in 0..10 {
        let res = app.get_as("/go/cake/bots", Some(SLACKBOT)).await;
        assert_eq!(res.status(), StatusCode::FOUND);
    }
    let (status, body) = app.postback(&format!("s2={}&tid=health-1", converting[0])).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    // `lapsed` converted three hours ago, and is clicked now.
    for _ in 0..5 {
        app.click("lapsed").await;
    }
    let three_hours_ago = now_ms() - 3 * 3_600_000;
    seeded.conversion("cake/lapsed", three_hours_ago).await;

    let (status, body) = health(app, "?hours=2&min_clicks=5").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Most clicked first; `converting` had a postback, `few` too few clicks, and `bots`
    // only 4 clicks by people beside its 10 bot hits.
    assert_eq!(listed(&body), [("cake/quiet".to_owned(), 7), ("cake/lapsed".to_owned(), 5)], "{body}");
    let quiet = entry(&body, "cake/quiet");
    assert_eq!(quiet["postbacks"], 0, "{body}");
    assert!(quiet["last_postback_at"].is_null(), "{body}");
    // The conversion before the window is its last postback, to the millisecond.
    let last = entry(&body, "cake/lapsed")["last_postback_at"].as_str().expect("a time").to_owned();
    let last = OffsetDateTime::parse(&last, &Rfc3339).unwrap_or_else(|e| panic!("{last}: {e}"));
    assert_eq!((last.unix_timestamp_nanos() / 1_000_000) as UnixMillis, three_hours_ago);

    // A window that reaches back to that conversion does not call `lapsed` silent.
    let (_, body) = health(app, "?hours=5&min_clicks=5").await;
    assert_eq!(listed(&body), [("cake/quiet".to_owned(), 7)], "{body}");
    // The default threshold (100 clicks a day) lists none of them.
    let (status, body) = health(app, "").await;
    assert_eq!((status, listed(&body)), (StatusCode::OK, vec![]), "{body}");
    // Nor does a threshold above their clicks.
    let (_, body) = health(app, "?min_clicks=8").await;
    assert_eq!(listed(&body), vec![], "{body}");
    seeded.stop().await;
}

async fn bad_health_parameters_are_explained(backend: Backend) {
    let app = spawn_app(backend).await;
    for (query, named) in [
        ("hours=0", "hours"),
        ("hours=721", "hours"),
        ("hours=day", "hours"),
        ("hours=", "hours"),
        ("min_clicks=0", "min_clicks"),
        ("min_clicks=-1", "min_clicks"),
        ("hours=24&min_clicks=lots", "min_clicks"),
    ] {
        let (status, body) = health(&app, &format!("?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let reason = body["error"].as_str().unwrap_or_else(|| panic!("{query}: a reason in {body}"));
        assert!(reason.starts_with(&format!("{named}=")), "{query}: {reason}");
    }
    let (status, _) = health(&app, "?hours=720&min_clicks=1").await;
    assert_eq!(status, StatusCode::OK);
    let res = app.client.get(format!("{}/api/health/postbacks", app.base)).send().await.expect("request");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .client
        .post(format!("{}/api/health/postbacks", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

/// The gauge's value for `network` in a `/metrics` text.
fn last_ok(metrics: &str, network: &str) -> Option<f64> {
    let prefix = format!("cakelink_postback_last_ok_timestamp_seconds{{network=\"{network}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().expect("a number"))
}

async fn metrics(app: &TestApp) -> String {
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.expect("metrics text")
}

async fn the_last_ok_postback_is_a_gauge_per_network(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = now_ms() as f64 / 1000.0;
    let click = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={click}&tid=gauge-1")).await;
    assert_eq!(body["status"], "ok", "{body}");
    // The recorder is the process's, shared with other tests' servers: the gauge is at
    // least this postback's time.
    let value = last_ok(&metrics(&app).await, "cake").expect("the gauge with network=\"cake\"");
    assert!(value >= before.floor() && value <= now_ms() as f64 / 1000.0 + 1.0, "{value} vs {before}");
    // The tune network has its own label.
    let res = app.get("/go/tune/t1").await;
    let click = crate::helpers::click_id_in(&res, "aff_sub");
    let res = app.get_as(&format!("/collect/tune/{POSTBACK_KEY}?aff_sub={click}&transaction_id=gauge-2"), None).await;
    assert_eq!(res.json::<Value>().await.expect("JSON")["status"], "ok");
    assert!(last_ok(&metrics(&app).await, "tune").is_some_and(|v| v >= before.floor()));
    app.stop().await;
}

async fn a_restart_seeds_the_gauge_from_the_event_log(backend: Backend) {
    // A network no other test posts for, so that the process-wide gauge is this test's.
    let network = format!("seeded-{backend:?}").to_ascii_lowercase();
    let store = StoreHandle::new(backend);
    let first = Seedable::start(&store, "").await;
    let at = now_ms() - 2 * 86_400_000;
    for (offset, status) in [(0, EventStatus::Ok), (1000, EventStatus::NoMatch)] {
        let event = Event {
            received_at: at + offset,
            network: network.clone(),
            status,
            reason: "seeded".into(),
            click_id: None,
            conversion_id: None,
            query: String::new(),
        };
        first.storage.events().log_event(&event).await.expect("log event");
    }
    assert_eq!(last_ok(&metrics(&first.app).await, &network), None, "not set by writing the log");
    first.stop().await;

    let second = spawn_app_over(&store, "").await;
    // The newest `ok` entry, not the later `no_match`.
    assert_eq!(last_ok(&metrics(&second).await, &network), Some(at as f64 / 1000.0));
    second.stop().await;
}

on_both_stores!(
    silent_links_are_the_clicked_ones_without_postbacks,
    bad_health_parameters_are_explained,
    the_last_ok_postback_is_a_gauge_per_network,
    a_restart_seeds_the_gauge_from_the_event_log,
);
