//! The spool over a real embedded store: torn tails, bounds, replay order.

use std::path::Path;
use std::sync::Mutex as StdMutex;

use super::*;
use crate::model::Reversed;
use crate::model::{hour_of, Conversion, EventStatus, UnixMillis};
use crate::money::Money;
use crate::store::embedded::EmbeddedStore;
use crate::store::StoreLimits;
use crate::store::{ClickStore, ConversionStore};

fn click(id: &str, at: UnixMillis) -> Click {
    Click {
        id: id.to_owned(),
        link: "cake/demo".into(),
        at,
        bot: None,
        ip: Some("203.0.113.9".into()),
        user_agent: Some("Mozilla/5.0".into()),
        referer: None,
        utm: vec![("source".into(), "facebook".into())],
        ad_click_ids: Vec::new(),
        subids: Vec::new(),
        offer: None,
        rule: None,
        fallback: None,
    }
}

fn queued(click_id: &str, at: UnixMillis) -> QueuedPostback {
    QueuedPostback {
        received_at: at,
        network: "cake".into(),
        present: vec![("s2".into(), click_id.into()), ("price".into(), "7".into())],
        absent: Vec::new(),
    }
}

/// A real embedded store in `dir`.
fn embedded(dir: &Path) -> Arc<dyn Store> {
    let limits = StoreLimits {
        click_ttl: Duration::from_secs(86_400),
        event_log_max: 100,
        personal_ttl: crate::store::PERSONAL_DATA_TTL,
        outbox: Default::default(),
    };
    Arc::new(EmbeddedStore::open(&dir.join("db"), Duration::from_millis(100), limits).expect("open the store"))
}

fn spool_over(inner: Arc<dyn Store>, dir: &Path, max_bytes: u64) -> Arc<SpooledStore> {
    let config = SpoolConfig { path: dir.join("spool"), max_bytes, fsync: Duration::from_millis(50) };
    SpooledStore::open(inner, &config).expect("open the spool")
}

/// Resolves a queued postback into a conversion of its click, noting what it saw.
#[derive(Default)]
struct Converter {
    seen: StdMutex<Vec<(String, bool)>>,
}

#[async_trait]
impl Resolve for Converter {
    async fn resolve(&self, store: &dyn Store, postback: &QueuedPostback) -> StoreResult<()> {
        let id = postback.present[0].1.clone();
        let found = store.find_click(&id).await?;
        self.seen.lock().expect("lock").push((id.clone(), found.is_some()));
        if let Some(click) = found {
            store.record_conversion(&purchase(click, postback.received_at, postback.present.clone())).await?;
        }
        Ok(())
    }
}

/// The purchase a queued postback comes to.
fn purchase(click: Click, at: UnixMillis, fields: Vec<(String, String)>) -> Conversion {
    Conversion {
        id: format!("conv-{}", click.id),
        at,
        network: "cake".into(),
        event: "Purchase".into(),
        value: Money::from_micros(7_000_000),
        currency: "USD".into(),
        transaction_id: None,
        item_id: None,
        fields,
        click,
        reversed_at: None,
    }
}

async fn clicks_counted(store: &Arc<dyn Store>, at: UnixMillis) -> (u64, u64) {
    let hours = store.counters(hour_of(at), hour_of(at)).await.expect("counters");
    let clicks = hours.iter().map(|h| h.counters.clicks).sum();
    let conversions = hours.iter().map(|h| h.counters.conversions).sum();
    (clicks, conversions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_corrupt_tail_is_dropped_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = embedded(dir.path());
    let at = 1_700_000_000_000;
    let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
    for id in ["a", "b", "c"] {
        spool.append(Entry::Click(click(id, at))).await.expect("append");
    }
    let whole = spool.status();
    assert_eq!((whole.records, whole.active), (3, true));
    drop(spool);

    // A crash in the middle of a write: a header promising more than follows.
    let file_path = dir.path().join("spool").join(FILE_NAME);
    let mut file = OpenOptions::new().append(true).open(&file_path).expect("open");
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).expect("write a torn record");
    drop(file);
    let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
    let status = spool.status();
    assert_eq!((status.records, status.bytes), (3, whole.bytes), "the torn tail is gone, the rest kept");
    assert_eq!(std::fs::metadata(&file_path).expect("stat").len(), whole.bytes);
    assert!(status.active, "a non-empty spool from an earlier run waits for replay");
    assert_eq!(spool.find_click("c").await.expect("read").map(|c| c.id), Some("c".to_owned()));
    drop(spool);

    // A flipped bit in the last record's payload: its checksum fails, it is dropped.
    let mut bytes = std::fs::read(&file_path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file_path, &bytes).expect("write");
    let spool = spool_over(inner, dir.path(), 1 << 20);
    assert_eq!(spool.status().records, 2);
    assert_eq!(spool.find_click("c").await.expect("read"), None, "not in the spool, not in the store");
    assert!(spool.find_click("b").await.expect("read").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_is_bounded_and_emptied_by_a_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = embedded(dir.path());
    let spool = spool_over(inner.clone(), dir.path(), 4096);
    let at = 1_700_000_000_000;
    let mut kept = Vec::new();
    let refused = loop {
        let id = format!("click-{}", kept.len());
        match spool.append(Entry::Click(click(&id, at))).await {
            Ok(_) => kept.push(id),
            Err(e) => break e,
        }
        assert!(kept.len() < 1000, "the bound was never reached");
    };
    assert!(refused.to_string().contains("full"), "{refused}");
    let status = spool.status();
    assert!(status.full && status.bytes <= 4096 && status.records == kept.len() as u64, "{status:?}");

    assert_eq!(spool.replay(&Converter::default()).await.expect("replay"), kept.len() as u64);
    let status = spool.status();
    assert_eq!((status.active, status.full, status.bytes, status.records), (false, false, 0, 0));
    assert_eq!(clicks_counted(&inner, at).await, (kept.len() as u64, 0));
    assert_eq!(std::fs::metadata(dir.path().join("spool").join(FILE_NAME)).expect("stat").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_order_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = embedded(dir.path());
    let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
    let at = 1_700_000_000_000;
    // "a" reached the store before the outage (its answer was lost, so it was spooled too).
    inner.record_click(click("a", at).view(), ClickOrigin::Replayed).await.expect("record");
    let entries = || {
        let mut out = vec![Entry::Click(click("a", at))];
        out.extend((0..600).map(|i| Entry::Click(click(&format!("bulk-{i}"), at))));
        out.push(Entry::Click(click("b", at)));
        out.push(Entry::Postback(queued("b", at + 1)));
        out.push(Entry::Event(Event {
            received_at: at + 1,
            network: "cake".into(),
            status: EventStatus::Queued,
            reason: "store_unavailable".into(),
            click_id: Some("b".into()),
            conversion_id: None,
            query: "s2=b&price=7".into(),
        }));
        out.push(Entry::Postback(queued("a", at + 2)));
        out
    };
    for entry in entries() {
        spool.append(entry).await.expect("append");
    }
    assert!(spool.find_click("b").await.expect("read").is_some(), "a spooled click is found before replay");
    let converter = Converter::default();
    assert_eq!(spool.replay(&converter).await.expect("replay"), 605);
    let mut seen = converter.seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(
        seen,
        [("a".to_owned(), true), ("b".to_owned(), true)],
        "each postback is resolved after its click is in the store"
    );
    assert_eq!(clicks_counted(&inner, at).await, (602, 2), "\"a\" counts once");
    assert_eq!(inner.events(None, 10).await.expect("events").len(), 1);

    // A crash after the records reached the store but before the spool was emptied:
    // the same records are replayed again and change no figure.
    for entry in entries() {
        spool.append(entry).await.expect("append");
    }
    spool.replay(&converter).await.expect("replay");
    assert_eq!(clicks_counted(&inner, at).await, (602, 2));
    assert!(!spool.is_spooling());
}

/// A reversal is never spooled: while the spool is active it is refused with an outage
/// error (the caller queues its postback), and reads of conversions still reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversals_are_refused_while_spooling_and_reads_pass_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inner = embedded(dir.path());
    let spool = spool_over(inner.clone(), dir.path(), 1 << 20);
    let at = 1_700_000_000_000;
    let conversion = purchase(click("a", at), at + 5, Vec::new());
    inner.record_conversion(&conversion).await.expect("record");
    assert_eq!(spool.conversions_of_click("a").await.expect("read"), vec![conversion.clone()]);

    spool.append(Entry::Click(click("b", at))).await.expect("append");
    assert!(spool.is_spooling());
    let refused = spool.reverse_conversion(&conversion, at + 9).await.expect_err("refused while spooling");
    assert!(refused.is_outage(), "{refused}");
    assert_eq!(spool.conversions_of_click("a").await.expect("read"), vec![conversion.clone()], "nothing reversed");

    spool.replay(&Converter::default()).await.expect("replay");
    assert!(!spool.is_spooling());
    assert_eq!(spool.reverse_conversion(&conversion, at + 9).await.expect("reverse"), Reversed::Done);
    let reversed = Conversion { reversed_at: Some(at + 9), ..conversion };
    assert_eq!(spool.conversions_of_click("a").await.expect("read"), vec![reversed]);
    // The replayed click "b" counts; the reversed conversion no longer does.
    assert_eq!(clicks_counted(&inner, at + 5).await, (1, 0));
}
