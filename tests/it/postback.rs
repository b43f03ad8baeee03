//! Postbacks as CAKE (and a TUNE-style network) send them: every row of DESIGN §5,
//! against a real server over both stores.

use cakelink::clickid::Keyring;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    self, click_id_in, count, spawn_app, spawn_app_on, spawn_app_with, Backend, StoreHandle, TestApp, POSTBACK_KEY,
    SECRET,
};
use crate::on_both_stores;

const DAY: u64 = 86_400;
/// The test config's click lifetime: attribution_days 30 + postback_grace_days 7.
const LIFETIME: u64 = 37 * DAY;
const SLACKBOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// `POST` a postback body with a content type; the answer must be JSON.
async fn post(app: &TestApp, path_and_query: &str, content_type: &str, body: String) -> (StatusCode, Value) {
    let res = app
        .client
        .post(format!("{}{path_and_query}", app.base))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = res.status();
    (status, res.json().await.expect("postback answers JSON"))
}

/// Today's conversions as `/api/conversions` lists them.
async fn conversions(app: &TestApp) -> Vec<Value> {
    let today = helpers::today();
    app.api(&format!("conversions?from={today}&to={today}")).await["conversions"]
        .as_array()
        .expect("conversions")
        .clone()
}

fn conversion<'a>(list: &'a [Value], id: &Value) -> &'a Value {
    list.iter().find(|c| c["conversion_id"] == *id).unwrap_or_else(|| panic!("conversion {id} in {list:?}"))
}

async fn events(app: &TestApp, filter: &str) -> Vec<Value> {
    app.api(&format!("events?limit=1000{filter}")).await["events"].as_array().expect("events").clone()
}

/// Asserts the answer is `200 {"status":"ok"}` and returns the conversion id.
fn assert_ok(answer: &(StatusCode, Value)) -> Value {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    body["conversion_id"].clone()
}

/// Asserts `200 no_match` whose reason contains `reason`.
fn assert_no_match(answer: &(StatusCode, Value), reason: &str) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::OK, "no_match answers 200: {body}");
    assert_eq!(body["status"], "no_match", "{body}");
    let text = body["reason"].as_str().expect("a reason");
    assert!(text.contains(reason), "reason {text:?} should name {reason:?}");
    assert!(body["conversion_id"].is_null(), "no conversion for a no_match: {body}");
}

fn assert_rejected(answer: &(StatusCode, Value), http: StatusCode, reason: &str) {
    let (status, body) = answer;
    assert_eq!(*status, http, "{body}");
    assert_eq!(body["status"], "rejected", "{body}");
    let text = body["reason"].as_str().expect("a reason");
    assert!(text.to_ascii_lowercase().contains(reason), "reason {text:?} should mention {reason:?}");
    assert!(body["conversion_id"].is_null(), "{body}");
}

async fn ok_records_a_conversion(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;

    let answer = app.postback(&format!("s2={id}&tid=T1&price=7")).await;
    let conversion_id = assert_ok(&answer);
    let cid = conversion_id.as_str().expect("a conversion id");
    assert_eq!(cid.len(), 22, "{cid}");
    assert!(cid.bytes().all(|b| b.is_ascii_alphanumeric()), "{cid}");
    assert!(answer.1["reason"].as_str().is_some_and(|r| r.contains("Purchase")), "{}", answer.1);

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 1, "{row}");
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(count(&row, "purchases"), 1, "{row}");
    assert_eq!(count(&row, "leads"), 0, "{row}");
    assert_eq!(row["revenue"], "7.00", "{row}");

    let event = app.last_event().await;
    assert_eq!(event["status"], "ok", "{event}");
    assert_eq!(event["network"], "cake", "{event}");
    assert_eq!(event["click_id"], id.as_str(), "{event}");
    assert_eq!(event["conversion_id"], conversion_id, "{event}");
    app.stop().await;
}

async fn duplicate_with_tid_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let first = assert_ok(&app.postback(&format!("s2={id}&tid=T1&price=7")).await);

    for query in [format!("s2={id}&tid=T1&price=7"), format!("s2={id}&tid=T1&price=9&s3=again")] {
        let (status, body) = app.postback(&query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "duplicate", "{query}: {body}");
        assert_eq!(body["conversion_id"], first, "a duplicate names the conversion it repeats");
    }

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(count(&row, "purchases"), 1, "{row}");
    assert_eq!(row["revenue"], "7.00", "{row}");
    assert_eq!(conversions(&app).await.len(), 1);
    assert_eq!(events(&app, "&status=duplicate").await.len(), 2);
    app.stop().await;
}

async fn duplicate_without_tid_is_an_exact_repeat(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let first = assert_ok(&app.postback(&format!("s2={id}&price=5&oid=1")).await);

    let (status, body) = app.postback(&format!("s2={id}&price=5&oid=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "duplicate", "{body}");
    assert_eq!(body["conversion_id"], first);
    // Field order does not make a new postback.
    let (_, body) = app.postback(&format!("oid=1&price=5&s2={id}")).await;
    assert_eq!(body["status"], "duplicate", "{body}");

    let second = assert_ok(&app.postback(&format!("s2={id}&price=6&oid=1")).await);
    assert_ne!(second, first, "a different price without tid is another conversion");

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 2, "{row}");
    assert_eq!(row["revenue"], "11.00", "{row}");
    app.stop().await;
}

async fn same_tid_on_another_click_is_a_new_conversion(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.click("demo").await;
    let b = app.click("demo").await;
    let first = assert_ok(&app.postback(&format!("s2={a}&tid=T1&price=7")).await);
    let second = assert_ok(&app.postback(&format!("s2={b}&tid=T1&price=7")).await);
    assert_ne!(first, second);

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 2, "{row}");
    assert_eq!(count(&row, "conversions"), 2, "{row}");
    assert_eq!(row["revenue"], "14.00", "{row}");
    let list = conversions(&app).await;
    assert_eq!(conversion(&list, &first)["click_id"], a.as_str());
    assert_eq!(conversion(&list, &second)["click_id"], b.as_str());
    app.stop().await;
}

/// Changes one character in the middle of an id: still 32 base62 digits, bad tag.
fn mangle(id: &str) -> String {
    let mut bytes = id.as_bytes().to_vec();
    bytes[12] = if bytes[12] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).expect("ascii")
}

async fn no_match_names_each_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = app.click("demo").await;
    let now = now_secs();
    let ours = Keyring::new(SECRET, &[], LIFETIME);

    assert_no_match(&app.postback("tid=T1&price=7").await, "missing_click_id");
    assert_no_match(&app.postback("s2=&tid=T1&price=7").await, "missing_click_id");
    assert_no_match(&app.postback("s2=null&price=7").await, "missing_click_id");
    // CAKE had no value and left its token in place.
    assert_no_match(&app.postback("s1=%23s1%23&s2=%23s2%23&tid=T1&price=7").await, "unreplaced");
    assert_no_match(&app.postback("s2=abc&price=7").await, "malformed_click_id");
    assert_no_match(&app.postback(&format!("s2={}&price=7", "-".repeat(32))).await, "malformed_click_id");
    assert_no_match(&app.postback(&format!("s2={real}x&price=7")).await, "malformed_click_id");

    let mangled = mangle(&real);
    assert_eq!(mangled.len(), 32);
    assert!(mangled.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_no_match(&app.postback(&format!("s2={mangled}&price=7")).await, "forged_click_id");
    let other_secret = Keyring::new("other", &[], DAY).mint(now);
    assert_no_match(&app.postback(&format!("s2={other_secret}&price=7")).await, "forged_click_id");

    let expired = ours.mint(now - 40 * DAY);
    assert_no_match(&app.postback(&format!("s2={expired}&price=7")).await, "expired_click_id");
    let just_expired = ours.mint(now - LIFETIME - 3600);
    assert_no_match(&app.postback(&format!("s2={just_expired}&price=7")).await, "expired_click_id");
    // Within attribution + grace the id is still genuine: never clicked, so unknown.
    let late = ours.mint(now - LIFETIME + 3600);
    assert_no_match(&app.postback(&format!("s2={late}&price=7")).await, "unknown_click_id");
    let unknown = ours.mint(now);
    assert_no_match(&app.postback(&format!("s2={unknown}&price=7")).await, "unknown_click_id");

    // The real click is untouched by all that, and still converts.
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 0, "{row}");
    assert_ok(&app.postback(&format!("s2={real}&price=7")).await);

    let logged = events(&app, "&status=no_match").await;
    assert_eq!(logged.len(), 13, "every no_match is logged");
    assert!(logged.iter().all(|e| e["status"] == "no_match"));
    assert!(logged[0]["reason"].as_str().is_some_and(|r| r.contains("unknown_click_id")), "{}", logged[0]);
    assert_eq!(logged[0]["click_id"], unknown.as_str());
    app.stop().await;
}

async fn a_previous_secret_still_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = Keyring::new("an-older-secret-0123456789", &[], LIFETIME).mint(now_secs());
    // Genuine under a rotated-out secret: never stored here, so unknown rather than forged.
    assert_no_match(&app.postback(&format!("s2={old}&price=7")).await, "unknown_click_id");
    app.stop().await;
}

async fn a_rotated_secret_resolves_clicks_stored_before(backend: Backend) {
    const X: &str = "the-secret-before-rotation-01";
    const Y: &str = "the-secret-after-rotation-002";
    let store = StoreHandle::new(backend);

    let before = spawn_app_on(&store, X, &[]).await;
    let id = before.click("demo").await;
    before.stop().await;

    // Rotated without keeping the old secret: the id no longer verifies.
    let forgetful = spawn_app_on(&store, Y, &[]).await;
    assert_no_match(&forgetful.postback(&format!("s2={id}&tid=R1&price=7")).await, "forged_click_id");
    forgetful.stop().await;

    let after = spawn_app_on(&store, Y, &[X]).await;
    let conversion_id = assert_ok(&after.postback(&format!("s2={id}&tid=R1&price=7")).await);
    let row = after.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 1, "{row}");
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(conversion(&conversions(&after).await, &conversion_id)["click_id"], id.as_str());
    // New ids are tagged with the new secret, which the old app would not accept.
    let fresh = after.click("demo").await;
    assert!(Keyring::new(Y, &[], LIFETIME).verify(&fresh, now_secs()).is_ok());
    assert!(Keyring::new(X, &[], LIFETIME).verify(&fresh, now_secs()).is_err());
    after.stop().await;
}

async fn wrong_key_is_rejected_and_logged(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    for key in ["wrong-key", "test-postback-key-012345678", "test-postback-key-01234567890"] {
        let res = app.get_as(&format!("/collect/cake/{key}?s2={id}&tid=T1&price=7"), None).await;
        let status = res.status();
        let body: Value = res.json().await.expect("JSON");
        assert_rejected(&(status, body), StatusCode::FORBIDDEN, "key");
    }
    // A POST with the wrong key is refused the same way.
    let (status, body) =
        post(&app, &format!("/collect/cake/wrong-key?s2={id}"), "application/x-www-form-urlencoded", "price=7".into())
            .await;
    assert_rejected(&(status, body), StatusCode::FORBIDDEN, "key");

    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 0, "nothing recorded: {row}");
    let logged = events(&app, "&status=rejected").await;
    assert_eq!(logged.len(), 4, "{logged:?}");
    for e in &logged {
        assert_eq!(e["status"], "rejected");
        assert_eq!(e["network"], "cake");
        assert!(e["reason"].as_str().is_some_and(|r| r.contains("key")), "{e}");
        assert!(e["conversion_id"].is_null(), "{e}");
    }
    assert!(logged[1]["query"].as_str().is_some_and(|q| q.contains(&format!("s2={id}"))), "{}", logged[1]);
    // The right key still works afterwards.
    assert_ok(&app.postback(&format!("s2={id}&tid=T1&price=7")).await);
    app.stop().await;
}

async fn bad_price_is_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    for (price, why) in [
        ("abc", "decimal"),
        ("-5", "negative"),
        ("7,50", "decimal"),
        ("1e3", "decimal"),
        ("1.1234567", "6 decimal"),
        ("10000000000000", "large"),
    ] {
        let answer = app.postback(&format!("s2={id}&tid=T1&price={price}")).await;
        assert_rejected(&answer, StatusCode::BAD_REQUEST, why);
        assert!(
            answer.1["reason"].as_str().is_some_and(|r| r.contains("price")),
            "the reason names the field: {}",
            answer.1
        );
    }
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 0, "{row}");
    assert!(conversions(&app).await.is_empty());
    let logged = events(&app, "&status=rejected").await;
    assert_eq!(logged.len(), 6);
    assert!(logged[1]["query"].as_str().is_some_and(|q| q.contains("price=1.1234567")), "{}", logged[1]);
    // The click is not spent by a rejected postback.
    assert_ok(&app.postback(&format!("s2={id}&tid=T1&price=7.5")).await);
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "7.50");
    app.stop().await;
}

async fn event_precedence(backend: Backend) {
    let app = spawn_app(backend).await;
    // (link, postback fields, expected event)
    let cases = [
        ("demo", "&event=Signup&price=7", "Signup"),
        ("cpl", "&EVENT=Signup&price=7", "Signup"),
        ("cpl", "&price=12", "Lead"),
        ("demo", "&price=0", "Lead"),
        ("demo", "&price=0.00", "Lead"),
        ("demo", "", "Lead"),
        ("demo", "&price=%23price%23", "Lead"),
        ("demo", "&price=3", "Purchase"),
        ("demo", "&price=0.000001", "Purchase"),
    ];
    let mut ids = Vec::new();
    for (slug, fields, _) in cases {
        let id = app.click(slug).await;
        ids.push(assert_ok(&app.postback(&format!("s2={id}{fields}")).await));
    }
    let list = conversions(&app).await;
    assert_eq!(list.len(), cases.len());
    for ((slug, fields, event), id) in cases.iter().zip(&ids) {
        let c = conversion(&list, id);
        assert_eq!(c["event"], *event, "{slug} {fields}: {c}");
        assert_eq!(c["link"], format!("cake/{slug}"));
    }

    let demo = app.stats_for("cake/demo").await;
    assert_eq!(count(&demo, "conversions"), 7, "{demo}");
    assert_eq!(count(&demo, "leads"), 4, "{demo}");
    assert_eq!(count(&demo, "purchases"), 2, "{demo}");
    assert_eq!(demo["revenue"], "10.000001", "{demo}");
    let cpl = app.stats_for("cake/cpl").await;
    assert_eq!(count(&cpl, "conversions"), 2, "{cpl}");
    assert_eq!(count(&cpl, "leads"), 1, "{cpl}");
    assert_eq!(count(&cpl, "purchases"), 0, "{cpl}");
    assert_eq!(cpl["revenue"], "19.00", "{cpl}");
    app.stop().await;
}

async fn the_event_is_part_of_the_dedup_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let lead = assert_ok(&app.postback(&format!("s2={id}&tid=T1&event=Lead")).await);
    let sale = assert_ok(&app.postback(&format!("s2={id}&tid=T1&event=Sale&price=20")).await);
    assert_ne!(lead, sale, "(click, tid, event) is the key");
    let (_, again) = app.postback(&format!("s2={id}&tid=T1&event=Sale&price=20")).await;
    assert_eq!(again["status"], "duplicate");
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 2, "{row}");
    assert_eq!(row["revenue"], "20.00", "{row}");
    app.stop().await;
}

async fn a_network_event_field_names_the_event(backend: Backend) {
    let extra = r#"
[networks.ef]
subid = "sub1"
event_field = "Goal"
transaction_field = "transaction_id"
value_field = "amount"

[[links]]
network = "ef"
slug = "e1"
offer = "https://ef.example.com/?oid=1"
"#;
    let app = spawn_app_with(backend, "", extra).await;
    let collect = |query: String| format!("/collect/ef/{POSTBACK_KEY}?{query}");
    let mut ids = Vec::new();
    for (fields, event) in [
        ("&goal=Install&amount=2", "Install"),
        ("&GOAL=Install&event=Signup&amount=2", "Install"),
        ("&goal=%7Bgoal%7D&event=Signup", "Signup"),
        ("&amount=2", "Purchase"),
    ] {
        let res = app.get("/go/ef/e1").await;
        assert_eq!(res.status(), StatusCode::FOUND);
        let id = click_id_in(&res, "sub1");
        let res = app.get_as(&collect(format!("sub1={id}{fields}")), None).await;
        let status = res.status();
        let body: Value = res.json().await.expect("JSON");
        ids.push((assert_ok(&(status, body)), fields, event));
    }
    let list = conversions(&app).await;
    for (id, fields, event) in &ids {
        assert_eq!(conversion(&list, id)["event"], *event, "{fields}");
    }
    let row = app.stats_for("ef/e1").await;
    assert_eq!(count(&row, "conversions"), 4, "{row}");
    assert_eq!(count(&row, "purchases"), 1, "{row}");
    assert_eq!(row["revenue"], "6.00", "{row}");
    app.stop().await;
}

async fn form_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = POSTBACK_KEY;
    let a = app.click("demo").await;
    let answer = post(
        &app,
        &format!("/collect/cake/{key}"),
        "application/x-www-form-urlencoded",
        format!("s2={a}&tid=F1&price=4.5&oid=77"),
    )
    .await;
    let first = assert_ok(&answer);

    // The query adds what the body lacks.
    let b = app.click("demo").await;
    let answer = post(
        &app,
        &format!("/collect/cake/{key}?s2={b}"),
        "application/x-www-form-urlencoded",
        "tid=F2&price=3".into(),
    )
    .await;
    let second = assert_ok(&answer);

    let list = conversions(&app).await;
    let c = conversion(&list, &first);
    assert_eq!(c["click_id"], a.as_str());
    assert_eq!(c["value"], "4.50");
    assert_eq!(c["transaction_id"], "F1");
    assert_eq!(c["item_id"], "77");
    assert_eq!(c["event"], "Purchase");
    let c = conversion(&list, &second);
    assert_eq!(c["click_id"], b.as_str());
    assert_eq!(c["value"], "3.00");
    assert_eq!(c["transaction_id"], "F2");
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "7.50");
    app.stop().await;
}

async fn json_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let path = format!("/collect/cake/{POSTBACK_KEY}");
    let id = app.click("demo").await;
    // Numbers as numbers, nulls for what CAKE had no value for.
    let body = format!(r##"{{"s2":"{id}","tid":null,"price":12.5,"oid":77,"s3":null,"s4":"","cid":"#cid#"}}"##);
    let first = assert_ok(&post(&app, &path, "application/json", body.clone()).await);
    let (_, again) = post(&app, &path, "application/json; charset=utf-8", body).await;
    assert_eq!(again["status"], "duplicate", "no tid: an exact repeat is a duplicate: {again}");
    assert_eq!(again["conversion_id"], first);

    // Case-insensitive names in JSON too; a decimal number keeps its exact value.
    let other = app.click("demo").await;
    let body = json!({"S2": other, "TID": "J2", "Price": 0.1}).to_string();
    let second = assert_ok(&post(&app, &path, "application/json", body).await);

    let list = conversions(&app).await;
    let c = conversion(&list, &first);
    assert_eq!(c["value"], "12.50");
    assert_eq!(c["item_id"], "77");
    assert!(c["transaction_id"].is_null(), "{c}");
    let c = conversion(&list, &second);
    assert_eq!(c["value"], "0.10");
    assert_eq!(c["transaction_id"], "J2");
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "12.60");

    // A JSON number is read as its exact text, never through a float.
    let big = app.click("demo").await;
    let body = format!(r#"{{"s2":"{big}","tid":"J3","price":1234567890123.456789}}"#);
    let third = assert_ok(&post(&app, &path, "application/json", body).await);
    assert_eq!(conversion(&conversions(&app).await, &third)["value"], "1234567890123.456789");
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "1234567890136.056789");

    // A body that is not JSON, or not an object, is a bad field value.
    for bad in ["{", "[1,2]", "\"s2\""] {
        let (status, body) = post(&app, &path, "application/json", bad.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["status"], "rejected");
    }
    // A JSON price that is too precise is refused like a query one.
    let fourth = app.click("demo").await;
    let (status, body) =
        post(&app, &path, "application/json", format!(r#"{{"s2":"{fourth}","price":12.3456789}}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["status"], "rejected");
    app.stop().await;
}

async fn names_are_case_insensitive(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let first = assert_ok(&app.postback(&format!("S2={id}&TID=X1&PRICE=2&Oid=9")).await);
    let (_, again) = app.postback(&format!("s2={id}&tid=X1&price=2&oid=9")).await;
    assert_eq!(again["status"], "duplicate", "{again}");
    let list = conversions(&app).await;
    let c = conversion(&list, &first);
    assert_eq!(c["value"], "2.00");
    assert_eq!(c["transaction_id"], "X1");
    assert_eq!(c["item_id"], "9");
    app.stop().await;
}

async fn empty_null_and_unreplaced_tokens_are_absent(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    // The standard postback URL with most tokens unreplaced, as CAKE fires it.
    let query = format!(
        "s1=%23s1%23&s2={id}&s3=null&s4=&s5=%23s5%23&oid=%23oid%23&affid=%23affid%23&campid=&cid=NULL&tid=%23tid%23&price=5"
    );
    let first = assert_ok(&app.postback(&query).await);
    let list = conversions(&app).await;
    let c = conversion(&list, &first);
    assert!(c["transaction_id"].is_null(), "#tid# is no tid: {c}");
    assert!(c["item_id"].is_null(), "#oid# is no item: {c}");
    assert_eq!(c["value"], "5.00");

    // No tid: the same fields again are a duplicate, whichever way they say "absent".
    let (_, again) = app.postback(&format!("s2={id}&tid=&s3=%23s3%23&price=5")).await;
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["conversion_id"], first);
    let (_, again) = app.postback(&format!("s2={id}&tid=null&price=5")).await;
    assert_eq!(again["status"], "duplicate", "{again}");
    // A real value in an otherwise absent field is a different postback.
    assert_ok(&app.postback(&format!("s2={id}&s3=abc&price=5")).await);
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "conversions"), 2, "{row}");
    assert_eq!(row["revenue"], "10.00", "{row}");
    app.stop().await;
}

async fn revenue_is_exact_decimal(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let mut expected = Vec::new();
    for (price, shown) in [("0.1", "0.10"), ("0.2", "0.20")] {
        expected.push((assert_ok(&app.postback(&format!("s2={id}&price={price}")).await), shown));
    }
    assert_eq!(
        app.stats_for("cake/demo").await["revenue"],
        "0.30",
        "0.1 + 0.2 is 0.30, not a float's 0.30000000000000004"
    );

    for (price, shown) in [
        ("12.345678", "12.345678"),
        ("123456789.123456", "123456789.123456"),
        // 19 significant digits: a float would make it 1234567890123.4568.
        ("1234567890123.456789", "1234567890123.456789"),
        ("%2B7.000000", "7.00"),
        ("0007.5", "7.50"),
    ] {
        expected.push((assert_ok(&app.postback(&format!("s2={id}&price={price}")).await), shown));
    }
    // 0.30 + 12.345678 + 123456789.123456 + 1234567890123.456789 + 7.00 + 7.50
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "1234691346939.725923");
    let list = conversions(&app).await;
    for (conversion_id, shown) in &expected {
        assert_eq!(conversion(&list, conversion_id)["value"], *shown);
    }

    let answer = app.postback(&format!("s2={id}&price=0.1234567")).await;
    assert_rejected(&answer, StatusCode::BAD_REQUEST, "decimal");
    assert_eq!(app.stats_for("cake/demo").await["revenue"], "1234691346939.725923", "a rejected postback adds nothing");
    app.stop().await;
}

async fn capped_event_log(backend: Backend) {
    let app = spawn_app_with(backend, "event_log_max = 5", "").await;
    for n in 0..8 {
        let (status, body) = app.postback(&format!("s2=abc&n={n}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let logged = events(&app, "").await;
    assert_eq!(logged.len(), 5, "oldest dropped first: {logged:?}");
    let order: Vec<&str> = logged.iter().map(|e| e["query"].as_str().expect("query")).collect();
    for (entry, n) in order.iter().zip([7, 6, 5, 4, 3]) {
        assert!(entry.contains(&format!("n={n}")), "newest first: {order:?}");
    }
    // The cap holds under the filter too, and keeps holding.
    assert_eq!(events(&app, "&status=no_match").await.len(), 5);
    let id = app.click("demo").await;
    assert_ok(&app.postback(&format!("s2={id}&n=8")).await);
    let logged = events(&app, "").await;
    assert_eq!(logged.len(), 5);
    assert_eq!(logged[0]["status"], "ok");
    assert!(logged[4]["query"].as_str().is_some_and(|q| q.contains("n=4")), "{}", logged[4]);
    app.stop().await;
}

async fn event_log_redacts_the_key_and_keeps_the_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let conversion_id = assert_ok(&app.postback(&format!("s2={id}&tid=T1&price=7&s3=%23s3%23")).await);
    let event = app.last_event().await;
    let query = event["query"].as_str().expect("query");
    assert!(query.contains(&format!("s2={id}")), "{query}");
    assert!(query.contains("tid=T1") && query.contains("price=7"), "{query}");
    assert!(!query.contains(POSTBACK_KEY), "{query}");
    assert_eq!(event["network"], "cake");
    assert_eq!(event["status"], "ok");
    assert_eq!(event["click_id"], id.as_str());
    assert_eq!(event["conversion_id"], conversion_id);
    assert!(event["reason"].as_str().is_some_and(|r| !r.is_empty()), "{event}");
    let received = event["received_at"].as_str().expect("received_at");
    time::OffsetDateTime::parse(received, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 received_at");

    // A key pasted into the fields is redacted too.
    let (_, body) = app.postback(&format!("s2={id}&tid=T2&key={POSTBACK_KEY}&token=hunter2")).await;
    assert_eq!(body["status"], "ok");
    let query = app.last_event().await["query"].as_str().expect("query").to_owned();
    assert!(query.contains(&format!("s2={id}")), "{query}");
    assert!(!query.contains(POSTBACK_KEY) && !query.contains("hunter2"), "{query}");
    assert!(query.contains("key=") && query.contains("redacted"), "{query}");
    // Nor does any entry anywhere in the log carry the key.
    for e in events(&app, "").await {
        assert!(!e.to_string().contains(POSTBACK_KEY), "{e}");
    }
    app.stop().await;
}

async fn tune_network(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/go/tune/t1?aff_sub2=camp9").await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let id = click_id_in(&res, "aff_sub");

    let res = app.get_as(&format!("/collect/tune/{POSTBACK_KEY}?aff_sub={id}&transaction_id=X&payout=3.5"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("JSON");
    let conversion_id = assert_ok(&(StatusCode::OK, body));

    let list = conversions(&app).await;
    let c = conversion(&list, &conversion_id);
    assert_eq!(c["currency"], "EUR", "{c}");
    assert_eq!(c["network"], "tune");
    assert_eq!(c["link"], "tune/t1");
    assert_eq!(c["value"], "3.50");
    assert_eq!(c["transaction_id"], "X");
    assert_eq!(c["event"], "Purchase");
    let row = app.stats_for("tune/t1").await;
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    assert_eq!(row["revenue"], "3.50", "{row}");

    // TUNE's own unreplaced macro means absent; cake's field names mean nothing here.
    let res = app.get_as(&format!("/collect/tune/{POSTBACK_KEY}?aff_sub=%7Baff_sub%7D&payout=1"), None).await;
    let body: Value = res.json().await.expect("JSON");
    assert_no_match(&(StatusCode::OK, body), "unreplaced");
    let res = app.get_as(&format!("/collect/tune/{POSTBACK_KEY}?s2={id}&payout=1"), None).await;
    let body: Value = res.json().await.expect("JSON");
    assert_no_match(&(StatusCode::OK, body), "missing_click_id");
    assert_eq!(app.last_event().await["network"], "tune");
    app.stop().await;
}

async fn unknown_network_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.click("demo").await;
    let res = app.get_as(&format!("/collect/nope/{POSTBACK_KEY}?s2={id}&price=7"), None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .client
        .post(format!("{}/collect/nope/{POSTBACK_KEY}", app.base))
        .body(format!("s2={id}&price=7"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(count(&app.stats_for("cake/demo").await, "conversions"), 0);
    app.stop().await;
}

async fn a_bot_flagged_click_still_converts(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get_as("/go/cake/demo", Some(SLACKBOT)).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let id = click_id_in(&res, "s2");
    let conversion_id = assert_ok(&app.postback(&format!("s2={id}&tid=B1&price=2")).await);
    let row = app.stats_for("cake/demo").await;
    assert_eq!(count(&row, "clicks"), 0, "{row}");
    assert_eq!(count(&row, "bot_hits"), 1, "{row}");
    assert_eq!(count(&row, "conversions"), 1, "{row}");
    let list = conversions(&app).await;
    assert!(conversion(&list, &conversion_id)["bot"].is_string(), "the conversion shows the click was flagged");
    app.stop().await;
}

on_both_stores!(
    ok_records_a_conversion,
    duplicate_with_tid_changes_nothing,
    duplicate_without_tid_is_an_exact_repeat,
    same_tid_on_another_click_is_a_new_conversion,
    no_match_names_each_reason,
    a_previous_secret_still_verifies,
    a_rotated_secret_resolves_clicks_stored_before,
    wrong_key_is_rejected_and_logged,
    bad_price_is_rejected,
    event_precedence,
    the_event_is_part_of_the_dedup_key,
    a_network_event_field_names_the_event,
    form_body,
    json_body,
    names_are_case_insensitive,
    empty_null_and_unreplaced_tokens_are_absent,
    revenue_is_exact_decimal,
    capped_event_log,
    event_log_redacts_the_key_and_keeps_the_fields,
    tune_network,
    unknown_network_is_404,
    a_bot_flagged_click_still_converts,
);
