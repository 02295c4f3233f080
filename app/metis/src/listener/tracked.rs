//! The registry of open connections by peer (so a handler can notice its client went away)
//! and the connection type that stays in it until it closes.

use super::rescue::RescueState;
use std::future::Future;
use std::io::Result as IoResult;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Open connections by peer address, each with a weak handle of its socket, so a handler
/// can notice that its client went away while it waits on an upstream (hyper only reads a
/// connection when it expects bytes, so a closed client is otherwise noticed only when the
/// response is written). The handle is the connection's own socket, shared (not a
/// duplicated descriptor): a client connection costs one file descriptor.
#[derive(Debug, Default)]
pub struct Connections {
    by_peer: std::sync::Mutex<std::collections::HashMap<SocketAddr, Weak<tokio::net::TcpStream>>>,
}

impl Connections {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, Weak<tokio::net::TcpStream>>>
    {
        match self.by_peer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Resolves when the client at `peer` has closed its side of the connection (EOF).
    /// Never resolves when the connection is unknown or data is waiting to be read (a
    /// pipelined request): then there is nothing to learn without consuming bytes.
    ///
    /// Watching costs a few syscalls (peek and a readiness wait), so it starts only after
    /// `after`: fast answers never pay for it, and a client that gave up on a slow upstream
    /// is still noticed within `after` plus one wake-up.
    pub fn closed(
        self: &Arc<Self>,
        peer: SocketAddr,
        after: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = Arc::clone(self);
        async move {
            tokio::time::sleep(after).await;
            let stream = this.lock().get(&peer).and_then(Weak::upgrade);
            let Some(stream) = stream else {
                return std::future::pending().await;
            };
            let mut byte = [0u8; 1];
            loop {
                match stream.peek(&mut byte).await {
                    Ok(0) => return,
                    // Bytes are waiting (pipelining or a TLS alert): check again later.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                    Err(_) => return,
                }
            }
        }
    }
}

/// Register `io` in `connections` (for the disconnect watch) and wrap it.
pub(super) fn track(
    std_stream: std::net::TcpStream,
    peer: Option<SocketAddr>,
    connections: &Arc<Connections>,
) -> IoResult<TrackedIo> {
    let io = Arc::new(tokio::net::TcpStream::from_std(std_stream)?);
    if let Some(peer) = peer {
        connections.lock().insert(peer, Arc::downgrade(&io));
    }
    Ok(TrackedIo {
        io,
        peer,
        connections: Arc::clone(connections),
        rescued: None,
    })
}

/// A tracked connection; leaving the registry when dropped. Reads and writes go through a
/// shared handle of the socket (see [`Connections`]).
pub struct TrackedIo {
    io: Arc<tokio::net::TcpStream>,
    peer: Option<SocketAddr>,
    connections: Arc<Connections>,
    /// Set on connections served by the rescue server (counted until they close).
    pub(super) rescued: Option<Arc<RescueState>>,
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            self.connections.lock().remove(&peer);
        }
        if let Some(state) = &self.rescued {
            state.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Bytes zeroed at most per read (a `ReadBuf` over uninitialised memory must be initialised
/// before a safe read; capping it keeps a large read buffer from being zeroed in full).
const READ_CHUNK: usize = 64 * 1024;

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<IoResult<()>> {
        loop {
            std::task::ready!(self.io.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_CHUNK);
            match self.io.try_read(buf.initialize_unfilled_to(want)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<IoResult<usize>> {
        loop {
            std::task::ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        // TCP writes are not buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.io).shutdown(std::net::Shutdown::Write))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<IoResult<usize>> {
        loop {
            std::task::ready!(self.io.poll_write_ready(cx))?;
            match self.io.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}
