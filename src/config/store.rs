//! `[store]`: which backend keeps the data, how long clicks stay resolvable, and where
//! writes wait while the backend is down.
//!
//! The spool's place is decided here, beside the embedded data by default, so that one
//! directory tree holds everything the process keeps and the store code never guesses
//! paths.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Env, Errors, Section};
use crate::store::spool::SpoolConfig;
use crate::store::{Backend, ReplicaAck};

/// Most replicas `replicas_ack` may ask for: a Redis master rarely has more than two, so
/// a larger number is a typo that would refuse every write.
const MOST_REPLICAS: u64 = 16;
/// Longest `replicas_ack_timeout_ms`: `WAIT` shares the 2 s a Redis request may take
/// with the write it follows, and a redirect waits for both.
const LONGEST_ACK_WAIT_MS: u64 = 1000;

/// `[store]`
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `backend` with its `path` (embedded) or `url`/`urls` (Redis, Redis Cluster; the
    /// environment's `CAKELINK_STORE_URL` wins over `url` so credentials can stay out of
    /// the file). Default: embedded at `data/cakelink.db`. Redis also takes
    /// `replicas_ack` and `replicas_ack_timeout_ms`: how many replicas must confirm a
    /// write before it counts as stored (see [`ReplicaAck`]).
    pub backend: Backend,
    /// `attribution_days`: how long a click counts for the conversions that follow it.
    pub attribution: Duration,
    /// `postback_grace_days`: how much longer a click stays resolvable, so a late
    /// postback for a click still inside its window is not lost.
    pub postback_grace: Duration,
    /// `event_log_max`: postback event log entries kept, so the log cannot grow without
    /// bound.
    pub event_log_max: usize,
    /// Where clicks and postbacks wait while the store is down (`spool_path`,
    /// `spool_max_bytes`; fsync'd every `fsync_ms`).
    pub spool: SpoolConfig,
}

impl StoreConfig {
    /// How long a click stays resolvable.
    pub fn click_ttl(&self) -> Duration {
        self.attribution + self.postback_grace
    }
}

/// Reads `[store]`; `None` when the backend or the spool cannot be used as written.
pub(super) fn read(value: Option<&toml::Value>, env: Env<'_>, errors: &mut Errors) -> Option<StoreConfig> {
    let mut st = Section::new("store", value, errors);
    let backend_name = st.string("backend", errors).unwrap_or_else(|| "embedded".into());
    let path = st.string("path", errors);
    let url_file = st.string("url", errors);
    let url = env("CAKELINK_STORE_URL").or(url_file);
    let urls = st.strings("urls", errors);
    let fsync_ms = st.uint("fsync_ms", 1, 60_000, errors).unwrap_or(1000);
    let replicas = read_replica_ack(&mut st, errors);
    let backend = match backend_name.as_str() {
        "embedded" => {
            // An error rather than a warning: ignoring the key would let an operator
            // believe clicks are copied to a second machine when they are not.
            if replicas.replicas > 0 {
                st.err(errors, "replicas_ack", "needs the redis backend; the embedded store has no replicas");
            }
            Some(Backend::Embedded {
                path: PathBuf::from(path.unwrap_or_else(|| "data/cakelink.db".into())),
                fsync: Duration::from_millis(fsync_ms),
            })
        }
        "redis" => read_redis(&st, url, urls, replicas, errors),
        other => {
            st.err(errors, "backend", format!("{other:?} is not a backend; use \"embedded\" or \"redis\""));
            None
        }
    };
    let attribution_days = st.uint("attribution_days", 1, 365, errors).unwrap_or(30);
    let grace_days = st.uint("postback_grace_days", 0, 365, errors).unwrap_or(7);
    let event_log_max = st.uint("event_log_max", 1, 10_000_000, errors).unwrap_or(10_000) as usize;
    let spool_path = read_spool_path(&mut st, backend.as_ref(), errors);
    let spool_max_bytes = st.uint("spool_max_bytes", 4096, 1 << 40, errors).unwrap_or(4 << 30);
    if let (Some(spool), Some(Backend::Embedded { path, .. })) = (&spool_path, &backend) {
        if spool == path {
            st.err(errors, "spool_path", "must not be the embedded store's own directory");
        }
    }
    st.finish(errors);
    Some(StoreConfig {
        backend: backend?,
        attribution: Duration::from_secs(attribution_days * 86_400),
        postback_grace: Duration::from_secs(grace_days * 86_400),
        event_log_max,
        spool: SpoolConfig { path: spool_path?, max_bytes: spool_max_bytes, fsync: Duration::from_millis(fsync_ms) },
    })
}

/// One Redis (`url`) or a cluster (`urls`), never both: which one was meant would be a
/// guess.
fn read_redis(
    st: &Section<'_>,
    url: Option<String>,
    urls: Option<Vec<String>>,
    replicas: ReplicaAck,
    errors: &mut Errors,
) -> Option<Backend> {
    match (url, urls) {
        (Some(_), Some(_)) => {
            st.err(errors, "urls", "give either url (one Redis) or urls (a Redis Cluster), not both");
            None
        }
        (Some(url), None) => check_redis_url(st, "url", &url, errors).then_some(Backend::Redis { url, replicas }),
        (None, Some(urls)) if !urls.is_empty() => {
            let ok = urls.iter().all(|u| check_redis_url(st, "urls", u, errors));
            ok.then_some(Backend::RedisCluster { urls, replicas })
        }
        _ => {
            st.err(errors, "url", "the redis backend needs url (or urls for a cluster)");
            None
        }
    }
}

/// `replicas_ack` (default 0: no `WAIT`) and `replicas_ack_timeout_ms` (default 100;
/// `WAIT` with 0 would wait for ever, so it starts at 1).
fn read_replica_ack(st: &mut Section<'_>, errors: &mut Errors) -> ReplicaAck {
    let default = ReplicaAck::default();
    let replicas = st.uint("replicas_ack", 0, MOST_REPLICAS, errors).map_or(default.replicas, |n| n as u32);
    let timeout = st
        .uint("replicas_ack_timeout_ms", 1, LONGEST_ACK_WAIT_MS, errors)
        .map_or(default.timeout, Duration::from_millis);
    ReplicaAck { replicas, timeout }
}

fn check_redis_url(st: &Section<'_>, key: &str, url: &str, errors: &mut Errors) -> bool {
    let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"));
    if !ok {
        st.err(errors, key, format!("{url:?} is not a redis:// URL"));
    }
    ok
}

/// `spool_path`, by default beside the embedded data (`<path>.spool`), or
/// `data/cakelink.spool` for Redis.
fn read_spool_path(st: &mut Section<'_>, backend: Option<&Backend>, errors: &mut Errors) -> Option<PathBuf> {
    match st.string("spool_path", errors) {
        Some(p) if p.trim().is_empty() => {
            st.err(errors, "spool_path", "must not be empty");
            None
        }
        Some(p) => Some(PathBuf::from(p)),
        None => Some(match backend {
            Some(Backend::Embedded { path, .. }) => path.with_extension("spool"),
            _ => PathBuf::from("data/cakelink.spool"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{parse, GOOD};

    #[test]
    fn the_spool_sits_beside_the_store_unless_configured() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.store.spool.path, PathBuf::from("x.spool"));
        assert_eq!(c.store.spool.max_bytes, 4 << 30);
        let text =
            GOOD.replace("path = \"x\"", "path = \"x\"\nspool_path = \"/var/spool/cakelink\"\nspool_max_bytes = 8192");
        let c = parse(&text).unwrap();
        assert_eq!(c.store.spool.path, PathBuf::from("/var/spool/cakelink"));
        assert_eq!(c.store.spool.max_bytes, 8192);
        let text = GOOD.replace("path = \"x\"", "path = \"x\"\nspool_path = \"x\"\nspool_max_bytes = 10");
        let mut keys: Vec<String> = parse(&text).unwrap_err().0.into_iter().map(|e| e.key).collect();
        keys.sort();
        assert_eq!(keys, ["store.spool_max_bytes", "store.spool_path"]);
    }
}
