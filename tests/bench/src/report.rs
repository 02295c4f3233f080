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

mod checks;
mod format;
mod tables;
#[cfg(test)]
mod tests;

pub use checks::{Check, checks};
pub use format::{one_line, us};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::Summary;
use format::{dash, mb, rps};
use tables::{runs_table, threads_table};

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
    /// SSE events per successful response (streams only).
    #[serde(default)]
    pub sse_events_per_req: Option<f64>,
    /// Trace events the gateway dropped (queue full) during the run, from its `/metrics`;
    /// `None` when not read (not a gateway, or no `--metrics-url`).
    #[serde(default)]
    pub trace_overflowed: Option<u64>,
}

impl RunRecord {
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn is_stream(&self) -> bool {
        self.scenario.contains("stream")
    }

    /// Target CPU per forwarded SSE event: CPU per request over the events per response.
    #[must_use]
    pub fn cpu_target_us_per_chunk(&self) -> Option<f64> {
        match (self.cpu_target_us_per_req, self.sse_events_per_req) {
            (Some(c), Some(n)) if n > 0.0 => Some(c / n),
            _ => None,
        }
    }
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
