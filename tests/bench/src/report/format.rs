//! How numbers read in the report: human-sized durations and rates, signed deltas, ratios
//! that are absent rather than guessed, and the one-line run summary.

use super::RunRecord;
use std::fmt::Write as _;

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
    if let Some(c) = r.cpu_target_us_per_chunk() {
        let _ = write!(s, " ({c:.2} µs per SSE event)");
    }
    if let Some(c) = r.cpu_mock_us_per_req {
        let _ = write!(s, ", mock CPU {c:.1} µs/req");
    }
    let _ = write!(s, ", load-gen CPU {:.0}%", r.loadgen_cpu_util * 100.0);
    if let Some(n) = r.trace_overflowed {
        let _ = write!(s, ", trace events overflowed {n}");
    }
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

pub(super) fn signed_us(v: f64) -> String {
    if v < 0.0 {
        format!("−{}", us(-v))
    } else {
        format!("+{}", us(v))
    }
}

pub(super) fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

pub(super) fn rps(v: f64) -> String {
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

pub(super) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

pub(super) fn dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}
