//! A full disk under a running gateway, on both backends (the real `metis` binary on a small
//! tmpfs as its data directory):
//!
//! 1. requests succeed and their events are written;
//! 2. the tmpfs is filled: requests still succeed (the gateway keeps serving), events are
//!    counted as failed (never silently dropped) and `/readyz` answers 503;
//! 3. the filler is removed and no request is sent: `/readyz` comes back to 200 on its own
//!    (the writer's recovery probe, on the 50 ms → 5 s back-off) — a load balancer sends no
//!    traffic to a 503 backend, so recovery must not wait for events;
//! 4. new requests' events are written again; no restart at any point.
//!
//! Before the fix redb stayed 503 forever ("Previous I/O error occurred. Please close and
//! re-open the database.") and SQLite stayed 503 until the next event arrived (the test
//! waits for the queue to drain before freeing space, so no queued event can mask that).
//!
//! Mounting a tmpfs needs root (CI and the development machines run as root); the test fails
//! with that reason elsewhere rather than pass without a full disk.
//!
//! Needs `target/debug/metis` (`cargo build --workspace --bins`; scripts/test.sh does it).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY};
use metis_tests::process::{GatewayProcess, issue_key, upstream_args, upstream_env};
use metis_tests::{Combo, FakeUpstream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `size` mounted on a fresh temp directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a real full disk: mounting a tmpfs failed (run as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write zeros into `<tmpfs>/filler` until the filesystem refuses (ENOSPC).
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected, got {e}");
                    break;
                }
            }
        }
        // Whatever a smaller write can still take, take too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or_else(|| panic!("{name} missing from /metrics"), |v| v as u64)
}

struct Probe {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Probe {
    async fn ready(&self) -> u16 {
        self.client
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    async fn counters(&self) -> (u64, u64) {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (
            metric(&text, "metis_trace_events_written_total"),
            metric(&text, "metis_trace_events_failed_total"),
        )
    }

    async fn queue_depth(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric(&text, "metis_trace_queue_depth")
    }

    /// One chat call; the gateway must answer it whatever the disk does.
    async fn call(&self, i: usize) {
        let combo = Combo::OPENAI_TO_OPENAI;
        let resp = self
            .client
            .post(format!("{}{}", self.base, combo.client.gateway_path()))
            .bearer_auth(&self.token)
            .json(&combo.body(&format!("disk full {i}"), false))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
}

async fn disk_full_then_freed(store: &str) {
    let upstream = FakeUpstream::start(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY)
        .await
        .unwrap();
    let fs = Tmpfs::mount("24m");
    let data = fs.path().join("data");
    let store_args = ["--store".to_owned(), store.to_owned()];
    let mut cli_args = vec!["--data-dir".to_owned(), data.display().to_string()];
    cli_args.extend(store_args.clone());
    let (_, token) = issue_key(&cli_args, "disk", &[]).unwrap();
    let mut args = vec!["--port".to_owned(), "0".to_owned()];
    args.extend(upstream_args(&upstream.base_url(), &data));
    args.extend(store_args);
    let mut gw = GatewayProcess::spawn_async(
        args,
        upstream_env(DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY),
    )
    .await
    .unwrap();
    let p = Probe {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: gw.url.clone(),
        token,
    };

    // 1. Healthy.
    for i in 0..5 {
        p.call(i).await;
    }
    let healthy = Instant::now();
    while p.counters().await.0 < 5 {
        assert!(
            healthy.elapsed() < Duration::from_secs(10),
            "events written while healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.ready().await, 200);

    // 2. Full: requests still succeed; events fail (counted) and readiness drops.
    let filler = fs.fill();
    let (written_before, _) = p.counters().await;
    let filled = Instant::now();
    let mut i = 100;
    loop {
        p.call(i).await;
        i += 1;
        let (_, failed) = p.counters().await;
        if failed > 0 && p.ready().await == 503 {
            break;
        }
        assert!(
            filled.elapsed() < Duration::from_secs(30),
            "a full disk must fail events and turn /readyz 503 ({store}): {}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the writer finish with every queued event (each batch's retries), so nothing left
    // in the queue can bring readiness back: from here on, no event arrives until /readyz
    // has recovered.
    let drained = Instant::now();
    while p.queue_depth().await > 0 {
        assert!(
            drained.elapsed() < Duration::from_secs(20),
            "the queue drains ({store})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (redb may turn ready again here already: pages its failed commits wrote are free and
    // backed in the file, and its recovery probe may fit into them; that is a true "can
    // commit now". What must not happen is staying 503 once space is back.)
    let (written_full, failed_full) = p.counters().await;
    eprintln!(
        "{store}: disk full after {} requests: written {written_before} -> {written_full}, failed {failed_full}",
        i - 100
    );

    // 3. Freed, no traffic: readiness recovers on its own.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while p.ready().await != 200 {
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "/readyz must recover without traffic once space is freed ({store}); log:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_after = freed.elapsed();

    // 4. Events are written again, none failed after recovery.
    let (written_freed, failed_freed) = p.counters().await;
    for j in 0..10 {
        p.call(1000 + j).await;
    }
    let back = Instant::now();
    loop {
        let (w, f) = p.counters().await;
        assert_eq!(f, failed_freed, "no event fails after recovery ({store})");
        if w >= written_freed + 40 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "events are written again after recovery ({store}): written {w}, want {}",
            written_freed + 40
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.ready().await, 200);
    eprintln!(
        "{store}: /readyz back to 200 {} ms after space was freed (no traffic); events written again",
        ready_after.as_millis()
    );
    let log = gw.stderr();
    for line in log.lines().filter(|l| {
        l.contains("I/O error") || l.contains("writable again") || l.contains("reopened")
    }) {
        eprintln!("{store} log: {line}");
    }
    let status = gw.stop(Duration::from_secs(20)).await.unwrap();
    assert!(
        status.success(),
        "clean exit after recovery ({store}): {}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recovers_from_a_full_disk_without_a_restart() {
    disk_full_then_freed("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_recovers_from_a_full_disk_without_a_restart() {
    disk_full_then_freed("redb").await;
}
