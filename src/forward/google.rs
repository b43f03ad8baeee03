//! Google Ads click conversions:
//! `POST {api_url}/v22/customers/{customer_id}:uploadClickConversions`.
//!
//! Access tokens come from the OAuth2 refresh-token grant at `{token_url}` and are kept
//! until shortly before they expire. The upload runs with partial failure on, so a `200`
//! can still carry per-conversion errors, addressed by their index in the request:
//! `TOO_RECENT_EVENT` (a click younger than about six hours) is retried six hours later,
//! `ORDER_ID_ALREADY_IN_USE` and `CLICK_CONVERSION_ALREADY_EXISTS` mean Google has it
//! already, anything else is final. Only clicks that carry a `gclid`, `gbraid` or `wbraid`
//! are enqueued for Google.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{ad_click_id, by_status, clip, money_number, platform_reply, Encoding, Outcome, Platform, PlatformReply};
use crate::model::Subject;
use crate::secret::Secret;

/// Conversions per request, Google's limit.
const BATCH_LIMIT: usize = 2000;
/// A token is renewed this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
const TOO_RECENT_RETRY: Duration = Duration::from_secs(6 * 3600);
/// Partial-failure codes that mean the conversion is already in Google Ads.
const ALREADY_THERE: [&str; 2] = ["ORDER_ID_ALREADY_IN_USE", "CLICK_CONVERSION_ALREADY_EXISTS"];
/// Partial-failure codes worth another attempt soon.
const TRANSIENT: [&str; 3] = ["CONCURRENT_MODIFICATION", "INTERNAL_ERROR", "TRANSIENT_ERROR"];

/// A Google Ads destination's settings.
#[derive(Clone, Debug)]
pub struct GoogleConfig {
    /// The account the conversions belong to, digits only.
    pub customer_id: String,
    /// `customers/{id}/conversionActions/{id}` (a bare id is completed with `customer_id`).
    pub conversion_action: String,
    /// The manager account, when access goes through one.
    pub login_customer_id: Option<String>,
    /// The API developer token Google asks for on every call.
    pub developer_token: Secret,
    /// The OAuth2 client the refresh token was issued to (not secret on its own).
    pub client_id: String,
    /// The OAuth2 client's secret, needed with the refresh token to get access tokens.
    pub client_secret: Secret,
    /// A long-lived refresh token: access tokens expire hourly, so they are minted
    /// from this one as needed rather than configured.
    pub refresh_token: Secret,
    /// Default `https://googleads.googleapis.com`; configurable so tests can point at a
    /// stand-in.
    pub api_url: String,
    /// Default `https://oauth2.googleapis.com/token`; configurable for the same reason.
    pub token_url: String,
    /// EEA consent sent with every conversion (`GRANTED`/`DENIED`), when set.
    pub consent: Option<String>,
}

pub(crate) struct Google {
    config: GoogleConfig,
    url: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl Google {
    pub(crate) fn new(config: GoogleConfig) -> Google {
        let url = format!(
            "{}/v22/customers/{}:uploadClickConversions",
            config.api_url.trim_end_matches('/'),
            config.customer_id
        );
        Google { config, url, token: Mutex::new(None) }
    }

    /// `conversion_action` as a resource name.
    fn action_resource(&self, action: &str) -> String {
        if action.starts_with("customers/") {
            action.to_owned()
        } else {
            format!("customers/{}/conversionActions/{action}", self.config.customer_id)
        }
    }

    fn cached_token(&self) -> Option<String> {
        let guard = self.token.lock().ok()?;
        guard.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    fn forget_token(&self) {
        if let Ok(mut guard) = self.token.lock() {
            *guard = None;
        }
    }

    /// A valid access token, from the cache or the token endpoint.
    async fn access_token(&self, http: &reqwest::Client, timeout: Duration) -> Result<String, Outcome> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.config.client_secret.expose()),
            ("refresh_token", self.config.refresh_token.expose()),
        ];
        let PlatformReply { status, after, text } =
            platform_reply(http.post(&self.config.token_url).timeout(timeout).form(&form)).await?;
        if !status.is_success() {
            // A refused refresh token (400/401) will not fix itself; a 5xx may.
            return Err(match by_status(status, after, &text) {
                Outcome::Failed { status, error } => {
                    Outcome::Failed { status, error: format!("OAuth token endpoint: {error}") }
                }
                other => other,
            });
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str() else {
            return Err(Outcome::Retry {
                status: Some(status.as_u16()),
                error: "OAuth token endpoint answered without an access_token".into(),
                after: None,
            });
        };
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        if let Ok(mut guard) = self.token.lock() {
            *guard = Some((token.to_owned(), until));
        }
        Ok(token.to_owned())
    }
}

/// `yyyy-mm-dd hh:mm:ss+00:00`, the format Google wants, in UTC.
fn google_time(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[async_trait]
impl Platform for Google {
    fn batch_limit(&self) -> usize {
        BATCH_LIMIT
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let mut conversion = Map::new();
        let id = ["gclid", "gbraid", "wbraid"].into_iter().find_map(|k| ad_click_id(subject, k).map(|v| (k, v)));
        let Some((kind, value)) = id else {
            return Err("the click carried no gclid, gbraid or wbraid".into());
        };
        conversion.insert(kind.into(), json!(value));
        let action = ctx.destination.event_map.get(subject.event_name()).unwrap_or(&self.config.conversion_action);
        conversion.insert("conversionAction".into(), json!(self.action_resource(action)));
        conversion.insert("conversionDateTime".into(), json!(google_time(subject.at())));
        conversion.insert("orderId".into(), json!(subject.event_id()));
        if let Subject::Conversion(c) = subject {
            conversion.insert("conversionValue".into(), money_number(c.value));
            conversion.insert("currencyCode".into(), json!(c.currency));
        }
        if let Some(consent) = &self.config.consent {
            conversion.insert("consent".into(), json!({ "adUserData": consent, "adPersonalization": consent }));
        }
        Ok(Value::Object(conversion))
    }

    async fn send(&self, http: &reqwest::Client, timeout: Duration, items: &[Value]) -> Vec<Outcome> {
        let token = match self.access_token(http, timeout).await {
            Ok(t) => t,
            Err(outcome) => return outcome.for_all(items.len()),
        };
        let mut req = http
            .post(&self.url)
            .timeout(timeout)
            .bearer_auth(token)
            .header("developer-token", self.config.developer_token.expose())
            .json(&json!({ "conversions": items, "partialFailure": true }));
        if let Some(login) = &self.config.login_customer_id {
            req = req.header("login-customer-id", login);
        }
        let PlatformReply { status, after, text } = match platform_reply(req).await {
            Ok(a) => a,
            Err(outcome) => return outcome.for_all(items.len()),
        };
        if status.as_u16() == 401 {
            // The token was revoked or expired early: fetch a new one next time.
            self.forget_token();
            let error = clip(&format!("access token refused: {text}"));
            return Outcome::Retry { status: Some(401), error, after: None }.for_all(items.len());
        }
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().map_or_else(|| text.clone(), str::to_owned);
            return by_status(status, after, &message).for_all(items.len());
        }
        partial_failures(status.as_u16(), &text, items.len())
    }
}

/// Reads a `200` answer's partial failures into one outcome per conversion.
fn partial_failures(status: u16, text: &str, n: usize) -> Vec<Outcome> {
    let mut out = Outcome::Delivered { status: Some(status), note: None }.for_all(n);
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let failure = &body["partialFailureError"];
    if failure.is_null() {
        return out;
    }
    let errors: Vec<&Value> = failure["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["errors"].as_array().into_iter().flatten())
        .collect();
    if errors.is_empty() {
        let message = failure["message"].as_str().unwrap_or("partial failure without details");
        return Outcome::Failed { status: Some(status), error: clip(message) }.for_all(n);
    }
    for error in errors {
        let code = error["errorCode"]
            .as_object()
            .and_then(|o| o.values().find_map(Value::as_str))
            .unwrap_or("UNKNOWN")
            .to_owned();
        let message = clip(&format!("{code}: {}", error["message"].as_str().unwrap_or("")));
        let index = error["location"]["fieldPathElements"]
            .as_array()
            .and_then(|path| path.iter().find(|p| p["fieldName"] == "conversions"))
            .and_then(|p| p["index"].as_u64())
            .map(|i| i as usize);
        let outcome = if ALREADY_THERE.contains(&code.as_str()) {
            Outcome::Delivered { status: Some(status), note: Some(message) }
        } else if code == "TOO_RECENT_EVENT" {
            Outcome::Retry { status: Some(status), error: message, after: Some(TOO_RECENT_RETRY) }
        } else if TRANSIENT.contains(&code.as_str()) {
            Outcome::Retry { status: Some(status), error: message, after: None }
        } else {
            Outcome::Failed { status: Some(status), error: message }
        };
        match index {
            Some(i) if i < n => out[i] = outcome,
            Some(_) => {}
            None => out = outcome.for_all(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_google_formatted_utc() {
        assert_eq!(google_time(1_764_000_000_123), "2025-11-24 16:00:00+00:00");
    }

    #[test]
    fn partial_failures_are_read_per_conversion() {
        let text = r#"{"results":[{},{},{},{}],"partialFailureError":{"code":3,"message":"m","details":[{"errors":[
            {"errorCode":{"conversionUploadError":"TOO_RECENT_EVENT"},"message":"too recent",
             "location":{"fieldPathElements":[{"fieldName":"conversions","index":1}]}},
            {"errorCode":{"conversionUploadError":"ORDER_ID_ALREADY_IN_USE"},"message":"dup",
             "location":{"fieldPathElements":[{"fieldName":"conversions","index":2},{"fieldName":"order_id"}]}},
            {"errorCode":{"conversionUploadError":"UNPARSEABLE_GCLID"},"message":"bad gclid",
             "location":{"fieldPathElements":[{"fieldName":"conversions","index":3}]}}]}]}}"#;
        let out = partial_failures(200, text, 4);
        assert!(matches!(out[0], Outcome::Delivered { note: None, .. }));
        assert!(matches!(&out[1], Outcome::Retry { after: Some(a), .. } if *a == TOO_RECENT_RETRY));
        assert!(
            matches!(&out[2], Outcome::Delivered { note: Some(n), .. } if n.starts_with("ORDER_ID_ALREADY_IN_USE"))
        );
        assert!(matches!(&out[3], Outcome::Failed { error, .. } if error == "UNPARSEABLE_GCLID: bad gclid"));
    }
}
