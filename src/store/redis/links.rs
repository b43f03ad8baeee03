//! The link catalog: one hash, `network/slug` → postcard [`Link`]. A put or a delete
//! also publishes the link's key, in the same script, for the other processes' caches
//! (`link_changes`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use tokio::sync::mpsc;

use super::keys::LINKS_KEY;
use super::{link_changes, unavailable, RedisStore};
use crate::model::{link_key, Link};
use crate::store::schema::{decode, encode};
use crate::store::{LinkChange, LinkStore, StoreResult};

/// `scripts/put_link.lua`: the write and its message.
static PUT_LINK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/put_link.lua")));
/// `scripts/delete_link.lua`: the delete and, when there was a link, its message.
static DELETE_LINK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/delete_link.lua")));

#[async_trait]
impl LinkStore for RedisStore {
    async fn links(&self) -> StoreResult<Vec<Link>> {
        // A BTreeMap orders by `network/slug`, as the embedded store lists them.
        let stored: BTreeMap<String, Vec<u8>> =
            redis::cmd("HGETALL").arg(LINKS_KEY).query_async(&mut self.con()).await.map_err(unavailable)?;
        stored.values().map(|bytes| decode(bytes)).collect()
    }

    async fn link(&self, network: &str, slug: &str) -> StoreResult<Option<Link>> {
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(LINKS_KEY)
            .arg(link_key(network, slug))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        bytes.map(|b| decode(&b)).transpose()
    }

    async fn put_link(&self, link: &Link) -> StoreResult<()> {
        let _: redis::Value = PUT_LINK
            .key(LINKS_KEY)
            .arg(link.key())
            .arg(encode(link))
            .arg(link_changes::CHANNEL)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool> {
        let removed: i64 = DELETE_LINK
            .key(LINKS_KEY)
            .arg(link_key(network, slug))
            .arg(link_changes::CHANNEL)
            .invoke_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    /// Several processes share the links: each hears the others' changes on a
    /// subscription of its own.
    fn watch_changes(&self) -> Option<mpsc::Receiver<LinkChange>> {
        Some(link_changes::watch(self.link_nodes.clone()))
    }
}
