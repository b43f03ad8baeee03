//! `GET`/`HEAD /go/{network}/{slug}` against a real server over both stores: the
//! redirect contract of DESIGN §3 and the bot rules of §6.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{click_id_in, count, location, spawn_app, Backend, TestApp, CHROME};
use crate::on_both_stores;

const FBAN: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.43.109;FBBV/634111826;FBDV/iPhone15,2]";
const INSTAGRAM: &str = "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/130.0.6723.107 Mobile Safari/537.36 Instagram 355.0.0.37.103 Android";
const TIKTOK: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 musical_ly_34.5.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/en Region/US WKWebView/1 BytedanceWebview/d8a21c6 TikTok";

/// The query pairs of a redirect's `Location`, in order.
fn query_pairs(res: &reqwest::Response) -> Vec<(String, String)> {
    let url = url::Url::parse(&location(res)).expect("absolute Location");
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn values_of<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn assert_no_store(res: &reqwest::Response) {
    let cc =
        res.headers().get("cache-control").unwrap_or_else(|| panic!("{} answer without Cache-Control", res.status()));
    assert_eq!(cc, "no-store, private", "{} answer", res.status());
}

/// A minted click id: 32 characters of `[0-9A-Za-z]`.
fn assert_click_id(id: &str) {
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
}

/// The stored click, via `/api/clicks/{id}`.
async fn stored_click(app: &TestApp, id: &str) -> Value {
    let click = app.api(&format!("clicks/{id}")).await;
    assert_eq!(click["click_id"], id, "{click}");
    click
}

/// The sum of a counter's samples in `/metrics` (0 while it has none).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let res = app.get_as("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn demo_redirects_records_and_counts(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/go/cake/demo").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_no_store(&res);
    let loc = location(&res);
    assert!(
        loc.starts_with("https://offers.example.com/?a=200&c=761&s1=yes&s2="),
        "the offer, byte for byte, then s2: {loc}"
    );
    let pairs = query_pairs(&res);
    let id = click_id_in(&res, "s2");
    assert_click_id(&id);
    assert_eq!(values_of(&pairs, "s2"), [id.as_str()], "exactly one s2: {loc}");
    assert_eq!(values_of(&pairs, "s1"), ["yes"]);
    assert_eq!(pairs.len(), 4, "{loc}");

    let click = stored_click(&app, &id).await;
    assert_eq!(click["link"], "cake/demo", "{click}");
    assert!(click["bot"].is_null(), "{click}");
    assert_eq!(click["user_agent"], CHROME, "{click}");
    assert_eq!(click["ip"], "127.0.0.1", "{click}");

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 1, "{row}");
    assert_eq!(count(&row, "bot_hits"), 0, "{row}");

    // Each click is a new id.
    let second = app.click("demo").await;
    assert_ne!(second, id);
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 2);
    app.stop().await;
}

async fn s2_is_always_minted(backend: Backend) {
    let app = spawn_app(backend).await;

    let res = app.get("/go/cake/demo?s2=evil&S2=evil2").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = location(&res);
    assert!(!loc.contains("evil"), "a visitor's s2 never reaches the offer: {loc}");
    let pairs = query_pairs(&res);
    assert_eq!(values_of(&pairs, "s2").len(), 1, "{loc}");
    let id = click_id_in(&res, "s2");
    assert_click_id(&id);
    assert!(stored_click(&app, &id).await["subids"].get("s2").is_none());

    // An s2 in the offer URL itself is replaced too, and the link's own code is used.
    let res = app.get("/go/cake/perm?s2=evil").await;
    assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
    assert_no_store(&res);
    let loc = location(&res);
    assert!(!loc.contains("preset") && !loc.contains("evil"), "{loc}");
    assert!(loc.starts_with("https://offers.example.com/?a=1&c=2&s2="), "{loc}");
    let pairs = query_pairs(&res);
    let s2 = values_of(&pairs, "s2");
    assert_eq!(s2.len(), 1, "exactly one s2: {loc}");
    assert_click_id(s2[0]);
    assert_eq!(stored_click(&app, s2[0]).await["link"], "cake/perm");
    assert_eq!(count(&app.stats_for("cake/perm").await, "clicks"), 1);
    app.stop().await;
}

async fn only_configured_subids_pass_through(backend: Backend) {
    let app = spawn_app(backend).await;

    let res = app.get("/go/cake/demo?s3=abc&s4=x&foo=bar&s5=&s1=hack").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = location(&res);
    let pairs = query_pairs(&res);
    assert_eq!(values_of(&pairs, "s3"), ["abc"], "{loc}");
    assert_eq!(values_of(&pairs, "s4"), ["x"], "{loc}");
    assert!(values_of(&pairs, "foo").is_empty(), "foo is not a passthrough sub-id: {loc}");
    assert!(values_of(&pairs, "s5").is_empty(), "an empty value is not passed: {loc}");
    assert_eq!(values_of(&pairs, "s1"), ["yes"], "the affiliate's own s1 wins: {loc}");
    assert!(!loc.contains("hack"), "{loc}");
    let click = stored_click(&app, &click_id_in(&res, "s2")).await;
    assert_eq!(click["subids"]["s3"], "abc", "{click}");
    assert_eq!(click["subids"]["s4"], "x", "{click}");
    assert!(click["subids"].get("foo").is_none() && click["subids"].get("s1").is_none(), "{click}");

    // Values are encoded: nothing a visitor sends adds a parameter or changes the host.
    let res = app.get("/go/cake/demo?s3=a%20b%26s2%3Devil%23x&url=https%3A%2F%2Fevil.example%2F").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = location(&res);
    let url = url::Url::parse(&loc).expect("absolute Location");
    assert_eq!(url.host_str(), Some("offers.example.com"), "{loc}");
    assert_eq!(url.fragment(), None, "{loc}");
    let pairs = query_pairs(&res);
    assert_eq!(values_of(&pairs, "s3"), ["a b&s2=evil#x"], "{loc}");
    assert_eq!(values_of(&pairs, "s2").len(), 1, "{loc}");
    assert!(values_of(&pairs, "url").is_empty(), "{loc}");
    app.stop().await;
}

async fn overlong_subids_are_dropped_not_truncated(backend: Backend) {
    let app = spawn_app(backend).await;
    let dropped_before = metric(&app, "cakelink_subids_dropped_total").await;

    // `cpl`'s offer sets no s1, so a visitor's s1 passes when it fits CAKE's 50.
    let s1_50 = "a".repeat(50);
    let s1_51 = "b".repeat(51);
    let res = app.get(&format!("/go/cake/cpl?s1={s1_50}")).await;
    assert_eq!(values_of(&query_pairs(&res), "s1"), [s1_50.as_str()]);
    let res = app.get(&format!("/go/cake/cpl?s1={s1_51}")).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let pairs = query_pairs(&res);
    assert!(values_of(&pairs, "s1").is_empty(), "a 51-character s1 is dropped: {}", location(&res));
    assert!(!location(&res).contains(&"b".repeat(50)), "not truncated either");
    let click = stored_click(&app, &click_id_in(&res, "s2")).await;
    assert!(click["subids"].get("s1").is_none(), "{click}");

    let s3_100 = "c".repeat(100);
    let s3_101 = "d".repeat(101);
    let res = app.get(&format!("/go/cake/demo?s3={s3_100}&s4=ok")).await;
    assert_eq!(values_of(&query_pairs(&res), "s3"), [s3_100.as_str()]);
    let res = app.get(&format!("/go/cake/demo?s3={s3_101}&s4=ok")).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let pairs = query_pairs(&res);
    assert!(values_of(&pairs, "s3").is_empty(), "a 101-character s3 is dropped: {}", location(&res));
    assert!(!location(&res).contains(&"d".repeat(100)), "not truncated either");
    assert_eq!(values_of(&pairs, "s4"), ["ok"], "the other sub-ids still pass");
    // Characters, not bytes: 100 two-byte characters fit.
    let wide = "é".repeat(100);
    let res = app.get(&format!("/go/cake/demo?s5={wide}")).await;
    assert_eq!(values_of(&query_pairs(&res), "s5"), [wide.as_str()]);

    let dropped_after = metric(&app, "cakelink_subids_dropped_total").await;
    assert!(dropped_after >= dropped_before + 2.0, "the two drops are counted: {dropped_before} → {dropped_after}");
    // Every one of those requests was a click all the same.
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 3);
    assert_eq!(count(&app.stats_for("cake/cpl").await, "clicks"), 2);
    app.stop().await;
}

async fn stray_percent_in_the_query_still_redirects(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/go/cake/demo?utm_source=fb&utm_campaign=50%off&s3=100%&s4=%zz%").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_no_store(&res);
    let id = click_id_in(&res, "s2");
    let click = stored_click(&app, &id).await;
    assert_eq!(click["utm"]["campaign"], "50%off", "{click}");
    assert_eq!(click["utm"]["source"], "fb", "{click}");
    // A passed-through value with a stray % is re-encoded, so the offer URL stays valid.
    let pairs = query_pairs(&res);
    assert_eq!(values_of(&pairs, "s3"), ["100%"], "{}", location(&res));
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 1);
    app.stop().await;
}

async fn paused_unknown_and_fallback(backend: Backend) {
    let app = spawn_app(backend).await;

    let res = app.get("/go/cake/paused").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_no_store(&res);
    assert_eq!(location(&res), "https://fallback.example.com/");

    for path in ["/go/cake/paused-nowhere", "/go/cake/no-such-link", "/go/nonet/demo", "/go/tune/demo"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_no_store(&res);
        assert!(res.headers().get("location").is_none(), "{path}");
        let body = res.text().await.expect("body");
        assert!(!body.is_empty(), "{path}: a 404 page says why");
    }

    // None of those is a click.
    for link in ["cake/paused", "cake/paused-nowhere", "cake/demo"] {
        let row = app.stats_for(link).await;
        assert_eq!(count(&row, "clicks") + count(&row, "bot_hits"), 0, "{link}: {row}");
    }
    app.stop().await;
}

/// Sends `/go/cake/demo` with `method`, user agent and extra headers; returns the click id.
async fn bot_request(
    app: &TestApp,
    method: reqwest::Method,
    user_agent: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut req = app.client.request(method.clone(), format!("{}/go/cake/demo", app.base));
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    assert_eq!(res.status(), StatusCode::FOUND, "{method} {user_agent:?} {extra:?}");
    assert_no_store(&res);
    let id = click_id_in(&res, "s2");
    assert_click_id(&id);
    id
}

async fn bots_are_redirected_and_flagged(backend: Backend) {
    let app = spawn_app(backend).await;
    let get = reqwest::Method::GET;
    let cases: Vec<(String, &str)> = vec![
        (bot_request(&app, reqwest::Method::HEAD, Some(CHROME), &[]).await, "head"),
        (bot_request(&app, get.clone(), Some(CHROME), &[("sec-purpose", "prefetch")]).await, "prefetch"),
        (bot_request(&app, get.clone(), Some(CHROME), &[("purpose", "prefetch")]).await, "prefetch"),
        (bot_request(&app, get.clone(), Some(""), &[]).await, "empty_user_agent"),
        (bot_request(&app, get.clone(), None, &[]).await, "empty_user_agent"),
        (
            bot_request(
                &app,
                get.clone(),
                Some("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
                &[],
            )
            .await,
            "facebookexternalhit",
        ),
        (
            bot_request(&app, get.clone(), Some("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"), &[])
                .await,
            "Slackbot",
        ),
        (bot_request(&app, get.clone(), Some("Twitterbot/1.0"), &[]).await, "Twitterbot"),
        (
            bot_request(
                &app,
                get.clone(),
                Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
                &[],
            )
            .await,
            "Googlebot",
        ),
        (
            bot_request(&app, get.clone(), Some("AdsBot-Google (+http://www.google.com/adsbot.html)"), &[]).await,
            "AdsBot-Google",
        ),
    ];
    for (id, reason) in &cases {
        let click = stored_click(&app, id).await;
        let bot = click["bot"].as_str().unwrap_or_else(|| panic!("{reason}: the click is flagged: {click}"));
        assert!(bot.contains(reason), "bot reason {bot:?} should name {reason:?}");
        assert_eq!(click["link"], "cake/demo");
    }
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "bot_hits"), cases.len() as u64, "{row}");
    assert_eq!(count(&row, "clicks"), 0, "{row}");

    // A prefetch may be the visitor's only request: its conversion still resolves.
    let (prefetched, _) = &cases[1];
    let (status, body) = app.postback(&format!("s2={prefetched}&tid=BOT1&price=3.5")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(row["revenue"], "3.50", "{row}");
    app.stop().await;
}

async fn in_app_browsers_are_people(backend: Backend) {
    let app = spawn_app(backend).await;
    for ua in [FBAN, INSTAGRAM, TIKTOK] {
        let res = app.get_as("/go/cake/demo", Some(ua)).await;
        assert_eq!(res.status(), StatusCode::FOUND, "{ua}");
        let click = stored_click(&app, &click_id_in(&res, "s2")).await;
        assert!(click["bot"].is_null(), "{ua}: {click}");
        assert_eq!(click["user_agent"], ua);
    }
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 3, "{row}");
    assert_eq!(count(&row, "bot_hits"), 0, "{row}");
    app.stop().await;
}

async fn utm_and_ad_click_ids_are_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let query = "utm_source=facebook&utm_medium=paid_social&utm_campaign=spring%20sale&utm_term=shoes&utm_content=ad-7\
                 &fbclid=IwAR0abc&gclid=Cj0KCQ-xyz&gbraid=GB1&wbraid=WB1&ttclid=E.C.P.tt1&msclkid=ms1&s3=keep";
    let res = app
        .client
        .get(format!("{}/go/cake/demo?{query}", app.base))
        .header("user-agent", CHROME)
        .header("referer", "https://www.facebook.com/")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = location(&res);
    for private in ["utm_", "fbclid", "gclid", "ttclid", "msclkid", "IwAR0abc"] {
        assert!(!loc.contains(private), "{private} is kept, not passed to the offer: {loc}");
    }
    let click = stored_click(&app, &click_id_in(&res, "s2")).await;
    let utm = &click["utm"];
    assert_eq!(utm["source"], "facebook", "{click}");
    assert_eq!(utm["medium"], "paid_social", "{click}");
    assert_eq!(utm["campaign"], "spring sale", "{click}");
    assert_eq!(utm["term"], "shoes", "{click}");
    assert_eq!(utm["content"], "ad-7", "{click}");
    let ids = &click["ad_click_ids"];
    assert_eq!(ids["fbclid"], "IwAR0abc", "{click}");
    assert_eq!(ids["gclid"], "Cj0KCQ-xyz", "{click}");
    assert_eq!(ids["gbraid"], "GB1", "{click}");
    assert_eq!(ids["wbraid"], "WB1", "{click}");
    assert_eq!(ids["ttclid"], "E.C.P.tt1", "{click}");
    assert_eq!(ids["msclkid"], "ms1", "{click}");
    assert_eq!(click["subids"]["s3"], "keep", "{click}");
    assert_eq!(click["referer"], "https://www.facebook.com/", "{click}");
    app.stop().await;
}

/// A `+` is a space in a query even where nothing is percent-escaped: the redirect looks
/// for escapes once in the whole query, and `+` must count as one.
async fn a_plus_is_a_space_without_any_percent_escape(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/go/cake/demo?utm_campaign=spring+sale&s3=a+b").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = location(&res);
    assert!(loc.contains("s3=a+b&"), "the sub-id goes on as a space, written `+`: {loc}");
    let click = stored_click(&app, &click_id_in(&res, "s2")).await;
    assert_eq!(click["utm"]["campaign"], "spring sale", "{click}");
    assert_eq!(click["subids"]["s3"], "a b", "{click}");
    app.stop().await;
}

/// reqwest is built without its `http2` feature here, so the client side of this test
/// is hyper's own HTTP/2 connection over a plain TCP stream (h2c, prior knowledge).
async fn http2_prior_knowledge(backend: Backend) {
    let app = spawn_app(backend).await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);

    let mut ids = Vec::new();
    for _ in 0..2 {
        let req = hyper::Request::get(format!("http://{}/go/cake/demo?s3=h2", app.addr))
            .header("user-agent", CHROME)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("h2 response");
        assert_eq!(res.version(), hyper::Version::HTTP_2);
        assert_eq!(res.status(), hyper::StatusCode::FOUND);
        assert_eq!(res.headers()["cache-control"], "no-store, private");
        let loc = res.headers()["location"].to_str().expect("ascii").to_owned();
        let url = url::Url::parse(&loc).expect("absolute Location");
        assert_eq!(url.host_str(), Some("offers.example.com"));
        let id = url.query_pairs().find(|(k, _)| k == "s2").map(|(_, v)| v.into_owned()).expect("s2");
        assert_click_id(&id);
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        assert_eq!(stored_click(&app, id).await["subids"]["s3"], "h2");
    }
    assert_eq!(count(&app.stats_for("cake/demo").await, "clicks"), 2);
    drop(sender);
    let _ = driver.await;
    app.stop().await;
}

on_both_stores!(
    demo_redirects_records_and_counts,
    s2_is_always_minted,
    only_configured_subids_pass_through,
    overlong_subids_are_dropped_not_truncated,
    stray_percent_in_the_query_still_redirects,
    paused_unknown_and_fallback,
    bots_are_redirected_and_flagged,
    in_app_browsers_are_people,
    utm_and_ad_click_ids_are_stored,
    a_plus_is_a_space_without_any_percent_escape,
    http2_prior_knowledge,
);
