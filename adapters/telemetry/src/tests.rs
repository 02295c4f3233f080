use super::*;
use crate::exposition::escape;

#[test]
fn renders_counters_histograms_and_gauges() {
    let p = Prometheus::default();
    p.http_request("/v1/messages", "POST", 200, "anthropic", 0.0007);
    p.auth_failure("invalid_token");
    p.rate_limit("per_key", false);
    let mut lag = metis_ports::trace::CommitLagStats {
        deadline_us: 50_000,
        count: 3,
        sum_us: 70_000,
        max_us: 60_000,
        deadline_misses: 1,
        ..Default::default()
    };
    lag.buckets[2] = 2;
    lag.buckets[6] = 1;
    let text = p.render(&ScrapeGauges {
        keys_active: 3,
        trace_commit_lag: lag,
        ..ScrapeGauges::default()
    });
    assert!(
        text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.005\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.05\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_lag_seconds_bucket{le=\"0.1\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_lag_seconds_bucket{le=\"+Inf\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_lag_seconds_count 3\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_lag_max_seconds 0.06\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_deadline_seconds 0.05\n"),
        "{text}"
    );
    assert!(
        text.contains("metis_trace_commit_deadline_misses_total 1\n"),
        "{text}"
    );
    assert!(text.contains("metis_http_requests_total{route=\"/v1/messages\",method=\"POST\",status=\"200\",shape=\"anthropic\"} 1"));
    assert!(text.contains("metis_http_request_duration_seconds_bucket{route=\"/v1/messages\",shape=\"anthropic\",le=\"0.001\"} 1"));
    assert!(text.contains("metis_http_request_duration_seconds_bucket{route=\"/v1/messages\",shape=\"anthropic\",le=\"0.0005\"} 0"));
    assert!(text.contains("metis_gateway_auth_failures_total{reason=\"invalid_token\"} 1"));
    assert!(
        text.contains("metis_ratelimit_decisions_total{bucket=\"per_key\",decision=\"deny\"} 1")
    );
    assert!(text.contains("metis_gateway_keys_active 3"));
}

const HAIKU: CallLabels<'static> = CallLabels {
    operation: "chat",
    provider: "anthropic",
    model: "anthropic:claude-haiku-4-5",
};

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

/// Sample lines (not comments) of a family, exactly `name{` or `name `.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect()
}

#[test]
fn spend_is_complete_by_team_and_user_and_per_key_only_within_the_budget() {
    let p = Prometheus::new(SeriesBudget {
        top_keys: 2,
        keys: ["gk_optin".to_owned()].into(),
        max_users: 3,
        max_teams: 2,
    });
    // 10 keys, each its own user, in 5 teams; key i spends i cents.
    for i in 0..10u32 {
        let key = format!("gk_{i}");
        let user = format!("user{i}");
        let team = format!("team{}", i % 5);
        let who = Attribution {
            key_id: &key,
            user_id: Some(&user),
            team_id: Some(&team),
        };
        p.usage(&HAIKU, &who, &usage(10, 5), f64::from(i) / 100.0);
    }
    let who = Attribution {
        key_id: "gk_optin",
        user_id: None,
        team_id: None,
    };
    let gpt = CallLabels {
        operation: "chat",
        provider: "openai",
        model: "openai:gpt-5",
    };
    p.usage(&gpt, &who, &usage(1, 1), 0.0);
    let text = p.render(&ScrapeGauges::default());

    // Teams: team0 and team1 admitted, the rest folded; totals stay complete.
    let team_cost = samples(&text, "metis_cost_usd_total");
    assert_eq!(team_cost.len(), 4, "{team_cost:?}"); // team0, team1, _other, none
    assert!(
        text.contains(
            "metis_cost_usd_total{team=\"_other\",model=\"anthropic:claude-haiku-4-5\"} 0.3"
        ),
        "{text}"
    );
    assert!(
        text.contains("metis_tokens_total{team=\"none\",model=\"openai:gpt-5\",kind=\"input\"} 1")
    );
    let input: f64 = samples(&text, "metis_tokens_total")
        .iter()
        .filter(|l| l.contains("kind=\"input\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (input - 101.0).abs() < 1e-9,
        "all input tokens kept: {input}"
    );
    // Users: three admitted, seven folded, plus `none`.
    assert_eq!(samples(&text, "metis_user_cost_usd_total").len(), 5);
    assert!(text.contains("metis_user_tokens_total{user=\"_other\",kind=\"input\"} 70"));
    assert!(text.contains("metis_metrics_folded_total{label=\"user\"} 7"));
    assert!(text.contains("metis_metrics_folded_total{label=\"team\"} 6"));
    // Per key: the two biggest spenders and the opt-in key only.
    let keys: Vec<&str> = samples(&text, "metis_key_cost_usd_total");
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in ["gk_9", "gk_8", "gk_optin"] {
        assert!(
            keys.iter().any(|l| l.contains(&format!("\"{k}\""))),
            "{k}: {keys:?}"
        );
    }
    assert!(text.contains("metis_metrics_series_budget{dimension=\"top_keys\"} 2"));
}

#[test]
fn ten_thousand_keys_render_within_the_budget() {
    let p = Prometheus::default();
    for i in 0..10_000u32 {
        let key = format!("gk_{i:05}");
        let user = format!("user{i}");
        let team = format!("team{}", i % 100);
        let who = Attribution {
            key_id: &key,
            user_id: Some(&user),
            team_id: Some(&team),
        };
        p.usage(&HAIKU, &who, &usage(10, 5), 0.001);
    }
    p.quota_ratios(
        &(0..10_000u32)
            .map(|i| QuotaRatio {
                key_id: format!("gk_{i:05}"),
                scope: "key_daily",
                ratio: f64::from(i) / 10_000.0,
            })
            .collect::<Vec<_>>(),
    );
    let text = p.render(&ScrapeGauges::default());
    let b = SeriesBudget::default();
    // Two token buckets (input, output) plus cost, per admitted label value.
    assert_eq!(
        samples(&text, "metis_user_cost_usd_total").len(),
        b.max_users + 1
    );
    assert_eq!(
        samples(&text, "metis_cost_usd_total").len(),
        b.max_teams + 1
    );
    assert_eq!(samples(&text, "metis_key_cost_usd_total").len(), b.top_keys);
    assert_eq!(
        samples(&text, "metis_key_tokens_total").len(),
        2 * b.top_keys
    );
    let ratios = samples(&text, "metis_quota_used_ratio");
    assert_eq!(ratios.len(), b.top_keys);
    assert!(
        ratios.iter().any(|l| l.contains("gk_09999")),
        "nearest the cap first"
    );
    assert!(text.contains("metis_quota_keys{scope=\"key_daily\",threshold=\"0.8\"} 2000"));
    assert!(text.contains("metis_quota_keys{scope=\"key_daily\",threshold=\"0.95\"} 500"));
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 1_000, "{series} series for 10,000 keys");
}

#[test]
fn state_retries_first_token_quota_events_and_certificate_expiry_render() {
    let p = Prometheus::default();
    let text = p.render(&ScrapeGauges::default());
    assert!(!text.contains("metis_tls_certificate_expiry_timestamp_seconds"));
    p.set_tls_not_after(1_900_000_000);
    p.upstream_retries(&HAIKU, 2);
    p.first_token(&HAIKU, 0.3);
    p.quota_event("key_daily", "alert_80");
    p.key_leak_suspected();
    p.admission_outage("spend", "refused");
    p.admission_outage("spend", "refused");
    p.admission_outage("rate_limit", "local");
    let text = p.render(&ScrapeGauges {
        trace_store_writable: true,
        db_bytes: 4096,
        ..ScrapeGauges::default()
    });
    for line in [
        "metis_tls_certificate_expiry_timestamp_seconds 1900000000",
        "metis_upstream_retries_total{provider=\"anthropic\",model=\"anthropic:claude-haiku-4-5\"} 2",
        "metis_time_to_first_token_seconds_bucket{provider=\"anthropic\",model=\"anthropic:claude-haiku-4-5\",le=\"0.5\"} 1",
        "metis_quota_events_total{scope=\"key_daily\",event=\"alert_80\"} 1",
        "metis_gateway_key_leak_suspected_total 1",
        "# TYPE metis_admission_outage_decisions_total counter",
        "metis_admission_outage_decisions_total{step=\"spend\",decision=\"refused\"} 2",
        "metis_admission_outage_decisions_total{step=\"rate_limit\",decision=\"local\"} 1",
        "metis_trace_db_bytes 4096",
        "metis_trace_store_writable 1",
        "metis_ready 1",
        "metis_draining 0",
        "# TYPE metis_trace_events_written_total counter",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let draining = p.render(&ScrapeGauges {
        trace_store_writable: true,
        draining: true,
        ..ScrapeGauges::default()
    });
    assert!(draining.contains("metis_ready 0"));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
}

#[test]
fn route_deployments_render_one_series_each() {
    let p = Prometheus::new(crate::SeriesBudget::default());
    let text = p.render(&ScrapeGauges {
        deployments: vec![metis_ports::metrics::DeploymentStatus {
            route: "claude".to_owned(),
            deployment: "bedrock-east".to_owned(),
            provider: "bedrock".to_owned(),
            circuit: 2,
            outstanding: 4,
            latency_ewma_seconds: 0.25,
            answered: 10,
            failed: 5,
            skipped: 7,
            ejections: 1,
            ..Default::default()
        }],
        ..ScrapeGauges::default()
    });
    let labels = "{route=\"claude\",deployment=\"bedrock-east\",provider=\"bedrock\"}";
    for (name, v) in [
        ("metis_deployment_circuit_state", "2"),
        ("metis_deployment_outstanding_requests", "4"),
        ("metis_deployment_latency_ewma_seconds", "0.25"),
        ("metis_deployment_answered_total", "10"),
        ("metis_deployment_failures_total", "5"),
        ("metis_deployment_skipped_total", "7"),
        ("metis_deployment_ejections_total", "1"),
    ] {
        assert!(
            text.contains(&format!("{name}{labels} {v}\n")),
            "{name}: {text}"
        );
    }
    let none = p.render(&ScrapeGauges::default());
    assert!(!none.contains("metis_deployment_"));
}
