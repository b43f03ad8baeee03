//! Each destination type's own keys: Meta, Google Ads, TikTok and webhooks.
//!
//! Google's `api` picks the API its uploads go through: `data_manager` (the default) or
//! `ads`; the developer token is required by `ads` only.
//!
//! Credentials are [`Secret`]s and can come from the environment as
//! `CAKELINK_DESTINATION_<NAME>_<KEY>`, so tokens need not sit in the file; the
//! environment wins. The API endpoints are keys too (with the platforms' real ones as
//! defaults) so tests and staging can point a destination at a stand-in server.

use super::reader::{Env, Errors, Section};
use crate::forward::google::{GoogleApi, GoogleConfig};
use crate::forward::meta::MetaConfig;
use crate::forward::tiktok::TikTokConfig;
use crate::forward::webhook::WebhookConfig;
use crate::forward::PlatformConfig;
use crate::secret::Secret;

/// One destination's table being read, and its `name` (which names its environment
/// variables).
struct Keys<'s, 'a, 'e> {
    /// The destination's table.
    s: &'s mut Section<'a>,
    /// The destination's `name`, part of its credentials' variable names.
    name: &'s str,
    /// Where those variables are looked up.
    env: Env<'e>,
}

/// Reads the platform keys for `kind` (the destination's `type`); `None` when the type
/// is missing or unknown.
pub(super) fn read(
    kind: Option<&str>,
    s: &mut Section<'_>,
    name: &str,
    env: Env<'_>,
    errors: &mut Errors,
) -> Option<PlatformConfig> {
    let mut keys = Keys { s, name, env };
    match kind {
        Some("meta") => Some(PlatformConfig::Meta(read_meta(&mut keys, errors))),
        Some("google") => Some(PlatformConfig::Google(read_google(&mut keys, errors))),
        Some("tiktok") => Some(PlatformConfig::TikTok(read_tiktok(&mut keys, errors))),
        Some("webhook") => Some(PlatformConfig::Webhook(read_webhook(&mut keys, errors))),
        Some(other) => {
            keys.s.err(
                errors,
                "type",
                format!("{other:?} is not a destination type; use meta, google, tiktok or webhook"),
            );
            None
        }
        None => {
            keys.s.err(errors, "type", "is required: meta, google, tiktok or webhook");
            None
        }
    }
}

fn read_meta(k: &mut Keys<'_, '_, '_>, errors: &mut Errors) -> MetaConfig {
    let pixel_id = k.required("pixel_id", "the Meta pixel (dataset) id", errors);
    if !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        k.s.err(errors, "pixel_id", format!("{pixel_id:?} is not a pixel id (digits only)"));
    }
    MetaConfig {
        pixel_id,
        access_token: k.secret("access_token", errors),
        graph_url: k.s.http_url("graph_url", "https://graph.facebook.com", errors),
        version: k.s.string("api_version", errors).unwrap_or_else(|| "v21.0".into()),
        test_event_code: k.s.string("test_event_code", errors),
    }
}

fn read_google(k: &mut Keys<'_, '_, '_>, errors: &mut Errors) -> GoogleConfig {
    let api = match k.s.string("api", errors).as_deref() {
        None | Some("data_manager") => GoogleApi::DataManager,
        Some("ads") => GoogleApi::Ads,
        Some(other) => {
            k.s.err(errors, "api", format!("{other:?} is not a Google API; use \"data_manager\" or \"ads\""));
            GoogleApi::DataManager
        }
    };
    // Customer ids are written 123-456-7890 in the Ads UI and sent as digits.
    let digits = |v: String| v.chars().filter(|c| *c != '-').collect::<String>();
    let customer_id = digits(k.required("customer_id", "the Google Ads account id", errors));
    if !customer_id.bytes().all(|b| b.is_ascii_digit()) {
        k.s.err(errors, "customer_id", format!("{customer_id:?} is not a customer id like 123-456-7890"));
    }
    let conversion_action =
        k.required("conversion_action", "customers/{id}/conversionActions/{id} or the action id", errors);
    let login_customer_id = k.s.string("login_customer_id", errors).map(digits);
    let consent = match k.s.string("consent", errors).as_deref() {
        None => None,
        Some("granted") => Some("GRANTED".to_owned()),
        Some("denied") => Some("DENIED".to_owned()),
        Some(other) => {
            k.s.err(errors, "consent", format!("{other:?} is not \"granted\" or \"denied\""));
            None
        }
    };
    GoogleConfig {
        api,
        customer_id,
        conversion_action,
        login_customer_id,
        // Only the Google Ads API asks for one; a token left in the file after switching
        // to the Data Manager API is not an error, just unused.
        developer_token: match api {
            GoogleApi::Ads => Some(k.secret("developer_token", errors)),
            GoogleApi::DataManager => k.optional_secret("developer_token", errors),
        },
        client_id: k.required("client_id", "the OAuth2 client id", errors),
        client_secret: k.secret("client_secret", errors),
        refresh_token: k.secret("refresh_token", errors),
        api_url: k.s.http_url("api_url", "https://googleads.googleapis.com", errors),
        datamanager_url: k.s.http_url("datamanager_url", "https://datamanager.googleapis.com", errors),
        token_url: k.s.http_url("token_url", "https://oauth2.googleapis.com/token", errors),
        consent,
    }
}

fn read_tiktok(k: &mut Keys<'_, '_, '_>, errors: &mut Errors) -> TikTokConfig {
    TikTokConfig {
        pixel_id: k.required("pixel_id", "the TikTok pixel code", errors),
        access_token: k.secret("access_token", errors),
        api_url: k.s.http_url("api_url", "https://business-api.tiktok.com", errors),
        test_event_code: k.s.string("test_event_code", errors),
    }
}

fn read_webhook(k: &mut Keys<'_, '_, '_>, errors: &mut Errors) -> WebhookConfig {
    let url = k.required("url", "where to POST", errors);
    if !url.is_empty() && !url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
        k.s.err(errors, "url", format!("{url:?} is not an absolute http(s) URL"));
    }
    WebhookConfig { url, secret: k.secret("secret", errors) }
}

impl Keys<'_, '_, '_> {
    /// A credential: `CAKELINK_DESTINATION_<NAME>_<KEY>` from the environment, else the
    /// file; required either way (an empty stand-in is returned with the problem).
    fn secret(&mut self, key: &'static str, errors: &mut Errors) -> Secret {
        let var = destination_var(self.name, key);
        match (self.env)(&var).or_else(|| self.s.string(key, errors)) {
            Some(v) if !v.trim().is_empty() => Secret::new(v),
            _ => {
                self.s.err(errors, key, format!("is required (or set {var})"));
                Secret::new("")
            }
        }
    }

    /// A credential that may be left out: from the environment or the file, `None` when
    /// neither has a non-empty value.
    fn optional_secret(&mut self, key: &'static str, errors: &mut Errors) -> Option<Secret> {
        let var = destination_var(self.name, key);
        (self.env)(&var).or_else(|| self.s.string(key, errors)).filter(|v| !v.trim().is_empty()).map(Secret::new)
    }

    /// A required, non-empty string, trimmed; `what` tells the operator what to put there.
    fn required(&mut self, key: &'static str, what: &str, errors: &mut Errors) -> String {
        match self.s.string(key, errors) {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => {
                self.s.err(errors, key, format!("is required: {what}"));
                String::new()
            }
        }
    }
}

/// The environment variable that can hold `key` of destination `name` (`meta-main`,
/// `access_token` → `CAKELINK_DESTINATION_META_MAIN_ACCESS_TOKEN`).
fn destination_var(name: &str, key: &str) -> String {
    super::reader::env_var("DESTINATION", name, key)
}
