//! The click log inside a real embedded store: torn tails, the recount after a crash,
//! sealed indexes, expiry, the personal-data rewrite and clicks written before the log.
//!
//! Each test opens the store more than once over one directory; a store's directory is
//! locked while any of its threads or tasks lives, so each opening gets a runtime of its
//! own, dropped (with its tasks) before the next.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::clicklog::{file_name, DIR};
use super::segment;
use super::*;
use crate::clickid::Keyring;
use crate::clock::now_secs;
use crate::model::{hour_of, Counters};
use crate::store::schema::{OutboxRoute, OutboxRoutes};
use crate::store::{CapCandidate, PERSONAL_DATA_TTL};

const DAY: u64 = 86_400;
const UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) unmistakable-agent";

fn ring() -> Keyring {
    Keyring::new("a-test-secret-0123456789", &[], 40 * DAY)
}

fn limits(click_ttl: Duration) -> StoreLimits {
    StoreLimits {
        click_ttl,
        event_log_max: 10,
        personal_ttl: PERSONAL_DATA_TTL,
        outbox: OutboxRoutes::new(vec![OutboxRoute {
            destination: "meta1".into(),
            events: None,
            clicks: true,
            requires_any: vec![],
        }]),
    }
}

/// A person's click with an id minted at `secs`.
fn click(link: &str, secs: u64) -> Click {
    Click {
        id: ring().mint(secs).to_string(),
        link: link.into(),
        at: (secs * 1000) as i64,
        bot: None,
        ip: Some("203.0.113.77".into()),
        user_agent: Some(UA.into()),
        referer: Some("https://m.facebook.com/".into()),
        utm: vec![("source".into(), "facebook".into())],
        ad_click_ids: vec![("fbclid".into(), "IwAR-1".into())],
        subids: Vec::new(),
        offer: None,
        rule: None,
        fallback: None,
    }
}

/// Runs one opening of the store at `path` in a runtime of its own; the store, its
/// writer and its tasks are gone when this returns.
fn with_store<T>(path: &Path, click_ttl: Duration, f: impl AsyncFnOnce(&EmbeddedStore) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let out = rt.block_on(async {
        // The last opening's writer thread may still be letting go of the directory.
        let mut store = None;
        for _ in 0..500 {
            match EmbeddedStore::open(path, Duration::from_millis(50), limits(click_ttl)) {
                Ok(s) => {
                    store = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let store = store.expect("open the store");
        let out = f(&store).await;
        store.flush().await.expect("flush");
        out
    });
    drop(rt);
    out
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().expect("runtime").block_on(f)
}

/// The store's keyspaces alone, once the last opening has let go of them.
async fn tables(path: &Path) -> Tables {
    for _ in 0..500 {
        if let Ok(t) = Tables::open(path) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store's directory stays locked");
}

fn segments(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(path.join(DIR))
        .expect("the click log")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn clicks_of(store: &EmbeddedStore, link: &str, secs: u64) -> Counters {
    let hour = hour_of((secs * 1000) as i64);
    let rows = store.counters(hour.saturating_sub(1), hour + 1).await.expect("counters");
    let mut total = Counters::default();
    for row in rows.iter().filter(|r| r.link == link) {
        total.add(&row.counters);
    }
    total
}

#[test]
fn a_torn_tail_is_cut_and_the_clicks_before_it_resolve() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let clicks: Vec<Click> = (0..20).map(|_| click("cake/demo", now)).collect();
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in &clicks {
            s.record_click(c.view(), ClickOrigin::Minted).await.expect("record");
        }
    });
    // A kill in the middle of an append: half a frame at the end.
    let files = segments(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let mut torn = std::fs::read(&files[0]).expect("read");
    let whole = torn.len();
    torn.extend_from_slice(&[60, 0, 0, 0, 1, 2, 3, 4, 1, 32, b'x']);
    std::fs::write(&files[0], &torn).expect("write");

    let late = click("cake/demo", now);
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in &clicks {
            assert_eq!(s.find_click(&c.id).await.expect("find").as_ref(), Some(c));
        }
        assert_eq!(clicks_of(s, "cake/demo", now).await.clicks, 20, "nothing lost, nothing counted twice");
        s.record_click(late.view(), ClickOrigin::Minted).await.expect("record after the restart");
        assert_eq!(s.find_click(&late.id).await.expect("find").as_ref(), Some(&late));
        assert_eq!(clicks_of(s, "cake/demo", now).await.clicks, 21);
    });
    let first = std::fs::read(&files[0]).expect("read");
    assert!(first.len() >= whole && first[..whole] == torn[..whole], "the torn bytes are gone, the rest kept");
    assert!(!contains(&first, &[60, 0, 0, 0, 1, 2, 3, 4]));
}

/// What a batch left in the log when the process died before fjall committed it: the
/// clicks' frames, and the interned values they name that were new.
fn uncovered_frames(clicks: &[(Click, Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (c, cap_key) in clicks {
        let encoded = record::encode(&c.view());
        for (key, value) in &encoded.interns {
            segment::put_intern(&mut out, key, value);
        }
        segment::put_click(&mut out, &c.id, *cap_key, &encoded.record);
    }
    out
}

#[test]
fn clicks_logged_but_not_committed_are_counted_once_on_open() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let counted = click("cake/demo", now);
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        s.record_click(counted.view(), ClickOrigin::Minted).await.expect("record");
    });
    // Three clicks of another link, with a context fjall never saw; one took a capped
    // offer (its record has the route, its frame the cap counter).
    let mut lost = [click("cake/other", now), click("cake/other", now), click("cake/other", now)];
    lost[2].offer = Some("a".into());
    let frames = uncovered_frames(&[
        (lost[0].clone(), None),
        (lost[1].clone(), None),
        (lost[2].clone(), Some("cake/other/a/20000")),
    ]);
    std::fs::write(dir.path().join(DIR).join(file_name((now / 3600) as u32, 90, false)), frames).expect("write");
    // And a segment closed (sealed) while its clicks' counters still waited in memory for
    // the next commit: its covered length was never recorded.
    let closed = [click("cake/closed", now), click("cake/closed", now)];
    let frames = uncovered_frames(&[(closed[0].clone(), None), (closed[1].clone(), None)]);
    let path = dir.path().join(DIR).join(file_name((now / 3600) as u32, 91, false));
    std::fs::write(&path, &frames).expect("write");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
    let pacer = &mut super::pace::Pacer::new();
    let mut entries = Vec::new();
    segment::scan(&path, &file, 0).expect("scan").index.sorted_into(&mut entries, &mut Vec::new(), pacer);
    segment::seal(&file, frames.len() as u64, &entries, (now as u32, now as u32), false, pacer).expect("seal");

    for opening in 0..2 {
        with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
            for c in lost.iter().chain([&counted]) {
                assert_eq!(s.find_click(&c.id).await.expect("find").as_ref(), Some(c), "opening {opening}");
            }
            assert_eq!(clicks_of(s, "cake/other", now).await.clicks, 3, "opening {opening}");
            assert_eq!(clicks_of(s, "cake/other/a", now).await.clicks, 1, "opening {opening}");
            assert_eq!(clicks_of(s, "cake/demo", now).await.clicks, 1, "opening {opening}");
            assert_eq!(clicks_of(s, "cake/closed", now).await.clicks, 2, "opening {opening}");
            for c in &closed {
                assert_eq!(s.find_click(&c.id).await.expect("find").as_ref(), Some(c), "opening {opening}");
            }
            // Each click forwarded once: the one counted before, and the five recounted.
            assert_eq!(s.outbox_depth().await.expect("depth"), 6, "opening {opening}");
            let cap = s.tables.caps.get(b"cake/other/a/20000").expect("cap").expect("counted");
            assert_eq!(cap.as_ref(), 1u32.to_be_bytes(), "opening {opening}");
        });
    }
}

#[test]
fn a_capped_click_in_the_log_keeps_its_offer_and_its_cap_count() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let claim = CapClaim { day: 20_000, candidates: vec![CapCandidate { offer: "a".into(), cap: Some(1) }] };
    let (first, second) = (Click { rule: Some(0), ..click("cake/split", now) }, click("cake/split", now));
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        assert_eq!(s.record_capped_click(first.view(), &claim).await.expect("record"), Some(0));
        assert_eq!(s.record_capped_click(second.view(), &claim).await.expect("record"), None);
    });
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        let first = s.find_click(&first.id).await.expect("find").expect("stored");
        assert_eq!((first.offer.as_deref(), first.fallback.as_deref()), (Some("a"), None));
        let second = s.find_click(&second.id).await.expect("find").expect("stored");
        assert_eq!((second.offer.as_deref(), second.fallback.as_deref()), (None, Some("capped")));
        let cap = s.tables.caps.get(b"cake/split/a/20000").expect("cap").expect("counted");
        assert_eq!(cap.as_ref(), 1u32.to_be_bytes(), "counted once, and not again on opening");
    });
}

#[test]
fn a_sealed_segment_is_found_through_its_index_after_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let then = now_secs() - 3 * 3600;
    let clicks: Vec<Click> = (0..300).map(|_| click("cake/demo", then)).collect();
    let sizes = with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in &clicks {
            s.record_click(c.view(), ClickOrigin::Replayed).await.expect("record");
        }
        let before: Vec<u64> = segments(dir.path()).iter().map(|p| p.metadata().expect("size").len()).collect();
        s.sweep().await.expect("sweep");
        before
    });
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    let file = std::fs::File::open(&files[0]).expect("open");
    let size = file.metadata().expect("size").len();
    let sealed = segment::read_trailer(&file, size).expect("sealed, with its index");
    assert_eq!((sealed.data_end, sealed.entries), (sizes[0], 300));
    assert_eq!((sealed.min_sec, sealed.max_sec), (then as u32, then as u32));

    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in &clicks {
            assert_eq!(s.find_click(&c.id).await.expect("find").as_ref(), Some(c));
        }
        let unknown = ring().mint(then).to_string();
        assert_eq!(s.find_click(&unknown).await.expect("find"), None);
        // A replay of a sealed click is found, so not counted again.
        s.record_click(clicks[7].view(), ClickOrigin::Replayed).await.expect("replay");
        assert_eq!(clicks_of(s, "cake/demo", then).await.clicks, 300);
    });
    assert_eq!(segments(dir.path()).len(), 1, "a sealed segment takes no more clicks, and the replay added none");
}

#[test]
fn expired_segments_are_deleted_whole() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let (old, young) = (click("cake/demo", now - 3 * DAY), click("cake/demo", now - 2 * 3600));
    with_store(dir.path(), Duration::from_secs(2 * DAY), async |s| {
        s.record_click(old.view(), ClickOrigin::Replayed).await.expect("record");
        s.record_click(young.view(), ClickOrigin::Replayed).await.expect("record");
        assert_eq!(segments(dir.path()).len(), 2);
        // Closes both hours' segments, then deletes the expired one.
        s.sweep().await.expect("sweep");
        assert_eq!(s.find_click(&old.id).await.expect("find"), None);
        assert_eq!(s.find_click(&young.id).await.expect("find").as_ref(), Some(&young));
        // Expiry drops raw clicks, not the figures they made.
        assert_eq!(clicks_of(s, "cake/demo", now - 3 * DAY).await.clicks, 1);
    });
    let left = segments(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].to_string_lossy().contains(&file_name(((now - 2 * 3600) / 3600) as u32, 0, false)));
    let meta: Vec<Vec<u8>> = block_on(async {
        let t = tables(dir.path()).await;
        t.meta.prefix(b"clicklog/").map(|kv| kv.key().expect("key").to_vec()).collect()
    });
    assert_eq!(meta.len(), 1, "the deleted segment's covered length went with it");
}

#[test]
fn personal_data_is_rewritten_out_of_old_segments_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let old: Vec<Click> = (0..50).map(|_| click("cake/demo", now - 8 * DAY)).collect();
    let recent = click("cake/demo", now - 2 * 3600);
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in old.iter().chain([&recent]) {
            s.record_click(c.view(), ClickOrigin::Replayed).await.expect("record");
        }
        // Closes both hours' segments, then rewrites the old one.
        s.sweep().await.expect("sweep");
    });
    let files = segments(dir.path());
    assert_eq!(files.len(), 2);
    let (old_file, recent_file) = (&files[0], &files[1]);
    let bytes = std::fs::read(old_file).expect("read");
    assert!(!contains(&bytes, UA.as_bytes()), "no user agent left in the old segment");
    assert!(!contains(&bytes, &[4, 203, 0, 113, 77]), "no IP address left in the old segment");
    let file = std::fs::File::open(old_file).expect("open");
    let sealed = segment::read_trailer(&file, bytes.len() as u64).expect("sealed");
    assert!(sealed.personal_dropped && sealed.entries == 50);
    let recent_bytes = std::fs::read(recent_file).expect("read");
    assert!(contains(&recent_bytes, &[4, 203, 0, 113, 77]), "the recent one keeps its IP addresses");
    let modified = old_file.metadata().and_then(|m| m.modified()).expect("mtime");

    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        for c in &old {
            let stripped = Click { ip: None, user_agent: None, ..c.clone() };
            assert_eq!(s.find_click(&c.id).await.expect("find"), Some(stripped));
        }
        assert_eq!(s.find_click(&recent.id).await.expect("find").as_ref(), Some(&recent));
        s.sweep().await.expect("sweep again");
    });
    assert_eq!(old_file.metadata().and_then(|m| m.modified()).expect("mtime"), modified, "rewritten once");
}

#[test]
fn clicks_written_before_the_log_still_resolve() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let now = now_secs();
    let before = click("cake/demo", now - 3600);
    // As the previous version stored it: record and interned values in fjall, counted.
    block_on(async {
        let t = tables(dir.path()).await;
        let encoded = record::encode(&before.view());
        let mut batch = t.db.batch();
        for (key, value) in encoded.interns {
            batch.insert(&t.interns, key, value);
        }
        batch.insert(&t.clicks, before.id.as_bytes(), encoded.record);
        let mut row = hour_of(before.at).to_be_bytes().to_vec();
        row.extend_from_slice(b"cake/demo");
        batch.insert(&t.counters, row, schema::encode(&Counters::for_click(&before.view())));
        batch.commit().expect("commit");
        t.db.persist(PersistMode::SyncAll).expect("persist");
    });
    with_store(dir.path(), Duration::from_secs(40 * DAY), async |s| {
        assert_eq!(s.find_click(&before.id).await.expect("find").as_ref(), Some(&before));
        // A replay of it is known, so neither logged nor counted again.
        s.record_click(before.view(), ClickOrigin::Replayed).await.expect("replay");
        assert_eq!(clicks_of(s, "cake/demo", now - 3600).await.clicks, 1);
    });
    assert!(segments(dir.path()).is_empty(), "the replay wrote nothing to the log");
    // Once past its lifetime, the expiry sweep empties the old keyspace.
    with_store(dir.path(), Duration::from_secs(60), async |s| {
        s.sweep().await.expect("sweep");
        assert!(s.tables.clicks.first_key_value().is_none());
    });
}

#[test]
fn the_stores_threads_run_under_sched_batch() {
    use super::pace::tests::policies_of;
    let dir = tempfile::tempdir().expect("temporary directory");
    with_store(dir.path(), Duration::from_secs(DAY), async |_| {
        // Other tests' stores have threads of these names too, all started the same way.
        // Each thread sets its policy first thing once started; give them a moment.
        let batch = |name| policies_of(name).contains(&3);
        for _ in 0..100 {
            if batch("store-writer") && batch("store-housekeep") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(batch("store-writer"), "the writer is under SCHED_BATCH");
        assert!(batch("store-housekeep"), "the housekeeping is under SCHED_BATCH");
    });
}
