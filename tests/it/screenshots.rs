//! The README's screenshots: a cakelink with a month of demo traffic, every dashboard
//! page at 1280×800 and 390×844, written to `docs/screenshots/`. Not part of the suite:
//! `docs/screenshots/take.sh` runs it (`--ignored`).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cakelink::clickid::Keyring;
use cakelink::config::Config;
use cakelink::model::{Click, Conversion};
use cakelink::money::Money;
use cakelink::store::{ClickOrigin, StoreLimits};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::helpers::{spawn_app_over, Backend, StoreHandle, ADMIN_TOKEN, CHROME, SECRET};
use crate::webdriver::Browser;

const LINKS: [(&str, u64, u64); 5] = [
    ("cake/demo", 160, 31),
    ("cake/spring-sale", 110, 24),
    ("cake/retarget-fb", 70, 45),
    ("cake/tiktok-ugc", 50, 18),
    ("tune/t1", 30, 40),
];

/// A webhook receiver that refuses one request in five, as a misconfigured one would.
async fn receiver() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let (status, body) =
                            if n % 5 == 2 { (400, r#"{"error":"invalid pixel id"}"#) } else { (200, "{}") };
                        let mut res = hyper::Response::new(Full::new(Bytes::from(body)));
                        *res.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    url
}

/// A small deterministic generator, so that every run draws the same month.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// Thirty days of clicks and conversions written straight into the store, with their
/// real times, before the server starts.
async fn seed(store: &StoreHandle, extra: &str) {
    let text = crate::helpers::config_text("127.0.0.1:0", &store.toml, "", extra);
    let config = Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("demo config: {e}"));
    let limits = StoreLimits {
        click_ttl: config.store.click_ttl(),
        event_log_max: config.store.event_log_max,
        personal_ttl: cakelink::store::PERSONAL_DATA_TTL,
        outbox: cakelink::store::OutboxRoutes::new(Vec::new()),
    };
    let opened = cakelink::store::open(&config.store.backend, limits).await.expect("open the store");
    let keyring = Keyring::new(SECRET, &[], 86_400 * 37);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let sources = ["facebook", "tiktok", "google", "newsletter"];
    let (mut clicks_made, mut conversions_made) = (Vec::new(), Vec::new());
    for day in 0..30i64 {
        // A campaign that grows over the month, with quieter weekends.
        let weight = 60 + day * 2 + if day % 7 < 2 { 0 } else { 25 };
        for (link, per_day, permille) in LINKS {
            let clicks = per_day * weight as u64 / 120 + dice.next(per_day / 4);
            for i in 0..clicks {
                let at_secs = now - (29 - day) * 86_400 - dice.next(86_000) as i64;
                let at_secs = at_secs.min(now - 60);
                let bot = (dice.next(100) < 6).then(|| "crawler: facebookexternalhit".to_owned());
                let click = Click {
                    id: keyring.mint(at_secs as u64).to_string(),
                    link: link.into(),
                    at: at_secs * 1000,
                    bot: bot.clone(),
                    ip: Some(format!("198.51.100.{}", dice.next(250))),
                    user_agent: Some(CHROME.into()),
                    referer: Some("https://m.facebook.com/".into()),
                    utm: vec![("source".into(), sources[dice.next(4) as usize].into())],
                    ad_click_ids: vec![],
                    subids: vec![],
                    offer: None,
                    rule: None,
                    fallback: None,
                };
                clicks_made.push(click.clone());
                if bot.is_none() && dice.next(1000) < permille {
                    let tid = format!("T{day}-{i}");
                    let value = Money::from_micros(((dice.next(40) + 8) * 1_000_000 + dice.next(4) * 250_000) as i64);
                    let fields = vec![("tid".to_owned(), tid.clone())];
                    let conversion = Conversion {
                        id: Conversion::derive_id(&click.id, Some(&tid), &fields, "Purchase"),
                        at: click.at + 600_000,
                        network: link.split('/').next().unwrap_or("cake").into(),
                        event: "Purchase".into(),
                        value,
                        currency: "USD".into(),
                        transaction_id: Some(tid),
                        item_id: None,
                        fields,
                        click,
                        reversed_at: None,
                    };
                    conversions_made.push(conversion);
                }
            }
        }
    }
    // Many writes in flight at once, as under real traffic: the store batches them.
    for chunk in clicks_made.chunks(256) {
        let writes = chunk.iter().map(|c| opened.record_click(c.view(), ClickOrigin::Replayed));
        for done in futures_util::future::join_all(writes).await {
            done.expect("record click");
        }
    }
    for chunk in conversions_made.chunks(256) {
        let writes = chunk.iter().map(|c| opened.record_conversion(c));
        for done in futures_util::future::join_all(writes).await {
            done.expect("record conversion");
        }
    }
    opened.flush().await.expect("flush");
}

/// Waits for a just-stopped embedded store's directory lock to go.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/screenshots/*.png; run by docs/screenshots/take.sh"]
async fn take_screenshots() {
    let store = StoreHandle::new(Backend::Embedded);
    let url = receiver().await;
    let extra = format!(
        "\n[[links]]\nslug = \"spring-sale\"\noffer = \"https://offers.example.com/?a=200&c=812\"\n\n[forward]\npoll_ms = 50\n\n[[destinations]]\nname = \"meta-main\"\ntype = \"webhook\"\nurl = \"{url}/hook\"\nsecret = \"demo\"\nbackoff_ms = 50\ntimeout_secs = 2\n"
    );
    seed(&store, &extra).await;
    settle().await;
    let app = spawn_app_over(&store, &extra).await;
    for (slug, offer, status) in [
        ("retarget-fb", "https://offers.example.com/?a=200&c=955", "active"),
        ("tiktok-ugc", "https://offers.example.com/?a=200&c=1021", "active"),
        ("winter-old", "https://offers.example.com/?a=200&c=377", "paused"),
    ] {
        let res = app.client.post(format!("{}/api/links", app.base)).bearer_auth(ADMIN_TOKEN);
        let body = serde_json::json!({"slug": slug, "offer": offer, "status": status});
        assert_eq!(res.json(&body).send().await.expect("link").status(), 201);
    }
    // Today's postbacks: conversions, a duplicate, and ones that did not match.
    for (i, source) in ["facebook", "tiktok", "facebook", "google", "facebook", "tiktok"].iter().enumerate() {
        let res = app.get(&format!("/go/cake/spring-sale?utm_source={source}&utm_campaign=spring-{i}")).await;
        let click = crate::helpers::click_id_in(&res, "s2");
        let price = ["12.00", "8.50", "24.00", "12.00", "0", "15.75"][i];
        let (_, body) = app.postback(&format!("s2={click}&tid=live-{i}&price={price}&oid=77")).await;
        assert_eq!(body["status"], "ok", "{body}");
        if i == 2 {
            app.postback(&format!("s2={click}&tid=live-{i}&price={price}&oid=77")).await;
        }
    }
    app.postback("s2=%23s2%23&tid=test&price=1").await;
    app.postback("s2=0123456789abcdefXYZ&tid=t9&price=5").await;
    let started = Instant::now();
    while app.api("deliveries?status=failed").await["deliveries"].as_array().map_or(0, Vec::len) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "a failed delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let click = app.api("events?status=ok&limit=1").await["events"][0]["click_id"].as_str().expect("id").to_owned();

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let pages = [
        ("overview", "/ui/?range=30d"),
        ("links", "/ui/links"),
        ("link", "/ui/links/cake/retarget-fb"),
        ("events", "/ui/events"),
        ("click", &format!("/ui/clicks/{click}")),
        ("conversions", "/ui/conversions?range=7d"),
        ("deliveries", "/ui/deliveries"),
        ("setup", "/ui/setup"),
    ];
    for (width, height, suffix) in [(1280, 800, "desktop"), (390, 844, "phone")] {
        let browser = Browser::start(width, height).await;
        browser.goto(&format!("{}/ui/login", app.base)).await;
        std::fs::write(dir.join(format!("login-{suffix}.png")), browser.screenshot().await).expect("write");
        browser.fill("#token", ADMIN_TOKEN).await;
        browser.click("button[type=submit]").await;
        browser.wait_path("/ui/").await;
        for (name, path) in &pages {
            browser.goto(&format!("{}{path}", app.base)).await;
            let png = browser.screenshot().await;
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), png).expect("write");
        }
        browser.quit().await;
    }
    app.stop().await;
}
