//! Forwarding: conversions (and, when asked, people's clicks) to the ad platforms'
//! conversion APIs and to signed webhooks, from the store's durable outbox.
//!
//! Recording a conversion enqueues one delivery per destination in the same atomic store
//! write (see [`crate::store`]), so nothing recorded can miss its deliveries. A background
//! [`Forwarder`] claims due deliveries under a lease, hands each destination its batch,
//! and stores what happened: delivered, retry later (exponential backoff with jitter, up
//! to the destination's `max_attempts`), failed for good (dead-lettered, re-queueable
//! through the API), expired (too old for the platform), skipped (a reversal the platform
//! has no way to take) or dry run. It never runs on a request's path: a slow platform
//! slows only its own deliveries.
//!
//! Each platform is a small [`Platform`]: an encoder from the event to its part of the
//! request, and a sender that classifies the answer per event by the platform's own rules.
//! A platform also says whether it can retract a conversion the network reversed; the
//! worker settles the reversals of those that cannot as skipped, in one place.
//!
//! - [`meta`]: Meta Conversions API (no retraction).
//! - [`google`]: Google Ads, through the Data Manager API (the default) or the Google Ads
//!   API's click-conversion upload; both retract reversed conversions.
//! - [`tiktok`]: TikTok Events API (no retraction).
//! - [`webhook`]: any URL, HMAC-SHA256 signed; a reversal is a `conversion.reversed` event.

pub(crate) mod google;
pub(crate) mod meta;
pub(crate) mod tiktok;
pub(crate) mod webhook;
mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{Subject, UnixMillis};
use crate::money::Money;
use crate::store::{OutboxRoute, OutboxRoutes};
pub(crate) use worker::Forwarder;

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
pub(crate) enum Outcome {
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
pub(crate) trait Platform: Send + Sync {
    /// The platform's name as the operator knows it, for the reasons recorded on deliveries.
    fn name(&self) -> &'static str;

    /// Most events one request may carry.
    fn batch_limit(&self) -> usize;

    /// Whether the platform can take back a conversion the network reversed. When it
    /// cannot, the worker settles the reversal as skipped without encoding or sending it.
    fn retracts(&self) -> bool {
        false
    }

    /// Whether the platform can check a request without acting on it. A dry-run
    /// destination on such a platform sends its requests in that mode; on the others it
    /// sends nothing.
    fn validates(&self) -> bool {
        false
    }

    /// Why `subject` must not be sent at `now` (too old), if so.
    fn expired(&self, _subject: &Subject, _now: UnixMillis) -> Option<String> {
        None
    }

    /// The latest time (ms) a retry makes sense for an event that happened at `at`.
    fn retry_until(&self, _at: UnixMillis) -> Option<UnixMillis> {
        None
    }

    /// This event's part of the request; `Err` when it cannot be sent at all.
    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String>;

    /// Sends one request carrying `items`; one outcome per item, in order. With
    /// `validate_only` (only asked of a platform that [`validates`](Platform::validates)),
    /// the platform is asked to check the request and act on nothing.
    async fn send(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        items: &[Value],
        validate_only: bool,
    ) -> Vec<Outcome>;
}

/// What encoders need beside the event.
pub(crate) struct Encoding<'a> {
    /// Base URL of the tracking links (`server.public_url`).
    pub public_url: &'a str,
    pub destination: &'a Destination,
}

impl Encoding<'_> {
    /// The tracking link the click went through.
    pub(crate) fn link_url(&self, subject: &Subject) -> String {
        format!("{}/go/{}", self.public_url, subject.click().link)
    }
}

/// Lower-case hex SHA-256, as the platforms want identifiers hashed.
pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Money as a JSON number with its exact decimal digits (`7.00` stays `7.00`).
pub(crate) fn money_number(money: Money) -> Value {
    money.to_string().parse::<serde_json::Number>().map_or(Value::Null, Value::Number)
}

/// The click's value of one ad click id (`fbclid`, `gclid`…).
pub(crate) fn ad_click_id<'a>(subject: &'a Subject, name: &str) -> Option<&'a str> {
    subject.click().ad_click_ids.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `text` cut to [`ERROR_TEXT_MAX`] bytes on a character boundary.
pub(crate) fn clip(text: &str) -> String {
    crate::text::clip(text, ERROR_TEXT_MAX).to_owned()
}

/// Outcome of a request that got no answer, or an answer no platform rule covers.
pub(crate) fn transport_failure(e: &reqwest::Error) -> Outcome {
    let what = if e.is_timeout() { "timed out" } else { "failed" };
    Outcome::Retry { status: None, error: format!("request {what}: {e}"), after: None }
}

/// The generic reading of an HTTP status: 2xx taken, 408/429/5xx worth a retry, other
/// 4xx refused. `Retry-After` (seconds) is honoured.
pub(crate) fn by_status(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Outcome {
    let code = Some(status.as_u16());
    if status.is_success() {
        Outcome::Delivered { status: code, note: None }
    } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { status: code, error: clip(body), after: retry_after }
    } else {
        Outcome::Failed { status: code, error: clip(body) }
    }
}

/// A platform's answer to one request.
pub(crate) struct PlatformReply {
    pub status: reqwest::StatusCode,
    /// `Retry-After`, when given in seconds.
    pub after: Option<Duration>,
    pub text: String,
}

/// Sends `request`: the platform's answer, or the outcome of getting none.
pub(crate) async fn platform_reply(request: reqwest::RequestBuilder) -> Result<PlatformReply, Outcome> {
    let res = request.send().await.map_err(|e| transport_failure(&e))?;
    let status = res.status();
    let after = retry_after(&res);
    let text = res.text().await.unwrap_or_default();
    Ok(PlatformReply { status, after, text })
}

/// The `Retry-After` header in seconds, if present.
fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    res.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
