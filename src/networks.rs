//! Affiliate networks as data: which offer-URL parameter carries the click id, which
//! visitor parameters pass through, and what the postback fields are called.
//!
//! CAKE is built in; HasOffers/TUNE, Everflow or Impact differ only in names, so they are
//! a `[networks.NAME]` table in the config rather than code.

/// How cakelink talks to one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The table's name (`cake` for `[networks.cake]`): links name their network by it,
    /// and it is part of the postback URL.
    pub name: String,
    /// Offer-URL parameter that carries the click id (`s2` on CAKE). Reserved: a value
    /// already in the offer URL or the visitor's query is replaced.
    pub subid: String,
    /// Visitor query parameters copied onto the offer URL.
    pub passthrough: Vec<String>,
    /// Currency of the payouts this network reports (CAKE sends none).
    pub currency: String,
    /// Postback parameter that carries the click id back (lower-cased, as parameters
    /// are matched).
    pub click_id_field: String,
    /// Postback parameter with the network's conversion id, which keys the conversion so
    /// that a repeated postback is a duplicate rather than a second conversion.
    pub transaction_field: String,
    /// Postback parameter with the payout.
    pub value_field: String,
    /// Postback parameter with the network's order or item id, kept with the event.
    pub item_field: String,
    /// Postback parameter naming the event (`Lead`, `Purchase`), for networks that
    /// post more than one kind under their own name for it; `None` looks for `event`.
    pub event_field: Option<String>,
    /// Query string of the postback URL, with the network's own tokens.
    pub postback_template: String,
    /// Networks postbacks are accepted from; empty accepts any address (the key still
    /// has to match).
    pub postback_allowlist: Vec<ipnet::IpNet>,
    /// The postback field carrying the conversion's disposition, if the network sends one.
    pub disposition_field: Option<String>,
    /// Dispositions (lower-cased) that reverse a recorded conversion.
    pub reversing_dispositions: Vec<String>,
    /// The column headers of the network's conversion report, for `cakelink reconcile`.
    pub reconcile: ReportColumns,
    /// The network's affiliate API, for `cakelink reconcile --api`.
    pub api: Option<NetworkApi>,
}

/// The headers a conversion report's columns may carry, as written; compared with
/// [`header_key`] (case, spaces, `_` and `-` ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportColumns {
    pub click_id: Vec<String>,
    pub transaction_id: Vec<String>,
    pub price: Vec<String>,
    pub converted_at: Vec<String>,
    pub offer: Vec<String>,
    /// Optional: without it every row is a valid conversion.
    pub disposition: Vec<String>,
}

impl ReportColumns {
    /// CAKE's affiliate conversion report, as exported from the portal and as its API
    /// names the fields.
    pub fn cake() -> ReportColumns {
        let list = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        ReportColumns {
            click_id: list(&["Sub ID 2", "subid_2", "s2"]),
            transaction_id: list(&["Transaction ID", "transaction_id", "tid"]),
            price: list(&["Price", "payout"]),
            converted_at: list(&["Conversion Date", "conversion_date"]),
            offer: list(&["Offer ID", "offer_id"]),
            disposition: list(&["Disposition"]),
        }
    }

    /// Columns named after a network's postback fields, plus CAKE's names, for networks
    /// that map none of their own.
    pub fn for_fields(click_id: &str, transaction: &str, value: &str) -> ReportColumns {
        let mut columns = ReportColumns::cake();
        for (list, name) in
            [(&mut columns.click_id, click_id), (&mut columns.transaction_id, transaction), (&mut columns.price, value)]
        {
            if !list.iter().any(|n| header_key(n) == header_key(name)) {
                list.insert(0, name.to_owned());
            }
        }
        columns
    }
}

/// A header as compared: lower-cased, without spaces, `_` and `-` (`Sub ID 2`, `subid_2`
/// and `SUBID-2` are one).
pub fn header_key(header: &str) -> String {
    header.chars().filter(|c| !matches!(c, ' ' | '_' | '-' | '\t')).flat_map(char::to_lowercase).collect()
}

/// Where a network's affiliate API answers: `[networks.NAME.api]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkApi {
    /// The network's domain, e.g. `https://network.example.com`.
    pub base_url: String,
    pub affiliate_id: String,
    pub api_key: crate::secret::Secret,
    /// Rows asked for per page.
    pub page_size: u32,
}

/// Dispositions that reverse a conversion unless a network names its own.
pub const REVERSING_DISPOSITIONS: &[&str] = &["rejected", "returned", "scrubbed", "reversed", "chargeback"];

impl Network {
    /// CAKE, as its documentation describes it.
    pub fn cake() -> Network {
        Network {
            name: "cake".into(),
            subid: "s2".into(),
            passthrough: ["s1", "s3", "s4", "s5"].map(String::from).to_vec(),
            currency: "USD".into(),
            click_id_field: "s2".into(),
            transaction_field: "tid".into(),
            value_field: "price".into(),
            item_field: "oid".into(),
            event_field: None,
            postback_template: "s1=#s1#&s2=#s2#&s3=#s3#&s4=#s4#&s5=#s5#&oid=#oid#&affid=#affid#&campid=#campid#&cid=#cid#&tid=#tid#&price=#price#".into(),
            postback_allowlist: Vec::new(),
            disposition_field: None,
            reversing_dispositions: REVERSING_DISPOSITIONS.iter().map(|d| (*d).to_owned()).collect(),
            reconcile: ReportColumns::cake(),
            api: None,
        }
    }

    /// Whether a disposition reverses a conversion (`Rejected`, `returned`, …).
    pub fn reverses(&self, disposition: &str) -> bool {
        let d = disposition.trim().to_ascii_lowercase();
        self.reversing_dispositions.contains(&d)
    }

    /// Longest value CAKE accepts in a sub-id: `s1` holds 50 characters, `s2`–`s5` 100.
    /// Longer values are dropped, not truncated: a cut value would attribute to the
    /// wrong sub-affiliate.
    pub fn max_subid_len(&self, param: &str) -> usize {
        if param.eq_ignore_ascii_case("s1") {
            50
        } else {
            100
        }
    }

    /// Whether a postback from `ip` may be read at all.
    pub fn accepts_postback_from(&self, ip: std::net::IpAddr) -> bool {
        self.postback_allowlist.is_empty() || self.postback_allowlist.iter().any(|net| net.contains(&ip))
    }

    /// The postback URL to paste into the network.
    pub fn postback_url(&self, public_url: &str, key: &str) -> String {
        let base = public_url.trim_end_matches('/');
        format!("{base}/collect/{}/{key}?{}", self.name, self.postback_template)
    }
}

/// Whether a postback value means "no value": empty, `null`, or a token the network
/// left unreplaced (`#s3#` on CAKE, `{aff_sub}` on TUNE).
pub fn is_absent(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || v.eq_ignore_ascii_case("null")
        || v.eq_ignore_ascii_case("undefined")
        || (v.len() >= 2 && v.starts_with('#') && v.ends_with('#'))
        || (v.len() >= 2 && v.starts_with('{') && v.ends_with('}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_values() {
        for v in ["", " ", "null", "NULL", "#s3#", "#tid#", "{aff_sub}", "undefined"] {
            assert!(is_absent(v), "{v:?}");
        }
        for v in ["0", "abc", "#", "7.00", "a#b#"] {
            assert!(!is_absent(v), "{v:?}");
        }
    }

    #[test]
    fn cake_postback_url_is_the_documented_one() {
        assert_eq!(
            Network::cake().postback_url("https://t.example.com/", "k3y"),
            "https://t.example.com/collect/cake/k3y?s1=#s1#&s2=#s2#&s3=#s3#&s4=#s4#&s5=#s5#&oid=#oid#&affid=#affid#&campid=#campid#&cid=#cid#&tid=#tid#&price=#price#"
        );
    }
}
