//! Google Ads, by one of two APIs, chosen per destination with `api`:
//!
//! - [`data_manager`] (the default): `POST {datamanager_url}/v1/events:ingest`. No
//!   developer token, IP address and user agent for every account, adjustments in the
//!   same call, and a request that is refused as a whole when one event in it is invalid.
//! - [`ads`]: the Google Ads API's `uploadClickConversions` (and
//!   `uploadConversionAdjustments` for retractions), kept as it was for accounts that
//!   still use it.
//!
//! Both authenticate with an OAuth2 access token minted from a refresh token at
//! `{token_url}` and kept until shortly before it expires ([`AccessToken`]). Only clicks
//! that carry a `gclid`, `gbraid` or `wbraid` are enqueued for Google.

pub(crate) mod ads;
pub(crate) mod data_manager;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ad_click_id, by_status, platform_reply, Encoding, Outcome, Platform, PlatformReply};
use crate::model::Subject;
use crate::secret::Secret;

/// A token is renewed this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// The click ids Google matches a conversion on, in the order one is picked.
const CLICK_IDS: [&str; 3] = ["gclid", "gbraid", "wbraid"];

/// Which of Google's APIs a destination uploads through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoogleApi {
    /// `api = "data_manager"`: the Data Manager API's `events:ingest`.
    DataManager,
    /// `api = "ads"`: the Google Ads API's click-conversion upload.
    Ads,
}

/// A Google Ads destination's settings.
#[derive(Clone, Debug)]
pub struct GoogleConfig {
    /// Which API the conversions go through.
    pub api: GoogleApi,
    /// The account the conversions belong to, digits only.
    pub customer_id: String,
    /// `customers/{id}/conversionActions/{id}` (a bare id is completed with `customer_id`).
    pub conversion_action: String,
    /// The manager account, when access goes through one.
    pub login_customer_id: Option<String>,
    /// The Google Ads API developer token; only that API asks for one, so it is required
    /// with `api = "ads"` and unused otherwise.
    pub developer_token: Option<Secret>,
    /// The OAuth2 client the refresh token was issued to (not secret on its own).
    pub client_id: String,
    /// The OAuth2 client's secret, needed with the refresh token to get access tokens.
    pub client_secret: Secret,
    /// A long-lived refresh token: access tokens expire hourly, so they are minted
    /// from this one as needed rather than configured.
    pub refresh_token: Secret,
    /// Default `https://googleads.googleapis.com` (`api = "ads"`); configurable so tests
    /// can point at a stand-in.
    pub api_url: String,
    /// Default `https://datamanager.googleapis.com` (`api = "data_manager"`); configurable
    /// for the same reason.
    pub datamanager_url: String,
    /// Default `https://oauth2.googleapis.com/token`; configurable for the same reason.
    pub token_url: String,
    /// EEA consent sent with every conversion (`GRANTED`/`DENIED`), when set. A denied
    /// consent also keeps the click's IP address and user agent out of the upload.
    pub consent: Option<String>,
}

impl GoogleConfig {
    /// The platform for this destination's `api`.
    pub(crate) fn platform(&self) -> Box<dyn Platform> {
        match self.api {
            GoogleApi::DataManager => Box::new(data_manager::DataManager::new(self.clone())),
            GoogleApi::Ads => Box::new(ads::GoogleAds::new(self.clone())),
        }
    }

    /// The conversion action `subject` goes to: `event_map`'s for its event, else the
    /// destination's.
    fn action_for<'a>(&'a self, subject: &Subject, ctx: &'a Encoding) -> &'a str {
        ctx.destination.event_map.get(subject.event_name()).map_or(&self.conversion_action, String::as_str)
    }

    /// Whether the visitor's IP address and user agent may go to Google: not when the
    /// destination says consent to ad user data was denied. (What a click keeps of them
    /// at all is decided when it is stored, by `[privacy]` and the 7-day retention.)
    fn may_send_device(&self) -> bool {
        self.consent.as_deref() != Some("DENIED")
    }
}

/// The Google click id the click carried: its name and value.
fn click_id(subject: &Subject) -> Result<(&'static str, &str), String> {
    CLICK_IDS
        .into_iter()
        .find_map(|k| ad_click_id(subject, k).map(|v| (k, v)))
        .ok_or_else(|| "the click carried no gclid, gbraid or wbraid".to_owned())
}

/// An OAuth2 access token minted from the destination's refresh token, cached until
/// shortly before it expires.
pub(crate) struct AccessToken {
    token: Mutex<Option<(String, Instant)>>,
}

impl AccessToken {
    fn new() -> AccessToken {
        AccessToken { token: Mutex::new(None) }
    }

    fn cached(&self) -> Option<String> {
        let guard = self.token.lock().ok()?;
        guard.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// Drops the cached token, after Google refused it: the next request mints another.
    fn forget(&self) {
        if let Ok(mut guard) = self.token.lock() {
            *guard = None;
        }
    }

    /// A valid access token, from the cache or the token endpoint.
    async fn get(&self, config: &GoogleConfig, http: &reqwest::Client, timeout: Duration) -> Result<String, Outcome> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", config.client_secret.expose()),
            ("refresh_token", config.refresh_token.expose()),
        ];
        let PlatformReply { status, after, text } =
            platform_reply(http.post(&config.token_url).timeout(timeout).form(&form)).await?;
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
