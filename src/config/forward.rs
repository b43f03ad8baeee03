//! `[forward]` and `[[destinations]]`: where recorded conversions are forwarded.
//!
//! The types live in [`crate::forward`], next to the code that uses them; only their
//! reading is here, so the forwarders never depend on the config file's shape. The keys
//! every destination shares are read here, each platform's own keys in
//! [`super::platforms`].

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::platforms;
use super::reader::{problem, valid_name, Env, Errors, Section};
use crate::forward::{Destination, ForwardConfig};

/// Reads `[forward]` and the `destinations` array.
pub(super) fn read(
    forward: Option<&toml::Value>,
    destinations: Option<&toml::Value>,
    env: Env<'_>,
    errors: &mut Errors,
) -> ForwardConfig {
    let mut fw = Section::new("forward", forward, errors);
    let lease_secs = fw.uint("lease_secs", 1, 86_400, errors).unwrap_or(120);
    let poll_ms = fw.uint("poll_ms", 10, 60_000, errors).unwrap_or(1000);
    let keep_days = fw.uint("keep_days", 1, 3650, errors).unwrap_or(30);
    fw.finish(errors);
    ForwardConfig {
        lease: Duration::from_secs(lease_secs),
        poll: Duration::from_millis(poll_ms),
        keep_settled: Duration::from_secs(keep_days * 86_400),
        destinations: read_destinations(destinations, lease_secs, env, errors),
    }
}

/// The `destinations` array: names unique, and every request over before its lease ends
/// (or another process could take the delivery over while it is still being sent).
fn read_destinations(
    value: Option<&toml::Value>,
    lease_secs: u64,
    env: Env<'_>,
    errors: &mut Errors,
) -> Vec<Destination> {
    let mut destinations = Vec::new();
    match value {
        None => {}
        Some(toml::Value::Array(items)) => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key = format!("destinations[{i}]");
                let Some(d) = read_destination(&key, item, env, errors) else { continue };
                if d.timeout.as_secs() >= lease_secs {
                    problem(
                        errors,
                        format!("{key}.timeout_secs"),
                        format!(
                            "must be shorter than forward.lease_secs ({lease_secs}): a request must end before its lease"
                        ),
                    );
                }
                if !seen.insert(d.name.clone()) {
                    problem(
                        errors,
                        format!("{key}.name"),
                        format!("{:?} is used by another destination; names must be unique", d.name),
                    );
                }
                destinations.push(d);
            }
        }
        Some(_) => problem(errors, "destinations", "must be an array of tables ([[destinations]])"),
    }
    destinations
}

/// One `[[destinations]]` entry at `key`; `None` when its type is missing or unknown.
fn read_destination(key: &str, value: &toml::Value, env: Env<'_>, errors: &mut Errors) -> Option<Destination> {
    let mut s = Section::new(key, Some(value), errors);
    let name = s.string("name", errors).unwrap_or_default();
    if name.is_empty() {
        s.err(errors, "name", "is required: a unique name (letters, digits, - _ .)");
    } else if !valid_name(&name) {
        s.err(errors, "name", "may hold only letters, digits and - _ . (at most 64)");
    }
    let kind = s.string("type", errors);
    let enabled = s.boolean("enabled", errors).unwrap_or(true);
    let dry_run = s.boolean("dry_run", errors).unwrap_or(false);
    let max_attempts = s.uint("max_attempts", 1, 100, errors).unwrap_or(10) as u32;
    let backoff_ms = s.uint("backoff_ms", 10, 86_400_000, errors).unwrap_or(30_000);
    let timeout_secs = s.uint("timeout_secs", 1, 300, errors).unwrap_or(10);
    let batch_size = s.uint("batch_size", 1, 2000, errors).unwrap_or(2000) as usize;
    let (events, clicks) = read_events(&mut s, errors);
    let event_map = read_event_map(&mut s, errors);
    let platform = platforms::read(kind.as_deref(), &mut s, &name, env, errors);
    s.finish(errors);
    Some(Destination {
        name,
        platform: platform?,
        enabled,
        events,
        clicks,
        event_map,
        dry_run,
        max_attempts,
        backoff: Duration::from_millis(backoff_ms),
        timeout: Duration::from_secs(timeout_secs),
        batch_size,
    })
}

/// `events`: the conversion events taken (`None`: all), and whether people's clicks are
/// (`"Click"` or `"ViewContent"` in the list).
fn read_events(s: &mut Section<'_>, errors: &mut Errors) -> (Option<Vec<String>>, bool) {
    let mut clicks = false;
    let events = s.strings("events", errors).map(|list| {
        let mut conversions = Vec::new();
        for event in list {
            match event.as_str() {
                "Click" | "ViewContent" => clicks = true,
                "" => s.err(errors, "events", "event names must not be empty"),
                _ => conversions.push(event),
            }
        }
        conversions
    });
    (events, clicks)
}

/// `event_map`: cakelink's event name → the platform's, each entry checked on its own.
fn read_event_map(s: &mut Section<'_>, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut event_map = BTreeMap::new();
    match s.raw("event_map") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (from, to) in t {
                match to {
                    toml::Value::String(to) if !to.trim().is_empty() => {
                        event_map.insert(from.clone(), to.clone());
                    }
                    _ => s.err(errors, &format!("event_map.{from}"), "must be a non-empty string"),
                }
            }
        }
        Some(_) => {
            s.err(errors, "event_map", "must be a table of event names, like { Lead = \"CompleteRegistration\" }")
        }
    }
    event_map
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, GOOD};
    use crate::config::Config;
    use crate::forward::google::GoogleApi;
    use crate::forward::PlatformConfig;

    const DESTINATIONS: &str = r#"
[forward]
lease_secs = 30
[[destinations]]
name = "meta-main"
type = "meta"
pixel_id = "1234567890"
events = ["Purchase", "Click"]
event_map = { Lead = "CompleteRegistration" }
[[destinations]]
name = "ads"
type = "google"
customer_id = "123-456-7890"
conversion_action = "987"
developer_token = "dev"
client_id = "cid"
client_secret = "secret"
refresh_token = "refresh"
consent = "granted"
[[destinations]]
name = "tt"
type = "tiktok"
pixel_id = "C123"
access_token = "tok"
dry_run = true
[[destinations]]
name = "hook"
type = "webhook"
url = "https://hooks.example.com/cakelink"
secret = "hook-secret"
enabled = false
"#;

    #[test]
    fn destinations_read_with_defaults_and_credentials_from_the_environment() {
        let text = format!("{GOOD}{DESTINATIONS}");
        let c =
            Config::parse(&text, |k| (k == "CAKELINK_DESTINATION_META_MAIN_ACCESS_TOKEN").then(|| "env-token".into()))
                .unwrap();
        let f = &c.forward;
        assert_eq!(f.lease, Duration::from_secs(30));
        assert_eq!(f.destinations.len(), 4);
        let meta = &f.destinations[0];
        assert_eq!(meta.events, Some(vec!["Purchase".to_owned()]));
        assert!(meta.clicks && meta.enabled && !meta.dry_run);
        assert_eq!(meta.event_map["Lead"], "CompleteRegistration");
        assert_eq!((meta.max_attempts, meta.timeout), (10, Duration::from_secs(10)));
        match &meta.platform {
            PlatformConfig::Meta(m) => {
                assert_eq!(m.access_token.expose(), "env-token");
                assert_eq!(m.graph_url, "https://graph.facebook.com");
                assert_eq!(format!("{:?}", m.access_token), "[redacted]");
            }
            other => panic!("{other:?}"),
        }
        match &f.destinations[1].platform {
            PlatformConfig::Google(g) => {
                // The Data Manager API is the default; a developer token left in the file
                // is kept but not needed.
                assert_eq!(g.api, GoogleApi::DataManager);
                assert_eq!(g.customer_id, "1234567890");
                assert_eq!(g.datamanager_url, "https://datamanager.googleapis.com");
                assert_eq!(g.token_url, "https://oauth2.googleapis.com/token");
                assert_eq!(g.consent.as_deref(), Some("GRANTED"));
                assert!(g.developer_token.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(f.destinations[2].dry_run);
        // The disabled webhook gets no new deliveries.
        let routes = f.routes();
        assert_eq!(routes.destinations().collect::<Vec<_>>(), ["meta-main", "ads", "tt"]);
        assert!(routes.wants_clicks());
    }

    #[test]
    fn destination_errors_name_their_key() {
        let bad = r#"
[forward]
poll_ms = 1
[[destinations]]
name = "a"
type = "meta"
pixel_id = "px"
graph_url = "ftp://x"
colour = "red"
[[destinations]]
name = "a"
type = "google"
api = "ads"
customer_id = "123"
[[destinations]]
type = "carrier-pigeon"
[[destinations]]
name = "w"
type = "webhook"
timeout_secs = 200
url = "not a url"
secret = "s"
max_attempts = 0
event_map = { Lead = 3 }
enabled = "yes"
[[destinations]]
name = "g"
type = "google"
api = "adwords"
customer_id = "123"
conversion_action = "1"
client_id = "c"
client_secret = "s"
refresh_token = "r"
datamanager_url = "not a url"
"#;
        let errors = parse(&format!("{GOOD}{bad}")).unwrap_err().0;
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "forward.poll_ms",
            "destinations[0].pixel_id",
            "destinations[0].access_token",
            "destinations[0].graph_url",
            "destinations[0].colour",
            "destinations[1].name",
            "destinations[1].conversion_action",
            "destinations[1].developer_token",
            "destinations[1].refresh_token",
            "destinations[2].name",
            "destinations[2].type",
            "destinations[3].url",
            "destinations[3].timeout_secs",
            "destinations[3].max_attempts",
            "destinations[3].event_map.Lead",
            "destinations[3].enabled",
            "destinations[4].api",
            "destinations[4].datamanager_url",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let token = errors.iter().find(|e| e.key == "destinations[0].access_token").unwrap();
        assert!(token.message.contains("CAKELINK_DESTINATION_A_ACCESS_TOKEN"), "{}", token.message);
        let api = errors.iter().find(|e| e.key == "destinations[4].api").unwrap();
        assert!(api.message.contains("\"data_manager\" or \"ads\""), "{}", api.message);
        // The Data Manager API needs no developer token.
        assert!(!keys.contains(&"destinations[4].developer_token"), "{keys:?}");
    }

    #[test]
    fn google_takes_the_ads_api_with_a_developer_token_and_its_own_urls() {
        let ads = r#"
[[destinations]]
name = "gads"
type = "google"
api = "ads"
customer_id = "123-456-7890"
conversion_action = "987"
developer_token = "dev"
client_id = "cid"
client_secret = "secret"
refresh_token = "refresh"
api_url = "http://127.0.0.1:9/"
datamanager_url = "http://127.0.0.1:8"
token_url = "http://127.0.0.1:7/token"
"#;
        let c = parse(&format!("{GOOD}{ads}")).unwrap();
        match &c.forward.destinations[0].platform {
            PlatformConfig::Google(g) => {
                assert_eq!(g.api, GoogleApi::Ads);
                assert_eq!(g.developer_token.as_ref().map(|t| t.expose()), Some("dev"));
                assert_eq!(
                    (g.api_url.as_str(), g.datamanager_url.as_str()),
                    ("http://127.0.0.1:9", "http://127.0.0.1:8")
                );
                assert_eq!(g.token_url, "http://127.0.0.1:7/token");
            }
            other => panic!("{other:?}"),
        }
        let without_token = ads.replace("developer_token = \"dev\"\n", "");
        let errors = parse(&format!("{GOOD}{without_token}")).unwrap_err().0;
        assert!(errors.iter().any(|e| e.key == "destinations[0].developer_token"), "{errors:?}");
        let data_manager = without_token.replace("api = \"ads\"", "api = \"data_manager\"");
        assert!(parse(&format!("{GOOD}{data_manager}")).is_ok());
    }
}
