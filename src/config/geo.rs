//! `[geo]`: where a visitor's country comes from, for rules that name countries.
//!
//! Either a country database the owner downloads (`mmdb`, MaxMind or DB-IP, reloaded on
//! SIGHUP), or a header a trusted proxy sets (`header`, e.g. Cloudflare's
//! `CF-IPCountry`), read only from a peer in `server.trusted_proxies`. The database is
//! opened while the config is read, so a missing or broken file is a config error with
//! its key like any other.

use std::path::PathBuf;
use std::sync::Arc;

use super::reader::{Errors, Section};
use crate::routing::geo::CountryDb;

/// `[geo]`
#[derive(Clone, Debug, Default)]
pub struct GeoConfig {
    /// The country database, opened.
    pub mmdb: Option<Arc<CountryDb>>,
    /// The country header's name, lower case.
    pub header: Option<String>,
}

impl GeoConfig {
    /// Whether any source of countries is configured.
    pub fn is_set(&self) -> bool {
        self.mmdb.is_some() || self.header.is_some()
    }
}

/// Reads `[geo]`; without it no country is known.
pub(super) fn read(value: Option<&toml::Value>, errors: &mut Errors) -> GeoConfig {
    let mut g = Section::new("geo", value, errors);
    let mmdb = g.string("mmdb", errors).and_then(|path| match CountryDb::open(&PathBuf::from(&path)) {
        Ok(db) => Some(Arc::new(db)),
        Err(e) => {
            g.err(errors, "mmdb", e.to_string());
            None
        }
    });
    let header = g.string("header", errors).and_then(|name| {
        let token =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            Some(name.to_ascii_lowercase())
        } else {
            g.err(errors, "header", format!("{name:?} is not a header name"));
            None
        }
    });
    g.finish(errors);
    GeoConfig { mmdb, header }
}
