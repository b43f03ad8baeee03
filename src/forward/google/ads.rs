//! Google Ads API (`api = "ads"`): click conversions through
//! `POST {api_url}/v22/customers/{customer_id}:uploadClickConversions`, and retractions
//! of reversed conversions through `…:uploadConversionAdjustments`.
//!
//! Both uploads run with partial failure on, so a `200` can still carry per-item errors,
//! addressed by their index in the request: `TOO_RECENT_EVENT` (a click younger than about
//! six hours) and `TOO_RECENT_CONVERSION_ACTION` are retried six hours later,
//! `ORDER_ID_ALREADY_IN_USE`, `CLICK_CONVERSION_ALREADY_EXISTS` and
//! `CONVERSION_ALREADY_RETRACTED` mean Google has it already, anything else is final.
//! A retraction names the conversion by its order id (the conversion id cakelink sent).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{click_id, AccessToken, GoogleConfig};
use crate::forward::{by_status, clip, money_number, platform_reply, Encoding, Outcome, Platform, PlatformReply};
use crate::model::Subject;

/// Conversions (or adjustments) per request, Google's limit.
const BATCH_LIMIT: usize = 2000;
const TOO_RECENT_RETRY: Duration = Duration::from_secs(6 * 3600);
/// Partial-failure codes that mean Google has the conversion (or its retraction) already.
const ALREADY_THERE: [&str; 3] =
    ["ORDER_ID_ALREADY_IN_USE", "CLICK_CONVERSION_ALREADY_EXISTS", "CONVERSION_ALREADY_RETRACTED"];
/// Partial-failure codes that mean "too early, try again in hours".
const TOO_RECENT: [&str; 2] = ["TOO_RECENT_EVENT", "TOO_RECENT_CONVERSION_ACTION"];
/// Partial-failure codes worth another attempt soon.
const TRANSIENT: [&str; 3] = ["CONCURRENT_MODIFICATION", "INTERNAL_ERROR", "TRANSIENT_ERROR"];
/// The key that tells an encoded retraction from an encoded conversion.
const ADJUSTMENT_TYPE: &str = "adjustmentType";

pub(crate) struct GoogleAds {
    config: GoogleConfig,
    conversions_url: String,
    adjustments_url: String,
    token: AccessToken,
}

impl GoogleAds {
    pub(crate) fn new(config: GoogleConfig) -> GoogleAds {
        let base = format!("{}/v22/customers/{}", config.api_url.trim_end_matches('/'), config.customer_id);
        GoogleAds {
            conversions_url: format!("{base}:uploadClickConversions"),
            adjustments_url: format!("{base}:uploadConversionAdjustments"),
            config,
            token: AccessToken::new(),
        }
    }

    /// `conversion_action` as a resource name.
    fn action_resource(&self, action: &str) -> String {
        if action.starts_with("customers/") {
            action.to_owned()
        } else {
            format!("customers/{}/conversionActions/{action}", self.config.customer_id)
        }
    }

    /// One upload of `items` (all conversions, or all adjustments, listed under `field`).
    async fn upload(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        url: &str,
        field: &str,
        items: &[&Value],
    ) -> Vec<Outcome> {
        let token = match self.token.get(&self.config, http, timeout).await {
            Ok(t) => t,
            Err(outcome) => return outcome.for_all(items.len()),
        };
        let developer_token = self.config.developer_token.as_ref().map_or("", |t| t.expose());
        let mut req = http
            .post(url)
            .timeout(timeout)
            .bearer_auth(token)
            .header("developer-token", developer_token)
            .json(&json!({ field: items, "partialFailure": true }));
        if let Some(login) = &self.config.login_customer_id {
            req = req.header("login-customer-id", login);
        }
        let PlatformReply { status, after, text } = match platform_reply(req).await {
            Ok(a) => a,
            Err(outcome) => return outcome.for_all(items.len()),
        };
        if status.as_u16() == 401 {
            // The token was revoked or expired early: fetch a new one next time.
            self.token.forget();
            let error = clip(&format!("access token refused: {text}"));
            return Outcome::Retry { status: Some(401), error, after: None }.for_all(items.len());
        }
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().map_or_else(|| text.clone(), str::to_owned);
            return by_status(status, after, &message).for_all(items.len());
        }
        partial_failures(status.as_u16(), &text, field, items.len())
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
impl Platform for GoogleAds {
    fn name(&self) -> &'static str {
        "google"
    }

    fn batch_limit(&self) -> usize {
        BATCH_LIMIT
    }

    fn retracts(&self) -> bool {
        true
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let action = self.action_resource(self.config.action_for(subject, ctx));
        if let Subject::Reversal(c, reversed_at) = subject {
            // Google wants the adjustment after the conversion; a clock that disagrees
            // must not make the retraction unsendable.
            let at = (*reversed_at).max(c.at + 1000);
            return Ok(json!({
                "conversionAction": action,
                ADJUSTMENT_TYPE: "RETRACTION",
                "orderId": c.id,
                "adjustmentDateTime": google_time(at),
            }));
        }
        let (kind, value) = click_id(subject)?;
        let mut conversion = Map::new();
        conversion.insert(kind.into(), json!(value));
        conversion.insert("conversionAction".into(), json!(action));
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

    async fn send(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        items: &[Value],
        _validate_only: bool,
    ) -> Vec<Outcome> {
        // Conversions and retractions go to two services: one upload each, and the
        // outcomes put back in the order of `items`.
        let (adjustments, conversions): (Vec<(usize, &Value)>, Vec<(usize, &Value)>) =
            items.iter().enumerate().partition(|(_, item)| item.get(ADJUSTMENT_TYPE).is_some());
        let mut out = vec![None; items.len()];
        for (list, url, field) in [
            (conversions, &self.conversions_url, "conversions"),
            (adjustments, &self.adjustments_url, "conversionAdjustments"),
        ] {
            if list.is_empty() {
                continue;
            }
            let batch: Vec<&Value> = list.iter().map(|(_, v)| *v).collect();
            let outcomes = self.upload(http, timeout, url, field, &batch).await;
            for ((i, _), outcome) in list.into_iter().zip(outcomes) {
                out[i] = Some(outcome);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry { status: None, error: "no outcome".into(), after: None }))
            .collect()
    }
}

/// Reads a `200` answer's partial failures into one outcome per item listed under `field`.
fn partial_failures(status: u16, text: &str, field: &str, n: usize) -> Vec<Outcome> {
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
            .and_then(|path| path.iter().find(|p| p["fieldName"].as_str().is_some_and(|f| same_field(f, field))))
            .and_then(|p| p["index"].as_u64())
            .map(|i| i as usize);
        let outcome = if ALREADY_THERE.contains(&code.as_str()) {
            Outcome::Delivered { status: Some(status), note: Some(message) }
        } else if TOO_RECENT.contains(&code.as_str()) {
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

/// Whether an error path's field name is `field`: Google spells paths in snake case
/// (`conversion_adjustments`) and request fields in camel case (`conversionAdjustments`).
fn same_field(path: &str, field: &str) -> bool {
    path.chars().filter(|c| *c != '_').map(|c| c.to_ascii_lowercase()).eq(field.chars().map(|c| c.to_ascii_lowercase()))
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
        let out = partial_failures(200, text, "conversions", 4);
        assert!(matches!(out[0], Outcome::Delivered { note: None, .. }));
        assert!(matches!(&out[1], Outcome::Retry { after: Some(a), .. } if *a == TOO_RECENT_RETRY));
        assert!(
            matches!(&out[2], Outcome::Delivered { note: Some(n), .. } if n.starts_with("ORDER_ID_ALREADY_IN_USE"))
        );
        assert!(matches!(&out[3], Outcome::Failed { error, .. } if error == "UNPARSEABLE_GCLID: bad gclid"));
    }

    #[test]
    fn an_adjustment_already_retracted_counts_as_delivered() {
        let text = r#"{"partialFailureError":{"code":3,"message":"m","details":[{"errors":[
            {"errorCode":{"conversionAdjustmentUploadError":"CONVERSION_ALREADY_RETRACTED"},"message":"done",
             "location":{"fieldPathElements":[{"fieldName":"conversion_adjustments","index":0}]}}]}]}}"#;
        // Google names the field in snake case in error paths.
        let out = partial_failures(200, text, "conversionAdjustments", 2);
        assert!(matches!(&out[0], Outcome::Delivered { note: Some(n), .. } if n.starts_with("CONVERSION_ALREADY")));
        assert!(matches!(&out[1], Outcome::Delivered { note: None, .. }));
    }
}
