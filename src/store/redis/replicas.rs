//! Writes the replicas confirm: `WAIT` after each write, in the same round trip.
//!
//! With `store.replicas_ack` N above 0, every write that records something (a batch of
//! clicks, a capped or forwarded click, a conversion, a reversal, an event) goes out as a
//! pipeline of two commands: the script call, then `WAIT N timeout`. Redis answers `WAIT`
//! with how many replicas hold every write made so far *on that connection*, so it must
//! follow the write on the connection the write went over:
//!
//! - on one Redis the pipeline keeps both on one connection, and Redis runs them in
//!   order;
//! - on a cluster, redis-rs sends a pipeline to the node of its first command that names
//!   a slot: the script's. `WAIT` on its own would go to *every* master and the smallest
//!   answer would win (redis-rs routes it to all primaries with a `Min` response policy),
//!   so one master without a replica would refuse every write, even those it never took.
//!   In the pipeline it goes with the script to that slot's master, and when the script
//!   meets `MOVED` or `ASK` the pair is sent again, together, to the new owner.
//!
//! A batch of clicks is one script call per shard, so a batch costs one `WAIT` per call,
//! not per click. `WAIT` blocks the connection it runs on (Redis answers nothing else on
//! it meanwhile), so confirmed writes get a connection of their own and reads never
//! queue behind one.
//!
//! A write the replicas did not confirm in time is on its master but not known to survive
//! the master's loss: it is refused as an outage ([`WriteError::Unconfirmed`]), the outage
//! spool keeps it, and the replay writes it again. The scripts are idempotent, so the
//! second write counts nothing twice, and the replay itself waits for the replicas too.

use redis::aio::ConnectionLike;
use redis::{
    Arg, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ScriptInvocation,
    ServerErrorKind, Value,
};

use super::scripts::ScriptCall;
use super::Conn;
use crate::store::{ReplicaAck, StoreError};
use crate::telemetry;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Applied on the master, but fewer replicas than asked confirmed it in time.
    #[error("{confirmed} of the {wanted} replicas asked for confirmed the write within {timeout_ms} ms")]
    Unconfirmed { wanted: u32, confirmed: i64, timeout_ms: u64 },
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> StoreError {
        match e {
            WriteError::Redis(e) => StoreError::unavailable("Redis failed", e),
            e @ WriteError::Unconfirmed { .. } => StoreError::unavailable("Redis replicas did not confirm a write", e),
        }
    }
}

/// The connection writes go through, and how many replicas must confirm each.
#[derive(Clone)]
pub(super) struct Writes {
    con: Conn,
    /// `None` when no replica need confirm anything: writes go out alone.
    ack: Option<ReplicaAck>,
}

impl Writes {
    /// Writes over `con`, each confirmed by `ack.replicas` replicas. With replicas to
    /// wait for, `con` should be a connection of its own (see the module documentation).
    pub(super) fn new(con: Conn, ack: ReplicaAck) -> Writes {
        Writes { con, ack: (ack.replicas > 0).then_some(ack) }
    }

    /// Runs a script that writes, then, if replicas must confirm it, `WAIT` right behind
    /// it; the script's answer once they have.
    pub(super) async fn invoke<T: FromRedisValue>(&self, call: &impl ScriptRun) -> Result<T, WriteError> {
        let Some(ack) = self.ack else {
            return Ok(call.run(&mut self.con.clone()).await?);
        };
        let mut con = Waiting { con: self.con.clone(), ack, confirmed: None };
        let answer = call.run(&mut con).await?;
        let confirmed = match con.confirmed {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e.into()),
            // The script ran without going through `Waiting`'s pipeline: cannot happen,
            // but then nothing confirmed it.
            None => 0,
        };
        if confirmed < i64::from(ack.replicas) {
            metrics::counter!(telemetry::REDIS_WRITES_UNCONFIRMED).increment(1);
            let timeout_ms = ack.timeout.as_millis() as u64;
            return Err(WriteError::Unconfirmed { wanted: ack.replicas, confirmed, timeout_ms });
        }
        Ok(answer)
    }
}

/// A script call [`Writes`] can send: redis-rs's own, or one built as its command
/// ([`ScriptCall`]). Either loads its script again when Redis answers `NOSCRIPT`.
pub(super) trait ScriptRun {
    async fn run<T: FromRedisValue>(&self, con: &mut impl ConnectionLike) -> RedisResult<T>;
}

impl ScriptRun for ScriptInvocation<'_> {
    async fn run<T: FromRedisValue>(&self, con: &mut impl ConnectionLike) -> RedisResult<T> {
        self.invoke_async(con).await
    }
}

impl ScriptRun for ScriptCall<'_> {
    async fn run<T: FromRedisValue>(&self, con: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.cmd.query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(con).await?;
                self.cmd.query_async(con).await
            }
            answer => answer,
        }
    }
}

/// A connection that sends every script call with `WAIT` behind it, in one pipeline,
/// and keeps `WAIT`'s answer. Anything else (the `SCRIPT LOAD` after a `NOSCRIPT`) goes
/// out alone, routed as usual.
struct Waiting {
    con: Conn,
    ack: ReplicaAck,
    /// How many replicas confirmed the last script call.
    confirmed: Option<Result<i64, RedisError>>,
}

impl ConnectionLike for Waiting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if !is_script_call(cmd) {
                return self.con.req_packed_command(cmd).await;
            }
            let mut pipe = Pipeline::with_capacity(2);
            pipe.add_command(cmd.clone()).cmd("WAIT").arg(self.ack.replicas).arg(self.ack.timeout.as_millis() as u64);
            let mut replies = self.con.req_packed_commands(&pipe, 0, 2).await?.into_iter();
            let (Some(answer), Some(wait)) = (replies.next(), replies.next()) else {
                return Err(RedisError::from((ErrorKind::Parse, "a write and its WAIT did not get two replies")));
            };
            self.confirmed = Some(match wait {
                Value::Int(n) => Ok(n),
                // `WAIT` refused (sent to a replica, say): the error says why.
                other => Err(other.extract_error().err().unwrap_or_else(|| {
                    RedisError::from((ErrorKind::UnexpectedReturnType, "WAIT did not answer a number"))
                })),
            });
            Ok(answer)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.con.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}

/// Whether `cmd` runs a script (`EVALSHA`, or `EVAL`).
fn is_script_call(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_script_calls_are_followed_by_wait() {
        assert!(is_script_call(redis::cmd("EVALSHA").arg("abc").arg(0)));
        assert!(is_script_call(redis::cmd("eval").arg("return 1").arg(0)));
        assert!(!is_script_call(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")));
        assert!(!is_script_call(&redis::cmd("PING")));
    }
}
