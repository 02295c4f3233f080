//! A local webhook receiver for budget-alert tests (`127.0.0.1:0`): answers each attempt per a
//! script (fail with a status, with or without `Retry-After`; hang past the sender's timeout;
//! then accept), records every attempt with its arrival time and headers, and verifies the
//! `X-Metis-Signature` with its own HMAC-SHA256 (aws-lc-rs, not the gateway's
//! implementation) against the secret it was given, so a gateway signing with another secret
//! is detected.

use aws_lc_rs::hmac;
use poem::listener::TcpAcceptor;
use poem::{Endpoint, Request, Response, Server};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How one attempt is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Sleep this long before answering 200 (the sender times out first).
    Hang(Duration),
}

/// One attempt as received.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    pub path: String,
    pub delivery: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// The signature is a valid HMAC-SHA256 of `"<timestamp>.<body>"` under the receiver's
    /// secret.
    pub verified: bool,
    /// What the receiver answered (`None` for a hang).
    pub answered: Option<u16>,
}

impl Attempt {
    /// The body as JSON (`Null` if it is not).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct State {
    secret: Vec<u8>,
    /// Answers for the next attempts, in order; 204 once empty.
    script: Mutex<VecDeque<Answer>>,
    attempts: Mutex<Vec<Attempt>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The receiver's verification, as a receiver would write it.
#[must_use]
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(given) = decode_hex(hex_sig) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    hmac::verify(&key, &signed, &given).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

struct Hook {
    state: Arc<State>,
}

impl Endpoint for Hook {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (delivery, timestamp, signature, content_type) = (
            header("x-metis-delivery"),
            header("x-metis-timestamp"),
            header("x-metis-signature"),
            header("content-type"),
        );
        let path = req.uri().path().to_owned();
        let body = req.take_body().into_vec().await.unwrap_or_default();
        let verified = match (&timestamp, &signature) {
            (Some(t), Some(s)) => verify(&self.state.secret, t, &body, s),
            _ => false,
        };
        let answer = lock(&self.state.script)
            .pop_front()
            .unwrap_or(Answer::Status(204));
        let answered = match &answer {
            Answer::Status(s) | Answer::RetryAfter(s, _) => Some(*s),
            Answer::Hang(_) => None,
        };
        lock(&self.state.attempts).push(Attempt {
            at: Instant::now(),
            path,
            delivery,
            timestamp,
            signature,
            content_type,
            body,
            verified,
            answered,
        });
        let status =
            |s: u16| poem::http::StatusCode::from_u16(s).unwrap_or(poem::http::StatusCode::OK);
        Ok(match answer {
            Answer::Status(s) => Response::builder().status(status(s)).finish(),
            Answer::RetryAfter(s, secs) => Response::builder()
                .status(status(s))
                .header("retry-after", secs.to_string())
                .finish(),
            Answer::Hang(d) => {
                tokio::time::sleep(d).await;
                Response::builder().status(status(200)).finish()
            }
        })
    }
}

/// The running receiver; stops when dropped.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Start on `127.0.0.1:0`, verifying signatures with `secret`, answering per `script`
    /// (then 204).
    ///
    /// # Errors
    /// When the listener cannot be bound.
    pub async fn start(secret: &str, script: Vec<Answer>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let state = Arc::new(State {
            secret: secret.as_bytes().to_vec(),
            script: Mutex::new(script.into()),
            attempts: Mutex::new(Vec::new()),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let hook = Hook {
            state: Arc::clone(&state),
        };
        let task = tokio::spawn(serve(acceptor, hook, rx));
        Ok(WebhookReceiver {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// The URL to configure (`--alert-webhook`).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every attempt received so far.
    #[must_use]
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.state.attempts).clone()
    }

    /// Wait (bounded) until `n` attempts arrived; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Attempt> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.attempts();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn serve(acceptor: TcpAcceptor, hook: Hook, rx: oneshot::Receiver<()>) {
    let signal = async {
        let _ = rx.await;
    };
    let _ = Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(hook, signal, Some(Duration::from_millis(200)))
        .await;
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_verification_matches_an_independent_hmac() {
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac s3cret`
        let sig = "sha256=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf";
        assert!(verify(b"s3cret", "1700000000", b"{}", sig));
        assert!(!verify(b"other", "1700000000", b"{}", sig));
        assert!(!verify(b"s3cret", "1700000001", b"{}", sig));
    }
}
