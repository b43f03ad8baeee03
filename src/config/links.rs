//! `[[links]]`: the links defined in the file (more can be added through the API).
//!
//! Each link is checked by the same [`validate_link`] the API uses, so a link the file
//! accepts is one the API would accept too.

use std::collections::{BTreeMap, HashSet};

use super::reader::{problem, Errors, Section};
use crate::links::{validate_link, MAX_STICKY_HOURS};
use crate::model::{Link, LinkSource, LinkStatus};
use crate::networks::Network;

/// Reads the `links` array, checking each link against the configured `networks` and
/// refusing a network/slug pair defined twice.
pub(super) fn read(
    value: Option<&toml::Value>,
    networks: &BTreeMap<String, Network>,
    errors: &mut Errors,
) -> Vec<Link> {
    let mut links = Vec::new();
    match value {
        None => {}
        Some(toml::Value::Array(items)) => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key = format!("links[{i}]");
                if let Some(link) = read_link(&key, item, networks, errors) {
                    if !seen.insert(link.key()) {
                        problem(errors, format!("{key}.slug"), format!("{} is defined twice", link.key()));
                    }
                    links.push(link);
                }
            }
        }
        Some(_) => problem(errors, "links", "must be an array of tables ([[links]])"),
    }
    links
}

/// One `[[links]]` entry at `key` (`links[3]`); `None` when it is incomplete or invalid.
fn read_link(
    key: &str,
    value: &toml::Value,
    networks: &BTreeMap<String, Network>,
    errors: &mut Errors,
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
    let sticky_hours = s.uint("sticky_hours", 0, u64::from(MAX_STICKY_HOURS), errors).unwrap_or(0) as u32;
    let cap_tz = s.string("cap_tz", errors);
    let (offers, rules) = super::routing::read(key, s.raw("offers"), s.raw("rules"), errors);
    s.finish(errors);
    let (Some(slug), Some(offer)) = (slug, offer) else {
        problem(errors, key, "a link needs slug and offer");
        return None;
    };
    let link = Link {
        network,
        slug,
        offer,
        redirect,
        status,
        fallback,
        event,
        source: LinkSource::Config,
        offers,
        rules,
        sticky_hours,
        cap_tz,
    };
    let problems = validate_link(&link, networks);
    for (field, message) in &problems {
        problem(errors, format!("{key}.{field}"), message.clone());
    }
    problems.is_empty().then_some(link)
}
