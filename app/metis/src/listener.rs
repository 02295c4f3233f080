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

use crate::rejection;
use anyhow::{Context, bail};
use gw_ports::metrics::Metrics;
use gw_ports::queue::LogLimiter;
use poem::http::uri::Scheme;
use poem::listener::{Acceptor, AcceptorExt};
use poem::web::{LocalAddr, RemoteAddr};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::io::Result as IoResult;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Read and check a certificate chain and private key and build the TLS server settings.
///
/// The gateway terminates TLS itself (rustls via `tokio-rustls`, see [`TlsAcceptor`]) rather
/// than through poem's `rustls` feature: that feature re-parses the PEM files with
/// `rustls-pemfile`, which is archived and flagged unmaintained (RUSTSEC-2025-0134). PEM is
/// parsed here, once, with `rustls-pki-types`' `PemObject`.
///
/// # Errors
/// Missing or unreadable file, no certificate / key in it, or a key that does not belong to
/// the certificate — each message names the file.
pub fn load_tls(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!("--tls-cert {} contains no certificate", cert.display());
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {} holds no usable private key: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol setup failed")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            anyhow::anyhow!(
                "--tls-key {} does not match --tls-cert {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    // The server speaks both (hyper's auto builder); clients pick HTTP/2 through ALPN.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Wraps an acceptor with TLS. The handshake is not done in `accept` (one slow or silent
/// client would stall the accept loop) but lazily, on the connection's first read or write,
/// inside the connection's own task; so the header timeout of [`PermitIo`] also bounds it.
pub struct TlsAcceptor<A> {
    inner: A,
    tls: tokio_rustls::TlsAcceptor,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Arc<rustls::ServerConfig>) -> Self {
        TlsAcceptor {
            inner,
            tls: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl<A: Acceptor> Acceptor for TlsAcceptor<A> {
    type Io = TlsIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        let io = TlsIo::Handshaking(Box::new(self.tls.accept(io)));
        Ok((io, local, remote, Scheme::HTTPS))
    }
}

/// A server-side TLS connection whose handshake completes on first use.
/// Both states are boxed: each is over a kilobyte, and the value moves through the acceptor
/// stack on every accept.
pub enum TlsIo<T> {
    Handshaking(Box<tokio_rustls::Accept<T>>),
    Ready(Box<tokio_rustls::server::TlsStream<T>>),
    /// The handshake failed; the error was returned once, every later call fails.
    Failed,
}

impl<T: AsyncRead + AsyncWrite + Unpin> TlsIo<T> {
    /// Drive the handshake; `Ready(Ok)` once the stream is usable.
    fn poll_handshake(&mut self, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        match self {
            TlsIo::Handshaking(accept) => match Pin::new(&mut **accept).poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    *self = TlsIo::Ready(Box::new(stream));
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => {
                    *self = TlsIo::Failed;
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
            TlsIo::Ready(_) => Poll::Ready(Ok(())),
            TlsIo::Failed => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "TLS handshake failed",
            ))),
        }
    }

    /// The established stream (call after `poll_handshake` returned `Ready(Ok)`).
    fn stream(&mut self) -> IoResult<Pin<&mut tokio_rustls::server::TlsStream<T>>> {
        match self {
            TlsIo::Ready(s) => Ok(Pin::new(&mut **s)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "TLS handshake not complete",
            )),
        }
    }
}

/// Runs `$op` on the established stream once the handshake is done.
macro_rules! after_handshake {
    ($self:ident, $cx:ident, |$s:ident| $op:expr) => {{
        let this = &mut *$self;
        match this.poll_handshake($cx) {
            Poll::Ready(Ok(())) => match this.stream() {
                Ok($s) => $op,
                Err(e) => Poll::Ready(Err(e)),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }};
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<IoResult<()>> {
        after_handshake!(self, cx, |s| s.poll_read(cx, buf))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<IoResult<usize>> {
        after_handshake!(self, cx, |s| s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        after_handshake!(self, cx, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<IoResult<()>> {
        match &mut *self {
            // Nothing was established: there is no TLS session to close.
            TlsIo::Handshaking(_) | TlsIo::Failed => Poll::Ready(Ok(())),
            TlsIo::Ready(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<IoResult<usize>> {
        after_handshake!(self, cx, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TlsIo::Ready(s) => s.is_write_vectored(),
            _ => false,
        }
    }
}

/// TLS settings from the command line: both paths or neither.
///
/// # Errors
/// Exactly one of the two given.
pub fn tls_paths(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => bail!("--tls-cert and --tls-key must be set together (got one without the other)"),
    }
}

/// What the listener counts and logs, shared by every connection of both stacks.
pub struct Observer {
    metrics: Arc<dyn Metrics>,
    /// Over-cap and out-of-descriptor refusals are logged at most once per interval (with
    /// the count since), so a connection flood cannot flood the log too.
    refused_log: LogLimiter,
    refused_since_log: std::sync::atomic::AtomicU64,
    accept_log: LogLimiter,
    accept_errors_since_log: std::sync::atomic::AtomicU64,
}

impl Observer {
    #[must_use]
    pub fn new(metrics: Arc<dyn Metrics>) -> Arc<Self> {
        Arc::new(Observer {
            metrics,
            refused_log: LogLimiter::new(Duration::from_secs(10)),
            refused_since_log: std::sync::atomic::AtomicU64::new(0),
            accept_log: LogLimiter::new(Duration::from_secs(10)),
            accept_errors_since_log: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A connection refused with 503 before any request was read.
    fn refused(&self, reason: &'static str, peer: &RemoteAddr, limit: usize) {
        use std::sync::atomic::Ordering;
        self.metrics.refused(reason);
        let n = self.refused_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refused_log.allow() {
            self.refused_since_log.store(0, Ordering::Relaxed);
            if reason == "fd_limit" {
                tracing::warn!(peer = %peer, refused = n, "out of file descriptors; answering 503 from the spare descriptor (see metis_accept_errors_total)");
            } else {
                tracing::warn!(peer = %peer, refused = n, max_connections = limit, "connection limit reached; answering 503 (refused counts those since the last such line)");
            }
        }
    }

    /// `accept` failed.
    fn accept_failed(&self, e: &std::io::Error) {
        use std::sync::atomic::Ordering;
        let kind = if is_fd_limit(e) { "fd_limit" } else { "other" };
        self.metrics.accept_error(kind);
        let n = self.accept_errors_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        if self.accept_log.allow() {
            self.accept_errors_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, kind, failures = n, "cannot accept a connection (failures since the last such line: {n})");
        }
    }
}

/// An error about one connection (reset or aborted before it was accepted), not about the
/// listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// EMFILE (this process) or ENFILE (the whole system) is out of file descriptors.
fn is_fd_limit(e: &std::io::Error) -> bool {
    // 24 = EMFILE, 23 = ENFILE on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The body sent to connections over the cap.
const OVER_CAPACITY: &[u8] = b"{\"error\":{\"message\":\"the gateway is at its connection limit; retry shortly\",\"type\":\"api_error\",\"code\":\"too_many_connections\"}}";

fn over_capacity_response() -> Vec<u8> {
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
    fn new(
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

/// Connections taken from the accept queue when the listener closed, to be served by the
/// rescue server.
pub type RescueSender = tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>;

/// A TCP acceptor that records each connection in [`Connections`] until it closes.
///
/// Accept failures never reach poem (which would retry at once, spinning a core while the
/// process is out of descriptors): they are counted (`metis_accept_errors_total`), logged at
/// most once per 10 s, and retried after a short pause. While out of descriptors, one spare
/// descriptor held for the purpose is given up to accept a waiting client and answer it 503,
/// so clients get an answer instead of hanging in the accept queue.
pub struct Tracked {
    /// `Some` until dropped (the drop takes it to drain the accept queue).
    listener: Option<tokio::net::TcpListener>,
    local: LocalAddr,
    connections: Arc<Connections>,
    /// Whether `accept` has been called before (see the yield in `accept`).
    started: bool,
    rescue: Option<RescueSender>,
    observer: Arc<Observer>,
    /// A descriptor kept open to be closed when the process is out of them (see above).
    spare: Option<std::fs::File>,
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

fn open_spare() -> Option<std::fs::File> {
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

/// Register `io` in `connections` (for the disconnect watch) and wrap it.
fn track(
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

/// Progress of the rescue hand-off.
#[derive(Debug, Default)]
pub struct RescueState {
    /// Notified when the main listener has closed and every queued connection was handed
    /// over.
    handed_over: tokio::sync::Notify,
    /// Rescued connections still open.
    live: std::sync::atomic::AtomicUsize,
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

/// The rescue server's acceptor: yields the connections [`Tracked`] took from the accept
/// queue when it closed, then records that the hand-off is over.
pub struct Rescue {
    rx: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    local: LocalAddr,
    connections: Arc<Connections>,
    state: Arc<RescueState>,
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

/// A tracked connection; leaving the registry when dropped. Reads and writes go through a
/// shared handle of the socket (see [`Connections`]).
pub struct TrackedIo {
    io: Arc<tokio::net::TcpStream>,
    peer: Option<SocketAddr>,
    connections: Arc<Connections>,
    /// Set on connections served by the rescue server (counted until they close).
    rescued: Option<Arc<RescueState>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Arc<Observer> {
        Observer::new(Arc::new(gw_telemetry::Prometheus::default()))
    }

    fn guarded(
        io: tokio::io::DuplexStream,
        header_ms: u64,
        idle_ms: u64,
    ) -> PermitIo<tokio::io::DuplexStream> {
        let sem = Arc::new(Semaphore::new(1));
        let permit = sem.try_acquire_owned().unwrap();
        PermitIo::new(
            io,
            permit,
            Timeouts {
                header: Duration::from_millis(header_ms),
                idle: Duration::from_millis(idle_ms),
            },
            observer(),
        )
    }

    #[tokio::test]
    async fn an_incomplete_head_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = guarded(server, 100, 100);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = g.read(&mut buf).await.unwrap();
        assert!(n > 0);
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_upstream_is_not_cut_but_an_idle_keepalive_is() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = guarded(server, 100, 100);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        // Handling takes longer than both timeouts: no timer runs while nothing is written.
        tokio::time::sleep(Duration::from_millis(250)).await;
        g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    /// hyper's empty answer to a head it cannot parse leaves the connection as JSON, even when
    /// the socket takes it a few bytes at a time.
    #[tokio::test]
    async fn hyper_rejections_leave_as_json_envelopes() {
        let (client, server) = tokio::io::duplex(16);
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let mut g = guarded(server, 5000, 5000);
        let head: &[u8] = b"POST /v1/messages HTTP/1.1\r\nX: \x01\r\n\r\n";
        let sender = tokio::spawn(async move { client_tx.write_all(head).await.unwrap() });
        let mut buf = [0u8; 64];
        let mut seen = 0;
        while seen < head.len() {
            seen += g.read(&mut buf).await.unwrap();
        }
        sender.await.unwrap();
        let hyper_answer: &[u8] =
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let writer = tokio::spawn(async move {
            let n = g.write(hyper_answer).await.unwrap();
            assert_eq!(n, hyper_answer.len(), "reported as written whole");
            g.shutdown().await.unwrap();
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client_rx.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        let text = String::from_utf8(answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "error", "Anthropic shape for /v1/messages: {v}");
    }

    #[test]
    fn accept_errors_are_classified() {
        assert!(is_fd_limit(&std::io::Error::from_raw_os_error(24)));
        assert!(is_fd_limit(&std::io::Error::from_raw_os_error(23)));
        assert!(!is_fd_limit(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
        assert!(is_connection_error(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
        assert!(!is_connection_error(&std::io::Error::from_raw_os_error(24)));
    }

    #[tokio::test]
    async fn http2_connections_are_exempt() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = guarded(server, 50, 50);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        let r = tokio::time::timeout(Duration::from_millis(200), g.read(&mut buf)).await;
        assert!(r.is_err(), "no guard timeout on h2");
    }

    /// A connection still in the accept queue when the main acceptor is dropped (what poem
    /// does at shutdown) is served by the rescue server instead of being reset, and the rescue
    /// server then stops by itself.
    #[tokio::test]
    async fn queued_connections_are_rescued_when_the_listener_closes() {
        let listener = bind("127.0.0.1", 0, true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Connections::default());
        let timeouts = Timeouts {
            header: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        };
        let caps = Caps {
            max_connections: 16,
            rejecting: 4,
        };
        let stacks = stack(listener, &connections, None, caps, timeouts, &observer()).unwrap();

        // The kernel completes these handshakes; nobody has called accept yet.
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            clients.push(c);
        }
        drop(stacks.main);

        let ep = poem::Route::new().at("/ping", poem::get(poem::endpoint::make_sync(|_| "pong")));
        let state = Arc::clone(&stacks.rescue_state);
        let server = tokio::spawn(
            poem::Server::new_with_acceptor(stacks.rescue).run_with_graceful_shutdown(
                ep,
                async move { state.finished(Duration::from_secs(5)).await },
                Some(Duration::ZERO),
            ),
        );
        for mut c in clients {
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut answer))
                .await
                .unwrap()
                .unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("pong"), "{answer}");
        }
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the rescue server stops once the hand-off is over")
            .unwrap()
            .unwrap();
        // The port is closed now: nothing is left listening to reset later arrivals.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
