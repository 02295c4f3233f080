//! TLS termination: the certificate and key checked at start, and an acceptor whose
//! handshake runs lazily inside each connection's own task.

use anyhow::{Context, bail};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::io::Result as IoResult;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// inside the connection's own task; so the header timeout of [`PermitIo`](super::PermitIo)
/// also bounds it.
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
