//! `[networks.<name>]`: affiliate networks as data, so a network other than CAKE needs a
//! table in the config, not a code change.
//!
//! CAKE is built in; a `[networks.cake]` table changes only the keys it names. Any other
//! network starts from nothing and needs at least `subid`.

use std::collections::BTreeMap;

use super::reader::{env_var, problem, valid_name, Env, Errors, Section};
use crate::networks::{header_key, Network, NetworkApi, ReportColumns};
use crate::secret::Secret;

/// Rows asked of a network's API per page unless `page_size` says otherwise.
const API_PAGE_SIZE: u64 = 500;

/// Reads the `networks` table into the known networks, CAKE always among them.
pub(super) fn read(value: Option<&toml::Value>, env: Env<'_>, errors: &mut Errors) -> BTreeMap<String, Network> {
    let mut networks = BTreeMap::new();
    networks.insert("cake".to_owned(), Network::cake());
    match value {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, value) in t {
                if let Some(n) = read_network(name, value, env, errors) {
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
fn read_network(name: &str, value: &toml::Value, env: Env<'_>, errors: &mut Errors) -> Option<Network> {
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
    let disposition_field = s.string("disposition_field", errors).map(|v| v.trim().to_ascii_lowercase());
    if disposition_field.as_deref() == Some("") {
        s.err(errors, "disposition_field", "must not be empty (leave it out when the network sends none)");
    }
    let reversing_dispositions = match s.strings("reversing_dispositions", errors) {
        Some(list) => list.iter().map(|d| d.trim().to_ascii_lowercase()).collect(),
        None => cake.reversing_dispositions.clone(),
    };
    let reconcile_default = match &base {
        Some(b) => b.reconcile.clone(),
        None => ReportColumns::for_fields(&click_id_field, &transaction_field, &value_field),
    };
    let reconcile = read_columns(&s.key("reconcile"), s.raw("reconcile"), reconcile_default, errors);
    let api = s.raw("api").and_then(|v| read_api(name, &s.key("api"), v, env, errors));
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
        disposition_field,
        reversing_dispositions,
        reconcile,
        api,
    })
}

/// `[networks.NAME.reconcile]`: the headers of each column of the network's conversion
/// report, a string or a list each; unnamed columns keep their defaults.
fn read_columns(path: &str, value: Option<&toml::Value>, default: ReportColumns, errors: &mut Errors) -> ReportColumns {
    let Some(value) = value else {
        return default;
    };
    let mut s = Section::new(path, Some(value), errors);
    let mut column = |key: &'static str, default: Vec<String>, errors: &mut Errors| -> Vec<String> {
        let names = match s.raw(key) {
            None => return default,
            Some(toml::Value::String(one)) => vec![one.clone()],
            Some(_) => s.strings(key, errors).unwrap_or_default(),
        };
        let keys: Vec<String> =
            names.iter().filter(|n| !header_key(n).is_empty()).map(|n| n.trim().to_owned()).collect();
        if keys.is_empty() {
            s.err(errors, key, "must name at least one column header");
        }
        keys
    };
    let columns = ReportColumns {
        click_id: column("click_id", default.click_id, errors),
        transaction_id: column("transaction_id", default.transaction_id, errors),
        price: column("price", default.price, errors),
        converted_at: column("converted_at", default.converted_at, errors),
        offer: column("offer", default.offer, errors),
        disposition: column("disposition", default.disposition, errors),
    };
    s.finish(errors);
    columns
}

/// `[networks.NAME.api]`: the network's affiliate API. The key may come from
/// `CAKELINK_NETWORK_<NAME>_API_KEY` instead of the file.
fn read_api(name: &str, path: &str, value: &toml::Value, env: Env<'_>, errors: &mut Errors) -> Option<NetworkApi> {
    let mut s = Section::new(path, Some(value), errors);
    let base_url = if s.raw("base_url").is_some() {
        s.http_url("base_url", "", errors)
    } else {
        s.err(errors, "base_url", "is required: the network's domain, e.g. \"https://network.example.com\"");
        String::new()
    };
    let affiliate_id = s.string("affiliate_id", errors).unwrap_or_default().trim().to_owned();
    if affiliate_id.is_empty() || !affiliate_id.bytes().all(|b| b.is_ascii_digit()) {
        s.err(errors, "affiliate_id", "is required: your affiliate id at the network (digits)");
    }
    let var = env_var("NETWORK", name, "api_key");
    let api_key = env(&var).or_else(|| s.string("api_key", errors)).unwrap_or_default();
    if api_key.trim().is_empty() {
        s.err(errors, "api_key", format!("is required (or set {var})"));
    }
    let page_size = s.uint("page_size", 1, 10_000, errors).unwrap_or(API_PAGE_SIZE) as u32;
    s.finish(errors);
    Some(NetworkApi {
        base_url: base_url.trim_end_matches('/').to_owned(),
        affiliate_id,
        api_key: Secret::new(api_key.trim()),
        page_size,
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

    #[test]
    fn dispositions_report_columns_and_the_api_are_read_with_their_keys() {
        let text = format!(
            "{GOOD}\n[networks.cake]\ndisposition_field = \"Disposition\"\nreversing_dispositions = [\"Rejected\", \"fraud\"]\n[networks.cake.reconcile]\nclick_id = \"Click\"\nprice = [\"Payout\", \"Commission\"]\n[networks.cake.api]\nbase_url = \"https://network.example.com/\"\naffiliate_id = \"4242\"\napi_key = \"k\"\n[networks.tune]\nsubid = \"aff_sub\"\nvalue_field = \"payout\"\n"
        );
        let c = parse(&text).unwrap();
        let cake = &c.networks["cake"];
        assert_eq!(cake.disposition_field.as_deref(), Some("disposition"));
        assert!(cake.reverses(" REJECTED ") && cake.reverses("fraud") && !cake.reverses("returned"));
        assert_eq!(cake.reconcile.click_id, ["Click"]);
        assert_eq!(cake.reconcile.price, ["Payout", "Commission"]);
        assert_eq!(cake.reconcile.converted_at, ["Conversion Date", "conversion_date"], "unnamed columns keep CAKE's");
        let api = cake.api.as_ref().unwrap();
        assert_eq!(
            (api.base_url.as_str(), api.affiliate_id.as_str(), api.page_size),
            ("https://network.example.com", "4242", 500)
        );
        // A network of its own finds its postback fields' names as headers too.
        let tune = &c.networks["tune"];
        assert_eq!(tune.reconcile.click_id[0], "aff_sub");
        assert!(tune.reconcile.price.iter().any(|h| h == "payout"));
        assert!(tune.disposition_field.is_none() && tune.reverses("rejected") && tune.api.is_none());

        let bad = format!(
            "{GOOD}\n[networks.cake]\ndisposition_field = \"\"\n[networks.cake.reconcile]\nprice = []\noffer_name = \"x\"\n[networks.cake.api]\nbase_url = \"ftp://x\"\naffiliate_id = \"abc\"\npage_size = 0\n"
        );
        let keys: Vec<String> = parse(&bad).unwrap_err().0.into_iter().map(|e| e.key).collect();
        for key in [
            "networks.cake.disposition_field",
            "networks.cake.reconcile.price",
            "networks.cake.reconcile.offer_name",
            "networks.cake.api.base_url",
            "networks.cake.api.affiliate_id",
            "networks.cake.api.api_key",
            "networks.cake.api.page_size",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn the_api_key_can_come_from_the_environment() {
        let text = format!("{GOOD}\n[networks.cake.api]\nbase_url = \"https://n.example.com\"\naffiliate_id = \"1\"\n");
        let c =
            crate::config::Config::parse(&text, |k| (k == "CAKELINK_NETWORK_CAKE_API_KEY").then(|| "from-env".into()))
                .unwrap();
        assert_eq!(c.networks["cake"].api.as_ref().unwrap().api_key.expose(), "from-env");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("CAKELINK_NETWORK_CAKE_API_KEY"), "{err}");
    }
}
