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
