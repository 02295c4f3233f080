//! `Transport`: what every HTTP provider shares. One pooled `reqwest::Client`, the timeouts,
//! and the retry loop: send, await the head, read a non-streaming body, classify a failure and
//! retry it while nothing has reached the caller.
//!
//! A provider supplies the request of each attempt (URL, auth, body) through a closure, so
//! per-attempt credentials (a SigV4 signature over the attempt's time, a refreshed bearer
//! token) are computed fresh on every retry. It may then map the returned stream (Bedrock turns
//! its binary event stream into SSE frames).
//!
//! Per request, [`UpstreamRequest::max_retries`] replaces the policy's retry count and
//! [`UpstreamRequest::deadline`] bounds the head wait and forbids a retry that would start
//! after it.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use metis_ports::upstream::{UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ConfigError, RetryPolicy, Timeouts};
use crate::retry::{self, Decision, Failure};

/// Error bodies are read up to this many bytes (enough for any provider's JSON error).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest time spent reading an error body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// TCP keep-alive probes keep long, quiet streams alive through NATs and load balancers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The pooled client, timeouts and retry policy of one provider.
pub struct Transport {
    name: String,
    client: reqwest::Client,
    timeouts: Timeouts,
    retry: RetryPolicy,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("name", &self.name)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Build the client: `default_headers` go on every call (mark credentials sensitive).
    ///
    /// # Errors
    /// `ConfigError::Client` when the TLS client cannot be initialised.
    pub fn new(
        name: &str,
        timeouts: Timeouts,
        retry: RetryPolicy,
        default_headers: HeaderMap,
    ) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .default_headers(default_headers)
            .user_agent(concat!("metis-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Client {
                provider: name.to_owned(),
                reason: describe(&e),
            })?;
        Ok(Self {
            name: name.to_owned(),
            client,
            timeouts,
            retry,
        })
    }

    /// The provider name used in errors and logs.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pooled client (for side calls such as token exchanges).
    #[must_use]
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The timeouts, e.g. a stream's idle limit for a provider that re-frames its stream.
    #[must_use]
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A POST of `body` to `url` with what every call carries: `Accept` for the stream mode,
    /// the `traceparent`, and the forwarded client headers (they replace the provider's
    /// defaults of the same name). The caller adds its credentials.
    pub fn post(
        &self,
        url: reqwest::Url,
        request: &UpstreamRequest,
        body: Bytes,
    ) -> reqwest::RequestBuilder {
        let accept = if request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut builder = self.client.post(url).header(header::ACCEPT, accept);
        if let Some(tp) = &request.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        for (name, value) in &request.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                builder = builder.header(n, v);
            }
        }
        builder.body(body)
    }

    /// Send `request` with retries. `build` makes each attempt's request (called once per
    /// attempt); an `Err` from it (a credential that cannot be obtained) fails the attempt as
    /// a network failure carrying that message, retried like one.
    ///
    /// # Errors
    /// `Status` for non-2xx answers, `Network` for transport failures and timeouts, after the
    /// retries the policy (or the request) allows.
    pub async fn send<F>(
        &self,
        request: &UpstreamRequest,
        build: F,
    ) -> Result<UpstreamReply, UpstreamError>
    where
        F: Fn() -> Result<reqwest::RequestBuilder, String>,
    {
        let started = Instant::now();
        let mut retries = 0u32;
        let policy = RetryPolicy {
            max_retries: request.max_retries.unwrap_or(self.retry.max_retries),
            ..self.retry
        };
        loop {
            tracing::debug!(
                provider = %self.name,
                request_id = %request.request_id,
                stream = request.stream,
                retry = retries,
                "upstream call"
            );
            let attempt = match build() {
                Ok(builder) => self.bounded_attempt(builder, request, retries).await,
                Err(message) => Err(Failure::Network { message }),
            };
            let failure = match attempt {
                Ok(body) => {
                    tracing::debug!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        retries,
                        elapsed_ms = elapsed_ms(started),
                        "upstream call answered"
                    );
                    return Ok(UpstreamReply { body, retries });
                }
                Err(failure) => failure,
            };
            let (status, message) = match &failure {
                Failure::Status { status, .. } => (Some(*status), None),
                Failure::Network { message } => (None, Some(message.as_str())),
            };
            let decision = match retry::decide(&policy, &failure, retries) {
                Decision::RetryAfter(wait)
                    if request.deadline.is_some_and(|d| Instant::now() + wait >= d) =>
                {
                    Decision::GiveUp
                }
                d => d,
            };
            match decision {
                Decision::RetryAfter(wait) => {
                    retries += 1;
                    tracing::warn!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        status,
                        error = message,
                        retry = retries,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "upstream call failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Decision::GiveUp => {
                    tracing::warn!(
                        provider = %self.name,
                        request_id = %request.request_id,
                        status,
                        error = message,
                        retries,
                        elapsed_ms = elapsed_ms(started),
                        "upstream call failed"
                    );
                    return Err(self.make_error(failure, retries));
                }
            }
        }
    }

    /// How long to wait for a head: the head timeout, or less when the request's deadline
    /// comes first.
    fn head_wait(&self, request: &UpstreamRequest) -> Duration {
        let own = self.timeouts.response_head;
        match request.deadline {
            Some(d) => own.min(d.saturating_duration_since(Instant::now())),
            None => own,
        }
    }

    /// One attempt: send, await the head, and for non-streaming calls read the whole body.
    async fn attempt(
        &self,
        builder: reqwest::RequestBuilder,
        request: &UpstreamRequest,
        retries: u32,
    ) -> Result<UpstreamBody, Failure> {
        let wait = self.head_wait(request);
        let response = match tokio::time::timeout(wait, builder.send()).await {
            Err(_) => {
                return Err(Failure::Network {
                    message: format!("no response head within {}", human(wait)),
                });
            }
            Ok(Err(e)) => {
                return Err(Failure::Network {
                    message: describe(&e),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        tracing::debug!(
            provider = %self.name,
            request_id = %request.request_id,
            status = status.as_u16(),
            retry = retries,
            "upstream response head"
        );
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let body = read_error_body(response, self.timeouts.stream_idle).await;
            return Err(Failure::Status {
                status: status.as_u16(),
                body,
                retry_after,
            });
        }
        if request.stream {
            return Ok(UpstreamBody::Stream(idle_guarded(
                response,
                self.timeouts.stream_idle,
                self.name.clone(),
                retries,
            )));
        }
        match response.bytes().await {
            Ok(body) => Ok(UpstreamBody::Full(body)),
            Err(e) => Err(Failure::Network {
                message: format!("reading response body: {}", describe(&e)),
            }),
        }
    }

    /// One attempt bounded by the right deadline: the head timeout alone for streams (inside
    /// `attempt`), head plus body under the total timeout for non-streaming calls.
    async fn bounded_attempt(
        &self,
        builder: reqwest::RequestBuilder,
        request: &UpstreamRequest,
        retries: u32,
    ) -> Result<UpstreamBody, Failure> {
        if request.stream {
            return self.attempt(builder, request, retries).await;
        }
        let total = self.timeouts.total;
        match tokio::time::timeout(total, self.attempt(builder, request, retries)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Network {
                message: format!("no complete response within {}", human(total)),
            }),
        }
    }

    fn make_error(&self, failure: Failure, retries: u32) -> UpstreamError {
        match failure {
            Failure::Status {
                status,
                body,
                retry_after,
            } => UpstreamError::Status {
                provider: self.name.clone(),
                status,
                body,
                retry_after_secs: retry_after.map(retry::retry_after_secs),
                retries,
            },
            Failure::Network { message } => UpstreamError::Network {
                provider: self.name.clone(),
                message,
                retries,
            },
        }
    }
}

/// A header value holding a credential, marked sensitive so it never appears in debug
/// output; `None` when the value cannot be a header (control characters).
#[must_use]
pub fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Read an error body up to `ERROR_BODY_LIMIT` bytes, for at most `min(idle, 30 s)`. A body
/// that breaks or stalls is cut where it stopped: the status is what matters.
async fn read_error_body(mut response: reqwest::Response, idle: Duration) -> Bytes {
    let deadline = tokio::time::Instant::now() + idle.min(ERROR_BODY_TIMEOUT);
    let mut buf = BytesMut::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let room = ERROR_BODY_LIMIT - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        }
    }
    buf.freeze()
}

/// Turn a streaming response into the port's stream, ending it with a `Network` item when
/// the body breaks or stays silent for longer than `idle`. The response lives only inside
/// the stream state, so dropping the stream closes the connection.
fn idle_guarded(
    response: reqwest::Response,
    idle: Duration,
    provider: String,
    retries: u32,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    stream::unfold(Some(response), move |state| {
        let provider = provider.clone();
        async move {
            let mut response = state?;
            let error = match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => return Some((Ok(chunk), Some(response))),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => format!("stream broke: {}", describe(&e)),
                Err(_) => format!("stream idle for more than {}", human(idle)),
            };
            // Drop the connection now rather than when the caller drops the stream.
            drop(response);
            tracing::warn!(provider = %provider, error = %error, "upstream stream ended early");
            Some((
                Err(UpstreamError::Network {
                    provider,
                    message: error,
                    retries,
                }),
                None,
            ))
        }
    })
    .boxed()
}

/// A reqwest error and its causes, without the URL (it could carry userinfo).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut message = if e.is_connect() {
        "connect failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_body() || e.is_decode() {
        "body error".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
