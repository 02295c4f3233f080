//! Wiring of budget alerts (README "Budget alerts"): every raised alert is counted, and when
//! `--alert-webhook` is set, posted to each URL by the webhook channel, whose outcomes are
//! recorded in the audit trail.

use crate::cli::AlertArgs;
use anyhow::bail;
use metis_ports::alerts::{AlertMetrics, AlertNotifier};
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::EventSink;
use metis_usecases::alerts::{AlertDispatch, AlertRecorder};
use metis_webhook::{QUEUE_CAPACITY, WebhookConfig, Webhooks, policy::Backoff};
use std::sync::Arc;
use std::time::Duration;

/// How long pending deliveries may still run once the server has drained (then what is left
/// is recorded as dropped, reason `shutdown`).
pub const DRAIN: Duration = Duration::from_secs(5);

/// The notifier the core hands raised alerts to.
///
/// # Errors
/// A bad URL, a missing or short secret, or a zero timeout, naming the flag (never the URL or
/// the secret).
pub fn notifier(
    args: &AlertArgs,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    metrics: Arc<dyn AlertMetrics>,
) -> anyhow::Result<Arc<dyn AlertNotifier>> {
    if args.alert_webhook.is_empty() {
        return Ok(Arc::new(AlertDispatch::new(metrics, None)));
    }
    let Some(secret) = args.alert_webhook_secret.clone() else {
        bail!(
            "--alert-webhook needs --alert-webhook-secret (or METIS_GATEWAY_ALERT_WEBHOOK_SECRET): receivers verify X-Metis-Signature with it"
        );
    };
    if args.alert_webhook_timeout.is_zero() {
        bail!("--alert-webhook-timeout must be longer than 0");
    }
    let recorder = Arc::new(AlertRecorder::new(sink, clock, ids, Arc::clone(&metrics)));
    let hooks = Webhooks::start(
        WebhookConfig {
            urls: args.alert_webhook.clone(),
            secret,
            timeout: args.alert_webhook_timeout,
            max_attempts: args.alert_webhook_max_attempts,
            allow_http: args.alert_webhook_allow_http,
            queue_capacity: QUEUE_CAPACITY,
            backoff: Backoff::default(),
        },
        recorder,
    )?;
    tracing::info!(
        endpoints = hooks.labels().join(", "),
        timeout_ms = u64::try_from(args.alert_webhook_timeout.as_millis()).unwrap_or(u64::MAX),
        max_attempts = args.alert_webhook_max_attempts,
        "budget alerts are posted to webhooks"
    );
    Ok(Arc::new(AlertDispatch::new(metrics, Some(Arc::new(hooks)))))
}

/// Shutdown: give pending deliveries [`DRAIN`] to finish; log what was dropped.
pub async fn drain(alerts: &dyn AlertNotifier) {
    let dropped = alerts.drain(DRAIN).await;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "budget alert deliveries still pending at shutdown were dropped (quota.alert_undelivered, reason shutdown)"
        );
    }
}
