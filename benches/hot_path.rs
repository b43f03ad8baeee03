//! Micro-benchmarks of the redirect and postback hot paths' pure pieces.
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
use cakelink::store::embedded::EmbeddedStore;
use cakelink::store::{Store, StoreLimits};
use criterion::{criterion_group, criterion_main, Criterion};

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

criterion_group!(benches, click_ids, links, classify_and_parse);
criterion_main!(benches);
