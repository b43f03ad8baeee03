//! Micro-benchmarks of the redirect and postback hot paths' pure pieces, and of choosing
//! among a link's offers.
//!
//! `cargo bench --bench hot_path`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cakelink::bots::{classify, RequestTraits};
use cakelink::clickid::Keyring;
use cakelink::links::{CompiledLink, LinkCatalog};
use cakelink::model::{Link, LinkSource, LinkStatus};
use cakelink::networks::Network;
use cakelink::postback::Fields;
use cakelink::routing::geo::CountryDb;
use cakelink::routing::{device, Device, Offer, OfferStatus, Router, Rule, Visitor};
use cakelink::store::embedded::EmbeddedStore;
use cakelink::store::{Store, StoreLimits};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;

#[path = "../tests/support/mmdb.rs"]
mod mmdb;

const NOW: u64 = 1_795_000_000;
const UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

fn demo_link() -> Link {
    Link {
        network: "cake".into(),
        slug: "demo".into(),
        offer: "https://offers.example.com/?a=200&c=761&s1=yes".into(),
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

fn click_ids(c: &mut Criterion) {
    let ring = Keyring::new("bench-secret-0123456789", &[], 37 * 86_400);
    let id = ring.mint(NOW);
    c.bench_function("click_id/mint", |b| b.iter(|| black_box(ring.mint(black_box(NOW)))));
    c.bench_function("click_id/verify", |b| b.iter(|| black_box(ring.verify(black_box(id.as_str()), NOW))));
}

fn links(c: &mut Criterion) {
    let cake = Network::cake();
    let compiled = CompiledLink::compile(demo_link(), &cake).expect("link compiles");
    c.bench_function("offer_url/build", |b| {
        b.iter(|| {
            black_box(compiled.url(None).location(
                &cake,
                black_box(&[("s3", "creative7")]),
                "3FwnU5zqsOp2D0cXN9jcYI2NWulyjXFk",
            ))
        })
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let limits = StoreLimits {
        click_ttl: Duration::from_secs(86_400),
        event_log_max: 10,
        personal_ttl: cakelink::store::PERSONAL_DATA_TTL,
        outbox: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // The store's fsync timer and sweep are tasks: it opens inside the runtime.
    let _in_runtime = rt.enter();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path(), Duration::from_secs(1), limits).expect("store opens"));
    let mut nets = BTreeMap::new();
    nets.insert("cake".to_owned(), cake);
    let catalog = LinkCatalog::new(&[demo_link()], Arc::new(nets), store).expect("catalog");
    c.bench_function("link/lookup", |b| {
        b.iter(|| rt.block_on(async { black_box(catalog.find("cake", "demo").await) }))
    });
}

fn classify_and_parse(c: &mut Criterion) {
    c.bench_function("bots/classify_browser", |b| {
        b.iter(|| black_box(classify(RequestTraits { is_head: false, purpose: None, user_agent: Some(black_box(UA)) })))
    });
    let query = "s1=yes&s2=3FwnU5zqsOp2D0cXN9jcYI2NWulyjXFk&s3=%23s3%23&s4=%23s4%23&s5=%23s5%23&oid=565&affid=200&campid=8599&cid=761&tid=10232206589ae3003509aacaa07ef2&price=7";
    c.bench_function("postback/parse", |b| b.iter(|| black_box(Fields::from_query(black_box(query)))));
}

/// Picking an offer: three rules checked (country, device, language), two weighted
/// offers, one of them capped and known full for the day; then a country lookup in a
/// database of 4,096 networks, and a device lookup.
fn routing(c: &mut Criterion) {
    let offer = |id: &str, weight, daily_cap| Offer {
        id: id.into(),
        url: format!("https://offers.example.com/?c={id}"),
        weight,
        daily_cap,
        status: OfferStatus::Active,
    };
    let offers = [offer("a", 70, None), offer("b", 30, Some(500)), offer("c", 1, None)];
    let rules = [
        Rule { country: vec!["DE".into()], offers: vec!["c".into()], ..Rule::default() },
        Rule { device: vec![Device::Tablet], offers: vec!["c".into()], ..Rule::default() },
        Rule {
            country: vec!["US".into()],
            device: vec![Device::Mobile],
            offers: vec!["a".into(), "b".into()],
            ..Rule::default()
        },
    ];
    let router = Router::new(&offers, &rules, 0);
    router.mark_full(1, 20_000);
    let visitor = Visitor {
        country: Some(*b"US"),
        device: Some(Device::Mobile),
        os: None,
        accept_language: Some("en-US,en;q=0.9"),
        query: "s1=yes&s3=creative7",
        sticky: None,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    c.bench_function("routing/pick", |b| {
        b.iter(|| black_box(router.pick(black_box(&visitor), 20_000, true, &mut rng)))
    });
    let open_day = 20_001;
    c.bench_function("routing/pick_with_a_capped_candidate", |b| {
        b.iter(|| black_box(router.pick(black_box(&visitor), open_day, true, &mut rng)))
    });

    let networks: Vec<([u8; 4], u8, &str)> =
        (0..4096u32).map(|i| ((i << 20).to_be_bytes(), 12, if i % 2 == 0 { "US" } else { "DE" })).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("country.mmdb");
    std::fs::write(&path, mmdb::country_db(&networks)).expect("write the database");
    let db = CountryDb::open(&path).expect("database opens");
    let ip: std::net::IpAddr = "81.2.69.160".parse().expect("address");
    assert!(db.country(ip).is_some());
    c.bench_function("routing/country_lookup", |b| b.iter(|| black_box(db.country(black_box(ip)))));
    c.bench_function("routing/device", |b| b.iter(|| black_box(device::classify(Some(black_box(UA))))));
}

criterion_group!(benches, click_ids, links, classify_and_parse, routing);
criterion_main!(benches);
