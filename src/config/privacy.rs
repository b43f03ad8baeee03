//! `[privacy]`: what a stored click keeps of the visitor.
//!
//! A switch in the config rather than a build option, because whether a full address may
//! be kept depends on the operator's jurisdiction and traffic, not on the code.

use super::reader::{Errors, Section};

/// `[privacy]`
#[derive(Clone, Debug, Default)]
pub struct PrivacyConfig {
    /// Store only the visitor's network (/24 for IPv4, /48 for IPv6), never the address.
    pub anonymize_ip: bool,
}

/// Reads `[privacy]`; every key has a default, so it always yields a config.
pub(super) fn read(value: Option<&toml::Value>, errors: &mut Errors) -> PrivacyConfig {
    let mut pr = Section::new("privacy", value, errors);
    let anonymize_ip = pr.boolean("anonymize_ip", errors).unwrap_or(false);
    pr.finish(errors);
    PrivacyConfig { anonymize_ip }
}
