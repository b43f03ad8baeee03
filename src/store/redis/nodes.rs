//! The servers behind the store, for `/readyz` and `/metrics`.
//!
//! A background task looks every [`LOOK_EVERY`] and keeps what it saw, so a readiness
//! check answers at once even while Redis does not. On a cluster it reads `CLUSTER NODES`
//! from any node: every node's address, role, whether the cluster believes it failing,
//! and how many slots each master serves. One Redis reports itself, its role from
//! `INFO replication`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::Conn;
use crate::store::NodeState;

/// How often the nodes are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A look that takes longer than this reports the nodes as they were.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the last look saw, shared by the store and the task that looks.
pub(super) type Seen = Arc<Mutex<Vec<NodeState>>>;

/// Looks at the nodes now and keeps the answer in `seen`.
pub(super) async fn look(con: &Conn, address: Option<&str>, seen: &Mutex<Vec<NodeState>>) {
    let now = match tokio::time::timeout(LOOK_TIMEOUT, read(con.clone(), address)).await {
        Ok(Some(nodes)) => nodes,
        // One Redis that does not answer is down; a cluster that does not answer keeps
        // its last picture, since any one node may be the one that is gone.
        _ => match address {
            Some(address) => {
                let role = seen.lock().unwrap_or_else(PoisonError::into_inner).first().map_or("master", |n| n.role);
                vec![NodeState { address: address.to_owned(), role, state: "disconnected", slots: None }]
            }
            None => return,
        },
    };
    *seen.lock().unwrap_or_else(PoisonError::into_inner) = now;
}

/// Looks every [`LOOK_EVERY`] until the store (which holds `seen`) is dropped.
pub(super) async fn watch(con: Conn, address: Option<String>, seen: Weak<Mutex<Vec<NodeState>>>) {
    let mut tick = crate::clock::every(LOOK_EVERY);
    loop {
        tick.tick().await;
        let Some(seen) = seen.upgrade() else { return };
        look(&con, address.as_deref(), &seen).await;
    }
}

/// One Redis at `address` (`Some`), or the cluster (`None`); `None` when it did not answer.
async fn read(mut con: Conn, address: Option<&str>) -> Option<Vec<NodeState>> {
    match address {
        Some(address) => {
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut con).await.ok()?;
            let role = if info.lines().any(|l| l.trim() == "role:slave") { "replica" } else { "master" };
            Some(vec![NodeState { address: address.to_owned(), role, state: "connected", slots: None }])
        }
        None => {
            let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await.ok()?;
            Some(parse_cluster_nodes(&text))
        }
    }
}

/// The nodes a `CLUSTER NODES` answer lists, sorted by address. Each line is
/// `<id> <ip:port@bus-port[,hostname]> <flags> <master id> <ping sent> <pong received>
/// <config epoch> <link state> <slot ranges…>`.
fn parse_cluster_nodes(text: &str) -> Vec<NodeState> {
    let mut nodes: Vec<NodeState> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next().unwrap_or_default().to_owned();
            let flags: Vec<&str> = fields[2].split(',').collect();
            let role = if flags.contains(&"master") {
                "master"
            } else if flags.contains(&"slave") {
                "replica"
            } else {
                "unknown"
            };
            let state = if flags.contains(&"fail") || flags.contains(&"fail?") {
                "failing"
            } else if fields[7] != "connected" || flags.contains(&"noaddr") || flags.contains(&"handshake") {
                "disconnected"
            } else {
                "connected"
            };
            let slots = if role == "master" { fields[8..].iter().map(|r| slot_count(r)).sum() } else { 0 };
            Some(NodeState { address, role, state, slots: Some(slots) })
        })
        .collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address));
    nodes
}

/// Slots in one range of a `CLUSTER NODES` line: `5461`, `0-5460`; a slot being moved
/// (`[5461->-<id>]`, `[5461-<-<id>]`) is counted where it is now, in its own range.
fn slot_count(range: &str) -> u32 {
    if range.starts_with('[') {
        return 0;
    }
    match range.split_once('-') {
        Some((from, to)) => match (from.parse::<u32>(), to.parse::<u32>()) {
            (Ok(from), Ok(to)) if to >= from => to - from + 1,
            _ => 0,
        },
        None => u32::from(range.parse::<u32>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_roles_states_and_slots() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,node-b master - 0 1426238316232 2 connected 5461-10922 [5461->-292f]
292f 127.0.0.1:30003@31003 master,fail? - 1426238318243 1426238317741 3 connected 10923-16383
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 16000
6ec2 127.0.0.1:30005@31005 slave,fail 67ed 0 1426238316232 5 disconnected
";
        let nodes = parse_cluster_nodes(text);
        let seen: Vec<(&str, &str, &str, Option<u32>)> =
            nodes.iter().map(|n| (n.address.as_str(), n.role, n.state, n.slots)).collect();
        assert_eq!(
            seen,
            [
                ("127.0.0.1:30001", "master", "connected", Some(5461 + 1)),
                ("127.0.0.1:30002", "master", "connected", Some(5462)),
                ("127.0.0.1:30003", "master", "failing", Some(5461)),
                ("127.0.0.1:30004", "replica", "connected", Some(0)),
                ("127.0.0.1:30005", "replica", "failing", Some(0)),
            ]
        );
    }

    #[test]
    fn slot_ranges_are_counted() {
        assert_eq!(slot_count("0-16383"), 16384);
        assert_eq!(slot_count("42"), 1);
        assert_eq!(slot_count("[42-<-abc]"), 0);
        assert_eq!(slot_count("x"), 0);
    }
}
