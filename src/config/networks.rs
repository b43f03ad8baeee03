//! `[networks.<name>]`: affiliate networks as data, so a network other than CAKE needs a
//! table in the config, not a code change.
//!
//! CAKE is built in; a `[networks.cake]` table changes only the keys it names. Any other
//! network starts from nothing and needs at least `subid`.

use std::collections::BTreeMap;

use super::reader::{problem, valid_name, Errors, Section};
use crate::networks::Network;

/// Reads the `networks` table into the known networks, CAKE always among them.
pub(super) fn read(value: Option<&toml::Value>, errors: &mut Errors) -> BTreeMap<String, Network> {
    let mut networks = BTreeMap::new();
    networks.insert("cake".to_owned(), Network::cake());
    match value {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, value) in t {
                if let Some(n) = read_network(name, value, errors) {
                    networks.insert(name.clone(), n);
                }
            }
        }
        Some(_) => problem(errors, "networks", "must be a table of networks"),
    }
    networks
}

/// One `[networks.<name>]`; `None` when it has no `subid` (the network cannot carry a
/// click id without one).
fn read_network(name: &str, value: &toml::Value, errors: &mut Errors) -> Option<Network> {
    let mut s = Section::new(format!("networks.{name}"), Some(value), errors);
    if !valid_name(name) {
        problem(errors, format!("networks.{name}"), "a network name may hold only letters, digits and - _ .");
    }
    // `cake` starts from the built-in profile; a new network needs at least `subid`.
    let base = if name == "cake" { Some(Network::cake()) } else { None };
    let subid = match (s.string("subid", errors), &base) {
        (Some(v), _) => v,
        (None, Some(b)) => b.subid.clone(),
        (None, None) => {
            s.err(errors, "subid", "is required: the offer-URL parameter that carries the click id");
            String::new()
        }
    };
    // Field names default to CAKE's; postback parameters are matched lower-cased.
    let cake = Network::cake();
    let click_id_default = base.as_ref().map_or(subid.clone(), |b| b.click_id_field.clone());
    let click_id_field = field(&mut s, "click_id_field", click_id_default, errors);
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

/// A postback parameter name: not empty, lower-cased.
fn field(s: &mut Section<'_>, key: &'static str, default: String, errors: &mut Errors) -> String {
    let v = s.string(key, errors).unwrap_or(default);
    if v.trim().is_empty() {
        s.err(errors, key, "must not be empty");
    }
    v.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};

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
}
