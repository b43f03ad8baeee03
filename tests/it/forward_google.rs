//! Google through the Data Manager API (the default `api`), against a local stand-in for
//! `events:ingest` and the OAuth token endpoint: the exact request, dry run as
//! `validateOnly`, a refused request whose faulty event fails while the other is
//! delivered, retries after a 500 and a 429, and the retraction of a reversed conversion
//! (on both APIs).

use serde_json::{json, Value};

use crate::forward::{
    click_with, eventually, forward, google, google_purchase, purchase, reply, reverse, rfc3339_ms, rfc3339_of, seed,
    settled, settled_id, StandIn, GOOGLE_PATH,
};
use crate::helpers::{spawn_app_over, Backend, StoreHandle, CHROME};

const INGEST_PATH: &str = "/v1/events:ingest";
const TOKEN: &str = r#"{"access_token":"ya29.dm","expires_in":3599}"#;

/// A Data Manager destination on `stand_in` (no `api`: it is the default), with `extra` keys.
fn data_manager(name: &str, stand_in: &StandIn, extra: &str) -> String {
    format!(
        r#"
[[destinations]]
name = "{name}"
type = "google"
customer_id = "123-456-7890"
login_customer_id = "999-000-1111"
conversion_action = "customers/1234567890/conversionActions/555"
client_id = "client-1"
client_secret = "client-secret"
refresh_token = "refresh-1"
datamanager_url = "{url}"
token_url = "{url}/token"
backoff_ms = 20
timeout_secs = 2
{extra}
"#,
        url = stand_in.url
    )
}

async fn stand_in() -> StandIn {
    let platform = StandIn::start().await;
    platform.default_answer("/token", reply(200, TOKEN));
    platform.default_answer(INGEST_PATH, reply(200, r#"{"requestId":"req-1"}"#));
    platform
}

/// The `transactionId`s of one recorded ingest request, in order.
fn transaction_ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["transactionId"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_manager_gets_the_exact_ingest_request() {
    let platform = stand_in().await;
    let store = StoreHandle::new(Backend::Embedded);
    let app = spawn_app_over(&store, &forward(&data_manager("dm", &platform, "consent = \"granted\""))).await;

    let before = crate::helpers::today();
    let click_id = click_with(&app, "gclid=EAIaIQ_dm").await;
    let conversion_id = purchase(&app, &click_id, "dm-1", "12.50").await;
    let delivery = settled(&app, "dm", &conversion_id, "delivered").await;
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["last_error"], "request id req-1");

    let sent = platform.seen(INGEST_PATH);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["authorization"], "Bearer ya29.dm");
    assert!(!sent[0].headers.contains_key("developer-token"), "no developer token");
    assert!(!sent[0].headers.contains_key("login-customer-id"), "the login account is in the body");
    assert!(sent[0].body.contains(r#""conversionValue":12.50"#), "{}", sent[0].body);
    let conversions = app.api(&format!("conversions?from={before}&to={before}")).await;
    let converted_at = conversions["conversions"]
        .as_array()
        .expect("conversions")
        .iter()
        .find(|c| c["conversion_id"] == conversion_id.as_str())
        .expect("the conversion")["converted_at"]
        .as_str()
        .expect("converted_at")
        .to_owned();
    let account = json!({ "accountType": "GOOGLE_ADS", "accountId": "1234567890" });
    let expected = json!({
        "destinations": [{
            "reference": "555",
            "operatingAccount": account,
            "loginAccount": { "accountType": "GOOGLE_ADS", "accountId": "9990001111" },
            "productDestinationId": "555",
        }],
        "events": [{
            "destinationReferences": ["555"],
            "transactionId": conversion_id,
            "eventTimestamp": rfc3339_of(rfc3339_ms(&converted_at)),
            "eventSource": "WEB",
            "adIdentifiers": {
                "gclid": "EAIaIQ_dm",
                "landingPageDeviceInfo": { "userAgent": CHROME, "ipAddress": "127.0.0.1" },
            },
            // Exact decimals, as sent.
            "conversionValue": serde_json::from_str::<Value>("12.50").expect("number"),
            "currency": "USD",
        }],
        "consent": { "adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED" },
    });
    assert_eq!(sent[0].json(), expected);
    let token_form = &platform.seen("/token")[0].body;
    assert!(token_form.contains("grant_type=refresh_token") && token_form.contains("refresh_token=refresh-1"));
    assert_eq!(delivery["request"], expected["events"][0]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_manager_dry_run_sends_validate_only() {
    let platform = stand_in().await;
    platform.default_answer(INGEST_PATH, reply(200, "{}"));
    let store = StoreHandle::new(Backend::Embedded);
    let app = spawn_app_over(&store, &forward(&data_manager("dm-dry", &platform, "dry_run = true"))).await;
    let click_id = click_with(&app, "wbraid=WB_dry").await;
    let conversion_id = purchase(&app, &click_id, "dry-1", "3").await;
    let delivery = settled(&app, "dm-dry", &conversion_id, "dry_run").await;
    assert_eq!((delivery["attempts"].as_u64(), delivery["last_status"].as_u64()), (Some(1), Some(200)));
    let sent = platform.seen(INGEST_PATH);
    assert_eq!(sent.len(), 1);
    let body = sent[0].json();
    assert_eq!(body["validateOnly"], true);
    assert_eq!(body["events"][0]["adIdentifiers"]["wbraid"], "WB_dry");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_manager_fails_the_event_google_names_and_delivers_the_other() {
    let platform = stand_in().await;
    let refused = r#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT",
        "details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[
          {"field":"events[1].ad_identifiers.gclid","description":"The gclid is not valid."}]},
          {"@type":"type.googleapis.com/google.rpc.RequestInfo","requestId":"req-bad"}]}}"#;
    platform.answer(INGEST_PATH, &[reply(400, refused)]);
    let store = StoreHandle::new(Backend::Embedded);
    let extra = forward(&data_manager("dm-partial", &platform, ""));
    // Both recorded before the worker starts, so that one request carries both.
    let pair = [google_purchase("p-1"), google_purchase("p-2")];
    seed(&store, &extra, &pair).await;
    let app = spawn_app_over(&store, &extra).await;

    let first = eventually("the first request", || async { platform.seen(INGEST_PATH).first().cloned() }).await;
    let ids = transaction_ids(&first.json());
    assert_eq!(ids.len(), 2, "one request for both: {ids:?}");
    let failed = settled(&app, "dm-partial", &ids[1], "failed").await;
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["last_status"], 400);
    assert_eq!(failed["last_error"], "events[1].ad_identifiers.gclid: The gclid is not valid.");
    let delivered = settled(&app, "dm-partial", &ids[0], "delivered").await;
    assert_eq!(delivered["attempts"], 2, "refused with the other, then sent alone");
    let sent = platform.seen(INGEST_PATH);
    assert_eq!(sent.len(), 2);
    assert_eq!(transaction_ids(&sent[1].json()), vec![ids[0].clone()]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_manager_retries_after_a_500_and_a_429_then_delivers() {
    let platform = stand_in().await;
    platform.answer(
        INGEST_PATH,
        &[
            reply(500, r#"{"error":{"code":500,"message":"Internal error","status":"INTERNAL"}}"#),
            reply(429, r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#),
        ],
    );
    let store = StoreHandle::new(Backend::Embedded);
    let app = spawn_app_over(&store, &forward(&data_manager("dm-retry", &platform, ""))).await;
    let click_id = click_with(&app, "gbraid=GB_retry").await;
    let conversion_id = purchase(&app, &click_id, "retry-1", "1").await;
    let delivered = settled(&app, "dm-retry", &conversion_id, "delivered").await;
    assert_eq!(delivered["attempts"], 3);
    let sent = platform.seen(INGEST_PATH);
    assert_eq!(sent.len(), 3);
    for s in &sent {
        assert_eq!(transaction_ids(&s.json()), vec![conversion_id.clone()], "the same event every time");
    }
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains(r#"cakelink_forward_retried_total{destination="dm-retry"} 2"#), "{metrics}");
    app.stop().await;
}

// Needs the store's `reverse_conversion` (being written on another branch; here it still
// answers "not implemented").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversed_conversion_is_retracted_through_both_google_apis() {
    let platform = stand_in().await;
    let store = StoreHandle::new(Backend::Embedded);
    let extra = forward(&format!("{}{}", data_manager("dm-rev", &platform, ""), google("ads-rev", &platform)));
    let original = google_purchase("rev-g");
    seed(&store, &extra, std::slice::from_ref(&original)).await;
    let app = spawn_app_over(&store, &extra).await;
    settled(&app, "dm-rev", &original.id, "delivered").await;
    settled(&app, "ads-rev", &original.id, "delivered").await;
    app.stop().await;

    let reversed_at = original.at + 7_200_000;
    reverse(&store, &extra, &original, reversed_at).await;
    let app = spawn_app_over(&store, &extra).await;
    for dest in ["dm-rev", "ads-rev"] {
        let d = settled_id(&app, dest, &format!("{}.reversal~{dest}", original.id), "delivered").await;
        assert_eq!(d["kind"], "reversal");
    }

    // Data Manager: an adjustment under the same transaction id, value restated to 0.
    let sent = platform.seen(INGEST_PATH);
    assert_eq!(sent.len(), 2);
    let (before, after) = (sent[0].json(), sent[1].json());
    let adjustment = &after["events"][0];
    assert_eq!(adjustment["transactionId"], before["events"][0]["transactionId"]);
    assert_eq!(adjustment["destinationReferences"], before["events"][0]["destinationReferences"]);
    assert_eq!(adjustment["conversionValue"], 0);
    assert_eq!(adjustment["currency"], "USD");
    assert_eq!(adjustment["lastUpdatedTimestamp"], rfc3339_of(reversed_at).as_str());
    assert_eq!(adjustment["adIdentifiers"]["gclid"], "gclid-rev-g");

    // Google Ads API: a RETRACTION keyed by the order id the conversion went with.
    assert_eq!(platform.seen(GOOGLE_PATH).len(), 1, "the reversal is no new click conversion");
    let adjustments = platform.seen("/v22/customers/1234567890:uploadConversionAdjustments");
    assert_eq!(adjustments.len(), 1);
    let body = adjustments[0].json();
    assert_eq!(body["partialFailure"], true);
    let a = &body["conversionAdjustments"][0];
    assert_eq!(a["adjustmentType"], "RETRACTION");
    assert_eq!(a["orderId"], original.id.as_str());
    assert_eq!(a["conversionAction"], "customers/1234567890/conversionActions/555");
    let when = a["adjustmentDateTime"].as_str().expect("adjustment time");
    assert!(when.ends_with("+00:00") && when.len() == 25, "{when}");
    app.stop().await;
}
