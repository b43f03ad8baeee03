//! Reversals: a network's disposition (in a postback, or a reconciled report's
//! `Disposition` column) reverses a recorded conversion. Its figures leave the conversion
//! day, it stays listed as `reversed`, the event log says `reversed`, a webhook hears
//! `conversion.reversed`, and Meta, which cannot retract, records `skipped`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::forward::{deliveries, forward, meta, StandIn, DEADLINE};
use crate::helpers::{self, count, spawn_app_with, Backend, TestApp, ADMIN_TOKEN};
use crate::on_both_stores;

const DISPOSITION: &str = "\n[networks.cake]\ndisposition_field = \"disposition\"\n";

fn destinations(platform: &StandIn) -> String {
    let hook = format!(
        "\n[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}/hook\"\nsecret = \"hook-secret\"\nbackoff_ms = 20\ntimeout_secs = 2\n",
        platform.url
    );
    forward(&format!("{}{hook}", meta("meta", platform, "")))
}

async fn conversion(app: &TestApp, id: &str) -> Value {
    let today = helpers::today();
    let list = app.api(&format!("conversions?from={today}&to={today}")).await["conversions"].clone();
    list.as_array().expect("list").iter().find(|c| c["conversion_id"] == id).cloned().expect("listed")
}

/// Waits until the reversal of a conversion to `destination` has `status`.
async fn reversal_delivery(app: &TestApp, destination: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let list = deliveries(app, &format!("destination={destination}&limit=100")).await;
        let found = list.into_iter().find(|d| d["kind"] == "reversal");
        if let Some(d) = found.as_ref().filter(|d| d["status"] == status) {
            return d.clone();
        }
        assert!(started.elapsed() < DEADLINE, "the reversal to {destination} never became {status}: {found:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_disposition_postback_reverses_the_conversion(backend: Backend) {
    let platform = StandIn::start().await;
    platform.default_answer("/v21.0/123456/events", crate::forward::reply(200, r#"{"events_received":1}"#));
    let app = spawn_app_with(backend, "", &format!("{DISPOSITION}{}", destinations(&platform))).await;
    let click = app.click("demo").await;
    let (_, recorded) = app.postback(&format!("s2={click}&tid=t1&price=7.50&disposition=Approved")).await;
    assert_eq!(recorded["status"], "ok");
    let id = recorded["conversion_id"].as_str().expect("id").to_owned();
    let other = app.click("demo").await;
    assert_eq!(app.postback(&format!("s2={other}&tid=t2&price=2.00")).await.1["status"], "ok");
    let before = app.stats_for("cake/demo").await;
    assert_eq!((count(&before, "conversions"), count(&before, "purchases")), (2, 2));
    assert_eq!(before["revenue"], "9.50");

    let (status, reversed) = app.postback(&format!("s2={click}&tid=t1&disposition=Rejected")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (reversed["status"].as_str(), reversed["conversion_id"].as_str()),
        (Some("reversed"), Some(id.as_str()))
    );
    let after = app.stats_for("cake/demo").await;
    assert_eq!((count(&after, "conversions"), count(&after, "purchases")), (1, 1));
    assert_eq!(after["revenue"], "2.00");
    assert_eq!(count(&after, "clicks"), 2, "clicks are not touched");
    let listed = conversion(&app, &id).await;
    assert_eq!(listed["status"], "reversed");
    assert!(listed["reversed_at"].is_string());
    assert_eq!(conversion(&app, recorded["conversion_id"].as_str().expect("id")).await["value"], "7.50");
    let event = app.last_event().await;
    assert_eq!((event["status"].as_str(), event["reason"].as_str()), (Some("reversed"), Some("disposition Rejected")));

    // Twice changes nothing; an unknown conversion is no match.
    let (_, again) = app.postback(&format!("s2={click}&tid=t1&disposition=rejected")).await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 1);
    let (_, unknown) = app.postback(&format!("s2={click}&tid=nope&disposition=Returned")).await;
    assert_eq!(unknown["status"], "no_match");
    assert!(unknown["reason"].as_str().expect("reason").starts_with("no_conversion_to_reverse"));

    // Meta cannot retract: skipped, with the reason; the webhook hears the reversal.
    let skipped = reversal_delivery(&app, "meta", "skipped").await;
    assert!(skipped["last_error"].as_str().expect("reason").contains("retract"), "{skipped}");
    reversal_delivery(&app, "hook", "delivered").await;
    let hooks = platform.seen("/hook");
    let bodies: Vec<Value> = hooks.iter().map(|s| s.json()).collect();
    let reversal = bodies.iter().find(|b| b["event"] == "conversion.reversed").expect("a conversion.reversed webhook");
    assert_eq!(reversal["conversion"]["conversion_id"], id.as_str());
    assert!(reversal["conversion"]["reversed_at"].is_string());
    // Only the conversions went to Meta: the reversal sent nothing.
    let sent = || -> usize {
        platform.seen("/v21.0/123456/events").iter().map(|s| s.json()["data"].as_array().map_or(0, Vec::len)).sum()
    };
    let started = Instant::now();
    while sent() < 2 && started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(sent(), 2, "one event per conversion, none for the reversal");
    app.stop().await;
}

async fn a_reconciled_disposition_reverses_on_ingest(backend: Backend) {
    let app = spawn_app_with(backend, "", "").await;
    let click = app.click("demo").await;
    let (_, recorded) = app.postback(&format!("s2={click}&tid=t9&price=40.00")).await;
    assert_eq!(recorded["status"], "ok");
    let today = helpers::today();
    let csv = format!(
        "Conversion Date,Sub ID 2,Transaction ID,Price,Disposition\n{today} 09:00:00,{click},t9,40.00,Rejected\n"
    );
    let post = |ingest: bool| {
        let url = format!("{}/api/reconcile?from={today}&to={today}&ingest={ingest}", app.base);
        app.client.post(url).bearer_auth(ADMIN_TOKEN).body(csv.clone()).send()
    };
    let res = post(false).await.expect("request");
    let r: Value = res.json().await.expect("JSON");
    assert_eq!((r["totals"]["network"].as_u64(), r["totals"]["extra"].as_u64()), (Some(0), Some(1)), "{r:#}");
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 1, "a report without --ingest changes nothing");

    let res = post(true).await.expect("request");
    assert_eq!(res.headers()["x-cakelink-ingested"], "recorded=0 reversed=1 unchanged=0");
    let after = app.stats_for("cake/demo").await;
    assert_eq!((count(&after, "conversions"), after["revenue"].as_str()), (0, Some("0.00")));
    let event = app.last_event().await;
    assert_eq!(
        (event["status"].as_str(), event["reason"].as_str()),
        (Some("reversed"), Some("reconciled: disposition Rejected"))
    );
    assert_eq!(event["click_id"], click.as_str());

    let res = post(true).await.expect("request");
    assert_eq!(res.headers()["x-cakelink-ingested"], "recorded=0 reversed=0 unchanged=0");
    let r: Value = res.json().await.expect("JSON");
    assert_eq!(r["totals"]["extra"], 0, "a reversed conversion is not cakelink's any more");
    app.stop().await;
}

on_both_stores!(a_disposition_postback_reverses_the_conversion, a_reconciled_disposition_reverses_on_ingest);
