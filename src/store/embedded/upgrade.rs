//! What opening a directory written by an older cakelink adds: indexes that older
//! versions did not keep, built once from what is stored, before the writer starts, and
//! remembered in `meta` as done so that later openings skip the scan.

use super::tables::{click_conversions_prefix, Tables};
use super::{unavailable, MAX_BATCH};
use crate::model::Conversion;
use crate::store::schema::decode;
use crate::store::StoreResult;

/// `meta` key: present once every stored conversion is in `click_conversions`.
pub(super) const CLICK_INDEX_BUILT: &[u8] = b"click_conversions_built";

/// Indexes every stored conversion by its click, unless that was done before; how many
/// conversions it indexed. Conversions recorded since the index exists index themselves
/// in their own write, so this runs once per directory. A conversion that does not
/// decode is left out (reading it reports the damage).
pub(super) fn index_conversions_by_click(t: &Tables) -> StoreResult<usize> {
    if t.meta.contains_key(CLICK_INDEX_BUILT).map_err(unavailable)? {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut batch = t.db.batch();
    let mut pending = 0;
    for kv in t.conversions.iter() {
        let (key, bytes) = kv.into_inner().map_err(unavailable)?;
        let conversion: Conversion = match decode(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "a stored conversion does not decode; it is left out of its click's index");
                continue;
            }
        };
        let mut entry = click_conversions_prefix(&conversion.click.id);
        entry.extend_from_slice(&key);
        batch.insert(&t.click_conversions, entry, Vec::<u8>::new());
        pending += 1;
        if pending >= MAX_BATCH {
            std::mem::replace(&mut batch, t.db.batch()).commit().map_err(unavailable)?;
            indexed += pending;
            pending = 0;
        }
    }
    batch.insert(&t.meta, CLICK_INDEX_BUILT, [1u8]);
    batch.commit().map_err(unavailable)?;
    Ok(indexed + pending)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tables::conversion_key;
    use super::super::EmbeddedStore;
    use super::*;
    use crate::model::Click;
    use crate::money::Money;
    use crate::store::schema::encode;
    use crate::store::{ConversionStore, StoreLimits};

    fn conversion(click_id: &str, id: &str, at: i64) -> Conversion {
        let click = Click {
            id: click_id.into(),
            link: "cake/summer".into(),
            at: at - 1000,
            bot: None,
            ip: None,
            user_agent: None,
            referer: None,
            utm: Vec::new(),
            ad_click_ids: Vec::new(),
            subids: Vec::new(),
            offer: None,
            rule: None,
            fallback: None,
        };
        Conversion {
            id: id.into(),
            at,
            network: "cake".into(),
            event: "Lead".into(),
            value: Money::ZERO,
            currency: "USD".into(),
            transaction_id: None,
            item_id: None,
            fields: Vec::new(),
            click,
            reversed_at: None,
        }
    }

    /// Writes `conversions` as versions before the index by click did: the record and
    /// its id, nothing more.
    fn store_without_index(t: &Tables, conversions: &[&Conversion]) {
        let mut batch = t.db.batch();
        for c in conversions {
            batch.insert(&t.conversions, conversion_key(c.at, &c.id), encode(*c));
            batch.insert(&t.conversion_ids, c.id.as_bytes(), (c.at as u64).to_be_bytes());
        }
        batch.commit().expect("commit");
    }

    #[test]
    fn the_index_is_built_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let t = Tables::open(dir.path()).expect("open tables");
        let (a, b) = (conversion("click-a", "v1", 5_000), conversion("click-a", "v2", 4_000));
        store_without_index(&t, &[&a, &b]);
        // A damaged record is left out, and does not stop the others.
        t.conversions.insert(conversion_key(4_500, "bad"), b"\xff\xff").expect("insert");
        assert_eq!(index_conversions_by_click(&t).ok(), Some(2));
        let entries: Vec<Vec<u8>> = t
            .click_conversions
            .prefix(click_conversions_prefix("click-a"))
            .map(|kv| kv.key().expect("key").to_vec())
            .collect();
        let oldest_first: Vec<Vec<u8>> = [&b, &a]
            .iter()
            .map(|c| [click_conversions_prefix("click-a"), conversion_key(c.at, &c.id)].concat())
            .collect();
        assert_eq!(entries, oldest_first);
        // Done once: a conversion written the old way afterwards is not looked for again.
        store_without_index(&t, &[&conversion("click-b", "v3", 6_000)]);
        assert_eq!(index_conversions_by_click(&t).ok(), Some(0));
        assert!(t.click_conversions.prefix(click_conversions_prefix("click-b")).next().is_none());
    }

    #[tokio::test]
    async fn opening_an_older_directory_finds_its_conversions_by_click() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (a, b) = (conversion("click-a", "v1", 5_000), conversion("click-b", "v2", 4_000));
        {
            let t = Tables::open(dir.path()).expect("open tables");
            store_without_index(&t, &[&a, &b]);
            t.db.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
        let limits = StoreLimits {
            click_ttl: Duration::from_secs(86_400),
            event_log_max: 10,
            personal_ttl: Duration::from_secs(86_400),
            outbox: Default::default(),
        };
        let store = EmbeddedStore::open(dir.path(), Duration::from_secs(1), limits).expect("open the store");
        assert_eq!(store.conversions_of_click("click-a").await.expect("of click"), vec![a]);
        assert_eq!(store.conversions_of_click("click-b").await.expect("of click"), vec![b]);
        assert!(store.tables.meta.contains_key(CLICK_INDEX_BUILT).expect("meta"));
    }
}
