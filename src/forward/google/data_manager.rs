//! Google Ads through the Data Manager API (`api = "data_manager"`, the default):
//! `POST {datamanager_url}/v1/events:ingest`.
//!
//! One request carries up to 2,000 events and names where they go in `destinations`: the
//! Google Ads account (`operatingAccount`, and `loginAccount` for a manager account,
//! which the Google Ads API took as the `login-customer-id` header) and the conversion
//! action (`productDestinationId`). Each event names its conversion action through
//! `destinationReferences`, so one request can carry events that `event_map` sends to
//! different actions. No developer token is needed.
//!
//! A reversed conversion is sent as an adjustment: the Data Manager API takes an event
//! with the `transactionId` of one it already has, for the same conversion action, as a
//! change to it. The reference documents changing the value and adding user data; it
//! names no retraction as such, so the adjustment restates the value to 0, with
//! `lastUpdatedTimestamp` set to when the network reversed it (our choice where the
//! reference is silent).
//!
//! The API fails fast: one invalid event makes Google refuse the whole request (`400`,
//! with a `google.rpc.BadRequest` naming the fields, `events[i]…`, at fault). The events
//! named are failed for good with Google's words; the others were not processed and are
//! retried without them. A `2xx` carries only a `requestId` (kept as the delivery's
//! note, for Google's request-status diagnostics); `429` and `5xx` are retried with
//! backoff; a `401` drops the cached access token and retries.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{click_id, AccessToken, GoogleConfig};
use crate::forward::{by_status, clip, money_number, platform_reply, Encoding, Outcome, Platform, PlatformReply};
use crate::model::Subject;
use crate::reports::rfc3339;

/// Events per request, the Data Manager API's limit.
const BATCH_LIMIT: usize = 2000;
/// The account type of every destination: cakelink uploads to Google Ads only.
const ACCOUNT_TYPE: &str = "GOOGLE_ADS";

pub(crate) struct DataManager {
    config: GoogleConfig,
    url: String,
    token: AccessToken,
}

impl DataManager {
    pub(crate) fn new(config: GoogleConfig) -> DataManager {
        let url = format!("{}/v1/events:ingest", config.datamanager_url.trim_end_matches('/'));
        DataManager { config, url, token: AccessToken::new() }
    }

    /// The request around `items`: one destination per conversion action they name.
    fn request(&self, items: &[Value], validate_only: bool) -> Value {
        let mut actions: Vec<&str> = Vec::new();
        for item in items {
            for action in item["destinationReferences"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !actions.contains(&action) {
                    actions.push(action);
                }
            }
        }
        let destinations: Vec<Value> = actions
            .into_iter()
            .map(|action| {
                let mut d = json!({
                    "reference": action,
                    "operatingAccount": { "accountType": ACCOUNT_TYPE, "accountId": self.config.customer_id },
                    "productDestinationId": action,
                });
                if let Some(login) = &self.config.login_customer_id {
                    d["loginAccount"] = json!({ "accountType": ACCOUNT_TYPE, "accountId": login });
                }
                d
            })
            .collect();
        let mut body = json!({ "destinations": destinations, "events": items });
        if let Some(consent) = &self.config.consent {
            // The destination's consent holds for every visitor, so it is the request's.
            let status = format!("CONSENT_{consent}");
            body["consent"] = json!({ "adUserData": status, "adPersonalization": status });
        }
        if validate_only {
            body["validateOnly"] = json!(true);
        }
        body
    }
}

/// The conversion action's id: the last part of a resource name, or the id as written.
fn action_id(action: &str) -> &str {
    action.rsplit('/').next().unwrap_or(action)
}

#[async_trait]
impl Platform for DataManager {
    fn name(&self) -> &'static str {
        "google"
    }

    fn batch_limit(&self) -> usize {
        BATCH_LIMIT
    }

    fn retracts(&self) -> bool {
        true
    }

    fn validates(&self) -> bool {
        true
    }

    fn encode(&self, subject: &Subject, ctx: &Encoding) -> Result<Value, String> {
        let (kind, value) = click_id(subject)?;
        let click = subject.click();
        let mut identifiers = Map::new();
        identifiers.insert(kind.into(), json!(value));
        // The click is the visitor landing from the ad: its device is the landing page's.
        // No session attributes: they come from Google's tag on a page, which cakelink is not.
        let mut device = Map::new();
        if self.config.may_send_device() {
            if let Some(ua) = &click.user_agent {
                device.insert("userAgent".into(), json!(ua));
            }
            if let Some(ip) = &click.ip {
                device.insert("ipAddress".into(), json!(ip));
            }
        }
        if !device.is_empty() {
            identifiers.insert("landingPageDeviceInfo".into(), Value::Object(device));
        }
        let action = action_id(self.config.action_for(subject, ctx));
        let mut event = json!({
            "destinationReferences": [action],
            "transactionId": subject.event_id(),
            "eventTimestamp": rfc3339(subject.at()),
            // The conversion happened on the offer's website, behind a web click.
            "eventSource": "WEB",
            "adIdentifiers": identifiers,
        });
        match subject {
            Subject::Conversion(c) => {
                event["conversionValue"] = money_number(c.value);
                event["currency"] = json!(c.currency);
            }
            Subject::Reversal(c, reversed_at) => {
                event["conversionValue"] = json!(0);
                event["currency"] = json!(c.currency);
                event["lastUpdatedTimestamp"] = json!(rfc3339(*reversed_at));
            }
            Subject::Click(_) => {}
        }
        Ok(event)
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
        items: &[Value],
        validate_only: bool,
    ) -> Vec<Outcome> {
        let token = match self.token.get(&self.config, http, timeout).await {
            Ok(t) => t,
            Err(outcome) => return outcome.for_all(items.len()),
        };
        let req = http.post(&self.url).timeout(timeout).bearer_auth(token).json(&self.request(items, validate_only));
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
        classify(status, after, &text, items.len())
    }
}

/// Google's answer to one ingest request: one outcome per event.
fn classify(status: reqwest::StatusCode, after: Option<Duration>, text: &str, n: usize) -> Vec<Outcome> {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = Some(status.as_u16());
    if status.is_success() {
        let note = body["requestId"].as_str().map(|id| format!("request id {id}"));
        return Outcome::Delivered { status: code, note }.for_all(n);
    }
    let error = &body["error"];
    let mut message = error["message"].as_str().map_or_else(|| text.to_owned(), str::to_owned);
    if let Some(reason) = error["status"].as_str() {
        message = format!("{reason}: {message}");
    }
    let details = error["details"].as_array().map(Vec::as_slice).unwrap_or_default();
    if let Some(id) = details.iter().find_map(|d| d["requestId"].as_str()) {
        message = format!("{message} (request id {id})");
    }
    if status.as_u16() != 400 {
        return by_status(status, after, &message).for_all(n);
    }
    // Fast fail: the events at fault are refused for good, the others were not looked at.
    let mut faults: Vec<Vec<String>> = vec![Vec::new(); n];
    for violation in details.iter().flat_map(|d| d["fieldViolations"].as_array().into_iter().flatten()) {
        let field = violation["field"].as_str().unwrap_or_default();
        if let Some(i) = event_index(field).filter(|i| *i < n) {
            faults[i].push(format!("{field}: {}", violation["description"].as_str().unwrap_or_default()));
        }
    }
    if faults.iter().all(Vec::is_empty) {
        // Nothing points at an event: the request itself (account, action, credentials
        // scope) is wrong, and every event in it fails the same way.
        return Outcome::Failed { status: code, error: clip(&message) }.for_all(n);
    }
    faults
        .into_iter()
        .map(|fault| {
            if fault.is_empty() {
                let error =
                    clip(&format!("not processed: Google refused the request for another event in it ({message})"));
                Outcome::Retry { status: code, error, after: None }
            } else {
                Outcome::Failed { status: code, error: clip(&fault.join("; ")) }
            }
        })
        .collect()
}

/// The event a field path points at: `i` in `events[i]…`.
fn event_index(field: &str) -> Option<usize> {
    let rest = &field[field.find("events[")? + "events[".len()..];
    rest[..rest.find(']')?].parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::forward::{Destination, PlatformConfig};
    use crate::model::{Click, Conversion};
    use crate::money::Money;
    use crate::secret::Secret;

    fn config(consent: Option<&str>) -> GoogleConfig {
        GoogleConfig {
            api: super::super::GoogleApi::DataManager,
            customer_id: "1234567890".into(),
            conversion_action: "customers/1234567890/conversionActions/555".into(),
            login_customer_id: Some("9990001111".into()),
            developer_token: None,
            client_id: "c".into(),
            client_secret: Secret::new("s"),
            refresh_token: Secret::new("r"),
            api_url: "http://127.0.0.1:9".into(),
            datamanager_url: "http://127.0.0.1:9".into(),
            token_url: "http://127.0.0.1:9/token".into(),
            consent: consent.map(str::to_owned),
        }
    }

    fn destination(config: &GoogleConfig) -> Destination {
        Destination {
            name: "g".into(),
            platform: PlatformConfig::Google(config.clone()),
            enabled: true,
            events: None,
            clicks: false,
            event_map: BTreeMap::from([("Lead".to_owned(), "777".to_owned())]),
            dry_run: false,
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            batch_size: 10,
        }
    }

    fn conversion(event: &str) -> Conversion {
        let click = Click {
            id: "click-1".into(),
            link: "cake/demo".into(),
            at: 1_764_000_000_000,
            bot: None,
            ip: Some("198.51.100.7".into()),
            user_agent: Some("Mozilla/5.0".into()),
            referer: None,
            utm: vec![],
            ad_click_ids: vec![("wbraid".into(), "WB1".into())],
            subids: vec![],
            offer: None,
            rule: None,
            fallback: None,
        };
        Conversion {
            id: format!("conv-{event}"),
            at: 1_764_000_060_000,
            network: "cake".into(),
            event: event.into(),
            value: Money::parse("7.5").unwrap_or_default(),
            currency: "EUR".into(),
            transaction_id: None,
            item_id: None,
            fields: vec![],
            click,
            reversed_at: None,
        }
    }

    #[test]
    fn a_reversal_restates_the_value_to_zero_under_the_same_transaction_id() {
        let config = config(Some("GRANTED"));
        let dm = DataManager::new(config.clone());
        let dest = destination(&config);
        let ctx = Encoding { public_url: "https://t.example", destination: &dest };
        let purchase = conversion("Purchase");
        let original = dm.encode(&Subject::Conversion(Box::new(purchase.clone())), &ctx).unwrap();
        let reversal = dm.encode(&Subject::Reversal(Box::new(purchase), 1_764_086_400_000), &ctx).unwrap();
        let expected = json!({
            "destinationReferences": ["555"],
            "transactionId": "conv-Purchase",
            "eventTimestamp": "2025-11-24T16:01:00Z",
            "eventSource": "WEB",
            "adIdentifiers": {
                "wbraid": "WB1",
                "landingPageDeviceInfo": { "userAgent": "Mozilla/5.0", "ipAddress": "198.51.100.7" }
            },
            "conversionValue": 0,
            "currency": "EUR",
            "lastUpdatedTimestamp": "2025-11-25T16:00:00Z",
        });
        assert_eq!(reversal, expected);
        assert_eq!(original["transactionId"], reversal["transactionId"]);
        assert_eq!(original["conversionValue"].to_string(), "7.50");
        assert!(original.get("lastUpdatedTimestamp").is_none());

        // A Lead goes to the action `event_map` names; both actions get a destination.
        let lead = dm.encode(&Subject::Conversion(Box::new(conversion("Lead"))), &ctx).unwrap();
        let body = dm.request(&[reversal, lead], true);
        let account = json!({ "accountType": "GOOGLE_ADS", "accountId": "1234567890" });
        let login = json!({ "accountType": "GOOGLE_ADS", "accountId": "9990001111" });
        assert_eq!(
            body["destinations"],
            json!([
                { "reference": "555", "operatingAccount": account, "loginAccount": login, "productDestinationId": "555" },
                { "reference": "777", "operatingAccount": account, "loginAccount": login, "productDestinationId": "777" },
            ])
        );
        assert_eq!(body["consent"], json!({ "adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED" }));
        assert_eq!(body["validateOnly"], true);
    }

    #[test]
    fn denied_consent_keeps_the_device_out() {
        let config = config(Some("DENIED"));
        let dm = DataManager::new(config.clone());
        let dest = destination(&config);
        let ctx = Encoding { public_url: "https://t.example", destination: &dest };
        let event = dm.encode(&Subject::Conversion(Box::new(conversion("Purchase"))), &ctx).unwrap();
        assert_eq!(event["adIdentifiers"], json!({ "wbraid": "WB1" }));
        assert!(dm.request(&[event], false).get("validateOnly").is_none());
    }

    #[test]
    fn field_paths_name_their_event() {
        assert_eq!(event_index("events[3].ad_identifiers.gclid"), Some(3));
        assert_eq!(event_index("events.events[12]"), Some(12));
        assert_eq!(event_index("destinations[0].product_destination_id"), None);
        assert_eq!(event_index("events[x]"), None);
    }

    #[test]
    fn a_refused_request_fails_the_events_at_fault_and_retries_the_others() {
        let text = r#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT",
            "details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[
              {"field":"events[1].ad_identifiers.gclid","description":"The gclid is not valid."}]},
              {"@type":"type.googleapis.com/google.rpc.RequestInfo","requestId":"r-9"}]}}"#;
        let out = classify(reqwest::StatusCode::BAD_REQUEST, None, text, 3);
        assert!(
            matches!(&out[1], Outcome::Failed { status: Some(400), error }
            if error == "events[1].ad_identifiers.gclid: The gclid is not valid."),
            "{out:?}"
        );
        for i in [0, 2] {
            assert!(
                matches!(&out[i], Outcome::Retry { error, .. }
                if error.starts_with("not processed") && error.contains("request id r-9")),
                "{out:?}"
            );
        }
        // Nothing naming an event: the whole request is wrong.
        let text = r#"{"error":{"code":400,"message":"bad destination","status":"INVALID_ARGUMENT"}}"#;
        let out = classify(reqwest::StatusCode::BAD_REQUEST, None, text, 2);
        assert!(out
            .iter()
            .all(|o| matches!(o, Outcome::Failed { error, .. } if error == "INVALID_ARGUMENT: bad destination")));
    }

    #[test]
    fn success_keeps_the_request_id_and_throttling_is_retried() {
        let out = classify(reqwest::StatusCode::OK, None, r#"{"requestId":"abc"}"#, 1);
        assert_eq!(out[0], Outcome::Delivered { status: Some(200), note: Some("request id abc".into()) });
        let text = r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#;
        let out = classify(reqwest::StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(7)), text, 1);
        assert_eq!(
            out[0],
            Outcome::Retry {
                status: Some(429),
                error: "RESOURCE_EXHAUSTED: Quota exceeded".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        let out = classify(reqwest::StatusCode::FORBIDDEN, None, r#"{"error":{"message":"no access"}}"#, 1);
        assert!(matches!(&out[0], Outcome::Failed { status: Some(403), .. }));
    }

    #[test]
    fn action_ids_come_from_resource_names_or_stand_as_written() {
        assert_eq!(action_id("customers/123/conversionActions/555"), "555");
        assert_eq!(action_id("555"), "555");
    }
}
