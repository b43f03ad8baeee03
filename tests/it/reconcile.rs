//! Reconciling with CAKE: its conversion report (a CSV as the affiliate portal exports it,
//! or its affiliate API) against a real server over both stores, with each reason for a
//! missing conversion produced by its real cause.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cakelink::clickid::Keyring;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::helpers::{self, spawn_app, spawn_app_with, Backend, TestApp, ADMIN_TOKEN, SECRET};
use crate::on_both_stores;

const DAY: u64 = 86_400;
/// The test config's click lifetime: attribution_days 30 + postback_grace_days 7.
const LIFETIME: u64 = 37 * DAY;
/// The header row of CAKE's affiliate conversion report, as the portal exports it.
const CAKE_HEADER: &str =
    "Conversion ID,Conversion Date,Offer ID,Offer Name,Sub ID 1,Sub ID 2,Sub ID 3,Transaction ID,Price,Disposition";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Now as CAKE's portal writes it: `MM/DD/YYYY h:mm:ss AM`, in UTC.
fn cake_time(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).expect("time");
    let (h, pm) = match t.hour() {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!("{:02}/{:02}/{} {h}:{:02}:{:02} {pm}", t.month() as u8, t.day(), t.year(), t.minute(), t.second())
}

/// A CAKE report with one line per `(click id, transaction id, price, disposition)`.
fn cake_csv(rows: &[(&str, &str, &str, &str)]) -> String {
    let when = cake_time(now_secs());
    let mut out = format!("{CAKE_HEADER}\r\n");
    for (n, (click, tid, price, disposition)) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{},{when},761,\"Summer Promo, US\",yes,{click},,{tid},\"${price}\",{disposition}\r\n",
            9000 + n
        ));
    }
    out
}

/// `POST /api/reconcile` for today with `extra` query; the status and the body.
async fn reconcile(app: &TestApp, extra: &str, csv: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let today = helpers::today();
    let res = app
        .client
        .post(format!("{}/api/reconcile?network=cake&from={today}&to={today}{extra}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.text().await.expect("body"))
}

async fn report(app: &TestApp, csv: &str) -> Value {
    let (status, _, body) = reconcile(app, "", csv).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("JSON report")
}

fn reason_of(report: &Value, click: &str) -> String {
    report["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .find(|m| m["click_id"] == click)
        .unwrap_or_else(|| panic!("{click} not missing in {report:#}"))["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

fn keyring() -> Keyring {
    Keyring::new(SECRET, &[], LIFETIME)
}

/// A click id with a genuine tag that no click was stored under.
fn unstored_id() -> String {
    keyring().mint(now_secs()).to_string()
}

/// Every reason, each by its cause; matched, extra and amount mismatch beside them; the
/// report's exact keys and totals.
async fn every_reason_by_its_cause(backend: Backend) {
    let app = spawn_app(backend).await;
    let matched = app.click("demo").await;
    let short_paid = app.click("demo").await;
    let only_here = app.click("demo").await;
    let rejected = app.click("demo").await;
    let silent = app.click("demo").await;
    for (click, tid, price) in
        [(&matched, "t-ok", "7.00"), (&short_paid, "t-short", "5.00"), (&only_here, "t-extra", "3.00")]
    {
        let (status, answer) = app.postback(&format!("s2={click}&tid={tid}&price={price}")).await;
        assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("ok")));
    }
    // A bad price is refused with a 400, before the click id is looked at.
    let (status, _) = app.postback(&format!("s2={rejected}&tid=t-rej&price=seven")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A genuine id whose click was never stored here: its postback matched nothing.
    let never_stored = unstored_id();
    let (_, answer) = app.postback(&format!("s2={never_stored}&tid=t-nm&price=7.00")).await;
    assert_eq!(answer["status"], "no_match");
    // Minted long ago: the conversion comes after attribution_days + postback_grace_days.
    let expired = keyring().mint(now_secs() - LIFETIME - 2 * DAY).to_string();
    let forged = {
        let mut id = matched.clone().into_bytes();
        let last = id.len() - 1;
        id[last] = if id[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(id).expect("ascii")
    };
    let unknown = unstored_id();

    let csv = cake_csv(&[
        (&matched, "t-ok", "7.00", "Approved"),
        (&short_paid, "t-short", "7.00", "Approved"),
        ("", "t-none", "7.00", "Approved"),
        (&forged, "t-forged", "7.00", "Approved"),
        (&expired, "t-old", "7.00", "Approved"),
        (&unknown, "t-unknown", "7.00", "Pending"),
        (&rejected, "t-rej", "7.00", "Approved"),
        (&never_stored, "t-nm", "7.00", "Approved"),
        (&silent, "t-silent", "7.00", ""),
    ]);
    let r = report(&app, &csv).await;
    let today = helpers::today();
    assert_eq!(r["network"], "cake");
    assert_eq!((r["from"].as_str(), r["to"].as_str()), (Some(today.as_str()), Some(today.as_str())));
    assert_eq!(
        r["totals"],
        json!({"network": 9, "cakelink": 3, "matched": 2, "missing": 7, "extra": 1, "amount_mismatch": 1, "gap_pct": "77.78"})
    );
    let missing_row =
        r["missing"].as_array().expect("missing").iter().find(|m| m["transaction_id"] == "t-none").cloned();
    assert_eq!(missing_row.expect("the row without click id")["reason"], "click_id_missing");
    assert_eq!(reason_of(&r, &forged), "click_id_forged");
    assert_eq!(reason_of(&r, &expired), "click_id_expired");
    assert_eq!(reason_of(&r, &unknown), "click_unknown");
    assert_eq!(reason_of(&r, &rejected), "postback_rejected");
    assert_eq!(reason_of(&r, &never_stored), "postback_no_match");
    assert_eq!(reason_of(&r, &silent), "no_postback");
    let silent_row =
        r["missing"].as_array().expect("missing").iter().find(|m| m["click_id"] == silent.as_str()).cloned();
    let silent_row = silent_row.expect("silent row");
    let mut keys: Vec<&str> = silent_row.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["click_id", "converted_at", "offer", "price", "reason", "transaction_id"]);
    assert_eq!((silent_row["price"].as_str(), silent_row["offer"].as_str()), (Some("7.00"), Some("761")));

    let extra = &r["extra"][0];
    assert_eq!(
        (extra["click_id"].as_str(), extra["transaction_id"].as_str()),
        (Some(only_here.as_str()), Some("t-extra"))
    );
    assert_eq!(extra["revenue"], "3.00");
    assert_eq!(r["extra"].as_array().map(Vec::len), Some(1));
    let mismatch = &r["amount_mismatch"][0];
    assert_eq!(mismatch["click_id"], short_paid.as_str());
    assert_eq!(
        (mismatch["network_price"].as_str(), mismatch["cakelink_revenue"].as_str()),
        (Some("7.00"), Some("5.00"))
    );
    assert_eq!(r["by_day"], json!([{"day": today, "network": 9, "cakelink": 3, "missing": 7, "extra": 1}]));

    // The table and CSV carry the same rows.
    let (status, _, table) = reconcile(&app, "&format=table", &csv).await;
    assert_eq!(status, StatusCode::OK);
    assert!(table.contains("77.78%") && table.contains("no_postback") && table.contains("click_id_forged"), "{table}");
    let (status, _, csv_out) = reconcile(&app, "&format=csv", &csv).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv_out.lines().filter(|l| l.starts_with("missing,")).count(), 7, "{csv_out}");
    assert_eq!(csv_out.lines().filter(|l| l.starts_with("extra,")).count(), 1);
    assert_eq!(csv_out.lines().filter(|l| l.starts_with("amount_mismatch,")).count(), 1);
    app.stop().await;
}

/// `--ingest` records each missing conversion whose click is stored, through the postback
/// path (logged `ok`, reason `reconciled`, counted in the figures); a second run changes
/// nothing.
async fn ingest_records_the_missing_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let silent = app.click("demo").await;
    let also_silent = app.click("cpl").await;
    let unknown = unstored_id();
    let csv = cake_csv(&[
        (&silent, "t-1", "12.50", "Approved"),
        (&also_silent, "", "0.00", ""),
        (&unknown, "t-3", "7.00", ""),
    ]);
    let before = app.stats_for("cake/demo").await;
    assert_eq!(helpers::count(&before, "conversions"), 0);

    let (status, headers, body) = reconcile(&app, "&ingest=true", &csv).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-cakelink-ingested"], "recorded=2 reversed=0 unchanged=0");
    let r: Value = serde_json::from_str(&body).expect("JSON");
    // The report says what was wrong before the ingest.
    assert_eq!(r["totals"]["missing"], 3);

    let demo = app.stats_for("cake/demo").await;
    assert_eq!((helpers::count(&demo, "conversions"), helpers::count(&demo, "purchases")), (1, 1));
    assert_eq!(demo["revenue"], "12.50");
    assert_eq!(helpers::count(&app.stats_for("cake/cpl").await, "leads"), 1);
    let events = app.api("events?status=ok&limit=10").await["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["reason"] == "reconciled"), "{events:#?}");
    assert!(events.iter().any(|e| e["click_id"] == silent.as_str()));

    let after = report(&app, &csv).await;
    assert_eq!(after["totals"]["matched"], 2);
    assert_eq!(after["totals"]["missing"], 1);
    assert_eq!(reason_of(&after, &unknown), "click_unknown");

    let (status, headers, _) = reconcile(&app, "&ingest=true", &csv).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cakelink-ingested"], "recorded=0 reversed=0 unchanged=0");
    let again = app.stats_for("cake/demo").await;
    assert_eq!(helpers::count(&again, "conversions"), 1);
    assert_eq!(app.api("events?status=ok&limit=10").await["events"].as_array().map(Vec::len), Some(2));
    app.stop().await;
}

/// A report without the columns reconciling needs is refused, naming what was looked for;
/// a bad value names its line.
async fn a_report_without_the_columns_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _, body) = reconcile(&app, "", "Offer ID,Amount,Date\n761,7.00,2026-11-24\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_str(&body).expect("JSON error");
    let message = error["error"].as_str().expect("message");
    for expected in ["click id", "Sub ID 2", "subid_2", "s2", "price", "Price", "conversion date", "Conversion Date"] {
        assert!(message.contains(expected), "{message}");
    }
    let (status, _, body) = reconcile(&app, "", "Sub ID 2,Price,Conversion Date\nabc,7.00,not a date\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("line 2") && body.contains("not a date"), "{body}");
    let (status, _, _) = reconcile(&app, "&format=xml", "s2,price,conversion_date\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let res =
        app.client.post(format!("{}/api/reconcile?from=2026-11-01&to=2026-11-30", app.base)).body("x").send().await;
    assert_eq!(res.expect("request").status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// Another network maps its own headers under `[networks.NAME.reconcile]`.
async fn other_networks_map_their_headers(backend: Backend) {
    let extra = "\n[networks.tune.reconcile]\nclick_id = \"Affiliate Sub\"\nprice = [\"Payout (EUR)\"]\nconverted_at = \"Datetime\"\ntransaction_id = \"Conversion\"\n";
    let app = spawn_app_with(backend, "", extra).await;
    let res = app.get("/go/tune/t1").await;
    let click = helpers::click_id_in(&res, "aff_sub");
    let today = helpers::today();
    let csv = format!("Datetime,Affiliate Sub,Conversion,Payout (EUR)\n{today} 10:00:00,{click},c-1,4.20\n");
    let res = app
        .client
        .post(format!("{}/api/reconcile?network=tune&from={today}&to={today}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(csv)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    let r: Value = res.json().await.expect("JSON");
    assert_eq!(r["network"], "tune");
    assert_eq!(reason_of(&r, &click), "no_postback");
    app.stop().await;
}

on_both_stores!(
    every_reason_by_its_cause,
    ingest_records_the_missing_once,
    a_report_without_the_columns_is_refused,
    other_networks_map_their_headers,
);

/// A postback kept in the outage spool is `postback_queued`: Redis refusing writes (too
/// few replicas) while it still answers reads is an outage the spool takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postback_waiting_in_the_spool_is_postback_queued() {
    let app = spawn_app(Backend::Redis).await;
    let click = app.click("demo").await;
    let redis = app.store.redis.as_ref().expect("redis");
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut con = client.get_multiplexed_async_connection().await.expect("redis connection");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("1")
        .query_async(&mut con)
        .await
        .expect("config");
    let (status, answer) = app.postback(&format!("s2={click}&tid=t-q&price=7.00")).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")));
    let r = report(&app, &cake_csv(&[(&click, "t-q", "7.00", "")])).await;
    assert_eq!(reason_of(&r, &click), "postback_queued");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("0")
        .query_async(&mut con)
        .await
        .expect("config");
    app.stop().await;
}

/// A stand-in for CAKE's affiliate API: the conversions report in pages of `row_limit`
/// from `start_at_row`, answered the way its JSON web services answer.
struct CakeApi {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl CakeApi {
    async fn start(conversions: Vec<Value>) -> CakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, all) = (requests.clone(), Arc::new(conversions));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, all) = (seen.clone(), all.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, all) = (seen.clone(), all.clone());
                        async move {
                            let ok_path = req.uri().path() == "/affiliates/api/4/reports.asmx/Conversions";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let params: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            seen.lock().expect("lock").push(params.clone());
                            let answer = if !ok_path || params["api_key"] != "cake-key" {
                                json!({"d": {"success": false, "message": "Invalid API Key"}})
                            } else {
                                let start = params["start_at_row"].as_u64().unwrap_or(1).max(1) as usize - 1;
                                let limit = params["row_limit"].as_u64().unwrap_or(100) as usize;
                                let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
                                json!({"d": {"success": true, "row_count": all.len(), "conversions": page}})
                            };
                            let mut res = hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                            res.headers_mut().insert("content-type", "application/json".parse().expect("header"));
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        CakeApi { url: format!("http://{addr}"), requests }
    }
}

/// `source=api` reads CAKE's affiliate API page by page (here 3 pages of 2) and reconciles
/// what it returns like a file.
async fn the_affiliate_api_is_read_page_by_page(backend: Backend) {
    let mut clicks = Vec::new();
    let app0 = spawn_app(backend).await;
    drop(app0);
    let mut conversions = Vec::new();
    // The app is started after the stand-in, which needs the clicks: mint ids that verify.
    for n in 0..5 {
        let id = unstored_id();
        conversions.push(json!({
            "conversion_id": 5000 + n,
            "conversion_date": format!("/Date({})/", now_secs() * 1000),
            "offer_id": 761,
            "subid_1": "yes",
            "subid_2": id,
            "transaction_id": format!("api-{n}"),
            "price": 7.25,
            "disposition": null,
        }));
        clicks.push(id);
    }
    let cake = CakeApi::start(conversions).await;
    let extra = format!(
        "\n[networks.cake.api]\nbase_url = \"{}\"\naffiliate_id = \"4242\"\napi_key = \"cake-key\"\npage_size = 2\n",
        cake.url
    );
    let app = spawn_app_with(backend, "", &extra).await;
    let today = helpers::today();
    let res = app
        .client
        .post(format!("{}/api/reconcile?network=cake&from={today}&to={today}&source=api", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::OK);
    let r: Value = res.json().await.expect("JSON");
    assert_eq!(r["totals"]["network"], 5);
    for id in &clicks {
        assert_eq!(reason_of(&r, id), "click_unknown");
    }
    let requests = cake.requests.lock().expect("lock").clone();
    let starts: Vec<u64> = requests.iter().map(|p| p["start_at_row"].as_u64().expect("start_at_row")).collect();
    assert_eq!(starts, [1, 3, 5], "three pages of two");
    assert!(requests.iter().all(|p| p["affiliate_id"] == "4242" && p["row_limit"] == 2));
    let tomorrow = time::OffsetDateTime::now_utc().date().next_day().expect("tomorrow");
    assert_eq!(requests[0]["start_date"], today.as_str());
    assert_eq!(requests[0]["end_date"], tomorrow.to_string(), "CAKE's end date is exclusive");
    app.stop().await;

    // A refused key is the network's answer, passed on.
    let wrong = extra.replace("cake-key", "wrong-key");
    let app = spawn_app_with(backend, "", &wrong).await;
    let res = app
        .client
        .post(format!("{}/api/reconcile?from={today}&to={today}&source=api", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(res.text().await.expect("body").contains("Invalid API Key"));
    app.stop().await;
}

on_both_stores!(the_affiliate_api_is_read_page_by_page);

/// `cakelink reconcile` posts the file to the running server and prints the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_report() {
    let app = spawn_app(Backend::Embedded).await;
    let click = app.click("demo").await;
    let dir = tempfile::tempdir().expect("dir");
    let report_file = dir.path().join("cake.csv");
    std::fs::write(&report_file, cake_csv(&[(&click, "t-cli", "9.00", "")])).expect("write");
    let config_file = dir.path().join("cakelink.toml");
    let text = helpers::config_text("127.0.0.1:0", &app.store.toml, "", "");
    std::fs::write(&config_file, text).expect("write config");
    let today = helpers::today();
    let run = |format: &'static str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cakelink"));
        command.args(["reconcile", "--config"]).arg(&config_file);
        command.args(["--from", &today, "--to", &today, "--format", format, "--url", &app.base, "--file"]);
        command.arg(&report_file).env_remove("CAKELINK_ADMIN_TOKEN").env_remove("CAKELINK_CONFIG");
        command.output().expect("cakelink runs")
    };
    let out = tokio::task::block_in_place(|| run("json"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(reason_of(&r, &click), "no_postback");
    let out = tokio::task::block_in_place(|| run("table"));
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Missing: the network has them") && table.contains("no_postback"), "{table}");
    app.stop().await;
}
