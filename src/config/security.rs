//! `[security]`: the keys that make click ids unforgeable and guard the API and the
//! postback URL.
//!
//! Each can come from the environment instead of the file (`CAKELINK_SECRET`,
//! `CAKELINK_ADMIN_TOKEN`, `CAKELINK_POSTBACK_KEY`), so a deployment can keep secrets out
//! of files that end up in backups or version control; the environment wins.

use super::reader::{Env, Errors, Section};
use crate::secret::Secret;

/// `[security]`
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// `secret`: keys the click-id tag, so a click id cannot be forged or altered.
    pub secret: Secret,
    /// `previous_secrets`: still accepted when checking a tag, so rotating `secret` does
    /// not orphan the clicks minted before the rotation.
    pub previous_secrets: Vec<Secret>,
    /// `admin_token`: the bearer token `/api` asks for.
    pub admin_token: Secret,
    /// `postback_key`: a path segment of the postback URL, so only whoever was given the
    /// URL (the network) can post conversions.
    pub postback_key: Secret,
}

/// Values that mark an unchanged example config.
const EXAMPLE_SECRETS: &[&str] = &["change-me", "change-me-too", "change-me-three"];

/// Reads `[security]`. Weak values (the example's, or short ones) are allowed but go to
/// `warnings`, so a first run works and the operator is still told.
pub(super) fn read(
    value: Option<&toml::Value>,
    env: Env<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<SecurityConfig> {
    let mut sec = Section::new("security", value, errors);
    let tag_secret = read_secret(&mut sec, "secret", "CAKELINK_SECRET", env, errors, warnings);
    let admin_token = read_secret(&mut sec, "admin_token", "CAKELINK_ADMIN_TOKEN", env, errors, warnings);
    let postback_key = read_secret(&mut sec, "postback_key", "CAKELINK_POSTBACK_KEY", env, errors, warnings);
    if let Some(key) = &postback_key {
        if !key.expose().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
            sec.err(errors, "postback_key", "may hold only letters, digits and - _ . ~ (it is a URL path segment)");
        }
    }
    let previous_secrets =
        sec.strings("previous_secrets", errors).unwrap_or_default().into_iter().map(Secret::new).collect();
    sec.finish(errors);
    Some(SecurityConfig {
        secret: tag_secret?,
        previous_secrets,
        admin_token: admin_token?,
        postback_key: postback_key?,
    })
}

/// One required secret: `var` from the environment, else `key` from the file.
fn read_secret(
    sec: &mut Section<'_>,
    key: &'static str,
    var: &str,
    env: Env<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Secret> {
    let file = sec.string(key, errors);
    match env(var).or(file) {
        Some(v) if v.trim().is_empty() => {
            sec.err(errors, key, "must not be empty");
            None
        }
        Some(v) => {
            if EXAMPLE_SECRETS.contains(&v.as_str()) {
                warnings
                    .push(format!("security.{key} is the example value; set {var} or edit the file before going live"));
            } else if v.len() < 16 {
                warnings.push(format!("security.{key} is shorter than 16 characters; a longer random value is safer"));
            }
            Some(Secret::new(v))
        }
        None => {
            sec.err(errors, key, format!("is required (or set {var})"));
            None
        }
    }
}
