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
//! The module also holds the two other pieces both storage writers share: the [`Counters`]
//! behind [`SinkStats`] and readiness, and the [`LogLimiter`] that keeps overflow WARN lines
//! to one per interval.

use crate::trace::SinkStats;
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
        QueueReceiver { rx, len },
    )
}

/// The sending side (cheap to clone; clones share the bound).
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: mpsc::Sender<T>,
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
        self.tx.send(msg).map_err(|SendError(m)| {
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
        self.tx.send(msg).inspect_err(|_| {
            self.len.fetch_sub(1, Ordering::AcqRel);
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
    rx: mpsc::Receiver<T>,
    len: Arc<AtomicUsize>,
}

impl<T> QueueReceiver<T> {
    /// Wait for the next message.
    ///
    /// # Errors
    /// When every sender is gone and the queue is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        let msg = self.rx.recv()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(msg)
    }

    /// The next message if one is waiting.
    ///
    /// # Errors
    /// `Empty` when none is waiting, `Disconnected` when every sender is gone and the queue
    /// is empty.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let msg = self.rx.try_recv()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(msg)
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
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(msg)
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
}

impl Counters {
    /// The event counts, as `EventSink::stats` reports them.
    #[must_use]
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    /// Open, with a live writer whose last batch committed (`EventSink::is_writable`).
    #[must_use]
    pub fn is_writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.writer_alive.load(Ordering::Acquire)
            && self.last_batch_ok.load(Ordering::Acquire)
    }
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
    fn the_log_limiter_allows_one_line_per_interval() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert!(l.allow());
        assert!(!l.allow());
        let every_time = LogLimiter::new(Duration::ZERO);
        assert!(every_time.allow() && every_time.allow());
    }
}
