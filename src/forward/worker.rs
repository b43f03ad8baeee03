//! The forwarding worker: one loop per destination claims due deliveries from the
//! outbox under a lease, sends them in batches, and settles each with its outcome.
//!
//! What no request is needed for is settled before anything is encoded: a reversal on a
//! platform that cannot retract is skipped (with why), an event too old for the
//! platform expired.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use serde_json::Value;

use super::{
    meta, tiktok, webhook, Destination, Encoding, ForwardConfig, Outcome, Platform, PlatformConfig, BATCHES_PER_ROUND,
    CLAIM_LIMIT, DEPTH_EVERY, MAX_BACKOFF,
};
use crate::clock::now_ms;
use crate::model::{Delivery, DeliveryStatus, Subject, UnixMillis};
use crate::reports::rfc3339;
use crate::store::Outbox;
use crate::telemetry;

/// One configured destination, ready to send.
struct Sender {
    config: Destination,
    platform: Box<dyn Platform>,
}

impl Sender {
    fn new(d: &Destination) -> Sender {
        let platform: Box<dyn Platform> = match &d.platform {
            PlatformConfig::Meta(c) => Box::new(meta::Meta::new(c.clone())),
            PlatformConfig::Google(c) => c.platform(),
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
pub(crate) struct Forwarder {
    store: Arc<dyn Outbox>,
    http: reqwest::Client,
    /// This process's lease token.
    owner: String,
    lease: Duration,
    poll: Duration,
    public_url: String,
}

/// A running [`Forwarder`]; [`ForwarderHandle::stop`] ends it.
pub(crate) struct ForwarderHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ForwarderHandle {
    /// Stops the worker. A request in flight is abandoned: its delivery stays pending and
    /// is sent again (with the same event id) after a restart or when its lease ends.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Forwarder {
    /// Starts the worker when some destination is enabled.
    pub(crate) fn spawn(store: Arc<dyn Outbox>, config: &ForwardConfig, public_url: &str) -> Option<ForwarderHandle> {
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
        let ctx = Encoding { public_url: &self.public_url, destination: dest };
        let now = now_ms();
        let mut ready: Vec<(Delivery, Value)> = Vec::new();
        for mut d in deliveries {
            if let Some(why) = cannot_retract(sender.platform.as_ref(), &d.subject) {
                tracing::info!(delivery = %d.id, reason = %why, "reversal skipped");
                d.status = DeliveryStatus::Skipped;
                d.updated_at = now;
                d.last_error = Some(why);
                self.finish(&d).await;
                continue;
            }
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
            // A dry run sends nothing, unless the platform can check a request without
            // acting on it: then it is sent that way, and the answer kept.
            let validate_only = dest.dry_run && sender.platform.validates();
            if dest.dry_run && !validate_only {
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
            let outcomes = sender.platform.send(&self.http, dest.timeout, &items, validate_only).await;
            for ((d, _), outcome) in chunk.into_iter().zip(outcomes) {
                let mut settled = settle(d, outcome, dest, sender.platform.as_ref(), now_ms());
                if validate_only && settled.status == DeliveryStatus::Delivered {
                    // Google checked it and would take it; nothing was recorded there.
                    settled.status = DeliveryStatus::DryRun;
                }
                let counter = match settled.status {
                    DeliveryStatus::Delivered => Some(telemetry::FORWARD_SENT),
                    DeliveryStatus::Pending => Some(telemetry::FORWARD_RETRIED),
                    // A checked dry run was neither sent nor refused.
                    DeliveryStatus::DryRun => None,
                    _ => Some(telemetry::FORWARD_FAILED),
                };
                if let Some(counter) = counter {
                    metrics::counter!(counter, "destination" => dest.name.clone()).increment(1);
                }
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

/// Why `subject` is not sent at all: it is a reversal, and the platform has no way to
/// retract a conversion.
fn cannot_retract(platform: &dyn Platform, subject: &Subject) -> Option<String> {
    match subject {
        Subject::Reversal(_, reversed_at) if !platform.retracts() => Some(format!(
            "{} has no way to retract a conversion; reversed at {}",
            platform.name(),
            rfc3339(*reversed_at)
        )),
        _ => None,
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::forward::{money_number, sha256_hex};
    use crate::model::Subject;
    use crate::money::Money;

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
            offer: None,
            rule: None,
            fallback: None,
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
    fn reversals_are_skipped_only_where_the_platform_cannot_retract() {
        let meta = meta::Meta::new(meta::MetaConfig {
            pixel_id: "1".into(),
            access_token: crate::secret::Secret::new("t"),
            graph_url: "http://127.0.0.1:9".into(),
            version: "v21.0".into(),
            test_event_code: None,
        });
        let hook = webhook::Webhook::new(webhook::WebhookConfig {
            url: "http://127.0.0.1:9/".into(),
            secret: crate::secret::Secret::new("s"),
        });
        let conversion = crate::model::Conversion {
            id: "conv".into(),
            at: 1_000,
            network: "cake".into(),
            event: "Purchase".into(),
            value: Money::default(),
            currency: "USD".into(),
            transaction_id: None,
            item_id: None,
            fields: vec![],
            click: pending(1_000).subject.click().clone(),
            reversed_at: Some(1_764_000_000_000),
        };
        let reversal = Subject::Reversal(Box::new(conversion.clone()), 1_764_000_000_000);
        assert_eq!(
            cannot_retract(&meta, &reversal).as_deref(),
            Some("meta has no way to retract a conversion; reversed at 2025-11-24T16:00:00Z")
        );
        assert_eq!(cannot_retract(&hook, &reversal), None);
        assert_eq!(cannot_retract(&meta, &Subject::Conversion(Box::new(conversion))), None);
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
