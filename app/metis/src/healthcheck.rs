//! `metis healthcheck [--url URL] [--timeout D]`: exit 0 iff `GET URL` answers HTTP 200
//! within the timeout. It exists for container `HEALTHCHECK`s in images that carry no shell
//! and no curl (the distroless runtime image of `infra/gateway/Dockerfile`).
//!
//! The probe is one blocking HTTP/1.1 request over a plain `std::net::TcpStream` (no runtime,
//! no HTTP client crate). `https://` URLs are spoken through rustls with the same aws-lc-rs
//! provider the server uses, **without certificate verification**: the probe targets the
//! local process (usually `127.0.0.1`, which no certificate names), sends no credential and
//! reads nothing but the status line, so an unverified peer can at worst make it report a
//! wrong health state. Handshake signatures are still checked.

use anyhow::{Context, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest status line accepted (the probe never reads past it).
const MAX_HEAD: usize = 8 * 1024;

/// A parsed probe URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// Host as written, without IPv6 brackets.
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl Target {
    /// `Host:` header value (brackets restored for IPv6 literals).
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parse `http(s)://host[:port][/path]`.
fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "unsupported URL {url:?}: expected http://HOST[:PORT]/PATH or https://…"
        ));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(format!("URL {url:?} must not carry credentials"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("URL {url:?}: unclosed '[' in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("URL {url:?}: bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("URL {url:?}: unexpected {after:?} after the host")),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse()
                    .map_err(|_| format!("URL {url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

/// Time left before `deadline`, never zero (a zero socket timeout means "block forever").
fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("timed out");
    }
    Ok(left)
}

fn connect(target: &Target, deadline: Instant) -> anyhow::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", target.host))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(anyhow!("cannot connect to {addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{} resolves to no address", target.host)))
}

/// Send the request on `stream` and read the status code of the answer.
fn exchange<S: Read + Write>(
    stream: &mut S,
    target: &Target,
    set_timeout: &dyn Fn(&mut S, Duration) -> std::io::Result<()>,
    deadline: Instant,
) -> anyhow::Result<u16> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: metis-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority()
    );
    set_timeout(stream, remaining(deadline)?)?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .context("cannot send the request")?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0_u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() > MAX_HEAD {
            bail!("the status line is longer than {MAX_HEAD} bytes");
        }
        set_timeout(stream, remaining(deadline)?)?;
        let n = stream.read(&mut buf).context("cannot read the answer")?;
        if n == 0 {
            bail!("the connection closed before a status line arrived");
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head)
}

/// `HTTP/1.x NNN …` → NNN.
fn parse_status(head: &[u8]) -> anyhow::Result<u16> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse::<u16>()
            .map_err(|_| anyhow!("malformed status line {line:?}")),
        _ => bail!("not an HTTP answer: {line:?}"),
    }
}

/// Accepts any certificate; still verifies handshake signatures with the provider's
/// algorithms (see the module docs for why a liveness probe may skip the chain check).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn probe(target: &Target, deadline: Instant) -> anyhow::Result<u16> {
    let tcp = connect(target, deadline)?;
    if !target.tls {
        let mut tcp = tcp;
        return exchange(
            &mut tcp,
            target,
            &|s: &mut TcpStream, d| {
                s.set_read_timeout(Some(d))?;
                s.set_write_timeout(Some(d))
            },
            deadline,
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| anyhow!("bad TLS server name {:?}: {e}", target.host))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .context("cannot start the TLS session")?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    exchange(
        &mut tls,
        target,
        &|s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, d| {
            s.sock.set_read_timeout(Some(d))?;
            s.sock.set_write_timeout(Some(d))
        },
        deadline,
    )
}

/// Probe `url`; `Ok` iff it answered 200 within `timeout`.
///
/// # Errors
/// A one-line reason: bad URL, resolve/connect/TLS/read failure, timeout, or the status that
/// was answered instead of 200.
pub fn run(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = parse_url(url).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + timeout;
    let status = probe(&target, deadline).with_context(|| format!("healthcheck {url}"))?;
    if status != 200 {
        bail!("healthcheck {url}: answered {status}, expected 200");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ok: {url} answered 200")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn t(tls: bool, host: &str, port: u16, path: &str) -> Target {
        Target {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("http://127.0.0.1:8422/healthz"),
            Ok(t(false, "127.0.0.1", 8422, "/healthz"))
        );
        assert_eq!(
            parse_url("https://gw.example:9443/readyz?x=1"),
            Ok(t(true, "gw.example", 9443, "/readyz?x=1"))
        );
        assert_eq!(parse_url("http://h"), Ok(t(false, "h", 80, "/")));
        assert_eq!(parse_url("https://h?q"), Ok(t(true, "h", 443, "/?q")));
        assert_eq!(
            parse_url("http://[::1]:8422/healthz"),
            Ok(t(false, "::1", 8422, "/healthz"))
        );
        assert_eq!(parse_url("http://[::1]/"), Ok(t(false, "::1", 80, "/")));
        assert_eq!(
            t(false, "::1", 8422, "/").authority(),
            "[::1]:8422".to_owned()
        );
        for bad in [
            "ftp://h/",
            "127.0.0.1:8422/healthz",
            "http://:80/",
            "http://h:port/",
            "http://[::1/",
            "http://u:p@h/",
            "http://h:70000/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n").ok(), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n").ok(), Some(503));
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 abc\r\n").is_err());
    }

    /// A one-shot server answering `reply` (or staying silent when `None`).
    fn serve_once(reply: Option<&'static str>) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0_u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            match reply {
                Some(r) => s.write_all(r.as_bytes()).unwrap(),
                None => thread::sleep(Duration::from_millis(800)),
            }
            String::from_utf8_lossy(&req).into_owned()
        });
        (format!("http://{addr}/healthz"), handle)
    }

    #[test]
    fn a_200_passes_and_the_request_is_well_formed() {
        let (url, h) = serve_once(Some(
            "HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
        ));
        run(&url, Duration::from_secs(5)).unwrap();
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[test]
    fn a_503_fails_naming_the_status() {
        let (url, h) = serve_once(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        let e = run(&url, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(e.contains("answered 503"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out() {
        let (url, h) = serve_once(None);
        let started = Instant::now();
        let e = run(&url, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{e:#}");
        h.join().unwrap();
    }

    #[test]
    fn a_closed_port_fails() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/healthz");
        assert!(run(&url, Duration::from_secs(2)).is_err());
    }
}
