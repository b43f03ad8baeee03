//! Metrics (Prometheus text on `/metrics`) and log set-up.
//!
//! The recorder is process-wide, installed once; every server in the process (tests
//! start several) shares it, so counters are cumulative per process.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REDIRECTS: &str = "cakelink_redirects_total";
pub const REDIRECT_SECONDS: &str = "cakelink_redirect_duration_seconds";
pub const CLICKS: &str = "cakelink_clicks_total";
pub const BOT_HITS: &str = "cakelink_bot_hits_total";
pub const CLICKS_UNSTORED: &str = "cakelink_clicks_unstored_total";
pub const SUBIDS_DROPPED: &str = "cakelink_subids_dropped_total";
pub const POSTBACKS: &str = "cakelink_postbacks_total";
pub const POSTBACK_LAST_OK: &str = "cakelink_postback_last_ok_timestamp_seconds";
pub const STORE_UP: &str = "cakelink_store_up";
pub const FORWARD_SENT: &str = "cakelink_forward_sent_total";
pub const FORWARD_RETRIED: &str = "cakelink_forward_retried_total";
pub const FORWARD_FAILED: &str = "cakelink_forward_failed_total";
pub const OUTBOX_DEPTH: &str = "cakelink_outbox_depth";
pub const SPOOL_BYTES: &str = "cakelink_spool_bytes";
pub const SPOOL_RECORDS: &str = "cakelink_spool_records";
pub const SPOOL_REPLAYED: &str = "cakelink_spool_replayed_total";
pub const REDIS_NODE_UP: &str = "cakelink_redis_node_up";
pub const REDIS_WRITES_UNCONFIRMED: &str = "cakelink_redis_writes_unconfirmed_total";

/// Handles of the metrics every redirect touches, looked up once instead of per request.
pub struct HotMetrics {
    pub redirects_click: metrics::Counter,
    pub redirects_bot: metrics::Counter,
    pub clicks: metrics::Counter,
    pub bot_hits: metrics::Counter,
    pub clicks_unstored: metrics::Counter,
    pub redirect_seconds: metrics::Histogram,
}

impl HotMetrics {
    /// Registers the handles with the installed recorder (call after [`metrics`]).
    pub fn new() -> HotMetrics {
        HotMetrics {
            redirects_click: metrics::counter!(REDIRECTS, "outcome" => "click"),
            redirects_bot: metrics::counter!(REDIRECTS, "outcome" => "bot"),
            clicks: metrics::counter!(CLICKS),
            bot_hits: metrics::counter!(BOT_HITS),
            clicks_unstored: metrics::counter!(CLICKS_UNSTORED),
            redirect_seconds: metrics::histogram!(REDIRECT_SECONDS),
        }
    }
}

impl Default for HotMetrics {
    fn default() -> HotMetrics {
        HotMetrics::new()
    }
}

/// The newest `ok` postback time per network, in milliseconds: what the gauge shows.
static LAST_OK: OnceLock<Mutex<HashMap<String, i64>>> = OnceLock::new();

/// Notes a postback of `network` answered `ok` at `at` (milliseconds). The gauge only
/// moves forward: a postback queued during an outage and resolved later carries its
/// arrival time, which may be older than one answered since.
pub fn postback_ok(network: &str, at: i64) {
    let mut last = LAST_OK.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    let newest = last.entry(network.to_owned()).or_insert(at);
    *newest = (*newest).max(at);
    // Set under the lock, so that two postbacks at once cannot set it out of order.
    metrics::gauge!(POSTBACK_LAST_OK, "network" => network.to_owned()).set(*newest as f64 / 1000.0);
}

/// Every `(node, role)` the node gauge has shown, so that one that left the list (a
/// node removed, a replica promoted) drops to 0 instead of showing its last value.
static NODES_SHOWN: OnceLock<Mutex<HashSet<(String, &'static str)>>> = OnceLock::new();

/// Sets `cakelink_redis_node_up{node,role}` from the store's servers: `(address, role,
/// up)`. Pairs shown before and absent now go to 0.
pub fn redis_nodes<'a>(nodes: impl IntoIterator<Item = (&'a str, &'static str, bool)>) {
    let mut shown = NODES_SHOWN.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    let mut now = HashSet::new();
    for (node, role, up) in nodes {
        metrics::gauge!(REDIS_NODE_UP, "node" => node.to_owned(), "role" => role).set(if up { 1.0 } else { 0.0 });
        now.insert((node.to_owned(), role));
    }
    for (node, role) in shown.difference(&now) {
        metrics::gauge!(REDIS_NODE_UP, "node" => node.clone(), "role" => *role).set(0.0);
    }
    shown.extend(now);
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once) and returns its handle.
pub fn metrics() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets =
                [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REDIRECT_SECONDS.into()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Folds histogram samples into their buckets every few seconds until dropped (the
/// application runs it as a task while it serves). Histograms keep their samples until
/// folded: without this (or a scrape), every redirect's timing would stay in memory.
pub(crate) async fn upkeep(handle: PrometheusHandle) {
    let mut tick = crate::clock::every(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    metrics::describe_counter!(REDIRECTS, "Redirect answers by outcome (click, bot, not_found, paused, bad_request).");
    metrics::describe_histogram!(
        REDIRECT_SECONDS,
        metrics::Unit::Seconds,
        "Time from request to redirect answer, click recording included."
    );
    metrics::describe_counter!(CLICKS, "Clicks by people, recorded.");
    metrics::describe_counter!(BOT_HITS, "Bot and prefetch hits, recorded, by reason kind.");
    metrics::describe_counter!(CLICKS_UNSTORED, "Redirects whose click the store did not acknowledge.");
    metrics::describe_counter!(
        SUBIDS_DROPPED,
        "Passed-through sub-ids dropped for exceeding the network's length limit."
    );
    metrics::describe_counter!(POSTBACKS, "Postbacks by status.");
    metrics::describe_gauge!(
        POSTBACK_LAST_OK,
        metrics::Unit::Seconds,
        "Unix time of the newest postback answered ok, by network; seeded from the event log at start-up."
    );
    metrics::describe_gauge!(STORE_UP, "1 when the store answered the last readiness check.");
    metrics::describe_gauge!(SPOOL_BYTES, metrics::Unit::Bytes, "Bytes in the outage spool, waiting for the store.");
    metrics::describe_gauge!(SPOOL_RECORDS, "Records (clicks, postbacks, events) in the outage spool.");
    metrics::describe_counter!(SPOOL_REPLAYED, "Outage spool records replayed into the store.");
    metrics::describe_gauge!(
        REDIS_NODE_UP,
        "1 while a Redis node (of the cluster, or the one Redis) is connected and not failing, by node and role."
    );
    metrics::describe_counter!(
        REDIS_WRITES_UNCONFIRMED,
        "Redis writes refused because fewer replicas than store.replicas_ack confirmed them in time."
    );
    metrics::describe_counter!(FORWARD_SENT, "Events a destination accepted, by destination.");
    metrics::describe_counter!(FORWARD_RETRIED, "Attempts that will be retried, by destination.");
    metrics::describe_counter!(
        FORWARD_FAILED,
        "Events dead-lettered or expired (not sent), by destination; re-queueable through the API."
    );
    metrics::describe_gauge!(OUTBOX_DEPTH, "Deliveries waiting in the outbox (in flight included).");
}

/// Logs to standard error; `RUST_LOG` sets the filter (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
