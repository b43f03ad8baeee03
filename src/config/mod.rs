//! Configuration: one TOML file, then `CAKELINK_*` environment overrides for secrets and
//! the listen address.
//!
//! The file is read into a TOML tree and checked key by key, so that `check-config`
//! (and `serve`, before it binds anything) reports every error at once with the key that
//! holds it, including unknown keys: a typo must not silently fall back to a default.
//! `reader` holds the small typed reader that makes this possible; each section is
//! read in its own file, next to its type:
//!
//! - `server`: `[server]`, where cakelink listens and its limits.
//! - `store`: `[store]`, the backend, click lifetimes and the outage spool.
//! - `security`: `[security]`, the click-id key, the admin token and the postback key.
//! - `privacy`: `[privacy]`, what a stored click keeps of the visitor.
//! - `networks`: `[networks.<name>]`, affiliate networks (CAKE built in).
//! - `links`: `[[links]]`, links defined in the file; `routing` reads their offers and
//!   rules (and the links API's, from JSON).
//! - `geo`: `[geo]`, where a visitor's country comes from.
//! - `forward` and `platforms`: `[forward]` and `[[destinations]]`, where conversions
//!   are forwarded. Destinations' credentials can come from the environment too, as
//!   `CAKELINK_DESTINATION_<NAME>_<KEY>` (name and key upper-cased, other characters
//!   `_`), e.g. `CAKELINK_DESTINATION_META_MAIN_ACCESS_TOKEN`.
//!
//! Dependencies run one way: this module reads into the types of [`crate::forward`],
//! [`crate::store`], [`crate::networks`], [`crate::links`] and [`crate::model`]; none of
//! them imports it back (secrets live in [`crate::secret`]).

mod dashboard;
mod forward;
mod geo;
mod links;
mod networks;
mod platforms;
mod privacy;
mod reader;
mod routing;
mod security;
mod server;
mod store;

use std::collections::BTreeMap;
use std::path::Path;

pub use self::dashboard::DashboardConfig;
pub use self::geo::GeoConfig;
pub use self::privacy::PrivacyConfig;
pub use self::routing::read_json as read_routing_json;
pub use self::security::SecurityConfig;
pub use self::server::{ServerConfig, TlsFiles};
pub use self::store::StoreConfig;
use crate::forward::ForwardConfig;
use crate::model::Link;
use crate::networks::Network;
pub use crate::secret::Secret;
use reader::{problem, written_key, Env, Errors};

/// The whole, checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[server]`: the listen address, limits and TLS.
    pub server: ServerConfig,
    /// `[store]`: the backend, click lifetimes and the outage spool.
    pub store: StoreConfig,
    /// `[security]`: the keys behind click ids, the API and the postback URL.
    pub security: SecurityConfig,
    /// `[privacy]`: what a stored click keeps of the visitor.
    pub privacy: PrivacyConfig,
    /// `[networks.*]` by name, CAKE always among them, so links and postbacks can name
    /// any of them.
    pub networks: BTreeMap<String, Network>,
    /// `[[links]]`: the links the file defines, already checked against `networks`.
    pub links: Vec<Link>,
    /// `[forward]` and `[[destinations]]`: where conversions are forwarded.
    pub forward: ForwardConfig,
    /// `[dashboard]`: the web dashboard under `/ui/`.
    pub dashboard: DashboardConfig,
    /// `[geo]`: where a visitor's country comes from, for rules by country.
    pub geo: GeoConfig,
    /// Things that work but should be fixed (example secrets, say): reported, not
    /// refused, so the example config runs as is.
    pub warnings: Vec<String>,
}

/// One problem, with the key that holds it (`server.listen`, `links[0].offer`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key as written in the file, with its section (`destinations[1].url`).
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

/// Every problem found in a config file (unknown sections first, then section by
/// section), so one run of `check-config` shows them all.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the configuration:\n{}", .0.len(), list(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One indented line per problem.
fn list(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

/// Why [`Config::load`] gave no config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (missing, a directory, no permission); the I/O error
    /// is kept as the source so the operator sees the system's reason.
    #[error("cannot read")]
    Read(#[source] std::io::Error),
    /// The file was read and its content is wrong: every problem, each with its key.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

/// The top-level tables a file may have; anything else is refused as a typo.
const SECTIONS: &[&str] =
    &["server", "store", "security", "privacy", "networks", "links", "forward", "destinations", "dashboard", "geo"];

impl Config {
    /// Reads `path` and applies overrides from `env` (a lookup, so tests never touch the
    /// process environment).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(LoadError::Read)?;
        Ok(Config::parse(&text, env)?)
    }

    /// Parses config text. Relative paths (the store's `path`) are taken from the
    /// directory the process runs in.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError { key: "(file)".into(), message: e.to_string().trim().to_owned() }])
        })?;
        let mut errors = Vec::new();
        let config = read(&root, &mut errors, &env);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// Reads every section in file order, collecting all problems; `None` when a section
/// could not yield a usable value (its problems are in `errors`).
fn read(root: &toml::Table, errors: &mut Errors, env: Env<'_>) -> Option<Config> {
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problem(errors, written_key(key), "unknown section");
        }
    }
    let mut warnings = Vec::new();
    // Every section is read before any `?`, so a broken section never hides the
    // problems of the ones after it.
    let server = server::read(root.get("server"), env, errors);
    let store = store::read(root.get("store"), env, errors);
    let security = security::read(root.get("security"), env, errors, &mut warnings);
    let privacy = privacy::read(root.get("privacy"), errors);
    let networks = networks::read(root.get("networks"), env, errors);
    let links = links::read(root.get("links"), &networks, errors);
    let forward = forward::read(root.get("forward"), root.get("destinations"), env, errors);
    let dashboard = dashboard::read(root.get("dashboard"), errors);
    let geo = geo::read(root.get("geo"), errors);
    if !geo.is_set() {
        for link in links.iter().filter(|l| l.rules.iter().any(|r| r.uses_country())) {
            warnings.push(format!(
                "link {} has rules by country, but [geo] sets neither mmdb nor header: those rules never match",
                link.key()
            ));
        }
    }
    Some(Config {
        server: server?,
        store: store?,
        security: security?,
        privacy,
        networks,
        links,
        forward,
        dashboard,
        geo,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(super) const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "x"
[security]
secret = "a-long-enough-secret-value"
admin_token = "a-long-enough-admin-token"
postback_key = "a-long-enough-postback-key"
[[links]]
slug = "demo"
offer = "https://offers.example.com/?a=1&c=2"
"#;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, |_| None)
    }

    #[test]
    fn a_minimal_file_is_complete() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.links.len(), 1);
        assert_eq!(c.networks["cake"], Network::cake());
        assert_eq!(c.store.click_ttl(), Duration::from_secs(37 * 86_400));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(format!("{:?}", c.security.secret), "[redacted]");
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let bad = r#"
[server]
listen = "nowhere"
lisen = "typo"
[store]
backend = "postgres"
attribution_days = 0
[security]
secret = ""
[[links]]
slug = "demo"
network = "nope"
offer = "javascript:alert(1)"
redirect = 200
"#;
        let errors = parse(bad).unwrap_err().0;
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "server.listen",
            "server.lisen",
            "store.backend",
            "store.attribution_days",
            "security.secret",
            "security.admin_token",
            "security.postback_key",
            "links[0].network",
            "links[0].offer",
            "links[0].redirect",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn environment_overrides_secrets_and_listen() {
        let c = Config::parse(GOOD, |k| match k {
            "CAKELINK_SECRET" => Some("from-the-environment-123".into()),
            "CAKELINK_LISTEN" => Some("0.0.0.0:9000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.security.secret.expose(), "from-the-environment-123");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
    }

    /// Found by the `config` fuzz target: an empty key was reported as an empty name.
    #[test]
    fn unknown_keys_are_shown_as_written() {
        let text = format!("\"\" = 302\n\"a b\" = 1\n{}", GOOD.replace("[store]", "\"\" = 1\n[store]"));
        let keys: Vec<String> = parse(&text).unwrap_err().0.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["\"\"", "\"a b\"", "server.\"\""]);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../config/cakelink.toml");
        let c = parse(text).unwrap();
        assert!(c.links.iter().any(|l| l.slug == "demo"));
    }
}
