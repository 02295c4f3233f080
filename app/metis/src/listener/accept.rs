//! The TCP accept loop: accept failures paced and counted instead of spun on, a spare
//! descriptor to answer `503` when the process is out of them, and, when the acceptor is
//! dropped at shutdown, the accept queue drained into the rescue server.

use super::cap::over_capacity_response;
use super::observer::{Observer, is_connection_error, is_fd_limit};
use super::rescue::RescueSender;
use super::tracked::{Connections, TrackedIo, track};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use std::io::Result as IoResult;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

/// A TCP acceptor that records each connection in [`Connections`] until it closes.
///
/// Accept failures never reach poem (which would retry at once, spinning a core while the
/// process is out of descriptors): they are counted (`metis_accept_errors_total`), logged at
/// most once per 10 s, and retried after a short pause. While out of descriptors, one spare
/// descriptor held for the purpose is given up to accept a waiting client and answer it 503,
/// so clients get an answer instead of hanging in the accept queue.
pub struct Tracked {
    /// `Some` until dropped (the drop takes it to drain the accept queue).
    pub(super) listener: Option<tokio::net::TcpListener>,
    pub(super) local: LocalAddr,
    pub(super) connections: Arc<Connections>,
    /// Whether `accept` has been called before (see the yield in `accept`).
    pub(super) started: bool,
    pub(super) rescue: Option<RescueSender>,
    pub(super) observer: Arc<Observer>,
    /// A descriptor kept open to be closed when the process is out of them (see above).
    pub(super) spare: Option<std::fs::File>,
}

impl Tracked {
    fn listener(&self) -> IoResult<&tokio::net::TcpListener> {
        self.listener
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the listener is closed"))
    }

    /// Out of descriptors: close the spare, accept one waiting client on it, answer it 503
    /// and close it, then take the spare back. Returns whether a client was answered.
    fn answer_from_spare(&mut self) -> bool {
        if self.spare.take().is_none() {
            self.spare = open_spare();
            return false;
        }
        let accepted = self.listener.as_ref().map(|l| {
            let mut cx = TaskContext::from_waker(std::task::Waker::noop());
            l.poll_accept(&mut cx)
        });
        let answered = match accepted {
            Some(Poll::Ready(Ok((stream, peer)))) => {
                refuse_now(&stream);
                self.observer
                    .refused("fd_limit", &RemoteAddr(peer.into()), 0);
                true
            }
            _ => false,
        };
        self.spare = open_spare();
        answered
    }
}

pub(super) fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Answer 503 on a just-accepted socket without waiting (its request has usually been in the
/// socket buffer for a while: it waited in the accept queue), then close it.
fn refuse_now(stream: &tokio::net::TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.try_write(&over_capacity_response());
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}
impl Drop for Tracked {
    /// Take every connection still queued on the listening socket before it closes (the
    /// kernel would reset them) and hand them to the rescue server.
    fn drop(&mut self) {
        let (Some(listener), Some(rescue)) = (self.listener.take(), self.rescue.take()) else {
            return;
        };
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot drain the accept queue at shutdown");
                return;
            }
        };
        let mut rescued = 0_usize;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if rescue.send(stream).is_err() {
                        break;
                    }
                    rescued += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::warn!(error = %e, "draining the accept queue at shutdown");
                    }
                    break;
                }
            }
        }
        if rescued > 0 {
            tracing::info!(
                connections = rescued,
                "listener closed; queued connections handed to the rescue server"
            );
        }
    }
}

/// Pause after an accept failure that the spare descriptor could not resolve.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

impl Acceptor for Tracked {
    type Io = TrackedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![self.local.clone()]
    }

    async fn accept(&mut self) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        if !self.started {
            // poem's TLS acceptor races its config stream against the first accept; a
            // connection already queued at start-up would win and be refused for lack of a
            // config. Yielding once lets the (immediately ready) config be installed first.
            self.started = true;
            tokio::task::yield_now().await;
        }
        loop {
            let accepted = self.listener()?.accept().await;
            let failure = match accepted {
                Ok((io, peer)) => match io
                    .into_std()
                    .and_then(|s| track(s, Some(peer), &self.connections))
                {
                    Ok(io) => {
                        return Ok((
                            io,
                            self.local.clone(),
                            RemoteAddr(peer.into()),
                            Scheme::HTTP,
                        ));
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if is_connection_error(&failure) {
                // The client gave up while queued (or the handshake failed): nothing is
                // wrong with the listener, take the next one at once.
                continue;
            }
            self.observer.accept_failed(&failure);
            if is_fd_limit(&failure) && self.answer_from_spare() {
                continue;
            }
            tokio::time::sleep(ACCEPT_RETRY).await;
        }
    }
}
