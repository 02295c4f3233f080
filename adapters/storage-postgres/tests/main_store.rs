//! The PostgreSQL main store against a real server (`METIS_TEST_DATABASE_URL`, see
//! `scripts/pg-server.sh`): several writers on one audit chain, an outage of the database
//! waited out by the writer, the query plans, and the writer's throughput (ignored: a
//! measurement).
#![expect(clippy::expect_used, reason = "tests fail loudly on a broken store")]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metis_domain::events::types::{GATEWAY_KEY_ISSUED, LLM_CALL_COMPLETED};
use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::storage::{ServeOptions, StorageBackend};
use metis_storage_postgres::{PgConfig, PgWriterOptions, PostgresBackend, ScratchDatabase};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn event(n: u64, ty: &'static str, payload: String) -> Event {
    Event {
        id: format!("01J{n:023}"),
        timestamp_us: 1_000 + n as i64,
        session_id: "s1".into(),
        turn_id: None,
        parent_event_id: None,
        event_type: ty,
        actor: Actor::System,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: payload,
    }
}

fn call(n: u64, key: &str) -> Event {
    event(
        n,
        LLM_CALL_COMPLETED,
        format!(r#"{{"model":"m","gateway_key_id":"{key}","cost_usd":0.01,"input_tokens":3}}"#),
    )
}

fn audit(n: u64) -> Event {
    event(
        n,
        GATEWAY_KEY_ISSUED,
        format!(r#"{{"key_id":"gk_{n}","reason":"test"}}"#),
    )
}

/// Host, port and user of the test server.
fn server() -> (String, u16, String) {
    let url = std::env::var(metis_storage_postgres::scratch::TEST_DATABASE_URL)
        .expect("METIS_TEST_DATABASE_URL (ScratchDatabase::from_env already said how to set it)");
    let base = url.split('?').next().unwrap_or(&url);
    let cfg: tokio_postgres::Config = base.parse().expect("test URL");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host, port, cfg.get_user().unwrap_or("postgres").to_owned())
}

fn backend(scratch: &ScratchDatabase) -> PostgresBackend {
    PostgresBackend::new(scratch.config().clone()).expect("backend")
}

/// Two gateways (two backends, two pools, two writer threads) appending audit events to one
/// database at the same time extend one chain: every event is stored, `verify` walks all of
/// them without a broken link, and the sequence numbers are 1..=n without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_extend_one_verifiable_audit_chain() {
    let scratch = ScratchDatabase::from_env().expect("scratch database");
    let (a, b) = (backend(&scratch), backend(&scratch));
    let open = |be: &PostgresBackend| {
        be.open_main(Path::new("ignored"), ServeOptions::default())
            .expect("open")
    };
    let (sa, sb) = (open(&a), open(&b));
    let per_writer = 600u64;
    let mut tasks = Vec::new();
    for (w, store) in [(0u64, Arc::clone(&sa)), (1, Arc::clone(&sb))] {
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let n = w * 1_000_000 + i;
                store.emit(if i % 3 == 0 { call(n, "gk") } else { audit(n) });
                if i % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            store.flush().await.expect("flush");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    sa.shutdown().await;
    sb.shutdown().await;
    let audits_per_writer = per_writer - per_writer.div_ceil(3);
    let reader = a.open_reader(Path::new("ignored")).expect("reader");
    assert_eq!(
        reader.verify_audit_chain().expect("verify"),
        Ok(2 * audits_per_writer),
        "one chain, every audit event linked"
    );
    assert_eq!(reader.count_unchained_audit().expect("unchained"), 0);
    let audit_rows = reader.audit_events(i64::MIN, i64::MAX, &[]).expect("audit");
    assert_eq!(audit_rows.len() as u64, 2 * audits_per_writer);
    let st = (sa.stats(), sb.stats());
    assert_eq!((st.0.failed, st.1.failed), (0, 0), "{st:?}");
    assert_eq!(st.0.written + st.1.written, 2 * per_writer);
}

/// A TCP relay in front of the server that can be cut (every open connection closed, new ones
/// refused) and restored: an outage of the database as the gateway sees it.
struct Relay {
    port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (d, g) = (Arc::clone(&down), Arc::clone(&generation));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::Acquire) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (d, g) = (Arc::clone(&d), Arc::clone(&g));
                let born = g.load(Ordering::Acquire);
                tokio::spawn(async move {
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while !d.load(Ordering::Acquire) && g.load(Ordering::Acquire) == born {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = relay => {}
                        () = cut => {}
                    }
                });
            }
        });
        Relay {
            port,
            down,
            generation,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn restore(&self) {
        self.down.store(false, Ordering::Release);
    }
}

/// While the database is unreachable the writer keeps the events queued (overflow beyond the
/// bounded queue counted, `is_writable` false), retries with back-off, and writes every queued
/// event exactly once when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_waited_out_and_nothing_is_lost_or_written_twice() {
    let scratch = ScratchDatabase::from_env().expect("scratch database");
    let (host, port, user) = server();
    let relay = Relay::start(format!("{host}:{port}")).await;
    let via_relay = PgConfig::new(
        &format!(
            "postgres://{}@127.0.0.1:{}/{}?sslmode=disable&connect_timeout=2",
            user,
            relay.port,
            scratch.name()
        ),
        4,
        Duration::from_secs(2),
    )
    .expect("config");
    let queue = 500;
    let be = PostgresBackend::new(via_relay)
        .expect("backend")
        .with_writer_options(PgWriterOptions {
            queue_capacity: queue,
            ..PgWriterOptions::default()
        });
    let store = tokio::task::spawn_blocking(move || {
        let s = be.open_main(Path::new("ignored"), ServeOptions::default());
        (be, s)
    })
    .await
    .expect("join");
    let (be, store) = (store.0, store.1.expect("open"));
    for i in 0..100 {
        store.emit(if i % 10 == 0 { audit(i) } else { call(i, "gk") });
    }
    store.flush().await.expect("flush before the outage");

    relay.cut();
    // Emitted during the outage: more than the queue holds.
    let during = 1_500u64;
    for i in 0..during {
        let n = 10_000 + i;
        store.emit(if i % 10 == 0 { audit(n) } else { call(n, "gk") });
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.is_writable() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !store.is_writable(),
        "an unreachable database is not writable"
    );
    let mid = store.stats();
    assert!(mid.overflowed > 0, "{mid:?}");
    assert_eq!(mid.failed, 0, "nothing is given up while serving: {mid:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    relay.restore();
    tokio::time::timeout(Duration::from_secs(30), store.flush())
        .await
        .expect("flush after the outage finishes")
        .expect("flush");
    assert!(store.is_writable());
    let st = store.shutdown().await;
    assert_eq!(st.failed, 0, "{st:?}");
    assert_eq!(st.accepted + st.overflowed, 100 + during, "{st:?}");
    assert_eq!(st.written, st.accepted, "{st:?}");

    let direct = backend(&scratch);
    let reader = direct.open_reader(Path::new("ignored")).expect("reader");
    assert_eq!(
        reader.counts().expect("counts").events,
        st.written,
        "every accepted event stored once"
    );
    let audits = reader.audit_events(i64::MIN, i64::MAX, &[]).expect("audit");
    assert_eq!(
        reader.verify_audit_chain().expect("verify"),
        Ok(audits.len() as u64)
    );
    drop(be);
}

/// A shutdown with the database unreachable gives up after the writer's grace instead of
/// hanging, and counts what it could not write as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_an_outage_ends_and_counts_the_rest_as_failed() {
    let scratch = ScratchDatabase::from_env().expect("scratch database");
    let (host, port, user) = server();
    let relay = Relay::start(format!("{host}:{port}")).await;
    let via_relay = PgConfig::new(
        &format!(
            "postgres://{}@127.0.0.1:{}/{}?sslmode=disable&connect_timeout=1",
            user,
            relay.port,
            scratch.name()
        ),
        2,
        Duration::from_secs(1),
    )
    .expect("config");
    let be = PostgresBackend::new(via_relay).expect("backend");
    let store = tokio::task::spawn_blocking(move || {
        let s = be.open_main(Path::new("ignored"), ServeOptions::default());
        (be, s)
    })
    .await
    .expect("join");
    let (be, store) = (store.0, store.1.expect("open"));
    relay.cut();
    for i in 0..50 {
        store.emit(call(i, "gk"));
    }
    let started = Instant::now();
    let st = tokio::time::timeout(Duration::from_secs(40), store.shutdown())
        .await
        .expect("the shutdown ends");
    assert!(started.elapsed() < Duration::from_secs(40));
    assert_eq!(st.accepted, 50, "{st:?}");
    assert_eq!(st.failed, 50, "{st:?}");
    drop(be);
}

/// The writer's throughput into PostgreSQL: emit 200 000 call events (every 50th an audit
/// event) and time the drain, for several batch sizes (the default is 2048). A measurement,
/// not a check: run it with `--release -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
fn writer_throughput_200k_events() {
    for max_batch in [512, 1024, 2048, 4096] {
        let scratch = ScratchDatabase::from_env().expect("scratch database");
        let be = backend(&scratch).with_writer_options(PgWriterOptions {
            queue_capacity: 250_000,
            max_batch,
            ..PgWriterOptions::default()
        });
        let store = be
            .open_main(Path::new("ignored"), ServeOptions::default())
            .expect("open");
        let n = 200_000u64;
        let started = Instant::now();
        for i in 0..n {
            store.emit(if i % 50 == 0 {
                audit(i)
            } else {
                call(i, ["gk_a", "gk_b", "gk_c"][(i % 3) as usize])
            });
        }
        let emitted = started.elapsed();
        let st = store.close();
        let drained = started.elapsed();
        assert_eq!((st.written, st.failed, st.overflowed), (n, 0, 0), "{st:?}");
        println!(
            "postgres writer, batches of {max_batch}: {n} events emitted in {:.0} ms, drained in \
             {:.0} ms: {:.0} events/s ({} batches)",
            emitted.as_secs_f64() * 1e3,
            drained.as_secs_f64() * 1e3,
            n as f64 / drained.as_secs_f64(),
            st.commit_lag.count,
        );
        let reader = be.open_reader(Path::new("ignored")).expect("reader");
        assert_eq!(reader.counts().expect("counts").events, n);
        assert_eq!(reader.verify_audit_chain().expect("verify"), Ok(n / 50));
    }
}
