//! Links with several offers: weighted rotation, rules by country (header and country
//! database), device, language and parameter, stickiness, and the links API's offers
//! and rules, on both stores.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{count, spawn_app_edited, spawn_app_with, today, Backend, TestApp, ADMIN_TOKEN, CHROME};
use crate::mmdb;
use crate::on_both_stores;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

/// A 70/30 split.
const SPLIT: &str = r#"
[[links]]
slug = "split"
offer = "https://offers.example.com/?a=200&c=10"
  [[links.offers]]
  id = "a"
  url = "https://offers.example.com/?a=200&c=11"
  weight = 70
  [[links.offers]]
  id = "b"
  url = "https://offers.example.com/?a=200&c=12"
  weight = 30
"#;

/// One offer per rule, and a last rule that catches everyone else.
const RULES: &str = r#"
[[links]]
slug = "rules"
offer = "https://offers.example.com/?c=0"
  [[links.offers]]
  id = "us"
  url = "https://offers.example.com/?c=1"
  [[links.offers]]
  id = "gb"
  url = "https://offers.example.com/?c=2"
  [[links.offers]]
  id = "mob"
  url = "https://offers.example.com/?c=3"
  [[links.offers]]
  id = "de"
  url = "https://offers.example.com/?c=4"
  [[links.offers]]
  id = "fb"
  url = "https://offers.example.com/?c=5"
  [[links.offers]]
  id = "rest"
  url = "https://offers.example.com/?c=6"
  [[links.rules]]
  country = ["US", "CA"]
  offers = ["us"]
  [[links.rules]]
  country = ["GB"]
  offers = ["gb"]
  [[links.rules]]
  device = ["mobile"]
  offers = ["mob"]
  [[links.rules]]
  language = ["de"]
  offers = ["de"]
  [[links.rules]]
  param = { s3 = ["fb", "ig"] }
  offers = ["fb"]
  [[links.rules]]
  offers = ["rest"]
"#;

const STICKY: &str = r#"
[[links]]
slug = "sticky"
offer = "https://offers.example.com/?c=0"
sticky_hours = 24
  [[links.offers]]
  id = "a"
  url = "https://offers.example.com/?c=1"
  [[links.offers]]
  id = "b"
  url = "https://offers.example.com/?c=2"
"#;

/// The `c` parameter of a redirect's offer URL: which offer it went to.
fn offer_c(res: &reqwest::Response) -> String {
    let location = res.headers().get("location").expect("Location").to_str().expect("ascii");
    let url = url::Url::parse(location).expect("absolute");
    url.query_pairs().find(|(k, _)| k == "c").map(|(_, v)| v.into_owned()).unwrap_or_default()
}

async fn go(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.get(format!("{}/go/cake/{path}", app.base));
    if !headers.iter().any(|(k, _)| *k == "user-agent") {
        req = req.header("user-agent", CHROME);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request")
}

async fn weighted_rotation_passes_a_chi_square_test(backend: Backend) {
    let app = spawn_app_with(backend, "", SPLIT).await;
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..40 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (client, url) = (app.client.clone(), format!("{}/go/cake/split", app.base));
            batch.spawn(async move { client.get(url).header("user-agent", CHROME).send().await.expect("click") });
        }
        while let Some(res) = batch.join_next().await {
            let res = res.expect("task");
            assert_eq!(res.status(), StatusCode::FOUND);
            *seen.entry(offer_c(&res)).or_default() += 1;
        }
    }
    let (a, b) = (seen.get("11").copied().unwrap_or(0), seen.get("12").copied().unwrap_or(0));
    assert_eq!(a + b, 2000, "{seen:?}");
    // One degree of freedom: P(chi² > 15.14) = 1e-4, so a fair 70/30 fails 1 run in 10,000.
    let chi2 = (a as f64 - 1400.0).powi(2) / 1400.0 + (b as f64 - 600.0).powi(2) / 600.0;
    assert!(chi2 < 15.14, "a={a} b={b} chi²={chi2:.2}");

    let rows = app.api(&format!("stats?from={0}&to={0}&group=offer", today())).await;
    let rows = rows["rows"].as_array().expect("rows");
    let row = |key: &str| rows.iter().find(|r| r["key"] == key).cloned().unwrap_or(Value::Null);
    assert_eq!((count(&row("cake/split/a"), "clicks"), count(&row("cake/split/b"), "clicks")), (a, b));
    let links = app.api(&format!("stats?from={0}&to={0}&group=link", today())).await;
    assert!(links["rows"].as_array().expect("rows").iter().all(|r| r["key"] != "cake/split/a"), "offers apart");
    app.stop().await;
}

/// The config with `server` lines and a `[geo]` section.
fn with_geo(text: String, server: &str, geo: &str) -> String {
    format!("{}\n{RULES}\n[geo]\n{geo}\n", text.replace("[server]\n", &format!("[server]\n{server}\n")))
}

/// A click's path, its headers, the offer (`c`) it must reach and the rule that sent it.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, u64);

async fn rules_pick_by_country_device_language_and_parameter(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("country.mmdb");
    std::fs::write(&db, mmdb::country_db(&[([81, 2, 69, 0], 24, "GB"), ([89, 160, 20, 0], 24, "US")])).expect("db");
    let geo = format!("header = \"CF-IPCountry\"\nmmdb = {:?}", db.display().to_string());
    let app = spawn_app_edited(backend, |t| with_geo(t, "trusted_proxies = [\"127.0.0.1/32\"]", &geo)).await;

    let cases: [Case; 7] = [
        ("rules", &[("cf-ipcountry", "us")], "1", 0),
        ("rules", &[("x-forwarded-for", "81.2.69.160")], "2", 1),
        ("rules", &[("x-forwarded-for", "89.160.20.7")], "1", 0),
        ("rules", &[("user-agent", IPHONE)], "3", 2),
        ("rules", &[("accept-language", "de-CH,de;q=0.9")], "4", 3),
        ("rules?s3=ig", &[], "5", 4),
        ("rules", &[("x-forwarded-for", "203.0.113.9")], "6", 5),
    ];
    for (path, headers, offer, rule) in cases {
        let res = go(&app, path, headers).await;
        assert_eq!(offer_c(&res), offer, "{path} {headers:?}");
        let click_id = crate::helpers::click_id_in(&res, "s2");
        let click = app.api(&format!("clicks/{click_id}")).await;
        assert_eq!(click["rule"], rule, "{click}");
        assert!(click["offer"].is_string() && click["fallback"].is_null(), "{click}");
    }
    // The parameter still passes through to the offer.
    let res = go(&app, "rules?s3=fb", &[]).await;
    assert!(res.headers()["location"].to_str().expect("ascii").contains("s3=fb"));
    app.stop().await;
}

async fn a_country_header_counts_only_from_a_trusted_proxy(backend: Backend) {
    let app = spawn_app_edited(backend, |t| with_geo(t, "", "header = \"CF-IPCountry\"")).await;
    let res = go(&app, "rules", &[("cf-ipcountry", "US")]).await;
    assert_eq!(offer_c(&res), "6", "a header from an untrusted peer is ignored");
    app.stop().await;
}

async fn a_sticky_visitor_keeps_their_offer(backend: Backend) {
    let app = spawn_app_with(backend, "", STICKY).await;
    let first = go(&app, "sticky", &[]).await;
    let cookie = first.headers().get("set-cookie").expect("a sticky cookie").to_str().expect("ascii").to_owned();
    assert!(cookie.contains("Path=/go/cake/sticky") && cookie.contains("Max-Age=86400"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let offer = offer_c(&first);
    for _ in 0..20 {
        let res = go(&app, "sticky", &[("cookie", &format!("other=1; {pair}"))]).await;
        assert_eq!(offer_c(&res), offer);
        assert!(res.headers().get("set-cookie").is_none(), "no new cookie while it holds");
    }
    // A cookie naming the other offer gets that offer.
    let other = if offer == "1" { ("b", "2") } else { ("a", "1") };
    let res = go(&app, "sticky", &[("cookie", &format!("cakelink_offer={}", other.0))]).await;
    assert_eq!(offer_c(&res), other.1);
    app.stop().await;
}

async fn offers_and_rules_round_trip_through_the_api(backend: Backend) {
    let app = spawn_app_with(backend, "", "").await;
    let body = json!({
        "slug": "api-split", "offer": "https://offers.example.com/?c=0",
        "fallback": "https://example.com/sold-out", "sticky_hours": 12, "cap_tz": "-05:00",
        "offers": [
            {"id": "a", "url": "https://offers.example.com/?c=1", "weight": 70, "daily_cap": 500},
            {"id": "b", "url": "https://offers.example.com/?c=2", "weight": 30, "status": "paused"}
        ],
        "rules": [{"country": ["US"], "device": ["mobile"], "language": ["en"], "param": {"s3": ["fb"]},
                   "offers": ["a"]}]
    });
    let res = post(&app, &body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let link = app.api("links/cake/api-split").await;
    assert_eq!(
        link["offers"],
        json!([
            {"id": "a", "url": "https://offers.example.com/?c=1", "weight": 70, "daily_cap": 500, "status": "active"},
            {"id": "b", "url": "https://offers.example.com/?c=2", "weight": 30, "daily_cap": null, "status": "paused"}
        ])
    );
    assert_eq!(
        link["rules"],
        json!([{"country": ["US"], "device": ["mobile"], "os": [], "language": ["en"],
        "param": {"s3": ["fb"]}, "offers": ["a"]}])
    );
    assert_eq!((link["sticky_hours"].clone(), link["cap_tz"].clone()), (json!(12), json!("-05:00")));
    // b is paused: every visitor goes to a.
    for _ in 0..5 {
        assert_eq!(offer_c(&go(&app, "api-split", &[]).await), "1");
    }

    let bad = [
        (json!([{"id": "a", "url": "https://o.example.com/", "weight": 0}]), json!([]), "offers[0].weight"),
        (json!([{"id": "a", "url": "https://o.example.com/", "weight": 1.5}]), json!([]), "offers[0].weight"),
        (
            json!([{"id": "a", "url": "https://o.example.com/"}, {"id": "a", "url": "https://o.example.com/"}]),
            json!([]),
            "offers[1].id",
        ),
        (json!([{"id": "a", "url": "ftp://o.example.com/"}]), json!([]), "offers[0].url"),
        (json!([{"id": "a", "url": "https://o.example.com/"}]), json!([{"offers": ["zz"]}]), "rules[0].offers[0]"),
        (
            json!([{"id": "a", "url": "https://o.example.com/"}]),
            json!([{"country": ["XY"], "offers": ["a"]}]),
            "rules[0].country[0]",
        ),
        (
            json!([{"id": "a", "url": "https://o.example.com/"}]),
            json!([{"device": ["phone"], "offers": ["a"]}]),
            "rules[0].device[0]",
        ),
        (json!([{"id": "a", "url": "https://o.example.com/", "colour": "red"}]), json!([]), "offers[0].colour"),
    ];
    for (offers, rules, field) in bad {
        let body = json!({"slug": "bad", "offer": "https://o.example.com/", "offers": offers, "rules": rules});
        let res = post(&app, &body).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}");
        let text = res.text().await.expect("body");
        assert!(text.contains(field), "{field} named in {text}");
    }
    app.stop().await;
}

async fn conversions_and_their_csv_carry_the_offer(backend: Backend) {
    let app = spawn_app_with(backend, "", SPLIT).await;
    let res = go(&app, "split", &[]).await;
    let offer = if offer_c(&res) == "11" { "a" } else { "b" };
    let click_id = crate::helpers::click_id_in(&res, "s2");
    let (status, body) = app.postback(&format!("s2={click_id}&tid=T1&price=7.00")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    let list = app.api(&format!("conversions?from={0}&to={0}", today())).await;
    assert_eq!(list["conversions"][0]["offer"], offer, "{list}");
    let csv = app
        .client
        .get(format!("{}/api/conversions?from={1}&to={1}&format=csv", app.base, today()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("body");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let row: Vec<&str> = lines.next().expect("a row").split(',').collect();
    let column = header.iter().position(|h| *h == "offer").expect("an offer column");
    assert_eq!(row[column], offer);
    let rows = app.api(&format!("stats?from={0}&to={0}&group=offer", today())).await;
    let row =
        rows["rows"].as_array().expect("rows").iter().find(|r| r["key"] == format!("cake/split/{offer}")).cloned();
    assert_eq!(
        (count(row.as_ref().expect("row"), "conversions"), row.expect("row")["revenue"].clone()),
        (1, json!("7.00"))
    );
    app.stop().await;
}

async fn post(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client.post(format!("{}/api/links", app.base)).bearer_auth(ADMIN_TOKEN).json(body).send().await.expect("post")
}

on_both_stores!(
    weighted_rotation_passes_a_chi_square_test,
    rules_pick_by_country_device_language_and_parameter,
    a_country_header_counts_only_from_a_trusted_proxy,
    a_sticky_visitor_keeps_their_offer,
    offers_and_rules_round_trip_through_the_api,
    conversions_and_their_csv_carry_the_offer,
);

#[test]
fn check_config_names_each_bad_key() {
    let text = crate::helpers::config_text(
        "127.0.0.1:0",
        "backend = \"embedded\"\npath = \"x\"",
        "",
        r#"
[[links]]
slug = "bad"
offer = "https://o.example.com/"
cap_tz = "EST"
  [[links.offers]]
  id = "a"
  url = "https://o.example.com/"
  weight = -1
  [[links.offers]]
  id = "a"
  url = "nope"
  [[links.rules]]
  country = ["ZZ"]
  device = ["watch"]
  offers = ["c"]
"#,
    );
    let err = cakelink::config::Config::parse(&text, |_| None).expect_err("refused");
    let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "links[6].offers[0].weight",
        "links[6].rules[0].device[0]",
        "links[6].offers[1].id",
        "links[6].offers[1].url",
        "links[6].rules[0].country[0]",
        "links[6].rules[0].offers[0]",
        "links[6].cap_tz",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
}

#[test]
fn country_rules_without_geo_are_warned_about() {
    let text = crate::helpers::config_text("127.0.0.1:0", "backend = \"embedded\"\npath = \"x\"", "", RULES);
    let config = cakelink::config::Config::parse(&text, |_| None).expect("valid");
    assert!(config.warnings.iter().any(|w| w.contains("cake/rules") && w.contains("[geo]")), "{:?}", config.warnings);
}
