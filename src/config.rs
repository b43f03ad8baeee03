//! Configuration: one TOML file, then `CAKELINK_*` environment overrides for secrets and
//! the listen address.
//!
//! The file is read into a TOML tree and checked key by key, so that `check-config`
//! (and `serve`, before it binds anything) reports every error at once with the key that
//! holds it, including unknown keys: a typo must not silently fall back to a default.
//!
//! Destinations' credentials can come from the environment too, as
//! `CAKELINK_DESTINATION_<NAME>_<KEY>` (name and key upper-cased, other characters `_`),
//! e.g. `CAKELINK_DESTINATION_META_MAIN_ACCESS_TOKEN`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::forward::google::GoogleConfig;
use crate::forward::meta::MetaConfig;
use crate::forward::tiktok::TikTokConfig;
use crate::forward::webhook::WebhookConfig;
use crate::forward::{Destination, ForwardConfig, PlatformConfig};
use crate::links::validate_link;
use crate::model::{Link, LinkSource, LinkStatus};
use crate::networks::Network;
use crate::store::spool::SpoolConfig;
use crate::store::Backend;

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `[server]`
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base URL the outside world reaches cakelink at; used to print postback URLs.
    pub public_url: String,
    /// A connection that has not sent a complete request head by then is closed.
    pub header_read_timeout: Duration,
    /// A request target (path and query) longer than this gets `414`.
    pub max_target_bytes: usize,
    /// Request headers larger than this in total get `431`.
    pub max_header_bytes: usize,
    /// A postback body larger than this gets `413`.
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a shutdown may take in all: finishing in-flight requests, then replaying
    /// or syncing the outage spool and flushing the store.
    pub shutdown_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is
    /// closed (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// With both set, cakelink speaks HTTPS (HTTP/1.1 and HTTP/2 by ALPN); SIGHUP reloads
    /// the files.
    pub tls: Option<TlsFiles>,
    /// Proxies whose `X-Forwarded-For` hop is believed when checking a postback
    /// allowlist; empty believes no header.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[server] tls_cert` and `tls_key`: PEM files, read at start and on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[privacy]`
#[derive(Clone, Debug, Default)]
pub struct PrivacyConfig {
    /// Store only the visitor's network (/24 for IPv4, /48 for IPv6), never the address.
    pub anonymize_ip: bool,
}

/// `[store]`
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub backend: Backend,
    pub attribution: Duration,
    pub postback_grace: Duration,
    pub event_log_max: usize,
    /// Where clicks and postbacks wait while the store is down (`spool_path`,
    /// `spool_max_bytes`; fsync'd every `fsync_ms`).
    pub spool: SpoolConfig,
}

impl StoreConfig {
    /// How long a click stays resolvable.
    pub fn click_ttl(&self) -> Duration {
        self.attribution + self.postback_grace
    }
}

/// `[security]`
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    pub secret: Secret,
    pub previous_secrets: Vec<Secret>,
    pub admin_token: Secret,
    pub postback_key: Secret,
}

/// The whole, checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub security: SecurityConfig,
    pub privacy: PrivacyConfig,
    pub networks: BTreeMap<String, Network>,
    pub links: Vec<Link>,
    /// `[forward]` and `[[destinations]]`: where conversions are forwarded.
    pub forward: ForwardConfig,
    /// `[dashboard]`: the web dashboard under `/ui/`.
    pub dashboard: crate::dashboard::DashboardConfig,
    /// Things that work but should be fixed (example secrets, say).
    pub warnings: Vec<String>,
}

/// One problem, with the key that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} error(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Values that mark an unchanged example config.
const EXAMPLE_SECRETS: &[&str] = &["change-me", "change-me-too", "change-me-three"];

impl Config {
    /// Reads `path` and applies overrides from `env` (a lookup, so tests never touch the
    /// process environment).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError { key: path.display().to_string(), message: format!("cannot read: {e}") }])
        })?;
        Config::parse(&text, env)
    }

    /// Parses config text. Relative paths (the store's `path`) are taken from the
    /// directory the process runs in.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError { key: "(file)".into(), message: e.to_string().trim().to_owned() }])
        })?;
        let mut errors = Vec::new();
        let config = read(&root, &mut errors, &env);
        if errors.is_empty() {
            if let Some(config) = config {
                return Ok(config);
            }
        }
        Err(ConfigErrors(errors))
    }
}

/// Reads one TOML table, recording errors and which keys it used.
struct Section<'a> {
    path: String,
    table: Option<&'a toml::Table>,
    used: HashSet<&'static str>,
}

impl<'a> Section<'a> {
    fn new(path: impl Into<String>, value: Option<&'a toml::Value>, errors: &mut Vec<ConfigError>) -> Section<'a> {
        let path = path.into();
        let table = match value {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                errors.push(ConfigError { key: path.clone(), message: "must be a table".into() });
                None
            }
        };
        Section { path, table, used: HashSet::new() }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.used.insert(key);
        self.table?.get(key)
    }

    fn err(&self, errors: &mut Vec<ConfigError>, key: &str, message: impl Into<String>) {
        errors.push(ConfigError { key: self.key(key), message: message.into() });
    }

    fn string(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<String> {
        match self.raw(key)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.err(errors, key, "must be a string");
                None
            }
        }
    }

    fn uint(&mut self, key: &'static str, min: u64, max: u64, errors: &mut Vec<ConfigError>) -> Option<u64> {
        match self.raw(key)? {
            toml::Value::Integer(n) if (*n as i128) >= min as i128 && (*n as i128) <= max as i128 => Some(*n as u64),
            toml::Value::Integer(_) => {
                self.err(errors, key, format!("must be between {min} and {max}"));
                None
            }
            _ => {
                self.err(errors, key, "must be a whole number");
                None
            }
        }
    }

    fn boolean(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<bool> {
        match self.raw(key)? {
            toml::Value::Boolean(b) => Some(*b),
            _ => {
                self.err(errors, key, "must be true or false");
                None
            }
        }
    }

    fn strings(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<Vec<String>> {
        match self.raw(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        _ => self.err(errors, &format!("{key}[{i}]"), "must be a string"),
                    }
                }
                Some(out)
            }
            _ => {
                self.err(errors, key, "must be a list of strings");
                None
            }
        }
    }

    fn bool(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Option<bool> {
        match self.raw(key)? {
            toml::Value::Boolean(b) => Some(*b),
            _ => {
                self.err(errors, key, "must be true or false");
                None
            }
        }
    }

    /// A list of networks in CIDR notation; a bare address is a network of one.
    fn cidrs(&mut self, key: &'static str, errors: &mut Vec<ConfigError>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, text) in self.strings(key, errors).unwrap_or_default().iter().enumerate() {
            let parsed =
                text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.err(
                    errors,
                    &format!("{key}[{i}]"),
                    format!("{text:?} is not a network like \"203.0.113.0/24\" or \"2001:db8::/32\""),
                ),
            }
        }
        out
    }

    /// Reports keys nobody asked for: they are typos or keys of another version.
    fn finish(self, errors: &mut Vec<ConfigError>) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.used.contains(key.as_str()) {
                self.err(errors, &written_key(key), "unknown key");
            }
        }
    }
}

fn read(root: &toml::Table, errors: &mut Vec<ConfigError>, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
    let mut warnings = Vec::new();
    let known: HashSet<&str> =
        ["server", "store", "security", "privacy", "networks", "links", "forward", "destinations", "dashboard"].into();
    for key in root.keys() {
        if !known.contains(key.as_str()) {
            errors.push(ConfigError { key: written_key(key), message: "unknown section".into() });
        }
    }

    // [server]
    let mut s = Section::new("server", root.get("server"), errors);
    let listen_file = s.string("listen", errors);
    let listen_text = env("CAKELINK_LISTEN").or(listen_file).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            s.err(errors, "listen", format!("{listen_text:?} is not an address like 127.0.0.1:8080"));
            None
        }
    };
    let public_url = s.string("public_url", errors);
    let public_url = match public_url {
        Some(u) => match url::Url::parse(&u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.has_host() => Some(u.trim_end_matches('/').to_owned()),
            _ => {
                s.err(errors, "public_url", format!("{u:?} is not an absolute http(s) URL"));
                None
            }
        },
        None => listen.map(|a| format!("http://{a}")),
    };
    let tls = match (s.string("tls_cert", errors), s.string("tls_key", errors)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: PathBuf::from(cert), key: PathBuf::from(key) }),
        (None, None) => None,
        (Some(_), None) => {
            s.err(errors, "tls_key", "is required with tls_cert (the certificate's private key, PEM)");
            None
        }
        (None, Some(_)) => {
            s.err(errors, "tls_cert", "is required with tls_key (the certificate chain, PEM)");
            None
        }
    };
    let header_read_timeout = s.uint("header_read_timeout_secs", 1, 3600, errors).unwrap_or(10);
    let max_target_bytes = s.uint("max_target_bytes", 256, 65_536, errors).unwrap_or(8 * 1024) as usize;
    let max_header_bytes = s.uint("max_header_bytes", 1024, 1 << 20, errors).unwrap_or(16 * 1024) as usize;
    let max_body_bytes = s.uint("max_body_bytes", 1024, 16 << 20, errors).unwrap_or(64 * 1024) as usize;
    let max_connections = s.uint("max_connections", 1, 1_000_000, errors).unwrap_or(10_000) as usize;
    let shutdown_timeout = s.uint("shutdown_timeout_secs", 0, 3600, errors).unwrap_or(30);
    let idle_timeout = s.uint("idle_timeout_secs", 1, 3600, errors).unwrap_or(60);
    let trusted_proxies = s.cidrs("trusted_proxies", errors);
    s.finish(errors);

    // [store]
    let mut st = Section::new("store", root.get("store"), errors);
    let backend_name = st.string("backend", errors).unwrap_or_else(|| "embedded".into());
    let path = st.string("path", errors);
    let url_file = st.string("url", errors);
    let url = env("CAKELINK_STORE_URL").or(url_file);
    let urls = st.strings("urls", errors);
    let fsync_ms = st.uint("fsync_ms", 1, 60_000, errors).unwrap_or(1000);
    let backend = match backend_name.as_str() {
        "embedded" => Some(Backend::Embedded {
            path: PathBuf::from(path.unwrap_or_else(|| "data/cakelink.db".into())),
            fsync: Duration::from_millis(fsync_ms),
        }),
        "redis" => match (url, urls) {
            (Some(_), Some(_)) => {
                st.err(errors, "urls", "give either url (one Redis) or urls (a Redis Cluster), not both");
                None
            }
            (Some(url), None) => check_redis_url(&st, "url", &url, errors).then_some(Backend::Redis { url }),
            (None, Some(urls)) if !urls.is_empty() => {
                let ok = urls.iter().all(|u| check_redis_url(&st, "urls", u, errors));
                ok.then_some(Backend::RedisCluster { urls })
            }
            _ => {
                st.err(errors, "url", "the redis backend needs url (or urls for a cluster)");
                None
            }
        },
        other => {
            st.err(errors, "backend", format!("{other:?} is not a backend; use \"embedded\" or \"redis\""));
            None
        }
    };
    let attribution_days = st.uint("attribution_days", 1, 365, errors).unwrap_or(30);
    let grace_days = st.uint("postback_grace_days", 0, 365, errors).unwrap_or(7);
    let event_log_max = st.uint("event_log_max", 1, 10_000_000, errors).unwrap_or(10_000) as usize;
    // The outage spool: beside the embedded data by default, so one directory tree
    // holds everything the process keeps.
    let spool_path = match st.string("spool_path", errors) {
        Some(p) if p.trim().is_empty() => {
            st.err(errors, "spool_path", "must not be empty");
            None
        }
        Some(p) => Some(PathBuf::from(p)),
        None => Some(match &backend {
            Some(Backend::Embedded { path, .. }) => path.with_extension("spool"),
            _ => PathBuf::from("data/cakelink.spool"),
        }),
    };
    let spool_max_bytes = st.uint("spool_max_bytes", 4096, 1 << 40, errors).unwrap_or(4 << 30);
    if let (Some(spool), Some(Backend::Embedded { path, .. })) = (&spool_path, &backend) {
        if spool == path {
            st.err(errors, "spool_path", "must not be the embedded store's own directory");
        }
    }
    st.finish(errors);

    // [security]
    let mut sec = Section::new("security", root.get("security"), errors);
    let mut secret = |sec: &mut Section, key: &'static str, var: &str, errors: &mut Vec<ConfigError>| {
        let file = sec.string(key, errors);
        let value = env(var).or(file);
        match value {
            Some(v) if v.trim().is_empty() => {
                sec.err(errors, key, "must not be empty");
                None
            }
            Some(v) => {
                if EXAMPLE_SECRETS.contains(&v.as_str()) {
                    warnings.push(format!(
                        "security.{key} is the example value; set {var} or edit the file before going live"
                    ));
                } else if v.len() < 16 {
                    warnings
                        .push(format!("security.{key} is shorter than 16 characters; a longer random value is safer"));
                }
                Some(Secret::new(v))
            }
            None => {
                sec.err(errors, key, format!("is required (or set {var})"));
                None
            }
        }
    };
    let tag_secret = secret(&mut sec, "secret", "CAKELINK_SECRET", errors);
    let admin_token = secret(&mut sec, "admin_token", "CAKELINK_ADMIN_TOKEN", errors);
    let postback_key = secret(&mut sec, "postback_key", "CAKELINK_POSTBACK_KEY", errors);
    if let Some(key) = &postback_key {
        if !key.expose().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
            sec.err(errors, "postback_key", "may hold only letters, digits and - _ . ~ (it is a URL path segment)");
        }
    }
    let previous_secrets =
        sec.strings("previous_secrets", errors).unwrap_or_default().into_iter().map(Secret::new).collect();
    sec.finish(errors);

    // [privacy]
    let mut pr = Section::new("privacy", root.get("privacy"), errors);
    let anonymize_ip = pr.bool("anonymize_ip", errors).unwrap_or(false);
    pr.finish(errors);

    // [networks.*]
    let mut networks = BTreeMap::new();
    networks.insert("cake".to_owned(), Network::cake());
    match root.get("networks") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, value) in t {
                if let Some(n) = read_network(name, value, errors) {
                    networks.insert(name.clone(), n);
                }
            }
        }
        Some(_) => errors.push(ConfigError { key: "networks".into(), message: "must be a table of networks".into() }),
    }

    // [[links]]
    let mut links = Vec::new();
    match root.get("links") {
        None => {}
        Some(toml::Value::Array(items)) => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key = format!("links[{i}]");
                if let Some(link) = read_link(&key, item, &networks, errors) {
                    if !seen.insert(link.key()) {
                        errors.push(ConfigError {
                            key: format!("{key}.slug"),
                            message: format!("{} is defined twice", link.key()),
                        });
                    }
                    links.push(link);
                }
            }
        }
        Some(_) => {
            errors.push(ConfigError { key: "links".into(), message: "must be an array of tables ([[links]])".into() })
        }
    }

    // [forward] and [[destinations]]
    let mut fw = Section::new("forward", root.get("forward"), errors);
    let lease_secs = fw.uint("lease_secs", 1, 86_400, errors).unwrap_or(120);
    let poll_ms = fw.uint("poll_ms", 10, 60_000, errors).unwrap_or(1000);
    let keep_days = fw.uint("keep_days", 1, 3650, errors).unwrap_or(30);
    fw.finish(errors);
    let mut destinations = Vec::new();
    match root.get("destinations") {
        None => {}
        Some(toml::Value::Array(items)) => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key = format!("destinations[{i}]");
                if let Some(d) = read_destination(&key, item, env, errors) {
                    if d.timeout.as_secs() >= lease_secs {
                        errors.push(ConfigError {
                            key: format!("{key}.timeout_secs"),
                            message: format!(
                                "must be shorter than forward.lease_secs ({lease_secs}): a request must end before its lease"
                            ),
                        });
                    }
                    if !seen.insert(d.name.clone()) {
                        errors.push(ConfigError {
                            key: format!("{key}.name"),
                            message: format!("{:?} is used by another destination; names must be unique", d.name),
                        });
                    }
                    destinations.push(d);
                }
            }
        }
        Some(_) => errors.push(ConfigError {
            key: "destinations".into(),
            message: "must be an array of tables ([[destinations]])".into(),
        }),
    }

    let dashboard = crate::dashboard::read_config(root.get("dashboard"), errors);

    Some(Config {
        server: ServerConfig {
            listen: listen?,
            public_url: public_url?,
            header_read_timeout: Duration::from_secs(header_read_timeout),
            max_target_bytes,
            max_header_bytes,
            max_body_bytes,
            max_connections,
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
            idle_timeout: Duration::from_secs(idle_timeout),
            tls,
            trusted_proxies,
        },
        store: StoreConfig {
            backend: backend?,
            attribution: Duration::from_secs(attribution_days * 86_400),
            postback_grace: Duration::from_secs(grace_days * 86_400),
            event_log_max,
            spool: SpoolConfig {
                path: spool_path?,
                max_bytes: spool_max_bytes,
                fsync: Duration::from_millis(fsync_ms),
            },
        },
        security: SecurityConfig {
            secret: tag_secret?,
            previous_secrets,
            admin_token: admin_token?,
            postback_key: postback_key?,
        },
        privacy: PrivacyConfig { anonymize_ip },
        networks,
        links,
        forward: ForwardConfig {
            lease: Duration::from_secs(lease_secs),
            poll: Duration::from_millis(poll_ms),
            keep_settled: Duration::from_secs(keep_days * 86_400),
            destinations,
        },
        dashboard,
        warnings,
    })
}

/// A key as it would be written in the file: bare when it can be, quoted otherwise (an
/// empty key, or one with spaces or dots, must still show in the error).
fn written_key(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The environment variable that can hold `key` of destination `name`.
fn destination_var(name: &str, key: &str) -> String {
    let upper = |t: &str| -> String {
        t.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
    };
    format!("CAKELINK_DESTINATION_{}_{}", upper(name), upper(key))
}

/// An absolute http(s) URL, without a trailing slash.
fn http_url(s: &mut Section, key: &'static str, default: &str, errors: &mut Vec<ConfigError>) -> String {
    let text = s.string(key, errors).unwrap_or_else(|| default.to_owned());
    match url::Url::parse(&text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => text.trim_end_matches('/').to_owned(),
        _ => {
            s.err(errors, key, format!("{text:?} is not an absolute http(s) URL"));
            String::new()
        }
    }
}

fn read_destination(
    key: &str,
    value: &toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Destination> {
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
    let secret = |s: &mut Section, key: &'static str, errors: &mut Vec<ConfigError>| -> Secret {
        let var = destination_var(&name, key);
        match env(&var).or_else(|| s.string(key, errors)) {
            Some(v) if !v.trim().is_empty() => Secret::new(v),
            _ => {
                s.err(errors, key, format!("is required (or set {var})"));
                Secret::new("")
            }
        }
    };
    let required = |s: &mut Section, key: &'static str, what: &str, errors: &mut Vec<ConfigError>| -> String {
        match s.string(key, errors) {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => {
                s.err(errors, key, format!("is required: {what}"));
                String::new()
            }
        }
    };
    let platform = match kind.as_deref() {
        Some("meta") => {
            let pixel_id = required(&mut s, "pixel_id", "the Meta pixel (dataset) id", errors);
            if !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
                s.err(errors, "pixel_id", format!("{pixel_id:?} is not a pixel id (digits only)"));
            }
            Some(PlatformConfig::Meta(MetaConfig {
                pixel_id,
                access_token: secret(&mut s, "access_token", errors),
                graph_url: http_url(&mut s, "graph_url", "https://graph.facebook.com", errors),
                version: s.string("api_version", errors).unwrap_or_else(|| "v21.0".into()),
                test_event_code: s.string("test_event_code", errors),
            }))
        }
        Some("google") => {
            let digits = |v: String| v.chars().filter(|c| *c != '-').collect::<String>();
            let customer_id = digits(required(&mut s, "customer_id", "the Google Ads account id", errors));
            if !customer_id.bytes().all(|b| b.is_ascii_digit()) {
                s.err(errors, "customer_id", format!("{customer_id:?} is not a customer id like 123-456-7890"));
            }
            let conversion_action =
                required(&mut s, "conversion_action", "customers/{id}/conversionActions/{id} or the action id", errors);
            let login_customer_id = s.string("login_customer_id", errors).map(digits);
            let consent = match s.string("consent", errors).as_deref() {
                None => None,
                Some("granted") => Some("GRANTED".to_owned()),
                Some("denied") => Some("DENIED".to_owned()),
                Some(other) => {
                    s.err(errors, "consent", format!("{other:?} is not \"granted\" or \"denied\""));
                    None
                }
            };
            Some(PlatformConfig::Google(GoogleConfig {
                customer_id,
                conversion_action,
                login_customer_id,
                developer_token: secret(&mut s, "developer_token", errors),
                client_id: required(&mut s, "client_id", "the OAuth2 client id", errors),
                client_secret: secret(&mut s, "client_secret", errors),
                refresh_token: secret(&mut s, "refresh_token", errors),
                api_url: http_url(&mut s, "api_url", "https://googleads.googleapis.com", errors),
                token_url: http_url(&mut s, "token_url", "https://oauth2.googleapis.com/token", errors),
                consent,
            }))
        }
        Some("tiktok") => Some(PlatformConfig::TikTok(TikTokConfig {
            pixel_id: required(&mut s, "pixel_id", "the TikTok pixel code", errors),
            access_token: secret(&mut s, "access_token", errors),
            api_url: http_url(&mut s, "api_url", "https://business-api.tiktok.com", errors),
            test_event_code: s.string("test_event_code", errors),
        })),
        Some("webhook") => {
            let url = required(&mut s, "url", "where to POST", errors);
            if !url.is_empty() && !url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                s.err(errors, "url", format!("{url:?} is not an absolute http(s) URL"));
            }
            Some(PlatformConfig::Webhook(WebhookConfig { url, secret: secret(&mut s, "secret", errors) }))
        }
        Some(other) => {
            s.err(errors, "type", format!("{other:?} is not a destination type; use meta, google, tiktok or webhook"));
            None
        }
        None => {
            s.err(errors, "type", "is required: meta, google, tiktok or webhook");
            None
        }
    };
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

fn check_redis_url(s: &Section, key: &str, url: &str, errors: &mut Vec<ConfigError>) -> bool {
    let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"));
    if !ok {
        s.err(errors, key, format!("{url:?} is not a redis:// URL"));
    }
    ok
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn read_network(name: &str, value: &toml::Value, errors: &mut Vec<ConfigError>) -> Option<Network> {
    let mut s = Section::new(format!("networks.{name}"), Some(value), errors);
    if !valid_name(name) {
        errors.push(ConfigError {
            key: format!("networks.{name}"),
            message: "a network name may hold only letters, digits and - _ .".into(),
        });
    }
    // `cake` starts from the built-in profile; a new network needs at least `subid`.
    let base = if name == "cake" { Some(Network::cake()) } else { None };
    let subid = s.string("subid", errors);
    let subid = match (subid, &base) {
        (Some(v), _) => v,
        (None, Some(b)) => b.subid.clone(),
        (None, None) => {
            s.err(errors, "subid", "is required: the offer-URL parameter that carries the click id");
            String::new()
        }
    };
    let cake = Network::cake();
    let field = |s: &mut Section, key: &'static str, default: String, errors: &mut Vec<ConfigError>| {
        let v = s.string(key, errors).unwrap_or(default);
        if v.trim().is_empty() {
            s.err(errors, key, "must not be empty");
        }
        v.to_ascii_lowercase()
    };
    let click_id_field =
        field(&mut s, "click_id_field", base.as_ref().map_or(subid.clone(), |b| b.click_id_field.clone()), errors);
    let transaction_field = field(&mut s, "transaction_field", cake.transaction_field.clone(), errors);
    let value_field = field(&mut s, "value_field", cake.value_field.clone(), errors);
    let item_field = field(&mut s, "item_field", cake.item_field.clone(), errors);
    let event_field = s.string("event_field", errors).map(|v| v.to_ascii_lowercase());
    let passthrough = s
        .strings("passthrough", errors)
        .unwrap_or_else(|| base.as_ref().map(|b| b.passthrough.clone()).unwrap_or_default());
    if passthrough.iter().any(|p| p == &subid) {
        s.err(errors, "passthrough", format!("must not include the click-id parameter {subid:?}: it is reserved"));
    }
    let currency = s.string("currency", errors).unwrap_or_else(|| cake.currency.clone());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        s.err(errors, "currency", format!("{currency:?} is not an ISO 4217 code like \"USD\""));
    }
    let postback_template = s.string("postback_template", errors).unwrap_or_else(|| match &base {
        Some(b) => b.postback_template.clone(),
        None => {
            format!("{c}={{{c}}}&{t}={{{t}}}&{v}={{{v}}}", c = click_id_field, t = transaction_field, v = value_field)
        }
    });
    let postback_allowlist = s.cidrs("postback_allowlist", errors);
    s.finish(errors);
    if subid.is_empty() {
        return None;
    }
    Some(Network {
        name: name.to_owned(),
        subid,
        passthrough,
        currency,
        click_id_field,
        transaction_field,
        value_field,
        item_field,
        event_field,
        postback_template,
        postback_allowlist,
    })
}

fn read_link(
    key: &str,
    value: &toml::Value,
    networks: &BTreeMap<String, Network>,
    errors: &mut Vec<ConfigError>,
) -> Option<Link> {
    let mut s = Section::new(key, Some(value), errors);
    let slug = s.string("slug", errors);
    let network = s.string("network", errors).unwrap_or_else(|| "cake".into());
    let offer = s.string("offer", errors);
    let redirect = s.uint("redirect", 100, 999, errors).unwrap_or(302) as u16;
    let status = match s.string("status", errors).as_deref() {
        None | Some("active") => LinkStatus::Active,
        Some("paused") => LinkStatus::Paused,
        Some(other) => {
            s.err(errors, "status", format!("{other:?} is not \"active\" or \"paused\""));
            LinkStatus::Active
        }
    };
    let fallback = s.string("fallback", errors);
    let event = s.string("event", errors);
    s.finish(errors);
    let (Some(slug), Some(offer)) = (slug, offer) else {
        s_missing(key, errors);
        return None;
    };
    let link = Link { network, slug, offer, redirect, status, fallback, event, source: LinkSource::Config };
    let problems = validate_link(&link, networks);
    for (field, message) in &problems {
        errors.push(ConfigError { key: format!("{key}.{field}"), message: message.clone() });
    }
    problems.is_empty().then_some(link)
}

fn s_missing(key: &str, errors: &mut Vec<ConfigError>) {
    errors.push(ConfigError { key: key.to_owned(), message: "a link needs slug and offer".into() });
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
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

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
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

    #[test]
    fn networks_override_cake_or_add_new_ones() {
        let text = format!(
            "{GOOD}\n[networks.cake]\ncurrency = \"EUR\"\n[networks.tune]\nsubid = \"aff_sub\"\ntransaction_field = \"transaction_id\"\nvalue_field = \"payout\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.networks["cake"].currency, "EUR");
        assert_eq!(c.networks["cake"].subid, "s2");
        let tune = &c.networks["tune"];
        assert_eq!(
            (tune.subid.as_str(), tune.click_id_field.as_str(), tune.value_field.as_str()),
            ("aff_sub", "aff_sub", "payout")
        );
        assert_eq!(tune.postback_template, "aff_sub={aff_sub}&transaction_id={transaction_id}&payout={payout}");
    }

    #[test]
    fn the_spool_sits_beside_the_store_unless_configured() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store.spool.path, PathBuf::from("x.spool"));
        assert_eq!(c.store.spool.max_bytes, 4 << 30);
        let text =
            GOOD.replace("path = \"x\"", "path = \"x\"\nspool_path = \"/var/spool/cakelink\"\nspool_max_bytes = 8192");
        let c = parse(&text).unwrap();
        assert_eq!(c.store.spool.path, PathBuf::from("/var/spool/cakelink"));
        assert_eq!(c.store.spool.max_bytes, 8192);
        let text = GOOD.replace("path = \"x\"", "path = \"x\"\nspool_path = \"x\"\nspool_max_bytes = 10");
        let mut keys: Vec<String> = parse(&text).unwrap_err().0.into_iter().map(|e| e.key).collect();
        keys.sort();
        assert_eq!(keys, ["store.spool_max_bytes", "store.spool_path"]);
    }

    #[test]
    fn tls_needs_both_files() {
        let text = GOOD.replace("[store]", "tls_cert = \"c.pem\"\n[store]");
        let errors = parse(&text).unwrap_err().0;
        assert_eq!(errors[0].key, "server.tls_key");
        let text = GOOD.replace("[store]", "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[store]");
        let tls = parse(&text).unwrap().server.tls.unwrap();
        assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some("c.pem"), Some("k.pem")));
        assert!(parse(GOOD).unwrap().server.tls.is_none());
    }

    #[test]
    fn allowlists_and_proxies_are_networks() {
        let text = GOOD.replace("[store]", "trusted_proxies = [\"10.0.0.1\"]\n[store]")
            + "[networks.cake]\npostback_allowlist = [\"203.0.113.7/24\", \"2001:db8::/32\"]\n[privacy]\nanonymize_ip = true\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.server.trusted_proxies, ["10.0.0.1/32".parse::<ipnet::IpNet>().unwrap()]);
        let cake = &c.networks["cake"];
        assert_eq!(cake.postback_allowlist[0].to_string(), "203.0.113.0/24");
        assert!(cake.accepts_postback_from("203.0.113.200".parse().unwrap()));
        assert!(cake.accepts_postback_from("2001:db8:1::9".parse().unwrap()));
        assert!(!cake.accepts_postback_from("198.51.100.1".parse().unwrap()));
        assert!(c.privacy.anonymize_ip);
        assert!(!parse(GOOD).unwrap().privacy.anonymize_ip);

        let bad = GOOD.to_owned() + "[networks.cake]\npostback_allowlist = [\"203.0.113.0/33\", \"nope\"]\n[privacy]\nanonymize_ip = \"yes\"\n";
        let keys: Vec<String> = parse(&bad).unwrap_err().0.into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            ["privacy.anonymize_ip", "networks.cake.postback_allowlist[0]", "networks.cake.postback_allowlist[1]"]
        );
    }

    /// Found by the `config` fuzz target: an empty key was reported as an empty name.
    #[test]
    fn unknown_keys_are_shown_as_written() {
        let text = format!("\"\" = 302\n\"a b\" = 1\n{}", GOOD.replace("[store]", "\"\" = 1\n[store]"));
        let keys: Vec<String> = parse(&text).unwrap_err().0.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["\"\"", "\"a b\"", "server.\"\""]);
    }

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
                assert_eq!(g.customer_id, "1234567890");
                assert_eq!(g.token_url, "https://oauth2.googleapis.com/token");
                assert_eq!(g.consent.as_deref(), Some("GRANTED"));
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
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let token = errors.iter().find(|e| e.key == "destinations[0].access_token").unwrap();
        assert!(token.message.contains("CAKELINK_DESTINATION_A_ACCESS_TOKEN"), "{}", token.message);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../config/cakelink.toml");
        let c = parse(text).unwrap();
        assert!(c.links.iter().any(|l| l.slug == "demo"));
    }
}
