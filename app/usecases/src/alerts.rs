//! Budget alerts that reach a person (issue 20): the core hands every raised alert to an
//! [`AlertDispatch`], which counts it and passes it to the configured channel (webhooks);
//! the channel reports each final outcome to an [`AlertRecorder`], which writes it to the
//! audit trail (`quota.alert_delivered` / `quota.alert_undelivered`), the metrics and the log.
//!
//! The alert itself is recorded by the core as `quota.alert` (an audit type) before it is
//! dispatched; the notice's `id` is that event's id, so the delivery events point back to it.

use async_trait::async_trait;
use metis_domain::alerts::{AlertDelivered, AlertNotice, AlertUndelivered};
use metis_domain::events::make_event;
use metis_ports::alerts::{AlertMetrics, AlertNotifier, DeliveryReport, Outcome};
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::EventSink;
use std::sync::Arc;
use std::time::Duration;

/// Counts every raised alert (`metis_budget_alerts_total`) and forwards it to the channel,
/// if one is configured. Never blocks (the channel's `notify` only enqueues).
pub struct AlertDispatch {
    metrics: Arc<dyn AlertMetrics>,
    channel: Option<Arc<dyn AlertNotifier>>,
}

impl AlertDispatch {
    #[must_use]
    pub fn new(metrics: Arc<dyn AlertMetrics>, channel: Option<Arc<dyn AlertNotifier>>) -> Self {
        AlertDispatch { metrics, channel }
    }
}

#[async_trait]
impl AlertNotifier for AlertDispatch {
    fn notify(&self, notice: AlertNotice) {
        self.metrics.alert_raised(notice.cap, notice.severity);
        if let Some(c) = &self.channel {
            c.notify(notice);
        }
    }

    async fn drain(&self, within: Duration) -> u64 {
        match &self.channel {
            Some(c) => c.drain(within).await,
            None => 0,
        }
    }
}

/// Records delivery outcomes: one audit event per alert and endpoint, a metric, a log line.
/// Endpoints appear only as their redacted labels; the signing secret is never seen here.
pub struct AlertRecorder {
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    metrics: Arc<dyn AlertMetrics>,
}

impl AlertRecorder {
    #[must_use]
    pub fn new(
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
        metrics: Arc<dyn AlertMetrics>,
    ) -> Self {
        AlertRecorder {
            sink,
            clock,
            ids,
            metrics,
        }
    }
}

impl DeliveryReport for AlertRecorder {
    fn outcome(&self, n: &AlertNotice, endpoint: &str, outcome: &Outcome) {
        self.metrics.alert_delivery(outcome.label());
        let session = format!("gw_{}", self.ids.ulid());
        let event = match outcome {
            Outcome::Delivered { attempts, status } => {
                tracing::info!(
                    alert_id = %n.id,
                    cap = n.cap,
                    level = n.level_percent,
                    endpoint,
                    attempts,
                    status,
                    "budget alert delivered"
                );
                make_event(
                    self.ids.ulid(),
                    self.clock.now_us(),
                    &session,
                    None,
                    None,
                    &AlertDelivered {
                        alert_id: n.id.clone(),
                        cap: n.cap,
                        scope_kind: n.scope.kind,
                        scope_id: n.scope.id.clone(),
                        level_percent: n.level_percent,
                        severity: n.severity,
                        endpoint: endpoint.to_owned(),
                        attempts: *attempts,
                        status: *status,
                        gateway_key_id: n.gateway_key_id.clone(),
                    },
                )
            }
            Outcome::Undelivered {
                reason,
                attempts,
                last_error,
            } => {
                tracing::warn!(
                    alert_id = %n.id,
                    cap = n.cap,
                    level = n.level_percent,
                    endpoint,
                    reason,
                    attempts,
                    last_error = last_error.as_deref().unwrap_or("-"),
                    "budget alert NOT delivered"
                );
                make_event(
                    self.ids.ulid(),
                    self.clock.now_us(),
                    &session,
                    None,
                    None,
                    &AlertUndelivered {
                        alert_id: n.id.clone(),
                        cap: n.cap,
                        scope_kind: n.scope.kind,
                        scope_id: n.scope.id.clone(),
                        level_percent: n.level_percent,
                        severity: n.severity,
                        endpoint: endpoint.to_owned(),
                        reason,
                        attempts: *attempts,
                        last_error: last_error.clone(),
                        gateway_key_id: n.gateway_key_id.clone(),
                    },
                )
            }
        };
        self.sink.emit(event);
    }

    fn queue_depth(&self, delta: i64) {
        self.metrics.alert_queue(delta);
    }

    fn retrying(&self, n: &AlertNotice, endpoint: &str, attempt: u32, error: &str, wait: Duration) {
        self.metrics.alert_retry();
        tracing::info!(
            alert_id = %n.id,
            endpoint,
            attempt,
            error,
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "budget alert delivery attempt failed; retrying"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::alerts::undelivered;
    use metis_domain::events::Event;
    use metis_domain::spend::Alert;
    use metis_ports::trace::{SinkStats, TraceError};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct MemorySink(Mutex<Vec<Event>>);
    impl MemorySink {
        fn events(&self) -> Vec<Event> {
            self.0.lock().unwrap().clone()
        }
    }
    #[async_trait]
    impl EventSink for MemorySink {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
        async fn flush(&self) -> Result<(), TraceError> {
            Ok(())
        }
        fn stats(&self) -> SinkStats {
            SinkStats::default()
        }
        fn is_writable(&self) -> bool {
            true
        }
        fn wal_bytes(&self) -> u64 {
            0
        }
    }
    struct FixedClock(i64);
    impl Clock for FixedClock {
        fn now_us(&self) -> i64 {
            self.0
        }
    }
    #[derive(Default)]
    struct SeqIds(AtomicU64);
    impl IdSource for SeqIds {
        fn ulid(&self) -> String {
            format!("01ID{:06}", self.0.fetch_add(1, Ordering::Relaxed))
        }
        fn secret_bytes(&self) -> [u8; 24] {
            [7; 24]
        }
    }

    #[derive(Default)]
    struct Counted(Mutex<Vec<String>>);
    impl AlertMetrics for Counted {
        fn alert_raised(&self, cap: &str, severity: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("raised {cap} {severity}"));
        }
        fn alert_delivery(&self, outcome: &str) {
            self.0.lock().unwrap().push(format!("delivery {outcome}"));
        }
        fn alert_retry(&self) {}
        fn alert_queue(&self, _delta: i64) {}
    }

    fn notice() -> AlertNotice {
        let key: metis_domain::keys::KeyRecord = serde_json::from_value(serde_json::json!({
            "key_id": "gk_a", "secret_hash": "00", "workspace_path": "/w"
        }))
        .unwrap();
        let a = Alert {
            scope: "key_daily",
            kind: metis_domain::budgets::ScopeKind::Key,
            window: metis_domain::budgets::Window::Day,
            account: "gk_a".into(),
            level: 80,
            severity: "warning",
            limit_usd: 1.0,
            current_usd: 0.85,
            ratio: 0.85,
        };
        AlertNotice::new("01ALERT".into(), 5, &key, &a)
    }

    #[tokio::test]
    async fn outcomes_become_audit_events_and_metrics() {
        let sink = Arc::new(MemorySink::default());
        let metrics = Arc::new(Counted::default());
        let rec = AlertRecorder::new(
            sink.clone(),
            Arc::new(FixedClock(7)),
            Arc::new(SeqIds::default()),
            metrics.clone(),
        );
        let n = notice();
        rec.outcome(
            &n,
            "#1 http://127.0.0.1:9",
            &Outcome::Delivered {
                attempts: 3,
                status: 204,
            },
        );
        rec.outcome(
            &n,
            "#2 https://hooks.example.com",
            &Outcome::Undelivered {
                reason: undelivered::GAVE_UP,
                attempts: 5,
                last_error: Some("status 503".into()),
            },
        );
        let events = sink.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type, "quota.alert_delivered");
        let p: serde_json::Value = serde_json::from_str(&events[0].payload_json).unwrap();
        assert_eq!(p["alert_id"], "01ALERT");
        assert_eq!(p["attempts"], 3);
        assert_eq!(p["status"], 204);
        assert_eq!(events[1].event_type, "quota.alert_undelivered");
        let p: serde_json::Value = serde_json::from_str(&events[1].payload_json).unwrap();
        assert_eq!(p["reason"], "gave_up");
        assert_eq!(p["last_error"], "status 503");
        assert_eq!(
            *metrics.0.lock().unwrap(),
            vec![
                "delivery delivered".to_owned(),
                "delivery gave_up".to_owned()
            ]
        );
    }

    #[tokio::test]
    async fn every_raised_alert_is_counted_even_without_a_channel() {
        let metrics = Arc::new(Counted::default());
        let d = AlertDispatch::new(metrics.clone(), None);
        d.notify(notice());
        assert_eq!(d.drain(Duration::from_millis(1)).await, 0);
        assert_eq!(
            *metrics.0.lock().unwrap(),
            vec!["raised key_daily warning".to_owned()]
        );
    }
}
