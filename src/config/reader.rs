//! A small typed reader over one TOML table, shared by every section.
//!
//! Why not `serde(deny_unknown_fields)`: serde stops at the first problem, and the
//! operator should see every problem in one `check-config` run. So each section asks for
//! its keys one by one; a wrong value is recorded with its key and reading goes on, and
//! at the end [`Section::finish`] refuses whatever key nobody asked for (a typo must not
//! silently fall back to a default).
//!
//! This module knows TOML and key paths only, nothing of cakelink's domain, so any
//! section can use it without an import circle.

use std::collections::HashSet;

use super::ConfigError;

/// Where problems are collected while the whole file is read.
pub(super) type Errors = Vec<ConfigError>;

/// Looks up an environment variable; a function so that tests never touch the process
/// environment.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Records `message` against the full key path `key`.
pub(super) fn problem(errors: &mut Errors, key: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError { key: key.into(), message: message.into() });
}

/// One TOML table being read: its key path (for messages) and the keys asked for so far.
pub(super) struct Section<'a> {
    /// The section's own key path, prefixed to every key a message names.
    path: String,
    /// `None` when the table is absent (or was not a table): every key reads as unset.
    table: Option<&'a toml::Table>,
    /// Keys asked for; whatever else the table holds is refused by `finish`.
    used: HashSet<&'static str>,
}

impl<'a> Section<'a> {
    /// A section at `path`; a missing table reads as empty (every key takes its default),
    /// anything but a table is a problem.
    pub(super) fn new(path: impl Into<String>, value: Option<&'a toml::Value>, errors: &mut Errors) -> Section<'a> {
        let path = path.into();
        let table = match value {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                problem(errors, path.clone(), "must be a table");
                None
            }
        };
        Section { path, table, used: HashSet::new() }
    }

    /// The full path of `key`, as messages name it (`server.listen`, `links[0].offer`).
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value at `key`, whatever its type; marks the key as known.
    pub(super) fn raw(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.used.insert(key);
        self.table?.get(key)
    }

    /// Records a problem with `key` of this section.
    pub(super) fn err(&self, errors: &mut Errors, key: &str, message: impl Into<String>) {
        problem(errors, self.key(key), message);
    }

    pub(super) fn string(&mut self, key: &'static str, errors: &mut Errors) -> Option<String> {
        match self.raw(key)? {
            toml::Value::String(s) => Some(s.clone()),
            _ => {
                self.err(errors, key, "must be a string");
                None
            }
        }
    }

    /// A whole number within `min..=max`; out of range is a problem, not a clamp.
    pub(super) fn uint(&mut self, key: &'static str, min: u64, max: u64, errors: &mut Errors) -> Option<u64> {
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

    pub(super) fn boolean(&mut self, key: &'static str, errors: &mut Errors) -> Option<bool> {
        match self.raw(key)? {
            toml::Value::Boolean(b) => Some(*b),
            _ => {
                self.err(errors, key, "must be true or false");
                None
            }
        }
    }

    /// A list of strings; each wrong item is named by its index.
    pub(super) fn strings(&mut self, key: &'static str, errors: &mut Errors) -> Option<Vec<String>> {
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

    /// A list of networks in CIDR notation; a bare address is a network of one.
    pub(super) fn cidrs(&mut self, key: &'static str, errors: &mut Errors) -> Vec<ipnet::IpNet> {
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

    /// An absolute http(s) URL (`default` when absent), without a trailing slash; empty
    /// when it is not one, with the problem recorded.
    pub(super) fn http_url(&mut self, key: &'static str, default: &str, errors: &mut Errors) -> String {
        let text = self.string(key, errors).unwrap_or_else(|| default.to_owned());
        if is_http_url(&text) {
            text.trim_end_matches('/').to_owned()
        } else {
            self.err(errors, key, format!("{text:?} is not an absolute http(s) URL"));
            String::new()
        }
    }

    /// Reports keys nobody asked for: they are typos or keys of another version.
    pub(super) fn finish(self, errors: &mut Errors) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.used.contains(key.as_str()) {
                self.err(errors, &written_key(key), "unknown key");
            }
        }
    }
}

/// Whether `text` is an absolute URL a client can fetch: http or https, with a host.
pub(super) fn is_http_url(text: &str) -> bool {
    crate::text::absolute_http_url(text).is_some()
}

/// A key as it would be written in the file: bare when it can be, quoted otherwise (an
/// empty key, or one with spaces or dots, must still show in the error).
pub(super) fn written_key(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// A name that goes into keys, URLs and environment variable names (networks,
/// destinations): 1 to 64 letters, digits and `- _ .`.
/// The environment variable that can hold `key` of `name` in a section of `kind`: all
/// upper-cased, every other character `_` (`NETWORK`, `cake`, `api_key` →
/// `CAKELINK_NETWORK_CAKE_API_KEY`).
pub(super) fn env_var(kind: &str, name: &str, key: &str) -> String {
    let upper = |t: &str| -> String {
        t.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
    };
    format!("CAKELINK_{kind}_{}_{}", upper(name), upper(key))
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
