//! A link's offers and rules as its owner writes them (`[[links.offers]]`,
//! `[[links.rules]]`, and the same shape in the links API's JSON), and the checks they
//! must pass. The compiled form the redirect uses is in [`super::Router`].

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::geo::is_country_code;

/// Most offers one link may carry: eligibility is a 64-bit set.
pub const MAX_OFFERS: usize = 64;
/// Most rules one link may carry.
pub const MAX_RULES: usize = 256;

/// One destination among a link's offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// `[A-Za-z0-9_-]{1,32}`, unique within the link; what clicks, reports and rules name.
    pub id: String,
    /// Absolute http(s) URL; the network's sub-id parameter is set on it per click.
    pub url: String,
    /// Relative share of the traffic among the eligible offers; positive.
    pub weight: u32,
    /// Human clicks admitted per day (UTC, or the link's `cap_tz`); `None` for no cap.
    pub daily_cap: Option<u32>,
    pub status: OfferStatus,
}

/// Whether an offer takes traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfferStatus {
    #[default]
    Active,
    Paused,
}

/// The kind of device a user agent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Mobile,
    Tablet,
    Desktop,
}

impl Device {
    pub const ALL: [Device; 3] = [Device::Mobile, Device::Tablet, Device::Desktop];

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Desktop => "desktop",
        }
    }

    pub fn parse(text: &str) -> Option<Device> {
        Device::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

/// The operating system a user agent names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Ios,
    Android,
    Windows,
    Macos,
    Linux,
}

impl Os {
    pub const ALL: [Os; 5] = [Os::Ios, Os::Android, Os::Windows, Os::Macos, Os::Linux];

    pub fn as_str(self) -> &'static str {
        match self {
            Os::Ios => "ios",
            Os::Android => "android",
            Os::Windows => "windows",
            Os::Macos => "macos",
            Os::Linux => "linux",
        }
    }

    pub fn parse(text: &str) -> Option<Os> {
        Os::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// One rule: every criterion it names must match (any value of a list will do); an empty
/// list places no condition. The first rule that matches picks `offers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// ISO 3166-1 alpha-2 codes, upper case.
    pub country: Vec<String>,
    pub device: Vec<Device>,
    pub os: Vec<Os>,
    /// Primary language subtags from `Accept-Language`, lower case (`de`, `pt`).
    pub language: Vec<String>,
    /// Query parameter name → values that match.
    pub param: BTreeMap<String, Vec<String>>,
    /// Ids of the offers this rule makes eligible.
    pub offers: Vec<String>,
}

impl Rule {
    /// Whether the rule names a country (and so never matches without a `[geo]` source).
    pub fn uses_country(&self) -> bool {
        !self.country.is_empty()
    }
}

/// Whether `id` is a valid offer id.
pub fn valid_offer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks offers, rules, `sticky_hours` and `cap_tz`; returns `(field, problem)` pairs
/// with the field as the config and the API name it (`offers[1].weight`).
pub fn validate(offers: &[Offer], rules: &[Rule], cap_tz: Option<&str>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if offers.len() > MAX_OFFERS {
        problems.push(("offers".to_owned(), format!("at most {MAX_OFFERS} offers per link")));
    }
    if rules.len() > MAX_RULES {
        problems.push(("rules".to_owned(), format!("at most {MAX_RULES} rules per link")));
    }
    let mut ids = HashSet::new();
    for (i, offer) in offers.iter().enumerate() {
        let at = |field: &str| format!("offers[{i}].{field}");
        if !valid_offer_id(&offer.id) {
            problems.push((at("id"), format!("{:?}: use 1 to 32 letters, digits, - and _", offer.id)));
        } else if !ids.insert(offer.id.as_str()) {
            problems.push((at("id"), format!("{:?} is a duplicate offer id", offer.id)));
        }
        if crate::text::absolute_http_url(&offer.url).is_none() {
            problems.push((at("url"), format!("{:?} is not an absolute http(s) URL", offer.url)));
        }
        if offer.weight == 0 {
            problems.push((at("weight"), "must be a positive whole number".to_owned()));
        }
        if offer.daily_cap == Some(0) {
            problems.push((at("daily_cap"), "must be a positive whole number (leave it out for no cap)".to_owned()));
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].{field}");
        for (j, code) in rule.country.iter().enumerate() {
            if !is_country_code(code) {
                problems.push((at(&format!("country[{j}]")), format!("{code:?} is not an ISO 3166-1 alpha-2 code")));
            }
        }
        for (j, lang) in rule.language.iter().enumerate() {
            if !(2..=8).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_lowercase()) {
                problems.push((at(&format!("language[{j}]")), format!("{lang:?} is not a language like \"de\"")));
            }
        }
        for name in rule.param.keys() {
            if name.is_empty() || name.len() > 64 {
                problems.push((at("param"), format!("{name:?}: a parameter name has 1 to 64 characters")));
            }
        }
        if rule.offers.is_empty() {
            problems.push((at("offers"), "a rule names at least one offer".to_owned()));
        }
        for (j, id) in rule.offers.iter().enumerate() {
            if !offers.iter().any(|o| &o.id == id) {
                problems.push((at(&format!("offers[{j}]")), format!("{id:?} is not an offer of this link")));
            }
        }
    }
    if let Some(tz) = cap_tz {
        if parse_offset(tz).is_none() {
            problems.push(("cap_tz".to_owned(), format!("{tz:?} is not an offset like \"-05:00\" or \"+01:00\"")));
        }
    }
    problems
}

/// `±HH:MM` (or `UTC`/`Z`) as seconds east of UTC.
pub fn parse_offset(text: &str) -> Option<i32> {
    if matches!(text, "UTC" | "Z" | "+00:00" | "-00:00") {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, weight: u32) -> Offer {
        Offer {
            id: id.into(),
            url: "https://o.example.com/".into(),
            weight,
            daily_cap: None,
            status: OfferStatus::Active,
        }
    }

    #[test]
    fn problems_name_their_field() {
        let offers = vec![offer("a", 1), offer("a", 0), Offer { url: "ftp://x".into(), ..offer("b c", 1) }];
        let rules = vec![Rule {
            country: vec!["US".into(), "XY".into()],
            offers: vec!["a".into(), "zz".into()],
            ..Rule::default()
        }];
        let fields: Vec<String> = validate(&offers, &rules, Some("EST")).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "offers[1].id",
                "offers[1].weight",
                "offers[2].id",
                "offers[2].url",
                "rules[0].country[1]",
                "rules[0].offers[1]",
                "cap_tz"
            ]
        );
    }

    #[test]
    fn offsets_read_as_seconds() {
        assert_eq!(parse_offset("-05:00"), Some(-18_000));
        assert_eq!(parse_offset("+05:30"), Some(19_800));
        assert_eq!(parse_offset("UTC"), Some(0));
        assert_eq!(parse_offset("5"), None);
        assert_eq!(parse_offset("+15:00"), None);
    }
}
