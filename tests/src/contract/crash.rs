//! Crash consistency: a writer process killed with SIGKILL in the middle of its writes leaves
//! a store that reopens cleanly with every committed row and the same version marker.
//!
//! The writer is the `store-writer` binary of this crate (`src/bin/store_writer.rs`): it
//! writes batches of events, flushes, and prints `committed <calls> <audits>` after each
//! flush returned, so every count it printed is durable. The test binary registers the
//! writer's path with [`set_writer_bin`] (only integration tests know
//! `CARGO_BIN_EXE_store-writer`).
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metis_domain::events::Event;

use super::Backend;
use super::trace::{audit, call, stored_audit, stored_calls, verify_chain};

static WRITER_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Register the `store-writer` binary (call with `env!("CARGO_BIN_EXE_store-writer")`).
pub fn set_writer_bin(path: &str) {
    let _ = WRITER_BIN.set(PathBuf::from(path));
}

/// The events of batch `batch` (25 events: every fifth one an audit event), as the crash
/// writer emits them. Ids are unique across batches.
#[must_use]
pub fn crash_batch(batch: u64) -> Vec<Event> {
    (0..25u64)
        .map(|i| {
            let n = batch * 25 + i;
            let ts = 1_000_000 + n as i64;
            if i % 5 == 0 {
                audit(n, ts)
            } else {
                call(n, ts, "gk_crash", 0.001)
            }
        })
        .collect()
}

/// Counts of one batch: (calls, audits).
pub const CRASH_BATCH_COUNTS: (u64, u64) = (20, 5);

fn parse_committed(line: &str) -> Option<(u64, u64)> {
    let mut it = line.strip_prefix("committed ")?.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A writer killed with SIGKILL mid-write: the store reopens cleanly, every batch the writer
/// saw committed is there (audit chain intact), and the version marker is unchanged.
pub async fn a_writer_killed_mid_write_keeps_every_committed_row(b: &dyn Backend) {
    // Create the store so the version marker exists before the crash.
    let s = b.open(None).await.expect("open");
    s.close().await;
    let version = b.trace_version().await;
    assert_eq!(version, Some(1));

    let (calls, audits) = match b.crash_target() {
        Some((backend, path)) => {
            let bin = WRITER_BIN
                .get()
                .cloned()
                .expect("the test binary registers store-writer (set_writer_bin)");
            tokio::task::spawn_blocking(move || run_and_kill(&bin, backend, &path))
                .await
                .expect("join")
        }
        None => {
            // No file and no process: write, then drop every handle without closing.
            let s = b.open(None).await.expect("open");
            for batch in 0..20 {
                for e in crash_batch(batch) {
                    s.sink.emit(e);
                }
                s.sink.flush().await.expect("flush");
            }
            drop(s);
            (20 * CRASH_BATCH_COUNTS.0, 20 * CRASH_BATCH_COUNTS.1)
        }
    };
    assert!(calls > 0, "the writer committed nothing before the kill");

    assert_eq!(b.trace_version().await, version, "version marker changed");
    let s = b.open(None).await.expect("reopen after the crash");
    let stored = stored_calls(s.query.as_ref()).await;
    assert!(stored >= calls, "{stored} calls stored < {calls} committed");
    let rows = stored_audit(s.query.as_ref()).await;
    assert!(
        rows.len() as u64 >= audits,
        "{} audit rows < {audits} committed",
        rows.len()
    );
    assert_eq!(verify_chain(&rows), Ok(rows.len() as u64));
    // The store still takes writes after the crash, and the chain continues.
    s.sink.emit(audit(9_999_999, 5));
    s.sink.flush().await.expect("flush after crash");
    let rows = stored_audit(s.query.as_ref()).await;
    assert_eq!(verify_chain(&rows), Ok(rows.len() as u64));
    s.close().await;
}

/// Run the writer until it reported at least 400 committed calls (or 20 s), SIGKILL it, and
/// return the last counts it reported.
fn run_and_kill(bin: &PathBuf, backend: &str, path: &PathBuf) -> (u64, u64) {
    let mut child = Command::new(bin)
        .arg(backend)
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn store-writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut last = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(Ok(line)) = lines.next() {
        if let Some(c) = parse_committed(&line) {
            last = c;
        }
        if last.0 >= 400 || Instant::now() > deadline {
            break;
        }
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor, no shutdown, mid-batch.
    child.kill().expect("kill");
    let _ = child.wait();
    // Lines written before the kill are durable claims too.
    for line in lines.map_while(Result::ok) {
        if let Some(c) = parse_committed(&line) {
            last = c;
        }
    }
    last
}
