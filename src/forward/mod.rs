//! Forwarding: conversions (and, when asked, people's clicks) to the ad platforms'
//! conversion APIs and to signed webhooks, from the store's durable outbox.
//!
//! Recording a conversion enqueues one delivery per destination in the same atomic store
//! write (see [`crate::store`]), so nothing recorded can miss its deliveries. A background
//! [`Forwarder`] claims due deliveries under a lease, hands each destination its batch,
//! and stores what happened: delivered, retry later (exponential backoff with jitter, up
//! to the destination's `max_attempts`), failed for good (dead-lettered, re-queueable
//! through the API), expired (too old for the platform) or dry run. It never runs on a
//! request's path: a slow platform slows only its own deliveries.
//!
//! Each platform is a small [`Platform`]: an encoder from the event to its part of the
//! request, and a sender that classifies the answer per event by the platform's own rules.
//!
//! - [`meta`]: Meta Conversions API.
//! - [`google`]: Google Ads click conversions (OAuth2 refresh-token flow, partial failures).
//! - [`tiktok`]: TikTok Events API.
//! - [`webhook`]: any URL, HMAC-SHA256 signed.

pub mod google;
pub mod meta;
pub mod tiktok;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::model::{Delivery, DeliveryStatus, Subject, UnixMillis};
use crate::money::Money;
use crate::store::{now_ms, OutboxRoute, OutboxRoutes, Store};
use crate::telemetry;

/// Most deliveries one round claims.
const CLAIM_LIMIT: usize = 2000;
/// Requests' worth of deliveries one round claims.
const BATCHES_PER_ROUND: usize = 4;
/// Longest wait between two attempts of one delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How often the outbox-depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// Most bytes of an answer kept as the error text.
const ERROR_TEXT_MAX: usize = 1000;

/// `[forward]` and `[[destinations]]`.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// How long a claimed delivery is reserved for the process that claimed it; another
    /// process takes it over once this has passed without an outcome.
    pub lease: Duration,
    /// How often the outbox is looked at for due deliveries.
    pub poll: Duration,
    /// How long delivered, failed, expired and dry-run deliveries are kept for the API.
    pub keep_settled: Duration,
    /// `[[destinations]]` in file order; each gets its own delivery per conversion, so
    /// one slow platform never holds up another.
    pub destinations: Vec<Destination>,
}

impl Default for ForwardConfig {
    fn default() -> ForwardConfig {
        ForwardConfig {
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(1),
            keep_settled: Duration::from_secs(30 * 86_400),
            destinations: Vec::new(),
        }
    }
}

impl ForwardConfig {
    /// What the store needs to enqueue: the enabled destinations and the events they take.
    pub fn routes(&self) -> OutboxRoutes {
        OutboxRoutes::new(
            self.destinations
                .iter()
                .filter(|d| d.enabled)
                .map(|d| OutboxRoute {
                    destination: d.name.clone(),
                    events: d.events.clone(),
                    clicks: d.clicks,
                    requires_any: match d.platform {
                        PlatformConfig::Google(_) => vec!["gclid".into(), "gbraid".into(), "wbraid".into()],
                        _ => Vec::new(),
                    },
                })
                .collect(),
        )
        .keep_settled_for(self.keep_settled)
    }
}

/// One `[[destinations]]` entry.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Unique; part of every delivery id.
    pub name: String,
    /// `type` and the platform's own keys: what to send and where.
    pub platform: PlatformConfig,
    /// A disabled destination gets no new deliveries; queued ones wait.
    pub enabled: bool,
    /// Conversion events it takes; `None` for all.
    pub events: Option<Vec<String>>,
    /// Whether people's clicks are forwarded (as `ViewContent`).
    pub clicks: bool,
    /// cakelink event name → the platform's event name.
    pub event_map: BTreeMap<String, String>,
    /// Build and keep the request, do not send it.
    pub dry_run: bool,
    /// Attempts before a retryable failure is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with each further one.
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Most events per request (capped by the platform's own limit).
    pub batch_size: usize,
}

impl Destination {
    /// The platform's name for `subject`'s event.
    pub fn event_name<'a>(&'a self, subject: &'a Subject, default_map: &[(&str, &'a str)]) -> &'a str {
        let name = subject.event_name();
        if let Some(mapped) = self.event_map.get(name) {
            return mapped;
        }
        default_map.iter().find(|(from, _)| *from == name).map_or(name, |(_, to)| to)
    }
}

/// The platform of a destination and its credentials.
#[derive(Clone, Debug)]
pub enum PlatformConfig {
    Meta(meta::MetaConfig),
    Google(google::GoogleConfig),
    TikTok(tiktok::TikTokConfig),
    Webhook(webhook::WebhookConfig),
}

/// What one attempt did to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Taken (or already there: platforms that de-duplicate say so).
    Delivered { status: Option<u16>, note: Option<String> },
    /// Worth trying again; `after` when the platform says when.
    Retry { status: Option<u16>, error: String, after: Option<Duration> },
    /// Refused for good.
    Failed { status: Option<u16>, error: String },
}

impl Outcome {
    /// Every event of a request shares one answer.
    fn for_all(self, n: usize) -> Vec<Outcome> {
        vec![self; n]
    }
}

/// A platform's encoder and sender.
#[async_trait]
pub trait Platform: Send + Sync {
    /// Most events one request may carry.
    fn batch_limit(&self) -> usize;

    /// Why `subject` must not be sent at `now` (too old), if so.
    fn expired(&self, _subject: &Subject, _now: UnixMillis) -> Option<String> {
        None
    }

    /// The latest time (ms) a retry makes sense for an event that happened at `at`.
    fn retry_until(&self, _at: UnixMillis) -> Option<UnixMillis> {
        None
    }

    /// This event's part of the request; `Err` when it cannot be sent at all.
    fn encode(&self, subject: &Subject, ctx: &Context) -> Result<Value, String>;

    /// Sends one request carrying `items`; one outcome per item, in order.
    async fn send(&self, http: &reqwest::Client, timeout: Duration, items: &[Value]) -> Vec<Outcome>;
}

/// What encoders need beside the event.
pub struct Context<'a> {
    /// Base URL of the tracking links (`server.public_url`).
    pub public_url: &'a str,
    pub destination: &'a Destination,
}

impl Context<'_> {
    /// The tracking link the click went through.
    pub fn link_url(&self, subject: &Subject) -> String {
        format!("{}/go/{}", self.public_url, subject.click().link)
    }
}

/// Lower-case hex SHA-256, as the platforms want identifiers hashed.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Money as a JSON number with its exact decimal digits (`7.00` stays `7.00`).
pub fn money_number(money: Money) -> Value {
    money.to_string().parse::<serde_json::Number>().map_or(Value::Null, Value::Number)
}

/// The click's value of one ad click id (`fbclid`, `gclid`…).
pub fn ad_click_id<'a>(subject: &'a Subject, name: &str) -> Option<&'a str> {
    subject.click().ad_click_ids.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `text` cut to [`ERROR_TEXT_MAX`] bytes on a character boundary.
pub fn clip(text: &str) -> String {
    crate::text::clip(text, ERROR_TEXT_MAX).to_owned()
}

/// Outcome of a request that got no answer, or an answer no platform rule covers.
pub fn transport_failure(e: &reqwest::Error) -> Outcome {
    let what = if e.is_timeout() { "timed out" } else { "failed" };
    Outcome::Retry { status: None, error: format!("request {what}: {e}"), after: None }
}

/// The generic reading of an HTTP status: 2xx taken, 408/429/5xx worth a retry, other
/// 4xx refused. `Retry-After` (seconds) is honoured.
pub fn by_status(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Outcome {
    let code = Some(status.as_u16());
    if status.is_success() {
        Outcome::Delivered { status: code, note: None }
    } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { status: code, error: clip(body), after: retry_after }
    } else {
        Outcome::Failed { status: code, error: clip(body) }
    }
}

/// The `Retry-After` header in seconds, if present.
/// A platform's answer to one request.
pub struct Answer {
    pub status: reqwest::StatusCode,
    /// `Retry-After`, when given in seconds.
    pub after: Option<Duration>,
    pub text: String,
}

/// Sends `request`: the platform's answer, or the outcome of getting none.
pub async fn answer(request: reqwest::RequestBuilder) -> Result<Answer, Outcome> {
    let res = request.send().await.map_err(|e| transport_failure(&e))?;
    let status = res.status();
    let after = retry_after(&res);
    let text = res.text().await.unwrap_or_default();
    Ok(Answer { status, after, text })
}

fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    res.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// One configured destination, ready to send.
struct Sender {
    config: Destination,
    platform: Box<dyn Platform>,
}

impl Sender {
    fn new(d: &Destination) -> Sender {
        let platform: Box<dyn Platform> = match &d.platform {
            PlatformConfig::Meta(c) => Box::new(meta::Meta::new(c.clone())),
            PlatformConfig::Google(c) => Box::new(google::Google::new(c.clone())),
            PlatformConfig::TikTok(c) => Box::new(tiktok::TikTok::new(c.clone())),
            PlatformConfig::Webhook(c) => Box::new(webhook::Webhook::new(c.clone())),
        };
        Sender { config: d.clone(), platform }
    }

    /// Events per request.
    fn batch_size(&self) -> usize {
        self.config.batch_size.clamp(1, self.platform.batch_limit())
    }
}

/// The background delivery worker: one loop per enabled destination, so that a slow or
/// failing platform holds up only its own deliveries.
pub struct Forwarder {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    /// This process's lease token.
    owner: String,
    lease: Duration,
    poll: Duration,
    public_url: String,
}

/// A running [`Forwarder`]; [`ForwarderHandle::stop`] ends it.
pub struct ForwarderHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ForwarderHandle {
    /// Stops the worker. A request in flight is abandoned: its delivery stays pending and
    /// is sent again (with the same event id) after a restart or when its lease ends.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Forwarder {
    /// Starts the worker when some destination is enabled.
    pub fn spawn(store: Arc<dyn Store>, config: &ForwardConfig, public_url: &str) -> Option<ForwarderHandle> {
        let enabled: Vec<&Destination> = config.destinations.iter().filter(|d| d.enabled).collect();
        if enabled.is_empty() {
            return None;
        }
        let http = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cakelink/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client; conversions stay queued");
                return None;
            }
        };
        let owner = format!("{:032x}", rand::rng().random::<u128>());
        let worker = Arc::new(Forwarder {
            store,
            http,
            owner,
            lease: config.lease,
            poll: config.poll,
            public_url: public_url.to_owned(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for d in enabled {
            tasks.spawn(worker.clone().run(Sender::new(d), stopped.clone()));
        }
        tasks.spawn(worker.gauge_depth(stopped));
        Some(ForwarderHandle { stop, tasks })
    }

    /// Delivers one destination's due events until stopped; stopping drops a request in
    /// flight.
    async fn run(self: Arc<Self>, sender: Sender, mut stopped: watch::Receiver<bool>) {
        loop {
            let busy = tokio::select! {
                _ = stopped.changed() => return,
                busy = self.round(&sender) => busy,
            };
            if !busy {
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(self.poll) => {}
                }
            }
        }
    }

    async fn gauge_depth(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        loop {
            if let Ok(depth) = self.store.outbox_depth().await {
                metrics::gauge!(telemetry::OUTBOX_DEPTH).set(depth as f64);
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(DEPTH_EVERY.min(self.poll * 10)) => {}
            }
        }
    }

    /// Claims what is due for one destination and delivers it. Whether the claim was full
    /// (more may be waiting).
    async fn round(&self, sender: &Sender) -> bool {
        let dest = &sender.config;
        let limit = (sender.batch_size() * BATCHES_PER_ROUND).min(CLAIM_LIMIT);
        let claimed_at = now_ms();
        let claimed = match self.store.claim_deliveries(&self.owner, &dest.name, claimed_at, self.lease, limit).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(destination = %dest.name, error = %e, "claiming deliveries failed; trying again shortly");
                return false;
            }
        };
        let full = claimed.len() >= limit;
        // A request must not outlast the lease: past this point, what is left is not sent
        // but left to the next claim, so no other process can be sending it at the same time.
        let last_start = claimed_at + self.lease.as_millis() as i64 - dest.timeout.as_millis() as i64;
        self.deliver(sender, claimed, last_start).await;
        full
    }

    async fn deliver(&self, sender: &Sender, deliveries: Vec<Delivery>, last_start: UnixMillis) {
        let dest = &sender.config;
        let ctx = Context { public_url: &self.public_url, destination: dest };
        let now = now_ms();
        let mut ready: Vec<(Delivery, Value)> = Vec::new();
        for mut d in deliveries {
            if let Some(why) = sender.platform.expired(&d.subject, now) {
                tracing::info!(delivery = %d.id, reason = %why, "event expired before it could be sent");
                d.status = DeliveryStatus::Expired;
                d.updated_at = now;
                d.last_error = Some(why);
                metrics::counter!(telemetry::FORWARD_FAILED, "destination" => dest.name.clone()).increment(1);
                self.finish(&d).await;
                continue;
            }
            match sender.platform.encode(&d.subject, &ctx) {
                Ok(item) => {
                    d.request = Some(item.to_string());
                    ready.push((d, item));
                }
                Err(why) => {
                    d.status = DeliveryStatus::Failed;
                    d.updated_at = now;
                    d.last_error = Some(why);
                    metrics::counter!(telemetry::FORWARD_FAILED, "destination" => dest.name.clone()).increment(1);
                    self.finish(&d).await;
                }
            }
        }
        let size = sender.batch_size();
        while !ready.is_empty() {
            let rest = ready.split_off(size.min(ready.len()));
            let chunk = std::mem::replace(&mut ready, rest);
            if dest.dry_run {
                for (mut d, _) in chunk {
                    d.status = DeliveryStatus::DryRun;
                    d.updated_at = now_ms();
                    self.finish(&d).await;
                }
                continue;
            }
            if now_ms() > last_start {
                tracing::info!(destination = %dest.name, left = chunk.len() + ready.len(), "lease running out; the rest waits for the next claim");
                return;
            }
            let items: Vec<Value> = chunk.iter().map(|(_, item)| item.clone()).collect();
            let outcomes = sender.platform.send(&self.http, dest.timeout, &items).await;
            for ((d, _), outcome) in chunk.into_iter().zip(outcomes) {
                let settled = settle(d, outcome, dest, sender.platform.as_ref(), now_ms());
                let counter = match settled.status {
                    DeliveryStatus::Delivered => telemetry::FORWARD_SENT,
                    DeliveryStatus::Pending => telemetry::FORWARD_RETRIED,
                    _ => telemetry::FORWARD_FAILED,
                };
                metrics::counter!(counter, "destination" => dest.name.clone()).increment(1);
                if settled.status == DeliveryStatus::Failed {
                    tracing::warn!(delivery = %settled.id, error = ?settled.last_error, "delivery dead-lettered");
                }
                self.finish(&settled).await;
            }
        }
    }

    async fn finish(&self, d: &Delivery) {
        match self.store.finish_delivery(&self.owner, d).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(delivery = %d.id, "lease lost; another process owns this delivery now"),
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "storing a delivery outcome failed; it will be retried")
            }
        }
    }
}

/// Applies the retry policy to one attempt's outcome.
fn settle(mut d: Delivery, outcome: Outcome, dest: &Destination, platform: &dyn Platform, now: UnixMillis) -> Delivery {
    d.attempts += 1;
    d.updated_at = now;
    match outcome {
        Outcome::Delivered { status, note } => {
            d.status = DeliveryStatus::Delivered;
            d.last_status = status;
            d.last_error = note;
        }
        Outcome::Failed { status, error } => {
            d.status = DeliveryStatus::Failed;
            d.last_status = status;
            d.last_error = Some(error);
        }
        Outcome::Retry { status, error, after } => {
            d.last_status = status;
            let next_at =
                now.saturating_add(after.unwrap_or_else(|| backoff(dest.backoff, d.attempts)).as_millis() as i64);
            let window = platform.retry_until(d.subject.at());
            if d.attempts >= dest.max_attempts {
                d.status = DeliveryStatus::Failed;
                d.last_error = Some(format!("gave up after {} attempts: {error}", d.attempts));
            } else if window.is_some_and(|end| next_at > end) {
                d.status = DeliveryStatus::Failed;
                d.last_error = Some(format!("no retry left inside the platform's de-duplication window: {error}"));
            } else {
                d.status = DeliveryStatus::Pending;
                d.next_at = next_at;
                d.last_error = Some(error);
            }
        }
    }
    d
}

/// Wait before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, with ±25 % jitter
/// so that a burst of failures does not come back as one burst.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(MAX_BACKOFF);
    exp.mul_f64(rand::rng().random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(10);
        for attempts in 1..6u32 {
            let d = backoff(base, attempts);
            let nominal = base * (1 << (attempts - 1));
            assert!(d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25), "{attempts}: {d:?}");
        }
        assert!(backoff(base, 60) <= MAX_BACKOFF.mul_f64(1.25));
    }

    fn destination(max_attempts: u32) -> Destination {
        Destination {
            name: "d".into(),
            platform: PlatformConfig::Webhook(webhook::WebhookConfig {
                url: "http://127.0.0.1:9/".into(),
                secret: crate::secret::Secret::new("s"),
            }),
            enabled: true,
            events: None,
            clicks: false,
            event_map: BTreeMap::new(),
            dry_run: false,
            max_attempts,
            backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            batch_size: 1,
        }
    }

    fn pending(at: UnixMillis) -> Delivery {
        let click = crate::model::Click {
            id: "c".into(),
            link: "cake/demo".into(),
            at,
            bot: None,
            ip: None,
            user_agent: None,
            referer: None,
            utm: vec![],
            ad_click_ids: vec![],
            subids: vec![],
        };
        Delivery::new("d", Subject::Click(Box::new(click)), at)
    }

    #[test]
    fn retries_back_off_until_the_attempts_or_the_window_run_out() {
        let dest = destination(3);
        let hook = webhook::Webhook::new(webhook::WebhookConfig {
            url: "http://127.0.0.1:9/".into(),
            secret: crate::secret::Secret::new("s"),
        });
        let retry = || Outcome::Retry { status: Some(503), error: "busy".into(), after: None };
        let now = 1_000_000;
        let d = settle(pending(now), retry(), &dest, &hook, now);
        assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Pending, 1, Some(503)));
        assert!((now + 7_500..=now + 12_500).contains(&d.next_at), "{}", d.next_at);
        let d = settle(d, retry(), &dest, &hook, now);
        assert!((now + 15_000..=now + 25_000).contains(&d.next_at), "{}", d.next_at);
        let d = settle(d, retry(), &dest, &hook, now);
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.last_error.as_deref(), Some("gave up after 3 attempts: busy"));

        // The platform's own wait wins over the backoff.
        let after = Outcome::Retry { status: Some(200), error: "later".into(), after: Some(Duration::from_secs(60)) };
        assert_eq!(settle(pending(now), after, &dest, &hook, now).next_at, now + 60_000);

        // Meta: no retry that would land past its 48-hour de-duplication window.
        let meta = meta::Meta::new(meta::MetaConfig {
            pixel_id: "1".into(),
            access_token: crate::secret::Secret::new("t"),
            graph_url: "http://127.0.0.1:9".into(),
            version: "v21.0".into(),
            test_event_code: None,
        });
        let at = now - 48 * 3_600_000 + 5_000;
        let d = settle(pending(at), retry(), &destination(10), &meta, now);
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert!(d.last_error.as_deref().is_some_and(|e| e.contains("de-duplication window")));
        let failed = Outcome::Failed { status: Some(400), error: "no".into() };
        assert_eq!(settle(pending(now), failed, &dest, &hook, now).status, DeliveryStatus::Failed);
    }

    #[test]
    fn money_keeps_its_decimals_as_a_number() {
        let v = money_number(Money::parse("7.5").unwrap_or_default());
        assert_eq!(v.to_string(), "7.50");
        assert!(v.is_number());
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
