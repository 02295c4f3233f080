//! The in-memory series: counter and histogram families keyed by sorted label sets, and the
//! two recording primitives (add to a counter, observe into a histogram).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Latency buckets in seconds (gateway overhead is sub-millisecond; upstream calls take
/// seconds).
pub(crate) const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

pub(crate) type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub(crate) struct Family {
    pub(crate) series: BTreeMap<Labels, f64>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Hist {
    pub(crate) counts: [u64; BUCKETS.len()],
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

#[derive(Debug, Default)]
pub(crate) struct HistFamily {
    pub(crate) series: BTreeMap<Labels, Hist>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) fn add(f: &Mutex<Family>, labels: Labels, v: f64) {
    *lock(f).series.entry(labels).or_insert(0.0) += v;
}

pub(crate) fn observe(f: &Mutex<HistFamily>, labels: Labels, v: f64) {
    let mut g = lock(f);
    let h = g.series.entry(labels).or_default();
    for (i, b) in BUCKETS.iter().enumerate() {
        if v <= *b
            && let Some(c) = h.counts.get_mut(i)
        {
            *c += 1;
        }
    }
    h.sum += v;
    h.count += 1;
}
