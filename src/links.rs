//! Links: what a slug points at, checked once and compiled for the redirect.
//!
//! An offer URL is parsed when the link is loaded, not per request: the compiled form
//! keeps the offer with any `s2` removed and the names of the parameters the affiliate
//! set, so that a redirect only appends strings. Config links live in a fixed map; API
//! links are read from the store into a moka cache, so a redirect reads no link from the
//! store while its entry is cached.
//!
//! A cached link is forgotten at once when this process changes it, and within moments
//! when another process does: the store reports such changes
//! ([`LinkStore::watch_changes`]) and [`LinkCatalog::follow`] forgets what they name.
//! Entries also expire after [`LINK_CACHE_TTL`], a backstop for a change the watch could
//! not report (a store without a watch, or a connection that died without a word).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::mpsc;

use crate::model::{link_key, Link};
use crate::networks::Network;
use crate::routing::{self, Router};
use crate::store::{LinkChange, LinkStore, StoreResult};

/// How long a link read from the store is trusted without word of a change. Changes are
/// reported as they happen, so this only bounds how long a change the report missed
/// lingers; five seconds costs each process one store read per busy link per five
/// seconds.
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
    /// A list: an offer URL sets a handful, and a redirect compares each without copying.
    offer_params: Vec<String>,
}

impl OfferUrl {
    /// Compiles `offer` for `network` (whose `subid` is stripped).
    fn compile(offer: &str, network: &Network) -> Result<OfferUrl, String> {
        let mut url = absolute_url(offer)?;
        let fragment = url.fragment().map(str::to_owned);
        url.set_fragment(None);
        let mut offer_params = Vec::new();
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
                    offer_params.push(name);
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

    /// Whether the affiliate's offer URL already sets `name` (in any case). Runs for each
    /// passed-through parameter of every redirect: it compares in place, without the
    /// lowercased copy a set lookup would need.
    pub fn offer_sets(&self, name: &str) -> bool {
        self.offer_params.iter().any(|p| p.eq_ignore_ascii_case(name))
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

type FastMap<V> = HashMap<String, V, foldhash::fast::FixedState>;
type ConfigLinks = FastMap<FastMap<Arc<CompiledLink>>>;

/// Every link, by network and slug.
pub struct LinkCatalog {
    /// network → slug → link: looked up by borrowed names, with no key built per request,
    /// hashed with foldhash (a third of SipHash's instructions on short names). Its keys
    /// come from the config alone, so no visitor can grow a bucket.
    config: ConfigLinks,
    networks: Arc<BTreeMap<String, Network>>,
    store: Arc<dyn LinkStore>,
    api: Cache<String, Option<Arc<CompiledLink>>>,
    /// Counts the times cached links were forgotten, so that a store read that an
    /// invalidation overtook is not kept (see [`LinkCatalog::find`]).
    forgotten: AtomicU64,
}

impl LinkCatalog {
    pub fn new(
        config_links: &[Link],
        networks: Arc<BTreeMap<String, Network>>,
        store: Arc<dyn LinkStore>,
    ) -> Result<LinkCatalog, String> {
        let mut config = ConfigLinks::default();
        for link in config_links {
            let network = networks.get(&link.network).ok_or_else(|| format!("link {}: unknown network", link.key()))?;
            let compiled = CompiledLink::compile(link.clone(), network)?;
            let slugs = config.entry(link.network.clone()).or_default();
            slugs.insert(link.slug.clone(), Arc::new(compiled));
        }
        let api = Cache::builder().max_capacity(100_000).time_to_live(LINK_CACHE_TTL).build();
        Ok(LinkCatalog { config, networks, store, api, forgotten: AtomicU64::new(0) })
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
        let before = self.forgotten.load(Ordering::SeqCst);
        let found = self.store.link(network, slug).await?;
        let compiled = found.and_then(|link| {
            let network = self.networks.get(&link.network)?;
            CompiledLink::compile(link, network).ok().map(Arc::new)
        });
        self.api.insert(key.clone(), compiled.clone());
        // A change reported while the store was read may be newer than what was read:
        // forget it again rather than serve it for a whole TTL. (Cached first, checked
        // second: a change reported after the check removes the entry itself.)
        if self.forgotten.load(Ordering::SeqCst) != before {
            self.api.invalidate(&key);
        }
        Ok(compiled)
    }

    /// Forgets a cached API link after this process changed it.
    pub fn invalidate(&self, network: &str, slug: &str) {
        self.forget(&LinkChange::Link(link_key(network, slug)));
    }

    /// Forgets what a reported change may have made stale, so that the next redirect
    /// reads it from the store.
    pub fn forget(&self, change: &LinkChange) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        match change {
            LinkChange::Link(key) => self.api.invalidate(key),
            LinkChange::Any => self.api.invalidate_all(),
        }
    }

    /// Applies the changes the store reports until it stops reporting them.
    pub async fn follow(&self, mut changes: mpsc::Receiver<LinkChange>) {
        while let Some(change) = changes.recv().await {
            tracing::debug!(?change, "a link changed elsewhere; forgetting it");
            self.forget(&change);
        }
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

    /// What holds a read: told when the read has begun, and what lets it finish.
    type Hold = Arc<(tokio::sync::Notify, tokio::sync::Notify)>;

    /// A store holding one link, `cake/demo`, whose offer the test changes; the first
    /// read can be held until the test lets it go.
    struct OneLink {
        offer: std::sync::Mutex<String>,
        reads: std::sync::atomic::AtomicUsize,
        hold: std::sync::Mutex<Option<Hold>>,
    }

    impl OneLink {
        fn new(offer: &str, hold: Option<Hold>) -> Arc<OneLink> {
            Arc::new(OneLink {
                offer: std::sync::Mutex::new(offer.to_owned()),
                reads: Default::default(),
                hold: std::sync::Mutex::new(hold),
            })
        }

        fn set(&self, offer: &str) {
            *self.offer.lock().unwrap() = offer.to_owned();
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl LinkStore for OneLink {
        async fn links(&self) -> StoreResult<Vec<Link>> {
            unimplemented!("not read by the catalog")
        }

        async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            // The link as it is when the read begins, as a store answers.
            let found = (network == "cake" && slug == "demo").then(|| link(&self.offer.lock().unwrap()));
            let hold = self.hold.lock().unwrap().take();
            if let Some(hold) = hold {
                hold.0.notify_one();
                hold.1.notified().await;
            }
            Ok(found)
        }

        async fn put_link(&self, _: &Link) -> StoreResult<()> {
            unimplemented!("not written by the catalog")
        }

        async fn delete_link(&self, _: &str, _: &str) -> StoreResult<bool> {
            unimplemented!("not written by the catalog")
        }
    }

    fn catalog(store: Arc<OneLink>) -> LinkCatalog {
        let networks = Arc::new(BTreeMap::from([("cake".to_owned(), Network::cake())]));
        LinkCatalog::new(&[], networks, store).unwrap()
    }

    async fn offer_found(catalog: &LinkCatalog) -> String {
        catalog.find("cake", "demo").await.unwrap().expect("the link").link.offer.clone()
    }

    #[tokio::test]
    async fn a_reported_change_is_read_again_and_only_that_link() {
        let store = OneLink::new("https://old.example.com/", None);
        let catalog = catalog(store.clone());
        assert_eq!(offer_found(&catalog).await, "https://old.example.com/");
        store.set("https://new.example.com/");
        assert_eq!(offer_found(&catalog).await, "https://old.example.com/", "cached until told");
        assert_eq!(store.reads(), 1);

        catalog.forget(&LinkChange::Link("cake/other".into()));
        catalog.find("cake", "demo").await.unwrap();
        catalog.find("cake", "missing").await.unwrap();
        catalog.find("cake", "missing").await.unwrap();
        assert_eq!(store.reads(), 2, "another link's change leaves this one cached; a missing link is cached too");

        catalog.forget(&LinkChange::Link("cake/demo".into()));
        assert_eq!(offer_found(&catalog).await, "https://new.example.com/");
        assert_eq!(store.reads(), 3);

        store.set("https://newer.example.com/");
        catalog.forget(&LinkChange::Any);
        assert_eq!(offer_found(&catalog).await, "https://newer.example.com/");
        catalog.find("cake", "missing").await.unwrap();
        assert_eq!(store.reads(), 5, "a change to any link forgets every link");
    }

    #[tokio::test]
    async fn a_read_that_a_reported_change_overtook_is_not_kept() {
        let hold = Hold::default();
        let (begun, release) = &*hold;
        let store = OneLink::new("https://old.example.com/", Some(hold.clone()));
        let catalog = Arc::new(catalog(store.clone()));

        let reading = tokio::spawn({
            let catalog = catalog.clone();
            async move { offer_found(&catalog).await }
        });
        begun.notified().await;
        // The link changes, and the change is reported, while the old one is on its way.
        store.set("https://new.example.com/");
        catalog.forget(&LinkChange::Link("cake/demo".into()));
        release.notify_one();
        assert_eq!(reading.await.unwrap(), "https://old.example.com/", "that request was already under way");

        assert_eq!(offer_found(&catalog).await, "https://new.example.com/", "the stale read was not cached");
        assert_eq!(store.reads(), 2);
    }

    #[tokio::test]
    async fn follow_applies_changes_until_the_store_stops_reporting() {
        let store = OneLink::new("https://old.example.com/", None);
        let catalog = catalog(store.clone());
        assert_eq!(offer_found(&catalog).await, "https://old.example.com/");
        store.set("https://new.example.com/");
        let (tx, rx) = mpsc::channel(4);
        tx.send(LinkChange::Link("cake/demo".into())).await.unwrap();
        drop(tx);
        catalog.follow(rx).await;
        assert_eq!(offer_found(&catalog).await, "https://new.example.com/");
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
