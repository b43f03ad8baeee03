//! TikTok Events API: `POST {api_url}/open_api/v1.3/event/track/`.
//!
//! TikTok answers `200` even when it refuses a request and puts the verdict in the body:
//! `code` 0 is success, 40100 is rate limiting (retried), any other code is final.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{ad_click_id, by_status, clip, money_number, platform_reply, sha256_hex, Encoding, Outcome, Platform};
use crate::model::Subject;
use crate::secret::Secret;

/// Events per request, TikTok's limit.
const BATCH_LIMIT: usize = 1000;
/// TikTok's rate-limit code.
const RATE_LIMITED: i64 = 40100;
/// cakelink's event names that TikTok calls differently, unless `event_map` says otherwise.
const DEFAULT_MAP: [(&str, &str); 2] = [("Purchase", "CompletePayment"), ("Lead", "SubmitForm")];

/// A TikTok destination's settings.
#[derive(Clone, Debug)]
pub struct TikTokConfig {
    /// The pixel code (`event_source_id`).
    pub pixel_id: String,
    /// The Events API access token generated for the pixel.
    pub access_token: Secret,
    /// Default `https://business-api.tiktok.com`; configurable so tests can point at a
    /// stand-in.
    pub api_url: String,
    /// Sends to the Events Manager's test tab, so a setup can be checked without
    /// counting real conversions.
    pub test_event_code: Option<String>,
}

pub(crate) struct TikTok {
    config: TikTokConfig,
    url: String,
}

impl TikTok {
    pub(crate) fn new(config: TikTokConfig) -> TikTok {
        let url = format!("{}/open_api/v1.3/event/track/", config.api_url.trim_end_matches('/'));
        TikTok { config, url }
    }
}

#[async_trait]
impl Platform for TikTok {
    fn name(&self) -> &'static str {
        "tiktok"
    }

    fn batch_limit(&self) -> usize {
        BATCH_LIMIT
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let click = subject.click();
        let mut user = Map::new();
        if let Some(ttclid) = ad_click_id(subject, "ttclid") {
            user.insert("ttclid".into(), json!(ttclid));
        }
        user.insert("external_id".into(), json!(sha256_hex(&click.id)));
        if let Some(ip) = &click.ip {
            user.insert("ip".into(), json!(ip));
        }
        if let Some(ua) = &click.user_agent {
            user.insert("user_agent".into(), json!(ua));
        }
        let mut event = json!({
            "event": ctx.destination.event_name(subject, &DEFAULT_MAP),
            "event_time": subject.at() / 1000,
            "event_id": subject.event_id(),
            "user": user,
            "page": { "url": ctx.link_url(subject) },
        });
        if let Subject::Conversion(c) = subject {
            let mut properties = Map::new();
            properties.insert("value".into(), money_number(c.value));
            properties.insert("currency".into(), json!(c.currency));
            properties.insert("order_id".into(), json!(c.transaction_id.as_deref().unwrap_or(&c.id)));
            if let Some(oid) = &c.item_id {
                properties.insert("contents".into(), json!([{ "content_id": oid }]));
            }
            event["properties"] = Value::Object(properties);
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
        let mut body = json!({ "event_source": "web", "event_source_id": self.config.pixel_id, "data": items });
        if let Some(code) = &self.config.test_event_code {
            body["test_event_code"] = json!(code);
        }
        let request =
            http.post(&self.url).timeout(timeout).header("Access-Token", self.config.access_token.expose()).json(&body);
        match platform_reply(request).await {
            Ok(a) => classify(a.status, a.after, &a.text).for_all(items.len()),
            Err(outcome) => outcome.for_all(items.len()),
        }
    }
}

fn classify(status: reqwest::StatusCode, after: Option<Duration>, text: &str) -> Outcome {
    if !status.is_success() {
        return by_status(status, after, text);
    }
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let http = Some(status.as_u16());
    match body["code"].as_i64() {
        Some(0) => Outcome::Delivered { status: http, note: None },
        Some(code) => {
            let error = clip(&format!("code {code}: {}", body["message"].as_str().unwrap_or("")));
            if code == RATE_LIMITED {
                Outcome::Retry { status: http, error, after }
            } else {
                Outcome::Failed { status: http, error }
            }
        }
        None => Outcome::Retry { status: http, error: clip(&format!("answer without a code: {text}")), after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_in_a_200_decides() {
        let ok = reqwest::StatusCode::OK;
        assert!(matches!(classify(ok, None, r#"{"code":0,"message":"OK"}"#), Outcome::Delivered { .. }));
        assert!(matches!(classify(ok, None, r#"{"code":40100,"message":"slow down"}"#), Outcome::Retry { .. }));
        assert!(matches!(
            classify(ok, None, r#"{"code":40002,"message":"bad pixel"}"#),
            Outcome::Failed { error, .. } if error == "code 40002: bad pixel"
        ));
    }
}
