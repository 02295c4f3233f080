//! Budget-alert series (issue 20): alerts raised by cap and severity, delivery outcomes,
//! retried attempts and the delivery queue depth. Kept apart from the request-path families
//! so the alert channel can be wired (and tested) on its own.

use crate::Prometheus;
use crate::exposition::{counter, gauge, write_family};
use crate::series::{Family, add};
use metis_ports::alerts::AlertMetrics;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct AlertSeries {
    raised: Mutex<Family>,
    deliveries: Mutex<Family>,
    retries: AtomicU64,
    queue: AtomicI64,
}

impl AlertSeries {
    pub(crate) fn render(&self, out: &mut String) {
        write_family(
            out,
            "metis_budget_alerts_total",
            "counter",
            "Budget alerts raised, by cap (key_daily, team_monthly, ...) and severity (warning, critical, exhausted), whether or not a webhook is configured.",
            &self.raised,
        );
        write_family(
            out,
            "metis_alert_deliveries_total",
            "counter",
            "Final outcomes of budget-alert webhook deliveries, one per alert and endpoint: delivered, gave_up (attempts exhausted), rejected (a 4xx answer), queue_full (oldest pending alert dropped), shutdown (left when the drain bound passed).",
            &self.deliveries,
        );
        counter(
            out,
            "metis_alert_delivery_retries_total",
            "Budget-alert webhook attempts that failed and were retried.",
            self.retries.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "metis_alert_queue_depth",
            "Budget alerts waiting for a webhook delivery (all endpoints).",
            self.queue.load(Ordering::Relaxed),
        );
    }
}

impl AlertMetrics for Prometheus {
    fn alert_raised(&self, cap: &str, severity: &str) {
        let labels = vec![("cap", cap.to_owned()), ("severity", severity.to_owned())];
        add(&self.alerts.raised, labels, 1.0);
    }

    fn alert_delivery(&self, outcome: &str) {
        add(
            &self.alerts.deliveries,
            vec![("outcome", outcome.to_owned())],
            1.0,
        );
    }

    fn alert_retry(&self) {
        self.alerts.retries.fetch_add(1, Ordering::Relaxed);
    }

    fn alert_queue(&self, delta: i64) {
        self.alerts.queue.fetch_add(delta, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_ports::metrics::{Metrics, ScrapeGauges};

    #[test]
    fn alert_series_render() {
        let p = Prometheus::default();
        p.alert_raised("key_daily", "warning");
        p.alert_raised("key_daily", "warning");
        p.alert_raised("team_monthly", "exhausted");
        p.alert_delivery("delivered");
        p.alert_delivery("gave_up");
        p.alert_retry();
        p.alert_queue(3);
        p.alert_queue(-1);
        let out = p.render(&ScrapeGauges::default());
        for line in [
            "# TYPE metis_budget_alerts_total counter",
            "metis_budget_alerts_total{cap=\"key_daily\",severity=\"warning\"} 2",
            "metis_budget_alerts_total{cap=\"team_monthly\",severity=\"exhausted\"} 1",
            "metis_alert_deliveries_total{outcome=\"delivered\"} 1",
            "metis_alert_deliveries_total{outcome=\"gave_up\"} 1",
            "metis_alert_delivery_retries_total 1",
            "metis_alert_queue_depth 2",
        ] {
            assert!(out.contains(line), "missing {line}\n{out}");
        }
    }
}
