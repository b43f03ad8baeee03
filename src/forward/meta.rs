//! Meta Conversions API: `POST {graph_url}/{version}/{pixel_id}/events`.
//!
//! Meta rejects a whole request when one event in it is older than seven days, so such
//! an event is never sent (it is recorded as expired), and it de-duplicates on
//! `event_id` + `event_name` for 48 hours, so retries stop at the end of that window.
//! Errors come as `{"error": {"message", "code", "is_transient", …}}`; transient ones and
//! the throttling codes are retried whatever the HTTP status.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{ad_click_id, by_status, clip, money_number, platform_reply, sha256_hex, Encoding, Outcome, Platform};
use crate::model::{Subject, UnixMillis};
use crate::secret::Secret;

/// Events per request, Meta's limit.
const BATCH_LIMIT: usize = 1000;
const MAX_AGE_MS: i64 = 7 * 86_400_000;
const DEDUP_WINDOW_MS: i64 = 48 * 3_600_000;
/// Meta's throttling error codes (application, user, API-call and pixel limits).
const THROTTLING_CODES: [i64; 5] = [4, 17, 32, 613, 80004];

/// A Meta destination's settings.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// The pixel (dataset) the events are sent to; digits only, as Meta shows it.
    pub pixel_id: String,
    /// A system user's token with access to the pixel; a [`Secret`] so it never reaches
    /// a log.
    pub access_token: Secret,
    /// Default `https://graph.facebook.com`; configurable so tests and staging can
    /// point at a stand-in.
    pub graph_url: String,
    /// Graph API version, default `v21.0`; configurable so an upgrade needs no release.
    pub version: String,
    /// Sends to the Events Manager's test tab.
    pub test_event_code: Option<String>,
}

pub(crate) struct Meta {
    config: MetaConfig,
    url: String,
}

impl Meta {
    pub(crate) fn new(config: MetaConfig) -> Meta {
        let url = format!("{}/{}/{}/events", config.graph_url.trim_end_matches('/'), config.version, config.pixel_id);
        Meta { config, url }
    }
}

#[async_trait]
impl Platform for Meta {
    fn name(&self) -> &'static str {
        "meta"
    }

    fn batch_limit(&self) -> usize {
        BATCH_LIMIT
    }

    fn expired(&self, subject: &Subject, now: UnixMillis) -> Option<String> {
        (now - subject.at() > MAX_AGE_MS)
            .then(|| "older than 7 days: Meta would reject the whole batch with it, so it was not sent".to_owned())
    }

    fn retry_until(&self, at: UnixMillis) -> Option<UnixMillis> {
        Some(at + DEDUP_WINDOW_MS)
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let click = subject.click();
        let mut user = Map::new();
        user.insert("external_id".into(), json!(sha256_hex(&click.id)));
        if let Some(ip) = &click.ip {
            user.insert("client_ip_address".into(), json!(ip));
        }
        if let Some(ua) = &click.user_agent {
            user.insert("client_user_agent".into(), json!(ua));
        }
        if let Some(fbclid) = ad_click_id(subject, "fbclid") {
            user.insert("fbc".into(), json!(format!("fb.1.{}.{fbclid}", click.at)));
        }
        let mut event = json!({
            "event_name": ctx.destination.event_name(subject, &[]),
            "event_time": subject.at() / 1000,
            "event_id": subject.event_id(),
            "action_source": "website",
            "event_source_url": ctx.link_url(subject),
            "user_data": user,
        });
        if let Subject::Conversion(c) = subject {
            let mut custom = Map::new();
            custom.insert("value".into(), money_number(c.value));
            custom.insert("currency".into(), json!(c.currency));
            if let Some(oid) = &c.item_id {
                custom.insert("content_ids".into(), json!([oid]));
            }
            if let Some(tid) = &c.transaction_id {
                custom.insert("order_id".into(), json!(tid));
            }
            event["custom_data"] = Value::Object(custom);
        }
        Ok(event)
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        items: &[Value],
        _validate_only: bool,
    ) -> Vec<Outcome> {
        let mut body = json!({ "data": items, "access_token": self.config.access_token.expose() });
        if let Some(code) = &self.config.test_event_code {
            body["test_event_code"] = json!(code);
        }
        match platform_reply(http.post(&self.url).timeout(timeout).json(&body)).await {
            Ok(a) => classify(a.status, a.after, &a.text).for_all(items.len()),
            Err(outcome) => outcome.for_all(items.len()),
        }
    }
}

/// Meta's answer to a request, the same for every event in it.
fn classify(status: reqwest::StatusCode, after: Option<Duration>, text: &str) -> Outcome {
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &parsed["error"];
    if status.is_success() && error.is_null() {
        return Outcome::Delivered { status: Some(status.as_u16()), note: None };
    }
    if error.is_object() {
        let code = error["code"].as_i64().unwrap_or(0);
        let transient = error["is_transient"].as_bool().unwrap_or(false) || THROTTLING_CODES.contains(&code);
        let mut message = error["message"].as_str().unwrap_or("error without a message").to_owned();
        if let Some(user_msg) = error["error_user_msg"].as_str() {
            message = format!("{message} ({user_msg})");
        }
        let message = clip(&format!("code {code}: {message}"));
        let status = Some(status.as_u16());
        if transient || status.is_some_and(|s| s == 429 || s >= 500) {
            return Outcome::Retry { status, error: message, after };
        }
        return Outcome::Failed { status, error: message };
    }
    by_status(status, after, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_transient_errors_are_retried_whatever_the_status() {
        let bad = reqwest::StatusCode::BAD_REQUEST;
        let throttled = r#"{"error":{"message":"limit","code":17}}"#;
        assert!(matches!(classify(bad, None, throttled), Outcome::Retry { .. }));
        let transient = r#"{"error":{"message":"x","code":2,"is_transient":true}}"#;
        assert!(matches!(classify(bad, None, transient), Outcome::Retry { .. }));
        let invalid = r#"{"error":{"message":"Invalid parameter","code":100,"error_user_msg":"bad pixel"}}"#;
        match classify(bad, None, invalid) {
            Outcome::Failed { status, error } => {
                assert_eq!(status, Some(400));
                assert_eq!(error, "code 100: Invalid parameter (bad pixel)");
            }
            other => panic!("{other:?}"),
        }
        let ok = classify(reqwest::StatusCode::OK, None, r#"{"events_received":2}"#);
        assert!(matches!(ok, Outcome::Delivered { .. }));
        assert!(matches!(classify(reqwest::StatusCode::BAD_GATEWAY, None, "<html>"), Outcome::Retry { .. }));
    }
}
