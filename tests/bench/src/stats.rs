//! Latency summaries: nearest-rank percentiles over every sample of a run.
//!
//! Samples are nanoseconds; summaries are microseconds (as `f64`, so sub-microsecond
//! differences survive into the JSON).

use serde::{Deserialize, Serialize};

/// Percentiles of one set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of sorted samples; 0 when empty.
#[must_use]
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Sort `samples` (nanoseconds) in place and summarise them.
#[must_use]
pub fn summarize(samples: &mut [u64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
    let n = samples.len();
    Summary {
        count: n as u64,
        mean_us: sum as f64 / n as f64 / 1000.0,
        p50_us: us(percentile(samples, 50.0)),
        p90_us: us(percentile(samples, 90.0)),
        p99_us: us(percentile(samples, 99.0)),
        p999_us: us(percentile(samples, 99.9)),
        max_us: us(samples[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.1), 1);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.9), 7);
        // Ten samples: p99 is the largest one, p50 the fifth.
        let w: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&w, 99.0), 10);
        assert_eq!(percentile(&w, 50.0), 5);
    }

    #[test]
    fn summary_sorts_and_converts_to_microseconds() {
        let mut v = vec![3_000, 1_000, 2_000, 10_000];
        let s = summarize(&mut v);
        assert_eq!(s.count, 4);
        assert!((s.mean_us - 4.0).abs() < 1e-9);
        assert!((s.p50_us - 2.0).abs() < 1e-9);
        assert!((s.max_us - 10.0).abs() < 1e-9);
        assert_eq!(summarize(&mut []), Summary::default());
    }
}
