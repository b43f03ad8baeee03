//! Background work that gives its core back: the store's own threads on a core they
//! share with the runtime that answers redirects.
//!
//! The click log's housekeeping (sealing a full segment: collecting, sorting and writing
//! half a million index entries; rewriting a week-old one) is tens of milliseconds of
//! CPU. Run in one go, the scheduler gives it the core in slices of milliseconds, and
//! every redirect waiting in that slice waits for it. Paced, it stops every
//! [`SLICE`] and lets whatever else is runnable go first, so a redirect waits at most
//! that long; on an idle core it goes on at once.
//!
//! Both store threads run under `SCHED_BATCH` ([`defer_to_waker`]), so that waking one
//! does not preempt the runtime's thread either, and wait for their work with a
//! [`Waiter`], which gives the core back when it finds nothing to take.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Longest stretch of paced work between two yields.
const SLICE: Duration = Duration::from_micros(100);
/// Units of work between two looks at the clock (a unit being a few nanoseconds: one
/// index entry copied or merged).
const UNITS_PER_LOOK: u32 = 256;

/// Counts work done and yields the CPU once a [`SLICE`] of it has passed.
pub(super) struct Pacer {
    since: Instant,
    units: u32,
}

impl Pacer {
    pub(super) fn new() -> Pacer {
        Pacer { since: Instant::now(), units: 0 }
    }

    /// Notes `units` of work done; yields when the slice is used up.
    pub(super) fn tick(&mut self, units: u32) {
        self.units = self.units.saturating_add(units);
        if self.units >= UNITS_PER_LOOK {
            self.units = 0;
            if self.since.elapsed() >= SLICE {
                std::thread::yield_now();
                self.since = Instant::now();
            }
        }
    }
}

/// Entries sorted in runs of this many, each run one uninterrupted stretch (about
/// 100 µs), then merged.
const RUN: usize = 4096;

/// Sorts `v` as `sort_unstable` would, paced: runs of [`RUN`] sorted one at a time, then
/// merged pairwise into `merged` (a buffer kept for the next sort), a tick per entry.
pub(super) fn sort<T: Ord + Copy>(v: &mut Vec<T>, merged: &mut Vec<T>, pacer: &mut Pacer) {
    for run in v.chunks_mut(RUN) {
        run.sort_unstable();
        pacer.tick(UNITS_PER_LOOK);
    }
    let len = v.len();
    merged.clear();
    merged.reserve(len);
    let mut width = RUN;
    while width < len {
        merged.clear();
        for start in (0..len).step_by(2 * width) {
            let (mid, end) = ((start + width).min(len), (start + 2 * width).min(len));
            let (mut i, mut j) = (start, mid);
            while i < mid && j < end {
                if v[j] < v[i] {
                    merged.push(v[j]);
                    j += 1;
                } else {
                    merged.push(v[i]);
                    i += 1;
                }
                pacer.tick(1);
            }
            merged.extend_from_slice(&v[i..mid]);
            merged.extend_from_slice(&v[j..end]);
        }
        std::mem::swap(v, merged);
        width *= 2;
    }
}

/// Waits on the calling thread for a channel of the runtime's, as tokio's
/// `blocking_recv` does, except that it yields the core when woken with nothing to take.
///
/// Such a wake-up comes from the sender caught half-way: the runtime's thread, in the
/// middle of taking this one's waker, was switched out. tokio's receiver, finding its
/// waker being taken, wakes its own thread and reports nothing yet; `blocking_recv` would
/// then poll again at once, and again, until the scheduler takes the core back a whole
/// time slice later. On a core the two threads share, the sender cannot finish meanwhile:
/// measured at 256 connections, the writer spun 8 to 16 ms at a time about once a second,
/// and every redirect in flight waited for it.
pub(super) struct Waiter {
    waker: Waker,
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Waiter {
    /// A waiter for the calling thread; only that thread may [`wait`](Waiter::wait).
    pub(super) fn new() -> Waiter {
        Waiter { waker: Waker::from(Arc::new(Unpark(std::thread::current()))) }
    }

    /// Polls until ready (`|cx| rx.poll_recv(cx)`), parking in between.
    pub(super) fn wait<T>(&self, mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        let mut cx = Context::from_waker(&self.waker);
        let mut woken = false;
        loop {
            if let Poll::Ready(value) = poll(&mut cx) {
                return value;
            }
            if woken {
                std::thread::yield_now();
            }
            std::thread::park();
            woken = true;
        }
    }
}

/// Puts the calling thread under `SCHED_BATCH`, which differs from the default policy
/// only in that its wake-ups never preempt the running thread; its share of the CPU is
/// unchanged. Where the policy cannot be set (a sandbox that forbids it, say) the
/// thread works as before, with more thread switches.
pub(super) fn defer_to_waker() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
        ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let nice = ThreadPriority::Os(ThreadPriorityOsValue::default());
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), nice, policy) {
        tracing::info!(error = %e, "a store thread runs under the default scheduling policy");
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The scheduling policies of this process's threads named `name` (field 41 of their
    /// `/proc` stat line; `SCHED_OTHER` is 0, `SCHED_BATCH` 3).
    pub(in crate::store::embedded) fn policies_of(name: &str) -> Vec<u32> {
        let tasks = std::fs::read_dir("/proc/self/task").expect("tasks");
        tasks
            .flatten()
            .filter_map(|task| {
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                if comm.trim_end() != name {
                    return None;
                }
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // Fields after the command name, which is in parentheses: the policy is the 39th.
                stat.rsplit_once(") ")?.1.split(' ').nth(38)?.parse().ok()
            })
            .collect()
    }

    #[test]
    fn a_thread_that_defers_runs_under_sched_batch() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pace-test".into())
            .spawn(move || {
                let before = policies_of("pace-test");
                defer_to_waker();
                tx.send((before, policies_of("pace-test"))).expect("send");
                let _ = done_rx.recv();
            })
            .expect("spawn");
        let (before, after) = rx.recv().expect("policies");
        let _ = done_tx.send(());
        thread.join().expect("join");
        assert_eq!((before, after), (vec![0], vec![3]), "SCHED_OTHER, then SCHED_BATCH");
    }

    #[test]
    fn a_waiter_takes_what_is_sent_in_order_and_sees_the_channel_close() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        // Each burst is sent once the waiter has found the channel empty, so that it
        // parks with nothing to take now and then, and is woken from the other thread.
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<()>();
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                if i % 100 == 0 {
                    empty_rx.recv().expect("the waiter found the channel empty");
                }
                tx.blocking_send(i).expect("send");
            }
        });
        let waiter = Waiter::new();
        let mut got = Vec::new();
        let mut empties = 0;
        let mut poll = |cx: &mut Context<'_>| {
            let polled = rx.poll_recv(cx);
            if polled.is_pending() {
                empties += 1;
                let _ = empty_tx.send(());
            }
            polled
        };
        while let Some(i) = waiter.wait(&mut poll) {
            got.push(i);
        }
        sender.join().expect("sender");
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert!(empties >= 10, "the waiter waited before each of the ten bursts ({empties})");
    }

    #[test]
    fn a_waiter_woken_with_nothing_to_take_asks_again() {
        // What tokio's receiver does when its waker is caught being taken: it wakes the
        // waiting thread itself and reports nothing yet, here three times.
        let mut polls = 0;
        let value = Waiter::new().wait(|cx| {
            polls += 1;
            if polls <= 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        assert_eq!(value, 4);
    }

    /// The case the waiter exists for: woken with nothing to take while the only thread
    /// that can end the wait is runnable on the same core. The waiter yields, so that
    /// thread runs at its first look; spinning, it would ask thousands of times before the
    /// scheduler's tick took the core from it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_waiter_woken_with_nothing_to_take_lets_the_thread_it_waits_for_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut one = rustix::thread::CpuSet::new();
        one.set(rustix::thread::sched_getcpu());
        rustix::thread::sched_setaffinity(None, &one).expect("pin the test thread");
        // Under SCHED_BATCH, as the store's threads; the thread below inherits both the
        // core and the policy, so its start does not preempt this one: it waits its turn.
        defer_to_waker();
        let done = Arc::new(AtomicBool::new(false));
        let setter = {
            let done = done.clone();
            std::thread::spawn(move || done.store(true, Ordering::Release))
        };
        let mut polls = 0u64;
        Waiter::new().wait(|cx| {
            polls += 1;
            if done.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                // What tokio's receiver does when its waker is being taken.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        });
        setter.join().expect("setter");
        assert!(polls < 1000, "the waiter asked {polls} times before the other thread could run");
    }

    #[test]
    fn paced_sort_sorts_as_sort_unstable_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0, 1, RUN - 1, RUN, RUN + 1, 3 * RUN + 17, 9 * RUN] {
            let mut v: Vec<(u64, u32)> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Few distinct keys at the small end, so equal keys meet across runs.
                    (seed % (len as u64 / 3 + 1), i as u32)
                })
                .collect();
            let mut expected = v.clone();
            expected.sort_unstable();
            sort(&mut v, &mut Vec::new(), &mut Pacer::new());
            assert_eq!(v, expected, "length {len}");
        }
    }
}
