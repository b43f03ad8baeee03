//! The dashboard in a real headless Chromium over WebDriver: signing in, the chart, a
//! link created through the form, the event log, re-queueing a failed delivery, XSS
//! payloads staying text, the warning about links clicked without postbacks, a form
//! posted without its CSRF token, and a conversion the network reversed.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::forward::{forward, meta, reply, StandIn, META_PATH};
use crate::helpers::{location, spawn_app, spawn_app_with, Backend, StoreHandle, TestApp, ADMIN_TOKEN, CHROME};
use crate::postback_health::{now_ms, Seedable};
use crate::webdriver::Browser;

const XSS: &str = "<img src=x onerror=alert(1)>";

/// Signs the browser in through the form.
async fn sign_in(browser: &Browser, app: &TestApp) {
    browser.goto(&format!("{}/ui/login", app.base)).await;
    browser.fill("#token", ADMIN_TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_path("/ui/").await;
}

/// Polls `check` until it is true, failing after a bound.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_is_required_and_a_wrong_token_is_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let browser = Browser::start(1280, 800).await;
    for page in ["/ui/", "/ui/links", "/ui/setup"] {
        browser.goto(&format!("{}{page}", app.base)).await;
        assert_eq!(browser.path().await, "/ui/login", "{page} without a session");
    }
    browser.fill("#token", "not-the-token").await;
    browser.click("button[type=submit]").await;
    browser.wait_for("#token-error").await;
    assert_eq!(browser.text("#token-error").await, "That is not the admin token.");
    assert_eq!(browser.count("nav a").await, 0, "nothing but the form");

    sign_in(&browser, &app).await;
    assert!(browser.body().await.contains("Overview"));
    browser.goto(&format!("{}/ui/setup", app.base)).await;
    assert_eq!(browser.path().await, "/ui/setup");
    let postback = browser.eval("return document.getElementById('postback-0').value").await;
    let expected = format!("https://track.example.com/collect/cake/{}?", crate::helpers::POSTBACK_KEY);
    assert!(postback.as_str().expect("text").starts_with(&expected), "{postback}");
    // The session cookie is out of the page's reach.
    assert_eq!(browser.eval("return document.cookie").await, "");

    browser.click(".signout button").await;
    browser.wait_path("/ui/login").await;
    browser.goto(&format!("{}/ui/", app.base)).await;
    assert_eq!(browser.path().await, "/ui/login", "signed out");
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_has_one_mark_per_day_of_the_range() {
    let app = spawn_app(Backend::Embedded).await;
    for _ in 0..3 {
        app.click("demo").await;
    }
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    for (query, days) in
        [("range=today", 1), ("range=7d", 7), ("range=30d", 30), ("range=custom&from=2026-02-01&to=2026-03-05", 33)]
    {
        browser.goto(&format!("{}/ui/?{query}", app.base)).await;
        assert_eq!(browser.count("#chart rect.bar").await, days, "{query}: bars");
        assert_eq!(browser.count("#chart circle.point").await, days, "{query}: points");
    }
    // Today's bar carries today's clicks, and the totals say the same.
    browser.goto(&format!("{}/ui/?range=7d", app.base)).await;
    let today = crate::helpers::today();
    // (An SVG <title> is a tooltip, not visible text: read its content.)
    let script = format!("return document.querySelector(\"#chart rect.bar[data-day='{today}'] title\").textContent");
    assert_eq!(browser.eval(&script).await, Value::String(format!("{today}: 3 clicks, 0 conversions")));
    assert_eq!(browser.text("#total-clicks").await, "3");
    // Three clicks without a postback are no reason for alarm.
    assert_eq!(browser.count("#silent-links").await, 0, "no silent-link warning");
    // The per-link table sorts on the server: by link, both ways.
    browser.click("#per-link th:first-child a").await;
    browser.wait_path("/ui/?range=7d&sort=link&dir=desc").await;
    let first = browser.text("#per-link tbody tr:first-child td").await;
    assert_eq!(first, "cake/demo");
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_created_through_the_form_redirects_visitors() {
    let app = spawn_app(Backend::Embedded).await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/ui/links", app.base)).await;
    // A bad offer: the form comes back with the error beside the field and the slug kept.
    browser.fill("#f-slug", "spring-sale").await;
    browser.fill("#f-offer", "not a url").await;
    browser.click("#new-link button[type=submit]").await;
    browser.wait_for("#f-offer-error").await;
    assert!(browser.text("#f-offer-error").await.contains("is not an absolute http(s) URL"));
    assert_eq!(browser.eval("return document.getElementById('f-slug').value").await, "spring-sale");
    browser.fill("#f-offer", "https://offers.example.com/?a=200&c=99").await;
    browser.click("#new-link button[type=submit]").await;
    browser.wait_path("/ui/links?created=cake%2Fspring-sale").await;
    assert_eq!(browser.text(".notice").await, "Created cake/spring-sale.");

    let tracking =
        browser.eval("return document.querySelector(\"tr[data-link='cake/spring-sale'] input\").value").await;
    let tracking = tracking.as_str().expect("the tracking URL").to_owned();
    assert_eq!(tracking, "https://track.example.com/go/cake/spring-sale");
    let path = tracking.strip_prefix("https://track.example.com").expect("public URL");
    let res = app.get(path).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert!(location(&res).starts_with("https://offers.example.com/?a=200&c=99&s2="), "{}", location(&res));

    // Paused from the list, the link stops sending visitors to the offer.
    browser.click("tr[data-link='cake/spring-sale'] button[value=pause]").await;
    browser.wait_path("/ui/links?saved=cake%2Fspring-sale").await;
    assert_eq!(browser.text("tr[data-link='cake/spring-sale'] .badge").await, "paused");
    assert_eq!(app.get(path).await.status(), StatusCode::NOT_FOUND, "paused without a fallback");
    // Config links have no buttons.
    assert_eq!(browser.count("tr[data-link='cake/demo'] button[value=delete]").await, 0);
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postback_appears_on_the_events_page() {
    let app = spawn_app(Backend::Embedded).await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    let click = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={click}&tid=ev-1&price=12.50")).await;
    assert_eq!(body["status"], "ok");
    let (_, body) = app.postback("s2=forged-click-id&tid=ev-2").await;
    assert_eq!(body["status"], "no_match");

    browser.goto(&format!("{}/ui/events", app.base)).await;
    assert_eq!(browser.count("#events tbody tr").await, 2);
    let text = browser.text("#events").await;
    assert!(text.contains("ok") && text.contains("no_match") && text.contains("ev-1") && text.contains("12.50"));
    assert!(!text.contains(crate::helpers::POSTBACK_KEY), "the key is never shown");
    browser.goto(&format!("{}/ui/events?status=ok", app.base)).await;
    assert_eq!(browser.count("#events tbody tr").await, 1);
    browser.click(&format!("#events a[href='/ui/clicks/{click}']")).await;
    browser.wait_path(&format!("/ui/clicks/{click}")).await;
    assert!(browser.body().await.contains("cake/demo"));
    // The conversion is on the conversions page too.
    browser.goto(&format!("{}/ui/conversions", app.base)).await;
    assert!(browser.text("#conversions").await.contains("12.50"));
    browser.goto(&format!("{}/ui/?range=today", app.base)).await;
    assert_eq!(browser.text("#total-revenue").await, "12.50");
    assert_eq!(browser.text("#total-epc").await, "12.50");
    browser.quit().await;
    app.stop().await;
}

/// A webhook receiver that refuses the first request and takes the rest.
async fn picky_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let (status, body) = if n == 0 { (400, "bad signature <b>") } else { (200, "{}") };
                        let mut res = hyper::Response::new(Full::new(Bytes::from(body)));
                        *res.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_requeued_from_the_page() {
    let (url, seen) = picky_receiver().await;
    let extra = format!(
        "\n[forward]\npoll_ms = 20\n\n[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{url}/hook\"\nsecret = \"s\"\nbackoff_ms = 20\ntimeout_secs = 2\n"
    );
    let app = spawn_app_with(Backend::Embedded, "", &extra).await;
    let click = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={click}&tid=dl-1&price=3")).await;
    assert_eq!(body["status"], "ok");
    let delivery = |status: &'static str| {
        let app = &app;
        async move {
            app.api(&format!("deliveries?status={status}")).await["deliveries"].as_array().expect("list").len() == 1
        }
    };
    eventually("the delivery to fail", || delivery("failed")).await;

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/ui/deliveries?status=failed", app.base)).await;
    let row = browser.text("#deliveries tbody tr").await;
    assert!(row.contains("hook") && row.contains("failed") && row.contains("400"), "{row}");
    assert!(row.contains("bad signature <b>"), "the last error, as text: {row}");
    browser.click("#deliveries button[type=submit]").await;
    browser.wait_path("/ui/deliveries?requeued=1").await;
    assert!(browser.text(".notice").await.starts_with("Re-queued"));
    eventually("the delivery to go out again", || delivery("delivered")).await;
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    browser.goto(&format!("{}/ui/deliveries", app.base)).await;
    assert_eq!(browser.text("#deliveries .badge").await, "delivered");
    assert_eq!(browser.count("#deliveries button").await, 0, "nothing left to re-queue");
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_strangers_write_stays_text_on_every_page() {
    let app = spawn_app(Backend::Embedded).await;
    let payload = percent_encoding::utf8_percent_encode(XSS, percent_encoding::NON_ALPHANUMERIC).to_string();
    let res = app
        .client
        .get(format!(
            "{}/go/cake/demo?utm_source={payload}&utm_campaign=%22%3E%3Cscript%3Ealert(2)%3C/script%3E",
            app.base
        ))
        .header("user-agent", format!("{CHROME} <script>alert(3)</script>"))
        .header("referer", "https://ref.example.com/\"><svg onload=alert(4)>")
        .send()
        .await
        .expect("click");
    let click = crate::helpers::click_id_in(&res, "s2");
    let (_, body) =
        app.postback(&format!("s2={click}&tid={payload}&price=1&s5=%3Ciframe%20src%3Djavascript:alert(5)%3E")).await;
    assert_eq!(body["status"], "ok");
    let res = app
        .client
        .post(format!("{}/api/links", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"slug": "x", "offer": "https://o.example.com/?a=1", "event": XSS}))
        .send()
        .await
        .expect("link");
    assert_eq!(res.status(), StatusCode::CREATED);

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    let pages = [
        "/ui/?range=today",
        "/ui/links",
        "/ui/links/cake/x",
        "/ui/events",
        "/ui/conversions",
        "/ui/deliveries",
        "/ui/setup",
    ];
    let click_page = format!("/ui/clicks/{click}");
    for page in pages.iter().copied().chain([click_page.as_str()]) {
        browser.goto(&format!("{}{page}", app.base)).await;
        browser.assert_no_dialog(page).await;
        let injected = browser
            .eval("return document.querySelectorAll('img[src=x], script:not([src]), svg[onload], iframe').length")
            .await;
        assert_eq!(injected, 0, "{page}: markup from input became elements");
    }
    // And it shows, as written.
    browser.goto(&format!("{}{click_page}", app.base)).await;
    let text = browser.body().await;
    assert!(text.contains(XSS) && text.contains("<script>alert(3)</script>") && text.contains("<svg onload=alert(4)>"));
    browser.goto(&format!("{}/ui/conversions", app.base)).await;
    assert!(browser.text("#conversions").await.contains(XSS));
    browser.goto(&format!("{}/ui/events", app.base)).await;
    assert!(browser.text("#events").await.contains("<iframe src=javascript:alert(5)>"));
    browser.goto(&format!("{}/ui/links/cake/x", app.base)).await;
    assert_eq!(browser.eval("return document.getElementById('f-event').value").await, XSS);
    browser.assert_no_dialog("the last page").await;
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_clicked_without_postbacks_are_flagged_on_the_overview() {
    let store = StoreHandle::new(Backend::Embedded);
    let seeded = Seedable::start(&store, "").await;
    let now = now_ms();
    seeded.clicks("cake/demo", 130, now, false).await;
    seeded.conversion("cake/demo", now - 5 * 86_400_000).await;
    seeded.clicks("cake/cpl", 150, now, false).await;
    seeded.conversion("cake/cpl", now).await;
    seeded.clicks("cake/perm", 400, now, true).await;
    // Slugs cannot carry markup, but stored counters are shown as they are: a link name
    // from elsewhere (an older version, another process) must stay text.
    let hostile = format!("cake/{XSS}");
    seeded.clicks(&hostile, 101, now, false).await;

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &seeded.app).await;
    browser.wait_for("#silent-links").await;
    browser.assert_no_dialog("/ui/").await;
    let injected = browser.eval("return document.querySelectorAll('img[src=x]').length").await;
    assert_eq!(injected, 0, "markup in a link name became an element");
    let warning = browser.text("#silent-links").await;
    assert!(warning.contains("postback URL is probably not set"), "{warning}");
    let items = browser
        .eval("return [...document.querySelectorAll('#silent-links li')].map(li => li.textContent.trim())")
        .await;
    let items: Vec<&str> = items.as_array().expect("list").iter().map(|v| v.as_str().expect("text")).collect();
    assert_eq!(items.len(), 2, "{items:?}");
    // Most clicked first; the last postback before the window is shown, or that there was none.
    assert!(items[0].starts_with("cake/demo: 130 clicks; last postback: 20"), "{items:?}");
    assert_eq!(items[1], format!("{hostile}: 101 clicks; last postback: none in the 90 days before"));
    browser.quit().await;
    seeded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_without_its_csrf_token_is_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/ui/links", app.base)).await;
    browser.fill("#f-slug", "no-token").await;
    browser.fill("#f-offer", "https://offers.example.com/?a=1").await;
    // Take the token out of the form, as a forged cross-site form would lack it.
    browser.eval("document.querySelector('#new-link input[name=csrf]').remove(); return null").await;
    browser.click("#new-link button[type=submit]").await;
    browser.wait_for(".message").await;
    assert!(browser.body().await.contains("security token is missing or out of date"));
    let res = app.client.get(format!("{}/api/links/cake/no-token", app.base)).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(res.expect("api").status(), StatusCode::NOT_FOUND, "nothing was created");
    // A token from an earlier session is no better.
    browser.goto(&format!("{}/ui/links", app.base)).await;
    let old = browser.eval("return document.querySelector('#new-link input[name=csrf]').value").await;
    browser.click(".signout button").await;
    browser.wait_path("/ui/login").await;
    sign_in(&browser, &app).await;
    browser.goto(&format!("{}/ui/links", app.base)).await;
    let script = format!("document.querySelector('#new-link input[name=csrf]').value = {old}; return null");
    browser.eval(&script).await;
    browser.fill("#f-slug", "old-token").await;
    browser.fill("#f-offer", "https://offers.example.com/?a=1").await;
    browser.click("#new-link button[type=submit]").await;
    browser.wait_for(".message").await;
    assert!(browser.body().await.contains("security token is missing or out of date"));
    browser.quit().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversed_conversion_is_marked_on_every_page_that_lists_it() {
    // Meta takes conversions but cannot take one back: its reversal is skipped.
    let platform = StandIn::start().await;
    platform.default_answer(META_PATH, reply(200, r#"{"events_received":1}"#));
    let extra =
        format!("\n[networks.cake]\ndisposition_field = \"disposition\"\n{}", forward(&meta("meta", &platform, "")));
    let app = spawn_app_with(Backend::Embedded, "", &extra).await;
    let click = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={click}&tid=t1&price=7.50")).await;
    assert_eq!(body["status"], "ok");
    let other = app.click("demo").await;
    let (_, body) = app.postback(&format!("s2={other}&tid=t2&price=2.00")).await;
    assert_eq!(body["status"], "ok");
    let (_, body) = app.postback(&format!("s2={click}&tid=t1&disposition=Rejected")).await;
    assert_eq!(body["status"], "reversed", "{body}");
    let skipped = || {
        let app = &app;
        async move { app.api("deliveries?status=skipped").await["deliveries"].as_array().expect("list").len() == 1 }
    };
    eventually("the reversal to Meta to be skipped", skipped).await;

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;

    // Conversions: both listed; the reversed one struck through, badged, with its time.
    browser.goto(&format!("{}/ui/conversions", app.base)).await;
    assert_eq!(browser.count("#conversions tbody tr").await, 2);
    assert!(browser.text(".panel-head h2").await.starts_with("2 conversions, 1 reversed"));
    let row = "#conversions tr[data-status=reversed]";
    assert_eq!(browser.count(row).await, 1);
    assert!(browser.text(&format!("{row} del")).await.contains("7.50"), "the value struck through");
    assert_eq!(browser.text(&format!("{row} .badge")).await, "reversed");
    let title = browser.eval(&format!("return document.querySelector('{row} .badge').title")).await;
    assert!(title.as_str().expect("title").starts_with("Reversed 20"), "{title}");
    assert!(browser.text(&format!("{row} .reversed-at")).await.ends_with("UTC"));
    let kept = "#conversions tr[data-status=ok]";
    assert_eq!(browser.text(&format!("{kept} .badge")).await, "ok");
    assert_eq!(browser.count(&format!("{kept} del")).await, 0);
    assert!(browser.text(kept).await.contains("2.00"));

    // Events: `reversed` is a filter, and the disposition's entry is under it.
    browser.goto(&format!("{}/ui/events", app.base)).await;
    assert_eq!(browser.count(".pills a[href='/ui/events?status=reversed']").await, 1);
    browser.click(".pills a[href='/ui/events?status=reversed']").await;
    browser.wait_path("/ui/events?status=reversed").await;
    assert_eq!(browser.count("#events tbody tr").await, 1);
    assert_eq!(browser.text("#events .badge").await, "reversed");
    assert!(browser.text("#events").await.contains("disposition Rejected"));

    // Deliveries: the reversal is told apart from the conversion, `skipped` is grey, not
    // a failure's red, and the reason shows.
    browser.goto(&format!("{}/ui/deliveries", app.base)).await;
    assert_eq!(browser.count(".pills a[href='/ui/deliveries?status=skipped']").await, 1);
    let reversal = "#deliveries tr[data-kind=reversal]";
    assert_eq!(browser.count(reversal).await, 1);
    assert_eq!(browser.text(&format!("{reversal} td[data-label=Event]")).await, "Purchase (reversal)");
    assert_eq!(browser.text(&format!("{reversal} .badge")).await, "skipped");
    let colour = |css: &str| format!("return getComputedStyle(document.querySelector('{css}')).backgroundColor");
    let neutral =
        browser.eval("return getComputedStyle(document.documentElement).getPropertyValue('--neutral-bg').trim()").await;
    assert_eq!(neutral, "#eef0f3");
    assert_eq!(browser.eval(&colour(&format!("{reversal} .badge"))).await, "rgb(238, 240, 243)", "neutral grey");
    let reason = browser.text(&format!("{reversal} td[data-label=Reason]")).await;
    assert!(reason.contains("retract"), "{reason}");
    assert_eq!(browser.count(&format!("{reversal} td.error-text")).await, 0, "a reason, not an error");
    assert_eq!(browser.count(&format!("{reversal} button")).await, 0, "nothing to re-queue");
    let conversions = "#deliveries tr[data-kind=conversion]";
    assert_eq!(browser.count(conversions).await, 2);
    assert!(!browser.text(conversions).await.contains("reversal"));
    browser.quit().await;
    app.stop().await;
}
