//! The benchmark record format and the results report (`results.md`, `results.json`).
//!
//! Input is JSON lines: `{"kind":"run",…}` records written by `bench-load run`, and facts
//! written by `scripts/bench.sh` and `bench-trace`:
//! - `{"kind":"meta", …}`: date, machine, command, CPU pinning, tool versions;
//! - `{"kind":"rss","target":T,"idle_kb":N}`: resident memory of an idle target;
//! - `{"kind":"trace", …}`: the trace-writer benchmark;
//! - `{"kind":"note","target":T,"text":…}`: what could not be run, and why.
//!
//! Invariants:
//! - "Added" latency and throughput ratios compare runs of the *same* workload and load
//!   (scenario, mode, concurrency or rate) from the same file; a missing counterpart shows as
//!   `–`, never as a guess.
//! - Every issue target appears in the targets table, met, missed, or "not measured" with
//!   the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::Summary;

/// How load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// Fixed concurrency.
    Closed { concurrency: usize },
    /// Fixed rate.
    Open { rate: f64, connections: usize },
}

impl Load {
    /// `c32`, `r1000`.
    #[must_use]
    pub fn key(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("c{concurrency}"),
            Load::Open { rate, .. } => format!("r{}", rate.round() as u64),
        }
    }

    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
            Load::Open { rate, connections } => {
                format!(
                    "open loop, {} req/s ({connections} connections)",
                    rate.round()
                )
            }
        }
    }
}

/// One load-generator run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub kind: String,
    pub target: String,
    pub scenario: String,
    #[serde(default)]
    pub note: String,
    /// Workload of the `direct` run this one is compared with (default: `scenario`).
    #[serde(default)]
    pub baseline: Option<String>,
    pub load: Load,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_rps: f64,
    pub latency: Summary,
    pub ttfb: Summary,
    pub co_latency: Option<Summary>,
    pub late_sends: Option<u64>,
    pub cpu_target_s: Option<f64>,
    pub cpu_target_us_per_req: Option<f64>,
    pub target_cpu_util: Option<f64>,
    pub cpu_mock_s: Option<f64>,
    pub cpu_mock_us_per_req: Option<f64>,
    pub loadgen_cpu_util: f64,
    pub target_rss_start_kb: Option<u64>,
    pub target_rss_max_kb: Option<u64>,
    pub target_pids: Vec<u32>,
    /// CPU time per successful request by thread name (`comm`) of the target.
    #[serde(default)]
    pub target_threads_us_per_req: BTreeMap<String, f64>,
}

impl RunRecord {
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn is_stream(&self) -> bool {
        self.scenario.contains("stream")
    }
}

/// A short human summary of one run (stderr of `bench-load run`).
#[must_use]
pub fn one_line(r: &RunRecord) -> String {
    let mut s = format!(
        "{} {} {}: {:.0} req/s, p50 {} p90 {} p99 {} max {}",
        r.target,
        r.scenario,
        r.load.key(),
        r.throughput_rps,
        us(r.latency.p50_us),
        us(r.latency.p90_us),
        us(r.latency.p99_us),
        us(r.latency.max_us)
    );
    if r.is_stream() {
        let _ = write!(
            s,
            ", ttfb p50 {} p99 {}",
            us(r.ttfb.p50_us),
            us(r.ttfb.p99_us)
        );
    }
    if let Some(c) = r.cpu_target_us_per_req {
        let _ = write!(s, ", target CPU {c:.1} µs/req");
    }
    if let Some(c) = r.cpu_mock_us_per_req {
        let _ = write!(s, ", mock CPU {c:.1} µs/req");
    }
    let _ = write!(s, ", load-gen CPU {:.0}%", r.loadgen_cpu_util * 100.0);
    if !r.errors.is_empty() {
        let _ = write!(s, ", errors {:?}", r.errors);
    }
    s
}

/// A duration in microseconds, human-sized.
#[must_use]
pub fn us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} s", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn signed_us(v: f64) -> String {
    if v < 0.0 {
        format!("−{}", us(-v))
    } else {
        format!("+{}", us(v))
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn rps(v: f64) -> String {
    if v >= 100.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

/// Parsed input.
#[derive(Debug, Default)]
pub struct Input {
    pub runs: Vec<RunRecord>,
    pub facts: Vec<Value>,
}

/// Split JSON lines into runs and facts. Blank lines are skipped.
///
/// # Errors
/// A line that is not JSON, or a `run` line that does not match [`RunRecord`].
pub fn parse_lines(text: &str) -> anyhow::Result<Input> {
    let mut input = Input::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("line {}: not JSON: {e}", i + 1))?;
        if v.get("kind").and_then(Value::as_str) == Some("run") {
            let r: RunRecord = serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("line {}: bad run record: {e}", i + 1))?;
            input.runs.push(r);
        } else {
            input.facts.push(v);
        }
    }
    Ok(input)
}

impl Input {
    /// The last run of `target` on `scenario` under `load` (a re-run replaces an earlier one).
    #[must_use]
    pub fn find(&self, target: &str, scenario: &str, load: &str) -> Option<&RunRecord> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.target == target && r.scenario == scenario && r.load.key() == load)
    }

    fn facts_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.facts
            .iter()
            .filter(move |f| f.get("kind").and_then(Value::as_str) == Some(kind))
    }

    fn idle_rss_kb(&self, target: &str) -> Option<u64> {
        self.facts_of("rss")
            .filter(|f| f.get("target").and_then(Value::as_str) == Some(target))
            .filter_map(|f| f.get("idle_kb").and_then(Value::as_u64))
            .last()
    }

    fn trace(&self) -> Option<&Value> {
        self.facts_of("trace").last()
    }

    fn baseline_of(&self, r: &RunRecord) -> Option<&RunRecord> {
        if r.target == "direct" {
            return None;
        }
        let scenario = r.baseline.as_deref().unwrap_or(&r.scenario);
        self.find("direct", scenario, &r.load.key())
    }
}

/// One row of the targets table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub target: String,
    pub goal: String,
    pub measured: String,
    pub verdict: String,
}

fn verdict(ok: bool) -> String {
    if ok { "met".into() } else { "missed".into() }
}

fn not_measured(why: &str) -> (String, String) {
    ("not measured".into(), why.to_owned())
}

/// The issue's targets, evaluated on `input`.
#[must_use]
pub fn checks(input: &Input) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |target: &str, goal: &str, (measured, verdict): (String, String)| {
        out.push(Check {
            target: target.into(),
            goal: goal.into(),
            measured,
            verdict,
        });
    };
    let metis32 = input.find("metis", "openai-sync", "c32");
    let nginx32 = input.find("nginx", "openai-sync", "c32");

    push(
        "metis CPU per request (OpenAI route, auth + trace writing, c32)",
        "≤ 60 µs",
        match metis32.and_then(|r| r.cpu_target_us_per_req) {
            Some(c) => (format!("{c:.1} µs"), verdict(c <= 60.0)),
            None => not_measured("no metis openai-sync c32 run with CPU data"),
        },
    );
    for (t, name, reference) in [
        (
            "nginx",
            "nginx CPU per request (plain proxy, c32)",
            "≈ 30–45 µs (reference)",
        ),
        (
            "litellm",
            "LiteLLM CPU per request (c32)",
            "≈ 16 ms (reference)",
        ),
        ("portkey", "Portkey CPU per request (c32)", "(reference)"),
    ] {
        push(
            name,
            reference,
            match input
                .find(t, "openai-sync", "c32")
                .and_then(|r| r.cpu_target_us_per_req)
            {
                Some(c) => (us(c), "reference".into()),
                None => not_measured(&format!("no {t} openai-sync c32 run")),
            },
        );
    }
    push(
        "agentgateway CPU per request",
        "≈ 225 µs (reference)",
        not_measured("not run here: no registry package (GitHub-only source), see BENCHMARKS.md"),
    );
    push(
        "metis throughput vs nginx (c32, moonshot)",
        "≥ 0.8×",
        match (metis32, nginx32) {
            (Some(m), Some(n)) => match ratio(m.throughput_rps, n.throughput_rps) {
                Some(x) => (
                    format!(
                        "{x:.2}× ({} vs {} req/s)",
                        rps(m.throughput_rps),
                        rps(n.throughput_rps)
                    ),
                    verdict(x >= 0.8),
                ),
                None => not_measured("nginx throughput was 0"),
            },
            _ => not_measured("metis or nginx openai-sync c32 run missing"),
        },
    );
    let m1000 = input.find("metis", "openai-sync", "r1000");
    let d1000 = input.find("direct", "openai-sync", "r1000");
    push(
        "metis added p99 latency at 1,000 req/s (open loop)",
        "< 1 ms",
        match (m1000, d1000) {
            (Some(m), Some(d)) => {
                let added = m.latency.p99_us - d.latency.p99_us;
                (
                    format!(
                        "{} (p99 {} vs {} direct)",
                        signed_us(added),
                        us(m.latency.p99_us),
                        us(d.latency.p99_us)
                    ),
                    verdict(added < 1000.0 && m.error_count() == 0),
                )
            }
            _ => not_measured("metis or direct openai-sync r1000 run missing"),
        },
    );
    for (t, name, goal, min) in [
        (
            "litellm",
            "metis throughput vs LiteLLM (c32)",
            "≥ 100×",
            100.0,
        ),
        (
            "portkey",
            "metis throughput vs Portkey (c32)",
            "≥ 10×",
            10.0,
        ),
    ] {
        let peer = input.find(t, "openai-sync", "c32");
        push(
            name,
            goal,
            match (metis32, peer) {
                (Some(m), Some(p)) if p.ok > 0 => match ratio(m.throughput_rps, p.throughput_rps) {
                    Some(x) => (
                        format!(
                            "{x:.0}× ({} vs {} req/s)",
                            rps(m.throughput_rps),
                            rps(p.throughput_rps)
                        ),
                        verdict(x >= min),
                    ),
                    None => not_measured("peer throughput was 0"),
                },
                (Some(_), Some(_)) => {
                    not_measured(&format!("{t} answered no request successfully"))
                }
                _ => not_measured(&format!("{t} did not run (see notes)")),
            },
        );
    }
    let trace_eps = input
        .trace()
        .and_then(|t| t.pointer("/gateway_writer/events_per_s"))
        .and_then(Value::as_f64);
    push(
        "trace writer sustained events/s",
        "≥ 50,000",
        match trace_eps {
            Some(e) => (rps(e), verdict(e >= 50_000.0)),
            None => not_measured("no trace benchmark record"),
        },
    );
    for (load, base, what) in [
        ("r1000", m1000, "1,000 req/s"),
        ("c32", metis32, "concurrency 32"),
    ] {
        let stalled = input.find("metis-writer-stalled", "openai-sync", load);
        push(
            &format!("metis p99 at {what} while the trace writer is stalled"),
            "(no goal: the request path must not wait on the writer)",
            match (stalled, base) {
                (Some(s), Some(m)) => (
                    format!(
                        "p99 {} vs {} with a free writer; {} req/s vs {}; {} errors",
                        us(s.latency.p99_us),
                        us(m.latency.p99_us),
                        rps(s.throughput_rps),
                        rps(m.throughput_rps),
                        s.error_count()
                    ),
                    "reference".into(),
                ),
                _ => not_measured("writer-stall run missing"),
            },
        );
    }
    let quota = input.facts_of("quota").last();
    let q32 = input.find("metis-quota", "openai-sync", "c32");
    push(
        "spend-quota check per request (key with daily and monthly caps, 1M events of it in the trace, c32)",
        "(no goal)",
        match (
            q32.and_then(|q| q.cpu_target_us_per_req),
            metis32.and_then(|m| m.cpu_target_us_per_req),
        ) {
            (Some(q), Some(m)) => (
                format!(
                    "{} CPU/req vs {} without caps ({}); start-up to ready with the 1M-event trace: {}",
                    us(q),
                    us(m),
                    signed_us(q - m),
                    quota
                        .and_then(|f| f.get("startup_s"))
                        .and_then(Value::as_f64)
                        .map_or_else(|| "–".to_owned(), |s| format!("{s:.2} s"))
                ),
                "reference".into(),
            ),
            _ => not_measured("metis-quota or metis openai-sync c32 run missing"),
        },
    );
    let storage = input.facts_of("storage").last();
    let sf = |k: &str| storage.and_then(|f| f.get(k)).and_then(Value::as_f64);
    push(
        "metis backup of a 1M-event trace",
        "(no goal)",
        match (sf("backup_mb_s"), sf("db_mb"), sf("backup_s")) {
            (Some(r), Some(m), Some(t)) => (
                format!("{r:.0} MB/s ({m:.0} MB in {t:.2} s)"),
                "reference".into(),
            ),
            _ => not_measured("no storage record (see notes)"),
        },
    );
    push(
        "metis trace prune (keep 30 of 60 days, 1M events)",
        "(no goal)",
        match (sf("prune_rows_s"), sf("pruned_rows"), sf("prune_s")) {
            (Some(r), Some(n), Some(t)) => (
                format!("{} rows/s ({} rows in {t:.2} s)", rps(r), rps(n)),
                "reference".into(),
            ),
            _ => not_measured("no storage record (see notes)"),
        },
    );
    push(
        "metis idle RSS",
        "< 30 MB",
        match input.idle_rss_kb("metis") {
            Some(k) => (mb(k), verdict(k < 30 * 1024)),
            None => not_measured("no idle RSS sample"),
        },
    );
    let streams = input.find("metis", "openai-stream-slow", "c256");
    push(
        "metis RSS with 256 concurrent streams",
        "< 100 MB",
        match streams.and_then(|r| r.target_rss_max_kb) {
            Some(k) => (
                format!(
                    "{} peak ({} stream errors)",
                    mb(k),
                    streams.map_or(0, RunRecord::error_count)
                ),
                verdict(k < 100 * 1024),
            ),
            None => not_measured("no 256-stream run"),
        },
    );
    out
}

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

fn runs_table(input: &Input, md: &mut String) {
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
            "| Target | req/s | × direct | × nginx | p50 | p90 | p99 | max | added p50 | added p99 |{} CPU/req (target) | CPU/req (mock) | errors |",
            if stream { " TTFB p50 | TTFB p99 |" } else { "" }
        );
        let _ = writeln!(
            md,
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|{}--:|--:|---|",
            if stream { "--:|--:|" } else { "" }
        );
        for r in runs {
            let base = input.baseline_of(r);
            let nginx = input.find("nginx", &r.scenario, &r.load.key());
            let x_direct = base.and_then(|b| ratio(r.throughput_rps, b.throughput_rps));
            let x_nginx = nginx
                .filter(|_| r.target != "nginx")
                .and_then(|n| ratio(r.throughput_rps, n.throughput_rps));
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
            let _ = writeln!(
                md,
                " {} | {} | {} |",
                dash(r.cpu_target_us_per_req, us),
                dash(r.cpu_mock_us_per_req, us),
                errors
            );
        }
        let notes: Vec<String> = input
            .runs
            .iter()
            .filter(|r| r.scenario == scenario && r.load == first.load)
            .filter(|r| r.loadgen_cpu_util > 0.9 || r.late_sends.unwrap_or(0) > 0)
            .map(|r| {
                format!(
                    "{}: load generator CPU {:.0}%{}",
                    r.target,
                    r.loadgen_cpu_util * 100.0,
                    r.late_sends
                        .map(|l| format!(", {l} sends more than 2 ms late"))
                        .unwrap_or_default()
                )
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "\nCaveats: {}.", notes.join("; "));
        }
        let _ = writeln!(md);
    }
}

/// CPU per request of the gateway's threads: request handling vs the trace writer.
fn threads_table(input: &Input, md: &mut String) {
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
         `metis-trace-wri` is the SQLite trace writer thread.\n"
    );
    let _ = writeln!(
        md,
        "| Run | total | tokio-rt-worker | metis-trace-wri | other threads |\n|---|--:|--:|--:|--:|"
    );
    for r in rows {
        let t = &r.target_threads_us_per_req;
        let worker = t.get("tokio-rt-worker").copied().unwrap_or(0.0);
        let writer = t.get("metis-trace-wri").copied().unwrap_or(0.0);
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
            us(total - worker - writer)
        );
    }
    let _ = writeln!(md);
}

/// Render `results.md` and `results.json` from JSON lines.
///
/// # Errors
/// As [`parse_lines`].
pub fn render(text: &str) -> anyhow::Result<(String, String)> {
    let input = parse_lines(text)?;
    let checks = checks(&input);
    let meta = input
        .facts_of("meta")
        .last()
        .cloned()
        .unwrap_or(Value::Null);
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    for (k, label) in [
        ("date", "Date"),
        ("machine", "Machine"),
        ("pinning", "CPU pinning"),
        ("command", "Command"),
        ("mock", "Mock upstream"),
    ] {
        if let Some(v) = meta.get(k).and_then(Value::as_str) {
            let _ = writeln!(md, "- {label}: {v}");
        }
    }
    if let Some(vs) = meta.get("versions").and_then(Value::as_object) {
        let list: Vec<String> = vs
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .collect();
        let _ = writeln!(md, "- Versions: {}", list.join("; "));
    }
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(
        md,
        "| Target | Goal | Measured | Verdict |\n|---|---|---|---|"
    );
    for c in &checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.target, c.goal, c.measured, c.verdict
        );
    }
    let _ = writeln!(
        md,
        "\n## Runs\n\nLatency is measured by the load generator per request; \"added\" is this row minus \
         the `direct` row (same workload, same load); CPU/req is the process CPU time (user + system, \
         `/proc/PID/stat`, all threads and child processes) over the measured window divided by the \
         successful requests.\n"
    );
    runs_table(&input, &mut md);

    threads_table(&input, &mut md);

    let _ = writeln!(
        md,
        "## Memory\n\n| Target | idle RSS | peak RSS under load (run) |\n|---|--:|--:|"
    );
    let mut targets: Vec<&str> = input.runs.iter().map(|r| r.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    for t in targets {
        let peak = input
            .runs
            .iter()
            .filter(|r| r.target == t)
            .filter_map(|r| r.target_rss_max_kb.map(|k| (k, r)))
            .max_by_key(|(k, _)| *k);
        if input.idle_rss_kb(t).is_none() && peak.is_none() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {t} | {} | {} |",
            dash(input.idle_rss_kb(t), mb),
            dash(peak, |(k, r)| format!(
                "{} ({} {})",
                mb(k),
                r.scenario,
                r.load.key()
            )),
        );
    }

    if let Some(t) = input.trace() {
        let _ = writeln!(md, "\n## Trace writer\n");
        let row = |name: &str, v: Option<&Value>| -> String {
            let g = |k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_f64);
            format!(
                "| {name} | {} | {} | {} | {} |",
                dash(g("events"), rps),
                dash(g("seconds"), |s| format!("{s:.2} s")),
                dash(g("events_per_s"), rps),
                dash(g("lost"), |l| format!("{l:.0}")),
            )
        };
        let _ = writeln!(
            md,
            "| Writer | events | time | events/s | lost |\n|---|--:|--:|--:|--:|"
        );
        let _ = writeln!(
            md,
            "{}",
            row(
                "gateway writer (`SqliteTraceStore`: emit → queue → batch commit)",
                t.get("gateway_writer")
            )
        );
        let _ = writeln!(
            md,
            "{}",
            row(
                "raw rusqlite insert loop (same schema, same batch size)",
                t.get("raw_rusqlite")
            )
        );
        if let Some(n) = t.get("note").and_then(Value::as_str) {
            let _ = writeln!(md, "\n{n}");
        }
    }
    let ablation: Vec<&Value> = input.facts_of("trace_ablation").collect();
    if !ablation.is_empty() {
        let _ = writeln!(
            md,
            "\nWhere the writer's time goes: the raw insert loop by rows per transaction and index \
             set (CPU time of the inserting process per event).\n\n\
             | Schema | rows per transaction | events/s | CPU per event |\n|---|--:|--:|--:|"
        );
        for a in ablation {
            let f = |k: &str| a.pointer(&format!("/result/{k}")).and_then(Value::as_f64);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                a.get("schema").and_then(Value::as_str).unwrap_or("?"),
                a.get("rows_per_tx").and_then(Value::as_u64).unwrap_or(0),
                dash(f("events_per_s"), rps),
                dash(f("cpu_us_per_event"), us),
            );
        }
    }

    let notes: Vec<&Value> = input.facts_of("note").collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(
                md,
                "- **{}**: {}",
                n.get("target").and_then(Value::as_str).unwrap_or("-"),
                n.get("text").and_then(Value::as_str).unwrap_or("")
            );
        }
    }

    let json = json!({
        "meta": meta,
        "targets": checks,
        "runs": input.runs,
        "facts": input.facts,
    });
    Ok((md, serde_json::to_string_pretty(&json)?))
}

#[cfg(test)]
mod tests {
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
}
