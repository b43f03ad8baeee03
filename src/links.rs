//! Links: what a slug points at, checked once and compiled for the redirect.
//!
//! An offer URL is parsed when the link is loaded, not per request: the compiled form
//! keeps the offer with any `s2` removed and the names of the parameters the affiliate
//! set, so that a redirect only appends strings. Config links live in a fixed map; API
//! links are read from the store into a moka cache whose entries live 5 seconds, so a
//! change made through any process is in effect everywhere within 5 seconds and a
//! redirect reads no link from the store while its entry is fresh.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::model::{link_key, Link};
use crate::networks::Network;
use crate::routing::{self, Router};
use crate::store::{LinkStore, StoreResult};

/// How long a link read from the store is trusted.
pub const LINK_CACHE_TTL: Duration = Duration::from_secs(5);

/// Redirect codes a link may use.
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Longest stickiness a link may ask for: a year.
pub const MAX_STICKY_HOURS: u32 = 24 * 366;

/// Checks a link's fields; returns `(field, problem)` pairs, empty when it is valid. The
/// field is named as the config and the API name it (`offers[1].weight`).
pub fn validate_link(link: &Link, networks: &BTreeMap<String, Network>) -> Vec<(String, String)> {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if link.slug.is_empty()
        || link.slug.len() > 128
        || !link.slug.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
    {
        problems.push(("slug", format!("{:?}: use 1 to 128 letters, digits and - _ . ~", link.slug)));
    }
    if !networks.contains_key(&link.network) {
        let known: Vec<_> = networks.keys().map(String::as_str).collect();
        problems
            .push(("network", format!("{:?} is not a configured network (known: {})", link.network, known.join(", "))));
    }
    if let Err(e) = absolute_url(&link.offer) {
        problems.push(("offer", e));
    }
    if !REDIRECT_CODES.contains(&link.redirect) {
        problems.push(("redirect", format!("{} is not one of 301, 302, 303, 307, 308", link.redirect)));
    }
    if let Some(f) = &link.fallback {
        if let Err(e) = absolute_url(f) {
            problems.push(("fallback", e));
        }
    }
    if link.event.as_deref().is_some_and(|e| e.trim().is_empty() || e.len() > 64) {
        problems.push(("event", "must be 1 to 64 characters".into()));
    }
    if link.sticky_hours > MAX_STICKY_HOURS {
        problems.push(("sticky_hours", format!("must be at most {MAX_STICKY_HOURS} (a year)")));
    }
    let mut problems: Vec<(String, String)> = problems.into_iter().map(|(f, m)| (f.to_owned(), m)).collect();
    problems.extend(routing::definition::validate(&link.offers, &link.rules, link.cap_tz.as_deref()));
    problems
}

fn absolute_url(text: &str) -> Result<url::Url, String> {
    crate::text::absolute_http_url(text).ok_or_else(|| format!("{text:?} is not an absolute http(s) URL"))
}

/// A link ready for redirects.
#[derive(Debug)]
pub struct CompiledLink {
    pub link: Link,
    /// `network/slug`, kept to avoid formatting it per click.
    pub key: String,
    /// The link's own `offer`, for links without offers.
    default: OfferUrl,
    /// The URL of each of the link's offers, by index.
    offers: Vec<OfferUrl>,
    /// The link's offers and rules compiled; `None` when it has no offers.
    pub router: Option<Router>,
}

impl CompiledLink {
    /// Compiles a link for `network` (whose `subid` is stripped from the offer URLs).
    pub fn compile(link: Link, network: &Network) -> Result<CompiledLink, String> {
        let default = OfferUrl::compile(&link.offer, network)?;
        let offers = link.offers.iter().map(|o| OfferUrl::compile(&o.url, network)).collect::<Result<Vec<_>, _>>()?;
        let router = (!link.offers.is_empty()).then(|| {
            let offset = link.cap_tz.as_deref().and_then(routing::definition::parse_offset).unwrap_or(0);
            Router::new(&link.offers, &link.rules, offset)
        });
        Ok(CompiledLink { key: link.key(), link, default, offers, router })
    }

    /// The URL of offer `offer` (an index into the link's offers), or of the link's own
    /// `offer` for `None`.
    pub fn url(&self, offer: Option<usize>) -> &OfferUrl {
        offer.and_then(|i| self.offers.get(i)).unwrap_or(&self.default)
    }
}

/// An offer URL compiled for redirects.
#[derive(Debug)]
pub struct OfferUrl {
    /// The offer URL without the click-id parameter and without its fragment.
    base: String,
    fragment: Option<String>,
    has_query: bool,
    /// Parameter names the affiliate set in the offer URL; a visitor never overrides them.
    offer_params: HashSet<String>,
}

impl OfferUrl {
    /// Compiles `offer` for `network` (whose `subid` is stripped).
    fn compile(offer: &str, network: &Network) -> Result<OfferUrl, String> {
        let mut url = absolute_url(offer)?;
        let fragment = url.fragment().map(str::to_owned);
        url.set_fragment(None);
        let mut offer_params = HashSet::new();
        // Keep the affiliate's parameters byte for byte; drop only the reserved one.
        let kept: Vec<&str> = url
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                let name: String =
                    form_urlencoded::parse(name.as_bytes()).map(|(k, _)| k.into_owned()).next().unwrap_or_default();
                let reserved = name.eq_ignore_ascii_case(&network.subid);
                if !reserved {
                    offer_params.insert(name.to_ascii_lowercase());
                }
                !reserved
            })
            .collect();
        let query = kept.join("&");
        let mut base = url.clone();
        base.set_query(None);
        let mut base = base.to_string();
        let has_query = !query.is_empty();
        if has_query {
            base.push('?');
            base.push_str(&query);
        }
        Ok(OfferUrl { base, fragment, has_query, offer_params })
    }

    /// Whether the affiliate's offer URL already sets `name`.
    pub fn offer_sets(&self, name: &str) -> bool {
        self.offer_params.contains(&name.to_ascii_lowercase())
    }

    /// The redirect target: the offer, then passed-through `(name, value)` pairs, then the
    /// click id. Values are percent-encoded here.
    pub fn location(&self, network: &Network, passthrough: &[(&str, &str)], click_id: &str) -> String {
        let mut out = String::with_capacity(
            self.base.len() + 48 + passthrough.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>(),
        );
        out.push_str(&self.base);
        let mut sep = if self.has_query { '&' } else { '?' };
        for (name, value) in passthrough {
            out.push(sep);
            sep = '&';
            out.extend(form_urlencoded::byte_serialize(name.as_bytes()));
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
        }
        out.push(sep);
        out.push_str(&network.subid);
        out.push('=');
        out.push_str(click_id);
        if let Some(f) = &self.fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }
}

/// Every link, by network and slug.
pub struct LinkCatalog {
    /// network → slug → link: looked up by borrowed names, with no key built per request.
    config: HashMap<String, HashMap<String, Arc<CompiledLink>>>,
    networks: Arc<BTreeMap<String, Network>>,
    store: Arc<dyn LinkStore>,
    api: Cache<String, Option<Arc<CompiledLink>>>,
}

impl LinkCatalog {
    pub fn new(
        config_links: &[Link],
        networks: Arc<BTreeMap<String, Network>>,
        store: Arc<dyn LinkStore>,
    ) -> Result<LinkCatalog, String> {
        let mut config = HashMap::new();
        for link in config_links {
            let network = networks.get(&link.network).ok_or_else(|| format!("link {}: unknown network", link.key()))?;
            let compiled = CompiledLink::compile(link.clone(), network)?;
            let slugs: &mut HashMap<String, Arc<CompiledLink>> = config.entry(link.network.clone()).or_default();
            slugs.insert(link.slug.clone(), Arc::new(compiled));
        }
        let api = Cache::builder().max_capacity(100_000).time_to_live(LINK_CACHE_TTL).build();
        Ok(LinkCatalog { config, networks, store, api })
    }

    pub fn networks(&self) -> &BTreeMap<String, Network> {
        &self.networks
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.get(name)
    }

    /// Whether `network/slug` is defined in the config file (and so read-only).
    pub fn is_config_link(&self, network: &str, slug: &str) -> bool {
        self.config_link(network, slug).is_some()
    }

    fn config_link(&self, network: &str, slug: &str) -> Option<&Arc<CompiledLink>> {
        self.config.get(network)?.get(slug)
    }

    pub fn config_links(&self) -> impl Iterator<Item = &Link> {
        self.config.values().flat_map(HashMap::values).map(|c| &c.link)
    }

    /// Finds a link: config first, then the API links' cache, then the store.
    pub async fn find(&self, network: &str, slug: &str) -> StoreResult<Option<Arc<CompiledLink>>> {
        if let Some(link) = self.config_link(network, slug) {
            return Ok(Some(link.clone()));
        }
        let key = link_key(network, slug);
        if let Some(cached) = self.api.get(&key) {
            return Ok(cached);
        }
        let found = self.store.link(network, slug).await?;
        let compiled = found.and_then(|link| {
            let network = self.networks.get(&link.network)?;
            CompiledLink::compile(link, network).ok().map(Arc::new)
        });
        self.api.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Forgets a cached API link after this process changed it.
    pub fn invalidate(&self, network: &str, slug: &str) {
        self.api.invalidate(&link_key(network, slug));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LinkSource, LinkStatus};

    fn link(offer: &str) -> Link {
        Link {
            network: "cake".into(),
            slug: "demo".into(),
            offer: offer.into(),
            redirect: 302,
            status: LinkStatus::Active,
            fallback: None,
            event: None,
            source: LinkSource::Config,
            offers: Vec::new(),
            rules: Vec::new(),
            sticky_hours: 0,
            cap_tz: None,
        }
    }

    #[test]
    fn s2_in_the_offer_is_replaced_and_the_rest_kept_byte_for_byte() {
        let cake = Network::cake();
        let c = CompiledLink::compile(link("https://o.example.com/?a=200&s2=old&c=761&s1=yes%20sir"), &cake).unwrap();
        let c = c.url(None);
        assert_eq!(c.location(&cake, &[], "CID"), "https://o.example.com/?a=200&c=761&s1=yes%20sir&s2=CID");
        assert!(c.offer_sets("S1") && !c.offer_sets("s3") && !c.offer_sets("s2"));
    }

    #[test]
    fn passthrough_values_are_encoded_and_fragments_kept() {
        let cake = Network::cake();
        let c = CompiledLink::compile(link("https://o.example.com/path#frag"), &cake).unwrap();
        assert_eq!(
            c.url(None).location(&cake, &[("s3", "a b&c=d")], "CID"),
            "https://o.example.com/path?s3=a+b%26c%3Dd&s2=CID#frag"
        );
    }

    #[test]
    fn bad_links_are_explained() {
        let mut nets = BTreeMap::new();
        nets.insert("cake".to_owned(), Network::cake());
        let mut l = link("ftp://x");
        l.slug = "no spaces".into();
        l.redirect = 200;
        let fields: Vec<_> = validate_link(&l, &nets).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["slug", "offer", "redirect"]);
    }
}
