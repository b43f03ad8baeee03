//! The link catalog: one hash, `network/slug` → postcard [`Link`].

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::keys::LINKS_KEY;
use super::{unavailable, RedisStore};
use crate::model::{link_key, Link};
use crate::store::schema::{decode, encode};
use crate::store::{LinkStore, StoreResult};

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
        let _: i64 = redis::cmd("HSET")
            .arg(LINKS_KEY)
            .arg(link.key())
            .arg(encode(link))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_link(&self, network: &str, slug: &str) -> StoreResult<bool> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(LINKS_KEY)
            .arg(link_key(network, slug))
            .query_async(&mut self.con())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }
}
