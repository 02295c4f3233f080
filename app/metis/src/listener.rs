//! The listening socket and the acceptor stack in front of the HTTP server:
//! TCP (optionally `SO_REUSEPORT`) → TLS (optional, rustls) → connection cap.
//!
//! - `--reuse-port` lets a new process bind the same port while the old one drains, which is
//!   how a rolling hand-over on one host loses no request.
//! - TLS files are validated at start (PEM parse, and the key must match the certificate) so
//!   a bad file fails the boot with an error naming it, not the first handshake.
//! - Connections beyond `--max-connections` get an immediate `503` JSON body and are closed;
//!   nothing queues unboundedly (rejections themselves are capped and short-lived).
//! - Closing a listening socket makes the kernel reset every connection still waiting in its
//!   accept queue. Under steady traffic (and always during a `--reuse-port` hand-over, where
//!   the kernel keeps routing new connections to the old process until its socket closes)
//!   some are always waiting. So when the acceptor is dropped at shutdown, it first takes
//!   every queued connection and hands it to a rescue server (see [`Stacks`]) that serves
//!   it like any other; only connections completing their handshake in the few microseconds
//!   between that last `accept` and `close` can still be reset (Linux's
//!   `net.ipv4.tcp_migrate_req=1` closes that window too).

mod accept;
mod cap;
mod observer;
mod rescue;
#[cfg(test)]
mod tests;
mod tls;
mod tracked;

pub use accept::Tracked;
pub use cap::{ConnLimit, MAX_REJECTING, PermitIo, Timeouts};
pub use observer::Observer;
pub use rescue::{Rescue, RescueSender, RescueState};
pub use tls::{TlsAcceptor, TlsIo, load_tls, tls_paths};
pub use tracked::{Connections, TrackedIo};

use accept::open_spare;
use anyhow::Context;
#[cfg(not(unix))]
use anyhow::bail;
use poem::listener::{Acceptor, AcceptorExt};
use poem::web::LocalAddr;
use std::io::Result as IoResult;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bind `host:port` with `SO_REUSEADDR` (and `SO_REUSEPORT` when asked) and a deep backlog.
///
/// # Errors
/// Unresolvable host, bind or listen failure (the message names the address).
pub fn bind(host: &str, port: u16, reuse_port: bool) -> anyhow::Result<tokio::net::TcpListener> {
    let bare = host.trim_matches(['[', ']']);
    let text = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&text)
        .with_context(|| format!("cannot resolve {text}"))?
        .next()
        .with_context(|| format!("{text} resolves to no address"))?;
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .context("cannot create a socket")?;
    socket
        .set_reuse_address(true)
        .context("cannot set SO_REUSEADDR")?;
    if reuse_port {
        #[cfg(unix)]
        socket
            .set_reuse_port(true)
            .context("cannot set SO_REUSEPORT (needed by --reuse-port)")?;
        #[cfg(not(unix))]
        bail!("--reuse-port needs SO_REUSEPORT, which this platform lacks");
    }
    socket
        .set_tcp_nodelay(true)
        .context("cannot set TCP_NODELAY")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    socket
        .listen(2048)
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    let std_listener: std::net::TcpListener = socket.into();
    tokio::net::TcpListener::from_std(std_listener).context("cannot register the listener")
}
/// The acceptor stacks of one listening socket: the main one, and the rescue one that serves
/// what was still queued when the main one closed.
pub struct Stacks {
    pub main: poem::listener::BoxAcceptor,
    pub rescue: poem::listener::BoxAcceptor,
    /// The rescue server's shutdown signal is [`RescueState::finished`].
    pub rescue_state: Arc<RescueState>,
}

/// The connection cap in force and how many over-cap rejections may run at once (see
/// [`crate::fdlimit`] for how both follow from the descriptor limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_connections: usize,
    pub rejecting: usize,
}

/// Wrap the listening socket with optional TLS and the connection cap (boxed so the server
/// type does not depend on the choice), plus the rescue stack; both share the TLS settings.
///
/// # Errors
/// When the socket's local address cannot be read.
pub fn stack(
    listener: tokio::net::TcpListener,
    connections: &Arc<Connections>,
    tls: Option<Arc<rustls::ServerConfig>>,
    caps: Caps,
    timeouts: Timeouts,
    observer: &Arc<Observer>,
) -> IoResult<Stacks> {
    let local = LocalAddr(listener.local_addr()?.into());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tcp = Tracked {
        listener: Some(listener),
        local: local.clone(),
        connections: Arc::clone(connections),
        started: false,
        rescue: Some(tx),
        observer: Arc::clone(observer),
        spare: open_spare(),
    };
    let rescue_state = Arc::new(RescueState::default());
    let rescue = Rescue {
        rx,
        local,
        connections: Arc::clone(connections),
        state: Arc::clone(&rescue_state),
    };
    fn wrap<A: Acceptor + 'static>(
        a: A,
        tls: Option<Arc<rustls::ServerConfig>>,
        caps: Caps,
        timeouts: Timeouts,
        obs: Arc<Observer>,
    ) -> poem::listener::BoxAcceptor {
        let (max, rejecting) = (caps.max_connections, caps.rejecting);
        match tls {
            Some(cfg) => {
                let tls = TlsAcceptor::new(a, cfg);
                ConnLimit::new(tls, max, rejecting, timeouts, obs).boxed()
            }
            None => ConnLimit::new(a, max, rejecting, timeouts, obs).boxed(),
        }
    }
    Ok(Stacks {
        main: wrap(tcp, tls.clone(), caps, timeouts, Arc::clone(observer)),
        rescue: wrap(rescue, tls, caps, timeouts, Arc::clone(observer)),
        rescue_state,
    })
}
