use super::*;

#[test]
fn alert_webhook_flags_parse_and_print_no_url_or_secret() {
    let a = ServeArgs::try_parse_from([
        "gateway",
        "--alert-webhook",
        "https://hooks.example.com/T0/SECRETPATH",
        "--alert-webhook",
        "http://127.0.0.1:9000/x",
        "--alert-webhook-secret",
        "topsecret-0123456789",
        "--alert-webhook-timeout",
        "500ms",
    ])
    .unwrap();
    assert_eq!(a.alerts.alert_webhook.len(), 2);
    assert_eq!(a.alerts.alert_webhook_timeout, Duration::from_millis(500));
    assert_eq!(a.alerts.alert_webhook_max_attempts, 6);
    let shown = format!("{a:?}");
    assert!(
        !shown.contains("SECRETPATH") && !shown.contains("topsecret"),
        "{shown}"
    );
    assert!(ServeArgs::try_parse_from(["gateway", "--alert-webhook-max-attempts", "0"]).is_err());
}

#[test]
fn console_public_url_is_a_bare_origin() {
    let a = ServeArgs::try_parse_from([
        "gateway",
        "--console-public-url",
        "https://metis.example.com:8443/",
    ])
    .unwrap();
    assert_eq!(
        a.console_public_url.as_deref(),
        Some("https://metis.example.com:8443")
    );
    for bad in [
        "metis.example.com",
        "https://",
        "https://metis.example.com/ui",
        "https://a@metis.example.com",
        "ftp://metis.example.com",
    ] {
        assert!(
            ServeArgs::try_parse_from(["gateway", "--console-public-url", bad]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn metrics_budget_flags_parse_and_bad_key_ids_are_refused() {
    let a = ServeArgs::try_parse_from(["gateway"]).unwrap();
    assert_eq!(a.metrics.metrics_top_keys, 20);
    assert_eq!(
        (a.metrics.metrics_max_users, a.metrics.metrics_max_teams),
        (100, 50)
    );
    assert!(a.metrics.metrics_key.is_empty());
    let a = ServeArgs::try_parse_from([
        "gateway",
        "--metrics-top-keys",
        "0",
        "--metrics-key",
        "gk_01HX",
        "--metrics-key",
        "gk_01HY",
    ])
    .unwrap();
    assert_eq!(a.metrics.metrics_top_keys, 0);
    assert_eq!(a.metrics.metrics_key, vec!["gk_01HX", "gk_01HY"]);
    let err = ServeArgs::try_parse_from(["gateway", "--metrics-key", "gw_secret"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a key id"), "{err}");
    assert!(ServeArgs::try_parse_from(["gateway", "--metrics-top-keys", "5000"]).is_err());
}

#[test]
fn commit_deadlines_parse() {
    assert_eq!(parse_commit_deadline("10ms"), Ok(Duration::from_millis(10)));
    assert!(parse_commit_deadline("0ms").is_err());
    assert!(parse_commit_deadline("0").is_err());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("5y").is_err());
}

#[test]
fn serve_defaults_match_the_spec() {
    let a = ServeArgs::try_parse_from(["gateway"]).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 8422));
    assert_eq!(a.shutdown_grace, Duration::from_secs(25));
    assert_eq!(a.trace_commit_deadline, Duration::from_millis(50));
    assert_eq!(a.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(a.max_inflight_request_memory, 512 * 1024 * 1024);
    assert!(!a.rate_limit);
    assert_eq!(
        (a.rate_limit_per_key_rpm, a.rate_limit_per_ip_rpm),
        (60, 1000)
    );
    assert_eq!(a.spend_outage, SpendOutage::FailClosed);
    assert_eq!(a.tpm_default_output_tokens, 4096);
}

#[test]
fn the_budget_month_start_day_is_1_to_28() {
    let a = ServeArgs::try_parse_from(["gateway"]).unwrap();
    assert_eq!(a.budget_month_start_day, 1);
    let a = ServeArgs::try_parse_from(["gateway", "--budget-month-start-day", "15"]).unwrap();
    assert_eq!(a.budget_month_start_day, 15);
    let err = ServeArgs::try_parse_from(["gateway", "--budget-month-start-day", "31"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("1..=28"), "{err}");
}

#[test]
fn the_spend_outage_policy_is_one_of_two_names() {
    let a = ServeArgs::try_parse_from(["gateway", "--spend-outage", "fail-open"]).unwrap();
    assert_eq!(a.spend_outage, SpendOutage::FailOpen);
    let err = ServeArgs::try_parse_from(["gateway", "--spend-outage", "open"]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("fail-closed") && text.contains("fail-open"),
        "the error names the accepted values: {text}"
    );
}

#[test]
fn trusted_proxies_are_validated() {
    let a = ServeArgs::try_parse_from([
        "gateway",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1",
    ])
    .unwrap();
    assert_eq!(a.trusted_proxy.len(), 2);
    assert!(ServeArgs::try_parse_from(["gateway", "--trusted-proxy", "10.0.0.0/40"]).is_err());
    assert!(ServeArgs::try_parse_from(["gateway", "--rate-limit-per-key-rpm", "0"]).is_err());
}

#[test]
fn keystore_flag_works_before_or_after_the_subcommand() {
    let before = Cli::try_parse_from([
        "metis",
        "gateway",
        "--keystore",
        "/k.json",
        "issue-key",
        "--name",
        "n",
        "--workspace",
        "/w",
    ])
    .unwrap();
    let Command::Gateway(g) = before.command else {
        panic!("expected gateway")
    };
    let Some(KeyCommand::IssueKey(ik)) = &g.action else {
        panic!("expected issue-key")
    };
    let merged = ik.storage.or(&g.serve.storage);
    assert_eq!(merged.keystore, Some(PathBuf::from("/k.json")));

    let after = Cli::try_parse_from([
        "metis",
        "gateway",
        "issue-key",
        "--name",
        "n",
        "--workspace",
        "/w",
        "--keystore",
        "/k2.json",
    ])
    .unwrap();
    let Command::Gateway(g) = after.command else {
        panic!("expected gateway")
    };
    let Some(KeyCommand::IssueKey(ik)) = &g.action else {
        panic!("expected issue-key")
    };
    assert_eq!(
        ik.storage.or(&g.serve.storage).keystore,
        Some(PathBuf::from("/k2.json"))
    );
}
