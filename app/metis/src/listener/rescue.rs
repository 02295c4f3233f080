//! The rescue hand-off: connections still queued when the main listener closed are served
//! by a second server, which stops once they are all answered (or the drain bound passes).

use super::tracked::{Connections, TrackedIo, track};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use std::io::Result as IoResult;
use std::sync::Arc;
use std::time::Duration;

/// Connections taken from the accept queue when the listener closed, to be served by the
/// rescue server.
pub type RescueSender = tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>;

/// Progress of the rescue hand-off.
#[derive(Debug, Default)]
pub struct RescueState {
    /// Notified when the main listener has closed and every queued connection was handed
    /// over.
    handed_over: tokio::sync::Notify,
    /// Rescued connections still open.
    pub(super) live: std::sync::atomic::AtomicUsize,
}

impl RescueState {
    /// Resolves once the main listener has closed and every rescued connection has closed
    /// too (the rescue server answers with `Connection: close`, so each closes after one
    /// request; a silent one is closed by the header timeout), or `grace` after the main
    /// listener closed, whichever is first: the same drain bound as the main server's. This
    /// is the rescue server's shutdown signal (run it with no further graceful timeout):
    /// signalling earlier would make hyper drop rescued connections whose request it has not
    /// read yet, which resets them.
    pub async fn finished(&self, grace: Duration) {
        self.handed_over.notified().await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.live.load(std::sync::atomic::Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The rescue server's acceptor: yields the connections [`Tracked`](super::Tracked) took from
/// the accept queue when it closed, then records that the hand-off is over.
pub struct Rescue {
    pub(super) rx: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    pub(super) local: LocalAddr,
    pub(super) connections: Arc<Connections>,
    pub(super) state: Arc<RescueState>,
}

impl Acceptor for Rescue {
    type Io = TrackedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![self.local.clone()]
    }

    async fn accept(&mut self) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let Some(stream) = self.rx.recv().await else {
                // The main listener is closed and drained: nothing more will come.
                self.state.handed_over.notify_one();
                return std::future::pending().await;
            };
            let Ok(peer) = stream.peer_addr() else {
                continue; // already gone
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(mut io) = track(stream, Some(peer), &self.connections) else {
                continue;
            };
            self.state
                .live
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            io.rescued = Some(Arc::clone(&self.state));
            return Ok((
                io,
                self.local.clone(),
                RemoteAddr(peer.into()),
                Scheme::HTTP,
            ));
        }
    }
}
