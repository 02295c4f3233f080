//! The connection cap (excess connections answered `503` and closed, the rejections
//! themselves capped) and the per-connection guard behind it: slow-client timeouts and JSON
//! bodies in place of hyper's empty answers to unparsable request heads.

use super::observer::Observer;
use crate::rejection;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use std::future::Future;
use std::io::Result as IoResult;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The body sent to connections over the cap.
const OVER_CAPACITY: &[u8] = b"{\"error\":{\"message\":\"the gateway is at its connection limit; retry shortly\",\"type\":\"api_error\",\"code\":\"too_many_connections\"}}";

pub(super) fn over_capacity_response() -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        OVER_CAPACITY.len()
    )
    .into_bytes();
    out.extend_from_slice(OVER_CAPACITY);
    out
}

/// Caps concurrent connections; the excess is answered 503 and closed.
pub struct ConnLimit<A> {
    inner: A,
    permits: Arc<Semaphore>,
    rejecting: Arc<Semaphore>,
    timeouts: Timeouts,
    limit: usize,
    observer: Arc<Observer>,
}

/// At most this many over-cap rejections are in progress at once (each holds its socket's
/// descriptor for up to 2.5 s); beyond it an over-cap socket is closed at once, so a
/// connection flood cannot grow tasks or descriptors without bound.
pub const MAX_REJECTING: usize = 256;

impl<A> ConnLimit<A> {
    pub fn new(
        inner: A,
        max_connections: usize,
        rejecting: usize,
        timeouts: Timeouts,
        observer: Arc<Observer>,
    ) -> Self {
        ConnLimit {
            inner,
            timeouts,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            rejecting: Arc::new(Semaphore::new(rejecting.max(1))),
            limit: max_connections.max(1),
            observer,
        }
    }
}

async fn reject<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, _permit: OwnedSemaphorePermit) {
    // Read (and drive a lazy TLS handshake) briefly so the client is not reset before it
    // finished sending its request.
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        io.write_all(&over_capacity_response()).await?;
        io.shutdown().await
    })
    .await;
}

impl<A: Acceptor> Acceptor for ConnLimit<A>
where
    A::Io: 'static,
{
    type Io = PermitIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (io, local, remote, scheme) = self.inner.accept().await?;
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    return Ok((
                        PermitIo::new(io, permit, self.timeouts, Arc::clone(&self.observer)),
                        local,
                        remote,
                        scheme,
                    ));
                }
                Err(_) => {
                    self.observer.refused("connection_cap", &remote, self.limit);
                    if let Ok(p) = Arc::clone(&self.rejecting).try_acquire_owned() {
                        tokio::spawn(reject(io, p));
                    }
                }
            }
        }
    }
}

/// Per-connection timeouts against slow clients (slow-loris): once accepted, a connection must
/// deliver a complete request head (`\r\n\r\n`) within the header timeout; after the gateway
/// has written a response, the connection is closed if neither side moves a byte for the idle
/// timeout (streams keep it alive: every frame and keep-alive comment resets it). While a
/// request is being handled and nothing was written yet (a slow upstream), no timer runs.
/// HTTP/2 connections (preface `PRI * HTTP/2.0`) manage themselves and are not timed here.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head; the deadline is running.
    Head,
    /// Head complete, nothing written since.
    Busy,
    /// Response bytes written; the idle deadline restarts on every byte.
    Written,
    /// HTTP/2 or otherwise exempt.
    Off,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A connection holding one slot of the cap until it closes, with slow-client timeouts, and
/// JSON bodies in place of hyper's empty answers to unparsable request heads (see
/// [`rejection`]).
pub struct PermitIo<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
    timeouts: Timeouts,
    phase: Phase,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Last bytes of the head seen so far (to find `\r\n\r\n` across reads).
    tail: [u8; 3],
    first_read: bool,
    /// The reader's waker from its last pending read: arming a deadline from the write side
    /// must wake the reader so it polls (and registers) the new deadline.
    read_waker: Option<std::task::Waker>,
    /// The first bytes of the current request head (method and path): a rejected head is
    /// answered in the API shape its path implies.
    head_start: Vec<u8>,
    /// A JSON rejection being written in place of hyper's empty answer, and how much of it
    /// is written.
    rewrite: Option<(Vec<u8>, usize)>,
    observer: Arc<Observer>,
}

impl<T> Drop for PermitIo<T> {
    fn drop(&mut self) {
        self.observer.metrics.connections(-1);
    }
}

impl<T> PermitIo<T> {
    pub(super) fn new(
        io: T,
        permit: OwnedSemaphorePermit,
        timeouts: Timeouts,
        observer: Arc<Observer>,
    ) -> Self {
        observer.metrics.connections(1);
        PermitIo {
            io,
            _permit: permit,
            timeouts,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
            tail: [0; 3],
            first_read: true,
            read_waker: None,
            head_start: Vec::new(),
            rewrite: None,
            observer,
        }
    }

    fn arm(&mut self, after: Duration) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }

    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.phase == Phase::Off {
            return;
        }
        if self.first_read {
            self.first_read = false;
            if bytes.starts_with(H2_PREFACE) {
                self.phase = Phase::Off;
                return;
            }
        }
        if self.phase == Phase::Written {
            // The next request on a kept-alive connection begins.
            self.phase = Phase::Head;
            self.tail = [0; 3];
            self.head_start.clear();
            self.arm(self.timeouts.header);
        }
        if self.phase != Phase::Head {
            return;
        }
        let room = rejection::HEAD_PREFIX.saturating_sub(self.head_start.len());
        self.head_start
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        let mut window = self.tail.to_vec();
        window.extend_from_slice(bytes);
        if window.windows(4).any(|w| w == b"\r\n\r\n") {
            self.phase = Phase::Busy;
        }
        let n = window.len();
        for (k, slot) in self.tail.iter_mut().enumerate() {
            *slot = window.get(n.saturating_sub(3) + k).copied().unwrap_or(0);
        }
    }

    fn on_write(&mut self, n: usize) {
        if n > 0 && matches!(self.phase, Phase::Busy | Phase::Written) {
            let newly_armed = self.phase == Phase::Busy;
            self.phase = Phase::Written;
            self.arm(self.timeouts.idle);
            if newly_armed && let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }

    /// Whether a running deadline has passed (registers the waker otherwise).
    fn expired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        matches!(self.phase, Phase::Head | Phase::Written)
            && self.deadline.as_mut().poll(cx).is_ready()
    }

    /// When `out` (the first bytes of an answer to a request the application never saw) is
    /// hyper's empty rejection, queue the JSON one instead.
    fn intercept(&mut self, out: &[u8]) -> bool {
        if !matches!(self.phase, Phase::Head | Phase::Busy) {
            return false;
        }
        let Some(r) = rejection::rewrite(out, &self.head_start) else {
            return false;
        };
        tracing::debug!(
            status = r.status,
            "unparsable request head answered with a JSON envelope"
        );
        self.observer
            .metrics
            .http_request("unparsed", "unknown", r.status, r.shape, 0.0);
        self.rewrite = Some((r.bytes, 0));
        true
    }
}

impl<T: AsyncWrite + Unpin> PermitIo<T> {
    /// Write what is left of a queued JSON rejection.
    fn poll_rewrite(&mut self, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        let PermitIo { io, rewrite, .. } = self;
        while let Some((bytes, done)) = rewrite.as_mut() {
            let Some(rest) = bytes.get(*done..).filter(|r| !r.is_empty()) else {
                *rewrite = None;
                break;
            };
            match Pin::new(&mut *io).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// `out` is replaced by a JSON rejection: report it written (the rejection is finished
    /// by the flush and shutdown hyper does next).
    fn poll_replaced(&mut self, cx: &mut TaskContext<'_>, n: usize) -> Poll<IoResult<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_rewrite(cx) {
            return Poll::Ready(Err(e));
        }
        self.on_write(n);
        Poll::Ready(Ok(n))
    }
}

fn timed_out(phase: Phase) -> std::io::Error {
    let what = if phase == Phase::Head {
        "request head not received within the header timeout"
    } else {
        "connection idle beyond the idle timeout"
    };
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

impl<T: AsyncRead + Unpin> AsyncRead for PermitIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<IoResult<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                this.on_read(buf.filled().get(before..).unwrap_or_default());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.expired(cx) {
                    let phase = self.phase;
                    return Poll::Ready(Err(timed_out(phase)));
                }
                self.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// hyper's rejections are a few hundred bytes; a vectored write above this is not one.
const REJECTION_MAX: usize = 1024;

impl<T: AsyncWrite + Unpin> AsyncWrite for PermitIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<IoResult<usize>> {
        let this = &mut *self;
        if this.rewrite.is_some() {
            match this.poll_rewrite(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        if this.intercept(buf) {
            return this.poll_replaced(cx, buf.len());
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.on_write(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if this.expired(cx) {
                    let phase = this.phase;
                    return Poll::Ready(Err(timed_out(phase)));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        let this = &mut *self;
        if this.rewrite.is_some() {
            std::task::ready!(this.poll_rewrite(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        let this = &mut *self;
        if this.rewrite.is_some() {
            std::task::ready!(this.poll_rewrite(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<IoResult<usize>> {
        let this = &mut *self;
        if this.rewrite.is_some() {
            match this.poll_rewrite(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if matches!(this.phase, Phase::Head | Phase::Busy) && total <= REJECTION_MAX {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if this.intercept(&joined) {
                return this.poll_replaced(cx, total);
            }
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.on_write(n);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
