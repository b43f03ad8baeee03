//! Word of link changes between the processes that share one Redis.
//!
//! Putting or deleting a link publishes its key (`network/slug`) on [`CHANNEL`] from the
//! same Lua script that writes it (`scripts/put_link.lua`, `scripts/delete_link.lua`), so
//! no change goes without its message. On a cluster a classic `PUBLISH` reaches the
//! subscribers of every node, so each process listens on one node only.
//!
//! A subscribed connection can do nothing else, so each process opens one of its own:
//! to the one Redis, or to one of the configured cluster nodes, moving on to the next
//! when it fails. It reconnects with backoff for as long as anyone reads the changes,
//! and reports [`LinkChange::Any`] on every subscription: whatever was published while
//! it was not listening is lost. An idle subscription pings now and then, so that a
//! connection that died without closing is noticed too.

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::clock;
use crate::store::LinkChange;

/// The pub/sub channel that carries the key of every link put or deleted.
pub(super) const CHANNEL: &str = "cl:links:changed";

/// Changes waiting for the catalog; it forgets a link in well under a microsecond.
const QUEUE: usize = 1024;
/// How often an idle subscription checks that its node still answers.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The wait before reconnecting after a connection is lost; it doubles per failed
/// attempt up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between attempts: one connection attempt a second is nothing to a
/// Redis coming back, and a process hears of changes again at most a second after it is.
const LAST_RETRY: Duration = Duration::from_secs(1);

/// Starts listening on `nodes` (tried in turn) and returns the changes heard. The task
/// ends, and its connection closes, when the receiver is dropped.
pub(super) fn watch(nodes: Vec<Client>) -> mpsc::Receiver<LinkChange> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        tokio::select! {
            () = listen(&nodes, &tx) => {}
            () = tx.closed() => {}
        }
    });
    rx
}

/// Subscribes to one node after another for as long as the reader wants changes.
async fn listen(nodes: &[Client], tx: &mpsc::Sender<LinkChange>) {
    let mut failures = 0u32;
    for node in nodes.iter().cycle() {
        let addr = node.get_connection_info().addr().to_string();
        match session(node, tx, failures > 0).await {
            Ended::ReaderGone => return,
            Ended::Lost { subscribed, why } => {
                if subscribed || failures == 0 {
                    tracing::warn!(node = %addr, why, "link-change subscription lost; reconnecting");
                } else {
                    tracing::debug!(node = %addr, why, failures, "link-change subscription still down");
                }
                failures = if subscribed { 0 } else { failures.saturating_add(1) };
            }
        }
        tokio::time::sleep(retry_after(failures)).await;
    }
}

/// How long to wait before the next attempt, after `failures` attempts in a row that
/// did not get as far as subscribing.
fn retry_after(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1u32 << failures.min(16)).min(LAST_RETRY)
}

/// Why a subscription ended.
#[derive(Debug)]
enum Ended {
    /// Nobody reads the changes any more: stop.
    ReaderGone,
    /// The connection failed, closed or went quiet; `subscribed` says whether it had
    /// got as far as subscribing.
    Lost { subscribed: bool, why: String },
}

/// One connection to `node`: subscribes, reports [`LinkChange::Any`], then every
/// message, until the connection is lost or the reader goes.
async fn session(node: &Client, tx: &mpsc::Sender<LinkChange>, recovering: bool) -> Ended {
    let lost = |subscribed: bool, why: String| Ended::Lost { subscribed, why };
    let mut pubsub = match timeout(CONNECT_TIMEOUT, node.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return lost(false, e.to_string()),
        Err(_) => return lost(false, format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    match timeout(RESPONSE_TIMEOUT, pubsub.subscribe(CHANNEL)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return lost(false, e.to_string()),
        Err(_) => return lost(false, format!("SUBSCRIBE unanswered within {RESPONSE_TIMEOUT:?}")),
    }
    if recovering {
        tracing::info!(node = %node.get_connection_info().addr(), "link-change subscription restored");
    }
    // Listening from here on; what changed before is unknown.
    if tx.send(LinkChange::Any).await.is_err() {
        return Ended::ReaderGone;
    }
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = clock::every(HEARTBEAT);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return lost(true, "the connection closed".into());
                };
                let Some(change) = change_in(message.get_payload_bytes()) else {
                    tracing::warn!(channel = CHANNEL, "a message that names no link; ignored");
                    continue;
                };
                if tx.send(change).await.is_err() {
                    return Ended::ReaderGone;
                }
            }
            _ = heartbeat.tick() => {
                match timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return lost(true, e.to_string()),
                    Err(_) => return lost(true, format!("PING unanswered within {RESPONSE_TIMEOUT:?}")),
                }
            }
        }
    }
}

/// The change a message on [`CHANNEL`] reports: the key of the link put or deleted.
fn change_in(payload: &[u8]) -> Option<LinkChange> {
    let key = std::str::from_utf8(payload).ok()?;
    key.contains('/').then(|| LinkChange::Link(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_soon_and_wait_at_most_a_second() {
        assert_eq!(retry_after(0), FIRST_RETRY);
        assert_eq!(retry_after(1), FIRST_RETRY * 2);
        assert_eq!(retry_after(4), Duration::from_millis(800));
        assert_eq!(retry_after(5), LAST_RETRY);
        assert_eq!(retry_after(u32::MAX), LAST_RETRY);
    }

    #[test]
    fn a_message_names_a_link_by_its_key() {
        assert_eq!(change_in(b"cake/summer"), Some(LinkChange::Link("cake/summer".into())));
        assert_eq!(change_in(b"no-slash"), None);
        assert_eq!(change_in(&[0xff, b'/', 0xfe]), None);
    }
}
