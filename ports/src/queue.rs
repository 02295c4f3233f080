//! The bounded queue between the request path and a storage writer thread.
//!
//! The [`EventSink`](crate::trace::EventSink) contract says `emit` never blocks and a full
//! queue is counted, not waited on. Both storage adapters implement that with this queue.
//!
//! Why not `std::sync::mpsc::sync_channel`: it allocates and initialises every slot up front.
//! With the default capacity of 65,536 trace events that is about 10 MiB of resident memory
//! before the first request. This queue is std's unbounded (linked-block) channel plus an
//! atomic length, so its memory follows the actual backlog.
//!
//! Invariants:
//! - [`QueueSender::try_send`] fails with `Full` when `capacity` messages are queued and not
//!   yet received; it never blocks.
//! - [`QueueSender::send`] ignores the bound. It is meant for rare control messages (flush and
//!   shutdown markers), which must never be dropped the way an event may be.
//! - The length counts every message sent and not yet received, whichever way it was sent.
//!
//! - Every message is stamped with the instant it was queued; the receiver tells the stamp of
//!   the message it handed out last ([`QueueReceiver::queued_at`]), which is how a writer
//!   knows how long the oldest event of its batch has waited.
//!
//! The module also holds the other rules both storage writers share, so the SQLite and redb
//! writers cannot drift apart: the [`Counters`] behind [`SinkStats`] and readiness, the
//! [`LogLimiter`] that keeps overflow WARN lines to one per interval, the [`Backoff`] between
//! attempts to recover a failed store, and the [`CommitDeadline`] arithmetic with the
//! commit-lag accounting behind `/metrics`.

use crate::trace::{COMMIT_LAG_BUCKETS_MS, CommitLagStats, SinkStats};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

/// A bounded queue with room for `capacity` messages (at least 1).
#[must_use]
pub fn bounded<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let len = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            len: Arc::clone(&len),
            capacity: capacity.max(1),
        },
        QueueReceiver {
            rx,
            len,
            last_queued_at: Cell::new(None),
        },
    )
}

/// The sending side (cheap to clone; clones share the bound).
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: mpsc::Sender<(Instant, T)>,
    len: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            len: Arc::clone(&self.len),
            capacity: self.capacity,
        }
    }
}

impl<T> QueueSender<T> {
    /// Queue `msg` unless the queue is full or the receiver is gone; never blocks.
    ///
    /// # Errors
    /// `Full(msg)` when `capacity` messages are waiting, `Disconnected(msg)` when the
    /// receiver was dropped.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(msg));
        }
        self.tx
            .send((Instant::now(), msg))
            .map_err(|SendError((_, m))| {
                self.len.fetch_sub(1, Ordering::AcqRel);
                TrySendError::Disconnected(m)
            })
    }

    /// Queue `msg` whatever the length (control messages); never blocks.
    ///
    /// # Errors
    /// Gives `msg` back when the receiver was dropped.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send((Instant::now(), msg))
            .map_err(|SendError((_, m))| {
                self.len.fetch_sub(1, Ordering::AcqRel);
                SendError(m)
            })
    }

    /// The bound given at creation.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages sent and not yet received.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no message is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side (one consumer: the writer thread).
#[derive(Debug)]
pub struct QueueReceiver<T> {
    rx: mpsc::Receiver<(Instant, T)>,
    len: Arc<AtomicUsize>,
    last_queued_at: Cell<Option<Instant>>,
}

impl<T> QueueReceiver<T> {
    fn took(&self, (at, msg): (Instant, T)) -> T {
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.last_queued_at.set(Some(at));
        msg
    }

    /// When the message most recently handed out by this receiver was queued (`None` before
    /// the first one).
    #[must_use]
    pub fn queued_at(&self) -> Option<Instant> {
        self.last_queued_at.get()
    }

    /// Wait for the next message.
    ///
    /// # Errors
    /// When every sender is gone and the queue is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        let msg = self.rx.recv()?;
        Ok(self.took(msg))
    }

    /// The next message if one is waiting.
    ///
    /// # Errors
    /// `Empty` when none is waiting, `Disconnected` when every sender is gone and the queue
    /// is empty.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let msg = self.rx.try_recv()?;
        Ok(self.took(msg))
    }

    /// Messages sent and not yet received.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no message is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait at most `timeout` for the next message.
    ///
    /// # Errors
    /// `Timeout` when none arrived in time, `Disconnected` when every sender is gone and the
    /// queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let msg = self.rx.recv_timeout(timeout)?;
        Ok(self.took(msg))
    }
}

/// Counters shared between the emitting side of a storage writer and its thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub written: AtomicU64,
    pub overflowed: AtomicU64,
    pub failed: AtomicU64,
    /// Events accepted and not yet committed (or counted as failed).
    pub queued: AtomicU64,
    pub writer_alive: AtomicBool,
    pub last_batch_ok: AtomicBool,
    pub closed: AtomicBool,
    /// Session turns applied.
    pub sessions_recorded: AtomicU64,
    /// Session turns refused: the session belongs to another workspace.
    pub sessions_conflicts: AtomicU64,
    /// Session turns lost (queue full, closed store, failed write).
    pub sessions_failed: AtomicU64,
    /// Queue-to-commit lag of committed batches (see [`Counters::record_commit`]).
    pub commit_lag: LagCounters,
}

/// The atomics behind [`CommitLagStats`].
#[derive(Debug, Default)]
pub struct LagCounters {
    pub deadline_us: AtomicU64,
    pub buckets: [AtomicU64; COMMIT_LAG_BUCKETS_MS.len() + 1],
    pub count: AtomicU64,
    pub sum_us: AtomicU64,
    pub max_us: AtomicU64,
    pub deadline_misses: AtomicU64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Counters {
    /// The event counts, as `EventSink::stats` reports them.
    #[must_use]
    pub fn stats(&self) -> SinkStats {
        let l = &self.commit_lag;
        SinkStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            commit_lag: CommitLagStats {
                deadline_us: l.deadline_us.load(Ordering::Relaxed),
                buckets: std::array::from_fn(|i| {
                    l.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed))
                }),
                count: l.count.load(Ordering::Relaxed),
                sum_us: l.sum_us.load(Ordering::Relaxed),
                max_us: l.max_us.load(Ordering::Relaxed),
                deadline_misses: l.deadline_misses.load(Ordering::Relaxed),
            },
        }
    }

    /// Account one committed batch whose oldest event was queued at `oldest`, committed at
    /// `committed`, against the deadline `deadline`. Returns the lag.
    pub fn record_commit(
        &self,
        oldest: Instant,
        committed: Instant,
        deadline: Duration,
    ) -> Duration {
        let lag = committed.saturating_duration_since(oldest);
        let l = &self.commit_lag;
        let us = micros(lag);
        let bucket = COMMIT_LAG_BUCKETS_MS
            .iter()
            .position(|ms| us <= ms.saturating_mul(1000))
            .unwrap_or(COMMIT_LAG_BUCKETS_MS.len());
        if let Some(b) = l.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        l.count.fetch_add(1, Ordering::Relaxed);
        l.sum_us.fetch_add(us, Ordering::Relaxed);
        l.max_us.fetch_max(us, Ordering::Relaxed);
        if lag > deadline {
            l.deadline_misses.fetch_add(1, Ordering::Relaxed);
        }
        lag
    }

    /// Open, with a live writer whose last batch committed (`EventSink::is_writable`).
    #[must_use]
    pub fn is_writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.writer_alive.load(Ordering::Acquire)
            && self.last_batch_ok.load(Ordering::Acquire)
    }
}

/// The default commit deadline of both storage writers (`metis gateway
/// --trace-commit-deadline`).
pub const DEFAULT_COMMIT_DEADLINE: Duration = Duration::from_millis(50);

/// The commit deadline: a writer commits a batch no later than `deadline` after the batch's
/// oldest message was queued. It bounds the window of acknowledged events a SIGKILL can lose.
///
/// A writer may let a batch grow (SQLite's linger, redb's commit delay: fewer, larger
/// transactions) only for what is left of the deadline once the expected commit time is set
/// aside; a batch already behind its deadline is committed at once. The expected commit time
/// is a moving average of the writer's recent commits.
#[derive(Debug, Clone, Copy)]
pub struct CommitDeadline {
    deadline: Duration,
    commit_estimate: Duration,
}

impl CommitDeadline {
    #[must_use]
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            commit_estimate: Duration::ZERO,
        }
    }

    /// The configured deadline.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// How long a batch whose oldest message was queued at `oldest` may still wait for more
    /// at `now`: the writer's own wish `wanted`, cut to what the deadline leaves.
    ///
    /// A quarter of the deadline is kept back for what the writer does not control: being
    /// scheduled late on a busy CPU, a commit slower than the recent ones. Aiming at the
    /// deadline itself would miss it by those few milliseconds about every other batch.
    #[must_use]
    pub fn wait_budget(&self, oldest: Instant, now: Instant, wanted: Duration) -> Duration {
        let age = now.saturating_duration_since(oldest);
        let aim = self.deadline - self.deadline / 4;
        let left = aim.saturating_sub(age).saturating_sub(self.commit_estimate);
        wanted.min(left)
    }

    /// Record how long a commit took (weights the newest a quarter).
    pub fn observe_commit(&mut self, took: Duration) {
        self.commit_estimate = (self.commit_estimate * 3 + took) / 4;
    }
}

/// Bounded exponential back-off between attempts to recover a failed store: `initial`,
/// doubled after every failed attempt, never above `max`; back to `initial` after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// The policy both writers use to reopen or probe a store after an I/O error: 50 ms,
    /// doubling, at most 5 s. Short enough that a freed disk is noticed within seconds,
    /// long enough that a store that stays broken costs one attempt every 5 s.
    #[must_use]
    pub fn store_recovery() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(5))
    }

    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The pause before the next attempt; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        d
    }

    /// After a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// The pause before retry number `attempt` (1-based) of a failed batch: `base` doubled per
/// earlier retry (at most 64x).
#[must_use]
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(6))
}

/// Allows one log line per `interval` across threads, without locks.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    interval_ms: u64,
    next_allowed_ms: AtomicU64,
}

impl LogLimiter {
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_allowed_ms: AtomicU64::new(0),
        }
    }

    /// Whether the caller may log now (at most once per interval).
    pub fn allow(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_allowed_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_allowed_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_send_refuses_beyond_the_capacity_and_frees_room_on_receive() {
        let (tx, rx) = bounded(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.recv(), Ok(1));
        assert!(tx.try_send(4).is_ok());
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(tx.try_send(5).is_ok());
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(5));
        assert!(tx.is_empty());
    }

    #[test]
    fn send_ignores_the_bound_and_is_counted() {
        let (tx, rx) = bounded(1);
        assert!(tx.try_send("event").is_ok());
        assert!(tx.send("flush").is_ok());
        assert_eq!(tx.len(), 2);
        assert!(matches!(tx.try_send("late"), Err(TrySendError::Full(_))));
        assert_eq!(rx.recv(), Ok("event"));
        assert_eq!(rx.recv(), Ok("flush"));
        assert!(tx.is_empty());
    }

    #[test]
    fn a_dropped_receiver_gives_the_message_back_and_leaves_the_length_alone() {
        let (tx, rx) = bounded(4);
        drop(rx);
        assert!(matches!(tx.try_send(7), Err(TrySendError::Disconnected(7))));
        assert!(tx.send(8).is_err());
        assert_eq!(tx.len(), 0);
    }

    #[test]
    fn the_receiver_sees_disconnection_after_draining() {
        let (tx, rx) = bounded(4);
        assert!(tx.try_send(1).is_ok());
        drop(tx);
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(rx.recv(), Err(RecvError));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn concurrent_senders_never_exceed_the_capacity() {
        let (tx, rx) = bounded(100);
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let tx = tx.clone();
                    s.spawn(move || (0..1000).filter(|i| tx.try_send(*i).is_ok()).count())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .sum()
        });
        assert_eq!(accepted, 100);
        assert_eq!(tx.len(), 100);
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 100);
    }

    #[test]
    fn every_message_carries_the_instant_it_was_queued() {
        let (tx, rx) = bounded(4);
        assert_eq!(rx.queued_at(), None);
        let before = Instant::now();
        assert!(tx.try_send(1).is_ok());
        std::thread::sleep(Duration::from_millis(5));
        assert!(tx.send(2).is_ok());
        assert_eq!(rx.recv(), Ok(1));
        let first = rx.queued_at().unwrap_or(before);
        assert!(first >= before);
        assert_eq!(rx.try_recv(), Ok(2));
        let second = rx.queued_at().unwrap_or(before);
        assert!(second >= first + Duration::from_millis(5));
    }

    #[test]
    fn the_deadline_cuts_the_wait_to_what_is_left_after_the_expected_commit() {
        let t0 = Instant::now();
        let mut d = CommitDeadline::new(Duration::from_millis(50));
        let ms = Duration::from_millis;
        // Young batch: the writer's own wish is within the deadline.
        assert_eq!(d.wait_budget(t0, t0 + ms(5), ms(10)), ms(10));
        // Older batch: only what is left of the deadline, less its last quarter (37.5 ms).
        assert_eq!(
            d.wait_budget(t0, t0 + ms(30), ms(10)),
            Duration::from_micros(7_500)
        );
        // Behind the deadline (or into its reserve): no wait at all.
        assert_eq!(d.wait_budget(t0, t0 + ms(40), ms(10)), Duration::ZERO);
        assert_eq!(d.wait_budget(t0, t0 + ms(80), ms(10)), Duration::ZERO);
        // Commits that take 8 ms are set aside once observed.
        for _ in 0..50 {
            d.observe_commit(ms(8));
        }
        let b = d.wait_budget(t0, t0 + ms(25), ms(100));
        assert!(b <= ms(5) && b >= ms(4), "{b:?}");
        assert_eq!(
            CommitDeadline::new(Duration::ZERO).wait_budget(t0, t0, ms(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn commits_are_accounted_in_the_histogram_max_and_misses() {
        let c = Counters::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        c.record_commit(t0, t0 + ms(3), ms(50));
        c.record_commit(t0, t0 + ms(60), ms(50));
        c.record_commit(t0, t0 + ms(9000), ms(50));
        let s = c.stats().commit_lag;
        assert_eq!(s.count, 3);
        assert_eq!(s.deadline_misses, 2);
        assert_eq!(s.max_us, 9_000_000);
        assert_eq!(s.sum_us, 9_063_000);
        assert_eq!(s.buckets[2], 1, "3 ms lands in le=5ms");
        assert_eq!(s.buckets[6], 1, "60 ms lands in le=100ms");
        assert_eq!(
            s.buckets[COMMIT_LAG_BUCKETS_MS.len()],
            1,
            "9 s lands in +Inf"
        );
    }

    #[test]
    fn the_recovery_backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::store_recovery();
        let got: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        assert_eq!(
            retry_delay(Duration::from_millis(50), 1),
            Duration::from_millis(50)
        );
        assert_eq!(
            retry_delay(Duration::from_millis(50), 3),
            Duration::from_millis(200)
        );
        assert_eq!(
            retry_delay(Duration::from_millis(1), 40),
            Duration::from_millis(64)
        );
    }

    #[test]
    fn the_log_limiter_allows_one_line_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert!(l.allow());
        assert!(!l.allow());
        let every_time = LogLimiter::new(Duration::ZERO);
        assert!(every_time.allow() && every_time.allow());
    }
}
