//! Redis backend (being written).

use async_trait::async_trait;

use super::{Store, StoreError, StoreLimits, StoreResult};
use crate::model::{Click, Conversion, Event, HourCounters, Link, Recorded, UnixHour, UnixMillis};

pub struct RedisStore;

impl RedisStore {
    pub async fn connect(_url: &str, _limits: StoreLimits) -> anyhow::Result<RedisStore> {
        anyhow::bail!("redis backend not built yet")
    }
    pub async fn connect_cluster(_urls: &[String], _limits: StoreLimits) -> anyhow::Result<RedisStore> {
        anyhow::bail!("redis backend not built yet")
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn record_click(&self, _: &Click) -> StoreResult<()> { Err(StoreError::Closed) }
    async fn find_click(&self, _: &str) -> StoreResult<Option<Click>> { Err(StoreError::Closed) }
    async fn record_conversion(&self, _: &Conversion) -> StoreResult<Recorded> { Err(StoreError::Closed) }
    async fn log_event(&self, _: &Event) -> StoreResult<()> { Err(StoreError::Closed) }
    async fn events(&self, _: Option<&str>, _: usize) -> StoreResult<Vec<Event>> { Err(StoreError::Closed) }
    async fn counters(&self, _: UnixHour, _: UnixHour) -> StoreResult<Vec<HourCounters>> { Err(StoreError::Closed) }
    async fn conversions(&self, _: UnixMillis, _: UnixMillis) -> StoreResult<Vec<Conversion>> { Err(StoreError::Closed) }
    async fn links(&self) -> StoreResult<Vec<Link>> { Err(StoreError::Closed) }
    async fn link(&self, _: &str, _: &str) -> StoreResult<Option<Link>> { Err(StoreError::Closed) }
    async fn put_link(&self, _: &Link) -> StoreResult<()> { Err(StoreError::Closed) }
    async fn delete_link(&self, _: &str, _: &str) -> StoreResult<bool> { Err(StoreError::Closed) }
    async fn ping(&self) -> StoreResult<()> { Err(StoreError::Closed) }
    async fn flush(&self) -> StoreResult<()> { Err(StoreError::Closed) }
    fn backend(&self) -> &'static str { "redis" }
}
