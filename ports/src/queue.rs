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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::time::Duration;

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
}
