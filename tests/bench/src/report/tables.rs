//! The per-scenario runs tables (each target against the direct baseline and against nginx
//! on the same workload and load) and the per-thread CPU table of the gateway.

use super::format::{dash, ratio, rps, signed_us, us};
use super::{Input, Load, RunRecord};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Scenario descriptions, in report order.
const SCENARIOS: [(&str, &str); 6] = [
    (
        "openai-sync",
        "OpenAI Chat Completions, non-streaming (`gpt-5` → OpenAI-shaped upstream)",
    ),
    ("openai-stream", "OpenAI Chat Completions, `stream: true`"),
    (
        "anthropic-sync",
        "Anthropic Messages, non-streaming (`haiku` → Anthropic-shaped upstream)",
    ),
    ("anthropic-stream", "Anthropic Messages, `stream: true`"),
    (
        "openai-to-anthropic-sync",
        "OpenAI-shaped request for `haiku` (translated to Anthropic Messages and back)",
    ),
    (
        "openai-stream-slow",
        "OpenAI streams held open by a paced mock (RSS with many concurrent streams)",
    ),
];

fn scenario_order(s: &str) -> usize {
    SCENARIOS
        .iter()
        .position(|(n, _)| *n == s)
        .unwrap_or(SCENARIOS.len())
}

pub(super) fn runs_table(input: &Input, md: &mut String) {
    let mut groups: BTreeMap<(usize, String, u8, u64), Vec<&RunRecord>> = BTreeMap::new();
    for r in &input.runs {
        let (mode, n) = match r.load {
            Load::Closed { concurrency } => (0, concurrency as u64),
            Load::Open { rate, .. } => (1, rate.round() as u64),
        };
        let key = (scenario_order(&r.scenario), r.scenario.clone(), mode, n);
        let g = groups.entry(key).or_default();
        // A re-run of the same target replaces the earlier one.
        g.retain(|x| x.target != r.target);
        g.push(r);
    }
    for ((_, scenario, _, _), runs) in groups {
        let Some(first) = runs.first().copied() else {
            continue;
        };
        let desc = SCENARIOS
            .iter()
            .find(|(n, _)| *n == scenario)
            .map_or(scenario.as_str(), |(_, d)| d);
        let _ = writeln!(
            md,
            "### {scenario} — {}\n\n{desc}.\n",
            first.load.describe()
        );
        let stream = first.is_stream();
        let _ = writeln!(
            md,
            "| Target | req/s | req/s ÷ direct | req/s ÷ nginx | p50 | p90 | p99 | max | added p50 | added p99 |{} CPU/req (target) | CPU ÷ nginx |{} CPU/req (mock) | overflowed | errors |",
            if stream { " TTFB p50 | TTFB p99 |" } else { "" },
            if stream {
                " SSE events/resp | CPU/event (target) | CPU/event ÷ nginx |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|{}--:|--:|{}--:|--:|---|",
            if stream { "--:|--:|" } else { "" },
            if stream { "--:|--:|--:|" } else { "" }
        );
        for r in runs {
            let base = input.baseline_of(r);
            let nginx = input.find("nginx", &r.scenario, &r.load.key());
            let x_direct = base.and_then(|b| ratio(r.throughput_rps, b.throughput_rps));
            let nginx = nginx.filter(|_| r.target != "nginx");
            let x_nginx = nginx.and_then(|n| ratio(r.throughput_rps, n.throughput_rps));
            let cpu_x_nginx =
                nginx.and_then(|n| ratio(r.cpu_target_us_per_req?, n.cpu_target_us_per_req?));
            let errors = if r.errors.is_empty() {
                "0".to_owned()
            } else {
                r.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                rps(r.throughput_rps),
                dash(x_direct, |x| format!("{x:.2}")),
                dash(x_nginx, |x| format!("{x:.2}")),
                us(r.latency.p50_us),
                us(r.latency.p90_us),
                us(r.latency.p99_us),
                us(r.latency.max_us),
                dash(base, |b| signed_us(r.latency.p50_us - b.latency.p50_us)),
                dash(base, |b| signed_us(r.latency.p99_us - b.latency.p99_us)),
            );
            if stream {
                let _ = write!(md, " {} | {} |", us(r.ttfb.p50_us), us(r.ttfb.p99_us));
            }
            let _ = write!(
                md,
                " {} | {} |",
                dash(r.cpu_target_us_per_req, us),
                dash(cpu_x_nginx, |x| format!("{x:.2}")),
            );
            if stream {
                let chunk_x_nginx = nginx.and_then(|n| {
                    ratio(r.cpu_target_us_per_chunk()?, n.cpu_target_us_per_chunk()?)
                });
                let _ = write!(
                    md,
                    " {} | {} | {} |",
                    dash(r.sse_events_per_req, |n| format!("{n:.1}")),
                    dash(r.cpu_target_us_per_chunk(), us),
                    dash(chunk_x_nginx, |x| format!("{x:.2}")),
                );
            }
            let _ = writeln!(
                md,
                " {} | {} | {} |",
                dash(r.cpu_mock_us_per_req, us),
                dash(r.trace_overflowed, |n| n.to_string()),
                errors
            );
        }
        let notes: Vec<String> = input
            .runs
            .iter()
            .filter(|r| r.scenario == scenario && r.load == first.load)
            .filter(|r| {
                r.loadgen_cpu_util > 0.9
                    || r.late_sends.unwrap_or(0) > 0
                    || r.trace_overflowed.unwrap_or(0) > 0
            })
            .map(|r| {
                let mut c = format!(
                    "{}: load generator CPU {:.0}%{}",
                    r.target,
                    r.loadgen_cpu_util * 100.0,
                    r.late_sends
                        .map(|l| format!(", {l} sends more than 2 ms late"))
                        .unwrap_or_default()
                );
                if let Some(n) = r.trace_overflowed.filter(|n| *n > 0) {
                    let _ = write!(
                        c,
                        ", {n} trace events overflowed the writer's queue (counted, not \
                         stored; its CPU per request excludes writing them)"
                    );
                }
                c
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "\nCaveats: {}.", notes.join("; "));
        }
        let _ = writeln!(md);
    }
}

/// The trace writer thread's name as `/proc` shows it, per backend.
const WRITER_THREADS: [&str; 2] = ["metis-trace-wri", "metis-redb-writ"];

/// CPU per request of the gateway's threads: request handling vs the trace writer.
pub(super) fn threads_table(input: &Input, md: &mut String) {
    let rows: Vec<&RunRecord> = input
        .runs
        .iter()
        .filter(|r| r.target.starts_with("metis") && !r.target_threads_us_per_req.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## metis CPU per request by thread\n\nFrom `/proc/PID/task/*/stat` over the measured window. \
         `tokio-rt-worker` serves HTTP in and out (one worker: the runtime sees one CPU); \
         the trace writer thread is `metis-trace-wri` (SQLite) or `metis-redb-writ` (redb), \
         thread names cut to 15 bytes by the kernel.\n"
    );
    let _ = writeln!(
        md,
        "| Run | total | tokio-rt-worker | trace writer | other threads |\n|---|--:|--:|--:|--:|"
    );
    for r in rows {
        let t = &r.target_threads_us_per_req;
        let worker = t.get("tokio-rt-worker").copied().unwrap_or(0.0);
        let writer: f64 = WRITER_THREADS.iter().filter_map(|n| t.get(*n)).sum();
        let total: f64 = t.values().sum();
        let _ = writeln!(
            md,
            "| {} {} {} | {} | {} | {} | {} |",
            r.target,
            r.scenario,
            r.load.key(),
            us(total),
            us(worker),
            us(writer),
            // Clamped: per-thread ticks rounded to the clock tick can sum past the total.
            us((total - worker - writer).max(0.0))
        );
    }
    let _ = writeln!(md);
}
