//! The admin API (DESIGN §9) over HTTP, against a real server on both stores.

use cakelink::clickid::Keyring;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, UtcOffset};

use crate::helpers::{
    self, click_id_in, count, location, spawn_app, Backend, TestApp, ADMIN_TOKEN, CHROME, POSTBACK_KEY, SECRET,
};
use crate::on_both_stores;

const SLACKBOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

/// An `/api` request with the admin token and an optional JSON body.
async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.client.request(method, format!("{}/api/{path}", app.base)).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.expect("body");
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, value)
}

/// An `/api` request with a raw body (not necessarily JSON).
async fn call_raw(app: &TestApp, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .request(method, format!("{}/api/{path}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = res.status();
    (status, res.json().await.expect("JSON error"))
}

/// Asserts a `400` whose `error` mentions `what`.
fn assert_bad_request(answer: &(StatusCode, Value), what: &str, context: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::BAD_REQUEST, "{context}: {body}");
    let reason = body["error"].as_str().unwrap_or_else(|| panic!("{context}: an error reason in {body}"));
    assert!(
        reason.to_ascii_lowercase().contains(&what.to_ascii_lowercase()),
        "{context}: reason {reason:?} should mention {what:?}"
    );
}

fn date_text(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

fn local_today(offset: UtcOffset) -> String {
    date_text(OffsetDateTime::now_utc().to_offset(offset).date())
}

fn rfc3339(text: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(text.as_str().expect("a time"), &Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
}

fn rows(v: &Value) -> Vec<Value> {
    v["rows"].as_array().expect("rows").clone()
}

fn row<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("row {key} in {rows:?}"))
}

async fn postback_ok(app: &TestApp, query: &str) -> Value {
    let (status, body) = app.postback(query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    body["conversion_id"].clone()
}

async fn every_route_needs_the_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let today = helpers::today();
    let link = json!({"slug": "sneaky", "offer": "https://evil.example.com/"});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "links".into(), None),
        (Method::POST, "links".into(), Some(link.clone())),
        (Method::GET, "links/cake/demo".into(), None),
        (Method::PUT, "links/cake/sneaky".into(), Some(link)),
        (Method::DELETE, "links/cake/demo".into(), None),
        (Method::GET, format!("stats?from={today}&to={today}&group=link"), None),
        (Method::GET, format!("conversions?from={today}&to={today}"), None),
        (Method::GET, format!("conversions?from={today}&to={today}&format=csv"), None),
        (Method::GET, format!("clicks/{id}"), None),
        (Method::GET, "events?limit=10".into(), None),
        (Method::GET, "no-such-route".into(), None),
    ];
    let wrong = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_owned()),
        Some(format!("Bearer {POSTBACK_KEY}")),
    ];
    for (method, path, body) in &routes {
        for auth in &wrong {
            let mut req = app.client.request(method.clone(), format!("{}/api/{path}", app.base));
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let res = req.send().await.expect("request");
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} /api/{path} with {auth:?}");
            assert!(res.headers().get("www-authenticate").is_some(), "{method} /api/{path}: a 401 names the scheme");
        }
        // The token in the query string is not a credential either.
        let res = app
            .client
            .request(method.clone(), format!("{}/api/{path}?token={ADMIN_TOKEN}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} /api/{path}?token=");
    }

    // Nothing the refused calls asked for happened.
    let (status, _) = call(&app, Method::GET, "links/cake/sneaky", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/go/cake/demo").await.status(), StatusCode::FOUND);
    // And the right token opens every route.
    let (status, _) = call(&app, Method::GET, "links", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, Method::GET, "no-such-route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::POST, &format!("stats?from={today}&to={today}"), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

async fn config_links_are_listed(backend: Backend) {
    let app = spawn_app(backend).await;
    let links = app.api("links").await["links"].as_array().expect("links").clone();
    let keys: Vec<String> = links
        .iter()
        .map(|l| format!("{}/{}", l["network"].as_str().unwrap_or(""), l["slug"].as_str().unwrap_or("")))
        .collect();
    for key in ["cake/demo", "cake/cpl", "cake/paused", "cake/paused-nowhere", "cake/perm", "tune/t1"] {
        assert!(keys.contains(&key.to_owned()), "{key} in {keys:?}");
    }
    assert_eq!(links.len(), 6, "{keys:?}");
    assert!(links.iter().all(|l| l["source"] == "config"), "{links:?}");

    let demo = links.iter().find(|l| l["slug"] == "demo").expect("demo");
    assert_eq!(demo["network"], "cake");
    assert_eq!(demo["offer"], "https://offers.example.com/?a=200&c=761&s1=yes");
    assert_eq!(demo["redirect"], 302);
    assert_eq!(demo["status"], "active");
    let perm = links.iter().find(|l| l["slug"] == "perm").expect("perm");
    assert_eq!(perm["redirect"], 301);
    let paused = links.iter().find(|l| l["slug"] == "paused").expect("paused");
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["fallback"], "https://fallback.example.com/");
    let cpl = links.iter().find(|l| l["slug"] == "cpl").expect("cpl");
    assert_eq!(cpl["event"], "Lead");

    let (status, one) = call(&app, Method::GET, "links/tune/t1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["offer"], "https://tune.example.com/aff_c?offer_id=5&aff_id=7");
    assert_eq!(one["source"], "config");
    let (status, _) = call(&app, Method::GET, "links/cake/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::GET, "links/tune/demo", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a slug belongs to its network");
    app.stop().await;
}

async fn api_link_lifecycle(backend: Backend) {
    let app = spawn_app(backend).await;
    // Created, and in effect at once on this process (a miss was not cached for 5 s).
    assert_eq!(app.get("/go/cake/new1").await.status(), StatusCode::NOT_FOUND);
    let (status, created) = call(
        &app,
        Method::POST,
        "links",
        Some(json!({"slug": "new1", "offer": "https://offers.example.com/?a=5&c=6"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["slug"], "new1");
    assert_eq!(created["network"], "cake", "cake is the default network");
    assert_eq!(created["source"], "api");
    assert_eq!(created["redirect"], 302);
    assert_eq!(created["status"], "active");

    let res = app.get("/go/cake/new1?s3=x").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let target = location(&res);
    assert!(target.starts_with("https://offers.example.com/?a=5&c=6&"), "{target}");
    let id = click_id_in(&res, "s2");
    assert!(target.contains("s3=x"), "{target}");
    assert_eq!(count(&app.stats_for("cake/new1").await, "clicks"), 1);

    let (status, body) =
        call(&app, Method::POST, "links", Some(json!({"slug": "new1", "offer": "https://elsewhere.example.com/"})))
            .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    assert!(
        location(&app.get("/go/cake/new1").await).starts_with("https://offers.example.com/"),
        "a refused POST changes nothing"
    );

    let (status, one) = call(&app, Method::GET, "links/cake/new1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, created);
    let listed = app.api("links").await["links"].as_array().expect("links").clone();
    assert_eq!(listed.len(), 7);
    let mine = listed.iter().find(|l| l["slug"] == "new1").expect("new1 listed");
    assert_eq!(mine["source"], "api");

    // PUT replaces the whole link; the new offer is used by the very next redirect.
    let (status, replaced) = call(
        &app,
        Method::PUT,
        "links/cake/new1",
        Some(json!({"offer": "https://other.example.com/land?x=1", "redirect": 307})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["offer"], "https://other.example.com/land?x=1");
    let res = app.get("/go/cake/new1").await;
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert!(location(&res).starts_with("https://other.example.com/land?x=1&s2="), "{}", location(&res));
    let (_, one) = call(&app, Method::GET, "links/cake/new1", None).await;
    assert_eq!(one["redirect"], 307);

    // Paused with a fallback: visitors go to the fallback.
    let (status, _) = call(
        &app,
        Method::PUT,
        "links/cake/new1",
        Some(json!({"network": "cake", "slug": "new1", "offer": "https://other.example.com/", "status": "paused", "fallback": "https://fallback.example.com/x"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let res = app.get("/go/cake/new1").await;
    assert!(res.status().is_redirection(), "{}", res.status());
    assert_eq!(location(&res), "https://fallback.example.com/x");

    // The click made before the changes still resolves and reports under the link.
    postback_ok(&app, &format!("s2={id}&tid=L1&price=2")).await;
    assert_eq!(count(&app.stats_for("cake/new1").await, "conversions"), 1);

    let res = app
        .client
        .delete(format!("{}/api/links/cake/new1", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.bytes().await.expect("body").is_empty());
    let (status, _) = call(&app, Method::GET, "links/cake/new1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/go/cake/new1").await.status(),
        StatusCode::NOT_FOUND,
        "deleted means gone for visitors at once"
    );
    let (status, _) = call(&app, Method::DELETE, "links/cake/new1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.api("links").await["links"].as_array().expect("links").len(), 6);

    // A link on another network uses that network's sub-id.
    let (status, t2) = call(
        &app,
        Method::POST,
        "links",
        Some(json!({"slug": "t2", "network": "tune", "offer": "https://tune.example.com/aff_c?offer_id=6&aff_sub=preset"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{t2}");
    let res = app.get("/go/tune/t2").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let target = location(&res);
    assert!(!target.contains("preset"), "the reserved sub-id is replaced: {target}");
    let tune_id = click_id_in(&res, "aff_sub");
    assert!(Keyring::new(SECRET, &[], 86_400).verify(&tune_id, now_secs()).is_ok());
    app.stop().await;
}

fn now_secs() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp() as u64
}

async fn config_links_are_read_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let replacement = json!({"offer": "https://evil.example.com/"});
    for (method, path, body) in [
        (Method::PUT, "links/cake/demo", Some(replacement.clone())),
        (Method::DELETE, "links/cake/demo", None),
        (Method::DELETE, "links/tune/t1", None),
        (Method::POST, "links", Some(json!({"slug": "demo", "offer": "https://evil.example.com/"}))),
        (Method::POST, "links", Some(json!({"slug": "t1", "network": "tune", "offer": "https://evil.example.com/"}))),
    ] {
        let (status, body) = call(&app, method.clone(), path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("config")), "{body}");
    }
    let (status, demo) = call(&app, Method::GET, "links/cake/demo", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(demo["offer"], "https://offers.example.com/?a=200&c=761&s1=yes");
    let res = app.get("/go/cake/demo").await;
    assert!(location(&res).starts_with("https://offers.example.com/?a=200&c=761&s1=yes&s2="), "{}", location(&res));
    app.stop().await;
}

async fn invalid_link_bodies_are_explained(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (json!({"slug": "x1", "offer": "not a url"}), "offer"),
        (json!({"slug": "x1", "offer": "ftp://files.example.com/"}), "offer"),
        (json!({"slug": "x1", "offer": "/relative/path"}), "offer"),
        (json!({"slug": "x1", "offer": "https://o.example.com/", "redirect": 200}), "redirect"),
        (json!({"slug": "x1", "offer": "https://o.example.com/", "redirect": 404}), "redirect"),
        (json!({"slug": "x1", "network": "nope", "offer": "https://o.example.com/"}), "network"),
        (json!({"slug": "x1", "offer": "https://o.example.com/", "colour": "red"}), "colour"),
        (json!({"slug": "x1", "offer": "https://o.example.com/", "status": "sleeping"}), "sleeping"),
        (json!({"slug": "x1", "offer": "https://o.example.com/", "fallback": "nowhere"}), "fallback"),
        (json!({"slug": "has space", "offer": "https://o.example.com/"}), "slug"),
        (json!({"slug": "", "offer": "https://o.example.com/"}), "slug"),
        (json!({"offer": "https://o.example.com/"}), "slug"),
        (json!({"slug": "x1"}), "offer"),
        (json!({"slug": "x1", "offer": 5}), "string"),
    ];
    for (body, what) in &cases {
        let answer = call(&app, Method::POST, "links", Some(body.clone())).await;
        assert_bad_request(&answer, what, &body.to_string());
    }
    for raw in ["", "{", "[]", "not json"] {
        let answer = call_raw(&app, Method::POST, "links", raw).await;
        assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{raw:?}: {}", answer.1);
        assert!(answer.1["error"].as_str().is_some_and(|e| !e.is_empty()), "{raw:?}: {}", answer.1);
    }
    // PUT checks the same things, and a body naming another link than its path.
    let answer =
        call(&app, Method::PUT, "links/cake/x2", Some(json!({"offer": "https://o.example.com/", "redirect": 200})))
            .await;
    assert_bad_request(&answer, "redirect", "PUT redirect 200");
    let answer =
        call(&app, Method::PUT, "links/cake/x2", Some(json!({"slug": "x3", "offer": "https://o.example.com/"}))).await;
    assert_bad_request(&answer, "path", "PUT slug differs from path");
    let answer = call(&app, Method::PUT, "links/nope/x2", Some(json!({"offer": "https://o.example.com/"}))).await;
    assert_bad_request(&answer, "network", "PUT on an unknown network");

    // None of it created anything.
    assert_eq!(app.api("links").await["links"].as_array().expect("links").len(), 6);
    assert_eq!(app.get("/go/cake/x1").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get("/go/cake/x2").await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn stats_by_link_and_by_day(backend: Backend) {
    let app = spawn_app(backend).await;
    let today = helpers::today();
    let a = app.click("demo").await;
    app.click("demo").await;
    app.click("cpl").await;
    assert_eq!(app.get_as("/go/cake/demo", Some(SLACKBOT)).await.status(), StatusCode::FOUND);
    postback_ok(&app, &format!("s2={a}&tid=T1&price=7")).await;

    let by_link = rows(&app.api(&format!("stats?from={today}&to={today}&group=link")).await);
    assert_eq!(by_link.len(), 2, "{by_link:?}");
    let demo = row(&by_link, "cake/demo");
    assert_eq!(
        (
            count(demo, "clicks"),
            count(demo, "bot_hits"),
            count(demo, "conversions"),
            count(demo, "leads"),
            count(demo, "purchases")
        ),
        (2, 1, 1, 0, 1),
        "{demo}"
    );
    assert_eq!(demo["revenue"], "7.00");
    let cpl = row(&by_link, "cake/cpl");
    assert_eq!((count(cpl, "clicks"), count(cpl, "conversions")), (1, 0), "{cpl}");
    assert_eq!(cpl["revenue"], "0.00", "money always has two decimals");
    // Every counter is there, even at zero.
    for field in ["clicks", "bot_hits", "conversions", "leads", "purchases"] {
        assert!(cpl[field].is_u64(), "{field} in {cpl}");
    }

    let by_day = rows(&app.api(&format!("stats?from={today}&to={today}&group=day")).await);
    assert_eq!(by_day.len(), 1, "{by_day:?}");
    let day = &by_day[0];
    assert_eq!(day["key"], today.as_str());
    assert_eq!(
        (count(day, "clicks"), count(day, "bot_hits"), count(day, "conversions"), count(day, "purchases")),
        (3, 1, 1, 1),
        "{day}"
    );
    assert_eq!(day["revenue"], "7.00");

    // A wider range holds the same figures; a range without today holds nothing.
    let now = OffsetDateTime::now_utc().date();
    let (week_ago, tomorrow) = (date_text(now - Duration::days(7)), date_text(now + Duration::days(1)));
    let wide = rows(&app.api(&format!("stats?from={week_ago}&to={tomorrow}&group=day")).await);
    assert_eq!(wide.len(), 1, "days without data have no row: {wide:?}");
    assert_eq!(count(&wide[0], "clicks"), 3);
    let yesterday = date_text(now - Duration::days(1));
    for group in ["link", "day"] {
        assert!(rows(&app.api(&format!("stats?from={week_ago}&to={yesterday}&group={group}")).await).is_empty());
        assert!(rows(&app.api(&format!("stats?from={tomorrow}&to={tomorrow}&group={group}")).await).is_empty());
        assert!(rows(&app.api(&format!("stats?from=2020-01-01&to=2020-01-31&group={group}")).await).is_empty());
    }
    app.stop().await;
}

async fn stats_in_a_time_zone(backend: Backend) {
    let app = spawn_app(backend).await;
    let offsets = [("-05:00", -5), ("%2B14:00", 14), ("-12:00", -12), ("%2B00:00", 0)];
    let before: Vec<String> =
        offsets.iter().map(|(_, h)| local_today(UtcOffset::from_hms(*h, 0, 0).expect("offset"))).collect();
    let id = app.click("demo").await;
    postback_ok(&app, &format!("s2={id}&tid=Z1&price=4")).await;
    for ((tz, hours), before) in offsets.iter().zip(&before) {
        let offset = UtcOffset::from_hms(*hours, 0, 0).expect("offset");
        let local = local_today(offset);
        // Around the click's local day, grouped by day in that zone.
        let day = OffsetDateTime::now_utc().to_offset(offset).date();
        let (from, to) = (date_text(day - Duration::days(1)), date_text(day + Duration::days(1)));
        let by_day = rows(&app.api(&format!("stats?from={from}&to={to}&group=day&tz={tz}")).await);
        assert_eq!(by_day.len(), 1, "tz {tz}: {by_day:?}");
        let key = by_day[0]["key"].as_str().expect("key");
        assert!(key == local || key == before, "tz {tz}: the key is the zone's local date {local}, got {key}");
        assert_eq!(count(&by_day[0], "clicks"), 1);
        assert_eq!(count(&by_day[0], "conversions"), 1);
        assert_eq!(by_day[0]["revenue"], "4.00");

        // That local day alone, grouped by link.
        let by_link = rows(&app.api(&format!("stats?from={key}&to={key}&group=link&tz={tz}")).await);
        assert_eq!(count(row(&by_link, "cake/demo"), "clicks"), 1, "tz {tz}");
        // The days before it, in the same zone: nothing.
        let earlier = date_text(
            Date::parse(key, time::macros::format_description!("[year]-[month]-[day]")).expect("date")
                - Duration::days(1),
        );
        assert!(
            rows(&app.api(&format!("stats?from=2020-01-01&to={earlier}&group=day&tz={tz}")).await).is_empty(),
            "tz {tz}"
        );
    }
    app.stop().await;
}

async fn bad_stats_parameters_are_explained(backend: Backend) {
    let app = spawn_app(backend).await;
    let today = helpers::today();
    let cases = [
        (format!("to={today}&group=link"), "from"),
        (format!("from={today}&group=link"), "to"),
        (format!("from=2026-13-01&to={today}"), "from"),
        (format!("from={today}&to=tomorrow"), "to"),
        (format!("from=24-11-2026&to={today}"), "from"),
        ("from=2026-02-02&to=2026-02-01".to_owned(), "before"),
        (format!("from={today}&to={today}&group=week"), "group"),
        (format!("from={today}&to={today}&tz=EST"), "tz"),
        (format!("from={today}&to={today}&tz=%2B05:30"), "whole-hour"),
        (format!("from={today}&to={today}&tz=%2B15:00"), "tz"),
        (format!("from={today}&to={today}&tz=-5x"), "tz"),
        (format!("from={today}&to={today}&tz=Europe/Paris"), "tz"),
        (format!("from=%zz&to={today}"), "percent"),
    ];
    for (query, what) in &cases {
        let answer = call(&app, Method::GET, &format!("stats?{query}"), None).await;
        assert_bad_request(&answer, what, query);
    }
    // The same period rules hold for the conversions export.
    for (query, what) in [("from=2026-02-02&to=2026-02-01", "before"), ("to=2026-02-01", "from")] {
        let answer = call(&app, Method::GET, &format!("conversions?{query}"), None).await;
        assert_bad_request(&answer, what, query);
    }
    let answer = call(&app, Method::GET, &format!("conversions?from={today}&to={today}&format=xml"), None).await;
    assert_bad_request(&answer, "format", "format=xml");
    app.stop().await;
}

async fn stats_read_your_writes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for n in 1..=5u64 {
        ids.push(app.click("demo").await);
        let row = app.stats_for("cake/demo").await;
        assert_eq!(count(&row, "clicks"), n, "a click counts as soon as its 302 is sent: {row}");
    }
    for (n, id) in ids.iter().enumerate() {
        postback_ok(&app, &format!("s2={id}&price=1")).await;
        let row = app.stats_for("cake/demo").await;
        assert_eq!(
            count(&row, "conversions"),
            n as u64 + 1,
            "a conversion counts as soon as its postback is answered: {row}"
        );
        assert_eq!(row["revenue"], format!("{}.00", n + 1));
    }
    assert_eq!(app.get_as("/go/cake/demo", Some(SLACKBOT)).await.status(), StatusCode::FOUND);
    assert_eq!(count(&app.stats_for("cake/demo").await, "bot_hits"), 1);
    app.stop().await;
}

async fn conversions_carry_their_click(backend: Backend) {
    let app = spawn_app(backend).await;
    let today = helpers::today();
    let res = app
        .client
        .get(format!("{}/go/cake/demo?s3=abc&s4=def&utm_source=fb&utm_campaign=x&fbclid=FB1&gclid=G1", app.base))
        .header("user-agent", CHROME)
        .header("referer", "https://m.facebook.com/")
        .send()
        .await
        .expect("click");
    assert_eq!(res.status(), StatusCode::FOUND);
    let id = click_id_in(&res, "s2");
    let conversion_id = postback_ok(&app, &format!("s2={id}&tid=T9&price=7&oid=55")).await;
    let other = app.click("cpl").await;
    let lead_id = postback_ok(&app, &format!("s2={other}&tid=T10")).await;

    let list =
        app.api(&format!("conversions?from={today}&to={today}")).await["conversions"].as_array().expect("list").clone();
    assert_eq!(list.len(), 2, "{list:?}");
    let find =
        |id: &Value| list.iter().find(|c| c["conversion_id"] == *id).unwrap_or_else(|| panic!("{id} in {list:?}"));
    let c = find(&conversion_id);
    assert_eq!(c["network"], "cake");
    assert_eq!(c["event"], "Purchase");
    assert_eq!(c["value"], "7.00");
    assert_eq!(c["currency"], "USD");
    assert_eq!(c["transaction_id"], "T9");
    assert_eq!(c["item_id"], "55");
    assert_eq!(c["click_id"], id.as_str());
    assert_eq!(c["link"], "cake/demo");
    assert!(c["bot"].is_null(), "{c}");
    assert_eq!(c["subids"], json!({"s3": "abc", "s4": "def"}));
    assert_eq!(c["utm"], json!({"source": "fb", "campaign": "x"}));
    assert_eq!(c["ad_click_ids"], json!({"fbclid": "FB1", "gclid": "G1"}));
    let (clicked, converted) = (rfc3339(&c["clicked_at"]), rfc3339(&c["converted_at"]));
    assert!(clicked <= converted, "{c}");
    assert!((OffsetDateTime::now_utc() - clicked).whole_minutes().abs() < 5, "clicked_at is now: {c}");
    let lead = find(&lead_id);
    assert_eq!(lead["conversion_id"], lead_id);
    assert_eq!(lead["event"], "Lead");
    assert_eq!(lead["value"], "0.00");
    assert_eq!(lead["link"], "cake/cpl");
    assert!(lead["item_id"].is_null());

    // A range that excludes today lists nothing.
    let now = OffsetDateTime::now_utc().date();
    let (week_ago, yesterday) = (date_text(now - Duration::days(7)), date_text(now - Duration::days(1)));
    let none = app.api(&format!("conversions?from={week_ago}&to={yesterday}")).await;
    assert_eq!(none["conversions"], json!([]));
    app.stop().await;
}

async fn conversions_as_csv(backend: Backend) {
    let app = spawn_app(backend).await;
    let today = helpers::today();
    // A campaign name with a comma and quotes: the CSV must quote it.
    let res = app.get("/go/cake/demo?s3=abc&utm_source=fb&utm_campaign=summer%2C%20sale%20%22B%22&fbclid=FB1").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let id = click_id_in(&res, "s2");
    let conversion_id = postback_ok(&app, &format!("s2={id}&tid=T9&price=12.345678&oid=55")).await;

    let res = app
        .client
        .get(format!("{}/api/conversions?from={today}&to={today}&format=csv", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let body = res.text().await.expect("body");

    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader.headers().expect("a header row").iter().map(str::to_owned).collect();
    for column in [
        "conversion_id",
        "click_id",
        "link",
        "value",
        "currency",
        "transaction_id",
        "s2",
        "s3",
        "utm_source",
        "utm_campaign",
        "fbclid",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} in {header:?}");
    }
    let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("valid CSV");
    assert_eq!(records.len(), 1, "{body}");
    let record = &records[0];
    assert_eq!(record.len(), header.len());
    let field =
        |name: &str| record.get(header.iter().position(|h| h == name).expect("column")).expect("value").to_owned();
    assert_eq!(field("conversion_id"), conversion_id.as_str().expect("id"));
    assert_eq!(field("click_id"), id);
    assert_eq!(field("s2"), id);
    assert_eq!(field("link"), "cake/demo");
    assert_eq!(field("value"), "12.345678");
    assert_eq!(field("currency"), "USD");
    assert_eq!(field("transaction_id"), "T9");
    assert_eq!(field("s3"), "abc");
    assert_eq!(field("utm_source"), "fb");
    assert_eq!(field("utm_campaign"), "summer, sale \"B\"");
    assert_eq!(field("fbclid"), "FB1");

    // No conversions in the range: the header row alone.
    let res = app
        .client
        .get(format!("{}/api/conversions?from=2020-01-01&to=2020-01-02&format=csv", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    assert_eq!(reader.headers().expect("header").len(), header.len());
    assert_eq!(reader.records().count(), 0, "{body}");
    app.stop().await;
}

async fn click_lookup(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .client
        .get(format!("{}/go/cake/demo?s3=abc&s4=def&utm_source=fb&utm_medium=paid&gclid=G1&ttclid=TT1", app.base))
        .header("user-agent", CHROME)
        .header("referer", "https://www.google.com/")
        .send()
        .await
        .expect("click");
    let id = click_id_in(&res, "s2");
    let (status, click) = call(&app, Method::GET, &format!("clicks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{click}");
    assert_eq!(click["click_id"], id.as_str());
    assert_eq!(click["link"], "cake/demo");
    assert_eq!(click["user_agent"], CHROME);
    assert_eq!(click["referer"], "https://www.google.com/");
    assert!(click["bot"].is_null(), "{click}");
    assert_eq!(click["subids"], json!({"s3": "abc", "s4": "def"}));
    assert_eq!(click["utm"], json!({"source": "fb", "medium": "paid"}));
    assert_eq!(click["ad_click_ids"], json!({"gclid": "G1", "ttclid": "TT1"}));
    assert!((OffsetDateTime::now_utc() - rfc3339(&click["clicked_at"])).whole_minutes().abs() < 5, "{click}");

    // A bot's click is stored with the reason it was flagged.
    let res = app.get_as("/go/cake/demo", Some(SLACKBOT)).await;
    let bot_id = click_id_in(&res, "s2");
    let (status, bot) = call(&app, Method::GET, &format!("clicks/{bot_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bot["bot"].as_str().is_some_and(|b| !b.is_empty()), "{bot}");
    assert!(bot["subids"].as_object().is_some_and(|m| m.is_empty()), "{bot}");

    // A tune click is found the same way.
    let res = app.get("/go/tune/t1?aff_sub2=z").await;
    let tune_id = click_id_in(&res, "aff_sub");
    let (status, tune) = call(&app, Method::GET, &format!("clicks/{tune_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tune["link"], "tune/t1");
    assert_eq!(tune["subids"], json!({"aff_sub2": "z"}));

    let now = now_secs();
    let mut mangled = id.clone().into_bytes();
    mangled[12] = if mangled[12] == b'a' { b'b' } else { b'a' };
    let mangled = String::from_utf8(mangled).expect("ascii");
    for unknown in [
        Keyring::new(SECRET, &[], 86_400).mint(now).to_string(),
        Keyring::new("other", &[], 86_400).mint(now).to_string(),
        mangled,
        "abc".to_owned(),
        format!("{id}0"),
    ] {
        let (status, body) = call(&app, Method::GET, &format!("clicks/{unknown}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    app.stop().await;
}

async fn events_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    // In order: ok, duplicate, no_match, no_match, rejected (price), rejected (key).
    postback_ok(&app, &format!("s2={id}&tid=E1&price=3")).await;
    assert_eq!(app.postback(&format!("s2={id}&tid=E1&price=3")).await.1["status"], "duplicate");
    assert_eq!(app.postback("s2=abc").await.1["status"], "no_match");
    assert_eq!(app.postback("tid=E2").await.1["status"], "no_match");
    assert_eq!(app.postback(&format!("s2={id}&price=abc")).await.0, StatusCode::BAD_REQUEST);
    let res = app.get_as(&format!("/collect/cake/wrong?s2={id}"), None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let all = app.api("events").await["events"].as_array().expect("events").clone();
    let statuses: Vec<&str> = all.iter().map(|e| e["status"].as_str().expect("status")).collect();
    assert_eq!(statuses, ["rejected", "rejected", "no_match", "no_match", "duplicate", "ok"], "newest first");
    let times: Vec<OffsetDateTime> = all.iter().map(|e| rfc3339(&e["received_at"])).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for e in &all {
        for field in ["received_at", "network", "status", "reason", "click_id", "conversion_id", "query"] {
            assert!(e.get(field).is_some(), "{field} in {e}");
        }
        assert_eq!(e["network"], "cake");
    }
    assert_eq!(all[5]["click_id"], id.as_str());
    assert!(all[5]["conversion_id"].is_string());
    assert_eq!(all[4]["conversion_id"], all[5]["conversion_id"], "a duplicate names the conversion it repeats");

    let two = app.api("events?limit=2").await["events"].as_array().expect("events").clone();
    assert_eq!(two, all[..2].to_vec());
    assert_eq!(app.api("events?limit=1").await["events"].as_array().expect("events").len(), 1);
    for (status, n) in [("ok", 1), ("duplicate", 1), ("no_match", 2), ("rejected", 2), ("queued", 0)] {
        let list = app.api(&format!("events?status={status}")).await["events"].as_array().expect("events").clone();
        assert_eq!(list.len(), n, "status={status}: {list:?}");
        assert!(list.iter().all(|e| e["status"] == status));
    }
    let one = app.api("events?status=no_match&limit=1").await["events"].as_array().expect("events").clone();
    assert_eq!(one, all[2..3].to_vec(), "the newest no_match");

    for query in ["limit=0", "limit=abc", "limit=-1", "limit=1001", "limit=", "status=bogus", "status=OK", "status="] {
        let answer = call(&app, Method::GET, &format!("events?{query}"), None).await;
        let what = if query.starts_with("limit") { "limit" } else { "status" };
        assert_bad_request(&answer, what, query);
    }
    app.stop().await;
}

on_both_stores!(
    every_route_needs_the_token,
    config_links_are_listed,
    api_link_lifecycle,
    config_links_are_read_only,
    invalid_link_bodies_are_explained,
    stats_by_link_and_by_day,
    stats_in_a_time_zone,
    bad_stats_parameters_are_explained,
    stats_read_your_writes,
    conversions_carry_their_click,
    conversions_as_csv,
    click_lookup,
    events_filters,
);
