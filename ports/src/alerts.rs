//! Budget alerts that reach a person: the notifier the core hands each raised alert to, what
//! a delivery channel (webhooks) reports back, and the alert metrics.
//!
//! Contract:
//! - [`AlertNotifier::notify`] MUST NOT block or wait on the network: it is called on the
//!   request path. A notifier with a bounded queue drops its OLDEST pending alert when full,
//!   reports it as [`Outcome::Dropped`] (so it is counted, logged and audited) and takes the
//!   new one.
//! - Every alert handed to a channel ends in exactly one [`Outcome`] per endpoint, reported
//!   through [`DeliveryReport::outcome`] — including alerts still queued when the process
//!   stops (`Dropped { reason: shutdown }`).
//! - No secret (signing secret, URL credentials or path) is part of a report: endpoints are
//!   named by their redacted label.

use async_trait::async_trait;
use metis_domain::alerts::AlertNotice;
use std::time::Duration;

/// Takes raised alerts and delivers them in the background.
#[async_trait]
pub trait AlertNotifier: Send + Sync {
    /// Queue `notice` for delivery. MUST return at once (never blocks, never awaits).
    fn notify(&self, notice: AlertNotice);

    /// Shutdown: let pending deliveries finish for at most `within`, then stop; what is left
    /// is reported as dropped. Returns how many deliveries were dropped this way.
    async fn drain(&self, within: Duration) -> u64;
}

/// What became of one alert at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer after `attempts` attempts.
    Delivered { attempts: u32, status: u16 },
    /// No delivery: `reason` is one of `metis_domain::alerts::undelivered` (`gave_up`,
    /// `rejected`, `queue_full`, `shutdown`).
    Undelivered {
        reason: &'static str,
        attempts: u32,
        last_error: Option<String>,
    },
}

impl Outcome {
    /// The metrics label: `delivered`, or the undelivered reason.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Undelivered { reason, .. } => reason,
        }
    }
}

/// Where a delivery channel reports. Implementations MUST be cheap and non-blocking (they
/// record an event, a metric and a log line).
pub trait DeliveryReport: Send + Sync {
    /// The final outcome of `notice` at the endpoint labelled `endpoint`.
    fn outcome(&self, notice: &AlertNotice, endpoint: &str, outcome: &Outcome);
    /// Alerts waiting in the channel's queues changed by `delta`.
    fn queue_depth(&self, delta: i64);
    /// One attempt failed and will be retried after `wait` (logged; counted).
    fn retrying(
        &self,
        notice: &AlertNotice,
        endpoint: &str,
        attempt: u32,
        error: &str,
        wait: Duration,
    );
}

/// The alert metrics (rendered with the others at `/metrics`).
pub trait AlertMetrics: Send + Sync {
    /// An alert was raised (whether or not a webhook is configured).
    fn alert_raised(&self, cap: &str, severity: &str);
    /// A final delivery outcome (`delivered`, `gave_up`, `rejected`, `queue_full`, `shutdown`).
    fn alert_delivery(&self, outcome: &str);
    /// A failed attempt that will be retried.
    fn alert_retry(&self);
    /// Alerts waiting for delivery changed by `delta`.
    fn alert_queue(&self, delta: i64);
}
