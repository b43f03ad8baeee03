//! `[dashboard]`: whether `/ui/` is served, and how long a sign-in lasts.
//!
//! Read like every other section: each problem is reported with its key, and a key the
//! section does not know is an error, not a silent default.

use std::time::Duration;

use crate::config::ConfigError;

/// `[dashboard]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Serve the dashboard under `/ui/` and send `/` there; off, `/ui/` answers `404`.
    pub enabled: bool,
    /// How long a sign-in lasts (`session_hours`); the cookie expires then too.
    pub session: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { enabled: true, session: Duration::from_secs(12 * 3600) }
    }
}

/// Longest sign-in `session_hours` allows: 30 days.
const MAX_SESSION_HOURS: i64 = 720;

/// Reads the `[dashboard]` table (absent: the defaults), adding any problem to `errors`.
pub fn read(value: Option<&toml::Value>, errors: &mut Vec<ConfigError>) -> DashboardConfig {
    let mut config = DashboardConfig::default();
    let table = match value {
        None => return config,
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            errors.push(error("dashboard", "must be a table"));
            return config;
        }
    };
    for (key, value) in table {
        match (key.as_str(), value) {
            ("enabled", toml::Value::Boolean(b)) => config.enabled = *b,
            ("enabled", _) => errors.push(error("dashboard.enabled", "must be true or false")),
            ("session_hours", toml::Value::Integer(h)) if (1..=MAX_SESSION_HOURS).contains(h) => {
                config.session = Duration::from_secs(*h as u64 * 3600);
            }
            ("session_hours", toml::Value::Integer(_)) => {
                errors.push(error("dashboard.session_hours", &format!("must be between 1 and {MAX_SESSION_HOURS}")))
            }
            ("session_hours", _) => errors.push(error("dashboard.session_hours", "must be a whole number")),
            (other, _) => errors.push(error(&format!("dashboard.{}", written(other)), "unknown key")),
        }
    }
    config
}

/// A key as it would be written in the file: bare when it can be, quoted otherwise.
fn written(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn error(key: &str, message: &str) -> ConfigError {
    ConfigError { key: key.to_owned(), message: message.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (DashboardConfig, Vec<ConfigError>) {
        let root: toml::Table = text.parse().expect("TOML");
        let mut errors = Vec::new();
        (read(root.get("dashboard"), &mut errors), errors)
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").0, DashboardConfig::default());
        let (c, errors) = parse("[dashboard]\nenabled = false\nsession_hours = 2\n");
        assert!(errors.is_empty());
        assert_eq!(c, DashboardConfig { enabled: false, session: Duration::from_secs(7200) });
    }

    #[test]
    fn every_error_names_its_key() {
        let (_, errors) = parse("[dashboard]\nenabled = 1\nsession_hours = 0\ncolour = \"red\"\n");
        let mut keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["dashboard.colour", "dashboard.enabled", "dashboard.session_hours"]);
        let (_, errors) = parse("[dashboard]\nsession_hours = \"12\"\n");
        assert_eq!(errors[0].message, "must be a whole number");
    }
}
