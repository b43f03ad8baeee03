//! What connecting to a Redis written by an older cakelink adds: indexes that older
//! versions did not keep, built once per shard from what is stored.
//!
//! A shard's conversions are walked with `ZSCAN` over its time index, a page at a time,
//! so neither Redis nor this process ever holds more than a page; each page's records
//! are read, their clicks' indexes written, and once the walk ends the shard's flag
//! (`cl:cvci:{N}`) says it is done. Conversions recorded meanwhile index themselves in
//! their own script. Every step is idempotent (a `ZADD` of the same member and score),
//! so a walk cut short, or two processes walking at once, only repeat work.

use super::keys::{click_conversions_key, click_index_built_key, conversion_key, conversion_times_key};
use super::{unavailable, Conn};
use crate::model::Conversion;
use crate::store::schema::decode;
use crate::store::StoreResult;

/// Ids asked of `ZSCAN` per page.
const PAGE: usize = 256;

/// One `ZSCAN` answer: the next cursor and member/score pairs (the score as Redis wrote
/// it, passed back unchanged).
type ScanPage = (u64, Vec<(String, String)>);

/// Indexes every conversion of `shard` by its click, unless that was done before; how
/// many conversions it indexed.
pub(super) async fn index_conversions_by_click(mut con: Conn, shard: u8) -> StoreResult<usize> {
    let done: bool =
        redis::cmd("EXISTS").arg(click_index_built_key(shard)).query_async(&mut con).await.map_err(unavailable)?;
    if done {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut cursor = 0u64;
    loop {
        let (next, page): ScanPage = redis::cmd("ZSCAN")
            .arg(conversion_times_key(shard))
            .arg(cursor)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        indexed += index_page(&mut con, shard, &page).await?;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let _: () =
        redis::cmd("SET").arg(click_index_built_key(shard)).arg(1).query_async(&mut con).await.map_err(unavailable)?;
    Ok(indexed)
}

/// Puts the conversions `page` names (id, time) in their clicks' indexes; how many.
async fn index_page(con: &mut Conn, shard: u8, page: &[(String, String)]) -> StoreResult<usize> {
    if page.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = page.iter().map(|(id, _)| conversion_key(shard, id)).collect();
    let records: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(con).await.map_err(unavailable)?;
    let mut pipe = redis::pipe();
    let mut n = 0;
    for ((id, at), bytes) in page.iter().zip(records) {
        let Some(bytes) = bytes else { continue };
        let conversion: Conversion = match decode(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "a stored conversion does not decode; it is left out of its click's index");
                continue;
            }
        };
        pipe.cmd("ZADD").arg(click_conversions_key(shard, &conversion.click.id)).arg(at).arg(id).ignore();
        n += 1;
    }
    if n > 0 {
        let _: () = pipe.query_async(con).await.map_err(unavailable)?;
    }
    Ok(n)
}
