//! `[[links.offers]]` and `[[links.rules]]`: a link's weighted offers and its rules.
//!
//! The links API reads the same shapes from JSON through these functions (its body is
//! turned into a TOML tree first), so both report a problem the same way, with the key
//! that holds it (`offers[1].weight`). Reading checks types and spellings; what the values
//! mean together (unique ids, rules naming known offers) is checked by
//! [`crate::links::validate_link`], which both also share.

use std::collections::BTreeMap;

use super::reader::{problem, Errors, Section};
use super::ConfigError;
use crate::routing::{Device, Offer, OfferStatus, Os, Rule};

/// Reads `offers` and `rules` as found under `prefix` (`links[0]`, or empty for the API).
pub(super) fn read(
    prefix: &str,
    offers: Option<&toml::Value>,
    rules: Option<&toml::Value>,
    errors: &mut Errors,
) -> (Vec<Offer>, Vec<Rule>) {
    let at = |key: &str| if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
    let offers = tables(&at("offers"), offers, errors).into_iter().filter_map(|(k, v)| read_offer(&k, v, errors));
    let offers = offers.collect();
    let rules = tables(&at("rules"), rules, errors).into_iter().map(|(k, v)| read_rule(&k, v, errors)).collect();
    (offers, rules)
}

/// The links API's entry: offers and rules from a JSON body, or every problem.
pub fn read_json(
    offers: Option<&serde_json::Value>,
    rules: Option<&serde_json::Value>,
) -> Result<(Vec<Offer>, Vec<Rule>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let offers = offers.map(|v| from_json("offers", v, &mut errors));
    let rules = rules.map(|v| from_json("rules", v, &mut errors));
    let read = read("", offers.as_ref(), rules.as_ref(), &mut errors);
    if errors.is_empty() {
        Ok(read)
    } else {
        Err(errors)
    }
}

/// JSON as TOML, so one reader serves both; `null` has no TOML form and is refused.
fn from_json(key: &str, value: &serde_json::Value, errors: &mut Errors) -> toml::Value {
    use serde_json::Value as J;
    match value {
        J::Null => {
            problem(errors, key, "null is not a value here; leave the field out");
            toml::Value::Array(Vec::new())
        }
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => toml::Value::String(n.to_string()),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => toml::Value::Array(
            items.iter().enumerate().map(|(i, v)| from_json(&format!("{key}[{i}]"), v, errors)).collect(),
        ),
        J::Object(map) => toml::Value::Table(
            map.iter().map(|(k, v)| (k.clone(), from_json(&format!("{key}.{k}"), v, errors))).collect(),
        ),
    }
}

/// The tables of an array of tables at `key`, each with its own key (`offers[2]`).
fn tables<'a>(key: &str, value: Option<&'a toml::Value>, errors: &mut Errors) -> Vec<(String, &'a toml::Value)> {
    match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items.iter().enumerate().map(|(i, v)| (format!("{key}[{i}]"), v)).collect(),
        Some(_) => {
            problem(errors, key, "must be a list of tables");
            Vec::new()
        }
    }
}

fn read_offer(key: &str, value: &toml::Value, errors: &mut Errors) -> Option<Offer> {
    let mut s = Section::new(key, Some(value), errors);
    let id = s.string("id", errors);
    let url = s.string("url", errors);
    let weight = s.uint("weight", 1, u64::from(u32::MAX), errors).unwrap_or(1) as u32;
    let daily_cap = s.uint("daily_cap", 1, u64::from(u32::MAX), errors).map(|n| n as u32);
    let status = match s.string("status", errors).as_deref() {
        None | Some("active") => OfferStatus::Active,
        Some("paused") => OfferStatus::Paused,
        Some(other) => {
            s.err(errors, "status", format!("{other:?} is not \"active\" or \"paused\""));
            OfferStatus::Active
        }
    };
    s.finish(errors);
    let (Some(id), Some(url)) = (id, url) else {
        problem(errors, key, "an offer needs id and url");
        return None;
    };
    Some(Offer { id, url, weight, daily_cap, status })
}

fn read_rule(key: &str, value: &toml::Value, errors: &mut Errors) -> Rule {
    let mut s = Section::new(key, Some(value), errors);
    // Codes are compared upper case and languages lower case, whatever case was written.
    let country = s.strings("country", errors).unwrap_or_default().iter().map(|c| c.to_ascii_uppercase()).collect();
    let device = named(&mut s, "device", Device::parse, "mobile, tablet or desktop", errors);
    let os = named(&mut s, "os", Os::parse, "ios, android, windows, macos or linux", errors);
    let language = s.strings("language", errors).unwrap_or_default().iter().map(|l| l.to_ascii_lowercase()).collect();
    let mut param = BTreeMap::new();
    match s.raw("param") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, values) in t {
                match values {
                    toml::Value::Array(items) => {
                        let mut list = Vec::new();
                        for (i, item) in items.iter().enumerate() {
                            match item {
                                toml::Value::String(v) => list.push(v.clone()),
                                _ => s.err(errors, &format!("param.{name}[{i}]"), "must be a string"),
                            }
                        }
                        param.insert(name.clone(), list);
                    }
                    _ => s.err(errors, &format!("param.{name}"), "must be a list of strings"),
                }
            }
        }
        Some(_) => s.err(errors, "param", "must be a table of parameter name = [values]"),
    }
    let offers = s.strings("offers", errors).unwrap_or_default();
    s.finish(errors);
    Rule { country, device, os, language, param, offers }
}

/// A list of names read with `parse`; each unknown one is a problem naming its index.
fn named<T>(
    s: &mut Section<'_>,
    key: &'static str,
    parse: fn(&str) -> Option<T>,
    known: &str,
    errors: &mut Errors,
) -> Vec<T> {
    let mut out = Vec::new();
    for (i, name) in s.strings(key, errors).unwrap_or_default().iter().enumerate() {
        match parse(name) {
            Some(v) => out.push(v),
            None => s.err(errors, &format!("{key}[{i}]"), format!("{name:?} is not one of {known}")),
        }
    }
    out
}
