//! CPU time and resident memory of processes, from `/proc` (Linux only).
//!
//! A target is named by its root process id; its descendants are included, so an nginx
//! master with its worker, or a Python launcher with its server process, count as one target.
//! CPU time is `utime + stime` from `/proc/PID/stat` (clock ticks, all threads, including
//! threads that already exited); time of a child that exited during a run is lost, which the
//! benchmark avoids by starting every target before it is measured.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

/// Fields after the `(comm)` field of a `/proc/PID/stat` line (the command name may contain
/// spaces and parentheses, so split after the last `)`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// `(ppid, utime + stime in ticks)` from the text of `/proc/PID/stat`.
#[must_use]
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let f = stat_fields(stat)?;
    // After the comm: [0] state, [1] ppid, ..., [11] utime, [12] stime.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `VmRSS` in kB from the text of `/proc/PID/status`.
#[must_use]
pub fn parse_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Every process on the machine as `pid -> (ppid, cpu ticks)`.
fn all_processes() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(v) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            out.insert(pid, v);
        }
    }
    out
}

/// The roots and all their living descendants.
#[must_use]
pub fn with_descendants(roots: &[u32]) -> BTreeSet<u32> {
    let procs = all_processes();
    let mut set: BTreeSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| procs.contains_key(p))
        .collect();
    loop {
        let before = set.len();
        for (pid, (ppid, _)) in &procs {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// CPU ticks of one process (all its threads), if it still exists.
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map(|(_, t)| t)
}

/// Resident memory of one process in kB, if it still exists.
#[must_use]
pub fn rss_kb(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_rss_kb(&s))
}

/// A set of processes measured together.
#[derive(Debug, Clone)]
pub struct ProcSet {
    pids: BTreeSet<u32>,
}

impl ProcSet {
    /// The roots and their descendants as they are now.
    #[must_use]
    pub fn new(roots: &[u32]) -> Self {
        Self {
            pids: with_descendants(roots),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        self.pids.iter().copied().collect()
    }

    /// Summed CPU ticks of the set's processes still alive.
    #[must_use]
    pub fn cpu_ticks(&self) -> u64 {
        self.pids.iter().filter_map(|&p| cpu_ticks(p)).sum()
    }

    /// CPU ticks of every living thread of the set, summed by thread name (`comm`), e.g.
    /// `tokio-rt-worker` or `metis-trace-wri`. Threads that already exited are not counted.
    #[must_use]
    pub fn thread_ticks(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for pid in &self.pids {
            let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for entry in dir.flatten() {
                let base = entry.path();
                let Ok(stat) = fs::read_to_string(base.join("stat")) else {
                    continue;
                };
                let Some((_, ticks)) = parse_stat(&stat) else {
                    continue;
                };
                let name = fs::read_to_string(base.join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                *out.entry(name).or_insert(0) += ticks;
            }
        }
        out
    }

    /// Summed resident memory in kB.
    #[must_use]
    pub fn rss_kb(&self) -> u64 {
        self.pids.iter().filter_map(|&p| rss_kb(p)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "4242 (tokio (runtime) w) S 17 4242 17 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some((17, 325)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tmetis\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kb(status), Some(12345));
        assert_eq!(parse_rss_kb("Name: x\n"), None);
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        let set = ProcSet::new(&[me]);
        assert!(set.pids().contains(&me));
        assert!(set.rss_kb() > 0);
        assert!(!set.thread_ticks().is_empty());
    }
}
