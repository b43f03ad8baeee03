//! Time: the wall clock the records carry, and the timers background duties run on.
//!
//! Background duties (fsyncs, sweeps, the spool's probe, histogram folding) are tokio
//! tasks ticking on [`every`], never threads sleeping, so that tests can drive them with
//! paused time and shutdown never waits out a sleep.

use std::time::Duration;

use crate::model::UnixMillis;

/// Now, in milliseconds since the epoch (0 on a clock set before 1970).
#[allow(clippy::disallowed_methods)] // The one place that reads the wall clock.
pub(crate) fn now_ms() -> UnixMillis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Now, in whole seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    (now_ms() / 1000) as u64
}

/// A timer that first fires one `period` from now, and skips the ticks a slow round
/// missed rather than firing them in a burst.
pub(crate) fn every(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
