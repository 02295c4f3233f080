//! The Prometheus text exposition format: escaped label sets, `# HELP`/`# TYPE` headers,
//! sample lines, whole counter and histogram families, and the trace commit-lag histogram.

use crate::series::{BUCKETS, Family, HistFamily, Labels, lock};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Escape a label value per the exposition format.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

pub(crate) fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    f: &Mutex<Family>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in &lock(f).series {
        let _ = writeln!(out, "{name}{} {v}", label_text(labels, None));
    }
}

pub(crate) fn write_hist(out: &mut String, name: &str, help: &str, f: &Mutex<HistFamily>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in &lock(f).series {
        for (i, b) in BUCKETS.iter().enumerate() {
            let le = b.to_string();
            let c = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{} {c}",
                label_text(labels, Some(("le", &le)))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            label_text(labels, Some(("le", "+Inf"))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), h.count);
    }
}

/// The trace writer's commit lag: how long the oldest event of each committed batch waited
/// (the window of acknowledged events a SIGKILL can lose), against the commit deadline.
pub(crate) fn write_commit_lag(out: &mut String, l: &metis_ports::trace::CommitLagStats) {
    use metis_ports::trace::COMMIT_LAG_BUCKETS_MS;
    let secs = |us: u64| us as f64 / 1e6;
    let name = "metis_trace_commit_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Queue-to-commit lag of the oldest event of each committed trace batch.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0u64;
    for (i, ms) in COMMIT_LAG_BUCKETS_MS.iter().enumerate() {
        cumulative += l.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *ms as f64 / 1e3
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", l.count);
    let _ = writeln!(out, "{name}_sum {}", secs(l.sum_us));
    let _ = writeln!(out, "{name}_count {}", l.count);
    gauge(
        out,
        "metis_trace_commit_lag_max_seconds",
        "Largest queue-to-commit lag of a trace batch since start.",
        secs(l.max_us),
    );
    gauge(
        out,
        "metis_trace_commit_deadline_seconds",
        "The trace writer's commit deadline (--trace-commit-deadline).",
        secs(l.deadline_us),
    );
    let _ = writeln!(
        out,
        "# HELP metis_trace_commit_deadline_misses_total Trace batches committed later than the deadline.\n# TYPE metis_trace_commit_deadline_misses_total counter\nmetis_trace_commit_deadline_misses_total {}",
        l.deadline_misses
    );
}

pub(crate) fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

pub(crate) fn counter(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line; label values are escaped.
pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {v}", parts.join(","));
}
