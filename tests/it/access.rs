//! Who may send a postback (per-network `postback_allowlist`, trusted proxies) and what a
//! stored click keeps of the visitor's address (`[privacy] anonymize_ip`).

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{count, spawn_app_edited, spawn_app_with, Backend, TestApp, POSTBACK_KEY};
use crate::on_both_stores;

/// A `GET` postback on `network` with the right key, through `forwarded_for` if given.
async fn postback_via(app: &TestApp, network: &str, query: &str, forwarded_for: Option<&str>) -> (StatusCode, Value) {
    let mut req = app.client.get(format!("{}/collect/{network}/{POSTBACK_KEY}?{query}", app.base));
    if let Some(hops) = forwarded_for {
        req = req.header("x-forwarded-for", hops);
    }
    let res = req.send().await.expect("postback");
    let status = res.status();
    (status, res.json().await.expect("postback answers JSON"))
}

fn assert_refused(answer: &(StatusCode, Value), address: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["status"], "rejected", "{body}");
    let reason = body["reason"].as_str().expect("a reason");
    assert!(reason.contains("allowlist") && reason.contains(address), "{reason}");
}

/// Tests connect from 127.0.0.1: `cake` allows only a documentation network, `tune`
/// allows loopback.
async fn postbacks_from_outside_the_allowlist_are_refused(backend: Backend) {
    let app = spawn_app_edited(backend, |text| {
        text.replace("[networks.tune]\n", "[networks.tune]\npostback_allowlist = [\"127.0.0.0/8\", \"::1\"]\n")
            + "\n[networks.cake]\npostback_allowlist = [\"203.0.113.0/24\"]\n"
    })
    .await;
    let id = app.click("demo").await;

    // From 127.0.0.1 to cake: refused before anything is read, and logged.
    let refused = postback_via(&app, "cake", &format!("s2={id}&price=5.00"), None).await;
    assert_refused(&refused, "127.0.0.1");
    let event = app.last_event().await;
    assert_eq!(event["status"], "rejected", "{event}");
    assert!(event["reason"].as_str().is_some_and(|r| r.contains("allowlist")), "{event}");
    // Without trusted proxies the header is not believed.
    let refused = postback_via(&app, "cake", &format!("s2={id}&price=5.00"), Some("203.0.113.9")).await;
    assert_refused(&refused, "127.0.0.1");
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 0, "no conversion was recorded");

    // tune allows loopback: the postback is read (no such click, but not refused).
    let (status, body) = postback_via(&app, "tune", "aff_sub=unknown&payout=1", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["status"], "rejected", "{body}");
    app.stop().await;
}

/// Behind a trusted proxy, the hop that proxy appended is judged, not the proxy and
/// not whatever the client wrote further left.
async fn a_trusted_proxy_forwards_the_sender(backend: Backend) {
    let app = spawn_app_edited(backend, |text| {
        text.replace(
            "header_read_timeout_secs = 1\n",
            "header_read_timeout_secs = 1\ntrusted_proxies = [\"127.0.0.1\"]\n",
        ) + "\n[networks.cake]\npostback_allowlist = [\"203.0.113.0/24\"]\n"
    })
    .await;
    let id = app.click("demo").await;
    let query = format!("s2={id}&price=5.00&tid=via-proxy");

    // The client claims an allowed address, but the proxy saw another.
    let refused = postback_via(&app, "cake", &query, Some("203.0.113.9, 198.51.100.4")).await;
    assert_refused(&refused, "198.51.100.4");
    // No header: the proxy itself, which is not allowed.
    assert_refused(&postback_via(&app, "cake", &query, None).await, "127.0.0.1");
    // The proxy saw an allowed sender.
    let (status, body) = postback_via(&app, "cake", &query, Some("198.51.100.4, 203.0.113.9")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 1);
    app.stop().await;
}

/// With `anonymize_ip` the click keeps the visitor's /24, never the address.
async fn anonymized_clicks_keep_only_the_network(backend: Backend) {
    let app = spawn_app_with(backend, "", "\n[privacy]\nanonymize_ip = true\n").await;
    let id = app.click("demo").await;
    let click = app.api(&format!("clicks/{id}")).await;
    assert_eq!(click["ip"], "127.0.0.0", "{click}");
    app.stop().await;
}

on_both_stores!(
    postbacks_from_outside_the_allowlist_are_refused,
    a_trusted_proxy_forwards_the_sender,
    anonymized_clicks_keep_only_the_network
);
