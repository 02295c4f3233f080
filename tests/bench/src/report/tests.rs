use super::format::{rps, signed_us};
use super::*;

fn run(target: &str, rps_: f64, p99: f64, cpu: Option<f64>) -> String {
    json!({
            "kind": "run", "target": target, "scenario": "openai-sync",
            "load": {"mode": "closed", "concurrency": 32},
            "duration_s": 10.0, "warmup_s": 2.0, "ok": (rps_ * 10.0) as u64, "errors": {},
            "throughput_rps": rps_,
            "latency": {"count": 1, "mean_us": 1.0, "p50_us": 1.0, "p90_us": 1.0, "p99_us": p99, "p999_us": p99, "max_us": p99},
            "ttfb": {"count": 1, "mean_us": 1.0, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 1.0, "p999_us": 1.0, "max_us": 1.0},
            "co_latency": null, "late_sends": null,
            "cpu_target_s": null, "cpu_target_us_per_req": cpu, "target_cpu_util": null,
            "cpu_mock_s": null, "cpu_mock_us_per_req": null, "loadgen_cpu_util": 0.5,
            "target_rss_start_kb": null, "target_rss_max_kb": null, "target_pids": []
        })
        .to_string()
}

#[test]
fn ratios_and_checks_from_lines() {
    let text = [
        run("direct", 20_000.0, 500.0, None),
        run("nginx", 10_000.0, 900.0, Some(40.0)),
        run("metis", 9_000.0, 1200.0, Some(55.0)),
        run("litellm", 60.0, 500_000.0, Some(16_000.0)),
        r#"{"kind":"rss","target":"metis","idle_kb":10240}"#.to_owned(),
        r#"{"kind":"note","target":"portkey","text":"did not start"}"#.to_owned(),
    ]
    .join("\n");
    let input = parse_lines(&text).unwrap();
    assert_eq!(input.runs.len(), 4);
    let c = checks(&input);
    let get = |prefix: &str| c.iter().find(|c| c.target.starts_with(prefix)).unwrap();
    assert_eq!(get("metis CPU").verdict, "met");
    assert_eq!(get("metis throughput vs nginx").verdict, "met");
    assert!(
        get("metis throughput vs nginx")
            .measured
            .starts_with("0.90×")
    );
    assert_eq!(get("metis throughput vs LiteLLM").verdict, "met");
    assert_eq!(get("metis throughput vs Portkey").measured, "not measured");
    assert_eq!(get("metis idle RSS").verdict, "met");
    let (md, js) = render(&text).unwrap();
    assert!(md.contains("| metis | 9,000 | 0.45 | 0.90 |"));
    assert!(md.contains("+700 µs"), "{md}");
    assert!(js.contains("\"targets\""));
}

#[test]
fn number_formats() {
    assert_eq!(us(12.4), "12.4 µs");
    assert_eq!(us(123.4), "123 µs");
    assert_eq!(us(1234.0), "1.23 ms");
    assert_eq!(us(45_600.0), "45.6 ms");
    assert_eq!(us(2_500_000.0), "2.50 s");
    assert_eq!(rps(1_234_567.0), "1,234,567");
    assert_eq!(rps(58.44), "58.4");
    assert_eq!(signed_us(-3.0), "−3.0 µs");
}

/// A run record of `target` on `scenario` under `load` (`c32` or `r1000`).
fn rec(target: &str, scenario: &str, load: &str, extra: Value) -> String {
    let load = match load.strip_prefix('r') {
        Some(r) => json!({"mode": "open", "rate": r.parse::<f64>().unwrap(), "connections": 64}),
        None => json!({"mode": "closed", "concurrency": load[1..].parse::<usize>().unwrap()}),
    };
    let mut v = json!({
        "kind": "run", "target": target, "scenario": scenario, "load": load,
        "duration_s": 10.0, "warmup_s": 2.0, "ok": 1000, "errors": {},
        "throughput_rps": 100.0,
        "latency": {"count": 1, "mean_us": 1.0, "p50_us": 100.0, "p90_us": 1.0, "p99_us": 500.0, "p999_us": 1.0, "max_us": 1.0},
        "ttfb": {"count": 1, "mean_us": 1.0, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 1.0, "p999_us": 1.0, "max_us": 1.0},
        "co_latency": null, "late_sends": null,
        "cpu_target_s": null, "cpu_target_us_per_req": null, "target_cpu_util": null,
        "cpu_mock_s": null, "cpu_mock_us_per_req": null, "loadgen_cpu_util": 0.5,
        "target_rss_start_kb": null, "target_rss_max_kb": null, "target_pids": []
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v.to_string()
}

fn issue15_lines() -> Vec<String> {
    vec![
        rec(
            "direct",
            "openai-sync",
            "r1000",
            json!({"latency": {"count": 1, "mean_us": 1.0, "p50_us": 100.0, "p90_us": 1.0, "p99_us": 400.0, "p999_us": 1.0, "max_us": 1.0}}),
        ),
        rec(
            "nginx",
            "openai-sync",
            "c32",
            json!({"throughput_rps": 10_000.0, "cpu_target_us_per_req": 20.0}),
        ),
        rec(
            "nginx",
            "openai-stream",
            "c32",
            json!({"cpu_target_us_per_req": 40.0, "sse_events_per_req": 20.0}),
        ),
        // SQLite: 2.5× nginx's CPU, nothing dropped; 0.5× its throughput.
        rec(
            "metis",
            "openai-sync",
            "c32",
            json!({"throughput_rps": 5_000.0, "cpu_target_us_per_req": 50.0, "trace_overflowed": 0}),
        ),
        rec(
            "metis",
            "openai-sync",
            "r1000",
            json!({"latency": {"count": 1, "mean_us": 1.0, "p50_us": 150.0, "p90_us": 1.0, "p99_us": 650.0, "p999_us": 1.0, "max_us": 1.0}, "trace_overflowed": 0}),
        ),
        // 3 µs per event vs nginx's 2 µs.
        rec(
            "metis",
            "openai-stream",
            "c32",
            json!({"cpu_target_us_per_req": 60.0, "sse_events_per_req": 20.0, "trace_overflowed": 0}),
        ),
        // redb: within 3× but events were dropped; throughput 0.3×; p99 +0.5 ms.
        rec(
            "metis-redb",
            "openai-sync",
            "c32",
            json!({"throughput_rps": 3_000.0, "cpu_target_us_per_req": 55.0, "trace_overflowed": 7}),
        ),
        rec(
            "metis-redb",
            "openai-sync",
            "r1000",
            json!({"latency": {"count": 1, "mean_us": 1.0, "p50_us": 150.0, "p90_us": 1.0, "p99_us": 900.0, "p999_us": 1.0, "max_us": 1.0}}),
        ),
        // 5 µs per event: 2.5× nginx.
        rec(
            "metis-redb",
            "openai-stream",
            "c32",
            json!({"cpu_target_us_per_req": 100.0, "sse_events_per_req": 20.0, "target_threads_us_per_req": {"tokio-rt-worker": 70.0, "metis-redb-writ": 25.0, "tokio-runtime-w": 5.0}}),
        ),
        // Anthropic sync: no overflow count read.
        rec(
            "nginx",
            "anthropic-sync",
            "c32",
            json!({"throughput_rps": 10_000.0, "cpu_target_us_per_req": 20.0}),
        ),
        rec(
            "metis",
            "anthropic-sync",
            "c32",
            json!({"throughput_rps": 5_000.0, "cpu_target_us_per_req": 50.0}),
        ),
        // Anthropic at 1,000 req/s: the direct run was disturbed (p99 far above metis's).
        rec(
            "direct",
            "anthropic-sync",
            "r1000",
            json!({"latency": {"count": 1, "mean_us": 1.0, "p50_us": 100.0, "p90_us": 1.0, "p99_us": 40_000.0, "p999_us": 1.0, "max_us": 1.0}}),
        ),
        rec(
            "metis",
            "anthropic-sync",
            "r1000",
            json!({"latency": {"count": 1, "mean_us": 1.0, "p50_us": 150.0, "p90_us": 1.0, "p99_us": 15_000.0, "p999_us": 1.0, "max_us": 1.0}, "trace_overflowed": 0}),
        ),
    ]
}

#[test]
fn issue15_targets_are_ratios_to_nginx_with_the_overflow_count() {
    let input = parse_lines(&issue15_lines().join("\n")).unwrap();
    let c = checks(&input);
    let get = |t: &str| {
        c.iter()
            .find(|c| c.target == t)
            .unwrap_or_else(|| panic!("no check {t}: {c:#?}"))
    };
    let cpu = get("#15 CPU per request ÷ nginx, no event dropped (OpenAI route, SQLite, c32)");
    assert_eq!(cpu.verdict, "met");
    assert_eq!(cpu.measured, "2.50× (50.0 µs vs 20.0 µs); 0 overflowed");
    let cpu_redb = get("#15 CPU per request ÷ nginx, no event dropped (OpenAI route, redb, c32)");
    assert_eq!(cpu_redb.verdict, "missed", "dropped events miss the target");
    assert!(cpu_redb.measured.ends_with("7 overflowed"));
    let cpu_an =
        get("#15 CPU per request ÷ nginx, no event dropped (Anthropic route, SQLite, c32)");
    assert_eq!(cpu_an.verdict, "not verified (overflow not read)");
    assert_eq!(
        get("#15 throughput ÷ nginx (OpenAI route, SQLite, c32)").verdict,
        "met"
    );
    assert_eq!(
        get("#15 throughput ÷ nginx (OpenAI route, redb, c32)").verdict,
        "missed"
    );
    let p99 =
        get("#15 added p99 over the mock alone at 1,000 req/s (OpenAI route, SQLite, open loop)");
    assert_eq!(p99.verdict, "met", "{p99:?}");
    assert!(p99.measured.starts_with("+250 µs"), "{p99:?}");
    assert_eq!(
        get("#15 added p99 over the mock alone at 1,000 req/s (OpenAI route, redb, open loop)")
            .verdict,
        "missed"
    );
    assert_eq!(
        get(
            "#15 added p99 over the mock alone at 1,000 req/s (Anthropic route, SQLite, open loop)"
        )
        .verdict,
        "inconclusive (the direct run's p99 is higher: noisy baseline)"
    );
    let sse = get("#15 CPU per forwarded SSE event ÷ nginx (OpenAI route, SQLite, stream, c32)");
    assert_eq!(sse.verdict, "met");
    assert!(
        sse.measured
            .starts_with("1.50× (3.0 µs vs 2.0 µs per event"),
        "{sse:?}"
    );
    assert_eq!(
        get("#15 CPU per forwarded SSE event ÷ nginx (OpenAI route, redb, stream, c32)").verdict,
        "missed"
    );
    assert_eq!(
        get("#15 CPU per forwarded SSE event ÷ nginx (Anthropic route, redb, stream, c32)")
            .measured,
        "not measured"
    );
}

#[test]
fn runs_table_has_cpu_and_event_ratios_to_nginx_and_the_overflow_count() {
    let (md, _) = render(&issue15_lines().join("\n")).unwrap();
    // Sync: CPU/req, CPU ÷ nginx, mock CPU, overflowed, errors.
    assert!(md.contains(" 50.0 µs | 2.50 | – | 0 | 0 |"), "{md}");
    assert!(md.contains(" 55.0 µs | 2.75 | – | 7 | 0 |"), "{md}");
    // Not a gateway: no overflow count.
    assert!(md.contains(" 20.0 µs | – | – | – | 0 |"), "{md}");
    // Stream: events per response, CPU per event, its ratio to nginx.
    assert!(
        md.contains(" 60.0 µs | 1.50 | 20.0 | 3.0 µs | 1.50 |"),
        "{md}"
    );
    assert!(
        md.contains(" 100 µs | 2.50 | 20.0 | 5.0 µs | 2.50 |"),
        "{md}"
    );
    // The redb writer thread is counted as the trace writer.
    assert!(
        md.contains("| metis-redb openai-stream c32 | 100 µs | 70.0 µs | 25.0 µs | 5.0 µs |"),
        "{md}"
    );
}

#[test]
fn a_run_that_dropped_trace_events_gets_a_caveat() {
    let (md, _) = render(&issue15_lines().join("\n")).unwrap();
    assert!(
        md.contains(
            "metis-redb: load generator CPU 50%, 7 trace events overflowed the writer's queue"
        ),
        "{md}"
    );
    assert!(!md.contains("metis: load generator CPU 50%"), "{md}");
}
