//! Process resources under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …), so stock dashboards
//! and alerts work unchanged. Read from `/proc/self` at scrape time (Linux; elsewhere the
//! family is simply absent): a handful of small in-memory reads, no syscalls on the
//! request path.

use std::fmt::Write as _;

/// Kernel clock ticks per second for `/proc/<pid>/stat` times: `USER_HZ`, which the Linux
/// ABI fixes at 100 on every architecture this binary is built for.
const USER_HZ: f64 = 100.0;

/// The values this module reads, when readable.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Fields of `/proc/self/stat` after the `(comm)` field, which may itself contain spaces
/// and parentheses (hence the split at the last `)`).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Parse `/proc/self/stat` (and `btime` from `/proc/stat`) into CPU time, threads, virtual
/// size and start time.
pub(crate) fn parse_stat(stat: &str, proc_stat: &str, into: &mut ProcessStats) {
    // After the comm field: state is field 3 of proc(5), i.e. index 0 here.
    let f = stat_fields(stat);
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (num(11), num(12)) {
        into.cpu_seconds = Some((utime + stime) as f64 / USER_HZ);
    }
    into.threads = num(17);
    into.virtual_bytes = num(20);
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(start_ticks), Some(btime)) = (num(19), btime) {
        into.start_time_seconds = Some(btime as f64 + start_ticks as f64 / USER_HZ);
    }
}

/// `VmRSS` from `/proc/self/status` (kB there; independent of the page size).
pub(crate) fn parse_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
pub(crate) fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|soft| soft.parse::<u64>().ok())
}

fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    if let (Ok(stat), Ok(proc_stat)) = (
        std::fs::read_to_string("/proc/self/stat"),
        std::fs::read_to_string("/proc/stat"),
    ) {
        parse_stat(&stat, &proc_stat, &mut s);
    }
    s.resident_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| parse_rss(&t));
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    s.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| parse_max_fds(&t));
    s
}

/// Append the process families that could be read.
pub(crate) fn render(out: &mut String) {
    write(out, &read());
}

pub(crate) fn write(out: &mut String, s: &ProcessStats) {
    let mut one = |name: &str, kind: &str, help: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds.map(|v| v.to_string()),
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes.map(|v| v.to_string()),
    );
    one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s.virtual_bytes.map(|v| v.to_string()),
    );
    one(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        s.threads.map(|v| v.to_string()),
    );
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds.map(|v| v.to_string()),
    );
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s.open_fds.map(|v| v.to_string()),
    );
    one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        s.max_fds.map(|v| v.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_into_the_standard_process_metrics() {
        // A comm with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (metis (gw) x) S 1 4242 4242 0 -1 4194560 2100 0 0 0 250 150 0 0 20 0 9 0 12345 1048576000 5000 18446744073709551615";
        let mut s = ProcessStats::default();
        parse_stat(stat, "cpu 1 2 3\nbtime 1700000000\n", &mut s);
        assert_eq!(s.cpu_seconds, Some(4.0));
        assert_eq!(s.threads, Some(9));
        assert_eq!(s.virtual_bytes, Some(1_048_576_000));
        assert_eq!(s.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(
            parse_rss("Name:\tmetis\nVmRSS:\t   20480 kB\n"),
            Some(20_971_520)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn live_process_metrics_are_read_on_linux() {
        let mut out = String::new();
        render(&mut out);
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
            ] {
                assert!(
                    out.contains(&format!("\n{name} ")),
                    "{name} missing:\n{out}"
                );
            }
        }
    }
}
