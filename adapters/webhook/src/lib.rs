//! `metis-webhook`: budget alerts posted to webhooks (README "Budget alerts").
//!
//! Each configured URL gets its own bounded queue and one delivery task, so a receiver that
//! hangs or fails delays only its own alerts. [`Webhooks::notify`] only enqueues (it is called
//! on the request path): when a queue is full the oldest pending alert is dropped, counted and
//! reported, and the new one is kept.
//!
//! A delivery POSTs the notice JSON with `X-Metis-Delivery`, `X-Metis-Timestamp` and
//! `X-Metis-Signature` (see [`policy`]), with a per-attempt timeout, retrying connect errors,
//! timeouts, 408, 429 and 5xx with exponential back-off and jitter (honouring `Retry-After`)
//! up to the attempt limit. Every alert ends in one reported outcome per endpoint.
//!
//! Secrets: the signing secret is never logged or reported; endpoints are reported by a label
//! of their scheme, host and port only (`#1 https://hooks.example.com`), because webhook URLs
//! often carry credentials in the user-info, path (Slack-style tokens) or query.

pub mod policy;

use async_trait::async_trait;
use bytes::Bytes;
use metis_domain::alerts::{AlertNotice, undelivered};
use metis_ports::alerts::{AlertNotifier, DeliveryReport, Outcome};
use policy::{Backoff, Verdict, verdict};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Alerts waiting per endpoint before the oldest is dropped. Alerts are rare (each level once
/// per window and scope), so a full queue means a receiver down for a long time.
pub const QUEUE_CAPACITY: usize = 1000;

/// The shortest signing secret accepted (bytes).
pub const MIN_SECRET_LEN: usize = 16;

/// Settings of [`Webhooks::start`].
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    pub secret: String,
    /// Per attempt: connect, send and the answer's head.
    pub timeout: Duration,
    /// Attempts per alert and endpoint, the first included (at least 1).
    pub max_attempts: u32,
    /// Accept `http://` URLs on non-loopback hosts.
    pub allow_http: bool,
    pub queue_capacity: usize,
    pub backoff: Backoff,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--alert-webhook {label}: {reason}")]
    Url { label: String, reason: String },
    #[error(
        "--alert-webhook-secret (or METIS_GATEWAY_ALERT_WEBHOOK_SECRET) is required with --alert-webhook and must be at least {MIN_SECRET_LEN} bytes (got {0})"
    )]
    Secret(usize),
    #[error("--alert-webhook-max-attempts must be at least 1")]
    Attempts,
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// One validated endpoint.
#[derive(Debug, Clone)]
struct Endpoint {
    url: reqwest::Url,
    /// `#<n> scheme://host[:port]`: what logs and events name it by.
    label: String,
}

/// The label of the `index`-th (1-based) URL: scheme, host and port only.
#[must_use]
pub fn label_of(index: usize, url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("#{index} {}://{host}:{p}", url.scheme()),
        None => format!("#{index} {}://{host}", url.scheme()),
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn endpoints(urls: &[String], allow_http: bool) -> Result<Vec<Endpoint>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in urls.iter().enumerate() {
        let index = i + 1;
        let bad = |reason: String| ConfigError::Url {
            // Never echo the URL itself: it may hold credentials.
            label: format!("#{index}"),
            reason,
        };
        let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(format!("not a URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http || is_loopback_host(&url) => {}
            "http" => {
                return Err(bad(
                    "http:// is accepted only on a loopback host (the alert would cross the network unencrypted); use https:// or --alert-webhook-allow-http".to_owned(),
                ));
            }
            other => return Err(bad(format!("scheme must be https or http, got '{other}'"))),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host".to_owned()));
        }
        out.push(Endpoint {
            label: label_of(index, &url),
            url,
        });
    }
    Ok(out)
}

/// A notice serialised once, shared by every endpoint's queue.
#[derive(Clone)]
struct Job {
    notice: Arc<AlertNotice>,
    body: Bytes,
}

/// A delivery in progress (reported as dropped if shutdown cuts it).
struct Current {
    job: Job,
    attempts: u32,
    last_error: Option<String>,
}

struct Lane {
    endpoint: Endpoint,
    queue: Mutex<VecDeque<Job>>,
    current: Mutex<Option<Current>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

struct Shared {
    lanes: Vec<Lane>,
    client: reqwest::Client,
    secret: Vec<u8>,
    timeout: Duration,
    max_attempts: u32,
    capacity: usize,
    backoff: Backoff,
    report: Arc<dyn DeliveryReport>,
    /// Shutdown began: lanes finish their queues, then stop.
    closing: AtomicBool,
    /// Shutdown finished: new alerts are reported as dropped at once.
    stopped: AtomicBool,
}

/// The webhook channel (an [`AlertNotifier`]).
pub struct Webhooks {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self
            .shared
            .lanes
            .iter()
            .map(|l| l.endpoint.label.as_str())
            .collect();
        f.debug_struct("Webhooks")
            .field("endpoints", &labels)
            .finish()
    }
}

impl Webhooks {
    /// Validate `config` and start one delivery task per URL (needs a Tokio runtime).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the flag at fault (never the URL or the secret).
    pub fn start(
        config: WebhookConfig,
        report: Arc<dyn DeliveryReport>,
    ) -> Result<Webhooks, ConfigError> {
        let endpoints = endpoints(&config.urls, config.allow_http)?;
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::Secret(config.secret.len()));
        }
        if config.max_attempts == 0 {
            return Err(ConfigError::Attempts);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("metis-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Client(e.without_url().to_string()))?;
        let shared = Arc::new(Shared {
            lanes: endpoints
                .into_iter()
                .map(|endpoint| Lane {
                    endpoint,
                    queue: Mutex::new(VecDeque::new()),
                    current: Mutex::new(None),
                    wake: Notify::new(),
                })
                .collect(),
            client,
            secret: config.secret.into_bytes(),
            timeout: config.timeout,
            max_attempts: config.max_attempts,
            capacity: config.queue_capacity.max(1),
            backoff: config.backoff,
            report,
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let tasks = (0..shared.lanes.len())
            .map(|i| tokio::spawn(run_lane(Arc::clone(&shared), i)))
            .collect();
        Ok(Webhooks {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// The endpoint labels, for the boot log.
    #[must_use]
    pub fn labels(&self) -> Vec<String> {
        self.shared
            .lanes
            .iter()
            .map(|l| l.endpoint.label.clone())
            .collect()
    }
}

#[async_trait]
impl AlertNotifier for Webhooks {
    fn notify(&self, notice: AlertNotice) {
        let s = &self.shared;
        let body = match serde_json::to_vec(&notice) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(alert_id = %notice.id, error = %e, "cannot serialise a budget alert");
                return;
            }
        };
        let job = Job {
            notice: Arc::new(notice),
            body,
        };
        for lane in &s.lanes {
            if s.stopped.load(Ordering::Acquire) {
                s.report.outcome(
                    &job.notice,
                    &lane.endpoint.label,
                    &dropped(undelivered::SHUTDOWN, 0, None),
                );
                continue;
            }
            let evicted = {
                let mut q = lock(&lane.queue);
                let evicted = if q.len() >= s.capacity {
                    q.pop_front()
                } else {
                    None
                };
                q.push_back(job.clone());
                evicted
            };
            match evicted {
                Some(old) => s.report.outcome(
                    &old.notice,
                    &lane.endpoint.label,
                    &dropped(undelivered::QUEUE_FULL, 0, None),
                ),
                None => s.report.queue_depth(1),
            }
            lane.wake.notify_one();
        }
    }

    async fn drain(&self, within: Duration) -> u64 {
        let s = &self.shared;
        s.closing.store(true, Ordering::Release);
        for lane in &s.lanes {
            lane.wake.notify_one();
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.tasks));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let finished = tokio::time::timeout(within, futures_join(tasks))
            .await
            .is_ok();
        if !finished {
            for a in &aborts {
                a.abort();
            }
            // Give the aborted tasks a moment to unwind (they hold no locks across awaits).
            tokio::task::yield_now().await;
        }
        s.stopped.store(true, Ordering::Release);
        let mut dropped_count = 0;
        for lane in &s.lanes {
            let current = lock(&lane.current).take();
            if let Some(c) = current {
                s.report.outcome(
                    &c.job.notice,
                    &lane.endpoint.label,
                    &dropped(undelivered::SHUTDOWN, c.attempts, c.last_error),
                );
                dropped_count += 1;
            }
            let left: Vec<Job> = lock(&lane.queue).drain(..).collect();
            for j in left {
                s.report.queue_depth(-1);
                s.report.outcome(
                    &j.notice,
                    &lane.endpoint.label,
                    &dropped(undelivered::SHUTDOWN, 0, None),
                );
                dropped_count += 1;
            }
        }
        dropped_count
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn dropped(reason: &'static str, attempts: u32, last_error: Option<String>) -> Outcome {
    Outcome::Undelivered {
        reason,
        attempts,
        last_error,
    }
}

/// One endpoint's delivery task: take the oldest alert, deliver it (with retries), report,
/// repeat; once shutdown began, stop when the queue is empty.
async fn run_lane(s: Arc<Shared>, index: usize) {
    let Some(lane) = s.lanes.get(index) else {
        return;
    };
    loop {
        let next = {
            let mut q = lock(&lane.queue);
            let job = q.pop_front();
            if let Some(j) = &job {
                *lock(&lane.current) = Some(Current {
                    job: j.clone(),
                    attempts: 0,
                    last_error: None,
                });
            }
            job
        };
        match next {
            Some(job) => {
                s.report.queue_depth(-1);
                let outcome = deliver(&s, lane, &job).await;
                // Cleared before reporting, so a shutdown cut cannot report it twice.
                if lock(&lane.current).take().is_some() {
                    s.report
                        .outcome(&job.notice, &lane.endpoint.label, &outcome);
                }
            }
            None if s.closing.load(Ordering::Acquire) => return,
            None => lane.wake.notified().await,
        }
    }
}

/// Attempts until delivered, rejected, or the attempt limit.
async fn deliver(s: &Shared, lane: &Lane, job: &Job) -> Outcome {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Counted when started: a shutdown cutting this attempt reports it as made.
        if let Some(c) = lock(&lane.current).as_mut() {
            c.attempts = attempt;
        }
        let (error, retry_after) = match attempt_once(s, lane, job).await {
            Attempt::Status(status, retry_after) => match verdict(status) {
                Verdict::Delivered => {
                    return Outcome::Delivered {
                        attempts: attempt,
                        status,
                    };
                }
                Verdict::Rejected => {
                    return dropped(
                        undelivered::REJECTED,
                        attempt,
                        Some(format!("status {status}")),
                    );
                }
                Verdict::Retry => (format!("status {status}"), retry_after),
            },
            Attempt::Failed(e) => (e, None),
        };
        if let Some(c) = lock(&lane.current).as_mut() {
            c.last_error = Some(error.clone());
        }
        if attempt >= s.max_attempts {
            return dropped(undelivered::GAVE_UP, attempt, Some(error));
        }
        let wait = s.backoff.next(attempt, retry_after);
        s.report
            .retrying(&job.notice, &lane.endpoint.label, attempt, &error, wait);
        tokio::time::sleep(wait).await;
    }
}

enum Attempt {
    /// The answer's status and its `Retry-After`.
    Status(u16, Option<Duration>),
    /// No answer: the reason, without the URL.
    Failed(String),
}

async fn attempt_once(s: &Shared, lane: &Lane, job: &Job) -> Attempt {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = policy::signature(&s.secret, timestamp, &job.body);
    let sent = s
        .client
        .post(lane.endpoint.url.clone())
        .timeout(s.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Metis-Delivery", job.notice.id.as_str())
        .header("X-Metis-Timestamp", timestamp.to_string())
        .header("X-Metis-Signature", signature)
        .body(job.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| policy::parse_retry_after(v, SystemTime::now()));
            Attempt::Status(status, retry_after)
        }
        Err(e) if e.is_timeout() => {
            Attempt::Failed(format!("timeout after {} ms", s.timeout.as_millis()))
        }
        Err(e) if e.is_connect() => Attempt::Failed("connect error".to_owned()),
        Err(e) => Attempt::Failed(format!("request error: {}", e.without_url())),
    }
}

#[cfg(test)]
mod tests;
