//! What Redis spends recording a click, by the size of the batch it comes in.
//!
//! Clicks reach Redis in batches, one script call per batch (see `store/redis/batcher.rs`),
//! and a batch touches up to sixteen shards, each with its own bucket, counters, day index
//! and interned values. This bench shows how the cost splits into what each click pays
//! and what each call and each shard pays, which decides how far the Redis store can go
//! when Redis shares a core with other work.
//!
//! `cargo bench --bench redis_batch` starts its own `redis-server`, connects the Redis
//! store to it, and records 60,000 clicks per batch size through the store's public
//! interface: groups of exactly `B` clicks are handed over at once on a single-threaded
//! runtime, so the batcher takes each group as one batch. Per batch size it prints the
//! CPU time `redis-server` used (user and system, from `/proc`) per click, and Redis's
//! own count of script calls and of the time spent in them. Each batch size runs on a
//! fresh server, so hash sizes are alike. Run as a test (`cargo test --all-targets`) it
//! records 400 clicks per size and checks the batching it relies on.

use std::time::Duration;

use cakelink::clickid::Keyring;
use cakelink::model::Click;
use cakelink::store::redis::RedisStore;
use cakelink::store::{ClickOrigin, ClickStore, OutboxRoutes, StoreLimits};

// The benches' shared click, made realistic below; this bench needs no server config.
#[path = "support/clicks.rs"]
#[allow(dead_code)]
mod clicks;

// The test suite's own helper: it waits for the child process from a plain thread.
#[path = "../tests/it/redis_server.rs"]
#[allow(unreachable_pub, dead_code, clippy::disallowed_methods)]
mod redis_server;

use redis_server::RedisServer;

const SIZES: [usize; 6] = [1, 4, 16, 32, 64, 256];
const CLICK_TTL: Duration = Duration::from_secs(37 * 86_400);

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let clicks = if full { 60_000 } else { 400 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    println!("| clicks per batch | script calls | Redis CPU per click (µs) | in the script per click (µs) | Redis CPU per call (µs) |");
    println!("|---|---|---|---|---|");
    for size in SIZES {
        runtime.block_on(measure(size, clicks));
    }
}

/// A click of the load benchmarks' realistic mix (`benches/wrk-clicks.lua`): a phone's
/// browser from a Facebook ad, with UTM parameters, a sub-id and its own `fbclid`.
fn click(keyring: &Keyring, n: usize, now: u64) -> Click {
    let mut click = clicks::click(keyring, n as u64, now as i64, 1, None);
    click.link = "cake/demo".into();
    click.user_agent = Some(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
         Version/17.5 Mobile/15E148 Safari/604.1"
            .into(),
    );
    click.referer = Some("https://m.facebook.com/".into());
    click.utm.extend([
        ("medium".into(), "paid".into()),
        ("campaign".into(), "bench-2026".into()),
        ("content".into(), format!("ad{}", n % 7)),
    ]);
    click.ad_click_ids = vec![("fbclid".into(), format!("IwAR0_{n}_{:08x}", n.wrapping_mul(2_654_435_761) as u32))];
    click.subids = vec![("s3".into(), format!("creative{}", n % 13))];
    click
}

async fn measure(size: usize, total: usize) {
    let server = RedisServer::start();
    let limits = StoreLimits {
        click_ttl: CLICK_TTL,
        event_log_max: 1000,
        personal_ttl: Duration::from_secs(7 * 86_400),
        outbox: OutboxRoutes::new(vec![]),
    };
    let store = RedisStore::connect(&server.url(), limits).await.expect("connect to redis-server");
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut con = client.get_multiplexed_async_connection().await.expect("connection");
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut con).await.expect("INFO");
    let pid = info_value(&info, "process_id").expect("process_id in INFO server");

    let keyring = Keyring::new("bench-secret-0123456789abcdef", &[], CLICK_TTL.as_secs());
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let clicks: Vec<Click> = (0..total).map(|n| click(&keyring, n, now)).collect();
    // The interned values (the context, the user agent) go to Redis once, before.
    store.record_click(clicks[0].view(), ClickOrigin::Minted).await.expect("record click");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut con).await.expect("CONFIG RESETSTAT");

    let before = cpu_seconds(pid);
    // Each click is its own task, as each redirect is: the runtime runs them all before
    // the batcher they wake, which then takes the whole group.
    let store = std::sync::Arc::new(store);
    for group in clicks[1..].chunks(size) {
        let writes: Vec<_> = group
            .iter()
            .map(|c| {
                let (store, c) = (store.clone(), c.clone());
                tokio::spawn(async move { store.record_click(c.view(), ClickOrigin::Minted).await })
            })
            .collect();
        for done in writes {
            done.await.expect("record task").expect("record click");
        }
    }
    let used = cpu_seconds(pid) - before;

    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.expect("INFO");
    let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")).expect("script calls in commandstats");
    let calls = stat_value(line, "calls").expect("calls");
    let in_scripts = stat_value(line, "usec").expect("usec") as f64;
    let recorded = (total - 1) as f64;
    // Every group went as one batch: the batcher took all its clicks at once.
    assert_eq!(calls as usize, (total - 1).div_ceil(size), "script calls for {size} clicks a batch");
    println!(
        "| {size} | {calls} | {:.2} | {:.2} | {:.1} |",
        used * 1e6 / recorded,
        in_scripts / recorded,
        used * 1e6 / calls as f64
    );
}

/// The number Redis's `INFO` text gives for `name` (a `name:N` line).
fn info_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

/// The number a `cmdstat_…:calls=N,usec=N,…` line of `INFO commandstats` gives for `name`.
fn stat_value(line: &str, name: &str) -> Option<u64> {
    line.split_once(':')?.1.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.trim().parse().ok())
}

/// The CPU time (user and system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat of redis-server");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    ticks as f64 / clock_ticks_per_second()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 on Linux.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
