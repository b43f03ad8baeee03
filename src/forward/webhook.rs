//! Webhook: `POST` the conversion and its click as JSON to any URL, one event per request.
//!
//! The body is signed with HMAC-SHA256 under the destination's secret, over
//! `<timestamp>.<body>`; the timestamp (unix seconds) travels in
//! `X-Cakelink-Timestamp` and the signature, hex, in `X-Cakelink-Signature` as
//! `v1=<hex>`. A receiver recomputes it and rejects old timestamps, so a captured request
//! cannot be replayed later.
//!
//! A conversion the network reversed is an event of its own, `conversion.reversed`: the
//! conversion as it was sent, with its `reversed_at`, and an `event_id` of its own
//! (`<conversion id>.reversal`) so that a receiver de-duplicating on `event_id` keeps it.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{by_status, platform_reply, Encoding, Outcome, Platform};
use crate::model::Subject;
use crate::reports::rfc3339;
use crate::secret::Secret;

pub(crate) const TIMESTAMP_HEADER: &str = "x-cakelink-timestamp";
pub(crate) const SIGNATURE_HEADER: &str = "x-cakelink-signature";
/// The event name of a reversal, whatever the conversion's event and `event_map`.
pub(crate) const REVERSED: &str = "conversion.reversed";

/// A webhook destination's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where each event is POSTed (http or https).
    pub url: String,
    /// Keys the HMAC-SHA256 signature, so the receiver can tell the request came from
    /// this cakelink.
    pub secret: Secret,
}

pub(crate) struct Webhook {
    config: WebhookConfig,
}

impl Webhook {
    pub(crate) fn new(config: WebhookConfig) -> Webhook {
        Webhook { config }
    }
}

/// `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub(crate) fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length, so the error arm is never taken.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl Platform for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn batch_limit(&self) -> usize {
        1
    }

    fn retracts(&self) -> bool {
        true
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let click = subject.click();
        let pairs = |list: &[(String, String)]| -> Value {
            Value::Object(list.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
        };
        let click_json = json!({
            "click_id": click.id,
            "link": click.link,
            "clicked_at": rfc3339(click.at),
            "ip": click.ip,
            "user_agent": click.user_agent,
            "referer": click.referer,
            "subids": pairs(&click.subids),
            "utm": pairs(&click.utm),
            "ad_click_ids": pairs(&click.ad_click_ids),
        });
        let mut conversion = match subject {
            Subject::Conversion(c) | Subject::Reversal(c, _) => json!({
                "conversion_id": c.id,
                "converted_at": rfc3339(c.at),
                "network": c.network,
                "event": c.event,
                "value": c.value.to_string(),
                "currency": c.currency,
                "transaction_id": c.transaction_id,
                "item_id": c.item_id,
                "fields": pairs(&c.fields),
            }),
            Subject::Click(_) => Value::Null,
        };
        let (event, occurred_at) = match subject {
            Subject::Reversal(_, reversed_at) => {
                conversion["reversed_at"] = json!(rfc3339(*reversed_at));
                (REVERSED, *reversed_at)
            }
            _ => (ctx.destination.event_name(subject, &[]), subject.at()),
        };
        Ok(json!({
            "event": event,
            "event_id": subject.delivery_key(),
            "occurred_at": rfc3339(occurred_at),
            "conversion": conversion,
            "click": click_json,
        }))
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        items: &[Value],
        _validate_only: bool,
    ) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let body = item.to_string().into_bytes();
            let timestamp = crate::clock::now_secs();
            let request = http
                .post(&self.config.url)
                .timeout(timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, signature(self.config.secret.expose(), timestamp, &body))
                .body(body);
            out.push(match platform_reply(request).await {
                Ok(a) => by_status(a.status, a.after, &a.text),
                Err(outcome) => outcome,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_timestamp_and_body() {
        let a = signature("k", 1, b"{}");
        assert!(a.starts_with("v1=") && a.len() == 3 + 64);
        assert_ne!(a, signature("k", 2, b"{}"));
        assert_ne!(a, signature("k", 1, b"{ }"));
        assert_ne!(a, signature("other", 1, b"{}"));
    }
}
