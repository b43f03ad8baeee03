//! The dashboard's overview for 30 days over a million stored clicks: how long the page
//! takes, end to end over 127.0.0.1 (request, counters read, aggregation, chart,
//! template, answer). The target is under 50 ms.
//!
//! `cargo bench --bench dashboard` stores 1,000,000 clicks spread over 30 days and 20
//! links on the embedded store, signs in, and times 100 overview requests; twice, on
//! fresh stores: once with the clicks written in time order, as traffic arrives, and
//! once in random time order, the worst case for the counters (every batch of writes
//! touches thousands of hourly counters, each a new version the store keeps until it
//! compacts). Run as a test (`cargo test --all-targets`), it stores 2,000 clicks and
//! times 5 requests, to keep the bench working without making the suite wait.

use std::time::{Duration, Instant};

use cakelink::app::Application;
use cakelink::clickid::Keyring;
use cakelink::model::Click;

#[path = "support/clicks.rs"]
mod clicks;

const SECRET: &str = "bench-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const LINKS: u64 = 20;
const DAYS: i64 = 30;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (clicks, requests) = if full { (1_000_000u64, 100usize) } else { (2_000, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(clicks, requests, false));
    if full {
        runtime.block_on(run(clicks, requests, true));
    }
}

async fn run(clicks: u64, requests: usize, shuffled: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = clicks::config(dir.path(), SECRET, ADMIN_TOKEN, LINKS);
    let app = Application::build(config).await.expect("app");
    let addr = app.local_addr();
    let store = app.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Clicks with their real times over the last 30 days, many writes in flight at once.
    let started = Instant::now();
    let keyring = Keyring::new(SECRET, &[], 37 * 86_400);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let span = (DAYS * 86_400 - 120) as u64;
    let mut written = 0u64;
    while written < clicks {
        let batch: Vec<Click> = (written..(written + clicks::IN_FLIGHT).min(clicks))
            .map(|n| {
                let back = if shuffled { n.wrapping_mul(2_654_435_761) % span } else { span - n * span / clicks };
                let bot = (n % 17 == 0).then(|| "prefetch".to_owned());
                clicks::click(&keyring, n, now - 60 - back as i64, LINKS, bot)
            })
            .collect();
        clicks::record(&store, &batch).await;
        written += batch.len() as u64;
    }
    store.health().flush().await.expect("flush");
    let seeding = started.elapsed();

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let base = format!("http://{addr}");
    let res = client.post(format!("{base}/ui/login")).form(&[("token", ADMIN_TOKEN)]).send().await.expect("sign in");
    let cookie = res.headers()["set-cookie"].to_str().expect("cookie").split(';').next().expect("pair").to_owned();
    let overview = format!("{base}/ui/?range=30d");
    let get = || async {
        let started = Instant::now();
        let res = client.get(&overview).header("cookie", &cookie).send().await.expect("overview");
        assert_eq!(res.status(), 200);
        let body = res.text().await.expect("body");
        assert_eq!(body.matches("<rect class=\"bar\"").count(), 30, "a bar per day");
        (started.elapsed(), body.len())
    };
    let (_, size) = get().await;
    let hours = store.conversions().counters(0, u32::MAX).await.expect("counters").len();
    println!(
        "dashboard overview, 30 days: {clicks} clicks stored {} in {:.1} s ({} hourly counter rows), page {size} bytes",
        if shuffled { "in random time order" } else { "in time order" },
        seeding.as_secs_f64(),
        hours
    );
    {
        let when = "right after the writes";
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            times.push(get().await.0);
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        // The part the store takes: reading the 30 days' hourly counters.
        let last = (now / 3600) as u32;
        let first = last + 1 - (DAYS as u32) * 24;
        let started = Instant::now();
        let rows = store.conversions().counters(first, last).await.expect("counters");
        let read = started.elapsed();
        let links: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.link.as_str()).collect();
        assert_eq!(links.len(), LINKS as usize, "every link has counters");
        println!(
            "  {when}: {requests} requests: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target < 50 ms); \
             counters read {:.2} ms",
            ms(at(0.5)),
            ms(at(0.9)),
            ms(at(0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            ms(read),
        );
    }
    let _ = stop.send(());
    server.await.expect("server task").expect("server stops");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
