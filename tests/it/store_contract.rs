//! The store contract: the same checks run against every backend, so the embedded store
//! and the Redis store cannot drift apart. Each `check_*` takes a `&dyn Store`; the
//! `contract!` macro turns each into one test per backend. Redis-only behaviour (TTLs,
//! reconnecting, key layout) is tested at the end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cakelink::clickid::Keyring;
use cakelink::model::{
    Click, Conversion, Counters, Delivery, DeliveryStatus, Event, EventStatus, HourCounters, Link, LinkSource,
    LinkStatus, Recorded, Reversed, Subject, UnixHour, UnixMillis,
};
use cakelink::money::Money;
use cakelink::store::embedded::EmbeddedStore;
use cakelink::store::redis::RedisStore;
use cakelink::store::{
    ClickOrigin, ClickStore, ConversionStore, EventLog, Health, LinkStore, Outbox, OutboxRoute, OutboxRoutes, Requeue,
    Store, StoreLimits,
};

use crate::redis_server::RedisServer;

/// A UTC hour in November 2025; every check's records sit around it.
const H: UnixHour = 490_000;
const HOUR_MS: i64 = 3_600_000;
/// The click lifetime of the tests: 37 days, as in production.
const CLICK_TTL_SECS: u64 = 86_400 * 37;
/// How long clicks keep their IP address and user agent.
const PERSONAL_TTL: Duration = Duration::from_secs(7 * 86_400);

fn limits() -> StoreLimits {
    StoreLimits {
        click_ttl: Duration::from_secs(CLICK_TTL_SECS),
        event_log_max: 5,
        personal_ttl: PERSONAL_TTL,
        outbox: outbox_routes(),
    }
}

/// Two destinations: `meta1` takes every conversion and people's clicks; `gads` takes
/// purchases whose click carried a gclid.
fn outbox_routes() -> OutboxRoutes {
    OutboxRoutes::new(vec![
        OutboxRoute { destination: "meta1".into(), events: None, clicks: true, requires_any: vec![] },
        OutboxRoute {
            destination: "gads".into(),
            events: Some(vec!["Purchase".into()]),
            clicks: false,
            requires_any: vec!["gclid".into(), "gbraid".into(), "wbraid".into()],
        },
    ])
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Start of hour `hour`, in milliseconds.
fn ms(hour: UnixHour) -> UnixMillis {
    i64::from(hour) * HOUR_MS
}

/// A fresh, genuine click id, as the redirect mints them.
fn new_id() -> String {
    Keyring::new("s", &[], CLICK_TTL_SECS).mint(now_secs()).to_string()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A click with every field filled in.
fn click(link: &str, at: UnixMillis, bot: Option<&str>) -> Click {
    Click {
        id: new_id(),
        link: link.to_owned(),
        at,
        bot: bot.map(str::to_owned),
        ip: Some("203.0.113.7".to_owned()),
        user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)".to_owned()),
        referer: Some("https://m.facebook.com/".to_owned()),
        utm: pairs(&[("source", "facebook"), ("campaign", "spring sale")]),
        ad_click_ids: pairs(&[("fbclid", "IwAR2xYz_0123")]),
        subids: pairs(&[("s1", "adset-7"), ("s3", "créa/β")]),
        offer: None,
        rule: None,
        fallback: None,
    }
}

fn conversion(click: &Click, event: &str, value: &str, at: UnixMillis, tid: &str) -> Conversion {
    let fields = pairs(&[("price", value), ("tid", tid), ("s2", &click.id)]);
    Conversion {
        id: Conversion::derive_id(&click.id, Some(tid), &fields, event),
        at,
        network: "cake1".to_owned(),
        event: event.to_owned(),
        value: Money::parse(value).expect("test amount"),
        currency: "USD".to_owned(),
        transaction_id: Some(tid.to_owned()),
        item_id: Some("sku-42".to_owned()),
        fields,
        click: click.clone(),
        reversed_at: None,
    }
}

fn event(received_at: UnixMillis, status: EventStatus) -> Event {
    Event {
        received_at,
        network: "cake1".to_owned(),
        status,
        reason: format!("reason {received_at}"),
        click_id: Some(new_id()),
        conversion_id: None,
        query: format!("s2=x&price=1&n={received_at}"),
    }
}

fn link(network: &str, slug: &str) -> Link {
    Link {
        network: network.to_owned(),
        slug: slug.to_owned(),
        offer: format!("https://offers.example/{slug}?s2={{click_id}}"),
        redirect: 302,
        status: LinkStatus::Active,
        fallback: Some("https://example.com/".to_owned()),
        event: Some("Purchase".to_owned()),
        source: LinkSource::Api,
        offers: Vec::new(),
        rules: Vec::new(),
        sticky_hours: 0,
        cap_tz: None,
    }
}

fn counted(hour: UnixHour, link: &str, counters: Counters) -> HourCounters {
    HourCounters { hour, link: link.to_owned(), counters }
}

fn clicks(n: u64) -> Counters {
    Counters { clicks: n, ..Counters::default() }
}

async fn check_click_round_trip(store: &dyn Store) {
    let c = click("cake1/spring", ms(H) + 1234, None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");
    assert_eq!(store.find_click(&c.id).await.expect("find click"), Some(c));

    let mut minimal = click("cake1/spring", ms(H), Some("prefetch"));
    minimal.ip = None;
    minimal.user_agent = None;
    minimal.referer = None;
    minimal.utm.clear();
    minimal.ad_click_ids.clear();
    minimal.subids.clear();
    store.record_click(minimal.view(), ClickOrigin::Replayed).await.expect("record click");
    assert_eq!(store.find_click(&minimal.id).await.expect("find click"), Some(minimal));
}

async fn check_personal_data_dropped_after_its_lifetime(store: &dyn Store) {
    let eight_days_ago = now_secs() - 8 * 86_400;
    let mut old = click("cake1/spring", eight_days_ago as i64 * 1000, None);
    old.id = Keyring::new("s", &[], CLICK_TTL_SECS).mint(eight_days_ago).to_string();
    let recent = click("cake1/spring", ms(H), None);
    store.record_click(old.view(), ClickOrigin::Replayed).await.expect("record old click");
    store.record_click(recent.view(), ClickOrigin::Replayed).await.expect("record recent click");
    // Conversions keep a copy of their click: the old one's goes too, the recent one's stays.
    let old_at = old.at + 60_000;
    let recent_at = (now_secs() as i64 - 60) * 1000;
    let old_conversion = conversion(&old, "Purchase", "5", old_at, "t-old");
    let recent_conversion = conversion(&old, "Purchase", "6", recent_at, "t-new");
    store.record_conversion(&old_conversion).await.expect("record old conversion");
    store.record_conversion(&recent_conversion).await.expect("record recent conversion");

    store.sweep().await.expect("sweep");
    let stripped = Click { ip: None, user_agent: None, ..old.clone() };
    assert_eq!(store.find_click(&old.id).await.expect("find old click"), Some(stripped.clone()));
    assert_eq!(store.find_click(&recent.id).await.expect("find recent click"), Some(recent.clone()));
    let conversions = store.conversions(old_at, recent_at + 1).await.expect("conversions");
    let old_stripped = Conversion { click: stripped.clone(), ..old_conversion };
    assert_eq!(conversions, vec![old_stripped, recent_conversion]);
    // A second pass finds nothing more to do and changes nothing.
    store.sweep().await.expect("sweep again");
    assert_eq!(store.find_click(&old.id).await.expect("find old click"), Some(stripped));
    assert_eq!(store.find_click(&recent.id).await.expect("find recent click"), Some(recent));
}

async fn check_unknown_click_is_none(store: &dyn Store) {
    assert_eq!(store.find_click(&new_id()).await.expect("find click"), None);
    assert_eq!(store.find_click("").await.expect("find click"), None);
}

async fn check_same_click_counts_once(store: &dyn Store) {
    let c = click("cake1/spring", ms(H) + 10, None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click again");
    // A replay with other details is still the same click.
    let mut replay = c.clone();
    replay.ip = Some("198.51.100.1".to_owned());
    store.record_click(replay.view(), ClickOrigin::Replayed).await.expect("record replay");

    assert_eq!(store.counters(H, H).await.expect("counters"), vec![counted(H, "cake1/spring", clicks(1))]);
    assert_eq!(store.find_click(&c.id).await.expect("find click"), Some(c));
}

async fn check_bot_clicks_count_as_bot_hits(store: &dyn Store) {
    store
        .record_click(click("cake1/spring", ms(H), Some("facebookexternalhit")).view(), ClickOrigin::Replayed)
        .await
        .expect("record bot click");
    store
        .record_click(click("cake1/spring", ms(H) + 1, Some("prefetch")).view(), ClickOrigin::Replayed)
        .await
        .expect("record bot click");
    store
        .record_click(click("cake1/spring", ms(H) + 2, None).view(), ClickOrigin::Replayed)
        .await
        .expect("record click");
    let expected = Counters { clicks: 1, bot_hits: 2, ..Counters::default() };
    assert_eq!(store.counters(H, H).await.expect("counters"), vec![counted(H, "cake1/spring", expected)]);
}

async fn check_counters_by_hour_and_link(store: &dyn Store) {
    let records = [
        ("cake1/a", H, 0),
        ("cake1/a", H, HOUR_MS - 1),
        ("cake1/b", H, 5),
        ("cake1/a", H + 1, 0),
        // A day later: another day of counters.
        ("cake1/a", H + 30, 7),
        ("cake2/a", H + 30, 8),
    ];
    for (l, hour, offset) in records {
        store
            .record_click(click(l, ms(hour) + offset, None).view(), ClickOrigin::Replayed)
            .await
            .expect("record click");
    }

    assert_eq!(
        store.counters(H, H + 1).await.expect("counters"),
        vec![counted(H, "cake1/a", clicks(2)), counted(H, "cake1/b", clicks(1)), counted(H + 1, "cake1/a", clicks(1)),]
    );
    // `to` is inclusive, the hour after it is left out.
    assert_eq!(
        store.counters(H, H).await.expect("counters"),
        vec![counted(H, "cake1/a", clicks(2)), counted(H, "cake1/b", clicks(1)),]
    );
    assert_eq!(
        store.counters(H + 1, H + 30).await.expect("counters"),
        vec![
            counted(H + 1, "cake1/a", clicks(1)),
            counted(H + 30, "cake1/a", clicks(1)),
            counted(H + 30, "cake2/a", clicks(1)),
        ]
    );
    assert_eq!(store.counters(H + 2, H + 29).await.expect("counters"), vec![]);
    assert_eq!(store.counters(0, u32::MAX).await.expect("counters").len(), 5);
}

async fn check_conversion_counts_once(store: &dyn Store) {
    let c = click("cake1/spring", ms(H) + 1, None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");
    let purchase = conversion(&c, "Purchase", "12.345678", ms(H + 1) + 5, "tid-1");
    let lead = conversion(&c, "Lead", "0.000001", ms(H + 1) + 6, "tid-2");
    let other = conversion(&c, "Install", "0", ms(H + 1) + 7, "tid-3");

    for conv in [&purchase, &lead, &other] {
        assert_eq!(store.record_conversion(conv).await.expect("record"), Recorded::New);
    }
    for conv in [&purchase, &lead, &other] {
        assert_eq!(store.record_conversion(conv).await.expect("record again"), Recorded::Duplicate);
    }
    let mut replay = purchase.clone();
    replay.value = Money::parse("99").expect("amount");
    assert_eq!(store.record_conversion(&replay).await.expect("replay"), Recorded::Duplicate);

    let expected = Counters {
        conversions: 3,
        leads: 1,
        purchases: 1,
        revenue: Money::parse("12.345679").expect("amount"),
        ..Counters::default()
    };
    assert_eq!(expected.revenue.micros(), 12_345_679);
    assert_eq!(
        store.counters(H, H + 1).await.expect("counters"),
        vec![counted(H, "cake1/spring", clicks(1)), counted(H + 1, "cake1/spring", expected),]
    );
    assert_eq!(store.conversions(ms(H), ms(H + 2)).await.expect("conversions"), vec![purchase, lead, other]);
}

async fn check_conversions_range_excludes_to(store: &dyn Store) {
    let t0 = ms(H) + 500;
    // Different clicks, so on the Redis store different shards.
    let at = [t0, t0 + 1000, t0 + 2000, t0 + 2000, t0 + 2000];
    let mut convs: Vec<Conversion> = at
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            let c = click("cake1/spring", at - 100, None);
            conversion(&c, "Purchase", "1.50", at, &format!("tid-{i}"))
        })
        .collect();
    for conv in convs.iter().rev() {
        assert_eq!(store.record_conversion(conv).await.expect("record"), Recorded::New);
    }
    // Equal times come back ordered by id.
    convs[2..].sort_by(|a, b| a.id.cmp(&b.id));

    let range = |from, to| async move { store.conversions(from, to).await.expect("conversions") };
    assert_eq!(range(t0, t0 + 2000).await, convs[..2].to_vec());
    assert_eq!(range(t0 + 1, t0 + 2001).await, convs[1..].to_vec());
    assert_eq!(range(t0 + 2000, t0 + 2001).await, convs[2..].to_vec());
    assert_eq!(range(0, i64::MAX).await, convs.clone());
    assert_eq!(range(t0 + 2001, t0 + 90_000_000).await, vec![]);
    assert_eq!(range(t0, t0).await, vec![]);
    assert_eq!(range(t0 + 1000, t0 + 1000 + 1).await, convs[1..2].to_vec());
}

async fn check_event_log(store: &dyn Store) {
    // The cap is 5: of 8 events only the 5 newest stay.
    for i in 0..8 {
        let status = if i % 2 == 0 { EventStatus::Ok } else { EventStatus::Rejected };
        store.log_event(&event(1_000 + i, status)).await.expect("log event");
    }
    let times = |events: Vec<Event>| events.iter().map(|e| e.received_at).collect::<Vec<_>>();

    let all = store.events(None, 100).await.expect("events");
    assert_eq!(all[0], event_like(&all[0], 1_007, EventStatus::Rejected));
    assert_eq!(times(all), vec![1_007, 1_006, 1_005, 1_004, 1_003]);
    assert_eq!(times(store.events(None, 2).await.expect("events")), vec![1_007, 1_006]);
    assert_eq!(times(store.events(Some(EventStatus::Rejected), 100).await.expect("events")), vec![1_007, 1_005, 1_003]);
    assert_eq!(times(store.events(Some(EventStatus::Ok), 1).await.expect("events")), vec![1_006]);
    assert_eq!(times(store.events(Some(EventStatus::Duplicate), 100).await.expect("events")), Vec::<i64>::new());
    assert_eq!(times(store.events(None, 0).await.expect("events")), Vec::<i64>::new());

    // And the log keeps rolling.
    store.log_event(&event(2_000, EventStatus::Ok)).await.expect("log event");
    assert_eq!(times(store.events(None, 100).await.expect("events")), vec![2_000, 1_007, 1_006, 1_005, 1_004]);
}

/// `stored` must be exactly the event written with these values (all fields survive).
fn event_like(stored: &Event, received_at: UnixMillis, status: EventStatus) -> Event {
    Event {
        received_at,
        network: "cake1".to_owned(),
        status,
        reason: format!("reason {received_at}"),
        click_id: stored.click_id.clone(),
        conversion_id: None,
        query: format!("s2=x&price=1&n={received_at}"),
    }
}

async fn check_links(store: &dyn Store) {
    assert_eq!(store.links().await.expect("links"), vec![]);
    assert_eq!(store.link("cake1", "a").await.expect("link"), None);

    let a = link("cake1", "a");
    let b = link("cake1", "b");
    let c = link("cake2", "a");
    for l in [&c, &b, &a] {
        store.put_link(l).await.expect("put link");
    }
    assert_eq!(store.link("cake1", "a").await.expect("link"), Some(a.clone()));
    assert_eq!(store.links().await.expect("links"), vec![a.clone(), b.clone(), c.clone()]);

    let mut paused = a.clone();
    paused.status = LinkStatus::Paused;
    paused.fallback = None;
    store.put_link(&paused).await.expect("replace link");
    assert_eq!(store.link("cake1", "a").await.expect("link"), Some(paused));

    assert!(store.delete_link("cake1", "a").await.expect("delete"));
    assert!(!store.delete_link("cake1", "a").await.expect("delete again"));
    assert!(!store.delete_link("cake9", "zz").await.expect("delete unknown"));
    assert_eq!(store.link("cake1", "a").await.expect("link"), None);
    assert_eq!(store.links().await.expect("links"), vec![b, c]);
}

async fn check_ping_and_flush(store: &dyn Store) {
    store.ping().await.expect("ping");
    store.flush().await.expect("flush");
}

fn now_ms() -> UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const LEASE: Duration = Duration::from_secs(60);

/// Claims as `owner` until nothing more is due at `now` (a Redis claim spreads its limit
/// over the shards, so one call may return only part of what is due).
async fn claim_all(store: &dyn Store, owner: &str, now: UnixMillis) -> Vec<Delivery> {
    let mut all = Vec::new();
    for destination in ["meta1", "gads"] {
        loop {
            let got = store.claim_deliveries(owner, destination, now, LEASE, 100).await.expect("claim");
            if got.is_empty() {
                break;
            }
            assert!(got.iter().all(|d| d.destination == destination));
            all.extend(got);
        }
    }
    all
}

async fn check_outbox_enqueues_with_the_record(store: &dyn Store) {
    let mut with_gclid = click("cake1/spring", ms(H), None);
    with_gclid.ad_click_ids.push(("gclid".into(), "EAIaIQ-gclid".into()));
    store.record_click(with_gclid.view(), ClickOrigin::Replayed).await.expect("record click");
    let bot = click("cake1/spring", ms(H), Some("prefetch"));
    store.record_click(bot.view(), ClickOrigin::Replayed).await.expect("record bot");
    let purchase = conversion(&with_gclid, "Purchase", "7", ms(H) + 5, "t1");
    let lead = conversion(&with_gclid, "Lead", "0", ms(H) + 6, "t2");
    assert_eq!(store.record_conversion(&purchase).await.expect("record"), Recorded::New);
    assert_eq!(store.record_conversion(&lead).await.expect("record"), Recorded::New);
    // A duplicate conversion enqueues nothing more.
    assert_eq!(store.record_conversion(&purchase).await.expect("record"), Recorded::Duplicate);
    store.flush().await.expect("flush");

    // The click for meta1; the purchase for both; the lead for meta1 only; no bot.
    assert_eq!(store.outbox_depth().await.expect("depth"), 4);
    let mut ids: Vec<String> = claim_all(store, "a", now_ms()).await.into_iter().map(|d| d.id).collect();
    ids.sort();
    let mut expected = vec![
        Delivery::id_for(&with_gclid.id, "meta1"),
        Delivery::id_for(&purchase.id, "meta1"),
        Delivery::id_for(&purchase.id, "gads"),
        Delivery::id_for(&lead.id, "meta1"),
    ];
    expected.sort();
    assert_eq!(ids, expected);

    let of_purchase = store.deliveries_of(&with_gclid.id, &purchase.id).await.expect("deliveries of");
    assert_eq!(of_purchase.len(), 2);
    for d in &of_purchase {
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.subject, Subject::Conversion(Box::new(purchase.clone())));
    }
    let clicks = store.deliveries_of(&with_gclid.id, &with_gclid.id).await.expect("deliveries of");
    assert_eq!(clicks.len(), 1);
    assert_eq!(clicks[0].subject, Subject::Click(Box::new(with_gclid.clone())));
}

async fn check_outbox_leases_and_outcomes(store: &dyn Store) {
    let c = click("cake1/spring", ms(H), None);
    let conv = conversion(&c, "Lead", "0", ms(H) + 1, "t");
    store.record_conversion(&conv).await.expect("record");
    let now = now_ms();
    let claimed = claim_all(store, "a", now).await;
    let conv_delivery =
        claimed.iter().find(|d| d.subject.event_id() == conv.id).expect("the conversion is due").clone();
    // Leased: another owner sees nothing until the lease ends.
    assert!(claim_all(store, "b", now + 1000).await.is_empty());
    // After the lease, another owner takes it over, and the first one's late outcome is ignored.
    let later = now + LEASE.as_millis() as i64 + 1000;
    let taken = claim_all(store, "b", later).await;
    assert!(taken.iter().any(|d| d.id == conv_delivery.id));
    let mut done = conv_delivery.clone();
    done.status = DeliveryStatus::Delivered;
    done.attempts = 1;
    done.last_status = Some(200);
    done.updated_at = later;
    assert!(!store.finish_delivery("a", &done).await.expect("finish"));
    assert!(store.finish_delivery("b", &done).await.expect("finish"));
    assert!(!store.finish_delivery("b", &done).await.expect("finish twice"));
    store.flush().await.expect("flush");
    assert_eq!(store.outbox_depth().await.expect("depth"), 0);
    let delivered = store.deliveries(Some(DeliveryStatus::Delivered), None, 10).await.expect("list");
    assert_eq!(delivered, vec![done.clone()]);
    assert_eq!(store.deliveries(None, Some("gads"), 10).await.expect("list"), vec![]);
    assert_eq!(store.deliveries(None, Some("meta1"), 10).await.expect("list"), vec![done.clone()]);

    // A retry goes back in the queue at its due time.
    let c2 = click("cake1/spring", ms(H), None);
    let conv2 = conversion(&c2, "Lead", "0", ms(H) + 1, "t");
    store.record_conversion(&conv2).await.expect("record");
    let now = now_ms();
    let mut d2 = claim_all(store, "a", now).await.into_iter().next().expect("due");
    d2.attempts = 1;
    d2.last_error = Some("HTTP 503".into());
    d2.next_at = now + 10_000;
    d2.updated_at = now;
    assert!(store.finish_delivery("a", &d2).await.expect("finish"));
    assert!(claim_all(store, "a", now + 5_000).await.is_empty(), "not due before next_at");
    let again = claim_all(store, "a", now + 10_000).await;
    assert_eq!(again, vec![d2.clone()]);

    // Dead-lettered, then re-queued through the API's path.
    let mut failed = d2.clone();
    failed.status = DeliveryStatus::Failed;
    failed.attempts = 2;
    assert!(store.finish_delivery("a", &failed).await.expect("finish"));
    store.flush().await.expect("flush");
    assert_eq!(store.deliveries(Some(DeliveryStatus::Failed), None, 10).await.expect("list"), vec![failed.clone()]);
    assert_eq!(
        store.requeue_delivery(&done.id, now).await.expect("requeue"),
        Requeue::NotDeadLettered(DeliveryStatus::Delivered)
    );
    assert_eq!(store.requeue_delivery("nope~meta1", now).await.expect("requeue"), Requeue::NotFound);
    match store.requeue_delivery(&failed.id, now + 20_000).await.expect("requeue") {
        Requeue::Done(d) => assert_eq!((d.status, d.attempts, d.next_at), (DeliveryStatus::Pending, 0, now + 20_000)),
        other => panic!("{other:?}"),
    }
    store.flush().await.expect("flush");
    assert_eq!(store.deliveries(Some(DeliveryStatus::Failed), None, 10).await.expect("list"), vec![]);
    let back = claim_all(store, "a", now + 20_000).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, failed.id);
}

/// A purchase and a lead of one click on offer `o1`, and a purchase of another click in
/// the next hour: reversing the first purchase takes exactly its part back from its hour,
/// for the link and the offer, and leaves the other hours alone.
async fn check_reversal_takes_back_its_counters(store: &dyn Store) {
    let mut c = click("cake1/spring", ms(H) + 1, None);
    c.offer = Some("o1".to_owned());
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");
    let purchase = conversion(&c, "Purchase", "12.345678", ms(H + 1) + 5, "tid-1");
    let lead = conversion(&c, "Lead", "0.5", ms(H + 1) + 6, "tid-2");
    let later = conversion(&click("cake1/spring", ms(H + 1), None), "Purchase", "3", ms(H + 2) + 7, "tid-3");
    for conv in [&purchase, &lead, &later] {
        assert_eq!(store.record_conversion(conv).await.expect("record"), Recorded::New);
    }
    let before = store.counters(H, H + 2).await.expect("counters");
    let money = |text: &str| Money::parse(text).expect("amount");
    let both = Counters { conversions: 2, leads: 1, purchases: 1, revenue: money("12.845678"), ..Counters::default() };
    let later_counters = Counters { conversions: 1, purchases: 1, revenue: money("3"), ..Counters::default() };
    let clicked = clicks(1);
    assert_eq!(
        before,
        vec![
            counted(H, "cake1/spring", clicked),
            counted(H, "cake1/spring/o1", clicked),
            counted(H + 1, "cake1/spring", both),
            counted(H + 1, "cake1/spring/o1", both),
            counted(H + 2, "cake1/spring", later_counters),
        ]
    );

    let reversed_at = ms(H + 40);
    assert_eq!(store.reverse_conversion(&purchase, reversed_at).await.expect("reverse"), Reversed::Done);
    let lead_only = Counters { conversions: 1, leads: 1, revenue: money("0.5"), ..Counters::default() };
    let after = vec![
        counted(H, "cake1/spring", clicked),
        counted(H, "cake1/spring/o1", clicked),
        counted(H + 1, "cake1/spring", lead_only),
        counted(H + 1, "cake1/spring/o1", lead_only),
        counted(H + 2, "cake1/spring", later_counters),
    ];
    assert_eq!(store.counters(H, H + 2).await.expect("counters"), after);

    // Still listed, now with its reversal time; the others were not reversed.
    let reversed = Conversion { reversed_at: Some(reversed_at), ..purchase.clone() };
    assert_eq!(
        store.conversions(ms(H), ms(H + 3)).await.expect("conversions"),
        vec![reversed.clone(), lead.clone(), later.clone()]
    );

    // Again, even at another time: nothing changes.
    assert_eq!(store.reverse_conversion(&purchase, ms(H + 41)).await.expect("reverse again"), Reversed::Already);
    assert_eq!(store.counters(H, H + 2).await.expect("counters"), after);
    assert_eq!(store.conversions(ms(H + 1), ms(H + 2)).await.expect("conversions"), vec![reversed, lead]);

    // A conversion never recorded: nothing is written.
    let unknown = conversion(&c, "Purchase", "99", ms(H + 1) + 9, "tid-never");
    assert_eq!(store.reverse_conversion(&unknown, reversed_at).await.expect("reverse unknown"), Reversed::NotFound);
    assert_eq!(store.counters(H, H + 2).await.expect("counters"), after);
    assert_eq!(store.conversions(ms(H + 1) + 9, ms(H + 1) + 10).await.expect("conversions"), vec![]);
}

async fn check_conversions_of_click(store: &dyn Store) {
    let a = click("cake1/spring", ms(H), None);
    let b = click("cake1/spring", ms(H), None);
    store.record_click(a.view(), ClickOrigin::Replayed).await.expect("record click");
    store.record_click(b.view(), ClickOrigin::Replayed).await.expect("record click");
    let first = conversion(&a, "Lead", "0", ms(H) + 10, "t1");
    let second = conversion(&a, "Purchase", "20", ms(H + 3), "t2");
    // Recorded newest first: read back oldest first all the same.
    store.record_conversion(&second).await.expect("record");
    store.record_conversion(&first).await.expect("record");
    // Another click's conversion is not among them.
    store
        .record_conversion(&conversion(&click("cake1/spring", ms(H), None), "Lead", "0", ms(H) + 11, "t3"))
        .await
        .expect("record");

    assert_eq!(store.conversions_of_click(&a.id).await.expect("of click"), vec![first.clone(), second.clone()]);
    assert_eq!(store.conversions_of_click(&b.id).await.expect("of click"), vec![]);
    assert_eq!(store.conversions_of_click(&new_id()).await.expect("of unknown click"), vec![]);

    assert_eq!(store.reverse_conversion(&first, ms(H + 5)).await.expect("reverse"), Reversed::Done);
    let first = Conversion { reversed_at: Some(ms(H + 5)), ..first };
    assert_eq!(store.conversions_of_click(&a.id).await.expect("of click"), vec![first, second]);
}

/// A reversal is enqueued for the destinations its conversion went to, and no other,
/// as deliveries of their own that the outbox hands out like any other.
async fn check_reversal_deliveries(store: &dyn Store) {
    let mut with_gclid = click("cake1/spring", ms(H), None);
    with_gclid.ad_click_ids.push(("gclid".into(), "EAIaIQ-gclid".into()));
    store.record_click(with_gclid.view(), ClickOrigin::Replayed).await.expect("record click");
    let purchase = conversion(&with_gclid, "Purchase", "7", ms(H) + 5, "t1");
    let lead = conversion(&with_gclid, "Lead", "0", ms(H) + 6, "t2");
    store.record_conversion(&purchase).await.expect("record");
    store.record_conversion(&lead).await.expect("record");
    let now = now_ms();
    // The click and the conversions' own deliveries, leased to `a`.
    assert_eq!(claim_all(store, "a", now).await.len(), 4);

    let at = now - 60_000;
    assert_eq!(store.reverse_conversion(&purchase, at).await.expect("reverse"), Reversed::Done);
    assert_eq!(store.reverse_conversion(&lead, at).await.expect("reverse"), Reversed::Done);
    // Reversing again enqueues nothing more.
    assert_eq!(store.reverse_conversion(&lead, at).await.expect("reverse again"), Reversed::Already);
    store.flush().await.expect("flush");
    assert_eq!(store.outbox_depth().await.expect("depth"), 4 + 3);

    let mut claimed = claim_all(store, "b", now + 1000).await;
    claimed.sort_by(|x, y| x.id.cmp(&y.id));
    let reversal_key = |c: &Conversion| format!("{}.reversal", c.id);
    let mut expected = vec![
        Delivery::id_for(&reversal_key(&purchase), "meta1"),
        Delivery::id_for(&reversal_key(&purchase), "gads"),
        Delivery::id_for(&reversal_key(&lead), "meta1"),
    ];
    expected.sort();
    assert_eq!(claimed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), expected);
    for d in &claimed {
        let reversed = if d.subject.event_id() == purchase.id { &purchase } else { &lead };
        assert_eq!(d.subject, Subject::Reversal(Box::new(reversed.clone()), at));
        assert_eq!(d.status, DeliveryStatus::Pending);
    }
    // A conversion's reversal is found as an event of its own.
    let of_reversal = store.deliveries_of(&with_gclid.id, &reversal_key(&purchase)).await.expect("deliveries of");
    assert_eq!(of_reversal.len(), 2);
    assert_eq!(store.deliveries_of(&with_gclid.id, &purchase.id).await.expect("deliveries of").len(), 2);

    // Settled as skipped, it leaves the queue and is listed under its status.
    let mut skipped = claimed[0].clone();
    skipped.status = DeliveryStatus::Skipped;
    skipped.last_error = Some("the platform cannot retract a conversion".into());
    skipped.updated_at = now + 2000;
    assert!(store.finish_delivery("b", &skipped).await.expect("finish"));
    store.flush().await.expect("flush");
    assert_eq!(store.outbox_depth().await.expect("depth"), 4 + 2);
    assert_eq!(store.deliveries(Some(DeliveryStatus::Skipped), None, 10).await.expect("list"), vec![skipped.clone()]);
    assert_eq!(
        store.requeue_delivery(&skipped.id, now).await.expect("requeue"),
        Requeue::NotDeadLettered(DeliveryStatus::Skipped)
    );
}

/// One test per check and backend: `store_contract::embedded::check_x`,
/// `store_contract::on_redis::check_x` and `store_contract::on_redis_cluster::check_x`
/// (a one-node cluster, which refuses any command or script that spans slots).
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let store = EmbeddedStore::open(dir.path(), Duration::from_millis(1000), limits())
                        .expect("open embedded store");
                    assert_eq!(store.backend(), "embedded");
                    super::$check(&store).await;
                }
            )*
        }

        mod on_redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let server = RedisServer::start();
                    let store = RedisStore::connect(&server.url(), limits())
                        .await
                        .expect("connect to redis");
                    assert_eq!(store.backend(), "redis");
                    super::$check(&store).await;
                }
            )*
        }

        mod on_redis_cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let server = RedisServer::start_cluster();
                    let store = RedisStore::connect_cluster(&[server.url()], limits())
                        .await
                        .expect("connect to redis cluster");
                    assert_eq!(store.backend(), "redis");
                    super::$check(&store).await;
                }
            )*
        }
    };
}

contract!(
    check_click_round_trip,
    check_personal_data_dropped_after_its_lifetime,
    check_unknown_click_is_none,
    check_same_click_counts_once,
    check_bot_clicks_count_as_bot_hits,
    check_counters_by_hour_and_link,
    check_conversion_counts_once,
    check_conversions_range_excludes_to,
    check_event_log,
    check_links,
    check_ping_and_flush,
    check_outbox_enqueues_with_the_record,
    check_outbox_leases_and_outcomes,
    check_reversal_takes_back_its_counters,
    check_conversions_of_click,
    check_reversal_deliveries,
);

/// A plain connection for looking at what the store wrote.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url().as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// The bucket of this hour's clicks expires `click_ttl` after the hour ends.
async fn assert_bucket_expires_with_its_clicks(con: &mut redis::aio::MultiplexedConnection, bucket: &str) {
    let ttl: i64 = redis::cmd("TTL").arg(bucket).query_async(con).await.expect("TTL");
    let expected = CLICK_TTL_SECS as i64;
    assert!(
        (expected - 5..=expected + 3600).contains(&ttl),
        "TTL {ttl} of {bucket}, expected {expected} to an hour more"
    );
}

#[tokio::test]
async fn redis_click_keys_expire_after_the_click_lifetime() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    let c = click("cake1/spring", ms(H), None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");

    let mut con = raw(&server).await;
    // Clicks live in hour buckets: the bucket of the click's creation hour holds it, and
    // expires `click_ttl` after that hour ends.
    let keys: Vec<String> = redis::cmd("KEYS").arg("cl:ck:*").query_async(&mut con).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let held: bool = redis::cmd("HEXISTS").arg(&keys[0]).arg(&c.id).query_async(&mut con).await.expect("HEXISTS");
    assert!(held, "{keys:?} holds {}", c.id);
    assert_bucket_expires_with_its_clicks(&mut con, &keys[0]).await;

    // Counters and indexes never expire: reports outlive clicks.
    let others: Vec<String> = redis::cmd("KEYS").arg("cl:ct*").query_async(&mut con).await.expect("KEYS");
    assert_eq!(others.len(), 2, "{others:?}");
    for key in others {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut con).await.expect("TTL");
        assert_eq!(ttl, -1, "{key}");
    }
}

/// A bucket gone from Redis (expired, deleted, flushed) comes back with its expiry, never
/// without, whatever the process remembers of having written it.
#[tokio::test]
async fn redis_a_bucket_gone_from_redis_comes_back_with_its_expiry() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    // A bot's click: people's clicks are forwarded, and written by a script of their own.
    let first = click("cake1/spring", ms(H), Some("crawler"));
    store.record_click(first.view(), ClickOrigin::Minted).await.expect("record click");
    let mut con = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("cl:ck:*").query_async(&mut con).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let bucket = &keys[0];
    let _: () = redis::cmd("DEL").arg(bucket).query_async(&mut con).await.expect("DEL");

    // New clicks land in the sixteen shards at random; record them until one lands in
    // the deleted bucket, which this process has written before.
    let mut landed = None;
    for _ in 0..400 {
        let c = Click { id: new_id(), ..first.clone() };
        store.record_click(c.view(), ClickOrigin::Minted).await.expect("record click");
        let held: bool = redis::cmd("HEXISTS").arg(bucket).arg(&c.id).query_async(&mut con).await.expect("HEXISTS");
        if held {
            landed = Some(c);
            break;
        }
    }
    let landed = landed.expect("a click in the deleted bucket's shard");
    assert_bucket_expires_with_its_clicks(&mut con, bucket).await;
    assert_eq!(store.find_click(&landed.id).await.expect("find click"), Some(landed));
}

#[tokio::test]
async fn redis_keys_are_prefixed_and_each_write_stays_in_one_slot() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    let c = click("cake1/spring", ms(H), None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");
    let lead = conversion(&c, "Lead", "2", ms(H) + 5, "t");
    store.record_conversion(&lead).await.expect("record conversion");
    assert_eq!(store.reverse_conversion(&lead, ms(H) + 9).await.expect("reverse conversion"), Reversed::Done);
    store.log_event(&event(1, EventStatus::Ok)).await.expect("log event");
    store.put_link(&link("cake1", "spring")).await.expect("put link");

    let mut con = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await.expect("KEYS");
    assert!(keys.iter().all(|k| k.starts_with("cl:")), "{keys:?}");
    let slots: std::collections::HashSet<_> = keys
        .iter()
        // The flags saying each shard's index by click is built are set on connecting,
        // one per shard, by no write.
        .filter(|k| k.contains('{') && !k.contains("{ev}") && !k.starts_with("cl:cvci:"))
        .map(redis::cluster_routing::Slot::for_key)
        .collect();
    assert!(keys.iter().any(|k| k.starts_with("cl:rv:")), "{keys:?}");
    // The click, its counters, its conversion, its reversal and their indexes: one slot.
    assert_eq!(slots.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn redis_interned_values_lost_by_redis_are_written_again() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    let first = click("cake1/spring", ms(H), None);
    store.record_click(first.view(), ClickOrigin::Replayed).await.expect("record click");

    // Redis loses everything (a restart without persistence would too); this process
    // still remembers the user agent and context as stored.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw(&server).await).await.expect("FLUSHALL");
    let second = click("cake1/spring", ms(H), None);
    store.record_click(second.view(), ClickOrigin::Replayed).await.expect("record click");
    assert_eq!(store.find_click(&second.id).await.expect("find click"), Some(second.clone()));
    assert_eq!(store.find_click(&first.id).await.expect("find click"), None);
}

/// The counters `clicks` add up to, by hour and link (and offer), as reports list them.
fn expected_counters(clicks: &[Click]) -> Vec<HourCounters> {
    let mut sums: std::collections::BTreeMap<(UnixHour, String), Counters> = std::collections::BTreeMap::new();
    for c in clicks {
        let hour = (c.at / HOUR_MS) as UnixHour;
        let mut links = vec![c.link.clone()];
        links.extend(c.offer.as_ref().map(|o| format!("{}/{o}", c.link)));
        for link in links {
            sums.entry((hour, link)).or_default().add(&Counters::for_click(&c.view()));
        }
    }
    sums.into_iter().map(|((hour, link), counters)| counted(hour, &link, counters)).collect()
}

/// Records `clicks` all at once, so that the store takes them in a few large batches.
async fn record_at_once(store: &std::sync::Arc<RedisStore>, clicks: &[Click]) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in clicks {
        let (store, c) = (store.clone(), c.clone());
        tasks.spawn(async move { store.record_click(c.view(), ClickOrigin::Replayed).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("record task").expect("record click");
    }
}

/// Clicks recorded together share their batch's buckets, counter fields and interned
/// values: each is stored, a click sent twice (in the same batch or the next) counts
/// once, and the counters of every hour, link and offer are exact. A counter day is
/// listed when its first field is created, also once Redis has lost everything.
#[tokio::test]
async fn redis_clicks_recorded_together_count_exactly() {
    let server = RedisServer::start();
    let store = std::sync::Arc::new(RedisStore::connect(&server.url(), limits()).await.expect("connect"));
    let batch: Vec<Click> = (0..600)
        .map(|n| {
            let hour = if n % 4 == 0 { H + 30 } else { H };
            let mut c = click(["cake1/a", "cake1/b", "cake2/a"][n % 3], ms(hour) + n as i64, None);
            c.offer = (n % 2 == 0).then(|| "x".to_owned());
            c.bot = (n % 5 == 0).then(|| "crawler".to_owned());
            if n % 7 == 0 {
                c.user_agent = Some(format!("agent {n}"));
            }
            c
        })
        .collect();
    let mut sent = batch.clone();
    sent.extend(batch[..50].iter().cloned());
    record_at_once(&store, &sent).await;
    record_at_once(&store, &batch[50..80]).await;

    assert_eq!(store.counters(0, u32::MAX).await.expect("counters"), expected_counters(&batch));
    for c in &batch {
        assert_eq!(store.find_click(&c.id).await.expect("find click").as_ref(), Some(c));
    }

    // Redis loses everything, counters and day index too; this process still remembers
    // the interned values as stored.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw(&server).await).await.expect("FLUSHALL");
    let after: Vec<Click> = batch[..40].iter().map(|c| Click { id: new_id(), ..c.clone() }).collect();
    record_at_once(&store, &after).await;
    assert_eq!(store.counters(0, u32::MAX).await.expect("counters"), expected_counters(&after));
    // The buckets came back with their expiry, although this process had written them.
    let mut con = raw(&server).await;
    let buckets: Vec<String> = redis::cmd("KEYS").arg("cl:ck:*").query_async(&mut con).await.expect("KEYS");
    assert!(!buckets.is_empty());
    for bucket in buckets {
        let ttl: i64 = redis::cmd("TTL").arg(&bucket).query_async(&mut con).await.expect("TTL");
        assert!(ttl > 0, "{bucket} has TTL {ttl}");
    }
}

#[tokio::test]
async fn redis_store_survives_a_restart_of_redis() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = RedisStore::connect(&server.url(), limits()).await.expect("connect");
    let c = click("cake1/spring", ms(H), None);
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click");

    server.restart();

    // The first request after the restart may see the dropped connection; the
    // connection manager reconnects behind it.
    let mut found = None;
    for _ in 0..50 {
        match store.find_click(&c.id).await {
            Ok(click) => {
                found = Some(click);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(found, Some(Some(c.clone())), "click lost or no reconnect");

    // The restarted Redis has no scripts cached: EVALSHA must load them again, and the
    // replayed click must still count once.
    store.record_click(c.view(), ClickOrigin::Replayed).await.expect("record click again");
    assert_eq!(store.counters(H, H).await.expect("counters"), vec![counted(H, "cake1/spring", clicks(1))]);
}

#[tokio::test]
async fn redis_connect_names_the_url_when_nobody_answers() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop();
    let err = match RedisStore::connect(&url, limits()).await {
        Ok(_) => panic!("connected to a stopped redis"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&url), "{err}");

    let err = match RedisStore::connect("redis://:hunter2@127.0.0.1:1/", limits()).await {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");

    let err = match RedisStore::connect_cluster(std::slice::from_ref(&url), limits()).await {
        Ok(_) => panic!("connected to a stopped redis cluster"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&url), "{err}");
}

/// Records one conversion and settles its `meta1` delivery as delivered at `updated_at`.
async fn settle_one(store: &dyn Store, updated_at: UnixMillis) -> Delivery {
    let c = click("cake1/spring", ms(H), None);
    let conv = conversion(&c, "Lead", "0", ms(H) + 1, "t");
    store.record_conversion(&conv).await.expect("record");
    let mut d = store.claim_deliveries("a", "meta1", now_ms(), LEASE, 10).await.expect("claim").remove(0);
    d.status = DeliveryStatus::Delivered;
    d.updated_at = updated_at;
    assert!(store.finish_delivery("a", &d).await.expect("finish"));
    d
}

#[tokio::test]
async fn embedded_settled_deliveries_are_swept_after_their_retention() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let keep = Duration::from_secs(3600);
    let limits = StoreLimits { outbox: outbox_routes().keep_settled_for(keep), ..limits() };
    let store = EmbeddedStore::open(dir.path(), Duration::from_millis(1000), limits).expect("open");
    let old = settle_one(&store, now_ms() - 2 * 3_600_000).await;
    let recent = settle_one(&store, now_ms() - 60_000).await;
    store.sweep().await.expect("sweep");
    let left = store.deliveries(None, None, 10).await.expect("list");
    assert_eq!(left, vec![recent]);
    let click_id = old.subject.click().id.clone();
    assert_eq!(store.deliveries_of(&click_id, old.subject.event_id()).await.expect("of"), vec![]);
}

#[tokio::test]
async fn redis_settled_deliveries_expire_after_their_retention() {
    let server = RedisServer::start();
    let keep = Duration::from_secs(3600);
    let limits = StoreLimits { outbox: outbox_routes().keep_settled_for(keep), ..limits() };
    let store = RedisStore::connect(&server.url(), limits).await.expect("connect");
    let d = settle_one(&store, now_ms()).await;
    let mut con = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("cl:dl:*").query_async(&mut con).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].ends_with(&d.id), "{keys:?}");
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query_async(&mut con).await.expect("TTL");
    assert!((3595..=3600).contains(&ttl), "TTL {ttl}");
    // Pending deliveries never expire.
    let c = click("cake1/spring", ms(H), None);
    store.record_conversion(&conversion(&c, "Lead", "0", ms(H) + 1, "t2")).await.expect("record");
    let pending: Vec<String> = redis::cmd("KEYS").arg("cl:dl:*").query_async(&mut con).await.expect("KEYS");
    for key in pending.iter().filter(|k| !k.ends_with(&d.id)) {
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut con).await.expect("TTL");
        assert_eq!(ttl, -1, "{key}");
    }
}

/// Conversions recorded before the index by click existed: recorded here, then their
/// index entries and the shards' "built" flags deleted, as an older version left them.
/// Connecting builds the index once, and the conversions are found again.
async fn redis_index_by_click_is_built_on_connect(server: &RedisServer, cluster: bool) {
    let connect = || async {
        if cluster {
            RedisStore::connect_cluster(&[server.url()], limits()).await.expect("connect to redis cluster")
        } else {
            RedisStore::connect(&server.url(), limits()).await.expect("connect to redis")
        }
    };
    let store = connect().await;
    let c = click("cake1/spring", ms(H), None);
    let convs: Vec<Conversion> =
        (0..3).map(|i| conversion(&c, "Lead", "1", ms(H) + 10 + i, &format!("t{i}"))).collect();
    for conv in &convs {
        store.record_conversion(conv).await.expect("record");
    }
    assert_eq!(store.reverse_conversion(&convs[1], ms(H + 2)).await.expect("reverse"), Reversed::Done);

    let mut con = raw(server).await;
    for pattern in ["cl:cvc:*", "cl:cvci:*"] {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut con).await.expect("KEYS");
        assert!(!keys.is_empty(), "{pattern}");
        for key in keys {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut con).await.expect("DEL");
        }
    }
    assert_eq!(store.conversions_of_click(&c.id).await.expect("of click"), vec![], "the index is gone");

    let reopened = connect().await;
    let mut expected = convs.clone();
    expected[1].reversed_at = Some(ms(H + 2));
    assert_eq!(reopened.conversions_of_click(&c.id).await.expect("of click"), expected);
    let built: Vec<String> = redis::cmd("KEYS").arg("cl:cvci:*").query_async(&mut con).await.expect("KEYS");
    assert_eq!(built.len(), usize::from(cakelink::store::redis::SHARDS), "{built:?}");
}

#[tokio::test]
async fn redis_index_by_click_is_built_on_connect_for_older_conversions() {
    redis_index_by_click_is_built_on_connect(&RedisServer::start(), false).await;
}

#[tokio::test]
async fn redis_cluster_index_by_click_is_built_on_connect_for_older_conversions() {
    redis_index_by_click_is_built_on_connect(&RedisServer::start_cluster(), true).await;
}
