//! The registry's composite sections: spend (tokens and cost by team, user and budgeted
//! key), cap ratios, and store, readiness, build, certificate and process state.

use crate::Prometheus;
use crate::budget::{self, KINDS, Totals};
use crate::exposition::{gauge, header, sample};
use crate::process;
use crate::series::lock;
use metis_ports::metrics::ScrapeGauges;
use std::sync::atomic::Ordering;

/// Tokens by bucket (only buckets that saw tokens, as before) and cost, for one label set.
fn spend_samples(
    out: &mut (String, String),
    names: (&str, &str),
    labels: &[(&str, &str)],
    t: &Totals,
) {
    for (kind, n) in KINDS.iter().zip(t.tokens) {
        if n > 0.0 {
            let mut l = labels.to_vec();
            l.push(("kind", kind));
            sample(&mut out.0, names.0, &l, n);
        }
    }
    sample(&mut out.1, names.1, labels, t.cost);
}

impl Prometheus {
    /// Tokens and cost: by team and model, by user, and per key within the budget.
    pub(crate) fn render_spend(&self, out: &mut String) {
        let book = lock(&self.spend);
        let families = [
            (
                ("metis_tokens_total", "metis_cost_usd_total"),
                "Tokens by team, model and bucket (input, output, cache_read, cache_write); every call, whatever its key.",
                "Cost in USD by team and model; every call, whatever its key.",
            ),
            (
                ("metis_user_tokens_total", "metis_user_cost_usd_total"),
                "Tokens by user and bucket; every call, whatever its key.",
                "Cost in USD by user; every call, whatever its key.",
            ),
            (
                ("metis_key_tokens_total", "metis_key_cost_usd_total"),
                "Tokens by gateway key, model and bucket, for the keys within the series budget (top spenders and --metrics-key).",
                "Cost in USD by gateway key and model, for the keys within the series budget.",
            ),
        ];
        for (i, (names, token_help, cost_help)) in families.iter().enumerate() {
            let mut bufs = (String::new(), String::new());
            match i {
                0 => {
                    for ((team, model), t) in &book.by_team {
                        spend_samples(&mut bufs, *names, &[("team", team), ("model", model)], t);
                    }
                }
                1 => {
                    for (user, t) in &book.by_user {
                        spend_samples(&mut bufs, *names, &[("user", user)], t);
                    }
                }
                _ => {
                    for key in budget::selected_keys(&book.keys, &self.budget) {
                        if let Some(k) = book.keys.get(key) {
                            for (model, t) in &k.by_model {
                                spend_samples(
                                    &mut bufs,
                                    *names,
                                    &[("gateway_key_id", key), ("model", model)],
                                    t,
                                );
                            }
                        }
                    }
                }
            }
            header(out, names.0, "counter", token_help);
            out.push_str(&bufs.0);
            header(out, names.1, "counter", cost_help);
            out.push_str(&bufs.1);
        }
        let name = "metis_metrics_folded_total";
        header(
            out,
            name,
            "counter",
            "Usage records reported under user or team \"_other\" because that label was over its series budget (--metrics-max-users, --metrics-max-teams).",
        );
        #[expect(clippy::cast_precision_loss, reason = "record counters")]
        let folded = [
            ("team", book.folded_teams as f64),
            ("user", book.folded_users as f64),
        ];
        for (label, n) in folded {
            sample(out, name, &[("label", label)], n);
        }
        let name = "metis_metrics_series_budget";
        header(
            out,
            name,
            "gauge",
            "The series budget in force: top_keys and opt_in_keys (keys with per-key series), users and teams (label values before folding into _other).",
        );
        #[expect(clippy::cast_precision_loss, reason = "small configured limits")]
        let limits = [
            ("opt_in_keys", self.budget.keys.len() as f64),
            ("teams", self.budget.max_teams as f64),
            ("top_keys", self.budget.top_keys as f64),
            ("users", self.budget.max_users as f64),
        ];
        for (dimension, n) in limits {
            sample(out, name, &[("dimension", dimension)], n);
        }
    }

    /// Cap ratios within the budget, and the complete count of keys near or over a cap.
    pub(crate) fn render_quota(&self, out: &mut String) {
        let ratios = lock(&self.quota_ratios);
        let name = "metis_quota_used_ratio";
        header(
            out,
            name,
            "gauge",
            "Spend over cap by gateway key and scope (key_daily, key_monthly) as of the scrape, for the keys nearest their caps (series budget) and --metrics-key keys.",
        );
        for r in budget::selected_ratios(&ratios, &self.budget) {
            sample(
                out,
                name,
                &[("gateway_key_id", &r.key_id), ("scope", r.scope)],
                r.ratio,
            );
        }
        let name = "metis_quota_keys";
        header(
            out,
            name,
            "gauge",
            "Keys whose spend is at or over `threshold` of their cap, by scope (every capped key, not only those within the series budget).",
        );
        #[expect(clippy::cast_precision_loss, reason = "key counts")]
        for (scope, threshold, n) in budget::quota_counts(&ratios) {
            sample(
                out,
                name,
                &[("scope", scope), ("threshold", threshold)],
                n as f64,
            );
        }
    }
}

impl Prometheus {
    /// Store, readiness, build, certificate and process state.
    pub(crate) fn render_state(&self, out: &mut String, g: &ScrapeGauges) {
        gauge(
            out,
            "metis_trace_db_bytes",
            "Size of the main store file (trace, sessions, spend).",
            g.db_bytes,
        );
        gauge(
            out,
            "metis_trace_store_writable",
            "1 while the trace store accepts writes; 0 makes /readyz answer 503 (\"trace store is not writable\").",
            u8::from(g.trace_store_writable),
        );
        gauge(
            out,
            "metis_draining",
            "1 once shutdown began (/readyz answers 503 \"draining\").",
            u8::from(g.draining),
        );
        gauge(
            out,
            "metis_ready",
            "1 when /readyz answers 200 (store writable and not draining).",
            u8::from(g.trace_store_writable && !g.draining),
        );
        let name = "metis_build_info";
        header(
            out,
            name,
            "gauge",
            "Always 1; the version label names the running build.",
        );
        sample(out, name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            gauge(
                out,
                "metis_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the in-process TLS certificate (--tls-cert), unix seconds. Read at start: roll the process after renewing.",
                not_after,
            );
        }
        process::render(out);
    }
}

/// Route deployments: circuit state, load and attempt outcomes, one series per deployment
/// (bounded by the configuration, not by traffic).
pub(crate) fn render_deployments(out: &mut String, g: &ScrapeGauges) {
    if g.deployments.is_empty() {
        return;
    }
    type Pick = fn(&metis_ports::metrics::DeploymentStatus) -> f64;
    let families: [(&str, &str, &str, Pick); 7] = [
        (
            "metis_deployment_circuit_state",
            "gauge",
            "Circuit of a route deployment: 0 closed, 1 half-open (probing), 2 open (ejected).",
            |d| f64::from(d.circuit),
        ),
        (
            "metis_deployment_outstanding_requests",
            "gauge",
            "Requests sent to the deployment and not finished.",
            |d| f64::from(d.outstanding),
        ),
        (
            "metis_deployment_latency_ewma_seconds",
            "gauge",
            "Latency to the answer head, exponentially weighted (what the balancer compares).",
            |d| d.latency_ewma_seconds,
        ),
        (
            "metis_deployment_answered_total",
            "counter",
            "Attempts on the deployment that got an answer head.",
            |d| d.answered as f64,
        ),
        (
            "metis_deployment_failures_total",
            "counter",
            "Attempts that failed with a health failure (429, 5xx, network, time-out).",
            |d| d.failed as f64,
        ),
        (
            "metis_deployment_skipped_total",
            "counter",
            "Times the deployment was passed over (circuit open, probe in flight, rpm/tpm ceiling).",
            |d| d.skipped as f64,
        ),
        (
            "metis_deployment_ejections_total",
            "counter",
            "Times the deployment's circuit opened.",
            |d| d.ejections as f64,
        ),
    ];
    for (name, kind, help, pick) in families {
        header(out, name, kind, help);
        for d in &g.deployments {
            sample(
                out,
                name,
                &[
                    ("route", &d.route),
                    ("deployment", &d.deployment),
                    ("provider", &d.provider),
                ],
                pick(d),
            );
        }
    }
}
