//! `[dashboard]`: whether `/ui/` is served, and how long a sign-in lasts.

use std::time::Duration;

use super::reader::{Errors, Section};

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

/// Longest sign-in `session_hours` allows: 30 days. A stolen cookie should not outlive
/// the owner's memory of having signed in.
const MAX_SESSION_HOURS: u64 = 720;

/// Reads `[dashboard]`; every key has a default, so it always yields a config.
pub(super) fn read(value: Option<&toml::Value>, errors: &mut Errors) -> DashboardConfig {
    let defaults = DashboardConfig::default();
    let mut d = Section::new("dashboard", value, errors);
    let enabled = d.boolean("enabled", errors).unwrap_or(defaults.enabled);
    let session = d
        .uint("session_hours", 1, MAX_SESSION_HOURS, errors)
        .map_or(defaults.session, |hours| Duration::from_secs(hours * 3600));
    d.finish(errors);
    DashboardConfig { enabled, session }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[security]\nsecret = \"s-0123456789abcdef\"\nadmin_token = \"a-0123456789abcdef\"\npostback_key = \"p-0123456789abcdef\"\n";

    #[test]
    fn defaults_and_values() {
        let c = Config::parse(BASE, |_| None).expect("valid");
        assert!(c.dashboard.enabled);
        assert_eq!(c.dashboard.session.as_secs(), 12 * 3600);
        let c = Config::parse(&format!("{BASE}[dashboard]\nenabled = false\nsession_hours = 2\n"), |_| None)
            .expect("valid");
        assert!(!c.dashboard.enabled);
        assert_eq!(c.dashboard.session.as_secs(), 2 * 3600);
    }

    #[test]
    fn every_bad_key_is_named() {
        let text = format!("{BASE}[dashboard]\nenabled = \"yes\"\nsession_hours = 0\ncolour = 1\n");
        let err = Config::parse(&text, |_| None).expect_err("refused").to_string();
        for key in ["dashboard.enabled", "dashboard.session_hours", "dashboard.colour"] {
            assert!(err.contains(key), "{key} not named in {err}");
        }
    }
}
