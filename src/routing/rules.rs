//! Rules compiled for matching: offers as a bit set, countries as byte pairs, languages
//! lower case, so a match reads the visitor without allocating.

use super::definition::{Device, Offer, Os, Rule};
use super::geo::Country;

/// What the redirect knows of a visitor, borrowed from the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Visitor<'a> {
    pub country: Option<Country>,
    pub device: Option<Device>,
    pub os: Option<Os>,
    /// The `Accept-Language` header, as sent.
    pub accept_language: Option<&'a str>,
    /// The raw query string of the request.
    pub query: &'a str,
    /// The offer id the visitor's stickiness cookie names.
    pub sticky: Option<&'a str>,
}

/// The primary subtag of the visitor's preferred language (`de` of `de-CH,de;q=0.9`).
pub fn primary_language(accept_language: &str) -> Option<&str> {
    let first = accept_language.split(',').next()?.split(';').next()?.trim();
    let primary = first.split(['-', '_']).next()?;
    (!primary.is_empty() && primary != "*" && primary.bytes().all(|b| b.is_ascii_alphabetic())).then_some(primary)
}

/// One rule, ready to match.
#[derive(Debug)]
pub(super) struct CompiledRule {
    countries: Vec<Country>,
    devices: Vec<Device>,
    systems: Vec<Os>,
    languages: Vec<String>,
    params: Vec<(String, Vec<String>)>,
    /// The offers this rule makes eligible, as bits by offer index.
    pub(super) offers: u64,
}

impl CompiledRule {
    /// Compiles `rule` against the link's `offers` (already validated: unknown ids and
    /// bad codes were refused before, and are skipped here).
    pub(super) fn new(rule: &Rule, offers: &[Offer]) -> CompiledRule {
        let mut bits = 0u64;
        for id in &rule.offers {
            if let Some(i) = offers.iter().position(|o| &o.id == id) {
                bits |= 1 << i;
            }
        }
        CompiledRule {
            countries: rule.country.iter().filter_map(|c| super::geo::parse_country(c)).collect(),
            devices: rule.device.clone(),
            systems: rule.os.clone(),
            languages: rule.language.iter().map(|l| l.to_ascii_lowercase()).collect(),
            params: rule.param.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            offers: bits,
        }
    }

    /// Whether every criterion the rule names holds for `visitor`. A criterion the
    /// visitor gives no answer to (no country known, no language sent) does not hold.
    pub(super) fn matches(&self, visitor: &Visitor<'_>) -> bool {
        if !self.countries.is_empty() && !visitor.country.is_some_and(|c| self.countries.contains(&c)) {
            return false;
        }
        if !self.devices.is_empty() && !visitor.device.is_some_and(|d| self.devices.contains(&d)) {
            return false;
        }
        if !self.systems.is_empty() && !visitor.os.is_some_and(|o| self.systems.contains(&o)) {
            return false;
        }
        if !self.languages.is_empty() {
            let lang = visitor.accept_language.and_then(primary_language);
            if !lang.is_some_and(|l| self.languages.iter().any(|x| x.eq_ignore_ascii_case(l))) {
                return false;
            }
        }
        self.params.iter().all(|(name, values)| {
            form_urlencoded::parse(visitor.query.as_bytes())
                .find(|(k, _)| k == name.as_str())
                .is_some_and(|(_, v)| values.iter().any(|x| x == &v))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::routing::definition::OfferStatus;

    fn offers() -> Vec<Offer> {
        ["a", "b"]
            .iter()
            .map(|id| Offer {
                id: (*id).into(),
                url: "https://o.example.com/".into(),
                weight: 1,
                daily_cap: None,
                status: OfferStatus::Active,
            })
            .collect()
    }

    #[test]
    fn languages_are_read_from_the_first_preference() {
        assert_eq!(primary_language("de-CH,de;q=0.9,en;q=0.8"), Some("de"));
        assert_eq!(primary_language("pt_BR"), Some("pt"));
        assert_eq!(primary_language("*"), None);
        assert_eq!(primary_language(""), None);
    }

    #[test]
    fn every_named_criterion_must_hold() {
        let rule = Rule {
            country: vec!["US".into(), "CA".into()],
            device: vec![Device::Mobile],
            language: vec!["en".into()],
            param: BTreeMap::from([("s3".to_owned(), vec!["fb".to_owned(), "ig".to_owned()])]),
            offers: vec!["b".into()],
            ..Rule::default()
        };
        let c = CompiledRule::new(&rule, &offers());
        assert_eq!(c.offers, 0b10);
        let v = Visitor {
            country: Some(*b"CA"),
            device: Some(Device::Mobile),
            accept_language: Some("en-US,en;q=0.9"),
            query: "s1=x&s3=ig",
            ..Visitor::default()
        };
        assert!(c.matches(&v));
        assert!(!c.matches(&Visitor { country: None, ..v }));
        assert!(!c.matches(&Visitor { device: Some(Device::Desktop), ..v }));
        assert!(!c.matches(&Visitor { accept_language: Some("fr"), ..v }));
        assert!(!c.matches(&Visitor { query: "s3=tt", ..v }));
        assert!(CompiledRule::new(&Rule::default(), &offers()).matches(&Visitor::default()));
    }
}
