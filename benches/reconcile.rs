//! Reconciling with CAKE: its conversion report for 30 days, 100,000 rows, against a
//! million stored clicks, end to end over 127.0.0.1 (upload, CSV read, matching, the
//! click lookups that explain the missing rows, the JSON answer). The target is under
//! 10 s.
//!
//! `cargo bench --bench reconcile` stores 1,000,000 clicks over the last 30 days and 20
//! links on the embedded store, in time order, then 90,000 conversions of some of those
//! clicks (with an `ok` postback in the event log for each, as the postback path leaves
//! them). The report is built as CAKE's portal exports it (`MM/DD/YYYY h:mm:ss AM`,
//! `"$7.00"`), in blocks of 100 rows: 88 rows of recorded conversions (2 of them with
//! another price), 7 of stored clicks without a conversion, 2 of genuine ids never
//! stored, 1 forged id, 1 without a click id and 1 id past its lifetime; 2 recorded
//! conversions of each block are left out of the report. It then times five
//! `POST /api/reconcile` requests, one `format=table`, and the parts in-process (reading
//! the CSV, reconciling, writing the JSON). Run as a test (`cargo test --all-targets`),
//! it stores 2,000 clicks and reconciles 200 rows, to keep the bench working without
//! making the suite wait.

use std::time::{Duration, Instant};

use cakelink::app::Application;
use cakelink::clickid::Keyring;
use cakelink::model::{Click, Conversion, Event, EventStatus, PURCHASE};
use cakelink::money::Money;
use cakelink::reconcile::{self, input, Sources};
use cakelink::reports::Period;
use serde_json::{json, Value};

#[path = "support/clicks.rs"]
mod clicks;

const SECRET: &str = "bench-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const LINKS: u64 = 20;
const DAYS: i64 = 30;
const DAY: i64 = 86_400;
/// attribution_days 30 + postback_grace_days 7, the defaults.
const LIFETIME: i64 = 37 * DAY;
/// Every tenth click, from the fourth, may convert; the report is built around those.
const STRIDE: u64 = 10;
/// The header of CAKE's affiliate conversion report, as the portal exports it.
const HEADER: &str =
    "Conversion ID,Conversion Date,Offer ID,Offer Name,Sub ID 1,Sub ID 2,Sub ID 3,Transaction ID,Price,Disposition";

/// What one position in a block of 100 candidate clicks becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Recorded here and in the report.
    Matched,
    /// Recorded here and in the report at another price.
    Mismatch,
    /// Recorded here, left out of the report.
    Extra,
    /// Stored click, no conversion here, in the report.
    NoPostback,
    /// Nothing.
    None,
}

fn role(k: u64) -> Role {
    match k % 100 {
        0 | 44 => Role::Mismatch,
        0..88 => Role::Matched,
        88..90 => Role::Extra,
        90..97 => Role::NoPostback,
        _ => Role::None,
    }
}

/// Rows of each block whose click is not a stored one: genuine never stored (2),
/// forged (1), none (1), expired (1); 5 of the 100 positions carry one each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stray {
    Unknown,
    Forged,
    Empty,
    Expired,
}

fn stray(k: u64) -> Option<Stray> {
    match k % 100 {
        3 | 53 => Some(Stray::Unknown),
        13 => Some(Stray::Forged),
        23 => Some(Stray::Empty),
        33 => Some(Stray::Expired),
        _ => None,
    }
}

/// The payout of each link's offer, one in the thousands (CAKE writes `$1,250.00`).
fn payout(link: u64) -> Money {
    let dollars = [7, 12, 35, 4, 1250, 18, 9, 60, 25, 3];
    Money::from_micros(dollars[(link % 10) as usize] * 1_000_000 + if link >= 10 { 500_000 } else { 0 })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (clicks, requests) = if full { (1_000_000u64, 5usize) } else { (2_000, 1) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(clicks, requests));
}

/// One line of the report.
struct Line {
    at: i64,
    click: String,
    tid: String,
    link: u64,
    price: Money,
    disposition: &'static str,
}

async fn run(clicks: u64, requests: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = clicks::config(dir.path(), SECRET, ADMIN_TOKEN, LINKS);
    let network = config.networks.get("cake").cloned().expect("cake is always configured");
    let (click_ttl, event_log_max) = (config.store.click_ttl(), config.store.event_log_max);
    let app = Application::build(config).await.expect("app");
    let addr = app.local_addr();
    let store = app.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Clicks with their real times over the last 30 days, in time order, many writes in
    // flight at once; the candidates for conversions are kept.
    let started = Instant::now();
    let keyring = Keyring::new(SECRET, &[], LIFETIME as u64);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let span = (DAYS * DAY - 120) as u64;
    let at_of = |n: u64| now - 60 - (span - n * span / clicks) as i64;
    let mut candidates: Vec<Click> = Vec::with_capacity((clicks / STRIDE) as usize);
    let mut written = 0u64;
    while written < clicks {
        let end = (written + clicks::IN_FLIGHT).min(clicks);
        let batch: Vec<Click> = (written..end).map(|n| clicks::click(&keyring, n, at_of(n), LINKS, None)).collect();
        clicks::record(&store, &batch).await;
        candidates.extend(batch.into_iter().enumerate().filter_map(|(i, c)| {
            let n = written + i as u64;
            (n % STRIDE == 3).then_some(c)
        }));
        written = end;
    }
    let seeding_clicks = started.elapsed();

    // The conversions, a few seconds after their clicks, each with its postback logged;
    // and the report's lines.
    let started = Instant::now();
    let mut lines: Vec<Line> = Vec::with_capacity(candidates.len());
    let mut recorded: Vec<(Conversion, Event)> = Vec::new();
    for (k, click) in candidates.iter().enumerate() {
        let k = k as u64;
        let n = k * STRIDE + 3;
        let link = n % LINKS;
        let converted = click.at / 1000 + (n % 50) as i64;
        let tid = format!("{:08X}-{k:06}", (n.wrapping_mul(2_654_435_761) >> 8) as u32);
        let price = payout(link);
        let r = role(k);
        if matches!(r, Role::Matched | Role::Mismatch | Role::Extra) {
            // A short payout for the mismatches: the network pays more than was posted back.
            let value = if r == Role::Mismatch { Money::from_micros(price.micros() / 2) } else { price };
            let fields: Vec<(String, String)> = vec![
                ("s2".into(), click.id.clone()),
                ("oid".into(), (700 + link).to_string()),
                ("tid".into(), tid.clone()),
                ("price".into(), value.to_string()),
            ];
            let id = Conversion::derive_id(&click.id, Some(&tid), &fields, PURCHASE);
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .finish();
            let conversion = Conversion {
                id: id.clone(),
                at: converted * 1000,
                network: "cake".into(),
                event: PURCHASE.into(),
                value,
                currency: "USD".into(),
                transaction_id: Some(tid.clone()),
                item_id: Some((700 + link).to_string()),
                fields,
                click: click.clone(),
                reversed_at: None,
            };
            let event = Event {
                received_at: converted * 1000,
                network: "cake".into(),
                status: EventStatus::Ok,
                reason: format!("{PURCHASE} recorded"),
                click_id: Some(click.id.clone()),
                conversion_id: Some(id),
                query,
            };
            recorded.push((conversion, event));
        }
        if matches!(r, Role::Matched | Role::Mismatch | Role::NoPostback) {
            let disposition = if k % 5 == 0 { "Pending" } else { "Approved" };
            lines.push(Line { at: converted, click: click.id.clone(), tid: tid.clone(), link, price, disposition });
        }
        if let Some(s) = stray(k) {
            let at = converted + 7;
            let click = match s {
                Stray::Unknown => keyring.mint(at as u64 - 600).to_string(),
                Stray::Forged => {
                    let mut id = keyring.mint(at as u64 - 600).to_string().into_bytes();
                    let last = id.len() - 1;
                    id[last] = if id[last] == b'A' { b'B' } else { b'A' };
                    String::from_utf8(id).expect("ascii")
                }
                Stray::Empty => String::new(),
                Stray::Expired => keyring.mint((at - LIFETIME - DAY) as u64).to_string(),
            };
            lines.push(Line { at, click, tid: format!("{tid}-S"), link, price, disposition: "Approved" });
        }
    }
    for chunk in recorded.chunks(2048) {
        let writes = chunk.iter().map(|(c, _)| store.conversions().record_conversion(c));
        for done in futures_util::future::join_all(writes).await {
            done.expect("record conversion");
        }
        let logs = chunk.iter().map(|(_, e)| store.events().log_event(e));
        for done in futures_util::future::join_all(logs).await {
            done.expect("log event");
        }
    }
    store.health().flush().await.expect("flush");
    let seeding_conversions = started.elapsed();

    lines.sort_by_key(|l| l.at);
    let mut csv = String::with_capacity(lines.len() * 160);
    csv.push_str(HEADER);
    csv.push_str("\r\n");
    for (i, l) in lines.iter().enumerate() {
        csv.push_str(&format!(
            "{},{},{},\"Offer {}, US\",fb,{},,{},\"{}\",{}\r\n",
            40_000_000 + i,
            cake_time(l.at),
            700 + l.link,
            700 + l.link,
            l.click,
            l.tid,
            cake_price(l.price),
            l.disposition
        ));
    }
    let csv = bytes::Bytes::from(csv);

    // What the answer must say, from how the lines were built.
    let blocks = clicks / STRIDE / 100;
    let expect = json!({
        "network": blocks * 100,
        "cakelink": blocks * 90,
        "matched": blocks * 88,
        "missing": blocks * 12,
        "extra": blocks * 2,
        "amount_mismatch": blocks * 2,
        "gap_pct": "12.00",
    });
    let reasons = [
        ("no_postback", 7),
        ("click_unknown", 2),
        ("click_id_forged", 1),
        ("click_id_missing", 1),
        ("click_id_expired", 1),
    ];

    let date = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).expect("time").date();
    let (from, to) = (date(now - DAYS * DAY), date(now));
    let client = reqwest::Client::new();
    let url = |format: &str| format!("http://{addr}/api/reconcile?network=cake&from={from}&to={to}&format={format}");
    let post = |format: &'static str| {
        let (client, csv, url) = (&client, csv.clone(), url(format));
        async move {
            let started = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .expect("reconcile");
            let status = res.status();
            let body = res.bytes().await.expect("body");
            let took = started.elapsed();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body[..body.len().min(400)]));
            (took, body)
        }
    };

    println!(
        "reconcile with CAKE, {from} to {to}: {clicks} clicks stored in {:.1} s, {} conversions (and their \
         postbacks logged) in {:.1} s; report of {} rows, {:.1} MB",
        seeding_clicks.as_secs_f64(),
        recorded.len(),
        seeding_conversions.as_secs_f64(),
        lines.len(),
        csv.len() as f64 / 1e6
    );
    let mut times = Vec::with_capacity(requests);
    for run in 1..=requests {
        let (took, body) = post("json").await;
        let report: Value = serde_json::from_slice(&body).expect("JSON report");
        assert_eq!(report["totals"], expect, "the totals the report was built for");
        for (reason, per_block) in reasons {
            let count = report["missing"].as_array().expect("missing").iter().filter(|m| m["reason"] == reason).count();
            assert_eq!(count as u64, blocks * per_block, "{reason}");
        }
        println!("  run {run}: {:.2} s (answer {:.1} MB)", took.as_secs_f64(), body.len() as f64 / 1e6);
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "  median of {requests}: {:.2} s (target < 10 s: {})",
        median.as_secs_f64(),
        if median < Duration::from_secs(10) { "met" } else { "missed" }
    );
    let (took, body) = post("table").await;
    assert!(String::from_utf8_lossy(&body).contains("12.00%"), "the table gives the gap");
    println!("  format=table: {:.2} s ({:.1} MB)", took.as_secs_f64(), body.len() as f64 / 1e6);

    // The parts, in-process: reading the CSV, reconciling (matching and the lookups
    // that explain the missing rows), writing the JSON.
    let period = Period { from, to, offset: time::UtcOffset::UTC };
    let started = Instant::now();
    let rows = input::read_csv(&csv, &network.reconcile, period.offset).expect("the report reads");
    let read = started.elapsed();
    assert_eq!(rows.len(), lines.len());
    let sources = Sources {
        clicks: store.clicks(),
        conversions: store.conversions(),
        events: store.events(),
        keyring: &keyring,
        click_ttl,
        event_log_max,
        queued: store.spool().queued_postbacks(),
    };
    let started = Instant::now();
    let done = reconcile::reconcile(&sources, &network, &period, rows, now * 1000).await.expect("reconcile");
    let matched = started.elapsed();
    // Of that, the read of the stored conversions (the period and 2 days either side).
    let (start, end) = period.millis();
    let started = Instant::now();
    let stored = store.conversions().conversions(start - 2 * DAY * 1000, end + 2 * DAY * 1000).await.expect("read");
    let conversions_read = started.elapsed();
    assert_eq!(stored.len(), recorded.len());
    let started = Instant::now();
    let answer = serde_json::to_vec(&done.report).expect("JSON");
    let written = started.elapsed();
    assert_eq!(serde_json::to_value(&done.report.totals).expect("totals"), expect);
    println!(
        "  parts: CSV read {:.2} s, reconcile {:.2} s (of which the conversions read {:.2} s; {} click lookups \
         for missing rows), JSON {:.3} s ({} bytes)",
        read.as_secs_f64(),
        matched.as_secs_f64(),
        conversions_read.as_secs_f64(),
        blocks * 9,
        written.as_secs_f64(),
        answer.len()
    );

    let _ = stop.send(());
    server.await.expect("server task").expect("server stops");
}

/// A time as CAKE's portal writes it: `MM/DD/YYYY h:mm:ss AM`, in UTC.
fn cake_time(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).expect("time");
    let (h, half) = match t.hour() {
        0 => (12, "AM"),
        h @ 1..=11 => (h, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!("{:02}/{:02}/{} {h}:{:02}:{:02} {half}", t.month() as u8, t.day(), t.year(), t.minute(), t.second())
}

/// A price as CAKE's portal writes it: `$7.00`, `$1,250.00`.
fn cake_price(price: Money) -> String {
    let text = price.to_string();
    let (units, cents) = text.split_once('.').expect("two decimals");
    let mut grouped = String::new();
    for (i, c) in units.chars().enumerate() {
        if i > 0 && (units.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{cents}")
}
